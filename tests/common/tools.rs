//! The peers tests run that we did not write (mosquitto clients, paho-mqtt, node, ...): are they installed?
//! Outside CI a missing tool skips the test with a printed reason; in CI (`CI` set) it is a failure, so a green
//! run always means the peers really ran.
//!
//! Standalone (no other test module needed), so a test without `mod common;` can use it with
//! `#[path = "common/tools.rs"] mod tools;`.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// A tool is missing: skip (print why) outside CI, fail in CI.
pub fn missing(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{why}: required in CI (see .ci/run)");
    }
    eprintln!("SKIPPED: {why}");
}

/// Whether `cmd` runs at all with the arguments `probe` (its exit status does not matter: `mosquitto_pub
/// --help` exits 1).
pub fn have(cmd: &str, probe: &[&str]) -> bool {
    let ok = Command::new(cmd)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        missing(&format!("{cmd} not installed"));
    }
    ok
}

/// mosquitto_pub and mosquitto_sub (Debian mosquitto-clients).
pub fn have_mosquitto_clients() -> bool {
    have("mosquitto_pub", &["--help"]) && have("mosquitto_sub", &["--help"])
}

/// python3 with paho-mqtt importable.
pub fn have_paho() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing("python3 paho-mqtt not installed");
    }
    ok
}
