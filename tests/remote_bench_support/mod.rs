//! Helpers shared by the engine benchmarks `benches/plan.rs` and `benches/remote.rs` (included
//! with `#[path]`; not a test target of its own).
//!
//! - processes with a time limit (a hung engine must not hang the benchmark);
//! - the engine check that fails with a clear message when no engine answers;
//! - [`Projects`]: removes every container of the benchmark's projects (by the
//!   `outpostctl.project` label, at most [`REMOVE_BATCH`] at a time) when dropped, also on a
//!   panic, and sweeps leftovers of an interrupted earlier run when created;
//! - manifest sets of `rac` outposts (`docker_map_ports: false`, `docker_network: none`);
//! - timed runs of the release binary (wall; user+sys from `getrusage`, see `cpu.rs`);
//! - [`Daemon`]: a background process killed with its descendants when dropped;
//! - statistics and figures.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Containers removed per `docker rm -f` call (the CLI removes them in parallel; Docker 20.10
/// can deadlock when many running containers are removed at once).
pub const REMOVE_BATCH: usize = 5;
/// Any one docker CLI call may take this long.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// Any one outpostctl run may take this long (an apply of 1,000 outposts included).
pub const OUTPOSTCTL_TIMEOUT: Duration = Duration::from_secs(900);
/// The environment variable holding the benchmark outposts' token.
pub const TOKEN_ENV: &str = "OUTPOSTCTL_BENCH_TOKEN";
pub const LABEL_PROJECT: &str = "outpostctl.project";
pub const HOW_TO_FIX: &str =
    "run `scripts/test-deps.sh` (as root) to start the Docker engine and build the test images";

// ---------------------------------------------------------------------------------------------
// Processes

