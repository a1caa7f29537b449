//! A fixed-bucket histogram of atomics that the metrics endpoint reads at scrape time, with
//! the process-wide histograms the store fills (fsync time, group-commit batch size).
//!
//! Each observation is two relaxed atomic adds and a short scan of the bounds: cheap enough
//! for once per fsync round or once per sampled delivery, with no lock to share.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (inclusive) of the buckets of one histogram; observations above the last
/// bound count only in the total (`+Inf`).
pub type Bounds = &'static [f64];

/// Most finite buckets a histogram may have.
const MAX_BUCKETS: usize = 24;

/// A histogram with fixed bucket bounds; [`Histogram::snapshot`] gives cumulative counts as
/// Prometheus expects them.
pub struct Histogram {
    bounds: Bounds,
    buckets: [AtomicU64; MAX_BUCKETS],
    count: AtomicU64,
    /// The sum of observations, as `f64` bits (added with a compare-and-swap loop).
    sum: AtomicU64,
}

/// A histogram's state at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of every observation.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// (upper bound, observations at or below it), cumulative, ascending.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// A histogram with `bounds` (ascending, at most 24; extra ones are ignored).
    pub const fn new(bounds: Bounds) -> Self {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let n = self.bounds.len().min(MAX_BUCKETS);
        if let Some(i) = self.bounds[..n].iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((f64::from_bits(s) + v).to_bits())
            });
    }

    /// The counts now, cumulative per bucket. Read without a lock, so a scrape racing an
    /// observation may count it in `count` and not yet in its bucket (never the reverse
    /// beyond the `+Inf` bucket Prometheus derives from `count`).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let n = self.bounds.len().min(MAX_BUCKETS);
        let mut acc = 0;
        let buckets = self.bounds[..n]
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| {
                acc += c.load(Ordering::Relaxed);
                (*b, acc)
            })
            .collect();
        HistogramSnapshot {
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
            count: self.count.load(Ordering::Relaxed).max(acc),
            buckets,
        }
    }
}

/// Bounds for durations in seconds, 50 µs to 10 s.
pub const SECONDS: Bounds = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Bounds for counts of things batched together.
pub const BATCH: Bounds = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

/// Time one group-commit round took to make its files and directories durable.
pub static FSYNC_SECONDS: Histogram = Histogram::new(SECONDS);

/// Writes (publishes, acks, definitions changes) one group-commit round made durable.
pub static GROUP_COMMIT_WRITES: Histogram = Histogram::new(BATCH);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_large_values_count_only_in_the_total() {
        static H: Histogram = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            H.observe(v);
        }
        let s = H.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (10.0, 3)]);
        assert_eq!(s.count, 4);
        assert_eq!(s.sum, 56.5);
    }
}
