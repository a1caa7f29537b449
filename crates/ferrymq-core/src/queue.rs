//! A queue: its ready messages, its consumers, and fair dispatch between them.
//!
//! Each queue owns its state behind one short-held mutex (see ADR 0002). Publishing threads
//! push and dispatch under that lock; protocol connections ack and requeue through it.

use crate::consumer::{ConsumerSink, SinkRefusal};
use crate::dead_letter::{DeadLetter, DeathReason};
use crate::dedup::{dedup_key, DedupCache};
use crate::error::{CoreError, CoreResult};
use crate::events::QueueEvents;
use crate::expiry::{instant_of, now_ms, Deadlines};
use crate::message::{Message, QueuedMessage};
use crate::queue_config::{DeadLetterStrategy, Overflow, QueueConfig, QueueType};
use crate::stats::QueueStats;
use crate::store::{MemoryStore, MessageStore};
use crate::timers::{self, Timed};
use crate::value::{FieldTable, FieldValue};
use crate::ConnectionId;
use ferrymq_store::{LogHealth, StoreError};
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

/// Header carrying how many times a message came back to its queue, on quorum queues (as
/// RabbitMQ's write it).
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// How soon buffered ack-log entries the queue wrote outside an ack batch (no-ack
/// deliveries, drops) are written (ms), when nothing flushes them first.
const MARK_FLUSH_MS: u64 = 5;

/// Most messages one expiry pass under a queue's lock removes (see `QueueState::expire_due`).
const EXPIRE_BATCH: usize = 1024;
/// Most body bytes of dead letters one expiry pass collects before the lock is released.
const EXPIRE_BATCH_BYTES: usize = 1 << 20;

/// How long a held dead letter that found no way waits before it is tried again (ms), unless
/// the vhost's topology changes first. RabbitMQ's dead-letter worker waits
/// `dead_letter_worker_publisher_confirm_timeout` (180 s by default); a few seconds keeps
/// retries cheap (one routing per letter) while users see the letter soon.
pub const HELD_RETRY_MS: u64 = 2000;
/// How soon after a topology change (declare, bind) held dead letters are tried again (ms):
/// a burst of declarations costs one retry.
const HELD_TOPOLOGY_DELAY_MS: u64 = 20;
/// How soon after a restart recovered held dead letters are first tried (ms): after the
/// vhost's bindings are restored.
const HELD_RESTORE_DELAY_MS: u64 = 500;
/// How often a queue whose forwarded letters wait for their targets' fsync checks (ms).
const HELD_SYNC_POLL_MS: u64 = 2;
/// Most held dead letters one retry round tries; the next round starts where it stopped.
const HELD_RETRY_BATCH: usize = 1024;
/// Most held dead letters read back from disk under one hold of the queue's lock: a round
/// reads up to [`HELD_RETRY_BATCH`] records, and publishers and consumers of the queue get
/// in between these chunks.
const HELD_READ_CHUNK: usize = 64;

thread_local! {
    /// Set while this thread forwards held dead letters: a target that in turn holds one
    /// leaves it to the timer instead of forwarding it nested (a chain of queues must not
    /// grow the stack).
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
}

/// A dead letter an at-least-once queue keeps until its copy reached every target. A fixed
/// few dozen bytes when its store keeps the record on disk (`MessageStore::holds_on_disk`):
/// peers decide how many letters are held (a dead-letter exchange that routes nowhere
/// holds every one), so the message itself is in RAM only while an attempt needs it.
struct HeldLetter {
    /// The message: from the moment it is held (it was in RAM then) or read back until the
    /// end of the attempt that needed it, when the store keeps it on disk; always, when the
    /// store cannot read it back (a broker without a data directory keeps everything in RAM).
    message: Option<Arc<Message>>,
    reason: DeathReason,
    /// Its body bytes, counted toward `x-max-length-bytes`.
    bytes: usize,
    /// When it was dead-lettered (s since the epoch): the `time` of its `x-death` entry.
    /// The copy is rebuilt from the record at each attempt, with this time, so a retry
    /// carries the very `x-death` the first attempt did (one death, as RabbitMQ counts).
    died: u64,
    /// Target queues that took the copy already: a retry does not give it to them again.
    done: Vec<String>,
    /// Being forwarded right now (outside the lock): no second attempt meanwhile.
    sending: bool,
}

/// One held letter as an attempt to forward it takes it out of the lock.
struct Attempt {
    seq: u64,
    message: Arc<Message>,
    reason: DeathReason,
    died: u64,
    done: Vec<String>,
}

/// The held dead letters of an at-least-once quorum queue. Not ready, not in
/// `message_count`, but counted against the queue's length limits, as in RabbitMQ.
#[derive(Default)]
struct Held {
    letters: BTreeMap<u64, HeldLetter>,
    bytes: usize,
    /// Held under the lock just now, forwarded once it is released.
    fresh: Vec<u64>,
    /// When the letters not taken yet are tried again (ms).
    retry_at: Option<u64>,
    /// Where the next retry round starts.
    cursor: u64,
    /// The vhost knows to retry us when its topology changes.
    registered: bool,
    /// `fresh` is a timer's retry round: if it made progress, the next round follows at
    /// once (a large backlog drains), else after [`HELD_RETRY_MS`].
    in_round: bool,
    /// Letters every target took, waiting for the targets' group commit (the writes to
    /// wait for) before the original is acked: a machine crash then cannot keep the ack
    /// and lose the copy.
    syncing: Vec<(u64, ferrymq_store::Pending)>,
    /// A job forwarding `fresh` is queued on the dead-letter thread (`held_worker`): the
    /// timer thread does not queue a second one, so one round per queue runs at a time.
    worker_queued: bool,
}

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
    /// Consumer priority (`x-priority`): higher ones are served first while they have credit.
    pub priority: i32,
    /// Its credit is shared with other consumers (AMQP's global prefetch), which quorum
    /// queues do not support.
    pub shared_credit: bool,
    /// The protocol channel it was made on, and that channel's prefetch then (management
    /// views).
    pub channel: Option<(u16, u32)>,
    /// Who consumes, for the firehose's delivery traces (set by the session).
    pub origin: Option<Arc<crate::trace::Origin>>,
}

impl ConsumerEntry {
    /// A consumer with a fresh id and priority 0.
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
            priority: 0,
            shared_credit: false,
            channel: None,
            origin: None,
        }
    }

    /// The same consumer, made on protocol channel `number` with `prefetch`.
    pub fn on_channel(mut self, number: u16, prefetch: u32) -> Self {
        self.channel = Some((number, prefetch));
        self
    }

    /// The same consumer, its credit shared with others (a channel-wide prefetch).
    pub fn with_shared_credit(mut self, shared: bool) -> Self {
        self.shared_credit = shared;
        self
    }

    /// The same consumer with a priority.
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
}

struct QueueState {
    store: Box<dyn MessageStore>,
    /// Sorted by priority, highest first; arrival order within a priority. With single
    /// active consumer the first one is the active one.
    consumers: Vec<ConsumerEntry>,
    next_consumer: usize,
    next_seq: u64,
    unacked: usize,
    had_consumer: bool,
    deleted: bool,
    cfg: QueueConfig,
    deadlines: Deadlines,
    dedup: Option<DedupCache>,
    /// When the queue was last used (consumer, get, redeclare), for `x-expires`, in ms.
    last_used: u64,
    /// Earliest wake-up already requested from the timer thread, in ms.
    timer_at: Option<u64>,
    /// Messages to dead-letter once the lock is released.
    dead: Vec<DeadLetter>,
    /// At-least-once dead letters waiting for their targets.
    held: Held,
    /// Counters for the management API.
    stats: QueueStats,
    /// The message being timed for the delivery latency histogram: its sequence number and
    /// when it was enqueued (see [`crate::stats::LATENCY_SAMPLE`]).
    probe: Option<(u64, std::time::Instant)>,
    /// Deliveries to trace once the lock is released (only while some vhost traces).
    traced: Vec<crate::trace::PendingDelivery>,
    /// Dispatch stopped at [`crate::trace::MAX_PENDING`] noted deliveries: it goes on once
    /// they are traced.
    trace_more: bool,
}

