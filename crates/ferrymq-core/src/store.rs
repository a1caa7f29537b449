//! The seam between a queue and where its messages are kept.
//!
//! A queue talks to its messages only through [`MessageStore`]: push, shift, requeue, ack,
//! purge. [`MemoryStore`] keeps everything in RAM (queues of a broker without a data
//! directory, and tests); `PagedStore` (paged_store.rs) writes persistent messages of durable
//! queues to disk and pages any queue's tail out under memory pressure.

use crate::message::QueuedMessage;
use ferrymq_store::StoreError;
use std::collections::VecDeque;

/// Where a queue's ready messages are kept.
pub trait MessageStore: Send {
    /// Appends a new message at the tail. Returns the group-commit ticket after which it is on
    /// disk, when it had to be made durable; an error refuses the message.
    fn push(&mut self, msg: QueuedMessage) -> Result<Option<u64>, StoreError>;
    /// Removes and returns the message at the head.
    fn shift(&mut self) -> Option<QueuedMessage>;
    /// Puts a delivered-but-unacked message back at its original position.
    fn requeue(&mut self, msg: QueuedMessage);
    /// Records that a delivered message was acknowledged (or otherwise finished with).
    fn ack(&mut self, seq: u64);
    /// Drops every ready message and returns how many there were.
    fn purge(&mut self) -> usize;
    /// Number of ready messages.
    fn len(&self) -> usize;
    /// Whether there are no ready messages.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Total body bytes of the ready messages.
    fn bytes(&self) -> usize;
    /// The queue was deleted: drop everything, files included.
    fn destroy(&mut self) {
        self.purge();
    }
}

/// Ready messages in memory, ordered by sequence number.
#[derive(Default)]
pub struct MemoryStore {
    ready: VecDeque<QueuedMessage>,
    bytes: usize,
}

impl MessageStore for MemoryStore {
    fn push(&mut self, msg: QueuedMessage) -> Result<Option<u64>, StoreError> {
        self.bytes += msg.message.body_size();
        self.ready.push_back(msg);
        Ok(None)
    }

    fn shift(&mut self) -> Option<QueuedMessage> {
        let m = self.ready.pop_front()?;
        self.bytes -= m.message.body_size();
        Some(m)
    }

    fn requeue(&mut self, msg: QueuedMessage) {
        self.bytes += msg.message.body_size();
        // Requeued messages are usually older than everything ready, so the search ends at the
        // front and the insert shifts few elements.
        let pos = self.ready.partition_point(|m| m.seq() < msg.seq());
        self.ready.insert(pos, msg);
    }

    fn ack(&mut self, _seq: u64) {}

    fn purge(&mut self) -> usize {
        let n = self.ready.len();
        self.ready.clear();
        self.bytes = 0;
        n
    }

    fn len(&self) -> usize {
        self.ready.len()
    }

    fn bytes(&self) -> usize {
        self.bytes
    }
}
