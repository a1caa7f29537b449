//! Builds queues by type: the store a queue gets follows its `x-queue-type` (classic and
//! quorum queues share one store; this is the seam where stream queues plug in) and its options
//! (on disk for durable queues, in memory with paging otherwise, one store per priority
//! level for priority queues).

use crate::error::{CoreError, CoreResult};
use crate::paged_store::{PagedStore, QueueRam};
use crate::persist::Persistence;
use crate::priority_store::PriorityStore;
use crate::queue::{Queue, QueueOptions};
use crate::queue_config::{QueueConfig, QueueType};
use crate::store::{MemoryStore, MessageStore};
use crate::ConnectionId;
use ferrymq_store::{LogHealth, Pending};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A new, empty queue `name` in `vhost`. A durable queue's definition is saved (the returned
/// write to wait for before the declare-ok) in a directory of its own incarnation.
/// Exclusive queues never outlive their connection, so they never persist.
pub fn create(
    persist: Option<&Arc<Persistence>>,
    vhost: &str,
    name: &str,
    options: QueueOptions,
    owner: Option<ConnectionId>,
    cfg: &QueueConfig,
) -> CoreResult<(Queue, Pending)> {
    // A quorum queue is a classic queue's store that keeps every message on disk; what
    // else differs (delivery counts, limits, refusals) is the queue's own behaviour.
    classic(persist, vhost, name, options, owner, cfg)
}

fn classic(
    persist: Option<&Arc<Persistence>>,
    vhost: &str,
    name: &str,
    options: QueueOptions,
    owner: Option<ConnectionId>,
    cfg: &QueueConfig,
) -> CoreResult<(Queue, Pending)> {
    let levels = cfg.max_priority;
    let keep_all = cfg.queue_type == QueueType::Quorum;
    let Some(p) = persist else {
        let store: Box<dyn MessageStore> = match levels {
            Some(max) => Box::new(PriorityStore::new(
                (0..=max)
                    .map(|_| Box::new(MemoryStore::default()) as Box<dyn MessageStore>)
                    .collect(),
            )),
            None => Box::new(MemoryStore::default()),
        };
        return Ok((
            Queue::with_store(name, vhost, options, owner, store, 1),
            Pending::default(),
        ));
    };
    let durable = options.durable && !options.exclusive;
    let mut incarnation = None;
    let mut saved = Pending::default();
    let dir = if durable {
        // A directory of its own: nothing an earlier queue of that name left (or a late
        // cleanup of it still removes) can touch it.
        let (inc, dir) = loop {
            let inc = Persistence::new_incarnation();
            let dir = p.queue_dir(vhost, name, Some(&inc));
            if !dir.exists() {
                break (inc, dir);
            }
        };
        saved = p.queue_declared(
            vhost,
            name,
            options.auto_delete,
            &options.arguments,
            Some(&inc),
        )?;
        incarnation = Some(inc);
        dir
    } else {
        p.transient_dir()
    };
    // Its messages are only kept if the definitions record that declares it is.
    let health = durable.then(|| {
        let name = dir.display().to_string();
        LogHealth::depending_on(name, p.journal_health().clone(), saved.ticket())
    });
    let store: Box<dyn MessageStore> = match levels {
        Some(max) => {
            let ram = QueueRam::default();
            Box::new(PriorityStore::new(
                (0..=max)
                    .map(|l| {
                        let store = PagedStore::new(p.clone(), health.clone(), level_dir(&dir, l))
                            .keeping_all(keep_all);
                        Box::new(store.sharing_ram(ram.clone())) as Box<dyn MessageStore>
                    })
                    .collect(),
            ))
        }
        None => {
            Box::new(PagedStore::new(p.clone(), health.clone(), dir.clone()).keeping_all(keep_all))
        }
    };
    let q = Queue::with_store(name, vhost, options, owner, store, 1).with_health(health);
    let q = match incarnation {
        Some(inc) => q.with_files(dir, Some(inc)),
        None => q,
    };
    Ok((q, saved))
}

/// Incarnation `incarnation` of a durable queue re-created at start with the messages its
/// log holds. Returns the queue, its directory and how many messages came back.
pub fn recover(
    p: &Arc<Persistence>,
    vhost: &str,
    name: &str,
    incarnation: Option<&str>,
    options: QueueOptions,
    cfg: &QueueConfig,
) -> CoreResult<(Queue, PathBuf, u64)> {
    let dir = p.queue_dir(vhost, name, incarnation);
    let health = LogHealth::new(dir.display().to_string());
    let recover = |dir: PathBuf, first: u64| {
        PagedStore::recover(p.clone(), health.clone(), dir, first, cfg.message_ttl)
            .map(|mut r| {
                r.store = r.store.keeping_all(cfg.queue_type == QueueType::Quorum);
                r
            })
            .map_err(|e| CoreError::Internal(e.to_string()))
    };
    let mut deadlines = Vec::new();
    let mut held = Vec::new();
    let (store, n): (Box<dyn MessageStore>, u64) = match cfg.max_priority {
        Some(max) => {
            let mut levels: Vec<Box<dyn MessageStore>> = Vec::new();
            let mut total = 0;
            let ram = QueueRam::default();
            for l in 0..=max {
                let r = recover(level_dir(&dir, l), total + 1)?;
                total += r.count;
                deadlines.extend(r.deadlines);
                levels.push(Box::new(r.store.sharing_ram(ram.clone())));
            }
            (Box::new(PriorityStore::new(levels)), total)
        }
        None => {
            let r = recover(dir.clone(), 1)?;
            deadlines = r.deadlines;
            held = r.held;
            // Held dead letters are numbered after the ready messages.
            (Box::new(r.store), r.count + held.len() as u64)
        }
    };
    let q = Queue::with_store(name, vhost, options, None, store, n + 1)
        .with_health(Some(health))
        .with_files(dir.clone(), incarnation.map(str::to_string))
        .with_deadlines(deadlines)
        .with_held(held);
    Ok((q, dir, n))
}

/// The log directory of one priority level of a priority queue.
fn level_dir(dir: &Path, level: u8) -> PathBuf {
    dir.join(format!("p{level}"))
}
