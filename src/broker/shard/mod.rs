//! The shard core: every protocol decision of one shard, with no I/O in it.
//!
//! The I/O layer (`crate::server`) feeds it events (bytes read from a connection, a connection closed, a message
//! from another shard, the clock) and carries out what it leaves behind: bytes in connection output buffers
//! (`take_dirty` / `out_buf`), connections to close (`take_closing`), messages for other shards (`take_mesh`) and
//! connections whose reading may resume (`take_resumed`). Tests drive it directly with bytes.
//!
//! One flow per file (all of them `impl Shard` blocks on the one `Shard` struct defined here):
//!
//! | file           | holds                                                                                   |
//! |----------------|-----------------------------------------------------------------------------------------|
//! | `mod.rs`       | `Shard`, `ShardConfig`, `MeshMsg`, `Adopt`, `ReadOutcome`, `Stats`, `OverflowPolicy`;    |
//! |                | constructor, accessors, I/O-facing entry points (`accept` ... `take_*`), packet dispatch |
//! | `conn.rs`      | `Conn` (per-connection state) and the `Slab` that holds connections                     |
//! | `connect.rs`   | CONNECT: establish, takeover, client-id generation, CONNACK errors                      |
//! | `publish.rs`   | inbound PUBLISH, acks to publishers, routing (local and to peers), retained store       |
//! | `subscribe.rs` | SUBSCRIBE / UNSUBSCRIBE, pending SUBACKs, interest broadcast                            |
//! | `delivery.rs`  | enqueue with overflow policies, pump, in-flight windows, replay, resume                 |
//! | `lifecycle.rs` | DISCONNECT, close, wills, protocol/decode errors, session create/destroy, expiry        |
//! | `output.rs`    | `send`, `send_raw`, `send_ack`, `build_publish`                                         |
//! | `persist.rs`   | log writes for sessions, subscriptions, queues, deliveries, retained messages           |
//! | `recovery.rs`  | `restore` from the log at start, loading message bodies                                 |
//! | `shared.rs`    | shared subscriptions (`$share/GROUP/FILTER`) across shards: design in its doc          |
//! | `durable.rs`   | `end_round`, held output until the log is durable, log congestion, store maintenance    |
//! | `burst.rs`     | mid-round flush requests (`ReadOutcome::Yield`), which sockets are full                 |
//! | `tests/`       | unit tests, one file per flow                                                           |

use std::collections::HashMap;
use std::rc::Rc;

use bytes::BytesMut;
use bytestring::ByteString;

use crate::broker::client_index::ClientIndex;
use crate::broker::durability::Durability;
use crate::broker::keepalive::{Deadline, Secs, Wheel};
use crate::broker::message::{ConnKey, Message, Origin};
use crate::broker::session::{Inflight, InflightState, Queued, Session, Subscription};
use crate::broker::shared_group::{Counts, SharedGroups};
use crate::broker::trie::Trie;
use crate::codec::topic::parse_shared;
use crate::codec::{
    self, ConnAck, Connect, DecodeError, Decoder, Disconnect, Packet, Properties, ProtocolVersion,
    PubResp, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::store::{DeliveryState, Store};

mod auth;
pub use auth::{AuthJob, INLINE_ITERATIONS};
mod alias;
mod burst;
mod conn;
mod connect;
mod delivery;
mod durable;
mod expiry;
mod gauges;
pub use gauges::{GaugeWalk, GAUGE_WALK_BUDGET};
mod lifecycle;
mod output;
mod persist;
mod publish;
mod recovery;
mod redirect;
mod shared;
mod subscribe;
mod sys;
#[cfg(test)]
mod tests;
mod will_delay;

use self::conn::{Conn, Slab};
use self::output::{build_publish, owned_properties};
use self::subscribe::PendingSubAck;
use self::sys::is_sys_topic;

/// What to do with a QoS 1/2 message for an online session whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Stop reading from the publishers feeding the full queue, so their acknowledgements wait (default).
    Backpressure,
    DropOldest,
    DropNewest,
}

