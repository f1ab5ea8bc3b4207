//! Broker configuration: an embedded, documented default (`src/default_config.toml`), an optional TOML file, and
//! command-line overrides. Unknown keys and out-of-range values are rejected at start with the key named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::broker::shard::{OverflowPolicy, QueueFullPolicy};

pub const DEFAULT_CONFIG: &str = include_str!("default_config.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Plain MQTT listeners with the global security settings (shorthand for `[[listeners]]` tables).
    pub listen: Vec<SocketAddr>,
    /// Listeners with their own protocol, TLS and authentication settings.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// mosquitto-format password file (`user:$7$...` lines) for every listener that does not name its own.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// mosquitto-format ACL file; none = every client may read and write every topic it can name.
    #[serde(default)]
    pub acl_file: Option<PathBuf>,
    /// Anonymous clients for listeners that do not say; none = allowed only on a loopback listener with no
    /// password file (mosquitto 2.0's rule: a broker reachable from the network is not open by accident).
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// v5 SUBACK reason code for a filter the ACL gives no read access under (0x87 Not authorized, or 0x80
    /// Unspecified error for clients that expect mosquitto-like codes).
    #[serde(default = "default_subscribe_denied")]
    pub acl_subscribe_denied_reason: u8,
    pub shards: usize,
    pub cpus: Vec<usize>,
    pub pin: bool,
    pub max_connections: u64,
    pub max_packet_size: u32,
    pub max_keepalive: u16,
    pub connect_timeout: u32,
    pub max_inflight: u16,
    pub max_inbound_qos2: u16,
    /// v5 topic aliases per connection and direction (see `src/broker/shard/alias.rs`).
    #[serde(default = "default_topic_alias_maximum")]
    pub topic_alias_maximum: u16,
    /// Response Information for v5 clients that request it; empty = not sent.
    #[serde(default)]
    pub response_information: String,
    /// Server redirection: every client is refused with this Server Reference; empty = off.
    #[serde(default)]
    pub server_reference: String,
    #[serde(default)]
    pub redirect: Redirect,
    pub max_queued_messages: usize,
    pub queue_overflow: OverflowPolicy,
    pub offline_overflow: OverflowPolicy,
    pub max_offline_bytes_per_session: u64,
    pub max_offline_messages_per_session: usize,
    /// 0 = sized at start from the `[store]` budget and the data directory's free space.
    pub max_offline_bytes_per_shard: u64,
    pub persistent_queue_full: QueueFullPolicy,
    pub qos0_overflow: OverflowPolicy,
    pub max_out_buffer: usize,
    pub max_subscriptions_per_session: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub mesh_capacity: usize,
    pub io_memory: usize,
    pub listen_backlog: i32,
    pub idle_spin_us: u64,
    pub log_level: String,
    pub persistence: bool,
    pub data_dir: std::path::PathBuf,
    pub store: crate::store::StoreConfig,
    /// HTTP endpoint for `/metrics`, `/healthz` and `/readyz`; none = off.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds between `$SYS/broker/...` retained updates; 0 = off.
    pub sys_interval: u32,
    /// Socket backend of the shards (`server::net`).
    #[serde(default)]
    pub io: IoMode,
    /// MQTT bridges to other brokers (`[[bridge]]` tables, `src/bridge`).
    #[serde(default)]
    pub bridge: Vec<crate::bridge::BridgeConfig>,
}

/// `io`: which socket backend the shards run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring where the kernel and the process allow it, else epoll (the reason is logged once).
    Auto,
    /// io_uring; the start is refused if it is not available.
    Uring,
    /// The default (measured: see README, "Socket backends").
    #[default]
    Epoll,
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "uring" | "io_uring" => Ok(IoMode::Uring),
            "epoll" => Ok(IoMode::Epoll),
            _ => Err(format!("io must be auto, uring or epoll, not {s:?}")),
        }
    }
}

/// What a listener speaks above TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    #[default]
    Mqtt,
    /// MQTT over WebSocket (mosquitto spells it `websockets`; `websocket` is accepted too).
    #[serde(alias = "websocket")]
    Websockets,
}

/// One `[[listeners]]` table. The TLS and authentication keys carry mosquitto's names.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// WebSocket listeners: the HTTP path clients upgrade on.
    #[serde(default = "default_ws_path")]
    pub path: String,
    /// Server certificate chain (PEM). With `keyfile`, the listener speaks TLS.
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are verified against.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// Refuse TLS clients without a certificate signed by `cafile` (mutual TLS).
    #[serde(default)]
    pub require_certificate: bool,
    /// The client certificate's subject CN becomes the user name (for ACLs); no password is asked for.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// Overrides the global `password_file` for this listener.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Overrides the global `allow_anonymous` for this listener.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
}

fn default_subscribe_denied() -> u8 {
    0x87
}

