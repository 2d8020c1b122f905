//! Fault injection against the real engine: applies killed with SIGKILL at random moments,
//! and interrupted recreates rebuilt step by step. After each fault the next apply must
//! converge (exit 0, then an empty plan) and an audit must find exactly one running container
//! per outpost (by uuid label), nothing parked as `*-outpostctl-old`, and every container
//! outpostctl does not own untouched (same id, same state, not restarted).
//!
//! The kill moments come from a seeded generator: the seed is `OUTPOSTCTL_FAULT_SEED` (decimal
//! or 0x-hex) or a fixed default, printed at the start, and every failure message gives the
//! seed, the trial and the kill delay, so `OUTPOSTCTL_FAULT_SEED=<seed> cargo test --test
//! e2e_faults -- --nocapture` replays it. The kill delays are spread over the apply's expected
//! duration, measured on an uninterrupted apply first.
//!
//! The engine has one lock for all projects, so the tests of this file run one at a time
//! (`SERIAL`); the runs use `OUTPOSTCTL_LOCK_LEASE=8` so that a killed run's lock is taken over
//! quickly. Needs `scripts/test-deps.sh`.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Run;
use serde_json::{Value, json};
use support::*;

/// The seed when `OUTPOSTCTL_FAULT_SEED` is not set.
const DEFAULT_SEED: u64 = 20_260_822;
/// Seconds of lease for every run of these tests, so a killed holder's lock expires quickly:
/// 8, not 3, as a renewal that the engine, busy with 50 recreates at once on 2 cores, does not
/// answer within two thirds of 3 s loses the lock of a live run (seen once on CI).
const LEASE: &str = "8";
const TOKEN_VAR: &str = "AK_FAULT_TOKEN";
const GEN_LABEL: &str = "fault.generation";
const LOCK_NAME: &str = "outpostctl-lock";
const LABEL_REPLACES: &str = "outpostctl.replaces";

fn seed() -> u64 {
    fault_seed(DEFAULT_SEED)
}

