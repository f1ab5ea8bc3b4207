//! Record kinds and their on-disk framing.
//!
//! Frame: `[len u32 LE][crc32c u32 LE][type u8][body]`, padded with zeros to a multiple of 8 bytes. `len` counts
//! `type + body`; the CRC covers the `len` bytes, the type and the body, so a damaged length is caught too. A
//! zero `len` marks the end of written data (segments are preallocated with zeros). The 8-byte alignment lets
//! recovery resynchronise after a damaged record by probing aligned offsets only.
//!
//! Body fields are little-endian; strings are `u16` length + UTF-8 bytes (MQTT's own limit), payloads and
//! properties are `u32` length + bytes.

mod decode;
mod encode;

pub(crate) use decode::decode_body;
pub(crate) use encode::encode_frame;

/// Bytes before the record type: length and CRC.
pub const FRAME_HEADER: usize = 8;
/// Records start at offsets that are multiples of this.
pub const ALIGN: usize = 8;

/// Outbound delivery state of a queued message (MQTT 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    PublishSent = 1,
    /// PUBREC received and PUBREL sent, waiting for PUBCOMP (QoS 2).
    PubRelSent = 2,
}

impl DeliveryState {
    fn from_u8(v: u8) -> Option<DeliveryState> {
        match v {
            1 => Some(DeliveryState::PublishSent),
            2 => Some(DeliveryState::PubRelSent),
            _ => None,
        }
    }
}

/// One logical change to the persistent state of a shard. Borrowed, so appending never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// Create or update a persistent session. `disconnected_at` is unix seconds (0 = connected) so expiry can be
    /// computed after a restart.
    SessionUpsert {
        client_id: &'a str,
        protocol_level: u8,
        expiry_secs: u32,
        clean: bool,
        disconnected_at: u64,
    },
    /// Remove a session with its subscriptions, queue and inbound QoS 2 state.
    SessionDelete {
        client_id: &'a str,
    },
    /// Add or replace a subscription. `subscription_id` 0 means none (v5 identifiers are >= 1).
    SubAdd {
        client_id: &'a str,
        filter: &'a str,
        options: u8,
        subscription_id: u32,
    },
    SubRemove {
        client_id: &'a str,
        filter: &'a str,
    },
    /// A message body, written once per shard and referenced by id from any number of enqueues.
    Message {
        msg_id: u64,
        topic: &'a str,
        qos: u8,
        retain: bool,
        payload: &'a [u8],
        /// Opaque encoded v5 PUBLISH properties (empty for v3).
        properties: &'a [u8],
        /// Unix second its v5 Message Expiry Interval ends (0 = never), so a restart does not start the interval
        /// over. Stored as kind `MESSAGE_EXPIRING` (the `MESSAGE` body plus this field) when set; a plain `MESSAGE`
        /// record, as written before this field existed, decodes with 0.
        expires_unix: u64,
    },
    /// Append message `msg_id` to the session's queue. Queues are ordered by message id, so `msg_id` must be
    /// above the newest id already queued for the session (true for bodies stored in arrival order); to queue
    /// an older body, e.g. a retained message sent on subscribe, store it again under a fresh id.
    ///
    /// `packet_id` 0: queued, not sent yet. Otherwise the PUBLISH already left with this packet id, as if a
    /// `Delivery { state: PublishSent }` followed (one record instead of two for a message queued and sent in the
    /// same round, the common case for an online subscriber). A `Delivery` already known for the message wins
    /// over it during replay (a relocated copy of this record can follow a newer `Delivery`).
    Enqueue {
        client_id: &'a str,
        msg_id: u64,
        packet_id: u16,
    },
    /// Record the outbound delivery state of a queued message.
    Delivery {
        client_id: &'a str,
        msg_id: u64,
        packet_id: u16,
        state: DeliveryState,
    },
    /// Remove the message from the session's queue (PUBACK / PUBCOMP received, or dropped by policy).
    Ack {
        client_id: &'a str,
        msg_id: u64,
    },
    /// Inbound QoS 2 PUBLISH received (PUBREC sent); a duplicate with this packet id must not be delivered again.
    Qos2InPending {
        client_id: &'a str,
        packet_id: u16,
    },
    /// PUBREL received for an inbound QoS 2 packet id.
    Qos2InReleased {
        client_id: &'a str,
        packet_id: u16,
    },
    /// The retained message of `topic` is now message `msg_id`.
    RetainedSet {
        topic: &'a str,
        msg_id: u64,
    },
    RetainedClear {
        topic: &'a str,
    },
    /// A v5 will waiting for its Will Delay Interval (due at unix second `due_unix`), kept across a restart.
    /// Self-contained: the will is small and has no other reference. Replaces the session's previous one.
    WillPending {
        client_id: &'a str,
        due_unix: u64,
        topic: &'a str,
        qos: u8,
        retain: bool,
        payload: &'a [u8],
        /// Opaque encoded PUBLISH properties the will goes out with.
        properties: &'a [u8],
    },
    /// The session's pending will was published or cancelled.
    WillCleared {
        client_id: &'a str,
    },
    /// Group boundary written by `Store::commit`; recovery applies only complete groups.
    Commit {
        group: u64,
    },
}

