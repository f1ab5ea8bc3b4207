//! Source address lists: `127.0.0.2-127.0.0.40`, `127.0.0.2,127.0.0.3`, or a mix. Each source IP gets its own
//! ~28k ephemeral ports towards one broker address, so more sources means more connections.

use std::net::{IpAddr, Ipv4Addr};

/// Bound on the expanded list, so a typo like 10.0.0.0-10.255.255.255 is an error, not 16M entries.
pub const MAX_SOURCES: usize = 65_536;

pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|e| format!("bad address {a:?}: {e}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|e| format!("bad address {b:?}: {e}"))?;
            let (lo, hi) = (u32::from(a), u32::from(b));
            if lo > hi {
                return Err(format!("empty range {part}"));
            }
            if (hi - lo) as usize >= MAX_SOURCES - out.len() {
                return Err(format!(
                    "range {part} has more than {MAX_SOURCES} addresses"
                ));
            }
            out.extend((lo..=hi).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else {
            out.push(
                part.parse()
                    .map_err(|e| format!("bad address {part:?}: {e}"))?,
            );
            if out.len() > MAX_SOURCES {
                return Err(format!("more than {MAX_SOURCES} source addresses"));
            }
        }
    }
    if out.is_empty() {
        return Err("no source address given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_lists() {
        let v = parse_sources("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].to_string(), "127.0.0.2");
        assert_eq!(v[3].to_string(), "127.0.1.1");
        assert_eq!(parse_sources("127.0.0.255-127.0.1.0").unwrap().len(), 2);
        assert!(parse_sources("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_sources("10.0.0.0-10.255.255.255").is_err());
        assert!(parse_sources("nope").is_err());
        assert!(parse_sources("").is_err());
    }
}
