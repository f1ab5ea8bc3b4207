//! The simulation's clients: 3.1.1 or v5, each reacting to the broker's packets as a correct client would, and
//! recording what it was acknowledged (publishers) or what it received (subscribers, checkers).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::BytesMut;
use coremq::broker::message::ConnKey;
use coremq::codec::{self, Decoder, Packet, ProtocolVersion, PubResp, QoS, ReasonCode};

/// Publisher indexes of wills are offset by this (a will's "publisher" is the client whose connection died).
pub const WILL_BASE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    /// Subscribes to `sim/#` at this QoS; persistent or clean session.
    Subscriber {
        persistent: bool,
        qos: QoS,
    },
}

pub struct Client {
    pub id: String,
    pub role: Role,
    pub version: ProtocolVersion,
    /// The shard that owns the client id (where its session lives).
    pub owner: u16,
    /// The shard the current connection is on (the accepting one until a hand-off is adopted).
    pub shard: u16,
    pub key: Option<ConnKey>,
    /// The I/O handle of the current connection (also while it is being handed to the owner shard).
    pub io: Option<u64>,
    /// Bytes written by the client, not yet read by the broker.
    pub to_broker: BytesMut,
    /// Bytes read from the broker that do not make a whole packet yet.
    pub from_broker: BytesMut,
    pub decoder: Decoder,
    pub connected: bool,
    pub subscribed: bool,
    /// Numbers the connections: each carries a will with it as its seq (publisher index `WILL_BASE + client`),
    /// and every message published on it (order is checked per connection).
    pub will_seq: u32,
    // Publisher state.
    pub next_seq: u32,
    /// packet id -> (seq, qos, retained) of publishes not yet acknowledged.
    pub outstanding: HashMap<u16, (u32, QoS, bool)>,
    // Subscriber state (kept across reconnects, as a real client with a persistent session keeps it).
    pub qos2_pending: HashSet<u16>,
    /// (publisher index, its connection) -> first-arrival seqs, in order.
    pub got: HashMap<(usize, u32), Vec<u32>>,
    pub seen: HashSet<(usize, u32)>,
    /// Seqs that arrived as QoS 2 (exactly once).
    pub qos2_seen: HashSet<(usize, u32)>,
}

/// What publishers were told: acknowledged (publisher, seq, qos), and per publisher the highest acknowledged
/// seq of a retained publish.
#[derive(Default)]
pub struct Acked {
    pub msgs: BTreeSet<(usize, u32, u8)>,
    pub retained: BTreeMap<usize, u32>,
}

pub fn frame(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut b = BytesMut::new();
    codec::encode(p, v, &mut b).unwrap();
    b
}

pub fn resp(packet_id: u16) -> PubResp {
    PubResp {
        packet_id,
        reason: ReasonCode::Success,
        properties: None,
    }
}

/// (publisher, seq, connection) from a simulation payload.
pub fn stamp(payload: &[u8]) -> (usize, u32, u32) {
    let word = |i: usize| u32::from_be_bytes(payload[i * 4..i * 4 + 4].try_into().unwrap());
    (word(0) as usize, word(1), word(2))
}

/// `connection` numbers the publisher's connections: order is promised within one. Messages a client sent on a
/// connection it then gave up may be routed after those of its next one (the old connection's hand-off to the
/// owner shard arrives late and takes over the new one).
pub fn payload(publisher: usize, seq: u32, connection: u32) -> Vec<u8> {
    [publisher as u32, seq, connection]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

impl Client {
    pub fn new(id: String, role: Role, owner: u16, version: ProtocolVersion) -> Client {
        Client {
            id,
            role,
            version,
            owner,
            shard: owner,
            key: None,
            io: None,
            to_broker: BytesMut::new(),
            from_broker: BytesMut::new(),
            decoder: Decoder::new_client(version, 1 << 20),
            connected: false,
            subscribed: false,
            will_seq: 0,
            next_seq: 0,
            outstanding: HashMap::new(),
            qos2_pending: HashSet::new(),
            got: HashMap::new(),
            seen: HashSet::new(),
            qos2_seen: HashSet::new(),
        }
    }

    pub fn persistent(&self) -> bool {
        matches!(
            self.role,
            Role::Subscriber {
                persistent: true,
                ..
            }
        )
    }

    fn send(&mut self, p: &Packet) {
        let v = self.version;
        self.to_broker.extend_from_slice(&frame(p, v));
    }

    /// React to one packet from the broker.
    pub fn on_packet(&mut self, c: usize, acked: &mut Acked, p: Packet) -> Result<(), String> {
        match p {
            Packet::ConnAck(a) => {
                if a.reason != ReasonCode::Success {
                    return Err(format!("{}: CONNACK {:?}", self.id, a.reason));
                }
            }
            Packet::SubAck(_) => self.subscribed = true,
            Packet::PubAck(r) | Packet::PubRec(r) => {
                if let Some(&(seq, qos, retained)) = self.outstanding.get(&r.packet_id) {
                    let ok = r.reason == ReasonCode::Success;
                    if ok {
                        acked.msgs.insert((c, seq, qos as u8));
                        if retained {
                            let m = acked.retained.entry(c).or_insert(seq);
                            *m = (*m).max(seq);
                        }
                    } else if r.reason != ReasonCode::QuotaExceeded {
                        return Err(format!("{}: refused with {:?}", self.id, r.reason));
                    }
                    // A v5 PUBREC with a failure reason ends the exchange: no PUBREL.
                    if qos == QoS::ExactlyOnce && ok {
                        self.send(&Packet::PubRel(resp(r.packet_id)));
                    } else {
                        self.outstanding.remove(&r.packet_id);
                    }
                }
            }
            Packet::PubComp(r) => {
                self.outstanding.remove(&r.packet_id);
            }
            Packet::Publish(p) => {
                let (publisher, seq, connection) = stamp(&p.payload);
                let mut fresh = true;
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.send(&Packet::PubAck(resp(p.packet_id))),
                    QoS::ExactlyOnce => {
                        // Method B: a PUBLISH whose id awaits PUBREL is the same message again.
                        fresh = self.qos2_pending.insert(p.packet_id);
                        self.send(&Packet::PubRec(resp(p.packet_id)));
                    }
                }
                if p.retain {
                    // A retained copy sent at SUBSCRIBE: the message again, not a duplicate delivery.
                    self.seen.insert((publisher, seq));
                    return Ok(());
                }
                if p.qos == QoS::ExactlyOnce && fresh && !self.qos2_seen.insert((publisher, seq)) {
                    return Err(format!(
                        "{}: QoS 2 message {publisher}/{seq} delivered twice",
                        self.id
                    ));
                }
                // Wills are not ordered: a connection handed off through the other shard may be adopted after
                // its successor and take it over, so the older will goes out second.
                if fresh && self.seen.insert((publisher, seq)) && publisher < WILL_BASE {
                    let list = self.got.entry((publisher, connection)).or_default();
                    if let Some(&last) = list.last() {
                        if seq < last {
                            return Err(format!(
                                "{}: {publisher}/{seq} arrived after {publisher}/{last} (order per publisher)",
                                self.id
                            ));
                        }
                    }
                    list.push(seq);
                }
            }
            Packet::PubRel(r) => {
                self.qos2_pending.remove(&r.packet_id);
                self.send(&Packet::PubComp(resp(r.packet_id)));
            }
            Packet::Disconnect(_) | Packet::PingResp | Packet::UnsubAck(_) => {}
            other => return Err(format!("{}: unexpected {other:?}", self.id)),
        }
        Ok(())
    }
}
