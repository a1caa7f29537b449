//! Live traces for "where is my message" (a FerryMQ extension, named after the
//! rabbitmq_tracing plugin's `/api/traces`): a trace turns the vhost's firehose on and
//! collects the copies matching a binding pattern from a queue bound to
//! `amq.rabbitmq.trace`; the console reads them as they come with `?since=`.
//!
//! `PUT /api/traces/{vhost}/{name}` `{"pattern": "#", "max_payload_bytes": 1000}` starts one,
//! `GET /api/traces` lists them, `GET /api/traces/{vhost}/{name}?since=N` answers the events
//! after N, `DELETE` stops it (and the firehose, when no other trace of the vhost needs it).

use super::{parse_body, session, St};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::{blocking, Api};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use ferrymq_core::queue::QueueOptions;
use ferrymq_core::value::{table_to_json, FieldTable, FieldValue};
use ferrymq_core::vhost::TRACE_EXCHANGE;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};

/// Events a trace keeps for readers (the oldest go first).
const MAX_EVENTS: usize = 5_000;
/// Copies its queue holds while nobody reads (drop-head beyond).
const QUEUE_MAX_LENGTH: i64 = 10_000;
/// Copies taken from its queue per read.
const DRAIN_PER_READ: usize = 2_000;
/// Most traces at once (each is a queue and a vhost's firehose).
const MAX_TRACES: usize = 32;
/// Default and largest payload kept per event.
const DEFAULT_PAYLOAD: usize = 1_000;
const MAX_PAYLOAD: usize = 64 * 1024;

/// One running trace.
pub(crate) struct Trace {
    pattern: String,
    queue: String,
    max_payload: usize,
    /// Whether this trace turned the firehose on (it was off).
    enabled_tracing: bool,
    events: VecDeque<Value>,
    next_seq: u64,
}

/// The running traces, by (vhost, name).
#[derive(Default)]
pub(crate) struct Traces(parking_lot::Mutex<HashMap<(String, String), Trace>>);

fn trace_json(vhost: &str, name: &str, t: &Trace) -> Value {
    json!({
        "vhost": vhost, "name": name, "pattern": t.pattern, "queue": t.queue,
        "max_payload_bytes": t.max_payload, "events": t.next_seq,
    })
}

/// GET /api/traces (also per vhost).
pub(crate) async fn list(
    axum::extract::State(api): St,
    caller: Caller,
    vhost: Option<Path<String>>,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    let only = vhost.map(|Path(v)| v);
    let all = api.traces.0.lock();
    let mut out: Vec<Value> = all
        .iter()
        .filter(|((v, _), _)| only.as_deref().is_none_or(|o| o == v))
        .map(|((v, n), t)| trace_json(v, n, t))
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(Value::Array(out)))
}

/// PUT /api/traces/{vhost}/{name}.
pub(crate) async fn start(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    let b: Map<String, Value> = parse_body(&body)?;
    let pattern = match b.get("pattern") {
        None | Some(Value::Null) => "#".to_string(),
        Some(Value::String(p)) if p.len() <= 255 => p.clone(),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "pattern must be a binding key of at most 255 bytes".into(),
            ))
        }
    };
    let max_payload = match b.get("max_payload_bytes") {
        None | Some(Value::Null) => DEFAULT_PAYLOAD,
        Some(v) => v
            .as_u64()
            .map(|n| (n as usize).min(MAX_PAYLOAD))
            .ok_or_else(|| ApiError::BadRequest("max_payload_bytes must be a number".into()))?,
    };
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::BadRequest(
            "a trace name is 1 to 255 bytes".into(),
        ));
    }
    blocking(move || {
        let key = (vhost.clone(), name.clone());
        if api.traces.0.lock().contains_key(&key) {
            return Ok(StatusCode::NO_CONTENT);
        }
        if api.traces.0.lock().len() >= MAX_TRACES {
            return Err(ApiError::BadRequest(format!(
                "at most {MAX_TRACES} traces run at once"
            )));
        }
        let s = session(&api, &caller, &vhost)?;
        let mut args = FieldTable::new();
        args.insert("x-max-length", FieldValue::I64(QUEUE_MAX_LENGTH));
        let options = QueueOptions {
            auto_delete: false,
            arguments: args,
            ..QueueOptions::default()
        };
        let (q, _, _) = s.declare_queue("", options, false)?;
        if let Err(e) = s.bind_queue(&q.name, TRACE_EXCHANGE, &pattern, FieldTable::new()) {
            let _ = s.delete_queue(&q.name, false, false);
            return Err(e.into());
        }
        let v = api.broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
        let enabled_tracing = !v.tracing();
        v.set_tracing(true);
        let t = Trace {
            pattern,
            queue: q.name.clone(),
            max_payload,
            enabled_tracing,
            events: VecDeque::new(),
            next_seq: 0,
        };
        api.traces.0.lock().insert(key, t);
        Ok(StatusCode::CREATED)
    })
    .await
}

