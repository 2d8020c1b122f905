//! Shared helpers of the end-to-end tests (`tests/e2e_*.rs`): they run the real binary
//! against the real Docker engine and check the result with the engine's own `docker inspect`.
//!
//! Every test builds an [`Env`]: its own project (`e2e-<tag>-<pid>`), container name prefix
//! (`t<tag><pid>-`), temp directory of manifests and block of loopback host ports. Dropping the
//! `Env` removes, in small batches, every container labelled with its project, the unmanaged
//! containers, networks and image tags the test made, and frees its ports. A test that cannot
//! reach the engine fails with a message that says to run `scripts/test-deps.sh`.
//!
//! Test files include this module next to `common`: `mod common; mod support;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{self, Run};

pub mod stall;

/// The fake outpost image, version 1 (the same image as `ghcr.io/goauthentik/*:2026.8.0`).
pub const IMAGE_V1: &str = "outpostctl-test/outpost:latest";
/// The fake outpost image, version 2 (another image id).
pub const IMAGE_V2: &str = "outpostctl-test/outpost:v2";
pub const AK_VERSION: &str = "2026.8.0";
pub const AK_HOST: &str = "https://auth.example.com";
/// The test registry (scripts/registry-up.sh).
pub const REGISTRY: &str = "127.0.0.1:5000";
/// The least-privilege socket proxy (scripts/socket-proxy-up.sh).
pub const SOCKET_PROXY: &str = "http://127.0.0.1:2375";
/// The same socket proxy without `info` (docker-socket-proxy's INFO=0).
pub const SOCKET_PROXY_NO_INFO: &str = "http://127.0.0.1:2385";
/// Shell commands for `run_on_terminal_typing` that wait (up to 60 s) until apply's question
/// is on the terminal, so that what is typed next answers it.
pub const WAIT_FOR_THE_QUESTION: &str = "i=0; until grep -qF 'Only `yes` is accepted' \"$TERMINAL_LOG\" 2>/dev/null || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done";
/// Numbers the terminal logs of `run_on_terminal_typing`.
static TERMINALS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub const LABEL_UUID: &str = "io.goauthentik.outpost-uuid";
pub const LABEL_PROJECT: &str = "outpostctl.project";
pub const LABEL_MANAGED_BY: &str = "outpostctl.managed-by";
pub const LABEL_CONFIG_HASH: &str = "outpostctl.config-hash";
pub const LABEL_OUTPOST: &str = "outpostctl.outpost";
/// On containers, networks and image tags a test makes by hand, for cleanup.
pub const LABEL_TEST: &str = "outpostctl-e2e.project";

/// Labels the fake outpost image brings into every container.
pub const IMAGE_LABEL_KEYS: [&str; 4] = [
    "io.outpostctl.test.context-hash",
    "io.outpostctl.test.image",
    "org.opencontainers.image.title",
    "org.opencontainers.image.version",
];

const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
const OUTPOSTCTL_TIMEOUT: Duration = Duration::from_secs(240);
/// Containers removed per `docker rm -f` (Docker 20.10 can deadlock on many at once).
const REMOVE_BATCH: usize = 3;
/// Host ports per test, allocated from 21000..30000 (below the ephemeral range).
const PORTS_PER_TEST: u16 = 10;
const PORT_FIRST: u16 = 21000;
const PORT_BLOCKS: u16 = 900;
const PORT_LOCK_DIR: &str = "/tmp/outpostctl-e2e-ports";
/// Leftovers of earlier test runs older than this are swept at start.
const STALE_AFTER: Duration = Duration::from_secs(3600);

const HOW_TO_FIX: &str = "run `scripts/test-deps.sh` (as root) to start the Docker engine, \
the registry and the socket proxy and to build the test images";

// ---------------------------------------------------------------------------------------------
// Processes with a time limit

/// Runs `cmd` with stdin closed (so never a terminal), killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Run {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot run {shown}: {e}; {HOW_TO_FIX}"),
    };
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{shown} did not finish within {} s (a hung Docker engine? see moby#42545; restart dockerd)",
                    timeout.as_secs()
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(15)),
            Err(e) => panic!("waiting for {shown}: {e}"),
        }
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned(),
    }
}

/// The engine's socket: the path of a `unix://` DOCKER_HOST, else the default.
pub fn engine_socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into())
}

