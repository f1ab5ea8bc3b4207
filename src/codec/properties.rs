//! MQTT 5 properties: decoding with duplicate and allowed-per-packet checks (spec table 2.2.2.2), range checks
//! on values, and exact-length encoding.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::topic;
use super::types::{Properties, Props};
use super::wire::{field_len, put_field, put_varint, varint_len, Reader, MAX_VARINT};

/// Which packet (or the will) a property block belongs to; selects the allowed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropCtx {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

// Property identifiers (all fit one byte in MQTT 5.0).
const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

const fn bit(id: u8) -> u64 {
    1u64 << id
}

/// Bitmask of property identifiers allowed in each context (spec table 2.2.2.2).
const fn allowed_mask(ctx: PropCtx) -> u64 {
    let user = bit(USER_PROPERTY);
    let reason = bit(REASON_STRING);
    match ctx {
        PropCtx::Connect => {
            user | bit(SESSION_EXPIRY_INTERVAL)
                | bit(AUTHENTICATION_METHOD)
                | bit(AUTHENTICATION_DATA)
                | bit(REQUEST_PROBLEM_INFORMATION)
                | bit(REQUEST_RESPONSE_INFORMATION)
                | bit(RECEIVE_MAXIMUM)
                | bit(TOPIC_ALIAS_MAXIMUM)
                | bit(MAXIMUM_PACKET_SIZE)
        }
        PropCtx::Will => {
            user | bit(PAYLOAD_FORMAT_INDICATOR)
                | bit(MESSAGE_EXPIRY_INTERVAL)
                | bit(CONTENT_TYPE)
                | bit(RESPONSE_TOPIC)
                | bit(CORRELATION_DATA)
                | bit(WILL_DELAY_INTERVAL)
        }
        PropCtx::ConnAck => {
            user | reason
                | bit(SESSION_EXPIRY_INTERVAL)
                | bit(ASSIGNED_CLIENT_IDENTIFIER)
                | bit(SERVER_KEEP_ALIVE)
                | bit(AUTHENTICATION_METHOD)
                | bit(AUTHENTICATION_DATA)
                | bit(RESPONSE_INFORMATION)
                | bit(SERVER_REFERENCE)
                | bit(RECEIVE_MAXIMUM)
                | bit(TOPIC_ALIAS_MAXIMUM)
                | bit(MAXIMUM_QOS)
                | bit(RETAIN_AVAILABLE)
                | bit(MAXIMUM_PACKET_SIZE)
                | bit(WILDCARD_SUBSCRIPTION_AVAILABLE)
                | bit(SUBSCRIPTION_IDENTIFIER_AVAILABLE)
                | bit(SHARED_SUBSCRIPTION_AVAILABLE)
        }
        PropCtx::Publish => {
            user | bit(PAYLOAD_FORMAT_INDICATOR)
                | bit(MESSAGE_EXPIRY_INTERVAL)
                | bit(CONTENT_TYPE)
                | bit(RESPONSE_TOPIC)
                | bit(CORRELATION_DATA)
                | bit(SUBSCRIPTION_IDENTIFIER)
                | bit(TOPIC_ALIAS)
        }
        PropCtx::PubResp | PropCtx::SubAck | PropCtx::UnsubAck => user | reason,
        PropCtx::Subscribe => user | bit(SUBSCRIPTION_IDENTIFIER),
        PropCtx::Unsubscribe => user,
        PropCtx::Disconnect => user | reason | bit(SESSION_EXPIRY_INTERVAL) | bit(SERVER_REFERENCE),
        PropCtx::Auth => user | reason | bit(AUTHENTICATION_METHOD) | bit(AUTHENTICATION_DATA),
    }
}

/// Upper bound on user properties per packet: each costs at least 5 bytes on the wire, so the packet size limit
/// already bounds them; this keeps a `Vec` from growing past what any sane peer sends.
pub const MAX_USER_PROPERTIES: usize = 65_535;

fn dup(slot_is_some: bool) -> Result<(), DecodeError> {
    if slot_is_some {
        return Err(DecodeError::Protocol("property included more than once"));
    }
    Ok(())
}

fn flag01(v: u8, what: &'static str) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::Protocol(what));
    }
    Ok(v)
}

