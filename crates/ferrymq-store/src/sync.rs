//! Group commit: one `fdatasync` per file covers every write made to it before the sync
//! started, across all queues and connections, so publisher confirms cost a shared fsync, not
//! one each.

use parking_lot::{Condvar, Mutex};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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

/// Makes writes durable. The broker uses [`OsSync`]; tests put one that fails in its place
/// (see [`FailingSync`]), since a real fsync failure cannot be provoked on demand.
pub trait Syncer: Send + Sync {
    /// Makes the data written to `file` (found at `path`) durable.
    fn sync_file(&self, file: &File, path: &Path) -> std::io::Result<()>;
    /// Makes the entries of directory `path` durable: files created, renamed or removed in
    /// it (a new segment's data is not found after a crash unless its name is).
    fn sync_dir(&self, path: &Path) -> std::io::Result<()>;
    /// Called before a write to the definitions journal at `path`: the OS's never refuses;
    /// tests refuse to see what a failed write (a full disk) leaves behind.
    fn before_write(&self, _path: &Path) -> std::io::Result<()> {
        Ok(())
    }
}

/// A shared [`Syncer`] that configuration structs can hold (and print).
#[derive(Clone)]
pub struct SyncerRef(pub Arc<dyn Syncer>);

impl std::fmt::Debug for SyncerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Syncer")
    }
}

impl Default for SyncerRef {
    fn default() -> Self {
        SyncerRef(Arc::new(OsSync))
    }
}

/// The operating system's `fdatasync`.
pub struct OsSync;

impl Syncer for OsSync {
    fn sync_file(&self, file: &File, _path: &Path) -> std::io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        sync_dir(path)
    }
}

/// Fsyncs a directory, so the names created, renamed or removed in it are durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// A [`Syncer`] for tests: fails the syncs of files whose path contains a given text, as
/// many times as asked, and otherwise syncs for real.
#[derive(Default)]
pub struct FailingSync {
    rule: Mutex<Option<(String, u32)>>,
    writes: Mutex<Option<(String, u32)>>,
}

impl FailingSync {
    /// Makes the next `times` syncs of files or directories whose path contains `text` fail
    /// with EIO.
    pub fn fail(&self, text: &str, times: u32) {
        *self.rule.lock() = Some((text.to_string(), times));
    }

    /// Makes the next `times` definitions journal writes to a path containing `text` fail
    /// with ENOSPC, as on a full disk.
    pub fn fail_writes(&self, text: &str, times: u32) {
        *self.writes.lock() = Some((text.to_string(), times));
    }

    fn check(rule: &Mutex<Option<(String, u32)>>, path: &Path, errno: i32) -> std::io::Result<()> {
        let mut rule = rule.lock();
        if let Some((text, left)) = rule.as_mut() {
            if *left > 0 && path.to_string_lossy().contains(text.as_str()) {
                *left -= 1;
                return Err(std::io::Error::from_raw_os_error(errno));
            }
        }
        Ok(())
    }
}

impl Syncer for FailingSync {
    fn sync_file(&self, file: &File, path: &Path) -> std::io::Result<()> {
        FailingSync::check(&self.rule, path, EIO)?;
        file.sync_data()
    }

    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        FailingSync::check(&self.rule, path, EIO)?;
        sync_dir(path)
    }

    fn before_write(&self, path: &Path) -> std::io::Result<()> {
        FailingSync::check(&self.writes, path, ENOSPC)
    }
}

/// EIO, what Linux returns when writeback of a file's pages failed.
const EIO: i32 = 5;
/// ENOSPC: no space left on the device.
const ENOSPC: i32 = 28;

/// Whether the writes to one log (a queue's segment files, a delayed exchange's log, the
/// definitions journal) reached the disk.
///
/// After a failed fsync the kernel may have dropped the dirty pages and a later fsync can
/// succeed without writing them ("fsyncgate"), so a failed sync is never retried: every write
/// since the log's last good sync is lost for good, and the log refuses new writes.
pub struct LogHealth {
    name: String,
    /// Writes with this ticket or later are not durable (`u64::MAX` while healthy).
    lost_from: AtomicU64,
    /// The last sync round in which every file of this log synced (the sync thread's).
    last_good: AtomicU64,
    /// The log only exists on disk if this record of another log (the definitions journal
    /// entry that created it) is durable.
    depends: Option<(Arc<LogHealth>, u64)>,
}

