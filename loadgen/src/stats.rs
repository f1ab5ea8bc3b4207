//! Per-worker measurements (merged at the end) and the final report: the `--json` line, the human summary and
//! the `.hgrm` percentile distribution.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::seqtrack::SeqTracker;

/// Latencies are recorded in nanoseconds, 3 significant digits, up to 100 s (longer is clamped).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Bound on distinct publisher ids one subscriber tracks (foreign publishers on a wildcard cannot grow it).
pub const MAX_STREAMS_PER_SUBSCRIBER: usize = 100_000;

#[derive(Debug, Default)]
pub struct SubResult {
    pub index: usize,
    pub subscribed: bool,
    pub streams: HashMap<u32, SeqTracker>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PubResult {
    pub index: usize,
    pub sent: u64,
    pub acked: u64,
    /// Sent everything it was due to send and had it all acknowledged.
    pub finished: bool,
}

/// Everything one worker thread measured.
pub struct WorkerStats {
    pub latency: Histogram<u64>,
    /// Publisher side, QoS 1/2: PUBLISH queued to PUBACK/PUBCOMP received, µs.
    pub ack_latency: Histogram<u64>,
    pub connect_latency: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub subs: Vec<SubResult>,
    pub pubs: Vec<PubResult>,
    pub last_recv_ns: u64,
    pub last_send_ns: u64,
    /// Messages without our stamp, or from too many publishers to track.
    pub foreign: u64,
    /// Messages stamped before this run started (an earlier run's backlog still in the broker).
    pub stale: u64,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            latency: new_histogram(),
            ack_latency: new_histogram(),
            connect_latency: new_histogram(),
            errors: BTreeMap::new(),
            subs: Vec::new(),
            pubs: Vec::new(),
            last_recv_ns: 0,
            last_send_ns: 0,
            foreign: 0,
            stale: 0,
        }
    }
}

impl WorkerStats {
    pub fn error(&mut self, reason: impl Into<String>) {
        *self.errors.entry(reason.into()).or_default() += 1;
    }

    pub fn merge(&mut self, other: WorkerStats) {
        // Same bounds on both sides: add() cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.ack_latency.add(&other.ack_latency);
        let _ = self.connect_latency.add(&other.connect_latency);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.subs.extend(other.subs);
        self.pubs.extend(other.pubs);
        self.last_recv_ns = self.last_recv_ns.max(other.last_recv_ns);
        self.last_send_ns = self.last_send_ns.max(other.last_send_ns);
        self.foreign += other.foreign;
        self.stale += other.stale;
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

/// Percentiles of a nanosecond histogram, in `unit_ns` units (1000 = microseconds).
pub fn percentiles(h: &Histogram<u64>, unit_ns: f64) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let q = |p: f64| h.value_at_quantile(p) as f64 / unit_ns;
    Percentiles {
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        p999: q(0.999),
        max: h.max() as f64 / unit_ns,
        mean: h.mean() / unit_ns,
        count: h.len(),
    }
}

/// (percentile, latency µs) points for plotting, log-spaced towards the tail.
pub fn latency_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let pts = [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999,
        100.0,
    ];
    pts.iter()
        .map(|&p| (p, h.value_at_quantile(p / 100.0) as f64 / 1000.0))
        .collect()
}

