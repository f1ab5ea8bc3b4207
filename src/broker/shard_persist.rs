//! The shard's side of durable sessions: what goes into the shard's log (`crate::store`), when output must wait
//! for it (`Durability`), and rebuilding sessions, subscriptions and retained messages from it at start.
//!
//! Persisted: sessions that outlive their connection (3.1.1 clean session = 0, v5 session expiry > 0) with their
//! subscriptions, their QoS 1/2 queue and in-flight state, their inbound QoS 2 packet ids; retained messages (each
//! shard logs its own replica). Not persisted: clean sessions and QoS 0 messages.
//!
//! Still sans-io in the sense that matters: the store is a value the shard calls, and tests drive it without a
//! runtime; the I/O layer only calls `end_round` / `poll_durable` and writes `out_writable` bytes.

use std::rc::Rc;

use bytes::BytesMut;
use bytestring::ByteString;

use super::{Shard, Stats, Subscriber};
use crate::broker::message::{ConnKey, Message};
use crate::broker::session::{Inflight, InflightState, Queued, Session, Subscription};
use crate::codec::properties::{decode_publish_block, encode_publish_block};
use crate::codec::topic::topic_matches;
use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions};
use crate::store::{DeliveryState, MsgRef, Record, State, Store, StoreError};

use crate::broker::durability::Durability;

/// Rounds that may wait for the disk (or a peer's disk) before the shard stops reading its sockets: at one
/// round per ~10 µs under load that is ~40 ms of work ahead of a 10 ms fsync interval, and the bound on the
/// durability bookkeeping (~100 bytes a round) when the disk stalls.
pub(super) const MAX_UNDURABLE_ROUNDS: usize = 4096;

/// Bytes of compaction work per clock second (bounded so a second's round stays short).
const COMPACT_BUDGET: usize = 4 << 20;

/// Append one record; failures are logged and counted, never fatal (the in-memory state stays authoritative for
/// this run, and capacity problems are refused earlier by `check_capacity`).
pub(super) fn log(
    store: &mut Option<Store>,
    dur: &mut Durability,
    stats: &mut Stats,
    rec: &Record<'_>,
) -> bool {
    let Some(store) = store.as_mut() else {
        return false;
    };
    match store.append(rec) {
        Ok(_) => {
            dur.note_append();
            true
        }
        Err(e) => {
            stats.persist_errors += 1;
            tracing::error!(error = %e, record = ?std::mem::discriminant(rec), "log append failed");
            false
        }
    }
}

fn version_of(level: u8) -> ProtocolVersion {
    match level {
        3 => ProtocolVersion::V3_1,
        5 => ProtocolVersion::V5,
        _ => ProtocolVersion::V3_1_1,
    }
}

/// The message a stored body stands for.
fn message_of(stored: crate::store::StoredMessage) -> Result<Message, String> {
    let properties = decode_publish_block(&stored.properties).map_err(|e| e.to_string())?;
    Ok(Message {
        topic: ByteString::from(stored.topic.as_str()),
        payload: stored.payload,
        qos: QoS::from_u8(stored.qos).ok_or("bad QoS")?,
        retain: stored.retain,
        properties,
        origin: None,
    })
}

impl Shard {
    /// Give the shard its log (before any connection). `epoch_unix` is the wall-clock second of shard time 0, used
    /// for session expiry across restarts.
    pub fn attach_store(&mut self, store: Store, epoch_unix: u64) {
        self.store = Some(store);
        self.epoch_unix = epoch_unix;
    }

    pub fn persistence_enabled(&self) -> bool {
        self.store.is_some()
    }

    fn unix_now(&self) -> u64 {
        self.epoch_unix + self.now as u64
    }

    /// The session is in the log now (created, or its expiry/connection state changed).
    pub(super) fn persist_session(&mut self, sidx: u32) {
        let disconnected_at = match self.session(sidx).conn {
            Some(_) => 0,
            None => self.unix_now().max(1),
        };
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        let rec = Record::SessionUpsert {
            client_id: &s.client_id,
            protocol_level: s.protocol.level(),
            expiry_secs: s.expiry.unwrap_or(u32::MAX),
            clean: false,
            disconnected_at,
        };
        let newly = !s.persisted;
        if log(&mut self.store, &mut self.dur, &mut self.stats, &rec) {
            s.persisted = true;
        }
        if newly && s.persisted {
            // A session that becomes persistent brings what it already holds.
            let subs: Vec<(ByteString, u8, u32)> = s
                .subs
                .iter()
                .map(|x| (x.filter.clone(), x.options.to_byte(), x.sub_id.unwrap_or(0)))
                .collect();
            for (filter, options, id) in subs {
                self.persist_sub(sidx, &filter, options, id);
            }
        }
    }

    /// The session stops being persistent (v5 reconnect with expiry 0): load its stored bodies back into memory,
    /// then delete it from the log.
    pub(super) fn unpersist_session(&mut self, sidx: u32) {
        if !self.session(sidx).persisted {
            return;
        }
        let mut queue = std::mem::take(&mut self.session_mut(sidx).queue);
        queue.retain_mut(|q| self.load_body(sidx, q));
        for q in queue.iter_mut() {
            q.msg_id = 0;
            q.log_pending = false;
        }
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        s.queue = queue;
        for f in s.inflight.iter_mut() {
            f.q.msg_id = 0;
        }
        s.persisted = false;
        let rec = Record::SessionDelete {
            client_id: &s.client_id,
        };
        log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
    }

    pub(super) fn delete_persisted(&mut self, s: &Session) {
        if s.persisted {
            let rec = Record::SessionDelete {
                client_id: &s.client_id,
            };
            log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
        }
    }

    pub(super) fn persist_sub(&mut self, sidx: u32, filter: &str, options: u8, sub_id: u32) {
        let s = self.sessions[sidx as usize].as_ref().expect("live session");
        if !s.persisted {
            return;
        }
        let rec = Record::SubAdd {
            client_id: &s.client_id,
            filter,
            options,
            subscription_id: sub_id,
        };
        log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
    }

