//! Test certificates, generated at test time with rcgen and written as PEM files, so the broker's listener
//! config, mosquitto_pub/sub (`--cafile/--cert/--key`), paho and in-memory rustls clients can all use them.
//!
//! A CA; a server certificate for `localhost` and 127.0.0.1; a client certificate with CN "alice"; an expired
//! client certificate (CN "old", valid 2020 only) from the same CA; and a client certificate (CN "mallory")
//! from another CA the broker does not trust. Keys are ECDSA P-256 (PKCS#8 PEM).
//!
//! Use from an integration test with `mod common;` (`common::certs::TestPki::new()`); from a unit test with
//! `#[path = "../../../tests/common/certs.rs"] mod certs;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every test certificate, in a temporary directory removed when this is dropped.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    /// The CA the broker trusts (`cafile`), and clients use to verify the server (`--cafile`).
    pub ca: PathBuf,
    /// Server certificate for `localhost` and 127.0.0.1, signed by `ca`.
    pub server: CertFiles,
    /// Client certificate, subject CN "alice", signed by `ca`.
    pub alice: CertFiles,
    /// Client certificate, CN "old", signed by `ca`, expired (valid 2020-01-01 to 2021-01-01).
    pub expired: CertFiles,
    /// Client certificate, CN "mallory", signed by a CA the broker does not know.
    pub untrusted: CertFiles,
    /// That other CA.
    pub other_ca: PathBuf,
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(cn: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-signed CA");
    Ca { cert, key }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A leaf certificate signed by `ca`, written to `<dir>/<name>.crt` and `<dir>/<name>.key`.
fn leaf(
    dir: &Path,
    name: &str,
    ca: &Ca,
    cn: &str,
    sans: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    expired: bool,
) -> CertFiles {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("leaf params");
    params.distinguished_name = dn(cn);
    params.extended_key_usages = vec![purpose];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().expect("leaf key");
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("sign leaf");
    let files = CertFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, cert.pem()).expect("write cert");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    files
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("cert dir");
        let root = ca("coremq test CA");
        let other = ca("untrusted test CA");
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, root.cert.pem()).expect("write ca");
        let other_ca = dir.path().join("other-ca.crt");
        std::fs::write(&other_ca, other.cert.pem()).expect("write other ca");
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        let server = leaf(
            dir.path(),
            "server",
            &root,
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        );
        let alice = leaf(
            dir.path(),
            "alice",
            &root,
            "alice",
            &[],
            client.clone(),
            false,
        );
        let expired = leaf(
            dir.path(),
            "expired",
            &root,
            "old",
            &[],
            client.clone(),
            true,
        );
        let untrusted = leaf(dir.path(), "mallory", &other, "mallory", &[], client, false);
        TestPki {
            ca: ca_path,
            server,
            alice,
            expired,
            untrusted,
            other_ca,
            dir,
        }
    }

    /// Two `[[listeners]]` tables on free ports with the server certificate: server-only TLS, then mutual TLS
    /// (client certificates from `ca` required) with `mtls_extra` (more keys of that table, one a line).
    pub fn listeners_toml(&self, mtls_extra: &str) -> String {
        let p = |p: &Path| p.display().to_string();
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:0"
certfile = "{cert}"
keyfile = "{key}"

[[listeners]]
address = "127.0.0.1:0"
certfile = "{cert}"
keyfile = "{key}"
cafile = "{ca}"
require_certificate = true
{mtls_extra}"#,
            cert = p(&self.server.cert),
            key = p(&self.server.key),
            ca = p(&self.ca),
        )
    }

    /// A path in the certificate directory (for files a test writes itself, e.g. a broken PEM).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
