//! Connection and session lifecycle: DISCONNECT, close, wills, protocol errors, session create/destroy, expiry.

use super::*;

impl Shard {
    pub(super) fn on_disconnect(&mut self, key: ConnKey, sidx: u32, d: Disconnect) -> ReadOutcome {
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

    /// Close a connection: detach it from its session (publishing the will when `abnormal`), queue the socket
    /// for closing. With `reason`, a v5 client is told why first.
    pub(super) fn close(&mut self, key: ConnKey, abnormal: bool, reason: Option<ReasonCode>) {
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
                self.drop_held_output(key);
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
                self.will_on_close(sidx, w);
            }
        }
        let now = self.now;
        let s = self.session_mut(sidx);
        s.conn = None;
        s.offline_since = now;
        // Offline sessions do not hold publishers back.
        self.release_waiters(sidx);
        self.redispatch_shared(sidx);
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

    pub(super) fn publish_will(&mut self, w: codec::Will) {
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
            received_at: self.now,
        });
    }

    pub(super) fn close_with(
        &mut self,
        key: ConnKey,
        reason: ReasonCode,
        why: &'static str,
    ) -> ReadOutcome {
        self.stats.protocol_errors += 1;
        tracing::debug!(
            shard = self.cfg.shard_id,
            ?reason,
            why,
            "closing connection"
        );
        // The reason string goes only to v5 clients that did not turn problem information off [MQTT-3.1.2-29].
        let explain = self
            .conns
            .get(key)
            .filter(|c| c.reason_strings && !c.closing)
            .is_some();
        if explain {
            self.drop_held_output(key);
            let properties = Some(Box::new(Properties {
                reason_string: Some(ByteString::from_static(why)),
                ..Properties::default()
            }));
            self.send_raw(
                key,
                &Packet::Disconnect(Disconnect { reason, properties }),
                ProtocolVersion::V5,
            );
            self.close(key, true, None);
        } else {
            self.close(key, true, Some(reason));
        }
        ReadOutcome::Close
    }

    /// A closing connection's output held for the log (acknowledgements not yet durable) is dropped, so the
    /// DISCONNECT written next is not stuck behind it: only bytes before the first hold are sent at close anyway,
    /// and the client resends what it has no acknowledgement for.
    fn drop_held_output(&mut self, key: ConnKey) {
        if !self.dur.is_held(key) {
            return;
        }
        if let Some(conn) = self.conns.get_mut(key) {
            let keep = self.dur.writable(key, conn.out_len());
            if let Some(out) = conn.out.as_mut() {
                out.truncate(keep);
            }
        }
        self.dur.forget(key);
    }

    pub(super) fn protocol_error(&mut self, key: ConnKey, why: &'static str) -> ReadOutcome {
        self.close_with(key, ReasonCode::ProtocolError, why)
    }

    pub(super) fn decode_error(&mut self, key: ConnKey, e: &DecodeError) {
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

    pub(super) fn new_session(&mut self, s: Session) -> u32 {
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

    pub(super) fn destroy_session(&mut self, sidx: u32) {
        self.fire_pending_will(sidx);
        self.unschedule_expiry(sidx);
        self.set_session_acl(sidx, None);
        self.release_waiters(sidx);
        self.forget_handovers(sidx);
        let s = self.sessions[sidx as usize].take().expect("live session");
        self.stats.queued_log_bytes = self
            .stats
            .queued_log_bytes
            .saturating_sub(s.log_bytes as u64);
        self.delete_persisted(&s);
        self.by_client.remove(&s.client_id, sidx);
        self.free_sessions.push(sidx);
        let mut gone = Vec::new();
        for sub in &s.subs {
            if self.remove_subscriber(&sub.filter, sidx) {
                gone.push(sub.filter.clone());
            }
            self.shared_unsubscribe(sidx, &sub.filter);
        }
        self.broadcast_interest_removed(gone);
    }

    /// When an offline session with an expiry ends (shard second), if it is offline with one.
    pub(super) fn expiry_deadline(&self, sidx: u32) -> Option<u64> {
        let s = self.sessions.get(sidx as usize)?.as_ref()?;
        match (s.conn, s.expiry) {
            (None, Some(e)) => Some(s.offline_since as u64 + e as u64),
            _ => None,
        }
    }

    /// An offline session with an expiry goes into the expiry index (ordered by deadline), so expiring sessions
    /// costs per expiring session, not a scan of every session (a million of them would stall the shard).
    pub(super) fn schedule_expiry(&mut self, sidx: u32) {
        if let Some(d) = self.expiry_deadline(sidx) {
            self.expiring.insert((d, sidx));
        }
    }

    /// Call before the session comes online, changes its expiry or is destroyed.
    pub(super) fn unschedule_expiry(&mut self, sidx: u32) {
        if let Some(d) = self.expiry_deadline(sidx) {
            self.expiring.remove(&(d, sidx));
        }
    }

    pub(super) fn expire_sessions(&mut self) {
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
}
