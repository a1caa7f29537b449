//! One AMQP channel: its methods, content assembly, consumers, unacked deliveries, confirms
//! and transactions.
//!
//! The connection task owns [`Channel`]. The part queues touch when they deliver (delivery
//! tags, unacked messages, credit) lives in [`ChannelShared`] behind a short-held lock, taken
//! after the queue's lock and never the other way round.
//!
//! The handlers are split by concern: [`topology`] (exchanges, queues, bindings),
//! [`consume`] (consumers, credit, basic.get), [`publish`] (content assembly, routing,
//! confirms) and [`settle`] (acks, recovery, transactions, timeouts, cleanup).

mod consume;
mod publish;
mod settle;
#[cfg(test)]
mod tests;
mod topology;

use crate::codec::Method;
use crate::error::{code, AmqpError};
use crate::outbox::Outbox;
use ferrymq_core::flow::FlowCredit;
use ferrymq_core::stats::ChannelInfo;
use ferrymq_core::{ChannelPermit, CoreError, Queue, QueuedMessage, Session};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Arc;
use tokio::sync::mpsc;

use consume::{ConsumerCredit, ConsumerRec};
use publish::{Confirms, PendingContent};
use settle::{Settle, TxState};

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
    /// Persistent bytes written and not yet synced, against the connection's credit.
    pub flow: FlowCredit,
}

impl ConnCtx {
    /// The highest group-commit ticket known to be on disk.
    pub fn synced(&self) -> u64 {
        self.sync.as_ref().map_or(u64::MAX, |r| *r.borrow())
    }

    /// Encodes a method into the connection's output; the writer task sends it.
    pub fn send(&self, channel: u16, m: impl Into<Method>) {
        let m = m.into();
        self.out.with(|o| o.method(channel, &m));
    }
}

/// A delivery the client has yet to settle, kept so ack/nack/reject can reach its queue.
struct Unacked {
    tag: u64,
    queue: Arc<Queue>,
    msg: QueuedMessage,
    credit: Option<Arc<ConsumerCredit>>,
}

/// Delivery tags and unacked deliveries, guarded together so tags stay in order.
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
    prefetch_global: AtomicU32,
    unacked_global: AtomicU32,
    st: Mutex<DeliveryState>,
    events: mpsc::UnboundedSender<ConnEvent>,
    /// What the management API shows of the channel.
    pub(crate) info: Arc<ChannelInfo>,
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
    /// A tx.commit-ok held until group commit made the transaction's messages durable.
    commit_waiting: Option<ferrymq_core::Pending>,
    /// Replies held until group commit made the definitions changes they report durable,
    /// in order; replies to later methods queue behind them.
    held: VecDeque<(ferrymq_core::Pending, Method)>,
    consumers: HashMap<String, ConsumerRec>,
    consumer_prefetch: u32,
    reply_token: Option<String>,
    last_queue: Option<String>,
    /// Counts the channel against the user's `max-channels` while it is open.
    _permit: ChannelPermit,
    /// (highest delivery tag handed out, time in ms) at each consumer-timeout tick.
    marks: VecDeque<(u64, u64)>,
}

/// Whether `m` can be handled while replies of its channel wait for group commit: its own
/// reply (if any) then queues behind them, in order. Others (consume, get, recover, tx, ...)
/// wait, because what they send (deliveries, a message) must not overtake those replies.
pub(crate) fn can_queue_behind_held(m: &Method) -> bool {
    matches!(
        m,
        Method::ExchangeDeclare(_)
            | Method::ExchangeDelete(_)
            | Method::ExchangeBind(_)
            | Method::ExchangeUnbind(_)
            | Method::QueueDeclare(_)
            | Method::QueueBind(_)
            | Method::QueueUnbind(_)
            | Method::QueuePurge(_)
            | Method::QueueDelete(_)
            | Method::BasicPublish(_)
            | Method::BasicAck(_)
            | Method::BasicNack(_)
            | Method::BasicReject(_)
            | Method::ChannelClose(_)
            | Method::ChannelCloseOk(_)
    )
}

/// Maps a core refusal to the channel (or connection) exception RabbitMQ would raise.
fn chan_err(ch: u16, e: CoreError) -> AmqpError {
    AmqpError::from_core(ch, e)
}

