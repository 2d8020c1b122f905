//! Broken manifests: every fixture under `tests/fixtures/invalid/` runs through the real
//! binary and must fail cleanly: exit 1, no panic, every error at `FILE:LINE:COL:`, and the
//! whole report (stderr, then stdout) equal to its insta snapshot `invalid__<fixture>.snap`.
//!
//! A few fixtures cannot be committed (a 50 MB file, an empty directory, a path that does not
//! exist, a dangling symlink); they are made in a temp dir at run time.
//!
//! The environment is cleared for every run: only `NO_COLOR`, `COLUMNS`, `HOME` (a temp dir)
//! and `AK_TOKEN` (the token most fixtures name) are set, so `OUTPOSTCTL_FIXTURE_UNSET` and
//! everything else is unset whatever the caller's shell holds.
//!
//! Update the snapshots with `INSTA_UPDATE=always cargo test --test invalid`, then read them.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Run, bin, root};

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/invalid")
}

/// Runs `outpostctl validate ARGS` in `dir` with a cleared environment.
fn validate(dir: &Path, args: &[&str]) -> (Run, tempfile::TempDir) {
    outpostctl(dir, "validate", args)
}

/// Writes `text` as `set.yaml` in a new directory and runs `outpostctl validate --format json`
/// on it: the run (kept with its directory) and the JSON it printed.
fn validate_json(text: impl AsRef<[u8]>) -> (Run, serde_json::Value, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("set.yaml"), text).expect("write");
    let (run, _home) = validate(dir.path(), &["set.yaml", "--format", "json"]);
    let doc = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}{}", run.stdout, run.stderr));
    (run, doc, dir)
}

/// `validate --format json` of `set.yaml` in `dir`, which must pass (exit 0, `valid: true`):
/// the JSON, warnings and all.
fn valid_json(dir: &Path) -> serde_json::Value {
    let (run, _home) = validate(dir, &["set.yaml", "--format", "json"]);
    assert_eq!(run.code, 0, "{}{}", run.stderr, run.stdout);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(doc["valid"], true, "{doc:#}");
    doc
}

/// Runs `outpostctl COMMAND ARGS` in `dir` with a cleared environment; an engine, if the
/// command contacted one, would be a socket that does not exist.
fn outpostctl(dir: &Path, command: &str, args: &[&str]) -> (Run, tempfile::TempDir) {
    let home = tempfile::tempdir().expect("temp HOME");
    let out = Command::new(bin())
        .current_dir(dir)
        .arg(command)
        .args(args)
        .env_clear()
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .env("HOME", home.path())
        .env("AK_TOKEN", "fixture-token")
        .env("AK_BLANK", "   ")
        // A test-only key with a passphrase (an env var: a file's mode depends on the checkout).
        .env(
            "SSH_KEY_WITH_PASSPHRASE",
            include_str!("fixtures/ssh-keys/with-passphrase"),
        )
        .output()
        .expect("outpostctl runs");
    (Run::from(out), home)
}

/// Control characters (a binary file's bytes echoed in a snippet) written visibly, so that
/// snapshots stay text.
fn visible(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Regex that matches `path` literally, for an insta filter.
fn literal(path: &Path) -> String {
    let mut out = String::new();
    for c in path.display().to_string().chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `  × a.yaml:3:5: message` -> `a.yaml:3:5: message`, for error headlines (`×`), warnings
/// (`⚠`) and related places (`☞`).
fn headlines(stderr: &str) -> Vec<(char, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let t = l.trim_start_matches([' ', '╰', '─', '▶']).trim_start();
            let mut chars = t.chars();
            let mark = chars.next()?;
            let rest = chars.as_str().strip_prefix(' ')?;
            matches!(mark, '×' | '⚠' | '☞').then(|| (mark, rest.to_string()))
        })
        .collect()
}

/// Whether `headline` starts with `PATH:LINE:COL: ` with PATH under `prefix`.
fn has_position(headline: &str, prefix: &str) -> bool {
    let Some(rest) = headline.strip_prefix(prefix) else {
        return false;
    };
    // The path may continue (a file in a fixture directory); LINE:COL: follows its last `:`s.
    let Some((before, _message)) = rest.split_once(": ") else {
        return false;
    };
    let mut parts = before.rsplitn(3, ':');
    let col = parts.next().unwrap_or_default();
    let line = parts.next().unwrap_or_default();
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s != "0";
    parts.next().is_some() && ok(line) && ok(col)
}

/// How a fixture is expected to report.
#[derive(Clone, Copy, PartialEq)]
enum Positions {
    /// Every diagnostic names FILE:LINE:COL.
    All,
    /// The error is about a path itself (missing, an empty directory): no line to point at.
    PathOnly,
}

