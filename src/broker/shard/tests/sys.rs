use super::*;
use crate::codec::{SubscribeFilter, SubscriptionOptions};

use super::frame_v as frame;

fn connect(shard: &mut Shard, io: u64, id: &str, v: ProtocolVersion) -> ConnKey {
    let key = shard.accept(io);
    let c = Connect {
        protocol: v,
        bridge: false,
        clean_start: true,
        keep_alive: 0,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: None,
    };
    shard.on_bytes(key, &mut frame(&Packet::Connect(Box::new(c)), v));
    key
}

fn subscribe(shard: &mut Shard, key: ConnKey, filter: &str, v: ProtocolVersion) {
    let s = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions::default(),
        }],
        properties: None,
    };
    shard.on_bytes(key, &mut frame(&Packet::Subscribe(s), v));
}

/// Packets the connection was sent, as if written.
fn take(shard: &mut Shard, key: ConnKey, v: ProtocolVersion) -> Vec<Packet> {
    let mut out = std::mem::take(shard.out_buf(key).unwrap());
    shard.flushed(key);
    let mut d = Decoder::new_client(v, 1 << 20);
    std::iter::from_fn(|| d.decode(&mut out).unwrap()).collect()
}

fn publish_sys(shard: &mut Shard, key: ConnKey, v: ProtocolVersion, qos: QoS) {
    let p = Publish {
        dup: false,
        qos,
        retain: true,
        topic: "$SYS/broker/uptime".into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
        properties: None,
        payload: bytes::Bytes::from_static(b"forged"),
    };
    shard.on_bytes(key, &mut frame(&Packet::Publish(p), v));
}

#[test]
fn clients_cannot_publish_under_sys() {
    let mut shard = Shard::new(ShardConfig::default());
    let v3 = ProtocolVersion::V3_1_1;
    let v5 = ProtocolVersion::V5;
    let watcher = connect(&mut shard, 1, "watch", v3);
    subscribe(&mut shard, watcher, "$SYS/#", v3);
    take(&mut shard, watcher, v3);
    let a = connect(&mut shard, 2, "v5", v5);
    take(&mut shard, a, v5);
    publish_sys(&mut shard, a, v5, QoS::AtLeastOnce);
    let acks = take(&mut shard, a, v5);
    assert!(
        matches!(&acks[..], [Packet::PubAck(r)] if r.reason == ReasonCode::NotAuthorized && r.packet_id == 7),
        "{acks:?}"
    );
    let b = connect(&mut shard, 3, "v3", v3);
    take(&mut shard, b, v3);
    publish_sys(&mut shard, b, v3, QoS::AtLeastOnce);
    publish_sys(&mut shard, b, v3, QoS::AtMostOnce);
    let acks = take(&mut shard, b, v3);
    assert!(
        matches!(&acks[..], [Packet::PubAck(r)] if r.packet_id == 7),
        "{acks:?}"
    );
    // Nothing was delivered or retained, and every connection is still open.
    assert!(take(&mut shard, watcher, v3).is_empty());
    assert_eq!(shard.gauges().retained_messages, 0);
    assert_eq!(shard.stats.publishes_denied, 3);
    assert_eq!(shard.connection_count(), 3);
}

#[test]
fn injected_sys_messages_are_retained_and_delivered() {
    let mut shard = Shard::new(ShardConfig::default());
    let v = ProtocolVersion::V3_1_1;
    let watcher = connect(&mut shard, 1, "watch", v);
    subscribe(&mut shard, watcher, "$SYS/#", v);
    let other = connect(&mut shard, 2, "other", v);
    subscribe(&mut shard, other, "#", v); // `#` does not match `$` topics
    take(&mut shard, watcher, v);
    take(&mut shard, other, v);
    shard.inject_sys("$SYS/broker/uptime", "5 seconds");
    let got = take(&mut shard, watcher, v);
    assert!(
        matches!(&got[..], [Packet::Publish(p)] if &*p.topic == "$SYS/broker/uptime" && &p.payload[..] == b"5 seconds"),
        "{got:?}"
    );
    assert!(take(&mut shard, other, v).is_empty());
    // A later subscriber gets the retained value; a newer value replaces it.
    shard.inject_sys("$SYS/broker/uptime", "15 seconds");
    let late = connect(&mut shard, 3, "late", v);
    take(&mut shard, late, v);
    subscribe(&mut shard, late, "$SYS/broker/uptime", v);
    let got = take(&mut shard, late, v);
    assert!(
        got.iter().any(
            |p| matches!(p, Packet::Publish(p) if p.retain && &p.payload[..] == b"15 seconds")
        ),
        "{got:?}"
    );
    assert_eq!(shard.gauges().retained_messages, 1);
}

#[test]
fn sys_topics_do_not_take_the_retained_budget() {
    let mut shard = Shard::new(ShardConfig {
        max_retained_messages: 1,
        ..ShardConfig::default()
    });
    shard.inject_sys("$SYS/broker/a", "1");
    shard.inject_sys("$SYS/broker/b", "2");
    let v = ProtocolVersion::V3_1_1;
    let c = connect(&mut shard, 1, "c", v);
    let p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: "client/t".into(),
        packet_id: 0,
        properties: None,
        payload: bytes::Bytes::from_static(b"x"),
    };
    shard.on_bytes(c, &mut frame(&Packet::Publish(p), v));
    assert_eq!(shard.gauges().retained_messages, 3);
    assert_eq!(shard.stats.retained_rejected, 0);
}
