//! Byte vectors written by hand from the MQTT 3.1, 3.1.1 and 5.0 specifications: one or more per packet type,
//! decoded and (where the form is canonical) encoded back; then every validation rule with the error class the
//! spec asks for.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use coremq::codec::*;

use ProtocolVersion::{V3_1, V3_1_1, V5};

fn s(v: &'static str) -> ByteString {
    ByteString::from_static(v)
}

fn props(f: impl FnOnce(&mut Properties)) -> Props {
    let mut p = Properties::default();
    f(&mut p);
    Some(Box::new(p))
}

fn decode(bytes: &[u8], v: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let r = decode_packet(&mut buf, v, 0);
    if let Ok(Some(_)) = r {
        assert!(buf.is_empty(), "whole frame consumed");
    }
    r
}

/// Decode `bytes` to `want`, and encode `want` back to exactly `bytes`.
fn canonical(bytes: &[u8], v: ProtocolVersion, want: Packet) {
    assert_eq!(
        decode(bytes, v),
        Ok(Some(want.clone())),
        "decode {bytes:02x?}"
    );
    let mut out = BytesMut::new();
    encode(&want, v, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "encode {want:?}");
    assert_eq!(encoded_len(&want, v), bytes.len());
}

fn err(bytes: &[u8], v: ProtocolVersion) -> DecodeError {
    match decode(bytes, v) {
        Err(e) => e,
        other => panic!("expected an error for {bytes:02x?}, got {other:?}"),
    }
}

