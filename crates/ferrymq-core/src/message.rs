//! Messages as the core stores and routes them.

use crate::value::{FieldTable, FieldValue};
use crate::wire::{decode_properties, encode_properties, scan_properties, WireError, Writer};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// The AMQP basic properties of a message. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// MIME content type.
    pub content_type: Option<String>,
    /// MIME content encoding.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Message priority, 0 to 9 (or up to a queue's max priority).
    pub priority: Option<u8>,
    /// Application correlation identifier (RPC).
    pub correlation_id: Option<String>,
    /// Address to reply to (RPC).
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a string.
    pub expiration: Option<String>,
    /// Application message identifier.
    pub message_id: Option<String>,
    /// Message timestamp (seconds since the epoch).
    pub timestamp: Option<u64>,
    /// Message type name.
    pub kind: Option<String>,
    /// Creating user id.
    pub user_id: Option<String>,
    /// Creating application id.
    pub app_id: Option<String>,
    /// Deprecated cluster id, passed through.
    pub cluster_id: Option<String>,
}

/// Bodies up to this size are copied next to the message's names and properties, into one
/// allocation; larger ones stay the slice of the receive buffer they arrived in (no copy).
/// Small bodies are copied so that a queued message does not pin the receive buffer it came
/// from, which would cost far more memory than the copy costs time.
pub const INLINE_BODY_MAX: usize = 4096;

/// A published message. Shared (`Arc`) by every queue it is routed to: never copied per queue.
///
/// Compact by design, since a deep queue holds millions: the exchange, routing key, property
/// block (exactly as received on the wire) and a small body share one allocation, and the
/// properties are decoded only when something needs them.
pub struct Message {
    /// exchange ‖ routing key ‖ property block ‖ inline body.
    data: Box<[u8]>,
    /// The body, when larger than [`INLINE_BODY_MAX`].
    large_body: Option<Box<Bytes>>,
    props_end: u32,
    rk_end: u16,
    rk_start: u8,
    delivery_mode: u8,
    priority: Option<u8>,
    /// Whether the properties carry `expiration` (read on demand: few messages have one).
    has_expiration: bool,
    /// Routing keys besides `routing_key` from the `CC` and `BCC` headers; `None` for the
    /// messages that have neither (nearly all: the field costs no allocation then, and keeps
    /// the message in the same allocator size class).
    extra_keys: Option<Box<ExtraKeys>>,
}

impl Message {
    /// A message from its wire parts. `raw_properties` is the flags word and property list of
    /// a content header; it is validated here, so a malformed block is refused up front.
    pub fn new(
        exchange: &str,
        routing_key: &str,
        raw_properties: &[u8],
        body: Bytes,
    ) -> Result<Message, WireError> {
        let summary = scan_properties(raw_properties)?;
        for (what, s) in [("exchange name", exchange), ("routing key", routing_key)] {
            if s.len() > 255 {
                return Err(WireError::Syntax(format!("{what} longer than 255 bytes")));
            }
        }
        let inline = body.len() <= INLINE_BODY_MAX;
        let head = exchange.len() + routing_key.len() + raw_properties.len();
        let props_end = u32::try_from(head)
            .map_err(|_| WireError::Syntax("property block too large".into()))?;
        let mut data = Vec::with_capacity(head + if inline { body.len() } else { 0 });
        data.extend_from_slice(exchange.as_bytes());
        data.extend_from_slice(routing_key.as_bytes());
        data.extend_from_slice(raw_properties);
        let large_body = if inline {
            data.extend_from_slice(&body);
            None
        } else {
            Some(Box::new(body))
        };
        let extra_keys = match summary.sender_selected {
            true => sender_selected_keys(raw_properties, routing_key),
            false => None,
        };
        Ok(Message {
            data: data.into_boxed_slice(),
            large_body,
            props_end,
            rk_end: (exchange.len() + routing_key.len()) as u16,
            rk_start: exchange.len() as u8,
            delivery_mode: summary.delivery_mode.unwrap_or(0),
            priority: summary.priority,
            has_expiration: summary.expiration.is_some(),
            extra_keys,
        })
    }

    /// The same message also routed with `keys` (the `BCC` keys of a publish, whose header
    /// is removed before the message is stored).
    pub fn with_extra_keys(mut self, keys: Vec<String>) -> Message {
        if keys.is_empty() {
            return self;
        }
        let mut all = KeySet::new(self.routing_key());
        if let Some(old) = self.extra_keys.take() {
            all.extend(old.iter().map(str::to_string));
        }
        all.extend(keys);
        self.extra_keys = all.finish();
        self
    }

