//! The shard's current levels for `crate::metrics`, computed on demand (once per second by the I/O layer): a
//! walk over sessions and connections, so the hot path keeps no extra counters.

use super::{Shard, NO_SESSION};
use crate::metrics::Gauges;

impl Shard {
    /// Everything but `mesh_depth`, which only the I/O layer sees (its channels).
    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            connections: self.conns.len as u64,
            retained_messages: self.retained.len() as u64,
            retained_bytes: self.retained_bytes as u64,
            ..Gauges::default()
        };
        for s in self.sessions.iter().flatten() {
            if s.conn.is_some() {
                g.sessions_online += 1;
            } else {
                g.sessions_offline += 1;
            }
            // Outlives its connection (logged when persistence is on).
            g.sessions_persistent += u64::from(s.expiry != Some(0));
            g.subscriptions += s.subs.len() as u64;
            g.queued_messages += s.queue.len() as u64;
            g.inflight_messages += s.inflight.len() as u64;
        }
        g.paused_publishers = self
            .conns
            .slots
            .iter()
            .filter_map(|s| s.item.as_ref())
            .filter(|c| c.pause_count > 0)
            .count() as u64;
        g
    }

    /// The connection finished CONNECT (it has a session), for timing CONNECT handling in the I/O layer.
    pub fn is_established(&self, key: crate::broker::message::ConnKey) -> bool {
        self.conns.get(key).is_some_and(|c| c.session != NO_SESSION)
    }
}
