//! The shard core: every protocol decision of one shard, with no I/O in it.
//!
//! The I/O layer (`crate::server`) feeds it events (bytes read from a connection, a connection closed, a message
//! from another shard, the clock) and carries out what it leaves behind: bytes in connection output buffers
//! (`take_dirty` / `out_buf`), connections to close (`take_closing`), messages for other shards (`take_mesh`) and
//! connections whose reading may resume (`take_resumed`). Tests drive it directly with bytes.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::BytesMut;
use bytestring::ByteString;

use crate::broker::client_index::ClientIndex;
use crate::broker::durability::Durability;
use crate::broker::keepalive::{Deadline, Secs, Wheel};
use crate::broker::message::{ConnKey, Message, Origin};
use crate::broker::session::{Inflight, InflightState, Queued, Session, Subscription};
use crate::broker::trie::Trie;
use crate::codec::topic::parse_shared;
use crate::codec::{
    self, ConnAck, Connect, DecodeError, Decoder, Disconnect, Packet, Properties, ProtocolVersion,
    PubResp, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::store::{DeliveryState, Store};

#[path = "shard_persist.rs"]
mod persist;

/// What to do with a QoS 1/2 message for an online session whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Stop reading from the publishers feeding the full queue, so their acknowledgements wait (default).
    Backpressure,
    DropOldest,
    DropNewest,
}

#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub shard_id: u16,
    pub shards: u16,
    pub max_packet_size: u32,
    /// Upper bound on the keep-alive a v5 client may use (announced as Server Keep Alive). 0 = no bound.
    pub max_keepalive: u16,
    pub connect_timeout_secs: u32,
    /// Outbound QoS 1/2 messages in flight per session.
    pub max_inflight: u16,
    /// Inbound QoS 2 messages awaiting PUBREL per session (our v5 Receive Maximum).
    pub max_inbound_qos2: u16,
    /// Soft bound of a session's queue (waiting + in flight).
    pub max_queued_messages: usize,
    /// Messages that can already be on their way to a session when it asks its publishers to pause: the mesh
    /// channel, inbox and overflow capacities plus one message per distinct local publisher. The hard bound of a
    /// queue under backpressure is `max_queued_messages + max_in_transit`; only past it is anything dropped.
    pub max_in_transit: usize,
    pub overflow: OverflowPolicy,
    /// Offline sessions cannot exert backpressure: their full queues drop (oldest or newest).
    pub offline_overflow: OverflowPolicy,
    /// QoS 0 for an online session whose queue is full: dropped (`DropNewest`, counted) or `Backpressure` like
    /// QoS 1/2. Offline sessions always drop QoS 0.
    pub qos0_overflow: OverflowPolicy,
    /// Bytes encoded ahead into a connection's output buffer before the rest waits in the session queue.
    pub max_out_buffer: usize,
    pub max_subscriptions_per_session: usize,
    pub max_sessions: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            shard_id: 0,
            shards: 1,
            max_packet_size: 1 << 20,
            max_keepalive: 0,
            connect_timeout_secs: 10,
            max_inflight: 32,
            max_inbound_qos2: 1024,
            max_queued_messages: 1000,
            max_in_transit: 16384,
            overflow: OverflowPolicy::Backpressure,
            offline_overflow: OverflowPolicy::DropNewest,
            qos0_overflow: OverflowPolicy::DropNewest,
            max_out_buffer: 64 * 1024,
            max_subscriptions_per_session: 1024,
            max_sessions: 1 << 20,
            max_retained_messages: 100_000,
            max_retained_bytes: 256 << 20,
        }
    }
}

/// A connection handed from the shard that accepted it to the shard that owns its client id.
#[derive(Debug)]
pub struct Adopt {
    /// The I/O layer's handle (the socket fd); ownership moves with the message.
    pub io: u64,
    pub connect: Box<Connect>,
    /// Bytes read after the CONNECT, in order.
    pub leftover: BytesMut,
    /// A client id we generated (empty id with clean start); reported to v5 clients.
    pub assigned_id: bool,
    /// The connection's stream layer (TLS, WebSocket), moved along by the I/O layers; the core never looks at it.
    pub stream: Option<Box<crate::stream::ConnStream>>,
}

/// Messages between shards (over the SPSC channel mesh).
#[derive(Debug)]
pub enum MeshMsg {
    /// Deliver to matching local sessions; never forwarded further. A non-zero sequence number asks for a
    /// `Handled` answer at the end of the receiver's round and, if the message wrote records to the receiver's
    /// log, a `Durable` once they are on disk (write-ahead PUBACK).
    Publish(Box<Message>, u64),
    /// Replicate a retained message (an empty payload clears the topic); sequence number as for `Publish`.
    Retain(Box<Message>, u64),
    /// We handled every message the receiver numbered for us up to `upto`; the ranges in `written` (inclusive)
    /// wrote records to our log that are not durable yet. Everything else up to `upto` wrote nothing here.
    Handled {
        upto: u64,
        written: Box<[(u64, u64)]>,
    },
    /// The records we wrote for every message the receiver numbered for us up to `seq` are durable.
    Durable {
        seq: u64,
    },
    /// The sender has its first local subscriber for these filters; answer `InterestAck { token }`.
    InterestAdd {
        filters: Vec<ByteString>,
        token: u64,
    },
    /// The sender's last local subscriber for these filters is gone.
    InterestRemove {
        filters: Vec<ByteString>,
    },
    InterestAck {
        token: u64,
    },
    Adopt(Box<Adopt>),
    /// Stop / resume reading a publisher connection of the receiving shard (backpressure).
    Pause(ConnKey),
    Resume(ConnKey),
    /// The sender's log could not take a QoS>0 message published on this connection of the receiving shard:
    /// the acknowledgement held for it must never leave. Sent before the sender's `Durable` for that message
    /// (channels are FIFO), so it always arrives first.
    LogRefused(ConnKey),
}

/// What happened to a connection after its bytes were processed.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// All bytes consumed; keep reading.
    Continue,
    /// Reading is paused (backpressure); unprocessed bytes are kept in the connection.
    Paused,
    /// The connection is closing: flush its output, close it, then `release` it.
    Close,
    /// The connection moved to another shard (an `Adopt` is in the mesh outbox): stop polling the socket but do
    /// not close it.
    HandedOff,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub connections_accepted: u64,
    pub connections_closed: u64,
    pub handoffs_out: u64,
    pub handoffs_in: u64,
    pub malformed: u64,
    pub protocol_errors: u64,
    pub keepalive_timeouts: u64,
    pub takeovers: u64,
    pub publishes_in: u64,
    pub publishes_out: u64,
    pub dropped_qos0: u64,
    pub dropped_qos12: u64,
    pub dropped_offline: u64,
    pub dropped_too_large: u64,
    pub retained_rejected: u64,
    pub wills_published: u64,
    pub pauses: u64,
    /// Log appends, commits or reads that failed (logged each time).
    pub persist_errors: u64,
    /// QoS>0 publishes refused because the log is full or failed.
    pub publishes_refused: u64,
    /// SUBSCRIBEs refused because too many were waiting for the other shards.
    pub subscribes_refused: u64,
    /// Times the shard stopped reading its sockets because too many rounds waited for the log (slow disk).
    pub log_stalls: u64,
}

impl Stats {
    fn drops(&self) -> u64 {
        self.dropped_qos0
            + self.dropped_qos12
            + self.dropped_offline
            + self.dropped_too_large
            + self.retained_rejected
            + self.publishes_refused
            + self.persist_errors
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subscriber {
    session: u32,
    options: codec::SubscriptionOptions,
    sub_id: Option<u32>,
}

const NO_SESSION: u32 = u32::MAX;
/// SUBSCRIBEs waiting for every shard to acknowledge their new filters, per shard.
const MAX_PENDING_SUBACKS: usize = 65_536;

#[derive(Debug)]
struct Conn {
    io: u64,
    session: u32,
    decoder: Decoder,
    /// Bytes of an incomplete frame (or unprocessed while paused). `None` while idle: boxed because it is rare and
    /// a `BytesMut` inline would cost every idle connection 24 bytes more.
    partial: Option<Box<BytesMut>>,
    /// Encoded packets not yet written. Released by the I/O layer once flushed.
    out: BytesMut,
    keep_alive: u16,
    /// Shard second of the last byte received (or of the accept, before CONNECT).
    last_seen: Secs,
    /// Number of full queues this publisher is feeding; reading stops while > 0.
    pause_count: u16,
    dirty: bool,
    closing: bool,
    /// Reading stopped because the peer is not reading our output (acks would pile up in `out`).
    out_blocked: bool,
}

#[derive(Debug)]
struct Slot<T> {
    gen: u32,
    item: Option<T>,
}

/// A slab whose keys carry a generation, so stale keys (from a queue, another shard or the wheel) miss.
#[derive(Debug)]
struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
    fn insert(&mut self, item: T) -> ConnKey {
        self.len += 1;
        match self.free.pop() {
            Some(idx) => {
                let slot = &mut self.slots[idx as usize];
                slot.gen = slot.gen.wrapping_add(1);
                slot.item = Some(item);
                ConnKey { idx, gen: slot.gen }
            }
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    item: Some(item),
                });
                ConnKey {
                    idx: (self.slots.len() - 1) as u32,
                    gen: 0,
                }
            }
        }
    }
    fn get(&self, k: ConnKey) -> Option<&T> {
        self.slots
            .get(k.idx as usize)
            .filter(|s| s.gen == k.gen)
            .and_then(|s| s.item.as_ref())
    }
    fn get_mut(&mut self, k: ConnKey) -> Option<&mut T> {
        self.slots
            .get_mut(k.idx as usize)
            .filter(|s| s.gen == k.gen)
            .and_then(|s| s.item.as_mut())
    }
    fn remove(&mut self, k: ConnKey) -> Option<T> {
        let slot = self
            .slots
            .get_mut(k.idx as usize)
            .filter(|s| s.gen == k.gen)?;
        let item = slot.item.take()?;
        self.free.push(k.idx);
        self.len -= 1;
        Some(item)
    }
}

