//! A queue's messages when some of them live on disk.
//!
//! The ready messages are a loaded head (`ram`, in memory, in order) followed by `paged`
//! records at the tail of the queue's [`QueueLog`], read back in batches as the head drains.
//! A message is written to the log when it must survive a restart (persistent, in a durable
//! queue) or when it has to be paged out: the tail is already on disk, the queue's in-memory
//! budget is used up, or the broker signals memory pressure. Paged messages cost no RAM at
//! all, so a backlog of ten million messages costs little more than its loaded head.
//!
//! A message with a deadline (TTL) that is paged out keeps a small index entry (its record's
//! position), so it can leave the queue at its deadline without waiting to reach the head.
//!
//! Record payload: `[flags u8][seq u64 LE]([deadline u64 LE])[message record]`, the
//! deadline in wall-clock ms when flag bit 1 is set (see `docs/storage.md`).

use crate::dead_letter::DeathReason;
use crate::expiry::{from_wall, now_ms, to_wall};
use crate::message::{Message, QueuedMessage};
use crate::persist::Persistence;
use crate::store::{HeldOut, MessageStore};
use ferrymq_store::{LogHealth, Position, QueueLog, StoreError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Record flag: the message must survive a restart.
const FLAG_PERSISTENT: u8 = 1;
/// Record flag: a wall-clock deadline follows the sequence number.
const FLAG_DEADLINE: u8 = 2;
/// Position marking a ready message that has no record (it lives only in memory).
const NO_RECORD: Position = Position {
    segment: u32::MAX,
    offset: u32::MAX,
};
/// Records loaded from disk per batch.
const LOAD_BATCH: usize = 1024;
/// Bytes a batch may load even when the queue's RAM budget is used up (by other priority
/// levels, or requeued messages).
const LOAD_MIN_BYTES: usize = 64 * 1024;
/// RAM accounted per loaded message besides its body (the message and queue entry).
const OVERHEAD: usize = 128;

/// Ready messages in memory with a tail on disk.
pub struct PagedStore {
    persist: Arc<Persistence>,
    /// Whether persistent messages are written (the queue is durable).
    durable: bool,
    /// Whether transient messages are kept across restarts too (quorum queues).
    keep_all: bool,
    /// The durable queue's log health (shared by its priority levels).
    health: Option<Arc<LogHealth>>,
    dir: PathBuf,
    log: Option<QueueLog>,
    ram: VecDeque<QueuedMessage>,
    /// Record position of each entry of `ram` ([`NO_RECORD`] for messages only in memory).
    /// A parallel queue rather than a field of the entry, so `ram` stays 16 bytes an entry.
    ram_pos: VecDeque<Position>,
    /// Tombstones in `ram` (messages taken out of the middle when they expired).
    dead: usize,
    ram_bytes: usize,
    /// RAM of the whole queue's loaded messages: shared by a priority queue's levels, so the
    /// budget is per queue, not per level (256 levels must not get 256 budgets).
    queue_ram: QueueRam,
    /// Ready records on disk after `ram`, starting at `cursor`.
    paged: u64,
    cursor: Position,
    /// Sequence number for the next record loaded that predates this run.
    recovered_seq: u64,
    /// Records of delivered, unacked messages, sorted by sequence number: acks mostly come
    /// in order (and right after the delivery with autoack), so this stays cheap.
    inflight: VecDeque<(u64, Position)>,
    /// Paged messages that have a deadline, by sequence number, so they can be taken out
    /// when it passes. Loading a record with a deadline that is not here skips it: it
    /// expired while on disk.
    paged_deadlines: HashMap<u64, PagedDeadline>,
    /// The queue's message TTL at recovery: records written before deadlines were stored got
    /// their deadline from it (and their own `expiration`).
    legacy_ttl: Option<u64>,
    /// Records of held dead letters taken out of the paged tail (they expired there): a
    /// purge, which settles the tail without reading it, must keep them.
    held_paged: HashSet<Position>,
    /// The queue was deleted: its log must never be opened (created) again.
    destroyed: bool,
    bytes: usize,
    scratch: Vec<u8>,
}

/// Bytes of loaded messages of one queue, across the stores of its priority levels. Every
/// change happens under the queue's lock, so plain loads and stores suffice (no
/// read-modify-write instructions on the publish path); atomic only so the stores stay
/// `Send`.
#[derive(Clone, Default)]
pub struct QueueRam(Arc<AtomicUsize>);

impl QueueRam {
    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0
            .store(self.get().saturating_add(n), Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.0
            .store(self.get().saturating_sub(n), Ordering::Relaxed);
    }
}

/// Where a paged message with a deadline is.
#[derive(Clone, Copy)]
struct PagedDeadline {
    pos: Position,
    /// Its body bytes counted in `bytes` (0 for messages recovered at start: their sizes
    /// are counted once they are loaded).
    counted: usize,
}

/// The fixed part of a record: flags, sequence number, deadline, and where the message
/// starts.
struct RecordHead {
    flags: u8,
    seq: u64,
    /// Wall-clock ms.
    deadline: Option<u64>,
    body: usize,
}

fn parse_head(payload: &[u8]) -> Option<RecordHead> {
    let flags = *payload.first()?;
    let seq = u64::from_le_bytes(payload.get(1..9)?.try_into().ok()?);
    if flags & FLAG_DEADLINE == 0 {
        return Some(RecordHead {
            flags,
            seq,
            deadline: None,
            body: 9,
        });
    }
    let deadline = u64::from_le_bytes(payload.get(9..17)?.try_into().ok()?);
    Some(RecordHead {
        flags,
        seq,
        deadline: Some(deadline),
        body: 17,
    })
}

fn parse(payload: &[u8]) -> Option<(RecordHead, Message)> {
    let head = parse_head(payload)?;
    let msg = Message::decode_record(payload.get(head.body..)?).ok()?;
    Some((head, msg))
}

/// What recovery found besides the messages: deadlines to register with the queue.
pub struct Recovered {
    /// The store, positioned at the first recovered message.
    pub store: PagedStore,
    /// How many messages came back.
    pub count: u64,
    /// (sequence number, deadline on [`now_ms`]'s clock) of every recovered message that
    /// has one.
    pub deadlines: Vec<(u64, u64)>,
    /// At-least-once dead letters held when the broker stopped, numbered after the `count`
    /// ready ones: (sequence number, reason, body bytes). Not ready, to be dead-lettered
    /// again (then acked by sequence number). Their messages stay on disk until a forward
    /// reads them back ([`MessageStore::read_held`]).
    pub held: Vec<(u64, DeathReason, usize)>,
}

impl PagedStore {
    /// A store for a new queue whose log (if it ever needs one) lives in `dir`. A durable
    /// queue's store has the `health` of its log: its writes go through group commit.
    pub fn new(persist: Arc<Persistence>, health: Option<Arc<LogHealth>>, dir: PathBuf) -> Self {
        PagedStore {
            persist,
            durable: health.is_some(),
            keep_all: false,
            health,
            dir,
            log: None,
            ram: VecDeque::new(),
            ram_pos: VecDeque::new(),
            dead: 0,
            ram_bytes: 0,
            queue_ram: QueueRam::default(),
            paged: 0,
            cursor: Position {
                segment: 0,
                offset: 0,
            },
            recovered_seq: 1,
            inflight: VecDeque::new(),
            paged_deadlines: HashMap::new(),
            legacy_ttl: None,
            held_paged: HashSet::new(),
            destroyed: false,
            bytes: 0,
            scratch: Vec::new(),
        }
    }

    /// Reopens a durable queue's log. The recovered messages take sequence numbers
    /// `first_seq..first_seq + count` in their original order, so the queue continues after
    /// them, and keep the deadlines they were written with. Records written before deadlines
    /// were stored get one from `default_ttl` (the queue's message TTL) or their
    /// `expiration`, counted from now. Transient messages paged out before the restart are
    /// dropped, as RabbitMQ drops them. Recovered messages that had been delivered (to a
    /// consumer that had to acknowledge them) come back marked redelivered, the others not.
    pub fn recover(
        persist: Arc<Persistence>,
        health: Arc<LogHealth>,
        dir: PathBuf,
        first_seq: u64,
        default_ttl: Option<u64>,
    ) -> Result<Recovered, StoreError> {
        if !dir.exists() {
            // Never written to: nothing to recover, and nothing to create until a message
            // comes (a broker with 100,000 idle durable queues starts without 100,000
            // directories).
            let mut store = PagedStore::new(persist, Some(health), dir);
            store.recovered_seq = first_seq;
            return Ok(Recovered {
                store,
                count: 0,
                deadlines: Vec::new(),
                held: Vec::new(),
            });
        }
        let mut dropped = Vec::new();
        let mut deadlines = Vec::new();
        let mut index = HashMap::new();
        let mut held_sizes: HashMap<Position, usize> = HashMap::new();
        let mut seq = first_seq;
        let now = now_ms();
        let (mut log, n) = QueueLog::open_with(
            &dir,
            persist.segment_size(),
            persist.sync().clone(),
            Some(health.clone()),
            &mut |pos, held, payload| {
                if held.is_some() {
                    // Checked here, while recovery has the payload anyway, so only the
                    // position of a held letter is kept: one that is transient (dropped at
                    // a restart like the others) or unreadable is acked below instead.
                    if let Some((head, m)) = parse(payload) {
                        if head.flags & FLAG_PERSISTENT != 0 {
                            held_sizes.insert(pos, m.body_size());
                        }
                    }
                    return;
                }
                let Some(head) = parse_head(payload) else {
                    // Unreadable: `load` reports and drops it when it gets there.
                    return;
                };
                if head.flags & FLAG_PERSISTENT == 0 {
                    dropped.push(pos);
                    return;
                }
                let at = match head.deadline {
                    Some(wall) => Some(from_wall(wall)),
                    None => legacy_deadline(payload, head.body, default_ttl, now),
                };
                if let Some(at) = at {
                    deadlines.push((seq, at));
                    index.insert(seq, PagedDeadline { pos, counted: 0 });
                }
                seq += 1;
            },
        )?;
        for pos in &dropped {
            log.ack(*pos)?;
        }
        let count = n - dropped.len() as u64;
        let mut held = Vec::new();
        let mut inflight = VecDeque::new();
        for (pos, code) in log.take_held() {
            match held_sizes.get(&pos) {
                Some(&bytes) => {
                    let seq = first_seq + count + held.len() as u64;
                    inflight.push_back((seq, pos));
                    held.push((seq, DeathReason::from_code(code), bytes));
                }
                // Transient (dropped at a restart like the others) or unreadable.
                None => log.ack(pos)?,
            }
        }
        let mut store = PagedStore::new(persist, Some(health), dir);
        // Their records lie among the ready ones, after the cursor: a purge must keep them.
        store.held_paged = inflight.iter().map(|&(_, pos)| pos).collect();
        store.inflight = inflight;
        store.recovered_seq = first_seq;
        store.cursor = log.first();
        store.paged = count;
        store.paged_deadlines = index;
        store.legacy_ttl = default_ttl;
        store.log = Some(log);
        Ok(Recovered {
            store,
            count,
            deadlines,
            held,
        })
    }

    fn log(&mut self) -> Result<&mut QueueLog, StoreError> {
        if self.destroyed {
            return Err(StoreError::Deleted(self.dir.display().to_string()));
        }
        let log = match self.log.take() {
            Some(l) => l,
            None => {
                QueueLog::open(
                    &self.dir,
                    self.persist.segment_size(),
                    self.persist.sync().clone(),
                    self.health.clone(),
                )?
                .0
            }
        };
        Ok(self.log.insert(log))
    }

    /// Moves up to a batch of paged records into `ram`, skipping those that expired while on
    /// disk. Returns false when nothing more can be read.
    fn load(&mut self) -> bool {
        let cursor = self.cursor;
        let Some(log) = self.log.as_mut() else {
            self.paged = 0;
            return false;
        };
        let recovered_end = log.recovered_end();
        // Every record from the cursor on is a paged one (live, or expired meanwhile).
        // Up to the queue's RAM budget (at least one record): a backlog of large messages must
        // not come back a thousand at a time.
        // At least LOAD_MIN_BYTES: when other priority levels fill the budget, one record per
        // read would cost a disk read per message.
        let room = self
            .persist
            .queue_ram_budget()
            .saturating_sub(self.queue_ram.get())
            .max(LOAD_MIN_BYTES);
        let (batch, next) = match crate::blocking::run(|| log.read_batch(cursor, LOAD_BATCH, room))
        {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(
                    "{}: cannot read queued messages back: {e}",
                    self.dir.display()
                );
                return false;
            }
        };
        if batch.is_empty() {
            tracing::error!(
                "{}: {} queued messages expected on disk but the log ends",
                self.dir.display(),
                self.paged
            );
            self.paged = 0;
            return false;
        }
        self.cursor = next;
        for (pos, payload) in batch {
            if self.paged == 0 {
                break;
            }
            let from_before = pos < recovered_end;
            let head = parse_head(&payload);
            if from_before
                && head
                    .as_ref()
                    .is_some_and(|h| h.flags & FLAG_PERSISTENT == 0)
            {
                // Dropped (and acked) at recovery, as RabbitMQ drops transient messages.
                continue;
            }
            // Numbered exactly as recovery numbered them, readable or not.
            let seq = match (&head, from_before) {
                (Some(_), true) => {
                    self.recovered_seq += 1;
                    Some(self.recovered_seq - 1)
                }
                (Some(h), false) => Some(h.seq),
                (None, _) => None,
            };
            let msg = head
                .as_ref()
                .and_then(|h| payload.get(h.body..))
                .and_then(|b| Message::decode_record(b).ok());
            let indexed = seq.and_then(|s| self.paged_deadlines.remove(&s));
            let (Some(head), Some(seq), Some(msg)) = (head, seq, msg) else {
                tracing::error!(
                    "{}: dropping an unreadable message record at segment {} offset {}",
                    self.dir.display(),
                    pos.segment,
                    pos.offset
                );
                self.paged -= 1;
                let _ = log.ack(pos);
                continue;
            };
            let legacy_deadline =
                from_before && (self.legacy_ttl.is_some() || msg.expiration().is_some());
            if (head.deadline.is_some() || legacy_deadline) && indexed.is_none() {
                // It expired while on disk: already settled and counted out.
                continue;
            }
            self.paged -= 1;
            let mut qm = QueuedMessage::new(seq, Arc::new(msg));
            if from_before && log.was_delivered(pos) {
                qm.mark_returned();
            }
            if from_before {
                // Body bytes of recovered messages become known only now.
                self.bytes += qm.message.body_size();
            }
            // Not `ram_add`: `log` still borrows `self.log`.
            self.ram_bytes += cost(&qm);
            self.queue_ram.add(cost(&qm));
            self.ram.push_back(qm);
            self.ram_pos.push_back(pos);
        }
        true
    }

    /// Takes a paged message out of the queue (its deadline passed): reads it back for
    /// dead-lettering and settles its record.
    fn remove_paged(&mut self, seq: u64) -> Option<QueuedMessage> {
        let d = self.paged_deadlines.remove(&seq)?;
        self.paged = self.paged.saturating_sub(1);
        let log = self.log.as_mut()?;
        let read = log.read(d.pos);
        if let Err(e) = log.ack(d.pos) {
            tracing::warn!("{}: cannot record an expiry: {e}", self.dir.display());
        }
        let msg = match read.ok().and_then(|p| parse(&p)) {
            Some((_, m)) => m,
            None => {
                tracing::error!(
                    "{}: an expired message at segment {} offset {} could not be read back",
                    self.dir.display(),
                    d.pos.segment,
                    d.pos.offset
                );
                return None;
            }
        };
        self.bytes = self.bytes.saturating_sub(d.counted);
        Some(QueuedMessage::new(seq, Arc::new(msg)))
    }

    /// The same store keeping every message across restarts, transient ones too (a quorum
    /// queue's: its messages are all on disk, whatever their delivery mode).
    pub fn keeping_all(mut self, keep_all: bool) -> Self {
        self.keep_all = keep_all;
        self
    }

    /// The same store, counting its loaded messages against `ram` (the queue's other
    /// priority levels share it).
    pub fn sharing_ram(mut self, ram: QueueRam) -> Self {
        ram.add(self.ram_bytes);
        self.queue_ram.sub(self.ram_bytes);
        self.queue_ram = ram;
        self
    }

    fn ram_add(&mut self, n: usize) {
        self.ram_bytes += n;
        self.queue_ram.add(n);
    }

    fn ram_sub(&mut self, n: usize) {
        let n = n.min(self.ram_bytes);
        self.ram_bytes -= n;
        self.queue_ram.sub(n);
    }

    /// Takes a paged message out of the queue (its deadline passed) without reading it back:
    /// nothing will be done with it.
    fn discard_paged(&mut self, seq: u64) -> bool {
        let Some(d) = self.paged_deadlines.remove(&seq) else {
            return false;
        };
        self.paged = self.paged.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(d.counted);
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.ack(d.pos) {
                tracing::warn!("{}: cannot record an expiry: {e}", self.dir.display());
            }
        }
        true
    }

    /// Waits until removals handed to the background are done (for tests that reopen).
    #[cfg(test)]
    fn sync_and_wait_reaper(&self) {
        self.persist.sync().reaper().wait_idle();
    }

    /// Deadlines of every message waiting on disk (for tests).
    #[cfg(test)]
    fn paged_deadline_count(&self) -> usize {
        self.paged_deadlines.len()
    }
}

