//! The broker's MQTT semantics, driven through the real binary (2 shards) by rumqttc and by a raw codec client.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{id_on_shard, publish, Broker, Raw};
use coremq::codec::{Packet, ProtocolVersion, PubResp, QoS as CQoS, ReasonCode, Will};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn opts(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

#[derive(Debug)]
enum Ev {
    ConnAck(bool),
    Publish(rumqttc::Publish),
    SubAck,
    PubAck,
    Disconnected,
}

/// Drive an event loop in the background, forwarding what a test cares about.
fn drive(mut el: EventLoop) -> mpsc::UnboundedReceiver<Ev> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let ev = match el.poll().await {
                Ok(Event::Incoming(rumqttc::Packet::ConnAck(a))) => Ev::ConnAck(a.session_present),
                Ok(Event::Incoming(rumqttc::Packet::Publish(p))) => Ev::Publish(p),
                Ok(Event::Incoming(rumqttc::Packet::SubAck(_))) => Ev::SubAck,
                Ok(Event::Incoming(rumqttc::Packet::PubAck(_))) => Ev::PubAck,
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    let _ = tx.send(Ev::Disconnected);
                    return;
                }
                Ok(_) => continue,
                Err(_) => {
                    let _ = tx.send(Ev::Disconnected);
                    return;
                }
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Ev>) -> Ev {
    timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("event loop ended")
}

async fn connack(rx: &mut mpsc::UnboundedReceiver<Ev>) -> bool {
    match next(rx).await {
        Ev::ConnAck(present) => present,
        e => panic!("expected CONNACK, got {e:?}"),
    }
}

async fn suback(rx: &mut mpsc::UnboundedReceiver<Ev>) {
    loop {
        match next(rx).await {
            Ev::SubAck => return,
            Ev::ConnAck(_) => continue,
            e => panic!("expected SUBACK, got {e:?}"),
        }
    }
}

async fn next_publish(rx: &mut mpsc::UnboundedReceiver<Ev>) -> rumqttc::Publish {
    loop {
        match next(rx).await {
            Ev::Publish(p) => return p,
            Ev::Disconnected => panic!("disconnected while waiting for a PUBLISH"),
            _ => continue,
        }
    }
}

