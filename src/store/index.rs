//! The in-memory index of a shard's live state: what every persistent session holds, which message bodies are
//! referenced, and where (segment, offset) the record backing each fact lives. Message payloads are NOT here:
//! queues hold 8-byte message ids and bodies are read back from the mapped log on demand.
//!
//! The same `apply` serves appends (strict: an operation that does not match the state is refused before
//! anything is written) and recovery (lenient: compaction copies live records to the head of the log, so a
//! record may be replayed before the record it depends on; missing parents become placeholders that a later
//! record fills in, and whatever is still unresolved at the end is dropped and counted).
//!
//! Every fact remembers the location of its record; the bytes of live records are summed per segment so the
//! compactor knows each segment's live ratio and can tell a live record (its location is the one in the index)
//! from a superseded one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::record::{DeliveryState, Record};

/// Hasher for message ids: they are allocated sequentially by the store (never chosen by clients), so a
/// multiplicative hash spreads them well without SipHash's cost. Client ids and topics keep the default
/// randomized hasher (they come from the network).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    /// Low bits stay the id itself, so consecutive ids land in consecutive buckets (recovery and fan-out touch
    /// ids in order: cache-friendly); the top bits, which hashbrown uses as the in-group tag, are mixed.
    fn write_u64(&mut self, v: u64) {
        self.0 = v ^ (v.wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0xFF00_0000_0000_0000);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Location of a record: segment id, offset of its frame, framed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seg: u32,
    pub off: u32,
    pub len: u32,
}

impl Loc {
    /// No location (segment ids never reach u32::MAX: that is 2^32 segments).
    pub const NONE: Loc = Loc {
        seg: u32::MAX,
        off: 0,
        len: 0,
    };
    /// A delivery state carried by the message's `Enqueue` record (its bytes are counted there).
    pub const IN_ENQUEUE: Loc = Loc {
        seg: u32::MAX,
        off: 1,
        len: 0,
    };
}

/// A queued message, by id; read the body with `Store::read_message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgRef(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delivery {
    pub packet_id: u16,
    pub state: DeliveryState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionMeta {
    pub protocol_level: u8,
    pub expiry_secs: u32,
    pub clean: bool,
    /// Unix seconds of the last disconnect, 0 while connected.
    pub disconnected_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSubscription {
    pub filter: String,
    /// MQTT 5 subscription options byte (QoS bits 0-1, NL, RAP, retain handling); v3 uses the QoS bits only.
    pub options: u8,
    /// v5 subscription identifier, 0 = none.
    pub subscription_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub msg: MsgRef,
    /// `None`: not sent yet. `Some`: in flight with this packet id and state.
    pub delivery: Option<Delivery>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSession {
    pub client_id: String,
    pub meta: SessionMeta,
    /// Sorted by filter.
    pub subscriptions: Vec<RecoveredSubscription>,
    /// In enqueue order.
    pub queue: Vec<QueuedMessage>,
    /// Inbound QoS 2 packet ids awaiting PUBREL, ascending.
    pub inbound_qos2: Vec<u16>,
    /// A v5 will waiting for its delay (`WillPending`).
    pub pending_will: Option<RecoveredWill>,
}

/// A pending v5 will as stored by `Record::WillPending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredWill {
    pub due_unix: u64,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: bytes::Bytes,
    /// Encoded PUBLISH properties block.
    pub properties: bytes::Bytes,
}

/// The live state of a shard, as rebuilt by recovery (or snapshotted with `Store::snapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// Sorted by client id.
    pub sessions: Vec<RecoveredSession>,
    /// Retained message per topic, sorted by topic.
    pub retained: Vec<(String, MsgRef)>,
}

#[derive(Debug, Clone, Copy)]
struct SubIx {
    options: u8,
    subscription_id: u32,
    loc: Loc,
}

#[derive(Debug, Default)]
struct SessionIx {
    /// `None` only during recovery, for a session whose upsert has not been replayed yet.
    meta: Option<(SessionMeta, Loc)>,
    subs: HashMap<Box<str>, SubIx, ahash::RandomState>,
    /// Message id -> location of its enqueue record. Ids grow in arrival order and a session only accepts ids
    /// above its newest queued one, so id order is enqueue order; no separate position index is needed.
    queue: BTreeMap<u64, Loc>,
    /// Delivery states of queued messages, kept apart because only the in-flight window has one (most queued
    /// entries are 20 bytes instead of 40). During recovery it may briefly hold a state replayed before its
    /// relocated enqueue.
    inflight: IdMap<(Delivery, Loc)>,
    qos2_in: BTreeMap<u16, Loc>,
    /// Boxed: rare, and every session entry would pay for it inline.
    will: Option<Box<(RecoveredWill, Loc)>>,
}

