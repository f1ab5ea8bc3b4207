//! Deterministic simulation of a 2-shard broker (issue 20): the sans-io `Shard`s with real logs in a temp dir,
//! the mesh carried by the simulation (FIFO per direction, delayed at random), clients that send in random
//! chunks, read at random, disconnect, and a disk that crashes with lost and torn unsynced writes
//! (`disk.rs`). One seed drives everything.
//!
//! Invariants: every QoS 1/2 message acknowledged to a publisher (PUBACK, PUBREC) reaches every persistent
//! subscriber (checked after a final fault-free drain, across every crash and recovery of the run); no QoS 2
//! message reaches a subscriber twice; first arrivals from one publisher come in publish order; every session
//! queue stays within its bound (after every step).

pub mod disk;
pub mod rng;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use coremq::broker::message::ConnKey;
use coremq::broker::shard::{
    owner_shard, MeshMsg, QueueFullPolicy, ReadOutcome, Shard, ShardConfig,
};
use coremq::codec::{
    self, Connect, Decoder, Packet, ProtocolVersion, PubResp, Publish, QoS, ReasonCode, Subscribe,
    SubscribeFilter, SubscriptionOptions,
};
use coremq::store::{FsyncPolicy, Store, StoreConfig};

use disk::DiskImage;
use rng::Rng;

const V: ProtocolVersion = ProtocolVersion::V3_1_1;
const SHARDS: u16 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher,
    /// Subscribes to `sim/#` at this QoS; persistent or clean session.
    Subscriber {
        persistent: bool,
        qos: QoS,
    },
}

struct Client {
    id: String,
    role: Role,
    shard: u16,
    key: Option<ConnKey>,
    /// Bytes written by the client, not yet read by the broker.
    to_broker: BytesMut,
    /// Bytes read from the broker that do not make a whole packet yet.
    from_broker: BytesMut,
    decoder: Decoder,
    connected: bool,
    subscribed: bool,
    // Publisher state.
    next_seq: u32,
    /// packet id -> (seq, qos) of publishes not yet acknowledged.
    outstanding: HashMap<u16, (u32, QoS)>,
    // Subscriber state (kept across reconnects, as a real client with a persistent session keeps it).
    qos2_pending: HashSet<u16>,
    /// publisher index -> first-arrival seqs, in order.
    got: HashMap<usize, Vec<u32>>,
    seen: HashSet<(usize, u32)>,
    /// Seqs that arrived as QoS 2 (exactly once).
    qos2_seen: HashSet<(usize, u32)>,
}

pub struct Report {
    pub steps: u64,
    pub crashes: u64,
    pub acked: usize,
    pub refused: u64,
}

pub struct World {
    rng: Rng,
    dir: tempfile::TempDir,
    shard_cfg: ShardConfig,
    store_cfg: StoreConfig,
    shards: Vec<Option<Shard>>,
    disks: Vec<DiskImage>,
    /// Mesh messages in transit per direction (from, to), FIFO.
    mesh: HashMap<(u16, u16), VecDeque<MeshMsg>>,
    clients: Vec<Client>,
    /// (publisher index, seq, qos) acknowledged to the publisher.
    acked: BTreeSet<(usize, u32, u8)>,
    now: u32,
    crashes: u64,
    failure: Option<String>,
    /// Every persistent subscriber has its SUBACK: from now on, what is acknowledged must reach them.
    ready: bool,
}

fn frame(p: &Packet) -> BytesMut {
    let mut b = BytesMut::new();
    codec::encode(p, V, &mut b).unwrap();
    b
}

fn resp(packet_id: u16) -> PubResp {
    PubResp {
        packet_id,
        reason: ReasonCode::Success,
        properties: None,
    }
}

fn id_on(prefix: &str, shard: u16) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| owner_shard(id, SHARDS) == shard)
        .unwrap()
}

