//! Errors returned by core operations. They are protocol-neutral: each names what went wrong
//! in RabbitMQ's words (the texts RabbitMQ's management API and AMQP both show), and every
//! protocol crate maps the kind to its own codes (AMQP reply codes, MQTT reason codes, HTTP
//! status codes).

use thiserror::Error;

/// An error from a broker operation. The text is what a client is shown.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// The named entity does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The caller lacks the permission for the operation, or the entity is reserved.
    #[error("{0}")]
    AccessRefused(String),
    /// An exclusive entity is held by another connection.
    #[error("{0}")]
    ResourceLocked(String),
    /// The request conflicts with the entity's current state or arguments.
    #[error("{0}")]
    PreconditionFailed(String),
    /// An argument has a value the broker cannot accept.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller may not use this vhost at all (unknown vhost, no permissions on it).
    #[error("{0}")]
    VHostAccessRefused(String),
    /// A configured limit (connections, channels, queues) is reached.
    #[error("{0}")]
    LimitReached(String),
    /// The request names something the broker does not know, e.g. an exchange type.
    #[error("{0}")]
    CommandInvalid(String),
    /// The feature is not implemented.
    #[error("{0}")]
    NotImplemented(String),
    /// The broker failed internally, e.g. could not write to its data directory.
    #[error("{0}")]
    Internal(String),
}

/// Shorthand for results of core operations.
pub type CoreResult<T> = Result<T, CoreError>;
