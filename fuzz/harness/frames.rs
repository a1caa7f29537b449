//! `amqp_frames`: the frame decoder the connection runs on every read (`decode_frame` with a
//! frame_max), with method decoding and content header (property) decoding.
//!
//! Input: one byte choosing the frame_max and where the stream is cut, then the stream.

use bytes::{BufMut, BytesMut};
use ferrymq_amqp::codec::frame::{decode_frame, encode_method, Frame, FRAME_END};
use ferrymq_core::wire::decode_properties;

/// The frame_max values the connection decodes with: the pre-tune minimum, the default
/// offer, and others a client may negotiate.
fn frame_max(sel: u8) -> u32 {
    match sel % 4 {
        0 => 4096,
        1 => 131_072,
        2 => 8192,
        _ => 4096 + u32::from(sel) * 64,
    }
}

/// Decodes the stream whole, then again arriving in two reads; both must give the same
/// frames (and the same error), every frame must re-encode to bytes that decode to it again.
pub fn amqp_frames(data: &[u8]) {
    let Some((&sel, stream)) = data.split_first() else {
        return;
    };
    let fm = frame_max(sel);
    let whole = decode_stream(stream, fm, stream.len());
    let cut = (usize::from(sel) * 37) % (stream.len() + 1);
    let split = decode_stream(stream, fm, cut);
    assert_eq!(
        whole, split,
        "the same bytes in two reads decode differently"
    );
}

/// Decodes as the connection does: `stream[..cut]` is buffered first, the rest is appended
/// once no complete frame is left. Returns every frame re-encoded, and the error if any.
fn decode_stream(stream: &[u8], fm: u32, cut: usize) -> (Vec<BytesMut>, Option<String>) {
    let mut buf = BytesMut::from(&stream[..cut]);
    let mut rest = &stream[cut..];
    let mut frames = Vec::new();
    loop {
        let before = buf.len();
        match decode_frame(&mut buf, fm) {
            Ok(Some(f)) => {
                assert!(buf.len() < before, "a decoded frame consumed nothing");
                frames.push(check_frame(&f));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                if rest.is_empty() {
                    return (frames, None);
                }
                buf.extend_from_slice(rest);
                rest = &[];
            }
            Err(e) => return (frames, Some(format!("{e:?}"))),
        }
    }
}

/// Checks one decoded frame and returns it re-encoded: the encoding must decode to the same
/// frame (compared through `Debug`, so that NaN floats in tables compare equal), and a
/// property block the scanner accepted must decode, with the same values.
fn check_frame(f: &Frame) -> BytesMut {
    if let Frame::Header {
        properties,
        summary,
        ..
    } = f
    {
        let p = decode_properties(properties)
            .expect("scan_properties accepted a block that decode_properties refuses");
        assert_eq!(summary.delivery_mode, p.delivery_mode);
        assert_eq!(summary.priority, p.priority);
        assert_eq!(summary.has_headers(), p.headers.is_some());
    }
    let enc = encode_frame(f);
    let mut again = enc.clone();
    let back = decode_frame(&mut again, 0)
        .expect("a re-encoded frame decodes")
        .expect("a re-encoded frame is complete");
    assert!(again.is_empty(), "a re-encoded frame left bytes behind");
    assert_eq!(
        format!("{back:?}"),
        format!("{f:?}"),
        "frame changed in a round trip"
    );
    enc
}

/// Encodes any frame, keeping a content header's class id and property bytes as decoded.
fn encode_frame(f: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    let (kind, channel, payload) = match f {
        Frame::Method { channel, method } => {
            encode_method(&mut out, *channel, method);
            return out;
        }
        Frame::Header {
            channel,
            class_id,
            body_size,
            properties,
            ..
        } => {
            let mut p = BytesMut::new();
            p.put_u16(*class_id);
            p.put_u16(0);
            p.put_u64(*body_size);
            p.put_slice(properties);
            (2, *channel, p)
        }
        Frame::Body { channel, payload } => (3, *channel, BytesMut::from(&payload[..])),
        Frame::Heartbeat { channel } => (8, *channel, BytesMut::new()),
    };
    out.put_u8(kind);
    out.put_u16(channel);
    out.put_u32(payload.len() as u32);
    out.put_slice(&payload);
    out.put_u8(FRAME_END);
    out
}
