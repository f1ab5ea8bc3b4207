//! `--help` of the broker and of each subcommand: exit 0, on stdout, and naming what they take.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coremq"))
        .args(args)
        .output()
        .expect("run coremq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn coremq_help_lists_flags_and_subcommands() {
    let (ok, out, err) = run(&["--help"]);
    assert!(ok, "{err}");
    for want in [
        "--config",
        "--listen",
        "--print-default-config",
        "coremq passwd",
        "SIGHUP",
    ] {
        assert!(out.contains(want), "`coremq --help` lacks {want:?}:\n{out}");
    }
}

#[test]
fn passwd_help_documents_every_option() {
    for flag in ["--help", "-h"] {
        let (ok, out, err) = run(&["passwd", flag]);
        assert!(ok, "coremq passwd {flag}: {err}");
        for want in [
            "usage: coremq passwd",
            "-c ",
            "-b ",
            "-D ",
            "-H ",
            "-I ",
            "sha512-pbkdf2",
            "101",
        ] {
            assert!(
                out.contains(want),
                "`coremq passwd {flag}` lacks {want:?}:\n{out}"
            );
        }
    }
    // Help among other options still wins, and nothing is written.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    let (ok, out, _) = run(&["passwd", "-c", "--help", file.to_str().unwrap(), "u"]);
    assert!(ok && out.contains("usage:"));
    assert!(!file.exists());
}

#[test]
fn passwd_usage_errors_exit_non_zero_with_the_usage() {
    let (ok, _, err) = run(&["passwd"]);
    assert!(!ok);
    assert!(err.contains("usage: coremq passwd"), "{err}");
    let (ok, _, err) = run(&["passwd", "-X", "f", "u"]);
    assert!(!ok);
    assert!(err.contains("unknown option"), "{err}");
}
