//! Declaring, deleting, binding and unbinding exchanges and queues. Every change that must
//! survive a restart is saved first and applied after ([`VHost::persist_then`]), under the
//! vhost's topology lock.

use super::VHost;
use crate::error::{CoreError, CoreResult};
use crate::exchange::{
    check_args_equivalent, DelayedMessages, Destination, Exchange, ExchangeKind, ExchangeOptions,
    DELAYED_TYPE,
};
use crate::queue::{Queue, QueueCounts, QueueOptions};
use crate::queue_config::QueueConfig;
use crate::queue_factory;
use crate::value::{table_to_json, FieldTable, FieldValue};
use crate::ConnectionId;
use ferrymq_store::definitions::{BindingDef, ExchangeDef};
use ferrymq_store::Pending;
use std::sync::Arc;

/// Arguments whose values must match when a queue is redeclared.
const QUEUE_EQUIVALENCE_ARGS: &[&str] = &[
    // First: left out when both declarations are of classic queues.
    "x-queue-type",
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-delivery-limit",
];

/// RabbitMQ's refusal of any operation on the default exchange.
pub(crate) fn default_exchange_refused() -> CoreError {
    CoreError::AccessRefused("operation not permitted on the default exchange".into())
}

/// The routing algorithm of a declared exchange type; a delayed-message exchange routes as
/// its `x-delayed-type` argument says.
pub(crate) fn routing_kind(type_name: &str, args: &FieldTable) -> CoreResult<ExchangeKind> {
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

/// A headers exchange's binding must say how to match (`x-match`), with RabbitMQ's texts.
fn check_binding_args(x: &Exchange, args: &FieldTable) -> CoreResult<()> {
    if x.kind != ExchangeKind::Headers {
        return Ok(());
    }
    match args.get("x-match") {
        None => Ok(()),
        Some(FieldValue::LongStr(_)) => match args.get("x-match").and_then(FieldValue::as_str) {
            Some("all" | "any" | "all-with-x" | "any-with-x") => Ok(()),
            other => Err(CoreError::PreconditionFailed(format!(
                "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
                other.unwrap_or_default()
            ))),
        },
        Some(v) => Err(CoreError::PreconditionFailed(format!(
            "Invalid x-match field type {} (value {v}); expected longstr",
            v.rabbit_type_name()
        ))),
    }
}

impl VHost {
    pub(super) fn check_not_deleted(&self) -> CoreResult<()> {
        if self.is_deleted() {
            return Err(CoreError::NotFound(format!(
                "vhost '{}' is being deleted",
                self.name
            )));
        }
        Ok(())
    }

    /// exchange.declare. Returns the definitions write to wait for before the declare-ok.
    pub(crate) fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        options: ExchangeOptions,
        passive: bool,
    ) -> CoreResult<Pending> {
        if passive {
            return self.exchange(name).map(|_| Pending::default());
        }
        let type_name = kind;
        let _t = self.topology.lock();
        self.check_not_deleted()?;
        let Some(kind) = self.exchange_to_create(name, type_name, &options)? else {
            return Ok(Pending::default());
        };
        let incarnation = (type_name == DELAYED_TYPE && self.persist.is_some())
            .then(crate::persist::Persistence::new_incarnation);
        let x = self.new_exchange(name, type_name, kind, options, incarnation, false)?;
        let (_, saved) = self.persist_then(
            |p| match x.options.durable {
                true => p.exchange_declared(self.exchange_def(&x)),
                false => Ok(Pending::default()),
            },
            || self.exchanges.write().insert(name.to_string(), x.clone()),
        )?;
        self.topology_changed();
        Ok(saved)
    }

    /// Checks a declaration of exchange `name` without changing anything: `None` when an
    /// equivalent one exists, else the routing kind of the exchange to create. Definitions
    /// import runs it over a whole document before applying any of it.
    pub(crate) fn exchange_to_create(
        &self,
        name: &str,
        type_name: &str,
        options: &ExchangeOptions,
    ) -> CoreResult<Option<ExchangeKind>> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        let kind = routing_kind(type_name, &options.arguments)?;
        if let Some(v) = options.arguments.get("alternate-exchange") {
            if v.as_str().is_none() {
                return Err(CoreError::PreconditionFailed(format!(
                    "invalid type '{}' for arg 'alternate-exchange' in exchange '{name}' in vhost '{}'",
                    v.rabbit_type_name(),
                    self.name
                )));
            }
        }
        if let Some(existing) = self.exchanges.read().get(name) {
            return existing
                .check_equivalent(&self.name, type_name, options)
                .map(|_| None);
        }
        if name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        Ok(Some(kind))
    }

    /// Builds an exchange; a delayed-message exchange gets its message store in the
    /// directory of its `incarnation` (recovering what a previous run left when `recover` is
    /// set).
    pub(super) fn new_exchange(
        &self,
        name: &str,
        type_name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
        incarnation: Option<String>,
        recover: bool,
    ) -> CoreResult<Arc<Exchange>> {
        let x = if type_name == DELAYED_TYPE {
            let msgs = match &self.persist {
                None => DelayedMessages::in_memory(),
                Some(p) => DelayedMessages::on_disk(
                    p.clone(),
                    p.delayed_dir(&self.name, name, incarnation.as_deref()),
                    options.durable,
                    recover,
                )
                .map_err(|e| CoreError::Internal(format!("delayed exchange '{name}': {e}")))?,
            };
            Exchange::delayed(name, kind, options, msgs, self.me.clone(), incarnation)
        } else {
            Arc::new(Exchange::new(name, kind, options))
        };
        x.set_policy_alternate_exchange(self.policy_alternate_exchange(name));
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
            incarnation: x.incarnation().map(str::to_string),
        }
    }

    /// exchange.delete. Deleting a missing exchange succeeds, as in RabbitMQ. Returns the
    /// definitions writes to wait for.
    pub(crate) fn delete_exchange(&self, name: &str, if_unused: bool) -> CoreResult<Pending> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let _t = self.topology.lock();
        let Some(x) = self.exchanges.read().get(name).cloned() else {
            return Ok(Pending::default());
        };
        // As RabbitMQ: in use means bindings from it; being a destination does not count.
        if if_unused && x.has_bindings() {
            return Err(CoreError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        let (_, mut saved) = self.persist_then(
            |p| match x.options.durable {
                true => p.exchange_deleted(&self.name, name, x.incarnation()),
                false => Ok(Pending::default()),
            },
            || self.exchanges.write().remove(name),
        )?;
        x.destroy_delayed();
        // Remove bindings where the deleted exchange is the destination.
        let dest = Destination::Exchange(x.clone());
        for s in self.exchanges() {
            if s.unbind_destination(&dest) > 0 {
                saved.merge(self.maybe_auto_delete_exchange(&s));
            }
        }
        // Break reference cycles through its own outgoing exchange bindings.
        for b in x.bindings() {
            x.unbind_destination(&b.destination);
            if let Destination::Exchange(d) = &b.destination {
                saved.merge(self.maybe_auto_delete_exchange(d));
            }
        }
        Ok(saved)
    }

    /// Deletes `x` if it is auto-delete and has no bindings left; returns the definitions
    /// write of that, if any.
    fn maybe_auto_delete_exchange(&self, x: &Arc<Exchange>) -> Pending {
        if x.options.auto_delete && !x.has_bindings() {
            match self.delete_exchange(&x.name, false) {
                Ok(saved) => return saved,
                Err(e) => {
                    tracing::error!(exchange = %x.name, vhost = %self.name, "auto-delete failed: {e}")
                }
            }
        }
        Pending::default()
    }

    /// queue.declare. Returns the queue (with its possibly server-generated name), its
    /// counts and the definitions write to wait for before the declare-ok. A new queue is
    /// refused once the vhost holds `max_queues`.
    pub(crate) fn declare_queue(
        &self,
        name: &str,
        options: QueueOptions,
        passive: bool,
        conn: ConnectionId,
        max_queues: Option<u64>,
    ) -> CoreResult<(Arc<Queue>, QueueCounts, Pending)> {
        if passive {
            let q = self.queue(name, conn)?;
            // A passive declare counts as use (RabbitMQ restarts the `x-expires` timer).
            q.touch();
            let c = q.counts();
            return Ok((q, c, Pending::default()));
        }
        // Reserved `amq.` names are refused to clients by the session; server-generated
        // names come here already chosen.
        let server_named = name.is_empty();
        let name = if server_named {
            generate_unique_name(self)
        } else {
            name.to_string()
        };
        let _t = self.topology.lock();
        self.check_not_deleted()?;
        // An existing queue is compared first, as RabbitMQ does: an argument of another
        // type is "inequivalent", not "invalid".
        if let Some(q) = self.existing_queue_for_declare(&name, &options, conn)? {
            q.touch();
            let c = q.counts();
            self.declared
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok((q, c, Pending::default()));
        }
        let cfg = QueueConfig::from_args(&name, &self.name, &options.arguments)?;
        cfg.check_properties(
            &name,
            &self.name,
            options.durable,
            options.exclusive,
            options.auto_delete,
            server_named,
        )?;
        if let Some(max) = max_queues {
            if self.queue_count() as u64 >= max {
                return Err(crate::session::queue_limit_reached(&name, &self.name, max));
            }
        }
        let owner = options.exclusive.then_some(conn);
        let (q, saved) = queue_factory::create(
            self.persist.as_ref(),
            &self.name,
            &name,
            options,
            owner,
            &cfg,
        )?;
        let q = Arc::new(q);
        self.queues.write().insert(name, q.clone());
        self.declared
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.attach_queue(&q, cfg);
        self.topology_changed();
        let counts = QueueCounts {
            messages: 0,
            unacked: 0,
            consumers: 0,
        };
        Ok((q, counts, saved))
    }

    /// The queue a declaration of `name` finds, after checking the declaration against it
    /// (ownership, exclusivity, equivalence); `None` when there is none yet.
    pub(crate) fn existing_queue_for_declare(
        &self,
        name: &str,
        options: &QueueOptions,
        conn: ConnectionId,
    ) -> CoreResult<Option<Arc<Queue>>> {
        let Some(q) = self.queues.read().get(name).cloned() else {
            return Ok(None);
        };
        q.check_access(conn)?;
        // Exclusivity must match either way (RabbitMQ refuses a non-exclusive redeclare of
        // an exclusive queue on its own connection too).
        if options.exclusive != q.owner.is_some() {
            return Err(Queue::locked_error(&q));
        }
        self.check_queue_equivalent(&q, options)?;
        Ok(Some(q))
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
        // No type and `classic` are the same type (RabbitMQ compares the types it resolves).
        let classic = |t: &crate::value::FieldTable| {
            t.get("x-queue-type")
                .is_none_or(|v| v.as_str() == Some("classic"))
        };
        let keys: &[&str] = if classic(&q.options.arguments) && classic(&o.arguments) {
            &QUEUE_EQUIVALENCE_ARGS[1..]
        } else {
            QUEUE_EQUIVALENCE_ARGS
        };
        check_args_equivalent(&q.options.arguments, &o.arguments, keys).map_err(
            |(k, got, cur)| {
                CoreError::PreconditionFailed(format!(
                    "inequivalent arg '{k}' for queue '{}' in vhost '{}': received {got} but current is {cur}",
                    q.name, self.name
                ))
            },
        )
    }

    /// queue.delete. Returns the number of ready messages it held and the definitions write
    /// to wait for. Deleting a missing queue succeeds with 0, as in RabbitMQ.
    pub(crate) fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> CoreResult<(usize, Pending)> {
        let q = match self.queue(name, conn) {
            Ok(q) => q,
            Err(CoreError::NotFound(_)) => return Ok((0, Pending::default())),
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
        self.remove_queue(&q, None)
    }

    /// Removes a queue: unbinds it everywhere and cancels its consumers except `except`.
    /// Returns the ready count it had and the definitions writes to wait for.
    pub(crate) fn remove_queue(
        &self,
        q: &Arc<Queue>,
        except_consumer: Option<u64>,
    ) -> CoreResult<(usize, Pending)> {
        let _t = self.topology.lock();
        match self.queues.read().get(&q.name) {
            Some(cur) if Arc::ptr_eq(cur, q) => {}
            _ => return Ok((0, Pending::default())),
        }
        let (_, mut saved) = self.persist_then(
            |p| match q.is_persisted() {
                true => p.queue_deleted(&self.name, &q.name, q.incarnation()),
                false => Ok(Pending::default()),
            },
            || {
                // Out of the map and into the history in one step (see VHost::walk_queues).
                let mut h = self.history.lock();
                let gone = self.queues.write().remove(&q.name);
                super::retire(&mut h, q);
                gone
            },
        )?;
        let dest = Destination::Queue(q.clone());
        for x in self.exchanges() {
            if x.unbind_destination(&dest) > 0 {
                saved.merge(self.maybe_auto_delete_exchange(&x));
            }
        }
        Ok((q.mark_deleted(except_consumer), saved))
    }

    /// Detaches a consumer and deletes the queue if it is auto-delete and now unused.
    pub(crate) fn remove_consumer(&self, q: &Arc<Queue>, consumer_id: u64) {
        if q.remove_consumer(consumer_id) {
            // Nobody waits for the auto-delete to be durable: a queue found again after a
            // crash is auto-delete still, and goes with its next consumer.
            if let Err(e) = self.remove_queue(q, Some(consumer_id)) {
                tracing::error!(queue = %q.name, vhost = %self.name, "auto-delete failed: {e}");
            }
        }
    }

    /// queue.purge.
    pub(crate) fn purge_queue(&self, name: &str, conn: ConnectionId) -> CoreResult<usize> {
        Ok(self.queue(name, conn)?.purge())
    }

    /// queue.bind.
    pub(crate) fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
        conn: ConnectionId,
    ) -> CoreResult<Pending> {
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        let _t = self.topology.lock();
        self.check_not_deleted()?;
        // The exchange is looked up first, so it is the one reported missing, as in RabbitMQ.
        let x = self.exchange(exchange)?;
        let q = self.queue(queue, conn)?;
        check_binding_args(&x, &args)?;
        let dest = Destination::Queue(q);
        let def = self.binding_def(exchange, &dest, key, &args);
        let (_, saved) = self.persist_then(
            |p| def.map_or(Ok(Pending::default()), |d| p.binding_added(d)),
            || x.bind(dest, key, args),
        )?;
        self.topology_changed();
        Ok(saved)
    }

    /// queue.unbind. Unbinding a binding that does not exist succeeds.
    pub(crate) fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &FieldTable,
        conn: ConnectionId,
    ) -> CoreResult<Pending> {
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        let _t = self.topology.lock();
        self.check_not_deleted()?;
        // Teardown is idempotent, as in RabbitMQ: a missing queue, exchange or binding is
        // unbound already. Another connection's exclusive queue is refused only when there
        // is a binding to remove.
        let (Ok(q), Ok(x)) = (self.find_queue(queue), self.exchange(exchange)) else {
            return Ok(Pending::default());
        };
        let dest = Destination::Queue(q.clone());
        if !x.has_binding(&dest, key, args) {
            return Ok(Pending::default());
        }
        q.check_access(conn)?;
        let def = self.binding_def(exchange, &dest, key, args);
        let (removed, mut saved) = self.persist_then(
            |p| def.map_or(Ok(Pending::default()), |d| p.binding_removed(&d)),
            || x.unbind(&dest, key, args),
        )?;
        if removed {
            saved.merge(self.maybe_auto_delete_exchange(&x));
        }
        Ok(saved)
    }

    /// exchange.bind (destination ← source).
    pub(crate) fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: FieldTable,
    ) -> CoreResult<Pending> {
        if destination.is_empty() || source.is_empty() {
            return Err(default_exchange_refused());
        }
        let _t = self.topology.lock();
        self.check_not_deleted()?;
        let s = self.exchange(source)?;
        let d = self.exchange(destination)?;
        check_binding_args(&s, &args)?;
        let dest = Destination::Exchange(d);
        let def = self.binding_def(source, &dest, key, &args);
        let (_, saved) = self.persist_then(
            |p| def.map_or(Ok(Pending::default()), |d| p.binding_added(d)),
            || s.bind(dest, key, args),
        )?;
        self.topology_changed();
        Ok(saved)
    }

    /// exchange.unbind.
    pub(crate) fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: &FieldTable,
    ) -> CoreResult<Pending> {
        if destination.is_empty() || source.is_empty() {
            return Err(default_exchange_refused());
        }
        let _t = self.topology.lock();
        self.check_not_deleted()?;
        // Idempotent, as in RabbitMQ: missing exchanges are unbound already.
        let (Ok(d), Ok(s)) = (self.exchange(destination), self.exchange(source)) else {
            return Ok(Pending::default());
        };
        let dest = Destination::Exchange(d);
        let def = self.binding_def(source, &dest, key, args);
        let (removed, mut saved) = self.persist_then(
            |p| def.map_or(Ok(Pending::default()), |d| p.binding_removed(&d)),
            || s.unbind(&dest, key, args),
        )?;
        if removed {
            saved.merge(self.maybe_auto_delete_exchange(&s));
        }
        Ok(saved)
    }

    /// The definitions entry of a binding, when both ends are durable (and the broker has a
    /// data directory).
    fn binding_def(
        &self,
        source: &str,
        dest: &Destination,
        key: &str,
        args: &FieldTable,
    ) -> Option<BindingDef> {
        let (dest_type, dest_name, durable) = match dest {
            Destination::Queue(q) => ("queue", q.name.clone(), q.is_persisted()),
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
}

/// A server-generated queue name not in use in `v`.
fn generate_unique_name(v: &VHost) -> String {
    loop {
        let n = super::generate_name("amq.gen-");
        if v.find_queue(&n).is_err() {
            return n;
        }
    }
}
