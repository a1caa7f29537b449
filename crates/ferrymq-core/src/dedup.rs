//! Message deduplication (`x-message-deduplication`): a bounded, optionally time-limited
//! memory of recent message keys per queue.

use crate::message::Message;
use crate::queue_config::DedupConfig;
use crate::value::FieldValue;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Header whose value is the deduplication key (as in RabbitMQ's deduplication plugin).
pub const DEDUP_HEADER: &str = "x-deduplication-header";

/// The key a message is deduplicated by: its `x-deduplication-header` header, else its
/// `message_id`. Messages with neither are never duplicates.
pub fn dedup_key(msg: &Message) -> Option<Vec<u8>> {
    let props = msg.properties();
    if let Some(v) = props.headers.as_ref().and_then(|h| h.get(DEDUP_HEADER)) {
        return Some(match v {
            FieldValue::LongStr(b) | FieldValue::Bytes(b) => b.to_vec(),
            other => other.to_string().into_bytes(),
        });
    }
    props.message_id.map(String::into_bytes)
}

/// Recently seen keys, oldest first.
pub struct DedupCache {
    config: DedupConfig,
    seen: HashMap<Arc<[u8]>, u64>,
    order: VecDeque<(u64, Arc<[u8]>)>,
}

impl DedupCache {
    /// An empty cache.
    pub fn new(config: DedupConfig) -> Self {
        DedupCache {
            config,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Changes the limits (a policy or redeclaration); applies from the next check.
    pub fn set_config(&mut self, config: DedupConfig) {
        self.config = config;
    }

    /// Whether `key` was seen within the window; remembers it if not. A duplicate does not
    /// extend its key's time in the cache.
    pub fn check(&mut self, key: &[u8], now_ms: u64) -> bool {
        self.evict(now_ms);
        if self.seen.contains_key(key) {
            return true;
        }
        let k: Arc<[u8]> = Arc::from(key);
        self.seen.insert(k.clone(), now_ms);
        self.order.push_back((now_ms, k));
        self.evict(now_ms);
        false
    }

    fn evict(&mut self, now_ms: u64) {
        let ttl = self.config.cache_ttl;
        while let Some((at, k)) = self.order.front() {
            let too_many = self.order.len() > self.config.cache_size;
            let too_old = ttl.is_some_and(|t| at.saturating_add(t) <= now_ms);
            if !too_many && !too_old {
                break;
            }
            if self.seen.get(k) == Some(at) {
                self.seen.remove(k);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_bounded_by_size_and_age() {
        let mut c = DedupCache::new(DedupConfig {
            cache_size: 2,
            cache_ttl: Some(1000),
        });
        assert!(!c.check(b"a", 0));
        assert!(c.check(b"a", 10));
        assert!(!c.check(b"b", 20));
        assert!(!c.check(b"c", 30), "a is pushed out by size");
        assert!(!c.check(b"a", 40));
        assert!(!c.check(b"c", 1030), "c aged out");
    }
}
