//! Bridges with real peers: coremq -> mosquitto, mosquitto -> coremq (mosquitto bridging with `try_private`, so
//! coremq sees the 0x80 bridge flag), coremq <-> coremq. Each runs QoS 1 with persistent sessions, kills the remote
//! mid-stream and starts it again on the same port, then checks that every message the publisher had
//! acknowledged arrived (at least once) and that nothing came back (no loop: the rules are `both`).
//! mosquitto is skipped with a message outside CI when missing; in CI (`CI` set) a missing mosquitto fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coremq::codec::{Packet, ProtocolVersion, PubResp, QoS, ReasonCode};

use common::{Broker, Raw};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr(port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn have_mosquitto() -> bool {
    if Path::new(MOSQUITTO).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{MOSQUITTO} is required in CI (see .ci/run)");
    }
    eprintln!("SKIPPED: {MOSQUITTO} not installed (apt-get install -y mosquitto)");
    false
}

/// A mosquitto broker on `port` with `conf` appended; stopped by its pid.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path, port: u16, conf: &str) -> Mosquitto {
        let path = dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nautosave_interval 1\n{conf}\n",
            dir.display()
        );
        std::fs::write(&path, text).unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        wait_listening(port);
        Mosquitto { child, port }
    }

    /// SIGTERM: mosquitto saves its persistence file (its in-memory queues are lost on SIGKILL, which would
    /// be mosquitto's loss, not the bridge's).
    fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// coremq on a fixed port with a config file (so it can be restarted on the same port and data directory).
fn coremq(dir: &Path, port: u16, config: &str) -> Broker {
    let cfg = common::write_config(dir, config);
    let data = dir.join("data");
    let listen = format!("127.0.0.1:{port}");
    Broker::start_args(&[
        "--config",
        &cfg,
        "--listen",
        &listen,
        "--shards",
        "2",
        "--log-level",
        "warn",
        "--data-dir",
        data.to_str().unwrap(),
    ])
}

fn bridge_config(name: &str, remote_port: u16, protocol: &str) -> String {
    format!(
        "[[bridge]]\nname = \"{name}\"\naddresses = [\"127.0.0.1:{remote_port}\"]\n\
         protocol_version = \"{protocol}\"\ntopic = [\"t/# both 1\", \"back/# in 1\"]\n\
         restart_timeout = [0.2, 1.0]\nkeepalive = 5\n"
    )
}

