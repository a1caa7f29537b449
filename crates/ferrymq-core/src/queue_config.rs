//! A queue's feature settings, from its `x-` declaration arguments and the policy that applies
//! to it, validated as RabbitMQ validates them.

use crate::error::{CoreError, CoreResult};
use crate::value::{FieldTable, FieldValue};
use serde_json::{Map, Value};

/// What a queue does when a publish would take it over its length limits (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (dead-letter) the oldest messages to make room.
    #[default]
    DropHead,
    /// Refuse the new message (basic.nack under confirms).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

impl Overflow {
    fn parse(s: &str) -> Option<Overflow> {
        match s {
            "drop-head" => Some(Overflow::DropHead),
            "reject-publish" => Some(Overflow::RejectPublish),
            "reject-publish-dlx" => Some(Overflow::RejectPublishDlx),
            _ => None,
        }
    }
}

/// The kinds of queue a declaration can ask for (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// RabbitMQ's classic queue: FIFO (per priority level), messages acked individually.
    #[default]
    Classic,
    /// RabbitMQ's quorum queue, on one node: durable only, every message kept on disk,
    /// deliveries counted (`x-delivery-count`), an optional delivery limit; no priorities,
    /// no exclusive or auto-delete queues, no global prefetch for its consumers.
    Quorum,
}

impl QueueType {
    /// RabbitMQ's module name for the type, as its error texts give it.
    pub fn rabbit_name(&self) -> &'static str {
        match self {
            QueueType::Classic => "rabbit_classic_queue",
            QueueType::Quorum => "rabbit_quorum_queue",
        }
    }

    /// Arguments some queue type understands but this one refuses (RabbitMQ 3.10 refuses
    /// them with 406 rather than ignore them, so a typo in the type cannot go unnoticed).
    fn refuses(&self, arg: &str) -> bool {
        const QUORUM_ONLY: &[&str] = &[
            "x-delivery-limit",
            "x-dead-letter-strategy",
            "x-quorum-initial-group-size",
            "x-max-in-memory-length",
            "x-max-in-memory-bytes",
        ];
        const CLASSIC_ONLY: &[&str] = &[
            "x-max-priority",
            "x-queue-mode",
            "x-queue-version",
            "x-queue-master-locator",
        ];
        const STREAM_ONLY: &[&str] = &[
            "x-max-age",
            "x-stream-max-segment-size-bytes",
            "x-initial-cluster-size",
        ];
        STREAM_ONLY.contains(&arg)
            || match self {
                QueueType::Classic => QUORUM_ONLY.contains(&arg),
                QueueType::Quorum => CLASSIC_ONLY.contains(&arg),
            }
    }
}

/// How a quorum queue dead-letters (`x-dead-letter-strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeadLetterStrategy {
    /// Republish and forget (what classic queues do).
    #[default]
    AtMostOnce,
    /// Keep the message until its dead-letter copy is safely in every target queue. Only
    /// in effect with `x-overflow: reject-publish`, as in RabbitMQ.
    AtLeastOnce,
}

/// Message deduplication settings (`x-message-deduplication`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    /// How many recent keys are remembered (`x-cache-size`).
    pub cache_size: usize,
    /// How long a key is remembered, in ms (`x-cache-ttl`); forever when absent.
    pub cache_ttl: Option<u64>,
}

/// Largest `x-message-ttl` RabbitMQ accepts (ms): ten years of 365 days.
pub const MAX_MESSAGE_TTL: u64 = 315_360_000_000;

/// Default number of deduplication keys remembered when `x-cache-size` is not given.
pub const DEFAULT_DEDUP_CACHE: usize = 100_000;

