//! The password-file and ACL-file parsers never panic on any text, report a line that exists, and round-trip
//! what they accept (the cargo-fuzz targets `fuzz/fuzz_targets/{password_file,acl_file}.rs` check the same with
//! coverage guidance; these run in CI).

use coremq::auth::acl::AclFile;
use coremq::auth::password::{HashKind, PasswordFile, PasswordHash, SALT_LEN};
use proptest::prelude::*;

/// Text built from the pieces the parsers look at, so random input reaches past the first check.
fn file_text() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "user ",
        "topic ",
        "pattern ",
        "read ",
        "write ",
        "readwrite ",
        "deny ",
        "a/b",
        "+",
        "#",
        "/",
        "%c",
        "%u",
        "$SYS",
        " ",
        "\t",
        "\r",
        "\n",
        "#c",
        ":",
        "$7$",
        "$6$",
        "101$",
        "0$",
        "MDEyMzQ1Njc4OWFi$",
        "==",
        "x",
        "é",
        "\u{a0}",
        "\0",
    ]);
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

fn line_count(text: &str) -> usize {
    text.split('\n').count()
}

fn user_name() -> impl Strategy<Value = String> {
    // What `coremq passwd` accepts: no ':', no control characters, no surrounding blanks, no leading '#'.
    "[a-zA-Z0-9_.@-][a-zA-Z0-9_.@ #$-]{0,10}[a-zA-Z0-9_.@-]|[a-zA-Z0-9]"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn password_parser_never_panics(text in file_text(), raw in any::<String>()) {
        for t in [&text, &raw] {
            if let Err(e) = PasswordFile::parse(t, "pw") {
                prop_assert!(e.line >= 1 && e.line <= line_count(t), "{}", e);
            }
        }
    }

    #[test]
    fn acl_parser_never_panics(text in file_text(), raw in any::<String>()) {
        for t in [&text, &raw] {
            match AclFile::parse(t, "acl") {
                Ok(acl) => {
                    // Compiling for a client must not panic either, whatever the ids.
                    let c = acl.for_client("c+", Some("%u"));
                    let _ = c.can_write("a/b");
                    let _ = c.can_read("$SYS/x");
                }
                Err(e) => prop_assert!(e.line >= 1 && e.line <= line_count(t), "{}", e),
            }
        }
    }
}

proptest! {
    // Each case hashes a few passwords (PBKDF2 with 1 to 3 iterations): cheap.
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn password_file_round_trips(
        users in prop::collection::btree_map(user_name(), (any::<bool>(), 1u32..4, any::<[u8; SALT_LEN]>(), ".{0,8}"), 1..6),
        comments in prop::collection::vec(0usize..8, 0..4),
    ) {
        let mut text = String::new();
        let mut hashes = Vec::new();
        for (i, (user, (sha512, iterations, salt, password))) in users.iter().enumerate() {
            if comments.contains(&i) {
                text.push_str("# a comment\n\n");
            }
            let kind = if *sha512 { HashKind::Sha512 } else { HashKind::Pbkdf2Sha512 { iterations: *iterations } };
            let hash = PasswordHash::from_parts(kind, *salt, password.as_bytes());
            // Blanks around both halves are trimmed, as mosquitto does.
            text.push_str(&format!(" {user}\t: {} \r\n", hash.encode()));
            hashes.push((user, password, hash));
        }
        let file = PasswordFile::parse(&text, "pw").map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(file.len(), users.len());
        for (user, password, hash) in &hashes {
            let got = file.lookup(user).expect("user present");
            prop_assert_eq!(got, hash);
            prop_assert!(got.verify(password.as_bytes()));
        }
        let out = file.to_text();
        let again = PasswordFile::parse(&out, "pw2").expect("to_text parses");
        prop_assert_eq!(again.to_text(), out.clone());
        // File order is kept.
        let order: Vec<&str> = out.lines().map(|l| l.split_once(':').unwrap().0).collect();
        let expected: Vec<&str> = hashes.iter().map(|(u, _, _)| u.as_str()).collect();
        prop_assert_eq!(order, expected);
    }

    #[test]
    fn acl_file_round_trips(
        anonymous in prop::collection::vec(acl_rule(), 0..4),
        blocks in prop::collection::vec((user_name(), prop::collection::vec(acl_rule(), 0..4)), 0..4),
        patterns in prop::collection::vec(acl_rule(), 0..4),
    ) {
        let mut text = String::from("# generated\n");
        let mut expected_topics = Vec::new();
        for (access, filter) in &anonymous {
            text.push_str(&format!("topic {access} {filter}\n"));
            expected_topics.push((None, *access, filter.clone()));
        }
        for (i, (user, rules)) in blocks.iter().enumerate() {
            text.push_str(&format!("user {user}\n"));
            // Patterns may sit anywhere, also inside user blocks.
            if let Some((access, filter)) = patterns.get(i) {
                text.push_str(&format!("pattern {access} {filter}   \n"));
            }
            for (access, filter) in rules {
                text.push_str(&format!("  topic  {access} {filter}\n"));
                expected_topics.push((Some(user.clone()), *access, filter.clone()));
            }
        }
        for (access, filter) in patterns.iter().skip(blocks.len()) {
            text.push_str(&format!("pattern {access} {filter}\n"));
        }
        let acl = AclFile::parse(&text, "acl").map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let got: Vec<_> = acl.topic_rules().map(|(u, r)| (u.map(str::to_string), access(r), r.filter.clone())).collect();
        prop_assert_eq!(got, expected_topics);
        let got: Vec<_> = acl.patterns().iter().map(|r| (access(r), r.filter.clone())).collect();
        prop_assert_eq!(got, patterns.clone());
    }
}

fn acl_rule() -> impl Strategy<Value = (&'static str, String)> {
    let access = prop::sample::select(vec!["read", "write", "readwrite", "deny"]);
    let level = prop::sample::select(vec!["a", "b", "+", "%c", "%u", "$SYS", "x y", "read"]);
    (access, prop::collection::vec(level, 1..4), any::<bool>()).prop_map(|(a, levels, hash)| {
        let mut f = levels.join("/");
        if hash {
            f.push_str("/#");
        }
        (a, f)
    })
}

fn access(r: &coremq::auth::acl::AclRule) -> &'static str {
    match (r.is_deny(), r.can_read(), r.can_write()) {
        (true, _, _) => "deny",
        (_, true, true) => "readwrite",
        (_, true, false) => "read",
        _ => "write",
    }
}

#[test]
fn a_user_name_with_a_leading_hash_is_refused_not_turned_into_a_comment() {
    // Found by fuzz/password_file: " #x:HASH" names a user "#x" after trimming, which `to_text` would write as
    // the comment "#x:HASH".
    let hash = PasswordHash::from_parts(HashKind::Sha512, *b"0123456789ab", b"pw").encode();
    let e = PasswordFile::parse(&format!("a:{hash}\n \x0c#x:{hash}\n"), "pw").unwrap_err();
    assert_eq!(e.line, 2);
    assert!(e.reason.contains('#'), "{e}");
    // In the first column it is a comment, as in mosquitto.
    assert_eq!(
        PasswordFile::parse(&format!("#x:{hash}\n"), "pw")
            .unwrap()
            .len(),
        0
    );
}
