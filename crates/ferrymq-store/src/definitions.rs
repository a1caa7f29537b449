//! The definitions document: users, vhosts, permissions, policies and durable exchanges,
//! queues and bindings, in RabbitMQ's JSON definitions format (so an export from RabbitMQ
//! loads here and back). Saved atomically: temp file, fsync, rename, fsync of the directory.

use crate::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Declaration arguments as JSON.
pub type Arguments = Map<String, Value>;

/// The whole document. Unknown fields from newer RabbitMQ versions are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Definitions {
    /// Version of the product that wrote it (RabbitMQ writes both names).
    pub rabbit_version: String,
    /// Same as `rabbit_version`.
    pub rabbitmq_version: String,
    /// "FerryMQ" or "RabbitMQ".
    pub product_name: String,
    /// Product version.
    pub product_version: String,
    /// Users.
    pub users: Vec<User>,
    /// Virtual hosts.
    pub vhosts: Vec<VHostDef>,
    /// Per-vhost permissions.
    pub permissions: Vec<Permission>,
    /// Topic permissions (per user, vhost and topic exchange).
    pub topic_permissions: Vec<TopicPermission>,
    /// Runtime parameters: vhost limits (component `vhost-limits`) are read from here,
    /// the rest is kept for round trips.
    pub parameters: Vec<Value>,
    /// Global parameters (kept for round trips).
    pub global_parameters: Vec<Value>,
    /// Policies.
    pub policies: Vec<Policy>,
    /// Durable queues.
    pub queues: Vec<QueueDef>,
    /// Durable exchanges (not the built-in ones).
    pub exchanges: Vec<ExchangeDef>,
    /// Bindings between durable exchanges and queues.
    pub bindings: Vec<BindingDef>,
}

/// A user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct User {
    /// Name.
    pub name: String,
    /// Base64 of salt ‖ SHA-256(salt ‖ password), as RabbitMQ stores it.
    pub password_hash: String,
    /// `rabbit_password_hashing_sha256`.
    pub hashing_algorithm: String,
    /// Tags such as `administrator`. RabbitMQ 3.10 writes a list; older ones a
    /// comma-separated string, which is accepted too.
    #[serde(deserialize_with = "tags")]
    pub tags: Vec<String>,
    /// A clear-text password, accepted on import (RabbitMQ's definitions allow it); it is
    /// hashed on load and never written back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Per-user limits (`max-connections`, `max-channels`), as RabbitMQ 3.10 exports them.
    pub limits: Arguments,
}

fn tags<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tags {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Tags::deserialize(d)? {
        Tags::List(v) => v,
        Tags::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// A virtual host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VHostDef {
    /// Name.
    pub name: String,
}

/// A user's permissions in a vhost (regular expressions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Permission {
    /// User name.
    pub user: String,
    /// Vhost name.
    pub vhost: String,
    /// Configure regex.
    pub configure: String,
    /// Write regex.
    pub write: String,
    /// Read regex.
    pub read: String,
}

/// A user's topic permissions on one topic exchange of a vhost (regular expressions over
/// routing keys).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopicPermission {
    /// User name.
    pub user: String,
    /// Vhost name.
    pub vhost: String,
    /// Topic exchange name.
    pub exchange: String,
    /// Routing keys the user may publish with.
    pub write: String,
    /// Binding keys the user may bind with.
    pub read: String,
}

/// Component name of the runtime parameter holding a vhost's limits.
pub const VHOST_LIMITS: &str = "vhost-limits";

/// A policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Vhost name.
    pub vhost: String,
    /// Policy name.
    pub name: String,
    /// Regex matched against queue/exchange names.
    pub pattern: String,
    /// `queues`, `exchanges` or `all`.
    #[serde(rename = "apply-to")]
    pub apply_to: String,
    /// Arguments it sets.
    pub definition: Arguments,
    /// Higher wins.
    pub priority: i64,
}

/// A durable queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueDef {
    /// Name.
    pub name: String,
    /// Vhost name.
    pub vhost: String,
    /// Always true here (only durable queues are saved).
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// `x-` arguments.
    pub arguments: Arguments,
    /// FerryMQ's own: which declaration of this name the entry is. Its files live in a
    /// directory named after it, so a late cleanup of a deleted queue can never touch the
    /// files of one declared again under the same name. Absent in entries written by
    /// RabbitMQ or older FerryMQ versions (their directory is named without it) and in
    /// exports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
}

