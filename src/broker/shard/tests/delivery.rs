use super::*;
use crate::codec::{SubscribeFilter, SubscriptionOptions};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;

fn connect(shard: &mut Shard, io: u64, id: &str) -> ConnKey {
    let key = shard.accept(io);
    let c = Connect {
        protocol: V,
        bridge: false,
        clean_start: true,
        keep_alive: 0,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: None,
    };
    shard.on_bytes(key, &mut frame(&Packet::Connect(Box::new(c))));
    key
}

/// Takes the connection's output, as if written, and counts the PUBLISHes in it.
fn drain(shard: &mut Shard, key: ConnKey) -> usize {
    let mut out = std::mem::take(shard.out_buf(key).unwrap());
    shard.flushed(key);
    let mut d = Decoder::new_client(V, 1 << 20);
    std::iter::from_fn(|| d.decode(&mut out).unwrap())
        .filter(|p| matches!(p, Packet::Publish(_)))
        .count()
}

/// A subscriber that reads slowly, 600 QoS 0 messages at it, a queue bound of 10: with `DropNewest` the
/// publisher is never slowed and the excess is counted as dropped; with `Backpressure` the publisher stops
/// being read until the subscriber catches up, and every message arrives.
fn run(policy: OverflowPolicy) -> (usize, u64, bool) {
    let mut shard = Shard::new(ShardConfig {
        max_queued_messages: 10,
        max_out_buffer: 1024,
        qos0_overflow: policy,
        ..ShardConfig::default()
    });
    let sub = connect(&mut shard, 1, "sub");
    let subscribe = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "t".into(),
            options: SubscriptionOptions {
                qos: QoS::AtMostOnce,
                ..Default::default()
            },
        }],
        properties: None,
    };
    shard.on_bytes(sub, &mut frame(&Packet::Subscribe(subscribe)));
    drain(&mut shard, sub);
    // Its socket is full (the I/O layer saw EAGAIN): only then may its queue fill (`burst.rs`).
    shard.send_blocked(sub);
    let publisher = connect(&mut shard, 2, "pub");
    let mut input = BytesMut::new();
    for i in 0..600u32 {
        input.extend_from_slice(&frame(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 0,
            properties: None,
            payload: bytes::Bytes::from(format!("{i:0>64}")),
        })));
    }
    shard.on_bytes(publisher, &mut input);
    let was_paused = !shard.can_read(publisher);
    let mut delivered = 0;
    let mut resumed = Vec::new();
    for _ in 0..10_000 {
        delivered += drain(&mut shard, sub);
        shard.take_resumed(&mut resumed);
        for k in resumed.drain(..) {
            shard.on_bytes(k, &mut BytesMut::new());
        }
        if !shard.has_partial(publisher) && shard.out_buf(sub).unwrap().is_empty() {
            break;
        }
    }
    delivered += drain(&mut shard, sub);
    (delivered, shard.stats.dropped_qos0, was_paused)
}

#[test]
fn qos0_is_dropped_and_counted_by_default() {
    let (delivered, dropped, paused) = run(OverflowPolicy::DropNewest);
    assert!(!paused, "a QoS 0 publisher is never slowed by default");
    assert!(dropped > 0);
    assert_eq!(delivered as u64 + dropped, 600);
}

#[test]
fn qos0_backpressure_slows_the_publisher_and_loses_nothing() {
    let (delivered, dropped, paused) = run(OverflowPolicy::Backpressure);
    assert!(paused, "the publisher was not paused");
    assert_eq!(dropped, 0);
    assert_eq!(delivered, 600);
}
