//! The metrics endpoint of the real binary: health and readiness answers, counters that move by exactly the
//! traffic sent, and an exposition that our checker and Prometheus' `promtool check metrics` accept (promtool is
//! skipped with a message when missing outside CI; in CI (`CI` set) it is required).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Broker, Raw};
use coremq::codec::{Packet, ProtocolVersion, PubResp, QoS, ReasonCode};
use coremq::metrics::textcheck::{check, Exposition};

/// GET `path`; returns the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad answer: {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn scrape(addr: SocketAddr) -> (String, Exposition) {
    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200);
    let e = check(&body).unwrap_or_else(|why| panic!("{why}\n{body}"));
    (body, e)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> (Broker, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = common::write_config(dir.path(), &format!("metrics_listen = \"{metrics}\"\n"));
    let b = Broker::start(&["--config", &cfg]);
    (b, metrics, dir)
}

/// Scrapes until `done` holds (the shards publish once a second), at most 20 s.
fn scrape_until(addr: SocketAddr, done: impl Fn(&Exposition) -> bool) -> (String, Exposition) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (text, e) = scrape(addr);
        if done(&e) || Instant::now() > deadline {
            return (text, e);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn counters_move_by_the_traffic_and_promtool_accepts_the_output() {
    let (broker, maddr, _dir) = start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(maddr, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "/readyz never answered 200");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(maddr, "/healthz").0, 200);
    assert_eq!(get(maddr, "/nothing").0, 404);

    let (_, before) = scrape(maddr);
    let n = |e: &Exposition, name: &str| e.sum(name, &[]);
    let (mut sub, _) = Raw::connect(
        broker.addr,
        Raw::connect_packet("metrics-sub", true, 0, ProtocolVersion::V3_1_1),
    );
    sub.set_timeout(Duration::from_secs(10));
    sub.subscribe(1, "m/t", QoS::AtLeastOnce);
    let (mut publisher, _) = Raw::connect(
        broker.addr,
        Raw::connect_packet("metrics-pub", true, 0, ProtocolVersion::V3_1_1),
    );
    publisher.set_timeout(Duration::from_secs(10));
    for i in 0..10u16 {
        publisher.publish("m/t", QoS::AtMostOnce, 0, b"zero", false, false);
        publisher.publish("m/t", QoS::AtLeastOnce, i + 1, b"one", false, false);
        assert!(matches!(publisher.recv(), Some(Packet::PubAck(_))));
    }
    let mut got = 0;
    while got < 20 {
        match sub.recv() {
            Some(Packet::Publish(p)) => {
                got += 1;
                if p.qos != QoS::AtMostOnce {
                    sub.send(&Packet::PubAck(PubResp {
                        packet_id: p.packet_id,
                        reason: ReasonCode::Success,
                        properties: None,
                    }));
                }
            }
            Some(_) => {}
            None => panic!("subscriber got {got} of 20"),
        }
    }

    let moved = |e: &Exposition| {
        n(e, "coremq_publishes_sent_total") - n(&before, "coremq_publishes_sent_total") >= 20.0
            && n(e, "coremq_connections") >= 2.0
    };
    let (text, after) = scrape_until(maddr, moved);
    let d = |name: &str| n(&after, name) - n(&before, name);
    assert_eq!(d("coremq_publishes_received_total"), 20.0);
    assert_eq!(d("coremq_publishes_sent_total"), 20.0);
    assert_eq!(d("coremq_connections_accepted_total"), 2.0);
    assert_eq!(n(&after, "coremq_connections"), 2.0);
    assert_eq!(n(&after, "coremq_sessions_online"), 2.0);
    assert_eq!(n(&after, "coremq_subscriptions"), 1.0);
    assert_eq!(d("coremq_messages_dropped_total"), 0.0);
    assert!(d("coremq_received_bytes_total") > 20.0 * 7.0);
    assert!(d("coremq_sent_bytes_total") > 20.0 * 7.0);
    assert_eq!(d("coremq_connect_duration_seconds_count"), 2.0);
    // Two shards, each labelled.
    assert!(after
        .samples
        .iter()
        .any(|s| s.labels.get("shard").map(String::as_str) == Some("1")));

    promtool_check(&text);

    // A persistent subscription is acknowledged only once logged: the log syncs, and the sync is timed.
    let (mut durable, _) = Raw::connect(
        broker.addr,
        Raw::connect_packet("metrics-durable", false, 0, ProtocolVersion::V3_1_1),
    );
    durable.set_timeout(Duration::from_secs(10));
    durable.subscribe(1, "d/t", QoS::AtLeastOnce);
    let synced = |e: &Exposition| n(e, "coremq_log_sync_duration_seconds_count") > 0.0;
    // The histogram is recorded at once, gauges once a second: wait for both.
    let (_, last) = scrape_until(maddr, |e| {
        synced(e) && n(e, "coremq_sessions_persistent") >= 1.0
    });
    assert!(synced(&last), "no log sync was recorded");
    assert_eq!(n(&last, "coremq_sessions_persistent"), 1.0);
    drop(broker);
}

fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: promtool not installed (Debian package prometheus)");
            return;
        }
        Err(e) => panic!("promtool is required in CI (see .ci/run): {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `$SYS` through a real client: `mosquitto_sub -t '$SYS/#' -v -W 6` against a broker with `sys_interval = 1`
/// sees mosquitto's topic names with values, per-shard topics, and an uptime that changes between updates.
#[test]
fn sys_topics_appear_and_change() {
    if !common::tools::have("mosquitto_sub", &["--help"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(dir.path(), "sys_interval = 1\n");
    let broker = Broker::start(&["--config", &cfg]);
    let port = broker.port().to_string();
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "$SYS/#",
            "-v",
            "-W",
            "6",
        ])
        .output()
        .expect("run mosquitto_sub");
    let text = String::from_utf8_lossy(&out.stdout);
    let values = |topic: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(topic)?.strip_prefix(' ').map(str::to_string))
            .collect()
    };
    let uptimes = values("$SYS/broker/uptime");
    assert!(uptimes.len() >= 2, "uptime not updated:\n{text}");
    assert!(
        uptimes.windows(2).any(|w| w[0] != w[1]),
        "uptime never changed: {uptimes:?}"
    );
    assert!(uptimes[0].ends_with(" seconds"), "{uptimes:?}");
    // The subscriber itself is a connected client.
    let connected = values("$SYS/broker/clients/connected");
    assert!(connected.iter().any(|v| v == "1"), "{connected:?}\n{text}");
    for topic in [
        "$SYS/broker/version",
        "$SYS/broker/load/publish/received/1min",
        "$SYS/broker/bytes/received",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/shards/0/clients/connected",
        "$SYS/broker/shards/1/clients/connected",
    ] {
        assert!(!values(topic).is_empty(), "{topic} missing:\n{text}");
    }
    drop(broker);
}
