//! Topic matching against a deliberately simple reference matcher, plus filter/name validation properties.

use coremq::codec::topic::{
    parse_shared, topic_matches, validate_topic_filter, validate_topic_name,
};
use proptest::prelude::*;

/// Reference: recursive over level lists, written straight from spec section 4.7.
fn reference(filter: &[&str], name: &[&str], first: bool) -> bool {
    match (filter.first(), name.first()) {
        // `+`/`#` as the first filter level never match a `$` topic.
        (Some(&"#"), Some(n)) if first && n.starts_with('$') => false,
        (Some(&"+"), Some(n)) if first && n.starts_with('$') => false,
        (Some(&"#"), _) => true,
        (Some(&"+"), Some(_)) => reference(&filter[1..], &name[1..], false),
        (Some(f), Some(n)) => f == n && reference(&filter[1..], &name[1..], false),
        (None, None) => true,
        _ => false,
    }
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof!["[ab]{0,2}", Just("$x".to_string()), Just("$".to_string())]
}

fn name() -> impl Strategy<Value = String> {
    proptest::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
}

fn filter() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..5),
        any::<bool>(),
    )
        .prop_map(|(mut l, hash)| {
            if hash || l.is_empty() {
                l.push("#".to_string());
            }
            l.join("/")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn matches_like_reference(f in filter(), n in name()) {
        prop_assume!(validate_topic_filter(&f).is_ok() && validate_topic_name(&n).is_ok());
        let fl: Vec<&str> = f.split('/').collect();
        let nl: Vec<&str> = n.split('/').collect();
        prop_assert_eq!(topic_matches(&f, &n), reference(&fl, &nl, true), "filter {:?} name {:?}", f, n);
    }

    /// A name used as a filter matches itself (unless it has no wildcard issue), and the `#` filter matches
    /// every name that does not start with `$`.
    #[test]
    fn self_and_hash(n in name()) {
        prop_assume!(validate_topic_name(&n).is_ok());
        prop_assert!(topic_matches(&n, &n));
        prop_assert_eq!(topic_matches("#", &n), !n.starts_with('$'));
    }

    /// Names never contain wildcards; any string with one is rejected as a name.
    #[test]
    fn names_reject_wildcards(a in "[a/]{0,4}", w in prop_oneof![Just('+'), Just('#')], b in "[a/]{0,4}") {
        let n = format!("{a}{w}{b}");
        prop_assert!(validate_topic_name(&n).is_err(), "accepted {:?}", n);
    }

    /// A shared filter splits into group and inner filter, and is valid iff its parts are.
    #[test]
    fn shared_split(g in "[a-z+]{0,3}", f in filter()) {
        let s = format!("$share/{g}/{f}");
        let valid = !g.is_empty() && !g.contains('+') && validate_topic_filter(&f).is_ok();
        match parse_shared(&s) {
            Ok(Some((group, inner))) => {
                prop_assert!(valid);
                prop_assert_eq!(group, g.as_str());
                prop_assert_eq!(inner, f.as_str());
            }
            Ok(None) => prop_assert!(false, "prefix not recognised"),
            Err(_) => prop_assert!(!valid),
        }
    }
}

#[test]
fn reference_agrees_on_spec_examples() {
    let cases = [
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        ("sport/#", "sport", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("+/+", "/finance", true),
        ("+", "/finance", false),
        ("#", "$SYS", false),
        ("$SYS/#", "$SYS", true),
    ];
    for (f, n, want) in cases {
        let fl: Vec<&str> = f.split('/').collect();
        let nl: Vec<&str> = n.split('/').collect();
        assert_eq!(reference(&fl, &nl, true), want, "{f} {n}");
        assert_eq!(topic_matches(f, n), want, "{f} {n}");
    }
}
