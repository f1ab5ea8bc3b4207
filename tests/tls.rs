//! TLS listeners end to end: the real broker binary with `[[listeners]]` TLS tables, and mosquitto_pub/sub
//! (`--cafile`, `--cert/--key`) as clients. Skipped with a message when mosquitto-clients is missing outside CI;
//! in CI (`CI` set) a missing tool is a failure.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::certs::TestPki;

fn have_mosquitto_clients() -> bool {
    let ok = ["mosquitto_pub", "mosquitto_sub"].iter().all(|c| {
        Command::new(c)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("mosquitto_pub/mosquitto_sub are required in CI (see .ci/run)");
        }
        eprintln!("SKIPPED: mosquitto-clients not installed");
    }
    ok
}

/// The broker with a plain listener and two TLS listeners: server-only TLS, and mutual TLS.
struct TlsBroker {
    child: Child,
    plain: SocketAddr,
    tls: SocketAddr,
    mtls: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TlsBroker {
    fn start(pki: &TestPki) -> TlsBroker {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("coremq.toml");
        let p = |p: &std::path::Path| p.display().to_string();
        std::fs::write(
            &config,
            format!(
                r#"listen = ["127.0.0.1:0"]
shards = 2
persistence = false
max_connections = 1000

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
"#,
                cert = p(&pki.server.cert),
                key = p(&pki.server.key),
                ca = p(&pki.ca),
            ),
        )
        .unwrap();
        let level = std::env::var("COREMQ_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let mut child = Command::new(env!("CARGO_BIN_EXE_coremq"))
            .arg("--config")
            .arg(&config)
            .args(["--log-level", &level])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start coremq");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // One line per listener: `listen` first, then the [[listeners]] tables in order.
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let line = lines.next().expect("coremq printed too little").unwrap();
            let addr = line
                .strip_prefix("coremq listening on ")
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("unexpected line: {line}"));
            addrs.push(addr.parse().unwrap());
        }
        std::thread::spawn(move || for _ in lines {});
        TlsBroker {
            child,
            plain: addrs[0],
            tls: addrs[1],
            mtls: addrs[2],
            _dir: dir,
        }
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connection arguments for mosquitto_pub/sub: host, port, and the TLS files given.
fn conn_args(addr: SocketAddr, tls: &[(&str, &std::path::Path)]) -> Vec<String> {
    let mut a = vec![
        "-h".to_string(),
        "localhost".to_string(),
        "-p".to_string(),
        addr.port().to_string(),
    ];
    for (flag, path) in tls {
        a.push(flag.to_string());
        a.push(path.display().to_string());
    }
    a
}

/// mosquitto_pub of one message; whether it succeeded, and its stderr.
fn publish(conn: &[String], topic: &str, msg: &str) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args(conn)
        .args(["-t", topic, "-m", msg, "-q", "1"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A mosquitto_sub waiting for `count` messages on `topic` (10 s at most).
fn subscribe(conn: &[String], topic: &str, count: usize) -> Child {
    let child = Command::new("mosquitto_sub")
        .args(conn)
        .args(["-t", topic, "-q", "1", "-C", &count.to_string(), "-W", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // mosquitto_sub has no "subscribed" signal; wait until its SUBSCRIBE has been answered.
    std::thread::sleep(Duration::from_millis(700));
    child
}

fn received(sub: Child) -> String {
    let out = sub.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn mosquitto_clients_publish_and_receive_over_tls() {
    if !have_mosquitto_clients() {
        return;
    }
    let pki = TestPki::new();
    let b = TlsBroker::start(&pki);
    let conn = conn_args(b.tls, &[("--cafile", &pki.ca)]);
    let sub = subscribe(&conn, "tls/a", 2);
    assert_eq!(publish(&conn, "tls/a", "one"), (true, String::new()));
    // A plain publisher reaches the TLS subscriber too: the shard does not know which is which.
    let plain = conn_args(b.plain, &[]);
    assert_eq!(publish(&plain, "tls/a", "two"), (true, String::new()));
    assert_eq!(received(sub), "one\ntwo\n");
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    if !have_mosquitto_clients() {
        return;
    }
    let pki = TestPki::new();
    let b = TlsBroker::start(&pki);
    let alice = conn_args(
        b.mtls,
        &[
            ("--cafile", &pki.ca),
            ("--cert", &pki.alice.cert),
            ("--key", &pki.alice.key),
        ],
    );
    let sub = subscribe(&alice, "mtls/a", 1);
    let (ok, err) = publish(&alice, "mtls/a", "hi");
    assert!(ok, "{err}");
    assert_eq!(received(sub), "hi\n");
}

#[test]
fn clients_without_a_valid_certificate_are_refused_on_the_mtls_listener() {
    if !have_mosquitto_clients() {
        return;
    }
    let pki = TestPki::new();
    let b = TlsBroker::start(&pki);
    let good = conn_args(
        b.mtls,
        &[
            ("--cafile", &pki.ca),
            ("--cert", &pki.alice.cert),
            ("--key", &pki.alice.key),
        ],
    );
    let sub = subscribe(&good, "mtls/b", 1);
    let refused: [(&str, Vec<String>); 3] = [
        (
            "no certificate",
            conn_args(b.mtls, &[("--cafile", &pki.ca)]),
        ),
        (
            "expired certificate",
            conn_args(
                b.mtls,
                &[
                    ("--cafile", &pki.ca),
                    ("--cert", &pki.expired.cert),
                    ("--key", &pki.expired.key),
                ],
            ),
        ),
        (
            "certificate from an unknown CA",
            conn_args(
                b.mtls,
                &[
                    ("--cafile", &pki.ca),
                    ("--cert", &pki.untrusted.cert),
                    ("--key", &pki.untrusted.key),
                ],
            ),
        ),
    ];
    for (what, conn) in &refused {
        let (ok, err) = publish(conn, "mtls/b", "must not arrive");
        assert!(!ok, "{what}: accepted");
        eprintln!("{what}: mosquitto_pub said: {}", err.trim());
    }
    // The subscriber, connected all along, gets only the message that was allowed.
    let (ok, err) = publish(&good, "mtls/b", "allowed");
    assert!(ok, "{err}");
    assert_eq!(received(sub), "allowed\n");
}

/// A 3.1.1 CONNECT, client id "plain".
const CONNECT: &[u8] = &[
    0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x05, b'p', b'l',
    b'a', b'i', b'n',
];

#[test]
fn plain_client_on_tls_port_and_tls_client_on_plain_port_are_refused_others_unaffected() {
    if !have_mosquitto_clients() {
        return;
    }
    let pki = TestPki::new();
    let b = TlsBroker::start(&pki);
    let tls = conn_args(b.tls, &[("--cafile", &pki.ca)]);
    let sub = subscribe(&tls, "mixed/t", 2);

    // Plain MQTT on the TLS port: no CONNACK, the connection is closed (after a TLS alert at most).
    let mut s = TcpStream::connect(b.tls).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(CONNECT).unwrap();
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    assert!(
        r.is_ok() || got.is_empty(),
        "connection neither closed nor answered: {r:?}"
    );
    assert_ne!(
        got.first(),
        Some(&0x20),
        "a CONNACK on the TLS port: {got:?}"
    );
    if let Some(&first) = got.first() {
        assert_eq!(first, 0x15, "only a TLS alert may come back: {got:?}");
    }

    let (ok, err) = publish(&tls, "mixed/t", "after plain");
    assert!(ok, "{err}");

    // TLS on the plain port: the TLS client fails, the broker closes that one connection.
    let (ok, _) = publish(
        &conn_args(b.plain, &[("--cafile", &pki.ca)]),
        "mixed/t",
        "must not arrive",
    );
    assert!(!ok, "a TLS client succeeded on the plain port");

    let (ok, err) = publish(&conn_args(b.plain, &[]), "mixed/t", "after tls");
    assert!(ok, "{err}");
    assert_eq!(received(sub), "after plain\nafter tls\n");
}