fn malformed(bytes: &[u8], v: ProtocolVersion) {
    let e = err(bytes, v);
    assert!(
        matches!(e, DecodeError::Malformed(_)),
        "{bytes:02x?}: {e:?}"
    );
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

fn protocol(bytes: &[u8], v: ProtocolVersion) {
    let e = err(bytes, v);
    assert!(matches!(e, DecodeError::Protocol(_)), "{bytes:02x?}: {e:?}");
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
}

// ---------------------------------------------------------------- CONNECT

#[test]
fn connect_v3_1_1() {
    let bytes = [
        0x10, 0x19, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xC2, 0x00, 0x3C, 0x00, 0x03, b'a',
        b'b', b'c', 0x00, 0x04, b'u', b's', b'e', b'r', 0x00, 0x02, b'p', b'w',
    ];
    canonical(
        &bytes,
        V3_1_1,
        Packet::Connect(Box::new(Connect {
            protocol: V3_1_1,
            bridge: false,
            clean_start: true,
            keep_alive: 60,
            client_id: s("abc"),
            will: None,
            username: Some(s("user")),
            password: Some(Bytes::from_static(b"pw")),
            properties: None,
        })),
    );
}

#[test]
fn connect_v3_1_mqisdp() {
    let bytes = [
        0x10, 0x0F, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x0A, 0x00,
        0x01, b'x',
    ];
    let want = Packet::Connect(Box::new(Connect {
        protocol: V3_1,
        bridge: false,
        clean_start: true,
        keep_alive: 10,
        client_id: s("x"),
        will: None,
        username: None,
        password: None,
        properties: None,
    }));
    canonical(&bytes, V3_1, want.clone());
    // The protocol level in CONNECT wins over the version the caller passes.
    assert_eq!(decode(&bytes, V5), Ok(Some(want)));
}

#[test]
fn connect_v5_with_will_and_properties() {
    let bytes = [
        0x10, 0x20, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x2E, 0x00,
        0x0A, // header, flags, keep alive
        0x05, 0x11, 0x00, 0x00, 0x00, 0x3C, // session expiry 60
        0x00, 0x01, b'c', // client id
        0x05, 0x18, 0x00, 0x00, 0x00, 0x05, // will delay 5
        0x00, 0x01, b't', 0x00, 0x02, b'h', b'i', // will topic, payload
    ];
    canonical(
        &bytes,
        V5,
        Packet::Connect(Box::new(Connect {
            protocol: V5,
            bridge: false,
            clean_start: true,
            keep_alive: 10,
            client_id: s("c"),
            will: Some(Will {
                topic: s("t"),
                payload: Bytes::from_static(b"hi"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: props(|p| p.will_delay_interval = Some(5)),
            }),
            username: None,
            password: None,
            properties: props(|p| p.session_expiry_interval = Some(60)),
        })),
    );
}

#[test]
fn connect_rejections() {
    let base: Vec<u8> = vec![
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0A, 0x00, 0x01, b'x',
    ];
    assert!(decode(&base, V3_1_1).unwrap().is_some());
    let with = |i: usize, b: u8| {
        let mut v = base.clone();
        v[i] = b;
        v
    };
    // Reserved connect flag [MQTT-3.1.2-3].
    malformed(&with(9, 0x03), V3_1_1);
    // Will QoS / retain without the will flag [MQTT-3.1.2-11, -13, -15].
    malformed(&with(9, 0x0A), V3_1_1);
    malformed(&with(9, 0x22), V3_1_1);
    // Password without user name before 5.0 [MQTT-3.1.2-22]; the fields are absent too, so build it fully.
    malformed(
        &[
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x42, 0x00, 0x0A, 0x00, 0x01,
            b'x', 0x00, 0x02, b'p', b'w',
        ],
        V3_1_1,
    );
    // Unknown level or name: the server answers "unsupported protocol version".
    assert_eq!(
        err(&with(8, 0x06), V3_1_1),
        DecodeError::UnsupportedProtocolVersion(6)
    );
    assert_eq!(
        err(&with(8, 0x06), V3_1_1).reason_code(),
        ReasonCode::UnsupportedProtocolVersion
    );
    assert!(matches!(
        err(&with(7, b'X'), V3_1_1),
        DecodeError::UnsupportedProtocolVersion(_)
    ));
    // Truncated: remaining length says 13 but the client id runs past it.
    malformed(
        &[
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0A, 0x00, 0x01,
        ],
        V3_1_1,
    );
    // Client id with invalid UTF-8.
    malformed(&with(14, 0xFF), V3_1_1);
    // Client id containing U+0000 [MQTT-1.5.4-2].
    malformed(&with(14, 0x00), V3_1_1);
}

#[test]
fn connect_will_topic_must_be_a_name() {
    // 3.1.1, will flag + QoS 0, will topic "a/#".
    let bytes = [
        0x10, 0x14, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x0A, 0x00, 0x01, b'x',
        0x00, 0x03, b'a', b'/', b'#', 0x00, 0x00,
    ];
    assert!(matches!(
        err(&bytes, V3_1_1),
        DecodeError::TopicNameInvalid(_)
    ));
}

// ---------------------------------------------------------------- CONNACK

#[test]
fn connack() {
    canonical(
        &[0x20, 0x02, 0x01, 0x00],
        V3_1_1,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: None,
        }),
    );
    canonical(
        &[0x20, 0x02, 0x00, 0x05],
        V3_1_1,
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::NotAuthorized,
            properties: None,
        }),
    );
    canonical(
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: None,
        }),
    );
    canonical(
        &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x01],
        V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: props(|p| p.maximum_qos = Some(1)),
        }),
    );
    // Reserved acknowledge flags, reserved v3 return code, v5 code not allowed in CONNACK, session present with
    // an error code.
    malformed(&[0x20, 0x02, 0x02, 0x00], V3_1_1);
    malformed(&[0x20, 0x02, 0x00, 0x06], V3_1_1);
    malformed(&[0x20, 0x03, 0x00, 0x04, 0x00], V5);
    protocol(&[0x20, 0x02, 0x01, 0x05], V3_1_1);
    // Maximum QoS 2 is a protocol error (only 0 or 1 may be announced).
    protocol(&[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02], V5);
}

#[test]
fn connack_v3_return_code_mapping() {
    let cases = [
        (ReasonCode::Success, 0),
        (ReasonCode::UnsupportedProtocolVersion, 1),
        (ReasonCode::ClientIdentifierNotValid, 2),
        (ReasonCode::ServerBusy, 3),
        (ReasonCode::BadUserNameOrPassword, 4),
        (ReasonCode::Banned, 5),
    ];
    for (reason, code) in cases {
        let mut out = BytesMut::new();
        let p = Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: props(|p| p.maximum_qos = Some(0)),
        });
        encode(&p, V3_1_1, &mut out).unwrap();
        assert_eq!(&out[..], &[0x20, 0x02, 0x00, code], "{reason:?}");
    }
}

// ---------------------------------------------------------------- PUBLISH

