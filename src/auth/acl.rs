//! mosquitto's ACL file (`acl_file`), parsed once and compiled into tries for per-message checks.
//!
//! The rules, as mosquitto 2.0 implements them (`src/security_default.c`: `aclfile__parse`, `add__acl`,
//! `add__acl_pattern`, `acl__find_acls`, `mosquitto_acl_check_default`; `src/security.c`: `acl__check_dollar`):
//!
//! Syntax
//! - Trailing white space is stripped; a line whose first character is `#` is a comment (a `#` after leading
//!   blanks is not, and is an invalid line); empty lines are skipped. Words are separated by spaces only.
//! - `topic [read|write|readwrite|deny] FILTER` and `pattern [...] FILTER`: with one word after the keyword, that
//!   word is the filter and the access is `readwrite` (so `topic read` grants readwrite on the topic `read`). The
//!   filter is the rest of the line, trimmed (it may contain spaces) and must be a valid subscription filter.
//! - `user NAME`: the rest of the line, trimmed. Any other first word is an error.
//!
//! Who a rule applies to
//! - `topic` lines before the first `user` line apply to clients without a user name (anonymous); after a `user`
//!   line, to clients with exactly that user name. Two blocks for one user are merged. A client whose user name has
//!   no block gets no `topic` rules (only patterns).
//! - `pattern` lines apply to every client, wherever they are in the file. `%c` is replaced by the client id and
//!   `%u` by the user name, anywhere in the filter; a pattern with `%u` is skipped for a client without a user name.
//!   If any pattern exists and the client id or user name contains `+` or `#`, the patterns deny everything for it.
//!
//! How a check is decided (PUBLISH is a write check; every delivered message, retained ones included, a read check)
//! - `$SYS...` topics can never be written, except `$SYS/broker/connection/+/state`; `$share...` topics can never
//!   be written or read. (Reading `$SYS` is decided by the rules like any topic.)
//! - The client's `topic` rules: if a matching rule is `deny`, denied; else if a matching rule grants the access,
//!   allowed. Then the patterns, the same way. Nothing matched: denied. (mosquitto lists deny rules first and stops
//!   at the first matching rule that denies or grants, which is the same thing.)
//! - Matching is MQTT's (`mosquitto_topic_matches_sub`): `+` one level, `#` the rest (`a/#` matches `a`), and a
//!   topic starting with `$` is matched only by rules starting with `$`.
//! - An ACL file with no rules at all denies every read and write.
//! - SUBSCRIBE: mosquitto 2.0's ACL file does **not** check subscriptions (`mosquitto_acl_check_default` returns
//!   success for `MOSQ_ACL_SUBSCRIBE`: a comment there says subscription strings are not implemented); a client may subscribe to any
//!   filter and each message is checked with the read rules on delivery. [`ClientAcl::can_subscribe`] follows that.
//!   [`ClientAcl::may_read_under`] is a stricter check a broker may add on top: could any topic the filter matches
//!   be allowed by a read rule (filter-against-filter overlap, wildcards on both sides)?
//!
//! Compilation: each user block (and the anonymous block) becomes a trie over topic levels, shared through an
//! `Arc` by every connection of that user. Patterns are expanded per connection ([`AclFile::for_client`]) into a
//! small trie of their own. A check walks the topic's levels through the tries, following the literal, `+` and
//! `#` children, so its cost depends on the topic's depth and the wildcards on its path, not on the number of rules.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::topic::{topic_matches, validate_topic_filter};

/// Access bits (mosquitto's `MOSQ_ACL_READ` = 1, `MOSQ_ACL_WRITE` = 2); `deny` is a separate bit here.
const READ: u8 = 1;
const WRITE: u8 = 2;
const DENY: u8 = 4;

/// A bad line in an ACL file: `path:line: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFileError {
    pub path: PathBuf,
    /// 1-based; 0 when the file itself could not be read.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for AclFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.reason)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.reason)
        }
    }
}

impl std::error::Error for AclFileError {}

