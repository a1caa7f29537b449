//! Routing and enqueueing: the one path a message takes from an exchange into queues, used
//! by client publishes, delayed-message releases and dead-lettering alike.

use super::reply_to::REPLY_TO_PREFIX;
use super::VHost;
use crate::dead_letter::{cycle_queues, dead_letter_copy, DeadLetter};
use crate::error::{CoreError, CoreResult};
use crate::events::{DelayedRelease, QueueEvents};
use crate::exchange::{Destination, Exchange, ExchangeKind, DELAY_HEADER};
use crate::message::{LazyHeaders, Message};
use crate::queue::{Enqueued, Queue};
use crate::value::FieldValue;
use ferrymq_store::Pending;
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// What a publish did.
#[derive(Debug, Clone, Default)]
pub struct PublishOutcome {
    /// Number of queues the message was put in.
    pub routed: usize,
    /// Number of target queues that could not take it (e.g. deleted while routing). A
    /// publisher in confirm mode gets `basic.nack` when this is not zero.
    pub refused: usize,
    /// The copies that had to be written: on disk once group commit reaches their ticket,
    /// unless a sync of their log failed (then the publisher gets `basic.nack`).
    pub pending: Pending,
}

/// RabbitMQ's refusal of a publish to an internal exchange.
pub(crate) fn internal_refused(x: &Exchange, vhost: &str) -> CoreError {
    CoreError::AccessRefused(format!(
        "cannot publish to internal exchange '{}' in vhost '{vhost}'",
        x.name
    ))
}

/// Objects (by address) already met while routing one message: a few are searched in
/// place without allocating (almost every publish meets one exchange and a few queues), more
/// go into a set so a fanout to 100,000 queues stays linear.
#[derive(Default)]
struct Seen {
    few: [usize; 8],
    len: usize,
    many: HashSet<usize>,
}

impl Seen {
    /// Records `p`; false if it was already there.
    fn insert(&mut self, p: usize) -> bool {
        if self.many.is_empty() {
            if self.few[..self.len].contains(&p) {
                return false;
            }
            if self.len < self.few.len() {
                self.few[self.len] = p;
                self.len += 1;
                return true;
            }
            self.many.extend(self.few.iter().copied());
        }
        self.many.insert(p)
    }
}

