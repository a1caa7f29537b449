//! Outgoing bytes of one connection and the task that writes them.
//!
//! Every producer (the connection task, and publishing tasks delivering to this connection's
//! consumers) appends encoded frames to one buffer; the writer task takes everything pending
//! and writes it with one vectored syscall. Many frames, one syscall (docs/architecture.md).

use crate::codec::frame::{body_frames, encode_deliver, encode_header, encode_method, FRAME_END};
use crate::codec::Method;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferrymq_core::stats::ConnectionStats;
use ferrymq_core::Message;
use parking_lot::Mutex;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

/// Above this many pending bytes, consumers on the connection stop receiving deliveries until
/// the writer catches up: a slow reader cannot make the broker buffer without bound.
pub const HIGH_WATER: usize = 4 * 1024 * 1024;
/// Bodies at least this large are queued by reference instead of copied into the buffer.
const ZERO_COPY_MIN: usize = 8 * 1024;

/// Pending output.
#[derive(Default)]
pub struct OutBuf {
    chunks: Vec<Bytes>,
    cur: BytesMut,
    /// Once set, the writer drains what is pending and shuts the socket.
    finish: bool,
    /// Set when the socket failed: further output is dropped.
    dead: bool,
}

impl OutBuf {
    /// The buffer to encode small frames into.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.cur
    }

    /// Appends a method frame.
    pub fn method(&mut self, channel: u16, m: &Method) {
        encode_method(&mut self.cur, channel, m);
    }

    /// Appends a method with content (get-ok, return) and the message's header and body
    /// frames.
    pub fn content(&mut self, channel: u16, m: &Method, msg: &Message, frame_max: u32) {
        encode_method(&mut self.cur, channel, m);
        self.header_and_body(channel, msg, frame_max);
    }

    /// Appends a `basic.deliver` with the message's header and body frames.
    pub fn deliver(
        &mut self,
        channel: u16,
        consumer_tag: &str,
        delivery_tag: u64,
        redelivered: bool,
        msg: &Message,
        frame_max: u32,
    ) {
        encode_deliver(
            &mut self.cur,
            channel,
            consumer_tag,
            delivery_tag,
            redelivered,
            msg.exchange(),
            msg.routing_key(),
        );
        self.header_and_body(channel, msg, frame_max);
    }

    fn header_and_body(&mut self, channel: u16, msg: &Message, frame_max: u32) {
        let body = msg.body();
        encode_header(
            &mut self.cur,
            channel,
            body.len() as u64,
            msg.raw_properties(),
        );
        let shared = msg.large_body().filter(|b| b.len() >= ZERO_COPY_MIN);
        let (cur, chunks) = (&mut self.cur, &mut self.chunks);
        body_frames(channel, body.len(), frame_max, |h, r| {
            cur.put_slice(&h);
            match shared {
                Some(b) => {
                    chunks.push(cur.split().freeze());
                    chunks.push(b.slice(r));
                }
                None => cur.put_slice(&body[r]),
            }
            cur.put_u8(FRAME_END);
        });
    }

    fn len(&self) -> usize {
        self.cur.len() + self.chunks.iter().map(Bytes::len).sum::<usize>()
    }

    fn take(&mut self) -> Vec<Bytes> {
        let mut v = std::mem::take(&mut self.chunks);
        if !self.cur.is_empty() {
            v.push(self.cur.split().freeze());
        }
        v
    }
}

/// A connection's output buffer plus the signals around it.
pub struct Outbox {
    inner: Mutex<OutBuf>,
    notify: Notify,
    pending: AtomicUsize,
    congested_hit: AtomicBool,
    writes: AtomicU64,
    /// Negotiated frame_max, used to split bodies.
    pub frame_max: AtomicU32,
}

