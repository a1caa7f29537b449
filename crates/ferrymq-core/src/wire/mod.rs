//! AMQP's binary encoding of primitives, field tables and basic properties.
//!
//! It lives in the core, not the AMQP crate, because it is also how a [`Message`] keeps its
//! properties: the bytes a publisher sent are kept as they came, decoded only on demand, and
//! re-sent verbatim to consumers (and, with durability, written to disk as they are).
//!
//! [`Message`]: crate::Message

pub mod primitives;
pub mod properties;
pub mod table;

pub use primitives::{LongStr, Reader, Writer};
pub use properties::{decode_properties, encode_properties, scan_properties, PropertySummary};
pub use table::{read_table, write_table};

use thiserror::Error;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The input ended inside a field.
    #[error("frame payload ends inside a field (needed {0} more bytes)")]
    InsufficientBytes(usize),
    /// A field value is malformed.
    #[error("malformed field: {0}")]
    Syntax(String),
    /// A short string that must be text is not valid UTF-8.
    #[error("Malformed UTF-8 in shortstr")]
    MalformedUtf8,
}
