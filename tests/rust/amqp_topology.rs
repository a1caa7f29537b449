//! Connection, exchange, queue and binding methods through lapin, including their error paths.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

#[tokio::test]
async fn wrong_password_is_refused_with_403() {
    let b = start().await;
    let uri = format!("amqp://guest:nope@{}/%2f", b.addr);
    let e = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403), "{e}");
    b.stop().await;
}

#[tokio::test]
async fn unknown_vhost_is_refused_with_530() {
    let b = start().await;
    let uri = format!("amqp://guest:guest@{}/nosuch", b.addr);
    let e = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(530), "{e}");
    assert!(text(&e).contains("nosuch"), "{e}");
    b.stop().await;
}

#[tokio::test]
async fn exchange_declare_passive_and_redeclare_rules() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare_exchange(&ch, "logs", ExchangeKind::Fanout)
        .await
        .unwrap();
    // Same declaration again is fine; passive finds it.
    declare_exchange(&ch, "logs", ExchangeKind::Fanout)
        .await
        .unwrap();
    passive_exchange(&ch, "logs").await.unwrap();
    // The standard exchanges exist.
    for x in [
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
    ] {
        passive_exchange(&ch, x).await.unwrap();
    }
    // Different type: 406 and the channel closes.
    let e = declare_exchange(&ch, "logs", ExchangeKind::Direct)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert!(text(&e).contains("inequivalent arg 'type'"), "{e}");

    let ch = c.create_channel().await.unwrap();
    let e = passive_exchange(&ch, "nope").await.unwrap_err();
    assert_eq!(code(&e), Some(404));
    assert!(text(&e).contains("no exchange 'nope' in vhost '/'"), "{e}");

    let ch = c.create_channel().await.unwrap();
    let e = declare_exchange(&ch, "amq.mine", ExchangeKind::Direct)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403));

    let ch = c.create_channel().await.unwrap();
    let e = ch
        .exchange_delete("", ExchangeDeleteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403));
    b.stop().await;
}

#[tokio::test]
async fn unknown_exchange_type_closes_connection_with_503() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    let e = ch
        .exchange_declare(
            "x",
            ExchangeKind::Custom("bogus".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(503), "{e}");
    eventually(|| !c.status().connected(), "connection closed").await;
    b.stop().await;
}