impl QueueState {
    /// Message `seq` went to a consumer or a `basic.get`: if it is the timed one, its
    /// latency is recorded. A later one clears the probe too (the timed message was purged,
    /// expired or overtaken by a higher priority), so a lost probe never stops sampling.
    #[inline]
    fn handed_off(&mut self, seq: u64) {
        if let Some((timed, at)) = self.probe {
            if seq >= timed {
                if seq == timed {
                    crate::stats::DELIVERY_LATENCY.observe(at.elapsed().as_secs_f64());
                }
                self.probe = None;
            }
        }
    }

    /// Whether dead letters are held until their targets took them (a quorum queue with
    /// `x-dead-letter-strategy: at-least-once`, in effect only with `reject-publish`).
    fn at_least_once(&self) -> bool {
        self.cfg.dead_letter_strategy == DeadLetterStrategy::AtLeastOnce
            && self.cfg.queue_type == QueueType::Quorum
            && self.cfg.dead_letter_exchange.is_some()
    }

    /// Dead-letters message `seq`, already out of the ready messages (delivered, or taken at
    /// the head): held with its record kept (at-least-once), or settled and handed over.
    fn dead_letter_taken(&mut self, seq: u64, message: Arc<Message>, reason: DeathReason) {
        if self.at_least_once() {
            self.store.hold(seq, reason);
            self.deadlines.forget(seq);
            let bytes = message.body_size();
            self.keep(seq, Some(message), bytes, reason);
        } else {
            self.settled(seq);
            self.dead_letter(message, reason);
        }
    }

    /// Holds dead letter `seq` of `bytes` body bytes (its record marked held by the store)
    /// until its copy is taken; `message` if it is in RAM (`None`: on disk, read back when
    /// it is forwarded).
    fn keep(&mut self, seq: u64, message: Option<Arc<Message>>, bytes: usize, reason: DeathReason) {
        self.held.bytes += bytes;
        self.held.letters.insert(
            seq,
            HeldLetter {
                message,
                reason,
                bytes,
                died: crate::dead_letter::now_secs(),
                done: Vec::new(),
                sending: false,
            },
        );
        self.held.fresh.push(seq);
    }

    /// Sends `message` to the dead-letter exchange, if the queue has one; otherwise it is
    /// dropped, as in RabbitMQ.
    fn dead_letter(&mut self, message: Arc<Message>, reason: DeathReason) {
        if self.cfg.dead_letter_exchange.is_some() {
            let counted = self.cfg.queue_type == QueueType::Quorum;
            self.dead.push(DeadLetter {
                message,
                reason,
                counted,
            });
        }
    }

    /// Removes ready messages whose deadline passed, wherever they are in the queue, at most
    /// [`EXPIRE_BATCH`] of them or [`EXPIRE_BATCH_BYTES`] of dead letters: a paged backlog
    /// expiring at once must not come back into RAM at once, under this lock. Returns whether
    /// more are due (the caller releases the lock, flushes the dead letters, and goes on).
    fn expire_due(&mut self, now: u64) -> bool {
        if self.deadlines.is_empty() {
            return false;
        }
        let dead_lettered = self.cfg.dead_letter_exchange.is_some();
        let held = self.at_least_once();
        let due = self.deadlines.take_due_up_to(now, EXPIRE_BATCH);
        let mut bytes = 0;
        let mut rest = due.into_iter();
        for seq in rest.by_ref() {
            if !dead_lettered {
                // Dropped: a message on disk is settled without being read back.
                if self.store.discard(seq) {
                    self.deadlines.forget(seq);
                }
                continue;
            }
            let taken = match held {
                true => self.store.remove_held(seq, DeathReason::Expired),
                false => self.store.remove(seq).map(|m| crate::store::HeldOut {
                    bytes: m.message.body_size(),
                    message: Some(m.message),
                }),
            };
            if let Some(m) = taken {
                self.deadlines.forget(seq);
                // Only what came into RAM counts toward the batch: a held letter left on
                // disk costs its position.
                bytes += m.message.as_ref().map_or(0, |m| m.body_size());
                match (held, m.message) {
                    (true, message) => self.keep(seq, message, m.bytes, DeathReason::Expired),
                    (false, Some(message)) => self.dead_letter(message, DeathReason::Expired),
                    (false, None) => {}
                }
                if bytes >= EXPIRE_BATCH_BYTES {
                    break;
                }
            }
        }
        // Taken from the heap but not handled in this batch: due again at once.
        let mut more = false;
        for seq in rest {
            self.deadlines.retry(seq);
            more = true;
        }
        more || self.deadlines.next().is_some_and(|at| at <= now)
    }

    /// Drops messages from the head while the queue is over its length limits.
    fn drop_head_over_limits(&mut self) {
        if self.cfg.max_length.is_none() && self.cfg.max_length_bytes.is_none() {
            // The common case: no limits, so no need to count (a sum over levels in a
            // priority queue).
            return;
        }
        while self.cfg.over(self.store.len(), self.store.bytes()) {
            let Some(m) = self.store.shift() else { break };
            self.dead_letter_taken(m.seq(), m.message, DeathReason::Maxlen);
        }
    }

    /// Picks the consumer for the next delivery: the active one under single active
    /// consumer, else round-robin among the highest-priority consumers that have credit.
    fn pick(&mut self) -> Option<usize> {
        let n = self.consumers.len();
        if n == 0 {
            return None;
        }
        if self.cfg.single_active_consumer {
            return self.consumers[0].sink.has_credit().then_some(0);
        }
        let mut start = 0;
        while start < n {
            let p = self.consumers[start].priority;
            let len = self.consumers[start..]
                .iter()
                .take_while(|c| c.priority == p)
                .count();
            for k in 0..len {
                let i = start + (self.next_consumer + k) % len;
                if self.consumers[i].sink.has_credit() {
                    self.next_consumer = i - start + 1;
                    return Some(i);
                }
            }
            start += len;
        }
        None
    }

    /// Takes the next message to hand out, expiring the ones whose deadline passed.
    fn shift_live(&mut self, now: &mut Option<u64>) -> Option<QueuedMessage> {
        loop {
            let m = self.store.shift()?;
            if self.deadlines.is_empty() {
                return Some(m);
            }
            let t = *now.get_or_insert_with(now_ms);
            let seq = m.seq();
            if !self.deadlines.is_due(seq, t) {
                return Some(m);
            }
            self.dead_letter_taken(seq, m.message, DeathReason::Expired);
        }
    }

    /// Forgets held letter `seq`: its copy is in every target. Acks its record.
    fn release_held(&mut self, seq: u64) {
        if let Some(h) = self.held.letters.remove(&seq) {
            self.held.bytes = self.held.bytes.saturating_sub(h.bytes);
            self.store.ack(seq);
        }
    }

