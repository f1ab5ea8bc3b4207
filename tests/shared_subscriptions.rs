//! Shared subscriptions (`$share/GROUP/FILTER`) end to end: the real binary with 2 shards, members on both.
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{id_on_shard, Broker, Raw};
use coremq::codec::{Disconnect, Packet, ProtocolVersion, PubResp, QoS, ReasonCode};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V3: ProtocolVersion = ProtocolVersion::V3_1_1;

fn member(b: &Broker, id: &str, clean: bool, version: ProtocolVersion, filter: &str) -> Raw {
    let (mut r, ack) = Raw::connect(b.addr, Raw::connect_packet(id, clean, 60, version));
    assert_eq!(ack.reason, ReasonCode::Success);
    if version == V5 {
        let props = ack.properties.expect("v5 CONNACK properties");
        assert_eq!(props.shared_subscription_available, Some(1));
    }
    assert_eq!(
        r.subscribe(1, filter, QoS::AtLeastOnce),
        [ReasonCode::GrantedQoS1]
    );
    r
}

/// Publish `n` QoS 1 messages (payload = index) and wait for every PUBACK.
fn publish_acked(b: &Broker, topic: &str, n: u32) {
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet(&id_on_shard("pub", 0, 2), true, 60, V3),
    );
    for i in 0..n {
        p.publish(
            topic,
            QoS::AtLeastOnce,
            (i + 1) as u16,
            i.to_string().as_bytes(),
            false,
            false,
        );
    }
    let mut acked = 0;
    while acked < n {
        match p.recv() {
            Some(Packet::PubAck(_)) => acked += 1,
            other => panic!("expected PUBACK, got {other:?} after {acked}"),
        }
    }
}

/// Read PUBLISHes until nothing comes for a while; acknowledge them when `ack`.
fn drain(r: &mut Raw, ack: bool) -> Vec<String> {
    r.set_timeout(Duration::from_millis(1500));
    let mut got = Vec::new();
    while let Some(p) = r.recv() {
        if let Packet::Publish(p) = p {
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
            if ack && p.qos != QoS::AtMostOnce {
                r.send(&Packet::PubAck(PubResp {
                    packet_id: p.packet_id,
                    reason: ReasonCode::Success,
                    properties: None,
                }));
            }
        }
    }
    got
}

#[test]
fn each_message_reaches_exactly_one_member_spread_across_both_shards() {
    let b = Broker::start(&[]);
    // Two members per shard, v5 and 3.1.1 mixed.
    let mut members: Vec<Raw> = (0..4)
        .map(|i| {
            let version = if i % 2 == 0 { V5 } else { V3 };
            member(
                &b,
                &id_on_shard(&format!("m{i}"), (i / 2) as u16, 2),
                true,
                version,
                "$share/g/s/+",
            )
        })
        .collect();
    publish_acked(&b, "s/1", 200);
    let mut all = BTreeSet::new();
    for (i, m) in members.iter_mut().enumerate() {
        let got = drain(m, true);
        assert_eq!(got.len(), 50, "member {i} got {} of 200", got.len());
        for p in got {
            assert!(all.insert(p), "a message reached two members");
        }
    }
    assert_eq!(all.len(), 200);
}

#[test]
fn a_member_that_disconnects_hands_its_unacknowledged_messages_to_another() {
    let b = Broker::start(&[]);
    let mut gone = member(&b, &id_on_shard("gone", 0, 2), true, V5, "$share/g/d/+");
    let mut stays = member(&b, &id_on_shard("stays", 1, 2), true, V3, "$share/g/d/+");
    publish_acked(&b, "d/1", 20);
    let unacked = drain(&mut gone, false);
    assert_eq!(unacked.len(), 10);
    drop(gone);
    let got: BTreeSet<String> = drain(&mut stays, true).into_iter().collect();
    let expected: BTreeSet<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(
        got, expected,
        "the remaining member gets its share and the gone member's, once each"
    );
}

#[test]
fn a_persistent_shared_subscription_and_its_queue_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let id = id_on_shard("durable", 1, 2);
    let mut b = Broker::start_in(dir.path(), &[]);
    let mut m = member(&b, &id, false, V3, "$share/g/k/+");
    m.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: None,
    }));
    assert!(m.closed_within(Duration::from_secs(5)));
    publish_acked(&b, "k/1", 30);
    b.kill9();
    let b = Broker::start_in(dir.path(), &[]);
    let (mut r, ack) = Raw::connect(b.addr, Raw::connect_packet(&id, false, 60, V3));
    assert!(ack.session_present);
    let got: BTreeSet<String> = drain(&mut r, true).into_iter().collect();
    assert_eq!(got.len(), 30, "{got:?}");
    // The subscription came back in its shared form: new messages still reach the group.
    publish_acked(&b, "k/2", 5);
    assert_eq!(drain(&mut r, true).len(), 5);
}

