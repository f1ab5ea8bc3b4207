//! Broker configuration: an embedded, documented default (`src/default_config.toml`), an optional TOML file, and
//! command-line overrides. Unknown keys and out-of-range values are rejected at start with the key named.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::broker::shard::OverflowPolicy;

pub const DEFAULT_CONFIG: &str = include_str!("default_config.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub shards: usize,
    pub cpus: Vec<usize>,
    pub pin: bool,
    pub max_connections: u64,
    pub max_packet_size: u32,
    pub max_keepalive: u16,
    pub connect_timeout: u32,
    pub max_inflight: u16,
    pub max_inbound_qos2: u16,
    pub max_queued_messages: usize,
    pub queue_overflow: OverflowPolicy,
    pub offline_overflow: OverflowPolicy,
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
        if self.listen.is_empty() {
            return bad("listen", "must name at least one address");
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
        Ok(())
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
}