/// Told to the connection task by the writer.
#[derive(Debug)]
pub enum WriterEvent {
    /// Output fell below the high-water mark after consumers were held back.
    Drained,
    /// The socket failed.
    Failed,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(frame_max: u32) -> Self {
        Outbox {
            inner: Mutex::new(OutBuf::default()),
            notify: Notify::new(),
            pending: AtomicUsize::new(0),
            congested_hit: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            frame_max: AtomicU32::new(frame_max),
        }
    }

    /// Runs `f` on the buffer and wakes the writer.
    pub fn with<R>(&self, f: impl FnOnce(&mut OutBuf) -> R) -> R {
        let r;
        {
            let mut g = self.inner.lock();
            r = f(&mut g);
            if g.dead {
                g.take();
            }
            self.pending.store(g.len(), Ordering::Relaxed);
        }
        self.notify.notify_one();
        r
    }

    /// Whether enough output is pending that deliveries should pause. Records the hit so the
    /// writer reports when it has drained.
    pub fn congested(&self) -> bool {
        if self.pending.load(Ordering::Relaxed) <= HIGH_WATER {
            return false;
        }
        // Flag, then look again (both SeqCst, as the writer's store-then-swap): either this
        // sees the writer's drained count, or the writer sees the flag and reports
        // `Drained`. Otherwise a reader holding until `Drained` could wait for ever.
        self.congested_hit.store(true, Ordering::SeqCst);
        self.pending.load(Ordering::SeqCst) > HIGH_WATER
    }

    /// Number of write syscalls so far (used to decide whether a heartbeat is due).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Asks the writer to flush what is pending and close the socket.
    pub fn finish(&self) {
        self.inner.lock().finish = true;
        self.notify.notify_one();
    }

    /// Writes pending output until [`Outbox::finish`] or a socket error.
    pub async fn run_writer<W: AsyncWrite + Unpin>(
        &self,
        mut sock: W,
        events: mpsc::UnboundedSender<WriterEvent>,
        stats: Arc<ConnectionStats>,
    ) {
        loop {
            let batch = {
                let mut g = self.inner.lock();
                let b = g.take();
                if b.is_empty() && g.finish {
                    break;
                }
                b
            };
            if batch.is_empty() {
                self.notify.notified().await;
                continue;
            }
            let bytes: usize = batch.iter().map(Bytes::len).sum();
            if let Err(e) = write_all_vectored(&mut sock, batch).await {
                tracing::debug!("connection write failed: {e}");
                self.inner.lock().dead = true;
                let _ = events.send(WriterEvent::Failed);
                return;
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            ConnectionStats::bump(&stats.send_oct, bytes as u64);
            ConnectionStats::bump(&stats.send_cnt, 1);
            let left = self.inner.lock().len();
            self.pending.store(left, Ordering::SeqCst);
            if left < HIGH_WATER / 2 && self.congested_hit.swap(false, Ordering::SeqCst) {
                let _ = events.send(WriterEvent::Drained);
            }
        }
        let _ = sock.shutdown().await;
    }
}

#[cfg(test)]
impl Outbox {
    /// Everything pending, in write order, so tests can decode a handler's output without a
    /// socket (bodies queued by reference included).
    pub(crate) fn take_pending(&self) -> BytesMut {
        let mut all = BytesMut::new();
        for chunk in self.inner.lock().take() {
            all.extend_from_slice(&chunk);
        }
        self.pending.store(0, Ordering::Relaxed);
        all
    }
}

/// Writes every chunk, then flushes: a TLS stream may keep encrypted bytes back when the
/// socket is full and send them only on flush (a TCP stream's flush does nothing).
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    sock: &mut W,
    mut chunks: Vec<Bytes>,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let n = {
            let slices: Vec<IoSlice<'_>> = chunks[first..]
                .iter()
                .take(64)
                .map(|c| IoSlice::new(c))
                .collect();
            sock.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 && first < chunks.len() {
            let c = &mut chunks[first];
            if c.len() <= left {
                left -= c.len();
                first += 1;
            } else {
                c.advance(left);
                left = 0;
            }
        }
    }
    sock.flush().await
}
