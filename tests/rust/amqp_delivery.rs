//! Consuming, acknowledging, prefetch, confirms, transactions, flow, blocking and direct
//! reply-to through lapin.

mod common;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use std::sync::{Arc, Mutex};

async fn ready_count(ch: &Channel, q: &str) -> u32 {
    passive_queue(ch, q)
        .await
        .expect("passive declare")
        .message_count()
}

/// Captures the error that closes a channel (lapin reports async closes through on_error).
fn capture_errors(ch: &Channel) -> Arc<Mutex<Option<lapin::Error>>> {
    let slot = Arc::new(Mutex::new(None));
    let s = slot.clone();
    ch.on_error(move |e| {
        *s.lock().unwrap() = Some(e);
    });
    slot
}

#[tokio::test]
async fn consume_ack_and_server_generated_tag() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "q").await;
    let mut consumer = consume(&ch, "q", "").await;
    assert!(
        consumer.tag().as_str().starts_with("amq.ctag-"),
        "{}",
        consumer.tag()
    );
    for i in 0..10u8 {
        publish(&ch, "", "q", &[i]).await;
    }
    for i in 0..10u8 {
        let d = next(&mut consumer).await;
        assert_eq!(d.data, vec![i], "FIFO order");
        assert!(!d.redelivered);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(ready_count(&ch, "q").await, 0);
    b.stop().await;
}

#[tokio::test]
async fn prefetch_one_gives_fair_dispatch() {
    let b = start().await;
    let c = connect(&b).await;
    let ch_a = c.create_channel().await.unwrap();
    let ch_b = c.create_channel().await.unwrap();
    queue(&ch_a, "work").await;
    ch_a.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    ch_b.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut a = consume(&ch_a, "work", "a").await;
    let mut bb = consume(&ch_b, "work", "b").await;
    for i in 0..4u8 {
        publish(&ch_a, "", "work", &[i]).await;
    }
    let da = next(&mut a).await;
    let db = next(&mut bb).await;
    assert_eq!((da.data[0], db.data[0]), (0, 1), "round robin");
    // Each consumer holds one unacked message, so two stay ready.
    assert_eq!(ready_count(&ch_a, "work").await, 2);
    da.ack(BasicAckOptions::default()).await.unwrap();
    let da2 = next(&mut a).await;
    assert_eq!(
        da2.data[0], 2,
        "the consumer that acked gets the next message"
    );
    assert_eq!(ready_count(&ch_a, "work").await, 1);
    b.stop().await;
}

#[tokio::test]
async fn global_qos_limits_the_whole_channel() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "q1").await;
    queue(&ch, "q2").await;
    ch.basic_qos(2, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut c1 = consume(&ch, "q1", "c1").await;
    let _c2 = consume(&ch, "q2", "c2").await;
    for _ in 0..3 {
        publish(&ch, "", "q1", b"1").await;
        publish(&ch, "", "q2", b"2").await;
    }
    let total_ready = ready_count(&ch, "q1").await + ready_count(&ch, "q2").await;
    assert_eq!(
        total_ready, 4,
        "only 2 deliveries outstanding on the channel"
    );
    let d = next(&mut c1).await;
    d.ack(BasicAckOptions::default()).await.unwrap();
    eventually_ready(&ch, 3).await;
    b.stop().await;
}

async fn eventually_ready(ch: &Channel, want: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = ready_count(ch, "q1").await + ready_count(ch, "q2").await;
        if n == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready count stuck at {n}, want {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn no_ack_consumer_settles_on_delivery() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "q").await;
    let mut consumer = ch
        .basic_consume(
            "q",
            "na",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..5 {
        publish(&ch, "", "q", b"x").await;
    }
    for _ in 0..5 {
        next(&mut consumer).await;
    }
    ch.basic_cancel("na", BasicCancelOptions::default())
        .await
        .unwrap();
    assert_eq!(ready_count(&ch, "q").await, 0);
    b.stop().await;
}

#[tokio::test]
async fn exclusive_consumer_refuses_others() {
    let b = start().await;
    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "q").await;
    // lapin cancels a consumer when its handle drops, so keep it.
    let _solo = ch
        .basic_consume(
            "q",
            "solo",
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch2 = c.create_channel().await.unwrap();
    let e = ch2
        .basic_consume(
            "q",
            "other",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403));
    assert!(text(&e).contains("in exclusive use"), "{e}");
    // And an exclusive consumer cannot join a queue that has consumers.
    let ch3 = c.create_channel().await.unwrap();
    queue(&ch3, "shared").await;
    let _first = consume(&ch3, "shared", "first").await;
    let e = ch3
        .basic_consume(
            "shared",
            "second",
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403));
    b.stop().await;
}

