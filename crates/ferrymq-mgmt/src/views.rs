//! JSON views of broker objects with RabbitMQ's field names.

use crate::rates::QueueRates;
use ferrymq_core::connections::ConnectionInfo;
use ferrymq_core::exchange::{Binding, Destination, Exchange};
use ferrymq_core::queue::{Queue, QueueSnapshot};
use ferrymq_core::stats::{ChannelInfo, ConnectionTotals, QueueStats};
use ferrymq_core::value::table_to_json;
use serde_json::{json, Map, Value};

/// `{"rate": r}`, RabbitMQ's `_details` object.
pub fn details(rate: f64) -> Value {
    json!({ "rate": (rate * 10.0).round() / 10.0 })
}

/// Inserts `name` and `name_details`.
fn counter(m: &mut Map<String, Value>, name: &str, n: u64, rate: f64) {
    m.insert(name.to_string(), json!(n));
    m.insert(format!("{name}_details"), details(rate));
}

/// A queue's `message_stats`.
pub fn queue_message_stats(s: &QueueStats, r: &QueueRates) -> Value {
    let mut m = Map::new();
    let names = [
        "publish",
        "deliver",
        "deliver_no_ack",
        "get",
        "get_no_ack",
        "get_empty",
        "redeliver",
        "ack",
    ];
    let vals = [
        s.publish,
        s.deliver,
        s.deliver_no_ack,
        s.get,
        s.get_no_ack,
        s.get_empty,
        s.redeliver,
        s.ack,
    ];
    for i in 0..names.len() {
        counter(&mut m, names[i], vals[i], r.stats[i]);
    }
    let dg = r.stats[1] + r.stats[2] + r.stats[3] + r.stats[4];
    counter(&mut m, "deliver_get", s.deliver_get(), dg);
    Value::Object(m)
}

/// Message stats of a vhost or the whole broker: queue counters plus the publishers'.
pub fn totals_message_stats(
    q: &QueueStats,
    c: &ConnectionTotals,
    rate: impl Fn(&str) -> f64,
) -> Value {
    let mut m = Map::new();
    let pairs: [(&str, u64); 13] = [
        ("publish", c.publish),
        ("confirm", c.confirm),
        ("return_unroutable", c.return_unroutable),
        ("drop_unroutable", c.drop_unroutable),
        ("deliver", q.deliver),
        ("deliver_no_ack", q.deliver_no_ack),
        ("get", q.get),
        ("get_no_ack", q.get_no_ack),
        ("get_empty", q.get_empty),
        ("redeliver", q.redeliver),
        ("ack", q.ack),
        ("deliver_get", q.deliver_get()),
        ("publish_in", c.publish),
    ];
    for (k, v) in pairs {
        counter(&mut m, k, v, rate(k));
    }
    Value::Object(m)
}

/// The ISO 8601 form RabbitMQ shows times in (`2026-12-02T04:37:29.310+00:00`).
pub fn iso_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, mo, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Where a queue object is shown from.
pub struct QueueView<'a> {
    /// The queue.
    pub queue: &'a Queue,
    /// Its counts and counters.
    pub snap: &'a QueueSnapshot,
    /// Its last rates.
    pub rates: QueueRates,
    /// The policy in effect, with its definition.
    pub policy: Option<(String, Map<String, Value>)>,
    /// The node name.
    pub node: &'a str,
    /// Leave `message_stats` out.
    pub no_stats: bool,
}

