//! The metric families, named and grouped as rabbitmq_prometheus names and groups them (its
//! `/metrics/detailed?family=` names), encoded from one [`Snapshot`].

use super::snapshot::{self, ChannelRow, ConnectionRow, QueueRow, Snapshot};
use super::Scope;
use crate::Api;
use ferrymq_core::stats::QueueStats;
use ferrymq_store::histogram::HistogramSnapshot;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

/// A group of metrics that `/metrics/detailed` can ask for by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    ConnectionChurn,
    NodeCoarse,
    Node,
    QueueCoarse,
    QueueConsumerCount,
    Queue,
    ChannelQueueExchange,
    Channel,
    ChannelExchange,
    ChannelQueue,
    ConnectionCoarse,
    Connection,
    ExchangeNames,
    ExchangeBindings,
    /// Object counts, global counters, alarms and FerryMQ's histograms: in `/metrics` and
    /// `/metrics/per-object`, not a detailed family.
    Overview,
}

impl Family {
    /// The family `name` as rabbitmq_prometheus spells it.
    pub fn parse(name: &str) -> Option<Family> {
        Some(match name {
            "connection_churn_metrics" => Family::ConnectionChurn,
            "node_coarse_metrics" => Family::NodeCoarse,
            "node_metrics" => Family::Node,
            "queue_coarse_metrics" => Family::QueueCoarse,
            "queue_consumer_count" => Family::QueueConsumerCount,
            "queue_metrics" => Family::Queue,
            "channel_queue_exchange_metrics" => Family::ChannelQueueExchange,
            "channel_metrics" => Family::Channel,
            "channel_exchange_metrics" => Family::ChannelExchange,
            "channel_queue_metrics" => Family::ChannelQueue,
            "connection_coarse_metrics" => Family::ConnectionCoarse,
            "connection_metrics" => Family::Connection,
            "exchange_names" => Family::ExchangeNames,
            "exchange_bindings" => Family::ExchangeBindings,
            _ => return None,
        })
    }

    /// Whether `/metrics` and `/metrics/per-object` include it.
    pub fn in_default_set(self) -> bool {
        !matches!(
            self,
            Family::ExchangeNames | Family::ExchangeBindings | Family::QueueConsumerCount
        )
    }
}

type Labels = Vec<(&'static str, String)>;

/// A label value as the text format needs it: prometheus-client writes values as given, and
/// a queue named with a quote or a newline would otherwise break the whole exposition.
fn esc(s: &str) -> String {
    if !s.contains(['\\', '"', '\n']) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes metrics with the scope's prefix.
struct Out<'a, 'e> {
    enc: &'a mut DescriptorEncoder<'e>,
    prefix: &'static str,
}

impl Out<'_, '_> {
    fn write(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        samples: Vec<(Labels, f64)>,
    ) -> Result<(), std::fmt::Error> {
        let full = format!("{}{name}", self.prefix);
        let mut m = self.enc.encode_descriptor(&full, help, None, kind)?;
        for (labels, v) in samples {
            if labels.is_empty() {
                Self::value(&mut m, kind, v)?;
            } else {
                Self::value(&mut m.encode_family(&labels)?, kind, v)?;
            }
        }
        Ok(())
    }

    fn value(
        m: &mut prometheus_client::encoding::MetricEncoder,
        kind: MetricType,
        v: f64,
    ) -> Result<(), std::fmt::Error> {
        match kind {
            MetricType::Counter => m.encode_counter::<Labels, f64, f64>(&v, None),
            _ => m.encode_gauge(&v),
        }
    }

    /// A gauge: `name` as it is exposed.
    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        samples: Vec<(Labels, f64)>,
    ) -> Result<(), std::fmt::Error> {
        self.write(name, help, MetricType::Gauge, samples)
    }

    /// A counter: `name` without its `_total`, which the encoder adds.
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: Vec<(Labels, f64)>,
    ) -> Result<(), std::fmt::Error> {
        self.write(name, help, MetricType::Counter, samples)
    }

    fn one_gauge(&mut self, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
        self.gauge(name, help, vec![(vec![], v as f64)])
    }

    fn one_counter(&mut self, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
        self.counter(name, help, vec![(vec![], v as f64)])
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        h: &HistogramSnapshot,
    ) -> Result<(), std::fmt::Error> {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        // The encoder takes per-bucket counts and accumulates them itself.
        let mut buckets = Vec::with_capacity(h.buckets.len() + 1);
        let mut prev = 0;
        for (le, cum) in &h.buckets {
            buckets.push((*le, cum.saturating_sub(prev)));
            prev = *cum;
        }
        buckets.push((f64::MAX, h.count.saturating_sub(prev)));
        m.encode_histogram::<Labels>(h.sum, h.count, &buckets, None)
    }
}

