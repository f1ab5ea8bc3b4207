//! Whole client conversations into two sans-io shards (issue 20): the input is read as a script of operations by
//! up to four clients (connect as 3.1/3.1.1/5 through either shard, publish, subscribe, unsubscribe, acks, ping,
//! disconnect, raw garbage, read, drop the socket) and by the "runtime" (end a round, sync, carry the mesh with
//! its hand-offs, advance the clock). Shared by the libFuzzer target (`conversation.rs`) and the proptest
//! (`tests/conversation_fuzz.rs`).
//!
//! Checked after every operation: no panic; every session queue within its bound and every connection's output
//! within its buffer bound plus what its own input can explain (bounded memory); everything the broker writes
//! to a client decodes in that client's protocol, and every reason code it sends is one the spec allows for that
//! packet (v5 refusals included: PUBACK/PUBREC 0x97, SUBACK 0x8F, DISCONNECT 0x82, ...).

use bytes::BytesMut;
use coremq::broker::message::ConnKey;
use coremq::broker::shard::{MeshMsg, ReadOutcome, Shard, ShardConfig};
use coremq::codec::{
    self, Connect, Decoder, Disconnect, Packet, Properties, ProtocolVersion, PubResp, Publish, QoS,
    ReasonCode, RetainHandling, Subscribe, SubscribeFilter, SubscriptionOptions, Unsubscribe, Will,
};
use coremq::store::{FsyncPolicy, Store, StoreConfig};

const CLIENTS: usize = 4;
const MAX_OPS: usize = 400;
const TOPICS: [&str; 7] = ["t/a", "t/b", "t/a/b", "$SYS/x", "", "t/+", "u"];
const FILTERS: [&str; 9] = [
    "t/#",
    "t/+",
    "#",
    "t/a",
    "$share/g/t/#",
    "+/+/",
    "t/#/x",
    "$SYS/#",
    "",
];
const IDS: [&str; 5] = ["a", "b", "c", "d", ""];

struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

#[derive(Default)]
struct Slot {
    /// (shard, key) of the current connection; None while it is being handed off or after it ended.
    at: Option<(u16, ConnKey)>,
    io: Option<u64>,
    version: Option<ProtocolVersion>,
    decoder: Option<Decoder>,
    buf: BytesMut,
    /// Raw garbage was sent: the broker may have read a CONNECT of another version; output is not checked.
    tainted: bool,
    /// Bytes this connection fed the broker.
    fed: usize,
    /// Packet ids of QoS>0 deliveries received, to acknowledge.
    received: Vec<(u16, QoS)>,
}

struct World {
    shards: Vec<Shard>,
    slots: Vec<Slot>,
    next_io: u64,
    now: u32,
    cfg: ShardConfig,
    _dir: Option<tempfile::TempDir>,
    ran: Ran,
}

fn config() -> ShardConfig {
    ShardConfig {
        shards: 2,
        max_packet_size: 4096,
        max_inflight: 4,
        max_inbound_qos2: 4,
        max_queued_messages: 8,
        max_in_transit: 8,
        max_offline_messages_per_session: 16,
        max_offline_bytes_per_session: 4096,
        max_out_buffer: 2048,
        max_subscriptions_per_session: 8,
        max_retained_messages: 16,
        max_retained_bytes: 8192,
        topic_alias_maximum: 4,
        ..ShardConfig::default()
    }
}

/// What one script did (so a test can tell that it reached the paths it means to).
#[derive(Debug, Default)]
pub struct Ran {
    pub ops: usize,
    /// PUBLISH packets clients received.
    pub delivered: usize,
    /// Connections adopted by their owner shard.
    pub handoffs: usize,
}

