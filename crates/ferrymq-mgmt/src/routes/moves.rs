//! Moving a queue's messages to another queue (`POST /api/queues/{vhost}/{name}/move`), a
//! FerryMQ extension the web console uses (RabbitMQ's console needs the shovel plugin for
//! it).
//!
//! Messages are taken from the source as a get with manual ack would take them, published
//! through the default exchange to the destination and acknowledged on the source only once
//! that publish is saved (on disk, for a persistent message to a durable queue). A crash in
//! between leaves a copy in both queues, never in neither; batches go in queue order.

use super::{parse_body, required_str, session, St};
use crate::auth::Caller;
use crate::blocking;
use crate::error::{ApiError, ApiResult};
use axum::extract::Path;
use axum::Json;
use ferrymq_core::access::{Perm, Resource};
use ferrymq_core::stats::ConnectionStats;
use ferrymq_core::QueuedMessage;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Most messages one move request takes (also the default: all ready messages up to this).
pub(crate) const MAX_MOVE_COUNT: usize = 100_000;
/// Most messages taken before the batch is published, saved and acknowledged.
const BATCH_MESSAGES: usize = 500;
/// Most payload bytes held in one batch (the messages stay unacknowledged until it is saved).
const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// The `count` field: absent or null is every ready message (up to [`MAX_MOVE_COUNT`]),
/// otherwise a positive integer, larger ones capped.
fn count(m: &Map<String, Value>) -> ApiResult<Option<usize>> {
    let bad = || ApiError::BadRequest("count must be a positive integer".into());
    let n = match m.get("count") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(bad)?,
        Some(Value::String(s)) => s.trim().parse::<u64>().map_err(|_| bad())?,
        Some(_) => return Err(bad()),
    };
    if n == 0 {
        return Err(bad());
    }
    Ok(Some(
        usize::try_from(n).unwrap_or(usize::MAX).min(MAX_MOVE_COUNT),
    ))
}

/// POST /api/queues/{vhost}/{name}/move: `{"destination": "queue", "count": N}`, answered
/// with `{"moved": n, "complete": bool}` (`false`: the destination stopped taking them). Needs
/// read on the source, write on the default exchange and on the destination.
pub(crate) async fn move_messages(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: bytes::Bytes,
) -> ApiResult<Json<Value>> {
    let b: Map<String, Value> = parse_body(&body)?;
    let destination = required_str(&b, "destination")?;
    let wanted = count(&b)?;
    if destination == name {
        return Err(ApiError::BadRequest(
            "destination must be another queue than the source".into(),
        ));
    }
    blocking(move || {
        let s = session(&api, &caller, &vhost)?;
        // Every permission up front, before the queues are looked up (a caller without them
        // must not learn which queues exist), and so a refusal leaves nothing taken.
        s.check(Perm::Read, Resource::Queue, &name)?;
        s.check(Perm::Write, Resource::Exchange, "")?;
        s.check(Perm::Write, Resource::Queue, &destination)?;
        let source = s
            .vhost()
            .find_queue(&name)
            .map_err(|_| ApiError::NotFound)?;
        s.vhost()
            .find_queue(&destination)
            .map_err(|_| ApiError::NotFound)?;
        // What is ready now, so that a busy publisher cannot keep one move going forever.
        let limit = wanted
            .unwrap_or(MAX_MOVE_COUNT)
            .min(source.counts().messages);
        let mut moved = 0usize;
        while moved < limit {
            let (q, batch) = take_batch(&s, &name, limit - moved)?;
            if batch.is_empty() {
                break;
            }
            let (done, rest) = publish_batch(&api, &s, &destination, &batch);
            let seqs: Vec<u64> = batch[..done].iter().map(QueuedMessage::seq).collect();
            q.ack(&seqs);
            moved += done;
            // Counted as the API's publishes are (the overview's publish rate shows moves).
            ConnectionStats::bump(&s.info().meta.stats.publish, done as u64);
            if done < batch.len() {
                // The destination stopped taking them (deleted, full with reject-publish, a
                // failed write): the rest go back to the source's head, in order.
                q.requeue(batch.into_iter().skip(done).collect());
                return match rest {
                    Some(e) if moved == 0 => Err(e),
                    _ => Ok(Json(json!({"moved": moved, "complete": false}))),
                };
            }
        }
        Ok(Json(json!({"moved": moved, "complete": true})))
    })
    .await
}

