//! A virtual host: its exchanges and queues, and the operations clients perform on them.

use crate::error::{CoreError, CoreResult};
use crate::exchange::{
    check_args_equivalent, Destination, Exchange, ExchangeKind, ExchangeOptions,
};
use crate::message::{LazyHeaders, Message};
use crate::paged_store::PagedStore;
use crate::persist::Persistence;
use crate::queue::{Enqueued, Queue, QueueCounts, QueueOptions};
use crate::value::{table_from_json, table_to_json, FieldTable};
use crate::ConnectionId;
use ferrymq_store::definitions::{BindingDef, ExchangeDef, QueueDef};
use parking_lot::RwLock;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;

/// Prefix of the pseudo-queue names used by direct reply-to.
pub const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Arguments whose values must match when a queue is redeclared.
const QUEUE_EQUIVALENCE_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
];

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Number of queues the message was put in.
    pub routed: usize,
    /// Number of target queues that could not take it (e.g. deleted while routing). A
    /// publisher in confirm mode gets `basic.nack` when this is not zero.
    pub refused: usize,
    /// Group-commit ticket after which every copy that had to be written is on disk.
    pub ticket: Option<u64>,
}

/// A virtual host.
pub struct VHost {
    /// Its name, e.g. `/`.
    pub name: String,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    reply_queues: RwLock<HashMap<String, Arc<Queue>>>,
    persist: Option<Arc<Persistence>>,
}

fn not_found_queue(name: &str, vhost: &str) -> CoreError {
    CoreError::NotFound(format!("no queue '{name}' in vhost '{vhost}'"))
}

fn not_found_exchange(name: &str, vhost: &str) -> CoreError {
    CoreError::NotFound(format!("no exchange '{name}' in vhost '{vhost}'"))
}

fn default_exchange_refused() -> CoreError {
    CoreError::AccessRefused("operation not permitted on the default exchange".into())
}

impl VHost {
    /// A vhost with the standard exchanges (default, amq.direct, amq.fanout, amq.topic,
    /// amq.headers, amq.match), keeping everything in memory.
    pub fn new(name: &str) -> Self {
        VHost::with_persistence(name, None)
    }

    /// A vhost whose durable entities and persistent messages go to `persist`.
    pub fn with_persistence(name: &str, persist: Option<Arc<Persistence>>) -> Self {
        let v = VHost {
            name: name.to_string(),
            exchanges: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            reply_queues: RwLock::new(HashMap::new()),
            persist,
        };
        let durable = ExchangeOptions {
            durable: true,
            ..Default::default()
        };
        {
            let mut ex = v.exchanges.write();
            for (n, k) in [
                ("", ExchangeKind::Direct),
                ("amq.direct", ExchangeKind::Direct),
                ("amq.fanout", ExchangeKind::Fanout),
                ("amq.topic", ExchangeKind::Topic),
                ("amq.headers", ExchangeKind::Headers),
                ("amq.match", ExchangeKind::Headers),
            ] {
                ex.insert(
                    n.to_string(),
                    Arc::new(Exchange::new(n, k, durable.clone())),
                );
            }
        }
        v
    }

