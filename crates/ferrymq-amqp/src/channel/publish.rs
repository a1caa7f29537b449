//! Publishing: content assembly (basic.publish, then a header and body frames), routing
//! through the session, basic.return for unroutable mandatory messages, and publisher
//! confirms.

use super::{chan_err, Channel, ConnCtx, REPLY_TO};
use crate::codec::methods::*;
use crate::codec::Method;
use crate::error::{code, AmqpError};
use bytes::{Bytes, BytesMut};
use ferrymq_core::stats::{ChannelInfo, ConnectionStats};
use ferrymq_core::vhost::{PublishOutcome, REPLY_TO_PREFIX};
use ferrymq_core::wire::PropertySummary;
use ferrymq_core::Pending;
use ferrymq_core::{FieldValue, Message, Properties};
use std::collections::VecDeque;
use std::sync::Arc;

/// A publish whose header or body frames are still arriving.
pub(super) struct PendingContent {
    publish: BasicPublish,
    body_size: u64,
    properties: Option<(Bytes, PropertySummary)>,
    body: BytesMut,
    /// A body that arrived in one frame, kept without copying.
    single: Option<Bytes>,
}

/// Publisher confirms of a channel in confirm mode. Every publish up to `ackable` may be
/// acked; publishes that wait for their data to reach the disk (or that follow one that
/// does, since confirms go out in order) queue in `waiting` with their group-commit ticket.
#[derive(Default)]
pub(super) struct Confirms {
    next_seq: u64,
    acked_upto: u64,
    ackable: u64,
    waiting: VecDeque<Waiting>,
}

/// A confirm held back until group commit catches up (or behind one that is).
struct Waiting {
    seq: u64,
    /// Settled once group commit reached its ticket (empty: at once); nacked if a sync of a
    /// log it went to failed.
    pending: Pending,
    /// Refused by a queue: gets basic.nack instead of basic.ack.
    nack: bool,
}

impl Channel {
    /// `basic.publish`: only opens the content; the message is routed once its body is in.
    pub(super) fn publish(&mut self, ctx: &mut ConnCtx, p: BasicPublish) -> Result<(), AmqpError> {
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
        Ok(())
    }

