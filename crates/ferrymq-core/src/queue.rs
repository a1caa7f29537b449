//! A queue: its ready messages, its consumers, and fair dispatch between them.
//!
//! Each queue owns its state behind one short-held mutex (see ADR 0002). Publishing threads
//! push and dispatch under that lock; protocol connections ack and requeue through it.

use crate::consumer::{ConsumerSink, SinkRefusal};
use crate::error::{CoreError, CoreResult};
use crate::message::{Message, QueuedMessage};
use crate::store::{MemoryStore, MessageStore};
use crate::value::FieldTable;
use crate::ConnectionId;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Declaration options of a queue.
#[derive(Debug, Clone, Default)]
pub struct QueueOptions {
    /// Survives a broker restart.
    pub durable: bool,
    /// Owned by one connection and deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes (after it had one).
    pub auto_delete: bool,
    /// Declaration arguments (`x-...`).
    pub arguments: FieldTable,
}

static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

/// A consumer attached to a queue.
pub struct ConsumerEntry {
    /// Broker-unique id, used to detach it.
    pub id: u64,
    /// The protocol-level consumer tag.
    pub tag: String,
    /// Where deliveries go.
    pub sink: Arc<dyn ConsumerSink>,
    /// Whether deliveries are settled on sending (no acks).
    pub no_ack: bool,
    /// Whether this consumer holds the queue exclusively.
    pub exclusive: bool,
    /// Connection owning the consumer.
    pub connection: ConnectionId,
}

impl ConsumerEntry {
    /// A consumer with a fresh id.
    pub fn new(
        tag: &str,
        sink: Arc<dyn ConsumerSink>,
        no_ack: bool,
        exclusive: bool,
        connection: ConnectionId,
    ) -> Self {
        ConsumerEntry {
            id: NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed),
            tag: tag.to_string(),
            sink,
            no_ack,
            exclusive,
            connection,
        }
    }
}

struct QueueState {
    store: Box<dyn MessageStore>,
    consumers: Vec<ConsumerEntry>,
    next_consumer: usize,
    next_seq: u64,
    unacked: usize,
    had_consumer: bool,
    deleted: bool,
}

/// A message queue.
pub struct Queue {
    /// Queue name.
    pub name: String,
    /// Name of the vhost it lives in.
    pub vhost: String,
    /// Declaration options.
    pub options: QueueOptions,
    /// Owning connection of an exclusive queue.
    pub owner: Option<ConnectionId>,
    state: Mutex<QueueState>,
}

/// What a queue did with a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Taken. With a ticket, it is on disk once group commit reaches it.
    Accepted(Option<u64>),
    /// Not taken: the queue was deleted meanwhile, or its store could not write it.
    Refused,
}

/// Counts reported by queue.declare and the management views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Ready messages.
    pub messages: usize,
    /// Delivered, not yet acknowledged.
    pub unacked: usize,
    /// Attached consumers.
    pub consumers: usize,
}

impl Queue {
    /// A new, empty queue whose messages stay in memory.
    pub fn new(
        name: &str,
        vhost: &str,
        options: QueueOptions,
        owner: Option<ConnectionId>,
    ) -> Self {
        Queue::with_store(
            name,
            vhost,
            options,
            owner,
            Box::new(MemoryStore::default()),
            1,
        )
    }

    /// A queue over `store`, which may already hold messages numbered below `next_seq`.
    pub fn with_store(
        name: &str,
        vhost: &str,
        options: QueueOptions,
        owner: Option<ConnectionId>,
        store: Box<dyn MessageStore>,
        next_seq: u64,
    ) -> Self {
        Queue {
            name: name.to_string(),
            vhost: vhost.to_string(),
            options,
            owner,
            state: Mutex::new(QueueState {
                store,
                consumers: Vec::new(),
                next_consumer: 0,
                next_seq,
                unacked: 0,
                had_consumer: false,
                deleted: false,
            }),
        }
    }

    /// Ready, unacked and consumer counts.
    pub fn counts(&self) -> QueueCounts {
        let st = self.state.lock();
        QueueCounts {
            messages: st.store.len(),
            unacked: st.unacked,
            consumers: st.consumers.len(),
        }
    }

    /// Whether the queue has been deleted.
    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Whether `conn` may use this queue (exclusive queues belong to one connection).
    pub fn check_access(&self, conn: ConnectionId) -> CoreResult<()> {
        match self.owner {
            Some(owner) if owner != conn => Err(Queue::locked_error(self)),
            _ => Ok(()),
        }
    }

