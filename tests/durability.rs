//! Durable sessions with the real binary: what the broker acknowledged survives `kill -9`.
//!
//! Publishers and subscribers are raw codec clients so the tests see every packet id, DUP flag and
//! acknowledgement. The broker runs 2 shards; the publisher and one subscriber sit on different shards, so the
//! cross-shard durability confirmation is exercised, and a second subscriber shares the publisher's shard.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coremq::codec::{self, Disconnect, Packet, ProtocolVersion, PubResp, Publish, QoS, ReasonCode};

use common::{id_on_shard, Broker, Raw};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;
const QUEUE: &str = "60000";

fn write(raw: &mut Raw, p: &Packet) -> bool {
    let mut out = BytesMut::new();
    codec::encode(p, V, &mut out).unwrap();
    raw.stream.write_all(&out).is_ok()
}

fn disconnect() -> Packet {
    Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: None,
    })
}

fn resp(packet_id: u16) -> PubResp {
    PubResp {
        packet_id,
        reason: ReasonCode::Success,
        properties: None,
    }
}

/// Subscribe with a persistent session, then disconnect cleanly (the session stays).
fn persistent_subscriber(b: &Broker, id: &str, filter: &str) {
    let (mut s, ack) = Raw::connect(b.addr, Raw::connect_packet(id, false, 60, V));
    assert_eq!(ack.reason, ReasonCode::Success);
    s.subscribe(1, filter, QoS::ExactlyOnce);
    assert!(write(&mut s, &disconnect()));
    assert!(s.closed_within(Duration::from_secs(5)));
}

/// Publish `n` messages (payload = sequence number) keeping up to `window` unacknowledged. Each sequence number
/// whose PUBACK (QoS 1) or PUBCOMP (QoS 2) arrived is counted in `acked` (acks arrive in order). Stops early when
/// the broker goes away; returns the number acknowledged.
fn publish_stream(
    raw: &mut Raw,
    topic: &str,
    qos: QoS,
    n: u32,
    window: usize,
    acked: &AtomicU64,
) -> u32 {
    raw.set_timeout(Duration::from_secs(20));
    let mut outstanding: VecDeque<(u32, u16)> = VecDeque::new();
    let mut next = 0u32;
    let mut done = 0u32;
    while done < n {
        while next < n && outstanding.len() < window {
            let pid = (next % 60_000) as u16 + 1;
            let p = Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: topic.into(),
                packet_id: pid,
                properties: None,
                payload: bytes::Bytes::copy_from_slice(&next.to_be_bytes()),
            });
            if !write(raw, &p) {
                return done;
            }
            outstanding.push_back((next, pid));
            next += 1;
        }
        match raw.recv() {
            Some(Packet::PubAck(r)) if qos == QoS::AtLeastOnce => {
                let (_, pid) = outstanding.pop_front().expect("ack for something sent");
                assert_eq!(r.packet_id, pid, "PUBACKs must come in publish order");
                done += 1;
                acked.store(done as u64, Ordering::SeqCst);
            }
            Some(Packet::PubRec(r)) if qos == QoS::ExactlyOnce => {
                if !write(raw, &Packet::PubRel(resp(r.packet_id))) {
                    return done;
                }
            }
            Some(Packet::PubComp(r)) if qos == QoS::ExactlyOnce => {
                let (_, pid) = outstanding.pop_front().expect("ack for something sent");
                assert_eq!(r.packet_id, pid, "PUBCOMPs must come in PUBREL order");
                done += 1;
                acked.store(done as u64, Ordering::SeqCst);
            }
            Some(other) => panic!("unexpected packet for a publisher: {other:?}"),
            None => return done,
        }
    }
    done
}

#[derive(Default, Debug)]
struct Received {
    /// topic -> sequence numbers in arrival order (duplicates included).
    seqs: HashMap<String, Vec<u32>>,
    dup_flags: u64,
}

