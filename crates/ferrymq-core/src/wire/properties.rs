//! Content header properties of the basic class.

use super::primitives::{Reader, Writer};
use super::WireError;
use crate::message::Properties;

/// Flag bit of each property, in wire order.
const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const TYPE: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;

/// Decodes property flags and the property list.
pub fn decode_properties(b: &[u8]) -> Result<Properties, WireError> {
    let mut r = Reader::new(b);
    let flags = r.u16()?;
    if flags & 1 != 0 {
        return Err(WireError::Syntax(
            "property flag continuation is not used by the basic class".into(),
        ));
    }
    let mut p = Properties::default();
    if flags & CONTENT_TYPE != 0 {
        p.content_type = Some(r.shortstr()?);
    }
    if flags & CONTENT_ENCODING != 0 {
        p.content_encoding = Some(r.shortstr()?);
    }
    if flags & HEADERS != 0 {
        p.headers = Some(r.table()?);
    }
    if flags & DELIVERY_MODE != 0 {
        p.delivery_mode = Some(r.u8()?);
    }
    if flags & PRIORITY != 0 {
        p.priority = Some(r.u8()?);
    }
    if flags & CORRELATION_ID != 0 {
        p.correlation_id = Some(r.shortstr()?);
    }
    if flags & REPLY_TO != 0 {
        p.reply_to = Some(r.shortstr()?);
    }
    if flags & EXPIRATION != 0 {
        p.expiration = Some(r.shortstr()?);
    }
    if flags & MESSAGE_ID != 0 {
        p.message_id = Some(r.shortstr()?);
    }
    if flags & TIMESTAMP != 0 {
        p.timestamp = Some(r.u64()?);
    }
    if flags & TYPE != 0 {
        p.kind = Some(r.shortstr()?);
    }
    if flags & USER_ID != 0 {
        p.user_id = Some(r.shortstr()?);
    }
    if flags & APP_ID != 0 {
        p.app_id = Some(r.shortstr()?);
    }
    if flags & CLUSTER_ID != 0 {
        p.cluster_id = Some(r.shortstr()?);
    }
    Ok(p)
}

/// What the broker reads from a property block on every publish, found without allocating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PropertySummary {
    /// The property flags word.
    pub flags: u16,
    /// Delivery mode, if present.
    pub delivery_mode: Option<u8>,
    /// Priority, if present.
    pub priority: Option<u8>,
    /// Byte range of the reply-to text within the block, if present.
    pub reply_to: Option<(usize, usize)>,
    /// Byte range of the expiration text within the block, if present.
    pub expiration: Option<(usize, usize)>,
    /// Byte range of the user-id text within the block, if present.
    pub user_id: Option<(usize, usize)>,
    /// The headers have a top-level `CC` or `BCC` key: extra routing keys chosen by the
    /// sender (RabbitMQ's sender-selected distribution).
    pub sender_selected: bool,
}

impl PropertySummary {
    /// Whether the block carries application headers.
    pub fn has_headers(&self) -> bool {
        self.flags & HEADERS != 0
    }
}

/// Validates a property block (flags and list, as in a content header frame) and summarises
/// it. Accepts exactly what [`decode_properties`] accepts, but builds nothing.
pub fn scan_properties(b: &[u8]) -> Result<PropertySummary, WireError> {
    let mut r = Reader::new(b);
    let flags = r.u16()?;
    if flags & 1 != 0 {
        return Err(WireError::Syntax(
            "property flag continuation is not used by the basic class".into(),
        ));
    }
    let mut s = PropertySummary {
        flags,
        ..Default::default()
    };
    let text = |r: &mut Reader<'_>| -> Result<(usize, usize), WireError> {
        let n = r.u8()? as usize;
        let start = b.len() - r.remaining();
        r.take(n)?;
        Ok((start, start + n))
    };
    for bit in (2..16).rev().map(|i| 1u16 << i) {
        if flags & bit == 0 {
            continue;
        }
        match bit {
            HEADERS => {
                let n = r.u32()? as usize;
                s.sender_selected = super::table::validate_headers(r.take(n)?)?;
            }
            DELIVERY_MODE => s.delivery_mode = Some(r.u8()?),
            PRIORITY => s.priority = Some(r.u8()?),
            TIMESTAMP => {
                r.u64()?;
            }
            REPLY_TO => s.reply_to = Some(text(&mut r)?),
            EXPIRATION => s.expiration = Some(text(&mut r)?),
            USER_ID => s.user_id = Some(text(&mut r)?),
            _ => {
                text(&mut r)?;
            }
        }
    }
    Ok(s)
}

