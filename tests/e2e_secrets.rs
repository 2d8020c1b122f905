//! Secret leaks, end to end: with known, distinctive token values (from the environment and
//! from a file), a TLS client key (file) and an SSH private key (environment), every command
//! (validate, plan, apply, status, schema, completions, watch) runs in every output format, on
//! success and error paths (an invalid manifest, a key that is not PEM, unreachable engines
//! over https, ssh and http, a blocked outpost, failed creates, a stale saved plan, rotated
//! tokens), with saved plans, watch logs (text and JSON), /metrics and /healthz. Nothing any of
//! them prints or writes may contain a secret, a piece of a key, or a trivial digest of a
//! token; the labels of every container on the engine and the whole `docker inspect` of the
//! outposts' containers hold no secret, except each container's own `AUTHENTIK_TOKEN`.
//! Needs `scripts/test-deps.sh`.

mod common;
mod support;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Run;
use serde_json::{Value, json};
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use support::*;

/// A distinctive random string: `prefix` and 40 hex digits from /dev/urandom.
fn random(prefix: &str) -> String {
    let mut b = [0u8; 20];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    format!("{prefix}{}", hex::encode(b))
}

fn write_secret_file(path: &Path, text: &str, mode: u32) {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).expect("dir");
    }
    fs::write(path, text).expect("write secret file");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The base64 body of a PEM (or OpenSSH) private key: its lines, and the body without line
/// breaks cut in 32-character pieces; any one of them in an output is a leak.
fn key_pieces(pem: &str) -> Vec<String> {
    let body: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .collect();
    let joined: String = body.concat();
    let mut out: Vec<String> = body
        .iter()
        .filter(|l| l.len() >= 16)
        .map(|l| l.to_string())
        .collect();
    let chars: Vec<char> = joined.chars().collect();
    for chunk in chars.chunks(32).filter(|c| c.len() == 32) {
        out.push(chunk.iter().collect());
    }
    out
}

/// Digests of a token a careless implementation might put in a label or a plan.
fn trivial_digests(token: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in [
        token.to_string(),
        format!("{token}\n"),
        format!("AUTHENTIK_TOKEN={token}"),
    ] {
        out.push(hex::encode(Sha256::digest(t.as_bytes())));
        out.push(hex::encode(Sha224::digest(t.as_bytes())));
        out.push(hex::encode(&Sha384::digest(t.as_bytes())[..32]));
        out.push(hex::encode(&Sha512::digest(t.as_bytes())[..32]));
    }
    out
}

fn ssh_keygen(dir: &Path) -> (String, String) {
    let path = dir.join("deploy_ed25519");
    let r = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "outpostctl-secret-test",
            "-f",
        ])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen runs");
    assert!(r.status.success(), "ssh-keygen: {r:?}");
    let private = fs::read_to_string(&path).expect("private key");
    let public = fs::read_to_string(path.with_extension("pub")).expect("public key");
    let _ = fs::remove_file(&path);
    let _ = fs::remove_file(path.with_extension("pub"));
    let public = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    (private, public)
}

/// A self-signed EC client certificate and its key (PEM).
fn tls_client(dir: &Path) -> (String, String) {
    let (key, cert) = (dir.join("k.pem"), dir.join("c.pem"));
    let r = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=outpostctl-secret-test",
            "-days",
            "2",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    assert!(r.status.success(), "openssl: {r:?}");
    let out = (
        fs::read_to_string(&cert).expect("cert"),
        fs::read_to_string(&key).expect("key"),
    );
    let _ = fs::remove_file(key);
    let _ = fs::remove_file(cert);
    out
}

/// A port on loopback nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Everything that must never appear, and what has been scanned.
struct Guard {
    /// What each forbidden string is (for the message): value -> description.
    forbidden: BTreeMap<String, String>,
    outputs: usize,
    bytes: usize,
}

impl Guard {
    fn new() -> Guard {
        Guard {
            forbidden: BTreeMap::new(),
            outputs: 0,
            bytes: 0,
        }
    }

