//! `[[bridge]]` tables: mosquitto's `connection` block with TOML spelling. Checked at start; a bad value
//! refuses the start with the key and the reason.

use std::path::PathBuf;

use serde::Deserialize;

use super::topic_map::{TopicMap, TopicRule};
use crate::codec::ProtocolVersion;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// mosquitto's `connection NAME`: names the local session (`bridge/NAME`), `$SYS` topic and metrics label.
    pub name: String,
    /// `host:port` (port 1883, or 8883 with TLS, when left out), tried in order; after a working connection
    /// drops, the first is tried again first.
    pub addresses: Vec<String>,
    /// Client id on the remote; default `coremq.NAME`.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// "3.1.1" (or mosquitto's "mqttv311"), "3.1" ("mqttv31") or "5" ("mqttv50").
    #[serde(default = "default_protocol")]
    pub protocol_version: String,
    /// 3.1 / 3.1.1: send the bridge flag (0x80 | level) so the remote does not echo our messages back.
    #[serde(default = "yes")]
    pub try_private: bool,
    #[serde(default = "default_keepalive")]
    pub keepalive: u16,
    /// false (default): a persistent session on the remote, so what it queues for us survives an outage.
    #[serde(default)]
    pub clean_session: bool,
    /// `PATTERN [in|out|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]`, mosquitto's `topic` lines.
    pub topic: Vec<String>,
    /// Client id of the bridge's local persistent session; default `bridge/NAME`.
    #[serde(default)]
    pub local_client_id: Option<String>,
    /// Credentials for the local side, when the local listener requires them.
    #[serde(default)]
    pub local_username: Option<String>,
    #[serde(default)]
    pub local_password: Option<String>,
    /// TLS to the remote: the CA file to verify it with turns TLS on; certfile + keyfile add a client certificate.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    /// Name to verify the remote's certificate against; default the host of the address.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Reconnect back-off: `[base, cap]` seconds (mosquitto's `restart_timeout base cap`), doubled per failed
    /// round over the addresses, with jitter.
    #[serde(default = "default_restart")]
    pub restart_timeout: Vec<f64>,
    /// QoS 1 messages in flight on each link (our v5 Receive Maximum; also capped by the peer's).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Messages the bridge buffers per direction before it stops reading that side.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

fn default_protocol() -> String {
    "3.1.1".into()
}
fn yes() -> bool {
    true
}
fn default_keepalive() -> u16 {
    60
}
fn default_restart() -> Vec<f64> {
    vec![1.0, 30.0]
}
fn default_max_inflight() -> u16 {
    100
}
fn default_max_pending() -> usize {
    1000
}

/// What the runtime needs, checked.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub version: ProtocolVersion,
    pub map: TopicMap,
    /// `host:port` with the default port filled in.
    pub addresses: Vec<String>,
    pub restart_ms: (u64, u64),
}

impl BridgeConfig {
    pub fn is_tls(&self) -> bool {
        self.cafile.is_some()
    }

    pub fn remote_client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("coremq.{}", self.name))
    }

    pub fn local_client_id(&self) -> String {
        self.local_client_id
            .clone()
            .unwrap_or_else(|| format!("bridge/{}", self.name))
    }

    /// Checks every key; the error names the bridge and the key.
    pub fn resolve(&self) -> Result<Resolved, String> {
        let ctx = |key: &str, why: String| format!("bridge {:?}: `{key}` {why}", self.name);
        if self.name.is_empty() || self.name.contains(['/', '+', '#']) {
            return Err(ctx(
                "name",
                "must be non-empty, without '/', '+' or '#' (it names a $SYS topic level)".into(),
            ));
        }
        let version = match self.protocol_version.as_str() {
            "3.1.1" | "mqttv311" | "4" => ProtocolVersion::V3_1_1,
            "3.1" | "mqttv31" | "3" => ProtocolVersion::V3_1,
            "5" | "5.0" | "mqttv50" | "mqttv5" => ProtocolVersion::V5,
            v => {
                return Err(ctx(
                    "protocol_version",
                    format!("is {v:?}; use \"3.1.1\", \"3.1\" or \"5\""),
                ))
            }
        };
        if self.addresses.is_empty() {
            return Err(ctx("addresses", "must name at least one host:port".into()));
        }
        let default_port = if self.is_tls() { 8883 } else { 1883 };
        let mut addresses = Vec::new();
        for a in &self.addresses {
            let with_port = match a.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && !port.contains(']') => {
                    port.parse::<u16>()
                        .ok()
                        .filter(|&p| p != 0)
                        .ok_or_else(|| {
                            ctx("addresses", format!("{a:?}: port {port:?} is not 1-65535"))
                        })?;
                    a.clone()
                }
                _ if !a.is_empty() && !a.contains(char::is_whitespace) => {
                    format!("{a}:{default_port}")
                }
                _ => return Err(ctx("addresses", format!("{a:?} is not host[:port]"))),
            };
            addresses.push(with_port);
        }
        if self.topic.is_empty() {
            return Err(ctx("topic", "must have at least one rule".into()));
        }
        let rules = self
            .topic
            .iter()
            .map(|t| TopicRule::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ctx("topic", e))?;
        if self.keepalive != 0 && self.keepalive < 2 {
            return Err(ctx(
                "keepalive",
                "must be 0 (off) or at least 2 seconds".into(),
            ));
        }
        if self.password.is_some() && self.username.is_none() && version != ProtocolVersion::V5 {
            return Err(ctx("password", "needs `username` before MQTT 5".into()));
        }
        if self.certfile.is_some() != self.keyfile.is_some() {
            return Err(ctx("certfile", "and `keyfile` go together".into()));
        }
        if (self.certfile.is_some() || self.tls_server_name.is_some()) && !self.is_tls() {
            return Err(ctx(
                "cafile",
                "is needed for TLS (certfile/keyfile/tls_server_name are set)".into(),
            ));
        }
        let restart_ms = match self.restart_timeout[..] {
            [base, cap] if base > 0.0 && cap >= base && cap <= 86_400.0 => {
                ((base * 1000.0) as u64, (cap * 1000.0) as u64)
            }
            _ => {
                return Err(ctx(
                    "restart_timeout",
                    "must be [base, cap] seconds with 0 < base <= cap <= 86400".into(),
                ))
            }
        };
        if self.max_inflight == 0 {
            return Err(ctx("max_inflight", "must be at least 1".into()));
        }
        if !(1..=1_000_000).contains(&self.max_pending) {
            return Err(ctx("max_pending", "must be between 1 and 1000000".into()));
        }
        if self.remote_client_id().is_empty() || self.local_client_id().is_empty() {
            return Err(ctx("client_id", "may not be empty".into()));
        }
        Ok(Resolved {
            version,
            map: TopicMap { rules },
            addresses,
            restart_ms,
        })
    }
}

