//! Overview, whoami, nodes, health checks and the aliveness test.

use super::{session, visible_vhosts, St};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::rates::{history_rate, Totals};
use crate::views::{details, totals_message_stats};
use crate::{blocking, Api};
use axum::extract::{Path, Query};
use axum::Json;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The RabbitMQ API version FerryMQ answers as (what tools compare against).
pub(crate) const RABBITMQ_COMPAT_VERSION: &str = "3.10.8";

const EXCHANGE_TYPES: [(&str, &str); 5] = [
    (
        "direct",
        "AMQP direct exchange, as per the AMQP specification",
    ),
    (
        "fanout",
        "AMQP fanout exchange, as per the AMQP specification",
    ),
    (
        "headers",
        "AMQP headers exchange, as per the AMQP specification",
    ),
    (
        "topic",
        "AMQP topic exchange, as per the AMQP specification",
    ),
    ("x-delayed-message", "Delayed Message Exchange"),
];

fn exchange_types() -> Value {
    Value::Array(
        EXCHANGE_TYPES
            .iter()
            .map(|(n, d)| json!({"name": n, "description": d, "enabled": true}))
            .collect(),
    )
}

/// Sample histories requested with `msg_rates_age` / `lengths_age` (seconds) and their
/// `_incr` steps.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct AgeQuery {
    lengths_age: Option<u64>,
    lengths_incr: Option<u64>,
    msg_rates_age: Option<u64>,
    msg_rates_incr: Option<u64>,
}

/// `name_details` with the samples of the last `age` seconds, every `incr` seconds, newest
/// first (as RabbitMQ lists them).
fn details_with_samples(
    hist: &[Totals],
    age: Option<u64>,
    incr: Option<u64>,
    f: impl Fn(&Totals) -> u64,
    rate: f64,
) -> Value {
    let mut d = details(rate);
    let Some(age) = age else { return d };
    let Some(last) = hist.last() else { return d };
    let since = last.at.saturating_sub(age.saturating_mul(1000));
    let step = incr.unwrap_or(5).max(1).saturating_mul(1000);
    let mut samples = Vec::new();
    let mut next_at = u64::MAX;
    for t in hist.iter().rev().take_while(|t| t.at >= since) {
        if t.at <= next_at {
            samples.push(json!({"sample": f(t), "timestamp": t.at}));
            next_at = t.at.saturating_sub(step) + 500;
        }
    }
    if let (Some(first), Some(newest)) = (samples.last(), samples.first()) {
        let (a, b) = (&first["sample"], &newest["sample"]);
        let (ta, tb) = (&first["timestamp"], &newest["timestamp"]);
        let n = samples.len() as f64;
        let sum: f64 = samples.iter().filter_map(|s| s["sample"].as_f64()).sum();
        let span = (tb.as_f64().unwrap_or(0.0) - ta.as_f64().unwrap_or(0.0)) / 1000.0;
        let avg_rate = if span > 0.0 {
            (b.as_f64().unwrap_or(0.0) - a.as_f64().unwrap_or(0.0)) / span
        } else {
            0.0
        };
        d["avg"] = json!(sum / n);
        d["avg_rate"] = json!(avg_rate);
    }
    d["samples"] = Value::Array(samples);
    d
}

