//! The throughput scenario: publishers → queues → consumers.

use super::client::{now_nanos, scan, Conn, Event, PublishTemplate};
use super::procstat::{cpu_micros, rss_mib};
use super::stream::Target;
use anyhow::{bail, Context};
use bytes::BytesMut;
use ferrymq_amqp::codec::frame::encode_method;
use ferrymq_amqp::codec::methods::*;
use ferrymq_amqp::codec::Method;
use ferrymq_core::FieldTable;
use hdrhistogram::Histogram;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Notify};

/// Arguments of `ferrymq perf throughput`.
#[derive(Debug, Clone, clap::Args)]
pub struct ThroughputArgs {
    /// Broker to load (`amqp://` or `amqps://`).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// PEM file of the CA that signed the broker's certificate, for `amqps://` URIs.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Consuming connections.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Body size in bytes (at least 16: a timestamp and a sequence number).
    #[arg(long, default_value_t = 16)]
    pub size: usize,
    /// Seconds to run (after any prefill).
    #[arg(long, default_value_t = 10)]
    pub time: u64,
    /// Unconfirmed publishes in flight per publisher; 0 = no publisher confirms.
    #[arg(long, default_value_t = 0)]
    pub confirm: u64,
    /// Publish with delivery_mode 2.
    #[arg(long)]
    pub persistent: bool,
    /// Give every message its own TTL (`expiration`) between N and 2N ms; 0 = none.
    #[arg(long, default_value_t = 0)]
    pub expiration_spread: u64,
    /// Declare the queues durable.
    #[arg(long)]
    pub durable: bool,
    /// basic.qos prefetch per consumer (0 = unlimited).
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Ack every N deliveries with multiple=true; 0 = no-ack consumers.
    #[arg(long, default_value_t = 0)]
    pub ack_every: u64,
    /// Number of queues (publisher i → queue i mod K, consumer j ← queue j mod K).
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Publish to a fanout exchange bound to every queue.
    #[arg(long)]
    pub fanout: bool,
    /// Messages per second per publisher; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Messages per second per consumer (it reads no faster); 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub consume_rate: u64,
    /// Only publish (no consumers).
    #[arg(long)]
    pub publish_only: bool,
    /// Only consume (usually with --prefill).
    #[arg(long)]
    pub consume_only: bool,
    /// Messages published (with confirms) before the measured run starts.
    #[arg(long, default_value_t = 0)]
    pub prefill: u64,
    /// Stop after each publisher sent this many (0 = run for --time).
    #[arg(long, default_value_t = 0)]
    pub pmessages: u64,
    /// With --consume-only and no --prefill: stop after consuming this many in total, e.g.
    /// to time the drain of a backlog left by a --publish-only run (0 = run for --time).
    #[arg(long, default_value_t = 0)]
    pub cmessages: u64,
    /// Broker process id, to report its CPU time per message.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Prefix of the queue names.
    #[arg(long, default_value = "perf")]
    pub queue_prefix: String,
    /// No live line per second.
    #[arg(long)]
    pub quiet: bool,
    /// Delete the queues when done (after the broker's memory was read).
    #[arg(long)]
    pub cleanup: bool,
}

impl ThroughputArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.size < 16 {
            bail!(
                "--size must be at least 16 (the body carries a timestamp and a sequence number)"
            );
        }
        if self.queues == 0 {
            bail!("--queues must be at least 1");
        }
        if self.publish_only && self.consume_only {
            bail!("--publish-only and --consume-only exclude each other");
        }
        if !self.consume_only && self.publishers == 0 {
            bail!("--publishers must be at least 1 (or use --consume-only)");
        }
        if !self.publish_only && self.consumers == 0 {
            bail!("--consumers must be at least 1 (or use --publish-only)");
        }
        if self.consume_only && self.prefill == 0 && self.pmessages > 0 {
            bail!("--pmessages has no effect with --consume-only; use --prefill or --cmessages");
        }
        Ok(())
    }

    /// The queue publisher or consumer `i` uses.
    pub fn queue(&self, i: usize) -> String {
        format!("{}-{}", self.queue_prefix, i % self.queues)
    }

    /// The fanout exchange of `--fanout` runs.
    pub fn exchange(&self) -> String {
        format!("{}-fanout", self.queue_prefix)
    }

    /// Copies each published message reaches.
    fn copies(&self) -> u64 {
        if self.fanout {
            self.queues as u64
        } else {
            1
        }
    }
}

