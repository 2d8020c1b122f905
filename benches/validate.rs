//! `cargo bench --bench validate`: how fast `outpostctl validate` is, on sets of 10, 100 and
//! 1,000 outposts and on every broken manifest of `tests/fixtures/invalid/`.
//!
//! Two figures per case:
//! - in-process: `outpostctl::validate::validate` called from this binary, median of N runs
//!   after one warm-up (the first call also compiles the JSON Schema; shown separately);
//! - process: the release binary `outpostctl validate` as a user runs it (schema compile,
//!   reading, validating and rendering included), median of N runs: wall time, and user + sys
//!   CPU time from `getrusage(RUSAGE_CHILDREN)` (microseconds; `/usr/bin/time` only gives
//!   10 ms steps).
//!
//! Goal: 1,000 outposts in under 50 ms of process time (user + sys); every broken fixture
//! well under 1 s. Figures and the machine are written down in BENCHMARKS.md.
//!
//! Sets use only integrations that validate without files (local, http://, https:// with an
//! inline CA and a client key from the environment, ssh:// with a key from the environment
//! and a pinned host key); tokens come from environment variables this process sets (the
//! spawned binary inherits them).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/remote_bench_support/cpu.rs"]
mod cpu;
use cpu::{RUSAGE_CHILDREN, RUSAGE_SELF, cpu_time};

const INTEGRATIONS: usize = 10;
const OUTPOSTS_PER_FILE: usize = 100;
/// The example's CA and client certificate, and the client's key (validation checks that a
/// TLS client key is its certificate's).
const CA_PEM: &str = include_str!("../examples/homelab/certs/edge-ca.pem");
const CLIENT_PEM: &str = include_str!("../examples/homelab/certs/edge-client.pem");
const CLIENT_KEY: &str = include_str!("../tests/fixtures/example-keys/edge-client-key.pem");
const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0aR2Xl6l2d1lO1wY9pQm0Lk8sZP9y4T3X7yq2aB1cD";
/// A run that takes longer than this is stopped and reported as such.
const TIMEOUT: Duration = Duration::from_secs(120);

fn integration_name(i: usize) -> String {
    match i % INTEGRATIONS {
        0 => "local".into(),
        k @ 1..=3 => format!("proxy-{k}"),
        k @ 4..=6 => format!("edge-{k}"),
        k => format!("nas-{k}"),
    }
}

fn project_yaml() -> String {
    let mut s = String::from(
        "version: 1\nproject: bench\ndefaults:\n  authentik_host: https://auth.example.com\n  \
         authentik_version: \"2026.8.0\"\n  docker_network: traefik\n  docker_labels:\n    \
         com.example.managed: outpostctl\n",
    );
    // In a double-quoted YAML string: its line breaks written as `\n`.
    let (ca, cert) = (CA_PEM.replace('\n', "\\n"), CLIENT_PEM.replace('\n', "\\n"));
    let _ = write!(
        s,
        "keypairs:\n  edge-ca: {{ certificate: {{ value: \"{ca}\" }} }}\n  \
         edge-client:\n    certificate: {{ value: \"{cert}\" }}\n    key: {{ env: BENCH_CLIENT_KEY }}\n  \
         nas-ssh: {{ key: {{ env: BENCH_SSH_KEY }} }}\nintegrations:\n"
    );
    for i in 0..INTEGRATIONS {
        let name = integration_name(i);
        let _ = match i {
            0 => writeln!(s, "  {name}: {{ local: true }}"),
            1..=3 => writeln!(s, "  {name}: {{ url: \"http://socket-proxy-{i}:2375\" }}"),
            4..=6 => writeln!(
                s,
                "  {name}:\n    url: \"https://edge-{i}.example.com:2376\"\n    \
                 tls_verification: edge-ca\n    tls_authentication: edge-client"
            ),
            _ => writeln!(
                s,
                "  {name}:\n    url: \"ssh://deploy@nas-{i}.example.com:2222\"\n    \
                 tls_authentication: nas-ssh\n    ssh:\n      host_key: \"{HOST_KEY}\""
            ),
        };
    }
    s
}

