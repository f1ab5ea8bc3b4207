//! Heap bytes an idle TLS connection's layer holds after its handshake and one CONNECT/CONNACK exchange,
//! measured with a counting global allocator (the only test in this binary, so nothing else allocates).
//!
//! Prints the figure for coremq's listener config and for rustls' defaults (session cache, two TLS 1.3
//! tickets per connection) and checks coremq's is the smaller and under a bound.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use common::certs::TestPki;
use coremq::config::ListenerConfig;
use coremq::stream::tls::{tls_factory, TlsLayer};
use coremq::stream::Layer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

const CONNECT: &[u8] = &[
    0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, b'c',
];
const CONNACK: &[u8] = &[0x20, 0x02, 0x00, 0x00];

fn client_config(
    pki: &TestPki,
    mtls: bool,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(if mtls {
        let chain = CertificateDer::pem_file_iter(&pki.alice.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&pki.alice.key).unwrap())
            .unwrap()
    } else {
        b.with_no_client_auth()
    })
}

/// What a connection did before it went idle.
#[derive(Clone, Copy)]
struct Idle {
    /// The client sent one large (16,000-byte) message after the CONNECT.
    large_message: bool,
    /// `Layer::shrink` was called (the socket loop calls it when the connection has nothing pending).
    shrink: bool,
}

/// Handshake, CONNECT in, CONNACK out; returns the idle server layer.
fn connect(config: Arc<ServerConfig>, client_cfg: Arc<ClientConfig>, idle: Idle) -> TlsLayer {
    let mut layer = TlsLayer::new(config).unwrap();
    let mut client =
        ClientConnection::new(client_cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    std::io::Write::write_all(&mut client.writer(), CONNECT).unwrap();
    let mut app = BytesMut::new();
    loop {
        let mut up = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut up).unwrap();
        }
        let mut down = BytesMut::new();
        layer.read_wire(&up, &mut app, &mut down).unwrap();
        let mut s = &down[..];
        while !s.is_empty() {
            client.read_tls(&mut s).unwrap();
            client.process_new_packets().unwrap();
        }
        if up.is_empty() && down.is_empty() {
            break;
        }
    }
    assert_eq!(&app[..], CONNECT);
    let mut down = BytesMut::new();
    layer.write_app(CONNACK, &mut down).unwrap();
    let mut s = &down[..];
    while !s.is_empty() {
        client.read_tls(&mut s).unwrap();
        client.process_new_packets().unwrap();
    }
    if idle.large_message {
        let big = vec![0x30; 16_000];
        std::io::Write::write_all(&mut client.writer(), &big).unwrap();
        let mut up = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut up).unwrap();
        }
        app.clear();
        // Delivered in socket-sized reads.
        for part in up.chunks(4096) {
            layer.read_wire(part, &mut app, &mut down).unwrap();
        }
        assert_eq!(app.len(), big.len());
    }
    if idle.shrink {
        layer.shrink();
    }
    layer
}

/// Average live heap bytes per idle layer over `n` connections (the clients are dropped first).
fn idle_bytes(
    config: &Arc<ServerConfig>,
    client_cfg: &Arc<ClientConfig>,
    n: usize,
    idle: Idle,
) -> isize {
    // Warm up: lazily built tables and caches are not per connection.
    drop(connect(config.clone(), client_cfg.clone(), idle));
    let before = LIVE.load(Ordering::Relaxed);
    // Boxed, as the socket loop holds a layer (`Box<dyn Layer>`); the Vec of pointers is not counted.
    let mut layers: Vec<Box<TlsLayer>> = Vec::with_capacity(n);
    let vec_cost = LIVE.load(Ordering::Relaxed) - before;
    for _ in 0..n {
        layers.push(Box::new(connect(config.clone(), client_cfg.clone(), idle)));
    }
    let live = LIVE.load(Ordering::Relaxed) - before - vec_cost;
    drop(layers);
    live / n as isize
}

#[test]
fn idle_tls_connection_heap_bytes() {
    let pki = TestPki::new();
    let mut l = ListenerConfig::plain("127.0.0.1:8883".parse().unwrap());
    l.certfile = Some(pki.server.cert.clone());
    l.keyfile = Some(pki.server.key.clone());
    let ours = tls_factory(&l).unwrap().config();
    let mut defaults = (*ours).clone();
    defaults.send_tls13_tickets = 2;
    defaults.session_storage = rustls::server::ServerSessionMemoryCache::new(256);
    let defaults = Arc::new(defaults);
    l.cafile = Some(pki.ca.clone());
    l.require_certificate = true;
    let ours_mtls = tls_factory(&l).unwrap().config();

    let n = 200;
    let plain = Idle {
        large_message: false,
        shrink: true,
    };
    let mut figures = Vec::new();
    for (name, version) in [
        ("TLS1.3", &rustls::version::TLS13),
        ("TLS1.2", &rustls::version::TLS12),
    ] {
        let c = client_config(&pki, false, version);
        let ours_b = idle_bytes(&ours, &c, n, plain);
        let default_b = idle_bytes(&defaults, &c, n, plain);
        let mtls_b = idle_bytes(&ours_mtls, &client_config(&pki, true, version), n, plain);
        let large = Idle {
            large_message: true,
            shrink: false,
        };
        let large_b = idle_bytes(&ours, &c, n, large);
        let large_shrunk_b = idle_bytes(
            &ours,
            &c,
            n,
            Idle {
                shrink: true,
                ..large
            },
        );
        eprintln!(
            "{name}: idle heap bytes per TLS layer (Box<TlsLayer> of {} B included): coremq config {ours_b}, \
             mTLS {mtls_b}, rustls defaults {default_b}; after a 16,000 B message {large_b}, shrunk \
             {large_shrunk_b}",
            std::mem::size_of::<TlsLayer>()
        );
        figures.push((ours_b, default_b, mtls_b, large_b, large_shrunk_b));
    }
    for (ours_b, default_b, mtls_b, large_b, large_shrunk_b) in figures {
        assert!(ours_b > 0);
        assert!(ours_b <= default_b, "{ours_b} > {default_b}");
        // Bounded: the 4 KiB read buffer rustls keeps plus keys and state (and the client's chain for mTLS).
        assert!(ours_b < 12 * 1024, "{ours_b}");
        assert!(mtls_b < 14 * 1024, "{mtls_b}");
        // shrink() gives back the record-sized read buffer a large message left behind.
        assert!(large_b > ours_b + 8 * 1024, "{large_b}");
        assert!(large_shrunk_b < ours_b + 1024, "{large_shrunk_b}");
    }
}
