//! Receive Maximum both ways: inbound QoS 1 and QoS 2 not yet acknowledged (PUBACKs held for the log count)
//! beyond what we announced → DISCONNECT 0x93; outbound never more in flight than the client's Receive Maximum,
//! also when a reconnect replays more than a smaller new maximum allows.
use super::*;
use crate::codec::{SubscribeFilter, SubscriptionOptions};
use crate::store::{FsyncPolicy, StoreConfig};

const V5: ProtocolVersion = ProtocolVersion::V5;

use super::frame_v as frame;

fn connect_v(
    shard: &mut Shard,
    io: u64,
    id: &str,
    protocol: ProtocolVersion,
    clean: bool,
    props: Option<Properties>,
) -> ConnKey {
    let key = shard.accept(io);
    let c = Connect {
        protocol,
        clean_start: clean,
        keep_alive: 0,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: props.map(Box::new),
        bridge: false,
    };
    let out = shard.on_bytes(key, &mut frame(&Packet::Connect(Box::new(c)), protocol));
    assert_eq!(out, ReadOutcome::Continue);
    key
}

fn v5_props(expiry: u32, receive_maximum: Option<u16>) -> Option<Properties> {
    Some(Properties {
        session_expiry_interval: Some(expiry),
        receive_maximum,
        ..Default::default()
    })
}

/// What the I/O layer may write now (bytes held for the log stay), decoded.
fn writable(shard: &mut Shard, key: ConnKey, v: ProtocolVersion) -> Vec<Packet> {
    let Some((out, n)) = shard.out_writable(key) else {
        return Vec::new();
    };
    let mut bytes = BytesMut::from(&out[..n]);
    shard.consumed(key, n);
    let mut d = codec::Decoder::new_client(v, 1 << 20);
    std::iter::from_fn(|| d.decode(&mut bytes).unwrap()).collect()
}

fn publish(qos: QoS, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: "t".into(),
        packet_id: id,
        properties: None,
        payload: bytes::Bytes::from_static(b"m"),
    })
}

fn subscribe(shard: &mut Shard, key: ConnKey, qos: QoS) {
    let s = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "t".into(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        properties: None,
    };
    shard.on_bytes(key, &mut frame(&Packet::Subscribe(s), V5));
}

/// A shard on a log that syncs only when the test says, announcing Receive Maximum 3, with an offline
/// persistent QoS 1 subscriber on `t`: each QoS 1 publish writes a record, so its PUBACK waits for the sync.
fn shard_with_held_acks(dir: &std::path::Path) -> Shard {
    let cfg = StoreConfig {
        fsync: FsyncPolicy::Interval(std::time::Duration::from_secs(10)),
        sync_bytes: usize::MAX,
        segment_size: 1 << 20,
        ..StoreConfig::default()
    };
    let (store, rec) = Store::open(dir, 0, cfg).unwrap();
    let mut shard = Shard::new(ShardConfig {
        max_inbound_qos2: 3,
        ..ShardConfig::default()
    });
    shard.attach_store(store, 1_000_000);
    shard.restore(rec.state);
    let sub = connect_v(&mut shard, 1, "sub", V5, true, v5_props(3600, None));
    subscribe(&mut shard, sub, QoS::AtLeastOnce);
    shard.end_round();
    shard.sync_log();
    shard.on_io_closed(sub);
    shard.release(sub);
    shard
}

fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    })
}

fn count_pubacks(packets: &[Packet]) -> usize {
    packets
        .iter()
        .filter(|p| matches!(p, Packet::PubAck(_)))
        .count()
}

#[test]
fn qos1_publishes_whose_pubacks_wait_for_the_log_count_against_the_receive_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = shard_with_held_acks(dir.path());
    let p = connect_v(&mut shard, 2, "pub", V5, true, v5_props(0, None));
    writable(&mut shard, p, V5);
    for id in 1..=3 {
        assert_eq!(
            shard.on_bytes(p, &mut frame(&publish(QoS::AtLeastOnce, id), V5)),
            ReadOutcome::Continue,
            "publish {id} is within the maximum"
        );
    }
    assert_eq!(
        count_pubacks(&writable(&mut shard, p, V5)),
        0,
        "held until durable"
    );
    assert_eq!(
        shard.on_bytes(p, &mut frame(&publish(QoS::AtLeastOnce, 4), V5)),
        ReadOutcome::Close
    );
    let out = writable(&mut shard, p, V5);
    assert_eq!(
        disconnect_reason(&out),
        Some(ReasonCode::ReceiveMaximumExceeded),
        "the DISCONNECT is not stuck behind the held PUBACKs: {out:?}"
    );
    assert_eq!(
        count_pubacks(&out),
        0,
        "acknowledgements that were never durable are not sent"
    );
}

