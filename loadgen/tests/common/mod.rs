//! Helpers shared by the loadgen's integration tests: run the binary, read its JSON result.

use std::process::Command;

use serde_json::Value;

/// Runs `coremq-loadgen ARGS --json --quiet`, asserts it succeeded and returns its last JSON line.
pub fn loadgen(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_coremq-loadgen"))
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .expect("run coremq-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output from {args:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

/// A counter of the result, which must be present.
pub fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}