struct PendingSubAck {
    conn: ConnKey,
    session: u32,
    remaining: u16,
    packet_id: u16,
    reasons: Vec<ReasonCode>,
    /// Filters (with options) whose retained messages go out after the SUBACK.
    retained: Vec<(ByteString, codec::SubscriptionOptions, Option<u32>)>,
}

/// Stable 64-bit FNV-1a: the owner shard of a client id must not change between runs (persistent sessions).
pub fn client_hash(client_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn owner_shard(client_id: &str, shards: u16) -> u16 {
    (client_hash(client_id) % shards.max(1) as u64) as u16
}

pub struct Shard {
    cfg: ShardConfig,
    conns: Slab<Conn>,
    sessions: Vec<Option<Session>>,
    free_sessions: Vec<u32>,
    by_client: ClientIndex,
    subs: Trie<Vec<Subscriber>>,
    /// Cross-shard interest summary: filter -> bitmask of peer shards with a local subscriber for it.
    interest: Trie<u64>,
    retained: Trie<Rc<Message>>,
    retained_bytes: usize,
    wheel: Wheel,
    now: Secs,
    pending_subacks: HashMap<u64, PendingSubAck>,
    next_token: u64,
    next_generated_id: u64,
    last_drop_log: u64,
    // Outputs for the I/O layer.
    dirty: Vec<ConnKey>,
    closing: Vec<ConnKey>,
    mesh_out: Vec<(u16, MeshMsg)>,
    resumed: Vec<ConnKey>,
    // Reused scratch for matching.
    hits: Vec<Subscriber>,
    pub stats: Stats,
    /// The shard's durable log; `None` = persistence off.
    store: Option<Store>,
    dur: Durability,
    /// Wall-clock second of shard time 0.
    epoch_unix: u64,
    /// The message `deliver_local` is routing and the id of its stored body (0 until first stored), so a
    /// message reaching several persistent sessions is written once.
    cur_body: Option<(*const Message, u64)>,
    /// Queue entries the current routing step marked `log_pending` (see `log_pending_enqueues`).
    pending_enqueues: usize,
    /// Recovery is rebuilding state from the log: nothing is written back.
    restoring: bool,
    /// Reading is paused until the rounds waiting for the log drop below half of `MAX_UNDURABLE_ROUNDS`.
    log_stalled: bool,
    /// Offline sessions with an expiry, by (deadline in shard seconds, session).
    expiring: std::collections::BTreeSet<(u64, u32)>,
}

impl Shard {
    pub fn new(cfg: ShardConfig) -> Self {
        let cfg_shards = cfg.shards;
        Shard {
            wheel: Wheel::new(4096),
            cfg,
            conns: Slab::new(),
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            by_client: ClientIndex::new(),
            subs: Trie::new(),
            interest: Trie::new(),
            retained: Trie::new(),
            retained_bytes: 0,
            now: 0,
            pending_subacks: HashMap::new(),
            next_token: 1,
            next_generated_id: 0,
            last_drop_log: 0,
            dirty: Vec::new(),
            closing: Vec::new(),
            mesh_out: Vec::new(),
            resumed: Vec::new(),
            hits: Vec::new(),
            stats: Stats::default(),
            store: None,
            dur: Durability::new(cfg_shards),
            epoch_unix: 0,
            cur_body: None,
            pending_enqueues: 0,
            restoring: false,
            log_stalled: false,
            expiring: std::collections::BTreeSet::new(),
        }
    }

    pub fn id(&self) -> u16 {
        self.cfg.shard_id
    }

    pub fn config(&self) -> &ShardConfig {
        &self.cfg
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len
    }

    pub fn session_count(&self) -> usize {
        self.by_client.len()
    }

    // ----- events from the I/O layer -------------------------------------------------------------------------

    /// A new socket. It must send CONNECT within the connect timeout.
    pub fn accept(&mut self, io: u64) -> ConnKey {
        self.stats.connections_accepted += 1;
        let key = self.conns.insert(Conn {
            io,
            session: NO_SESSION,
            decoder: Decoder::new_server(self.cfg.max_packet_size),
            partial: None,
            out: BytesMut::new(),
            keep_alive: 0,
            last_seen: self.now,
            pause_count: 0,
            dirty: false,
            closing: false,
            out_blocked: false,
        });
        self.wheel
            .insert(key, self.now + self.cfg.connect_timeout_secs, self.now);
        key
    }

    /// A connection handed over by the shard that accepted it.
    pub fn adopt(&mut self, a: Adopt) -> (ConnKey, ReadOutcome) {
        self.stats.handoffs_in += 1;
        let Adopt {
            io,
            connect,
            mut leftover,
            assigned_id,
            stream: _,
        } = a;
        let key = self.accept(io);
        self.stats.connections_accepted -= 1; // counted by the accepting shard
        if let Some(c) = self.conns.get_mut(key) {
            c.decoder = Decoder::server_connected(connect.protocol, self.cfg.max_packet_size);
        }
        match self.establish(key, *connect, assigned_id) {
            ReadOutcome::Continue if !leftover.is_empty() => {
                let out = self.on_bytes(key, &mut leftover);
                (key, out)
            }
            other => (key, other),
        }
    }

    pub fn conn_io(&self, key: ConnKey) -> Option<u64> {
        self.conns.get(key).map(|c| c.io)
    }

    /// Whether the I/O layer may read from this connection now.
    pub fn can_read(&self, key: ConnKey) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.pause_count == 0 && !c.out_blocked && !c.closing)
    }

    /// Whether the connection holds unprocessed bytes (to resume after a pause).
    pub fn has_partial(&self, key: ConnKey) -> bool {
        self.conns.get(key).is_some_and(|c| c.partial.is_some())
    }

    /// Bytes read from a connection. `data` is the I/O layer's scratch buffer: it is left empty (the tail of an
    /// incomplete frame is copied into the connection).
    pub fn on_bytes(&mut self, key: ConnKey, data: &mut BytesMut) -> ReadOutcome {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            data.clear();
            return ReadOutcome::Close;
        };
        if conn.closing {
            data.clear();
            return ReadOutcome::Close;
        }
        if !data.is_empty() {
            conn.last_seen = now;
        }
        // Work from the connection's own buffer when it holds a partial frame, else from the scratch buffer.
        let mut buf = match conn.partial.take() {
            None => std::mem::take(data),
            Some(p) => {
                let mut p = *p;
                p.extend_from_slice(data);
                data.clear();
                p
            }
        };
        let outcome = self.process(key, &mut buf);
        match outcome {
            ReadOutcome::Continue | ReadOutcome::Paused => {
                if let Some(conn) = self.conns.get_mut(key) {
                    if !buf.is_empty() {
                        // Keep only the unprocessed tail, in an allocation of its own.
                        conn.partial = Some(Box::new(BytesMut::from(&buf[..])));
                    }
                }
            }
            _ => {}
        }
        buf.clear();
        if data.capacity() == 0 {
            // Hand the scratch allocation back so the next read reuses it.
            *data = buf;
        }
        outcome
    }

    fn process(&mut self, key: ConnKey, buf: &mut BytesMut) -> ReadOutcome {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return ReadOutcome::Close;
            };
            if conn.closing {
                return ReadOutcome::Close;
            }
            if conn.pause_count > 0 {
                return ReadOutcome::Paused;
            }
            // Every inbound packet may add an ack to `out`: a peer that writes but never reads would grow it
            // without bound, so stop reading it until its output drains (see `flushed`).
            if conn.out.len() >= self.cfg.max_out_buffer * 2 {
                conn.out_blocked = true;
                return ReadOutcome::Paused;
            }
            let packet = match conn.decoder.decode(buf) {
                Ok(Some(p)) => p,
                Ok(None) => return ReadOutcome::Continue,
                Err(e) => {
                    self.decode_error(key, &e);
                    return ReadOutcome::Close;
                }
            };
            let outcome = self.on_packet(key, packet, buf);
            if outcome != ReadOutcome::Continue {
                return outcome;
            }
        }
    }

    /// The peer closed, or the socket failed: an abnormal disconnect (the will is published).
    pub fn on_io_closed(&mut self, key: ConnKey) {
        self.close(key, true, None);
    }

    /// The I/O layer closed the socket of a connection in `closing`: free its slot.
    pub fn release(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get(key) {
            if !c.closing {
                // Closed by the I/O layer without going through `close` (e.g. shutdown).
                self.close(key, true, None);
            }
        }
        if self.conns.remove(key).is_some() {
            self.stats.connections_closed += 1;
        }
        self.dur.forget(key);
    }

    pub fn on_mesh(&mut self, from: u16, msg: MeshMsg) {
        match msg {
            MeshMsg::Publish(m, seq) => {
                let m = Rc::new(*m);
                let before = (self.stats.persist_errors, self.dur.appends());
                self.deliver_local(&m);
                self.peer_msg_done(from, seq, m.origin, before);
            }
            MeshMsg::Retain(m, seq) => {
                let origin = m.origin;
                let before = (self.stats.persist_errors, self.dur.appends());
                self.store_retained(Rc::new(*m));
                self.peer_msg_done(from, seq, origin, before);
            }
            MeshMsg::LogRefused(key) => self.refuse_held(key),
            MeshMsg::Handled { upto, written } => {
                self.dur.on_peer_handled(from, upto, &written);
                self.poll_durable();
            }
            MeshMsg::Durable { seq } => {
                self.dur.on_peer_durable(from, seq);
                self.poll_durable();
            }
            MeshMsg::InterestAdd { filters, token } => {
                for f in &filters {
                    *self.interest.get_or_insert_with(f, || 0) |= 1u64 << from;
                }
                self.mesh_out.push((from, MeshMsg::InterestAck { token }));
            }
            MeshMsg::InterestRemove { filters } => {
                for f in &filters {
                    if let Some(mask) = self.interest.get_mut(f) {
                        *mask &= !(1u64 << from);
                    }
                    self.interest.remove_if(f, |m| *m == 0);
                }
            }
            MeshMsg::InterestAck { token } => {
                let done = match self.pending_subacks.get_mut(&token) {
                    Some(p) => {
                        p.remaining = p.remaining.saturating_sub(1);
                        p.remaining == 0
                    }
                    None => false,
                };
                if done {
                    let p = self
                        .pending_subacks
                        .remove(&token)
                        .expect("pending suback present");
                    self.finish_suback(p);
                }
            }
            MeshMsg::Adopt(a) => {
                // The I/O layer registers the socket and calls `adopt`; reaching here means it did not.
                tracing::error!(
                    io = a.io,
                    "Adopt delivered to the shard core directly; dropping connection"
                );
            }
            MeshMsg::Pause(k) => {
                let found = self.conns.get_mut(k).map(|c| c.pause_count += 1).is_some();
                tracing::debug!(shard = self.cfg.shard_id, conn = ?k, found, publishes_in = self.stats.publishes_in, "pause requested by a peer");
            }
            MeshMsg::Resume(k) => self.resume(k),
        }
    }

    /// Advance the shard clock: keep-alive and CONNECT timeouts, session expiry, drop logging.
    pub fn tick(&mut self, now: Secs) {
        self.now = now;
        let mut expired = Vec::new();
        let conns = &self.conns;
        self.wheel.advance(
            now,
            |k| match conns.get(k) {
                None => Deadline::Gone,
                Some(c) if c.closing => Deadline::Gone,
                Some(c) if c.session == NO_SESSION => Deadline::Expired,
                Some(c) if c.keep_alive == 0 => Deadline::Gone,
                // The spec's one and a half times the keep-alive, rounded up.
                Some(c) => Deadline::At(c.last_seen + (c.keep_alive as u32 * 3).div_ceil(2)),
            },
            &mut expired,
        );
        for k in expired {
            self.stats.keepalive_timeouts += 1;
            self.close(k, true, Some(ReasonCode::KeepAliveTimeout));
        }
        self.expire_sessions();
        self.store_maintenance();
        let drops = self.stats.drops();
        if drops != self.last_drop_log {
            tracing::warn!(
                shard = self.cfg.shard_id,
                qos0 = self.stats.dropped_qos0,
                qos12_online = self.stats.dropped_qos12,
                offline = self.stats.dropped_offline,
                too_large = self.stats.dropped_too_large,
                retained_rejected = self.stats.retained_rejected,
                refused_publishes = self.stats.publishes_refused,
                log_errors = self.stats.persist_errors,
                "messages dropped or refused (totals since start)"
            );
            self.last_drop_log = drops;
        }
    }

    // ----- outputs ---------------------------------------------------------------------------------------------

    /// Connections with bytes to write.
    pub fn take_dirty(&mut self, into: &mut Vec<ConnKey>) {
        for k in self.dirty.drain(..) {
            if let Some(c) = self.conns.get_mut(k) {
                if c.dirty {
                    c.dirty = false;
                    into.push(k);
                }
            }
        }
    }

    pub fn out_buf(&mut self, key: ConnKey) -> Option<&mut BytesMut> {
        self.conns.get_mut(key).map(|c| &mut c.out)
    }

    /// After the I/O layer wrote from `out_buf`: frees an empty buffer and refills from the session queue.
    pub fn flushed(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.out.is_empty() {
            c.out = BytesMut::new();
        }
        if c.out_blocked && c.out.len() < self.cfg.max_out_buffer {
            c.out_blocked = false;
            self.resumed.push(key);
        }
        let s = c.session;
        if s != NO_SESSION && !c.closing {
            self.pump(s);
        }
    }

    pub fn take_closing(&mut self, into: &mut Vec<ConnKey>) {
        into.append(&mut self.closing);
    }

    pub fn take_mesh(&mut self, into: &mut Vec<(u16, MeshMsg)>) {
        into.append(&mut self.mesh_out);
    }

    pub fn take_resumed(&mut self, into: &mut Vec<ConnKey>) {
        into.append(&mut self.resumed);
    }

    // ----- packets ---------------------------------------------------------------------------------------------

    fn on_packet(&mut self, key: ConnKey, packet: Packet, rest: &mut BytesMut) -> ReadOutcome {
        let session = self.conns.get(key).map(|c| c.session).unwrap_or(NO_SESSION);
        if session == NO_SESSION {
            return match packet {
                Packet::Connect(c) => self.on_connect(key, c, rest),
                _ => self.protocol_error(key, "first packet was not CONNECT"),
            };
        }
        match packet {
            Packet::Publish(p) => self.on_publish(key, session, p),
            Packet::PubAck(r) => {
                if let Some(done) = self.session_mut(session).on_puback(r.packet_id) {
                    self.persist_ack(session, done.q.msg_id);
                    self.pump(session);
                }
                ReadOutcome::Continue
            }
            Packet::PubRec(r) => {
                let known = self.session_mut(session).on_pubrec(r.packet_id);
                if let Some(msg_id) = known {
                    self.persist_delivery(session, msg_id, r.packet_id, DeliveryState::PubRelSent);
                }
                self.send_ack(key, Packet::PubRel, r.packet_id, known.is_some());
                ReadOutcome::Continue
            }
            Packet::PubRel(r) => {
                let known = self.session_mut(session).inbound_qos2_release(r.packet_id);
                if known {
                    // PUBCOMP frees the packet id for a new message: the release must be durable first, or a
                    // restart would take the next message with this id for a duplicate.
                    let work = self.dur.work();
                    self.persist_qos2_in(session, r.packet_id, false);
                    if self.dur.work() != work {
                        self.hold_output(key, true);
                    }
                }
                self.send_ack(key, Packet::PubComp, r.packet_id, known);
                ReadOutcome::Continue
            }
            Packet::PubComp(r) => {
                if let Some(done) = self.session_mut(session).on_pubcomp(r.packet_id) {
                    self.persist_ack(session, done.q.msg_id);
                    self.pump(session);
                }
                ReadOutcome::Continue
            }
            Packet::Subscribe(s) => self.on_subscribe(key, session, s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(key, session, u),
            Packet::PingReq => {
                self.send(key, &Packet::PingResp);
                ReadOutcome::Continue
            }
            Packet::Disconnect(d) => self.on_disconnect(key, session, d),
            Packet::Connect(_) => self.protocol_error(key, "second CONNECT"),
            Packet::Auth(_) => self.protocol_error(key, "AUTH without an authentication method"),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.protocol_error(key, "server-to-client packet sent by a client")
            }
        }
    }

    fn on_connect(
        &mut self,
        key: ConnKey,
        mut connect: Box<Connect>,
        rest: &mut BytesMut,
    ) -> ReadOutcome {
        let v = connect.protocol;
        if connect
            .properties
            .as_ref()
            .is_some_and(|p| p.authentication_method.is_some())
        {
            self.connack_error(key, ReasonCode::BadAuthenticationMethod);
            return ReadOutcome::Close;
        }
        let mut assigned = false;
        if connect.client_id.is_empty() {
            if !connect.clean_start && v != ProtocolVersion::V5 {
                // 3.1.1 [MQTT-3.1.3-8]: a zero-byte client id requires CleanSession = 1.
                self.connack_error(key, ReasonCode::ClientIdentifierNotValid);
                return ReadOutcome::Close;
            }
            connect.client_id = self.generate_client_id();
            assigned = true;
        }
        let owner = owner_shard(&connect.client_id, self.cfg.shards);
        if owner != self.cfg.shard_id {
            let conn = self.conns.remove(key).expect("connection present");
            self.stats.handoffs_out += 1;
            let leftover = rest.split();
            self.mesh_out.push((
                owner,
                MeshMsg::Adopt(Box::new(Adopt {
                    io: conn.io,
                    connect,
                    leftover,
                    assigned_id: assigned,
                    stream: None,
                })),
            ));
            return ReadOutcome::HandedOff;
        }
        self.establish(key, *connect, assigned)
    }

    /// A client id that hashes to this shard, so the connection needs no hand-off.
    fn generate_client_id(&mut self) -> ByteString {
        loop {
            self.next_generated_id += 1;
            let id = format!("coremq-{}-{}", self.cfg.shard_id, self.next_generated_id);
            if owner_shard(&id, self.cfg.shards) == self.cfg.shard_id {
                return id.into();
            }
        }
    }

    /// CONNECT on the owning shard: find or create the session, take over an older connection, answer CONNACK.
    fn establish(&mut self, key: ConnKey, connect: Connect, assigned_id: bool) -> ReadOutcome {
        let Connect {
            protocol,
            clean_start,
            keep_alive,
            client_id,
            will,
            properties,
            ..
        } = connect;
        // Everything kept past this packet gets its own exact-size allocation: decoded strings are slices of the
        // shard's shared 64 KiB read buffer, and keeping one would pin that whole buffer per connection.
        let mut client_id = ByteString::from(&*client_id);
        let will = will.map(|w| codec::Will {
            topic: ByteString::from(&*w.topic),
            payload: bytes::Bytes::copy_from_slice(&w.payload),
            properties: w.properties.map(|p| Box::new(owned_properties(&p))),
            ..w
        });
        let props = properties.as_deref();
        let expiry = if protocol == ProtocolVersion::V5 {
            match props.and_then(|p| p.session_expiry_interval).unwrap_or(0) {
                u32::MAX => None,
                n => Some(n),
            }
        } else if clean_start {
            Some(0)
        } else {
            None
        };

        let mut session_present = false;
        if let Some(&sidx) = self.by_client.get(&self.sessions, &client_id) {
            if let Some(old) = self.session(sidx).conn {
                // Closing the old connection may end a clean session, so look the session up again after.
                self.stats.takeovers += 1;
                self.close(old, true, Some(ReasonCode::SessionTakenOver));
            }
        }
        if let Some(&sidx) = self.by_client.get(&self.sessions, &client_id) {
            if clean_start {
                self.destroy_session(sidx);
            } else {
                session_present = true;
            }
        }
        let sidx = match self.by_client.get(&self.sessions, &client_id) {
            Some(&s) => s,
            None => {
                if self.by_client.len() >= self.cfg.max_sessions {
                    self.connack_error(key, ReasonCode::ServerUnavailable);
                    return ReadOutcome::Close;
                }
                // Moved, not cloned: cloning a freshly copied ByteString converts it to a shared buffer with a
                // 24-byte header, per idle connection (measured 403 -> 372 B/conn at 15k).
                let id = std::mem::take(&mut client_id);
                self.new_session(Session::new(id, protocol, expiry))
            }
        };

        let mut keep_alive = keep_alive;
        let mut server_keep_alive = None;
        if protocol == ProtocolVersion::V5
            && self.cfg.max_keepalive > 0
            && (keep_alive == 0 || keep_alive > self.cfg.max_keepalive)
        {
            keep_alive = self.cfg.max_keepalive;
            server_keep_alive = Some(keep_alive);
        }
        let receive_maximum = props.and_then(|p| p.receive_maximum).unwrap_or(u16::MAX);
        let client_max_packet = props.and_then(|p| p.maximum_packet_size).unwrap_or(0);
        let window = self.cfg.max_inflight.min(receive_maximum).max(1);
        self.unschedule_expiry(sidx);
        {
            let s = self.session_mut(sidx);
            s.protocol = protocol;
            s.expiry = expiry;
            s.conn = Some(key);
            s.will = will.map(Box::new);
            s.window = window;
            s.client_max_packet = client_max_packet;
        }
        if self.store.is_some() {
            if expiry == Some(0) {
                self.unpersist_session(sidx);
            } else {
                self.persist_session(sidx);
            }
        }
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return ReadOutcome::Close;
        };
        conn.session = sidx;
        conn.keep_alive = keep_alive;
        conn.last_seen = now;
        // The CONNECT-timeout entry filed at accept (due by `now + connect_timeout_secs`) re-files itself at the
        // keep-alive deadline when it fires: a second entry is needed only for a deadline earlier than that.
        let deadline = now + (keep_alive as u32 * 3).div_ceil(2);
        if keep_alive > 0 && deadline < now + self.cfg.connect_timeout_secs {
            self.wheel.insert(key, deadline, now);
        }

        let properties = (protocol == ProtocolVersion::V5).then(|| {
            Box::new(Properties {
                receive_maximum: Some(self.cfg.max_inbound_qos2),
                maximum_packet_size: Some(self.cfg.max_packet_size),
                shared_subscription_available: Some(0),
                server_keep_alive,
                assigned_client_identifier: assigned_id
                    .then(|| self.session(sidx).client_id.clone()),
                ..Properties::default()
            })
        });
        self.send(
            key,
            &Packet::ConnAck(ConnAck {
                session_present,
                reason: ReasonCode::Success,
                properties,
            }),
        );

        if session_present {
            self.replay_inflight(sidx, key);
        }
        self.pump(sidx);
        ReadOutcome::Continue
    }

    fn on_publish(&mut self, key: ConnKey, sidx: u32, mut p: Publish) -> ReadOutcome {
        self.stats.publishes_in += 1;

        if p.properties
            .as_ref()
            .is_some_and(|pr| pr.topic_alias.is_some())
        {
            // We announce Topic Alias Maximum 0, so any alias is invalid [MQTT-3.3.2-9].
            return self.close_with(
                key,
                ReasonCode::TopicAliasInvalid,
                "topic alias not allowed",
            );
        }
        if p.qos != QoS::AtMostOnce {
            let size = p.topic.len() + p.payload.len() + 64;
            if let Some(e) = self.log_refuses(size) {
                tracing::debug!(shard = self.cfg.shard_id, error = %e, "log cannot take a QoS>0 publish");
                return self.refuse_publish(key, sidx, p.qos, p.packet_id);
            }
        }
        self.dur.start_publish();
        let (work, appends) = (self.dur.work(), self.dur.appends());
        if p.qos == QoS::ExactlyOnce {
            let s = self.session_mut(sidx);
            let first = s.inbound_qos2_first(p.packet_id);
            if s.inbound_qos2.len() > self.cfg.max_inbound_qos2 as usize {
                return self.close_with(
                    key,
                    ReasonCode::ReceiveMaximumExceeded,
                    "too many QoS 2 messages awaiting PUBREL",
                );
            }
            if !first {
                // A retransmission: acknowledge again, do not route again (exactly once).
                self.send_pub_resp(key, QoS::ExactlyOnce, p.packet_id, ReasonCode::Success);
                return ReadOutcome::Continue;
            }
            self.persist_qos2_in(sidx, p.packet_id, true);
        }
        let properties = p.properties.take().map(|pr| {
            let mut owned = owned_properties(&pr);
            owned.subscription_identifiers.clear();
            Box::new(owned)
        });
        let msg = Message {
            // Exact-size copies: the decoded slices point into the shared read buffer.
            topic: ByteString::from(&*p.topic),
            payload: bytes::Bytes::copy_from_slice(&p.payload),
            qos: p.qos,
            retain: p.retain,
            properties,
            origin: Some(Origin {
                shard: self.cfg.shard_id,
                conn: key,
            }),
        };
        let packet_id = p.packet_id;
        let qos = p.qos;
        let failures = self.stats.persist_errors;
        self.route(msg);
        if qos != QoS::AtMostOnce && self.stats.persist_errors != failures {
            // Part of it did not reach the log: it may be delivered, but it must not be acknowledged as safe.
            if qos == QoS::ExactlyOnce {
                self.session_mut(sidx).inbound_qos2_release(packet_id);
            }
            return self.refuse_publish(key, sidx, qos, packet_id);
        }
        if qos != QoS::AtMostOnce {
            // Write-ahead: the acknowledgement leaves once what routing wrote (here and on peer shards) is durable.
            // Clean-session traffic that wrote nothing here waits only for the peers it reached.
            if self.dur.work() != work {
                self.hold_output(key, self.dur.appends() != appends);
            }
            self.send_pub_resp(key, qos, packet_id, ReasonCode::Success);
        }
        ReadOutcome::Continue
    }

    /// The log cannot take a QoS>0 publish (disk full, budget used up, sync failed): refuse it rather than
    /// acknowledge what would not survive. v5 gets Quota exceeded in the PUBACK/PUBREC; 3.1.1 has no negative
    /// acknowledgement, so the connection is closed and the client retries after reconnecting.
    fn refuse_publish(&mut self, key: ConnKey, sidx: u32, qos: QoS, packet_id: u16) -> ReadOutcome {
        self.stats.publishes_refused += 1;
        if self.session(sidx).protocol == ProtocolVersion::V5 {
            self.send_pub_resp(key, qos, packet_id, ReasonCode::QuotaExceeded);
            return ReadOutcome::Continue;
        }
        tracing::debug!(
            shard = self.cfg.shard_id,
            "log full: closing a 3.1.1 publisher unacknowledged"
        );
        self.close(key, true, Some(ReasonCode::QuotaExceeded));
        ReadOutcome::Close
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) for an inbound publish.
    fn send_pub_resp(&mut self, key: ConnKey, qos: QoS, packet_id: u16, reason: ReasonCode) {
        let make = if qos == QoS::AtLeastOnce {
            Packet::PubAck
        } else {
            Packet::PubRec
        };
        self.send(
            key,
            &make(PubResp {
                packet_id,
                reason,
                properties: None,
            }),
        );
    }

    fn on_subscribe(&mut self, key: ConnKey, sidx: u32, sub: Subscribe) -> ReadOutcome {
        if self.pending_subacks.len() >= MAX_PENDING_SUBACKS {
            // Peers answer interest updates within a round or two, so this only fills if they are stuck or one
            // client floods SUBSCRIBEs: bound the table, tell the client to come back later.
            self.stats.subscribes_refused += 1;
            return self.close_with(
                key,
                ReasonCode::ServerBusy,
                "too many SUBSCRIBEs waiting for other shards",
            );
        }
        let v5 = self.session(sidx).protocol == ProtocolVersion::V5;
        let sub_id = sub
            .properties
            .as_ref()
            .and_then(|p| p.subscription_identifiers.first().copied());
        let mut reasons = Vec::with_capacity(sub.filters.len());
        let mut new_filters = Vec::new();
        let mut retained = Vec::new();
        for mut f in sub.filters {
            // Stored in the session: an exact-size copy, not a slice of the read buffer.
            f.filter = ByteString::from(&*f.filter);
            if parse_shared(&f.filter).ok().flatten().is_some() {
                reasons.push(if v5 {
                    ReasonCode::SharedSubscriptionsNotSupported
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            let existed = self.session(sidx).find_sub(&f.filter).is_some();
            if !existed && self.session(sidx).subs.len() >= self.cfg.max_subscriptions_per_session {
                reasons.push(if v5 {
                    ReasonCode::QuotaExceeded
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            let options = f.options;
            let entry = Subscriber {
                session: sidx,
                options,
                sub_id,
            };
            let subs = self.subs.get_or_insert_with(&f.filter, Vec::new);
            let was_empty = subs.is_empty();
            match subs.iter_mut().find(|s| s.session == sidx) {
                Some(s) => *s = entry,
                None => subs.push(entry),
            }
            if was_empty {
                new_filters.push(f.filter.clone());
            }
            {
                let s = self.session_mut(sidx);
                let record = Subscription {
                    filter: f.filter.clone(),
                    options,
                    sub_id,
                };
                match s.find_sub(&f.filter) {
                    Some(i) => s.subs[i] = record,
                    None => s.subs.push(record),
                }
            }
            self.persist_sub(sidx, &f.filter, options.to_byte(), sub_id.unwrap_or(0));
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            let send_retained = match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send_retained {
                retained.push((f.filter, options, sub_id));
            }
        }
        let pending = PendingSubAck {
            conn: key,
            session: sidx,
            remaining: 0,
            packet_id: sub.packet_id,
            reasons,
            retained,
        };
        let peers = self.cfg.shards.saturating_sub(1);
        if new_filters.is_empty() || peers == 0 {
            self.finish_suback(pending);
        } else {
            // Answer only once every shard knows of the new filters, so a message published anywhere after the
            // SUBACK reaches this subscriber.
            let token = self.next_token;
            self.next_token += 1;
            for peer in (0..self.cfg.shards).filter(|&p| p != self.cfg.shard_id) {
                self.mesh_out.push((
                    peer,
                    MeshMsg::InterestAdd {
                        filters: new_filters.clone(),
                        token,
                    },
                ));
            }
            self.pending_subacks.insert(
                token,
                PendingSubAck {
                    remaining: peers,
                    ..pending
                },
            );
        }
        ReadOutcome::Continue
    }

    fn finish_suback(&mut self, p: PendingSubAck) {
        if !self
            .conns
            .get(p.conn)
            .is_some_and(|c| c.session == p.session && !c.closing)
        {
            return;
        }
        if self.session(p.session).persisted {
            // A persistent subscription is acknowledged once it is durable.
            self.hold_output(p.conn, true);
        }
        self.send(
            p.conn,
            &Packet::SubAck(SubAck {
                packet_id: p.packet_id,
                reasons: p.reasons,
                properties: None,
            }),
        );
        for (filter, options, sub_id) in p.retained {
            let mut found = Vec::new();
            self.retained
                .for_each_matched_by(&filter, |m| found.push(m.clone()));
            for m in found {
                let q = Queued::new(
                    m.clone(),
                    m.qos.min(options.qos),
                    true,
                    sub_id.into_iter().collect(),
                );
                self.enqueue(p.session, q, None);
            }
        }
        self.pump(p.session);
        self.log_pending_enqueues(p.session);
    }

    fn on_unsubscribe(&mut self, key: ConnKey, sidx: u32, u: Unsubscribe) -> ReadOutcome {
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut gone = Vec::new();
        for f in &u.filters {
            let existed = match self.session(sidx).find_sub(f) {
                Some(i) => {
                    self.session_mut(sidx).subs.swap_remove(i);
                    self.persist_unsub(sidx, f);
                    true
                }
                None => false,
            };
            if existed && self.remove_subscriber(f, sidx) {
                gone.push(ByteString::from(&**f));
            }
            reasons.push(if existed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        self.broadcast_interest_removed(gone);
        self.send(
            key,
            &Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reasons,
                properties: None,
            }),
        );
        ReadOutcome::Continue
    }

    fn on_disconnect(&mut self, key: ConnKey, sidx: u32, d: Disconnect) -> ReadOutcome {
        if let Some(exp) = d
            .properties
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
        {
            if self.session(sidx).expiry == Some(0) && exp != 0 {
                // [MQTT-3.14.2-2]
                return self.close_with(
                    key,
                    ReasonCode::ProtocolError,
                    "session expiry set on DISCONNECT after 0",
                );
            }
            self.session_mut(sidx).expiry = if exp == u32::MAX { None } else { Some(exp) };
        }
        let publish_will = d.reason == ReasonCode::DisconnectWithWillMessage;
        self.close(key, publish_will, None);
        ReadOutcome::Close
    }

    // ----- routing ---------------------------------------------------------------------------------------------

    /// A message accepted from a publisher (or a will): retain, deliver locally, forward to interested shards.
    fn route(&mut self, msg: Message) {
        let msg = Rc::new(msg);
        if msg.retain {
            self.store_retained(msg.clone());
            let me = self.cfg.shard_id;
            for peer in (0..self.cfg.shards).filter(|&p| p != me) {
                let seq = self.peer_seq(peer, &msg);
                self.mesh_out
                    .push((peer, MeshMsg::Retain(Box::new((*msg).clone()), seq)));
            }
        }
        self.deliver_local(&msg);
        let mut mask = 0u64;
        self.interest.for_each_match(&msg.topic, |m| mask |= *m);
        mask &= !(1u64 << self.cfg.shard_id);
        while mask != 0 {
            let peer = mask.trailing_zeros() as u16;
            mask &= mask - 1;
            let seq = self.peer_seq(peer, &msg);
            self.mesh_out
                .push((peer, MeshMsg::Publish(Box::new((*msg).clone()), seq)));
        }
    }

    /// A sequence number asking `peer` to confirm durability, for QoS>0 messages a client waits to have
    /// acknowledged (0 = no confirmation needed).
    fn peer_seq(&mut self, peer: u16, msg: &Message) -> u64 {
        if self.store.is_some() && msg.qos != QoS::AtMostOnce && msg.origin.is_some() {
            self.dur.next_seq(peer)
        } else {
            0
        }
    }

    fn store_retained(&mut self, msg: Rc<Message>) {
        if msg.payload.is_empty() {
            if let Some(old) = self.retained.remove(&msg.topic) {
                self.retained_bytes -= old.payload.len() + old.topic.len();
                self.persist_retained(&msg, true);
            }
            return;
        }
        let size = msg.payload.len() + msg.topic.len();
        let old_size = self
            .retained
            .get(&msg.topic)
            .map(|m| m.payload.len() + m.topic.len());
        let new_topic = old_size.is_none();
        if (new_topic && self.retained.len() >= self.cfg.max_retained_messages)
            || self.retained_bytes - old_size.unwrap_or(0) + size > self.cfg.max_retained_bytes
        {
            self.stats.retained_rejected += 1;
            return;
        }
        self.retained_bytes = self.retained_bytes - old_size.unwrap_or(0) + size;
        let topic = msg.topic.clone();
        self.persist_retained(&msg, !new_topic);
        // Retained copies are delivered with RETAIN=1 but never carry the original publisher.
        let stored = if msg.origin.is_some() {
            Rc::new(Message {
                origin: None,
                ..(*msg).clone()
            })
        } else {
            msg
        };
        self.retained.insert(&topic, stored);
    }

    fn deliver_local(&mut self, msg: &Rc<Message>) {
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        self.cur_body = Some((Rc::as_ptr(msg), 0));
        self.subs
            .for_each_match(&msg.topic, |v| hits.extend_from_slice(v));
        if hits.len() > 1 {
            hits.sort_unstable_by_key(|h| h.session);
        }
        let mut i = 0;
        while i < hits.len() {
            // Overlapping subscriptions of one session: one copy, at the highest granted QoS.
            let sidx = hits[i].session;
            let mut qos = QoS::AtMostOnce;
            let mut retain_as_published = false;
            let mut no_local = false;
            let mut sub_ids = Vec::new();
            while i < hits.len() && hits[i].session == sidx {
                let h = hits[i];
                qos = qos.max(h.options.qos);
                retain_as_published |= h.options.retain_as_published;
                no_local |= h.options.no_local;
                if let Some(id) = h.sub_id {
                    sub_ids.push(id);
                }
                i += 1;
            }
            if no_local && self.is_own_message(sidx, msg) {
                continue;
            }
            let q = Queued::new(
                msg.clone(),
                msg.qos.min(qos),
                retain_as_published && msg.retain,
                sub_ids,
            );
            self.enqueue(sidx, q, msg.origin);
            self.pump(sidx);
            self.log_pending_enqueues(sidx);
        }
        self.cur_body = None;
        self.hits = hits;
    }

    fn is_own_message(&self, sidx: u32, msg: &Message) -> bool {
        match (msg.origin, self.session(sidx).conn) {
            (Some(o), Some(c)) => o.shard == self.cfg.shard_id && o.conn == c,
            _ => false,
        }
    }

    /// Put a message in a session's queue, applying the bound and the overflow policy.
    fn enqueue(&mut self, sidx: u32, mut q: Queued, origin: Option<Origin>) {
        let soft = self.cfg.max_queued_messages.max(1);
        let hard = soft + self.cfg.max_in_transit;
        let shard_id = self.cfg.shard_id;
        let cfg = &self.cfg;
        let stats = &mut self.stats;
        let mut dropped = None;
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        let online = s.conn.is_some();
        let qos0 = q.qos == QoS::AtMostOnce;
        // Which counter a drop of this message goes to.
        let mut count_drop = |s: &mut Session| {
            s.dropped += 1;
            match (qos0, online) {
                (true, _) => stats.dropped_qos0 += 1,
                (false, true) => stats.dropped_qos12 += 1,
                (false, false) => stats.dropped_offline += 1,
            }
        };
        if s.backlog() >= soft {
            let policy = match (qos0, online) {
                (true, true) => cfg.qos0_overflow,
                (true, false) => OverflowPolicy::DropNewest,
                (false, true) => cfg.overflow,
                (false, false) => cfg.offline_overflow,
            };
            match policy {
                OverflowPolicy::DropNewest => {
                    count_drop(s);
                    return;
                }
                OverflowPolicy::DropOldest => {
                    // Everything in flight: the newest gives way instead.
                    let Some(oldest) = s.queue.pop_front() else {
                        count_drop(s);
                        return;
                    };
                    dropped = Some(oldest);
                    count_drop(s);
                }
                OverflowPolicy::Backpressure => {
                    if s.backlog() >= hard {
                        // Publishers overshot the soft bound by more than the pause could stop: bounded memory wins.
                        count_drop(s);
                        return;
                    }
                    // Pause the publisher feeding us, unless it is this session's own connection (a client that
                    // stops reading while it writes would deadlock with itself).
                    if let Some(o) = origin {
                        let own = o.shard == shard_id && Some(o.conn) == s.conn;
                        if !own && !s.waiters.contains(&o) && s.waiters.len() < 4096 {
                            s.waiters.push(o);
                            self.stats.pauses += 1;
                            tracing::debug!(shard = shard_id, publisher = ?o, "queue full: pausing publisher");
                            if o.shard == shard_id {
                                if let Some(c) = self.conns.get_mut(o.conn) {
                                    c.pause_count += 1;
                                }
                            } else {
                                self.mesh_out.push((o.shard, MeshMsg::Pause(o.conn)));
                            }
                        }
                    }
                }
            }
        }
        if let Some(old) = dropped {
            self.persist_done(sidx, &old);
        }
        self.persist_enqueue(sidx, &mut q);
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        s.queue.push_back(q);
    }

    /// Move messages from a session's queue into its connection's output buffer, within the in-flight window
    /// and the output buffer bound. Bodies of persisted messages are read back from the log here, as they go.
    fn pump(&mut self, sidx: u32) {
        let max_out = self.cfg.max_out_buffer;
        let soft = self.cfg.max_queued_messages.max(1);
        let Some(key) = self
            .sessions
            .get(sidx as usize)
            .and_then(Option::as_ref)
            .and_then(|s| s.conn)
        else {
            return;
        };
        let mut wrote = false;
        loop {
            let s = self.sessions[sidx as usize].as_ref().expect("live session");
            let Some(conn) = self.conns.get(key) else {
                return;
            };
            if conn.closing {
                return;
            }
            if conn.out.len() >= max_out {
                break;
            }
            let Some(front) = s.queue.front() else { break };
            if front.msg.is_none() {
                let mut q = self
                    .session_mut(sidx)
                    .queue
                    .pop_front()
                    .expect("front exists");
                if self.load_body(sidx, &mut q) {
                    self.session_mut(sidx).queue.push_front(q);
                }
                continue;
            }
            // A QoS 0 message behind a blocked QoS 1/2 one waits too: order per topic is preserved.
            if front.qos != QoS::AtMostOnce && !s.window_open() {
                break;
            }
            let s = self.sessions[sidx as usize].as_mut().expect("live session");
            let version = s.protocol;
            let client_max_packet = s.client_max_packet;
            let mut q = s.queue.pop_front().expect("front exists");
            let packet_id = if q.qos == QoS::AtMostOnce {
                0
            } else {
                s.alloc_packet_id()
            };
            let Some(publish) = build_publish(&q, packet_id, false, version) else {
                continue;
            };
            if client_max_packet > 0
                && codec::encoded_len(&Packet::Publish(publish.clone()), version)
                    > client_max_packet as usize
            {
                // [MQTT-3.1.2-25]: a packet over the client's maximum is discarded as if delivered.
                self.stats.dropped_too_large += 1;
                self.persist_done(sidx, &q);
                continue;
            }
            let persisted = q.msg_id != 0
                && q.qos != QoS::AtMostOnce
                && self.persist_sent(sidx, &mut q, packet_id);
            if persisted && q.qos == QoS::ExactlyOnce {
                // A QoS 2 PUBLISH leaves only once its packet id is durable: after a restart it is resent with
                // the same id, so the client can tell it is the same message.
                self.hold_output(key, true);
            }
            let conn = self.conns.get_mut(key).expect("connection checked above");
            if codec::encode_publish(&publish, version, &mut conn.out).is_err() {
                self.stats.dropped_too_large += 1;
                self.persist_done(sidx, &q);
                continue;
            }
            self.stats.publishes_out += 1;
            wrote = true;
            if q.qos == QoS::AtMostOnce {
                // Restored message whose subscription was downgraded to QoS 0: sent, so done.
                self.persist_done(sidx, &q);
            } else {
                let state = if q.qos == QoS::AtLeastOnce {
                    InflightState::AwaitPubAck
                } else {
                    InflightState::AwaitPubRec
                };
                self.session_mut(sidx).inflight.push_back(Inflight {
                    packet_id,
                    state,
                    q,
                });
            }
        }
        if wrote {
            if let Some(conn) = self.conns.get_mut(key) {
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(key);
                }
            }
        }
        let s = self.session(sidx);
        if !s.waiters.is_empty() && s.backlog() <= soft / 2 {
            self.release_waiters(sidx);
        }
    }

    /// Reconnect of a persistent session: resend unacknowledged PUBLISHes with DUP, and PUBRELs.
    fn replay_inflight(&mut self, sidx: u32, key: ConnKey) {
        let s = self.sessions[sidx as usize].as_ref().expect("live session");
        let version = s.protocol;
        let mut packets = Vec::with_capacity(s.inflight.len());
        for f in &s.inflight {
            packets.push(match f.state {
                InflightState::AwaitPubComp => Packet::PubRel(PubResp {
                    packet_id: f.packet_id,
                    reason: ReasonCode::Success,
                    properties: None,
                }),
                _ => match build_publish(&f.q, f.packet_id, true, version) {
                    Some(p) => Packet::Publish(p),
                    None => continue,
                },
            });
        }
        for p in packets {
            self.send(key, &p);
        }
    }

    fn release_waiters(&mut self, sidx: u32) {
        let waiters = std::mem::take(&mut self.session_mut(sidx).waiters);
        for o in waiters {
            if o.shard == self.cfg.shard_id {
                self.resume(o.conn);
            } else {
                self.mesh_out.push((o.shard, MeshMsg::Resume(o.conn)));
            }
        }
    }

    fn resume(&mut self, key: ConnKey) {
        tracing::debug!(shard = self.cfg.shard_id, conn = ?key, "resume publisher");
        if let Some(c) = self.conns.get_mut(key) {
            c.pause_count = c.pause_count.saturating_sub(1);
            if c.pause_count == 0 {
                self.resumed.push(key);
            }
        }
    }

    // ----- closing ---------------------------------------------------------------------------------------------

    /// Close a connection: detach it from its session (publishing the will when `abnormal`), queue the socket
    /// for closing. With `reason`, a v5 client is told why first.
    fn close(&mut self, key: ConnKey, abnormal: bool, reason: Option<ReasonCode>) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        conn.partial = None;
        let sidx = conn.session;
        self.closing.push(key);
        if sidx == NO_SESSION {
            return;
        }
        if let Some(reason) = reason {
            if self.session(sidx).protocol == ProtocolVersion::V5 {
                self.send_raw(
                    key,
                    &Packet::Disconnect(Disconnect {
                        reason,
                        properties: None,
                    }),
                    ProtocolVersion::V5,
                );
            }
        }
        let will = self.session_mut(sidx).will.take();
        if abnormal {
            if let Some(w) = will {
                self.publish_will(*w);
            }
        }
        let now = self.now;
        let s = self.session_mut(sidx);
        s.conn = None;
        s.offline_since = now;
        // Offline sessions do not hold publishers back.
        self.release_waiters(sidx);
        if self.session(sidx).is_clean() {
            self.destroy_session(sidx);
            return;
        }
        self.schedule_expiry(sidx);
        if self.session(sidx).persisted {
            self.persist_session(sidx);
            // Offline, the log holds the bodies: memory keeps only references (in-flight ones stay for replay).
            for q in self.session_mut(sidx).queue.iter_mut() {
                if q.msg_id != 0 {
                    q.msg = None;
                }
            }
        }
    }

    fn publish_will(&mut self, w: codec::Will) {
        self.stats.wills_published += 1;
        let properties = w.properties.map(|p| {
            Box::new(Properties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                content_type: p.content_type,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
                ..Properties::default()
            })
        });
        self.route(Message {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties,
            origin: None,
        });
    }

    fn close_with(&mut self, key: ConnKey, reason: ReasonCode, why: &'static str) -> ReadOutcome {
        self.stats.protocol_errors += 1;
        tracing::debug!(
            shard = self.cfg.shard_id,
            ?reason,
            why,
            "closing connection"
        );
        self.close(key, true, Some(reason));
        ReadOutcome::Close
    }

    fn protocol_error(&mut self, key: ConnKey, why: &'static str) -> ReadOutcome {
        self.close_with(key, ReasonCode::ProtocolError, why)
    }

    fn decode_error(&mut self, key: ConnKey, e: &DecodeError) {
        match e {
            DecodeError::Malformed(_) => self.stats.malformed += 1,
            _ => self.stats.protocol_errors += 1,
        }
        tracing::debug!(shard = self.cfg.shard_id, error = %e, "bad packet; closing connection");
        let connected = self.conns.get(key).is_some_and(|c| c.session != NO_SESSION);
        if connected {
            self.close(key, true, Some(e.reason_code()));
        } else {
            // Before CONNECT completes, the answer is a CONNACK with the reason (v3: return code 1 for a protocol
            // level we do not speak, otherwise just close).
            let reason = e.reason_code();
            match (e, self.conns.get(key).and_then(|c| c.decoder.version())) {
                (DecodeError::UnsupportedProtocolVersion(_), _) => self.connack_error(key, reason),
                (_, Some(ProtocolVersion::V5)) => self.connack_error(key, reason),
                _ => self.close(key, false, None),
            }
        }
    }

    fn connack_error(&mut self, key: ConnKey, reason: ReasonCode) {
        let version = self
            .conns
            .get(key)
            .and_then(|c| c.decoder.version())
            .unwrap_or(ProtocolVersion::V3_1_1);
        self.send_raw(
            key,
            &Packet::ConnAck(ConnAck {
                session_present: false,
                reason,
                properties: None,
            }),
            version,
        );
        self.close(key, false, None);
    }

    // ----- sessions --------------------------------------------------------------------------------------------

    fn session(&self, sidx: u32) -> &Session {
        self.sessions[sidx as usize].as_ref().expect("live session")
    }

    fn session_mut(&mut self, sidx: u32) -> &mut Session {
        self.sessions[sidx as usize].as_mut().expect("live session")
    }

    fn new_session(&mut self, s: Session) -> u32 {
        let sidx = match self.free_sessions.pop() {
            Some(i) => {
                self.sessions[i as usize] = Some(s);
                i
            }
            None => {
                self.sessions.push(Some(s));
                (self.sessions.len() - 1) as u32
            }
        };
        self.by_client.insert(&self.sessions, sidx);
        sidx
    }

    fn destroy_session(&mut self, sidx: u32) {
        self.unschedule_expiry(sidx);
        self.release_waiters(sidx);
        let s = self.sessions[sidx as usize].take().expect("live session");
        self.delete_persisted(&s);
        self.by_client.remove(&s.client_id, sidx);
        self.free_sessions.push(sidx);
        let mut gone = Vec::new();
        for sub in &s.subs {
            if self.remove_subscriber(&sub.filter, sidx) {
                gone.push(sub.filter.clone());
            }
        }
        self.broadcast_interest_removed(gone);
    }

    /// Remove one session from a filter's subscriber list; true if the filter has no local subscriber left.
    fn remove_subscriber(&mut self, filter: &str, sidx: u32) -> bool {
        if let Some(v) = self.subs.get_mut(filter) {
            v.retain(|s| s.session != sidx);
        }
        self.subs.remove_if(filter, |v| v.is_empty()).is_some()
    }

    fn broadcast_interest_removed(&mut self, gone: Vec<ByteString>) {
        if gone.is_empty() {
            return;
        }
        for peer in (0..self.cfg.shards).filter(|&p| p != self.cfg.shard_id) {
            self.mesh_out.push((
                peer,
                MeshMsg::InterestRemove {
                    filters: gone.clone(),
                },
            ));
        }
    }

    /// When an offline session with an expiry ends (shard second), if it is offline with one.
    fn expiry_deadline(&self, sidx: u32) -> Option<u64> {
        let s = self.sessions.get(sidx as usize)?.as_ref()?;
        match (s.conn, s.expiry) {
            (None, Some(e)) => Some(s.offline_since as u64 + e as u64),
            _ => None,
        }
    }

    /// An offline session with an expiry goes into the expiry index (ordered by deadline), so expiring sessions
    /// costs per expiring session, not a scan of every session (a million of them would stall the shard).
    fn schedule_expiry(&mut self, sidx: u32) {
        if let Some(d) = self.expiry_deadline(sidx) {
            self.expiring.insert((d, sidx));
        }
    }

    /// Call before the session comes online, changes its expiry or is destroyed.
    fn unschedule_expiry(&mut self, sidx: u32) {
        if let Some(d) = self.expiry_deadline(sidx) {
            self.expiring.remove(&(d, sidx));
        }
    }

    fn expire_sessions(&mut self) {
        let now = self.now as u64;
        while let Some(&(deadline, sidx)) = self.expiring.first() {
            if deadline > now {
                break;
            }
            self.expiring.pop_first();
            if self.expiry_deadline(sidx) == Some(deadline) {
                self.destroy_session(sidx);
            }
        }
    }

    // ----- output ----------------------------------------------------------------------------------------------

    /// PUBREL/PUBCOMP answering a known packet id, or reporting it unknown (v5 reason 0x92).
    fn send_ack(&mut self, key: ConnKey, make: fn(PubResp) -> Packet, packet_id: u16, known: bool) {
        let reason = if known {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.send(
            key,
            &make(PubResp {
                packet_id,
                reason,
                properties: None,
            }),
        );
    }

    fn send(&mut self, key: ConnKey, packet: &Packet) {
        let version = match self.conns.get(key) {
            Some(c) if c.session != NO_SESSION => self.session(c.session).protocol,
            Some(c) => c.decoder.version().unwrap_or(ProtocolVersion::V3_1_1),
            None => return,
        };
        self.send_raw(key, packet, version);
    }

    fn send_raw(&mut self, key: ConnKey, packet: &Packet, version: ProtocolVersion) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Err(e) = codec::encode(packet, version, &mut conn.out) {
            tracing::error!(error = %e, "encoding a broker packet failed");
            return;
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }
}

/// The PUBLISH for a queued message; `None` if its body is not loaded (never the case for a message being sent:
/// `pump` loads bodies first, and in-flight messages always have theirs).
fn build_publish(
    q: &Queued,
    packet_id: u16,
    dup: bool,
    version: ProtocolVersion,
) -> Option<Publish> {
    let msg = q.msg.as_ref()?;
    let properties = if version == ProtocolVersion::V5 {
        if q.sub_ids.is_empty() {
            msg.properties.clone()
        } else {
            let mut p = msg.properties.clone().unwrap_or_default();
            p.subscription_identifiers = q.sub_ids.clone();
            Some(p)
        }
    } else {
        None
    };
    Some(Publish {
        dup,
        qos: q.qos,
        retain: q.retain,
        topic: msg.topic.clone(),
        packet_id,
        properties,
        payload: msg.payload.clone(),
    })
}

/// A deep copy of v5 properties whose strings and binary data own their bytes.
fn owned_properties(p: &Properties) -> Properties {
    let s = |v: &Option<ByteString>| v.as_ref().map(|x| ByteString::from(&**x));
    let b = |v: &Option<bytes::Bytes>| v.as_ref().map(|x| bytes::Bytes::copy_from_slice(x));
    Properties {
        content_type: s(&p.content_type),
        response_topic: s(&p.response_topic),
        correlation_data: b(&p.correlation_data),
        assigned_client_identifier: s(&p.assigned_client_identifier),
        authentication_method: s(&p.authentication_method),
        authentication_data: b(&p.authentication_data),
        response_information: s(&p.response_information),
        server_reference: s(&p.server_reference),
        reason_string: s(&p.reason_string),
        user_properties: p
            .user_properties
            .iter()
            .map(|(k, v)| (ByteString::from(&**k), ByteString::from(&**v)))
            .collect(),
        subscription_identifiers: p.subscription_identifiers.clone(),
        ..p.clone()
    }
}

#[cfg(test)]
mod output_bound {
    use super::*;

    fn frame(p: &Packet, v: ProtocolVersion) -> BytesMut {
        let mut b = BytesMut::new();
        codec::encode(p, v, &mut b).unwrap();
        b
    }

    /// A client that publishes QoS 1 but never reads: its PUBACKs must not pile up without bound. Reading stops
    /// at twice `max_out_buffer` and resumes once the output is written.
    #[test]
    fn a_peer_that_does_not_read_stops_being_read() {
        let v = ProtocolVersion::V3_1_1;
        let mut shard = Shard::new(ShardConfig {
            max_out_buffer: 1024,
            ..ShardConfig::default()
        });
        let key = shard.accept(7);
        let connect = Connect {
            protocol: v,
            clean_start: true,
            keep_alive: 0,
            client_id: "flood".into(),
            will: None,
            username: None,
            password: None,
            properties: None,
        };
        let mut input = frame(&Packet::Connect(Box::new(connect)), v);
        for id in 1..=5000u16 {
            let p = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "t".into(),
                packet_id: id,
                properties: None,
                payload: bytes::Bytes::from_static(b"x"),
            };
            input.extend_from_slice(&frame(&Packet::Publish(p), v));
        }
        assert_eq!(shard.on_bytes(key, &mut input), ReadOutcome::Paused);
        assert!(!shard.can_read(key));
        let out = shard.out_buf(key).unwrap().len();
        assert!(out <= 2 * 1024 + 64, "output grew to {out} bytes");
        assert!(
            shard.has_partial(key),
            "unread publishes are kept, not dropped"
        );
        // The peer reads everything: reading resumes and the kept bytes are processed.
        shard.out_buf(key).unwrap().clear();
        shard.flushed(key);
        let mut resumed = Vec::new();
        shard.take_resumed(&mut resumed);
        assert_eq!(resumed, vec![key]);
        assert!(shard.can_read(key));
        let mut empty = BytesMut::new();
        shard.on_bytes(key, &mut empty);
        assert!(shard.stats.publishes_in > 0);
    }
}

#[cfg(test)]
mod qos0_overflow {
    use super::*;
    use crate::codec::{SubscribeFilter, SubscriptionOptions};

    const V: ProtocolVersion = ProtocolVersion::V3_1_1;

    fn frame(p: &Packet) -> BytesMut {
        let mut b = BytesMut::new();
        codec::encode(p, V, &mut b).unwrap();
        b
    }

    fn connect(shard: &mut Shard, io: u64, id: &str) -> ConnKey {
        let key = shard.accept(io);
        let c = Connect {
            protocol: V,
            clean_start: true,
            keep_alive: 0,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: None,
        };
        shard.on_bytes(key, &mut frame(&Packet::Connect(Box::new(c))));
        key
    }

    /// Takes the connection's output, as if written, and counts the PUBLISHes in it.
    fn drain(shard: &mut Shard, key: ConnKey) -> usize {
        let mut out = std::mem::take(shard.out_buf(key).unwrap());
        shard.flushed(key);
        let mut d = Decoder::new_client(V, 1 << 20);
        std::iter::from_fn(|| d.decode(&mut out).unwrap())
            .filter(|p| matches!(p, Packet::Publish(_)))
            .count()
    }

    /// A subscriber that reads slowly, 600 QoS 0 messages at it, a queue bound of 10: with `DropNewest` the
    /// publisher is never slowed and the excess is counted as dropped; with `Backpressure` the publisher stops
    /// being read until the subscriber catches up, and every message arrives.
    fn run(policy: OverflowPolicy) -> (usize, u64, bool) {
        let mut shard = Shard::new(ShardConfig {
            max_queued_messages: 10,
            max_out_buffer: 1024,
            qos0_overflow: policy,
            ..ShardConfig::default()
        });
        let sub = connect(&mut shard, 1, "sub");
        let subscribe = Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: "t".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    ..Default::default()
                },
            }],
            properties: None,
        };
        shard.on_bytes(sub, &mut frame(&Packet::Subscribe(subscribe)));
        drain(&mut shard, sub);
        let publisher = connect(&mut shard, 2, "pub");
        let mut input = BytesMut::new();
        for i in 0..600u32 {
            input.extend_from_slice(&frame(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "t".into(),
                packet_id: 0,
                properties: None,
                payload: bytes::Bytes::from(format!("{i:0>64}")),
            })));
        }
        shard.on_bytes(publisher, &mut input);
        let was_paused = !shard.can_read(publisher);
        let mut delivered = 0;
        let mut resumed = Vec::new();
        for _ in 0..10_000 {
            delivered += drain(&mut shard, sub);
            shard.take_resumed(&mut resumed);
            for k in resumed.drain(..) {
                shard.on_bytes(k, &mut BytesMut::new());
            }
            if !shard.has_partial(publisher) && shard.out_buf(sub).unwrap().is_empty() {
                break;
            }
        }
        delivered += drain(&mut shard, sub);
        (delivered, shard.stats.dropped_qos0, was_paused)
    }

    #[test]
    fn qos0_is_dropped_and_counted_by_default() {
        let (delivered, dropped, paused) = run(OverflowPolicy::DropNewest);
        assert!(!paused, "a QoS 0 publisher is never slowed by default");
        assert!(dropped > 0);
        assert_eq!(delivered as u64 + dropped, 600);
    }

    #[test]
    fn qos0_backpressure_slows_the_publisher_and_loses_nothing() {
        let (delivered, dropped, paused) = run(OverflowPolicy::Backpressure);
        assert!(paused, "the publisher was not paused");
        assert_eq!(dropped, 0);
        assert_eq!(delivered, 600);
    }
}

