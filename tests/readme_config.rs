//! The README's config reference cannot drift from the embedded default config (`coremq --print-default-config`):
//! its key table is generated from `src/default_config.toml` and must equal what this test renders (run with
//! `COREMQ_BLESS=1` to rewrite it), every key in the table is one the config parser accepts, and every
//! `key = value` the README shows elsewhere (examples, prose) is a key of the default config.

use std::collections::BTreeSet;

use coremq::config::{Config, DEFAULT_CONFIG};

const BEGIN: &str =
    "<!-- BEGIN config-keys: generated from src/default_config.toml by tests/readme_config.rs \
                     (COREMQ_BLESS=1 cargo test --test readme_config rewrites it) -->";
const END: &str = "<!-- END config-keys -->";

/// (section, key, commented out, value) for every `key = value` line of the default config, commented or not.
/// Section: "" (top level), "store", or "listeners" for the commented `[[listeners]]` example block.
fn default_keys() -> Vec<(String, String, bool, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    // A commented `[[listeners]]` / `[[bridge]]` example: its keys belong to that table.
    let mut example: Option<&str> = None;
    for line in DEFAULT_CONFIG.lines() {
        let t = line.trim();
        if t.is_empty() {
            example = None;
            continue;
        }
        if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim_matches(['[', ']']).to_string();
            continue;
        }
        let (commented, body) = match t.strip_prefix('#') {
            Some(b) => (true, b.trim_start()),
            None => (false, t),
        };
        if commented && (body == "[[listeners]]" || body == "[[bridge]]") {
            example = Some(if body == "[[bridge]]" {
                "bridge"
            } else {
                "listeners"
            });
            continue;
        }
        let Some((key, value)) = body.split_once(" = ") else {
            continue;
        };
        let is_key = key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !is_key {
            continue;
        }
        // An inline comment starts after two or more blanks.
        let value = value.split("  #").next().unwrap().trim().to_string();
        let section = match example {
            Some(table) => table.to_string(),
            None => section.clone(),
        };
        out.push((section, key.to_string(), commented, value));
    }
    out
}

fn render_table() -> String {
    let mut s = String::from(BEGIN);
    s.push_str("\n\n| key | default |\n|---|---|\n");
    for (section, key, commented, value) in default_keys() {
        let name = match section.as_str() {
            "" => format!("`{key}`"),
            "listeners" => format!("`[[listeners]]` `{key}`"),
            "bridge" => format!("`[[bridge]]` `{key}`"),
            other => format!("`[{other}]` `{key}`"),
        };
        let default = match (section.as_str(), commented) {
            ("listeners", _) => format!("per listener, e.g. `{value}`"),
            ("bridge", _) => format!("per bridge, e.g. `{value}`"),
            (_, true) => format!("unset (e.g. `{value}`)"),
            (_, false) => format!("`{value}`"),
        };
        s.push_str(&format!("| {name} | {default} |\n"));
    }
    s.push('\n');
    s.push_str(END);
    s
}

fn readme_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")
}

#[test]
fn readme_config_table_matches_the_default_config() {
    let readme = std::fs::read_to_string(readme_path()).unwrap();
    let want = render_table();
    let (Some(b), Some(e)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md has no generated config table ({BEGIN} ... {END})");
    };
    let got = &readme[b..e + END.len()];
    if got != want {
        if std::env::var_os("COREMQ_BLESS").is_some() {
            let new = format!("{}{}{}", &readme[..b], want, &readme[e + END.len()..]);
            std::fs::write(readme_path(), new).unwrap();
            return;
        }
        panic!(
            "README.md's config table is out of date with src/default_config.toml; run \
             `COREMQ_BLESS=1 cargo test --test readme_config` and commit README.md.\nExpected:\n{want}"
        );
    }
}

#[test]
fn every_key_of_the_default_config_is_accepted_by_the_parser() {
    let keys = default_keys();
    assert!(keys.len() > 40, "too few keys read: {keys:?}");
    for (section, key, _, value) in &keys {
        let text = match section.as_str() {
            "" => format!("{key} = {value}\n"),
            "listeners" if key == "address" => format!("[[listeners]]\n{key} = {value}\n"),
            "listeners" => format!("[[listeners]]\naddress = \"127.0.0.1:0\"\n{key} = {value}\n"),
            "bridge" => format!("[[bridge]]\n{key} = {value}\n"),
            s => format!("[{s}]\n{key} = {value}\n"),
        };
        if let Err(e) = Config::from_toml_str(&text) {
            // Validation may refuse an example alone (a keyfile without its certfile); a name must be known.
            let e = e.to_string();
            assert!(!e.contains("unknown field"), "{section} {key}: {e}");
        }
    }
    // And the parser really refuses unknown names, so the check above can fail.
    let e = Config::from_toml_str("no_such_key = 1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn every_key_the_readme_shows_exists_in_the_default_config() {
    let readme = std::fs::read_to_string(readme_path()).unwrap();
    let known: BTreeSet<String> = default_keys().into_iter().map(|k| k.1).collect();
    let mut shown = BTreeSet::new();
    for line in readme.lines() {
        // Indented code lines `    key = value`, and `key = value` in backticks in prose.
        let code = line.strip_prefix("    ").map(str::trim_start);
        let mut candidates: Vec<&str> = code.into_iter().collect();
        candidates.extend(line.split('`').skip(1).step_by(2));
        for c in candidates {
            if let Some((k, _)) = c.split_once(" = ") {
                let k = k.trim();
                if !k.is_empty()
                    && k.starts_with(|c: char| c.is_ascii_lowercase())
                    && k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    shown.insert(k.to_string());
                }
            }
        }
    }
    assert!(
        shown.len() > 5,
        "found too few keys in README.md: {shown:?}"
    );
    let unknown: Vec<_> = shown.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "README.md shows keys the default config does not have: {unknown:?}"
    );
}
