//! `ferrymq perf throughput` with amqprs' publishers and consumers, used the way applications
//! use it: one channel per connection, each `basic_publish(..).await` before the next (amqprs
//! resolves it once the frames are queued for the connection's writer task, which writes each
//! publish with its own `write`), deliveries read one by one from `basic_consume_rx`'s
//! receiver, acks with `basic_ack` (`--ack-every N`, `multiple`). With `--confirm N` at most N
//! publishes are unconfirmed, counted by a channel callback (amqprs reports confirms only
//! there). Same flags, scenarios and final JSON line as `ferrymq perf throughput` and
//! `lapin-perf` (topology, prefill and cleanup go through `ferrymq perf`'s lean client).
//!
//! A crate of its own, like bench/lapin-perf, so that amqprs stays out of the broker's binary.

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use anyhow::{bail, Context};
use ferrymq::perf::{histogram, LoadClient, RunStats, Target, ThroughputArgs};
use hdrhistogram::Histogram;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Deliveries a consumer records latencies of locally before merging them into the run's.
const MERGE_EVERY: u64 = 256;

/// amqprs with the library's defaults (its reader and writer tasks on the caller's runtime).
pub struct Amqprs;

impl LoadClient for Amqprs {
    type Conn = Connection;

    fn connect(
        &self,
        _args: &ThroughputArgs,
        target: &Target,
    ) -> impl Future<Output = anyhow::Result<Connection>> + Send {
        let uri = target.uri.clone();
        async move {
            if uri.tls {
                bail!("amqprs-perf supports amqp:// only (built without amqprs' TLS)");
            }
            let port = match uri.addr.rsplit_once(':') {
                Some((_, p)) => p.parse().context("port of the URI")?,
                None => 5672,
            };
            let args = OpenConnectionArguments::new(&uri.host, port, &uri.user, &uri.password)
                .virtual_host(&uri.vhost)
                .finish();
            Connection::open(&args)
                .await
                .map_err(|e| anyhow::anyhow!("amqprs connect: {e}"))
        }
    }

    async fn publish(
        conn: Connection,
        args: ThroughputArgs,
        index: usize,
        stats: Arc<RunStats>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        publish(conn, &args, index, &stats, stop).await
    }

    async fn consume(
        conn: Connection,
        args: ThroughputArgs,
        queue: String,
        stats: Arc<RunStats>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        consume(conn, &args, &queue, &stats, stop).await
    }
}

fn amqp(e: amqprs::error::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Nanoseconds since the Unix epoch: the timestamp carried in perf message bodies.
fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Settled publisher confirms (acked, nacked), published through a watch channel so that
/// the publisher can wait for its window to open.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Settled {
    pub acked: u64,
    pub nacked: u64,
}

/// Counts confirms by delivery tag: every tag up to `floor` is settled, `above` holds the
/// ones settled one by one beyond it (a `multiple` confirm settles all unsettled tags up to
/// its own).
#[derive(Default)]
pub struct ConfirmCounter {
    floor: u64,
    above: BTreeSet<u64>,
    settled: Settled,
}

impl ConfirmCounter {
    /// Settles `tag` (and with `multiple` every lower tag); returns how many were new.
    pub fn settle(&mut self, tag: u64, multiple: bool, ack: bool) -> u64 {
        let new = if tag <= self.floor || self.above.contains(&tag) {
            0
        } else if multiple {
            let singles = self.above.range(..=tag).count() as u64;
            self.above = self.above.split_off(&(tag + 1));
            let n = tag - self.floor - singles;
            self.floor = tag;
            n
        } else {
            self.above.insert(tag);
            1
        };
        while self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        if ack {
            self.settled.acked += new;
        } else {
            self.settled.nacked += new;
        }
        new
    }

    pub fn settled(&self) -> Settled {
        self.settled
    }
}

/// The publisher channel's callback: confirms go to the counter, the rest is ignored
/// (nothing is published mandatory; a server close shows up as a failing publish).
struct Confirms {
    counter: ConfirmCounter,
    tx: watch::Sender<Settled>,
}

#[async_trait::async_trait]
impl ChannelCallback for Confirms {
    async fn close(
        &mut self,
        _channel: &Channel,
        _close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn cancel(
        &mut self,
        _channel: &Channel,
        _cancel: Cancel,
    ) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(
        &mut self,
        _channel: &Channel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        if self.counter.settle(ack.delivery_tag(), ack.mutiple(), true) > 0 {
            self.tx.send_replace(self.counter.settled());
        }
    }
    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        if self
            .counter
            .settle(nack.delivery_tag(), nack.multiple(), false)
            > 0
        {
            self.tx.send_replace(self.counter.settled());
        }
    }
    async fn publish_return(
        &mut self,
        _channel: &Channel,
        _ret: Return,
        _basic_properties: BasicProperties,
        _content: Vec<u8>,
    ) {
    }
}

