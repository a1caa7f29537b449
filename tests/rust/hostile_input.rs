//! Input built to hurt the broker: nesting, combinatorial topic bindings, long routing and
//! dead-letter chains, clients that ask for output and never read it. Each test checks the
//! broker answers (or refuses) and that an ordinary client is still served.

mod common;

use bytes::{BufMut, BytesMut};
use common::raw::*;
use common::*;
use ferrymq_amqp::codec::frame::{encode_header_properties, encode_method};
use ferrymq_amqp::codec::methods::*;
use ferrymq_amqp::codec::{Frame, Method, PROTOCOL_HEADER};
use ferrymq_core::Properties;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};

/// A field table holding `levels` nested field arrays.
fn nested_arrays(levels: usize) -> Vec<u8> {
    let mut table = Vec::with_capacity(levels * 5 + 8);
    table.extend_from_slice(b"\x01a");
    for i in 0..levels {
        table.push(b'A');
        table.extend_from_slice(&(((levels - i - 1) * 5) as u32).to_be_bytes());
    }
    table
}

/// A `connection.start-ok` whose client properties hold `levels` nested field arrays.
fn start_ok_with_nested_arrays(levels: usize) -> Vec<u8> {
    let table = nested_arrays(levels);
    let mut payload = Vec::new();
    payload.extend_from_slice(&10u16.to_be_bytes());
    payload.extend_from_slice(&11u16.to_be_bytes());
    payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
    payload.extend_from_slice(&table);
    payload.push(5);
    payload.extend_from_slice(b"PLAIN");
    let response = b"\0guest\0guest";
    payload.extend_from_slice(&(response.len() as u32).to_be_bytes());
    payload.extend_from_slice(response);
    payload.push(5);
    payload.extend_from_slice(b"en_US");
    frame(1, 0, &payload)
}

