//! Messages as the core stores and routes them.

use crate::value::FieldTable;
use bytes::Bytes;
use std::sync::Arc;

/// The AMQP basic properties of a message. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// MIME content type.
    pub content_type: Option<String>,
    /// MIME content encoding.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Message priority, 0 to 9 (or up to a queue's max priority).
    pub priority: Option<u8>,
    /// Application correlation identifier (RPC).
    pub correlation_id: Option<String>,
    /// Address to reply to (RPC).
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a string.
    pub expiration: Option<String>,
    /// Application message identifier.
    pub message_id: Option<String>,
    /// Message timestamp (seconds since the epoch).
    pub timestamp: Option<u64>,
    /// Message type name.
    pub kind: Option<String>,
    /// Creating user id.
    pub user_id: Option<String>,
    /// Creating application id.
    pub app_id: Option<String>,
    /// Deprecated cluster id, passed through.
    pub cluster_id: Option<String>,
}

/// A published message. Shared (`Arc`) by every queue it is routed to: never copied per queue.
#[derive(Debug)]
pub struct Message {
    /// Exchange the message was published to.
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Its properties.
    pub properties: Properties,
    /// The properties exactly as received on the wire (flags + fields), when the publisher
    /// spoke AMQP. Re-sent verbatim on delivery so that properties are encoded once.
    pub raw_properties: Option<Bytes>,
    /// The body, read once from the socket.
    pub body: Bytes,
}

impl Message {
    /// Total size used for limits: the body length.
    pub fn body_size(&self) -> usize {
        self.body.len()
    }

    /// Whether the publisher asked for the message to be persisted (delivery mode 2).
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode == Some(2)
    }
}

/// A message as it sits in a queue: its position, and whether it was delivered before.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue; requeued messages go back to their position.
    pub seq: u64,
    /// The shared message.
    pub message: Arc<Message>,
    /// Whether it has been delivered before (the AMQP redelivered flag).
    pub redelivered: bool,
}