/// Runs one fixture and checks it against its snapshot. `dir` is the working directory,
/// `arg` the path given on the command line (relative, so paths in the report are short).
fn check(name: &str, dir: &Path, arg: &str, positions: Positions, tmp: &[&Path]) {
    let (run, home) = validate(dir, &[arg]);
    let all = format!("{}{}", run.stderr, run.stdout);
    assert!(
        !all.contains("panicked") && !all.contains("RUST_BACKTRACE"),
        "{name}: outpostctl panicked:\n{all}"
    );
    assert_eq!(run.code, 1, "{name}: exit code\n{all}");
    assert!(
        run.stdout.starts_with("invalid: "),
        "{name}: summary line on stdout\n{}",
        run.stdout
    );

    let heads = headlines(&run.stderr);
    let errors: Vec<&String> = heads
        .iter()
        .filter(|(m, _)| *m == '×')
        .map(|(_, h)| h)
        .collect();
    assert!(!errors.is_empty(), "{name}: no error reported\n{all}");
    // The summary counts what was shown.
    let count = run
        .stdout
        .trim()
        .strip_prefix("invalid: ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    assert_eq!(count, Some(errors.len()), "{name}: summary count\n{all}");
    let prefix = arg.trim_end_matches('/');
    for (mark, h) in &heads {
        let positioned = has_position(h, prefix);
        match positions {
            Positions::All => assert!(
                positioned,
                "{name}: `{mark} {h}` does not start with `{prefix}…:LINE:COL:`"
            ),
            Positions::PathOnly => assert!(
                // The path itself, or a file under it.
                positioned
                    || h.contains(&format!("`{prefix}`"))
                    || h.contains(&format!("`{prefix}/")),
                "{name}: `{h}` names neither a position nor the path"
            ),
        }
    }

    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root().join("tests/snapshots"));
    settings.set_prepend_module_to_snapshot(true);
    settings.set_description(format!("outpostctl validate {arg}"));
    settings.set_omit_expression(true);
    settings.add_filter(&literal(home.path()), "[HOME]");
    for t in tmp {
        settings.add_filter(&literal(t), "[TMP]");
    }
    settings.bind(|| {
        insta::assert_snapshot!(
            name,
            format!(
                "exit: {}\n--- stderr\n{}--- stdout\n{}",
                run.code,
                visible(&run.stderr),
                visible(&run.stdout)
            )
        );
    });
}

fn committed(name: &str) {
    let dir = fixtures();
    let entry = if dir.join(name).is_dir() {
        name.to_string()
    } else {
        format!("{name}.yaml")
    };
    assert!(
        dir.join(&entry).exists(),
        "fixture {entry} is missing from {}",
        dir.display()
    );
    keep_token_files_private(&dir.join(&entry));
    check(name, &dir, &entry, Positions::All, &[]);
}

/// Git keeps no file mode but the executable bit, so a token file of a fixture is checked out
/// readable by all (0644 under the usual umask), which validate rightly warns of. The fixtures
/// are about other errors: their token files (what is not YAML beside the manifests) are made
/// 0600, as a user keeps them, so the report is the same on every checkout.
fn keep_token_files_private(fixture: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(entries) = std::fs::read_dir(fixture) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("fixture entry").path();
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if path.is_file() && !is_yaml {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("make the fixture's token file private");
        }
    }
}

macro_rules! committed_fixtures {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                committed(stringify!($name));
            }
        )*
        const COMMITTED: &[&str] = &[$(stringify!($name)),*];
    };
}

committed_fixtures![
    // types
    wrong_type_external_hosts,
    wrong_type_yes_is_a_string,
    wrong_type_outposts_list,
    wrong_type_port_number,
    wrong_enum_type,
    empty_integrations,
    version_two,
    version_decimal,
    version_quoted,
    empty_values,
    invalid_image_reference,
    network_of_a_container_with_ports,
    host_network,
    no_network_with_ports,
    invalid_project_name,
    // keys
    unknown_key_outpost,
    unknown_key_top_level,
    misplaced_keys,
    errors_beside_schema_errors,
    defaults_error_beside_others,
    checks_beside_a_failed_default,
    misspelt_default_key,
    defaults_in_a_broken_document,
    bad_name_beside_other_errors,
    lock_name_taken,
    same_engine_twice,
    unknown_key_config,
    missing_required_token,
    missing_version,
    missing_version_in_a_second_document,
    duplicate_keys,
    duplicate_keys_beside_other_errors,
    merge_key,
    // references and names across the set
    unknown_integration,
    unknown_integration_of_a_failing_outpost,
    unknown_keypair,
    duplicate_names_across_files,
    parse_error_beside_other_files,
    missing_project,
    project_without_a_value,
    project_twice,
    // YAML and file level
    tabs,
    tab_indented_line,
    tab_after_colon,
    token_where_its_name_goes,
    non_utf8,
    nul_byte,
    binary_garbage,
    empty,
    comments_only,
    alias_bomb,
    deep_nesting_flow,
    deep_nesting_block,
    unknown_anchor,
    alias_to_an_earlier_document,
    unsupported_tag,
    unclosed_flow,
    // integrations
    bad_url_scheme,
    http_url_without_port,
    https_url_without_port,
    ssh_url_with_path,
    ssh_host_with_shell_characters,
    escape_sequence_in_a_value,
    unclosed_quote,
    unclosed_flow_before_a_key,
    errors_before_a_syntax_error,
    urls_written_otherwise,
    local_and_url,
    integration_and_keypair_shapes,
    tls_on_plain_http,
    keypair_without_key_tls_auth,
    // outposts
    naming_template_type,
    naming_template_in_defaults,
    setting_through_an_alias,
    reserved_label_in_defaults,
    image_template_build_hash,
    container_name_collision,
    host_port_collision,
    collisions_beside_an_unset_token,
    collisions_beside_a_wrong_name,
    port_bindings_that_are_not,
    ssh_key_that_cannot_log_in,
    duplicate_uuid,
    malformed_uuid,
    external_hosts_on_ldap,
    external_hosts_without_a_host,
    version_placeholder_without_version,
    version_placeholder_many_outposts,
    reserved_label,
    unknown_port_key,
    port_key_spelt_otherwise,
    healthcheck_forms,
    unknown_port_key_beside_settings_errors,
    // secrets
    unset_env_var,
    env_name_with_dollar,
    shell_variable_in_a_flow_mapping,
    unset_env_var_many_outposts,
    token_file_missing,
    token_file_is_directory,
    empty_token,
    inline_secret,
    secrets_in_the_wrong_shape,
];

