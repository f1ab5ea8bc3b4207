//! Basic encode -> decode round trips of every packet type in every protocol version.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use coremq::codec::*;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fn s(v: &'static str) -> ByteString {
    ByteString::from_static(v)
}

fn props(v5: bool, f: impl FnOnce(&mut Properties)) -> Props {
    if !v5 {
        return None;
    }
    let mut p = Properties::default();
    f(&mut p);
    Some(Box::new(p))
}

fn sample_packets(v: ProtocolVersion) -> Vec<Packet> {
    let v5 = v.is_v5();
    let user = |p: &mut Properties| p.user_properties.push((s("k"), s("v")));
    vec![
        Packet::Connect(Box::new(Connect {
            protocol: v,
            bridge: false,
            clean_start: true,
            keep_alive: 30,
            client_id: s("client-1"),
            will: Some(Will {
                topic: s("last/will"),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: props(v5, |p| p.will_delay_interval = Some(5)),
            }),
            username: Some(s("user")),
            password: Some(Bytes::from_static(b"pw")),
            properties: props(v5, |p| {
                p.session_expiry_interval = Some(60);
                p.receive_maximum = Some(10);
            }),
        })),
        Packet::ConnAck(ConnAck {
            session_present: v != ProtocolVersion::V3_1,
            reason: ReasonCode::Success,
            properties: props(v5, |p| p.assigned_client_identifier = Some(s("auto-1"))),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: s("a/b"),
            packet_id: 7,
            properties: props(v5, |p| p.message_expiry_interval = Some(9)),
            payload: Bytes::from_static(b"hello"),
        }),
        Packet::PubAck(PubResp {
            packet_id: 1,
            reason: ReasonCode::Success,
            properties: None,
        }),
        Packet::PubRec(PubResp {
            packet_id: 2,
            reason: if v5 {
                ReasonCode::NoMatchingSubscribers
            } else {
                ReasonCode::Success
            },
            properties: None,
        }),
        Packet::PubRel(PubResp {
            packet_id: 3,
            reason: ReasonCode::Success,
            properties: props(v5, user),
        }),
        Packet::PubComp(PubResp {
            packet_id: 4,
            reason: ReasonCode::Success,
            properties: None,
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 5,
            filters: vec![
                SubscribeFilter {
                    filter: s("a/+"),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                },
                SubscribeFilter {
                    filter: s("$share/g/b/#"),
                    options: SubscriptionOptions::default(),
                },
            ],
            properties: props(v5, |p| p.subscription_identifiers.push(42)),
        }),
        Packet::SubAck(SubAck {
            packet_id: 5,
            reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::Success],
            properties: None,
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 6,
            filters: vec![s("a/+")],
            properties: props(v5, user),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 6,
            reasons: if v5 {
                vec![ReasonCode::Success]
            } else {
                vec![]
            },
            properties: None,
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: None,
        }),
    ]
}

#[test]
fn every_packet_round_trips_in_every_version() {
    for v in VERSIONS {
        let mut packets = sample_packets(v);
        if v.is_v5() {
            packets.push(Packet::Auth(Auth {
                reason: ReasonCode::ContinueAuthentication,
                properties: props(true, |p| p.authentication_method = Some(s("SCRAM"))),
            }));
        }
        for p in packets {
            let mut buf = BytesMut::new();
            encode(&p, v, &mut buf).unwrap_or_else(|e| panic!("{v:?} {p:?}: {e}"));
            assert_eq!(buf.len(), encoded_len(&p, v), "{v:?} {p:?}");
            assert_eq!(frame_len(&buf, 0).unwrap(), Some(buf.len()));
            let got = decode_packet(&mut buf, v, 1 << 20)
                .unwrap()
                .expect("complete packet");
            assert_eq!(got, p, "{v:?}");
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn partial_input_needs_more_and_consumes_nothing() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("t"),
        packet_id: 1,
        properties: None,
        payload: Bytes::from(vec![7u8; 300]),
    });
    let mut whole = BytesMut::new();
    encode(&p, ProtocolVersion::V5, &mut whole).unwrap();
    for cut in 0..whole.len() {
        let mut part = BytesMut::from(&whole[..cut]);
        assert_eq!(
            decode_packet(&mut part, ProtocolVersion::V5, 0).unwrap(),
            None,
            "cut {cut}"
        );
        assert_eq!(part.len(), cut);
    }
}

#[test]
fn server_decoder_learns_version_from_connect() {
    let connect = Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        bridge: false,
        clean_start: true,
        keep_alive: 0,
        client_id: s(""),
        will: None,
        username: None,
        password: None,
        properties: None,
    }));
    let mut buf = BytesMut::new();
    encode(&connect, ProtocolVersion::V3_1_1, &mut buf).unwrap();
    encode(&Packet::PingReq, ProtocolVersion::V5, &mut buf).unwrap();
    let mut d = Decoder::new_server(1024);
    assert_eq!(d.version(), None);
    assert_eq!(d.decode(&mut buf).unwrap(), Some(connect));
    assert_eq!(d.version(), Some(ProtocolVersion::V5));
    assert_eq!(d.decode(&mut buf).unwrap(), Some(Packet::PingReq));
    assert_eq!(d.decode(&mut buf).unwrap(), None);
}

#[test]
fn server_decoder_rejects_non_connect_first() {
    let mut buf = BytesMut::from(&[0xC0u8, 0x00][..]);
    let mut d = Decoder::new_server(1024);
    assert!(matches!(d.decode(&mut buf), Err(DecodeError::Protocol(_))));
}
