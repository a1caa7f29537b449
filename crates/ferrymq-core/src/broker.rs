//! The broker: its vhosts, who may use them (users, permissions, limits), the live
//! connections, and broker-wide state such as resource alarms. Protocol crates authenticate a
//! client here and then work through a [`Session`]; operators change users, vhosts,
//! permissions, policies and limits through the admin API in [`crate::admin`].

use crate::access::{Permission, TopicPermission};
use crate::auth::User;
use crate::connections::{ConnectionMeta, Registry};
use crate::error::{CoreError, CoreResult};
use crate::limits::{UserLimits, VHostLimits};
use crate::persist::Persistence;
use crate::session::Session;
use crate::vhost::VHost;
use ferrymq_store::definitions::Definitions;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
    /// How long a consumer may hold a delivery unacknowledged before its channel is closed
    /// (RabbitMQ's `consumer_timeout`; `None` disables it).
    pub consumer_timeout: Option<Duration>,
    /// Whether a fresh data directory starts with vhost `/` and user `guest`. RabbitMQ does
    /// not seed them when definitions are loaded at boot; nor does FerryMQ.
    pub seed_defaults: bool,
    /// Most consumers one channel may have (RabbitMQ's `consumer_max_per_channel`; `None`:
    /// no limit, RabbitMQ's default).
    pub consumer_max_per_channel: Option<usize>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_message_size: 128 * 1024 * 1024,
            loopback_users: vec!["guest".to_string()],
            consumer_timeout: Some(Duration::from_secs(30 * 60)),
            seed_defaults: true,
            consumer_max_per_channel: None,
        }
    }
}

/// Who may do what: users, their per-vhost permissions and topic permissions, and limits.
#[derive(Default, Clone)]
pub(crate) struct Identity {
    pub users: HashMap<String, User>,
    pub permissions: HashMap<(String, String), Permission>,
    pub topic_permissions: HashMap<(String, String), Vec<TopicPermission>>,
    pub vhost_limits: HashMap<String, VHostLimits>,
}

impl Identity {
    pub fn user_limits(&self, user: &str) -> UserLimits {
        self.users.get(user).map(|u| u.limits).unwrap_or_default()
    }
}

/// The whole broker state shared by every listener.
pub struct Broker {
    /// Limits and defaults.
    pub config: BrokerConfig,
    pub(crate) vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    pub(crate) identity: RwLock<Identity>,
    /// Bumped whenever users or permissions change, so sessions recompile what they cached.
    access_generation: AtomicU64,
    pub(crate) connections: Mutex<Registry>,
    /// Serialises admin changes (each is save, then apply).
    pub(crate) admin: Mutex<()>,
    next_connection: AtomicU64,
    blocked: watch::Sender<Option<String>>,
    /// Queue churn and counters of the queues of deleted vhosts (see [`Broker::queue_history`]).
    pub(crate) gone_queues: Mutex<crate::stats::QueueHistory>,
    /// Memory and disk readings and limits, written by the alarm monitor.
    pub resources: crate::stats::NodeResources,
    pub(crate) persist: Option<Arc<Persistence>>,
}

impl Broker {
    /// An in-memory broker with vhost `/` and user `guest`/`guest` with full rights on it.
    pub fn new(config: BrokerConfig) -> Arc<Self> {
        Arc::new(Broker::fresh(config, None))
    }

