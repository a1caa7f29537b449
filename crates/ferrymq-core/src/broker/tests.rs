//! Unit tests of authentication, sessions, admin changes and their persistence.

use super::*;
use crate::access::{Permission, TopicPermission};
use crate::admin::Credential;
use crate::connections::ConnectionMeta;
use crate::persist::{PersistConfig, Persistence};
use crate::policy::Policy;
use crate::queue::QueueOptions;

fn meta() -> ConnectionMeta {
    ConnectionMeta {
        peer: None,
        protocol: "test",
        ..Default::default()
    }
}

#[test]
fn guest_may_only_log_in_from_loopback() {
    let b = Broker::new(BrokerConfig::default());
    assert!(b.authenticate("guest", "guest", true).is_ok());
    let e = b.authenticate("guest", "guest", false).unwrap_err();
    assert!(matches!(e, CoreError::AccessRefused(_)));
    assert!(e.to_string().contains("can only connect via localhost"));
    assert!(b.authenticate("guest", "wrong", true).is_err());
    assert!(b.authenticate("nobody", "guest", true).is_err());
}

#[test]
fn trusted_logins_need_an_existing_user_and_keep_the_loopback_rule() {
    let b = Broker::new(BrokerConfig::default());
    b.put_user("cert-only", Credential::None, &[]).unwrap();
    // No password to check, but the user must exist.
    assert!(b
        .authenticate_trusted("cert-only", "EXTERNAL", false)
        .is_ok());
    assert!(b.authenticate("cert-only", "", true).is_err());
    let e = b
        .authenticate_trusted("nobody", "EXTERNAL", true)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile."
    );
    assert!(b.authenticate_trusted("guest", "EXTERNAL", true).is_ok());
    let e = b
        .authenticate_trusted("guest", "EXTERNAL", false)
        .unwrap_err();
    assert!(e.to_string().contains("can only connect via localhost"));
}

#[test]
fn vhost_access_needs_permissions() {
    let b = Broker::new(BrokerConfig::default());
    assert!(b.open_session("guest", "/", meta()).is_ok());
    let e = b.open_session("guest", "/other", meta()).err().unwrap();
    assert!(matches!(e, CoreError::VHostAccessRefused(_)), "{e:?}");
    b.add_vhost("/other").unwrap();
    let e = b.open_session("guest", "/other", meta()).err().unwrap();
    assert_eq!(
        e.to_string(),
        "access to vhost '/other' refused for user 'guest'"
    );
    b.set_permissions("guest", "/other", Permission::all())
        .unwrap();
    assert!(b.open_session("guest", "/other", meta()).is_ok());
}

/// A broker on the data dir `d` (shared with the at-least-once tests).
pub(super) fn open(d: &std::path::Path) -> Arc<Broker> {
    let p = Persistence::open(PersistConfig::new(d)).unwrap();
    Broker::open(BrokerConfig::default(), p).unwrap()
}

/// Stops `b` and opens its data dir `d` again: a restart.
pub(super) fn reopen(b: Arc<Broker>, d: &std::path::Path) -> Arc<Broker> {
    b.persistence().unwrap().stop();
    drop(b);
    open(d)
}

#[test]
fn policies_are_saved_and_applied_again_after_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let b = open(d.path());
    let def = serde_json::from_str(r#"{"message-ttl": 5000}"#).unwrap();
    b.set_policy("/", Policy::new("ttl", "^t", "queues", 1, def).unwrap())
        .unwrap();
    let s = b.open_session("guest", "/", meta()).unwrap();
    let durable = QueueOptions {
        durable: true,
        ..Default::default()
    };
    s.declare_queue("tq", durable, false).unwrap();
    drop(s);
    let b = reopen(b, d.path());
    let v = b.vhost("/").unwrap();
    assert_eq!(v.policies().len(), 1);
    let q = v.queue("tq", 1).unwrap();
    assert_eq!(q.config().message_ttl, Some(5000));
    b.clear_policy("/", "ttl").unwrap();
    assert_eq!(q.config().message_ttl, None);
    assert!(b.clear_policy("/", "ttl").is_err());
}

