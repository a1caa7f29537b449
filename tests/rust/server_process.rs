//! The `ferrymq server` binary as users run it: flags, config file, clear errors, and a clean
//! shutdown on SIGTERM that closes clients with 320 CONNECTION_FORCED.

mod common;

use common::{code, WAIT};
use lapin::{Connection, ConnectionProperties};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args([
            "server",
            "--bind",
            "127.0.0.1",
            "--amqp-port",
            "0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.split("AMQP listening on ").nth(1) {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let addr = rx.recv_timeout(WAIT).expect("server logs its AMQP address");
    Server {
        child,
        addr,
        _dir: dir,
    }
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
}

#[tokio::test]
async fn sigterm_closes_clients_with_320_and_exits_zero() {
    let mut s = spawn(&[]);
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", s.addr),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    conn.on_error(move |e| *seen2.lock().unwrap() = code(&e));
    sigterm(s.child.id());
    let status = tokio::task::spawn_blocking(move || {
        let st = s.child.wait().unwrap();
        drop(s);
        st
    })
    .await
    .unwrap();
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
