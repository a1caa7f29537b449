//! Durability through the real binary: what survives a clean restart and a kill -9, and a
//! crash test where the broker is killed at random moments under load, and the disk alarm.

mod common;

use common::{bind, get, passive_exchange, passive_queue, ServerProcess, WAIT};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn open(s: &ServerProcess) -> (Connection, Channel) {
    let c = Connection::connect(&s.uri(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = c.create_channel().await.expect("channel");
    (c, ch)
}

/// Declares a durable queue.
async fn declare_durable(ch: &Channel, name: &str, args: FieldTable) {
    let dq = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name, dq, args).await.unwrap();
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = ch
        .basic_publish(exchange, key, BasicPublishOptions::default(), body, props)
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "confirmed with basic.ack");
}

/// Declares the topology of the restart test and publishes into it.
async fn populate(s: &ServerProcess) {
    let (_c, ch) = open(s).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare("dx", ExchangeKind::Topic, durable, FieldTable::default())
        .await
        .unwrap();
    ch.exchange_declare(
        "tx",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_durable(&ch, "dq", FieldTable::default()).await;
    ch.queue_declare("tq", QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    bind(&ch, "dq", "dx", "a.#").await.unwrap();
    bind(&ch, "tq", "dx", "a.#").await.unwrap();
    for i in 0..3 {
        publish_confirmed(&ch, "dx", "a.b", format!("p{i}").as_bytes(), persistent()).await;
    }
    publish_confirmed(&ch, "dx", "a.b", b"transient", BasicProperties::default()).await;
    publish_confirmed(&ch, "", "dq", b"p3", persistent()).await;
}

/// Checks what a restarted broker kept: durable things and persistent messages only.
async fn check_survivors(s: &ServerProcess) {
    let (_c, ch) = open(s).await;
    passive_exchange(&ch, "dx")
        .await
        .expect("durable exchange survives");
    passive_queue(&ch, "dq")
        .await
        .expect("durable queue survives");
    let mut bodies = Vec::new();
    while let Some(m) = get(&ch, "dq").await {
        bodies.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(
        bodies,
        ["p0", "p1", "p2", "p3"],
        "persistent messages, in order"
    );
    // The binding came back too.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, "dx", "a.c", b"after", persistent()).await;
    let m = get(&ch, "dq")
        .await
        .expect("routed through the recovered binding");
    assert_eq!(&m.delivery.data[..], b"after");
    let (_c2, ch2) = open(s).await;
    let e = passive_exchange(&ch2, "tx")
        .await
        .expect_err("transient exchange is gone");
    assert_eq!(common::code(&e), Some(404));
    let (_c3, ch3) = open(s).await;
    let e = passive_queue(&ch3, "tq")
        .await
        .expect_err("transient queue is gone");
    assert_eq!(common::code(&e), Some(404));
}

#[tokio::test]
async fn durable_definitions_and_persistent_messages_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    populate(&s).await;
    s.sigterm();
    assert!(s.wait().success());
    let s = ServerProcess::start(dir.path(), &[]);
    check_survivors(&s).await;
}

#[tokio::test]
async fn durable_definitions_and_persistent_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    populate(&s).await;
    s.kill9();
    let s = ServerProcess::start(dir.path(), &[]);
    check_survivors(&s).await;
}

#[tokio::test]
async fn acked_messages_stay_acked_and_disk_use_falls_after_a_backlog_drains() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments so the backlog spans many files.
    let s = ServerProcess::start(dir.path(), &["--segment-size", "65536"]);
    let (_c, ch) = open(&s).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_durable(&ch, "backlog", FieldTable::default()).await;
    let body = vec![b'x'; 1000];
    let mut pending = Vec::new();
    for _ in 0..2000 {
        pending.push(
            ch.basic_publish(
                "",
                "backlog",
                BasicPublishOptions::default(),
                &body,
                persistent(),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(p.await.unwrap().is_ack());
    }
    let used = dir_size(&dir.path().join("queues"));
    assert!(used > 2_000_000, "the backlog is on disk ({used} bytes)");
    for _ in 0..1500 {
        let m = get(&ch, "backlog").await.expect("a message");
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    // A round trip after the acks: the broker has processed them before it is killed.
    let q = passive_queue(&ch, "backlog").await.unwrap();
    assert_eq!(q.message_count(), 500);
    s.kill9();
    let s = ServerProcess::start(dir.path(), &["--segment-size", "65536"]);
    let (_c, ch) = open(&s).await;
    let q = passive_queue(&ch, "backlog").await.unwrap();
    assert_eq!(q.message_count(), 500, "acked messages do not come back");
    while let Some(m) = get(&ch, "backlog").await {
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    // Segments are removed in the background once every record in them is acked.
    let queues = dir.path().join("queues");
    common::eventually(
        || dir_size(&queues) < 200_000,
        "segments of acked messages are deleted",
    )
    .await;
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}

/// What the clients of the crash test saw.
#[derive(Default)]
struct Seen {
    confirmed: BTreeSet<u64>,
    /// Every delivery: message id → redelivered flags, in order.
    deliveries: HashMap<u64, Vec<bool>>,
}

async fn publisher(uri: String, next_id: Arc<Mutex<u64>>, seen: Arc<Mutex<Seen>>) {
    let Ok(c) = Connection::connect(&uri, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(ch) = c.create_channel().await else {
        return;
    };
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return;
    }
    loop {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let id = {
                let mut n = next_id.lock().unwrap();
                *n += 1;
                *n
            };
            let Ok(pending) = ch
                .basic_publish(
                    "",
                    "crash",
                    BasicPublishOptions::default(),
                    &id.to_be_bytes(),
                    persistent(),
                )
                .await
            else {
                return;
            };
            batch.push((id, pending));
        }
        for (id, pending) in batch {
            match pending.await {
                Ok(c) if c.is_ack() => {
                    seen.lock().unwrap().confirmed.insert(id);
                }
                _ => return,
            }
        }
    }
}

async fn consumer(uri: String, seen: Arc<Mutex<Seen>>) {
    let Ok(c) = Connection::connect(&uri, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(ch) = c.create_channel().await else {
        return;
    };
    let _ = ch.basic_qos(100, BasicQosOptions::default()).await;
    let Ok(mut deliveries) = ch
        .basic_consume(
            "crash",
            "c",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    while let Some(Ok(d)) = deliveries.next().await {
        let Ok(id) = <[u8; 8]>::try_from(&d.data[..]).map(u64::from_be_bytes) else {
            continue;
        };
        seen.lock()
            .unwrap()
            .deliveries
            .entry(id)
            .or_default()
            .push(d.redelivered);
        if d.ack(BasicAckOptions::default()).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_repeated_kill_9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let next_id = Arc::new(Mutex::new(0u64));
    for round in 0..4 {
        let s = ServerProcess::start(dir.path(), &[]);
        if round == 0 {
            let (_c, ch) = open(&s).await;
            declare_durable(&ch, "crash", FieldTable::default()).await;
        }
        let mut tasks = Vec::new();
        for _ in 0..2 {
            tasks.push(tokio::spawn(publisher(
                s.uri(),
                next_id.clone(),
                seen.clone(),
            )));
        }
        tasks.push(tokio::spawn(consumer(s.uri(), seen.clone())));
        let pause = rand::thread_rng().gen_range(300..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        s.kill9();
        for t in tasks {
            let _ = tokio::time::timeout(WAIT, t).await;
        }
    }
    // A last, clean run drains what is left.
    let s = ServerProcess::start(dir.path(), &[]);
    let drain = tokio::spawn(consumer(s.uri(), seen.clone()));
    let (_c, ch) = open(&s).await;
    common::eventually(
        || {
            let st = seen.lock().unwrap();
            st.confirmed.iter().all(|id| st.deliveries.contains_key(id))
        },
        "every confirmed message delivered",
    )
    .await;
    let _ = ch;
    drain.abort();
    let st = seen.lock().unwrap();
    assert!(
        st.confirmed.len() > 100,
        "the test published under load ({} confirmed)",
        st.confirmed.len()
    );
    for (id, flags) in &st.deliveries {
        for f in flags.iter().skip(1) {
            assert!(*f, "message {id} seen again without redelivered: {flags:?}");
        }
    }
}

#[tokio::test]
async fn low_disk_blocks_publishers_until_space_returns() {
    // A limit no disk can meet raises the disk alarm at once.
    let b = common::start_with(|c| c.disk_free_limit = u64::MAX / 2).await;
    let (pc, ch) = common::channel(&b).await;
    common::queue(&ch, "q").await;
    // Only connections that publish are blocked, as in RabbitMQ.
    let _ = ch
        .basic_publish(
            "",
            "q",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    common::eventually(|| pc.status().blocked(), "connection.blocked for low disk").await;
    let (_c2, consumer) = common::channel(&b).await;
    assert!(
        passive_queue(&consumer, "q").await.is_ok(),
        "other connections keep working"
    );
    let running = b.running.as_ref().unwrap();
    running.alarms.set_limits(ferrymq::alarms::AlarmLimits {
        memory_high_watermark: 0.4,
        disk_free_limit: 0,
    });
    common::eventually(
        || !pc.status().blocked(),
        "connection.unblocked once space returns",
    )
    .await;
    // Publishing works again.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, "", "q", b"y", BasicProperties::default()).await;
    b.stop().await;
}

/// The newest segment file of the only durable queue under `data`.
fn last_segment(data: &Path) -> std::path::PathBuf {
    let qdir = std::fs::read_dir(data.join("queues"))
        .unwrap()
        .flatten()
        .next()
        .expect("one queue directory")
        .path();
    let mut segs: Vec<_> = std::fs::read_dir(qdir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "seg") && std::fs::metadata(p).unwrap().len() > 0
        })
        .collect();
    segs.sort();
    segs.pop().expect("a non-empty segment")
}

async fn ten_persistent_then_stop(dir: &Path) {
    let s = ServerProcess::start(dir, &[]);
    let (_c, ch) = open(&s).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_durable(&ch, "c", FieldTable::default()).await;
    for i in 0..10 {
        publish_confirmed(&ch, "", "c", format!("m{i}").as_bytes(), persistent()).await;
    }
    s.sigterm();
    assert!(s.wait().success());
}

async fn bodies_after_restart(dir: &Path) -> Vec<String> {
    let s = ServerProcess::start(dir, &[]);
    let (_c, ch) = open(&s).await;
    let mut out = Vec::new();
    while let Some(m) = get(&ch, "c").await {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    out
}

#[tokio::test]
async fn a_torn_or_bit_flipped_segment_tail_is_cut_and_the_rest_kept() {
    let nine: Vec<String> = (0..9).map(|i| format!("m{i}")).collect();
    // Torn: the last record lost its final bytes, as when the process dies mid-write.
    let dir = tempfile::tempdir().unwrap();
    ten_persistent_then_stop(dir.path()).await;
    let seg = last_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    assert_eq!(bodies_after_restart(dir.path()).await, nine);

    // Corrupt: a flipped bit in the last record's payload fails its CRC.
    let dir = tempfile::tempdir().unwrap();
    ten_persistent_then_stop(dir.path()).await;
    let seg = last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    assert_eq!(bodies_after_restart(dir.path()).await, nine);
}

#[tokio::test]
async fn under_memory_pressure_transient_messages_are_paged_to_disk_and_come_back_in_order() {
    let b = common::start().await;
    let (_c, ch) = common::channel(&b).await;
    common::queue(&ch, "t").await;
    for i in 0..100 {
        common::publish(&ch, "", "t", format!("a{i}").as_bytes()).await;
    }
    // What the memory monitor does above half the watermark.
    let persist = b.broker().persistence().expect("data dir").clone();
    persist.set_paging(true);
    for i in 0..3000 {
        common::publish(&ch, "", "t", format!("b{i}").as_bytes()).await;
    }
    persist.set_paging(false);
    common::publish(&ch, "", "t", b"c").await;
    let q = passive_queue(&ch, "t").await.unwrap();
    assert_eq!(q.message_count(), 3101);
    let paged = dir_size(&b.data_dir().join("transient"));
    assert!(paged > 3000 * 16, "the tail went to disk ({paged} bytes)");
    let mut consumer = common::consume(&ch, "t", "c").await;
    let mut want: Vec<String> = (0..100).map(|i| format!("a{i}")).collect();
    want.extend((0..3000).map(|i| format!("b{i}")));
    want.push("c".into());
    for w in want {
        let d = common::next(&mut consumer).await;
        assert_eq!(String::from_utf8_lossy(&d.data), w);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    b.stop().await;
}

#[tokio::test]
async fn a_committed_transaction_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    let (_c, ch) = open(&s).await;
    declare_durable(&ch, "txq", FieldTable::default()).await;
    ch.tx_select().await.unwrap();
    for body in [&b"one"[..], b"two"] {
        ch.basic_publish(
            "",
            "txq",
            BasicPublishOptions::default(),
            body,
            persistent(),
        )
        .await
        .unwrap();
    }
    ch.tx_commit().await.expect("commit-ok");
    s.kill9();
    let s = ServerProcess::start(dir.path(), &[]);
    let (_c, ch) = open(&s).await;
    let mut got = Vec::new();
    while let Some(m) = get(&ch, "txq").await {
        got.push(m.delivery.data.clone());
    }
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
}

#[tokio::test]
async fn priority_queues_and_delayed_messages_survive_kill_9() {
    use common::{int, s as lstr, table};
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    let (_c, ch) = open(&s).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_durable(&ch, "pq", table(&[("x-max-priority", int(5))])).await;
    for (body, p) in [("low-1", 0), ("high", 5), ("low-2", 0), ("mid", 3)] {
        publish_confirmed(
            &ch,
            "",
            "pq",
            body.as_bytes(),
            persistent().with_priority(p),
        )
        .await;
    }
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "later",
        ExchangeKind::Custom("x-delayed-message".into()),
        durable,
        table(&[("x-delayed-type", lstr("fanout"))]),
    )
    .await
    .unwrap();
    declare_durable(&ch, "inbox", FieldTable::default()).await;
    bind(&ch, "inbox", "later", "").await.unwrap();
    let delayed = persistent().with_headers(table(&[("x-delay", int(1500))]));
    publish_confirmed(&ch, "later", "", b"wake me", delayed).await;
    s.kill9();
    let s = ServerProcess::start(dir.path(), &[]);
    let (_c, ch) = open(&s).await;
    let mut got = Vec::new();
    while let Some(m) = get(&ch, "pq").await {
        got.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    assert_eq!(got, ["high", "mid", "low-1", "low-2"]);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(m) = get(&ch, "inbox").await {
            assert_eq!(m.delivery.data, b"wake me");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the delayed message never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes a persistent message in confirm mode and returns whether it was acked (true)
/// or nacked (false).
async fn publish_acked(ch: &Channel, key: &str, body: &[u8]) -> bool {
    ch.basic_publish("", key, BasicPublishOptions::default(), body, persistent())
        .await
        .expect("publish")
        .await
        .expect("confirm")
        .is_ack()
}

/// The only directory under `<data>/queues`.
fn only_queue_dir(data: &Path) -> String {
    let dirs: Vec<String> = std::fs::read_dir(data.join("queues"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs.len(), 1, "one queue directory: {dirs:?}");
    dirs[0].clone()
}

#[tokio::test]
async fn after_a_failed_fsync_a_queue_nacks_what_it_holds_unsynced_and_refuses_publishes() {
    let syncer = Arc::new(ferrymq_store::FailingSync::default());
    let b = common::start_with(|c| c.syncer = ferrymq_core::SyncerRef(syncer.clone())).await;
    let (_c, ch) = common::channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_durable(&ch, "doomed", FieldTable::default()).await;
    assert!(publish_acked(&ch, "doomed", b"before").await);
    let doomed_dir = only_queue_dir(b.data_dir());
    declare_durable(&ch, "healthy", FieldTable::default()).await;
    assert!(publish_acked(&ch, "healthy", b"h1").await);

    // One failed fsync of the doomed queue's segment. A retry would succeed, but the kernel
    // may have dropped the dirty pages meanwhile ("fsyncgate"): the data must never be
    // confirmed.
    syncer.fail(&doomed_dir, 1);
    assert!(
        !publish_acked(&ch, "doomed", b"unsynced").await,
        "a write whose fsync failed is nacked"
    );
    assert!(
        publish_acked(&ch, "healthy", b"h2").await,
        "other queues keep confirming"
    );
    assert!(
        !publish_acked(&ch, "doomed", b"after").await,
        "the failed queue refuses publishes"
    );
    assert!(publish_acked(&ch, "healthy", b"h3").await);
    // The failed queue still answers, and so does the channel.
    let q = passive_queue(&ch, "doomed")
        .await
        .expect("the queue is still there");
    assert!(q.message_count() >= 1);
    b.stop().await;
}

#[tokio::test]
async fn a_transaction_whose_messages_a_failed_fsync_lost_is_not_committed() {
    let syncer = Arc::new(ferrymq_store::FailingSync::default());
    let b = common::start_with(|c| c.syncer = ferrymq_core::SyncerRef(syncer.clone())).await;
    let (c, ch) = common::channel(&b).await;
    declare_durable(&ch, "txq", FieldTable::default()).await;
    ch.tx_select().await.unwrap();
    ch.basic_publish(
        "",
        "txq",
        BasicPublishOptions::default(),
        b"a",
        persistent(),
    )
    .await
    .unwrap();
    ch.tx_commit().await.expect("a healthy commit");
    syncer.fail(&only_queue_dir(b.data_dir()), 1);
    ch.basic_publish(
        "",
        "txq",
        BasicPublishOptions::default(),
        b"b",
        persistent(),
    )
    .await
    .unwrap();
    let e = ch
        .tx_commit()
        .await
        .expect_err("no commit-ok for lost messages");
    assert_eq!(common::code(&e), Some(541), "{e}");
    assert!(common::text(&e).contains("fsync"), "{e}");
    common::eventually(|| !c.status().connected(), "the connection closes").await;
    b.stop().await;
}

#[tokio::test]
async fn a_delayed_exchange_whose_fsync_failed_nacks_and_refuses() {
    use common::{int, s as lstr, table};
    let syncer = Arc::new(ferrymq_store::FailingSync::default());
    let b = common::start_with(|c| c.syncer = ferrymq_core::SyncerRef(syncer.clone())).await;
    let (_c, ch) = common::channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "later",
        ExchangeKind::Custom("x-delayed-message".into()),
        durable,
        table(&[("x-delayed-type", lstr("fanout"))]),
    )
    .await
    .unwrap();
    let delayed = || persistent().with_headers(table(&[("x-delay", int(60_000))]));
    let publish = |body: &'static [u8]| {
        let ch = ch.clone();
        let props = delayed();
        async move {
            ch.basic_publish("later", "", BasicPublishOptions::default(), body, props)
                .await
                .unwrap()
                .await
                .unwrap()
                .is_ack()
        }
    };
    assert!(publish(b"first").await);
    syncer.fail("delayed", 1);
    assert!(!publish(b"second").await, "nacked: its fsync failed");
    assert!(!publish(b"third").await, "the failed log takes no more");
    b.stop().await;
}

/// (offset, total size) of every record of a segment, walking the length prefixes.
fn record_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize + 8;
        out.push((off, len));
        off += len;
    }
    out
}

#[tokio::test]
async fn a_corrupt_record_mid_segment_loses_only_that_message() {
    let dir = tempfile::tempdir().unwrap();
    ten_persistent_then_stop(dir.path()).await;
    let seg = last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let spans = record_spans(&bytes);
    assert_eq!(spans.len(), 10);
    // A flipped bit in the last byte of message m4's record (its body).
    let (at, len) = spans[4];
    bytes[at + len - 1] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let mut want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    want.remove(4);
    assert_eq!(bodies_after_restart(dir.path()).await, want);
}

/// Polls a queue's ready count until `want`, through passive declares.
async fn wait_count(ch: &Channel, queue: &str, want: u32, what: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let n = passive_queue(ch, queue).await.unwrap().message_count();
        if n == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {queue} holds {n}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn recovered_messages_keep_their_ttl_and_expire_after_a_restart_without_a_consumer() {
    use common::{int, s as lstr, table};
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    let (_c, ch) = open(&s).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_durable(&ch, "dead", FieldTable::default()).await;
    let dlx = [
        ("x-dead-letter-exchange", lstr("")),
        ("x-dead-letter-routing-key", lstr("dead")),
    ];
    // Queue TTL: every message of "ttl" expires 2 s after it was published.
    let mut args = dlx.to_vec();
    args.push(("x-message-ttl", int(2000)));
    declare_durable(&ch, "ttl", table(&args)).await;
    // Per-message TTL: one short, one an hour.
    declare_durable(&ch, "per-msg", table(&dlx)).await;
    for i in 0..3 {
        publish_confirmed(&ch, "", "ttl", format!("q{i}").as_bytes(), persistent()).await;
    }
    let short = persistent().with_expiration("2000".into());
    let long = persistent().with_expiration("3600000".into());
    publish_confirmed(&ch, "", "per-msg", b"long", long).await;
    publish_confirmed(&ch, "", "per-msg", b"short", short).await;
    s.kill9();

    let s = ServerProcess::start(dir.path(), &[]);
    let (_c, ch) = open(&s).await;
    // Nobody consumes: the deadlines alone take the messages out, into the DLX target.
    wait_count(&ch, "dead", 4, "expired messages dead-lettered").await;
    wait_count(&ch, "ttl", 0, "queue TTL honoured after restart").await;
    wait_count(&ch, "per-msg", 1, "the short one expired, not the long one").await;
    let m = get(&ch, "per-msg").await.expect("the long-lived message");
    assert_eq!(m.delivery.data, b"long");
    let mut dead = Vec::new();
    while let Some(m) = get(&ch, "dead").await {
        dead.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    dead.sort();
    assert_eq!(dead, ["q0", "q1", "q2", "short"]);
}

#[tokio::test]
async fn messages_paged_to_disk_expire_on_time_not_when_they_reach_the_head() {
    use common::{s as lstr, table};
    // A small RAM budget: past it, every queue's messages live only on disk.
    let b = common::start_with(|c| c.queue_ram_budget = 10_000).await;
    let (_c, ch) = common::channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    common::queue(&ch, "dead").await;
    let dlx = [
        ("x-dead-letter-exchange", lstr("")),
        ("x-dead-letter-routing-key", lstr("dead")),
    ];
    ch.queue_declare("deep", QueueDeclareOptions::default(), table(&dlx))
        .await
        .unwrap();
    // The head has no TTL and nobody consumes, so expired messages behind it never reach
    // the head: only their deadline can take them out.
    publish_confirmed(&ch, "", "deep", b"head", BasicProperties::default()).await;
    let body = vec![b'x'; 1000];
    let mut pending = Vec::new();
    for _ in 0..250 {
        let props = BasicProperties::default().with_expiration("300".into());
        let p = ch
            .basic_publish("", "deep", BasicPublishOptions::default(), &body, props)
            .await
            .unwrap();
        pending.push(p);
    }
    for p in pending {
        assert!(p.await.unwrap().is_ack());
    }
    publish_confirmed(&ch, "", "deep", b"tail", BasicProperties::default()).await;
    let paged = dir_size(&b.data_dir().join("transient"));
    assert!(paged > 200_000, "most of them went to disk ({paged} bytes)");
    wait_count(
        &ch,
        "dead",
        250,
        "every message dead-lettered on time, paged ones too",
    )
    .await;
    wait_count(&ch, "deep", 2, "only head and tail are left").await;
    let mut c = common::consume(&ch, "deep", "c").await;
    for want in ["head", "tail"] {
        let d = common::next(&mut c).await;
        assert_eq!(String::from_utf8_lossy(&d.data), want);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    b.stop().await;
}

/// One client of the churn test: declares, uses and deletes the same durable queue and
/// delayed exchange `rounds` times while another client does the same. Channel errors (the
/// other client deleted something in between) just mean a new channel.
async fn churn(uri: String, rounds: usize) {
    use common::{int, s as lstr, table};
    let c = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("connect");
    let mut ch = c.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dq = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for i in 0..rounds {
        if !ch.status().connected() {
            ch = c.create_channel().await.unwrap();
        }
        let _ = ch.confirm_select(ConfirmSelectOptions::default()).await;
        let _ = ch.queue_declare("churn", dq, FieldTable::default()).await;
        let _ = ch
            .exchange_declare(
                "churn-x",
                ExchangeKind::Custom("x-delayed-message".into()),
                durable,
                table(&[("x-delayed-type", lstr("fanout"))]),
            )
            .await;
        let body = format!("stale-{i}");
        if let Ok(p) = ch
            .basic_publish(
                "",
                "churn",
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent(),
            )
            .await
        {
            let _ = p.await;
        }
        let delayed = persistent().with_headers(table(&[("x-delay", int(1500))]));
        if let Ok(p) = ch
            .basic_publish(
                "churn-x",
                "",
                BasicPublishOptions::default(),
                body.as_bytes(),
                delayed,
            )
            .await
        {
            let _ = p.await;
        }
        let _ = ch
            .queue_delete("churn", QueueDeleteOptions::default())
            .await;
        let _ = ch
            .exchange_delete("churn-x", ExchangeDeleteOptions::default())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_and_redeclaring_concurrently_never_touches_the_surviving_incarnation() {
    use common::{int, s as lstr, table};
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    let a = tokio::spawn(churn(s.uri(), 150));
    let b = tokio::spawn(churn(s.uri(), 150));
    a.await.unwrap();
    b.await.unwrap();

    // What survives: one last incarnation of each, with confirmed messages.
    let (_c, ch) = open(&s).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_durable(&ch, "churn", FieldTable::default()).await;
    declare_durable(&ch, "churn-out", FieldTable::default()).await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "churn-x",
        ExchangeKind::Custom("x-delayed-message".into()),
        durable,
        table(&[("x-delayed-type", lstr("fanout"))]),
    )
    .await
    .unwrap();
    bind(&ch, "churn-out", "churn-x", "").await.unwrap();
    // Whatever the churn left queued in "churn" is the last incarnation's; drain it.
    while let Some(m) = get(&ch, "churn").await {
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    for i in 0..20 {
        publish_confirmed(
            &ch,
            "",
            "churn",
            format!("final-{i}").as_bytes(),
            persistent(),
        )
        .await;
    }
    for i in 0..5 {
        let delayed = persistent().with_headers(table(&[("x-delay", int(1000))]));
        publish_confirmed(&ch, "churn-x", "", format!("late-{i}").as_bytes(), delayed).await;
    }
    s.kill9();

    let s = ServerProcess::start(dir.path(), &[]);
    let (_c, ch) = open(&s).await;
    let mut got = Vec::new();
    while let Some(m) = get(&ch, "churn").await {
        got.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    let want: Vec<String> = (0..20).map(|i| format!("final-{i}")).collect();
    assert_eq!(got, want, "the surviving queue has exactly its messages");
    let deadline = std::time::Instant::now() + WAIT;
    let mut late = Vec::new();
    while late.len() < 5 {
        match get(&ch, "churn-out").await {
            Some(m) => late.push(String::from_utf8_lossy(&m.delivery.data).into_owned()),
            None => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "delayed: got {late:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    late.sort();
    assert_eq!(
        late,
        (0..5).map(|i| format!("late-{i}")).collect::<Vec<_>>()
    );
    // Nothing from a deleted incarnation of the delayed exchange shows up later either.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        get(&ch, "churn-out").await.is_none(),
        "no stale delayed message"
    );
}

#[tokio::test]
async fn pipelined_durable_declares_are_answered_in_order_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    let (_c, ch) = open(&s).await;
    let dq = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // Many declarations in flight on one channel: each answer waits for the group commit
    // that makes its definitions record durable, and they come back in order.
    let mut pending = Vec::new();
    for i in 0..500 {
        let ch = ch.clone();
        pending.push(tokio::spawn(async move {
            ch.queue_declare(&format!("many-{i:03}"), dq, FieldTable::default())
                .await
        }));
    }
    for (i, p) in pending.into_iter().enumerate() {
        let q = p.await.unwrap().expect("declare-ok");
        assert_eq!(q.name().as_str(), format!("many-{i:03}"));
    }
    // A consume sent right behind a durable declare: its consume-ok and deliveries must not
    // overtake the declare-ok.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let declare = ch.queue_declare("fresh", dq, FieldTable::default());
    let consume = ch.basic_consume(
        "fresh",
        "c",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    );
    let (q, consumer) = futures_lite::future::zip(declare, consume).await;
    q.expect("declare-ok");
    let mut consumer = consumer.expect("consume-ok");
    publish_confirmed(&ch, "", "fresh", b"hello", persistent()).await;
    let d = tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"hello");
    s.kill9();
    let s = ServerProcess::start(dir.path(), &[]);
    let (_c, ch) = open(&s).await;
    for i in [0, 250, 499] {
        passive_queue(&ch, &format!("many-{i:03}"))
            .await
            .expect("a confirmed declaration survives kill -9");
    }
}

#[tokio::test]
async fn a_failed_fsync_of_the_definitions_journal_fails_the_declaration_not_the_broker() {
    let syncer = Arc::new(ferrymq_store::FailingSync::default());
    let b = common::start_with(|c| c.syncer = ferrymq_core::SyncerRef(syncer.clone())).await;
    let (_c, ch) = common::channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_durable(&ch, "before", FieldTable::default()).await;
    syncer.fail("definitions", 1);
    let dq = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let (c2, ch2) = common::channel(&b).await;
    let e = ch2
        .queue_declare("lost", dq, FieldTable::default())
        .await
        .expect_err("no declare-ok for a declaration that is not on disk");
    assert_eq!(common::code(&e), Some(541), "{e}");
    common::eventually(|| !c2.status().connected(), "the connection closes").await;
    // Later durable changes are refused (the journal failed); publishes to queues whose
    // definitions were saved go on.
    let (_c3, ch3) = common::channel(&b).await;
    let e = ch3
        .queue_declare("later", dq, FieldTable::default())
        .await
        .expect_err("the failed journal takes no more changes");
    assert_eq!(common::code(&e), Some(541), "{e}");
    publish_confirmed(&ch, "", "before", b"still fine", persistent()).await;
    b.stop().await;
}
