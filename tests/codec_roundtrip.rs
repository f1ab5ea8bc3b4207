//! Property tests: arbitrary valid packets for each protocol version survive encode -> decode unchanged, are
//! encoded in exactly `encoded_len` bytes, decode identically when fed in arbitrary pieces, and arbitrary bytes
//! never make the decoder panic.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use coremq::codec::*;
use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;

/// Where a property block sits; the test's own reading of the spec's allowed-per-packet table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

fn text() -> impl Strategy<Value = ByteString> {
    // Printable characters from all of Unicode, never U+0000.
    "\\PC{0,8}".prop_map(ByteString::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn topic_name() -> impl Strategy<Value = ByteString> {
    "[a-zé$/ ]{1,12}".prop_map(ByteString::from)
}

fn plain_filter() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(prop_oneof![Just("+".to_string()), "[a-zü]{0,3}"], 1..4),
        any::<bool>(),
    )
        .prop_map(|(levels, hash)| {
            let mut f = levels.join("/");
            if f.is_empty() {
                // A single empty level is no filter at all; "/" is two empty levels.
                f.push('/');
            }
            if hash {
                f.push_str("/#");
            }
            f
        })
}

fn topic_filter(shared_ok: bool) -> BoxedStrategy<ByteString> {
    let plain = prop_oneof![plain_filter(), Just("#".to_string())];
    if shared_ok {
        prop_oneof![
            3 => plain.prop_map(ByteString::from),
            1 => ("[a-z]{1,4}", plain_filter()).prop_map(|(g, f)| ByteString::from(format!("$share/{g}/{f}"))),
        ]
        .boxed()
    } else {
        plain.prop_map(ByteString::from).boxed()
    }
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    proptest::option::of(0u8..=1)
}

fn nonzero_u16() -> impl Strategy<Value = Option<u16>> {
    proptest::option::of(1u16..)
}

/// Arbitrary properties holding only what `ctx` allows.
fn properties(ctx: Ctx) -> BoxedStrategy<Props> {
    use Ctx::*;
    let message = (
        flag(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(topic_name()),
        proptest::option::of(binary()),
    );
    let session = (
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(text()),
        proptest::option::of(binary()),
        flag(),
        proptest::option::of(any::<u32>()),
        flag(),
    );
    let server = (
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        nonzero_u16(),
        proptest::option::of(any::<u16>()),
        nonzero_u16(),
        flag(),
        flag(),
    );
    let misc = (
        proptest::collection::vec((text(), text()), 0..3),
        proptest::option::of(1u32..),
        flag(),
        flag(),
        flag(),
        proptest::collection::vec(1u32..=268_435_455, 0..3),
    );
    (message, session, server, misc)
        .prop_map(move |(m, s, v, x)| {
            let publish_like = matches!(ctx, Will | Publish);
            let mut p = Properties::default();
            if publish_like {
                p.payload_format_indicator = m.0;
                p.message_expiry_interval = m.1;
                p.content_type = m.2;
                p.response_topic = m.3;
                p.correlation_data = m.4;
            }
            if matches!(ctx, Connect | ConnAck | Disconnect) {
                p.session_expiry_interval = s.0;
            }
            if ctx == ConnAck {
                p.assigned_client_identifier = s.1;
                p.server_keep_alive = s.2;
                p.response_information = v.0;
                p.maximum_qos = v.6;
                p.retain_available = v.7;
                p.wildcard_subscription_available = x.2;
                p.subscription_identifier_available = x.3;
                p.shared_subscription_available = x.4;
            }
            if matches!(ctx, Connect | ConnAck | Auth) {
                p.authentication_method = s.3;
                // Authentication data without a method is a protocol error: only send it alongside one.
                if p.authentication_method.is_some() {
                    p.authentication_data = s.4;
                }
            }
            if ctx == Connect {
                p.request_problem_information = s.5;
                p.request_response_information = s.7;
            }
            if ctx == Will {
                p.will_delay_interval = s.6;
            }
            if matches!(ctx, ConnAck | Disconnect) {
                p.server_reference = v.1;
            }
            if matches!(
                ctx,
                ConnAck | PubResp | SubAck | UnsubAck | Disconnect | Auth
            ) {
                p.reason_string = v.2;
            }
            if matches!(ctx, Connect | ConnAck) {
                p.receive_maximum = v.3;
                p.topic_alias_maximum = v.4;
                p.maximum_packet_size = x.1;
            }
            if ctx == Publish {
                p.topic_alias = v.5;
                p.subscription_identifiers = x.5.clone();
            }
            if ctx == Subscribe {
                p.subscription_identifiers = x.5.iter().take(1).copied().collect();
            }
            p.user_properties = x.0;
            if p == Properties::default() {
                None
            } else {
                Some(Box::new(p))
            }
        })
        .boxed()
}

fn props_for(v5: bool, ctx: Ctx) -> BoxedStrategy<Props> {
    if v5 {
        properties(ctx)
    } else {
        Just(None).boxed()
    }
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn reason_in(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(codes).prop_map(|c| ReasonCode::from_u8(c).expect("defined code"))
}

const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const CONNACK_V3: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
const PUBACK_V5: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_V5: &[u8] = &[0x00, 0x92];
const SUBACK_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_V5: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_V5: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_V5: &[u8] = &[0x00, 0x18, 0x19];

fn connect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    let will = proptest::option::of(
        (
            topic_name(),
            binary(),
            qos(),
            any::<bool>(),
            props_for(v5, Ctx::Will),
        )
            .prop_map(|(topic, payload, qos, retain, properties)| Will {
                topic,
                payload,
                qos,
                retain,
                properties,
            }),
    );
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        will,
        proptest::option::of(text()),
        proptest::option::of(binary()),
        props_for(v5, Ctx::Connect),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // Before 5.0 a password needs a user name.
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    bridge: false,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
        .boxed()
}

fn publish(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        1u16..,
        props_for(v5, Ctx::Publish),
        binary(),
        any::<bool>(),
    )
        .prop_map(
            move |(dup, qos, retain, topic, id, properties, payload, alias_only)| {
                let qos0 = qos == QoS::AtMostOnce;
                let has_alias = properties.as_ref().is_some_and(|p| p.topic_alias.is_some());
                let topic = if has_alias && alias_only {
                    ByteString::new()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: if qos0 { 0 } else { id },
                    properties,
                    payload,
                })
            },
        )
        .boxed()
}

