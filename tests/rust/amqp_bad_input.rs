//! Bad input over raw sockets: the broker answers with the right reply code, keeps running, and
//! other clients are not disturbed. Also behaviours a well-behaved client library hides:
//! heartbeat timeouts, publisher holding under an alarm, the server's capabilities table.

mod common;

use bytes::{BufMut, BytesMut};
use common::raw::*;
use common::*;
use ferrymq_amqp::codec::frame::{encode_header_properties, encode_method};
use ferrymq_amqp::codec::methods::*;
use ferrymq_amqp::codec::{Frame, Method, PROTOCOL_HEADER};
use ferrymq_core::{FieldTable, FieldValue, Properties};
use lapin::options::*;

#[tokio::test]
async fn wrong_protocol_header_is_answered_with_0_9_1_header() {
    let b = start().await;
    let mut r = Raw::connect(b.addr).await;
    r.send(b"GET / HTTP/1.1\r\n\r\n").await;
    r.expect_protocol_header_then_eof().await;
    let mut r = Raw::connect(b.addr).await;
    r.send(b"AMQP\x01\x01\x00\x0a").await;
    r.expect_protocol_header_then_eof().await;
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn connection_start_advertises_rabbitmq_capabilities() {
    let b = start().await;
    let (_r, start) = Raw::open(b.addr, 0).await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert_eq!(&start.mechanisms.0[..], b"PLAIN AMQPLAIN");
    let Some(FieldValue::Table(caps)) = start.server_properties.get("capabilities") else {
        panic!("no capabilities")
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(caps.get(cap), Some(&FieldValue::Bool(true)), "{cap}");
    }
    assert_eq!(
        start
            .server_properties
            .get("product")
            .and_then(|v| v.as_str()),
        Some("FerryMQ")
    );
    b.stop().await;
}

#[tokio::test]
async fn channel_max_limits_open_channels_not_channel_numbers() {
    let b = start().await;
    let (mut r, _) = Raw::open(b.addr, 0).await;
    // Any number up to 65535 may be used, as with RabbitMQ 3.10 ...
    r.open_channel(65535).await;
    for ch in 1..2047u16 {
        r.open_channel(ch).await;
    }
    // ... but no more than channel_max (2047) channels at once.
    r.method(2047, ChannelOpen::default()).await;
    let (code, text) = r.expect_connection_close().await;
    assert_eq!(code, 530);
    assert_eq!(
        text,
        "NOT_ALLOWED - number of channels opened (2047) has reached the negotiated channel_max (2047)"
    );
    r.expect_eof().await;
    b.stop().await;
}

#[tokio::test]
async fn amqplain_login_works() {
    let b = start().await;
    let mut r = Raw::connect(b.addr).await;
    r.send(PROTOCOL_HEADER).await;
    r.next_method().await.unwrap();
    let mut resp = BytesMut::new();
    ferrymq_core::wire::write_table(
        &mut resp,
        &FieldTable(vec![
            ("LOGIN".into(), FieldValue::string("guest")),
            ("PASSWORD".into(), FieldValue::string("guest")),
        ]),
    );
    r.method(
        0,
        ConnectionStartOk {
            mechanism: "AMQPLAIN".into(),
            response: ferrymq_amqp::codec::LongStr(resp.split_off(4).freeze()),
            locale: "en_US".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(
        r.next_method().await,
        Some((0, Method::ConnectionTune(_)))
    ));
    b.stop().await;
}

#[tokio::test]
async fn methods_out_of_order_during_handshake_are_503() {
    let b = start().await;
    let mut r = Raw::connect(b.addr).await;
    r.send(PROTOCOL_HEADER).await;
    r.next_method().await.unwrap();
    r.method(
        0,
        ConnectionOpen {
            virtual_host: "/".into(),
            ..Default::default()
        },
    )
    .await;
    let (code, text) = r.expect_connection_close().await;
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("connection.start-ok"), "{text}");
    b.stop().await;
}

#[tokio::test]
async fn frame_max_outside_limits_is_530() {
    let b = start().await;
    for fm in [1024u32, 10_000_000] {
        let mut r = Raw::connect(b.addr).await;
        r.send(PROTOCOL_HEADER).await;
        r.next_method().await.unwrap();
        r.method(
            0,
            ConnectionStartOk {
                mechanism: "PLAIN".into(),
                response: LongStrBytes::plain("guest", "guest"),
                ..Default::default()
            },
        )
        .await;
        r.next_method().await.unwrap();
        r.method(
            0,
            ConnectionTuneOk {
                channel_max: 10,
                frame_max: fm,
                heartbeat: 0,
            },
        )
        .await;
        let (code, text) = r.expect_connection_close().await;
        assert_eq!(code, 530, "{text}");
        assert!(text.contains("frame_max"), "{text}");
    }
    b.stop().await;
}

/// Each case: what to send after a normal handshake + channel 1, and the expected reply code.
#[tokio::test]
async fn bad_frames_close_the_connection_with_the_right_code_and_others_are_undisturbed() {
    let b = start().await;
    // A healthy client connected throughout.
    let (_good_conn, good) = channel(&b).await;
    queue(&good, "steady").await;
    let mut good_consumer = consume(&good, "steady", "steady").await;

    let mut publish_then_method = BytesMut::new();
    encode_method(
        &mut publish_then_method,
        1,
        &BasicPublish {
            routing_key: "x".into(),
            ..Default::default()
        }
        .into(),
    );
    encode_header_properties(&mut publish_then_method, 1, 10, &Properties::default());
    encode_method(
        &mut publish_then_method,
        1,
        &QueueDeclare {
            queue: "q".into(),
            ..Default::default()
        }
        .into(),
    );

    let mut header_without_publish = BytesMut::new();
    encode_header_properties(&mut header_without_publish, 1, 3, &Properties::default());

    let mut body_too_long = BytesMut::new();
    encode_method(
        &mut body_too_long,
        1,
        &BasicPublish {
            routing_key: "x".into(),
            ..Default::default()
        }
        .into(),
    );
    encode_header_properties(&mut body_too_long, 1, 2, &Properties::default());
    body_too_long.put_slice(&frame(3, 1, b"12345"));

    let mut truncated_method = BytesMut::new();
    truncated_method.put_slice(&frame(1, 1, &[0, 50, 0, 10, 0, 0, 9, b'q']));

    let mut bad_end = frame(8, 0, b"");
    *bad_end.last_mut().unwrap() = 0x00;

    let mut oversize = vec![1u8, 0, 1];
    oversize.extend_from_slice(&(1_000_000u32).to_be_bytes());

    let mut bad_table = BytesMut::new();
    {
        // queue.declare whose arguments table contains an unknown value type 'Z'.
        let mut p = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        let table = [1u8, b'k', b'Z'];
        p.extend_from_slice(&(table.len() as u32).to_be_bytes());
        p.extend_from_slice(&table);
        bad_table.put_slice(&frame(1, 1, &p));
    }

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unknown frame type", frame(0x41, 1, b"garbage"), 501),
        ("frame larger than frame_max", oversize, 501),
        ("bad frame end octet", bad_end, 501),
        ("heartbeat on a channel", frame(8, 1, b""), 501),
        (
            "method on unopened channel",
            frame(1, 7, &[0, 60, 0, 10, 0, 0, 0, 0, 0, 1, 0]),
            504,
        ),
        ("second channel.open", frame(1, 1, &[0, 20, 0, 10, 0]), 504),
        (
            "content header without publish",
            header_without_publish.to_vec(),
            505,
        ),
        (
            "method while content expected",
            publish_then_method.to_vec(),
            505,
        ),
        ("body longer than announced", body_too_long.to_vec(), 501),
        ("unknown method", frame(1, 1, &[0, 99, 0, 1]), 540),
        ("truncated method arguments", truncated_method.to_vec(), 502),
        ("malformed field table", bad_table.to_vec(), 502),
        (
            "connection method on channel 0 out of order",
            frame(1, 0, &[0, 10, 0, 30, 0, 0, 0, 0, 0, 0, 0, 0]),
            504,
        ),
        (
            "queue method on channel 0",
            frame(1, 0, &[0, 50, 0, 10, 0, 0, 2, b'q', b'0', 0, 0, 0, 0, 0]),
            504,
        ),
        (
            "binding key that is not UTF-8",
            frame(
                1,
                1,
                &[
                    0, 50, 0, 20, 0, 0, 1, b'q', 10, b'a', b'm', b'q', b'.', b'd', b'i', b'r',
                    b'e', b'c', b't', 2, 0xc3, 0x28, 0, 0, 0, 0, 0,
                ],
            ),
            501,
        ),
    ];
    for (what, bytes, want) in cases {
        let (mut r, _) = Raw::open(b.addr, 0).await;
        r.open_channel(1).await;
        r.send(&bytes).await;
        let (code, text) = r.expect_connection_close().await;
        assert_eq!(code, want, "{what}: {text}");
        assert!(!text.is_empty(), "{what}: reply text explains the error");
        r.expect_eof().await;
        // The healthy client was not disturbed.
        publish(&good, "", "steady", what.as_bytes()).await;
        let d = next(&mut good_consumer).await;
        assert_eq!(d.data, what.as_bytes());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }

    // Truncated frames followed by a disconnect: nothing to answer, nothing breaks.
    for cut in [1usize, 5, 9] {
        let (mut r, _) = Raw::open(b.addr, 0).await;
        let f = frame(1, 0, &[0, 20, 0, 10, 0]);
        r.send(&f[..cut]).await;
        drop(r);
    }
    // Pure garbage instead of a protocol header.
    let mut r = Raw::connect(b.addr).await;
    r.send(&[0xFFu8; 64]).await;
    r.expect_protocol_header_then_eof().await;
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn silent_peer_is_dropped_after_missed_heartbeats_and_its_messages_return() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "hb").await;
    publish(&ch, "", "hb", b"in flight").await;

    let (mut r, _) = Raw::open(b.addr, 1).await;
    r.open_channel(1).await;
    r.method(
        1,
        BasicConsume {
            queue: "hb".into(),
            consumer_tag: "raw".into(),
            ..Default::default()
        },
    )
    .await;
    let mut delivered = false;
    // Read (but never send: no heartbeats) until the server gives up on us.
    while let Some(f) = r.frame().await {
        if let Frame::Method {
            method: Method::BasicDeliver(_),
            ..
        } = f
        {
            delivered = true;
        }
    }
    assert!(
        delivered,
        "the raw consumer got the message before going silent"
    );
    let mut consumer = consume(&ch, "hb", "rescuer").await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"in flight");
    assert!(
        d.redelivered,
        "unacked message of the dead peer comes back redelivered"
    );
    b.stop().await;
}

