//! Deterministic simulation of a 2-shard broker (issue 20): the sans-io `Shard`s with real logs in a temp dir,
//! the mesh carried by the simulation (FIFO per direction, delayed at random), clients (3.1.1 and v5) that send
//! in random chunks, read at random, disconnect with and without DISCONNECT, connect through the shard that does
//! not own their client id (the connection is handed to the owner with `Adopt`) and take over their own
//! half-dead connections, carry wills and publish retained messages; and a disk that crashes with lost and torn
//! unsynced writes (`disk.rs`). One seed drives everything.
//!
//! Invariants: every QoS 1/2 message acknowledged to a publisher (PUBACK, PUBREC with Success) reaches every
//! persistent subscriber (checked after a final fault-free drain, across every crash and recovery of the run);
//! no QoS 2 message (wills included) reaches a subscriber twice; first arrivals from one publisher come in
//! publish order; every session queue stays within its bound (after every step); each shard's retained message
//! of a publisher's topic is at least as new as the newest retained publish acknowledged to it.

pub mod client;
pub mod disk;
pub mod rng;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use coremq::broker::shard::{
    owner_shard, MeshMsg, QueueFullPolicy, ReadOutcome, Shard, ShardConfig,
};
use coremq::codec::{
    Connect, Decoder, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    Subscribe, SubscribeFilter, SubscriptionOptions, Will,
};
use coremq::store::{FsyncPolicy, Store, StoreConfig};

use client::{frame, payload, stamp, Acked, Client, Role, WILL_BASE};
use disk::DiskImage;
use rng::Rng;

const SHARDS: u16 = 2;

pub struct Report {
    pub steps: u64,
    pub crashes: u64,
    pub acked: usize,
    pub refused: u64,
    pub handoffs: u64,
    pub v5_clients: usize,
}

pub struct World {
    rng: Rng,
    dir: tempfile::TempDir,
    shard_cfg: ShardConfig,
    store_cfg: StoreConfig,
    shards: Vec<Option<Shard>>,
    disks: Vec<DiskImage>,
    /// Mesh messages in transit per direction (from, to), FIFO.
    mesh: BTreeMap<(u16, u16), VecDeque<MeshMsg>>,
    clients: Vec<Client>,
    acked: Acked,
    now: u32,
    crashes: u64,
    /// I/O handles given out (low 16 bits: the client index).
    next_io: u64,
    /// Connections adopted by their owner shard after a hand-off.
    handoffs: u64,
    failure: Option<String>,
    /// Every persistent subscriber has its SUBACK: from now on, what is acknowledged must reach them.
    ready: bool,
}

/// `SIM_TRACE=1`: print what happens (to read a failing seed).
fn trace_on() -> bool {
    std::env::var_os("SIM_TRACE").is_some()
}

