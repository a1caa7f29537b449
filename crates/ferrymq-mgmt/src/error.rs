//! API errors in RabbitMQ's shape: a status code and `{"error": ..., "reason": ...}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrymq_core::CoreError;

/// An error answer of the HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credentials at all (401 with a Basic challenge and no body, as RabbitMQ).
    #[error("")]
    NoCredentials,
    /// Wrong credentials (401 with a Basic challenge).
    #[error("Login failed")]
    LoginFailed,
    /// Authenticated, but the user's tags or permissions do not allow this (401, as
    /// RabbitMQ answers).
    #[error("{0}")]
    NotAuthorised(String),
    /// The object does not exist (404).
    #[error("Not Found")]
    NotFound,
    /// The request is malformed or conflicts with the object's state (400).
    #[error("{0}")]
    BadRequest(String),
    /// A 400 with RabbitMQ's own error key (e.g. `page_out_of_range`).
    #[error("{1}")]
    Invalid(&'static str, String),
    /// The method is not supported on this path (405).
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// Something failed inside the broker (500).
    #[error("{0}")]
    Internal(String),
    /// A health check failed (503 with its own body).
    #[error("check failed")]
    CheckFailed(serde_json::Value),
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound(_) => ApiError::NotFound,
            CoreError::AccessRefused(_) => ApiError::NotAuthorised("Access refused.".into()),
            CoreError::VHostAccessRefused(_) => {
                ApiError::NotAuthorised("User not authorised to access virtual host".into())
            }
            CoreError::Internal(t) => ApiError::Internal(t),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = match &self {
            ApiError::NoCredentials => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(
                        header::WWW_AUTHENTICATE,
                        "Basic realm=\"RabbitMQ Management\"",
                    )],
                )
                    .into_response()
            }
            ApiError::Invalid(key, _) => (StatusCode::BAD_REQUEST, *key),
            ApiError::LoginFailed => (StatusCode::UNAUTHORIZED, "not_authorized"),
            ApiError::NotAuthorised(_) => (StatusCode::UNAUTHORIZED, "not_authorised"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "Object Not Found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            ApiError::MethodNotAllowed(allow) => {
                return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, *allow)]).into_response()
            }
            ApiError::CheckFailed(body) => {
                return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body.clone())).into_response()
            }
        };
        let body = serde_json::json!({ "error": error, "reason": self.to_string() });
        let mut r = (status, axum::Json(body)).into_response();
        if matches!(self, ApiError::LoginFailed) {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
        }
        r
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
