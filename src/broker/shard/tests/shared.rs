//! Shared subscriptions across two shards, driven by hand (mesh messages carried by `shuttle`).
use super::*;
use crate::codec::{
    self, Connect, Packet, Publish, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use crate::store::{FsyncPolicy, StoreConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub(super) const V: ProtocolVersion = ProtocolVersion::V3_1_1;

pub(super) use super::frame_v as frame;

pub(super) fn id_on(prefix: &str, shard: u16) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| owner_shard(id, 2) == shard)
        .unwrap()
}

pub(super) fn connect_v(
    shard: &mut Shard,
    io: u64,
    id: &str,
    clean: bool,
    v: ProtocolVersion,
) -> ConnKey {
    let key = shard.accept(io);
    let c = Connect {
        protocol: v,
        bridge: false,
        clean_start: clean,
        keep_alive: 0,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: (v == ProtocolVersion::V5 && !clean).then(|| {
            Box::new(Properties {
                session_expiry_interval: Some(u32::MAX),
                ..Default::default()
            })
        }),
    };
    let mut b = frame(&Packet::Connect(Box::new(c)), v);
    assert_eq!(shard.on_bytes(key, &mut b), ReadOutcome::Continue);
    key
}

pub(super) fn connect(shard: &mut Shard, io: u64, id: &str, clean: bool) -> ConnKey {
    connect_v(shard, io, id, clean, V)
}

pub(super) fn output(shard: &mut Shard, key: ConnKey, v: ProtocolVersion) -> Vec<Packet> {
    let (out, n) = shard.out_writable(key).unwrap();
    let mut bytes = BytesMut::from(&out[..n]);
    shard.consumed(key, n);
    let mut d = codec::Decoder::new_client(v, 1 << 20);
    let mut got = Vec::new();
    while let Some(p) = d.decode(&mut bytes).unwrap() {
        got.push(p);
    }
    got
}

pub(super) fn subscribe(filter: &str, qos: QoS, v: ProtocolVersion) -> BytesMut {
    frame(
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            properties: None,
        }),
        v,
    )
}

pub(super) fn publish(topic: &str, qos: QoS, id: u16, payload: &str, retain: bool) -> BytesMut {
    frame(
        &Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: id,
            properties: None,
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        }),
        V,
    )
}

/// Payloads of the PUBLISHes in `got`.
pub(super) fn payloads(got: &[Packet]) -> Vec<String> {
    got.iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(String::from_utf8(p.payload.to_vec()).unwrap()),
            _ => None,
        })
        .collect()
}

pub(super) fn shard_of(id: u16, store: Option<&std::path::Path>) -> Shard {
    let mut shard = Shard::new(ShardConfig {
        shard_id: id,
        shards: 2,
        ..ShardConfig::default()
    });
    if let Some(dir) = store {
        let cfg = StoreConfig {
            fsync: FsyncPolicy::Interval(Duration::from_secs(10)),
            sync_bytes: usize::MAX,
            segment_size: 1 << 20,
            ..StoreConfig::default()
        };
        let (st, rec) = Store::open(dir, id as u32, cfg).unwrap();
        shard.attach_store(st, 1_000_000);
        let filters = shard.restore(rec.state);
        let _ = filters;
    }
    shard
}