/// What a finished process said.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
    pub fn shown(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            tail(&self.stdout, 40),
            tail(&self.stderr, 40)
        )
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd` with stdin closed, killing it after `timeout`; `Err` when it cannot start or
/// runs out of time.
pub fn run(cmd: Command, timeout: Duration) -> Result<Out, String> {
    run_timed(cmd, timeout).map(|(out, _, _)| out)
}

/// `run`, with when the process was spawned and when it exited: taken by a thread blocked in
/// `wait` (not by polling), so the exit is timed as it happens.
pub fn run_timed(mut cmd: Command, timeout: Duration) -> Result<(Out, Instant, Instant), String> {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let pid = child.id();
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            String::from_utf8_lossy(&b).into_owned()
        })
    };
    let t_out = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let t_err = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, Instant::now()));
    });
    let (status, exit) = match rx.recv_timeout(timeout) {
        Ok((Ok(status), at)) => (status, at),
        Ok((Err(e), _)) => return Err(format!("waiting for {shown}: {e}")),
        Err(_) => {
            kill_pids(&[pid]);
            return Err(format!(
                "{shown} did not finish within {} s (a hung Docker engine? restart dockerd)",
                timeout.as_secs()
            ));
        }
    };
    let out = Out {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
        wall: exit - start,
    };
    Ok((out, start, exit))
}

/// `docker ARGS` (DOCKER_HOST if set, else the default socket).
pub fn docker(args: &[&str]) -> Result<Out, String> {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    run(cmd, DOCKER_TIMEOUT)
}

/// Prints `msg` and unwinds (so that every guard still cleans up), ending the benchmark with
/// a failure: for errors that make the figures meaningless.
pub fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::panic::resume_unwind(Box::new("benchmark failed"))
}

/// The engine's version and API version, or exit with a message that says what to do.
pub fn require_engine() -> (String, String) {
    let out = docker(&[
        "version",
        "--format",
        "{{.Server.Version}} {{.Server.APIVersion}}",
    ]);
    match out {
        Ok(o) if o.ok() => {
            let mut f = o.stdout.split_whitespace();
            let v = f.next().unwrap_or_default().to_string();
            let api = f.next().unwrap_or_default().to_string();
            (v, api)
        }
        Ok(o) => fail(&format!(
            "the Docker engine is unreachable (`docker version` failed: {}); {HOW_TO_FIX}",
            o.stderr.trim()
        )),
        Err(e) => fail(&format!(
            "the Docker engine is unreachable ({e}); {HOW_TO_FIX}"
        )),
    }
}

/// The image must be on the engine (the benchmarks never pull).
pub fn require_image(image: &str) {
    match docker(&["image", "inspect", "--format", "{{.Id}}", image]) {
        Ok(o) if o.ok() => {}
        _ => fail(&format!(
            "the image `{image}` is not on the engine; {HOW_TO_FIX}"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Containers of the benchmark's projects

/// Ids of the containers labelled with `project`.
pub fn container_ids(project: &str) -> Result<Vec<String>, String> {
    let filter = format!("label={LABEL_PROJECT}={project}");
    let o = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter])?;
    if !o.ok() {
        return Err(format!("docker ps failed: {}", o.stderr.trim()));
    }
    Ok(o.stdout.split_whitespace().map(str::to_string).collect())
}

/// Removes every container of `project`, [`REMOVE_BATCH`] at a time; returns how many.
pub fn remove_project(project: &str) -> Result<usize, String> {
    let mut removed = 0;
    // A second pass catches containers created while the first ran (none expected).
    for _ in 0..2 {
        let ids = container_ids(project)?;
        if ids.is_empty() {
            break;
        }
        for chunk in ids.chunks(REMOVE_BATCH) {
            let mut args = vec!["rm", "-f"];
            args.extend(chunk.iter().map(String::as_str));
            let o = docker(&args)?;
            if !o.ok() && !o.stderr.contains("No such container") {
                return Err(format!("docker rm -f failed: {}", o.stderr.trim()));
            }
            removed += chunk.len();
        }
    }
    Ok(removed)
}

/// The benchmark's projects: leftovers swept at creation, everything removed on drop.
pub struct Projects {
    names: Vec<String>,
}

impl Projects {
    pub fn new(names: &[&str]) -> Projects {
        let p = Projects {
            names: names.iter().map(|s| s.to_string()).collect(),
        };
        for n in &p.names {
            match remove_project(n) {
                Ok(0) => {}
                Ok(k) => eprintln!("removed {k} leftover containers of project {n}"),
                Err(e) => fail(&format!("cannot remove leftovers of project {n}: {e}")),
            }
        }
        p
    }

    pub fn remove(&self, project: &str) -> usize {
        remove_project(project).unwrap_or_else(|e| fail(&e))
    }
}

impl Drop for Projects {
    fn drop(&mut self) {
        for n in &self.names {
            match remove_project(n) {
                Ok(0) => {}
                Ok(k) => eprintln!("cleanup: removed {k} containers of project {n}"),
                Err(e) => eprintln!(
                    "cleanup: could not remove the containers of project {n}: {e}; remove them with `docker ps -aq --filter label={LABEL_PROJECT}={n} | xargs -n{REMOVE_BATCH} docker rm -f`"
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests

/// A manifest set: `project.yaml` (project, defaults, `keypairs_and_integration`) and
/// `outposts.yaml` with `n` rac outposts named `{prefix} {i:04}` on integration `engine`.
pub fn write_set(
    dir: &Path,
    project: &str,
    keypairs_and_integration: &str,
    prefix: &str,
    n: usize,
) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let head = format!(
        "version: 1\nproject: {project}\ndefaults:\n  authentik_host: https://auth.example.com\n  \
         authentik_version: \"2026.8.0\"\n  docker_map_ports: false\n  docker_network: none\n\
         {keypairs_and_integration}"
    );
    std::fs::write(dir.join("project.yaml"), head).expect("write project.yaml");
    let mut s = String::from("version: 1\noutposts:\n");
    for i in 0..n {
        let _ = writeln!(
            s,
            "  {prefix} {i:04}: {{ type: rac, integration: engine, token: {{ env: {TOKEN_ENV} }} }}"
        );
    }
    std::fs::write(dir.join("outposts.yaml"), s).expect("write outposts.yaml");
}

/// The local engine as integration `engine`.
pub const LOCAL_INTEGRATION: &str = "integrations:\n  engine: { local: true }\n";

/// Sets the token and switches colour off; call before any thread exists.
pub fn set_env() {
    // SAFETY: called at the start of main, before any other thread of this process exists.
    unsafe {
        std::env::set_var(TOKEN_ENV, "bench-token-0123456789abcdef");
        std::env::set_var("NO_COLOR", "1");
    }
}

/// Validates `dir` in-process; exits with the diagnostics when it is not valid.
pub fn validated(dir: &Path) -> outpostctl::validate::Validated {
    let o = outpostctl::validate::validate(&[dir.to_path_buf()]);
    match o.validated {
        Some(v) => v,
        None => {
            let shown: Vec<String> = o.diagnostics.iter().map(|d| d.headline()).collect();
            fail(&format!(
                "the generated manifests in {} are not valid:\n{}",
                dir.display(),
                shown.join("\n")
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The release binary

/// `target/release/outpostctl`, built by `cargo bench` (or here, when missing).
pub fn binary() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_outpostctl"));
    if !bin.exists() {
        eprintln!("building {} (cargo build --release)", bin.display());
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--release",
            "--bin",
            "outpostctl",
        ]);
        match run(cmd, Duration::from_secs(1800)) {
            Ok(o) if o.ok() && bin.exists() => {}
            Ok(o) => fail(&format!("cargo build --release failed:\n{}", o.shown())),
            Err(e) => fail(&e),
        }
    }
    bin
}

/// One timed run of the binary: its output (with the wall time), and its user+sys in ms.
pub struct Timed {
    pub out: Out,
    /// user+sys of the run and the processes it waited for (ssh), from this process's
    /// `getrusage(RUSAGE_CHILDREN)` before and after.
    pub cpu_ms: Option<f64>,
}

impl Timed {
    pub fn wall_ms(&self) -> f64 {
        ms(self.out.wall)
    }
}

pub mod cpu;

/// user+sys in ms of every child this process has waited for so far (`getrusage`, in µs).
pub fn children_cpu_ms() -> Option<f64> {
    cpu::cpu_time(cpu::RUSAGE_CHILDREN).map(|d| d.as_secs_f64() * 1000.0)
}

/// How process time is measured, for the report.
pub const PROCESS_TIME: &str = "wall: spawn to exit, measured by the benchmark; user+sys: \
getrusage(RUSAGE_CHILDREN) around each run (the binary and what it waited for, e.g. ssh), in \
microseconds, shown as the mean over the runs";

/// Runs `outpostctl ARGS` with extra environment `envs`, timed.
pub fn outpostctl(args: &[&str], envs: &[(&str, &str)]) -> Timed {
    let bin = binary();
    let mut cmd = Command::new(&bin);
    cmd.args(args).envs(envs.iter().copied());
    let before = children_cpu_ms();
    let out = run(cmd, OUTPOSTCTL_TIMEOUT).unwrap_or_else(|e| fail(&e));
    let cpu_ms = match (before, children_cpu_ms()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Timed { out, cpu_ms }
}

/// `outpostctl apply --auto-approve DIR`; exits with its output when it fails.
pub fn apply(dir: &Path, envs: &[(&str, &str)]) -> Timed {
    let d = dir.display().to_string();
    let t = outpostctl(&["apply", "--auto-approve", &d], envs);
    if !t.out.ok() {
        fail(&format!("outpostctl apply {d} failed:\n{}", t.out.shown()));
    }
    t
}

/// Whether the run had to wait for the engine's lock held by another run (its wall time then
/// measures the other run too).
pub fn waited_for_lock(t: &Timed) -> bool {
    t.out.stderr.contains("waiting for the lock")
}

/// `outpostctl plan --detailed-exitcode DIR` must say "no changes" (exit 0).
pub fn plan_no_change(dir: &Path, envs: &[(&str, &str)]) -> Timed {
    let d = dir.display().to_string();
    let t = outpostctl(&["plan", "--detailed-exitcode", &d], envs);
    if !t.out.ok() {
        fail(&format!(
            "outpostctl plan --detailed-exitcode {d} did not report \"no changes\":\n{}",
            t.out.shown()
        ));
    }
    t
}

/// Runs of the binary summarised: median, min and max wall; mean user+sys.
#[derive(Debug, Clone)]
pub struct ProcessFigures {
    pub runs: usize,
    pub wall: f64,
    pub wall_min: f64,
    pub wall_max: f64,
    pub cpu_mean: Option<f64>,
}

pub fn summarize(runs: &[Timed]) -> ProcessFigures {
    let walls: Vec<f64> = runs.iter().map(Timed::wall_ms).collect();
    let cpus: Vec<f64> = runs.iter().filter_map(|t| t.cpu_ms).collect();
    ProcessFigures {
        runs: runs.len(),
        wall: median(&walls),
        wall_min: walls.iter().copied().fold(f64::INFINITY, f64::min),
        wall_max: walls.iter().copied().fold(0.0, f64::max),
        cpu_mean: (!cpus.is_empty()).then(|| cpus.iter().sum::<f64>() / cpus.len() as f64),
    }
}

// ---------------------------------------------------------------------------------------------
// Daemons

/// (pid, parent pid) of every live process, from /proc.
fn process_table() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = after.split_whitespace();
        if f.next() == Some("Z") {
            continue;
        }
        if let Some(ppid) = f.next().and_then(|p| p.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// Every live descendant of `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let table = process_table();
    let mut found: BTreeSet<u32> = BTreeSet::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, parent) in &table {
            if *parent == p && found.insert(*child) {
                frontier.push(*child);
            }
        }
    }
    found.into_iter().collect()
}

