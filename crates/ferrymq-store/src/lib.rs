//! FerryMQ storage: bytes on disk.
//!
//! - [`queue_log`]: a durable queue's messages as append-only segment files of CRC32C-framed
//!   records plus per-segment ack logs; recovery is records minus acks.
//! - [`sync`]: group commit, one fsync for every write that arrived meanwhile.
//! - [`definitions`]: the definitions document (RabbitMQ's JSON format), written atomically.
//!
//! The byte-level format is described in `docs/storage.md`.

pub mod definitions;
pub mod queue_log;
pub mod record;
pub mod sync;

pub use queue_log::{Position, QueueLog};
pub use sync::{FsyncPolicy, SyncGroup};

use thiserror::Error;

/// A storage failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A record read back does not match its checksum.
    #[error("{0}: corrupt record at offset {1}")]
    Corrupt(String, u32),
    /// A record too large for a segment.
    #[error("record of {0} bytes is too large for a segment")]
    TooLarge(usize),
    /// A queue's directory holds the segment with the highest number there is, so there is
    /// no number left for the next one.
    #[error("{0}: no segment number is left after 4294967295")]
    SegmentNumbers(String),
    /// The definitions document is not valid.
    #[error("definitions file {0}: {1}")]
    Definitions(String, String),
}
