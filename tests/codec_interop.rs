//! Interop with real clients: rumqttc (MQTT 3.1.1 and 5) talks to a minimal echo server built only from this
//! codec over a loopback socket. The server decodes whatever the client sends with `Decoder::new_server`, answers
//! with codec-encoded acks, and echoes each PUBLISH back to the subscribed client, so both directions of every
//! packet type rumqttc uses go through the codec. When mosquitto_pub/mosquitto_sub are installed the same server
//! is exercised with them too (skipped, with a note, when they are not).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use coremq::codec::topic::topic_matches;
use coremq::codec::*;

/// Upper bound on reads per connection so a misbehaving client cannot keep the test running.
const MAX_READS: usize = 10_000;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve one connection; return every packet the client sent. Panics (failing the test) on any decode error.
fn serve_one(listener: TcpListener) -> Vec<Packet> {
    let (mut sock, _) = listener.accept().expect("accept");
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    sock.set_nodelay(true).unwrap();
    let mut decoder = Decoder::new_server(1 << 20);
    let mut inbuf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut seen = Vec::new();
    let mut subs: Vec<(ByteString, QoS)> = Vec::new();
    let mut next_id: u16 = 1;
    for _ in 0..MAX_READS {
        let n = match sock.read(&mut chunk) {
            Ok(0) | Err(_) => return seen,
            Ok(n) => n,
        };
        inbuf.extend_from_slice(&chunk[..n]);
        while let Some(packet) = decoder
            .decode(&mut inbuf)
            .expect("client sent a packet the codec rejects")
        {
            let v = decoder.version().expect("CONNECT came first");
            let mut out = BytesMut::new();
            let ok = ReasonCode::Success;
            match &packet {
                Packet::Connect(_) => {
                    let ack = ConnAck {
                        session_present: false,
                        reason: ok,
                        properties: None,
                    };
                    encode(&Packet::ConnAck(ack), v, &mut out).unwrap();
                }
                Packet::Subscribe(s) => {
                    let mut reasons = Vec::new();
                    for f in &s.filters {
                        subs.push((f.filter.clone(), f.options.qos));
                        reasons.push(match f.options.qos {
                            QoS::AtMostOnce => ReasonCode::Success,
                            QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                            QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                        });
                    }
                    let ack = SubAck {
                        packet_id: s.packet_id,
                        reasons,
                        properties: None,
                    };
                    encode(&Packet::SubAck(ack), v, &mut out).unwrap();
                }
                Packet::Unsubscribe(u) => {
                    subs.retain(|(f, _)| !u.filters.contains(f));
                    let reasons = vec![ok; u.filters.len()];
                    let ack = UnsubAck {
                        packet_id: u.packet_id,
                        reasons,
                        properties: None,
                    };
                    encode(&Packet::UnsubAck(ack), v, &mut out).unwrap();
                }
                Packet::Publish(p) => {
                    let resp = PubResp {
                        packet_id: p.packet_id,
                        reason: ok,
                        properties: None,
                    };
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => encode(&Packet::PubAck(resp), v, &mut out).unwrap(),
                        QoS::ExactlyOnce => encode(&Packet::PubRec(resp), v, &mut out).unwrap(),
                    }
                    for (filter, sub_qos) in &subs {
                        if !topic_matches(filter, &p.topic) {
                            continue;
                        }
                        let qos = p.qos.min(*sub_qos);
                        let packet_id = if qos == QoS::AtMostOnce {
                            0
                        } else {
                            next_id = next_id.checked_add(1).unwrap_or(1);
                            next_id
                        };
                        let echo = Publish {
                            dup: false,
                            qos,
                            retain: false,
                            packet_id,
                            ..p.clone()
                        };
                        encode_publish(&echo, v, &mut out).unwrap();
                    }
                }
                Packet::PubRel(r) => {
                    let resp = PubResp {
                        packet_id: r.packet_id,
                        reason: ok,
                        properties: None,
                    };
                    encode(&Packet::PubComp(resp), v, &mut out).unwrap();
                }
                Packet::PubRec(r) => {
                    let resp = PubResp {
                        packet_id: r.packet_id,
                        reason: ok,
                        properties: None,
                    };
                    encode(&Packet::PubRel(resp), v, &mut out).unwrap();
                }
                Packet::PingReq => encode(&Packet::PingResp, v, &mut out).unwrap(),
                _ => {}
            }
            if !out.is_empty() {
                sock.write_all(&out).expect("write to client");
            }
            let done = matches!(packet, Packet::Disconnect(_));
            seen.push(packet);
            if done {
                return seen;
            }
        }
    }
    seen
}