impl World {
    pub fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let tiny = rng.chance(4);
        let shard_cfg = ShardConfig {
            shards: SHARDS,
            max_queued_messages: 8 + rng.below(64) as usize,
            max_in_transit: 16,
            max_inflight: 1 + rng.below(8) as u16,
            max_offline_messages_per_session: if tiny { 20 } else { 100_000 },
            max_offline_bytes_per_session: if tiny { 3000 } else { 64 << 20 },
            persistent_queue_full: QueueFullPolicy::Refuse,
            ..ShardConfig::default()
        };
        let store_cfg = StoreConfig {
            // Nothing is durable unless the simulation syncs (and snapshots) it.
            fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
            sync_bytes: usize::MAX,
            segment_size: 64 << 10,
            max_record_size: 16 << 10,
            max_group_bytes: 64 << 10,
            // A small budget sometimes: the log fills up (the ENOSPC path: refusals, never losses).
            max_segments: if rng.chance(3) { 3 } else { 64 },
            ..StoreConfig::default()
        };
        let mut clients = Vec::new();
        let n_pubs = 1 + rng.below(3) as usize;
        for i in 0..n_pubs {
            let shard = (i % 2) as u16;
            clients.push(Client::new(
                id_on(&format!("pub{i}"), shard),
                Role::Publisher,
                shard,
            ));
        }
        for (i, (persistent, qos)) in [
            (true, QoS::ExactlyOnce),
            (true, QoS::AtLeastOnce),
            (false, QoS::ExactlyOnce),
        ]
        .into_iter()
        .enumerate()
        {
            let shard = (rng.below(2)) as u16;
            let role = Role::Subscriber { persistent, qos };
            clients.push(Client::new(id_on(&format!("sub{i}"), shard), role, shard));
        }
        let mut w = World {
            rng,
            dir: tempfile::tempdir().unwrap(),
            shard_cfg,
            store_cfg,
            shards: Vec::new(),
            disks: (0..SHARDS).map(|_| DiskImage::default()).collect(),
            mesh: HashMap::new(),
            clients,
            acked: BTreeSet::new(),
            now: 0,
            crashes: 0,
            failure: None,
            ready: false,
        };
        w.boot();
        w.drain(200);
        w.ready = w.clients.iter().all(|c| {
            c.subscribed
                || !matches!(
                    c.role,
                    Role::Subscriber {
                        persistent: true,
                        ..
                    }
                )
        });
        assert!(w.ready, "subscribers did not get their SUBACKs");
        w
    }

    fn shard_dir(&self, s: u16) -> PathBuf {
        self.dir.path().join(s.to_string())
    }

    /// Open both logs and restore the shards from them (start, and after a crash).
    fn boot(&mut self) {
        self.shards.clear();
        let mut filters = Vec::new();
        for s in 0..SHARDS {
            let dir = self.shard_dir(s);
            let (store, rec) = Store::open(&dir, s as u32, self.store_cfg.clone())
                .unwrap_or_else(|e| panic!("shard {s}: log does not open after a crash: {e}"));
            let mut shard = Shard::new(ShardConfig {
                shard_id: s,
                ..self.shard_cfg.clone()
            });
            shard.attach_store(store, 1_000_000);
            filters.push(shard.restore(rec.state));
            shard.tick(self.now);
            self.shards.push(Some(shard));
            // What recovery left is on disk now.
            self.disks[s as usize].synced(&dir);
        }
        for s in 0..SHARDS {
            let peer = 1 - s;
            self.shard(s)
                .add_peer_interest(peer, &filters[peer as usize]);
        }
    }

    fn shard(&mut self, s: u16) -> &mut Shard {
        self.shards[s as usize].as_mut().unwrap()
    }

    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.failure = Some(why);
        }
    }

    pub fn run(mut self, steps: u64) -> Result<Report, String> {
        for step in 0..steps {
            self.step();
            self.check_bounds();
            if let Some(f) = self.failure.take() {
                return Err(format!("step {step}: {f}"));
            }
        }
        self.drain(4000);
        self.check_final()?;
        let refused = (0..SHARDS)
            .map(|s| {
                let st = &self.shard(s).stats;
                st.publishes_refused + st.refused_queue_full
            })
            .sum();
        Ok(Report {
            steps,
            crashes: self.crashes,
            acked: self.acked.len(),
            refused,
        })
    }

    fn step(&mut self) {
        let c = self.rng.below(self.clients.len() as u64) as usize;
        match self.rng.below(100) {
            0..=29 => self.client_sends(c),
            30..=49 => self.client_publishes(c),
            50..=69 => self.client_reads(c),
            70..=84 => self.round(),
            85..=89 => self.carry_mesh(),
            90..=95 => self.connect(c),
            96..=97 => self.disconnect(c),
            98 => {
                self.now += 1;
                let now = self.now;
                for s in 0..SHARDS {
                    self.shard(s).tick(now);
                }
            }
            _ => {
                if self.rng.chance(8) {
                    self.crash();
                }
            }
        }
        self.collect_closes();
    }

    fn connect(&mut self, c: usize) {
        if self.clients[c].connected {
            return;
        }
        let clean = !matches!(
            self.clients[c].role,
            Role::Subscriber {
                persistent: true,
                ..
            }
        );
        let shard = self.clients[c].shard;
        let key = self.shard(shard).accept(c as u64);
        let cl = &mut self.clients[c];
        cl.key = Some(key);
        cl.connected = true;
        cl.decoder = Decoder::new_client(V, 1 << 20);
        cl.to_broker.clear();
        cl.from_broker.clear();
        cl.outstanding.clear();
        if clean {
            cl.subscribed = false;
            cl.qos2_pending.clear();
        }
        let connect = Connect {
            protocol: V,
            bridge: false,
            clean_start: clean,
            keep_alive: 0,
            client_id: cl.id.as_str().into(),
            will: None,
            username: None,
            password: None,
            properties: None,
        };
        cl.to_broker
            .extend_from_slice(&frame(&Packet::Connect(Box::new(connect))));
        if let Role::Subscriber { qos, .. } = cl.role {
            if !cl.subscribed {
                let sub = Subscribe {
                    packet_id: 1,
                    filters: vec![SubscribeFilter {
                        filter: "sim/#".into(),
                        options: SubscriptionOptions {
                            qos,
                            ..Default::default()
                        },
                    }],
                    properties: None,
                };
                cl.to_broker
                    .extend_from_slice(&frame(&Packet::Subscribe(sub)));
            }
        }
    }

    /// The client's side of the connection goes away (the broker sees the socket close).
    fn disconnect(&mut self, c: usize) {
        let Some(key) = self.clients[c].key.take() else {
            return;
        };
        self.clients[c].connected = false;
        let shard = self.clients[c].shard;
        let sh = self.shard(shard);
        sh.on_io_closed(key);
        sh.release(key);
    }

    /// Broker-initiated closes: the client reads what is writable, then the socket closes.
    fn collect_closes(&mut self) {
        for s in 0..SHARDS {
            let mut closing = Vec::new();
            self.shard(s).take_closing(&mut closing);
            for key in closing {
                if let Some(c) = self
                    .clients
                    .iter()
                    .position(|cl| cl.key == Some(key) && cl.shard == s)
                {
                    self.read_all(c);
                    self.clients[c].key = None;
                    self.clients[c].connected = false;
                }
                self.shard(s).release(key);
            }
        }
    }

    fn client_sends(&mut self, c: usize) {
        let Some(key) = self.clients[c].key else {
            return;
        };
        let shard = self.clients[c].shard;
        if !self.shard(shard).can_read(key) {
            return;
        }
        let pending = self.clients[c].to_broker.len();
        if pending == 0 {
            if self.shard(shard).has_partial(key) {
                let mut empty = BytesMut::new();
                self.shard(shard).on_bytes(key, &mut empty);
            }
            return;
        }
        let n = 1 + self.rng.below(pending as u64) as usize;
        let mut chunk = self.clients[c].to_broker.split_to(n);
        if self.shard(shard).on_bytes(key, &mut chunk) == ReadOutcome::Close {
            self.clients[c].to_broker.clear();
        }
    }

    fn client_publishes(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        if cl.role != Role::Publisher || !cl.connected || cl.outstanding.len() >= 8 || !self.ready {
            return;
        }
        let qos = match self.rng.below(3) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let cl = &mut self.clients[c];
        let seq = cl.next_seq;
        cl.next_seq += 1;
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            (seq % 60_000) as u16 + 1
        };
        if qos != QoS::AtMostOnce {
            cl.outstanding.insert(packet_id, (seq, qos));
        }
        let mut payload = (c as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(&seq.to_be_bytes());
        let p = Publish {
            dup: false,
            qos,
            retain: false,
            topic: format!("sim/{c}").into(),
            packet_id,
            properties: None,
            payload: payload.into(),
        };
        cl.to_broker.extend_from_slice(&frame(&Packet::Publish(p)));
    }

    /// The client reads a random part of what the broker may write now.
    fn client_reads(&mut self, c: usize) {
        let Some(key) = self.clients[c].key else {
            return;
        };
        let shard = self.clients[c].shard;
        let Some((_, n)) = self.shard(shard).out_writable(key) else {
            return;
        };
        if n == 0 {
            return;
        }
        let take = 1 + self.rng.below(n as u64) as usize;
        let (out, _) = self.shard(shard).out_writable(key).unwrap();
        let bytes = BytesMut::from(&out[..take]);
        self.shard(shard).consumed(key, take);
        self.shard(shard).flushed(key);
        self.client_receives(c, bytes);
    }

    fn read_all(&mut self, c: usize) {
        let Some(key) = self.clients[c].key else {
            return;
        };
        let shard = self.clients[c].shard;
        let Some((out, n)) = self.shard(shard).out_writable(key) else {
            return;
        };
        let bytes = BytesMut::from(&out[..n]);
        self.shard(shard).consumed(key, n);
        self.client_receives(c, bytes);
    }

    fn client_receives(&mut self, c: usize, bytes: BytesMut) {
        let mut buf = std::mem::take(&mut self.clients[c].from_broker);
        buf.extend_from_slice(&bytes);
        loop {
            let p = match self.clients[c].decoder.decode(&mut buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    self.fail(format!(
                        "client {}: broker sent garbage: {e:?}",
                        self.clients[c].id
                    ));
                    return;
                }
            };
            let acked = &mut self.acked;
            if let Err(e) = on_packet(&mut self.clients[c], c, acked, p) {
                self.fail(e);
                return;
            }
        }
        // A partial frame waits for the next read.
        self.clients[c].from_broker = buf;
    }

    /// End of an I/O round on both shards: commit, maybe sync (and snapshot what is durable), mesh out.
    fn round(&mut self) {
        for s in 0..SHARDS {
            let sync = self.rng.chance(3);
            let dir = self.shard_dir(s);
            let sh = self.shard(s);
            sh.end_round();
            if sync {
                sh.sync_log();
            }
            sh.poll_durable();
            let mut out = Vec::new();
            sh.take_mesh(&mut out);
            let mut resumed = Vec::new();
            sh.take_resumed(&mut resumed);
            if sync {
                self.disks[s as usize].synced(&dir);
            }
            for (to, m) in out {
                self.mesh.entry((s, to)).or_default().push_back(m);
            }
        }
    }

    /// Deliver a random prefix of one direction's mesh queue (FIFO, like the SPSC channels).
    fn carry_mesh(&mut self) {
        let from = self.rng.below(SHARDS as u64) as u16;
        let to = 1 - from;
        let Some(q) = self.mesh.get_mut(&(from, to)) else {
            return;
        };
        let n = 1 + self.rng.below(q.len() as u64 + 1) as usize;
        let batch: Vec<MeshMsg> = q.drain(..n.min(q.len())).collect();
        for m in batch {
            self.shard(to).on_mesh(from, m);
        }
    }

    /// Both shards die at once (the process is killed, unsynced writes are lost or torn), then restart.
    fn crash(&mut self) {
        self.crashes += 1;
        self.shards.clear();
        self.mesh.clear();
        for s in 0..SHARDS {
            let dir = self.shard_dir(s);
            let disk = std::mem::take(&mut self.disks[s as usize]);
            disk.crash(&dir, &mut self.rng);
        }
        for cl in &mut self.clients {
            cl.key = None;
            cl.connected = false;
        }
        self.boot();
    }

    fn check_bounds(&mut self) {
        let c = self.shard_cfg.clone();
        let bound =
            (c.max_queued_messages + c.max_in_transit).max(c.max_offline_messages_per_session);
        for s in 0..SHARDS {
            let sh = self.shard(s);
            let b = sh.max_session_backlog();
            let bytes = sh.stats.queued_log_bytes;
            if b > bound {
                self.fail(format!(
                    "shard {s}: a session holds {b} messages, bound {bound}"
                ));
            }
            // Two persistent sessions, each within its byte bound.
            let max_bytes = c.max_offline_bytes_per_session * 2;
            if bytes > max_bytes {
                self.fail(format!("shard {s}: {bytes} queued log bytes"));
            }
        }
    }

    /// No more faults: everyone connects, everything is carried and synced until nothing moves.
    fn drain(&mut self, rounds: usize) {
        for ((from, to), q) in std::mem::take(&mut self.mesh) {
            for m in q {
                self.shard(to).on_mesh(from, m);
            }
        }
        for c in 0..self.clients.len() {
            self.connect(c);
        }
        for _ in 0..rounds {
            for c in 0..self.clients.len() {
                if let Some(key) = self.clients[c].key {
                    let shard = self.clients[c].shard;
                    if self.shard(shard).can_read(key) {
                        let mut b = std::mem::take(&mut self.clients[c].to_broker);
                        self.shard(shard).on_bytes(key, &mut b);
                    }
                }
                self.read_all(c);
                if let Some(key) = self.clients[c].key {
                    let shard = self.clients[c].shard;
                    self.shard(shard).flushed(key);
                }
            }
            for s in 0..SHARDS {
                let sh = self.shard(s);
                sh.end_round();
                sh.sync_log();
                let mut out = Vec::new();
                sh.take_mesh(&mut out);
                for (to, m) in out {
                    self.shard(to).on_mesh(s, m);
                }
            }
            self.collect_closes();
            for c in 0..self.clients.len() {
                self.connect(c);
            }
        }
    }

    fn check_final(&mut self) -> Result<(), String> {
        if let Some(f) = self.failure.take() {
            return Err(format!("drain: {f}"));
        }
        for cl in &self.clients {
            let Role::Subscriber {
                persistent: true,
                qos,
            } = cl.role
            else {
                continue;
            };
            let missing: Vec<_> = self
                .acked
                .iter()
                .filter(|&&(p, seq, q)| q.min(qos as u8) > 0 && !cl.seen.contains(&(p, seq)))
                .take(10)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{}: acknowledged messages lost (publisher, seq, qos), first: {missing:?}",
                    cl.id
                ));
            }
        }
        Ok(())
    }
}