    /// The named exchange.
    pub fn exchange(&self, name: &str) -> CoreResult<Arc<Exchange>> {
        self.exchanges
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found_exchange(name, &self.name))
    }

    /// The named queue, checking that `conn` may use it.
    pub fn queue(&self, name: &str, conn: ConnectionId) -> CoreResult<Arc<Queue>> {
        let q = self
            .queues
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found_queue(name, &self.name))?;
        q.check_access(conn)?;
        Ok(q)
    }

    /// Every exchange.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    /// Every queue.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    /// exchange.declare.
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        options: ExchangeOptions,
        passive: bool,
    ) -> CoreResult<()> {
        if passive {
            return self.exchange(name).map(|_| ());
        }
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        let kind = ExchangeKind::parse(kind)
            .ok_or_else(|| CoreError::CommandInvalid(format!("unknown exchange type '{kind}'")))?;
        let mut ex = self.exchanges.write();
        if let Some(existing) = ex.get(name) {
            return existing.check_equivalent(&self.name, kind, &options);
        }
        if name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let x = Arc::new(Exchange::new(name, kind, options));
        if let (true, Some(p)) = (x.options.durable, &self.persist) {
            p.exchange_declared(self.exchange_def(&x))?;
        }
        ex.insert(name.to_string(), x);
        Ok(())
    }

    fn exchange_def(&self, x: &Exchange) -> ExchangeDef {
        ExchangeDef {
            name: x.name.clone(),
            vhost: self.name.clone(),
            kind: x.kind.as_str().to_string(),
            durable: true,
            auto_delete: x.options.auto_delete,
            internal: x.options.internal,
            arguments: table_to_json(&x.options.arguments),
        }
    }

    /// exchange.delete. Deleting a missing exchange succeeds, as in RabbitMQ.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> CoreResult<()> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let x = {
            let mut ex = self.exchanges.write();
            let Some(x) = ex.get(name).cloned() else {
                return Ok(());
            };
            if if_unused && (x.has_bindings() || self.is_destination(&x, &ex)) {
                return Err(CoreError::PreconditionFailed(format!(
                    "exchange '{name}' in vhost '{}' in use",
                    self.name
                )));
            }
            ex.remove(name);
            x
        };
        if let (true, Some(p)) = (x.options.durable, &self.persist) {
            p.exchange_deleted(&self.name, name)?;
        }
        // Remove bindings where the deleted exchange is the destination.
        let dest = Destination::Exchange(x.clone());
        let sources: Vec<Arc<Exchange>> = self.exchanges.read().values().cloned().collect();
        for s in sources {
            if s.unbind_destination(&dest) > 0 {
                self.maybe_auto_delete_exchange(&s);
            }
        }
        // Break reference cycles through its own outgoing exchange bindings.
        for b in x.bindings() {
            x.unbind_destination(&b.destination);
            if let Destination::Exchange(d) = &b.destination {
                self.maybe_auto_delete_exchange(d);
            }
        }
        Ok(())
    }

    fn is_destination(&self, x: &Arc<Exchange>, all: &HashMap<String, Arc<Exchange>>) -> bool {
        let d = Destination::Exchange(x.clone());
        all.values()
            .any(|s| s.bindings().iter().any(|b| matches!((&b.destination, &d), (Destination::Exchange(a), Destination::Exchange(c)) if Arc::ptr_eq(a, c))))
    }

    fn maybe_auto_delete_exchange(&self, x: &Arc<Exchange>) {
        if x.options.auto_delete && !x.has_bindings() {
            let _ = self.delete_exchange(&x.name, false);
        }
    }

    /// queue.declare. Returns the (possibly server-generated) name and its counts.
    pub fn declare_queue(
        &self,
        name: &str,
        options: QueueOptions,
        passive: bool,
        conn: ConnectionId,
    ) -> CoreResult<(Arc<Queue>, QueueCounts)> {
        if passive {
            let q = self.queue(name, conn)?;
            let c = q.counts();
            return Ok((q, c));
        }
        let name = if name.is_empty() {
            generate_name("amq.gen-")
        } else {
            if name.starts_with("amq.") {
                return Err(CoreError::AccessRefused(format!(
                    "queue name '{name}' contains reserved prefix 'amq.*'"
                )));
            }
            name.to_string()
        };
        validate_queue_args(&name, &self.name, &options.arguments)?;
        let mut qs = self.queues.write();
        if let Some(q) = qs.get(&name) {
            q.check_access(conn)?;
            if options.exclusive && q.owner.is_none() {
                return Err(Queue::locked_error(q));
            }
            self.check_queue_equivalent(q, &options)?;
            let c = q.counts();
            return Ok((q.clone(), c));
        }
        let owner = options.exclusive.then_some(conn);
        let q = Arc::new(self.new_queue(&name, options, owner)?);
        qs.insert(name, q.clone());
        Ok((
            q,
            QueueCounts {
                messages: 0,
                unacked: 0,
                consumers: 0,
            },
        ))
    }

    /// Builds a queue with the store its options call for: on disk for durable queues (and
    /// the definitions saved), in memory with paging for the rest, in memory only without a
    /// data directory. Exclusive queues never outlive their connection, so never persist.
    fn new_queue(
        &self,
        name: &str,
        options: QueueOptions,
        owner: Option<ConnectionId>,
    ) -> CoreResult<Queue> {
        let Some(p) = &self.persist else {
            return Ok(Queue::new(name, &self.name, options, owner));
        };
        let durable = options.durable && !options.exclusive;
        let dir = if durable {
            let dir = p.queue_dir(&self.name, name);
            // Leftovers of an earlier queue of that name must not come back in the new one.
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| CoreError::Internal(format!("{}: {e}", dir.display())))?;
            }
            p.queue_declared(&self.name, name, options.auto_delete, &options.arguments)?;
            dir
        } else {
            p.transient_dir()
        };
        let store = PagedStore::new(p.clone(), durable, dir);
        Ok(Queue::with_store(
            name,
            &self.name,
            options,
            owner,
            Box::new(store),
            1,
        ))
    }

    fn is_persisted(q: &Queue) -> bool {
        q.options.durable && !q.options.exclusive
    }

    fn binding_def(
        &self,
        source: &str,
        dest: &Destination,
        key: &str,
        args: &FieldTable,
    ) -> Option<BindingDef> {
        let (dest_type, dest_name, durable) = match dest {
            Destination::Queue(q) => ("queue", q.name.clone(), VHost::is_persisted(q)),
            Destination::Exchange(x) => ("exchange", x.name.clone(), x.options.durable),
        };
        let source_durable = self
            .exchanges
            .read()
            .get(source)
            .is_some_and(|x| x.options.durable);
        (durable && source_durable && self.persist.is_some()).then(|| BindingDef {
            source: source.to_string(),
            vhost: self.name.clone(),
            destination: dest_name,
            destination_type: dest_type.to_string(),
            routing_key: key.to_string(),
            arguments: table_to_json(args),
        })
    }

    fn check_queue_equivalent(&self, q: &Queue, o: &QueueOptions) -> CoreResult<()> {
        let fail = |what: &str, got: bool, cur: bool| {
            Err(CoreError::PreconditionFailed(format!(
                "inequivalent arg '{what}' for queue '{}' in vhost '{}': received '{got}' but current is '{cur}'",
                q.name, self.name
            )))
        };
        if o.durable != q.options.durable {
            return fail("durable", o.durable, q.options.durable);
        }
        if o.auto_delete != q.options.auto_delete {
            return fail("auto_delete", o.auto_delete, q.options.auto_delete);
        }
        check_args_equivalent(&q.options.arguments, &o.arguments, QUEUE_EQUIVALENCE_ARGS).map_err(
            |(k, got, cur)| {
                CoreError::PreconditionFailed(format!(
                    "inequivalent arg '{k}' for queue '{}' in vhost '{}': received {got} but current is {cur}",
                    q.name, self.name
                ))
            },
        )
    }

    /// queue.delete. Returns the number of ready messages it held. Deleting a missing queue
    /// succeeds with 0, as in RabbitMQ.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> CoreResult<usize> {
        let q = match self.queue(name, conn) {
            Ok(q) => q,
            Err(CoreError::NotFound(_)) => return Ok(0),
            Err(e) => return Err(e),
        };
        let c = q.counts();
        if if_unused && c.consumers > 0 {
            return Err(CoreError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && c.messages > 0 {
            return Err(CoreError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' not empty",
                self.name
            )));
        }
        Ok(self.remove_queue(&q, None))
    }

    /// Removes a queue: unbinds it everywhere and cancels its consumers except `except`.
    pub fn remove_queue(&self, q: &Arc<Queue>, except_consumer: Option<u64>) -> usize {
        {
            let mut qs = self.queues.write();
            match qs.get(&q.name) {
                Some(cur) if Arc::ptr_eq(cur, q) => {
                    qs.remove(&q.name);
                }
                _ => return 0,
            }
        }
        if let (true, Some(p)) = (VHost::is_persisted(q), &self.persist) {
            if let Err(e) = p.queue_deleted(&self.name, &q.name) {
                // The queue is gone either way; at the next start its files are removed as
                // orphans only if the definitions agree, so say what happened.
                tracing::error!(queue = %q.name, "cannot save definitions after delete: {e}");
            }
        }
        let dest = Destination::Queue(q.clone());
        let exchanges: Vec<Arc<Exchange>> = self.exchanges.read().values().cloned().collect();
        for x in exchanges {
            if x.unbind_destination(&dest) > 0 {
                self.maybe_auto_delete_exchange(&x);
            }
        }
        q.mark_deleted(except_consumer)
    }

    /// Detaches a consumer and deletes the queue if it is auto-delete and now unused.
    pub fn remove_consumer(&self, q: &Arc<Queue>, consumer_id: u64) {
        if q.remove_consumer(consumer_id) {
            self.remove_queue(q, Some(consumer_id));
        }
    }

    /// queue.purge.
    pub fn purge_queue(&self, name: &str, conn: ConnectionId) -> CoreResult<usize> {
        Ok(self.queue(name, conn)?.purge())
    }

    /// queue.bind.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
        conn: ConnectionId,
    ) -> CoreResult<()> {
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        let q = self.queue(queue, conn)?;
        let x = self.exchange(exchange)?;
        let dest = Destination::Queue(q);
        if let (Some(def), Some(p)) = (self.binding_def(exchange, &dest, key, &args), &self.persist)
        {
            p.binding_added(def)?;
        }
        x.bind(dest, key, args);
        Ok(())
    }

    /// queue.unbind. Unbinding a binding that does not exist succeeds.
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &FieldTable,
        conn: ConnectionId,
    ) -> CoreResult<()> {
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        let q = self.queue(queue, conn)?;
        let x = self.exchange(exchange)?;
        let dest = Destination::Queue(q);
        if let (Some(def), Some(p)) = (self.binding_def(exchange, &dest, key, args), &self.persist)
        {
            p.binding_removed(&def)?;
        }
        if x.unbind(&dest, key, args) {
            self.maybe_auto_delete_exchange(&x);
        }
        Ok(())
    }

    /// exchange.bind (destination ← source).
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: FieldTable,
    ) -> CoreResult<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(default_exchange_refused());
        }
        let d = self.exchange(destination)?;
        let s = self.exchange(source)?;
        let dest = Destination::Exchange(d);
        if let (Some(def), Some(p)) = (self.binding_def(source, &dest, key, &args), &self.persist) {
            p.binding_added(def)?;
        }
        s.bind(dest, key, args);
        Ok(())
    }

    /// exchange.unbind.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: &FieldTable,
    ) -> CoreResult<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(default_exchange_refused());
        }
        let d = self.exchange(destination)?;
        let s = self.exchange(source)?;
        let dest = Destination::Exchange(d);
        if let (Some(def), Some(p)) = (self.binding_def(source, &dest, key, args), &self.persist) {
            p.binding_removed(&def)?;
        }
        if s.unbind(&dest, key, args) {
            self.maybe_auto_delete_exchange(&s);
        }
        Ok(())
    }

    /// Resolves the queues a message published to `exchange` with `routing_key` goes to,
    /// following exchange-to-exchange bindings and alternate exchanges. Each queue appears once.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        routing_key: &str,
        headers: &LazyHeaders<'_>,
    ) -> Vec<Arc<Queue>> {
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        if exchange.name.is_empty() {
            if let Some(q) = self.queues.read().get(routing_key) {
                queues.push(q.clone());
            } else if let Some(q) = routing_key
                .strip_prefix(REPLY_TO_PREFIX)
                .and_then(|t| self.reply_queues.read().get(t).cloned())
            {
                queues.push(q);
            }
            return queues;
        }
        let mut visited: Vec<*const Exchange> = Vec::new();
        self.route_exchange(exchange, routing_key, headers, &mut queues, &mut visited);
        queues
    }

    fn route_exchange(
        &self,
        x: &Arc<Exchange>,
        key: &str,
        headers: &LazyHeaders<'_>,
        queues: &mut Vec<Arc<Queue>>,
        visited: &mut Vec<*const Exchange>,
    ) {
        if visited.contains(&Arc::as_ptr(x)) {
            return;
        }
        visited.push(Arc::as_ptr(x));
        let before = queues.len();
        let mut dests = Vec::new();
        x.route_into(key, headers, &mut dests);
        for d in dests {
            match d {
                Destination::Queue(q) => {
                    if !queues.iter().any(|e| Arc::ptr_eq(e, &q)) {
                        queues.push(q);
                    }
                }
                Destination::Exchange(e) => self.route_exchange(&e, key, headers, queues, visited),
            }
        }
        if queues.len() == before {
            if let Some(ae) = x
                .alternate_exchange()
                .and_then(|n| self.exchanges.read().get(n).cloned())
            {
                self.route_exchange(&ae, key, headers, queues, visited);
            }
        }
    }

    /// Publishes a message to an exchange: routes it and appends it to every target queue.
    pub fn publish(&self, exchange: &str, message: Arc<Message>) -> CoreResult<PublishOutcome> {
        let x = self.exchange(exchange)?;
        if x.options.internal {
            return Err(CoreError::AccessRefused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.name
            )));
        }
        let queues = self.route(&x, message.routing_key(), &LazyHeaders::of(&message));
        let mut out = PublishOutcome {
            routed: 0,
            refused: 0,
            ticket: None,
        };
        for q in &queues {
            match q.publish(message.clone()) {
                Enqueued::Accepted(t) => {
                    out.routed += 1;
                    out.ticket = out.ticket.max(t);
                }
                Enqueued::Refused => out.refused += 1,
            }
        }
        Ok(out)
    }

    /// Registers a direct reply-to pseudo-queue under `token`.
    pub fn register_reply_queue(&self, token: &str, q: Arc<Queue>) {
        self.reply_queues.write().insert(token.to_string(), q);
    }

    /// Removes a direct reply-to pseudo-queue.
    pub fn unregister_reply_queue(&self, token: &str) {
        if let Some(q) = self.reply_queues.write().remove(token) {
            q.mark_deleted(None);
        }
    }
}

