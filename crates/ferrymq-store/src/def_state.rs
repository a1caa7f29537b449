//! The definitions as the broker keeps them between snapshots: keyed maps that one
//! [`Change`] updates in O(log n), convertible to and from the RabbitMQ-format document.
//!
//! Every change is a keyed write whose result does not depend on what was there before (or a
//! delete conditional on an incarnation id), so replaying a journal over a snapshot that
//! already contains some of its changes gives the same state: that is what makes a crash in
//! the middle of a compaction harmless.

use crate::definitions::{
    BindingDef, Definitions, ExchangeDef, Permission, Policy, QueueDef, TopicPermission, User,
    VHostDef, VHOST_LIMITS,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// One change to the definitions, as the journal records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A durable queue was declared (replaces any entry of that name).
    QueueDeclared(QueueDef),
    /// Incarnation `incarnation` of a durable queue was deleted, with the bindings to it.
    QueueDeleted {
        /// Vhost name.
        vhost: String,
        /// Queue name.
        name: String,
        /// Which declaration; a later one of the same name stays.
        incarnation: Option<String>,
    },
    /// A durable exchange was declared (replaces any entry of that name).
    ExchangeDeclared(ExchangeDef),
    /// Incarnation `incarnation` of a durable exchange was deleted, with every binding from
    /// or to it.
    ExchangeDeleted {
        /// Vhost name.
        vhost: String,
        /// Exchange name.
        name: String,
        /// Which declaration; a later one of the same name stays.
        incarnation: Option<String>,
    },
    /// A binding between durable entities was added.
    BindingAdded(BindingDef),
    /// A binding was removed.
    BindingRemoved(BindingDef),
    /// A policy was set (replaces one of that name).
    PolicySet(Policy),
    /// A policy was removed.
    PolicyCleared {
        /// Vhost name.
        vhost: String,
        /// Policy name.
        name: String,
    },
    /// Users, vhosts, permissions, topic permissions and vhost limits, replaced as a whole
    /// (administration changes are rare and small).
    Identity {
        /// Every user.
        users: Vec<User>,
        /// Every vhost.
        vhosts: Vec<VHostDef>,
        /// Every permission entry.
        permissions: Vec<Permission>,
        /// Every topic permission entry.
        topic_permissions: Vec<TopicPermission>,
        /// The `vhost-limits` runtime parameters (other parameters are kept).
        vhost_limits: Vec<Value>,
    },
    /// A vhost was deleted: its queues, exchanges, bindings and policies go.
    VHostDeleted {
        /// Vhost name.
        name: String,
    },
}

impl Change {
    /// The identity part (users, vhosts, permissions, topic permissions, vhost limits) of
    /// `d`, as a change that replaces it.
    pub fn identity_of(d: &Definitions) -> Change {
        Change::Identity {
            users: d.users.clone(),
            vhosts: d.vhosts.clone(),
            permissions: d.permissions.clone(),
            topic_permissions: d.topic_permissions.clone(),
            vhost_limits: d
                .parameters
                .iter()
                .filter(|p| is_vhost_limits(p))
                .cloned()
                .collect(),
        }
    }
}

fn is_vhost_limits(p: &Value) -> bool {
    p.get("component").and_then(Value::as_str) == Some(VHOST_LIMITS)
}

type Name = (String, String);

/// A binding's identity, ordered by destination first so the bindings to a queue are one
/// range.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct BindingKey {
    vhost: String,
    destination_type: String,
    destination: String,
    source: String,
    routing_key: String,
    /// The arguments as canonical JSON (serde_json maps are sorted).
    arguments: String,
}

impl BindingKey {
    fn of(b: &BindingDef) -> BindingKey {
        BindingKey {
            vhost: b.vhost.clone(),
            destination_type: b.destination_type.clone(),
            destination: b.destination.clone(),
            source: b.source.clone(),
            routing_key: b.routing_key.clone(),
            arguments: Value::Object(b.arguments.clone()).to_string(),
        }
    }

    /// The first key of the bindings to `destination`.
    fn first_to(vhost: &str, kind: &str, destination: &str) -> BindingKey {
        BindingKey {
            vhost: vhost.into(),
            destination_type: kind.into(),
            destination: destination.into(),
            source: String::new(),
            routing_key: String::new(),
            arguments: String::new(),
        }
    }
}

/// The definitions, keyed for cheap single changes.
#[derive(Debug, Clone, Default)]
pub struct DefinitionsState {
    /// Everything but the keyed collections below (users, vhosts, permissions, parameters,
    /// ...), as in the document.
    rest: Definitions,
    queues: BTreeMap<Name, QueueDef>,
    exchanges: BTreeMap<Name, ExchangeDef>,
    policies: BTreeMap<Name, Policy>,
    bindings: BTreeMap<BindingKey, BindingDef>,
    /// (vhost, source, binding): the bindings from an exchange.
    by_source: BTreeSet<(String, String, BindingKey)>,
}