/// Reconnect a persistent subscriber and take everything it is sent, acknowledging as a correct client would
/// (QoS 2 receiver keeps its packet ids until PUBREL). Until `expect` messages arrived it waits up to
/// `STALL` for each packet (a loaded machine's fsync can stall a round for seconds: a short quiet window there
/// reads as loss that is not); after that it stops at `quiet` without traffic, which catches extras.
fn drain(b: &Broker, id: &str, quiet: Duration, expect: usize) -> Received {
    const STALL: Duration = Duration::from_secs(30);
    let (mut s, ack) = Raw::connect(b.addr, Raw::connect_packet(id, false, 60, V));
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present, "{id}: the session must survive");
    let mut got = Received::default();
    let mut qos2_pending: HashSet<u16> = HashSet::new();
    loop {
        let arrived: usize = got.seqs.values().map(Vec::len).sum();
        s.set_timeout(if arrived < expect || !qos2_pending.is_empty() {
            STALL
        } else {
            quiet
        });
        let Some(p) = s.recv() else { break };
        match p {
            Packet::Publish(p) => {
                let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                got.dup_flags += p.dup as u64;
                match p.qos {
                    QoS::AtLeastOnce => {
                        got.seqs.entry(p.topic.to_string()).or_default().push(seq);
                        write(&mut s, &Packet::PubAck(resp(p.packet_id)));
                    }
                    QoS::ExactlyOnce => {
                        // Method B of the spec: a PUBLISH whose id awaits PUBREL is the same message again.
                        if qos2_pending.insert(p.packet_id) {
                            got.seqs.entry(p.topic.to_string()).or_default().push(seq);
                        }
                        write(&mut s, &Packet::PubRec(resp(p.packet_id)));
                    }
                    QoS::AtMostOnce => panic!("persistent QoS 1/2 messages came as QoS 0"),
                }
            }
            Packet::PubRel(r) => {
                qos2_pending.remove(&r.packet_id);
                write(&mut s, &Packet::PubComp(resp(r.packet_id)));
            }
            other => panic!("unexpected packet for a subscriber: {other:?}"),
        }
    }
    got
}

/// Every acknowledged sequence number `0..acked` arrived, in order; QoS 2 exactly once. Returns the number of
/// QoS 1 duplicates (allowed, reported).
fn check(who: &str, got: &Received, topic: &str, acked: u32, exactly_once: bool) -> usize {
    let seqs = got.seqs.get(topic).cloned().unwrap_or_default();
    let mut seen = HashSet::new();
    let mut dups = 0;
    let mut last = None;
    for &s in &seqs {
        if !seen.insert(s) {
            dups += 1;
            continue;
        }
        if let Some(l) = last {
            assert!(
                s > l,
                "{who} {topic}: {s} arrived after {l} (order per publisher)"
            );
        }
        last = Some(s);
    }
    let missing: Vec<u32> = (0..acked).filter(|s| !seen.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{who} {topic}: {} acknowledged messages lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    if exactly_once {
        assert_eq!(dups, 0, "{who} {topic}: QoS 2 delivered {dups} duplicates");
    }
    dups
}

/// Issue 20's scenario with the default config (`max_queued_messages = 1000`): 10,000 QoS 1 + 10,000 QoS 2
/// acknowledged for offline persistent sessions all arrive after a clean restart and after `kill -9`.
#[test]
fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start_in(dir.path(), &[]);
    let far = id_on_shard("dur-far", 1, 2);
    let near = id_on_shard("dur-near", 0, 2);
    persistent_subscriber(&b, &far, "dur/#");
    persistent_subscriber(&b, &near, "dur/#");

    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet(&id_on_shard("dur-pub", 0, 2), true, 60, V),
    );
    let acked = AtomicU64::new(0);
    let n = 10_000;
    assert_eq!(
        publish_stream(&mut p, "dur/q1", QoS::AtLeastOnce, n, 100, &acked),
        n
    );
    assert_eq!(
        publish_stream(&mut p, "dur/q2", QoS::ExactlyOnce, n, 100, &acked),
        n
    );
    // A clean restart first (nothing drained), then kill -9 of the restarted broker.
    b.terminate();
    let mut b = Broker::start_in(dir.path(), &[]);
    b.kill9();

    let b = Broker::start_in(dir.path(), &[]);
    for who in [&far, &near] {
        let got = drain(&b, who, Duration::from_secs(3), 2 * n as usize);
        let dups = check(who, &got, "dur/q1", n, false);
        check(who, &got, "dur/q2", n, true);
        eprintln!(
            "{who}: {} QoS 1 + {} QoS 2 received after kill -9, {dups} QoS 1 duplicates",
            got.seqs["dur/q1"].len(),
            got.seqs["dur/q2"].len()
        );
    }
}