/// The HdrHistogram text format ("Value Percentile TotalCount 1/(1-Percentile)"), values in microseconds, as
/// read by the HdrHistogram plotter and most tooling.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            format!("{:>14}", "inf")
        };
        let _ = writeln!(
            s,
            "{:>12.3} {:>14.12} {:>10} {}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
            inv
        );
    }
    let p = percentiles(h, 1000.0);
    let _ = writeln!(
        s,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        p.mean,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        s,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        p.max,
        h.len()
    );
    s
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    /// Successful connections per second over the connect phase (first attempt to last CONNACK).
    pub connect_rate: f64,
    pub connect_secs: f64,
    pub latency_ms: Percentiles,
    /// Connections still open at the end of the hold.
    pub held_at_end: u64,
    pub broker_rss_kib_before: Option<u64>,
    pub broker_rss_kib_after: Option<u64>,
    pub broker_rss_bytes_per_conn: Option<f64>,
    /// The load generator's own memory per held connection (RSS delta / connected).
    pub loadgen_rss_bytes_per_conn: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CapacityStep {
    pub offered_rate: f64,
    pub send_rate: f64,
    pub recv_rate: f64,
    pub lost: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub latency_us: Percentiles,
    pub pass: bool,
    pub why: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CapacityReport {
    pub p99_bound_ms: f64,
    /// Highest offered rate that passed (0 when none did).
    pub max_rate: f64,
    pub steps: Vec<CapacityStep>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// Label of the broker under test (`--label`, else the address).
    pub broker: String,
    pub mqtt: String,
    pub qos: u8,
    pub size: usize,
    /// Offered rate in msg/s, 0 = as fast as possible.
    pub offered_rate: f64,
    pub publishers: usize,
    pub subscribers: usize,
    pub connections: usize,
    pub duration_s: f64,
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub send_rate: f64,
    pub recv_rate: f64,
    pub latency_us: Percentiles,
    pub latency_curve: Vec<(f64, f64)>,
    /// QoS 1/2 publishers: PUBLISH to its PUBACK/PUBCOMP (absent for QoS 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_latency_us: Option<Percentiles>,
    /// Load generator CPU, 100 = one core busy.
    pub loadgen_cpu_pct: f64,
    pub loadgen_threads: usize,
    /// CPU of the broker process during the run (with --broker-pid), 100 = one core busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_cpu_pct: Option<f64>,
    /// Broker CPU µs per delivered message over the run (with --broker-pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Broker RSS (KiB) before and after the run (with --broker-pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_rss_kib: Option<(u64, u64)>,
    pub errors: u64,
    pub errors_by_reason: BTreeMap<String, u64>,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityReport>,
    /// Full distribution for `--hgrm` (publish-to-deliver latency; connect latency for `conn`).
    #[serde(skip)]
    pub hgrm: String,
}

fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

impl Report {
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if let Some(c) = &self.connect {
            let _ = writeln!(
                s,
                "conn against {} (MQTT {}, {} connections, held {:.1} s)",
                self.broker, self.mqtt, c.attempted, self.duration_s
            );
        }
        let offered = if self.offered_rate > 0.0 {
            format!("{}/s", rate(self.offered_rate))
        } else {
            "max".into()
        };
        if self.connect.is_none() {
            let _ = writeln!(
                s,
                "{} against {} (MQTT {}, QoS {}, {} B, offered {}, {} pub / {} sub, {:.1} s)",
                self.scenario,
                self.broker,
                self.mqtt,
                self.qos,
                self.size,
                offered,
                self.publishers,
                self.subscribers,
                self.duration_s
            );
        }
        if let Some(c) = &self.connect {
            let _ = writeln!(
                s,
                "  connections: {} attempted, {} connected, {} failed, {}/s over {:.2} s, {} held at end",
                c.attempted,
                c.connected,
                c.failed,
                rate(c.connect_rate),
                c.connect_secs,
                c.held_at_end
            );
            let l = &c.latency_ms;
            let _ = writeln!(
                s,
                "  connect latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
            if let (Some(b), Some(a), Some(per)) = (
                c.broker_rss_kib_before,
                c.broker_rss_kib_after,
                c.broker_rss_bytes_per_conn,
            ) {
                let _ = writeln!(
                    s,
                    "  broker RSS: {b} KiB -> {a} KiB = {per:.0} B per connection"
                );
            }
            if let Some(per) = c.loadgen_rss_bytes_per_conn {
                let _ = writeln!(s, "  loadgen RSS: {per:.0} B per connection");
            }
        }
        if self.scenario != "conn" {
            let _ = writeln!(
                s,
                "  sent {} ({}/s)  acked {}  received {} ({}/s)  expected {}",
                self.sent,
                rate(self.send_rate),
                self.acked,
                self.received,
                rate(self.recv_rate),
                self.expected
            );
            let _ = writeln!(
                s,
                "  lost {}  duplicates {}  out-of-order {}",
                self.lost, self.duplicates, self.out_of_order
            );
            let l = &self.latency_us;
            let _ = writeln!(
                s,
                "  latency µs: p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  (mean {:.0}, n={})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
            );
            if let Some(l) = &self.ack_latency_us {
                let _ = writeln!(
                    s,
                    "  ack latency µs: p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  (mean {:.0}, n={})",
                    l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
                );
            }
        }
        if let Some(c) = &self.capacity {
            let _ = writeln!(s, "  capacity (zero loss, p99 <= {} ms):", c.p99_bound_ms);
            for st in &c.steps {
                let _ = writeln!(
                    s,
                    "    offered {:>8}/s  sent {:>8}/s  recv {:>8}/s  lost {:>7}  p50 {:>8.0}  p99 {:>9.0}  max {:>9.0} µs  {}",
                    rate(st.offered_rate),
                    rate(st.send_rate),
                    rate(st.recv_rate),
                    st.lost,
                    st.latency_us.p50,
                    st.latency_us.p99,
                    st.latency_us.max,
                    if st.pass { "ok".to_string() } else { format!("FAIL: {}", st.why) }
                );
            }
            let _ = writeln!(s, "  => max sustained rate: {}/s", rate(c.max_rate));
        }
        let _ = writeln!(
            s,
            "  loadgen CPU {:.0}% ({} threads)  errors {}",
            self.loadgen_cpu_pct, self.loadgen_threads, self.errors
        );
        if let Some(b) = self.broker_cpu_pct {
            let _ = writeln!(s, "  broker CPU {b:.0}%");
        }
        if let Some((b, a)) = self.broker_rss_kib {
            let _ = writeln!(s, "  broker RSS {b} KiB -> {a} KiB");
        }
        for (k, v) in &self.errors_by_reason {
            let _ = writeln!(s, "    {k}: {v}");
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  WARNING: {w}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let p = percentiles(&h, 1000.0);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(p.count, 1000);
        let text = hgrm(&h);
        assert!(text.contains("Total count    =         1000"), "{text}");
        // TotalCount is cumulative: the last row has every value.
        let last_row = text
            .lines()
            .rev()
            .find(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        assert_eq!(last_row.split_whitespace().nth(2), Some("1000"), "{text}");
        assert_eq!(latency_curve(&h).last().map(|x| x.0), Some(100.0));
    }

    #[test]
    fn report_json_has_the_documented_fields() {
        let r = Report {
            scenario: "fanin".into(),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for k in [
            "scenario",
            "sent",
            "acked",
            "received",
            "expected",
            "lost",
            "duplicates",
            "out_of_order",
            "send_rate",
            "recv_rate",
            "latency_us",
            "loadgen_cpu_pct",
            "errors",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"].get(k).is_some(), "missing latency_us.{k}");
        }
    }
}
