//! Feeds arbitrary bytes through the server decoder and the client decoder of every version, plus the stateless
//! `decode_packet`; every decoded packet must re-encode to exactly `encoded_len` bytes and decode back equal.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/codec/mod.rs"]
mod codec;

use codec::{Decoder, Packet, ProtocolVersion};

const VERSIONS: [ProtocolVersion; 3] = [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5];
/// Small enough that the size check is exercised, large enough for multi-byte remaining lengths.
const MAX_PACKET: u32 = 4096;
/// Bound on packets taken from one input.
const MAX_PACKETS: usize = 64;

fn round_trip(packet: &Packet, version: ProtocolVersion) {
    let version = match packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    };
    let mut out = BytesMut::new();
    codec::encode(packet, version, &mut out).expect("a decoded packet must be encodable");
    assert_eq!(out.len(), codec::encoded_len(packet, version));
    assert_eq!(codec::frame_len(&out, 0).unwrap(), Some(out.len()));
    let again = codec::decode_packet(&mut out, version, 0)
        .expect("re-encoded packet must decode")
        .expect("re-encoded packet must be complete");
    assert_eq!(&again, packet);
    assert!(out.is_empty());
}

fn drive(mut decoder: Decoder, data: &[u8]) {
    let mut buf = BytesMut::from(data);
    for _ in 0..MAX_PACKETS {
        let before = buf.len();
        let announced = codec::frame_len(&buf, MAX_PACKET);
        match decoder.decode(&mut buf) {
            Ok(Some(p)) => {
                // The frame consumed is the one frame_len announced.
                assert_eq!(announced, Ok(Some(before - buf.len())));
                round_trip(&p, decoder.version().expect("version known after a packet"));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "need-more must consume nothing");
                return;
            }
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    drive(Decoder::new_server(MAX_PACKET), data);
    for v in VERSIONS {
        drive(Decoder::new_client(v, MAX_PACKET), data);
        let mut buf = BytesMut::from(data);
        if let Ok(Some(p)) = codec::decode_packet(&mut buf, v, MAX_PACKET) {
            round_trip(&p, v);
        }
    }
});
