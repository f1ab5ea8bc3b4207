//! mosquitto's password file (`password_file`), sans-io apart from [`PasswordFile::load`].
//!
//! Format, from mosquitto 2.0's `src/security_default.c` (`pwfile__parse`, `unpwd__decode_passwords`) and
//! `src/password_mosq.c` (`pw__hash`), and what `apps/mosquitto_passwd` writes:
//! - one `user:hash` per line; a line whose first character is `#` is a comment; blank lines are skipped. The user
//!   name and the hash are trimmed of surrounding white space (`misc__trimblanks`).
//! - `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 over the password and the salt, `ITERATIONS` rounds (`atoi`, at
//!   least 1; `mosquitto_passwd` writes 101 unless `-I`). `$6$SALT$HASH`: SHA-512(password ‖ salt) (mosquitto
//!   1.x). `SALT` and `HASH` are standard base64 with padding; the salt must decode to exactly 12 bytes and the hash
//!   to exactly 64, or mosquitto drops the entry.
//!
//! Where mosquitto logs a bad entry and carries on without it (lines with no `:`, an empty hash, an unknown hash
//! type, bad base64), this module refuses the whole file with the path, the 1-based line and the reason, so a typo
//! never silently locks a user out or leaves an entry behind. Duplicate users are refused too (mosquitto's hash
//! table would keep both and match one of them).
//!
//! [`VerifyCache`] keeps PBKDF2 off the hot path for reconnecting clients (see its doc).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// mosquitto's salt length (`SALT_LEN` in `password_mosq.h`).
pub const SALT_LEN: usize = 12;
/// SHA-512 output, the only hash length mosquitto accepts.
pub const HASH_LEN: usize = 64;
/// `mosquitto_passwd`'s default PBKDF2 iteration count (`PW_DEFAULT_ITERATIONS`).
pub const DEFAULT_ITERATIONS: u32 = 101;
/// mosquitto refuses user names longer than this.
const MAX_USER_LEN: usize = 65_535;

/// A bad line in a password file: `path:line: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordFileError {
    pub path: PathBuf,
    /// 1-based; 0 when the file itself could not be read.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for PasswordFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.reason)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.reason)
        }
    }
}

impl std::error::Error for PasswordFileError {}

/// How a stored hash was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashKind {
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512,
    /// `$7$`: PBKDF2-HMAC-SHA512 with this many iterations.
    Pbkdf2Sha512 { iterations: u32 },
}

/// One stored credential: kind, salt and hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    kind: HashKind,
    salt: [u8; SALT_LEN],
    hash: [u8; HASH_LEN],
}

impl fmt::Debug for PasswordHash {
    // The hash is not secret like a password, but there is no reason to spray it into logs either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl PasswordHash {
    /// A new `$7$` hash of `password` with a random 12-byte salt (`mosquitto_passwd`'s format).
    pub fn new_pbkdf2(password: &[u8], iterations: u32) -> std::io::Result<PasswordHash> {
        if iterations == 0 || iterations > i32::MAX as u32 {
            return Err(std::io::Error::other(format!(
                "iterations must be between 1 and {} (mosquitto reads them with atoi)",
                i32::MAX
            )));
        }
        Ok(Self::from_parts(
            HashKind::Pbkdf2Sha512 { iterations },
            random_salt()?,
            password,
        ))
    }

    /// A new `$6$` hash (mosquitto 1.x's salted SHA-512, `mosquitto_passwd -H sha512`); weak, for old brokers only.
    pub fn new_sha512(password: &[u8]) -> std::io::Result<PasswordHash> {
        Ok(Self::from_parts(HashKind::Sha512, random_salt()?, password))
    }

    /// The hash of `password` with a given kind and salt (tests, and `$6$` lines made by hand).
    pub fn from_parts(kind: HashKind, salt: [u8; SALT_LEN], password: &[u8]) -> PasswordHash {
        PasswordHash {
            kind,
            salt,
            hash: digest(kind, &salt, password),
        }
    }