impl VHost {
    /// Resolves the queues a message published to `exchange` with `routing_key` goes to,
    /// following exchange-to-exchange bindings and alternate exchanges. Each queue appears once.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        routing_key: &str,
        headers: &LazyHeaders<'_>,
    ) -> Vec<Arc<Queue>> {
        self.route_keys(
            exchange,
            routing_key,
            crate::message::ExtraKeys::none(),
            headers,
        )
    }

    /// [`VHost::route`] with the keys a sender added (`CC`, `BCC`) too: every exchange on
    /// the way routes all the keys at once, and its alternate exchange takes the message
    /// only if none of them leads anywhere, as in RabbitMQ.
    fn route_keys(
        &self,
        exchange: &Arc<Exchange>,
        routing_key: &str,
        extra: &crate::message::ExtraKeys,
        headers: &LazyHeaders<'_>,
    ) -> Vec<Arc<Queue>> {
        let keys = || std::iter::once(routing_key).chain(extra.iter());
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        if exchange.name.is_empty() {
            let mut seen_queues = Seen::default();
            for key in keys() {
                let q = self.queues.read().get(key).cloned().or_else(|| {
                    key.strip_prefix(REPLY_TO_PREFIX)
                        .and_then(|t| self.reply_queues.read().get(t).cloned())
                });
                if let Some(q) = q.filter(|q| seen_queues.insert(Arc::as_ptr(q) as usize)) {
                    queues.push(q);
                }
            }
            return queues;
        }
        // A worklist, not recursion: exchange-to-exchange and alternate-exchange chains are
        // as long as clients make them, and each exchange is visited once per publish.
        let mut visited = Seen::default();
        let mut seen_queues = Seen::default();
        let mut work = vec![exchange.clone()];
        let mut dests = Vec::new();
        while let Some(x) = work.pop() {
            if !visited.insert(Arc::as_ptr(&x) as usize) {
                continue;
            }
            // Fanout and headers exchanges do not look at keys: one pass routes them all
            // (a publish with thousands of `CC` keys costs no more there).
            let key_blind = matches!(x.kind, ExchangeKind::Fanout | ExchangeKind::Headers);
            let mut routed = false;
            for key in keys().take(if key_blind { 1 } else { usize::MAX }) {
                dests.clear();
                x.route_into(key, headers, &mut dests);
                routed |= !dests.is_empty();
                for d in dests.drain(..) {
                    match d {
                        Destination::Queue(q) => {
                            if seen_queues.insert(Arc::as_ptr(&q) as usize) {
                                queues.push(q);
                            }
                        }
                        Destination::Exchange(e) => work.push(e),
                    }
                }
            }
            // As RabbitMQ: the alternate exchange takes what the exchange itself could not
            // route anywhere by any of the message's keys (not what its downstream exchanges
            // dropped).
            if !routed {
                if let Some(ae) = x
                    .alternate_exchange()
                    .and_then(|n| self.exchanges.read().get(&n).cloned())
                {
                    work.push(ae);
                }
            }
        }
        queues
    }

    /// The queues `message` goes to through `x`: by its routing key and by the keys its
    /// sender added (`CC`, `BCC`), each queue once.
    fn route_message(
        &self,
        x: &Arc<Exchange>,
        message: &Message,
        headers: &LazyHeaders<'_>,
    ) -> Vec<Arc<Queue>> {
        self.route_keys(x, message.routing_key(), message.extra_keys(), headers)
    }

    /// Routes `message` through `x` and appends it to every target queue `accept` lets
    /// through. The one enqueue path of publishes, delayed releases and dead letters.
    fn enqueue(
        &self,
        x: &Arc<Exchange>,
        message: &Arc<Message>,
        headers: &LazyHeaders<'_>,
        accept: impl Fn(&Queue) -> bool,
    ) -> PublishOutcome {
        let queues = self.route_message(x, message, headers);
        put(queues, message, accept)
    }

    /// Decides where a publish to `exchange` goes, without enqueueing it: its target queues,
    /// or the delay a delayed-message exchange holds it for.
    pub(crate) fn route_publish(
        &self,
        exchange: &Arc<Exchange>,
        message: &Message,
    ) -> CoreResult<Routed> {
        if exchange.options.internal {
            return Err(internal_refused(exchange, &self.name));
        }
        let headers = LazyHeaders::of(message);
        if exchange.is_delayed() {
            let delay = headers.get().get(DELAY_HEADER).and_then(FieldValue::as_i64);
            if let Some(d) = delay.filter(|d| *d > 0) {
                return Ok(Routed {
                    exchange: exchange.clone(),
                    target: Target::Delay(d as u64),
                });
            }
        }
        Ok(Routed {
            exchange: exchange.clone(),
            target: Target::Queues(self.route_message(exchange, message, &headers)),
        })
    }

    /// Enqueues `message` where [`VHost::route_publish`] decided. As in RabbitMQ, the
    /// decision names queues: one deleted since is looked up again by name (declared again,
    /// it takes the message; gone, it does not).
    pub(crate) fn deliver(
        &self,
        routed: Routed,
        message: Arc<Message>,
    ) -> CoreResult<PublishOutcome> {
        match routed.target {
            Target::Queues(mut queues) => {
                if queues.iter().any(|q| q.is_deleted()) {
                    let current = self.queues.read();
                    queues = queues
                        .into_iter()
                        .filter_map(|q| match q.is_deleted() {
                            true => current.get(&q.name).cloned(),
                            false => Some(q),
                        })
                        .collect();
                }
                Ok(put(queues, &message, |_| true))
            }
            // Taken by the exchange: counts as routed (no basic.return), as the plugin.
            Target::Delay(d) => Ok(match routed.exchange.hold(message, d)? {
                Some(pending) => PublishOutcome {
                    routed: 1,
                    refused: 0,
                    pending,
                },
                // Its log failed: the publisher gets basic.nack.
                None => PublishOutcome {
                    routed: 0,
                    refused: 1,
                    pending: Pending::default(),
                },
            }),
        }
    }

    /// Publishes a message to an exchange: routes it and appends it to every target queue.
    /// Permissions are the caller's business (see [`Session`](crate::session::Session)).
    pub(crate) fn publish(
        &self,
        exchange: &Arc<Exchange>,
        message: Arc<Message>,
    ) -> CoreResult<PublishOutcome> {
        // The hot path: no `Routed` is built (an `Arc` clone) and no queue looked up again
        // (a lock per queue) for a publish enqueued the instant it is routed.
        if exchange.options.internal {
            return Err(internal_refused(exchange, &self.name));
        }
        if exchange.is_delayed() {
            let routed = self.route_publish(exchange, &message)?;
            return self.deliver(routed, message);
        }
        let headers = LazyHeaders::of(&message);
        Ok(self.enqueue(exchange, &message, &headers, |_| true))
    }
}

