//! Per-vhost and per-user limits, with RabbitMQ's names (`max-connections`, `max-queues`,
//! `max-channels`) and JSON form: a negative value means "no limit".

use crate::error::{CoreError, CoreResult};
use serde_json::{Map, Value};

/// Limits of one vhost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VHostLimits {
    /// Most client connections to the vhost at once (`max-connections`).
    pub max_connections: Option<u64>,
    /// Most queues in the vhost (`max-queues`).
    pub max_queues: Option<u64>,
}

/// Limits of one user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// Most connections of the user at once, over all vhosts (`max-connections`).
    pub max_connections: Option<u64>,
    /// Most open channels of the user at once, over all connections (`max-channels`).
    pub max_channels: Option<u64>,
}

/// Reads one limit: an integer, negative for "no limit".
fn limit(key: &str, v: &Value) -> CoreResult<Option<u64>> {
    match v.as_i64() {
        Some(n) if n < 0 => Ok(None),
        Some(n) => Ok(Some(n as u64)),
        None => Err(CoreError::InvalidArgument(format!(
            "Validation failed\n\n{key} should be an integer, got {v}"
        ))),
    }
}

fn unknown(key: &str) -> CoreError {
    CoreError::InvalidArgument(format!("Validation failed\n\nUnrecognised terms [{key}]"))
}

fn put(m: &mut Map<String, Value>, key: &str, v: Option<u64>) {
    if let Some(n) = v {
        m.insert(key.into(), Value::from(n));
    }
}

impl VHostLimits {
    /// Parses RabbitMQ's JSON form, e.g. `{"max-connections": 10, "max-queues": -1}`.
    pub fn from_json(m: &Map<String, Value>) -> CoreResult<Self> {
        let mut l = VHostLimits::default();
        for (k, v) in m {
            match k.as_str() {
                "max-connections" => l.max_connections = limit(k, v)?,
                "max-queues" => l.max_queues = limit(k, v)?,
                _ => return Err(unknown(k)),
            }
        }
        Ok(l)
    }

    /// The JSON form (only the limits that are set).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        put(&mut m, "max-connections", self.max_connections);
        put(&mut m, "max-queues", self.max_queues);
        m
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == VHostLimits::default()
    }
}

impl UserLimits {
    /// Parses RabbitMQ's JSON form, e.g. `{"max-connections": 2, "max-channels": 20}`.
    pub fn from_json(m: &Map<String, Value>) -> CoreResult<Self> {
        let mut l = UserLimits::default();
        for (k, v) in m {
            match k.as_str() {
                "max-connections" => l.max_connections = limit(k, v)?,
                "max-channels" => l.max_channels = limit(k, v)?,
                _ => return Err(unknown(k)),
            }
        }
        Ok(l)
    }

    /// The JSON form (only the limits that are set).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        put(&mut m, "max-connections", self.max_connections);
        put(&mut m, "max-channels", self.max_channels);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn negative_means_unlimited_and_typos_are_refused() {
        let l =
            VHostLimits::from_json(&json(r#"{"max-connections": 3, "max-queues": -1}"#)).unwrap();
        assert_eq!(l.max_connections, Some(3));
        assert_eq!(l.max_queues, None);
        assert_eq!(l.to_json(), json(r#"{"max-connections": 3}"#));
        assert!(VHostLimits::from_json(&json(r#"{"max-conections": 3}"#)).is_err());
        assert!(VHostLimits::from_json(&json(r#"{"max-queues": "x"}"#)).is_err());
        let u = UserLimits::from_json(&json(r#"{"max-channels": 0}"#)).unwrap();
        assert_eq!(u.max_channels, Some(0));
        assert!(UserLimits::from_json(&json(r#"{"max-queues": 1}"#)).is_err());
    }
}