/// One `topic` or `pattern` line as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// `READ`, `WRITE`, both, or `DENY`.
    access: u8,
    pub filter: String,
}

impl AclRule {
    pub fn is_deny(&self) -> bool {
        self.access == DENY
    }
    pub fn can_read(&self) -> bool {
        self.access & READ != 0
    }
    pub fn can_write(&self) -> bool {
        self.access & WRITE != 0
    }
}

/// A parsed ACL file: the `topic` rules of each user (and of anonymous clients) compiled and shared, plus the
/// patterns.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    anonymous: Option<Arc<Trie>>,
    users: HashMap<Box<str>, Arc<Trie>>,
    patterns: Vec<AclRule>,
    /// The rules as written, for [`reference_check`] and diagnostics: (user or None, rule).
    topic_rules: Vec<(Option<Box<str>>, AclRule)>,
}

impl AclFile {
    /// Parse an ACL file's text; `path` is only used in errors.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<AclFile, AclFileError> {
        let path = path.as_ref();
        let err = |line: usize, reason: String| AclFileError {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut user: Option<Box<str>> = None;
        let mut topic_rules = Vec::new();
        let mut patterns = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line_no = i + 1;
            let line = raw.trim_end();
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim_start_matches(' ');
            let (word, rest) = match line.split_once(' ') {
                Some((w, r)) => (w, r),
                None => (line, ""),
            };
            match word {
                "" => continue,
                "topic" | "pattern" => {
                    let rest = rest.trim_start_matches(' ');
                    let (access_word, filter) = match rest.split_once(' ') {
                        Some((a, f)) if !f.trim().is_empty() => (Some(a), f.trim()),
                        Some((a, _)) => (None, a),
                        None => (None, rest),
                    };
                    if filter.is_empty() {
                        return Err(err(line_no, format!("`{word}` without a topic filter")));
                    }
                    let access = match access_word {
                        None | Some("readwrite") => READ | WRITE,
                        Some("read") => READ,
                        Some("write") => WRITE,
                        Some("deny") => DENY,
                        Some(other) => {
                            return Err(err(
                                line_no,
                                format!(
                                    "invalid access {other:?} (expected read, write, readwrite or deny)"
                                ),
                            ))
                        }
                    };
                    if filter.len() > 65_535 {
                        return Err(err(line_no, "topic filter longer than 65535 bytes".into()));
                    }
                    if let Err(e) = validate_topic_filter(filter) {
                        return Err(err(line_no, format!("invalid topic filter {filter:?}: {e}")));
                    }
                    let rule = AclRule {
                        access,
                        filter: filter.to_string(),
                    };
                    if word == "topic" {
                        topic_rules.push((user.clone(), rule));
                    } else {
                        patterns.push(rule);
                    }
                }
                "user" => {
                    let name = rest.trim();
                    if name.is_empty() {
                        return Err(err(line_no, "`user` without a user name".into()));
                    }
                    user = Some(name.into());
                }
                _ if word.starts_with('#') => {
                    return Err(err(
                        line_no,
                        "a comment must start in the first column (mosquitto treats this as an invalid line)"
                            .into(),
                    ))
                }
                other => {
                    return Err(err(
                        line_no,
                        format!("invalid line: unknown keyword {other:?} (expected topic, pattern or user)"),
                    ))
                }
            }
        }
        let mut anonymous = Trie::default();
        let mut has_anonymous = false;
        let mut users: HashMap<Box<str>, Trie> = HashMap::new();
        for (u, rule) in &topic_rules {
            match u {
                None => {
                    has_anonymous = true;
                    anonymous.insert(&rule.filter, rule.access);
                }
                Some(u) => users
                    .entry(u.clone())
                    .or_default()
                    .insert(&rule.filter, rule.access),
            }
        }
        Ok(AclFile {
            anonymous: has_anonymous.then(|| Arc::new(anonymous)),
            users: users.into_iter().map(|(u, t)| (u, Arc::new(t))).collect(),
            patterns,
            topic_rules,
        })
    }

    /// Read and parse `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<AclFile, AclFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| AclFileError {
            path: path.to_path_buf(),
            line: 0,
            reason: format!("cannot read ACL file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// The compiled rules for one connection: the user's (or anonymous) shared trie plus the patterns expanded for
    /// this client id and user name. Call once per connection (after CONNECT), then check with the result.
    pub fn for_client(&self, client_id: &str, username: Option<&str>) -> ClientAcl {
        let topics = match username {
            Some(u) => self.users.get(u).cloned(),
            None => self.anonymous.clone(),
        };
        let dangerous = !self.patterns.is_empty()
            && (has_wildcard(client_id) || username.is_some_and(has_wildcard));
        let mut patterns = None;
        if !self.patterns.is_empty() && !dangerous {
            let mut trie = Trie::default();
            for rule in &self.patterns {
                // An empty expansion (`%c` with an empty id) matches nothing, as in mosquitto.
                if let Some(filter) =
                    expand(&rule.filter, client_id, username).filter(|f| !f.is_empty())
                {
                    trie.insert(&filter, rule.access);
                }
            }
            patterns = Some(Box::new(trie));
        }
        ClientAcl {
            topics,
            patterns,
            has_patterns: !self.patterns.is_empty(),
        }
    }

    /// The patterns in file order.
    pub fn patterns(&self) -> &[AclRule] {
        &self.patterns
    }

    /// The `topic` rules in file order with the user they belong to (None: anonymous).
    pub fn topic_rules(&self) -> impl Iterator<Item = (Option<&str>, &AclRule)> {
        self.topic_rules.iter().map(|(u, r)| (u.as_deref(), r))
    }
}

