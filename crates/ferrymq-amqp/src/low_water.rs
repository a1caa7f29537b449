//! Fewer wake-ups for connections that trickle small frames (ADR 0013).
//!
//! A client that writes one publish per syscall (most client libraries) sends a segment per
//! message; each segment that reaches an idle broker wakes a worker out of `epoll_wait`, and
//! on a small VM one such wake-up costs 15-20 µs of CPU against under 1 µs of work per
//! message (docs/benchmarks.md). When a connection has been reading many small chunks at a
//! high byte rate, its socket's receive low-water mark (`SO_RCVLOWAT`) is raised so that the
//! kernel signals it readable only once about [`TARGET_WAIT`] worth of its traffic is queued;
//! a deadline lowers it back to one byte (which makes Linux signal whatever is queued) when no
//! read completed for [`MAX_WAIT`], so a client that stops, or waits for an answer, is read
//! at most about 2 ms later (tokio's timers have millisecond resolution). A connection the
//! broker wrote to since its last read may be waiting for that answer (confirms, RPC replies,
//! deliveries it consumes): it is never held back this way.

use std::os::fd::RawFd;
use std::time::Duration;
use tokio::time::Instant;

/// Traffic a raised low-water mark waits for, in time at the measured byte rate.
const TARGET_WAIT: Duration = Duration::from_micros(500);
/// Longest a raised mark stays without a completed read.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(1);
/// Window over which the read rate is measured.
const WINDOW: Duration = Duration::from_millis(1);
/// Reads at least this large mean the client batches by itself.
const SMALL_READ: usize = 4096;
/// Reads per window below which waking per read is cheap enough.
const MIN_READS: u32 = 4;
/// Lowest and highest mark worth setting (below, fewer than a few publishes per wake-up).
const MIN_LEVEL: usize = 256;
const MAX_LEVEL: usize = 4096;
/// Most segments a raised mark waits for (below a new connection's congestion window).
const MAX_SEGMENTS: usize = 8;
/// First pause before a mark that held a request hostage is raised again; doubled on each
/// repeat up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The low-water state of one plain TCP connection's socket.
pub(crate) struct LowWater {
    fd: RawFd,
    /// The raised mark in bytes, 0 when the socket wakes on every byte.
    level: usize,
    window_start: Instant,
    reads: u32,
    bytes: usize,
    last_read: Instant,
    /// The connection's write count at its last read.
    writes_seen: u64,
    /// Reads that filled the raised mark since it was raised.
    full_reads: u32,
    /// No raising before this: the last raise only delayed a lone request.
    backoff_until: Instant,
    /// The pause the next hostage-taking raise earns (zero: none yet).
    backoff: Duration,
}

impl LowWater {
    /// State for the socket `fd`, which must outlive it (the connection owns both).
    pub(crate) fn new(fd: RawFd) -> Self {
        let now = Instant::now();
        LowWater {
            fd,
            level: 0,
            window_start: now,
            reads: 0,
            bytes: 0,
            last_read: now,
            writes_seen: 0,
            full_reads: 0,
            backoff_until: now,
            backoff: Duration::ZERO,
        }
    }

    /// Whether the mark is raised (the deadline must then be watched).
    pub(crate) fn raised(&self) -> bool {
        self.level > 0
    }