/// Takes up to `max` ready messages (and at most [`BATCH_BYTES`] of payload) from the head
/// of `name`, unacknowledged.
fn take_batch(
    s: &ferrymq_core::Session,
    name: &str,
    max: usize,
) -> ApiResult<(Arc<ferrymq_core::Queue>, Vec<QueuedMessage>)> {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    let (q, first) = s.get(name, true)?;
    let mut next = first;
    while let Some((m, left)) = next {
        bytes += m.message.body_size();
        batch.push(m);
        if left == 0 || batch.len() >= max.min(BATCH_MESSAGES) || bytes >= BATCH_BYTES {
            break;
        }
        // Through the session, as the first: each one is a get the firehose traces (its
        // copy's publish is traced too).
        match s.get(name, true) {
            Ok((same, n)) if Arc::ptr_eq(&same, &q) => next = n,
            // Deleted (and maybe declared again) meanwhile: this batch ends here.
            Ok((other, n)) => {
                if let Some((m, _)) = n {
                    other.requeue(vec![m]);
                }
                break;
            }
            Err(_) => break,
        }
    }
    Ok((q, batch))
}

/// Publishes `batch` in order to `destination` and waits until it is saved. Returns how
/// many of them (from the front) are safely in the destination, and why it stopped early.
fn publish_batch(
    api: &crate::Api,
    s: &ferrymq_core::Session,
    destination: &str,
    batch: &[QueuedMessage],
) -> (usize, Option<ApiError>) {
    let mut pending = Vec::with_capacity(batch.len());
    let mut stop = None;
    for m in batch {
        let copy = match m
            .message
            .republished("", destination, &m.message.properties())
        {
            // Only to the destination: a `CC` header kept in the copy's properties must not
            // put it into the queues it names again (duplicates there, and a way past the
            // destination's write permission).
            Ok(c) => c.without_extra_keys(),
            Err(e) => {
                stop = Some(ApiError::Internal(e.to_string()));
                break;
            }
        };
        match s.publish("", Arc::new(copy)) {
            Ok(out) if out.routed > 0 && out.refused == 0 => pending.push(out.pending),
            Ok(_) => {
                stop = Some(ApiError::BadRequest(format!(
                    "queue '{destination}' did not take the message"
                )));
                break;
            }
            Err(e) => {
                stop = Some(e.into());
                break;
            }
        }
    }
    // A message counts as moved once its copy is saved; the first failed save ends the
    // batch there (later copies may be saved too: duplicates, never losses).
    let mut saved = 0;
    for p in &pending {
        if let Err(e) = api.broker.wait_saved(p) {
            return (saved, Some(e.into()));
        }
        saved += 1;
    }
    (saved, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn counts_are_positive_and_capped() {
        assert_eq!(count(&body(json!({}))).ok(), Some(None));
        assert_eq!(count(&body(json!({"count": null}))).ok(), Some(None));
        assert_eq!(count(&body(json!({"count": 5}))).ok(), Some(Some(5)));
        assert_eq!(count(&body(json!({"count": "7"}))).ok(), Some(Some(7)));
        assert_eq!(
            count(&body(json!({"count": u64::MAX}))).ok(),
            Some(Some(MAX_MOVE_COUNT))
        );
        for bad in [
            json!({"count": 0}),
            json!({"count": -1}),
            json!({"count": 1.5}),
            json!({"count": "x"}),
            json!({"count": [1]}),
            json!({"count": 1e300}),
        ] {
            assert!(count(&body(bad.clone())).is_err(), "{bad}");
        }
    }
}
