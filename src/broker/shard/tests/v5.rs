//! MQTT 5 rules: message expiry, topic aliases both ways, will delay, Receive Maximum, packet size, redirection,
//! Response Information and reason strings.
use super::*;
use crate::codec::{SubscribeFilter, SubscriptionOptions, Will};

const V5: ProtocolVersion = ProtocolVersion::V5;

use super::frame_v as frame;

fn connect_packet(id: &str, clean: bool, props: Properties, will: Option<Will>) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: V5,
        bridge: false,
        clean_start: clean,
        keep_alive: 0,
        client_id: id.into(),
        will,
        username: None,
        password: None,
        properties: Some(Box::new(props)),
    }))
}

/// A v5 connection; returns it with the packets the shard answered (CONNACK first).
fn connect_with(
    shard: &mut Shard,
    io: u64,
    id: &str,
    clean: bool,
    props: Properties,
    will: Option<Will>,
) -> (ConnKey, Vec<Packet>) {
    let key = shard.accept(io);
    shard.on_bytes(key, &mut frame(&connect_packet(id, clean, props, will), V5));
    let out = take(shard, key);
    (key, out)
}

fn connect(shard: &mut Shard, io: u64, id: &str) -> ConnKey {
    connect_with(shard, io, id, true, Properties::default(), None).0
}

/// The connection's output, as if written, decoded.
fn take(shard: &mut Shard, key: ConnKey) -> Vec<Packet> {
    let Some(buf) = shard.out_buf(key) else {
        return Vec::new();
    };
    let mut out = std::mem::take(buf);
    shard.flushed(key);
    let mut d = Decoder::new_client(V5, 1 << 20);
    std::iter::from_fn(|| d.decode(&mut out).unwrap()).collect()
}

fn publishes(packets: Vec<Packet>) -> Vec<Publish> {
    packets
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    })
}

/// Subscribes; returns what followed the SUBACK (retained messages).
fn subscribe(shard: &mut Shard, key: ConnKey, filter: &str, qos: QoS) -> Vec<Packet> {
    let s = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        properties: None,
    };
    shard.on_bytes(key, &mut frame(&Packet::Subscribe(s), V5));
    let mut acks = take(shard, key);
    assert!(matches!(acks.first(), Some(Packet::SubAck(_))), "{acks:?}");
    acks.remove(0);
    acks
}

fn publish(topic: &str, qos: QoS, retain: bool, props: Properties, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
        properties: Some(Box::new(props)),
        payload: bytes::Bytes::from_static(b"payload"),
    })
}

fn expiring(secs: u32) -> Properties {
    Properties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

fn send(shard: &mut Shard, key: ConnKey, p: &Packet) -> ReadOutcome {
    shard.on_bytes(key, &mut frame(p, V5))
}

// ----- message expiry ----------------------------------------------------------------------------------------

/// Queued for an offline session: the message past its interval is dropped and counted, the live one goes out
/// with the interval that remains, the one without an interval goes out without one.
#[test]
fn expired_queued_messages_are_dropped_and_the_rest_carry_the_remaining_interval() {
    let mut shard = Shard::new(ShardConfig::default());
    let persistent = Properties {
        session_expiry_interval: Some(1000),
        ..Default::default()
    };
    let (sub, _) = connect_with(&mut shard, 1, "sub", true, persistent.clone(), None);
    subscribe(&mut shard, sub, "t", QoS::AtLeastOnce);
    shard.on_io_closed(sub);
    shard.release(sub);
    shard.tick(1);
    let publisher = connect(&mut shard, 2, "pub");
    send(
        &mut shard,
        publisher,
        &publish("t", QoS::AtLeastOnce, false, expiring(5), 1),
    );
    send(
        &mut shard,
        publisher,
        &publish("t", QoS::AtLeastOnce, false, expiring(100), 2),
    );
    send(
        &mut shard,
        publisher,
        &publish("t", QoS::AtLeastOnce, false, Properties::default(), 3),
    );
    shard.tick(10);
    let (_sub, out) = connect_with(&mut shard, 3, "sub", false, persistent, None);
    let got = publishes(out);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0].properties.as_ref().unwrap().message_expiry_interval,
        Some(91),
        "100 s published at 1 and sent at 10"
    );
    assert_eq!(
        got[1]
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval),
        None
    );
    assert_eq!(shard.stats.expired, 1);
}

