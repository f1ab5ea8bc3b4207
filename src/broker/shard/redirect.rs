//! Server redirection (`server_reference` in the config): every CONNECT is refused and told where to go, for
//! moving clients between boxes. v5 clients get 0x9C Use another server or 0x9D Server moved with the Server
//! Reference [MQTT-4.11]; 3.1/3.1.1 have no way to carry a reference and get Server unavailable.

use super::*;

impl Shard {
    /// Refuse the CONNECT if redirection is on. Returns whether it was refused.
    pub(super) fn redirect(&mut self, key: ConnKey, protocol: ProtocolVersion) -> bool {
        if self.cfg.server_reference.is_empty() {
            return false;
        }
        if protocol != ProtocolVersion::V5 {
            self.connack_error(key, ReasonCode::ServerUnavailable);
            return true;
        }
        let reason = if self.cfg.server_moved {
            ReasonCode::ServerMoved
        } else {
            ReasonCode::UseAnotherServer
        };
        let properties = Some(Box::new(Properties {
            server_reference: Some(ByteString::from(self.cfg.server_reference.as_str())),
            ..Properties::default()
        }));
        self.send_raw(
            key,
            &Packet::ConnAck(ConnAck {
                session_present: false,
                reason,
                properties,
            }),
            ProtocolVersion::V5,
        );
        self.close(key, false, None);
        true
    }
}
