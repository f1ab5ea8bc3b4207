//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` once per family, one sample per
//! line, every per-shard series labelled `shard="N"`. Totals are left to `sum()` (a series without the label in
//! the same family would be counted twice by it); process-wide values have no shard label.

use std::fmt::Write;

use super::{HistogramSnapshot, Metrics, ShardSnapshot, GAUGES, STATS_COUNTERS, VERSION};

/// The `Content-Type` of what `render` returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn render(m: &Metrics) -> String {
    let shards: Vec<ShardSnapshot> = m.shards().iter().map(|s| s.snapshot()).collect();
    let mut out = String::with_capacity(16 * 1024);
    let o = &mut out;

    family(
        o,
        "coremq_build_info",
        "gauge",
        "Always 1; the version is a label.",
    );
    sample(
        o,
        "coremq_build_info",
        &format!("version=\"{VERSION}\""),
        1.0,
    );
    family(
        o,
        "coremq_ready",
        "gauge",
        "1 once recovery finished and the listeners are open.",
    );
    sample(o, "coremq_ready", "", if m.is_ready() { 1.0 } else { 0.0 });
    family(
        o,
        "coremq_shards",
        "gauge",
        "Shards (executors) of this broker.",
    );
    sample(o, "coremq_shards", "", shards.len() as f64);
    family(
        o,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch in seconds.",
    );
    sample(o, "process_start_time_seconds", "", m.start_unix().floor());
    if let Some(rss) = resident_bytes() {
        family(
            o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        sample(o, "process_resident_memory_bytes", "", rss as f64);
    }

    let mut prev = "";
    for d in STATS_COUNTERS {
        if d.name != prev {
            family(o, d.name, "counter", d.help);
            prev = d.name;
            // Every shard's series of this family, whatever its extra labels.
            for def in STATS_COUNTERS.iter().filter(|x| x.name == d.name) {
                for (i, s) in shards.iter().enumerate() {
                    sample(
                        o,
                        d.name,
                        &labels(i, def.labels),
                        (def.get)(&s.stats) as f64,
                    );
                }
            }
        }
    }
    for (name, help, get) in [
        (
            "coremq_received_bytes_total",
            "Bytes read from client sockets.",
            (|s: &ShardSnapshot| s.bytes_received) as fn(&ShardSnapshot) -> u64,
        ),
        (
            "coremq_sent_bytes_total",
            "Bytes written to client sockets.",
            |s| s.bytes_sent,
        ),
    ] {
        family(o, name, "counter", help);
        for (i, s) in shards.iter().enumerate() {
            sample(o, name, &labels(i, ""), get(s) as f64);
        }
    }
    for d in GAUGES {
        family(o, d.name, "gauge", d.help);
        for (i, s) in shards.iter().enumerate() {
            sample(o, d.name, &labels(i, ""), (d.get)(&s.gauges) as f64);
        }
    }
    histogram_family(
        o,
        "coremq_log_sync_duration_seconds",
        "Time from handing written log records to the syncer to them being durable.",
        shards.iter().map(|s| &s.log_sync),
    );
    histogram_family(
        o,
        "coremq_connect_duration_seconds",
        "Time the owning shard spent handling a CONNECT.",
        shards.iter().map(|s| &s.connect_time),
    );
    crate::bridge::status::render(&m.bridges(), o);
    out
}

fn labels(shard: usize, extra: &str) -> String {
    if extra.is_empty() {
        format!("shard=\"{shard}\"")
    } else {
        format!("shard=\"{shard}\",{extra}")
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn sample(o: &mut String, name: &str, labels: &str, v: f64) {
    if labels.is_empty() {
        let _ = writeln!(o, "{name} {}", value(v));
    } else {
        let _ = writeln!(o, "{name}{{{labels}}} {}", value(v));
    }
}

fn histogram_family<'a>(
    o: &mut String,
    name: &str,
    help: &str,
    per_shard: impl Iterator<Item = &'a HistogramSnapshot>,
) {
    family(o, name, "histogram", help);
    for (i, h) in per_shard.enumerate() {
        for (le, n) in &h.buckets {
            let l = format!("shard=\"{i}\",le=\"{}\"", value(*le));
            sample(o, &format!("{name}_bucket"), &l, *n as f64);
        }
        sample(o, &format!("{name}_sum"), &labels(i, ""), h.sum_seconds);
        sample(o, &format!("{name}_count"), &labels(i, ""), h.count as f64);
    }
}

/// Prometheus spells infinities `+Inf` / `-Inf`; integral values print without a fraction.
pub fn value(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// HELP text escapes backslash and newline.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Resident set size from `/proc/self/statm` (pages), `None` off Linux.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory arguments.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}
