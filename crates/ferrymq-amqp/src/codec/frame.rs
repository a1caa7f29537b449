//! Frames: the unit on the wire (type, channel, size, payload, end octet 0xCE).

use super::methods::Method;
use super::primitives::Writer;
use super::CodecError;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferrymq_core::wire::{encode_properties, scan_properties, PropertySummary};
use ferrymq_core::Properties;
use std::ops::Range;

/// The protocol header a 0-9-1 client sends first.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Smallest frame_max a peer may negotiate (the spec's frame-min-size).
pub const FRAME_MIN_SIZE: u32 = 4096;

const TYPE_METHOD: u8 = 1;
const TYPE_HEADER: u8 = 2;
const TYPE_BODY: u8 = 3;
const TYPE_HEARTBEAT: u8 = 8;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method frame.
    Method {
        /// Channel number.
        channel: u16,
        /// The method.
        method: Method,
    },
    /// A content header frame.
    Header {
        /// Channel number.
        channel: u16,
        /// Content class (60 for basic).
        class_id: u16,
        /// Total body size that follows in body frames.
        body_size: u64,
        /// Property flags and list exactly as received: kept and re-sent without decoding.
        properties: Bytes,
        /// What the broker reads from them on every publish (validated while decoding).
        summary: PropertySummary,
    },
    /// A content body frame.
    Body {
        /// Channel number.
        channel: u16,
        /// A slice of the receive buffer: no copy.
        payload: Bytes,
    },
    /// A heartbeat.
    Heartbeat {
        /// Channel number (must be 0).
        channel: u16,
    },
}

/// A frame that could not be decoded, with the channel it arrived on (if its header was read).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// Channel from the frame header.
    pub channel: u16,
    /// What was wrong.
    pub error: CodecError,
}

/// Decodes one frame from the front of `buf`. Returns `Ok(None)` (and consumes nothing) when
/// the frame is not complete yet; bytes of a complete frame are removed from `buf`.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let err = |error| FrameError { channel, error };
    if !matches!(kind, TYPE_METHOD | TYPE_HEADER | TYPE_BODY | TYPE_HEARTBEAT) {
        return Err(err(CodecError::UnknownFrameType(kind)));
    }
    let total = size as u64 + 8;
    if frame_max != 0 && total > frame_max as u64 {
        return Err(err(CodecError::FrameTooLarge {
            size: total,
            max: frame_max,
        }));
    }
    if buf.len() < size + 8 {
        buf.reserve(size + 8 - buf.len());
        return Ok(None);
    }
    let end = buf[7 + size];
    if end != FRAME_END {
        return Err(err(CodecError::BadFrameEnd(end)));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    let frame = match kind {
        TYPE_METHOD => Frame::Method {
            channel,
            method: Method::decode(&payload).map_err(err)?,
        },
        TYPE_HEADER => {
            if payload.len() < 14 {
                return Err(err(CodecError::InsufficientBytes(14 - payload.len())));
            }
            let class_id = u16::from_be_bytes([payload[0], payload[1]]);
            let mut sz = [0u8; 8];
            sz.copy_from_slice(&payload[4..12]);
            let properties = payload.slice(12..);
            Frame::Header {
                channel,
                class_id,
                body_size: u64::from_be_bytes(sz),
                summary: scan_properties(&properties).map_err(|e| err(e.into()))?,
                properties,
            }
        }
        TYPE_BODY => Frame::Body { channel, payload },
        _ => Frame::Heartbeat { channel },
    };
    Ok(Some(frame))
}

/// Appends a method frame.
pub fn encode_method(buf: &mut BytesMut, channel: u16, method: &Method) {
    let at = begin_frame(buf, TYPE_METHOD, channel);
    method.encode(&mut Writer::new(buf));
    end_frame(buf, at);
}

