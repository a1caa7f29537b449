//! `/api/definitions`: export and import in RabbitMQ's format, for the broker or one vhost.

use super::{parse_any_body, St};
use crate::auth::Caller;
use crate::blocking;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use ferrymq_store::definitions::Definitions;
use serde_json::Value;
use std::collections::HashMap;

fn stamp(d: &mut Definitions) {
    d.rabbit_version = super::overview::RABBITMQ_COMPAT_VERSION.into();
    d.rabbitmq_version = super::overview::RABBITMQ_COMPAT_VERSION.into();
    d.product_name = "FerryMQ".into();
    d.product_version = env!("CARGO_PKG_VERSION").into();
}

/// `?download=file.json` asks for an attachment, as the console's export button does.
fn answer(v: Value, q: &HashMap<String, String>) -> Response {
    let mut r = Json(v).into_response();
    if let Some(name) = q.get("download") {
        let safe: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .take(100)
            .collect();
        if let Ok(h) = format!("attachment; filename=\"{safe}\"").parse() {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, h);
        }
    }
    r
}

/// GET /api/definitions.
pub(crate) async fn export(
    axum::extract::State(api): St,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    caller.need_admin()?;
    blocking(move || {
        let mut d = api.broker.export_definitions();
        stamp(&mut d);
        let v = serde_json::to_value(&d).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(answer(v, &q))
    })
    .await
}

/// GET /api/definitions/{vhost}: the vhost's queues, exchanges, bindings, policies and
/// parameters, without vhost fields (so it can be imported into another vhost).
pub(crate) async fn export_vhost(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    caller.need_admin()?;
    blocking(move || {
        api.broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
        let d = api.broker.export_definitions();
        let strip = |v: Value| match v {
            Value::Object(mut m) => {
                m.remove("vhost");
                Value::Object(m)
            }
            v => v,
        };
        let pick = |items: Vec<Value>| -> Vec<Value> {
            items
                .into_iter()
                .filter(|x| x.get("vhost").and_then(Value::as_str) == Some(vhost.as_str()))
                .map(strip)
                .collect()
        };
        let to_values = |v: Value| match v {
            Value::Array(a) => a,
            _ => Vec::new(),
        };
        let out = serde_json::json!({
            "rabbit_version": super::overview::RABBITMQ_COMPAT_VERSION,
            "rabbitmq_version": super::overview::RABBITMQ_COMPAT_VERSION,
            "product_name": "FerryMQ",
            "product_version": env!("CARGO_PKG_VERSION"),
            "queues": pick(to_values(serde_json::to_value(&d.queues).unwrap_or(Value::Null))),
            "exchanges": pick(to_values(serde_json::to_value(&d.exchanges).unwrap_or(Value::Null))),
            "bindings": pick(to_values(serde_json::to_value(&d.bindings).unwrap_or(Value::Null))),
            "policies": pick(to_values(serde_json::to_value(&d.policies).unwrap_or(Value::Null))),
            "parameters": pick(d.parameters.clone()),
        });
        Ok(answer(out, &q))
    })
    .await
}

/// A definitions document; RabbitMQ's error for one that is not JSON.
fn parse_definitions(body: &Bytes) -> ApiResult<Definitions> {
    parse_any_body(body).map_err(|e| match e {
        ApiError::BadRequest(r) if r == "not_json" => {
            ApiError::BadRequest("failed_to_parse_json".into())
        }
        e => e,
    })
}

/// POST /api/definitions: imports a whole document (checked first, then applied).
pub(crate) async fn import(
    axum::extract::State(api): St,
    caller: Caller,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    blocking(move || {
        let d = parse_definitions(&body)?;
        api.broker.import_definitions(&d)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// POST /api/definitions/{vhost}: imports queues, exchanges, bindings and policies into
/// one vhost (their own vhost fields are ignored).
pub(crate) async fn import_vhost(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    blocking(move || {
        let mut d = parse_definitions(&body)?;
        api.broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
        // Only the vhost's own objects: users, vhosts and permissions are broker-wide.
        d.users.clear();
        d.vhosts.clear();
        d.permissions.clear();
        d.topic_permissions.clear();
        d.global_parameters.clear();
        for q in &mut d.queues {
            q.vhost = vhost.clone();
        }
        for x in &mut d.exchanges {
            x.vhost = vhost.clone();
        }
        for b in &mut d.bindings {
            b.vhost = vhost.clone();
        }
        for p in &mut d.policies {
            p.vhost = vhost.clone();
        }
        for p in &mut d.parameters {
            if let Value::Object(m) = p {
                m.insert("vhost".into(), Value::String(vhost.clone()));
            }
        }
        api.broker.import_definitions(&d)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
