//! Server configuration: defaults, overridden by an optional TOML file, overridden by flags.

use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Effective server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; `::` (the default) is IPv6 and IPv4 together.
    pub bind: String,
    /// AMQP port (0 picks a free one).
    pub amqp_port: u16,
    /// Whether the plain (non-TLS) AMQP listener on `amqp_port` runs; `false` leaves only
    /// AMQPS (RabbitMQ's `listeners.tcp = none`).
    pub plain_listener: bool,
    /// The AMQPS listener: on when `tls.certfile` and `tls.keyfile` are set.
    pub tls: TlsConfig,
    /// The `[management]` table: the HTTP API listener.
    pub management: ManagementConfig,
    /// The `[prometheus]` table: the metrics listener.
    pub prometheus: PrometheusConfig,
    /// Where data is kept.
    pub data_dir: PathBuf,
    /// Log filter, e.g. `info` or `ferrymq=debug`.
    pub log_level: String,
    /// Largest AMQP frame offered to clients.
    pub frame_max: u32,
    /// Highest channel number offered to clients.
    pub channel_max: u16,
    /// Heartbeat interval offered to clients, in seconds.
    pub heartbeat: u16,
    /// Largest accepted message body, in bytes.
    pub max_message_size: usize,
    /// When persistent messages are confirmed: `always` (after fsync, the default) or
    /// `never` (once written to the OS; survives a broker crash, not a power loss).
    pub fsync: FsyncSetting,
    /// Size at which a queue's segment file rolls over, in bytes.
    pub segment_size: u64,
    /// Bytes of ready messages (bodies plus overhead) each queue keeps in RAM; beyond it
    /// new messages are paged to the queue's log on disk, so a backlog costs disk, not RAM.
    pub queue_ram_budget: usize,
    /// Fraction of RAM (or of the cgroup memory limit, when lower) the broker may use before
    /// publishers are blocked (RabbitMQ's `vm_memory_high_watermark.relative`).
    pub memory_high_watermark: f64,
    /// Free disk bytes below which publishers are blocked (RabbitMQ's
    /// `disk_free_limit.absolute`).
    pub disk_free_limit: u64,
    /// Milliseconds a consumer may hold a delivery unacknowledged before its channel is
    /// closed (RabbitMQ's `consumer_timeout`); 0 disables the check.
    pub consumer_timeout: u64,
    /// Seconds a client has to complete the AMQP handshake (RabbitMQ's
    /// `handshake_timeout`).
    pub handshake_timeout: u64,
    /// Whether plain AMQP connections that stream small frames are read in batches (their
    /// socket's receive low-water mark raised): less broker CPU, up to ~2 ms more latency.
    pub receive_batching: bool,
    /// Most consumers one channel may have (RabbitMQ's `consumer_max_per_channel`); 0 means
    /// no limit.
    pub consumer_max_per_channel: usize,
    /// A definitions file (RabbitMQ's JSON format) imported at start: users, vhosts,
    /// permissions, topic permissions, limits, policies, exchanges, queues, bindings.
    pub load_definitions: Option<PathBuf>,
    /// Test hook: what makes writes durable (the OS's fsync unless a test injects failures).
    /// Not settable from the file or the command line.
    #[serde(skip)]
    pub syncer: ferrymq_core::SyncerRef,
}

/// The `[tls]` table: the AMQPS listener and its certificates (RabbitMQ's `listeners.ssl`
/// and `ssl_options`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// AMQPS port (0 picks a free one).
    pub port: u16,
    /// PEM certificate chain, the server's certificate first.
    pub certfile: Option<PathBuf>,
    /// PEM private key of the certificate.
    pub keyfile: Option<PathBuf>,
    /// PEM bundle of the CAs that client certificates must chain to.
    pub cacertfile: Option<PathBuf>,
    /// `verify_peer`: ask clients for a certificate and verify it; `verify_none`: don't ask.
    pub verify: VerifySetting,
    /// With `verify_peer`, refuse clients that send no certificate.
    pub fail_if_no_peer_cert: bool,
    /// Seconds between checks of the certificate, key and CA files for changes (0: only on
    /// SIGHUP).
    pub reload_interval: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            port: 5671,
            certfile: None,
            keyfile: None,
            cacertfile: None,
            verify: VerifySetting::VerifyNone,
            fail_if_no_peer_cert: false,
            reload_interval: 5,
        }
    }
}

