//! Shared-subscription copies another shard cannot take, with the log on: a refused copy is never confirmed as
//! taken. A departing member's message comes back and stays in its log (and survives a restart); a publisher's
//! copy refused on the peer is not acknowledged as a success.
use super::shared::{
    connect, connect_v, frame, id_on, output, payloads, publish, shard_of, shuttle, subscribe, V,
};
use super::shared_log::{a_holds_m1, logged_queue, own_round};
use super::*;
use crate::codec::{Packet, PubResp, Publish};

fn on_log(dir: &std::path::Path, id: u16) -> Shard {
    shard_of(id, Some(&dir.join(id.to_string())))
}

fn deliver(to: &mut Shard, from: u16, msgs: Vec<(u16, MeshMsg)>) {
    for (_, m) in msgs {
        to.on_mesh(from, m);
    }
}

fn gone(shard: &mut Shard, key: ConnKey) {
    shard.on_io_closed(key);
    shard.release(key);
}

fn puback(packet_id: u16) -> BytesMut {
    frame(
        &Packet::PubAck(PubResp {
            packet_id,
            reason: ReasonCode::Success,
            properties: None,
        }),
        V,
    )
}

/// Persistent member `a` on shard 1 (the only member) holds "m1" unacknowledged; then clean member `b` joins on
/// shard 0. Returns (shards, a's client id, b's connection).
fn a_holds_m1_then_b_joins(dir: &std::path::Path) -> ([Shard; 2], String, ConnKey, ConnKey) {
    let mut s = [on_log(dir, 0), on_log(dir, 1)];
    let (a_id, a, _p) = a_holds_m1(&mut s);
    assert_eq!(logged_queue(&s[1], &a_id), 1);
    let b = connect(&mut s[0], 3, &id_on("b", 0), true);
    s[0].on_bytes(b, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    s[0].on_bytes(b, &mut subscribe("busy", QoS::AtLeastOnce, V));
    let [x, y] = &mut s;
    shuttle(x, y);
    output(&mut s[0], b, V);
    (s, a_id, a, b)
}

/// The member on the other shard has a full queue when a's message reaches it: the copy comes back, a's log
/// entry stays (also after a restart), and once a member can take it, it gets it.
#[test]
fn a_redispatched_message_a_full_peer_member_cannot_take_stays_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut s, a_id, a, b) = a_holds_m1_then_b_joins(dir.path());
        // b's queue is at its hard bound: one unacknowledged message, no in-transit allowance.
        s[0].cfg.max_queued_messages = 1;
        s[0].cfg.max_in_transit = 0;
        let q = connect(&mut s[0], 4, &id_on("q", 0), true);
        s[0].on_bytes(q, &mut publish("busy", QoS::AtLeastOnce, 1, "busy", false));
        let [x, y] = &mut s;
        shuttle(x, y);
        assert_eq!(payloads(&output(&mut s[0], b, V)), ["busy"]);

        gone(&mut s[1], a);
        let to_peer = own_round(&mut s[1]);
        assert!(to_peer
            .iter()
            .any(|(_, m)| matches!(m, MeshMsg::SharedPublish { seq, .. } if *seq != 0)));
        deliver(&mut s[0], 1, to_peer);
        let [x, y] = &mut s;
        shuttle(x, y);
        assert!(payloads(&output(&mut s[0], b, V)).is_empty());
        assert_eq!(
            logged_queue(&s[1], &a_id),
            1,
            "the refused copy's entry is not acknowledged"
        );
        assert_eq!(s[1].stats.shared_kept, 1);
        let a_sidx = *s[1].by_client.get(&s[1].sessions, &a_id).unwrap();
        assert_eq!(s[1].session(a_sidx).backlog(), 1, "back with a");
        assert_eq!(
            s[0].stats.dropped_qos12 + s[0].stats.dropped_shared,
            0,
            "not counted as dropped on the peer"
        );

        // b acknowledges and has room: the next tick gives it a's message.
        s[0].on_bytes(b, &mut puback(1));
        s[1].tick(1);
        let [x, y] = &mut s;
        shuttle(x, y);
        assert_eq!(payloads(&output(&mut s[0], b, V)), ["m1"]);
        assert_eq!(logged_queue(&s[1], &a_id), 0, "acknowledged once b has it");
    }
}