/// An online subscriber gets the remaining interval too (here the full one: no time passed).
#[test]
fn online_delivery_forwards_the_interval() {
    let mut shard = Shard::new(ShardConfig::default());
    let sub = connect(&mut shard, 1, "sub");
    subscribe(&mut shard, sub, "t", QoS::AtMostOnce);
    let publisher = connect(&mut shard, 2, "pub");
    send(
        &mut shard,
        publisher,
        &publish("t", QoS::AtMostOnce, false, expiring(30), 0),
    );
    let got = publishes(take(&mut shard, sub));
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].properties.as_ref().unwrap().message_expiry_interval,
        Some(30)
    );
}

#[test]
fn retained_messages_expire() {
    let mut shard = Shard::new(ShardConfig::default());
    let publisher = connect(&mut shard, 1, "pub");
    send(
        &mut shard,
        publisher,
        &publish("r/1", QoS::AtMostOnce, true, expiring(2), 0),
    );
    send(
        &mut shard,
        publisher,
        &publish("r/2", QoS::AtMostOnce, true, expiring(60), 0),
    );
    shard.tick(3);
    let sub = connect(&mut shard, 2, "sub");
    let got = publishes(subscribe(&mut shard, sub, "r/#", QoS::AtMostOnce));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&*got[0].topic, "r/2");
    assert_eq!(
        got[0].properties.as_ref().unwrap().message_expiry_interval,
        Some(57)
    );
    assert_eq!(shard.stats.expired, 1);
    assert_eq!(shard.retained.len(), 1, "the expired one left the store");
}

// ----- topic aliases -------------------------------------------------------------------------------------------

#[test]
fn connack_announces_topic_alias_maximum() {
    let mut shard = Shard::new(ShardConfig {
        topic_alias_maximum: 7,
        ..ShardConfig::default()
    });
    let (_, out) = connect_with(&mut shard, 1, "c", true, Properties::default(), None);
    let Some(Packet::ConnAck(ack)) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(
        ack.properties.as_ref().unwrap().topic_alias_maximum,
        Some(7)
    );
}

fn aliased(topic: &str, alias: u16) -> Packet {
    publish(
        topic,
        QoS::AtMostOnce,
        false,
        Properties {
            topic_alias: Some(alias),
            ..Default::default()
        },
        0,
    )
}

#[test]
fn inbound_aliases_map_per_connection() {
    let mut shard = Shard::new(ShardConfig::default());
    let sub = connect(&mut shard, 1, "sub");
    subscribe(&mut shard, sub, "#", QoS::AtMostOnce);
    let publisher = connect(&mut shard, 2, "pub");
    send(&mut shard, publisher, &aliased("a/b", 1));
    send(&mut shard, publisher, &aliased("", 1));
    send(&mut shard, publisher, &aliased("c", 1)); // remapped
    send(&mut shard, publisher, &aliased("", 1));
    let got = publishes(take(&mut shard, sub));
    let topics: Vec<&str> = got.iter().map(|p| &*p.topic).collect();
    assert_eq!(topics, ["a/b", "a/b", "c", "c"]);
    assert!(
        got.iter()
            .all(|p| p.properties.as_ref().and_then(|p| p.topic_alias).is_none()),
        "the publisher's alias is not forwarded"
    );
    // Another connection does not share the mapping.
    let other = connect(&mut shard, 3, "other");
    assert_eq!(send(&mut shard, other, &aliased("", 1)), ReadOutcome::Close);
    assert_eq!(
        disconnect_reason(&take(&mut shard, other)),
        Some(ReasonCode::ProtocolError)
    );
}