    /// The same message routed with its routing key only: a `CC` header it carries stays in
    /// its properties but chooses no further queues (a re-publish to one named queue, such as
    /// the API's move).
    pub fn without_extra_keys(mut self) -> Message {
        self.extra_keys = None;
        self
    }

    /// Routing keys besides [`Message::routing_key`] the sender chose (`CC`, `BCC`).
    pub fn extra_keys(&self) -> &ExtraKeys {
        self.extra_keys.as_deref().unwrap_or(ExtraKeys::none())
    }

    /// A message from decoded properties (messages the broker makes itself, and tests).
    pub fn from_properties(
        exchange: &str,
        routing_key: &str,
        properties: &Properties,
        body: Bytes,
    ) -> Result<Message, WireError> {
        let mut raw = BytesMut::new();
        encode_properties(properties, &mut Writer::new(&mut raw));
        Message::new(exchange, routing_key, &raw, body)
    }

    /// Exchange the message was published to.
    pub fn exchange(&self) -> &str {
        text(&self.data[..self.rk_start as usize])
    }

    /// Routing key it was published with.
    pub fn routing_key(&self) -> &str {
        text(&self.data[self.rk_start as usize..self.rk_end as usize])
    }

    /// The property flags and list exactly as received, re-sent verbatim on delivery.
    pub fn raw_properties(&self) -> &[u8] {
        &self.data[self.rk_end as usize..self.props_end as usize]
    }

    /// The decoded properties.
    pub fn properties(&self) -> Properties {
        // The block was validated when the message was made, so decoding cannot fail.
        decode_properties(self.raw_properties()).unwrap_or_default()
    }

    /// The application headers, decoded.
    pub fn headers(&self) -> Option<FieldTable> {
        self.properties().headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        match &self.large_body {
            Some(b) => b,
            None => &self.data[self.props_end as usize..],
        }
    }

    /// The body as shared bytes when it is large enough to be sent without copying.
    pub fn large_body(&self) -> Option<&Bytes> {
        self.large_body.as_deref()
    }

    /// Body length, used for limits and byte counts.
    pub fn body_size(&self) -> usize {
        self.body().len()
    }

    /// Whether the publisher asked for the message to be persisted (delivery mode 2).
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == 2
    }

    /// The priority property, if set.
    pub fn priority(&self) -> Option<u8> {
        self.priority
    }

    /// The `expiration` property as RabbitMQ reads it: `Some(Ok(ms))` for a valid value,
    /// `Some(Err(reason))` otherwise (see [`parse_expiration`]), `None` when absent.
    pub fn expiration(&self) -> Option<Result<u64, ExpirationError>> {
        if !self.has_expiration {
            return None;
        }
        let raw = self.raw_properties();
        let (a, b) = scan_properties(raw).ok()?.expiration?;
        Some(parse_expiration(&raw[a..b]))
    }

    /// A copy published under another exchange and routing key with changed properties (used
    /// when the broker re-publishes a message itself: dead-lettering, delivery counts).
    pub fn republished(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &Properties,
    ) -> Result<Message, WireError> {
        let body = match &self.large_body {
            Some(b) => Bytes::clone(b),
            None => Bytes::copy_from_slice(self.body()),
        };
        Message::from_properties(exchange, routing_key, properties, body)
    }

    /// Appends the message as a store record payload (`docs/storage.md`):
    /// `[exchange len u8][exchange][key len u8][key][properties len u32 LE][properties][body]`.
    pub fn encode_record(&self, out: &mut Vec<u8>) {
        let (ex, rk, props) = (
            self.exchange().as_bytes(),
            self.routing_key().as_bytes(),
            self.raw_properties(),
        );
        out.reserve(6 + ex.len() + rk.len() + props.len() + self.body_size());
        out.push(ex.len() as u8);
        out.extend_from_slice(ex);
        out.push(rk.len() as u8);
        out.extend_from_slice(rk);
        out.extend_from_slice(&(props.len() as u32).to_le_bytes());
        out.extend_from_slice(props);
        out.extend_from_slice(self.body());
    }

    /// Rebuilds a message from a record payload written by [`Message::encode_record`].
    pub fn decode_record(b: &[u8]) -> Result<Message, WireError> {
        let mut r = crate::wire::Reader::new(b);
        let ex = r.u8()? as usize;
        let ex = r.take(ex)?;
        let rk = r.u8()? as usize;
        let rk = r.take(rk)?;
        let n = r.take(4)?;
        let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
        let props = r.take(n)?;
        let body = r.take(r.remaining())?;
        let name = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_string)
                .map_err(|_| WireError::Syntax("name is not UTF-8".into()))
        };
        Message::new(&name(ex)?, &name(rk)?, props, Bytes::copy_from_slice(body))
    }
}

