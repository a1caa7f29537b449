//! Method argument types: how each is read and written. The primitives themselves live in
//! `ferrymq_core::wire`, shared with the message format.

use super::CodecError;
pub use ferrymq_core::wire::{LongStr, Reader, Writer};
use ferrymq_core::FieldTable;

/// A method argument type: how it is read and written.
pub trait Field: Sized {
    /// Reads the field.
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError>;
    /// Writes the field.
    fn write(&self, w: &mut Writer<'_>);
}

impl Field for u8 {
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(r.u8()?)
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.u8(*self)
    }
}
impl Field for u16 {
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(r.u16()?)
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.u16(*self)
    }
}
impl Field for u32 {
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(r.u32()?)
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.u32(*self)
    }
}
impl Field for u64 {
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(r.u64()?)
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(*self)
    }
}
impl Field for bool {
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(r.bit()?)
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.bit(*self)
    }
}
impl Field for String {
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(r.shortstr()?)
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.shortstr(self)
    }
}
impl Field for LongStr {
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(r.longstr()?)
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.longstr(&self.0)
    }
}
impl Field for FieldTable {
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(r.table()?)
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.table(self)
    }
}