impl DefinitionsState {
    /// The state of a document.
    pub fn from_definitions(mut d: Definitions) -> DefinitionsState {
        let mut s = DefinitionsState {
            queues: std::mem::take(&mut d.queues)
                .into_iter()
                .map(|q| ((q.vhost.clone(), q.name.clone()), q))
                .collect(),
            exchanges: std::mem::take(&mut d.exchanges)
                .into_iter()
                .map(|x| ((x.vhost.clone(), x.name.clone()), x))
                .collect(),
            policies: std::mem::take(&mut d.policies)
                .into_iter()
                .map(|p| ((p.vhost.clone(), p.name.clone()), p))
                .collect(),
            ..Default::default()
        };
        for b in std::mem::take(&mut d.bindings) {
            s.add_binding(b);
        }
        s.rest = d;
        s
    }

    /// The document (RabbitMQ's definitions format).
    pub fn to_definitions(&self) -> Definitions {
        let mut d = self.rest.clone();
        d.queues = self.queues.values().cloned().collect();
        d.exchanges = self.exchanges.values().cloned().collect();
        d.policies = self.policies.values().cloned().collect();
        d.bindings = self.bindings.values().cloned().collect();
        d
    }

    /// Number of durable queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Applies one change.
    pub fn apply(&mut self, c: &Change) {
        match c {
            Change::QueueDeclared(q) => {
                self.queues
                    .insert((q.vhost.clone(), q.name.clone()), q.clone());
            }
            Change::QueueDeleted {
                vhost,
                name,
                incarnation,
            } => {
                let key = (vhost.clone(), name.clone());
                if self
                    .queues
                    .get(&key)
                    .is_some_and(|q| &q.incarnation == incarnation)
                {
                    self.queues.remove(&key);
                    self.remove_bindings_to(vhost, "queue", name);
                }
            }
            Change::ExchangeDeclared(x) => {
                self.exchanges
                    .insert((x.vhost.clone(), x.name.clone()), x.clone());
            }
            Change::ExchangeDeleted {
                vhost,
                name,
                incarnation,
            } => {
                let key = (vhost.clone(), name.clone());
                if self
                    .exchanges
                    .get(&key)
                    .is_some_and(|x| &x.incarnation == incarnation)
                {
                    self.exchanges.remove(&key);
                    self.remove_bindings_to(vhost, "exchange", name);
                    self.remove_bindings_from(vhost, name);
                }
            }
            Change::BindingAdded(b) => self.add_binding(b.clone()),
            Change::BindingRemoved(b) => {
                let k = BindingKey::of(b);
                if self.bindings.remove(&k).is_some() {
                    self.by_source
                        .remove(&(b.vhost.clone(), b.source.clone(), k));
                }
            }
            Change::PolicySet(p) => {
                self.policies
                    .insert((p.vhost.clone(), p.name.clone()), p.clone());
            }
            Change::PolicyCleared { vhost, name } => {
                self.policies.remove(&(vhost.clone(), name.clone()));
            }
            Change::Identity {
                users,
                vhosts,
                permissions,
                topic_permissions,
                vhost_limits,
            } => {
                self.rest.users = users.clone();
                self.rest.vhosts = vhosts.clone();
                self.rest.permissions = permissions.clone();
                self.rest.topic_permissions = topic_permissions.clone();
                self.rest.parameters.retain(|p| !is_vhost_limits(p));
                self.rest.parameters.extend(vhost_limits.iter().cloned());
            }
            Change::VHostDeleted { name } => {
                let of_vhost = |k: &Name| &k.0 == name;
                self.queues.retain(|k, _| !of_vhost(k));
                self.exchanges.retain(|k, _| !of_vhost(k));
                self.policies.retain(|k, _| !of_vhost(k));
                self.bindings.retain(|k, _| &k.vhost != name);
                self.by_source.retain(|(v, _, _)| v != name);
            }
        }
    }

    fn add_binding(&mut self, b: BindingDef) {
        let k = BindingKey::of(&b);
        self.by_source
            .insert((b.vhost.clone(), b.source.clone(), k.clone()));
        self.bindings.insert(k, b);
    }

