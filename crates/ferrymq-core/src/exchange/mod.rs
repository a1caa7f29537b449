//! Exchanges, their bindings and routing.

mod headers;
mod topic;

pub use headers::headers_match;
pub use topic::{topic_match, TopicPattern, TopicTrie};

use crate::error::{CoreError, CoreResult};
use crate::message::LazyHeaders;
use crate::queue::Queue;
use crate::value::{FieldTable, FieldValue};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

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

    fn same(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

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

impl Binding {
    fn matches(&self, other_dest: &Destination, key: &str, args: &FieldTable) -> bool {
        self.destination.same(other_dest)
            && self.routing_key == key
            && self.arguments.equivalent(args)
    }
}

#[derive(Default)]
struct Bindings {
    all: Vec<Binding>,
    // Direct exchanges index bindings by key so routing is one hash lookup.
    by_key: HashMap<String, Vec<Destination>>,
    // Topic exchanges index bindings by word (routing cost follows the key, not the count).
    topics: TopicTrie<Destination>,
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

/// An exchange and its bindings.
pub struct Exchange {
    /// Name, empty for the default exchange.
    pub name: String,
    /// Routing algorithm.
    pub kind: ExchangeKind,
    /// Declaration options.
    pub options: ExchangeOptions,
    bindings: RwLock<Bindings>,
}

impl Exchange {
    /// A new exchange with no bindings.
    pub fn new(name: &str, kind: ExchangeKind, options: ExchangeOptions) -> Self {
        Exchange {
            name: name.to_string(),
            kind,
            options,
            bindings: RwLock::new(Bindings::default()),
        }
    }

    /// The alternate exchange for unroutable messages, if configured.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.options
            .arguments
            .get("alternate-exchange")
            .and_then(FieldValue::as_str)
    }

    /// Adds a binding; binding twice is a no-op, as in AMQP.
    pub fn bind(&self, destination: Destination, routing_key: &str, arguments: FieldTable) {
        let mut b = self.bindings.write();
        if b.all
            .iter()
            .any(|x| x.matches(&destination, routing_key, &arguments))
        {
            return;
        }
        match self.kind {
            ExchangeKind::Direct => b
                .by_key
                .entry(routing_key.to_string())
                .or_default()
                .push(destination.clone()),
            ExchangeKind::Topic => b.topics.insert(routing_key, destination.clone()),
            _ => {}
        }
        b.all.push(Binding {
            destination,
            routing_key: routing_key.to_string(),
            arguments,
        });
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, destination: &Destination, routing_key: &str, args: &FieldTable) -> bool {
        let mut b = self.bindings.write();
        let before = b.all.len();
        b.all.retain(|x| !x.matches(destination, routing_key, args));
        let removed = b.all.len() != before;
        if removed {
            rebuild_indexes(self.kind, &mut b);
        }
        removed
    }

    /// Removes every binding to `destination`; returns how many went.
    pub fn unbind_destination(&self, destination: &Destination) -> usize {
        let mut b = self.bindings.write();
        let before = b.all.len();
        b.all.retain(|x| !x.destination.same(destination));
        let removed = before - b.all.len();
        if removed > 0 {
            rebuild_indexes(self.kind, &mut b);
        }
        removed
    }

    /// Whether any binding has this exchange as its source.
    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().all.is_empty()
    }

    /// Whether a matching binding exists.
    pub fn has_binding(&self, destination: &Destination, key: &str, args: &FieldTable) -> bool {
        self.bindings
            .read()
            .all
            .iter()
            .any(|x| x.matches(destination, key, args))
    }

    /// A snapshot of the bindings.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
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
                    out.extend(ds.iter().cloned());
                }
            }
            ExchangeKind::Fanout => out.extend(b.all.iter().map(|x| x.destination.clone())),
            ExchangeKind::Topic => b.topics.matches(&topic::split_key(routing_key), out),
            ExchangeKind::Headers => {
                let h = headers.get();
                for x in &b.all {
                    if headers_match(&x.arguments, h) {
                        out.push(x.destination.clone());
                    }
                }
            }
        }
    }

    /// Checks that a redeclaration matches this exchange, as RabbitMQ does.
    pub fn check_equivalent(
        &self,
        vhost: &str,
        kind: ExchangeKind,
        options: &ExchangeOptions,
    ) -> CoreResult<()> {
        let fail = |what: &str, got: String, cur: String| {
            Err(CoreError::PreconditionFailed(format!(
                "inequivalent arg '{what}' for exchange '{}' in vhost '{vhost}': received '{got}' but current is '{cur}'",
                self.name
            )))
        };
        if kind != self.kind {
            return fail("type", kind.as_str().into(), self.kind.as_str().into());
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
        check_args_equivalent(&self.options.arguments, &options.arguments, &["alternate-exchange"])
            .map_err(|(k, got, cur)| {
                CoreError::PreconditionFailed(format!(
                    "inequivalent arg '{k}' for exchange '{}' in vhost '{vhost}': received {got} but current is {cur}",
                    self.name
                ))
            })
    }
}

/// Rebuilds the routing index after bindings were removed (removal is rare; routing is hot).
fn rebuild_indexes(kind: ExchangeKind, b: &mut Bindings) {
    match kind {
        ExchangeKind::Direct => {
            let mut idx: HashMap<String, Vec<Destination>> = HashMap::new();
            for x in &b.all {
                idx.entry(x.routing_key.clone())
                    .or_default()
                    .push(x.destination.clone());
            }
            b.by_key = idx;
        }
        ExchangeKind::Topic => {
            let mut trie = TopicTrie::default();
            for x in &b.all {
                trie.insert(&x.routing_key, x.destination.clone());
            }
            b.topics = trie;
        }
        _ => {}
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