/// A message's application headers, decoded the first time a headers exchange asks for them,
/// so that routing through direct, fanout and topic exchanges never decodes them.
pub struct LazyHeaders<'a> {
    message: Option<&'a Message>,
    cell: std::cell::OnceCell<FieldTable>,
}

impl<'a> LazyHeaders<'a> {
    /// The headers of `message`.
    pub fn of(message: &'a Message) -> Self {
        LazyHeaders {
            message: Some(message),
            cell: std::cell::OnceCell::new(),
        }
    }

    /// No headers (routing a bare key).
    pub fn none() -> Self {
        LazyHeaders {
            message: None,
            cell: std::cell::OnceCell::new(),
        }
    }

    /// The headers, empty when the message has none.
    pub fn get(&self) -> &FieldTable {
        self.cell
            .get_or_init(|| self.message.and_then(|m| m.headers()).unwrap_or_default())
    }
}

/// The string entries of the `CC` and `BCC` header arrays, without repeats or the routing
/// key itself (each queue gets a message once however many keys lead to it).
fn sender_selected_keys(raw_properties: &[u8], routing_key: &str) -> Option<Box<ExtraKeys>> {
    let headers = decode_properties(raw_properties).ok()?.headers?;
    let mut keys = KeySet::new(routing_key);
    for name in ["CC", "BCC"] {
        if let Some(FieldValue::Array(a)) = headers.get(name) {
            keys.extend(a.iter().filter_map(FieldValue::as_str).map(str::to_string));
        }
    }
    keys.finish()
}

/// A message's extra routing keys (`CC`, `BCC`), packed in one string with their end offsets:
/// a header of thousands of short keys costs about its own size again, not a `String` each.
/// Boxed behind a thin pointer so [`Message`] stays 48 bytes.
#[derive(Debug, Default)]
pub struct ExtraKeys {
    text: String,
    ends: Vec<u32>,
}

impl ExtraKeys {
    /// No extra keys.
    pub fn none() -> &'static ExtraKeys {
        static NONE: ExtraKeys = ExtraKeys {
            text: String::new(),
            ends: Vec::new(),
        };
        &NONE
    }

    /// The keys, in the order the sender gave them, each once.
    pub fn iter(&self) -> impl Iterator<Item = &str> + Clone + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .filter_map(|(a, b)| self.text.get(a as usize..b as usize))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Routing keys in order, each once (a hash set: a frame can carry thousands of them).
struct KeySet {
    keys: Vec<String>,
    seen: std::collections::HashSet<String>,
}

impl KeySet {
    fn new(routing_key: &str) -> Self {
        KeySet {
            keys: Vec::new(),
            seen: std::iter::once(routing_key.to_string()).collect(),
        }
    }

    fn extend(&mut self, keys: impl IntoIterator<Item = String>) {
        for k in keys {
            if self.seen.insert(k.clone()) {
                self.keys.push(k);
            }
        }
    }

    fn finish(self) -> Option<Box<ExtraKeys>> {
        if self.keys.is_empty() {
            return None;
        }
        let mut packed = ExtraKeys::default();
        for k in &self.keys {
            packed.text.push_str(k);
            // Keys come from one frame, far below 4 GiB in total.
            packed.ends.push(packed.text.len() as u32);
        }
        Some(Box::new(packed))
    }
}

fn text(b: &[u8]) -> &str {
    // Names were `&str` when the message was built, so this never falls back.
    std::str::from_utf8(b).unwrap_or_default()
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("exchange", &self.exchange())
            .field("routing_key", &self.routing_key())
            .field("properties", &self.properties())
            .field("body_size", &self.body_size())
            .finish()
    }
}

/// The placeholder left where a ready message was taken out of the middle of a queue (it
/// expired): replacing the entry keeps removal O(log n) on a deque of millions, and the
/// placeholder is skipped when it reaches the head.
fn tombstone() -> &'static Arc<Message> {
    static T: std::sync::OnceLock<Arc<Message>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        // No names, an empty property block (flags word 0) and no body.
        Arc::new(Message {
            data: Box::new([0, 0]),
            large_body: None,
            props_end: 2,
            rk_end: 0,
            rk_start: 0,
            delivery_mode: 0,
            priority: None,
            has_expiration: false,
            extra_keys: None,
        })
    })
}

