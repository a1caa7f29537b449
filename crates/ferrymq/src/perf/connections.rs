//! The connections scenario: N idle AMQP connections and the broker's memory.

use super::client::Conn;
use super::procstat::{raise_fd_limit, rss_mib};
use super::stream::Target;
use anyhow::Context;

/// Arguments of `ferrymq perf connections`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// Broker to connect to (`amqp://` or `amqps://`).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// PEM file of the CA that signed the broker's certificate, for `amqps://` URIs.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Connections to open (each with one channel).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Broker process id, to report its memory.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Keep the connections open this many seconds after reporting (to measure the broker
    /// meanwhile, e.g. its HTTP API with 10,000 connections).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub hold: u64,
}

/// Opens the connections, reports memory, closes them.
pub async fn run(a: &ConnectionsArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    let target = Target::new(&a.uri, a.cacert.as_deref())?;
    let rss0 = rss_mib(a.broker_pid);
    let start = std::time::Instant::now();
    let mut conns = Vec::with_capacity(a.count);
    for i in 0..a.count {
        // A broker out of file descriptors stops accepting instead of refusing: bound the wait.
        let c = tokio::time::timeout(std::time::Duration::from_secs(30), Conn::open(&target))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "connection {i} not established within 30 s (broker out of file descriptors?)"
                )
            })?
            .with_context(|| format!("connection {i}"))?;
        conns.push(c);
        if (i + 1) % 1000 == 0 {
            println!("{} connections open", i + 1);
        }
    }
    let took = start.elapsed().as_secs_f64();
    // Let the broker settle its buffers before reading its memory.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let rss1 = rss_mib(a.broker_pid);
    println!(
        "summary: {} connections opened in {took:.1}s; broker RSS {:.1} MiB -> {:.1} MiB",
        a.count,
        rss0.unwrap_or(f64::NAN),
        rss1.unwrap_or(f64::NAN)
    );
    println!(
        "{}",
        serde_json::json!({"scenario": "connections", "count": a.count, "seconds": took,
            "broker_rss_before_mib": rss0, "broker_rss_after_mib": rss1})
    );
    if a.hold > 0 {
        tokio::time::sleep(std::time::Duration::from_secs(a.hold)).await;
    }
    drop(conns);
    Ok(())
}
