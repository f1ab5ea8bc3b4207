//! The shard's current levels for `crate::metrics`, computed once per second by the I/O layer. Counts that are
//! kept anyway (connections, retained, queued log bytes) are read as they are; the rest comes from a walk over
//! sessions and connections, so the hot path keeps no extra counters. The walk is incremental ([`GaugeWalk`]):
//! each tick visits at most a budget of slots and carries on where it stopped, so a shard with a million
//! sessions pays a bounded slice of a millisecond per tick, not a full pass; those gauges then show the last
//! complete pass (at most `slots / budget` seconds old).

use super::{Shard, NO_SESSION};
use crate::metrics::Gauges;

/// Session and connection slots one tick may visit (a few hundred µs at worst, cache misses included).
pub const GAUGE_WALK_BUDGET: usize = 16_384;

/// Where an incremental walk over a shard's sessions and connections is, and what it has summed so far.
#[derive(Debug, Default)]
pub struct GaugeWalk {
    session_at: usize,
    conn_at: usize,
    /// The pass in progress.
    partial: Gauges,
    /// The last complete pass.
    done: Gauges,
    /// Passes completed.
    pub passes: u64,
    /// Slots visited by the last step (the bound under test).
    pub visited: usize,
}

impl Shard {
    /// Everything but `mesh_depth`, which only the I/O layer sees (its channels), in one full pass (tests and
    /// small shards; the I/O layer uses [`Shard::gauges_step`]).
    pub fn gauges(&self) -> Gauges {
        self.gauges_step(&mut GaugeWalk::default(), usize::MAX)
    }

    /// Visits at most `budget` slots from where `walk` stopped; the walked gauges are those of the last complete
    /// pass (this step's, if it completed one), the others are current.
    pub fn gauges_step(&self, walk: &mut GaugeWalk, budget: usize) -> Gauges {
        let mut left = budget;
        let sessions = &self.sessions;
        let end = sessions.len().min(walk.session_at.saturating_add(left));
        let g = &mut walk.partial;
        for s in sessions[walk.session_at.min(end)..end].iter().flatten() {
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
        left -= end.saturating_sub(walk.session_at);
        walk.session_at = walk.session_at.max(end);
        let slots = &self.conns.slots;
        let cend = slots.len().min(walk.conn_at.saturating_add(left));
        g.paused_publishers += slots[walk.conn_at.min(cend)..cend]
            .iter()
            .filter_map(|s| s.item.as_ref())
            .filter(|c| c.pause_count > 0)
            .count() as u64;
        left -= cend.saturating_sub(walk.conn_at);
        walk.conn_at = walk.conn_at.max(cend);
        walk.visited = budget - left;
        if walk.session_at >= sessions.len() && walk.conn_at >= slots.len() {
            walk.done = std::mem::take(&mut walk.partial);
            walk.session_at = 0;
            walk.conn_at = 0;
            walk.passes += 1;
        }
        Gauges {
            connections: self.conns.len as u64,
            retained_messages: self.retained.len() as u64,
            retained_bytes: self.retained_bytes as u64,
            queued_log_bytes: self.stats.queued_log_bytes,
            ..walk.done.clone()
        }
    }

    /// The connection finished CONNECT (it has a session), for timing CONNECT handling in the I/O layer.
    pub fn is_established(&self, key: crate::broker::message::ConnKey) -> bool {
        self.conns.get(key).is_some_and(|c| c.session != NO_SESSION)
    }
}
