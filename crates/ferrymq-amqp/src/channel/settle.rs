//! Settling deliveries: basic.ack/nack/reject, basic.recover, transactions (which buffer
//! publishes and settlements until commit), the consumer timeout, and the cleanup that
//! returns everything when the channel closes.

use super::{Channel, ConnCtx, Unacked};
use crate::codec::methods::*;
use crate::error::{code, AmqpError};
use ferrymq_core::stats::{ChannelInfo, ConnectionStats};
use ferrymq_core::vhost::Routed;
use ferrymq_core::{Message, Queue, QueuedMessage};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How many queues the consumer-timeout check looks at per channel and tick (a channel
/// rarely holds deliveries of more; the rest are checked once those are settled).
const MAX_TIMEOUT_QUEUES: usize = 64;
/// Most tick marks a channel keeps for the consumer-timeout check.
const MAX_MARKS: usize = 256;

/// What a settlement does with its deliveries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Settle {
    /// Done with: the queue forgets them.
    Ack,
    /// Back to the queue, marked redelivered.
    Requeue,
    /// Dropped, or dead-lettered if the queue has a dead-letter exchange.
    Discard,
}

impl Settle {
    /// nack and reject share one flag: back to the queue, or dropped (dead-lettered).
    pub(super) fn refused(requeue: bool) -> Self {
        if requeue {
            Settle::Requeue
        } else {
            Settle::Discard
        }
    }
}

/// A transaction's work, applied only at tx.commit.
pub(super) struct TxState {
    /// Publishes buffered until commit, routed when they arrived.
    pub(super) publishes: Vec<(BasicPublish, Arc<Message>, Routed)>,
    /// Settlements buffered until commit; a rollback makes them unacked again.
    settles: Vec<(Vec<Unacked>, Settle)>,
}

impl Channel {
    /// Removes the deliveries a settle names; an unknown tag is RabbitMQ's 406.
    fn take_unacked(&self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        let mut st = self.shared.st.lock();
        let taken = self.take_unacked_locked(&mut st, tag, multiple);
        // The management API's gauge, set while the lock is held anyway.
        ChannelInfo::set(&self.shared.info.unacked, st.unacked.len() as u64);
        taken
    }