/// The deadline a record written before deadlines were stored gets: its TTL (the queue's, or
/// its own `expiration`, whichever is shorter) counted from `now`, so it never expires early.
fn legacy_deadline(payload: &[u8], body: usize, default_ttl: Option<u64>, now: u64) -> Option<u64> {
    let own = payload
        .get(body..)
        .and_then(|b| Message::decode_record(b).ok())
        .and_then(|m| m.expiration().and_then(Result::ok));
    let ttl = match (default_ttl, own) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(now.saturating_add(ttl) + u64::from(ttl > 0))
}

fn cost(q: &QueuedMessage) -> usize {
    q.message.body_size() + OVERHEAD
}

impl MessageStore for PagedStore {
    fn push(
        &mut self,
        msg: QueuedMessage,
        deadline: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        let persistent = self.durable && (self.keep_all || msg.message.is_persistent());
        // Beyond the queue's RAM budget every message goes to disk, transient ones too: a
        // publisher faster than the consumers then costs disk, not memory.
        let page = self.paged > 0
            || self.persist.paging()
            || self.queue_ram.get() >= self.persist.queue_ram_budget();
        if !persistent && !page {
            self.bytes += msg.message.body_size();
            self.ram_add(cost(&msg));
            self.ram.push_back(msg);
            self.ram_pos.push_back(NO_RECORD);
            return Ok(None);
        }
        let mut rec = std::mem::take(&mut self.scratch);
        rec.clear();
        let flags =
            u8::from(persistent) * FLAG_PERSISTENT + u8::from(deadline.is_some()) * FLAG_DEADLINE;
        rec.push(flags);
        rec.extend_from_slice(&msg.seq().to_le_bytes());
        if let Some(at) = deadline {
            rec.extend_from_slice(&to_wall(at).to_le_bytes());
        }
        msg.message.encode_record(&mut rec);
        let appended = self.log().and_then(|l| l.append(&rec));
        self.scratch = rec;
        let (pos, ticket) = appended?;
        self.bytes += msg.message.body_size();
        if page {
            if self.paged == 0 {
                self.cursor = pos;
            }
            self.paged += 1;
            if deadline.is_some() {
                let counted = msg.message.body_size();
                self.paged_deadlines
                    .insert(msg.seq(), PagedDeadline { pos, counted });
            }
        } else {
            self.ram_add(cost(&msg));
            self.ram.push_back(msg);
            self.ram_pos.push_back(pos);
        }
        Ok(persistent.then_some(ticket))
    }

