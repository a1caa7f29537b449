//! Dead-lettering: the copy of a message a queue republishes to its dead-letter exchange,
//! with the `x-death` history exactly as RabbitMQ writes it, and the cycle rule that keeps
//! such copies from circulating for ever.

use crate::message::Message;
use crate::value::{FieldTable, FieldValue};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Most distinct `x-death` entries (queue and reason) a message may gather: each hop copies
/// the whole history, so a chain of dead-lettering queues would otherwise cost time and
/// memory quadratic in its length. A message about to exceed it is dropped and logged.
pub const MAX_DEATHS: usize = 256;

/// Why a message left its queue for the dead-letter exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// basic.reject / basic.nack with requeue = false.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// The queue was over a length limit.
    Maxlen,
    /// It came back more often than the queue's delivery limit.
    DeliveryLimit,
}

impl DeathReason {
    /// The reason as written in `x-death`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }

    /// The code a held mark stores the reason as (see docs/storage.md).
    pub fn code(self) -> u8 {
        match self {
            DeathReason::Rejected => 0,
            DeathReason::Expired => 1,
            DeathReason::Maxlen => 2,
            DeathReason::DeliveryLimit => 3,
        }
    }

    /// The reason a held mark's code stands for; unknown codes read as `rejected`.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => DeathReason::Expired,
            2 => DeathReason::Maxlen,
            3 => DeathReason::DeliveryLimit,
            _ => DeathReason::Rejected,
        }
    }
}

/// A message leaving a queue to be dead-lettered.
pub struct DeadLetter {
    /// The message as it sat in the queue.
    pub message: Arc<Message>,
    /// Why.
    pub reason: DeathReason,
    /// It left a quorum queue, whose delivery count (`x-delivery-count`) is the queue's
    /// bookkeeping and does not travel with the dead-lettered copy.
    pub counted: bool,
}

fn text(t: &FieldTable, k: &str) -> Option<String> {
    t.get(k).and_then(FieldValue::as_str).map(str::to_string)
}

/// Builds the dead-lettered copy of `msg` leaving `queue` for `exchange`: `x-death` gains
/// (or counts up) the entry for this queue and reason and moves it to the front,
/// `x-first-death-*` are set once, and a per-message `expiration` moves into the entry as
/// `original-expiration` so the copy does not expire again. Returns `None` if the message
/// has been through [`MAX_DEATHS`] queues already, or cannot be rebuilt (its property block
/// was validated on arrival, so that does not happen).
pub fn dead_letter_copy(
    letter: &DeadLetter,
    queue: &str,
    exchange: &str,
    routing_key: Option<&str>,
) -> Option<Message> {
    dead_letter_copy_at(letter, queue, exchange, routing_key, now_secs())
}