/// A secret written where outpostctl does not read it (as a key of the source, under a
/// misspelt key) is not repeated: not in the messages, not in the snippets, not in the JSON.
#[test]
fn secrets_in_the_wrong_shape_are_not_repeated() {
    let dir = fixtures();
    for (fixture, said, secret) in [
        ("secrets_in_the_wrong_shape.yaml", "unknown key", "SEKRIT"),
        ("urls_written_otherwise.yaml", "holds a password", "hunter2"),
        (
            "token_where_its_name_goes.yaml",
            "look like a token",
            "Qx7kP2mZ9vL4nR8tY3wB6cD1fG5hJ0sA",
        ),
    ] {
        for json in [false, true] {
            let args: &[&str] = if json {
                &[fixture, "--format", "json"]
            } else {
                &[fixture]
            };
            let (run, _home) = validate(&dir, args);
            assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
            let all = format!("{}{}", run.stdout, run.stderr);
            assert!(all.contains(said), "{all}");
            assert!(!all.contains(secret), "{args:?}: a secret is shown:\n{all}");
        }
    }
}

/// Every fixture on disk has a test, and every test its fixture.
#[test]
fn every_fixture_is_tested() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixtures())
        .expect("fixtures directory")
        .map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            name.strip_suffix(".yaml")
                .map(str::to_string)
                .unwrap_or(name)
        })
        .collect();
    on_disk.sort();
    let mut tested: Vec<String> = COMMITTED.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(on_disk, tested);
}

/// A 50 MB file: refused by size before it is read.
#[test]
fn huge_50mb() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("huge.yaml");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    f.write_all(b"version: 1\nproject: fixtures\noutposts:\n")
        .expect("write");
    let mut i = 0u64;
    let mut written = 0u64;
    while written < 50 * 1024 * 1024 {
        let entry = format!(
            "  Outpost {i}: {{ type: rac, integration: local, token: {{ env: AK_TOKEN }} }}\n"
        );
        f.write_all(entry.as_bytes()).expect("write");
        written += entry.len() as u64;
        i += 1;
    }
    drop(f);
    check(
        "huge_50mb",
        tmp.path(),
        "huge.yaml",
        Positions::All,
        &[tmp.path()],
    );
}

/// A path that does not exist: the error names the path, not a position.
/// Windows line endings (`\r\n`) and old Mac ones (a lone `\r`): the error points at the
/// right line and column, and the snippet shows the lines numbered as an editor does, with no
/// stray carriage return. (Made here: git may change line endings of committed files.)
#[test]
fn crlf_and_cr_line_endings() {
    for (name, eol) in [("crlf_line_endings", "\r\n"), ("cr_line_endings", "\r")] {
        let text = [
            "version: 1",
            "project: Bad_Name",
            "integrations:",
            "  local: { local: true }",
            "outposts:",
            "  - a",
            "  - b",
            "",
        ]
        .join(eol);
        let (_, doc, tmp) = validate_json(&text);
        assert_eq!(
            positions_of(&doc),
            vec![
                ("invalid-value".to_string(), "set.yaml".to_string(), 2, 10),
                ("wrong-type".to_string(), "set.yaml".to_string(), 6, 3),
            ],
            "{name}: {doc:#}"
        );
        let (run, _home) = validate(tmp.path(), &["set.yaml"]);
        assert!(!run.stderr.contains('\r'), "{name}: {:?}", run.stderr);
        check(name, tmp.path(), "set.yaml", Positions::All, &[tmp.path()]);
    }
}

/// A byte that is not UTF-8, or a NUL, after old Mac line endings (a lone `\r`) is placed on
/// its line, counted as the YAML reader counts lines.
#[test]
fn a_bad_byte_after_lone_carriage_returns_is_placed_on_its_line() {
    for (name, bad) in [("not-utf8", b'\xff'), ("binary-file", b'\0')] {
        let mut text = b"version: 1\rproject: x\r".to_vec();
        text.extend([bad, b'\r']);
        let (_, doc, _dir) = validate_json(text);
        assert_eq!(
            positions_of(&doc),
            vec![(name.to_string(), "set.yaml".to_string(), 3, 1)],
            "{doc:#}"
        );
    }
}

/// "Remove the quotes" only where quotes were written and the value without them is what the
/// key takes.
#[test]
fn remove_the_quotes_only_when_that_fixes_it() {
    for (value, hinted) in [
        ("\"1\"", true),
        ("'1'", true),
        ("\"1.0\"", false),
        ("inf", false),
        ("!!str 1", false),
    ] {
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            tmp.path().join("set.yaml"),
            format!("version: {value}\nproject: p\nintegrations:\n  local: {{ local: true }}\n"),
        )
        .expect("write");
        let (run, _home) = validate(tmp.path(), &["set.yaml"]);
        assert_eq!(run.code, 1, "{value}: {}", run.stderr);
        assert_eq!(
            run.stderr.contains("remove the quotes: `version: 1`"),
            hinted,
            "{value}: {}",
            run.stderr
        );
    }
}

