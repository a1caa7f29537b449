//! A session: one authenticated client connection working in one vhost, whatever protocol
//! it speaks. Every operation a client can perform goes through it, and it checks
//! RabbitMQ's access-control matrix first, in this one place:
//!
//! | operation | permission |
//! | --- | --- |
//! | declare / delete exchange | configure on the exchange (+ write on its alternate exchange and read on it, when declared with one) |
//! | declare / delete queue | configure on the queue (+ write on its dead-letter exchange and read on it, when declared with one) |
//! | bind / unbind | write on the destination, read on the source (+ topic read on the binding key) |
//! | publish | write on the exchange (`amq.default` for the default one) (+ topic write on the routing key) |
//! | consume, get, purge | read on the queue |
//!
//! Passive declares check nothing but existence, as in RabbitMQ. Permissions are compiled
//! once per session and recompiled only when an operator changes users or permissions.

use crate::access::{self, CompiledPermission, CompiledTopicPermission, Perm, Resource};
use crate::broker::Broker;
use crate::connections::ConnectionInfo;
use crate::error::{CoreError, CoreResult};
use crate::exchange::{Exchange, ExchangeKind, ExchangeOptions};
use crate::message::{Message, QueuedMessage};
use crate::queue::{ConsumerEntry, Queue, QueueCounts, QueueOptions};
use crate::stats::ChannelInfo;
use crate::value::{FieldTable, FieldValue};
use crate::vhost::{generate_name, PublishOutcome, Routed, VHost, REPLY_TO_PREFIX};
use crate::ConnectionId;
use ferrymq_store::Pending;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How many exchange names a session remembers as writable, so publishing to the same few
/// exchanges does not run a regex per message.
const WRITE_MEMO: usize = 16;

/// The name the default exchange has in permission checks.
const DEFAULT_EXCHANGE: &str = "amq.default";

/// A user's permissions in the session's vhost, compiled, with the access generation they
/// were compiled at.
struct AccessCache {
    generation: u64,
    perm: Option<CompiledPermission>,
    topics: Vec<CompiledTopicPermission>,
    write_ok: Vec<String>,
}

/// One client connection's view of the broker: who it is, where it works, and the verbs it
/// may use. Dropping it closes it (exclusive queues go, the connection stops counting
/// against limits).
pub struct Session {
    broker: Arc<Broker>,
    vhost: Arc<VHost>,
    info: Arc<ConnectionInfo>,
    tags: Vec<String>,
    cache: Mutex<AccessCache>,
    exclusive: Mutex<Vec<Arc<Queue>>>,
}

/// An open channel counted against the user's `max-channels` and listed for the
/// management API; dropping it un-counts and unlists it.
pub struct ChannelPermit {
    broker: Arc<Broker>,
    info: Arc<ConnectionInfo>,
    /// What the management API shows of the channel; the protocol keeps it current.
    pub channel: Arc<ChannelInfo>,
}

impl Drop for ChannelPermit {
    fn drop(&mut self) {
        self.info.remove_channel(&self.channel);
        self.broker.connections.lock().close_channel(&self.info);
    }
}

impl Session {
    pub(crate) fn new(
        broker: Arc<Broker>,
        vhost: Arc<VHost>,
        info: Arc<ConnectionInfo>,
        tags: Vec<String>,
    ) -> Session {
        Session {
            broker,
            vhost,
            info,
            tags,
            cache: Mutex::new(AccessCache {
                generation: 0,
                perm: None,
                topics: Vec::new(),
                write_ok: Vec::new(),
            }),
            exclusive: Mutex::new(Vec::new()),
        }
    }

    /// The connection id (owner of exclusive queues and consumers).
    pub fn id(&self) -> ConnectionId {
        self.info.id
    }

    /// The authenticated user.
    pub fn user(&self) -> &str {
        &self.info.user
    }

