//! Record framing inside a segment: `[length u32 LE][crc32c u32 LE][payload]`.
//!
//! The CRC covers the payload. A record whose header or payload runs past the end of the file
//! is torn (the process died mid-write); one whose CRC does not match is corrupt. Either ends
//! the valid part of a segment.

/// Bytes of a record header (length and CRC).
pub const HEADER_LEN: usize = 8;

/// Appends a framed record to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What is found at an offset of a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan<'a> {
    /// A valid record: its payload and the offset just past it.
    Record(&'a [u8], usize),
    /// The bytes end exactly here: a clean end.
    End,
    /// A record starts here but the bytes end inside it.
    Torn,
    /// A whole record is here but its CRC does not match its payload.
    Corrupt,
}

/// The total size (header and payload) its length prefix gives the record at `offset`, if a
/// whole header is there. Unchecked: the prefix itself may be damaged.
pub fn claimed_len(bytes: &[u8], offset: usize) -> Option<usize> {
    let h = bytes.get(offset..offset.checked_add(4)?)?;
    Some(HEADER_LEN + u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize)
}

/// Reads the record starting at `offset` of `bytes`.
pub fn scan(bytes: &[u8], offset: usize) -> Scan<'_> {
    let rest = bytes.get(offset..).unwrap_or_default();
    if rest.is_empty() {
        return Scan::End;
    }
    if rest.len() < HEADER_LEN {
        return Scan::Torn;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
        return Scan::Torn;
    };
    if crc32c::crc32c(payload) != crc {
        return Scan::Corrupt;
    }
    Scan::Record(payload, offset + HEADER_LEN + len)
}

/// From a corrupt record at `off`, follows length prefixes over consecutive damaged records
/// to the next intact one. Returns the damaged records (offset, size) and where the intact
/// one starts, or `None` when the prefixes lead nowhere trustworthy (past the end, or to the
/// very end, which makes the damage a corrupt tail).
pub fn step_over(bytes: &[u8], mut off: usize) -> Option<(Vec<(usize, usize)>, usize)> {
    let mut damaged = Vec::new();
    loop {
        let len = claimed_len(bytes, off)?;
        damaged.push((off, len));
        off = off.checked_add(len)?;
        match scan(bytes, off) {
            Scan::Record(..) => return Some((damaged, off)),
            Scan::Corrupt => continue,
            Scan::End | Scan::Torn => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let mut b = Vec::new();
        encode(b"hello", &mut b);
        encode(b"", &mut b);
        let Scan::Record(p, next) = scan(&b, 0) else {
            panic!("first record")
        };
        assert_eq!(p, b"hello");
        let Scan::Record(p, end) = scan(&b, next) else {
            panic!("second record")
        };
        assert_eq!((p, end), (&b""[..], b.len()));
        assert_eq!(scan(&b, end), Scan::End);
        assert_eq!(scan(&b[..next - 1], 0), Scan::Torn);
        assert_eq!(scan(&b[..3], 0), Scan::Torn);
        let mut flipped = b.clone();
        flipped[HEADER_LEN + 1] ^= 0x10;
        assert_eq!(scan(&flipped, 0), Scan::Corrupt);
    }
}