/// Run one conversation script. Panics on a broken invariant.
pub fn run(data: &[u8]) -> Ran {
    let mut inp = Input { data, pos: 0 };
    let persist = inp.byte() & 1 == 1;
    let cfg = config();
    let mut dir = None;
    let shards = (0..2u16)
        .map(|s| {
            let mut shard = Shard::new(ShardConfig {
                shard_id: s,
                ..cfg.clone()
            });
            if persist {
                let d = dir.get_or_insert_with(|| tempfile::tempdir().unwrap());
                let store_cfg = StoreConfig {
                    fsync: FsyncPolicy::Interval(std::time::Duration::from_secs(3600)),
                    segment_size: 64 << 10,
                    max_record_size: 16 << 10,
                    max_group_bytes: 64 << 10,
                    max_segments: 4,
                    ..StoreConfig::default()
                };
                let (store, rec) = Store::open(&d.path().join(s.to_string()), s as u32, store_cfg)
                    .expect("a fresh log opens");
                shard.attach_store(store, 1_000_000);
                shard.restore(rec.state);
            }
            shard
        })
        .collect();
    let mut w = World {
        shards,
        slots: (0..CLIENTS).map(|_| Slot::default()).collect(),
        next_io: 0,
        now: 0,
        cfg,
        _dir: dir,
        ran: Ran::default(),
    };
    for _ in 0..MAX_OPS {
        if inp.done() {
            break;
        }
        w.ran.ops += 1;
        w.op(&mut inp);
        w.collect_closes();
        w.check();
    }
    // Everything settles: rounds until the mesh is quiet, then everyone reads.
    for _ in 0..8 {
        w.round(true);
        for c in 0..CLIENTS {
            w.read(c, usize::MAX);
        }
        w.collect_closes();
        w.check();
    }
    w.ran
}

impl World {
    fn op(&mut self, inp: &mut Input) {
        let b = inp.byte();
        // Low nibble: the operation; high nibble: the client.
        let c = (b >> 4) as usize % CLIENTS;
        match (b & 0x0f) % 12 {
            0 => self.connect(c, inp),
            1 => {
                let p = publish(inp);
                self.send(c, Packet::Publish(p), inp);
            }
            2 => {
                let n = 1 + inp.byte() as usize % 3;
                let filters = (0..n)
                    .map(|_| {
                        let o = inp.byte();
                        SubscribeFilter {
                            filter: FILTERS[o as usize % FILTERS.len()].into(),
                            options: SubscriptionOptions {
                                qos: qos(o >> 4),
                                no_local: o & 0x40 != 0,
                                retain_as_published: o & 0x80 != 0,
                                retain_handling: match (o >> 2) & 3 {
                                    0 => RetainHandling::SendAtSubscribe,
                                    1 => RetainHandling::SendIfNew,
                                    _ => RetainHandling::DoNotSend,
                                },
                            },
                        }
                    })
                    .collect();
                let sub = Subscribe {
                    packet_id: inp.u16().max(1),
                    filters,
                    properties: None,
                };
                self.send(c, Packet::Subscribe(sub), inp);
            }
            3 => {
                let f = FILTERS[inp.byte() as usize % FILTERS.len()];
                let u = Unsubscribe {
                    packet_id: inp.u16().max(1),
                    filters: vec![f.into()],
                    properties: None,
                };
                self.send(c, Packet::Unsubscribe(u), inp);
            }
            4 => {
                let k = inp.byte();
                let slot = &mut self.slots[c];
                let (pid, q) = if slot.received.is_empty() || k & 1 == 1 {
                    (inp.u16().max(1), qos(k >> 1))
                } else {
                    slot.received.remove(k as usize % slot.received.len())
                };
                let r = PubResp {
                    packet_id: pid,
                    reason: ReasonCode::Success,
                    properties: None,
                };
                let p = match (q, k >> 6) {
                    (QoS::AtLeastOnce, _) => Packet::PubAck(r),
                    (_, 0) => Packet::PubRec(r),
                    (_, 1) => Packet::PubRel(r),
                    _ => Packet::PubComp(r),
                };
                self.send(c, p, inp);
            }
            5 => self.send(c, Packet::PingReq, inp),
            6 => {
                let reason = if inp.byte() & 1 == 0 {
                    ReasonCode::Success
                } else {
                    ReasonCode::DisconnectWithWillMessage
                };
                let d = Disconnect {
                    reason,
                    properties: None,
                };
                self.send(c, Packet::Disconnect(d), inp);
            }
            7 => {
                let n = inp.byte() as usize % 32;
                let mut raw = BytesMut::from(&inp.bytes(n)[..]);
                self.slots[c].tainted = true;
                self.feed(c, &mut raw);
            }
            8 => {
                let n = inp.u16() as usize;
                self.read(c, n);
            }
            9 => self.drop_socket(c),
            10 => {
                let sync = inp.byte() & 1 == 1;
                self.round(sync);
            }
            _ => {
                self.now += 1 + inp.byte() as u32 % 30;
                for s in &mut self.shards {
                    s.tick(self.now);
                }
            }
        }
    }

