use super::super::durable::MAX_UNDURABLE_ROUNDS;
use super::*;
use crate::codec::{
    self, Connect, Packet, Publish, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use crate::store::{FsyncPolicy, StoreConfig};
use std::time::Duration;

const V: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Accept a connection and feed it a CONNECT (v3.1.1, or v5 with a session expiry when `v5_expiry` is set).
pub(super) fn connect_as(
    shard: &mut Shard,
    io: u64,
    id: &str,
    clean: bool,
    v5_expiry: Option<u32>,
) -> ConnKey {
    let key = shard.accept(io);
    let protocol = if v5_expiry.is_some() {
        ProtocolVersion::V5
    } else {
        V
    };
    let c = Connect {
        protocol,
        bridge: false,
        clean_start: clean,
        keep_alive: 0,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: v5_expiry.map(|e| {
            Box::new(crate::codec::Properties {
                session_expiry_interval: Some(e),
                ..Default::default()
            })
        }),
    };
    let mut b = BytesMut::new();
    codec::encode(&Packet::Connect(Box::new(c)), protocol, &mut b).unwrap();
    assert_eq!(shard.on_bytes(key, &mut b), ReadOutcome::Continue);
    key
}

pub(super) fn connect(shard: &mut Shard, io: u64, id: &str, clean: bool) -> ConnKey {
    connect_as(shard, io, id, clean, None)
}

pub(super) fn take_output(shard: &mut Shard, key: ConnKey) -> Vec<Packet> {
    let (out, n) = shard.out_writable(key).unwrap();
    let mut bytes = BytesMut::from(&out[..n]);
    shard.consumed(key, n);
    let mut d = codec::Decoder::new_client(V, 1 << 20);
    let mut v = Vec::new();
    while let Some(p) = d.decode(&mut bytes).unwrap() {
        v.push(p);
    }
    v
}

fn shard_with_log(dir: &std::path::Path) -> Shard {
    let cfg = StoreConfig {
        // Long enough that nothing becomes durable unless the test syncs.
        fsync: FsyncPolicy::Interval(Duration::from_secs(10)),
        sync_bytes: usize::MAX,
        segment_size: 1 << 20,
        ..StoreConfig::default()
    };
    let (store, rec) = Store::open(dir, 0, cfg).unwrap();
    let mut shard = Shard::new(ShardConfig::default());
    shard.attach_store(store, 1_000_000);
    shard.restore(rec.state);
    shard
}

pub(super) fn subscribe(filter: &str, qos: QoS) -> BytesMut {
    frame(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        properties: None,
    }))
}

fn publish(qos: QoS, id: u16) -> BytesMut {
    publish_to("t/1", qos, id, b"hello")
}

#[test]
fn puback_waits_for_the_log_only_when_it_vouches_for_persistent_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = shard_with_log(dir.path());
    let p = connect(&mut shard, 1, "pub", true);
    take_output(&mut shard, p);

    // No persistent subscriber: nothing to make durable, the PUBACK goes at once.
    shard.on_bytes(p, &mut publish(QoS::AtLeastOnce, 1));
    shard.end_round();
    assert!(matches!(
        take_output(&mut shard, p)[..],
        [Packet::PubAck(_)]
    ));

    // A persistent subscriber, now offline.
    let s = connect(&mut shard, 2, "sub", false);
    let mut sub = subscribe("t/#", QoS::AtLeastOnce);
    shard.on_bytes(s, &mut sub);
    shard.end_round();
    assert!(
        take_output(&mut shard, s)
            .iter()
            .all(|p| !matches!(p, Packet::SubAck(_))),
        "a persistent SUBACK waits for the log"
    );
    shard.sync_log();
    assert!(take_output(&mut shard, s)
        .iter()
        .any(|p| matches!(p, Packet::SubAck(_))));
    shard.on_io_closed(s);
    shard.release(s);

    shard.on_bytes(p, &mut publish(QoS::AtLeastOnce, 2));
    shard.on_bytes(p, &mut publish(QoS::AtMostOnce, 0));
    shard.end_round();
    assert!(
        take_output(&mut shard, p).is_empty(),
        "the PUBACK (and what follows it) waits until the queued message is durable"
    );
    shard.sync_log();
    assert!(matches!(
        take_output(&mut shard, p)[..],
        [Packet::PubAck(_)]
    ));

    // The offline queue holds a reference only; the body is read back from the log on reconnect.
    let sidx = *shard.by_client.get(&shard.sessions, "sub").unwrap();
    let q = &shard.session(sidx).queue;
    assert_eq!(q.len(), 2);
    assert!(q[0].msg.is_none() && q[0].msg_id != 0);
    assert!(
        q[1].msg.is_some() && q[1].msg_id == 0,
        "QoS 0 is never persisted"
    );
    let s = connect(&mut shard, 3, "sub", false);
    let got = take_output(&mut shard, s);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a), Packet::Publish(m), Packet::Publish(m0)]
            if a.session_present && &m.payload[..] == b"hello" && m.qos == QoS::AtLeastOnce
                && m0.qos == QoS::AtMostOnce)
    );
}

