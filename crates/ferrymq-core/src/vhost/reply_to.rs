//! Direct reply-to: the pseudo-queues behind `amq.rabbitmq.reply-to`, one per consuming
//! channel, reachable through the default exchange by their generated names.

use super::VHost;
use crate::queue::Queue;
use std::sync::Arc;

/// Prefix of the pseudo-queue names used by direct reply-to.
pub const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

impl VHost {
    /// Registers a direct reply-to pseudo-queue under `token`.
    pub(crate) fn register_reply_queue(&self, token: &str, q: Arc<Queue>) {
        self.reply_queues.write().insert(token.to_string(), q);
    }

    /// Whether a direct reply-to pseudo-queue is registered under `token`.
    pub(crate) fn has_reply_queue(&self, token: &str) -> bool {
        self.reply_queues.read().contains_key(token)
    }

    /// Removes a direct reply-to pseudo-queue.
    pub(crate) fn unregister_reply_queue(&self, token: &str) {
        if let Some(q) = self.reply_queues.write().remove(token) {
            q.mark_deleted(None);
        }
    }
}
