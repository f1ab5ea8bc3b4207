//! Inbound PUBLISH: acks to publishers, routing to local and remote subscribers, the retained store.

use super::*;

impl Shard {
    pub(super) fn on_publish(&mut self, key: ConnKey, sidx: u32, mut p: Publish) -> ReadOutcome {
        self.stats.publishes_in += 1;

        if let Some(alias) = p.properties.as_ref().and_then(|pr| pr.topic_alias) {
            match self.inbound_alias(key, alias, &p.topic) {
                Ok(topic) => p.topic = topic,
                Err((reason, why)) => return self.close_with(key, reason, why),
            }
        }
        if p.qos == QoS::AtLeastOnce && self.over_receive_maximum(key, sidx, 1) {
            return self.close_with(
                key,
                ReasonCode::ReceiveMaximumExceeded,
                "more unacknowledged QoS 1/2 publishes than the Receive Maximum",
            );
        }
        if !self.may_publish(sidx, &p.topic) {
            return self.deny_publish(key, sidx, p.qos, p.packet_id);
        }
        if is_sys_topic(&p.topic) {
            return self.deny_sys_publish(key, sidx, &p);
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
            if first && self.over_receive_maximum(key, sidx, 0) {
                return self.close_with(
                    key,
                    ReasonCode::ReceiveMaximumExceeded,
                    "more unacknowledged QoS 1/2 publishes than the Receive Maximum",
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
            // Aliases are per connection: subscribers get the topic (or their own alias).
            owned.topic_alias = None;
            Box::new(owned)
        });
        let msg = Message {
            // Exact-size copies, so a kept message does not pin the read buffer: small PUBLISHes are decoded as
            // such already (`codec::OWNED_PUBLISH_MAX`), other slices still point into the shared read buffer.
            topic: owned_topic(p.topic),
            payload: owned_bytes(p.payload),
            qos: p.qos,
            retain: p.retain,
            properties,
            origin: Some(Origin {
                shard: self.cfg.shard_id,
                conn: key,
                packet_id: p.packet_id,
            }),
            received_at: self.now,
        };
        let packet_id = p.packet_id;
        let qos = p.qos;
        let failures = self.refusals();
        self.route(msg);
        if qos != QoS::AtMostOnce && self.refusals() != failures {
            // Part of it did not reach the log, or a full session refused it: it may be delivered to others, but
            // it must not be acknowledged as safe.
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

    /// The client has more QoS 1/2 publishes unacknowledged than the Receive Maximum we announced
    /// (`max_inbound_qos2`), counting `extra` more: QoS 2 awaiting PUBREL, and (v5) PUBACKs/PUBCOMPs still held
    /// back until what they vouch for is durable. A 3.1.1 client was told no limit: only its QoS 2 is bounded.
    fn over_receive_maximum(&self, key: ConnKey, sidx: u32, extra: usize) -> bool {
        let s = self.session(sidx);
        let held = if s.protocol == ProtocolVersion::V5 {
            self.dur.held_acks(key)
        } else {
            0
        };
        s.inbound_qos2.len() + held + extra > self.cfg.max_inbound_qos2 as usize
    }

    /// The log cannot take a QoS>0 publish (disk full, budget used up, sync failed): refuse it rather than
    /// acknowledge what would not survive. v5 gets Quota exceeded in the PUBACK/PUBREC; 3.1.1 has no negative
    /// acknowledgement, so the connection is closed and the client retries after reconnecting.
    pub(super) fn refuse_publish(
        &mut self,
        key: ConnKey,
        sidx: u32,
        qos: QoS,
        packet_id: u16,
    ) -> ReadOutcome {
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
    pub(super) fn send_pub_resp(
        &mut self,
        key: ConnKey,
        qos: QoS,
        packet_id: u16,
        reason: ReasonCode,
    ) {
        if qos == QoS::AtLeastOnce {
            self.send_resp(key, Packet::PubAck, packet_id, reason);
            self.dur.note_ack(key);
        } else {
            self.send_resp(key, Packet::PubRec, packet_id, reason);
        }
    }

    /// A message accepted from a publisher (or a will): retain, deliver locally, forward to interested shards.
    pub(super) fn route(&mut self, msg: Message) {
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
        self.route_shared(&msg);
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
    pub(super) fn peer_seq(&mut self, peer: u16, msg: &Message) -> u64 {
        if self.store.is_some() && msg.qos != QoS::AtMostOnce && msg.origin.is_some() {
            self.dur.next_seq(peer)
        } else {
            0
        }
    }

    pub(super) fn store_retained(&mut self, msg: Rc<Message>) {
        if msg.payload.is_empty() {
            if let Some(old) = self.retained.remove(&msg.topic) {
                self.retained_bytes -= old.payload.len() + old.topic.len();
                if is_sys_topic(&msg.topic) {
                    self.sys_retained.0 -= 1;
                    self.sys_retained.1 -= old.payload.len() + old.topic.len();
                }
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
        // The broker's own `$SYS` topics are a fixed, small set: they never take the clients' retained budget.
        if is_sys_topic(&msg.topic) {
            self.sys_retained.0 += usize::from(new_topic);
            self.sys_retained.1 = self.sys_retained.1 - old_size.unwrap_or(0) + size;
        } else if (new_topic
            && self.retained.len() - self.sys_retained.0 >= self.cfg.max_retained_messages)
            || self.retained_bytes - self.sys_retained.1 - old_size.unwrap_or(0) + size
                > self.cfg.max_retained_bytes
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

    pub(super) fn deliver_local(&mut self, msg: &Rc<Message>) {
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
            if !self.may_read(sidx, &msg.topic) {
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

    pub(super) fn is_own_message(&self, sidx: u32, msg: &Message) -> bool {
        match (msg.origin, self.session(sidx).conn) {
            (Some(o), Some(c)) => o.shard == self.cfg.shard_id && o.conn == c,
            _ => false,
        }
    }

    /// A PUBLISH the client may not write. v5: PUBACK/PUBREC 0x87. 3.1.1 has no refusal: the message is dropped
    /// and the QoS 1/2 flow completes as if it had been accepted (mosquitto does the same), so the client does not
    /// resend it forever.
    pub(super) fn deny_publish(
        &mut self,
        key: ConnKey,
        sidx: u32,
        qos: QoS,
        packet_id: u16,
    ) -> ReadOutcome {
        if qos == QoS::AtMostOnce {
            return ReadOutcome::Continue;
        }
        let reason = if self.session(sidx).protocol == ProtocolVersion::V5 {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::Success
        };
        self.send_pub_resp(key, qos, packet_id, reason);
        ReadOutcome::Continue
    }
}

/// `b` itself if it owns its allocation alone, else an exact-size copy.
fn owned_bytes(b: bytes::Bytes) -> bytes::Bytes {
    if b.is_unique() {
        b
    } else {
        bytes::Bytes::copy_from_slice(&b)
    }
}

fn owned_topic(t: ByteString) -> ByteString {
    let b = owned_bytes(t.into_bytes());
    // SAFETY: the same bytes as the ByteString they came from (or a copy of them): valid UTF-8.
    unsafe { ByteString::from_bytes_unchecked(b) }
}