/// Nothing more arrives within `d`.
async fn quiet(rx: &mut mpsc::UnboundedReceiver<Ev>, d: Duration) {
    if let Ok(Some(Ev::Publish(p))) = timeout(d, async {
        loop {
            match rx.recv().await {
                Some(Ev::Publish(p)) => return Some(Ev::Publish(p)),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    {
        panic!("unexpected extra PUBLISH on {} ({:?})", p.topic, p.payload);
    }
}

async fn client(id: &str, port: u16, clean: bool) -> (AsyncClient, mpsc::UnboundedReceiver<Ev>) {
    let mut o = opts(id, port);
    o.set_clean_session(clean);
    let (c, el) = AsyncClient::new(o, 1000);
    let mut rx = drive(el);
    connack(&mut rx).await;
    (c, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_delivery_with_overlapping_subscriptions_across_shards() {
    let b = Broker::start(&[]);
    // Subscriber and publisher on different shards.
    let (sub, mut srx) = client(&id_on_shard("sub", 0, 2), b.port(), true).await;
    let (publ, mut prx) = client(&id_on_shard("pub", 1, 2), b.port(), true).await;
    sub.subscribe("a/+/c", QoS::ExactlyOnce).await.unwrap();
    suback(&mut srx).await;
    sub.subscribe("a/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut srx).await;
    for (i, q) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.publish("a/b/c", q, false, vec![i as u8])
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = next_publish(&mut srx).await;
        assert_eq!(p.topic, "a/b/c");
        assert!(!p.retain, "normal forwarding has RETAIN=0");
        got.push((p.payload[0], p.qos));
    }
    // One copy per message (overlapping subscriptions), at min(published, highest granted) QoS, in order.
    assert_eq!(
        got,
        vec![
            (0, QoS::AtMostOnce),
            (1, QoS::AtLeastOnce),
            (2, QoS::ExactlyOnce)
        ]
    );
    quiet(&mut srx, Duration::from_millis(300)).await;
    drop(prx.try_recv());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_kept_per_publisher_and_nothing_lost_across_shards() {
    order_kept_and_nothing_lost(&[]).await;
}

/// The same with shards the kernel places (`--no-pin`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinned_shards_keep_order_and_lose_nothing() {
    order_kept_and_nothing_lost(&["--no-pin"]).await;
}

async fn order_kept_and_nothing_lost(extra: &[&str]) {
    let b = Broker::start(extra);
    let mut subs = Vec::new();
    for s in 0..2u16 {
        let (c, mut rx) = client(&id_on_shard("osub", s, 2), b.port(), true).await;
        c.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
        suback(&mut rx).await;
        subs.push((c, rx));
    }
    let mut pubs = Vec::new();
    for s in 0..2u16 {
        pubs.push(client(&id_on_shard("opub", s, 2), b.port(), true).await);
    }
    const N: u32 = 500;
    for i in 0..N {
        for (k, (c, _)) in pubs.iter().enumerate() {
            c.publish(
                format!("load/{k}"),
                QoS::AtLeastOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await
            .unwrap();
        }
    }
    for (_, rx) in subs.iter_mut() {
        let mut next_seq: HashMap<String, u32> = HashMap::new();
        for _ in 0..2 * N {
            let p = next_publish(rx).await;
            let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
            let want = next_seq.entry(p.topic.clone()).or_insert(0);
            assert_eq!(seq, *want, "out of order or lost on {}", p.topic);
            *want += 1;
        }
        quiet(rx, Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_latest_wins_wildcards_and_clearing() {
    let b = Broker::start(&[]);
    let (publ, _prx) = client(&id_on_shard("rpub", 0, 2), b.port(), true).await;
    publ.publish("home/light", QoS::AtLeastOnce, true, "OFF")
        .await
        .unwrap();
    publ.publish("home/light", QoS::AtLeastOnce, true, "ON")
        .await
        .unwrap();
    publ.publish("home/door", QoS::AtMostOnce, true, "CLOSED")
        .await
        .unwrap();
    publ.publish("home/gone", QoS::AtLeastOnce, true, "X")
        .await
        .unwrap();
    publ.publish("home/gone", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A subscriber on the other shard sees the retained state through a wildcard.
    let (sub, mut srx) = client(&id_on_shard("rsub", 1, 2), b.port(), true).await;
    sub.subscribe("home/+", QoS::AtLeastOnce).await.unwrap();
    suback(&mut srx).await;
    let mut got = HashMap::new();
    for _ in 0..2 {
        let p = next_publish(&mut srx).await;
        assert!(p.retain, "retained delivery has RETAIN=1");
        got.insert(
            p.topic.clone(),
            String::from_utf8(p.payload.to_vec()).unwrap(),
        );
    }
    assert_eq!(got.get("home/light").map(String::as_str), Some("ON"));
    assert_eq!(got.get("home/door").map(String::as_str), Some("CLOSED"));
    quiet(&mut srx, Duration::from_millis(300)).await;
    // Live traffic to a retained topic is forwarded with RETAIN=0.
    publ.publish("home/light", QoS::AtLeastOnce, true, "DIM")
        .await
        .unwrap();
    let p = next_publish(&mut srx).await;
    assert_eq!((p.topic.as_str(), p.retain), ("home/light", false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_on_abnormal_disconnect_only() {
    let b = Broker::start(&[]);
    let (sub, mut srx) = client(&id_on_shard("wsub", 0, 2), b.port(), true).await;
    sub.subscribe("wills/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut srx).await;

    // Clean DISCONNECT: the will is discarded.
    let mut o = opts(&id_on_shard("wclean", 1, 2), b.port());
    o.set_last_will(LastWill::new(
        "wills/clean",
        "dead",
        QoS::AtLeastOnce,
        false,
    ));
    let (c, el) = AsyncClient::new(o, 10);
    let mut rx = drive(el);
    connack(&mut rx).await;
    c.disconnect().await.unwrap();
    quiet(&mut srx, Duration::from_millis(500)).await;

    // Socket dropped without DISCONNECT: the will is published, with its QoS.
    let will = Will {
        topic: "wills/abrupt".into(),
        payload: "gone".into(),
        qos: CQoS::AtLeastOnce,
        retain: false,
        properties: None,
    };
    let mut conn = Raw::connect_packet(
        &id_on_shard("wabrupt", 1, 2),
        true,
        30,
        ProtocolVersion::V3_1_1,
    );
    conn.will = Some(will);
    let (raw, ack) = Raw::connect(b.addr, conn);
    assert_eq!(ack.reason, ReasonCode::Success);
    drop(raw);
    let p = next_publish(&mut srx).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("wills/abrupt", &b"gone"[..], QoS::AtLeastOnce)
    );
}

/// A last PUBLISH and the FIN right behind it: the broker forwards the message and still notices the close at once.
/// (After a short read it skips the recv that would only say EAGAIN, but not when epoll reported a hang-up: then
/// the FIN, already queued behind the data, would raise no new event.) 20 clients, alternating shards; without
/// the hang-up check this fails within a few rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_followed_at_once_by_a_close_are_read_and_the_close_is_seen() {
    let b = Broker::start(&[]);
    let (sub, mut srx) = client(&id_on_shard("fsub", 0, 2), b.port(), true).await;
    sub.subscribe("fin/#", QoS::AtMostOnce).await.unwrap();
    suback(&mut srx).await;
    for round in 0..20u16 {
        let shard = round % 2;
        let id = id_on_shard("fin", shard, 2);
        let mut conn = Raw::connect_packet(&id, true, 60, ProtocolVersion::V3_1_1);
        conn.will = Some(Will {
            topic: format!("fin/will/{shard}").into(),
            payload: "gone".into(),
            qos: CQoS::AtMostOnce,
            retain: false,
            properties: None,
        });
        // Connected first, so the PUBLISH and the FIN reach a connection the shard already reads.
        let (mut raw, ack) = Raw::connect(b.addr, conn);
        assert_eq!(ack.reason, ReasonCode::Success);
        let mut bytes = bytes::BytesMut::new();
        let last = coremq::codec::Publish {
            dup: false,
            qos: CQoS::AtMostOnce,
            retain: false,
            topic: format!("fin/data/{shard}").into(),
            packet_id: 0,
            properties: None,
            payload: bytes::Bytes::from_static(b"last"),
        };
        coremq::codec::encode(&Packet::Publish(last), ProtocolVersion::V3_1_1, &mut bytes).unwrap();
        raw.send_bytes(&bytes);
        raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
        // Keep-alive is 60 s: only noticing the FIN publishes the will within WAIT.
        let p = next_publish(&mut srx).await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            (format!("fin/data/{shard}").as_str(), &b"last"[..])
        );
        let p = next_publish(&mut srx).await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            (format!("fin/will/{shard}").as_str(), &b"gone"[..])
        );
        drop(raw);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_on_keepalive_timeout() {
    let b = Broker::start(&[]);
    let (sub, mut srx) = client("ka-sub", b.port(), true).await;
    sub.subscribe("ka/will", QoS::AtMostOnce).await.unwrap();
    suback(&mut srx).await;
    let mut conn = Raw::connect_packet("ka-silent", true, 1, ProtocolVersion::V3_1_1);
    conn.will = Some(Will {
        topic: "ka/will".into(),
        payload: "timeout".into(),
        qos: CQoS::AtMostOnce,
        retain: false,
        properties: None,
    });
    let (mut raw, _) = Raw::connect(b.addr, conn);
    // Keep-alive 1 s: the broker must close within 1.5 s (plus a sweep second), and publish the will.
    let started = std::time::Instant::now();
    assert!(
        raw.closed_within(Duration::from_secs(5)),
        "silent client was not disconnected"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
    let p = next_publish(&mut srx).await;
    assert_eq!(&p.payload[..], b"timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_keeps_subscriptions_and_queues_while_offline() {
    let b = Broker::start(&[]);
    let sid = id_on_shard("persist", 1, 2);
    {
        let (c, mut rx) = client(&sid, b.port(), false).await;
        c.subscribe("offline/+", QoS::AtLeastOnce).await.unwrap();
        suback(&mut rx).await;
        c.disconnect().await.unwrap();
        while !matches!(next(&mut rx).await, Ev::Disconnected) {}
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (publ, _prx) = client(&id_on_shard("ppub", 0, 2), b.port(), true).await;
    for i in 0..100u32 {
        publ.publish(
            "offline/x",
            QoS::AtLeastOnce,
            false,
            i.to_be_bytes().to_vec(),
        )
        .await
        .unwrap();
        publ.publish(
            "offline/y",
            QoS::AtMostOnce,
            false,
            i.to_be_bytes().to_vec(),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut o = opts(&sid, b.port());
    o.set_clean_session(false);
    let (_c, el) = AsyncClient::new(o, 1000);
    let mut rx = drive(el);
    assert!(connack(&mut rx).await, "session present must be 1");
    let mut qos1 = 0u32;
    let mut qos0 = 0u32;
    for _ in 0..200 {
        let p = next_publish(&mut rx).await;
        let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
        if p.topic == "offline/x" {
            assert_eq!(seq, qos1, "QoS 1 queue out of order");
            qos1 += 1;
        } else {
            assert_eq!(seq, qos0, "QoS 0 queue out of order");
            qos0 += 1;
        }
    }
    assert_eq!((qos1, qos0), (100, 100));
    quiet(&mut rx, Duration::from_millis(300)).await;
}

#[test]
fn clean_session_discards_state() {
    let b = Broker::start(&[]);
    let (mut a, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("cs", false, 30, ProtocolVersion::V3_1_1),
    );
    a.subscribe(1, "cs/t", CQoS::AtLeastOnce);
    drop(a);
    // Reconnect with clean session = 1: no session present, and the old subscription is gone.
    std::thread::sleep(Duration::from_millis(200));
    let (mut a, ack) = Raw::connect(
        b.addr,
        Raw::connect_packet("cs", true, 30, ProtocolVersion::V3_1_1),
    );
    assert!(!ack.session_present);
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("cs-pub", true, 30, ProtocolVersion::V3_1_1),
    );
    p.publish("cs/t", CQoS::AtMostOnce, 0, b"x", false, false);
    a.set_timeout(Duration::from_millis(500));
    assert!(
        a.recv().is_none(),
        "a discarded subscription still delivered"
    );
}

#[test]
fn inflight_messages_are_resent_with_dup_after_reconnect() {
    let b = Broker::start(&[]);
    let (mut s, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("dup-sub", false, 30, ProtocolVersion::V3_1_1),
    );
    s.subscribe(1, "dup/t", CQoS::ExactlyOnce);
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("dup-pub", true, 30, ProtocolVersion::V3_1_1),
    );
    p.publish("dup/t", CQoS::AtLeastOnce, 1, b"one", false, false);
    p.publish("dup/t", CQoS::ExactlyOnce, 2, b"two", false, false);
    let m1 = publish(s.recv());
    let m2 = publish(s.recv());
    assert!(!m1.dup && !m2.dup);
    // Acknowledge neither fully: PUBREC the QoS 2 one only, then vanish.
    s.send(&Packet::PubRec(PubResp {
        packet_id: m2.packet_id,
        reason: ReasonCode::Success,
        properties: None,
    }));
    match s.recv() {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, m2.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    let (mut s, ack) = Raw::connect(
        b.addr,
        Raw::connect_packet("dup-sub", false, 30, ProtocolVersion::V3_1_1),
    );
    assert!(ack.session_present);
    // The QoS 1 message comes again with DUP=1 and its packet id; the QoS 2 one continues at PUBREL.
    let again = publish(s.recv());
    assert!(again.dup);
    assert_eq!(
        (again.packet_id, &again.payload[..]),
        (m1.packet_id, &b"one"[..])
    );
    match s.recv() {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, m2.packet_id),
        other => panic!("expected PUBREL replay, got {other:?}"),
    }
}

#[test]
fn inbound_qos2_is_delivered_exactly_once_despite_retransmission() {
    let b = Broker::start(&[]);
    let (mut s, _) = Raw::connect(
        b.addr,
        Raw::connect_packet(
            &id_on_shard("eo-sub", 0, 2),
            true,
            30,
            ProtocolVersion::V3_1_1,
        ),
    );
    s.subscribe(1, "eo", CQoS::ExactlyOnce);
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet(
            &id_on_shard("eo-pub", 1, 2),
            true,
            30,
            ProtocolVersion::V3_1_1,
        ),
    );
    p.publish("eo", CQoS::ExactlyOnce, 9, b"once", false, false);
    assert!(matches!(p.recv(), Some(Packet::PubRec(r)) if r.packet_id == 9));
    // The publisher retransmits (it did not see our PUBREC, say): acknowledged again, not routed again.
    p.publish("eo", CQoS::ExactlyOnce, 9, b"once", false, true);
    assert!(matches!(p.recv(), Some(Packet::PubRec(r)) if r.packet_id == 9));
    p.send(&Packet::PubRel(PubResp {
        packet_id: 9,
        reason: ReasonCode::Success,
        properties: None,
    }));
    assert!(matches!(p.recv(), Some(Packet::PubComp(r)) if r.packet_id == 9));
    let m = publish(s.recv());
    assert_eq!(&m.payload[..], b"once");
    s.send(&Packet::PubRec(PubResp {
        packet_id: m.packet_id,
        reason: ReasonCode::Success,
        properties: None,
    }));
    assert!(matches!(s.recv(), Some(Packet::PubRel(_))));
    s.set_timeout(Duration::from_millis(500));
    assert!(
        s.recv().is_none(),
        "a retransmitted QoS 2 PUBLISH was forwarded twice"
    );
}

#[test]
fn takeover_disconnects_the_first_connection_and_publishes_its_will() {
    let b = Broker::start(&[]);
    let (mut w, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("to-watch", true, 30, ProtocolVersion::V3_1_1),
    );
    w.subscribe(1, "to/will", CQoS::AtMostOnce);
    let mut c = Raw::connect_packet("same-id", true, 30, ProtocolVersion::V3_1_1);
    c.will = Some(Will {
        topic: "to/will".into(),
        payload: "taken".into(),
        qos: CQoS::AtMostOnce,
        retain: false,
        properties: None,
    });
    let (mut first, _) = Raw::connect(b.addr, c);
    let (_second, ack) = Raw::connect(
        b.addr,
        Raw::connect_packet("same-id", true, 30, ProtocolVersion::V3_1_1),
    );
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(
        first.closed_within(Duration::from_secs(3)),
        "first connection not closed on takeover"
    );
    assert_eq!(&publish(w.recv()).payload[..], b"taken");
}

#[test]
fn v5_takeover_is_told_session_taken_over() {
    let b = Broker::start(&[]);
    let (mut first, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("v5-same", true, 30, ProtocolVersion::V5),
    );
    let (_second, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("v5-same", true, 30, ProtocolVersion::V5),
    );
    match first.recv() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SessionTakenOver),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
}

#[test]
fn empty_client_id_rules() {
    let b = Broker::start(&[]);
    // 3.1.1: empty id with clean session = 0 is rejected with return code 2.
    let (mut r, ack) = Raw::connect(
        b.addr,
        Raw::connect_packet("", false, 30, ProtocolVersion::V3_1_1),
    );
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    assert!(r.closed_within(Duration::from_secs(2)));
    // Empty id with clean session = 1 gets a generated id and works.
    let (mut r, ack) = Raw::connect(
        b.addr,
        Raw::connect_packet("", true, 30, ProtocolVersion::V3_1_1),
    );
    assert_eq!(ack.reason, ReasonCode::Success);
    r.subscribe(1, "anon", CQoS::AtMostOnce);
    r.publish("anon", CQoS::AtMostOnce, 0, b"hi", false, false);
    assert_eq!(&publish(r.recv()).payload[..], b"hi");
    // v5: the generated id is reported.
    let (_r, ack) = Raw::connect(
        b.addr,
        Raw::connect_packet("", true, 30, ProtocolVersion::V5),
    );
    let assigned = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned client id");
    assert!(!assigned.is_empty());
}

#[test]
fn mqtt_3_1_clients_work() {
    let b = Broker::start(&[]);
    let (mut s, ack) = Raw::connect(
        b.addr,
        Raw::connect_packet("old-sub", true, 30, ProtocolVersion::V3_1),
    );
    assert_eq!(ack.reason, ReasonCode::Success);
    s.subscribe(1, "legacy/#", CQoS::AtLeastOnce);
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("old-pub", true, 30, ProtocolVersion::V3_1),
    );
    p.publish("legacy/x", CQoS::AtLeastOnce, 3, b"v31", false, false);
    assert!(matches!(p.recv(), Some(Packet::PubAck(a)) if a.packet_id == 3));
    assert_eq!(&publish(s.recv()).payload[..], b"v31");
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let mut b = Broker::start(&[]);
    let (mut good, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("bystander", true, 30, ProtocolVersion::V3_1_1),
    );
    good.subscribe(1, "still/alive", CQoS::AtMostOnce);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage before CONNECT", vec![0xff, 0xff, 0xff, 0xff, 0xff]),
        (
            "remaining length over 4 bytes",
            vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ),
        ("PUBLISH before CONNECT", vec![0x30, 0x03, 0x00, 0x01, b'a']),
    ];
    for (what, bytes) in cases {
        let mut r = Raw::connect_tcp(b.addr, ProtocolVersion::V3_1_1);
        r.send_bytes(&bytes);
        assert!(
            r.closed_within(Duration::from_secs(3)),
            "{what}: connection not closed"
        );
    }
    // After CONNECT: a PUBLISH with QoS 3, and one with a wildcard in its topic name.
    for bytes in [
        vec![0x36, 0x03, 0x00, 0x01, b'a'],
        vec![0x30, 0x03, 0x00, 0x01, b'#'],
    ] {
        let (mut r, _) = Raw::connect(
            b.addr,
            Raw::connect_packet("bad", true, 30, ProtocolVersion::V3_1_1),
        );
        r.send_bytes(&bytes);
        assert!(
            r.closed_within(Duration::from_secs(3)),
            "bad PUBLISH not rejected"
        );
    }
    // A v5 client is told why.
    let (mut r, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("bad5", true, 30, ProtocolVersion::V5),
    );
    r.send_bytes(&[0x30, 0x04, 0x00, 0x01, b'#', 0x00]);
    match r.recv() {
        Some(Packet::Disconnect(d)) => assert!(d.reason.is_error(), "reason {:?}", d.reason),
        other => panic!("expected DISCONNECT with a reason code, got {other:?}"),
    }
    // The broker and the bystander are unaffected.
    assert!(b.is_running());
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("checker", true, 30, ProtocolVersion::V3_1_1),
    );
    p.publish("still/alive", CQoS::AtMostOnce, 0, b"yes", false, false);
    assert_eq!(&publish(good.recv()).payload[..], b"yes");
}

#[test]
fn unsupported_protocol_level_gets_return_code_1() {
    let b = Broker::start(&[]);
    let mut r = Raw::connect_tcp(b.addr, ProtocolVersion::V3_1_1);
    // CONNECT, protocol "MQTT" level 6.
    r.send_bytes(&[
        0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x1e, 0x00, 0x01, b'x',
    ]);
    match r.recv() {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason, ReasonCode::UnsupportedProtocolVersion),
        other => panic!("expected CONNACK 1, got {other:?}"),
    }
}

#[test]
fn resubscribe_replaces_and_unsubscribe_stops_delivery() {
    let b = Broker::start(&[]);
    let (mut s, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("resub", true, 30, ProtocolVersion::V3_1_1),
    );
    s.subscribe(1, "re/t", CQoS::AtMostOnce);
    s.subscribe(2, "re/t", CQoS::AtLeastOnce);
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("resub-pub", true, 30, ProtocolVersion::V3_1_1),
    );
    p.publish("re/t", CQoS::AtLeastOnce, 1, b"1", false, false);
    let m = publish(s.recv());
    assert_eq!(
        m.qos,
        CQoS::AtLeastOnce,
        "the second SUBSCRIBE replaced the first"
    );
    s.send(&Packet::PubAck(PubResp {
        packet_id: m.packet_id,
        reason: ReasonCode::Success,
        properties: None,
    }));
    s.set_timeout(Duration::from_millis(400));
    assert!(s.recv().is_none(), "re-subscribing duplicated delivery");
    s.set_timeout(Duration::from_secs(10));
    s.send(&Packet::Unsubscribe(coremq::codec::Unsubscribe {
        packet_id: 3,
        filters: vec!["re/t".into()],
        properties: None,
    }));
    assert!(matches!(s.recv(), Some(Packet::UnsubAck(u)) if u.packet_id == 3));
    p.publish("re/t", CQoS::AtMostOnce, 0, b"2", false, false);
    s.set_timeout(Duration::from_millis(400));
    assert!(s.recv().is_none(), "delivered after UNSUBSCRIBE");
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let b = Broker::start(&[]);
    let (mut s, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("dollar", true, 30, ProtocolVersion::V3_1_1),
    );
    s.subscribe(1, "#", CQoS::AtMostOnce);
    s.subscribe(2, "+/x", CQoS::AtMostOnce);
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet("dollar-pub", true, 30, ProtocolVersion::V3_1_1),
    );
    p.publish("$app/x", CQoS::AtMostOnce, 0, b"hidden", false, false);
    p.publish("app/x", CQoS::AtMostOnce, 0, b"seen", false, false);
    assert_eq!(&publish(s.recv()).payload[..], b"seen");
    s.set_timeout(Duration::from_millis(300));
    assert!(s.recv().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_client_basic_pubsub() {
    use rumqttc::v5::{mqttbytes::QoS as Q5, AsyncClient as C5, Event as E5, MqttOptions as O5};
    let b = Broker::start(&[]);
    let mut o = O5::new("v5-sub", "127.0.0.1", b.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (sub, mut el) = C5::new(o, 100);
    let mut o = O5::new("v5-pub", "127.0.0.1", b.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (publ, mut pel) = C5::new(o, 100);
    tokio::spawn(async move { while pel.poll().await.is_ok() {} });
    sub.subscribe("v5/t", Q5::AtLeastOnce).await.unwrap();
    let got = timeout(WAIT, async {
        let mut subscribed = false;
        loop {
            match el.poll().await.unwrap() {
                E5::Incoming(rumqttc::v5::Incoming::SubAck(_)) if !subscribed => {
                    subscribed = true;
                    publ.publish("v5/t", Q5::AtLeastOnce, false, "hello5")
                        .await
                        .unwrap();
                }
                E5::Incoming(rumqttc::v5::Incoming::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("v5 publish not delivered");
    assert_eq!(&got.payload[..], b"hello5");
    assert_eq!(&got.topic[..], b"v5/t");
}

#[test]
fn slow_subscriber_backpressure_loses_nothing_acknowledged() {
    // A tiny queue bound so the subscriber's queue fills quickly.
    let b = Broker::start(&["--max-queued-messages", "50"]);
    let (mut s, _) = Raw::connect(
        b.addr,
        Raw::connect_packet(
            &id_on_shard("slow", 0, 2),
            true,
            60,
            ProtocolVersion::V3_1_1,
        ),
    );
    s.subscribe(1, "bp", CQoS::AtLeastOnce);
    let (mut p, _) = Raw::connect(
        b.addr,
        Raw::connect_packet(
            &id_on_shard("fast", 1, 2),
            true,
            60,
            ProtocolVersion::V3_1_1,
        ),
    );
    // More than the queue bound plus everything that can be in transit between shards (channel, inbox,
    // overflow: about 13k messages with the defaults), so the publisher must be held back.
    const N: u16 = 20_000;
    // The subscriber reads nothing while the publisher sends everything (a writer thread, so the publisher can
    // block on a full socket without deadlocking the test).
    let mut writer = p.stream.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        use std::io::Write;
        for i in 1..=N {
            let mut out = bytes::BytesMut::new();
            let pkt = Packet::Publish(coremq::codec::Publish {
                dup: false,
                qos: CQoS::AtLeastOnce,
                retain: false,
                topic: "bp".into(),
                packet_id: i,
                properties: None,
                payload: bytes::Bytes::copy_from_slice(&[0u8; 512]),
            });
            coremq::codec::encode(&pkt, ProtocolVersion::V3_1_1, &mut out).unwrap();
            if writer.write_all(&out).is_err() {
                return;
            }
        }
    });
    // Count PUBACKs over a while: backpressure holds them back while the subscriber is stalled.
    p.set_timeout(Duration::from_millis(3000));
    let mut acked = 0;
    while let Some(Packet::PubAck(_)) = p.recv() {
        acked += 1;
    }
    assert!(
        acked < N as usize,
        "all {N} acknowledged while the subscriber read nothing: no backpressure"
    );
    // Now the subscriber reads and acknowledges everything: every message arrives, in order, none dropped.
    let mut seen = 0u16;
    s.set_timeout(Duration::from_secs(20));
    while seen < N {
        let m = match s.recv() {
            Some(Packet::Publish(m)) => m,
            other => {
                panic!("after {seen} of {N} messages (publisher saw {acked} acks), got {other:?}")
            }
        };
        s.send(&Packet::PubAck(PubResp {
            packet_id: m.packet_id,
            reason: ReasonCode::Success,
            properties: None,
        }));
        seen += 1;
    }
    p.set_timeout(Duration::from_secs(20));
    while acked < N as usize {
        match p.recv() {
            Some(Packet::PubAck(_)) => acked += 1,
            other => panic!("publisher got {other:?} after {acked} acks"),
        }
    }
    w.join().unwrap();
    s.set_timeout(Duration::from_millis(300));
    assert!(s.recv().is_none(), "more than {N} messages delivered");
}
