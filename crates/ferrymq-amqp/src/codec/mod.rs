//! The AMQP 0-9-1 wire codec: pure and synchronous, no I/O.
//!
//! Decoding is two-phase as in mini-redis: [`frame::decode_frame`] first checks that a whole
//! frame is buffered (allocating nothing when it is not), then parses it.

pub mod frame;
pub mod methods;
pub mod primitives;

pub use frame::{decode_frame, Frame, FRAME_END, PROTOCOL_HEADER};
pub use methods::Method;
pub use primitives::{LongStr, Reader, Writer};

use ferrymq_core::wire::WireError;
use thiserror::Error;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The input ended inside a field.
    #[error("frame payload ends inside a field (needed {0} more bytes)")]
    InsufficientBytes(usize),
    /// A frame is larger than the negotiated frame_max.
    #[error("frame size {size} exceeds the negotiated frame_max {max}")]
    FrameTooLarge {
        /// Declared size including header and end octet.
        size: u64,
        /// The limit.
        max: u32,
    },
    /// A frame did not end with 0xCE.
    #[error("frame end octet is {0:#04x}, expected 0xce")]
    BadFrameEnd(u8),
    /// An unknown frame type octet.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A class/method pair that does not exist in 0-9-1.
    #[error("unknown method class {0} method {1}")]
    UnknownMethod(u16, u16),
    /// A field value is malformed.
    #[error("malformed field: {0}")]
    Syntax(String),
    /// A method argument that is a name is not valid UTF-8.
    #[error("Malformed UTF-8 in shortstr")]
    MalformedUtf8,
}

impl From<WireError> for CodecError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::InsufficientBytes(n) => CodecError::InsufficientBytes(n),
            WireError::Syntax(s) => CodecError::Syntax(s),
            WireError::MalformedUtf8 => CodecError::MalformedUtf8,
        }
    }
}
