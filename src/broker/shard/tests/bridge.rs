//! A connection with the bridge flag (0x80 | level): its subscriptions are No Local and Retain As Published.
use super::*;
use crate::codec::{SubscribeFilter, SubscriptionOptions};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;

fn connect(shard: &mut Shard, io: u64, id: &str, bridge: bool) -> ConnKey {
    let key = shard.accept(io);
    let c = Connect {
        protocol: V,
        bridge,
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

fn subscribe_all(shard: &mut Shard, key: ConnKey) {
    let s = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "#".into(),
            options: SubscriptionOptions::default(),
        }],
        properties: None,
    };
    shard.on_bytes(key, &mut frame(&Packet::Subscribe(s)));
}

fn publish(shard: &mut Shard, key: ConnKey, topic: &str, retain: bool) {
    let p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain,
        topic: topic.into(),
        packet_id: 0,
        properties: None,
        payload: bytes::Bytes::from_static(b"m"),
    };
    shard.on_bytes(key, &mut frame(&Packet::Publish(p)));
}

/// The PUBLISHes written to `key` since the last call: (topic, retain flag).
fn published(shard: &mut Shard, key: ConnKey) -> Vec<(String, bool)> {
    let mut out = std::mem::take(shard.out_buf(key).unwrap());
    shard.flushed(key);
    let mut d = Decoder::new_client(V, 1 << 20);
    std::iter::from_fn(|| d.decode(&mut out).unwrap())
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.topic.to_string(), p.retain)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_bridge_does_not_get_its_own_messages_back() {
    let mut shard = Shard::new(ShardConfig::default());
    let bridge = connect(&mut shard, 1, "bridge", true);
    let plain = connect(&mut shard, 2, "plain", false);
    subscribe_all(&mut shard, bridge);
    subscribe_all(&mut shard, plain);
    published(&mut shard, bridge);
    published(&mut shard, plain);

    publish(&mut shard, bridge, "from/bridge", false);
    publish(&mut shard, plain, "from/plain", false);
    assert_eq!(
        published(&mut shard, bridge),
        vec![("from/plain".to_string(), false)],
        "no echo to the bridge"
    );
    // A plain client keeps the 3.1.1 behaviour: it gets its own messages too.
    assert_eq!(
        published(&mut shard, plain),
        vec![
            ("from/bridge".to_string(), false),
            ("from/plain".to_string(), false)
        ]
    );
}

#[test]
fn a_bridge_gets_the_retain_flag_as_published() {
    let mut shard = Shard::new(ShardConfig::default());
    let bridge = connect(&mut shard, 1, "bridge", true);
    let plain = connect(&mut shard, 2, "plain", false);
    let publisher = connect(&mut shard, 3, "pub", false);
    subscribe_all(&mut shard, bridge);
    subscribe_all(&mut shard, plain);
    published(&mut shard, bridge);
    published(&mut shard, plain);
    publish(&mut shard, publisher, "kept", true);
    assert_eq!(
        published(&mut shard, bridge),
        vec![("kept".to_string(), true)]
    );
    // [MQTT-3.3.1-9]: to a plain subscription a live message goes out with RETAIN 0.
    assert_eq!(
        published(&mut shard, plain),
        vec![("kept".to_string(), false)]
    );
}
