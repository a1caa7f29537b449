//! Removing files off the hot path: a deleted queue's directory, or a segment whose every
//! record was acked, is handed to one background thread instead of being unlinked while the
//! queue's lock (and, for a delete, the vhost's topology lock) is held on a connection's
//! task. Measured before this existed: removing a deleted queue's 135 MB of segments held
//! both locks for 224 ms (`docs/storage.md`).
//!
//! This is safe because nothing is ever created again under a path handed here: a queue
//! declared anew under the same name gets a directory of its own incarnation, and segment
//! numbers only grow. A removal lost to a crash is redone at the next start (orphaned
//! directories and fully acked segments are removed during recovery).

use crate::sync::Syncer;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Default)]
struct Queue {
    work: VecDeque<PathBuf>,
    /// A removal is being done right now.
    busy: bool,
    stop: bool,
}

/// The background remover.
pub struct Reaper {
    syncer: Arc<dyn Syncer>,
    queue: Mutex<Queue>,
    wake: Condvar,
    idle: Condvar,
}

impl Reaper {
    /// Starts the removal thread; `syncer` syncs the directories removals change.
    pub fn start(syncer: Arc<dyn Syncer>) -> Arc<Reaper> {
        let r = Arc::new(Reaper {
            syncer,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            idle: Condvar::new(),
        });
        let me = r.clone();
        let spawned = std::thread::Builder::new()
            .name("ferrymq-reaper".into())
            .spawn(move || me.run());
        if let Err(e) = spawned {
            // Removals then happen on the caller's thread (see `remove`).
            tracing::error!("cannot start the file removal thread: {e}");
            r.queue.lock().stop = true;
        }
        r
    }

    /// Removes `path` (a file, or a directory with everything in it) soon, then syncs its
    /// parent directory so the removal is durable.
    pub fn remove(&self, path: PathBuf) {
        let mut q = self.queue.lock();
        if q.stop {
            drop(q);
            self.remove_now(&path);
            return;
        }
        q.work.push_back(path);
        drop(q);
        self.wake.notify_one();
    }

    /// Blocks until every removal asked for so far is done (tests, shutdown).
    pub fn wait_idle(&self) {
        let mut q = self.queue.lock();
        while !q.work.is_empty() || q.busy {
            self.idle.wait(&mut q);
        }
    }

    /// Finishes what is queued, then stops the thread.
    pub fn stop(&self) {
        self.wait_idle();
        self.queue.lock().stop = true;
        self.wake.notify_one();
    }

    fn run(&self) {
        loop {
            let path = {
                let mut q = self.queue.lock();
                loop {
                    if let Some(p) = q.work.pop_front() {
                        q.busy = true;
                        break p;
                    }
                    if q.stop {
                        return;
                    }
                    self.idle.notify_all();
                    self.wake.wait(&mut q);
                }
            };
            self.remove_now(&path);
            let mut q = self.queue.lock();
            q.busy = false;
            if q.work.is_empty() {
                self.idle.notify_all();
            }
        }
    }

    fn remove_now(&self, path: &Path) {
        let removed = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => {
                if let Some(parent) = path.parent() {
                    if let Err(e) = self.syncer.sync_dir(parent) {
                        // Nobody waits on a removal: at worst the files come back after a
                        // crash and are removed again at the next start.
                        tracing::warn!("{}: cannot sync after a removal: {e}", parent.display());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_are_removed_in_the_background() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("q");
        std::fs::create_dir_all(dir.join("p1")).unwrap();
        std::fs::write(dir.join("p1").join("0000000001.seg"), b"x").unwrap();
        let file = d.path().join("lonely.seg");
        std::fs::write(&file, b"y").unwrap();
        let r = Reaper::start(Arc::new(crate::sync::OsSync));
        r.remove(dir.clone());
        r.remove(file.clone());
        r.remove(d.path().join("never-existed"));
        r.wait_idle();
        assert!(!dir.exists() && !file.exists());
        r.stop();
        // After stop, removals happen at once.
        std::fs::write(&file, b"z").unwrap();
        r.remove(file.clone());
        assert!(!file.exists());
    }
}
