//! The shard's side of durable sessions: what goes into the shard's log (`crate::store`). When output must wait
//! for it (`Durability`) is in `durable.rs`; rebuilding sessions, subscriptions and retained messages from it at
//! start is in `recovery.rs`.
//!
//! Persisted: sessions that outlive their connection (3.1.1 clean session = 0, v5 session expiry > 0) with their
//! subscriptions, their QoS 1/2 queue and in-flight state, their inbound QoS 2 packet ids; retained messages (each
//! shard logs its own replica). Not persisted: clean sessions and QoS 0 messages.
//!
//! Still sans-io in the sense that matters: the store is a value the shard calls, and tests drive it without a
//! runtime; the I/O layer only calls `end_round` / `poll_durable` and writes `out_writable` bytes.

use std::rc::Rc;

use bytestring::ByteString;

use super::{Shard, Stats};
use crate::broker::message::Message;
use crate::broker::session::{Queued, Session};
use crate::codec::properties::encode_publish_block;
use crate::codec::QoS;
use crate::store::{DeliveryState, Record, Store};

use crate::broker::durability::Durability;

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

    pub(super) fn unix_now(&self) -> u64 {
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
            q.log_bytes = 0;
        }
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        s.queue = queue;
        for f in s.inflight.iter_mut() {
            f.q.msg_id = 0;
            f.q.log_bytes = 0;
        }
        // Out of the log: its bytes no longer count (the memory bound applies from now on).
        self.stats.queued_log_bytes = self
            .stats
            .queued_log_bytes
            .saturating_sub(s.log_bytes as u64);
        s.log_bytes = 0;
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
        let expires_unix = self.expires_unix(msg);
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
            expires_unix,
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
        self.unaccount(sidx, q);
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
        // `$SYS` figures are rebuilt by the running broker: logging them would replay stale values at start.
        if self.store.is_none() || self.restoring || super::sys::is_sys_topic(&msg.topic) {
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
}
