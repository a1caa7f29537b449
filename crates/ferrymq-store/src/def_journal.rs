//! The definitions on disk: a snapshot, `definitions.json` (RabbitMQ's format, replaced
//! atomically), and journal files `definitions.<n>.journal` holding every change made since,
//! one CRC-framed record per change (a JSON array of [`Change`]s), appended without an fsync
//! of their own: group commit covers them with everything else written meanwhile.
//!
//! A declaration therefore costs one small append, not a rewrite of the whole document, and
//! its declare-ok waits for the shared fsync. When the journal has grown past the snapshot
//! (and past 4 MiB), a background thread compacts: it switches appends to a new journal
//! file, writes a snapshot of the state, then deletes the journals the snapshot covers. At
//! start the snapshot is loaded, the journals are replayed in order, and if there were any
//! records the result is written as a fresh snapshot.

use crate::def_state::{Change, DefinitionsState};
use crate::definitions::Definitions;
use crate::record::{self, Scan};
use crate::sync::{sync_dir, LogHealth, Pending, SyncFile, SyncGroup};
use crate::StoreError;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Journal bytes below which no compaction happens, whatever the snapshot's size.
const COMPACT_MIN: u64 = 4 << 20;

/// The snapshot's file name.
pub const SNAPSHOT: &str = "definitions.json";

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(path.display().to_string(), e)
}

fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("definitions.{generation}.journal"))
}