    /// The next [`HELD_RETRY_BATCH`] held letters to try again, from where the last round
    /// stopped (wrapping around), so a large stuck backlog is tried evenly, not spun on.
    fn retry_round(&mut self) -> Vec<u64> {
        let from = self.held.cursor;
        let mut out: Vec<u64> = self
            .held
            .letters
            .range(from..)
            .map(|(s, _)| *s)
            .take(HELD_RETRY_BATCH)
            .collect();
        if out.len() < HELD_RETRY_BATCH {
            let more = HELD_RETRY_BATCH - out.len();
            out.extend(self.held.letters.range(..from).map(|(s, _)| *s).take(more));
        }
        self.held.cursor = out.last().map_or(0, |s| s + 1);
        out
    }

    fn settled(&mut self, seq: u64) {
        self.store.ack(seq);
        self.deadlines.forget(seq);
    }
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
    /// The vhost it dead-letters into and is deleted from when it expires.
    home: OnceLock<Weak<dyn QueueEvents>>,
    /// Whether its log's writes reached the disk (durable queues with a data directory).
    health: Option<Arc<LogHealth>>,
    /// A durable queue's directory and the incarnation id it is named after.
    files: Option<(std::path::PathBuf, Option<String>)>,
    state: Mutex<QueueState>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

/// What a queue did with a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Taken (or dropped as a duplicate). With a ticket, it is on disk once group commit
    /// reaches it.
    Accepted(Option<u64>),
    /// Not taken: the queue was deleted meanwhile, is full with `reject-publish`, or its
    /// store could not write it.
    Refused,
}

/// A consumer as the management API lists it.
#[derive(Debug, Clone)]
pub struct ConsumerView {
    /// Its tag.
    pub tag: String,
    /// The connection it belongs to.
    pub connection: ConnectionId,
    /// Whether deliveries wait for an ack.
    pub ack_required: bool,
    /// Whether it consumes exclusively.
    pub exclusive: bool,
    /// Its `x-priority`.
    pub priority: i32,
    /// The channel it was made on and its prefetch then.
    pub channel: Option<(u16, u32)>,
}