#[test]
fn publish() {
    canonical(
        &[
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
        ],
        V3_1_1,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: s("a/b"),
            packet_id: 10,
            properties: None,
            payload: Bytes::from_static(b"hi"),
        }),
    );
    canonical(
        &[0x31, 0x05, 0x00, 0x01, b't', 0x00, b'x'],
        V5,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: s("t"),
            packet_id: 0,
            properties: None,
            payload: Bytes::from_static(b"x"),
        }),
    );
    // v5: empty topic standing for topic alias 5.
    canonical(
        &[
            0x3C, 0x09, 0x00, 0x00, 0x00, 0x01, 0x03, 0x23, 0x00, 0x05, b'p',
        ],
        V5,
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: ByteString::new(),
            packet_id: 1,
            properties: props(|p| p.topic_alias = Some(5)),
            payload: Bytes::from_static(b"p"),
        }),
    );
    // Empty payload is fine.
    assert!(decode(&[0x30, 0x03, 0x00, 0x01, b't'], V3_1_1)
        .unwrap()
        .is_some());
}

#[test]
fn publish_rejections() {
    // QoS 3 [MQTT-3.3.1-4], DUP on QoS 0 [MQTT-3.3.1-2].
    malformed(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01], V3_1_1);
    malformed(&[0x38, 0x03, 0x00, 0x01, b't'], V3_1_1);
    // Packet identifier 0 [MQTT-2.3.1-1].
    protocol(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00], V3_1_1);
    // Wildcards in a topic name [MQTT-3.3.2-2].
    let e = err(&[0x30, 0x04, 0x00, 0x02, b'a', b'+'], V3_1_1);
    assert!(matches!(e, DecodeError::TopicNameInvalid(_)));
    assert_eq!(e.reason_code(), ReasonCode::TopicNameInvalid);
    assert!(matches!(
        err(&[0x30, 0x04, 0x00, 0x01, b'#', 0x00], V5),
        DecodeError::TopicNameInvalid(_)
    ));
    // Empty topic: invalid in v3, protocol error in v5 without a topic alias.
    assert!(matches!(
        err(&[0x30, 0x02, 0x00, 0x00], V3_1_1),
        DecodeError::TopicNameInvalid(_)
    ));
    protocol(&[0x30, 0x03, 0x00, 0x00, 0x00], V5);
    // UTF-8: invalid sequence, U+0000, and an encoded surrogate (ED A0 80 = U+D800) [MQTT-1.5.4-1].
    malformed(&[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28], V3_1_1);
    malformed(&[0x30, 0x04, 0x00, 0x02, b'a', 0x00], V3_1_1);
    malformed(&[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80], V3_1_1);
    // Topic length running past the packet.
    malformed(&[0x30, 0x03, 0x00, 0x05, b't'], V3_1_1);
    // v5 properties: duplicate (two message expiry intervals), not allowed here (session expiry), unknown id,
    // topic alias 0, payload format 2, and a property block longer than the packet.
    protocol(
        &[
            0x30, 0x0E, 0x00, 0x01, b't', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2,
        ],
        V5,
    );
    malformed(&[0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x11, 0, 0, 0, 1], V5);
    malformed(&[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x07, 0x00], V5);
    protocol(&[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00], V5);
    protocol(&[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x01, 0x02], V5);
    malformed(&[0x30, 0x05, 0x00, 0x01, b't', 0x09, 0x01], V5);
    // Response topic with a wildcard.
    protocol(
        &[
            0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x08, 0x00, 0x02, b'a', b'#',
        ],
        V5,
    );
    // Subscription identifier 0.
    protocol(&[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x0B, 0x00], V5);
}

