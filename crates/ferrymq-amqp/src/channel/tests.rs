//! Channel tests against a real in-memory broker: methods go in through the handlers, and
//! what the channel wrote is decoded from its outbox with the crate's own codec.

use super::{Channel, ClientCaps, ConnCtx, ConnEvent};
use crate::codec::frame::{decode_frame, Frame};
use crate::codec::methods::*;
use crate::codec::Method;
use crate::error::{code, AmqpError};
use crate::outbox::Outbox;
use bytes::{Bytes, BytesMut};
use ferrymq_core::access::Permission;
use ferrymq_core::admin::Credential;
use ferrymq_core::connections::ConnectionMeta;
use ferrymq_core::wire::{encode_properties, scan_properties, Writer};
use ferrymq_core::{Broker, BrokerConfig, FieldTable, FieldValue, Properties};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Large enough that no test body is split across body frames by the writer.
const FRAME_MAX: u32 = 131_072;

/// One connection's worth of state: the broker stays alive as long as the session needs it.
struct Conn {
    _broker: Arc<Broker>,
    ctx: ConnCtx,
    ch: Channel,
    /// Kept so server-cancel events have somewhere to go.
    _events: mpsc::UnboundedReceiver<ConnEvent>,
}

/// A channel 1 opened by `user` on vhost `/` of `broker`.
fn open_as(broker: &Arc<Broker>, user: &str) -> Conn {
    let meta = ConnectionMeta {
        peer: None,
        protocol: "test",
        ..Default::default()
    };
    let session = broker.open_session(user, "/", meta).unwrap();
    let (events, rx) = mpsc::unbounded_channel();
    let ctx = ConnCtx {
        session,
        out: Arc::new(Outbox::new(FRAME_MAX)),
        events,
        caps: ClientCaps::default(),
        frame_max: FRAME_MAX,
        has_published: false,
        sync: None,
        flow: Default::default(),
    };
    let permit = ctx.session.open_channel(1).unwrap();
    let ch = Channel::new(1, &ctx, permit);
    Conn {
        _broker: broker.clone(),
        ctx,
        ch,
        _events: rx,
    }
}

/// A guest channel on a fresh broker.
fn open() -> Conn {
    open_as(&Broker::new(BrokerConfig::default()), "guest")
}

impl Conn {
    /// Feeds one method frame to the channel.
    fn call(&mut self, m: impl Into<Method>) -> Result<(), AmqpError> {
        self.ch.handle_method(&mut self.ctx, m.into())
    }

