//! Result files (one JSON report per line) side by side: one row per scenario run, one column group per broker.

use std::path::Path;

use crate::stats::Report;

/// Reads every report line of the files; lines that are not reports are skipped with a note on stderr.
pub fn load(files: &[impl AsRef<Path>]) -> Result<Vec<Report>, String> {
    let mut out = Vec::new();
    for f in files {
        let f = f.as_ref();
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with('{'))
        {
            match serde_json::from_str::<Report>(line) {
                Ok(r) => out.push(r),
                Err(e) => eprintln!("{}:{}: not a report ({e}), skipped", f.display(), n + 1),
            }
        }
    }
    Ok(out)
}

/// A short description of the run used as the row key (same key = same workload on different brokers).
pub fn workload(r: &Report) -> String {
    let rate = if r.offered_rate > 0.0 {
        format!("{:.0}/s", r.offered_rate)
    } else {
        "max".into()
    };
    match r.scenario.as_str() {
        "conn" => format!("conn {}", r.connections),
        _ => format!(
            "{} {}p/{}s q{} {}B {}",
            r.scenario, r.publishers, r.subscribers, r.qos, r.size, rate
        ),
    }
}

/// Lost as a share of what should have arrived, e.g. `38.2%` (`-` when nothing was expected).
fn loss_pct(r: &Report) -> String {
    let expected = r.expected.max(r.received + r.lost);
    if expected == 0 {
        return "-".into();
    }
    format!("{:.1}%", r.lost as f64 * 100.0 / expected as f64)
}

pub fn render(reports: &[Report]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<34} {:<12} {:>11} {:>11} {:>9} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>6} {:>7} {:>8}",
        "workload",
        "broker",
        "send/s",
        "recv/s",
        "lost",
        "loss",
        "dup",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "lg cpu%",
        "brk cpu%",
        "brk µs/m"
    );
    let mut keys: Vec<String> = Vec::new();
    for r in reports {
        let k = workload(r);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for k in keys {
        for r in reports.iter().filter(|r| workload(r) == k) {
            if let Some(c) = &r.connect {
                let per = c
                    .broker_rss_bytes_per_conn
                    .map_or("-".into(), |b| format!("{b:.0} B/conn"));
                let _ = writeln!(
                    s,
                    "{:<34} {:<12} {:>10.0}c/s connected {}/{} held {} connect p99 {:.2} ms  broker RSS {}",
                    k, r.broker, c.connect_rate, c.connected, c.attempted, c.held_at_end, c.latency_ms.p99, per
                );
                continue;
            }
            let l = &r.latency_us;
            let _ = writeln!(
                s,
                "{:<34} {:<12} {:>11.0} {:>11.0} {:>9} {:>6} {:>5} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>6.0} {:>7} {:>8}",
                k,
                r.broker,
                r.send_rate,
                r.recv_rate,
                r.lost,
                loss_pct(r),
                r.duplicates,
                l.p50,
                l.p99,
                l.p999,
                l.max,
                r.loadgen_cpu_pct,
                r.broker_cpu_pct.map_or("-".to_string(), |c| format!("{c:.0}")),
                r.broker_cpu_us_per_msg
                    .map_or("-".to_string(), |c| format!("{c:.2}"))
            );
            if let Some(c) = &r.capacity {
                let _ = writeln!(
                    s,
                    "{:<34} {:<12} max sustained {:.0} msg/s (p99 <= {} ms, zero loss)",
                    "", r.broker, c.max_rate, c.p99_bound_ms
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_rows_by_workload() {
        let a = Report {
            scenario: "fanin".into(),
            broker: "a".into(),
            publishers: 2,
            subscribers: 1,
            ..Default::default()
        };
        let b = Report {
            broker: "b".into(),
            ..a.clone()
        };
        let c = Report {
            scenario: "pairs".into(),
            broker: "a".into(),
            ..Default::default()
        };
        let t = render(&[a, c, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[1].contains("fanin") && lines[2].contains("fanin") && lines[3].contains("pairs"),
            "{t}"
        );
    }

    #[test]
    fn loads_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        let r = Report {
            scenario: "fanout".into(),
            sent: 5,
            ..Default::default()
        };
        std::fs::write(
            &p,
            format!(
                "{}\nnot json\n{}\n",
                serde_json::to_string(&r).unwrap(),
                serde_json::to_string(&r).unwrap()
            ),
        )
        .unwrap();
        let got = load(&[&p]).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].sent, 5);
    }
}
