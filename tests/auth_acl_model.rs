//! The compiled ACL (`AclFile::for_client` tries) agrees with `reference_check`, a direct rule-by-rule transcription
//! of mosquitto's `mosquitto_acl_check_default`, on random files, clients and topics.

use coremq::auth::acl::{reference_check, AclFile};
use proptest::prelude::*;

/// Filter levels: literals that also appear in topics, wildcards, `$` levels and pattern substitutions.
fn filter_level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "b", "c1", "u1", "$SYS", "$x", "", "+", "%c", "%u", "x%c", "%u%c",
    ])
}

fn filter() -> impl Strategy<Value = String> {
    (prop::collection::vec(filter_level(), 1..4), any::<bool>()).prop_map(|(levels, hash)| {
        let mut f = levels.join("/");
        if hash {
            if f.is_empty() {
                f.push('#');
            } else {
                f.push_str("/#");
            }
        }
        if f.is_empty() {
            f.push('a');
        }
        f
    })
}

#[derive(Debug, Clone)]
enum Line {
    User(&'static str),
    Topic(&'static str, String),
    Pattern(&'static str, String),
}

fn line() -> impl Strategy<Value = Line> {
    let access = prop::sample::select(vec!["", "read ", "write ", "readwrite ", "deny "]);
    prop_oneof![
        1 => prop::sample::select(vec!["u1", "u2", "a"]).prop_map(Line::User),
        4 => (access.clone(), filter()).prop_map(|(a, f)| Line::Topic(a, f)),
        2 => (access, filter()).prop_map(|(a, f)| Line::Pattern(a, f)),
    ]
}

fn render(lines: &[Line]) -> String {
    let mut s = String::new();
    for l in lines {
        match l {
            Line::User(u) => s.push_str(&format!("user {u}\n")),
            // A one-word filter after the keyword must not be read as an access word: the generator's filters
            // never equal read/write/readwrite/deny.
            Line::Topic(a, f) => s.push_str(&format!("topic {a}{f}\n")),
            Line::Pattern(a, f) => s.push_str(&format!("pattern {a}{f}\n")),
        }
    }
    s
}

fn topic() -> impl Strategy<Value = String> {
    let level = prop::sample::select(vec![
        "a", "b", "c1", "u1", "$SYS", "$x", "", "x", "xc1", "u1c1", "read",
    ]);
    prop::collection::vec(level, 1..5)
        .prop_map(|l| l.join("/"))
        .prop_filter("topic names are not empty", |t| !t.is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_matches_reference(
        lines in prop::collection::vec(line(), 0..12),
        client in prop::sample::select(vec!["c1", "a", "c+", "x/y", ""]),
        user in prop::sample::select(vec![None, Some("u1"), Some("u2"), Some("a"), Some("u#")]),
        topics in prop::collection::vec(topic(), 1..8),
    ) {
        let text = render(&lines);
        let acl = AclFile::parse(&text, "acl").expect("generated files are valid");
        let compiled = acl.for_client(client, user);
        for t in &topics {
            prop_assert_eq!(compiled.can_write(t), reference_check(&acl, client, user, t, true),
                "write {:?} client {:?} user {:?}\n{}", t, client, user, text);
            prop_assert_eq!(compiled.can_read(t), reference_check(&acl, client, user, t, false),
                "read {:?} client {:?} user {:?}\n{}", t, client, user, text);
        }
    }
}