pub(crate) mod kind {
    pub const SESSION_UPSERT: u8 = 1;
    pub const SESSION_DELETE: u8 = 2;
    pub const SUB_ADD: u8 = 3;
    pub const SUB_REMOVE: u8 = 4;
    pub const MESSAGE: u8 = 5;
    pub const ENQUEUE: u8 = 6;
    pub const DELIVERY: u8 = 7;
    pub const ACK: u8 = 8;
    pub const QOS2_IN_PENDING: u8 = 9;
    pub const QOS2_IN_RELEASED: u8 = 10;
    pub const RETAINED_SET: u8 = 11;
    pub const RETAINED_CLEAR: u8 = 12;
    pub const COMMIT: u8 = 13;
    pub const WILL_PENDING: u8 = 14;
    pub const WILL_CLEARED: u8 = 15;
    pub const MESSAGE_EXPIRING: u8 = 16;
}

/// Why a body failed to decode (only possible with a CRC collision or a format bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    Truncated,
    TrailingBytes,
    BadUtf8,
    BadValue,
    UnknownKind(u8),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Truncated => write!(f, "body truncated"),
            BodyError::TrailingBytes => write!(f, "trailing bytes after body"),
            BodyError::BadUtf8 => write!(f, "string is not UTF-8"),
            BodyError::BadValue => write!(f, "field out of range"),
            BodyError::UnknownKind(k) => write!(f, "unknown record kind {k}"),
        }
    }
}

impl<'a> Record<'a> {
    pub(crate) fn kind(&self) -> u8 {
        use kind::*;
        match self {
            Record::SessionUpsert { .. } => SESSION_UPSERT,
            Record::SessionDelete { .. } => SESSION_DELETE,
            Record::SubAdd { .. } => SUB_ADD,
            Record::SubRemove { .. } => SUB_REMOVE,
            Record::Message {
                expires_unix: 0, ..
            } => MESSAGE,
            Record::Message { .. } => MESSAGE_EXPIRING,
            Record::Enqueue { .. } => ENQUEUE,
            Record::Delivery { .. } => DELIVERY,
            Record::Ack { .. } => ACK,
            Record::Qos2InPending { .. } => QOS2_IN_PENDING,
            Record::Qos2InReleased { .. } => QOS2_IN_RELEASED,
            Record::RetainedSet { .. } => RETAINED_SET,
            Record::RetainedClear { .. } => RETAINED_CLEAR,
            Record::Commit { .. } => COMMIT,
            Record::WillPending { .. } => WILL_PENDING,
            Record::WillCleared { .. } => WILL_CLEARED,
        }
    }

    /// Length of the body alone (without frame header and type byte).
    pub(crate) fn body_len(&self) -> usize {
        let s = |v: &str| 2 + v.len();
        match self {
            Record::SessionUpsert { client_id, .. } => s(client_id) + 1 + 4 + 1 + 8,
            Record::SessionDelete { client_id } => s(client_id),
            Record::SubAdd {
                client_id, filter, ..
            } => s(client_id) + s(filter) + 1 + 4,
            Record::SubRemove { client_id, filter } => s(client_id) + s(filter),
            Record::Message {
                topic,
                payload,
                properties,
                expires_unix,
                ..
            } => {
                let deadline = if *expires_unix != 0 { 8 } else { 0 };
                8 + s(topic) + 1 + 1 + 4 + properties.len() + 4 + payload.len() + deadline
            }
            Record::Enqueue { client_id, .. } => s(client_id) + 8 + 2,
            Record::Delivery { client_id, .. } => s(client_id) + 8 + 2 + 1,
            Record::Ack { client_id, .. } => s(client_id) + 8,
            Record::Qos2InPending { client_id, .. } | Record::Qos2InReleased { client_id, .. } => {
                s(client_id) + 2
            }
            Record::RetainedSet { topic, .. } => s(topic) + 8,
            Record::RetainedClear { topic } => s(topic),
            Record::Commit { .. } => 8,
            Record::WillPending {
                client_id,
                topic,
                payload,
                properties,
                ..
            } => s(client_id) + 8 + s(topic) + 1 + 1 + 4 + properties.len() + 4 + payload.len(),
            Record::WillCleared { client_id } => s(client_id),
        }
    }