/// Same refusal, then a restart before anyone takes it: a's log still holds the message, and after the
/// restart it goes to the member that is online.
#[test]
fn a_refused_redispatch_survives_a_restart_and_reaches_a_member_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let a_id;
    {
        let (mut s, id, a, _b) = a_holds_m1_then_b_joins(dir.path());
        a_id = id;
        s[0].cfg.max_queued_messages = 1;
        s[0].cfg.max_in_transit = 0;
        let q = connect(&mut s[0], 4, &id_on("q", 0), true);
        s[0].on_bytes(q, &mut publish("busy", QoS::AtLeastOnce, 1, "busy", false));
        let [x, y] = &mut s;
        shuttle(x, y);
        gone(&mut s[1], a);
        let [x, y] = &mut s;
        shuttle(x, y);
        assert_eq!(logged_queue(&s[1], &a_id), 1);
    }
    let mut s = [on_log(dir.path(), 0), on_log(dir.path(), 1)];
    assert_eq!(
        logged_queue(&s[1], &a_id),
        1,
        "in the log after the restart"
    );
    let names = s[1].shared_names();
    s[0].add_peer_interest(1, &names);
    let c = connect(&mut s[0], 5, &id_on("c", 0), true);
    s[0].on_bytes(c, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    let [x, y] = &mut s;
    shuttle(x, y);
    s[1].tick(1);
    let [x, y] = &mut s;
    shuttle(x, y);
    assert_eq!(payloads(&output(&mut s[0], c, V)), ["m1"]);
    assert_eq!(logged_queue(&s[1], &a_id), 0);
}

/// The member on the other shard leaves while a's message is on its way: it comes back to a, whose log keeps
/// it across a restart, and a gets it when it returns.
#[test]
fn a_redispatched_message_whose_peer_member_left_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let a_id;
    {
        let (mut s, id, a, b) = a_holds_m1_then_b_joins(dir.path());
        a_id = id;
        gone(&mut s[1], a);
        let to_peer = own_round(&mut s[1]);
        // b (clean) leaves the group before shard 0 sees the copy.
        gone(&mut s[0], b);
        deliver(&mut s[0], 1, to_peer);
        let [x, y] = &mut s;
        shuttle(x, y);
        assert_eq!(
            logged_queue(&s[1], &a_id),
            1,
            "the refused copy's entry is not acknowledged"
        );
        assert_eq!(s[1].stats.shared_kept, 1);
        assert_eq!(s[0].stats.dropped_shared, 0);
    }
    let mut s = [on_log(dir.path(), 0), on_log(dir.path(), 1)];
    assert_eq!(
        logged_queue(&s[1], &a_id),
        1,
        "in the log after the restart"
    );
    let a = connect(&mut s[1], 6, &a_id, false);
    let [x, y] = &mut s;
    shuttle(x, y);
    assert_eq!(payloads(&output(&mut s[1], a, V)), ["m1"]);
}

/// The only other member is on a's own shard and its queue is full: the message stays with a (it was dropped
/// by the full queue, with a's entry acknowledged).
#[test]
fn a_redispatched_message_a_full_local_member_cannot_take_stays_with_the_member_that_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = [on_log(dir.path(), 0), on_log(dir.path(), 1)];
    s[1].cfg.max_queued_messages = 1;
    s[1].cfg.max_in_transit = 0;
    let (a_id, a, p) = a_holds_m1(&mut s);
    let c = connect(&mut s[1], 3, &id_on("c", 1), true);
    s[1].on_bytes(c, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    s[1].on_bytes(c, &mut subscribe("busy", QoS::AtLeastOnce, V));
    s[1].on_bytes(p, &mut publish("busy", QoS::AtLeastOnce, 2, "busy", false));
    let [x, y] = &mut s;
    shuttle(x, y);
    assert_eq!(payloads(&output(&mut s[1], c, V)), ["busy"]);
    gone(&mut s[1], a);
    let [x, y] = &mut s;
    shuttle(x, y);
    assert!(payloads(&output(&mut s[1], c, V)).is_empty());
    assert_eq!(logged_queue(&s[1], &a_id), 1);
    assert_eq!(s[1].stats.shared_kept, 1);
    assert_eq!(s[1].stats.dropped_qos12, 0);
}

fn publish_v5(topic: &str, id: u16, payload: &str) -> BytesMut {
    frame(
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: id,
            properties: None,
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        }),
        ProtocolVersion::V5,
    )
}

fn puback_reasons(got: &[Packet]) -> Vec<ReasonCode> {
    got.iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .collect()
}