impl Client {
    fn new(id: String, role: Role, shard: u16) -> Client {
        Client {
            id,
            role,
            shard,
            key: None,
            to_broker: BytesMut::new(),
            from_broker: BytesMut::new(),
            decoder: Decoder::new_client(V, 1 << 20),
            connected: false,
            subscribed: false,
            next_seq: 0,
            outstanding: HashMap::new(),
            qos2_pending: HashSet::new(),
            got: HashMap::new(),
            seen: HashSet::new(),
            qos2_seen: HashSet::new(),
        }
    }
}

/// A client reacts to one packet from the broker, as a correct MQTT client would.
fn on_packet(
    cl: &mut Client,
    c: usize,
    acked: &mut BTreeSet<(usize, u32, u8)>,
    p: Packet,
) -> Result<(), String> {
    match p {
        Packet::ConnAck(a) => {
            if a.reason != ReasonCode::Success {
                return Err(format!("{}: CONNACK {:?}", cl.id, a.reason));
            }
        }
        Packet::SubAck(_) => cl.subscribed = true,
        Packet::PubAck(r) | Packet::PubRec(r) => {
            if let Some(&(seq, qos)) = cl.outstanding.get(&r.packet_id) {
                if r.reason == ReasonCode::Success {
                    acked.insert((c, seq, qos as u8));
                }
                if qos == QoS::ExactlyOnce {
                    cl.to_broker
                        .extend_from_slice(&frame(&Packet::PubRel(resp(r.packet_id))));
                } else {
                    cl.outstanding.remove(&r.packet_id);
                }
            }
        }
        Packet::PubComp(r) => {
            cl.outstanding.remove(&r.packet_id);
        }
        Packet::Publish(p) => {
            let publisher = u32::from_be_bytes(p.payload[..4].try_into().unwrap()) as usize;
            let seq = u32::from_be_bytes(p.payload[4..8].try_into().unwrap());
            let mut fresh = true;
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => cl
                    .to_broker
                    .extend_from_slice(&frame(&Packet::PubAck(resp(p.packet_id)))),
                QoS::ExactlyOnce => {
                    // Method B: a PUBLISH whose id awaits PUBREL is the same message again.
                    fresh = cl.qos2_pending.insert(p.packet_id);
                    cl.to_broker
                        .extend_from_slice(&frame(&Packet::PubRec(resp(p.packet_id))));
                    if fresh && !cl.qos2_seen.insert((publisher, seq)) {
                        return Err(format!(
                            "{}: QoS 2 message {publisher}/{seq} delivered twice",
                            cl.id
                        ));
                    }
                }
            }
            if fresh && cl.seen.insert((publisher, seq)) {
                let list = cl.got.entry(publisher).or_default();
                if let Some(&last) = list.last() {
                    if seq < last {
                        return Err(format!(
                            "{}: {publisher}/{seq} arrived after {publisher}/{last} (order per publisher)",
                            cl.id
                        ));
                    }
                }
                list.push(seq);
            }
        }
        Packet::PubRel(r) => {
            cl.qos2_pending.remove(&r.packet_id);
            cl.to_broker
                .extend_from_slice(&frame(&Packet::PubComp(resp(r.packet_id))));
        }
        Packet::Disconnect(_) | Packet::PingResp | Packet::UnsubAck(_) => {}
        other => return Err(format!("{}: unexpected {other:?}", cl.id)),
    }
    Ok(())
}
