//! One pass over the broker's state at scrape time: every queue, connection and channel read
//! once, so each family is encoded from the same instant.

use crate::Api;
use ferrymq_core::queue_config::QueueType;
use ferrymq_core::stats::{
    ChannelInfo, ConnectionChurn, ConnectionTotals, QueueHistory, QueueStats,
};
use std::collections::HashSet;
use std::sync::atomic::Ordering;

/// One queue's numbers.
pub(crate) struct QueueRow {
    pub vhost: String,
    pub name: String,
    pub quorum: bool,
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
    pub ready_bytes: u64,
    pub paged_out: u64,
    pub paged_out_bytes: u64,
    pub stats: QueueStats,
}

/// One channel's numbers.
pub(crate) struct ChannelRow {
    pub name: String,
    pub vhost: String,
    pub consumers: u64,
    pub unacked: u64,
    pub unconfirmed: u64,
    pub prefetch: u64,
    pub global_prefetch: u64,
    pub publish: u64,
    pub confirmed: u64,
    pub returned: u64,
    pub dropped: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub redeliver: u64,
    pub ack: u64,
    pub get_empty: u64,
}

/// One connection's numbers.
pub(crate) struct ConnectionRow {
    pub name: String,
    pub totals: ConnectionTotals,
    pub channels: u64,
}

/// An exchange and its binding count.
pub(crate) struct ExchangeRow {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub bindings: u64,
}

/// Everything one scrape reports.
pub(crate) struct Snapshot {
    pub queues: Vec<QueueRow>,
    pub channels: Vec<ChannelRow>,
    pub connections: Vec<ConnectionRow>,
    pub exchanges: Vec<ExchangeRow>,
    /// Counters of every connection (closed ones too).
    pub conn_totals: ConnectionTotals,
    pub churn: ConnectionChurn,
    pub history: QueueHistory,
    /// Every open connection, whatever `vhost=` asked for (a node figure).
    pub open_connections: u64,
}

fn channel_row(name: String, vhost: &str, c: &ChannelInfo) -> ChannelRow {
    let g = ChannelInfo::get;
    ChannelRow {
        name,
        vhost: vhost.to_string(),
        consumers: g(&c.consumers),
        unacked: g(&c.unacked),
        unconfirmed: g(&c.unconfirmed),
        prefetch: g(&c.prefetch),
        global_prefetch: g(&c.global_prefetch),
        publish: g(&c.publish),
        confirmed: g(&c.confirmed),
        returned: g(&c.return_unroutable),
        dropped: g(&c.drop_unroutable),
        get: g(&c.get),
        get_no_ack: g(&c.get_no_ack),
        deliver: g(&c.deliver),
        deliver_no_ack: g(&c.deliver_no_ack),
        redeliver: g(&c.redeliver),
        ack: g(&c.ack),
        get_empty: g(&c.get_empty),
    }
}

impl Snapshot {
    /// Reads the broker; `vhosts` limits queues, exchanges, connections and channels to
    /// those vhosts (`/metrics/detailed?vhost=`), `exchanges` says whether to list them.
    pub fn take(api: &Api, vhosts: Option<&HashSet<String>>, exchanges: bool) -> Snapshot {
        let b = &api.broker;
        let wanted = |v: &str| vhosts.is_none_or(|s| s.contains(v));
        let mut queues = Vec::new();
        let mut xs = Vec::new();
        // Deleted queues' counters read with the live ones, so each queue counts once.
        let history = b.walk_queues(|v, qs| {
            if !wanted(&v.name) {
                return;
            }
            for q in qs {
                let s = q.snapshot();
                queues.push(QueueRow {
                    vhost: v.name.clone(),
                    name: q.name.clone(),
                    quorum: s.queue_type == QueueType::Quorum,
                    ready: s.counts.messages as u64,
                    unacked: s.counts.unacked as u64,
                    consumers: s.counts.consumers as u64,
                    ready_bytes: s.ready_bytes as u64,
                    paged_out: s.paged_out.0 as u64,
                    paged_out_bytes: s.paged_out.1 as u64,
                    stats: s.stats,
                });
            }
            if exchanges {
                for x in v.exchanges() {
                    xs.push(ExchangeRow {
                        vhost: v.name.clone(),
                        name: x.name.clone(),
                        kind: x.type_name().to_string(),
                        bindings: x.bindings().len() as u64,
                    });
                }
            }
        });
        // Stable output: scrapes diff well and tests read it in order.
        queues.sort_unstable_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        xs.sort_unstable_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        let mut channels = Vec::new();
        let mut connections = Vec::new();
        let all = b.connections();
        let open_connections = all.len() as u64;
        for c in all {
            if !wanted(&c.vhost) {
                continue;
            }
            let name = crate::views::connection_name(&c);
            for ch in c.channel_list() {
                channels.push(channel_row(
                    format!("{name} ({})", ch.number),
                    &c.vhost,
                    &ch,
                ));
            }
            connections.push(ConnectionRow {
                totals: c.meta.stats.totals(),
                channels: c.channels(),
                name,
            });
        }
        Snapshot {
            queues,
            channels,
            connections,
            exchanges: xs,
            conn_totals: b.connection_totals(None),
            churn: b.connection_churn(),
            history,
            open_connections,
        }
    }

    /// Queue counters summed per queue type, deleted queues included (so they never go
    /// backwards): (classic, quorum).
    pub fn queue_totals(&self) -> (QueueStats, QueueStats) {
        let (mut classic, mut quorum) = (self.history.retired_classic, self.history.retired_quorum);
        for q in &self.queues {
            match q.quorum {
                true => quorum.add(&q.stats),
                false => classic.add(&q.stats),
            }
        }
        (classic, quorum)
    }
}

/// The process's resident memory in bytes.
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Open file descriptors.
pub(crate) fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// The soft limit on open file descriptors.
pub(crate) fn max_fds() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Reads an atomic reading of the node.
pub(crate) fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}
