//! v5 Will Delay Interval: after an abnormal close the will waits min(will delay, session expiry) seconds
//! [MQTT-3.1.3-9]; a reconnect of the session in time cancels it, and a session that ends first (expiry, or a
//! clean-start takeover) publishes it then.
//!
//! Pending wills live in the shard, not in the session (whose size every idle connection pays for): a map by
//! session plus an index ordered by deadline, so the tick costs per due will. Both are bounded by the number of
//! sessions. They are not written to the log yet: a restart forgets a pending will.

use std::collections::BTreeSet;

use super::*;

#[derive(Debug, Default)]
pub(super) struct PendingWills {
    by_session: HashMap<u32, (u64, Box<codec::Will>)>,
    due: BTreeSet<(u64, u32)>,
}

impl PendingWills {
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_session.len()
    }
}

impl Shard {
    /// The connection of session `sidx` closed abnormally: publish its will now or when its delay ends.
    pub(super) fn will_on_close(&mut self, sidx: u32, will: Box<codec::Will>) {
        let s = self.session(sidx);
        let will_delay = will
            .properties
            .as_ref()
            .and_then(|p| p.will_delay_interval)
            .unwrap_or(0);
        // The session ends at its expiry, and the will goes then at the latest (`None` = never expires).
        let delay = match s.expiry {
            Some(e) => will_delay.min(e),
            None => will_delay,
        };
        if delay == 0 {
            self.publish_will(*will);
            return;
        }
        let deadline = self.now as u64 + delay as u64;
        self.cancel_will(sidx);
        self.wills.due.insert((deadline, sidx));
        self.wills.by_session.insert(sidx, (deadline, will));
    }

    /// The session reconnected in time: its delayed will is not published.
    pub(super) fn cancel_will(&mut self, sidx: u32) {
        if let Some((deadline, _)) = self.wills.by_session.remove(&sidx) {
            self.wills.due.remove(&(deadline, sidx));
        }
    }

    /// The session ends with its will still pending: publish it now.
    pub(super) fn fire_pending_will(&mut self, sidx: u32) {
        if let Some((deadline, will)) = self.wills.by_session.remove(&sidx) {
            self.wills.due.remove(&(deadline, sidx));
            self.publish_will(*will);
        }
    }

    /// From `tick`: publish the wills whose delay has passed.
    pub(super) fn fire_due_wills(&mut self) {
        let now = self.now as u64;
        while let Some(&(deadline, sidx)) = self.wills.due.first() {
            if deadline > now {
                break;
            }
            self.fire_pending_will(sidx);
        }
    }
}
