//! Encoding with an exact remaining length: every packet is sized first (which also validates what the wire
//! format cannot carry), so nothing is written on error and `buf` grows at most once per packet.

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::properties::{self, PropCtx, Strip};
use super::reason::{self, ReasonCtx};
use super::types::*;
use super::wire::{field_len, put_field, put_varint, varint_len, MAX_FRAME_LEN, MAX_VARINT};

/// Sizes computed once and reused by the writer.
#[derive(Debug, Clone, Copy, Default)]
struct Plan {
    remaining: usize,
    /// Property block content length (without its prefix) of the packet; 0 when absent.
    props: usize,
    /// Same for the will properties of a CONNECT.
    will_props: usize,
    strip: Strip,
}

impl Plan {
    fn total(&self) -> usize {
        1 + varint_len(self.remaining.min(MAX_VARINT as usize) as u32) + self.remaining
    }
}

#[inline]
fn props_ref(p: &Props) -> Option<&Properties> {
    p.as_deref()
}

fn check_reason(v5: bool, ctx: ReasonCtx, r: ReasonCode) -> Result<(), EncodeError> {
    if v5 && !reason::allowed(ctx, r as u8) {
        return Err(EncodeError::Invalid(
            "reason code not allowed in this packet",
        ));
    }
    Ok(())
}

fn nonzero_id(id: u16) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::Invalid("packet identifier 0"));
    }
    Ok(())
}

/// Protocol version a packet is written in: a CONNECT carries its own.
#[inline]
fn wire_version(packet: &Packet, version: ProtocolVersion) -> ProtocolVersion {
    match packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    }
}

fn protocol_name(v: ProtocolVersion) -> &'static [u8] {
    match v {
        ProtocolVersion::V3_1 => b"MQIsdp",
        _ => b"MQTT",
    }
}

fn publish_plan(p: &PublishRef, v5: bool) -> Result<Plan, EncodeError> {
    let mut plan = Plan::default();
    let mut n = field_len(p.topic.len())?;
    if p.qos != QoS::AtMostOnce {
        nonzero_id(p.packet_id)?;
        n += 2;
    }
    if v5 {
        plan.props = properties::content_len(p.properties, PropCtx::Publish, Strip::default())?;
        n += properties::block_len(plan.props);
        let alias = p.properties.is_some_and(|pr| pr.topic_alias.is_some());
        if p.topic.is_empty() && !alias {
            return Err(EncodeError::Invalid("empty topic name without topic alias"));
        }
    } else if p.topic.is_empty() {
        return Err(EncodeError::Invalid("empty topic name"));
    }
    plan.remaining = n + p.payload.len();
    Ok(plan)
}

