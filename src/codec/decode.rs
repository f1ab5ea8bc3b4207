//! Incremental, zero-copy decoding: fixed header first (size checked before the body is buffered), then the
//! whole frame is split off the input and every string/payload is a slice of it.

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

use super::error::DecodeError;
use super::properties::{self, PropCtx};
use super::reason::{self, ReasonCtx};
use super::topic;
use super::types::*;
use super::wire::{self, read_varint, Reader, MAX_FRAME_LEN};

/// The parsed fixed header of the frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// First byte: packet type (high nibble) and flags (low nibble).
    pub byte1: u8,
    /// Bytes taken by the fixed header (2..=5).
    pub header_len: usize,
    /// Remaining length announced by the header.
    pub remaining_len: usize,
}

impl FixedHeader {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
    pub fn packet_type(&self) -> u8 {
        self.byte1 >> 4
    }
}

/// Effective limit: 0 means "no limit beyond the protocol's own maximum frame".
#[inline]
fn effective_max(max_packet_size: u32) -> u32 {
    if max_packet_size == 0 || max_packet_size > MAX_FRAME_LEN {
        MAX_FRAME_LEN
    } else {
        max_packet_size
    }
}

/// Check type and reserved flag bits of the first byte, which are the same in every version [MQTT-2.2.2-1].
#[inline]
fn check_byte1(byte1: u8) -> Result<(), DecodeError> {
    let flags = byte1 & 0x0F;
    let ok = match byte1 >> 4 {
        0 => return Err(DecodeError::Malformed("reserved packet type 0")),
        // PUBLISH: DUP/QoS/RETAIN; QoS 3 is malformed [MQTT-3.3.1-4].
        3 => (flags >> 1) & 0b11 != 0b11,
        6 | 8 | 10 => flags == 0b0010,
        _ => flags == 0,
    };
    if !ok {
        return Err(DecodeError::Malformed("invalid fixed header flags"));
    }
    Ok(())
}

/// Parse the fixed header at the front of `buf`. `Ok(None)` until it is complete. Checks the first byte and the
/// size limit, so an oversized or nonsensical frame is refused before its body is buffered.
pub fn fixed_header(buf: &[u8], max_packet_size: u32) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    check_byte1(byte1)?;
    let Some((remaining, n)) = read_varint(&buf[1..])? else {
        return Ok(None);
    };
    let header = FixedHeader {
        byte1,
        header_len: 1 + n,
        remaining_len: remaining as usize,
    };
    let max = effective_max(max_packet_size);
    if header.frame_len() > max as usize {
        return Err(DecodeError::PacketTooLarge {
            size: header.frame_len(),
            max,
        });
    }
    Ok(Some(header))
}

/// Total length of the first frame in `buf` once its fixed header is complete.
pub fn frame_len(buf: &[u8], max_packet_size: u32) -> Result<Option<usize>, DecodeError> {
    Ok(fixed_header(buf, max_packet_size)?.map(|h| h.frame_len()))
}

/// Stateless decode of the first packet in `buf`; see `Decoder::decode` for the contract.
pub fn decode_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(h) = fixed_header(buf, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < h.frame_len() {
        return Ok(None);
    }
    let frame = buf.split_to(h.frame_len()).freeze();
    decode_frame(frame, h, version)
}

/// Decode one complete frame whose fixed header is `h`.
pub fn decode_frame(
    frame: Bytes,
    h: FixedHeader,
    version: ProtocolVersion,
) -> Result<Option<Packet>, DecodeError> {
    let flags = h.byte1 & 0x0F;
    let v5 = version.is_v5();
    if h.packet_type() == PacketType::Publish as u8 {
        // The hot path takes the frame by value so the payload is the frame itself, not another slice.
        return publish(frame, h.header_len, flags, v5).map(|p| Some(Packet::Publish(p)));
    }
    let mut r = Reader::new(&frame, h.header_len);
    let packet = match h.packet_type() {
        1 => Packet::Connect(Box::new(connect(&mut r)?)),
        2 => Packet::ConnAck(connack(&mut r, version)?),
        4 => Packet::PubAck(pub_resp(&mut r, v5, ReasonCtx::PubAck)?),
        5 => Packet::PubRec(pub_resp(&mut r, v5, ReasonCtx::PubRec)?),
        6 => Packet::PubRel(pub_resp(&mut r, v5, ReasonCtx::PubRel)?),
        7 => Packet::PubComp(pub_resp(&mut r, v5, ReasonCtx::PubComp)?),
        8 => Packet::Subscribe(subscribe(&mut r, v5)?),
        9 => Packet::SubAck(suback(&mut r, v5)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut r, v5)?),
        11 => Packet::UnsubAck(unsuback(&mut r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(disconnect(&mut r, v5)?),
        15 if v5 => Packet::Auth(auth(&mut r)?),
        15 => return Err(DecodeError::Malformed("AUTH does not exist before MQTT 5")),
        // Type 0 is rejected by `check_byte1`; kept as an error rather than a panic.
        _ => return Err(DecodeError::Malformed("reserved packet type 0")),
    };
    if !r.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes after packet"));
    }
    Ok(Some(packet))
}

