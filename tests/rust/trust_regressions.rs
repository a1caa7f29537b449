//! Regression tests for defects a cold review of the access-control change found: a
//! repeated argument key slipping past the write check, a failed transaction commit losing
//! settlements, failed saves leaking into later ones, a failed vhost deletion or boot import
//! leaving the broker unusable. Also races the review found sound, kept as tests.

mod common;

use common::raw::Raw;
use common::*;
use ferrymq_amqp::codec::methods::*;
use ferrymq_amqp::codec::Method;
use ferrymq_core::access::Permission;
use ferrymq_core::admin::Credential;
use ferrymq_core::{FieldTable as CoreTable, FieldValue};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

async fn connect_as(b: &TestBroker, user: &str, pass: &str) -> Connection {
    let uri = format!("amqp://{user}:{pass}@{}/%2f", b.addr);
    Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("connects")
}

/// A raw connection as `user` with channel 1 open.
async fn raw_as(b: &TestBroker, user: &str, pass: &str) -> Raw {
    let (mut r, _) = Raw::open_as(b.addr, user, pass, 0).await;
    r.open_channel(1).await;
    r
}

fn dlx_permission() -> Permission {
    Permission {
        configure: "^app\\.".into(),
        // May publish through the default exchange and to "pub"; NOT to "secret".
        write: "^(amq\\.default|pub|app\\..*)$".into(),
        read: ".*".into(),
    }
}

