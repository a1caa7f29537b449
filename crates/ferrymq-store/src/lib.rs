//! FerryMQ storage: bytes on disk.
//!
//! - [`queue_log`]: a durable queue's messages as append-only segment files of CRC32C-framed
//!   records plus per-segment ack logs; recovery is records minus acks.
//! - [`sync`]: group commit, one fsync for every write that arrived meanwhile.
//! - [`histogram`]: fixed-bucket histograms of fsync time and group-commit batch size,
//!   read by the metrics endpoint.
//! - [`reaper`]: removal of deleted queues' and fully acked segments' files, off the hot
//!   path.
//! - [`definitions`]: the definitions document (RabbitMQ's JSON format), written atomically.
//! - [`def_state`] and [`def_journal`]: the definitions kept as a snapshot plus a journal of
//!   changes, one small record per declaration, fsynced by group commit.
//!
//! The byte-level format is described in `docs/storage.md`.

pub mod def_journal;
pub mod def_state;
pub mod definitions;
pub mod histogram;
pub mod queue_log;
pub mod reaper;
pub mod record;
pub mod sync;

pub use queue_log::{Position, QueueLog, Visit};
pub use sync::{
    FailingSync, FsyncPolicy, LogHealth, Pending, SyncFile, SyncGroup, Syncer, SyncerRef,
};

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
    /// A sync of the log failed earlier: it takes no more writes (see [`LogHealth`]).
    #[error("{0}: an earlier fsync failed; the log takes no more writes until restart")]
    Failed(String),
    /// The log's owner was deleted: it takes no more writes.
    #[error("{0}: deleted")]
    Deleted(String),
    /// A queue's directory holds the segment with the highest number there is, so there is
    /// no number left for the next one.
    #[error("{0}: no segment number is left after 4294967295")]
    SegmentNumbers(String),
    /// The definitions document is not valid.
    #[error("definitions file {0}: {1}")]
    Definitions(String, String),
}