fn start_server() -> (u16, thread::JoinHandle<Vec<Packet>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (port, thread::spawn(move || serve_one(listener)))
}

fn count<F: Fn(&Packet) -> bool>(seen: &[Packet], f: F) -> usize {
    seen.iter().filter(|p| f(p)).count()
}

#[test]
fn rumqttc_v311_through_codec() {
    use rumqttc::{Client, Event, Incoming, MqttOptions, QoS as RQoS};
    let (port, server) = start_server();
    let mut opts = MqttOptions::new("interop-v311", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_credentials("user", "pass");
    let (client, mut conn) = Client::new(opts, 16);
    client.subscribe("interop/#", RQoS::ExactlyOnce).unwrap();
    client
        .publish("interop/q0", RQoS::AtMostOnce, false, b"zero".to_vec())
        .unwrap();
    client
        .publish("interop/q1", RQoS::AtLeastOnce, false, b"one".to_vec())
        .unwrap();
    client
        .publish("interop/q2", RQoS::ExactlyOnce, false, vec![2u8; 3000])
        .unwrap();

    let mut received = Vec::new();
    let mut unsubscribed = false;
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                received.push((p.topic.clone(), p.qos, p.payload.clone()));
                if received.len() == 3 {
                    client.unsubscribe("interop/#").unwrap();
                }
            }
            Ok(Ok(Event::Incoming(Incoming::UnsubAck(_)))) => {
                unsubscribed = true;
                client.disconnect().unwrap();
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break, // connection closed after DISCONNECT
            Err(_) => {}
        }
    }
    let seen = server.join().expect("server thread");
    assert!(unsubscribed, "UNSUBACK not received; got {received:?}");
    received.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(received.len(), 3);
    assert_eq!(
        received[0],
        (
            "interop/q0".into(),
            RQoS::AtMostOnce,
            Bytes::from_static(b"zero")
        )
    );
    assert_eq!(
        received[1],
        (
            "interop/q1".into(),
            RQoS::AtLeastOnce,
            Bytes::from_static(b"one")
        )
    );
    assert_eq!(
        received[2],
        (
            "interop/q2".into(),
            RQoS::ExactlyOnce,
            Bytes::from(vec![2u8; 3000])
        )
    );

    match &seen[0] {
        Packet::Connect(c) => {
            assert_eq!(c.protocol, ProtocolVersion::V3_1_1);
            assert_eq!(&c.client_id[..], "interop-v311");
            assert_eq!(c.username.as_deref(), Some("user"));
            assert_eq!(c.password.as_deref(), Some(&b"pass"[..]));
        }
        other => panic!("first packet {other:?}"),
    }
    assert_eq!(count(&seen, |p| matches!(p, Packet::Publish(_))), 3);
    // Acks rumqttc sent for the echoed QoS 1 and QoS 2 messages, and the PUBREL of its own QoS 2 publish.
    assert_eq!(count(&seen, |p| matches!(p, Packet::PubAck(_))), 1);
    assert_eq!(count(&seen, |p| matches!(p, Packet::PubRec(_))), 1);
    assert_eq!(count(&seen, |p| matches!(p, Packet::PubRel(_))), 1);
    assert_eq!(count(&seen, |p| matches!(p, Packet::PubComp(_))), 1);
    assert!(matches!(seen.last(), Some(Packet::Disconnect(_))));
}