/// Read a property block (length prefix included). `None` when the block is empty.
pub fn decode(r: &mut Reader<'_>, ctx: PropCtx) -> Result<Props, DecodeError> {
    let len = r.varint()? as usize;
    if len == 0 {
        return Ok(None);
    }
    let mut pr = r.sub(len)?;
    let mut p = Box::<Properties>::default();
    let allowed = allowed_mask(ctx);
    while !pr.is_empty() {
        let id = pr.u8()?;
        // Identifiers >= 64 do not exist (and an id with the varint continuation bit is never valid in 5.0).
        if id >= 64 || allowed & bit(id) == 0 {
            return Err(DecodeError::Malformed(
                "property not allowed in this packet",
            ));
        }
        match id {
            PAYLOAD_FORMAT_INDICATOR => {
                dup(p.payload_format_indicator.is_some())?;
                p.payload_format_indicator =
                    Some(flag01(pr.u8()?, "payload format indicator not 0 or 1")?);
            }
            MESSAGE_EXPIRY_INTERVAL => {
                dup(p.message_expiry_interval.is_some())?;
                p.message_expiry_interval = Some(pr.u32()?);
            }
            CONTENT_TYPE => {
                dup(p.content_type.is_some())?;
                p.content_type = Some(pr.string()?);
            }
            RESPONSE_TOPIC => {
                dup(p.response_topic.is_some())?;
                let t = pr.string()?;
                // A response topic is a topic name: wildcards are a protocol error [MQTT-3.3.2-14].
                topic::validate_topic_name(&t).map_err(|_| {
                    DecodeError::Protocol("response topic is not a valid topic name")
                })?;
                p.response_topic = Some(t);
            }
            CORRELATION_DATA => {
                dup(p.correlation_data.is_some())?;
                p.correlation_data = Some(pr.binary()?);
            }
            SUBSCRIPTION_IDENTIFIER => {
                // Several are legal only in a server-to-client PUBLISH.
                if ctx != PropCtx::Publish && !p.subscription_identifiers.is_empty() {
                    return Err(DecodeError::Protocol("property included more than once"));
                }
                let v = pr.varint()?;
                if v == 0 {
                    return Err(DecodeError::Protocol("subscription identifier 0"));
                }
                if p.subscription_identifiers.len() >= MAX_USER_PROPERTIES {
                    return Err(DecodeError::Protocol("too many subscription identifiers"));
                }
                p.subscription_identifiers.push(v);
            }
            SESSION_EXPIRY_INTERVAL => {
                dup(p.session_expiry_interval.is_some())?;
                p.session_expiry_interval = Some(pr.u32()?);
            }
            ASSIGNED_CLIENT_IDENTIFIER => {
                dup(p.assigned_client_identifier.is_some())?;
                p.assigned_client_identifier = Some(pr.string()?);
            }
            SERVER_KEEP_ALIVE => {
                dup(p.server_keep_alive.is_some())?;
                p.server_keep_alive = Some(pr.u16()?);
            }
            AUTHENTICATION_METHOD => {
                dup(p.authentication_method.is_some())?;
                p.authentication_method = Some(pr.string()?);
            }
            AUTHENTICATION_DATA => {
                dup(p.authentication_data.is_some())?;
                p.authentication_data = Some(pr.binary()?);
            }
            REQUEST_PROBLEM_INFORMATION => {
                dup(p.request_problem_information.is_some())?;
                p.request_problem_information =
                    Some(flag01(pr.u8()?, "request problem information not 0 or 1")?);
            }
            WILL_DELAY_INTERVAL => {
                dup(p.will_delay_interval.is_some())?;
                p.will_delay_interval = Some(pr.u32()?);
            }
            REQUEST_RESPONSE_INFORMATION => {
                dup(p.request_response_information.is_some())?;
                p.request_response_information =
                    Some(flag01(pr.u8()?, "request response information not 0 or 1")?);
            }
            RESPONSE_INFORMATION => {
                dup(p.response_information.is_some())?;
                p.response_information = Some(pr.string()?);
            }
            SERVER_REFERENCE => {
                dup(p.server_reference.is_some())?;
                p.server_reference = Some(pr.string()?);
            }
            REASON_STRING => {
                dup(p.reason_string.is_some())?;
                p.reason_string = Some(pr.string()?);
            }
            RECEIVE_MAXIMUM => {
                dup(p.receive_maximum.is_some())?;
                let v = pr.u16()?;
                if v == 0 {
                    return Err(DecodeError::Protocol("receive maximum 0"));
                }
                p.receive_maximum = Some(v);
            }
            TOPIC_ALIAS_MAXIMUM => {
                dup(p.topic_alias_maximum.is_some())?;
                p.topic_alias_maximum = Some(pr.u16()?);
            }
            TOPIC_ALIAS => {
                dup(p.topic_alias.is_some())?;
                let v = pr.u16()?;
                if v == 0 {
                    return Err(DecodeError::Protocol("topic alias 0"));
                }
                p.topic_alias = Some(v);
            }
            MAXIMUM_QOS => {
                dup(p.maximum_qos.is_some())?;
                p.maximum_qos = Some(flag01(pr.u8()?, "maximum QoS not 0 or 1")?);
            }
            RETAIN_AVAILABLE => {
                dup(p.retain_available.is_some())?;
                p.retain_available = Some(flag01(pr.u8()?, "retain available not 0 or 1")?);
            }
            USER_PROPERTY => {
                if p.user_properties.len() >= MAX_USER_PROPERTIES {
                    return Err(DecodeError::Protocol("too many user properties"));
                }
                let k = pr.string()?;
                let v = pr.string()?;
                p.user_properties.push((k, v));
            }
            MAXIMUM_PACKET_SIZE => {
                dup(p.maximum_packet_size.is_some())?;
                let v = pr.u32()?;
                if v == 0 {
                    return Err(DecodeError::Protocol("maximum packet size 0"));
                }
                p.maximum_packet_size = Some(v);
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                dup(p.wildcard_subscription_available.is_some())?;
                p.wildcard_subscription_available = Some(flag01(
                    pr.u8()?,
                    "wildcard subscription available not 0 or 1",
                )?);
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                dup(p.subscription_identifier_available.is_some())?;
                p.subscription_identifier_available = Some(flag01(
                    pr.u8()?,
                    "subscription identifier available not 0 or 1",
                )?);
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                dup(p.shared_subscription_available.is_some())?;
                p.shared_subscription_available = Some(flag01(
                    pr.u8()?,
                    "shared subscription available not 0 or 1",
                )?);
            }
            _ => return Err(DecodeError::Malformed("unknown property identifier")),
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without authentication method",
        ));
    }
    Ok(Some(p))
}

