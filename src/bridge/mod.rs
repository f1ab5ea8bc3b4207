//! MQTT bridges to other brokers (mosquitto's `connection` blocks).
//!
//! Each bridge is two MQTT client links driven by one thread (`runtime`): the local side is an ordinary
//! persistent session (`bridge/NAME`) on this broker, reached over a loopback connection to a plain MQTT
//! listener, subscribed to the `out` rules with No Local; the remote side is a client of the other broker,
//! subscribed to the `in` rules (No Local on v5, the 0x80 bridge flag on 3.1.1). The decisions are sans-io
//! (`core`, `link`, `topic_map`); see `core` for the acknowledgement and queueing rules.

pub mod config;
pub mod core;
pub mod link;
pub mod runtime;
pub mod status;
pub mod topic_map;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use config::BridgeConfig;
pub use status::BridgeStatus;

use crate::codec::ProtocolVersion;
use crate::config::{Config, ListenerProtocol};

/// The bridges' threads, joined at shutdown.
#[derive(Debug, Default)]
pub struct Bridges {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Bridges {
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Where the local side connects: the first plain MQTT listener (an unspecified address becomes loopback).
fn local_address(cfg: &Config, bound: &[SocketAddr]) -> Option<SocketAddr> {
    let addr = cfg
        .all_listeners()
        .into_iter()
        .zip(bound)
        .find(|(l, _)| l.protocol == ListenerProtocol::Mqtt && !l.is_tls())
        .map(|(_, &a)| a)?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Some(SocketAddr::new(ip, addr.port()))
}

/// A rustls client config: the CA file verifies the remote, certfile + keyfile are our client certificate.
fn tls_client(b: &BridgeConfig) -> Result<Option<runtime::TlsClient>, String> {
    let Some(cafile) = &b.cafile else {
        return Ok(None);
    };
    let ctx = |m: String| format!("bridge {:?}: {m}", b.name);
    let mut roots = rustls::RootCertStore::empty();
    for ca in crate::stream::tls::load_certs(cafile).map_err(ctx)? {
        roots
            .add(ca)
            .map_err(|e| ctx(format!("cafile {}: {e}", cafile.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ctx(format!("TLS versions: {e}")))?
        .with_root_certificates(roots);
    let config = match (&b.certfile, &b.keyfile) {
        (Some(cert), Some(key)) => {
            let chain = crate::stream::tls::load_certs(cert).map_err(ctx)?;
            let key = crate::stream::tls::load_key(key).map_err(ctx)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ctx(format!("certfile/keyfile: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(runtime::TlsClient {
        config: Arc::new(config),
        server_name: b.tls_server_name.clone(),
    }))
}

/// Starts one thread per configured bridge. Errors (no plain listener, unreadable TLS files) refuse the start.
pub fn spawn(
    cfg: &Config,
    bound: &[SocketAddr],
    metrics: &crate::metrics::Metrics,
    shutdown: Arc<AtomicBool>,
) -> Result<Bridges, String> {
    let mut out = Bridges::default();
    if cfg.bridge.is_empty() {
        return Ok(out);
    }
    let local = local_address(cfg, bound).ok_or(
        "bridge: the local side needs a plain MQTT listener (e.g. listen = [\"127.0.0.1:1883\"])",
    )?;
    if !cfg.persistence {
        tracing::warn!(
            "bridges run without persistence: outbound messages queued during a remote outage are lost on restart"
        );
    }
    for (i, b) in cfg.bridge.iter().enumerate() {
        let r = b.resolve()?;
        let tls = tls_client(b)?;
        let status = Arc::new(BridgeStatus::new(&b.name));
        metrics.add_bridge(status.clone());
        let local_link = link::Link::new(link::LinkParams {
            // v5 locally: No Local keeps what the bridge publishes here from going back out.
            version: ProtocolVersion::V5,
            bridge_flag: false,
            client_id: b.local_client_id(),
            username: b.local_username.clone(),
            password: b.local_password.clone(),
            clean_start: false,
            keep_alive: 60,
            receive_maximum: b.max_inflight,
            subscriptions: r.map.local_subscriptions(),
            max_packet_size: cfg.max_packet_size,
        });
        let remote_link = link::Link::new(link::LinkParams {
            version: r.version,
            bridge_flag: b.try_private,
            client_id: b.remote_client_id(),
            username: b.username.clone(),
            password: b.password.clone(),
            clean_start: b.clean_session,
            keep_alive: b.keepalive,
            receive_maximum: b.max_inflight,
            subscriptions: r.map.remote_subscriptions(),
            max_packet_size: cfg.max_packet_size,
        });
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let core = core::Bridge::new(
            b.name.clone(),
            r.map,
            local_link,
            remote_link,
            r.addresses,
            core::Backoff::new(r.restart_ms.0, r.restart_ms.1, seed),
            b.max_pending,
            status,
        );
        let shutdown = shutdown.clone();
        let t = std::thread::Builder::new()
            .name(format!("bridge-{}", b.name))
            .spawn(move || runtime::run(core, local, tls, shutdown))
            .map_err(|e| format!("bridge {:?}: cannot start its thread: {e}", b.name))?;
        tracing::info!(bridge = %b.name, local = %local, "bridge started");
        out.threads.push(t);
    }
    Ok(out)
}