/// Hints that name the fix for the outpost at hand: its type's container ports for a `ports`
/// key written as a bare number, the `{ env: ... }` form for a token written inline.
#[test]
fn hints_name_the_fix_for_this_outpost() {
    let (_, doc, _dir) = validate_json(
        "version: 1\nproject: p\ndefaults:\n  authentik_host: https://a.example.com\n  authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\noutposts:\n  LDAP:\n    type: ldap\n    integration: local\n    token: abc\n    ports:\n      \"389\": 1389\n",
    );
    let hints: Vec<String> = doc["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .map(|d| d["hint"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        hints
            .iter()
            .any(|h| h.contains("`token: { env: VARIABLE }`")),
        "{doc:#}"
    );
    assert!(
        hints
            .iter()
            .any(|h| h.contains("container ports of its type (ldap): `3389/tcp`, `6636/tcp`")),
        "{doc:#}"
    );
}

/// A FIFO named like a manifest in a directory is not read (it would block the run) and is
/// said, like a dangling symlink: its outposts must not be planned for removal.
#[test]
fn a_fifo_among_the_manifests_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("set.yaml"),
        "version: 1\nproject: p\nintegrations:\n  local: { local: true }\n",
    )
    .expect("write");
    let made = Command::new("mkfifo")
        .arg(dir.path().join("more.yaml"))
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo failed");
    let (run, _home) = validate(dir.path(), &["."]);
    assert_eq!(run.code, 1, "{}{}", run.stderr, run.stdout);
    assert!(
        run.stderr
            .contains("cannot read `more.yaml`: not a regular file"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_path() {
    check(
        "missing_path",
        &fixtures(),
        "does-not-exist.yaml",
        Positions::PathOnly,
        &[],
    );
}

/// A directory without manifests (git keeps no empty directory, so it is made here).
#[test]
fn empty_directory() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("manifests");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("README.md"), "not a manifest\n").expect("write");
    check(
        "empty_directory",
        tmp.path(),
        "manifests",
        Positions::PathOnly,
        &[tmp.path()],
    );
}

/// A dangling symlink given as the path itself.
#[cfg(unix)]
#[test]
fn dangling_symlink_argument() {
    let tmp = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink("gone.yaml", tmp.path().join("link.yaml")).expect("symlink");
    check(
        "dangling_symlink_argument",
        tmp.path(),
        "link.yaml",
        Positions::PathOnly,
        &[tmp.path()],
    );
}

/// A dangling `*.yaml` symlink inside a directory is an error naming it (exit 1): a manifest
/// that was meant to be read is not silently missing. (It was skipped without a word, and
/// the set validated.)
#[cfg(unix)]
#[test]
fn dangling_symlink_in_directory() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("manifests");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(
        dir.join("a.yaml"),
        "version: 1\nproject: fixtures\ndefaults:\n  authentik_host: https://auth.example.com\n  \
         authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\n",
    )
    .expect("write");
    std::os::unix::fs::symlink("../elsewhere/b.yaml", dir.join("b.yaml")).expect("symlink");
    check(
        "dangling_symlink_in_directory",
        tmp.path(),
        "manifests",
        Positions::PathOnly,
        &[tmp.path()],
    );
}

/// `--format json`: one JSON document on stdout, every diagnostic with its file, line and
/// column, exit 1.
fn json_of(dir: &Path, arg: &str) -> serde_json::Value {
    let (run, _home) = validate(dir, &[arg, "--format", "json"]);
    assert_eq!(run.code, 1, "{}{}", run.stderr, run.stdout);
    assert!(
        !run.stderr.contains("panicked"),
        "outpostctl panicked:\n{}",
        run.stderr
    );
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout));
    assert_eq!(doc["valid"], false, "{doc:#}");
    doc
}

fn positions_of(doc: &serde_json::Value) -> Vec<(String, String, u64, u64)> {
    doc["diagnostics"]
        .as_array()
        .expect("diagnostics is a list")
        .iter()
        .map(|d| {
            let num = |k: &str| {
                d[k].as_u64()
                    .unwrap_or_else(|| panic!("`{k}` is not a number in {d:#}"))
            };
            assert!(num("line") >= 1 && num("column") >= 1, "{d:#}");
            assert!(num("end_line") >= num("line"), "{d:#}");
            assert!(d["message"].is_string() && d["code"].is_string(), "{d:#}");
            (
                d["code"].as_str().unwrap_or_default().to_string(),
                d["file"].as_str().expect("file").to_string(),
                num("line"),
                num("column"),
            )
        })
        .collect()
}

#[test]
fn json_unknown_key() {
    let doc = json_of(&fixtures(), "unknown_key_outpost.yaml");
    assert_eq!(
        positions_of(&doc),
        vec![(
            "unknown-key".to_string(),
            "unknown_key_outpost.yaml".to_string(),
            12,
            5
        )]
    );
    assert_eq!(
        doc["diagnostics"][0]["hint"], "did you mean `integration`?",
        "{doc:#}"
    );
}

/// A host port binding that is not one is `invalid-port` whichever check finds it: the
/// schema (not a binding, a port out of range) or the check after it (an address binding's
/// port out of range).
#[test]
fn json_port_bindings_that_are_not_are_invalid_port() {
    let doc = json_of(&fixtures(), "port_bindings_that_are_not.yaml");
    let at = |line| {
        (
            "invalid-port".to_string(),
            "port_bindings_that_are_not.yaml".to_string(),
            line,
            24,
        )
    };
    assert_eq!(positions_of(&doc), vec![at(15), at(20), at(26)], "{doc:#}");
}

