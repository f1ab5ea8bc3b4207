//! `$SYS` topics: the broker publishes them (`inject_sys`, no client, no ACL); clients may not.

use super::*;

/// `$SYS` itself or anything under it.
pub(super) fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

impl Shard {
    /// Publish a retained QoS 0 message as the broker: stored in every shard's retained store (not in the log)
    /// and delivered to matching subscribers. Only `$SYS` topics are accepted.
    pub fn inject_sys(&mut self, topic: &str, payload: &str) {
        debug_assert!(
            is_sys_topic(topic),
            "inject_sys is for $SYS topics: {topic}"
        );
        if !is_sys_topic(topic) {
            return;
        }
        self.route(Message {
            topic: ByteString::from(topic),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: None,
            origin: None,
            received_at: self.now,
        });
    }

    /// A client PUBLISH to `$SYS`: refused like a publish the client is not authorized for. v5 gets reason 0x87
    /// in the PUBACK/PUBREC; 3.1.1 has no negative acknowledgement, so it is acknowledged and dropped (as
    /// mosquitto does), and QoS 0 is dropped.
    pub(super) fn deny_sys_publish(&mut self, key: ConnKey, sidx: u32, p: &Publish) -> ReadOutcome {
        self.stats.publishes_denied += 1;
        tracing::debug!(shard = self.cfg.shard_id, topic = %&*p.topic, "client publish to $SYS refused");
        if p.qos != QoS::AtMostOnce {
            let reason = if self.session(sidx).protocol == ProtocolVersion::V5 {
                ReasonCode::NotAuthorized
            } else {
                ReasonCode::Success
            };
            self.send_pub_resp(key, p.qos, p.packet_id, reason);
        }
        ReadOutcome::Continue
    }
}