/// A durable exchange.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExchangeDef {
    /// Name.
    pub name: String,
    /// Vhost name.
    pub vhost: String,
    /// direct, fanout, topic, headers, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Always true here.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Only reachable through exchange-to-exchange bindings.
    pub internal: bool,
    /// Arguments (`alternate-exchange`, ...).
    pub arguments: Arguments,
    /// FerryMQ's own, for delayed-message exchanges (which keep messages in a directory):
    /// as [`QueueDef::incarnation`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
}

/// A binding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BindingDef {
    /// Source exchange.
    pub source: String,
    /// Vhost name.
    pub vhost: String,
    /// Queue or exchange name.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// Binding key.
    pub routing_key: String,
    /// Binding arguments (headers exchanges).
    pub arguments: Arguments,
}

impl Definitions {
    /// The document as RabbitMQ's `export_definitions` would write it: without FerryMQ's
    /// incarnation ids.
    pub fn exported(mut self) -> Definitions {
        for q in &mut self.queues {
            q.incarnation = None;
        }
        for x in &mut self.exchanges {
            x.incarnation = None;
        }
        self
    }

    /// The limits set on `vhost` (the `vhost-limits` parameter), if any.
    pub fn vhost_limits(&self, vhost: &str) -> Option<&Arguments> {
        self.parameters.iter().find_map(|p| {
            let is = p.get("component").and_then(Value::as_str) == Some(VHOST_LIMITS)
                && p.get("vhost").and_then(Value::as_str) == Some(vhost);
            if is {
                p.get("value").and_then(Value::as_object)
            } else {
                None
            }
        })
    }

    /// Replaces (or with `None` removes) the limits of `vhost`.
    pub fn set_vhost_limits(&mut self, vhost: &str, limits: Option<Arguments>) {
        self.parameters.retain(|p| {
            !(p.get("component").and_then(Value::as_str) == Some(VHOST_LIMITS)
                && p.get("vhost").and_then(Value::as_str) == Some(vhost))
        });
        if let Some(l) = limits {
            self.parameters.push(serde_json::json!({
                "value": l, "vhost": vhost, "component": VHOST_LIMITS, "name": "limits"
            }));
        }
    }

    /// Loads the document at `path`; a missing file is an empty document.
    pub fn load(path: &Path) -> Result<Option<Definitions>, StoreError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io(path.display().to_string(), e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Definitions(path.display().to_string(), e.to_string()))
    }

    /// Writes the document atomically: a crash leaves either the old or the new file.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let err = |p: &Path| {
            let p = p.display().to_string();
            move |e| StoreError::Io(p, e)
        };
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| StoreError::Definitions(path.display().to_string(), e.to_string()))?;
        let mut f = File::create(&tmp).map_err(err(&tmp))?;
        f.write_all(&json).map_err(err(&tmp))?;
        f.sync_all().map_err(err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(err(path))?;
        if let Some(dir) = path.parent() {
            // The rename itself must reach the disk.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err(dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rabbitmq_export_loads_and_round_trips() {
        let export = r#"{
          "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8",
          "product_name": "RabbitMQ", "product_version": "3.10.8",
          "users": [{"name": "guest", "password_hash": "abc", "hashing_algorithm":
                     "rabbit_password_hashing_sha256", "tags": ["administrator"], "limits": {}},
                    {"name": "old", "password_hash": "x", "tags": "monitoring, management"}],
          "vhosts": [{"name": "/"}],
          "permissions": [{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
          "topic_permissions": [], "parameters": [], "global_parameters": [],
          "policies": [{"vhost": "/", "name": "ttl", "pattern": "^t\\.", "apply-to": "queues",
                        "definition": {"message-ttl": 1000}, "priority": 0}],
          "queues": [{"name": "q", "vhost": "/", "durable": true, "auto_delete": false,
                      "arguments": {"x-max-length": 10}}],
          "exchanges": [{"name": "x", "vhost": "/", "type": "topic", "durable": true,
                         "auto_delete": false, "internal": false, "arguments": {}}],
          "bindings": [{"source": "x", "vhost": "/", "destination": "q",
                        "destination_type": "queue", "routing_key": "a.#", "arguments": {}}]
        }"#;
        let d: Definitions = serde_json::from_str(export).unwrap();
        assert_eq!(d.users[1].tags, vec!["monitoring", "management"]);
        assert_eq!(d.policies[0].apply_to, "queues");
        assert_eq!(d.exchanges[0].kind, "topic");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("definitions.json");
        assert_eq!(Definitions::load(&path).unwrap(), None);
        d.save(&path).unwrap();
        assert_eq!(Definitions::load(&path).unwrap(), Some(d));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("definitions.json");
        std::fs::write(&path, "{\"queues\": [").unwrap();
        let e = Definitions::load(&path).unwrap_err().to_string();
        assert!(e.contains("definitions.json"), "{e}");
    }
}
