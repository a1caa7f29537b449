//! Seed inputs for every target, built with the real encoders so they reach deep into the
//! code from the first run. `tests/rust/fuzz_corpus.rs` replays them in every test run and
//! writes them to `fuzz/corpus/<target>/seed-*` on request.

use bytes::{BufMut, BytesMut};
use ferrymq_amqp::codec::frame::{body_frames, encode_header_properties, encode_method};
use ferrymq_amqp::codec::methods::*;
use ferrymq_amqp::codec::{Method, FRAME_END, PROTOCOL_HEADER};
use ferrymq_core::wire::write_table;
use ferrymq_core::{FieldTable, FieldValue, Message, Properties};

/// A seed: target, file name, bytes.
pub type Seed = (&'static str, &'static str, Vec<u8>);

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut s = Vec::new();
    s.extend(frames());
    s.extend(tables());
    s.extend(handshakes());
    s.extend(definitions());
    s.extend(segments());
    s
}

fn t(pairs: Vec<(&str, FieldValue)>) -> FieldTable {
    FieldTable(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A table with one value of every type.
fn every_type() -> FieldTable {
    t(vec![
        ("bool", FieldValue::Bool(true)),
        ("i8", FieldValue::I8(-3)),
        ("u8", FieldValue::U8(200)),
        ("i16", FieldValue::I16(-300)),
        ("u16", FieldValue::U16(60000)),
        ("i32", FieldValue::I32(-70000)),
        ("u32", FieldValue::U32(4_000_000_000)),
        ("i64", FieldValue::I64(-(1 << 40))),
        ("f32", FieldValue::F32(1.5)),
        ("f64", FieldValue::F64(-2.25)),
        ("dec", FieldValue::Decimal(2, 12345)),
        ("str", FieldValue::string("héllo")),
        (
            "bytes",
            FieldValue::Bytes(bytes::Bytes::from_static(&[0, 1, 2])),
        ),
        (
            "arr",
            FieldValue::Array(vec![FieldValue::I32(1), FieldValue::string("x")]),
        ),
        ("ts", FieldValue::Timestamp(1_700_000_000)),
        (
            "tbl",
            FieldValue::Table(t(vec![("k", FieldValue::string("v"))])),
        ),
        ("void", FieldValue::Void),
    ])
}

/// Properties with every field set.
fn all_properties() -> Properties {
    Properties {
        content_type: Some("text/plain".into()),
        content_encoding: Some("utf-8".into()),
        headers: Some(t(vec![
            ("x-delay", FieldValue::I32(5)),
            ("x-match", FieldValue::string("all")),
            ("k", FieldValue::I64(1)),
        ])),
        delivery_mode: Some(2),
        priority: Some(5),
        correlation_id: Some("corr".into()),
        reply_to: Some("replies".into()),
        expiration: Some("60000".into()),
        message_id: Some("m-1".into()),
        timestamp: Some(1_700_000_000),
        kind: Some("type".into()),
        user_id: Some("guest".into()),
        app_id: Some("app".into()),
        cluster_id: Some("c".into()),
    }
}

/// A client's frames: appended one by one.
#[derive(Default)]
struct Stream(BytesMut);

impl Stream {
    fn m(&mut self, ch: u16, m: impl Into<Method>) -> &mut Self {
        encode_method(&mut self.0, ch, &m.into());
        self
    }

    /// A publish: method, content header, body split into frames of at most `frame_max`.
    fn publish(&mut self, ch: u16, ex: &str, rk: &str, p: &Properties, body: &[u8]) -> &mut Self {
        self.m(
            ch,
            BasicPublish {
                exchange: ex.into(),
                routing_key: rk.into(),
                ..Default::default()
            },
        );
        encode_header_properties(&mut self.0, ch, body.len() as u64, p);
        body_frames(ch, body.len(), 4096, |h, r| {
            self.0.put_slice(&h);
            self.0.put_slice(&body[r]);
            self.0.put_u8(FRAME_END);
        });
        self
    }

    fn heartbeat(&mut self) -> &mut Self {
        self.0.put_slice(&[8, 0, 0, 0, 0, 0, 0, FRAME_END]);
        self
    }

    /// start-ok (PLAIN guest/guest, with capabilities), tune-ok, open `/`, channel 1.
    fn login(&mut self) -> &mut Self {
        let caps = t(vec![
            ("publisher_confirms", FieldValue::Bool(true)),
            ("consumer_cancel_notify", FieldValue::Bool(true)),
            ("connection.blocked", FieldValue::Bool(true)),
        ]);
        self.m(
            0,
            ConnectionStartOk {
                client_properties: t(vec![
                    ("product", FieldValue::string("fuzz")),
                    ("capabilities", FieldValue::Table(caps)),
                ]),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            },
        )
        .m(
            0,
            ConnectionTuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            },
        )
        .m(
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
                ..Default::default()
            },
        )
        .m(1, ChannelOpen::default())
    }

    fn bytes(&self) -> Vec<u8> {
        self.0.to_vec()
    }
}

