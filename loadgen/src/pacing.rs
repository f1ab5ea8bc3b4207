//! Open-loop send schedule. Message `k` of a publisher is due at `start + offset + k * interval`, whatever
//! happened to earlier messages: when the broker (or the load generator) falls behind, the backlog shows as
//! latency measured from the intended send time, instead of quietly lowering the offered load (coordinated
//! omission). Publishers are staggered by `offset` so a total rate is spread evenly, not sent in bursts.

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start_ns: u64,
    /// 0 = as fast as possible.
    interval_ns: f64,
    offset_ns: f64,
    /// Messages this publisher may send in total (u64::MAX = bounded by time only).
    limit: u64,
    end_ns: u64,
}

impl Schedule {
    /// `total_rate` is the offered rate of all `publishers` together (0 = max rate); `index` staggers this one.
    pub fn new(
        start_ns: u64,
        end_ns: u64,
        total_rate: f64,
        publishers: usize,
        index: usize,
        limit: u64,
    ) -> Self {
        let (interval_ns, offset_ns) = if total_rate > 0.0 {
            let interval = 1e9 * publishers as f64 / total_rate;
            (interval, 1e9 * index as f64 / total_rate)
        } else {
            (0.0, 0.0)
        };
        Schedule {
            start_ns,
            interval_ns,
            offset_ns,
            limit,
            end_ns,
        }
    }

    /// Moves the end earlier (never later).
    pub fn shorten(&mut self, end_ns: u64) {
        self.end_ns = self.end_ns.min(end_ns);
    }

    pub fn is_max_rate(&self) -> bool {
        self.interval_ns == 0.0
    }

    /// Intended send time of message `k`.
    pub fn due_ns(&self, k: u64) -> u64 {
        self.start_ns + (self.offset_ns + k as f64 * self.interval_ns) as u64
    }

    /// How many messages in total should have been sent by `now_ns` (bounded by the limit and the end time).
    pub fn due_count(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let by_time = if self.is_max_rate() {
            if now_ns < self.end_ns {
                u64::MAX
            } else {
                0
            }
        } else {
            let horizon = now_ns.min(self.end_ns.saturating_sub(1));
            let elapsed = horizon.saturating_sub(self.start_ns) as f64 - self.offset_ns;
            if elapsed < 0.0 || horizon < self.start_ns {
                0
            } else {
                (elapsed / self.interval_ns) as u64 + 1
            }
        };
        by_time.min(self.limit)
    }

    /// True once no further message will ever become due (for `sent` messages already sent).
    pub fn finished(&self, sent: u64, now_ns: u64) -> bool {
        sent >= self.limit
            || now_ns >= self.end_ns && (self.is_max_rate() || sent >= self.due_count(now_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_counts() {
        // 2 publishers sharing 1000 msg/s: each sends every 2 ms, publisher 1 offset by 1 ms.
        let s0 = Schedule::new(1_000, 1_000 + 1_000_000_000, 1000.0, 2, 0, u64::MAX);
        let s1 = Schedule::new(1_000, 1_000 + 1_000_000_000, 1000.0, 2, 1, u64::MAX);
        assert_eq!(s0.due_count(999), 0);
        assert_eq!(s0.due_count(1_000), 1);
        assert_eq!(s1.due_count(1_000), 0);
        assert_eq!(s1.due_count(1_000 + 1_000_000), 1);
        assert_eq!(s0.due_ns(3), 1_000 + 6_000_000);
        // Over the whole second each sends exactly 500.
        assert_eq!(s0.due_count(u64::MAX / 2), 500);
        assert_eq!(s1.due_count(u64::MAX / 2), 500);
        assert!(s0.finished(500, 1_000 + 1_000_000_000));
        assert!(!s0.finished(499, 1_000 + 1_000_000_000));
    }

    #[test]
    fn shortened_schedule_stops_early() {
        let mut s = Schedule::new(0, 1_000_000_000, 1000.0, 1, 0, u64::MAX);
        s.shorten(10_000_000);
        assert_eq!(s.due_count(u64::MAX / 2), 10);
        s.shorten(u64::MAX);
        assert_eq!(s.due_count(u64::MAX / 2), 10);
    }

    #[test]
    fn limit_and_max_rate() {
        let s = Schedule::new(0, 10, 0.0, 1, 0, 7);
        assert!(s.is_max_rate());
        assert_eq!(s.due_count(5), 7);
        assert!(s.finished(7, 5));
        assert!(!s.finished(6, 5));
        assert!(s.finished(6, 10));
    }
}
