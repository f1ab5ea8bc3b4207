//! Feeds arbitrary text to the password-file parser (`src/auth/password.rs`, compiled from source). It must never
//! panic; an error names a line of the input; a file that parses must come back from `to_text` as the same users
//! with the same hashes, and `to_text` of that must be byte-identical (a fixpoint). Verification is not run: a
//! fuzzed `$7$` line may ask for 2^31 PBKDF2 iterations.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/auth/password.rs"]
mod password;

use password::PasswordFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match PasswordFile::parse(text, "fuzz") {
        Ok(file) => {
            let out = file.to_text();
            let again = PasswordFile::parse(&out, "again").expect("to_text must parse");
            assert_eq!(again.len(), file.len());
            for line in out.lines() {
                let (user, _) = line.split_once(':').unwrap();
                assert_eq!(again.lookup(user), file.lookup(user), "user {user:?}");
            }
            assert_eq!(again.to_text(), out);
        }
        Err(e) => {
            assert!(e.line >= 1 && e.line <= text.split('\n').count(), "{e}");
            assert!(!e.reason.is_empty());
        }
    }
});
