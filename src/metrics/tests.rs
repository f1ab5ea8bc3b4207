use std::io::{Read, Write};
use std::sync::atomic::AtomicBool;

use super::render::render;
use super::textcheck::check;
use super::*;

/// Field names of `Stats`, read from its `Debug` output (so this test sees fields added later).
fn stats_fields() -> Vec<String> {
    let dbg = format!("{:?}", Stats::default());
    let inner = dbg
        .trim_start_matches("Stats")
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}');
    inner
        .split(',')
        .filter_map(|kv| kv.split(':').next())
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

/// A `Stats` whose every field differs (1, 2, 3, ... in table order).
fn distinct_stats() -> Stats {
    let s = Stats {
        connections_accepted: 1,
        connections_closed: 2,
        handoffs_out: 3,
        handoffs_in: 4,
        malformed: 5,
        protocol_errors: 6,
        keepalive_timeouts: 7,
        takeovers: 8,
        publishes_in: 9,
        publishes_out: 10,
        dropped_qos0: 11,
        dropped_qos12: 12,
        dropped_offline: 13,
        dropped_too_large: 14,
        retained_rejected: 15,
        wills_published: 16,
        pauses: 17,
        persist_errors: 18,
        publishes_refused: 19,
        subscribes_refused: 20,
        log_stalls: 21,
        publishes_denied: 22,
        refused_queue_full: 23,
        full_session_bytes: 24,
        full_session_messages: 25,
        full_shard_bytes: 26,
        full_online_hard: 27,
        queued_log_bytes: 28,
        expired: 29,
        dropped_shared: 30,
        shared_redispatched: 31,
        auth_refused_credentials: 32,
        auth_refused_not_authorized: 33,
        auth_refused_busy: 34,
        auth_verified_inline: 35,
        auth_verified_off_loop: 36,
        auth_cache_hits: 37,
        acl_subscribe_denied: 38,
        acl_delivery_denied: 39,
        dropped_qos0_writable: 40,
        shared_kept: 41,
    };
    assert_eq!(
        stats_fields().len(),
        41,
        "a new Stats field: give it a distinct value here"
    );
    s
}

#[test]
fn every_stats_field_has_exactly_one_metric() {
    let fields = stats_fields();
    assert!(fields.len() > 10, "could not read Stats fields: {fields:?}");
    for f in &fields {
        let n = STATS_COUNTERS.iter().filter(|d| d.field == f).count();
        if STATS_LEVELS.contains(&f.as_str()) {
            // A level is a gauge of the same field name, never a `_total` counter.
            assert_eq!(n, 0, "Stats::{f} is a level and also in STATS_COUNTERS");
            let g = GAUGES.iter().filter(|d| d.field == f).count();
            assert_eq!(g, 1, "Stats::{f} is a level but not in GAUGES");
        } else {
            assert_eq!(n, 1, "Stats::{f} appears {n} times in STATS_COUNTERS");
        }
    }
    assert_eq!(STATS_COUNTERS.len() + STATS_LEVELS.len(), fields.len());
    // Counters are `_total` and gauges are not (promtool's convention; a level named `_total` misleads rate()).
    assert!(STATS_COUNTERS.iter().all(|d| d.name.ends_with("_total")));
    assert!(GAUGES.iter().all(|d| !d.name.ends_with("_total")));
}

#[test]
fn table_getters_read_their_own_field() {
    let s = distinct_stats();
    let dbg = format!("{s:?}");
    for d in STATS_COUNTERS {
        let v = (d.get)(&s);
        assert!(
            dbg.contains(&format!("{}: {v},", d.field))
                || dbg.contains(&format!("{}: {v} }}", d.field)),
            "{} reads {v}, not its field, in {dbg}",
            d.name
        );
    }
}

#[test]
fn families_of_one_name_are_adjacent_and_share_help() {
    let mut seen = std::collections::HashSet::new();
    let mut prev = "";
    for d in STATS_COUNTERS {
        if d.name != prev {
            assert!(seen.insert(d.name), "{} is split in the table", d.name);
            prev = d.name;
        }
        let first = STATS_COUNTERS.iter().find(|x| x.name == d.name).unwrap();
        assert_eq!(first.help, d.help, "{}", d.name);
    }
}