    /// Parse the part after `user:` (already trimmed).
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let Some(rest) = text.strip_prefix('$') else {
            return Err(if text.is_empty() {
                "empty password hash".to_string()
            } else {
                "the password is not hashed (plain text); hash it with `coremq passwd` or `mosquitto_passwd -U`"
                    .to_string()
            });
        };
        let (tag, rest) = rest.split_once('$').unwrap_or((rest, ""));
        let kind = match tag {
            "6" => HashKind::Sha512,
            "7" => {
                let (iters, after) = rest
                    .split_once('$')
                    .ok_or("missing iteration count after \"$7$\"")?;
                if iters.is_empty() || !iters.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("iteration count {iters:?} is not a number"));
                }
                let iterations = match iters.parse::<u32>() {
                    Ok(n) if (1..=i32::MAX as u32).contains(&n) => n,
                    _ => {
                        return Err(format!(
                            "iteration count {iters} is out of range (1 to {})",
                            i32::MAX
                        ))
                    }
                };
                return Self::salt_and_hash(HashKind::Pbkdf2Sha512 { iterations }, after);
            }
            other => return Err(format!("unknown hash type \"${other}$\"")),
        };
        Self::salt_and_hash(kind, rest)
    }

    fn salt_and_hash(kind: HashKind, text: &str) -> Result<PasswordHash, String> {
        let (salt_b64, hash_b64) = text
            .split_once('$')
            .ok_or("expected SALT$HASH after the hash type")?;
        let salt = B64
            .decode(salt_b64)
            .map_err(|e| format!("salt is not base64: {e}"))?;
        let salt: [u8; SALT_LEN] = salt.as_slice().try_into().map_err(|_| {
            format!(
                "salt is {} bytes, mosquitto requires {SALT_LEN}",
                salt.len()
            )
        })?;
        if hash_b64.contains('$') {
            return Err("unexpected '$' after the hash".to_string());
        }
        let hash = B64
            .decode(hash_b64)
            .map_err(|e| format!("hash is not base64: {e}"))?;
        let hash: [u8; HASH_LEN] = hash
            .as_slice()
            .try_into()
            .map_err(|_| format!("hash is {} bytes, SHA-512 gives {HASH_LEN}", hash.len()))?;
        Ok(PasswordHash { kind, salt, hash })
    }

    pub fn kind(&self) -> HashKind {
        self.kind
    }

    /// The cost of one [`verify`](Self::verify) in PBKDF2 iterations (1 for `$6$`): past a few thousand, verify off
    /// the shard loop (and remember the result in a [`VerifyCache`]).
    pub fn iterations(&self) -> u32 {
        match self.kind {
            HashKind::Sha512 => 1,
            HashKind::Pbkdf2Sha512 { iterations } => iterations,
        }
    }

    /// Does `password` match? The comparison of the digests is constant-time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let computed = digest(self.kind, &self.salt, password);
        computed.ct_eq(&self.hash).into()
    }

    /// The hash in the file's notation, e.g. `$7$101$SALT$HASH`.
    pub fn encode(&self) -> String {
        let salt = B64.encode(self.salt);
        let hash = B64.encode(self.hash);
        match self.kind {
            HashKind::Sha512 => format!("$6${salt}${hash}"),
            HashKind::Pbkdf2Sha512 { iterations } => format!("$7${iterations}${salt}${hash}"),
        }
    }

    /// A password file line (without the newline): `user:$7$...`.
    pub fn to_line(&self, user: &str) -> String {
        format!("{user}:{}", self.encode())
    }
}

fn random_salt() -> std::io::Result<[u8; SALT_LEN]> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::getrandom(&mut salt)
        .map_err(|e| std::io::Error::other(format!("no random salt: {e}")))?;
    Ok(salt)
}

fn digest(kind: HashKind, salt: &[u8; SALT_LEN], password: &[u8]) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    match kind {
        HashKind::Sha512 => {
            let mut h = Sha512::new();
            h.update(password);
            h.update(salt);
            out.copy_from_slice(&h.finalize());
        }
        HashKind::Pbkdf2Sha512 { iterations } => {
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
        }
    }
    out
}

/// A parsed password file: user name to hash.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<Box<str>, PasswordHash>,
    /// User names in file order, so a rewrite keeps the order (`coremq passwd`).
    order: Vec<Box<str>>,
}