/// Message stats and queue totals of `hist` (a vhost's or the broker's sample history).
pub(crate) fn stats_and_totals(hist: &[Totals], q: &AgeQuery) -> (Value, Value) {
    let last = hist.last().copied().unwrap_or_default();
    type Pick = fn(&Totals) -> u64;
    let fields: [(&str, Pick); 13] = [
        ("publish", |t| t.conns.publish),
        ("publish_in", |t| t.conns.publish),
        ("confirm", |t| t.conns.confirm),
        ("return_unroutable", |t| t.conns.return_unroutable),
        ("drop_unroutable", |t| t.conns.drop_unroutable),
        ("deliver", |t| t.queues.deliver),
        ("deliver_no_ack", |t| t.queues.deliver_no_ack),
        ("get", |t| t.queues.get),
        ("get_no_ack", |t| t.queues.get_no_ack),
        ("get_empty", |t| t.queues.get_empty),
        ("redeliver", |t| t.queues.redeliver),
        ("ack", |t| t.queues.ack),
        ("deliver_get", |t| t.queues.deliver_get()),
    ];
    let rates: HashMap<&str, f64> = fields
        .iter()
        .map(|(k, f)| (*k, history_rate(hist, f)))
        .collect();
    let mut stats = totals_message_stats(&last.queues, &last.conns, |k| {
        rates.get(k).copied().unwrap_or(0.0)
    });
    if q.msg_rates_age.is_some() {
        for (k, f) in fields {
            stats[format!("{k}_details")] =
                details_with_samples(hist, q.msg_rates_age, q.msg_rates_incr, f, rates[k]);
        }
    }
    type Len = fn(&Totals) -> u64;
    let lens: [(&str, Len); 3] = [
        ("messages", |t| t.ready + t.unacked),
        ("messages_ready", |t| t.ready),
        ("messages_unacknowledged", |t| t.unacked),
    ];
    let mut totals = Map::new();
    for (k, f) in lens {
        let rate = match hist {
            [.., a, b] => {
                let secs = b.at.saturating_sub(a.at) as f64 / 1000.0;
                if secs > 0.0 {
                    (f(b) as f64 - f(a) as f64) / secs
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        totals.insert(k.into(), json!(f(&last)));
        totals.insert(
            format!("{k}_details"),
            details_with_samples(hist, q.lengths_age, q.lengths_incr, f, rate),
        );
    }
    (stats, Value::Object(totals))
}

/// Lengths right now (the samples lag by up to the sampling interval).
fn live_lengths(vhosts: &[Arc<ferrymq_core::VHost>]) -> (u64, u64, usize, usize, usize) {
    let (mut ready, mut unacked, mut consumers, mut queues, mut exchanges) = (0, 0, 0, 0, 0);
    for v in vhosts {
        exchanges += v.exchanges().len();
        for q in v.queues() {
            let c = q.counts();
            ready += c.messages as u64;
            unacked += c.unacked as u64;
            consumers += c.consumers;
            queues += 1;
        }
    }
    (ready, unacked, consumers, queues, exchanges)
}

/// GET /api/overview.
pub(crate) async fn overview(
    axum::extract::State(api): St,
    caller: Caller,
    Query(q): Query<AgeQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let vhosts = visible_vhosts(&api, &caller);
        // A user who does not see every vhost gets the sum of its own.
        let hist: Vec<Totals> = if caller.is_monitor() {
            api.rates.history(None)
        } else {
            sum_histories(
                &vhosts
                    .iter()
                    .map(|v| api.rates.history(Some(&v.name)))
                    .collect::<Vec<_>>(),
            )
        };
        let (stats, mut totals) = stats_and_totals(&hist, &q);
        let (ready, unacked, consumers, queues, exchanges) = live_lengths(&vhosts);
        totals["messages"] = json!(ready + unacked);
        totals["messages_ready"] = json!(ready);
        totals["messages_unacknowledged"] = json!(unacked);
        let conns: Vec<_> = api
            .broker
            .connections()
            .into_iter()
            .filter(|c| caller.is_monitor() || c.user == caller.user)
            .collect();
        let channels: u64 = conns.iter().map(|c| c.channels()).sum();
        let listeners: Vec<Value> = api
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "node": api.node,
                    "protocol": l.protocol,
                    "ip_address": l.addr.ip().to_string(),
                    "port": l.addr.port(),
                    "socket_opts": {},
                })
            })
            .collect();
        let http = api.listeners.iter().find(|l| l.protocol == "http");
        Ok(Json(json!({
            "management_version": RABBITMQ_COMPAT_VERSION,
            "rates_mode": "basic",
            "sample_retention_policies": {"global": [600], "basic": [600], "detailed": [600]},
            "exchange_types": exchange_types(),
            "product_version": env!("CARGO_PKG_VERSION"),
            "product_name": "FerryMQ",
            "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
            "cluster_name": api.node,
            "erlang_version": "n/a",
            "erlang_full_version": "n/a (FerryMQ is written in Rust)",
            "disable_stats": false,
            "enable_queue_totals": true,
            "message_stats": stats,
            "queue_totals": totals,
            "object_totals": {
                "channels": channels,
                "connections": conns.len(),
                "consumers": consumers,
                "exchanges": exchanges,
                "queues": queues,
            },
            "statistics_db_event_queue": 0,
            "node": api.node,
            "listeners": listeners,
            "contexts": http.map(|l| vec![json!({
                "node": api.node,
                "description": "RabbitMQ Management",
                "path": "/",
                "port": l.addr.port().to_string(),
            })]).unwrap_or_default(),
        })))
    })
    .await
}

/// Adds per-vhost histories sample by sample (aligned on their newest entries).
pub(crate) fn sum_histories(hs: &[Vec<Totals>]) -> Vec<Totals> {
    let n = hs.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = vec![Totals::default(); n];
    for h in hs {
        let off = n - h.len();
        for (i, t) in h.iter().enumerate() {
            let o = &mut out[off + i];
            o.at = o.at.max(t.at);
            o.queues.add(&t.queues);
            o.conns.add(&t.conns);
            o.ready += t.ready;
            o.unacked += t.unacked;
        }
    }
    out
}

/// GET /api/whoami.
pub(crate) async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({"name": caller.user, "tags": caller.tags}))
}

/// GET /api/extensions: no console plugins.
pub(crate) async fn extensions(_caller: Caller) -> Json<Value> {
    Json(json!([]))
}