fn pub_resp(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    let reasons = |codes: &'static [u8]| {
        if v5 {
            reason_in(codes).boxed()
        } else {
            Just(ReasonCode::Success).boxed()
        }
    };
    prop_oneof![
        (1u16.., reasons(PUBACK_V5), props_for(v5, Ctx::PubResp)).prop_map(
            |(packet_id, reason, properties)| Packet::PubAck(PubResp {
                packet_id,
                reason,
                properties
            })
        ),
        (1u16.., reasons(PUBACK_V5), props_for(v5, Ctx::PubResp)).prop_map(
            |(packet_id, reason, properties)| Packet::PubRec(PubResp {
                packet_id,
                reason,
                properties
            })
        ),
        (1u16.., reasons(PUBREL_V5), props_for(v5, Ctx::PubResp)).prop_map(
            |(packet_id, reason, properties)| Packet::PubRel(PubResp {
                packet_id,
                reason,
                properties
            })
        ),
        (1u16.., reasons(PUBREL_V5), props_for(v5, Ctx::PubResp)).prop_map(
            |(packet_id, reason, properties)| Packet::PubComp(PubResp {
                packet_id,
                reason,
                properties
            })
        ),
    ]
    .boxed()
}

fn subscribe(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    let filter = (any::<bool>(), qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_flat_map(
        move |(shared, qos, no_local, rap, rh)| {
            // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
            let no_local = v5 && no_local && !shared;
            let options = SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: v5 && rap,
                retain_handling: match (v5, rh) {
                    (true, 1) => RetainHandling::SendIfNew,
                    (true, 2) => RetainHandling::DoNotSend,
                    _ => RetainHandling::SendAtSubscribe,
                },
            };
            topic_filter(shared).prop_map(move |filter| SubscribeFilter { filter, options })
        },
    );
    (
        1u16..,
        proptest::collection::vec(filter, 1..4),
        props_for(v5, Ctx::Subscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
        .boxed()
}

fn acks(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    let connack_codes = if v5 { CONNACK_V5 } else { CONNACK_V3 };
    let suback_codes = if v5 { SUBACK_V5 } else { SUBACK_V3 };
    let connack = (
        any::<bool>(),
        reason_in(connack_codes),
        props_for(v5, Ctx::ConnAck),
    )
        .prop_map(move |(sp, reason, properties)| {
            let session_present = sp && reason == ReasonCode::Success && v != ProtocolVersion::V3_1;
            Packet::ConnAck(ConnAck {
                session_present,
                reason,
                properties,
            })
        });
    let suback = (
        1u16..,
        proptest::collection::vec(reason_in(suback_codes), 1..5),
        props_for(v5, Ctx::SubAck),
    )
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        });
    let unsub = (
        1u16..,
        proptest::collection::vec(topic_filter(true), 1..4),
        props_for(v5, Ctx::Unsubscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let unsuback = (
        1u16..,
        proptest::collection::vec(reason_in(UNSUBACK_V5), 1..5),
        props_for(v5, Ctx::UnsubAck),
    )
        .prop_map(move |(packet_id, reasons, properties)| {
            let reasons = if v5 { reasons } else { Vec::new() };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons,
                properties,
            })
        });
    let disconnect = (reason_in(DISCONNECT_V5), props_for(v5, Ctx::Disconnect)).prop_map(
        move |(reason, properties)| {
            let reason = if v5 { reason } else { ReasonCode::Success };
            Packet::Disconnect(Disconnect { reason, properties })
        },
    );
    let ping = prop_oneof![Just(Packet::PingReq), Just(Packet::PingResp)];
    let mut all = vec![
        connack.boxed(),
        suback.boxed(),
        unsub.boxed(),
        unsuback.boxed(),
        disconnect.boxed(),
        ping.boxed(),
    ];
    if v5 {
        all.push(
            (reason_in(AUTH_V5), properties(Ctx::Auth))
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(all).boxed()
}

fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    prop_oneof![connect(v), publish(v), pub_resp(v), subscribe(v), acks(v)].boxed()
}

fn check_round_trip(p: &Packet, v: ProtocolVersion, split: usize) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(p, v, &mut buf).map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    prop_assert_eq!(buf.len(), encoded_len(p, v));
    prop_assert_eq!(frame_len(&buf, 0).unwrap(), Some(buf.len()));
    let bytes = buf.clone();
    let got =
        decode_packet(&mut buf, v, 0).map_err(|e| TestCaseError::fail(format!("decode: {e}")))?;
    prop_assert_eq!(got.as_ref(), Some(p));
    prop_assert!(buf.is_empty());

    // Fed in two pieces, the first piece alone is "need more" and consumes nothing.
    let split = split % bytes.len();
    let mut part = BytesMut::from(&bytes[..split]);
    prop_assert_eq!(decode_packet(&mut part, v, 0).unwrap(), None);
    prop_assert_eq!(part.len(), split);
    part.extend_from_slice(&bytes[split..]);
    prop_assert_eq!(decode_packet(&mut part, v, 0).unwrap(), Some(p.clone()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn round_trip_v3_1(p in packet(ProtocolVersion::V3_1), split in any::<usize>()) {
        check_round_trip(&p, ProtocolVersion::V3_1, split)?;
    }

    #[test]
    fn round_trip_v3_1_1(p in packet(ProtocolVersion::V3_1_1), split in any::<usize>()) {
        check_round_trip(&p, ProtocolVersion::V3_1_1, split)?;
    }

    #[test]
    fn round_trip_v5(p in packet(ProtocolVersion::V5), split in any::<usize>()) {
        check_round_trip(&p, ProtocolVersion::V5, split)?;
    }

    /// A stream of packets decodes back in order through the stateful client decoder.
    #[test]
    fn stream_v5(ps in proptest::collection::vec(publish(ProtocolVersion::V5), 1..8)) {
        let mut buf = BytesMut::new();
        for p in &ps {
            encode(p, ProtocolVersion::V5, &mut buf).unwrap();
        }
        let mut d = Decoder::new_client(ProtocolVersion::V5, 0);
        for p in &ps {
            prop_assert_eq!(d.decode(&mut buf).unwrap(), Some(p.clone()));
        }
        prop_assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    /// Arbitrary bytes: a result, never a panic; need-more consumes nothing.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64), level in 3u8..=5) {
        let v = match level { 3 => ProtocolVersion::V3_1, 4 => ProtocolVersion::V3_1_1, _ => ProtocolVersion::V5 };
        let mut buf = BytesMut::from(&data[..]);
        if let Ok(None) = decode_packet(&mut buf, v, 0) {
            prop_assert_eq!(buf.len(), data.len());
        }
        let mut buf = BytesMut::from(&data[..]);
        let _ = Decoder::new_server(0).decode(&mut buf);
    }
}