#[test]
fn json_duplicate_names_across_files() {
    let doc = json_of(&fixtures(), "duplicate_names_across_files");
    assert_eq!(
        positions_of(&doc),
        vec![(
            "duplicate-name".to_string(),
            "duplicate_names_across_files/b.yaml".to_string(),
            3,
            3
        )]
    );
    assert_eq!(doc["files"], 2, "{doc:#}");
    let related = &doc["diagnostics"][0]["related"][0];
    assert_eq!(related["file"], "duplicate_names_across_files/a.yaml");
    assert_eq!(
        (related["line"].as_u64(), related["column"].as_u64()),
        (Some(10), Some(3))
    );
}

/// One unset variable that six outposts read their token from is one error at the first
/// place, listing the five others (a person is shown three and told how many more).
#[test]
fn json_one_cause_at_many_places() {
    let doc = json_of(&fixtures(), "unset_env_var_many_outposts.yaml");
    let file = "unset_env_var_many_outposts.yaml".to_string();
    assert_eq!(
        positions_of(&doc),
        vec![
            ("missing-env".to_string(), file.clone(), 12, 59),
            ("missing-env".to_string(), file.clone(), 18, 61),
        ]
    );
    let first = &doc["diagnostics"][0];
    assert_eq!(
        first["message"],
        "environment variable `OUTPOSTCTL_FIXTURE_UNSET` is not set (referenced at 6 places)"
    );
    let lines: Vec<u64> = first["related"]
        .as_array()
        .expect("related places")
        .iter()
        .map(|r| {
            assert_eq!(r["file"], file.as_str(), "{r:#}");
            r["line"].as_u64().expect("line")
        })
        .collect();
    assert_eq!(lines, [13, 14, 15, 16, 17]);
    assert!(doc["diagnostics"][1].get("related").is_none(), "{doc:#}");
}

#[test]
fn json_file_level_errors() {
    for (fixture, code, line, column) in [
        ("non_utf8.yaml", "not-utf8", 7, 28),
        ("alias_bomb.yaml", "yaml", 8, 8),
        ("deep_nesting_block.yaml", "yaml", 68, 129),
    ] {
        let doc = json_of(&fixtures(), fixture);
        assert_eq!(
            positions_of(&doc),
            vec![(code.to_string(), fixture.to_string(), line, column)],
            "{fixture}"
        );
        // One file, counted once, whether it failed before parsing or while parsing.
        assert_eq!(doc["files"], 1, "{fixture}: {doc:#}");
    }
}

/// `plan --format markdown` on invalid manifests (a pull request that breaks them): stdout,
/// which CI posts as the comment, says why there is no plan, with every error at
/// FILE:LINE:COL, the place it relates to, and the hint; exit 1; no engine is contacted.
#[test]
fn plan_markdown_lists_the_errors() {
    let (run, _home) = outpostctl(
        &fixtures(),
        "plan",
        &[
            "duplicate_names_across_files",
            "unknown_key_outpost.yaml",
            "--format",
            "markdown",
        ],
    );
    assert_eq!(run.code, 1, "{}{}", run.stderr, run.stdout);
    assert!(
        !run.stderr.contains("nonexistent") && !run.stdout.contains("nonexistent"),
        "the engine was contacted:\n{}",
        run.stderr
    );
    insta::assert_snapshot!(run.stdout);
}

/// `ports` with `docker_map_ports: false` publishes nothing: a warning at the outpost's
/// `ports`, whether the false is the outpost's own or comes from `defaults`; the set stays
/// valid (exit 0), and an outpost that does publish gets no warning.
#[test]
fn ports_without_port_mapping_warn() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("set.yaml"),
        r#"version: 1
project: ports
defaults:
  authentik_host: https://auth.example.com
  authentik_version: "2026.8.0"
  docker_map_ports: false
integrations:
  local: { local: true }
outposts:
  From Defaults:
    type: ldap
    integration: local
    token: { env: AK_TOKEN }
    ports:
      3389/tcp: 1389
  Own Setting:
    type: radius
    integration: local
    token: { env: AK_TOKEN }
    config: { docker_map_ports: false }
    ports:
      1812/udp: 11812
  Published:
    type: proxy
    integration: local
    token: { env: AK_TOKEN }
    external_hosts: [https://a.example.com]
    config: { docker_map_ports: true }
    ports:
      9000/tcp: 19000
"#,
    )
    .expect("write");
    let doc = valid_json(dir.path());
    assert_eq!(
        positions_of(&doc),
        vec![
            ("ports-unused".to_string(), "set.yaml".to_string(), 14, 5),
            ("ports-unused".to_string(), "set.yaml".to_string(), 21, 5),
        ]
    );
}

/// `set.yaml` in `dir`: one rac outpost whose token is read from `file` (as written in YAML).
fn write_rac_with_token_file(dir: &Path, file: &str) {
    let text = format!(
        "version: 1\nproject: modes\ndefaults:\n  authentik_host: https://auth.example.com\n  \
         authentik_version: \"2026.8.0\"\nintegrations:\n  local: {{ local: true }}\noutposts:\n  \
         Shared:\n    type: rac\n    integration: local\n    token: {{ file: {file} }}\n"
    );
    std::fs::write(dir.join("set.yaml"), text).expect("write");
}