/// Rounds of both shards, carrying mesh messages (and syncing both logs).
pub(super) fn shuttle(a: &mut Shard, b: &mut Shard) {
    let mut msgs = Vec::new();
    for _ in 0..4 {
        for from in [0u16, 1] {
            let (src, dst) = if from == 0 {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            src.end_round();
            src.sync_log();
            src.take_mesh(&mut msgs);
            for (_, m) in msgs.drain(..) {
                dst.on_mesh(from, m);
            }
        }
    }
}

/// Two members of group `g` on each shard (QoS 1), a plain subscriber on shard 1 and a publisher on shard 0.
struct Setup {
    s: [Shard; 2],
    /// (shard, connection) of each member.
    members: Vec<(usize, ConnKey)>,
    plain: ConnKey,
    publisher: ConnKey,
}

fn setup() -> Setup {
    let mut s = [shard_of(0, None), shard_of(1, None)];
    let mut members = Vec::new();
    let mut io = 1;
    for shard in [0u16, 1] {
        for n in 0..2 {
            let id = id_on(&format!("m{n}-"), shard);
            let k = connect(&mut s[shard as usize], io, &id, true);
            io += 1;
            s[shard as usize].on_bytes(k, &mut subscribe("$share/g/t/+", QoS::AtLeastOnce, V));
            members.push((shard as usize, k));
        }
    }
    let plain = connect(&mut s[1], io, &id_on("plain", 1), true);
    s[1].on_bytes(plain, &mut subscribe("t/+", QoS::AtMostOnce, V));
    let publisher = connect(&mut s[0], io + 1, &id_on("pub", 0), true);
    let [a, b] = &mut s;
    shuttle(a, b);
    for &(sh, k) in &members {
        let got = output(&mut s[sh], k, V);
        assert!(
            matches!(&got[..], [Packet::ConnAck(_), Packet::SubAck(a)] if a.reasons == [ReasonCode::GrantedQoS1]),
            "{got:?}"
        );
    }
    output(&mut s[1], plain, V);
    output(&mut s[0], publisher, V);
    Setup {
        s,
        members,
        plain,
        publisher,
    }
}

#[test]
fn each_message_goes_to_exactly_one_member_spread_across_shards() {
    let mut t = setup();
    for i in 0..40u16 {
        let mut p = publish("t/x", QoS::AtLeastOnce, i + 1, &format!("m{i}"), false);
        t.s[0].on_bytes(t.publisher, &mut p);
    }
    let [a, b] = &mut t.s;
    shuttle(a, b);
    let mut seen = BTreeMap::new();
    for (n, &(sh, k)) in t.members.iter().enumerate() {
        let got = payloads(&output(&mut t.s[sh], k, V));
        // Four members, two per shard: a quarter each.
        assert_eq!(got.len(), 10, "member {n} on shard {sh}: {got:?}");
        for p in got {
            assert!(seen.insert(p, n).is_none(), "delivered twice");
        }
    }
    assert_eq!(seen.len(), 40);
    // A plain subscriber still gets every message.
    assert_eq!(payloads(&output(&mut t.s[1], t.plain, V)).len(), 40);
    let acks = output(&mut t.s[0], t.publisher, V);
    assert_eq!(
        acks.iter()
            .filter(|p| matches!(p, Packet::PubAck(_)))
            .count(),
        40
    );
}

#[test]
fn a_member_that_disconnects_hands_its_unacknowledged_messages_to_the_others() {
    let mut t = setup();
    for i in 0..8u16 {
        let mut p = publish("t/x", QoS::AtLeastOnce, i + 1, &format!("m{i}"), false);
        t.s[0].on_bytes(t.publisher, &mut p);
    }
    let [a, b] = &mut t.s;
    shuttle(a, b);
    // Member 0 (shard 0) got its share and never acknowledges; member 2 (shard 1) likewise.
    let mut kept = BTreeSet::new();
    let mut lost = BTreeSet::new();
    for (n, &(sh, k)) in t.members.iter().enumerate() {
        let got = payloads(&output(&mut t.s[sh], k, V));
        assert_eq!(got.len(), 2, "member {n}");
        if n == 0 || n == 2 {
            lost.extend(got);
        } else {
            kept.extend(got);
        }
    }
    for &n in &[0usize, 2] {
        let (sh, k) = t.members[n];
        t.s[sh].on_io_closed(k);
    }
    let [a, b] = &mut t.s;
    shuttle(a, b);
    let mut again = BTreeSet::new();
    for &n in &[1usize, 3] {
        let (sh, k) = t.members[n];
        for p in payloads(&output(&mut t.s[sh], k, V)) {
            assert!(again.insert(p), "re-dispatched twice");
        }
    }
    assert_eq!(
        again, lost,
        "the gone members' messages go to the remaining ones, once each"
    );
    assert!(kept.is_disjoint(&again));
    assert_eq!(
        t.s[0].stats.shared_redispatched + t.s[1].stats.shared_redispatched,
        4
    );
}

#[test]
fn retained_messages_are_not_sent_on_a_shared_subscription_and_connack_announces_it() {
    let mut s = [shard_of(0, None), shard_of(1, None)];
    let p = connect(&mut s[0], 1, &id_on("pub", 0), true);
    s[0].on_bytes(p, &mut publish("r/1", QoS::AtMostOnce, 0, "kept", true));
    let v5 = ProtocolVersion::V5;
    let m = connect_v(&mut s[1], 2, &id_on("m", 1), true, v5);
    s[1].on_bytes(m, &mut subscribe("$share/g/r/+", QoS::AtMostOnce, v5));
    let plain = connect(&mut s[1], 3, &id_on("plain", 1), true);
    s[1].on_bytes(plain, &mut subscribe("r/+", QoS::AtMostOnce, V));
    let [a, b] = &mut s;
    shuttle(a, b);
    let got = output(&mut s[1], m, v5);
    match &got[..] {
        [Packet::ConnAck(c), Packet::SubAck(_)] => assert_eq!(
            c.properties.as_ref().unwrap().shared_subscription_available,
            Some(1)
        ),
        other => panic!("{other:?}"),
    }
    // The plain subscriber gets the retained message; the shared one does not.
    assert_eq!(payloads(&output(&mut s[1], plain, V)), ["kept"]);
}

#[test]
/// The decoder refuses it; this checks the connection closes rather than the subscription being taken.
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let mut s = shard_of(0, None);
    let v5 = ProtocolVersion::V5;
    let k = connect_v(&mut s, 1, &id_on("m", 0), true, v5);
    let mut sub = frame(
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: "$share/g/a".into(),
                options: SubscriptionOptions {
                    no_local: true,
                    ..Default::default()
                },
            }],
            properties: None,
        }),
        v5,
    );
    assert_eq!(s.on_bytes(k, &mut sub), ReadOutcome::Close);
}