#[cfg(test)]
mod footprint {
    /// Idle connections are the million-connection cost: a guard so per-connection state only grows on purpose.
    /// (Measured 2026-11: Session 224 B, Conn slot 80 B, client index 4 B + 1 control byte per bucket; the issue-4
    /// target is 512 B of RSS per connection.)
    #[test]
    fn per_connection_state_stays_small() {
        assert!(
            std::mem::size_of::<super::Session>() <= 224,
            "Session grew to {}",
            std::mem::size_of::<super::Session>()
        );
        assert!(
            std::mem::size_of::<super::Slot<super::Conn>>() <= 80,
            "Conn slot grew to {}",
            std::mem::size_of::<super::Slot<super::Conn>>()
        );
        assert!(
            std::mem::size_of::<super::Subscriber>() <= 16,
            "Subscriber grew"
        );
    }
}

#[cfg(test)]
mod keepalive_entries {
    use super::*;

    fn connect(keep_alive: u16) -> BytesMut {
        let c = Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_start: true,
            keep_alive,
            client_id: format!("ka-{keep_alive}").into(),
            will: None,
            username: None,
            password: None,
            properties: None,
        };
        let mut b = BytesMut::new();
        codec::encode(
            &Packet::Connect(Box::new(c)),
            ProtocolVersion::V3_1_1,
            &mut b,
        )
        .unwrap();
        b
    }

    /// An idle connection holds one wheel entry (the CONNECT-timeout one re-files itself), yet expires exactly
    /// at one and a half keep-alives after its last byte, for keep-alives shorter and longer than the timeout.
    #[test]
    fn one_entry_per_idle_connection_and_exact_expiry() {
        for keep_alive in [1u16, 2, 4, 6, 7, 10, 60, 3000] {
            let mut shard = Shard::new(ShardConfig {
                connect_timeout_secs: 10,
                ..ShardConfig::default()
            });
            shard.tick(1);
            let key = shard.accept(9);
            shard.tick(3);
            assert_eq!(
                shard.on_bytes(key, &mut connect(keep_alive)),
                ReadOutcome::Continue
            );
            let due = 3 + (keep_alive as u32 * 3).div_ceil(2);
            if due >= 3 + 10 {
                assert_eq!(shard.wheel.len(), 1, "keep-alive {keep_alive}");
            }
            for now in 4..due {
                shard.tick(now);
                assert_eq!(
                    shard.stats.keepalive_timeouts, 0,
                    "keep-alive {keep_alive} at {now}"
                );
            }
            shard.tick(due);
            assert_eq!(shard.stats.keepalive_timeouts, 1, "keep-alive {keep_alive}");
            shard.tick(due + 20);
            assert_eq!(shard.stats.keepalive_timeouts, 1, "keep-alive {keep_alive}");
        }
    }
}
