//! A deliberately dumb AMQP client over a raw socket, for tests that send what no client
//! library would.

use super::{channel, get, publish, TestBroker, WAIT};
use bytes::BytesMut;
use ferrymq_amqp::codec::frame::{decode_frame, encode_method};
use ferrymq_amqp::codec::methods::*;
use ferrymq_amqp::codec::{Frame, Method, PROTOCOL_HEADER};
use ferrymq_core::{FieldTable, FieldValue};
use lapin::options::*;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A deliberately dumb AMQP client that sends exactly what a test asks for.
pub struct Raw {
    pub s: TcpStream,
    pub buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.expect("tcp connect"),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.expect("write");
    }

    pub async fn method(&mut self, ch: u16, m: impl Into<Method>) {
        let mut b = BytesMut::new();
        encode_method(&mut b, ch, &m.into());
        self.send(&b).await;
    }

    /// Next frame, or None at EOF. Heartbeats are returned like any frame.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, 0).expect("server sends valid frames") {
                return Some(f);
            }
            let n = tokio::time::timeout(WAIT, self.s.read_buf(&mut self.buf))
                .await
                .expect("server answers within the wait limit")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Next method frame, skipping heartbeats.
    pub async fn next_method(&mut self) -> Option<(u16, Method)> {
        loop {
            match self.frame().await? {
                Frame::Method { channel, method } => return Some((channel, method)),
                _ => continue,
            }
        }
    }

    /// Runs the handshake as guest with the given heartbeat; returns connection.start.
    pub async fn open(addr: SocketAddr, heartbeat: u16) -> (Raw, ConnectionStart) {
        Raw::open_as(addr, "guest", "guest", heartbeat).await
    }

    /// Runs the handshake as `user` on vhost `/`; returns connection.start.
    pub async fn open_as(
        addr: SocketAddr,
        user: &str,
        pass: &str,
        heartbeat: u16,
    ) -> (Raw, ConnectionStart) {
        let mut r = Raw::connect(addr).await;
        r.send(PROTOCOL_HEADER).await;
        let Some((0, Method::ConnectionStart(start))) = r.next_method().await else {
            panic!("expected start")
        };
        let caps = FieldTable(vec![
            ("connection.blocked".into(), FieldValue::Bool(true)),
            ("consumer_cancel_notify".into(), FieldValue::Bool(true)),
        ]);
        r.method(
            0,
            ConnectionStartOk {
                client_properties: FieldTable(vec![(
                    "capabilities".into(),
                    FieldValue::Table(caps),
                )]),
                mechanism: "PLAIN".into(),
                response: LongStrBytes::plain(user, pass),
                locale: "en_US".into(),
            },
        )
        .await;
        let Some((0, Method::ConnectionTune(t))) = r.next_method().await else {
            panic!("expected tune")
        };
        r.method(
            0,
            ConnectionTuneOk {
                channel_max: t.channel_max,
                frame_max: t.frame_max,
                heartbeat,
            },
        )
        .await;
        r.method(
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
                ..Default::default()
            },
        )
        .await;
        let Some((0, Method::ConnectionOpenOk(_))) = r.next_method().await else {
            panic!("expected open-ok")
        };
        (r, start)
    }

    pub async fn open_channel(&mut self, ch: u16) {
        self.method(ch, ChannelOpen::default()).await;
        let Some((c, Method::ChannelOpenOk(_))) = self.next_method().await else {
            panic!("expected channel.open-ok")
        };
        assert_eq!(c, ch);
    }

    /// Waits for connection.close, answers close-ok, and returns (code, text).
    pub async fn expect_connection_close(&mut self) -> (u16, String) {
        loop {
            match self.next_method().await {
                Some((0, Method::ConnectionClose(c))) => {
                    self.method(0, ConnectionCloseOk {}).await;
                    return (c.reply_code, c.reply_text);
                }
                Some(_) => continue,
                None => panic!("connection ended without connection.close"),
            }
        }
    }

    /// The broker's answer to a bad protocol header: its own header, then the socket closes.
    pub async fn expect_protocol_header_then_eof(&mut self) {
        let mut got = self.buf.to_vec();
        tokio::time::timeout(WAIT, self.s.read_to_end(&mut got))
            .await
            .expect("broker closes the socket")
            .expect("read");
        assert_eq!(got, PROTOCOL_HEADER);
    }

    pub async fn expect_eof(&mut self) {
        while self.frame().await.is_some() {}
    }
}

pub struct LongStrBytes;
impl LongStrBytes {
    pub fn plain(user: &str, pass: &str) -> ferrymq_amqp::codec::LongStr {
        ferrymq_amqp::codec::LongStr(bytes::Bytes::from(format!("\0{user}\0{pass}")))
    }
}

/// Frames a raw payload with an arbitrary type/channel.
pub fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(0xCE);
    v
}

/// A lapin client that must keep working while others misbehave.
pub async fn assert_healthy(b: &TestBroker) {
    let (_c, ch) = channel(b).await;
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    publish(&ch, "", q.name().as_str(), b"still fine").await;
    assert_eq!(
        get(&ch, q.name().as_str()).await.unwrap().delivery.data,
        b"still fine"
    );
}