#[test]
fn a_persistent_shared_subscription_survives_a_restart_in_its_share_form() {
    let dir = tempfile::tempdir().unwrap();
    let (d0, d1) = (dir.path().join("0"), dir.path().join("1"));
    let member = id_on("m", 1);
    {
        let mut s = [shard_of(0, Some(&d0)), shard_of(1, Some(&d1))];
        let m = connect(&mut s[1], 1, &member, false);
        s[1].on_bytes(m, &mut subscribe("$share/g/t/+", QoS::AtLeastOnce, V));
        let [a, b] = &mut s;
        shuttle(a, b);
        assert!(matches!(
            output(&mut s[1], m, V)[..],
            [Packet::ConnAck(_), Packet::SubAck(_)]
        ));
        s[1].on_io_closed(m);
        let [a, b] = &mut s;
        shuttle(a, b);
    }
    // Restart: each shard replays its log, then learns the other's groups (as the server does).
    let mut s = [shard_of(0, Some(&d0)), shard_of(1, Some(&d1))];
    let filters1 = s[1].shared_names();
    assert_eq!(filters1, ["$share/g/t/+"]);
    s[0].add_peer_interest(1, &filters1);
    let p = connect(&mut s[0], 2, &id_on("pub", 0), true);
    s[0].on_bytes(
        p,
        &mut publish("t/1", QoS::AtLeastOnce, 1, "while-offline", false),
    );
    let [a, b] = &mut s;
    shuttle(a, b);
    // Queued for the offline member on shard 1, delivered when it comes back.
    let m = connect(&mut s[1], 3, &member, false);
    let [a, b] = &mut s;
    shuttle(a, b);
    let got = output(&mut s[1], m, V);
    assert_eq!(payloads(&got), ["while-offline"], "{got:?}");
}