/// Per object, or one sum without labels.
fn rows<T>(
    per_object: bool,
    items: &[T],
    labels: impl Fn(&T) -> Labels,
    value: impl Fn(&T) -> u64,
) -> Vec<(Labels, f64)> {
    if per_object {
        items.iter().map(|i| (labels(i), value(i) as f64)).collect()
    } else {
        vec![(vec![], items.iter().map(&value).sum::<u64>() as f64)]
    }
}

fn queue_labels(q: &QueueRow) -> Labels {
    vec![("vhost", esc(&q.vhost)), ("queue", esc(&q.name))]
}

fn channel_labels(c: &ChannelRow) -> Labels {
    vec![("channel", esc(&c.name))]
}

fn channel_exchange_labels(c: &ChannelRow) -> Labels {
    // The exchange is not tracked per channel: the series carries the channel's vhost.
    vec![("channel", esc(&c.name)), ("vhost", esc(&c.vhost))]
}

fn connection_labels(c: &ConnectionRow) -> Labels {
    vec![("connection", esc(&c.name))]
}

/// Encodes every family `scope` asks for.
pub(crate) fn encode(
    api: &Api,
    scope: &Scope,
    mut enc: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let exchanges = scope.wants(Family::ExchangeNames) || scope.wants(Family::ExchangeBindings);
    let snap = Snapshot::take(api, scope.vhosts.as_ref(), exchanges);
    identity(api, &mut enc)?;
    let mut out = Out {
        enc: &mut enc,
        prefix: scope.prefix,
    };
    let po = scope.per_object;
    if scope.wants(Family::ConnectionChurn) {
        churn(&mut out, &snap)?;
    }
    if scope.wants(Family::NodeCoarse) {
        let o = &mut out;
        o.one_gauge(
            "process_open_fds",
            "Open file descriptors",
            snapshot::open_fds(),
        )?;
        o.one_gauge(
            "process_open_tcp_sockets",
            "Open TCP sockets",
            snap.open_connections,
        )?;
        o.one_gauge(
            "process_resident_memory_bytes",
            "Memory used in bytes",
            snapshot::rss_bytes(),
        )?;
        o.one_gauge(
            "disk_space_available_bytes",
            "Disk space available in bytes",
            snapshot::load(&api.broker.resources.disk_free),
        )?;
    }
    if scope.wants(Family::Node) {
        let o = &mut out;
        let r = &api.broker.resources;
        o.one_gauge(
            "process_max_fds",
            "Open file descriptors limit",
            snapshot::max_fds(),
        )?;
        o.one_gauge(
            "process_max_tcp_sockets",
            "Open TCP sockets limit",
            snapshot::max_fds(),
        )?;
        o.one_gauge(
            "resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            snapshot::load(&r.memory_limit),
        )?;
        o.one_gauge(
            "disk_space_available_limit_bytes",
            "Free disk space low watermark in bytes",
            snapshot::load(&r.disk_free_limit),
        )?;
        o.one_gauge(
            "erlang_uptime_seconds",
            "Node uptime (the name RabbitMQ's dashboards query)",
            ferrymq_core::expiry::wall_ms().saturating_sub(api.started_at) / 1000,
        )?;
    }
    let q = &snap.queues;
    if scope.wants(Family::QueueCoarse) {
        out.gauge(
            "queue_messages_ready",
            "Messages ready to be delivered to consumers",
            rows(po, q, queue_labels, |q| q.ready),
        )?;
        out.gauge(
            "queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            rows(po, q, queue_labels, |q| q.unacked),
        )?;
        out.gauge(
            "queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            rows(po, q, queue_labels, |q| q.ready + q.unacked),
        )?;
    }
    if scope.wants(Family::Queue) || scope.wants(Family::QueueConsumerCount) {
        out.gauge(
            "queue_consumers",
            "Consumers on a queue",
            rows(po, q, queue_labels, |q| q.consumers),
        )?;
    }
    if scope.wants(Family::Queue) {
        out.gauge(
            "queue_messages_bytes",
            "Size in bytes of ready messages (unacknowledged ones are not counted)",
            rows(po, q, queue_labels, |q| q.ready_bytes),
        )?;
        out.gauge(
            "queue_messages_ready_bytes",
            "Size in bytes of ready messages",
            rows(po, q, queue_labels, |q| q.ready_bytes),
        )?;
        out.gauge(
            "queue_messages_paged_out",
            "Messages paged out to disk",
            rows(po, q, queue_labels, |q| q.paged_out),
        )?;
        out.gauge(
            "queue_messages_paged_out_bytes",
            "Size in bytes of messages paged out to disk",
            rows(po, q, queue_labels, |q| q.paged_out_bytes),
        )?;
    }
    if scope.wants(Family::ChannelQueueExchange) {
        out.counter(
            "queue_messages_published",
            "Total number of messages published to queues",
            rows(po, q, queue_labels, |q| q.stats.publish),
        )?;
    }
    channel_families(&mut out, scope, &snap)?;
    connection_families(&mut out, scope, &snap)?;
    // Cluster-wide families are `rabbitmq_cluster_` on every endpoint, as in rabbitmq_prometheus.
    let prefix = std::mem::replace(&mut out.prefix, "rabbitmq_cluster_");
    if scope.wants(Family::ExchangeNames) {
        let s = snap
            .exchanges
            .iter()
            .map(|x| (exchange_labels(x), 1.0))
            .collect();
        out.gauge(
            "exchange_name",
            "Enumerates exchanges without any additional info. This value is cluster-wide.",
            s,
        )?;
    }
    if scope.wants(Family::ExchangeBindings) {
        let s = snap
            .exchanges
            .iter()
            .map(|x| (exchange_labels(x), x.bindings as f64))
            .collect();
        out.gauge(
            "exchange_bindings",
            "Number of bindings for an exchange. This value is cluster-wide.",
            s,
        )?;
    }
    out.prefix = prefix;
    if scope.wants(Family::Overview) {
        overview(&mut out, &snap)?;
        global(&mut out, api, &snap)?;
        ferrymq_own(&mut out)?;
    }
    Ok(())
}

