//! A client for fault tests: every I/O error just ends the connection (the broker was killed or refused), and
//! a subscriber that keeps what it received across reconnects, as a client with a persistent session does
//! (QoS 2 packet ids awaiting PUBREL included). Payloads start with a big-endian u32 sequence number.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coremq::codec::{
    self, Connect, Decoder, Disconnect, Packet, Properties, ProtocolVersion, PubResp, Publish, QoS,
    ReasonCode, Subscribe, SubscribeFilter, SubscriptionOptions,
};

/// A non-panicking client connection: every I/O error just ends it (the broker was killed).
pub struct Conn {
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    decoder: Decoder,
    buf: BytesMut,
}

pub enum Recv {
    Packet(Packet),
    Timeout,
    Closed,
}

impl Conn {
    /// TCP connect, CONNECT (v5: with a session expiry of an hour unless clean), CONNACK Success; None on any
    /// failure. Returns the connection and the CONNACK's session present flag.
    pub fn open(addr: SocketAddr, id: &str, clean: bool) -> Option<(Conn, bool)> {
        Self::open_as(addr, id, clean, ProtocolVersion::V3_1_1)
    }

    pub fn open_as(
        addr: SocketAddr,
        id: &str,
        clean: bool,
        version: ProtocolVersion,
    ) -> Option<(Conn, bool)> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_nodelay(true).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok()?;
        let mut c = Conn {
            stream,
            version,
            decoder: Decoder::new_client(version, 1 << 24),
            buf: BytesMut::new(),
        };
        let properties = (version == ProtocolVersion::V5 && !clean).then(|| {
            Box::new(Properties {
                session_expiry_interval: Some(3600),
                ..Default::default()
            })
        });
        let connect = Connect {
            properties,
            ..super::Raw::connect_packet(id, clean, 60, version)
        };
        if !c.send(&Packet::Connect(Box::new(connect))) {
            return None;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match c.recv() {
                Recv::Packet(Packet::ConnAck(a)) if a.reason == ReasonCode::Success => {
                    return Some((c, a.session_present))
                }
                Recv::Timeout => continue,
                _ => return None,
            }
        }
        None
    }

    pub fn send(&mut self, p: &Packet) -> bool {
        let mut out = BytesMut::new();
        codec::encode(p, self.version, &mut out).unwrap();
        self.stream.write_all(&out).is_ok()
    }

    pub fn recv(&mut self) -> Recv {
        // Bytes that do not decode end the connection like any other failure.
        super::read_packet(&mut self.stream, &mut self.decoder, &mut self.buf)
            .unwrap_or(Recv::Closed)
    }
}

pub fn resp(packet_id: u16) -> PubResp {
    PubResp {
        packet_id,
        reason: ReasonCode::Success,
        properties: None,
    }
}