fn connect_v5(shard: &mut Shard, io: u64, id: &str, expiry: u32) -> ConnKey {
    connect_as(shard, io, id, false, Some(expiry))
}

#[test]
fn v5_session_expiry_is_kept_across_a_restart_and_enforced() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut shard = shard_with_log(dir.path());
        shard.tick(100);
        let a = connect_v5(&mut shard, 1, "short", 30);
        let b = connect_v5(&mut shard, 2, "long", 3600);
        shard.on_io_closed(a);
        shard.on_io_closed(b);
        shard.end_round();
        shard.sync_log();
        // Offline at shard second 100 = unix 1_000_100.
        shard.tick(120);
        assert_eq!(shard.session_count(), 2, "not expired yet");
    }
    // Restart 20 s of wall time after the disconnect: "short" has 10 s left, "long" 3580 s.
    let cfg = StoreConfig {
        fsync: FsyncPolicy::Interval(Duration::from_secs(10)),
        segment_size: 1 << 20,
        ..StoreConfig::default()
    };
    let (store, rec) = Store::open(dir.path(), 0, cfg).unwrap();
    let mut shard = Shard::new(ShardConfig::default());
    shard.attach_store(store, 1_000_120);
    shard.restore(rec.state);
    assert_eq!(shard.session_count(), 2);
    shard.tick(9);
    assert_eq!(shard.session_count(), 2);
    shard.tick(10);
    assert_eq!(
        shard.session_count(),
        1,
        "the 30 s session expired 30 s after its disconnect"
    );
    assert!(shard.by_client.get(&shard.sessions, "long").is_some());
    // Reconnecting cancels the expiry; a later disconnect starts it again.
    let l = connect_v5(&mut shard, 3, "long", 5);
    shard.tick(4000);
    assert_eq!(shard.session_count(), 1, "online sessions never expire");
    shard.on_io_closed(l);
    shard.tick(4004);
    assert_eq!(shard.session_count(), 1);
    shard.tick(4005);
    assert_eq!(shard.session_count(), 0);
    shard.end_round();
    shard.sync_log();
    let state = shard.store.as_ref().unwrap().snapshot();
    assert!(
        state.sessions.is_empty(),
        "expired sessions are deleted from the log"
    );
}

#[test]
fn restore_rebuilds_sessions_queues_and_interest() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut shard = shard_with_log(dir.path());
        let s = connect(&mut shard, 1, "sub", false);
        let mut sub = subscribe("t/+", QoS::ExactlyOnce);
        shard.on_bytes(s, &mut sub);
        shard.on_io_closed(s);
        shard.release(s);
        let p = connect(&mut shard, 2, "pub", true);
        for i in 1..=3 {
            shard.on_bytes(p, &mut publish(QoS::ExactlyOnce, i));
        }
        shard.end_round();
        shard.sync_log();
    }
    let mut shard = shard_with_log(dir.path());
    let mut filters = Vec::new();
    shard.subs.for_each(|f, _| filters.push(f.to_string()));
    assert_eq!(filters, vec!["t/+".to_string()]);
    let s = connect(&mut shard, 1, "sub", false);
    shard.end_round();
    shard.sync_log();
    let got = take_output(&mut shard, s);
    let publishes: Vec<_> = got
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(m) => Some((m.qos, m.packet_id)),
            _ => None,
        })
        .collect();
    assert_eq!(publishes.len(), 3, "{got:?}");
    assert!(publishes.iter().all(|(q, _)| *q == QoS::ExactlyOnce));
}