    pub(super) fn persist_unsub(&mut self, sidx: u32, filter: &str) {
        let s = self.sessions[sidx as usize].as_ref().expect("live session");
        if !s.persisted {
            return;
        }
        let rec = Record::SubRemove {
            client_id: &s.client_id,
            filter,
        };
        log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
    }

    /// Writes a message body; returns its id, or 0 if it could not be stored.
    pub(super) fn persist_body(&mut self, msg: &Message, retain: bool) -> u64 {
        let Some(store) = self.store.as_mut() else {
            return 0;
        };
        let props = match encode_publish_block(msg.properties.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                self.stats.persist_errors += 1;
                tracing::error!(error = %e, "cannot encode message properties for the log");
                return 0;
            }
        };
        let msg_id = store.alloc_msg_id();
        let rec = Record::Message {
            msg_id,
            topic: &msg.topic,
            qos: msg.qos as u8,
            retain,
            payload: &msg.payload,
            properties: &props,
        };
        if log(&mut self.store, &mut self.dur, &mut self.stats, &rec) {
            msg_id
        } else {
            0
        }
    }

    /// A QoS 1/2 message is being queued for a persistent session: reference its body (written once per
    /// routed message, shared by every session of this shard it reaches). The `Enqueue` record itself waits
    /// (`log_pending`) for `persist_sent` or `log_pending_enqueues`, which run before the round ends.
    pub(super) fn persist_enqueue(&mut self, sidx: u32, q: &mut Queued) {
        if q.qos == QoS::AtMostOnce || !self.session(sidx).persisted {
            return;
        }
        let Some(msg) = q.msg.clone() else { return };
        let shared = match self.cur_body {
            Some((ptr, id)) if ptr == Rc::as_ptr(&msg) && id != 0 && !q.retain => id,
            _ => 0,
        };
        let body = if shared != 0 {
            shared
        } else {
            let id = self.persist_body(&msg, q.retain);
            if let Some((ptr, cached)) = self.cur_body.as_mut() {
                if *ptr == Rc::as_ptr(&msg) && !q.retain {
                    *cached = id;
                }
            }
            id
        };
        if body != 0 {
            q.msg_id = body;
            q.log_pending = true;
            self.pending_enqueues += 1;
        }
    }

    /// Writes the `Enqueue` records still pending in a session's queue, after the shard tried to send them.
    /// They are the newest entries the current routing step marked (`pending_enqueues` of them, interleaved at
    /// most with unpersisted QoS 0 ones), so only the queue's tail is walked, never a long QoS 0 backlog. Offline
    /// sessions then keep only the reference in memory.
    pub(super) fn log_pending_enqueues(&mut self, sidx: u32) {
        let pending = std::mem::take(&mut self.pending_enqueues);
        if pending == 0 {
            return;
        }
        let Some(s) = self.sessions[sidx as usize].as_mut() else {
            return;
        };
        let (mut seen, mut first) = (0, s.queue.len());
        for (i, q) in s.queue.iter().enumerate().rev() {
            if seen == pending {
                break;
            }
            first = i;
            seen += q.log_pending as usize;
        }
        let offline = s.conn.is_none();
        for i in first..s.queue.len() {
            let s = self.sessions[sidx as usize].as_mut().expect("live session");
            let q = &mut s.queue[i];
            if !q.log_pending {
                continue;
            }
            q.log_pending = false;
            let rec = Record::Enqueue {
                client_id: &s.client_id,
                msg_id: q.msg_id,
                packet_id: 0,
            };
            if log(&mut self.store, &mut self.dur, &mut self.stats, &rec) {
                if offline {
                    // The log holds the body now.
                    q.msg = None;
                }
            } else {
                q.msg_id = 0;
            }
        }
    }

    /// A persisted QoS 1/2 message leaves with `packet_id`: one `Enqueue` record carrying the packet id if its
    /// enqueue is still pending, else a `Delivery` record. False if it is no longer persisted (log failure).
    pub(super) fn persist_sent(&mut self, sidx: u32, q: &mut Queued, packet_id: u16) -> bool {
        if !q.log_pending {
            self.persist_delivery(sidx, q.msg_id, packet_id, DeliveryState::PublishSent);
            return true;
        }
        q.log_pending = false;
        self.pending_enqueues = self.pending_enqueues.saturating_sub(1);
        let s = self.sessions[sidx as usize].as_ref().expect("live session");
        let rec = Record::Enqueue {
            client_id: &s.client_id,
            msg_id: q.msg_id,
            packet_id,
        };
        if !log(&mut self.store, &mut self.dur, &mut self.stats, &rec) {
            q.msg_id = 0;
            return false;
        }
        true
    }

    /// The message leaves the queue without delivery state (sent as QoS 0, discarded as too large, dropped by
    /// policy): acknowledge it in the log, unless its enqueue was never written (then nothing references the
    /// body, and the log forgets it).
    pub(super) fn persist_done(&mut self, sidx: u32, q: &Queued) {
        if q.log_pending {
            self.pending_enqueues = self.pending_enqueues.saturating_sub(1);
        } else {
            self.persist_ack(sidx, q.msg_id);
        }
    }

    pub(super) fn persist_ack(&mut self, sidx: u32, msg_id: u64) {
        if msg_id == 0 {
            return;
        }
        let s = self.sessions[sidx as usize].as_ref().expect("live session");
        let rec = Record::Ack {
            client_id: &s.client_id,
            msg_id,
        };
        log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
    }

    pub(super) fn persist_delivery(
        &mut self,
        sidx: u32,
        msg_id: u64,
        packet_id: u16,
        state: DeliveryState,
    ) {
        if msg_id == 0 {
            return;
        }
        let s = self.sessions[sidx as usize].as_ref().expect("live session");
        let rec = Record::Delivery {
            client_id: &s.client_id,
            msg_id,
            packet_id,
            state,
        };
        log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
    }

    pub(super) fn persist_qos2_in(&mut self, sidx: u32, packet_id: u16, pending: bool) {
        let s = self.sessions[sidx as usize].as_ref().expect("live session");
        if !s.persisted {
            return;
        }
        let rec = if pending {
            Record::Qos2InPending {
                client_id: &s.client_id,
                packet_id,
            }
        } else {
            Record::Qos2InReleased {
                client_id: &s.client_id,
                packet_id,
            }
        };
        log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
    }

    pub(super) fn persist_retained(&mut self, msg: &Message, replaced: bool) {
        if self.store.is_none() || self.restoring {
            return;
        }
        if msg.payload.is_empty() {
            if replaced {
                let rec = Record::RetainedClear { topic: &msg.topic };
                log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
            }
            return;
        }
        let id = self.persist_body(msg, true);
        if id != 0 {
            let rec = Record::RetainedSet {
                topic: &msg.topic,
                msg_id: id,
            };
            log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
        }
    }

    /// A stored body as a routable message.
    fn read_body(&self, msg: MsgRef) -> Result<Message, String> {
        let st = self.store.as_ref().ok_or("no log")?;
        st.read_message(msg)
            .map_err(|e| e.to_string())
            .and_then(message_of)
    }

    /// Read a queued message's body back from the log (and, for restored entries, work out its QoS, RETAIN and
    /// subscription ids). False if it is unreadable: then it is acknowledged away, counted and logged.
    pub(super) fn load_body(&mut self, sidx: u32, q: &mut Queued) -> bool {
        if q.msg.is_some() {
            return true;
        }
        match self.read_body(MsgRef(q.msg_id)) {
            Ok(m) => {
                if q.restored {
                    let s = self.session(sidx);
                    let mut granted = None::<QoS>;
                    let mut sub_ids = Vec::new();
                    for sub in &s.subs {
                        if topic_matches(&sub.filter, &m.topic) {
                            granted =
                                Some(granted.map_or(sub.options.qos, |g| g.max(sub.options.qos)));
                            sub_ids.extend(sub.sub_id);
                        }
                    }
                    q.qos = m.qos.min(granted.unwrap_or(m.qos));
                    q.retain = m.retain;
                    q.sub_ids = sub_ids;
                    q.restored = false;
                }
                q.msg = Some(Rc::new(m));
                true
            }
            Err(e) => {
                self.stats.persist_errors += 1;
                self.stats.dropped_offline += 1;
                tracing::error!(msg_id = q.msg_id, error = %e, "stored message unreadable; dropped");
                self.persist_ack(sidx, q.msg_id);
                false
            }
        }
    }

    /// Rebuild sessions, subscriptions, queues and retained messages from the log at start. Returns the filters
    /// with a local subscriber (the other shards add them to their interest summaries).
    pub fn restore(&mut self, state: State) -> Vec<ByteString> {
        self.restoring = true;
        let unix_now = self.unix_now();
        let mut expired = Vec::new();
        for rs in state.sessions {
            let meta = rs.meta;
            let expiry = match meta.expiry_secs {
                u32::MAX => None,
                e => {
                    // A crash while connected counts as a disconnect at restart.
                    let off = if meta.disconnected_at == 0 {
                        unix_now
                    } else {
                        meta.disconnected_at
                    };
                    let gone = unix_now.saturating_sub(off);
                    if gone >= e as u64 {
                        expired.push(rs.client_id.clone());
                        continue;
                    }
                    Some(e - gone as u32)
                }
            };
            let client_id = ByteString::from(rs.client_id.as_str());
            let mut session = Session::new(client_id, version_of(meta.protocol_level), expiry);
            session.persisted = true;
            session.offline_since = self.now;
            for sub in &rs.subscriptions {
                let Some(options) = SubscriptionOptions::from_byte(sub.options) else {
                    tracing::warn!(client = %rs.client_id, filter = %sub.filter, "bad stored subscription options");
                    continue;
                };
                session.subs.push(Subscription {
                    filter: ByteString::from(sub.filter.as_str()),
                    options,
                    sub_id: (sub.subscription_id != 0).then_some(sub.subscription_id),
                });
            }
            session.inbound_qos2 = rs.inbound_qos2.clone();
            let sidx = self.new_session(session);
            self.schedule_expiry(sidx);
            let subs = self.session(sidx).subs.clone();
            for sub in &subs {
                let entry = Subscriber {
                    session: sidx,
                    options: sub.options,
                    sub_id: sub.sub_id,
                };
                self.subs
                    .get_or_insert_with(&sub.filter, Vec::new)
                    .push(entry);
            }
            for qm in rs.queue {
                let mut q = Queued {
                    msg: None,
                    msg_id: qm.msg.0,
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    restored: true,
                    log_pending: false,
                    sub_ids: Vec::new(),
                };
                match qm.delivery {
                    Some(d) => {
                        if !self.load_body(sidx, &mut q) {
                            continue;
                        }
                        let state = match d.state {
                            DeliveryState::PubRelSent => InflightState::AwaitPubComp,
                            DeliveryState::PublishSent if q.qos == QoS::ExactlyOnce => {
                                InflightState::AwaitPubRec
                            }
                            DeliveryState::PublishSent => InflightState::AwaitPubAck,
                        };
                        if q.qos == QoS::AtMostOnce {
                            // Subscription downgraded to QoS 0 since: send again as QoS 0.
                            self.session_mut(sidx).queue.push_back(q);
                            continue;
                        }
                        self.session_mut(sidx).inflight.push_back(Inflight {
                            packet_id: d.packet_id,
                            state,
                            q,
                        });
                    }
                    None => self.session_mut(sidx).queue.push_back(q),
                }
            }
            self.session_mut(sidx).resume_packet_ids();
        }
        for client_id in expired {
            let rec = Record::SessionDelete {
                client_id: &client_id,
            };
            log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
        }
        for (topic, msg) in state.retained {
            match self.read_body(msg) {
                Ok(m) => self.store_retained(Rc::new(m)),
                Err(e) => {
                    self.stats.persist_errors += 1;
                    tracing::error!(%topic, error = %e, "stored retained message unreadable; skipped");
                }
            }
        }
        self.restoring = false;
        let mut filters = Vec::new();
        self.subs.for_each(|f, v| {
            if !v.is_empty() {
                filters.push(ByteString::from(f));
            }
        });
        if let Some(st) = self.store.as_mut() {
            if let Err(e) = st.commit() {
                tracing::error!(error = %e, "log commit after recovery failed");
            }
        }
        filters
    }

    /// Interest of a peer shard restored from its log (before any connection is accepted).
    pub fn add_peer_interest(&mut self, peer: u16, filters: &[ByteString]) {
        for f in filters {
            *self.interest.get_or_insert_with(f, || 0) |= 1u64 << peer;
        }
    }

    /// End of an I/O round: commit what the round appended (one group) and close the round's holds.
    pub fn end_round(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let committed = match store.commit() {
            Ok(l) => l,
            Err(e) => {
                self.stats.persist_errors += 1;
                tracing::error!(error = %e, "log commit failed");
                store.committed_lsn()
            }
        };
        let mesh = &mut self.mesh_out;
        self.dur.end_round(committed, |peer, upto, written| {
            mesh.push((peer, super::MeshMsg::Handled { upto, written }))
        });
        self.poll_durable();
    }

    /// Release output and peer confirmations that became durable.
    pub fn poll_durable(&mut self) {
        let Some(store) = self.store.as_ref() else {
            return;
        };
        let durable = store.durable_lsn();
        let mesh = &mut self.mesh_out;
        let conns = &mut self.conns;
        let dirty = &mut self.dirty;
        self.dur.poll(
            durable,
            |peer, seq| mesh.push((peer, super::MeshMsg::Durable { seq })),
            |key| {
                if let Some(c) = conns.get_mut(key) {
                    if !c.dirty {
                        c.dirty = true;
                        dirty.push(key);
                    }
                }
            },
        );
    }

    /// Output or a peer waits for the log to sync (the I/O layer wakes on sync, or polls soon).
    pub fn durability_waiting(&self) -> bool {
        self.store.is_some() && self.dur.waiting()
    }

    /// A numbered (QoS>0) message from peer `from` was handled; `before` is (persist errors, records appended)
    /// from just before. If part of it did not reach our log, the publisher's shard is told before our
    /// confirmation, so its held acknowledgement never leaves. If it wrote nothing, the confirmation waits for
    /// no sync.
    pub(super) fn peer_msg_done(
        &mut self,
        from: u16,
        seq: u64,
        origin: Option<crate::broker::message::Origin>,
        (failures_before, appends_before): (u64, u64),
    ) {
        if seq == 0 {
            return;
        }
        if self.stats.persist_errors != failures_before {
            if let Some(o) = origin {
                self.mesh_out
                    .push((from, super::MeshMsg::LogRefused(o.conn)));
            }
        }
        let appended = self.dur.appends() != appends_before;
        self.dur.on_peer_msg(from, seq, appended);
    }

    /// A peer's log could not take a message published on `key`: drop the connection's output from its first
    /// hold on (the acknowledgement that would vouch for it is there) and close it (v5: DISCONNECT 0x97), so the
    /// client sends the message again after reconnecting. Counted as a refused publish.
    pub(super) fn refuse_held(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let keep = self.dur.writable(key, conn.out.len());
        conn.out.truncate(keep);
        self.dur.forget(key);
        self.stats.publishes_refused += 1;
        tracing::warn!(
            shard = self.cfg.shard_id,
            conn = ?key,
            "a peer shard's log could not take a publish: closing the publisher unacknowledged"
        );
        self.close(key, true, Some(crate::codec::ReasonCode::QuotaExceeded));
    }

    /// Too many rounds are waiting for the log (a slow or stalled disk): the I/O layer stops reading sockets
    /// until it catches up, so publishers wait for their acknowledgements instead of growing our bookkeeping.
    /// Counted and logged once per episode; reading resumes below half the bound.
    pub fn log_congested(&mut self) -> bool {
        let backlog = self.dur.backlog();
        if !self.log_stalled && backlog >= MAX_UNDURABLE_ROUNDS {
            self.log_stalled = true;
            self.stats.log_stalls += 1;
            tracing::warn!(
                shard = self.cfg.shard_id,
                rounds = backlog,
                "log is not keeping up (slow disk?): reading paused until it catches up"
            );
        } else if self.log_stalled && backlog < MAX_UNDURABLE_ROUNDS / 2 {
            self.log_stalled = false;
            tracing::info!(shard = self.cfg.shard_id, "log caught up: reading resumed");
        }
        self.log_stalled
    }

    /// Everything written to this connection from now on waits until what the current round sent to peers is
    /// confirmed and, if `local`, until the round is durable in our log.
    pub(super) fn hold_output(&mut self, key: ConnKey, local: bool) {
        if self.store.is_none() {
            return;
        }
        if let Some(c) = self.conns.get(key) {
            self.dur.hold(key, c.out.len(), local);
        }
    }

    /// The connection's output and how many leading bytes of it may be written now.
    pub fn out_writable(&mut self, key: ConnKey) -> Option<(&mut BytesMut, usize)> {
        let c = self.conns.get_mut(key)?;
        let n = self.dur.writable(key, c.out.len());
        Some((&mut c.out, n))
    }

    /// The I/O layer wrote (and removed) `n` bytes from the front of the connection's output.
    pub fn consumed(&mut self, key: ConnKey, n: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            bytes::Buf::advance(&mut c.out, n);
        }
        self.dur.consumed(key, n);
    }

    /// Once a second: bounded compaction, and dropping read pages of the log from memory.
    pub(super) fn store_maintenance(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.compact_step(COMPACT_BUDGET) {
            Ok(p) if p.deleted_segments > 0 => {
                tracing::debug!(
                    shard = self.cfg.shard_id,
                    deleted = p.deleted_segments,
                    "log compacted"
                )
            }
            Ok(_) => {}
            Err(StoreError::SyncFailed(_)) => {}
            Err(e) => {
                self.stats.persist_errors += 1;
                tracing::error!(error = %e, "log compaction failed");
            }
        }
        store.release_cached_pages();
    }

    /// Refuse a QoS>0 publish when the log cannot take it (disk full, budget exhausted, sync failed).
    pub(super) fn log_refuses(&mut self, bytes: usize) -> Option<StoreError> {
        let store = self.store.as_mut()?;
        store.check_capacity(bytes).err()
    }

    /// The log synced past what the last `poll_durable` saw, with something waiting on it.
    pub fn durable_progress(&self) -> bool {
        match self.store.as_ref() {
            Some(st) => self.dur.waiting() && st.durable_lsn() > self.dur.polled(),
            None => false,
        }
    }
}