#[derive(Debug, Clone, Copy)]
struct MsgIx {
    /// `Loc::NONE` only during recovery: referenced before its (relocated) body record was replayed. (Not an
    /// `Option`: this map has an entry per stored message, and 16 bytes instead of 20 matter at millions.)
    loc: Loc,
    refs: u32,
}

impl MsgIx {
    fn body(&self) -> Option<Loc> {
        (self.loc != Loc::NONE).then_some(self.loc)
    }
}

/// Counters of what recovery had to drop because a parent record was missing (only after damage).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayRepairs {
    pub sessions_without_upsert: u64,
    pub entries_without_body: u64,
    pub deliveries_without_enqueue: u64,
    pub ignored_records: u64,
}

#[derive(Default)]
pub(crate) struct Index {
    sessions: HashMap<Box<str>, SessionIx, ahash::RandomState>,
    messages: IdMap<MsgIx>,
    /// Expiry deadline (unix seconds) of the stored messages that have one (`Record::Message::expires_unix`):
    /// apart from `messages`, whose entries stay 16 bytes for the many messages without one.
    expiring: IdMap<u64>,
    retained: HashMap<Box<str>, (u64, Loc), ahash::RandomState>,
    /// Live bytes per segment id.
    seg_live: HashMap<u32, i64, BuildHasherDefault<IdHasher>>,
    /// Messages whose reference count dropped to zero since the last `collect_garbage`.
    unreferenced: Vec<u64>,
    pub max_msg_id: Option<u64>,
    pub repairs: ReplayRepairs,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Append,
    Replay,
}

fn invalid(msg: String) -> Result<(), String> {
    Err(msg)
}

impl Index {
    pub fn live_bytes(&self, seg: u32) -> u64 {
        self.seg_live.get(&seg).copied().unwrap_or(0).max(0) as u64
    }

    pub fn total_live_bytes(&self) -> u64 {
        self.seg_live.values().map(|&v| v.max(0) as u64).sum()
    }

