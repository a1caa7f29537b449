//! Message rates: a sampler reads every queue's and connection's counters every few seconds
//! and keeps the last rate of each, plus a short history of the broker-wide totals for the
//! overview charts (`msg_rates_age` / `lengths_age`).

use ferrymq_core::queue::QueueCounts;
use ferrymq_core::stats::{ConnectionTotals, QueueStats};
use ferrymq_core::{Broker, ConnectionId};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// How often counters are sampled (RabbitMQ's default `collect_statistics_interval`).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// How many overview samples are kept (10 minutes, RabbitMQ's shortest retention).
const HISTORY: usize = 120;

/// Broker-wide counters and lengths at one sampling instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Wall-clock time of the sample (ms since the epoch).
    pub at: u64,
    /// Summed queue counters (of deleted queues too).
    pub queues: QueueStats,
    /// Summed connection counters (of closed connections too).
    pub conns: ConnectionTotals,
    /// Ready messages.
    pub ready: u64,
    /// Unacknowledged messages.
    pub unacked: u64,
}

/// Per-second rates between two samples of the same counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueRates {
    /// Rates of the [`QueueStats`] counters, in the same order as its fields.
    pub stats: [f64; 8],
    /// Rate of change of ready and unacked counts.
    pub ready: f64,
    /// See `ready`.
    pub unacked: f64,
}

#[derive(Default)]
struct State {
    /// The last sample of each queue (vhost, name) and the rates it gave.
    queues: HashMap<(String, String), (QueueCounts, QueueStats, QueueRates)>,
    /// Counters of queues that are gone, so totals never go backwards.
    retired: QueueStats,
    /// The last sample of each connection and its byte rates (recv, send).
    conns: HashMap<ConnectionId, (ConnectionTotals, f64, f64)>,
    /// Per-vhost totals history (the overview is the sum), newest last.
    history: HashMap<String, VecDeque<Totals>>,
    overall: VecDeque<Totals>,
}

/// The sampler's results, shared with the request handlers.
#[derive(Default)]
pub struct Rates {
    state: Mutex<State>,
}

fn as_array(s: &QueueStats) -> [u64; 8] {
    [
        s.publish,
        s.deliver,
        s.deliver_no_ack,
        s.get,
        s.get_no_ack,
        s.get_empty,
        s.redeliver,
        s.ack,
    ]
}

fn per_sec(now: u64, then: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(then) as f64 / secs
}

impl Rates {
    /// Samples every queue and connection now.
    pub fn sample(&self, broker: &Broker) {
        let secs = SAMPLE_INTERVAL.as_secs_f64();
        let at = ferrymq_core::expiry::wall_ms();
        let mut seen: HashMap<(String, String), (QueueCounts, QueueStats, QueueRates)> =
            HashMap::new();
        let mut per_vhost: HashMap<String, Totals> = HashMap::new();
        let mut st = self.state.lock();
        let vhosts = broker.vhosts();
        for v in &vhosts {
            let t = per_vhost.entry(v.name.clone()).or_default();
            t.at = at;
            t.conns = broker.connection_totals(Some(&v.name));
            for q in v.queues() {
                let (counts, stats) = q.stats();
                let key = (v.name.clone(), q.name.clone());
                let rates = match st.queues.get(&key) {
                    Some((pc, ps, _)) => {
                        let (a, b) = (as_array(&stats), as_array(ps));
                        let mut r = QueueRates::default();
                        for i in 0..8 {
                            r.stats[i] = per_sec(a[i], b[i], secs);
                        }
                        r.ready = (counts.messages as f64 - pc.messages as f64) / secs;
                        r.unacked = (counts.unacked as f64 - pc.unacked as f64) / secs;
                        r
                    }
                    None => QueueRates::default(),
                };
                t.queues.add(&stats);
                t.ready += counts.messages as u64;
                t.unacked += counts.unacked as u64;
                seen.insert(key, (counts, stats, rates));
            }
        }
        let gone: Vec<QueueStats> = st
            .queues
            .iter()
            .filter(|(k, _)| !seen.contains_key(*k))
            .map(|(_, (_, s, _))| *s)
            .collect();
        for s in gone {
            st.retired.add(&s);
        }
        st.queues = seen;
        let mut conns = HashMap::new();
        for c in broker.connections() {
            let now = c.meta.stats.totals();
            let (r, s) = match st.conns.get(&c.id) {
                Some((p, _, _)) => (
                    per_sec(now.recv_oct, p.recv_oct, secs),
                    per_sec(now.send_oct, p.send_oct, secs),
                ),
                None => (0.0, 0.0),
            };
            conns.insert(c.id, (now, r, s));
        }
        st.conns = conns;
        let mut overall = Totals {
            at,
            queues: st.retired,
            conns: broker.connection_totals(None),
            ..Totals::default()
        };
        for t in per_vhost.values() {
            overall.queues.add(&t.queues);
            overall.ready += t.ready;
            overall.unacked += t.unacked;
        }
        push(&mut st.overall, overall);
        st.history.retain(|k, _| per_vhost.contains_key(k));
        for (k, t) in per_vhost {
            push(st.history.entry(k).or_default(), t);
        }
    }

    /// A queue's last rates, if it was sampled.
    pub fn queue(&self, vhost: &str, name: &str) -> Option<QueueRates> {
        self.state
            .lock()
            .queues
            .get(&(vhost.to_string(), name.to_string()))
            .map(|x| x.2)
    }

    /// A connection's receive and send byte rates.
    pub fn connection(&self, id: ConnectionId) -> (f64, f64) {
        self.state
            .lock()
            .conns
            .get(&id)
            .map_or((0.0, 0.0), |x| (x.1, x.2))
    }

    /// The broker-wide totals history (all vhosts with `None`), oldest first.
    pub fn history(&self, vhost: Option<&str>) -> Vec<Totals> {
        let st = self.state.lock();
        match vhost {
            None => st.overall.iter().copied().collect(),
            Some(v) => st
                .history
                .get(v)
                .map(|h| h.iter().copied().collect())
                .unwrap_or_default(),
        }
    }

    /// Samples every [`SAMPLE_INTERVAL`] until `stop` says so. Runs on a blocking thread:
    /// a pass over 100,000 queues must not hold up request handlers.
    pub async fn run(
        self: Arc<Self>,
        broker: Arc<Broker>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let (me, b) = (self.clone(), broker.clone());
            let _ = tokio::task::spawn_blocking(move || me.sample(&b)).await;
        }
    }
}

fn push(h: &mut VecDeque<Totals>, t: Totals) {
    if h.len() == HISTORY {
        h.pop_front();
    }
    h.push_back(t);
}

/// Rate of a counter between the last two samples of a history.
pub fn history_rate(h: &[Totals], f: impl Fn(&Totals) -> u64) -> f64 {
    match h {
        [.., a, b] => {
            let secs = (b.at.saturating_sub(a.at)) as f64 / 1000.0;
            per_sec(f(b), f(a), secs)
        }
        _ => 0.0,
    }
}
