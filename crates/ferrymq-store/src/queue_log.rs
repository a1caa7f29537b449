//! One durable queue's messages on disk: append-only segment files of CRC-framed records, and
//! beside each segment an ack log of the record offsets that were settled.
//!
//! ```text
//! <dir>/0000000001.seg   records: [len u32 LE][crc32c u32 LE][payload]...
//! <dir>/0000000001.ack   offsets of settled records in that segment: [u32 LE]...
//! ```
//!
//! An ack log may also hold `u32::MAX`: every record of that segment is settled (a purge),
//! and delivered marks: an offset with bit 31 set (offsets stay below 2^30, segments being
//! at most 1 GiB) says the record was delivered to a consumer that had to acknowledge it,
//! so it comes back `redelivered` after a restart and the others do not. A held mark (bit 30
//! set, bit 31 clear, preceded by a reason entry `0xFFFF_FFF0 + reason`) says the record was
//! dead-lettered at least once and waits for its copy to reach the targets: it is not ready
//! after a restart but handed back with its reason (see [`QueueLog::take_held`]).
//!
//! Recovery is records minus acks. A segment whose every record is acked (and that is no
//! longer written to) is deleted with its ack log, so disk use falls as consumers catch up.
//! Acks are not fsynced: an ack lost in a crash means a redelivery, never a loss.

use crate::record::{self, Scan, HEADER_LEN};
use crate::sync::{LogHealth, SyncFile, SyncGroup};
use crate::StoreError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Segment number.
    pub segment: u32,
    /// Byte offset of the record header in the segment.
    pub offset: u32,
}

/// Bytes read from disk per call when reading a backlog sequentially.
const READ_CHUNK: usize = 256 * 1024;
/// An ack-log entry settling every record of its segment (no record starts at this offset:
/// a record is at least a header long and offsets are `u32`). Written by
/// [`QueueLog::settle_from`] so a purged segment need not be read to be settled.
const SETTLED_ALL: u32 = u32::MAX;
/// Bit marking an ack-log entry as a delivered mark rather than an ack.
const DELIVERED: u32 = 1 << 31;
/// Bit marking an ack-log entry as a held mark: the record left the queue to be
/// dead-lettered at least once and is kept until its copy reached every target. Bit 31
/// clear, so older builds read it as an ack of an offset no record has (a record must fit
/// below 2^30), i.e. ignore it.
const HELD: u32 = 1 << 30;
/// The entry written just before a held mark, carrying its reason (`REASON + code`,
/// codes below 16). Bit 31 set: older builds read it as a delivered mark of an offset no
/// record has. A reason entry a tear left without its held mark is ignored.
const REASON: u32 = 0xFFFF_FFF0;
/// What [`QueueLog::open_with`] shows each recovered record to: its position, its held
/// reason code if it is held (not ready), and its payload.
pub type Visit<'a> = dyn FnMut(Position, Option<u8>, &[u8]) + 'a;

/// Records read per batch while settling a purged segment record by record.
const SETTLE_BATCH: usize = 4096;

struct Segment {
    records: u32,
    acked: u32,
    ack_log: Option<File>,
    /// Valid bytes (for the head segment, see [`Head::len`]).
    len: u64,
    /// Offsets found acked when the log was opened: reading skips them.
    skip: HashSet<u32>,
    /// Damaged records recovery stepped over (offset → size): reading skips them too.
    corrupt: HashMap<u32, u32>,
    /// Unacked records found marked delivered when the log was opened.
    delivered: HashSet<u32>,
    /// Unacked records found held (offset, reason code) when the log was opened, until
    /// [`QueueLog::take_held`] takes them. No payloads: a queue may hold millions of dead
    /// letters, and it reads each back only when it forwards it.
    held: Vec<(u32, u8)>,
}

impl Segment {
    fn new() -> Self {
        Segment {
            records: 0,
            acked: 0,
            ack_log: None,
            len: 0,
            skip: HashSet::new(),
            corrupt: HashMap::new(),
            delivered: HashSet::new(),
            held: Vec::new(),
        }
    }
}

/// The segment being appended to.
struct Head {
    id: u32,
    file: Arc<SyncFile>,
    len: u64,
}

/// A durable queue's segment log.
pub struct QueueLog {
    dir: PathBuf,
    segment_size: u64,
    head: Head,
    recovered_end: Position,
    segments: BTreeMap<u32, Segment>,
    readers: BTreeMap<u32, File>,
    sync: Arc<SyncGroup>,
    /// Whether writes go through group commit (durable logs) or just to the OS.
    durable: bool,
    health: Arc<LogHealth>,
    scratch: Vec<u8>,
    /// Ack-log entries (acks and delivered marks) not yet written, as (segment, entry): one
    /// write per segment and batch instead of a syscall per entry (see [`QueueLog::flush`]).
    unwritten: Vec<(u32, u32)>,
}

/// Unwritten ack-log entries that make [`QueueLog`] write them at once.
const UNWRITTEN_MAX: usize = 64;

impl Drop for QueueLog {
    /// A log closed at shutdown writes what it buffered, so a clean restart loses no ack.
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!("{}: acks not written at close: {e}", self.dir.display());
        }
    }
}

fn seg_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}

fn ack_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.ack"))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(path.display().to_string(), e)
}

impl QueueLog {
    /// Opens (creating if needed) the log in `dir` and recovers it. Returns the log and how
    /// many valid, unacked records it holds; read them with [`QueueLog::read_batch`] from
    /// [`QueueLog::first`]. A torn or corrupt record ends its segment: the segment is cut
    /// there, with a warning, and everything before it is kept.
    ///
    /// With `health`, appends go through group commit and the log fails for good when a sync
    /// fails; without, the log is not durable (paged-out transient messages) and its writes
    /// are never synced.
    pub fn open(
        dir: &Path,
        segment_size: u64,
        sync: Arc<SyncGroup>,
        health: Option<Arc<LogHealth>>,
    ) -> Result<(QueueLog, u64), StoreError> {
        QueueLog::open_with(dir, segment_size, sync, health, &mut |_, _, _| {})
    }

