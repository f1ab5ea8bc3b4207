//! `--tls`: the client side of TLS (rustls, TLS 1.2 and 1.3) between a connection's MQTT bytes and its socket.
//! Sans-io: [`TlsConn`] turns wire bytes into plaintext and plaintext into wire bytes; `client::Conn` does the
//! socket calls. The server certificate is verified against `--cafile` for `--tls-server-name`; `--cert` and
//! `--key` give a client certificate (mTLS).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Ciphertext rustls may hold unsent per connection; past it `write_app` takes less (the caller keeps the rest,
/// so `OUT_CAP` still bounds what a publisher has queued).
const SEND_LIMIT: usize = 64 * 1024;

/// What every TLS connection of a run shares.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient({:?})", self.server_name)
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl TlsClient {
    pub fn new(
        cafile: &Path,
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        server_name: &str,
    ) -> Result<TlsClient, String> {
        let mut roots = RootCertStore::empty();
        let ca = read(cafile, "--cafile")?;
        for c in CertificateDer::pem_slice_iter(&ca) {
            let c = c.map_err(|e| format!("--cafile {}: {e}", cafile.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("--cafile {}: {e}", cafile.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("--cafile {}: no certificate", cafile.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(roots);
        let config = match (cert, key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(&read(cert, "--cert")?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--cert {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_slice(&read(key, "--key")?)
                    .map_err(|e| format!("--key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("--cert/--key: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("--cert and --key go together".into()),
        };
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("--tls-server-name {server_name:?}: {e}"))?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    pub fn connect(&self) -> Result<TlsConn, String> {
        let mut conn = ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(|e| format!("tls:{e}"))?;
        conn.set_buffer_limit(Some(SEND_LIMIT));
        Ok(TlsConn { conn })
    }
}

/// One connection's TLS state.
pub struct TlsConn {
    conn: ClientConnection,
}

impl TlsConn {
    /// Feeds bytes read from the socket; the plaintext they carry is appended to `app`. Err: a TLS alert or a
    /// protocol error (`tls:...`), or the peer's close_notify (`closed_by_broker`).
    pub fn read_wire(&mut self, mut wire: &[u8], app: &mut BytesMut) -> Result<(), String> {
        while !wire.is_empty() {
            self.conn
                .read_tls(&mut wire)
                .map_err(|e| format!("tls:{e}"))?;
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| format!("tls:{e}"))?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let at = app.len();
                app.resize(at + n, 0);
                self.conn
                    .reader()
                    .read_exact(&mut app[at..])
                    .map_err(|e| format!("tls:{e}"))?;
            }
            if state.peer_has_closed() {
                return Err("closed_by_broker".into());
            }
        }
        Ok(())
    }

    /// Takes as much of `app` as the send limit allows (before the handshake completes rustls holds it back).
    pub fn write_app(&mut self, app: &mut BytesMut) -> Result<(), String> {
        if app.is_empty() {
            return Ok(());
        }
        let n = self
            .conn
            .writer()
            .write(app)
            .map_err(|e| format!("tls:{e}"))?;
        let _ = app.split_to(n);
        Ok(())
    }

    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Hands pending wire bytes to `sink` (a non-blocking socket write); Ok when all went or it would block.
    pub fn write_wire(
        &mut self,
        mut sink: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        struct Sink<F>(F);
        impl<F: FnMut(&[u8]) -> io::Result<usize>> Write for Sink<F> {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                (self.0)(b)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut s = Sink(&mut sink);
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut s) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
