//! Access control, runtime administration and limits through a real client (lapin): admin
//! changes made on a running broker reach live connections and survive a restart; limits
//! and the consumer timeout answer with RabbitMQ's errors.

mod common;

use common::*;
use ferrymq_core::access::{Permission, TopicPermission};
use ferrymq_core::admin::Credential;
use ferrymq_core::limits::{UserLimits, VHostLimits};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn connect_as(
    b: &TestBroker,
    user: &str,
    pass: &str,
    vhost: &str,
) -> lapin::Result<Connection> {
    let vhost = vhost.replace('/', "%2f");
    let uri = format!("amqp://{user}:{pass}@{}/{vhost}", b.addr);
    Connection::connect(&uri, ConnectionProperties::default()).await
}

/// Records the error a channel or connection is closed with.
fn errors_of_channel(ch: &Channel) -> Arc<Mutex<Option<lapin::Error>>> {
    let slot = Arc::new(Mutex::new(None));
    let s = slot.clone();
    ch.on_error(move |e| {
        *s.lock().unwrap() = Some(e);
    });
    slot
}

fn errors_of_connection(c: &Connection) -> Arc<Mutex<Option<lapin::Error>>> {
    let slot = Arc::new(Mutex::new(None));
    let s = slot.clone();
    c.on_error(move |e| {
        *s.lock().unwrap() = Some(e);
    });
    slot
}

async fn closed_with(slot: &Arc<Mutex<Option<lapin::Error>>>) -> (u16, String) {
    eventually(|| slot.lock().unwrap().is_some(), "closed by the broker").await;
    let e = slot.lock().unwrap().take().unwrap();
    (code(&e).unwrap_or(0), text(&e))
}

fn app_permission() -> Permission {
    Permission {
        configure: "^app\\.".into(),
        write: ".*".into(),
        read: ".*".into(),
    }
}

#[tokio::test]
async fn runtime_admin_changes_reach_live_connections_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let b = start_with(|c| c.data_dir = data.clone()).await;
    let broker = b.broker().clone();
    broker
        .put_user("app", Credential::Password("pw".into()), &["management"])
        .unwrap();
    broker
        .set_permissions("app", "/", app_permission())
        .unwrap();
    broker
        .set_topic_permissions(
            "app",
            "/",
            TopicPermission {
                exchange: "amq.topic".into(),
                write: "^app\\.".into(),
                read: ".*".into(),
            },
        )
        .unwrap();
    drop(broker);
    b.stop().await;

    // Everything above was saved: after a restart the user logs in with the same rights.
    let b = start_with(|c| c.data_dir = data.clone()).await;
    let c = connect_as(&b, "app", "pw", "/").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "app.q").await;
    let e = ch
        .queue_declare(
            "other",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403));
    assert_eq!(
        text(&e),
        "ACCESS_REFUSED - access to queue 'other' in vhost '/' refused for user 'app'"
    );

    // A live connection sees a permission change at its next operation.
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish(&ch, "", "app.q", b"allowed").await;
    b.broker()
        .set_permissions(
            "app",
            "/",
            Permission {
                write: "".into(),
                ..app_permission()
            },
        )
        .unwrap();
    let errors = errors_of_channel(&ch);
    let _ = ch
        .basic_publish(
            "",
            "app.q",
            BasicPublishOptions::default(),
            b"refused",
            BasicProperties::default(),
        )
        .await;
    let (code_, text_) = closed_with(&errors).await;
    assert_eq!(code_, 403);
    assert_eq!(
        text_,
        "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'app'"
    );

    // Topic permissions survived the restart too.
    b.broker()
        .set_permissions("app", "/", app_permission())
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    let errors = errors_of_channel(&ch);
    let _ = ch
        .basic_publish(
            "amq.topic",
            "other.key",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    let (code_, text_) = closed_with(&errors).await;
    assert_eq!(code_, 403);
    assert_eq!(
        text_,
        "ACCESS_REFUSED - access to topic 'other.key' in exchange 'amq.topic' in vhost '/' refused for user 'app'"
    );

    // Deleting the user closes its connection; it cannot log in again.
    let conn_errors = errors_of_connection(&c);
    b.broker().delete_user("app").unwrap();
    let (code_, text_) = closed_with(&conn_errors).await;
    assert_eq!(code_, 320);
    assert!(text_.contains("user 'app' is deleted"), "{text_}");
    assert!(connect_as(&b, "app", "pw", "/").await.is_err());
    // The messages published before stay.
    let (_g, gch) = channel(&b).await;
    assert_eq!(get(&gch, "app.q").await.unwrap().delivery.data, b"allowed");
    b.stop().await;
}

