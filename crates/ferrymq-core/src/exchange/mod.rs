//! Exchanges, their bindings and routing.

mod delayed;
mod headers;
mod topic;

pub use delayed::DelayedMessages;
pub use headers::{headers_match, HeaderView};
pub use topic::{topic_match, TopicPattern, TopicTrie};

use crate::error::{CoreError, CoreResult};
use crate::events::DelayedRelease;
use crate::expiry::{instant_of, now_ms};
use crate::message::{LazyHeaders, Message};
use crate::queue::Queue;
use crate::timers::{self, Timed};
use crate::value::{FieldTable, FieldValue};
use parking_lot::{Mutex, RwLock};
use slab::Slab;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

/// Exchange type of RabbitMQ's delayed-message plugin.
pub const DELAYED_TYPE: &str = "x-delayed-message";
/// Header giving a message's delay in milliseconds on a delayed-message exchange.
pub const DELAY_HEADER: &str = "x-delay";

/// The routing algorithm of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Every bound destination.
    Fanout,
    /// Dot-separated words with `*` and `#` wildcards.
    Topic,
    /// Match on message headers (`x-match`).
    Headers,
}

impl ExchangeKind {
    /// Parses an AMQP exchange type name.
    pub fn parse(s: &str) -> Option<ExchangeKind> {
        match s {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    /// The AMQP name of the type.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Clone)]
pub enum Destination {
    /// A queue.
    Queue(Arc<Queue>),
    /// Another exchange (exchange-to-exchange binding).
    Exchange(Arc<Exchange>),
}

impl Destination {
    /// The destination's name.
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(q) => &q.name,
            Destination::Exchange(e) => &e.name,
        }
    }

    /// Identity of the queue or exchange (the binding holds its `Arc`, so the address
    /// cannot be reused while the binding exists).
    fn id(&self) -> DestId {
        match self {
            Destination::Queue(q) => DestId(Arc::as_ptr(q) as usize, false),
            Destination::Exchange(e) => DestId(Arc::as_ptr(e) as usize, true),
        }
    }
}

/// Identity of a binding's destination: its address and whether it is an exchange.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct DestId(usize, bool);

/// One binding from this exchange to a destination.
#[derive(Clone)]
pub struct Binding {
    /// Where matching messages go.
    pub destination: Destination,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments (used by headers exchanges).
    pub arguments: FieldTable,
}

/// An exchange's bindings and the indexes that keep binding, unbinding and routing cheap
/// whatever their number: adding or removing one costs O(1) (plus the few bindings that share
/// its destination, key and argument hash), so 100,000 bindings, as MQTT subscriptions make,
/// are built and torn down in linear time, however many share a destination or a key.
#[derive(Default)]
struct Bindings {
    /// Every binding, under a stable id.
    all: Slab<Entry>,
    /// Ids by (destination, binding key, hash of the arguments): in practice one each.
    exact: HashMap<(DestId, String, u64), Vec<usize>>,
    /// Ids by destination, for removing everything bound to a deleted queue or exchange.
    by_dest: HashMap<DestId, HashSet<usize>>,
    // Direct exchanges index bindings by key so routing is one hash lookup.
    by_key: HashMap<String, Vec<(usize, Destination)>>,
    // Topic exchanges index bindings by word (routing cost follows the key, not the count).
    topics: TopicTrie<(usize, Destination)>,
}

/// A binding and where its routing entry sits (in its `by_key` list or trie node), so it
/// can be taken out without a search.
struct Entry {
    binding: Binding,
    args_hash: u64,
    route_pos: usize,
}

/// A hash of an argument table that equivalent tables share: entries in any order, integers
/// of any width (as [`FieldTable::equivalent`] compares them), the first value of a repeated
/// key.
fn args_hash(t: &FieldTable) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut seen = HashSet::new();
    t.iter()
        .filter(|(k, _)| seen.insert(k.as_str()))
        .fold(0u64, |acc, (k, v)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            k.hash(&mut h);
            hash_value(v, &mut h);
            acc.wrapping_add(h.finish())
        })
}

/// Hashes a value so that values [`FieldValue::equivalent`] calls equal hash alike: integers
/// by value whatever their width, floats with -0.0 as 0.0, containers element by element
/// (nesting is bounded by the decoder).
fn hash_value(v: &FieldValue, h: &mut impl std::hash::Hasher) {
    use std::hash::Hash;
    let float = |x: f64| if x == 0.0 { 0.0f64 } else { x }.to_bits();
    if let Some(i) = v.as_i64() {
        return (0u8, i).hash(h);
    }
    match v {
        FieldValue::F32(x) => (1u8, float(f64::from(*x))).hash(h),
        FieldValue::F64(x) => (1u8, float(*x)).hash(h),
        FieldValue::Array(items) => {
            (2u8, items.len()).hash(h);
            items.iter().for_each(|i| hash_value(i, h));
        }
        FieldValue::Table(t) => {
            (3u8, t.0.len()).hash(h);
            for (k, i) in t.iter() {
                k.hash(h);
                hash_value(i, h);
            }
        }
        other => (4u8, format!("{other:?}")).hash(h),
    }
}

