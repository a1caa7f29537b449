//! One durable queue's messages on disk: append-only segment files of CRC-framed records, and
//! beside each segment an ack log of the record offsets that were settled.
//!
//! ```text
//! <dir>/0000000001.seg   records: [len u32 LE][crc32c u32 LE][payload]...
//! <dir>/0000000001.ack   offsets of settled records in that segment: [u32 LE]...
//! ```
//!
//! Recovery is records minus acks. A segment whose every record is acked (and that is no
//! longer written to) is deleted with its ack log, so disk use falls as consumers catch up.
//! Acks are not fsynced: an ack lost in a crash means a redelivery, never a loss.

use crate::record::{self, Scan, HEADER_LEN};
use crate::sync::SyncGroup;
use crate::StoreError;
use std::collections::{BTreeMap, HashSet};
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

struct Segment {
    records: u32,
    acked: u32,
    ack_log: Option<File>,
    /// Valid bytes (for the head segment, see [`Head::len`]).
    len: u64,
    /// Offsets found acked when the log was opened: reading skips them.
    skip: HashSet<u32>,
}

impl Segment {
    fn new() -> Self {
        Segment {
            records: 0,
            acked: 0,
            ack_log: None,
            len: 0,
            skip: HashSet::new(),
        }
    }
}

/// The segment being appended to.
struct Head {
    id: u32,
    file: Arc<File>,
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
    scratch: Vec<u8>,
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
    pub fn open(
        dir: &Path,
        segment_size: u64,
        sync: Arc<SyncGroup>,
    ) -> Result<(QueueLog, u64), StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut ids: Vec<u32> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut ready = 0u64;
        for &id in &ids {
            let seg = recover_segment(dir, id)?;
            if seg.records == seg.acked {
                remove_segment(dir, id)?;
                continue;
            }
            ready += u64::from(seg.records - seg.acked);
            segments.insert(id, seg);
        }
        // Always append to a fresh segment: a recovered one may end where a record was cut.
        let next = match ids.last() {
            None => 1,
            Some(&l) => next_id(dir, l)?,
        };
        let head = new_head(dir, next)?;
        segments.insert(next, Segment::new());
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
            scratch: Vec::new(),
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
    /// end), skipping records that were already acked when the log was opened. Returns them
    /// with the position to continue from; fewer than `max` means the end of the log.
    #[allow(clippy::type_complexity)]
    pub fn read_batch(
        &mut self,
        mut from: Position,
        max: usize,
    ) -> Result<(Vec<(Position, Vec<u8>)>, Position), StoreError> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while out.len() < max {
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
            while out.len() < max {
                match record::scan(&buf, off) {
                    Scan::Record(payload, next) => {
                        let at = from.offset + off as u32;
                        let acked = self.segments.get(&id).is_some_and(|s| s.skip.contains(&at));
                        if !acked {
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

    fn file(&mut self, id: u32) -> Result<&File, StoreError> {
        if id == self.head.id {
            return Ok(&self.head.file);
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
    /// on disk. On a failed write (disk full) the segment is cut back so no torn record stays.
    pub fn append(&mut self, payload: &[u8]) -> Result<(Position, u64), StoreError> {
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
        if let Err(e) = self.head.file.write_all_at(&self.scratch, self.head.len) {
            let _ = self.head.file.set_len(self.head.len);
            return Err(io(&path)(e));
        }
        self.head.len += need;
        if let Some(s) = self.segments.get_mut(&self.head.id) {
            s.records += 1;
        }
        Ok((pos, self.sync.written(&self.head.file)))
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

    /// Records that the record at `pos` is settled. Each position must be acked once.
    pub fn ack(&mut self, pos: Position) -> Result<(), StoreError> {
        let Some(seg) = self.segments.get_mut(&pos.segment) else {
            return Ok(());
        };
        if seg.ack_log.is_none() {
            let path = ack_path(&self.dir, pos.segment);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            seg.ack_log = Some(f);
        }
        if let Some(f) = &mut seg.ack_log {
            let path = ack_path(&self.dir, pos.segment);
            f.write_all(&pos.offset.to_le_bytes()).map_err(io(&path))?;
        }
        seg.acked += 1;
        if seg.acked >= seg.records && pos.segment != self.head.id {
            self.segments.remove(&pos.segment);
            self.readers.remove(&pos.segment);
            remove_segment(&self.dir, pos.segment)?;
        }
        Ok(())
    }

    /// Number of segment files currently kept.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Deletes the whole log (the queue was deleted).
    pub fn destroy(self) -> Result<(), StoreError> {
        std::fs::remove_dir_all(&self.dir).map_err(io(&self.dir))
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        let id = next_id(&self.dir, self.head.id)?;
        if let Some(s) = self.segments.get_mut(&self.head.id) {
            s.len = self.head.len;
        }
        self.head = new_head(&self.dir, id)?;
        self.segments.insert(id, Segment::new());
        // The previous head may already be fully acked.
        let prev = id - 1;
        if let Some(s) = self.segments.get(&prev) {
            if s.acked >= s.records {
                self.segments.remove(&prev);
                self.readers.remove(&prev);
                remove_segment(&self.dir, prev)?;
            }
        }
        Ok(())
    }
}

/// The number of the segment after `id`. Only a damaged or hostile directory gets to
/// `u32::MAX` (at one segment a second that is 136 years of appends).
fn next_id(dir: &Path, id: u32) -> Result<u32, StoreError> {
    id.checked_add(1)
        .ok_or_else(|| StoreError::SegmentNumbers(dir.display().to_string()))
}

fn new_head(dir: &Path, id: u32) -> Result<Head, StoreError> {
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
        file: Arc::new(file),
        len: 0,
    })
}

fn remove_segment(dir: &Path, id: u32) -> Result<(), StoreError> {
    for p in [seg_path(dir, id), ack_path(dir, id)] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p)(e)),
        }
    }
    Ok(())
}

fn recover_segment(dir: &Path, id: u32) -> Result<Segment, StoreError> {
    let path = seg_path(dir, id);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let acked: HashSet<u32> = match std::fs::read(ack_path(dir, id)) {
        Ok(b) => b
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
        Err(e) => return Err(io(&ack_path(dir, id))(e)),
    };
    let mut seg = Segment::new();
    let mut off = 0usize;
    loop {
        match record::scan(&bytes, off) {
            Scan::Record(_, next) => {
                seg.records += 1;
                if acked.contains(&(off as u32)) {
                    seg.acked += 1;
                    seg.skip.insert(off as u32);
                }
                off = next;
            }
            Scan::End => break,
            damage @ (Scan::Torn | Scan::Corrupt) => {
                let what = if damage == Scan::Torn {
                    "torn"
                } else {
                    "corrupt (CRC mismatch)"
                };
                tracing::warn!(
                    "{}: {what} record at offset {off}; cutting the segment there ({} bytes \
                     dropped, {} records before it kept)",
                    path.display(),
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
        let (mut log, n) = QueueLog::open(dir, seg, SyncGroup::start(FsyncPolicy::Never)).unwrap();
        let (mut all, mut at) = (Vec::new(), log.first());
        loop {
            // Small batches exercise continuing across chunk and segment ends.
            let (batch, next) = log.read_batch(at, 7).unwrap();
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
            log.read_batch(p1, 10),
            Err(StoreError::Corrupt(..))
        ));
        assert_eq!(log.read(p0).unwrap(), b"first");
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
            let r = QueueLog::open(d.path(), 4096, SyncGroup::start(FsyncPolicy::Never));
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
        let (batch, next) = log.read_batch(log.first(), 10).unwrap();
        let got: Vec<&[u8]> = batch.iter().map(|(_, p)| &p[..]).collect();
        assert_eq!(got, vec![&b"small"[..], &big[..], &b"tail"[..]]);
        assert_eq!(next, log.end());
        let (p, _) = log.append(b"more").unwrap();
        let (batch, _) = log.read_batch(next, 10).unwrap();
        assert_eq!(batch, vec![(p, b"more".to_vec())]);
    }

    #[test]
    fn a_full_disk_refuses_the_append_and_the_log_recovers_when_space_returns() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, _) = open(d.path(), 1 << 20);
        let (p1, _) = log.append(b"before").unwrap();
        // Writes to /dev/full fail with ENOSPC, as a full file system does.
        let real = std::mem::replace(
            &mut log.head.file,
            Arc::new(OpenOptions::new().write(true).open("/dev/full").unwrap()),
        );
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
}