    /// The user's tags at login.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The vhost the session works in.
    pub fn vhost(&self) -> &Arc<VHost> {
        &self.vhost
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The connection as the broker lists it.
    pub fn info(&self) -> &Arc<ConnectionInfo> {
        &self.info
    }

    /// Close requests from the broker (user or vhost deleted, operator): the protocol
    /// closes the connection with the reason given.
    pub fn closed(&self) -> watch::Receiver<Option<String>> {
        self.info.subscribe()
    }

    /// Counts a new channel `number` against the user's `max-channels` and lists it.
    pub fn open_channel(&self, number: u16) -> CoreResult<ChannelPermit> {
        let limits = self.broker.identity.read().user_limits(self.user());
        self.broker
            .connections
            .lock()
            .open_channel(&self.info, limits)?;
        let channel = Arc::new(ChannelInfo::new(number));
        self.info.add_channel(channel.clone());
        Ok(ChannelPermit {
            broker: self.broker.clone(),
            info: self.info.clone(),
            channel,
        })
    }

    /// How long a consumer of `q` may keep a delivery unacknowledged: the queue's
    /// `x-consumer-timeout` (or policy), else the broker's `consumer_timeout`.
    pub fn consumer_timeout(&self, q: &Queue) -> Option<Duration> {
        q.consumer_timeout()
            .map(Duration::from_millis)
            .or(self.broker.config.consumer_timeout)
    }

    /// The compiled permissions, recompiled if an operator changed them since.
    fn access(&self) -> parking_lot::MutexGuard<'_, AccessCache> {
        let generation = self.broker.access_generation();
        let mut c = self.cache.lock();
        if c.generation != generation {
            // Copied out first: compiling under the identity lock would stall logins and
            // admin changes behind every session recompiling at once.
            let key = (self.info.user.clone(), self.vhost.name.clone());
            let (perm, topics) = {
                let id = self.broker.identity.read();
                let topics = id.topic_permissions.get(&key).cloned().unwrap_or_default();
                (id.permissions.get(&key).cloned(), topics)
            };
            c.perm = perm.as_ref().map(CompiledPermission::new);
            c.topics = topics
                .iter()
                .map(|t| CompiledTopicPermission::new(t, &self.info.user, &self.vhost.name))
                .collect();
            c.write_ok.clear();
            c.generation = generation;
        }
        c
    }

    /// Checks `perm` on a resource, with RabbitMQ's refusal text.
    pub fn check(&self, perm: Perm, kind: Resource, name: &str) -> CoreResult<()> {
        let shown = match (kind, name) {
            (Resource::Exchange, "") => DEFAULT_EXCHANGE,
            _ => name,
        };
        let mut c = self.access();
        if perm == Perm::Write
            && kind == Resource::Exchange
            && c.write_ok.iter().any(|n| n == shown)
        {
            return Ok(());
        }
        if !c.perm.as_ref().is_some_and(|p| p.allows(perm, shown)) {
            return Err(access::refused(kind, shown, &self.vhost.name, self.user()));
        }
        if perm == Perm::Write && kind == Resource::Exchange {
            if c.write_ok.len() >= WRITE_MEMO {
                c.write_ok.clear();
            }
            c.write_ok.push(shown.to_string());
        }
        Ok(())
    }

    /// Checks a topic permission on `routing_key` for a topic exchange. Exchanges without
    /// topic permissions for the user are open, as in RabbitMQ.
    fn check_topic(&self, perm: Perm, exchange: &str, routing_key: &str) -> CoreResult<()> {
        let c = self.access();
        match c.topics.iter().find(|t| t.exchange == exchange) {
            Some(t) if !t.allows(perm, routing_key) => Err(access::topic_refused(
                routing_key,
                exchange,
                &self.vhost.name,
                self.user(),
            )),
            _ => Ok(()),
        }
    }

    fn has_topic_permissions(&self) -> bool {
        !self.access().topics.is_empty()
    }

