//! The broker: vhosts, users and permissions, and broker-wide state such as resource alarms.

use crate::auth::User;
use crate::error::{CoreError, CoreResult};
use crate::persist::Persistence;
use crate::vhost::VHost;
use ferrymq_store::definitions::{self as defs, Definitions};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Identifies one client connection within the broker (used for exclusive ownership).
pub type ConnectionId = u64;

/// Protocol-independent limits and defaults.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Largest accepted message body, in bytes.
    pub max_message_size: usize,
    /// Users that may only connect from loopback addresses.
    pub loopback_users: Vec<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_message_size: 128 * 1024 * 1024,
            loopback_users: vec!["guest".to_string()],
        }
    }
}

/// Per-vhost permissions of a user: regexes over resource names, as in RabbitMQ.
#[derive(Debug, Clone)]
pub struct Permission {
    /// Which resources the user may declare/delete.
    pub configure: String,
    /// Which resources the user may publish to / bind into.
    pub write: String,
    /// Which resources the user may consume from / bind from.
    pub read: String,
}

/// The whole broker state shared by every listener.
pub struct Broker {
    /// Limits and defaults.
    pub config: BrokerConfig,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    users: RwLock<HashMap<String, User>>,
    permissions: RwLock<HashMap<(String, String), Permission>>,
    next_connection: AtomicU64,
    blocked: watch::Sender<Option<String>>,
    persist: Option<Arc<Persistence>>,
}

impl Broker {
    /// An in-memory broker with vhost `/` and user `guest`/`guest` with full rights on it.
    pub fn new(config: BrokerConfig) -> Arc<Self> {
        Arc::new(Broker::fresh(config, None))
    }

    /// A broker keeping its definitions and persistent messages in `persist`: what the data
    /// directory holds is restored (durable exchanges, queues with their messages, bindings,
    /// users, vhosts, permissions); an empty data directory starts as [`Broker::new`] does.
    pub fn open(config: BrokerConfig, persist: Arc<Persistence>) -> CoreResult<Arc<Self>> {
        let b = match persist.loaded_definitions() {
            None => {
                let b = Broker::fresh(config, Some(persist.clone()));
                let d = b.identity_definitions();
                persist.update(|cur| *cur = d)?;
                b
            }
            Some(d) => {
                let b = Broker::empty(config, Some(persist.clone()));
                b.restore(d, &persist)?;
                b
            }
        };
        Ok(Arc::new(b))
    }

    /// A broker with no vhosts, users or permissions yet.
    fn empty(config: BrokerConfig, persist: Option<Arc<Persistence>>) -> Broker {
        Broker {
            config,
            vhosts: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            permissions: RwLock::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            blocked: watch::channel(None).0,
            persist,
        }
    }

    fn fresh(config: BrokerConfig, persist: Option<Arc<Persistence>>) -> Broker {
        let b = Broker::empty(config, persist);
        b.add_vhost("/");
        b.add_user(User::new("guest", "guest", &["administrator"]));
        b.set_permission(
            "guest",
            "/",
            Permission {
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            },
        );
        b
    }

    /// Users, vhosts and permissions as definitions (no exchanges or queues).
    fn identity_definitions(&self) -> Definitions {
        let mut d = Definitions {
            users: self
                .users
                .read()
                .values()
                .map(|u| defs::User {
                    name: u.name.clone(),
                    password_hash: u.password_hash.clone(),
                    hashing_algorithm: "rabbit_password_hashing_sha256".into(),
                    tags: u.tags.clone(),
                })
                .collect(),
            vhosts: self
                .vhosts
                .read()
                .keys()
                .map(|n| defs::VHostDef { name: n.clone() })
                .collect(),
            permissions: self
                .permissions
                .read()
                .iter()
                .map(|((user, vhost), p)| defs::Permission {
                    user: user.clone(),
                    vhost: vhost.clone(),
                    configure: p.configure.clone(),
                    write: p.write.clone(),
                    read: p.read.clone(),
                })
                .collect(),
            ..Default::default()
        };
        d.users.sort_by(|a, b| a.name.cmp(&b.name));
        d.vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        d
    }

    fn restore(&self, d: &Definitions, persist: &Persistence) -> CoreResult<()> {
        for u in &d.users {
            self.users.write().insert(
                u.name.clone(),
                User {
                    name: u.name.clone(),
                    password_hash: u.password_hash.clone(),
                    tags: u.tags.clone(),
                },
            );
        }
        for v in &d.vhosts {
            self.add_vhost(&v.name);
        }
        for p in &d.permissions {
            self.set_permission(
                &p.user,
                &p.vhost,
                Permission {
                    configure: p.configure.clone(),
                    write: p.write.clone(),
                    read: p.read.clone(),
                },
            );
        }
        let vhost = |name: &str| {
            self.vhost(name).ok_or_else(|| {
                CoreError::Internal(format!("definitions name unknown vhost '{name}'"))
            })
        };
        for x in &d.exchanges {
            vhost(&x.vhost)?.restore_exchange(x)?;
        }
        let mut dirs = Vec::new();
        for q in &d.queues {
            let (dir, n) = vhost(&q.vhost)?.restore_queue(q)?;
            tracing::info!(queue = %q.name, vhost = %q.vhost, "recovered {n} messages");
            dirs.push(dir);
        }
        for p in &d.policies {
            match crate::policy::Policy::from_def(p) {
                Ok(pol) => vhost(&p.vhost)?.restore_policy(pol),
                Err(e) => tracing::warn!("skipping policy '{}' from the definitions: {e}", p.name),
            }
        }
        for b in &d.bindings {
            if let Err(e) = vhost(&b.vhost).and_then(|v| v.restore_binding(b)) {
                tracing::warn!("skipping a binding from the definitions: {e}");
            }
        }
        persist.remove_orphan_queue_dirs(&dirs);
        Ok(())
    }