impl VHost {
    /// Re-creates a durable exchange from the definitions (no save).
    pub fn restore_exchange(&self, d: &ExchangeDef) -> CoreResult<()> {
        let kind = ExchangeKind::parse(&d.kind).ok_or_else(|| {
            CoreError::CommandInvalid(format!("unknown exchange type '{}'", d.kind))
        })?;
        let options = ExchangeOptions {
            durable: true,
            auto_delete: d.auto_delete,
            internal: d.internal,
            arguments: table_from_json(&d.arguments),
        };
        self.exchanges
            .write()
            .entry(d.name.clone())
            .or_insert_with(|| Arc::new(Exchange::new(&d.name, kind, options)));
        Ok(())
    }

    /// Re-creates a durable queue from the definitions and recovers its messages from its
    /// log. Returns its directory and how many messages came back.
    pub fn restore_queue(&self, d: &QueueDef) -> CoreResult<(std::path::PathBuf, u64)> {
        let Some(p) = &self.persist else {
            return Err(CoreError::Internal("no data directory".into()));
        };
        let dir = p.queue_dir(&self.name, &d.name);
        let (store, n) = PagedStore::recover(p.clone(), dir.clone())
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let options = QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: d.auto_delete,
            arguments: table_from_json(&d.arguments),
        };
        let q = Queue::with_store(&d.name, &self.name, options, None, Box::new(store), n + 1);
        self.queues.write().insert(d.name.clone(), Arc::new(q));
        Ok((dir, n))
    }

    /// Re-creates a binding from the definitions (no save).
    pub fn restore_binding(&self, d: &BindingDef) -> CoreResult<()> {
        let source = self.exchange(&d.source)?;
        let dest = match d.destination_type.as_str() {
            "exchange" => Destination::Exchange(self.exchange(&d.destination)?),
            _ => Destination::Queue(
                self.queues
                    .read()
                    .get(&d.destination)
                    .cloned()
                    .ok_or_else(|| not_found_queue(&d.destination, &self.name))?,
            ),
        };
        source.bind(dest, &d.routing_key, table_from_json(&d.arguments));
        Ok(())
    }
}

