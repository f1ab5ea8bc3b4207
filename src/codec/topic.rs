//! Topic names, topic filters, shared-subscription syntax and filter matching (MQTT 5 section 4.7 / 4.8.2,
//! 3.1.1 section 4.7). Pure functions over `&str`; no allocation.

use super::error::DecodeError;

/// Prefix of a shared subscription: `$share/{group}/{filter}`.
pub const SHARE_PREFIX: &str = "$share/";

const MAX_TOPIC_LEN: usize = u16::MAX as usize;

fn common(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err("longer than 65,535 bytes");
    }
    if s.as_bytes().contains(&0) {
        return Err("contains U+0000");
    }
    Ok(())
}

/// A topic name as used in PUBLISH and wills: non-empty, no wildcards [MQTT-4.7.1-1], no U+0000.
pub fn validate_topic_name(name: &str) -> Result<(), DecodeError> {
    common(name).map_err(DecodeError::TopicNameInvalid)?;
    if name.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::TopicNameInvalid("wildcard in topic name"));
    }
    Ok(())
}

/// Wildcard rules for a plain (non-shared) filter: `+` fills a whole level, `#` fills the whole last level.
fn validate_plain_filter(filter: &str) -> Result<(), DecodeError> {
    common(filter).map_err(DecodeError::TopicFilterInvalid)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('+') && level != "+" {
            return Err(DecodeError::TopicFilterInvalid(
                "'+' must occupy a whole level",
            ));
        }
        if level.contains('#') {
            if level != "#" {
                return Err(DecodeError::TopicFilterInvalid(
                    "'#' must occupy a whole level",
                ));
            }
            if levels.peek().is_some() {
                return Err(DecodeError::TopicFilterInvalid(
                    "'#' must be the last level",
                ));
            }
        }
    }
    Ok(())
}

/// A topic filter as used in SUBSCRIBE/UNSUBSCRIBE, including `$share/{group}/{filter}`.
pub fn validate_topic_filter(filter: &str) -> Result<(), DecodeError> {
    match parse_shared(filter)? {
        Some(_) => Ok(()),
        None => validate_plain_filter(filter),
    }
}

/// Split a shared subscription `$share/{group}/{filter}` into `(group, filter)`; `Ok(None)` when `filter` is not
/// shared. The group must be non-empty without `/`, `+` or `#` [MQTT-4.8.2-1, -2]; the inner filter must be valid.
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, DecodeError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(DecodeError::TopicFilterInvalid(
            "shared subscription without a topic filter",
        ));
    };
    if group.is_empty() {
        return Err(DecodeError::TopicFilterInvalid(
            "empty shared subscription group",
        ));
    }
    if group.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::TopicFilterInvalid(
            "wildcard in shared subscription group",
        ));
    }
    validate_plain_filter(inner)?;
    Ok(Some((group, inner)))
}

/// Does `filter` match topic `name`? Both are assumed valid; pass the inner filter of a shared subscription.
/// `+` and `#` in the first level do not match names starting with `$` [MQTT-4.7.2-1]; `a/#` matches `a`.
pub fn topic_matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(nl)) => {
                if fl != nl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("a/b").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert!(validate_topic_name("$SYS/x").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("a/+").is_err());
        assert!(validate_topic_name("a#").is_err());
        assert!(validate_topic_name("a\0b").is_err());
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a//b",
            "sport/tennis/+/#",
            "$share/g/a/#",
            "$share",
            "$sharex/a",
        ] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/#/b",
            "a#",
            "a+/b",
            "#/",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
            "$share/g/a#",
        ] {
            assert!(validate_topic_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shared() {
        assert_eq!(parse_shared("$share/g1/a/+").unwrap(), Some(("g1", "a/+")));
        assert_eq!(parse_shared("a/b").unwrap(), None);
        assert!(parse_shared("$share/g").is_err());
    }

    #[test]
    fn matching_spec_examples() {
        assert!(topic_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1"
        ));
        assert!(topic_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(topic_matches("sport/#", "sport"));
        assert!(topic_matches("#", "a/b"));
        assert!(topic_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!topic_matches(
            "sport/tennis/+",
            "sport/tennis/player1/ranking"
        ));
        assert!(!topic_matches("sport/+", "sport"));
        assert!(topic_matches("sport/+", "sport/"));
        assert!(topic_matches("+/+", "/finance"));
        assert!(topic_matches("/+", "/finance"));
        assert!(!topic_matches("+", "/finance"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(topic_matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(topic_matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("a/b/c", "a/b"));
    }
}