/// The journal files in `dir`, oldest first.
fn journals(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name
                .strip_prefix("definitions.")?
                .strip_suffix(".journal")?;
            Some((n.parse().ok()?, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

struct Journal {
    state: DefinitionsState,
    file: Arc<SyncFile>,
    generation: u64,
    len: u64,
    /// Journal bytes written since the last snapshot, and that snapshot's size.
    since_snapshot: u64,
    snapshot_len: u64,
    scratch: Vec<u8>,
    /// Records not yet known durable: (ticket, journal generation, offset where the record
    /// starts), oldest first. After a failed fsync the journal is cut back at the first of
    /// them that was lost, so a change its client was told failed cannot come back after a
    /// restart.
    unsynced: VecDeque<(u64, u64, u64)>,
    /// The journal was cut back after a failed fsync; it takes no more records.
    cut: bool,
}

/// The broker's definitions: their state in memory and their snapshot and journal on disk.
pub struct DefinitionsStore {
    dir: PathBuf,
    sync: Arc<SyncGroup>,
    health: Arc<LogHealth>,
    journal: Mutex<Journal>,
    compacting: AtomicBool,
}

impl DefinitionsStore {
    /// Opens the definitions in `dir`: the snapshot, then every journal replayed over it.
    /// Returns the store and what it holds, or `None` for a directory that never had
    /// definitions.
    pub fn open(
        dir: &Path,
        sync: Arc<SyncGroup>,
    ) -> Result<(Arc<DefinitionsStore>, Option<Definitions>), StoreError> {
        let snapshot_path = dir.join(SNAPSHOT);
        let snapshot = Definitions::load(&snapshot_path)?;
        let files = journals(dir)?;
        let had_snapshot = snapshot.is_some();
        let snapshot_len = std::fs::metadata(&snapshot_path).map_or(0, |m| m.len());
        let mut state = DefinitionsState::from_definitions(snapshot.unwrap_or_default());
        let mut replayed = 0usize;
        for (_, path) in &files {
            replayed += replay(path, &mut state)?;
        }
        // Empty journals alone (a first start that saved nothing) still mean a fresh start.
        let fresh = !had_snapshot && replayed == 0;
        let generation = files.last().map_or(1, |(n, _)| n + 1);
        let health = LogHealth::new(dir.join("definitions.*.journal").display().to_string());
        let file = create_journal(dir, generation, &health)?;
        let store = Arc::new(DefinitionsStore {
            dir: dir.to_path_buf(),
            sync,
            health,
            journal: Mutex::new(Journal {
                state,
                file,
                generation,
                len: 0,
                since_snapshot: 0,
                snapshot_len,
                scratch: Vec::new(),
                unsynced: VecDeque::new(),
                cut: false,
            }),
            compacting: AtomicBool::new(false),
        });
        if !files.is_empty() {
            tracing::info!(
                "replayed {replayed} definitions changes from {} journal file(s)",
                files.len()
            );
            // Start from a clean snapshot, so the next start has nothing to replay.
            store.compact()?;
        } else {
            sync_dir(dir).map_err(io(dir))?;
        }
        let loaded = (!fresh).then(|| store.definitions());
        Ok((store, loaded))
    }

    /// The definitions as they are now (RabbitMQ's format).
    pub fn definitions(&self) -> Definitions {
        let mut d = self.journal.lock().state.to_definitions();
        stamp(&mut d);
        d
    }

    /// The journal's health: a declaration is durable once group commit covered its
    /// ticket, unless this failed.
    pub fn health(&self) -> &Arc<LogHealth> {
        &self.health
    }

    /// Records `changes` (one atomic record) and applies them to the state. Returns the
    /// write for group commit to make durable; nothing changes if the write fails.
    pub fn commit(self: &Arc<Self>, changes: &[Change]) -> Result<Pending, StoreError> {
        if self.health.is_failed() {
            self.cut_lost();
            return Err(StoreError::Failed(self.health.name().to_string()));
        }
        let mut j = self.journal.lock();
        let payload = serde_json::to_vec(changes)
            .map_err(|e| StoreError::Definitions(self.health.name().into(), e.to_string()))?;
        let mut buf = std::mem::take(&mut j.scratch);
        buf.clear();
        record::encode(&payload, &mut buf);
        let at = j.len;
        let written = self
            .sync
            .syncer()
            .before_write(j.file.path())
            .and_then(|()| j.file.file().write_all_at(&buf, at));
        let n = buf.len() as u64;
        j.scratch = buf;
        if let Err(e) = written {
            // No torn record may stay: a later append would land after it.
            let _ = j.file.file().set_len(at);
            return Err(io(j.file.path())(e));
        }
        j.len += n;
        j.since_snapshot += n;
        for c in changes {
            j.state.apply(c);
        }
        let ticket = self.sync.written(&j.file);
        let synced = self.sync.synced();
        while j
            .unsynced
            .front()
            .is_some_and(|(t, _, _)| *t <= synced && self.health.is_durable(*t))
        {
            j.unsynced.pop_front();
        }
        let generation = j.generation;
        j.unsynced.push_back((ticket, generation, at));
        let due = j.since_snapshot > COMPACT_MIN.max(j.snapshot_len);
        drop(j);
        if due && !self.compacting.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("ferrymq-defs-compact".into())
                .spawn(move || {
                    if let Err(e) = me.compact() {
                        tracing::error!("cannot compact the definitions journal: {e}");
                    }
                    me.compacting.store(false, Ordering::Release);
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start compacting the definitions journal: {e}");
                self.compacting.store(false, Ordering::Release);
            }
        }
        Ok(Pending::one(ticket, self.health.clone()))
    }

    /// Replaces everything with `d` (a fresh data directory's first definitions), written
    /// as a snapshot before this returns.
    pub fn reset(&self, d: Definitions) -> Result<(), StoreError> {
        self.journal.lock().state = DefinitionsState::from_definitions(d);
        self.compact()
    }

    /// Writes a snapshot of the state and deletes the journals it covers. Appends go on
    /// meanwhile, to a new journal file.
    pub fn compact(&self) -> Result<(), StoreError> {
        if self.health.is_failed() {
            // The state holds changes whose clients were told they failed: it must not be
            // written as a snapshot.
            self.cut_lost();
            return Err(StoreError::Failed(self.health.name().to_string()));
        }
        let (state, covered) = {
            let mut j = self.journal.lock();
            let next = j.generation + 1;
            let file = create_journal(&self.dir, next, &self.health)?;
            // The new journal's name must be durable before records in it count as durable.
            self.sync.dir_changed(&self.dir, &self.health);
            let covered = j.generation;
            j.file = file;
            j.generation = next;
            j.len = 0;
            j.since_snapshot = 0;
            (j.state.clone(), covered)
        };
        let mut d = state.to_definitions();
        stamp(&mut d);
        let path = self.dir.join(SNAPSHOT);
        d.save(&path)?;
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        for (n, p) in journals(&self.dir)? {
            if n <= covered {
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        self.journal.lock().snapshot_len = len;
        Ok(())
    }
}

impl DefinitionsStore {
    /// After a failed fsync of the journal: truncates it before the first record that was
    /// not made durable (and empties any later journal file), so what is on disk is what
    /// clients were told was saved. Done once; the journal takes nothing more.
    pub fn cut_lost(&self) {
        let mut j = self.journal.lock();
        if j.cut || !self.health.is_failed() {
            return;
        }
        j.cut = true;
        let synced = self.sync.synced();
        let Some(&(_, generation, at)) = j
            .unsynced
            .iter()
            .find(|(t, _, _)| *t > synced || !self.health.is_durable(*t))
        else {
            return;
        };
        let files = journals(&self.dir).unwrap_or_default();
        for (n, path) in files.iter().filter(|(n, _)| *n >= generation) {
            let keep = if *n == generation { at } else { 0 };
            let cut = OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(keep).and_then(|()| f.sync_all()));
            match cut {
                Ok(()) => tracing::error!(
                    "{}: cut back to {keep} bytes after a failed fsync: the definitions \
                     changes after that were not confirmed and are dropped",
                    path.display()
                ),
                Err(e) => tracing::error!(
                    "{}: cannot cut the journal back after a failed fsync: {e}",
                    path.display()
                ),
            }
        }
    }
}

/// Marks a document as FerryMQ's.
fn stamp(d: &mut Definitions) {
    d.product_name = "FerryMQ".into();
    d.product_version = env!("CARGO_PKG_VERSION").into();
}

fn create_journal(
    dir: &Path,
    generation: u64,
    health: &Arc<LogHealth>,
) -> Result<Arc<SyncFile>, StoreError> {
    let path = journal_path(dir, generation);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    Ok(SyncFile::new(file, path, health.clone()))
}

/// Applies the records of one journal file; returns how many changes it held. A torn or
/// corrupt tail is cut off; a corrupt record followed by intact ones is skipped. Either is
/// reported, since a change is lost with it.
fn replay(path: &Path, state: &mut DefinitionsState) -> Result<usize, StoreError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let mut off = 0usize;
    let mut n = 0;
    loop {
        match record::scan(&bytes, off) {
            Scan::Record(payload, next) => {
                match serde_json::from_slice::<Vec<Change>>(payload) {
                    Ok(changes) => {
                        for c in &changes {
                            state.apply(c);
                        }
                        n += changes.len();
                    }
                    Err(e) => tracing::error!(
                        "{}: the definitions change at offset {off} cannot be read ({e}); \
                         it is skipped",
                        path.display()
                    ),
                }
                off = next;
            }
            Scan::End => break,
            damage @ (Scan::Torn | Scan::Corrupt) => {
                let over = match damage {
                    Scan::Corrupt => record::step_over(&bytes, off),
                    _ => None,
                };
                if let Some((damaged, next)) = over {
                    for (at, len) in damaged {
                        tracing::error!(
                            "{}: corrupt definitions change (CRC mismatch) at offset {at}, \
                             {len} bytes: it is lost and skipped; the changes after it are kept",
                            path.display()
                        );
                    }
                    off = next;
                    continue;
                }
                tracing::warn!(
                    "{}: the definitions change at offset {off} is torn or corrupt; bytes \
                     {off}..{} are dropped ({} changes before it kept)",
                    path.display(),
                    bytes.len(),
                    n
                );
                break;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::QueueDef;
    use crate::sync::FsyncPolicy;

    fn q(name: &str) -> Change {
        Change::QueueDeclared(QueueDef {
            name: name.into(),
            vhost: "/".into(),
            durable: true,
            incarnation: Some(format!("i-{name}")),
            ..Default::default()
        })
    }

    fn names(d: &Definitions) -> Vec<String> {
        d.queues.iter().map(|q| q.name.clone()).collect()
    }

    fn open(dir: &Path) -> (Arc<DefinitionsStore>, Option<Definitions>) {
        DefinitionsStore::open(dir, SyncGroup::start(FsyncPolicy::Never)).unwrap()
    }

    #[test]
    fn changes_survive_a_restart_through_the_journal_and_it_is_compacted_at_start() {
        let d = tempfile::tempdir().unwrap();
        let (s, loaded) = open(d.path());
        assert!(loaded.is_none(), "a fresh directory");
        s.commit(&[q("a")]).unwrap();
        s.commit(&[q("b"), q("c")]).unwrap();
        s.commit(&[Change::QueueDeleted {
            vhost: "/".into(),
            name: "b".into(),
            incarnation: Some("i-b".into()),
        }])
        .unwrap();
        drop(s);
        assert!(
            !d.path().join(SNAPSHOT).exists(),
            "no snapshot was needed yet"
        );
        let (s, loaded) = open(d.path());
        assert_eq!(names(&loaded.unwrap()), vec!["a", "c"]);
        // Replayed into a fresh snapshot; the journal starts empty.
        assert!(d.path().join(SNAPSHOT).exists());
        let js = journals(d.path()).unwrap();
        assert_eq!(js.len(), 1);
        assert_eq!(std::fs::metadata(&js[0].1).unwrap().len(), 0);
        s.commit(&[q("d")]).unwrap();
        drop(s);
        let (_s, loaded) = open(d.path());
        assert_eq!(names(&loaded.unwrap()), vec!["a", "c", "d"]);
    }

    #[test]
    fn a_crash_between_snapshot_and_journal_removal_replays_harmlessly() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = open(d.path());
        s.commit(&[q("a"), q("b")]).unwrap();
        let before = std::fs::read(journal_path(d.path(), 1)).unwrap();
        s.compact().unwrap();
        drop(s);
        // As if the old journal had not been deleted yet when the process died.
        std::fs::write(journal_path(d.path(), 1), before).unwrap();
        let (_s, loaded) = open(d.path());
        assert_eq!(names(&loaded.unwrap()), vec!["a", "b"]);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_rest_kept() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = open(d.path());
        s.commit(&[q("a")]).unwrap();
        s.commit(&[q("b")]).unwrap();
        drop(s);
        let p = journal_path(d.path(), 1);
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (_s, loaded) = open(d.path());
        assert_eq!(names(&loaded.unwrap()), vec!["a"]);
    }

    #[test]
    fn a_big_journal_is_compacted_in_the_background() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = open(d.path());
        let mut i = 0;
        while !d.path().join(SNAPSHOT).exists() {
            s.commit(&[q(&format!("queue-with-a-long-name-{i:08}"))])
                .unwrap();
            i += 1;
            assert!(i < 200_000, "compaction never happened");
        }
        // Let the compaction finish, then every queue is in snapshot + journal.
        while s.compacting.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(s);
        let (_s, loaded) = open(d.path());
        assert_eq!(loaded.unwrap().queues.len(), i);
    }

    #[test]
    fn after_a_failed_fsync_the_journal_is_cut_back_to_what_was_durable() {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(crate::sync::FailingSync::default());
        let sync = SyncGroup::start_with(FsyncPolicy::Always, disk.clone());
        let (s, _) = DefinitionsStore::open(d.path(), sync.clone()).unwrap();
        let p = s.commit(&[q("a")]).unwrap();
        sync.wait_for(p.ticket());
        assert!(!p.lost());
        disk.fail(".journal", 1);
        let p = s.commit(&[q("b")]).unwrap();
        sync.wait_for(p.ticket());
        assert!(p.lost(), "its fsync failed: never confirmed");
        assert!(
            s.commit(&[q("c")]).is_err(),
            "a failed journal takes no more"
        );
        assert!(s.compact().is_err(), "nor writes its state as a snapshot");
        drop(s);
        sync.stop();
        // The refused change was written to the file (only its fsync failed), yet it does
        // not come back.
        let (_s, loaded) = open(d.path());
        assert_eq!(names(&loaded.unwrap()), vec!["a"]);
    }

    #[test]
    fn a_failed_write_changes_nothing_and_later_changes_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(crate::sync::FailingSync::default());
        let sync = SyncGroup::start_with(FsyncPolicy::Never, disk.clone());
        let (s, _) = DefinitionsStore::open(d.path(), sync).unwrap();
        disk.fail_writes("journal", 1);
        assert!(
            s.commit(&[q("a")]).is_err(),
            "a full disk refuses the change"
        );
        s.commit(&[q("b")]).unwrap();
        assert_eq!(names(&s.definitions()), vec!["b"]);
        drop(s);
        let (_s, loaded) = open(d.path());
        assert_eq!(names(&loaded.unwrap()), vec!["b"]);
    }
}