    /// [`QueueLog::open`], showing `visit` every valid, unacked record recovered, in log
    /// order, while recovery has it in memory anyway (so what a queue needs from every record
    /// at start, such as deadlines, costs no second read). A held record (see
    /// [`QueueLog::mark_held`]) is shown with `Some(reason code)`: it is not ready, and
    /// [`QueueLog::take_held`] hands over its position; the others with `None`.
    pub fn open_with(
        dir: &Path,
        segment_size: u64,
        sync: Arc<SyncGroup>,
        health: Option<Arc<LogHealth>>,
        visit: &mut Visit<'_>,
    ) -> Result<(QueueLog, u64), StoreError> {
        let durable = health.is_some();
        let health = health.unwrap_or_else(|| LogHealth::new(dir.display().to_string()));
        let created = create_dirs(dir)?;
        let names: Vec<String> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        let numbered = |suffix: &str| -> HashSet<u32> {
            names
                .iter()
                .filter_map(|n| n.strip_suffix(suffix)?.parse().ok())
                .collect()
        };
        let seg_ids = numbered(".seg");
        // An ack log whose segment is gone (a crash between the two removals) would settle
        // the records of a later segment given its number.
        for orphan in numbered(".ack").difference(&seg_ids) {
            remove_file_if_there(&ack_path(dir, *orphan))?;
        }
        let mut ids: Vec<u32> = seg_ids.into_iter().collect();
        ids.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut ready = 0u64;
        for &id in &ids {
            let seg = recover_segment(dir, id, visit)?;
            if seg.records == seg.acked {
                remove_segment(dir, id)?;
                continue;
            }
            ready += u64::from(seg.records - seg.acked) - seg.held.len() as u64;
            segments.insert(id, seg);
        }
        // Always append to a fresh segment: a recovered one may end where a record was cut.
        let next = match ids.last() {
            None => 1,
            Some(&l) => next_id(dir, l)?,
        };
        let head = new_head(dir, next, &health)?;
        segments.insert(next, Segment::new());
        if durable {
            // The new head segment's name, and any directory just created, must be durable
            // before a record in them counts as durable (removals just before too).
            for d in created.iter().filter_map(|c| c.parent()) {
                sync.dir_changed(d, &health);
            }
            sync.dir_changed(dir, &health);
        }
        let log = QueueLog {
            dir: dir.to_path_buf(),
            segment_size: segment_size.max(4096),
            head,
            recovered_end: Position {
                segment: next,
                offset: 0,
            },
            segments,
            readers: BTreeMap::new(),
            sync,
            durable,
            health,
            scratch: Vec::new(),
            unwritten: Vec::new(),
        };
        Ok((log, ready))
    }

    /// Where reading the whole log starts.
    pub fn first(&self) -> Position {
        Position {
            segment: self.segments.keys().next().copied().unwrap_or(self.head.id),
            offset: 0,
        }
    }

    /// Records before this position were written before the log was last opened.
    pub fn recovered_end(&self) -> Position {
        self.recovered_end
    }

    /// The position the next append will get (unless it rolls to a new segment).
    pub fn end(&self) -> Position {
        Position {
            segment: self.head.id,
            offset: self.head.len as u32,
        }
    }

