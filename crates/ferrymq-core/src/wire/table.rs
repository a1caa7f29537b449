//! Field tables and arrays, with every value type RabbitMQ clients send.

use super::primitives::{short, Reader};
use super::WireError;
use crate::value::{FieldTable, FieldValue};
use bytes::{BufMut, Bytes, BytesMut};

/// Nesting of tables and arrays (together) deeper than this is refused, so a hostile
/// value cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

fn too_deep() -> WireError {
    WireError::Syntax("field table or array nested too deeply".into())
}

/// Decodes the body of a field table (without its length prefix).
pub fn read_table(b: &[u8]) -> Result<FieldTable, WireError> {
    read_table_depth(b, 0)
}

fn read_table_depth(b: &[u8], depth: usize) -> Result<FieldTable, WireError> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let mut r = Reader::new(b);
    let mut t = Vec::new();
    while r.remaining() > 0 {
        let key = r.shortstr()?;
        let v = read_value(&mut r, depth)?;
        t.push((key, v));
    }
    keep_first(&mut t);
    Ok(FieldTable(t))
}

/// Drops every repeat of a key, keeping its first value, as RabbitMQ reads tables: every
/// reader of the table (permission checks, queue arguments, the saved definitions) must see
/// the same value, or a repeated `x-dead-letter-exchange` could pass the check with one value
/// and be used with another.
fn keep_first(t: &mut Vec<(String, FieldValue)>) {
    if t.len() <= 16 {
        let mut i = 1;
        while i < t.len() {
            if t[..i].iter().any(|(k, _)| *k == t[i].0) {
                t.remove(i);
            } else {
                i += 1;
            }
        }
        return;
    }
    // Large tables: a set, so a table of 20,000 keys costs 20,000 steps, not 200 million.
    let keep: Vec<bool> = {
        let mut seen = std::collections::HashSet::with_capacity(t.len());
        t.iter().map(|(k, _)| seen.insert(k.as_str())).collect()
    };
    let mut keep = keep.into_iter();
    t.retain(|_| keep.next().unwrap_or(true));
}

fn read_value(r: &mut Reader<'_>, depth: usize) -> Result<FieldValue, WireError> {
    let tag = r.u8()?;
    Ok(match tag {
        b't' => FieldValue::Bool(r.u8()? != 0),
        b'b' => FieldValue::I8(r.u8()? as i8),
        b'B' => FieldValue::U8(r.u8()?),
        b's' | b'U' => FieldValue::I16(r.u16()? as i16),
        b'u' => FieldValue::U16(r.u16()?),
        b'I' => FieldValue::I32(r.u32()? as i32),
        b'i' => FieldValue::U32(r.u32()?),
        b'l' | b'L' => FieldValue::I64(r.u64()? as i64),
        b'f' => FieldValue::F32(f32::from_bits(r.u32()?)),
        b'd' => FieldValue::F64(f64::from_bits(r.u64()?)),
        b'D' => {
            let scale = r.u8()?;
            FieldValue::Decimal(scale, r.u32()?)
        }
        b'S' => {
            let n = r.u32()? as usize;
            FieldValue::LongStr(Bytes::copy_from_slice(r.take(n)?))
        }
        b'x' => {
            let n = r.u32()? as usize;
            FieldValue::Bytes(Bytes::copy_from_slice(r.take(n)?))
        }
        b'A' => {
            if depth + 1 > MAX_DEPTH {
                return Err(too_deep());
            }
            let n = r.u32()? as usize;
            let body = r.take(n)?;
            let mut ar = Reader::new(body);
            let mut items = Vec::new();
            while ar.remaining() > 0 {
                items.push(read_value(&mut ar, depth + 1)?);
            }
            FieldValue::Array(items)
        }
        b'T' => FieldValue::Timestamp(r.u64()?),
        b'F' => {
            let n = r.u32()? as usize;
            FieldValue::Table(read_table_depth(r.take(n)?, depth + 1)?)
        }
        b'V' => FieldValue::Void,
        other => {
            return Err(WireError::Syntax(format!(
                "unknown field value type '{}'",
                other.escape_ascii()
            )))
        }
    })
}

/// Checks that `b` is a well-formed field table body without building it: publishes are
/// validated this way on the hot path, and decoded only where a table is actually needed.
pub fn validate_table(b: &[u8]) -> Result<(), WireError> {
    validate_table_depth(b, 0)
}