/// The id of a `docker inspect`ed container's `StartedAt`: changes whenever it (re)starts.
fn started_at(c: &Inspect) -> String {
    c.0["State"]["StartedAt"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `docker inspect` of many containers at once (those gone in between are left out).
fn inspect_many(ids: &[&str]) -> Vec<Inspect> {
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["container", "inspect"];
    args.extend(ids);
    let r = docker(&args);
    serde_json::from_str::<Vec<Value>>(&r.stdout)
        .unwrap_or_default()
        .into_iter()
        .map(Inspect)
        .collect()
}

/// A container outpostctl must never touch, as it was when the test made it.
struct Bystander {
    name: String,
    id: String,
    status: String,
    started: String,
    labels: BTreeMap<String, String>,
}

impl Bystander {
    fn of(name: &str) -> Bystander {
        let c = inspect(name).unwrap_or_else(|| panic!("no container `{name}`"));
        Bystander {
            name: name.to_string(),
            id: c.id(),
            status: c.status(),
            started: started_at(&c),
            labels: c.labels(),
        }
    }

    fn assert_untouched(&self, ctx: &str) {
        let c = inspect(&self.id)
            .unwrap_or_else(|| panic!("{ctx}: the unmanaged container `{}` is gone", self.name));
        assert_eq!(
            c.name(),
            self.name,
            "{ctx}: the unmanaged container {} was renamed",
            self.id
        );
        assert_eq!(
            c.status(),
            self.status,
            "{ctx}: the state of the unmanaged container `{}` changed",
            self.name
        );
        assert_eq!(
            started_at(&c),
            self.started,
            "{ctx}: the unmanaged container `{}` was started or restarted",
            self.name
        );
        assert_eq!(
            c.labels(),
            self.labels,
            "{ctx}: the labels of the unmanaged container `{}` changed",
            self.name
        );
    }
}

/// The duration of one uninterrupted apply, per kind of action (ms), for spreading the kills.
#[derive(Debug, Default, Clone, Copy)]
struct Costs {
    base_ms: u64,
    create_ms: u64,
    recreate_ms: u64,
}

impl Costs {
    fn estimate(&self, summary: &Value) -> u64 {
        let n = |k: &str| summary[k].as_u64().unwrap_or(0);
        self.base_ms
            + (n("create") + n("start") + n("rename") + n("remove")) * self.create_ms
            + n("recreate") * self.recreate_ms
    }
}

/// A set of outposts of one type on the local engine whose manifest the test keeps changing.
struct Fleet {
    env: Env,
    kind: &'static str,
    token: String,
    names: Vec<String>,
    /// Outposts in the manifest now.
    present: BTreeSet<usize>,
    /// The `fault.generation` label of each outpost.
    generation: Vec<u64>,
    /// The `ports:` of each outpost (proxies publish theirs on loopback).
    ports: Vec<Option<Value>>,
    next_generation: u64,
    bystanders: Vec<Bystander>,
    /// Process ids of the applies this test killed.
    killed_pids: BTreeSet<u32>,
    costs: Costs,
}

impl Fleet {
    fn new(tag: &str, kind: &'static str, n: usize) -> Fleet {
        let env = Env::new(tag);
        env.set_env("OUTPOSTCTL_LOCK_LEASE", LEASE);
        let token = env.new_token(TOKEN_VAR);
        let names: Vec<String> = (0..n).map(|i| format!("f{i:02}")).collect();
        let mut ports = Vec::new();
        for _ in 0..n {
            if kind == "proxy" {
                let mut o = json!({ "type": "proxy" });
                env.publish(&mut o);
                ports.push(Some(o["ports"].clone()));
            } else {
                ports.push(None);
            }
        }
        Fleet {
            env,
            kind,
            token,
            present: (0..n).collect(),
            generation: vec![0; n],
            ports,
            names,
            next_generation: 1,
            bystanders: Vec::new(),
            killed_pids: BTreeSet::new(),
            costs: Costs::default(),
        }
    }

    fn container_name(&self, i: usize) -> String {
        self.env.name_of(&self.names[i])
    }

    fn uuid(&self, i: usize) -> String {
        self.env.uuid(&self.names[i])
    }

    fn manifest(&self) -> Value {
        let mut m = self.env.manifest();
        if self.kind != "proxy" {
            // No network namespace to set up: keeps 50 containers light.
            m["defaults"]["docker_network"] = json!("none");
        }
        for &i in &self.present {
            let mut o = json!({
                "type": self.kind,
                "uuid": self.uuid(i),
                "integration": "local",
                "token": { "env": TOKEN_VAR },
                "config": { "docker_labels": { GEN_LABEL: self.generation[i].to_string() } },
            });
            if let Some(p) = &self.ports[i] {
                o["ports"] = p.clone();
                o["config"]["docker_map_ports"] = json!(true);
            }
            m["outposts"][&self.names[i]] = o;
        }
        m
    }

    fn write(&self) {
        self.env.write(&self.manifest());
    }

    /// Containers outpostctl must leave alone: one created, one running, and one that looks
    /// like an outpost of another project (its labels, a name in this test's pattern).
    fn add_bystanders(&mut self) {
        let env = &self.env;
        let created = env.name_of("bystander-created");
        env.docker_container("create", &created, &["--network", "none", IMAGE_V1]);
        let running = env.name_of("bystander-running");
        env.docker_container("run", &running, &["-d", "--network", "none", IMAGE_V1]);
        let other = env.other_projects_outpost("f01");
        self.bystanders = [created, running, other]
            .iter()
            .map(|n| Bystander::of(n))
            .collect();
    }

    /// The apply, started in the background with its output in files.
    fn spawn_apply(&self, trial: usize) -> (Child, PathBuf, PathBuf) {
        let out = self.env.dir().join(format!(".apply-{trial}.out"));
        let err = self.env.dir().join(format!(".apply-{trial}.err"));
        let mut cmd = Command::new(common::bin());
        cmd.current_dir(self.env.dir())
            .args(["apply", "--auto-approve", "."])
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .env(TOKEN_VAR, &self.token)
            .env("OUTPOSTCTL_LOCK_LEASE", LEASE)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("output file"))
            .stderr(File::create(&err).expect("error file"));
        let child = cmd.spawn().expect("outpostctl apply starts");
        (child, out, err)
    }

    /// An apply that must succeed, timed.
    fn apply_timed(&self, ctx: &str) -> (Run, Duration) {
        let start = Instant::now();
        let r = self.env.apply(&[]);
        let took = start.elapsed();
        assert_eq!(r.code, 0, "{ctx}: apply failed:\n{}", shown(&r));
        assert!(
            r.stdout.contains(" 0 failed") || r.stdout.contains("nothing to apply"),
            "{ctx}: apply reports failures:\n{}",
            shown(&r)
        );
        (r, took)
    }

    fn assert_plan_empty(&self, ctx: &str) {
        let r = self.env.plan(&["--detailed-exitcode"]);
        assert_eq!(
            r.code,
            0,
            "{ctx}: the plan after the recovering apply is not empty:\n{}",
            shown(&r)
        );
    }

    /// Changes the manifests so that the next apply has work to do, and says what changed.
    fn mutate(&mut self, rng: &mut Rng) -> String {
        let n = self.names.len();
        let next = self.next_generation;
        self.next_generation += 1;
        let roll = rng.below(100);
        let absent: Vec<usize> = (0..n).filter(|i| !self.present.contains(i)).collect();
        if roll < 45 {
            // Every outpost gets a new label: recreates of all (and creates of those away).
            for g in &mut self.generation {
                *g = next;
            }
            self.present = (0..n).collect();
            format!(
                "new label on all outposts ({} back in the manifests)",
                absent.len()
            )
        } else if roll < 75 {
            let mut changed = 0;
            for i in 0..n {
                if rng.percent(50) {
                    self.generation[i] = next;
                    changed += 1;
                }
            }
            if changed == 0 {
                self.generation[0] = next;
                changed = 1;
            }
            self.present = (0..n).collect();
            format!(
                "new label on {changed} outposts ({} back in the manifests)",
                absent.len()
            )
        } else {
            // Remove a few (pruned), bring back those removed before (created).
            let k = 1 + rng.below((n as u64 / 6).max(1)) as usize;
            let mut present: Vec<usize> = (0..n).collect();
            let mut removed = Vec::new();
            for _ in 0..k.min(n - 1) {
                let j = rng.below(present.len() as u64) as usize;
                removed.push(present.remove(j));
            }
            self.present = present.into_iter().collect();
            format!(
                "{} outposts removed from the manifests, {} back in",
                removed.len(),
                absent.len()
            )
        }
    }

    /// What the engine must hold: uuid -> (container name, generation label).
    fn expected(&self) -> BTreeMap<String, (String, String)> {
        self.present
            .iter()
            .map(|&i| {
                (
                    self.uuid(i),
                    (self.container_name(i), self.generation[i].to_string()),
                )
            })
            .collect()
    }

    /// Waits until the engine has finished what a killed run had asked of it: requests in
    /// flight (a start, a stop) complete after the client is gone. Two equal snapshots of this
    /// project's containers 600 ms apart, bounded.
    fn settle(&self) {
        self.env
            .settle(Duration::from_millis(600), Duration::from_secs(20));
    }

    /// Exactly one running container per outpost, with the right name and label; nothing
    /// parked; bystanders untouched; proxies answer on their host ports.
    fn audit(&self, ctx: &str) {
        let ids = docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={LABEL_PROJECT}={}", self.env.project),
        ]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let all = inspect_many(&ids);
        assert_eq!(
            all.len(),
            ids.len(),
            "{ctx}: containers vanished during the audit"
        );
        let mut by_uuid: BTreeMap<String, Vec<&Inspect>> = BTreeMap::new();
        for c in &all {
            self.env.assert_no_secret(
                &format!("the labels of {}", c.name()),
                &format!("{:?}", c.labels()),
            );
            by_uuid
                .entry(c.label(LABEL_UUID).unwrap_or_default())
                .or_default()
                .push(c);
        }
        let want = self.expected();
        let found: Vec<String> = by_uuid.keys().cloned().collect();
        let wanted: Vec<String> = want.keys().cloned().collect();
        assert_eq!(
            found,
            wanted,
            "{ctx}: the project's containers are not one per outpost in the manifests: {:?}",
            all.iter().map(|c| c.name()).collect::<Vec<_>>()
        );
        for (uuid, cs) in &by_uuid {
            let (name, generation) = &want[uuid];
            let names: Vec<String> = cs.iter().map(|c| c.name()).collect();
            assert_eq!(
                cs.len(),
                1,
                "{ctx}: outpost {name} has {} containers: {names:?}",
                cs.len()
            );
            let c = cs[0];
            assert_eq!(&c.name(), name, "{ctx}: container of {uuid}");
            assert!(
                !c.name().ends_with("-outpostctl-old"),
                "{ctx}: a parked container is left: {}",
                c.name()
            );
            assert!(
                c.running() && c.status() == "running",
                "{ctx}: {name} is {}",
                c.status()
            );
            assert_eq!(
                c.label(GEN_LABEL).as_deref(),
                Some(generation.as_str()),
                "{ctx}: {name} carries an old label"
            );
        }
        let parked = self.env.parked();
        assert!(
            parked.is_empty(),
            "{ctx}: parked containers left: {parked:?}"
        );
        for b in &self.bystanders {
            b.assert_untouched(ctx);
        }
        if self.kind == "proxy" {
            for &i in &self.present {
                let p = self.ports[i].as_ref().expect("proxy ports");
                let host = p["9000/tcp"].as_str().expect("9000/tcp");
                let answered = wait_until(Duration::from_secs(10), || {
                    http_get(host, "/outpost.goauthentik.io/ping").is_some()
                });
                assert!(
                    answered,
                    "{ctx}: nothing answers on {host} ({})",
                    self.container_name(i)
                );
            }
        }
    }

    /// No lock left behind once the last apply ended cleanly. A lock held by a live process
    /// (another test binary's apply) is waited for, bounded.
    fn assert_no_leftover_lock(&self, ctx: &str) {
        let holder_pid = |c: &Inspect| -> Option<u32> {
            c.label("outpostctl.lock.holder")?
                .split(" pid ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        wait_until(Duration::from_secs(10), || inspect(LOCK_NAME).is_none());
        if let Some(c) = inspect(LOCK_NAME) {
            let pid = holder_pid(&c);
            let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            assert!(
                alive && !pid.is_some_and(|p| self.killed_pids.contains(&p)),
                "{ctx}: a lock is left behind by {:?}",
                c.label("outpostctl.lock.holder")
            );
        }
    }
}

/// What the random trials counted.
#[derive(Debug, Default)]
struct Tally {
    trials: usize,
    kills_landed: usize,
    /// Kills that landed after the apply had shown its plan: while it acted.
    kills_while_acting: usize,
    finished_before_kill: usize,
    lock_takeovers: usize,
}

/// Kills an apply at a random moment `kills` times (only kills that land while the apply runs
/// count), each followed by a recovering apply and the audit.
fn kill_trials(f: &mut Fleet, rng: &mut Rng, seed: u64, kills: usize) -> Tally {
    let test_start = Instant::now();
    f.add_bystanders();
    // Calibrate: an uninterrupted create of all, then an uninterrupted recreate of all.
    f.write();
    let (_, t_create) = f.apply_timed(&format!("seed {seed}, calibration (create)"));
    f.audit(&format!("seed {seed}, after the first apply"));
    let next = f.next_generation;
    f.next_generation += 1;
    for g in &mut f.generation {
        *g = next;
    }
    f.write();
    let (_, t_recreate) = f.apply_timed(&format!("seed {seed}, calibration (recreate)"));
    let n = f.names.len() as u64;
    f.costs = Costs {
        base_ms: 400,
        create_ms: (t_create.as_millis() as u64 / n).max(1),
        recreate_ms: (t_recreate.as_millis() as u64 / n).max(1),
    };
    eprintln!(
        "fault seed {seed}: {} {} outposts; uninterrupted create {:?}, recreate {:?}",
        n, f.kind, t_create, t_recreate
    );
    let mut tally = Tally::default();
    let max_trials = kills * 3;
    while tally.kills_landed < kills {
        assert!(
            tally.trials < max_trials,
            "seed {seed}: only {} of {} trials killed an apply in flight",
            tally.kills_landed,
            tally.trials
        );
        let trial = tally.trials;
        tally.trials += 1;
        let change = f.mutate(rng);
        f.write();
        let plan = f.env.plan_json_with(&[], false);
        let est = f.costs.estimate(&plan["summary"]);
        let delay = rng.below(est + 1);
        let (mut child, out, err) = f.spawn_apply(trial);
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(delay));
        let landed = child.try_wait().expect("try_wait").is_none();
        let _ = child.kill();
        let status = child.wait().expect("wait");
        let killed_out = fs::read_to_string(&out).unwrap_or_default();
        let killed_err = fs::read_to_string(&err).unwrap_or_default();
        f.env
            .assert_no_secret("the killed apply's output", &killed_out);
        f.env
            .assert_no_secret("the killed apply's errors", &killed_err);
        if landed {
            tally.kills_landed += 1;
            if killed_out.lines().any(|l| l.starts_with("plan: ")) {
                tally.kills_while_acting += 1;
            }
            f.killed_pids.insert(pid);
        } else {
            tally.finished_before_kill += 1;
        }
        let ctx = format!(
            "seed {seed} (replay: OUTPOSTCTL_FAULT_SEED={seed}), trial {trial}: {change}; SIGKILL after {delay} ms of ~{est} ms ({}, {status})\n--- killed apply stdout\n{killed_out}--- killed apply stderr\n{killed_err}---",
            if landed {
                "killed in flight"
            } else {
                "it had finished"
            }
        );
        eprintln!(
            "trial {trial}: {change}; kill after {delay}/{est} ms: {}",
            if landed {
                "killed in flight"
            } else {
                "had finished"
            }
        );
        if std::env::var_os("OUTPOSTCTL_FAULT_NO_SETTLE").is_none() {
            f.settle();
        }
        let (r, _) = f.apply_timed(&ctx);
        if r.stderr.contains("taking over the lock of") {
            tally.lock_takeovers += 1;
        }
        f.assert_plan_empty(&ctx);
        f.audit(&ctx);
    }
    // A last clean apply with changes: it takes and releases the lock.
    f.mutate(rng);
    f.write();
    f.apply_timed(&format!("seed {seed}, final apply"));
    f.audit(&format!("seed {seed}, final apply"));
    f.assert_no_leftover_lock(&format!("seed {seed}, after the final apply"));
    eprintln!(
        "fault summary ({} {}): seed {seed}, {} trials, {} kills in flight ({} while acting), {} applies finished before their kill, {} lock takeovers, {:?}",
        f.names.len(),
        f.kind,
        tally.trials,
        tally.kills_landed,
        tally.kills_while_acting,
        tally.finished_before_kill,
        tally.lock_takeovers,
        test_start.elapsed()
    );
    // Most kills must hit an apply that acts, not one still planning: else the trials test
    // little more than an interrupted read.
    assert!(
        tally.kills_while_acting * 2 >= kills,
        "seed {seed}: only {} of {} kills landed while the apply acted",
        tally.kills_while_acting,
        tally.kills_landed
    );
    tally
}

/// 50 outposts (rac, no network, no ports): an apply killed with SIGKILL at a random moment,
/// 20 times in a row, with creates, recreates and removals between the kills; after each kill
/// the next apply converges and the audit passes.
#[test]
fn fifty_outposts_survive_applies_killed_at_random_moments() {
    let _serial = serial();
    let seed = seed();
    eprintln!("OUTPOSTCTL_FAULT_SEED={seed}");
    let mut rng = Rng::new(seed);
    let mut f = Fleet::new("faultkill", "rac", 50);
    // Each trial asserts the convergence and the audit; it fails when too few kills land.
    kill_trials(&mut f, &mut rng, seed, 20);
}

/// The same with four proxy outposts publishing host ports on loopback: a recreate must stop
/// the old container (freeing its ports) before the new one starts, whatever was interrupted.
#[test]
fn proxies_with_host_ports_survive_applies_killed_at_random_moments() {
    let _serial = serial();
    let seed = seed();
    eprintln!("OUTPOSTCTL_FAULT_SEED={seed}");
    let mut rng = Rng::new(seed ^ 0x5EED_F900);
    let mut f = Fleet::new("faultport", "proxy", 4);
    kill_trials(&mut f, &mut rng, seed, 10);
}

// ---------------------------------------------------------------------------------------------
// Interrupted recreates, rebuilt step by step: every point of the recreate order (stop old,
// park it as `<name>-outpostctl-old`, create the new one, start it, remove the old one)

/// Where a recreate from generation A to B was interrupted.
#[derive(Debug, Clone, Copy)]
enum CrashPoint {
    /// The old container is stopped, not yet renamed.
    Stopped,
    /// The old container is stopped and parked as `<name>-outpostctl-old`.
    Parked,
    /// ... and the new one is created (never started).
    Created,
    /// ... and the new one runs; the parked old one is still there.
    Started,
}

/// A one-outpost fleet at generation B whose container is inspected, then the state the
/// recreate A -> B leaves at `point`, built with the Docker CLI. The manifests say `now`.
/// Also the ids of the previous container (A) and of the new one (B), once created.
fn interrupted_recreate(
    tag: &str,
    point: CrashPoint,
    now_b: bool,
) -> (Fleet, String, Option<String>) {
    let mut f = Fleet::new(tag, "rac", 1);
    f.add_bystanders();
    let name = f.container_name(0);
    // Generation B: what the new container of the interrupted recreate looks like.
    f.generation[0] = 2;
    f.write();
    f.apply_timed("set-up (B)");
    let b = f.env.container(&name);
    docker_ok(&["rm", "-f", &name]);
    // Generation A runs.
    f.generation[0] = 1;
    f.write();
    f.apply_timed("set-up (A)");
    let old = f.env.container(&name).id();
    docker_ok(&["stop", &old]);
    if matches!(point, CrashPoint::Stopped) {
        return (finish(f, now_b), old, None);
    }
    let parked = format!("{name}-outpostctl-old");
    docker_ok(&["rename", &old, &parked]);
    if matches!(point, CrashPoint::Parked) {
        return (finish(f, now_b), old, None);
    }
    // The new container, as outpostctl creates it: B's settings plus the replaces label.
    let new = create_replacement(&name, &old, &b, &["--network".into(), "none".into()]);
    if matches!(point, CrashPoint::Started) {
        docker_ok(&["start", &new]);
    }
    (finish(f, now_b), old, Some(new))
}

/// The replacement container a recreate creates (not started), built with the Docker CLI: the
/// settings of `like` (labels, env, image, restart policy, and `extra` arguments such as the
/// network or published ports) under `name`, plus the label naming the container it replaces.
fn create_replacement(name: &str, replaces: &str, like: &Inspect, extra: &[String]) -> String {
    let mut args: Vec<String> = vec!["create".into(), "--name".into(), name.into()];
    args.extend(extra.iter().cloned());
    args.extend(["--restart".into(), "unless-stopped".into()]);
    for (k, v) in like.labels() {
        args.extend(["--label".into(), format!("{k}={v}")]);
    }
    args.extend(["--label".into(), format!("{LABEL_REPLACES}={replaces}")]);
    for (k, v) in like.env() {
        args.extend(["--env".into(), format!("{k}={v}")]);
    }
    args.push(like.image());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_ok(&refs)
}

fn finish(mut f: Fleet, now_b: bool) -> Fleet {
    f.generation[0] = if now_b { 2 } else { 1 };
    f.write();
    f
}

fn recovers(tag: &str, point: CrashPoint, now_b: bool) {
    let _serial = serial();
    let (f, old, new) = interrupted_recreate(tag, point, now_b);
    let ctx = format!(
        "recreate interrupted {point:?}, manifests now at {}",
        if now_b {
            "the new generation"
        } else {
            "the old generation (reverted)"
        }
    );
    let plan = f.env.plan(&[]);
    assert!(
        plan.code == 0 && !plan.stdout.contains("blocked"),
        "{ctx}: the plan does not show how to finish:\n{}",
        shown(&plan)
    );
    f.apply_timed(&ctx);
    f.assert_plan_empty(&ctx);
    f.audit(&ctx);
    // Which container is kept: reverted, the previous one is put back (not made anew);
    // forward, the new one once it exists (not a third).
    // (Forward before the new one was created: one is made; the audit checked its settings.)
    let kept = f.env.container(&f.container_name(0)).id();
    match (now_b, new) {
        (false, _) => assert_eq!(kept, old, "{ctx}: the previous container was not kept"),
        (true, Some(new)) => assert_eq!(kept, new, "{ctx}: the new container was not kept"),
        (true, None) => {}
    }
}

#[test]
fn recreate_interrupted_after_stop_is_finished() {
    recovers("crashstop", CrashPoint::Stopped, true);
}

#[test]
fn recreate_interrupted_after_park_is_finished() {
    recovers("crashpark", CrashPoint::Parked, true);
}

#[test]
fn recreate_interrupted_after_create_is_finished() {
    recovers("crashcreate", CrashPoint::Created, true);
}

#[test]
fn recreate_interrupted_after_start_is_finished() {
    recovers("crashstart", CrashPoint::Started, true);
}

#[test]
fn recreate_interrupted_after_stop_then_reverted_is_rolled_back() {
    recovers("revstop", CrashPoint::Stopped, false);
}

#[test]
fn recreate_interrupted_after_park_then_reverted_is_rolled_back() {
    recovers("revpark", CrashPoint::Parked, false);
}

#[test]
fn recreate_interrupted_after_create_then_reverted_is_rolled_back() {
    recovers("revcreate", CrashPoint::Created, false);
}

#[test]
fn recreate_interrupted_after_start_then_reverted_is_rolled_back() {
    recovers("revstart", CrashPoint::Started, false);
}

/// A recreate interrupted after the create, whose new container then cannot start (its host
/// port was taken meanwhile): the apply that finishes it must not remove the parked previous
/// container before the new one runs (it is all the outpost has). It reports the failure and
/// keeps the previous container; once the port is free, the next apply converges.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// The manifests are at the new container's generation: it needs a start.
    Same,
    /// ... and the naming template changed: it needs a rename and a start.
    Renamed,
    /// The manifests moved on to a third generation: it needs a recreate of its own, which
    /// parks it under another name (the parked previous container holds the usual one).
    Changed,
}

