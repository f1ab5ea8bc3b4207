//! Output: framing packets into connection buffers, acks, building outbound PUBLISHes.

use super::*;

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
