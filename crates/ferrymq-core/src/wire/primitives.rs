//! Reading and writing AMQP primitive types, including packed bit fields.

use super::table::{read_table, write_table};
use super::WireError;
use crate::value::FieldTable;
use bytes::{BufMut, Bytes, BytesMut};

/// A long string (32-bit length prefix), kept as bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LongStr(pub Bytes);

impl From<&str> for LongStr {
    fn from(s: &str) -> Self {
        LongStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// The longest prefix of `s` that fits a short string: at most 255 bytes, cut at a character
/// boundary so it stays UTF-8.
pub(crate) fn short(s: &str) -> &str {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A cursor over a method or header payload.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    bits: u8,
    bit_pos: u8,
    /// Short strings must be valid UTF-8 (method arguments, as RabbitMQ checks them).
    strict_utf8: bool,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            bits: 0,
            bit_pos: 8,
            strict_utf8: false,
        }
    }

    /// The same reader refusing short strings that are not valid UTF-8 with
    /// [`WireError::MalformedUtf8`] instead of replacing the bad bytes.
    pub fn strict_utf8(mut self, strict: bool) -> Self {
        self.strict_utf8 = strict;
        self
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        self.bit_pos = 8;
        if self.remaining() < n {
            return Err(WireError::InsufficientBytes(n - self.remaining()));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// An octet.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    /// A big-endian short.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A big-endian long.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A big-endian long long.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    /// One packed bit; consecutive bits share an octet.
    pub fn bit(&mut self) -> Result<bool, WireError> {
        if self.bit_pos >= 8 {
            self.bits = self.u8()?;
            self.bit_pos = 0;
        }
        let v = (self.bits >> self.bit_pos) & 1 == 1;
        self.bit_pos += 1;
        Ok(v)
    }
    /// A short string (8-bit length). Invalid UTF-8 is refused by a strict reader, else
    /// replaced rather than rejected, since
    /// names are compared as text everywhere in the broker; replacement characters take 3
    /// bytes, so the text is then cut back to 255 bytes, keeping every decoded short string
    /// one that encodes exactly.
    pub fn shortstr(&mut self) -> Result<String, WireError> {
        let n = self.u8()? as usize;
        let b = self.take(n)?;
        Ok(match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) if self.strict_utf8 => return Err(WireError::MalformedUtf8),
            Err(_) => short(&String::from_utf8_lossy(b)).to_string(),
        })
    }
    /// A long string (32-bit length).
    pub fn longstr(&mut self) -> Result<LongStr, WireError> {
        let n = self.u32()? as usize;
        Ok(LongStr(Bytes::copy_from_slice(self.take(n)?)))
    }
    /// A field table.
    pub fn table(&mut self) -> Result<FieldTable, WireError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        read_table(b)
    }
}

/// Appends AMQP primitives to a buffer, packing consecutive bits.
pub struct Writer<'a> {
    /// The buffer written to.
    pub buf: &'a mut BytesMut,
    bits: u8,
    nbits: u8,
}

impl<'a> Writer<'a> {
    /// A writer appending to `buf`.
    pub fn new(buf: &'a mut BytesMut) -> Self {
        Writer {
            buf,
            bits: 0,
            nbits: 0,
        }
    }

    /// Writes any pending packed bits.
    pub fn flush_bits(&mut self) {
        if self.nbits > 0 {
            self.buf.put_u8(self.bits);
            self.bits = 0;
            self.nbits = 0;
        }
    }
    /// An octet.
    pub fn u8(&mut self, v: u8) {
        self.flush_bits();
        self.buf.put_u8(v);
    }
    /// A short.
    pub fn u16(&mut self, v: u16) {
        self.flush_bits();
        self.buf.put_u16(v);
    }
    /// A long.
    pub fn u32(&mut self, v: u32) {
        self.flush_bits();
        self.buf.put_u32(v);
    }
    /// A long long.
    pub fn u64(&mut self, v: u64) {
        self.flush_bits();
        self.buf.put_u64(v);
    }
    /// A packed bit.
    pub fn bit(&mut self, v: bool) {
        if self.nbits == 8 {
            self.flush_bits();
        }
        if v {
            self.bits |= 1 << self.nbits;
        }
        self.nbits += 1;
    }
    /// A short string; longer input is truncated to 255 bytes at a char boundary.
    pub fn shortstr(&mut self, s: &str) {
        self.flush_bits();
        let s = short(s);
        self.buf.put_u8(s.len() as u8);
        self.buf.put_slice(s.as_bytes());
    }
    /// A long string.
    pub fn longstr(&mut self, s: &[u8]) {
        self.flush_bits();
        self.buf.put_u32(s.len() as u32);
        self.buf.put_slice(s);
    }
    /// A field table.
    pub fn table(&mut self, t: &FieldTable) {
        self.flush_bits();
        write_table(self.buf, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_string_that_is_not_utf8_decodes_to_one_that_reencodes_exactly() {
        // Found by the field_tables fuzz target: each invalid byte becomes a 3-byte
        // replacement character, so the decoded text outgrew the 255 bytes a short string
        // holds, and encoding it again cut it.
        let mut wire = vec![200u8];
        wire.extend([0xFFu8; 200]);
        let s = Reader::new(&wire).shortstr().unwrap();
        assert!(s.len() <= 255, "{} bytes", s.len());
        let mut buf = BytesMut::new();
        Writer::new(&mut buf).shortstr(&s);
        assert_eq!(Reader::new(&buf).shortstr().unwrap(), s);
    }
}
