//! A small checker of the Prometheus text format 0.0.4, for tests (ours and the integration tests'): it parses an
//! exposition into samples and refuses what Prometheus would refuse or what breaks its conventions (sample before
//! its `# TYPE`, a family typed twice, a duplicate series, a counter not ending in `_total`, a histogram whose
//! buckets are not cumulative or whose `+Inf` bucket differs from `_count`).

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parsed exposition: the samples in order, and each family's type.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// The value of the one sample with this name whose labels include `labels`, summed if several match.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// The family a sample belongs to (histogram suffixes stripped when the base is a histogram).
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suf in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suf) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return base;
            }
        }
    }
    name
}

fn parse_labels(s: &str, line: usize) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest
            .find('=')
            .ok_or(format!("line {line}: label without ="))?;
        let key = rest[..eq].trim();
        if !valid_name(key) || key.contains(':') {
            return Err(format!("line {line}: bad label name {key:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or(format!("line {line}: label value not quoted"))?;
        let mut val = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("line {line}: unterminated label value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => val.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => val.push(c),
                    _ => return Err(format!("line {line}: bad escape in label value")),
                },
                Some((_, c)) => val.push(c),
            }
        };
        if labels.insert(key.to_string(), val).is_some() {
            return Err(format!("line {line}: label {key} twice"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

pub fn check(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut helped = HashSet::new();
    let mut seen_series = HashSet::new();
    let mut sampled_families = HashSet::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("exposition does not end with a newline".into());
    }
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if let Some(c) = raw.strip_prefix('#') {
            let mut parts = c.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), _)
                    if !valid_name(name) || !helped.insert(name.to_string()) =>
                {
                    return Err(format!("line {line}: bad or repeated HELP for {name}"));
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(format!("line {line}: unknown type {kind}"));
                    }
                    if sampled_families.contains(name) {
                        return Err(format!("line {line}: TYPE of {name} after its samples"));
                    }
                    if e.types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(format!("line {line}: TYPE of {name} twice"));
                    }
                    if kind == "counter" && !name.ends_with("_total") {
                        return Err(format!(
                            "line {line}: counter {name} does not end in _total"
                        ));
                    }
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        let name_end = raw
            .find(['{', ' '])
            .ok_or(format!("line {line}: sample without value"))?;
        let name = &raw[..name_end];
        if !valid_name(name) {
            return Err(format!("line {line}: bad metric name {name:?}"));
        }
        let (labels, rest) = if raw[name_end..].starts_with('{') {
            parse_labels(&raw[name_end + 1..], line)?
        } else {
            (BTreeMap::new(), &raw[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let v = fields
            .next()
            .and_then(parse_value)
            .ok_or(format!("line {line}: bad value in {raw:?}"))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| format!("line {line}: bad timestamp {ts:?}"))?;
        }
        let fam = family_of(name, &e.types).to_string();
        if !e.types.contains_key(&fam) {
            return Err(format!("line {line}: sample of {name} before its TYPE"));
        }
        let key = format!("{name}{labels:?}");
        if !seen_series.insert(key) {
            return Err(format!("line {line}: duplicate series {raw:?}"));
        }
        sampled_families.insert(fam);
        e.samples.push(Sample {
            name: name.to_string(),
            labels,
            value: v,
        });
    }
    check_histograms(&e)?;
    Ok(e)
}

/// Buckets cumulative in `le` order, a `+Inf` bucket equal to `_count`, per label set.
fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (fam, _) in e.types.iter().filter(|(_, k)| *k == "histogram") {
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let bucket = format!("{fam}_bucket");
        for s in e.samples.iter().filter(|s| s.name == bucket) {
            let mut l = s.labels.clone();
            let le = l
                .remove("le")
                .and_then(|v| parse_value(&v))
                .ok_or(format!("{bucket} without a numeric le"))?;
            series
                .entry(format!("{l:?}"))
                .or_default()
                .push((le, s.value));
        }
        for (labels, mut b) in series {
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            if b.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{fam}{labels}: buckets not cumulative"));
            }
            let last = b.last().expect("at least one bucket");
            if last.0 != f64::INFINITY {
                return Err(format!("{fam}{labels}: no +Inf bucket"));
            }
            let count = e
                .samples
                .iter()
                .find(|s| s.name == format!("{fam}_count") && format!("{:?}", s.labels) == labels)
                .ok_or(format!("{fam}{labels}: no _count"))?;
            if count.value != last.1 {
                return Err(format!(
                    "{fam}{labels}: +Inf bucket {} != _count {}",
                    last.1, count.value
                ));
            }
            if !e
                .samples
                .iter()
                .any(|s| s.name == format!("{fam}_sum") && format!("{:?}", s.labels) == labels)
            {
                return Err(format!("{fam}{labels}: no _sum"));
            }
        }
    }
    Ok(())
}
