//! A burst larger than a subscriber's queue inside one read (`burst.rs`): nothing is dropped while the
//! subscriber's socket takes data; drops behind a full socket, and drops no flush could prevent, are told apart.
use super::*;
use crate::codec::{SubscribeFilter, SubscriptionOptions};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;
const BURST: u32 = 3_000;

fn publish(i: u32) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 0,
        properties: None,
        payload: bytes::Bytes::from(format!("{i:0>64}")),
    }
}

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

/// Everything in the connection's output, as if the socket took it all; the PUBLISH payloads, in order.
fn drain(shard: &mut Shard, key: ConnKey, got: &mut Vec<bytes::Bytes>) {
    let mut out = std::mem::take(shard.out_buf(key).unwrap());
    shard.flushed(key);
    let mut d = Decoder::new_client(V, 1 << 20);
    while let Some(p) = d.decode(&mut out).unwrap() {
        if let Packet::Publish(p) = p {
            got.push(p.payload);
        }
    }
}

/// A shard with a 10-message queue bound and a 1 KiB output bound, one QoS 0 subscriber on `t` and a publisher.
fn setup() -> (Shard, ConnKey, ConnKey) {
    let mut shard = Shard::new(ShardConfig {
        max_queued_messages: 10,
        max_out_buffer: 1024,
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
    drain(&mut shard, sub, &mut Vec::new());
    let publisher = connect(&mut shard, 2, "pub");
    (shard, sub, publisher)
}

fn burst() -> BytesMut {
    let mut input = BytesMut::new();
    for i in 0..BURST {
        input.extend_from_slice(&frame(&Packet::Publish(publish(i))));
    }
    input
}

#[test]
fn a_burst_beyond_the_queue_bound_loses_nothing_while_the_socket_takes_it() {
    let (mut shard, sub, publisher) = setup();
    let mut got = Vec::new();
    // One read holding 300 times the queue bound. The I/O layer writes whenever the core yields.
    let mut outcome = shard.on_bytes(publisher, &mut burst());
    let mut yields = 0;
    while outcome == ReadOutcome::Yield {
        yields += 1;
        assert!(shard.flush_wanted());
        drain(&mut shard, sub, &mut got);
        outcome = shard.on_bytes(publisher, &mut BytesMut::new());
        assert!(yields < 10 * BURST, "no progress");
    }
    assert_eq!(outcome, ReadOutcome::Continue);
    assert!(
        shard.can_read(publisher),
        "a QoS 0 publisher is never paused"
    );
    drain(&mut shard, sub, &mut got);
    assert!(yields > 0, "the burst never asked for a flush");
    assert_eq!(shard.stats.dropped_qos0, 0);
    assert_eq!(got.len() as u32, BURST, "messages lost");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, &bytes::Bytes::from(format!("{i:0>64}")), "out of order");
    }
    assert!(
        shard.max_session_backlog() <= 10,
        "the queue stayed within its bound"
    );
}

#[test]
fn behind_a_full_socket_qos0_is_dropped_and_counted_as_such() {
    let (mut shard, sub, publisher) = setup();
    shard.send_blocked(sub);
    // No yield: writing could not help, so the publisher is read on and the excess dropped, never paused.
    assert_eq!(
        shard.on_bytes(publisher, &mut burst()),
        ReadOutcome::Continue
    );
    let mut got = Vec::new();
    // The output, then what the queue held (pumped into the output by the first write).
    drain(&mut shard, sub, &mut got);
    drain(&mut shard, sub, &mut got);
    let mut resumed = Vec::new();
    shard.take_resumed(&mut resumed);
    assert!(shard.stats.dropped_qos0 > 0);
    assert_eq!(shard.stats.dropped_qos0_writable, 0);
    assert_eq!(got.len() as u64 + shard.stats.dropped_qos0, BURST as u64);
    // The write above emptied its output: the socket takes data again, so the next burst is not dropped.
    let mut outcome = shard.on_bytes(publisher, &mut burst());
    let dropped = shard.stats.dropped_qos0;
    while outcome == ReadOutcome::Yield {
        drain(&mut shard, sub, &mut got);
        outcome = shard.on_bytes(publisher, &mut BytesMut::new());
    }
    assert_eq!(shard.stats.dropped_qos0, dropped);
}

#[test]
fn drops_no_write_could_prevent_in_time_are_counted_as_writable() {
    // Messages from other shards are not read from a socket, so nothing yields: an I/O layer that does not
    // flush between them lets the queue overflow while the socket could take more. Counted apart.
    let (mut shard, sub, _) = setup();
    for i in 0..BURST {
        let p = publish(i);
        let msg = Message {
            topic: p.topic,
            payload: p.payload,
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
            origin: None,
            received_at: 0,
        };
        shard.on_mesh(1, MeshMsg::Publish(Box::new(msg), 0));
    }
    assert!(shard.flush_wanted(), "a full output asks for a write");
    let mut got = Vec::new();
    drain(&mut shard, sub, &mut got);
    assert!(shard.stats.dropped_qos0 > 0);
    assert_eq!(shard.stats.dropped_qos0_writable, shard.stats.dropped_qos0);
}

/// Bounded queueing: under backpressure a QoS 1 publisher is paused once one in-flight window waits unsent
/// behind the in-flight messages, long before `max_queued_messages`, and resumed when half of that drained.
#[test]
fn a_qos1_publisher_is_paused_once_a_window_waits_unsent() {
    let mut shard = Shard::new(ShardConfig {
        max_queued_messages: 1000,
        max_inflight: 16,
        ..ShardConfig::default()
    });
    let sub = connect(&mut shard, 1, "sub");
    let subscribe = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "t".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: None,
    };
    shard.on_bytes(sub, &mut frame(&Packet::Subscribe(subscribe)));
    drain(&mut shard, sub, &mut Vec::new());
    let publisher = connect(&mut shard, 2, "pub");
    let mut input = BytesMut::new();
    for i in 0..200u32 {
        let p = Publish {
            qos: QoS::AtLeastOnce,
            packet_id: (i + 1) as u16,
            ..publish(i)
        };
        input.extend_from_slice(&frame(&Packet::Publish(p)));
    }
    assert_eq!(shard.on_bytes(publisher, &mut input), ReadOutcome::Paused);
    assert!(!shard.can_read(publisher));
    let backlog = shard.max_session_backlog();
    assert!(
        (32..=33).contains(&backlog),
        "16 in flight + 16 waiting (+ the one that paused it), got {backlog}"
    );
    // The subscriber acknowledges everything it got, round after round: the publisher resumes and every
    // message arrives, the backlog never past the pause point.
    let mut got = Vec::new();
    let mut resumed = Vec::new();
    for _ in 0..1000 {
        let before = got.len();
        drain(&mut shard, sub, &mut got);
        for id in before..got.len() {
            let ack = Packet::PubAck(PubResp {
                packet_id: (id % 65535 + 1) as u16,
                reason: ReasonCode::Success,
                properties: None,
            });
            shard.on_bytes(sub, &mut frame(&ack));
        }
        shard.take_resumed(&mut resumed);
        for k in resumed.drain(..) {
            shard.on_bytes(k, &mut BytesMut::new());
        }
        assert!(shard.max_session_backlog() <= 33);
        if got.len() == 200 {
            break;
        }
    }
    assert_eq!(got.len(), 200, "messages lost");
    assert!(shard.stats.pauses > 1, "paused and resumed more than once");
}