    /// Reads up to `max` records in order starting at `from` (a record position, or a segment
    /// end), skipping records that were already acked when the log was opened, and stopping
    /// once their payloads reach `max_bytes` (at least one record is read). Returns them with
    /// the position to continue from; fewer than `max` with `max_bytes` unreached means the
    /// end of the log.
    #[allow(clippy::type_complexity)]
    pub fn read_batch(
        &mut self,
        mut from: Position,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(Position, Vec<u8>)>, Position), StoreError> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut bytes = 0usize;
        // At least one record, however large: the caller must make progress.
        let room =
            |out: &Vec<_>, bytes: usize| out.len() < max && (out.is_empty() || bytes < max_bytes);
        while room(&out, bytes) {
            let Some((&id, seg)) = self.segments.range(from.segment..).next() else {
                break;
            };
            if id != from.segment {
                from = Position {
                    segment: id,
                    offset: 0,
                };
            }
            let len = if id == self.head.id {
                self.head.len
            } else {
                seg.len
            };
            if u64::from(from.offset) >= len {
                if id == self.head.id {
                    break;
                }
                from = Position {
                    segment: id + 1,
                    offset: 0,
                };
                continue;
            }
            let path = seg_path(&self.dir, id);
            let want = ((len - u64::from(from.offset)) as usize).min(READ_CHUNK);
            buf.resize(want, 0);
            self.file(id)?
                .read_exact_at(&mut buf, u64::from(from.offset))
                .map_err(io(&path))?;
            let mut off = 0usize;
            while room(&out, bytes) {
                match record::scan(&buf, off) {
                    Scan::Record(payload, next) => {
                        let at = from.offset + off as u32;
                        let acked = self.segments.get(&id).is_some_and(|s| s.skip.contains(&at));
                        if !acked {
                            bytes += payload.len();
                            out.push((
                                Position {
                                    segment: id,
                                    offset: at,
                                },
                                payload.to_vec(),
                            ));
                        }
                        off = next;
                    }
                    Scan::End => break,
                    Scan::Torn | Scan::Corrupt
                        if self.corrupt_len(id, from.offset + off as u32).is_some() =>
                    {
                        // Stepped over at recovery; its size may reach past this chunk.
                        let len = self.corrupt_len(id, from.offset + off as u32);
                        off += len.unwrap_or_default() as usize;
                        if off >= buf.len() {
                            break;
                        }
                    }
                    Scan::Torn if off > 0 => break,
                    Scan::Torn => {
                        // One record larger than the chunk: read exactly it, once its length
                        // is known to fit the segment (the file may have changed since it
                        // was recovered).
                        let n = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                        if (HEADER_LEN + n) as u64 > len - u64::from(from.offset) {
                            return Err(StoreError::Corrupt(
                                path.display().to_string(),
                                from.offset,
                            ));
                        }
                        buf.resize(HEADER_LEN + n, 0);
                        self.file(id)?
                            .read_exact_at(&mut buf, u64::from(from.offset))
                            .map_err(io(&path))?;
                        if !matches!(record::scan(&buf, 0), Scan::Record(..)) {
                            return Err(StoreError::Corrupt(
                                path.display().to_string(),
                                from.offset,
                            ));
                        }
                        continue;
                    }
                    Scan::Corrupt => {
                        return Err(StoreError::Corrupt(
                            path.display().to_string(),
                            from.offset + off as u32,
                        ))
                    }
                }
            }
            from.offset += off as u32;
        }
        Ok((out, from))
    }

    /// The size of the damaged record recovery stepped over at `at`, if there is one.
    fn corrupt_len(&self, id: u32, at: u32) -> Option<u32> {
        self.segments.get(&id)?.corrupt.get(&at).copied()
    }

    fn file(&mut self, id: u32) -> Result<&File, StoreError> {
        if id == self.head.id {
            return Ok(self.head.file.file());
        }
        let path = seg_path(&self.dir, id);
        Ok(match self.readers.entry(id) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(File::open(&path).map_err(io(&path))?)
            }
        })
    }

    /// Appends a record. Returns where it went and the group-commit ticket after which it is
    /// on disk (0 for a log that is not durable). On a failed write (disk full) the segment
    /// is cut back so no torn record stays. A log whose sync failed takes no more records.
    pub fn append(&mut self, payload: &[u8]) -> Result<(Position, u64), StoreError> {
        if self.durable && self.health.is_failed() {
            return Err(StoreError::Failed(self.dir.display().to_string()));
        }
        let need = (HEADER_LEN + payload.len()) as u64;
        if need > u32::MAX as u64 {
            return Err(StoreError::TooLarge(payload.len()));
        }
        if self.head.len > 0 && self.head.len + need > self.segment_size {
            self.roll()?;
        }
        self.scratch.clear();
        record::encode(payload, &mut self.scratch);
        let pos = Position {
            segment: self.head.id,
            offset: self.head.len as u32,
        };
        let path = seg_path(&self.dir, self.head.id);
        // Positional write: after a failed (possibly partial) write the next one still lands
        // right after the last whole record.
        if let Err(e) = self
            .head
            .file
            .file()
            .write_all_at(&self.scratch, self.head.len)
        {
            let _ = self.head.file.file().set_len(self.head.len);
            return Err(io(&path)(e));
        }
        self.head.len += need;
        if let Some(s) = self.segments.get_mut(&self.head.id) {
            s.records += 1;
        }
        let ticket = match self.durable {
            true => self.sync.written(&self.head.file),
            false => 0,
        };
        Ok((pos, ticket))
    }

    /// Reads the payload of the record at `pos`.
    pub fn read(&mut self, pos: Position) -> Result<Vec<u8>, StoreError> {
        let path = seg_path(&self.dir, pos.segment);
        let valid = if pos.segment == self.head.id {
            self.head.len
        } else {
            self.segments.get(&pos.segment).map_or(0, |s| s.len)
        };
        let f = self.file(pos.segment)?;
        let mut h = [0u8; HEADER_LEN];
        f.read_exact_at(&mut h, pos.offset as u64)
            .map_err(io(&path))?;
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        // The length comes from the disk: check it before it sizes a buffer.
        if u64::from(pos.offset) + (HEADER_LEN + len) as u64 > valid {
            return Err(StoreError::Corrupt(path.display().to_string(), pos.offset));
        }
        let mut payload = vec![0u8; len];
        f.read_exact_at(&mut payload, pos.offset as u64 + HEADER_LEN as u64)
            .map_err(io(&path))?;
        if crc32c::crc32c(&payload) != crc {
            return Err(StoreError::Corrupt(path.display().to_string(), pos.offset));
        }
        Ok(payload)
    }

    /// Records that the record at `pos` was delivered to a consumer that must acknowledge
    /// it. Written at once (with the acks buffered so far), so a process crash after the
    /// delivery left never loses it; not fsynced: a machine crash may lose the
    /// `redelivered` flag of a message delivered just before.
    pub fn mark_delivered(&mut self, pos: Position) -> Result<(), StoreError> {
        if !self.segments.contains_key(&pos.segment) {
            return Ok(());
        }
        self.unwritten.push((pos.segment, pos.offset | DELIVERED));
        self.flush()
    }

    /// Records that the record at `pos` left the queue to be dead-lettered at least once for
    /// `reason` (a code below 16) and must be kept until its copy has reached its targets
    /// (then it is [`QueueLog::ack`]ed). Buffered like an ack: the queue flushes before it
    /// hands the copy to a target. A mark lost in a crash only makes the message ready
    /// again (a duplicate if its copy was forwarded), never lost: its record stays.
    pub fn mark_held(&mut self, pos: Position, reason: u8) -> Result<(), StoreError> {
        if !self.segments.contains_key(&pos.segment) {
            return Ok(());
        }
        // In one flush (one write per segment): the reason entry first, so a write cut
        // short leaves at most a reason without its mark, which recovery ignores.
        self.unwritten
            .push((pos.segment, REASON + u32::from(reason & 0xF)));
        self.unwritten.push((pos.segment, pos.offset | HELD));
        if self.unwritten.len() >= UNWRITTEN_MAX {
            return self.flush();
        }
        Ok(())
    }

    /// The records found held when the log was opened (position, reason code), in log
    /// order; each is returned once. Their payloads stay on disk (read one back with
    /// [`QueueLog::read`]): a held letter costs its position, not its message. They are not
    /// counted as ready nor read by [`QueueLog::read_batch`]; ack each once its copy has
    /// reached its targets.
    pub fn take_held(&mut self) -> Vec<(Position, u8)> {
        let mut out = Vec::new();
        for (&segment, seg) in self.segments.iter_mut() {
            for (offset, reason) in seg.held.drain(..) {
                out.push((Position { segment, offset }, reason));
            }
        }
        out
    }

    fn buffer_entry(&mut self, segment: u32, entry: u32) -> Result<(), StoreError> {
        self.unwritten.push((segment, entry));
        if self.unwritten.len() >= UNWRITTEN_MAX {
            return self.flush();
        }
        Ok(())
    }

    /// Whether acks or delivered marks wait for [`QueueLog::flush`].
    pub fn unflushed(&self) -> bool {
        !self.unwritten.is_empty()
    }

    /// Writes the buffered acks and delivered marks, one write per segment. Acks and marks
    /// are buffered so a batch of acks costs one syscall; the queue flushes at the end of
    /// each ack batch, before a marked delivery leaves it, and shortly after other
    /// settlements (its timer). They are never fsynced: a lost ack is a redelivery, a mark
    /// lost in a machine crash a missing `redelivered` flag.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let mut entries = std::mem::take(&mut self.unwritten);
        // Stable: each segment's entries keep their order.
        entries.sort_by_key(|(seg, _)| *seg);
        let mut result = Ok(());
        let mut buf = Vec::with_capacity(entries.len() * 4);
        for chunk in entries.chunk_by(|a, b| a.0 == b.0) {
            buf.clear();
            for (_, e) in chunk {
                buf.extend_from_slice(&e.to_le_bytes());
            }
            if let Err(e) = self.write_ack_bytes(chunk[0].0, &buf) {
                result = Err(e);
            }
        }
        entries.clear();
        self.unwritten = entries;
        result
    }

    /// Whether a record recovered at open had been delivered before (see
    /// [`QueueLog::mark_delivered`]).
    pub fn was_delivered(&self, pos: Position) -> bool {
        self.segments
            .get(&pos.segment)
            .is_some_and(|s| s.delivered.contains(&pos.offset))
    }

    /// Records that the record at `pos` is settled. Each position must be acked once.
    pub fn ack(&mut self, pos: Position) -> Result<(), StoreError> {
        if !self.segments.contains_key(&pos.segment) {
            return Ok(());
        }
        self.buffer_entry(pos.segment, pos.offset)?;
        let Some(seg) = self.segments.get_mut(&pos.segment) else {
            return Ok(());
        };
        seg.acked += 1;
        if seg.acked >= seg.records && pos.segment != self.head.id {
            // Written first: the files are unlinked later, in the background, and a crash
            // before that must find every ack (else acked records come back).
            self.flush()?;
            self.segments.remove(&pos.segment);
            self.readers.remove(&pos.segment);
            self.remove_later(pos.segment);
        }
        Ok(())
    }

    /// Settles every record at or after `from`: a purge of the tail of a queue whose records
    /// from `from` on are all ready (or settled already). Every later segment is settled
    /// whole, by one ack-log entry, without reading it; only `from`'s own segment is read,
    /// and checked against its ack log so no record is settled twice (which would count a
    /// live record before `from` as settled and lose it at the next start).
    pub fn settle_from(&mut self, from: Position) -> Result<(), StoreError> {
        self.settle_from_keeping(from, &HashSet::new())
    }

    /// [`QueueLog::settle_from`], except the records at `keep` (held dead letters taken out
    /// of the paged tail): a segment holding one is settled record by record, not whole.
    pub fn settle_from_keeping(
        &mut self,
        from: Position,
        keep: &HashSet<Position>,
    ) -> Result<(), StoreError> {
        // The ack log of `from`'s segment is read below: it must hold every ack so far.
        self.flush()?;
        if self.head.id > from.segment && self.head.len > 0 {
            // The head takes appends: a fresh one lets it be settled whole like the others.
            self.roll()?;
        }
        let later: Vec<u32> = self
            .segments
            .range(from.segment.saturating_add(1)..)
            .map(|(&id, _)| id)
            .filter(|&id| id != self.head.id)
            .collect();
        let mut partial = vec![from];
        for id in later {
            if keep.iter().any(|p| p.segment == id) {
                partial.push(Position {
                    segment: id,
                    offset: 0,
                });
                continue;
            }
            self.write_ack(id, SETTLED_ALL)?;
            self.segments.remove(&id);
            self.readers.remove(&id);
            self.remove_later(id);
        }
        for at in partial {
            self.settle_segment_from(at, keep)?;
        }
        Ok(())
    }

    /// Settles, one by one, the records of `from`'s segment at or after `from` that its ack
    /// log does not settle yet and `keep` does not name.
    fn settle_segment_from(
        &mut self,
        from: Position,
        keep: &HashSet<Position>,
    ) -> Result<(), StoreError> {
        if !self.segments.contains_key(&from.segment) {
            return Ok(());
        }
        let path = ack_path(&self.dir, from.segment);
        let acked: HashSet<u32> = match std::fs::read(&path) {
            Ok(b) => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut at = from;
        loop {
            let (batch, next) = self.read_batch(at, SETTLE_BATCH, usize::MAX)?;
            let full = batch.len() == SETTLE_BATCH;
            for (pos, _) in batch {
                if pos.segment == from.segment
                    && !acked.contains(&pos.offset)
                    && !keep.contains(&pos)
                {
                    self.ack(pos)?;
                }
            }
            if !full || next.segment != from.segment || !self.segments.contains_key(&from.segment) {
                return Ok(());
            }
            at = next;
        }
    }

    fn write_ack(&mut self, id: u32, offset: u32) -> Result<(), StoreError> {
        self.write_ack_bytes(id, &offset.to_le_bytes())
    }

    fn write_ack_bytes(&mut self, id: u32, bytes: &[u8]) -> Result<(), StoreError> {
        let path = ack_path(&self.dir, id);
        let Some(seg) = self.segments.get_mut(&id) else {
            return Ok(());
        };
        if seg.ack_log.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            seg.ack_log = Some(f);
        }
        match &mut seg.ack_log {
            Some(f) => f.write_all(bytes).map_err(io(&path)),
            None => Ok(()),
        }
    }

    /// Hands a fully acked segment and its ack log to the background remover: unlinking a
    /// 64 MiB file is not done under the queue's lock.
    fn remove_later(&self, id: u32) {
        let reaper = self.sync.reaper();
        reaper.remove(seg_path(&self.dir, id));
        reaper.remove(ack_path(&self.dir, id));
    }

    /// Has group commit sync `dir`'s entries (durable logs only); returns the ticket.
    fn dir_changed(&self, dir: &Path) -> u64 {
        match self.durable {
            true => self.sync.dir_changed(dir, &self.health),
            false => 0,
        }
    }

    /// Number of segment files currently kept.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Deletes the whole log (the queue was deleted): its directory is removed in the
    /// background (see [`crate::reaper`]).
    pub fn destroy(mut self) {
        // Nothing buffered is to be written into a directory about to go.
        self.unwritten.clear();
        self.sync.reaper().remove(self.dir.clone());
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        let id = next_id(&self.dir, self.head.id)?;
        if let Some(s) = self.segments.get_mut(&self.head.id) {
            s.len = self.head.len;
        }
        self.head = new_head(&self.dir, id, &self.health)?;
        self.segments.insert(id, Segment::new());
        self.dir_changed(&self.dir);
        // The previous head may already be fully acked.
        let prev = id - 1;
        if let Some(s) = self.segments.get(&prev) {
            if s.acked >= s.records {
                // Its buffered acks first (see `ack`).
                self.flush()?;
                self.segments.remove(&prev);
                self.readers.remove(&prev);
                self.remove_later(prev);
            }
        }
        Ok(())
    }
}

