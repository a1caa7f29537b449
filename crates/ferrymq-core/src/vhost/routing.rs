//! Routing and enqueueing: the one path a message takes from an exchange into queues, used
//! by client publishes, delayed-message releases and dead-lettering alike.

use super::reply_to::REPLY_TO_PREFIX;
use super::VHost;
use crate::dead_letter::{dead_letter_copy, is_cycle, DeadLetter};
use crate::error::{CoreError, CoreResult};
use crate::events::{DelayedRelease, QueueEvents};
use crate::exchange::{Destination, Exchange, DELAY_HEADER};
use crate::message::{LazyHeaders, Message};
use crate::queue::{Enqueued, Queue};
use crate::value::FieldValue;
use ferrymq_store::Pending;
use std::sync::Arc;

/// What a publish did.
#[derive(Clone, Default)]
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

impl std::fmt::Debug for PublishOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishOutcome")
            .field("routed", &self.routed)
            .field("refused", &self.refused)
            .field("ticket", &self.pending.ticket())
            .finish()
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
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        if exchange.name.is_empty() {
            if let Some(q) = self.queues.read().get(routing_key) {
                queues.push(q.clone());
            } else if let Some(q) = routing_key
                .strip_prefix(REPLY_TO_PREFIX)
                .and_then(|t| self.reply_queues.read().get(t).cloned())
            {
                queues.push(q);
            }
            return queues;
        }
        let mut visited: Vec<*const Exchange> = Vec::new();
        self.route_exchange(exchange, routing_key, headers, &mut queues, &mut visited);
        queues
    }

    fn route_exchange(
        &self,
        x: &Arc<Exchange>,
        key: &str,
        headers: &LazyHeaders<'_>,
        queues: &mut Vec<Arc<Queue>>,
        visited: &mut Vec<*const Exchange>,
    ) {
        if visited.contains(&Arc::as_ptr(x)) {
            return;
        }
        visited.push(Arc::as_ptr(x));
        let before = queues.len();
        let mut dests = Vec::new();
        x.route_into(key, headers, &mut dests);
        for d in dests {
            match d {
                Destination::Queue(q) => {
                    if !queues.iter().any(|e| Arc::ptr_eq(e, &q)) {
                        queues.push(q);
                    }
                }
                Destination::Exchange(e) => self.route_exchange(&e, key, headers, queues, visited),
            }
        }
        if queues.len() == before {
            if let Some(ae) = x
                .alternate_exchange()
                .and_then(|n| self.exchanges.read().get(&n).cloned())
            {
                self.route_exchange(&ae, key, headers, queues, visited);
            }
        }
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
        let mut out = PublishOutcome::default();
        for q in self.route(x, message.routing_key(), headers) {
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

    /// Publishes a message to an exchange: routes it and appends it to every target queue.
    /// Permissions are the caller's business (see [`Session`](crate::session::Session)).
    pub(crate) fn publish(
        &self,
        exchange: &Arc<Exchange>,
        message: Arc<Message>,
    ) -> CoreResult<PublishOutcome> {
        if exchange.options.internal {
            return Err(CoreError::AccessRefused(format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                exchange.name, self.name
            )));
        }
        let headers = LazyHeaders::of(&message);
        if exchange.is_delayed() {
            let delay = headers.get().get(DELAY_HEADER).and_then(FieldValue::as_i64);
            if let Some(d) = delay.filter(|d| *d > 0) {
                // Taken by the exchange: counts as routed (no basic.return), as the plugin.
                return Ok(match exchange.hold(message, d as u64)? {
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
                });
            }
        }
        Ok(self.enqueue(exchange, &message, &headers, |_| true))
    }
}

impl DelayedRelease for VHost {
    /// Routes a message whose delay on `x` has passed, as `x`'s `x-delayed-type` routes.
    fn release(&self, x: &Arc<Exchange>, message: Arc<Message>) {
        let headers = LazyHeaders::of(&message);
        self.enqueue(x, &message, &headers, |_| true);
    }
}

impl QueueEvents for VHost {
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
        let Ok(x) = self.exchange(dlx) else {
            tracing::debug!(
                queue,
                dlx,
                "dead-letter exchange missing; {} messages dropped",
                letters.len()
            );
            return;
        };
        for l in letters {
            let Some(copy) = dead_letter_copy(&l.message, queue, l.reason, dlx, routing_key) else {
                continue;
            };
            let copy = Arc::new(copy);
            let headers = LazyHeaders::of(&copy);
            self.enqueue(&x, &copy, &headers, |q| !is_cycle(&copy, &q.name));
        }
    }

    fn expired(&self, q: &Arc<Queue>) {
        tracing::debug!(queue = %q.name, vhost = %self.name, "queue expired");
        if let Err(e) = self.remove_queue(q, None) {
            tracing::error!(queue = %q.name, vhost = %self.name, "cannot delete an expired queue: {e}");
        }
    }
}
