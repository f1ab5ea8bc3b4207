//! Shared subscriptions with the log on: the publisher's acknowledgement covers a copy forwarded to another
//! member shard, re-dispatch across shards acknowledges the old entry only once the new one is confirmed, and
//! messages restored after a restart are still the group's.
use super::shared::{connect, id_on, output, payloads, publish, shard_of, shuttle, subscribe, V};
use super::*;
use crate::codec::Packet;

fn pubacks(got: &[Packet]) -> usize {
    got.iter()
        .filter(|p| matches!(p, Packet::PubAck(_)))
        .count()
}

/// Queue length of `client`'s session in `shard`'s log.
pub(super) fn logged_queue(shard: &Shard, client: &str) -> usize {
    let state = shard.store.as_ref().unwrap().snapshot();
    state
        .sessions
        .iter()
        .find(|s| s.client_id == client)
        .map_or(0, |s| s.queue.len())
}

/// One round of `shard` on its own: commit and sync its log, keep what it sends to the other shard.
pub(super) fn own_round(shard: &mut Shard) -> Vec<(u16, MeshMsg)> {
    shard.end_round();
    shard.sync_log();
    let mut msgs = Vec::new();
    shard.take_mesh(&mut msgs);
    msgs
}

fn on_log(dir: &std::path::Path, id: u16, max_queued: usize) -> Shard {
    let mut s = shard_of(id, Some(&dir.join(id.to_string())));
    s.cfg.max_queued_messages = max_queued;
    s
}