async fn setup_secret(b: &TestBroker, durable: bool) -> (Connection, lapin::Channel) {
    let broker = b.broker().clone();
    broker
        .put_user("app", Credential::Password("pw".into()), &[])
        .unwrap();
    broker
        .set_permissions("app", "/", dlx_permission())
        .unwrap();
    // The operator's exchange the app must not be able to write to, one it may write to,
    // and a queue behind each (durable when the test restarts the broker).
    let (gc, gch) = channel(b).await;
    for x in ["secret", "pub"] {
        gch.exchange_declare(
            x,
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let q = format!("{x}.q");
        let opts = QueueDeclareOptions {
            durable,
            ..Default::default()
        };
        gch.queue_declare(&q, opts, FieldTable::default())
            .await
            .unwrap();
        bind(&gch, &q, x, "").await.unwrap();
    }
    (gc, gch)
}

/// `x-dead-letter-exchange` given twice: the session checked the first value while the queue
/// used the last, so rejected messages landed in an exchange the user may not write to. Now
/// every reader keeps the first value, as RabbitMQ.
#[tokio::test]
async fn a_repeated_dead_letter_exchange_argument_uses_the_checked_first_value() {
    let b = start().await;
    let (_gc, gch) = setup_secret(&b, false).await;

    // Control: naming "secret" once is refused.
    let c = connect_as(&b, "app", "pw").await;
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            "app.control",
            QueueDeclareOptions::default(),
            table(&[("x-dead-letter-exchange", s("secret"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403), "{}", text(&e));

    // The same declaration with the argument twice: "pub" first, "secret" last.
    let mut r = raw_as(&b, "app", "pw").await;
    r.method(
        1,
        QueueDeclare {
            queue: "app.dl".into(),
            arguments: CoreTable(vec![
                ("x-dead-letter-exchange".into(), FieldValue::string("pub")),
                (
                    "x-dead-letter-exchange".into(),
                    FieldValue::string("secret"),
                ),
            ]),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(
        r.next_method().await,
        Some((1, Method::QueueDeclareOk(_)))
    ));

    // The app publishes to its own queue and rejects the message.
    let ch = c.create_channel().await.unwrap();
    publish(&ch, "", "app.dl", b"smuggled").await;
    let m = get(&ch, "app.dl").await.expect("message in app.dl");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    // The first value is the one in force (as in RabbitMQ), and it was the one checked.
    let v = b.broker().vhost("/").unwrap();
    let pubq = v.queue("pub.q", 0).unwrap();
    eventually(|| pubq.counts().messages == 1, "dead-lettered to 'pub'").await;
    assert!(get(&gch, "secret.q").await.is_none());
    b.stop().await;
}

/// The same with `alternate-exchange` on a durable exchange: the definitions kept the last
/// value, so after a restart unroutable messages went to the unchecked exchange.
#[tokio::test]
async fn a_repeated_alternate_exchange_argument_keeps_the_checked_first_value_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let b = start_with(|c| c.data_dir = data.clone()).await;
    let (_gc, _gch) = setup_secret(&b, true).await;
    let mut r = raw_as(&b, "app", "pw").await;
    r.method(
        1,
        ExchangeDeclare {
            exchange: "app.x".into(),
            kind: "direct".into(),
            durable: true,
            arguments: CoreTable(vec![
                ("alternate-exchange".into(), FieldValue::string("pub")),
                ("alternate-exchange".into(), FieldValue::string("secret")),
            ]),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(
        r.next_method().await,
        Some((1, Method::ExchangeDeclareOk(_)))
    ));
    drop(r);
    drop(_gc);
    b.stop().await;

    let b = start_with(|c| c.data_dir = data.clone()).await;
    let c = connect_as(&b, "app", "pw").await;
    let ch = c.create_channel().await.unwrap();
    let (_g2, gch) = channel(&b).await;
    // An unroutable publish to app.x goes to its alternate exchange.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish(&ch, "app.x", "nowhere", b"smuggled").await;
    // Routed (and confirmed) through the alternate exchange it was declared with: "pub".
    assert_eq!(
        get(&gch, "pub.q").await.expect("in pub.q").delivery.data,
        b"smuggled"
    );
    assert!(get(&gch, "secret.q").await.is_none());
    b.stop().await;
}

/// A transaction whose commit failed on one publish had committed the publishes before it
/// and dropped the settlements it held. RabbitMQ refuses the publish when it arrives, and
/// the ack goes with the channel, so the message is requeued.
#[tokio::test]
async fn a_refused_transactional_publish_commits_nothing_and_requeues_the_settled() {
    let b = start().await;
    let (_gc, gch) = channel(&b).await;
    queue(&gch, "work").await;
    queue(&gch, "out").await;
    publish(&gch, "", "work", b"job").await;

    let c = connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    let m = get(&ch, "work").await.expect("job");
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    for (x, k) in [("", "out"), ("missing", "k")] {
        ch.basic_publish(
            x,
            k,
            BasicPublishOptions::default(),
            b"in tx",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    // The publish to a missing exchange is refused when it arrives (404 closes the
    // channel), as in RabbitMQ; nothing of the transaction is committed and the delivery
    // acked inside it goes back to its queue.
    let e = ch.tx_commit().await.unwrap_err();
    assert!(text(&e).contains("no exchange 'missing'"), "{}", text(&e));
    let v = b.broker().vhost("/").unwrap();
    let (work, out) = (v.queue("work", 0).unwrap(), v.queue("out", 0).unwrap());
    eventually(
        || work.counts().messages == 1,
        "the job is back in its queue",
    )
    .await;
    assert_eq!(out.counts().messages, 0, "half a transaction was committed");
    c.close(200, "bye").await.ok();
    b.stop().await;
}

/// A failed save of the definitions changed nothing in memory, but the edit stayed in the
/// persisted document and was written by the next successful save.
#[tokio::test]
async fn a_refused_admin_change_is_not_saved_by_the_next_declaration() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let syncer = std::sync::Arc::new(ferrymq_store::FailingSync::default());
    let b = start_with(|c| {
        c.data_dir = data.clone();
        c.syncer = ferrymq_core::SyncerRef(syncer.clone());
    })
    .await;
    let broker = b.broker().clone();
    broker
        .put_user("app", Credential::Password("pw".into()), &[])
        .unwrap();
    // The definitions journal's next fsync fails: the change is refused, and must not come
    // back after a restart.
    syncer.fail(".journal", 1);
    assert!(broker
        .set_permissions("app", "/", Permission::all())
        .is_err());
    assert!(broker.permissions().iter().all(|p| p.user != "app"));
    drop(broker);
    b.stop().await;

    let b = start_with(|c| c.data_dir = data.clone()).await;
    let granted = b.broker().permissions().iter().any(|p| p.user == "app");
    assert!(
        !granted,
        "the permission whose save failed is in force after a restart"
    );
    b.stop().await;
}

/// A failed save during `delete_vhost` left the vhost marked deleted: it still existed, yet
/// nobody could connect to it or declare anything in it.
#[tokio::test]
async fn a_failed_vhost_deletion_leaves_the_vhost_usable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let syncer = std::sync::Arc::new(ferrymq_store::FailingSync::default());
    let b = start_with(|c| {
        c.data_dir = data.clone();
        c.syncer = ferrymq_core::SyncerRef(syncer.clone());
    })
    .await;
    let broker = b.broker().clone();
    broker.add_vhost("shop").unwrap();
    broker
        .set_permissions("guest", "shop", Permission::all())
        .unwrap();
    syncer.fail(".journal", 1);
    assert!(broker.delete_vhost("shop").is_err());
    assert!(broker.vhost("shop").is_some(), "the vhost is still there");
    let uri = format!("amqp://guest:guest@{}/shop", b.addr);
    let r = Connection::connect(&uri, ConnectionProperties::default()).await;
    assert!(
        r.is_ok(),
        "a vhost whose deletion failed refuses every client: {:?}",
        r.err().map(|e| text(&e))
    );
    // Declarations work there too.
    let c = r.unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "still-here",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    b.stop().await;
}

/// A `--load-definitions` import that failed on a fresh data directory had already saved an
/// empty identity; the next start without the flag had no users at all.
#[tokio::test]
async fn a_failed_boot_import_leaves_a_fresh_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let defs = dir.path().join("defs.json");
    std::fs::write(
        &defs,
        r#"{"users": [{"name": "u", "password": "p", "tags": []}], "vhosts": [{"name": "/"}],
            "permissions": [{"user": "u", "vhost": "/", "configure": "(", "write": "", "read": ""}]}"#,
    )
    .unwrap();
    let cfg = ferrymq::config::Config {
        bind: "127.0.0.1".into(),
        amqp_port: 0,
        management: ferrymq::config::ManagementConfig {
            listener: true,
            port: 0,
        },
        prometheus: ferrymq::config::PrometheusConfig {
            listener: true,
            port: 0,
        },
        data_dir: data.clone(),
        load_definitions: Some(defs.clone()),
        ..Default::default()
    };
    let r = ferrymq::start(&cfg).await;
    assert!(r.is_err(), "the bad file is refused");
    assert!(
        !data.join("definitions.json").exists(),
        "nothing saved by a start that failed"
    );
    let b = start_with(|c| c.data_dir = data.clone()).await;
    let r = Connection::connect(&b.uri(), ConnectionProperties::default()).await;
    assert!(
        r.is_ok(),
        "guest cannot log in after a failed first import: {:?}",
        r.err().map(|e| text(&e))
    );
    b.stop().await;
}

// Races and checks the review found sound.

/// Channel errors do not leak `max-channels` counts.
#[tokio::test]
async fn channel_errors_do_not_leak_the_user_channel_count() {
    let b = start().await;
    b.broker()
        .set_user_limits(
            "guest",
            ferrymq_core::limits::UserLimits {
                max_connections: None,
                max_channels: Some(2),
            },
        )
        .unwrap();
    let c = connect(&b).await;
    for _ in 0..10 {
        let ch = c.create_channel().await.unwrap();
        assert_eq!(
            code(&passive_queue(&ch, "nope").await.unwrap_err()),
            Some(404)
        );
    }
    let _a = c.create_channel().await.unwrap();
    let _b = c.create_channel().await.unwrap();
    assert_eq!(code(&c.create_channel().await.unwrap_err()), Some(530));
    b.stop().await;
}

/// Racing connections and declarations cannot exceed vhost limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_connections_and_declares_respect_the_limits() {
    let b = start().await;
    b.broker()
        .set_vhost_limits(
            "/",
            ferrymq_core::limits::VHostLimits {
                max_connections: Some(5),
                max_queues: Some(3),
            },
        )
        .unwrap();
    let uri = b.uri();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let uri = uri.clone();
            tokio::spawn(
                async move { Connection::connect(&uri, ConnectionProperties::default()).await },
            )
        })
        .collect();
    let mut ok = Vec::new();
    for t in tasks {
        if let Ok(c) = t.await.unwrap() {
            ok.push(c);
        }
    }
    assert_eq!(ok.len(), 5);
    let mut chans = Vec::new();
    for c in &ok {
        chans.push(c.create_channel().await.unwrap());
    }
    let declares: Vec<_> = chans
        .iter()
        .enumerate()
        .map(|(i, ch)| {
            let ch = ch.clone();
            tokio::spawn(async move {
                ch.queue_declare(
                    &format!("q{i}"),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .is_ok()
            })
        })
        .collect();
    let mut n = 0;
    for d in declares {
        n += usize::from(d.await.unwrap());
    }
    assert_eq!(n, 3);
    assert_eq!(b.broker().vhost("/").unwrap().queue_count(), 3);
    b.stop().await;
}