impl Bindings {
    fn find(&self, dest: DestId, key: &str, args: &FieldTable) -> Option<usize> {
        self.exact
            .get(&(dest, key.to_string(), args_hash(args)))?
            .iter()
            .copied()
            .find(|&id| {
                self.all
                    .get(id)
                    .is_some_and(|e| e.binding.arguments.equivalent(args))
            })
    }

    fn add(&mut self, kind: ExchangeKind, binding: Binding) {
        let dest = binding.destination.id();
        let key = binding.routing_key.clone();
        let destination = binding.destination.clone();
        let args_hash = args_hash(&binding.arguments);
        let id = self.all.insert(Entry {
            binding,
            args_hash,
            route_pos: 0,
        });
        let route_pos = match kind {
            ExchangeKind::Direct => {
                let list = self.by_key.entry(key.clone()).or_default();
                list.push((id, destination));
                list.len() - 1
            }
            ExchangeKind::Topic => self.topics.insert(&key, (id, destination)),
            _ => 0,
        };
        if let Some(e) = self.all.get_mut(id) {
            e.route_pos = route_pos;
        }
        self.by_dest.entry(dest).or_default().insert(id);
        self.exact
            .entry((dest, key, args_hash))
            .or_default()
            .push(id);
    }

    fn remove(&mut self, kind: ExchangeKind, id: usize) {
        let Some(e) = self.all.try_remove(id) else {
            return;
        };
        let dest = e.binding.destination.id();
        let key = e.binding.routing_key;
        if let Some(set) = self.by_dest.get_mut(&dest) {
            set.remove(&id);
            if set.is_empty() {
                self.by_dest.remove(&dest);
            }
        }
        // The entry that filled the removed one's place in its routing list, if any.
        let moved = match kind {
            ExchangeKind::Direct => match self.by_key.get_mut(&key) {
                Some(list) if e.route_pos < list.len() => {
                    list.swap_remove(e.route_pos);
                    let moved = list.get(e.route_pos).map(|(m, _)| *m);
                    if list.is_empty() {
                        self.by_key.remove(&key);
                    }
                    moved
                }
                _ => None,
            },
            ExchangeKind::Topic => self
                .topics
                .remove_at(&key, e.route_pos)
                .flatten()
                .map(|(m, _)| m),
            _ => None,
        };
        if let Some(m) = moved.and_then(|m| self.all.get_mut(m)) {
            m.route_pos = e.route_pos;
        }
        let exact = (dest, key, e.args_hash);
        if let Some(list) = self.exact.get_mut(&exact) {
            list.retain(|&x| x != id);
            if list.is_empty() {
                self.exact.remove(&exact);
            }
        }
    }
}

/// Declaration options of an exchange.
#[derive(Debug, Clone, Default)]
pub struct ExchangeOptions {
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding (as source) goes.
    pub auto_delete: bool,
    /// Cannot be published to directly, only through exchange-to-exchange bindings.
    pub internal: bool,
    /// Declaration arguments, e.g. `alternate-exchange`.
    pub arguments: FieldTable,
}

/// The waiting messages of a delayed-message exchange and its pending timer.
struct Delay {
    msgs: DelayedMessages,
    timer_at: Option<u64>,
}

/// An exchange and its bindings.
pub struct Exchange {
    /// Name, empty for the default exchange.
    pub name: String,
    /// Routing algorithm (for a delayed-message exchange, its `x-delayed-type`).
    pub kind: ExchangeKind,
    /// Declaration options.
    pub options: ExchangeOptions,
    bindings: RwLock<Bindings>,
    /// Set for `x-delayed-message` exchanges.
    delay: Option<Mutex<Delay>>,
    /// Alternate exchange set by a policy (a declared argument takes precedence).
    policy_ae: RwLock<Option<String>>,
    /// The vhost delayed messages are routed in when their time comes.
    home: OnceLock<Weak<dyn DelayedRelease>>,
    /// For a delayed-message exchange with a data directory: which declaration of its name
    /// it is (its directory and definitions entry carry the id).
    incarnation: Option<String>,
}

impl Exchange {
    /// A new exchange with no bindings.
    pub fn new(name: &str, kind: ExchangeKind, options: ExchangeOptions) -> Self {
        Exchange {
            name: name.to_string(),
            kind,
            options,
            bindings: RwLock::new(Bindings::default()),
            delay: None,
            policy_ae: RwLock::new(None),
            home: OnceLock::new(),
            incarnation: None,
        }
    }