#[tokio::test]
async fn exchange_delete_if_unused() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    declare_exchange(&ch, "x", ExchangeKind::Direct)
        .await
        .unwrap();
    queue(&ch, "q").await;
    bind(&ch, "q", "x", "k").await.unwrap();
    let e = ch
        .exchange_delete(
            "x",
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    let ch = c.create_channel().await.unwrap();
    ch.exchange_delete("x", ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let e = passive_exchange(&ch, "x").await.unwrap_err();
    assert_eq!(code(&e), Some(404));
    b.stop().await;
}

#[tokio::test]
async fn direct_fanout_and_exchange_to_exchange_routing() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    for q in ["d1", "d2", "f1", "f2"] {
        queue(&ch, q).await;
    }
    declare_exchange(&ch, "dx", ExchangeKind::Direct)
        .await
        .unwrap();
    declare_exchange(&ch, "fx", ExchangeKind::Fanout)
        .await
        .unwrap();
    bind(&ch, "d1", "dx", "red").await.unwrap();
    bind(&ch, "d2", "dx", "blue").await.unwrap();
    bind(&ch, "f1", "fx", "").await.unwrap();
    bind(&ch, "f2", "fx", "ignored").await.unwrap();
    // fx receives everything dx routes with key "red".
    ch.exchange_bind(
        "fx",
        "dx",
        "red",
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    publish(&ch, "dx", "red", b"r").await;
    publish(&ch, "dx", "blue", b"b").await;
    publish(&ch, "dx", "green", b"g").await;

    let body = |m: Option<lapin::message::BasicGetMessage>| m.map(|m| m.delivery.data.clone());
    assert_eq!(body(get(&ch, "d1").await), Some(b"r".to_vec()));
    assert_eq!(body(get(&ch, "d2").await), Some(b"b".to_vec()));
    assert_eq!(body(get(&ch, "f1").await), Some(b"r".to_vec()));
    assert_eq!(body(get(&ch, "f2").await), Some(b"r".to_vec()));
    for q in ["d1", "d2", "f1", "f2"] {
        assert!(get(&ch, q).await.is_none(), "{q} should be empty");
    }

    ch.exchange_unbind(
        "fx",
        "dx",
        "red",
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_unbind("d1", "dx", "red", FieldTable::default())
        .await
        .unwrap();
    publish(&ch, "dx", "red", b"r2").await;
    assert!(get(&ch, "d1").await.is_none());
    assert!(get(&ch, "f1").await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn topic_routing_matches_rabbitmq() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    let binds = [
        ("q_star", "*.orange.*"),
        ("q_rabbit", "*.*.rabbit"),
        ("q_lazy", "lazy.#"),
        ("q_all", "#"),
        ("q_empty", ""),
    ];
    for (q, k) in binds {
        queue(&ch, q).await;
        bind(&ch, q, "amq.topic", k).await.unwrap();
    }
    let cases: &[(&str, &[&str])] = &[
        ("quick.orange.rabbit", &["q_star", "q_rabbit", "q_all"]),
        ("lazy.orange.elephant", &["q_star", "q_lazy", "q_all"]),
        ("lazy", &["q_lazy", "q_all"]),
        ("quick.orange.male.rabbit", &["q_all"]),
        ("", &["q_all", "q_empty"]),
        ("a..rabbit", &["q_rabbit", "q_all"]),
    ];
    for (key, want) in cases {
        publish(&ch, "amq.topic", key, key.as_bytes()).await;
        for (q, _) in binds {
            let got = get(&ch, q).await;
            if want.contains(&q) {
                let m = got.unwrap_or_else(|| panic!("{q} should get {key:?}"));
                assert_eq!(m.delivery.data, key.as_bytes());
                m.delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
            } else {
                assert!(got.is_none(), "{q} should not get {key:?}");
            }
        }
    }
    b.stop().await;
}

#[tokio::test]
async fn headers_exchange_all_and_any() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "all").await;
    queue(&ch, "any").await;
    ch.queue_bind(
        "all",
        "amq.headers",
        "",
        QueueBindOptions::default(),
        table(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "any",
        "amq.headers",
        "",
        QueueBindOptions::default(),
        table(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]),
    )
    .await
    .unwrap();
    let send = |h: FieldTable| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                "amq.headers",
                "",
                BasicPublishOptions::default(),
                b"m",
                BasicProperties::default().with_headers(h),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    send(table(&[("format", s("pdf")), ("type", s("report"))])).await;
    assert!(get(&ch, "all").await.is_some());
    assert!(get(&ch, "any").await.is_some());
    send(table(&[("format", s("pdf")), ("type", s("log"))])).await;
    assert!(get(&ch, "all").await.is_none());
    assert!(get(&ch, "any").await.is_some());
    send(table(&[("format", s("zip"))])).await;
    assert!(get(&ch, "all").await.is_none());
    assert!(get(&ch, "any").await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn alternate_exchange_receives_unroutable_messages() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    declare_exchange(&ch, "ae", ExchangeKind::Fanout)
        .await
        .unwrap();
    ch.exchange_declare(
        "main",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        table(&[("alternate-exchange", s("ae"))]),
    )
    .await
    .unwrap();
    queue(&ch, "unrouted").await;
    queue(&ch, "routed").await;
    bind(&ch, "unrouted", "ae", "").await.unwrap();
    bind(&ch, "routed", "main", "ok").await.unwrap();
    publish(&ch, "main", "ok", b"1").await;
    publish(&ch, "main", "other", b"2").await;
    assert_eq!(get(&ch, "routed").await.unwrap().delivery.data, b"1");
    assert_eq!(get(&ch, "unrouted").await.unwrap().delivery.data, b"2");
    assert!(get(&ch, "unrouted").await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn internal_exchange_refuses_direct_publish() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.exchange_declare(
        "int",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let r = ch
        .basic_publish(
            "int",
            "",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    let e = match r {
        Ok(confirm) => confirm.await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(code(&e), Some(403), "{e}");
    b.stop().await;
}

#[tokio::test]
async fn publish_to_missing_exchange_closes_channel_with_404() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let r = ch
        .basic_publish(
            "missing",
            "k",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    let e = match r {
        Ok(confirm) => confirm.await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(code(&e), Some(404), "{e}");
    assert!(
        c.status().connected(),
        "a channel error keeps the connection"
    );
    b.stop().await;
}

#[tokio::test]
async fn queue_declare_server_named_counts_and_passive() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen-"), "{}", q.name());
    queue(&ch, "counted").await;
    for _ in 0..3 {
        publish(&ch, "", "counted", b"m").await;
    }
    let _consumer = consume(&ch, q.name().as_str(), "c1").await;
    let gen = passive_queue(&ch, q.name().as_str()).await.unwrap();
    assert_eq!(gen.consumer_count(), 1, "declare-ok reports consumers");
    let again = passive_queue(&ch, "counted").await.unwrap();
    assert_eq!(again.message_count(), 3);
    let e = passive_queue(&ch, "absent").await.unwrap_err();
    assert_eq!(code(&e), Some(404));
    assert!(text(&e).contains("no queue 'absent' in vhost '/'"), "{e}");
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            "amq.reserved",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403));
    b.stop().await;
}

#[tokio::test]
async fn queue_redeclare_with_other_arguments_is_406() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    let args = table(&[("x-max-length", AMQPValue::LongInt(10))]);
    ch.queue_declare("q", QueueDeclareOptions::default(), args.clone())
        .await
        .unwrap();
    ch.queue_declare("q", QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let e = ch
        .queue_declare(
            "q",
            QueueDeclareOptions::default(),
            table(&[("x-max-length", AMQPValue::LongInt(20))]),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert_eq!(
        text(&e),
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received '20' but current is '10'"
    );
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            "q",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            "bad",
            QueueDeclareOptions::default(),
            table(&[("x-max-length", s("ten"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert_eq!(
        text(&e),
        "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'bad' in vhost '/': \"expected integer, got longstr\""
    );
    b.stop().await;
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_deleted_with_it() {
    let b = start().await;
    let (c1, ch1) = channel(&b).await;
    ch1.queue_declare(
        "mine",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (_c2, ch2) = channel(&b).await;
    let e = passive_queue(&ch2, "mine").await.unwrap_err();
    assert_eq!(code(&e), Some(405), "{e}");
    let (_c3, ch3) = channel(&b).await;
    let e = ch3
        .basic_consume(
            "mine",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(405));
    // Others may still publish to it (RPC reply queues rely on this).
    let (_c4, ch4) = channel(&b).await;
    publish(&ch4, "", "mine", b"reply").await;
    assert_eq!(get(&ch1, "mine").await.unwrap().delivery.data, b"reply");
    c1.close(200, "bye").await.unwrap();
    let ch5 = _c4.create_channel().await.unwrap();
    let vhost = b.broker().vhost("/").unwrap();
    eventually(
        || vhost.queue("mine", 0).is_err(),
        "exclusive queue deleted",
    )
    .await;
    let e = passive_queue(&ch5, "mine").await.unwrap_err();
    assert_eq!(code(&e), Some(404));
    b.stop().await;
}

#[tokio::test]
async fn queue_purge_and_delete_conditions() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    queue(&ch, "q").await;
    for _ in 0..4 {
        publish(&ch, "", "q", b"m").await;
    }
    let e = ch
        .queue_delete(
            "q",
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert!(text(&e).contains("not empty"), "{e}");
    let ch = c.create_channel().await.unwrap();
    assert_eq!(
        ch.queue_purge("q", QueuePurgeOptions::default())
            .await
            .unwrap(),
        4
    );
    let _consumer = consume(&ch, "q", "busy").await;
    let ch2 = c.create_channel().await.unwrap();
    let e = ch2
        .queue_delete(
            "q",
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert!(text(&e).contains("in use"), "{e}");
    let ch3 = c.create_channel().await.unwrap();
    publish(&ch3, "", "other", b"unrouted").await;
    queue(&ch3, "full").await;
    publish(&ch3, "", "full", b"1").await;
    publish(&ch3, "", "full", b"2").await;
    assert_eq!(
        ch3.queue_delete("full", QueueDeleteOptions::default())
            .await
            .unwrap(),
        2
    );
    // Deleting a queue that does not exist succeeds, as in RabbitMQ.
    assert_eq!(
        ch3.queue_delete("full", QueueDeleteOptions::default())
            .await
            .unwrap(),
        0
    );
    b.stop().await;
}

#[tokio::test]
async fn bind_errors_name_the_missing_entity() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    queue(&ch, "q").await;
    let e = bind(&ch, "q", "nox", "k").await.unwrap_err();
    assert_eq!(code(&e), Some(404));
    assert!(text(&e).contains("no exchange 'nox'"), "{e}");
    let ch = c.create_channel().await.unwrap();
    let e = bind(&ch, "noq", "amq.direct", "k").await.unwrap_err();
    assert_eq!(code(&e), Some(404));
    assert!(text(&e).contains("no queue 'noq'"), "{e}");
    let ch = c.create_channel().await.unwrap();
    let e = bind(&ch, "q", "", "k").await.unwrap_err();
    assert_eq!(code(&e), Some(403));
    b.stop().await;
}

#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.queue_declare(
        "ad",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _c1 = consume(&ch, "ad", "c1").await;
    let _c2 = consume(&ch, "ad", "c2").await;
    ch.basic_cancel("c1", BasicCancelOptions::default())
        .await
        .unwrap();
    passive_queue(&ch, "ad").await.unwrap();
    ch.basic_cancel("c2", BasicCancelOptions::default())
        .await
        .unwrap();
    let e = passive_queue(&ch, "ad").await.unwrap_err();
    assert_eq!(code(&e), Some(404));
    b.stop().await;
}
