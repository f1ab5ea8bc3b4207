//! A fixed-bucket histogram of durations that any thread records into with relaxed atomic adds and the HTTP
//! thread reads: no lock, no allocation on record. Buckets are Prometheus `le` upper bounds (cumulated when
//! rendered, stored per bucket so a record touches one bucket).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds in microseconds of the log-sync buckets: 50 µs (page cache) to 2.5 s (a stalled disk).
pub const SYNC_BUCKETS_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    2_500_000,
];

/// Upper bounds in microseconds of the CONNECT handling buckets: 5 µs (a fresh clean session) to 100 ms.
pub const CONNECT_BUCKETS_US: &[u64] = &[
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000,
];

#[derive(Debug)]
pub struct AtomicHistogram {
    bounds_us: &'static [u64],
    /// One count per bound, then the `+Inf` bucket.
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

/// A consistent-enough copy for rendering: bucket counts cumulated, as Prometheus wants them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(le in seconds, cumulative count)`, the last one being `+Inf` (`f64::INFINITY`).
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl AtomicHistogram {
    /// `bounds_us` must be strictly increasing.
    pub fn new(bounds_us: &'static [u64]) -> Self {
        debug_assert!(bounds_us.windows(2).all(|w| w[0] < w[1]));
        AtomicHistogram {
            bounds_us,
            counts: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn record(&self, d: Duration) {
        self.record_us(d.as_micros().min(u64::MAX as u128) as u64);
    }

    pub fn record_us(&self, us: u64) {
        // `le` is inclusive: a value equal to a bound belongs to that bucket.
        let i = self.bounds_us.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Cumulated buckets. Reads race with records (each bucket is read once), so `count` is taken as the last
    /// cumulative bucket: the rendered histogram is always internally consistent.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0u64;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            acc += c.load(Relaxed);
            let le = match self.bounds_us.get(i) {
                Some(&b) => b as f64 / 1e6,
                None => f64::INFINITY,
            };
            buckets.push((le, acc));
        }
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_us.load(Relaxed) as f64 / 1e6,
            count: acc,
        }
    }
}

impl HistogramSnapshot {
    /// Adds another snapshot with the same bounds (the all-shards total).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            a.1 += b.1;
        }
        self.sum_seconds += other.sum_seconds;
        self.count += other.count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_and_cumulative() {
        let h = AtomicHistogram::new(&[10, 100]);
        h.record_us(10); // le=10
        h.record_us(11); // le=100
        h.record_us(100); // le=100
        h.record_us(101); // +Inf
        h.record(Duration::from_micros(5)); // le=10
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            vec![(0.00001, 2), (0.0001, 4), (f64::INFINITY, 5)]
        );
        assert_eq!(s.count, 5);
        assert!((s.sum_seconds - 227e-6).abs() < 1e-12);
    }

    #[test]
    fn merge_adds_bucket_by_bucket() {
        let a = AtomicHistogram::new(&[10]);
        let b = AtomicHistogram::new(&[10]);
        a.record_us(1);
        b.record_us(20);
        b.record_us(3);
        let mut s = a.snapshot();
        s.merge(&b.snapshot());
        assert_eq!(s.buckets, vec![(0.00001, 2), (f64::INFINITY, 3)]);
        assert_eq!(s.count, 3);
    }
}