/// What to do with a QoS 1/2 message for a session whose queue is truly full (an offline persistent session at
/// its byte or reference bound, or an online one past the hard bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueFullPolicy {
    /// Do not acknowledge the publish (v5: PUBACK/PUBREC 0x97; 3.1.1: close the publisher), so nothing
    /// acknowledged is ever lost; the publisher retries. Other matching sessions may then get it twice (default).
    Refuse,
    /// Keep it for the other sessions and drop it for the full one: counted per reason, logged with the client id.
    Drop,
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
    /// Our v5 Receive Maximum: inbound QoS 1/2 not yet acknowledged per connection (3.1.1: QoS 2 awaiting PUBREL).
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
    /// Log bytes of QoS 1/2 messages queued (and in flight) for one persistent session.
    pub max_offline_bytes_per_session: u64,
    /// Queued references (QoS 1/2, body in the log) per offline persistent session: bounds their memory
    /// (a `Queued` is 48 bytes, up to twice that in a growing `VecDeque`, plus ~70 bytes of log index).
    pub max_offline_messages_per_session: usize,
    /// Log bytes of QoS 1/2 messages queued for all persistent sessions of this shard (0 = no bound); sized by the
    /// server from the `[store]` budget and the data directory's free space.
    pub max_offline_bytes_per_shard: u64,
    /// A truly full queue: refuse the publish or drop for that session.
    pub persistent_queue_full: QueueFullPolicy,
    /// Bytes encoded ahead into a connection's output buffer before the rest waits in the session queue.
    pub max_out_buffer: usize,
    pub max_subscriptions_per_session: usize,
    pub max_sessions: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    /// v5 SUBACK code for a filter the ACL gives no read access under (`acl_subscribe_denied_reason`).
    pub subscribe_denied_reason: ReasonCode,
    /// v5 topic aliases per connection and direction: announced as our Topic Alias Maximum, and the cap on
    /// aliases we assign (also bounded by the client's maximum). 0 = none.
    pub topic_alias_maximum: u16,
    /// Sent as Response Information to v5 clients that request it; empty = never sent.
    pub response_information: String,
    /// Server redirection: v5 clients are refused with Use another server (0x9C) or Server moved (0x9D) and
    /// this Server Reference; 3.1.1 clients with Server unavailable. Empty = off.
    pub server_reference: String,
    /// `true` = 0x9D Server moved (permanent), `false` = 0x9C Use another server (temporary).
    pub server_moved: bool,
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
            max_offline_bytes_per_session: 64 << 20,
            max_offline_messages_per_session: 1_000_000,
            max_offline_bytes_per_shard: 0,
            persistent_queue_full: QueueFullPolicy::Refuse,
            max_out_buffer: 64 * 1024,
            max_subscriptions_per_session: 1024,
            max_sessions: 1 << 20,
            max_retained_messages: 100_000,
            max_retained_bytes: 256 << 20,
            subscribe_denied_reason: ReasonCode::NotAuthorized,
            topic_alias_maximum: 10,
            response_information: String::new(),
            server_reference: String::new(),
            server_moved: false,
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
    /// The sender's log could not take the QoS>0 message published with `packet_id` on this connection of the
    /// receiving shard, or a full session there refused it (`persistent_queue_full = "refuse"`): the
    /// acknowledgement held for it must never leave as a success. Sent before the sender's `Durable` for that message
    /// (channels are FIFO), so it always arrives first.
    LogRefused {
        conn: ConnKey,
        packet_id: u16,
    },
    /// The sender's member counts for these shared groups (`$share/GROUP/FILTER`); a non-zero token asks for
    /// `InterestAck { token }` (a SUBACK waits for it).
    SharedCount {
        groups: Vec<(ByteString, Counts)>,
        token: u64,
    },
    /// A message for one member of a shared group on the receiving shard (`hops` = shards it went through);
    /// sequence number as for `Publish`.
    SharedPublish {
        msg: Box<Message>,
        share: ByteString,
        hops: u8,
        seq: u64,
    },
    /// The receiver numbered `seq` a message a departing member of a group gave up (a `SharedPublish` with no
    /// publisher), and the sender could not take it (no member with room): the receiver keeps it. Sent before
    /// the confirmation of `seq` (channels are FIFO).
    SharedRefused {
        seq: u64,
    },
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
    /// Stopped before the next packet because a destination's output is full (`flush_wanted`): write the dirty
    /// connections, then call `on_bytes` again with no new bytes to go on (the rest is kept in the connection;
    /// it is also in `take_resumed`, for an I/O layer that cannot go on this round).
    Yield,
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
    /// The part of `dropped_qos0` dropped while the subscriber's socket still took data (not known to be full):
    /// a burst the round could not write out in time. Should stay 0.
    pub dropped_qos0_writable: u64,
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
    /// Copies of QoS 1/2 messages a full session refused (`persistent_queue_full = "refuse"`): the publish was
    /// not acknowledged.
    pub refused_queue_full: u64,
    /// Times a session queue was truly full, per reason (refused or dropped).
    pub full_session_bytes: u64,
    pub full_session_messages: u64,
    pub full_shard_bytes: u64,
    pub full_online_hard: u64,
    /// Gauge: log bytes of QoS 1/2 messages queued for persistent sessions of this shard.
    pub queued_log_bytes: u64,
    /// SUBSCRIBEs refused because too many were waiting for the other shards.
    pub subscribes_refused: u64,
    /// Times the shard stopped reading its sockets because too many rounds waited for the log (slow disk).
    pub log_stalls: u64,
    /// v5 messages dropped because their Message Expiry Interval passed (queued or retained).
    pub expired: u64,
    /// Client PUBLISHes to `$SYS` refused (only the broker publishes there).
    pub publishes_denied: u64,
    /// Shared-subscription messages that reached a shard where their group had no member left.
    pub dropped_shared: u64,
    /// Shared-subscription messages given to another member because theirs went offline.
    pub shared_redispatched: u64,
    /// CONNECTs refused: unknown user or wrong password (0x04 / v5 0x86).
    pub auth_refused_credentials: u64,
    /// CONNECTs refused: anonymous where not allowed, no certificate identity, a will it may not publish.
    pub auth_refused_not_authorized: u64,
    /// CONNECTs refused because the verifier queue was full (v5 0x89).
    pub auth_refused_busy: u64,
    /// Password verifications on the shard loop, on the verifier threads, and answered from the cache.
    pub auth_verified_inline: u64,
    pub auth_verified_off_loop: u64,
    pub auth_cache_hits: u64,
    /// SUBSCRIBE filters refused by the ACL.
    pub acl_subscribe_denied: u64,
    /// Deliveries (retained ones included) the ACL kept from a subscriber.
    pub acl_delivery_denied: u64,
    /// Shared-subscription messages a departing member gave up that no other member could take (none online
    /// with room, here or on the shard picked): kept by that member, in its log, and tried again.
    pub shared_kept: u64,
}

