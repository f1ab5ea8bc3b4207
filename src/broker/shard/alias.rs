//! v5 topic aliases, both directions, per connection (they reset on reconnect [MQTT-3.3.2-7]).
//!
//! Inbound: we announce Topic Alias Maximum = `ShardConfig::topic_alias_maximum`; a PUBLISH with a topic and an
//! alias sets the mapping, one with an empty topic uses it.
//!
//! Outbound: the client's Topic Alias Maximum, capped by the same config value, bounds how many aliases we
//! allocate. Policy: the first N distinct topics sent on the connection get an alias for the connection's life,
//! never replaced. That costs nothing per message beyond one map look-up, never re-sends a topic to move an
//! alias, and suits the common device case (a few topics published over and over); topics past the first N go
//! out in full. Resends after a reconnect (`replay_inflight`) are built without aliases, so they carry the full
//! topic on the new connection.

use std::collections::HashMap;

use super::*;

#[derive(Debug, Default)]
pub(super) struct Aliases {
    /// Inbound: alias - 1 -> topic, at most our announced maximum entries.
    inbound: Vec<Option<ByteString>>,
    /// Outbound: topic -> alias we assigned.
    outbound: HashMap<ByteString, u16>,
    /// How many outbound aliases we may assign: min(client's maximum, config cap).
    out_max: u16,
}

impl Aliases {
    pub(super) fn new(out_max: u16) -> Self {
        Aliases {
            out_max,
            ..Aliases::default()
        }
    }
}

impl Shard {
    /// Resolve the topic of an inbound PUBLISH that carries a Topic Alias, recording a new mapping. Err is the
    /// reason to close the connection with.
    pub(super) fn inbound_alias(
        &mut self,
        key: ConnKey,
        alias: u16,
        topic: &ByteString,
    ) -> Result<ByteString, (ReasonCode, &'static str)> {
        let max = self.cfg.topic_alias_maximum;
        if alias == 0 || alias > max {
            // [MQTT-3.3.2-9], [MQTT-3.3.2-10]
            return Err((
                ReasonCode::TopicAliasInvalid,
                "topic alias above the maximum",
            ));
        }
        let a = self.aliases.entry(key).or_default();
        let slot = alias as usize - 1;
        if a.inbound.len() <= slot {
            a.inbound.resize(slot + 1, None);
        }
        if topic.is_empty() {
            a.inbound[slot]
                .clone()
                .ok_or((ReasonCode::ProtocolError, "unknown topic alias"))
        } else {
            // An exact-size copy: the decoded topic is a slice of the shared read buffer.
            let owned = ByteString::from(&**topic);
            a.inbound[slot] = Some(owned.clone());
            Ok(owned)
        }
    }

    /// Replace an outbound PUBLISH's topic by its alias, or assign one while there is room. Returns whether a
    /// new alias was assigned (so a failed send can take it back with `forget_alias`).
    pub(super) fn outbound_alias(&mut self, key: ConnKey, publish: &mut Publish) -> bool {
        let Some(a) = self.aliases.get_mut(&key) else {
            return false;
        };
        if let Some(&alias) = a.outbound.get(&publish.topic) {
            publish
                .properties
                .get_or_insert_with(Box::default)
                .topic_alias = Some(alias);
            publish.topic = ByteString::new();
            return false;
        }
        if a.outbound.len() >= a.out_max as usize {
            return false;
        }
        let alias = a.outbound.len() as u16 + 1;
        a.outbound.insert(publish.topic.clone(), alias);
        publish
            .properties
            .get_or_insert_with(Box::default)
            .topic_alias = Some(alias);
        true
    }

    /// A PUBLISH that assigned an alias was not sent after all: the client never learned it.
    pub(super) fn forget_alias(&mut self, key: ConnKey, topic: &ByteString) {
        if let Some(a) = self.aliases.get_mut(&key) {
            a.outbound.remove(topic);
        }
    }

    /// At CONNECT: outbound aliases for a v5 client that accepts them.
    pub(super) fn setup_aliases(&mut self, key: ConnKey, client_max: u16) {
        let out_max = client_max.min(self.cfg.topic_alias_maximum);
        if out_max > 0 {
            self.aliases.insert(key, Aliases::new(out_max));
        } else {
            self.aliases.remove(&key);
        }
    }
}