/// One outpost, with unique host ports so that the whole set is valid.
fn outpost_yaml(i: usize) -> String {
    let kind = ["proxy", "ldap", "radius", "rac"][i % 4];
    let mut s = format!(
        "  Outpost {i:04}:\n    type: {kind}\n    integration: {}\n    token: {{ env: AK_BENCH_TOKEN_{i} }}\n",
        integration_name(i)
    );
    if i.is_multiple_of(3) {
        let _ = writeln!(s, "    uuid: 5c5e0e3c-4d4f-4b6c-9a0e-{i:012x}");
    }
    match kind {
        "proxy" => {
            let _ = write!(
                s,
                "    external_hosts:\n      - https://app-{i}.example.com\n      - \
                 https://grafana-{i}.example.com\n    ports:\n      9000/tcp: {}\n      \
                 9443/tcp: \"127.0.0.1:{}\"\n",
                10000 + i,
                20000 + i
            );
        }
        "ldap" => {
            let _ = write!(
                s,
                "    ports:\n      3389/tcp: {}\n      6636/tcp: {}\n",
                30000 + i,
                40000 + i
            );
        }
        "radius" => {
            let _ = write!(s, "    ports:\n      1812/udp: {}\n", 50000 + i);
        }
        _ => {}
    }
    if i.is_multiple_of(5) {
        s.push_str(
            "    config:\n      object_naming_template: \"ak-outpost-%(name)s\"\n      \
             docker_labels: { com.example.team: infra }\n",
        );
    }
    s
}

/// Writes a set of `n` outposts into `dir`.
fn write_set(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("project.yaml"), project_yaml()).expect("write");
    for (f, chunk) in (0..n)
        .collect::<Vec<_>>()
        .chunks(OUTPOSTS_PER_FILE)
        .enumerate()
    {
        let mut s = String::from("version: 1\noutposts:\n");
        for &i in chunk {
            s.push_str(&outpost_yaml(i));
        }
        std::fs::write(dir.join(format!("outposts-{f:03}.yaml")), s).expect("write");
    }
}

fn set_env(max_outposts: usize) {
    // SAFETY: set before any other thread of this process exists.
    unsafe {
        std::env::set_var("BENCH_CLIENT_KEY", CLIENT_KEY);
        std::env::set_var(
            "BENCH_SSH_KEY",
            include_str!("../tests/fixtures/ssh-keys/plain"),
        );
        std::env::set_var("AK_TOKEN", "bench-token");
        std::env::set_var("NO_COLOR", "1");
        std::env::set_var("COLUMNS", "100");
        std::env::remove_var("OUTPOSTCTL_FIXTURE_UNSET");
        for i in 0..max_outposts {
            std::env::set_var(format!("AK_BENCH_TOKEN_{i}"), format!("bench-token-{i}"));
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// In-process figures, in ms: the first call (which also compiles the JSON Schema), then the
/// median of `runs` further calls in wall time and in CPU time (user + sys of this process,
/// which stays honest when other work shares the machine).
struct InProcess {
    first: f64,
    wall: f64,
    cpu: Option<f64>,
    errors: usize,
    outposts: usize,
}

fn in_process(paths: &[PathBuf], runs: usize) -> InProcess {
    let t = Instant::now();
    let first = outpostctl::validate::validate(paths);
    let first_ms = ms(t.elapsed());
    drop(first);
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let c = cpu_time(RUSAGE_SELF);
        let t = Instant::now();
        let o = outpostctl::validate::validate(paths);
        walls.push(ms(t.elapsed()));
        if let Some((b, a)) = c.zip(cpu_time(RUSAGE_SELF)) {
            cpus.push(ms(a.saturating_sub(b)));
        }
        last = Some(o);
    }
    let o = last.expect("at least one run");
    InProcess {
        first: first_ms,
        wall: median(walls),
        cpu: (!cpus.is_empty()).then(|| median(cpus)),
        errors: o.diagnostics.iter().filter(|d| d.is_error()).count(),
        outposts: o.validated.as_ref().map_or(0, |v| v.outpost_count()),
    }
}

/// One process run: (wall ms, user+sys ms when known, exit code). `None` on timeout.
fn process_once(dir: &Path, args: &[&str]) -> Option<(f64, Option<f64>, i32)> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_outpostctl"));
    let mut cmd = Command::new(&bin);
    cmd.current_dir(dir)
        .arg("validate")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let before = cpu_time(RUSAGE_CHILDREN);
    let t = Instant::now();
    let mut child = cmd.spawn().expect("spawn outpostctl");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let wall = ms(t.elapsed());
    let cpu = before
        .zip(cpu_time(RUSAGE_CHILDREN))
        .map(|(b, a)| ms(a.saturating_sub(b)));
    Some((wall, cpu, status.code().unwrap_or(-1)))
}

/// Median wall and user+sys over `runs` process runs; a slow case (over 2 s) runs once.
fn process(dir: &Path, args: &[&str], runs: usize) -> Option<(f64, Option<f64>, i32)> {
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut code = 0;
    for _ in 0..runs {
        let (wall, cpu, c) = process_once(dir, args)?;
        walls.push(wall);
        cpus.extend(cpu);
        code = c;
        if wall > 2000.0 {
            break;
        }
    }
    let cpu = (!cpus.is_empty()).then(|| median(cpus));
    Some((median(walls), cpu, code))
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), fmt_ms)
}

