//! The routed message: what a PUBLISH becomes once the broker owns it.

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::{Props, QoS};

/// Where a message came from, so backpressure can pause the right publisher and v5 `no_local` can skip it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub shard: u16,
    pub conn: ConnKey,
    /// The PUBLISH's packet id (0 for QoS 0): a peer shard that refuses the message names it in `LogRefused`,
    /// so the publisher's shard refuses exactly that acknowledgement.
    pub packet_id: u16,
}

/// A connection slot on a shard plus a generation, so a stale key never reaches a reused slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ConnKey {
    pub idx: u32,
    pub gen: u32,
}

/// A message as routed between sessions and shards. Topic and payload are exact-size copies (not slices of a
/// socket read buffer) so a queued message never pins a large read chunk.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    /// The RETAIN flag as published (v5 `retain_as_published` forwards it).
    pub retain: bool,
    /// v5 PUBLISH properties to forward (topic alias and subscription identifiers already stripped).
    pub properties: Props,
    /// `None` for wills and messages restored from storage.
    pub origin: Option<Origin>,
    /// Shard second this shard received it (restamped on arrival from a peer; 0 for bodies restored at start):
    /// v5 message expiry counts from here.
    pub received_at: u32,
}

impl Message {
    /// v5 Message Expiry Interval as published, if any.
    pub fn expiry_interval(&self) -> Option<u32> {
        self.properties.as_ref()?.message_expiry_interval
    }
}
