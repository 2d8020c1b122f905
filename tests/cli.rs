//! The command line itself, no engine needed: a wrong one exits 64 with clap's message (never
//! 2, which `plan --detailed-exitcode` keeps for "changes present"); help and version exit 0.

use std::process::Command;

fn outpostctl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpostctl"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("outpostctl runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_wrong_command_line_exits_64_never_2() {
    let wrong: [&[&str]; 5] = [
        &["plan", "--frobnicate"],
        &["apply", "--lock-timeout"],
        &["plan", "--format", "nope"],
        &["frobnicate"],
        &["validate", "--format"],
    ];
    for args in wrong {
        let (code, _, err) = outpostctl(args);
        assert_eq!(code, Some(64), "{args:?}:\n{err}");
        assert!(err.contains("error:"), "{args:?} says why:\n{err}");
    }
}

#[test]
fn help_and_version_exit_0() {
    let asked: [&[&str]; 3] = [&["--help"], &["--version"], &["plan", "--help"]];
    for args in asked {
        let (code, out, err) = outpostctl(args);
        assert_eq!(code, Some(0), "{args:?}:\n{err}");
        assert!(out.contains("outpostctl"), "{args:?}:\n{out}");
    }
}

/// `--color always|never` applies to clap's own errors and help as to the rest: asked for on
/// a pipe (and over NO_COLOR), a wrong command line's error is coloured; `never` is plain.
#[test]
fn color_applies_to_command_line_errors() {
    let (code, _, stderr) = outpostctl(&["--color", "always", "plan", "--bogus"]);
    assert_eq!(code, Some(64));
    assert!(stderr.contains('\u{1b}'), "{stderr:?}");
    let (code, _, stderr) = outpostctl(&["--color=never", "plan", "--bogus"]);
    assert_eq!(code, Some(64));
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

/// `completions SHELL` prints a script each shell takes as its own (the line that registers
/// it), offering every command; bash loads it and then completes `outpostctl`.
#[test]
fn completions_are_printed_for_every_shell() {
    for (shell, registers) in [
        ("bash", "complete -F _outpostctl"),
        ("zsh", "#compdef outpostctl"),
        ("fish", "complete -c outpostctl"),
        ("elvish", "edit:completion:arg-completer[outpostctl]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let (code, stdout, stderr) = outpostctl(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}: {stderr}");
        assert!(stdout.contains(registers), "{shell}: no `{registers}`");
        for command in [
            "validate",
            "plan",
            "apply",
            "status",
            "watch",
            "schema",
            "completions",
        ] {
            assert!(
                stdout.contains(command),
                "{shell}: `{command}` is not offered"
            );
        }
    }
    let (_, script, _) = outpostctl(&["completions", "bash"]);
    let out = Command::new("bash")
        .args(["-c", "eval \"$SCRIPT\" && complete -p outpostctl"])
        .env("SCRIPT", &script)
        .output()
        .expect("bash runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("-F _outpostctl"),
        "bash did not take it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A path that is not UTF-8 (a Latin-1 file name) is a path like any other: read, or said
/// to be missing, never a panic.
#[test]
fn a_path_that_is_not_utf8_is_read_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_outpostctl"))
        .args(["validate".as_ref(), dir.path().join(name).as_os_str()])
        .env("NO_COLOR", "1")
        .output()
        .expect("outpostctl runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("caf\u{fffd}.yaml`: no such file or directory"),
        "{err}"
    );
}

/// An environment value that is not UTF-8 is never taken as unset: a token so set is refused
/// for what it is, and DOCKER_HOST so set fails to connect, naming itself (it reached the
/// default socket's engine instead).
#[test]
fn environment_values_that_are_not_utf8_are_not_taken_as_unset() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("set.yaml"),
        "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
         authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\n\
         outposts:\n  A: { type: ldap, integration: local, token: { env: AK_A } }\n",
    )
    .expect("manifest");
    let run = |args: &[&str], vars: &[(&str, &[u8])]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpostctl"));
        cmd.args(args).arg(dir.path()).env("NO_COLOR", "1");
        for (k, v) in vars {
            cmd.env(k, std::ffi::OsStr::from_bytes(v));
        }
        let out = cmd.output().expect("outpostctl runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&["validate"], &[("AK_A", b"tok\xff")]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("environment variable `AK_A` is not UTF-8 text"),
        "{text}"
    );
    let (code, text) = run(
        &["plan"],
        &[
            ("AK_A", b"a-token"),
            ("DOCKER_HOST", b"unix:///nowhere\xff.sock"),
        ],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("/nowhere\u{fffd}.sock"), "{text}");
    assert!(!text.contains("/var/run/docker.sock"), "{text}");
}

/// `watch --listen` on a port another process holds fails at once, saying what to do.
#[test]
fn watch_on_a_busy_port_says_to_give_another() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = held.local_addr().expect("its address").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_outpostctl"))
        .args(["watch", "--listen", &addr])
        .arg(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("outpostctl runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("cannot listen on {addr}"))
            && text
                .contains("another process listens there (another watch?): give another --listen"),
        "{text}"
    );
}

/// `watch --listen 127.0.0.1:0` lets the system pick the port, and the log names the port it
/// got (not `:0`), which then answers.
#[test]
fn watch_on_port_zero_names_the_port_it_got() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    // An empty directory: the watch runs (its manifests invalid), no engine needed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpostctl"))
        .args(["watch", "--listen", "127.0.0.1:0"])
        .arg(dir.path())
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("outpostctl runs");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("serving /healthz"));
    let addr = serving
        .as_deref()
        .and_then(|l| l.rsplit_once("http://"))
        .map(|(_, a)| a.trim().to_string());
    let answer = addr.as_deref().and_then(|a| {
        let mut conn = std::net::TcpStream::connect(a).ok()?;
        conn.write_all(b"GET /livez HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        Some(text)
    });
    let _ = child.kill();
    let _ = child.wait();
    let addr = addr.unwrap_or_else(|| panic!("no serving line: {serving:?}"));
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    assert!(
        answer.is_some_and(|a| a.starts_with("HTTP/1.")),
        "{addr} does not answer"
    );
}