/// All bridges: each valid, names unique.
pub fn validate(bridges: &[BridgeConfig]) -> Result<(), String> {
    for (i, b) in bridges.iter().enumerate() {
        b.resolve()?;
        if bridges[..i].iter().any(|o| o.name == b.name) {
            return Err(format!("bridge {:?}: `name` is used twice", b.name));
        }
        if bridges[..i]
            .iter()
            .any(|o| o.local_client_id() == b.local_client_id())
        {
            return Err(format!(
                "bridge {:?}: `local_client_id` is used twice",
                b.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::from_toml_str(extra).map_err(|e| e.to_string())
    }

    #[test]
    fn a_bridge_block_parses_with_mosquitto_defaults() {
        let c = parse(
            r#"
[[bridge]]
name = "up"
addresses = ["127.0.0.1:1884", "backup.example"]
topic = ["sensors/# out 1", "cmd/# in 1 \"\" site/"]
"#,
        )
        .unwrap();
        let b = &c.bridge[0];
        assert_eq!(b.local_client_id(), "bridge/up");
        assert_eq!(b.remote_client_id(), "coremq.up");
        assert!(b.try_private && !b.clean_session);
        let r = b.resolve().unwrap();
        assert_eq!(r.addresses, vec!["127.0.0.1:1884", "backup.example:1883"]);
        assert_eq!(r.map.rules.len(), 2);
        assert_eq!(r.restart_ms, (1000, 30_000));
    }

    #[test]
    fn bad_bridge_config_refuses_start_with_key_and_reason() {
        for (body, want) in [
            (
                "name = \"a\"\naddresses = []\ntopic = [\"#\"]",
                "`addresses`",
            ),
            (
                "name = \"a\"\naddresses = [\"h:0\"]\ntopic = [\"#\"]",
                "port",
            ),
            ("name = \"a\"\naddresses = [\"h\"]\ntopic = []", "`topic`"),
            (
                "name = \"a\"\naddresses = [\"h\"]\ntopic = [\"# sideways\"]",
                "direction",
            ),
            (
                "name = \"a/b\"\naddresses = [\"h\"]\ntopic = [\"#\"]",
                "`name`",
            ),
            (
                "name = \"a\"\naddresses = [\"h\"]\ntopic = [\"#\"]\nprotocol_version = \"6\"",
                "protocol_version",
            ),
            (
                "name = \"a\"\naddresses = [\"h\"]\ntopic = [\"#\"]\nrestart_timeout = [5, 1]",
                "restart_timeout",
            ),
            (
                "name = \"a\"\naddresses = [\"h\"]\ntopic = [\"#\"]\ncertfile = \"c\"",
                "keyfile",
            ),
            (
                "name = \"a\"\naddresses = [\"h\"]\ntopic = [\"#\"]\nnope = 1",
                "unknown field",
            ),
        ] {
            let e = parse(&format!("[[bridge]]\n{body}\n")).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
        let twice = "[[bridge]]\nname = \"a\"\naddresses = [\"h\"]\ntopic = [\"#\"]\n";
        let e = parse(&format!("{twice}{twice}")).unwrap_err();
        assert!(e.contains("used twice"), "{e}");
    }
}
