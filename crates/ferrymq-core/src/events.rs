//! What queues and delayed exchanges report back to the vhost they live in. Small traits
//! instead of a reference to `VHost`, so queues and exchanges do not depend on it.

use crate::dead_letter::DeadLetter;
use crate::exchange::Exchange;
use crate::message::Message;
use crate::queue::Queue;
use std::sync::Arc;

/// Events of a queue its home vhost acts on.
pub trait QueueEvents: Send + Sync {
    /// Messages left queue `queue` for dead-letter exchange `dlx` (with `routing_key`, or
    /// their own keys): route them there. Called with no queue lock held.
    fn dead_letter(
        &self,
        queue: &str,
        dlx: &str,
        routing_key: Option<&str>,
        letters: Vec<DeadLetter>,
    );
    /// The queue was unused for its `x-expires`: delete it.
    fn expired(&self, queue: &Arc<Queue>);
    /// Offers an at-least-once dead-letter copy to the queues it routes to through its
    /// exchange, except those named in `done` (they took it before; each that takes it now
    /// is added, and the group-commit tickets of durable targets' writes to `pending`). True
    /// once every target has it; false if it routes nowhere or a target refused it (it is
    /// then tried again later). Called with no queue lock held.
    fn forward_held(
        &self,
        _copy: &Arc<Message>,
        _done: &mut Vec<String>,
        _pending: &mut ferrymq_store::Pending,
    ) -> bool {
        false
    }
    /// `queue` holds dead letters that could not be forwarded yet: call its
    /// [`Queue::retry_held_soon`] when the topology changes.
    fn holding(&self, _queue: &Arc<Queue>) {}
    /// Deliveries from `queue` noted while the firehose was on: trace them if the vhost
    /// still traces. Called with no queue lock held.
    fn trace_deliveries(&self, _queue: &str, _deliveries: Vec<crate::trace::PendingDelivery>) {}
}

/// Where a delayed-message exchange sends a message once its delay has passed.
pub trait DelayedRelease: Send + Sync {
    /// Routes `message` through `exchange` now.
    fn release(&self, exchange: &Arc<Exchange>, message: Arc<Message>);
}