#[test]
fn inbound_alias_above_the_maximum_is_refused() {
    let mut shard = Shard::new(ShardConfig {
        topic_alias_maximum: 3,
        ..ShardConfig::default()
    });
    let publisher = connect(&mut shard, 1, "pub");
    assert_eq!(
        send(&mut shard, publisher, &aliased("x", 4)),
        ReadOutcome::Close
    );
    assert_eq!(
        disconnect_reason(&take(&mut shard, publisher)),
        Some(ReasonCode::TopicAliasInvalid)
    );
}

/// The client allows 1 alias: the first topic gets it (full topic once, then empty topic + alias), a second
/// topic goes in full. After a reconnect the unacknowledged message is resent with its full topic.
#[test]
fn outbound_aliases_within_the_client_maximum_and_full_topic_after_reconnect() {
    let mut shard = Shard::new(ShardConfig::default());
    let props = Properties {
        topic_alias_maximum: Some(1),
        session_expiry_interval: Some(100),
        ..Default::default()
    };
    let (sub, _) = connect_with(&mut shard, 1, "sub", true, props.clone(), None);
    subscribe(&mut shard, sub, "#", QoS::AtLeastOnce);
    let publisher = connect(&mut shard, 2, "pub");
    for (i, t) in ["x", "x", "y"].iter().enumerate() {
        send(
            &mut shard,
            publisher,
            &publish(
                t,
                QoS::AtLeastOnce,
                false,
                Properties::default(),
                i as u16 + 1,
            ),
        );
    }
    let got = publishes(take(&mut shard, sub));
    let seen: Vec<(&str, Option<u16>)> = got
        .iter()
        .map(|p| (&*p.topic, p.properties.as_ref().and_then(|p| p.topic_alias)))
        .collect();
    assert_eq!(seen, [("x", Some(1)), ("", Some(1)), ("y", None)]);
    shard.on_io_closed(sub);
    shard.release(sub);
    let (_sub, out) = connect_with(&mut shard, 3, "sub", false, props, None);
    let resent = publishes(out);
    assert_eq!(resent.len(), 3);
    for p in &resent {
        assert!(p.dup);
        assert!(
            !p.topic.is_empty(),
            "a resend carries the full topic: {p:?}"
        );
        assert_eq!(p.properties.as_ref().and_then(|p| p.topic_alias), None);
    }
}

#[test]
fn no_outbound_aliases_without_the_clients_maximum() {
    let mut shard = Shard::new(ShardConfig::default());
    let sub = connect(&mut shard, 1, "sub");
    subscribe(&mut shard, sub, "#", QoS::AtMostOnce);
    let publisher = connect(&mut shard, 2, "pub");
    send(
        &mut shard,
        publisher,
        &publish("x", QoS::AtMostOnce, false, Properties::default(), 0),
    );
    send(
        &mut shard,
        publisher,
        &publish("x", QoS::AtMostOnce, false, Properties::default(), 0),
    );
    for p in publishes(take(&mut shard, sub)) {
        assert_eq!(&*p.topic, "x");
        assert_eq!(p.properties.as_ref().and_then(|p| p.topic_alias), None);
    }
}

// ----- will delay -------------------------------------------------------------------------------------------

fn will(delay: u32) -> Will {
    Will {
        topic: "will".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Some(Box::new(Properties {
            will_delay_interval: Some(delay),
            ..Default::default()
        })),
    }
}

fn session(expiry: u32) -> Properties {
    Properties {
        session_expiry_interval: Some(expiry),
        ..Default::default()
    }
}

/// Returns the watcher connection and the session's (dropped) connection.
fn will_setup(shard: &mut Shard, delay: u32, expiry: u32) -> ConnKey {
    let watcher = connect(shard, 1, "watcher");
    subscribe(shard, watcher, "will", QoS::AtMostOnce);
    let (c, _) = connect_with(shard, 2, "dev", true, session(expiry), Some(will(delay)));
    shard.on_io_closed(c);
    shard.release(c);
    watcher
}