#[tokio::test]
async fn deeply_nested_arrays_before_login_are_refused_not_fatal() {
    let b = start().await;
    // 100,000 levels: far beyond any stack if decoded by recursion per level. The frame is
    // larger than the 4096-byte pre-tune limit, so also try one that fits.
    for levels in [800, 100_000] {
        let mut r = Raw::connect(b.addr).await;
        r.send(PROTOCOL_HEADER).await;
        let Some((0, Method::ConnectionStart(_))) = r.next_method().await else {
            panic!("expected connection.start")
        };
        r.send(&start_ok_with_nested_arrays(levels)).await;
        // Refused: the connection ends (with connection.close, or at once).
        match r.next_method().await {
            Some((0, Method::ConnectionClose(c))) => {
                assert!([501, 502].contains(&c.reply_code), "{c:?}")
            }
            None => {}
            Some(other) => panic!("unexpected {other:?}"),
        }
        assert_healthy(&b).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn deeply_nested_arrays_in_declare_arguments_are_refused_not_fatal() {
    let b = start().await;
    let (mut r, _) = Raw::open(b.addr, 0).await;
    r.open_channel(1).await;
    // 25,000 levels fill most of a 128 KiB frame.
    let table = nested_arrays(25_000);
    let mut payload = Vec::new();
    payload.extend_from_slice(&50u16.to_be_bytes());
    payload.extend_from_slice(&10u16.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload.push(1);
    payload.push(b'q');
    payload.push(0);
    payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
    payload.extend_from_slice(&table);
    r.send(&frame(1, 1, &payload)).await;
    let (code, text) = r.expect_connection_close().await;
    assert_eq!(code, 502, "{text}");
    assert!(text.contains("nested too deeply"), "{text}");
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn many_hash_wildcards_against_a_long_key_route_at_once() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "hashes").await;
    // `#.a.#.a.#...` (63 wildcards) against `a.a.a...` (127 words): a walk per way of
    // matching would never finish.
    let pattern = vec!["#"; 63].join(".a.");
    assert!(pattern.len() <= 255);
    bind(&ch, "hashes", "amq.topic", &pattern).await.unwrap();
    bind(&ch, "hashes", "amq.topic", &format!("{pattern}.b"))
        .await
        .unwrap();
    let key = vec!["a"; 127].join(".");
    publish(&ch, "amq.topic", &key, b"matched").await;
    publish(&ch, "amq.topic", &format!("{key}.c"), b"matched too").await;
    assert_eq!(get(&ch, "hashes").await.unwrap().delivery.data, b"matched");
    assert_eq!(
        get(&ch, "hashes").await.unwrap().delivery.data,
        b"matched too"
    );
    assert!(get(&ch, "hashes").await.is_none(), "each message once");
    assert_healthy(&b).await;
    b.stop().await;
}

/// Sends `methods` on channel 1 of a raw connection in one write (with `nowait` they get no
/// answers, so thousands cost one round trip), then waits for a fence.
async fn pipelined(b: &TestBroker, methods: Vec<Method>) {
    let (mut r, _) = Raw::open(b.addr, 0).await;
    r.open_channel(1).await;
    let mut out = BytesMut::new();
    for m in &methods {
        encode_method(&mut out, 1, m);
    }
    encode_method(&mut out, 1, &QueueDeclare::default().into());
    r.send(&out).await;
    match r.next_method().await {
        Some((1, Method::QueueDeclareOk(_))) => {}
        other => panic!("pipelined methods failed: {other:?}"),
    }
}

fn fanout(name: String, alternate: Option<String>) -> Method {
    let mut arguments = ferrymq_core::FieldTable::new();
    if let Some(a) = alternate {
        arguments.insert("alternate-exchange", ferrymq_core::FieldValue::string(a));
    }
    ExchangeDeclare {
        exchange: name,
        kind: "fanout".into(),
        nowait: true,
        arguments,
        ..Default::default()
    }
    .into()
}

fn exchange_bind(destination: String, source: String) -> Method {
    ExchangeBind {
        destination,
        source,
        nowait: true,
        ..Default::default()
    }
    .into()
}

#[tokio::test]
async fn long_exchange_and_alternate_exchange_chains_route_without_recursion() {
    const N: usize = 20_000;
    let b = start().await;
    // x0 -> x1 -> ... -> xN-1 -> queue, and xN-1 -> x0 closes a cycle. a0 has no bindings
    // and alternate exchange a1, which has a2, ... (a cycle too); the last one routes.
    let mut m: Vec<Method> = (0..N).map(|i| fanout(format!("x{i}"), None)).collect();
    m.extend((1..N).map(|i| exchange_bind(format!("x{i}"), format!("x{}", i - 1))));
    m.push(exchange_bind("x0".into(), format!("x{}", N - 1)));
    m.extend((0..N).map(|i| fanout(format!("a{i}"), Some(format!("a{}", (i + 1) % N)))));
    pipelined(&b, m).await;

    let (_c, ch) = channel(&b).await;
    queue(&ch, "end").await;
    bind(&ch, "end", &format!("x{}", N - 1), "").await.unwrap();
    publish(&ch, "x0", "k", b"through the chain").await;
    assert_eq!(
        get(&ch, "end").await.unwrap().delivery.data,
        b"through the chain"
    );
    assert!(get(&ch, "end").await.is_none(), "the cycle delivers once");

    queue(&ch, "alt-end").await;
    bind(&ch, "alt-end", &format!("a{}", N - 1), "")
        .await
        .unwrap();
    publish(&ch, "a0", "k", b"through alternates").await;
    assert_eq!(
        get(&ch, "alt-end").await.unwrap().delivery.data,
        b"through alternates"
    );
    assert_healthy(&b).await;
    b.stop().await;
}

/// Declares queues `{prefix}0..n`: each but the last holds nothing (max-length 0) and
/// dead-letters to the next, so one publish walks the whole chain.
async fn dead_letter_chain(ch: &lapin::Channel, prefix: &str, n: usize) {
    for i in 0..n {
        let mut args = FieldTable::default();
        if i + 1 < n {
            args.insert("x-max-length".into(), AMQPValue::LongInt(0));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(format!("{prefix}{}", i + 1).into()),
            );
        }
        ch.queue_declare(
            &format!("{prefix}{i}"),
            QueueDeclareOptions::default(),
            args,
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_long_dead_letter_chain_runs_in_a_loop_and_is_cut_at_256_hops() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    let v = b.broker().vhost("/").unwrap();
    let len = |name: &str| v.queue(name, 0).unwrap().counts().messages;

    // 100 hops: the message arrives with its whole history.
    dead_letter_chain(&ch, "short", 100).await;
    publish(&ch, "", "short0", b"falls through").await;
    let d = get(&ch, "short99").await.expect("reaches the end");
    assert_eq!(d.delivery.data, b"falls through");
    let headers = d.delivery.properties.headers().clone().unwrap();
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("x-death missing")
    };
    assert_eq!(deaths.as_slice().len(), 99);

    // 1,000 hops (which once overflowed the stack): cut after 256 queues, the broker goes on.
    dead_letter_chain(&ch, "long", 1000).await;
    // In confirm mode the publish is settled once the whole chain has run.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish(&ch, "", "long0", b"too far").await;
    assert_healthy(&b).await;
    assert!((0..1000).all(|i| len(&format!("long{i}")) == 0));
    b.stop().await;
}

#[tokio::test]
async fn dead_letters_doubling_at_every_level_are_cut_off() {
    const LEVELS: usize = 20;
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    // Level i: fanout f{i} feeding two queues that hold nothing and dead-letter to f{i+1}.
    // One publish would become 2^20 messages in the sink.
    for i in 0..=LEVELS {
        declare_exchange(&ch, &format!("f{i}"), lapin::ExchangeKind::Fanout)
            .await
            .unwrap();
    }
    for i in 0..LEVELS {
        for side in ["a", "b"] {
            let q = format!("q{i}{side}");
            let mut args = FieldTable::default();
            args.insert("x-max-length".into(), AMQPValue::LongInt(0));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(format!("f{}", i + 1).into()),
            );
            ch.queue_declare(&q, QueueDeclareOptions::default(), args)
                .await
                .unwrap();
            bind(&ch, &q, &format!("f{i}"), "").await.unwrap();
        }
    }
    queue(&ch, "sink").await;
    bind(&ch, "sink", &format!("f{LEVELS}"), "").await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish(&ch, "f0", "", b"multiplying").await;
    let sink = b.broker().vhost("/").unwrap().queue("sink", 0).unwrap();
    let n = sink.counts().messages;
    assert!(n < 20_000, "{n} copies of one message");
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn a_client_that_pipelines_gets_without_reading_is_paused_not_buffered() {
    const N: usize = 400;
    const SIZE: usize = 100 * 1024;
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "big").await;
    let body = vec![7u8; SIZE];
    for _ in 0..N {
        publish(&ch, "", "big", &body).await;
    }
    let v = b.broker().vhost("/").unwrap();
    let q = v.queue("big", 0).unwrap();
    eventually(|| q.counts().messages == N, "all published").await;

    let (mut r, _) = Raw::open(b.addr, 0).await;
    r.open_channel(1).await;
    let mut gets = BytesMut::new();
    for _ in 0..N {
        let m: Method = BasicGet {
            queue: "big".into(),
            no_ack: true,
            ..Default::default()
        }
        .into();
        encode_method(&mut gets, 1, &m);
    }
    r.send(&gets).await;
    // 40 MB of answers were asked for; the broker stops reading the requests once a few MB
    // wait for this client, so most messages stay in the queue while it does not read.
    eventually(|| q.counts().messages < N, "some gets answered").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let left = q.counts().messages;
    assert!(
        left > N / 2,
        "{} of {N} gets were answered into buffers",
        N - left
    );
    assert_healthy(&b).await;
    // Reading resumes the requests: every get is answered, in order.
    let mut answered = 0;
    while answered < N {
        match r.frame().await {
            Some(Frame::Method {
                method: Method::BasicGetOk(_),
                ..
            }) => answered += 1,
            Some(_) => {}
            None => panic!("connection closed after {answered} answers"),
        }
    }
    assert_eq!(q.counts().messages, 0);
    b.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_what_it_asked_for_is_dropped_and_its_messages_return() {
    const N: usize = 100;
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "asked").await;
    let body = vec![7u8; 100 * 1024];
    for _ in 0..N {
        publish(&ch, "", "asked", &body).await;
    }
    let q = b.broker().vhost("/").unwrap().queue("asked", 0).unwrap();
    eventually(|| q.counts().messages == N, "all published").await;
    // Heartbeat 1 s; 10 MB of gets with manual ack, then the client never reads again.
    let (mut r, _) = Raw::open(b.addr, 1).await;
    r.open_channel(1).await;
    let mut gets = BytesMut::new();
    for _ in 0..N {
        let m: Method = BasicGet {
            queue: "asked".into(),
            ..Default::default()
        }
        .into();
        encode_method(&mut gets, 1, &m);
    }
    r.send(&gets).await;
    eventually(|| q.counts().unacked > 0, "some gets answered").await;
    // Dropped after two heartbeat intervals without progress: its deliveries return.
    eventually(
        || q.counts().messages == N && q.counts().unacked == 0,
        "the silent client's deliveries are back",
    )
    .await;
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn invalid_expirations_are_refused_as_rabbitmq_refuses_them() {
    let b = start().await;
    for (expiration, reason) in [
        ("abc", "no_integer"),
        ("-5", "{value_negative,-5}"),
        ("10x", "{leftover_string,\"x\"}"),
        ("315360000001", "{value_too_large,315360000001}"),
    ] {
        let (mut r, _) = Raw::open(b.addr, 0).await;
        r.open_channel(1).await;
        let mut out = BytesMut::new();
        encode_method(
            &mut out,
            1,
            &BasicPublish {
                routing_key: "nowhere".into(),
                ..Default::default()
            }
            .into(),
        );
        let props = Properties {
            expiration: Some(expiration.into()),
            ..Default::default()
        };
        encode_header_properties(&mut out, 1, 1, &props);
        out.put_slice(&frame(3, 1, b"x"));
        r.send(&out).await;
        match r.next_method().await {
            Some((1, Method::ChannelClose(c))) => {
                assert_eq!(c.reply_code, 406);
                assert_eq!(
                    c.reply_text,
                    format!("PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}")
                );
                assert_eq!((c.class_id, c.method_id), (60, 40));
            }
            other => panic!("expected channel.close, got {other:?}"),
        }
    }
    assert_healthy(&b).await;
    b.stop().await;
}
