//! `amqprs-perf`: `ferrymq perf throughput` driven by amqprs as applications use it (see the
//! library's documentation); same flags and final JSON line.

use amqprs_perf::Amqprs;
use clap::Parser;
use ferrymq::perf::{run_throughput_with, ThroughputArgs};

/// `ferrymq perf throughput`'s arguments.
#[derive(Parser)]
#[command(
    version,
    about = "ferrymq perf throughput with amqprs publishers and consumers"
)]
struct Cli {
    #[command(flatten)]
    args: ThroughputArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let r = run_throughput_with(&cli.args, true, &Amqprs).await?;
    println!("{}", r.summary());
    println!("{}", r.json());
    Ok(())
}