/// Creates `dir` and its missing ancestors; returns the directories it created, outermost
/// first, so their parents can be synced.
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    missing.reverse();
    Ok(missing)
}

/// The number of the segment after `id`. Only a damaged or hostile directory gets to
/// `u32::MAX` (at one segment a second that is 136 years of appends).
fn next_id(dir: &Path, id: u32) -> Result<u32, StoreError> {
    id.checked_add(1)
        .ok_or_else(|| StoreError::SegmentNumbers(dir.display().to_string()))
}

fn new_head(dir: &Path, id: u32, health: &Arc<LogHealth>) -> Result<Head, StoreError> {
    let path = seg_path(dir, id);
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .read(true)
        .truncate(true)
        .open(&path)
        .map_err(io(&path))?;
    Ok(Head {
        id,
        file: SyncFile::new(file, path, health.clone()),
        len: 0,
    })
}

fn remove_file_if_there(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

fn remove_segment(dir: &Path, id: u32) -> Result<(), StoreError> {
    remove_file_if_there(&seg_path(dir, id))?;
    remove_file_if_there(&ack_path(dir, id))
}

/// Cuts an ack log back to its first `whole` bytes: its last entry was cut short (a crash or
/// a full disk during the append). That ack is lost, so its record is delivered again; left
/// in place, the torn bytes would shift every ack appended after them, which would then be
/// read back as other offsets.
fn cut_ack_log(dir: &Path, id: u32, whole: usize) -> Result<(), StoreError> {
    let path = ack_path(dir, id);
    tracing::warn!(
        "{}: the last ack entry is cut short; dropping it (its record is delivered again)",
        path.display()
    );
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    f.set_len(whole as u64).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))
}