#[test]
fn acknowledged_messages_survive_kill_9_during_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start_in(dir.path(), &["--max-queued-messages", QUEUE]);
    let far = id_on_shard("mid-far", 1, 2);
    let near = id_on_shard("mid-near", 0, 2);
    persistent_subscriber(&b, &far, "mid/#");
    persistent_subscriber(&b, &near, "mid/#");

    let addr = b.addr;
    let acked1 = Arc::new(AtomicU64::new(0));
    let acked2 = Arc::new(AtomicU64::new(0));
    let mut pubs = Vec::new();
    for (topic, qos, acked, shard) in [
        ("mid/q1", QoS::AtLeastOnce, acked1.clone(), 0),
        ("mid/q2", QoS::ExactlyOnce, acked2.clone(), 1),
    ] {
        pubs.push(std::thread::spawn(move || {
            let id = id_on_shard(&format!("mid-pub-{topic}"), shard, 2);
            let (mut p, _) = Raw::connect(addr, Raw::connect_packet(&id, true, 60, V));
            publish_stream(&mut p, topic, qos, 50_000, 50, &acked)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked1.load(Ordering::SeqCst) < 2_000 || acked2.load(Ordering::SeqCst) < 2_000 {
        assert!(Instant::now() < deadline, "publishers made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    b.kill9();
    let done: Vec<u32> = pubs.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        done.iter().all(|&d| d < 50_000),
        "the kill must land mid-stream"
    );

    let b = Broker::start_in(dir.path(), &["--max-queued-messages", QUEUE]);
    for who in [&far, &near] {
        let got = drain(
            &b,
            who,
            Duration::from_secs(3),
            (done[0] + done[1]) as usize,
        );
        let dups = check(who, &got, "mid/q1", done[0], false);
        check(who, &got, "mid/q2", done[1], true);
        eprintln!(
            "{who}: acked {:?}, received {} / {} (unacknowledged extras allowed), {dups} QoS 1 duplicates",
            done,
            got.seqs.get("mid/q1").map_or(0, |v| v.len()),
            got.seqs.get("mid/q2").map_or(0, |v| v.len()),
        );
    }
}

#[test]
fn retained_messages_and_subscriptions_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start_in(dir.path(), &[]);
    let sub = id_on_shard("keep-sub", 1, 2);
    persistent_subscriber(&b, &sub, "live/#");
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet(&id_on_shard("keep-pub", 0, 2), true, 60, V),
    );
    // Retained: two topics set, one of them replaced, a third set then cleared.
    for (i, (topic, payload)) in [
        ("ret/a", &b"a1"[..]),
        ("ret/b", b"b1"),
        ("ret/a", b"a2"),
        ("ret/c", b"c1"),
        ("ret/c", b""),
    ]
    .into_iter()
    .enumerate()
    {
        p.publish(topic, QoS::AtLeastOnce, i as u16 + 1, payload, true, false);
        assert!(matches!(p.recv(), Some(Packet::PubAck(_))));
    }

    for restart in ["kill -9", "SIGTERM"] {
        if restart == "kill -9" {
            b.kill9();
        } else {
            assert!(b.terminate().success());
        }
        b = Broker::start_in(dir.path(), &[]);

        let (mut fresh, _) = Raw::connect(
            b.addr,
            Raw::connect_packet(&format!("fresh-{}", restart.len()), true, 60, V),
        );
        fresh.subscribe(1, "ret/#", QoS::AtLeastOnce);
        fresh.set_timeout(Duration::from_millis(700));
        let mut retained = HashMap::new();
        while let Some(Packet::Publish(m)) = fresh.recv() {
            assert!(m.retain, "retained messages carry RETAIN=1");
            retained.insert(m.topic.to_string(), m.payload.to_vec());
            if m.qos != QoS::AtMostOnce {
                write(&mut fresh, &Packet::PubAck(resp(m.packet_id)));
            }
        }
        assert_eq!(retained.len(), 2, "after {restart}: {retained:?}");
        assert_eq!(retained["ret/a"], b"a2");
        assert_eq!(retained["ret/b"], b"b1");

        // The persistent subscription still routes, without subscribing again.
        let (mut p2, _) = Raw::connect(
            b.addr,
            Raw::connect_packet(&id_on_shard("keep-pub2", 0, 2), true, 60, V),
        );
        p2.publish(
            "live/x",
            QoS::AtLeastOnce,
            9,
            restart.as_bytes(),
            false,
            false,
        );
        assert!(matches!(p2.recv(), Some(Packet::PubAck(_))));
        let (mut s, ack) = Raw::connect(b.addr, Raw::connect_packet(&sub, false, 60, V));
        assert!(ack.session_present, "after {restart}");
        let m = common::publish(s.recv());
        assert_eq!(&m.payload[..], restart.as_bytes());
        write(&mut s, &Packet::PubAck(resp(m.packet_id)));
        assert!(write(&mut s, &disconnect()));
        assert!(s.closed_within(Duration::from_secs(5)));
    }
}

#[test]
fn unacknowledged_deliveries_are_resent_with_dup_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start_in(dir.path(), &[]);
    let sub = id_on_shard("inf-sub", 1, 2);
    let (mut s, _) = Raw::connect(b.addr, Raw::connect_packet(&sub, false, 60, V));
    s.subscribe(1, "inf/#", QoS::ExactlyOnce);
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet(&id_on_shard("inf-pub", 0, 2), true, 60, V),
    );
    let acked = AtomicU64::new(0);
    publish_stream(&mut p, "inf/1", QoS::AtLeastOnce, 5, 5, &acked);
    publish_stream(&mut p, "inf/2", QoS::ExactlyOnce, 5, 5, &acked);
    // The subscriber receives everything, answers PUBREC for the first QoS 2 message only, acks nothing else.
    let mut first_ids = HashMap::new();
    let mut pubrec_sent = None;
    s.set_timeout(Duration::from_secs(2));
    while first_ids.len() < 10 {
        let m = common::publish(s.recv());
        let seq = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
        first_ids.insert((m.topic.to_string(), seq), m.packet_id);
        if m.qos == QoS::ExactlyOnce && pubrec_sent.is_none() {
            pubrec_sent = Some(m.packet_id);
            write(&mut s, &Packet::PubRec(resp(m.packet_id)));
        }
    }
    let rel = pubrec_sent.unwrap();
    match s.recv() {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, rel),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(100));
    b.kill9();

    let b = Broker::start_in(dir.path(), &[]);
    let (mut s, ack) = Raw::connect(b.addr, Raw::connect_packet(&sub, false, 60, V));
    assert!(ack.session_present);
    s.set_timeout(Duration::from_secs(2));
    let mut resent = 0;
    let mut pubrel = 0;
    while let Some(p) = s.recv() {
        match p {
            Packet::Publish(m) => {
                let seq = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                assert!(m.dup, "a resent PUBLISH carries DUP");
                assert_eq!(
                    first_ids[&(m.topic.to_string(), seq)],
                    m.packet_id,
                    "resent with the packet id it had before the crash"
                );
                assert_ne!(m.packet_id, rel, "a released message is not resent");
                resent += 1;
            }
            Packet::PubRel(r) => {
                assert_eq!(r.packet_id, rel);
                pubrel += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((resent, pubrel), (9, 1));
}

/// A v5 publisher `NAME-pub` sends up to `max` QoS 1 messages of 200 bytes (sequence number first) to
/// `NAME/t`, one at a time, until ten are refused with 0x97: the sequence numbers acknowledged with Success, and
/// how many were refused.
fn publish_until_refused(b: &Broker, name: &str, max: u32) -> (Vec<u32>, u32) {
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet(
            &id_on_shard(&format!("{name}-pub"), 0, 2),
            true,
            60,
            ProtocolVersion::V5,
        ),
    );
    p.set_timeout(Duration::from_secs(10));
    let topic = format!("{name}/t");
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..max {
        let mut payload = i.to_be_bytes().to_vec();
        payload.resize(200, 0);
        p.publish(
            &topic,
            QoS::AtLeastOnce,
            (i % 60_000) as u16 + 1,
            &payload,
            false,
            false,
        );
        match p.recv() {
            Some(Packet::PubAck(r)) if r.reason == ReasonCode::Success => accepted.push(i),
            Some(Packet::PubAck(r)) => {
                assert_eq!(r.reason, ReasonCode::QuotaExceeded);
                refused += 1;
                if refused == 10 {
                    break;
                }
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    (accepted, refused)
}

/// Every sequence number in `accepted` arrived on `topic`.
fn assert_all_arrived(got: &Received, topic: &str, accepted: &[u32]) {
    let seqs: HashSet<u32> = got.seqs.get(topic).into_iter().flatten().copied().collect();
    let lost: Vec<&u32> = accepted.iter().filter(|s| !seqs.contains(s)).collect();
    assert!(lost.is_empty(), "{} acknowledged messages lost", lost.len());
}

#[test]
fn a_full_log_refuses_qos1_publishes_with_quota_exceeded_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // Two 64 KiB segments per shard: full after a few hundred 200-byte messages.
    let cfg = common::write_config(
        dir.path(),
        "[store]\nsegment_size = 65536\nmax_segments = 2\nmax_record_size = 16384\nmax_group_bytes = 65536\n",
    );
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let b = Broker::start_in(&data, &["--config", &cfg, "--max-queued-messages", QUEUE]);
    let sub = id_on_shard("full-sub", 0, 2);
    persistent_subscriber(&b, &sub, "full/#");

    let (accepted, refused) = publish_until_refused(&b, "full", 2_000);
    assert!(refused > 0, "the log never filled up");
    assert!(!accepted.is_empty());

    // Everything acknowledged is delivered.
    let got = drain(&b, &sub, Duration::from_secs(2), accepted.len());
    assert_all_arrived(&got, "full/t", &accepted);
    eprintln!(
        "log full after {} accepted messages; {refused} refused with 0x97",
        accepted.len()
    );
}

/// A tiny per-session byte bound: the v5 publisher gets PUBACK 0x97 for what the offline persistent session
/// cannot keep, and every message acknowledged with Success arrives after `kill -9`.
#[test]
fn a_full_persistent_session_refuses_with_quota_exceeded_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(dir.path(), "max_offline_bytes_per_session = 20000\n");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut b = Broker::start_in(&data, &["--config", &cfg]);
    let sub = id_on_shard("tiny-sub", 0, 2);
    persistent_subscriber(&b, &sub, "tiny/#");

    let (accepted, refused) = publish_until_refused(&b, "tiny", 1_000);
    assert!(refused > 0, "the session bound was never reached");
    assert!(!accepted.is_empty());
    b.kill9();

    let b = Broker::start_in(&data, &["--config", &cfg]);
    let got = drain(&b, &sub, Duration::from_secs(2), accepted.len());
    assert_all_arrived(&got, "tiny/t", &accepted);
    eprintln!(
        "session full after {} accepted messages; {refused} refused with 0x97",
        accepted.len()
    );
}