    pub fn forget_segment(&mut self, seg: u32) {
        self.seg_live.remove(&seg);
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    fn add(&mut self, loc: Loc) {
        if loc.len != 0 {
            *self.seg_live.entry(loc.seg).or_insert(0) += loc.len as i64;
        }
    }

    fn sub(&mut self, loc: Loc) {
        if loc.len != 0 {
            *self.seg_live.entry(loc.seg).or_insert(0) -= loc.len as i64;
        }
    }

    fn unref(&mut self, msg_id: u64) {
        if let Some(m) = self.messages.get_mut(&msg_id) {
            m.refs = m.refs.saturating_sub(1);
            if m.refs == 0 {
                self.unreferenced.push(msg_id);
            }
        }
    }

    /// Takes a reference; during recovery creates a placeholder for a body not replayed yet.
    fn take_ref(&mut self, msg_id: u64) {
        let m = self.messages.entry(msg_id).or_insert(MsgIx {
            loc: Loc::NONE,
            refs: 0,
        });
        m.refs += 1;
    }

    /// Unix second the message expires at (0 = never).
    pub fn message_expiry(&self, msg_id: u64) -> u64 {
        self.expiring.get(&msg_id).copied().unwrap_or(0)
    }

    pub fn message_loc(&self, msg_id: u64) -> Option<Loc> {
        self.messages.get(&msg_id).and_then(|m| m.body())
    }

    pub fn session_exists(&self, client_id: &str) -> bool {
        self.sessions
            .get(client_id)
            .is_some_and(|s| s.meta.is_some())
    }

    fn session_mut(&mut self, client_id: &str, mode: Mode) -> Option<&mut SessionIx> {
        if mode == Mode::Replay && !self.sessions.contains_key(client_id) {
            self.sessions.insert(client_id.into(), SessionIx::default());
        }
        match self.sessions.get_mut(client_id) {
            Some(s) if s.meta.is_some() || mode == Mode::Replay => Some(s),
            _ => None,
        }
    }

    /// Applies one record located at `loc`. In `Append` mode nothing changes when it returns an error.
    pub fn apply(&mut self, rec: &Record<'_>, loc: Loc, mode: Mode) -> Result<(), String> {
        match *rec {
            Record::SessionUpsert {
                client_id,
                protocol_level,
                expiry_secs,
                clean,
                disconnected_at,
            } => {
                let meta = SessionMeta {
                    protocol_level,
                    expiry_secs,
                    clean,
                    disconnected_at,
                };
                let s = self.sessions.entry(client_id.into()).or_default();
                let old = s.meta.replace((meta, loc));
                if let Some((_, old)) = old {
                    self.sub(old);
                }
                self.add(loc);
            }
            Record::SessionDelete { client_id } => match self.sessions.remove(client_id) {
                Some(s) if s.meta.is_some() || mode == Mode::Replay => self.drop_session(s),
                Some(s) => {
                    self.sessions.insert(client_id.into(), s);
                    return invalid(format!("delete of unknown session {client_id:?}"));
                }
                None if mode == Mode::Append => {
                    return invalid(format!("delete of unknown session {client_id:?}"))
                }
                None => {}
            },
            Record::SubAdd {
                client_id,
                filter,
                options,
                subscription_id,
            } => {
                let Some(s) = self.session_mut(client_id, mode) else {
                    return invalid(format!("subscribe for unknown session {client_id:?}"));
                };
                let old = s.subs.insert(
                    filter.into(),
                    SubIx {
                        options,
                        subscription_id,
                        loc,
                    },
                );
                if let Some(old) = old {
                    self.sub(old.loc);
                }
                self.add(loc);
            }
            Record::SubRemove { client_id, filter } => {
                let removed = match self.session_mut(client_id, mode) {
                    Some(s) => s.subs.remove(filter),
                    None => None,
                };
                match removed {
                    Some(old) => self.sub(old.loc),
                    None if mode == Mode::Append => {
                        return invalid(format!(
                            "unsubscribe of unknown subscription {client_id:?} {filter:?}"
                        ))
                    }
                    None => self.repairs.ignored_records += 1,
                }
            }
            Record::Message {
                msg_id,
                expires_unix,
                ..
            } => {
                if expires_unix != 0 {
                    self.expiring.insert(msg_id, expires_unix);
                }
                match self.messages.get_mut(&msg_id) {
                    Some(_) if mode == Mode::Append => {
                        return invalid(format!("message id {msg_id} already stored"))
                    }
                    Some(m) => {
                        // Replay: a relocated copy (or the body of a placeholder) - the latest copy wins.
                        let old = std::mem::replace(&mut m.loc, loc);
                        if old != Loc::NONE {
                            self.sub(old);
                        }
                    }
                    None => {
                        self.messages.insert(msg_id, MsgIx { loc, refs: 0 });
                        if mode == Mode::Append {
                            self.unreferenced.push(msg_id);
                        }
                    }
                }
                self.max_msg_id = Some(self.max_msg_id.map_or(msg_id, |m| m.max(msg_id)));
                self.add(loc);
            }
            Record::Enqueue {
                client_id,
                msg_id,
                packet_id,
            } => {
                if mode == Mode::Append
                    && !self
                        .messages
                        .get(&msg_id)
                        .is_some_and(|m| m.body().is_some())
                {
                    return invalid(format!("enqueue of unknown message {msg_id}"));
                }
                let Some(s) = self.session_mut(client_id, mode) else {
                    return invalid(format!("enqueue for unknown session {client_id:?}"));
                };
                if mode == Mode::Append {
                    if s.queue.contains_key(&msg_id) {
                        return invalid(format!(
                            "message {msg_id} already queued for {client_id:?}"
                        ));
                    }
                    if let Some((&newest, _)) = s.queue.last_key_value() {
                        if msg_id < newest {
                            return invalid(format!(
                                "message {msg_id} is older than {newest}, the newest queued for \
                                 {client_id:?}; store a new body to queue it"
                            ));
                        }
                    }
                }
                if packet_id != 0 && !s.inflight.contains_key(&msg_id) {
                    // Sent in the same round. A state already known came from a later `Delivery` (this is a
                    // relocated copy), so it stays.
                    let d = Delivery {
                        packet_id,
                        state: DeliveryState::PublishSent,
                    };
                    s.inflight.insert(msg_id, (d, Loc::IN_ENQUEUE));
                }
                // Replay of a relocated copy moves the record location (the delivery state stays).
                let old = s.queue.insert(msg_id, loc);
                let new_ref = old.is_none();
                if let Some(l) = old {
                    self.sub(l);
                }
                self.add(loc);
                if new_ref {
                    self.take_ref(msg_id);
                }
            }
            Record::Delivery {
                client_id,
                msg_id,
                packet_id,
                state,
            } => {
                let d = Delivery { packet_id, state };
                let Some(s) = self.session_mut(client_id, mode) else {
                    return invalid(format!("delivery for unknown session {client_id:?}"));
                };
                if mode == Mode::Append && !s.queue.contains_key(&msg_id) {
                    return invalid(format!(
                        "delivery of message {msg_id} not queued for {client_id:?}"
                    ));
                }
                let old = s.inflight.insert(msg_id, (d, loc)).map(|(_, l)| l);
                if let Some(old) = old {
                    self.sub(old);
                }
                self.add(loc);
            }
            Record::Ack { client_id, msg_id } => {
                let Some(s) = self.session_mut(client_id, mode) else {
                    return invalid(format!("ack for unknown session {client_id:?}"));
                };
                if mode == Mode::Append && !s.queue.contains_key(&msg_id) {
                    return invalid(format!(
                        "ack of message {msg_id} not queued for {client_id:?}"
                    ));
                }
                let entry = s.queue.remove(&msg_id);
                let delivery = s.inflight.remove(&msg_id);
                if let Some((_, l)) = delivery {
                    self.sub(l);
                }
                match entry {
                    Some(l) => {
                        self.sub(l);
                        self.unref(msg_id);
                    }
                    None if mode == Mode::Append => {
                        return invalid(format!(
                            "ack of message {msg_id} not queued for {client_id:?}"
                        ))
                    }
                    None => self.repairs.ignored_records += 1,
                }
            }
            Record::Qos2InPending {
                client_id,
                packet_id,
            } => {
                let Some(s) = self.session_mut(client_id, mode) else {
                    return invalid(format!("qos2 state for unknown session {client_id:?}"));
                };
                if let Some(old) = s.qos2_in.insert(packet_id, loc) {
                    self.sub(old);
                }
                self.add(loc);
            }
            Record::Qos2InReleased {
                client_id,
                packet_id,
            } => {
                let removed = self
                    .session_mut(client_id, mode)
                    .and_then(|s| s.qos2_in.remove(&packet_id));
                match removed {
                    Some(old) => self.sub(old),
                    None if mode == Mode::Append => {
                        return invalid(format!(
                            "release of unknown inbound packet id {packet_id} for {client_id:?}"
                        ))
                    }
                    None => self.repairs.ignored_records += 1,
                }
            }
            Record::RetainedSet { topic, msg_id } => {
                if mode == Mode::Append && !self.messages.contains_key(&msg_id) {
                    return invalid(format!("retain of unknown message {msg_id}"));
                }
                let old = self.retained.insert(topic.into(), (msg_id, loc));
                self.add(loc);
                self.take_ref(msg_id);
                if let Some((old_msg, old_loc)) = old {
                    self.sub(old_loc);
                    self.unref(old_msg);
                }
            }
            Record::RetainedClear { topic } => match self.retained.remove(topic) {
                Some((old_msg, old_loc)) => {
                    self.sub(old_loc);
                    self.unref(old_msg);
                }
                None if mode == Mode::Append => {
                    return invalid(format!("clear of unknown retained topic {topic:?}"))
                }
                None => {}
            },
            Record::Commit { .. } => {}
            Record::WillPending {
                client_id,
                due_unix,
                topic,
                qos,
                retain,
                payload,
                properties,
            } => {
                let Some(s) = self.session_mut(client_id, mode) else {
                    return invalid(format!("pending will for unknown session {client_id:?}"));
                };
                let will = RecoveredWill {
                    due_unix,
                    topic: topic.to_string(),
                    qos,
                    retain,
                    payload: bytes::Bytes::copy_from_slice(payload),
                    properties: bytes::Bytes::copy_from_slice(properties),
                };
                if let Some(old) = s.will.replace(Box::new((will, loc))) {
                    self.sub(old.1);
                }
                self.add(loc);
            }
            Record::WillCleared { client_id } => {
                let removed = self
                    .session_mut(client_id, mode)
                    .and_then(|s| s.will.take());
                match removed {
                    Some(old) => self.sub(old.1),
                    None if mode == Mode::Append => {
                        return invalid(format!("no pending will for {client_id:?}"))
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    fn drop_session(&mut self, s: SessionIx) {
        if let Some((_, l)) = s.meta {
            self.sub(l);
        }
        for sub in s.subs.values() {
            self.sub(sub.loc);
        }
        for (&msg_id, &l) in &s.queue {
            self.sub(l);
            self.unref(msg_id);
        }
        for (_, l) in s.inflight.values() {
            self.sub(*l);
        }
        for l in s.qos2_in.values() {
            self.sub(*l);
        }
        if let Some(w) = s.will {
            self.sub(w.1);
        }
    }

    /// Forgets message bodies nobody references any more (their bytes become garbage for the compactor).
    pub fn collect_garbage(&mut self) {
        for id in std::mem::take(&mut self.unreferenced) {
            if let Some(m) = self.messages.get(&id) {
                if m.refs == 0 {
                    if let Some(l) = m.body() {
                        self.sub(l);
                    }
                    self.messages.remove(&id);
                    self.expiring.remove(&id);
                }
            }
        }
    }

    /// Ends recovery: resolves placeholders. Anything still missing a parent record is dropped and counted.
    pub fn finish_replay(&mut self) {
        let incomplete: Vec<Box<str>> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.meta.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for k in incomplete {
            if let Some(s) = self.sessions.remove(&k) {
                self.repairs.sessions_without_upsert += 1;
                self.drop_session(s);
            }
        }
        let missing: BTreeSet<u64> = self
            .messages
            .iter()
            .filter(|(_, m)| m.body().is_none())
            .map(|(&id, _)| id)
            .collect();
        let mut freed = Vec::new();
        let mut unrefs = Vec::new();
        for s in self.sessions.values_mut() {
            let orphans: Vec<u64> = s
                .inflight
                .keys()
                .filter(|m| !s.queue.contains_key(*m) || missing.contains(*m))
                .copied()
                .collect();
            for m in orphans {
                if let Some((_, l)) = s.inflight.remove(&m) {
                    if !missing.contains(&m) {
                        self.repairs.deliveries_without_enqueue += 1;
                    }
                    freed.push(l);
                }
            }
            if missing.is_empty() {
                continue;
            }
            let gone: Vec<u64> = s
                .queue
                .iter()
                .filter(|(m, _)| missing.contains(*m))
                .map(|(&m, _)| m)
                .collect();
            for m in gone {
                if let Some(l) = s.queue.remove(&m) {
                    freed.push(l);
                    unrefs.push(m);
                    self.repairs.entries_without_body += 1;
                }
            }
        }
        let gone_retained: Vec<Box<str>> = self
            .retained
            .iter()
            .filter(|(_, (m, _))| missing.contains(m))
            .map(|(t, _)| t.clone())
            .collect();
        for t in gone_retained {
            if let Some((m, l)) = self.retained.remove(&t) {
                freed.push(l);
                unrefs.push(m);
                self.repairs.entries_without_body += 1;
            }
        }
        for l in freed {
            self.sub(l);
        }
        for m in unrefs {
            self.unref(m);
        }
        for id in missing {
            self.messages.remove(&id);
            self.expiring.remove(&id);
        }
        self.unreferenced = self
            .messages
            .iter()
            .filter(|(_, m)| m.refs == 0)
            .map(|(&id, _)| id)
            .collect();
        self.collect_garbage();
    }

    /// The stored location of the fact `rec` describes, if `rec` is the record currently backing it.
    pub fn is_live(&self, rec: &Record<'_>, loc: Loc) -> bool {
        self.fact_loc(rec) == Some(loc)
    }

    fn fact_loc(&self, rec: &Record<'_>) -> Option<Loc> {
        match *rec {
            Record::SessionUpsert { client_id, .. } => {
                self.sessions.get(client_id)?.meta.map(|(_, l)| l)
            }
            Record::SubAdd {
                client_id, filter, ..
            } => self
                .sessions
                .get(client_id)?
                .subs
                .get(filter)
                .map(|s| s.loc),
            Record::Message { msg_id, .. } => {
                let m = self.messages.get(&msg_id)?;
                if m.refs == 0 {
                    return None;
                }
                m.body()
            }
            Record::Enqueue {
                client_id, msg_id, ..
            } => {
                let s = self.sessions.get(client_id)?;
                s.queue.get(&msg_id).copied()
            }
            Record::Delivery {
                client_id, msg_id, ..
            } => {
                let s = self.sessions.get(client_id)?;
                s.inflight.get(&msg_id).map(|(_, l)| *l)
            }
            Record::Qos2InPending {
                client_id,
                packet_id,
            } => self
                .sessions
                .get(client_id)?
                .qos2_in
                .get(&packet_id)
                .copied(),
            Record::RetainedSet { topic, .. } => self.retained.get(topic).map(|(_, l)| *l),
            Record::WillPending { client_id, .. } => {
                self.sessions.get(client_id)?.will.as_ref().map(|w| w.1)
            }
            _ => None,
        }
    }

    /// Moves a live fact to its copy at `new` (compaction).
    pub fn relocate(&mut self, rec: &Record<'_>, old: Loc, new: Loc) {
        let slot: Option<&mut Loc> = match *rec {
            Record::SessionUpsert { client_id, .. } => self
                .sessions
                .get_mut(client_id)
                .and_then(|s| s.meta.as_mut().map(|(_, l)| l)),
            Record::SubAdd {
                client_id, filter, ..
            } => self
                .sessions
                .get_mut(client_id)
                .and_then(|s| s.subs.get_mut(filter).map(|s| &mut s.loc)),
            Record::Message { msg_id, .. } => self
                .messages
                .get_mut(&msg_id)
                .and_then(|m| (m.loc != Loc::NONE).then_some(&mut m.loc)),
            Record::Enqueue {
                client_id, msg_id, ..
            } => self
                .sessions
                .get_mut(client_id)
                .and_then(|s| s.queue.get_mut(&msg_id)),
            Record::Delivery {
                client_id, msg_id, ..
            } => self
                .sessions
                .get_mut(client_id)
                .and_then(|s| s.inflight.get_mut(&msg_id).map(|(_, l)| l)),
            Record::Qos2InPending {
                client_id,
                packet_id,
            } => self
                .sessions
                .get_mut(client_id)
                .and_then(|s| s.qos2_in.get_mut(&packet_id)),
            Record::RetainedSet { topic, .. } => self.retained.get_mut(topic).map(|(_, l)| l),
            Record::WillPending { client_id, .. } => self
                .sessions
                .get_mut(client_id)
                .and_then(|s| s.will.as_mut().map(|w| &mut w.1)),
            _ => None,
        };
        if let Some(slot) = slot {
            if *slot == old {
                *slot = new;
                self.sub(old);
                self.add(new);
            }
        }
    }

    pub fn snapshot(&self) -> State {
        let mut sessions: Vec<RecoveredSession> = self
            .sessions
            .iter()
            .filter_map(|(cid, s)| {
                let (meta, _) = s.meta?;
                let mut subscriptions: Vec<RecoveredSubscription> = s
                    .subs
                    .iter()
                    .map(|(f, sub)| RecoveredSubscription {
                        filter: f.to_string(),
                        options: sub.options,
                        subscription_id: sub.subscription_id,
                    })
                    .collect();
                subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
                Some(RecoveredSession {
                    client_id: cid.to_string(),
                    meta,
                    subscriptions,
                    queue: s
                        .queue
                        .keys()
                        .map(|&m| QueuedMessage {
                            msg: MsgRef(m),
                            delivery: s.inflight.get(&m).map(|(d, _)| *d),
                        })
                        .collect(),
                    inbound_qos2: s.qos2_in.keys().copied().collect(),
                    pending_will: s.will.as_ref().map(|w| w.0.clone()),
                })
            })
            .collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut retained: Vec<(String, MsgRef)> = self
            .retained
            .iter()
            .map(|(t, (m, _))| (t.to_string(), MsgRef(*m)))
            .collect();
        retained.sort();
        State { sessions, retained }
    }
}