/// A message queued and sent in the same round costs one `Enqueue` record carrying its packet id, not an
/// `Enqueue` and a `Delivery`; after a crash it is resent with that id and DUP.
#[test]
fn a_message_sent_in_the_round_it_was_queued_is_one_record_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let sent: Vec<u16> = {
        let mut shard = shard_with_log(dir.path());
        let s = connect(&mut shard, 1, "sub", false);
        shard.on_bytes(s, &mut subscribe("t/+", QoS::AtLeastOnce));
        shard.end_round();
        shard.sync_log();
        take_output(&mut shard, s);
        let p = connect(&mut shard, 2, "pub", true);
        for i in 1..=3 {
            shard.on_bytes(p, &mut publish(QoS::AtLeastOnce, i));
        }
        shard.end_round();
        shard.sync_log();
        let ids = take_output(&mut shard, s)
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(m) => Some(m.packet_id),
                _ => None,
            })
            .collect();
        // Crash: the shard is dropped with the subscriber still connected and nothing acknowledged.
        ids
    };
    assert_eq!(sent.len(), 3);
    let cfg = StoreConfig {
        segment_size: 1 << 20,
        ..StoreConfig::default()
    };
    let (store, rec) = Store::open(dir.path(), 0, cfg).unwrap();
    // Session upsert, subscription, then a body and one enqueue per message.
    assert_eq!(rec.report.records, 2 + 3 * 2, "{:?}", rec.report);
    drop(store);
    let mut shard = shard_with_log(dir.path());
    let s = connect(&mut shard, 1, "sub", false);
    shard.end_round();
    shard.sync_log();
    let resent: Vec<(u16, bool)> = take_output(&mut shard, s)
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(m) => Some((m.packet_id, m.dup)),
            _ => None,
        })
        .collect();
    assert_eq!(
        resent,
        sent.iter().map(|&id| (id, true)).collect::<Vec<_>>()
    );
}

/// A disk that does not keep up: once `MAX_UNDURABLE_ROUNDS` rounds wait for it the shard reports congestion
/// (the I/O layer stops reading), counted once; it clears when the log is durable again.
#[test]
fn rounds_waiting_for_the_log_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = shard_with_log(dir.path());
    let s = connect(&mut shard, 1, "sub", false);
    shard.on_bytes(s, &mut subscribe("t/+", QoS::AtLeastOnce));
    shard.end_round();
    // The (persistent) SUBACK waits for the log.
    shard.sync_log();
    shard.poll_durable();
    take_output(&mut shard, s);
    let p = connect(&mut shard, 2, "pub", true);
    for i in 0..MAX_UNDURABLE_ROUNDS {
        assert!(!shard.log_congested(), "congested after {i} rounds");
        shard.on_bytes(p, &mut publish(QoS::AtLeastOnce, (i % 60_000) as u16 + 1));
        shard.end_round();
        // The subscriber acknowledges, so its queue stays short; only the log lags.
        for pkt in take_output(&mut shard, s) {
            if let Packet::Publish(m) = pkt {
                let ack = Packet::PubAck(codec::PubResp {
                    packet_id: m.packet_id,
                    reason: codec::ReasonCode::Success,
                    properties: Default::default(),
                });
                shard.on_bytes(s, &mut frame(&ack));
            }
        }
    }
    assert!(shard.log_congested());
    assert!(shard.log_congested());
    assert_eq!(shard.stats.log_stalls, 1);
    shard.sync_log();
    shard.poll_durable();
    assert!(!shard.log_congested());
}

/// A client id that lands on `shard` of 2.
pub(super) fn id_on(prefix: &str, shard: u16) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| super::super::owner_shard(id, 2) == shard)
        .unwrap()
}

/// Shard `id` of 2 with its own log in `dir` (nothing is durable until the test syncs).
fn two_shard_member(dir: &std::path::Path, id: u16, max_record_size: u32) -> Shard {
    let cfg = StoreConfig {
        fsync: FsyncPolicy::Interval(Duration::from_secs(10)),
        sync_bytes: usize::MAX,
        segment_size: 1 << 20,
        max_record_size,
        ..StoreConfig::default()
    };
    let (store, rec) = Store::open(dir, id as u32, cfg).unwrap();
    let mut shard = Shard::new(ShardConfig {
        shard_id: id,
        shards: 2,
        ..ShardConfig::default()
    });
    shard.attach_store(store, 1_000_000);
    shard.restore(rec.state);
    shard
}

