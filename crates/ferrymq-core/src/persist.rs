//! Durability wiring: the data directory, group commit, memory pressure, and the definitions
//! kept in step with durable vhosts, users, exchanges, queues and bindings.
//!
//! Layout under the data directory (byte formats in `docs/storage.md`): `definitions.json`
//! and `definitions.<n>.journal` (snapshot and journal of changes), `queues/<id>/` (one log
//! per durable queue, `<id>` a hash of vhost and name and the declaration's incarnation id),
//! `delayed/<id>/` (delayed-message exchanges), `transient/<n>/` (paged-out messages of
//! non-durable queues, wiped at start).
//!
//! A definitions change is appended to the journal and applied at once; whoever must tell a
//! client waits for the returned [`Pending`] (group commit) first.

use crate::error::{CoreError, CoreResult};
use crate::value::{table_to_json, FieldTable};
use ferrymq_store::def_journal::DefinitionsStore;
use ferrymq_store::def_state::Change;
use ferrymq_store::definitions::{BindingDef, Definitions, ExchangeDef, Policy, QueueDef};
use ferrymq_store::{FsyncPolicy, LogHealth, Pending, StoreError, SyncGroup, SyncerRef};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// How the broker keeps data on disk.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    /// Where everything lives.
    pub data_dir: PathBuf,
    /// When persistent messages are confirmed.
    pub fsync: FsyncPolicy,
    /// Size at which a queue's segment file rolls over.
    pub segment_size: u64,
    /// Body bytes (plus overhead) of ready messages a queue keeps in RAM; beyond it new
    /// messages are written to the queue's log and read back when their turn comes.
    pub queue_ram_budget: usize,
    /// What makes writes durable: the OS's fsync, or in tests one that fails on demand.
    pub syncer: SyncerRef,
}

impl PersistConfig {
    /// Defaults for `data_dir`: fsync before confirming, 64 MiB segments, 16 MiB per queue.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        PersistConfig {
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Always,
            segment_size: 64 * 1024 * 1024,
            queue_ram_budget: 16 * 1024 * 1024,
            syncer: SyncerRef::default(),
        }
    }
}

/// The broker's storage context, shared by vhosts and queues.
pub struct Persistence {
    config: PersistConfig,
    sync: Arc<SyncGroup>,
    paging: AtomicBool,
    defs: Arc<DefinitionsStore>,
    loaded: Option<Definitions>,
    next_transient: AtomicU64,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(path.display().to_string(), e)
}

fn internal(e: StoreError) -> CoreError {
    CoreError::Internal(e.to_string())
}