fn has_wildcard(s: &str) -> bool {
    s.bytes().any(|b| b == b'+' || b == b'#')
}

/// mosquitto's substitution: one left-to-right pass, `%c` -> client id, `%u` -> user name. None when the pattern
/// uses `%u` and there is no user name (mosquitto skips the rule).
pub fn expand(pattern: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    if username.is_none() && pattern.contains("%u") {
        return None;
    }
    let b = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len() + client_id.len());
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 1 < b.len() && (b[i + 1] == b'c' || b[i + 1] == b'u') {
            out.push_str(&pattern[start..i]);
            out.push_str(if b[i + 1] == b'c' {
                client_id
            } else {
                username.unwrap_or("")
            });
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&pattern[start..]);
    Some(out)
}

/// What one connection may do; cheap to query on every PUBLISH and every delivery.
///
/// Memory per connection: this struct (24 bytes: an `Arc` to the user's shared trie, a `Box` to the expanded
/// patterns, a flag) plus, only when the file has patterns, the expanded pattern trie (see [`Trie`]).
#[derive(Debug, Clone)]
pub struct ClientAcl {
    topics: Option<Arc<Trie>>,
    patterns: Option<Box<Trie>>,
    has_patterns: bool,
}

/// Outcome of one rule set: a deny matched, an access was granted, or nothing decided.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    Deny,
    Allow,
    NoMatch,
}

impl ClientAcl {
    /// May the client PUBLISH to `topic` (a valid topic name)?
    pub fn can_write(&self, topic: &str) -> bool {
        if topic.starts_with("$SYS") {
            // Only the bridge status topic may be written under $SYS (acl__check_dollar).
            if !topic_matches("$SYS/broker/connection/+/state", topic) {
                return false;
            }
        } else if topic.starts_with("$share") {
            return false;
        }
        self.check(topic, WRITE)
    }

    /// May a message on `topic` be delivered to the client (also for retained messages on subscribe)?
    pub fn can_read(&self, topic: &str) -> bool {
        if topic.starts_with("$share") {
            return false;
        }
        self.check(topic, READ)
    }

    /// May the client SUBSCRIBE to `filter`? Always, as in mosquitto 2.0 with an ACL file (see the module doc):
    /// what it may read is decided per message by [`can_read`](Self::can_read).
    pub fn can_subscribe(&self, _filter: &str) -> bool {
        true
    }