/// A few rounds of both shards, carrying mesh messages between them; a shard's log is synced each round
/// only if `sync[shard]`.
pub(super) fn shuttle(a: &mut Shard, b: &mut Shard, sync: [bool; 2]) {
    let mut msgs = Vec::new();
    for _ in 0..4 {
        for (from, to) in [(0u16, 1u16), (1, 0)] {
            let (src, dst) = if from == 0 {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            src.end_round();
            if sync[from as usize] {
                src.sync_log();
            }
            src.poll_durable();
            src.take_mesh(&mut msgs);
            for (peer, m) in msgs.drain(..) {
                assert_eq!(peer, to);
                dst.on_mesh(from, m);
            }
        }
    }
}

/// Two shards with synced logs: on shard 1 a clean subscriber to `clean/+` and a persistent one to `kept/+`;
/// on shard 0 a persistent one to `mine/+`.
fn two_shards_with_subscribers(dir: &std::path::Path) -> (Shard, Shard) {
    let mut s0 = two_shard_member(&dir.join("0"), 0, 1 << 20);
    let mut s1 = two_shard_member(&dir.join("1"), 1, 1 << 20);
    let clean_sub = connect(&mut s1, 1, &id_on("csub", 1), true);
    s1.on_bytes(clean_sub, &mut subscribe("clean/+", QoS::AtLeastOnce));
    let durable_sub = connect(&mut s1, 2, &id_on("dsub", 1), false);
    s1.on_bytes(durable_sub, &mut subscribe("kept/+", QoS::AtLeastOnce));
    let local_sub = connect(&mut s0, 3, &id_on("lsub", 0), false);
    s0.on_bytes(local_sub, &mut subscribe("mine/+", QoS::AtLeastOnce));
    shuttle(&mut s0, &mut s1, [true, true]);
    (s0, s1)
}

pub(super) fn pubacks(got: &[Packet]) -> Vec<u16> {
    got.iter()
        .filter_map(|p| match p {
            Packet::PubAck(r) => Some(r.packet_id),
            _ => None,
        })
        .collect()
}

pub(super) fn publish_to(topic: &str, qos: QoS, id: u16, payload: &[u8]) -> BytesMut {
    frame(&Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: id,
        properties: None,
        payload: bytes::Bytes::copy_from_slice(payload),
    }))
}

/// Two shards wired by hand: the publisher's on shard 0, a persistent subscriber on shard 1 whose log takes
/// message bodies only up to `peer_max_record` bytes. Returns what the publisher received and shard 0.
fn publish_across_shards(peer_max_record: u32) -> (Vec<Packet>, Shard) {
    let dir = tempfile::tempdir().unwrap();
    let mut s0 = two_shard_member(&dir.path().join("0"), 0, 1 << 20);
    let mut s1 = two_shard_member(&dir.path().join("1"), 1, peer_max_record);
    let sub = connect(&mut s1, 1, &id_on("sub", 1), false);
    s1.on_bytes(sub, &mut subscribe("t/+", QoS::AtLeastOnce));
    shuttle(&mut s0, &mut s1, [true, true]);
    let p = connect(&mut s0, 2, &id_on("pub", 0), true);
    take_output(&mut s0, p);
    s0.on_bytes(p, &mut publish_to("t/1", QoS::AtLeastOnce, 7, &[b'x'; 300]));
    shuttle(&mut s0, &mut s1, [true, true]);
    (take_output(&mut s0, p), s0)
}

/// Clean-session traffic between shards waits for neither shard's log: its PUBACK leaves while both shards
/// still have records of their own persistent sessions waiting for a sync. Acknowledgements on one connection
/// still leave in order, and a message that did write to the peer's log (a persistent subscriber there)
/// still waits for it.
#[test]
fn a_cross_shard_publish_waits_only_for_the_records_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s0, mut s1) = two_shards_with_subscribers(dir.path());
    // Shard 1's own traffic leaves records in its log that are not synced below.
    let local = connect(&mut s1, 4, &id_on("lpub", 1), true);
    s1.on_bytes(local, &mut publish_to("kept/1", QoS::AtLeastOnce, 1, b"x"));
    // On shard 0, publisher p first writes to shard 0's log (6), then sends clean traffic across (7);
    // publisher q only sends clean traffic across (9).
    let p = connect(&mut s0, 5, &id_on("p", 0), true);
    let q = connect(&mut s0, 6, &id_on("q", 0), true);
    take_output(&mut s0, p);
    take_output(&mut s0, q);
    s0.on_bytes(p, &mut publish_to("mine/1", QoS::AtLeastOnce, 6, b"x"));
    s0.on_bytes(p, &mut publish_to("clean/1", QoS::AtLeastOnce, 7, b"x"));
    s0.on_bytes(q, &mut publish_to("clean/2", QoS::AtLeastOnce, 9, b"x"));
    shuttle(&mut s0, &mut s1, [false, false]);
    assert_eq!(
        pubacks(&take_output(&mut s0, q)),
        vec![9],
        "clean traffic waited for a log"
    );
    assert_eq!(
        pubacks(&take_output(&mut s0, p)),
        Vec::<u16>::new(),
        "6 waits for shard 0's log and 7 behind it"
    );
    shuttle(&mut s0, &mut s1, [true, false]);
    assert_eq!(pubacks(&take_output(&mut s0, p)), vec![6, 7]);
    // To a persistent subscriber on shard 1: waits for shard 1's log.
    s0.on_bytes(p, &mut publish_to("kept/2", QoS::AtLeastOnce, 8, b"x"));
    shuttle(&mut s0, &mut s1, [true, false]);
    assert_eq!(
        pubacks(&take_output(&mut s0, p)),
        Vec::<u16>::new(),
        "acknowledged before the peer's log holds it"
    );
    shuttle(&mut s0, &mut s1, [true, true]);
    assert_eq!(pubacks(&take_output(&mut s0, p)), vec![8]);
}

