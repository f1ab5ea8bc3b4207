//! The bridge core against scripted brokers: acknowledgements wait for the other side, outages re-send, the
//! local link rests while the remote is down.
use bytes::{Bytes, BytesMut};

use super::*;
use crate::bridge::link::{LinkParams, LinkState};
use crate::bridge::topic_map::TopicRule;
use crate::codec::{
    self, ConnAck, Decoder, Packet, ProtocolVersion, PubResp, Publish, ReasonCode, SubAck,
};

fn params(v: ProtocolVersion, subs: Vec<(String, QoS)>) -> LinkParams {
    LinkParams {
        version: v,
        bridge_flag: true,
        client_id: "c".into(),
        username: None,
        password: None,
        clean_start: false,
        keep_alive: 0,
        receive_maximum: 10,
        subscriptions: subs,
        max_packet_size: 1 << 20,
    }
}

fn bridge() -> Bridge {
    let map = TopicMap {
        rules: vec![
            TopicRule::parse("out/# out 1 l/ r/").unwrap(),
            TopicRule::parse("in/# in 1").unwrap(),
        ],
    };
    let local = Link::new(params(ProtocolVersion::V5, map.local_subscriptions()));
    let remote = Link::new(params(ProtocolVersion::V3_1_1, map.remote_subscriptions()));
    Bridge::new(
        "t".into(),
        map,
        local,
        remote,
        vec!["a:1".into(), "b:1".into()],
        Backoff::new(1000, 8000, 7),
        100,
        Arc::new(BridgeStatus::new("t")),
    )
}

/// The packets `side`'s link wrote, as its broker decodes them.
fn sent(b: &mut Bridge, side: Side) -> Vec<Packet> {
    let link = b.link(side);
    let mut d = Decoder::new_server(1 << 20);
    let mut out = std::mem::take(&mut link.out);
    let mut v = Vec::new();
    while let Some(p) = d.decode(&mut out).unwrap() {
        v.push(p);
    }
    v
}

fn sent_after_connect(b: &mut Bridge, side: Side) -> Vec<Packet> {
    let v = b.link(side).params.version;
    // A server decoder learns the version from CONNECT: prime one with a CONNECT of the link's version.
    let mut prime = BytesMut::new();
    let c = Packet::Connect(Box::new(codec::Connect {
        protocol: v,
        bridge: false,
        clean_start: true,
        keep_alive: 0,
        client_id: "x".into(),
        will: None,
        username: None,
        password: None,
        properties: None,
    }));
    codec::encode(&c, v, &mut prime).unwrap();
    let mut s = Decoder::new_server(1 << 20);
    s.decode(&mut prime).unwrap();
    let mut out = std::mem::take(&mut b.link(side).out);
    std::iter::from_fn(|| s.decode(&mut out).unwrap()).collect()
}

fn feed(b: &mut Bridge, side: Side, p: Packet) {
    let v = b.link(side).params.version;
    let mut buf = BytesMut::new();
    codec::encode(&p, v, &mut buf).unwrap();
    b.on_bytes(side, &mut buf, 0).unwrap();
}

/// Connects `side` and answers its CONNECT and SUBSCRIBE; returns what else it sent meanwhile.
fn up(b: &mut Bridge, side: Side) -> Vec<Packet> {
    b.on_connected(side, 0);
    assert!(matches!(&sent(b, side)[..], [Packet::Connect(_)]));
    feed(
        b,
        side,
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: None,
        }),
    );
    let mut rest = sent_after_connect(b, side);
    let pid = match rest.first() {
        Some(Packet::Subscribe(s)) => s.packet_id,
        other => panic!("{other:?}"),
    };
    rest.remove(0);
    feed(
        b,
        side,
        Packet::SubAck(SubAck {
            packet_id: pid,
            reasons: vec![ReasonCode::GrantedQoS1],
            properties: None,
        }),
    );
    rest.extend(sent_after_connect(b, side));
    rest
}

fn publish(topic: &str, pid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.into(),
        packet_id: pid,
        properties: None,
        payload: Bytes::from_static(b"p"),
    })
}

fn puback(pid: u16) -> Packet {
    Packet::PubAck(PubResp {
        packet_id: pid,
        reason: ReasonCode::Success,
        properties: None,
    })
}

