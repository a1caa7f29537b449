//! Unit tests of the session: every cell of the access matrix, topic permissions, limits,
//! exclusive queues, and permission changes reaching a live session.

use super::*;
use crate::access::{Permission, TopicPermission};
use crate::admin::Credential;
use crate::broker::BrokerConfig;
use crate::connections::ConnectionMeta;
use crate::limits::{UserLimits, VHostLimits};
use crate::message::Properties;
use bytes::Bytes;

fn meta() -> ConnectionMeta {
    ConnectionMeta {
        peer: None,
        protocol: "test",
        ..Default::default()
    }
}

/// A broker where `guest` prepared queue `q`, exchanges `x` (direct) and `t` (topic), and
/// user `u` has `p` on `/`.
fn setup(p: Permission) -> (Arc<Broker>, Session) {
    let b = Broker::new(BrokerConfig::default());
    let admin = b.open_session("guest", "/", meta()).unwrap();
    admin
        .declare_queue("q", QueueOptions::default(), false)
        .unwrap();
    admin
        .declare_exchange("x", "direct", ExchangeOptions::default(), false)
        .unwrap();
    admin
        .declare_exchange("t", "topic", ExchangeOptions::default(), false)
        .unwrap();
    drop(admin);
    b.put_user("u", Credential::Password("p".into()), &[])
        .unwrap();
    b.set_permissions("u", "/", p).unwrap();
    let s = b.open_session("u", "/", meta()).unwrap();
    (b, s)
}

fn perm(c: &str, w: &str, r: &str) -> Permission {
    Permission {
        configure: c.into(),
        write: w.into(),
        read: r.into(),
    }
}

fn msg(key: &str) -> Arc<Message> {
    Arc::new(Message::from_properties("", key, &Properties::default(), Bytes::new()).unwrap())
}

fn refused<T: std::fmt::Debug>(r: CoreResult<T>) -> String {
    match r {
        Err(CoreError::AccessRefused(t)) => t,
        other => panic!("expected access refused, got {other:?}"),
    }
}

#[test]
fn configure_guards_declare_and_delete() {
    let (_b, s) = setup(perm("^mine", ".*", ".*"));
    assert_eq!(
        refused(s.declare_queue("other", QueueOptions::default(), false)),
        "access to queue 'other' in vhost '/' refused for user 'u'"
    );
    s.declare_queue("mine", QueueOptions::default(), false)
        .unwrap();
    assert_eq!(
        refused(s.delete_queue("q", false, false)),
        "access to queue 'q' in vhost '/' refused for user 'u'"
    );
    assert_eq!(
        refused(s.declare_exchange("x2", "fanout", ExchangeOptions::default(), false)),
        "access to exchange 'x2' in vhost '/' refused for user 'u'"
    );
    assert_eq!(
        refused(s.delete_exchange("x", false)),
        "access to exchange 'x' in vhost '/' refused for user 'u'"
    );
    // Server-named queues are checked under their generated name.
    let t = refused(s.declare_queue("", QueueOptions::default(), false));
    assert!(t.starts_with("access to queue 'amq.gen-"), "{t}");
    // Passive declares only check existence.
    s.declare_queue("q", QueueOptions::default(), true).unwrap();
    s.declare_exchange("x", "direct", ExchangeOptions::default(), true)
        .unwrap();
}

#[test]
fn dead_letter_and_alternate_exchanges_need_write_on_them() {
    let (_b, s) = setup(perm(".*", "^mine", ".*"));
    let mut args = FieldTable::new();
    args.insert("x-dead-letter-exchange", FieldValue::string("x"));
    let opts = QueueOptions {
        arguments: args,
        ..Default::default()
    };
    assert_eq!(
        refused(s.declare_queue("dlq", opts, false)),
        "access to exchange 'x' in vhost '/' refused for user 'u'"
    );
    let mut args = FieldTable::new();
    args.insert("alternate-exchange", FieldValue::string("x"));
    let opts = ExchangeOptions {
        arguments: args,
        ..Default::default()
    };
    assert_eq!(
        refused(s.declare_exchange("mine-ae", "fanout", opts, false)),
        "access to exchange 'x' in vhost '/' refused for user 'u'"
    );
}

#[test]
fn write_guards_publish_including_the_default_exchange() {
    let (_b, s) = setup(perm(".*", "^x$", ".*"));
    s.publish("x", msg("k")).unwrap();
    assert_eq!(
        refused(s.publish("", msg("q"))),
        "access to exchange 'amq.default' in vhost '/' refused for user 'u'"
    );
    assert_eq!(
        refused(s.publish("t", msg("k"))),
        "access to exchange 't' in vhost '/' refused for user 'u'"
    );
}

