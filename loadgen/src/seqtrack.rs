//! Per-publisher sequence tracking on the receiving side: unique count, duplicates and out-of-order arrivals.
//!
//! Received sequence numbers are kept as sorted disjoint ranges, so an in-order stream costs one range whatever
//! its length and memory grows only with the number of gaps. The number of ranges is bounded: past the bound the
//! tracker stops distinguishing duplicates for that stream and counts `untracked` (reported as an error), so a
//! pathological loss pattern cannot exhaust memory.

/// Bound on gaps tracked per (subscriber, publisher) stream: 64k ranges = 1 MiB.
pub const MAX_RANGES: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    New,
    /// New, but a higher sequence number arrived before it.
    OutOfOrder,
    Duplicate,
    /// The range bound was hit: counted as received, not checked for duplicates.
    Untracked,
}

#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    /// Sorted, disjoint, non-adjacent half-open ranges [start, end) of received sequence numbers.
    ranges: Vec<(u64, u64)>,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub untracked: u64,
}

impl SeqTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Highest sequence number received + 1 (0 when nothing arrived): what a publisher at least sent.
    pub fn high_water(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.1)
    }

    /// Up to `max` missing half-open ranges below `upto` (what the publisher sent): where loss happened.
    pub fn missing(&self, upto: u64, max: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut next = 0;
        for &(a, b) in &self.ranges {
            if out.len() >= max || a >= upto {
                break;
            }
            if a > next {
                out.push((next, a));
            }
            next = b;
        }
        if next < upto && out.len() < max {
            out.push((next, upto));
        }
        out
    }

    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    pub fn record(&mut self, seq: u64) -> Arrival {
        let arrival = self.insert(seq);
        match arrival {
            Arrival::New => self.unique += 1,
            Arrival::OutOfOrder => {
                self.unique += 1;
                self.out_of_order += 1
            }
            Arrival::Duplicate => self.duplicates += 1,
            Arrival::Untracked => {
                self.unique += 1;
                self.untracked += 1
            }
        }
        arrival
    }

    fn insert(&mut self, seq: u64) -> Arrival {
        // Fast path: the next in-order message extends the last range.
        match self.ranges.last_mut() {
            None => {
                self.ranges.push((seq, seq + 1));
                return Arrival::New;
            }
            Some(last) if last.1 == seq => {
                last.1 += 1;
                return Arrival::New;
            }
            Some(last) if seq > last.1 => {
                if self.ranges.len() >= MAX_RANGES {
                    return Arrival::Untracked;
                }
                self.ranges.push((seq, seq + 1));
                return Arrival::New;
            }
            _ => {}
        }
        // seq is below the high water mark: a duplicate or a late arrival filling a gap.
        let idx = self.ranges.partition_point(|r| r.1 <= seq);
        if idx < self.ranges.len() && self.ranges[idx].0 <= seq {
            return Arrival::Duplicate;
        }
        let joins_prev = idx > 0 && self.ranges[idx - 1].1 == seq;
        let joins_next = idx < self.ranges.len() && self.ranges[idx].0 == seq + 1;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[idx - 1].1 = self.ranges[idx].1;
                self.ranges.remove(idx);
            }
            (true, false) => self.ranges[idx - 1].1 += 1,
            (false, true) => self.ranges[idx].0 = seq,
            (false, false) => {
                if self.ranges.len() >= MAX_RANGES {
                    return Arrival::Untracked;
                }
                self.ranges.insert(idx, (seq, seq + 1));
            }
        }
        Arrival::OutOfOrder
    }

    /// Folds another receiver's view of the same publisher into this one (shared subscriptions: each message
    /// should reach exactly one group member). A sequence number seen by both counts as a duplicate.
    pub fn merge(&mut self, other: &SeqTracker) {
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.untracked += other.untracked;
        self.unique += other.untracked;
        for &(start, end) in &other.ranges {
            for seq in start..end {
                match self.insert(seq) {
                    Arrival::Duplicate => self.duplicates += 1,
                    Arrival::Untracked => {
                        self.unique += 1;
                        self.untracked += 1
                    }
                    Arrival::New | Arrival::OutOfOrder => self.unique += 1,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_is_one_range() {
        let mut t = SeqTracker::new();
        for s in 0..10_000 {
            assert_eq!(t.record(s), Arrival::New);
        }
        assert_eq!(
            (t.unique, t.duplicates, t.out_of_order, t.ranges()),
            (10_000, 0, 0, 1)
        );
        assert_eq!(t.high_water(), 10_000);
    }

    #[test]
    fn gaps_duplicates_and_late_arrivals() {
        let mut t = SeqTracker::new();
        for s in [0, 1, 2, 5, 6, 2, 3, 9, 4, 4] {
            t.record(s);
        }
        // unique: 0 1 2 3 4 5 6 9; dups: 2, 4; out of order: 3, 4; missing: 7 8
        assert_eq!(t.unique, 8);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.out_of_order, 2);
        assert_eq!(t.high_water() - t.unique, 2);
        assert_eq!(t.ranges(), 2);
    }

    #[test]
    fn missing_ranges() {
        let mut t = SeqTracker::new();
        for s in [0, 1, 4, 5, 9] {
            t.record(s);
        }
        assert_eq!(t.missing(12, 10), vec![(2, 4), (6, 9), (10, 12)]);
        assert_eq!(t.missing(12, 1), vec![(2, 4)]);
        assert_eq!(SeqTracker::new().missing(3, 5), vec![(0, 3)]);
        assert!(t.missing(10, 5).len() == 2);
    }

    #[test]
    fn merge_counts_overlap_as_duplicates() {
        let mut a = SeqTracker::new();
        let mut b = SeqTracker::new();
        (0..5).for_each(|s| {
            a.record(s);
        });
        (4..8).for_each(|s| {
            b.record(s);
        });
        a.merge(&b);
        assert_eq!(a.unique, 8);
        assert_eq!(a.duplicates, 1);
    }

    #[test]
    fn range_bound_holds() {
        let mut t = SeqTracker::new();
        for i in 0..(MAX_RANGES as u64 + 10) {
            t.record(i * 2);
        }
        assert_eq!(t.ranges(), MAX_RANGES);
        assert_eq!(t.untracked, 10);
        assert_eq!(t.unique, MAX_RANGES as u64 + 10);
    }

    proptest! {
        #[test]
        fn matches_a_set(seqs in proptest::collection::vec(0u64..200, 0..400)) {
            let mut t = SeqTracker::new();
            let mut seen = std::collections::BTreeSet::new();
            let mut dups = 0u64;
            let mut ooo = 0u64;
            let mut max: Option<u64> = None;
            for &s in &seqs {
                if !seen.insert(s) { dups += 1; } else if max.is_some_and(|m| s < m) { ooo += 1; }
                max = Some(max.map_or(s, |m| m.max(s)));
                t.record(s);
            }
            prop_assert_eq!(t.unique, seen.len() as u64);
            prop_assert_eq!(t.duplicates, dups);
            prop_assert_eq!(t.out_of_order, ooo);
            prop_assert_eq!(t.high_water(), max.map_or(0, |m| m + 1));
        }
    }
}