    /// Checks the field limits the encoding imposes (strings up to 65535 bytes, QoS 0..=2).
    pub(crate) fn validate(&self) -> Result<(), String> {
        let check = |name: &str, v: &str| {
            if v.len() > u16::MAX as usize {
                Err(format!("{name} longer than 65535 bytes"))
            } else {
                Ok(())
            }
        };
        match self {
            Record::SessionUpsert { client_id, .. }
            | Record::SessionDelete { client_id }
            | Record::Enqueue { client_id, .. }
            | Record::Delivery { client_id, .. }
            | Record::Ack { client_id, .. }
            | Record::Qos2InPending { client_id, .. }
            | Record::Qos2InReleased { client_id, .. }
            | Record::WillCleared { client_id } => check("client id", client_id),
            Record::WillPending {
                client_id,
                topic,
                qos,
                payload,
                properties,
                ..
            } => {
                check("client id", client_id)?;
                check("topic", topic)?;
                if *qos > 2 {
                    return Err(format!("qos {qos} out of range"));
                }
                if payload.len() > u32::MAX as usize || properties.len() > u32::MAX as usize {
                    return Err("payload too large".into());
                }
                Ok(())
            }
            Record::SubAdd {
                client_id, filter, ..
            }
            | Record::SubRemove { client_id, filter } => {
                check("client id", client_id)?;
                check("topic filter", filter)
            }
            Record::Message {
                topic,
                qos,
                payload,
                properties,
                ..
            } => {
                check("topic", topic)?;
                if *qos > 2 {
                    return Err(format!("qos {qos} out of range"));
                }
                if payload.len() > u32::MAX as usize || properties.len() > u32::MAX as usize {
                    return Err("payload too large".into());
                }
                Ok(())
            }
            Record::RetainedSet { topic, .. } | Record::RetainedClear { topic } => {
                check("topic", topic)
            }
            Record::Commit { .. } => Ok(()),
        }
    }
}

/// Total frame length (header + type + body + padding) for a body of `body_len` bytes.
pub(crate) fn framed_len(body_len: usize) -> usize {
    align_up(FRAME_HEADER + 1 + body_len)
}

pub(crate) fn align_up(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

fn frame_crc(len: u32, type_and_body: &[u8]) -> u32 {
    let c = crc32c::crc32c(&len.to_le_bytes());
    crc32c::crc32c_append(c, type_and_body)
}

/// Result of looking at the bytes at one offset.
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    /// A frame with a valid CRC; `total` includes padding.
    Valid {
        kind: u8,
        body: &'a [u8],
        total: usize,
    },
    /// Zero length: end of written data (or zeroed damage; the caller checks what follows).
    End,
    /// Damaged: bad length or CRC mismatch.
    Bad(&'static str),
}

/// Parses the frame at the start of `buf` (which extends to the end of the segment).
pub(crate) fn read_frame(buf: &[u8], max_len: usize) -> Frame<'_> {
    if buf.len() < FRAME_HEADER {
        return Frame::End;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if len == 0 {
        return Frame::End;
    }
    if len > max_len + 1 || FRAME_HEADER + len > buf.len() {
        return Frame::Bad("length out of range");
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let tb = &buf[FRAME_HEADER..FRAME_HEADER + len];
    if frame_crc(len as u32, tb) != crc {
        return Frame::Bad("crc mismatch");
    }
    Frame::Valid {
        kind: tb[0],
        body: &tb[1..],
        total: align_up(FRAME_HEADER + len).min(buf.len()),
    }
}

/// Type and body of a frame already validated by `read_frame` (no second CRC pass).
pub(crate) fn frame_body(frame: &[u8]) -> Option<(u8, &[u8])> {
    let len = u32::from_le_bytes(frame.get(0..4)?.try_into().ok()?) as usize;
    let tb = frame.get(FRAME_HEADER..FRAME_HEADER + len)?;
    Some((*tb.first()?, &tb[1..]))
}

#[cfg(test)]
mod tests;