fn packet_id(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::Protocol("packet identifier 0"));
    }
    Ok(id)
}

#[inline]
fn props(r: &mut Reader<'_>, v5: bool, ctx: PropCtx) -> Result<Props, DecodeError> {
    if v5 {
        // Most packets carry no properties: skip the call for the one zero byte.
        if r.skip_zero_byte() {
            return Ok(None);
        }
        properties::decode(r, ctx)
    } else {
        Ok(None)
    }
}

fn connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    // 0x80 | level is mosquitto's bridge flag (`try_private`): the peer is a bridge, not a plain client.
    // v5 has no such flag (it has No Local), so 0x85 stays an unknown level.
    let bridge = level & 0x80 != 0;
    let protocol = match (&name[..], level & 0x7F) {
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) if !bridge => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        // Right name, unknown level: the server answers CONNACK 0x84 / return code 1 [MQTT-3.1.2-2].
        // The error carries the level as sent (0x85, not 5).
        _ => return Err(DecodeError::UnsupportedProtocolVersion(level)),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "will QoS/retain set without will flag",
        ));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::Malformed("password without user name"));
    }
    let keep_alive = r.u16()?;
    let properties = props(r, v5, PropCtx::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = props(r, v5, PropCtx::Will)?;
        let topic = r.string()?;
        topic::validate_topic_name(&topic)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        bridge,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(r: &mut Reader<'_>, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("CONNACK reserved flags set"));
    }
    // 3.1 has no session present flag: the byte is "reserved, not used".
    let session_present = ack_flags & 0x01 != 0 && version != ProtocolVersion::V3_1;
    let code = r.u8()?;
    let reason = if version.is_v5() {
        if !reason::allowed(ReasonCtx::ConnAck, code) {
            return Err(DecodeError::Malformed("reason code not allowed in CONNACK"));
        }
        ReasonCode::from_u8(code).ok_or(DecodeError::Malformed("unknown reason code"))?
    } else {
        reason::from_v3_connack_code(code)
            .ok_or(DecodeError::Malformed("reserved CONNACK return code"))?
    };
    if session_present && reason != ReasonCode::Success {
        return Err(DecodeError::Protocol(
            "session present with a failed CONNACK",
        ));
    }
    let properties = props(r, version.is_v5(), PropCtx::ConnAck)?;
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

/// Field offsets of a PUBLISH on the fast path.
struct FastLayout {
    topic: std::ops::Range<usize>,
    packet_id: u16,
    payload_start: usize,
}

/// The common PUBLISH (non-empty ASCII topic without wildcards or U+0000, valid packet id, no properties) parsed
/// on the raw bytes, so reference counts are touched only once at the end; anything else returns `None` and takes
/// the general path, which also produces the precise error.
#[inline(always)]
fn publish_fast_layout(frame: &[u8], start: usize, qos: QoS, v5: bool) -> Option<FastLayout> {
    let b = frame.get(start..)?;
    let len = usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
    if len == 0 {
        return None;
    }
    let (ascii, bad) = wire::scan_topic(b.get(2..2 + len)?);
    if !ascii || bad {
        return None;
    }
    let mut pos = 2 + len;
    let mut packet_id = 0;
    if qos != QoS::AtMostOnce {
        packet_id = u16::from_be_bytes([*b.get(pos)?, *b.get(pos + 1)?]);
        if packet_id == 0 {
            return None;
        }
        pos += 2;
    }
    if v5 {
        if *b.get(pos)? != 0 {
            return None;
        }
        pos += 1;
    }
    Some(FastLayout {
        topic: start + 2..start + 2 + len,
        packet_id,
        payload_start: start + pos,
    })
}

/// DUP, QoS and RETAIN of a PUBLISH's fixed header.
fn publish_flags(flags: u8) -> Result<(bool, QoS, bool), DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH QoS 3"))?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    Ok((dup, qos, retain))
}

