//! The interface through which queues hand messages to protocol connections.

use crate::message::QueuedMessage;
use crate::queue::Queue;
use std::sync::Arc;

/// Why a sink did not take a delivery; the message goes back to the queue untouched.
#[derive(Debug)]
pub enum SinkRefusal {
    /// The consumer has no credit now (prefetch reached, flow off, socket congested);
    /// the protocol side calls [`Queue::dispatch`] when that changes.
    Busy(QueuedMessage),
    /// The consumer is gone; the queue should drop it.
    Gone(QueuedMessage),
}

/// A consumer's endpoint, implemented by a protocol crate (e.g. an AMQP channel consumer).
///
/// Methods are called with the queue's lock held: they must be quick and must never call back
/// into the same queue.
pub trait ConsumerSink: Send + Sync {
    /// Whether the consumer could take a delivery now.
    fn has_credit(&self) -> bool;
    /// Hands over one message. `ack_required` is false for no-ack consumers, in which case the
    /// queue has already forgotten the message.
    fn deliver(
        &self,
        queue: &Arc<Queue>,
        msg: QueuedMessage,
        ack_required: bool,
    ) -> Result<(), SinkRefusal>;
    /// The queue was deleted under the consumer (AMQP: send basic.cancel to the client).
    fn cancelled_by_server(&self);
}