#[test]
fn will_waits_for_its_delay() {
    let mut shard = Shard::new(ShardConfig::default());
    let watcher = will_setup(&mut shard, 5, 100);
    for t in 1..5 {
        shard.tick(t);
        assert!(
            publishes(take(&mut shard, watcher)).is_empty(),
            "published at {t}"
        );
    }
    shard.tick(5);
    assert_eq!(publishes(take(&mut shard, watcher)).len(), 1);
    assert_eq!(shard.wills.len(), 0);
}

#[test]
fn reconnect_in_time_cancels_the_will() {
    let mut shard = Shard::new(ShardConfig::default());
    let watcher = will_setup(&mut shard, 5, 100);
    shard.tick(3);
    connect_with(&mut shard, 3, "dev", false, session(100), None);
    shard.tick(10);
    assert!(publishes(take(&mut shard, watcher)).is_empty());
    assert_eq!(shard.stats.wills_published, 0);
}

#[test]
fn will_goes_when_the_session_expires_first() {
    let mut shard = Shard::new(ShardConfig::default());
    let watcher = will_setup(&mut shard, 60, 2);
    shard.tick(1);
    assert!(publishes(take(&mut shard, watcher)).is_empty());
    shard.tick(2);
    assert_eq!(publishes(take(&mut shard, watcher)).len(), 1);
    assert_eq!(
        shard.session_count(),
        1,
        "only the watcher's session is left"
    );
}

#[test]
fn will_without_delay_or_with_clean_session_goes_at_once() {
    for (delay, expiry) in [(0, 100), (30, 0)] {
        let mut shard = Shard::new(ShardConfig::default());
        let watcher = will_setup(&mut shard, delay, expiry);
        assert_eq!(
            publishes(take(&mut shard, watcher)).len(),
            1,
            "delay {delay} expiry {expiry}"
        );
    }
}

// ----- limits, CONNACK and DISCONNECT properties -------------------------------------------------------------

#[test]
fn receive_maximum_exceeded_is_disconnected_with_0x93() {
    let mut shard = Shard::new(ShardConfig {
        max_inbound_qos2: 2,
        ..ShardConfig::default()
    });
    let c = connect(&mut shard, 1, "c");
    for id in 1..=2 {
        let p = publish("t", QoS::ExactlyOnce, false, Properties::default(), id);
        assert_eq!(send(&mut shard, c, &p), ReadOutcome::Continue);
    }
    let p = publish("t", QoS::ExactlyOnce, false, Properties::default(), 3);
    assert_eq!(send(&mut shard, c, &p), ReadOutcome::Close);
    let out = take(&mut shard, c);
    assert_eq!(
        disconnect_reason(&out),
        Some(ReasonCode::ReceiveMaximumExceeded)
    );
}

#[test]
fn inbound_packet_over_the_maximum_is_refused_with_0x95() {
    let mut shard = Shard::new(ShardConfig {
        max_packet_size: 128,
        ..ShardConfig::default()
    });
    let c = connect(&mut shard, 1, "c");
    let mut p = publish("t", QoS::AtMostOnce, false, Properties::default(), 0);
    if let Packet::Publish(p) = &mut p {
        p.payload = bytes::Bytes::from(vec![b'x'; 200]);
    }
    assert_eq!(send(&mut shard, c, &p), ReadOutcome::Close);
    assert_eq!(
        disconnect_reason(&take(&mut shard, c)),
        Some(ReasonCode::PacketTooLarge)
    );
}

#[test]
fn outbound_packet_over_the_clients_maximum_is_dropped_and_counted() {
    let mut shard = Shard::new(ShardConfig::default());
    let props = Properties {
        maximum_packet_size: Some(100),
        ..Default::default()
    };
    let (sub, _) = connect_with(&mut shard, 1, "sub", true, props, None);
    subscribe(&mut shard, sub, "t", QoS::AtMostOnce);
    let publisher = connect(&mut shard, 2, "pub");
    let mut big = publish("t", QoS::AtMostOnce, false, Properties::default(), 0);
    if let Packet::Publish(p) = &mut big {
        p.payload = bytes::Bytes::from(vec![b'x'; 200]);
    }
    send(&mut shard, publisher, &big);
    send(
        &mut shard,
        publisher,
        &publish("t", QoS::AtMostOnce, false, Properties::default(), 0),
    );
    assert_eq!(publishes(take(&mut shard, sub)).len(), 1);
    assert_eq!(shard.stats.dropped_too_large, 1);
}