fn new_container_cannot_start(tag: &str, then: Then) {
    let _serial = serial();
    let env = Env::new(tag);
    let mut m = env.manifest();
    let mut o = env.outpost("ldap", "AK_D");
    let ports = env.publish(&mut o);
    m["outposts"]["Dir"] = o;
    let generation = |m: &mut Value, v: &str| {
        m["outposts"]["Dir"]["config"]["docker_labels"] = json!({ "com.example.v": v });
    };
    // Generation B, only to learn what its container looks like.
    generation(&mut m, "B");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("dir");
    let b = env.container(&name);
    docker_ok(&["rm", "-f", &name]);
    // Generation A runs; the recreate A -> B is interrupted right after the create.
    generation(&mut m, "A");
    env.write(&m);
    env.apply_ok();
    let old = env.container(&name).id();
    docker_ok(&["stop", &old]);
    let parked = format!("{name}-outpostctl-old");
    docker_ok(&["rename", &old, &parked]);
    let publish: Vec<String> = ports
        .iter()
        .flat_map(|(k, p)| ["--publish".into(), format!("127.0.0.1:{p}:{k}")])
        .collect();
    let new = create_replacement(&name, &old, &b, &publish);

    // Meanwhile something else took one of the outpost's host ports.
    let port = ports["3389/tcp"];
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot take port {port} for the test: {e}"));
    generation(&mut m, if then == Then::Changed { "C" } else { "B" });
    let final_name = if then == Then::Renamed {
        m["defaults"]["object_naming_template"] = json!(format!("{}moved-%(name)s", env.prefix));
        format!("{}moved-dir", env.prefix)
    } else {
        name.clone()
    };
    env.write(&m);
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "the new container cannot start:\n{}", shown(&r));
    assert!(
        inspect(&old).is_some(),
        "the previous container was removed although the new one does not run:\n{}",
        shown(&r)
    );
    assert!(
        shown(&r).contains(&format!("kept `{parked}`")),
        "the failure does not say the previous container is kept:\n{}",
        shown(&r)
    );
    assert!(inspect(&new).is_some_and(|c| !c.running()));
    if then == Then::Changed {
        // Its own recreate failed too, and put it back; the port is still taken, so it says
        // it could not start it again (not that it did).
        assert!(
            shown(&r).contains("the previous container was kept but could not be started again"),
            "{}",
            shown(&r)
        );
    }

    // The port is free again: the next apply starts the new container (or its replacement)
    // and removes the old.
    drop(squatter);
    env.apply_ok();
    let c = env.container(&final_name);
    if then == Then::Changed {
        assert!(
            inspect(&new).is_none(),
            "the replaced container is still there"
        );
        assert_eq!(c.label("com.example.v").as_deref(), Some("C"));
    } else {
        assert_eq!(c.id(), new);
    }
    assert!(c.running(), "{}", c.status());
    assert!(
        inspect(&old).is_none(),
        "the previous container is still there"
    );
    env.assert_converged();
}