#[test]
fn publish_then_snapshot_round_trips() {
    let m = Metrics::new(2);
    let s = distinct_stats();
    let g = Gauges {
        connections: 3,
        queued_messages: 7,
        paused_publishers: 1,
        ..Gauges::default()
    };
    m.shard(1).publish(&s, &g);
    m.shard(1).publish_io(100, 200);
    let snap = m.shard(1).snapshot();
    assert_eq!(format!("{:?}", snap.stats), format!("{s:?}"));
    assert_eq!(snap.gauges, g);
    assert_eq!((snap.bytes_received, snap.bytes_sent), (100, 200));
    // Shard 0 untouched.
    assert_eq!(m.shard(0).snapshot().gauges, Gauges::default());
    let t = m.totals();
    assert_eq!(t.stats.publishes_in, 9);
    assert_eq!(t.gauges.connections, 3);
    m.shard(0).publish(&s, &g);
    assert_eq!(m.totals().stats.publishes_in, 18);
    assert_eq!(m.totals().bytes_sent, 200);
}

#[test]
fn shard_blocks_do_not_share_cache_lines() {
    assert!(std::mem::align_of::<ShardMetrics>() >= 128);
    let m = Metrics::new(2);
    let a = m.shard(0) as *const _ as usize;
    let b = m.shard(1) as *const _ as usize;
    assert!(b - a >= 128 && a % 128 == 0);
}

#[test]
fn counters_render_per_shard_with_labels() {
    let m = Metrics::new(2);
    let s = distinct_stats();
    m.shard(1).publish(&s, &Gauges::default());
    let text = render(&m);
    assert!(text.contains("# TYPE coremq_publishes_received_total counter\n"));
    assert!(text.contains("coremq_publishes_received_total{shard=\"1\"} 9\n"));
    assert!(text.contains("coremq_publishes_received_total{shard=\"0\"} 0\n"));
    assert!(text
        .contains("coremq_messages_dropped_total{shard=\"1\",reason=\"offline_overflow\"} 13\n"));
    assert_eq!(
        text.matches("# TYPE coremq_messages_dropped_total").count(),
        1
    );
    let e = check(&text).unwrap_or_else(|why| panic!("{why}\n{text}"));
    assert_eq!(e.sum("coremq_handoffs_total", &[("direction", "in")]), 4.0);
    // Every table entry is rendered for every shard.
    for d in STATS_COUNTERS {
        assert_eq!(
            e.sum(d.name, &[]),
            0.0 + STATS_COUNTERS
                .iter()
                .filter(|x| x.name == d.name)
                .map(|x| (x.get)(&s))
                .sum::<u64>() as f64
        );
    }
}

#[test]
fn gauges_render_per_shard() {
    let m = Metrics::new(1);
    m.shard(0).publish(
        &Stats::default(),
        &Gauges {
            sessions_offline: 42,
            mesh_depth: 5,
            ..Gauges::default()
        },
    );
    let text = render(&m);
    assert!(text.contains(
        "# TYPE coremq_sessions_offline gauge\ncoremq_sessions_offline{shard=\"0\"} 42\n"
    ));
    assert!(text.contains("coremq_mesh_channel_depth{shard=\"0\"} 5\n"));
    let e = check(&text).unwrap();
    for d in GAUGES {
        assert_eq!(
            e.types.get(d.name).map(String::as_str),
            Some("gauge"),
            "{}",
            d.name
        );
    }
}

#[test]
fn histograms_render_buckets_sum_count() {
    let m = Metrics::new(1);
    let h = &m.shard(0).log_sync;
    h.record_us(40); // le=0.00005
    h.record_us(3_000); // le=0.005
    h.record_us(10_000_000); // +Inf
    let text = render(&m);
    assert!(text.contains("# TYPE coremq_log_sync_duration_seconds histogram\n"));
    assert!(
        text.contains("coremq_log_sync_duration_seconds_bucket{shard=\"0\",le=\"0.00005\"} 1\n")
    );
    assert!(text.contains("coremq_log_sync_duration_seconds_bucket{shard=\"0\",le=\"0.0025\"} 1\n"));
    assert!(text.contains("coremq_log_sync_duration_seconds_bucket{shard=\"0\",le=\"0.005\"} 2\n"));
    assert!(text.contains("coremq_log_sync_duration_seconds_bucket{shard=\"0\",le=\"+Inf\"} 3\n"));
    assert!(text.contains("coremq_log_sync_duration_seconds_sum{shard=\"0\"} 10.00304\n"));
    assert!(text.contains("coremq_log_sync_duration_seconds_count{shard=\"0\"} 3\n"));
    assert!(text.contains("coremq_connect_duration_seconds_count{shard=\"0\"} 0\n"));
    check(&text).unwrap();
}

#[test]
fn process_values_render() {
    let m = Metrics::new(3);
    let text = render(&m);
    let e = check(&text).unwrap();
    assert_eq!(e.sum("coremq_shards", &[]), 3.0);
    assert_eq!(e.sum("coremq_ready", &[]), 0.0);
    assert_eq!(e.sum("coremq_build_info", &[("version", VERSION)]), 1.0);
    assert!(e.sum("process_start_time_seconds", &[]) > 1.6e9);
    m.set_ready(true);
    assert_eq!(check(&render(&m)).unwrap().sum("coremq_ready", &[]), 1.0);
}

