//! Output: framing packets into connection buffers, acks, building outbound PUBLISHes.

use super::*;
use crate::broker::session::NO_DEADLINE;
use crate::codec::PublishRef;

impl Shard {
    /// PUBREL/PUBCOMP answering a known packet id, or reporting it unknown (v5 reason 0x92).
    pub(super) fn send_ack(
        &mut self,
        key: ConnKey,
        make: fn(PubResp) -> Packet,
        packet_id: u16,
        known: bool,
    ) {
        let reason = if known {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.send_resp(key, make, packet_id, reason);
    }

    /// One PUBACK/PUBREC/PUBREL/PUBCOMP without properties.
    pub(super) fn send_resp(
        &mut self,
        key: ConnKey,
        make: fn(PubResp) -> Packet,
        packet_id: u16,
        reason: ReasonCode,
    ) {
        self.send(
            key,
            &make(PubResp {
                packet_id,
                reason,
                properties: None,
            }),
        );
    }

    pub(super) fn send(&mut self, key: ConnKey, packet: &Packet) {
        let version = match self.conns.get(key) {
            Some(c) if c.session != NO_SESSION => self.session(c.session).protocol,
            Some(c) => c.decoder.version().unwrap_or(ProtocolVersion::V3_1_1),
            None => return,
        };
        self.send_raw(key, packet, version);
    }

    pub(super) fn send_raw(&mut self, key: ConnKey, packet: &Packet, version: ProtocolVersion) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Err(e) = codec::encode(packet, version, conn.out_mut()) {
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
pub(super) fn build_publish(
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

impl Shard {
    /// Encode a queued message into its connection's output as a new PUBLISH with `packet_id`, after its log
    /// record (a QoS 2 one is held until that is durable). False = not written: too large for the client, or its
    /// body is gone; the entry is done with (`persist_done`) where it had a log entry.
    pub(super) fn write_queued(
        &mut self,
        sidx: u32,
        key: ConnKey,
        q: &mut Queued,
        packet_id: u16,
        version: ProtocolVersion,
        client_max_packet: u32,
    ) -> bool {
        let v5 = version == ProtocolVersion::V5;
        // The common case goes out as it is stored, borrowed: no per-subscriber rewrite of the properties
        // (subscription ids, remaining expiry, a topic alias) and no clone of topic or payload.
        if !v5
            || (q.sub_ids.is_empty()
                && q.deadline == NO_DEADLINE
                && !self.aliases.contains_key(&key))
        {
            let Some(msg) = q.msg.clone() else {
                return false;
            };
            let view = PublishRef {
                dup: false,
                qos: q.qos,
                retain: q.retain,
                topic: &msg.topic,
                packet_id,
                properties: if v5 { msg.properties.as_deref() } else { None },
                payload: &msg.payload,
            };
            if client_max_packet > 0
                && codec::publish_len(&view, version) > client_max_packet as usize
            {
                // [MQTT-3.1.2-25]: a packet over the client's maximum is discarded as if delivered.
                self.stats.dropped_too_large += 1;
                self.persist_done(sidx, q);
                return false;
            }
            self.log_sent(sidx, key, q, packet_id);
            let conn = self
                .conns
                .get_mut(key)
                .expect("connection of a pumped session");
            if codec::encode_publish_ref(&view, version, 0, conn.out_mut()).is_err() {
                self.stats.dropped_too_large += 1;
                self.persist_done(sidx, q);
                return false;
            }
            return true;
        }
        let Some(mut publish) = build_publish(q, packet_id, false, version) else {
            return false;
        };
        self.set_remaining_expiry(q, &mut publish);
        if client_max_packet > 0
            && codec::publish_len(&publish.as_ref(), version) > client_max_packet as usize
        {
            self.stats.dropped_too_large += 1;
            self.persist_done(sidx, q);
            return false;
        }
        let new_alias = self.outbound_alias(key, &mut publish);
        self.log_sent(sidx, key, q, packet_id);
        let conn = self
            .conns
            .get_mut(key)
            .expect("connection of a pumped session");
        if codec::encode_publish(&publish, version, conn.out_mut()).is_err() {
            if new_alias {
                let topic = q.msg.as_ref().map(|m| m.topic.clone()).unwrap_or_default();
                self.forget_alias(key, &topic);
            }
            self.stats.dropped_too_large += 1;
            self.persist_done(sidx, q);
            return false;
        }
        true
    }

    /// The log record of a message about to be sent with `packet_id`; a QoS 2 PUBLISH leaves only once its
    /// packet id is durable: after a restart it is resent with the same id, so the client can tell it is the
    /// same message.
    fn log_sent(&mut self, sidx: u32, key: ConnKey, q: &mut Queued, packet_id: u16) {
        let persisted =
            q.msg_id != 0 && q.qos != QoS::AtMostOnce && self.persist_sent(sidx, q, packet_id);
        if persisted && q.qos == QoS::ExactlyOnce {
            self.hold_output(key, true);
        }
    }
}

/// A deep copy of v5 properties whose strings and binary data own their bytes.
pub(super) fn owned_properties(p: &Properties) -> Properties {
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