/// A token file that group or others can read is warned of at the `file:` that names it, with
/// its mode and the `chmod 600` to run; the set stays valid (exit 0). Once it is 0600, no
/// warning.
#[test]
fn a_token_file_readable_by_others_is_warned_of() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    write_rac_with_token_file(dir.path(), "rac.token");
    let token = dir.path().join("rac.token");
    std::fs::write(&token, "a-token-of-the-test\n").expect("write token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let doc = valid_json(dir.path());
    assert_eq!(
        positions_of(&doc),
        vec![(
            "key-permissions".to_string(),
            "set.yaml".to_string(),
            12,
            20
        )],
        "{doc:#}"
    );
    let (run, _home) = validate(dir.path(), &["set.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stderr, run.stdout);
    assert!(
        run.stderr
            .contains("`rac.token` is accessible to group or others (mode 640)")
            && run
                .stderr
                .contains("help: restrict it: `chmod 600 rac.token`"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("a-token-of-the-test"),
        "{}",
        run.stderr
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let doc = valid_json(dir.path());
    assert_eq!(positions_of(&doc), vec![], "{doc:#}");
}

/// A path that is neither a file nor a directory (a FIFO, a device) is an error at once: a FIFO
/// would block the run and `/dev/zero` would never end.
#[test]
fn special_files_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("pipe.yaml");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo failed");
    for path in [fifo.to_str().expect("utf-8 path"), "/dev/zero"] {
        let (run, _home) = validate(dir.path(), &[path]);
        assert_eq!(run.code, 1, "{path}: {}{}", run.stderr, run.stdout);
        assert!(
            run.stderr.contains("not a regular file or directory"),
            "{path}: {}",
            run.stderr
        );
    }
}

/// `plan --format json` and `status --format json` on manifests that do not validate: the
/// diagnostics as JSON on stdout, in `validate --format json`'s shape, instead of nothing
/// (exit 1).
#[test]
fn json_plan_and_status_of_invalid_manifests_are_the_diagnostics() {
    for command in ["plan", "status"] {
        json_of_invalid_manifests_is_the_diagnostics(command);
    }
}

fn json_of_invalid_manifests_is_the_diagnostics(command: &str) {
    let (run, _home) = outpostctl(
        &fixtures(),
        command,
        &["--format", "json", "missing_project.yaml"],
    );
    assert_eq!(run.code, 1, "{}{}", run.stderr, run.stdout);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(doc["format_version"], 1, "{doc:#}");
    assert_eq!(doc["valid"], false, "{doc:#}");
    assert_eq!(
        positions_of(&doc)
            .into_iter()
            .map(|(code, file, _, _)| (code, file))
            .collect::<Vec<_>>(),
        vec![(
            "missing-project".to_string(),
            "missing_project.yaml".to_string()
        )]
    );
}

/// A set with a project and no outposts is valid (the way to remove them all) but warned of:
/// apply would remove every container of the project.
#[test]
fn an_empty_set_is_warned_of() {
    let (run, doc, _dir) =
        validate_json("version: 1\nproject: homelab\nintegrations:\n  local: { local: true }\n");
    assert_eq!(run.code, 0, "{}{}", run.stderr, run.stdout);
    assert_eq!(
        positions_of(&doc),
        vec![("no-outposts".to_string(), "set.yaml".to_string(), 2, 1)]
    );
    assert!(
        doc["diagnostics"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("removes every container of project `homelab`")),
        "{doc:#}"
    );
}

/// What a pull request's comment shows when its manifests are invalid: `plan --format
/// markdown` prints the diagnostics as a table (exit 1, nothing planned). Code spans keep their
/// text as written (`project: <name>`), the rest is escaped for the table.
#[test]
fn markdown_comment_of_invalid_manifests() {
    for fixture in ["missing_project", "errors_beside_schema_errors"] {
        let arg = format!("{fixture}.yaml");
        let (run, _home) = outpostctl(&fixtures(), "plan", &["--format", "markdown", &arg]);
        assert_eq!(run.code, 1, "{fixture}:\n{}{}", run.stderr, run.stdout);
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(root().join("tests/snapshots"));
        settings.set_description(format!("outpostctl plan --format markdown {arg}"));
        settings.set_omit_expression(true);
        settings.bind(|| {
            insta::assert_snapshot!(format!("markdown_{fixture}"), run.stdout);
        });
    }
}

/// A token or private key written into a manifest (refused) is not repeated anywhere: not in
/// the snippet of the human output (masked, its lines and columns kept), not in a message of
/// the JSON, the Markdown or the plan.
#[test]
fn secrets_written_inline_are_not_repeated() {
    let text = "version: 1\nproject: p\ndefaults:\n  authentik_host: https://auth.example.com\n  \
        authentik_version: \"2026.8.0\"\nkeypairs:\n  k: { key: \"-----BEGIN OPENSSH PRIVATE KEY-----abc\" }\n  \
        k2:\n    key: |\n      -----BEGIN OPENSSH PRIVATE KEY-----\n      s3cretline\n      \
        -----END OPENSSH PRIVATE KEY-----\nintegrations:\n  local: { local: true }\noutposts:\n  \
        Proxy:\n    type: ldap\n    integration: local\n    token: ak-sekrit-0123456789\n  \
        Other:\n    type: ldap\n    integration: local\n    ports: { \"3389/tcp\": 1389, \"6636/tcp\": 1636 }\n    \
        token: { value: \"ak-other-sekrit\" }\n";
    let secrets = [
        "abc",
        "s3cretline",
        "ak-sekrit-0123456789",
        "ak-other-sekrit",
    ];
    let (run, doc, dir) = validate_json(text);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let codes: Vec<&str> = doc["diagnostics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["code"].as_str())
        .collect();
    assert_eq!(
        codes,
        ["wrong-type", "wrong-type", "wrong-type", "unknown-key"],
        "{doc:#}"
    );
    let (human, _home) = validate(dir.path(), &["set.yaml"]);
    let (markdown, _home) = outpostctl(dir.path(), "plan", &["set.yaml", "--format", "markdown"]);
    for (what, out) in [
        ("validate --format json", &run.stdout),
        ("validate", &human.stderr),
        ("validate (stdout)", &human.stdout),
        ("plan --format markdown", &markdown.stdout),
    ] {
        for secret in secrets {
            assert!(!out.contains(secret), "{what} shows `{secret}`:\n{out}");
        }
    }
    // The snippet still marks where: the token's line, masked to its width.
    assert!(
        human
            .stderr
            .contains("set.yaml:19:12: `token` must be a mapping, found a string")
            && human.stderr.contains("    token: ********************\n"),
        "{}",
        human.stderr
    );
}

/// A token written inline in the wrong place (mis-indented under `outposts`, under
/// `defaults`, tagged as a number), or next to a YAML syntax error that stops the parse: the
/// snippets still mask it, and no message repeats it.
#[test]
fn secrets_written_in_the_wrong_place_are_not_repeated() {
    let head = "version: 1\nproject: p\ndefaults:\n  authentik_host: https://auth.example.com\n  \
        authentik_version: \"2026.8.0\"\n";
    let valid_rest = "integrations:\n  local: { local: true }\noutposts:\n  \
        Edge:\n    type: ldap\n    integration: local\n    token: { env: AK_TOKEN }\n";
    let cases = [
        (
            "mis-indented",
            format!("{head}{valid_rest}  token: ak-misplaced-sekrit\n"),
            "ak-misplaced-sekrit",
        ),
        (
            "under defaults",
            format!("{head}  token: ak-defaults-sekrit\n{valid_rest}"),
            "ak-defaults-sekrit",
        ),
        (
            "tagged",
            format!(
                "{head}{valid_rest}  Other:\n    type: ldap\n    integration: local\n    token: !!int ak-tagged-sekrit\n"
            ),
            "ak-tagged-sekrit",
        ),
        (
            "beside a syntax error",
            format!(
                "{head}{valid_rest}  Other:\n    type: ldap\n    token: ak-unparsed-sekrit\n\tintegration: local\n"
            ),
            "ak-unparsed-sekrit",
        ),
        (
            "a key in a block beside a syntax error",
            format!(
                "{head}keypairs:\n  k:\n    key: |\n      -----BEGIN KEY-----\n      s3cret-block-line\n\
                 \tcertificate: {{ file: c.pem }}\n{valid_rest}"
            ),
            "s3cret-block-line",
        ),
        (
            "in a one-line mapping beside a syntax error",
            format!(
                "{head}{valid_rest}  Other: {{ type: ldap, token: ak-flow-sekrit }}\n\tintegration: local\n"
            ),
            "ak-flow-sekrit",
        ),
        (
            "under a misspelt token",
            format!(
                "{head}{valid_rest}  Other:\n    type: ldap\n    integration: local\n    tokne: ak-typo-sekrit\n"
            ),
            "ak-typo-sekrit",
        ),
        (
            "under a misspelt key",
            format!("{head}keypairs:\n  k:\n    kye: kye-typo-sekrit\n{valid_rest}"),
            "kye-typo-sekrit",
        ),
        (
            "under password beside a syntax error",
            format!(
                "{head}{valid_rest}  Other:\n    type: ldap\n    password: pw-unparsed-sekrit\n\tintegration: local\n"
            ),
            "pw-unparsed-sekrit",
        ),
        (
            "below a bare token, not indented under it",
            format!(
                "{head}{valid_rest}  Other:\n    integration: local\n        token:\n      ak-below-sekrit\n"
            ),
            "ak-below-sekrit",
        ),
        (
            "an engine URL's password with an escape in it",
            format!(
                "{head}integrations:\n  edge: {{ url: \"https://deploy:url\\\"escaped-sekrit@edge.example.com:2376\" }}\n"
            ),
            "url\\\"escaped-sekrit",
        ),
    ];
    // (A tab where YAML wants indentation stops the parse at the next line: its snippet
    // shows the secret's line.)
    // A file that is not UTF-8: what is shown of it, up to the bad byte, is masked as well.
    let mut latin1 =
        format!("{head}{valid_rest}  Other:\n    token: ak-latin1-sekrit # caf").into_bytes();
    latin1.extend_from_slice(b"\xe9\n");
    let cases = cases
        .into_iter()
        .map(|(case, text, secret)| (case, text.into_bytes(), secret))
        .chain([("not UTF-8", latin1, "ak-latin1-sekrit")]);
    for (case, text, secret) in cases {
        let (run, doc, dir) = validate_json(&text);
        assert_eq!(run.code, 1, "{case}: {}{}", run.stdout, run.stderr);
        assert!(
            !run.stdout.contains(secret),
            "{case}: the JSON shows it:\n{doc:#}"
        );
        let (human, _home) = validate(dir.path(), &["set.yaml"]);
        assert_eq!(human.code, 1, "{case}");
        assert!(
            !human.stderr.contains(secret) && !human.stdout.contains(secret),
            "{case}: the human output shows it:\n{}",
            human.stderr
        );
        // The snippet still marks the line, masked to the secret's width.
        assert!(
            human.stderr.contains(&"*".repeat(secret.len())),
            "{case}: no masked snippet:\n{}",
            human.stderr
        );
    }
}

/// An outpost name with a control character (a tab, a terminal escape) is refused at its key,
/// and shown escaped: it would otherwise reach terminals, logs and pull-request comments as
/// it is.
#[test]
fn an_outpost_name_with_control_characters_is_refused() {
    let text = "version: 1\nproject: p\ndefaults:\n  authentik_host: https://auth.example.com\n  \
        authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\noutposts:\n  \
        \"Edge\\tProxy\\e[2K\": { type: ldap, integration: local, token: { env: AK_TOKEN } }\n";
    let (run, doc, dir) = validate_json(text);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        positions_of(&doc)
            .into_iter()
            .map(|(code, _, line, column)| (code, line, column))
            .collect::<Vec<_>>(),
        vec![("invalid-name".to_string(), 9, 3)],
        "{doc:#}"
    );
    let (human, _home) = validate(dir.path(), &["set.yaml"]);
    assert!(
        human
            .stderr
            .contains("`Edge\\tProxy\\u001b[2K` is not an outpost name")
            && !human.stderr.contains('\u{1b}'),
        "{}",
        human.stderr
    );
}

/// An entry named `""` is refused at its name, and only it is cut out: the other entries of
/// its section are still checked and still defined, so a reference to one is not called
/// unknown, and another outpost's mistakes are still reported in the same run.
#[test]
fn an_empty_name_leaves_the_rest_of_its_section_checked() {
    let head = "version: 1\nproject: p\ndefaults:\n  authentik_host: https://auth.example.com\n  \
        authentik_version: \"2026.8.0\"\n";
    let cert = r#"{ certificate: { value: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" } }"#;
    let codes = |doc: &serde_json::Value| {
        positions_of(doc)
            .into_iter()
            .map(|(code, _, line, column)| (code, line, column))
            .collect::<Vec<_>>()
    };

    // keypairs: `ca` is defined beside `""`; integrations: `local` is defined beside `""`.
    for text in [
        format!(
            "{head}keypairs:\n  \"\": {cert}\n  ca: {cert}\nintegrations:\n  \
             edge: {{ url: \"https://edge.example.com:2376\", tls_verification: ca }}\n"
        ),
        format!(
            "{head}integrations:\n  \"\": {{ local: true }}\n  local: {{ local: true }}\noutposts:\n  \
             A: {{ type: ldap, integration: local, token: {{ env: AK_TOKEN }} }}\n"
        ),
    ] {
        let (run, doc, _dir) = validate_json(&text);
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert_eq!(
            codes(&doc),
            vec![("invalid-name".to_string(), 7, 3)],
            "{text}\n{doc:#}"
        );
    }

    // outposts: `A`'s unknown integration and `B`'s unset variable are still reported.
    let (run, doc, _dir) = validate_json(format!(
        "{head}integrations:\n  local: {{ local: true }}\noutposts:\n  \
         \"\": {{ type: ldap, integration: local, token: {{ env: AK_TOKEN }} }}\n  \
         A: {{ type: ldap, integration: locl, token: {{ env: AK_TOKEN }} }}\n  \
         B: {{ type: ldap, integration: local, token: {{ env: OUTPOSTCTL_FIXTURE_UNSET }} }}\n"
    ));
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let found = codes(&doc);
    assert_eq!(found.len(), 3, "{doc:#}");
    assert_eq!(found[0].1, 9, "the empty name first: {doc:#}");
    assert!(
        found
            .iter()
            .any(|(code, line, _)| code == "unknown-integration" && *line == 10),
        "{doc:#}"
    );
    assert!(
        found.iter().any(|(_, line, _)| *line == 11),
        "B's unset variable: {doc:#}"
    );
}

/// The `chmod 600` of the permissions warning is a command to run as shown: a path with a
/// space (or a quote) is quoted for the shell, so that it is one path, the right one.
#[test]
fn the_chmod_hint_quotes_a_path_with_a_space() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("perm dir")).expect("mkdir");
    write_rac_with_token_file(dir.path(), r#""perm dir/it's.token""#);
    let token = dir.path().join("perm dir/it's.token");
    std::fs::write(&token, "a-token-of-the-test\n").expect("write token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (run, _home) = validate(dir.path(), &["set.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stderr, run.stdout);
    assert!(
        run.stderr
            .contains(r"help: restrict it: `chmod 600 'perm dir/it'\''s.token'`"),
        "{}",
        run.stderr
    );
    // Run as shown, from the directory the path is relative to, it restricts that file.
    let hint = run
        .stderr
        .split("`chmod 600 ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("a chmod hint");
    let status = Command::new("sh")
        .current_dir(dir.path())
        .arg("-c")
        .arg(format!("chmod 600 {hint}"))
        .status()
        .expect("sh runs");
    assert!(status.success());
    let mode = std::fs::metadata(&token)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
