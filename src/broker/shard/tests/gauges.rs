use super::*;
use crate::codec::{SubscribeFilter, SubscriptionOptions};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;

fn connect(shard: &mut Shard, io: u64, id: &str, clean: bool) -> ConnKey {
    let key = shard.accept(io);
    let c = Connect {
        protocol: V,
        bridge: false,
        clean_start: clean,
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

fn publish(topic: &str, qos: QoS, retain: bool, id: u16) -> BytesMut {
    frame(&Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: id,
        properties: None,
        payload: bytes::Bytes::from_static(b"0123456789"),
    }))
}

/// Connections, sessions (online, offline, persistent), subscriptions, retained, queued and in-flight counts
/// follow what the shard holds.
#[test]
fn gauges_follow_the_shard_state() {
    let mut shard = Shard::new(ShardConfig {
        max_inflight: 2,
        ..ShardConfig::default()
    });
    let pending = shard.accept(9); // no CONNECT yet
    assert!(!shard.is_established(pending));
    let sub = connect(&mut shard, 1, "sub", false);
    assert!(shard.is_established(sub));
    let subscribe = Subscribe {
        packet_id: 1,
        filters: ["a", "b"]
            .iter()
            .map(|f| SubscribeFilter {
                filter: (*f).into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            })
            .collect(),
        properties: None,
    };
    shard.on_bytes(sub, &mut frame(&Packet::Subscribe(subscribe)));
    let publisher = connect(&mut shard, 2, "pub", true);
    for i in 0..5u16 {
        shard.on_bytes(publisher, &mut publish("a", QoS::AtLeastOnce, false, i + 1));
    }
    shard.on_bytes(publisher, &mut publish("r/1", QoS::AtMostOnce, true, 0));
    let g = shard.gauges();
    assert_eq!(g.connections, 3);
    assert_eq!(
        (g.sessions_online, g.sessions_offline, g.sessions_persistent),
        (2, 0, 1)
    );
    assert_eq!(g.subscriptions, 2);
    // Topic "r/1" and a 10-byte payload.
    assert_eq!((g.retained_messages, g.retained_bytes), (1, 13));
    // Window of 2: two in flight, three waiting.
    assert_eq!((g.inflight_messages, g.queued_messages), (2, 3));
    assert_eq!(g.paused_publishers, 0);
    // The persistent subscriber leaves: its session stays, offline.
    shard.on_io_closed(sub);
    shard.release(sub);
    let g = shard.gauges();
    assert_eq!(
        (g.sessions_online, g.sessions_offline, g.sessions_persistent),
        (1, 1, 1)
    );
    assert_eq!(g.connections, 2);
}

/// A walk with a small budget visits at most that many slots per step, and once a pass completes reports what a
/// full pass does; until then it reports the previous pass.
#[test]
fn the_gauge_walk_is_bounded_per_step_and_converges() {
    let mut shard = Shard::new(ShardConfig::default());
    let mut keys = Vec::new();
    for i in 0..50u64 {
        keys.push(connect(&mut shard, i, &format!("c{i}"), i % 2 == 0));
    }
    let full = shard.gauges();
    assert_eq!(full.sessions_online, 50);
    assert_eq!(full.sessions_persistent, 25);
    let mut walk = GaugeWalk::default();
    let mut steps = 0;
    while walk.passes == 0 {
        let g = shard.gauges_step(&mut walk, 7);
        assert!(walk.visited <= 7, "visited {}", walk.visited);
        steps += 1;
        if walk.passes == 0 {
            // Nothing complete yet: walked gauges are zero, the kept counts are current.
            assert_eq!(g.sessions_online, 0);
            assert_eq!(g.connections, 50);
        } else {
            assert_eq!(g, full);
        }
        assert!(steps < 100, "the walk never completes");
    }
    // 50 sessions and 50 connection slots at 7 a step.
    assert!(steps >= 100 / 7, "{steps} steps");
    // The next pass sees a change; the previous pass is reported until it completes.
    for k in keys.iter().take(10) {
        shard.on_io_closed(*k);
        shard.release(*k);
    }
    let g = shard.gauges_step(&mut walk, 7);
    assert_eq!(g.sessions_online, 50);
    assert_eq!(g.connections, 40);
    while walk.passes == 1 {
        shard.gauges_step(&mut walk, 7);
    }
    let g = shard.gauges_step(&mut walk, 0);
    assert_eq!(walk.visited, 0);
    assert_eq!((g.sessions_online, g.sessions_offline), (40, 5));
    assert_eq!(g, shard.gauges());
}