/// PUBLISH frames up to this size in the common layout come out of `Decoder::decode` as exact-size copies.
pub const OWNED_PUBLISH_MAX: usize = 1024;

/// A small PUBLISH in the common layout (`publish_fast_layout`), copied out of the read buffer: its topic and
/// payload own exact-size allocations (what a broker keeps anyway), and the buffer is not split, so no reference
/// count is touched. `None`: take the general path.
fn small_publish(frame: &[u8], h: FixedHeader, v5: bool) -> Result<Option<Publish>, DecodeError> {
    let (dup, qos, retain) = publish_flags(h.byte1 & 0x0F)?;
    let Some(l) = publish_fast_layout(frame, h.header_len, qos, v5) else {
        return Ok(None);
    };
    // SAFETY: `publish_fast_layout` checked that the topic bytes are all ASCII, hence valid UTF-8.
    let topic =
        unsafe { ByteString::from_bytes_unchecked(Bytes::copy_from_slice(&frame[l.topic])) };
    Ok(Some(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id: l.packet_id,
        properties: None,
        payload: Bytes::copy_from_slice(&frame[l.payload_start..]),
    }))
}

fn publish(mut frame: Bytes, start: usize, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let (dup, qos, retain) = publish_flags(flags)?;
    if let Some(l) = publish_fast_layout(&frame, start, qos, v5) {
        // SAFETY: `publish_fast_layout` checked that the topic bytes are all ASCII, hence valid UTF-8.
        let topic = unsafe { ByteString::from_bytes_unchecked(frame.slice(l.topic.clone())) };
        frame.advance(l.payload_start);
        return Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id: l.packet_id,
            properties: None,
            payload: frame,
        });
    }
    let mut r = Reader::new(&frame, start);
    let topic = r.topic_name()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(&mut r)?
    };
    let properties = props(&mut r, v5, PropCtx::Publish)?;
    if topic.is_empty() {
        // v5 allows an empty topic when a topic alias stands in for it [MQTT-3.3.2-8].
        let has_alias = properties.as_ref().is_some_and(|p| p.topic_alias.is_some());
        if !has_alias {
            return Err(if v5 {
                DecodeError::Protocol("empty topic name without topic alias")
            } else {
                DecodeError::TopicNameInvalid("empty")
            });
        }
    }
    let payload_start = r.position();
    // The rest of the frame is the payload: advance the frame instead of slicing it (one refcount less).
    frame.advance(payload_start);
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: frame,
    })
}

fn pub_resp(r: &mut Reader<'_>, v5: bool, ctx: ReasonCtx) -> Result<PubResp, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut reason = ReasonCode::Success;
    let mut properties = None;
    if v5 {
        // Reason code and properties may be omitted (remaining length 2 or 3) [MQTT-3.4.2.1].
        if !r.is_empty() {
            reason = reason_code(r.u8()?, ctx)?;
        }
        if !r.is_empty() {
            properties = properties::decode(r, PropCtx::PubResp)?;
        }
    }
    Ok(PubResp {
        packet_id,
        reason,
        properties,
    })
}

fn reason_code(code: u8, ctx: ReasonCtx) -> Result<ReasonCode, DecodeError> {
    if !reason::allowed(ctx, code) {
        return Err(DecodeError::Malformed(
            "reason code not allowed in this packet",
        ));
    }
    ReasonCode::from_u8(code).ok_or(DecodeError::Malformed("unknown reason code"))
}

/// Upper bound on filters in one SUBSCRIBE/UNSUBSCRIBE/ack: each takes at least 3 bytes, so the packet size limit
/// bounds them anyway; this cap keeps one packet from building a huge `Vec`.
pub const MAX_FILTERS_PER_PACKET: usize = 65_535;