/// m2 is shard 1's turn: the publisher's PUBACK waits until shard 1 has the copy in its log, not only until
/// shard 0's own log is durable. m3 is x's turn while x (on the publisher's shard) is full: it is not forwarded
/// to y (a copy the PUBACK covers stays where the weighted pick put it), it waits for x.
/// Persistent member `a` on shard 1 (the group's only member) is sent "m1" from publisher `p` on its shard and
/// holds it unacknowledged. Returns (a's client id, a, p).
pub(super) fn a_holds_m1(s: &mut [Shard; 2]) -> (String, ConnKey, ConnKey) {
    let a_id = id_on("a", 1);
    let a = connect(&mut s[1], 1, &a_id, false);
    s[1].on_bytes(a, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    let p = connect(&mut s[1], 2, &id_on("p", 1), true);
    let [x, y] = s;
    shuttle(x, y);
    s[1].on_bytes(p, &mut publish("f", QoS::AtLeastOnce, 1, "m1", false));
    let [x, y] = s;
    shuttle(x, y);
    assert_eq!(payloads(&output(&mut s[1], a, V)), ["m1"]);
    (a_id, a, p)
}

#[test]
fn a_copy_on_another_member_shard_is_covered_by_the_publishers_puback() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = [on_log(dir.path(), 0, 1), on_log(dir.path(), 1, 1)];
    let x = connect(&mut s[0], 1, &id_on("x", 0), true);
    s[0].on_bytes(x, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    let y_id = id_on("y", 1);
    let y = connect(&mut s[1], 2, &y_id, false);
    s[1].on_bytes(y, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    let p = connect(&mut s[0], 3, &id_on("p", 0), true);
    let [a, b] = &mut s;
    shuttle(a, b);
    output(&mut s[0], x, V);
    output(&mut s[1], y, V);
    output(&mut s[0], p, V);
    s[0].on_bytes(p, &mut publish("f", QoS::AtLeastOnce, 1, "m1", false));
    let [a, b] = &mut s;
    shuttle(a, b);
    assert_eq!(payloads(&output(&mut s[0], x, V)), ["m1"]);
    assert_eq!(pubacks(&output(&mut s[0], p, V)), 1);

    s[0].on_bytes(p, &mut publish("f", QoS::AtLeastOnce, 2, "m2", false));
    let to_peer = own_round(&mut s[0]);
    assert!(
        to_peer
            .iter()
            .any(|(_, m)| matches!(m, MeshMsg::SharedPublish { seq, .. } if *seq != 0)),
        "the copy is numbered for confirmation"
    );
    assert_eq!(
        pubacks(&output(&mut s[0], p, V)),
        0,
        "no PUBACK before shard 1 confirms"
    );
    for (_, m) in to_peer {
        s[1].on_mesh(0, m);
    }
    let [a, b] = &mut s;
    shuttle(a, b);
    assert_eq!(pubacks(&output(&mut s[0], p, V)), 1);
    assert_eq!(payloads(&output(&mut s[1], y, V)), ["m2"]);
    assert_eq!(logged_queue(&s[1], &y_id), 1);

    // x has m1 unacknowledged, at its bound of 1; m3 is its turn.
    s[0].on_bytes(p, &mut publish("f", QoS::AtLeastOnce, 3, "m3", false));
    let [a, b] = &mut s;
    shuttle(a, b);
    assert!(
        payloads(&output(&mut s[1], y, V)).is_empty(),
        "not forwarded"
    );
    let xs = s[0].session(s[0].conns.get(x).unwrap().session).backlog();
    assert_eq!(xs, 2, "queued for x");
}

/// y on shard 1 is full. A copy from shard 0 that the publisher waits for (numbered) stays with y, queued under
/// the overflow policy, rather than going on to x on shard 0 (a hop shard 1 could not vouch for); one nobody
/// waits for (sequence 0) is still forwarded to a member that can take it.
#[test]
fn a_copy_the_publisher_waits_for_is_not_forwarded_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = [on_log(dir.path(), 0, 1), on_log(dir.path(), 1, 1)];
    let x = connect(&mut s[0], 1, &id_on("x", 0), true);
    s[0].on_bytes(x, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    let y = connect(&mut s[1], 2, &id_on("y", 1), true);
    s[1].on_bytes(y, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    let [a, b] = &mut s;
    shuttle(a, b);
    output(&mut s[0], x, V);
    output(&mut s[1], y, V);
    let copy = |payload: &'static str, seq: u64| MeshMsg::SharedPublish {
        msg: Box::new(Message {
            topic: "f".into(),
            payload: bytes::Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            origin: Some(crate::broker::message::Origin {
                shard: 0,
                conn: ConnKey { idx: 99, gen: 0 },
                packet_id: 1,
            }),
            received_at: 0,
        }),
        share: "$share/g/f".into(),
        hops: 1,
        seq,
    };
    // y takes the first and is then at its bound of 1 (unacknowledged).
    s[1].on_mesh(0, copy("c1", 0));
    assert_eq!(payloads(&output(&mut s[1], y, V)), ["c1"]);
    let mut sent = Vec::new();
    s[1].on_mesh(0, copy("waited", 1));
    s[1].take_mesh(&mut sent);
    assert!(
        !sent
            .iter()
            .any(|(_, m)| matches!(m, MeshMsg::SharedPublish { .. })),
        "a copy the publisher waits for is not forwarded"
    );
    let ys = s[1].session(s[1].conns.get(y).unwrap().session).backlog();
    assert_eq!(ys, 2, "queued for y");
    s[1].on_mesh(0, copy("free", 0));
    sent.clear();
    s[1].take_mesh(&mut sent);
    assert!(
        sent.iter()
            .any(|(_, m)| matches!(m, MeshMsg::SharedPublish { hops: 2, .. })),
        "one nobody waits for goes on to a member shard that can take it"
    );
}

/// A member that disconnects with a message in flight hands it to the member on the other shard; its own log
/// entry is acknowledged only once that shard confirmed the copy.
#[test]
fn redispatch_to_another_shard_acknowledges_the_old_entry_after_the_new_one_is_safe() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = [on_log(dir.path(), 0, 1000), on_log(dir.path(), 1, 1000)];
    let (a_id, a, _p) = a_holds_m1(&mut s);
    assert_eq!(logged_queue(&s[1], &a_id), 1);
    // Now b joins on shard 0; then a goes away unacknowledged.
    let b_id = id_on("b", 0);
    let b = connect(&mut s[0], 3, &b_id, false);
    s[0].on_bytes(b, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    let [x, y] = &mut s;
    shuttle(x, y);
    output(&mut s[0], b, V);
    s[1].on_io_closed(a);
    s[1].release(a);
    let to_peer = own_round(&mut s[1]);
    assert_eq!(
        logged_queue(&s[1], &a_id),
        1,
        "kept until shard 0 confirms the copy"
    );
    for (_, m) in to_peer {
        s[0].on_mesh(1, m);
    }
    let [x, y] = &mut s;
    shuttle(x, y);
    assert_eq!(payloads(&output(&mut s[0], b, V)), ["m1"]);
    assert_eq!(logged_queue(&s[0], &b_id), 1);
    assert_eq!(
        logged_queue(&s[1], &a_id),
        0,
        "acknowledged once it was safe"
    );
}

/// After a restart, a member restored offline with queued group messages gives them to the member that is
/// online on the other shard (they are still the group's), and they leave its log.
#[test]
fn messages_restored_after_a_restart_are_still_the_groups() {
    let dir = tempfile::tempdir().unwrap();
    let a_id = id_on("a", 1);
    {
        let mut s = [on_log(dir.path(), 0, 1000), on_log(dir.path(), 1, 1000)];
        let a = connect(&mut s[1], 1, &a_id, false);
        s[1].on_bytes(a, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
        let [x, y] = &mut s;
        shuttle(x, y);
        s[1].on_io_closed(a);
        s[1].release(a);
        let p = connect(&mut s[0], 2, &id_on("p", 0), true);
        s[0].on_bytes(p, &mut publish("f", QoS::AtLeastOnce, 1, "queued", false));
        let [x, y] = &mut s;
        shuttle(x, y);
        assert_eq!(logged_queue(&s[1], &a_id), 1);
    }
    let mut s = [on_log(dir.path(), 0, 1000), on_log(dir.path(), 1, 1000)];
    let names = s[1].shared_names();
    s[0].add_peer_interest(1, &names);
    let b = connect(&mut s[0], 3, &id_on("b", 0), true);
    s[0].on_bytes(b, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    let [x, y] = &mut s;
    shuttle(x, y);
    s[1].tick(1);
    let [x, y] = &mut s;
    shuttle(x, y);
    let got = payloads(&output(&mut s[0], b, V));
    assert_eq!(got, ["queued"]);
    assert_eq!(logged_queue(&s[1], &a_id), 0);
    assert_eq!(s[1].stats.shared_redispatched, 1);
}

/// The retry of a restored member's backlog reads at most `REDISPATCH_PER_TICK` bodies from the log per call
/// (on a tick, or when a peer announces members); the rest waits in place for the next one, none lost.
#[test]
fn a_restored_backlog_is_redispatched_a_bounded_number_per_tick() {
    use super::super::shared::REDISPATCH_PER_TICK;
    let n = REDISPATCH_PER_TICK + 100;
    let dir = tempfile::tempdir().unwrap();
    let a_id = id_on("a", 1);
    {
        let mut s = [
            on_log(dir.path(), 0, 100_000),
            on_log(dir.path(), 1, 100_000),
        ];
        let a = connect(&mut s[1], 1, &a_id, false);
        s[1].on_bytes(a, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
        let [x, y] = &mut s;
        shuttle(x, y);
        s[1].on_io_closed(a);
        s[1].release(a);
        let p = connect(&mut s[0], 2, &id_on("p", 0), true);
        for i in 0..n {
            let id = (i % 60_000 + 1) as u16;
            s[0].on_bytes(
                p,
                &mut publish("f", QoS::AtLeastOnce, id, &format!("m{i}"), false),
            );
            if i % 500 == 499 {
                let [x, y] = &mut s;
                shuttle(x, y);
                output(&mut s[0], p, V);
            }
        }
        let [x, y] = &mut s;
        shuttle(x, y);
        assert_eq!(logged_queue(&s[1], &a_id), n);
    }
    let mut s = [
        on_log(dir.path(), 0, 100_000),
        on_log(dir.path(), 1, 100_000),
    ];
    let names = s[1].shared_names();
    s[0].add_peer_interest(1, &names);
    let b = connect(&mut s[0], 3, &id_on("b", 0), true);
    s[0].on_bytes(b, &mut subscribe("$share/g/f", QoS::AtLeastOnce, V));
    // b's arrival, announced to shard 1, starts the retry: one call's worth.
    let [x, y] = &mut s;
    shuttle(x, y);
    assert_eq!(s[1].stats.shared_redispatched, REDISPATCH_PER_TICK as u64);
    // The next tick takes the rest.
    s[1].tick(1);
    assert_eq!(s[1].stats.shared_redispatched, n as u64);
    let [x, y] = &mut s;
    shuttle(x, y);
    assert_eq!(logged_queue(&s[1], &a_id), 0);
}