/// Mixed traffic between two shards: a clean message does not wait behind an earlier one, from another
/// publisher on the same shard, that wrote to the peer's log (confirmations are not one cumulative number).
#[test]
fn a_clean_cross_shard_publish_does_not_wait_behind_a_persistent_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s0, mut s1) = two_shards_with_subscribers(dir.path());
    let p = connect(&mut s0, 5, &id_on("p", 0), true);
    let q = connect(&mut s0, 6, &id_on("q", 0), true);
    take_output(&mut s0, p);
    take_output(&mut s0, q);
    // Same round: p's message is logged on shard 1, then q's clean one is numbered after it.
    s0.on_bytes(p, &mut publish_to("kept/1", QoS::AtLeastOnce, 1, b"x"));
    s0.on_bytes(q, &mut publish_to("clean/1", QoS::AtLeastOnce, 2, b"x"));
    shuttle(&mut s0, &mut s1, [true, false]);
    // A later round too, and p's second persistent one in between.
    s0.on_bytes(p, &mut publish_to("kept/2", QoS::AtLeastOnce, 3, b"x"));
    s0.on_bytes(q, &mut publish_to("clean/2", QoS::AtLeastOnce, 4, b"x"));
    shuttle(&mut s0, &mut s1, [true, false]);
    assert_eq!(
        pubacks(&take_output(&mut s0, q)),
        vec![2, 4],
        "clean traffic waited for the peer's log"
    );
    assert_eq!(
        pubacks(&take_output(&mut s0, p)),
        Vec::<u16>::new(),
        "acknowledged before the peer's log holds it"
    );
    shuttle(&mut s0, &mut s1, [true, true]);
    assert_eq!(pubacks(&take_output(&mut s0, p)), vec![1, 3]);
    assert_eq!(s0.dur.backlog() + s1.dur.backlog(), 0);
}

/// A QoS 1 message that the subscriber's shard could not write to its log is not acknowledged to the
/// publisher (the connection is closed and the client sends it again); when it could, the PUBACK leaves.
#[test]
fn a_peer_log_failure_withholds_the_publishers_acknowledgement() {
    let (got, s0) = publish_across_shards(1 << 16);
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::PubAck(r) if r.packet_id == 7)),
        "{got:?}"
    );
    assert_eq!(s0.stats.publishes_refused, 0);

    let (got, s0) = publish_across_shards(128);
    assert!(
        !got.iter().any(|p| matches!(p, Packet::PubAck(_))),
        "{got:?}"
    );
    assert_eq!(s0.stats.publishes_refused, 1);
}

/// QoS 0 messages between QoS 1 ones in an offline queue: every QoS 1 enqueue still reaches the log.
#[test]
fn enqueues_between_qos0_entries_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut shard = shard_with_log(dir.path());
        let s = connect(&mut shard, 1, "sub", false);
        shard.on_bytes(s, &mut subscribe("t/+", QoS::AtLeastOnce));
        shard.on_io_closed(s);
        shard.release(s);
        let p = connect(&mut shard, 2, "pub", true);
        for i in 1..=10 {
            shard.on_bytes(p, &mut publish(QoS::AtMostOnce, 0));
            shard.on_bytes(p, &mut publish(QoS::AtLeastOnce, i));
        }
        shard.end_round();
        shard.sync_log();
    }
    let mut shard = shard_with_log(dir.path());
    let s = connect(&mut shard, 1, "sub", false);
    shard.end_round();
    shard.sync_log();
    let qos1 = take_output(&mut shard, s)
        .iter()
        .filter(|p| matches!(p, Packet::Publish(m) if m.qos == QoS::AtLeastOnce))
        .count();
    assert_eq!(qos1, 10);
}