fn queue_declare(queue: &str, arguments: FieldTable) -> QueueDeclare {
    QueueDeclare {
        queue: queue.into(),
        arguments,
        ..Default::default()
    }
}

fn exchange_declare(exchange: &str, kind: &str, arguments: FieldTable) -> ExchangeDeclare {
    ExchangeDeclare {
        exchange: exchange.into(),
        kind: kind.into(),
        arguments,
        ..Default::default()
    }
}

fn bind(queue: &str, exchange: &str, key: &str, arguments: FieldTable) -> QueueBind {
    QueueBind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: key.into(),
        arguments,
        ..Default::default()
    }
}

/// A session touching most of the protocol: topology with queue arguments, confirms,
/// publishes with every property, get, consume, acks, nacks, transactions, deletes.
fn full_session() -> Vec<u8> {
    let mut s = Stream::default();
    let plain = Properties::default();
    s.login()
        .m(
            1,
            BasicQos {
                prefetch_count: 10,
                ..Default::default()
            },
        )
        .m(1, exchange_declare("ex.topic", "topic", FieldTable::new()))
        .m(
            1,
            queue_declare(
                "work",
                t(vec![
                    ("x-message-ttl", FieldValue::I32(60000)),
                    ("x-max-length", FieldValue::I32(100)),
                    ("x-dead-letter-exchange", FieldValue::string("")),
                    ("x-dead-letter-routing-key", FieldValue::string("dead")),
                ]),
            ),
        )
        .m(1, queue_declare("dead", FieldTable::new()))
        .m(1, bind("work", "ex.topic", "a.*.#", FieldTable::new()))
        .m(1, ConfirmSelect::default())
        .publish(1, "ex.topic", "a.b.c", &all_properties(), b"hello")
        .publish(1, "", "work", &plain, &[7u8; 5000])
        .m(
            1,
            BasicGet {
                queue: "work".into(),
                ..Default::default()
            },
        )
        .m(
            1,
            BasicAck {
                delivery_tag: 1,
                multiple: false,
            },
        )
        .m(
            1,
            BasicConsume {
                queue: "work".into(),
                consumer_tag: "c1".into(),
                ..Default::default()
            },
        )
        .publish(1, "", "work", &plain, b"x")
        .m(
            1,
            BasicNack {
                delivery_tag: 2,
                multiple: true,
                requeue: false,
            },
        )
        .m(
            1,
            BasicReject {
                delivery_tag: 3,
                requeue: true,
            },
        )
        .m(1, BasicRecover { requeue: true })
        .m(
            1,
            BasicCancel {
                consumer_tag: "c1".into(),
                nowait: false,
            },
        )
        .heartbeat()
        .m(2, ChannelOpen::default())
        .m(2, TxSelect {})
        .publish(2, "", "dead", &plain, b"tx")
        .m(2, TxCommit {})
        .m(2, TxRollback {})
        .m(2, ChannelFlow { active: false })
        .m(
            2,
            QueuePurge {
                queue: "dead".into(),
                ..Default::default()
            },
        )
        .m(
            2,
            QueueDelete {
                queue: "dead".into(),
                ..Default::default()
            },
        )
        .m(
            2,
            ExchangeDelete {
                exchange: "ex.topic".into(),
                ..Default::default()
            },
        )
        .m(2, ChannelClose::default())
        .m(1, ChannelClose::default())
        .m(0, ConnectionClose::default());
    s.bytes()
}