#[test]
fn interrupted_recreate_whose_new_container_cannot_start_keeps_the_previous_one() {
    new_container_cannot_start("crashnostart", Then::Same);
}

#[test]
fn interrupted_recreate_whose_renamed_container_cannot_start_keeps_the_previous_one() {
    new_container_cannot_start("crashnostartrn", Then::Renamed);
}

#[test]
fn interrupted_recreate_whose_container_needs_a_recreate_of_its_own_keeps_the_previous_one() {
    new_container_cannot_start("crashnostartrc", Then::Changed);
}

/// `apply --adopt` replacing a container authentik deployed, interrupted after the create (or
/// after the start): authentik's container is stopped and parked as `<name>-outpostctl-old`,
/// and ours names it in `outpostctl.replaces`. It has no project label, so only that label
/// tells a later plan that it was taken over; the next apply (no `--adopt` needed: it was
/// given in the run that made ours) starts ours and then removes it.
fn adopted_recreate_interrupted(tag: &str, started: bool) {
    let _serial = serial();
    let env = Env::new(tag);
    let mut m = env.manifest();
    m["outposts"]["Dir"] = env.outpost("ldap", "AK_D");
    env.write(&m);
    // Only to learn what our container looks like.
    env.apply_ok();
    let name = env.name_of("dir");
    let ours = env.container(&name);
    docker_ok(&["rm", "-f", &name]);
    let uuid = ours
        .label(LABEL_UUID)
        .expect("our container has the uuid label");

    // authentik's container for the outpost: the uuid label, no label of outpostctl's.
    let theirs = env.authentik_container(&name, &uuid, &ours.image());
    // The recreate that adopts it, up to the create of ours.
    docker_ok(&["stop", &theirs]);
    let parked = format!("{name}-outpostctl-old");
    docker_ok(&["rename", &theirs, &parked]);
    let new = create_replacement(&name, &theirs, &ours, &[]);
    if started {
        docker_ok(&["start", &new]);
    }

    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!("- remove    {parked}"))
            && plan
                .stdout
                .contains(&format!("kept {name}, which replaced it (adopted)"))
            && !plan.stdout.contains("blocked"),
        "the plan does not finish the adoption:\n{}",
        shown(&plan)
    );
    let r = env.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert!(
        inspect(&theirs).is_none(),
        "authentik's adopted container is still there:\n{}",
        shown(&r)
    );
    let c = env.container(&name);
    assert_eq!(c.id(), new);
    assert!(c.running(), "{}", c.status());
    env.assert_converged();
}

#[test]
fn adoption_interrupted_after_the_create_is_finished() {
    adopted_recreate_interrupted("crashadoptc", false);
}

#[test]
fn adoption_interrupted_after_the_start_is_finished() {
    adopted_recreate_interrupted("crashadopts", true);
}
