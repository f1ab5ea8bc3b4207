//! Reading the live state back: message bodies out of the mapping, snapshots, and releasing read pages.

use bytes::Bytes;

use super::index::{MsgRef, State};
use super::record::{decode_body, read_frame, Frame};
use super::{Record, Store, StoreError, StoreResult};

/// A message body read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub msg_id: u64,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
    pub properties: Bytes,
    /// Unix second its Message Expiry Interval ends (0 = never).
    pub expires_unix: u64,
}

impl Store {
    /// Unix second a live stored message expires at (0 = never), without reading its body.
    pub fn message_expiry(&self, msg: MsgRef) -> u64 {
        self.index.message_expiry(msg.0)
    }

    /// Bytes of a message body's record in the log (None if the log holds no such body).
    pub fn message_len(&self, msg: MsgRef) -> Option<u32> {
        self.index.message_loc(msg.0).map(|l| l.len)
    }

    /// Reads a message body back from the log (the payload is copied out of the mapping).
    pub fn read_message(&self, msg: MsgRef) -> StoreResult<StoredMessage> {
        let unreadable = |reason: &str| StoreError::Unreadable {
            msg_id: msg.0,
            reason: reason.into(),
        };
        let loc = self
            .index
            .message_loc(msg.0)
            .ok_or_else(|| unreadable("no such live message"))?;
        let seg = self
            .segments
            .get(&loc.seg)
            .ok_or_else(|| unreadable("segment missing"))?;
        let bytes = seg.bytes();
        match read_frame(&bytes[loc.off as usize..], self.max_body()) {
            Frame::Valid { kind, body, .. } => match decode_body(kind, body) {
                Ok(Record::Message {
                    msg_id,
                    topic,
                    qos,
                    retain,
                    payload,
                    properties,
                    expires_unix,
                }) if msg_id == msg.0 => Ok(StoredMessage {
                    msg_id,
                    topic: topic.to_string(),
                    qos,
                    retain,
                    payload: Bytes::copy_from_slice(payload),
                    properties: Bytes::copy_from_slice(properties),
                    expires_unix,
                }),
                _ => Err(unreadable("record is not this message")),
            },
            _ => Err(unreadable("record damaged")),
        }
    }

    /// The current live state (what a recovery right now would rebuild from committed data plus the open group).
    pub fn snapshot(&self) -> State {
        self.index.snapshot()
    }
    /// Drops the mapped pages of all written data from RSS (pages touched by `read_message` or compaction stay
    /// mapped otherwise). Cheap (one madvise per segment); call it periodically, e.g. once a second.
    pub fn release_cached_pages(&self) {
        for (_, s) in self.segments.range(..self.head) {
            s.release_pages(0, s.size());
        }
        // The head: only whole pages below the write position (the writer only touches bytes at or after it).
        let head = self.head_seg();
        head.release_pages(0, head.used);
    }
}