/// Connect to whatever broker is up (`addr`), retrying while it is down, until `give_up`.
pub fn reconnect(
    addr: &dyn Fn() -> Option<SocketAddr>,
    id: &str,
    clean: bool,
    version: ProtocolVersion,
    give_up: &dyn Fn() -> bool,
) -> Option<Conn> {
    loop {
        if give_up() {
            return None;
        }
        if let Some(addr) = addr() {
            if let Some((c, _)) = Conn::open_as(addr, id, clean, version) {
                return Some(c);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One publisher: clean session, payload = sequence number padded to `size` bytes.
#[derive(Clone)]
pub struct PubSpec {
    pub id: String,
    pub version: ProtocolVersion,
    pub topic: String,
    pub qos: QoS,
    /// Messages per second; 0 = as fast as the window allows.
    pub rate: u64,
    pub window: usize,
    pub size: usize,
}

#[derive(Default, Debug)]
pub struct Published {
    /// Sequence numbers acknowledged (PUBACK for QoS 1, PUBREC for QoS 2, both with Success), sorted.
    pub acked: Vec<u32>,
    /// Acknowledgements with a failure reason (v5: 0x97 Quota exceeded).
    pub refused: u64,
    /// Connections that ended with messages unacknowledged (3.1.1 refusals, kills).
    pub broken: u64,
    pub sent: u64,
}

/// Publishes across broker restarts until `stop`. A message in flight when the connection ends is abandoned
/// (a clean-session publisher), never counted as acknowledged.
pub fn publish_until(
    spec: &PubSpec,
    addr: &dyn Fn() -> Option<SocketAddr>,
    stop: &dyn Fn() -> bool,
) -> Published {
    let mut out = Published::default();
    let mut seq = 0u32;
    let start = Instant::now();
    let qos = spec.qos;
    'outer: while !stop() {
        let Some(mut c) = reconnect(addr, &spec.id, true, spec.version, stop) else {
            break;
        };
        let mut outstanding: HashMap<u16, u32> = HashMap::new();
        let mut stop_at = None;
        loop {
            if stop_at.is_none() && stop() {
                stop_at = Some(Instant::now() + Duration::from_secs(3));
            }
            if stop_at.is_some_and(|t| Instant::now() > t || outstanding.is_empty()) {
                let _ = c.send(&Packet::Disconnect(Disconnect {
                    reason: ReasonCode::Success,
                    properties: None,
                }));
                break 'outer;
            }
            let due = if spec.rate == 0 {
                u64::MAX
            } else {
                start.elapsed().as_millis() as u64 * spec.rate / 1000
            };
            while stop_at.is_none() && (seq as u64) < due && outstanding.len() < spec.window {
                let pid = (seq % 60_000) as u16 + 1;
                let mut payload = seq.to_be_bytes().to_vec();
                payload.resize(spec.size.max(4), 0);
                let p = Packet::Publish(Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: spec.topic.as_str().into(),
                    packet_id: if qos == QoS::AtMostOnce { 0 } else { pid },
                    properties: None,
                    payload: payload.into(),
                });
                if !c.send(&p) {
                    out.broken += 1;
                    continue 'outer;
                }
                out.sent += 1;
                if qos != QoS::AtMostOnce {
                    outstanding.insert(pid, seq);
                }
                seq += 1;
                if qos == QoS::AtMostOnce {
                    break;
                }
            }
            if outstanding.is_empty() {
                // Nothing to wait for (QoS 0 never has anything): pace, then publish what is due.
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            match c.recv() {
                Recv::Packet(Packet::PubAck(r)) => {
                    if let Some(s) = outstanding.remove(&r.packet_id) {
                        if r.reason == ReasonCode::Success {
                            out.acked.push(s);
                        } else {
                            out.refused += 1;
                        }
                    }
                }
                Recv::Packet(Packet::PubRec(r)) => {
                    let Some(&s) = outstanding.get(&r.packet_id) else {
                        continue;
                    };
                    if r.reason != ReasonCode::Success {
                        // A failed PUBREC ends the exchange (no PUBREL).
                        outstanding.remove(&r.packet_id);
                        out.refused += 1;
                        continue;
                    }
                    out.acked.push(s);
                    if !c.send(&Packet::PubRel(resp(r.packet_id))) {
                        out.broken += 1;
                        continue 'outer;
                    }
                }
                Recv::Packet(Packet::PubComp(r)) => {
                    outstanding.remove(&r.packet_id);
                }
                Recv::Packet(Packet::Disconnect(_)) => {}
                Recv::Packet(other) => panic!("{}: unexpected {other:?}", spec.id),
                Recv::Timeout => {}
                Recv::Closed => {
                    out.broken += !outstanding.is_empty() as u64;
                    continue 'outer;
                }
            }
        }
    }
    out.acked.sort_unstable();
    out.acked.dedup();
    out
}

/// Subscribe `id` (persistent session) to `filter` at QoS 2 and disconnect; the session stays.
pub fn subscribe_persistent(addr: SocketAddr, id: &str, filter: &str, version: ProtocolVersion) {
    let (mut c, _) = Conn::open_as(addr, id, false, version).expect("connect");
    assert!(c.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..Default::default()
            },
        }],
        properties: None,
    })));
    loop {
        match c.recv() {
            Recv::Packet(Packet::SubAck(a)) => {
                assert_eq!(a.reasons, vec![ReasonCode::GrantedQoS2]);
                break;
            }
            Recv::Timeout => continue,
            Recv::Packet(other) => panic!("{id}: expected SUBACK, got {other:?}"),
            Recv::Closed => panic!("{id}: closed before SUBACK"),
        }
    }
    assert!(c.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: None,
    })));
}