/// Bits of [`QueuedMessage`]'s packed word that hold the sequence number (2^48 messages per
/// queue: 8 years at a million a second).
const SEQ_BITS: u32 = 48;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// A message as it sits in a queue: its position, and how often it went back to the queue
/// after a delivery. Sixteen bytes, since a deep queue holds millions of them.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// The shared message.
    pub message: Arc<Message>,
    /// Sequence number (low 48 bits) and return count (high 16 bits, saturating).
    packed: u64,
}

impl QueuedMessage {
    /// A message entering a queue at position `seq`, never delivered.
    pub fn new(seq: u64, message: Arc<Message>) -> Self {
        QueuedMessage {
            message,
            packed: seq & SEQ_MASK,
        }
    }

    /// Position in the queue; requeued messages go back to their position.
    pub fn seq(&self) -> u64 {
        self.packed & SEQ_MASK
    }

    /// Whether it has been delivered before (the AMQP redelivered flag).
    pub fn redelivered(&self) -> bool {
        self.returns() > 0
    }

    /// How many times it was delivered and came back (rejected, nacked, or its channel went),
    /// saturating at 65,535.
    pub fn returns(&self) -> u16 {
        (self.packed >> SEQ_BITS) as u16
    }

    /// Records that a delivery of it came back to the queue.
    pub fn mark_returned(&mut self) {
        let n = self.returns().saturating_add(1);
        self.packed = self.seq() | (u64::from(n) << SEQ_BITS);
    }

    /// Takes the message out, leaving a tombstone with the same position in its place.
    pub fn take_out(&mut self) -> QueuedMessage {
        let m = std::mem::replace(&mut self.message, tombstone().clone());
        QueuedMessage {
            message: m,
            packed: self.packed,
        }
    }

    /// Whether this entry is a tombstone left by [`QueuedMessage::take_out`].
    pub fn is_tombstone(&self) -> bool {
        Arc::ptr_eq(&self.message, tombstone())
    }
}

/// Largest per-message TTL RabbitMQ accepts, in milliseconds (ten years).
pub const MAX_EXPIRATION_MS: u64 = 315_360_000_000;

/// Why an `expiration` property is refused, as RabbitMQ names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpirationError {
    /// It does not start with an optionally signed digit.
    NoInteger,
    /// Bytes after the digits.
    Leftover(Vec<u8>),
    /// A negative value (its digits, leading zeros dropped).
    Negative(String),
    /// Above [`MAX_EXPIRATION_MS`] (its digits, leading zeros dropped).
    TooLarge(String),
}

