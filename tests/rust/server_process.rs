//! The `ferrymq server` binary as users run it: flags, config file, clear errors, and a clean
//! shutdown on SIGTERM that closes clients with 320 CONNECTION_FORCED.

mod common;

use common::{code, ServerProcess};
use lapin::{Connection, ConnectionProperties};
use std::process::Command;
use std::sync::{Arc, Mutex};

fn spawn(extra: &[&str]) -> ServerProcess {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProcess::start(&dir.path().join("data"), extra);
    s.keep(dir);
    s
}

#[tokio::test]
async fn sigterm_closes_clients_with_320_and_exits_zero() {
    let s = spawn(&[]);
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", s.addr),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    conn.on_error(move |e| *seen2.lock().unwrap() = code(&e));
    s.sigterm();
    let status = tokio::task::spawn_blocking(move || s.wait()).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    common::eventually(
        || seen.lock().unwrap().is_some(),
        "client told why it was closed",
    )
    .await;
    assert_eq!(*seen.lock().unwrap(), Some(320));
}

#[tokio::test]
async fn config_file_is_read_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ferrymq.toml");
    std::fs::write(
        &cfg,
        "amqp_port = 1\nlog_level = \"debug\"\nheartbeat = 5\n",
    )
    .unwrap();
    // The file says port 1 (not bindable); the flag --amqp-port 0 overrides it.
    let s = spawn(&["--config", cfg.to_str().unwrap()]);
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", s.addr),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        conn.configuration().heartbeat(),
        5,
        "heartbeat offered from the config file"
    );
}

#[test]
fn bad_configuration_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "amqp_prot = 5672\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args(["server", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("amqp_prot"), "names the unknown key: {err}");

    let out = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args([
            "server",
            "--bind",
            "not-an-address",
            "--amqp-port",
            "0",
            "--data-dir",
        ])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid bind address"), "{err}");
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[tokio::test]
async fn a_backlog_with_no_consumer_is_paged_to_disk_not_held_in_ram() {
    use lapin::options::*;
    use lapin::BasicProperties;
    const N: usize = 400;
    const SIZE: usize = 256 * 1024;
    let s = spawn(&["--queue-ram-budget", "1048576"]);
    let c = Connection::connect(&s.uri(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // 100 MB into a transient queue and 100 MB of persistent messages into a durable one.
    for (queue, durable, mode) in [("backlog", false, 1), ("durable-backlog", true, 2)] {
        let opts = QueueDeclareOptions {
            durable,
            ..Default::default()
        };
        ch.queue_declare(queue, opts, Default::default())
            .await
            .unwrap();
        for i in 0..N {
            let mut body = vec![(i % 251) as u8; SIZE];
            body[..8].copy_from_slice(&(i as u64).to_be_bytes());
            ch.basic_publish(
                "",
                queue,
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(mode),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    let resident = rss(s.pid());
    assert!(
        resident < 64 << 20,
        "broker holds {} MiB for a 200 MiB backlog",
        resident >> 20
    );
    // Everything comes back, in order.
    for queue in ["backlog", "durable-backlog"] {
        for i in 0..N {
            let m = ch
                .basic_get(queue, BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .expect("message");
            assert_eq!(m.delivery.data.len(), SIZE);
            assert_eq!(m.delivery.data[..8], (i as u64).to_be_bytes());
        }
    }
    c.close(200, "done").await.unwrap();
}