#[tokio::test]
async fn reusing_a_consumer_tag_is_530() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "q").await;
    let _dup = consume(&ch, "q", "dup").await;
    let e = ch
        .basic_consume(
            "q",
            "dup",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(530), "{e}");
    b.stop().await;
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "doomed").await;
    let mut consumer = consume(&ch, "doomed", "watcher").await;
    let (_c2, ch2) = channel(&b).await;
    ch2.queue_delete("doomed", QueueDeleteOptions::default())
        .await
        .unwrap();
    let end = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("consumer ends");
    assert!(
        end.is_none(),
        "basic.cancel from the server ends the consumer stream"
    );
    b.stop().await;
}

#[tokio::test]
async fn reject_requeues_to_its_original_place_with_redelivered() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "q").await;
    for i in 1..=3u8 {
        publish(&ch, "", "q", &[i]).await;
    }
    let m1 = get(&ch, "q").await.unwrap();
    let m2 = get(&ch, "q").await.unwrap();
    assert_eq!((m1.delivery.data[0], m2.delivery.data[0]), (1, 2));
    m1.delivery
        .acker
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let again = get(&ch, "q").await.unwrap();
    assert_eq!(
        again.delivery.data[0], 1,
        "requeued message goes back to its place, not the tail"
    );
    assert!(again.delivery.redelivered);
    // nack without requeue drops the message.
    m2.delivery
        .acker
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .unwrap();
    again
        .delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let m3 = get(&ch, "q").await.unwrap();
    assert_eq!(m3.delivery.data[0], 3);
    assert!(!m3.delivery.redelivered);
    assert!(get(&ch, "q").await.is_none(), "basic.get-empty");
    b.stop().await;
}

#[tokio::test]
async fn ack_multiple_and_requeue_on_channel_close() {
    let b = start().await;
    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "q").await;
    for i in 1..=3u8 {
        publish(&ch, "", "q", &[i]).await;
    }
    let mut tags = Vec::new();
    for _ in 0..3 {
        tags.push(get(&ch, "q").await.unwrap().delivery.delivery_tag);
    }
    ch.basic_ack(tags[1], BasicAckOptions { multiple: true })
        .await
        .unwrap();
    ch.close(200, "done").await.unwrap();
    let ch2 = c.create_channel().await.unwrap();
    let m = get(&ch2, "q")
        .await
        .expect("unacked message requeued when its channel closed");
    assert_eq!(m.delivery.data, vec![3]);
    assert!(m.delivery.redelivered);
    assert!(get(&ch2, "q").await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn unknown_delivery_tag_closes_the_channel_with_406() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    let err = capture_errors(&ch);
    ch.basic_ack(99, BasicAckOptions::default()).await.unwrap();
    eventually(|| err.lock().unwrap().is_some(), "channel error").await;
    let e = err.lock().unwrap().take().unwrap();
    assert_eq!(code(&e), Some(406));
    assert!(text(&e).contains("unknown delivery tag 99"), "{e}");
    assert!(c.status().connected());
    b.stop().await;
}

#[tokio::test]
async fn unacked_messages_return_when_a_connection_dies() {
    let b = start().await;
    let (c1, ch1) = channel(&b).await;
    queue(&ch1, "q").await;
    publish(&ch1, "", "q", b"important").await;
    let mut consumer = consume(&ch1, "q", "first").await;
    let d = next(&mut consumer).await;
    assert!(!d.redelivered);
    c1.close(200, "crash").await.unwrap();
    let (_c2, ch2) = channel(&b).await;
    let mut consumer2 = consume(&ch2, "q", "second").await;
    let d2 = next(&mut consumer2).await;
    assert_eq!(d2.data, b"important");
    assert!(d2.redelivered);
    b.stop().await;
}

