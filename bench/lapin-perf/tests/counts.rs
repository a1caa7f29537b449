//! lapin-perf counts every message exactly, against an in-process broker.

use clap::Parser;
use ferrymq::perf::{run_throughput_with, ThroughputArgs};
use lapin_perf::Lapin;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ThroughputArgs,
}

async fn run(extra: &[&str]) -> ferrymq::perf::ThroughputReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ferrymq::config::Config {
        bind: "127.0.0.1".into(),
        amqp_port: 0,
        management: ferrymq::config::ManagementConfig {
            listener: true,
            port: 0,
        },
        prometheus: ferrymq::config::PrometheusConfig {
            listener: true,
            port: 0,
        },
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let running = ferrymq::start(&cfg).await.expect("broker starts");
    let addr = running.amqp_addr.expect("plain listener");
    let uri = format!("amqp://guest:guest@{addr}/%2f");
    let mut v = vec![
        "lapin-perf",
        "--uri",
        uri.as_str(),
        "--quiet",
        "--time",
        "60",
    ];
    v.extend_from_slice(extra);
    let a = Cli::try_parse_from(v).expect("valid arguments").args;
    let r = run_throughput_with(&a, false, &Lapin).await.expect("run");
    running.shutdown().await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_every_message_with_confirms_and_acks() {
    let r = run(&[
        "--publishers",
        "2",
        "--consumers",
        "2",
        "--queues",
        "2",
        "--pmessages",
        "3000",
        "--confirm",
        "100",
        "--ack-every",
        "10",
        "--prefetch",
        "50",
    ])
    .await;
    assert_eq!(r.published, 6_000);
    assert_eq!(r.confirmed, 6_000);
    assert_eq!(r.nacked, 0);
    assert_eq!(r.consumed, 6_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_every_message_without_confirms_or_acks() {
    let r = run(&["--pmessages", "5000"]).await;
    assert_eq!(r.published, 5_000);
    assert_eq!(r.consumed, 5_000);
}