/// The engine's API on `127.0.0.1:port` (plain `http://`), bytes copied both ways, from now
/// until the test process ends: an engine that starts answering where nothing did.
pub fn forward_to_engine(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the engine's new port");
    let socket = engine_socket();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(unix) = std::os::unix::net::UnixStream::connect(&socket) else {
                continue;
            };
            let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
                continue;
            };
            let (mut tcp_w, mut unix_r) = (tcp, unix);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut tcp_r, &mut unix_w);
                let _ = unix_w.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut unix_r, &mut tcp_w);
                let _ = tcp_w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// `docker ARGS` on the engine the tests use (DOCKER_HOST if set, else the unix socket).
pub fn docker(args: &[&str]) -> Run {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    run_with_timeout(cmd, DOCKER_TIMEOUT)
}

/// `docker ARGS` that must succeed; its stdout, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let r = docker(args);
    assert_eq!(
        r.code,
        0,
        "docker {} failed:\n{}{}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    r.stdout.trim().to_string()
}

/// The full text of a run, for assertion messages.
pub fn shown(r: &Run) -> String {
    format!(
        "exit code {}\n--- stdout\n{}--- stderr\n{}",
        r.code, r.stdout, r.stderr
    )
}

// ---------------------------------------------------------------------------------------------
// Engine check and sweep, once per test binary

static READY: OnceLock<Result<(), String>> = OnceLock::new();

/// Fails the test (never skips it) when the engine or the test images are missing.
pub fn require_engine() {
    let r = READY.get_or_init(|| {
        let mut cmd = Command::new("docker");
        cmd.args([
            "version",
            "--format",
            "{{.Server.Version}} {{.Server.APIVersion}}",
        ]);
        let v = run_with_timeout(cmd, Duration::from_secs(30));
        if v.code != 0 {
            return Err(format!(
                "no Docker engine answers (`docker version`: {}); {HOW_TO_FIX}",
                v.stderr.trim()
            ));
        }
        let mut missing = Vec::new();
        let mut images = vec![IMAGE_V1.to_string(), IMAGE_V2.to_string()];
        for t in ["proxy", "ldap", "radius", "rac"] {
            images.push(format!("ghcr.io/goauthentik/{t}:{AK_VERSION}"));
        }
        for i in &images {
            if docker(&["image", "inspect", "--format", "{{.Id}}", i]).code != 0 {
                missing.push(i.clone());
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "the test images {} are missing; {HOW_TO_FIX}",
                missing.join(", ")
            ));
        }
        sweep_stale();
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// The test registry must answer; fails the test otherwise.
pub fn require_registry() {
    require_engine();
    if http_get(REGISTRY, "/v2/").is_none() {
        panic!("the test registry on {REGISTRY} does not answer; {HOW_TO_FIX}");
    }
}

/// The socket proxy must answer; fails the test otherwise.
pub fn require_socket_proxy() {
    require_engine();
    let addr = SOCKET_PROXY.trim_start_matches("http://");
    match http_get(addr, "/_ping") {
        Some((200, _)) => {}
        other => panic!(
            "the socket proxy on {SOCKET_PROXY} does not answer /_ping ({other:?}); {HOW_TO_FIX}"
        ),
    }
}

/// Seconds since an RFC 3339 UTC time as Docker prints it (`2026-11-22T18:18:19.26Z`).
fn created_secs_ago(created: &str) -> Option<u64> {
    let (date, time) = created.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.trim_end_matches('Z').split(':');
    let hh = t.next()?.parse::<i64>().ok()?;
    let mm = t.next()?.parse::<i64>().ok()?;
    let ss = t
        .next()?
        .split(['.', 'Z', '+'])
        .next()?
        .parse::<i64>()
        .ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let then = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_secs(),
    )
    .ok()?;
    u64::try_from(now - then).ok()
}

/// Removes leftovers of earlier test runs (project `e2e-*` or the test label) older than an
/// hour: a crashed run cannot clean up after itself. Fresh ones may belong to a run going on
/// right now and are left alone (their names and ports never collide with this run's).
fn sweep_stale() {
    let mut stale = Vec::new();
    for filter in [
        format!("label={LABEL_PROJECT}"),
        format!("label={LABEL_TEST}"),
    ] {
        let ids = docker(&["ps", "-aq", "--filter", &filter]).stdout;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            continue;
        }
        let mut args = vec!["inspect"];
        args.extend(&ids);
        let Ok(list) = serde_json::from_str::<Vec<Value>>(&docker(&args).stdout) else {
            continue;
        };
        for c in list {
            let labels = &c["Config"]["Labels"];
            let ours = labels[LABEL_PROJECT]
                .as_str()
                .is_some_and(|p| p.starts_with("e2e-"))
                || labels[LABEL_TEST].is_string();
            let old = c["Created"]
                .as_str()
                .and_then(created_secs_ago)
                .is_some_and(|s| s > STALE_AFTER.as_secs());
            if ours
                && old
                && let Some(id) = c["Id"].as_str()
            {
                stale.push(id.to_string());
            }
        }
    }
    stale.sort();
    stale.dedup();
    remove_containers(&stale);
    let nets = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label={LABEL_TEST}"),
    ])
    .stdout;
    for n in nets.split_whitespace() {
        let created = docker(&["network", "inspect", "--format", "{{json .Created}}", n]).stdout;
        let created = created.trim().trim_matches('"');
        if created_secs_ago(created).is_some_and(|s| s > STALE_AFTER.as_secs()) {
            let _ = docker(&["network", "rm", n]);
        }
    }
}