    /// Could some topic matched by `filter` be readable, i.e. does a read (or readwrite) rule's filter overlap it?
    /// Not a mosquitto check: a broker may use it to refuse subscriptions that can never deliver anything. Deny
    /// rules are not taken into account (a deny on part of the filter still leaves the rest), so `true` is not a
    /// promise that anything will be delivered.
    pub fn may_read_under(&self, filter: &str) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let dollar = filter.starts_with('$');
        self.topics
            .as_deref()
            .is_some_and(|t| t.overlaps(&levels, dollar, READ))
            || self
                .patterns
                .as_deref()
                .is_some_and(|t| t.overlaps(&levels, dollar, READ))
    }

    fn check(&self, topic: &str, wanted: u8) -> bool {
        if let Some(t) = &self.topics {
            match verdict(t.matches(topic), wanted) {
                Verdict::Deny => return false,
                Verdict::Allow => return true,
                Verdict::NoMatch => {}
            }
        }
        if !self.has_patterns {
            return false;
        }
        // `patterns` is None when the file has patterns but this client's id or name holds a wildcard.
        match &self.patterns {
            Some(p) => verdict(p.matches(topic), wanted) == Verdict::Allow,
            None => false,
        }
    }
}

fn verdict(mask: u8, wanted: u8) -> Verdict {
    if mask & DENY != 0 {
        Verdict::Deny
    } else if mask & wanted != 0 {
        Verdict::Allow
    } else {
        Verdict::NoMatch
    }
}

/// The reference semantics, a direct transcription of `mosquitto_acl_check_default` (scan every rule in
/// mosquitto's order with a plain matcher) including the `$SYS`/`$share` rules: what the compiled [`ClientAcl`]
/// must agree with (tests, and anyone auditing the tries). `write`: a write check, else a read check.
pub fn reference_check(
    acl: &AclFile,
    client_id: &str,
    username: Option<&str>,
    topic: &str,
    write: bool,
) -> bool {
    let wanted = if write { WRITE } else { READ };
    if topic.starts_with("$SYS") {
        if write && !topic_matches("$SYS/broker/connection/+/state", topic) {
            return false;
        }
    } else if topic.starts_with("$share") {
        return false;
    }
    // mosquitto keeps deny rules in front of the others (add__acl), then stops at the first decisive match.
    let ordered = |rules: Vec<&AclRule>| -> Vec<AclRule> {
        let mut denies: Vec<AclRule> = rules
            .iter()
            .filter(|r| r.is_deny())
            .map(|r| (*r).clone())
            .collect();
        denies.reverse();
        denies.extend(rules.iter().filter(|r| !r.is_deny()).map(|r| (*r).clone()));
        denies
    };
    let mine: Vec<&AclRule> = acl
        .topic_rules
        .iter()
        .filter(|(u, _)| u.as_deref() == username)
        .map(|(_, r)| r)
        .collect();
    let has_block = match username {
        None => acl.topic_rules.iter().any(|(u, _)| u.is_none()),
        Some(name) => acl
            .topic_rules
            .iter()
            .any(|(u, _)| u.as_deref() == Some(name)),
    };
    if !has_block && acl.patterns.is_empty() {
        return false;
    }
    let decide = |filter: &str, rule: &AclRule| -> Option<bool> {
        let hit =
            (filter.starts_with('$') || !topic.starts_with('$')) && topic_matches(filter, topic);
        if !hit {
            return None;
        }
        if rule.is_deny() {
            return Some(false);
        }
        (rule.access & wanted != 0).then_some(true)
    };
    for rule in ordered(mine) {
        if let Some(d) = decide(&rule.filter, &rule) {
            return d;
        }
    }
    if !acl.patterns.is_empty() && (has_wildcard(client_id) || username.is_some_and(has_wildcard)) {
        return false;
    }
    for rule in ordered(acl.patterns.iter().collect()) {
        let Some(filter) = expand(&rule.filter, client_id, username) else {
            continue;
        };
        if filter.is_empty() {
            continue; // mosquitto_topic_matches_sub refuses an empty filter: no match
        }
        if let Some(d) = decide(&filter, &rule) {
            return d;
        }
    }
    false
}