#[test]
fn a_shard_whose_members_are_full_forwards_to_another_member_shard() {
    let cfg = |id| ShardConfig {
        shard_id: id,
        shards: 2,
        max_queued_messages: 1,
        ..ShardConfig::default()
    };
    let mut s = [Shard::new(cfg(0)), Shard::new(cfg(1))];
    let x = connect(&mut s[0], 1, &id_on("x", 0), true);
    s[0].on_bytes(x, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    let y = connect(&mut s[1], 2, &id_on("y", 1), true);
    s[1].on_bytes(y, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    let p = connect(&mut s[0], 3, &id_on("p", 0), true);
    let [a, b] = &mut s;
    shuttle(a, b);
    output(&mut s[0], x, V);
    output(&mut s[1], y, V);
    // Round-robin: m1 to x (shard 0), m2 to y (shard 1).
    for (i, m) in ["m1", "m2"].iter().enumerate() {
        s[0].on_bytes(
            p,
            &mut publish("f", QoS::AtLeastOnce, i as u16 + 1, m, false),
        );
        let [a, b] = &mut s;
        shuttle(a, b);
    }
    assert_eq!(payloads(&output(&mut s[0], x, V)), ["m1"]);
    let got = output(&mut s[1], y, V);
    assert_eq!(payloads(&got), ["m2"]);
    // y acknowledges, x does not: x is at its bound of 1. m3 is x's turn, so shard 0 forwards it to shard 1.
    let Packet::Publish(m2) = &got[0] else {
        panic!("{got:?}")
    };
    let ack = Packet::PubAck(codec::PubResp {
        packet_id: m2.packet_id,
        reason: ReasonCode::Success,
        properties: None,
    });
    s[1].on_bytes(y, &mut frame(&ack, V));
    s[0].on_bytes(p, &mut publish("f", QoS::AtLeastOnce, 3, "m3", false));
    let [a, b] = &mut s;
    shuttle(a, b);
    assert!(payloads(&output(&mut s[0], x, V)).is_empty());
    assert_eq!(payloads(&output(&mut s[1], y, V)), ["m3"]);
}

/// Offline members are skipped while another member is online: a persistent member that went away gets nothing
/// queued, wherever the publisher is.
#[test]
fn offline_members_are_skipped() {
    let mut s = [shard_of(0, None), shard_of(1, None)];
    let away = connect(&mut s[0], 1, &id_on("away", 0), false);
    s[0].on_bytes(away, &mut subscribe("$share/g/o", QoS::AtLeastOnce, V));
    let here = connect(&mut s[1], 2, &id_on("here", 1), true);
    s[1].on_bytes(here, &mut subscribe("$share/g/o", QoS::AtLeastOnce, V));
    let p = connect(&mut s[0], 3, &id_on("p", 0), true);
    let [a, b] = &mut s;
    shuttle(a, b);
    s[0].on_io_closed(away);
    s[0].release(away);
    let [a, b] = &mut s;
    shuttle(a, b);
    output(&mut s[1], here, V);
    for i in 0..6u16 {
        s[0].on_bytes(
            p,
            &mut publish("o", QoS::AtLeastOnce, i + 1, &i.to_string(), false),
        );
    }
    let [a, b] = &mut s;
    shuttle(a, b);
    assert_eq!(payloads(&output(&mut s[1], here, V)).len(), 6);
    let sidx = *s[0]
        .by_client
        .get(&s[0].sessions, &id_on("away", 0))
        .unwrap();
    assert_eq!(s[0].session(sidx).backlog(), 0);
}

/// [MQTT-4.8.2-4/5]: a QoS 2 PUBLISH sent to a member that leaves before its PUBREC is that member's: finished
/// with it when it reconnects, never sent to another member (it may already hold it), while its QoS 1 would move.
#[test]
fn a_leaving_members_sent_qos2_stays_with_it_and_is_resent_on_reconnect() {
    let mut s = [shard_of(0, None), shard_of(1, None)];
    let (leaver_id, stayer_id) = (id_on("q2-leaver", 0), id_on("q2-stayer", 0));
    let leaver = connect(&mut s[0], 1, &leaver_id, false);
    let stayer = connect(&mut s[0], 2, &stayer_id, false);
    for k in [leaver, stayer] {
        s[0].on_bytes(k, &mut subscribe("$share/g/t/+", QoS::ExactlyOnce, V));
    }
    let publisher = connect(&mut s[0], 3, &id_on("q2-pub", 0), true);
    let [a, b] = &mut s;
    shuttle(a, b);
    for k in [leaver, stayer, publisher] {
        output(&mut s[0], k, V);
    }
    for i in 0..4u16 {
        let mut p = publish("t/x", QoS::ExactlyOnce, i + 1, &format!("m{i}"), false);
        s[0].on_bytes(publisher, &mut p);
    }
    let [a, b] = &mut s;
    shuttle(a, b);
    let held = payloads(&output(&mut s[0], leaver, V));
    assert_eq!(held.len(), 2, "round-robin: half each");
    assert_eq!(payloads(&output(&mut s[0], stayer, V)).len(), 2);
    // Gone before any PUBREC.
    s[0].on_io_closed(leaver);
    let [a, b] = &mut s;
    shuttle(a, b);
    assert!(
        payloads(&output(&mut s[0], stayer, V)).is_empty(),
        "a sent QoS 2 message must not go to another member"
    );
    // Back: the same messages again, with DUP, for it to finish.
    let back = connect(&mut s[0], 4, &leaver_id, false);
    let [a, b] = &mut s;
    shuttle(a, b);
    let again: Vec<Packet> = output(&mut s[0], back, V);
    let resent: Vec<String> = again
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) if p.dup && p.qos == QoS::ExactlyOnce => {
                Some(String::from_utf8(p.payload.to_vec()).unwrap())
            }
            _ => None,
        })
        .collect();
    assert_eq!(resent, held, "{again:?}");
}