impl QueueView<'_> {
    /// The queue as `/api/queues` lists it.
    pub fn json(&self) -> Value {
        let q = self.queue;
        let s = self.snap;
        let c = s.counts;
        let kind = q
            .options
            .arguments
            .get("x-queue-type")
            .and_then(|v| v.as_str())
            .unwrap_or("classic");
        let mut m = Map::new();
        m.insert("name".into(), json!(q.name));
        m.insert("vhost".into(), json!(q.vhost));
        m.insert("durable".into(), json!(q.options.durable));
        m.insert("auto_delete".into(), json!(q.options.auto_delete));
        m.insert("exclusive".into(), json!(q.options.exclusive));
        m.insert(
            "arguments".into(),
            Value::Object(table_to_json(&q.options.arguments)),
        );
        m.insert("node".into(), json!(self.node));
        m.insert("type".into(), json!(kind));
        m.insert("state".into(), json!("running"));
        m.insert("consumers".into(), json!(c.consumers));
        let (total, ready, unacked) = (c.messages + c.unacked, c.messages, c.unacked);
        counter(
            &mut m,
            "messages",
            total as u64,
            self.rates.ready + self.rates.unacked,
        );
        counter(&mut m, "messages_ready", ready as u64, self.rates.ready);
        counter(
            &mut m,
            "messages_unacknowledged",
            unacked as u64,
            self.rates.unacked,
        );
        m.insert("message_bytes_ready".into(), json!(s.ready_bytes));
        m.insert("message_bytes".into(), json!(s.ready_bytes));
        m.insert(
            "policy".into(),
            self.policy.as_ref().map_or(Value::Null, |p| json!(p.0)),
        );
        m.insert(
            "effective_policy_definition".into(),
            Value::Object(
                self.policy
                    .as_ref()
                    .map(|p| p.1.clone())
                    .unwrap_or_default(),
            ),
        );
        m.insert("operator_policy".into(), Value::Null);
        m.insert(
            "exclusive_consumer_tag".into(),
            s.consumers
                .iter()
                .find(|c| c.exclusive)
                .map_or(Value::Null, |c| json!(c.tag)),
        );
        if let Some(t) = s.idle_since {
            m.insert("idle_since".into(), json!(iso_time(t)));
        }
        if s.held > 0 {
            // FerryMQ's own: at-least-once dead letters waiting for their targets.
            m.insert("messages_dead_letter_held".into(), json!(s.held));
        }
        if !self.no_stats {
            m.insert(
                "message_stats".into(),
                queue_message_stats(&s.stats, &self.rates),
            );
        }
        Value::Object(m)
    }
}

/// An exchange as `/api/exchanges` lists it.
pub fn exchange_json(x: &Exchange, vhost: &str) -> Value {
    let name = if x.name.is_empty() { "" } else { &x.name };
    json!({
        "name": name,
        "vhost": vhost,
        "type": x.type_name(),
        "durable": x.options.durable,
        "auto_delete": x.options.auto_delete,
        "internal": x.options.internal,
        "arguments": table_to_json(&x.options.arguments),
        "user_who_performed_action": "",
    })
}

/// RabbitMQ's `properties_key` of a binding: the routing key, plus a hash of the arguments
/// when there are any (`~` separated), with `~` and `%` escaped in the key.
pub fn properties_key(b: &Binding) -> String {
    let key = if b.routing_key.is_empty() {
        "~".to_string()
    } else {
        b.routing_key.replace('%', "%25").replace('~', "%7E")
    };
    if b.arguments.is_empty() {
        return key;
    }
    let args = serde_json::to_string(&table_to_json(&b.arguments)).unwrap_or_default();
    format!("{key}~{}", short_hash(&args))
}

