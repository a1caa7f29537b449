//! The live client connections of every protocol: who is connected to which vhost, how many
//! channels each user has open, the limits on both, and a way to close a connection from
//! the broker side (user or vhost deleted, an operator's request).

use crate::error::{CoreError, CoreResult};
use crate::flow::ConnectionState;
use crate::limits::{UserLimits, VHostLimits};
use crate::stats::{ChannelInfo, ConnectionStats, ConnectionTotals};
use crate::value::FieldTable;
use crate::ConnectionId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// What a protocol crate knows about a connection when it opens a session.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMeta {
    /// The client's address, when it came over the network.
    pub peer: Option<SocketAddr>,
    /// Protocol name as the management API shows it, e.g. `AMQP 0-9-1`.
    pub protocol: &'static str,
    /// The broker address the client connected to.
    pub local: Option<SocketAddr>,
    /// Whether the connection is encrypted (TLS).
    pub tls: bool,
    /// What the client said about itself (AMQP's client properties).
    pub client_properties: FieldTable,
    /// How it logged in (SASL mechanism).
    pub auth_mechanism: String,
    /// Negotiated largest frame.
    pub frame_max: u32,
    /// Negotiated most channels.
    pub channel_max: u16,
    /// Negotiated heartbeat interval in seconds (0: none).
    pub heartbeat: u16,
    /// Its message and byte counters, shared with the protocol's tasks that count.
    pub stats: Arc<ConnectionStats>,
}

/// One live connection as the broker sees it.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// Broker-unique id.
    pub id: ConnectionId,
    /// The authenticated user.
    pub user: String,
    /// The vhost it works in.
    pub vhost: String,
    /// Where it comes from and how.
    pub meta: ConnectionMeta,
    /// When it opened (ms since the Unix epoch).
    pub connected_at: u64,
    channels: AtomicU64,
    /// The open channels, for the management API.
    channel_list: parking_lot::Mutex<Vec<Arc<ChannelInfo>>>,
    state: AtomicU8,
    kill: watch::Sender<Option<String>>,
}

impl ConnectionInfo {
    /// A connection that is not listed nor counted against limits: what an HTTP API call
    /// works through.
    pub(crate) fn unlisted(
        id: ConnectionId,
        user: &str,
        vhost: &str,
        meta: ConnectionMeta,
    ) -> Self {
        ConnectionInfo {
            id,
            user: user.to_string(),
            vhost: vhost.to_string(),
            meta,
            connected_at: crate::expiry::wall_ms(),
            channels: AtomicU64::new(0),
            channel_list: parking_lot::Mutex::new(Vec::new()),
            state: AtomicU8::new(0),
            kill: watch::channel(None).0,
        }
    }

    /// The name RabbitMQ gives a connection: `peer:port -> local:port`.
    pub fn name(&self) -> String {
        let show = |a: Option<std::net::SocketAddr>| match a {
            Some(a) => format!("{}:{}", a.ip().to_canonical(), a.port()),
            None => "?".into(),
        };
        format!("{} -> {}", show(self.meta.peer), show(self.meta.local))
    }

    /// Its open channels, by number.
    pub fn channel_list(&self) -> Vec<Arc<ChannelInfo>> {
        let mut v = self.channel_list.lock().clone();
        v.sort_by_key(|c| c.number);
        v
    }

    /// Lists an opened channel.
    pub(crate) fn add_channel(&self, c: Arc<ChannelInfo>) {
        self.channel_list.lock().push(c);
    }

    /// Unlists a closed channel.
    pub(crate) fn remove_channel(&self, c: &Arc<ChannelInfo>) {
        self.channel_list.lock().retain(|x| !Arc::ptr_eq(x, c));
    }

    /// Open channels of this connection.
    pub fn channels(&self) -> u64 {
        self.channels.load(Ordering::Relaxed)
    }