#[test]
fn decoded_publish_is_a_slice_of_the_input() {
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("sensors/room1/temperature"),
        packet_id: 42,
        properties: None,
        payload: Bytes::from(vec![0xAB; 64]),
    };
    for v in [V3_1_1, V5] {
        let mut buf = BytesMut::with_capacity(4096);
        encode_publish(&p, v, &mut buf).unwrap();
        encode(&Packet::PingReq, v, &mut buf).unwrap();
        let start = buf.as_ptr() as usize;
        let end = start + buf.len();
        let got = match decode_packet(&mut buf, v, 0).unwrap() {
            Some(Packet::Publish(got)) => got,
            other => panic!("{other:?}"),
        };
        assert_eq!(got, p);
        let inside = |ptr: *const u8, len: usize| {
            let a = ptr as usize;
            a >= start && a + len <= end
        };
        assert!(
            inside(got.payload.as_ptr(), got.payload.len()),
            "payload was copied"
        );
        assert!(
            inside(got.topic.as_ptr(), got.topic.len()),
            "topic was copied"
        );
        // The remaining PINGREQ is still at the front of the same allocation.
        assert!(inside(buf.as_ptr(), buf.len()));
        assert_eq!(&buf[..], &[0xC0, 0x00]);
    }
}

// ---------------------------------------------------------------- PUBACK, PUBREC, PUBREL, PUBCOMP

#[test]
fn pub_responses() {
    let ok = |id| PubResp {
        packet_id: id,
        reason: ReasonCode::Success,
        properties: None,
    };
    for v in [V3_1, V3_1_1, V5] {
        canonical(&[0x40, 0x02, 0x00, 0x01], v, Packet::PubAck(ok(1)));
        canonical(&[0x50, 0x02, 0x00, 0x02], v, Packet::PubRec(ok(2)));
        canonical(&[0x62, 0x02, 0x00, 0x03], v, Packet::PubRel(ok(3)));
        canonical(&[0x70, 0x02, 0x00, 0x04], v, Packet::PubComp(ok(4)));
    }
    canonical(
        &[0x40, 0x03, 0x00, 0x01, 0x10],
        V5,
        Packet::PubAck(PubResp {
            packet_id: 1,
            reason: ReasonCode::NoMatchingSubscribers,
            properties: None,
        }),
    );
    canonical(
        &[0x50, 0x08, 0x00, 0x01, 0x80, 0x04, 0x1F, 0x00, 0x01, b'e'],
        V5,
        Packet::PubRec(PubResp {
            packet_id: 1,
            reason: ReasonCode::UnspecifiedError,
            properties: props(|p| p.reason_string = Some(s("e"))),
        }),
    );
    canonical(
        &[0x70, 0x03, 0x00, 0x04, 0x92],
        V5,
        Packet::PubComp(PubResp {
            packet_id: 4,
            reason: ReasonCode::PacketIdentifierNotFound,
            properties: None,
        }),
    );
    // Explicit Success with an empty property block is the same packet as the short form.
    assert_eq!(
        decode(&[0x40, 0x04, 0x00, 0x01, 0x00, 0x00], V5),
        decode(&[0x40, 0x02, 0x00, 0x01], V5)
    );
    // v3 acks are exactly 2 bytes; PUBREL needs flags 0010 [MQTT-3.6.1-1]; id 0; reason not allowed in PUBREL.
    malformed(&[0x40, 0x03, 0x00, 0x01, 0x00], V3_1_1);
    malformed(&[0x60, 0x02, 0x00, 0x01], V5);
    malformed(&[0x41, 0x02, 0x00, 0x01], V5);
    protocol(&[0x40, 0x02, 0x00, 0x00], V5);
    malformed(&[0x62, 0x03, 0x00, 0x01, 0x10], V5);
    malformed(&[0x40, 0x03, 0x00, 0x01, 0x92], V5);
    // The reason code is dropped for v3.
    let mut out = BytesMut::new();
    let p = Packet::PubAck(PubResp {
        packet_id: 9,
        reason: ReasonCode::QuotaExceeded,
        properties: props(|p| p.reason_string = Some(s("full"))),
    });
    encode(&p, V3_1_1, &mut out).unwrap();
    assert_eq!(&out[..], &[0x40, 0x02, 0x00, 0x09]);
}

// ---------------------------------------------------------------- SUBSCRIBE / SUBACK

