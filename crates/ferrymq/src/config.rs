//! Server configuration: defaults, overridden by an optional TOML file, overridden by flags.

use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Effective server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub bind: String,
    /// AMQP port (0 picks a free one).
    pub amqp_port: u16,
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
    /// A definitions file (RabbitMQ's JSON format) imported at start: users, vhosts,
    /// permissions, topic permissions, limits, policies, exchanges, queues, bindings.
    pub load_definitions: Option<PathBuf>,
    /// Test hook: what makes writes durable (the OS's fsync unless a test injects failures).
    /// Not settable from the file or the command line.
    #[serde(skip)]
    pub syncer: ferrymq_core::SyncerRef,
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
            bind: "0.0.0.0".into(),
            amqp_port: 5672,
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
            handshake_timeout: 10,
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
        if self.segment_size < 4096 {
            anyhow::bail!(
                "segment_size must be at least 4096 bytes, got {}",
                self.segment_size
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
        assert_eq!(c.bind, "0.0.0.0");
        assert!(toml::from_str::<Config>("amqp_prot = 1").is_err());
        let c: Config = toml::from_str("fsync = \"never\"\nsegment_size = 1048576").unwrap();
        assert_eq!((c.fsync, c.segment_size), (FsyncSetting::Never, 1 << 20));
        assert!(toml::from_str::<Config>("fsync = \"sometimes\"").is_err());
    }
}
