//! Wiring for the `ferrymq` binary: configuration and starting the listeners.
//!
//! Kept as a library so integration tests can run a broker in-process on a free port.

pub mod alarms;
pub mod config;
pub mod memory_limit;
pub mod perf;

use anyhow::Context;
use config::Config;
use ferrymq_amqp::{AmqpConfig, AmqpServer};
use ferrymq_core::{Broker, BrokerConfig, FsyncPolicy, PersistConfig, Persistence};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running broker.
pub struct Running {
    /// The shared broker state.
    pub broker: Arc<Broker>,
    /// Where the AMQP listener is bound.
    pub amqp_addr: SocketAddr,
    /// The resource alarm monitor (thresholds can be changed at runtime).
    pub alarms: alarms::AlarmMonitor,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, closes every connection with 320 CONNECTION_FORCED and waits.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        if let Some(p) = self.broker.persistence() {
            p.stop();
        }
    }
}

/// Binds the listeners described by `cfg` and starts serving.
pub async fn start(cfg: &Config) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let persist = Persistence::open(PersistConfig {
        fsync: match cfg.fsync {
            config::FsyncSetting::Always => FsyncPolicy::Always,
            config::FsyncSetting::Never => FsyncPolicy::Never,
        },
        segment_size: cfg.segment_size,
        syncer: cfg.syncer.clone(),
        queue_ram_budget: cfg.queue_ram_budget,
        ..PersistConfig::new(&cfg.data_dir)
    })
    .with_context(|| format!("cannot open data dir {}", cfg.data_dir.display()))?;
    let broker = Broker::open(
        BrokerConfig {
            max_message_size: cfg.max_message_size,
            seed_defaults: cfg.load_definitions.is_none(),
            consumer_timeout: (cfg.consumer_timeout > 0)
                .then(|| std::time::Duration::from_millis(cfg.consumer_timeout)),
            ..BrokerConfig::default()
        },
        persist,
    )
    .with_context(|| format!("cannot restore from data dir {}", cfg.data_dir.display()))?;
    if let Some(path) = &cfg.load_definitions {
        let defs = ferrymq_store::definitions::Definitions::load(path)
            .with_context(|| format!("cannot read definitions file {}", path.display()))?
            .with_context(|| format!("definitions file {} not found", path.display()))?;
        broker
            .import_definitions(&defs)
            .with_context(|| format!("cannot import definitions file {}", path.display()))?;
        tracing::info!("imported definitions from {}", path.display());
    }
    let addr: SocketAddr = format!("{}:{}", cfg.bind, cfg.amqp_port)
        .parse()
        .with_context(|| format!("invalid bind address {}:{}", cfg.bind, cfg.amqp_port))?;
    let amqp = AmqpServer::bind(
        addr,
        broker.clone(),
        AmqpConfig {
            frame_max: cfg.frame_max,
            channel_max: cfg.channel_max,
            heartbeat: cfg.heartbeat,
            handshake_timeout: std::time::Duration::from_secs(cfg.handshake_timeout),
        },
    )
    .await
    .with_context(|| format!("cannot listen for AMQP on {addr}"))?;
    let amqp_addr = amqp.local_addr()?;
    tracing::info!("AMQP listening on {amqp_addr}");
    let alarms = alarms::AlarmMonitor::spawn(
        broker.clone(),
        cfg.data_dir.clone(),
        alarms::AlarmLimits {
            memory_high_watermark: cfg.memory_high_watermark,
            disk_free_limit: cfg.disk_free_limit,
        },
    );
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(amqp.run(rx));
    Ok(Running {
        broker,
        amqp_addr,
        alarms,
        shutdown: tx,
        task,
    })
}