/// Writes `name` of about `bytes` bytes, line by line.
fn write_lines(path: &Path, head: &str, bytes: usize, line: impl Fn(usize) -> String) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    f.write_all(head.as_bytes()).expect("write");
    let mut written = head.len();
    let mut i = 0;
    loop {
        let l = line(i);
        if written + l.len() > bytes {
            break;
        }
        f.write_all(l.as_bytes()).expect("write");
        written += l.len();
        i += 1;
    }
}

/// Stress inputs that are not committed fixtures: (name, working dir, path argument).
fn generated(tmp: &Path) -> Vec<(String, PathBuf, String)> {
    let dir = tmp.join("generated");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let head = "version: 1\nproject: bench\ndefaults:\n  authentik_host: https://auth.example.com\n  \
                authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\noutposts:\n";
    let rac = |key: &'static str| {
        move |i: usize| {
            format!("  Outpost {i}: {{ type: rac, {key}: local, token: {{ env: AK_TOKEN }} }}\n")
        }
    };
    write_lines(
        &dir.join("huge_50mb.yaml"),
        head,
        50 << 20,
        rac("integration"),
    );
    // The largest file the loader accepts (4 MiB), valid: tens of thousands of outposts.
    write_lines(
        &dir.join("max_size_4mib_valid.yaml"),
        head,
        (4 << 20) - 1,
        rac("integration"),
    );
    // Many errors in one file: every outpost misspells `integration` (2 errors each).
    write_lines(
        &dir.join("many_errors_100kib.yaml"),
        head,
        100 << 10,
        rac("integation"),
    );
    write_lines(
        &dir.join("many_errors_400kib.yaml"),
        head,
        400 << 10,
        rac("integation"),
    );
    std::fs::write(
        dir.join("deep_nesting_flow_1mib.yaml"),
        format!("version: 1\nx: {}\n", "[".repeat(1 << 20)),
    )
    .expect("write");
    // Binary garbage: 1 MiB from a fixed xorshift sequence.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("binary_garbage_1mib.yaml"), bytes).expect("write");
    let mut out: Vec<(String, PathBuf, String)> = [
        "huge_50mb",
        "max_size_4mib_valid",
        "many_errors_100kib",
        "many_errors_400kib",
        "deep_nesting_flow_1mib",
        "binary_garbage_1mib",
    ]
    .iter()
    .map(|n| (n.to_string(), dir.clone(), format!("{n}.yaml")))
    .collect();
    out.push((
        "many_errors_400kib (--format json)".into(),
        dir.clone(),
        "many_errors_400kib.yaml --format json".into(),
    ));
    out
}