/// How `server_reference` refuses clients (v5 CONNACK reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Redirect {
    /// 0x9C Use another server (temporary).
    #[default]
    UseAnother,
    /// 0x9D Server moved (permanent).
    Moved,
}

fn default_topic_alias_maximum() -> u16 {
    10
}

fn default_ws_path() -> String {
    "/mqtt".into()
}

impl ListenerConfig {
    pub fn plain(address: SocketAddr) -> Self {
        ListenerConfig {
            address,
            protocol: ListenerProtocol::Mqtt,
            path: default_ws_path(),
            certfile: None,
            keyfile: None,
            cafile: None,
            require_certificate: false,
            use_identity_as_username: false,
            password_file: None,
            allow_anonymous: None,
        }
    }

    pub fn is_tls(&self) -> bool {
        self.certfile.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid config: `{key}` {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// A partial config: the file's keys, laid over the defaults.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        base.insert(k, v);
    }
}

impl Config {
    pub fn default_config() -> Config {
        Self::from_toml_str("").expect("embedded default config is valid")
    }

    /// Defaults overlaid with `text` (the contents of a config file).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, "text")
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut base: toml::Table = DEFAULT_CONFIG
            .parse()
            .expect("embedded default config parses");
        let over: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: origin.into(),
                message: e.to_string(),
            })?;
        merge(&mut base, over);
        let cfg: Config = toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: origin.into(),
                message: e.to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        }
        if self.listen.is_empty() && self.listeners.is_empty() {
            return bad(
                "listen",
                "must name at least one address (or give a [[listeners]] table)",
            );
        }
        if !matches!(self.acl_subscribe_denied_reason, 0x80 | 0x83 | 0x87 | 0x8F) {
            return bad(
                "acl_subscribe_denied_reason",
                format!(
                    "is {:#04x}; use a SUBACK failure code: 0x80, 0x83, 0x87 or 0x8F",
                    self.acl_subscribe_denied_reason
                ),
            );
        }
        for l in &self.listeners {
            let at = l.address;
            if l.certfile.is_some() != l.keyfile.is_some() {
                return bad(
                    "listeners",
                    format!("{at}: `certfile` and `keyfile` go together"),
                );
            }
            if (l.cafile.is_some() || l.require_certificate) && !l.is_tls() {
                return bad(
                    "listeners",
                    format!(
                        "{at}: `cafile` and `require_certificate` need `certfile` and `keyfile`"
                    ),
                );
            }
            if l.require_certificate && l.cafile.is_none() {
                return bad(
                    "listeners",
                    format!("{at}: `require_certificate` needs a `cafile` to verify client certificates against"),
                );
            }
            if l.use_identity_as_username && !l.require_certificate {
                return bad(
                    "listeners",
                    format!("{at}: `use_identity_as_username` needs `require_certificate = true`"),
                );
            }
            if l.protocol == ListenerProtocol::Websockets
                && !l.path.starts_with('/')
                && l.path != "*"
            {
                return bad(
                    "listeners",
                    format!(
                        "{at}: `path` must start with '/' (or be \"*\": any path), got {:?}",
                        l.path
                    ),
                );
            }
        }
        if self.shards > 64 {
            return bad(
                "shards",
                format!("is {}, at most 64 are supported", self.shards),
            );
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if !(64..=268_435_455).contains(&self.max_packet_size) {
            return bad("max_packet_size", "must be between 64 and 268435455 bytes");
        }
        if self.idle_spin_us > 10_000 {
            return bad("idle_spin_us", "must be at most 10000 (10 ms)");
        }
        if self.sys_interval > 86_400 {
            return bad("sys_interval", "must be at most 86400 seconds (0 = off)");
        }
        if self.connect_timeout == 0 {
            return bad("connect_timeout", "must be at least 1 second");
        }
        if self.max_inflight == 0 {
            return bad("max_inflight", "must be at least 1");
        }
        if self.max_inbound_qos2 == 0 {
            return bad("max_inbound_qos2", "must be at least 1");
        }
        if self.max_queued_messages == 0 {
            return bad("max_queued_messages", "must be at least 1");
        }
        if self.offline_overflow == OverflowPolicy::Backpressure {
            return bad("offline_overflow", "cannot be \"backpressure\": an offline session reads nothing; use \"drop-newest\" or \"drop-oldest\"");
        }
        if !(1024..=u32::MAX as u64).contains(&self.max_offline_bytes_per_session) {
            return bad(
                "max_offline_bytes_per_session",
                "must be between 1024 bytes and 4 GiB - 1",
            );
        }
        if self.max_offline_messages_per_session == 0 {
            return bad("max_offline_messages_per_session", "must be at least 1");
        }
        if self.qos0_overflow == OverflowPolicy::DropOldest {
            return bad("qos0_overflow", "must be \"drop-newest\" or \"backpressure\" (the oldest queued message may be a QoS 1/2 one)");
        }
        if self.max_out_buffer < 1024 {
            return bad("max_out_buffer", "must be at least 1024 bytes");
        }
        if self.mesh_capacity < 16 {
            return bad("mesh_capacity", "must be at least 16");
        }
        if self.listen_backlog < 1 {
            return bad("listen_backlog", "must be at least 1");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return bad(
                "log_level",
                format!("{:?} is not a valid log filter", self.log_level),
            );
        }
        if let Err(reason) = crate::bridge::config::validate(&self.bridge) {
            return bad("bridge", reason);
        }
        Ok(())
    }
}

