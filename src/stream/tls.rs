//! TLS (rustls 0.23, `ring` provider, TLS 1.2 and 1.3) as a stream layer: wire bytes in, MQTT bytes out.
//!
//! [`TlsLayer`] wraps one `rustls::ServerConnection`; it never touches a socket. [`TlsFactory`] holds a listener's
//! `ServerConfig` (certificate, key, client-certificate policy) behind an `ArcSwap`, so a SIGHUP can
//! [`TlsFactory::reload`] it: new connections get the new config, open ones keep the one they started with.
//!
//! Bounds: rustls buffers at most one record (16 KiB + header, 64 KiB while joining a handshake message) of
//! incoming ciphertext and, because every call drains it, nothing of decrypted plaintext between calls. The
//! outgoing TLS buffer is emptied into `wire_out` on every call, whose bound is the socket loop's.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{BufMut, BytesMut};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig, ServerConnection};

use super::{Layer, LayerError, LayerFactory};
use crate::config::ListenerConfig;

/// The TLS record content type of a handshake: every TLS connection starts with it.
const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;

/// One TLS connection's server side.
pub struct TlsLayer {
    conn: ServerConnection,
    /// Subject CN of the verified client certificate, read once the handshake is done.
    identity: Option<Box<str>>,
    /// The first wire byte was seen (the "is this TLS at all" check is done).
    seen_first_byte: bool,
    peer_closed: bool,
}

impl TlsLayer {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, LayerError> {
        let conn = ServerConnection::new(config)
            .map_err(|e| LayerError::Handshake(format!("cannot start TLS: {e}")))?;
        Ok(TlsLayer {
            conn,
            identity: None,
            seen_first_byte: false,
            peer_closed: false,
        })
    }

    /// The negotiated protocol version, once known (`TLSv1_2` / `TLSv1_3`).
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Moves every byte rustls wants to send into `wire_out`.
    fn drain_tls(&mut self, wire_out: &mut BytesMut) {
        let mut w = (&mut *wire_out).writer();
        while self.conn.wants_write() {
            // Writing into memory cannot fail.
            if self.conn.write_tls(&mut w).is_err() {
                break;
            }
        }
    }

    /// Moves the decrypted plaintext rustls holds into `app`.
    fn drain_plaintext(&mut self, n: usize, app: &mut BytesMut) -> Result<(), LayerError> {
        if n == 0 {
            return Ok(());
        }
        let start = app.len();
        app.resize(start + n, 0);
        self.conn
            .reader()
            .read_exact(&mut app[start..])
            .map_err(|e| LayerError::Protocol(format!("TLS plaintext: {e}")))
    }

    /// The error for a failure of rustls, after its alert (if any) was queued.
    fn error(&self, e: rustls::Error) -> LayerError {
        let why = describe(&e);
        if self.conn.is_handshaking() {
            LayerError::Handshake(why)
        } else {
            LayerError::Protocol(why)
        }
    }

    /// Reads the client certificate's CN once the handshake is over.
    fn on_established(&mut self) {
        if self.identity.is_none() {
            self.identity = self
                .conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| subject_cn(leaf))
                .map(String::into_boxed_str);
        }
    }
}