macro_rules! trace {
    ($($t:tt)*) => {
        if trace_on() {
            eprintln!($($t)*);
        }
    };
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
        let version = |rng: &mut Rng| {
            if rng.chance(2) {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V3_1_1
            }
        };
        for i in 0..n_pubs {
            let shard = (i % 2) as u16;
            let v = version(&mut rng);
            clients.push(Client::new(
                id_on(&format!("pub{i}"), shard),
                Role::Publisher,
                shard,
                v,
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
            let v = version(&mut rng);
            clients.push(Client::new(
                id_on(&format!("sub{i}"), shard),
                role,
                shard,
                v,
            ));
        }
        let mut w = World {
            rng,
            dir: tempfile::tempdir().unwrap(),
            shard_cfg,
            store_cfg,
            shards: Vec::new(),
            disks: (0..SHARDS).map(|_| DiskImage::default()).collect(),
            mesh: BTreeMap::new(),
            clients,
            acked: Acked::default(),
            now: 0,
            crashes: 0,
            next_io: 0,
            handoffs: 0,
            failure: None,
            ready: false,
        };
        w.boot();
        w.drain(200);
        w.ready = w.clients.iter().all(|c| c.subscribed || !c.persistent());
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
        self.check_retained()?;
        let refused = (0..SHARDS)
            .map(|s| {
                let st = &self.shard(s).stats;
                st.publishes_refused + st.refused_queue_full
            })
            .sum();
        Ok(Report {
            steps,
            crashes: self.crashes,
            acked: self.acked.msgs.len(),
            refused,
            handoffs: self.handoffs,
            v5_clients: self
                .clients
                .iter()
                .filter(|c| c.version == ProtocolVersion::V5)
                .count(),
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
            90..=94 => self.connect(c),
            95 => self.take_over(c),
            96 => self.disconnect(c),
            97 => self.graceful_disconnect(c),
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

    /// Open a connection: usually through the owner shard, sometimes through the other one (the CONNECT is
    /// then handed to the owner). Each connection carries a will.
    fn connect(&mut self, c: usize) {
        if self.clients[c].connected {
            return;
        }
        let via_peer = self.rng.chance(3);
        let will_qos = match self.rng.below(3) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let shard = if via_peer {
            1 - self.clients[c].owner
        } else {
            self.clients[c].owner
        };
        self.next_io += 1;
        let io = (self.next_io << 16) | c as u64;
        let key = self.shard(shard).accept(io);
        trace!("connect {c} io {io:#x} via shard {shard} key {key:?}");
        let cl = &mut self.clients[c];
        let clean = !cl.persistent();
        let v = cl.version;
        cl.shard = shard;
        cl.key = Some(key);
        cl.io = Some(io);
        cl.connected = true;
        cl.decoder = Decoder::new_client(v, 1 << 20);
        cl.to_broker.clear();
        cl.from_broker.clear();
        cl.outstanding.clear();
        if clean {
            cl.subscribed = false;
            cl.qos2_pending.clear();
        }
        cl.will_seq += 1;
        let properties = (v == ProtocolVersion::V5 && !clean).then(|| {
            Box::new(Properties {
                session_expiry_interval: Some(u32::MAX),
                ..Default::default()
            })
        });
        let connect = Connect {
            protocol: v,
            bridge: false,
            clean_start: clean,
            keep_alive: 0,
            client_id: cl.id.as_str().into(),
            will: Some(Will {
                topic: format!("sim/w/{c}").into(),
                payload: payload(WILL_BASE + c, cl.will_seq, cl.will_seq).into(),
                qos: will_qos,
                retain: false,
                properties: None,
            }),
            username: None,
            password: None,
            properties,
        };
        cl.to_broker
            .extend_from_slice(&frame(&Packet::Connect(Box::new(connect)), v));
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
                    .extend_from_slice(&frame(&Packet::Subscribe(sub), v));
            }
        }
    }

    /// The client gives up on a connection the broker still thinks is alive (a half-open socket) and connects
    /// again: the broker takes the session over from the old connection.
    fn take_over(&mut self, c: usize) {
        if !self.clients[c].connected {
            return;
        }
        trace!("takeover {c}");
        let cl = &mut self.clients[c];
        cl.key = None;
        cl.io = None;
        cl.connected = false;
        self.connect(c);
    }

    /// The client's side of the connection goes away (the broker sees the socket close; the will goes out).
    fn disconnect(&mut self, c: usize) {
        trace!("socket of {c} closes");
        let cl = &mut self.clients[c];
        cl.connected = false;
        // Still being handed to the owner: the adopted connection is closed on arrival.
        cl.io = None;
        let Some(key) = cl.key.take() else {
            return;
        };
        let shard = cl.shard;
        let sh = self.shard(shard);
        sh.on_io_closed(key);
        sh.release(key);
    }

    /// DISCONNECT, then the socket closes (no will).
    fn graceful_disconnect(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        if cl.key.is_none() {
            return;
        }
        let v = cl.version;
        let d = Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: None,
        });
        cl.to_broker.extend_from_slice(&frame(&d, v));
        let mut all = std::mem::take(&mut self.clients[c].to_broker);
        self.feed(c, &mut all);
        self.disconnect(c);
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
                    self.clients[c].io = None;
                    self.clients[c].connected = false;
                }
                self.shard(s).release(key);
            }
        }
    }

    /// The broker reads `bytes` from the client's connection.
    fn feed(&mut self, c: usize, bytes: &mut BytesMut) {
        let Some(key) = self.clients[c].key else {
            return;
        };
        let shard = self.clients[c].shard;
        match self.shard(shard).on_bytes(key, bytes) {
            ReadOutcome::Close => self.clients[c].to_broker.clear(),
            // On its way to the owner shard (the rest of the bytes travel with it).
            ReadOutcome::HandedOff => self.clients[c].key = None,
            _ => {}
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
                self.feed(c, &mut BytesMut::new());
            }
            return;
        }
        let n = 1 + self.rng.below(pending as u64) as usize;
        let mut chunk = self.clients[c].to_broker.split_to(n);
        self.feed(c, &mut chunk);
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
        let retain = self.rng.chance(5);
        let cl = &mut self.clients[c];
        let seq = cl.next_seq;
        cl.next_seq += 1;
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            (seq % 60_000) as u16 + 1
        };
        if qos != QoS::AtMostOnce {
            cl.outstanding.insert(packet_id, (seq, qos, retain));
        }
        let topic = if retain {
            format!("sim/r/{c}")
        } else {
            format!("sim/{c}")
        };
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id,
            properties: None,
            payload: payload(c, seq, cl.will_seq).into(),
        };
        let v = cl.version;
        trace!("{c} publishes {seq} {qos:?} retain {retain} pid {packet_id}");
        cl.to_broker
            .extend_from_slice(&frame(&Packet::Publish(p), v));
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
            trace!("{c} gets {p:?}");
            if let Err(e) = self.clients[c].on_packet(c, &mut self.acked, p) {
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

    /// One mesh message arrives. An `Adopt` is the I/O layer's business: the owner shard adopts the connection
    /// (unless the client gave up on it meanwhile: then it is closed at once).
    fn deliver(&mut self, from: u16, to: u16, m: MeshMsg) {
        let MeshMsg::Adopt(a) = m else {
            self.shard(to).on_mesh(from, m);
            return;
        };
        self.handoffs += 1;
        let io = a.io;
        let c = (io & 0xffff) as usize;
        let (key, outcome) = self.shard(to).adopt(*a);
        trace!("adopt {c} io {io:#x} on shard {to} key {key:?}: {outcome:?}");
        let cl = &mut self.clients[c];
        if cl.io != Some(io) {
            let sh = self.shard(to);
            sh.on_io_closed(key);
            sh.release(key);
            return;
        }
        cl.key = Some(key);
        cl.shard = to;
        if outcome == ReadOutcome::Close {
            cl.to_broker.clear();
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
            self.deliver(from, to, m);
        }
    }

    /// Both shards die at once (the process is killed, unsynced writes are lost or torn), then restart.
    fn crash(&mut self) {
        trace!("CRASH");
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
            cl.io = None;
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
                self.deliver(from, to, m);
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
                        self.feed(c, &mut b);
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
                    self.deliver(s, to, m);
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
                .msgs
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

    /// A fresh clean 3.1.1 client on each shard subscribes to `sim/r/#`: that shard's retained message of each
    /// publisher's topic must be at least as new as the newest retained publish acknowledged to the publisher.
    fn check_retained(&mut self) -> Result<(), String> {
        let v = ProtocolVersion::V3_1_1;
        for s in 0..SHARDS {
            let id = id_on(&format!("checker{s}"), s);
            let key = self.shard(s).accept(u64::MAX - s as u64);
            let mut b = frame(
                &Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start: true,
                    keep_alive: 0,
                    client_id: id.as_str().into(),
                    will: None,
                    username: None,
                    password: None,
                    properties: None,
                    bridge: false,
                })),
                v,
            );
            b.extend_from_slice(&frame(
                &Packet::Subscribe(Subscribe {
                    packet_id: 1,
                    filters: vec![SubscribeFilter {
                        filter: "sim/r/#".into(),
                        options: SubscriptionOptions {
                            qos: QoS::AtMostOnce,
                            ..Default::default()
                        },
                    }],
                    properties: None,
                }),
                v,
            ));
            self.shard(s).on_bytes(key, &mut b);
            // The SUBACK (and the retained messages after it) wait for the peer's interest acknowledgement.
            for _ in 0..8 {
                for from in 0..SHARDS {
                    let sh = self.shard(from);
                    sh.end_round();
                    sh.sync_log();
                    let mut out = Vec::new();
                    sh.take_mesh(&mut out);
                    for (to, m) in out {
                        self.deliver(from, to, m);
                    }
                }
            }
            let sh = self.shard(s);
            let Some((out, n)) = sh.out_writable(key) else {
                return Err(format!("retained checker on shard {s} was closed"));
            };
            let mut bytes = BytesMut::from(&out[..n]);
            sh.consumed(key, n);
            let mut d = Decoder::new_client(v, 1 << 20);
            let mut newest: BTreeMap<usize, u32> = BTreeMap::new();
            while let Some(p) = d.decode(&mut bytes).map_err(|e| format!("{e:?}"))? {
                if let Packet::Publish(p) = p {
                    let (publisher, seq, _) = stamp(&p.payload);
                    newest.insert(publisher, seq);
                }
            }
            for (&publisher, &acked) in &self.acked.retained {
                match newest.get(&publisher) {
                    Some(&got) if got >= acked => {}
                    got => {
                        return Err(format!(
                            "shard {s}: retained message of publisher {publisher} is {got:?}, but {acked} was acknowledged"
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}
