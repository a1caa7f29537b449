//! Per-queue message deadlines (TTL): a map from sequence number to deadline, and a heap
//! ordered by deadline that tells the queue when to wake up.
//!
//! Entries of messages that were delivered and acked stay in the heap until their deadline
//! (removing from the middle of a heap is costly); they are skipped then, and the heap is
//! rebuilt from the map when stale entries outnumber live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds on the process's monotonic clock.
pub fn now_ms() -> u64 {
    base().elapsed().as_millis() as u64
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Wall-clock milliseconds since the Unix epoch: deadlines kept on disk use this clock, since
/// [`now_ms`]'s starts again with every process.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A deadline on [`now_ms`]'s clock as wall-clock ms (to be written to disk).
pub fn to_wall(at: u64) -> u64 {
    let (wall, now) = (wall_ms(), now_ms());
    if at >= now {
        wall.saturating_add(at - now)
    } else {
        wall.saturating_sub(now - at)
    }
}

/// A wall-clock deadline read from disk on [`now_ms`]'s clock (0 if it passed long ago).
pub fn from_wall(wall_at: u64) -> u64 {
    let (wall, now) = (wall_ms(), now_ms());
    if wall_at >= wall {
        now.saturating_add(wall_at - wall)
    } else {
        now.saturating_sub(wall - wall_at)
    }
}

/// The instant of a deadline given by [`now_ms`]'s clock.
pub fn instant_of(ms: u64) -> Instant {
    base() + Duration::from_millis(ms)
}

/// Deadlines of one queue's messages.
#[derive(Default)]
pub struct Deadlines {
    by_seq: HashMap<u64, u64>,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
}

impl Deadlines {
    /// Records that message `seq` expires at `at` (ms).
    pub fn add(&mut self, seq: u64, at: u64) {
        self.by_seq.insert(seq, at);
        self.heap.push(Reverse((at, seq)));
        if self.heap.len() > 2 * self.by_seq.len() + 1024 {
            self.heap = self.by_seq.iter().map(|(&s, &a)| Reverse((a, s))).collect();
        }
    }

    /// Whether message `seq` has a deadline before `now`. A message is still deliverable
    /// within the millisecond of its deadline, so a TTL of 0 reaches a consumer that is
    /// waiting when it arrives, as in RabbitMQ.
    pub fn is_due(&self, seq: u64, now: u64) -> bool {
        self.by_seq.get(&seq).is_some_and(|&at| at < now)
    }

    /// The message left the queue for good (acked, dead-lettered).
    pub fn forget(&mut self, seq: u64) {
        if !self.by_seq.is_empty() && self.by_seq.remove(&seq).is_some() && self.by_seq.is_empty() {
            // Every heap entry is stale now; give back what a large backlog needed.
            if self.by_seq.capacity() > 4096 {
                self.by_seq = HashMap::new();
            }
            self.heap = BinaryHeap::new();
        }
    }

    /// Makes a deadline taken by [`Deadlines::take_due_up_to`] but not handled due again.
    pub fn retry(&mut self, seq: u64) {
        if let Some(&at) = self.by_seq.get(&seq) {
            self.heap.push(Reverse((at, seq)));
        }
    }

    /// Whether no message has a deadline.
    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    /// Sequence numbers whose deadline passed, earliest first, each returned once. The
    /// caller [`forget`](Deadlines::forget)s those it could expire; the others (delivered,
    /// or paged to disk) are checked again when they come back or reach the head.
    pub fn take_due(&mut self, now: u64) -> Vec<u64> {
        self.take_due_up_to(now, usize::MAX)
    }

    /// As [`Deadlines::take_due`], at most `max` of them; the rest stay due.
    pub fn take_due_up_to(&mut self, now: u64, max: usize) -> Vec<u64> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, seq))) = self.heap.peek() {
            if at > now || due.len() >= max {
                break;
            }
            self.heap.pop();
            if self.by_seq.get(&seq) == Some(&at) {
                due.push(seq);
            }
        }
        due
    }

    /// The earliest deadline still pending, if any.
    pub fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Drops everything (purge, delete).
    pub fn clear(&mut self) {
        self.by_seq.clear();
        self.heap.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_in_deadline_order_and_forgotten_ones_never() {
        let mut d = Deadlines::default();
        d.add(1, 300);
        d.add(2, 100);
        d.add(3, 200);
        d.forget(3);
        assert!(d.is_due(2, 101) && !d.is_due(2, 100) && !d.is_due(1, 299));
        assert_eq!(d.take_due(250), vec![2]);
        assert_eq!(d.next(), Some(300));
        assert_eq!(d.take_due(1000), vec![1]);
        assert!(d.take_due(2000).is_empty());
    }
}