/// Where a publish goes, decided when it arrived: a transaction routes each publish then
/// and enqueues it at commit, as RabbitMQ does, so bindings changed in between do not move it.
/// Holds the target queues (a pointer each); a queue deleted meanwhile is found again by name.
pub struct Routed {
    exchange: Arc<Exchange>,
    target: Target,
}

enum Target {
    Queues(Vec<Arc<Queue>>),
    /// Milliseconds a delayed-message exchange holds it.
    Delay(u64),
}

/// Appends `message` to every queue of `queues` that `accept` lets through.
fn put(
    queues: Vec<Arc<Queue>>,
    message: &Arc<Message>,
    accept: impl Fn(&Queue) -> bool,
) -> PublishOutcome {
    let mut out = PublishOutcome::default();
    for q in queues {
        if !accept(&q) {
            continue;
        }
        match q.publish(message.clone()) {
            Enqueued::Accepted(t) => {
                out.routed += 1;
                if let (Some(t), Some(h)) = (t, q.health()) {
                    out.pending.add(t, h.clone());
                }
            }
            Enqueued::Refused => out.refused += 1,
        }
    }
    out
}

/// Most copies one message's dead-lettering may enqueue, all hops together.
pub const MAX_DEAD_LETTER_COPIES: usize = 10_000;

/// Dead letters waiting to be republished on this thread, with the vhost whose outermost
/// `dead_letter` call drains them.
type Deferred = Option<(usize, VecDeque<DeadLetterJob>)>;

thread_local! {
    static DEFERRED: RefCell<Deferred> = const { RefCell::new(None) };
}

/// Clears this thread's deferred dead letters when the draining call ends, even by a panic,
/// so later calls on the thread do not think they are nested.
struct ResetDeferred;

impl Drop for ResetDeferred {
    fn drop(&mut self) {
        DEFERRED.with(|d| *d.borrow_mut() = None);
    }
}

/// Messages that left `queue`, to republish to its dead-letter exchange.
struct DeadLetterJob {
    queue: String,
    dlx: String,
    routing_key: Option<String>,
    letters: Vec<DeadLetter>,
}

impl VHost {
    /// Republishes one queue's dead letters; returns how many copies were enqueued.
    fn republish_dead(&self, job: DeadLetterJob) -> usize {
        let DeadLetterJob {
            queue,
            dlx,
            routing_key,
            letters,
        } = job;
        let Ok(x) = self.exchange(&dlx) else {
            tracing::debug!(
                queue,
                dlx,
                "dead-letter exchange missing; {} messages dropped",
                letters.len()
            );
            return 0;
        };
        let mut copies = 0;
        for l in letters {
            let Some(copy) = dead_letter_copy(&l, &queue, &dlx, routing_key.as_deref()) else {
                continue;
            };
            let copy = Arc::new(copy);
            let headers = LazyHeaders::of(&copy);
            let cycle = cycle_queues(&copy);
            copies += self
                .enqueue(&x, &copy, &headers, |q| !cycle.contains(&q.name))
                .routed;
        }
        copies
    }
}

impl VHost {
    /// An exchange, queue or binding was added: queues holding dead letters that found no
    /// way try them again shortly (on the timer thread, not under the caller's locks).
    pub(crate) fn topology_changed(&self) {
        let waiting = {
            let mut h = self.held_queues.lock();
            if h.is_empty() {
                return;
            }
            std::mem::take(&mut *h)
        };
        for q in waiting.iter().filter_map(std::sync::Weak::upgrade) {
            q.retry_held_soon();
        }
    }
}

impl DelayedRelease for VHost {
    /// Routes a message whose delay on `x` has passed, as `x`'s `x-delayed-type` routes.
    fn release(&self, x: &Arc<Exchange>, message: Arc<Message>) {
        let headers = LazyHeaders::of(&message);
        self.enqueue(x, &message, &headers, |_| true);
    }
}

impl VHost {
    /// Routes a message through an exchange without the internal-exchange check: the
    /// firehose publishes to `amq.rabbitmq.trace`, which clients may not.
    pub(crate) fn publish_internal(&self, x: &Arc<Exchange>, message: Arc<Message>) {
        let headers = LazyHeaders::of(&message);
        self.enqueue(x, &message, &headers, |_| true);
    }
}

impl Routed {
    /// The names of the queues it goes to (none for a delayed-message exchange's hold).
    pub fn queue_names(&self) -> Vec<&str> {
        match &self.target {
            Target::Queues(qs) => qs.iter().map(|q| q.name.as_str()).collect(),
            Target::Delay(_) => Vec::new(),
        }
    }
}