#[test]
fn subscribe() {
    canonical(
        &[
            0x82, 0x0C, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x01, b'#', 0x02,
        ],
        V3_1_1,
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            filters: vec![
                SubscribeFilter {
                    filter: s("a/b"),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                },
                SubscribeFilter {
                    filter: s("#"),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        ..Default::default()
                    },
                },
            ],
            properties: None,
        }),
    );
    canonical(
        &[
            0x82, 0x09, 0x00, 0x0B, 0x02, 0x0B, 0x2A, 0x00, 0x01, b'a', 0x2D,
        ],
        V5,
        Packet::Subscribe(Subscribe {
            packet_id: 11,
            filters: vec![SubscribeFilter {
                filter: s("a"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
            properties: props(|p| p.subscription_identifiers = vec![42]),
        }),
    );
    let shared = [
        0x82, 0x10, 0x00, 0x01, 0x00, 0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g',
        b'/', b'a', 0x00,
    ];
    assert!(decode(&shared, V5).unwrap().is_some());
}

#[test]
fn subscribe_rejections() {
    let one = |filter: &[u8], opts: u8, v: ProtocolVersion| {
        let mut b = vec![0x82, 0, 0x00, 0x01];
        if v == V5 {
            b.push(0x00);
        }
        b.extend_from_slice(&[0x00, filter.len() as u8]);
        b.extend_from_slice(filter);
        b.push(opts);
        b[1] = (b.len() - 2) as u8;
        decode(&b, v)
    };
    assert!(one(b"a", 0x01, V3_1_1).unwrap().is_some());
    // Flags must be 0010 [MQTT-3.8.1-1].
    malformed(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], V3_1_1);
    // No filters [MQTT-3.8.3-3], packet id 0.
    protocol(&[0x82, 0x02, 0x00, 0x01], V3_1_1);
    protocol(&[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00], V3_1_1);
    // QoS 3, reserved option bits (v3: bits 2-7, v5: bits 6-7), retain handling 3.
    assert!(matches!(
        one(b"a", 0x03, V3_1_1),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        one(b"a", 0x04, V3_1_1),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        one(b"a", 0x40, V5),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(one(b"a", 0x30, V5), Err(DecodeError::Protocol(_))));
    // Filters: `#` not last, `+`/`#` not a whole level, empty, bad shared forms [MQTT-4.7.1-1, -2, 4.8.2-1, -2].
    for bad in [
        &b"a/#/b"[..],
        b"a#",
        b"a+/b",
        b"",
        b"$share/g",
        b"$share//a",
        b"$share/g#/a",
        b"$share/g/a/#/b",
    ] {
        let e = one(bad, 0x00, V5).unwrap_err();
        assert!(
            matches!(e, DecodeError::TopicFilterInvalid(_)),
            "{:?}: {e:?}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(e.reason_code(), ReasonCode::TopicFilterInvalid);
    }
    // No Local on a shared subscription [MQTT-3.8.3-4].
    assert!(matches!(
        one(b"$share/g/a", 0x04, V5),
        Err(DecodeError::Protocol(_))
    ));
    // Two subscription identifiers in a SUBSCRIBE.
    protocol(
        &[
            0x82, 0x0A, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00,
        ],
        V5,
    );
}

#[test]
fn suback() {
    canonical(
        &[0x90, 0x04, 0x00, 0x0A, 0x01, 0x80],
        V3_1_1,
        Packet::SubAck(SubAck {
            packet_id: 10,
            reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError],
            properties: None,
        }),
    );
    canonical(
        &[0x90, 0x05, 0x00, 0x0B, 0x00, 0x02, 0x8F],
        V5,
        Packet::SubAck(SubAck {
            packet_id: 11,
            reasons: vec![ReasonCode::GrantedQoS2, ReasonCode::TopicFilterInvalid],
            properties: None,
        }),
    );
    // v3: any failure is 0x80; reserved return codes are rejected.
    let mut out = BytesMut::new();
    let p = SubAck {
        packet_id: 1,
        reasons: vec![ReasonCode::QuotaExceeded],
        properties: None,
    };
    encode(&Packet::SubAck(p), V3_1_1, &mut out).unwrap();
    assert_eq!(&out[..], &[0x90, 0x03, 0x00, 0x01, 0x80]);
    malformed(&[0x90, 0x03, 0x00, 0x01, 0x03], V3_1_1);
    malformed(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x11], V5);
    protocol(&[0x90, 0x02, 0x00, 0x01], V3_1_1);
}

// ---------------------------------------------------------------- UNSUBSCRIBE / UNSUBACK

#[test]
fn unsubscribe_and_unsuback() {
    canonical(
        &[0xA2, 0x05, 0x00, 0x0C, 0x00, 0x01, b'a'],
        V3_1_1,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 12,
            filters: vec![s("a")],
            properties: None,
        }),
    );
    canonical(
        &[0xA2, 0x06, 0x00, 0x0C, 0x00, 0x00, 0x01, b'+'],
        V5,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 12,
            filters: vec![s("+")],
            properties: None,
        }),
    );
    canonical(
        &[0xB0, 0x02, 0x00, 0x0C],
        V3_1_1,
        Packet::UnsubAck(UnsubAck {
            packet_id: 12,
            reasons: vec![],
            properties: None,
        }),
    );
    canonical(
        &[0xB0, 0x05, 0x00, 0x0C, 0x00, 0x11, 0x00],
        V5,
        Packet::UnsubAck(UnsubAck {
            packet_id: 12,
            reasons: vec![ReasonCode::NoSubscriptionExisted, ReasonCode::Success],
            properties: None,
        }),
    );
    malformed(&[0xA0, 0x05, 0x00, 0x0C, 0x00, 0x01, b'a'], V3_1_1);
    protocol(&[0xA2, 0x02, 0x00, 0x0C], V3_1_1);
    assert!(matches!(
        err(&[0xA2, 0x06, 0x00, 0x0C, 0x00, 0x02, b'a', b'#'], V3_1_1),
        DecodeError::TopicFilterInvalid(_)
    ));
    malformed(&[0xB0, 0x03, 0x00, 0x0C, 0x00], V3_1_1);
    malformed(&[0xB0, 0x04, 0x00, 0x0C, 0x00, 0x10], V5);
    protocol(&[0xB0, 0x03, 0x00, 0x0C, 0x00], V5);
}

