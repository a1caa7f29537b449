//! A virtual host: the registry of its exchanges and queues. What clients do to them is split
//! by concern: [`topology`] (declare, delete, bind), [`routing`] (the one routing and enqueue
//! path of publishes, delayed releases and dead letters), [`policies`], [`restore`] (start-up
//! from the definitions) and [`reply_to`] (direct reply-to pseudo-queues).
//!
//! Mutators are `pub(crate)`: protocol crates reach them only through a
//! [`Session`](crate::session::Session), which checks the caller's permissions first.

mod policies;
mod reply_to;
mod restore;
mod routing;
mod topology;

pub use reply_to::REPLY_TO_PREFIX;
pub(crate) use routing::internal_refused;
pub use routing::{PublishOutcome, Routed};
pub(crate) use topology::{default_exchange_refused, routing_kind};

use crate::error::{CoreError, CoreResult};
use crate::exchange::{Exchange, ExchangeKind, ExchangeOptions};
use crate::persist::Persistence;
use crate::policy::Policy;
use crate::queue::Queue;
use crate::ConnectionId;
use ferrymq_store::Pending;
use parking_lot::{ReentrantMutex, RwLock};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// A virtual host.
pub struct VHost {
    /// Its name, e.g. `/`.
    pub name: String,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    reply_queues: RwLock<HashMap<String, Arc<Queue>>>,
    persist: Option<Arc<Persistence>>,
    policies: RwLock<Vec<Policy>>,
    /// Serialises topology changes, so "save the definitions, then change memory" is one
    /// step. Routing never takes it (it reads the maps), so an fsync of the definitions
    /// never stalls publishers. Reentrant: deleting a queue can auto-delete an exchange.
    topology: ReentrantMutex<()>,
    /// Set once the vhost is deleted: nothing can be declared in it any more.
    deleted: std::sync::atomic::AtomicBool,
    /// Itself, handed to queues and delayed exchanges that report back to the vhost.
    me: Weak<VHost>,
    /// Queues holding at-least-once dead letters that found no way yet: retried when the
    /// topology changes. Empty (one uncontended lock per declaration) unless some do.
    held_queues: parking_lot::Mutex<Vec<Weak<Queue>>>,
    /// Deleted queues' counters, for the metrics endpoint. A queue leaves `queues` and
    /// enters these in one step under this lock, and [`VHost::walk_queues`] holds it, so a
    /// scrape counts every queue once: live or retired.
    history: parking_lot::Mutex<crate::stats::QueueHistory>,
    /// The firehose is on (see [`crate::trace`]).
    tracing: std::sync::atomic::AtomicBool,
    /// Non-passive `queue.declare`s that succeeded (outside `history`: a scrape's walk must
    /// not hold up declarations).
    declared: std::sync::atomic::AtomicU64,
    /// Queues created.
    created: std::sync::atomic::AtomicU64,
}

/// Adds `q`'s counters to `h` as a deleted queue's.
pub(crate) fn retire(h: &mut crate::stats::QueueHistory, q: &Queue) {
    let (_, stats) = q.stats();
    h.deleted += 1;
    match q.queue_type() {
        crate::queue_config::QueueType::Quorum => h.retired_quorum.add(&stats),
        crate::queue_config::QueueType::Classic => h.retired_classic.add(&stats),
    }
}

fn not_found_queue(name: &str, vhost: &str) -> CoreError {
    CoreError::NotFound(format!("no queue '{name}' in vhost '{vhost}'"))
}

fn not_found_exchange(name: &str, vhost: &str) -> CoreError {
    CoreError::NotFound(format!("no exchange '{name}' in vhost '{vhost}'"))
}

/// The exchanges every vhost has from its creation, with their types.
pub(crate) const STANDARD_EXCHANGES: [(&str, ExchangeKind); 7] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
    // Internal, as in RabbitMQ: the firehose tracer publishes to it, clients only bind to it.
    (TRACE_EXCHANGE, ExchangeKind::Topic),
];