/// A queue's counts, counters and consumers, read at one instant.
#[derive(Debug, Clone)]
pub struct QueueSnapshot {
    /// Ready, unacked and consumer counts.
    pub counts: QueueCounts,
    /// Body bytes of the ready messages.
    pub ready_bytes: usize,
    /// At-least-once dead letters still held.
    pub held: usize,
    /// Ready messages only on disk (paged out) and their body bytes, approximately.
    pub paged_out: (usize, usize),
    /// Classic or quorum.
    pub queue_type: crate::queue_config::QueueType,
    /// Message counters.
    pub stats: QueueStats,
    /// Attached consumers.
    pub consumers: Vec<ConsumerView>,
    /// With no consumers, when it was last used (ms since the epoch).
    pub idle_since: Option<u64>,
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
            home: OnceLock::new(),
            health: None,
            files: None,
            state: Mutex::new(QueueState {
                store,
                consumers: Vec::new(),
                next_consumer: 0,
                next_seq,
                unacked: 0,
                had_consumer: false,
                deleted: false,
                cfg: QueueConfig::default(),
                deadlines: Deadlines::default(),
                dedup: None,
                last_used: now_ms(),
                timer_at: None,
                dead: Vec::new(),
                held: Held::default(),
                stats: QueueStats::default(),
                probe: None,
                traced: Vec::new(),
                trace_more: false,
            }),
        }
    }

    /// The same queue, writing to a durable log whose state `health` tracks.
    pub fn with_health(mut self, health: Option<Arc<LogHealth>>) -> Self {
        self.health = health;
        self
    }

    /// The same queue, keeping its messages in `dir`, named after `incarnation` (none for a
    /// queue recovered from a directory named the way older versions did).
    pub fn with_files(mut self, dir: std::path::PathBuf, incarnation: Option<String>) -> Self {
        self.files = Some((dir, incarnation));
        self
    }

    /// A durable queue's directory.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.files.as_ref().map(|(d, _)| d.as_path())
    }

    /// Which declaration of its name this queue is (durable queues): its definitions entry
    /// and directory carry the id.
    pub fn incarnation(&self) -> Option<&str> {
        self.files.as_ref().and_then(|(_, i)| i.as_deref())
    }

    /// The same queue with the deadlines of messages its store recovered (sequence number,
    /// deadline on `now_ms`'s clock); the timer is armed when it is attached.
    pub fn with_deadlines(self, deadlines: Vec<(u64, u64)>) -> Self {
        {
            let mut st = self.state.lock();
            for (seq, at) in deadlines {
                st.deadlines.add(seq, at);
            }
        }
        self
    }

    /// The same queue with the at-least-once dead letters its store recovered as held
    /// (sequence number, reason, body bytes; their records stay on disk): they are forwarded
    /// again shortly after it is attached, not delivered to its consumers.
    pub fn with_held(self, held: Vec<(u64, DeathReason, usize)>) -> Self {
        {
            let mut st = self.state.lock();
            for (seq, reason, bytes) in held {
                // Their `x-death` time is the restart's: the held mark does not store it.
                st.keep(seq, None, bytes, reason);
            }
            st.held.fresh.clear();
        }
        self
    }

    /// How many dead letters the queue holds until their targets take them.
    pub fn held(&self) -> usize {
        self.state.lock().held.letters.len()
    }

    /// How many of the held dead letters have their message in RAM right now: those of a
    /// store without a disk (a broker without a data directory), and, for a quorum queue on
    /// a data dir, only those an attempt is forwarding at this moment.
    pub fn held_in_ram(&self) -> usize {
        let st = self.state.lock();
        st.held
            .letters
            .values()
            .filter(|h| h.message.is_some())
            .count()
    }

    /// Its durable log's health, if it has one: a publish accepted with a ticket is kept once
    /// group commit reaches it, unless this log failed.
    pub fn health(&self) -> Option<&Arc<LogHealth>> {
        self.health.as_ref()
    }

    /// Attaches the queue to its vhost and applies its feature settings.
    pub fn attach(self: &Arc<Self>, home: Weak<dyn QueueEvents>, cfg: QueueConfig) {
        let _ = self.home.set(home);
        self.apply_config(cfg, true);
    }

    /// Applies new feature settings (a policy changed). The priority levels and single
    /// active consumer are fixed when the queue is declared and stay as they were.
    pub fn set_config(self: &Arc<Self>, cfg: QueueConfig) {
        self.apply_config(cfg, false);
    }

    fn apply_config(self: &Arc<Self>, mut cfg: QueueConfig, initial: bool) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        if !initial {
            cfg.max_priority = st.cfg.max_priority;
            cfg.single_active_consumer = st.cfg.single_active_consumer;
        }
        st.dedup = match (cfg.dedup, st.dedup.take()) {
            (None, _) => None,
            (Some(c), Some(mut d)) => {
                d.set_config(c);
                Some(d)
            }
            (Some(c), None) => Some(DedupCache::new(c)),
        };
        st.cfg = cfg;
        if !st.held.letters.is_empty() {
            if !st.at_least_once() {
                // No longer at-least-once (a policy changed the strategy, the overflow mode
                // or the dead-letter exchange): RabbitMQ deletes the held letters then
                // (`rabbit_fifo_dlx:switch_from`), and so do we. Dead-lettering them again at
                // most once would duplicate every letter some target has already: taken by
                // some of its targets, waiting for a target's fsync, or being forwarded at
                // this moment outside the lock (that attempt finishes, its result is
                // dropped: each target gets the letter at most once).
                let letters = std::mem::take(&mut st.held.letters);
                let bytes = st.held.bytes;
                st.held = Held {
                    worker_queued: st.held.worker_queued,
                    ..Held::default()
                };
                for seq in letters.keys() {
                    st.store.ack(*seq);
                }
                st.store.flush();
                tracing::info!(
                    queue = %self.name,
                    vhost = %self.vhost,
                    "deleted {} held dead letters ({bytes} body bytes): at-least-once \
                     dead-lettering was switched off",
                    letters.len()
                );
            } else if initial {
                let at = now_ms() + HELD_RESTORE_DELAY_MS;
                self.arm_retry(&mut st, at);
            }
        }
        st.drop_head_over_limits();
        if let Some(e) = st.cfg.expires {
            let at = st.last_used.saturating_add(e);
            self.arm(&mut st, at);
        }
        if let Some(at) = st.deadlines.next().filter(|_| initial) {
            // Messages recovered with deadlines expire on time without a publish to wake us.
            self.arm(&mut st, at);
        }
        self.unlock_and_flush(st);
    }

    /// The effective feature settings.
    pub fn config(&self) -> QueueConfig {
        self.state.lock().cfg.clone()
    }

    /// The queue's own consumer timeout in ms (`x-consumer-timeout` or a policy), if any.
    pub fn consumer_timeout(&self) -> Option<u64> {
        self.state.lock().cfg.consumer_timeout
    }

    /// Counts and counters at one instant, without the consumer list (what rate sampling
    /// reads every few seconds from every queue).
    pub fn stats(&self) -> (QueueCounts, QueueStats) {
        let st = self.state.lock();
        let counts = QueueCounts {
            messages: st.store.len(),
            unacked: st.unacked,
            consumers: st.consumers.len(),
        };
        (counts, st.stats)
    }

    /// What the management API shows of the queue, read under its lock at once.
    pub fn snapshot(&self) -> QueueSnapshot {
        let st = self.state.lock();
        QueueSnapshot {
            counts: QueueCounts {
                messages: st.store.len(),
                unacked: st.unacked,
                consumers: st.consumers.len(),
            },
            ready_bytes: st.store.bytes(),
            held: st.held.letters.len(),
            paged_out: st.store.paged_out(),
            queue_type: st.cfg.queue_type,
            stats: st.stats,
            consumers: st
                .consumers
                .iter()
                .map(|c| ConsumerView {
                    tag: c.tag.clone(),
                    connection: c.connection,
                    ack_required: !c.no_ack,
                    exclusive: c.exclusive,
                    priority: c.priority,
                    channel: c.channel,
                })
                .collect(),
            idle_since: st
                .consumers
                .is_empty()
                .then(|| crate::expiry::to_wall(st.last_used)),
        }
    }

    /// Classic or quorum.
    pub fn queue_type(&self) -> crate::queue_config::QueueType {
        self.state.lock().cfg.queue_type
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

    /// Whether the queue's definition and messages are kept on disk: durable and not
    /// exclusive (an exclusive queue never outlives its connection).
    pub fn is_persisted(&self) -> bool {
        self.options.durable && !self.options.exclusive
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

    /// Records a use of the queue (redeclare, basic.get) for `x-expires`.
    pub fn touch(&self) {
        self.state.lock().last_used = now_ms();
    }

    /// Requests a timer wake-up at `at` (ms) unless an earlier one is pending.
    fn arm(self: &Arc<Self>, st: &mut QueueState, at: u64) {
        if st.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        st.timer_at = Some(at);
        let me: Weak<dyn Timed> = Arc::downgrade(self) as Weak<dyn Timed>;
        timers::schedule(instant_of(at), me);
    }

    /// Has held dead letters tried again at `at` (ms), unless a retry is due earlier.
    fn arm_retry(self: &Arc<Self>, st: &mut QueueState, at: u64) {
        if st.held.retry_at.is_some_and(|t| t <= at) {
            return;
        }
        st.held.retry_at = Some(at);
        self.arm(st, at);
    }

    /// Acks the held letters whose copies' writes are now durable; those a failed sync lost
    /// are forwarded again (to every target: a failed log refuses them until a restart).
    fn settle_synced(self: &Arc<Self>, st: &mut QueueState, now: u64) {
        let synced = st.store.synced();
        let mut waiting = std::mem::take(&mut st.held.syncing);
        waiting.retain(|(seq, pending)| {
            if pending.ticket() > synced {
                return true;
            }
            if !pending.lost() {
                st.release_held(*seq);
            } else if let Some(h) = st.held.letters.get_mut(seq) {
                h.sending = false;
                h.done.clear();
                st.held.retry_at = Some(now);
            }
            false
        });
        st.held.syncing = waiting;
        if !st.held.syncing.is_empty() {
            self.arm(st, now + HELD_SYNC_POLL_MS);
        }
        if st.held.retry_at.is_some_and(|t| t <= now) {
            self.arm(st, now);
        }
    }

    /// The vhost's topology changed (an exchange or queue declared, a binding added): held
    /// dead letters that found no way are tried again shortly.
    pub fn retry_held_soon(self: &Arc<Self>) {
        let mut st = self.state.lock();
        st.held.registered = false;
        if !st.held.letters.is_empty() && !st.deleted {
            let at = now_ms() + HELD_TOPOLOGY_DELAY_MS;
            self.arm_retry(&mut st, at);
        }
    }

    /// Releases the lock, then republishes the dead letters collected under it and
    /// forwards the ones newly held.
    /// Deliveries noted for the firehose are traced then too; if dispatch stopped because
    /// [`crate::trace::MAX_PENDING`] were noted, it goes on afterwards.
    fn unlock_and_flush(self: &Arc<Self>, st: parking_lot::MutexGuard<'_, QueueState>) {
        let mut more = self.unlock_flush_trace(st);
        while more {
            let mut st = self.state.lock();
            self.dispatch_locked(&mut st);
            more = self.unlock_flush_trace(st);
        }
    }

    /// One round of [`Queue::unlock_and_flush`]: whether dispatch must go on.
    fn unlock_flush_trace(
        self: &Arc<Self>,
        mut st: parking_lot::MutexGuard<'_, QueueState>,
    ) -> bool {
        let traced = std::mem::take(&mut st.traced);
        let more = std::mem::take(&mut st.trace_more);
        self.flush_dead(st, false);
        if !traced.is_empty() {
            if let Some(home) = self.home.get().and_then(Weak::upgrade) {
                home.trace_deliveries(&self.name, traced);
            }
        }
        more
    }

    /// [`Queue::unlock_and_flush`] on the timer thread: the held letters are forwarded by a
    /// job on the dead-letter thread instead (`held_worker`), since a round reads up to
    /// [`HELD_RETRY_BATCH`] records back from disk and every other timer of the process
    /// would wait for it. At-most-once dead letters are republished here, as before: they
    /// are in RAM already and bounded per pass (`EXPIRE_BATCH_BYTES`).
    fn flush_dead(self: &Arc<Self>, mut st: parking_lot::MutexGuard<'_, QueueState>, timer: bool) {
        if st.dead.is_empty() && st.held.fresh.is_empty() {
            return;
        }
        let letters = std::mem::take(&mut st.dead);
        let (dlx, dlrk) = (
            st.cfg.dead_letter_exchange.clone(),
            st.cfg.dead_letter_routing_key.clone(),
        );
        if st.held.fresh.is_empty() {
            drop(st);
        } else if timer {
            let submit = !std::mem::replace(&mut st.held.worker_queued, true);
            // Submitted with the lock released: without its thread, `submit` runs the job
            // here, and the job takes the lock.
            drop(st);
            if submit {
                let me = Arc::clone(self);
                crate::held_worker::submit(move || me.run_held_job());
            }
        } else {
            let fresh = std::mem::take(&mut st.held.fresh);
            let round = std::mem::take(&mut st.held.in_round);
            self.forward_held(st, fresh, round);
        }
        if letters.is_empty() {
            return;
        }
        let (Some(dlx), Some(home)) = (dlx, self.home.get().and_then(Weak::upgrade)) else {
            return;
        };
        home.dead_letter(&self.name, &dlx, dlrk.as_deref(), letters);
    }

    /// The dead-letter thread's job: forwards what the timer left in `fresh` (a retry round,
    /// letters that expired).
    fn run_held_job(self: Arc<Self>) {
        let mut st = self.state.lock();
        st.held.worker_queued = false;
        if st.deleted || st.held.fresh.is_empty() {
            return;
        }
        let fresh = std::mem::take(&mut st.held.fresh);
        let round = std::mem::take(&mut st.held.in_round);
        self.forward_held(st, fresh, round);
    }

    /// Forwards the held dead letters `seqs` to their targets with the lock released, then
    /// settles those every target took: for a durable target the copy is written to its log
    /// before the ack of the original is, so a crash in between keeps both (a duplicate,
    /// never a loss). The others are tried again on the timer, or when the topology changes.
    /// Letters whose message is on disk are read back [`HELD_READ_CHUNK`] at a time, the
    /// lock released between chunks, and let go of again after their attempt.
    fn forward_held<'a>(
        self: &'a Arc<Self>,
        mut st: parking_lot::MutexGuard<'a, QueueState>,
        seqs: Vec<u64>,
        round: bool,
    ) {
        let Some(home) = self.home.get().and_then(Weak::upgrade) else {
            return;
        };
        if FORWARDING.get() {
            // Caused by forwarding another letter on this thread: left to the timer.
            let at = now_ms();
            self.arm_retry(&mut st, at);
            return;
        }
        let mut left = false;
        let mut progress = false;
        let mut rest = seqs.into_iter();
        loop {
            // Settings are read again for each chunk: a policy may have changed meanwhile.
            // Switched off at-least-once, it deleted the held letters (`apply_config`).
            if st.deleted || !st.at_least_once() {
                break;
            }
            let Some(dlx) = st.cfg.dead_letter_exchange.clone() else {
                break;
            };
            let dlrk = st.cfg.dead_letter_routing_key.clone();
            let on_disk = st.store.holds_on_disk();
            let mut batch = Vec::new();
            let mut unreadable = Vec::new();
            let mut reads = 0;
            let state = &mut *st;
            for seq in rest.by_ref() {
                let Some(h) = state.held.letters.get_mut(&seq).filter(|h| !h.sending) else {
                    continue;
                };
                let message = match &h.message {
                    Some(m) => m.clone(),
                    None => {
                        reads += 1;
                        match state.store.read_held(seq) {
                            Some(m) => m,
                            None => {
                                unreadable.push(seq);
                                continue;
                            }
                        }
                    }
                };
                h.sending = true;
                let done = std::mem::take(&mut h.done);
                batch.push(Attempt {
                    seq,
                    message,
                    reason: h.reason,
                    died: h.died,
                    done,
                });
                if reads >= HELD_READ_CHUNK {
                    break;
                }
            }
            for seq in unreadable {
                // Its record cannot be read (logged by the store): nothing could ever
                // forward it, and kept it would be retried for ever.
                st.release_held(seq);
            }
            if batch.is_empty() {
                break;
            }
            // Their held marks are written before any copy reaches a target.
            st.store.flush();
            drop(st);
            let results = self.offer(&*home, batch, &dlx, dlrk.as_deref());
            st = self.state.lock();
            let synced = st.store.synced();
            for (seq, taken, done, pending) in results {
                progress |= taken;
                let Some(h) = st.held.letters.get_mut(&seq) else {
                    // Deleted meanwhile (the queue, or at-least-once switched off).
                    continue;
                };
                if on_disk {
                    // Read back again if it must be tried again: RAM does not grow with
                    // the letters waiting.
                    h.message = None;
                }
                if taken && pending.ticket() > synced {
                    // Acked once the copies are on disk; still `sending`, so no retry
                    // meanwhile.
                    h.done = done;
                    st.held.syncing.push((seq, pending));
                } else if taken && !pending.lost() {
                    st.release_held(seq);
                } else {
                    h.sending = false;
                    // Taken but lost to a failed sync: offered to every target again.
                    h.done = if taken { Vec::new() } else { done };
                    left = true;
                }
            }
        }
        // Not reached because the loop stopped early: tried again with the next round.
        for seq in rest {
            if st.held.letters.contains_key(&seq) {
                left = true;
            }
        }
        st.store.flush();
        if !st.held.syncing.is_empty() {
            let at = now_ms() + HELD_SYNC_POLL_MS;
            self.arm(&mut st, at);
        }
        if st.held.letters.is_empty() || st.deleted {
            return;
        }
        if round && progress {
            let at = now_ms();
            self.arm_retry(&mut st, at);
        } else if left {
            let at = now_ms() + HELD_RETRY_MS;
            self.arm_retry(&mut st, at);
            if !st.held.registered {
                st.held.registered = true;
                home.holding(self);
            }
        }
    }

    /// Offers each letter's copy to its targets, with no lock held. Returns, per letter,
    /// whether every target has it now, the targets that have it, and the writes to wait
    /// for.
    fn offer(
        &self,
        home: &dyn QueueEvents,
        batch: Vec<Attempt>,
        dlx: &str,
        dlrk: Option<&str>,
    ) -> Vec<(u64, bool, Vec<String>, ferrymq_store::Pending)> {
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                FORWARDING.set(false);
            }
        }
        FORWARDING.set(true);
        let _reset = Reset;
        let mut results = Vec::with_capacity(batch.len());
        for a in batch {
            let Attempt {
                seq,
                message,
                reason,
                died,
                mut done,
            } = a;
            let letter = DeadLetter {
                message,
                reason,
                counted: true,
            };
            // Rebuilt at each attempt from the record, with the time it died: the same
            // `x-death` every time.
            let copy =
                crate::dead_letter::dead_letter_copy_at(&letter, &self.name, dlx, dlrk, died);
            // No copy: through too many queues already, dropped (and logged) as at most once.
            let mut pending = ferrymq_store::Pending::default();
            let taken = copy
                .map(Arc::new)
                .is_none_or(|c| home.forward_held(&c, &mut done, &mut pending));
            results.push((seq, taken, done, pending));
        }
        results
    }

    /// Appends a message and delivers it if a consumer can take it.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> Enqueued {
        let mut st = self.state.lock();
        if st.deleted {
            return Enqueued::Refused;
        }
        if let Some(d) = &mut st.dedup {
            if let Some(key) = dedup_key(&message) {
                if d.check(&key, now_ms()) {
                    return Enqueued::Accepted(None);
                }
            }
        }
        if st.cfg.overflow != Overflow::DropHead && !Self::room(&st, message.body_size()) {
            if st.cfg.overflow == Overflow::RejectPublishDlx {
                st.dead_letter(message, DeathReason::Maxlen);
            }
            self.unlock_and_flush(st);
            return Enqueued::Refused;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let ttl = match (
            st.cfg.message_ttl,
            message.expiration().and_then(Result::ok),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // The clock counts whole milliseconds; rounding up means a message never expires
        // before its TTL (TTL 0 stays "now": deliverable only at once).
        let now = ttl.map(|_| now_ms());
        let deadline = now
            .zip(ttl)
            .map(|(n, ttl)| n.saturating_add(ttl) + u64::from(ttl > 0));
        let ticket = match st.store.push(QueuedMessage::new(seq, message), deadline) {
            Ok(t) => t,
            Err(e @ StoreError::Failed(_)) => {
                // Said once, loudly, by the sync thread when the log failed.
                tracing::debug!(queue = %self.name, vhost = %self.vhost, "message refused: {e}");
                return Enqueued::Refused;
            }
            Err(e) => {
                tracing::error!(queue = %self.name, vhost = %self.vhost, "message refused: {e}");
                return Enqueued::Refused;
            }
        };
        st.stats.publish += 1;
        if st.stats.publish & (crate::stats::LATENCY_SAMPLE - 1) == 0 && st.probe.is_none() {
            st.probe = Some((seq, std::time::Instant::now()));
        }
        if let Some(at) = deadline {
            st.deadlines.add(seq, at);
            self.arm(&mut st, at);
        }
        if !st.consumers.is_empty() {
            // Judged at the publish's own millisecond: a TTL 0 message reaches a consumer
            // waiting for it even if the clock ticks meanwhile.
            self.dispatch_locked_at(&mut st, now);
        }
        if ttl == Some(0) {
            // TTL 0: delivered at once to a consumer that could take it, or expired now.
            st.expire_due(now_ms());
        }
        st.drop_head_over_limits();
        self.unlock_and_flush(st);
        Enqueued::Accepted(ticket)
    }

    /// Whether a message of `bytes` body bytes may be published under a length limit. A
    /// quorum queue refuses only once it is over the limit, counting its held dead letters
    /// (RabbitMQ 3.10: a queue of `x-max-length` 2 takes a third message, not a fourth).
    fn room(st: &QueueState, bytes: usize) -> bool {
        let (len, total) = (st.store.len(), st.store.bytes());
        if st.cfg.queue_type == QueueType::Quorum {
            return !st
                .cfg
                .over(len + st.held.letters.len(), total + st.held.bytes);
        }
        st.cfg.fits(len, total, bytes)
    }

    /// Delivers ready messages to consumers that have credit. Called by protocol code when a
    /// consumer gains credit (ack, flow on, socket drained).
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
        self.unlock_and_flush(st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        self.dispatch_locked_at(st, None);
    }

    /// Dispatches, judging deadlines at `now` (ms) if given, else at the current time.
    fn dispatch_locked_at(self: &Arc<Self>, st: &mut QueueState, mut now: Option<u64>) {
        let mut busy = 0usize;
        while !st.store.is_empty() && busy <= st.consumers.len() {
            if st.traced.len() >= crate::trace::MAX_PENDING {
                // Every delivery is traced (bounded memory, none dropped): these are traced
                // once the lock is released, and the rest dispatched after that.
                st.trace_more = true;
                break;
            }
            let Some(i) = st.pick() else { break };
            let Some(msg) = st.shift_live(&mut now) else {
                break;
            };
            let ack_required = !st.consumers[i].no_ack;
            let seq = msg.seq();
            let again = msg.redelivered();
            // Noted before the hand-off (which takes the message), traced after the unlock.
            let trace = match (crate::trace::any(), &st.consumers[i].origin) {
                (true, Some(o)) => Some(crate::trace::PendingDelivery {
                    message: msg.message.clone(),
                    redelivered: again,
                    origin: o.clone(),
                    channel: st.consumers[i].channel.map_or(0, |c| c.0),
                }),
                _ => None,
            };
            if ack_required {
                // Marked (the store writes the mark at once) before the delivery is handed
                // to the connection, whose writer may send it at once on another thread: a
                // process crash never hides a delivery.
                st.store.delivered(&msg);
            }
            match st.consumers[i].sink.deliver(self, msg, ack_required) {
                Ok(()) => {
                    if ack_required {
                        st.unacked += 1;
                        st.stats.deliver += 1;
                    } else {
                        st.settled(seq);
                        st.stats.deliver_no_ack += 1;
                    }
                    st.stats.redeliver += u64::from(again);
                    st.handed_off(seq);
                    if let Some(t) = trace {
                        st.traced.push(t);
                    }
                }
                Err(SinkRefusal::Busy(m)) => {
                    // Credit went between the check and the delivery (another queue took
                    // the channel's last slot); try the others, but not for ever.
                    st.store.requeue(m);
                    busy += 1;
                }
                Err(SinkRefusal::Gone(m)) => {
                    st.store.requeue(m);
                    st.consumers.remove(i);
                }
            }
        }
        self.flush_soon(st);
    }

    /// Has the timer write what the store still buffers shortly (acks of no-ack deliveries
    /// and other settlements outside an ack batch; delivered marks are written at once).
    fn flush_soon(self: &Arc<Self>, st: &mut QueueState) {
        if st.store.unflushed() {
            let at = now_ms() + MARK_FLUSH_MS;
            self.arm(st, at);
        }
    }

    /// Takes the head message for basic.get. Returns it with the number of messages left.
    pub fn get(self: &Arc<Self>, ack_required: bool) -> Option<(QueuedMessage, usize)> {
        let mut st = self.state.lock();
        st.last_used = now_ms();
        let mut now = None;
        let mut msg = st.shift_live(&mut now);
        if st.cfg.queue_type == QueueType::Quorum {
            // basic.get from a quorum queue shows the count from the first delivery on
            // (deliveries to consumers only once it is above 0), as RabbitMQ 3.10 does.
            if let Some(m) = msg.as_mut().filter(|m| m.returns() == 0) {
                if let Some(counted) = with_delivery_count(&m.message, 0) {
                    m.message = Arc::new(counted);
                }
            }
        }
        let out = msg.map(|msg| {
            if ack_required {
                // Written before the caller can send it (see `dispatch_locked_at`).
                st.store.delivered(&msg);
                st.unacked += 1;
                st.stats.get += 1;
            } else {
                st.settled(msg.seq());
                st.stats.get_no_ack += 1;
            }
            st.stats.redeliver += u64::from(msg.redelivered());
            st.handed_off(msg.seq());
            (msg, st.store.len())
        });
        st.stats.get_empty += u64::from(out.is_none());
        self.flush_soon(&mut st);
        self.unlock_and_flush(st);
        out
    }

    /// Settles delivered messages (acknowledged).
    pub fn ack(&self, seqs: &[u64]) {
        let mut st = self.state.lock();
        for &s in seqs {
            st.settled(s);
        }
        st.store.flush();
        st.unacked = st.unacked.saturating_sub(seqs.len());
        st.stats.ack += seqs.len() as u64;
    }

    /// Settles delivered messages a consumer rejected without requeueing: they are
    /// dead-lettered (reason `rejected`) if the queue has a dead-letter exchange.
    pub fn reject(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(msgs.len());
        for m in msgs {
            if st.deleted {
                st.settled(m.seq());
            } else {
                st.dead_letter_taken(m.seq(), m.message, DeathReason::Rejected);
            }
        }
        st.store.flush();
        self.unlock_and_flush(st);
    }

    /// Puts delivered messages back at their original positions, marked redelivered, and
    /// dispatches them again. Past the delivery limit they are dead-lettered instead; in a
    /// quorum queue they carry their delivery count in `x-delivery-count`.
    pub fn requeue(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(msgs.len());
        if st.deleted {
            return;
        }
        let now = now_ms();
        for mut m in msgs {
            m.mark_returned();
            let seq = m.seq();
            if st
                .cfg
                .delivery_limit
                .is_some_and(|l| u64::from(m.returns()) > l)
            {
                st.dead_letter_taken(seq, m.message, DeathReason::DeliveryLimit);
                continue;
            }
            if st.cfg.queue_type == QueueType::Quorum {
                if let Some(counted) = with_delivery_count(&m.message, m.returns()) {
                    m.message = Arc::new(counted);
                }
            }
            if st.deadlines.is_due(seq, now) {
                st.dead_letter_taken(seq, m.message, DeathReason::Expired);
                continue;
            }
            st.store.requeue(m);
        }
        st.store.flush();
        self.dispatch_locked(&mut st);
        self.unlock_and_flush(st);
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
        if entry.shared_credit && st.cfg.queue_type == QueueType::Quorum {
            return Err(CoreError::NotImplemented(format!(
                "queue '{}' in vhost '{}' does not support global qos",
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
        let at = if st.cfg.single_active_consumer {
            // Arrival order decides who is next in line, whatever the priority.
            st.consumers.len()
        } else {
            st.consumers
                .partition_point(|c| c.priority >= entry.priority)
        };
        st.consumers.insert(at, entry);
        st.had_consumer = true;
        st.last_used = now_ms();
        self.dispatch_locked(&mut st);
        self.unlock_and_flush(st);
        Ok(())
    }

    /// Detaches a consumer. Returns true if the queue is auto-delete and now has no consumers,
    /// i.e. the caller should delete it.
    pub fn remove_consumer(self: &Arc<Self>, id: u64) -> bool {
        let mut st = self.state.lock();
        let was_active = st.consumers.first().is_some_and(|c| c.id == id);
        st.consumers.retain(|c| c.id != id);
        st.last_used = now_ms();
        if st.consumers.is_empty() {
            if let Some(e) = st.cfg.expires {
                let at = st.last_used.saturating_add(e);
                self.arm(&mut st, at);
            }
        } else if was_active && st.cfg.single_active_consumer {
            // The next consumer in line takes over.
            self.dispatch_locked(&mut st);
        }
        let delete =
            self.options.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted;
        self.unlock_and_flush(st);
        delete
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> usize {
        let mut st = self.state.lock();
        let st = &mut *st;
        // A paged backlog is settled on disk without being read back under this lock.
        let deadlines = &mut st.deadlines;
        let n = st.store.purge(&mut |seq| deadlines.forget(seq));
        st.store.flush();
        n
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
            st.deadlines.clear();
            // Held dead letters go with the queue, as in RabbitMQ.
            st.held = Held::default();
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

impl Timed for Queue {
    fn on_timer(self: Arc<Self>, _now: Instant) {
        let now = now_ms();
        let mut st = self.state.lock();
        st.timer_at = None;
        if st.deleted {
            return;
        }
        st.store.flush();
        while st.expire_due(now) {
            // More are due: let publishers and consumers in, and hand over the dead letters
            // collected so far, before the next batch.
            self.flush_dead(st, true);
            st = self.state.lock();
            if st.deleted {
                return;
            }
        }
        let expires_at = st
            .cfg
            .expires
            .filter(|_| st.consumers.is_empty())
            .map(|e| st.last_used.saturating_add(e));
        let expired = expires_at.is_some_and(|at| at <= now);
        let next = match (st.deadlines.next(), expires_at.filter(|_| !expired)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            self.arm(&mut st, at);
        }
        if !st.held.syncing.is_empty() {
            self.settle_synced(&mut st, now);
        }
        if let Some(at) = st.held.retry_at {
            if at <= now {
                st.held.retry_at = None;
                let round = st.retry_round();
                st.held.fresh.extend(round);
                st.held.in_round = true;
            } else {
                self.arm(&mut st, at);
            }
        }
        st.store.flush();
        self.flush_dead(st, true);
        if expired {
            if let Some(home) = self.home.get().and_then(Weak::upgrade) {
                home.expired(&self);
            }
        }
    }
}

/// A copy of `msg` whose headers carry its delivery count.
fn with_delivery_count(msg: &Message, count: u16) -> Option<Message> {
    let mut props = msg.properties();
    let mut h = props.headers.take().unwrap_or_default();
    h.insert(DELIVERY_COUNT_HEADER, FieldValue::I64(i64::from(count)));
    props.headers = Some(h);
    msg.republished(msg.exchange(), msg.routing_key(), &props)
        .ok()
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

    /// Delivered marks (ack-log entries with bit 31) on disk in `dir`'s ack logs now.
    fn marks_on_disk(dir: &std::path::Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".ack"))
            .map(|e| {
                std::fs::read(e.path())
                    .unwrap_or_default()
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .filter(|&e| e != u32::MAX && e & (1 << 31) != 0)
                    .count()
            })
            .sum()
    }

    /// Notes, at each delivery, how many delivered marks the queue's ack logs hold.
    struct MarkSink {
        dir: std::path::PathBuf,
        seen: Mutex<Vec<usize>>,
    }

    impl ConsumerSink for MarkSink {
        fn has_credit(&self) -> bool {
            true
        }
        fn deliver(
            &self,
            _q: &Arc<Queue>,
            _m: QueuedMessage,
            _ack: bool,
        ) -> Result<(), SinkRefusal> {
            self.seen.lock().push(marks_on_disk(&self.dir));
            Ok(())
        }
        fn cancelled_by_server(&self) {}
    }

    #[test]
    fn a_delivered_mark_is_written_before_the_delivery_leaves_the_queue() {
        // The connection may write a delivery to its socket as soon as the sink has it: a
        // mark still buffered in the process then is lost by a kill -9, and the message
        // comes back after the restart without `redelivered` although it was delivered.
        let d = tempfile::tempdir().unwrap();
        let p = crate::persist::Persistence::open(crate::persist::PersistConfig {
            fsync: ferrymq_store::FsyncPolicy::Never,
            ..crate::persist::PersistConfig::new(d.path())
        })
        .unwrap();
        let dir = d.path().join("q");
        let health = ferrymq_store::LogHealth::new("q");
        let store = crate::paged_store::PagedStore::new(p, Some(health), dir.clone());
        let q = Arc::new(Queue::with_store(
            "q",
            "/",
            QueueOptions {
                durable: true,
                ..QueueOptions::default()
            },
            None,
            Box::new(store),
            1,
        ));
        let persistent = Properties {
            delivery_mode: Some(2),
            ..Properties::default()
        };
        let m = || {
            Arc::new(
                Message::from_properties("", "q", &persistent, Bytes::from_static(b"x")).unwrap(),
            )
        };
        q.publish(m());
        q.get(true).expect("a message to get");
        assert_eq!(
            marks_on_disk(&dir),
            1,
            "basic.get: marked when the caller has it"
        );
        let s = Arc::new(MarkSink {
            dir: dir.clone(),
            seen: Mutex::new(Vec::new()),
        });
        q.add_consumer(ConsumerEntry::new("c", s.clone(), false, false, 1))
            .unwrap();
        for _ in 0..3 {
            q.publish(m());
        }
        assert_eq!(
            *s.seen.lock(),
            vec![2, 3, 4],
            "each mark on disk at its delivery"
        );
    }

    /// Records how many dead letters, and how many body bytes, each hand-over carries.
    #[derive(Default)]
    struct Batches(Mutex<Vec<(usize, usize)>>);

    impl QueueEvents for Batches {
        fn dead_letter(
            &self,
            _queue: &str,
            _dlx: &str,
            _rk: Option<&str>,
            letters: Vec<crate::dead_letter::DeadLetter>,
        ) {
            let bytes = letters.iter().map(|l| l.message.body_size()).sum();
            self.0.lock().push((letters.len(), bytes));
        }
        fn expired(&self, _queue: &Arc<Queue>) {}
    }

    #[test]
    fn a_paged_backlog_that_expires_at_once_is_not_read_back_into_ram_at_once() {
        // A backlog that cost only disk (beyond the 1,000-byte budget here) and expires at
        // once is handed to the dead-letter exchange in bounded batches, the queue's lock
        // released between them, not read back into RAM whole.
        let d = tempfile::tempdir().unwrap();
        let p = crate::persist::Persistence::open(crate::persist::PersistConfig {
            fsync: ferrymq_store::FsyncPolicy::Never,
            queue_ram_budget: 1000,
            ..crate::persist::PersistConfig::new(d.path())
        })
        .unwrap();
        let store = crate::paged_store::PagedStore::new(p, None, d.path().join("q"));
        let q = Arc::new(Queue::with_store(
            "q",
            "/",
            QueueOptions::default(),
            None,
            Box::new(store),
            1,
        ));
        let mut args = crate::value::FieldTable::new();
        args.insert("x-message-ttl", crate::value::FieldValue::I32(200));
        args.insert(
            "x-dead-letter-exchange",
            crate::value::FieldValue::string("dlx"),
        );
        let home = Arc::new(Batches::default());
        let weak: Weak<dyn QueueEvents> = Arc::downgrade(&(home.clone() as Arc<dyn QueueEvents>));
        q.attach(weak, QueueConfig::from_args("q", "/", &args).unwrap());
        const N: usize = 2000;
        let body = Bytes::from(vec![b'x'; 4096]);
        for _ in 0..N {
            let m = Message::from_properties("", "q", &Properties::default(), body.clone());
            q.publish(Arc::new(m.unwrap()));
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while home.0.lock().iter().map(|b| b.0).sum::<usize>() < N {
            assert!(std::time::Instant::now() < until, "not all expired");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let largest = home.0.lock().iter().map(|b| b.1).max().unwrap();
        assert!(
            largest <= EXPIRE_BATCH_BYTES + 4096,
            "{largest} body bytes of expired paged messages held in RAM at once"
        );
    }

    /// A quorum queue `q` dead-lettering at least once into `dlx`, in RAM, attached to `home`.
    fn at_least_once_queue(home: &Arc<dyn QueueEvents>) -> Arc<Queue> {
        use crate::value::FieldValue;
        let q = Arc::new(Queue::new("q", "/", QueueOptions::default(), None));
        let mut args = crate::value::FieldTable::new();
        args.insert("x-queue-type", FieldValue::string("quorum"));
        args.insert("x-dead-letter-exchange", FieldValue::string("dlx"));
        args.insert(
            "x-dead-letter-strategy",
            FieldValue::string("at-least-once"),
        );
        args.insert("x-overflow", FieldValue::string("reject-publish"));
        q.attach(
            Arc::downgrade(home),
            QueueConfig::from_args("q", "/", &args).unwrap(),
        );
        q
    }

    /// Publishes `n` messages to `q` and rejects them all: `n` held letters.
    fn hold_n(q: &Arc<Queue>, n: usize) {
        for _ in 0..n {
            q.publish(msg());
        }
        let mut taken = Vec::new();
        while let Some((m, _)) = q.get(true) {
            taken.push(m);
        }
        q.reject(taken);
    }

    /// Targets that take nothing, slowly (a disk read per letter, say), noting the thread.
    #[derive(Default)]
    struct Slow(Mutex<Vec<Option<String>>>);

    impl QueueEvents for Slow {
        fn dead_letter(
            &self,
            _queue: &str,
            _dlx: &str,
            _rk: Option<&str>,
            _letters: Vec<crate::dead_letter::DeadLetter>,
        ) {
        }
        fn expired(&self, _queue: &Arc<Queue>) {}
        fn forward_held(
            &self,
            _copy: &Arc<Message>,
            _done: &mut Vec<String>,
            _pending: &mut ferrymq_store::Pending,
        ) -> bool {
            self.0
                .lock()
                .push(std::thread::current().name().map(str::to_string));
            std::thread::sleep(std::time::Duration::from_millis(40));
            false
        }
    }

    /// Notes when the timer thread called it.
    struct Probe(Mutex<Option<Instant>>);

    impl Timed for Probe {
        fn on_timer(self: Arc<Self>, now: Instant) {
            *self.0.lock() = Some(now);
        }
    }

    #[test]
    fn a_retry_round_runs_off_the_timer_thread_and_other_timers_keep_their_time() {
        let slow = Arc::new(Slow::default());
        let home: Arc<dyn QueueEvents> = slow.clone();
        let q = at_least_once_queue(&home);
        const N: usize = 20;
        hold_n(&q, N);
        assert_eq!(q.held(), N);
        slow.0.lock().clear();
        // A round of 20 letters at 40 ms each: 800 ms. Another queue's timer due meanwhile
        // must not wait for it.
        q.retry_held_soon();
        let due = Instant::now() + std::time::Duration::from_millis(200);
        let probe = Arc::new(Probe(Mutex::new(None)));
        timers::schedule(due, Arc::downgrade(&probe) as Weak<dyn Timed>);
        let until = Instant::now() + std::time::Duration::from_secs(20);
        while slow.0.lock().len() < N {
            assert!(Instant::now() < until, "the round never ran");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let fired = probe.0.lock().expect("the probe fired");
        let late = fired.saturating_duration_since(due);
        assert!(
            late < std::time::Duration::from_millis(300),
            "another timer waited {late:?} for the round"
        );
        let threads = slow.0.lock().clone();
        assert!(
            threads
                .iter()
                .all(|t| t.as_deref() == Some(crate::held_worker::THREAD_NAME)),
            "rounds run on the dead-letter thread: {threads:?}"
        );
    }

    /// A target that takes the copy, but only once the test lets it, and counts what it was
    /// given either way.
    struct Gate {
        entered: std::sync::mpsc::SyncSender<()>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
        forwarded: AtomicUsize,
        at_most_once: AtomicUsize,
    }

    impl QueueEvents for Gate {
        fn dead_letter(
            &self,
            _queue: &str,
            _dlx: &str,
            _rk: Option<&str>,
            letters: Vec<crate::dead_letter::DeadLetter>,
        ) {
            self.at_most_once.fetch_add(letters.len(), Ordering::SeqCst);
        }
        fn expired(&self, _queue: &Arc<Queue>) {}
        fn forward_held(
            &self,
            _copy: &Arc<Message>,
            done: &mut Vec<String>,
            _pending: &mut ferrymq_store::Pending,
        ) -> bool {
            let _ = self.entered.send(());
            let _ = self.go.lock().recv();
            self.forwarded.fetch_add(1, Ordering::SeqCst);
            done.push("t".into());
            true
        }
    }

    #[test]
    fn a_policy_switching_at_least_once_off_mid_forward_does_not_duplicate_the_letter() {
        let (entered, entered_rx) = std::sync::mpsc::sync_channel(1);
        let (go_tx, go) = std::sync::mpsc::channel();
        let gate = Arc::new(Gate {
            entered,
            go: Mutex::new(go),
            forwarded: AtomicUsize::new(0),
            at_most_once: AtomicUsize::new(0),
        });
        let home: Arc<dyn QueueEvents> = gate.clone();
        let q = at_least_once_queue(&home);
        q.publish(msg());
        let (m, _) = q.get(true).unwrap();
        let rejecting = {
            let q = q.clone();
            std::thread::spawn(move || q.reject(vec![m]))
        };
        // The copy is on its way to the target, outside the queue's lock.
        entered_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let mut cfg = q.config();
        cfg.dead_letter_strategy = DeadLetterStrategy::AtMostOnce;
        q.set_config(cfg);
        go_tx.send(()).unwrap();
        rejecting.join().unwrap();
        assert_eq!(q.held(), 0);
        assert_eq!(
            (
                gate.forwarded.load(Ordering::SeqCst),
                gate.at_most_once.load(Ordering::SeqCst)
            ),
            (1, 0),
            "the target gets it once: not dead-lettered again at most once"
        );
    }
}
