//! TLS listeners end to end: the real broker binary with `[[listeners]]` TLS tables, and mosquitto_pub/sub
//! (`--cafile`, `--cert/--key`) as clients. Skipped with a message when mosquitto-clients is missing outside CI;
//! in CI (`CI` set) a missing tool is a failure.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::certs::{CertFiles, TestPki};
use common::tools::{have_mosquitto_clients, have_paho};
use common::{spawn_listening, write_config};

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
        Self::start_with(&pki.listeners_toml(""), "")
    }

    /// The broker with `listen` on a free port, then `listeners` (two `[[listeners]]` tables: `tls`, `mtls`);
    /// `global` goes before them (top-level keys).
    fn start_with(listeners: &str, global: &str) -> TlsBroker {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &format!(
                r#"listen = ["127.0.0.1:0"]
shards = 2
persistence = false
max_connections = 1000
{global}
{listeners}"#
            ),
        );
        let level = std::env::var("COREMQ_TEST_LOG").unwrap_or_else(|_| "warn".into());
        // `listen` first, then the [[listeners]] tables in order.
        let (child, addrs) = spawn_listening(&["--config", &config, "--log-level", &level], 3);
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

/// Connection arguments with the test CA and the client certificate `client`.
fn cert_args(addr: SocketAddr, pki: &TestPki, client: &CertFiles) -> Vec<String> {
    conn_args(
        addr,
        &[
            ("--cafile", &pki.ca),
            ("--cert", &client.cert),
            ("--key", &client.key),
        ],
    )
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
    let alice = cert_args(b.mtls, &pki, &pki.alice);
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
    let good = cert_args(b.mtls, &pki, &pki.alice);
    let sub = subscribe(&good, "mtls/b", 1);
    let refused: [(&str, Vec<String>); 3] = [
        (
            "no certificate",
            conn_args(b.mtls, &[("--cafile", &pki.ca)]),
        ),
        ("expired certificate", cert_args(b.mtls, &pki, &pki.expired)),
        (
            "certificate from an unknown CA",
            cert_args(b.mtls, &pki, &pki.untrusted),
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

/// paho-mqtt (python3) over TLS: `python3 -c SCRIPT ARGS...` must print OK.
fn run_paho(script: &str, args: &[String]) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "OK",
        "paho: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Common part of the paho scripts: `client(id, version, tls_version, cert, key, user)` connected over TLS to
/// localhost:PORT with the CA in argv[2], and `exchange(sub, pub, filters, publishes)` returning what arrived.
const PAHO_TLS_LIB: &str = r#"
import ssl, sys, threading, time
import paho.mqtt.client as mqtt
port, ca = int(sys.argv[1]), sys.argv[2]

def client(cid, version=mqtt.MQTTv311, tls_max=None, cert=None, key=None, user=None, cafile=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=version)
    ctx = ssl.create_default_context(cafile=cafile or ca)
    if tls_max is not None:
        ctx.maximum_version = tls_max
    if cert:
        ctx.load_cert_chain(cert, key)
    c.tls_set_context(ctx)
    if user:
        c.username_pw_set(user, "ignored")
    acks = []
    c.on_connect = lambda c, u, f, rc, p: acks.append(rc)
    c.connect("localhost", port, 30)
    c.loop_start()
    for _ in range(100):
        if acks:
            break
        time.sleep(0.05)
    assert acks and not acks[0].is_failure, (cid, acks)
    return c

def exchange(sub, pub, filters, publishes, expect):
    got = []
    done = threading.Event()
    def on_message(c, u, m):
        got.append((m.topic, m.payload.decode()))
        if len(got) == expect:
            done.set()
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.subscribe([(f, 1) for f in filters])
    assert subscribed.wait(5), "no SUBACK"
    for topic, payload in publishes:
        pub.publish(topic, payload, qos=1).wait_for_publish(5)
    done.wait(5)
    time.sleep(0.3)  # anything more than expected would arrive now
    return got
"#;

#[test]
fn paho_python_over_tls_1_2_and_1_3_v311_and_v5() {
    if !have_paho() {
        return;
    }
    let pki = TestPki::new();
    let b = TlsBroker::start(&pki);
    let script = format!(
        "{PAHO_TLS_LIB}{}",
        r##"
versions = [("v311", mqtt.MQTTv311), ("v5", mqtt.MQTTv5)]
tls = [("tls12", ssl.TLSVersion.TLSv1_2), ("tls13", None)]
for vname, v in versions:
    for tname, t in tls:
        sub = client("sub-%s-%s" % (vname, tname), v, t)
        pub = client("pub-%s-%s" % (vname, tname), v, t)
        topic = "paho/%s/%s" % (vname, tname)
        got = exchange(sub, pub, [topic], [(topic, "a"), (topic, "b")], 2)
        assert got == [(topic, "a"), (topic, "b")], got
        want = "TLSv1.2" if t else "TLSv1.3"
        assert sub.socket().version() == want, (sub.socket().version(), want)
        for c in (sub, pub):
            c.disconnect(); c.loop_stop()
# A CA that did not sign the server's certificate: the handshake fails on the client side.
try:
    client("wrong-ca", cafile=sys.argv[3])
    raise SystemExit("connected with the wrong CA")
except ssl.SSLCertVerificationError:
    pass
print("OK")
"##
    );
    run_paho(
        &script,
        &[
            b.tls.port().to_string(),
            pki.ca.display().to_string(),
            pki.other_ca.display().to_string(),
        ],
    );
}

#[test]
fn use_identity_as_username_makes_the_certificate_cn_the_acl_user() {
    if !have_paho() {
        return;
    }
    let pki = TestPki::new();
    let acl = pki.path("acl");
    // The certificate says "alice"; "bob" is what the client claims in CONNECT and must not get.
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite alice/#\ntopic read shared/#\n\nuser bob\ntopic readwrite bob/#\n",
    )
    .unwrap();
    let p = |p: &std::path::Path| p.display().to_string();
    let b = TlsBroker::start_with(
        &pki.listeners_toml("use_identity_as_username = true\n"),
        &format!("acl_file = \"{}\"\nallow_anonymous = true", p(&acl)),
    );
    let script = format!(
        "{PAHO_TLS_LIB}{}",
        r##"
cert, key = sys.argv[3], sys.argv[4]
for v in (mqtt.MQTTv311, mqtt.MQTTv5):
    sub = client("alice-sub-%d" % v, v, cert=cert, key=key, user="bob")
    pub = client("alice-pub-%d" % v, v, cert=cert, key=key, user="bob")
    # bob/x is bob's, shared/x is read-only for alice: only alice/x gets through.
    got = exchange(sub, pub, ["#"], [("bob/x", "1"), ("shared/x", "2"), ("alice/x", "3")], 1)
    assert got == [("alice/x", "3")], got
    for c in (sub, pub):
        c.disconnect(); c.loop_stop()
print("OK")
"##
    );
    run_paho(
        &script,
        &[
            b.mtls.port().to_string(),
            pki.ca.display().to_string(),
            p(&pki.alice.cert),
            p(&pki.alice.key),
        ],
    );
    // Control: a mosquitto client with the same certificate on the same listener is "alice" too, and reading
    // bob's topics is refused to it (the message published by paho above never reaches it either).
    if have_mosquitto_clients() {
        let alice = cert_args(b.mtls, &pki, &pki.alice);
        let sub = subscribe(&alice, "alice/#", 1);
        let mut bob_claim = alice.clone();
        bob_claim.extend(["-u".to_string(), "bob".to_string()]);
        assert!(publish(&bob_claim, "bob/y", "denied").0);
        assert!(publish(&bob_claim, "alice/y", "allowed").0);
        assert_eq!(received(sub), "allowed\n");
    }
}
