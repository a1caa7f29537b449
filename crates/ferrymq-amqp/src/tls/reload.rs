//! The TLS configuration new connections get, replaced without a restart.
//!
//! Each connection takes the configuration current when it was accepted and keeps it, so a
//! reload changes the certificate for new connections only. A reload that fails (a bad PEM, a
//! key that does not match) keeps the previous configuration and logs why.

use super::load::{server_config, TlsError, TlsSettings};
use parking_lot::{Mutex, RwLock};
use rustls::ServerConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// What identifies one version of a file without reading it: modification time, size and,
/// on Unix, the inode (a file replaced by rename keeps neither).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// A reloadable TLS server configuration built from [`TlsSettings`].
pub struct ServerTls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    /// Stamps of the files as of the last load attempt, successful or not; also serialises
    /// reloads (SIGHUP and the file poller may race).
    seen: Mutex<Vec<Option<FileStamp>>>,
}

impl ServerTls {
    /// Loads the certificate, key and CA bundle; fails if they cannot be used.
    pub fn load(settings: TlsSettings) -> Result<Arc<ServerTls>, TlsError> {
        let stamps = stamps(&settings);
        let config = server_config(&settings)?;
        Ok(Arc::new(ServerTls {
            settings,
            current: RwLock::new(config),
            seen: Mutex::new(stamps),
        }))
    }

    /// The settings the configuration is built from.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The configuration for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// Reads the files again and, if they make a usable configuration, gives it to new
    /// connections; otherwise keeps the current one. Logs the outcome with `why` (what asked
    /// for the reload).
    pub fn reload(&self, why: &str) -> Result<(), TlsError> {
        let mut seen = self.seen.lock();
        self.reload_locked(&mut seen, why)
    }

    /// Reloads if a file changed since the last attempt; `None` if none did. A failed
    /// attempt is not repeated until a file changes again, so a bad file is logged once.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let mut seen = self.seen.lock();
        if *seen == stamps(&self.settings) {
            return None;
        }
        Some(self.reload_locked(&mut seen, "the certificate files changed"))
    }

    fn reload_locked(&self, seen: &mut Vec<Option<FileStamp>>, why: &str) -> Result<(), TlsError> {
        // Stamped before reading: a write that lands while we read is seen by the next poll.
        *seen = stamps(&self.settings);
        match server_config(&self.settings) {
            Ok(config) => {
                *self.current.write() = config;
                tracing::info!(
                    "TLS certificate reloaded from {} ({why}); new connections use it",
                    self.settings.certfile.display()
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    "TLS certificate reload failed ({why}), keeping the previous certificate: {e}"
                );
                Err(e)
            }
        }
    }

    /// Polls the files' stamps every `every` and reloads when one changes, until `shutdown`
    /// turns true. The checks run on the blocking pool: a slow filesystem never holds a
    /// worker thread.
    pub async fn watch_files(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let tls = self.clone();
                    let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn stamps(s: &TlsSettings) -> Vec<Option<FileStamp>> {
    [Some(&s.certfile), Some(&s.keyfile), s.cacertfile.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| stamp(p))
        .collect()
}
