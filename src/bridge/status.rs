//! What a bridge shows of itself: written by its thread (relaxed atomics), read by the metrics endpoint and
//! shard 0's `$SYS` publisher.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct BridgeStatus {
    pub name: String,
    /// The remote link is up (CONNACK accepted).
    pub connected: AtomicBool,
    /// Times the remote link came up again after it had been up.
    pub reconnects: AtomicU64,
    /// Connection attempts to the remote that failed (resolve, TCP, TLS, or CONNACK refused).
    pub connect_failures: AtomicU64,
    /// Outbound messages the bridge holds: taken from the local session, not yet acknowledged by the remote.
    /// (While the remote is down the local session is offline, and its backlog is in the shard's queue and
    /// gauges, `coremq_queued_messages`.)
    pub queued: AtomicU64,
    pub forwarded_out: AtomicU64,
    pub forwarded_in: AtomicU64,
}

impl BridgeStatus {
    pub fn new(name: &str) -> BridgeStatus {
        BridgeStatus {
            name: name.to_string(),
            ..BridgeStatus::default()
        }
    }

    /// mosquitto's `$SYS/broker/connection/NAME/state` (1 connected, 0 not), retained.
    pub fn sys_topics(&self) -> Vec<(String, String)> {
        let state = if self.connected.load(Relaxed) {
            "1"
        } else {
            "0"
        };
        vec![(
            format!("$SYS/broker/connection/{}/state", self.name),
            state.to_string(),
        )]
    }
}

/// The bridges' Prometheus families (appended to `/metrics`).
pub fn render(bridges: &[std::sync::Arc<BridgeStatus>], out: &mut String) {
    if bridges.is_empty() {
        return;
    }
    type Get = fn(&BridgeStatus) -> u64;
    let families: [(&str, &str, &str, Get); 6] = [
        (
            "coremq_bridge_connected",
            "gauge",
            "1 while the bridge's remote link is up.",
            |b| b.connected.load(Relaxed) as u64,
        ),
        (
            "coremq_bridge_queued_messages",
            "gauge",
            "Outbound messages held by the bridge, not yet acknowledged by the remote.",
            |b| b.queued.load(Relaxed),
        ),
        (
            "coremq_bridge_reconnects_total",
            "counter",
            "Times the remote link came up again after a loss.",
            |b| b.reconnects.load(Relaxed),
        ),
        (
            "coremq_bridge_connect_failures_total",
            "counter",
            "Failed connection attempts to the remote.",
            |b| b.connect_failures.load(Relaxed),
        ),
        (
            "coremq_bridge_forwarded_out_total",
            "counter",
            "Messages sent to the remote.",
            |b| b.forwarded_out.load(Relaxed),
        ),
        (
            "coremq_bridge_forwarded_in_total",
            "counter",
            "Messages from the remote published locally.",
            |b| b.forwarded_in.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for b in bridges {
            let label = b.name.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "{name}{{bridge=\"{label}\"}} {}", get(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renders_one_series_per_bridge_and_the_sys_state() {
        let a = Arc::new(BridgeStatus::new("a"));
        let b = Arc::new(BridgeStatus::new("we\"ird"));
        a.connected.store(true, Relaxed);
        b.reconnects.store(3, Relaxed);
        let mut out = String::new();
        render(&[a.clone(), b.clone()], &mut out);
        assert!(
            out.contains("coremq_bridge_connected{bridge=\"a\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("coremq_bridge_connected{bridge=\"we\\\"ird\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("coremq_bridge_reconnects_total{bridge=\"we\\\"ird\"} 3\n"),
            "{out}"
        );
        assert_eq!(
            out.matches("# TYPE coremq_bridge_connected gauge").count(),
            1
        );
        assert_eq!(
            a.sys_topics(),
            vec![(
                "$SYS/broker/connection/a/state".to_string(),
                "1".to_string()
            )]
        );
        let mut none = String::new();
        render(&[], &mut none);
        assert!(none.is_empty());
    }
}
