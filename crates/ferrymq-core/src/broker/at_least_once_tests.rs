//! Unit tests of at-least-once dead-lettering (quorum queues): held letters, their retries,
//! their restore after a restart, and hostile topologies.

use super::*;
use crate::exchange::ExchangeOptions;
use crate::message::{Message, Properties};
use crate::persist::{PersistConfig, Persistence};
use crate::queue::{Queue, QueueOptions};
use crate::value::{FieldTable, FieldValue};
use crate::vhost::VHost;
use bytes::Bytes;
use std::time::{Duration, Instant};

use super::tests::{open, reopen};

/// Arguments of a quorum queue dead-lettering at least once into `dlx`.
fn alo(dlx: &str, extra: &[(&str, FieldValue)]) -> QueueOptions {
    let mut a = FieldTable::new();
    a.insert("x-queue-type", FieldValue::string("quorum"));
    a.insert("x-dead-letter-exchange", FieldValue::string(dlx));
    a.insert(
        "x-dead-letter-strategy",
        FieldValue::string("at-least-once"),
    );
    a.insert("x-overflow", FieldValue::string("reject-publish"));
    for (k, v) in extra {
        a.insert(*k, v.clone());
    }
    QueueOptions {
        durable: true,
        arguments: a,
        ..QueueOptions::default()
    }
}

fn declare(v: &VHost, name: &str, o: QueueOptions) -> Arc<Queue> {
    v.declare_queue(name, o, false, 1, None).unwrap().0
}

fn put(v: &VHost, q: &str, body: &'static str) {
    let props = Properties {
        delivery_mode: Some(2),
        ..Properties::default()
    };
    let m = Message::from_properties("", q, &props, Bytes::from_static(body.as_bytes())).unwrap();
    v.publish(&v.exchange("").unwrap(), Arc::new(m)).unwrap();
}

fn reject_head(q: &Arc<Queue>) {
    let (m, _) = q.get(true).expect("a message");
    q.reject(vec![m]);
}