    fn connect(&mut self, c: usize, inp: &mut Input) {
        let b = inp.byte();
        let version = match (b & 3) % 3 {
            0 => ProtocolVersion::V3_1,
            1 => ProtocolVersion::V3_1_1,
            _ => ProtocolVersion::V5,
        };
        let clean = b & 0x04 != 0;
        let id = IDS[((b >> 3) & 7) as usize % IDS.len()];
        let shard = ((b >> 6) & 1) as u16;
        let will = (b & 0x80 != 0).then(|| {
            let k = inp.byte();
            Will {
                topic: TOPICS[k as usize % TOPICS.len()].into(),
                payload: bytes::Bytes::from(vec![k; 3]),
                qos: qos(k >> 4),
                retain: k & 0x80 != 0,
                properties: None,
            }
        });
        let properties = (version == ProtocolVersion::V5).then(|| {
            let k = inp.byte();
            Box::new(Properties {
                session_expiry_interval: (k & 1 == 1).then_some(k as u32 * 10),
                receive_maximum: (k & 2 == 2).then_some(1 + (k as u16 >> 4)),
                topic_alias_maximum: (k & 4 == 4).then_some(2),
                maximum_packet_size: (k & 8 == 8).then_some(64 + k as u32),
                ..Default::default()
            })
        });
        // A second connection of the same slot leaves the first one to the broker (half-open socket, takeover).
        self.next_io += 1;
        let io = (self.next_io << 8) | c as u64;
        let key = self.shards[shard as usize].accept(io);
        let slot = &mut self.slots[c];
        *slot = Slot {
            at: Some((shard, key)),
            io: Some(io),
            version: Some(version),
            decoder: Some(Decoder::new_client(version, 1 << 20)),
            ..Slot::default()
        };
        let connect = Connect {
            protocol: version,
            clean_start: clean,
            keep_alive: inp.byte() as u16 % 4,
            client_id: id.into(),
            will,
            username: None,
            password: None,
            properties,
            // Not drawn from the input: scripts (tests/conversation_fuzz.rs) depend on the bytes a connect takes.
            bridge: false,
        };
        self.send(c, Packet::Connect(Box::new(connect)), inp);
    }

    /// Encode in the slot's protocol and feed, whole or split in two reads.
    fn send(&mut self, c: usize, p: Packet, inp: &mut Input) {
        let v = self.slots[c].version.unwrap_or(ProtocolVersion::V3_1_1);
        let mut out = BytesMut::new();
        if codec::encode(&p, v, &mut out).is_err() {
            return;
        }
        let split = inp.byte() as usize % (out.len() + 1);
        let mut first = out.split_to(split);
        self.feed(c, &mut first);
        self.feed(c, &mut out);
    }

    fn feed(&mut self, c: usize, bytes: &mut BytesMut) {
        let Some((s, key)) = self.slots[c].at else {
            return;
        };
        self.slots[c].fed += bytes.len();
        let shard = &mut self.shards[s as usize];
        if !shard.can_read(key) {
            return;
        }
        if shard.on_bytes(key, bytes) == ReadOutcome::HandedOff {
            self.slots[c].at = None;
        }
    }

    fn drop_socket(&mut self, c: usize) {
        let slot = &mut self.slots[c];
        slot.io = None;
        if let Some((s, key)) = slot.at.take() {
            let shard = &mut self.shards[s as usize];
            shard.on_io_closed(key);
            shard.release(key);
        }
    }

    /// The client reads up to `n` writable bytes and checks every packet in them.
    fn read(&mut self, c: usize, n: usize) {
        let Some((s, key)) = self.slots[c].at else {
            return;
        };
        let shard = &mut self.shards[s as usize];
        let Some((out, writable)) = shard.out_writable(key) else {
            return;
        };
        let take = writable.min(n);
        let bytes = BytesMut::from(&out[..take]);
        shard.consumed(key, take);
        shard.flushed(key);
        self.receive(c, &bytes);
    }