/// Connect `id`'s persistent session and take everything queued for it until nothing came for `quiet`.
pub fn drain_session(
    addr: SocketAddr,
    id: &str,
    version: ProtocolVersion,
    got: &mut Received,
    quiet: Duration,
) {
    for _ in 0..5 {
        let Some((mut c, present)) = Conn::open_as(addr, id, false, version) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        assert!(present, "{id}: the persistent session must survive");
        if got.read(&mut c, || false, Some(quiet)) {
            let _ = c.send(&Packet::Disconnect(Disconnect {
                reason: ReasonCode::Success,
                properties: None,
            }));
            return;
        }
    }
    panic!("{id}: could not drain the session");
}

impl Received {
    /// Acknowledged sequence numbers of `topic` that never arrived.
    pub fn lost(&self, topic: &str, acked: &[u32]) -> Vec<u32> {
        acked
            .iter()
            .copied()
            .filter(|&s| !self.seen.contains(&(topic.to_string(), s)))
            .collect()
    }
}

/// What a persistent subscriber received, kept across reconnects as a real client keeps its session state.
#[derive(Default)]
pub struct Received {
    /// topic -> first arrivals in order.
    pub first: HashMap<String, Vec<u32>>,
    pub seen: HashSet<(String, u32)>,
    pub qos2_pending: HashSet<u16>,
    /// QoS 2 messages that arrived as new twice.
    pub qos2_dups: Vec<(String, u32)>,
    /// QoS 1 redeliveries (allowed).
    pub qos1_dups: u64,
    pub out_of_order: Vec<(String, u32, u32)>,
}

impl Received {
    /// Handle one packet; false if the connection broke while answering.
    pub fn on(&mut self, c: &mut Conn, p: Packet) -> bool {
        match p {
            Packet::Publish(p) => {
                let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                let topic = p.topic.to_string();
                let fresh = match p.qos {
                    QoS::AtMostOnce => return true,
                    QoS::AtLeastOnce => {
                        if !c.send(&Packet::PubAck(resp(p.packet_id))) {
                            return false;
                        }
                        true
                    }
                    QoS::ExactlyOnce => {
                        // Method B: a PUBLISH whose id awaits PUBREL is the same message again.
                        let fresh = self.qos2_pending.insert(p.packet_id);
                        if !c.send(&Packet::PubRec(resp(p.packet_id))) {
                            return false;
                        }
                        fresh
                    }
                };
                if !fresh {
                    return true;
                }
                if !self.seen.insert((topic.clone(), seq)) {
                    if p.qos == QoS::ExactlyOnce {
                        self.qos2_dups.push((topic, seq));
                    } else {
                        self.qos1_dups += 1;
                    }
                    return true;
                }
                let list = self.first.entry(topic.clone()).or_default();
                if let Some(&last) = list.last() {
                    if seq < last {
                        self.out_of_order.push((topic, last, seq));
                    }
                }
                list.push(seq);
                true
            }
            Packet::PubRel(r) => {
                self.qos2_pending.remove(&r.packet_id);
                c.send(&Packet::PubComp(resp(r.packet_id)))
            }
            other => panic!("unexpected packet for a subscriber: {other:?}"),
        }
    }

    /// Read until the connection breaks, `until` says so, or (when draining) nothing came for `quiet`.
    pub fn read(
        &mut self,
        c: &mut Conn,
        until: impl Fn() -> bool,
        quiet: Option<Duration>,
    ) -> bool {
        let mut last = Instant::now();
        loop {
            if until() {
                return true;
            }
            match c.recv() {
                Recv::Packet(p) => {
                    last = Instant::now();
                    if !self.on(c, p) {
                        return false;
                    }
                }
                Recv::Timeout => {
                    if quiet.is_some_and(|q| last.elapsed() > q) {
                        return true;
                    }
                }
                Recv::Closed => return false,
            }
        }
    }
}