/// GET /api/cluster-name.
pub(crate) async fn cluster_name(axum::extract::State(api): St, _caller: Caller) -> Json<Value> {
    Json(json!({"name": api.node}))
}

fn node_json(api: &Api) -> Value {
    let alarm = api.broker.blocked().borrow().clone();
    let mem_alarm = alarm.as_deref().is_some_and(|r| r.contains("memory"));
    let disk_alarm = alarm.as_deref().is_some_and(|r| r.contains("disk"));
    let procs = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({
        "name": api.node,
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        "mem_used": crate::metrics::rss_bytes(),
        "mem_alarm": mem_alarm,
        "disk_free_alarm": disk_alarm,
        "fd_used": crate::metrics::open_fds(),
        "sockets_used": api.broker.connections().len(),
        "processors": procs,
        "uptime": ferrymq_core::expiry::wall_ms().saturating_sub(api.started_at),
        "rates_mode": "basic",
        "exchange_types": exchange_types(),
        "auth_mechanisms": [
            {"name": "PLAIN", "description": "SASL PLAIN authentication mechanism", "enabled": true},
            {"name": "AMQPLAIN", "description": "QPid AMQPLAIN mechanism", "enabled": true},
        ],
        "partitions": [],
        "applications": [],
        "contexts": [],
    })
}

/// GET /api/nodes.
pub(crate) async fn nodes(axum::extract::State(api): St, caller: Caller) -> ApiResult<Json<Value>> {
    caller.need_monitor()?;
    Ok(Json(json!([node_json(&api)])))
}

/// GET /api/nodes/{node}.
pub(crate) async fn node(
    axum::extract::State(api): St,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.need_monitor()?;
    if name != api.node {
        return Err(ApiError::NotFound);
    }
    Ok(Json(node_json(&api)))
}

/// GET /api/health/checks/alarms: 503 while a resource alarm blocks publishers.
pub(crate) async fn alarms(
    axum::extract::State(api): St,
    _caller: Caller,
) -> ApiResult<Json<Value>> {
    let alarm = api.broker.blocked().borrow().clone();
    match alarm {
        None => Ok(Json(json!({"status": "ok"}))),
        Some(reason) => Err(ApiError::CheckFailed(json!({
            "status": "failed",
            "reason": "There are alarms in effect in the cluster",
            "alarms": [{"node": api.node, "resource": reason}],
        }))),
    }
}

/// GET /api/health/checks/port-listener/{port}.
pub(crate) async fn port_listener(
    axum::extract::State(api): St,
    _caller: Caller,
    Path(port): Path<String>,
) -> ApiResult<Json<Value>> {
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid port: {port}")))?;
    if api.listeners.iter().any(|l| l.addr.port() == port) {
        return Ok(Json(json!({"status": "ok", "port": port})));
    }
    let ports: Vec<u16> = api.listeners.iter().map(|l| l.addr.port()).collect();
    Err(ApiError::CheckFailed(json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": port,
        "ports": ports,
    })))
}

/// GET /api/health/checks/protocol-listener/{proto}.
pub(crate) async fn protocol_listener(
    axum::extract::State(api): St,
    _caller: Caller,
    Path(proto): Path<String>,
) -> ApiResult<Json<Value>> {
    let want = match proto.as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" | "amqp" => "amqp",
        "amqps" => "amqp/ssl",
        other => other,
    };
    if api.listeners.iter().any(|l| l.protocol == want) {
        return Ok(Json(json!({"status": "ok", "protocol": proto})));
    }
    let protocols: Vec<&str> = api.listeners.iter().map(|l| l.protocol.as_str()).collect();
    Err(ApiError::CheckFailed(json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": proto,
        "protocols": protocols,
    })))
}

/// GET /api/health/checks/virtual-hosts: every vhost is running (they always are here).
pub(crate) async fn virtual_hosts(_caller: Caller) -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Checks that never fail on a single node.
pub(crate) async fn ok_check(_caller: Caller) -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// GET /api/aliveness-test/{vhost}: declares `aliveness-test`, publishes a message to it
/// and gets it back, through the caller's session (its permissions apply).
pub(crate) async fn aliveness(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let s = session(&api, &caller, &vhost)?;
        let (q, _, saved) = s.declare_queue("aliveness-test", Default::default(), false)?;
        api.broker.wait_saved(&saved)?;
        let msg = ferrymq_core::Message::from_properties(
            "",
            "aliveness-test",
            &Default::default(),
            bytes::Bytes::from_static(b"test_message"),
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        s.publish("", Arc::new(msg))?;
        let (_, got) = s.get(&q.name, false)?;
        match got {
            Some((m, _)) if m.message.body() == b"test_message" => {
                Ok(Json(json!({"status": "ok"})))
            }
            _ => Err(ApiError::CheckFailed(
                json!({"status": "failed", "reason": "aliveness-test message not received"}),
            )),
        }
    })
    .await
}
