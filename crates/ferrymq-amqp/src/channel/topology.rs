//! Topology methods: exchange and queue declare, delete, bind, unbind and purge.
//!
//! Each is a thin translation onto the session, which checks permissions and arguments;
//! what stays here is AMQP's own conventions (nowait, the channel's last declared queue).

use super::{chan_err, Channel, ConnCtx};
use crate::codec::methods::*;
use crate::error::{code, AmqpError};
use ferrymq_core::exchange::ExchangeOptions;
use ferrymq_core::QueueOptions;

impl Channel {
    /// `exchange.declare`, passive or not.
    pub(super) fn exchange_declare(
        &mut self,
        ctx: &mut ConnCtx,
        d: ExchangeDeclare,
    ) -> Result<(), AmqpError> {
        let ch = self.id;
        let opts = ExchangeOptions {
            durable: d.durable,
            auto_delete: d.auto_delete,
            internal: d.internal,
            arguments: d.arguments,
        };
        let saved = ctx
            .session
            .declare_exchange(&d.exchange, &d.kind, opts, d.passive)
            .map_err(|e| chan_err(ch, e))?;
        if !d.nowait {
            self.reply_saved(ctx, saved, ExchangeDeclareOk {});
        }
        Ok(())
    }

    /// `exchange.delete`.
    pub(super) fn exchange_delete(
        &mut self,
        ctx: &mut ConnCtx,
        d: ExchangeDelete,
    ) -> Result<(), AmqpError> {
        let ch = self.id;
        let saved = ctx
            .session
            .delete_exchange(&d.exchange, d.if_unused)
            .map_err(|e| chan_err(ch, e))?;
        if !d.nowait {
            self.reply_saved(ctx, saved, ExchangeDeleteOk {});
        }
        Ok(())
    }

    /// `exchange.bind` (RabbitMQ's exchange-to-exchange extension).
    pub(super) fn exchange_bind(
        &mut self,
        ctx: &mut ConnCtx,
        b: ExchangeBind,
    ) -> Result<(), AmqpError> {
        let ch = self.id;
        let saved = ctx
            .session
            .bind_exchange(&b.destination, &b.source, &b.routing_key, b.arguments)
            .map_err(|e| chan_err(ch, e))?;
        if !b.nowait {
            self.reply_saved(ctx, saved, ExchangeBindOk {});
        }
        Ok(())
    }

    /// `exchange.unbind`.
    pub(super) fn exchange_unbind(
        &mut self,
        ctx: &mut ConnCtx,
        b: ExchangeUnbind,
    ) -> Result<(), AmqpError> {
        let ch = self.id;
        let saved = ctx
            .session
            .unbind_exchange(&b.destination, &b.source, &b.routing_key, &b.arguments)
            .map_err(|e| chan_err(ch, e))?;
        if !b.nowait {
            self.reply_saved(ctx, saved, ExchangeUnbindOk {});
        }
        Ok(())
    }

    /// The queue a method names; AMQP lets an empty name mean the last one declared here.
    pub(super) fn queue_name(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.last_queue.clone().ok_or_else(|| {
            AmqpError::chan(self.id, code::NOT_FOUND, "no previously declared queue")
        })
    }

    /// `queue.declare`; remembers the queue for later methods that leave the name empty.
    pub(super) fn queue_declare(
        &mut self,
        ctx: &mut ConnCtx,
        d: QueueDeclare,
    ) -> Result<(), AmqpError> {
        let ch = self.id;
        // Clients probe for direct reply-to support this way, and RPC servers for their
        // caller's reply consumer.
        if d.passive {
            if let Some(found) = ctx.session.reply_to_declare(&d.queue) {
                let consumers = found.map_err(|e| chan_err(ch, e))?;
                if !d.nowait {
                    let ok = QueueDeclareOk {
                        queue: d.queue,
                        message_count: 0,
                        consumer_count: consumers,
                    };
                    self.reply_saved(ctx, Default::default(), ok);
                }
                return Ok(());
            }
        }
        let opts = QueueOptions {
            durable: d.durable,
            exclusive: d.exclusive,
            auto_delete: d.auto_delete,
            arguments: d.arguments,
        };
        let (q, counts, saved) = ctx
            .session
            .declare_queue(&d.queue, opts, d.passive)
            .map_err(|e| chan_err(ch, e))?;
        self.last_queue = Some(q.name.clone());
        if !d.nowait {
            let ok = QueueDeclareOk {
                queue: q.name.clone(),
                message_count: counts.messages as u32,
                consumer_count: counts.consumers as u32,
            };
            self.reply_saved(ctx, saved, ok);
        }
        Ok(())
    }

    /// `queue.bind`.
    pub(super) fn queue_bind(&mut self, ctx: &mut ConnCtx, b: QueueBind) -> Result<(), AmqpError> {
        let ch = self.id;
        let queue = self.queue_name(&b.queue)?;
        // The spec's shortcut: with both names empty, the key is the last queue's name.
        let key = if b.queue.is_empty() && b.routing_key.is_empty() {
            queue.clone()
        } else {
            b.routing_key
        };
        let saved = ctx
            .session
            .bind_queue(&queue, &b.exchange, &key, b.arguments)
            .map_err(|e| chan_err(ch, e))?;
        if !b.nowait {
            self.reply_saved(ctx, saved, QueueBindOk {});
        }
        Ok(())
    }

    /// `queue.unbind`; it has no nowait flag, so the ok is always sent.
    pub(super) fn queue_unbind(
        &mut self,
        ctx: &mut ConnCtx,
        b: QueueUnbind,
    ) -> Result<(), AmqpError> {
        let ch = self.id;
        let queue = self.queue_name(&b.queue)?;
        let saved = ctx
            .session
            .unbind_queue(&queue, &b.exchange, &b.routing_key, &b.arguments)
            .map_err(|e| chan_err(ch, e))?;
        self.reply_saved(ctx, saved, QueueUnbindOk {});
        Ok(())
    }

    /// `queue.purge`.
    pub(super) fn queue_purge(
        &mut self,
        ctx: &mut ConnCtx,
        p: QueuePurge,
    ) -> Result<(), AmqpError> {
        let ch = self.id;
        let queue = self.queue_name(&p.queue)?;
        let n = ctx
            .session
            .purge_queue(&queue)
            .map_err(|e| chan_err(ch, e))?;
        if !p.nowait {
            let ok = QueuePurgeOk {
                message_count: n as u32,
            };
            self.reply_saved(ctx, Default::default(), ok);
        }
        Ok(())
    }

    /// `queue.delete`.
    pub(super) fn queue_delete(
        &mut self,
        ctx: &mut ConnCtx,
        d: QueueDelete,
    ) -> Result<(), AmqpError> {
        let ch = self.id;
        let queue = self.queue_name(&d.queue)?;
        let (n, saved) = ctx
            .session
            .delete_queue(&queue, d.if_unused, d.if_empty)
            .map_err(|e| chan_err(ch, e))?;
        if !d.nowait {
            let ok = QueueDeleteOk {
                message_count: n as u32,
            };
            self.reply_saved(ctx, saved, ok);
        }
        Ok(())
    }
}