impl Stats {
    fn drops(&self) -> u64 {
        self.dropped_qos0
            + self.dropped_qos12
            + self.dropped_offline
            + self.dropped_too_large
            + self.retained_rejected
            + self.publishes_refused
            + self.refused_queue_full
            + self.persist_errors
            + self.expired
            + self.dropped_shared
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
    /// Authentication and authorisation state (`auth.rs`).
    auth: auth::ShardAuth,
    conns: Slab<Conn>,
    sessions: Vec<Option<Session>>,
    free_sessions: Vec<u32>,
    by_client: ClientIndex,
    subs: Trie<Vec<Subscriber>>,
    /// Cross-shard interest summary: filter -> bitmask of peer shards with a local subscriber for it.
    interest: Trie<u64>,
    /// Shared-subscription groups: local members and the other shards' counts.
    shared: SharedGroups,
    retained: Trie<Rc<Message>>,
    retained_bytes: usize,
    /// How much of `retained` / `retained_bytes` is the broker's own `$SYS` topics (outside the clients' budget).
    sys_retained: (usize, usize),
    wheel: Wheel,
    now: Secs,
    pending_subacks: HashMap<u64, PendingSubAck>,
    /// Connections that sent the bridge flag (0x80 | level): their subscriptions are No Local and Retain As
    /// Published. A set on the shard, not a flag per connection, so idle connections pay nothing for it; a key
    /// leaves it when its connection is released (bounded by the live connections; O(1) per SUBSCRIBE, where a
    /// list pruned on every bridge connect was quadratic in a fleet of clients that all send the flag).
    bridge_conns: std::collections::HashSet<ConnKey>,
    next_token: u64,
    next_generated_id: u64,
    last_drop_log: u64,
    // Outputs for the I/O layer.
    dirty: Vec<ConnKey>,
    closing: Vec<ConnKey>,
    mesh_out: Vec<(u16, MeshMsg)>,
    resumed: Vec<ConnKey>,
    /// A connection's output is full with messages still queued behind it (`burst.rs`).
    flush_wanted: bool,
    /// Connections whose socket returned EAGAIN and was not drained since.
    send_full: burst::SendBlocked,
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
    /// v5 topic aliases of the connections that use them (beside `Conn`, whose size every idle connection pays).
    aliases: HashMap<ConnKey, alias::Aliases>,
    /// v5 wills waiting for their Will Delay Interval.
    wills: will_delay::PendingWills,
    /// Next session the offline-queue expiry sweep looks at (`expiry.rs`).
    sweep_cursor: usize,
    /// Restored shared-subscription members, offline, with queued messages (`shared.rs`).
    shared_restored: Vec<u32>,
    /// Log acknowledgements of re-dispatched messages waiting for the peer that took them (`shared.rs`).
    shared_acks: Vec<shared::DeferredAck>,
}

/// Topics remembered by the subscription and interest tries' match caches (~64 B each, per shard and trie).
const MATCH_CACHE_SLOTS: usize = 4096;

/// Upper bound on the slots `Shard::new` reserves per table (2^20 sessions and connections: at most ~300 MB of
/// address space).
const MAX_RESERVED_SLOTS: usize = 1 << 20;

impl Shard {
    pub fn new(cfg: ShardConfig) -> Self {
        let cfg_shards = cfg.shards;
        // Room for this shard's share of the sessions and connections, reserved up front: address space only
        // (pages become resident as slots are used), and growth never copies the tables, whose abandoned
        // copies would otherwise sit in RSS beside the new ones (measured: ~100 B per idle connection at 10k).
        let reserve = (cfg.max_sessions / cfg_shards.max(1) as usize).min(MAX_RESERVED_SLOTS);
        Shard {
            wheel: Wheel::new(4096),
            auth: auth::ShardAuth::new(),
            conns: Slab::with_capacity(reserve),
            sessions: Vec::with_capacity(reserve),
            cfg,
            free_sessions: Vec::new(),
            by_client: ClientIndex::new(),
            subs: Trie::with_match_cache(MATCH_CACHE_SLOTS),
            interest: Trie::with_match_cache(MATCH_CACHE_SLOTS),
            shared: SharedGroups::new(cfg_shards),
            retained: Trie::new(),
            retained_bytes: 0,
            sys_retained: (0, 0),
            now: 0,
            pending_subacks: HashMap::new(),
            bridge_conns: std::collections::HashSet::new(),
            next_token: 1,
            next_generated_id: 0,
            last_drop_log: 0,
            dirty: Vec::new(),
            closing: Vec::new(),
            mesh_out: Vec::new(),
            resumed: Vec::new(),
            flush_wanted: false,
            send_full: burst::SendBlocked::default(),
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
            aliases: HashMap::new(),
            wills: will_delay::PendingWills::default(),
            sweep_cursor: 0,
            shared_restored: Vec::new(),
            shared_acks: Vec::new(),
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
        self.accept_on(io, 0)
    }

    /// A new socket on listener `listener` (its index in the broker's listener list: which password file and
    /// anonymous rule apply).
    pub fn accept_on(&mut self, io: u64, listener: u8) -> ConnKey {
        self.stats.connections_accepted += 1;
        let key = self.conns.insert(Conn {
            io,
            session: NO_SESSION,
            decoder: Decoder::new_server(self.cfg.max_packet_size),
            partial: None,
            out: None,
            keep_alive: 0,
            last_seen: self.now,
            pause_count: 0,
            dirty: false,
            closing: false,
            out_blocked: false,
            reason_strings: false,
        });
        self.wheel
            .insert(key, self.now + self.cfg.connect_timeout_secs, self.now);
        self.note_listener(key, listener);
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
        let from_partial = conn.partial.is_some();
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
            ReadOutcome::Yield if from_partial => {
                // Going on in a moment (mid-round flush): keep the buffer as it is, no copy.
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.partial = Some(Box::new(std::mem::take(&mut buf)));
                }
                self.resumed.push(key);
            }
            ReadOutcome::Continue | ReadOutcome::Paused | ReadOutcome::Yield => {
                if let Some(conn) = self.conns.get_mut(key) {
                    if !buf.is_empty() {
                        // Keep only the unprocessed tail, in an allocation of its own.
                        conn.partial = Some(Box::new(BytesMut::from(&buf[..])));
                    }
                }
                if outcome == ReadOutcome::Yield {
                    self.resumed.push(key);
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
            if self.flush_wanted && !buf.is_empty() {
                return ReadOutcome::Yield;
            }
            // Every inbound packet may add an ack to `out`: a peer that writes but never reads would grow it
            // without bound, so stop reading it until its output drains (see `flushed`).
            if conn.out_len() >= self.cfg.max_out_buffer * 2 {
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
            self.bridge_conns.remove(&key);
            self.send_full.set(key.idx, false);
            self.stats.connections_closed += 1;
        }
        self.aliases.remove(&key);
        self.dur.forget(key);
        self.auth_forget(key);
    }

    pub fn on_mesh(&mut self, from: u16, msg: MeshMsg) {
        match msg {
            MeshMsg::Publish(mut m, seq) => {
                m.received_at = self.now;
                let m = Rc::new(*m);
                let before = (self.refusals(), self.dur.appends());
                self.deliver_local(&m);
                self.peer_msg_done(from, seq, m.origin, before);
            }
            MeshMsg::Retain(mut m, seq) => {
                m.received_at = self.now;
                let origin = m.origin;
                let before = (self.refusals(), self.dur.appends());
                self.store_retained(Rc::new(*m));
                self.peer_msg_done(from, seq, origin, before);
            }
            MeshMsg::LogRefused { conn, packet_id } => self.refuse_held(conn, packet_id),
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
            MeshMsg::SharedCount { groups, token } => self.on_shared_count(from, groups, token),
            MeshMsg::SharedRefused { seq } => self.on_shared_refused(from, seq),
            MeshMsg::SharedPublish {
                msg,
                share,
                hops,
                seq,
            } => self.on_shared_publish(from, *msg, &share, hops, seq),
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
        self.fire_due_wills();
        self.expire_sessions();
        self.sweep_expired();
        self.redispatch_restored();
        self.store_maintenance();
        let drops = self.stats.drops();
        if drops != self.last_drop_log {
            tracing::warn!(
                shard = self.cfg.shard_id,
                qos0 = self.stats.dropped_qos0,
                qos0_socket_writable = self.stats.dropped_qos0_writable,
                qos12_online = self.stats.dropped_qos12,
                offline = self.stats.dropped_offline,
                too_large = self.stats.dropped_too_large,
                retained_rejected = self.stats.retained_rejected,
                refused_publishes = self.stats.publishes_refused,
                refused_queue_full = self.stats.refused_queue_full,
                log_errors = self.stats.persist_errors,
                expired = self.stats.expired,
                "messages dropped or refused (totals since start)"
            );
            self.last_drop_log = drops;
        }
    }

    // ----- outputs ---------------------------------------------------------------------------------------------

    /// Connections with bytes to write.
    pub fn take_dirty(&mut self, into: &mut Vec<ConnKey>) {
        // The caller writes them now: that is the flush `flush_wanted` asked for.
        self.flush_wanted = false;
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
        self.conns.get_mut(key).map(|c| c.out_mut())
    }

    /// After the I/O layer wrote from `out_buf`: frees an empty buffer and refills from the session queue.
    pub fn flushed(&mut self, key: ConnKey) {
        // A write happened: `pump` below asks again if this or another output is still full.
        self.flush_wanted = false;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.out_len() == 0 {
            c.out = None;
            self.send_full.set(key.idx, false);
        }
        if c.out_blocked && c.out_len() < self.cfg.max_out_buffer {
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
                    self.unaccount(session, &done.q);
                    self.pump(session);
                }
                ReadOutcome::Continue
            }
            Packet::PubRec(r) => {
                let known = self.session_mut(session).on_pubrec(r.packet_id);
                if let Some(msg_id) = known {
                    // Once a PUBREL left, that PUBLISH must never be resent (the client forgets the packet id at
                    // PUBREL and would take it for a new message): the state must be durable first.
                    let work = self.dur.work();
                    self.persist_delivery(session, msg_id, r.packet_id, DeliveryState::PubRelSent);
                    if self.dur.work() != work {
                        self.hold_output(key, true);
                    }
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
                self.dur.note_ack(key);
                ReadOutcome::Continue
            }
            Packet::PubComp(r) => {
                if let Some(done) = self.session_mut(session).on_pubcomp(r.packet_id) {
                    self.persist_ack(session, done.q.msg_id);
                    self.unaccount(session, &done.q);
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

    fn session(&self, sidx: u32) -> &Session {
        self.sessions[sidx as usize].as_ref().expect("live session")
    }

    fn session_mut(&mut self, sidx: u32) -> &mut Session {
        self.sessions[sidx as usize].as_mut().expect("live session")
    }
}
