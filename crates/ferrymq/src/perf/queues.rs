//! The queues scenario: declare N queues, report the time taken and the broker's memory.

use super::client::{scan, Conn, Event};
use super::procstat::rss_mib;
use super::stream::Target;
use anyhow::bail;
use bytes::BytesMut;
use ferrymq_amqp::codec::frame::encode_method;
use ferrymq_amqp::codec::methods::{QueueBind, QueueDeclare, QueueDelete};
use tokio::io::AsyncReadExt;

/// Arguments of `ferrymq perf queues`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueuesArgs {
    /// Broker to connect to (`amqp://` or `amqps://`).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// PEM file of the CA that signed the broker's certificate, for `amqps://` URIs.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Queues to declare.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Broker process id, to report its memory.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Delete the queues afterwards.
    #[arg(long)]
    pub cleanup: bool,
    /// Declare durable queues (each declaration is saved in the broker's definitions before
    /// its declare-ok).
    #[arg(long)]
    pub durable: bool,
    /// Name prefix of the queues.
    #[arg(long, default_value = "perf-q-")]
    pub prefix: String,
    /// After declaring, bind every queue to this (existing) exchange with binding key
    /// `perf.N.#`, and time it (and, with `--cleanup`, the deletes that remove the bindings).
    #[arg(long, value_name = "EXCHANGE")]
    pub bind_to: Option<String>,
}

/// Declares the queues (pipelined, 1000 in flight) and reports.
pub async fn run(a: &QueuesArgs) -> anyhow::Result<()> {
    let target = Target::new(&a.uri, a.cacert.as_deref())?;
    let mut c = Conn::open(&target).await?;
    let rss0 = rss_mib(a.broker_pid);
    let start = std::time::Instant::now();
    pipelined(&mut c, a.count, |i, out| {
        encode_method(
            out,
            1,
            &QueueDeclare {
                queue: format!("{}{i}", a.prefix),
                durable: a.durable,
                ..Default::default()
            }
            .into(),
        )
    })
    .await?;
    let took = start.elapsed().as_secs_f64();
    let rss1 = rss_mib(a.broker_pid);
    println!(
        "summary: {} queues declared in {took:.2}s ({:.0}/s); broker RSS {:.1} MiB -> {:.1} MiB",
        a.count,
        a.count as f64 / took.max(1e-9),
        rss0.unwrap_or(f64::NAN),
        rss1.unwrap_or(f64::NAN)
    );
    let mut bind_secs = None;
    if let Some(x) = &a.bind_to {
        let start = std::time::Instant::now();
        pipelined(&mut c, a.count, |i, out| {
            encode_method(
                out,
                1,
                &QueueBind {
                    queue: format!("{}{i}", a.prefix),
                    exchange: x.clone(),
                    routing_key: format!("perf.{i}.#"),
                    ..Default::default()
                }
                .into(),
            )
        })
        .await?;
        let took = start.elapsed().as_secs_f64();
        println!(
            "summary: {} bindings to '{x}' in {took:.2}s ({:.0}/s)",
            a.count,
            a.count as f64 / took.max(1e-9)
        );
        bind_secs = Some(took);
    }
    let mut delete_secs = None;
    if a.cleanup {
        let start = std::time::Instant::now();
        pipelined(&mut c, a.count, |i, out| {
            encode_method(
                out,
                1,
                &QueueDelete {
                    queue: format!("{}{i}", a.prefix),
                    ..Default::default()
                }
                .into(),
            )
        })
        .await?;
        let took = start.elapsed().as_secs_f64();
        println!("summary: {} queues deleted in {took:.2}s", a.count);
        delete_secs = Some(took);
    }
    println!(
        "{}",
        serde_json::json!({"scenario": "queues", "count": a.count, "durable": a.durable,
            "seconds": took, "bind_seconds": bind_secs, "delete_seconds": delete_secs,
            "broker_rss_before_mib": rss0, "broker_rss_after_mib": rss1})
    );
    Ok(())
}

/// Sends `count` requests with up to 1000 outstanding, counting replies on channel 1.
async fn pipelined(
    c: &mut Conn,
    count: usize,
    encode: impl Fn(usize, &mut BytesMut),
) -> anyhow::Result<()> {
    let (mut sent, mut replies) = (0usize, 0usize);
    let mut out = BytesMut::new();
    while replies < count {
        while sent < count && sent - replies < 1000 {
            encode(sent, &mut out);
            sent += 1;
        }
        if !out.is_empty() {
            c.wr.send_all(&out).await?;
            out.clear();
        }
        if c.rd.read_buf(&mut c.rbuf).await? == 0 {
            bail!("broker closed the socket");
        }
        while let Some(ev) = scan(&mut c.rbuf)? {
            match ev {
                Event::Closed(t) => bail!("broker closed: {t}"),
                Event::Other => replies += 1,
                _ => {}
            }
        }
    }
    Ok(())
}