/// Headers, fanout, delayed and priority routing, exchange-to-exchange bindings, mandatory
/// publishes that come back, exclusive and server-named queues.
fn routing_session() -> Vec<u8> {
    let mut s = Stream::default();
    let headers = Properties {
        headers: Some(t(vec![
            ("format", FieldValue::string("pdf")),
            ("x-delay", FieldValue::I32(1)),
        ])),
        priority: Some(3),
        ..Default::default()
    };
    s.login()
        .m(1, exchange_declare("h", "headers", FieldTable::new()))
        .m(
            1,
            exchange_declare(
                "f",
                "fanout",
                t(vec![("alternate-exchange", FieldValue::string("h"))]),
            ),
        )
        .m(
            1,
            exchange_declare(
                "later",
                "x-delayed-message",
                t(vec![("x-delayed-type", FieldValue::string("fanout"))]),
            ),
        )
        .m(
            1,
            ExchangeBind {
                destination: "h".into(),
                source: "later".into(),
                ..Default::default()
            },
        )
        .m(
            1,
            QueueDeclare {
                exclusive: true,
                ..Default::default()
            },
        )
        .m(
            1,
            queue_declare("prio", t(vec![("x-max-priority", FieldValue::U8(10))])),
        )
        .m(
            1,
            bind(
                "prio",
                "h",
                "",
                t(vec![
                    ("x-match", FieldValue::string("any")),
                    ("format", FieldValue::string("pdf")),
                ]),
            ),
        )
        .publish(1, "f", "", &headers, b"to headers")
        .publish(1, "later", "", &headers, b"later")
        .m(
            1,
            BasicPublish {
                routing_key: "nowhere".into(),
                mandatory: true,
                ..Default::default()
            },
        );
    encode_header_properties(&mut s.0, 1, 3, &Properties::default());
    body_frames(1, 3, 4096, |h, _| {
        s.0.put_slice(&h);
        s.0.put_slice(b"abc");
        s.0.put_u8(FRAME_END);
    });
    s.m(
        1,
        QueueUnbind {
            queue: "prio".into(),
            exchange: "h".into(),
            ..Default::default()
        },
    )
    .m(
        1,
        ExchangeUnbind {
            destination: "h".into(),
            source: "later".into(),
            ..Default::default()
        },
    )
    .m(0, ConnectionClose::default());
    s.bytes()
}

fn with_selector(sel: u8, header: &[u8], frames: &[u8]) -> Vec<u8> {
    let mut v = vec![sel];
    v.extend_from_slice(header);
    v.extend_from_slice(frames);
    v
}