/// Size `packet` for `version`; `strip` drops diagnostics (reason string, user properties) where allowed.
fn plan(packet: &Packet, version: ProtocolVersion, strip: Strip) -> Result<Plan, EncodeError> {
    let v5 = version.is_v5();
    let mut plan = Plan {
        strip,
        ..Plan::default()
    };
    let block = |props: &Props, ctx: PropCtx, plan: &mut Plan| -> Result<usize, EncodeError> {
        if !v5 {
            return Ok(0);
        }
        plan.props = properties::content_len(props_ref(props), ctx, strip)?;
        Ok(properties::block_len(plan.props))
    };
    let remaining = match packet {
        Packet::Connect(c) => {
            let mut n = field_len(protocol_name(c.protocol).len())? + 1 + 1 + 2;
            n += block(&c.properties, PropCtx::Connect, &mut plan)?;
            n += field_len(c.client_id.len())?;
            if let Some(w) = &c.will {
                if v5 {
                    plan.will_props =
                        properties::content_len(props_ref(&w.properties), PropCtx::Will, strip)?;
                    n += properties::block_len(plan.will_props);
                }
                n += field_len(w.topic.len())? + field_len(w.payload.len())?;
            }
            if !v5 && c.password.is_some() && c.username.is_none() {
                return Err(EncodeError::Invalid(
                    "password without user name before MQTT 5",
                ));
            }
            if let Some(u) = &c.username {
                n += field_len(u.len())?;
            }
            if let Some(pw) = &c.password {
                n += field_len(pw.len())?;
            }
            n
        }
        Packet::ConnAck(a) => {
            check_reason(v5, ReasonCtx::ConnAck, a.reason)?;
            2 + block(&a.properties, PropCtx::ConnAck, &mut plan)?
        }
        Packet::Publish(p) => return publish_plan(&p.as_ref(), v5),
        Packet::PubAck(r) => pub_resp_len(r, v5, ReasonCtx::PubAck, strip, &mut plan)?,
        Packet::PubRec(r) => pub_resp_len(r, v5, ReasonCtx::PubRec, strip, &mut plan)?,
        Packet::PubRel(r) => pub_resp_len(r, v5, ReasonCtx::PubRel, strip, &mut plan)?,
        Packet::PubComp(r) => pub_resp_len(r, v5, ReasonCtx::PubComp, strip, &mut plan)?,
        Packet::Subscribe(s) => {
            nonzero_id(s.packet_id)?;
            if s.filters.is_empty() {
                return Err(EncodeError::Invalid("SUBSCRIBE without topic filters"));
            }
            let mut n = 2 + block(&s.properties, PropCtx::Subscribe, &mut plan)?;
            for f in &s.filters {
                n += field_len(f.filter.len())? + 1;
            }
            n
        }
        Packet::SubAck(s) => {
            nonzero_id(s.packet_id)?;
            if s.reasons.is_empty() {
                return Err(EncodeError::Invalid("SUBACK without reason codes"));
            }
            for &r in &s.reasons {
                check_reason(v5, ReasonCtx::SubAck, r)?;
            }
            2 + block(&s.properties, PropCtx::SubAck, &mut plan)? + s.reasons.len()
        }
        Packet::Unsubscribe(u) => {
            nonzero_id(u.packet_id)?;
            if u.filters.is_empty() {
                return Err(EncodeError::Invalid("UNSUBSCRIBE without topic filters"));
            }
            let mut n = 2 + block(&u.properties, PropCtx::Unsubscribe, &mut plan)?;
            for f in &u.filters {
                n += field_len(f.len())?;
            }
            n
        }
        Packet::UnsubAck(u) => {
            nonzero_id(u.packet_id)?;
            if v5 {
                if u.reasons.is_empty() {
                    return Err(EncodeError::Invalid("MQTT 5 UNSUBACK without reason codes"));
                }
                for &r in &u.reasons {
                    check_reason(v5, ReasonCtx::UnsubAck, r)?;
                }
                2 + block(&u.properties, PropCtx::UnsubAck, &mut plan)? + u.reasons.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            if v5 {
                check_reason(v5, ReasonCtx::Disconnect, d.reason)?;
                short_reason_len(
                    d.reason,
                    &d.properties,
                    PropCtx::Disconnect,
                    strip,
                    &mut plan,
                )?
            } else {
                0
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::Invalid("AUTH does not exist before MQTT 5"));
            }
            check_reason(v5, ReasonCtx::Auth, a.reason)?;
            short_reason_len(a.reason, &a.properties, PropCtx::Auth, strip, &mut plan)?
        }
    };
    plan.remaining = remaining;
    Ok(plan)
}

fn pub_resp_len(
    r: &PubResp,
    v5: bool,
    ctx: ReasonCtx,
    strip: Strip,
    plan: &mut Plan,
) -> Result<usize, EncodeError> {
    nonzero_id(r.packet_id)?;
    if !v5 {
        return Ok(2);
    }
    check_reason(v5, ctx, r.reason)?;
    Ok(2 + short_reason_len(r.reason, &r.properties, PropCtx::PubResp, strip, plan)?)
}

/// Reason code + properties that may be omitted when Success without properties (acks, DISCONNECT, AUTH).
fn short_reason_len(
    reason: ReasonCode,
    props: &Props,
    ctx: PropCtx,
    strip: Strip,
    plan: &mut Plan,
) -> Result<usize, EncodeError> {
    plan.props = properties::content_len(props_ref(props), ctx, strip)?;
    Ok(if plan.props > 0 {
        1 + properties::block_len(plan.props)
    } else if reason != ReasonCode::Success {
        1
    } else {
        0
    })
}

fn write_short_reason(buf: &mut BytesMut, reason: ReasonCode, props: &Props, plan: &Plan) {
    if plan.props > 0 {
        buf.put_u8(reason as u8);
        properties::write(buf, props_ref(props), plan.props, plan.strip);
    } else if reason != ReasonCode::Success {
        buf.put_u8(reason as u8);
    }
}

fn write_header(buf: &mut BytesMut, byte1: u8, plan: &Plan) {
    buf.reserve(plan.total());
    buf.put_u8(byte1);
    put_varint(buf, plan.remaining as u32);
}

fn write_props(buf: &mut BytesMut, v5: bool, props: &Props, plan: &Plan) {
    if v5 {
        properties::write(buf, props_ref(props), plan.props, plan.strip);
    }
}