/// `docker rm -f` in small batches; errors are ignored (the container may be gone).
pub fn remove_containers(ids: &[String]) {
    for batch in ids.chunks(REMOVE_BATCH) {
        let mut args = vec!["rm", "-f"];
        args.extend(batch.iter().map(String::as_str));
        let _ = docker(&args);
    }
}

// ---------------------------------------------------------------------------------------------
// Host ports

struct PortBlock {
    base: u16,
    lock: PathBuf,
}

fn pid_alive(pid: &str) -> bool {
    !pid.is_empty() && Path::new("/proc").join(pid.trim()).exists()
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
        && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        && TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// A block of host ports no other test (in this or another process) holds and nothing
/// listens on. Lock files in /tmp make the choice safe across processes.
fn alloc_ports() -> PortBlock {
    let dir = Path::new(PORT_LOCK_DIR);
    let _ = fs::create_dir_all(dir);
    for k in 0..PORT_BLOCKS {
        let base = PORT_FIRST + k * PORTS_PER_TEST;
        let lock = dir.join(base.to_string());
        for _attempt in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    if (base..base + PORTS_PER_TEST).all(port_free) {
                        return PortBlock { base, lock };
                    }
                    let _ = fs::remove_file(&lock);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&lock).unwrap_or_default();
                    let old = fs::metadata(&lock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|a| a > STALE_AFTER);
                    if !holder.is_empty() && (!pid_alive(&holder) || old) {
                        let _ = fs::remove_file(&lock);
                        continue;
                    }
                    break;
                }
                Err(e) => panic!("cannot create {}: {e}", lock.display()),
            }
        }
    }
    panic!("no free block of {PORTS_PER_TEST} host ports in {PORT_FIRST}..30000");
}

// ---------------------------------------------------------------------------------------------
// HTTP, by hand (no client crate in the tree)

/// GET `path` from `addr` (`host:port`): (status, body), or None when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `f` every 200 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests as YAML

/// A JSON value as block-style YAML (scalars double-quoted, which YAML 1.2 reads as JSON
/// does; sequences in flow style).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::from(
        "# yaml-language-server: $schema=../../schemas/outpostctl.schema.json\n# written by an outpostctl e2e test\n",
    );
    match v {
        Value::Object(m) => emit_map(m, 0, &mut out),
        other => out.push_str(&format!("{other}\n")),
    }
    out
}