impl Config {
    /// Every listener: the `listen` addresses as plain MQTT listeners, then the `[[listeners]]` tables.
    pub fn all_listeners(&self) -> Vec<ListenerConfig> {
        let mut all: Vec<ListenerConfig> = self
            .listen
            .iter()
            .map(|&a| ListenerConfig::plain(a))
            .collect();
        all.extend(self.listeners.iter().cloned());
        all
    }

    /// The password file in force on a listener.
    pub fn password_file_for<'a>(&'a self, l: &'a ListenerConfig) -> Option<&'a Path> {
        l.password_file.as_deref().or(self.password_file.as_deref())
    }

    /// Whether a listener lets clients in without a user name: its own setting, else the global one, else only
    /// on a loopback address with no password file.
    pub fn anonymous_allowed(&self, l: &ListenerConfig) -> bool {
        l.allow_anonymous
            .or(self.allow_anonymous)
            .unwrap_or_else(|| l.address.ip().is_loopback() && self.password_file_for(l).is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_listens_on_1883() {
        let c = Config::default_config();
        assert_eq!(
            c.listen,
            vec!["127.0.0.1:1883".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.queue_overflow, OverflowPolicy::Backpressure);
    }

    #[test]
    fn file_overrides_defaults() {
        let c =
            Config::from_toml_str("max_inflight = 7\nqueue_overflow = \"drop-oldest\"").unwrap();
        assert_eq!(c.max_inflight, 7);
        assert_eq!(c.queue_overflow, OverflowPolicy::DropOldest);
        assert_eq!(c.max_queued_messages, 1000);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml_str("max_inflght = 7")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_inflght"), "{e}");
        let e = Config::from_toml_str("max_inflight = \"lots\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_inflight"), "{e}");
        let e = Config::from_toml_str("shards = 65")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`shards`"), "{e}");
        let e = Config::from_toml_str("offline_overflow = \"backpressure\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("offline_overflow"), "{e}");
        let e = Config::from_toml_str("qos0_overflow = \"drop-oldest\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("qos0_overflow"), "{e}");
        let c = Config::from_toml_str("qos0_overflow = \"backpressure\"").unwrap();
        assert_eq!(c.qos0_overflow, OverflowPolicy::Backpressure);
        let e = Config::from_toml_str("listen = [\"nope\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn websocket_path_any() {
        let c = Config::from_toml_str(
            "[[listeners]]\naddress = \"127.0.0.1:8080\"\nprotocol = \"websockets\"\npath = \"*\"",
        )
        .expect("\"*\" is any path");
        assert_eq!(c.listeners[0].path, "*");
    }

    #[test]
    fn listeners_and_anonymous_rules() {
        let c = Config::from_toml_str(
            r#"
listen = ["127.0.0.1:1883"]
[[listeners]]
address = "0.0.0.0:8883"
certfile = "s.crt"
keyfile = "s.key"
[[listeners]]
address = "0.0.0.0:8080"
protocol = "websockets"
allow_anonymous = true
"#,
        )
        .unwrap();
        let all = c.all_listeners();
        assert_eq!(all.len(), 3);
        assert!(c.anonymous_allowed(&all[0]), "loopback, no password file");
        assert!(!c.anonymous_allowed(&all[1]), "network address, not said");
        assert!(all[1].is_tls());
        assert!(c.anonymous_allowed(&all[2]), "said explicitly");
        assert_eq!(all[2].path, "/mqtt");
        let c = Config::from_toml_str("password_file = \"p\"").unwrap();
        assert!(
            !c.anonymous_allowed(&c.all_listeners()[0]),
            "a password file closes loopback too"
        );
        for (bad, key) in [
            ("[[listeners]]\naddress = \"0.0.0.0:1\"\ncertfile = \"a\"", "keyfile"),
            ("[[listeners]]\naddress = \"0.0.0.0:1\"\ncertfile = \"a\"\nkeyfile = \"b\"\nrequire_certificate = true", "cafile"),
            ("[[listeners]]\naddress = \"0.0.0.0:1\"\nprotocol = \"websockets\"\npath = \"mqtt\"", "path"),
            ("[[listeners]]\naddress = \"0.0.0.0:1\"\nprotocol = \"http\"", "protocol"),
        ] {
            let e = Config::from_toml_str(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}