fn write(packet: &Packet, version: ProtocolVersion, plan: &Plan, buf: &mut BytesMut) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => {
            write_header(buf, 0x10, plan);
            put_field(buf, protocol_name(c.protocol));
            // The bridge flag exists for 3.1 / 3.1.1 only; a v5 bridge uses No Local instead.
            let bridge = if c.bridge && !c.protocol.is_v5() {
                0x80
            } else {
                0
            };
            buf.put_u8(c.protocol.level() | bridge);
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            buf.put_u8(flags);
            buf.put_u16(c.keep_alive);
            write_props(buf, v5, &c.properties, plan);
            put_field(buf, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                if v5 {
                    properties::write(buf, props_ref(&w.properties), plan.will_props, plan.strip);
                }
                put_field(buf, w.topic.as_bytes());
                put_field(buf, &w.payload);
            }
            if let Some(u) = &c.username {
                put_field(buf, u.as_bytes());
            }
            if let Some(pw) = &c.password {
                put_field(buf, pw);
            }
        }
        Packet::ConnAck(a) => {
            write_header(buf, 0x20, plan);
            // 3.1 has no session present flag (the byte is reserved).
            let sp = a.session_present && version != ProtocolVersion::V3_1;
            buf.put_u8(u8::from(sp));
            buf.put_u8(if v5 {
                a.reason as u8
            } else {
                reason::v3_connack_code(a.reason)
            });
            write_props(buf, v5, &a.properties, plan);
        }
        Packet::Publish(p) => write_publish(&p.as_ref(), v5, plan, buf),
        Packet::PubAck(r) => write_pub_resp(buf, 0x40, r, v5, plan),
        Packet::PubRec(r) => write_pub_resp(buf, 0x50, r, v5, plan),
        Packet::PubRel(r) => write_pub_resp(buf, 0x62, r, v5, plan),
        Packet::PubComp(r) => write_pub_resp(buf, 0x70, r, v5, plan),
        Packet::Subscribe(s) => {
            write_header(buf, 0x82, plan);
            buf.put_u16(s.packet_id);
            write_props(buf, v5, &s.properties, plan);
            for f in &s.filters {
                put_field(buf, f.filter.as_bytes());
                // v3 has only the QoS bits; v5 the whole options byte.
                buf.put_u8(if v5 {
                    f.options.to_byte()
                } else {
                    f.options.qos as u8
                });
            }
        }
        Packet::SubAck(s) => {
            write_header(buf, 0x90, plan);
            buf.put_u16(s.packet_id);
            write_props(buf, v5, &s.properties, plan);
            for &r in &s.reasons {
                buf.put_u8(if v5 {
                    r as u8
                } else {
                    reason::v3_suback_code(r)
                });
            }
        }
        Packet::Unsubscribe(u) => {
            write_header(buf, 0xA2, plan);
            buf.put_u16(u.packet_id);
            write_props(buf, v5, &u.properties, plan);
            for f in &u.filters {
                put_field(buf, f.as_bytes());
            }
        }
        Packet::UnsubAck(u) => {
            write_header(buf, 0xB0, plan);
            buf.put_u16(u.packet_id);
            if v5 {
                properties::write(buf, props_ref(&u.properties), plan.props, plan.strip);
                for &r in &u.reasons {
                    buf.put_u8(r as u8);
                }
            }
        }
        Packet::PingReq => write_header(buf, 0xC0, plan),
        Packet::PingResp => write_header(buf, 0xD0, plan),
        Packet::Disconnect(d) => {
            write_header(buf, 0xE0, plan);
            if v5 {
                write_short_reason(buf, d.reason, &d.properties, plan);
            }
        }
        Packet::Auth(a) => {
            write_header(buf, 0xF0, plan);
            write_short_reason(buf, a.reason, &a.properties, plan);
        }
    }
}

fn write_pub_resp(buf: &mut BytesMut, byte1: u8, r: &PubResp, v5: bool, plan: &Plan) {
    write_header(buf, byte1, plan);
    buf.put_u16(r.packet_id);
    if v5 {
        write_short_reason(buf, r.reason, &r.properties, plan);
    }
}

#[inline]
fn write_publish(p: &PublishRef, v5: bool, plan: &Plan, buf: &mut BytesMut) {
    let mut byte1 = 0x30 | ((p.qos as u8) << 1) | u8::from(p.retain);
    // DUP must be 0 on QoS 0 [MQTT-3.3.1-2].
    if p.dup && p.qos != QoS::AtMostOnce {
        byte1 |= 0x08;
    }
    write_header(buf, byte1, plan);
    put_field(buf, p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.packet_id);
    }
    if v5 {
        properties::write(buf, p.properties, plan.props, plan.strip);
    }
    buf.put_slice(p.payload);
}

