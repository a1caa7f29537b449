//! The firehose tracer, as RabbitMQ's: with tracing on for a vhost, every message published
//! into one of its exchanges is copied to `amq.rabbitmq.trace` with routing key
//! `publish.<exchange>`, and every delivery (consumer or `basic.get`) with
//! `deliver.<queue>`, carrying the original body and RabbitMQ's headers (`exchange_name`,
//! `routing_keys`, `properties`, `node`, `vhost`, `connection`, `channel`, `user`, plus
//! `routed_queues` or `redelivered`). Messages of the trace exchange itself are never traced.
//!
//! Switched per vhost at runtime (not kept across restarts, as in RabbitMQ); while no vhost
//! traces, the message path pays one relaxed load of [`ACTIVE`].

use crate::message::{Message, Properties};
use crate::value::{FieldTable, FieldValue};
use crate::vhost::{VHost, TRACE_EXCHANGE};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many vhosts trace now: the message path looks further only when it is not 0.
pub static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Most deliveries a queue notes for tracing between two releases of its lock: dispatch
/// pauses there, the lock is released, they are traced, and dispatch goes on (none is lost,
/// and the list does not grow with the backlog).
pub(crate) const MAX_PENDING: usize = 4096;

/// Whether any vhost traces (cheap; the vhost's own flag decides).
#[inline]
pub fn any() -> bool {
    ACTIVE.load(Ordering::Relaxed) > 0
}

/// Who published or consumed: what the trace headers name.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The connection's name (`peer:port -> local:port`).
    pub connection: String,
    /// The authenticated user.
    pub user: String,
    /// The node name for the `node` header.
    pub node: Arc<str>,
}

/// A delivery noted under a queue's lock, traced once the lock is released (tracing
/// enqueues into the queues bound to the trace exchange, which may be this one).
pub struct PendingDelivery {
    /// The message delivered.
    pub message: Arc<Message>,
    /// Whether it was a redelivery.
    pub redelivered: bool,
    /// Who it went to.
    pub origin: Arc<Origin>,
    /// On which channel.
    pub channel: u16,
}

/// This node's name (`ferrymq@host`), as the API and the trace headers show it.
pub fn node_name() -> Arc<str> {
    static NAME: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Arc::from(format!("ferrymq@{host}"))
    })
    .clone()
}

fn long(s: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
}

/// The original message's properties as RabbitMQ's tracer lists them (set ones only).
fn properties_table(p: &Properties) -> FieldTable {
    let mut t = FieldTable::new();
    let mut s = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            t.insert(k, long(v));
        }
    };
    s("content_type", &p.content_type);
    s("content_encoding", &p.content_encoding);
    s("correlation_id", &p.correlation_id);
    s("reply_to", &p.reply_to);
    s("expiration", &p.expiration);
    s("message_id", &p.message_id);
    s("type", &p.kind);
    s("user_id", &p.user_id);
    s("app_id", &p.app_id);
    s("cluster_id", &p.cluster_id);
    if let Some(h) = &p.headers {
        t.insert("headers", FieldValue::Table(h.clone()));
    }
    if let Some(d) = p.delivery_mode {
        t.insert("delivery_mode", FieldValue::I32(i32::from(d)));
    }
    if let Some(x) = p.priority {
        t.insert("priority", FieldValue::I32(i32::from(x)));
    }
    if let Some(ts) = p.timestamp {
        t.insert(
            "timestamp",
            FieldValue::I32(i32::try_from(ts).unwrap_or(i32::MAX)),
        );
    }
    t
}

/// The headers every trace message carries.
fn common(m: &Message, origin: &Origin, vhost: &str, channel: u16) -> FieldTable {
    let mut keys = vec![long(m.routing_key())];
    keys.extend(m.extra_keys().iter().map(long));
    let mut t = FieldTable::new();
    t.insert("exchange_name", long(m.exchange()));
    t.insert("routing_keys", FieldValue::Array(keys));
    t.insert(
        "properties",
        FieldValue::Table(properties_table(&m.properties())),
    );
    t.insert("node", long(&origin.node));
    t.insert("vhost", long(vhost));
    t.insert("connection", long(&origin.connection));
    t.insert("channel", FieldValue::I32(i32::from(channel)));
    t.insert("user", long(&origin.user));
    t
}