/// Four paho v5 members (client ids from argv, two per shard) and a paho publisher: prints, per member, the
/// payloads it got, then the CONNACK's Shared Subscription Available of each.
const PAHO_SHARED: &str = r#"
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
port = int(sys.argv[1]); ids = sys.argv[2:]
got = {i: [] for i in ids}; avail = {}; granted = {}
lock = threading.Lock(); total = [0]; done = threading.Event()
def make(cid):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=MQTTProtocolVersion.MQTTv5)
    def on_connect(c, u, f, rc, p):
        avail[cid] = getattr(p, "SharedSubscriptionAvailable", None)
    def on_subscribe(c, u, mid, rcs, p):
        granted[cid] = [r.value for r in rcs]
    def on_message(c, u, m):
        with lock:
            got[cid].append(m.payload.decode()); total[0] += 1
            if total[0] >= 40: done.set()
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect("127.0.0.1", port, 30); c.loop_start()
    return c
def wait_for(d):
    end = time.time() + 10
    while len(d) < len(ids) and time.time() < end: time.sleep(0.05)
members = [make(i) for i in ids]
wait_for(avail)
for c in members: c.subscribe("$share/pg/p/+", qos=1)
wait_for(granted)
pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-shared-pub", protocol=MQTTProtocolVersion.MQTTv5)
pub.connect("127.0.0.1", port, 30); pub.loop_start()
for n in range(40): pub.publish("p/1", str(n), qos=1).wait_for_publish(5)
done.wait(10); time.sleep(0.5)
for c in members + [pub]: c.disconnect(); c.loop_stop()
for i in ids: print(i, granted.get(i), avail.get(i), ",".join(got[i]))
"#;

#[test]
fn paho_v5_members_share_the_messages() {
    if !common::tools::have_paho() {
        return;
    }
    let b = Broker::start(&[]);
    let ids: Vec<String> = (0..4)
        .map(|i| id_on_shard(&format!("paho{i}"), (i / 2) as u16, 2))
        .collect();
    let port = b.port().to_string();
    let mut args = vec!["-c", PAHO_SHARED, &port];
    args.extend(ids.iter().map(String::as_str));
    let out = std::process::Command::new("python3")
        .args(&args)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all = BTreeSet::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 4, "{line}");
        assert_eq!(f[1], "[1]", "granted QoS 1: {line}");
        assert_eq!(f[2], "1", "Shared Subscription Available: {line}");
        let payloads: Vec<&str> = f[3].split(',').filter(|p| !p.is_empty()).collect();
        assert_eq!(payloads.len(), 10, "an even share: {line}");
        for p in payloads {
            assert!(all.insert(p.to_string()), "delivered twice: {p}");
        }
    }
    assert_eq!(all.len(), 40, "{text}");
}

/// A `mosquitto_sub` member of `$share/mg/ms/+` (QoS 1, `-V` `version`), its stdout read on a thread: returns the
/// child and a receiver of its payload lines, once its SUBACK arrived.
fn mosquitto_member(
    b: &Broker,
    id: &str,
    version: &str,
) -> Option<(std::process::Child, std::sync::mpsc::Receiver<String>)> {
    use std::io::BufRead;
    // Line-buffered: its stdout is a pipe.
    let mut child = std::process::Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(["-h", "127.0.0.1", "-p", &b.port().to_string(), "-i", id])
        .args([
            "-V",
            version,
            "-q",
            "1",
            "-d",
            "-W",
            "20",
            "-t",
            "$share/mg/ms/+",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(l) if l.contains("received SUBACK") => return Some((child, rx)),
            Ok(_) => continue,
            Err(e) => panic!("{id}: no SUBACK from mosquitto_sub: {e}"),
        }
    }
}

/// Real clients as members: a `mosquitto_sub -V mqttv311` on shard 0 and a `mosquitto_sub -V 5` on shard 1 share
/// the messages, each once, evenly.
#[test]
fn mosquitto_sub_members_v311_and_v5_share_the_messages() {
    if !common::tools::have("mosquitto_sub", &["--help"])
        || !common::tools::have("stdbuf", &["--version"])
    {
        return;
    }
    let b = Broker::start(&[]);
    let mut members = Vec::new();
    for (shard, version) in [(0, "mqttv311"), (1, "5")] {
        let id = id_on_shard(&format!("mosq-{version}"), shard, 2);
        members.push(mosquitto_member(&b, &id, version).expect("mosquitto_sub runs"));
    }
    publish_acked(&b, "ms/1", 20);
    let mut per_member = Vec::new();
    let mut all = BTreeSet::new();
    for (child, rx) in &mut members {
        let mut got = Vec::new();
        // Payloads are numbers; the rest are debug lines.
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(1500)) {
            if l.parse::<u32>().is_ok() {
                assert!(all.insert(l.clone()), "delivered twice: {l}");
                got.push(l);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        per_member.push(got.len());
    }
    assert_eq!(all.len(), 20, "{all:?}");
    assert_eq!(per_member, [10, 10], "an even share");
}
