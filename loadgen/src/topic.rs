//! Topic patterns (`%i` = client index) and MQTT filter matching, used to know which subscriber should receive
//! which publisher's messages (the expected counts).

pub fn expand(pattern: &str, index: usize) -> String {
    pattern.replace("%i", &index.to_string())
}

/// MQTT topic filter matching (`+` one level, `#` the rest, `$share/group/` prefix stripped, `$`-topics not
/// matched by leading wildcards).
pub fn matches(filter: &str, topic: &str) -> bool {
    let filter = strip_share(filter).unwrap_or(filter);
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// For `$share/GROUP/filter`, the inner filter.
pub fn strip_share(filter: &str) -> Option<&str> {
    let rest = filter.strip_prefix("$share/")?;
    let slash = rest.find('/')?;
    Some(&rest[slash + 1..])
}

/// The share group of a `$share/GROUP/filter`.
pub fn share_group(filter: &str) -> Option<&str> {
    let rest = filter.strip_prefix("$share/")?;
    rest.split('/').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands() {
        assert_eq!(expand("lg/%i/x", 7), "lg/7/x");
        assert_eq!(expand("lg/x", 7), "lg/x");
    }

    #[test]
    fn matching() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/+", "a"));
        assert!(matches("$share/g/a/+", "a/b"));
        assert_eq!(share_group("$share/g/a/+"), Some("g"));
        assert_eq!(share_group("a/+"), None);
    }
}
