//! In-memory tests: a rustls `ClientConnection` talks to a `TlsLayer` through byte buffers, no sockets.

use std::sync::Arc;

use bytes::BytesMut;
use proptest::prelude::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;
use crate::config::ListenerConfig;
use crate::stream::{Layer, LayerError};

#[path = "../../../tests/common/certs.rs"]
mod certs;
use certs::{CertFiles, TestPki};

fn listener(pki: &TestPki, cafile: bool, require: bool) -> ListenerConfig {
    let mut l = ListenerConfig::plain("127.0.0.1:8883".parse().unwrap());
    l.certfile = Some(pki.server.cert.clone());
    l.keyfile = Some(pki.server.key.clone());
    l.cafile = cafile.then(|| pki.ca.clone());
    l.require_certificate = require;
    l
}

fn client_config(
    ca: &std::path::Path,
    cert: Option<&CertFiles>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match cert {
        Some(f) => {
            let chain = CertificateDer::pem_file_iter(&f.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(&f.key).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

fn client(cfg: Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap()
}

/// Both ends, with what each side received as application bytes.
struct Pair {
    client: ClientConnection,
    server: TlsLayer,
    server_app: BytesMut,
    client_app: Vec<u8>,
    client_error: Option<rustls::Error>,
}

impl Pair {
    fn new(layer: TlsLayer, client: ClientConnection) -> Pair {
        Pair {
            client,
            server: layer,
            server_app: BytesMut::new(),
            client_app: Vec::new(),
            client_error: None,
        }
    }

    /// Moves bytes both ways until neither side has anything to send. Wire bytes cross in chunks whose sizes
    /// come from `chunks` (cycled; empty = all at once). The server layer's error ends the exchange.
    fn pump_chunked(&mut self, chunks: &[usize]) -> Result<(), LayerError> {
        let mut k = 0;
        let mut next = |len: usize| {
            if chunks.is_empty() {
                len
            } else {
                k += 1;
                chunks[(k - 1) % chunks.len()].clamp(1, len)
            }
        };
        loop {
            let mut to_server = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut to_server).unwrap();
            }
            let mut to_client = BytesMut::new();
            let mut off = 0;
            let mut result = Ok(());
            while off < to_server.len() && result.is_ok() {
                let n = next(to_server.len() - off);
                result = self.server.read_wire(
                    &to_server[off..off + n],
                    &mut self.server_app,
                    &mut to_client,
                );
                off += n;
            }
            let mut off = 0;
            while off < to_client.len() && self.client_error.is_none() {
                let n = next(to_client.len() - off);
                let mut slice = &to_client[off..off + n];
                while !slice.is_empty() {
                    self.client.read_tls(&mut slice).unwrap();
                    match self.client.process_new_packets() {
                        Ok(st) => {
                            let mut buf = vec![0; st.plaintext_bytes_to_read()];
                            std::io::Read::read_exact(&mut self.client.reader(), &mut buf).unwrap();
                            self.client_app.extend_from_slice(&buf);
                        }
                        Err(e) => {
                            self.client_error = Some(e);
                            break;
                        }
                    }
                }
                off += n;
            }
            // The layer's last words (an alert) reached the client above.
            result?;
            if to_server.is_empty() && to_client.is_empty() {
                return Ok(());
            }
        }
    }

    fn pump(&mut self) -> Result<(), LayerError> {
        self.pump_chunked(&[])
    }

    /// The server layer's wire output for `app`, delivered to the client.
    fn server_send(&mut self, app: &[u8]) {
        let mut wire = BytesMut::new();
        self.server.write_app(app, &mut wire).unwrap();
        self.deliver_to_client(&wire);
    }

    fn deliver_to_client(&mut self, mut wire: &[u8]) {
        while !wire.is_empty() {
            self.client.read_tls(&mut wire).unwrap();
            let st = self.client.process_new_packets().unwrap();
            let mut buf = vec![0; st.plaintext_bytes_to_read()];
            std::io::Read::read_exact(&mut self.client.reader(), &mut buf).unwrap();
            self.client_app.extend_from_slice(&buf);
        }
    }
}

fn pair(l: &ListenerConfig, cfg: Arc<ClientConfig>) -> Pair {
    let factory = tls_factory(l).unwrap();
    Pair::new(factory.new_tls_layer().unwrap(), client(cfg))
}

/// A 3.1.1 CONNECT for client id "c".
const CONNECT: &[u8] = &[
    0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, b'c',
];
const CONNACK: &[u8] = &[0x20, 0x02, 0x00, 0x00];

#[test]
fn handshake_then_mqtt_both_ways_then_close_notify_tls13_and_tls12() {
    let pki = TestPki::new();
    let l = listener(&pki, false, false);
    for (version, name) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let mut p = pair(&l, client_config(&pki.ca, None, version));
        std::io::Write::write_all(&mut p.client.writer(), CONNECT).unwrap();
        assert!(!p.server.established());
        p.pump().unwrap();
        assert!(p.server.established());
        assert_eq!(p.server.protocol_version(), Some(name));
        assert_eq!(&p.server_app[..], CONNECT, "{name:?}");
        assert_eq!(p.server.peer_identity(), None);

        p.server_send(CONNACK);
        assert_eq!(p.client_app, CONNACK, "{name:?}");

        // Client close_notify: the layer reports end of stream.
        assert!(!p.server.peer_closed());
        p.client.send_close_notify();
        p.pump().unwrap();
        assert!(p.server.peer_closed(), "{name:?}");

        // Our close_notify reaches the client as an orderly close.
        let mut wire = BytesMut::new();
        p.server.close(&mut wire);
        assert!(!wire.is_empty());
        let mut slice = &wire[..];
        p.client.read_tls(&mut slice).unwrap();
        assert!(p.client.process_new_packets().unwrap().peer_has_closed());
    }
}

#[test]
fn large_application_writes_cross_in_records() {
    let pki = TestPki::new();
    let mut p = pair(
        &listener(&pki, false, false),
        client_config(&pki.ca, None, &rustls::version::TLS13),
    );
    p.pump().unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    p.server_send(&big);
    assert_eq!(p.client_app, big);
    // The client buffers at most 64 KiB: hand it a record's worth at a time.
    for part in big.chunks(16 * 1024) {
        std::io::Write::write_all(&mut p.client.writer(), part).unwrap();
        p.pump().unwrap();
    }
    assert_eq!(&p.server_app[..], &big[..]);
}

#[test]
fn mutual_tls_reports_the_client_certificate_cn() {
    let pki = TestPki::new();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut p = pair(
            &listener(&pki, true, true),
            client_config(&pki.ca, Some(&pki.alice), version),
        );
        std::io::Write::write_all(&mut p.client.writer(), CONNECT).unwrap();
        p.pump().unwrap();
        assert!(p.server.established());
        assert_eq!(p.server.peer_identity(), Some("alice"));
        assert_eq!(&p.server_app[..], CONNECT);
    }
}

