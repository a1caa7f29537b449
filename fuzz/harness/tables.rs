//! `field_tables`: field tables and basic properties. Each has two decoders that must agree:
//! the one that builds values (`read_table`, `decode_properties`) and the one that only
//! validates, used on every publish (`validate_table`, `scan_properties`). What decodes must
//! encode to bytes that decode to the same value.
//!
//! Input: the bytes are tried both as a table body (without its length prefix) and as a
//! property block (flags word and property list).

use bytes::BytesMut;
use ferrymq_core::wire::table::validate_table;
use ferrymq_core::wire::{
    decode_properties, encode_properties, read_table, scan_properties, write_table, Writer,
};

/// Runs both checks on the input.
pub fn field_tables(data: &[u8]) {
    table(data);
    properties(data);
}

fn table(b: &[u8]) {
    let read = read_table(b);
    let valid = validate_table(b);
    assert_eq!(
        read.is_ok(),
        valid.is_ok(),
        "read_table {read:?} but validate_table {valid:?}"
    );
    let Ok(t) = read else { return };
    let mut enc = BytesMut::new();
    write_table(&mut enc, &t);
    validate_table(&enc[4..]).expect("an encoded table validates");
    let back = read_table(&enc[4..]).expect("an encoded table decodes");
    // Debug, not PartialEq: a NaN float is the same value after a round trip.
    assert_eq!(
        format!("{back:?}"),
        format!("{t:?}"),
        "table changed in a round trip"
    );
}

fn properties(b: &[u8]) {
    let decoded = decode_properties(b);
    let scanned = scan_properties(b);
    assert_eq!(
        decoded.is_ok(),
        scanned.is_ok(),
        "decode_properties {decoded:?} but scan_properties {scanned:?}"
    );
    let (Ok(p), Ok(s)) = (decoded, scanned) else {
        return;
    };
    assert_eq!(s.delivery_mode, p.delivery_mode);
    assert_eq!(s.priority, p.priority);
    assert_eq!(s.has_headers(), p.headers.is_some());
    for (range, value) in [
        (s.reply_to, &p.reply_to),
        (s.expiration, &p.expiration),
        (s.user_id, &p.user_id),
    ] {
        assert_eq!(range.is_some(), value.is_some());
        if let (Some((from, to)), Some(v)) = (range, value) {
            if let Ok(text) = std::str::from_utf8(&b[from..to]) {
                assert_eq!(text, v, "the scanner's text differs from the decoded one");
            }
        }
    }
    let mut enc = BytesMut::new();
    encode_properties(&p, &mut Writer::new(&mut enc));
    scan_properties(&enc).expect("encoded properties scan");
    let back = decode_properties(&enc).expect("encoded properties decode");
    assert_eq!(
        format!("{back:?}"),
        format!("{p:?}"),
        "properties changed in a round trip"
    );
}