    /// The storage context, when the broker has a data directory.
    pub fn persistence(&self) -> Option<&Arc<Persistence>> {
        self.persist.as_ref()
    }

    /// Adds a vhost (no-op if it exists) and returns it.
    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        self.vhosts
            .write()
            .entry(name.to_string())
            .or_insert_with(|| VHost::with_persistence(name, self.persist.clone()))
            .clone()
    }

    /// The named vhost.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// Every vhost.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.read().values().cloned().collect()
    }

    /// Adds or replaces a user.
    pub fn add_user(&self, user: User) {
        self.users.write().insert(user.name.clone(), user);
    }

    /// Grants `user` permissions on `vhost`.
    pub fn set_permission(&self, user: &str, vhost: &str, p: Permission) {
        self.permissions
            .write()
            .insert((user.to_string(), vhost.to_string()), p);
    }

    /// Checks a login. `loopback` says whether the peer connected from a loopback address.
    pub fn authenticate(&self, username: &str, password: &str, loopback: bool) -> CoreResult<()> {
        let ok = self
            .users
            .read()
            .get(username)
            .is_some_and(|u| u.check_password(password));
        if !ok {
            return Err(CoreError::AccessRefused(format!(
                "Login was refused using authentication mechanism PLAIN. For details see the broker logfile. (user '{username}')"
            )));
        }
        if !loopback && self.config.loopback_users.iter().any(|u| u == username) {
            return Err(CoreError::AccessRefused(format!(
                "User '{username}' can only connect via localhost"
            )));
        }
        Ok(())
    }

    /// Opens `vhost` for `user`: the vhost must exist and the user must have permissions on it.
    pub fn open_vhost(&self, user: &str, vhost: &str) -> CoreResult<Arc<VHost>> {
        let v = self
            .vhost(vhost)
            .ok_or_else(|| CoreError::NotAllowed(format!("vhost {vhost} not found")))?;
        if !self
            .permissions
            .read()
            .contains_key(&(user.to_string(), vhost.to_string()))
        {
            return Err(CoreError::NotAllowed(format!(
                "access to vhost '{vhost}' refused for user '{user}'"
            )));
        }
        Ok(v)
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> ConnectionId {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Raises (Some(reason)) or clears (None) the publisher-blocking alarm. Connections that
    /// publish are held and told `connection.blocked` while it is raised.
    pub fn set_blocked(&self, reason: Option<String>) {
        self.blocked.send_replace(reason);
    }

    /// Subscribes to the publisher-blocking alarm.
    pub fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.blocked.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_may_only_log_in_from_loopback() {
        let b = Broker::new(BrokerConfig::default());
        assert!(b.authenticate("guest", "guest", true).is_ok());
        let e = b.authenticate("guest", "guest", false).unwrap_err();
        assert_eq!(e.reply_code(), 403);
        assert!(e.to_string().contains("can only connect via localhost"));
        assert!(b.authenticate("guest", "wrong", true).is_err());
        assert!(b.authenticate("nobody", "guest", true).is_err());
    }

    #[test]
    fn vhost_access_needs_permissions() {
        let b = Broker::new(BrokerConfig::default());
        assert!(b.open_vhost("guest", "/").is_ok());
        assert_eq!(
            b.open_vhost("guest", "/other")
                .err()
                .map(|e| e.reply_code()),
            Some(530)
        );
        b.add_vhost("/other");
        assert_eq!(
            b.open_vhost("guest", "/other")
                .err()
                .map(|e| e.reply_code()),
            Some(530)
        );
    }

    #[test]
    fn policies_are_saved_and_applied_again_after_a_restart() {
        use crate::persist::{PersistConfig, Persistence};
        use crate::policy::Policy;
        use crate::queue::QueueOptions;
        let d = tempfile::tempdir().unwrap();
        let open = || {
            let p = Persistence::open(PersistConfig::new(d.path())).unwrap();
            Broker::open(BrokerConfig::default(), p).unwrap()
        };
        let b = open();
        let v = b.vhost("/").unwrap();
        let def = serde_json::from_str(r#"{"message-ttl": 5000}"#).unwrap();
        v.set_policy(Policy::new("ttl", "^t", "queues", 1, def).unwrap())
            .unwrap();
        let durable = QueueOptions {
            durable: true,
            ..Default::default()
        };
        v.declare_queue("tq", durable, false, 1).unwrap();
        b.persistence().unwrap().stop();
        drop((v, b));
        let b = open();
        let v = b.vhost("/").unwrap();
        assert_eq!(v.policies().len(), 1);
        let q = v.queue("tq", 1).unwrap();
        assert_eq!(q.config().message_ttl, Some(5000));
        v.clear_policy("ttl").unwrap();
        assert_eq!(q.config().message_ttl, None);
        assert!(v.clear_policy("ttl").is_err());
    }
}