fn exchange_labels(x: &snapshot::ExchangeRow) -> Labels {
    vec![
        ("vhost", esc(&x.vhost)),
        ("exchange", esc(&x.name)),
        ("type", x.kind.clone()),
    ]
}

fn identity(api: &Api, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut out = Out {
        enc,
        prefix: "rabbitmq_",
    };
    out.gauge(
        "identity_info",
        "RabbitMQ node & cluster identity info",
        vec![(
            vec![
                ("rabbitmq_node", esc(&api.node)),
                ("rabbitmq_cluster", esc(&api.node)),
                ("rabbitmq_cluster_permanent_id", esc(&api.node)),
            ],
            1.0,
        )],
    )?;
    out.gauge(
        "build_info",
        "RabbitMQ & Erlang/OTP version info",
        vec![(
            vec![
                (
                    "rabbitmq_version",
                    crate::routes::RABBITMQ_COMPAT_VERSION.to_string(),
                ),
                ("product_name", "FerryMQ".to_string()),
                ("product_version", env!("CARGO_PKG_VERSION").to_string()),
                (
                    "prometheus_plugin_version",
                    env!("CARGO_PKG_VERSION").to_string(),
                ),
            ],
            1.0,
        )],
    )
}

fn churn(o: &mut Out, s: &Snapshot) -> Result<(), std::fmt::Error> {
    let (c, h) = (&s.churn, &s.history);
    o.one_counter(
        "connections_opened",
        "Total number of connections opened",
        c.connections_opened,
    )?;
    o.one_counter(
        "connections_closed",
        "Total number of connections closed or terminated",
        c.connections_closed,
    )?;
    o.one_counter(
        "channels_opened",
        "Total number of channels opened",
        c.channels_opened,
    )?;
    o.one_counter(
        "channels_closed",
        "Total number of channels closed",
        c.channels_closed,
    )?;
    o.one_counter(
        "queues_declared",
        "Total number of queues declared",
        h.declared,
    )?;
    o.one_counter(
        "queues_created",
        "Total number of queues created",
        h.created,
    )?;
    o.one_counter(
        "queues_deleted",
        "Total number of queues deleted",
        h.deleted,
    )
}