    /// A broker keeping its definitions and persistent messages in `persist`: what the data
    /// directory holds is restored (durable exchanges, queues with their messages, bindings,
    /// users, vhosts, permissions, limits, policies); an empty data directory starts as
    /// [`Broker::new`] does.
    pub fn open(config: BrokerConfig, persist: Arc<Persistence>) -> CoreResult<Arc<Self>> {
        // A data directory whose definitions name no user and no vhost (a first start whose
        // definitions import failed) starts fresh again rather than with nobody able to log in.
        let loaded = persist
            .loaded_definitions()
            .filter(|d| !(d.users.is_empty() && d.vhosts.is_empty()));
        let b = match loaded {
            None => {
                // Without the defaults (a definitions file is about to be imported) nothing
                // is saved yet: if that import fails, the next start is a fresh one again
                // instead of a data directory with no users at all.
                match config.seed_defaults {
                    true => {
                        let b = Broker::fresh(config, Some(persist.clone()));
                        let d = b.identity_definitions();
                        persist.reset(d)?;
                        b
                    }
                    false => Broker::empty(config, Some(persist.clone())),
                }
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
            identity: RwLock::new(Identity::default()),
            access_generation: AtomicU64::new(1),
            connections: Mutex::new(Registry::default()),
            admin: Mutex::new(()),
            next_connection: AtomicU64::new(1),
            blocked: watch::channel(None).0,
            gone_queues: Mutex::new(Default::default()),
            resources: Default::default(),
            persist,
        }
    }

    fn fresh(config: BrokerConfig, persist: Option<Arc<Persistence>>) -> Broker {
        let b = Broker::empty(config, persist);
        b.insert_vhost("/");
        let mut id = b.identity.write();
        id.users.insert(
            "guest".into(),
            User::new("guest", "guest", &["administrator"]),
        );
        id.permissions
            .insert(("guest".into(), "/".into()), Permission::all());
        drop(id);
        b
    }

    /// Users, vhosts, permissions and limits as definitions (no exchanges or queues).
    pub(crate) fn identity_definitions(&self) -> Definitions {
        let mut d = Definitions::default();
        crate::admin::write_identity(self, &mut d);
        d
    }

    fn restore(&self, d: &Definitions, persist: &Persistence) -> CoreResult<()> {
        crate::admin::load_identity(self, d)?;
        // An entry of a vhost the document does not list (left by a crash while the vhost
        // was deleted) is skipped with a warning rather than keeping the broker down.
        let vhost = |name: &str, what: &str| {
            let v = self.vhost(name);
            if v.is_none() {
                tracing::warn!("skipping {what} of unknown vhost '{name}' in the definitions");
            }
            v
        };
        let mut delayed = Vec::new();
        for x in &d.exchanges {
            if let Some(v) = vhost(&x.vhost, "an exchange") {
                delayed.extend(v.restore_exchange(x)?);
            }
        }
        let mut dirs = Vec::new();
        for q in &d.queues {
            if let Some(v) = vhost(&q.vhost, "a queue") {
                let (dir, n) = v.restore_queue(q)?;
                tracing::info!(queue = %q.name, vhost = %q.vhost, "recovered {n} messages");
                dirs.push(dir);
            }
        }
        for p in &d.policies {
            match crate::policy::Policy::from_def(p) {
                Ok(pol) => {
                    if let Some(v) = vhost(&p.vhost, "a policy") {
                        v.restore_policy(pol);
                    }
                }
                Err(e) => tracing::warn!("skipping policy '{}' from the definitions: {e}", p.name),
            }
        }
        for b in &d.bindings {
            if let Some(v) = vhost(&b.vhost, "a binding") {
                if let Err(e) = v.restore_binding(b) {
                    tracing::warn!("skipping a binding from the definitions: {e}");
                }
            }
        }
        persist.remove_orphan_dirs("queues", &dirs);
        persist.remove_orphan_dirs("delayed", &delayed);
        Ok(())
    }

    /// The storage context, when the broker has a data directory.
    pub fn persistence(&self) -> Option<&Arc<Persistence>> {
        self.persist.as_ref()
    }

    /// Adds a vhost to memory only (no-op if it exists) and returns it.
    pub(crate) fn insert_vhost(&self, name: &str) -> Arc<VHost> {
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

    /// The current access generation (see [`Broker::bump_access`]).
    pub(crate) fn access_generation(&self) -> u64 {
        self.access_generation.load(Ordering::Acquire)
    }

    /// Tells live sessions that users or permissions changed.
    pub(crate) fn bump_access(&self) {
        self.access_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Checks a login. `loopback` says whether the peer connected from a loopback address.
    pub fn authenticate(&self, username: &str, password: &str, loopback: bool) -> CoreResult<()> {
        self.authenticate_with(username, password, "PLAIN", loopback)
    }

    /// [`Broker::authenticate`] for a client that logged in with `mechanism` (PLAIN or
    /// AMQPLAIN): a refusal names it, as RabbitMQ's does.
    pub fn authenticate_with(
        &self,
        username: &str,
        password: &str,
        mechanism: &str,
        loopback: bool,
    ) -> CoreResult<()> {
        let ok = self
            .identity
            .read()
            .users
            .get(username)
            .is_some_and(|u| u.check_password(password));
        if !ok {
            return Err(login_refused(mechanism));
        }
        self.check_loopback(username, loopback)
    }

    /// Admits a user without a password, for mechanisms where the protocol has already
    /// established who the peer is (SASL EXTERNAL over a verified TLS client certificate, as
    /// RabbitMQ's rabbitmq_auth_mechanism_ssl): the user must exist, and loopback-only users
    /// must still connect from loopback. `mechanism` names the mechanism in the refusal.
    pub fn authenticate_trusted(
        &self,
        username: &str,
        mechanism: &str,
        loopback: bool,
    ) -> CoreResult<()> {
        if !self.identity.read().users.contains_key(username) {
            return Err(login_refused(mechanism));
        }
        self.check_loopback(username, loopback)
    }

    fn check_loopback(&self, username: &str, loopback: bool) -> CoreResult<()> {
        if !loopback && self.config.loopback_users.iter().any(|u| u == username) {
            return Err(CoreError::AccessRefused(format!(
                "User '{username}' can only connect via localhost"
            )));
        }
        Ok(())
    }

    /// Opens a session for an authenticated `user` on `vhost`: the vhost must exist, the
    /// user must have permissions on it, and neither the vhost's nor the user's connection
    /// limit may be reached. The session is counted until it is dropped.
    pub fn open_session(
        self: &Arc<Self>,
        user: &str,
        vhost: &str,
        meta: ConnectionMeta,
    ) -> CoreResult<Session> {
        let v = self
            .vhost(vhost)
            .ok_or_else(|| CoreError::VHostAccessRefused(format!("vhost {vhost} not found")))?;
        let (vlim, ulim, tags, permitted) = {
            let id = self.identity.read();
            let permitted = id
                .permissions
                .contains_key(&(user.to_string(), vhost.to_string()));
            let tags = id
                .users
                .get(user)
                .map(|u| u.tags.clone())
                .unwrap_or_default();
            (
                id.vhost_limits.get(vhost).copied().unwrap_or_default(),
                id.user_limits(user),
                tags,
                permitted,
            )
        };
        // Limits are checked before access, as RabbitMQ orders them.
        let id = self.next_connection_id();
        let info = self
            .connections
            .lock()
            .register(id, user, vhost, meta, vlim, ulim)?;
        // Checked again now that the connection is registered: a user or vhost deleted
        // in between has already sent its close requests, which this one would miss.
        let still = permitted
            && !v.is_deleted()
            && self
                .identity
                .read()
                .permissions
                .contains_key(&(user.to_string(), vhost.to_string()));
        if !still {
            self.connections.lock().unregister(id);
            return Err(CoreError::VHostAccessRefused(format!(
                "access to vhost '{vhost}' refused for user '{user}'"
            )));
        }
        Ok(Session::new(self.clone(), v, info, tags))
    }

    /// A session for one management (HTTP API) request by authenticated `user` on `vhost`:
    /// the same permission checks as a client connection's, but not listed among the
    /// connections nor counted against connection limits (as RabbitMQ's HTTP API).
    pub fn api_session(self: &Arc<Self>, user: &str, vhost: &str) -> CoreResult<Session> {
        let v = self
            .vhost(vhost)
            .ok_or_else(|| CoreError::NotFound(format!("no vhost '{vhost}'")))?;
        let (tags, permitted) = {
            let id = self.identity.read();
            let permitted = id
                .permissions
                .contains_key(&(user.to_string(), vhost.to_string()));
            let tags = id
                .users
                .get(user)
                .map(|u| u.tags.clone())
                .unwrap_or_default();
            (tags, permitted)
        };
        if !permitted {
            return Err(CoreError::VHostAccessRefused(format!(
                "access to vhost '{vhost}' refused for user '{user}'"
            )));
        }
        let meta = crate::connections::ConnectionMeta {
            protocol: "HTTP",
            ..Default::default()
        };
        let info = crate::connections::ConnectionInfo::unlisted(
            self.next_connection_id(),
            user,
            vhost,
            meta,
        );
        Ok(Session::new(self.clone(), v, Arc::new(info), tags))
    }

    /// Message and byte counters of every connection to `vhost` (all with `None`), the
    /// closed ones included.
    pub fn connection_totals(&self, vhost: Option<&str>) -> crate::stats::ConnectionTotals {
        self.connections.lock().totals(vhost)
    }

    /// Queue churn since the start and the counters of every deleted queue, deleted vhosts'
    /// included, so sums over live queues plus these never go backwards.
    pub fn queue_history(&self) -> crate::stats::QueueHistory {
        self.walk_queues(|_, _| {})
    }

    /// Calls `each` with every vhost's queues and returns [`Broker::queue_history`] as it
    /// was meanwhile: every queue is counted once, by `each` (live) or in the answer
    /// (deleted), never both or neither, so sums over both never go backwards. Vhost
    /// deletions wait for the whole walk, a vhost's queue deletions for its part.
    pub fn walk_queues(
        &self,
        mut each: impl FnMut(&VHost, &[Arc<crate::queue::Queue>]),
    ) -> crate::stats::QueueHistory {
        let gone = self.gone_queues.lock();
        let mut h = *gone;
        for v in self.vhosts() {
            h.add(&v.walk_queues(|qs| each(&v, qs)));
        }
        h
    }

    /// Connections and channels opened and closed since the start.
    pub fn connection_churn(&self) -> crate::stats::ConnectionChurn {
        self.connections.lock().churn
    }

    /// [`Broker::connection_totals`] of every vhost with connections, read at once.
    pub fn connection_totals_by_vhost(
        &self,
    ) -> std::collections::HashMap<String, crate::stats::ConnectionTotals> {
        self.connections.lock().totals_by_vhost()
    }

    /// Whether `user` has permissions on `vhost` (may use it at all).
    pub fn may_use_vhost(&self, user: &str, vhost: &str) -> bool {
        self.identity
            .read()
            .permissions
            .contains_key(&(user.to_string(), vhost.to_string()))
    }

    /// A user's tags, `None` if there is no such user.
    pub fn user_tags(&self, user: &str) -> Option<Vec<String>> {
        self.identity.read().users.get(user).map(|u| u.tags.clone())
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> ConnectionId {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Every live connection.
    pub fn connections(&self) -> Vec<Arc<crate::connections::ConnectionInfo>> {
        self.connections.lock().all()
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

/// RabbitMQ's refusal of a login: the same text whatever went wrong (unknown user, wrong
/// password, no usable identity), so a client cannot probe which users exist.
pub fn login_refused(mechanism: &str) -> CoreError {
    CoreError::AccessRefused(format!(
        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
    ))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod at_least_once_tests;
