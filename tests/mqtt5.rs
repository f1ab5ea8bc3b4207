//! MQTT 5 end to end against the real binary (2 shards): topic aliases both ways on the wire (raw client, and
//! mosquitto_pub -V 5 setting an alias), Receive Maximum exceeded -> the client reads DISCONNECT 0x93, server
//! redirection, and paho-mqtt as a v5 client (message expiry, will delay) and as a 3.1 (`MQIsdp`) client.
//! Tools that are missing skip with a message outside CI and fail in CI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::tools::{have as tool, have_paho};
use common::{id_on_shard, Broker, Raw};
use coremq::codec::{Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn connect_v5(b: &Broker, id: &str, props: Properties) -> Raw {
    let mut c = Raw::connect_packet(id, true, 30, V5);
    c.properties = Some(Box::new(props));
    let (raw, ack) = Raw::connect(b.addr, c);
    assert_eq!(ack.reason, ReasonCode::Success);
    raw
}

fn next_publish(r: &mut Raw) -> Publish {
    loop {
        match r.recv() {
            Some(Packet::Publish(p)) => return p,
            Some(_) => continue,
            None => panic!("no PUBLISH"),
        }
    }
}

fn alias_of(p: &Publish) -> Option<u16> {
    p.properties.as_ref().and_then(|p| p.topic_alias)
}

/// The publisher sets an alias and then publishes with it (empty topic); the subscriber, on the other shard,
/// allows 2 aliases: it sees its own alias assigned with the full topic, then empty topics with the alias.
#[test]
fn topic_aliases_both_ways_across_shards() {
    let b = Broker::start(&[]);
    let mut sub = connect_v5(
        &b,
        &id_on_shard("alias-sub", 0, 2),
        Properties {
            topic_alias_maximum: Some(2),
            ..Default::default()
        },
    );
    sub.subscribe(1, "al/#", QoS::AtMostOnce);
    let mut publisher = connect_v5(&b, &id_on_shard("alias-pub", 1, 2), Properties::default());
    let send = |r: &mut Raw, topic: &str, alias: u16| {
        r.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: 1,
            properties: Some(Box::new(Properties {
                topic_alias: Some(alias),
                ..Default::default()
            })),
            payload: bytes::Bytes::from_static(b"x"),
        }));
        assert!(matches!(r.recv(), Some(Packet::PubAck(_))));
    };
    send(&mut publisher, "al/one", 1);
    send(&mut publisher, "", 1);
    send(&mut publisher, "al/two", 2);
    send(&mut publisher, "al/three", 3);
    send(&mut publisher, "", 3);
    let got: Vec<(String, Option<u16>)> = (0..5)
        .map(|_| next_publish(&mut sub))
        .map(|p| (p.topic.to_string(), alias_of(&p)))
        .collect();
    assert_eq!(
        got,
        [
            ("al/one".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("al/two".to_string(), Some(2)),
            ("al/three".to_string(), None),
            ("al/three".to_string(), None),
        ],
        "the first 2 distinct topics get the subscriber's aliases; the third goes in full"
    );
}

#[test]
fn mosquitto_pub_v5_with_a_topic_alias_is_accepted() {
    if !tool("mosquitto_pub", &["--help"]) {
        return;
    }
    let b = Broker::start(&[]);
    let mut sub = connect_v5(&b, "alias-watch", Properties::default());
    sub.subscribe(1, "mosq/#", QoS::AtLeastOnce);
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port().to_string(),
            "-V",
            "5",
            "-q",
            "1",
        ])
        .args([
            "-D",
            "publish",
            "topic-alias",
            "1",
            "-t",
            "mosq/alias",
            "-m",
            "hi",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = next_publish(&mut sub);
    assert_eq!(&*p.topic, "mosq/alias");
    assert_eq!(&p.payload[..], b"hi");
}

/// More unacknowledged inbound QoS 2 than the Receive Maximum we announced: the client reads DISCONNECT 0x93
/// (the close lingers, so it is not a reset).
#[test]
fn receive_maximum_exceeded_client_reads_0x93() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(dir.path(), "max_inbound_qos2 = 2\n");
    let b = Broker::start(&["--config", &cfg]);
    let mut c = Raw::connect_packet("rm", true, 30, V5);
    c.properties = Some(Box::new(Properties::default()));
    let (mut raw, ack) = Raw::connect(b.addr, c);
    assert_eq!(ack.properties.as_ref().unwrap().receive_maximum, Some(2));
    for id in 1..=3 {
        raw.publish("rm/t", QoS::ExactlyOnce, id, b"x", false, false);
    }
    let mut reason = None;
    while let Some(p) = raw.recv() {
        if let Packet::Disconnect(d) = p {
            reason = Some(d.reason);
            break;
        }
    }
    assert_eq!(reason, Some(ReasonCode::ReceiveMaximumExceeded));
    assert!(raw.closed_within(Duration::from_secs(5)));
}

#[test]
fn redirection_sends_the_server_reference() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(
        dir.path(),
        "server_reference = \"box2:1883\"\nredirect = \"moved\"\n",
    );
    let b = Broker::start(&["--config", &cfg]);
    let mut c = Raw::connect_packet("moving", true, 30, V5);
    c.properties = Some(Box::new(Properties::default()));
    let (_raw, ack) = Raw::connect(b.addr, c);
    assert_eq!(ack.reason, ReasonCode::ServerMoved);
    assert_eq!(
        ack.properties.unwrap().server_reference.as_deref(),
        Some("box2:1883")
    );
}

fn run_paho(script: &str) {
    run_paho_against(&Broker::start(&[]), script);
}