impl TlsConfig {
    /// The TLS listener's settings, or `None` when TLS is off (no certificate configured).
    pub fn settings(&self) -> Option<ferrymq_amqp::tls::TlsSettings> {
        Some(ferrymq_amqp::tls::TlsSettings {
            certfile: self.certfile.clone()?,
            keyfile: self.keyfile.clone()?,
            cacertfile: self.cacertfile.clone(),
            verify_peer: self.verify == VerifySetting::VerifyPeer,
            fail_if_no_peer_cert: self.fail_if_no_peer_cert,
        })
    }
}

/// The `[management]` table: the HTTP API (RabbitMQ's `management.tcp.port`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Whether the HTTP API listener runs.
    pub listener: bool,
    /// Its port (0 picks a free one).
    pub port: u16,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        ManagementConfig {
            listener: true,
            port: 15672,
        }
    }
}

/// The `[prometheus]` table: `/metrics` on a port of its own (rabbitmq_prometheus'
/// `prometheus.tcp.port`); the HTTP API's listener serves it too.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Whether the metrics listener runs.
    pub listener: bool,
    /// Its port (0 picks a free one).
    pub port: u16,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            listener: true,
            port: 15692,
        }
    }
}

/// The `tls.verify` setting (RabbitMQ's `ssl_options.verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum VerifySetting {
    /// Do not ask clients for a certificate.
    #[value(name = "verify_none")]
    VerifyNone,
    /// Ask clients for a certificate and verify it against `cacertfile`.
    #[value(name = "verify_peer")]
    VerifyPeer,
}

/// The `fsync` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncSetting {
    /// Confirm after fsync.
    Always,
    /// Confirm after the write.
    Never,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "::".into(),
            amqp_port: 5672,
            plain_listener: true,
            tls: TlsConfig::default(),
            management: ManagementConfig::default(),
            prometheus: PrometheusConfig::default(),
            data_dir: PathBuf::from("./ferrymq-data"),
            log_level: "info".into(),
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 128 * 1024 * 1024,
            fsync: FsyncSetting::Always,
            segment_size: 64 * 1024 * 1024,
            queue_ram_budget: 16 * 1024 * 1024,
            memory_high_watermark: 0.4,
            disk_free_limit: 50_000_000,
            consumer_timeout: 30 * 60 * 1000,
            consumer_max_per_channel: 0,
            handshake_timeout: 10,
            receive_batching: true,
            load_definitions: None,
            syncer: Default::default(),
        }
    }
}

impl Config {
    /// Reads a TOML file; keys not given keep their defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Checks values a user could get wrong, with an actionable message.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.frame_max < 4096 {
            anyhow::bail!(
                "frame_max must be at least 4096 (the AMQP minimum), got {}",
                self.frame_max
            );
        }
        if self.channel_max == 0 {
            anyhow::bail!("channel_max must be at least 1");
        }
        if !(self.memory_high_watermark > 0.0 && self.memory_high_watermark <= 1.0) {
            anyhow::bail!(
                "memory_high_watermark is a fraction of RAM, above 0 and at most 1, got {}",
                self.memory_high_watermark
            );
        }
        if self.handshake_timeout == 0 {
            anyhow::bail!("handshake_timeout must be at least 1 second");
        }
        self.validate_listeners()?;
        // Record positions within a segment are 32-bit offsets.
        if !(4096..=1 << 30).contains(&self.segment_size) {
            anyhow::bail!(
                "segment_size must be between 4096 bytes and 1 GiB (1073741824), got {}",
                self.segment_size
            );
        }
        Ok(())
    }
}