fn main() {
    // `cargo bench` passes `--bench`; a filter word selects sections: sets, fixtures, stress.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| filter.is_empty() || filter.iter().any(|f| f == s);
    let sizes = [10usize, 100, 1000];
    set_env(*sizes.iter().max().unwrap_or(&0));
    // OUTPOSTCTL_BENCH_DIR=DIR keeps the generated sets and inputs there (for profiling).
    let kept = std::env::var_os("OUTPOSTCTL_BENCH_DIR").map(PathBuf::from);
    let tmp = tempfile::tempdir().expect("temp dir");
    let tmp_path = kept.unwrap_or_else(|| tmp.path().to_path_buf());
    let time_tool = if cpu_time(RUSAGE_CHILDREN).is_some() {
        "getrusage(RUSAGE_CHILDREN)"
    } else {
        "not measured on this platform (wall clock only)"
    };
    println!(
        "outpostctl validate benchmark: {} CPUs, load average {}, binary {}, process user+sys by {time_tool}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "n/a".into()),
        env!("CARGO_BIN_EXE_outpostctl")
    );

    if want("sets") {
        println!();
        println!(
            "| outposts | files | in-process first call (ms) | in-process median wall (ms) | in-process median CPU (ms) | process median wall (ms) | process median user+sys (ms) |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for &n in &sizes {
            let dir = tmp_path.join(format!("set-{n}"));
            write_set(&dir, n);
            let files = std::fs::read_dir(&dir).map_or(0, |d| d.count());
            let runs = if n >= 1000 { 11 } else { 31 };
            let ip = in_process(std::slice::from_ref(&dir), runs);
            let (errors, outposts) = (ip.errors, ip.outposts);
            if errors > 0 || outposts != n {
                let o = outpostctl::validate::validate(std::slice::from_ref(&dir));
                for d in o.diagnostics.iter().take(5) {
                    eprintln!("{}", d.headline());
                }
                panic!(
                    "the generated set of {n} is not valid ({errors} errors, {outposts} outposts)"
                );
            }
            let arg = dir.display().to_string();
            let (wall, cpu, code) = process(&tmp_path, &[&arg], 11).expect("no timeout");
            assert_eq!(code, 0, "outpostctl validate {arg} exit code");
            println!(
                "| {n} | {files} | {} | {} | {} | {} | {} |",
                fmt_ms(ip.first),
                fmt_ms(ip.wall),
                fmt_opt(ip.cpu),
                fmt_ms(wall),
                fmt_opt(cpu)
            );
        }
    }

    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    if want("fixtures") {
        println!();
        println!(
            "| invalid fixture | in-process median CPU (ms) | process median wall (ms) | process median user+sys (ms) | exit |"
        );
        println!("|---|---:|---:|---:|---:|");
        let mut entries: Vec<String> = std::fs::read_dir(&fixtures)
            .expect("fixtures")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        let mut slowest = (String::new(), 0.0f64);
        for e in entries {
            let ip = in_process(&[fixtures.join(&e)], 5);
            let (wall, cpu, code) = process(&fixtures, &[&e], 5).expect("no timeout");
            let cost = cpu.unwrap_or(wall);
            if cost > slowest.1 {
                slowest = (e.clone(), cost);
            }
            println!(
                "| {e} | {} | {} | {} | {code} |",
                fmt_opt(ip.cpu),
                fmt_ms(wall),
                fmt_opt(cpu)
            );
        }
        println!(
            "\nslowest fixture (process user+sys, else wall): {} ({} ms)",
            slowest.0,
            fmt_ms(slowest.1)
        );
    }

    if want("stress") {
        println!();
        println!(
            "| generated input | size | in-process median CPU (ms) | process median wall (ms) | process median user+sys (ms) | exit |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for (name, dir, arg) in generated(&tmp_path) {
            let args: Vec<&str> = arg.split(' ').collect();
            let path = dir.join(args[0]);
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            let ip = in_process(std::slice::from_ref(&path), 3);
            let (wall, cpu, code) = match process(&dir, &args, 3) {
                Some((w, c, code)) => (fmt_ms(w), fmt_opt(c), code.to_string()),
                None => (
                    format!("> {} s (stopped)", TIMEOUT.as_secs()),
                    "n/a".into(),
                    "-".into(),
                ),
            };
            println!(
                "| {name} | {:.1} MiB | {} | {wall} | {cpu} | {code} |",
                size as f64 / 1048576.0,
                fmt_opt(ip.cpu)
            );
        }
    }
}