#[test]
fn optional_client_certificate_may_be_omitted() {
    let pki = TestPki::new();
    let l = listener(&pki, true, false);
    let mut p = pair(&l, client_config(&pki.ca, None, &rustls::version::TLS13));
    p.pump().unwrap();
    assert!(p.server.established());
    assert_eq!(p.server.peer_identity(), None);
    // ... but one that is sent is still verified.
    let mut p = pair(
        &l,
        client_config(&pki.ca, Some(&pki.untrusted), &rustls::version::TLS13),
    );
    let e = p.pump().unwrap_err();
    assert!(
        matches!(e, LayerError::Handshake(ref m) if m.contains("unknown CA")),
        "{e}"
    );
}

/// The layer's error for `client`, with the alert the client got.
fn refused(l: &ListenerConfig, cfg: Arc<ClientConfig>) -> (String, Option<rustls::Error>) {
    let mut p = pair(l, cfg);
    match p.pump() {
        Err(LayerError::Handshake(m)) => {
            assert!(!p.server.established());
            (m, p.client_error)
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[test]
fn client_without_certificate_is_refused_when_required() {
    let pki = TestPki::new();
    let l = listener(&pki, true, true);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (why, client_err) = refused(&l, client_config(&pki.ca, None, version));
        assert!(why.contains("no certificate"), "{why}");
        // The client was told (an alert), not just dropped.
        assert!(
            matches!(client_err, Some(rustls::Error::AlertReceived(_))),
            "{client_err:?}"
        );
    }
}

#[test]
fn client_certificate_from_unknown_ca_is_refused() {
    let pki = TestPki::new();
    let (why, client_err) = refused(
        &listener(&pki, true, true),
        client_config(&pki.ca, Some(&pki.untrusted), &rustls::version::TLS13),
    );
    assert!(why.contains("unknown CA"), "{why}");
    assert!(
        matches!(
            client_err,
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA
            ))
        ),
        "{client_err:?}"
    );
}

#[test]
fn expired_client_certificate_is_refused() {
    let pki = TestPki::new();
    let (why, client_err) = refused(
        &listener(&pki, true, true),
        client_config(&pki.ca, Some(&pki.expired), &rustls::version::TLS12),
    );
    assert!(why.contains("expired"), "{why}");
    assert!(
        matches!(
            client_err,
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateExpired
            ))
        ),
        "{client_err:?}"
    );
}

