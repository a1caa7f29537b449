//! A virtual host: its exchanges and queues, and the operations clients perform on them.

use crate::dead_letter::{dead_letter_copy, is_cycle, DeadLetter};
use crate::error::{CoreError, CoreResult};
use crate::exchange::{
    check_args_equivalent, DelayedMessages, Destination, Exchange, ExchangeKind, ExchangeOptions,
    DELAYED_TYPE, DELAY_HEADER,
};
use crate::message::{LazyHeaders, Message};
use crate::paged_store::PagedStore;
use crate::persist::Persistence;
use crate::policy::{self, Policy};
use crate::priority_store::PriorityStore;
use crate::queue::{Enqueued, Queue, QueueCounts, QueueOptions};
use crate::queue_config::QueueConfig;
use crate::store::{MemoryStore, MessageStore};
use crate::value::{table_from_json, table_to_json, FieldTable, FieldValue};
use crate::ConnectionId;
use ferrymq_store::definitions::{BindingDef, ExchangeDef, QueueDef};
use parking_lot::RwLock;
use rand::Rng;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

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
    policies: RwLock<Vec<Policy>>,
    /// Itself, handed to queues and delayed exchanges that call back into the vhost.
    me: Weak<VHost>,
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
    pub fn new(name: &str) -> Arc<Self> {
        VHost::with_persistence(name, None)
    }

    /// A vhost whose durable entities and persistent messages go to `persist`.
    pub fn with_persistence(name: &str, persist: Option<Arc<Persistence>>) -> Arc<Self> {
        Arc::new_cyclic(|me| VHost::build(name, persist, me.clone()))
    }

    fn build(name: &str, persist: Option<Arc<Persistence>>, me: Weak<VHost>) -> Self {
        let v = VHost {
            name: name.to_string(),
            exchanges: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            reply_queues: RwLock::new(HashMap::new()),
            persist,
            policies: RwLock::new(Vec::new()),
            me,
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
        let type_name = kind;
        let kind = routing_kind(kind, &options.arguments)?;
        let mut ex = self.exchanges.write();
        if let Some(existing) = ex.get(name) {
            return existing.check_equivalent(&self.name, type_name, &options);
        }
        if name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let x = self.new_exchange(name, type_name, kind, options, false)?;
        if let (true, Some(p)) = (x.options.durable, &self.persist) {
            p.exchange_declared(self.exchange_def(&x))?;
        }
        ex.insert(name.to_string(), x);
        Ok(())
    }

    /// Builds an exchange; a delayed-message exchange gets its message store (recovering
    /// what a previous run left when `recover` is set).
    fn new_exchange(
        &self,
        name: &str,
        type_name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
        recover: bool,
    ) -> CoreResult<Arc<Exchange>> {
        let x = if type_name == DELAYED_TYPE {
            let msgs = match &self.persist {
                None => DelayedMessages::in_memory(),
                Some(p) => DelayedMessages::on_disk(
                    p.clone(),
                    p.delayed_dir(&self.name, name),
                    options.durable,
                    recover,
                )
                .map_err(|e| CoreError::Internal(format!("delayed exchange '{name}': {e}")))?,
            };
            Exchange::delayed(name, kind, options, msgs, self.me.clone())
        } else {
            Arc::new(Exchange::new(name, kind, options))
        };
        let policies = self.policies.read();
        x.set_policy_alternate_exchange(exchange_policy_ae(&policies, name));
        Ok(x)
    }

    fn exchange_def(&self, x: &Exchange) -> ExchangeDef {
        ExchangeDef {
            name: x.name.clone(),
            vhost: self.name.clone(),
            kind: x.type_name().to_string(),
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
        x.destroy_delayed();
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
        let cfg = QueueConfig::from_args(&name, &self.name, &options.arguments)?;
        let mut qs = self.queues.write();
        if let Some(q) = qs.get(&name) {
            q.check_access(conn)?;
            if options.exclusive && q.owner.is_none() {
                return Err(Queue::locked_error(q));
            }
            self.check_queue_equivalent(q, &options)?;
            q.touch();
            let c = q.counts();
            return Ok((q.clone(), c));
        }
        let owner = options.exclusive.then_some(conn);
        let q = Arc::new(self.new_queue(&name, options, owner, cfg.max_priority)?);
        qs.insert(name, q.clone());
        drop(qs);
        self.attach_queue(&q, cfg);
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
        max_priority: Option<u8>,
    ) -> CoreResult<Queue> {
        let Some(p) = &self.persist else {
            let store: Box<dyn MessageStore> = match max_priority {
                Some(max) => Box::new(PriorityStore::new(
                    (0..=max)
                        .map(|_| Box::new(MemoryStore::default()) as Box<dyn MessageStore>)
                        .collect(),
                )),
                None => Box::new(MemoryStore::default()),
            };
            return Ok(Queue::with_store(
                name, &self.name, options, owner, store, 1,
            ));
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
        let store: Box<dyn MessageStore> = match max_priority {
            Some(max) => Box::new(PriorityStore::new(
                (0..=max)
                    .map(|l| {
                        Box::new(PagedStore::new(p.clone(), durable, level_dir(&dir, l)))
                            as Box<dyn MessageStore>
                    })
                    .collect(),
            )),
            None => Box::new(PagedStore::new(p.clone(), durable, dir)),
        };
        Ok(Queue::with_store(
            name, &self.name, options, owner, store, 1,
        ))
    }

    /// Hands a new queue its vhost and its settings (declaration plus policy).
    fn attach_queue(&self, q: &Arc<Queue>, cfg: QueueConfig) {
        let cfg = {
            let policies = self.policies.read();
            cfg.with_policy(policy::effective(&policies, &q.name, true).map(|p| &p.definition))
        };
        q.attach(self.me.clone(), cfg);
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
                .and_then(|n| self.exchanges.read().get(&n).cloned())
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
        let headers = LazyHeaders::of(&message);
        if x.is_delayed() {
            let delay = headers.get().get(DELAY_HEADER).and_then(FieldValue::as_i64);
            if let Some(d) = delay.filter(|d| *d > 0) {
                // Taken by the exchange: counts as routed (no basic.return), as the plugin.
                let ticket = x.hold(message, d as u64)?;
                return Ok(PublishOutcome {
                    routed: 1,
                    refused: 0,
                    ticket,
                });
            }
        }
        let queues = self.route(&x, message.routing_key(), &headers);
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

    /// Routes a message whose delay on `x` has passed, as `x`'s `x-delayed-type` routes.
    pub fn route_delayed(&self, x: &Arc<Exchange>, message: Arc<Message>) {
        let queues = self.route(x, message.routing_key(), &LazyHeaders::of(&message));
        for q in queues {
            q.publish(message.clone());
        }
    }

    /// Republishes messages that left queue `queue` to its dead-letter exchange `dlx`, with
    /// their `x-death` history. A missing exchange drops them, as in RabbitMQ; a queue that
    /// would close a cycle without a rejection in it is skipped.
    pub fn dead_letter(
        &self,
        queue: &str,
        dlx: &str,
        routing_key: Option<&str>,
        letters: Vec<DeadLetter>,
    ) {
        let Ok(x) = self.exchange(dlx) else {
            tracing::debug!(
                queue,
                dlx,
                "dead-letter exchange missing; {} messages dropped",
                letters.len()
            );
            return;
        };
        for l in letters {
            let Some(copy) = dead_letter_copy(&l.message, queue, l.reason, dlx, routing_key) else {
                continue;
            };
            let copy = Arc::new(copy);
            let targets = self.route(&x, copy.routing_key(), &LazyHeaders::of(&copy));
            for q in targets {
                if !is_cycle(&copy, &q.name) {
                    q.publish(copy.clone());
                }
            }
        }
    }

    /// Adds or replaces a policy and applies it to the matching queues and exchanges.
    pub fn set_policy(&self, p: Policy) -> CoreResult<()> {
        if let Some(persist) = &self.persist {
            let def = p.to_def(&self.name);
            persist.update(|d| {
                d.policies
                    .retain(|x| !(x.vhost == def.vhost && x.name == def.name));
                d.policies.push(def);
            })?;
        }
        {
            let mut ps = self.policies.write();
            ps.retain(|x| x.name != p.name);
            ps.push(p);
        }
        self.apply_policies();
        Ok(())
    }

    /// Removes a policy; the entities it applied to fall back to their own arguments (or the
    /// next matching policy). Clearing a missing policy is an error naming it.
    pub fn clear_policy(&self, name: &str) -> CoreResult<()> {
        if !self.policies.read().iter().any(|p| p.name == name) {
            return Err(CoreError::NotFound(format!(
                "no policy '{name}' in vhost '{}'",
                self.name
            )));
        }
        if let Some(persist) = &self.persist {
            let vhost = self.name.clone();
            persist.update(|d| d.policies.retain(|x| !(x.vhost == vhost && x.name == name)))?;
        }
        self.policies.write().retain(|p| p.name != name);
        self.apply_policies();
        Ok(())
    }

    /// The policies of this vhost.
    pub fn policies(&self) -> Vec<Policy> {
        self.policies.read().clone()
    }

    /// Restores a policy from the definitions (no save, applied to what exists).
    pub fn restore_policy(&self, p: Policy) {
        self.policies.write().push(p);
        self.apply_policies();
    }

    /// Recomputes every queue's and exchange's settings from its arguments and the policies.
    fn apply_policies(&self) {
        let policies = self.policies.read().clone();
        for q in self.queues() {
            match QueueConfig::from_args(&q.name, &self.name, &q.options.arguments) {
                Ok(cfg) => q.set_config(cfg.with_policy(
                    policy::effective(&policies, &q.name, true).map(|p| &p.definition),
                )),
                Err(e) => tracing::warn!("queue '{}': {e}", q.name),
            }
        }
        for x in self.exchanges() {
            x.set_policy_alternate_exchange(exchange_policy_ae(&policies, &x.name));
        }
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
        let kind = routing_kind(&d.kind, &table_from_json(&d.arguments))?;
        let options = ExchangeOptions {
            durable: true,
            auto_delete: d.auto_delete,
            internal: d.internal,
            arguments: table_from_json(&d.arguments),
        };
        if self.exchanges.read().contains_key(&d.name) {
            return Ok(());
        }
        let x = self.new_exchange(&d.name, &d.kind, kind, options, true)?;
        self.exchanges.write().insert(d.name.clone(), x);
        Ok(())
    }

    /// Re-creates a durable queue from the definitions and recovers its messages from its
    /// log. Returns its directory and how many messages came back.
    pub fn restore_queue(&self, d: &QueueDef) -> CoreResult<(std::path::PathBuf, u64)> {
        let Some(p) = &self.persist else {
            return Err(CoreError::Internal("no data directory".into()));
        };
        let dir = p.queue_dir(&self.name, &d.name);
        let options = QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: d.auto_delete,
            arguments: table_from_json(&d.arguments),
        };
        let cfg = QueueConfig::from_args(&d.name, &self.name, &options.arguments)?;
        let recover = |dir: PathBuf, first: u64| {
            PagedStore::recover(p.clone(), dir, first)
                .map_err(|e| CoreError::Internal(e.to_string()))
        };
        let (store, n): (Box<dyn MessageStore>, u64) = match cfg.max_priority {
            Some(max) => {
                let mut levels: Vec<Box<dyn MessageStore>> = Vec::new();
                let mut total = 0;
                for l in 0..=max {
                    let (s, n) = recover(level_dir(&dir, l), total + 1)?;
                    total += n;
                    levels.push(Box::new(s));
                }
                (Box::new(PriorityStore::new(levels)), total)
            }
            None => {
                let (s, n) = recover(dir.clone(), 1)?;
                (Box::new(s), n)
            }
        };
        let q = Arc::new(Queue::with_store(
            &d.name,
            &self.name,
            options,
            None,
            store,
            n + 1,
        ));
        self.queues.write().insert(d.name.clone(), q.clone());
        self.attach_queue(&q, cfg);
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

/// The routing algorithm of a declared exchange type; a delayed-message exchange routes as
/// its `x-delayed-type` argument says.
fn routing_kind(type_name: &str, args: &FieldTable) -> CoreResult<ExchangeKind> {
    if type_name == DELAYED_TYPE {
        return args
            .get("x-delayed-type")
            .and_then(FieldValue::as_str)
            .and_then(ExchangeKind::parse)
            .ok_or_else(|| {
                CoreError::InvalidArgument(
                    "Invalid argument, 'x-delayed-type' must be an existing exchange type".into(),
                )
            });
    }
    ExchangeKind::parse(type_name)
        .ok_or_else(|| CoreError::CommandInvalid(format!("unknown exchange type '{type_name}'")))
}

/// The alternate exchange a policy sets on exchange `name`, if any.
fn exchange_policy_ae(policies: &[Policy], name: &str) -> Option<String> {
    policy::effective(policies, name, false)
        .and_then(|p| p.definition.get("alternate-exchange"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// The log directory of one priority level of a priority queue.
fn level_dir(dir: &std::path::Path, level: u8) -> PathBuf {
    dir.join(format!("p{level}"))
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