impl LogHealth {
    /// A healthy log named `name` (its directory, for log lines).
    pub fn new(name: impl Into<String>) -> Arc<LogHealth> {
        Arc::new(LogHealth {
            name: name.into(),
            lost_from: AtomicU64::new(u64::MAX),
            last_good: AtomicU64::new(0),
            depends: None,
        })
    }

    /// A healthy log whose existence rests on write `ticket` of `parent` (the definitions
    /// record that declared it): its writes count as lost if that record is.
    pub fn depending_on(name: impl Into<String>, parent: Arc<LogHealth>, ticket: u64) -> Arc<Self> {
        Arc::new(LogHealth {
            name: name.into(),
            lost_from: AtomicU64::new(u64::MAX),
            last_good: AtomicU64::new(0),
            depends: Some((parent, ticket)),
        })
    }

    /// Its name (a directory or file).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a sync of the log failed: it accepts no more writes.
    pub fn is_failed(&self) -> bool {
        self.lost_from.load(Ordering::Acquire) != u64::MAX
            || self
                .depends
                .as_ref()
                .is_some_and(|(p, t)| !p.is_durable(*t))
    }

    /// Whether a write that got `ticket` is durable once group commit has reached it
    /// (false if a sync of the log failed before covering it).
    pub fn is_durable(&self, ticket: u64) -> bool {
        ticket < self.lost_from.load(Ordering::Acquire)
            && self.depends.as_ref().is_none_or(|(p, t)| p.is_durable(*t))
    }

    fn lose_since_last_good(&self) {
        let from = self.last_good.load(Ordering::Relaxed) + 1;
        self.lost_from.fetch_min(from, Ordering::AcqRel);
    }
}

/// Writes made durable by group commit, each with the log it went to: complete once
/// [`SyncGroup::synced`] reaches [`Pending::ticket`], and kept only if none was lost
/// ([`Pending::lost`]). Holds one log without allocating.
#[derive(Clone, Default)]
pub struct Pending {
    first: Option<(u64, Arc<LogHealth>)>,
    more: Vec<(u64, Arc<LogHealth>)>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("ticket", &self.ticket())
            .field(
                "logs",
                &(usize::from(self.first.is_some()) + self.more.len()),
            )
            .finish()
    }
}

impl Pending {
    /// One write with `ticket` to `log`.
    pub fn one(ticket: u64, log: Arc<LogHealth>) -> Pending {
        Pending {
            first: Some((ticket, log)),
            more: Vec::new(),
        }
    }

    /// Adds a write.
    pub fn add(&mut self, ticket: u64, log: Arc<LogHealth>) {
        match self.first {
            None => self.first = Some((ticket, log)),
            Some(_) => self.more.push((ticket, log)),
        }
    }

    /// Adds every write of `other`.
    pub fn merge(&mut self, other: Pending) {
        for (t, l) in other.first.into_iter().chain(other.more) {
            self.add(t, l);
        }
    }

    /// Whether there is nothing to wait for.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The group-commit ticket after which every write is settled (0: nothing to wait for).
    pub fn ticket(&self) -> u64 {
        self.first
            .iter()
            .chain(&self.more)
            .map(|(t, _)| *t)
            .max()
            .unwrap_or(0)
    }

    /// Whether a write was lost to a failed sync (ask once [`Pending::ticket`] is synced).
    pub fn lost(&self) -> bool {
        self.first
            .iter()
            .chain(&self.more)
            .any(|(t, l)| !l.is_durable(*t))
    }
}

/// A file written through the group commit: an open file, its path (for logs), the log it
/// belongs to and whether it is already waiting for the next sync round.
pub struct SyncFile {
    file: File,
    path: PathBuf,
    health: Arc<LogHealth>,
    queued: AtomicBool,
}

