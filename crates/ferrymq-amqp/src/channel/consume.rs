//! Consumers: the sink queues deliver into, per-consumer and per-channel credit (basic.qos,
//! channel.flow from the client), basic.consume and basic.cancel, and basic.get.

use super::{chan_err, Channel, ChannelShared, ConnCtx, ConnEvent, Unacked, REPLY_TO};
use crate::codec::methods::*;
use crate::codec::Method;
use crate::error::{code, AmqpError};
use ferrymq_core::consumer::{ConsumerSink, SinkRefusal};
use ferrymq_core::queue::ConsumerEntry;
use ferrymq_core::stats::{ChannelInfo, ConnectionStats};
use ferrymq_core::vhost::{generate_name, REPLY_TO_PREFIX};
use ferrymq_core::{Queue, QueuedMessage};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// Credit of one consumer: its prefetch limit and how many of its deliveries are unacked.
pub(crate) struct ConsumerCredit {
    prefetch: u32,
    unacked: AtomicU32,
    active: AtomicBool,
}

/// A consumer as a queue sees it.
pub(crate) struct AmqpConsumer {
    ch: Arc<ChannelShared>,
    tag: String,
    credit: Arc<ConsumerCredit>,
}

impl ConsumerSink for AmqpConsumer {
    /// Checked by queues before they take a message, so a busy consumer costs no requeue.
    fn has_credit(&self) -> bool {
        let ch = &self.ch;
        let c = &self.credit;
        if !c.active.load(Ordering::Relaxed) {
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

    /// Called under the delivering queue's lock, which is why the channel lock comes second.
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
        let info = &ch.info;
        if msg.redelivered() {
            ConnectionStats::bump(&info.redeliver, 1);
        }
        if ack_required {
            self.credit.unacked.fetch_add(1, Ordering::Relaxed);
            ch.unacked_global.fetch_add(1, Ordering::Relaxed);
            st.unacked.push_back(Unacked {
                tag,
                queue: queue.clone(),
                msg,
                credit: Some(self.credit.clone()),
            });
            ConnectionStats::bump(&info.deliver, 1);
            ChannelInfo::set(&info.unacked, st.unacked.len() as u64);
        } else {
            ConnectionStats::bump(&info.deliver_no_ack, 1);
        }
        Ok(())
    }

    /// The queue went away; the connection task tells the client, since only it may write
    /// channel state.
    fn cancelled_by_server(&self) {
        self.credit.active.store(false, Ordering::Relaxed);
        let _ = self.ch.events.send(ConnEvent::ServerCancel {
            channel: self.ch.id,
            tag: self.tag.clone(),
        });
    }
}

impl ChannelShared {
    /// Gives back the credit a settled delivery held, so its consumer may receive again.
    pub(super) fn release_credit(&self, u: &Unacked) {
        if let Some(c) = &u.credit {
            c.unacked.fetch_sub(1, Ordering::Relaxed);
            self.unacked_global.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What the channel keeps of a consumer to cancel it later.
pub(super) struct ConsumerRec {
    queue: Arc<Queue>,
    id: u64,
    sink: Arc<AmqpConsumer>,
}

impl Channel {
    /// `basic.qos` as RabbitMQ 3.10 applies it: a global prefetch limits the channel's
    /// unacked deliveries together; a per-consumer one applies to consumers made after it
    /// and lifts the channel limit (so `qos(4, global)` then `qos(2)` is 2 per consumer).
    pub(super) fn qos(&mut self, ctx: &mut ConnCtx, q: BasicQos) -> Result<(), AmqpError> {
        if q.prefetch_size != 0 {
            return Err(AmqpError::conn(
                code::NOT_IMPLEMENTED,
                format!("prefetch_size!=0 ({})", q.prefetch_size),
            ));
        }
        let info = &self.shared.info;
        if q.global {
            ChannelInfo::set(&info.global_prefetch, q.prefetch_count.into());
        } else {
            ChannelInfo::set(&info.prefetch, q.prefetch_count.into());
            ChannelInfo::set(&info.global_prefetch, 0);
        }
        if q.global {
            self.shared
                .prefetch_global
                .store(q.prefetch_count.into(), Ordering::Relaxed);
            self.kick_consumers();
        } else {
            self.consumer_prefetch = q.prefetch_count.into();
            if self.shared.prefetch_global.swap(0, Ordering::Relaxed) != 0 {
                self.kick_consumers();
            }
        }
        ctx.send(self.id, BasicQosOk {});
        Ok(())
    }

    /// `channel.flow` from the client: resuming is answered, pausing refused (540).
    pub(super) fn flow(&mut self, ctx: &mut ConnCtx, f: ChannelFlow) -> Result<(), AmqpError> {
        if !f.active {
            // RabbitMQ 3.10 refuses a client's request to pause its own deliveries (basic.qos
            // is the way to hold them back).
            return Err(AmqpError::conn(code::NOT_IMPLEMENTED, "active=false").caused_by((20, 20)));
        }
        ctx.send(self.id, ChannelFlowOk { active: true });
        Ok(())
    }

    /// `basic.consume`, on a named queue or on the direct reply-to pseudo-queue.
    pub(super) fn consume(&mut self, ctx: &mut ConnCtx, c: BasicConsume) -> Result<(), AmqpError> {
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
        if let Some(max) = ctx.session.broker().config.consumer_max_per_channel {
            if self.consumers.len() >= max {
                return Err(AmqpError::conn(
                    code::NOT_ALLOWED,
                    format!("reached maximum ({max}) of consumers per channel"),
                )
                .caused_by((60, 20)));
            }
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
        let shared = !c.no_ack && self.shared.prefetch_global.load(Ordering::Relaxed) != 0;
        let entry = ConsumerEntry::new(&tag, sink.clone(), c.no_ack, c.exclusive, ctx.session.id())
            .with_priority(priority)
            .with_shared_credit(shared)
            .on_channel(ch, self.consumer_prefetch);
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
        ChannelInfo::set(&self.shared.info.consumers, self.consumers.len() as u64);
        Ok(())
    }

    /// `basic.cancel`; an unknown tag is not an error, as in RabbitMQ.
    pub(super) fn cancel(&mut self, ctx: &mut ConnCtx, c: BasicCancel) -> Result<(), AmqpError> {
        self.cancel_consumer(ctx, &c.consumer_tag);
        if !c.nowait {
            ctx.send(
                self.id,
                BasicCancelOk {
                    consumer_tag: c.consumer_tag,
                },
            );
        }
        Ok(())
    }

    /// Detaches a consumer; its unacked deliveries stay with the channel until settled.
    pub(super) fn cancel_consumer(&mut self, ctx: &ConnCtx, tag: &str) {
        if let Some(rec) = self.consumers.remove(tag) {
            ChannelInfo::set(&self.shared.info.consumers, self.consumers.len() as u64);
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
        let had = self.consumers.remove(tag).is_some();
        ChannelInfo::set(&self.shared.info.consumers, self.consumers.len() as u64);
        if had && ctx.caps.consumer_cancel_notify && !self.closing {
            ctx.send(
                self.id,
                BasicCancel {
                    consumer_tag: tag.to_string(),
                    nowait: true,
                },
            );
        }
    }

    /// Lets every queue this channel consumes from deliver again (credit was freed).
    pub fn kick_consumers(&self) {
        for rec in self.consumers.values() {
            rec.queue.dispatch();
        }
    }

    /// `basic.get`: takes delivery tags from the same sequence as consumers' deliveries.
    pub(super) fn get(&mut self, ctx: &mut ConnCtx, g: BasicGet) -> Result<(), AmqpError> {
        let ch = self.id;
        let name = self.queue_name(&g.queue)?;
        let (q, got) = ctx
            .session
            .get_on(ch, &name, !g.no_ack)
            .map_err(|e| chan_err(ch, e))?;
        let info = &self.shared.info;
        match got {
            None => {
                ConnectionStats::bump(&info.get_empty, 1);
                ctx.send(
                    ch,
                    BasicGetEmpty {
                        cluster_id: String::new(),
                    },
                )
            }
            Some((msg, left)) => {
                let mut st = self.shared.st.lock();
                if msg.redelivered() {
                    ConnectionStats::bump(&info.redeliver, 1);
                }
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
                if g.no_ack {
                    ConnectionStats::bump(&info.get_no_ack, 1);
                } else {
                    st.unacked.push_back(Unacked {
                        tag,
                        queue: q,
                        msg,
                        credit: None,
                    });
                    ConnectionStats::bump(&info.get, 1);
                    ChannelInfo::set(&info.unacked, st.unacked.len() as u64);
                }
            }
        }
        Ok(())
    }
}