/// A subscriber with a persistent session that reconnects whenever its broker goes away, collecting payloads
/// (duplicates included) until it saw `want` distinct ones or time is up.
fn sink(
    port: u16,
    id: &'static str,
    filter: &'static str,
    want: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut got = Vec::new();
        let distinct = |g: &Vec<String>| g.iter().collect::<BTreeSet<_>>().len();
        while Instant::now() < deadline && distinct(&got) < want && !stop.load(Ordering::Relaxed) {
            let Ok(s) = TcpStream::connect(addr(port)) else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let mut c = Raw::from_stream(s, V);
            c.send(&Packet::Connect(Box::new(Raw::connect_packet(
                id, false, 30, V,
            ))));
            if !matches!(c.recv(), Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success) {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            c.subscribe(1, filter, QoS::AtLeastOnce);
            c.set_timeout(Duration::from_millis(300));
            let mut silent = 0;
            while Instant::now() < deadline && silent < 2 && !stop.load(Ordering::Relaxed) {
                match c.recv() {
                    Some(Packet::Publish(p)) => {
                        silent = 0;
                        got.push(String::from_utf8_lossy(&p.payload).into_owned());
                        if p.qos == QoS::AtLeastOnce {
                            c.send(&Packet::PubAck(PubResp {
                                packet_id: p.packet_id,
                                reason: ReasonCode::Success,
                                properties: None,
                            }));
                        }
                        if distinct(&got) >= want {
                            break;
                        }
                    }
                    Some(_) => silent = 0,
                    // Nothing within the timeout, or closed: a ping tells which (two silences = gone).
                    None => {
                        silent += 1;
                        let mut b = bytes::BytesMut::new();
                        coremq::codec::encode(&Packet::PingReq, V, &mut b).unwrap();
                        use std::io::Write;
                        if c.stream.write_all(&b).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        got
    })
}

/// Publishes `n` QoS 1 messages `prefix-i` to `topic` on `port`, each waiting for its PUBACK (so each is
/// acknowledged); `at(i)` runs before message i (to kill and restart the remote mid-stream).
fn publish_acked(port: u16, topic: &str, prefix: &str, n: usize, mut at: impl FnMut(usize)) {
    let (mut c, _) = Raw::connect(addr(port), Raw::connect_packet("publisher", true, 30, V));
    for i in 0..n {
        at(i);
        let pid = (i % 60000 + 1) as u16;
        c.publish(
            topic,
            QoS::AtLeastOnce,
            pid,
            format!("{prefix}-{i}").as_bytes(),
            false,
            false,
        );
        loop {
            match c.recv() {
                Some(Packet::PubAck(a)) if a.packet_id == pid => break,
                Some(_) => continue,
                None => panic!("no PUBACK for message {i}"),
            }
        }
    }
}

/// A plain subscriber on the publishing side: sees each message exactly once if nothing loops back.
fn watcher(port: u16, filter: &str) -> Raw {
    let (mut c, _) = Raw::connect(addr(port), Raw::connect_packet("watcher", true, 30, V));
    c.subscribe(1, filter, QoS::AtMostOnce);
    c
}

/// Everything the watcher got until `quiet` passed without a message, counted per payload.
fn drain(c: &mut Raw, quiet: Duration) -> BTreeMap<String, usize> {
    c.set_timeout(quiet);
    let mut seen = BTreeMap::new();
    while let Some(p) = c.recv() {
        if let Packet::Publish(p) = p {
            *seen
                .entry(String::from_utf8_lossy(&p.payload).into_owned())
                .or_default() += 1;
        }
    }
    seen
}

fn assert_all_arrived(got: &[String], prefix: &str, n: usize) {
    let distinct: BTreeSet<&String> = got.iter().collect();
    let missing: Vec<String> = (0..n)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|m| !distinct.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {n} acknowledged messages never arrived: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

fn assert_no_loop(seen: &BTreeMap<String, usize>, prefix: &str, n: usize) {
    for i in 0..n {
        let m = format!("{prefix}-{i}");
        assert_eq!(
            seen.get(&m).copied(),
            Some(1),
            "{m} seen {:?} times on the publishing side",
            seen.get(&m)
        );
    }
    assert_eq!(seen.len(), n, "unexpected extra messages: {seen:?}");
}

const N: usize = 120;

#[test]
fn coremq_to_coremq_survives_a_kill_9_of_the_remote() {
    let local_dir = tempfile::tempdir().unwrap();
    let remote_dir = tempfile::tempdir().unwrap();
    let (lport, rport) = (free_port(), free_port());
    let mut remote = coremq(remote_dir.path(), rport, "");
    let stop = Arc::new(AtomicBool::new(false));
    let sink = sink(rport, "sink", "t/#", N, stop.clone());
    let local = coremq(local_dir.path(), lport, &bridge_config("r", rport, "5"));
    // The bridge and the sink are subscribed once the sink's first message arrives; give both a moment.
    std::thread::sleep(Duration::from_millis(700));
    let mut w = watcher(lport, "t/#");
    publish_acked(lport, "t/x", "m", N, |i| {
        if i == N / 3 {
            remote.kill9();
        }
        if i == 2 * N / 3 {
            remote = coremq(remote_dir.path(), rport, "");
        }
    });
    let got = sink.join().unwrap();
    assert_all_arrived(&got, "m", N);
    assert_no_loop(&drain(&mut w, Duration::from_millis(700)), "m", N);

    // The other way: a message published on the remote comes in once and does not go back.
    let mut rw = watcher(rport, "back/#");
    publish_acked(rport, "back/y", "b", 5, |_| {});
    let seen_local = drain(&mut w, Duration::from_millis(500));
    assert!(
        seen_local.is_empty(),
        "the local watcher is on t/#: {seen_local:?}"
    );
    assert_no_loop(&drain(&mut rw, Duration::from_millis(700)), "b", 5);
    drop(local);
}

#[test]
fn coremq_to_coremq_v311_uses_the_bridge_flag() {
    // 3.1.1 has no No Local: only the 0x80 flag keeps the remote from sending our messages back.
    let local_dir = tempfile::tempdir().unwrap();
    let remote_dir = tempfile::tempdir().unwrap();
    let (lport, rport) = (free_port(), free_port());
    let _remote = coremq(remote_dir.path(), rport, "");
    let stop = Arc::new(AtomicBool::new(false));
    let sink = sink(rport, "sink", "t/#", 30, stop.clone());
    let _local = coremq(local_dir.path(), lport, &bridge_config("r", rport, "3.1.1"));
    std::thread::sleep(Duration::from_millis(700));
    let mut w = watcher(lport, "t/#");
    publish_acked(lport, "t/x", "m", 30, |_| {});
    assert_all_arrived(&sink.join().unwrap(), "m", 30);
    assert_no_loop(&drain(&mut w, Duration::from_millis(700)), "m", 30);
}

#[test]
fn an_outage_plus_kill_9_of_coremq_loses_nothing_acknowledged() {
    // The remote is down while messages are published; coremq is killed with them queued in its log for the
    // bridge's persistent session, restarted, and the remote comes back: all of them arrive.
    let local_dir = tempfile::tempdir().unwrap();
    let remote_dir = tempfile::tempdir().unwrap();
    let (lport, rport) = (free_port(), free_port());
    let mut remote = coremq(remote_dir.path(), rport, "");
    {
        // The sink's persistent session exists on the remote before the outage.
        let (mut c, _) = Raw::connect(addr(rport), Raw::connect_packet("sink", false, 30, V));
        c.subscribe(1, "t/#", QoS::AtLeastOnce);
    }
    let cfg = bridge_config("r", rport, "3.1.1");
    let mut local = coremq(local_dir.path(), lport, &cfg);
    std::thread::sleep(Duration::from_millis(700));
    remote.kill9();
    publish_acked(lport, "t/q", "q", 50, |_| {});
    local.kill9();
    let _local = coremq(local_dir.path(), lport, &cfg);
    let _remote = coremq(remote_dir.path(), rport, "");
    let got = sink(rport, "sink", "t/#", 50, Arc::new(AtomicBool::new(false)))
        .join()
        .unwrap();
    assert_all_arrived(&got, "q", 50);
}

#[test]
fn coremq_to_mosquitto_with_a_remote_restart() {
    if !have_mosquitto() {
        return;
    }
    let local_dir = tempfile::tempdir().unwrap();
    let mosq_dir = tempfile::tempdir().unwrap();
    let (lport, mport) = (free_port(), free_port());
    let mut mosq = Mosquitto::start(mosq_dir.path(), mport, "");
    let stop = Arc::new(AtomicBool::new(false));
    let sink = sink(mport, "sink", "t/#", N, stop.clone());
    // 3.1.1 with the bridge flag: mosquitto then treats us as a bridge (no echo, retain as published).
    let _local = coremq(local_dir.path(), lport, &bridge_config("m", mport, "3.1.1"));
    std::thread::sleep(Duration::from_millis(700));
    let mut w = watcher(lport, "t/#");
    let dir: PathBuf = mosq_dir.path().to_path_buf();
    publish_acked(lport, "t/x", "m", N, |i| {
        if i == N / 3 {
            mosq.stop();
        }
        if i == 2 * N / 3 {
            mosq = Mosquitto::start(&dir, mport, "");
        }
    });
    assert_all_arrived(&sink.join().unwrap(), "m", N);
    assert_no_loop(&drain(&mut w, Duration::from_millis(700)), "m", N);
    let _ = mosq.port;
}

#[test]
fn mosquitto_bridging_into_coremq_is_treated_as_a_bridge() {
    if !have_mosquitto() {
        return;
    }
    let core_dir = tempfile::tempdir().unwrap();
    let mosq_dir = tempfile::tempdir().unwrap();
    let (cport, mport) = (free_port(), free_port());
    let mut core = coremq(core_dir.path(), cport, "");
    let stop = Arc::new(AtomicBool::new(false));
    let sink = sink(cport, "sink", "t/#", N, stop.clone());
    // mosquitto is the bridging side; try_private sends protocol level 0x84 to coremq.
    let conf = format!(
        "connection tocore\naddress 127.0.0.1:{cport}\ntopic t/# both 1\ntry_private true\n\
         cleansession false\nbridge_protocol_version mqttv311\nrestart_timeout 1\nkeepalive_interval 5\n"
    );
    let _mosq = Mosquitto::start(mosq_dir.path(), mport, &conf);
    std::thread::sleep(Duration::from_millis(1500));
    let mut w = watcher(mport, "t/#");
    let dir = core_dir.path().to_path_buf();
    publish_acked(mport, "t/x", "m", N, |i| {
        if i == N / 3 {
            core.kill9();
        }
        if i == 2 * N / 3 {
            core = coremq(&dir, cport, "");
        }
    });
    assert_all_arrived(&sink.join().unwrap(), "m", N);
    // Without the bridge flag coremq would send every message back to mosquitto's `t/#` subscription.
    assert_no_loop(&drain(&mut w, Duration::from_millis(1500)), "m", N);
}

#[test]
fn bad_bridge_config_refuses_start_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(
        dir.path(),
        "[[bridge]]\nname = \"x\"\naddresses = [\"127.0.0.1:1\"]\ntopic = [\"t/# sideways 1\"]\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_coremq"))
        .args(["--config", &cfg, "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bridge") && err.contains("direction"), "{err}");
}

#[test]
fn coremq_to_coremq_over_tls_with_a_client_certificate() {
    let pki = common::certs::TestPki::new();
    let local_dir = tempfile::tempdir().unwrap();
    let remote_dir = tempfile::tempdir().unwrap();
    let (lport, rport, tport) = (free_port(), free_port(), free_port());
    let p = |p: &Path| p.display().to_string();
    let remote_cfg = format!(
        "[[listeners]]\naddress = \"127.0.0.1:{tport}\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\n\
         cafile = \"{}\"\nrequire_certificate = true\n",
        p(&pki.server.cert),
        p(&pki.server.key),
        p(&pki.ca)
    );
    let _remote = coremq(remote_dir.path(), rport, &remote_cfg);
    let sink = sink(rport, "sink", "t/#", 20, Arc::new(AtomicBool::new(false)));
    let local_cfg = format!(
        "[[bridge]]\nname = \"tls\"\naddresses = [\"localhost:{tport}\"]\ntopic = [\"t/# out 1\"]\n\
         cafile = \"{}\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\nrestart_timeout = [0.2, 1.0]\n",
        p(&pki.ca),
        p(&pki.alice.cert),
        p(&pki.alice.key)
    );
    let _local = coremq(local_dir.path(), lport, &local_cfg);
    std::thread::sleep(Duration::from_millis(700));
    publish_acked(lport, "t/s", "s", 20, |_| {});
    assert_all_arrived(&sink.join().unwrap(), "s", 20);
}

/// The retained `$SYS/broker/connection/NAME/state` (mosquitto's topic) and the metrics follow the remote link.
#[test]
fn state_is_published_in_sys_and_metrics() {
    let local_dir = tempfile::tempdir().unwrap();
    let remote_dir = tempfile::tempdir().unwrap();
    let (lport, rport, mport) = (free_port(), free_port(), free_port());
    let mut remote = coremq(remote_dir.path(), rport, "");
    let cfg = format!(
        "sys_interval = 1\nmetrics_listen = \"127.0.0.1:{mport}\"\n{}",
        bridge_config("r", rport, "3.1.1")
    );
    let _local = coremq(local_dir.path(), lport, &cfg);
    let state = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut last = String::new();
        while Instant::now() < deadline {
            let (mut c, _) = Raw::connect(addr(lport), Raw::connect_packet("st", true, 30, V));
            c.subscribe(1, "$SYS/broker/connection/r/state", QoS::AtMostOnce);
            c.set_timeout(Duration::from_millis(1500));
            if let Some(Packet::Publish(p)) = c.recv() {
                last = String::from_utf8_lossy(&p.payload).into_owned();
                if last == want {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("state never became {want} (last {last:?})");
    };
    let metric = || {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(addr(mport)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.lines()
            .find(|l| l.starts_with("coremq_bridge_connected{bridge=\"r\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    state("1");
    assert_eq!(metric().as_deref(), Some("1"));
    remote.kill9();
    state("0");
    assert_eq!(metric().as_deref(), Some("0"));
}
