use super::*;

fn roundtrip(rec: Record<'_>) {
    let mut buf = vec![0u8; framed_len(rec.body_len()) + 16];
    let n = framed_len(rec.body_len());
    encode_frame(&rec, &mut buf[..n]);
    match read_frame(&buf, 1 << 20) {
        Frame::Valid { kind, body, total } => {
            assert_eq!(total, n);
            assert_eq!(total % ALIGN, 0);
            let back = decode_body(kind, body).unwrap();
            assert_eq!(back, rec);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn every_kind_roundtrips() {
    roundtrip(Record::SessionUpsert {
        client_id: "c1",
        protocol_level: 5,
        expiry_secs: 3600,
        clean: false,
        disconnected_at: 17,
    });
    roundtrip(Record::SessionDelete { client_id: "c1" });
    roundtrip(Record::WillPending {
        client_id: "c1",
        due_unix: 1_700_000_000,
        topic: "will/ü",
        qos: 1,
        retain: true,
        payload: &[0, 1, 255],
        properties: &[0x02, 0, 0, 0, 9],
    });
    roundtrip(Record::WillCleared { client_id: "c1" });
    roundtrip(Record::SubAdd {
        client_id: "c",
        filter: "a/+/#",
        options: 0b10_1101,
        subscription_id: 268_435_455,
    });
    roundtrip(Record::SubRemove {
        client_id: "c",
        filter: "a/b",
    });
    roundtrip(Record::Message {
        msg_id: u64::MAX,
        topic: "t/ü",
        qos: 2,
        retain: true,
        payload: &[1, 2, 3, 0, 255],
        properties: &[0x26, 0, 1, b'k', 0, 1, b'v'],
        expires_unix: 0,
    });
    roundtrip(Record::Message {
        msg_id: 4,
        topic: "t",
        qos: 1,
        retain: false,
        payload: b"p",
        properties: &[0x02, 0, 0, 0, 60],
        expires_unix: 1_700_000_060,
    });
    roundtrip(Record::Enqueue {
        client_id: "c",
        msg_id: 9,
        packet_id: 0,
    });
    roundtrip(Record::Enqueue {
        client_id: "c",
        msg_id: 10,
        packet_id: 7,
    });
    roundtrip(Record::Delivery {
        client_id: "c",
        msg_id: 9,
        packet_id: 65535,
        state: DeliveryState::PubRelSent,
    });
    roundtrip(Record::Ack {
        client_id: "c",
        msg_id: 9,
    });
    roundtrip(Record::Qos2InPending {
        client_id: "",
        packet_id: 1,
    });
    roundtrip(Record::Qos2InReleased {
        client_id: "x",
        packet_id: 2,
    });
    roundtrip(Record::RetainedSet {
        topic: "r",
        msg_id: 3,
    });
    roundtrip(Record::RetainedClear { topic: "r" });
    roundtrip(Record::Commit { group: 7 });
}

/// A `MESSAGE` record as written before expiry deadlines were stored (the bytes are spelled out, not
/// produced by today's encoder) still decodes, with no deadline; a deadline makes it the newer kind, whose
/// body is the old one plus the deadline.
#[test]
fn message_records_without_a_deadline_keep_the_old_layout() {
    let old_body: &[u8] = &[
        7, 0, 0, 0, 0, 0, 0, 0, // msg_id 7
        1, 0, b't', // topic "t"
        1, 0, // qos 1, retain false
        0, 0, 0, 0, // no properties
        2, 0, 0, 0, b'h', b'i', // payload "hi"
    ];
    let rec = decode_body(kind::MESSAGE, old_body).unwrap();
    let plain = Record::Message {
        msg_id: 7,
        topic: "t",
        qos: 1,
        retain: false,
        payload: b"hi",
        properties: &[],
        expires_unix: 0,
    };
    assert_eq!(rec, plain);
    let mut buf = vec![0u8; framed_len(plain.body_len())];
    encode_frame(&plain, &mut buf);
    assert_eq!(buf[FRAME_HEADER], kind::MESSAGE);
    assert_eq!(
        &buf[FRAME_HEADER + 1..FRAME_HEADER + 1 + old_body.len()],
        old_body
    );

    let mut new_body = old_body.to_vec();
    new_body.extend_from_slice(&1_700_000_000u64.to_le_bytes());
    assert_eq!(
        decode_body(kind::MESSAGE_EXPIRING, &new_body).unwrap(),
        Record::Message {
            msg_id: 7,
            topic: "t",
            qos: 1,
            retain: false,
            payload: b"hi",
            properties: &[],
            expires_unix: 1_700_000_000,
        }
    );
    assert_eq!(
        decode_body(kind::MESSAGE, &new_body),
        Err(BodyError::TrailingBytes),
        "the old kind does not take the deadline"
    );
    assert_eq!(
        decode_body(kind::MESSAGE_EXPIRING, old_body),
        Err(BodyError::Truncated)
    );
    let mut zero = old_body.to_vec();
    zero.extend_from_slice(&[0; 8]);
    assert_eq!(
        decode_body(kind::MESSAGE_EXPIRING, &zero),
        Err(BodyError::BadValue)
    );
}

#[test]
fn damaged_frames_are_detected() {
    let rec = Record::Ack {
        client_id: "client",
        msg_id: 1,
    };
    let n = framed_len(rec.body_len());
    let mut buf = vec![0u8; n];
    encode_frame(&rec, &mut buf);
    for i in 0..FRAME_HEADER + 1 + rec.body_len() {
        let mut b = buf.clone();
        b[i] ^= 0x40;
        assert!(
            matches!(read_frame(&b, 1 << 20), Frame::Bad(_) | Frame::End),
            "flip at {i} not detected"
        );
    }
    assert!(matches!(read_frame(&buf[..n - 8], 1 << 20), Frame::Bad(_)));
    assert!(matches!(read_frame(&[0u8; 16], 1 << 20), Frame::End));
}

#[test]
fn bad_bodies_are_errors_not_panics() {
    assert_eq!(decode_body(99, &[]), Err(BodyError::UnknownKind(99)));
    assert_eq!(
        decode_body(kind::ACK, &[5, 0, b'a']),
        Err(BodyError::Truncated)
    );
    assert_eq!(
        decode_body(kind::COMMIT, &[0; 9]),
        Err(BodyError::TrailingBytes)
    );
    assert_eq!(
        decode_body(kind::SESSION_DELETE, &[2, 0, 0xff, 0xfe]),
        Err(BodyError::BadUtf8)
    );
}