impl QueueEvents for VHost {
    fn trace_deliveries(&self, queue: &str, deliveries: Vec<crate::trace::PendingDelivery>) {
        if self.tracing() {
            for d in &deliveries {
                crate::trace::deliver(self, queue, d);
            }
        }
    }

    /// Republishes messages that left queue `queue` to its dead-letter exchange `dlx`, with
    /// their `x-death` history. A missing exchange drops them, as in RabbitMQ; a queue that
    /// would close a cycle without a rejection in it is skipped.
    fn dead_letter(
        &self,
        queue: &str,
        dlx: &str,
        routing_key: Option<&str>,
        letters: Vec<DeadLetter>,
    ) {
        let job = DeadLetterJob {
            queue: queue.to_string(),
            dlx: dlx.to_string(),
            routing_key: routing_key.map(str::to_string),
            letters,
        };
        // A dead letter can make the next queue dead-letter in turn (it is full, or its TTL
        // is 0): those are queued here and republished by the outermost call in a loop, so a
        // chain of any length runs in constant stack.
        let me = self as *const VHost as usize;
        // `Some(job)`: run it here and drain what it causes; `None`: an outer call will (or,
        // for another vhost's drain on this thread, which dead letters never cause, it is
        // run directly once the thread-local is released).
        enum Next {
            Drain(DeadLetterJob),
            Queued,
            Direct(DeadLetterJob),
        }
        let next = DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            match d.as_mut() {
                Some((owner, list)) if *owner == me => {
                    list.push_back(job);
                    Next::Queued
                }
                Some(_) => Next::Direct(job),
                None => {
                    *d = Some((me, VecDeque::new()));
                    Next::Drain(job)
                }
            }
        });
        let job = match next {
            Next::Queued => return,
            Next::Direct(job) => {
                self.republish_dead(job);
                return;
            }
            Next::Drain(job) => job,
        };
        let _reset = ResetDeferred;
        let mut copies = self.republish_dead(job);
        while let Some(job) = DEFERRED.with(|d| d.borrow_mut().as_mut()?.1.pop_front()) {
            if copies >= MAX_DEAD_LETTER_COPIES {
                // Queues that each dead-letter into a fanout to several such queues double
                // the copies at every level: one message must not become millions.
                let dropped = DEFERRED.with(|d| d.borrow().as_ref().map_or(0, |x| x.1.len())) + 1;
                tracing::warn!(
                    queue = %job.queue,
                    "dead-lettering stopped after {copies} copies caused by one message; {dropped} more batches dropped"
                );
                break;
            }
            copies += self.republish_dead(job);
        }
    }

    fn forward_held(
        &self,
        copy: &Arc<Message>,
        done: &mut Vec<String>,
        pending: &mut Pending,
    ) -> bool {
        let Ok(x) = self.exchange(copy.exchange()) else {
            // No dead-letter exchange (yet): kept, tried again when one is declared.
            return false;
        };
        let headers = LazyHeaders::of(copy);
        let cycle = cycle_queues(copy);
        let mut targets = self.route_message(&x, copy, &headers);
        // A queue that would close a cycle with no rejection in it is no target (RabbitMQ
        // drops the copy for it); a letter with no other target stays held.
        targets.retain(|q| !cycle.contains(&q.name));
        if targets.is_empty() {
            return !done.is_empty();
        }
        let mut all = true;
        for q in targets {
            if done.iter().any(|d| *d == q.name) {
                continue;
            }
            // `publish` returns once the copy is in the target's log (a durable target, a
            // persistent copy); the caller acks the original once that write is fsynced.
            match q.publish(copy.clone()) {
                Enqueued::Accepted(t) => {
                    if let (Some(t), Some(h)) = (t, q.health()) {
                        pending.add(t, h.clone());
                    }
                    done.push(q.name.clone());
                }
                Enqueued::Refused => all = false,
            }
        }
        all
    }

    fn holding(&self, queue: &Arc<Queue>) {
        let mut h = self.held_queues.lock();
        // Dead entries go when the list is next taken; bounded by the queues that hold.
        h.push(Arc::downgrade(queue));
    }

    fn expired(&self, q: &Arc<Queue>) {
        tracing::debug!(queue = %q.name, vhost = %self.name, "queue expired");
        if let Err(e) = self.remove_queue(q, None) {
            tracing::error!(queue = %q.name, vhost = %self.name, "cannot delete an expired queue: {e}");
        }
    }
}