    /// Every frame written since the last call, decoded.
    fn frames(&self) -> Vec<Frame> {
        let mut buf = self.ctx.out.take_pending();
        let mut frames = Vec::new();
        while let Some(f) = decode_frame(&mut buf, 0).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty(), "partial frame left in the outbox");
        frames
    }

    /// The methods written since the last call (content frames skipped).
    fn methods(&self) -> Vec<Method> {
        self.frames()
            .into_iter()
            .filter_map(|f| match f {
                Frame::Method { channel, method } => {
                    assert_eq!(channel, 1);
                    Some(method)
                }
                _ => None,
            })
            .collect()
    }

    /// Declares a queue and returns its declare-ok.
    fn declare(&mut self, name: &str, arguments: FieldTable) -> QueueDeclareOk {
        self.call(QueueDeclare {
            queue: name.into(),
            arguments,
            ..Default::default()
        })
        .unwrap();
        match self.methods().as_slice() {
            [Method::QueueDeclareOk(ok)] => ok.clone(),
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
    }

    /// Ready messages in `queue`, read with a passive declare.
    fn ready(&mut self, queue: &str) -> u32 {
        self.call(QueueDeclare {
            queue: queue.into(),
            passive: true,
            ..Default::default()
        })
        .unwrap();
        match self.methods().as_slice() {
            [Method::QueueDeclareOk(ok)] => ok.message_count,
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
    }

    /// basic.publish to the default exchange, then a header and the body in `parts` frames.
    fn publish(&mut self, key: &str, parts: &[&[u8]]) -> Result<(), AmqpError> {
        self.publish_with(key, &Properties::default(), parts)
    }

    /// [`Conn::publish`] with message properties.
    fn publish_with(
        &mut self,
        key: &str,
        properties: &Properties,
        parts: &[&[u8]],
    ) -> Result<(), AmqpError> {
        self.call(BasicPublish {
            routing_key: key.into(),
            ..Default::default()
        })?;
        let mut props = BytesMut::new();
        encode_properties(properties, &mut Writer::new(&mut props));
        let props = props.freeze();
        let summary = scan_properties(&props).unwrap();
        let size = parts.iter().map(|p| p.len() as u64).sum();
        self.ch
            .handle_header(&mut self.ctx, 60, size, props, summary)?;
        for p in parts {
            self.ch
                .handle_body(&mut self.ctx, Bytes::copy_from_slice(p))?;
        }
        Ok(())
    }
}

/// The code, text and causing method of a channel error; panics on anything else.
fn channel_error(r: Result<(), AmqpError>) -> (u16, String, (u16, u16)) {
    match r {
        Err(AmqpError::Channel {
            channel,
            code,
            text,
            class_id,
            method_id,
        }) => {
            assert_eq!(channel, 1);
            (code, text, (class_id, method_id))
        }
        other => panic!("expected a channel error, got {other:?}"),
    }
}

/// A queue-arguments table.
fn args(kv: &[(&str, FieldValue)]) -> FieldTable {
    FieldTable(kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

#[test]
fn queue_declare_answers_with_the_name_and_counts() {
    let mut c = open();
    let ok = c.declare("q", FieldTable::default());
    assert_eq!(
        ok,
        QueueDeclareOk {
            queue: "q".into(),
            message_count: 0,
            consumer_count: 0,
        }
    );
}

#[test]
fn server_named_queue_is_generated_and_becomes_the_channel_default() {
    let mut c = open();
    let ok = c.declare("", FieldTable::default());
    assert!(ok.queue.starts_with("amq.gen-"), "{}", ok.queue);
    c.publish(&ok.queue, &[b"x"]).unwrap();
    // An empty queue name now means the queue just declared.
    c.call(QueuePurge::default()).unwrap();
    assert_eq!(
        c.methods(),
        vec![Method::QueuePurgeOk(QueuePurgeOk { message_count: 1 })]
    );
}

#[test]
fn empty_queue_name_without_a_declared_queue_is_404() {
    let mut c = open();
    let (code, text, ids) = channel_error(c.call(QueuePurge::default()));
    assert_eq!(code, code::NOT_FOUND);
    assert_eq!(text, "NOT_FOUND - no previously declared queue");
    assert_eq!(ids, (50, 30));
}

#[test]
fn published_message_is_returned_by_basic_get_with_its_body() {
    let mut c = open();
    c.declare("q", FieldTable::default());
    // Two body frames: the channel must assemble them.
    c.publish("q", &[b"hello ", b"world"]).unwrap();
    assert!(c.ctx.has_published);
    assert!(c.frames().is_empty());
    c.call(BasicGet {
        queue: "q".into(),
        ..Default::default()
    })
    .unwrap();
    let frames = c.frames();
    let [Frame::Method {
        method: Method::BasicGetOk(ok),
        ..
    }, Frame::Header { body_size, .. }, Frame::Body { payload, .. }] = frames.as_slice()
    else {
        panic!("expected get-ok, header and body, got {frames:?}");
    };
    assert_eq!(
        *ok,
        BasicGetOk {
            delivery_tag: 1,
            redelivered: false,
            exchange: String::new(),
            routing_key: "q".into(),
            message_count: 0,
        }
    );
    assert_eq!(*body_size, 11);
    assert_eq!(&payload[..], b"hello world");

    c.call(BasicAck {
        delivery_tag: 1,
        multiple: false,
    })
    .unwrap();
    c.call(BasicGet {
        queue: "q".into(),
        ..Default::default()
    })
    .unwrap();
    assert!(matches!(c.methods().as_slice(), [Method::BasicGetEmpty(_)]));
}

#[test]
fn publisher_confirms_ack_by_publish_sequence_number() {
    let mut c = open();
    c.declare("q", FieldTable::default());
    c.call(ConfirmSelect { nowait: false }).unwrap();
    assert_eq!(
        c.methods(),
        vec![Method::ConfirmSelectOk(ConfirmSelectOk {})]
    );

    c.publish("q", &[b"1"]).unwrap();
    // Confirms go out when the connection flushes after a batch of frames.
    assert!(c.frames().is_empty());
    c.ch.flush_confirms(&c.ctx).unwrap();
    assert_eq!(
        c.methods(),
        vec![Method::BasicAck(BasicAck {
            delivery_tag: 1,
            multiple: false,
        })]
    );

    c.publish("q", &[b"2"]).unwrap();
    c.publish("nowhere", &[b"3"]).unwrap();
    c.ch.flush_confirms(&c.ctx).unwrap();
    assert_eq!(
        c.methods(),
        vec![Method::BasicAck(BasicAck {
            delivery_tag: 3,
            multiple: true,
        })]
    );
    assert!(!c.ch.awaits_sync());
}

#[test]
fn publisher_confirms_nack_a_publish_the_queue_refuses() {
    let mut c = open();
    c.declare(
        "q",
        args(&[
            ("x-max-length", FieldValue::I32(1)),
            ("x-overflow", FieldValue::string("reject-publish")),
        ]),
    );
    c.call(ConfirmSelect { nowait: true }).unwrap();
    c.publish("q", &[b"kept"]).unwrap();
    c.publish("q", &[b"refused"]).unwrap();
    c.ch.flush_confirms(&c.ctx).unwrap();
    assert_eq!(
        c.methods(),
        vec![
            Method::BasicAck(BasicAck {
                delivery_tag: 1,
                multiple: false,
            }),
            Method::BasicNack(BasicNack {
                delivery_tag: 2,
                multiple: false,
                requeue: false,
            }),
        ]
    );
}

#[test]
fn ack_of_an_unknown_delivery_tag_is_406() {
    let mut c = open();
    let (code, text, ids) = channel_error(c.call(BasicAck {
        delivery_tag: 5,
        multiple: false,
    }));
    assert_eq!(code, code::PRECONDITION_FAILED);
    assert_eq!(text, "PRECONDITION_FAILED - unknown delivery tag 5");
    assert_eq!(ids, (60, 80));

    let (code, text, _) = channel_error(c.call(BasicAck {
        delivery_tag: 7,
        multiple: true,
    }));
    assert_eq!(code, code::PRECONDITION_FAILED);
    assert_eq!(text, "PRECONDITION_FAILED - unknown delivery tag 7");
}

#[test]
fn declaring_without_configure_permission_is_403() {
    let broker = Broker::new(BrokerConfig::default());
    broker
        .put_user("u", Credential::Password("p".into()), &[])
        .unwrap();
    broker
        .set_permissions(
            "u",
            "/",
            Permission {
                configure: "".into(),
                write: ".*".into(),
                read: ".*".into(),
            },
        )
        .unwrap();
    let mut c = open_as(&broker, "u");
    let (code, text, ids) = channel_error(c.call(QueueDeclare {
        queue: "q".into(),
        ..Default::default()
    }));
    assert_eq!(code, code::ACCESS_REFUSED);
    assert_eq!(
        text,
        "ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user 'u'"
    );
    assert_eq!(ids, (50, 10));
}

#[test]
fn tx_rollback_drops_publishes_and_commit_delivers_them() {
    let mut c = open();
    c.declare("q", FieldTable::default());
    c.call(TxSelect {}).unwrap();
    assert_eq!(c.methods(), vec![Method::TxSelectOk(TxSelectOk {})]);

    c.publish("q", &[b"rolled back"]).unwrap();
    assert_eq!(c.ready("q"), 0);
    c.call(TxRollback {}).unwrap();
    assert_eq!(c.methods(), vec![Method::TxRollbackOk(TxRollbackOk {})]);
    assert_eq!(c.ready("q"), 0);

    c.publish("q", &[b"committed"]).unwrap();
    assert_eq!(c.ready("q"), 0);
    c.call(TxCommit {}).unwrap();
    assert_eq!(c.methods(), vec![Method::TxCommitOk(TxCommitOk {})]);
    assert_eq!(c.ready("q"), 1);

    let (code, text, _) = channel_error(c.call(ConfirmSelect { nowait: false }));
    assert_eq!(code, code::PRECONDITION_FAILED);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
    );
}

#[test]
fn tx_commit_outside_a_transaction_is_406() {
    let mut c = open();
    let (code, text, ids) = channel_error(c.call(TxCommit {}));
    assert_eq!(code, code::PRECONDITION_FAILED);
    assert_eq!(text, "PRECONDITION_FAILED - channel is not transactional");
    assert_eq!(ids, (90, 20));
}

#[test]
fn consumer_gets_a_deliver_and_nack_without_requeue_drops_it() {
    let mut c = open();
    c.declare("q", FieldTable::default());
    c.call(BasicConsume {
        queue: "q".into(),
        consumer_tag: "c1".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        c.methods(),
        vec![Method::BasicConsumeOk(BasicConsumeOk {
            consumer_tag: "c1".into(),
        })]
    );

    c.publish("q", &[b"m"]).unwrap();
    let frames = c.frames();
    let [Frame::Method {
        method: Method::BasicDeliver(d),
        ..
    }, Frame::Header { .. }, Frame::Body { payload, .. }] = frames.as_slice()
    else {
        panic!("expected deliver, header and body, got {frames:?}");
    };
    assert_eq!(
        *d,
        BasicDeliver {
            consumer_tag: "c1".into(),
            delivery_tag: 1,
            redelivered: false,
            exchange: String::new(),
            routing_key: "q".into(),
        }
    );
    assert_eq!(&payload[..], b"m");

    c.call(BasicNack {
        delivery_tag: 1,
        multiple: false,
        requeue: false,
    })
    .unwrap();
    // Dropped, not redelivered to the still-attached consumer.
    assert!(c.frames().is_empty());
    assert_eq!(c.ready("q"), 0);
    let (code, _, _) = channel_error(c.call(BasicAck {
        delivery_tag: 1,
        multiple: false,
    }));
    assert_eq!(code, code::PRECONDITION_FAILED);
}

#[test]
fn prefetch_holds_deliveries_until_an_ack_frees_credit() {
    let mut c = open();
    c.declare("q", FieldTable::default());
    c.call(BasicQos {
        prefetch_count: 1,
        ..Default::default()
    })
    .unwrap();
    c.call(BasicConsume {
        queue: "q".into(),
        consumer_tag: "c1".into(),
        nowait: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.methods(), vec![Method::BasicQosOk(BasicQosOk {})]);
    c.publish("q", &[b"1"]).unwrap();
    c.publish("q", &[b"2"]).unwrap();
    let tags = |ms: Vec<Method>| -> Vec<u64> {
        ms.into_iter()
            .filter_map(|m| match m {
                Method::BasicDeliver(d) => Some(d.delivery_tag),
                _ => None,
            })
            .collect()
    };
    assert_eq!(tags(c.methods()), vec![1]);
    c.call(BasicAck {
        delivery_tag: 1,
        multiple: false,
    })
    .unwrap();
    assert_eq!(tags(c.methods()), vec![2]);
}

#[test]
fn consumer_timeout_is_a_406_once_a_delivery_outlives_the_queue_timeout() {
    let mut c = open();
    c.declare("q", args(&[("x-consumer-timeout", FieldValue::I32(100))]));
    c.call(BasicConsume {
        queue: "q".into(),
        consumer_tag: "c1".into(),
        nowait: true,
        ..Default::default()
    })
    .unwrap();
    c.publish("q", &[b"slow"]).unwrap();
    assert_eq!(c.methods().len(), 1);

    // The first tick only records when delivery 1 was (at the latest) handed out.
    assert!(c.ch.check_consumer_timeout(&c.ctx, 1_000).is_none());
    assert!(c.ch.check_consumer_timeout(&c.ctx, 1_100).is_none());
    let e = c.ch.check_consumer_timeout(&c.ctx, 1_101);
    let (code, text, _) = channel_error(e.map_or(Ok(()), Err));
    assert_eq!(code, code::PRECONDITION_FAILED);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 100 ms. This timeout value can be configured, see consumers doc guide to learn more"
    );

    // Once acked, nothing is held and the clock no longer matters.
    c.call(BasicAck {
        delivery_tag: 1,
        multiple: false,
    })
    .unwrap();
    assert!(c.ch.check_consumer_timeout(&c.ctx, 10_000).is_none());
}

#[test]
fn content_frames_without_a_publish_are_connection_errors() {
    let mut c = open();
    let r = c.ch.handle_body(&mut c.ctx, Bytes::from_static(b"x"));
    assert!(
        matches!(r, Err(AmqpError::Connection { code, .. }) if code == code::UNEXPECTED_FRAME),
        "{r:?}"
    );
    let r = c.call(BasicPublish {
        immediate: true,
        ..Default::default()
    });
    assert!(
        matches!(r, Err(AmqpError::Connection { code, .. }) if code == code::NOT_IMPLEMENTED),
        "{r:?}"
    );
}

#[test]
fn cleanup_returns_unacked_deliveries_to_their_queue() {
    let mut c = open();
    c.declare("q", FieldTable::default());
    c.publish("q", &[b"held"]).unwrap();
    c.call(BasicGet {
        queue: "q".into(),
        ..Default::default()
    })
    .unwrap();
    c.frames();
    assert_eq!(c.ready("q"), 0);
    c.ch.cleanup(&c.ctx);
    assert_eq!(c.ready("q"), 1);
}

#[test]
fn unsynced_persistent_writes_spend_the_flow_credit_until_the_sync_catches_up() {
    use ferrymq_core::flow::FLOW_CREDIT_BYTES;
    use ferrymq_core::persist::{PersistConfig, Persistence};
    let dir = tempfile::tempdir().unwrap();
    let p = Persistence::open(PersistConfig::new(dir.path())).unwrap();
    let broker = Broker::open(BrokerConfig::default(), p).unwrap();
    let mut c = open_as(&broker, "guest");
    // The connection sees group-commit progress only through this watch: hold it at 0, as
    // a disk that has not synced anything yet.
    let (synced, rx) = tokio::sync::watch::channel(0u64);
    c.ctx.sync = Some(rx);
    c.call(QueueDeclare {
        queue: "d".into(),
        durable: true,
        ..Default::default()
    })
    .unwrap();
    c.methods();
    let persistent = Properties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let body = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    while sent <= FLOW_CREDIT_BYTES {
        assert!(
            !c.ctx.flow.throttled(c.ctx.synced()),
            "held after {sent} bytes"
        );
        c.publish_with("d", &persistent, &[&body]).unwrap();
        sent += body.len() as u64;
    }
    assert!(c.ctx.flow.throttled(c.ctx.synced()), "credit spent");
    // Transient messages are not written, so they spend nothing.
    let mut t = open_as(&broker, "guest");
    t.ctx.sync = Some(synced.subscribe());
    t.declare("transient", FieldTable::new());
    for _ in 0..32 {
        t.publish("transient", &[&body]).unwrap();
    }
    assert!(!t.ctx.flow.throttled(t.ctx.synced()));
    // The sync catching up gives the credit back.
    synced.send_replace(u64::MAX - 1);
    assert!(!c.ctx.flow.throttled(c.ctx.synced()));
}