    fn remove_bindings_to(&mut self, vhost: &str, kind: &str, name: &str) {
        let first = BindingKey::first_to(vhost, kind, name);
        let keys: Vec<BindingKey> = self
            .bindings
            .range(first..)
            .take_while(|(k, _)| {
                k.vhost == vhost && k.destination_type == kind && k.destination == name
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.by_source
                .remove(&(k.vhost.clone(), k.source.clone(), k.clone()));
            self.bindings.remove(&k);
        }
    }

    fn remove_bindings_from(&mut self, vhost: &str, source: &str) {
        let from = (
            vhost.to_string(),
            source.to_string(),
            BindingKey::first_to("", "", ""),
        );
        let keys: Vec<(String, String, BindingKey)> = self
            .by_source
            .range(from..)
            .take_while(|(v, s, _)| v == vhost && s == source)
            .cloned()
            .collect();
        for e in keys {
            self.bindings.remove(&e.2);
            self.by_source.remove(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, inc: &str) -> QueueDef {
        QueueDef {
            name: name.into(),
            vhost: "/".into(),
            durable: true,
            incarnation: Some(inc.into()),
            ..Default::default()
        }
    }

    fn bind(source: &str, dest: &str, kind: &str, key: &str) -> BindingDef {
        BindingDef {
            source: source.into(),
            vhost: "/".into(),
            destination: dest.into(),
            destination_type: kind.into(),
            routing_key: key.into(),
            arguments: crate::definitions::Arguments::new(),
        }
    }

    fn x(name: &str) -> ExchangeDef {
        ExchangeDef {
            name: name.into(),
            vhost: "/".into(),
            kind: "topic".into(),
            durable: true,
            ..Default::default()
        }
    }

    fn deleted(name: &str, inc: &str) -> Change {
        Change::QueueDeleted {
            vhost: "/".into(),
            name: name.into(),
            incarnation: Some(inc.into()),
        }
    }

    #[test]
    fn a_delete_of_an_old_incarnation_leaves_the_new_one_and_its_bindings() {
        let mut s = DefinitionsState::default();
        s.apply(&Change::ExchangeDeclared(x("x")));
        s.apply(&Change::QueueDeclared(q("q", "a")));
        s.apply(&Change::QueueDeleted {
            vhost: "/".into(),
            name: "q".into(),
            incarnation: Some("a".into()),
        });
        s.apply(&Change::QueueDeclared(q("q", "b")));
        s.apply(&Change::BindingAdded(bind("x", "q", "queue", "k")));
        // A late delete of incarnation "a" arrives: it must not touch "b".
        s.apply(&deleted("q", "a"));
        let d = s.to_definitions();
        assert_eq!(d.queues, vec![q("q", "b")]);
        assert_eq!(d.bindings.len(), 1);
        s.apply(&deleted("q", "b"));
        let d = s.to_definitions();
        assert!(d.queues.is_empty() && d.bindings.is_empty());
    }

    #[test]
    fn deleting_an_exchange_drops_bindings_from_and_to_it_and_nothing_else() {
        let mut s = DefinitionsState::default();
        for name in ["a", "b", "c"] {
            s.apply(&Change::ExchangeDeclared(x(name)));
        }
        s.apply(&Change::QueueDeclared(q("q", "1")));
        s.apply(&Change::BindingAdded(bind("a", "q", "queue", "k1")));
        s.apply(&Change::BindingAdded(bind("b", "a", "exchange", "k2")));
        s.apply(&Change::BindingAdded(bind("b", "q", "queue", "k3")));
        s.apply(&Change::BindingAdded(bind("c", "q", "queue", "k4")));
        s.apply(&Change::BindingAdded(bind("c", "q", "queue", "k4")));
        s.apply(&Change::ExchangeDeleted {
            vhost: "/".into(),
            name: "a".into(),
            incarnation: None,
        });
        let keys: Vec<String> = s
            .to_definitions()
            .bindings
            .iter()
            .map(|b| b.routing_key.clone())
            .collect();
        assert_eq!(keys, vec!["k3", "k4"]);
        s.apply(&Change::BindingRemoved(bind("c", "q", "queue", "k4")));
        assert_eq!(s.to_definitions().bindings.len(), 1);
    }

    #[test]
    fn replaying_changes_over_a_state_that_has_them_gives_the_same_state() {
        let changes = vec![
            Change::ExchangeDeclared(x("x")),
            Change::QueueDeclared(q("q", "a")),
            Change::BindingAdded(bind("x", "q", "queue", "k")),
            deleted("q", "a"),
            Change::QueueDeclared(q("q", "b")),
            Change::BindingAdded(bind("x", "q", "queue", "k2")),
            Change::VHostDeleted { name: "/".into() },
            Change::QueueDeclared(q("r", "c")),
        ];
        let mut once = DefinitionsState::default();
        for c in &changes {
            once.apply(c);
        }
        let mut twice = DefinitionsState::from_definitions(once.to_definitions());
        for c in &changes {
            twice.apply(c);
        }
        assert_eq!(once.to_definitions(), twice.to_definitions());
    }

    #[test]
    fn changes_round_trip_through_json() {
        let c = vec![
            Change::QueueDeclared(q("q", "a")),
            deleted("q", "a"),
            Change::VHostDeleted { name: "v".into() },
        ];
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains(r#""op":"queue_declared""#), "{text}");
        let back: Vec<Change> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
