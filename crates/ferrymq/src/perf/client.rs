//! A minimal AMQP client for load generation, built on FerryMQ's codec.

use super::stream::{ReadHalf, Target, WriteHalf};
use anyhow::{anyhow, bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use ferrymq_amqp::codec::frame::{
    decode_frame, encode_header_properties, encode_method, FRAME_END,
};
use ferrymq_amqp::codec::methods::*;
use ferrymq_amqp::codec::{Frame, LongStr, Method, PROTOCOL_HEADER};
use ferrymq_core::{FieldTable, Properties};
use tokio::io::AsyncReadExt;

/// An open connection with channel 1 open.
pub struct Conn {
    pub rd: ReadHalf,
    pub wr: WriteHalf,
    pub rbuf: BytesMut,
    pub frame_max: u32,
}

impl Conn {
    /// Connects, logs in with PLAIN, opens the vhost and channel 1.
    pub async fn open(target: &Target) -> anyhow::Result<Conn> {
        let uri = &target.uri;
        let (rd, wr) = target.connect().await?;
        let mut c = Conn {
            rd,
            wr,
            rbuf: BytesMut::with_capacity(1 << 16),
            frame_max: 131_072,
        };
        c.wr.send_all(PROTOCOL_HEADER).await?;
        c.expect(0, |m| matches!(m, Method::ConnectionStart(_)))
            .await?;
        c.send(
            0,
            ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: LongStr(Bytes::from(format!("\0{}\0{}", uri.user, uri.password))),
                locale: "en_US".into(),
            },
        )
        .await?;
        let tune = match c
            .expect(0, |m| matches!(m, Method::ConnectionTune(_)))
            .await?
        {
            Method::ConnectionTune(t) => t,
            _ => unreachable!("expect checked the variant"),
        };
        c.frame_max = if tune.frame_max == 0 {
            131_072
        } else {
            tune.frame_max
        };
        c.send(
            0,
            ConnectionTuneOk {
                channel_max: tune.channel_max,
                frame_max: c.frame_max,
                heartbeat: 0,
            },
        )
        .await?;
        c.send(
            0,
            ConnectionOpen {
                virtual_host: uri.vhost.clone(),
                ..Default::default()
            },
        )
        .await?;
        c.expect(0, |m| matches!(m, Method::ConnectionOpenOk(_)))
            .await?;
        c.send(1, ChannelOpen::default()).await?;
        c.expect(1, |m| matches!(m, Method::ChannelOpenOk(_)))
            .await?;
        Ok(c)
    }

    /// Sends one method.
    pub async fn send(&mut self, ch: u16, m: impl Into<Method>) -> anyhow::Result<()> {
        let mut b = BytesMut::new();
        encode_method(&mut b, ch, &m.into());
        self.wr.send_all(&b).await?;
        Ok(())
    }

    /// Reads frames until a method on `ch` arrives; fails on a close from the broker.
    pub async fn expect(
        &mut self,
        ch: u16,
        ok: impl Fn(&Method) -> bool,
    ) -> anyhow::Result<Method> {
        loop {
            match decode_frame(&mut self.rbuf, 0)
                .map_err(|e| anyhow!("bad frame from broker: {:?}", e.error))?
            {
                Some(Frame::Method {
                    method: Method::ConnectionClose(c),
                    ..
                }) => {
                    bail!(
                        "broker closed the connection: {} {}",
                        c.reply_code,
                        c.reply_text
                    )
                }
                Some(Frame::Method {
                    method: Method::ChannelClose(c),
                    ..
                }) => {
                    bail!(
                        "broker closed the channel: {} {}",
                        c.reply_code,
                        c.reply_text
                    )
                }
                Some(Frame::Method { channel, method }) if channel == ch && ok(&method) => {
                    return Ok(method)
                }
                Some(_) => continue,
                None => {
                    if self.rd.read_buf(&mut self.rbuf).await? == 0 {
                        bail!("broker closed the socket");
                    }
                }
            }
        }
    }

    /// Sends a method and waits for its reply.
    pub async fn call(
        &mut self,
        m: impl Into<Method>,
        ok: impl Fn(&Method) -> bool,
    ) -> anyhow::Result<Method> {
        self.send(1, m).await?;
        self.expect(1, ok).await
    }
}

/// Digits of the fixed-width `expiration` property written by templates with expirations.
const EXPIRATION_DIGITS: usize = 10;

/// The frames of one publish, encoded once; only the body's first 16 bytes change (and the
/// expiration digits, when messages get varied TTLs).
pub struct PublishTemplate {
    bytes: Vec<u8>,
    body_at: usize,
    /// Where the expiration digits are and the spread of TTLs, if messages carry one.
    expiration: Option<(usize, u64)>,
}

