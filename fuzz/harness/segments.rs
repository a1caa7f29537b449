//! `segment_recovery`: recovering a durable queue from whatever its segment file and ack log
//! hold. Two layers see the same files: `ferrymq-store`'s `QueueLog` (open, recover, read
//! every record back in batches and one by one, append, reopen) and the broker's queue
//! recovery (`Broker::open` on a data directory holding a durable queue with those files,
//! then every message taken with `basic.get`). Errors are fine; panics, hangs and
//! allocations sized by a length field are not (see `alloc_guard`).
//!
//! Input: `[selector u8][ack log length u8][ack log][segment file]`. The selector picks the
//! segment number, the segment size and the read batch size.

use ferrymq_core::{Broker, BrokerConfig, FsyncPolicy, PersistConfig, Persistence};
use ferrymq_store::{QueueLog, SyncGroup};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// A data directory's definitions holding one durable queue, `q` in vhost `/`.
const DEFINITIONS: &str = r#"{"vhosts": [{"name": "/"}],
 "users": [{"name": "guest", "password": "guest", "tags": ["administrator"]}],
 "permissions": [{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
 "queues": [{"name": "q", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}]}"#;

/// The files of one input.
struct Files<'a> {
    segment_id: u32,
    segment: &'a [u8],
    acks: &'a [u8],
    segment_size: u64,
    batch: usize,
}

fn split(data: &[u8]) -> Option<Files<'_>> {
    let (&sel, rest) = data.split_first()?;
    let (&ack_len, rest) = rest.split_first()?;
    let (acks, segment) = rest.split_at(rest.len().min(usize::from(ack_len)));
    Some(Files {
        // The last ids test running out of segment numbers.
        segment_id: match sel & 3 {
            0 | 1 => 1,
            2 => 4_000_000_000,
            _ => u32::MAX,
        },
        segment,
        acks,
        segment_size: if sel & 4 == 0 { 4096 } else { 1 << 20 },
        batch: usize::from(sel >> 3) + 1,
    })
}

fn write_files(dir: &Path, f: &Files<'_>) {
    std::fs::create_dir_all(dir).expect("queue dir");
    let name = format!("{:010}", f.segment_id);
    std::fs::write(dir.join(format!("{name}.seg")), f.segment).expect("write segment");
    if !f.acks.is_empty() {
        std::fs::write(dir.join(format!("{name}.ack")), f.acks).expect("write ack log");
    }
}

/// Group commit without an fsync thread, shared by every input.
fn sync() -> Arc<SyncGroup> {
    static SYNC: OnceLock<Arc<SyncGroup>> = OnceLock::new();
    SYNC.get_or_init(|| SyncGroup::start(FsyncPolicy::Never))
        .clone()
}

/// Recovers the files at both layers.
pub fn segment_recovery(data: &[u8]) {
    let Some(files) = split(data) else { return };
    queue_log(&files);
    broker(&files);
}

/// Every record `QueueLog` recovered, read in batches of `batch`.
fn read_all(log: &mut QueueLog, batch: usize) -> Vec<(ferrymq_store::Position, Vec<u8>)> {
    let (mut all, mut at) = (Vec::new(), log.first());
    loop {
        let (got, next) = log
            .read_batch(at, batch, usize::MAX)
            .expect("a recovered record cannot be read back");
        let done = got.len() < batch;
        all.extend(got);
        at = next;
        if done {
            return all;
        }
    }
}

fn queue_log(f: &Files<'_>) {
    let dir = tempfile::tempdir().expect("temp dir");
    write_files(dir.path(), f);
    let Ok((mut log, n)) = QueueLog::open(dir.path(), f.segment_size, sync(), None) else {
        return;
    };
    let records = read_all(&mut log, f.batch);
    assert_eq!(
        records.len() as u64,
        n,
        "recovery counted a different number of records"
    );
    for (pos, payload) in &records {
        let one = log
            .read(*pos)
            .expect("a recovered record reads back by position");
        assert_eq!(&one, payload);
    }
    // The recovered log keeps working, and recovering it again finds the same records.
    let (pos, _) = log.append(b"after").expect("append after recovery");
    assert_eq!(log.read(pos).expect("read the append"), b"after");
    drop(log);
    let (mut log, n2) = QueueLog::open(dir.path(), f.segment_size, sync(), None)
        .expect("a log recovered once opens again");
    let again = read_all(&mut log, f.batch);
    assert_eq!(n2, n + 1);
    let payloads = |r: &[(ferrymq_store::Position, Vec<u8>)]| -> Vec<Vec<u8>> {
        r.iter().map(|(_, p)| p.clone()).collect()
    };
    let mut want = payloads(&records);
    want.push(b"after".to_vec());
    assert_eq!(
        payloads(&again),
        want,
        "a second recovery found other records"
    );
}

fn broker(f: &Files<'_>) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("definitions.json"), DEFINITIONS).expect("definitions");
    let config = PersistConfig {
        fsync: FsyncPolicy::Never,
        segment_size: f.segment_size,
        queue_ram_budget: 4096,
        ..PersistConfig::new(dir.path())
    };
    let persist = Persistence::open(config).expect("open the data directory");
    write_files(&persist.queue_dir("/", "q", None), f);
    let Ok(broker) = Broker::open(BrokerConfig::default(), persist.clone()) else {
        // The data directory's sync and removal threads run until stopped: without this,
        // every refused directory left a thread behind (30,000 after 500,000 inputs).
        persist.stop();
        return;
    };
    let queue = broker
        .vhost("/")
        .and_then(|v| v.queue("q", 0).ok())
        .expect("the recovered broker has queue q");
    let ready = queue.counts().messages;
    let mut taken = 0;
    while queue.get(false).is_some() {
        taken += 1;
        assert!(
            taken <= ready,
            "basic.get returned more messages than were recovered"
        );
    }
    persist.stop();
}