#[test]
fn redirection_refuses_with_the_server_reference() {
    for (moved, reason) in [
        (false, ReasonCode::UseAnotherServer),
        (true, ReasonCode::ServerMoved),
    ] {
        let mut shard = Shard::new(ShardConfig {
            server_reference: "other.example:1883".into(),
            server_moved: moved,
            ..ShardConfig::default()
        });
        let key = shard.accept(1);
        let out = shard.on_bytes(
            key,
            &mut frame(&connect_packet("c", true, Properties::default(), None), V5),
        );
        assert_eq!(out, ReadOutcome::Close);
        let packets = take(&mut shard, key);
        let Some(Packet::ConnAck(ack)) = packets.first() else {
            panic!("{packets:?}")
        };
        assert_eq!(ack.reason, reason);
        assert_eq!(
            ack.properties.as_ref().unwrap().server_reference.as_deref(),
            Some("other.example:1883")
        );
        assert_eq!(shard.session_count(), 0);
    }
}

#[test]
fn response_information_only_when_asked_and_configured() {
    for (asked, configured, expect) in [
        (Some(1), "resp/", Some("resp/")),
        (None, "resp/", None),
        (Some(1), "", None),
    ] {
        let mut shard = Shard::new(ShardConfig {
            response_information: configured.into(),
            ..ShardConfig::default()
        });
        let props = Properties {
            request_response_information: asked,
            ..Default::default()
        };
        let (_, out) = connect_with(&mut shard, 1, "c", true, props, None);
        let Some(Packet::ConnAck(ack)) = out.first() else {
            panic!("{out:?}")
        };
        assert_eq!(
            ack.properties
                .as_ref()
                .unwrap()
                .response_information
                .as_deref(),
            expect,
            "asked {asked:?} configured {configured:?}"
        );
    }
}

#[test]
fn reason_strings_only_when_problem_information_is_allowed() {
    for (request, expect_string) in [(None, true), (Some(0), false)] {
        let mut shard = Shard::new(ShardConfig::default());
        let props = Properties {
            request_problem_information: request,
            ..Default::default()
        };
        let (c, _) = connect_with(&mut shard, 1, "c", true, props, None);
        // An alias above the maximum closes the connection with a reason.
        assert_eq!(send(&mut shard, c, &aliased("x", 11)), ReadOutcome::Close);
        let out = take(&mut shard, c);
        let Some(Packet::Disconnect(d)) = out.first() else {
            panic!("{out:?}")
        };
        assert_eq!(d.reason, ReasonCode::TopicAliasInvalid);
        let has = d
            .properties
            .as_ref()
            .and_then(|p| p.reason_string.as_ref())
            .is_some();
        assert_eq!(
            has, expect_string,
            "request problem information {request:?}"
        );
    }
}

/// An expired message queued for a persistent session is acknowledged away in the log, so a restart does not
/// bring it back.
#[test]
fn an_expired_persistent_message_leaves_the_log() {
    use crate::store::{FsyncPolicy, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        fsync: FsyncPolicy::Interval(std::time::Duration::from_secs(10)),
        sync_bytes: usize::MAX,
        segment_size: 1 << 20,
        ..StoreConfig::default()
    };
    let (store, rec) = Store::open(dir.path(), 0, cfg).unwrap();
    let mut shard = Shard::new(ShardConfig::default());
    shard.attach_store(store, 1_000_000);
    shard.restore(rec.state);
    let (sub, _) = connect_with(&mut shard, 1, "sub", true, session(3600), None);
    subscribe(&mut shard, sub, "t", QoS::AtLeastOnce);
    shard.end_round();
    shard.sync_log();
    take(&mut shard, sub);
    shard.on_io_closed(sub);
    shard.release(sub);
    let publisher = connect(&mut shard, 2, "pub");
    send(
        &mut shard,
        publisher,
        &publish("t", QoS::AtLeastOnce, false, expiring(5), 1),
    );
    send(
        &mut shard,
        publisher,
        &publish("t", QoS::AtLeastOnce, false, Properties::default(), 2),
    );
    shard.end_round();
    shard.sync_log();
    let queued = |shard: &Shard| {
        let state = shard.store.as_ref().unwrap().snapshot();
        state
            .sessions
            .iter()
            .find(|s| s.client_id == "sub")
            .unwrap()
            .queue
            .len()
    };
    assert_eq!(queued(&shard), 2);
    shard.tick(10);
    let (_sub, out) = connect_with(&mut shard, 3, "sub", false, session(3600), None);
    shard.end_round();
    shard.sync_log();
    let got = publishes(out);
    assert_eq!(got.len(), 1);
    assert_eq!(shard.stats.expired, 1);
    assert_eq!(
        queued(&shard),
        1,
        "only the unexpired (in-flight) message is left in the log"
    );
}