/// What the encoder may leave out to fit a peer's maximum packet size: the spec lets a sender drop the reason
/// string and user properties of everything but PUBLISH/CONNECT/will.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Strip {
    pub diagnostics: bool,
}

#[inline]
fn str_field(len: usize) -> Result<usize, EncodeError> {
    Ok(1 + field_len(len)?)
}

/// Byte length of the property block content (without its length prefix); errors on properties the packet may
/// not carry or values the wire format cannot represent.
pub fn content_len(
    p: Option<&Properties>,
    ctx: PropCtx,
    strip: Strip,
) -> Result<usize, EncodeError> {
    let Some(p) = p else { return Ok(0) };
    let mut n = 0usize;
    let mut present = 0u64;
    macro_rules! fixed {
        ($field:expr, $id:expr, $size:expr) => {
            if $field.is_some() {
                present |= bit($id);
                n += 1 + $size;
            }
        };
    }
    macro_rules! var {
        ($field:expr, $id:expr) => {
            if let Some(v) = &$field {
                present |= bit($id);
                n += str_field(v.len())?;
            }
        };
    }
    fixed!(p.payload_format_indicator, PAYLOAD_FORMAT_INDICATOR, 1);
    fixed!(p.message_expiry_interval, MESSAGE_EXPIRY_INTERVAL, 4);
    var!(p.content_type, CONTENT_TYPE);
    var!(p.response_topic, RESPONSE_TOPIC);
    var!(p.correlation_data, CORRELATION_DATA);
    for &id in &p.subscription_identifiers {
        if id == 0 || id > MAX_VARINT {
            return Err(EncodeError::Invalid(
                "subscription identifier out of range 1..=268,435,455",
            ));
        }
        present |= bit(SUBSCRIPTION_IDENTIFIER);
        n += 1 + varint_len(id);
    }
    if ctx != PropCtx::Publish && p.subscription_identifiers.len() > 1 {
        return Err(EncodeError::Invalid(
            "more than one subscription identifier outside PUBLISH",
        ));
    }
    fixed!(p.session_expiry_interval, SESSION_EXPIRY_INTERVAL, 4);
    var!(p.assigned_client_identifier, ASSIGNED_CLIENT_IDENTIFIER);
    fixed!(p.server_keep_alive, SERVER_KEEP_ALIVE, 2);
    var!(p.authentication_method, AUTHENTICATION_METHOD);
    var!(p.authentication_data, AUTHENTICATION_DATA);
    fixed!(
        p.request_problem_information,
        REQUEST_PROBLEM_INFORMATION,
        1
    );
    fixed!(p.will_delay_interval, WILL_DELAY_INTERVAL, 4);
    fixed!(
        p.request_response_information,
        REQUEST_RESPONSE_INFORMATION,
        1
    );
    var!(p.response_information, RESPONSE_INFORMATION);
    var!(p.server_reference, SERVER_REFERENCE);
    if !strip.diagnostics {
        var!(p.reason_string, REASON_STRING);
    }
    fixed!(p.receive_maximum, RECEIVE_MAXIMUM, 2);
    fixed!(p.topic_alias_maximum, TOPIC_ALIAS_MAXIMUM, 2);
    fixed!(p.topic_alias, TOPIC_ALIAS, 2);
    fixed!(p.maximum_qos, MAXIMUM_QOS, 1);
    fixed!(p.retain_available, RETAIN_AVAILABLE, 1);
    if !strip.diagnostics {
        for (k, v) in &p.user_properties {
            present |= bit(USER_PROPERTY);
            n += 1 + field_len(k.len())? + field_len(v.len())?;
        }
    }
    fixed!(p.maximum_packet_size, MAXIMUM_PACKET_SIZE, 4);
    fixed!(
        p.wildcard_subscription_available,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        1
    );
    fixed!(
        p.subscription_identifier_available,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        1
    );
    fixed!(
        p.shared_subscription_available,
        SHARED_SUBSCRIPTION_AVAILABLE,
        1
    );
    let flags = [
        p.payload_format_indicator,
        p.request_problem_information,
        p.request_response_information,
        p.maximum_qos,
        p.retain_available,
        p.wildcard_subscription_available,
        p.subscription_identifier_available,
        p.shared_subscription_available,
    ];
    if flags.iter().any(|f| matches!(f, Some(v) if *v > 1)) {
        return Err(EncodeError::Invalid("flag property not 0 or 1"));
    }
    if p.receive_maximum == Some(0) || p.topic_alias == Some(0) || p.maximum_packet_size == Some(0)
    {
        return Err(EncodeError::Invalid("property value 0 is not allowed"));
    }
    if present & !allowed_mask(ctx) != 0 {
        return Err(EncodeError::Invalid("property not allowed in this packet"));
    }
    if n > MAX_VARINT as usize {
        return Err(EncodeError::Invalid("property block too large"));
    }
    Ok(n)
}

