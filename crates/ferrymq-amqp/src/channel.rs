//! One AMQP channel: its methods, content assembly, consumers, unacked deliveries, confirms
//! and transactions.
//!
//! The connection task owns [`Channel`]. The part queues touch when they deliver (delivery
//! tags, unacked messages, credit) lives in [`ChannelShared`] behind a short-held lock, taken
//! after the queue's lock and never the other way round.

use crate::codec::methods::*;
use crate::codec::Method;
use crate::error::{code, AmqpError};
use crate::outbox::Outbox;
use bytes::{Bytes, BytesMut};
use ferrymq_core::consumer::{ConsumerSink, SinkRefusal};
use ferrymq_core::exchange::ExchangeOptions;
use ferrymq_core::queue::ConsumerEntry;
use ferrymq_core::vhost::{generate_name, REPLY_TO_PREFIX};
use ferrymq_core::wire::PropertySummary;
use ferrymq_core::{
    ChannelPermit, CoreError, Message, Queue, QueueOptions, QueuedMessage, Session,
};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The pseudo-queue name clients consume from for direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Sent to the connection task by code running elsewhere (queues, the writer).
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// A queue was deleted under this consumer.
    ServerCancel { channel: u16, tag: String },
}

/// What a client told us it understands, from `client_properties.capabilities`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClientCaps {
    pub consumer_cancel_notify: bool,
    pub connection_blocked: bool,
}

/// Connection-wide context the channel handlers need.
pub(crate) struct ConnCtx {
    /// The core session every operation goes through (identity, vhost, permissions).
    pub session: Session,
    pub out: Arc<Outbox>,
    pub events: mpsc::UnboundedSender<ConnEvent>,
    pub caps: ClientCaps,
    pub frame_max: u32,
    pub has_published: bool,
    /// Group-commit progress, when the broker has a data directory.
    pub sync: Option<tokio::sync::watch::Receiver<u64>>,
}

impl ConnCtx {
    /// The highest group-commit ticket known to be on disk.
    pub fn synced(&self) -> u64 {
        self.sync.as_ref().map_or(u64::MAX, |r| *r.borrow())
    }

    pub fn send(&self, channel: u16, m: impl Into<Method>) {
        let m = m.into();
        self.out.with(|o| o.method(channel, &m));
    }
}

/// Credit of one consumer: its prefetch limit and how many of its deliveries are unacked.
pub(crate) struct ConsumerCredit {
    prefetch: u32,
    unacked: AtomicU32,
    active: AtomicBool,
}

struct Unacked {
    tag: u64,
    queue: Arc<Queue>,
    msg: QueuedMessage,
    credit: Option<Arc<ConsumerCredit>>,
}

#[derive(Default)]
struct DeliveryState {
    next_tag: u64,
    unacked: VecDeque<Unacked>,
}

/// The part of a channel that delivering queues touch.
pub(crate) struct ChannelShared {
    id: u16,
    out: Arc<Outbox>,
    closed: AtomicBool,
    flow: AtomicBool,
    prefetch_global: AtomicU32,
    unacked_global: AtomicU32,
    st: Mutex<DeliveryState>,
    events: mpsc::UnboundedSender<ConnEvent>,
}

