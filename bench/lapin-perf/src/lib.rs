//! `ferrymq perf throughput` with lapin's publishers and consumers, used the way applications
//! use it: each `basic_publish` awaited before the next (lapin resolves it once the frames
//! are written, so about one publish per write), deliveries read one by one from a
//! `Consumer` stream, acks sent through the delivery's acker. What the broker costs per
//! message under this load is what applications see; `ferrymq perf`'s own client batches far
//! more per syscall. Same flags, scenarios and final JSON line as `ferrymq perf throughput`
//! (topology, prefill and cleanup go through its lean client).
//!
//! A crate of its own so that lapin (about 1.8 MB) stays out of the broker's binary.

use anyhow::{bail, Context};
use ferrymq::perf::{histogram, LoadClient, RunStats, Target, ThroughputArgs};
use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Deliveries a consumer records latencies of locally before merging them into the run's.
const MERGE_EVERY: u64 = 256;

/// lapin with the library's defaults (its own executor and reactor threads).
pub struct Lapin;

impl LoadClient for Lapin {
    type Conn = Connection;

    fn connect(
        &self,
        args: &ThroughputArgs,
        target: &Target,
    ) -> impl Future<Output = anyhow::Result<Connection>> + Send {
        let (uri, tls) = (args.uri.clone(), target.uri.tls);
        async move {
            if tls {
                bail!("lapin-perf supports amqp:// only (built without lapin's TLS)");
            }
            Connection::connect(&uri, ConnectionProperties::default())
                .await
                .context("lapin connect")
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

/// Nanoseconds since the Unix epoch: the timestamp carried in perf message bodies.
fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Publishes as one application thread would: build the message, `basic_publish(..).await`,
/// repeat; with `--confirm N`, at most N confirms outstanding, awaited oldest first.
async fn publish(
    conn: Connection,
    a: &ThroughputArgs,
    index: usize,
    s: &RunStats,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    if a.confirm > 0 {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    let (exchange, key) = if a.fanout {
        (a.exchange(), String::new())
    } else {
        (String::new(), a.queue(index))
    };
    let props = BasicProperties::default().with_delivery_mode(if a.persistent { 2 } else { 1 });
    let mut inflight: VecDeque<PublisherConfirm> = VecDeque::new();
    let (mut confirmed, mut nacked) = (0u64, 0u64);
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
        body[..8].copy_from_slice(&now_nanos().to_be_bytes());
        body[8..16].copy_from_slice(&sent.to_be_bytes());
        let p = if a.expiration_spread > 0 {
            let spread = a.expiration_spread;
            let ttl = spread + sent.wrapping_mul(2_654_435_761) % spread;
            props.clone().with_expiration(ttl.to_string().into())
        } else {
            props.clone()
        };
        let confirm = ch
            .basic_publish(&exchange, &key, BasicPublishOptions::default(), &body, p)
            .await
            .context("basic_publish")?;
        sent += 1;
        s.add_published(1);
        if a.confirm > 0 {
            inflight.push_back(confirm);
            while inflight.len() as u64 >= a.confirm {
                match inflight.pop_front() {
                    Some(c) => tally(c.await?, &mut confirmed, &mut nacked),
                    None => break,
                }
            }
        }
    }
    if a.confirm > 0 {
        // The last confirms, so counts are exact (bounded: the broker may be stopping).
        let rest = async {
            for c in inflight {
                tally(c.await?, &mut confirmed, &mut nacked);
            }
            anyhow::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), rest).await;
        s.add_confirms(confirmed, nacked);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "done")).await;
    Ok(())
}

fn tally(c: Confirmation, confirmed: &mut u64, nacked: &mut u64) {
    match c {
        Confirmation::Ack(_) => *confirmed += 1,
        Confirmation::Nack(_) => *nacked += 1,
        Confirmation::NotRequested => {}
    }
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
    let ch = conn.create_channel().await?;
    if !no_ack {
        ch.basic_qos(a.prefetch, BasicQosOptions::default()).await?;
    }
    let mut consumer = ch
        .basic_consume(
            queue,
            "",
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
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
            d = consumer.next() => d,
            _ = stop.changed() => break Ok(()),
        };
        let d = match next {
            Some(Ok(d)) => d,
            _ if s.stopping() => break Ok(()),
            Some(Err(e)) => break Err(e).context("consumer stream"),
            None => bail!("broker ended the consumer"),
        };
        count += 1;
        s.add_consumed(1);
        if let Some(ts) = d.data.get(..8) {
            let sent = u64::from_be_bytes(ts.try_into().unwrap_or([0; 8]));
            let _ = local.record((now_nanos().saturating_sub(sent) / 1000).max(1));
        }
        if !no_ack && count % a.ack_every == 0 {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .context("basic_ack")?;
        }
        if count - merged >= MERGE_EVERY {
            s.add_latencies(&mut local);
            merged = count;
        }
    };
    s.add_latencies(&mut local);
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "done")).await;
    result
}
