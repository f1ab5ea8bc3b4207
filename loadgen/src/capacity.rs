//! `--find-max`: the highest offered rate the broker sustains with zero loss and p99 under a bound. The rate
//! doubles until a step fails, then bisects between the last pass and the first failure. Each step is a fresh
//! run (new connections) so a backlog from an overloaded step cannot leak into the next one.

use crate::run::{run_pubsub, Plan, Settings};
use crate::stats::{CapacityReport, CapacityStep, Report};

/// Why a step fails, or None when it passes.
pub fn judge(r: &Report, offered: f64, p99_bound_ms: f64) -> Option<String> {
    if r.errors > 0 {
        return Some(format!("{} errors", r.errors));
    }
    if r.lost > 0 {
        return Some(format!("{} lost", r.lost));
    }
    if r.duplicates > 0 {
        return Some(format!("{} duplicates", r.duplicates));
    }
    if r.latency_us.p99 > p99_bound_ms * 1000.0 {
        return Some(format!(
            "p99 {:.1} ms > {} ms",
            r.latency_us.p99 / 1000.0,
            p99_bound_ms
        ));
    }
    if r.send_rate < 0.95 * offered {
        return Some(format!("only {:.0}/s could be sent", r.send_rate));
    }
    None
}

/// A failed step may be run again: nothing was lost, duplicated or refused, only latency or the send rate fell
/// short (both of which a passing stall on a shared host can cause).
pub fn retryable(r: &Report) -> bool {
    r.errors == 0 && r.lost == 0 && r.duplicates == 0
}

/// The next rate to try, or None when the search is over. `pass`/`fail` are the best pass and lowest failure.
pub fn next_rate(
    pass: Option<f64>,
    fail: Option<f64>,
    start: f64,
    limit: f64,
    bisections_left: u32,
) -> Option<f64> {
    match (pass, fail) {
        (None, None) => Some(start),
        (Some(p), None) => (p < limit).then(|| (p * 2.0).min(limit)),
        (None, Some(f)) => (bisections_left > 0 && f / 2.0 >= 1.0).then_some(f / 2.0),
        (Some(p), Some(f)) => {
            (bisections_left > 0 && f - p > p * 0.02).then(|| ((p + f) / 2.0).round())
        }
    }
}

pub fn find_max(s: &mut Settings, plan: &Plan) -> Report {
    let bound = s.common.p99_max_ms;
    s.common.duration = s.common.step_duration;
    let mut steps = Vec::new();
    let (mut pass, mut fail): (Option<f64>, Option<f64>) = (None, None);
    let mut best: Option<Report> = None;
    let mut last: Option<Report> = None;
    let mut bisections = s.common.bisect_steps;
    // Bounded: doubling from start to limit plus the bisections.
    for _ in 0..64 {
        if crate::cpu::interrupted() {
            break;
        }
        let Some(rate) = next_rate(
            pass,
            fail,
            s.common.start_rate.max(1.0),
            s.common.rate_limit,
            bisections,
        ) else {
            break;
        };
        if fail.is_some() {
            bisections = bisections.saturating_sub(1);
        }
        s.client.total_rate = rate;
        let mut attempt = 0;
        let (r, why) = loop {
            let r = run_pubsub(s, plan);
            let why = judge(&r, rate, bound);
            if why.is_some() && retryable(&r) && attempt < s.common.step_retries {
                attempt += 1;
                if !s.common.quiet {
                    eprintln!(
                        "capacity: offered {rate:.0}/s: {} (no loss): attempt {} of {}",
                        why.as_deref().unwrap_or(""),
                        attempt + 1,
                        s.common.step_retries + 1
                    );
                }
                steps.push(step(rate, &r, &why, true));
                continue;
            }
            break (r, why);
        };
        if !s.common.quiet {
            eprintln!(
                "capacity: offered {rate:.0}/s -> sent {:.0}/s recv {:.0}/s lost {} p99 {:.0} µs: {}",
                r.send_rate,
                r.recv_rate,
                r.lost,
                r.latency_us.p99,
                why.as_deref().unwrap_or("ok")
            );
        }
        steps.push(step(rate, &r, &why, false));
        if why.is_none() {
            pass = Some(rate);
            best = Some(r);
        } else {
            fail = Some(fail.map_or(rate, |f: f64| f.min(rate)));
            last = Some(r);
        }
    }
    let mut report = best.or(last).unwrap_or_default();
    report.capacity = Some(CapacityReport {
        p99_bound_ms: bound,
        max_rate: pass.unwrap_or(0.0),
        steps,
    });
    report
}

fn step(rate: f64, r: &Report, why: &Option<String>, retried: bool) -> CapacityStep {
    CapacityStep {
        offered_rate: rate,
        send_rate: r.send_rate,
        recv_rate: r.recv_rate,
        lost: r.lost,
        duplicates: r.duplicates,
        errors: r.errors,
        latency_us: r.latency_us.clone(),
        pass: why.is_none(),
        why: match (why, retried) {
            (Some(w), true) => format!("{w} (run again)"),
            (Some(w), false) => w.clone(),
            (None, _) => String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_bisects() {
        assert_eq!(next_rate(None, None, 1000.0, 1e7, 4), Some(1000.0));
        assert_eq!(next_rate(Some(1000.0), None, 1000.0, 1e7, 4), Some(2000.0));
        assert_eq!(
            next_rate(Some(4000.0), Some(8000.0), 1000.0, 1e7, 4),
            Some(6000.0)
        );
        assert_eq!(next_rate(Some(4000.0), Some(8000.0), 1000.0, 1e7, 0), None);
        assert_eq!(next_rate(Some(1e7), None, 1000.0, 1e7, 4), None);
        assert_eq!(next_rate(None, Some(1000.0), 1000.0, 1e7, 2), Some(500.0));
        // Converged within 2%: stop.
        assert_eq!(next_rate(Some(1000.0), Some(1010.0), 1000.0, 1e7, 4), None);
    }

    #[test]
    fn judges_loss_latency_and_shortfall() {
        let mut r = Report {
            send_rate: 1000.0,
            ..Default::default()
        };
        assert_eq!(judge(&r, 1000.0, 10.0), None);
        r.latency_us.p99 = 10_001.0;
        assert!(judge(&r, 1000.0, 10.0).unwrap().contains("p99"));
        r.latency_us.p99 = 10.0;
        r.lost = 1;
        assert!(judge(&r, 1000.0, 10.0).unwrap().contains("lost"));
        r.lost = 0;
        r.send_rate = 900.0;
        assert!(judge(&r, 1000.0, 10.0).unwrap().contains("sent"));
    }

    #[test]
    fn only_latency_or_rate_failures_are_run_again() {
        let mut r = Report::default();
        r.latency_us.p99 = 50_000.0;
        assert!(retryable(&r));
        r.lost = 1;
        assert!(!retryable(&r), "loss is a verdict, not noise");
        r.lost = 0;
        r.duplicates = 1;
        assert!(!retryable(&r));
        r.duplicates = 0;
        r.errors = 1;
        assert!(!retryable(&r));
    }
}