fn handshakes() -> Vec<Seed> {
    let mut amqplain = BytesMut::new();
    write_table(
        &mut amqplain,
        &t(vec![
            ("LOGIN", FieldValue::string("guest")),
            ("PASSWORD", FieldValue::string("guest")),
        ]),
    );
    let mut alt = Stream::default();
    alt.m(
        0,
        ConnectionStartOk {
            mechanism: "AMQPLAIN".into(),
            response: ferrymq_core::wire::LongStr(amqplain.split_off(4).freeze()),
            ..Default::default()
        },
    )
    .m(
        0,
        ConnectionTuneOk {
            channel_max: 0,
            frame_max: 0,
            heartbeat: 0,
        },
    )
    .m(
        0,
        ConnectionOpen {
            virtual_host: "/".into(),
            ..Default::default()
        },
    )
    .m(0, ConnectionUpdateSecret::default())
    .m(0, ConnectionClose::default());
    let mut just_login = Stream::default();
    just_login.login().m(0, ConnectionClose::default());
    vec![
        (
            "handshake",
            "full-session",
            with_selector(0, PROTOCOL_HEADER, &full_session()),
        ),
        (
            "handshake",
            "full-session-split",
            with_selector(2, PROTOCOL_HEADER, &full_session()),
        ),
        (
            "handshake",
            "routing",
            with_selector(0, PROTOCOL_HEADER, &routing_session()),
        ),
        (
            "handshake",
            "login",
            with_selector(1, PROTOCOL_HEADER, &just_login.bytes()),
        ),
        (
            "handshake",
            "amqplain",
            with_selector(3, PROTOCOL_HEADER, &alt.bytes()),
        ),
        (
            "handshake",
            "bad-header",
            with_selector(0, b"AMQP\x01\x01\x00\x09", &[]),
        ),
    ]
}

fn frames() -> Vec<Seed> {
    let mut deliver = Stream::default();
    deliver
        .m(
            0,
            ConnectionStart {
                version_minor: 9,
                server_properties: every_type(),
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
                ..Default::default()
            },
        )
        .m(
            1,
            BasicDeliver {
                consumer_tag: "c".into(),
                delivery_tag: 1,
                redelivered: true,
                exchange: "x".into(),
                routing_key: "k".into(),
            },
        );
    encode_header_properties(&mut deliver.0, 1, 2, &all_properties());
    deliver
        .0
        .put_slice(&[3, 0, 1, 0, 0, 0, 2, b'h', b'i', FRAME_END]);
    deliver.heartbeat();
    vec![
        (
            "amqp_frames",
            "client-session",
            [&[1u8][..], &full_session()].concat(),
        ),
        (
            "amqp_frames",
            "client-routing",
            [&[0u8][..], &routing_session()].concat(),
        ),
        (
            "amqp_frames",
            "server-frames",
            [&[2u8][..], &deliver.bytes()].concat(),
        ),
    ]
}

fn tables() -> Vec<Seed> {
    let mut table = BytesMut::new();
    write_table(&mut table, &every_type());
    let mut props = BytesMut::new();
    ferrymq_core::wire::encode_properties(
        &all_properties(),
        &mut ferrymq_core::wire::Writer::new(&mut props),
    );
    let mut nested = BytesMut::new();
    write_table(
        &mut nested,
        &t(vec![(
            "x-death",
            FieldValue::Array(vec![FieldValue::Table(t(vec![
                ("count", FieldValue::I64(1)),
                ("reason", FieldValue::string("rejected")),
                (
                    "routing-keys",
                    FieldValue::Array(vec![FieldValue::string("k")]),
                ),
            ]))]),
        )]),
    );
    vec![
        ("field_tables", "every-type", table[4..].to_vec()),
        ("field_tables", "all-properties", props.to_vec()),
        ("field_tables", "x-death", nested[4..].to_vec()),
    ]
}

