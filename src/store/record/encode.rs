//! Encoding a record as a frame.

use super::*;

struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    fn str(&mut self, v: &str) {
        self.u16(v.len() as u16);
        self.put(v.as_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.put(v);
    }
}

/// Encodes `rec` as a complete frame into `out`, which must be exactly `framed_len(rec.body_len())` bytes of
/// zeros. The length is written last, so a process
/// killed mid-copy leaves a zero length (clean end) rather than a half record with a valid-looking header.
pub(crate) fn encode_frame(rec: &Record<'_>, out: &mut [u8]) {
    let body_len = rec.body_len();
    let mut w = Writer {
        buf: out,
        pos: FRAME_HEADER,
    };
    w.u8(rec.kind());
    match *rec {
        Record::SessionUpsert {
            client_id,
            protocol_level,
            expiry_secs,
            clean,
            disconnected_at,
        } => {
            w.str(client_id);
            w.u8(protocol_level);
            w.u32(expiry_secs);
            w.u8(clean as u8);
            w.u64(disconnected_at);
        }
        Record::SessionDelete { client_id } => w.str(client_id),
        Record::WillPending {
            client_id,
            due_unix,
            topic,
            qos,
            retain,
            payload,
            properties,
        } => {
            w.str(client_id);
            w.u64(due_unix);
            w.str(topic);
            w.u8(qos);
            w.u8(retain as u8);
            w.bytes(properties);
            w.bytes(payload);
        }
        Record::WillCleared { client_id } => w.str(client_id),
        Record::SubAdd {
            client_id,
            filter,
            options,
            subscription_id,
        } => {
            w.str(client_id);
            w.str(filter);
            w.u8(options);
            w.u32(subscription_id);
        }
        Record::SubRemove { client_id, filter } => {
            w.str(client_id);
            w.str(filter);
        }
        Record::Message {
            msg_id,
            topic,
            qos,
            retain,
            payload,
            properties,
            expires_unix,
        } => {
            w.u64(msg_id);
            w.str(topic);
            w.u8(qos);
            w.u8(retain as u8);
            w.bytes(properties);
            w.bytes(payload);
            if expires_unix != 0 {
                w.u64(expires_unix);
            }
        }
        Record::Enqueue {
            client_id,
            msg_id,
            packet_id,
        } => {
            w.str(client_id);
            w.u64(msg_id);
            w.u16(packet_id);
        }
        Record::Delivery {
            client_id,
            msg_id,
            packet_id,
            state,
        } => {
            w.str(client_id);
            w.u64(msg_id);
            w.u16(packet_id);
            w.u8(state as u8);
        }
        Record::Ack { client_id, msg_id } => {
            w.str(client_id);
            w.u64(msg_id);
        }
        Record::Qos2InPending {
            client_id,
            packet_id,
        }
        | Record::Qos2InReleased {
            client_id,
            packet_id,
        } => {
            w.str(client_id);
            w.u16(packet_id);
        }
        Record::RetainedSet { topic, msg_id } => {
            w.str(topic);
            w.u64(msg_id);
        }
        Record::RetainedClear { topic } => w.str(topic),
        Record::Commit { group } => w.u64(group),
    }
    debug_assert_eq!(w.pos, FRAME_HEADER + 1 + body_len);
    let len = (1 + body_len) as u32;
    let crc = frame_crc(len, &out[FRAME_HEADER..FRAME_HEADER + 1 + body_len]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out[0..4].copy_from_slice(&len.to_le_bytes());
}
