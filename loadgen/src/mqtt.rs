//! The load generator's MQTT vocabulary on top of the coremq codec: building CONNECT/SUBSCRIBE/acks, and a
//! pre-encoded PUBLISH template that is copied and patched (packet id, stamp) per message instead of encoding
//! each message from scratch, which keeps the sender cheap enough to not be the bottleneck.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

pub use coremq::codec::{encode, encode_publish, Decoder};
pub use coremq::codec::{
    ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubResp, Publish, QoS,
    ReasonCode, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions,
};

use crate::payload::{write_stamp, Stamp, STAMP_LEN};

/// What every connection of a run shares.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    pub version: ProtocolVersion,
    pub keep_alive: u16,
    pub clean_start: bool,
    /// v5 session expiry for persistent sessions (seconds).
    pub session_expiry: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

pub fn connect_packet(p: &ConnectParams, client_id: &str) -> Packet {
    let properties = if p.version.is_v5() && !p.clean_start {
        Some(Box::new(Properties {
            session_expiry_interval: Some(p.session_expiry),
            ..Default::default()
        }))
    } else {
        None
    };
    Packet::Connect(Box::new(Connect {
        protocol: p.version,
        bridge: false,
        clean_start: p.clean_start,
        keep_alive: p.keep_alive,
        client_id: ByteString::from(client_id),
        will: None,
        // `%c` in the user name is the client id: one user per client, so a broker's credential cache cannot
        // answer for the next connection (password-cost benchmarks).
        username: p
            .username
            .as_deref()
            .map(|u| ByteString::from(u.replace("%c", client_id))),
        password: p
            .password
            .as_ref()
            .map(|s| Bytes::copy_from_slice(s.as_bytes())),
        properties,
    }))
}

pub fn subscribe_packet(packet_id: u16, filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        filters: vec![SubscribeFilter {
            filter: ByteString::from(filter),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        properties: None,
    })
}

pub fn resp(packet_id: u16) -> PubResp {
    PubResp {
        packet_id,
        reason: ReasonCode::Success,
        properties: None,
    }
}

pub fn disconnect_packet() -> Packet {
    Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: None,
    })
}

/// Encoding our own well-formed packets cannot fail except for sizes the CLI already bounds; a failure is a bug
/// in the caller, reported as an error string rather than a panic.
pub fn encode_into(p: &Packet, v: ProtocolVersion, out: &mut BytesMut) -> Result<(), String> {
    encode(p, v, out).map_err(|e| format!("encode: {e}"))
}

/// One publisher's PUBLISH, encoded once by the codec; each message copies it and patches the packet id and the
/// stamp in place.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Offset of the 2-byte packet id (QoS > 0 only).
    packet_id_at: Option<usize>,
    payload_at: usize,
}

impl PublishTemplate {
    pub fn new(
        topic: &str,
        qos: QoS,
        size: usize,
        version: ProtocolVersion,
    ) -> Result<Self, String> {
        let size = size.max(STAMP_LEN);
        let build = |packet_id: u16| -> Result<Vec<u8>, String> {
            let p = Publish {
                dup: false,
                qos,
                retain: false,
                topic: ByteString::from(topic),
                packet_id,
                properties: None,
                payload: Bytes::from(vec![0u8; size]),
            };
            let mut out = BytesMut::new();
            encode_publish(&p, version, &mut out).map_err(|e| format!("encode publish: {e}"))?;
            Ok(out.to_vec())
        };
        let (a, b) = if qos == QoS::AtMostOnce {
            (build(0)?, build(0)?)
        } else {
            (build(0x0101)?, build(0xFEFE)?)
        };
        if a.len() != b.len() || a.len() < size {
            return Err("publish template: unexpected encoding".into());
        }
        // Find the packet id by encoding two ids and diffing, rather than assuming the header layout.
        let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        let packet_id_at = match (qos, diff.as_slice()) {
            (QoS::AtMostOnce, []) => None,
            (_, [x, y]) if *y == x + 1 => Some(*x),
            _ => return Err("publish template: cannot locate packet id".into()),
        };
        let payload_at = a.len() - size;
        Ok(PublishTemplate {
            bytes: a,
            packet_id_at,
            payload_at,
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends one encoded PUBLISH with this packet id and stamp.
    pub fn write(&self, out: &mut BytesMut, packet_id: u16, stamp: &Stamp) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let msg = &mut out[start..];
        if let Some(at) = self.packet_id_at {
            msg[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        write_stamp(&mut msg[self.payload_at..], stamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::read_stamp;

    #[test]
    fn template_decodes_as_the_codec_sees_it() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let t = PublishTemplate::new("lg/t/1", qos, 100, version).unwrap();
                let mut out = BytesMut::new();
                let stamp = Stamp {
                    publisher: 9,
                    seq: 77,
                    sent_ns: 5,
                };
                t.write(&mut out, 0x1234, &stamp);
                t.write(&mut out, 0x0002, &Stamp { seq: 78, ..stamp });
                let mut dec = Decoder::new_client(version, 1 << 20);
                let Some(Packet::Publish(p)) = dec.decode(&mut out).unwrap() else {
                    panic!("no publish")
                };
                assert_eq!(p.qos, qos);
                assert_eq!(&p.topic[..], "lg/t/1");
                assert_eq!(p.payload.len(), 100);
                assert_eq!(read_stamp(&p.payload), Some(stamp));
                assert_eq!(p.packet_id, if qos == QoS::AtMostOnce { 0 } else { 0x1234 });
                let Some(Packet::Publish(p2)) = dec.decode(&mut out).unwrap() else {
                    panic!("no publish")
                };
                assert_eq!(read_stamp(&p2.payload).unwrap().seq, 78);
                assert!(out.is_empty());
            }
        }
    }
}