/// The effective feature settings of a queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueConfig {
    /// Classic or quorum (`x-queue-type`); fixed at declaration.
    pub queue_type: QueueType,
    /// How dead letters leave a quorum queue (`x-dead-letter-strategy`), in effect.
    pub dead_letter_strategy: DeadLetterStrategy,
    /// The strategy the declaration asked for, if it named one: a policy's `overflow` may
    /// make an at-least-once request take effect after all.
    pub dead_letter_strategy_declared: Option<DeadLetterStrategy>,
    /// Per-queue message TTL in ms (`x-message-ttl`).
    pub message_ttl: Option<u64>,
    /// Queue expiry after this many ms unused (`x-expires`).
    pub expires: Option<u64>,
    /// Most ready messages (`x-max-length`).
    pub max_length: Option<u64>,
    /// Most ready body bytes (`x-max-length-bytes`).
    pub max_length_bytes: Option<u64>,
    /// What to do beyond the limits.
    pub overflow: Overflow,
    /// Where dead letters go (`x-dead-letter-exchange`).
    pub dead_letter_exchange: Option<String>,
    /// Routing key for dead letters, instead of their own (`x-dead-letter-routing-key`).
    pub dead_letter_routing_key: Option<String>,
    /// Priority levels above 0 (`x-max-priority`); fixed at declaration.
    pub max_priority: Option<u8>,
    /// Deliveries a message may come back from before it is dead-lettered
    /// (`x-delivery-limit`).
    pub delivery_limit: Option<u64>,
    /// Only one consumer receives at a time (`x-single-active-consumer`); fixed at declaration.
    pub single_active_consumer: bool,
    /// Duplicate suppression (`x-message-deduplication`).
    pub dedup: Option<DedupConfig>,
    /// How long a consumer may hold a delivery unacknowledged before its channel is closed,
    /// in ms (`x-consumer-timeout`; the broker's `consumer_timeout` otherwise).
    pub consumer_timeout: Option<u64>,
}

fn invalid(queue: &str, vhost: &str, arg: &str, reason: String) -> CoreError {
    CoreError::InvalidArgument(format!(
        "invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}': {reason}"
    ))
}

/// Checks an integer argument against a range, with RabbitMQ's reasons.
fn check_int(v: &FieldValue, min: i64, max: i64) -> Result<u64, String> {
    match v.as_i64() {
        None => Err(format!(
            "\"expected integer, got {}\"",
            v.rabbit_type_name()
        )),
        Some(n) if n < 0 => Err(format!("{{value_negative,{n}}}")),
        Some(n) if n < min => Err(format!("{{value_zero,{n}}}")),
        Some(n) if n > max => Err(format!("{{max_value_exceeded,{n}}}")),
        Some(n) => Ok(n as u64),
    }
}

fn check_bool(v: &FieldValue) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("{{unacceptable_type,{}}}", v.rabbit_type_name()))
}

impl QueueConfig {
    /// Validates declaration arguments and builds the settings they ask for. Errors are 406
    /// PRECONDITION_FAILED naming the argument. Unknown `x-` arguments are ignored, as
    /// RabbitMQ ignores them.
    pub fn from_args(queue: &str, vhost: &str, args: &FieldTable) -> CoreResult<QueueConfig> {
        QueueConfig::parse(queue, vhost, args, true)
    }

    /// [`QueueConfig::from_args`] for a queue restored from the saved definitions. Builds
    /// before queue types were checked saved what they accepted: a classic queue with
    /// `x-delivery-limit` (it worked on any queue), `x-queue-type: stream` or a quorum
    /// queue with `x-max-priority` (both served as classic queues), an `x-queue-mode` or
    /// `x-dead-letter-strategy` of any value (ignored). Refusing them now would keep the
    /// broker from starting on its own data directory (and leave policies unapplied to the
    /// queue), so the queue works as it did: an unsupported type as classic, arguments its
    /// type refuses still applied, values not understood ignored.
    pub fn from_stored_args(
        queue: &str,
        vhost: &str,
        args: &FieldTable,
    ) -> CoreResult<QueueConfig> {
        QueueConfig::parse(queue, vhost, args, true)
            .or_else(|_| QueueConfig::parse(queue, vhost, args, false))
    }