impl Layer for TlsLayer {
    fn read_wire(
        &mut self,
        mut wire: &[u8],
        app: &mut BytesMut,
        wire_out: &mut BytesMut,
    ) -> Result<(), LayerError> {
        if !self.seen_first_byte && !wire.is_empty() {
            self.seen_first_byte = true;
            if wire[0] != CONTENT_TYPE_HANDSHAKE {
                // Say what it looks like rather than rustls' "invalid content type"; send the alert a
                // TLS client would understand (it closes the connection either way).
                let first = wire[0];
                let _ = self.conn.read_tls(&mut wire);
                let _ = self.conn.process_new_packets();
                self.drain_tls(wire_out);
                let hint = if first >> 4 == 1 {
                    " (an MQTT CONNECT: a plain MQTT client on a TLS port?)"
                } else {
                    ""
                };
                return Err(LayerError::Handshake(format!(
                    "not TLS: first byte 0x{first:02x} is not a TLS handshake record{hint}"
                )));
            }
        }
        while !wire.is_empty() {
            let n = match self.conn.read_tls(&mut wire) {
                Ok(n) => n,
                Err(e) => {
                    self.drain_tls(wire_out);
                    return Err(if self.conn.is_handshaking() {
                        LayerError::Handshake(format!("TLS record: {e}"))
                    } else {
                        LayerError::Protocol(format!("TLS record: {e}"))
                    });
                }
            };
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // rustls has queued the alert that tells the peer why.
                    self.drain_tls(wire_out);
                    return Err(self.error(e));
                }
            };
            self.drain_plaintext(state.plaintext_bytes_to_read(), app)?;
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
            if n == 0 {
                // rustls took nothing although bytes remain: it refuses more (cannot happen while we drain
                // the plaintext on every record, but never spin on it).
                self.drain_tls(wire_out);
                return Err(LayerError::Protocol("TLS layer refused more input".into()));
            }
        }
        if !self.conn.is_handshaking() {
            self.on_established();
        }
        self.drain_tls(wire_out);
        Ok(())
    }

    fn write_app(&mut self, mut app: &[u8], wire_out: &mut BytesMut) -> Result<(), LayerError> {
        while !app.is_empty() {
            let n = self
                .conn
                .writer()
                .write(app)
                .map_err(|e| LayerError::Protocol(format!("TLS write: {e}")))?;
            self.drain_tls(wire_out);
            if n == 0 {
                return Err(LayerError::Protocol(
                    "TLS layer accepts no more application bytes".into(),
                ));
            }
            app = &app[n..];
        }
        Ok(())
    }

    fn close(&mut self, wire_out: &mut BytesMut) {
        self.conn.send_close_notify();
        self.drain_tls(wire_out);
    }

    fn established(&self) -> bool {
        !self.conn.is_handshaking()
    }

    fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    fn peer_identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// rustls' read buffer grows to a whole record (16 KiB and more) and shrinks back to 4 KiB only at its next
    /// read: a read that yields nothing (`WouldBlock`, so no end of stream is recorded) shrinks it now.
    fn shrink(&mut self) {
        let _ = self.conn.read_tls(&mut NothingYet);
    }
}

/// A reader with no bytes yet.
struct NothingYet;

impl Read for NothingYet {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

/// A rustls error in words a broker operator can act on.
fn describe(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::NoCertificatesPresented => {
            "client sent no certificate, and this listener requires one".into()
        }
        E::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "client certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "client certificate is not valid yet".into()
            }
            CertificateError::UnknownIssuer => {
                "client certificate is not signed by a CA in this listener's cafile (unknown CA)"
                    .into()
            }
            CertificateError::BadSignature => "client certificate has a bad signature".into(),
            CertificateError::Revoked => "client certificate is revoked".into(),
            other => format!("bad client certificate: {other:?}"),
        },
        E::AlertReceived(alert) => format!("client aborted the handshake with alert {alert:?}"),
        E::PeerIncompatible(why) => format!("client is incompatible: {why:?}"),
        E::InvalidMessage(why) => format!("malformed TLS message: {why:?}"),
        E::PeerMisbehaved(why) => format!("client broke the TLS protocol: {why:?}"),
        E::DecryptError => "TLS record failed to decrypt (corrupt or forged)".into(),
        other => format!("TLS: {other}"),
    }
}

/// The subject common name of a DER certificate (the first CN if there are several).
fn subject_cn(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// A TLS listener's layer factory: its current `ServerConfig`, swapped atomically by [`TlsFactory::reload`].
pub struct TlsFactory {
    config: ArcSwap<ServerConfig>,
    use_identity_as_username: bool,
}

impl TlsFactory {
    /// Loads the listener's files again and makes new connections use them; open connections keep the config
    /// they started with. On error the old config stays.
    pub fn reload(&self, l: &ListenerConfig) -> Result<(), String> {
        self.config.store(server_config(l)?);
        Ok(())
    }

    /// The listener wants the client certificate's CN as the user name.
    pub fn use_identity_as_username(&self) -> bool {
        self.use_identity_as_username
    }

    /// The config new connections start with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    pub fn new_tls_layer(&self) -> Result<TlsLayer, LayerError> {
        TlsLayer::new(self.config.load_full())
    }
}

