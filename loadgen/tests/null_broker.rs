//! The `null-broker` relay, run in-process on a free loopback port: the loadgen's `pairs` scenario must go
//! through it with exact counts (so forwarding, framing across reads and CONNACK/SUBACK in both protocol versions
//! are checked end to end), and its documented limits must fail loudly rather than lose messages quietly.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coremq_loadgen::mqtt::{
    connect_packet, encode, subscribe_packet, ConnectParams, Decoder, Packet, ProtocolVersion,
    Publish, QoS, ReasonCode,
};
use coremq_loadgen::null_broker::NullBroker;
use serde_json::Value;

mod common;
use common::{loadgen, n};

struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start() -> Relay {
    let broker = NullBroker::bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let addr = broker.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let deadline = Some(Instant::now() + Duration::from_secs(120));
    let thread = std::thread::spawn(move || broker.run(deadline, &flag).expect("relay"));
    Relay {
        addr,
        stop,
        thread: Some(thread),
    }
}

fn assert_exact(v: &Value, sent: u64) {
    assert_eq!(n(v, "sent"), sent, "{v}");
    assert_eq!(n(v, "received"), sent, "{v}");
    assert_eq!(n(v, "lost"), 0, "{v}");
    assert_eq!(n(v, "duplicates"), 0, "{v}");
    assert_eq!(n(v, "out_of_order"), 0, "{v}");
    assert_eq!(n(v, "errors"), 0, "{v}");
}

#[test]
fn pairs_qos0_exact_counts_both_versions() {
    let r = start();
    let addr = r.addr.to_string();
    for mqtt in ["3.1.1", "5"] {
        // As fast as possible: many frames per read, frames split across reads, writes that hit EAGAIN.
        let v = loadgen(&[
            "pairs",
            "--broker",
            &addr,
            "--qos",
            "0",
            "--pairs",
            "4",
            "--count",
            "4000",
            "--duration",
            "20",
            "--mqtt",
            mqtt,
        ]);
        assert_eq!(v["mqtt"], mqtt);
        assert_exact(&v, 4000);
    }
    // Open loop at 2000/s for 1 s, the latency benchmark's shape.
    let v = loadgen(&[
        "pairs",
        "--broker",
        &addr,
        "--qos",
        "0",
        "--pairs",
        "4",
        "--rate",
        "2000",
        "--duration",
        "1",
    ]);
    assert_exact(&v, 2000);
    assert!(v["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{v}");
}

/// A raw client speaking MQTT 3.1.1 through the codec.
struct Client {
    s: TcpStream,
    buf: BytesMut,
    dec: Decoder,
}

impl Client {
    fn connect(addr: SocketAddr, id: &str) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Client {
            s,
            buf: BytesMut::new(),
            dec: Decoder::new_client(ProtocolVersion::V3_1_1, 0),
        };
        let p = ConnectParams {
            version: ProtocolVersion::V3_1_1,
            keep_alive: 60,
            clean_start: true,
            session_expiry: 0,
            username: None,
            password: None,
        };
        c.send(&connect_packet(&p, id));
        match c.recv() {
            Some(Packet::ConnAck(a)) => {
                assert!(!a.session_present && a.reason == ReasonCode::Success)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    }

    fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        encode(p, ProtocolVersion::V3_1_1, &mut out).unwrap();
        self.s.write_all(&out).unwrap();
    }

    /// Next packet, or None once the relay closed the connection.
    fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn suback(&mut self, filter: &str) -> ReasonCode {
        self.send(&subscribe_packet(1, filter, QoS::AtMostOnce));
        match self.recv() {
            Some(Packet::SubAck(a)) => a.reasons[0],
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

fn publish(topic: &str, qos: QoS, payload: Vec<u8>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: None,
        payload: payload.into(),
    })
}

#[test]
fn exact_topics_only_and_qos0_only() {
    let r = start();
    let mut sub = Client::connect(r.addr, "sub");
    assert_eq!(sub.suback("a/b"), ReasonCode::Success);
    // v3 has one failure code; the codec maps it back to UnspecifiedError.
    assert!(sub.suback("a/+").is_error());
    assert!(sub.suback("a/#").is_error());
    let mut publ = Client::connect(r.addr, "pub");
    publ.send(&Packet::PingReq);
    assert_eq!(publ.recv(), Some(Packet::PingResp));
    publ.send(&publish("a/c", QoS::AtMostOnce, b"other".to_vec()));
    publ.send(&publish("a/b", QoS::AtMostOnce, b"hello".to_vec()));
    match sub.recv() {
        Some(Packet::Publish(p)) => {
            assert_eq!((&p.topic[..], &p.payload[..]), ("a/b", &b"hello"[..]))
        }
        other => panic!("expected the a/b PUBLISH, got {other:?}"),
    }
    // QoS 1 is not supported: the publisher is closed, nothing is forwarded.
    publ.send(&publish("a/b", QoS::AtLeastOnce, b"q1".to_vec()));
    assert_eq!(publ.recv(), None);
    sub.send(&Packet::PingReq);
    assert_eq!(sub.recv(), Some(Packet::PingResp));
}

#[test]
fn slow_subscriber_holds_the_publisher_back_and_gets_everything() {
    let r = start();
    let mut sub = Client::connect(r.addr, "slow");
    assert_eq!(sub.suback("t"), ReasonCode::Success);
    let mut publ = Client::connect(r.addr, "fast");
    // 40 MiB to a subscriber that reads nothing yet: far beyond the relay's high-water mark and the socket
    // buffers, so the publisher's writes must stall (the relay stops reading it) instead of anything being lost.
    let frame = publish("t", QoS::AtMostOnce, vec![7u8; 64 * 1024]);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let publisher = std::thread::spawn(move || {
        for _ in 0..640 {
            publ.send(&frame);
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        publ
    });
    std::thread::sleep(Duration::from_millis(1500));
    let before_drain = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(before_drain < 640, "the publisher was never held back");
    // Now drain: every message, whole and in order of arrival, and the subscriber stays connected.
    for i in 0..640 {
        match sub.recv() {
            Some(Packet::Publish(p)) => assert_eq!(p.payload.len(), 64 * 1024),
            other => panic!("message {i}: expected a PUBLISH, got {other:?}"),
        }
    }
    let mut publ = publisher.join().unwrap();
    sub.send(&Packet::PingReq);
    assert_eq!(sub.recv(), Some(Packet::PingResp));
    publ.send(&Packet::PingReq);
    assert_eq!(publ.recv(), Some(Packet::PingResp));
}
