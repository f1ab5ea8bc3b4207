use super::*;

use super::frame_v as frame;

/// A client that publishes QoS 1 but never reads: its PUBACKs must not pile up without bound. Reading stops
/// at twice `max_out_buffer` and resumes once the output is written.
#[test]
fn a_peer_that_does_not_read_stops_being_read() {
    let v = ProtocolVersion::V3_1_1;
    let mut shard = Shard::new(ShardConfig {
        max_out_buffer: 1024,
        ..ShardConfig::default()
    });
    let key = shard.accept(7);
    let connect = Connect {
        protocol: v,
        bridge: false,
        clean_start: true,
        keep_alive: 0,
        client_id: "flood".into(),
        will: None,
        username: None,
        password: None,
        properties: None,
    };
    let mut input = frame(&Packet::Connect(Box::new(connect)), v);
    for id in 1..=5000u16 {
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: id,
            properties: None,
            payload: bytes::Bytes::from_static(b"x"),
        };
        input.extend_from_slice(&frame(&Packet::Publish(p), v));
    }
    assert_eq!(shard.on_bytes(key, &mut input), ReadOutcome::Paused);
    assert!(!shard.can_read(key));
    let out = shard.out_buf(key).unwrap().len();
    assert!(out <= 2 * 1024 + 64, "output grew to {out} bytes");
    assert!(
        shard.has_partial(key),
        "unread publishes are kept, not dropped"
    );
    // The peer reads everything: reading resumes and the kept bytes are processed.
    shard.out_buf(key).unwrap().clear();
    shard.flushed(key);
    let mut resumed = Vec::new();
    shard.take_resumed(&mut resumed);
    assert_eq!(resumed, vec![key]);
    assert!(shard.can_read(key));
    let mut empty = BytesMut::new();
    shard.on_bytes(key, &mut empty);
    assert!(shard.stats.publishes_in > 0);
}