impl LayerFactory for TlsFactory {
    fn new_layer(&self) -> Result<Box<dyn Layer>, LayerError> {
        Ok(Box::new(self.new_tls_layer()?))
    }

    fn reload(&self, l: &ListenerConfig) -> Result<(), String> {
        TlsFactory::reload(self, l)
    }
}

/// The TLS factory of a listener with `certfile` and `keyfile` (and optionally `cafile`). Every error names the
/// listener, the file and why.
pub fn tls_factory(l: &ListenerConfig) -> Result<Arc<TlsFactory>, String> {
    Ok(Arc::new(TlsFactory {
        config: ArcSwap::from(server_config(l)?),
        use_identity_as_username: l.use_identity_as_username,
    }))
}

/// Builds a listener's rustls config from its PEM files.
pub fn server_config(l: &ListenerConfig) -> Result<Arc<ServerConfig>, String> {
    let ctx = |msg: String| format!("listener {}: {msg}", l.address);
    let certfile = l
        .certfile
        .as_deref()
        .ok_or_else(|| ctx("TLS needs `certfile`".into()))?;
    let keyfile = l
        .keyfile
        .as_deref()
        .ok_or_else(|| ctx("`certfile` is set but `keyfile` is not".into()))?;
    let chain = load_certs(certfile).map_err(ctx)?;
    let key = load_key(keyfile).map_err(ctx)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ctx(format!("TLS versions: {e}")))?;

    let builder = match &l.cafile {
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for (i, ca) in load_certs(cafile).map_err(ctx)?.into_iter().enumerate() {
                roots.add(ca).map_err(|e| {
                    ctx(format!(
                        "cafile {}: certificate {} is not a usable CA certificate: {e}",
                        cafile.display(),
                        i + 1
                    ))
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if l.require_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| ctx(format!("cafile {}: {e}", cafile.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if l.require_certificate => return Err(ctx(
            "`require_certificate = true` needs a `cafile` to verify client certificates against"
                .into(),
        )),
        None => builder.with_no_client_auth(),
    };

    // Check the key ourselves so the error names the file (rustls' own message names neither).
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        ctx(format!(
            "keyfile {}: unsupported key type (RSA, ECDSA P-256/P-384 or Ed25519 are supported): {e}",
            keyfile.display()
        ))
    })?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        ctx(format!(
            "keyfile {} does not match the certificate in certfile {}: {e}",
            keyfile.display(),
            certfile.display()
        ))
    })?;
    let mut config = builder.with_cert_resolver(Arc::new(SingleCert(Arc::new(certified))));
    // MQTT clients reconnect to one broker: no tickets, no per-connection session state (resumption would cost
    // a cache entry per connection for a handshake saving that does not matter at MQTT connection rates).
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.alpn_protocols = Vec::new();
    Ok(Arc::new(config))
}

/// The listener's one certificate, whatever the client asks for (no SNI selection).
#[derive(Debug)]
struct SingleCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

fn pem_error(path: &Path, what: &str, e: pem::Error) -> String {
    format!("{what} {}: not valid PEM: {e}", path.display())
}

/// Every certificate of a PEM file, in order; at least one.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = "certificate file";
    let bytes = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, what, e))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no certificate in it (expected a \"-----BEGIN CERTIFICATE-----\" block)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let what = "keyfile";
    let bytes = read_file(path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{what} {}: no private key in it (expected a \"-----BEGIN PRIVATE KEY-----\", \
             \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)",
            path.display()
        ),
        e => pem_error(path, what, e),
    })
}

#[cfg(test)]
mod tests;
