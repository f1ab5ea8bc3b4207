//! Bridge topic rules with mosquitto's semantics (mosquitto.conf(5), `topic pattern [[[ out | in | both ]
//! qos-level] local-prefix remote-prefix]`):
//! - `out`: subscribe locally to `local_prefix + pattern`; a matching message has `local_prefix` removed and
//!   `remote_prefix` added, and is published on the remote.
//! - `in`: subscribe on the remote to `remote_prefix + pattern`; a matching message has `remote_prefix` removed
//!   and `local_prefix` added, and is published locally.
//! - `""` is the empty place marker, for a prefix or for the pattern itself (then the local prefix is one
//!   topic mapped to the remote prefix, and both must be given).
//! - Direction defaults to `out`, QoS to 0. Prefixes are topic names: no `+` or `#`.

use crate::codec::{topic, QoS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
    Both,
}

impl Direction {
    pub fn outbound(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
    pub fn inbound(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    pub pattern: String,
    pub direction: Direction,
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
}

fn unquote(s: &str) -> &str {
    if s == "\"\"" {
        ""
    } else {
        s
    }
}

impl TopicRule {
    /// Parses one `topic` line: `PATTERN [in|out|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]`.
    pub fn parse(line: &str) -> Result<TopicRule, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() || words.len() > 5 {
            return Err(format!(
                "{line:?}: expected \"PATTERN [in|out|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]\""
            ));
        }
        if words.len() == 4 {
            return Err(format!(
                "{line:?}: give both prefixes (use \"\" for an empty one)"
            ));
        }
        let pattern = unquote(words[0]).to_string();
        let direction = match words.get(1).copied() {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(d) => return Err(format!("{line:?}: direction {d:?} is not in, out or both")),
        };
        let qos = match words.get(2).copied() {
            None | Some("0") => QoS::AtMostOnce,
            Some("1") => QoS::AtLeastOnce,
            Some("2") => {
                return Err(format!(
                    "{line:?}: QoS 2 is not bridged yet (use 0 or 1; 1 is at least once end to end)"
                ))
            }
            Some(q) => return Err(format!("{line:?}: QoS {q:?} is not 0, 1 or 2")),
        };
        let local_prefix = words.get(3).map(|s| unquote(s)).unwrap_or("").to_string();
        let remote_prefix = words.get(4).map(|s| unquote(s)).unwrap_or("").to_string();
        for (what, p) in [("local", &local_prefix), ("remote", &remote_prefix)] {
            if p.contains(['+', '#']) {
                return Err(format!(
                    "{line:?}: the {what} prefix {p:?} may not contain + or #"
                ));
            }
        }
        if pattern.is_empty() && (local_prefix.is_empty() || remote_prefix.is_empty()) {
            // mosquitto.conf(5)'s table: "" remaps one local topic to one remote topic, so both are needed.
            return Err(format!(
                "{line:?}: an empty pattern needs both prefixes (it maps exactly one topic)"
            ));
        }
        let rule = TopicRule {
            pattern,
            direction,
            qos,
            local_prefix,
            remote_prefix,
        };
        for f in [rule.local_filter(), rule.remote_filter()] {
            if topic::validate_topic_filter(&f).is_err() || f.starts_with("$share/") {
                return Err(format!("{line:?}: {f:?} is not a valid topic filter"));
            }
        }
        Ok(rule)
    }

    /// The filter subscribed on the local broker (for `out` and `both`).
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter subscribed on the remote broker (for `in` and `both`).
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }
}

/// Replaces `from` at the start of `name` with `to`; a name without the prefix keeps its topic (mosquitto).
fn remap(name: &str, from: &str, to: &str) -> String {
    let rest = name.strip_prefix(from).unwrap_or(name);
    format!("{to}{rest}")
}

/// The rules of one bridge.
#[derive(Debug, Clone, Default)]
pub struct TopicMap {
    pub rules: Vec<TopicRule>,
}

impl TopicMap {
    /// Local topic -> (remote topic, QoS) for a message on the local side; the first `out`/`both` rule whose
    /// local filter matches wins (mosquitto's order).
    pub fn outbound(&self, local: &str) -> Option<(String, QoS)> {
        self.rules
            .iter()
            .filter(|r| r.direction.outbound())
            .find(|r| topic::topic_matches(&r.local_filter(), local))
            .map(|r| (remap(local, &r.local_prefix, &r.remote_prefix), r.qos))
    }