impl PublishTemplate {
    /// Encodes basic.publish + header + one body frame for `size`-byte bodies.
    /// With `expiration_spread` > 0 every message carries a different per-message TTL
    /// between `spread` and `2 * spread` ms, in no particular order.
    pub fn new(
        exchange: &str,
        key: &str,
        size: usize,
        persistent: bool,
        expiration_spread: u64,
        frame_max: u32,
    ) -> anyhow::Result<Self> {
        if size + 8 > frame_max as usize {
            bail!("--size {size} must fit one frame (frame_max {frame_max})");
        }
        let mut b = BytesMut::new();
        encode_method(
            &mut b,
            1,
            &BasicPublish {
                exchange: exchange.into(),
                routing_key: key.into(),
                ..Default::default()
            }
            .into(),
        );
        let props = Properties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            expiration: (expiration_spread > 0).then(|| "0".repeat(EXPIRATION_DIGITS)),
            ..Default::default()
        };
        encode_header_properties(&mut b, 1, size as u64, &props);
        // The expiration is the last property written, so its digits end the header frame.
        let expiration =
            (expiration_spread > 0).then(|| (b.len() - 1 - EXPIRATION_DIGITS, expiration_spread));
        b.put_u8(3);
        b.put_u16(1);
        b.put_u32(size as u32);
        let body_at = b.len();
        b.put_bytes(0, size);
        b.put_u8(FRAME_END);
        Ok(PublishTemplate {
            bytes: b.to_vec(),
            body_at,
            expiration,
        })
    }

    /// Appends one publish with the given send time and sequence number in the body.
    pub fn write(&self, out: &mut BytesMut, sent_nanos: u64, seq: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let at = start + self.body_at;
        out[at..at + 8].copy_from_slice(&sent_nanos.to_be_bytes());
        out[at + 8..at + 16].copy_from_slice(&seq.to_be_bytes());
        if let Some((exp_at, spread)) = self.expiration {
            // A multiplicative hash spreads consecutive messages over the whole range.
            let ttl = spread + seq.wrapping_mul(2_654_435_761) % spread;
            let digits = format!("{ttl:0width$}", width = EXPIRATION_DIGITS);
            let at = start + exp_at;
            out[at..at + EXPIRATION_DIGITS]
                .copy_from_slice(&digits.as_bytes()[..EXPIRATION_DIGITS]);
        }
    }
}

/// What a consumer cares about in the broker's frames, found without a full decode.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// basic.deliver with its delivery tag.
    Deliver(u64),
    /// The first body frame of a message (its first 16 bytes, if present).
    Body(Option<[u8; 16]>),
    /// basic.ack / basic.nack from the broker (publisher confirms).
    Confirm {
        tag: u64,
        multiple: bool,
        nack: bool,
    },
    /// connection.close or channel.close.
    Closed(String),
    /// Anything else.
    Other,
}

/// Scans one frame from `buf`; None if incomplete. Allocates nothing.
pub fn scan(buf: &mut BytesMut) -> anyhow::Result<Option<Event>> {
    use bytes::Buf;
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if buf.len() < size + 8 {
        return Ok(None);
    }
    let p = &buf[7..7 + size];
    let ev = match kind {
        1 if p.len() >= 4 => {
            let ids = (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            );
            match ids {
                (60, 60) => {
                    let tl = *p.get(4).context("short deliver")? as usize;
                    let at = 5 + tl;
                    let tag = p.get(at..at + 8).context("short deliver")?;
                    Event::Deliver(u64::from_be_bytes(tag.try_into()?))
                }
                (60, 80) | (60, 120) => {
                    let tag = u64::from_be_bytes(p.get(4..12).context("short ack")?.try_into()?);
                    let bits = *p.get(12).context("short ack")?;
                    Event::Confirm {
                        tag,
                        multiple: bits & 1 == 1,
                        nack: ids.1 == 120,
                    }
                }
                (10, 50) | (20, 40) => {
                    let text = match Method::decode(p) {
                        Ok(Method::ConnectionClose(c)) => {
                            format!("{} {}", c.reply_code, c.reply_text)
                        }
                        Ok(Method::ChannelClose(c)) => format!("{} {}", c.reply_code, c.reply_text),
                        _ => "close".into(),
                    };
                    Event::Closed(text)
                }
                _ => Event::Other,
            }
        }
        3 => Event::Body(p.get(..16).map(|b| b.try_into().unwrap_or([0; 16]))),
        _ => Event::Other,
    };
    buf.advance(size + 8);
    Ok(Some(ev))
}

/// Nanoseconds since the Unix epoch: the timestamp carried in perf message bodies.
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
