//! The seam between a queue and where its messages are kept.
//!
//! A queue talks to its messages only through [`MessageStore`]: push, shift, requeue, ack,
//! purge. [`MemoryStore`] keeps everything in RAM (queues of a broker without a data
//! directory, and tests); `PagedStore` (paged_store.rs) writes persistent messages of durable
//! queues to disk and pages any queue's tail out under memory pressure.

use crate::dead_letter::DeathReason;
use crate::message::{Message, QueuedMessage};
use ferrymq_store::StoreError;
use std::collections::VecDeque;
use std::sync::Arc;

/// A ready message taken out to be held as an at-least-once dead letter
/// ([`MessageStore::remove_held`]).
pub struct HeldOut {
    /// Its body bytes (held letters count toward `x-max-length-bytes`).
    pub bytes: usize,
    /// The message, when it was in RAM; `None` for one whose record is on disk and was not
    /// read back.
    pub message: Option<Arc<Message>>,
}

/// Where a queue's ready messages are kept.
pub trait MessageStore: Send {
    /// Appends a new message at the tail; `deadline` (ms on `expiry::now_ms`'s clock) is when
    /// it expires, kept with it on disk so it still expires then after a restart. Returns the
    /// group-commit ticket after which it is on disk, when it had to be made durable; an
    /// error refuses the message.
    fn push(
        &mut self,
        msg: QueuedMessage,
        deadline: Option<u64>,
    ) -> Result<Option<u64>, StoreError>;
    /// Removes and returns the message at the head.
    fn shift(&mut self) -> Option<QueuedMessage>;
    /// Puts a delivered-but-unacked message back at its original position.
    fn requeue(&mut self, msg: QueuedMessage);
    /// Records that `msg`, just taken from the head, goes to a consumer that must
    /// acknowledge it: a store that keeps it across restarts writes that down before
    /// returning, so only such messages come back `redelivered`.
    fn delivered(&mut self, _msg: &QueuedMessage) {}
    /// Writes what the store buffered of acks and delivered marks (see
    /// [`MessageStore::unflushed`]).
    fn flush(&mut self) {}
    /// Whether acks or delivered marks are buffered: the queue flushes them soon after.
    fn unflushed(&self) -> bool {
        false
    }
    /// Records that a delivered message was acknowledged (or otherwise finished with).
    fn ack(&mut self, seq: u64);
    /// Records that `seq`, already taken from the ready messages (delivered, or expired at
    /// the head), is held as an at-least-once dead letter: a store that keeps it across
    /// restarts marks it, with the reason (written by the next [`MessageStore::flush`]),
    /// and keeps its record until [`MessageStore::ack`].
    fn hold(&mut self, _seq: u64, _reason: DeathReason) {}
    /// The highest group-commit ticket known durable (`u64::MAX` for a store that waits for
    /// nothing): a held dead letter is acked once its targets' writes are this far.
    fn synced(&self) -> u64 {
        u64::MAX
    }
    /// As [`MessageStore::remove`], for a message held as an at-least-once dead letter: its
    /// record is kept (and marked, see [`MessageStore::hold`]) until [`MessageStore::ack`].
    /// Returns its body size and, if it was in RAM anyway, the message; a message paged out
    /// to disk is not read back (see [`MessageStore::read_held`]).
    fn remove_held(&mut self, seq: u64, _reason: DeathReason) -> Option<HeldOut> {
        self.remove(seq).map(|m| HeldOut {
            bytes: m.message.body_size(),
            message: Some(m.message),
        })
    }
    /// Whether the records of held dead letters stay on disk and can be read back with
    /// [`MessageStore::read_held`]: the queue then keeps only their positions in RAM, not
    /// the messages. False for stores without a log (a broker without a data directory):
    /// their held letters stay in RAM.
    fn holds_on_disk(&self) -> bool {
        false
    }
    /// Reads held dead letter `seq`'s message back from its record (see
    /// [`MessageStore::holds_on_disk`]); `None` when it cannot be read (the caller drops
    /// the letter: nothing could ever forward it).
    fn read_held(&mut self, _seq: u64) -> Option<Arc<Message>> {
        None
    }
    /// Takes a ready message out of the middle of the queue (it expired), wherever it is:
    /// in memory, or paged out to disk (pushed with a deadline). `None` when it is not ready
    /// (delivered and unacked) or gone.
    fn remove(&mut self, seq: u64) -> Option<QueuedMessage>;
    /// As [`MessageStore::remove`], for a message nothing will be done with (it expired and
    /// is not dead-lettered): a store may settle it without reading it back. Returns
    /// whether it was there.
    fn discard(&mut self, seq: u64) -> bool {
        self.remove(seq).is_some()
    }
    /// Drops every ready message and returns how many there were. `purged` is told the
    /// sequence number of each dropped message that may have a deadline (the others may go
    /// unnamed, so a store need not read a backlog back to purge it).
    fn purge(&mut self, purged: &mut dyn FnMut(u64)) -> usize;
    /// Number of ready messages.
    fn len(&self) -> usize;
    /// Whether there are no ready messages.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Total body bytes of the ready messages.
    fn bytes(&self) -> usize;
    /// Ready messages kept only on disk (paged out) and their body bytes, approximately.
    fn paged_out(&self) -> (usize, usize) {
        (0, 0)
    }
    /// The queue was deleted: drop everything, files included.
    fn destroy(&mut self) {
        self.purge(&mut |_| {});
    }
}