#[test]
fn rumqttc_v5_through_codec() {
    use rumqttc::v5::mqttbytes::v5::{Packet as RPacket, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::{Client, Event, MqttOptions};
    let (port, server) = start_server();
    let mut opts = MqttOptions::new("interop-v5", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 16);
    client.subscribe("interop5/+", RQoS::AtLeastOnce).unwrap();
    let props = PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        message_expiry_interval: Some(30),
        ..Default::default()
    };
    client
        .publish_with_properties(
            "interop5/a",
            RQoS::AtLeastOnce,
            false,
            b"hello".to_vec(),
            props,
        )
        .unwrap();
    client
        .publish("interop5/b", RQoS::ExactlyOnce, false, b"world".to_vec())
        .unwrap();

    let mut received = Vec::new();
    let mut unsubscribed = false;
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(RPacket::Publish(p)))) => {
                received.push(p);
                if received.len() == 2 {
                    client.unsubscribe("interop5/+").unwrap();
                }
            }
            Ok(Ok(Event::Incoming(RPacket::UnsubAck(_)))) => {
                unsubscribed = true;
                client.disconnect().unwrap();
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    let seen = server.join().expect("server thread");
    assert!(unsubscribed, "UNSUBACK not received");
    received.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(received.len(), 2);
    assert_eq!(&received[0].payload[..], b"hello");
    assert_eq!(received[0].qos, RQoS::AtLeastOnce);
    let echoed = received[0].properties.as_ref().expect("properties echoed");
    assert_eq!(echoed.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        echoed.user_properties,
        vec![("k".to_string(), "v".to_string())]
    );
    assert_eq!(&received[1].payload[..], b"world");
    // Subscribed at QoS 1, so the QoS 2 publish comes back at QoS 1.
    assert_eq!(received[1].qos, RQoS::AtLeastOnce);

    match &seen[0] {
        Packet::Connect(c) => assert_eq!(c.protocol, ProtocolVersion::V5),
        other => panic!("first packet {other:?}"),
    }
    let first_pub = seen.iter().find_map(|p| match p {
        Packet::Publish(p) if &p.topic[..] == "interop5/a" => Some(p),
        _ => None,
    });
    let props = first_pub
        .and_then(|p| p.properties.as_ref())
        .expect("v5 properties decoded");
    assert_eq!(props.message_expiry_interval, Some(30));
    assert_eq!(props.user_properties.len(), 1);
    assert!(matches!(seen.last(), Some(Packet::Disconnect(_))));
}

fn have(bin: &str) -> bool {
    Command::new(bin).arg("--help").output().is_ok()
}

