//! Queue features through lapin, declared with RabbitMQ's `x-` arguments: TTL and queue
//! expiry, dead-lettering with `x-death`, delivery limits, length limits and overflow
//! modes, priorities, delayed messages, consumer priorities, deduplication and policies.

mod common;

use common::*;
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::time::{Duration, Instant};

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(name, QueueDeclareOptions::default(), args)
        .await
        .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

async fn send(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(exchange, key, BasicPublishOptions::default(), body, props)
        .await
        .expect("basic.publish")
        .await
        .expect("publish settled");
}

async fn ready(ch: &Channel, q: &str) -> u32 {
    passive_queue(ch, q)
        .await
        .expect("queue exists")
        .message_count()
}

/// Polls until queue `q` holds `n` ready messages.
async fn wait_ready(ch: &Channel, q: &str, n: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = ready(ch, q).await;
        if got == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue {q} has {got} ready, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(props: &'a BasicProperties, k: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(k)
}

fn text_of(v: Option<&AMQPValue>) -> String {
    match v {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// The `x-death` entries of a message, most recent first.
fn deaths(props: &BasicProperties) -> Vec<FieldTable> {
    match header(props, "x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| match v {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    }
}

fn field<'a>(t: &'a FieldTable, k: &str) -> Option<&'a AMQPValue> {
    t.inner().get(k)
}

fn count_of(t: &FieldTable) -> i64 {
    match field(t, "count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("count is {other:?}"),
    }
}

fn dlx_args(dlx: &str) -> Vec<(&'static str, AMQPValue)> {
    vec![("x-dead-letter-exchange", s(dlx))]
}

/// Declares queue `target` and returns the arguments that dead-letter into it through the
/// default exchange.
async fn dead_letter_into(ch: &Channel, target: &str) -> Vec<(&'static str, AMQPValue)> {
    declare(ch, target, FieldTable::default()).await;
    let mut args = dlx_args("");
    args.push(("x-dead-letter-routing-key", s(target)));
    args
}

#[tokio::test]
async fn a_message_in_the_middle_expires_on_time_with_no_consumer() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    let args = dead_letter_into(&ch, "dead").await;
    declare(&ch, "work", table(&args)).await;
    let t0 = Instant::now();
    send(&ch, "", "work", b"first", BasicProperties::default()).await;
    let short = BasicProperties::default().with_expiration("200".into());
    send(&ch, "", "work", b"middle", short).await;
    send(&ch, "", "work", b"last", BasicProperties::default()).await;
    wait_ready(&ch, "dead", 1).await;
    assert!(t0.elapsed() >= Duration::from_millis(200), "expired early");
    assert_eq!(ready(&ch, "work").await, 2);
    let m = get(&ch, "dead").await.unwrap();
    assert_eq!(m.delivery.data, b"middle");
    let d = deaths(&m.delivery.properties);
    assert_eq!(d.len(), 1);
    assert_eq!(text_of(field(&d[0], "reason")), "expired");
    assert_eq!(text_of(field(&d[0], "original-expiration")), "200");
    assert!(m.delivery.properties.expiration().is_none());
    let order: Vec<Vec<u8>> = vec![
        get(&ch, "work").await.unwrap().delivery.data,
        get(&ch, "work").await.unwrap().delivery.data,
    ];
    assert_eq!(order, vec![b"first".to_vec(), b"last".to_vec()]);
    b.stop().await;
}

#[tokio::test]
async fn per_queue_ttl_expires_everything_and_zero_ttl_needs_a_waiting_consumer() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "short", table(&[("x-message-ttl", int(100))])).await;
    for i in 0..50u8 {
        send(&ch, "", "short", &[i], BasicProperties::default()).await;
    }
    wait_ready(&ch, "short", 0).await;
    // TTL 0: a message no consumer can take at once expires immediately.
    declare(&ch, "now", table(&[("x-message-ttl", int(0))])).await;
    send(&ch, "", "now", b"lost", BasicProperties::default()).await;
    wait_ready(&ch, "now", 0).await;
    let mut c = consume(&ch, "now", "c").await;
    send(&ch, "", "now", b"taken", BasicProperties::default()).await;
    assert_eq!(next(&mut c).await.data, b"taken");
    b.stop().await;
}

