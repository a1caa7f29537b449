//! Publishing through the API (`/api/exchanges/{vhost}/{name}/publish`) and getting or
//! peeking at messages (`/api/queues/{vhost}/{name}/get`).

use super::{parse_body, session, St};
use crate::auth::Caller;
use crate::blocking;
use crate::error::{ApiError, ApiResult};
use axum::extract::Path;
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use ferrymq_core::message::{Message, Properties};
use ferrymq_core::stats::ConnectionStats;
use ferrymq_core::value::{table_from_json, table_to_json};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Most messages one get request takes.
const MAX_GET_COUNT: usize = 10_000;
/// Once the payloads taken add up to this, a get request stops taking more: the answer is
/// built in memory.
const MAX_GET_BYTES: usize = 64 * 1024 * 1024;

/// The body of a publish.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PublishBody {
    properties: Map<String, Value>,
    routing_key: String,
    payload: String,
    payload_encoding: Option<String>,
}

fn text(m: &Map<String, Value>, k: &str) -> Option<String> {
    match m.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn small(m: &Map<String, Value>, k: &str) -> ApiResult<Option<u8>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(format!("invalid property {k}"))),
    }
}

/// Message properties from their JSON form (RabbitMQ's names).
fn properties_from_json(m: &Map<String, Value>) -> ApiResult<Properties> {
    let headers = match m.get("headers") {
        None | Some(Value::Null) => None,
        Some(Value::Object(h)) => Some(table_from_json(h)),
        Some(_) => return Err(ApiError::BadRequest("headers must be an object".into())),
    };
    Ok(Properties {
        content_type: text(m, "content_type"),
        content_encoding: text(m, "content_encoding"),
        headers,
        delivery_mode: small(m, "delivery_mode")?,
        priority: small(m, "priority")?,
        correlation_id: text(m, "correlation_id"),
        reply_to: text(m, "reply_to"),
        expiration: text(m, "expiration"),
        message_id: text(m, "message_id"),
        timestamp: m.get("timestamp").and_then(Value::as_u64),
        kind: text(m, "type"),
        user_id: text(m, "user_id"),
        app_id: text(m, "app_id"),
        cluster_id: text(m, "cluster_id"),
    })
}

/// Message properties as RabbitMQ's API shows them: only those set.
fn properties_json(p: &Properties) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("content_type", p.content_type.clone().map(Value::from));
    put(
        "content_encoding",
        p.content_encoding.clone().map(Value::from),
    );
    put("priority", p.priority.map(Value::from));
    put("correlation_id", p.correlation_id.clone().map(Value::from));
    put("reply_to", p.reply_to.clone().map(Value::from));
    put("expiration", p.expiration.clone().map(Value::from));
    put("message_id", p.message_id.clone().map(Value::from));
    put("timestamp", p.timestamp.map(Value::from));
    put("type", p.kind.clone().map(Value::from));
    put("user_id", p.user_id.clone().map(Value::from));
    put("app_id", p.app_id.clone().map(Value::from));
    put("cluster_id", p.cluster_id.clone().map(Value::from));
    put("delivery_mode", p.delivery_mode.map(Value::from));
    put(
        "headers",
        p.headers.as_ref().map(|h| Value::Object(table_to_json(h))),
    );
    Value::Object(m)
}

/// POST /api/exchanges/{vhost}/{name}/publish: `{"routed": bool}`.
pub(crate) async fn publish(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    // Parsed off the runtime: a publish body may be 64 MiB.
    blocking(move || {
        let b: PublishBody = parse_body(&body)?;
        let payload = match b.payload_encoding.as_deref().unwrap_or("string") {
            "string" => Bytes::from(b.payload.into_bytes()),
            "base64" => Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b.payload.trim())
                    .map_err(|_| ApiError::BadRequest("payload is not valid base64".into()))?,
            ),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown payload_encoding '{other}'"
                )))
            }
        };
        let props = properties_from_json(&b.properties)?;
        if payload.len() > api.broker.config.max_message_size {
            return Err(ApiError::BadRequest(format!(
                "message size {} is larger than the maximum {}",
                payload.len(),
                api.broker.config.max_message_size
            )));
        }
        let s = session(&api, &caller, &vhost)?;
        let exchange = if name == "amq.default" {
            ""
        } else {
            name.as_str()
        };
        if !exchange.is_empty() {
            s.vhost()
                .exchange(exchange)
                .map_err(|_| ApiError::NotFound)?;
        }
        // A user_id must be the caller's own, as on AMQP: consumers trust it.
        if let Some(claimed) = &props.user_id {
            s.check_user_id(claimed)?;
        }
        let msg = Message::from_properties(exchange, &b.routing_key, &props, payload)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let out = s.publish(exchange, Arc::new(msg))?;
        // Counted as an AMQP client's publish (RabbitMQ's overview counts the API's): the
        // session's counters join its vhost's totals when it is dropped.
        let stats = &s.info().meta.stats;
        ConnectionStats::bump(&stats.publish, 1);
        if out.routed == 0 {
            ConnectionStats::bump(&stats.drop_unroutable, 1);
        }
        api.broker.wait_saved(&out.pending)?;
        Ok(Json(json!({"routed": out.routed > 0})))
    })
    .await
}

