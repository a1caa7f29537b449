//! A queue's messages when some of them live on disk.
//!
//! The ready messages are a loaded head (`ram`, in memory, in order) followed by `paged`
//! records at the tail of the queue's [`QueueLog`], read back in batches as the head drains.
//! A message is written to the log when it must survive a restart (persistent, in a durable
//! queue) or when it has to be paged out: the tail is already on disk, the queue's in-memory
//! budget is used up, or the broker signals memory pressure. Paged messages cost no RAM at
//! all, so a backlog of ten million messages costs little more than its loaded head.
//!
//! Record payload: `[flags u8][seq u64 LE][message record]` (see `docs/storage.md`).

use crate::message::{Message, QueuedMessage};
use crate::persist::Persistence;
use crate::store::MessageStore;
use ferrymq_store::{Position, QueueLog, StoreError};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

/// Record flag: the message must survive a restart.
const FLAG_PERSISTENT: u8 = 1;
/// Position marking a ready message that has no record (it lives only in memory).
const NO_RECORD: Position = Position {
    segment: u32::MAX,
    offset: u32::MAX,
};
/// Records loaded from disk per batch.
const LOAD_BATCH: usize = 1024;
/// RAM accounted per loaded message besides its body (the message and queue entry).
const OVERHEAD: usize = 128;

/// Ready messages in memory with a tail on disk.
pub struct PagedStore {
    persist: Arc<Persistence>,
    /// Whether persistent messages are written (the queue is durable).
    durable: bool,
    dir: PathBuf,
    log: Option<QueueLog>,
    ram: VecDeque<QueuedMessage>,
    /// Record position of each entry of `ram` ([`NO_RECORD`] for messages only in memory).
    /// A parallel queue rather than a field of the entry, so `ram` stays 16 bytes an entry.
    ram_pos: VecDeque<Position>,
    /// Tombstones in `ram` (messages taken out of the middle when they expired).
    dead: usize,
    ram_bytes: usize,
    /// Ready records on disk after `ram`, starting at `cursor`.
    paged: u64,
    cursor: Position,
    /// Sequence number for the next record loaded that predates this run.
    recovered_seq: u64,
    /// Records of delivered, unacked messages, sorted by sequence number: acks mostly come
    /// in order (and right after the delivery with autoack), so this stays cheap.
    inflight: VecDeque<(u64, Position)>,
    bytes: usize,
    scratch: Vec<u8>,
}

impl PagedStore {
    /// A store for a new queue whose log (if it ever needs one) lives in `dir`.
    pub fn new(persist: Arc<Persistence>, durable: bool, dir: PathBuf) -> Self {
        PagedStore {
            persist,
            durable,
            dir,
            log: None,
            ram: VecDeque::new(),
            ram_pos: VecDeque::new(),
            dead: 0,
            ram_bytes: 0,
            paged: 0,
            cursor: Position {
                segment: 0,
                offset: 0,
            },
            recovered_seq: 1,
            inflight: VecDeque::new(),
            bytes: 0,
            scratch: Vec::new(),
        }
    }

    /// Reopens a durable queue's log. Returns the store and how many messages it recovered;
    /// they take sequence numbers `first_seq..first_seq + n` in their original order, so the
    /// queue continues after them. Recovered messages come back marked redelivered: the
    /// broker cannot know whether they were delivered before the restart.
    pub fn recover(
        persist: Arc<Persistence>,
        dir: PathBuf,
        first_seq: u64,
    ) -> Result<(Self, u64), StoreError> {
        let (log, n) = QueueLog::open(&dir, persist.segment_size(), persist.sync().clone())?;
        let mut s = PagedStore::new(persist, true, dir);
        s.recovered_seq = first_seq;
        s.cursor = log.first();
        s.paged = n;
        s.log = Some(log);
        Ok((s, n))
    }

    fn log(&mut self) -> Result<&mut QueueLog, StoreError> {
        let log = match self.log.take() {
            Some(l) => l,
            None => {
                QueueLog::open(
                    &self.dir,
                    self.persist.segment_size(),
                    self.persist.sync().clone(),
                )?
                .0
            }
        };
        Ok(self.log.insert(log))
    }

    /// Moves up to a batch of paged records into `ram`.
    fn load(&mut self) {
        let want = (self.paged.min(LOAD_BATCH as u64)) as usize;
        let cursor = self.cursor;
        let Some(log) = self.log.as_mut() else {
            self.paged = 0;
            return;
        };
        let recovered_end = log.recovered_end();
        let (batch, next) = match log.read_batch(cursor, want) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(
                    "{}: cannot read queued messages back: {e}",
                    self.dir.display()
                );
                return;
            }
        };
        if batch.is_empty() {
            tracing::error!(
                "{}: {} queued messages expected on disk but the log ends",
                self.dir.display(),
                self.paged
            );
            self.paged = 0;
            return;
        }
        self.cursor = next;
        for (pos, payload) in batch {
            self.paged = self.paged.saturating_sub(1);
            let from_before = pos < recovered_end;
            let parsed = parse(&payload);
            let Some((flags, seq, msg)) = parsed else {
                tracing::error!(
                    "{}: dropping an unreadable message record at segment {} offset {}",
                    self.dir.display(),
                    pos.segment,
                    pos.offset
                );
                let _ = log.ack(pos);
                continue;
            };
            if from_before && flags & FLAG_PERSISTENT == 0 {
                // A transient message paged out before the restart: gone, as RabbitMQ does.
                let _ = log.ack(pos);
                continue;
            }
            let qm = if from_before {
                self.recovered_seq += 1;
                let mut q = QueuedMessage::new(self.recovered_seq - 1, Arc::new(msg));
                q.mark_returned();
                q
            } else {
                QueuedMessage::new(seq, Arc::new(msg))
            };
            if from_before {
                // Body bytes of recovered messages become known only now.
                self.bytes += qm.message.body_size();
            }
            self.ram_bytes += cost(&qm);
            self.ram.push_back(qm);
            self.ram_pos.push_back(pos);
        }
    }
}