#[tokio::test]
async fn unused_queue_expires_and_a_used_one_stays() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "tmp", table(&[("x-expires", int(200))])).await;
    declare(&ch, "busy", table(&[("x-expires", int(200))])).await;
    let _consumer = consume(&ch, "busy", "c").await;
    let (_c2, ch2) = channel(&b).await;
    // Polled by binding to it: a passive declare would count as use (as in RabbitMQ).
    eventually_async(
        || async {
            ch2.queue_bind(
                "tmp",
                "amq.fanout",
                "",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .is_err()
        },
        "tmp expires",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        passive_queue(&ch, "busy").await.is_ok(),
        "a queue with a consumer stays"
    );
    b.stop().await;
}

/// Polls an async condition until it holds; panics after [`WAIT`].
async fn eventually_async<F, Fut>(mut f: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rejected_messages_are_dead_lettered_with_rabbitmq_headers() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare_exchange(&ch, "dlx", ExchangeKind::Direct)
        .await
        .unwrap();
    declare(&ch, "parked", FieldTable::default()).await;
    bind(&ch, "parked", "dlx", "parked").await.unwrap();
    let mut args = dlx_args("dlx");
    args.push(("x-dead-letter-routing-key", s("parked")));
    declare(&ch, "orders", table(&args)).await;
    declare_exchange(&ch, "shop", ExchangeKind::Direct)
        .await
        .unwrap();
    bind(&ch, "orders", "shop", "new").await.unwrap();
    send(&ch, "shop", "new", b"o-1", BasicProperties::default()).await;
    let m = get(&ch, "orders").await.unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    wait_ready(&ch, "parked", 1).await;
    let d = get(&ch, "parked").await.unwrap().delivery;
    assert_eq!(d.exchange.as_str(), "dlx");
    assert_eq!(d.routing_key.as_str(), "parked");
    let x = deaths(&d.properties);
    assert_eq!(x.len(), 1);
    let e = &x[0];
    assert_eq!(count_of(e), 1);
    assert_eq!(text_of(field(e, "reason")), "rejected");
    assert_eq!(text_of(field(e, "queue")), "orders");
    assert_eq!(text_of(field(e, "exchange")), "shop");
    assert!(matches!(field(e, "time"), Some(AMQPValue::Timestamp(t)) if *t > 0));
    match field(e, "routing-keys") {
        Some(AMQPValue::FieldArray(a)) => {
            assert_eq!(a.as_slice(), &[s("new")]);
        }
        other => panic!("routing-keys {other:?}"),
    }
    let p = &d.properties;
    assert_eq!(text_of(header(p, "x-first-death-reason")), "rejected");
    assert_eq!(text_of(header(p, "x-first-death-queue")), "orders");
    assert_eq!(text_of(header(p, "x-first-death-exchange")), "shop");
    // A nack without requeue dead-letters too; one with requeue does not.
    send(&ch, "shop", "new", b"o-2", BasicProperties::default()).await;
    let m = get(&ch, "orders").await.unwrap();
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    let m = get(&ch, "orders").await.unwrap();
    assert!(m.delivery.redelivered);
    m.delivery
        .nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        })
        .await
        .unwrap();
    wait_ready(&ch, "parked", 1).await;
    assert_eq!(ready(&ch, "orders").await, 0);
    b.stop().await;
}

#[tokio::test]
async fn retry_loop_through_a_ttl_wait_queue_counts_laps_in_x_death() {
    // work --reject--> retry exchange --> work.wait (TTL 100 ms) --expire--> back to work.
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare_exchange(&ch, "retry", ExchangeKind::Fanout)
        .await
        .unwrap();
    declare(&ch, "work", table(&dlx_args("retry"))).await;
    let mut wait_args = dlx_args("");
    wait_args.push(("x-dead-letter-routing-key", s("work")));
    wait_args.push(("x-message-ttl", int(100)));
    declare(&ch, "work.wait", table(&wait_args)).await;
    bind(&ch, "work.wait", "retry", "").await.unwrap();
    send(&ch, "", "work", b"job", BasicProperties::default()).await;
    let mut c = consume(&ch, "work", "worker").await;
    const LIMIT: i64 = 3;
    let mut laps = 0;
    let mut rejected_at: Option<Instant> = None;
    loop {
        let d = next(&mut c).await;
        if let Some(t) = rejected_at {
            assert!(
                t.elapsed() >= Duration::from_millis(100),
                "came back before its back-off"
            );
        }
        let x = deaths(&d.properties);
        let tries = x
            .iter()
            .find(|e| text_of(field(e, "queue")) == "work")
            .map_or(0, count_of);
        assert_eq!(tries, laps, "x-death counts each lap");
        if tries >= LIMIT {
            // The worker gives up: it parks the job by acking it.
            d.ack(BasicAckOptions::default()).await.unwrap();
            break;
        }
        laps += 1;
        rejected_at = Some(Instant::now());
        d.reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
    }
    assert_eq!(laps, LIMIT);
    assert_eq!(ready(&ch, "work.wait").await, 0);
    b.stop().await;
}

