//! Keep-alive and CONNECT-timeout enforcement without a timer per connection.
//!
//! A hashed timing wheel of one-second slots. Each connection sits in exactly one slot (the second its deadline
//! falls in, capped at the wheel's span). Activity does not move it: when a slot fires, each entry's real deadline
//! is asked of the caller and the entry is re-filed if it has moved. So a busy connection costs nothing per packet
//! beyond storing its last-seen second, and an idle one costs one `ConnKey` (8 bytes) in one slot.
//!
//! A key may be filed twice (the caller files an earlier deadline without removing the later entry, which would
//! mean scanning a slot): `advance` reports each key at most once per call and merges duplicates that come due
//! together, so a duplicate costs one more check, never a double expiry.

use crate::broker::message::ConnKey;

/// Seconds since the shard started; u32 covers 136 years.
pub type Secs = u32;

#[derive(Debug)]
pub struct Wheel {
    slots: Vec<Vec<ConnKey>>,
    /// The next second to fire.
    cursor: Secs,
}

pub enum Deadline {
    /// Expired: the caller closes the connection.
    Expired,
    /// Still alive; re-file at this second.
    At(Secs),
    /// The key is stale (connection gone): drop the entry.
    Gone,
}

impl Wheel {
    /// `span_secs` bounds how far ahead a slot can be; longer deadlines are re-filed when their slot comes round.
    pub fn new(span_secs: u32) -> Self {
        let n = span_secs.clamp(2, 1 << 16) as usize;
        Wheel {
            slots: (0..n).map(|_| Vec::new()).collect(),
            cursor: 0,
        }
    }

    fn slot_of(&self, at: Secs, now: Secs) -> usize {
        let span = self.slots.len() as Secs;
        let at = at
            .max(now.max(self.cursor))
            .min(now.max(self.cursor) + span - 1);
        (at % span) as usize
    }

    pub fn insert(&mut self, key: ConnKey, deadline: Secs, now: Secs) {
        let s = self.slot_of(deadline, now);
        self.slots[s].push(key);
    }

    /// Fire every slot up to and including `now`. `check` decides for each entry; `expired` collects the dead.
    pub fn advance(
        &mut self,
        now: Secs,
        mut check: impl FnMut(ConnKey) -> Deadline,
        expired: &mut Vec<ConnKey>,
    ) {
        // After a long stall fire at most one full turn: every slot is visited once.
        let turns = (now.saturating_sub(self.cursor) + 1).min(self.slots.len() as Secs);
        let start = now + 1 - turns;
        let mut refile = Vec::new();
        for t in start..=now {
            let s = (t % self.slots.len() as Secs) as usize;
            let entries = std::mem::take(&mut self.slots[s]);
            for key in &entries {
                match check(*key) {
                    Deadline::Expired => expired.push(*key),
                    Deadline::At(at) if at <= now => expired.push(*key),
                    Deadline::At(at) => refile.push((*key, at)),
                    Deadline::Gone => {}
                }
            }
            // Keep the slot's allocation when it is reused often; drop large ones after a burst.
            if entries.capacity() <= 64 && self.slots[s].is_empty() {
                let mut entries = entries;
                entries.clear();
                self.slots[s] = entries;
            }
        }
        self.cursor = now + 1;
        // One entry per key: duplicates fired in this call collapse to the earliest deadline.
        refile.sort_unstable_by_key(|&(k, at)| (k.idx, k.gen, at));
        refile.dedup_by_key(|&mut (k, _)| k);
        expired.sort_unstable_by_key(|k| (k.idx, k.gen));
        expired.dedup();
        for (key, at) in refile {
            self.insert(key, at, self.cursor);
        }
    }

    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn key(i: u32) -> ConnKey {
        ConnKey { idx: i, gen: 0 }
    }

    #[test]
    fn expires_at_deadline_and_refiles_active() {
        let mut w = Wheel::new(8);
        let mut deadlines: HashMap<u32, Secs> = HashMap::new();
        deadlines.insert(1, 3);
        deadlines.insert(2, 20); // beyond the span: must survive several turns
        w.insert(key(1), 3, 0);
        w.insert(key(2), 20, 0);
        let mut dead = Vec::new();
        for now in 0..=25 {
            // Connection 1 shows activity at second 2: its deadline moves to 6.
            if now == 2 {
                deadlines.insert(1, 6);
            }
            w.advance(now, |k| Deadline::At(deadlines[&k.idx]), &mut dead);
            for k in dead.drain(..) {
                let d = deadlines.remove(&k.idx).unwrap();
                assert_eq!(
                    d, now,
                    "connection {} expired at {now}, deadline {d}",
                    k.idx
                );
            }
        }
        assert!(deadlines.is_empty());
        assert!(w.is_empty());
    }

    #[test]
    fn a_key_filed_twice_expires_once_and_merges() {
        let mut w = Wheel::new(64);
        // Filed at 5 and again at 2, as a short keep-alive after the CONNECT-timeout entry is.
        w.insert(key(7), 5, 0);
        w.insert(key(7), 2, 0);
        let mut dead = Vec::new();
        let mut checks = 0;
        w.advance(
            4,
            |_| {
                checks += 1;
                Deadline::At(6)
            },
            &mut dead,
        );
        assert_eq!((checks, w.len()), (1, 2), "entry at 2 re-filed at 6");
        // Entries at 5 and 6 fire in one call and re-file at the same second: they merge.
        w.advance(8, |_| Deadline::At(20), &mut dead);
        assert!(dead.is_empty());
        assert_eq!(w.len(), 1, "duplicates due together merge");
        // A key filed twice that expires is reported once.
        w.insert(key(7), 21, 9);
        w.advance(25, |_| Deadline::Expired, &mut dead);
        assert_eq!(dead, vec![key(7)]);
        assert!(w.is_empty());
    }

    #[test]
    fn stale_keys_are_dropped_and_long_stalls_fire_everything_once() {
        let mut w = Wheel::new(4);
        for i in 0..10 {
            w.insert(key(i), i % 4, 0);
        }
        let mut dead = Vec::new();
        let mut seen = 0;
        w.advance(
            1000,
            |k| {
                seen += 1;
                if k.idx % 2 == 0 {
                    Deadline::Gone
                } else {
                    Deadline::Expired
                }
            },
            &mut dead,
        );
        assert_eq!(seen, 10);
        assert_eq!(dead.len(), 5);
        assert!(w.is_empty());
    }
}