/// A server-generated name such as `amq.gen-Xy3...`, 22 random URL-safe characters.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(prefix.len() + 22);
    s.push_str(prefix);
    for _ in 0..22 {
        s.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    s
}

fn validate_queue_args(queue: &str, vhost: &str, args: &FieldTable) -> CoreResult<()> {
    for (k, v) in args.iter() {
        // (minimum, maximum) as RabbitMQ checks them; x-expires must be positive.
        let (min, max) = match k.as_str() {
            "x-message-ttl" | "x-max-length" | "x-max-length-bytes" => (0, i64::MAX),
            "x-expires" => (1, i64::MAX),
            "x-max-priority" => (0, 255),
            _ => continue,
        };
        let reason = match v.as_i64() {
            None => Some(format!(
                "\"expected integer, got {}\"",
                v.rabbit_type_name()
            )),
            Some(n) if n < 0 => Some(format!("{{value_negative,{n}}}")),
            Some(n) if n < min => Some(format!("{{value_zero,{n}}}")),
            Some(n) if n > max => Some(format!("{{max_value_exceeded,{n}}}")),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            return Err(CoreError::InvalidArgument(format!(
                "invalid arg '{k}' for queue '{queue}' in vhost '{vhost}': {reason}"
            )));
        }
    }
    Ok(())
}