/// Takes what the trace's queue holds into its events.
fn drain(api: &Api, caller: &Caller, vhost: &str, name: &str) -> ApiResult<()> {
    let (queue, max_payload) = {
        let all = api.traces.0.lock();
        let t = all
            .get(&(vhost.to_string(), name.to_string()))
            .ok_or(ApiError::NotFound)?;
        (t.queue.clone(), t.max_payload)
    };
    let s = session(api, caller, vhost)?;
    let mut taken = Vec::new();
    for _ in 0..DRAIN_PER_READ {
        let Ok((_, Some((m, _)))) = s.get(&queue, false) else {
            break;
        };
        taken.push(m.message);
    }
    let at = ferrymq_core::expiry::wall_ms();
    let mut all = api.traces.0.lock();
    let Some(t) = all.get_mut(&(vhost.to_string(), name.to_string())) else {
        return Ok(());
    };
    for m in taken {
        let body = match m.large_body() {
            Some(b) => &b[..],
            None => m.body(),
        };
        let cut = &body[..body.len().min(max_payload)];
        let (payload, encoding) = match std::str::from_utf8(cut) {
            Ok(text) => (Value::from(text), "string"),
            Err(_) => (
                Value::from(base64::engine::general_purpose::STANDARD.encode(cut)),
                "base64",
            ),
        };
        let headers = m.headers().map(|h| table_to_json(&h)).unwrap_or_default();
        let kind = m.routing_key().split('.').next().unwrap_or("").to_string();
        t.events.push_back(json!({
            "seq": t.next_seq,
            "timestamp": at,
            "kind": kind,
            "routing_key": m.routing_key(),
            "headers": Value::Object(headers),
            "payload": payload,
            "payload_encoding": encoding,
            "payload_bytes": m.body_size(),
        }));
        t.next_seq += 1;
        if t.events.len() > MAX_EVENTS {
            t.events.pop_front();
        }
    }
    Ok(())
}

/// GET /api/traces/{vhost}/{name}?since=N: the trace and its events numbered N and later.
pub(crate) async fn read(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    let since: u64 = match q.get("since") {
        None => 0,
        Some(s) => s
            .parse()
            .map_err(|_| ApiError::BadRequest("since must be a number".into()))?,
    };
    blocking(move || {
        drain(&api, &caller, &vhost, &name)?;
        let all = api.traces.0.lock();
        let t = all
            .get(&(vhost.clone(), name.clone()))
            .ok_or(ApiError::NotFound)?;
        let events: Vec<Value> = t
            .events
            .iter()
            .filter(|e| e["seq"].as_u64().is_some_and(|s| s >= since))
            .cloned()
            .collect();
        let mut out = trace_json(&vhost, &name, t);
        out["next"] = json!(t.next_seq);
        out["items"] = Value::Array(events);
        Ok(Json(out))
    })
    .await
}

/// DELETE /api/traces/{vhost}/{name}.
pub(crate) async fn stop(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    blocking(move || {
        let t = api
            .traces
            .0
            .lock()
            .remove(&(vhost.clone(), name.clone()))
            .ok_or(ApiError::NotFound)?;
        if let Ok(s) = session(&api, &caller, &vhost) {
            let _ = s.delete_queue(&t.queue, false, false);
        }
        // The firehose goes off with the last trace of the vhost, if a trace turned it on;
        // while others run, one of them inherits the duty.
        let mut all = api.traces.0.lock();
        let heir = all
            .iter_mut()
            .find(|((v, _), _)| *v == vhost)
            .map(|(_, o)| o);
        match heir {
            Some(o) => o.enabled_tracing |= t.enabled_tracing,
            None if t.enabled_tracing => {
                if let Some(v) = api.broker.vhost(&vhost) {
                    v.set_tracing(false);
                }
            }
            None => {}
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
