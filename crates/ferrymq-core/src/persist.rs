//! Durability wiring: the data directory, group commit, memory pressure, and the definitions
//! document kept in step with durable vhosts, users, exchanges, queues and bindings.
//!
//! Layout under the data directory (byte formats in `docs/storage.md`):
//! `definitions.json`, `queues/<id>/` (one log per durable queue, `<id>` a hash of vhost and
//! name), `transient/<n>/` (paged-out tails of non-durable queues, wiped at start).

use crate::error::{CoreError, CoreResult};
use crate::value::{table_to_json, FieldTable};
use ferrymq_store::definitions::{BindingDef, Definitions, ExchangeDef, QueueDef};
use ferrymq_store::{FsyncPolicy, StoreError, SyncGroup};
use parking_lot::Mutex;
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
}

impl PersistConfig {
    /// Defaults for `data_dir`: fsync before confirming, 64 MiB segments, 16 MiB per queue.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        PersistConfig {
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Always,
            segment_size: 64 * 1024 * 1024,
            queue_ram_budget: 16 * 1024 * 1024,
        }
    }
}

/// The broker's storage context, shared by vhosts and queues.
pub struct Persistence {
    config: PersistConfig,
    sync: Arc<SyncGroup>,
    paging: AtomicBool,
    defs: Mutex<Definitions>,
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
        let transient = dir.join("transient");
        if transient.exists() {
            std::fs::remove_dir_all(&transient).map_err(io_err(&transient))?;
        }
        let loaded = Definitions::load(&dir.join("definitions.json"))?;
        Ok(Arc::new(Persistence {
            sync: SyncGroup::start(config.fsync),
            paging: AtomicBool::new(false),
            defs: Mutex::new(loaded.clone().unwrap_or_default()),
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

    /// The log directory of durable queue `name` in `vhost`.
    pub fn queue_dir(&self, vhost: &str, name: &str) -> PathBuf {
        self.config
            .data_dir
            .join("queues")
            .join(hashed(vhost, name))
    }

    /// The log directory of the messages waiting in delayed-message exchange `name`.
    pub fn delayed_dir(&self, vhost: &str, name: &str) -> PathBuf {
        self.config
            .data_dir
            .join("delayed")
            .join(hashed(vhost, name))
    }

    /// A fresh directory for the paged-out tail of a non-durable queue.
    pub fn transient_dir(&self) -> PathBuf {
        let n = self.next_transient.fetch_add(1, Ordering::Relaxed);
        self.config.data_dir.join("transient").join(n.to_string())
    }

    /// Removes queue directories that no durable queue of the definitions owns (left by a
    /// queue deleted while the broker was down, or by a crash between deleting a queue and
    /// saving the definitions).
    pub fn remove_orphan_queue_dirs(&self, keep: &[PathBuf]) {
        let root = self.config.data_dir.join("queues");
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !keep.contains(&p) {
                tracing::info!(
                    "removing the files of a queue that no longer exists: {}",
                    p.display()
                );
                if let Err(err) = std::fs::remove_dir_all(&p) {
                    tracing::warn!("{}: {err}", p.display());
                }
            }
        }
    }

    /// Changes the definitions and saves them before returning, so a declare-ok means the
    /// declaration is on disk. The change is made to a copy, kept only once it is saved: a
    /// failed save must not be written later by someone else's successful one.
    pub fn update(&self, f: impl FnOnce(&mut Definitions)) -> CoreResult<()> {
        let mut cur = self.defs.lock();
        let mut d = cur.clone();
        f(&mut d);
        d.product_name = "FerryMQ".into();
        d.product_version = env!("CARGO_PKG_VERSION").into();
        d.save(&self.config.data_dir.join("definitions.json"))
            .map_err(internal)?;
        *cur = d;
        Ok(())
    }

    /// Records a durable queue.
    pub fn queue_declared(
        &self,
        vhost: &str,
        name: &str,
        auto_delete: bool,
        args: &FieldTable,
    ) -> CoreResult<()> {
        self.update(|d| {
            d.queues.retain(|q| !(q.vhost == vhost && q.name == name));
            d.queues.push(QueueDef {
                name: name.into(),
                vhost: vhost.into(),
                durable: true,
                auto_delete,
                arguments: table_to_json(args),
            });
        })
    }

    /// Forgets a durable queue and the bindings to it.
    pub fn queue_deleted(&self, vhost: &str, name: &str) -> CoreResult<()> {
        self.update(|d| {
            d.queues.retain(|q| !(q.vhost == vhost && q.name == name));
            d.bindings.retain(|b| {
                !(b.vhost == vhost && b.destination_type == "queue" && b.destination == name)
            });
        })
    }

    /// Records a durable exchange.
    pub fn exchange_declared(&self, def: ExchangeDef) -> CoreResult<()> {
        self.update(|d| {
            d.exchanges
                .retain(|x| !(x.vhost == def.vhost && x.name == def.name));
            d.exchanges.push(def);
        })
    }

    /// Forgets a durable exchange and every binding from or to it.
    pub fn exchange_deleted(&self, vhost: &str, name: &str) -> CoreResult<()> {
        self.update(|d| {
            d.exchanges
                .retain(|x| !(x.vhost == vhost && x.name == name));
            d.bindings.retain(|b| {
                !(b.vhost == vhost
                    && (b.source == name
                        || (b.destination_type == "exchange" && b.destination == name)))
            });
        })
    }

    /// Records a binding between durable entities.
    pub fn binding_added(&self, def: BindingDef) -> CoreResult<()> {
        self.update(|d| {
            if !d.bindings.contains(&def) {
                d.bindings.push(def);
            }
        })
    }

    /// Forgets a binding.
    pub fn binding_removed(&self, def: &BindingDef) -> CoreResult<()> {
        self.update(|d| d.bindings.retain(|b| b != def))
    }

    /// Stops the fsync thread after it finished what is pending.
    pub fn stop(&self) {
        self.sync.stop();
    }
}

/// A file-system-safe name for an entity: names may hold any character.
fn hashed(vhost: &str, name: &str) -> String {
    let mut h = Sha256::new();
    h.update(vhost.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
