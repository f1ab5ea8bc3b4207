//! A QoS 0 burst far larger than a subscriber's queue (`max_queued_messages`, 1,000 by default) arrives in full at
//! subscribers whose sockets take it, on the publisher's shard and across shards: the shard writes a destination
//! out mid-round when its output fills instead of dropping what the round read (`src/broker/shard/burst.rs`).
//! Each subscriber's socket has room for the whole burst in the kernel, so the only place a message could be
//! lost is the broker's own queue.
mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coremq::codec::{self, Connect, Packet, ProtocolVersion, Publish, QoS};

use common::{id_on_shard, Broker, Raw};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;
const BURST: u32 = 12_000;

fn connect_packet(id: &str) -> Connect {
    Raw::connect_packet(id, true, 60, V)
}

/// A subscriber on `topic` whose socket has a 4 MiB receive buffer (set before connecting, so the window can
/// use it): the whole burst fits in the kernel even while this test is not scheduled.
fn subscriber(b: &Broker, id: &str, topic: &str) -> Raw {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4 << 20).unwrap();
    s.connect(&b.addr.into()).unwrap();
    let mut raw = Raw::from_stream(s.into(), V);
    raw.send(&Packet::Connect(Box::new(connect_packet(id))));
    raw.set_timeout(Duration::from_secs(10));
    assert!(matches!(raw.recv(), Some(Packet::ConnAck(_))));
    raw.subscribe(1, topic, QoS::AtMostOnce);
    raw
}

/// How many of the burst's PUBLISHes came on `raw` (checking their order), until the last one or 10 s of silence.
fn count(mut raw: Raw) -> u32 {
    let (mut received, mut next) = (0u32, 0u32);
    raw.set_timeout(Duration::from_secs(10));
    while next < BURST {
        match raw.recv() {
            Some(Packet::Publish(p)) => {
                let i = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                assert!(i >= next, "message {i} after {next}: out of order");
                received += 1;
                next = i + 1;
            }
            Some(_) => {}
            None => break,
        }
    }
    received
}

#[test]
fn a_qos0_burst_beyond_the_queue_bound_reaches_reading_subscribers() {
    let b = Broker::start(&[]);
    let same = subscriber(&b, &id_on_shard("burst-sub", 0, 2), "burst");
    let other = subscriber(&b, &id_on_shard("burst-sub", 1, 2), "burst");
    // The publisher sits on shard 0: `same` is served from its socket reads, `other` over the mesh.
    let (mut publisher, _) = Raw::connect(b.addr, connect_packet(&id_on_shard("burst-pub", 0, 2)));

    let mut burst = BytesMut::new();
    for i in 0..BURST {
        let mut payload = vec![0u8; 64];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        codec::encode(
            &Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "burst".into(),
                packet_id: 0,
                properties: None,
                payload: payload.into(),
            }),
            V,
            &mut burst,
        )
        .unwrap();
    }
    let counters = [same, other].map(|raw| std::thread::spawn(move || count(raw)));
    // One write of about 1 MB: the broker reads it as fast as the kernel hands it over.
    let t = Instant::now();
    publisher.stream.write_all(&burst).unwrap();
    let got: Vec<u32> = counters.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        got,
        vec![BURST, BURST],
        "QoS 0 lost although the subscribers' sockets had room (sent in {:?})",
        t.elapsed()
    );
    // The publisher was never disconnected or slowed to a stop.
    publisher.stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        !matches!(publisher.stream.read(&mut buf), Ok(0)),
        "the broker closed the publisher"
    );
}
