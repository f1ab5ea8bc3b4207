//! `--tls` against coremq's TLS listeners (the broker runs in this process through `coremq::server::run`, with
//! rcgen certificates from the root crate's tests/common/certs.rs): exact counts over TLS, mutual TLS with
//! `--cert/--key`, and refusals (no client certificate, a CA that did not sign the server) counted as failures.

#[path = "../../tests/common/certs.rs"]
mod certs;
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use certs::TestPki;

// coremq's library calls into mimalloc (`coremq::alloc_collect`), as its binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use common::{loadgen, n};
use serde_json::Value;

struct Broker {
    tls: SocketAddr,
    mtls: SocketAddr,
    shutdown: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(pki: &TestPki) -> Broker {
    let toml = format!(
        r#"listen = ["127.0.0.1:0"]
shards = 1
pin = false
persistence = false
{}"#,
        pki.listeners_toml("")
    );
    let cfg = coremq::config::Config::from_toml_str(&toml).expect("config");
    cfg.validate().expect("valid config");
    let shutdown = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = shutdown.clone();
    let thread = std::thread::spawn(move || {
        coremq::server::run(cfg, stop, move |addrs, _| {
            let _ = tx.send(addrs.to_vec());
        })
    });
    let addrs = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("coremq did not bind");
    Broker {
        tls: addrs[1],
        mtls: addrs[2],
        shutdown,
        thread: Some(thread),
    }
}

fn exact(v: &Value, sent: u64) {
    assert_eq!(n(v, "sent"), sent, "{v}");
    assert_eq!(n(v, "received"), sent, "{v}");
    assert_eq!(n(v, "lost"), 0, "{v}");
    assert_eq!(n(v, "duplicates"), 0, "{v}");
    assert_eq!(n(v, "errors"), 0, "{v}");
}

#[test]
fn pairs_over_tls_qos0_and_qos1_exact_counts() {
    let pki = TestPki::new();
    let b = start(&pki);
    let ca = pki.ca.display().to_string();
    for qos in ["0", "1"] {
        let v = loadgen(&[
            "pairs",
            "--broker",
            &b.tls.to_string(),
            "--tls",
            "--cafile",
            &ca,
            "--qos",
            qos,
            "--pairs",
            "4",
            "--count",
            "4000",
            "--rate",
            "20000",
            "--duration",
            "20",
        ]);
        exact(&v, 4000);
        if qos == "1" {
            assert_eq!(n(&v, "acked"), 4000, "{v}");
        }
    }
    // Large messages: several TLS records per MQTT packet and several packets per record.
    let v = loadgen(&[
        "pairs",
        "--broker",
        &b.tls.to_string(),
        "--tls",
        "--cafile",
        &ca,
        "--qos",
        "1",
        "--pairs",
        "2",
        "--size",
        "40000",
        "--count",
        "400",
        "--duration",
        "20",
    ]);
    exact(&v, 400);
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    let pki = TestPki::new();
    let b = start(&pki);
    let v = loadgen(&[
        "pairs",
        "--broker",
        &b.mtls.to_string(),
        "--tls",
        "--cafile",
        &pki.ca.display().to_string(),
        "--cert",
        &pki.alice.cert.display().to_string(),
        "--key",
        &pki.alice.key.display().to_string(),
        "--qos",
        "1",
        "--count",
        "500",
        "--duration",
        "20",
    ]);
    exact(&v, 500);
}

/// `conn` of 3 clients that must all fail to connect.
fn all_refused(args: &[&str]) {
    let v = loadgen(
        &[
            &[
                "conn",
                "--connections",
                "3",
                "--duration",
                "0.2",
                "--connect-timeout",
                "5",
            ][..],
            args,
        ]
        .concat(),
    );
    let c = &v["connect"];
    assert_eq!(c["connected"].as_u64(), Some(0), "{v}");
    assert_eq!(c["failed"].as_u64(), Some(3), "{v}");
}

#[test]
fn refused_without_a_client_certificate_or_with_the_wrong_ca() {
    let pki = TestPki::new();
    let b = start(&pki);
    let (ca, other) = (
        pki.ca.display().to_string(),
        pki.other_ca.display().to_string(),
    );
    all_refused(&["--broker", &b.mtls.to_string(), "--tls", "--cafile", &ca]);
    all_refused(&["--broker", &b.tls.to_string(), "--tls", "--cafile", &other]);
    // And the listener still serves a correct client afterwards.
    let v = loadgen(&[
        "conn",
        "--broker",
        &b.tls.to_string(),
        "--tls",
        "--cafile",
        &ca,
        "--connections",
        "3",
        "--duration",
        "0.2",
    ]);
    assert_eq!(v["connect"]["connected"].as_u64(), Some(3), "{v}");
}

#[test]
fn bad_tls_options_are_refused_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_coremq-loadgen"))
        .args([
            "conn",
            "--tls",
            "--cafile",
            "/nonexistent/ca.pem",
            "--connections",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    // --tls needs --cafile (clap).
    let out = Command::new(env!("CARGO_BIN_EXE_coremq-loadgen"))
        .args(["conn", "--tls", "--connections", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