    fn token(&mut self, what: &str, value: &str) {
        self.forbidden
            .insert(value.to_string(), format!("the token {what}"));
        for d in trivial_digests(value) {
            self.forbidden
                .insert(d, format!("a plain digest of the token {what}"));
        }
    }

    fn key(&mut self, what: &str, pem: &str) {
        for p in key_pieces(pem) {
            self.forbidden
                .insert(p, format!("a piece of the private key {what}"));
        }
    }

    fn check(&mut self, what: &str, text: &str) {
        self.outputs += 1;
        self.bytes += text.len();
        for (s, desc) in &self.forbidden {
            assert!(
                !text.contains(s.as_str()),
                "{desc} leaked into {what}:\n{text}"
            );
        }
    }

    fn check_run(&mut self, args: &[&str], r: &Run) {
        let cmd = format!("`outpostctl {}`", args.join(" "));
        self.check(&format!("the output of {cmd}"), &r.stdout);
        self.check(&format!("the errors of {cmd}"), &r.stderr);
    }
}

struct Case {
    env: Env,
    guard: Guard,
    /// Token variable -> value, for processes the test starts itself (watch).
    tokens: BTreeMap<String, String>,
    /// The file token's path.
    token_file: PathBuf,
    /// TMPDIR of every run: where the ssh key would be written, checked for leftovers.
    tmp: PathBuf,
    runs: usize,
}

impl Case {
    fn run(&mut self, args: &[&str]) -> Run {
        let r = self.env.run(args);
        self.guard.check_run(args, &r);
        self.runs += 1;
        r
    }

    fn set_token(&mut self, var: &str, what: &str) -> String {
        let v = random("ak-tok-");
        self.env.set_token(var, &v);
        self.guard.token(what, &v);
        self.tokens.insert(var.to_string(), v.clone());
        v
    }

    fn set_file_token(&mut self) -> String {
        let v = random("ak-ftok-");
        write_secret_file(&self.token_file, &format!("{v}\n"), 0o600);
        self.guard.token("from the file", &v);
        v
    }

    /// `outpostctl ARGS... SET...`
    fn run_on(&mut self, args: &[&str], set: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(set);
        self.run(&all)
    }

    /// Every read-only command on the manifests `set` in every format.
    fn matrix(&mut self, set: &[&str], stage: &str) {
        for format in ["human", "json"] {
            self.run_on(&["validate", "--format", format], set);
            self.run_on(&["status", "--format", format], set);
        }
        for format in ["human", "json", "markdown"] {
            self.run_on(&["plan", "--format", format], set);
            self.run_on(&["plan", "--format", format, "--diff"], set);
            self.run_on(&["plan", "--format", format, "--detailed-exitcode"], set);
        }
        let out = self
            .env
            .dir()
            .join(format!("{stage}-{}-plan.json", set.join("-")));
        let out_s = out.display().to_string();
        self.run_on(&["plan", "--out", &out_s], set);
        let saved = fs::read_to_string(&out).unwrap_or_default();
        // A set that validates is planned and saved (also with an engine that fails: the
        // plan says it cannot be applied); an invalid one is not.
        let valid = !set.iter().any(|s| s.starts_with("bad"));
        assert_eq!(
            saved.contains("\"format_version\""),
            valid,
            "the saved plan ({stage}, {set:?}): {saved}"
        );
        self.guard
            .check(&format!("the saved plan ({stage}, {set:?})"), &saved);
        self.run_on(&["--color", "always", "plan", "--diff"], set);
    }