/// A trie over topic levels. Nodes live in one vector; children are found through one map keyed by
/// (parent, level), so a node costs 12 bytes plus its map entry, and a small trie (a connection's expanded
/// patterns) is a couple of allocations.
#[derive(Debug, Clone, Default)]
pub struct Trie {
    nodes: Vec<Node>,
    literal: HashMap<(u32, Box<str>), u32, ahash::RandomState>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    /// The `+` child, or `NONE`.
    plus: u32,
    /// Access bits of rules ending in `/#` at this node (they also match this node's own topic: `a/#` matches `a`).
    hash: u8,
    /// Access bits of rules ending exactly here.
    end: u8,
}

const NONE: u32 = u32::MAX;
const ROOT: u32 = 0;
/// Active-node set size kept on the stack; larger sets (many `+` rules on one path) spill to the heap.
const INLINE_ACTIVE: usize = 16;

impl Trie {
    fn ensure_root(&mut self) {
        if self.nodes.is_empty() {
            self.nodes.push(Node {
                plus: NONE,
                ..Node::default()
            });
        }
    }

    fn new_node(&mut self) -> u32 {
        self.nodes.push(Node {
            plus: NONE,
            ..Node::default()
        });
        (self.nodes.len() - 1) as u32
    }

    fn insert(&mut self, filter: &str, access: u8) {
        self.ensure_root();
        let mut node = ROOT;
        for level in filter.split('/') {
            match level {
                "#" => {
                    self.nodes[node as usize].hash |= access;
                    return;
                }
                "+" => {
                    let child = self.nodes[node as usize].plus;
                    node = if child == NONE {
                        let c = self.new_node();
                        self.nodes[node as usize].plus = c;
                        c
                    } else {
                        child
                    };
                }
                lit => {
                    let key = (node, Box::<str>::from(lit));
                    node = match self.literal.get(&key) {
                        Some(&c) => c,
                        None => {
                            let c = self.new_node();
                            self.literal.insert(key, c);
                            c
                        }
                    };
                }
            }
        }
        self.nodes[node as usize].end |= access;
    }

    fn child(&self, node: u32, level: &str) -> Option<u32> {
        if self.literal.is_empty() {
            return None;
        }
        // The map is keyed by an owned level; look up through a borrowed-equivalent key without allocating.
        self.literal.get(&(node, level) as &dyn LevelKey).copied()
    }

    /// OR of the access bits of every rule whose filter matches `topic`.
    fn matches(&self, topic: &str) -> u8 {
        if self.nodes.is_empty() {
            return 0;
        }
        let dollar = topic.starts_with('$');
        let mut active = Active::new();
        let mut next = Active::new();
        active.push(ROOT);
        let mut mask = 0u8;
        let mut first = true;
        for level in topic.split('/') {
            next.clear();
            for &n in active.as_slice() {
                let node = &self.nodes[n as usize];
                // `+`/`#` in the first level do not match `$` topics.
                let wild = !(first && dollar);
                if wild {
                    mask |= node.hash;
                    if node.plus != NONE {
                        next.push(node.plus);
                    }
                }
                if let Some(c) = self.child(n, level) {
                    next.push(c);
                }
            }
            std::mem::swap(&mut active, &mut next);
            first = false;
            if active.is_empty() {
                return mask;
            }
        }
        for &n in active.as_slice() {
            let node = &self.nodes[n as usize];
            mask |= node.end | node.hash;
        }
        mask
    }

    /// Does some rule with `access` overlap the filter `levels` (both may hold wildcards)? `dollar`: the filter's
    /// first level starts with `$` (then a rule's leading wildcard cannot overlap it).
    fn overlaps(&self, levels: &[&str], dollar: bool, access: u8) -> bool {
        if self.nodes.is_empty() {
            return false;
        }
        self.overlaps_from(ROOT, levels, 0, dollar, access)
    }