#[tokio::test]
async fn deleting_a_vhost_closes_its_connections_and_deletes_what_it_held() {
    let b = start().await;
    let broker = b.broker().clone();
    broker.add_vhost("shop").unwrap();
    broker
        .set_permissions("guest", "shop", Permission::all())
        .unwrap();
    let c = connect_as(&b, "guest", "guest", "shop").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("orders", durable, FieldTable::default())
        .await
        .unwrap();
    publish(&ch, "", "orders", b"pending").await;
    let errors = errors_of_connection(&c);
    broker.delete_vhost("shop").unwrap();
    let (code_, text_) = closed_with(&errors).await;
    assert_eq!(code_, 320);
    assert!(text_.contains("vhost 'shop' is deleted"), "{text_}");
    let e = connect_as(&b, "guest", "guest", "shop").await.unwrap_err();
    assert!(text(&e).contains("vhost shop not found"), "{}", text(&e));
    // A new vhost of the same name starts empty.
    broker.add_vhost("shop").unwrap();
    broker
        .set_permissions("guest", "shop", Permission::all())
        .unwrap();
    let c = connect_as(&b, "guest", "guest", "shop").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let e = passive_queue(&ch, "orders").await.unwrap_err();
    assert_eq!(code(&e), Some(404));
    b.stop().await;
}

#[tokio::test]
async fn connection_channel_and_queue_limits_answer_with_rabbitmq_errors() {
    let b = start().await;
    let broker = b.broker().clone();
    broker
        .set_vhost_limits(
            "/",
            VHostLimits {
                max_connections: Some(2),
                max_queues: Some(1),
            },
        )
        .unwrap();
    let c1 = connect(&b).await;
    let _c2 = connect(&b).await;
    let e = Connection::connect(&b.uri(), ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(530));
    assert_eq!(
        text(&e),
        "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (2) is reached"
    );

    let ch = c1.create_channel().await.unwrap();
    queue(&ch, "only").await;
    let e = ch
        .queue_declare(
            "second",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert_eq!(
        text(&e),
        "PRECONDITION_FAILED - cannot declare queue 'second': queue limit in vhost '/' (1) is reached"
    );

    broker
        .set_user_limits(
            "guest",
            UserLimits {
                max_connections: None,
                max_channels: Some(1),
            },
        )
        .unwrap();
    broker
        .set_vhost_limits("/", VHostLimits::default())
        .unwrap();
    c1.close(200, "bye").await.unwrap();
    let c3 = connect(&b).await;
    let _first = c3.create_channel().await.unwrap();
    let e = c3.create_channel().await.unwrap_err();
    assert_eq!(code(&e), Some(530));
    assert_eq!(
        text(&e),
        "NOT_ALLOWED - number of channels opened for user 'guest' has reached the maximum allowed user limit of (1)"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_consumer_that_never_acks_loses_its_channel_and_the_messages_return() {
    let b = start_with(|c| c.consumer_timeout = 1000).await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "slow").await;
    publish(&ch, "", "slow", b"one").await;
    publish(&ch, "", "slow", b"two").await;
    let errors = errors_of_channel(&ch);
    let mut consumer = consume(&ch, "slow", "lazy").await;
    let first = next(&mut consumer).await;
    assert_eq!(first.data, b"one");
    let (code_, text_) = closed_with(&errors).await;
    assert_eq!(code_, 406);
    assert_eq!(
        text_,
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 1000 ms. This timeout value can be configured, see consumers doc guide to learn more"
    );
    let (_c2, ch2) = channel(&b).await;
    let again = get(&ch2, "slow").await.unwrap();
    assert_eq!(again.delivery.data, b"one");
    assert!(again.delivery.redelivered);
    assert_eq!(get(&ch2, "slow").await.unwrap().delivery.data, b"two");
    b.stop().await;
}

#[tokio::test]
async fn x_consumer_timeout_sets_the_timeout_per_queue() {
    // The broker-wide timeout is the default 30 minutes; the queue asks for 500 ms.
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.queue_declare(
        "strict",
        QueueDeclareOptions::default(),
        table(&[("x-consumer-timeout", int(500))]),
    )
    .await
    .unwrap();
    publish(&ch, "", "strict", b"m").await;
    let errors = errors_of_channel(&ch);
    let mut consumer = consume(&ch, "strict", "c").await;
    next(&mut consumer).await;
    let (code_, text_) = closed_with(&errors).await;
    assert_eq!(code_, 406);
    assert!(text_.contains("Timeout value used: 500 ms"), "{text_}");
    b.stop().await;
}

#[tokio::test]
async fn definitions_loaded_at_boot_create_users_with_their_rights() {
    let dir = tempfile::tempdir().unwrap();
    let defs = dir.path().join("defs.json");
    std::fs::write(
        &defs,
        r#"{
          "users": [{"name": "sensor", "password": "pw", "tags": []}],
          "vhosts": [{"name": "iot"}],
          "permissions": [{"user": "sensor", "vhost": "iot",
                           "configure": "", "write": "^amq\\.topic$", "read": ""}],
          "topic_permissions": [{"user": "sensor", "vhost": "iot", "exchange": "amq.topic",
                                 "write": "^sensors\\.{username}\\.", "read": ""}],
          "queues": [{"name": "readings", "vhost": "iot", "durable": true,
                      "auto_delete": false, "arguments": {}}],
          "bindings": [{"source": "amq.topic", "vhost": "iot", "destination": "readings",
                        "destination_type": "queue", "routing_key": "sensors.#",
                        "arguments": {}}]
        }"#,
    )
    .unwrap();
    let b = start_with(|c| c.load_definitions = Some(defs.clone())).await;
    let c = connect_as(&b, "sensor", "pw", "iot").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    publish(&ch, "amq.topic", "sensors.sensor.temp", b"21.5").await;
    let e = ch
        .queue_declare(
            "mine",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403));
    broker_has_message(&b, "iot", "readings", b"21.5").await;
    b.stop().await;
}