    /// `watch` on `set` with `--log-format`, until one reconcile is done, then once more
    /// after the file token changed; /metrics and /healthz read; SIGTERM.
    fn watch(&mut self, set: &[&str], log_format: &str, valid: bool) {
        let port = self.env.port();
        let addr = format!("127.0.0.1:{port}");
        let err = self.env.dir().join(format!(".watch-{log_format}.err"));
        let out = self.env.dir().join(format!(".watch-{log_format}.out"));
        let mut cmd = Command::new(common::bin());
        cmd.current_dir(self.env.dir())
            .arg("watch")
            .args(set)
            .args([
                "--log-format",
                log_format,
                "--listen",
                &addr,
                "--interval",
                "1h",
                "--debounce",
                "200ms",
            ])
            .env("NO_COLOR", "1")
            .env("TMPDIR", &self.tmp)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("out"))
            .stderr(File::create(&err).expect("err"));
        for (k, v) in &self.tokens {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("watch starts");
        let log = || fs::read_to_string(&err).unwrap_or_default();
        let ends = if valid {
            "reconcile done"
        } else {
            "manifests are invalid"
        };
        let done = |n: usize| log().matches(ends).count() >= n;
        assert!(
            wait_until(Duration::from_secs(120), || done(1)),
            "watch ({log_format}, {set:?}) never logged `{ends}`:\n{}",
            log()
        );
        if valid {
            self.set_file_token();
            assert!(
                wait_until(Duration::from_secs(120), || done(2)),
                "watch ({log_format}) did not reconcile after the token file changed:\n{}",
                log()
            );
        }
        for path in ["/metrics", "/healthz"] {
            let (code, body) =
                http_get(&addr, path).unwrap_or_else(|| panic!("nothing answers on {addr}{path}"));
            assert!(code == 200 || code == 503, "{path}: {code}");
            self.guard
                .check(&format!("watch {path} ({log_format}, {set:?})"), &body);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("watch did not stop on SIGTERM:\n{}", log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = log();
        assert!(text.contains("shut down cleanly"), "{text}");
        self.guard
            .check(&format!("the watch log ({log_format}, {set:?})"), &text);
        self.guard.check(
            &format!("the watch output ({log_format}, {set:?})"),
            &fs::read_to_string(&out).unwrap_or_default(),
        );
        self.runs += 1;
    }
}

#[test]
fn secrets_appear_nowhere_but_in_the_containers_token() {
    let env = Env::new("secrets");
    // Short, so the ssh session directory is made here (not in /tmp), and checked after.
    let tmp = PathBuf::from(format!("/tmp/opsec{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).expect("tmp");
    env.set_env("TMPDIR", &tmp.display().to_string());
    let dir = env.dir().to_path_buf();
    let mut c = Case {
        token_file: dir.join("ok/tokens/rac.token"),
        env,
        guard: Guard::new(),
        tokens: BTreeMap::new(),
        tmp: tmp.clone(),
        runs: 0,
    };
    c.set_token("AK_SECRET_PROXY", "of the proxy outpost");
    c.set_token("AK_SECRET_LDAP", "of the ldap outpost");
    c.set_token("AK_SECRET_EDGE", "of the outpost behind https");
    c.set_token("AK_SECRET_NAS", "of the outpost behind ssh");
    c.set_token("AK_SECRET_DOWN", "of the outpost behind a dead http engine");
    c.set_file_token();
    // The SSH key comes from the environment; the TLS client key from a file readable by
    // others (a warning), both read on every run.
    let (ssh_private, ssh_public) = ssh_keygen(&tmp);
    c.env.set_token("SSH_DEPLOY_KEY", &ssh_private);
    c.tokens
        .insert("SSH_DEPLOY_KEY".into(), ssh_private.clone());
    c.guard.key("(ssh)", &ssh_private);
    let (tls_cert, tls_key) = tls_client(&tmp);
    c.guard.key("(tls)", &tls_key);
    write_secret_file(&dir.join("remote/certs/client.pem"), &tls_cert, 0o644);
    write_secret_file(&dir.join("remote/certs/client.key"), &tls_key, 0o644);
    // Not a key at all: the error must not quote it.
    let not_pem = random("not-a-pem-secret-");
    c.guard
        .token("(the content of a file that is not a key)", &not_pem);
    write_secret_file(&dir.join("bad/certs/broken.key"), &not_pem, 0o600);

    // ok/: the local engine only (success paths).
    let env = &c.env;
    let mut m = env.manifest();
    let mut proxy = env.outpost("proxy", "AK_SECRET_PROXY");
    proxy["external_hosts"] = json!(["https://app.example.com"]);
    env.publish(&mut proxy);
    m["outposts"]["Edge Proxy"] = proxy;
    m["outposts"]["Directory"] = env.outpost("ldap", "AK_SECRET_LDAP");
    let mut rac = env.outpost("rac", "AK_FILE_TOKEN_UNUSED");
    rac["token"] = json!({ "file": "tokens/rac.token" });
    m["outposts"]["Remote Desktop"] = rac;
    fs::create_dir_all(dir.join("ok")).expect("ok/");
    env.write_file("ok/outposts.yaml", &to_yaml(&m));

    // remote/: unreachable engines over https (client key), ssh (ssh key) and http.
    let (https_port, ssh_port, http_port) = (closed_port(), closed_port(), closed_port());
    let remote = json!({
        "version": 1,
        "keypairs": {
            "client": {
                "certificate": { "file": "certs/client.pem" },
                "key": { "file": "certs/client.key" },
            },
            "deploy-ssh": { "key": { "env": "SSH_DEPLOY_KEY" } },
        },
        "integrations": {
            "edge": {
                "url": format!("https://127.0.0.1:{https_port}"),
                "tls_authentication": "client",
            },
            "nas": {
                "url": format!("ssh://deploy@127.0.0.1:{ssh_port}"),
                "tls_authentication": "deploy-ssh",
                "ssh": { "host_key": ssh_public },
            },
            "down": { "url": format!("http://127.0.0.1:{http_port}") },
        },
        "outposts": {
            "Behind TLS": { "type": "proxy", "uuid": env.uuid("tls"), "integration": "edge", "token": { "env": "AK_SECRET_EDGE" } },
            "Behind SSH": { "type": "ldap", "uuid": env.uuid("ssh"), "integration": "nas", "token": { "env": "AK_SECRET_NAS" } },
            "Behind HTTP": { "type": "radius", "uuid": env.uuid("http"), "integration": "down", "token": { "env": "AK_SECRET_DOWN" } },
        },
    });
    fs::create_dir_all(dir.join("remote")).expect("remote/");
    env.write_file("remote/outposts.yaml", &to_yaml(&remote));

    // bad/: invalid (unknown key, a key file that is not PEM, a missing variable), with the
    // same secrets referenced.
    let mut bad = env.manifest();
    bad["keypairs"] = json!({ "broken": { "key": { "file": "certs/broken.key" } } });
    bad["integrations"]["nas"] = json!({
        "url": "ssh://deploy@127.0.0.1:22",
        "tls_authentication": "broken",
    });
    bad["outposts"]["Edge Proxy"] = env.outpost("proxy", "AK_SECRET_PROXY");
    bad["outposts"]["Missing Env"] = json!({
        "type": "rac", "integration": "local", "token": { "env": "AK_SECRET_NOT_SET" },
    });
    bad["outposts"]["Token File Missing"] = json!({
        "type": "rac", "integration": "nas", "token": { "file": "tokens/none.token" },
    });
    fs::create_dir_all(dir.join("bad")).expect("bad/");
    env.write_file("bad/outposts.yaml", &to_yaml(&bad));
    // bad2/: fails the schema (which holds the other checks back) next to the secrets.
    let mut bad2 = m.clone();
    bad2["outposts"]["Edge Proxy"]["colour"] = json!("blue");
    fs::create_dir_all(dir.join("bad2/tokens")).expect("bad2/");
    env.write_file("bad2/outposts.yaml", &to_yaml(&bad2));
    fs::copy(&c.token_file, dir.join("bad2/tokens/rac.token")).expect("copy token");

    // 1. Before anything exists: every read-only command, every format, every set.
    c.run(&["schema"]);
    for shell in ["bash", "zsh", "fish"] {
        c.run(&["completions", shell]);
    }
    let (ok, all, bad, bad2): (&[&str], &[&str], &[&str], &[&str]) =
        (&["ok"], &["ok", "remote"], &["bad"], &["bad2"]);
    for set in [ok, all, bad, bad2] {
        c.matrix(set, "before");
    }
    for set in ["bad", "bad2"] {
        let r = c.run(&["apply", "--auto-approve", set]);
        assert_eq!(r.code, 1, "{}", shown(&r));
    }
    // 2. Creates (success), then everything again; the unreachable engines fail their part.
    let r = c.run(&["apply", "--auto-approve", "--diff", "ok"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    let r = c.run(&["apply", "--auto-approve", "ok", "remote"]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    // The error paths are taken: each remote engine was tried (keys read) and failed.
    let r = c.run(&["plan", "ok", "remote"]);
    let text = format!("{}{}", r.stdout, r.stderr);
    for port in [https_port, ssh_port, http_port] {
        assert!(
            r.code == 1 && text.contains(&format!("127.0.0.1:{port}")),
            "the engine on port {port} is not reported:\n{}",
            shown(&r)
        );
    }
    let r = c.run(&["validate", "bad"]);
    assert!(
        r.code == 1
            && r.stderr.contains("broken.key")
            && r.stderr.contains("AK_SECRET_NOT_SET")
            && r.stderr.contains("none.token"),
        "the key that is not PEM, the missing variable or the missing file is not reported:\n{}",
        shown(&r)
    );
    for set in [ok, all] {
        c.matrix(set, "applied");
    }
    // 3. Rotated tokens: recreates whose reasons concern secrets; a saved plan applied.
    c.set_token("AK_SECRET_PROXY", "of the proxy outpost (rotated)");
    c.set_token("AK_SECRET_LDAP", "of the ldap outpost (rotated)");
    c.set_file_token();
    c.matrix(ok, "rotated");
    let r = c.run(&["plan", "--diff", "ok"]);
    assert!(
        r.stdout.contains("env.AUTHENTIK_TOKEN") && r.stdout.contains("(secret"),
        "the rotated tokens are not shown as changed secrets:\n{}",
        shown(&r)
    );
    let saved = dir.join("rotate.json").display().to_string();
    c.run(&["plan", "--out", &saved, "ok"]);
    let r = c.run(&["apply", "--plan", &saved, "--diff", "ok"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    // 4. A stale saved plan: the token changed after the plan was saved.
    let stale = dir.join("stale.json").display().to_string();
    c.set_token("AK_SECRET_LDAP", "of the ldap outpost (rotated twice)");
    c.run(&["plan", "--out", &stale, "ok"]);
    c.set_token("AK_SECRET_LDAP", "of the ldap outpost (rotated thrice)");
    let r = c.run(&["apply", "--plan", &stale, "ok"]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(r.stderr.contains("stale"), "{}", shown(&r));
    for f in [&saved, &stale] {
        let text = fs::read_to_string(f).unwrap_or_default();
        c.guard.check(&format!("the saved plan {f}"), &text);
    }
    let r = c.run(&["apply", "--auto-approve", "ok"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    // 5. A blocked outpost and failed creates next to the others.
    let blocker = c.env.name_of("blocked");
    c.env
        .docker_container("create", &blocker, &["--network", "none", IMAGE_V1]);
    let mut m2 = m.clone();
    let mut blocked = c.env.outpost("rac", "AK_SECRET_PROXY");
    blocked["uuid"] = json!(c.env.uuid("blocked"));
    m2["outposts"]["Blocked"] = blocked;
    let mut net = c.env.outpost("rac", "AK_SECRET_LDAP");
    net["uuid"] = json!(c.env.uuid("no network"));
    net["config"]["docker_network"] = json!(format!("{}missing-net", c.env.prefix));
    m2["outposts"]["No Network"] = net;
    let mut img = c.env.outpost("rac", "AK_SECRET_LDAP");
    img["uuid"] = json!(c.env.uuid("no image"));
    img["pull"] = json!("never");
    img["config"]["container_image"] = json!("outpostctl-test/none:missing");
    m2["outposts"]["No Image"] = img;
    c.env.write_file("ok/outposts.yaml", &to_yaml(&m2));
    c.matrix(ok, "blocked");
    let r = c.run(&["plan", "ok"]);
    assert!(r.stdout.contains("blocked"), "{}", shown(&r));
    let r = c.run(&["apply", "--auto-approve", "--diff", "ok"]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    c.env.write_file("ok/outposts.yaml", &to_yaml(&m));
    let r = c.run(&["apply", "--auto-approve", "ok"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    // 6. Watch: logs in both formats, metrics and health, a token change while it runs.
    c.watch(ok, "text", true);
    c.watch(all, "json", true);
    c.watch(bad, "text", false);

    // 7. The engine: labels of every container, and the outposts' containers whole.
    let ids = docker_ok(&["ps", "-aq"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    let mut labelled = 0;
    for chunk in ids.chunks(100) {
        let mut args = vec!["container", "inspect"];
        args.extend(chunk);
        let out = docker(&args).stdout;
        let list: Vec<Value> = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("docker container inspect is not JSON ({e}):\n{out}"));
        for v in list {
            let i = Inspect(v);
            c.guard.check(
                &format!("the labels of container {}", i.name()),
                &format!("{:?}", i.labels()),
            );
            labelled += 1;
        }
    }
    assert!(
        labelled >= 3,
        "the labels of {labelled} containers were read"
    );
    let mut allowed: Vec<String> = c.tokens.values().cloned().collect();
    allowed.push(
        fs::read_to_string(&c.token_file)
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    let mut outposts = 0;
    for (name, i) in c.env.project_containers() {
        let env_map = i.env();
        let token = env_map
            .get("AUTHENTIK_TOKEN")
            .cloned()
            .unwrap_or_else(|| panic!("{name} has no AUTHENTIK_TOKEN"));
        assert!(
            allowed.contains(&token),
            "{name}: AUTHENTIK_TOKEN is not one of the current tokens"
        );
        // The container's own token in its own env is the one allowed place.
        let mut v = i.0.clone();
        if let Some(list) = v["Config"]["Env"].as_array_mut() {
            list.retain(|e| e.as_str() != Some(&format!("AUTHENTIK_TOKEN={token}")));
        }
        c.guard.check(
            &format!("`docker inspect {name}` (its token left out)"),
            &v.to_string(),
        );
        // The config hash is no plain digest of the token.
        let hash = i.label(LABEL_CONFIG_HASH).unwrap_or_default();
        assert_eq!(hash.len(), 64, "{name}: config hash `{hash}`");
        for d in trivial_digests(&token) {
            assert!(
                !hash.contains(&d[..32]),
                "{name}: the config hash is a plain digest of the token"
            );
        }
        outposts += 1;
    }
    assert_eq!(outposts, 3, "the ok/ outposts run");
    // No key or session directory left behind by any run.
    let mut left = Vec::new();
    for e in fs::read_dir(&tmp).expect("tmp").flatten() {
        left.push(e.file_name().to_string_lossy().into_owned());
    }
    assert!(
        left.is_empty(),
        "runs left files in their TMPDIR {}: {left:?}",
        tmp.display()
    );
    let _ = fs::remove_dir_all(&tmp);
    eprintln!(
        "secret-leak figures: {} runs of outpostctl, {} outputs and files ({} bytes) scanned for {} forbidden strings; labels of {labelled} containers; {outposts} outpost containers inspected whole",
        c.runs,
        c.guard.outputs,
        c.guard.bytes,
        c.guard.forbidden.len()
    );
}
