//! Codec errors, split the way the spec splits them: a malformed packet (cannot be parsed) versus a protocol
//! error (parsed, but breaks a rule). Each maps to the v5 reason code a server answers with before closing.

use super::types::ReasonCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not form a valid packet (bad remaining length, truncated field, bad UTF-8, reserved bits,
    /// a property the packet type may not carry: spec 2.2.2.2 classes that one as malformed, too).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A well-formed packet that breaks a protocol rule (duplicate property, out-of-range property value, packet
    /// identifier 0, a packet the other side may not send, ...).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The fixed header announces more than the configured maximum; detected before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: u32 },
    /// CONNECT with a protocol name/level pair we do not speak.
    #[error("unsupported protocol: level {0}")]
    UnsupportedProtocolVersion(u8),
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(&'static str),
    #[error("invalid topic filter: {0}")]
    TopicFilterInvalid(&'static str),
}

impl DecodeError {
    /// The v5 reason code for the CONNACK or DISCONNECT that reports this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MalformedPacket,
            DecodeError::Protocol(_) => ReasonCode::ProtocolError,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TopicNameInvalid,
            DecodeError::TopicFilterInvalid(_) => ReasonCode::TopicFilterInvalid,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded packet would exceed the peer's maximum packet size (or the protocol's 268,435,455 bytes).
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: u32 },
    /// A field cannot be represented (string over 65,535 bytes, packet type not in this version, ...).
    #[error("cannot encode: {0}")]
    Invalid(&'static str),
}