fn subscribe(r: &mut Reader<'_>, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, PropCtx::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        if filters.len() >= MAX_FILTERS_PER_PACKET {
            return Err(DecodeError::Protocol(
                "too many topic filters in one packet",
            ));
        }
        let filter = r.string()?;
        let opts = r.u8()?;
        let qos = QoS::from_u8(opts & 0x03).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
        let options = if v5 {
            if opts & 0xC0 != 0 {
                return Err(DecodeError::Malformed(
                    "subscription options reserved bits set",
                ));
            }
            if (opts >> 4) & 0x03 == 3 {
                return Err(DecodeError::Protocol("retain handling 3"));
            }
            // Reserved bits, QoS 3 and retain handling 3 are refused above with their own error classes.
            SubscriptionOptions::from_byte(opts)
                .ok_or(DecodeError::Malformed("bad subscription options"))?
        } else {
            if opts & 0xFC != 0 {
                return Err(DecodeError::Malformed("requested QoS reserved bits set"));
            }
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        };
        let shared = topic::parse_shared(&filter)?;
        if shared.is_none() {
            topic::validate_topic_filter(&filter)?;
        } else if options.no_local {
            return Err(DecodeError::Protocol("no local on a shared subscription"));
        }
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn suback(r: &mut Reader<'_>, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, PropCtx::SubAck)?;
    let mut reasons = Vec::with_capacity(r.remaining().min(MAX_FILTERS_PER_PACKET));
    while !r.is_empty() {
        if reasons.len() >= MAX_FILTERS_PER_PACKET {
            return Err(DecodeError::Protocol("too many reason codes in one packet"));
        }
        let code = r.u8()?;
        let reason = if v5 {
            reason_code(code, ReasonCtx::SubAck)?
        } else {
            reason::from_v3_suback_code(code)
                .ok_or(DecodeError::Malformed("invalid SUBACK return code"))?
        };
        reasons.push(reason);
    }
    if reasons.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without return codes"));
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn unsubscribe(r: &mut Reader<'_>, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, PropCtx::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        if filters.len() >= MAX_FILTERS_PER_PACKET {
            return Err(DecodeError::Protocol(
                "too many topic filters in one packet",
            ));
        }
        let filter = r.string()?;
        topic::validate_topic_filter(&filter)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(r: &mut Reader<'_>, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    if !v5 {
        return Ok(UnsubAck {
            packet_id,
            reasons: Vec::new(),
            properties: None,
        });
    }
    let properties = properties::decode(r, PropCtx::UnsubAck)?;
    let mut reasons = Vec::with_capacity(r.remaining().min(MAX_FILTERS_PER_PACKET));
    while !r.is_empty() {
        if reasons.len() >= MAX_FILTERS_PER_PACKET {
            return Err(DecodeError::Protocol("too many reason codes in one packet"));
        }
        reasons.push(reason_code(r.u8()?, ReasonCtx::UnsubAck)?);
    }
    if reasons.is_empty() {
        return Err(DecodeError::Protocol("UNSUBACK without reason codes"));
    }
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn disconnect(r: &mut Reader<'_>, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut reason = ReasonCode::Success;
    let mut properties = None;
    if v5 {
        if !r.is_empty() {
            reason = reason_code(r.u8()?, ReasonCtx::Disconnect)?;
        }
        if !r.is_empty() {
            properties = properties::decode(r, PropCtx::Disconnect)?;
        }
    }
    Ok(Disconnect { reason, properties })
}

fn auth(r: &mut Reader<'_>) -> Result<Auth, DecodeError> {
    let mut reason = ReasonCode::Success;
    let mut properties = None;
    if !r.is_empty() {
        reason = reason_code(r.u8()?, ReasonCtx::Auth)?;
    }
    if !r.is_empty() {
        properties = properties::decode(r, PropCtx::Auth)?;
    }
    Ok(Auth { reason, properties })
}

/// Which side of the connection the decoder sits on; each side only accepts what its peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// Per-connection decoder: remembers the protocol version, the size limit and which side it is on.
#[derive(Debug, Clone)]
pub struct Decoder {
    role: Role,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
}

impl Decoder {
    /// Server side: the version is unknown until CONNECT, which must be the first packet.
    pub fn new_server(max_packet_size: u32) -> Decoder {
        Decoder {
            role: Role::Server,
            version: None,
            max_packet_size,
        }
    }

    /// Client side: the version is the one the client sent in its CONNECT.
    pub fn new_client(version: ProtocolVersion, max_packet_size: u32) -> Decoder {
        Decoder {
            role: Role::Client,
            version: Some(version),
            max_packet_size,
        }
    }

    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    pub fn set_max_packet_size(&mut self, max_packet_size: u32) {
        self.max_packet_size = max_packet_size;
    }

    /// Check a packet type against the role and connection state, from the first byte alone.
    fn check_type(&self, packet_type: u8) -> Result<(), DecodeError> {
        match self.role {
            Role::Server => {
                if self.version.is_none() && packet_type != PacketType::Connect as u8 {
                    return Err(DecodeError::Protocol("first packet is not CONNECT"));
                }
                match packet_type {
                    1 if self.version.is_some() => Err(DecodeError::Protocol("second CONNECT")),
                    2 | 9 | 11 | 13 => {
                        Err(DecodeError::Protocol("packet type only a server sends"))
                    }
                    _ => Ok(()),
                }
            }
            Role::Client => match packet_type {
                1 | 8 | 10 | 12 => Err(DecodeError::Protocol("packet type only a client sends")),
                _ => Ok(()),
            },
        }
    }

    /// Decode the next packet from `buf`. `Ok(Some)`: the frame was taken off the front of `buf`; the packet's
    /// strings and payload are slices of it, except a small common PUBLISH's (`OWNED_PUBLISH_MAX`), which are
    /// exact-size copies. `Ok(None)`: need more bytes, nothing consumed. `Err`: close the
    /// connection (after a CONNACK/DISCONNECT with `err.reason_code()` for v5); the frame may have been consumed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&byte1) = buf.first() else {
            return Ok(None);
        };
        self.check_type(byte1 >> 4)?;
        let Some(h) = fixed_header(buf, self.max_packet_size)? else {
            return Ok(None);
        };
        if buf.len() < h.frame_len() {
            return Ok(None);
        }
        if let Some(p) = short_ack(buf, h)? {
            buf.advance(h.frame_len());
            return Ok(Some(p));
        }
        if h.packet_type() == PacketType::Publish as u8 && h.frame_len() <= OWNED_PUBLISH_MAX {
            let v5 = self.version.is_some_and(|v| v.is_v5());
            if let Some(p) = small_publish(&buf[..h.frame_len()], h, v5)? {
                buf.advance(h.frame_len());
                return Ok(Some(Packet::Publish(p)));
            }
        }
        let frame = buf.split_to(h.frame_len()).freeze();
        // CONNECT is decoded by its own protocol level; before it, the version is irrelevant.
        let version = self.version.unwrap_or(ProtocolVersion::V3_1_1);
        let packet = decode_frame(frame, h, version)?;
        match &packet {
            Some(Packet::Connect(c)) => self.version = Some(c.protocol),
            // Subscription identifiers flow server-to-client only [MQTT-3.3.4-6].
            Some(Packet::Publish(p))
                if self.role == Role::Server
                    && p.properties
                        .as_ref()
                        .is_some_and(|pr| !pr.subscription_identifiers.is_empty()) =>
            {
                return Err(DecodeError::Protocol(
                    "subscription identifier in a client PUBLISH",
                ));
            }
            _ => {}
        }
        Ok(packet)
    }
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP with only a packet id (every version's common form; v5's reason Success
/// omitted), decoded in place: half the frames of QoS 1 traffic, and splitting them off the read buffer would
/// cost two reference-count updates on it each. `None`: any other frame, for the general path.
fn short_ack(buf: &[u8], h: FixedHeader) -> Result<Option<Packet>, DecodeError> {
    if h.remaining_len != 2 || !(4..=7).contains(&h.packet_type()) {
        return Ok(None);
    }
    let at = h.header_len;
    let packet_id = u16::from_be_bytes([buf[at], buf[at + 1]]);
    if packet_id == 0 {
        return Err(DecodeError::Protocol("packet identifier 0"));
    }
    let r = PubResp {
        packet_id,
        reason: ReasonCode::Success,
        properties: None,
    };
    Ok(Some(match h.packet_type() {
        4 => Packet::PubAck(r),
        5 => Packet::PubRec(r),
        6 => Packet::PubRel(r),
        _ => Packet::PubComp(r),
    }))
}

impl Decoder {
    /// Server side for a connection whose CONNECT was decoded elsewhere (handed over from another shard).
    pub fn server_connected(version: ProtocolVersion, max_packet_size: u32) -> Decoder {
        Decoder {
            role: Role::Server,
            version: Some(version),
            max_packet_size,
        }
    }
}
