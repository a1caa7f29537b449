//! `ferrymq perf`: load scenarios in the spirit of RabbitMQ's PerfTest and lavinmqperf.
//!
//! The client side speaks AMQP through FerryMQ's own codec with pre-encoded frames, so that
//! it costs less CPU per message than the broker it measures (it reports both). The
//! throughput scenario can also be driven by another client library ([`LoadClient`]):
//! bench/lapin-perf runs it with lapin as applications use it.

mod client;
mod connections;
pub mod procstat;
mod queues;
mod stream;
mod throughput;
mod uri;

pub use procstat::raise_fd_limit;
pub use stream::Target;
pub use throughput::{
    histogram, run as run_throughput, run_with as run_throughput_with, FerryClient, LoadClient,
    RunStats, ThroughputArgs, ThroughputReport,
};
pub use uri::AmqpUri;

use clap::Subcommand;

/// The perf scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Publishers → queues → consumers; rates, end-to-end latency, CPU per message.
    Throughput(ThroughputArgs),
    /// Opens N idle connections and reports the broker's memory.
    Connections(connections::ConnectionsArgs),
    /// Declares N queues and reports the time taken and the broker's memory.
    Queues(queues::QueuesArgs),
}

/// Runs a scenario, printing live lines, a summary and a final JSON line.
pub async fn run(s: Scenario) -> anyhow::Result<()> {
    match s {
        Scenario::Throughput(a) => {
            let r = throughput::run(&a, true).await?;
            println!("{}", r.summary());
            println!("{}", r.json());
        }
        Scenario::Connections(a) => connections::run(&a).await?,
        Scenario::Queues(a) => queues::run(&a).await?,
    }
    Ok(())
}