impl Shard {
    /// Block until everything committed is durable (shutdown, tests). Never on the hot path.
    pub fn sync_log(&mut self) {
        if let Some(st) = self.store.as_mut() {
            if let Err(e) = st.sync() {
                tracing::error!(error = %e, "log sync failed");
            }
        }
        self.poll_durable();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ReadOutcome, ShardConfig};
    use super::*;
    use crate::codec::{self, Connect, Packet, Publish, Subscribe, SubscribeFilter};
    use crate::store::{FsyncPolicy, StoreConfig};
    use std::time::Duration;

    const V: ProtocolVersion = ProtocolVersion::V3_1_1;

    fn frame(p: &Packet) -> BytesMut {
        let mut b = BytesMut::new();
        codec::encode(p, V, &mut b).unwrap();
        b
    }

    /// Accept a connection and feed it a CONNECT (v3.1.1, or v5 with a session expiry when `v5_expiry` is set).
    fn connect_as(
        shard: &mut Shard,
        io: u64,
        id: &str,
        clean: bool,
        v5_expiry: Option<u32>,
    ) -> ConnKey {
        let key = shard.accept(io);
        let protocol = if v5_expiry.is_some() {
            ProtocolVersion::V5
        } else {
            V
        };
        let c = Connect {
            protocol,
            clean_start: clean,
            keep_alive: 0,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: v5_expiry.map(|e| {
                Box::new(crate::codec::Properties {
                    session_expiry_interval: Some(e),
                    ..Default::default()
                })
            }),
        };
        let mut b = BytesMut::new();
        codec::encode(&Packet::Connect(Box::new(c)), protocol, &mut b).unwrap();
        assert_eq!(shard.on_bytes(key, &mut b), ReadOutcome::Continue);
        key
    }

