//! v5 message expiry: a queued or retained message whose Message Expiry Interval has passed is dropped (counted
//! in `Stats::expired`, and acknowledged away in the log so replay forgets it); one still alive is forwarded
//! with the interval that remains [MQTT-3.3.2-6].
//!
//! Time counts from when the message reached this shard (`Message::received_at`, `Queued::since`), in shard
//! seconds. Bodies restored from the log carry no arrival time, so after a restart their interval starts over.

use super::*;

/// What is left of a message's expiry interval at `now`: `None` = no expiry, `Some(0)` = expired.
pub(super) fn remaining(interval: Option<u32>, since: u32, now: Secs) -> Option<u32> {
    interval.map(|iv| iv.saturating_sub(now.saturating_sub(since)))
}

impl Shard {
    /// Whether a queued message has expired; the caller drops it with `drop_expired`.
    pub(super) fn queued_expired(&self, q: &Queued) -> bool {
        let Some(msg) = q.msg.as_ref() else {
            return false;
        };
        remaining(msg.expiry_interval(), q.since, self.now) == Some(0)
    }

    /// Drop an expired queued message: counted, and acknowledged in the log so a restart does not bring it back.
    pub(super) fn drop_expired(&mut self, sidx: u32, q: &Queued) {
        self.stats.expired += 1;
        self.persist_done(sidx, q);
    }

    /// Set the outbound Message Expiry Interval to what remains of it.
    pub(super) fn set_remaining_expiry(&self, q: &Queued, publish: &mut Publish) {
        let Some(msg) = q.msg.as_ref() else { return };
        if let Some(left) = remaining(msg.expiry_interval(), q.since, self.now) {
            if let Some(p) = publish.properties.as_mut() {
                p.message_expiry_interval = Some(left.max(1));
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