#[test]
fn users_permissions_topic_permissions_and_limits_survive_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let b = open(d.path());
    b.add_vhost("prod").unwrap();
    b.put_user(
        "app",
        Credential::Password("s3cret".into()),
        &["monitoring"],
    )
    .unwrap();
    let p = Permission {
        configure: "^app\\.".into(),
        write: ".*".into(),
        read: "".into(),
    };
    b.set_permissions("app", "prod", p.clone()).unwrap();
    let t = TopicPermission {
        exchange: "amq.topic".into(),
        write: "^{username}\\.".into(),
        read: ".*".into(),
    };
    b.set_topic_permissions("app", "prod", t.clone()).unwrap();
    let ul = crate::limits::UserLimits {
        max_connections: Some(3),
        max_channels: Some(7),
    };
    b.set_user_limits("app", ul).unwrap();
    let vl = crate::limits::VHostLimits {
        max_connections: None,
        max_queues: Some(9),
    };
    b.set_vhost_limits("prod", vl).unwrap();
    let b = reopen(b, d.path());
    assert!(b.authenticate("app", "s3cret", true).is_ok());
    let app = b.users().into_iter().find(|u| u.name == "app").unwrap();
    assert_eq!(app.tags, vec!["monitoring"]);
    assert_eq!(app.limits, ul);
    assert_eq!(b.vhost_limits("prod"), vl);
    assert!(b
        .permissions()
        .iter()
        .any(|e| e.user == "app" && e.vhost == "prod" && e.permission == p));
    assert_eq!(b.topic_permissions("app", "prod"), vec![t]);
    b.delete_user("app").unwrap();
    let b = reopen(b, d.path());
    assert!(b.authenticate("app", "s3cret", true).is_err());
    assert!(b.permissions().iter().all(|e| e.user != "app"));
}

#[test]
fn deleting_a_vhost_deletes_its_queues_and_their_files_and_closes_its_sessions() {
    let d = tempfile::tempdir().unwrap();
    let b = open(d.path());
    b.add_vhost("gone").unwrap();
    b.set_permissions("guest", "gone", Permission::all())
        .unwrap();
    let s = b.open_session("guest", "gone", meta()).unwrap();
    let mut closed = s.closed();
    let durable = QueueOptions {
        durable: true,
        ..Default::default()
    };
    let (q, _, _) = s.declare_queue("dq", durable, false).unwrap();
    let props = crate::message::Properties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let m = crate::message::Message::from_properties("", "dq", &props, bytes::Bytes::new());
    s.publish("", Arc::new(m.unwrap())).unwrap();
    let dir = q
        .dir()
        .expect("a durable queue has a directory")
        .to_path_buf();
    assert!(dir.exists());
    b.delete_vhost("gone").unwrap();
    assert!(closed.borrow_and_update().is_some());
    assert!(q.is_deleted());
    b.persistence().unwrap().sync().reaper().wait_idle();
    assert!(!dir.exists());
    assert!(b.vhost("gone").is_none());
    drop(s);
    let b = reopen(b, d.path());
    assert!(b.vhost("gone").is_none());
    assert!(b.permissions().iter().all(|e| e.vhost != "gone"));
    // Nothing of the vhost is left in the saved definitions.
    let saved = std::fs::read_to_string(d.path().join("definitions.json")).unwrap();
    assert!(!saved.contains("\"gone\""), "{saved}");
    assert!(b.add_vhost("gone").unwrap().find_queue("dq").is_err());
}