/// [`validate_table`] for a message's headers; also tells whether a top-level `CC` or `BCC`
/// key is there (sender-selected distribution), so only such messages decode their headers
/// to route.
pub fn validate_headers(b: &[u8]) -> Result<bool, WireError> {
    let mut r = Reader::new(b);
    let mut sender_selected = false;
    while r.remaining() > 0 {
        let n = r.u8()? as usize;
        let key = r.take(n)?;
        sender_selected |= key == b"CC" || key == b"BCC";
        skip_value(&mut r, 0)?;
    }
    Ok(sender_selected)
}

fn validate_table_depth(b: &[u8], depth: usize) -> Result<(), WireError> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let mut r = Reader::new(b);
    while r.remaining() > 0 {
        let n = r.u8()? as usize;
        r.take(n)?;
        skip_value(&mut r, depth)?;
    }
    Ok(())
}

fn skip_value(r: &mut Reader<'_>, depth: usize) -> Result<(), WireError> {
    let fixed = match r.u8()? {
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => 0,
        b'S' | b'x' => {
            let n = r.u32()? as usize;
            r.take(n)?;
            return Ok(());
        }
        b'A' => {
            let n = r.u32()? as usize;
            let mut ar = Reader::new(r.take(n)?);
            if depth + 1 > MAX_DEPTH {
                return Err(too_deep());
            }
            while ar.remaining() > 0 {
                skip_value(&mut ar, depth + 1)?;
            }
            return Ok(());
        }
        b'F' => {
            let n = r.u32()? as usize;
            return validate_table_depth(r.take(n)?, depth + 1);
        }
        other => {
            return Err(WireError::Syntax(format!(
                "unknown field value type '{}'",
                other.escape_ascii()
            )))
        }
    };
    r.take(fixed)?;
    Ok(())
}