/// What a throughput run measured.
#[derive(Debug, Clone)]
pub struct ThroughputReport {
    /// Measured seconds.
    pub elapsed: f64,
    /// Messages published in the measured run.
    pub published: u64,
    /// Publishes confirmed (ack) by the broker.
    pub confirmed: u64,
    /// Publishes nacked by the broker.
    pub nacked: u64,
    /// Messages consumed in the measured run.
    pub consumed: u64,
    /// End-to-end latency percentiles in microseconds: p50, p99, p99.9, max.
    pub latency_us: [u64; 4],
    /// Broker CPU microseconds per message (None without --broker-pid).
    pub broker_cpu_us_per_msg: Option<f64>,
    /// This process's CPU microseconds per message.
    pub perf_cpu_us_per_msg: f64,
    /// Broker resident memory when the run ended, MiB (None without --broker-pid). With
    /// --publish-only this is what the backlog costs.
    pub broker_rss_mib: Option<f64>,
}

impl ThroughputReport {
    /// Publish rate, msg/s.
    pub fn publish_rate(&self) -> f64 {
        self.published as f64 / self.elapsed.max(1e-9)
    }
    /// Consume rate, msg/s.
    pub fn consume_rate(&self) -> f64 {
        self.consumed as f64 / self.elapsed.max(1e-9)
    }

    /// Human-readable summary.
    pub fn summary(&self) -> String {
        let cpu = self
            .broker_cpu_us_per_msg
            .map(|c| format!("{c:.2} µs/msg"))
            .unwrap_or_else(|| "n/a (pass --broker-pid)".into());
        format!(
            "summary: {:.1}s, published {} ({:.0} msg/s), consumed {} ({:.0} msg/s), confirmed {}, nacked {}\n\
             latency: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs\n\
             cpu: broker {cpu}, perf client {:.2} µs/msg; broker RSS {}",
            self.elapsed,
            self.published,
            self.publish_rate(),
            self.consumed,
            self.consume_rate(),
            self.confirmed,
            self.nacked,
            self.latency_us[0],
            self.latency_us[1],
            self.latency_us[2],
            self.latency_us[3],
            self.perf_cpu_us_per_msg,
            self.broker_rss_mib
                .map(|m| format!("{m:.0} MiB"))
                .unwrap_or_else(|| "n/a".into()),
        )
    }

    /// The final machine-readable line.
    pub fn json(&self) -> String {
        serde_json::json!({
            "scenario": "throughput",
            "elapsed_s": self.elapsed,
            "published": self.published,
            "confirmed": self.confirmed,
            "nacked": self.nacked,
            "consumed": self.consumed,
            "publish_rate": self.publish_rate().round(),
            "consume_rate": self.consume_rate().round(),
            "latency_us": {
                "p50": self.latency_us[0], "p99": self.latency_us[1],
                "p999": self.latency_us[2], "max": self.latency_us[3],
            },
            "broker_cpu_us_per_msg": self.broker_cpu_us_per_msg,
            "perf_cpu_us_per_msg": self.perf_cpu_us_per_msg,
            "broker_rss_mib": self.broker_rss_mib,
        })
        .to_string()
    }
}

/// What a throughput run's publishers and consumers report into.
pub struct RunStats {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
    publishers_done: AtomicU64,
    failed: Mutex<Option<String>>,
    stop: AtomicBool,
    /// End-to-end latencies of the whole run, and of the current live-line window.
    total: Mutex<Histogram<u64>>,
    window: Mutex<Histogram<u64>>,
}

impl RunStats {
    fn new() -> Self {
        RunStats {
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            publishers_done: AtomicU64::new(0),
            failed: Mutex::new(None),
            stop: AtomicBool::new(false),
            total: Mutex::new(histogram()),
            window: Mutex::new(histogram()),
        }
    }

    /// Counts `n` publishes sent.
    pub fn add_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a publisher's confirms, once it has its last ones.
    pub fn add_confirms(&self, acked: u64, nacked: u64) {
        self.confirmed.fetch_add(acked, Ordering::Relaxed);
        self.nacked.fetch_add(nacked, Ordering::Relaxed);
    }

    /// Counts `n` deliveries.
    pub fn add_consumed(&self, n: u64) {
        self.consumed.fetch_add(n, Ordering::Relaxed);
    }

