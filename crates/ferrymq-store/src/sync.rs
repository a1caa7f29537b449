//! Group commit: one `fdatasync` per file covers every write made to it before the sync
//! started, across all queues and connections, so publisher confirms cost a shared fsync, not
//! one each.

use parking_lot::{Condvar, Mutex};
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// When persistent messages are confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Confirm after the data reached the disk (fdatasync). Survives power loss.
    #[default]
    Always,
    /// Confirm once written to the OS. Survives a broker crash, not a power loss.
    Never,
}

struct SyncState {
    /// Tickets handed out now are covered by the next sync to start.
    epoch: u64,
    dirty: Vec<Arc<File>>,
    stop: bool,
}

/// Batches fsyncs on a dedicated thread; waiters watch the last durable ticket.
pub struct SyncGroup {
    policy: FsyncPolicy,
    state: Mutex<SyncState>,
    wake: Condvar,
    synced: watch::Sender<u64>,
}

impl SyncGroup {
    /// Starts the sync thread.
    pub fn start(policy: FsyncPolicy) -> Arc<SyncGroup> {
        let g = Arc::new(SyncGroup {
            policy,
            state: Mutex::new(SyncState {
                epoch: 1,
                dirty: Vec::new(),
                stop: false,
            }),
            wake: Condvar::new(),
            synced: watch::channel(0).0,
        });
        if policy == FsyncPolicy::Always {
            let t = g.clone();
            let spawned = std::thread::Builder::new()
                .name("ferrymq-fsync".into())
                .spawn(move || t.run());
            if let Err(e) = spawned {
                // Without the thread nothing would ever be confirmed: say so loudly.
                tracing::error!("cannot start the fsync thread: {e}");
            }
        }
        g
    }

    /// Records that `file` was written to; the write is durable once [`SyncGroup::synced`]
    /// reaches the returned ticket.
    pub fn written(&self, file: &Arc<File>) -> u64 {
        let mut st = self.state.lock();
        let ticket = st.epoch;
        if self.policy == FsyncPolicy::Never {
            st.epoch += 1;
            drop(st);
            self.synced.send_replace(ticket);
            return ticket;
        }
        if !st.dirty.iter().any(|f| Arc::ptr_eq(f, file)) {
            st.dirty.push(file.clone());
        }
        drop(st);
        self.wake.notify_one();
        ticket
    }

    /// The highest ticket known durable.
    pub fn synced(&self) -> u64 {
        *self.synced.borrow()
    }

    /// A receiver that changes whenever more writes become durable.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }

    /// Asks the sync thread to finish what is pending and exit.
    pub fn stop(&self) {
        self.state.lock().stop = true;
        self.wake.notify_one();
    }

    fn run(&self) {
        loop {
            let (files, covered) = {
                let mut st = self.state.lock();
                while st.dirty.is_empty() && !st.stop {
                    self.wake.wait(&mut st);
                }
                if st.dirty.is_empty() {
                    return;
                }
                let covered = st.epoch;
                st.epoch += 1;
                (std::mem::take(&mut st.dirty), covered)
            };
            let mut failed = Vec::new();
            for f in files {
                if let Err(e) = f.sync_data() {
                    tracing::error!(
                        "fsync failed, will retry (nothing is confirmed meanwhile): {e}"
                    );
                    failed.push(f);
                }
            }
            if failed.is_empty() {
                self.synced.send_replace(covered);
            } else {
                // Writes of this round stay unconfirmed until a later sync of their file
                // succeeds; the epoch moved on, so the retry covers them too.
                self.state.lock().dirty.extend(failed);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_becomes_durable_after_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(File::create(dir.path().join("a")).unwrap());
        let g = SyncGroup::start(FsyncPolicy::Always);
        let mut rx = g.subscribe();
        let t1 = g.written(&f);
        let t2 = g.written(&f);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            while *rx.borrow_and_update() < t2 {
                rx.changed().await.unwrap();
            }
        });
        assert!(g.synced() >= t1);
        g.stop();
    }

    #[test]
    fn policy_never_confirms_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(File::create(dir.path().join("a")).unwrap());
        let g = SyncGroup::start(FsyncPolicy::Never);
        let t = g.written(&f);
        assert!(g.synced() >= t);
    }
}