#[test]
fn plain_mqtt_connect_on_the_tls_layer_is_a_handshake_error() {
    let pki = TestPki::new();
    let factory = tls_factory(&listener(&pki, false, false)).unwrap();
    let mut layer = factory.new_tls_layer().unwrap();
    let (mut app, mut out) = (BytesMut::new(), BytesMut::new());
    let e = layer.read_wire(CONNECT, &mut app, &mut out).unwrap_err();
    match e {
        LayerError::Handshake(m) => {
            assert!(m.contains("not TLS") && m.contains("plain MQTT"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(app.is_empty());
    assert!(!layer.established());
}

#[test]
fn garbage_after_the_handshake_is_an_error_not_a_panic() {
    let pki = TestPki::new();
    let l = listener(&pki, false, false);
    let mut undecryptable = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    undecryptable.extend_from_slice(&[0xaa; 0x20]);
    let garbage: [&[u8]; 4] = [
        // A whole application-data record whose contents do not decrypt.
        &undecryptable,
        // Not a record type at all.
        &[0xff; 64],
        // A record longer than TLS allows.
        &[0x17, 0x03, 0x03, 0xff, 0xff, 0x00],
        // Plain MQTT after the handshake.
        CONNECT,
    ];
    for junk in garbage {
        let mut p = pair(&l, client_config(&pki.ca, None, &rustls::version::TLS13));
        p.pump().unwrap();
        assert!(p.server.established());
        let (mut app, mut out) = (BytesMut::new(), BytesMut::new());
        let e = p.server.read_wire(junk, &mut app, &mut out);
        let e = e.expect_err(&format!("{junk:?}"));
        assert!(matches!(e, LayerError::Protocol(_)), "{junk:?}: {e:?}");
        assert!(app.is_empty());
    }
}

#[test]
fn garbage_during_the_handshake_is_a_handshake_error() {
    let pki = TestPki::new();
    let factory = tls_factory(&listener(&pki, false, false)).unwrap();
    // A ClientHello whose body is one byte: malformed, and the client is told (decode_error alert).
    let junk = [0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0xff];
    let mut layer = factory.new_tls_layer().unwrap();
    let (mut app, mut out) = (BytesMut::new(), BytesMut::new());
    let e = layer.read_wire(&junk, &mut app, &mut out).unwrap_err();
    assert!(matches!(e, LayerError::Handshake(_)), "{e:?}");
    assert_eq!(
        out.first(),
        Some(&0x15),
        "an alert record tells the client why: {e}"
    );
    // A ClientHello claiming 16 MiB: refused before it is buffered.
    let junk = [0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0xff, 0xff, 0xff, 0xff];
    let mut layer = factory.new_tls_layer().unwrap();
    let e = layer.read_wire(&junk, &mut app, &mut out).unwrap_err();
    assert!(
        matches!(e, LayerError::Handshake(ref m) if m.contains("TooLarge")),
        "{e:?}"
    );
    assert!(app.is_empty());
}

fn write(pki: &TestPki, name: &str, text: &str) -> std::path::PathBuf {
    let p = pki.path(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn factory_errors_name_the_file_and_why() {
    let pki = TestPki::new();
    let good = listener(&pki, true, true);
    let err = |l: &ListenerConfig| tls_factory(l).err().expect("refused");

    let mut l = good.clone();
    l.certfile = Some(pki.path("missing.crt"));
    let e = err(&l);
    assert!(
        e.contains("missing.crt") && e.contains("No such file"),
        "{e}"
    );

    let mut l = good.clone();
    l.certfile = Some(write(&pki, "empty.crt", "hello\n"));
    let e = err(&l);
    assert!(
        e.contains("empty.crt") && e.contains("no certificate"),
        "{e}"
    );

    // The key file holds a certificate, not a key.
    let mut l = good.clone();
    l.keyfile = Some(pki.alice.cert.clone());
    let e = err(&l);
    assert!(
        e.contains("alice.crt") && e.contains("no private key"),
        "{e}"
    );

    // Alice's key with the server certificate.
    let mut l = good.clone();
    l.keyfile = Some(pki.alice.key.clone());
    let e = err(&l);
    assert!(
        e.contains("alice.key") && e.contains("does not match"),
        "{e}"
    );

    // A key rustls/ring cannot sign with (not a valid RSA/ECDSA/Ed25519 PKCS#8).
    let mut l = good.clone();
    l.keyfile = Some(write(
        &pki,
        "odd.key",
        "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
    ));
    let e = err(&l);
    assert!(
        e.contains("odd.key") && e.contains("unsupported key type"),
        "{e}"
    );

    let mut l = good.clone();
    l.cafile = Some(write(&pki, "noca.crt", ""));
    let e = err(&l);
    assert!(
        e.contains("noca.crt") && e.contains("no certificate"),
        "{e}"
    );

    let mut l = good.clone();
    l.cafile = None;
    let e = err(&l);
    assert!(
        e.contains("require_certificate") && e.contains("cafile"),
        "{e}"
    );

    let mut l = good.clone();
    l.keyfile = None;
    assert!(err(&l).contains("keyfile"));
}

#[test]
fn ed448_key_is_refused_as_unsupported_when_openssl_is_present() {
    let pki = TestPki::new();
    let key = pki.path("ed448.key");
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed448", "-out"])
        .arg(&key)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipped: no openssl CLI with ed448");
        return;
    }
    let mut l = listener(&pki, false, false);
    l.keyfile = Some(key);
    let e = tls_factory(&l).err().expect("refused");
    assert!(
        e.contains("ed448.key") && e.contains("unsupported key type"),
        "{e}"
    );
}

#[test]
fn reload_swaps_the_config_for_new_connections_only() {
    let (a, b) = (TestPki::new(), TestPki::new());
    let factory = tls_factory(&listener(&a, false, false)).unwrap();
    let old = factory.new_tls_layer().unwrap();

    factory.reload(&listener(&b, false, false)).unwrap();
    let new = factory.new_tls_layer().unwrap();

    // The open connection keeps certificate A; the new one has B (each client trusts only its own CA).
    let mut p = Pair::new(
        old,
        client(client_config(&a.ca, None, &rustls::version::TLS13)),
    );
    p.pump().unwrap();
    assert!(p.server.established() && p.client_error.is_none());
    let mut p = Pair::new(
        new,
        client(client_config(&b.ca, None, &rustls::version::TLS13)),
    );
    p.pump().unwrap();
    assert!(p.server.established() && p.client_error.is_none());
    let mut p = Pair::new(
        factory.new_tls_layer().unwrap(),
        client(client_config(&a.ca, None, &rustls::version::TLS13)),
    );
    let _ = p.pump();
    assert!(
        matches!(p.client_error, Some(rustls::Error::InvalidCertificate(_))),
        "{:?}",
        p.client_error
    );

    // A failed reload keeps the config that works.
    let mut bad = listener(&b, false, false);
    bad.certfile = Some(b.path("gone.crt"));
    assert!(factory.reload(&bad).unwrap_err().contains("gone.crt"));
    let mut p = Pair::new(
        factory.new_tls_layer().unwrap(),
        client(client_config(&b.ca, None, &rustls::version::TLS13)),
    );
    p.pump().unwrap();
    assert!(p.server.established());
}

#[test]
fn factory_for_builds_a_tls_layer() {
    let pki = TestPki::new();
    let f = crate::stream::factory_for(&listener(&pki, false, false), 1 << 20)
        .unwrap()
        .expect("a TLS listener has a layer");
    let layer = f.new_layer().unwrap();
    assert!(!layer.established());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// However the wire bytes are cut into reads, both sides see the same application bytes.
    #[test]
    fn random_wire_splits_give_the_same_application_bytes(
        chunks in proptest::collection::vec(1usize..700, 1..16),
        up in proptest::collection::vec(any::<u8>(), 0..5000),
        down in proptest::collection::vec(any::<u8>(), 0..5000),
        tls12 in any::<bool>(),
        mtls in any::<bool>(),
    ) {
        let pki = shared_pki();
        let version = if tls12 { &rustls::version::TLS12 } else { &rustls::version::TLS13 };
        let cfg = client_config(&pki.ca, mtls.then_some(&pki.alice), version);
        let mut p = pair(&listener(pki, mtls, mtls), cfg);
        std::io::Write::write_all(&mut p.client.writer(), &up).unwrap();
        p.pump_chunked(&chunks).unwrap();
        prop_assert!(p.server.established());
        prop_assert_eq!(&p.server_app[..], &up[..]);
        prop_assert_eq!(p.server.peer_identity(), mtls.then_some("alice"));

        let mut wire = BytesMut::new();
        p.server.write_app(&down, &mut wire).unwrap();
        let mut off = 0;
        for c in chunks.iter().cycle() {
            if off == wire.len() {
                break;
            }
            let n = (*c).min(wire.len() - off);
            p.deliver_to_client(&wire[off..off + n]);
            off += n;
        }
        prop_assert_eq!(&p.client_app[..], &down[..]);
    }
}

/// One set of certificates for all proptest cases (generating keys per case is slow at opt-level 1).
fn shared_pki() -> &'static TestPki {
    static PKI: std::sync::OnceLock<TestPki> = std::sync::OnceLock::new();
    PKI.get_or_init(TestPki::new)
}