impl Queue {
    /// The RESOURCE_LOCKED error for a queue held by another connection.
    pub fn locked_error(q: &Queue) -> CoreError {
        CoreError::ResourceLocked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
             originally declared on another connection or the exclusive property value does \
             not match that of the original declaration.",
            q.name, q.vhost
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Properties;
    use bytes::Bytes;

    fn msg(key: &str) -> Arc<Message> {
        Arc::new(
            Message::from_properties("amq.fanout", key, &Properties::default(), Bytes::new())
                .unwrap(),
        )
    }

    #[test]
    fn a_queue_that_went_away_refuses_and_is_reported() {
        let v = VHost::new("/");
        let (a, _) = v
            .declare_queue("a", QueueOptions::default(), false, 1)
            .unwrap();
        let (b, _) = v
            .declare_queue("b", QueueOptions::default(), false, 1)
            .unwrap();
        v.bind_queue("a", "amq.fanout", "", FieldTable::new(), 1)
            .unwrap();
        v.bind_queue("b", "amq.fanout", "", FieldTable::new(), 1)
            .unwrap();
        assert_eq!(
            v.publish("amq.fanout", msg("k")).unwrap(),
            PublishOutcome {
                routed: 2,
                refused: 0,
                ticket: None
            }
        );
        // Deleted between routing and enqueue: the binding is still there, the queue is not.
        b.mark_deleted(None);
        assert_eq!(
            v.publish("amq.fanout", msg("k")).unwrap(),
            PublishOutcome {
                routed: 1,
                refused: 1,
                ticket: None
            }
        );
        assert_eq!(a.counts().messages, 2);
    }

    #[test]
    fn exchange_to_exchange_cycles_terminate_and_queues_get_one_copy() {
        let v = VHost::new("/");
        v.declare_exchange("x1", "fanout", ExchangeOptions::default(), false)
            .unwrap();
        v.declare_exchange("x2", "fanout", ExchangeOptions::default(), false)
            .unwrap();
        v.bind_exchange("x2", "x1", "", FieldTable::new()).unwrap();
        v.bind_exchange("x1", "x2", "", FieldTable::new()).unwrap();
        let (q, _) = v
            .declare_queue("q", QueueOptions::default(), false, 1)
            .unwrap();
        v.bind_queue("q", "x1", "", FieldTable::new(), 1).unwrap();
        v.bind_queue("q", "x2", "", FieldTable::new(), 1).unwrap();
        assert_eq!(v.publish("x1", msg("k")).unwrap().routed, 1);
        assert_eq!(q.counts().messages, 1);
    }

    #[test]
    fn auto_delete_exchange_goes_with_its_last_binding() {
        let v = VHost::new("/");
        let opts = ExchangeOptions {
            auto_delete: true,
            ..Default::default()
        };
        v.declare_exchange("ad", "direct", opts, false).unwrap();
        v.declare_queue("q", QueueOptions::default(), false, 1)
            .unwrap();
        v.bind_queue("q", "ad", "k1", FieldTable::new(), 1).unwrap();
        v.bind_queue("q", "ad", "k2", FieldTable::new(), 1).unwrap();
        v.unbind_queue("q", "ad", "k1", &FieldTable::new(), 1)
            .unwrap();
        assert!(v.exchange("ad").is_ok());
        v.unbind_queue("q", "ad", "k2", &FieldTable::new(), 1)
            .unwrap();
        assert!(v.exchange("ad").is_err());
    }
}