    /// `confirm.select`; RabbitMQ forbids mixing confirms with transactions.
    pub(super) fn confirm_select(
        &mut self,
        ctx: &mut ConnCtx,
        c: ConfirmSelect,
    ) -> Result<(), AmqpError> {
        let ch = self.id;
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
        ChannelInfo::set_flag(&self.shared.info.confirm, true);
        if !c.nowait {
            ctx.send(ch, ConfirmSelectOk {});
        }
        Ok(())
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

    /// Builds the message once its body is complete; in a transaction it is only buffered.
    fn finish_content(&mut self, ctx: &mut ConnCtx) -> Result<(), AmqpError> {
        let ch = self.id;
        let Some(pc) = self.content.take() else {
            return Ok(());
        };
        let Some((raw, summary)) = pc.properties else {
            return Ok(());
        };
        if let Some(mode) = summary.delivery_mode.filter(|m| *m != 1 && *m != 2) {
            return Err(AmqpError::chan(
                ch,
                code::PRECONDITION_FAILED,
                format!("invalid message: {{delivery_mode_unknown,{mode}}}"),
            )
            .caused_by((60, 40)));
        }
        let body = pc.single.unwrap_or_else(|| pc.body.freeze());
        let (exchange, key) = (&pc.publish.exchange, &pc.publish.routing_key);
        let is_reply = summary
            .reply_to
            .is_some_and(|(a, b)| &raw[a..b] == REPLY_TO.as_bytes());
        let msg = if is_reply || summary.sender_selected {
            // Only reply-to and CC/BCC publishes pay for decoding their properties.
            let mut props = ferrymq_core::wire::decode_properties(&raw)
                .map_err(|e| AmqpError::conn(code::SYNTAX_ERROR, e))?;
            if is_reply {
                let Some(token) = &self.reply_token else {
                    return Err(AmqpError::chan(
                        ch,
                        code::PRECONDITION_FAILED,
                        "fast reply consumer does not exist",
                    )
                    .caused_by((60, 40)));
                };
                props.reply_to = Some(format!("{REPLY_TO_PREFIX}{token}"));
            }
            let bcc = sender_selected(ch, &mut props)?;
            if is_reply || bcc.is_some() {
                Message::from_properties(exchange, key, &props, body)
                    .map(|m| m.with_extra_keys(bcc.unwrap_or_default()))
            } else {
                Message::new(exchange, key, &raw, body)
            }
        } else {
            Message::new(exchange, key, &raw, body)
        };
        let msg = Arc::new(msg.map_err(|e| AmqpError::conn(code::SYNTAX_ERROR, e))?);
        // Refused as RabbitMQ refuses it: a message that can never expire is not accepted.
        if let Some(Err(e)) = msg.expiration() {
            let (a, b) = summary.expiration.unwrap_or_default();
            return Err(AmqpError::chan(
                ch,
                code::PRECONDITION_FAILED,
                crate::erlang_text::invalid_expiration(&raw[a..b], &e),
            )
            .caused_by((60, 40)));
        }
        if let Some(tx) = &mut self.tx {
            // Checked and routed now, as RabbitMQ does with a transactional publish: a
            // commit must not fail half-way, and it goes where the bindings sent it when it
            // arrived.
            let routed = ctx
                .session
                .route_on(ch, exchange, &msg)
                .map_err(|e| chan_err(ch, e).caused_by((60, 40)))?;
            tx.publishes.push((pc.publish, msg, routed));
            return Ok(());
        }
        self.route(ctx, &pc.publish, msg).map(|_| ())
    }

    /// Routes a message and records its confirm. Outside confirm mode, returns the writes
    /// group commit must make durable (a transaction's commit-ok waits for them).
    pub(super) fn route(
        &mut self,
        ctx: &mut ConnCtx,
        p: &BasicPublish,
        msg: Arc<Message>,
    ) -> Result<Pending, AmqpError> {
        let outcome = ctx
            .session
            .publish_on(self.id, &p.exchange, msg.clone())
            .map_err(|e| chan_err(self.id, e).caused_by((60, 40)))?;
        self.published(ctx, p, msg, outcome)
    }

    /// What follows a publish once it is enqueued: flow credit, `basic.return` of an
    /// unroutable mandatory publish, the confirm.
    pub(super) fn published(
        &mut self,
        ctx: &mut ConnCtx,
        p: &BasicPublish,
        msg: Arc<Message>,
        outcome: PublishOutcome,
    ) -> Result<Pending, AmqpError> {
        let ch = self.id;
        let stats = &ctx.session.info().meta.stats;
        let info = &self.shared.info;
        ConnectionStats::bump(&stats.publish, 1);
        ConnectionStats::bump(&info.publish, 1);
        if outcome.routed == 0 && outcome.refused == 0 {
            let (c, i) = match p.mandatory {
                true => (&stats.return_unroutable, &info.return_unroutable),
                false => (&stats.drop_unroutable, &info.drop_unroutable),
            };
            ConnectionStats::bump(c, 1);
            ConnectionStats::bump(i, 1);
        }
        if self.confirm.is_some() {
            ConnectionStats::bump(&stats.confirm, 1);
            ConnectionStats::bump(&info.confirmed, 1);
        }
        if !outcome.pending.is_empty() {
            // Every copy written counts against the connection's flow credit.
            let bytes = msg.body_size() as u64 * outcome.routed as u64;
            let sync = &ctx.sync;
            let synced = || sync.as_ref().map_or(u64::MAX, |r| *r.borrow());
            ctx.flow.written(synced, outcome.pending.ticket(), bytes);
        }
        // A queue that refused it (full, with reject-publish) was routed to: RabbitMQ only
        // nacks that, it does not return it.
        if outcome.routed == 0 && outcome.refused == 0 && p.mandatory {
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
        let Some(c) = &mut self.confirm else {
            return Ok(outcome.pending);
        };
        c.next_seq += 1;
        let seq = c.next_seq;
        let synced = outcome.pending.ticket() <= ctx.synced();
        let nack = outcome.refused > 0 || (synced && outcome.pending.lost());
        if !nack && synced && c.waiting.is_empty() {
            c.ackable = seq;
        } else {
            c.waiting.push_back(Waiting {
                seq,
                pending: if synced {
                    Pending::default()
                } else {
                    outcome.pending
                },
                nack,
            });
            if nack {
                self.flush_confirms(ctx)?;
            }
        }
        if let Some(c) = &self.confirm {
            ChannelInfo::set(&self.shared.info.unconfirmed, c.next_seq - c.acked_upto);
        }
        Ok(Pending::default())
    }

    /// Whether confirms, held replies or a tx.commit-ok wait for group commit.
    pub fn awaits_sync(&self) -> bool {
        self.commit_waiting.is_some()
            || self.holds_replies()
            || self.confirm.as_ref().is_some_and(|c| !c.waiting.is_empty())
    }

    /// Sends the publisher confirms that are due: everything processed in the last batch of
    /// frames whose data is durable, as one `basic.ack` with `multiple` when several are due,
    /// and a `basic.nack` for each refused publish, in publish order.
    ///
    /// A transaction whose persistent messages were lost to a failed fsync cannot be
    /// committed: that is returned as a connection error (541), which is what the broker
    /// would raise for any internal failure.
    pub fn flush_confirms(&mut self, ctx: &ConnCtx) -> Result<(), AmqpError> {
        self.flush_held(ctx)?;
        let synced = ctx.synced();
        if let Some(p) = self.commit_waiting.take_if(|p| p.ticket() <= synced) {
            if p.lost() {
                return Err(AmqpError::conn(
                    code::INTERNAL_ERROR,
                    "tx.commit failed: an fsync of a queue's log failed, so the transaction's \
                     persistent messages may be lost",
                ));
            }
            ctx.send(self.id, TxCommitOk {});
        }
        let Some(c) = &mut self.confirm else {
            return Ok(());
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
            if w.pending.ticket() > synced {
                break;
            }
            let (seq, nack) = (w.seq, w.nack || w.pending.lost());
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
        ChannelInfo::set(&self.shared.info.unconfirmed, c.next_seq - c.acked_upto);
        Ok(())
    }
}

/// Checks the `CC` and `BCC` headers (arrays of routing keys, as RabbitMQ requires) and takes
/// `BCC` out of the properties: its keys route the message but no consumer sees them.
/// Returns the `BCC` keys if the header was there.
fn sender_selected(ch: u16, props: &mut Properties) -> Result<Option<Vec<String>>, AmqpError> {
    let Some(headers) = props.headers.as_mut() else {
        return Ok(None);
    };
    for name in ["CC", "BCC"] {
        match headers.get(name) {
            None | Some(FieldValue::Array(_)) => {}
            Some(other) => {
                return Err(AmqpError::chan(
                    ch,
                    code::PRECONDITION_FAILED,
                    format!(
                        "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                        other.rabbit_type_name()
                    ),
                )
                .caused_by((60, 40)))
            }
        }
    }
    let bcc = match headers.get("BCC") {
        Some(FieldValue::Array(a)) => a
            .iter()
            .filter_map(FieldValue::as_str)
            .map(str::to_string)
            .collect(),
        _ => return Ok(None),
    };
    headers.remove("BCC");
    Ok(Some(bcc))
}