/// Live processes (not this one) whose command line contains `needle`.
pub fn processes_naming(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&raw).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// SIGKILL to each pid, one by one.
pub fn kill_pids(pids: &[u32]) {
    for p in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A background process this benchmark started; killed with its descendants on drop.
pub struct Daemon {
    pub what: String,
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(what: &str, mut cmd: Command, log: &Path) -> Daemon {
        let out = std::fs::File::create(log).expect("daemon log");
        let err = out.try_clone().expect("daemon log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| fail(&format!("cannot start {what}: {e}; {HOW_TO_FIX}")));
        Daemon {
            what: what.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `port` on 127.0.0.1 accepts connections; exits with the log otherwise.
    pub fn wait_listening(&mut self, port: u16, extra_log: Option<&Path>) {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                fail(&format!(
                    "{} exited at start ({st}); its log:\n{}{}",
                    self.what,
                    std::fs::read_to_string(&self.log).unwrap_or_default(),
                    extra_log
                        .and_then(|p| std::fs::read_to_string(p).ok())
                        .unwrap_or_default()
                ));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if start.elapsed() > Duration::from_secs(15) {
                fail(&format!(
                    "{} does not listen on 127.0.0.1:{port} after 15 s; its log:\n{}",
                    self.what,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id();
        kill_pids(&descendants(pid));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP port that is free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&format!("no free loopback port: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Figures

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// Nearest-rank percentile.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), fmt_ms)
}

/// CPU time (user+sys, all cores) the whole machine spent over `f`, from /proc/stat, and the
/// result of `f`: how busy the machine was while it ran (other work included).
pub fn machine_busy<T>(f: impl FnOnce() -> T) -> (T, Option<f64>) {
    fn busy_ticks() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let f: Vec<u64> = s
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        Some(f.iter().take(8).sum::<u64>() - f.get(3)? - f.get(4)?)
    }
    let a = busy_ticks();
    let t = Instant::now();
    let r = f();
    let wall = t.elapsed().as_secs_f64();
    let b = busy_ticks();
    // USER_HZ is 100 on Linux.
    let busy = match (a, b) {
        (Some(a), Some(b)) if wall > 0.0 => Some((b - a) as f64 / 100.0 / wall),
        _ => None,
    };
    (r, busy)
}

/// The machine's load average over the last minute.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
