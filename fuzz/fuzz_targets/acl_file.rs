//! Feeds arbitrary text to the ACL-file parser (`src/auth/acl.rs`, compiled from source with the codec it uses).
//! It must never panic; an error names a line of the input. A file that parses must (1) render back to text that
//! parses to the same rules, and (2) give, through the compiled tries, the same answers as `reference_check` (the
//! rule-by-rule transcription of mosquitto) for client ids, user names and topics taken from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/codec/mod.rs"]
mod codec;

#[allow(dead_code)]
#[path = "../../src/auth/acl.rs"]
mod acl;

use acl::{reference_check, AclFile, AclRule};

fn access(r: &AclRule) -> &'static str {
    match (r.is_deny(), r.can_read(), r.can_write()) {
        (true, _, _) => "deny",
        (_, true, true) => "readwrite",
        (_, true, false) => "read",
        _ => "write",
    }
}

/// The rules in canonical form: the anonymous block, a `user` line at each change of user, patterns last.
fn render(acl: &AclFile) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for (user, rule) in acl.topic_rules() {
        if user != current {
            out.push_str(&format!("user {}\n", user.unwrap()));
            current = user;
        }
        out.push_str(&format!("topic {} {}\n", access(rule), rule.filter));
    }
    for rule in acl.patterns() {
        out.push_str(&format!("pattern {} {}\n", access(rule), rule.filter));
    }
    out
}

fn rules(acl: &AclFile) -> Vec<(Option<String>, String, String)> {
    acl.topic_rules()
        .map(|(u, r)| (u.map(str::to_string), access(r).to_string(), r.filter.clone()))
        .chain(acl.patterns().iter().map(|r| (Some("%pattern".to_string()), access(r).to_string(), r.filter.clone())))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // First line: "client\tuser\ttopic\ttopic..." drives the checks; the rest is the file.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (probe, file) = text.split_once('\n').unwrap_or(("", text));
    let acl = match AclFile::parse(file, "fuzz") {
        Ok(acl) => acl,
        Err(e) => {
            assert!(e.line >= 1 && e.line <= file.split('\n').count(), "{e}");
            return;
        }
    };
    // A filter written after an access word is trimmed of white space, a lone one is not (as in mosquitto), so
    // only filters without surrounding white space have a canonical form.
    let canonical = acl
        .topic_rules()
        .map(|(_, r)| r)
        .chain(acl.patterns())
        .all(|r| r.filter.trim() == r.filter);
    if canonical {
        let again = AclFile::parse(&render(&acl), "again").expect("rendered rules must parse");
        assert_eq!(rules(&again), rules(&acl));
    }
    let mut parts = probe.split('\t');
    let client = parts.next().unwrap_or("");
    let user = parts.next().filter(|u| !u.is_empty());
    let compiled = acl.for_client(client, user);
    for topic in parts.take(8).filter(|t| !t.is_empty() && codec::topic::validate_topic_name(t).is_ok()) {
        assert_eq!(compiled.can_write(topic), reference_check(&acl, client, user, topic, true), "write {topic:?}");
        assert_eq!(compiled.can_read(topic), reference_check(&acl, client, user, topic, false), "read {topic:?}");
    }
});