fn short_hash(s: &str) -> String {
    // FNV-1a: stable across runs, enough to tell a destination's bindings apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    let mut out = String::new();
    for byte in h.to_be_bytes().iter().take(6) {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A binding as `/api/bindings` lists it.
pub fn binding_json(source: &str, vhost: &str, b: &Binding) -> Value {
    let (dest, kind) = match &b.destination {
        Destination::Queue(q) => (q.name.clone(), "queue"),
        Destination::Exchange(x) => (x.name.clone(), "exchange"),
    };
    json!({
        "source": source,
        "vhost": vhost,
        "destination": dest,
        "destination_type": kind,
        "routing_key": b.routing_key,
        "arguments": table_to_json(&b.arguments),
        "properties_key": properties_key(b),
    })
}

/// The binding every queue has from the default exchange (shown by RabbitMQ's API).
pub fn default_binding_json(queue: &str, vhost: &str) -> Value {
    json!({
        "source": "",
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": queue,
        "arguments": {},
        "properties_key": queue,
    })
}

/// `a.b.c.d:port` of an address (IPv6 without brackets, as RabbitMQ shows it).
fn host_port(a: Option<std::net::SocketAddr>) -> (Value, Value) {
    match a {
        Some(a) => (json!(a.ip().to_canonical().to_string()), json!(a.port())),
        None => (Value::Null, Value::Null),
    }
}

/// The name RabbitMQ gives a connection: `peer:port -> local:port`.
pub fn connection_name(c: &ConnectionInfo) -> String {
    c.name()
}

/// A connection as `/api/connections` lists it.
pub fn connection_json(c: &ConnectionInfo, node: &str, rates: (f64, f64)) -> Value {
    let t = c.meta.stats.totals();
    let (peer_host, peer_port) = host_port(c.meta.peer);
    let (host, port) = host_port(c.meta.local);
    let props = table_to_json(&c.meta.client_properties);
    let user_name = props.get("connection_name").cloned().unwrap_or(Value::Null);
    let state = c.state().as_str();
    json!({
        "name": connection_name(c),
        "node": node,
        "type": "network",
        "protocol": c.meta.protocol,
        "user": c.user,
        "vhost": c.vhost,
        "auth_mechanism": c.meta.auth_mechanism,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "host": host,
        "port": port,
        "ssl": c.meta.tls,
        "channels": c.channels(),
        "channel_max": c.meta.channel_max,
        "frame_max": c.meta.frame_max,
        "timeout": c.meta.heartbeat,
        "connected_at": c.connected_at,
        "client_properties": props,
        "user_provided_name": user_name,
        "state": state,
        "recv_oct": t.recv_oct,
        "recv_oct_details": details(rates.0),
        "recv_cnt": t.recv_cnt,
        "send_oct": t.send_oct,
        "send_oct_details": details(rates.1),
        "send_cnt": t.send_cnt,
        "send_pend": 0,
    })
}

/// A channel as `/api/channels` lists it.
/// A channel as `/api/channels` lists it; `rates` are its counters' last sampled rates
/// (`rates::channel_counters` order).
pub fn channel_json(
    c: &ConnectionInfo,
    ch: &ChannelInfo,
    node: &str,
    rates: [f64; crate::rates::CHANNEL_COUNTERS],
) -> Value {
    let g = ChannelInfo::get;
    let conn_name = connection_name(c);
    let (peer_host, peer_port) = host_port(c.meta.peer);
    let mut stats = Map::new();
    let now = crate::rates::channel_counters(ch);
    const NAMES: [&str; crate::rates::CHANNEL_COUNTERS] = [
        "publish",
        "confirm",
        "return_unroutable",
        "drop_unroutable",
        "deliver",
        "deliver_no_ack",
        "get",
        "get_no_ack",
        "get_empty",
        "redeliver",
        "ack",
    ];
    for ((k, v), r) in NAMES.iter().zip(now).zip(rates) {
        counter(&mut stats, k, v, r);
    }
    // deliver, deliver_no_ack, get, get_no_ack.
    let dg = |a: &[f64; crate::rates::CHANNEL_COUNTERS]| a[4] + a[5] + a[6] + a[7];
    let now_f = now.map(|v| v as f64);
    counter(&mut stats, "deliver_get", dg(&now_f) as u64, dg(&rates));
    counter(&mut stats, "publish_in", now[0], rates[0]);
    json!({
        "name": format!("{conn_name} ({})", ch.number),
        "number": ch.number,
        "node": node,
        "user": c.user,
        "vhost": c.vhost,
        "connection_details": {"name": conn_name, "peer_host": peer_host, "peer_port": peer_port},
        "consumer_count": g(&ch.consumers),
        "messages_unacknowledged": g(&ch.unacked),
        "messages_unconfirmed": ChannelInfo::get(&ch.unconfirmed),
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "prefetch_count": g(&ch.prefetch),
        "global_prefetch_count": g(&ch.global_prefetch),
        "confirm": ChannelInfo::flag(&ch.confirm),
        "transactional": ChannelInfo::flag(&ch.transactional),
        "state": "running",
        "message_stats": Value::Object(stats),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_as_rabbitmq_does() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(iso_time(1_796_186_421_253), "2026-12-02T04:40:21.253+00:00");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00.000+00:00");
    }
}
