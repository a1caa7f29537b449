//! What can go wrong in `ferrymq ctl`, and the exit code each failure gives.

/// Exit code: the command did what was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code: any failure without a code of its own (a 5xx from the API, a file that cannot
/// be read or written, an answer that is not what the API documents).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad command line (clap's own code for usage errors, kept for ours).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the API refused the request with a 4xx other than 401, 403 and 404.
pub const EXIT_REFUSED: u8 = 3;
/// Exit code: the API answered 401 or 403 (wrong credentials, missing tag or permission).
pub const EXIT_NOT_AUTHORISED: u8 = 4;
/// Exit code: the API answered 404 (no such object or vhost).
pub const EXIT_NOT_FOUND: u8 = 5;
/// Exit code: no answer from the broker (connection refused, unknown host, timeout).
pub const EXIT_UNREACHABLE: u8 = 6;
/// Exit code: `health` ran and at least one check failed.
pub const EXIT_UNHEALTHY: u8 = 7;

/// A failed `ferrymq ctl` command.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The command line is wrong in a way clap cannot tell (bad JSON in an argument, ...).
    #[error("{0}")]
    Usage(String),
    /// The API answered with an error status; `reason` is RabbitMQ's `reason` field.
    #[error("{method} {path}: {status} {reason}")]
    Api {
        /// HTTP method of the request.
        method: &'static str,
        /// Path of the request (without credentials).
        path: String,
        /// HTTP status.
        status: u16,
        /// The answer's `reason` (or `error`, or the status text).
        reason: String,
    },
    /// No HTTP answer at all.
    #[error("cannot reach the broker at {url}: {detail}")]
    Unreachable {
        /// The base URL tried (without credentials).
        url: String,
        /// Why.
        detail: String,
    },
    /// A health check failed.
    #[error("{0}")]
    Unhealthy(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    /// The process exit code for this failure (documented in docs/ctl.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => EXIT_USAGE,
            CtlError::Api { status, .. } => match status {
                401 | 403 => EXIT_NOT_AUTHORISED,
                404 => EXIT_NOT_FOUND,
                400..=499 => EXIT_REFUSED,
                _ => EXIT_FAILED,
            },
            CtlError::Unreachable { .. } => EXIT_UNREACHABLE,
            CtlError::Unhealthy(_) => EXIT_UNHEALTHY,
            CtlError::Failed(_) => EXIT_FAILED,
        }
    }
}

/// Result of a ctl step.
pub type CtlResult<T> = Result<T, CtlError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_distinct_codes() {
        let api = |status| CtlError::Api {
            method: "GET",
            path: "/api/x".into(),
            status,
            reason: String::new(),
        };
        assert_eq!(api(401).exit_code(), EXIT_NOT_AUTHORISED);
        assert_eq!(api(404).exit_code(), EXIT_NOT_FOUND);
        assert_eq!(api(400).exit_code(), EXIT_REFUSED);
        assert_eq!(api(500).exit_code(), EXIT_FAILED);
        assert_eq!(CtlError::Usage("x".into()).exit_code(), EXIT_USAGE);
    }
}