    fn parse(queue: &str, vhost: &str, args: &FieldTable, strict: bool) -> CoreResult<QueueConfig> {
        let mut c = QueueConfig::default();
        let mut dedup = false;
        let (mut cache_size, mut cache_ttl) = (None, None);
        if let Some(v) = args.get("x-queue-type") {
            let bad = |reason: String| invalid(queue, vhost, "x-queue-type", reason);
            c.queue_type = match v.as_str() {
                None => {
                    return Err(bad(format!(
                        "{{unacceptable_type,{}}}",
                        v.rabbit_type_name()
                    )))
                }
                Some("classic") => QueueType::Classic,
                Some("quorum") => QueueType::Quorum,
                Some(_) if !strict => QueueType::Classic,
                Some("stream") => {
                    return Err(bad(
                        "\"stream queues are not supported by FerryMQ yet\"".into()
                    ))
                }
                Some(other) => return Err(bad(format!("\"unsupported queue type '{other}'\""))),
            };
        }
        for (k, v) in args.iter() {
            let bad = |reason: String| invalid(queue, vhost, k, reason);
            if strict && c.queue_type.refuses(k) {
                return Err(CoreError::InvalidArgument(format!(
                    "invalid arg '{k}' for queue '{queue}' in vhost '{vhost}' of queue type {}",
                    c.queue_type.rabbit_name()
                )));
            }
            // String arguments of another type get RabbitMQ's other wording.
            let check_str = |v: &FieldValue| -> CoreResult<String> {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    CoreError::InvalidArgument(format!(
                        "invalid type '{}' for arg '{k}' in queue '{queue}' in vhost '{vhost}'",
                        v.rabbit_type_name()
                    ))
                })
            };
            match k.as_str() {
                "x-message-ttl" => {
                    // RabbitMQ's bound is ten years (Celery's native delayed delivery
                    // declares TTLs up to 2^27 s, beyond u32 milliseconds).
                    let ttl = check_int(v, 0, i64::MAX).map_err(bad)?;
                    if ttl > MAX_MESSAGE_TTL {
                        return Err(bad(format!("{{value_too_large,{ttl}}}")));
                    }
                    c.message_ttl = Some(ttl)
                }
                "x-expires" => c.expires = Some(check_int(v, 1, u32::MAX as i64).map_err(bad)?),
                "x-max-length" => c.max_length = Some(check_int(v, 0, i64::MAX).map_err(bad)?),
                "x-max-length-bytes" => {
                    c.max_length_bytes = Some(check_int(v, 0, i64::MAX).map_err(bad)?)
                }
                "x-max-priority" => c.max_priority = Some(check_int(v, 0, 255).map_err(bad)? as u8),
                // RabbitMQ takes any integer; a negative one is no limit.
                "x-delivery-limit" => match v.as_i64() {
                    Some(n) => c.delivery_limit = u64::try_from(n).ok(),
                    None => {
                        return Err(bad(format!(
                            "\"expected integer, got {}\"",
                            v.rabbit_type_name()
                        )))
                    }
                },
                "x-dead-letter-strategy" => {
                    c.dead_letter_strategy = match v.as_str() {
                        Some("at-most-once") => {
                            c.dead_letter_strategy_declared = Some(DeadLetterStrategy::AtMostOnce);
                            DeadLetterStrategy::AtMostOnce
                        }
                        Some("at-least-once") => {
                            c.dead_letter_strategy_declared = Some(DeadLetterStrategy::AtLeastOnce);
                            DeadLetterStrategy::AtLeastOnce
                        }
                        _ if !strict => DeadLetterStrategy::AtMostOnce,
                        Some(_) => return Err(bad("invalid_dlx_strategy".into())),
                        None => return Err(check_str(v).unwrap_err()),
                    }
                }
                "x-queue-mode" => match v.as_str() {
                    Some("default" | "lazy") => {}
                    _ if !strict => {}
                    Some(other) => {
                        return Err(bad(format!("\"unsupported queue mode '{other}'\"")))
                    }
                    None => {
                        return Err(bad(format!(
                            "{{unacceptable_type,{}}}",
                            v.rabbit_type_name()
                        )))
                    }
                },
                "x-overflow" => {
                    c.overflow = Overflow::parse(&check_str(v)?)
                        .ok_or_else(|| bad("invalid_overflow".into()))?;
                }
                "x-dead-letter-exchange" => c.dead_letter_exchange = Some(check_str(v)?),
                "x-dead-letter-routing-key" => c.dead_letter_routing_key = Some(check_str(v)?),
                "x-single-active-consumer" => {
                    c.single_active_consumer = check_bool(v).map_err(bad)?
                }
                "x-message-deduplication" => dedup = check_bool(v).map_err(bad)?,
                "x-cache-size" => cache_size = Some(check_int(v, 1, i64::MAX).map_err(bad)?),
                "x-cache-ttl" => cache_ttl = Some(check_int(v, 0, i64::MAX).map_err(bad)?),
                "x-consumer-timeout" => {
                    c.consumer_timeout = Some(check_int(v, 1, u32::MAX as i64).map_err(bad)?)
                }
                _ => {}
            }
        }
        if c.dead_letter_routing_key.is_some() && c.dead_letter_exchange.is_none() {
            return Err(invalid(
                queue,
                vhost,
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".into(),
            ));
        }
        if c.dead_letter_strategy == DeadLetterStrategy::AtLeastOnce
            && c.overflow != Overflow::RejectPublish
        {
            // RabbitMQ falls back to at-most-once (with a warning in its log) rather than
            // refuse: drop-head cannot wait for the dead-letter target.
            c.dead_letter_strategy = DeadLetterStrategy::AtMostOnce;
        }
        if dedup {
            c.dedup = Some(DedupConfig {
                cache_size: cache_size.map_or(DEFAULT_DEDUP_CACHE, |n| n as usize),
                cache_ttl,
            });
        }
        Ok(c)
    }

    /// Layers a policy definition under the declared settings, as RabbitMQ resolves them:
    /// for limits and TTLs the smaller value wins; for the rest the declaration wins.
    pub fn with_policy(mut self, def: Option<&Map<String, Value>>) -> QueueConfig {
        let Some(def) = def else { return self };
        let num = |k: &str| def.get(k).and_then(Value::as_u64);
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.message_ttl = min(self.message_ttl, num("message-ttl"));
        self.expires = min(self.expires, num("expires").filter(|n| *n > 0));
        self.max_length = min(self.max_length, num("max-length"));
        self.max_length_bytes = min(self.max_length_bytes, num("max-length-bytes"));
        if self.queue_type == QueueType::Quorum {
            self.delivery_limit = min(self.delivery_limit, num("delivery-limit"));
        }
        self.consumer_timeout = min(
            self.consumer_timeout,
            num("consumer-timeout").filter(|n| *n > 0),
        );
        let text = |k: &str| def.get(k).and_then(Value::as_str).map(str::to_string);
        if self.dead_letter_exchange.is_none() {
            self.dead_letter_exchange = text("dead-letter-exchange");
            if self.dead_letter_routing_key.is_none() {
                self.dead_letter_routing_key = text("dead-letter-routing-key");
            }
        }
        if let Some(o) = text("overflow").and_then(|s| Overflow::parse(&s)) {
            if self.overflow == Overflow::DropHead {
                self.overflow = o;
            }
        }
        if self.queue_type == QueueType::Quorum {
            // The declared strategy wins over the policy's, as in RabbitMQ; either takes
            // effect only with `reject-publish`, wherever that came from.
            let wanted = self.dead_letter_strategy_declared.or_else(|| {
                match text("dead-letter-strategy").as_deref() {
                    Some("at-least-once") => Some(DeadLetterStrategy::AtLeastOnce),
                    _ => None,
                }
            });
            if wanted == Some(DeadLetterStrategy::AtLeastOnce) {
                self.dead_letter_strategy = match self.overflow {
                    Overflow::RejectPublish => DeadLetterStrategy::AtLeastOnce,
                    _ => DeadLetterStrategy::AtMostOnce,
                };
            }
        }
        self
    }

    /// Checks the declaration's properties against the queue type, with RabbitMQ's texts:
    /// a quorum queue is durable, not exclusive, not auto-delete, and named by the client.
    pub fn check_properties(
        &self,
        queue: &str,
        vhost: &str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        server_named: bool,
    ) -> CoreResult<()> {
        if self.queue_type != QueueType::Quorum {
            return Ok(());
        }
        if server_named {
            return Err(server_named_refused(self.queue_type));
        }
        let property = if auto_delete {
            "auto-delete"
        } else if exclusive {
            "exclusive-owner"
        } else if !durable {
            "non-durable"
        } else {
            return Ok(());
        };
        Err(CoreError::PreconditionFailed(format!(
            "invalid property '{property}' for queue '{queue}' in vhost '{vhost}'"
        )))
    }

    /// Whether a message of `bytes` body bytes still fits when `len` messages of `total`
    /// bytes are ready.
    pub fn fits(&self, len: usize, total: usize, bytes: usize) -> bool {
        self.max_length.is_none_or(|m| (len as u64) < m)
            && self
                .max_length_bytes
                .is_none_or(|m| (total + bytes) as u64 <= m)
    }

    /// Whether `len` messages of `total` bytes are over the limits.
    pub fn over(&self, len: usize, total: usize) -> bool {
        self.max_length.is_some_and(|m| len as u64 > m)
            || self.max_length_bytes.is_some_and(|m| total as u64 > m)
    }
}