    fn take_unacked_locked(
        &self,
        st: &mut super::DeliveryState,
        tag: u64,
        multiple: bool,
    ) -> Result<Vec<Unacked>, AmqpError> {
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

    /// `basic.ack`, `basic.nack` and `basic.reject`; in a transaction, held until commit.
    pub(super) fn settle(
        &mut self,
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

    /// Hands settled deliveries back to their queues and frees the credit they held.
    fn apply_settle(&self, taken: Vec<Unacked>, how: Settle) {
        for u in &taken {
            self.shared.release_credit(u);
        }
        let info = &self.shared.info;
        if matches!(how, Settle::Ack) {
            ConnectionStats::bump(&info.ack, taken.len() as u64);
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

    /// `basic.recover` (`send_ok`) and `basic.recover-async`: every unacked delivery goes
    /// back to its queue; redelivering to the same consumer is not supported.
    pub(super) fn recover(
        &mut self,
        ctx: &mut ConnCtx,
        requeue: bool,
        send_ok: bool,
    ) -> Result<(), AmqpError> {
        if !requeue {
            return Err(AmqpError::conn(code::NOT_IMPLEMENTED, "requeue=false"));
        }
        let taken: Vec<Unacked> = self.shared.st.lock().unacked.drain(..).collect();
        ChannelInfo::set(&self.shared.info.unacked, 0);
        self.apply_settle(taken, Settle::Requeue);
        if send_ok {
            ctx.send(self.id, BasicRecoverOk {});
        }
        Ok(())
    }

    /// `tx.select`; RabbitMQ forbids mixing transactions with confirms.
    pub(super) fn tx_select(&mut self, ctx: &mut ConnCtx) -> Result<(), AmqpError> {
        let ch = self.id;
        if self.confirm.is_some() {
            return Err(AmqpError::chan(
                ch,
                code::PRECONDITION_FAILED,
                "cannot switch from confirm to tx mode",
            ));
        }
        ChannelInfo::set_flag(&self.shared.info.transactional, true);
        if self.tx.is_none() {
            self.tx = Some(TxState {
                publishes: Vec::new(),
                settles: Vec::new(),
            });
        }
        ctx.send(ch, TxSelectOk {});
        Ok(())
    }

    /// The open transaction, or the 406 a tx method outside one gets.
    fn tx_state(&mut self) -> Result<&mut TxState, AmqpError> {
        let ch = self.id;
        self.tx.as_mut().ok_or_else(|| {
            AmqpError::chan(
                ch,
                code::PRECONDITION_FAILED,
                "channel is not transactional",
            )
        })
    }

    /// `tx.commit`: routes the buffered publishes, then applies the buffered settlements.
    pub(super) fn tx_commit(&mut self, ctx: &mut ConnCtx) -> Result<(), AmqpError> {
        let tx = self.tx_state()?;
        let publishes = std::mem::take(&mut tx.publishes);
        let settles = std::mem::take(&mut tx.settles);
        let mut pending = ferrymq_core::Pending::default();
        for (p, msg, routed) in publishes {
            // Each publish was checked and routed when it arrived. A queue deleted since
            // refuses it; nothing makes the commit fail half-way and lose the settlements
            // below.
            match ctx.session.deliver(routed, msg.clone()) {
                Ok(outcome) => pending.merge(self.published(ctx, &p, msg, outcome)?),
                Err(e) => tracing::debug!("transactional publish dropped at commit: {e:?}"),
            }
        }
        for (taken, how) in settles {
            self.apply_settle(taken, how);
        }
        // As with confirms, commit-ok promises that persistent messages are on disk.
        self.commit_waiting = Some(pending);
        self.flush_confirms(ctx)
    }

    /// `tx.rollback`: drops the buffered publishes and un-settles the buffered settlements.
    pub(super) fn tx_rollback(&mut self, ctx: &mut ConnCtx) -> Result<(), AmqpError> {
        let ch = self.id;
        let tx = self.tx_state()?;
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
        ChannelInfo::set(&self.shared.info.unacked, st.unacked.len() as u64);
        drop(st);
        ctx.send(ch, TxRollbackOk {});
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
        // The oldest unacked delivery of each queue, taken under the channel lock; the
        // queues' timeouts are read after it is released, because delivering queues take
        // their own lock first and the channel's second (taking them the other way round
        // here would deadlock).
        let mut oldest: Vec<(Arc<Queue>, u64)> = Vec::new();
        {
            let st = self.shared.st.lock();
            if self.marks.back().is_none_or(|m| m.0 != st.next_tag) {
                self.marks.push_back((st.next_tag, now));
            }
            for u in &st.unacked {
                if oldest.len() >= MAX_TIMEOUT_QUEUES {
                    break;
                }
                if !oldest.iter().any(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
                    oldest.push((u.queue.clone(), u.tag));
                }
            }
        }
        let Some(first) = oldest.iter().map(|(_, t)| *t).min() else {
            // Nothing unacked: only the latest mark matters for what comes next.
            while self.marks.len() > 1 {
                self.marks.pop_front();
            }
            return None;
        };
        while self.marks.len() > 1 && self.marks.front().is_some_and(|m| m.0 < first) {
            self.marks.pop_front();
        }
        // A delivery that is never acked would otherwise keep every later mark: drop the
        // second oldest. Ages are then read from a later mark, so they only look younger
        // and a channel is never closed early.
        while self.marks.len() > MAX_MARKS {
            self.marks.remove(1);
        }
        for (q, tag) in oldest {
            let Some(&(_, at)) = self.marks.iter().find(|m| m.0 >= tag) else {
                continue;
            };
            let age = now.saturating_sub(at);
            let timeout = ctx
                .session
                .consumer_timeout(&q)
                .map(|d| d.as_millis() as u64);
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

/// Batches deliveries per queue so each queue is locked once per settlement.
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