#[test]
fn a_local_message_is_acked_locally_only_after_the_remote_acked_it() {
    let mut b = bridge();
    up(&mut b, Side::Local);
    up(&mut b, Side::Remote);
    feed(&mut b, Side::Local, publish("l/out/x", 7));
    assert!(
        sent_after_connect(&mut b, Side::Local).is_empty(),
        "no PUBACK yet"
    );
    let rpid = match &sent_after_connect(&mut b, Side::Remote)[..] {
        [Packet::Publish(p)] => {
            assert_eq!(&*p.topic, "r/out/x", "prefix swapped");
            p.packet_id
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(b.status.queued.load(Relaxed), 1);
    feed(&mut b, Side::Remote, puback(rpid));
    assert_eq!(sent_after_connect(&mut b, Side::Local), vec![puback(7)]);
    assert_eq!(b.status.queued.load(Relaxed), 0);
}

#[test]
fn a_remote_message_is_acked_to_the_remote_after_the_local_broker_took_it() {
    let mut b = bridge();
    up(&mut b, Side::Local);
    up(&mut b, Side::Remote);
    feed(&mut b, Side::Remote, publish("in/y", 3));
    assert!(sent_after_connect(&mut b, Side::Remote).is_empty());
    let lpid = match &sent_after_connect(&mut b, Side::Local)[..] {
        [Packet::Publish(p)] => {
            assert_eq!(&*p.topic, "in/y");
            p.packet_id
        }
        other => panic!("{other:?}"),
    };
    feed(&mut b, Side::Local, puback(lpid));
    assert_eq!(sent_after_connect(&mut b, Side::Remote), vec![puback(3)]);
}

#[test]
fn a_remote_outage_resends_in_flight_messages_and_rests_the_local_link() {
    let mut b = bridge();
    up(&mut b, Side::Local);
    up(&mut b, Side::Remote);
    feed(&mut b, Side::Local, publish("l/out/1", 1));
    sent_after_connect(&mut b, Side::Remote);
    b.on_closed(Side::Remote, 10);
    assert!(!b.status.connected.load(Relaxed));
    assert!(
        !b.local_wanted(),
        "the local session goes offline while the remote is down"
    );
    // A working link dropped: the first address again, after a jittered base delay.
    assert_eq!(b.remote_address(), "a:1");
    assert!(!b.wants_connect(Side::Remote, 10));
    assert!(b.wants_connect(Side::Remote, 10 + 1000));
    let resent = up(&mut b, Side::Remote);
    assert_eq!(b.status.reconnects.load(Relaxed), 1);
    let rpid = match &resent[..] {
        [Packet::Publish(p)] => p.packet_id,
        other => panic!("re-sent after reconnect: {other:?}"),
    };
    feed(&mut b, Side::Remote, puback(rpid));
    assert_eq!(sent_after_connect(&mut b, Side::Local), vec![puback(1)]);
}

#[test]
fn failed_connects_walk_the_addresses_then_back_off() {
    let mut b = bridge();
    b.on_connect_failed(Side::Remote, 0);
    assert_eq!(b.remote_address(), "b:1", "next address at once");
    assert!(b.wants_connect(Side::Remote, 0));
    b.on_connect_failed(Side::Remote, 0);
    assert_eq!(b.remote_address(), "a:1");
    assert!(
        !b.wants_connect(Side::Remote, 0),
        "a full round failed: back off"
    );
    assert_eq!(b.status.connect_failures.load(Relaxed), 2);
    assert_eq!(b.remote.state(), LinkState::Down);
}

#[test]
fn backoff_doubles_to_the_cap_with_jitter() {
    let mut bo = Backoff::new(100, 1000, 42);
    let d: Vec<u64> = (0..6).map(|_| bo.next_delay()).collect();
    for (got, full) in d.iter().zip([100u64, 200, 400, 800, 1000, 1000]) {
        assert!(
            (full / 2..=full).contains(got),
            "{got} not in [{}, {full}]",
            full / 2
        );
    }
    bo.reset();
    assert!(bo.next_delay() <= 100);
}

#[test]
fn when_the_local_side_drops_its_unsent_messages_are_left_to_its_redelivery() {
    let mut b = bridge();
    up(&mut b, Side::Local);
    // Remote down: the message waits in the bridge.
    feed(&mut b, Side::Local, publish("l/out/1", 1));
    assert_eq!(b.status.queued.load(Relaxed), 1);
    b.on_closed(Side::Local, 0);
    assert_eq!(
        b.status.queued.load(Relaxed),
        0,
        "the local broker sends it again"
    );
}