    fn receive(&mut self, c: usize, bytes: &[u8]) {
        let slot = &mut self.slots[c];
        let ran = &mut self.ran;
        if slot.tainted {
            return;
        }
        let Some(d) = slot.decoder.as_mut() else {
            return;
        };
        slot.buf.extend_from_slice(bytes);
        loop {
            match d.decode(&mut slot.buf) {
                Ok(Some(p)) => {
                    check_reasons(&p);
                    if let Packet::Publish(p) = &p {
                        ran.delivered += 1;
                        if p.qos != QoS::AtMostOnce {
                            slot.received.push((p.packet_id, p.qos));
                            slot.received.truncate(64);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => panic!("the broker sent client {c} a packet it cannot decode: {e}"),
            }
        }
    }

    fn collect_closes(&mut self) {
        for s in 0..2u16 {
            let mut closing = Vec::new();
            self.shards[s as usize].take_closing(&mut closing);
            for key in closing {
                if let Some(c) = self.slots.iter().position(|x| x.at == Some((s, key))) {
                    self.read(c, usize::MAX);
                    self.slots[c].at = None;
                    self.slots[c].io = None;
                }
                self.shards[s as usize].release(key);
            }
        }
    }

    /// End a round on both shards (optionally syncing their logs) and carry the mesh both ways.
    fn round(&mut self, sync: bool) {
        for _ in 0..3 {
            for s in 0..2u16 {
                let shard = &mut self.shards[s as usize];
                shard.end_round();
                if sync {
                    shard.sync_log();
                }
                shard.poll_durable();
                let mut out = Vec::new();
                shard.take_mesh(&mut out);
                let mut resumed = Vec::new();
                shard.take_resumed(&mut resumed);
                for (to, m) in out {
                    self.deliver(s, to, m);
                }
            }
        }
    }

    fn deliver(&mut self, from: u16, to: u16, m: MeshMsg) {
        let MeshMsg::Adopt(a) = m else {
            self.shards[to as usize].on_mesh(from, m);
            return;
        };
        self.ran.handoffs += 1;
        let io = a.io;
        let c = (io & 0xff) as usize;
        let (key, _) = self.shards[to as usize].adopt(*a);
        if self.slots[c].io == Some(io) {
            self.slots[c].at = Some((to, key));
        } else {
            let shard = &mut self.shards[to as usize];
            shard.on_io_closed(key);
            shard.release(key);
        }
    }

    fn check(&mut self) {
        let c = &self.cfg;
        let bound =
            (c.max_queued_messages + c.max_in_transit).max(c.max_offline_messages_per_session);
        for (s, shard) in self.shards.iter_mut().enumerate() {
            let b = shard.max_session_backlog();
            assert!(
                b <= bound,
                "shard {s}: a session holds {b} messages, bound {bound}"
            );
        }
        for slot in &self.slots {
            let Some((s, key)) = slot.at else { continue };
            let shard = &mut self.shards[s as usize];
            let Some(out) = shard.out_buf(key) else {
                continue;
            };
            // Deliveries stop at max_out_buffer (one packet may overshoot); acks and control packets answer the
            // connection's own input, a few bytes per byte at most.
            let limit = c.max_out_buffer + c.max_packet_size as usize + 8 * slot.fed + 8192;
            assert!(
                out.len() <= limit,
                "a connection holds {} output bytes (limit {limit})",
                out.len()
            );
        }
    }
}

fn qos(b: u8) -> QoS {
    match b % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn publish(inp: &mut Input) -> Publish {
    let b = inp.byte();
    let q = qos(b);
    let k = inp.byte();
    let properties = (k & 1 == 1).then(|| {
        Box::new(Properties {
            topic_alias: (k & 2 == 2).then_some(1 + (k as u16 >> 5)),
            message_expiry_interval: (k & 4 == 4).then_some(k as u32 >> 3),
            payload_format_indicator: (k & 8 == 8).then_some(1),
            ..Default::default()
        })
    });
    let n = inp.byte() as usize % 48;
    Publish {
        dup: b & 0x40 != 0,
        qos: q,
        retain: b & 0x80 != 0,
        topic: TOPICS[(b >> 2) as usize % TOPICS.len()].into(),
        packet_id: if q == QoS::AtMostOnce {
            0
        } else {
            inp.u16().max(1) % 8 + 1
        },
        properties,
        payload: bytes::Bytes::from(inp.bytes(n)),
    }
}

/// The reason codes MQTT 5 allows per packet (3.1.1 packets decode to the same codes).
fn check_reasons(p: &Packet) {
    use ReasonCode::*;
    let (what, r, ok): (&str, ReasonCode, &[ReasonCode]) = match p {
        Packet::ConnAck(a) => (
            "CONNACK",
            a.reason,
            &[
                Success,
                UnspecifiedError,
                MalformedPacket,
                ProtocolError,
                ImplementationSpecificError,
                UnsupportedProtocolVersion,
                ClientIdentifierNotValid,
                BadUserNameOrPassword,
                NotAuthorized,
                ServerUnavailable,
                ServerBusy,
                Banned,
                BadAuthenticationMethod,
                TopicNameInvalid,
                PacketTooLarge,
                QuotaExceeded,
                PayloadFormatInvalid,
                RetainNotSupported,
                QoSNotSupported,
                UseAnotherServer,
                ServerMoved,
                ConnectionRateExceeded,
            ],
        ),
        Packet::PubAck(r) | Packet::PubRec(r) => (
            "PUBACK/PUBREC",
            r.reason,
            &[
                Success,
                NoMatchingSubscribers,
                UnspecifiedError,
                ImplementationSpecificError,
                NotAuthorized,
                TopicNameInvalid,
                PacketIdentifierInUse,
                QuotaExceeded,
                PayloadFormatInvalid,
            ],
        ),
        Packet::PubRel(r) | Packet::PubComp(r) => (
            "PUBREL/PUBCOMP",
            r.reason,
            &[Success, PacketIdentifierNotFound],
        ),
        Packet::SubAck(a) => {
            for &r in &a.reasons {
                assert!(
                    [
                        Success,
                        GrantedQoS1,
                        GrantedQoS2,
                        UnspecifiedError,
                        ImplementationSpecificError,
                        NotAuthorized,
                        TopicFilterInvalid,
                        PacketIdentifierInUse,
                        QuotaExceeded,
                        SharedSubscriptionsNotSupported,
                        SubscriptionIdentifiersNotSupported,
                        WildcardSubscriptionsNotSupported,
                    ]
                    .contains(&r),
                    "SUBACK with {r:?}"
                );
            }
            return;
        }
        Packet::UnsubAck(a) => {
            for &r in &a.reasons {
                assert!(
                    [
                        Success,
                        NoSubscriptionExisted,
                        UnspecifiedError,
                        ImplementationSpecificError,
                        NotAuthorized,
                        TopicFilterInvalid,
                        PacketIdentifierInUse,
                    ]
                    .contains(&r),
                    "UNSUBACK with {r:?}"
                );
            }
            return;
        }
        Packet::Disconnect(d) => (
            "DISCONNECT",
            d.reason,
            &[
                Success,
                UnspecifiedError,
                MalformedPacket,
                ProtocolError,
                ImplementationSpecificError,
                NotAuthorized,
                ServerBusy,
                ServerShuttingDown,
                KeepAliveTimeout,
                SessionTakenOver,
                TopicFilterInvalid,
                TopicNameInvalid,
                ReceiveMaximumExceeded,
                TopicAliasInvalid,
                PacketTooLarge,
                MessageRateTooHigh,
                QuotaExceeded,
                AdministrativeAction,
                PayloadFormatInvalid,
                RetainNotSupported,
                QoSNotSupported,
                UseAnotherServer,
                ServerMoved,
                SharedSubscriptionsNotSupported,
                ConnectionRateExceeded,
                MaximumConnectTime,
                SubscriptionIdentifiersNotSupported,
                WildcardSubscriptionsNotSupported,
            ],
        ),
        _ => return,
    };
    assert!(ok.contains(&r), "{what} with reason {r:?}");
}