    /// exchange.declare. Passive declares only check existence.
    ///
    /// Topology changes return the definitions write ([`Pending`]) that group commit must
    /// make durable before the client is told the change is done (RabbitMQ answers a durable
    /// declaration only once it is on disk); [`Broker::wait_saved`] waits for it in a
    /// blocking caller.
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        options: ExchangeOptions,
        passive: bool,
    ) -> CoreResult<Pending> {
        // The type is checked first (a connection error), then the default exchange (also
        // for passive declares), then permissions, as in RabbitMQ.
        if !passive && ExchangeKind::parse(kind).is_none() && kind != crate::exchange::DELAYED_TYPE
        {
            return Err(CoreError::CommandInvalid(format!(
                "unknown exchange type '{kind}'"
            )));
        }
        if name.is_empty() {
            return Err(crate::vhost::default_exchange_refused());
        }
        if !passive {
            self.check(Perm::Configure, Resource::Exchange, name)?;
            if let Some(ae) = options
                .arguments
                .get("alternate-exchange")
                .and_then(FieldValue::as_str)
            {
                if self.vhost.exchange(name).is_err() {
                    self.check(Perm::Read, Resource::Exchange, name)?;
                    self.check(Perm::Write, Resource::Exchange, ae)?;
                }
            }
        }
        self.vhost.declare_exchange(name, kind, options, passive)
    }

    /// exchange.delete.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> CoreResult<Pending> {
        if !name.is_empty() && !name.starts_with("amq.") {
            self.check(Perm::Configure, Resource::Exchange, name)?;
        }
        self.vhost.delete_exchange(name, if_unused)
    }

    /// queue.declare: returns the queue (its name may be server-generated), its counts and
    /// the definitions write to wait for. A new queue counts against the vhost's
    /// `max-queues`.
    pub fn declare_queue(
        &self,
        name: &str,
        options: QueueOptions,
        passive: bool,
    ) -> CoreResult<(Arc<Queue>, QueueCounts, Pending)> {
        if passive {
            return self
                .vhost
                .declare_queue(name, options, true, self.id(), None);
        }
        let name = if name.is_empty() {
            crate::queue_config::check_server_named(&options.arguments)?;
            generate_name("amq.gen-")
        } else {
            if name.starts_with("amq.") {
                return Err(CoreError::AccessRefused(format!(
                    "queue name '{name}' contains reserved prefix 'amq.*'"
                )));
            }
            name.to_string()
        };
        self.check(Perm::Configure, Resource::Queue, &name)?;
        let max_queues = self.broker.vhost_limits(&self.vhost.name).max_queues;
        if self.vhost.find_queue(&name).is_err() {
            // The limit comes before the dead-letter checks, as in RabbitMQ.
            if let Some(max) = max_queues {
                if self.vhost.queue_count() as u64 >= max {
                    return Err(queue_limit_reached(&name, &self.vhost.name, max));
                }
            }
            if let Some(dlx) = options
                .arguments
                .get("x-dead-letter-exchange")
                .and_then(FieldValue::as_str)
            {
                self.check(Perm::Read, Resource::Queue, &name)?;
                self.check(Perm::Write, Resource::Exchange, dlx)?;
            }
        }
        let (q, counts, saved) =
            self.vhost
                .declare_queue(&name, options, false, self.id(), max_queues)?;
        if q.owner == Some(self.id()) {
            let mut ex = self.exclusive.lock();
            if !ex.iter().any(|e| Arc::ptr_eq(e, &q)) {
                ex.push(q.clone());
            }
        }
        Ok((q, counts, saved))
    }

    /// queue.delete: returns how many ready messages went with it, and the definitions
    /// write to wait for.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> CoreResult<(usize, Pending)> {
        self.check(Perm::Configure, Resource::Queue, name)?;
        let done = self
            .vhost
            .delete_queue(name, if_unused, if_empty, self.id())?;
        self.exclusive.lock().retain(|q| q.name != name);
        Ok(done)
    }

    /// queue.purge: returns how many ready messages were dropped.
    pub fn purge_queue(&self, name: &str) -> CoreResult<usize> {
        self.check(Perm::Read, Resource::Queue, name)?;
        self.vhost.purge_queue(name, self.id())
    }

    /// Checks a binding from exchange `source` to `dest` with `key`.
    fn check_bind(&self, dest: (Resource, &str), source: &str, key: &str) -> CoreResult<()> {
        self.check(Perm::Write, dest.0, dest.1)?;
        if source.is_empty() || (dest.0 == Resource::Exchange && dest.1.is_empty()) {
            // The default exchange cannot be bound; the vhost says so with RabbitMQ's text.
            return Ok(());
        }
        self.check(Perm::Read, Resource::Exchange, source)?;
        if self.has_topic_permissions() {
            if let Ok(x) = self.vhost.exchange(source) {
                if x.kind == ExchangeKind::Topic {
                    self.check_topic(Perm::Read, source, key)?;
                }
            }
        }
        Ok(())
    }

    /// queue.bind.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
    ) -> CoreResult<Pending> {
        self.check_bind((Resource::Queue, queue), exchange, key)?;
        self.vhost.bind_queue(queue, exchange, key, args, self.id())
    }

    /// queue.unbind.
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &FieldTable,
    ) -> CoreResult<Pending> {
        self.check_bind((Resource::Queue, queue), exchange, key)?;
        self.vhost
            .unbind_queue(queue, exchange, key, args, self.id())
    }

    /// exchange.bind (destination ← source).
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: FieldTable,
    ) -> CoreResult<Pending> {
        self.check_bind((Resource::Exchange, destination), source, key)?;
        self.vhost.bind_exchange(destination, source, key, args)
    }

    /// exchange.unbind.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: &FieldTable,
    ) -> CoreResult<Pending> {
        self.check_bind((Resource::Exchange, destination), source, key)?;
        self.vhost.unbind_exchange(destination, source, key, args)
    }

    /// Publishes a message to an exchange (`""` is the default exchange).
    pub fn publish(&self, exchange: &str, message: Arc<Message>) -> CoreResult<PublishOutcome> {
        self.publish_on(0, exchange, message)
    }

    /// [`Session::publish`] from protocol channel `channel` (named in firehose traces).
    pub fn publish_on(
        &self,
        channel: u16,
        exchange: &str,
        message: Arc<Message>,
    ) -> CoreResult<PublishOutcome> {
        let x = self.check_publish(exchange, message.routing_key())?;
        if crate::trace::any() && self.vhost.tracing() {
            // Routed first so the trace names its queues, and traced before it is enqueued
            // so `publish.` comes before the `deliver.` of the same message.
            let routed = self.vhost.route_publish(&x, &message)?;
            crate::trace::publish(
                &self.vhost,
                &message,
                &routed.queue_names(),
                &self.origin(),
                channel,
            );
            return self.vhost.deliver(routed, message);
        }
        self.vhost.publish(&x, message)
    }

    /// Who this session is, for firehose traces.
    pub fn origin(&self) -> Arc<crate::trace::Origin> {
        Arc::new(crate::trace::Origin {
            connection: self.info.name(),
            user: self.info.user.clone(),
            node: crate::trace::node_name(),
        })
    }

    /// Checks a publish as [`Session::publish`] does and decides where it goes, without
    /// enqueueing it: a transaction routes its publishes when they arrive and hands them to
    /// [`Session::deliver`] at commit.
    pub fn route(&self, exchange: &str, message: &Message) -> CoreResult<Routed> {
        self.route_on(0, exchange, message)
    }

    /// [`Session::route`] of a publish on protocol channel `channel`. The firehose traces a
    /// transactional publish here, when it arrives, as RabbitMQ does (also if it is rolled
    /// back later).
    pub fn route_on(&self, channel: u16, exchange: &str, message: &Message) -> CoreResult<Routed> {
        let x = self.check_publish(exchange, message.routing_key())?;
        let routed = self.vhost.route_publish(&x, message)?;
        if crate::trace::any() && self.vhost.tracing() {
            crate::trace::publish(
                &self.vhost,
                message,
                &routed.queue_names(),
                &self.origin(),
                channel,
            );
        }
        Ok(routed)
    }

    /// Enqueues a message where [`Session::route`] decided.
    pub fn deliver(&self, routed: Routed, message: Arc<Message>) -> CoreResult<PublishOutcome> {
        self.vhost.deliver(routed, message)
    }

    /// Everything [`Session::publish`] checks before routing, in RabbitMQ's order (write
    /// permission, the exchange exists, not internal, topic permission), without publishing:
    /// a transaction checks its publishes when they arrive, not at commit.
    pub fn check_publish(&self, exchange: &str, routing_key: &str) -> CoreResult<Arc<Exchange>> {
        self.check(Perm::Write, Resource::Exchange, exchange)?;
        let x = self.vhost.exchange(exchange)?;
        if x.options.internal {
            return Err(crate::vhost::internal_refused(&x, &self.vhost.name));
        }
        if x.kind == ExchangeKind::Topic && self.has_topic_permissions() {
            self.check_topic(Perm::Write, exchange, routing_key)?;
        }
        Ok(x)
    }

    /// Checks the `user_id` a publisher put in a message against the login, as RabbitMQ
    /// does.
    pub fn check_user_id(&self, claimed: &str) -> CoreResult<()> {
        if claimed == self.user() {
            return Ok(());
        }
        Err(CoreError::PreconditionFailed(format!(
            "user_id property set to '{claimed}' but authenticated user was '{}'",
            self.user()
        )))
    }

    /// Attaches a consumer to queue `queue` and starts delivering to it.
    pub fn consume(&self, queue: &str, mut entry: ConsumerEntry) -> CoreResult<Arc<Queue>> {
        self.check(Perm::Read, Resource::Queue, queue)?;
        let q = self.vhost.queue(queue, self.id())?;
        // Kept with the consumer so turning the firehose on later traces it too.
        entry.origin.get_or_insert_with(|| self.origin());
        q.add_consumer(entry)?;
        Ok(q)
    }

    /// Detaches a consumer; an auto-delete queue left without consumers is deleted.
    pub fn cancel(&self, q: &Arc<Queue>, consumer_id: u64) {
        if q.name.starts_with(REPLY_TO_PREFIX) {
            q.remove_consumer(consumer_id);
        } else {
            self.vhost.remove_consumer(q, consumer_id);
        }
    }

    /// basic.get: the queue and its head message (with how many are left), if any.
    #[allow(clippy::type_complexity)]
    pub fn get(
        &self,
        queue: &str,
        ack_required: bool,
    ) -> CoreResult<(Arc<Queue>, Option<(QueuedMessage, usize)>)> {
        self.get_on(0, queue, ack_required)
    }

    /// [`Session::get`] on protocol channel `channel` (named in firehose traces).
    #[allow(clippy::type_complexity)]
    pub fn get_on(
        &self,
        channel: u16,
        queue: &str,
        ack_required: bool,
    ) -> CoreResult<(Arc<Queue>, Option<(QueuedMessage, usize)>)> {
        self.check(Perm::Read, Resource::Queue, queue)?;
        let q = self.vhost.queue(queue, self.id())?;
        let m = q.get(ack_required);
        if let Some((msg, _)) = &m {
            if crate::trace::any() && self.vhost.tracing() {
                let d = crate::trace::PendingDelivery {
                    message: msg.message.clone(),
                    redelivered: msg.redelivered(),
                    origin: self.origin(),
                    channel,
                };
                crate::trace::deliver(&self.vhost, &q.name, &d);
            }
        }
        Ok((q, m))
    }

    /// A direct reply-to pseudo-queue for one consumer: returns its token (the part after
    /// [`REPLY_TO_PREFIX`] in reply addresses) and the queue to attach the consumer to.
    pub fn reply_to_queue(&self) -> (String, Arc<Queue>) {
        let token = generate_name("");
        let q = Arc::new(Queue::new(
            &format!("{REPLY_TO_PREFIX}{token}"),
            &self.vhost.name,
            QueueOptions::default(),
            None,
        ));
        self.vhost.register_reply_queue(&token, q.clone());
        (token, q)
    }

    /// A passive declare of a direct reply-to name, as RabbitMQ answers it: the bare
    /// `amq.rabbitmq.reply-to` always exists; `amq.rabbitmq.reply-to.<token>` exists while
    /// its consumer does (an RPC server checks the caller is still there this way). Returns
    /// the consumer count of the declare-ok; `None` when `name` is not a reply-to name.
    pub fn reply_to_declare(&self, name: &str) -> Option<CoreResult<u32>> {
        if name == REPLY_TO_PREFIX.trim_end_matches('.') {
            return Some(Ok(1));
        }
        let token = name.strip_prefix(REPLY_TO_PREFIX)?;
        Some(match self.vhost.has_reply_queue(token) {
            true => Ok(1),
            false => Err(CoreError::NotFound(format!(
                "no queue '{name}' in vhost '{}'",
                self.vhost.name
            ))),
        })
    }

    /// Removes a direct reply-to pseudo-queue.
    pub fn reply_to_cancel(&self, token: &str) {
        self.vhost.unregister_reply_queue(token);
    }

    /// Deletes the session's exclusive queues. Called when the connection ends (and by
    /// `Drop`); calling it again does nothing.
    pub fn close(&self) {
        let queues = std::mem::take(&mut *self.exclusive.lock());
        for q in queues {
            if let Err(e) = self.vhost.remove_queue(&q, None) {
                tracing::error!(queue = %q.name, "cannot delete an exclusive queue: {e}");
            }
        }
    }
}

/// RabbitMQ's text for a queue refused by the vhost's `max-queues`.
pub(crate) fn queue_limit_reached(queue: &str, vhost: &str, max: u64) -> CoreError {
    CoreError::LimitReached(format!(
        "cannot declare queue '{queue}': queue limit in vhost '{vhost}' ({max}) is reached"
    ))
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
        let mut reg = self.broker.connections.lock();
        reg.retire_unlisted(&self.info);
        reg.unregister(self.info.id);
    }
}

#[cfg(test)]
mod tests;