    /// Accounts a read of `n` bytes, `writes` being the connection's count of socket writes;
    /// returns the deadline to watch when it raised the mark.
    pub(crate) fn after_read(&mut self, n: usize, now: Instant, writes: u64) -> Option<Instant> {
        self.last_read = now;
        if writes != self.writes_seen {
            // We answered something since the last read: the peer may be waiting for more.
            self.writes_seen = writes;
            self.lower();
            self.restart(now);
            return None;
        }
        if self.level > 0 {
            if n >= self.level {
                self.full_reads += 1;
                if self.full_reads >= 2 {
                    // It streams: a later hostage-taking raise starts the back-off afresh.
                    self.backoff = Duration::ZERO;
                }
                return None;
            }
            // Less than the mark arrived: the mark was just lowered, or the stream is ending.
            self.set(0);
        }
        if n >= SMALL_READ {
            self.restart(now);
            return None;
        }
        self.reads += 1;
        self.bytes += n;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return None;
        }
        let (reads, bytes) = (self.reads, self.bytes);
        self.restart(now);
        if reads < MIN_READS || elapsed > WINDOW * 4 || now < self.backoff_until {
            return None;
        }
        let level = (bytes as u128 * TARGET_WAIT.as_nanos() / elapsed.as_nanos().max(1)) as usize;
        // A small read is about one segment, and a peer sends only so many segments before
        // it waits for our ACK (its congestion window, 10 at first): while we do not read,
        // Linux ACKs only every `rcv_mss` bytes, which small segments may not reach before
        // that window is spent. A mark beyond that stalls the peer until the deadline.
        let per_read = bytes / reads as usize;
        let level = level.min(MAX_LEVEL).min(MAX_SEGMENTS * per_read);
        // Worth it only if a wake-up would carry several of the reads seen.
        if level < MIN_LEVEL || level < 2 * per_read {
            return None;
        }
        self.set(level);
        self.raised().then_some(now + MAX_WAIT)
    }

    /// The deadline passed: keeps the mark (returning the next deadline) if a read completed
    /// within [`MAX_WAIT`], otherwise lowers it so that whatever is queued is read now.
    pub(crate) fn on_deadline(&mut self, now: Instant) -> Option<Instant> {
        let next = self.last_read + MAX_WAIT;
        if self.level > 0 && next > now {
            return Some(next);
        }
        if self.level > 0 && self.full_reads == 0 {
            // Nothing filled the mark before the deadline: the peer sent a request and is
            // waiting for its answer elsewhere (RPC with separate publishing and consuming
            // connections). Waking per segment costs less than holding such a peer, so stay
            // down for a while, longer each time it repeats.
            self.backoff = (self.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
            self.backoff_until = now + self.backoff;
        }
        self.set(0);
        self.restart(now);
        None
    }

    /// Lowers a raised mark: the connection stops streaming (closing handshake, linger).
    pub(crate) fn lower(&mut self) {
        if self.level > 0 {
            self.set(0);
        }
    }

    fn restart(&mut self, now: Instant) {
        self.window_start = now;
        self.reads = 0;
        self.bytes = 0;
    }

    fn set(&mut self, level: usize) {
        let v = level.max(1) as libc::c_int;
        // SAFETY: `fd` is the connection's open socket (it outlives this state), and `v` is a
        // c_int whose size is passed. Lowering the mark makes Linux signal the socket readable
        // if anything is queued (`tcp_set_rcvlowat` calls `tcp_data_ready`).
        let r = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // If the socket refuses, it keeps waking on every byte.
        self.level = if r == 0 { level } else { 0 };
        self.full_reads = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (s, c)
    }

    /// Generous bound on a read that must complete: a hang guard, not a timing assertion.
    const GUARD: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn lowering_the_mark_delivers_what_is_queued() {
        let (mut s, mut c) = pair().await;
        let mut lw = LowWater::new(s.as_raw_fd());
        lw.set(MAX_LEVEL);
        assert!(lw.raised());
        c.write_all(b"0123456789").await.unwrap();
        // A read waiting under the raised mark completes once the deadline lowers it.
        let reader = async {
            let mut buf = [0u8; 64];
            s.read(&mut buf).await.map(|n| buf[..n].to_vec())
        };
        let lower = async {
            tokio::task::yield_now().await;
            assert_eq!(lw.on_deadline(Instant::now() + MAX_WAIT * 2), None);
        };
        let (got, ()) = tokio::join!(tokio::time::timeout(GUARD, reader), lower);
        assert_eq!(got.unwrap().unwrap(), b"0123456789");
        assert!(!lw.raised());
    }

    #[tokio::test]
    async fn many_small_fast_reads_raise_the_mark_and_big_reads_lower_it() {
        let (s, _c) = pair().await;
        let mut lw = LowWater::new(s.as_raw_fd());
        let t0 = Instant::now();
        // 30 reads of 100 bytes in 1 ms: 3,000 bytes/ms, so a 1,500-byte mark.
        let mut deadline = None;
        for i in 1..=30u32 {
            deadline = lw.after_read(100, t0 + WINDOW * i / 30, 0);
        }
        assert_eq!(deadline, Some(t0 + WINDOW + MAX_WAIT));
        assert!(lw.raised());
        // A read that fills the mark keeps it; the deadline is then pushed back.
        assert_eq!(lw.after_read(1600, t0 + WINDOW * 2, 0), None);
        assert!(lw.raised());
        assert_eq!(
            lw.on_deadline(t0 + WINDOW + MAX_WAIT),
            Some(t0 + WINDOW * 2 + MAX_WAIT)
        );
        // A short read (the stream is ending) lowers it.
        lw.after_read(10, t0 + WINDOW * 3, 0);
        assert!(!lw.raised());
    }

    #[tokio::test]
    async fn a_connection_we_answer_is_never_held_back() {
        let (s, _c) = pair().await;
        let mut lw = LowWater::new(s.as_raw_fd());
        let t0 = Instant::now();
        // The same fast small reads that raise the mark of a pure publisher, but every read
        // follows a write of ours (a confirm or a reply per request).
        for i in 1..=60u32 {
            assert_eq!(lw.after_read(100, t0 + WINDOW * i / 30, u64::from(i)), None);
            assert!(!lw.raised());
        }
        // Raised while the peer only publishes, then an answer of ours lowers it.
        for i in 1..=30u32 {
            lw.after_read(100, t0 + WINDOW * 2 + WINDOW * i / 30, 60);
        }
        assert!(lw.raised());
        lw.after_read(800, t0 + WINDOW * 4, 61);
        assert!(!lw.raised());
    }

    /// Reads of 100 bytes, 30 per millisecond for 2 ms from `t`, until one raises the mark;
    /// returns the deadline it set.
    fn stream_for_a_window(lw: &mut LowWater, t: Instant) -> Option<Instant> {
        (1..=60u32).find_map(|i| lw.after_read(100, t + WINDOW * i / 30, 0))
    }

    #[tokio::test]
    async fn a_peer_held_waiting_is_not_held_again_for_a_while() {
        let (s, _c) = pair().await;
        let mut lw = LowWater::new(s.as_raw_fd());
        let t0 = Instant::now();
        // A fast request stream raises the mark, then the peer sends one request and waits
        // (its answer comes on another connection): the deadline finds nothing read.
        let due = stream_for_a_window(&mut lw, t0).expect("raised");
        assert_eq!(lw.on_deadline(due), None);
        assert!(!lw.raised());
        // The same fast stream right after does not raise it during the back-off...
        let t1 = due + Duration::from_millis(1);
        assert_eq!(stream_for_a_window(&mut lw, t1), None);
        assert!(!lw.raised());
        // ...but does once it is over, and a second hostage doubles the pause.
        let t2 = due + MIN_BACKOFF;
        let due2 = stream_for_a_window(&mut lw, t2).expect("raised after the back-off");
        assert_eq!(lw.on_deadline(due2), None);
        assert_eq!(stream_for_a_window(&mut lw, due2 + MIN_BACKOFF), None);
        assert!(stream_for_a_window(&mut lw, due2 + MIN_BACKOFF * 2 + WINDOW).is_some());
        // A raise that streams (reads fill the mark) clears the back-off: the next hostage
        // only costs the shortest pause again.
        let t3 = due2 + MIN_BACKOFF * 2 + WINDOW * 2;
        assert_eq!(lw.after_read(4096, t3, 0), None);
        assert_eq!(lw.after_read(4096, t3 + WINDOW / 4, 0), None);
        assert!(lw.raised());
        lw.after_read(10, t3 + WINDOW / 2, 0);
        let t4 = t3 + WINDOW;
        let due4 = stream_for_a_window(&mut lw, t4).expect("raised");
        assert_eq!(lw.on_deadline(due4), None);
        assert!(stream_for_a_window(&mut lw, due4 + MIN_BACKOFF).is_some());
    }

    #[tokio::test]
    async fn slow_or_batched_traffic_keeps_every_byte_waking() {
        let (s, _c) = pair().await;
        let mut lw = LowWater::new(s.as_raw_fd());
        let t0 = Instant::now();
        // 5,000 publishes/s of 90 bytes, one per read: 450 bytes/ms, a 225-byte mark.
        for i in 1..=30u32 {
            assert_eq!(
                lw.after_read(90, t0 + Duration::from_micros(200) * i, 0),
                None
            );
            assert!(!lw.raised());
        }
        // Reads of 8 KiB: the client batches by itself.
        let t1 = t0 + Duration::from_millis(10);
        for i in 1..=30u32 {
            assert_eq!(
                lw.after_read(8192, t1 + Duration::from_micros(10) * i, 0),
                None
            );
            assert!(!lw.raised());
        }
    }
}