fn cost(q: &QueuedMessage) -> usize {
    q.message.body_size() + OVERHEAD
}

fn parse(payload: &[u8]) -> Option<(u8, u64, Message)> {
    let (&flags, rest) = payload.split_first()?;
    let seq = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let msg = Message::decode_record(rest.get(8..)?).ok()?;
    Some((flags, seq, msg))
}

impl MessageStore for PagedStore {
    fn push(&mut self, msg: QueuedMessage) -> Result<Option<u64>, StoreError> {
        let persistent = self.durable && msg.message.is_persistent();
        // Beyond the queue's RAM budget every message goes to disk, transient ones too: a
        // publisher faster than the consumers then costs disk, not memory.
        let page = self.paged > 0
            || self.persist.paging()
            || self.ram_bytes >= self.persist.queue_ram_budget();
        if !persistent && !page {
            self.bytes += msg.message.body_size();
            self.ram_bytes += cost(&msg);
            self.ram.push_back(msg);
            self.ram_pos.push_back(NO_RECORD);
            return Ok(None);
        }
        let mut rec = std::mem::take(&mut self.scratch);
        rec.clear();
        rec.push(if persistent { FLAG_PERSISTENT } else { 0 });
        rec.extend_from_slice(&msg.seq().to_le_bytes());
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
        } else {
            self.ram_bytes += cost(&msg);
            self.ram.push_back(msg);
            self.ram_pos.push_back(pos);
        }
        Ok(persistent.then_some(ticket))
    }

    fn shift(&mut self) -> Option<QueuedMessage> {
        let (m, pos) = loop {
            if self.ram.is_empty() && self.paged > 0 {
                self.load();
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
        self.ram_bytes = self.ram_bytes.saturating_sub(cost(&m));
        self.bytes = self.bytes.saturating_sub(m.message.body_size());
        Some(m)
    }

    fn requeue(&mut self, msg: QueuedMessage) {
        self.ram_bytes += cost(&msg);
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

    fn ack(&mut self, seq: u64) {
        let found = match self.inflight.front() {
            Some((s, _)) if *s == seq => Some(0),
            _ => self.inflight.binary_search_by_key(&seq, |(s, _)| *s).ok(),
        };
        if let Some((_, pos)) = found.and_then(|i| self.inflight.remove(i)) {
            if let Some(log) = self.log.as_mut() {
                if let Err(e) = log.ack(pos) {
                    // The message comes back after a restart: a redelivery, not a loss.
                    tracing::warn!("{}: cannot record an ack: {e}", self.dir.display());
                }
            }
        }
    }

    fn remove(&mut self, seq: u64) -> Option<QueuedMessage> {
        let (i, m) = crate::store::take_out(&mut self.ram, seq)?;
        if let Some(pos) = self.ram_pos.get_mut(i) {
            let pos = std::mem::replace(pos, NO_RECORD);
            if let (true, Some(log)) = (pos != NO_RECORD, self.log.as_mut()) {
                if let Err(e) = log.ack(pos) {
                    tracing::warn!("{}: cannot record a removal: {e}", self.dir.display());
                }
            }
        }
        self.dead += 1;
        self.ram_bytes = self.ram_bytes.saturating_sub(cost(&m));
        self.bytes = self.bytes.saturating_sub(m.message.body_size());
        Some(m)
    }

    fn purge(&mut self) -> usize {
        let mut n = 0;
        while let Some(m) = self.shift() {
            let seq = m.seq();
            self.ack(seq);
            n += 1;
        }
        n
    }

    fn len(&self) -> usize {
        self.ram.len() - self.dead + self.paged as usize
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn destroy(&mut self) {
        self.ram.clear();
        self.ram_pos.clear();
        self.dead = 0;
        self.paged = 0;
        self.inflight.clear();
        if let Some(log) = self.log.take() {
            if let Err(e) = log.destroy() {
                tracing::warn!(
                    "{}: cannot remove a deleted queue's files: {e}",
                    self.dir.display()
                );
            }
        } else if self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
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
        let mut s = PagedStore::new(p, true, d.path().join("q"));
        for seq in 1..=500 {
            // Every third message is transient: it is paged with the rest once the tail is
            // on disk, and must come back in its place.
            s.push(msg(seq, seq % 3 != 0)).unwrap();
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
    fn recovery_returns_persistent_messages_only_marked_redelivered() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("q");
        {
            let mut s = PagedStore::new(persistence(d.path()), true, dir.clone());
            for seq in 1..=300 {
                s.push(msg(seq, seq % 2 == 0)).unwrap();
            }
            // Acked before the "crash": must not come back.
            let m = s.shift().unwrap();
            s.ack(m.seq());
            let m = s.shift().unwrap();
            s.ack(m.seq());
        }
        let (mut s, n) = PagedStore::recover(persistence(d.path()), dir, 1).unwrap();
        let mut got = Vec::new();
        while let Some(m) = s.shift() {
            assert!(m.redelivered());
            got.push(body(&m));
        }
        // Persistent = even sequence numbers; 2 was acked. Transient ones that had been
        // paged out are dropped at recovery, as RabbitMQ drops transient messages.
        let want: Vec<String> = (4..=300).step_by(2).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
        assert!(n >= want.len() as u64);
    }
}
