//! Wiring for the `ferrymq` binary: configuration and starting the listeners.
//!
//! Kept as a library so integration tests can run a broker in-process on a free port.

pub mod alarms;
pub mod config;
pub mod ctl;
pub mod listen;
pub mod memory_limit;
pub mod perf;

use anyhow::Context;
use config::Config;
use ferrymq_amqp::tls::{ServerTls, TlsError};
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
    /// Where the plain AMQP listener is bound (`None` with `plain_listener = false`).
    pub amqp_addr: Option<SocketAddr>,
    /// Where the AMQPS listener is bound (`None` without a TLS certificate).
    pub amqps_addr: Option<SocketAddr>,
    /// Where the HTTP API listens (`None` with the management listener off).
    pub management_addr: Option<SocketAddr>,
    /// Where the Prometheus metrics listener is (`None` when it is off).
    pub prometheus_addr: Option<SocketAddr>,
    /// The resource alarm monitor (thresholds can be changed at runtime).
    pub alarms: alarms::AlarmMonitor,
    tls: Option<Arc<ServerTls>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Reads the TLS certificate, key and CA files again for new connections (what SIGHUP
    /// does); on failure the previous certificate stays. `None` when TLS is off.
    pub fn reload_tls(&self, why: &str) -> Option<Result<(), TlsError>> {
        self.tls.as_ref().map(|t| t.reload(why))
    }

    /// Stops accepting, closes every connection with 320 CONNECTION_FORCED and waits.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
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
            consumer_max_per_channel: (cfg.consumer_max_per_channel > 0)
                .then_some(cfg.consumer_max_per_channel),
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
    let amqp_config = AmqpConfig {
        frame_max: cfg.frame_max,
        channel_max: cfg.channel_max,
        heartbeat: cfg.heartbeat,
        handshake_timeout: std::time::Duration::from_secs(cfg.handshake_timeout),
        receive_batching: cfg.receive_batching,
    };
    let tls = match cfg.tls.settings() {
        Some(s) => Some(ServerTls::load(s).context("cannot set up TLS")?),
        None => None,
    };
    let mut servers = Vec::new();
    let mut amqp_addr = None;
    if cfg.plain_listener {
        let addr = listen_addr(cfg, cfg.amqp_port)?;
        let server = listen::bind(addr)
            .and_then(|l| AmqpServer::from_listener(l, broker.clone(), amqp_config.clone(), None))
            .with_context(|| format!("cannot listen for AMQP on {addr}"))?;
        let bound = server.local_addr()?;
        tracing::info!("AMQP listening on {bound}");
        amqp_addr = Some(bound);
        servers.push(server);
    }
    let mut amqps_addr = None;
    if let Some(tls) = &tls {
        let addr = listen_addr(cfg, cfg.tls.port)?;
        let server = listen::bind(addr)
            .and_then(|l| {
                AmqpServer::from_listener(l, broker.clone(), amqp_config, Some(tls.clone()))
            })
            .with_context(|| format!("cannot listen for AMQPS on {addr}"))?;
        let bound = server.local_addr()?;
        tracing::info!(
            "AMQPS listening on {bound} (certificate {})",
            tls.settings().certfile.display()
        );
        amqps_addr = Some(bound);
        servers.push(server);
    }
    let mut listeners: Vec<ferrymq_mgmt::ListenerInfo> = Vec::new();
    if let Some(a) = amqp_addr {
        listeners.push(ferrymq_mgmt::ListenerInfo {
            protocol: "amqp".into(),
            addr: a,
        });
    }
    if let Some(a) = amqps_addr {
        listeners.push(ferrymq_mgmt::ListenerInfo {
            protocol: "amqp/ssl".into(),
            addr: a,
        });
    }
    let mut http_servers = Vec::new();
    let mut management_addr = None;
    let mut prometheus_addr = None;
    let mgmt_listener = match cfg.management.listener {
        true => {
            let addr = listen_addr(cfg, cfg.management.port)?;
            let l =
                listen::bind(addr).with_context(|| format!("cannot listen for HTTP on {addr}"))?;
            listeners.push(ferrymq_mgmt::ListenerInfo {
                protocol: "http".into(),
                addr: l.local_addr()?,
            });
            Some(l)
        }
        false => None,
    };
    let prom_listener = match cfg.prometheus.listener {
        true => {
            let addr = listen_addr(cfg, cfg.prometheus.port)?;
            let l = listen::bind(addr)
                .with_context(|| format!("cannot listen for Prometheus on {addr}"))?;
            listeners.push(ferrymq_mgmt::ListenerInfo {
                protocol: "http/prometheus".into(),
                addr: l.local_addr()?,
            });
            Some(l)
        }
        false => None,
    };
    let api = ferrymq_mgmt::Api::new(broker.clone(), listeners);
    if let Some(l) = mgmt_listener {
        let server = ferrymq_mgmt::MgmtServer::from_listener(l, api.clone())
            .context("cannot serve the HTTP API")?;
        let bound = server.local_addr()?;
        tracing::info!("HTTP API listening on {bound}");
        management_addr = Some(bound);
        http_servers.push(server);
    }
    if let Some(l) = prom_listener {
        let server = ferrymq_mgmt::MgmtServer::metrics_only(l, api)
            .context("cannot serve Prometheus metrics")?;
        let bound = server.local_addr()?;
        tracing::info!("Prometheus metrics listening on {bound}");
        prometheus_addr = Some(bound);
        http_servers.push(server);
    }
    let alarms = alarms::AlarmMonitor::spawn(
        broker.clone(),
        cfg.data_dir.clone(),
        alarms::AlarmLimits {
            memory_high_watermark: cfg.memory_high_watermark,
            disk_free_limit: cfg.disk_free_limit,
        },
    );
    let (tx, rx) = watch::channel(false);
    let mut tasks: Vec<JoinHandle<()>> = servers
        .into_iter()
        .map(|s| tokio::spawn(s.run(rx.clone())))
        .collect();
    for m in http_servers {
        tasks.push(tokio::spawn(m.run(rx.clone())));
    }
    if let Some(tls) = &tls {
        if cfg.tls.reload_interval > 0 {
            let every = std::time::Duration::from_secs(cfg.tls.reload_interval);
            tokio::spawn(tls.clone().watch_files(every, rx));
        }
    }
    Ok(Running {
        broker,
        amqp_addr,
        amqps_addr,
        management_addr,
        prometheus_addr,
        alarms,
        tls,
        shutdown: tx,
        tasks,
    })
}

fn listen_addr(cfg: &Config, port: u16) -> anyhow::Result<SocketAddr> {
    listen::listen_addr(&cfg.bind, port)
}