    /// Remote topic -> (local topic, QoS) for a message from the remote.
    pub fn inbound(&self, remote: &str) -> Option<(String, QoS)> {
        self.rules
            .iter()
            .filter(|r| r.direction.inbound())
            .find(|r| topic::topic_matches(&r.remote_filter(), remote))
            .map(|r| (remap(remote, &r.remote_prefix, &r.local_prefix), r.qos))
    }

    /// (filter, QoS) to subscribe to locally.
    pub fn local_subscriptions(&self) -> Vec<(String, QoS)> {
        self.rules
            .iter()
            .filter(|r| r.direction.outbound())
            .map(|r| (r.local_filter(), r.qos))
            .collect()
    }

    /// (filter, QoS) to subscribe to on the remote.
    pub fn remote_subscriptions(&self) -> Vec<(String, QoS)> {
        self.rules
            .iter()
            .filter(|r| r.direction.inbound())
            .map(|r| (r.remote_filter(), r.qos))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(lines: &[&str]) -> TopicMap {
        TopicMap {
            rules: lines.iter().map(|l| TopicRule::parse(l).unwrap()).collect(),
        }
    }

    #[test]
    fn defaults_are_out_and_qos_0() {
        let r = TopicRule::parse("sensors/#").unwrap();
        assert_eq!(r.direction, Direction::Out);
        assert_eq!(r.qos, QoS::AtMostOnce);
        assert_eq!(r.local_filter(), "sensors/#");
        assert_eq!(r.remote_filter(), "sensors/#");
    }

    #[test]
    fn prefixes_are_swapped_like_mosquitto() {
        // mosquitto.conf(5): out subscribes locally to local_prefix+pattern, strips it, adds remote_prefix.
        let m = map(&["# both 1 site/a/ central/site-a/"]);
        assert_eq!(
            m.local_subscriptions(),
            vec![("site/a/#".into(), QoS::AtLeastOnce)]
        );
        assert_eq!(
            m.remote_subscriptions(),
            vec![("central/site-a/#".into(), QoS::AtLeastOnce)]
        );
        assert_eq!(
            m.outbound("site/a/temp/1"),
            Some(("central/site-a/temp/1".into(), QoS::AtLeastOnce))
        );
        assert_eq!(
            m.inbound("central/site-a/cmd"),
            Some(("site/a/cmd".into(), QoS::AtLeastOnce))
        );
        assert_eq!(m.outbound("elsewhere"), None);
    }

    #[test]
    fn the_empty_marker_works_for_prefixes_and_the_pattern() {
        let m = map(&["# in 1 \"\" remote/"]);
        assert_eq!(m.inbound("remote/x"), Some(("x".into(), QoS::AtLeastOnce)));
        assert_eq!(m.outbound("x"), None, "an in rule does not bridge out");
        // The empty pattern bridges exactly the prefix topic.
        let m = map(&["\"\" out 0 local/status remote/status"]);
        assert_eq!(
            m.local_subscriptions(),
            vec![("local/status".into(), QoS::AtMostOnce)]
        );
        assert_eq!(
            m.outbound("local/status"),
            Some(("remote/status".into(), QoS::AtMostOnce))
        );
        assert_eq!(m.outbound("local/status/x"), None);
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let m = map(&["a/# out 1", "a/b out 0 \"\" other/"]);
        assert_eq!(m.outbound("a/b"), Some(("a/b".into(), QoS::AtLeastOnce)));
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (line, why) in [
            ("", "expected"),
            ("a sideways", "direction"),
            ("a out 3", "QoS"),
            ("a out 2", "QoS 2"),
            ("a out 1 x/", "both prefixes"),
            ("a out 1 x/+ y/", "may not contain"),
            ("\"\" out 1 \"\" \"\"", "needs both prefixes"),
            ("\"\" out 1 local \"\"", "needs both prefixes"),
            ("a/#/b", "not a valid topic filter"),
            ("a b c d e f", "expected"),
        ] {
            let e = TopicRule::parse(line).unwrap_err();
            assert!(e.contains(why), "{line:?}: {e}");
        }
    }
}
