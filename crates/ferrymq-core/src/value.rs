//! Typed values of AMQP field tables, used for arguments and message headers.
//!
//! The core keeps the exact wire type of each value (e.g. a signed 8-bit int stays `I8`), so that
//! a header passes through the broker unchanged.

use bytes::Bytes;

/// One value in a field table or field array.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s` (RabbitMQ's short int)
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: scale, unscaled value
    Decimal(u8, u32),
    /// `S`: a long string (bytes, usually UTF-8)
    LongStr(Bytes),
    /// `x`: a byte array
    Bytes(Bytes),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T`: seconds since the epoch
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `V`
    Void,
}

impl FieldValue {
    /// The value as an integer, whatever its integer width.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            FieldValue::Timestamp(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string, if it is a long string of valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FieldValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A long-string value from text.
    pub fn string(s: impl Into<String>) -> FieldValue {
        FieldValue::LongStr(Bytes::from(s.into()))
    }

    /// The type name RabbitMQ uses in error messages (`signedint`, `longstr`, ...).
    pub fn rabbit_type_name(&self) -> &'static str {
        match self {
            FieldValue::Bool(_) => "bool",
            FieldValue::I8(_) => "byte",
            FieldValue::U8(_) => "unsignedbyte",
            FieldValue::I16(_) => "short",
            FieldValue::U16(_) => "unsignedshort",
            FieldValue::I32(_) => "signedint",
            FieldValue::U32(_) => "unsignedint",
            FieldValue::I64(_) => "long",
            FieldValue::F32(_) => "float",
            FieldValue::F64(_) => "double",
            FieldValue::Decimal(..) => "decimal",
            FieldValue::LongStr(_) => "longstr",
            FieldValue::Bytes(_) => "binary",
            FieldValue::Array(_) => "array",
            FieldValue::Timestamp(_) => "timestamp",
            FieldValue::Table(_) => "table",
            FieldValue::Void => "void",
        }
    }

    /// Semantic equality used to compare declaration arguments (ignores integer width).
    pub fn equivalent(&self, other: &FieldValue) -> bool {
        match (self.as_i64(), other.as_i64()) {
            (Some(a), Some(b)) => a == b,
            _ => self == other,
        }
    }
}

impl std::fmt::Display for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Bool(b) => write!(f, "{b}"),
            FieldValue::LongStr(s) | FieldValue::Bytes(s) => {
                write!(f, "{}", String::from_utf8_lossy(s))
            }
            FieldValue::F32(v) => write!(f, "{v}"),
            FieldValue::F64(v) => write!(f, "{v}"),
            FieldValue::Void => write!(f, "none"),
            other => match other.as_i64() {
                Some(i) => write!(f, "{i}"),
                None => write!(f, "{other:?}"),
            },
        }
    }
}

/// An ordered AMQP field table. Order is kept so that headers pass through unchanged.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(String, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    /// The value under `key`, if present.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`, replacing an existing entry.
    pub fn insert(&mut self, key: impl Into<String>, value: FieldValue) {
        let key = key.into();
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.0.push((key, value));
        }
    }

    /// Removes every entry under `key`; returns whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|(k, _)| k != key);
        self.0.len() != before
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Whether both tables hold equivalent values under the same keys, in any order.
    pub fn equivalent(&self, other: &FieldTable) -> bool {
        if self.0.len() != other.0.len() {
            return false;
        }
        if self.0.len() <= 16 {
            return self
                .0
                .iter()
                .all(|(k, v)| other.get(k).is_some_and(|o| v.equivalent(o)));
        }
        // Peer-sized tables: one index instead of a scan per key.
        let index = other.index();
        self.0
            .iter()
            .all(|(k, v)| index.get(k.as_str()).is_some_and(|o| v.equivalent(o)))
    }

    /// The entries by key (the first value of a repeated key), for lookups in a large table.
    pub fn index(&self) -> std::collections::HashMap<&str, &FieldValue> {
        let mut m = std::collections::HashMap::with_capacity(self.0.len());
        for (k, v) in &self.0 {
            m.entry(k.as_str()).or_insert(v);
        }
        m
    }
}

/// A table as JSON, the way RabbitMQ's definitions document writes arguments.
pub fn table_to_json(t: &FieldTable) -> serde_json::Map<String, serde_json::Value> {
    t.iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

fn value_to_json(v: &FieldValue) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        FieldValue::Bool(b) => J::Bool(*b),
        FieldValue::F32(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(J::Null, J::Number)
        }
        FieldValue::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        FieldValue::Decimal(scale, u) => {
            serde_json::Number::from_f64(f64::from(*u) / 10f64.powi(i32::from(*scale)))
                .map_or(J::Null, J::Number)
        }
        FieldValue::LongStr(b) | FieldValue::Bytes(b) => {
            J::String(String::from_utf8_lossy(b).into_owned())
        }
        FieldValue::Array(items) => J::Array(items.iter().map(value_to_json).collect()),
        FieldValue::Table(t) => J::Object(table_to_json(t)),
        FieldValue::Void => J::Null,
        other => other.as_i64().map_or(J::Null, |i| J::Number(i.into())),
    }
}

/// A table from JSON arguments (numbers become longs or doubles, as RabbitMQ imports them).
pub fn table_from_json(m: &serde_json::Map<String, serde_json::Value>) -> FieldTable {
    FieldTable(
        m.iter()
            .map(|(k, v)| (k.clone(), value_from_json(v)))
            .collect(),
    )
}

fn value_from_json(v: &serde_json::Value) -> FieldValue {
    use serde_json::Value as J;
    match v {
        J::Null => FieldValue::Void,
        J::Bool(b) => FieldValue::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or_default()),
        },
        J::String(s) => FieldValue::string(s),
        J::Array(items) => FieldValue::Array(items.iter().map(value_from_json).collect()),
        J::Object(m) => FieldValue::Table(table_from_json(m)),
    }
}

#[cfg(test)]
mod json_tests {
    use super::*;

    #[test]
    fn arguments_survive_a_json_round_trip() {
        let t = FieldTable(vec![
            ("x-max-length".into(), FieldValue::I64(10)),
            ("x-dead-letter-exchange".into(), FieldValue::string("dlx")),
            ("flag".into(), FieldValue::Bool(true)),
            ("ratio".into(), FieldValue::F64(0.5)),
            (
                "nested".into(),
                FieldValue::Table(FieldTable(vec![(
                    "list".into(),
                    FieldValue::Array(vec![FieldValue::I64(1), FieldValue::Void]),
                )])),
            ),
        ]);
        // JSON objects do not keep key order; arguments are looked up by key.
        let sorted = |mut t: FieldTable| {
            t.0.sort_by(|a, b| a.0.cmp(&b.0));
            t
        };
        assert_eq!(sorted(table_from_json(&table_to_json(&t))), sorted(t));
    }
}