impl PasswordFile {
    /// Parse a password file's text; `path` is only used in errors.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<PasswordFile, PasswordFileError> {
        let path = path.as_ref();
        let err = |line: usize, reason: String| PasswordFileError {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut file = PasswordFile::default();
        let mut first_line: HashMap<Box<str>, usize> = HashMap::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line_no = i + 1;
            if raw.starts_with('#') || raw.trim().is_empty() {
                continue;
            }
            let Some((user, hash)) = raw.split_once(':') else {
                return Err(err(
                    line_no,
                    "expected `user:hash` (no ':' on this line)".into(),
                ));
            };
            let user = user.trim();
            let hash = hash.trim();
            if user.is_empty() {
                return Err(err(line_no, "empty user name".into()));
            }
            // Only reachable with blanks before the '#'; mosquitto would read a user "#...", but `to_text` would
            // write a comment line, so refuse it as `coremq passwd` does (found by fuzz/password_file).
            if user.starts_with('#') {
                return Err(err(
                    line_no,
                    "user name starts with '#' (written back, the line would be a comment)".into(),
                ));
            }
            if user.len() > MAX_USER_LEN {
                return Err(err(
                    line_no,
                    format!("user name is longer than {MAX_USER_LEN} bytes"),
                ));
            }
            if hash.contains(':') {
                return Err(err(line_no, "more than one ':' on this line".into()));
            }
            let parsed = PasswordHash::parse(hash)
                .map_err(|r| err(line_no, format!("user {user:?}: {r}")))?;
            if let Some(first) = first_line.get(user) {
                return Err(err(
                    line_no,
                    format!("user {user:?} is already defined on line {first}"),
                ));
            }
            first_line.insert(user.into(), line_no);
            file.insert(user, parsed);
        }
        Ok(file)
    }

    /// Read and parse `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<PasswordFile, PasswordFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| PasswordFileError {
            path: path.to_path_buf(),
            line: 0,
            reason: format!("cannot read password file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    pub fn lookup(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Add or replace `user` (a replaced user keeps its place in the file).
    pub fn insert(&mut self, user: &str, hash: PasswordHash) {
        if self.users.insert(user.into(), hash).is_none() {
            self.order.push(user.into());
        }
    }

    /// Remove `user`; false if it was not there.
    pub fn remove(&mut self, user: &str) -> bool {
        if self.users.remove(user).is_none() {
            return false;
        }
        self.order.retain(|u| &**u != user);
        true
    }

    /// The file's text: one `user:hash` line per user, in file order.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for user in &self.order {
            out.push_str(&self.users[user].to_line(user));
            out.push('\n');
        }
        out
    }
}

/// The key of a [`VerifyCache`] entry: HMAC-SHA256-like digest under the cache's random secret of
/// (user, stored hash, password). Cheap to compute (two SHA-256 blocks or so) on the shard loop.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CacheKey([u8; 32]);

/// Remembers credentials that verified, so a reconnect storm with costly `$7$` hashes pays one PBKDF2 per user and
/// password, not one per CONNECT.
///
/// An entry is keyed by a digest of the user name, the stored hash (kind, iterations, salt, hash) and the password
/// offered, under a random per-cache secret: a changed password, a reloaded file with a new hash for the user, or a
/// different password all give a different key, so a stale entry never passes. Only successes are stored (failed
/// attempts are not remembered: each costs a full verify, rate limiting is the caller's business). Bounded by
/// `capacity` entries, evicted by the clock algorithm (an entry used since the hand last passed survives one turn).
pub struct VerifyCache {
    secret: [u8; 32],
    index: HashMap<CacheKey, usize>,
    slots: Vec<Slot>,
    hand: usize,
    capacity: usize,
}

struct Slot {
    key: CacheKey,
    referenced: bool,
}

impl VerifyCache {
    /// A cache of at most `capacity` entries (0 disables it).
    pub fn new(capacity: usize) -> VerifyCache {
        let mut secret = [0u8; 32];
        if getrandom::getrandom(&mut secret).is_err() {
            // Without randomness the keys are still correct, only predictable; they never leave the process.
            secret = *b"coremq verify cache fixed secret";
        }
        VerifyCache {
            secret,
            index: HashMap::with_capacity(capacity.min(1 << 16)),
            slots: Vec::with_capacity(capacity.min(1 << 16)),
            hand: 0,
            capacity,
        }
    }

    /// The key for this attempt (compute on the shard; keep it to [`insert`](Self::insert) after an off-loop verify).
    pub fn key(&self, user: &str, stored: &PasswordHash, password: &[u8]) -> CacheKey {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update([match stored.kind {
            HashKind::Sha512 => 6u8,
            HashKind::Pbkdf2Sha512 { .. } => 7u8,
        }]);
        h.update(stored.iterations().to_le_bytes());
        h.update(stored.salt);
        h.update(stored.hash);
        h.update((password.len() as u64).to_le_bytes());
        h.update(password);
        // Outer round so a length-extension of the inner digest gives nothing.
        let inner = h.finalize();
        let mut outer = Sha256::new();
        outer.update(self.secret);
        outer.update(inner);
        CacheKey(outer.finalize().into())
    }