impl Persistence {
    /// Opens the data directory: creates it, clears paged-out transient messages of the last
    /// run, loads the definitions document and starts the fsync thread.
    pub fn open(config: PersistConfig) -> Result<Arc<Persistence>, StoreError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir.join("queues")).map_err(io_err(dir))?;
        // The directories a first start created must survive a crash like their contents.
        for d in [dir.as_path(), &dir.join("queues")] {
            ferrymq_store::sync::sync_dir(d).map_err(io_err(d))?;
        }
        let transient = dir.join("transient");
        if transient.exists() {
            std::fs::remove_dir_all(&transient).map_err(io_err(&transient))?;
        }
        let sync = SyncGroup::start_with(config.fsync, config.syncer.0.clone());
        let (defs, loaded) = DefinitionsStore::open(dir, sync.clone())?;
        Ok(Arc::new(Persistence {
            sync,
            paging: AtomicBool::new(false),
            defs,
            loaded,
            next_transient: AtomicU64::new(1),
            config,
        }))
    }

    /// The definitions found at start, if the data directory had any.
    pub fn loaded_definitions(&self) -> Option<&Definitions> {
        self.loaded.as_ref()
    }

    /// Segment size for queue logs.
    pub fn segment_size(&self) -> u64 {
        self.config.segment_size
    }

    /// In-RAM budget per queue.
    pub fn queue_ram_budget(&self) -> usize {
        self.config.queue_ram_budget
    }

    /// Group commit.
    pub fn sync(&self) -> &Arc<SyncGroup> {
        &self.sync
    }

    /// Whether queues should page new messages to disk (memory is high).
    pub fn paging(&self) -> bool {
        self.paging.load(Ordering::Relaxed)
    }

    /// Turns paging to disk on or off.
    pub fn set_paging(&self, on: bool) {
        self.paging.store(on, Ordering::Relaxed);
    }

    /// The log directory of incarnation `incarnation` of durable queue `name` in `vhost`
    /// (without one: the name older versions used, still recovered).
    pub fn queue_dir(&self, vhost: &str, name: &str, incarnation: Option<&str>) -> PathBuf {
        self.config
            .data_dir
            .join("queues")
            .join(dir_name(vhost, name, incarnation))
    }

    /// The log directory of the messages waiting in incarnation `incarnation` of
    /// delayed-message exchange `name`.
    pub fn delayed_dir(&self, vhost: &str, name: &str, incarnation: Option<&str>) -> PathBuf {
        self.config
            .data_dir
            .join("delayed")
            .join(dir_name(vhost, name, incarnation))
    }

    /// A fresh incarnation id: each declaration of a durable queue or delayed exchange gets
    /// its own, and with it its own directory.
    pub fn new_incarnation() -> String {
        format!("{:016x}", rand::random::<u64>())
    }

    /// A fresh directory for the paged-out tail of a non-durable queue.
    pub fn transient_dir(&self) -> PathBuf {
        let n = self.next_transient.fetch_add(1, Ordering::Relaxed);
        self.config.data_dir.join("transient").join(n.to_string())
    }

    /// Removes directories under `<data-dir>/<kind>` (`queues` or `delayed`) that nothing in
    /// the definitions owns: left by an entity deleted while the broker was down, by a crash
    /// between deleting one and removing its files, or by a non-durable delayed exchange.
    pub fn remove_orphan_dirs(&self, kind: &str, keep: &[PathBuf]) {
        let root = self.config.data_dir.join(kind);
        let keep: std::collections::HashSet<&PathBuf> = keep.iter().collect();
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        let mut removed = false;
        for e in entries.flatten() {
            let p = e.path();
            if !keep.contains(&p) {
                tracing::info!(
                    "removing the files of something that no longer exists: {}",
                    p.display()
                );
                match std::fs::remove_dir_all(&p) {
                    Ok(()) => removed = true,
                    Err(err) => tracing::warn!("{}: {err}", p.display()),
                }
            }
        }
        if removed {
            if let Err(err) = ferrymq_store::sync::sync_dir(&root) {
                tracing::warn!("{}: {err}", root.display());
            }
        }
    }

    /// Records definitions changes (one atomic journal record) and applies them to the
    /// definitions. They are durable once group commit covers the returned write; nothing
    /// changes if the write fails.
    pub fn commit(&self, changes: &[Change]) -> CoreResult<Pending> {
        self.defs.commit(changes).map_err(|e| match e {
            StoreError::Failed(_) => CoreError::Internal(
                "definitions cannot be saved: an fsync of the definitions journal failed \
                 earlier; restart the broker"
                    .into(),
            ),
            e => internal(e),
        })
    }

    /// Blocks until `pending` is durable (group commit); an error if a sync it needed failed.
    /// For callers outside a connection (administration, imports); connections wait
    /// asynchronously instead.
    pub fn wait(&self, pending: &Pending) -> CoreResult<()> {
        self.sync.wait_for(pending.ticket());
        if self.sync.synced() < pending.ticket() {
            return Err(CoreError::Internal(
                "the broker is stopping; the change may not be durable".into(),
            ));
        }
        if pending.lost() {
            self.defs.cut_lost();
            return Err(CoreError::Internal(
                "the change could not be made durable: an fsync failed".into(),
            ));
        }
        Ok(())
    }

    /// [`Persistence::commit`], then [`Persistence::wait`].
    pub fn commit_and_wait(&self, changes: &[Change]) -> CoreResult<()> {
        let p = self.commit(changes)?;
        self.wait(&p)
    }

    /// Replaces all definitions with `d` (a fresh data directory), written before returning.
    pub fn reset(&self, d: Definitions) -> CoreResult<()> {
        self.defs.reset(d).map_err(internal)
    }

    /// The definitions as they are now, in RabbitMQ's format (with FerryMQ's incarnation
    /// ids; see [`Definitions::exported`]).
    pub fn definitions(&self) -> Definitions {
        self.defs.definitions()
    }

    /// The definitions journal's health.
    pub fn journal_health(&self) -> &Arc<LogHealth> {
        self.defs.health()
    }

    /// Records incarnation `incarnation` of a durable queue.
    pub fn queue_declared(
        &self,
        vhost: &str,
        name: &str,
        auto_delete: bool,
        args: &FieldTable,
        incarnation: Option<&str>,
    ) -> CoreResult<Pending> {
        self.commit(&[Change::QueueDeclared(QueueDef {
            name: name.into(),
            vhost: vhost.into(),
            durable: true,
            auto_delete,
            arguments: table_to_json(args),
            incarnation: incarnation.map(str::to_string),
        })])
    }

    /// Forgets incarnation `incarnation` of a durable queue and the bindings to it; a later
    /// declaration of the name is left alone.
    pub fn queue_deleted(
        &self,
        vhost: &str,
        name: &str,
        incarnation: Option<&str>,
    ) -> CoreResult<Pending> {
        self.commit(&[Change::QueueDeleted {
            vhost: vhost.into(),
            name: name.into(),
            incarnation: incarnation.map(str::to_string),
        }])
    }

    /// Records a durable exchange.
    pub fn exchange_declared(&self, def: ExchangeDef) -> CoreResult<Pending> {
        self.commit(&[Change::ExchangeDeclared(def)])
    }

    /// Forgets incarnation `incarnation` of a durable exchange and every binding from or to
    /// it; a later declaration of the name is left alone.
    pub fn exchange_deleted(
        &self,
        vhost: &str,
        name: &str,
        incarnation: Option<&str>,
    ) -> CoreResult<Pending> {
        self.commit(&[Change::ExchangeDeleted {
            vhost: vhost.into(),
            name: name.into(),
            incarnation: incarnation.map(str::to_string),
        }])
    }

    /// Records a binding between durable entities.
    pub fn binding_added(&self, def: BindingDef) -> CoreResult<Pending> {
        self.commit(&[Change::BindingAdded(def)])
    }

    /// Forgets a binding.
    pub fn binding_removed(&self, def: &BindingDef) -> CoreResult<Pending> {
        self.commit(&[Change::BindingRemoved(def.clone())])
    }

    /// Records a policy.
    pub fn policy_set(&self, def: Policy) -> CoreResult<Pending> {
        self.commit(&[Change::PolicySet(def)])
    }

    /// Forgets a policy.
    pub fn policy_cleared(&self, vhost: &str, name: &str) -> CoreResult<Pending> {
        self.commit(&[Change::PolicyCleared {
            vhost: vhost.into(),
            name: name.into(),
        }])
    }

    /// Writes the definitions as one snapshot (so the next start has no journal to
    /// replay), then stops the fsync thread after it finished what is pending.
    pub fn stop(&self) {
        if let Err(e) = self.defs.compact() {
            tracing::warn!("cannot write the definitions snapshot at stop: {e}");
        }
        self.sync.stop();
    }
}

/// A file-system-safe directory name for an entity (names may hold any character):
/// a hash of vhost and name, then `.` and the incarnation id when there is one.
fn dir_name(vhost: &str, name: &str, incarnation: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(vhost.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    let mut s: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(i) = incarnation {
        s.push('.');
        s.extend(i.chars().filter(char::is_ascii_alphanumeric));
    }
    s
}
