//! The `$SYS/broker/...` topics (mosquitto's names where the meaning matches, see mosquitto(8) "BROKER STATUS"),
//! computed from the metrics registry. Sans-io: `SysTopics::due` is given the clock and returns the retained
//! messages to inject; the shard loop hands them to `Shard::inject_sys`.
//!
//! Every shard publishes its own figures under `$SYS/broker/shards/N/...`; shard 0 also publishes the broker's
//! totals. Load averages are mosquitto's: exponentially weighted moving averages of the per-minute rate over 1, 5
//! and 15 minutes.

use super::{Metrics, ShardSnapshot, VERSION};

/// Per-minute rates averaged over 1, 5 and 15 minutes.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    avg: [f64; 3],
}

impl Load {
    const WINDOWS: [(f64, &'static str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

    /// `delta` events over `secs` seconds (mosquitto's calc_load: new = rate + e^(-dt/window) * (old - rate)).
    fn update(&mut self, delta: u64, secs: f64) {
        let per_minute = delta as f64 * 60.0 / secs;
        for (a, (window, _)) in self.avg.iter_mut().zip(Self::WINDOWS) {
            let e = (-secs / window).exp();
            *a = per_minute + e * (*a - per_minute);
        }
    }
}

/// The counters load averages are kept for: (mosquitto's topic under `load/`, value).
fn load_sources(s: &ShardSnapshot) -> [(&'static str, u64); 5] {
    [
        ("publish/received", s.stats.publishes_in),
        ("publish/sent", s.stats.publishes_out),
        ("bytes/received", s.bytes_received),
        ("bytes/sent", s.bytes_sent),
        ("connections", s.stats.connections_accepted),
    ]
}

#[derive(Debug)]
pub struct SysTopics {
    shard: usize,
    /// Seconds between publications; 0 = off.
    interval: u64,
    /// Clock second and counter values at the last publication.
    last: Option<(u64, [u64; 5])>,
    loads: [Load; 5],
    clients_maximum: u64,
}

impl SysTopics {
    pub fn new(shard: usize, interval: u32) -> Self {
        SysTopics {
            shard,
            interval: interval as u64,
            last: None,
            loads: [Load::default(); 5],
            clients_maximum: 0,
        }
    }

    /// The `(topic, payload)` pairs to publish retained at clock second `now`, or nothing if not due yet.
    pub fn due(&mut self, now: u64, m: &Metrics) -> Vec<(String, String)> {
        if self.interval == 0 || self.last.is_some_and(|(t, _)| now < t + self.interval) {
            return Vec::new();
        }
        let mine = m.shard(self.shard).snapshot();
        // Shard 0 speaks for the broker: its load averages are of the totals.
        let totals = (self.shard == 0).then(|| m.totals());
        let basis = totals.as_ref().unwrap_or(&mine);
        let values = load_sources(basis).map(|(_, v)| v);
        if let Some((t, prev)) = self.last {
            let secs = (now - t).max(1) as f64;
            for ((load, v), p) in self.loads.iter_mut().zip(values).zip(prev) {
                load.update(v.saturating_sub(p), secs);
            }
        }
        self.last = Some((now, values));
        let mut out = Vec::new();
        let shard_prefix = format!("$SYS/broker/shards/{}", self.shard);
        figures(&shard_prefix, &mine, &mut out);
        if let Some(t) = &totals {
            let p = "$SYS/broker";
            self.clients_maximum = self.clients_maximum.max(t.gauges.sessions_online);
            out.push((format!("{p}/version"), format!("coremq version {VERSION}")));
            out.push((
                format!("{p}/uptime"),
                format!("{} seconds", m.uptime().as_secs()),
            ));
            out.push((
                format!("{p}/clients/maximum"),
                self.clients_maximum.to_string(),
            ));
            // Each shard holds a replica of the retained store: one shard's count is the broker's.
            out.push((
                format!("{p}/retained messages/count"),
                mine.gauges.retained_messages.to_string(),
            ));
            if let Some(rss) = super::render::resident_bytes() {
                // Resident memory (mosquitto reports its allocator's heap; coremq's allocator is mimalloc).
                out.push((format!("{p}/heap/current"), rss.to_string()));
            }
            figures(p, t, &mut out);
            for b in m.bridges() {
                out.extend(b.sys_topics());
            }
            for ((name, _), load) in load_sources(t).iter().zip(&self.loads) {
                for ((_, window), v) in Load::WINDOWS.iter().zip(load.avg) {
                    out.push((format!("{p}/load/{name}/{window}"), format!("{v:.2}")));
                }
            }
        }
        out
    }
}

/// Figures that exist both per shard and for the broker.
fn figures(prefix: &str, s: &ShardSnapshot, out: &mut Vec<(String, String)>) {
    let g = &s.gauges;
    for (topic, v) in [
        ("clients/connected", g.sessions_online),
        ("clients/disconnected", g.sessions_offline),
        ("clients/total", g.sessions_online + g.sessions_offline),
        ("publish/messages/received", s.stats.publishes_in),
        ("publish/messages/sent", s.stats.publishes_out),
        ("publish/messages/dropped", drops(s)),
        ("bytes/received", s.bytes_received),
        ("bytes/sent", s.bytes_sent),
        ("subscriptions/count", g.subscriptions),
        (
            "store/messages/count",
            g.queued_messages + g.inflight_messages,
        ),
    ] {
        out.push((format!("{prefix}/{topic}"), v.to_string()));
    }
}

fn drops(s: &ShardSnapshot) -> u64 {
    let t = &s.stats;
    t.dropped_qos0 + t.dropped_qos12 + t.dropped_offline + t.dropped_too_large
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::shard::Stats;
    use crate::metrics::Gauges;

    fn value(out: &[(String, String)], topic: &str) -> String {
        out.iter()
            .find(|(t, _)| t == topic)
            .unwrap_or_else(|| panic!("{topic} not published: {out:?}"))
            .1
            .clone()
    }

    #[test]
    fn publishes_every_interval_with_totals_on_shard_0() {
        let m = Metrics::new(2);
        let g = Gauges {
            sessions_online: 3,
            sessions_offline: 1,
            subscriptions: 4,
            ..Gauges::default()
        };
        let s = Stats {
            publishes_in: 10,
            ..Stats::default()
        };
        m.shard(0).publish(&s, &g);
        m.shard(1).publish(&s, &g);
        let mut sys0 = SysTopics::new(0, 10);
        let mut sys1 = SysTopics::new(1, 10);
        let out = sys0.due(5, &m);
        assert_eq!(value(&out, "$SYS/broker/clients/connected"), "6");
        assert_eq!(value(&out, "$SYS/broker/clients/total"), "8");
        assert_eq!(value(&out, "$SYS/broker/publish/messages/received"), "20");
        assert_eq!(
            value(&out, "$SYS/broker/shards/0/publish/messages/received"),
            "10"
        );
        assert_eq!(value(&out, "$SYS/broker/clients/maximum"), "6");
        assert!(value(&out, "$SYS/broker/version").contains(VERSION));
        assert_eq!(
            value(&out, "$SYS/broker/load/publish/received/1min"),
            "0.00"
        );
        let out1 = sys1.due(5, &m);
        assert_eq!(
            value(&out1, "$SYS/broker/shards/1/subscriptions/count"),
            "4"
        );
        assert!(
            out1.iter()
                .all(|(t, _)| t.starts_with("$SYS/broker/shards/1/")),
            "{out1:?}"
        );
        // Not due before the interval; due at it.
        assert!(sys0.due(14, &m).is_empty());
        m.shard(0).publish(
            &Stats {
                publishes_in: 70,
                ..Stats::default()
            },
            &Gauges::default(),
        );
        let out = sys0.due(15, &m);
        // 60 messages in 10 s = 360/min; the 1 min average moves 1 - e^(-10/60) of the way there.
        let expect = 360.0 * (1.0 - (-10.0f64 / 60.0).exp());
        assert_eq!(
            value(&out, "$SYS/broker/load/publish/received/1min"),
            format!("{expect:.2}")
        );
        let m5: f64 = value(&out, "$SYS/broker/load/publish/received/5min")
            .parse()
            .unwrap();
        assert!(m5 > 0.0 && m5 < expect);
        // The maximum is remembered after clients leave.
        assert_eq!(value(&out, "$SYS/broker/clients/connected"), "3");
        assert_eq!(value(&out, "$SYS/broker/clients/maximum"), "6");
    }

    #[test]
    fn interval_zero_is_off() {
        let m = Metrics::new(1);
        assert!(SysTopics::new(0, 0).due(100, &m).is_empty());
    }
}
