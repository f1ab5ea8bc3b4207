//! Metrics and `$SYS`: what a shard publishes once a second, and CONNECT timing.

use super::*;

impl ShardIo {
    /// Records CONNECT handling time when this read established the connection here (a hand-off is timed by
    /// the adopting shard instead).
    pub(super) fn connect_timed(
        &self,
        core: &Shard,
        key: ConnKey,
        outcome: &ReadOutcome,
        started: Instant,
    ) {
        if *outcome != ReadOutcome::HandedOff && core.is_established(key) {
            self.metrics
                .shard(self.id as usize)
                .connect_time
                .record(started.elapsed());
        }
    }

    /// Counters and gauges for the metrics registry: called once a second (a bounded step of the walk over
    /// sessions, see `Shard::gauges_step`), so the hot path pays nothing but the byte counts.
    pub(super) fn publish_metrics(&self) {
        let core = self.core.borrow();
        let mut g = core.gauges_step(
            &mut self.gauge_walk.borrow_mut(),
            crate::broker::shard::GAUGE_WALK_BUDGET,
        );
        g.mesh_depth = self
            .mesh
            .from
            .iter()
            .flatten()
            .map(|rx| rx.len() as u64)
            .sum();
        let m = self.metrics.shard(self.id as usize);
        m.publish(&core.stats, &g);
        m.publish_io(self.bytes_in.get(), self.bytes_out.get());
    }

    /// Retained `$SYS` updates when due (`sys_interval`), read from the registry just published.
    pub(super) fn publish_sys(&self, now: u64) {
        let topics = self.sys.borrow_mut().due(now, &self.metrics);
        let mut core = self.core.borrow_mut();
        for (topic, payload) in &topics {
            core.inject_sys(topic, payload);
        }
    }
}