/// Publishes as one application task would: build the message, `basic_publish(..).await`,
/// repeat; with `--confirm N`, waits while N confirms are outstanding.
async fn publish(
    conn: Connection,
    a: &ThroughputArgs,
    index: usize,
    s: &RunStats,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let ch = conn.open_channel(None).await.map_err(amqp)?;
    let (settled_tx, mut settled) = watch::channel(Settled::default());
    if a.confirm > 0 {
        ch.register_callback(Confirms {
            counter: ConfirmCounter::default(),
            tx: settled_tx,
        })
        .await
        .map_err(amqp)?;
        ch.confirm_select(ConfirmSelectArguments::default())
            .await
            .map_err(amqp)?;
    }
    let (exchange, key) = if a.fanout {
        (a.exchange(), String::new())
    } else {
        (String::new(), a.queue(index))
    };
    let args = BasicPublishArguments::new(&exchange, &key);
    let props = BasicProperties::default()
        .with_delivery_mode(if a.persistent { 2 } else { 1 })
        .finish();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut body = vec![0u8; a.size];
    loop {
        if *stop.borrow() || s.stopping() || (a.pmessages > 0 && sent >= a.pmessages) {
            break;
        }
        if a.rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / a.rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if a.confirm > 0 {
            let window = a.confirm;
            let open = settled.wait_for(|c| sent - (c.acked + c.nacked) < window);
            open.await.context("confirm callback gone")?;
        }
        body[..8].copy_from_slice(&now_nanos().to_be_bytes());
        body[8..16].copy_from_slice(&sent.to_be_bytes());
        let p = if a.expiration_spread > 0 {
            let spread = a.expiration_spread;
            let ttl = spread + sent.wrapping_mul(2_654_435_761) % spread;
            props.clone().with_expiration(&ttl.to_string()).finish()
        } else {
            props.clone()
        };
        ch.basic_publish(p, body.clone(), args.clone())
            .await
            .map_err(amqp)
            .context("basic_publish")?;
        sent += 1;
        s.add_published(1);
    }
    if a.confirm > 0 {
        // The last confirms, so counts are exact (bounded: the broker may be stopping).
        let all = settled.wait_for(|c| c.acked + c.nacked >= sent);
        let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
        let c = *settled.borrow();
        s.add_confirms(c.acked, c.nacked);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ch.close()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
    Ok(())
}

/// Consumes from `queue` delivery by delivery; with `--ack-every N`, every Nth delivery is
/// acked with `multiple`.
async fn consume(
    conn: Connection,
    a: &ThroughputArgs,
    queue: &str,
    s: &RunStats,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let no_ack = a.ack_every == 0;
    let ch = conn.open_channel(None).await.map_err(amqp)?;
    if !no_ack {
        ch.basic_qos(BasicQosArguments::new(0, a.prefetch, false))
            .await
            .map_err(amqp)?;
    }
    let (_tag, mut rx) = ch
        .basic_consume_rx(
            BasicConsumeArguments::new(queue, "")
                .manual_ack(!no_ack)
                .finish(),
        )
        .await
        .map_err(amqp)?;
    let mut local: Histogram<u64> = histogram();
    let (mut count, mut merged) = (0u64, 0u64);
    let started = Instant::now();
    let result = loop {
        if a.consume_rate > 0 {
            let due = Duration::from_secs_f64(count as f64 / a.consume_rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break Ok(()),
                }
            }
        }
        let next = tokio::select! {
            m = rx.recv() => m,
            _ = stop.changed() => break Ok(()),
        };
        let m = match next {
            Some(m) => m,
            None if s.stopping() => break Ok(()),
            None => bail!("broker ended the consumer"),
        };
        count += 1;
        s.add_consumed(1);
        if let Some(ts) = m.content.as_ref().and_then(|c| c.get(..8)) {
            let sent = u64::from_be_bytes(ts.try_into().unwrap_or([0; 8]));
            let _ = local.record((now_nanos().saturating_sub(sent) / 1000).max(1));
        }
        if !no_ack && count % a.ack_every == 0 {
            let Some(tag) = m.deliver.as_ref().map(|d| d.delivery_tag()) else {
                bail!("delivery without basic.deliver");
            };
            ch.basic_ack(BasicAckArguments::new(tag, true))
                .await
                .map_err(amqp)
                .context("basic_ack")?;
        }
        if count - merged >= MERGE_EVERY {
            s.add_latencies(&mut local);
            merged = count;
        }
    };
    s.add_latencies(&mut local);
    let _ = tokio::time::timeout(Duration::from_secs(2), ch.close()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::ConfirmCounter;

    #[test]
    fn confirms_are_counted_once_whether_single_or_multiple() {
        let mut c = ConfirmCounter::default();
        assert_eq!(c.settle(2, false, true), 1);
        assert_eq!(c.settle(4, false, false), 1);
        assert_eq!(c.settle(5, true, true), 3);
        assert_eq!(c.settle(3, false, true), 0);
        assert_eq!(c.settle(6, false, true), 1);
        assert_eq!(c.settle(6, true, true), 0);
        let s = c.settled();
        assert_eq!((s.acked, s.nacked), (5, 1));
    }
}