impl ChannelShared {
    fn release_credit(&self, u: &Unacked) {
        if let Some(c) = &u.credit {
            c.unacked.fetch_sub(1, Ordering::Relaxed);
            self.unacked_global.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A consumer as a queue sees it.
pub(crate) struct AmqpConsumer {
    ch: Arc<ChannelShared>,
    tag: String,
    credit: Arc<ConsumerCredit>,
}

impl ConsumerSink for AmqpConsumer {
    fn has_credit(&self) -> bool {
        let ch = &self.ch;
        let c = &self.credit;
        if !c.active.load(Ordering::Relaxed) || !ch.flow.load(Ordering::Relaxed) {
            return false;
        }
        if c.prefetch != 0 && c.unacked.load(Ordering::Relaxed) >= c.prefetch {
            return false;
        }
        let g = ch.prefetch_global.load(Ordering::Relaxed);
        if g != 0 && ch.unacked_global.load(Ordering::Relaxed) >= g {
            return false;
        }
        !ch.out.congested()
    }

    fn deliver(
        &self,
        queue: &Arc<Queue>,
        msg: QueuedMessage,
        ack_required: bool,
    ) -> Result<(), SinkRefusal> {
        let ch = &self.ch;
        let mut st = ch.st.lock();
        if ch.closed.load(Ordering::Relaxed) {
            return Err(SinkRefusal::Gone(msg));
        }
        if !self.has_credit() {
            return Err(SinkRefusal::Busy(msg));
        }
        st.next_tag += 1;
        let tag = st.next_tag;
        let fm = ch.out.frame_max.load(Ordering::Relaxed);
        // Encoded while holding the channel lock so delivery tags reach the socket in order.
        ch.out
            .with(|o| o.deliver(ch.id, &self.tag, tag, msg.redelivered(), &msg.message, fm));
        if ack_required {
            self.credit.unacked.fetch_add(1, Ordering::Relaxed);
            ch.unacked_global.fetch_add(1, Ordering::Relaxed);
            st.unacked.push_back(Unacked {
                tag,
                queue: queue.clone(),
                msg,
                credit: Some(self.credit.clone()),
            });
        }
        Ok(())
    }

    fn cancelled_by_server(&self) {
        self.credit.active.store(false, Ordering::Relaxed);
        let _ = self.ch.events.send(ConnEvent::ServerCancel {
            channel: self.ch.id,
            tag: self.tag.clone(),
        });
    }
}

struct ConsumerRec {
    queue: Arc<Queue>,
    id: u64,
    sink: Arc<AmqpConsumer>,
}

struct PendingContent {
    publish: BasicPublish,
    body_size: u64,
    properties: Option<(Bytes, PropertySummary)>,
    body: BytesMut,
    single: Option<Bytes>,
}

struct TxState {
    publishes: Vec<(BasicPublish, Arc<Message>)>,
    // Settlements buffered until commit.
    settles: Vec<(Vec<Unacked>, Settle)>,
}

/// A channel as the connection task sees it.
pub(crate) struct Channel {
    pub id: u16,
    /// The server sent channel.close and waits for close-ok.
    pub closing: bool,
    shared: Arc<ChannelShared>,
    content: Option<PendingContent>,
    confirm: Option<Confirms>,
    tx: Option<TxState>,
    /// A tx.commit-ok held until group commit reaches this ticket.
    commit_waiting: Option<u64>,
    consumers: HashMap<String, ConsumerRec>,
    consumer_prefetch: u32,
    reply_token: Option<String>,
    last_queue: Option<String>,
    /// Counts the channel against the user's `max-channels` while it is open.
    _permit: ChannelPermit,
    /// (highest delivery tag handed out, time in ms) at each consumer-timeout tick.
    marks: VecDeque<(u64, u64)>,
}

/// Publisher confirms of a channel in confirm mode. Every publish up to `ackable` may be
/// acked; publishes that wait for their data to reach the disk (or that follow one that
/// does, since confirms go out in order) queue in `waiting` with their group-commit ticket.
#[derive(Default)]
struct Confirms {
    next_seq: u64,
    acked_upto: u64,
    ackable: u64,
    waiting: VecDeque<Waiting>,
}

struct Waiting {
    seq: u64,
    /// Ackable once group commit reached this ticket (0: at once).
    ticket: u64,
    /// Refused by a queue: gets basic.nack instead of basic.ack.
    nack: bool,
}

fn chan_err(ch: u16, e: CoreError) -> AmqpError {
    AmqpError::from_core(ch, e)
}

impl Channel {
    pub fn new(id: u16, ctx: &ConnCtx, permit: ChannelPermit) -> Self {
        Channel {
            _permit: permit,
            marks: VecDeque::new(),
            id,
            closing: false,
            shared: Arc::new(ChannelShared {
                id,
                out: ctx.out.clone(),
                closed: AtomicBool::new(false),
                flow: AtomicBool::new(true),
                prefetch_global: AtomicU32::new(0),
                unacked_global: AtomicU32::new(0),
                st: Mutex::new(DeliveryState::default()),
                events: ctx.events.clone(),
            }),
            content: None,
            confirm: None,
            tx: None,
            commit_waiting: None,
            consumers: HashMap::new(),
            consumer_prefetch: 0,
            reply_token: None,
            last_queue: None,
        }
    }

    /// Whether a publish is waiting for its header or body frames.
    pub fn awaiting_content(&self) -> bool {
        self.content.is_some()
    }

    /// Handles one method frame on this channel.
    pub fn handle_method(&mut self, ctx: &mut ConnCtx, m: Method) -> Result<(), AmqpError> {
        let ids = m.ids();
        self.dispatch(ctx, m).map_err(|e| e.caused_by(ids))
    }

    fn dispatch(&mut self, ctx: &mut ConnCtx, m: Method) -> Result<(), AmqpError> {
        let ch = self.id;
        match m {
            Method::BasicPublish(p) => {
                if p.immediate {
                    return Err(AmqpError::conn(code::NOT_IMPLEMENTED, "immediate=true"));
                }
                ctx.has_published = true;
                self.content = Some(PendingContent {
                    publish: p,
                    body_size: 0,
                    properties: None,
                    body: BytesMut::new(),
                    single: None,
                });
            }
            Method::BasicAck(a) => self.settle(ctx, a.delivery_tag, a.multiple, Settle::Ack)?,
            Method::BasicNack(n) => self.settle(
                ctx,
                n.delivery_tag,
                n.multiple,
                if n.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                },
            )?,
            Method::BasicReject(r) => self.settle(
                ctx,
                r.delivery_tag,
                false,
                if r.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                },
            )?,
            Method::BasicQos(q) => {
                if q.prefetch_size != 0 {
                    return Err(AmqpError::conn(
                        code::NOT_IMPLEMENTED,
                        format!("prefetch_size!=0 ({})", q.prefetch_size),
                    ));
                }
                if q.global {
                    self.shared
                        .prefetch_global
                        .store(q.prefetch_count.into(), Ordering::Relaxed);
                    self.kick_consumers();
                } else {
                    self.consumer_prefetch = q.prefetch_count.into();
                }
                ctx.send(ch, BasicQosOk {});
            }
            Method::BasicConsume(c) => self.consume(ctx, c)?,
            Method::BasicCancel(c) => {
                self.cancel_consumer(ctx, &c.consumer_tag);
                if !c.nowait {
                    ctx.send(
                        ch,
                        BasicCancelOk {
                            consumer_tag: c.consumer_tag,
                        },
                    );
                }
            }
            Method::BasicGet(g) => self.get(ctx, g)?,
            Method::BasicRecover(r) => {
                self.recover(r.requeue)?;
                ctx.send(ch, BasicRecoverOk {});
            }
            Method::BasicRecoverAsync(r) => self.recover(r.requeue)?,
            Method::ExchangeDeclare(d) => {
                let opts = ExchangeOptions {
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                };
                ctx.session
                    .declare_exchange(&d.exchange, &d.kind, opts, d.passive)
                    .map_err(|e| chan_err(ch, e))?;
                if !d.nowait {
                    ctx.send(ch, ExchangeDeclareOk {});
                }
            }
            Method::ExchangeDelete(d) => {
                ctx.session
                    .delete_exchange(&d.exchange, d.if_unused)
                    .map_err(|e| chan_err(ch, e))?;
                if !d.nowait {
                    ctx.send(ch, ExchangeDeleteOk {});
                }
            }
            Method::ExchangeBind(b) => {
                ctx.session
                    .bind_exchange(&b.destination, &b.source, &b.routing_key, b.arguments)
                    .map_err(|e| chan_err(ch, e))?;
                if !b.nowait {
                    ctx.send(ch, ExchangeBindOk {});
                }
            }
            Method::ExchangeUnbind(b) => {
                ctx.session
                    .unbind_exchange(&b.destination, &b.source, &b.routing_key, &b.arguments)
                    .map_err(|e| chan_err(ch, e))?;
                if !b.nowait {
                    ctx.send(ch, ExchangeUnbindOk {});
                }
            }
            Method::QueueDeclare(d) => self.queue_declare(ctx, d)?,
            Method::QueueBind(b) => {
                let queue = self.queue_name(&b.queue)?;
                let key = if b.queue.is_empty() && b.routing_key.is_empty() {
                    queue.clone()
                } else {
                    b.routing_key
                };
                ctx.session
                    .bind_queue(&queue, &b.exchange, &key, b.arguments)
                    .map_err(|e| chan_err(ch, e))?;
                if !b.nowait {
                    ctx.send(ch, QueueBindOk {});
                }
            }
            Method::QueueUnbind(b) => {
                let queue = self.queue_name(&b.queue)?;
                ctx.session
                    .unbind_queue(&queue, &b.exchange, &b.routing_key, &b.arguments)
                    .map_err(|e| chan_err(ch, e))?;
                ctx.send(ch, QueueUnbindOk {});
            }
            Method::QueuePurge(p) => {
                let queue = self.queue_name(&p.queue)?;
                let n = ctx
                    .session
                    .purge_queue(&queue)
                    .map_err(|e| chan_err(ch, e))?;
                if !p.nowait {
                    ctx.send(
                        ch,
                        QueuePurgeOk {
                            message_count: n as u32,
                        },
                    );
                }
            }
            Method::QueueDelete(d) => {
                let queue = self.queue_name(&d.queue)?;
                let n = ctx
                    .session
                    .delete_queue(&queue, d.if_unused, d.if_empty)
                    .map_err(|e| chan_err(ch, e))?;
                if !d.nowait {
                    ctx.send(
                        ch,
                        QueueDeleteOk {
                            message_count: n as u32,
                        },
                    );
                }
            }
            Method::ConfirmSelect(c) => {
                if self.tx.is_some() {
                    return Err(AmqpError::chan(
                        ch,
                        code::PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if self.confirm.is_none() {
                    self.confirm = Some(Confirms::default());
                }
                if !c.nowait {
                    ctx.send(ch, ConfirmSelectOk {});
                }
            }
            Method::TxSelect(_) => {
                if self.confirm.is_some() {
                    return Err(AmqpError::chan(
                        ch,
                        code::PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if self.tx.is_none() {
                    self.tx = Some(TxState {
                        publishes: Vec::new(),
                        settles: Vec::new(),
                    });
                }
                ctx.send(ch, TxSelectOk {});
            }
            Method::TxCommit(_) => {
                let tx = self.tx.as_mut().ok_or_else(|| {
                    AmqpError::chan(
                        ch,
                        code::PRECONDITION_FAILED,
                        "channel is not transactional",
                    )
                })?;
                let publishes = std::mem::take(&mut tx.publishes);
                let settles = std::mem::take(&mut tx.settles);
                let mut ticket = 0;
                for (p, msg) in publishes {
                    ticket = ticket.max(self.route(ctx, &p, msg)?.unwrap_or(0));
                }
                for (taken, how) in settles {
                    self.apply_settle(taken, how);
                }
                // As with confirms, commit-ok promises that persistent messages are on disk.
                if ticket > ctx.synced() {
                    self.commit_waiting = Some(ticket);
                } else {
                    ctx.send(ch, TxCommitOk {});
                }
            }
            Method::TxRollback(_) => {
                let tx = self.tx.as_mut().ok_or_else(|| {
                    AmqpError::chan(
                        ch,
                        code::PRECONDITION_FAILED,
                        "channel is not transactional",
                    )
                })?;
                tx.publishes.clear();
                let settles = std::mem::take(&mut tx.settles);
                // Settlements are undone: the deliveries are unacked again, in tag order.
                let mut st = self.shared.st.lock();
                for (taken, _) in settles {
                    for u in taken {
                        let pos = st.unacked.partition_point(|x| x.tag < u.tag);
                        st.unacked.insert(pos, u);
                    }
                }
                drop(st);
                ctx.send(ch, TxRollbackOk {});
            }
            Method::ChannelFlow(f) => {
                self.shared.flow.store(f.active, Ordering::Relaxed);
                ctx.send(ch, ChannelFlowOk { active: f.active });
                if f.active {
                    self.kick_consumers();
                }
            }
            Method::ChannelFlowOk(_) => {}
            other => {
                return Err(AmqpError::conn(
                    code::COMMAND_INVALID,
                    format!("unexpected method {} on channel {ch}", other.name()),
                ))
            }
        }
        Ok(())
    }

    fn queue_name(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.last_queue.clone().ok_or_else(|| {
            AmqpError::chan(self.id, code::NOT_FOUND, "no previously declared queue")
        })
    }

    fn queue_declare(&mut self, ctx: &mut ConnCtx, d: QueueDeclare) -> Result<(), AmqpError> {
        let ch = self.id;
        if d.queue == REPLY_TO && d.passive {
            if !d.nowait {
                ctx.send(
                    ch,
                    QueueDeclareOk {
                        queue: d.queue,
                        message_count: 0,
                        consumer_count: 0,
                    },
                );
            }
            return Ok(());
        }
        let opts = QueueOptions {
            durable: d.durable,
            exclusive: d.exclusive,
            auto_delete: d.auto_delete,
            arguments: d.arguments,
        };
        let (q, counts) = ctx
            .session
            .declare_queue(&d.queue, opts, d.passive)
            .map_err(|e| chan_err(ch, e))?;
        self.last_queue = Some(q.name.clone());
        if !d.nowait {
            ctx.send(
                ch,
                QueueDeclareOk {
                    queue: q.name.clone(),
                    message_count: counts.messages as u32,
                    consumer_count: counts.consumers as u32,
                },
            );
        }
        Ok(())
    }

    fn consume(&mut self, ctx: &mut ConnCtx, c: BasicConsume) -> Result<(), AmqpError> {
        let ch = self.id;
        let tag = if c.consumer_tag.is_empty() {
            generate_name("amq.ctag-")
        } else {
            c.consumer_tag.clone()
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::conn(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let priority = match c.arguments.get("x-priority") {
            None => 0,
            Some(v) => v.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(|| {
                AmqpError::chan(
                    ch,
                    code::PRECONDITION_FAILED,
                    format!(
                        "invalid arg 'x-priority' for consumer on {}: expected a 32-bit integer, got {} {}",
                        c.queue,
                        v.rabbit_type_name(),
                        v
                    ),
                )
            })?,
        };
        let mut reply_token = None;
        let queue = if c.queue == REPLY_TO {
            if !c.no_ack {
                return Err(AmqpError::chan(
                    ch,
                    code::PRECONDITION_FAILED,
                    "reply consumer cannot acknowledge",
                ));
            }
            if self.reply_token.is_some() {
                return Err(AmqpError::chan(
                    ch,
                    code::PRECONDITION_FAILED,
                    "reply consumer already set",
                ));
            }
            let (token, q) = ctx.session.reply_to_queue();
            reply_token = Some(token);
            Some(q)
        } else {
            None
        };
        let credit = Arc::new(ConsumerCredit {
            prefetch: self.consumer_prefetch,
            unacked: AtomicU32::new(0),
            active: AtomicBool::new(false),
        });
        let sink = Arc::new(AmqpConsumer {
            ch: self.shared.clone(),
            tag: tag.clone(),
            credit: credit.clone(),
        });
        let entry = ConsumerEntry::new(&tag, sink.clone(), c.no_ack, c.exclusive, ctx.session.id())
            .with_priority(priority);
        let id = entry.id;
        let attached = match queue {
            Some(q) => q
                .add_consumer(entry)
                .map(|_| q)
                .map_err(|e| chan_err(ch, e)),
            None => self.queue_name(&c.queue).and_then(|name| {
                ctx.session
                    .consume(&name, entry)
                    .map_err(|e| chan_err(ch, e))
            }),
        };
        let queue = match attached {
            Ok(q) => q,
            Err(e) => {
                if let Some(t) = reply_token {
                    ctx.session.reply_to_cancel(&t);
                }
                return Err(e);
            }
        };
        if reply_token.is_some() {
            self.reply_token = reply_token;
        }
        // consume-ok must reach the client before the first delivery, so the consumer only
        // becomes active once it is written.
        if !c.nowait {
            ctx.send(
                ch,
                BasicConsumeOk {
                    consumer_tag: tag.clone(),
                },
            );
        }
        credit.active.store(true, Ordering::Relaxed);
        queue.dispatch();
        self.consumers.insert(tag, ConsumerRec { queue, id, sink });
        Ok(())
    }

    fn cancel_consumer(&mut self, ctx: &ConnCtx, tag: &str) {
        if let Some(rec) = self.consumers.remove(tag) {
            rec.sink.credit.active.store(false, Ordering::Relaxed);
            ctx.session.cancel(&rec.queue, rec.id);
            if rec.queue.name.starts_with(REPLY_TO_PREFIX) {
                if let Some(t) = self.reply_token.take() {
                    ctx.session.reply_to_cancel(&t);
                }
            }
        }
    }

    /// The server cancelled a consumer (its queue was deleted).
    pub fn server_cancelled(&mut self, ctx: &ConnCtx, tag: &str) {
        if self.consumers.remove(tag).is_some() && ctx.caps.consumer_cancel_notify && !self.closing
        {
            ctx.send(
                self.id,
                BasicCancel {
                    consumer_tag: tag.to_string(),
                    nowait: true,
                },
            );
        }
    }

    fn get(&mut self, ctx: &mut ConnCtx, g: BasicGet) -> Result<(), AmqpError> {
        let ch = self.id;
        let name = self.queue_name(&g.queue)?;
        let (q, got) = ctx
            .session
            .get(&name, !g.no_ack)
            .map_err(|e| chan_err(ch, e))?;
        match got {
            None => ctx.send(
                ch,
                BasicGetEmpty {
                    cluster_id: String::new(),
                },
            ),
            Some((msg, left)) => {
                let mut st = self.shared.st.lock();
                st.next_tag += 1;
                let tag = st.next_tag;
                let m: Method = BasicGetOk {
                    delivery_tag: tag,
                    redelivered: msg.redelivered(),
                    exchange: msg.message.exchange().to_string(),
                    routing_key: msg.message.routing_key().to_string(),
                    message_count: left as u32,
                }
                .into();
                let fm = ctx.frame_max;
                ctx.out.with(|o| o.content(ch, &m, &msg.message, fm));
                if !g.no_ack {
                    st.unacked.push_back(Unacked {
                        tag,
                        queue: q,
                        msg,
                        credit: None,
                    });
                }
            }
        }
        Ok(())
    }

    fn take_unacked(&self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        let mut st = self.shared.st.lock();
        let unknown = || {
            AmqpError::chan(
                self.id,
                code::PRECONDITION_FAILED,
                format!("unknown delivery tag {tag}"),
            )
        };
        if multiple {
            if tag == 0 {
                return Ok(st.unacked.drain(..).collect());
            }
            if tag > st.next_tag {
                return Err(unknown());
            }
            let n = st.unacked.partition_point(|u| u.tag <= tag);
            if n == 0 {
                return Err(unknown());
            }
            Ok(st.unacked.drain(..n).collect())
        } else {
            let pos = st.unacked.partition_point(|u| u.tag < tag);
            match st.unacked.get(pos) {
                Some(u) if u.tag == tag => Ok(st.unacked.remove(pos).into_iter().collect()),
                _ => Err(unknown()),
            }
        }
    }

    fn settle(
        &mut self,
        _ctx: &ConnCtx,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Result<(), AmqpError> {
        let taken = self.take_unacked(tag, multiple)?;
        if let Some(tx) = &mut self.tx {
            tx.settles.push((taken, how));
            return Ok(());
        }
        self.apply_settle(taken, how);
        Ok(())
    }

    fn apply_settle(&self, taken: Vec<Unacked>, how: Settle) {
        for u in &taken {
            self.shared.release_credit(u);
        }
        for (q, msgs) in group_by_queue(taken) {
            match how {
                Settle::Requeue => q.requeue(msgs),
                Settle::Discard => q.reject(msgs),
                Settle::Ack => {
                    let seqs: Vec<u64> = msgs.iter().map(|m| m.seq()).collect();
                    q.ack(&seqs);
                }
            }
        }
        self.kick_consumers();
    }

    fn recover(&mut self, requeue: bool) -> Result<(), AmqpError> {
        if !requeue {
            return Err(AmqpError::conn(code::NOT_IMPLEMENTED, "requeue=false"));
        }
        let taken: Vec<Unacked> = self.shared.st.lock().unacked.drain(..).collect();
        self.apply_settle(taken, Settle::Requeue);
        Ok(())
    }

    /// The channel error for deliveries held longer than their queue's consumer timeout
    /// (RabbitMQ's `consumer_timeout`), if any; closing the channel returns them. Delivery
    /// times are not recorded per message (a clock read per delivery on the hot path):
    /// each tick records the highest delivery tag handed out so far, so a delivery's age is
    /// known to within one tick, erring on the young side.
    pub fn check_consumer_timeout(&mut self, ctx: &ConnCtx, now: u64) -> Option<AmqpError> {
        if self.closing {
            return None;
        }
        let st = self.shared.st.lock();
        if self.marks.back().is_none_or(|m| m.0 != st.next_tag) {
            self.marks.push_back((st.next_tag, now));
        }
        let Some(oldest) = st.unacked.front().map(|u| u.tag) else {
            // Nothing unacked: only the latest mark matters for what comes next.
            while self.marks.len() > 1 {
                self.marks.pop_front();
            }
            return None;
        };
        while self.marks.front().is_some_and(|m| m.0 < oldest) {
            self.marks.pop_front();
        }
        let mut timeouts: Vec<(*const Queue, Option<u64>)> = Vec::new();
        let mut mark = 0;
        for u in &st.unacked {
            while self.marks.get(mark).is_some_and(|m| m.0 < u.tag) {
                mark += 1;
            }
            let Some(&(_, at)) = self.marks.get(mark) else {
                break;
            };
            let age = now.saturating_sub(at);
            if age == 0 {
                break;
            }
            let key = Arc::as_ptr(&u.queue);
            let timeout = match timeouts.iter().find(|(q, _)| *q == key) {
                Some((_, t)) => *t,
                None => {
                    let t = ctx
                        .session
                        .consumer_timeout(&u.queue)
                        .map(|d| d.as_millis() as u64);
                    timeouts.push((key, t));
                    t
                }
            };
            if let Some(t) = timeout.filter(|t| age > *t) {
                return Some(AmqpError::chan(
                    self.id,
                    code::PRECONDITION_FAILED,
                    format!(
                        "delivery acknowledgement on channel {} timed out. Timeout value used: {t} ms. This timeout value can be configured, see consumers doc guide to learn more",
                        self.id
                    ),
                ));
            }
        }
        None
    }

    /// Lets every queue this channel consumes from deliver again (credit was freed).
    pub fn kick_consumers(&self) {
        for rec in self.consumers.values() {
            rec.queue.dispatch();
        }
    }

    /// Handles a content header frame.
    pub fn handle_header(
        &mut self,
        ctx: &mut ConnCtx,
        class_id: u16,
        body_size: u64,
        props: Bytes,
        summary: PropertySummary,
    ) -> Result<(), AmqpError> {
        let ch = self.id;
        let Some(pc) = self.content.as_mut() else {
            return Err(AmqpError::conn(
                code::UNEXPECTED_FRAME,
                format!("expected method frame, got content header on channel {ch}"),
            ));
        };
        if pc.properties.is_some() {
            return Err(AmqpError::conn(
                code::UNEXPECTED_FRAME,
                format!("expected content body, got content header on channel {ch}"),
            ));
        }
        if class_id != 60 {
            return Err(AmqpError::conn(
                code::FRAME_ERROR,
                format!("content header for class {class_id}, expected class 60 (basic)"),
            ));
        }
        let max = ctx.session.broker().config.max_message_size as u64;
        if body_size > max {
            self.content = None;
            return Err(AmqpError::chan(
                ch,
                code::PRECONDITION_FAILED,
                format!("message size {body_size} is larger than configured max size {max}"),
            )
            .caused_by((60, 40)));
        }
        if let Some((a, b)) = summary.user_id {
            let claimed = String::from_utf8_lossy(&props[a..b]);
            if let Err(e) = ctx.session.check_user_id(&claimed) {
                self.content = None;
                return Err(chan_err(ch, e).caused_by((60, 40)));
            }
        }
        pc.body_size = body_size;
        pc.properties = Some((props, summary));
        if body_size == 0 {
            return self.finish_content(ctx);
        }
        Ok(())
    }

    /// Handles a content body frame.
    pub fn handle_body(&mut self, ctx: &mut ConnCtx, payload: Bytes) -> Result<(), AmqpError> {
        let ch = self.id;
        let Some(pc) = self.content.as_mut().filter(|p| p.properties.is_some()) else {
            return Err(AmqpError::conn(
                code::UNEXPECTED_FRAME,
                format!("expected method frame, got content body on channel {ch}"),
            ));
        };
        let have = pc.body.len() as u64 + pc.single.as_ref().map_or(0, |b| b.len() as u64);
        if have + payload.len() as u64 > pc.body_size {
            return Err(AmqpError::conn(
                code::FRAME_ERROR,
                format!(
                    "content body exceeds the size {} announced in its header on channel {ch}",
                    pc.body_size
                ),
            ));
        }
        // A body that fits one frame is kept as a slice of the receive buffer: no copy.
        if have == 0 && payload.len() as u64 == pc.body_size {
            pc.single = Some(payload);
        } else {
            if let Some(s) = pc.single.take() {
                pc.body.extend_from_slice(&s);
            }
            if pc.body.capacity() == 0 {
                pc.body.reserve(pc.body_size.min(1 << 20) as usize);
            }
            pc.body.extend_from_slice(&payload);
        }
        let have = pc.body.len() as u64 + pc.single.as_ref().map_or(0, |b| b.len() as u64);
        if have == pc.body_size {
            return self.finish_content(ctx);
        }
        Ok(())
    }

    fn finish_content(&mut self, ctx: &mut ConnCtx) -> Result<(), AmqpError> {
        let ch = self.id;
        let Some(pc) = self.content.take() else {
            return Ok(());
        };
        let Some((raw, summary)) = pc.properties else {
            return Ok(());
        };
        let body = pc.single.unwrap_or_else(|| pc.body.freeze());
        let (exchange, key) = (&pc.publish.exchange, &pc.publish.routing_key);
        let is_reply = summary
            .reply_to
            .is_some_and(|(a, b)| &raw[a..b] == REPLY_TO.as_bytes());
        let msg = if is_reply {
            let Some(token) = &self.reply_token else {
                return Err(AmqpError::chan(
                    ch,
                    code::PRECONDITION_FAILED,
                    "fast reply consumer does not exist",
                )
                .caused_by((60, 40)));
            };
            let mut props = ferrymq_core::wire::decode_properties(&raw)
                .map_err(|e| AmqpError::conn(code::SYNTAX_ERROR, e))?;
            props.reply_to = Some(format!("{REPLY_TO_PREFIX}{token}"));
            Message::from_properties(exchange, key, &props, body)
        } else {
            Message::new(exchange, key, &raw, body)
        };
        let msg = Arc::new(msg.map_err(|e| AmqpError::conn(code::SYNTAX_ERROR, e))?);
        if let Some(tx) = &mut self.tx {
            tx.publishes.push((pc.publish, msg));
            return Ok(());
        }
        self.route(ctx, &pc.publish, msg).map(|_| ())
    }

    fn route(
        &mut self,
        ctx: &mut ConnCtx,
        p: &BasicPublish,
        msg: Arc<Message>,
    ) -> Result<Option<u64>, AmqpError> {
        let ch = self.id;
        let outcome = ctx
            .session
            .publish(&p.exchange, msg.clone())
            .map_err(|e| chan_err(ch, e).caused_by((60, 40)))?;
        if outcome.routed == 0 && p.mandatory {
            let m: Method = BasicReturn {
                reply_code: code::NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: p.exchange.clone(),
                routing_key: p.routing_key.clone(),
            }
            .into();
            let fm = ctx.frame_max;
            ctx.out.with(|o| o.content(ch, &m, &msg, fm));
        }
        if let Some(c) = &mut self.confirm {
            c.next_seq += 1;
            let seq = c.next_seq;
            let ticket = outcome.ticket.unwrap_or(0);
            let durable_now = ticket <= ctx.synced();
            if outcome.refused == 0 && durable_now && c.waiting.is_empty() {
                c.ackable = seq;
            } else {
                c.waiting.push_back(Waiting {
                    seq,
                    ticket: if durable_now { 0 } else { ticket },
                    nack: outcome.refused > 0,
                });
                if outcome.refused > 0 {
                    self.flush_confirms(ctx);
                }
            }
        }
        Ok(outcome.ticket)
    }

    /// Whether confirms or a tx.commit-ok wait for group commit.
    pub fn awaits_sync(&self) -> bool {
        self.commit_waiting.is_some()
            || self.confirm.as_ref().is_some_and(|c| !c.waiting.is_empty())
    }

    /// Sends the publisher confirms that are due: everything processed in the last batch of
    /// frames whose data is durable, as one `basic.ack` with `multiple` when several are due,
    /// and a `basic.nack` for each refused publish, in publish order.
    pub fn flush_confirms(&mut self, ctx: &ConnCtx) {
        let synced = ctx.synced();
        if self.commit_waiting.is_some_and(|t| t <= synced) {
            self.commit_waiting = None;
            ctx.send(self.id, TxCommitOk {});
        }
        let Some(c) = &mut self.confirm else {
            return;
        };
        let ch = self.id;
        let send_acks = |c: &mut Confirms| {
            if c.ackable > c.acked_upto {
                let multiple = c.ackable - c.acked_upto > 1;
                ctx.send(
                    ch,
                    BasicAck {
                        delivery_tag: c.ackable,
                        multiple,
                    },
                );
                c.acked_upto = c.ackable;
            }
        };
        while let Some(w) = c.waiting.front() {
            if w.ticket > synced {
                break;
            }
            let (seq, nack) = (w.seq, w.nack);
            c.waiting.pop_front();
            if nack {
                c.ackable = seq - 1;
                send_acks(c);
                ctx.send(
                    ch,
                    BasicNack {
                        delivery_tag: seq,
                        multiple: false,
                        requeue: false,
                    },
                );
                c.acked_upto = seq;
            }
            c.ackable = seq;
        }
        send_acks(c);
    }

    /// Releases everything the channel holds: consumers are detached (auto-delete queues may
    /// go), unacked deliveries return to their queues, pending transactions are dropped.
    pub fn cleanup(&mut self, ctx: &ConnCtx) {
        let taken: Vec<Unacked> = {
            let mut st = self.shared.st.lock();
            self.shared.closed.store(true, Ordering::Relaxed);
            st.unacked.drain(..).collect()
        };
        let mut all = taken;
        if let Some(tx) = self.tx.take() {
            for (t, _) in tx.settles {
                all.extend(t);
            }
        }
        all.sort_by_key(|u| u.tag);
        // Requeued before the consumers go, so a single-active-consumer queue hands its
        // next consumer the returned messages first, in order (the closed channel refuses
        // deliveries meanwhile).
        for (q, msgs) in group_by_queue(all) {
            q.requeue(msgs);
        }
        let tags: Vec<String> = self.consumers.keys().cloned().collect();
        for t in tags {
            self.cancel_consumer(ctx, &t);
        }
        self.content = None;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Discard,
}

fn group_by_queue(taken: Vec<Unacked>) -> Vec<(Arc<Queue>, Vec<QueuedMessage>)> {
    let mut groups: Vec<(Arc<Queue>, Vec<QueuedMessage>)> = Vec::new();
    for u in taken {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, v)) => v.push(u.msg),
            None => groups.push((u.queue, vec![u.msg])),
        }
    }
    groups
}