impl Channel {
    /// A fresh channel; `permit` keeps it counted against the user's channel limit.
    pub fn new(id: u16, ctx: &ConnCtx, permit: ChannelPermit) -> Self {
        let info = permit.channel.clone();
        Channel {
            _permit: permit,
            marks: VecDeque::new(),
            id,
            closing: false,
            shared: Arc::new(ChannelShared {
                id,
                out: ctx.out.clone(),
                closed: AtomicBool::new(false),
                prefetch_global: AtomicU32::new(0),
                unacked_global: AtomicU32::new(0),
                st: Mutex::new(DeliveryState::default()),
                events: ctx.events.clone(),
                info,
            }),
            content: None,
            confirm: None,
            tx: None,
            commit_waiting: None,
            held: VecDeque::new(),
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

    /// Whether replies wait for group commit. While they do, only methods whose replies can
    /// queue behind them ([`can_queue_behind_held`]) are handled; the connection keeps the
    /// others until the held replies are out.
    pub fn holds_replies(&self) -> bool {
        !self.held.is_empty()
    }

    /// Sends `m` once the definitions write `saved` is durable and every reply held before
    /// it has gone.
    pub(crate) fn reply_saved(
        &mut self,
        ctx: &ConnCtx,
        saved: ferrymq_core::Pending,
        m: impl Into<Method>,
    ) {
        let now = saved.is_empty() || (saved.ticket() <= ctx.synced() && !saved.lost());
        if now && self.held.is_empty() {
            ctx.send(self.id, m);
        } else {
            self.held.push_back((saved, m.into()));
        }
    }

    /// Sends the held replies whose definitions writes are durable. A write lost to a failed
    /// fsync of the definitions journal is a connection error (541): the client must not be
    /// told the change was made.
    pub(crate) fn flush_held(&mut self, ctx: &ConnCtx) -> Result<(), AmqpError> {
        let synced = ctx.synced();
        while let Some((saved, _)) = self.held.front() {
            if saved.ticket() > synced {
                break;
            }
            if saved.lost() {
                self.held.clear();
                return Err(AmqpError::conn(
                    code::INTERNAL_ERROR,
                    "the definitions could not be saved: an fsync of the definitions journal \
                     failed",
                ));
            }
            if let Some((_, m)) = self.held.pop_front() {
                ctx.send(self.id, m);
            }
        }
        Ok(())
    }

    /// Handles one method frame on this channel.
    pub fn handle_method(&mut self, ctx: &mut ConnCtx, m: Method) -> Result<(), AmqpError> {
        let ids = m.ids();
        self.dispatch(ctx, m).map_err(|e| e.caused_by(ids))
    }

    /// Routes a method to its handler; errors get the method's ids in `handle_method`.
    fn dispatch(&mut self, ctx: &mut ConnCtx, m: Method) -> Result<(), AmqpError> {
        match m {
            Method::BasicPublish(p) => self.publish(ctx, p),
            Method::BasicAck(a) => self.settle(a.delivery_tag, a.multiple, Settle::Ack),
            Method::BasicNack(n) => {
                self.settle(n.delivery_tag, n.multiple, Settle::refused(n.requeue))
            }
            Method::BasicReject(r) => {
                self.settle(r.delivery_tag, false, Settle::refused(r.requeue))
            }
            Method::BasicQos(q) => self.qos(ctx, q),
            Method::BasicConsume(c) => self.consume(ctx, c),
            Method::BasicCancel(c) => self.cancel(ctx, c),
            Method::BasicGet(g) => self.get(ctx, g),
            Method::BasicRecover(r) => self.recover(ctx, r.requeue, true),
            Method::BasicRecoverAsync(r) => self.recover(ctx, r.requeue, false),
            Method::ExchangeDeclare(d) => self.exchange_declare(ctx, d),
            Method::ExchangeDelete(d) => self.exchange_delete(ctx, d),
            Method::ExchangeBind(b) => self.exchange_bind(ctx, b),
            Method::ExchangeUnbind(b) => self.exchange_unbind(ctx, b),
            Method::QueueDeclare(d) => self.queue_declare(ctx, d),
            Method::QueueBind(b) => self.queue_bind(ctx, b),
            Method::QueueUnbind(b) => self.queue_unbind(ctx, b),
            Method::QueuePurge(p) => self.queue_purge(ctx, p),
            Method::QueueDelete(d) => self.queue_delete(ctx, d),
            Method::ConfirmSelect(c) => self.confirm_select(ctx, c),
            Method::TxSelect(_) => self.tx_select(ctx),
            Method::TxCommit(_) => self.tx_commit(ctx),
            Method::TxRollback(_) => self.tx_rollback(ctx),
            Method::ChannelFlow(f) => self.flow(ctx, f),
            // The broker never sends channel.flow, so an answer to one changes nothing.
            Method::ChannelFlowOk(_) => Ok(()),
            other => Err(AmqpError::conn(
                code::COMMAND_INVALID,
                format!("unexpected method {} on channel {}", other.name(), self.id),
            )),
        }
    }
}
