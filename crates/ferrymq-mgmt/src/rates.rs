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
    /// Counters of queues that are gone, per vhost, so totals never go backwards.
    retired: HashMap<String, QueueStats>,
    /// Counters of the queues of vhosts that are gone (still in the broker's totals).
    retired_gone: QueueStats,
    /// The last sample of each connection and its byte rates (recv, send).
    conns: HashMap<ConnectionId, (ConnectionTotals, f64, f64)>,
    /// The last sample of each channel's counters ([`channel_counters`]) and their rates.
    channels: HashMap<(ConnectionId, u16), ([u64; CHANNEL_COUNTERS], [f64; CHANNEL_COUNTERS])>,
    /// Per-vhost totals history (the overview is the sum), newest last.
    history: HashMap<String, VecDeque<Totals>>,
    overall: VecDeque<Totals>,
}

/// The sampler's results, shared with the request handlers.
#[derive(Default)]
pub struct Rates {
    state: Mutex<State>,
}

/// How many counters a channel has in [`channel_counters`].
pub const CHANNEL_COUNTERS: usize = 11;

/// A channel's counters in the order `views::channel_json` names them: publish, confirm,
/// return_unroutable, drop_unroutable, deliver, deliver_no_ack, get, get_no_ack, get_empty,
/// redeliver, ack.
pub fn channel_counters(c: &ferrymq_core::stats::ChannelInfo) -> [u64; CHANNEL_COUNTERS] {
    let g = ferrymq_core::stats::ChannelInfo::get;
    [
        g(&c.publish),
        g(&c.confirmed),
        g(&c.return_unroutable),
        g(&c.drop_unroutable),
        g(&c.deliver),
        g(&c.deliver_no_ack),
        g(&c.get),
        g(&c.get_no_ack),
        g(&c.get_empty),
        g(&c.redeliver),
        g(&c.ack),
    ]
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
    /// Samples every queue and connection now. The counters are read before the state is
    /// locked: request handlers look rates up while a pass over many queues runs.
    pub fn sample(&self, broker: &Broker) {
        let secs = SAMPLE_INTERVAL.as_secs_f64();
        let at = ferrymq_core::expiry::wall_ms();
        let mut read = Vec::new();
        let mut per_vhost: HashMap<String, Totals> = HashMap::new();
        let mut conn_totals = broker.connection_totals_by_vhost();
        for v in broker.vhosts() {
            let t = per_vhost.entry(v.name.clone()).or_default();
            t.at = at;
            t.conns = conn_totals.remove(&v.name).unwrap_or_default();
            for q in v.queues() {
                let (counts, stats) = q.stats();
                read.push(((v.name.clone(), q.name.clone()), counts, stats));
            }
        }
        let live = broker.connections();
        let conns_now: Vec<(ConnectionId, ConnectionTotals)> =
            live.iter().map(|c| (c.id, c.meta.stats.totals())).collect();
        let channels_now: Vec<((ConnectionId, u16), [u64; CHANNEL_COUNTERS])> = live
            .iter()
            .flat_map(|c| {
                c.channel_list()
                    .into_iter()
                    .map(move |ch| ((c.id, ch.number), channel_counters(&ch)))
            })
            .collect();
        let overall_conns = broker.connection_totals(None);

        let mut st = self.state.lock();
        let st = &mut *st;
        let mut seen: HashMap<(String, String), (QueueCounts, QueueStats, QueueRates)> =
            HashMap::with_capacity(read.len());
        for (key, counts, stats) in read {
            let prev = st.queues.remove(&key);
            let rates = match prev {
                // Counters that went back belong to a queue deleted and declared again
                // between two samples: the old one's are retired, the new one starts at 0.
                Some((_, ps, _))
                    if as_array(&stats)
                        .iter()
                        .zip(as_array(&ps))
                        .any(|(a, b)| *a < b) =>
                {
                    st.retired.entry(key.0.clone()).or_default().add(&ps);
                    QueueRates::default()
                }
                Some((pc, ps, _)) => {
                    let (a, b) = (as_array(&stats), as_array(&ps));
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
            let t = per_vhost.entry(key.0.clone()).or_default();
            t.queues.add(&stats);
            t.ready += counts.messages as u64;
            t.unacked += counts.unacked as u64;
            seen.insert(key, (counts, stats, rates));
        }
        // What is left were queues that are gone: their counters stay in their vhost's
        // totals (and in the broker's once the vhost is gone too).
        for ((vhost, _), (_, s, _)) in std::mem::replace(&mut st.queues, seen) {
            st.retired.entry(vhost).or_default().add(&s);
        }
        let gone: Vec<String> = st
            .retired
            .keys()
            .filter(|v| !per_vhost.contains_key(*v))
            .cloned()
            .collect();
        for v in gone {
            if let Some(s) = st.retired.remove(&v) {
                st.retired_gone.add(&s);
            }
        }
        for (v, t) in per_vhost.iter_mut() {
            if let Some(r) = st.retired.get(v) {
                t.queues.add(r);
            }
        }
        let mut conns = HashMap::with_capacity(conns_now.len());
        for (id, now) in conns_now {
            let (r, s) = match st.conns.get(&id) {
                Some((p, _, _)) => (
                    per_sec(now.recv_oct, p.recv_oct, secs),
                    per_sec(now.send_oct, p.send_oct, secs),
                ),
                None => (0.0, 0.0),
            };
            conns.insert(id, (now, r, s));
        }
        st.conns = conns;
        let mut channels = HashMap::with_capacity(channels_now.len());
        for (key, now) in channels_now {
            let mut r = [0.0; CHANNEL_COUNTERS];
            if let Some((prev, _)) = st.channels.get(&key) {
                for i in 0..CHANNEL_COUNTERS {
                    r[i] = per_sec(now[i], prev[i], secs);
                }
            }
            channels.insert(key, (now, r));
        }
        st.channels = channels;
        let mut overall = Totals {
            at,
            queues: st.retired_gone,
            conns: overall_conns,
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

    /// A channel's counter rates ([`channel_counters`] order), zero until sampled twice.
    pub fn channel(&self, conn: ConnectionId, number: u16) -> [f64; CHANNEL_COUNTERS] {
        self.state
            .lock()
            .channels
            .get(&(conn, number))
            .map_or([0.0; CHANNEL_COUNTERS], |x| x.1)
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymq_core::message::{Message, Properties};
    use ferrymq_core::queue::QueueOptions;
    use ferrymq_core::BrokerConfig;

    fn publish(s: &ferrymq_core::Session, queue: &str, n: usize) {
        for _ in 0..n {
            let m =
                Message::from_properties("", queue, &Properties::default(), "m".into()).unwrap();
            s.publish("", Arc::new(m)).unwrap();
        }
    }

    fn published(h: &[Totals]) -> u64 {
        h.last().unwrap().queues.publish
    }

    #[test]
    fn totals_keep_deleted_queues_counters_also_when_declared_again() {
        let b = Broker::new(BrokerConfig::default());
        let s = b.api_session("guest", "/").unwrap();
        let rates = Rates::default();
        for q in ["a", "b"] {
            s.declare_queue(q, QueueOptions::default(), false).unwrap();
        }
        publish(&s, "a", 3);
        publish(&s, "b", 2);
        rates.sample(&b);
        assert_eq!(published(&rates.history(Some("/"))), 5);
        // `b` is deleted: its counters stay in the vhost's totals, not only the broker's.
        s.delete_queue("b", false, false).unwrap();
        rates.sample(&b);
        assert_eq!(published(&rates.history(Some("/"))), 5);
        assert_eq!(published(&rates.history(None)), 5);
        // `a` is deleted and declared again between two samples: its new counters start
        // at 0, its old ones are kept.
        s.delete_queue("a", false, false).unwrap();
        s.declare_queue("a", QueueOptions::default(), false)
            .unwrap();
        publish(&s, "a", 1);
        rates.sample(&b);
        assert_eq!(published(&rates.history(Some("/"))), 6);
        assert_eq!(published(&rates.history(None)), 6);
        assert_eq!(rates.queue("/", "a").unwrap().stats[0], 0.0);
        // The vhost is deleted: the broker's totals keep its counters.
        b.add_vhost("v").unwrap();
        b.set_permissions("guest", "v", ferrymq_core::access::Permission::all())
            .unwrap();
        let sv = b.api_session("guest", "v").unwrap();
        sv.declare_queue("q", QueueOptions::default(), false)
            .unwrap();
        publish(&sv, "q", 4);
        rates.sample(&b);
        assert_eq!(published(&rates.history(None)), 10);
        drop(sv);
        b.delete_vhost("v").unwrap();
        rates.sample(&b);
        assert_eq!(published(&rates.history(None)), 10);
        assert!(rates.history(Some("v")).is_empty());
    }
}
