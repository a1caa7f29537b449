//! Resource alarms, as RabbitMQ raises them: when the broker's memory passes the high
//! watermark (a fraction of physical RAM, or of the control group's memory limit when that
//! is lower: see [`crate::memory_limit`]) or the data directory's disk runs low, connections that publish are blocked
//! (`connection.blocked`) until the alarm clears; consumers keep draining. Above half the
//! memory watermark, queues page new messages to disk instead of keeping them in RAM.

use crate::perf::procstat::rss_bytes;
use ferrymq_core::Broker;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often memory and disk are checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Fraction of the memory watermark above which queues page to disk (RabbitMQ's
/// `vm_memory_high_watermark_paging_ratio`).
const PAGING_RATIO: f64 = 0.5;

/// Alarm thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmLimits {
    /// Fraction of the memory limit (physical RAM, or the control group's limit when lower)
    /// the broker may use before publishers are blocked.
    pub memory_high_watermark: f64,
    /// Free bytes on the data directory's file system below which publishers are blocked.
    pub disk_free_limit: u64,
}

/// The running monitor; thresholds can be changed while it runs.
#[derive(Clone)]
pub struct AlarmMonitor {
    limits: Arc<Mutex<AlarmLimits>>,
}

impl AlarmMonitor {
    /// Starts checking every 250 ms on the current tokio runtime.
    pub fn spawn(broker: Arc<Broker>, data_dir: PathBuf, limits: AlarmLimits) -> AlarmMonitor {
        let m = AlarmMonitor {
            limits: Arc::new(Mutex::new(limits)),
        };
        let shared = m.limits.clone();
        tokio::spawn(async move {
            let total = match crate::memory_limit::effective() {
                Some((bytes, crate::memory_limit::Source::Cgroup)) => {
                    tracing::info!(
                        "memory limit {bytes} bytes from the control group (lower than RAM)"
                    );
                    bytes
                }
                Some((bytes, _)) => bytes,
                None => 0,
            };
            let mut current: Option<String> = None;
            let mut tick = tokio::time::interval(CHECK_EVERY);
            loop {
                tick.tick().await;
                let l = *shared.lock();
                let rss = rss_bytes(std::process::id()).unwrap_or(0);
                let mem_limit = (total as f64 * l.memory_high_watermark) as u64;
                let memory = total > 0 && rss > mem_limit;
                if let Some(p) = broker.persistence() {
                    p.set_paging(total > 0 && rss as f64 > mem_limit as f64 * PAGING_RATIO);
                }
                let free = disk_free(&data_dir);
                let disk = free.is_some_and(|f| f < l.disk_free_limit);
                // For the metrics endpoint (rabbitmq_resident_memory_limit_bytes, ...).
                let r = &broker.resources;
                r.memory_limit.store(mem_limit, Ordering::Relaxed);
                r.disk_free.store(free.unwrap_or(0), Ordering::Relaxed);
                r.disk_free_limit
                    .store(l.disk_free_limit, Ordering::Relaxed);
                let reason = match (memory, disk) {
                    (false, false) => None,
                    (true, false) => Some("memory".to_string()),
                    (false, true) => Some("disk".to_string()),
                    (true, true) => Some("memory and disk".to_string()),
                };
                if reason != current {
                    match &reason {
                        Some(r) => tracing::warn!(
                            "{r} alarm set: publishers are blocked (memory {rss} of {mem_limit} \
                             bytes allowed; disk free {} bytes, limit {})",
                            free.unwrap_or(0),
                            l.disk_free_limit
                        ),
                        None => tracing::info!("resource alarm cleared: publishers may continue"),
                    }
                    broker.set_blocked(reason.clone());
                    current = reason;
                }
            }
        });
        m
    }

    /// Replaces the thresholds (takes effect at the next check).
    pub fn set_limits(&self, limits: AlarmLimits) {
        *self.limits.lock() = limits;
    }
}

/// Bytes available to unprivileged users on the file system holding `path`.
fn disk_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_disk_are_readable_here() {
        assert!(disk_free(Path::new("/")).is_some());
        assert!(disk_free(Path::new("/no/such/dir")).is_none());
    }
}