    /// Whether the connection is being read, held by flow control or by an alarm.
    pub fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Set by the protocol's connection loop when it holds or resumes reading.
    pub fn set_state(&self, s: ConnectionState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Asks the connection to close with `reason` (it sees it through
    /// [`Session::closed`](crate::session::Session::closed)).
    pub fn close(&self, reason: &str) {
        self.kill.send_replace(Some(reason.to_string()));
    }

    /// Subscribes to close requests.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.kill.subscribe()
    }
}

/// Every live connection with the counts the limits are checked against.
#[derive(Default)]
pub(crate) struct Registry {
    conns: HashMap<ConnectionId, Arc<ConnectionInfo>>,
    per_vhost: HashMap<String, u64>,
    per_user: HashMap<String, u64>,
    user_channels: HashMap<String, u64>,
    /// Counters of closed connections per vhost, so totals do not drop when one closes.
    retired: HashMap<String, ConnectionTotals>,
    /// Counters of closed connections of vhosts that were deleted: still in the broker's
    /// totals, which never go backwards.
    retired_gone: ConnectionTotals,
    /// Connections and channels opened and closed.
    pub churn: crate::stats::ConnectionChurn,
}

fn dec(m: &mut HashMap<String, u64>, k: &str) {
    if let Some(n) = m.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(k);
        }
    }
}

impl Registry {
    /// Admits a connection unless the vhost's or the user's connection limit is reached
    /// (RabbitMQ's texts).
    pub fn register(
        &mut self,
        id: ConnectionId,
        user: &str,
        vhost: &str,
        meta: ConnectionMeta,
        vlim: VHostLimits,
        ulim: UserLimits,
    ) -> CoreResult<Arc<ConnectionInfo>> {
        if let Some(max) = vlim.max_connections {
            if self.per_vhost.get(vhost).copied().unwrap_or(0) >= max {
                return Err(CoreError::LimitReached(format!(
                    "access to vhost '{vhost}' refused for user '{user}': connection limit ({max}) is reached"
                )));
            }
        }
        if let Some(max) = ulim.max_connections {
            if self.per_user.get(user).copied().unwrap_or(0) >= max {
                return Err(CoreError::LimitReached(format!(
                    "connection refused for user '{user}': user connection limit ({max}) is reached"
                )));
            }
        }
        let info = Arc::new(ConnectionInfo::unlisted(id, user, vhost, meta));
        *self.per_vhost.entry(vhost.to_string()).or_default() += 1;
        *self.per_user.entry(user.to_string()).or_default() += 1;
        self.conns.insert(id, info.clone());
        self.churn.connections_opened += 1;
        Ok(info)
    }

    /// Forgets a connection (and the channels it still had).
    pub fn unregister(&mut self, id: ConnectionId) {
        let Some(info) = self.conns.remove(&id) else {
            return;
        };
        dec(&mut self.per_vhost, &info.vhost);
        dec(&mut self.per_user, &info.user);
        self.retired
            .entry(info.vhost.clone())
            .or_default()
            .add(&info.meta.stats.totals());
        for _ in 0..info.channels() {
            dec(&mut self.user_channels, &info.user);
        }
        self.churn.connections_closed += 1;
        self.churn.channels_closed += info.channels();
    }

    /// Counts a channel opened on `info`, unless the user's channel limit is reached.
    pub fn open_channel(&mut self, info: &ConnectionInfo, ulim: UserLimits) -> CoreResult<()> {
        let n = self.user_channels.get(&info.user).copied().unwrap_or(0);
        if let Some(max) = ulim.max_channels {
            if n >= max {
                return Err(CoreError::LimitReached(format!(
                    "number of channels opened for user '{}' has reached the maximum allowed user limit of ({max})",
                    info.user
                )));
            }
        }
        *self.user_channels.entry(info.user.clone()).or_default() += 1;
        info.channels.fetch_add(1, Ordering::Relaxed);
        // Channels of unlisted (API) sessions are not churn: they are never counted closed.
        self.churn.channels_opened += u64::from(self.conns.contains_key(&info.id));
        Ok(())
    }

    /// Counts a channel closed on `info`.
    pub fn close_channel(&mut self, info: &ConnectionInfo) {
        if !self.conns.contains_key(&info.id) {
            return;
        }
        let had = info
            .channels
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if had.is_ok() {
            dec(&mut self.user_channels, &info.user);
            self.churn.channels_closed += 1;
        }
    }

    /// Every live connection.
    pub fn all(&self) -> Vec<Arc<ConnectionInfo>> {
        self.conns.values().cloned().collect()
    }

    /// Counters of every connection of `vhost` (all vhosts with `None`), closed ones
    /// included.
    pub fn totals(&self, vhost: Option<&str>) -> ConnectionTotals {
        let mut t = match vhost {
            None => self.retired_gone,
            Some(_) => ConnectionTotals::default(),
        };
        for (v, r) in &self.retired {
            if vhost.is_none_or(|x| x == v) {
                t.add(r);
            }
        }
        for c in self.conns.values() {
            if vhost.is_none_or(|x| x == c.vhost) {
                t.add(&c.meta.stats.totals());
            }
        }
        t
    }