    /// Was this key remembered? Marks it recently used.
    pub fn contains(&mut self, key: &CacheKey) -> bool {
        match self.index.get(key) {
            Some(&i) => {
                self.slots[i].referenced = true;
                true
            }
            None => false,
        }
    }

    /// Remember a key whose password verified.
    pub fn insert(&mut self, key: CacheKey) {
        if self.capacity == 0 || self.contains(&key) {
            return;
        }
        if self.slots.len() < self.capacity {
            self.index.insert(key, self.slots.len());
            self.slots.push(Slot {
                key,
                referenced: false,
            });
            return;
        }
        loop {
            let slot = &mut self.slots[self.hand];
            if slot.referenced {
                slot.referenced = false;
                self.hand = (self.hand + 1) % self.capacity;
                continue;
            }
            self.index.remove(&slot.key);
            slot.key = key;
            self.index.insert(key, self.hand);
            self.hand = (self.hand + 1) % self.capacity;
            return;
        }
    }

    /// Verify `password` for `user` against `stored`, answering from the cache when it can and remembering a
    /// success. For costly hashes called on the shard loop, prefer `key` + `contains` there and the verify off it.
    pub fn verify(&mut self, user: &str, stored: &PasswordHash, password: &[u8]) -> bool {
        let key = self.key(user, stored, password);
        if self.contains(&key) {
            return true;
        }
        if stored.verify(password) {
            self.insert(key);
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Forget everything (e.g. after a reload; not needed for correctness, keys already change with the hashes).
    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.hand = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: [u8; SALT_LEN] = *b"0123456789ab";

    #[test]
    fn pbkdf2_round_trip_and_wrong_password() {
        let h = PasswordHash::new_pbkdf2(b"secret", 101).unwrap();
        assert_eq!(h.iterations(), 101);
        assert!(h.verify(b"secret"));
        assert!(!h.verify(b"Secret"));
        assert!(!h.verify(b""));
        let line = h.to_line("alice");
        assert!(line.starts_with("alice:$7$101$"), "{line}");
        let f = PasswordFile::parse(&format!("{line}\n"), "pw").unwrap();
        assert_eq!(f.lookup("alice"), Some(&h));
        assert!(f.lookup("bob").is_none());
    }

    #[test]
    fn pbkdf2_known_vector() {
        // PBKDF2-HMAC-SHA512("pw", "0123456789ab", 101), from Python's hashlib.pbkdf2_hmac.
        let line = "$7$101$MDEyMzQ1Njc4OWFi$vFbTB7Kf+gJLaly5vZjJVEn8l0QbC4MOGo84CxUMylg93aIeQWQJMp9tQfk5VldCj2oBULOWKYvvn1FCLgTk5g==";
        let h = PasswordHash::parse(line).unwrap();
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"pw2"));
        assert_eq!(h.encode(), line);
    }

    #[test]
    fn random_salts_differ() {
        let a = PasswordHash::new_pbkdf2(b"x", 1).unwrap();
        let b = PasswordHash::new_pbkdf2(b"x", 1).unwrap();
        assert_ne!(a.encode(), b.encode());
    }

    #[test]
    fn sha512_known_vector() {
        // SHA-512("pw" || "0123456789ab"), computed independently with Python's hashlib.
        let h = PasswordHash::from_parts(HashKind::Sha512, SALT, b"pw");
        let expected = "$6$MDEyMzQ1Njc4OWFi$8/vLlIBNWDWQNrOsnABF7HBJVefyJvNB1+8wiFDgRR4kb+nKGzWaXywQa+GaVEC8ptdoroDyOZKpi4iEm1M3Ww==";
        assert_eq!(h.encode(), expected);
        let parsed = PasswordHash::parse(&h.encode()).unwrap();
        assert!(parsed.verify(b"pw"));
        assert!(!parsed.verify(b"pw "));
        assert_eq!(parsed.iterations(), 1);
    }

    #[test]
    fn comments_blank_lines_and_trimming() {
        let h = PasswordHash::from_parts(HashKind::Sha512, SALT, b"pw").encode();
        let text = format!("# comment\n\n   \n bob : {h} \r\n#x:y\n");
        let f = PasswordFile::parse(&text, "pw").unwrap();
        assert_eq!(f.len(), 1);
        assert!(f.lookup("bob").unwrap().verify(b"pw"));
    }

