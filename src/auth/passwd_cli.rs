//! `coremq passwd`: manage a mosquitto-compatible password file, with `mosquitto_passwd`'s interface.
//!
//! ```text
//! coremq passwd [-H sha512-pbkdf2|sha512] [-I ITERATIONS] [-c | -D] FILE USER
//! coremq passwd [-H ...] [-I ITERATIONS] [-c] -b FILE USER PASSWORD
//! ```
//! `-c` creates (or overwrites) the file, `-b` takes the password from the command line (else it is asked twice on
//! the terminal, or read as two lines from stdin when stdin is not a terminal), `-D` deletes the user. New hashes
//! are `$7$` (PBKDF2-SHA512) with 101 iterations unless `-I`. The file is rewritten atomically (a temporary file
//! in the same directory, fsync, rename) with mode 0600; other lines (comments, other users) are kept as they are.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use super::password::{PasswordFile, PasswordHash, DEFAULT_ITERATIONS};

const USAGE: &str =
    "usage: coremq passwd [-H sha512-pbkdf2|sha512] [-I ITERATIONS] [-c | -D] FILE USER\n       \
                     coremq passwd [-H ...] [-I ITERATIONS] [-c] -b FILE USER PASSWORD";

/// `coremq passwd --help`.
pub const HELP: &str = "\
Manage a mosquitto-compatible password file (the `password_file` of coremq and mosquitto).

usage: coremq passwd [-H sha512-pbkdf2|sha512] [-I ITERATIONS] [-c | -D] FILE USER
       coremq passwd [-H ...] [-I ITERATIONS] [-c] -b FILE USER PASSWORD

Without -b the password is asked twice on the terminal, or read as two lines from stdin when stdin is not a
terminal. The file is rewritten atomically with mode 0600; comments and other users are kept.

Options:
  -c             create the file (overwrites an existing one)
  -b             batch: take the password from the command line (visible to other users in `ps`)
  -D             delete USER from the file
  -H HASH        sha512-pbkdf2 (default, `$7$`, mosquitto 2.x) or sha512 (`$6$`, mosquitto 1.x, weak)
  -I ITERATIONS  PBKDF2 iterations for new hashes (default 101, mosquitto_passwd's default; 1 to 2147483647)
  -h, --help     print this help

Examples:
  coremq passwd -c /etc/coremq/passwd alice
  coremq passwd -b /etc/coremq/passwd bob 's3cret'
  coremq passwd -D /etc/coremq/passwd bob
";

/// Longest password accepted from a prompt or stdin (mosquitto_passwd's buffer is 65,536 bytes).
const MAX_PASSWORD: usize = 65_535;

#[derive(Debug, PartialEq, Eq)]
struct Options {
    create: bool,
    batch: bool,
    delete: bool,
    sha512: bool,
    iterations: u32,
    file: PathBuf,
    user: String,
    password: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        create: false,
        batch: false,
        delete: false,
        sha512: false,
        iterations: DEFAULT_ITERATIONS,
        file: PathBuf::new(),
        user: String::new(),
        password: None,
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-c" => o.create = true,
            "-b" => o.batch = true,
            "-D" => o.delete = true,
            "-H" => {
                i += 1;
                match args.get(i).map(String::as_str) {
                    Some("sha512-pbkdf2") => o.sha512 = false,
                    Some("sha512") => o.sha512 = true,
                    Some(other) => return Err(format!("unknown hash type {other:?}\n{USAGE}")),
                    None => return Err(format!("-H needs a hash type\n{USAGE}")),
                }
            }
            "-I" => {
                i += 1;
                let v = args.get(i).ok_or(format!("-I needs a number\n{USAGE}"))?;
                o.iterations = match v.parse::<u32>() {
                    Ok(n) if (1..=i32::MAX as u32).contains(&n) => n,
                    _ => {
                        return Err(format!(
                            "-I {v}: iterations must be between 1 and {}",
                            i32::MAX
                        ))
                    }
                };
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(format!("unknown option {s:?}\n{USAGE}"))
            }
            _ => break,
        }
        i += 1;
    }
    if o.create && o.delete {
        return Err("-c and -D cannot be used together".into());
    }
    if o.batch && o.delete {
        return Err("-b and -D cannot be used together".into());
    }
    let rest = &args[i..];
    let wanted = if o.batch { 3 } else { 2 };
    if rest.len() != wanted {
        return Err(format!(
            "expected {} after the options, got {} argument(s)\n{USAGE}",
            if o.batch {
                "FILE USER PASSWORD"
            } else {
                "FILE USER"
            },
            rest.len()
        ));
    }
    o.file = PathBuf::from(&rest[0]);
    o.user = rest[1].clone();
    o.password = rest.get(2).cloned();
    check_user(&o.user)?;
    Ok(o)
}

fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("the user name is empty".into());
    }
    if user.contains(':') {
        return Err(format!(
            "user name {user:?} contains ':', which the file uses as separator"
        ));
    }
    if user.chars().any(char::is_control) || user.trim() != user {
        return Err(format!(
            "user name {user:?} has control characters or surrounding blanks, which the file cannot hold"
        ));
    }
    if user.starts_with('#') {
        return Err(format!(
            "user name {user:?} starts with '#', which the file reads as a comment"
        ));
    }
    if user.len() > 65_535 {
        return Err("user name longer than 65535 bytes".into());
    }
    Ok(())
}

/// Run `coremq passwd` with the arguments after `passwd`.
pub fn run(args: &[String]) -> Result<(), String> {
    // Help wherever it is among the options (before FILE), as clap does for the main command.
    let options = args
        .iter()
        .take_while(|a| a.starts_with('-') && a.len() > 1);
    if options.clone().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return Ok(());
    }
    let o = parse_args(args)?;
    let existing = if o.create {
        String::new()
    } else {
        match std::fs::read_to_string(&o.file) {
            Ok(t) => t,
            Err(e) => {
                return Err(format!(
                    "cannot read {}: {e} (use -c to create it)",
                    o.file.display()
                ))
            }
        }
    };
    // Refuse to edit a file the broker would refuse: the edit would otherwise hide the bad line behind a success.
    PasswordFile::parse(&existing, &o.file).map_err(|e| e.to_string())?;
    let line = if o.delete {
        None
    } else {
        let password = match &o.password {
            Some(p) => p.clone(),
            None => ask_password()?,
        };
        let hash = if o.sha512 {
            PasswordHash::new_sha512(password.as_bytes())
        } else {
            PasswordHash::new_pbkdf2(password.as_bytes(), o.iterations)
        }
        .map_err(|e| e.to_string())?;
        Some(hash.to_line(&o.user))
    };
    let (text, found) = edit(&existing, &o.user, line.as_deref());
    if o.delete && !found {
        return Err(format!(
            "user {:?} not found in {}",
            o.user,
            o.file.display()
        ));
    }
    write_atomically(&o.file, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", o.file.display()))
}