// ---------------------------------------------------------------- PING, DISCONNECT, AUTH

#[test]
fn ping_disconnect_auth() {
    for v in [V3_1, V3_1_1, V5] {
        canonical(&[0xC0, 0x00], v, Packet::PingReq);
        canonical(&[0xD0, 0x00], v, Packet::PingResp);
        canonical(
            &[0xE0, 0x00],
            v,
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::Success,
                properties: None,
            }),
        );
        malformed(&[0xC1, 0x00], v);
        malformed(&[0xC0, 0x01, 0x00], v);
        malformed(&[0xD0, 0x01, 0x00], v);
    }
    canonical(
        &[0xE0, 0x01, 0x04],
        V5,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::DisconnectWithWillMessage,
            properties: None,
        }),
    );
    canonical(
        &[0xE0, 0x07, 0x8E, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00],
        V5,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: props(|p| p.session_expiry_interval = Some(0)),
        }),
    );
    malformed(&[0xE0, 0x01, 0x00], V3_1_1);
    malformed(&[0xE0, 0x01, 0x84], V5);
    canonical(
        &[0xF0, 0x00],
        V5,
        Packet::Auth(Auth {
            reason: ReasonCode::Success,
            properties: None,
        }),
    );
    canonical(
        &[
            0xF0, 0x0A, 0x18, 0x08, 0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M',
        ],
        V5,
        Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: props(|p| p.authentication_method = Some(s("SCRAM"))),
        }),
    );
    // AUTH does not exist before 5.0; authentication data needs a method.
    malformed(&[0xF0, 0x00], V3_1_1);
    protocol(&[0xF0, 0x06, 0x18, 0x04, 0x16, 0x00, 0x01, b'x'], V5);
    let mut out = BytesMut::new();
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::Success,
        properties: None,
    });
    assert!(matches!(
        encode(&auth, V3_1_1, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    assert!(out.is_empty());
}

// ---------------------------------------------------------------- fixed header and sizes

#[test]
fn fixed_header_rules() {
    // Reserved type 0.
    malformed(&[0x00, 0x00], V3_1_1);
    // Remaining length in more than 4 bytes, and overlong forms [MQTT-1.5.5-1].
    malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V5);
    malformed(&[0xC0, 0x80, 0x00], V5);
    // An incomplete header is "need more", not an error.
    assert_eq!(frame_len(&[0x30, 0xFF, 0xFF], 0), Ok(None));
    assert_eq!(frame_len(&[], 0), Ok(None));
    assert_eq!(frame_len(&[0x30, 0xFF, 0x7F], 0), Ok(Some(3 + 16_383)));
}

#[test]
fn oversized_frame_rejected_before_body_arrives() {
    // Header announcing 200 bytes against a 100-byte limit: rejected with only the header buffered.
    let mut d = Decoder::new_client(V5, 100);
    let mut buf = BytesMut::from(&[0x30, 0xC8, 0x01][..]);
    assert_eq!(
        d.decode(&mut buf),
        Err(DecodeError::PacketTooLarge {
            size: 203,
            max: 100
        })
    );
    assert_eq!(
        DecodeError::PacketTooLarge {
            size: 203,
            max: 100
        }
        .reason_code(),
        ReasonCode::PacketTooLarge
    );
    // The maximum is checked against the whole frame: 98 + 2 header bytes fits exactly, 99 does not.
    assert_eq!(frame_len(&[0x30, 98], 100), Ok(Some(100)));
    assert!(frame_len(&[0x30, 99], 100).is_err());
    // The largest remaining length the protocol allows, announced in 5 header bytes, on a server expecting
    // CONNECT: refused at once.
    let mut d = Decoder::new_server(1 << 20);
    let mut buf = BytesMut::from(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert!(matches!(
        d.decode(&mut buf),
        Err(DecodeError::PacketTooLarge { .. })
    ));
    // Raising the limit lets the same header through as "need more".
    d.set_max_packet_size(0);
    let mut buf = BytesMut::from(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    let capacity = buf.capacity();
    assert_eq!(d.decode(&mut buf), Ok(None));
    // Waiting for a 256 MiB body reserves nothing: buffering is the caller's decision.
    assert_eq!(buf.capacity(), capacity);
    assert_eq!(buf.len(), 5);
}

// ---------------------------------------------------------------- Decoder state and direction

#[test]
fn decoder_state_and_direction() {
    let connect = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0A, 0x00, 0x01, b'x',
    ];
    let mut d = Decoder::new_server(1024);
    // Before CONNECT, anything else is refused from its first byte [MQTT-3.1.0-1].
    assert!(matches!(
        d.decode(&mut BytesMut::from(&[0x30][..])),
        Err(DecodeError::Protocol(_))
    ));
    assert!(d
        .decode(&mut BytesMut::from(&connect[..]))
        .unwrap()
        .is_some());
    assert_eq!(d.version(), Some(V3_1_1));
    // A second CONNECT [MQTT-3.1.0-2] and server-only packets from a client are protocol errors.
    assert!(matches!(
        d.decode(&mut BytesMut::from(&connect[..])),
        Err(DecodeError::Protocol(_))
    ));
    assert!(matches!(
        d.decode(&mut BytesMut::from(&[0x20, 0x02, 0x00, 0x00][..])),
        Err(DecodeError::Protocol(_))
    ));
    assert!(matches!(
        d.decode(&mut BytesMut::from(&[0xD0, 0x00][..])),
        Err(DecodeError::Protocol(_))
    ));
    // A client must not send a subscription identifier in PUBLISH [MQTT-3.3.4-6].
    let mut d5 = Decoder::new_server(1024);
    let connect5 = [
        0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x0A, 0x00, 0x00, 0x01,
        b'x',
    ];
    assert!(d5
        .decode(&mut BytesMut::from(&connect5[..]))
        .unwrap()
        .is_some());
    let publish = [0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x0B, 0x01];
    assert!(matches!(
        d5.decode(&mut BytesMut::from(&publish[..])),
        Err(DecodeError::Protocol(_))
    ));
    // ...while a client decoder accepts it, and refuses client-only packets.
    let mut c = Decoder::new_client(V5, 1024);
    assert!(c
        .decode(&mut BytesMut::from(&publish[..]))
        .unwrap()
        .is_some());
    assert!(matches!(
        c.decode(&mut BytesMut::from(&[0xC0, 0x00][..])),
        Err(DecodeError::Protocol(_))
    ));
    assert!(matches!(
        c.decode(&mut BytesMut::from(&connect[..])),
        Err(DecodeError::Protocol(_))
    ));
}

// ---------------------------------------------------------------- encoder limits

#[test]
fn encode_limited_drops_diagnostics_then_refuses() {
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::NotAuthorized,
        properties: props(|p| {
            p.reason_string = Some(ByteString::from("x".repeat(100)));
            p.user_properties.push((s("k"), s("v")));
            p.maximum_qos = Some(1);
        }),
    });
    let mut out = BytesMut::new();
    encode_limited(&ack, V5, 20, &mut out).unwrap();
    // The reason string and user property were dropped; Maximum QoS stays.
    assert_eq!(&out[..], &[0x20, 0x05, 0x00, 0x87, 0x02, 0x24, 0x01]);

    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("t"),
        packet_id: 0,
        properties: None,
        payload: Bytes::from(vec![0u8; 100]),
    });
    let mut out = BytesMut::new();
    assert_eq!(
        encode_limited(&publish, V5, 100, &mut out),
        Err(EncodeError::PacketTooLarge {
            size: 106,
            max: 100
        })
    );
    assert!(out.is_empty(), "nothing written on error");
    assert_eq!(encoded_len(&publish, V5), 106);
    encode_limited(&publish, V5, 106, &mut out).unwrap();
    assert_eq!(out.len(), 106);
}