/// Another connection cannot reach an exclusive queue through any verb.
#[tokio::test]
async fn exclusive_queues_are_locked_for_other_connections() {
    let b = start().await;
    let (_c1, ch1) = channel(&b).await;
    let q = ch1
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
    let name = q.name().as_str().to_string();
    let c2 = connect(&b).await;
    let mut codes = Vec::new();
    let ch = c2.create_channel().await.unwrap();
    codes.push(code(&passive_queue(&ch, &name).await.unwrap_err()));
    let ch = c2.create_channel().await.unwrap();
    codes.push(code(
        &ch.basic_get(&name, BasicGetOptions::default())
            .await
            .unwrap_err(),
    ));
    let ch = c2.create_channel().await.unwrap();
    codes.push(code(
        &ch.queue_purge(&name, QueuePurgeOptions::default())
            .await
            .unwrap_err(),
    ));
    let ch = c2.create_channel().await.unwrap();
    codes.push(code(
        &bind(&ch, &name, "amq.direct", "k").await.unwrap_err(),
    ));
    let ch = c2.create_channel().await.unwrap();
    codes.push(code(
        &ch.queue_delete(&name, QueueDeleteOptions::default())
            .await
            .unwrap_err(),
    ));
    let ch = c2.create_channel().await.unwrap();
    codes.push(code(
        &ch.basic_consume(
            &name,
            "t",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err(),
    ));
    assert_eq!(codes, vec![Some(405); 6]);
    b.stop().await;
}

/// Durable queues declared while their vhost is deleted do not come back after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_deletion_racing_declarations_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let b = start_with(|c| c.data_dir = data.clone()).await;
    let broker = b.broker().clone();
    broker.add_vhost("v").unwrap();
    broker
        .set_permissions("guest", "v", Permission::all())
        .unwrap();
    let uri = format!("amqp://guest:guest@{}/v", b.addr);
    let c = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    let declaring = tokio::spawn(async move {
        for i in 0..200 {
            let r = ch
                .queue_declare(
                    &format!("d{i}"),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            if r.is_err() {
                return i;
            }
        }
        200
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    broker.delete_vhost("v").unwrap();
    declaring.await.unwrap();
    drop(broker);
    b.stop().await;
    let defs = std::fs::read_to_string(data.join("definitions.json")).unwrap();
    assert!(!defs.contains("\"vhost\": \"v\""), "{defs}");
    let b = start_with(|c| c.data_dir = data.clone()).await;
    assert!(b.broker().vhost("v").is_none());
    let left = std::fs::read_dir(data.join("queues")).unwrap().count();
    assert_eq!(left, 0, "queue directories left behind");
    b.stop().await;
}