    /// A delayed-message exchange that routes as `kind` once a message's delay has passed;
    /// `incarnation` names its directory when it has one.
    pub fn delayed(
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
        msgs: DelayedMessages,
        home: Weak<dyn DelayedRelease>,
        incarnation: Option<String>,
    ) -> Arc<Self> {
        let mut x = Exchange::new(name, kind, options);
        x.incarnation = incarnation;
        x.delay = Some(Mutex::new(Delay {
            msgs,
            timer_at: None,
        }));
        let _ = x.home.set(home);
        let x = Arc::new(x);
        x.arm_delay();
        x
    }

    /// Which declaration of its name this (delayed-message) exchange is.
    pub fn incarnation(&self) -> Option<&str> {
        self.incarnation.as_deref()
    }

    /// The exchange type as declared (`direct`, ..., `x-delayed-message`).
    pub fn type_name(&self) -> &'static str {
        if self.delay.is_some() {
            DELAYED_TYPE
        } else {
            self.kind.as_str()
        }
    }

    /// The alternate exchange for unroutable messages, if configured (declared argument
    /// first, then policy).
    pub fn alternate_exchange(&self) -> Option<String> {
        match self
            .options
            .arguments
            .get("alternate-exchange")
            .and_then(FieldValue::as_str)
        {
            Some(a) => Some(a.to_string()),
            None => self.policy_ae.read().clone(),
        }
    }

    /// Sets (or clears) the alternate exchange given by a policy.
    pub fn set_policy_alternate_exchange(&self, ae: Option<String>) {
        *self.policy_ae.write() = ae;
    }

    /// Whether this is a delayed-message exchange.
    pub fn is_delayed(&self) -> bool {
        self.delay.is_some()
    }

    /// Number of messages waiting for their delay (0 for other exchanges).
    pub fn delayed_count(&self) -> usize {
        self.delay.as_ref().map_or(0, |d| d.lock().msgs.len())
    }

    /// Holds a message on a delayed-message exchange for `delay_ms`. Returns what group
    /// commit must make durable before it is confirmed, or `None` when the exchange's log
    /// failed and the message was refused.
    pub fn hold(
        self: &Arc<Self>,
        msg: Arc<Message>,
        delay_ms: u64,
    ) -> CoreResult<Option<ferrymq_store::Pending>> {
        let Some(d) = &self.delay else {
            return Err(CoreError::Internal(format!(
                "exchange '{}' does not delay",
                self.name
            )));
        };
        // Rounded up to the next whole millisecond: never released before its delay.
        let at = now_ms().saturating_add(delay_ms) + 1;
        let held = d.lock().msgs.hold(msg, at);
        let pending = match held {
            Ok(p) => p,
            Err(ferrymq_store::StoreError::Failed(_) | ferrymq_store::StoreError::Deleted(_)) => {
                return Ok(None)
            }
            Err(e) => {
                return Err(CoreError::Internal(format!(
                    "cannot hold a delayed message: {e}"
                )))
            }
        };
        self.arm_delay();
        Ok(Some(pending))
    }

    fn arm_delay(self: &Arc<Self>) {
        let Some(d) = &self.delay else { return };
        let mut d = d.lock();
        let Some(at) = d.msgs.next() else { return };
        if d.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        d.timer_at = Some(at);
        let me: Weak<dyn Timed> = Arc::downgrade(self) as Weak<dyn Timed>;
        timers::schedule(instant_of(at), me);
    }

    /// Drops the messages a deleted delayed-message exchange was holding.
    pub fn destroy_delayed(&self) {
        if let Some(d) = &self.delay {
            d.lock().msgs.destroy();
        }
    }

    /// Adds a binding; binding twice is a no-op, as in AMQP.
    pub fn bind(&self, destination: Destination, routing_key: &str, arguments: FieldTable) {
        let mut b = self.bindings.write();
        if b.find(destination.id(), routing_key, &arguments).is_some() {
            return;
        }
        b.add(
            self.kind,
            Binding {
                destination,
                routing_key: routing_key.to_string(),
                arguments,
            },
        );
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, destination: &Destination, routing_key: &str, args: &FieldTable) -> bool {
        let mut b = self.bindings.write();
        match b.find(destination.id(), routing_key, args) {
            Some(id) => {
                b.remove(self.kind, id);
                true
            }
            None => false,
        }
    }

    /// Removes every binding to `destination`; returns how many went.
    pub fn unbind_destination(&self, destination: &Destination) -> usize {
        let mut b = self.bindings.write();
        let ids: Vec<usize> = b
            .by_dest
            .get(&destination.id())
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        for &id in &ids {
            b.remove(self.kind, id);
        }
        ids.len()
    }

    /// Whether any binding has this exchange as its source.
    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().all.is_empty()
    }

    /// Whether any binding leads from this exchange to `destination`.
    pub fn has_bindings_to(&self, destination: &Destination) -> bool {
        self.bindings.read().by_dest.contains_key(&destination.id())
    }

    /// Whether a matching binding exists.
    pub fn has_binding(&self, destination: &Destination, key: &str, args: &FieldTable) -> bool {
        self.bindings
            .read()
            .find(destination.id(), key, args)
            .is_some()
    }

    /// A snapshot of the bindings.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings
            .read()
            .all
            .iter()
            .map(|(_, e)| e.binding.clone())
            .collect()
    }

    /// Appends the destinations matching a message to `out`.
    pub fn route_into(
        &self,
        routing_key: &str,
        headers: &LazyHeaders<'_>,
        out: &mut Vec<Destination>,
    ) {
        let b = self.bindings.read();
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(ds) = b.by_key.get(routing_key) {
                    out.extend(ds.iter().map(|(_, d)| d.clone()));
                }
            }
            ExchangeKind::Fanout => {
                out.extend(b.all.iter().map(|(_, e)| e.binding.destination.clone()))
            }
            ExchangeKind::Topic => b
                .topics
                .matches_with(&topic::split_key(routing_key), |(_, d)| out.push(d.clone())),
            ExchangeKind::Headers => {
                let h = HeaderView::new(headers.get());
                for (_, e) in &b.all {
                    if headers_match(&e.binding.arguments, &h) {
                        out.push(e.binding.destination.clone());
                    }
                }
            }
        }
    }

    /// Checks that a redeclaration (of declared type `type_name`) matches this exchange, as
    /// RabbitMQ does.
    pub fn check_equivalent(
        &self,
        vhost: &str,
        type_name: &str,
        options: &ExchangeOptions,
    ) -> CoreResult<()> {
        let fail = |what: &str, got: String, cur: String| {
            Err(CoreError::PreconditionFailed(format!(
                "inequivalent arg '{what}' for exchange '{}' in vhost '{vhost}': received '{got}' but current is '{cur}'",
                self.name
            )))
        };
        if type_name != self.type_name() {
            return fail("type", type_name.into(), self.type_name().into());
        }
        if options.durable != self.options.durable {
            return fail(
                "durable",
                options.durable.to_string(),
                self.options.durable.to_string(),
            );
        }
        if options.auto_delete != self.options.auto_delete {
            return fail(
                "auto_delete",
                options.auto_delete.to_string(),
                self.options.auto_delete.to_string(),
            );
        }
        if options.internal != self.options.internal {
            return fail(
                "internal",
                options.internal.to_string(),
                self.options.internal.to_string(),
            );
        }
        check_args_equivalent(
            &self.options.arguments,
            &options.arguments,
            &["alternate-exchange", "x-delayed-type"],
        )
            .map_err(|(k, got, cur)| {
                CoreError::PreconditionFailed(format!(
                    "inequivalent arg '{k}' for exchange '{}' in vhost '{vhost}': received {got} but current is {cur}",
                    self.name
                ))
            })
    }
}