#[test]
fn encoder_refuses_what_the_wire_cannot_carry() {
    let mut out = BytesMut::new();
    let long = ByteString::from("a".repeat(65_536));
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: long,
        packet_id: 0,
        properties: None,
        payload: Bytes::new(),
    });
    assert!(matches!(
        encode(&p, V3_1_1, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    let p = Packet::PubAck(PubResp {
        packet_id: 0,
        reason: ReasonCode::Success,
        properties: None,
    });
    assert!(matches!(
        encode(&p, V5, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    // Topic alias is a PUBLISH property; putting it on a SUBSCRIBE is refused.
    let p = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: s("a"),
            options: SubscriptionOptions::default(),
        }],
        properties: props(|p| p.topic_alias = Some(1)),
    });
    assert!(matches!(
        encode(&p, V5, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    // PUBREL cannot carry 0x10.
    let p = Packet::PubRel(PubResp {
        packet_id: 1,
        reason: ReasonCode::NoMatchingSubscribers,
        properties: None,
    });
    assert!(matches!(
        encode(&p, V5, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    assert!(out.is_empty());
}

// ---------------------------------------------------------------- bridge flag (0x80 | level)

/// mosquitto's `try_private`: a bridge sends level 0x84 (3.1.1) or 0x83 (3.1); it decodes as that version with
/// `bridge` set, and encodes back to the same byte.
#[test]
fn connect_with_the_bridge_flag() {
    for (name, level, v) in [(&b"MQTT"[..], 0x84u8, V3_1_1), (&b"MQIsdp"[..], 0x83, V3_1)] {
        let mut bytes = vec![0x10, 0];
        bytes.extend_from_slice(&[0, name.len() as u8]);
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&[level, 0x00, 0x00, 0x3C, 0x00, 0x03, b'b', b'r', b'1']);
        bytes[1] = (bytes.len() - 2) as u8;
        canonical(
            &bytes,
            v,
            Packet::Connect(Box::new(Connect {
                protocol: v,
                bridge: true,
                clean_start: false,
                keep_alive: 60,
                client_id: s("br1"),
                will: None,
                username: None,
                password: None,
                properties: None,
            })),
        );
    }
    // The same packet without the flag is a plain client.
    let plain = [
        0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'b',
        b'r', b'1',
    ];
    match decode(&plain, V3_1_1) {
        Ok(Some(Packet::Connect(c))) => assert!(!c.bridge),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_bridge_flag_is_not_a_v5_level() {
    // v5 has No Local instead: 0x85 stays an unknown level, and so does 0x80 | an unknown level.
    for level in [0x85u8, 0x86, 0x80] {
        let bytes = [
            0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x3C, 0x00, 0x03,
            b'b', b'r', b'1',
        ];
        assert_eq!(
            err(&bytes, V3_1_1),
            DecodeError::UnsupportedProtocolVersion(level)
        );
    }
    // A v5 CONNECT with `bridge` set is written without the flag (it cannot carry one).
    let c = Packet::Connect(Box::new(Connect {
        protocol: V5,
        bridge: true,
        clean_start: true,
        keep_alive: 10,
        client_id: s("b"),
        will: None,
        username: None,
        password: None,
        properties: None,
    }));
    let mut out = BytesMut::new();
    encode(&c, V5, &mut out).unwrap();
    assert_eq!(out[8], 5);
}