impl SyncFile {
    /// Wraps an open file of the log `health` describes.
    pub fn new(file: File, path: PathBuf, health: Arc<LogHealth>) -> Arc<SyncFile> {
        Arc::new(SyncFile {
            file,
            path,
            health,
            queued: AtomicBool::new(false),
        })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

struct SyncState {
    /// Tickets handed out now are covered by the next sync to start.
    epoch: u64,
    dirty: Vec<Arc<SyncFile>>,
    /// Directories whose entries changed, with the log each change belongs to.
    dirs: Vec<(PathBuf, Arc<LogHealth>)>,
    /// Writes recorded since the last round started (for the batch-size histogram).
    writes: u64,
    stop: bool,
}

/// Batches fsyncs on a dedicated thread; waiters watch the last durable ticket.
pub struct SyncGroup {
    policy: FsyncPolicy,
    syncer: Arc<dyn Syncer>,
    reaper: Arc<crate::reaper::Reaper>,
    state: Mutex<SyncState>,
    wake: Condvar,
    synced: watch::Sender<u64>,
    /// Wakes threads blocked in [`SyncGroup::wait_for`] after each round.
    round: (Mutex<()>, Condvar),
    stopped: AtomicBool,
}

impl SyncGroup {
    /// Starts the sync thread, syncing with the operating system's `fdatasync`.
    pub fn start(policy: FsyncPolicy) -> Arc<SyncGroup> {
        SyncGroup::start_with(policy, Arc::new(OsSync))
    }

    /// Starts the sync thread with `syncer` doing the syncs.
    pub fn start_with(policy: FsyncPolicy, syncer: Arc<dyn Syncer>) -> Arc<SyncGroup> {
        let g = Arc::new(SyncGroup {
            policy,
            reaper: crate::reaper::Reaper::start(syncer.clone()),
            syncer,
            state: Mutex::new(SyncState {
                epoch: 1,
                dirty: Vec::new(),
                dirs: Vec::new(),
                writes: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            synced: watch::channel(0).0,
            round: (Mutex::new(()), Condvar::new()),
            stopped: AtomicBool::new(false),
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
    pub fn written(&self, file: &Arc<SyncFile>) -> u64 {
        let mut st = self.state.lock();
        let ticket = st.epoch;
        if self.policy == FsyncPolicy::Never {
            st.epoch += 1;
            drop(st);
            self.synced.send_replace(ticket);
            return ticket;
        }
        st.writes += 1;
        if !file.queued.swap(true, Ordering::Relaxed) {
            st.dirty.push(file.clone());
        }
        drop(st);
        self.wake.notify_one();
        ticket
    }

    /// Records that entries of directory `dir` changed (a file of `log` was created, renamed
    /// or removed); the change is durable once [`SyncGroup::synced`] reaches the returned
    /// ticket, and a failure to sync it fails `log` like a failed file sync.
    pub fn dir_changed(&self, dir: &Path, log: &Arc<LogHealth>) -> u64 {
        let mut st = self.state.lock();
        let ticket = st.epoch;
        if self.policy == FsyncPolicy::Never {
            return ticket.saturating_sub(1);
        }
        st.writes += 1;
        if !st.dirs.iter().any(|(d, l)| d == dir && Arc::ptr_eq(l, log)) {
            st.dirs.push((dir.to_path_buf(), log.clone()));
        }
        drop(st);
        self.wake.notify_one();
        ticket
    }

    /// What syncs (and, in tests, refuses writes).
    pub fn syncer(&self) -> &Arc<dyn Syncer> {
        &self.syncer
    }

    /// The background remover of deleted files and directories.
    pub fn reaper(&self) -> &Arc<crate::reaper::Reaper> {
        &self.reaper
    }

    /// The highest ticket known durable.
    pub fn synced(&self) -> u64 {
        *self.synced.borrow()
    }

    /// A receiver that changes whenever more writes become durable.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }

    /// Blocks the calling thread until `ticket` is synced (or the sync thread stopped);
    /// for callers outside the async runtime, such as administration and imports.
    pub fn wait_for(&self, ticket: u64) {
        let mut g = self.round.0.lock();
        while self.synced() < ticket && !self.stopped.load(Ordering::Acquire) {
            // Bounded, so a wake-up that came just before the wait is never waited out.
            self.round
                .1
                .wait_for(&mut g, std::time::Duration::from_millis(50));
        }
    }

    /// Asks the sync and removal threads to finish what is pending and exit.
    pub fn stop(&self) {
        self.reaper.stop();
        self.state.lock().stop = true;
        self.wake.notify_one();
    }

    fn run(&self) {
        loop {
            let (files, dirs, covered, writes) = {
                let mut st = self.state.lock();
                while st.dirty.is_empty() && st.dirs.is_empty() && !st.stop {
                    self.wake.wait(&mut st);
                }
                if st.dirty.is_empty() && st.dirs.is_empty() {
                    self.stopped.store(true, Ordering::Release);
                    self.round.1.notify_all();
                    return;
                }
                let covered = st.epoch;
                st.epoch += 1;
                let files = std::mem::take(&mut st.dirty);
                // Cleared under the lock: a write after this point queues the file again.
                for f in &files {
                    f.queued.store(false, Ordering::Relaxed);
                }
                let writes = std::mem::take(&mut st.writes);
                (files, std::mem::take(&mut st.dirs), covered, writes)
            };
            let started = std::time::Instant::now();
            let mut failed: Vec<&Arc<LogHealth>> = Vec::new();
            let synced = files
                .iter()
                .map(|f| {
                    (
                        f.path.as_path(),
                        &f.health,
                        self.syncer.sync_file(&f.file, &f.path),
                    )
                })
                .chain(dirs.iter().map(|(d, h)| {
                    // A directory removed meanwhile (its log was deleted) keeps nothing.
                    let r = match self.syncer.sync_dir(d) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        r => r,
                    };
                    (d.as_path(), h, r)
                }));
            for (path, health, result) in synced {
                let Err(e) = result else { continue };
                if !health.is_failed() {
                    tracing::error!(
                        "fsync of {} failed: {e}. Its log {} is marked failed: nothing \
                         written to it since its last good sync is confirmed (publishers get \
                         basic.nack) and it takes no more writes until the broker restarts",
                        path.display(),
                        health.name()
                    );
                }
                // Never retried: a second fsync can succeed after the kernel dropped the
                // pages the first one failed to write.
                health.lose_since_last_good();
                failed.push(health);
            }
            crate::histogram::FSYNC_SECONDS.observe(started.elapsed().as_secs_f64());
            crate::histogram::GROUP_COMMIT_WRITES.observe(writes as f64);
            let logs = files
                .iter()
                .map(|f| &f.health)
                .chain(dirs.iter().map(|(_, h)| h));
            for h in logs {
                if !failed.iter().any(|x| Arc::ptr_eq(x, h)) {
                    h.last_good.store(covered, Ordering::Relaxed);
                }
            }
            // Failures are recorded before the ticket moves, so whoever sees the ticket
            // covered also sees the loss.
            self.synced.send_replace(covered);
            let _g = self.round.0.lock();
            self.round.1.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str) -> Arc<SyncFile> {
        let p = dir.join(name);
        SyncFile::new(File::create(&p).unwrap(), p, LogHealth::new(name))
    }

    fn wait_for(g: &SyncGroup, ticket: u64) {
        let mut rx = g.subscribe();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            while *rx.borrow_and_update() < ticket {
                rx.changed().await.unwrap();
            }
        });
    }

    #[test]
    fn a_write_becomes_durable_after_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "a");
        let g = SyncGroup::start(FsyncPolicy::Always);
        let t1 = g.written(&f);
        let t2 = g.written(&f);
        wait_for(&g, t2);
        assert!(g.synced() >= t1);
        g.stop();
    }

    #[test]
    fn policy_never_confirms_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "a");
        let g = SyncGroup::start(FsyncPolicy::Never);
        let t = g.written(&f);
        assert!(g.synced() >= t);
    }

    #[test]
    fn a_failed_sync_is_never_retried_and_loses_what_its_log_wrote_since_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Arc::new(FailingSync::default());
        let g = SyncGroup::start_with(FsyncPolicy::Always, syncer.clone());
        let (a, b) = (file(dir.path(), "a"), file(dir.path(), "b"));
        let t0 = g.written(&a);
        wait_for(&g, t0);
        assert!(a.health.is_durable(t0) && !a.health.is_failed());
        syncer.fail("/a", 1);
        let (t1, tb) = (g.written(&a), g.written(&b));
        wait_for(&g, t1.max(tb));
        assert!(!a.health.is_durable(t1), "the failed write is lost");
        assert!(
            a.health.is_durable(t0),
            "what an earlier sync covered stays durable"
        );
        assert!(a.health.is_failed());
        assert!(
            b.health.is_durable(tb),
            "another log in the same round is fine"
        );
        // The next sync of the same file would succeed: it must not resurrect t1.
        let t2 = g.written(&a);
        wait_for(&g, t2);
        assert!(!a.health.is_durable(t1) && !a.health.is_durable(t2));
        let mut p = Pending::one(tb, b.health.clone());
        assert!(!p.lost());
        p.add(t1, a.health.clone());
        assert!(p.lost() && p.ticket() == t1.max(tb));
        g.stop();
    }

    #[test]
    fn a_log_depending_on_a_lost_record_is_failed_too() {
        let parent = LogHealth::new("journal");
        let child = LogHealth::depending_on("queue", parent.clone(), 5);
        assert!(child.is_durable(7) && !child.is_failed());
        parent.last_good.store(4, Ordering::Relaxed);
        parent.lose_since_last_good();
        assert!(!child.is_durable(7) && child.is_failed());
    }
}
