//! Message counters the management API and metrics read: per queue (kept under the queue's
//! own lock, so counting costs no atomic operation on the delivery path) and per connection
//! (atomics written by the connection's own task). Rates are derived from them by sampling
//! (in `ferrymq-mgmt`); the broker itself keeps only totals.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What a queue has done since it was declared (or the broker started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages enqueued (publishes and dead letters routed to it).
    pub publish: u64,
    /// Deliveries to consumers that acknowledge.
    pub deliver: u64,
    /// Deliveries to no-ack consumers.
    pub deliver_no_ack: u64,
    /// `basic.get` answers that need an ack.
    pub get: u64,
    /// `basic.get` answers settled on sending.
    pub get_no_ack: u64,
    /// `basic.get` of an empty queue.
    pub get_empty: u64,
    /// Deliveries and gets of messages seen before (requeued or recovered as delivered).
    pub redeliver: u64,
    /// Acknowledgements.
    pub ack: u64,
}

impl QueueStats {
    /// Deliveries and gets of every kind, as RabbitMQ's `deliver_get`.
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &QueueStats) {
        self.publish += other.publish;
        self.deliver += other.deliver;
        self.deliver_no_ack += other.deliver_no_ack;
        self.get += other.get;
        self.get_no_ack += other.get_no_ack;
        self.get_empty += other.get_empty;
        self.redeliver += other.redeliver;
        self.ack += other.ack;
    }
}

/// Counters of one connection, each written by one task (see [`ConnectionStats::bump`])
/// and read by the management API.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Messages published by the client.
    pub publish: AtomicU64,
    /// Publisher confirms sent (acks and nacks).
    pub confirm: AtomicU64,
    /// Mandatory messages returned as unroutable.
    pub return_unroutable: AtomicU64,
    /// Messages that routed nowhere and were dropped.
    pub drop_unroutable: AtomicU64,
    /// Bytes read from the socket.
    pub recv_oct: AtomicU64,
    /// Reads from the socket.
    pub recv_cnt: AtomicU64,
    /// Bytes written to the socket.
    pub send_oct: AtomicU64,
    /// Writes to the socket.
    pub send_cnt: AtomicU64,
}

/// A plain copy of [`ConnectionStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTotals {
    /// See [`ConnectionStats::publish`].
    pub publish: u64,
    /// See [`ConnectionStats::confirm`].
    pub confirm: u64,
    /// See [`ConnectionStats::return_unroutable`].
    pub return_unroutable: u64,
    /// See [`ConnectionStats::drop_unroutable`].
    pub drop_unroutable: u64,
    /// See [`ConnectionStats::recv_oct`].
    pub recv_oct: u64,
    /// See [`ConnectionStats::recv_cnt`].
    pub recv_cnt: u64,
    /// See [`ConnectionStats::send_oct`].
    pub send_oct: u64,
    /// See [`ConnectionStats::send_cnt`].
    pub send_cnt: u64,
}