fn emit_map(m: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for (k, v) in m {
        let key = Value::String(k.clone()).to_string();
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                out.push_str(&format!("{pad}{key}:\n"));
                emit_map(inner, indent + 2, out);
            }
            other => out.push_str(&format!("{pad}{key}: {other}\n")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One container as `docker inspect` shows it

#[derive(Debug, Clone)]
pub struct Inspect(pub Value);

impl Inspect {
    pub fn id(&self) -> String {
        self.0["Id"].as_str().unwrap_or_default().to_string()
    }
    /// The name without Docker's leading `/`.
    pub fn name(&self) -> String {
        self.0["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string()
    }
    /// The image reference the container was created from.
    pub fn image(&self) -> String {
        self.0["Config"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    /// The image id (`sha256:...`).
    pub fn image_id(&self) -> String {
        self.0["Image"].as_str().unwrap_or_default().to_string()
    }
    pub fn status(&self) -> String {
        self.0["State"]["Status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    pub fn running(&self) -> bool {
        self.0["State"]["Running"].as_bool() == Some(true)
    }
    pub fn health(&self) -> Option<String> {
        self.0["State"]["Health"]["Status"]
            .as_str()
            .map(str::to_string)
    }
    pub fn labels(&self) -> BTreeMap<String, String> {
        str_map(&self.0["Config"]["Labels"])
    }
    pub fn label(&self, k: &str) -> Option<String> {
        self.labels().get(k).cloned()
    }
    /// Labels without the ones the test image brings.
    pub fn own_labels(&self) -> BTreeMap<String, String> {
        self.labels()
            .into_iter()
            .filter(|(k, _)| !IMAGE_LABEL_KEYS.contains(&k.as_str()))
            .collect()
    }
    pub fn env(&self) -> BTreeMap<String, String> {
        self.0["Config"]["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
    pub fn network_mode(&self) -> String {
        self.0["HostConfig"]["NetworkMode"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    /// The networks the container is attached to.
    pub fn networks(&self) -> Vec<String> {
        self.0["NetworkSettings"]["Networks"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
    pub fn restart_policy(&self) -> String {
        self.0["HostConfig"]["RestartPolicy"]["Name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    /// Published ports: `"9000/tcp"` -> ["127.0.0.1:21000"].
    pub fn port_bindings(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for (k, v) in self.0["HostConfig"]["PortBindings"]
            .as_object()
            .into_iter()
            .flatten()
        {
            let list = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    format!(
                        "{}:{}",
                        b["HostIp"].as_str().unwrap_or_default(),
                        b["HostPort"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            out.insert(k.clone(), list);
        }
        out
    }
    /// Whether the container publishes host port `port` (on any address).
    pub fn publishes(&self, port: u16) -> bool {
        self.port_bindings()
            .values()
            .flatten()
            .any(|b| b.ends_with(&format!(":{port}")))
    }

    pub fn healthcheck(&self) -> Value {
        self.0["Config"]["Healthcheck"].clone()
    }
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// A copy of outpost container `ours` (removed already) run by hand as `name` that fails its
/// health check: its labels and authentik settings, the test image's switch to fail
/// (`OUTPOSTCTL_TEST_UNHEALTHY`), and a quick health check (`cmd`, every second, one retry)
/// instead of authentik's 100 s. Returns its id once the engine calls it unhealthy.
pub fn unhealthy_copy(name: &str, ours: &Inspect, cmd: &str) -> String {
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.into()];
    for (k, v) in ours.own_labels() {
        args.extend(["--label".into(), format!("{k}={v}")]);
    }
    for (k, v) in ours.env() {
        if k.starts_with("AUTHENTIK_") {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
    }
    args.extend(
        [
            "-e",
            "OUTPOSTCTL_TEST_UNHEALTHY=1",
            "--health-cmd",
            cmd,
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "--restart",
            "unless-stopped",
            &ours.image(),
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = docker_ok(&args);
    assert!(
        wait_until(Duration::from_secs(30), || {
            inspect(&id).and_then(|c| c.health()).as_deref() == Some("unhealthy")
        }),
        "the copy never became unhealthy"
    );
    id
}

/// `docker inspect` of a container, or None when there is none by that name or id.
pub fn inspect(name_or_id: &str) -> Option<Inspect> {
    let r = docker(&["container", "inspect", name_or_id]);
    if r.code != 0 {
        return None;
    }
    let list: Vec<Value> = serde_json::from_str(&r.stdout).expect("docker inspect prints JSON");
    list.into_iter().next().map(Inspect)
}

/// The id of an image, or None when the engine does not have it.
pub fn image_id(image: &str) -> Option<String> {
    let r = docker(&["image", "inspect", "--format", "{{.Id}}", image]);
    (r.code == 0).then(|| r.stdout.trim().to_string())
}

/// The actions of a `plan --format json` output, over all integrations.
pub fn actions(plan: &Value) -> Vec<Value> {
    plan["integrations"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["actions"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The one action of `outpost` in a JSON plan.
pub fn action_of(plan: &Value, outpost: &str) -> Value {
    let found: Vec<Value> = actions(plan)
        .into_iter()
        .filter(|a| a["outpost"] == outpost)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one action for `{outpost}` in the plan:\n{plan:#}"
    );
    found.into_iter().next().unwrap_or_default()
}

/// The reason with `field` of a JSON action, if any.
pub fn reason<'a>(action: &'a Value, field: &str) -> Option<&'a Value> {
    action["reasons"]
        .as_array()?
        .iter()
        .find(|r| r["field"] == field)
}

/// The fields of an action's reasons.
pub fn reason_fields(action: &Value) -> Vec<String> {
    action["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["field"].as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The per-test environment

pub struct Env {
    /// Short test tag (lowercase letters and digits).
    pub tag: String,
    /// `e2e-<tag>-<pid>`, the pid in 7 digits (as the prefix).
    pub project: String,
    /// Container name prefix, `t<tag><pid>-`, the pid in 7 digits (Linux's largest) so that
    /// its length is the same in every run (aligned output is snapshotted); the naming
    /// template is `<prefix>%(name)s`.
    pub prefix: String,
    dir: tempfile::TempDir,
    ports: PortBlock,
    next_port: AtomicU16,
    /// Token environment variables of the outpostctl runs: name -> value.
    tokens: Mutex<BTreeMap<String, String>>,
    /// Every token value this test ever used: none may appear in output or labels.
    secrets: Mutex<BTreeSet<String>>,
    extra_env: Mutex<Vec<(String, String)>>,
    containers: Mutex<Vec<String>>,
    networks: Mutex<Vec<String>>,
    image_tags: Mutex<Vec<String>>,
}

impl Env {
    /// A fresh environment for the test `tag` (short; lowercase letters and digits).
    pub fn new(tag: &str) -> Env {
        assert!(
            !tag.is_empty()
                && tag.len() <= 16
                && tag
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "test tag `{tag}`: up to 16 lowercase letters and digits"
        );
        require_engine();
        let pid = std::process::id();
        let ports = alloc_ports();
        Env {
            tag: tag.to_string(),
            project: format!("e2e-{tag}-{pid:07}"),
            prefix: format!("t{tag}{pid:07}-"),
            dir: tempfile::Builder::new()
                .prefix(&format!("outpostctl-e2e-{tag}-"))
                .tempdir()
                .expect("temp dir"),
            next_port: AtomicU16::new(ports.base),
            ports,
            tokens: Mutex::new(BTreeMap::new()),
            secrets: Mutex::new(BTreeSet::new()),
            extra_env: Mutex::new(Vec::new()),
            containers: Mutex::new(Vec::new()),
            networks: Mutex::new(Vec::new()),
            image_tags: Mutex::new(Vec::new()),
        }
    }

    /// The directory holding this test's manifests.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The next free host port of this test's block.
    pub fn port(&self) -> u16 {
        let p = self.next_port.fetch_add(1, Ordering::SeqCst);
        assert!(
            p < self.ports.base + PORTS_PER_TEST,
            "a test may use {PORTS_PER_TEST} host ports"
        );
        p
    }

    /// A deterministic outpost UUID for `outpost` (32 lowercase hex digits), unique to the
    /// project.
    pub fn uuid(&self, outpost: &str) -> String {
        let h = Sha256::digest(format!("{}/{outpost}", self.project).as_bytes());
        hex::encode(h)[..32].to_string()
    }

    /// A token value that is easy to spot in any output, recorded as a secret.
    pub fn new_token(&self, var: &str) -> String {
        let value = format!(
            "s3cr3t-{}-{}-{}",
            var.to_lowercase(),
            self.project,
            self.secrets.lock().unwrap().len()
        );
        self.set_token(var, &value);
        value
    }

    /// The value of the token environment variable `var` (set by `outpost` or `new_token`).
    pub fn token_of(&self, var: &str) -> String {
        let tokens = self.tokens.lock().unwrap();
        tokens
            .get(var)
            .cloned()
            .unwrap_or_else(|| panic!("no token {var}"))
    }

    /// Sets the token environment variable `var` for every later run.
    pub fn set_token(&self, var: &str, value: &str) {
        self.tokens
            .lock()
            .unwrap()
            .insert(var.to_string(), value.to_string());
        self.secrets.lock().unwrap().insert(value.to_string());
    }

    /// An extra environment variable for every later run of outpostctl.
    pub fn set_env(&self, k: &str, v: &str) {
        self.extra_env
            .lock()
            .unwrap()
            .push((k.to_string(), v.to_string()));
    }

    /// The manifest every test starts from: this project, the local engine, its naming
    /// template, authentik's host and version, and no published ports.
    pub fn manifest(&self) -> Value {
        json!({
            "version": 1,
            "project": self.project,
            "defaults": {
                "authentik_host": AK_HOST,
                "authentik_version": AK_VERSION,
                "object_naming_template": format!("{}%(name)s", self.prefix),
                "docker_map_ports": false,
            },
            "integrations": { "local": { "local": true } },
            "outposts": {},
        })
    }

    /// An outpost of `kind` on the local engine with its own token in the environment
    /// variable `token_var` (set now unless it is set already). Its `uuid` is unique to this
    /// test and `token_var`: a uuid derived from the outpost name would be the same in every
    /// test (and every project) that uses that name.
    pub fn outpost(&self, kind: &str, token_var: &str) -> Value {
        if !self.tokens.lock().unwrap().contains_key(token_var) {
            self.new_token(token_var);
        }
        json!({
            "type": kind,
            "uuid": self.uuid(token_var),
            "integration": "local",
            "token": { "env": token_var },
        })
    }

    /// Publishes every port of the outpost's type on a loopback port of this test; returns
    /// the host ports by container port (`"9000/tcp"`).
    pub fn publish(&self, outpost: &mut Value) -> BTreeMap<String, u16> {
        let keys: &[&str] = match outpost["type"].as_str() {
            Some("proxy") => &["9000/tcp", "9443/tcp"],
            Some("ldap") => &["3389/tcp", "6636/tcp"],
            Some("radius") => &["1812/udp"],
            _ => &[],
        };
        let mut out = BTreeMap::new();
        for k in keys {
            let p = self.port();
            outpost["ports"][*k] = json!(format!("127.0.0.1:{p}"));
            out.insert(k.to_string(), p);
        }
        outpost["config"]["docker_map_ports"] = json!(true);
        out
    }

    /// Writes `m` as `outposts.yaml` in the test's directory (replacing what was there).
    pub fn write(&self, m: &Value) {
        self.write_file("outposts.yaml", &to_yaml(m));
    }

    pub fn write_file(&self, name: &str, text: &str) {
        fs::write(self.dir().join(name), text).expect("write manifest");
    }

    /// outpostctl in the test directory with the tokens and the test's environment set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(common::bin());
        cmd.current_dir(self.dir())
            .args(args)
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100");
        for (k, v) in self.tokens.lock().unwrap().iter() {
            cmd.env(k, v);
        }
        for (k, v) in self.extra_env.lock().unwrap().iter() {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs outpostctl in the test directory with the tokens set; no token value may appear
    /// in what it prints.
    pub fn run(&self, args: &[&str]) -> Run {
        let r = run_with_timeout(self.command(args), OUTPOSTCTL_TIMEOUT);
        self.assert_no_secret(
            &format!("the output of `outpostctl {}`", args.join(" ")),
            &r.stdout,
        );
        self.assert_no_secret(
            &format!("the errors of `outpostctl {}`", args.join(" ")),
            &r.stderr,
        );
        r
    }

    /// Runs outpostctl on a pseudo-terminal (util-linux `script`), typing `answer` and a
    /// newline once it had time to ask.
    pub fn run_on_terminal(&self, args: &[&str], answer: &str) -> Run {
        self.run_on_terminal_to(args, answer, None)
    }

    /// `run_on_terminal`, with stdout sent to the file `stdout` when given (`apply > log`):
    /// stdin and stderr stay on the terminal.
    pub fn run_on_terminal_to(&self, args: &[&str], answer: &str, stdout: Option<&Path>) -> Run {
        self.run_on_terminal_typing(
            args,
            &format!("{WAIT_FOR_THE_QUESTION}; printf '%s\\n' '{answer}'"),
            stdout,
        )
    }

    /// `args` run on a terminal (`script`), whose keys come from the shell commands `typing`
    /// (`{WAIT_FOR_THE_QUESTION}; printf '\\003'` is a Ctrl-C at apply's question). What the
    /// terminal shows is also written to the file `$TERMINAL_LOG`, for `typing` to wait on.
    pub fn run_on_terminal_typing(
        &self,
        args: &[&str],
        typing: &str,
        stdout: Option<&Path>,
    ) -> Run {
        let bin = common::bin();
        let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
        let mut line = std::iter::once(bin.to_string_lossy().into_owned())
            .chain(args.iter().map(|a| a.to_string()))
            .map(|a| quote(&a))
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(file) = stdout {
            line.push_str(&format!(" > {}", quote(&file.to_string_lossy())));
        }
        // `exec`: the shell `script` starts ($SHELL, or dash when unset, as in CI) must not
        // stay in the terminal's process group, or a ^C kills it and `script` exits 130
        // whatever outpostctl does with the signal.
        let log = self.dir().join(format!(
            ".terminal-{}.log",
            TERMINALS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let script = format!(
            "({typing}) | script -qefc \"exec {line}\" {}",
            quote(&log.to_string_lossy())
        );
        let mut cmd = Command::new("sh");
        cmd.current_dir(self.dir())
            .args(["-c", &script])
            .env("TERMINAL_LOG", &log)
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100");
        for (k, v) in self.tokens.lock().unwrap().iter() {
            cmd.env(k, v);
        }
        let r = run_with_timeout(cmd, OUTPOSTCTL_TIMEOUT);
        self.assert_no_secret("the terminal", &r.stdout);
        r
    }

    /// Panics when any token value of this test appears in `text`.
    pub fn assert_no_secret(&self, what: &str, text: &str) {
        for s in self.secrets.lock().unwrap().iter() {
            assert!(
                !text.contains(s.as_str()),
                "a token value leaked into {what}:\n{text}"
            );
        }
    }

    /// `outpostctl plan EXTRA... .`
    pub fn plan(&self, extra: &[&str]) -> Run {
        let mut args = vec!["plan"];
        args.extend(extra);
        args.push(".");
        self.run(&args)
    }

    /// The JSON plan (`plan --format json EXTRA... .`); the run must not fail unless
    /// `allow_error`.
    pub fn plan_json_with(&self, extra: &[&str], allow_error: bool) -> Value {
        let mut args = vec!["--format", "json"];
        args.extend(extra);
        let r = self.plan(&args);
        if !allow_error {
            assert_eq!(r.code, 0, "plan --format json failed:\n{}", shown(&r));
        }
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("plan --format json is not JSON ({e}):\n{}", shown(&r)))
    }

    pub fn plan_json(&self) -> Value {
        self.plan_json_with(&[], false)
    }

    /// `outpostctl apply --auto-approve EXTRA... .`
    pub fn apply(&self, extra: &[&str]) -> Run {
        let mut args = vec!["apply", "--auto-approve"];
        args.extend(extra);
        args.push(".");
        self.run(&args)
    }

    /// An apply that must succeed.
    pub fn apply_ok(&self) -> Run {
        let r = self.apply(&[]);
        assert_eq!(r.code, 0, "apply failed:\n{}", shown(&r));
        assert!(
            r.stdout.contains(" 0 failed") || r.stdout.contains("nothing to apply"),
            "apply reports failures:\n{}",
            shown(&r)
        );
        r
    }

    /// An apply with only blocked outposts (`blocked` of them): nothing done, exit 1.
    pub fn apply_all_blocked(&self, blocked: usize) -> Run {
        let r = self.apply(&[]);
        assert_eq!(r.code, 1, "{}", shown(&r));
        assert!(
            r.stdout
                .contains(&format!("nothing to apply; left alone: {blocked} blocked")),
            "{}",
            shown(&r)
        );
        r
    }

    /// Right after an apply, the plan is empty: `plan --detailed-exitcode` exits 0.
    pub fn assert_converged(&self) {
        let r = self.plan(&["--detailed-exitcode"]);
        assert_eq!(
            r.code,
            0,
            "the plan after apply is not empty:\n{}",
            shown(&r)
        );
        assert!(
            r.stdout.contains("plan: no changes"),
            "the plan after apply is not empty:\n{}",
            shown(&r)
        );
    }

    /// The name of `outpost`'s container under this test's naming template.
    pub fn name_of(&self, slug: &str) -> String {
        format!("{}{slug}", self.prefix)
    }

    /// Waits until this project's containers stop changing: two equal snapshots (ids, names,
    /// states) `step` apart, for at most `limit`. After a killed client (its requests in
    /// flight still complete) or an engine restart (it starts `unless-stopped` containers).
    pub fn settle(&self, step: Duration, limit: Duration) {
        let snap = || {
            let mut lines: Vec<String> = docker(&[
                "ps",
                "-a",
                "--filter",
                &format!("label={LABEL_PROJECT}={}", self.project),
                "--format",
                "{{.ID}} {{.Names}} {{.State}}",
            ])
            .stdout
            .lines()
            .map(str::to_string)
            .collect();
            lines.sort();
            lines
        };
        let start = Instant::now();
        let mut last = snap();
        while start.elapsed() < limit {
            std::thread::sleep(step);
            let now = snap();
            if now == last {
                return;
            }
            last = now;
        }
    }

    /// This test's containers parked by an interrupted recreate (`*-outpostctl-old`).
    pub fn parked(&self) -> Vec<String> {
        docker_ok(&[
            "ps",
            "-a",
            "--filter",
            "name=-outpostctl-old",
            "--format",
            "{{.Names}}",
        ])
        .lines()
        .filter(|n| n.starts_with(&self.prefix))
        .map(str::to_string)
        .collect()
    }

    /// A running container that looks like outpost `slug` of another outpostctl project (its
    /// labels, a name in this test's pattern): outpostctl must leave it alone.
    pub fn other_projects_outpost(&self, slug: &str) -> String {
        let name = self.name_of(&format!("{slug}-other-project"));
        self.docker_container(
            "run",
            &name,
            &[
                "-d",
                "--network",
                "none",
                "--restart",
                "unless-stopped",
                "--label",
                &format!("{LABEL_PROJECT}={}-other", self.project),
                "--label",
                &format!("{LABEL_MANAGED_BY}=outpostctl"),
                "--label",
                &format!("{LABEL_OUTPOST}={slug}"),
                "--label",
                "outpostctl.integration=local",
                "--label",
                &format!(
                    "{LABEL_UUID}={}",
                    self.uuid(&format!("another project's {slug}"))
                ),
                IMAGE_V1,
            ],
        );
        name
    }

    /// `docker inspect` of a container that must exist; checks that no token value is in
    /// its labels.
    pub fn container(&self, name_or_id: &str) -> Inspect {
        let c = inspect(name_or_id)
            .unwrap_or_else(|| panic!("no container `{name_or_id}` on the engine"));
        let labels = format!("{:?}", c.labels());
        self.assert_no_secret(&format!("the labels of `{name_or_id}`"), &labels);
        c
    }

    /// Every container carrying this project's label, by name.
    pub fn project_containers(&self) -> BTreeMap<String, Inspect> {
        let ids = docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={LABEL_PROJECT}={}", self.project),
        ]);
        ids.split_whitespace()
            .filter_map(inspect)
            .map(|c| {
                self.assert_no_secret("labels", &format!("{:?}", c.labels()));
                (c.name(), c)
            })
            .collect()
    }

    /// Remembers a container the test made by hand, for removal at the end.
    pub fn track_container(&self, name_or_id: &str) {
        self.containers.lock().unwrap().push(name_or_id.to_string());
    }

    /// A running container as authentik's Docker integration deploys outpost `uuid`: its uuid
    /// label and restart policy, no label of outpostctl's (removed at the end). Its id.
    pub fn authentik_container(&self, name: &str, uuid: &str, image: &str) -> String {
        self.track_container(name);
        let id = docker_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--label",
            &format!("{LABEL_UUID}={uuid}"),
            "--restart",
            "unless-stopped",
            image,
        ]);
        self.track_container(&id);
        id
    }

    /// `docker run -d` (or `create`) of an unmanaged container, labelled for cleanup.
    pub fn docker_container(&self, verb: &str, name: &str, args: &[&str]) -> String {
        self.track_container(name);
        let label = format!("{LABEL_TEST}={}", self.project);
        let mut all = vec![verb, "--name", name, "--label", &label];
        all.extend(args);
        docker_ok(&all)
    }

    /// Creates a network for this test; removed at the end.
    pub fn network(&self, suffix: &str) -> String {
        self.network_named(&format!("{}{suffix}", self.prefix))
    }

    /// `network`, named `name` exactly (removed at the end all the same).
    pub fn network_named(&self, name: &str) -> String {
        let name = name.to_string();
        self.networks.lock().unwrap().push(name.clone());
        let label = format!("{LABEL_TEST}={}", self.project);
        docker_ok(&["network", "create", "--label", &label, &name]);
        name
    }

    /// Remembers an image tag the test made, for `docker rmi` at the end.
    pub fn track_image_tag(&self, tag: &str) {
        self.image_tags.lock().unwrap().push(tag.to_string());
    }

    /// Waits until `name` is healthy, bounded; its health status at the end.
    pub fn wait_healthy(&self, name: &str, timeout: Duration) -> Option<String> {
        let mut last = None;
        wait_until(timeout, || {
            last = inspect(name).and_then(|c| c.health());
            last.as_deref() == Some("healthy")
        });
        last
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let mut ids: Vec<String> = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={LABEL_PROJECT}={}", self.project),
        ])
        .stdout
        .split_whitespace()
        .map(str::to_string)
        .collect();
        ids.extend(
            docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label={LABEL_TEST}={}", self.project),
            ])
            .stdout
            .split_whitespace()
            .map(str::to_string),
        );
        ids.extend(
            self.containers
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default(),
        );
        ids.sort();
        ids.dedup();
        remove_containers(&ids);
        for n in self.networks.lock().map(|n| n.clone()).unwrap_or_default() {
            let _ = docker(&["network", "rm", &n]);
        }
        for t in self
            .image_tags
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
        {
            let _ = docker(&["rmi", &t]);
        }
        let _ = fs::remove_file(&self.ports.lock);
    }
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness of the fault tests

/// The seed of a fault test: `OUTPOSTCTL_FAULT_SEED` (decimal or 0x-hex), else `default`.
pub fn fault_seed(default: u64) -> u64 {
    match std::env::var("OUTPOSTCTL_FAULT_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("OUTPOSTCTL_FAULT_SEED=`{s}` is not a number"))
        }
        Err(_) => default,
    }
}

/// splitmix64: small, seeded, the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// For the tests of one file that must not run at the same time (they share the engine's one
/// lock): hold the guard for the whole test. A failed test does not poison the others.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