/// `python3 tests/mqtt5/SCRIPT PORT` against `b` must print OK.
fn run_paho_against(b: &Broker, script: &str) {
    let path = format!("{}/tests/mqtt5/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args([&path, &b.port().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
}

#[test]
fn paho_v5_message_expiry_and_will_delay() {
    if have_paho() {
        run_paho("paho_v5.py");
    }
}

/// QoS 1 counts against the Receive Maximum: with PUBACKs held for a slow fsync, paho (which sends up to its
/// own in-flight limit, not ours) goes past 4 unacknowledged publishes and reads DISCONNECT 0x93.
#[test]
fn paho_v5_qos1_over_the_receive_maximum_reads_0x93() {
    if !have_paho() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(dir.path(), "max_inbound_qos2 = 4\n");
    let b = Broker::start(&["--config", &cfg, "--fsync", "interval:2000ms"]);
    run_paho_against(&b, "paho_receive_max.py");
}

/// paho v5 against a broker with the v5 options set, and a second one that redirects: see the script's header.
#[test]
fn paho_v5_properties_redirection_and_shared_members() {
    if !have_paho() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("coremq.toml");
    std::fs::write(
        &cfg,
        "max_keepalive = 10\nresponse_information = \"resp/\"\nmax_packet_size = 4096\n",
    )
    .unwrap();
    let b = Broker::start(&["--config", cfg.to_str().unwrap()]);
    let moved = dir.path().join("moved.toml");
    std::fs::write(
        &moved,
        "server_reference = \"box2:1883\"\nredirect = \"moved\"\n",
    )
    .unwrap();
    let r = Broker::start(&["--config", moved.to_str().unwrap()]);
    let path = format!(
        "{}/tests/mqtt5/paho_v5_props.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new("python3")
        .arg(&path)
        .arg(b.port().to_string())
        .arg(r.port().to_string())
        .arg(id_on_shard("paho5-leaver", 0, 2))
        .arg(id_on_shard("paho5-stays", 1, 2))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
}

#[test]
fn paho_mqtt31_end_to_end() {
    if have_paho() {
        run_paho("paho_v31.py");
    }
}

/// rumqttc's v5 client: its topic alias is honoured (a publish by alias with an empty topic reaches a rumqttc
/// subscriber on the other shard under the full topic), and the Message Expiry Interval is forwarded.
#[test]
fn rumqttc_v5_alias_and_expiry() {
    use rumqttc::v5::mqttbytes::v5::{Packet as RPacket, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::{Client, Event, MqttOptions};
    let b = Broker::start(&[]);
    let opts = |id: String| {
        let mut o = MqttOptions::new(id, "127.0.0.1", b.port());
        o.set_keep_alive(Duration::from_secs(5));
        o
    };
    let (sub, mut sub_conn) = Client::new(opts(id_on_shard("r5-sub", 0, 2)), 16);
    sub.subscribe("r5/#", RQoS::AtLeastOnce).unwrap();
    let mut subscribed = false;
    for ev in sub_conn.iter().take(20) {
        if let Ok(Event::Incoming(RPacket::SubAck(_))) = ev {
            subscribed = true;
            break;
        }
    }
    assert!(subscribed, "no SUBACK");
    let (publisher, mut pub_conn) = Client::new(opts(id_on_shard("r5-pub", 1, 2)), 16);
    let props = |alias: u16| PublishProperties {
        topic_alias: Some(alias),
        message_expiry_interval: Some(30),
        ..Default::default()
    };
    publisher
        .publish_with_properties("r5/t", RQoS::AtLeastOnce, false, b"one".to_vec(), props(1))
        .unwrap();
    publisher
        .publish_with_properties("", RQoS::AtLeastOnce, false, b"two".to_vec(), props(1))
        .unwrap();
    std::thread::spawn(move || for _ in pub_conn.iter() {});
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && std::time::Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(RPacket::Publish(p)))) =
            sub_conn.recv_timeout(Duration::from_millis(200))
        {
            let expiry = p
                .properties
                .as_ref()
                .and_then(|p| p.message_expiry_interval);
            got.push((
                String::from_utf8_lossy(&p.topic).to_string(),
                p.payload.to_vec(),
                expiry,
            ));
        }
    }
    assert_eq!(got.len(), 2, "{got:?}");
    for (i, payload) in [b"one".to_vec(), b"two".to_vec()].into_iter().enumerate() {
        assert_eq!(got[i].0, "r5/t");
        assert_eq!(got[i].1, payload);
        let left = got[i].2.expect("expiry forwarded");
        assert!((25..=30).contains(&left), "{left}");
    }
}

/// kill -9 with a delayed will pending: after the restart on the same data directory the will still arrives.
#[test]
fn a_pending_will_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start_in(dir.path(), &[]);
    let mut c = Raw::connect_packet("k9-dev", true, 30, V5);
    c.properties = Some(Box::new(Properties {
        session_expiry_interval: Some(300),
        ..Default::default()
    }));
    c.will = Some(coremq::codec::Will {
        topic: "k9/will".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Some(Box::new(Properties {
            will_delay_interval: Some(8),
            ..Default::default()
        })),
    });
    let (dev, ack) = Raw::connect(b.addr, c);
    assert_eq!(ack.reason, ReasonCode::Success);
    drop(dev); // no DISCONNECT: the will is pending for 8 s (time enough to restart and subscribe)
    std::thread::sleep(Duration::from_millis(500)); // the broker has seen the close and synced (fsync every 10 ms)
    b.kill9();
    let b = Broker::start_in(dir.path(), &[]);
    let mut watcher = connect_v5(&b, "k9-watch", Properties::default());
    watcher.subscribe(1, "k9/will", QoS::AtLeastOnce);
    watcher.set_timeout(Duration::from_secs(15));
    let p = next_publish(&mut watcher);
    assert_eq!(&*p.topic, "k9/will");
    assert_eq!(&p.payload[..], b"gone");
}