    /// Appends a message and delivers it if a consumer can take it.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> Enqueued {
        let mut st = self.state.lock();
        if st.deleted {
            return Enqueued::Refused;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let ticket = match st.store.push(QueuedMessage::new(seq, message)) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(queue = %self.name, vhost = %self.vhost, "message refused: {e}");
                return Enqueued::Refused;
            }
        };
        if !st.consumers.is_empty() {
            self.dispatch_locked(&mut st);
        }
        Enqueued::Accepted(ticket)
    }

    /// Delivers ready messages to consumers that have credit. Called by protocol code when a
    /// consumer gains credit (ack, flow on, socket drained).
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        // Round-robin, one message per consumer turn: fair dispatch as RabbitMQ does it.
        let mut idle = 0usize;
        while !st.consumers.is_empty() && idle < st.consumers.len() && !st.store.is_empty() {
            let i = st.next_consumer % st.consumers.len();
            st.next_consumer = i + 1;
            if !st.consumers[i].sink.has_credit() {
                idle += 1;
                continue;
            }
            let Some(msg) = st.store.shift() else { break };
            let ack_required = !st.consumers[i].no_ack;
            let seq = msg.seq();
            match st.consumers[i].sink.deliver(self, msg, ack_required) {
                Ok(()) => {
                    idle = 0;
                    if ack_required {
                        st.unacked += 1;
                    } else {
                        st.store.ack(seq);
                    }
                }
                Err(SinkRefusal::Busy(m)) => {
                    st.store.requeue(m);
                    idle += 1;
                }
                Err(SinkRefusal::Gone(m)) => {
                    st.store.requeue(m);
                    st.consumers.remove(i);
                }
            }
        }
    }

    /// Takes the head message for basic.get. Returns it with the number of messages left.
    pub fn get(&self, ack_required: bool) -> Option<(QueuedMessage, usize)> {
        let mut st = self.state.lock();
        let msg = st.store.shift()?;
        if ack_required {
            st.unacked += 1;
        } else {
            st.store.ack(msg.seq());
        }
        let left = st.store.len();
        Some((msg, left))
    }

    /// Settles delivered messages (ack, or reject without requeue).
    pub fn ack(&self, seqs: &[u64]) {
        let mut st = self.state.lock();
        for &s in seqs {
            st.store.ack(s);
        }
        st.unacked = st.unacked.saturating_sub(seqs.len());
    }

    /// Puts delivered messages back at their original positions, marked redelivered, and
    /// dispatches them again.
    pub fn requeue(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(msgs.len());
        if st.deleted {
            return;
        }
        for mut m in msgs {
            m.mark_returned();
            st.store.requeue(m);
        }
        self.dispatch_locked(&mut st);
    }

    /// Attaches a consumer, enforcing exclusive-consumer rules, and starts delivering.
    pub fn add_consumer(self: &Arc<Self>, entry: ConsumerEntry) -> CoreResult<()> {
        let mut st = self.state.lock();
        if st.deleted {
            return Err(CoreError::NotFound(format!(
                "no queue '{}' in vhost '{}'",
                self.name, self.vhost
            )));
        }
        if st.consumers.iter().any(|c| c.exclusive) || (entry.exclusive && !st.consumers.is_empty())
        {
            return Err(CoreError::AccessRefused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        st.consumers.push(entry);
        st.had_consumer = true;
        self.dispatch_locked(&mut st);
        Ok(())
    }

    /// Detaches a consumer. Returns true if the queue is auto-delete and now has no consumers,
    /// i.e. the caller should delete it.
    pub fn remove_consumer(&self, id: u64) -> bool {
        let mut st = self.state.lock();
        st.consumers.retain(|c| c.id != id);
        self.options.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> usize {
        self.state.lock().store.purge()
    }

    /// Marks the queue deleted, drops its messages and tells every consumer (except
    /// `except`, the one whose cancel caused the delete). Returns the ready count it had.
    pub fn mark_deleted(&self, except: Option<u64>) -> usize {
        let consumers = {
            let mut st = self.state.lock();
            if st.deleted {
                return 0;
            }
            st.deleted = true;
            let n = st.store.len();
            st.store.destroy();
            let cs = std::mem::take(&mut st.consumers);
            (n, cs)
        };
        let (n, cs) = consumers;
        for c in cs {
            if Some(c.id) != except {
                c.sink.cancelled_by_server();
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Properties;
    use bytes::Bytes;
    use std::sync::atomic::AtomicUsize;

    struct CountingSink {
        credit: AtomicUsize,
        got: Mutex<Vec<(u64, bool)>>,
    }

    impl ConsumerSink for CountingSink {
        fn has_credit(&self) -> bool {
            self.credit.load(Ordering::Relaxed) > 0
        }
        fn deliver(
            &self,
            _q: &Arc<Queue>,
            m: QueuedMessage,
            _ack: bool,
        ) -> Result<(), SinkRefusal> {
            if self.credit.load(Ordering::Relaxed) == 0 {
                return Err(SinkRefusal::Busy(m));
            }
            self.credit.fetch_sub(1, Ordering::Relaxed);
            self.got.lock().push((m.seq(), m.redelivered()));
            Ok(())
        }
        fn cancelled_by_server(&self) {}
    }

    fn msg() -> Arc<Message> {
        Arc::new(
            Message::from_properties("", "q", &Properties::default(), Bytes::from_static(b"x"))
                .unwrap(),
        )
    }

    fn sink(credit: usize) -> Arc<CountingSink> {
        Arc::new(CountingSink {
            credit: AtomicUsize::new(credit),
            got: Mutex::new(Vec::new()),
        })
    }

    #[test]
    fn round_robin_honours_credit() {
        let q = Arc::new(Queue::new("q", "/", QueueOptions::default(), None));
        let (a, b) = (sink(1), sink(10));
        q.add_consumer(ConsumerEntry::new("a", a.clone(), false, false, 1))
            .unwrap();
        q.add_consumer(ConsumerEntry::new("b", b.clone(), false, false, 1))
            .unwrap();
        for _ in 0..4 {
            q.publish(msg());
        }
        assert_eq!(a.got.lock().len(), 1);
        assert_eq!(b.got.lock().len(), 3);
        assert_eq!(q.counts().unacked, 4);
    }

    #[test]
    fn requeue_goes_back_to_its_place() {
        let q = Arc::new(Queue::new("q", "/", QueueOptions::default(), None));
        for _ in 0..3 {
            q.publish(msg());
        }
        let (first, _) = q.get(true).unwrap();
        q.requeue(vec![first]);
        let (again, left) = q.get(true).unwrap();
        assert_eq!(again.seq(), 1);
        assert!(again.redelivered());
        assert_eq!(left, 2);
    }
}
