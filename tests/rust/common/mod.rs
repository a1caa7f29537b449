//! Shared helpers: an in-process broker on a free port with a temporary data dir, and small
//! wrappers around lapin.
#![allow(dead_code)]

pub mod raw;

use ferrymq::config::Config;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::time::Duration;

/// Upper bound for anything a test waits for; generous because CI machines are shared.
pub const WAIT: Duration = Duration::from_secs(15);

/// A broker running inside the test process.
pub struct TestBroker {
    pub running: Option<ferrymq::Running>,
    /// The plain AMQP listener (the AMQPS one when the plain listener is off).
    pub addr: std::net::SocketAddr,
    /// The AMQPS listener, when TLS is configured.
    pub tls_addr: Option<std::net::SocketAddr>,
    _dir: tempfile::TempDir,
}

impl TestBroker {
    /// The AMQP URI of the default vhost.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// The broker state, for tests that raise alarms.
    pub fn broker(&self) -> &std::sync::Arc<ferrymq_core::Broker> {
        &self.running.as_ref().expect("running").broker
    }

    /// Shuts the broker down.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// The `ferrymq` binary running as a separate process, so tests can kill it (-9 included)
/// and start it again on the same data directory.
pub struct ServerProcess {
    child: std::process::Child,
    /// `host:port` of its plain AMQP listener (of its AMQPS listener if it has no plain one).
    pub addr: String,
    /// `host:port` of its AMQPS listener, when started with `--tls-certfile`.
    pub tls_addr: Option<String>,
    _keep: Option<tempfile::TempDir>,
}

impl ServerProcess {
    /// Starts `ferrymq server` on a free loopback port with `data_dir` and extra flags, and
    /// waits until it listens (on the AMQPS port too with `--tls-certfile`).
    pub fn start(data_dir: &std::path::Path, extra: &[&str]) -> ServerProcess {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferrymq"))
            .args([
                "server",
                "--bind",
                "127.0.0.1",
                "--amqp-port",
                "0",
                "--management-port",
                "0",
                "--prometheus-port",
                "0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("binary starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.split("AMQP listening on ").nth(1) {
                    let _ = tx.send((false, a.trim().to_string()));
                }
                if let Some(a) = line.split("AMQPS listening on ").nth(1) {
                    let a = a.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send((true, a.to_string()));
                }
                if std::env::var_os("FERRYMQ_TEST_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
            }
        });
        let want_tls = extra.contains(&"--tls-certfile");
        let want_plain = !extra.windows(2).any(|w| w == ["--plain-listener", "false"]);
        let (mut plain, mut tls) = (None, None);
        while (want_plain && plain.is_none()) || (want_tls && tls.is_none()) {
            let (is_tls, a) = rx
                .recv_timeout(WAIT)
                .expect("server logs its listen addresses");
            if is_tls {
                tls = Some(a);
            } else {
                plain = Some(a);
            }
        }
        ServerProcess {
            child,
            addr: plain.or_else(|| tls.clone()).expect("a listener"),
            tls_addr: tls,
            _keep: None,
        }
    }

    /// Ties a temporary directory's lifetime to the process.
    pub fn keep(&mut self, dir: tempfile::TempDir) {
        self._keep = Some(dir);
    }

    /// The AMQP URI of the default vhost.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (a clean shutdown).
    pub fn sigterm(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM");
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a broker with default settings on a free loopback port.
pub async fn start() -> TestBroker {
    start_with(|_| {}).await
}

/// Starts a broker after letting the test adjust its configuration.
pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestBroker {
    if let Ok(filter) = std::env::var("FERRYMQ_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config {
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
        ..Config::default()
    };
    f(&mut cfg);
    let running = ferrymq::start(&cfg).await.expect("broker starts");
    TestBroker {
        addr: running
            .amqp_addr
            .or(running.amqps_addr)
            .expect("a listener"),
        tls_addr: running.amqps_addr,
        running: Some(running),
        _dir: dir,
    }
}

/// Opens a lapin connection.
pub async fn connect(b: &TestBroker) -> Connection {
    Connection::connect(&b.uri(), ConnectionProperties::default())
        .await
        .expect("lapin connects")
}

/// Opens a connection and one channel.
pub async fn channel(b: &TestBroker) -> (Connection, Channel) {
    let c = connect(b).await;
    let ch = c.create_channel().await.expect("channel opens");
    (c, ch)
}

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub fn code(e: &lapin::Error) -> Option<u16> {
    match e {
        lapin::Error::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// The reply text carried by a lapin error.
pub fn text(e: &lapin::Error) -> String {
    match e {
        lapin::Error::ProtocolError(p) => p.get_message().to_string(),
        other => other.to_string(),
    }
}

/// Declares a plain transient queue.
pub async fn queue(ch: &Channel, name: &str) -> lapin::Queue {
    ch.queue_declare(name, QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("queue.declare")
}

/// Publishes a body and waits for the publish to be sent (and confirmed, in confirm mode).
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange,
        key,
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("basic.publish")
    .await
    .expect("publish settled");
}

/// Starts a consumer with manual acks.
pub async fn consume(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    ch.basic_consume(
        queue,
        tag,
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

/// Waits for the next delivery.
pub async fn next(c: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, c.next())
        .await
        .expect("a delivery within the wait limit")
        .expect("consumer still open")
        .expect("delivery ok")
}

/// Waits until `f` returns true, polling; panics after [`WAIT`].
pub async fn eventually<F: FnMut() -> bool>(mut f: F, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Basic.get with ack required; None when the queue is empty.
pub async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(queue, BasicGetOptions::default())
        .await
        .expect("basic.get")
}

/// Passive queue.declare: does the queue exist (and may this connection use it)?
pub async fn passive_queue(ch: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    ch.queue_declare(
        name,
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Passive exchange.declare.
pub async fn passive_exchange(ch: &Channel, name: &str) -> lapin::Result<()> {
    ch.exchange_declare(
        name,
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Declares an exchange with default options and no arguments.
pub async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: lapin::ExchangeKind,
) -> lapin::Result<()> {
    ch.exchange_declare(
        name,
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Binds a queue to an exchange with no arguments.
pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    ch.queue_bind(
        queue,
        exchange,
        key,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// A field table from pairs.
pub fn table(pairs: &[(&str, lapin::types::AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(lapin::types::ShortString::from(*k), v.clone());
    }
    t
}

/// A long-string field value.
pub fn s(v: &str) -> lapin::types::AMQPValue {
    lapin::types::AMQPValue::LongString(lapin::types::LongString::from(v))
}

/// A 32-bit integer field value.
pub fn int(v: i32) -> lapin::types::AMQPValue {
    lapin::types::AMQPValue::LongInt(v)
}