    fn connect(shard: &mut Shard, io: u64, id: &str, clean: bool) -> ConnKey {
        connect_as(shard, io, id, clean, None)
    }

    fn take_output(shard: &mut Shard, key: ConnKey) -> Vec<Packet> {
        let (out, n) = shard.out_writable(key).unwrap();
        let mut bytes = BytesMut::from(&out[..n]);
        shard.consumed(key, n);
        let mut d = codec::Decoder::new_client(V, 1 << 20);
        let mut v = Vec::new();
        while let Some(p) = d.decode(&mut bytes).unwrap() {
            v.push(p);
        }
        v
    }

    fn shard_with_log(dir: &std::path::Path) -> Shard {
        let cfg = StoreConfig {
            // Long enough that nothing becomes durable unless the test syncs.
            fsync: FsyncPolicy::Interval(Duration::from_secs(10)),
            sync_bytes: usize::MAX,
            segment_size: 1 << 20,
            ..StoreConfig::default()
        };
        let (store, rec) = Store::open(dir, 0, cfg).unwrap();
        let mut shard = Shard::new(ShardConfig::default());
        shard.attach_store(store, 1_000_000);
        shard.restore(rec.state);
        shard
    }

    fn subscribe(filter: &str, qos: QoS) -> BytesMut {
        frame(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            properties: None,
        }))
    }

    fn publish(qos: QoS, id: u16) -> BytesMut {
        publish_to("t/1", qos, id, b"hello")
    }

    #[test]
    fn puback_waits_for_the_log_only_when_it_vouches_for_persistent_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut shard = shard_with_log(dir.path());
        let p = connect(&mut shard, 1, "pub", true);
        take_output(&mut shard, p);

        // No persistent subscriber: nothing to make durable, the PUBACK goes at once.
        shard.on_bytes(p, &mut publish(QoS::AtLeastOnce, 1));
        shard.end_round();
        assert!(matches!(
            take_output(&mut shard, p)[..],
            [Packet::PubAck(_)]
        ));

        // A persistent subscriber, now offline.
        let s = connect(&mut shard, 2, "sub", false);
        let mut sub = subscribe("t/#", QoS::AtLeastOnce);
        shard.on_bytes(s, &mut sub);
        shard.end_round();
        assert!(
            take_output(&mut shard, s)
                .iter()
                .all(|p| !matches!(p, Packet::SubAck(_))),
            "a persistent SUBACK waits for the log"
        );
        shard.sync_log();
        assert!(take_output(&mut shard, s)
            .iter()
            .any(|p| matches!(p, Packet::SubAck(_))));
        shard.on_io_closed(s);
        shard.release(s);

        shard.on_bytes(p, &mut publish(QoS::AtLeastOnce, 2));
        shard.on_bytes(p, &mut publish(QoS::AtMostOnce, 0));
        shard.end_round();
        assert!(
            take_output(&mut shard, p).is_empty(),
            "the PUBACK (and what follows it) waits until the queued message is durable"
        );
        shard.sync_log();
        assert!(matches!(
            take_output(&mut shard, p)[..],
            [Packet::PubAck(_)]
        ));

        // The offline queue holds a reference only; the body is read back from the log on reconnect.
        let sidx = *shard.by_client.get(&shard.sessions, "sub").unwrap();
        let q = &shard.session(sidx).queue;
        assert_eq!(q.len(), 2);
        assert!(q[0].msg.is_none() && q[0].msg_id != 0);
        assert!(
            q[1].msg.is_some() && q[1].msg_id == 0,
            "QoS 0 is never persisted"
        );
        let s = connect(&mut shard, 3, "sub", false);
        let got = take_output(&mut shard, s);
        assert!(
            matches!(&got[..], [Packet::ConnAck(a), Packet::Publish(m), Packet::Publish(m0)]
            if a.session_present && &m.payload[..] == b"hello" && m.qos == QoS::AtLeastOnce
                && m0.qos == QoS::AtMostOnce)
        );
    }

    fn connect_v5(shard: &mut Shard, io: u64, id: &str, expiry: u32) -> ConnKey {
        connect_as(shard, io, id, false, Some(expiry))
    }

    #[test]
    fn v5_session_expiry_is_kept_across_a_restart_and_enforced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut shard = shard_with_log(dir.path());
            shard.tick(100);
            let a = connect_v5(&mut shard, 1, "short", 30);
            let b = connect_v5(&mut shard, 2, "long", 3600);
            shard.on_io_closed(a);
            shard.on_io_closed(b);
            shard.end_round();
            shard.sync_log();
            // Offline at shard second 100 = unix 1_000_100.
            shard.tick(120);
            assert_eq!(shard.session_count(), 2, "not expired yet");
        }
        // Restart 20 s of wall time after the disconnect: "short" has 10 s left, "long" 3580 s.
        let cfg = StoreConfig {
            fsync: FsyncPolicy::Interval(Duration::from_secs(10)),
            segment_size: 1 << 20,
            ..StoreConfig::default()
        };
        let (store, rec) = Store::open(dir.path(), 0, cfg).unwrap();
        let mut shard = Shard::new(ShardConfig::default());
        shard.attach_store(store, 1_000_120);
        shard.restore(rec.state);
        assert_eq!(shard.session_count(), 2);
        shard.tick(9);
        assert_eq!(shard.session_count(), 2);
        shard.tick(10);
        assert_eq!(
            shard.session_count(),
            1,
            "the 30 s session expired 30 s after its disconnect"
        );
        assert!(shard.by_client.get(&shard.sessions, "long").is_some());
        // Reconnecting cancels the expiry; a later disconnect starts it again.
        let l = connect_v5(&mut shard, 3, "long", 5);
        shard.tick(4000);
        assert_eq!(shard.session_count(), 1, "online sessions never expire");
        shard.on_io_closed(l);
        shard.tick(4004);
        assert_eq!(shard.session_count(), 1);
        shard.tick(4005);
        assert_eq!(shard.session_count(), 0);
        shard.end_round();
        shard.sync_log();
        let state = shard.store.as_ref().unwrap().snapshot();
        assert!(
            state.sessions.is_empty(),
            "expired sessions are deleted from the log"
        );
    }

    #[test]
    fn restore_rebuilds_sessions_queues_and_interest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut shard = shard_with_log(dir.path());
            let s = connect(&mut shard, 1, "sub", false);
            let mut sub = subscribe("t/+", QoS::ExactlyOnce);
            shard.on_bytes(s, &mut sub);
            shard.on_io_closed(s);
            shard.release(s);
            let p = connect(&mut shard, 2, "pub", true);
            for i in 1..=3 {
                shard.on_bytes(p, &mut publish(QoS::ExactlyOnce, i));
            }
            shard.end_round();
            shard.sync_log();
        }
        let mut shard = shard_with_log(dir.path());
        let mut filters = Vec::new();
        shard.subs.for_each(|f, _| filters.push(f.to_string()));
        assert_eq!(filters, vec!["t/+".to_string()]);
        let s = connect(&mut shard, 1, "sub", false);
        shard.end_round();
        shard.sync_log();
        let got = take_output(&mut shard, s);
        let publishes: Vec<_> = got
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(m) => Some((m.qos, m.packet_id)),
                _ => None,
            })
            .collect();
        assert_eq!(publishes.len(), 3, "{got:?}");
        assert!(publishes.iter().all(|(q, _)| *q == QoS::ExactlyOnce));
    }

    /// A message queued and sent in the same round costs one `Enqueue` record carrying its packet id, not an
    /// `Enqueue` and a `Delivery`; after a crash it is resent with that id and DUP.
    #[test]
    fn a_message_sent_in_the_round_it_was_queued_is_one_record_and_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let sent: Vec<u16> = {
            let mut shard = shard_with_log(dir.path());
            let s = connect(&mut shard, 1, "sub", false);
            shard.on_bytes(s, &mut subscribe("t/+", QoS::AtLeastOnce));
            shard.end_round();
            shard.sync_log();
            take_output(&mut shard, s);
            let p = connect(&mut shard, 2, "pub", true);
            for i in 1..=3 {
                shard.on_bytes(p, &mut publish(QoS::AtLeastOnce, i));
            }
            shard.end_round();
            shard.sync_log();
            let ids = take_output(&mut shard, s)
                .iter()
                .filter_map(|p| match p {
                    Packet::Publish(m) => Some(m.packet_id),
                    _ => None,
                })
                .collect();
            // Crash: the shard is dropped with the subscriber still connected and nothing acknowledged.
            ids
        };
        assert_eq!(sent.len(), 3);
        let cfg = StoreConfig {
            segment_size: 1 << 20,
            ..StoreConfig::default()
        };
        let (store, rec) = Store::open(dir.path(), 0, cfg).unwrap();
        // Session upsert, subscription, then a body and one enqueue per message.
        assert_eq!(rec.report.records, 2 + 3 * 2, "{:?}", rec.report);
        drop(store);
        let mut shard = shard_with_log(dir.path());
        let s = connect(&mut shard, 1, "sub", false);
        shard.end_round();
        shard.sync_log();
        let resent: Vec<(u16, bool)> = take_output(&mut shard, s)
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(m) => Some((m.packet_id, m.dup)),
                _ => None,
            })
            .collect();
        assert_eq!(
            resent,
            sent.iter().map(|&id| (id, true)).collect::<Vec<_>>()
        );
    }

    /// A disk that does not keep up: once `MAX_UNDURABLE_ROUNDS` rounds wait for it the shard reports congestion
    /// (the I/O layer stops reading), counted once; it clears when the log is durable again.
    #[test]
    fn rounds_waiting_for_the_log_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut shard = shard_with_log(dir.path());
        let s = connect(&mut shard, 1, "sub", false);
        shard.on_bytes(s, &mut subscribe("t/+", QoS::AtLeastOnce));
        shard.end_round();
        // The (persistent) SUBACK waits for the log.
        shard.sync_log();
        shard.poll_durable();
        take_output(&mut shard, s);
        let p = connect(&mut shard, 2, "pub", true);
        for i in 0..MAX_UNDURABLE_ROUNDS {
            assert!(!shard.log_congested(), "congested after {i} rounds");
            shard.on_bytes(p, &mut publish(QoS::AtLeastOnce, (i % 60_000) as u16 + 1));
            shard.end_round();
            // The subscriber acknowledges, so its queue stays short; only the log lags.
            for pkt in take_output(&mut shard, s) {
                if let Packet::Publish(m) = pkt {
                    let ack = Packet::PubAck(codec::PubResp {
                        packet_id: m.packet_id,
                        reason: codec::ReasonCode::Success,
                        properties: Default::default(),
                    });
                    shard.on_bytes(s, &mut frame(&ack));
                }
            }
        }
        assert!(shard.log_congested());
        assert!(shard.log_congested());
        assert_eq!(shard.stats.log_stalls, 1);
        shard.sync_log();
        shard.poll_durable();
        assert!(!shard.log_congested());
    }

    /// A client id that lands on `shard` of 2.
    fn id_on(prefix: &str, shard: u16) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|id| super::super::owner_shard(id, 2) == shard)
            .unwrap()
    }

    /// Shard `id` of 2 with its own log in `dir` (nothing is durable until the test syncs).
    fn two_shard_member(dir: &std::path::Path, id: u16, max_record_size: u32) -> Shard {
        let cfg = StoreConfig {
            fsync: FsyncPolicy::Interval(Duration::from_secs(10)),
            sync_bytes: usize::MAX,
            segment_size: 1 << 20,
            max_record_size,
            ..StoreConfig::default()
        };
        let (store, rec) = Store::open(dir, id as u32, cfg).unwrap();
        let mut shard = Shard::new(ShardConfig {
            shard_id: id,
            shards: 2,
            ..ShardConfig::default()
        });
        shard.attach_store(store, 1_000_000);
        shard.restore(rec.state);
        shard
    }

    /// A few rounds of both shards, carrying mesh messages between them; a shard's log is synced each round
    /// only if `sync[shard]`.
    fn shuttle(a: &mut Shard, b: &mut Shard, sync: [bool; 2]) {
        let mut msgs = Vec::new();
        for _ in 0..4 {
            for (from, to) in [(0u16, 1u16), (1, 0)] {
                let (src, dst) = if from == 0 {
                    (&mut *a, &mut *b)
                } else {
                    (&mut *b, &mut *a)
                };
                src.end_round();
                if sync[from as usize] {
                    src.sync_log();
                }
                src.poll_durable();
                src.take_mesh(&mut msgs);
                for (peer, m) in msgs.drain(..) {
                    assert_eq!(peer, to);
                    dst.on_mesh(from, m);
                }
            }
        }
    }

    /// Two shards with synced logs: on shard 1 a clean subscriber to `clean/+` and a persistent one to `kept/+`;
    /// on shard 0 a persistent one to `mine/+`.
    fn two_shards_with_subscribers(dir: &std::path::Path) -> (Shard, Shard) {
        let mut s0 = two_shard_member(&dir.join("0"), 0, 1 << 20);
        let mut s1 = two_shard_member(&dir.join("1"), 1, 1 << 20);
        let clean_sub = connect(&mut s1, 1, &id_on("csub", 1), true);
        s1.on_bytes(clean_sub, &mut subscribe("clean/+", QoS::AtLeastOnce));
        let durable_sub = connect(&mut s1, 2, &id_on("dsub", 1), false);
        s1.on_bytes(durable_sub, &mut subscribe("kept/+", QoS::AtLeastOnce));
        let local_sub = connect(&mut s0, 3, &id_on("lsub", 0), false);
        s0.on_bytes(local_sub, &mut subscribe("mine/+", QoS::AtLeastOnce));
        shuttle(&mut s0, &mut s1, [true, true]);
        (s0, s1)
    }

    fn pubacks(got: &[Packet]) -> Vec<u16> {
        got.iter()
            .filter_map(|p| match p {
                Packet::PubAck(r) => Some(r.packet_id),
                _ => None,
            })
            .collect()
    }

    fn publish_to(topic: &str, qos: QoS, id: u16, payload: &[u8]) -> BytesMut {
        frame(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: id,
            properties: None,
            payload: bytes::Bytes::copy_from_slice(payload),
        }))
    }

    /// Two shards wired by hand: the publisher's on shard 0, a persistent subscriber on shard 1 whose log takes
    /// message bodies only up to `peer_max_record` bytes. Returns what the publisher received and shard 0.
    fn publish_across_shards(peer_max_record: u32) -> (Vec<Packet>, Shard) {
        let dir = tempfile::tempdir().unwrap();
        let mut s0 = two_shard_member(&dir.path().join("0"), 0, 1 << 20);
        let mut s1 = two_shard_member(&dir.path().join("1"), 1, peer_max_record);
        let sub = connect(&mut s1, 1, &id_on("sub", 1), false);
        s1.on_bytes(sub, &mut subscribe("t/+", QoS::AtLeastOnce));
        shuttle(&mut s0, &mut s1, [true, true]);
        let p = connect(&mut s0, 2, &id_on("pub", 0), true);
        take_output(&mut s0, p);
        s0.on_bytes(p, &mut publish_to("t/1", QoS::AtLeastOnce, 7, &[b'x'; 300]));
        shuttle(&mut s0, &mut s1, [true, true]);
        (take_output(&mut s0, p), s0)
    }

    /// Clean-session traffic between shards waits for neither shard's log: its PUBACK leaves while both shards
    /// still have records of their own persistent sessions waiting for a sync. Acknowledgements on one connection
    /// still leave in order, and a message that did write to the peer's log (a persistent subscriber there)
    /// still waits for it.
    #[test]
    fn a_cross_shard_publish_waits_only_for_the_records_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s0, mut s1) = two_shards_with_subscribers(dir.path());
        // Shard 1's own traffic leaves records in its log that are not synced below.
        let local = connect(&mut s1, 4, &id_on("lpub", 1), true);
        s1.on_bytes(local, &mut publish_to("kept/1", QoS::AtLeastOnce, 1, b"x"));
        // On shard 0, publisher p first writes to shard 0's log (6), then sends clean traffic across (7);
        // publisher q only sends clean traffic across (9).
        let p = connect(&mut s0, 5, &id_on("p", 0), true);
        let q = connect(&mut s0, 6, &id_on("q", 0), true);
        take_output(&mut s0, p);
        take_output(&mut s0, q);
        s0.on_bytes(p, &mut publish_to("mine/1", QoS::AtLeastOnce, 6, b"x"));
        s0.on_bytes(p, &mut publish_to("clean/1", QoS::AtLeastOnce, 7, b"x"));
        s0.on_bytes(q, &mut publish_to("clean/2", QoS::AtLeastOnce, 9, b"x"));
        shuttle(&mut s0, &mut s1, [false, false]);
        assert_eq!(
            pubacks(&take_output(&mut s0, q)),
            vec![9],
            "clean traffic waited for a log"
        );
        assert_eq!(
            pubacks(&take_output(&mut s0, p)),
            Vec::<u16>::new(),
            "6 waits for shard 0's log and 7 behind it"
        );
        shuttle(&mut s0, &mut s1, [true, false]);
        assert_eq!(pubacks(&take_output(&mut s0, p)), vec![6, 7]);
        // To a persistent subscriber on shard 1: waits for shard 1's log.
        s0.on_bytes(p, &mut publish_to("kept/2", QoS::AtLeastOnce, 8, b"x"));
        shuttle(&mut s0, &mut s1, [true, false]);
        assert_eq!(
            pubacks(&take_output(&mut s0, p)),
            Vec::<u16>::new(),
            "acknowledged before the peer's log holds it"
        );
        shuttle(&mut s0, &mut s1, [true, true]);
        assert_eq!(pubacks(&take_output(&mut s0, p)), vec![8]);
    }

    /// Mixed traffic between two shards: a clean message does not wait behind an earlier one, from another
    /// publisher on the same shard, that wrote to the peer's log (confirmations are not one cumulative number).
    #[test]
    fn a_clean_cross_shard_publish_does_not_wait_behind_a_persistent_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s0, mut s1) = two_shards_with_subscribers(dir.path());
        let p = connect(&mut s0, 5, &id_on("p", 0), true);
        let q = connect(&mut s0, 6, &id_on("q", 0), true);
        take_output(&mut s0, p);
        take_output(&mut s0, q);
        // Same round: p's message is logged on shard 1, then q's clean one is numbered after it.
        s0.on_bytes(p, &mut publish_to("kept/1", QoS::AtLeastOnce, 1, b"x"));
        s0.on_bytes(q, &mut publish_to("clean/1", QoS::AtLeastOnce, 2, b"x"));
        shuttle(&mut s0, &mut s1, [true, false]);
        // A later round too, and p's second persistent one in between.
        s0.on_bytes(p, &mut publish_to("kept/2", QoS::AtLeastOnce, 3, b"x"));
        s0.on_bytes(q, &mut publish_to("clean/2", QoS::AtLeastOnce, 4, b"x"));
        shuttle(&mut s0, &mut s1, [true, false]);
        assert_eq!(
            pubacks(&take_output(&mut s0, q)),
            vec![2, 4],
            "clean traffic waited for the peer's log"
        );
        assert_eq!(
            pubacks(&take_output(&mut s0, p)),
            Vec::<u16>::new(),
            "acknowledged before the peer's log holds it"
        );
        shuttle(&mut s0, &mut s1, [true, true]);
        assert_eq!(pubacks(&take_output(&mut s0, p)), vec![1, 3]);
        assert_eq!(s0.dur.backlog() + s1.dur.backlog(), 0);
    }

    /// A QoS 1 message that the subscriber's shard could not write to its log is not acknowledged to the
    /// publisher (the connection is closed and the client sends it again); when it could, the PUBACK leaves.
    #[test]
    fn a_peer_log_failure_withholds_the_publishers_acknowledgement() {
        let (got, s0) = publish_across_shards(1 << 16);
        assert!(
            got.iter()
                .any(|p| matches!(p, Packet::PubAck(r) if r.packet_id == 7)),
            "{got:?}"
        );
        assert_eq!(s0.stats.publishes_refused, 0);

        let (got, s0) = publish_across_shards(128);
        assert!(
            !got.iter().any(|p| matches!(p, Packet::PubAck(_))),
            "{got:?}"
        );
        assert_eq!(s0.stats.publishes_refused, 1);
    }

    /// QoS 0 messages between QoS 1 ones in an offline queue: every QoS 1 enqueue still reaches the log.
    #[test]
    fn enqueues_between_qos0_entries_reach_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut shard = shard_with_log(dir.path());
            let s = connect(&mut shard, 1, "sub", false);
            shard.on_bytes(s, &mut subscribe("t/+", QoS::AtLeastOnce));
            shard.on_io_closed(s);
            shard.release(s);
            let p = connect(&mut shard, 2, "pub", true);
            for i in 1..=10 {
                shard.on_bytes(p, &mut publish(QoS::AtMostOnce, 0));
                shard.on_bytes(p, &mut publish(QoS::AtLeastOnce, i));
            }
            shard.end_round();
            shard.sync_log();
        }
        let mut shard = shard_with_log(dir.path());
        let s = connect(&mut shard, 1, "sub", false);
        shard.end_round();
        shard.sync_log();
        let qos1 = take_output(&mut shard, s)
            .iter()
            .filter(|p| matches!(p, Packet::Publish(m) if m.qos == QoS::AtLeastOnce))
            .count();
        assert_eq!(qos1, 10);
    }
}