/// Ready messages in memory, ordered by sequence number.
#[derive(Default)]
pub struct MemoryStore {
    /// Entries in sequence order; `dead` of them are tombstones of removed messages.
    ready: VecDeque<QueuedMessage>,
    dead: usize,
    bytes: usize,
}

/// Finds the ready entry for `seq` in a deque sorted by sequence number and replaces it with
/// a tombstone. Returns its index and the message.
pub(crate) fn take_out(
    entries: &mut VecDeque<QueuedMessage>,
    seq: u64,
) -> Option<(usize, QueuedMessage)> {
    let i = entries.partition_point(|m| m.seq() < seq);
    let e = entries
        .get_mut(i)
        .filter(|e| e.seq() == seq && !e.is_tombstone())?;
    Some((i, e.take_out()))
}

impl MessageStore for MemoryStore {
    fn push(&mut self, msg: QueuedMessage, _: Option<u64>) -> Result<Option<u64>, StoreError> {
        self.bytes += msg.message.body_size();
        self.ready.push_back(msg);
        Ok(None)
    }

    fn shift(&mut self) -> Option<QueuedMessage> {
        loop {
            let Some(m) = self.ready.pop_front() else {
                // Drained: give back what a deep backlog needed.
                if self.ready.capacity() > 65536 {
                    self.ready = VecDeque::new();
                }
                return None;
            };
            if m.is_tombstone() {
                self.dead -= 1;
                continue;
            }
            self.bytes -= m.message.body_size();
            return Some(m);
        }
    }

    fn requeue(&mut self, msg: QueuedMessage) {
        self.bytes += msg.message.body_size();
        // Requeued messages are usually older than everything ready, so the search ends at the
        // front and the insert shifts few elements.
        let pos = self.ready.partition_point(|m| m.seq() < msg.seq());
        self.ready.insert(pos, msg);
    }

    fn ack(&mut self, _seq: u64) {}

    fn remove(&mut self, seq: u64) -> Option<QueuedMessage> {
        let (_, m) = take_out(&mut self.ready, seq)?;
        self.bytes -= m.message.body_size();
        self.dead += 1;
        while self.ready.back().is_some_and(QueuedMessage::is_tombstone) {
            self.ready.pop_back();
            self.dead -= 1;
        }
        Some(m)
    }

    fn purge(&mut self, purged: &mut dyn FnMut(u64)) -> usize {
        let n = self.len();
        for m in self.ready.iter().filter(|m| !m.is_tombstone()) {
            purged(m.seq());
        }
        self.ready.clear();
        self.dead = 0;
        self.bytes = 0;
        n
    }

    fn len(&self) -> usize {
        self.ready.len() - self.dead
    }

    fn bytes(&self) -> usize {
        self.bytes
    }
}