impl Timed for Exchange {
    fn on_timer(self: Arc<Self>, _now: Instant) {
        let Some(d) = &self.delay else { return };
        let due = {
            let mut d = d.lock();
            d.timer_at = None;
            d.msgs.take_due(now_ms())
        };
        if !due.is_empty() {
            if let Some(home) = self.home.get().and_then(Weak::upgrade) {
                for (msg, pos) in due {
                    home.release(&self, msg);
                    if let Some(pos) = pos {
                        d.lock().msgs.sent(pos);
                    }
                }
            }
        }
        self.arm_delay();
    }
}

/// Compares the listed arguments of two declarations. Returns the first differing key with
/// the received and current values rendered as RabbitMQ renders them in its error text.
pub fn check_args_equivalent(
    current: &FieldTable,
    received: &FieldTable,
    keys: &[&str],
) -> Result<(), (String, String, String)> {
    for k in keys {
        let (c, r) = (current.get(k), received.get(k));
        let rendered = match (c, r) {
            (None, None) => None,
            (Some(a), Some(b)) if a.equivalent(b) => None,
            (Some(c), Some(r)) => Some((format!("'{r}'"), format!("'{c}'"))),
            (Some(c), None) => Some((
                "none".to_string(),
                format!("the value '{c}' of type '{}'", c.rabbit_type_name()),
            )),
            (None, Some(r)) => Some((
                format!("the value '{r}' of type '{}'", r.rabbit_type_name()),
                "none".to_string(),
            )),
        };
        if let Some((got, cur)) = rendered {
            return Err((k.to_string(), got, cur));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