/// Reads an `expiration` property as RabbitMQ does: an optionally signed decimal integer
/// of milliseconds, at most [`MAX_EXPIRATION_MS`].
pub fn parse_expiration(text: &[u8]) -> Result<u64, ExpirationError> {
    let digits_at = usize::from(matches!(text.first(), Some(b'+' | b'-')));
    let digits_end = text[digits_at..]
        .iter()
        .position(|c| !c.is_ascii_digit())
        .map_or(text.len(), |i| i + digits_at);
    if digits_end == digits_at {
        return Err(ExpirationError::NoInteger);
    }
    if digits_end < text.len() {
        return Err(ExpirationError::Leftover(text[digits_end..].to_vec()));
    }
    // All ASCII digits from here.
    let digits = String::from_utf8_lossy(&text[digits_at..digits_end]);
    let magnitude = match digits.trim_start_matches('0') {
        "" => "0",
        m => m,
    };
    if text[0] == b'-' && magnitude != "0" {
        return Err(ExpirationError::Negative(magnitude.to_string()));
    }
    match magnitude.parse::<u64>() {
        Ok(n) if n <= MAX_EXPIRATION_MS => Ok(n),
        _ => Err(ExpirationError::TooLarge(magnitude.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expirations_are_read_as_rabbitmq_reads_them() {
        use ExpirationError::*;
        for (text, want) in [
            ("0", Ok(0)),
            ("+10", Ok(10)),
            ("007", Ok(7)),
            ("-0", Ok(0)),
            ("315360000000", Ok(MAX_EXPIRATION_MS)),
            ("", Err(NoInteger)),
            ("+", Err(NoInteger)),
            ("abc", Err(NoInteger)),
            (" 5", Err(NoInteger)),
            ("10x", Err(Leftover(b"x".to_vec()))),
            ("1.5", Err(Leftover(b".5".to_vec()))),
            ("-05", Err(Negative("5".into()))),
            ("315360000001", Err(TooLarge("315360000001".into()))),
            (
                "0099999999999999999999999",
                Err(TooLarge("99999999999999999999999".into())),
            ),
        ] {
            assert_eq!(parse_expiration(text.as_bytes()), want, "{text:?}");
        }
    }

    #[test]
    fn parts_come_back_for_small_and_large_bodies() {
        let props = Properties {
            delivery_mode: Some(2),
            priority: Some(7),
            reply_to: Some("r".into()),
            ..Default::default()
        };
        for size in [0, 16, INLINE_BODY_MAX, INLINE_BODY_MAX + 1, 100_000] {
            let body = Bytes::from(vec![b'x'; size]);
            let m = Message::from_properties("ex", "key.a", &props, body.clone()).unwrap();
            assert_eq!(m.exchange(), "ex");
            assert_eq!(m.routing_key(), "key.a");
            assert_eq!(m.body(), &body[..]);
            assert_eq!(m.large_body().is_some(), size > INLINE_BODY_MAX);
            assert_eq!(m.properties(), props);
            assert!(m.is_persistent());
            assert_eq!(m.priority(), Some(7));
        }
    }

    #[test]
    fn records_round_trip_and_damage_is_an_error() {
        let props = Properties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        for size in [3, INLINE_BODY_MAX + 10] {
            let m =
                Message::from_properties("ex", "rk", &props, Bytes::from(vec![1u8; size])).unwrap();
            let mut rec = Vec::new();
            m.encode_record(&mut rec);
            let back = Message::decode_record(&rec).unwrap();
            assert_eq!(
                (back.exchange(), back.routing_key(), back.body()),
                ("ex", "rk", m.body())
            );
            assert_eq!(back.properties(), props);
            assert!(back.is_persistent());
            assert!(Message::decode_record(&rec[..5]).is_err());
        }
    }

    #[test]
    fn malformed_properties_and_long_names_are_refused() {
        assert!(Message::new("", "k", b"\x00", Bytes::new()).is_err());
        let long = "k".repeat(256);
        assert!(Message::new("", &long, b"\x00\x00", Bytes::new()).is_err());
        assert!(Message::new(&long, "k", b"\x00\x00", Bytes::new()).is_err());
    }

    #[test]
    fn cc_and_bcc_keys_are_kept_once_each_without_the_routing_key() {
        let mut h = FieldTable::new();
        let keys =
            |ks: &[&str]| FieldValue::Array(ks.iter().map(|k| FieldValue::string(*k)).collect());
        h.insert("CC", keys(&["b", "a", "b", "c"]));
        h.insert("BCC", keys(&["c", "d"]));
        let props = Properties {
            headers: Some(h),
            ..Default::default()
        };
        let m = Message::from_properties("x", "a", &props, Bytes::new()).unwrap();
        assert_eq!(m.extra_keys().iter().collect::<Vec<_>>(), ["b", "c", "d"]);
        let m = m.with_extra_keys(vec!["e".into(), "b".into()]);
        assert_eq!(
            m.extra_keys().iter().collect::<Vec<_>>(),
            ["b", "c", "d", "e"]
        );
        let plain = Message::new("", "q", b"\x00\x00", Bytes::new()).unwrap();
        assert!(plain.extra_keys().is_empty());
    }

    #[test]
    fn a_queued_small_message_stays_small() {
        // The memory target (1M queued messages in 150 MB) depends on these.
        assert!(std::mem::size_of::<Message>() <= 48);
        assert_eq!(std::mem::size_of::<QueuedMessage>(), 16);
    }

    #[test]
    fn returns_count_up_without_touching_the_sequence() {
        let m = Arc::new(Message::new("", "q", b"\x00\x00", Bytes::new()).unwrap());
        let mut q = QueuedMessage::new(SEQ_MASK, m);
        assert!(!q.redelivered());
        q.mark_returned();
        q.mark_returned();
        assert_eq!((q.seq(), q.returns(), q.redelivered()), (SEQ_MASK, 2, true));
        for _ in 0..70_000 {
            q.mark_returned();
        }
        assert_eq!((q.seq(), q.returns()), (SEQ_MASK, u16::MAX));
    }
}
