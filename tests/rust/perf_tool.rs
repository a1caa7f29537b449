//! `ferrymq perf`: counts every message exactly, and refuses bad arguments clearly.

mod common;

use clap::Parser;
use common::*;
use ferrymq::perf::{run_throughput, ThroughputArgs};
use std::process::Command;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ThroughputArgs,
}

fn args(b: &TestBroker, extra: &[&str]) -> ThroughputArgs {
    let uri = b.uri();
    let mut v = vec!["perf", "--uri", uri.as_str(), "--quiet", "--time", "60"];
    v.extend_from_slice(extra);
    Cli::try_parse_from(v).expect("valid arguments").args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_every_message_with_confirms_and_acks() {
    let b = start().await;
    let a = args(
        &b,
        &[
            "--publishers",
            "2",
            "--consumers",
            "2",
            "--queues",
            "2",
            "--pmessages",
            "5000",
            "--confirm",
            "100",
            "--ack-every",
            "10",
            "--prefetch",
            "50",
        ],
    );
    let r = run_throughput(&a, false).await.unwrap();
    assert_eq!(r.published, 10_000);
    assert_eq!(r.confirmed, 10_000);
    assert_eq!(r.nacked, 0);
    assert_eq!(r.consumed, 10_000);
    assert!(r.latency_us[3] >= r.latency_us[0], "max latency >= median");
    let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
    assert_eq!(json["consumed"], 10_000);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_counts_one_copy_per_queue() {
    let b = start().await;
    let a = args(
        &b,
        &[
            "--fanout",
            "--queues",
            "3",
            "--consumers",
            "3",
            "--pmessages",
            "1000",
        ],
    );
    let r = run_throughput(&a, false).await.unwrap();
    assert_eq!(r.published, 1000);
    assert_eq!(r.consumed, 3000);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_then_consume_only_drains_exactly_the_prefill() {
    let b = start().await;
    let a = args(
        &b,
        &["--prefill", "20000", "--consume-only", "--ack-every", "100"],
    );
    let r = run_throughput(&a, false).await.unwrap();
    assert_eq!(r.published, 0);
    assert_eq!(r.consumed, 20_000);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_only_leaves_the_messages_queued() {
    let b = start().await;
    let a = args(
        &b,
        &[
            "--publish-only",
            "--pmessages",
            "3000",
            "--confirm",
            "500",
            "--queue-prefix",
            "po",
        ],
    );
    let r = run_throughput(&a, false).await.unwrap();
    assert_eq!((r.published, r.confirmed, r.consumed), (3000, 3000, 0));
    let q = b.broker().vhost("/").unwrap().queue("po-0", 0).unwrap();
    assert_eq!(q.counts().messages, 3000);
    // A later consume-only run drains that backlog and stops at the count asked for.
    let a = args(
        &b,
        &[
            "--consume-only",
            "--cmessages",
            "2000",
            "--queue-prefix",
            "po",
        ],
    );
    let r = run_throughput(&a, false).await.unwrap();
    assert_eq!(r.published, 0);
    assert!(r.consumed >= 2000, "consumed {}", r.consumed);
    // Deliveries prefetched but not consumed go back when the perf client's connection
    // closes, which the broker may notice a moment after the run returns.
    let left = 3000 - r.consumed;
    eventually(
        || q.counts().messages as u64 == left,
        "unconsumed messages back in the queue",
    )
    .await;
    b.stop().await;
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
            .args(["perf", "throughput", "--uri", "amqp://127.0.0.1:1/%2f"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(run(&["--size", "8"]).contains("--size must be at least 16"));
    assert!(run(&["--publish-only", "--consume-only"]).contains("exclude each other"));
    assert!(run(&["--queues", "0"]).contains("--queues must be at least 1"));
    assert!(run(&["--confirm", "lots"]).contains("invalid value"));
    let err = run(&[]);
    assert!(err.contains("cannot connect to 127.0.0.1:1"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args(["perf", "throughput", "--uri", "http://x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with amqp://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiration_spread_gives_every_message_a_ttl_in_range() {
    let b = start().await;
    let a = args(
        &b,
        &[
            "--publish-only",
            "--pmessages",
            "500",
            "--confirm",
            "100",
            "--expiration-spread",
            "100",
            "--queue-prefix",
            "ttl",
        ],
    );
    let r = run_throughput(&a, false).await.unwrap();
    assert_eq!((r.published, r.confirmed), (500, 500));
    let q = b.broker().vhost("/").unwrap().queue("ttl-0", 0).unwrap();
    // TTLs of 100-200 ms: everything is gone well within the wait limit.
    eventually(|| q.counts().messages == 0, "every message to expire").await;
    b.stop().await;
}
