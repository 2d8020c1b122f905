//! The checked-in schema is exactly what the code generates, and every example is valid.

mod common;

use common::{example_env, root, run_in};

#[test]
fn checked_in_schema_matches_the_code() {
    let path = root().join("schemas/outpostctl.schema.json");
    let generated = outpostctl::commands::schema::text();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "schemas/outpostctl.schema.json is out of date: run `UPDATE_SCHEMA=1 cargo test --test schema_file` and commit it"
    );
}

#[test]
fn schema_command_prints_the_checked_in_schema() {
    let r = run_in(&root(), &["schema"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let checked_in =
        std::fs::read_to_string(root().join("schemas/outpostctl.schema.json")).unwrap();
    assert_eq!(r.stdout, checked_in);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

#[test]
fn every_field_has_a_description() {
    let v: serde_json::Value = serde_json::from_str(&outpostctl::commands::schema::text()).unwrap();
    let mut missing = Vec::new();
    walk(&v, "", &mut missing);
    assert!(
        missing.is_empty(),
        "properties without a description: {missing:?}"
    );
}

/// `defaults:` shares its keys' descriptions with an outpost's `config`: they read right at
/// both levels, none sending the reader from `defaults` to `defaults` ("the network of
/// `defaults`").
#[test]
fn shared_descriptions_read_right_under_defaults() {
    let v: serde_json::Value = serde_json::from_str(&outpostctl::commands::schema::text()).unwrap();
    let props = v
        .pointer("/$defs/Defaults/properties")
        .and_then(|p| p.as_object())
        .expect("Defaults has properties");
    for (key, p) in props {
        let d = p["description"].as_str().unwrap_or_default();
        for wrong in [
            "of `defaults`",
            "`defaults.",
            "Unset or `null`: the",
            "whatever `defaults` says",
        ] {
            assert!(
                !d.contains(wrong),
                "defaults.{key}: {wrong:?} reads wrong under `defaults:`: {d}"
            );
        }
    }
}

fn walk(v: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
    if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
        for (k, p) in props {
            let has = p.get("description").is_some()
                || p.get("$ref").is_some() && p.get("description").is_some();
            if !has {
                missing.push(format!("{path}/{k}"));
            }
            walk(p, &format!("{path}/{k}"), missing);
        }
    }
    if let Some(defs) = v.get("$defs").and_then(|d| d.as_object()) {
        for (k, d) in defs {
            walk(d, &format!("$defs/{k}"), missing);
        }
    }
}

#[test]
fn examples_are_valid_and_start_with_a_working_modeline() {
    let examples = root().join("examples");
    let mut dirs = vec![];
    for entry in std::fs::read_dir(&examples).unwrap() {
        let p = entry.unwrap().path();
        // ci/ and service/ hold CI and service files, not manifests.
        if p.is_dir() && !["ci", "service"].contains(&p.file_name().unwrap().to_str().unwrap()) {
            dirs.push(p);
        }
    }
    assert!(
        dirs.len() >= 2,
        "examples/minimal and examples/homelab exist"
    );
    let env = example_env();
    for dir in dirs {
        let r = run_in(&root(), &["validate", dir.to_str().unwrap()], &env);
        assert_eq!(
            r.code,
            0,
            "{} is valid:\n{}{}",
            dir.display(),
            r.stdout,
            r.stderr
        );
        assert!(r.stdout.starts_with("valid:"), "{}", r.stdout);
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&f).unwrap();
                let first = text.lines().next().unwrap_or_default();
                let target = first
                    .strip_prefix("# yaml-language-server: $schema=")
                    .unwrap_or_else(|| panic!("{} starts with the modeline", f.display()));
                assert!(
                    dir.join(target).is_file(),
                    "{}: the modeline's schema path {target} resolves from a checkout",
                    f.display()
                );
            }
        }
    }
}

/// Every diagnostic code outpostctl can print (`Diagnostic::error("code", ...)` and the like in
/// src/) has a row in docs/manifest.md's table, so a user who meets one can look it up.
#[test]
fn every_diagnostic_code_is_documented() {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut codes = std::collections::BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        for opener in ["Diagnostic::error(", "Diagnostic::warning(", " err("] {
            for (at, _) in text.match_indices(opener) {
                let rest = text[at + opener.len()..].trim_start();
                let Some(rest) = rest.strip_prefix('"') else {
                    continue;
                };
                let code: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                    .collect();
                if rest[code.len()..].starts_with('"') && !code.is_empty() {
                    codes.insert(code);
                }
            }
        }
    }
    // A sanity floor: the scan finds the codes (there are about 45).
    assert!(codes.len() > 30, "found only {codes:?}");
    let docs = std::fs::read_to_string(root().join("docs/manifest.md")).expect("read docs");
    let missing: Vec<&String> = codes
        .iter()
        // Not a user's mistake: a bug report.
        .filter(|c| *c != "internal")
        .filter(|c| !docs.contains(&format!("| `{c}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "diagnostic codes without a row in docs/manifest.md: {missing:?}"
    );
}