    fn bad(text: &str) -> PasswordFileError {
        PasswordFile::parse(text, "passwd").unwrap_err()
    }

    #[test]
    fn bad_lines_name_path_line_and_reason() {
        let good = PasswordHash::from_parts(HashKind::Sha512, SALT, b"pw").encode();
        let e = bad(&format!("#c\na:{good}\nb:$2y$10$abc\n"));
        assert_eq!(
            e.to_string(),
            "passwd:3: user \"b\": unknown hash type \"$2y$\""
        );
        assert_eq!(e.line, 3);
        assert!(bad("no colon here\n")
            .to_string()
            .starts_with("passwd:1: expected"));
        assert!(bad("u:plain\n").reason.contains("plain text"));
        assert!(bad("u:\n").reason.contains("empty password hash"));
        assert!(bad(":$6$x$y\n").reason.contains("empty user name"));
        assert!(bad("u:$7$abc$x$y\n").reason.contains("not a number"));
        assert!(bad("u:$7$0$x$y\n").reason.contains("out of range"));
        assert!(bad("u:$6$!!!$y\n").reason.contains("salt is not base64"));
        assert!(bad("u:$6$AAAA$y\n").reason.contains("salt is 3 bytes"));
        assert!(bad(&format!("a:{good}\n\na:{good}\n"))
            .to_string()
            .contains("passwd:3: user \"a\" is already defined on line 1"));
        let short_hash = "$6$MDEyMzQ1Njc4OWFi$AAAA";
        assert!(bad(&format!("u:{short_hash}\n"))
            .reason
            .contains("hash is 3 bytes"));
    }

    #[test]
    fn rewrite_keeps_order_and_removes() {
        let mut f = PasswordFile::default();
        for u in ["c", "a", "b"] {
            f.insert(
                u,
                PasswordHash::from_parts(HashKind::Sha512, SALT, u.as_bytes()),
            );
        }
        f.insert(
            "a",
            PasswordHash::from_parts(HashKind::Sha512, SALT, b"new"),
        );
        assert!(f.remove("c"));
        assert!(!f.remove("c"));
        let again = PasswordFile::parse(&f.to_text(), "x").unwrap();
        assert_eq!(again.order, f.order);
        assert!(again.lookup("a").unwrap().verify(b"new"));
        assert!(again.lookup("b").unwrap().verify(b"b"));
    }

    #[test]
    fn cache_hits_only_the_same_credential() {
        let mut cache = VerifyCache::new(4);
        let h1 = PasswordHash::new_pbkdf2(b"pw", 1).unwrap();
        assert!(cache.verify("u", &h1, b"pw"));
        assert_eq!(cache.len(), 1);
        assert!(cache.contains(&cache.key("u", &h1, b"pw")));
        // Wrong password: not cached, not accepted.
        assert!(!cache.verify("u", &h1, b"px"));
        assert_eq!(cache.len(), 1);
        // Another user with the same hash and password is another key.
        assert!(!cache.contains(&cache.key("v", &h1, b"pw")));
        // The password changed (new hash): the old entry does not let the old password in.
        let h2 = PasswordHash::new_pbkdf2(b"other", 1).unwrap();
        assert!(!cache.contains(&cache.key("u", &h2, b"pw")));
        assert!(!cache.verify("u", &h2, b"pw"));
    }

    #[test]
    fn cache_is_bounded_and_clock_keeps_used_entries() {
        let mut cache = VerifyCache::new(3);
        let h = PasswordHash::from_parts(HashKind::Sha512, SALT, b"pw");
        let keys: Vec<CacheKey> = (0..10)
            .map(|i| cache.key(&format!("u{i}"), &h, b"pw"))
            .collect();
        for k in &keys[..3] {
            cache.insert(*k);
        }
        assert!(cache.contains(&keys[0])); // referenced: survives the next eviction
        cache.insert(keys[3]);
        assert_eq!(cache.len(), 3);
        assert!(cache.contains(&keys[0]));
        assert!(
            !cache.contains(&keys[1]),
            "the unreferenced oldest entry is evicted"
        );
        for k in &keys[4..] {
            cache.insert(*k);
            assert!(cache.len() <= 3);
        }
        assert!(cache.contains(&keys[9]));
        let mut off = VerifyCache::new(0);
        off.insert(keys[0]);
        assert!(off.is_empty());
    }
}