#[tokio::test]
async fn alarm_holds_a_publishing_connection_until_it_clears() {
    let b = start().await;
    let (mut r, _) = Raw::open(b.addr, 0).await;
    r.open_channel(1).await;
    r.method(
        1,
        QueueDeclare {
            queue: "held".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(
        r.next_method().await,
        Some((1, Method::QueueDeclareOk(_)))
    ));
    let publish_frames = |body: &[u8]| {
        let mut out = BytesMut::new();
        encode_method(
            &mut out,
            1,
            &BasicPublish {
                routing_key: "held".into(),
                ..Default::default()
            }
            .into(),
        );
        encode_header_properties(&mut out, 1, body.len() as u64, &Properties::default());
        out.put_slice(&frame(3, 1, body));
        out
    };
    r.send(&publish_frames(b"one")).await;
    let vhost = b.broker().vhost("/").unwrap();
    let q = vhost.queue("held", 0).ok();
    let count = |q: &Option<std::sync::Arc<ferrymq_core::Queue>>| {
        q.as_ref().map(|q| q.counts().messages).unwrap_or(0)
    };
    eventually(|| count(&q) == 1, "first publish routed").await;

    b.broker().set_blocked(Some("disk low".into()));
    match r.next_method().await {
        Some((0, Method::ConnectionBlocked(bl))) => assert_eq!(bl.reason, "disk low"),
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    // Sent after the server announced the block: it must not be read until the alarm clears.
    r.send(&publish_frames(b"two")).await;
    r.method(
        1,
        QueueDeclare {
            queue: "held".into(),
            passive: true,
            ..Default::default()
        },
    )
    .await;
    // Consumers keep draining meanwhile.
    let (_c, ch) = channel(&b).await;
    assert_eq!(get(&ch, "held").await.unwrap().delivery.data, b"one");
    assert_eq!(
        count(&q),
        0,
        "the held publish was not routed during the alarm"
    );

    b.broker().set_blocked(None);
    assert!(matches!(
        r.next_method().await,
        Some((0, Method::ConnectionUnblocked(_)))
    ));
    match r.next_method().await {
        Some((1, Method::QueueDeclareOk(ok))) => {
            assert_eq!(ok.message_count, 1, "held publish routed after unblock")
        }
        other => panic!("expected declare-ok, got {other:?}"),
    }
    b.stop().await;
}