/// Appends a damaged record's offset to its segment's ack log.
fn settle_damaged(dir: &Path, id: u32, at: u32) -> Result<(), StoreError> {
    let path = ack_path(dir, id);
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&at.to_le_bytes()))
        .map_err(io(&path))
}

fn recover_segment(dir: &Path, id: u32, visit: &mut Visit<'_>) -> Result<Segment, StoreError> {
    let path = seg_path(dir, id);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let mut acked: HashSet<u32> = HashSet::new();
    let mut delivered: HashSet<u32> = HashSet::new();
    let mut held: HashMap<u32, u8> = HashMap::new();
    match std::fs::read(ack_path(dir, id)) {
        Ok(b) => {
            let whole = b.len() - b.len() % 4;
            if whole < b.len() {
                cut_ack_log(dir, id, whole)?;
            }
            // A reason entry applies to the entry right after it only.
            let mut reason = None;
            for c in b[..whole].chunks_exact(4) {
                let e = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                let pending = reason.take();
                if e == SETTLED_ALL {
                    acked.insert(e);
                } else if e >= REASON {
                    reason = Some((e - REASON) as u8);
                } else if e & DELIVERED != 0 {
                    delivered.insert(e & !DELIVERED);
                } else if e & HELD != 0 {
                    // Without its reason entry (cut off): `0`, rejected, the likeliest.
                    held.insert(e & !HELD, pending.unwrap_or(0));
                } else {
                    acked.insert(e);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&ack_path(dir, id))(e)),
    };
    let all_settled = acked.contains(&SETTLED_ALL);
    let mut seg = Segment::new();
    let mut off = 0usize;
    loop {
        match record::scan(&bytes, off) {
            Scan::Record(payload, next) => {
                seg.records += 1;
                if all_settled || acked.contains(&(off as u32)) {
                    seg.acked += 1;
                    seg.skip.insert(off as u32);
                } else {
                    let at = Position {
                        segment: id,
                        offset: off as u32,
                    };
                    if let Some(&r) = held.get(&(off as u32)) {
                        // Not ready: skipped by reads, handed to the queue by `take_held`.
                        seg.skip.insert(off as u32);
                        seg.held.push((off as u32, r));
                        visit(at, Some(r), payload);
                    } else {
                        if delivered.contains(&(off as u32)) {
                            seg.delivered.insert(off as u32);
                        }
                        visit(at, None, payload);
                    }
                }
                off = next;
            }
            Scan::End => break,
            damage @ (Scan::Torn | Scan::Corrupt) => {
                if let Some((damaged, next)) = match damage {
                    Scan::Corrupt => record::step_over(&bytes, off),
                    _ => None,
                } {
                    // The length prefixes lead past the damage to an intact record: only the
                    // damaged records are lost. Each is settled in the ack log, so it counts
                    // as done (its segment can go) and is reported once.
                    for (at, len) in damaged {
                        let at32 = at as u32;
                        seg.records += 1;
                        seg.acked += 1;
                        seg.skip.insert(at32);
                        seg.corrupt.insert(at32, len as u32);
                        if all_settled || acked.contains(&at32) {
                            continue;
                        }
                        tracing::error!(
                            "{}: corrupt record (CRC mismatch) at offset {at}, {len} bytes: it \
                             is lost and skipped; the records after it are kept",
                            path.display()
                        );
                        settle_damaged(dir, id, at32)?;
                    }
                    off = next;
                    continue;
                }
                let why = match damage {
                    Scan::Torn => {
                        "runs past the end of the file (a write cut short, or a \
                                   damaged length prefix)"
                    }
                    _ => {
                        "fails its CRC and no intact record follows where its length \
                          prefix points"
                    }
                };
                tracing::warn!(
                    "{}: the record at offset {off} {why}; cutting the segment there: bytes \
                     {off}..{} ({} bytes: that record and anything after it) are dropped, \
                     the {} records before it are kept",
                    path.display(),
                    bytes.len(),
                    bytes.len() - off,
                    seg.records
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                f.set_len(off as u64).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
                break;
            }
        }
    }
    seg.len = off as u64;
    Ok(seg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::FsyncPolicy;

    /// Opens the log and reads back everything it recovered.
    fn open(dir: &Path, seg: u64) -> (QueueLog, Vec<Vec<u8>>) {
        let sync = SyncGroup::start(FsyncPolicy::Never);
        let (mut log, n) = QueueLog::open(dir, seg, sync, Some(LogHealth::new("q"))).unwrap();
        let (mut all, mut at) = (Vec::new(), log.first());
        loop {
            // Small batches exercise continuing across chunk and segment ends.
            let (batch, next) = log.read_batch(at, 7, usize::MAX).unwrap();
            let done = batch.len() < 7;
            all.extend(batch.into_iter().map(|(_, p)| p));
            at = next;
            if done {
                break;
            }
        }
        assert_eq!(all.len() as u64, n);
        (log, all)
    }

    /// Holds removals (their directory sync) in `gated` until opened.
    struct Gate {
        gated: PathBuf,
        open: parking_lot::Mutex<bool>,
        cv: parking_lot::Condvar,
    }

    impl crate::sync::Syncer for Gate {
        fn sync_file(&self, f: &File, _p: &Path) -> std::io::Result<()> {
            f.sync_data()
        }
        fn sync_dir(&self, p: &Path) -> std::io::Result<()> {
            let mut open = self.open.lock();
            while p == self.gated && !*open {
                self.cv.wait(&mut open);
            }
            Ok(())
        }
    }

    #[test]
    fn a_crash_before_a_fully_acked_segment_is_unlinked_brings_none_of_it_back() {
        // The last acks of a segment were buffered, then dropped as moot when the segment
        // was handed to the background remover: a crash before the unlink found its records
        // without their acks, and acked messages came back.
        let d = tempfile::tempdir().unwrap();
        let (dir, decoys) = (d.path().join("q"), d.path().join("decoys"));
        std::fs::create_dir_all(&decoys).unwrap();
        std::fs::write(decoys.join("x"), b"x").unwrap();
        let gate = Arc::new(Gate {
            gated: decoys.clone(),
            open: parking_lot::Mutex::new(false),
            cv: parking_lot::Condvar::new(),
        });
        let sync = SyncGroup::start_with(FsyncPolicy::Never, gate.clone());
        let (mut log, _) =
            QueueLog::open(&dir, 4096, sync.clone(), Some(LogHealth::new("q"))).unwrap();
        let mut pos = Vec::new();
        while log.end().segment == log.first().segment {
            pos.push(log.append(&[7u8; 100]).unwrap().0);
        }
        let kept = log.append(&[8u8; 100]).unwrap().0;
        // The remover is busy (held) while the first segment is fully acked.
        sync.reaper().remove(decoys.join("x"));
        for p in pos.iter().filter(|p| p.segment != kept.segment) {
            log.ack(*p).unwrap();
        }
        // A kill -9 now: nothing more is written, the remover has not unlinked anything.
        let crashed = d.path().join("crashed");
        std::fs::create_dir_all(&crashed).unwrap();
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), crashed.join(e.file_name())).unwrap();
        }
        *gate.open.lock() = true;
        gate.cv.notify_all();
        std::mem::forget(log);
        let (_log, back) = open(&crashed, 4096);
        assert_eq!(
            back,
            vec![vec![7u8; 100], vec![8u8; 100]],
            "only the unacked records (the second segment's) come back"
        );
    }

    #[test]
    fn held_records_come_back_held_with_their_reason_not_ready_until_acked() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 4096);
        let pos: Vec<Position> = (0..4u8).map(|i| log.append(&[i; 20]).unwrap().0).collect();
        log.mark_delivered(pos[1]).unwrap();
        log.mark_held(pos[1], 3).unwrap();
        log.mark_held(pos[2], 1).unwrap();
        drop(log);
        let (mut log, ready) = open(d.path(), 4096);
        assert_eq!(
            ready,
            vec![vec![0u8; 20], vec![3u8; 20]],
            "held ones are not ready"
        );
        let held = log.take_held();
        assert_eq!(held, vec![(pos[1], 3), (pos[2], 1)]);
        // Positions only: the payload is read back when the letter is forwarded.
        assert_eq!(log.read(pos[1]).unwrap(), vec![1u8; 20]);
        assert!(log.take_held().is_empty(), "handed over once");
        log.ack(pos[1]).unwrap();
        drop(log);
        let (mut log, ready) = open(d.path(), 4096);
        assert_eq!(ready.len(), 2);
        assert_eq!(
            log.take_held().len(),
            1,
            "the acked one is gone, the other still held"
        );
    }

    #[test]
    fn a_held_mark_cut_from_its_reason_reads_as_rejected_and_a_lone_reason_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 4096);
        let a = log.append(&[1; 20]).unwrap().0;
        let b = log.append(&[2; 20]).unwrap().0;
        drop(log);
        // A held mark with no reason entry before it, then a reason entry whose mark was
        // cut off (a torn write): `b` stays ready.
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(ack_path(d.path(), a.segment))
            .unwrap();
        f.write_all(&(a.offset | HELD).to_le_bytes()).unwrap();
        f.write_all(&(REASON + 1).to_le_bytes()).unwrap();
        drop(f);
        let (mut log, ready) = open(d.path(), 4096);
        assert_eq!(ready, vec![vec![2u8; 20]]);
        assert_eq!(
            log.take_held()
                .iter()
                .map(|h| (h.0, h.1))
                .collect::<Vec<_>>(),
            vec![(a, 0)]
        );
        let _ = b;
    }

    #[test]
    fn settling_a_purged_tail_keeps_the_held_records_in_it() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 4096);
        let pos: Vec<Position> = (0..300u32)
            .map(|i| log.append(&i.to_le_bytes().repeat(10)).unwrap().0)
            .collect();
        // One held record in the first segment of the tail, one in a later segment.
        let keep: HashSet<Position> = [pos[10], pos[250]].into_iter().collect();
        for p in &keep {
            log.mark_held(*p, 1).unwrap();
        }
        log.settle_from_keeping(pos[5], &keep).unwrap();
        log.sync.reaper().wait_idle();
        drop(log);
        let (mut log, ready) = open(d.path(), 4096);
        assert_eq!(ready.len(), 5, "the records before the purge point");
        let mut held: Vec<Position> = log.take_held().into_iter().map(|h| h.0).collect();
        held.sort();
        assert_eq!(held, vec![pos[10], pos[250]]);
    }

    #[test]
    fn recovery_is_records_minus_acks_across_segments() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, r) = open(d.path(), 4096);
        assert!(r.is_empty());
        let mut pos = Vec::new();
        for i in 0..300u32 {
            pos.push(log.append(&i.to_le_bytes().repeat(10)).unwrap().0);
        }
        assert!(
            log.segment_count() > 1,
            "40-byte records in 4 KiB segments roll"
        );
        for p in pos.iter().step_by(2) {
            log.ack(*p).unwrap();
        }
        assert_eq!(log.read(pos[1]).unwrap(), 1u32.to_le_bytes().repeat(10));
        drop(log);
        let (_log, r) = open(d.path(), 4096);
        let want: Vec<Vec<u8>> = (0..300u32)
            .filter(|i| i % 2 == 1)
            .map(|i| i.to_le_bytes().repeat(10))
            .collect();
        assert_eq!(r, want);
    }

    #[test]
    fn acked_segments_are_deleted() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 4096);
        let pos: Vec<Position> = (0..500)
            .map(|_| log.append(&[7u8; 100]).unwrap().0)
            .collect();
        let before = std::fs::read_dir(d.path()).unwrap().count();
        for p in &pos {
            log.ack(*p).unwrap();
        }
        assert!(before > 5);
        assert_eq!(log.segment_count(), 1, "only the head segment remains");
        log.sync.reaper().wait_idle();
        drop(log);
        let (log, r) = open(d.path(), 4096);
        assert!(r.is_empty());
        assert_eq!(log.segment_count(), 1);
        let files = std::fs::read_dir(d.path()).unwrap().count();
        assert!(files <= 2, "{files} files left");
    }

    #[test]
    fn a_truncated_tail_is_cut_and_the_rest_kept() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 1 << 20);
        for i in 0..10u8 {
            log.append(&[i; 50]).unwrap();
        }
        drop(log);
        let seg = seg_path(d.path(), 1);
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 20).unwrap();
        let (_log, r) = open(d.path(), 1 << 20);
        assert_eq!(r, (0..9u8).map(|i| vec![i; 50]).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), 9 * 58);
    }

    #[test]
    fn a_bit_flip_in_the_tail_is_cut_and_the_rest_kept() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 1 << 20);
        for i in 0..10u8 {
            log.append(&[i; 50]).unwrap();
        }
        drop(log);
        let seg = seg_path(d.path(), 1);
        let mut bytes = std::fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0x04;
        std::fs::write(&seg, &bytes).unwrap();
        let (mut log, r) = open(d.path(), 1 << 20);
        assert_eq!(r, (0..9u8).map(|i| vec![i; 50]).collect::<Vec<_>>());
        // The log keeps working after recovery.
        let (p, _) = log.append(b"after").unwrap();
        assert_eq!(log.read(p).unwrap(), b"after");
    }

    /// Ten 50-byte records 0..10 in segment 1, then closed; returns the segment's path.
    #[test]
    fn settling_from_a_position_keeps_every_live_record_before_it() {
        for head_too in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let (mut log, _) = open(d.path(), 4096);
            // About 37 records a segment: several segments, the head among them.
            let mut pos = Vec::new();
            for i in 0..200u32 {
                pos.push(log.append(&i.to_le_bytes().repeat(25)).unwrap().0);
            }
            let cut = if head_too { 190 } else { 50 };
            let from = pos[cut];
            // Settled before the purge, on both sides of `from`, and all but one of the
            // records before it in its own segment: settling any record twice would count
            // that one as settled too and lose it at the next start.
            let mut acked = vec![3, 10, cut + 1, cut + 2, 120, 191];
            let same: Vec<usize> = (0..cut)
                .filter(|&i| pos[i].segment == from.segment)
                .collect();
            assert!(same.len() > 2, "records before `from` in its segment");
            acked.extend(same.iter().skip(1));
            for &i in &acked {
                log.ack(pos[i]).unwrap();
            }
            log.settle_from(from).unwrap();
            let want: Vec<u32> = (0..cut as u32)
                .filter(|i| !acked.contains(&(*i as usize)))
                .collect();
            let ids = |recs: Vec<Vec<u8>>| -> Vec<u32> {
                recs.iter()
                    .map(|r| u32::from_le_bytes([r[0], r[1], r[2], r[3]]))
                    .collect()
            };
            // What a restart brings back is exactly the live records before `from`.
            log.sync.reaper().wait_idle();
            drop(log);
            let (mut log, got) = open(d.path(), 4096);
            assert_eq!(ids(got), want, "head_too {head_too}");
            // Settling those too leaves nothing, and the log takes new records.
            log.settle_from(log.first()).unwrap();
            log.append(b"after").unwrap();
            log.sync.reaper().wait_idle();
            drop(log);
            let (_, got) = open(d.path(), 4096);
            assert_eq!(got, vec![b"after".to_vec()]);
        }
    }

    fn ten_records(dir: &Path) -> PathBuf {
        let (mut log, _) = open(dir, 1 << 20);
        for i in 0..10u8 {
            log.append(&[i; 50]).unwrap();
        }
        drop(log);
        seg_path(dir, 1)
    }

    fn flip(path: &Path, at: usize, mask: u8) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] ^= mask;
        std::fs::write(path, &bytes).unwrap();
    }

    #[test]
    fn a_corrupt_record_mid_segment_is_skipped_and_the_records_after_it_kept() {
        let d = tempfile::tempdir().unwrap();
        let seg = ten_records(d.path());
        // A flipped bit in the payload of record 4 (each record is 58 bytes).
        flip(&seg, 4 * 58 + HEADER_LEN + 20, 0x08);
        let want: Vec<Vec<u8>> = (0..10u8).filter(|&i| i != 4).map(|i| vec![i; 50]).collect();
        let (mut log, r) = open(d.path(), 1 << 20);
        assert_eq!(r, want, "only the damaged record is lost");
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            10 * 58,
            "nothing is cut"
        );
        let (p, _) = log.append(b"after").unwrap();
        assert_eq!(log.read(p).unwrap(), b"after");
        drop(log);
        // Opened again: the same records (the damaged one was settled, not reported again).
        let (mut log, r) = open(d.path(), 1 << 20);
        let mut again = want.clone();
        again.push(b"after".to_vec());
        assert_eq!(r, again);
        // Once every kept record is acked the segment goes, damaged record and all.
        let (batch, _) = log.read_batch(log.first(), 100, usize::MAX).unwrap();
        for (pos, _) in batch {
            log.ack(pos).unwrap();
        }
        log.sync.reaper().wait_idle();
        assert!(!seg.exists(), "the fully settled segment is deleted");
    }

    #[test]
    fn a_damaged_length_mid_segment_cuts_the_segment_there() {
        // The length prefix is what finds the next record: damaged, nothing after it can be
        // trusted, so the segment ends there (the log line says how many bytes went).
        for mask in [0x40u8, 0x01] {
            let d = tempfile::tempdir().unwrap();
            let seg = ten_records(d.path());
            flip(&seg, 4 * 58 + 1, mask);
            let (_log, r) = open(d.path(), 1 << 20);
            assert_eq!(r, (0..4u8).map(|i| vec![i; 50]).collect::<Vec<_>>());
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), 4 * 58);
        }
    }

    #[test]
    fn a_corrupt_last_record_is_a_corrupt_tail_and_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let seg = ten_records(d.path());
        flip(&seg, 9 * 58 + 4, 0x02);
        let (_log, r) = open(d.path(), 1 << 20);
        assert_eq!(r.len(), 9);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), 9 * 58);
    }

    #[test]
    fn several_corrupt_records_in_a_row_are_each_skipped() {
        let d = tempfile::tempdir().unwrap();
        let seg = ten_records(d.path());
        for i in [2usize, 3, 7] {
            flip(&seg, i * 58 + HEADER_LEN + 1, 0x10);
        }
        let (_log, r) = open(d.path(), 1 << 20);
        let want: Vec<Vec<u8>> = (0..10u8)
            .filter(|i| ![2, 3, 7].contains(i))
            .map(|i| vec![i; 50])
            .collect();
        assert_eq!(r, want);
    }

    #[test]
    fn a_corrupt_record_larger_than_a_read_chunk_is_stepped_over_too() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 1 << 20);
        let big = vec![9u8; READ_CHUNK + 1000];
        log.append(b"small").unwrap();
        log.append(&big).unwrap();
        log.append(b"tail").unwrap();
        drop(log);
        flip(
            &seg_path(d.path(), 1),
            HEADER_LEN + 5 + HEADER_LEN + 100,
            0x01,
        );
        let (_log, r) = open(d.path(), 1 << 20);
        assert_eq!(r, vec![b"small".to_vec(), b"tail".to_vec()]);
    }

    #[test]
    fn a_length_damaged_after_recovery_is_corrupt_not_an_allocation() {
        // The file changes under the running broker (a disk error, another process): a
        // record's length field must be checked against the segment before it sizes a buffer.
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 1 << 20);
        let (p0, _) = log.append(b"first").unwrap();
        let (p1, _) = log.append(b"second").unwrap();
        let seg = seg_path(d.path(), p0.segment);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&0xFFFF_FFF0u32.to_le_bytes(), u64::from(p1.offset))
            .unwrap();
        assert!(matches!(log.read(p1), Err(StoreError::Corrupt(..))));
        assert!(matches!(
            log.read_batch(p1, 10, usize::MAX),
            Err(StoreError::Corrupt(..))
        ));
        assert_eq!(log.read(p0).unwrap(), b"first");
    }

    #[test]
    fn a_torn_ack_log_entry_is_cut_before_new_acks_are_appended() {
        // Found by the segment_recovery fuzz target: after an ack log's last entry was cut
        // short, new acks were appended behind the torn bytes and read back as other
        // offsets at the next start, so an acked record came back and an unacked one could
        // be dropped.
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 1 << 20);
        let pos: Vec<Position> = (0..3u8).map(|i| log.append(&[i; 5]).unwrap().0).collect();
        drop(log);
        let acks = ack_path(d.path(), pos[0].segment);
        std::fs::write(&acks, [0xAA, 0xBB, 0xCC]).unwrap();
        let (mut log, r) = open(d.path(), 1 << 20);
        assert_eq!(r, vec![vec![0u8; 5], vec![1; 5], vec![2; 5]]);
        assert_eq!(std::fs::read(&acks).unwrap(), b"", "the torn entry is cut");
        log.ack(pos[1]).unwrap();
        drop(log);
        let (_log, r) = open(d.path(), 1 << 20);
        assert_eq!(r, vec![vec![0u8; 5], vec![2; 5]]);
    }

    #[test]
    fn a_segment_with_the_last_number_is_refused_not_a_panic() {
        // Found by the segment_recovery fuzz target: the next segment number overflowed.
        for with_record in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let mut bytes = Vec::new();
            if with_record {
                record::encode(b"kept", &mut bytes);
            }
            std::fs::write(seg_path(d.path(), u32::MAX), &bytes).unwrap();
            let r = QueueLog::open(d.path(), 4096, SyncGroup::start(FsyncPolicy::Never), None);
            let e = r.err().expect("no segment number is left to append to");
            assert!(matches!(e, StoreError::SegmentNumbers(_)), "{e}");
        }
    }

    #[test]
    fn records_larger_than_a_read_chunk_and_reads_of_the_head_work() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 1 << 20);
        let big = vec![9u8; READ_CHUNK + 1000];
        log.append(b"small").unwrap();
        log.append(&big).unwrap();
        log.append(b"tail").unwrap();
        let (batch, next) = log.read_batch(log.first(), 10, usize::MAX).unwrap();
        let got: Vec<&[u8]> = batch.iter().map(|(_, p)| &p[..]).collect();
        assert_eq!(got, vec![&b"small"[..], &big[..], &b"tail"[..]]);
        assert_eq!(next, log.end());
        let (p, _) = log.append(b"more").unwrap();
        let (batch, _) = log.read_batch(next, 10, usize::MAX).unwrap();
        assert_eq!(batch, vec![(p, b"more".to_vec())]);
    }

    #[test]
    fn a_full_disk_refuses_the_append_and_the_log_recovers_when_space_returns() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 1 << 20);
        let (p1, _) = log.append(b"before").unwrap();
        // Writes to /dev/full fail with ENOSPC, as a full file system does.
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let full = SyncFile::new(full, "/dev/full".into(), log.health.clone());
        let real = std::mem::replace(&mut log.head.file, full);
        let e = log.append(b"lost").unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
        log.head.file = real;
        let (p2, _) = log.append(b"after").unwrap();
        assert_eq!(log.read(p1).unwrap(), b"before");
        assert_eq!(log.read(p2).unwrap(), b"after");
        drop(log);
        let (_log, r) = open(d.path(), 1 << 20);
        assert_eq!(r, vec![b"before".to_vec(), b"after".to_vec()]);
    }

    /// Records every sync it is asked for, then does it.
    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Vec<PathBuf>>);

    impl crate::sync::Syncer for Recorder {
        fn sync_file(&self, file: &File, path: &Path) -> std::io::Result<()> {
            self.0.lock().push(path.to_path_buf());
            file.sync_data()
        }
        fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
            self.0.lock().push(path.to_path_buf());
            File::open(path)?.sync_all()
        }
    }

    fn wait_synced(g: &SyncGroup, ticket: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while g.synced() < ticket {
            assert!(std::time::Instant::now() < deadline, "sync never came");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn new_directories_and_segments_and_removals_are_synced_at_the_directory_level() {
        let d = tempfile::tempdir().unwrap();
        let rec = Arc::new(Recorder::default());
        let g = SyncGroup::start_with(FsyncPolicy::Always, rec.clone());
        let dir = d.path().join("queues").join("q1");
        let (mut log, _) =
            QueueLog::open(&dir, 4096, g.clone(), Some(LogHealth::new("q1"))).unwrap();
        let (p1, t1) = log.append(&[1u8; 100]).unwrap();
        wait_synced(&g, t1);
        {
            let seen = rec.0.lock();
            for want in [d.path().to_path_buf(), d.path().join("queues"), dir.clone()] {
                assert!(
                    seen.contains(&want),
                    "{want:?} synced before the record counts: {seen:?}"
                );
            }
        }
        // Rolling over creates a segment: the directory is synced again with it.
        rec.0.lock().clear();
        let mut last = 0;
        let mut positions = vec![p1];
        while log.segment_count() < 2 {
            let (p, t) = log.append(&[2u8; 100]).unwrap();
            positions.push(p);
            last = t;
        }
        wait_synced(&g, last);
        assert!(
            rec.0.lock().contains(&dir),
            "the new segment's entry is synced"
        );
        // Deleting a fully acked segment changes the directory too.
        rec.0.lock().clear();
        for p in positions.iter().filter(|p| p.segment == 1) {
            log.ack(*p).unwrap();
        }
        g.reaper().wait_idle();
        assert!(rec.0.lock().contains(&dir), "the removal is synced");
        assert!(!seg_path(&dir, 1).exists());
        // Destroying the log removes its directory and syncs its parent.
        rec.0.lock().clear();
        log.destroy();
        g.reaper().wait_idle();
        assert!(!dir.exists());
        assert!(rec.0.lock().contains(&d.path().join("queues")));
        g.stop();
    }

    #[test]
    fn an_ack_log_left_without_its_segment_never_settles_a_later_segment_of_that_number() {
        // The reaper unlinks a settled segment, then its ack log: a crash between the two
        // leaves `N.ack` alone. A later segment N (numbering starts again at 1 once no
        // segment is left) must not inherit it: with a purge's whole-segment entry in it,
        // every record written there would be lost at the next start.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(ack_path(d.path(), 1), SETTLED_ALL.to_le_bytes()).unwrap();
        let (mut log, r) = open(d.path(), 1 << 20);
        assert!(r.is_empty());
        for i in 0..3u8 {
            log.append(&[i; 20]).unwrap();
        }
        drop(log);
        let (_, r) = open(d.path(), 1 << 20);
        assert_eq!(r, (0..3u8).map(|i| vec![i; 20]).collect::<Vec<_>>());
    }
}