#[tokio::test]
async fn a_quorum_queues_delivery_limit_dead_letters_and_counts_deliveries() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    let mut args = dead_letter_into(&ch, "poison").await;
    args.push(("x-delivery-limit", int(2)));
    args.push(("x-queue-type", s("quorum")));
    ch.queue_declare(
        "jobs",
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        table(&args),
    )
    .await
    .expect("declare a quorum queue");
    send(&ch, "", "jobs", b"bad", BasicProperties::default()).await;
    let mut counts = Vec::new();
    for _ in 0..3 {
        let m = get(&ch, "jobs").await.expect("delivered again");
        counts.push(match header(&m.delivery.properties, "x-delivery-count") {
            Some(AMQPValue::LongLongInt(n)) => *n,
            other => panic!("x-delivery-count {other:?}"),
        });
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
    }
    assert_eq!(counts, vec![0, 1, 2]);
    wait_ready(&ch, "poison", 1).await;
    assert_eq!(ready(&ch, "jobs").await, 0);
    let d = get(&ch, "poison").await.unwrap().delivery;
    assert_eq!(
        text_of(field(&deaths(&d.properties)[0], "reason")),
        "delivery_limit"
    );
    b.stop().await;
}

#[tokio::test]
async fn drop_head_dead_letters_the_oldest() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    let mut args = dead_letter_into(&ch, "overflowed").await;
    args.push(("x-max-length", int(2)));
    declare(&ch, "bounded", table(&args)).await;
    for body in [b"1", b"2", b"3", b"4"] {
        send(&ch, "", "bounded", body, BasicProperties::default()).await;
    }
    assert_eq!(ready(&ch, "bounded").await, 2);
    assert_eq!(get(&ch, "bounded").await.unwrap().delivery.data, b"3");
    wait_ready(&ch, "overflowed", 2).await;
    let first = get(&ch, "overflowed").await.unwrap().delivery;
    assert_eq!(first.data, b"1");
    assert_eq!(
        text_of(field(&deaths(&first.properties)[0], "reason")),
        "maxlen"
    );
    // Byte limits count bodies.
    declare(&ch, "small", table(&[("x-max-length-bytes", int(10))])).await;
    for body in [b"aaaaaa", b"bbbbbb", b"cccccc"] {
        send(&ch, "", "small", body, BasicProperties::default()).await;
    }
    assert_eq!(ready(&ch, "small").await, 1);
    assert_eq!(get(&ch, "small").await.unwrap().delivery.data, b"cccccc");
    b.stop().await;
}

#[tokio::test]
async fn reject_publish_nacks_the_publisher_and_dlx_variant_dead_letters() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(
        &ch,
        "full",
        table(&[
            ("x-max-length", int(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    let confirm = |body: &'static [u8], q: &'static str| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                "",
                q,
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap()
        }
    };
    assert!(matches!(confirm(b"1", "full").await, Confirmation::Ack(_)));
    assert!(matches!(confirm(b"2", "full").await, Confirmation::Nack(_)));
    assert_eq!(ready(&ch, "full").await, 1);
    let mut args = dead_letter_into(&ch, "spill").await;
    args.push(("x-max-length", int(1)));
    args.push(("x-overflow", s("reject-publish-dlx")));
    declare(&ch, "full-dlx", table(&args)).await;
    assert!(matches!(
        confirm(b"a", "full-dlx").await,
        Confirmation::Ack(_)
    ));
    assert!(matches!(
        confirm(b"b", "full-dlx").await,
        Confirmation::Nack(_)
    ));
    wait_ready(&ch, "spill", 1).await;
    assert_eq!(get(&ch, "spill").await.unwrap().delivery.data, b"b");
    assert_eq!(get(&ch, "full-dlx").await.unwrap().delivery.data, b"a");
    b.stop().await;
}

#[tokio::test]
async fn a_priority_9_message_overtakes_a_backlog_of_priority_0() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "urgent-first", table(&[("x-max-priority", int(10))])).await;
    for i in 0..200u32 {
        let p = BasicProperties::default().with_priority(0);
        send(&ch, "", "urgent-first", &i.to_be_bytes(), p).await;
    }
    let p = BasicProperties::default().with_priority(9);
    send(&ch, "", "urgent-first", b"urgent", p).await;
    let p = BasicProperties::default().with_priority(5);
    send(&ch, "", "urgent-first", b"soon", p).await;
    let mut c = consume(&ch, "urgent-first", "c").await;
    let first = next(&mut c).await;
    assert_eq!(first.data, b"urgent");
    assert_eq!(next(&mut c).await.data, b"soon");
    // FIFO within priority 0.
    for i in 0..200u32 {
        let d = next(&mut c).await;
        assert_eq!(d.data, i.to_be_bytes());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    b.stop().await;
}

#[tokio::test]
async fn delayed_messages_arrive_no_earlier_than_their_delay_in_delay_order() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.exchange_declare(
        "later",
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        table(&[("x-delayed-type", s("direct"))]),
    )
    .await
    .unwrap();
    queue(&ch, "inbox").await;
    bind(&ch, "inbox", "later", "k").await.unwrap();
    let mut c = consume(&ch, "inbox", "c").await;
    let delayed = |ms: i32| BasicProperties::default().with_headers(table(&[("x-delay", int(ms))]));
    let t0 = Instant::now();
    send(&ch, "later", "k", b"slow", delayed(600)).await;
    send(&ch, "later", "k", b"fast", delayed(300)).await;
    send(&ch, "later", "k", b"now", BasicProperties::default()).await;
    assert_eq!(next(&mut c).await.data, b"now");
    let d = next(&mut c).await;
    assert_eq!(d.data, b"fast");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "delivered before its delay"
    );
    let d = next(&mut c).await;
    assert_eq!(d.data, b"slow");
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "delivered before its delay"
    );
    // Without x-delayed-type the declaration is refused.
    let e = ch
        .exchange_declare(
            "broken",
            ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert!(text(&e).contains("x-delayed-type"), "{}", text(&e));
    b.stop().await;
}