/// Encodes property flags and the property list.
pub fn encode_properties(p: &Properties, w: &mut Writer<'_>) {
    let mut flags = 0u16;
    let set = |f: &mut u16, bit: u16, present: bool| {
        if present {
            *f |= bit
        }
    };
    set(&mut flags, CONTENT_TYPE, p.content_type.is_some());
    set(&mut flags, CONTENT_ENCODING, p.content_encoding.is_some());
    set(&mut flags, HEADERS, p.headers.is_some());
    set(&mut flags, DELIVERY_MODE, p.delivery_mode.is_some());
    set(&mut flags, PRIORITY, p.priority.is_some());
    set(&mut flags, CORRELATION_ID, p.correlation_id.is_some());
    set(&mut flags, REPLY_TO, p.reply_to.is_some());
    set(&mut flags, EXPIRATION, p.expiration.is_some());
    set(&mut flags, MESSAGE_ID, p.message_id.is_some());
    set(&mut flags, TIMESTAMP, p.timestamp.is_some());
    set(&mut flags, TYPE, p.kind.is_some());
    set(&mut flags, USER_ID, p.user_id.is_some());
    set(&mut flags, APP_ID, p.app_id.is_some());
    set(&mut flags, CLUSTER_ID, p.cluster_id.is_some());
    w.u16(flags);
    let s = |w: &mut Writer<'_>, v: &Option<String>| {
        if let Some(v) = v {
            w.shortstr(v)
        }
    };
    s(w, &p.content_type);
    s(w, &p.content_encoding);
    if let Some(h) = &p.headers {
        w.table(h);
    }
    if let Some(v) = p.delivery_mode {
        w.u8(v);
    }
    if let Some(v) = p.priority {
        w.u8(v);
    }
    s(w, &p.correlation_id);
    s(w, &p.reply_to);
    s(w, &p.expiration);
    s(w, &p.message_id);
    if let Some(v) = p.timestamp {
        w.u64(v);
    }
    s(w, &p.kind);
    s(w, &p.user_id);
    s(w, &p.app_id);
    s(w, &p.cluster_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{FieldTable, FieldValue};
    use bytes::BytesMut;

    #[test]
    fn properties_roundtrip() {
        let p = Properties {
            content_type: Some("text/plain".into()),
            headers: Some(FieldTable(vec![("a".into(), FieldValue::I32(1))])),
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("1000".into()),
            timestamp: Some(99),
            app_id: Some("app".into()),
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        encode_properties(&p, &mut Writer::new(&mut buf));
        assert_eq!(decode_properties(&buf).unwrap(), p);
        let s = scan_properties(&buf).unwrap();
        assert_eq!((s.delivery_mode, s.priority), (Some(2), Some(5)));
        let (a, b) = s.reply_to.unwrap();
        assert_eq!(&buf[a..b], b"r");
        let (a, b) = s.expiration.unwrap();
        assert_eq!(&buf[a..b], b"1000");
        assert!(s.has_headers() && s.user_id.is_none());
    }

    #[test]
    fn scan_refuses_what_decode_refuses() {
        for bad in [
            &b"\x00"[..],
            b"\x00\x01",
            b"\x80\x00\x05ab",
            b"\x20\x00\x00\x00\x00\x03\x01aZ",
            b"\x10\x00",
        ] {
            assert!(decode_properties(bad).is_err());
            assert!(scan_properties(bad).is_err(), "{bad:?}");
        }
    }
}