#[tokio::test]
async fn recover_requeues_unacked_and_requeue_false_is_540() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "q").await;
    publish(&ch, "", "q", b"a").await;
    publish(&ch, "", "q", b"b").await;
    get(&ch, "q").await.unwrap();
    get(&ch, "q").await.unwrap();
    assert_eq!(ready_count(&ch, "q").await, 0);
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    assert_eq!(ready_count(&ch, "q").await, 2);
    let m = get(&ch, "q").await.unwrap();
    assert_eq!(m.delivery.data, b"a");
    assert!(m.delivery.redelivered);

    let (c2, ch2) = channel(&b).await;
    let e = ch2
        .basic_recover(BasicRecoverOptions { requeue: false })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(540), "{e}");
    eventually(|| !c2.status().connected(), "connection closed").await;
    b.stop().await;
}

#[tokio::test]
async fn confirms_ack_every_publish_and_mandatory_returns_312() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    queue(&ch, "q").await;
    let mut pending = Vec::new();
    for i in 0..200u32 {
        pending.push(
            ch.basic_publish(
                "",
                "q",
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert_eq!(p.await.unwrap(), Confirmation::Ack(None));
    }
    assert_eq!(ready_count(&ch, "q").await, 200);
    let conf = ch
        .basic_publish(
            "",
            "nowhere",
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let returned = conf.take_message().expect("basic.return before the ack");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.data, b"lost");
    b.stop().await;
}

#[tokio::test]
async fn tx_commit_and_rollback_cover_publishes_and_acks() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    queue(&ch, "q").await;
    let observer = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    publish(&ch, "", "q", b"1").await;
    publish(&ch, "", "q", b"2").await;
    assert_eq!(
        ready_count(&observer, "q").await,
        0,
        "nothing visible before commit"
    );
    ch.tx_commit().await.unwrap();
    assert_eq!(ready_count(&observer, "q").await, 2);
    publish(&ch, "", "q", b"3").await;
    ch.tx_rollback().await.unwrap();
    assert_eq!(
        ready_count(&observer, "q").await,
        2,
        "rolled back publish discarded"
    );

    let m = get(&ch, "q").await.unwrap();
    m.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    ch.tx_rollback().await.unwrap();
    // The ack was rolled back: the delivery is still unacked, so it can be acked now.
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    ch.tx_commit().await.unwrap();
    ch.close(200, "bye").await.unwrap();
    assert_eq!(
        ready_count(&observer, "q").await,
        1,
        "committed ack removed the message"
    );

    let e = observer.tx_commit().await.unwrap_err();
    assert_eq!(code(&e), Some(406));
    b.stop().await;
}

#[tokio::test]
async fn confirm_and_tx_modes_exclude_each_other() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let e = ch.tx_select().await.unwrap_err();
    assert_eq!(code(&e), Some(406));
    let ch = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    let e = ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    b.stop().await;
}

#[tokio::test]
async fn a_client_may_resume_but_not_pause_its_deliveries_with_channel_flow() {
    // RabbitMQ 3.10 closes the connection with 540 on channel.flow(active=false) from a
    // client; active=true is answered.
    let b = start().await;
    let (c, ch) = channel(&b).await;
    ch.channel_flow(ChannelFlowOptions { active: true })
        .await
        .unwrap();
    let e = ch
        .channel_flow(ChannelFlowOptions { active: false })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(540), "{e}");
    // A connection error: the connection is gone, not only the channel.
    assert!(c.create_channel().await.is_err());
    b.stop().await;
}

#[tokio::test]
async fn publishing_connection_is_told_blocked_and_unblocked() {
    // lapin pauses all its writes while blocked, so holding of publishes is tested with a raw
    // client in amqp_bad_input.rs; here: the notifications reach a real client.
    let b = start().await;
    let (pc, pub_ch) = channel(&b).await;
    queue(&pub_ch, "q").await;
    publish(&pub_ch, "", "q", b"before").await;
    b.broker().set_blocked(Some("low on memory".into()));
    eventually(
        || pc.status().blocked(),
        "connection.blocked seen by the client",
    )
    .await;
    b.broker().set_blocked(None);
    eventually(
        || !pc.status().blocked(),
        "connection.unblocked seen by the client",
    )
    .await;
    publish(&pub_ch, "", "q", b"after").await;
    assert_eq!(ready_count(&pub_ch, "q").await, 2);
    b.stop().await;
}