#[test]
fn acknowledgements_released_by_the_log_make_room_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = shard_with_held_acks(dir.path());
    let p = connect_v(&mut shard, 2, "pub", V5, true, v5_props(0, None));
    writable(&mut shard, p, V5);
    for round in 0..3u16 {
        for i in 1..=3 {
            let id = round * 3 + i;
            assert_eq!(
                shard.on_bytes(p, &mut frame(&publish(QoS::AtLeastOnce, id), V5)),
                ReadOutcome::Continue,
                "publish {id}"
            );
        }
        shard.end_round();
        shard.sync_log();
        assert_eq!(count_pubacks(&writable(&mut shard, p, V5)), 3);
    }
}

#[test]
fn qos1_and_qos2_together_count_against_the_receive_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = shard_with_held_acks(dir.path());
    let p = connect_v(&mut shard, 2, "pub", V5, true, v5_props(0, None));
    for id in 1..=2 {
        let out = shard.on_bytes(p, &mut frame(&publish(QoS::ExactlyOnce, id), V5));
        assert_eq!(out, ReadOutcome::Continue);
    }
    shard.end_round();
    shard.sync_log();
    writable(&mut shard, p, V5);
    // Two QoS 2 await PUBREL: one QoS 1 with its PUBACK held is the third, a second one is too many.
    let out = shard.on_bytes(p, &mut frame(&publish(QoS::AtLeastOnce, 3), V5));
    assert_eq!(out, ReadOutcome::Continue);
    let out = shard.on_bytes(p, &mut frame(&publish(QoS::AtLeastOnce, 4), V5));
    assert_eq!(out, ReadOutcome::Close);
    assert_eq!(
        disconnect_reason(&writable(&mut shard, p, V5)),
        Some(ReasonCode::ReceiveMaximumExceeded)
    );
}

/// 3.1.1 has no Receive Maximum: a client there was told no limit, so held PUBACKs do not close it.
#[test]
fn a_311_publisher_is_not_held_to_a_receive_maximum_for_qos1() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = shard_with_held_acks(dir.path());
    let v3 = ProtocolVersion::V3_1_1;
    let p = connect_v(&mut shard, 2, "pub3", v3, true, None);
    for id in 1..=10 {
        let out = shard.on_bytes(p, &mut frame(&publish(QoS::AtLeastOnce, id), v3));
        assert_eq!(out, ReadOutcome::Continue, "publish {id}");
    }
    shard.end_round();
    shard.sync_log();
    assert_eq!(count_pubacks(&writable(&mut shard, p, v3)), 10);
}

fn sent_publishes(packets: &[Packet]) -> Vec<(u16, bool)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.packet_id, p.dup)),
            _ => None,
        })
        .collect()
}

fn puback(id: u16) -> Packet {
    Packet::PubAck(PubResp {
        packet_id: id,
        reason: ReasonCode::Success,
        properties: None,
    })
}

/// Five QoS 1 messages in flight; the client comes back announcing Receive Maximum 2: two are resent at once
/// (DUP, same packet ids), the others one per acknowledgement, and a new message only after all of them.
#[test]
fn a_reconnect_with_a_smaller_receive_maximum_replays_within_it() {
    let mut shard = Shard::new(ShardConfig::default());
    let sub = connect_v(&mut shard, 1, "sub", V5, true, v5_props(3600, Some(10)));
    subscribe(&mut shard, sub, QoS::AtLeastOnce);
    writable(&mut shard, sub, V5);
    let p = connect_v(&mut shard, 2, "pub", V5, true, v5_props(0, None));
    for id in 1..=5 {
        shard.on_bytes(p, &mut frame(&publish(QoS::AtLeastOnce, id), V5));
    }
    let first = sent_publishes(&writable(&mut shard, sub, V5));
    assert_eq!(first.len(), 5, "window 10: all five go");
    shard.on_io_closed(sub);
    shard.release(sub);

    let sub = connect_v(&mut shard, 3, "sub", V5, false, v5_props(3600, Some(2)));
    let replay = sent_publishes(&writable(&mut shard, sub, V5));
    let ids: Vec<u16> = first.iter().map(|&(id, _)| id).collect();
    assert_eq!(replay, vec![(ids[0], true), (ids[1], true)]);
    shard.on_bytes(p, &mut frame(&publish(QoS::AtLeastOnce, 6), V5));
    assert!(
        sent_publishes(&writable(&mut shard, sub, V5)).is_empty(),
        "a new message waits behind the deferred resends"
    );
    // Each acknowledgement of the oldest one in flight makes room for exactly one more: two stay in flight.
    let mut seen = replay.clone();
    for k in 0..4 {
        shard.on_bytes(sub, &mut frame(&puback(seen[k].0), V5));
        let more = sent_publishes(&writable(&mut shard, sub, V5));
        assert_eq!(more.len(), 1, "after acknowledging {k}: {more:?}");
        seen.extend(more);
    }
    let resent: Vec<(u16, bool)> = seen[..5].to_vec();
    assert_eq!(
        resent,
        ids.iter().map(|&id| (id, true)).collect::<Vec<_>>(),
        "every in-flight message resent with its packet id, in order"
    );
    assert_eq!(seen.len(), 6, "then the new one: {seen:?}");
    assert!(!seen[5].1, "the new message is not a resend");
}