fn route(v: &VHost, dlx: &str, target: &str) -> Arc<Queue> {
    v.declare_exchange(dlx, "fanout", ExchangeOptions::default(), false)
        .unwrap();
    let t = declare(v, target, QueueOptions::default());
    v.bind_queue(target, dlx, "", FieldTable::new(), 1).unwrap();
    t
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn death(m: &Message) -> (String, String, i64) {
    let h = m.headers().unwrap();
    let Some(FieldValue::Array(d)) = h.get("x-death") else {
        panic!("no x-death")
    };
    let FieldValue::Table(t) = &d[0] else {
        panic!()
    };
    let s = |k| t.get(k).and_then(FieldValue::as_str).unwrap().to_string();
    let count = t.get("count").and_then(FieldValue::as_i64).unwrap();
    (s("queue"), s("reason"), count)
}

#[test]
fn a_dead_letter_is_held_until_a_route_exists_then_delivered_once() {
    let v = VHost::new("/");
    let src = declare(&v, "src", alo("dlx", &[]));
    put(&v, "src", "a");
    reject_head(&src);
    assert_eq!((src.held(), src.counts().messages), (1, 0));
    let t = route(&v, "dlx", "t");
    wait("the letter reaches the new route", || {
        t.counts().messages == 1
    });
    assert_eq!(src.held(), 0);
    let (m, _) = t.get(false).unwrap();
    assert_eq!(m.message.body(), b"a");
    assert_eq!(
        death(&m.message),
        ("src".into(), "rejected".into(), 1),
        "x-death as at most once writes it"
    );
}

#[test]
fn classic_queues_and_at_most_once_quorum_queues_still_drop_unroutable_letters() {
    let v = VHost::new("/");
    let mut o = alo("dlx", &[]);
    o.arguments
        .insert("x-dead-letter-strategy", FieldValue::string("at-most-once"));
    let q = declare(&v, "amo", o);
    let mut c = FieldTable::new();
    c.insert("x-dead-letter-exchange", FieldValue::string("dlx"));
    let classic = declare(
        &v,
        "classic",
        QueueOptions {
            arguments: c,
            ..QueueOptions::default()
        },
    );
    for (name, q) in [("amo", &q), ("classic", &classic)] {
        put(&v, name, "x");
        reject_head(q);
        assert_eq!(q.held(), 0, "{name} holds nothing");
    }
}

#[test]
fn a_cycle_back_into_the_source_is_delivered_with_a_rejection_and_held_without() {
    let v = VHost::new("/");
    // Rejected: a consumer is in the loop, so the copy may come back to the source.
    let rk = ("x-dead-letter-routing-key", FieldValue::string("back"));
    let back = declare(&v, "back", alo("", &[rk]));
    put(&v, "back", "r");
    reject_head(&back);
    assert_eq!((back.held(), back.counts().messages), (0, 1));
    // Expired into itself, no consumer involved: a cycle, which RabbitMQ does not deliver.
    // The letter stays held (as in RabbitMQ's worker), retried on the timer without
    // piling up copies or spinning, and the queue keeps working.
    let ttl = ("x-message-ttl", FieldValue::I32(5));
    let rk = ("x-dead-letter-routing-key", FieldValue::string("loop"));
    let lp = declare(&v, "loop", alo("", &[ttl, rk]));
    put(&v, "loop", "e");
    wait("it expires and is held", || lp.held() == 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((lp.held(), lp.counts().messages), (1, 0));
    put(&v, "loop", "f");
    wait("the second one too", || lp.held() == 2);
}

#[test]
fn thousands_of_held_letters_all_arrive_once_when_the_route_appears() {
    let v = VHost::new("/");
    let src = declare(&v, "src", alo("dlx", &[]));
    const N: usize = 5000;
    for _ in 0..N {
        put(&v, "src", "m");
    }
    let mut taken = Vec::new();
    while let Some((m, _)) = src.get(true) {
        taken.push(m);
    }
    src.reject(taken);
    assert_eq!(src.held(), N);
    let t = route(&v, "dlx", "t");
    // Retried in bounded rounds, one after the other while they make progress.
    wait("all arrive", || src.held() == 0);
    assert_eq!(t.counts().messages, N);
}

#[test]
fn a_full_target_deleted_while_letters_are_held_and_declared_again_gets_them() {
    let v = VHost::new("/");
    v.declare_exchange("dlx", "fanout", ExchangeOptions::default(), false)
        .unwrap();
    let mut full = FieldTable::new();
    full.insert("x-max-length", FieldValue::I32(0));
    full.insert("x-overflow", FieldValue::string("reject-publish"));
    declare(
        &v,
        "t",
        QueueOptions {
            arguments: full,
            ..QueueOptions::default()
        },
    );
    v.bind_queue("t", "dlx", "", FieldTable::new(), 1).unwrap();
    let src = declare(&v, "src", alo("dlx", &[]));
    put(&v, "src", "a");
    reject_head(&src);
    assert_eq!(src.held(), 1, "refused by the full target");
    v.delete_queue("t", false, false, 1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(src.held(), 1);
    let t = declare(&v, "t", QueueOptions::default());
    v.bind_queue("t", "dlx", "", FieldTable::new(), 1).unwrap();
    wait("it arrives", || t.counts().messages == 1);
    assert_eq!(src.held(), 0);
}

#[test]
fn held_letters_count_toward_the_length_limit_as_in_rabbitmq() {
    let v = VHost::new("/");
    let src = declare(
        &v,
        "src",
        alo("dlx", &[("x-max-length", FieldValue::I32(2))]),
    );
    put(&v, "src", "a");
    put(&v, "src", "b");
    reject_head(&src);
    reject_head(&src);
    let m = |b: &'static str| {
        Arc::new(
            Message::from_properties(
                "",
                "src",
                &Properties::default(),
                Bytes::from_static(b.as_bytes()),
            )
            .unwrap(),
        )
    };
    // Over the limit only past it: two held, one more is taken, then none.
    assert!(matches!(
        src.publish(m("c")),
        crate::queue::Enqueued::Accepted(_)
    ));
    assert_eq!(src.publish(m("d")), crate::queue::Enqueued::Refused);
    assert_eq!(src.counts().messages, 1);
}

#[test]
fn held_letters_survive_a_restart_keep_their_reason_and_are_not_redelivered() {
    let d = tempfile::tempdir().unwrap();
    let b = open(d.path());
    let v = b.vhost("/").unwrap();
    let src = declare(
        &v,
        "src",
        alo("dlx", &[("x-delivery-limit", FieldValue::I32(0))]),
    );
    put(&v, "src", "limit");
    put(&v, "src", "rejected");
    put(&v, "src", "ready");
    let (m, _) = src.get(true).unwrap();
    src.requeue(vec![m]); // past the delivery limit of 0
    reject_head(&src);
    assert_eq!((src.held(), src.counts().messages), (2, 1));
    drop((v, src));
    let b = reopen(b, d.path());
    let v = b.vhost("/").unwrap();
    let src = v.queue("src", 1).unwrap();
    assert_eq!((src.held(), src.counts().messages), (2, 1));
    let (m, _) = src.get(true).unwrap();
    assert_eq!(m.message.body(), b"ready", "held letters are not ready");
    src.ack(&[m.seq()]);
    let t = route(&v, "dlx", "t");
    wait("both arrive", || t.counts().messages == 2);
    let mut got = Vec::new();
    while let Some((m, _)) = t.get(false) {
        got.push((m.message.body().to_vec(), death(&m.message).1));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            (b"limit".to_vec(), "delivery_limit".to_string()),
            (b"rejected".to_vec(), "rejected".to_string())
        ]
    );
    drop((v, src, t));
    // Forwarded: acked in the source's log, gone for good.
    let b = reopen(b, d.path());
    let src = b.vhost("/").unwrap().queue("src", 1).unwrap();
    assert_eq!((src.held(), src.counts().messages), (0, 0));
}

#[test]
fn a_purge_keeps_held_letters_and_a_policy_to_at_most_once_deletes_them() {
    let v = VHost::new("/");
    let src = declare(&v, "src", alo("dlx", &[]));
    put(&v, "src", "held");
    put(&v, "src", "ready");
    reject_head(&src);
    assert_eq!(src.purge(), 1);
    assert_eq!(src.held(), 1);
    let mut cfg = src.config();
    cfg.dead_letter_strategy = crate::queue_config::DeadLetterStrategy::AtMostOnce;
    src.set_config(cfg);
    assert_eq!(
        src.held(),
        0,
        "deleted, as RabbitMQ does when the strategy leaves at-least-once"
    );
}

#[test]
fn the_source_forgets_a_letter_only_once_the_targets_write_is_durable() {
    // The target's fsync fails: its copy is not durable, so the source keeps the letter
    // (a machine crash must not keep the source's ack and lose the copy).
    let d = tempfile::tempdir().unwrap();
    let syncer = Arc::new(ferrymq_store::FailingSync::default());
    let open_failing = || {
        let mut c = PersistConfig::new(d.path());
        c.syncer = crate::SyncerRef(syncer.clone());
        Broker::open(BrokerConfig::default(), Persistence::open(c).unwrap()).unwrap()
    };
    let b = open_failing();
    let v = b.vhost("/").unwrap();
    v.declare_exchange(
        "dlx",
        "fanout",
        ExchangeOptions {
            durable: true,
            ..ExchangeOptions::default()
        },
        false,
    )
    .unwrap();
    let durable = QueueOptions {
        durable: true,
        ..QueueOptions::default()
    };
    let t = declare(&v, "t", durable);
    v.bind_queue("t", "dlx", "", FieldTable::new(), 1).unwrap();
    let src = declare(&v, "src", alo("dlx", &[]));
    put(&v, "src", "a");
    let hash = t
        .dir()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    syncer.fail(&hash, 1);
    reject_head(&src);
    wait("the target took it in memory", || t.counts().messages == 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(src.held(), 1, "not forgotten: the target's write was lost");
    drop((v, src, t));
    // After a restart the target's log works again: the letter goes there, and only then
    // is it gone from the source.
    b.persistence().unwrap().stop();
    drop(b);
    let b = open_failing();
    let v = b.vhost("/").unwrap();
    let (src, t) = (v.queue("src", 1).unwrap(), v.queue("t", 1).unwrap());
    wait("forwarded after the restart", || src.held() == 0);
    assert!(t.counts().messages >= 1);
}

/// A message of `size` body bytes for queue `q`, persistent.
fn sized(q: &str, size: usize) -> Arc<Message> {
    let props = Properties {
        delivery_mode: Some(2),
        ..Properties::default()
    };
    let body = Bytes::from(vec![b'x'; size]);
    Arc::new(Message::from_properties("", q, &props, body).unwrap())
}

#[test]
fn held_letters_on_disk_cost_no_ram_for_their_messages_also_after_a_restart() {
    // A dead-letter exchange that routes nowhere holds every letter: peers decide how many.
    // Their messages must stay on disk (read back per attempt), not pile up in RAM.
    let d = tempfile::tempdir().unwrap();
    let b = open(d.path());
    let v = b.vhost("/").unwrap();
    v.declare_exchange(
        "dlx",
        "fanout",
        ExchangeOptions {
            durable: true,
            ..ExchangeOptions::default()
        },
        false,
    )
    .unwrap();
    let src = declare(&v, "src", alo("dlx", &[]));
    const N: usize = 3000;
    for _ in 0..N {
        v.publish(&v.exchange("").unwrap(), sized("src", 1000))
            .unwrap();
    }
    let mut taken = Vec::new();
    while let Some((m, _)) = src.get(true) {
        taken.push(m);
    }
    let weak: Vec<std::sync::Weak<Message>> =
        taken.iter().map(|m| Arc::downgrade(&m.message)).collect();
    src.reject(taken);
    assert_eq!(src.held(), N);
    assert_eq!(
        weak.iter().filter(|w| w.upgrade().is_some()).count(),
        0,
        "tried once (no route) and let go of: no message is kept alive"
    );
    assert_eq!(src.held_in_ram(), 0, "only positions stay");
    // A retry round reads them back and lets go of them again.
    src.retry_held_soon();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((src.held(), src.held_in_ram()), (N, 0));
    drop((v, src));
    let b = reopen(b, d.path());
    let v = b.vhost("/").unwrap();
    let src = v.queue("src", 1).unwrap();
    assert_eq!(
        (src.held(), src.held_in_ram(), src.counts().messages),
        (N, 0, 0),
        "recovered as positions and reasons, not payloads"
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        (src.held(), src.held_in_ram()),
        (N, 0),
        "the restore attempt let go of them too"
    );
    let t = declare(&v, "t", QueueOptions::default());
    v.bind_queue("t", "dlx", "", FieldTable::new(), 1).unwrap();
    wait("all arrive", || src.held() == 0);
    assert_eq!(t.counts().messages, N);
    for _ in 0..N {
        let (m, _) = t.get(false).unwrap();
        assert_eq!(m.message.body_size(), 1000);
        assert_eq!(death(&m.message), ("src".into(), "rejected".into(), 1));
    }
    drop((v, src, t));
    let b = reopen(b, d.path());
    let src = b.vhost("/").unwrap().queue("src", 1).unwrap();
    assert_eq!(src.held(), 0, "acked once forwarded");
}

/// The `x-death` entry of `m` as a table.
fn death_entry(m: &Message) -> FieldTable {
    let h = m.headers().unwrap();
    let Some(FieldValue::Array(d)) = h.get("x-death") else {
        panic!("no x-death")
    };
    match &d[0] {
        FieldValue::Table(t) => t.clone(),
        _ => panic!("x-death entry is no table"),
    }
}

/// A fanout `dlx` to `a` (takes anything) and `b` (full: holds one message, refuses more).
fn one_taker_one_full(v: &VHost) -> (Arc<Queue>, Arc<Queue>) {
    v.declare_exchange("dlx", "fanout", ExchangeOptions::default(), false)
        .unwrap();
    let a = declare(v, "a", QueueOptions::default());
    let mut full = FieldTable::new();
    full.insert("x-max-length", FieldValue::I32(1));
    full.insert("x-overflow", FieldValue::string("reject-publish"));
    let b = declare(
        v,
        "b",
        QueueOptions {
            arguments: full,
            ..QueueOptions::default()
        },
    );
    put(v, "b", "filler");
    v.bind_queue("a", "dlx", "", FieldTable::new(), 1).unwrap();
    v.bind_queue("b", "dlx", "", FieldTable::new(), 1).unwrap();
    (a, b)
}

#[test]
fn a_retry_carries_the_same_x_death_as_the_first_attempt() {
    let d = tempfile::tempdir().unwrap();
    let b = open(d.path());
    let v = b.vhost("/").unwrap();
    let (qa, qb) = one_taker_one_full(&v);
    let src = declare(&v, "src", alo("dlx", &[]));
    put(&v, "src", "m");
    reject_head(&src);
    wait("the first attempt reached a", || qa.counts().messages == 1);
    assert_eq!((src.held(), src.held_in_ram()), (1, 0), "b refused it");
    // Past a second boundary: a copy built anew with the current time would differ.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(qb.purge(), 1);
    src.retry_held_soon();
    wait("the retry reaches b", || qb.counts().messages == 1);
    wait("then the source lets go", || src.held() == 0);
    assert_eq!(qa.counts().messages, 1, "a is not given it again");
    let (ma, _) = qa.get(false).unwrap();
    let (mb, _) = qb.get(false).unwrap();
    assert_eq!(
        death_entry(&ma.message),
        death_entry(&mb.message),
        "one death, as RabbitMQ counts it"
    );
}

#[test]
fn switching_at_least_once_off_deletes_held_letters_without_duplicating_any() {
    // RabbitMQ (`rabbit_fifo_dlx:switch_from`) deletes the dead letters it holds when the
    // strategy leaves at-least-once. Dead-lettering them at most once instead gives a
    // second copy to every target that took the first.
    let v = VHost::new("/");
    let (qa, qb) = one_taker_one_full(&v);
    let src = declare(&v, "src", alo("dlx", &[]));
    put(&v, "src", "m");
    reject_head(&src);
    assert_eq!(
        (qa.counts().messages, src.held()),
        (1, 1),
        "a has it, b not"
    );
    let mut cfg = src.config();
    cfg.dead_letter_strategy = crate::queue_config::DeadLetterStrategy::AtMostOnce;
    src.set_config(cfg);
    assert_eq!(src.held(), 0, "deleted");
    assert_eq!(qa.counts().messages, 1, "a got it once, not twice");
    assert_eq!(qb.purge(), 1, "b still only has its filler");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(qb.counts().messages, 0, "and gets nothing later");
}

#[test]
fn switching_to_another_dead_letter_exchange_sends_held_letters_there() {
    // RabbitMQ's worker looks the topology up again when a policy changes and routes what
    // it holds through the new exchange; the retry is rebuilt with the current settings.
    let v = VHost::new("/");
    let src = declare(&v, "src", alo("nowhere", &[]));
    put(&v, "src", "m");
    reject_head(&src);
    assert_eq!(src.held(), 1);
    let t = route(&v, "dlx2", "t");
    let mut cfg = src.config();
    cfg.dead_letter_exchange = Some("dlx2".into());
    src.set_config(cfg);
    src.retry_held_soon();
    wait("it arrives through the new exchange", || {
        t.counts().messages == 1
    });
    wait("and the source lets go", || src.held() == 0);
}

#[test]
fn a_paged_backlog_expiring_into_the_held_set_stays_on_disk() {
    // Paged out beyond a 1,000-byte budget, then expired with no route: held without being
    // read back into RAM (each attempt reads a chunk and lets go of it again).
    let d = tempfile::tempdir().unwrap();
    let p = Persistence::open(PersistConfig {
        queue_ram_budget: 1000,
        ..PersistConfig::new(d.path())
    })
    .unwrap();
    let b = Broker::open(BrokerConfig::default(), p).unwrap();
    let v = b.vhost("/").unwrap();
    let ttl = ("x-message-ttl", FieldValue::I32(200));
    let src = declare(&v, "src", alo("dlx", &[ttl]));
    const N: usize = 500;
    for _ in 0..N {
        v.publish(&v.exchange("").unwrap(), sized("src", 1000))
            .unwrap();
    }
    wait("all expire into the held set", || src.held() == N);
    wait("their first attempts let go of them", || {
        src.held_in_ram() == 0
    });
    assert_eq!(src.counts().messages, 0);
    let t = route(&v, "dlx", "t");
    wait("all arrive", || src.held() == 0);
    assert_eq!(t.counts().messages, N);
    let (m, _) = t.get(false).unwrap();
    assert_eq!(death(&m.message), ("src".into(), "expired".into(), 1));
}