fn definitions() -> Vec<Seed> {
    let readme = r#"{
  "users": [{"name": "app", "password": "s3cret", "tags": ["management"],
             "limits": {"max-connections": 20}}],
  "vhosts": [{"name": "/"}, {"name": "shop"}],
  "permissions": [{"user": "app", "vhost": "shop",
                   "configure": "^app\\.", "write": ".*", "read": ".*"}],
  "topic_permissions": [{"user": "app", "vhost": "shop", "exchange": "amq.topic",
                         "write": "^{username}\\.", "read": ".*"}],
  "parameters": [{"vhost": "shop", "component": "vhost-limits", "name": "limits",
                  "value": {"max-queues": 500}}]
}"#;
    let export = r#"{
  "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8",
  "product_name": "RabbitMQ", "product_version": "3.10.8",
  "users": [{"name": "guest", "password_hash": "BMfxN8drrYcIqXZMr+pWTpDT0nMcOagMduLX0bjr4jwud/pN",
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"], "limits": {}},
            {"name": "old", "password_hash": "x", "tags": "monitoring, management"}],
  "vhosts": [{"name": "/"}],
  "permissions": [{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
  "topic_permissions": [], "parameters": [], "global_parameters": [],
  "policies": [{"vhost": "/", "name": "ttl", "pattern": "^t\\.", "apply-to": "queues",
                "definition": {"message-ttl": 1000, "max-length": 5, "overflow": "reject-publish",
                               "dead-letter-exchange": "dlx"}, "priority": 0}],
  "queues": [{"name": "q", "vhost": "/", "durable": true, "auto_delete": false,
              "arguments": {"x-max-length": 10, "x-max-priority": 5, "x-expires": 600000}},
             {"name": "t.1", "vhost": "/", "durable": true, "auto_delete": false,
              "arguments": {"x-queue-type": "classic", "x-single-active-consumer": true}}],
  "exchanges": [{"name": "x", "vhost": "/", "type": "topic", "durable": true,
                 "auto_delete": false, "internal": false, "arguments": {"alternate-exchange": "ae"}},
                {"name": "ae", "vhost": "/", "type": "fanout", "durable": true,
                 "auto_delete": false, "internal": false, "arguments": {}},
                {"name": "d", "vhost": "/", "type": "x-delayed-message", "durable": true,
                 "auto_delete": false, "internal": false, "arguments": {"x-delayed-type": "direct"}}],
  "bindings": [{"source": "x", "vhost": "/", "destination": "q",
                "destination_type": "queue", "routing_key": "a.#", "arguments": {}},
               {"source": "x", "vhost": "/", "destination": "ae",
                "destination_type": "exchange", "routing_key": "", "arguments": {}},
               {"source": "amq.headers", "vhost": "/", "destination": "t.1",
                "destination_type": "queue", "routing_key": "", "arguments": {"x-match": "any", "a": 1}}]
}"#;
    vec![
        ("definitions", "readme", readme.as_bytes().to_vec()),
        ("definitions", "rabbitmq-export", export.as_bytes().to_vec()),
        ("definitions", "empty", b"{}".to_vec()),
    ]
}

/// A segment record as a paged queue writes it: `[flags][seq u64 LE][message record]`.
fn message_record(seq: u64, persistent: bool, body: &[u8], out: &mut Vec<u8>) {
    let p = Properties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        headers: Some(t(vec![("k", FieldValue::I32(1))])),
        ..Default::default()
    };
    let m = Message::from_properties("ex", "key", &p, bytes::Bytes::copy_from_slice(body))
        .expect("a valid message");
    let mut payload = vec![u8::from(persistent)];
    payload.extend_from_slice(&seq.to_le_bytes());
    m.encode_record(&mut payload);
    ferrymq_store::record::encode(&payload, out);
}

fn segments() -> Vec<Seed> {
    let mut seg = Vec::new();
    let mut first_offsets = Vec::new();
    for i in 0..6u64 {
        first_offsets.push(seg.len() as u32);
        message_record(
            i,
            i % 3 != 2,
            &vec![i as u8; 10 + i as usize * 40],
            &mut seg,
        );
    }
    let acks: Vec<u8> = first_offsets[..2]
        .iter()
        .flat_map(|o| o.to_le_bytes())
        .collect();
    let input = |sel: u8, acks: &[u8], seg: &[u8]| {
        let mut v = vec![sel, acks.len() as u8];
        v.extend_from_slice(acks);
        v.extend_from_slice(seg);
        v
    };
    let torn = &seg[..seg.len() - 7];
    let mut flipped = seg.clone();
    flipped[30] ^= 0x10;
    vec![
        ("segment_recovery", "records", input(0, &[], &seg)),
        (
            "segment_recovery",
            "records-acked",
            input(8 * 2, &acks, &seg),
        ),
        ("segment_recovery", "torn-tail", input(4, &[], torn)),
        ("segment_recovery", "bit-flip", input(8, &acks, &flipped)),
    ]
}