/// RabbitMQ's firehose exchange (internal topic exchange).
pub const TRACE_EXCHANGE: &str = "amq.rabbitmq.trace";

impl VHost {
    /// A vhost with the standard exchanges (default, amq.direct, amq.fanout, amq.topic,
    /// amq.headers, amq.match, amq.rabbitmq.trace), keeping everything in memory.
    pub fn new(name: &str) -> Arc<Self> {
        VHost::with_persistence(name, None)
    }

    /// A vhost whose durable entities and persistent messages go to `persist`.
    pub fn with_persistence(name: &str, persist: Option<Arc<Persistence>>) -> Arc<Self> {
        Arc::new_cyclic(|me| VHost::build(name, persist, me.clone()))
    }

    fn build(name: &str, persist: Option<Arc<Persistence>>, me: Weak<VHost>) -> Self {
        let v = VHost {
            name: name.to_string(),
            exchanges: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            reply_queues: RwLock::new(HashMap::new()),
            persist,
            policies: RwLock::new(Vec::new()),
            topology: ReentrantMutex::new(()),
            deleted: std::sync::atomic::AtomicBool::new(false),
            held_queues: parking_lot::Mutex::new(Vec::new()),
            history: parking_lot::Mutex::new(Default::default()),
            tracing: std::sync::atomic::AtomicBool::new(false),
            declared: Default::default(),
            created: Default::default(),
            me,
        };
        let durable = ExchangeOptions {
            durable: true,
            ..Default::default()
        };
        {
            let mut ex = v.exchanges.write();
            for (n, k) in STANDARD_EXCHANGES {
                let options = ExchangeOptions {
                    internal: n == TRACE_EXCHANGE,
                    ..durable.clone()
                };
                ex.insert(n.to_string(), Arc::new(Exchange::new(n, k, options)));
            }
        }
        v
    }

    /// Whether the firehose tracer copies this vhost's publishes and deliveries to
    /// `amq.rabbitmq.trace`.
    pub fn tracing(&self) -> bool {
        self.tracing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns the firehose on or off (RabbitMQ's `trace_on` / `trace_off`).
    pub fn set_tracing(&self, on: bool) {
        use std::sync::atomic::Ordering;
        let was = self.tracing.swap(on, Ordering::SeqCst);
        match (was, on) {
            (false, true) => {
                crate::trace::ACTIVE.fetch_add(1, Ordering::Relaxed);
                if self.deleted.load(Ordering::SeqCst) {
                    // Deleted meanwhile (see `destroy`).
                    self.set_tracing(false);
                    return;
                }
                tracing::info!(vhost = %self.name, "tracing enabled");
            }
            (true, false) => {
                crate::trace::ACTIVE.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(vhost = %self.name, "tracing disabled");
            }
            _ => {}
        }
    }

    /// Queue churn in this vhost and the counters of its deleted queues.
    pub fn queue_history(&self) -> crate::stats::QueueHistory {
        self.walk_queues(|_| {})
    }

    /// Calls `each` with the vhost's queues while none of them can be retired, and returns
    /// the queue churn and the counters of the deleted queues as they were meanwhile: every
    /// queue is counted once, by `each` or in the answer, so sums over both never go back.
    /// Queue deletions in this vhost wait for `each`.
    pub fn walk_queues(&self, each: impl FnOnce(&[Arc<Queue>])) -> crate::stats::QueueHistory {
        let h = self.history.lock();
        each(&self.queues());
        self.with_churn(*h)
    }

    fn with_churn(&self, mut h: crate::stats::QueueHistory) -> crate::stats::QueueHistory {
        use std::sync::atomic::Ordering::Relaxed;
        h.declared = self.declared.load(Relaxed);
        h.created = self.created.load(Relaxed);
        h
    }

    /// The history as if every queue were deleted now (the vhost is leaving the broker).
    pub(crate) fn retire_all(&self) -> crate::stats::QueueHistory {
        let h = self.history.lock();
        let mut all = self.with_churn(*h);
        for q in self.queues() {
            retire(&mut all, &q);
        }
        all
    }

    /// The named exchange.
    pub fn exchange(&self, name: &str) -> CoreResult<Arc<Exchange>> {
        self.exchanges
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found_exchange(name, &self.name))
    }

    /// The named queue, checking that `conn` may use it (exclusive queues belong to the
    /// connection that declared them).
    pub fn queue(&self, name: &str, conn: ConnectionId) -> CoreResult<Arc<Queue>> {
        let q = self.find_queue(name)?;
        q.check_access(conn)?;
        Ok(q)
    }

    /// The named queue, whoever owns it (management views list exclusive queues too).
    pub fn find_queue(&self, name: &str) -> CoreResult<Arc<Queue>> {
        self.queues
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found_queue(name, &self.name))
    }