    /// Keeps the counters of a connection that was never listed (what an HTTP API call
    /// works through) in its vhost's totals, as RabbitMQ counts the API's publishes.
    pub fn retire_unlisted(&mut self, info: &ConnectionInfo) {
        if self.conns.contains_key(&info.id) {
            return;
        }
        let t = info.meta.stats.totals();
        if t != ConnectionTotals::default() {
            self.retired.entry(info.vhost.clone()).or_default().add(&t);
        }
    }

    /// [`Registry::totals`] of every vhost at once, in one pass (the rate sampler reads them
    /// every few seconds; a pass per vhost would hold the registry for vhosts × connections).
    pub fn totals_by_vhost(&self) -> HashMap<String, ConnectionTotals> {
        let mut m = self.retired.clone();
        for c in self.conns.values() {
            m.entry(c.vhost.clone())
                .or_default()
                .add(&c.meta.stats.totals());
        }
        m
    }

    /// Forgets the closed connections' counters of a deleted vhost (they stay in the
    /// broker's totals).
    pub fn forget_vhost(&mut self, vhost: &str) {
        if let Some(r) = self.retired.remove(vhost) {
            self.retired_gone.add(&r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ConnectionMeta {
        ConnectionMeta {
            peer: None,
            protocol: "test",
            ..Default::default()
        }
    }

    #[test]
    fn limits_count_live_connections_and_channels() {
        let mut r = Registry::default();
        let vlim = VHostLimits {
            max_connections: Some(2),
            max_queues: None,
        };
        let ulim = UserLimits {
            max_connections: Some(1),
            max_channels: Some(2),
        };
        let a = r.register(1, "u", "/", meta(), vlim, ulim).unwrap();
        let e = r.register(2, "u", "/", meta(), vlim, ulim).unwrap_err();
        assert!(e.to_string().contains("user connection limit (1)"), "{e}");
        r.register(3, "v", "/", meta(), vlim, UserLimits::default())
            .unwrap();
        let e = r
            .register(4, "w", "/", meta(), vlim, UserLimits::default())
            .unwrap_err();
        assert!(
            e.to_string().contains("connection limit (2) is reached"),
            "{e}"
        );
        r.open_channel(&a, ulim).unwrap();
        r.open_channel(&a, ulim).unwrap();
        assert!(r.open_channel(&a, ulim).is_err());
        r.close_channel(&a);
        r.open_channel(&a, ulim).unwrap();
        r.unregister(1);
        assert!(r.user_channels.is_empty());
        r.register(5, "u", "/", meta(), vlim, ulim).unwrap();
    }

    #[test]
    fn totals_keep_closed_connections_and_deleted_vhosts() {
        let mut r = Registry::default();
        let (vl, ul) = (VHostLimits::default(), UserLimits::default());
        let a = r.register(1, "u", "a", meta(), vl, ul).unwrap();
        let b = r.register(2, "u", "b", meta(), vl, ul).unwrap();
        ConnectionStats::bump(&a.meta.stats.publish, 3);
        ConnectionStats::bump(&b.meta.stats.publish, 4);
        r.unregister(1);
        let by = r.totals_by_vhost();
        assert_eq!((by["a"].publish, by["b"].publish), (3, 4));
        assert_eq!(r.totals(Some("a")).publish, 3);
        // A deleted vhost's closed connections leave its totals, not the broker's.
        r.forget_vhost("a");
        assert_eq!(r.totals(Some("a")).publish, 0);
        assert_eq!(r.totals(None).publish, 7);
        assert!(!r.totals_by_vhost().contains_key("a"));
        // An unlisted (HTTP API) connection's counters join its vhost's when it ends.
        let api = ConnectionInfo::unlisted(9, "u", "b", meta());
        ConnectionStats::bump(&api.meta.stats.publish, 2);
        r.retire_unlisted(&api);
        assert_eq!(r.totals(Some("b")).publish, 6);
        // A listed one is counted once, when it unregisters.
        r.retire_unlisted(&b);
        assert_eq!(r.totals(Some("b")).publish, 6);
    }
}