/// mosquitto_pub in 3.1, 3.1.1 and 5 (with will, credentials, QoS 2, retain) against the codec echo server.
#[test]
fn mosquitto_clients_through_codec() {
    if !have("mosquitto_pub") {
        eprintln!("SKIPPED: mosquitto_pub not installed (apt-get install -y mosquitto-clients)");
        return;
    }
    for (flag, version) in [
        ("mqttv31", ProtocolVersion::V3_1),
        ("mqttv311", ProtocolVersion::V3_1_1),
        ("mqttv5", ProtocolVersion::V5),
    ] {
        let (port, server) = start_server();
        let out = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-V",
                flag,
                "-q",
                "2",
                "-r",
            ])
            .args([
                "-t",
                "mosq/pub",
                "-m",
                "from mosquitto",
                "-i",
                "mosq-client",
                "-u",
                "u",
                "-P",
                "p",
            ])
            .args([
                "--will-topic",
                "mosq/will",
                "--will-payload",
                "gone",
                "--will-qos",
                "1",
            ])
            .output()
            .expect("run mosquitto_pub");
        assert!(
            out.status.success(),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = server.join().expect("server thread");
        let Packet::Connect(c) = &seen[0] else {
            panic!("{flag}: first packet {:?}", seen[0])
        };
        assert_eq!(c.protocol, version);
        assert_eq!(&c.client_id[..], "mosq-client");
        let will = c.will.as_ref().expect("will");
        assert_eq!(
            (&will.topic[..], &will.payload[..], will.qos),
            ("mosq/will", &b"gone"[..], QoS::AtLeastOnce)
        );
        let p = seen
            .iter()
            .find_map(|p| {
                if let Packet::Publish(p) = p {
                    Some(p)
                } else {
                    None
                }
            })
            .expect("publish");
        assert_eq!(
            (&p.topic[..], &p.payload[..], p.qos, p.retain),
            ("mosq/pub", &b"from mosquitto"[..], QoS::ExactlyOnce, true)
        );
        assert_eq!(
            count(&seen, |p| matches!(p, Packet::PubRel(_))),
            1,
            "{flag}"
        );
        assert!(matches!(seen.last(), Some(Packet::Disconnect(_))), "{flag}");
    }
}

/// mosquitto_sub decodes a PUBLISH this codec encoded, and acknowledges it with a PUBACK the codec decodes.
#[test]
fn mosquitto_sub_receives_codec_encoded_publish() {
    if !have("mosquitto_sub") {
        eprintln!("SKIPPED: mosquitto_sub not installed (apt-get install -y mosquitto-clients)");
        return;
    }
    for flag in ["mqttv311", "mqttv5"] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Server: CONNACK, SUBACK, then one QoS 1 PUBLISH to the subscriber; waits for its PUBACK.
        let server = thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut d = Decoder::new_server(1 << 20);
            let mut buf = BytesMut::new();
            let mut chunk = [0u8; 4096];
            let mut seen = Vec::new();
            for _ in 0..MAX_READS {
                let n = match sock.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(p) = d.decode(&mut buf).expect("valid packet") {
                    let v = d.version().unwrap();
                    let mut out = BytesMut::new();
                    match &p {
                        Packet::Connect(_) => encode(
                            &Packet::ConnAck(ConnAck {
                                session_present: false,
                                reason: ReasonCode::Success,
                                properties: None,
                            }),
                            v,
                            &mut out,
                        )
                        .unwrap(),
                        Packet::Subscribe(s) => {
                            let ack = SubAck {
                                packet_id: s.packet_id,
                                reasons: vec![ReasonCode::GrantedQoS1],
                                properties: None,
                            };
                            encode(&Packet::SubAck(ack), v, &mut out).unwrap();
                            let msg = Publish {
                                dup: false,
                                qos: QoS::AtLeastOnce,
                                retain: false,
                                topic: ByteString::from_static("mosq/sub"),
                                packet_id: 77,
                                properties: None,
                                payload: Bytes::from_static(b"encoded by coremq"),
                            };
                            encode_publish(&msg, v, &mut out).unwrap();
                        }
                        _ => {}
                    }
                    sock.write_all(&out).unwrap();
                    let done = matches!(p, Packet::Disconnect(_));
                    seen.push(p);
                    if done {
                        return seen;
                    }
                }
            }
            seen
        });
        let out = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-V",
                flag,
                "-q",
                "1",
                "-t",
                "mosq/#",
                "-C",
                "1",
            ])
            .args(["-W", "10"])
            .output()
            .expect("run mosquitto_sub");
        assert!(
            out.status.success(),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "encoded by coremq",
            "{flag}"
        );
        let seen = server.join().expect("server thread");
        let ack = seen.iter().find_map(|p| {
            if let Packet::PubAck(a) = p {
                Some(a.packet_id)
            } else {
                None
            }
        });
        assert_eq!(
            ack,
            Some(77),
            "{flag}: mosquitto_sub acknowledged our PUBLISH"
        );
    }
}
