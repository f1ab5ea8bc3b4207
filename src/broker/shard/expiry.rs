//! v5 message expiry: a queued or retained message whose Message Expiry Interval has passed is dropped (counted
//! in `Stats::expired`, and acknowledged away in the log so replay forgets it); one still alive is forwarded
//! with the interval that remains [MQTT-3.3.2-6].
//!
//! Time counts from when the message reached this shard (`Message::received_at`; a queued entry keeps its
//! deadline in `Queued::deadline`), in shard seconds. The log stores the wall-clock deadline with the body
//! (`Record::Message::expires_unix`), so after a restart a stored message keeps its original deadline: restored
//! queue entries past it are dropped at start, the others get what remains.
//!
//! Offline queues are swept too (`sweep_expired`, from `tick`): a bounded number of entries per second, so a
//! session that stays away does not hold expired messages (and their log space) until it reconnects.

use super::*;
use crate::broker::session::NO_DEADLINE;

/// Queue entries the expiry sweep looks at per shard per second (bounded work per tick).
pub(super) const SWEEP_PER_TICK: usize = 4096;

/// What is left of a message's expiry interval at `now`: `None` = no expiry, `Some(0)` = expired.
pub(super) fn remaining(interval: Option<u32>, since: u32, now: Secs) -> Option<u32> {
    interval.map(|iv| iv.saturating_sub(now.saturating_sub(since)))
}

/// What is left until a queued entry's deadline: `None` = no expiry, `Some(0)` = expired.
pub(super) fn left(deadline: u32, now: Secs) -> Option<u32> {
    (deadline != NO_DEADLINE).then(|| deadline.saturating_sub(now))
}

impl Shard {
    /// Whether a queued message has expired (its body may still be in the log only); the caller drops it with
    /// `drop_expired`.
    pub(super) fn queued_expired(&self, q: &Queued) -> bool {
        left(q.deadline, self.now) == Some(0)
    }

    /// Drop an expired queued message: counted, and acknowledged in the log so a restart does not bring it back.
    pub(super) fn drop_expired(&mut self, sidx: u32, q: &Queued) {
        self.stats.expired += 1;
        self.persist_done(sidx, q);
    }

    /// Set the outbound Message Expiry Interval to what remains of it.
    pub(super) fn set_remaining_expiry(&self, q: &Queued, publish: &mut Publish) {
        if let Some(left) = left(q.deadline, self.now) {
            if let Some(p) = publish.properties.as_mut() {
                p.message_expiry_interval = Some(left.max(1));
            }
        }
    }

    /// Wall-clock second a message's expiry interval ends, for its log record (0 = never).
    pub(super) fn expires_unix(&self, msg: &Message) -> u64 {
        match msg.expiry_interval() {
            Some(iv) => self.epoch_unix + msg.received_at as u64 + iv as u64,
            None => 0,
        }
    }

    /// A body read back from the log that has a wall-clock deadline: its interval becomes what remains from
    /// now (`received_at` now), so every later computation sees the original deadline. `Some(0)` left = expired.
    pub(super) fn apply_stored_deadline(&self, m: &mut Message, expires_unix: u64) -> Option<u32> {
        if expires_unix == 0 {
            return None;
        }
        let left = expires_unix
            .saturating_sub(self.unix_now())
            .min(u32::MAX as u64 - 1) as u32;
        m.received_at = self.now;
        if let Some(p) = m.properties.as_mut() {
            p.message_expiry_interval = Some(left);
        }
        Some(left)
    }

    /// Shard-second deadline of a restored queue entry from the wall-clock one in the log.
    pub(super) fn deadline_from_unix(&self, expires_unix: u64) -> u32 {
        if expires_unix == 0 {
            return NO_DEADLINE;
        }
        let left = expires_unix.saturating_sub(self.unix_now());
        (self.now as u64 + left).min(NO_DEADLINE as u64 - 1) as u32
    }

    /// Drop expired entries from the queues of offline sessions: at most `SWEEP_PER_TICK` entries looked at per
    /// call, resuming where the last call stopped (online sessions drop theirs as they send). Counted in
    /// `Stats::expired` and acknowledged away in the log.
    pub(super) fn sweep_expired(&mut self) {
        let n = self.sessions.len();
        if n == 0 {
            return;
        }
        let mut budget = SWEEP_PER_TICK;
        let mut visited = 0;
        while budget > 0 && visited < n {
            let sidx = (self.sweep_cursor % n) as u32;
            self.sweep_cursor = (self.sweep_cursor + 1) % n;
            visited += 1;
            let now = self.now;
            let Some(s) = self.sessions[sidx as usize].as_mut() else {
                continue;
            };
            if s.conn.is_some() || s.queue.is_empty() {
                budget = budget.saturating_sub(1);
                continue;
            }
            let look = s.queue.len().min(budget);
            budget -= look;
            if !s
                .queue
                .iter()
                .take(look)
                .any(|q| left(q.deadline, now) == Some(0))
            {
                continue;
            }
            let mut kept = std::collections::VecDeque::with_capacity(s.queue.len());
            let mut gone = Vec::new();
            for (i, q) in std::mem::take(&mut s.queue).into_iter().enumerate() {
                if i < look && left(q.deadline, now) == Some(0) {
                    gone.push(q);
                } else {
                    kept.push_back(q);
                }
            }
            s.queue = kept.into();
            for q in gone {
                self.drop_expired(sidx, &q);
            }
        }
    }

    /// A retained message past its expiry is removed from the store (and the log) instead of being sent.
    /// Returns whether `m` is still alive.
    pub(super) fn retained_alive(&mut self, m: &Rc<Message>) -> bool {
        if remaining(m.expiry_interval(), m.received_at, self.now) != Some(0) {
            return true;
        }
        if let Some(old) = self.retained.remove(&m.topic) {
            self.retained_bytes -= old.payload.len() + old.topic.len();
            let clear = Message {
                payload: bytes::Bytes::new(),
                properties: None,
                ..(*old).clone()
            };
            self.persist_retained(&clear, true);
            self.stats.expired += 1;
        }
        false
    }
}