fn channel_families(o: &mut Out, scope: &Scope, s: &Snapshot) -> Result<(), std::fmt::Error> {
    let (po, c) = (scope.per_object, &s.channels);
    if scope.wants(Family::Channel) {
        o.gauge(
            "channel_consumers",
            "Consumers on a channel",
            rows(po, c, channel_labels, |c| c.consumers),
        )?;
        o.gauge(
            "channel_messages_unacked",
            "Delivered but not yet acknowledged messages",
            rows(po, c, channel_labels, |c| c.unacked),
        )?;
        o.gauge(
            "channel_messages_unconfirmed",
            "Published but not yet confirmed messages",
            rows(po, c, channel_labels, |c| c.unconfirmed),
        )?;
        o.gauge(
            "consumer_prefetch",
            "Limit of unacknowledged messages for each consumer",
            rows(po, c, channel_labels, |c| c.prefetch),
        )?;
        o.gauge(
            "channel_prefetch",
            "Total limit of unacknowledged messages for all consumers on a channel",
            rows(po, c, channel_labels, |c| c.global_prefetch),
        )?;
    }
    if scope.wants(Family::ChannelExchange) {
        let l = channel_exchange_labels;
        o.counter(
            "channel_messages_published",
            "Total number of messages published into an exchange on a channel",
            rows(po, c, l, |c| c.publish),
        )?;
        o.counter(
            "channel_messages_confirmed",
            "Total number of messages published into an exchange and confirmed on the channel",
            rows(po, c, l, |c| c.confirmed),
        )?;
        o.counter("channel_messages_unroutable_returned", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", rows(po, c, l, |c| c.returned))?;
        o.counter("channel_messages_unroutable_dropped", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", rows(po, c, l, |c| c.dropped))?;
    }
    if scope.wants(Family::ChannelQueue) {
        let l = channel_labels;
        o.counter(
            "channel_get_ack",
            "Total number of messages fetched with basic.get in manual acknowledgement mode",
            rows(po, c, l, |c| c.get),
        )?;
        o.counter(
            "channel_get",
            "Total number of messages fetched with basic.get in automatic acknowledgement mode",
            rows(po, c, l, |c| c.get_no_ack),
        )?;
        o.counter(
            "channel_messages_delivered_ack",
            "Total number of messages delivered to consumers in manual acknowledgement mode",
            rows(po, c, l, |c| c.deliver),
        )?;
        o.counter(
            "channel_messages_delivered",
            "Total number of messages delivered to consumers in automatic acknowledgement mode",
            rows(po, c, l, |c| c.deliver_no_ack),
        )?;
        o.counter(
            "channel_messages_redelivered",
            "Total number of messages redelivered to consumers",
            rows(po, c, l, |c| c.redeliver),
        )?;
        o.counter(
            "channel_messages_acked",
            "Total number of messages acknowledged by consumers",
            rows(po, c, l, |c| c.ack),
        )?;
        o.counter(
            "channel_get_empty",
            "Total number of times basic.get operations fetched no message",
            rows(po, c, l, |c| c.get_empty),
        )?;
    }
    Ok(())
}

fn connection_families(o: &mut Out, scope: &Scope, s: &Snapshot) -> Result<(), std::fmt::Error> {
    let (po, c) = (scope.per_object, &s.connections);
    let l = connection_labels;
    if scope.wants(Family::ConnectionCoarse) {
        o.counter(
            "connection_incoming_bytes",
            "Total number of bytes received on a connection",
            rows(po, c, l, |c| c.totals.recv_oct),
        )?;
        o.counter(
            "connection_outgoing_bytes",
            "Total number of bytes sent on a connection",
            rows(po, c, l, |c| c.totals.send_oct),
        )?;
        o.gauge(
            "connection_channels",
            "Channels on a connection",
            rows(po, c, l, |c| c.channels),
        )?;
    }
    if scope.wants(Family::Connection) {
        o.counter(
            "connection_incoming_packets",
            "Total number of packets received on a connection",
            rows(po, c, l, |c| c.totals.recv_cnt),
        )?;
        o.counter(
            "connection_outgoing_packets",
            "Total number of packets sent on a connection",
            rows(po, c, l, |c| c.totals.send_cnt),
        )?;
    }
    Ok(())
}

fn overview(o: &mut Out, s: &Snapshot) -> Result<(), std::fmt::Error> {
    o.one_gauge(
        "connections",
        "Connections currently open",
        s.connections.len() as u64,
    )?;
    o.one_gauge(
        "channels",
        "Channels currently open",
        s.channels.len() as u64,
    )?;
    let consumers: u64 = s.queues.iter().map(|q| q.consumers).sum();
    o.one_gauge("consumers", "Consumers currently connected", consumers)?;
    o.one_gauge("queues", "Queues available", s.queues.len() as u64)
}

fn proto() -> Labels {
    vec![("protocol", "amqp091".to_string())]
}

fn proto_type(quorum: bool) -> Labels {
    let t = match quorum {
        true => "rabbit_quorum_queue",
        false => "rabbit_classic_queue",
    };
    vec![
        ("protocol", "amqp091".to_string()),
        ("queue_type", t.to_string()),
    ]
}

/// rabbitmq_global_*: counters since the start over every connection and queue, closed and
/// deleted ones included.
fn global(o: &mut Out, api: &Api, s: &Snapshot) -> Result<(), std::fmt::Error> {
    let p = |v: u64| vec![(proto(), v as f64)];
    let consumers: u64 = s.queues.iter().map(|q| q.consumers).sum();
    o.gauge(
        "global_consumers",
        "Current number of consumers",
        p(consumers),
    )?;
    let publishers = s.channels.iter().filter(|c| c.publish > 0).count() as u64;
    o.gauge(
        "global_publishers",
        "Current number of publishers (channels that published)",
        p(publishers),
    )?;
    let t = &s.conn_totals;
    o.counter(
        "global_messages_received",
        "Total number of messages received from publishers",
        p(t.publish),
    )?;
    o.counter(
        "global_messages_received_confirm",
        "Total number of messages received from publishers expecting confirmations",
        p(t.confirm),
    )?;
    let unroutable = t.return_unroutable + t.drop_unroutable;
    o.counter(
        "global_messages_routed",
        "Total number of messages routed to queues or streams",
        p(t.publish.saturating_sub(unroutable)),
    )?;
    o.counter(
        "global_messages_unroutable_dropped",
        "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
        p(t.drop_unroutable),
    )?;
    o.counter(
        "global_messages_unroutable_returned",
        "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
        p(t.return_unroutable),
    )?;
    o.counter(
        "global_messages_confirmed",
        "Total number of messages confirmed to publishers",
        p(t.confirm),
    )?;
    let (classic, quorum) = s.queue_totals();
    let by_type = |f: fn(&QueueStats) -> u64| {
        vec![
            (proto_type(false), f(&classic) as f64),
            (proto_type(true), f(&quorum) as f64),
        ]
    };
    o.counter(
        "global_messages_delivered",
        "Total number of messages delivered to consumers",
        by_type(|s| s.deliver_get()),
    )?;
    o.counter(
        "global_messages_delivered_consume_manual_ack",
        "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
        by_type(|s| s.deliver),
    )?;
    o.counter(
        "global_messages_delivered_consume_auto_ack",
        "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
        by_type(|s| s.deliver_no_ack),
    )?;
    o.counter(
        "global_messages_delivered_get_manual_ack",
        "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
        by_type(|s| s.get),
    )?;
    o.counter(
        "global_messages_delivered_get_auto_ack",
        "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
        by_type(|s| s.get_no_ack),
    )?;
    o.counter(
        "global_messages_get_empty",
        "Total number of times basic.get operations fetched no message",
        by_type(|s| s.get_empty),
    )?;
    o.counter(
        "global_messages_redelivered",
        "Total number of messages redelivered to consumers",
        by_type(|s| s.redeliver),
    )?;
    o.counter(
        "global_messages_acknowledged",
        "Total number of messages acknowledged by consumers",
        by_type(|s| s.ack),
    )?;
    let alarm = api.broker.blocked().borrow().clone();
    let on = |what: &str| u64::from(alarm.as_deref().is_some_and(|r| r.contains(what)));
    o.one_gauge(
        "alarms_memory_used_watermark",
        "is set to 1 if a memory alarm is in effect",
        on("memory"),
    )?;
    o.one_gauge(
        "alarms_free_disk_space_watermark",
        "is set to 1 if a disk alarm is in effect",
        on("disk"),
    )?;
    o.one_gauge(
        "alarms_file_descriptor_limit",
        "is set to 1 if file descriptor limit alarm is in effect",
        0,
    )
}

/// FerryMQ's own: latency and storage histograms.
fn ferrymq_own(o: &mut Out) -> Result<(), std::fmt::Error> {
    o.histogram(
        "ferrymq_delivery_latency_seconds",
        "Time from a message entering a queue to its hand-off to a consumer or basic.get (one message in 64 per queue is timed)",
        &ferrymq_core::stats::DELIVERY_LATENCY.snapshot(),
    )?;
    o.histogram(
        "ferrymq_fsync_seconds",
        "Time one group-commit round took to make its writes durable",
        &ferrymq_store::histogram::FSYNC_SECONDS.snapshot(),
    )?;
    o.histogram(
        "ferrymq_group_commit_writes",
        "Writes made durable by one group-commit round (fsync)",
        &ferrymq_store::histogram::GROUP_COMMIT_WRITES.snapshot(),
    )
}
