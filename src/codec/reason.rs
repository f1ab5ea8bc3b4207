//! Reason codes: byte conversion, the per-packet allowed sets of MQTT 5, and the mapping to v3 return codes.

use super::types::ReasonCode;

impl ReasonCode {
    /// The reason code for a byte, `None` for bytes the spec does not define.
    pub fn from_u8(v: u8) -> Option<ReasonCode> {
        use ReasonCode::*;
        Some(match v {
            0x00 => Success,
            0x01 => GrantedQoS1,
            0x02 => GrantedQoS2,
            0x04 => DisconnectWithWillMessage,
            0x10 => NoMatchingSubscribers,
            0x11 => NoSubscriptionExisted,
            0x18 => ContinueAuthentication,
            0x19 => ReAuthenticate,
            0x80 => UnspecifiedError,
            0x81 => MalformedPacket,
            0x82 => ProtocolError,
            0x83 => ImplementationSpecificError,
            0x84 => UnsupportedProtocolVersion,
            0x85 => ClientIdentifierNotValid,
            0x86 => BadUserNameOrPassword,
            0x87 => NotAuthorized,
            0x88 => ServerUnavailable,
            0x89 => ServerBusy,
            0x8A => Banned,
            0x8B => ServerShuttingDown,
            0x8C => BadAuthenticationMethod,
            0x8D => KeepAliveTimeout,
            0x8E => SessionTakenOver,
            0x8F => TopicFilterInvalid,
            0x90 => TopicNameInvalid,
            0x91 => PacketIdentifierInUse,
            0x92 => PacketIdentifierNotFound,
            0x93 => ReceiveMaximumExceeded,
            0x94 => TopicAliasInvalid,
            0x95 => PacketTooLarge,
            0x96 => MessageRateTooHigh,
            0x97 => QuotaExceeded,
            0x98 => AdministrativeAction,
            0x99 => PayloadFormatInvalid,
            0x9A => RetainNotSupported,
            0x9B => QoSNotSupported,
            0x9C => UseAnotherServer,
            0x9D => ServerMoved,
            0x9E => SharedSubscriptionsNotSupported,
            0x9F => ConnectionRateExceeded,
            0xA0 => MaximumConnectTime,
            0xA1 => SubscriptionIdentifiersNotSupported,
            0xA2 => WildcardSubscriptionsNotSupported,
            _ => return None,
        })
    }
}

/// Packets that carry a reason code, for the allowed-set tables (MQTT 5 section 2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonCtx {
    ConnAck,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    SubAck,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Whether the spec allows `code` in this packet (v5).
pub fn allowed(ctx: ReasonCtx, code: u8) -> bool {
    match ctx {
        ReasonCtx::ConnAck => {
            matches!(code, 0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F)
        }
        ReasonCtx::PubAck | ReasonCtx::PubRec => {
            matches!(
                code,
                0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
            )
        }
        ReasonCtx::PubRel | ReasonCtx::PubComp => matches!(code, 0x00 | 0x92),
        ReasonCtx::SubAck => {
            matches!(
                code,
                0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
            )
        }
        ReasonCtx::UnsubAck => matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91),
        ReasonCtx::Disconnect => matches!(
            code,
            0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0x9F | 0xA0..=0xA2
        ),
        ReasonCtx::Auth => matches!(code, 0x00 | 0x18 | 0x19),
    }
}

/// v3 CONNACK return code for a reason (3.1/3.1.1 only know 0..=5).
pub fn v3_connack_code(r: ReasonCode) -> u8 {
    use ReasonCode::*;
    match r {
        Success => 0,
        UnsupportedProtocolVersion => 1,
        ClientIdentifierNotValid => 2,
        BadUserNameOrPassword | BadAuthenticationMethod => 4,
        NotAuthorized | Banned => 5,
        // Everything else means "try later / elsewhere" to a v3 client.
        _ => 3,
    }
}

/// Reason for a v3 CONNACK return code; `None` for the reserved values 6..=255.
pub fn from_v3_connack_code(c: u8) -> Option<ReasonCode> {
    use ReasonCode::*;
    Some(match c {
        0 => Success,
        1 => UnsupportedProtocolVersion,
        2 => ClientIdentifierNotValid,
        3 => ServerUnavailable,
        4 => BadUserNameOrPassword,
        5 => NotAuthorized,
        _ => return None,
    })
}

/// v3 SUBACK return code: granted QoS or 0x80 for any failure.
pub fn v3_suback_code(r: ReasonCode) -> u8 {
    match r {
        ReasonCode::Success => 0,
        ReasonCode::GrantedQoS1 => 1,
        ReasonCode::GrantedQoS2 => 2,
        _ => 0x80,
    }
}

pub fn from_v3_suback_code(c: u8) -> Option<ReasonCode> {
    Some(match c {
        0 => ReasonCode::Success,
        1 => ReasonCode::GrantedQoS1,
        2 => ReasonCode::GrantedQoS2,
        0x80 => ReasonCode::UnspecifiedError,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_u8_round_trips_every_defined_code() {
        let mut defined = 0;
        for b in 0..=255u8 {
            if let Some(r) = ReasonCode::from_u8(b) {
                assert_eq!(r as u8, b);
                defined += 1;
            }
        }
        assert_eq!(defined, 43);
    }

    #[test]
    fn allowed_sets_follow_spec() {
        assert!(allowed(ReasonCtx::ConnAck, 0x84));
        assert!(!allowed(ReasonCtx::ConnAck, 0x04));
        assert!(allowed(ReasonCtx::PubAck, 0x10));
        assert!(!allowed(ReasonCtx::PubRel, 0x10));
        assert!(allowed(ReasonCtx::PubComp, 0x92));
        assert!(allowed(ReasonCtx::SubAck, 0x02));
        assert!(!allowed(ReasonCtx::SubAck, 0x11));
        assert!(allowed(ReasonCtx::UnsubAck, 0x11));
        assert!(allowed(ReasonCtx::Disconnect, 0x04));
        assert!(!allowed(ReasonCtx::Disconnect, 0x84));
        assert!(!allowed(ReasonCtx::Disconnect, 0x8C));
        assert!(allowed(ReasonCtx::Auth, 0x18));
        assert!(!allowed(ReasonCtx::Auth, 0x80));
    }
}