/// Appends a field table with its length prefix.
pub fn write_table(buf: &mut BytesMut, t: &FieldTable) {
    let at = buf.len();
    buf.put_u32(0);
    for (k, v) in t.iter() {
        let k = short(k);
        buf.put_u8(k.len() as u8);
        buf.put_slice(k.as_bytes());
        write_value(buf, v);
    }
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn write_value(buf: &mut BytesMut, v: &FieldValue) {
    match v {
        FieldValue::Bool(b) => {
            buf.put_u8(b't');
            buf.put_u8(*b as u8)
        }
        FieldValue::I8(x) => {
            buf.put_u8(b'b');
            buf.put_i8(*x)
        }
        FieldValue::U8(x) => {
            buf.put_u8(b'B');
            buf.put_u8(*x)
        }
        FieldValue::I16(x) => {
            buf.put_u8(b's');
            buf.put_i16(*x)
        }
        FieldValue::U16(x) => {
            buf.put_u8(b'u');
            buf.put_u16(*x)
        }
        FieldValue::I32(x) => {
            buf.put_u8(b'I');
            buf.put_i32(*x)
        }
        FieldValue::U32(x) => {
            buf.put_u8(b'i');
            buf.put_u32(*x)
        }
        FieldValue::I64(x) => {
            buf.put_u8(b'l');
            buf.put_i64(*x)
        }
        FieldValue::F32(x) => {
            buf.put_u8(b'f');
            buf.put_f32(*x)
        }
        FieldValue::F64(x) => {
            buf.put_u8(b'd');
            buf.put_f64(*x)
        }
        FieldValue::Decimal(s, x) => {
            buf.put_u8(b'D');
            buf.put_u8(*s);
            buf.put_u32(*x)
        }
        FieldValue::LongStr(s) => {
            buf.put_u8(b'S');
            buf.put_u32(s.len() as u32);
            buf.put_slice(s)
        }
        FieldValue::Bytes(s) => {
            buf.put_u8(b'x');
            buf.put_u32(s.len() as u32);
            buf.put_slice(s)
        }
        FieldValue::Array(items) => {
            buf.put_u8(b'A');
            let at = buf.len();
            buf.put_u32(0);
            for i in items {
                write_value(buf, i);
            }
            let len = (buf.len() - at - 4) as u32;
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        FieldValue::Timestamp(t) => {
            buf.put_u8(b'T');
            buf.put_u64(*t)
        }
        FieldValue::Table(t) => {
            buf.put_u8(b'F');
            write_table(buf, t)
        }
        FieldValue::Void => buf.put_u8(b'V'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_roundtrips() {
        let inner = FieldTable(vec![("k".into(), FieldValue::string("v"))]);
        let t = FieldTable(vec![
            ("bool".into(), FieldValue::Bool(true)),
            ("i8".into(), FieldValue::I8(-3)),
            ("u8".into(), FieldValue::U8(200)),
            ("i16".into(), FieldValue::I16(-300)),
            ("u16".into(), FieldValue::U16(60000)),
            ("i32".into(), FieldValue::I32(-70000)),
            ("u32".into(), FieldValue::U32(4_000_000_000)),
            ("i64".into(), FieldValue::I64(-(1 << 40))),
            ("f32".into(), FieldValue::F32(1.5)),
            ("f64".into(), FieldValue::F64(-2.25)),
            ("dec".into(), FieldValue::Decimal(2, 12345)),
            ("str".into(), FieldValue::string("héllo")),
            (
                "bytes".into(),
                FieldValue::Bytes(Bytes::from_static(&[0, 1, 2])),
            ),
            (
                "arr".into(),
                FieldValue::Array(vec![FieldValue::I32(1), FieldValue::string("x")]),
            ),
            ("ts".into(), FieldValue::Timestamp(1_700_000_000)),
            ("tbl".into(), FieldValue::Table(inner)),
            ("void".into(), FieldValue::Void),
        ]);
        let mut buf = BytesMut::new();
        write_table(&mut buf, &t);
        validate_table(&buf[4..]).unwrap();
        let back = read_table(&buf[4..]).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn a_key_longer_than_a_short_string_is_cut_at_a_character_boundary() {
        // Keys from JSON (definitions arguments) have no length limit; the wire form holds 255
        // bytes, and cutting inside a character sent text that is not UTF-8.
        let key = "é".repeat(200);
        let mut buf = BytesMut::new();
        write_table(&mut buf, &FieldTable(vec![(key.clone(), FieldValue::Void)]));
        assert_eq!(buf[4], 254, "127 two-byte characters");
        assert!(std::str::from_utf8(&buf[5..5 + 254]).is_ok());
        let back = read_table(&buf[4..]).unwrap();
        assert_eq!(back.0[0].0, key[..254]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"\x03abcZ"[..],
            b"\x01aS\xff\xff\xff\xff",
            b"\x05ab",
            b"\x01aF\x00\x00\x00\x09",
        ] {
            assert!(read_table(bad).is_err());
            assert!(validate_table(bad).is_err());
        }
    }

    #[test]
    fn a_repeated_key_keeps_its_first_value() {
        for n in [3usize, 40] {
            let mut t = FieldTable::new();
            for i in 0..n {
                t.0.push((format!("k{i}"), FieldValue::I32(i as i32)));
            }
            t.0.push(("k1".into(), FieldValue::string("second")));
            t.0.push(("x-dead-letter-exchange".into(), FieldValue::string("pub")));
            t.0.push((
                "x-dead-letter-exchange".into(),
                FieldValue::string("secret"),
            ));
            let mut buf = BytesMut::new();
            write_table(&mut buf, &t);
            let back = read_table(&buf[4..]).unwrap();
            assert_eq!(back.0.len(), n + 1);
            assert_eq!(back.get("k1"), Some(&FieldValue::I32(1)));
            assert_eq!(
                back.get("x-dead-letter-exchange"),
                Some(&FieldValue::string("pub"))
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut t = FieldTable::new();
        for _ in 0..100 {
            t = FieldTable(vec![("n".into(), FieldValue::Table(t))]);
        }
        let mut buf = BytesMut::new();
        write_table(&mut buf, &t);
        assert!(read_table(&buf[4..]).is_err());
        assert!(validate_table(&buf[4..]).is_err());
    }

    #[test]
    fn deep_array_nesting_is_refused_without_recursing_per_level() {
        // 100,000 nested arrays fit in one frame: decoding them level by level would
        // overflow the stack long before the buffer ends.
        let levels = 100_000usize;
        let mut body = Vec::with_capacity(levels * 5 + 8);
        body.extend_from_slice(b"\x01a");
        for i in 0..levels {
            body.push(b'A');
            let inner = ((levels - i - 1) * 5) as u32;
            body.extend_from_slice(&inner.to_be_bytes());
        }
        assert!(read_table(&body).is_err());
        assert!(validate_table(&body).is_err());
        // Mixed tables and arrays count together.
        let mut v = FieldValue::Void;
        for i in 0..80 {
            v = match i % 2 {
                0 => FieldValue::Array(vec![v]),
                _ => FieldValue::Table(FieldTable(vec![("t".into(), v)])),
            };
        }
        let mut buf = BytesMut::new();
        write_table(&mut buf, &FieldTable(vec![("m".into(), v)]));
        assert!(read_table(&buf[4..]).is_err());
        assert!(validate_table(&buf[4..]).is_err());
    }
}