#[test]
fn read_guards_consume_get_purge_and_binding_sources() {
    let (_b, s) = setup(perm(".*", ".*", "^x$"));
    assert_eq!(
        refused(s.get("q", true)),
        "access to queue 'q' in vhost '/' refused for user 'u'"
    );
    assert_eq!(
        refused(s.purge_queue("q")),
        "access to queue 'q' in vhost '/' refused for user 'u'"
    );
    s.bind_queue("q", "x", "k", FieldTable::new()).unwrap();
    assert_eq!(
        refused(s.bind_queue("q", "t", "k", FieldTable::new())),
        "access to exchange 't' in vhost '/' refused for user 'u'"
    );
}

#[test]
fn write_guards_binding_destinations() {
    let (_b, s) = setup(perm(".*", "^x$", ".*"));
    assert_eq!(
        refused(s.bind_queue("q", "x", "k", FieldTable::new())),
        "access to queue 'q' in vhost '/' refused for user 'u'"
    );
    s.bind_exchange("x", "t", "k", FieldTable::new()).unwrap();
    assert_eq!(
        refused(s.bind_exchange("t", "x", "k", FieldTable::new())),
        "access to exchange 't' in vhost '/' refused for user 'u'"
    );
    assert_eq!(
        refused(s.unbind_queue("q", "x", "k", &FieldTable::new())),
        "access to queue 'q' in vhost '/' refused for user 'u'"
    );
}

#[test]
fn topic_permissions_guard_routing_and_binding_keys() {
    let (b, s) = setup(Permission::all());
    b.set_topic_permissions(
        "u",
        "/",
        TopicPermission {
            exchange: "t".into(),
            write: "^{username}\\.".into(),
            read: "^logs\\.".into(),
        },
    )
    .unwrap();
    s.publish("t", msg("u.a")).unwrap();
    assert_eq!(
        refused(s.publish("t", msg("v.a"))),
        "access to topic 'v.a' in exchange 't' in vhost '/' refused for user 'u'"
    );
    s.bind_queue("q", "t", "logs.#", FieldTable::new()).unwrap();
    assert_eq!(
        refused(s.bind_queue("q", "t", "#", FieldTable::new())),
        "access to topic '#' in exchange 't' in vhost '/' refused for user 'u'"
    );
    // Other exchanges have no topic permissions: open.
    s.publish("amq.topic", msg("anything")).unwrap();
}

#[test]
fn permission_changes_reach_a_live_session() {
    let (b, s) = setup(Permission::all());
    s.publish("x", msg("k")).unwrap();
    b.set_permissions("u", "/", perm(".*", "", ".*")).unwrap();
    refused(s.publish("x", msg("k")));
    b.clear_permissions("u", "/").unwrap();
    refused(s.get("q", true));
    b.set_permissions("u", "/", Permission::all()).unwrap();
    s.get("q", true).unwrap();
}

#[test]
fn deleting_the_user_asks_its_connections_to_close() {
    let (b, s) = setup(Permission::all());
    let mut closed = s.closed();
    b.delete_user("u").unwrap();
    assert_eq!(
        closed.borrow_and_update().as_deref(),
        Some("user 'u' is deleted")
    );
}

#[test]
fn limits_on_connections_channels_and_queues() {
    let (b, s) = setup(Permission::all());
    b.set_user_limits(
        "u",
        UserLimits {
            max_connections: Some(1),
            max_channels: Some(1),
        },
    )
    .unwrap();
    let e = b.open_session("u", "/", meta()).err().unwrap();
    assert!(matches!(e, CoreError::LimitReached(_)), "{e:?}");
    let c1 = s.open_channel(1).unwrap();
    assert!(matches!(s.open_channel(1), Err(CoreError::LimitReached(_))));
    drop(c1);
    let _c2 = s.open_channel(1).unwrap();
    b.set_vhost_limits(
        "/",
        VHostLimits {
            max_connections: None,
            max_queues: Some(2),
        },
    )
    .unwrap();
    s.declare_queue("q2", QueueOptions::default(), false)
        .unwrap();
    let e = s
        .declare_queue("q3", QueueOptions::default(), false)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot declare queue 'q3': queue limit in vhost '/' (2) is reached"
    );
    // Redeclaring an existing queue is not a new queue.
    s.declare_queue("q", QueueOptions::default(), false)
        .unwrap();
    drop(s);
    b.open_session("u", "/", meta()).unwrap();
}

#[test]
fn exclusive_queues_go_with_their_session() {
    let (b, s) = setup(Permission::all());
    let opts = QueueOptions {
        exclusive: true,
        ..Default::default()
    };
    let (q, _, _) = s.declare_queue("", opts, false).unwrap();
    let other = b.open_session("guest", "/", meta()).unwrap();
    assert!(matches!(
        other.purge_queue(&q.name),
        Err(CoreError::ResourceLocked(_))
    ));
    drop(s);
    assert!(q.is_deleted());
    assert!(b.vhost("/").unwrap().find_queue(&q.name).is_err());
}
