//! AMQP exceptions: channel errors close one channel, connection errors close the connection.

use ferrymq_core::CoreError;
use thiserror::Error;

/// Reply codes used by the broker (AMQP 0-9-1 constants).
pub mod code {
    /// Normal close.
    pub const REPLY_SUCCESS: u16 = 200;
    /// Message could not be routed (basic.return).
    pub const NO_ROUTE: u16 = 312;
    /// The broker closed the connection (e.g. shutdown).
    pub const CONNECTION_FORCED: u16 = 320;
    /// Access refused.
    pub const ACCESS_REFUSED: u16 = 403;
    /// Entity not found.
    pub const NOT_FOUND: u16 = 404;
    /// Exclusive resource held by another connection.
    pub const RESOURCE_LOCKED: u16 = 405;
    /// Precondition failed.
    pub const PRECONDITION_FAILED: u16 = 406;
    /// Malformed frame.
    pub const FRAME_ERROR: u16 = 501;
    /// Illegal field values.
    pub const SYNTAX_ERROR: u16 = 502;
    /// Invalid command.
    pub const COMMAND_INVALID: u16 = 503;
    /// Channel misuse.
    pub const CHANNEL_ERROR: u16 = 504;
    /// Frame not expected now.
    pub const UNEXPECTED_FRAME: u16 = 505;
    /// Not allowed.
    pub const NOT_ALLOWED: u16 = 530;
    /// Not implemented.
    pub const NOT_IMPLEMENTED: u16 = 540;
    /// Internal error.
    pub const INTERNAL_ERROR: u16 = 541;
}

/// An error that ends a channel or a connection.
#[derive(Debug, Error)]
pub enum AmqpError {
    /// Closes the whole connection with `code`.
    #[error("connection error {code}: {text}")]
    Connection {
        /// Reply code.
        code: u16,
        /// Reply text, starting with the code name.
        text: String,
        /// Class of the method that caused it (0 if none).
        class_id: u16,
        /// Method that caused it (0 if none).
        method_id: u16,
    },
    /// Closes one channel with `code`.
    #[error("channel {channel} error {code}: {text}")]
    Channel {
        /// The channel.
        channel: u16,
        /// Reply code.
        code: u16,
        /// Reply text, starting with the code name.
        text: String,
        /// Class of the method that caused it.
        class_id: u16,
        /// Method that caused it.
        method_id: u16,
    },
    /// The socket failed or the peer went away.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The AMQP name of a reply code, used as the prefix of reply texts.
pub fn code_name(code: u16) -> &'static str {
    match code {
        200 => "OK",
        312 => "NO_ROUTE",
        320 => "CONNECTION_FORCED",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        501 => "FRAME_ERROR",
        502 => "SYNTAX_ERROR",
        503 => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        530 => "NOT_ALLOWED",
        540 => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

/// `CODE_NAME - text`, cut as RabbitMQ cuts it to fit a short string: 252 bytes and `...`.
fn reply_text(code: u16, text: impl std::fmt::Display) -> String {
    let mut t = format!("{} - {text}", code_name(code));
    if t.len() > 255 {
        let mut end = 252;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t.truncate(end);
        t.push_str("...");
    }
    t
}

impl AmqpError {
    /// A connection error; `text` is prefixed with the code name.
    pub fn conn(code: u16, text: impl std::fmt::Display) -> Self {
        AmqpError::Connection {
            code,
            text: reply_text(code, text),
            class_id: 0,
            method_id: 0,
        }
    }

    /// A channel error; `text` is prefixed with the code name.
    pub fn chan(channel: u16, code: u16, text: impl std::fmt::Display) -> Self {
        AmqpError::Channel {
            channel,
            code,
            text: reply_text(code, text),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Attaches the class and method that caused the error.
    pub fn caused_by(mut self, ids: (u16, u16)) -> Self {
        match &mut self {
            AmqpError::Connection {
                class_id,
                method_id,
                ..
            }
            | AmqpError::Channel {
                class_id,
                method_id,
                ..
            } => {
                *class_id = ids.0;
                *method_id = ids.1;
            }
            AmqpError::Io(_) => {}
        }
        self
    }

    /// Maps a core error raised on `channel` to a channel or connection exception with
    /// RabbitMQ's reply code; the core's text follows the code name.
    pub fn from_core(channel: u16, e: CoreError) -> Self {
        let (code, connection) = match &e {
            CoreError::NotFound(_) => (code::NOT_FOUND, false),
            CoreError::AccessRefused(_) => (code::ACCESS_REFUSED, false),
            CoreError::ResourceLocked(_) => (code::RESOURCE_LOCKED, false),
            CoreError::PreconditionFailed(_)
            | CoreError::InvalidArgument(_)
            | CoreError::LimitReached(_) => (code::PRECONDITION_FAILED, false),
            CoreError::VHostAccessRefused(_) => (code::NOT_ALLOWED, true),
            CoreError::CommandInvalid(_) => (code::COMMAND_INVALID, true),
            CoreError::NotImplemented(_) => (code::NOT_IMPLEMENTED, true),
            CoreError::Internal(_) => (code::INTERNAL_ERROR, true),
        };
        if connection {
            AmqpError::conn(code, e)
        } else {
            AmqpError::chan(channel, code, e)
        }
    }
}