#[tokio::test]
async fn higher_priority_consumers_are_served_first_while_they_have_credit() {
    let b = start().await;
    let (_c1, high) = channel(&b).await;
    let (_c2, low) = channel(&b).await;
    queue(&high, "shared").await;
    high.basic_qos(3, BasicQosOptions::default()).await.unwrap();
    let consume_with = |ch: &Channel, tag: &'static str, prio: i32| {
        let ch = ch.clone();
        async move {
            ch.basic_consume(
                "shared",
                tag,
                BasicConsumeOptions::default(),
                table(&[("x-priority", int(prio))]),
            )
            .await
            .unwrap()
        }
    };
    let mut lo = consume_with(&low, "low", 1).await;
    let mut hi = consume_with(&high, "high", 10).await;
    for i in 0..5u8 {
        send(&low, "", "shared", &[i], BasicProperties::default()).await;
    }
    // The high-priority consumer takes the first three (its prefetch); only then does the
    // low-priority one get anything.
    for i in 0..3u8 {
        assert_eq!(next(&mut hi).await.data, [i]);
    }
    assert_eq!(next(&mut lo).await.data, [3]);
    assert_eq!(next(&mut lo).await.data, [4]);
    let e = low
        .basic_consume(
            "shared",
            "bad",
            BasicConsumeOptions::default(),
            table(&[("x-priority", s("high"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert!(text(&e).contains("x-priority"));
    b.stop().await;
}

#[tokio::test]
async fn single_active_consumer_hands_over_when_the_active_one_goes() {
    let b = start().await;
    let (c1, ch1) = channel(&b).await;
    let (_c2, ch2) = channel(&b).await;
    declare(
        &ch1,
        "one-at-a-time",
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let mut first = consume(&ch1, "one-at-a-time", "first").await;
    let mut second = consume(&ch2, "one-at-a-time", "second").await;
    for i in 0..4u8 {
        send(&ch2, "", "one-at-a-time", &[i], BasicProperties::default()).await;
    }
    // The active consumer gets everything; it acks two and leaves two unacked.
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next(&mut first).await);
    }
    for d in &got[..2] {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert!(
        tokio::time::timeout(
            Duration::from_millis(200),
            futures_lite::StreamExt::next(&mut second)
        )
        .await
        .is_err(),
        "the waiting consumer received while the active one was there"
    );
    c1.close(320, "going away").await.unwrap();
    let d = next(&mut second).await;
    assert_eq!(d.data, [2]);
    assert!(d.redelivered);
    assert_eq!(next(&mut second).await.data, [3]);
    b.stop().await;
}

#[tokio::test]
async fn duplicates_are_dropped_within_the_window_and_still_confirmed() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(
        &ch,
        "once",
        table(&[
            ("x-message-deduplication", AMQPValue::Boolean(true)),
            ("x-cache-size", int(100)),
            ("x-cache-ttl", int(300)),
        ]),
    )
    .await;
    let by_id = |id: &str| BasicProperties::default().with_message_id(id.into());
    let by_header = |k: &str| {
        BasicProperties::default().with_headers(table(&[("x-deduplication-header", s(k))]))
    };
    for p in [
        by_id("a"),
        by_id("a"),
        by_id("b"),
        by_header("h"),
        by_header("h"),
    ] {
        let c = ch
            .basic_publish("", "once", BasicPublishOptions::default(), b"x", p)
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(c, Confirmation::Ack(_)),
            "duplicates are confirmed too"
        );
    }
    assert_eq!(ready(&ch, "once").await, 3);
    tokio::time::sleep(Duration::from_millis(350)).await;
    send(&ch, "", "once", b"x", by_id("a")).await;
    assert_eq!(
        ready(&ch, "once").await,
        4,
        "a key is forgotten after x-cache-ttl"
    );
    b.stop().await;
}

#[tokio::test]
async fn invalid_arguments_are_refused_with_406_naming_the_argument() {
    let b = start().await;
    let cases: Vec<(&str, AMQPValue)> = vec![
        ("x-message-ttl", int(-5)),
        ("x-max-length", s("ten")),
        ("x-max-priority", int(1000)),
        ("x-overflow", s("explode")),
        ("x-dead-letter-exchange", int(3)),
        ("x-single-active-consumer", s("yes")),
        ("x-delivery-limit", int(-1)),
        ("x-expires", int(0)),
        ("x-cache-size", int(0)),
    ];
    for (k, v) in cases {
        let (_c, ch) = channel(&b).await;
        let e = ch
            .queue_declare("q", QueueDeclareOptions::default(), table(&[(k, v)]))
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(406), "{k}: {e}");
        assert!(text(&e).contains(k), "{k}: {}", text(&e));
    }
    b.stop().await;
}

#[tokio::test]
async fn policies_set_features_at_runtime_and_declared_arguments_take_precedence() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "limited.a", FieldTable::default()).await;
    declare(&ch, "limited.b", table(&[("x-max-length", int(1))])).await;
    for i in 0..5u8 {
        send(&ch, "", "limited.a", &[i], BasicProperties::default()).await;
    }
    let broker = b.broker();
    let def = |json: &str| serde_json::from_str(json).unwrap();
    let policy = ferrymq_core::policy::Policy::new(
        "cap",
        "^limited\\.",
        "queues",
        0,
        def(r#"{"max-length": 3, "overflow": "drop-head"}"#),
    )
    .unwrap();
    broker.set_policy("/", policy).unwrap();
    // Applied at once to the existing backlog, oldest dropped.
    assert_eq!(ready(&ch, "limited.a").await, 3);
    assert_eq!(get(&ch, "limited.a").await.unwrap().delivery.data, [2]);
    // The smaller of policy and argument wins.
    for i in 0..3u8 {
        send(&ch, "", "limited.b", &[i], BasicProperties::default()).await;
    }
    assert_eq!(ready(&ch, "limited.b").await, 1);
    // Queues declared later pick the policy up too; clearing it lifts the limit.
    declare(&ch, "limited.c", FieldTable::default()).await;
    for i in 0..5u8 {
        send(&ch, "", "limited.c", &[i], BasicProperties::default()).await;
    }
    assert_eq!(ready(&ch, "limited.c").await, 3);
    broker.clear_policy("/", "cap").unwrap();
    for i in 0..5u8 {
        send(&ch, "", "limited.c", &[i], BasicProperties::default()).await;
    }
    assert_eq!(ready(&ch, "limited.c").await, 8);
    // An alternate exchange can come from a policy as well.
    declare_exchange(&ch, "ae", ExchangeKind::Fanout)
        .await
        .unwrap();
    queue(&ch, "unroutable").await;
    bind(&ch, "unroutable", "ae", "").await.unwrap();
    declare_exchange(&ch, "orders", ExchangeKind::Direct)
        .await
        .unwrap();
    let ae = ferrymq_core::policy::Policy::new(
        "ae",
        "^orders$",
        "exchanges",
        0,
        def(r#"{"alternate-exchange": "ae"}"#),
    )
    .unwrap();
    broker.set_policy("/", ae).unwrap();
    send(
        &ch,
        "orders",
        "nobody",
        b"lost?",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(
        get(&ch, "unroutable").await.unwrap().delivery.data,
        b"lost?"
    );
    b.stop().await;
}
