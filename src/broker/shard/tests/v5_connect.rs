//! What a CONNECT gets back: Server Keep Alive, Assigned Client Identifier, an authentication method refused with
//! 0x8C; and an MQTT 3.1 (`MQIsdp`) client, whose session works like 3.1.1's.
use super::shared::{frame, output, payloads, publish, subscribe};
use super::*;
use crate::codec::Packet;

const V5: ProtocolVersion = ProtocolVersion::V5;

fn connect(
    shard: &mut Shard,
    v: ProtocolVersion,
    id: &str,
    keep_alive: u16,
    props: Properties,
) -> Vec<Packet> {
    let key = shard.accept(1);
    let c = Connect {
        protocol: v,
        bridge: false,
        clean_start: true,
        keep_alive,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: (v == V5).then(|| Box::new(props)),
    };
    shard.on_bytes(key, &mut frame(&Packet::Connect(Box::new(c)), v));
    output(shard, key, v)
}

fn connack(got: &[Packet]) -> &codec::ConnAck {
    match got.first() {
        Some(Packet::ConnAck(a)) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn server_keep_alive_bounds_a_v5_clients_keep_alive() {
    let mut s = Shard::new(ShardConfig {
        max_keepalive: 10,
        ..ShardConfig::default()
    });
    for (asked, announced) in [(60, Some(10)), (0, Some(10)), (5, None)] {
        let got = connect(&mut s, V5, "ka", asked, Properties::default());
        let a = connack(&got);
        assert_eq!(a.reason, ReasonCode::Success);
        let p = a.properties.as_deref().cloned().unwrap_or_default();
        assert_eq!(p.server_keep_alive, announced, "asked {asked}");
    }
    // Without a bound nothing is announced.
    let mut s = Shard::new(ShardConfig::default());
    let got = connect(&mut s, V5, "ka", 60, Properties::default());
    let p = connack(&got)
        .properties
        .as_deref()
        .cloned()
        .unwrap_or_default();
    assert_eq!(p.server_keep_alive, None);
}

#[test]
fn an_empty_client_id_gets_an_assigned_identifier() {
    let mut s = Shard::new(ShardConfig::default());
    let got = connect(&mut s, V5, "", 30, Properties::default());
    let a = connack(&got);
    assert_eq!(a.reason, ReasonCode::Success);
    let id = a
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone())
        .expect("assigned client identifier");
    assert!(!id.is_empty());
    // A client that chose its own id is not given one.
    let got = connect(&mut s, V5, "mine", 30, Properties::default());
    let p = connack(&got)
        .properties
        .as_deref()
        .cloned()
        .unwrap_or_default();
    assert_eq!(p.assigned_client_identifier, None);
}

#[test]
fn an_authentication_method_is_refused_with_0x8c() {
    let mut s = Shard::new(ShardConfig::default());
    let props = Properties {
        authentication_method: Some("SCRAM-SHA-1".into()),
        ..Properties::default()
    };
    let got = connect(&mut s, V5, "auth", 30, props);
    assert_eq!(connack(&got).reason, ReasonCode::BadAuthenticationMethod);
}

#[test]
fn an_mqtt_3_1_client_subscribes_and_receives() {
    let v31 = ProtocolVersion::V3_1;
    let mut s = Shard::new(ShardConfig::default());
    let key = s.accept(1);
    let c = Connect {
        protocol: v31,
        bridge: false,
        clean_start: true,
        keep_alive: 30,
        client_id: "old".into(),
        will: None,
        username: None,
        password: None,
        properties: None,
    };
    s.on_bytes(key, &mut frame(&Packet::Connect(Box::new(c)), v31));
    s.on_bytes(key, &mut subscribe("t/#", QoS::AtLeastOnce, v31));
    let got = output(&mut s, key, v31);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a), Packet::SubAck(_)] if a.reason == ReasonCode::Success),
        "{got:?}"
    );
    let p = s.accept(2);
    let c = Connect {
        protocol: ProtocolVersion::V3_1_1,
        bridge: false,
        clean_start: true,
        keep_alive: 30,
        client_id: "new".into(),
        will: None,
        username: None,
        password: None,
        properties: None,
    };
    s.on_bytes(
        p,
        &mut frame(&Packet::Connect(Box::new(c)), ProtocolVersion::V3_1_1),
    );
    s.on_bytes(p, &mut publish("t/1", QoS::AtLeastOnce, 1, "hi", false));
    assert_eq!(payloads(&output(&mut s, key, v31)), ["hi"]);
}