#[test]
fn invalid_patterns_and_unknown_names_are_refused() {
    let b = Broker::new(BrokerConfig::default());
    let bad = Permission {
        configure: "(".into(),
        write: ".*".into(),
        read: ".*".into(),
    };
    assert!(matches!(
        b.set_permissions("guest", "/", bad),
        Err(CoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        b.set_permissions("nobody", "/", Permission::all()),
        Err(CoreError::NotFound(_))
    ));
    assert!(matches!(
        b.set_permissions("guest", "/nope", Permission::all()),
        Err(CoreError::NotFound(_))
    ));
    assert!(b.delete_user("nobody").is_err());
    assert!(b.delete_vhost("/nope").is_err());
}

fn defs(v: serde_json::Value) -> ferrymq_store::definitions::Definitions {
    serde_json::from_value(v).unwrap()
}

/// A document whose entries are all fine except `bad`, merged in last.
fn import_doc(bad: serde_json::Value) -> ferrymq_store::definitions::Definitions {
    let mut doc = serde_json::json!({
        "users": [{"name": "imp", "password": "pw", "tags": ""}],
        "vhosts": [{"name": "iv"}],
        "permissions": [{"user": "imp", "vhost": "iv",
                         "configure": ".*", "write": ".*", "read": ".*"}],
        "exchanges": [{"name": "ix", "vhost": "iv", "type": "topic", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}],
        "queues": [{"name": "iq", "vhost": "iv", "durable": true,
                    "auto_delete": false, "arguments": {}}],
        "bindings": [{"source": "ix", "vhost": "iv", "destination": "iq",
                      "destination_type": "queue", "routing_key": "#", "arguments": {}}],
    });
    for (k, v) in bad.as_object().unwrap() {
        doc[k]
            .as_array_mut()
            .map(|a| a.push(v.clone()))
            .unwrap_or_else(|| {
                doc[k] = serde_json::json!([v]);
            });
    }
    defs(doc)
}

#[test]
fn a_definitions_import_is_checked_whole_before_anything_is_applied() {
    let b = Broker::new(BrokerConfig::default());
    let bad_entries = [
        serde_json::json!({"bindings": {"source": "nope", "vhost": "iv", "destination": "iq",
            "destination_type": "queue", "routing_key": "", "arguments": {}}}),
        serde_json::json!({"bindings": {"source": "ix", "vhost": "iv", "destination": "nope",
            "destination_type": "queue", "routing_key": "", "arguments": {}}}),
        serde_json::json!({"policies": {"vhost": "iv", "name": "p", "pattern": "(",
            "apply-to": "queues", "definition": {"message-ttl": 1}, "priority": 0}}),
        serde_json::json!({"permissions": {"user": "imp", "vhost": "iv",
            "configure": "(", "write": "", "read": ""}}),
        serde_json::json!({"permissions": {"user": "ghost", "vhost": "iv",
            "configure": "", "write": "", "read": ""}}),
        serde_json::json!({"topic_permissions": {"user": "imp", "vhost": "elsewhere",
            "exchange": "ix", "write": ".*", "read": ".*"}}),
        serde_json::json!({"exchanges": {"name": "bad", "vhost": "iv", "type": "nonsense",
            "durable": true, "auto_delete": false, "internal": false, "arguments": {}}}),
        serde_json::json!({"queues": {"name": "badq", "vhost": "iv", "durable": true,
            "auto_delete": false, "arguments": {"x-max-priority": 1000}}}),
        // Conflicts with what the broker already has.
        serde_json::json!({"queues": {"name": "live", "vhost": "/", "durable": false,
            "auto_delete": false, "arguments": {}}}),
    ];
    let s = b.open_session("guest", "/", meta()).unwrap();
    s.declare_queue(
        "live",
        QueueOptions {
            durable: true,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    for bad in bad_entries {
        let e = b.import_definitions(&import_doc(bad.clone()));
        assert!(e.is_err(), "accepted {bad}");
        assert!(b.vhost("iv").is_none(), "half-applied {bad}");
        assert!(
            b.users().iter().all(|u| u.name != "imp"),
            "half-applied {bad}"
        );
    }
    b.import_definitions(&import_doc(serde_json::json!({})))
        .unwrap();
    let v = b.vhost("iv").unwrap();
    assert!(v.find_queue("iq").is_ok());
    assert!(b.authenticate("imp", "pw", true).is_ok());
    let s = b.open_session("imp", "iv", meta()).unwrap();
    let m = crate::Message::new("ix", "a.b", &[0, 0], bytes::Bytes::from_static(b"x"));
    s.publish("ix", Arc::new(m.unwrap())).unwrap();
    assert_eq!(v.find_queue("iq").unwrap().counts().messages, 1);
}

fn delayed_msg(body: &'static str) -> Arc<crate::Message> {
    let mut h = crate::FieldTable::new();
    h.insert("x-delay", crate::FieldValue::I64(3_600_000));
    let props = crate::Properties {
        delivery_mode: Some(2),
        headers: Some(h),
        ..Default::default()
    };
    Arc::new(
        crate::Message::from_properties(
            "later",
            "",
            &props,
            bytes::Bytes::from_static(body.as_bytes()),
        )
        .unwrap(),
    )
}

fn declare_later(s: &crate::Session) {
    let mut args = crate::FieldTable::new();
    args.insert(
        "x-delayed-type",
        crate::FieldValue::LongStr(bytes::Bytes::from_static(b"fanout")),
    );
    let opts = crate::exchange::ExchangeOptions {
        durable: true,
        arguments: args,
        ..Default::default()
    };
    s.declare_exchange("later", "x-delayed-message", opts, false)
        .unwrap();
}

#[test]
fn a_late_write_through_a_deleted_delayed_exchange_never_reaches_its_successor() {
    let d = tempfile::tempdir().unwrap();
    let b = open(d.path());
    let s = b.open_session("guest", "/", meta()).unwrap();
    declare_later(&s);
    // A publisher looked the exchange up; before it writes, the exchange is deleted and
    // declared again by someone else.
    let stale = b.vhost("/").unwrap().exchange("later").unwrap();
    s.delete_exchange("later", false).unwrap();
    declare_later(&s);
    s.publish("later", delayed_msg("new")).unwrap();
    let late = stale.hold(delayed_msg("old"), 3_600_000);
    assert!(
        matches!(late, Ok(None)),
        "a deleted exchange takes nothing ({:?})",
        late.map(|p| p.map(|p| p.ticket()))
    );
    drop(s);
    let b = reopen(b, d.path());
    let x = b.vhost("/").unwrap().exchange("later").unwrap();
    assert_eq!(
        x.delayed_count(),
        1,
        "only the new exchange's message comes back"
    );
}

#[test]
fn queues_in_directories_named_without_an_incarnation_are_still_recovered() {
    let d = tempfile::tempdir().unwrap();
    let b = open(d.path());
    let s = b.open_session("guest", "/", meta()).unwrap();
    let durable = QueueOptions {
        durable: true,
        ..Default::default()
    };
    let (q, _, _) = s.declare_queue("old", durable, false).unwrap();
    let props = crate::message::Properties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let m = crate::message::Message::from_properties("", "old", &props, bytes::Bytes::new());
    s.publish("", Arc::new(m.unwrap())).unwrap();
    let inc = q
        .incarnation()
        .expect("a new queue has an incarnation")
        .to_string();
    let dir = q.dir().unwrap().to_path_buf();
    drop((s, q));
    b.persistence().unwrap().stop();
    drop(b);
    // Rewrite the data directory as an older version left it: no incarnation anywhere.
    let defs_path = d.path().join("definitions.json");
    let text = std::fs::read_to_string(&defs_path).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    for q in doc["queues"].as_array_mut().unwrap() {
        q.as_object_mut().unwrap().remove("incarnation");
    }
    std::fs::write(&defs_path, doc.to_string()).unwrap();
    let old_name = dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(&format!(".{inc}"))
        .to_string();
    let old_dir = dir.with_file_name(&old_name);
    std::fs::rename(&dir, &old_dir).unwrap();
    let b = open(d.path());
    let q = b.vhost("/").unwrap().queue("old", 1).unwrap();
    assert_eq!(
        q.counts().messages,
        1,
        "the message in the old-style directory is back"
    );
    assert_eq!(q.incarnation(), None);
    assert!(
        old_dir.exists(),
        "and its directory is kept, not taken for an orphan"
    );
}

#[test]
fn exported_definitions_are_rabbitmq_format_and_import_into_another_broker() {
    let d = tempfile::tempdir().unwrap();
    let b = open(d.path());
    let s = b.open_session("guest", "/", meta()).unwrap();
    let durable = QueueOptions {
        durable: true,
        ..Default::default()
    };
    s.declare_queue("kept", durable, false).unwrap();
    s.bind_queue("kept", "amq.topic", "a.#", crate::FieldTable::new())
        .unwrap();
    let export = b.export_definitions();
    let text = serde_json::to_string(&export).unwrap();
    assert!(
        !text.contains("incarnation"),
        "FerryMQ's own ids stay out: {text}"
    );
    assert!(export.queues.iter().any(|q| q.name == "kept"));
    assert_eq!(export.bindings.len(), 1);
    let other = tempfile::tempdir().unwrap();
    let b2 = open(other.path());
    b2.import_definitions(&export).unwrap();
    let v = b2.vhost("/").unwrap();
    assert!(v.queue("kept", 1).unwrap().is_persisted());
    let b2 = reopen(b2, other.path());
    assert!(
        b2.vhost("/").unwrap().queue("kept", 1).is_ok(),
        "imported and saved"
    );
}

#[test]
fn queues_saved_with_arguments_their_type_now_refuses_still_come_back() {
    // Before queue types were checked, a classic queue could have a delivery limit and
    // `stream` or `quorum` queues were classic ones, whatever else they asked for. A data
    // directory holding them must still open (the broker refused to start), and they must
    // keep working as they did.
    let d = tempfile::tempdir().unwrap();
    let b = open(d.path());
    let s = b.open_session("guest", "/", meta()).unwrap();
    let durable = QueueOptions {
        durable: true,
        ..Default::default()
    };
    for name in ["limited", "stream", "prio"] {
        s.declare_queue(name, durable.clone(), false).unwrap();
    }
    let props = crate::message::Properties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let m = crate::message::Message::from_properties("", "limited", &props, bytes::Bytes::new());
    s.publish("", Arc::new(m.unwrap())).unwrap();
    drop(s);
    b.persistence().unwrap().stop();
    drop(b);
    // Rewrite the definitions as the earlier version saved those declarations.
    let defs_path = d.path().join("definitions.json");
    let text = std::fs::read_to_string(&defs_path).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    for q in doc["queues"].as_array_mut().unwrap() {
        let args = match q["name"].as_str().unwrap() {
            "limited" => serde_json::json!({"x-delivery-limit": 2, "x-queue-mode": "other"}),
            "stream" => serde_json::json!({"x-queue-type": "stream"}),
            _ => serde_json::json!({"x-queue-type": "quorum", "x-max-priority": 5}),
        };
        q["arguments"] = args;
    }
    std::fs::write(&defs_path, doc.to_string()).unwrap();
    let p = Persistence::open(PersistConfig::new(d.path())).unwrap();
    let b = Broker::open(BrokerConfig::default(), p).expect("the broker starts");
    let v = b.vhost("/").unwrap();
    let q = v.queue("limited", 1).unwrap();
    assert_eq!(q.counts().messages, 1, "its message is back");
    assert_eq!(
        q.config().delivery_limit,
        Some(2),
        "and its limit still applies"
    );
    assert!(v.queue("stream", 1).is_ok());
    assert_eq!(v.queue("prio", 1).unwrap().config().max_priority, Some(5));
}