impl ConnectionStats {
    /// Adds `n` to a counter that has one writer at a time (its connection's reading task,
    /// its writer task, or whoever holds the channel lock): a plain load and store, no
    /// locked read-modify-write on the per-message path. Readers may see it a little late.
    #[inline]
    pub fn bump(c: &AtomicU64, n: u64) {
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// The counters now.
    pub fn totals(&self) -> ConnectionTotals {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConnectionTotals {
            publish: l(&self.publish),
            confirm: l(&self.confirm),
            return_unroutable: l(&self.return_unroutable),
            drop_unroutable: l(&self.drop_unroutable),
            recv_oct: l(&self.recv_oct),
            recv_cnt: l(&self.recv_cnt),
            send_oct: l(&self.send_oct),
            send_cnt: l(&self.send_cnt),
        }
    }
}

impl ConnectionTotals {
    /// Adds `other`'s counters to these.
    pub fn add(&mut self, o: &ConnectionTotals) {
        self.publish += o.publish;
        self.confirm += o.confirm;
        self.return_unroutable += o.return_unroutable;
        self.drop_unroutable += o.drop_unroutable;
        self.recv_oct += o.recv_oct;
        self.recv_cnt += o.recv_cnt;
        self.send_oct += o.send_oct;
        self.send_cnt += o.send_cnt;
    }
}

/// One open channel as the management API lists it. The protocol's connection task keeps it
/// current, and deliveries under the channel's lock; every counter has one writer at a time,
/// so they are added to with [`ConnectionStats::bump`].
#[derive(Debug, Default)]
pub struct ChannelInfo {
    /// The channel number on its connection.
    pub number: u16,
    /// When it opened (ms since the Unix epoch).
    pub opened_at: u64,
    /// Per-consumer prefetch for consumers made from now on (0: none).
    pub prefetch: AtomicU64,
    /// Channel-wide prefetch (0: none).
    pub global_prefetch: AtomicU64,
    /// In confirm mode.
    pub confirm: AtomicBool,
    /// In a transaction.
    pub transactional: AtomicBool,
    /// Its consumers.
    pub consumers: AtomicU64,
    /// Deliveries waiting for an ack.
    pub unacked: AtomicU64,
    /// Publishes in confirm mode not confirmed yet.
    pub unconfirmed: AtomicU64,
    /// Messages published.
    pub publish: AtomicU64,
    /// Publisher confirms sent.
    pub confirmed: AtomicU64,
    /// Mandatory messages returned as unroutable.
    pub return_unroutable: AtomicU64,
    /// Messages that routed nowhere and were dropped.
    pub drop_unroutable: AtomicU64,
    /// Deliveries that need an ack.
    pub deliver: AtomicU64,
    /// No-ack deliveries.
    pub deliver_no_ack: AtomicU64,
    /// `basic.get` answers that need an ack.
    pub get: AtomicU64,
    /// `basic.get` answers settled on sending.
    pub get_no_ack: AtomicU64,
    /// `basic.get` of an empty queue.
    pub get_empty: AtomicU64,
    /// Deliveries and gets of messages seen before.
    pub redeliver: AtomicU64,
    /// Acknowledgements received.
    pub ack: AtomicU64,
}

impl ChannelInfo {
    /// A fresh channel `number`.
    pub fn new(number: u16) -> Self {
        ChannelInfo {
            number,
            opened_at: crate::expiry::wall_ms(),
            ..Default::default()
        }
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Sets a gauge.
    pub fn set(c: &AtomicU64, v: u64) {
        c.store(v, Ordering::Relaxed);
    }

    /// Reads a flag.
    pub fn flag(c: &AtomicBool) -> bool {
        c.load(Ordering::Relaxed)
    }

    /// Sets a flag.
    pub fn set_flag(c: &AtomicBool, v: bool) {
        c.store(v, Ordering::Relaxed);
    }
}

/// Queue churn and the counters of deleted queues, kept per vhost so the broker-wide totals
/// the metrics endpoint reports never go backwards when a queue goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueHistory {
    /// Non-passive `queue.declare`s that succeeded (new queues and redeclarations).
    pub declared: u64,
    /// Queues created.
    pub created: u64,
    /// Queues deleted (by clients, auto-delete, exclusive owners leaving, expiry).
    pub deleted: u64,
    /// Counters of deleted classic queues.
    pub retired_classic: QueueStats,
    /// Counters of deleted quorum queues.
    pub retired_quorum: QueueStats,
}

impl QueueHistory {
    /// Adds `o`'s counts to these.
    pub fn add(&mut self, o: &QueueHistory) {
        self.declared += o.declared;
        self.created += o.created;
        self.deleted += o.deleted;
        self.retired_classic.add(&o.retired_classic);
        self.retired_quorum.add(&o.retired_quorum);
    }
}

/// Connection and channel churn since the broker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionChurn {
    /// Connections admitted.
    pub connections_opened: u64,
    /// Connections gone.
    pub connections_closed: u64,
    /// Channels opened.
    pub channels_opened: u64,
    /// Channels closed (also those of connections that went).
    pub channels_closed: u64,
}

/// Bounds of [`DELIVERY_LATENCY`], in seconds.
const LATENCY_BOUNDS: ferrymq_store::histogram::Bounds = ferrymq_store::histogram::SECONDS;

/// Time from a message entering a queue to its hand-off to a consumer's connection (or a
/// `basic.get` answer), for one message in [`LATENCY_SAMPLE`] of each queue: timing every
/// message would cost two clock reads on the delivery path.
pub static DELIVERY_LATENCY: ferrymq_store::histogram::Histogram =
    ferrymq_store::histogram::Histogram::new(LATENCY_BOUNDS);

/// One message in this many (per queue) is timed for [`DELIVERY_LATENCY`]; a power of two.
pub const LATENCY_SAMPLE: u64 = 64;

/// The node's resource readings and limits, as the alarm monitor last saw them (0: not
/// known, e.g. no monitor runs in a unit test).
#[derive(Debug, Default)]
pub struct NodeResources {
    /// Memory the broker may use before publishers are blocked (the high watermark).
    pub memory_limit: AtomicU64,
    /// Free bytes on the data directory's file system.
    pub disk_free: AtomicU64,
    /// Free bytes below which publishers are blocked.
    pub disk_free_limit: AtomicU64,
}