/// Appends a heartbeat frame.
pub fn encode_heartbeat(buf: &mut BytesMut) {
    buf.put_slice(&[TYPE_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Appends a content header frame carrying a property block as received (flags + list).
pub fn encode_header(buf: &mut BytesMut, channel: u16, body_size: u64, raw_properties: &[u8]) {
    let at = begin_header(buf, channel, body_size);
    buf.put_slice(raw_properties);
    end_frame(buf, at);
}

/// Appends a content header frame, encoding `properties` (clients and tests).
pub fn encode_header_properties(
    buf: &mut BytesMut,
    channel: u16,
    body_size: u64,
    properties: &Properties,
) {
    let at = begin_header(buf, channel, body_size);
    encode_properties(properties, &mut Writer::new(buf));
    end_frame(buf, at);
}

/// Appends a `basic.deliver` method frame straight from borrowed fields: the hottest frame the
/// broker writes, so it skips building a [`Method`] and its owned strings.
pub fn encode_deliver(
    buf: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_frame(buf, TYPE_METHOD, channel);
    let mut w = Writer::new(buf);
    w.u16(60);
    w.u16(60);
    w.shortstr(consumer_tag);
    w.u64(delivery_tag);
    w.bit(redelivered);
    w.shortstr(exchange);
    w.shortstr(routing_key);
    end_frame(buf, at);
}

/// Splits a body of `len` bytes into frames that fit `frame_max`, calling `emit` with each
/// frame's header (7 bytes) and the range of the body it carries (the caller appends the
/// payload and [`FRAME_END`], copying or not as it likes).
pub fn body_frames(
    channel: u16,
    len: usize,
    frame_max: u32,
    mut emit: impl FnMut([u8; 7], Range<usize>),
) {
    let max_payload = (frame_max.max(FRAME_MIN_SIZE) - 8) as usize;
    let mut off = 0;
    while off < len {
        let n = (len - off).min(max_payload);
        let mut h = [TYPE_BODY, 0, 0, 0, 0, 0, 0];
        h[1..3].copy_from_slice(&channel.to_be_bytes());
        h[3..7].copy_from_slice(&(n as u32).to_be_bytes());
        emit(h, off..off + n);
        off += n;
    }
}

fn begin_header(buf: &mut BytesMut, channel: u16, body_size: u64) -> usize {
    let at = begin_frame(buf, TYPE_HEADER, channel);
    buf.put_u16(60);
    buf.put_u16(0);
    buf.put_u64(body_size);
    at
}

fn begin_frame(buf: &mut BytesMut, kind: u8, channel: u16) -> usize {
    buf.put_u8(kind);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    at
}

fn end_frame(buf: &mut BytesMut, at: usize) {
    let size = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::methods::BasicPublish;

    #[test]
    fn partial_frames_wait_and_whole_frames_decode() {
        let mut out = BytesMut::new();
        encode_method(
            &mut out,
            3,
            &BasicPublish {
                routing_key: "k".into(),
                ..Default::default()
            }
            .into(),
        );
        encode_header_properties(&mut out, 3, 5, &Properties::default());
        let body = b"hello";
        body_frames(3, body.len(), 4096, |h, r| {
            out.put_slice(&h);
            out.put_slice(&body[r]);
            out.put_u8(FRAME_END);
        });
        let all = out.clone();
        for cut in 0..all.len() {
            let mut b = BytesMut::from(&all[..cut]);
            while let Ok(Some(_)) = decode_frame(&mut b, 131072) {}
        }
        let mut b = all;
        assert!(matches!(
            decode_frame(&mut b, 131072),
            Ok(Some(Frame::Method { channel: 3, .. }))
        ));
        assert!(matches!(
            decode_frame(&mut b, 131072),
            Ok(Some(Frame::Header { body_size: 5, .. }))
        ));
        match decode_frame(&mut b, 131072) {
            Ok(Some(Frame::Body { payload, .. })) => assert_eq!(&payload[..], b"hello"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(b.is_empty());
    }

    #[test]
    fn oversized_bad_end_and_unknown_type_are_errors() {
        let mut b = BytesMut::from(&[1u8, 0, 1, 0, 1, 0, 0][..]);
        assert!(matches!(
            decode_frame(&mut b, 4096).unwrap_err().error,
            CodecError::FrameTooLarge { .. }
        ));
        let mut b = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xAB][..]);
        assert_eq!(
            decode_frame(&mut b, 4096).unwrap_err().error,
            CodecError::BadFrameEnd(0xAB)
        );
        let mut b = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(
            decode_frame(&mut b, 4096).unwrap_err().error,
            CodecError::UnknownFrameType(9)
        );
    }

    #[test]
    fn deliver_encodes_as_the_generic_method_does() {
        let (mut fast, mut slow) = (BytesMut::new(), BytesMut::new());
        encode_deliver(&mut fast, 2, "ctag", 77, true, "ex", "rk");
        let m: Method = crate::codec::methods::BasicDeliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 77,
            redelivered: true,
            exchange: "ex".into(),
            routing_key: "rk".into(),
        }
        .into();
        encode_method(&mut slow, 2, &m);
        assert_eq!(fast, slow);
    }

    #[test]
    fn malformed_properties_are_a_frame_error() {
        let mut out = BytesMut::new();
        encode_header(&mut out, 1, 0, b"\x20\x00\x00\x00\x00\x09");
        assert!(matches!(
            decode_frame(&mut out, 131072).unwrap_err().error,
            CodecError::InsufficientBytes(_)
        ));
    }

    #[test]
    fn large_bodies_split_at_frame_max() {
        let mut sizes = Vec::new();
        body_frames(1, 10_000, 4096, |_, r| sizes.push(r.len()));
        assert_eq!(sizes, vec![4088, 4088, 1824]);
    }
}