/// Total size of the property block including its length prefix.
#[inline]
pub fn block_len(content: usize) -> usize {
    varint_len(content as u32) + content
}

/// Write the property block (length prefix + content); `content` comes from `content_len` with the same args.
pub fn write(buf: &mut BytesMut, p: Option<&Properties>, content: usize, strip: Strip) {
    put_varint(buf, content as u32);
    let Some(p) = p else { return };
    if let Some(v) = p.payload_format_indicator {
        buf.put_u8(PAYLOAD_FORMAT_INDICATOR);
        buf.put_u8(v);
    }
    if let Some(v) = p.message_expiry_interval {
        buf.put_u8(MESSAGE_EXPIRY_INTERVAL);
        buf.put_u32(v);
    }
    if let Some(v) = &p.content_type {
        buf.put_u8(CONTENT_TYPE);
        put_field(buf, v.as_bytes());
    }
    if let Some(v) = &p.response_topic {
        buf.put_u8(RESPONSE_TOPIC);
        put_field(buf, v.as_bytes());
    }
    if let Some(v) = &p.correlation_data {
        buf.put_u8(CORRELATION_DATA);
        put_field(buf, v);
    }
    for &id in &p.subscription_identifiers {
        buf.put_u8(SUBSCRIPTION_IDENTIFIER);
        put_varint(buf, id);
    }
    if let Some(v) = p.session_expiry_interval {
        buf.put_u8(SESSION_EXPIRY_INTERVAL);
        buf.put_u32(v);
    }
    if let Some(v) = &p.assigned_client_identifier {
        buf.put_u8(ASSIGNED_CLIENT_IDENTIFIER);
        put_field(buf, v.as_bytes());
    }
    if let Some(v) = p.server_keep_alive {
        buf.put_u8(SERVER_KEEP_ALIVE);
        buf.put_u16(v);
    }
    if let Some(v) = &p.authentication_method {
        buf.put_u8(AUTHENTICATION_METHOD);
        put_field(buf, v.as_bytes());
    }
    if let Some(v) = &p.authentication_data {
        buf.put_u8(AUTHENTICATION_DATA);
        put_field(buf, v);
    }
    if let Some(v) = p.request_problem_information {
        buf.put_u8(REQUEST_PROBLEM_INFORMATION);
        buf.put_u8(v);
    }
    if let Some(v) = p.will_delay_interval {
        buf.put_u8(WILL_DELAY_INTERVAL);
        buf.put_u32(v);
    }
    if let Some(v) = p.request_response_information {
        buf.put_u8(REQUEST_RESPONSE_INFORMATION);
        buf.put_u8(v);
    }
    if let Some(v) = &p.response_information {
        buf.put_u8(RESPONSE_INFORMATION);
        put_field(buf, v.as_bytes());
    }
    if let Some(v) = &p.server_reference {
        buf.put_u8(SERVER_REFERENCE);
        put_field(buf, v.as_bytes());
    }
    if !strip.diagnostics {
        if let Some(v) = &p.reason_string {
            buf.put_u8(REASON_STRING);
            put_field(buf, v.as_bytes());
        }
    }
    if let Some(v) = p.receive_maximum {
        buf.put_u8(RECEIVE_MAXIMUM);
        buf.put_u16(v);
    }
    if let Some(v) = p.topic_alias_maximum {
        buf.put_u8(TOPIC_ALIAS_MAXIMUM);
        buf.put_u16(v);
    }
    if let Some(v) = p.topic_alias {
        buf.put_u8(TOPIC_ALIAS);
        buf.put_u16(v);
    }
    if let Some(v) = p.maximum_qos {
        buf.put_u8(MAXIMUM_QOS);
        buf.put_u8(v);
    }
    if let Some(v) = p.retain_available {
        buf.put_u8(RETAIN_AVAILABLE);
        buf.put_u8(v);
    }
    if !strip.diagnostics {
        for (k, v) in &p.user_properties {
            buf.put_u8(USER_PROPERTY);
            put_field(buf, k.as_bytes());
            put_field(buf, v.as_bytes());
        }
    }
    if let Some(v) = p.maximum_packet_size {
        buf.put_u8(MAXIMUM_PACKET_SIZE);
        buf.put_u32(v);
    }
    if let Some(v) = p.wildcard_subscription_available {
        buf.put_u8(WILDCARD_SUBSCRIPTION_AVAILABLE);
        buf.put_u8(v);
    }
    if let Some(v) = p.subscription_identifier_available {
        buf.put_u8(SUBSCRIPTION_IDENTIFIER_AVAILABLE);
        buf.put_u8(v);
    }
    if let Some(v) = p.shared_subscription_available {
        buf.put_u8(SHARED_SUBSCRIPTION_AVAILABLE);
        buf.put_u8(v);
    }
}

/// PUBLISH properties as a standalone block (length prefix + content), e.g. to store a message; `None` encodes as
/// an empty slice.
pub fn encode_publish_block(p: Option<&Properties>) -> Result<bytes::Bytes, EncodeError> {
    let Some(p) = p else {
        return Ok(bytes::Bytes::new());
    };
    let content = content_len(Some(p), PropCtx::Publish, Strip::default())?;
    let mut buf = BytesMut::with_capacity(block_len(content));
    write(&mut buf, Some(p), content, Strip::default());
    Ok(buf.freeze())
}

/// Inverse of `encode_publish_block`.
pub fn decode_publish_block(block: &bytes::Bytes) -> Result<Props, DecodeError> {
    if block.is_empty() {
        return Ok(None);
    }
    let mut r = Reader::new(block, 0);
    decode(&mut r, PropCtx::Publish)
}