    fn overlaps_from(
        &self,
        n: u32,
        levels: &[&str],
        depth: usize,
        dollar: bool,
        access: u8,
    ) -> bool {
        let node = &self.nodes[n as usize];
        let wild_ok = !(depth == 0 && dollar);
        if wild_ok && node.hash & access != 0 {
            return true;
        }
        let Some((&level, rest)) = levels.split_first() else {
            return node.end & access != 0;
        };
        match level {
            // The subscription's `#` covers everything below: any rule in this subtree overlaps.
            "#" => {
                // A `$` topic needs a `$` rule at level 0; with the `$` rule the subtree walk handles it.
                self.subtree_has(n, access, depth == 0)
            }
            "+" => {
                let leading_dollar_only = depth == 0;
                if wild_ok
                    && node.plus != NONE
                    && self.overlaps_from(node.plus, rest, depth + 1, dollar, access)
                {
                    return true;
                }
                // Every literal child: a `+` at level 0 does not match `$` topics, so skip `$` literals there.
                self.literal.iter().any(|((p, lit), &c)| {
                    *p == n
                        && !(leading_dollar_only && lit.starts_with('$'))
                        && self.overlaps_from(c, rest, depth + 1, dollar, access)
                })
            }
            lit => {
                if wild_ok
                    && node.plus != NONE
                    && self.overlaps_from(node.plus, rest, depth + 1, dollar, access)
                {
                    return true;
                }
                match self.child(n, lit) {
                    Some(c) => self.overlaps_from(c, rest, depth + 1, dollar, access),
                    None => false,
                }
            }
        }
    }

    /// Any rule with `access` at or below `n` (`root`: skip `$` literals at the first level, as `#` does).
    fn subtree_has(&self, n: u32, access: u8, root: bool) -> bool {
        let mut stack = vec![(n, root)];
        while let Some((n, at_root)) = stack.pop() {
            let node = &self.nodes[n as usize];
            if (node.end | node.hash) & access != 0 {
                return true;
            }
            if node.plus != NONE {
                stack.push((node.plus, false));
            }
            for ((p, lit), &c) in &self.literal {
                if *p == n && !(at_root && lit.starts_with('$')) {
                    stack.push((c, false));
                }
            }
        }
        false
    }

    /// Number of nodes (for memory accounting).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// Borrowed form of the trie's `(u32, Box<str>)` key, so a lookup by `(u32, &str)` does not allocate.
trait LevelKey {
    fn key(&self) -> (u32, &str);
}

impl LevelKey for (u32, Box<str>) {
    fn key(&self) -> (u32, &str) {
        (self.0, &self.1)
    }
}

impl LevelKey for (u32, &str) {
    fn key(&self) -> (u32, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn LevelKey + 'a> for (u32, Box<str>) {
    fn borrow(&self) -> &(dyn LevelKey + 'a) {
        self
    }
}

impl PartialEq for dyn LevelKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn LevelKey + '_ {}

impl std::hash::Hash for dyn LevelKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

/// A set of node ids, inline up to `INLINE_ACTIVE`.
struct Active {
    inline: [u32; INLINE_ACTIVE],
    len: usize,
    heap: Vec<u32>,
}

impl Active {
    fn new() -> Active {
        Active {
            inline: [0; INLINE_ACTIVE],
            len: 0,
            heap: Vec::new(),
        }
    }

    fn push(&mut self, n: u32) {
        if self.heap.is_empty() && self.len < INLINE_ACTIVE {
            self.inline[self.len] = n;
            self.len += 1;
        } else {
            if self.heap.is_empty() {
                self.heap.extend_from_slice(&self.inline[..self.len]);
            }
            self.heap.push(n);
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.heap.clear();
    }

    fn is_empty(&self) -> bool {
        self.len == 0 && self.heap.is_empty()
    }

    fn as_slice(&self) -> &[u32] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}