fn shard_on_log(dir: &std::path::Path, epoch_unix: u64) -> Shard {
    use crate::store::{FsyncPolicy, StoreConfig};
    let cfg = StoreConfig {
        fsync: FsyncPolicy::Interval(std::time::Duration::from_secs(10)),
        sync_bytes: usize::MAX,
        segment_size: 1 << 20,
        ..StoreConfig::default()
    };
    let (store, rec) = Store::open(dir, 0, cfg).unwrap();
    let mut shard = Shard::new(ShardConfig::default());
    shard.attach_store(store, epoch_unix);
    shard.restore(rec.state);
    shard
}

/// A persistent session's pending will is in the log: after a restart it still goes at its original due time
/// (wall clock), and a reconnect after the restart cancels it and clears it from the log.
#[test]
fn a_pending_will_survives_a_restart() {
    for reconnect in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut shard = shard_on_log(dir.path(), 1_000_000);
            shard.tick(1);
            let (dev, _) = connect_with(&mut shard, 1, "dev", true, session(100), Some(will(30)));
            shard.on_io_closed(dev);
            shard.release(dev);
            shard.end_round();
            shard.sync_log();
            assert_eq!(shard.wills.len(), 1);
        }
        // Restarted 10 s later: due at unix 1_000_031 = shard second 21.
        let mut shard = shard_on_log(dir.path(), 1_000_010);
        assert_eq!(shard.wills.len(), 1, "restored");
        let watcher = connect(&mut shard, 2, "watcher");
        subscribe(&mut shard, watcher, "will", QoS::AtMostOnce);
        if reconnect {
            connect_with(&mut shard, 3, "dev", false, session(100), None);
            shard.end_round();
            shard.sync_log();
        }
        shard.tick(20);
        assert!(publishes(take(&mut shard, watcher)).is_empty());
        shard.tick(21);
        let got = publishes(take(&mut shard, watcher));
        assert_eq!(got.len(), usize::from(!reconnect), "reconnect {reconnect}");
        shard.end_round();
        shard.sync_log();
        let state = shard.store.as_ref().unwrap().snapshot();
        let dev = state
            .sessions
            .iter()
            .find(|s| s.client_id == "dev")
            .unwrap();
        assert!(
            dev.pending_will.is_none(),
            "published or cancelled: cleared from the log"
        );
    }
}

/// The session expired while the broker was down: its will goes at the first tick after the restart.
#[test]
fn a_will_whose_session_expired_while_down_goes_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut shard = shard_on_log(dir.path(), 1_000_000);
        let (dev, _) = connect_with(&mut shard, 1, "dev", true, session(20), Some(will(60)));
        shard.on_io_closed(dev);
        shard.release(dev);
        shard.end_round();
        shard.sync_log();
    }
    let mut shard = shard_on_log(dir.path(), 1_000_500);
    assert_eq!(shard.session_count(), 0);
    let watcher = connect(&mut shard, 2, "watcher");
    subscribe(&mut shard, watcher, "will", QoS::AtMostOnce);
    shard.tick(1);
    assert_eq!(publishes(take(&mut shard, watcher)).len(), 1);
}