/// RabbitMQ's refusal of a server-named queue of a type that needs a name.
fn server_named_refused(t: QueueType) -> CoreError {
    CoreError::PreconditionFailed(format!(
        "Cannot declare a server-named queue for type {}",
        t.rabbit_name()
    ))
}

/// Refuses a declaration without a name (the server would choose it) of a queue type that
/// needs one: checked before a name is generated.
pub fn check_server_named(args: &FieldTable) -> CoreResult<()> {
    match args.get("x-queue-type").and_then(FieldValue::as_str) {
        Some("quorum") => Err(server_named_refused(QueueType::Quorum)),
        _ => Ok(()),
    }
}

/// Checks a policy definition: known keys with values of the right type. Errors name the key.
pub fn validate_policy_definition(def: &Map<String, Value>) -> CoreResult<()> {
    for (k, v) in def {
        let ok = match k.as_str() {
            "message-ttl" | "max-length" | "max-length-bytes" | "delivery-limit" => v.is_u64(),
            "expires" | "consumer-timeout" => v.as_u64().is_some_and(|n| n > 0),
            "dead-letter-exchange" | "dead-letter-routing-key" | "alternate-exchange" => {
                v.is_string()
            }
            "overflow" => v.as_str().and_then(Overflow::parse).is_some(),
            "dead-letter-strategy" => {
                matches!(v.as_str(), Some("at-most-once" | "at-least-once"))
            }
            "queue-mode" => v.is_string(),
            _ => {
                return Err(CoreError::InvalidArgument(format!(
                    "unknown policy key '{k}'"
                )))
            }
        };
        if !ok {
            return Err(CoreError::InvalidArgument(format!(
                "invalid value {v} for policy key '{k}'"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kv: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in kv {
            t.insert(*k, v.clone());
        }
        t
    }

    #[test]
    fn bad_arguments_are_named() {
        for (k, v, want) in [
            ("x-message-ttl", FieldValue::I32(-1), "{value_negative,-1}"),
            (
                "x-message-ttl",
                FieldValue::I64(315_360_000_001),
                "{value_too_large,315360000001}",
            ),
            (
                "x-max-priority",
                FieldValue::I32(256),
                "{max_value_exceeded,256}",
            ),
            (
                "x-overflow",
                FieldValue::string("sideways"),
                "invalid_overflow",
            ),
            (
                "x-single-active-consumer",
                FieldValue::I32(1),
                "unacceptable_type",
            ),
        ] {
            let e = QueueConfig::from_args("q", "/", &args(&[(k, v)])).unwrap_err();
            assert!(matches!(e, CoreError::InvalidArgument(_)), "{e:?}");
            let t = e.to_string();
            assert!(
                t.contains(&format!("invalid arg '{k}' for queue 'q'")),
                "{t}"
            );
            assert!(t.contains(want), "{t}");
        }
        let e = QueueConfig::from_args(
            "q",
            "/",
            &args(&[("x-dead-letter-routing-key", FieldValue::string("k"))]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("routing_key_but_no_dlx_defined"));
        let e = QueueConfig::from_args(
            "q",
            "/",
            &args(&[("x-dead-letter-exchange", FieldValue::I32(1))]),
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q'"));
    }

    #[test]
    fn policy_limits_take_the_smaller_and_declared_dlx_wins() {
        let c = QueueConfig::from_args(
            "q",
            "/",
            &args(&[
                ("x-max-length", FieldValue::I32(10)),
                ("x-dead-letter-exchange", FieldValue::string("mine")),
            ]),
        )
        .unwrap();
        let def: Map<String, Value> = serde_json::from_str(
            r#"{"max-length": 5, "message-ttl": 1000, "dead-letter-exchange": "theirs"}"#,
        )
        .unwrap();
        let c = c.with_policy(Some(&def));
        assert_eq!(c.max_length, Some(5));
        assert_eq!(c.message_ttl, Some(1000));
        assert_eq!(c.dead_letter_exchange.as_deref(), Some("mine"));
        assert!(validate_policy_definition(&def).is_ok());
        let bad: Map<String, Value> = serde_json::from_str(r#"{"max-length": "x"}"#).unwrap();
        assert!(validate_policy_definition(&bad)
            .unwrap_err()
            .to_string()
            .contains("max-length"));
    }

    #[test]
    fn at_least_once_needs_reject_publish_from_the_arguments_or_a_policy() {
        let quorum = |extra: &[(&str, FieldValue)]| {
            let mut a = vec![("x-queue-type", FieldValue::string("quorum"))];
            a.extend(extra.iter().cloned());
            QueueConfig::from_args("q", "/", &args(&a)).unwrap()
        };
        let alo = (
            "x-dead-letter-strategy",
            FieldValue::string("at-least-once"),
        );
        let amo = ("x-dead-letter-strategy", FieldValue::string("at-most-once"));
        let rp = ("x-overflow", FieldValue::string("reject-publish"));
        assert_eq!(
            quorum(&[alo.clone(), rp.clone()]).dead_letter_strategy,
            DeadLetterStrategy::AtLeastOnce
        );
        let fallback = quorum(std::slice::from_ref(&alo));
        assert_eq!(
            fallback.dead_letter_strategy,
            DeadLetterStrategy::AtMostOnce
        );
        let policy = |json: &str| -> Map<String, Value> { serde_json::from_str(json).unwrap() };
        // The policy's overflow makes the declared strategy take effect.
        let p = policy(r#"{"overflow": "reject-publish"}"#);
        assert_eq!(
            fallback.with_policy(Some(&p)).dead_letter_strategy,
            DeadLetterStrategy::AtLeastOnce
        );
        // Both from a policy; a declared at-most-once wins over the policy.
        let p =
            policy(r#"{"overflow": "reject-publish", "dead-letter-strategy": "at-least-once"}"#);
        assert!(validate_policy_definition(&p).is_ok());
        assert_eq!(
            quorum(&[]).with_policy(Some(&p)).dead_letter_strategy,
            DeadLetterStrategy::AtLeastOnce
        );
        assert_eq!(
            quorum(&[amo]).with_policy(Some(&p)).dead_letter_strategy,
            DeadLetterStrategy::AtMostOnce
        );
        let bad = policy(r#"{"dead-letter-strategy": "exactly-once"}"#);
        assert!(validate_policy_definition(&bad).is_err());
    }
}