#[test]
fn checker_refuses_broken_expositions() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{shard=\"0\"} 1\n";
    check(ok).unwrap();
    for (bad, why) in [
        ("a_total 1\n", "before its TYPE"),
        ("# TYPE a counter\na 1\n", "_total"),
        ("# TYPE a_total counter\na_total 1\na_total 2\n", "duplicate"),
        ("# TYPE a_total counter\n# TYPE a_total counter\n", "twice"),
        ("# TYPE g gauge\ng{x=1} 1\n", "quoted"),
        ("# TYPE g gauge\ng one\n", "bad value"),
        ("# TYPE g gauge\ng 1", "newline"),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "cumulative",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
            "_count",
        ),
        ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "+Inf"),
    ] {
        let err = check(bad).expect_err(bad);
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

#[test]
fn routes_answer_with_status_and_close() {
    let m = Metrics::new(1);
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    let r = text(http::route(&m, "GET", "/healthz"));
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("Connection: close\r\n"),
        "{r}"
    );
    assert!(text(http::route(&m, "GET", "/readyz")).starts_with("HTTP/1.1 503 "));
    m.set_ready(true);
    assert!(text(http::route(&m, "GET", "/readyz")).starts_with("HTTP/1.1 200 "));
    let r = text(http::route(&m, "GET", "/metrics"));
    assert!(
        r.starts_with("HTTP/1.1 200 ") && r.contains("Content-Type: text/plain; version=0.0.4")
    );
    let body = r.split("\r\n\r\n").nth(1).unwrap();
    assert!(r.contains(&format!("Content-Length: {}\r\n", body.len())));
    check(body).unwrap();
    assert!(text(http::route(&m, "GET", "/nope")).starts_with("HTTP/1.1 404 "));
    let r = text(http::route(&m, "POST", "/metrics"));
    assert!(r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD"));
    let r = text(http::route(&m, "HEAD", "/metrics"));
    assert!(r.starts_with("HTTP/1.1 200 ") && r.ends_with("\r\n\r\n"));
}

#[test]
fn request_heads_parse_incrementally() {
    assert_eq!(http::parse_request(b"GET /metr").unwrap(), None);
    assert_eq!(
        http::parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap(),
        Some(("GET".into(), "/metrics".into()))
    );
    assert!(http::parse_request(b"GET /metrics HTTP/1.1\r\nBad Header\r\n\r\n").is_err());
}

fn exchange(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(req).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn server_serves_over_tcp_and_bounds_requests() {
    let m = Metrics::new(1);
    let stop = Arc::new(AtomicBool::new(false));
    let srv = http::spawn("127.0.0.1:0".parse().unwrap(), m.clone(), stop.clone()).unwrap();
    let addr = srv.local_addr();
    let r = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200 ") && r.ends_with("ok\n"), "{r}");
    let r = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    check(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    // A head past the bound is refused, not buffered.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', http::MAX_REQUEST + 10));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let _ = s.write_all(&big);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "));
    let r = exchange(addr, b"garbage\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    srv.join();
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn taken_port_is_refused_with_the_key() {
    let hold = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = http::spawn(
        hold.local_addr().unwrap(),
        Metrics::new(1),
        Arc::new(AtomicBool::new(false)),
    )
    .err()
    .expect("port is taken");
    assert!(err.to_string().contains("metrics_listen"), "{err}");
}

/// Every metric the Grafana dashboard queries exists in what we render (histogram series by their family).
#[test]
fn grafana_dashboard_uses_only_rendered_metrics() {
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/coremq.json")).expect("valid JSON");
    let m = Metrics::new(2);
    let e = check(&render(&m)).unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    exprs.push(
        dash["templating"]["list"][1]["query"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let mut used = 0;
    for expr in &exprs {
        let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for w in words.filter(|w| w.starts_with("coremq_") || w.starts_with("process_")) {
            assert!(
                e.has(w),
                "the dashboard queries {w}, which is not rendered ({expr})"
            );
            used += 1;
        }
    }
    assert!(used >= 20, "only {used} metric references found");
    for needed in [
        "coremq_log_sync_duration_seconds_bucket",
        "coremq_connect_duration_seconds_bucket",
        "coremq_messages_dropped_total",
    ] {
        assert!(
            exprs.iter().any(|x| x.contains(needed)),
            "{needed} is not on the dashboard"
        );
    }
}