/// A publisher's copy goes to shard 1, whose only member leaves before the copy arrives: the v5 publisher gets
/// 0x97 Quota exceeded, not a success for a message nobody has; its retry goes to the offline member on shard 0
/// and is in that member's log after a restart.
#[test]
fn a_publishers_copy_whose_peer_member_left_is_refused_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let x_id = id_on("x", 0);
    {
        let mut s = [on_log(dir.path(), 0), on_log(dir.path(), 1)];
        let x = connect(&mut s[0], 1, &x_id, false);
        s[0].on_bytes(x, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
        gone(&mut s[0], x);
        let b = connect(&mut s[1], 2, &id_on("b", 1), true);
        s[1].on_bytes(b, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
        let v5 = ProtocolVersion::V5;
        let p = connect_v(&mut s[0], 3, &id_on("p", 0), true, v5);
        let [a, c] = &mut s;
        shuttle(a, c);
        output(&mut s[0], p, v5);
        // Weighted by online members: all of it goes to shard 1.
        s[0].on_bytes(p, &mut publish_v5("f", 1, "m1"));
        let to_peer = own_round(&mut s[0]);
        gone(&mut s[1], b);
        deliver(&mut s[1], 0, to_peer);
        let [a, c] = &mut s;
        shuttle(a, c);
        assert_eq!(
            puback_reasons(&output(&mut s[0], p, v5)),
            [ReasonCode::QuotaExceeded]
        );
        assert_eq!(logged_queue(&s[0], &x_id), 0);
        // The retry: shard 1 has no member now, x (offline) on shard 0 queues it.
        s[0].on_bytes(p, &mut publish_v5("f", 2, "m1"));
        let [a, c] = &mut s;
        shuttle(a, c);
        assert_eq!(
            puback_reasons(&output(&mut s[0], p, v5)),
            [ReasonCode::Success]
        );
    }
    let s = [on_log(dir.path(), 0), on_log(dir.path(), 1)];
    assert_eq!(logged_queue(&s[0], &x_id), 1);
}

/// A shard that once refused a copy for a full queue (`refused_queue_full` > 0) still confirms a later
/// publisher's copy its member takes: only a refusal of this copy refuses the publish.
#[test]
fn an_earlier_queue_full_refusal_does_not_refuse_later_shared_copies() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = [on_log(dir.path(), 0), on_log(dir.path(), 1)];
    let y = connect(&mut s[1], 1, &id_on("y", 1), true);
    s[1].on_bytes(y, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    let [a, c] = &mut s;
    shuttle(a, c);
    output(&mut s[1], y, V);
    s[1].stats.refused_queue_full = 3;
    let copy = MeshMsg::SharedPublish {
        msg: Box::new(Message {
            topic: "f".into(),
            payload: bytes::Bytes::from_static(b"c1"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            origin: Some(crate::broker::message::Origin {
                shard: 0,
                conn: ConnKey { idx: 9, gen: 0 },
                packet_id: 1,
            }),
            received_at: 0,
        }),
        share: "$share/g/f".into(),
        hops: 1,
        seq: 1,
    };
    s[1].on_mesh(0, copy);
    let mut sent = Vec::new();
    s[1].take_mesh(&mut sent);
    assert!(
        !sent
            .iter()
            .any(|(_, m)| matches!(m, MeshMsg::LogRefused { .. })),
        "{:?}",
        sent.len()
    );
    assert_eq!(payloads(&output(&mut s[1], y, V)), ["c1"]);
}

/// A publisher's copy reaching a member whose queue is truly full follows `persistent_queue_full` as a plain copy
/// does: refused (the default), so the v5 publisher reads 0x97 and nothing is acknowledged that was not queued.
#[test]
fn a_publishers_copy_a_full_peer_member_refuses_gets_0x97() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = [on_log(dir.path(), 0), on_log(dir.path(), 1)];
    s[1].cfg.max_offline_messages_per_session = 1;
    let y_id = id_on("y", 1);
    let y = connect(&mut s[1], 1, &y_id, false);
    s[1].on_bytes(y, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    gone(&mut s[1], y);
    let v5 = ProtocolVersion::V5;
    let p = connect_v(&mut s[0], 2, &id_on("p", 0), true, v5);
    let [a, c] = &mut s;
    shuttle(a, c);
    output(&mut s[0], p, v5);
    for (id, m) in [(1, "m1"), (2, "m2")] {
        s[0].on_bytes(p, &mut publish_v5("f", id, m));
        let [a, c] = &mut s;
        shuttle(a, c);
    }
    assert_eq!(
        puback_reasons(&output(&mut s[0], p, v5)),
        [ReasonCode::Success, ReasonCode::QuotaExceeded]
    );
    assert_eq!(logged_queue(&s[1], &y_id), 1);
    assert_eq!(s[1].stats.refused_queue_full, 1);
}