impl Config {
    fn validate_listeners(&self) -> anyhow::Result<()> {
        let t = &self.tls;
        match (&t.certfile, &t.keyfile) {
            (Some(_), None) => anyhow::bail!("tls.certfile is set but tls.keyfile is not"),
            (None, Some(_)) => anyhow::bail!("tls.keyfile is set but tls.certfile is not"),
            (None, None)
                if t.cacertfile.is_some()
                    || t.verify == VerifySetting::VerifyPeer
                    || t.fail_if_no_peer_cert =>
            {
                anyhow::bail!(
                    "TLS client certificate options need tls.certfile and tls.keyfile (the AMQPS listener is off without them)"
                )
            }
            _ => {}
        }
        if t.verify == VerifySetting::VerifyPeer && t.cacertfile.is_none() {
            anyhow::bail!(
                "tls.verify = \"verify_peer\" needs tls.cacertfile, the CAs client certificates are checked against"
            );
        }
        if t.fail_if_no_peer_cert && t.verify != VerifySetting::VerifyPeer {
            anyhow::bail!("tls.fail_if_no_peer_cert needs tls.verify = \"verify_peer\"");
        }
        let tls_on = t.certfile.is_some();
        if !self.plain_listener && !tls_on {
            anyhow::bail!(
                "no listener: plain_listener = false needs TLS (tls.certfile and tls.keyfile)"
            );
        }
        if self.plain_listener && tls_on && self.amqp_port == t.port && t.port != 0 {
            anyhow::bail!(
                "amqp_port and tls.port are both {}; the plain and TLS listeners need different ports",
                t.port
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_typos() {
        let c: Config = toml::from_str("amqp_port = 5999\nlog_level = \"debug\"").unwrap();
        assert_eq!(c.amqp_port, 5999);
        assert_eq!(c.bind, "::");
        assert!(toml::from_str::<Config>("amqp_prot = 1").is_err());
        let c: Config = toml::from_str("fsync = \"never\"\nsegment_size = 1048576").unwrap();
        assert_eq!((c.fsync, c.segment_size), (FsyncSetting::Never, 1 << 20));
        assert!(toml::from_str::<Config>("fsync = \"sometimes\"").is_err());
        assert!(Config::default().receive_batching);
        let c: Config = toml::from_str("receive_batching = false").unwrap();
        assert!(!c.receive_batching);
        let d = Config::default().management;
        assert_eq!((d.listener, d.port), (true, 15672));
        let c: Config = toml::from_str("[management]\nport = 15999\nlistener = false").unwrap();
        assert_eq!((c.management.listener, c.management.port), (false, 15999));
        assert!(toml::from_str::<Config>("[management]\nprot = 1").is_err());
        let p = Config::default().prometheus;
        assert_eq!((p.listener, p.port), (true, 15692));
        let c: Config = toml::from_str("[prometheus]\nport = 15999\nlistener = false").unwrap();
        assert_eq!((c.prometheus.listener, c.prometheus.port), (false, 15999));
    }

    #[test]
    fn tls_table_and_listener_checks() {
        let c: Config = toml::from_str(
            "plain_listener = false\n[tls]\ncertfile = \"s.pem\"\nkeyfile = \"s.key\"\n\
             cacertfile = \"ca.pem\"\nverify = \"verify_peer\"\nfail_if_no_peer_cert = true",
        )
        .unwrap();
        c.validate().unwrap();
        let s = c.tls.settings().unwrap();
        assert_eq!(c.tls.port, 5671);
        assert!(s.verify_peer && s.fail_if_no_peer_cert);
        assert!(toml::from_str::<Config>("[tls]\ncertfle = \"x\"").is_err());
        assert!(toml::from_str::<Config>("[tls]\nverify = \"verify_maybe\"").is_err());
        let bad = |toml: &str| {
            let c: Config = toml::from_str(toml).unwrap();
            c.validate().unwrap_err().to_string()
        };
        assert!(bad("plain_listener = false").contains("no listener"));
        assert!(bad("[tls]\ncertfile = \"s.pem\"").contains("tls.keyfile"));
        assert!(
            bad("[tls]\ncertfile = \"a\"\nkeyfile = \"b\"\nverify = \"verify_peer\"")
                .contains("cacertfile")
        );
        assert!(bad("[tls]\ncacertfile = \"ca.pem\"").contains("need tls.certfile"));
        assert!(
            bad("amqp_port = 5671\n[tls]\ncertfile = \"a\"\nkeyfile = \"b\"")
                .contains("different ports")
        );
        let c = Config::default();
        assert!(c.tls.settings().is_none() && c.plain_listener);
    }

    #[test]
    fn segment_sizes_beyond_32_bit_offsets_are_refused() {
        let check = |n: u64| {
            let c: Config = toml::from_str(&format!("segment_size = {n}")).unwrap();
            c.validate().map_err(|e| e.to_string())
        };
        assert!(check(1 << 30).is_ok());
        assert!(check((1 << 30) + 1)
            .unwrap_err()
            .contains("between 4096 bytes and 1 GiB"));
        assert!(check(4095).is_err());
        assert!(check(1 << 40).is_err());
    }
}