    /// Every exchange.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    /// Every queue.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    /// Number of queues (for the `max-queues` limit).
    pub fn queue_count(&self) -> usize {
        self.queues.read().len()
    }

    /// Runs `apply` after `save` stored the change in the definitions document (when the
    /// broker has a data directory): memory only changes once the disk agrees, so a failed
    /// save leaves both as they were.
    ///
    /// Saving appends to the definitions journal without waiting for its fsync; the
    /// returned [`Pending`] is what the caller waits for before telling a client.
    fn persist_then<T>(
        &self,
        save: impl FnOnce(&Persistence) -> CoreResult<Pending>,
        apply: impl FnOnce() -> T,
    ) -> CoreResult<(T, Pending)> {
        let saved = match &self.persist {
            Some(p) => save(p)?,
            None => Pending::default(),
        };
        Ok((apply(), saved))
    }

    /// Refuses every later declaration, binding and policy (the vhost is being deleted).
    pub(crate) fn mark_deleted(&self) {
        let _t = self.topology.lock();
        self.deleted
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Lifts [`VHost::mark_deleted`] when the deletion could not be saved: the vhost stays.
    pub(crate) fn unmark_deleted(&self) {
        let _t = self.topology.lock();
        self.deleted
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Whether the vhost has been deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Deletes everything in the vhost: queues with their messages and files, delayed
    /// messages, reply-to pseudo-queues. The broker has already removed it from the
    /// definitions and closed its connections.
    pub(crate) fn destroy(&self) {
        let _t = self.topology.lock();
        self.deleted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // After `deleted`: a `set_tracing(true)` racing this (the API switching it on with a
        // vhost it looked up just before) either is undone here or sees `deleted` and undoes
        // itself, so the node-wide count of tracing vhosts never keeps a deleted one.
        self.set_tracing(false);
        let mut h = self.history.lock();
        let queues: Vec<Arc<Queue>> = self.queues.write().drain().map(|(_, q)| q).collect();
        for q in queues {
            retire(&mut h, &q);
            q.mark_deleted(None);
        }
        drop(h);
        let exchanges: Vec<Arc<Exchange>> =
            self.exchanges.write().drain().map(|(_, x)| x).collect();
        for x in exchanges {
            x.destroy_delayed();
            // Bindings hold Arcs to other exchanges: drop them so nothing stays alive.
            for b in x.bindings() {
                x.unbind_destination(&b.destination);
            }
        }
        for (_, q) in self.reply_queues.write().drain() {
            q.mark_deleted(None);
        }
    }
}

/// A server-generated name such as `amq.gen-Xy3...`, 22 random URL-safe characters.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(prefix.len() + 22);
    s.push_str(prefix);
    for _ in 0..22 {
        s.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    s
}

impl Queue {
    /// The RESOURCE_LOCKED error for a queue held by another connection.
    pub fn locked_error(q: &Queue) -> CoreError {
        CoreError::ResourceLocked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
             originally declared on another connection or the exclusive property value does \
             not match that of the original declaration.",
            q.name, q.vhost
        ))
    }
}

#[cfg(test)]
mod tests;