#[tokio::test]
async fn direct_reply_to_rpc() {
    let b = start().await;
    let (_sc, server) = channel(&b).await;
    queue(&server, "rpc").await;
    let mut requests = consume(&server, "rpc", "srv").await;

    let (_cc, client) = channel(&b).await;
    let mut replies = client
        .basic_consume(
            "amq.rabbitmq.reply-to",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    client
        .basic_publish(
            "",
            "rpc",
            BasicPublishOptions::default(),
            b"2+2",
            BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id("c-1".into()),
        )
        .await
        .unwrap();
    let req = next(&mut requests).await;
    let reply_to = req
        .properties
        .reply_to()
        .clone()
        .expect("reply_to")
        .to_string();
    assert!(reply_to.starts_with("amq.rabbitmq.reply-to."), "{reply_to}");
    server
        .basic_publish(
            "",
            &reply_to,
            BasicPublishOptions::default(),
            b"4",
            BasicProperties::default()
                .with_correlation_id(req.properties.correlation_id().clone().unwrap()),
        )
        .await
        .unwrap();
    req.ack(BasicAckOptions::default()).await.unwrap();
    let rep = next(&mut replies).await;
    assert_eq!(rep.data, b"4");
    assert_eq!(
        rep.properties.correlation_id().as_ref().map(|s| s.as_str()),
        Some("c-1")
    );

    // Without a reply consumer on the channel the publish is refused.
    let (_c3, other) = channel(&b).await;
    let err = capture_errors(&other);
    other
        .basic_publish(
            "",
            "rpc",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await
        .unwrap();
    eventually(|| err.lock().unwrap().is_some(), "channel error").await;
    let e = err.lock().unwrap().take().unwrap();
    assert_eq!(code(&e), Some(406));
    assert!(
        text(&e).contains("fast reply consumer does not exist"),
        "{e}"
    );

    // Reply consumers must be no-ack.
    let (_c4, acking) = channel(&b).await;
    let e = acking
        .basic_consume(
            "amq.rabbitmq.reply-to",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    b.stop().await;
}

#[tokio::test]
async fn oversize_message_is_refused_with_406_and_connection_survives() {
    let b = start_with(|c| c.max_message_size = 1024).await;
    let (c, ch) = channel(&b).await;
    queue(&ch, "q").await;
    let err = capture_errors(&ch);
    ch.basic_publish(
        "",
        "q",
        BasicPublishOptions::default(),
        &[0u8; 2048],
        BasicProperties::default(),
    )
    .await
    .unwrap();
    eventually(|| err.lock().unwrap().is_some(), "channel error").await;
    let e = err.lock().unwrap().take().unwrap();
    assert_eq!(code(&e), Some(406));
    assert!(
        text(&e).contains("larger than configured max size 1024"),
        "{e}"
    );
    let ch2 = c.create_channel().await.unwrap();
    publish(&ch2, "", "q", &[1u8; 1000]).await;
    assert_eq!(get(&ch2, "q").await.unwrap().delivery.data.len(), 1000);
    b.stop().await;
}

#[tokio::test]
async fn large_messages_span_many_frames_and_arrive_intact() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "big").await;
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", "big", &body).await;
    let mut consumer = consume(&ch, "big", "").await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data.len(), body.len());
    assert!(d.data == body, "body intact");
    b.stop().await;
}

#[tokio::test]
async fn fanout_delivers_one_copy_per_queue() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    let mut consumers = Vec::new();
    for i in 0..5 {
        let q = format!("f{i}");
        queue(&ch, &q).await;
        bind(&ch, &q, "amq.fanout", "").await.unwrap();
        consumers.push(consume(&ch, &q, "").await);
    }
    publish(&ch, "amq.fanout", "", b"broadcast").await;
    for c in consumers.iter_mut() {
        assert_eq!(next(c).await.data, b"broadcast");
    }
    b.stop().await;
}