/// The time a new `x-death` entry records: seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// [`dead_letter_copy`] with the `x-death` entry's `time` given (seconds since the Unix
/// epoch): an at-least-once letter's copy is rebuilt from its record at each attempt, and
/// must carry the same `x-death` each time (RabbitMQ counts one death, at one time).
pub fn dead_letter_copy_at(
    letter: &DeadLetter,
    queue: &str,
    exchange: &str,
    routing_key: Option<&str>,
    time: u64,
) -> Option<Message> {
    let (msg, reason) = (&*letter.message, letter.reason);
    let mut props = msg.properties();
    let mut headers = props.headers.take().unwrap_or_default();
    if letter.counted {
        headers.remove(crate::queue::DELIVERY_COUNT_HEADER);
    }
    let mut deaths: Vec<FieldValue> = match headers.get("x-death") {
        Some(FieldValue::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let same = |d: &FieldValue| match d {
        FieldValue::Table(t) => {
            text(t, "queue").as_deref() == Some(queue)
                && text(t, "reason").as_deref() == Some(reason.as_str())
        }
        _ => false,
    };
    let found = deaths.iter().position(same);
    // Counted whether or not this hop adds an entry: a publisher can send a forged history
    // of any length (up to the frame size) that already names this queue.
    if deaths.len() + usize::from(found.is_none()) > MAX_DEATHS {
        tracing::warn!(
            queue,
            "message dropped: dead-lettered through {MAX_DEATHS} different queues already"
        );
        return None;
    }
    let entry = match found {
        Some(i) => {
            let mut e = deaths.remove(i);
            if let FieldValue::Table(t) = &mut e {
                let n = t.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
                t.insert("count", FieldValue::I64(n.saturating_add(1)));
            }
            e
        }
        None => {
            let mut t = FieldTable::new();
            t.insert("count", FieldValue::I64(1));
            t.insert("reason", FieldValue::string(reason.as_str()));
            t.insert("queue", FieldValue::string(queue));
            t.insert("time", FieldValue::Timestamp(time));
            t.insert("exchange", FieldValue::string(msg.exchange()));
            // The keys it was routed with: its own and those its sender chose in `CC`
            // (`BCC` was removed on arrival).
            let mut keys = vec![FieldValue::string(msg.routing_key())];
            if let Some(FieldValue::Array(cc)) = headers.get("CC") {
                keys.extend(cc.iter().filter(|k| k.as_str().is_some()).cloned());
            }
            t.insert("routing-keys", FieldValue::Array(keys));
            if let Some(exp) = &props.expiration {
                t.insert("original-expiration", FieldValue::string(exp.clone()));
            }
            FieldValue::Table(t)
        }
    };
    deaths.insert(0, entry);
    headers.insert("x-death", FieldValue::Array(deaths));
    for (k, v) in [
        ("x-first-death-reason", reason.as_str()),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", msg.exchange()),
    ] {
        if headers.get(k).is_none() {
            headers.insert(k, FieldValue::string(v));
        }
    }
    if routing_key.is_some() {
        // A dead-letter routing key replaces every key the message had, the sender's too.
        headers.remove("CC");
    }
    props.headers = Some(headers);
    props.expiration = None;
    let key = routing_key.unwrap_or(msg.routing_key());
    msg.republished(exchange, key, &props).ok()
}

/// The queues a dead-lettered message must not be delivered to, because delivering it there
/// would close a cycle with no rejection in it (RabbitMQ drops it for those queues). The
/// history is read most recent first: a rejection means a consumer is in the loop, so the
/// queues before it may take the message again. Computed once per copy, not per target.
pub fn cycle_queues(msg: &Message) -> HashSet<String> {
    let mut out = HashSet::new();
    let Some(headers) = msg.headers() else {
        return out;
    };
    let Some(FieldValue::Array(deaths)) = headers.get("x-death") else {
        return out;
    };
    for d in deaths {
        if let FieldValue::Table(t) = d {
            if text(t, "reason").as_deref() == Some("rejected") {
                break;
            }
            if let Some(q) = text(t, "queue") {
                out.insert(q);
            }
        }
    }
    out
}

/// Whether delivering a dead-lettered message to `queue` would close a cycle with no
/// rejection in it (see [`cycle_queues`]).
pub fn is_cycle(msg: &Message, queue: &str) -> bool {
    cycle_queues(msg).contains(queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(
        m: &Message,
        queue: &str,
        reason: DeathReason,
        exchange: &str,
        rk: Option<&str>,
    ) -> Option<Message> {
        let letter = DeadLetter {
            message: Arc::new(
                m.republished(m.exchange(), m.routing_key(), &m.properties())
                    .unwrap(),
            ),
            reason,
            counted: false,
        };
        dead_letter_copy(&letter, queue, exchange, rk)
    }
    use crate::message::Properties;
    use bytes::Bytes;

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match m.headers().and_then(|h| h.get("x-death").cloned()) {
            Some(FieldValue::Array(a)) => a
                .into_iter()
                .filter_map(|v| match v {
                    FieldValue::Table(t) => Some(t),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        }
    }

    #[test]
    fn history_counts_up_moves_to_front_and_keeps_first_death() {
        let props = Properties {
            expiration: Some("60000".into()),
            ..Default::default()
        };
        let m =
            Message::from_properties("orders", "new", &props, Bytes::from_static(b"x")).unwrap();
        let a = copy(&m, "work", DeathReason::Rejected, "dlx", None).unwrap();
        assert_eq!(a.exchange(), "dlx");
        assert_eq!(a.routing_key(), "new");
        assert_eq!(a.properties().expiration, None);
        let d = deaths(&a);
        assert_eq!(d.len(), 1);
        assert_eq!(text(&d[0], "original-expiration").as_deref(), Some("60000"));
        assert_eq!(text(&d[0], "exchange").as_deref(), Some("orders"));
        let b = copy(&a, "wait", DeathReason::Expired, "retry", Some("new")).unwrap();
        let c = copy(&b, "work", DeathReason::Rejected, "dlx", None).unwrap();
        let d = deaths(&c);
        assert_eq!(d.len(), 2);
        assert_eq!(text(&d[0], "queue").as_deref(), Some("work"));
        assert_eq!(d[0].get("count").and_then(FieldValue::as_i64), Some(2));
        assert_eq!(text(&d[1], "reason").as_deref(), Some("expired"));
        let h = c.headers().unwrap();
        assert_eq!(text(&h, "x-first-death-queue").as_deref(), Some("work"));
        assert_eq!(
            text(&h, "x-first-death-reason").as_deref(),
            Some("rejected")
        );
        assert_eq!(
            text(&h, "x-first-death-exchange").as_deref(),
            Some("orders")
        );
        // Through a rejection, going back to "work" or "wait" is not a cycle.
        assert!(!is_cycle(&c, "wait"));
        // Expired in "wait" and again in "a": back to "wait" with no consumer involved is.
        let e = copy(&b, "a", DeathReason::Expired, "x", None).unwrap();
        assert!(is_cycle(&e, "a"));
        assert!(!is_cycle(&e, "elsewhere"));
    }

    #[test]
    fn a_forged_history_longer_than_the_cut_is_dropped_even_when_it_names_the_queue() {
        let entry = |q: &str| {
            let mut t = FieldTable::new();
            t.insert("queue", FieldValue::string(q));
            t.insert("reason", FieldValue::string("rejected"));
            t.insert("count", FieldValue::I64(1));
            FieldValue::Table(t)
        };
        // A history naming "work" first, then `others` more queues.
        let with_history = |others: usize| {
            let mut deaths = vec![entry("work")];
            deaths.extend((0..others).map(|i| entry(&format!("q{i}"))));
            let mut headers = FieldTable::new();
            headers.insert("x-death", FieldValue::Array(deaths));
            let props = Properties {
                headers: Some(headers),
                ..Default::default()
            };
            Message::from_properties("x", "k", &props, Bytes::from_static(b"x")).unwrap()
        };
        let m = with_history(MAX_DEATHS);
        assert!(copy(&m, "work", DeathReason::Rejected, "dlx", None).is_none());
        // At the cut exactly, counting up an existing entry still passes.
        let m = with_history(MAX_DEATHS - 1);
        assert!(copy(&m, "work", DeathReason::Rejected, "dlx", None).is_some());
    }
}