fn check_size(plan: &Plan, max_packet_size: u32) -> Result<(), EncodeError> {
    let max = if max_packet_size == 0 {
        MAX_FRAME_LEN
    } else {
        max_packet_size.min(MAX_FRAME_LEN)
    };
    if plan.remaining > MAX_VARINT as usize || plan.total() > max as usize {
        return Err(EncodeError::PacketTooLarge {
            size: plan.total(),
            max,
        });
    }
    Ok(())
}

/// Encode a PUBLISH: the hot path. Allocates nothing beyond `buf` growth.
pub fn encode_publish(
    p: &Publish,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode_publish_limited(p, version, 0, buf)
}

/// `encode_publish` against a peer's maximum packet size (0 = protocol maximum).
pub fn encode_publish_limited(
    p: &Publish,
    version: ProtocolVersion,
    max_packet_size: u32,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode_publish_ref(&p.as_ref(), version, max_packet_size, buf)
}

/// Encode a PUBLISH from borrowed parts (the broker encodes queued messages without cloning their topic and
/// payload), within a peer's maximum packet size (0 = protocol maximum). Nothing is written on error.
pub fn encode_publish_ref(
    p: &PublishRef,
    version: ProtocolVersion,
    max_packet_size: u32,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let plan = publish_plan(p, version.is_v5())?;
    check_size(&plan, max_packet_size)?;
    let start = buf.len();
    write_publish(p, version.is_v5(), &plan, buf);
    debug_assert_eq!(buf.len() - start, plan.total());
    Ok(())
}

/// Exact encoded size of a PUBLISH for `version`, or 0 if it cannot be encoded.
pub fn publish_len(p: &PublishRef, version: ProtocolVersion) -> usize {
    publish_plan(p, version.is_v5()).map_or(0, |p| p.total())
}

/// Encode any packet for `version` (a CONNECT is written in its own `protocol`). v3 drops v5-only fields and
/// maps reason codes to v3 return codes.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode_limited(packet, version, 0, buf)
}

/// The four bytes of a PUBACK/PUBREC/PUBREL/PUBCOMP that is Success without properties: the same in every
/// version (v5 omits such a reason code), and one per QoS 1 message, so not planned field by field.
#[inline]
fn short_ack(packet: &Packet) -> Option<[u8; 4]> {
    let (byte1, r) = match packet {
        Packet::PubAck(r) => (0x40, r),
        Packet::PubRec(r) => (0x50, r),
        Packet::PubRel(r) => (0x62, r),
        Packet::PubComp(r) => (0x70, r),
        _ => return None,
    };
    if r.reason != ReasonCode::Success || r.properties.is_some() || r.packet_id == 0 {
        return None;
    }
    let [hi, lo] = r.packet_id.to_be_bytes();
    Some([byte1, 2, hi, lo])
}

/// Encode within a peer's maximum packet size (0 = protocol maximum). A v5 packet other than PUBLISH/CONNECT that
/// is too large is retried without its reason string and user properties, as the spec allows; if it still does
/// not fit, `PacketTooLarge` is returned and nothing is written.
pub fn encode_limited(
    packet: &Packet,
    version: ProtocolVersion,
    max_packet_size: u32,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    if let Packet::Publish(p) = packet {
        return encode_publish_limited(p, version, max_packet_size, buf);
    }
    if let Some(bytes) = short_ack(packet) {
        if max_packet_size == 0 || max_packet_size >= 4 {
            buf.put_slice(&bytes);
            return Ok(());
        }
    }
    let version = wire_version(packet, version);
    let mut plan = plan(packet, version, Strip::default())?;
    let strippable = version.is_v5() && !matches!(packet, Packet::Connect(_));
    if strippable && check_size(&plan, max_packet_size).is_err() {
        plan = self::plan(packet, version, Strip { diagnostics: true })?;
    }
    check_size(&plan, max_packet_size)?;
    let start = buf.len();
    write(packet, version, &plan, buf);
    debug_assert_eq!(buf.len() - start, plan.total());
    Ok(())
}

/// Exact encoded size of `packet` for `version`, or 0 if it cannot be encoded.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let version = wire_version(packet, version);
    plan(packet, version, Strip::default())
        .map(|p| p.total())
        .unwrap_or(0)
}