/// The file's text with `user`'s line replaced by `line` (None: removed), or `line` appended when the user is new.
/// Other lines are kept byte for byte. Returns whether the user was there.
fn edit(existing: &str, user: &str, line: Option<&str>) -> (String, bool) {
    let mut out = String::with_capacity(existing.len() + 200);
    let mut found = false;
    for raw in existing.split_inclusive('\n') {
        let body = raw.trim_end_matches(['\n', '\r']);
        let is_user =
            !body.starts_with('#') && body.split_once(':').is_some_and(|(u, _)| u.trim() == user);
        if is_user {
            found = true;
            if let Some(l) = line {
                out.push_str(l);
                out.push('\n');
            }
        } else {
            out.push_str(raw);
            if !raw.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    if !found {
        if let Some(l) = line {
            out.push_str(l);
            out.push('\n');
        }
    }
    (out, found)
}

fn ask_password() -> Result<String, String> {
    let (first, second) = if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("Password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        let b = rpassword::prompt_password("Reenter password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        (a, b)
    } else {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock();
        (read_line(&mut lines)?, read_line(&mut lines)?)
    };
    if first != second {
        return Err("passwords do not match".into());
    }
    if first.len() > MAX_PASSWORD {
        return Err(format!("password longer than {MAX_PASSWORD} bytes"));
    }
    Ok(first)
}

fn read_line(input: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    // Bounded: a runaway stdin cannot make us buffer more than a password's worth.
    let n = std::io::Read::take(&mut *input, MAX_PASSWORD as u64 + 2)
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    if n == 0 {
        return Err("no password on stdin (expected it twice, one per line)".into());
    }
    let trimmed = line.trim_end_matches(['\n', '\r']);
    Ok(trimmed.to_string())
}

/// Write `path` through a temporary file in the same directory (mode 0600), fsync, rename over, fsync the
/// directory: a crash leaves the old file or the new one, never half of one.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn option_parsing_like_mosquitto_passwd() {
        let o = parse_args(&args(&["-c", "-b", "f", "u", "p"])).unwrap();
        assert!(o.create && o.batch && !o.delete);
        assert_eq!((o.user.as_str(), o.password.as_deref()), ("u", Some("p")));
        assert_eq!(o.iterations, 101);
        assert_eq!(
            parse_args(&args(&["-I", "1000", "f", "u"]))
                .unwrap()
                .iterations,
            1000
        );
        assert!(parse_args(&args(&["-I", "0", "f", "u"])).is_err());
        assert!(parse_args(&args(&["-c", "-D", "f", "u"])).is_err());
        assert!(parse_args(&args(&["-b", "-D", "f", "u", "p"])).is_err());
        assert!(parse_args(&args(&["-b", "f", "u"])).is_err());
        assert!(parse_args(&args(&["f"])).is_err());
        assert!(parse_args(&args(&["-x", "f", "u"])).is_err());
        assert!(parse_args(&args(&["f", "a:b"])).is_err());
        assert!(parse_args(&args(&["f", "#a"])).is_err());
        assert!(
            parse_args(&args(&["-H", "sha512", "-b", "f", "u", "p"]))
                .unwrap()
                .sha512
        );
    }

    #[test]
    fn edit_replaces_appends_and_deletes_keeping_other_lines() {
        let text = "# users\nalice:$6$x$y\nbob:$6$x$z\n";
        let (t, found) = edit(text, "bob", Some("bob:NEW"));
        assert!(found);
        assert_eq!(t, "# users\nalice:$6$x$y\nbob:NEW\n");
        let (t, found) = edit(text, "carol", Some("carol:NEW"));
        assert!(!found);
        assert_eq!(t, "# users\nalice:$6$x$y\nbob:$6$x$z\ncarol:NEW\n");
        let (t, found) = edit(text, "alice", None);
        assert!(found);
        assert_eq!(t, "# users\nbob:$6$x$z\n");
        let (t, _) = edit("a:1", "b", Some("b:2"));
        assert_eq!(t, "a:1\nb:2\n");
    }

    #[test]
    fn run_creates_updates_and_deletes_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        let fs = f.to_str().unwrap();
        run(&args(&["-c", "-b", fs, "alice", "one"])).unwrap();
        run(&args(&["-b", "-I", "7", fs, "bob", "two"])).unwrap();
        let pf = PasswordFile::load(&f).unwrap();
        assert!(pf.lookup("alice").unwrap().verify(b"one"));
        assert_eq!(pf.lookup("alice").unwrap().iterations(), 101);
        assert_eq!(pf.lookup("bob").unwrap().iterations(), 7);
        assert!(pf.lookup("bob").unwrap().verify(b"two"));
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        run(&args(&["-D", fs, "alice"])).unwrap();
        assert!(run(&args(&["-D", fs, "alice"]))
            .unwrap_err()
            .contains("not found"));
        let pf = PasswordFile::load(&f).unwrap();
        assert!(pf.lookup("alice").is_none());
        assert_eq!(pf.len(), 1);
        // -c overwrites.
        run(&args(&["-c", "-b", fs, "carol", "three"])).unwrap();
        let pf = PasswordFile::load(&f).unwrap();
        assert_eq!(pf.len(), 1);
        assert!(pf.lookup("carol").unwrap().verify(b"three"));
        // Without -c a missing file is an error, and a broken file is not edited.
        assert!(run(&args(&[
            "-b",
            dir.path().join("none").to_str().unwrap(),
            "u",
            "p"
        ]))
        .is_err());
        std::fs::write(&f, "carol:plain\n").unwrap();
        let e = run(&args(&["-b", fs, "dave", "p"])).unwrap_err();
        assert!(e.contains(":1: "), "{e}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "carol:plain\n");
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