async fn broker_has_message(b: &TestBroker, vhost: &str, queue: &str, body: &[u8]) {
    let v = b.broker().vhost(vhost).unwrap();
    let q = v.queue(queue, 0).unwrap();
    eventually(|| q.counts().messages == 1, "the reading is queued").await;
    let (m, _) = q.get(false).unwrap();
    assert_eq!(m.message.body(), body);
}

#[tokio::test]
async fn silent_half_open_connections_are_dropped_and_do_not_lock_out_clients() {
    let b = start_with(|c| c.handshake_timeout = 1).await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
        // Half of them send the protocol header and then nothing.
        if silent.len() % 2 == 0 {
            s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        }
        silent.push(s);
    }
    // A real client is served meanwhile.
    let (_c, ch) = channel(&b).await;
    queue(&ch, "alive").await;
    // Every silent connection is closed by the broker once the handshake timeout passes.
    for mut s in silent {
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent connection stayed open");
    }
    b.stop().await;
}

#[tokio::test]
async fn consumers_per_channel_are_limited_when_configured() {
    let b = start_with(|c| c.consumer_max_per_channel = 3).await;
    let (c, ch) = channel(&b).await;
    let errors = errors_of_connection(&c);
    queue(&ch, "many").await;
    // Kept: lapin cancels a consumer that is dropped.
    let mut kept = Vec::new();
    for i in 0..3 {
        kept.push(consume(&ch, "many", &format!("c{i}")).await);
    }
    let _ = ch
        .basic_consume(
            "many",
            "c3",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    let (code_, text_) = closed_with(&errors).await;
    assert_eq!(code_, 530);
    assert_eq!(
        text_,
        "NOT_ALLOWED - reached maximum (3) of consumers per channel"
    );
    // Other clients are served: the queue still takes and hands out messages.
    let (_c2, ch2) = channel(&b).await;
    publish(&ch2, "", "many", b"still served").await;
    let mut c = consume(&ch2, "many", "other").await;
    assert_eq!(next(&mut c).await.data, b"still served");
    b.stop().await;
}
