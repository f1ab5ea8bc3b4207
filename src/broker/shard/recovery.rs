//! Rebuilding sessions, subscriptions and retained messages from the log at start; loading message bodies.

use std::rc::Rc;

use bytestring::ByteString;

use super::{Shard, Subscriber};
use crate::broker::message::Message;
use crate::broker::session::{Inflight, InflightState, Queued, Session, Subscription};
use crate::codec::properties::decode_publish_block;
use crate::codec::topic::topic_matches;
use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions};
use crate::store::{DeliveryState, MsgRef, Record, State};

use super::persist::log;

pub(super) fn version_of(level: u8) -> ProtocolVersion {
    match level {
        3 => ProtocolVersion::V3_1,
        5 => ProtocolVersion::V5,
        _ => ProtocolVersion::V3_1_1,
    }
}

/// The message a stored body stands for.
pub(super) fn message_of(stored: crate::store::StoredMessage) -> Result<Message, String> {
    let properties = decode_publish_block(&stored.properties).map_err(|e| e.to_string())?;
    Ok(Message {
        topic: ByteString::from(stored.topic.as_str()),
        payload: stored.payload,
        qos: QoS::from_u8(stored.qos).ok_or("bad QoS")?,
        retain: stored.retain,
        properties,
        origin: None,
        received_at: 0,
    })
}

impl Shard {
    /// A stored body as a routable message; one with a stored deadline gets the interval that remains of it.
    pub(super) fn read_body(&self, msg: MsgRef) -> Result<Message, String> {
        let st = self.store.as_ref().ok_or("no log")?;
        let stored = st.read_message(msg).map_err(|e| e.to_string())?;
        let expires_unix = stored.expires_unix;
        let mut m = message_of(stored)?;
        self.apply_stored_deadline(&mut m, expires_unix);
        Ok(m)
    }

    /// Shard-second deadline of a stored message (from its wall-clock one; `NO_DEADLINE` if none).
    fn stored_deadline(&self, msg: MsgRef) -> u32 {
        let expires_unix = self.store.as_ref().map_or(0, |st| st.message_expiry(msg));
        self.deadline_from_unix(expires_unix)
    }

    /// Log bytes of a stored body, as counted against the queue bounds (at least 1, so it is always counted).
    pub(super) fn stored_len(&self, msg_id: u64) -> u32 {
        let len = self
            .store
            .as_ref()
            .and_then(|st| st.message_len(MsgRef(msg_id)));
        len.unwrap_or(0).max(1)
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
                    let (mut plain, mut share) = (false, None);
                    for sub in &s.subs {
                        let shared = crate::codec::topic::parse_shared(&sub.filter)
                            .ok()
                            .flatten();
                        let filter = shared.map_or(&*sub.filter, |(_, f)| f);
                        if topic_matches(filter, &m.topic) {
                            granted =
                                Some(granted.map_or(sub.options.qos, |g| g.max(sub.options.qos)));
                            sub_ids.extend(sub.sub_id);
                            match shared {
                                Some(_) if share.is_none() => share = Some(sub.filter.clone()),
                                Some(_) => {}
                                None => plain = true,
                            }
                        }
                    }
                    q.qos = m.qos.min(granted.unwrap_or(m.qos));
                    q.retain = m.retain;
                    q.sub_ids = sub_ids;
                    q.restored = false;
                    // Only a shared subscription wanted it: it is still the group's, given to another member
                    // if this one goes (or stays) away.
                    if !plain {
                        q.shared = share.map(Box::new);
                    }
                }
                q.msg = Some(Rc::new(m));
                true
            }
            Err(e) => {
                self.stats.persist_errors += 1;
                self.stats.dropped_offline += 1;
                tracing::error!(msg_id = q.msg_id, error = %e, "stored message unreadable; dropped");
                self.persist_ack(sidx, q.msg_id);
                self.unaccount(sidx, q);
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
                        if let Some(w) = rs.pending_will {
                            self.restore_will(None, w);
                        }
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
            session.inbound_qos2 = rs.inbound_qos2.iter().copied().collect();
            let sidx = self.new_session(session);
            self.schedule_expiry(sidx);
            if let Some(w) = rs.pending_will {
                self.restore_will(Some(sidx), w);
            }
            let subs = self.session(sidx).subs.clone();
            for sub in &subs {
                if sub.filter.starts_with(crate::codec::topic::SHARE_PREFIX) {
                    self.shared_subscribe(sidx, &sub.filter, sub.options, sub.sub_id);
                    continue;
                }
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
                let deadline = self.stored_deadline(qm.msg);
                if qm.delivery.is_none() && super::expiry::left(deadline, self.now) == Some(0) {
                    // Expired while the broker was down, never sent: dropped, counted, acknowledged away in the
                    // log (one already in flight is resent: its delivery had started [MQTT-3.3.2-5]).
                    self.stats.expired += 1;
                    self.persist_ack(sidx, qm.msg.0);
                    continue;
                }
                let mut q = Queued {
                    msg: None,
                    msg_id: qm.msg.0,
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    restored: true,
                    log_pending: false,
                    sub_ids: Vec::new(),
                    log_bytes: self.stored_len(qm.msg.0),
                    deadline,
                    shared: None,
                };
                let bytes = q.log_bytes;
                self.account(sidx, bytes);
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
                            deferred: false,
                        });
                    }
                    None => self.session_mut(sidx).queue.push_back(q),
                }
            }
            self.session_mut(sidx).resume_packet_ids();
            let s = self.session(sidx);
            if s.backlog() > 0
                && s.subs
                    .iter()
                    .any(|x| x.filter.starts_with(crate::codec::topic::SHARE_PREFIX))
            {
                self.shared_restored.push(sidx);
            }
        }
        for client_id in expired {
            let rec = Record::SessionDelete {
                client_id: &client_id,
            };
            log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
        }
        let mut expired_retained = Vec::new();
        for (topic, msg) in state.retained {
            match self.read_body(msg) {
                Ok(m)
                    if super::expiry::remaining(m.expiry_interval(), m.received_at, self.now)
                        == Some(0) =>
                {
                    self.stats.expired += 1;
                    expired_retained.push(m);
                }
                Ok(m) => self.store_retained(Rc::new(m)),
                Err(e) => {
                    self.stats.persist_errors += 1;
                    tracing::error!(%topic, error = %e, "stored retained message unreadable; skipped");
                }
            }
        }
        self.restoring = false;
        for m in expired_retained {
            let clear = Message {
                payload: bytes::Bytes::new(),
                properties: None,
                ..m
            };
            self.persist_retained(&clear, true);
        }
        let mut filters = Vec::new();
        self.subs.for_each(|f, v| {
            if !v.is_empty() {
                filters.push(ByteString::from(f));
            }
        });
        filters.extend(self.shared_names());
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
            if f.starts_with(crate::codec::topic::SHARE_PREFIX) {
                self.add_peer_shared(peer, f);
                continue;
            }
            *self.interest.get_or_insert_with(f, || 0) |= 1u64 << peer;
        }
    }
}