    fn shift(&mut self) -> Option<QueuedMessage> {
        let (m, pos) = loop {
            while self.ram.is_empty() && self.paged > 0 {
                if !self.load() {
                    break;
                }
            }
            let m = self.ram.pop_front()?;
            let pos = self.ram_pos.pop_front();
            if m.is_tombstone() {
                self.dead -= 1;
                continue;
            }
            break (m, pos);
        };
        if let Some(pos) = pos.filter(|p| *p != NO_RECORD) {
            let seq = m.seq();
            let at = match self.inflight.back() {
                Some((last, _)) if *last > seq => self.inflight.partition_point(|(s, _)| *s < seq),
                _ => self.inflight.len(),
            };
            self.inflight.insert(at, (seq, pos));
        }
        self.ram_sub(cost(&m));
        self.bytes = self.bytes.saturating_sub(m.message.body_size());
        Some(m)
    }

    fn requeue(&mut self, msg: QueuedMessage) {
        self.ram_add(cost(&msg));
        self.bytes += msg.message.body_size();
        // Requeued messages are older than everything still ready, paged ones included.
        let seq = msg.seq();
        let pos = match self.inflight.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => self.inflight.remove(i).map_or(NO_RECORD, |(_, p)| p),
            Err(_) => NO_RECORD,
        };
        let at = self.ram.partition_point(|r| r.seq() < seq);
        self.ram.insert(at, msg);
        self.ram_pos.insert(at, pos);
    }

    fn flush(&mut self) {
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.flush() {
                tracing::warn!("{}: cannot record acks: {e}", self.dir.display());
            }
        }
    }

    fn unflushed(&self) -> bool {
        self.log.as_ref().is_some_and(QueueLog::unflushed)
    }

    fn delivered(&mut self, msg: &QueuedMessage) {
        if !self.durable || !(self.keep_all || msg.message.is_persistent()) {
            return;
        }
        let seq = msg.seq();
        let found = match self.inflight.back() {
            Some((s, _)) if *s == seq => Some(self.inflight.len() - 1),
            _ => self.inflight.binary_search_by_key(&seq, |(s, _)| *s).ok(),
        };
        let Some(&(_, pos)) = found.and_then(|i| self.inflight.get(i)) else {
            return;
        };
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.mark_delivered(pos) {
                // Only the redelivered flag after a restart is at stake.
                tracing::warn!("{}: cannot record a delivery: {e}", self.dir.display());
            }
        }
    }

    fn ack(&mut self, seq: u64) {
        let found = match self.inflight.front() {
            Some((s, _)) if *s == seq => Some(0),
            _ => self.inflight.binary_search_by_key(&seq, |(s, _)| *s).ok(),
        };
        if let Some((_, pos)) = found.and_then(|i| self.inflight.remove(i)) {
            if !self.held_paged.is_empty() {
                self.held_paged.remove(&pos);
            }
            if let Some(log) = self.log.as_mut() {
                if let Err(e) = log.ack(pos) {
                    // The message comes back after a restart: a redelivery, not a loss.
                    tracing::warn!("{}: cannot record an ack: {e}", self.dir.display());
                }
            }
        }
    }

    fn synced(&self) -> u64 {
        self.persist.sync().synced()
    }

    fn hold(&mut self, seq: u64, reason: DeathReason) {
        if !self.durable {
            return;
        }
        let Ok(i) = self.inflight.binary_search_by_key(&seq, |(s, _)| *s) else {
            return;
        };
        if let (Some(&(_, pos)), Some(log)) = (self.inflight.get(i), self.log.as_mut()) {
            if let Err(e) = log.mark_held(pos, reason.code()) {
                // After a restart it is ready again: dead-lettered again, not lost.
                tracing::warn!(
                    "{}: cannot record a held dead letter: {e}",
                    self.dir.display()
                );
            }
        }
    }

    fn remove_held(&mut self, seq: u64, reason: DeathReason) -> Option<HeldOut> {
        let (out, pos) = match crate::store::take_out(&mut self.ram, seq) {
            Some((i, m)) => {
                let pos = self
                    .ram_pos
                    .get_mut(i)
                    .map_or(NO_RECORD, |p| std::mem::replace(p, NO_RECORD));
                self.dead += 1;
                self.ram_sub(cost(&m));
                let bytes = m.message.body_size();
                self.bytes = self.bytes.saturating_sub(bytes);
                let out = HeldOut {
                    bytes,
                    message: Some(m.message),
                };
                (out, pos)
            }
            None if !self.holds_on_disk() => {
                // No log to read it back from later (not a quorum queue's store): taken
                // out as it is, into RAM.
                let m = self.remove_paged(seq)?;
                let bytes = m.message.body_size();
                let out = HeldOut {
                    bytes,
                    message: Some(m.message),
                };
                return Some(out);
            }
            None => {
                // Paged out: left on disk, read back only when a forward needs the copy.
                // Recovered records have no size counted yet (0): the length limit counts
                // them by number only.
                let d = self.paged_deadlines.remove(&seq)?;
                self.paged = self.paged.saturating_sub(1);
                self.bytes = self.bytes.saturating_sub(d.counted);
                self.held_paged.insert(d.pos);
                let out = HeldOut {
                    bytes: d.counted,
                    message: None,
                };
                (out, d.pos)
            }
        };
        if pos != NO_RECORD {
            // Kept until the copy reached its targets, acked by sequence number then.
            let at = self.inflight.partition_point(|(s, _)| *s < seq);
            self.inflight.insert(at, (seq, pos));
            self.hold(seq, reason);
        }
        Some(out)
    }

    fn holds_on_disk(&self) -> bool {
        // A quorum queue's store on a data dir: every message has a durable record.
        self.durable && self.keep_all
    }

    fn read_held(&mut self, seq: u64) -> Option<Arc<Message>> {
        let i = self.inflight.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        let &(_, pos) = self.inflight.get(i)?;
        let log = self.log.as_mut()?;
        let read = crate::blocking::run(|| log.read(pos));
        match read.ok().and_then(|p| parse(&p)) {
            Some((_, m)) => Some(Arc::new(m)),
            None => {
                tracing::error!(
                    "{}: a held dead letter at segment {} offset {} could not be read back; \
                     it is dropped",
                    self.dir.display(),
                    pos.segment,
                    pos.offset
                );
                None
            }
        }
    }

    fn discard(&mut self, seq: u64) -> bool {
        if self.paged_deadlines.contains_key(&seq) {
            return self.discard_paged(seq);
        }
        self.remove(seq).is_some()
    }

    fn remove(&mut self, seq: u64) -> Option<QueuedMessage> {
        let Some((i, m)) = crate::store::take_out(&mut self.ram, seq) else {
            return self.remove_paged(seq);
        };
        if let Some(pos) = self.ram_pos.get_mut(i) {
            let pos = std::mem::replace(pos, NO_RECORD);
            if let (true, Some(log)) = (pos != NO_RECORD, self.log.as_mut()) {
                if let Err(e) = log.ack(pos) {
                    tracing::warn!("{}: cannot record a removal: {e}", self.dir.display());
                }
            }
        }
        self.dead += 1;
        self.ram_sub(cost(&m));
        self.bytes = self.bytes.saturating_sub(m.message.body_size());
        Some(m)
    }

    fn purge(&mut self, purged: &mut dyn FnMut(u64)) -> usize {
        let n = self.len();
        let ram = std::mem::take(&mut self.ram);
        let ram_pos = std::mem::take(&mut self.ram_pos);
        for (m, pos) in ram.into_iter().zip(ram_pos) {
            if m.is_tombstone() {
                continue;
            }
            purged(m.seq());
            if let (true, Some(log)) = (pos != NO_RECORD, self.log.as_mut()) {
                if let Err(e) = log.ack(pos) {
                    tracing::warn!("{}: cannot record a purge: {e}", self.dir.display());
                }
            }
        }
        self.dead = 0;
        if self.paged > 0 {
            for seq in self.paged_deadlines.drain().map(|(seq, _)| seq) {
                purged(seq);
            }
            // Every record from the cursor on is paged (ready) or settled already: settled
            // in one go, without reading the backlog back.
            let from = self.cursor;
            if let Some(log) = self.log.as_mut() {
                let keep = &self.held_paged;
                if let Err(e) = crate::blocking::run(|| log.settle_from_keeping(from, keep)) {
                    // The messages come back after a restart: a redelivery, not a loss.
                    tracing::warn!("{}: cannot record a purge: {e}", self.dir.display());
                }
            }
            self.paged = 0;
        }
        // Only ready messages are counted; none is left.
        self.bytes = 0;
        let own = self.ram_bytes;
        self.ram_sub(own);
        n
    }

    fn len(&self) -> usize {
        self.ram.len() - self.dead + self.paged as usize
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn paged_out(&self) -> (usize, usize) {
        // RAM is accounted with a fixed overhead per loaded message; what is not in RAM is
        // on disk.
        let loaded = self.ram.len() - self.dead;
        let ram_body = self.ram_bytes.saturating_sub(loaded * OVERHEAD);
        (self.paged as usize, self.bytes.saturating_sub(ram_body))
    }

    fn destroy(&mut self) {
        self.destroyed = true;
        let own = self.ram_bytes;
        self.ram_sub(own);
        self.ram.clear();
        self.ram_pos.clear();
        self.dead = 0;
        self.paged = 0;
        self.inflight.clear();
        self.held_paged.clear();
        self.paged_deadlines.clear();
        // Removed in the background, not under the queue's lock (see `ferrymq_store::reaper`).
        match self.log.take() {
            Some(log) => log.destroy(),
            None => self.persist.sync().reaper().remove(self.dir.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Properties;
    use crate::persist::PersistConfig;
    use bytes::Bytes;
    use ferrymq_store::FsyncPolicy;

    fn persistence(dir: &std::path::Path) -> Arc<Persistence> {
        Persistence::open(PersistConfig {
            fsync: FsyncPolicy::Never,
            segment_size: 8192,
            // A few messages fit in RAM; the rest of the tail must be read back from disk.
            queue_ram_budget: 1000,
            ..PersistConfig::new(dir)
        })
        .unwrap()
    }

    fn msg(seq: u64, persistent: bool) -> QueuedMessage {
        let props = Properties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            ..Default::default()
        };
        let m = Message::from_properties("", "q", &props, Bytes::from(seq.to_string())).unwrap();
        QueuedMessage::new(seq, Arc::new(m))
    }

    fn body(m: &QueuedMessage) -> String {
        String::from_utf8_lossy(m.message.body()).into_owned()
    }

    #[test]
    fn a_tail_beyond_the_budget_is_read_back_in_order_with_requeues_in_place() {
        let d = tempfile::tempdir().unwrap();
        let p = persistence(d.path());
        let mut s = PagedStore::new(p, Some(LogHealth::new("q")), d.path().join("q"));
        for seq in 1..=500 {
            // Every third message is transient: it is paged with the rest once the tail is
            // on disk, and must come back in its place.
            s.push(msg(seq, seq % 3 != 0), None).unwrap();
        }
        assert!(
            s.paged > 400,
            "most of the queue is on disk only ({} paged)",
            s.paged
        );
        assert_eq!(s.len(), 500);
        let first = s.shift().unwrap();
        let second = s.shift().unwrap();
        s.requeue(first);
        s.ack(second.seq());
        let mut got = Vec::new();
        while let Some(m) = s.shift() {
            got.push(body(&m));
            s.ack(m.seq());
        }
        let mut want: Vec<String> = (1..=500).map(|i| i.to_string()).collect();
        want.remove(1);
        assert_eq!(got, want);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn recovery_returns_persistent_messages_redelivered_only_if_delivered_before() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("q");
        {
            let mut s = PagedStore::new(
                persistence(d.path()),
                Some(LogHealth::new("q")),
                dir.clone(),
            );
            for seq in 1..=300 {
                s.push(msg(seq, seq % 2 == 0), None).unwrap();
            }
            // Acked before the "crash": must not come back.
            let m = s.shift().unwrap();
            s.delivered(&m);
            s.ack(m.seq());
            let m = s.shift().unwrap();
            s.ack(m.seq());
            // Delivered and unacked at the "crash": 3 is transient, 4 persistent.
            for _ in 0..2 {
                let m = s.shift().unwrap();
                s.delivered(&m);
            }
        }
        let r =
            PagedStore::recover(persistence(d.path()), LogHealth::new("q"), dir, 1, None).unwrap();
        let (mut s, n) = (r.store, r.count);
        let len_at_start = s.len();
        let mut got = Vec::new();
        while let Some(m) = s.shift() {
            // Only the one that had been delivered comes back redelivered.
            assert_eq!(m.redelivered(), body(&m) == "4", "{}", body(&m));
            got.push(body(&m));
        }
        // Persistent = even sequence numbers; 2 was acked. Transient ones that had been
        // paged out are dropped at recovery, as RabbitMQ drops transient messages.
        let want: Vec<String> = (4..=300).step_by(2).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
        // The count the queue reports (declare-ok, limits) is the persistent ones only.
        assert_eq!(n, want.len() as u64);
        assert_eq!(len_at_start, want.len());
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn paged_messages_with_deadlines_can_be_taken_out_and_are_skipped_when_loaded() {
        let d = tempfile::tempdir().unwrap();
        let mut s = PagedStore::new(
            persistence(d.path()),
            Some(LogHealth::new("q")),
            d.path().join("q"),
        );
        let now = now_ms();
        for seq in 1..=300 {
            // Every other message has a deadline; the tail is paged out beyond the budget.
            let deadline = (seq % 2 == 0).then_some(now + 60_000);
            s.push(msg(seq, true), deadline).unwrap();
        }
        assert!(s.paged > 250, "most are on disk only ({} paged)", s.paged);
        assert!(s.paged_deadline_count() > 100);
        // Deadlines pass for messages deep in the paged tail.
        let expired: Vec<u64> = (200..=300).filter(|q| q % 2 == 0).collect();
        for &seq in &expired {
            let m = s
                .remove(seq)
                .expect("a paged message comes out at its deadline");
            assert_eq!(body(&m), seq.to_string(), "read back for dead-lettering");
        }
        assert_eq!(s.len(), 300 - expired.len());
        let mut got = Vec::new();
        while let Some(m) = s.shift() {
            got.push(m.seq());
            s.ack(m.seq());
        }
        let want: Vec<u64> = (1..=300).filter(|q| !expired.contains(q)).collect();
        assert_eq!(got, want, "the expired ones are not delivered");
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn held_dead_letters_from_ram_and_the_paged_tail_survive_a_purge_and_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("q");
        let far = now_ms() + 3_600_000;
        {
            let mut s = PagedStore::new(
                persistence(d.path()),
                Some(LogHealth::new("q")),
                dir.clone(),
            )
            .keeping_all(true);
            for seq in 1..=300 {
                s.push(msg(seq, true), Some(far)).unwrap();
            }
            assert!(s.paged > 200, "most of the tail is on disk only");
            // Held: a delivered one (rejected), one expiring in RAM, one in the paged tail.
            let first = s.shift().unwrap();
            s.delivered(&first);
            s.hold(first.seq(), DeathReason::Rejected);
            let ram = s.remove_held(2, DeathReason::Expired).unwrap();
            assert!(ram.message.is_some(), "in RAM anyway");
            let paged = s.remove_held(290, DeathReason::Expired).unwrap();
            assert!(paged.message.is_none(), "not read back into RAM to be held");
            assert_eq!(paged.bytes, 3, "its size still counts");
            let read = s.read_held(290).expect("read back for a forward attempt");
            assert_eq!(read.body(), b"290");
            // The purge settles the rest of the tail without reading it, except the held.
            assert_eq!(s.purge(&mut |_| {}), 297);
            s.flush();
            s.sync_and_wait_reaper();
        }
        let r = PagedStore::recover(
            persistence(d.path()),
            LogHealth::new("q"),
            dir.clone(),
            1,
            None,
        )
        .unwrap();
        assert_eq!(r.count, 0, "nothing ready");
        assert_eq!(
            r.held,
            vec![
                (1, DeathReason::Rejected, 1),
                (2, DeathReason::Expired, 1),
                (3, DeathReason::Expired, 3)
            ],
            "positions, reasons and sizes: no messages"
        );
        let mut s = r.store.keeping_all(true);
        let bodies: Vec<String> = (1..=3)
            .map(|seq| String::from_utf8(s.read_held(seq).unwrap().body().to_vec()).unwrap())
            .collect();
        assert_eq!(
            bodies,
            vec!["1", "2", "290"],
            "read back from their records"
        );
        // Forwarded: acked by sequence number, gone at the next start.
        for seq in 1..=3 {
            s.ack(seq);
        }
        drop(s);
        let r =
            PagedStore::recover(persistence(d.path()), LogHealth::new("q"), dir, 1, None).unwrap();
        assert_eq!((r.count, r.held.len()), (0, 0));
    }

    #[test]
    fn a_power_loss_that_drops_unsynced_held_marks_or_acks_never_loses_the_letter() {
        // Held marks and acks are written but not fsynced: a power loss may keep any prefix
        // of the ack log. Whatever prefix survives, each letter is ready or held again
        // (forwarded again: a duplicate at worst), never gone.
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("q");
        let ack_log = dir.join("0000000001.ack");
        let (marks_end, full) = {
            let mut s = PagedStore::new(
                persistence(d.path()),
                Some(LogHealth::new("q")),
                dir.clone(),
            )
            .keeping_all(true);
            for seq in 1..=2 {
                s.push(msg(seq, true), None).unwrap();
            }
            for _ in 1..=2 {
                s.shift().unwrap();
            }
            s.hold(1, DeathReason::Expired);
            s.hold(2, DeathReason::Rejected);
            s.flush();
            let marks_end = std::fs::metadata(&ack_log).unwrap().len();
            // Letter 2's copy reached its targets (and was fsynced there): acked.
            s.ack(2);
            s.flush();
            let full = std::fs::read(&ack_log).unwrap();
            (marks_end, full)
        };
        let recover_with = |kept: u64| {
            let mut bytes = full.clone();
            bytes.truncate(kept as usize);
            std::fs::write(&ack_log, &bytes).unwrap();
            let r = PagedStore::recover(
                persistence(d.path()),
                LogHealth::new("q"),
                dir.clone(),
                1,
                None,
            )
            .unwrap();
            let held: Vec<DeathReason> = r.held.iter().map(|h| h.1).collect();
            (r.count, held)
        };
        assert_eq!(
            recover_with(0),
            (2, vec![]),
            "marks lost: both ready again (2 is also in its targets: a duplicate)"
        );
        assert_eq!(
            recover_with(4),
            (2, vec![]),
            "a reason entry without its mark is ignored: ready again"
        );
        assert_eq!(
            recover_with(marks_end),
            (0, vec![DeathReason::Expired, DeathReason::Rejected]),
            "the ack lost: both held again, 2 forwarded again (a duplicate)"
        );
        assert_eq!(
            recover_with(full.len() as u64),
            (0, vec![DeathReason::Expired]),
            "nothing lost: 2 settled (its copy was fsynced before the ack was written)"
        );
    }

    #[test]
    fn held_dead_letters_recovered_among_ready_ones_survive_a_purge_after_the_restart() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("q");
        let far = now_ms() + 3_600_000;
        let recover = || {
            PagedStore::recover(
                persistence(d.path()),
                LogHealth::new("q"),
                dir.clone(),
                1,
                None,
            )
            .unwrap()
        };
        {
            let mut s = PagedStore::new(
                persistence(d.path()),
                Some(LogHealth::new("q")),
                dir.clone(),
            )
            .keeping_all(true);
            for seq in 1..=300 {
                s.push(msg(seq, true), Some(far)).unwrap();
            }
            // Held deep in the tail: in later segments than the first ready record.
            for seq in [150, 250, 290] {
                assert!(s.remove_held(seq, DeathReason::Expired).is_some());
            }
            s.flush();
        }
        let r = recover();
        assert_eq!((r.count, r.held.len()), (297, 3));
        // The held letters are not forwarded yet (no route) when the queue is purged.
        let mut s = r.store;
        assert_eq!(s.purge(&mut |_| {}), 297);
        s.flush();
        s.sync_and_wait_reaper();
        drop(s);
        let r = recover();
        let mut s = r.store.keeping_all(true);
        let held: Vec<String> = r
            .held
            .iter()
            .map(|h| String::from_utf8(s.read_held(h.0).unwrap().body().to_vec()).unwrap())
            .collect();
        assert_eq!(r.count, 0);
        assert_eq!(
            held,
            vec!["150", "250", "290"],
            "a purge keeps held letters"
        );
    }

    #[test]
    fn recovered_messages_keep_their_deadlines_and_expired_ones_stay_gone() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("q");
        let now = now_ms();
        {
            let mut s = PagedStore::new(
                persistence(d.path()),
                Some(LogHealth::new("q")),
                dir.clone(),
            );
            for seq in 1..=50 {
                s.push(msg(seq, true), (seq <= 10).then_some(now + 3_600_000 + seq))
                    .unwrap();
            }
        }
        let r = PagedStore::recover(
            persistence(d.path()),
            LogHealth::new("q"),
            dir.clone(),
            1,
            None,
        )
        .unwrap();
        assert_eq!(r.count, 50);
        assert_eq!(r.deadlines.len(), 10);
        for (i, (seq, at)) in r.deadlines.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            // The same instant, through the wall clock and back (a millisecond of slack for
            // the two clocks being read at slightly different moments).
            let want = now + 3_600_000 + *seq;
            assert!(at.abs_diff(want) <= 2, "deadline {at} kept (want {want})");
        }
        // Two expire before anything is consumed; they never come out.
        let mut s = r.store;
        assert!(s.remove(3).is_some() && s.remove(7).is_some());
        assert_eq!(s.len(), 48);
        let mut got = Vec::new();
        while let Some(m) = s.shift() {
            assert!(!m.redelivered(), "never delivered before the restart");
            got.push(body(&m));
        }
        let want: Vec<String> = (1..=50)
            .filter(|i| *i != 3 && *i != 7)
            .map(|i: u64| i.to_string())
            .collect();
        assert_eq!(got, want);
        drop(s);
        // Their expiry was settled on disk: still gone after another restart.
        let r =
            PagedStore::recover(persistence(d.path()), LogHealth::new("q"), dir, 1, None).unwrap();
        assert_eq!(r.count, 48);
    }

    #[test]
    fn records_without_a_stored_deadline_get_the_queue_ttl_from_the_restart() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("q");
        {
            // Records as an older version wrote them: no deadline flag.
            let sync = persistence(d.path()).sync().clone();
            let (mut log, _) = QueueLog::open(&dir, 8192, sync, Some(LogHealth::new("q"))).unwrap();
            for seq in 1..=3u64 {
                let mut rec = vec![FLAG_PERSISTENT];
                rec.extend_from_slice(&seq.to_le_bytes());
                msg(seq, true).message.encode_record(&mut rec);
                log.append(&rec).unwrap();
            }
        }
        let before = now_ms();
        let r = PagedStore::recover(
            persistence(d.path()),
            LogHealth::new("q"),
            dir,
            1,
            Some(5000),
        )
        .unwrap();
        assert_eq!(r.deadlines.len(), 3);
        assert!(r.deadlines.iter().all(|(_, at)| *at > before + 5000 - 1));
    }

    #[test]
    fn counts_stay_exact_across_restarts_with_transient_messages_paged_out() {
        // Transient messages paged out to a durable queue's log are dropped at each restart;
        // the count the queue reports must be exactly the persistent ones still there.
        for variant in 0..6u64 {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("q");
            let mut left = 0u64;
            let health = LogHealth::new("q");
            let mut s = PagedStore::new(persistence(d.path()), Some(health), dir.clone());
            let mut next = 1u64;
            for round in 0..3u64 {
                for _ in 0..200 {
                    let persistent = (next * 7 + variant + round).is_multiple_of(3);
                    s.push(msg(next, persistent), None).unwrap();
                    left += u64::from(persistent);
                    next += 1;
                }
                for _ in 0..variant * 10 {
                    if let Some(m) = s.shift() {
                        left -= u64::from(m.message.is_persistent());
                        s.ack(m.seq());
                    }
                }
                drop(s);
                let health = LogHealth::new("q");
                let r = PagedStore::recover(persistence(d.path()), health, dir.clone(), next, None)
                    .unwrap();
                next += r.count;
                assert_eq!(r.count, left, "variant {variant} restart {round}");
                assert_eq!(
                    r.store.len() as u64,
                    left,
                    "variant {variant} restart {round}"
                );
                s = r.store;
            }
            let mut drained = 0;
            while let Some(m) = s.shift() {
                drained += 1;
                s.ack(m.seq());
            }
            assert_eq!(drained, left, "variant {variant}");
        }
    }

    #[test]
    fn priority_levels_share_one_ram_budget() {
        let d = tempfile::tempdir().unwrap();
        let p = persistence(d.path());
        let ram = QueueRam::default();
        let level = |n: u8| {
            PagedStore::new(p.clone(), None, d.path().join(format!("p{n}")))
                .sharing_ram(ram.clone())
        };
        let (mut low, mut high) = (level(0), level(9));
        for seq in 1..=100 {
            low.push(msg(seq, false), None).unwrap();
        }
        assert!(low.paged > 0, "the budget is used up by one level");
        high.push(msg(101, false), None).unwrap();
        assert_eq!(
            high.paged, 1,
            "another level of the same queue pages at once"
        );
        while let Some(m) = low.shift() {
            low.ack(m.seq());
        }
        assert_eq!(ram.get(), 0, "what was loaded is given back");
        high.push(msg(102, false), None).unwrap();
        assert_eq!(high.len(), 2);
        assert_eq!(high.shift().map(|m| m.seq()), Some(101));
    }

    #[test]
    fn a_purge_settles_the_paged_backlog_and_keeps_unacked_deliveries() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("q");
        let now = now_ms();
        {
            let mut s = PagedStore::new(
                persistence(d.path()),
                Some(LogHealth::new("q")),
                dir.clone(),
            );
            for seq in 1..=2000 {
                let deadline = (seq % 100 == 0).then_some(now + 3_600_000);
                s.push(msg(seq, true), deadline).unwrap();
            }
            assert!(s.paged > 1900, "most of the backlog is on disk");
            // Delivered, not acked: they must survive the purge.
            let unacked: Vec<u64> = (0..3).filter_map(|_| s.shift()).map(|m| m.seq()).collect();
            assert_eq!(unacked, vec![1, 2, 3]);
            let mut named = Vec::new();
            assert_eq!(s.purge(&mut |seq| named.push(seq)), 1997);
            assert_eq!((s.len(), s.bytes()), (0, 0));
            // Every purged message with a deadline is named, so the queue forgets it.
            let mut with_deadline: Vec<u64> =
                named.iter().copied().filter(|q| q % 100 == 0).collect();
            with_deadline.sort_unstable();
            assert_eq!(with_deadline, (1..=20).map(|i| i * 100).collect::<Vec<_>>());
            // The queue goes on: later messages are kept.
            s.push(msg(2001, true), None).unwrap();
            s.sync_and_wait_reaper();
        }
        let r =
            PagedStore::recover(persistence(d.path()), LogHealth::new("q"), dir, 1, None).unwrap();
        let mut s = r.store;
        let mut got = Vec::new();
        while let Some(m) = s.shift() {
            got.push(body(&m));
        }
        assert_eq!(got, vec!["1", "2", "3", "2001"]);
    }

    #[test]
    fn reading_a_paged_backlog_back_keeps_to_the_ram_budget_whatever_the_message_size() {
        // Reading back is bounded by the budget, not only by a record count: 1,024 records of
        // 1 MiB would otherwise put 1 GiB in RAM, under the queue's lock.
        let d = tempfile::tempdir().unwrap();
        let p = persistence(d.path());
        let budget = p.queue_ram_budget();
        let mut s = PagedStore::new(p, None, d.path().join("q"));
        let big = |seq: u64| {
            let m = Message::from_properties(
                "",
                "q",
                &Properties::default(),
                Bytes::from(vec![b'x'; 64 * 1024]),
            )
            .unwrap();
            QueuedMessage::new(seq, Arc::new(m))
        };
        for seq in 1..=300 {
            s.push(big(seq), None).unwrap();
        }
        assert!(s.paged > 290, "the backlog is on disk");
        let one = 64 * 1024 + OVERHEAD;
        // The first message was kept in RAM; the second comes from disk.
        assert_eq!(s.shift().map(|m| m.seq()), Some(1));
        assert_eq!(s.shift().map(|m| m.seq()), Some(2));
        assert!(
            s.ram_bytes <= budget + 2 * one,
            "{} bytes loaded in RAM after reading one message back (budget {budget})",
            s.ram_bytes
        );
    }

    #[test]
    fn discarding_expired_paged_messages_settles_them_without_reading_them() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("q");
        let now = now_ms();
        {
            let mut s = PagedStore::new(
                persistence(d.path()),
                Some(LogHealth::new("q")),
                dir.clone(),
            );
            for seq in 1..=300 {
                s.push(msg(seq, true), Some(now + 60_000)).unwrap();
            }
            let before = (s.len(), s.bytes());
            for seq in 200..=300 {
                assert!(s.discard(seq), "{seq} is paged and goes");
                assert!(!s.discard(seq), "once");
            }
            assert_eq!(s.len(), before.0 - 101);
            assert!(s.bytes() < before.1);
            s.sync_and_wait_reaper();
        }
        let r =
            PagedStore::recover(persistence(d.path()), LogHealth::new("q"), dir, 1, None).unwrap();
        assert_eq!(r.count, 199, "settled on disk too");
    }
}