fn body(m: &Message) -> Bytes {
    match m.large_body() {
        Some(b) => b.clone(),
        None => Bytes::copy_from_slice(m.body()),
    }
}

fn emit(vhost: &VHost, routing_key: &str, headers: FieldTable, body: Bytes) {
    let Ok(x) = vhost.exchange(TRACE_EXCHANGE) else {
        return;
    };
    // Exchange and queue names are at most 255 bytes: `deliver.` + a name can be longer
    // than a routing key may be, so it is cut at a character boundary.
    let mut end = routing_key.len().min(255);
    while !routing_key.is_char_boundary(end) {
        end -= 1;
    }
    let props = Properties {
        headers: Some(headers),
        ..Properties::default()
    };
    match Message::from_properties(TRACE_EXCHANGE, &routing_key[..end], &props, body) {
        Ok(m) => vhost.publish_internal(&x, Arc::new(m)),
        Err(e) => tracing::debug!(vhost = %vhost.name, "trace message not built: {e}"),
    }
}

/// Traces a publish to `m.exchange()` that was routed to `queues`.
pub(crate) fn publish(vhost: &VHost, m: &Message, queues: &[&str], origin: &Origin, ch: u16) {
    if m.exchange() == TRACE_EXCHANGE {
        return;
    }
    let mut h = common(m, origin, &vhost.name, ch);
    h.insert(
        "routed_queues",
        FieldValue::Array(queues.iter().map(|q| long(q)).collect()),
    );
    emit(vhost, &format!("publish.{}", m.exchange()), h, body(m));
}

/// Traces a delivery from `queue`.
pub(crate) fn deliver(vhost: &VHost, queue: &str, d: &PendingDelivery) {
    if d.message.exchange() == TRACE_EXCHANGE {
        return;
    }
    let mut h = common(&d.message, &d.origin, &vhost.name, d.channel);
    h.insert("redelivered", FieldValue::I32(i32::from(d.redelivered)));
    emit(vhost, &format!("deliver.{queue}"), h, body(&d.message));
}

#[cfg(test)]
mod tests {
    use crate::message::{Message, Properties};
    use crate::queue::QueueOptions;
    use crate::value::FieldTable;
    use crate::{Broker, BrokerConfig};
    use std::sync::Arc;

    #[test]
    fn a_queue_name_too_long_for_a_routing_key_is_cut_not_refused() {
        let b = Broker::new(BrokerConfig::default());
        let s = b.api_session("guest", "/").unwrap();
        s.declare_queue("t", QueueOptions::default(), false)
            .unwrap();
        s.bind_queue("t", super::TRACE_EXCHANGE, "#", FieldTable::new())
            .unwrap();
        // 255 bytes of a multi-byte character: `deliver.` + it must be cut at a boundary.
        let long = "é".repeat(127);
        s.declare_queue(&long, QueueOptions::default(), false)
            .unwrap();
        b.vhost("/").unwrap().set_tracing(true);
        let m = Message::from_properties("", &long, &Properties::default(), "x".into()).unwrap();
        s.publish("", Arc::new(m)).unwrap();
        s.get(&long, false).unwrap();
        b.vhost("/").unwrap().set_tracing(false);
        let mut keys = Vec::new();
        while let (_, Some((m, _))) = s.get("t", false).unwrap() {
            keys.push(m.message.routing_key().to_string());
        }
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[0], "publish.");
        assert!(keys[1].starts_with("deliver.é") && keys[1].len() <= 255);
    }

    #[test]
    fn a_deleted_vhost_cannot_be_switched_on() {
        // The API looks the vhost up, then switches it: a deletion in between must not
        // leave a tracing vhost nobody can reach (the node-wide count would stay above 0,
        // and every queue of every vhost would note its deliveries for ever).
        let b = Broker::new(BrokerConfig::default());
        b.add_vhost("gone").unwrap();
        let v = b.vhost("gone").unwrap();
        b.delete_vhost("gone").unwrap();
        v.set_tracing(true);
        assert!(!v.tracing());
    }
}