    /// Merges end-to-end latencies a consumer recorded (in a [`histogram`], in µs) and
    /// clears them.
    pub fn add_latencies(&self, latencies: &mut Histogram<u64>) {
        let _ = self
            .total
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(&*latencies);
        let _ = self
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(&*latencies);
        latencies.reset();
    }

    /// Whether the run has ended: a client whose connection then fails stops quietly.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// An empty latency histogram in microseconds (1 µs to 1 hour), as [`RunStats`] keeps.
pub fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 hour with 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

/// The client a throughput run's publishers and consumers use: the built-in lean client
/// ([`FerryClient`]), or a client library as applications use it (bench/lapin-perf), to
/// measure what ordinary clients cost the broker. Topology, prefill and cleanup always use
/// the lean client.
pub trait LoadClient: Send + Sync + 'static {
    /// An open connection, ready for one publisher or consumer.
    type Conn: Send + 'static;
    /// Opens a connection to the run's broker.
    fn connect(
        &self,
        args: &ThroughputArgs,
        target: &Target,
    ) -> impl Future<Output = anyhow::Result<Self::Conn>> + Send;
    /// Publishes as publisher `index` until `stop` turns true (or `--pmessages` are sent).
    fn publish(
        conn: Self::Conn,
        args: ThroughputArgs,
        index: usize,
        stats: Arc<RunStats>,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static;
    /// Consumes from `queue` until `stop` turns true.
    fn consume(
        conn: Self::Conn,
        args: ThroughputArgs,
        queue: String,
        stats: Arc<RunStats>,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static;
}

/// `ferrymq perf`'s own client: pre-encoded publishes, many per write, and a frame scanner
/// that allocates nothing, so that it costs less CPU than the broker it measures.
pub struct FerryClient;

impl LoadClient for FerryClient {
    type Conn = Conn;

    fn connect(
        &self,
        _args: &ThroughputArgs,
        target: &Target,
    ) -> impl Future<Output = anyhow::Result<Conn>> + Send {
        Conn::open(target)
    }

    async fn publish(
        conn: Conn,
        args: ThroughputArgs,
        index: usize,
        stats: Arc<RunStats>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        publish(conn, &args, index, &stats, stop).await
    }

    async fn consume(
        conn: Conn,
        args: ThroughputArgs,
        queue: String,
        stats: Arc<RunStats>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        consume(conn, &args, &queue, &stats, stop).await
    }
}

/// Runs the scenario with the built-in client. `live` prints a line per second.
pub async fn run(a: &ThroughputArgs, live: bool) -> anyhow::Result<ThroughputReport> {
    run_with(a, live, &FerryClient).await
}

/// Runs the scenario with `client`'s publishers and consumers.
pub async fn run_with<C: LoadClient>(
    a: &ThroughputArgs,
    live: bool,
    client: &C,
) -> anyhow::Result<ThroughputReport> {
    a.validate()?;
    let uri = Target::new(&a.uri, a.cacert.as_deref())?;
    setup_topology(a, &uri).await?;
    if a.prefill > 0 {
        prefill(a, &uri).await?;
    }

    let shared = Arc::new(RunStats::new());
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut consumers = Vec::new();
    if !a.publish_only {
        for j in 0..a.consumers {
            let c = client.connect(a, &uri).await?;
            let s = shared.clone();
            let task = C::consume(c, a.clone(), a.queue(j), s.clone(), stop_rx.clone());
            consumers.push(tokio::spawn(async move {
                if let Err(e) = task.await {
                    s.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(format!("consumer: {e:#}"));
                }
            }));
        }
    }
    let broker_cpu0 = a.broker_pid.and_then(|p| cpu_micros(Some(p)));
    let self_cpu0 = cpu_micros(None).unwrap_or(0);
    let start = Instant::now();
    let mut publishers = Vec::new();
    if !a.consume_only {
        for i in 0..a.publishers {
            let c = client.connect(a, &uri).await?;
            let s = shared.clone();
            let task = C::publish(c, a.clone(), i, s.clone(), stop_rx.clone());
            publishers.push(tokio::spawn(async move {
                if let Err(e) = task.await {
                    s.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(format!("publisher {i}: {e:#}"));
                }
                s.publishers_done.fetch_add(1, Ordering::Relaxed);
            }));
        }
    }

    // Expected consumption when the run is bounded by message counts.
    let expected = if a.consume_only && a.prefill > 0 {
        Some(a.prefill * a.copies())
    } else if a.consume_only {
        (a.cmessages > 0).then_some(a.cmessages)
    } else if a.pmessages > 0 && !a.publish_only {
        Some(a.pmessages * a.publishers as u64 * a.copies() + a.prefill * a.copies())
    } else {
        None
    };
    let deadline = start + Duration::from_secs(a.time);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut last_pub, mut last_con, mut last_t) = (0u64, 0u64, start);
    let mut next_line = start + Duration::from_secs(1);
    loop {
        tick.tick().await;
        if let Some(f) = shared
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            let _ = stop_tx.send(true);
            bail!("{f}");
        }
        let now = Instant::now();
        let consumed = shared.consumed.load(Ordering::Relaxed);
        let pubs_done = shared.publishers_done.load(Ordering::Relaxed) as usize == publishers.len();
        let done = match expected {
            Some(n) => consumed >= n,
            None if a.pmessages > 0 && a.publish_only => pubs_done,
            None => now >= deadline,
        } || (expected.is_some() && now >= deadline);
        if live && !a.quiet && (now >= next_line || done) {
            let published = shared.published.load(Ordering::Relaxed);
            let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
            let mut w = shared.window.lock().unwrap_or_else(|p| p.into_inner());
            let lat = if w.is_empty() {
                String::new()
            } else {
                format!(
                    ", latency p50 {} µs p99 {} µs",
                    w.value_at_quantile(0.5),
                    w.value_at_quantile(0.99)
                )
            };
            w.reset();
            println!(
                "{:>5.1}s published {:>9.0} msg/s, consumed {:>9.0} msg/s{lat}",
                now.duration_since(start).as_secs_f64(),
                (published - last_pub) as f64 / dt,
                (consumed - last_con) as f64 / dt,
            );
            (last_pub, last_con, last_t) = (published, consumed, now);
            next_line += Duration::from_secs(1);
        }
        if done {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let broker_cpu1 = a.broker_pid.and_then(|p| cpu_micros(Some(p)));
    let self_cpu1 = cpu_micros(None).unwrap_or(0);
    for t in publishers.into_iter().chain(consumers) {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let published = shared.published.load(Ordering::Relaxed);
    let consumed = shared.consumed.load(Ordering::Relaxed);
    let msgs = published.max(consumed).max(1) as f64;
    let broker_rss_mib = rss_mib(a.broker_pid);
    if a.cleanup {
        delete_queues(a, &uri).await?;
    }
    let h = shared.total.lock().unwrap_or_else(|p| p.into_inner());
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    Ok(ThroughputReport {
        elapsed,
        published,
        confirmed: shared.confirmed.load(Ordering::Relaxed),
        nacked: shared.nacked.load(Ordering::Relaxed),
        consumed,
        latency_us: [q(0.5), q(0.99), q(0.999), h.max()],
        broker_cpu_us_per_msg: match (broker_cpu0, broker_cpu1) {
            (Some(x), Some(y)) => Some((y - x) as f64 / msgs),
            _ => None,
        },
        perf_cpu_us_per_msg: (self_cpu1 - self_cpu0) as f64 / msgs,
        broker_rss_mib,
    })
}

async fn delete_queues(a: &ThroughputArgs, uri: &Target) -> anyhow::Result<()> {
    let mut c = Conn::open(uri).await.context("cleanup connection")?;
    for i in 0..a.queues {
        delete_queue(&mut c, a.queue(i)).await?;
    }
    Ok(())
}

async fn delete_queue(c: &mut Conn, queue: String) -> anyhow::Result<()> {
    c.call(
        QueueDelete {
            queue,
            ..Default::default()
        },
        |m| matches!(m, Method::QueueDeleteOk(_)),
    )
    .await?;
    Ok(())
}

async fn setup_topology(a: &ThroughputArgs, uri: &Target) -> anyhow::Result<()> {
    let mut c = Conn::open(uri).await.context("setup connection")?;
    for i in 0..a.queues {
        let q = a.queue(i);
        if !a.consume_only || a.prefill > 0 {
            delete_queue(&mut c, q.clone()).await?;
        }
        c.call(
            QueueDeclare {
                queue: q,
                durable: a.durable,
                ..Default::default()
            },
            |m| matches!(m, Method::QueueDeclareOk(_)),
        )
        .await?;
    }
    if a.fanout {
        c.call(
            ExchangeDeclare {
                exchange: a.exchange(),
                kind: "fanout".into(),
                durable: a.durable,
                ..Default::default()
            },
            |m| matches!(m, Method::ExchangeDeclareOk(_)),
        )
        .await?;
        for i in 0..a.queues {
            c.call(
                QueueBind {
                    queue: a.queue(i),
                    exchange: a.exchange(),
                    ..Default::default()
                },
                |m| matches!(m, Method::QueueBindOk(_)),
            )
            .await?;
        }
    }
    Ok(())
}

/// Fills the queues before the measured run, with confirms so nothing is still in flight.
async fn prefill(a: &ThroughputArgs, uri: &Target) -> anyhow::Result<()> {
    let mut c = Conn::open(uri).await.context("prefill connection")?;
    c.call(ConfirmSelect { nowait: false }, |m| {
        matches!(m, Method::ConfirmSelectOk(_))
    })
    .await?;
    let templates = templates(a, c.frame_max)?;
    let (mut sent, mut confirmed) = (0u64, 0u64);
    let mut out = BytesMut::new();
    while confirmed < a.prefill {
        while sent < a.prefill && sent - confirmed < 10_000 && out.len() < 1 << 16 {
            templates[(sent as usize) % templates.len()].write(&mut out, now_nanos(), sent);
            sent += 1;
        }
        if !out.is_empty() {
            c.wr.send_all(&out).await?;
            out.clear();
        }
        if c.rd.read_buf(&mut c.rbuf).await? == 0 {
            bail!("broker closed the socket during prefill");
        }
        while let Some(ev) = scan(&mut c.rbuf)? {
            match ev {
                Event::Confirm {
                    tag, nack: false, ..
                } => confirmed = confirmed.max(tag),
                Event::Confirm { nack: true, .. } => bail!("broker nacked a prefill message"),
                Event::Closed(t) => bail!("broker closed during prefill: {t}"),
                _ => {}
            }
        }
    }
    Ok(())
}

fn templates(a: &ThroughputArgs, frame_max: u32) -> anyhow::Result<Vec<PublishTemplate>> {
    if a.fanout {
        Ok(vec![PublishTemplate::new(
            &a.exchange(),
            "",
            a.size,
            a.persistent,
            a.expiration_spread,
            frame_max,
        )?])
    } else {
        (0..a.queues)
            .map(|i| {
                PublishTemplate::new(
                    "",
                    &a.queue(i),
                    a.size,
                    a.persistent,
                    a.expiration_spread,
                    frame_max,
                )
            })
            .collect()
    }
}

async fn publish(
    mut c: Conn,
    a: &ThroughputArgs,
    index: usize,
    s: &RunStats,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if a.confirm > 0 {
        c.call(ConfirmSelect { nowait: false }, |m| {
            matches!(m, Method::ConfirmSelectOk(_))
        })
        .await?;
    }
    let tpl = if a.fanout {
        PublishTemplate::new(
            &a.exchange(),
            "",
            a.size,
            a.persistent,
            a.expiration_spread,
            c.frame_max,
        )?
    } else {
        PublishTemplate::new(
            "",
            &a.queue(index),
            a.size,
            a.persistent,
            a.expiration_spread,
            c.frame_max,
        )?
    };
    let Conn {
        mut rd,
        mut wr,
        mut rbuf,
        ..
    } = c;
    // Confirms (and any close) arrive on the read half.
    let acked = Arc::new(AtomicU64::new(0));
    let room = Arc::new(Notify::new());
    let reader = {
        let (acked, room) = (acked.clone(), room.clone());
        let nacked = Arc::new(AtomicU64::new(0));
        let n2 = nacked.clone();
        let handle: tokio::task::JoinHandle<anyhow::Result<()>> = tokio::spawn(async move {
            loop {
                match rd.read_buf(&mut rbuf).await {
                    Ok(0) | Err(_) => return Err(anyhow::anyhow!("broker closed the socket")),
                    Ok(_) => {}
                }
                while let Some(ev) = scan(&mut rbuf)? {
                    match ev {
                        Event::Confirm {
                            tag,
                            multiple: _,
                            nack,
                        } => {
                            if nack {
                                n2.fetch_add(1, Ordering::Relaxed);
                            }
                            acked.fetch_max(tag, Ordering::Relaxed);
                            room.notify_one();
                        }
                        Event::Closed(t) => return Err(anyhow::anyhow!("broker closed: {t}")),
                        _ => {}
                    }
                }
            }
        });
        (handle, nacked)
    };
    let start = Instant::now();
    let mut sent = 0u64;
    let mut out = BytesMut::with_capacity(1 << 16);
    loop {
        if *stop.borrow()
            || s.stop.load(Ordering::Relaxed)
            || (a.pmessages > 0 && sent >= a.pmessages)
        {
            break;
        }
        if reader.0.is_finished() {
            break;
        }
        let mut n = 256u64;
        if a.pmessages > 0 {
            n = n.min(a.pmessages - sent);
        }
        if a.confirm > 0 {
            let inflight = sent - acked.load(Ordering::Relaxed);
            n = n.min(a.confirm.saturating_sub(inflight));
            if n == 0 {
                tokio::select! {
                    _ = room.notified() => {}
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                continue;
            }
        }
        if a.rate > 0 {
            let allowed = (start.elapsed().as_secs_f64() * a.rate as f64) as u64;
            n = n.min(allowed.saturating_sub(sent));
            if n == 0 {
                tokio::time::sleep(Duration::from_micros(500)).await;
                continue;
            }
        }
        let ts = now_nanos();
        for k in 0..n {
            tpl.write(&mut out, ts, sent + k);
        }
        wr.send_all(&out).await.context("publish write")?;
        out.clear();
        sent += n;
        s.add_published(n);
    }
    if a.confirm > 0 {
        // Wait for the last confirms so counts are exact (bounded: the broker may be stopping).
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.load(Ordering::Relaxed) < sent
            && Instant::now() < deadline
            && !reader.0.is_finished()
        {
            let _ = tokio::time::timeout(Duration::from_millis(50), room.notified()).await;
        }
        s.add_confirms(
            acked.load(Ordering::Relaxed).min(sent),
            reader.1.load(Ordering::Relaxed),
        );
    }
    reader.0.abort();
    Ok(())
}

async fn consume(
    mut c: Conn,
    a: &ThroughputArgs,
    queue: &str,
    s: &RunStats,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let no_ack = a.ack_every == 0;
    if !no_ack {
        c.call(
            BasicQos {
                prefetch_count: a.prefetch,
                ..Default::default()
            },
            |m| matches!(m, Method::BasicQosOk(_)),
        )
        .await?;
    }
    c.call(
        BasicConsume {
            queue: queue.into(),
            no_ack,
            arguments: FieldTable::new(),
            ..Default::default()
        },
        |m| matches!(m, Method::BasicConsumeOk(_)),
    )
    .await?;
    let Conn {
        mut rd,
        mut wr,
        mut rbuf,
        ..
    } = c;
    let mut local = histogram();
    let (mut count, mut last_tag) = (0u64, 0u64);
    let mut acks = BytesMut::new();
    let started = Instant::now();
    // Deliveries that arrived in the same read as consume-ok are already buffered: scan them
    // before reading, or a consumer whose whole prefetch came that way would wait for ever.
    let mut buffered = !rbuf.is_empty();
    loop {
        if a.consume_rate > 0 {
            // A slow consumer: it does not read before its rate allows more messages.
            let due = Duration::from_secs_f64(count as f64 / a.consume_rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
        if !std::mem::take(&mut buffered) {
            tokio::select! {
                r = rd.read_buf(&mut rbuf) => match r {
                    Ok(0) | Err(_) => {
                        if s.stop.load(Ordering::Relaxed) { return Ok(()) }
                        bail!("broker closed the socket");
                    }
                    Ok(_) => {}
                },
                _ = stop.changed() => return Ok(()),
            }
        }
        let before = count;
        let now = now_nanos();
        while let Some(ev) = scan(&mut rbuf)? {
            match ev {
                Event::Deliver(tag) => last_tag = tag,
                Event::Body(Some(b)) => {
                    count += 1;
                    let sent = u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]));
                    let _ = local.record((now.saturating_sub(sent) / 1000).max(1));
                    if !no_ack && count % a.ack_every == 0 {
                        encode_method(
                            &mut acks,
                            1,
                            &BasicAck {
                                delivery_tag: last_tag,
                                multiple: true,
                            }
                            .into(),
                        );
                    }
                }
                Event::Closed(t) => bail!("broker closed: {t}"),
                _ => {}
            }
        }
        if !acks.is_empty() {
            wr.send_all(&acks).await?;
            acks.clear();
        }
        if count != before {
            s.add_consumed(count - before);
            s.add_latencies(&mut local);
        }
    }
}
