//! MQTT over WebSocket with clients we did not write: MQTT.js 5 under Node (`tests/websocket/pubsub.mjs`) and
//! MQTT.js's browser bundle in headless Chromium (`tests/websocket/page.html`, driven by `browser.mjs`), against a
//! coremq with a `protocol = "websockets"` listener beside a plain one. Skipped with the reason when node, the npm
//! packages (`npm ci` in tests/websocket), chromium or mosquitto_pub are missing outside CI; with `CI` set a missing
//! tool fails the test.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};

use common::certs;
use common::tools::{have, missing};

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/websocket")
}

fn have_node_packages() -> bool {
    if !have("node", &["--version"]) {
        return false;
    }
    let ok = scripts().join("node_modules/mqtt/package.json").exists()
        && scripts().join("node_modules/ws/package.json").exists();
    if !ok {
        missing("MQTT.js not installed (run `npm ci` in tests/websocket)");
    }
    ok
}

/// coremq with a plain listener and a WebSocket listener on free ports.
struct Broker {
    child: Child,
    tcp: SocketAddr,
    ws: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        Self::start_with("")
    }

    /// `ws_extra`: more keys for the WebSocket listener (TLS for `wss://`).
    fn start_with(ws_extra: &str) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = common::write_config(
            dir.path(),
            &format!(
                "listen = [\"127.0.0.1:0\"]\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\nprotocol = \"websockets\"\n\
                 path = \"/mqtt\"\n{ws_extra}"
            ),
        );
        let data = dir.path().join("data");
        // One line per listener, `listen` first, then the [[listeners]] tables.
        let (child, addrs) = common::spawn_listening(
            &[
                "--config",
                &config,
                "--data-dir",
                data.to_str().unwrap(),
                "--shards",
                "2",
                "--log-level",
                "warn",
            ],
            2,
        );
        let (tcp, ws) = (addrs[0], addrs[1]);
        Broker {
            child,
            tcp,
            ws,
            _dir: dir,
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/mqtt", self.ws)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // The child this test started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(args: &[&str]) {
    let out = Command::new("node")
        .args(args)
        .current_dir(scripts())
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "node {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]

fn mqtt_js_over_websocket_round_trips_at_every_qos() {
    if !have_node_packages() {
        return;
    }
    let b = Broker::start();
    let url = b.ws_url();
    node(&["pubsub.mjs", &url]);
    // MQTT 5 over the same listener.
    let out = Command::new("node")
        .args(["pubsub.mjs", &url])
        .env("MQTT_VERSION", "5")
        .current_dir(scripts())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mqtt_js_over_secure_websocket_round_trips() {
    if !have_node_packages() {
        return;
    }
    let pki = certs::TestPki::new();
    let b = Broker::start_with(&format!(
        "certfile = {:?}\nkeyfile = {:?}\n",
        pki.server.cert.to_str().unwrap(),
        pki.server.key.to_str().unwrap()
    ));
    // wss:// through the TLS layer stacked under the WebSocket layer; node trusts the test CA.
    let url = format!("wss://localhost:{}/mqtt", b.ws.port());
    let out = Command::new("node")
        .args(["pubsub.mjs", &url])
        .env("NODE_EXTRA_CA_CERTS", &pki.ca)
        .current_dir(scripts())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wss: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]

fn browser_page_receives_what_mosquitto_pub_sends_over_tcp() {
    if !have_node_packages()
        || !have("chromium", &["--version"])
        || !have("mosquitto_pub", &["--help"])
    {
        return;
    }
    let b = Broker::start();
    let topic = "coremq/ws/browser";
    let payload = "hello from mosquitto_pub";
    let port = b.tcp.port().to_string();
    node(&[
        "browser.mjs",
        &b.ws_url(),
        topic,
        payload,
        "--",
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-q",
        "1",
        "-t",
        topic,
        "-m",
        payload,
    ]);
}
