//! Allocation counts on the hot paths, with a counting global allocator: `encode_publish` into a buffer with
//! room allocates nothing; decoding a small property-less PUBLISH allocates exactly its two exact-size copies
//! (topic and payload, what a broker keeps), acknowledgements nothing; a large PUBLISH allocates nothing once the
//! input buffer is in its shared form (the first split of a fresh `BytesMut` allocates its one shared header).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use coremq::codec::*;

struct Counting;

thread_local! {
    // Per thread, so the test harness's other threads do not disturb the count.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

fn sample(qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteString::from_static("sensors/room1/temperature"),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 9 },
        properties: None,
        payload: Bytes::from(vec![7u8; 64]),
    }
}

#[test]
fn encode_publish_allocates_nothing_with_room() {
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let p = sample(qos);
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let before = allocs();
            for _ in 0..100 {
                encode_publish(&p, v, &mut buf).unwrap();
            }
            assert_eq!(allocs() - before, 0, "{v:?} {qos:?}");
            assert_eq!(buf.len(), 100 * encoded_len(&Packet::Publish(p), v));
        }
    }
}

fn sample_sized(qos: QoS, size: usize) -> Publish {
    Publish {
        payload: Bytes::from(vec![7u8; size]),
        ..sample(qos)
    }
}

#[test]
fn decode_large_publish_allocates_nothing_after_first_split() {
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        // Over `OWNED_PUBLISH_MAX`: the payload stays a slice of the read buffer.
        let p = sample_sized(QoS::AtLeastOnce, OWNED_PUBLISH_MAX + 1);
        let mut buf = BytesMut::with_capacity(256 * 1024);
        for _ in 0..101 {
            encode_publish(&p, v, &mut buf).unwrap();
        }
        let mut d = Decoder::new_client(v, 1 << 20);
        // The first split turns the Vec-backed buffer into a shared one: one allocation, once per buffer.
        let first = d.decode(&mut buf).unwrap().unwrap();
        let before = allocs();
        let mut decoded = Vec::with_capacity(100);
        let reserved = allocs();
        for _ in 0..100 {
            decoded.push(d.decode(&mut buf).unwrap().unwrap());
        }
        assert_eq!(allocs() - reserved, 0, "{v:?}");
        assert_eq!(reserved - before, 1, "only the Vec of results allocated");
        assert!(decoded.iter().all(|x| *x == first));
    }
}

#[test]
fn decode_small_publish_allocates_its_two_copies_and_acks_nothing() {
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let p = sample(QoS::AtLeastOnce);
        let ack = Packet::PubAck(PubResp {
            packet_id: 9,
            reason: ReasonCode::Success,
            properties: None,
        });
        let mut buf = BytesMut::with_capacity(64 * 1024);
        for _ in 0..100 {
            encode_publish(&p, v, &mut buf).unwrap();
            encode(&ack, v, &mut buf).unwrap();
        }
        let mut d = Decoder::new_client(v, 1 << 20);
        let mut decoded = Vec::with_capacity(200);
        let before = allocs();
        for _ in 0..200 {
            decoded.push(d.decode(&mut buf).unwrap().unwrap());
        }
        assert_eq!(
            allocs() - before,
            200,
            "{v:?}: topic and payload per PUBLISH, nothing per PUBACK"
        );
        assert!(buf.is_empty());
        for pair in decoded.chunks(2) {
            assert_eq!(pair[0], Packet::Publish(p.clone()));
            assert_eq!(pair[1], ack);
            let Packet::Publish(got) = &pair[0] else {
                unreachable!()
            };
            // Exact-size copies that own their bytes: a kept message does not pin the read buffer.
            assert!(got.payload.is_unique() && got.topic.as_bytes().is_unique());
        }
    }
}
