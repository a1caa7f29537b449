//! Messages held by an `x-delayed-message` exchange until their `x-delay` has passed.
//!
//! With a data directory the messages wait on disk in the exchange's own log and RAM holds
//! one small index entry per message (deadline and record position), so hours of delayed
//! traffic cost little memory. Persistent messages held by a durable exchange survive a
//! restart: the record carries the wall-clock deadline.

use crate::expiry::{now_ms, wall_ms};
use crate::message::Message;
use crate::persist::Persistence;
use ferrymq_store::{LogHealth, Pending, Position, QueueLog, StoreError};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::sync::Arc;

/// Record flag: survives a restart.
const FLAG_PERSISTENT: u8 = 1;

enum Held {
    Memory(Arc<Message>),
    Disk(Position),
}

struct Entry {
    at: u64,
    id: u64,
    held: Held,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.id) == (o.at, o.id)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        // Earliest first out of the max-heap.
        (o.at, o.id).cmp(&(self.at, self.id))
    }
}

/// The waiting messages of one delayed-message exchange.
pub struct DelayedMessages {
    heap: BinaryHeap<Entry>,
    next_id: u64,
    log: Option<QueueLog>,
    /// Where the log lives, and for a durable exchange its health.
    persist: Option<(Arc<Persistence>, PathBuf, Option<Arc<LogHealth>>)>,
    /// The exchange was deleted: a publisher that looked it up before still holding it must
    /// not open its log again.
    destroyed: bool,
    scratch: Vec<u8>,
}

impl DelayedMessages {
    /// Messages kept in memory (a broker without a data directory).
    pub fn in_memory() -> Self {
        DelayedMessages {
            heap: BinaryHeap::new(),
            next_id: 0,
            log: None,
            persist: None,
            destroyed: false,
            scratch: Vec::new(),
        }
    }

    /// Messages kept in `dir`; a durable exchange keeps persistent messages across restarts.
    /// With `recover` (a durable exchange restored at start) the messages a previous run left
    /// there come back; otherwise leftovers are removed.
    pub fn on_disk(
        persist: Arc<Persistence>,
        dir: PathBuf,
        durable: bool,
        recover: bool,
    ) -> Result<Self, StoreError> {
        let mut d = DelayedMessages::in_memory();
        let health = durable.then(|| LogHealth::new(dir.display().to_string()));
        if dir.exists() {
            match &health {
                Some(h) if recover => d.recover(&persist, &dir, h.clone())?,
                _ => std::fs::remove_dir_all(&dir)
                    .map_err(|e| StoreError::Io(dir.display().to_string(), e))?,
            }
        }
        d.persist = Some((persist, dir, health));
        Ok(d)
    }

    fn recover(
        &mut self,
        persist: &Arc<Persistence>,
        dir: &std::path::Path,
        health: Arc<LogHealth>,
    ) -> Result<(), StoreError> {
        let (mut log, n) = QueueLog::open(
            dir,
            persist.segment_size(),
            persist.sync().clone(),
            Some(health),
        )?;
        let (wall, mono) = (wall_ms(), now_ms());
        let mut cursor = log.first();
        let mut left = n;
        while left > 0 {
            let (batch, next) = log.read_batch(cursor, 1024, usize::MAX)?;
            if batch.is_empty() {
                break;
            }
            cursor = next;
            for (pos, payload) in batch {
                left -= 1;
                let at = payload
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes);
                match (payload.first(), at) {
                    (Some(f), Some(at)) if f & FLAG_PERSISTENT != 0 => {
                        self.next_id += 1;
                        self.heap.push(Entry {
                            at: mono + at.saturating_sub(wall),
                            id: self.next_id,
                            held: Held::Disk(pos),
                        });
                    }
                    _ => log.ack(pos)?,
                }
            }
        }
        tracing::info!(
            "{}: recovered {} delayed messages",
            dir.display(),
            self.heap.len()
        );
        self.log = Some(log);
        Ok(())
    }

    /// Holds `msg` until `at` (ms on [`now_ms`]'s clock). Returns what group commit must
    /// make durable first (nothing unless the message had to be), or
    /// [`StoreError::Failed`] once a sync of the exchange's log failed.
    pub fn hold(&mut self, msg: Arc<Message>, at: u64) -> Result<Pending, StoreError> {
        if self.destroyed {
            return Err(StoreError::Deleted("delayed-message exchange".into()));
        }
        self.next_id += 1;
        let id = self.next_id;
        let Some((persist, dir, health)) = &self.persist else {
            self.heap.push(Entry {
                at,
                id,
                held: Held::Memory(msg),
            });
            return Ok(Pending::default());
        };
        let persistent = health.is_some() && msg.is_persistent();
        if self.log.is_none() {
            let (log, _) = QueueLog::open(
                dir,
                persist.segment_size(),
                persist.sync().clone(),
                health.clone(),
            )?;
            self.log = Some(log);
        }
        let mut rec = std::mem::take(&mut self.scratch);
        rec.clear();
        rec.push(if persistent { FLAG_PERSISTENT } else { 0 });
        let wall = wall_ms() + at.saturating_sub(now_ms());
        rec.extend_from_slice(&wall.to_le_bytes());
        msg.encode_record(&mut rec);
        let appended = match self.log.as_mut() {
            Some(log) => log.append(&rec),
            None => return Ok(Pending::default()),
        };
        self.scratch = rec;
        let (pos, ticket) = appended?;
        self.heap.push(Entry {
            at,
            id,
            held: Held::Disk(pos),
        });
        Ok(match (persistent, health) {
            (true, Some(h)) => Pending::one(ticket, h.clone()),
            _ => Pending::default(),
        })
    }

    /// Takes the messages whose time has come, earliest first, each with its record (to be
    /// passed to [`DelayedMessages::sent`] once routed: a crash in between delivers it
    /// again rather than losing it).
    pub fn take_due(&mut self, now: u64) -> Vec<(Arc<Message>, Option<Position>)> {
        let mut out = Vec::new();
        while self.heap.peek().is_some_and(|e| e.at <= now) {
            let Some(e) = self.heap.pop() else { break };
            match e.held {
                Held::Memory(m) => out.push((m, None)),
                Held::Disk(pos) => {
                    let Some(log) = self.log.as_mut() else {
                        continue;
                    };
                    let read = log.read(pos).map_err(|e| e.to_string()).and_then(|p| {
                        let rec = p.get(9..).ok_or_else(|| "short record".to_string())?;
                        Message::decode_record(rec).map_err(|e| e.to_string())
                    });
                    match read {
                        Ok(m) => out.push((Arc::new(m), Some(pos))),
                        Err(err) => {
                            tracing::error!("dropping an unreadable delayed message: {err}");
                            self.sent(pos);
                        }
                    }
                }
            }
        }
        out
    }

    /// Records that the message at `pos` was routed and no longer waits here.
    pub fn sent(&mut self, pos: Position) {
        if let Some(log) = self.log.as_mut() {
            if let Err(err) = log.ack(pos) {
                tracing::warn!("cannot record a delayed message as sent: {err}");
            }
        }
    }

    /// The earliest deadline, if any message is waiting.
    pub fn next(&self) -> Option<u64> {
        self.heap.peek().map(|e| e.at)
    }

    /// How many messages are waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The exchange was deleted: drop everything, files included.
    pub fn destroy(&mut self) {
        self.destroyed = true;
        self.heap.clear();
        if let Some(log) = self.log.take() {
            log.destroy();
        }
    }
}
