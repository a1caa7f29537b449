//! Errors returned by core operations, one variant per AMQP reply code the core can cause.

use thiserror::Error;

/// An error from a broker operation. The text is the part a client sees after the code name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// The named entity does not exist (AMQP 404).
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    /// The operation is not permitted for this user or on this entity (AMQP 403).
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// An exclusive entity is held by another connection (AMQP 405).
    #[error("RESOURCE_LOCKED - {0}")]
    ResourceLocked(String),
    /// The request conflicts with the entity's current state or arguments (AMQP 406).
    #[error("PRECONDITION_FAILED - {0}")]
    PreconditionFailed(String),
    /// The operation is not allowed at all, e.g. an unknown vhost (AMQP 530).
    #[error("NOT_ALLOWED - {0}")]
    NotAllowed(String),
    /// The command is invalid, e.g. an unknown exchange type (AMQP 503, closes the connection).
    #[error("COMMAND_INVALID - {0}")]
    CommandInvalid(String),
    /// The feature is not implemented (AMQP 540).
    #[error("NOT_IMPLEMENTED - {0}")]
    NotImplemented(String),
    /// An argument has a value the broker cannot accept (AMQP 406 too, but for arguments).
    #[error("PRECONDITION_FAILED - {0}")]
    InvalidArgument(String),
    /// The broker failed internally, e.g. could not write to its data directory (AMQP 541,
    /// closes the connection).
    #[error("INTERNAL_ERROR - {0}")]
    Internal(String),
}

impl CoreError {
    /// The AMQP 0-9-1 reply code for this error.
    pub fn reply_code(&self) -> u16 {
        match self {
            CoreError::NotFound(_) => 404,
            CoreError::AccessRefused(_) => 403,
            CoreError::ResourceLocked(_) => 405,
            CoreError::PreconditionFailed(_) | CoreError::InvalidArgument(_) => 406,
            CoreError::NotAllowed(_) => 530,
            CoreError::CommandInvalid(_) => 503,
            CoreError::NotImplemented(_) => 540,
            CoreError::Internal(_) => 541,
        }
    }

    /// Whether the error closes the whole connection rather than one channel.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            CoreError::NotAllowed(_)
                | CoreError::NotImplemented(_)
                | CoreError::CommandInvalid(_)
                | CoreError::Internal(_)
        )
    }
}

/// Shorthand for results of core operations.
pub type CoreResult<T> = Result<T, CoreError>;