/// The body of a get.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GetBody {
    count: Option<Value>,
    ackmode: String,
    encoding: String,
    truncate: Option<Value>,
}

fn number(v: &Option<Value>, what: &str) -> ApiResult<Option<usize>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| ApiError::BadRequest(format!("{what} must be a non-negative integer"))),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("{what} must be a non-negative integer"))),
        Some(_) => Err(ApiError::BadRequest(format!("{what} must be an integer"))),
    }
}

/// POST /api/queues/{vhost}/{name}/get. `ackmode`: `ack_requeue_true` (peek: the messages
/// go back where they were, marked redelivered), `ack_requeue_false` (taken),
/// `reject_requeue_true`, `reject_requeue_false` (dead-lettered if the queue has a DLX).
/// `encoding`: `auto` (text when it is valid UTF-8) or `base64`. `truncate`: most payload
/// bytes shown per message.
pub(crate) async fn get(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let b: GetBody = parse_body(&body)?;
    let count = number(&b.count, "count")?.unwrap_or(1).min(MAX_GET_COUNT);
    let truncate = number(&b.truncate, "truncate")?;
    let (requeue, reject) = match b.ackmode.as_str() {
        "ack_requeue_true" => (true, false),
        "ack_requeue_false" => (false, false),
        "reject_requeue_true" => (true, true),
        "reject_requeue_false" => (false, true),
        "" => return Err(ApiError::BadRequest("[{key_missing,ackmode}]".into())),
        other => return Err(ApiError::BadRequest(format!("unknown ackmode '{other}'"))),
    };
    let base64_only = match b.encoding.as_str() {
        "auto" | "" => false,
        "base64" => true,
        other => return Err(ApiError::BadRequest(format!("unknown encoding '{other}'"))),
    };
    blocking(move || {
        let s = session(&api, &caller, &vhost)?;
        s.vhost()
            .find_queue(&name)
            .map_err(|_| ApiError::NotFound)?;
        let mut taken = Vec::new();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut queue = None;
        while taken.len() < count && bytes < MAX_GET_BYTES {
            let (q, got) = s.get(&name, true)?;
            queue = Some(q);
            let Some((m, left)) = got else { break };
            let body = m.message.body();
            let shown = &body[..truncate.map_or(body.len(), |t| t.min(body.len()))];
            // Whole payloads count: `truncate` shortens the answer, not what is taken (and
            // held, read back from disk for a paged queue) until the request settles them.
            bytes += body.len();
            let (payload, enc) = match std::str::from_utf8(shown) {
                Ok(t) if !base64_only => (t.to_string(), "string"),
                _ => (
                    base64::engine::general_purpose::STANDARD.encode(shown),
                    "base64",
                ),
            };
            out.push(json!({
                "payload_bytes": body.len(),
                "redelivered": m.redelivered(),
                "exchange": m.message.exchange(),
                "routing_key": m.message.routing_key(),
                "message_count": left,
                "properties": properties_json(&m.message.properties()),
                "payload": payload,
                "payload_encoding": enc,
            }));
            taken.push(m);
            if left == 0 {
                // What get-ok said is left: asking again would only count an empty get.
                break;
            }
        }
        if let Some(q) = queue {
            match (requeue, reject) {
                (true, _) => q.requeue(taken),
                (false, false) => {
                    let seqs: Vec<u64> = taken.iter().map(|m| m.seq()).collect();
                    q.ack(&seqs);
                }
                (false, true) => q.reject(taken),
            }
        }
        Ok(Json(Value::Array(out)))
    })
    .await
}
