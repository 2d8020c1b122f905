//! One writer per engine, end to end: two applies started together never interleave (the
//! second waits, saying for whom); `--lock-timeout` gives up with a message naming the holder
//! and since when, for a real holder and for a lock container made by hand; a holder killed with
//! SIGKILL loses the lock once its lease runs out, while a live holder keeps renewing it; the
//! lock works through the least-privilege socket proxy; the lock container is never planned
//! or pruned.
//!
//! The lock is one container per engine (`outpostctl-lock`) shared by every project, so the
//! tests of this file run one at a time (`SERIAL`), and an apply of another test binary running
//! at the same time on the same engine would show up as a holder. Runs use
//! `OUTPOSTCTL_LOCK_LEASE=3`. Needs `scripts/test-deps.sh`.

mod common;
mod support;

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::*;

const LOCK_NAME: &str = "outpostctl-lock";
const LABEL_LOCK: &str = "outpostctl.lock";
const LABEL_HOLDER: &str = "outpostctl.lock.holder";
const LABEL_SINCE: &str = "outpostctl.lock.since";
const LEASE: &str = "3";
/// The lease of runs whose test is not about the lease running out: long enough that a renewal
/// the engine answers late (busy with another run's creates on 2 cores) never loses a live lock.
const LIVE_LEASE: &str = "8";
/// The user the background applies run as (the holder label says `USER@HOST pid N`).
const USER: &str = "locktester";

fn hostname() -> String {
    fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds as the lock's messages print them (RFC 3339, seconds, UTC).
fn rfc3339(secs: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs as u64)).to_string()
}

/// Seconds since the epoch of a Docker timestamp (`2026-11-22T19:28:05.123456789Z`).
fn epoch(ts: &str) -> f64 {
    humantime::parse_rfc3339(ts)
        .unwrap_or_else(|e| panic!("timestamp `{ts}`: {e}"))
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// When the first of `env`'s containers was created (the engine's clock, Unix seconds): an
/// apply creates nothing before it holds the lock.
fn first_created(env: &Env) -> f64 {
    env.project_containers()
        .values()
        .map(|c| epoch(c.0["Created"].as_str().unwrap_or_default()))
        .fold(f64::INFINITY, f64::min)
}

/// The engine's lock as `docker inspect` shows it.
#[derive(Debug, Clone)]
struct LockInfo {
    id: String,
    holder: String,
    since: i64,
    expires: i64,
}

fn lock_info() -> Option<LockInfo> {
    let c = inspect(LOCK_NAME)?;
    let labels = c.labels();
    Some(LockInfo {
        id: c.id(),
        holder: labels.get(LABEL_HOLDER).cloned().unwrap_or_default(),
        since: labels
            .get(LABEL_SINCE)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        expires: c.0["HostConfig"]["RestartPolicy"]["MaximumRetryCount"]
            .as_i64()
            .unwrap_or(0),
    })
}

/// The holder label of an apply run by this test as process `pid`.
/// Waits until the apply `p` has made a container (it acts), or has ended (bounded).
fn wait_acting(env: &Env, p: &mut Bg) {
    assert!(
        wait_until(Duration::from_secs(60), || !env
            .project_containers()
            .is_empty()
            || p.exited()),
        "no container was created:\n{}",
        p.output()
    );
}

fn holder_of(pid: u32) -> String {
    format!("{USER}@{} pid {pid} (outpostctl apply)", hostname())
}

/// Waits until process `pid` holds the engine's lock (bounded); the lock then.
fn wait_for_holder(pid: u32, bg: &mut Bg) -> LockInfo {
    let want = holder_of(pid);
    let mut found = None;
    let ok = wait_until(Duration::from_secs(90), || {
        found = lock_info().filter(|l| l.holder == want);
        found.is_some() || bg.exited()
    });
    match found {
        Some(l) if ok => l,
        _ => panic!(
            "apply {pid} never held the lock (lock now: {:?}); its output:\n{}",
            lock_info(),
            bg.output()
        ),
    }
}

/// Waits until no run holds the engine's lock (another test binary's apply may), bounded.
fn wait_lock_free() {
    assert!(
        wait_until(Duration::from_secs(120), || inspect(LOCK_NAME).is_none()),
        "the engine stays locked by {:?}",
        lock_info()
    );
}

/// A lock container made by hand, as outpostctl makes it: never started, the holder and since
/// labels, the lease's expiry in the restart policy's retry count. Labelled for the Env's
/// cleanup (which removes by id, never by the shared name).
fn hand_made_lock(env: &Env, holder: &str, since: i64, expires: i64) -> String {
    // Another run may take the lock between the wait and the create: try again.
    for _ in 0..10 {
        wait_lock_free();
        let r = docker(&[
            "create",
            "--name",
            LOCK_NAME,
            "--network",
            "none",
            "--restart",
            &format!("on-failure:{expires}"),
            "--label",
            &format!("{LABEL_LOCK}=engine"),
            "--label",
            &format!("{LABEL_HOLDER}={holder}"),
            "--label",
            &format!("{LABEL_SINCE}={since}"),
            "--label",
            &format!("{LABEL_TEST}={}", env.project),
            IMAGE_V1,
        ]);
        if r.code == 0 {
            return r.stdout.trim().to_string();
        }
        assert!(
            r.stderr.contains("Conflict"),
            "docker create {LOCK_NAME}: {}",
            shown(&r)
        );
    }
    panic!("could not make a lock by hand: the engine is always locked by another run");
}

/// No lock of this test is left: none, or one held by another run (whose holder is not one of
/// `holders`), waited for a little.
fn assert_no_lock_left(holders: &[String]) {
    let ours = || lock_info().is_some_and(|l| holders.contains(&l.holder));
    assert!(
        wait_until(Duration::from_secs(10), || !ours()),
        "a lock is left: {:?}",
        lock_info()
    );
}

/// `n` rac outposts (no network, no ports: light) with one token, written as the manifest.
fn fleet(env: &Env, n: usize, integration: Option<&str>, generation: u32) -> Value {
    let mut m = env.manifest();
    m["defaults"]["docker_network"] = json!("none");
    if let Some(url) = integration {
        m["integrations"] = json!({ "local": { "url": url } });
    }
    for i in 0..n {
        let mut o = env.outpost("rac", "AK_LOCK_TOKEN");
        o["uuid"] = json!(env.uuid(&format!("o{i}")));
        o["config"]["docker_labels"] = json!({ "lock.generation": generation.to_string() });
        m["outposts"][format!("o{i:02}")] = o;
    }
    env.write(&m);
    m
}

/// Makes the test's token (`AK_LOCK_TOKEN`, recorded as a secret); call it before `fleet`.
fn token(env: &Env) -> String {
    env.new_token("AK_LOCK_TOKEN")
}

/// An outpostctl run in the background, output in files.
struct Bg {
    child: Option<Child>,
    pid: u32,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
    code: Option<i32>,
    took: Duration,
}

impl Bg {
    fn spawn(env: &Env, token: &str, args: &[&str]) -> Bg {
        Bg::spawn_leased(env, token, args, LEASE)
    }

    fn spawn_leased(env: &Env, token: &str, args: &[&str], lease: &str) -> Bg {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let out = env.dir().join(format!(".bg-{n}.out"));
        let err = env.dir().join(format!(".bg-{n}.err"));
        let child = Command::new(common::bin())
            .current_dir(env.dir())
            .args(args)
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .env("USER", USER)
            .env("AK_LOCK_TOKEN", token)
            .env("OUTPOSTCTL_LOCK_LEASE", lease)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("output file"))
            .stderr(File::create(&err).expect("error file"))
            .spawn()
            .expect("outpostctl starts");
        Bg {
            pid: child.id(),
            child: Some(child),
            out,
            err,
            started: Instant::now(),
            code: None,
            took: Duration::ZERO,
        }
    }

    fn apply(env: &Env, token: &str, extra: &[&str]) -> Bg {
        Bg::apply_leased(env, token, extra, LEASE)
    }

    fn apply_leased(env: &Env, token: &str, extra: &[&str], lease: &str) -> Bg {
        let mut args = vec!["apply", "--auto-approve"];
        args.extend(extra);
        args.push(".");
        Bg::spawn_leased(env, token, &args, lease)
    }

    fn exited(&mut self) -> bool {
        if self.code.is_some() {
            return true;
        }
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(s))) => {
                self.code = Some(s.code().unwrap_or(-1));
                self.took = self.started.elapsed();
                self.child = None;
                true
            }
            _ => false,
        }
    }

    /// Waits for the exit (bounded); the exit code.
    fn wait(&mut self) -> i32 {
        let start = Instant::now();
        while !self.exited() {
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "outpostctl {} did not exit within 300 s:\n{}",
                self.pid,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.code.unwrap_or(-1)
    }

    fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.child = None;
        self.code = Some(-9);
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!(
            "--- pid {} stdout\n{}--- stderr\n{}---",
            self.pid,
            self.stdout(),
            self.stderr()
        )
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// When a project's containers were created and started: (first created, last started).
fn active_span(env: &Env) -> (f64, f64) {
    let all = env.project_containers();
    assert!(!all.is_empty(), "{}: no containers", env.project);
    let created = all
        .values()
        .map(|c| epoch(c.0["Created"].as_str().unwrap_or_default()))
        .fold(f64::INFINITY, f64::min);
    let started = all
        .values()
        .map(|c| epoch(c.0["State"]["StartedAt"].as_str().unwrap_or_default()))
        .fold(0.0, f64::max);
    (created, started)
}

/// Exactly one running container per outpost of a `fleet` of `n`, the plan empty.
fn assert_fleet_converged(env: &Env, n: usize) {
    env.assert_converged();
    let all = env.project_containers();
    assert_eq!(all.len(), n, "{:?}", all.keys().collect::<Vec<_>>());
    for (name, c) in &all {
        assert!(c.running(), "{name} is {}", c.status());
    }
}

/// Two applies started together, each with changes on its own project: one waits for the
/// other (and says for whom), their container creations do not overlap in time, both
/// succeed, both converge. Twice: creates, then recreates.
#[test]
fn two_applies_started_together_never_interleave() {
    let _serial = serial();
    let (a, b) = (Env::new("lockpara"), Env::new("lockparb"));
    let (ta, tb) = (token(&a), token(&b));
    let n = 16;
    let mut holders = Vec::new();
    for round in 0..2u32 {
        fleet(&a, n, None, round);
        fleet(&b, n, None, round);
        wait_lock_free();
        let mut pa = Bg::apply_leased(&a, &ta, &[], LIVE_LEASE);
        let mut pb = Bg::apply_leased(&b, &tb, &[], LIVE_LEASE);
        let (ca, cb) = (pa.wait(), pb.wait());
        assert_eq!(ca, 0, "round {round}, first apply:\n{}", pa.output());
        assert_eq!(cb, 0, "round {round}, second apply:\n{}", pb.output());
        for p in [&pa, &pb] {
            assert!(
                p.stdout().contains(&format!("apply: {n} done, 0 failed")),
                "round {round}: {}",
                p.output()
            );
            a.assert_no_secret("apply output", &p.output());
            b.assert_no_secret("apply output", &p.output());
        }
        holders.push(holder_of(pa.pid));
        holders.push(holder_of(pb.pid));
        // Timestamps of their actions: one's containers were all created and started before
        // the other's first was created.
        let (sa, sb) = (active_span(&a), active_span(&b));
        let a_first = sa.0 < sb.0;
        let (first, second) = if a_first { (sa, sb) } else { (sb, sa) };
        assert!(
            first.1 < second.0,
            "round {round}: the applies interleaved: one worked from {:.3} to {:.3}, the other from {:.3} to {:.3}",
            first.0,
            first.1,
            second.0,
            second.1
        );
        // The second waited, and said for whom: the first (the lock tests run one at a time,
        // and one engine-test binary at a time).
        let (waiter, holder) = if a_first { (&pb, &pa) } else { (&pa, &pb) };
        let err = waiter.stderr();
        let named = err
            .lines()
            .find_map(|l| l.strip_prefix("integration `local`: waiting for the lock held by "))
            .unwrap_or_else(|| {
                panic!(
                    "round {round}: the second apply did not wait:\n{}\n{}",
                    waiter.output(),
                    holder.output()
                )
            });
        let first_holder = holder_of(holder.pid);
        assert!(
            named.starts_with(&format!("{first_holder} since ")),
            "round {round}: the waiting message names `{named}`, not {first_holder}:\n{}",
            waiter.output()
        );
        // The holder renews its lease while it works: never taken over.
        assert!(
            !err.contains(&format!("taking over the lock of {first_holder}")),
            "round {round}: a live holder's lock was taken over:\n{}",
            waiter.output()
        );
        assert_fleet_converged(&a, n);
        assert_fleet_converged(&b, n);
    }
    assert_no_lock_left(&holders);
}

/// A slow first apply (50 creates) holds the lock; a second with `--lock-timeout 2s` gives up
/// after about 2 s with a message naming the holder (user@host pid N) and since when, and
/// changes nothing; after the first ends, it goes through.
#[test]
fn lock_timeout_names_the_running_holder_and_since_when() {
    let _serial = serial();
    let (a, b) = (Env::new("locktoa"), Env::new("locktob"));
    let (ta, tb) = (token(&a), token(&b));
    fleet(&a, 50, None, 0);
    fleet(&b, 2, None, 0);
    wait_lock_free();
    let mut pa = Bg::apply_leased(&a, &ta, &[], LIVE_LEASE);
    let lock = wait_for_holder(pa.pid, &mut pa);
    let mut pb = Bg::apply(&b, &tb, &["--lock-timeout", "2s"]);
    let code = pb.wait();
    assert_eq!(code, 1, "{}", pb.output());
    let still_held = !pa.exited();
    let want = format!(
        "error: integration local: the engine is locked by {} since {} (lease until ",
        holder_of(pa.pid),
        rfc3339(lock.since)
    );
    assert!(
        pb.stderr().contains(&want)
            && pb
                .stderr()
                .contains("gave up when the run's --lock-timeout of 2s ran out"),
        "the message names the holder and since when ({want}...):\n{}",
        pb.output()
    );
    assert!(
        pb.took >= Duration::from_secs(2) && pb.took < Duration::from_secs(30),
        "gave up after {:?}",
        pb.took
    );
    assert!(
        still_held,
        "the first apply ended before the second gave up"
    );
    assert!(
        b.project_containers().is_empty(),
        "the apply that gave up changed something"
    );
    assert_eq!(pa.wait(), 0, "{}", pa.output());
    assert_fleet_converged(&a, 50);
    let r = b.apply(&["--lock-timeout", "30s"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert_fleet_converged(&b, 2);
}

/// A lock container made by hand, with a lease in the future: `--lock-timeout 2s` gives up,
/// naming its holder and since when; a patient apply waits, says for whom, takes it over when
/// the lease runs out, and removes only that lock.
#[test]
fn hand_made_lock_is_respected_until_its_lease_runs_out() {
    let _serial = serial();
    up_to_three_attempts("the hand-made lock", hand_made_lock_attempt);
}

/// Runs a lock scenario until one attempt sees it through (`None`), at most three times.
/// Another test binary's apply on this engine may take an expired lock over first: then the
/// takeover is not ours to see (the attempt says why, `Some`), and the scenario runs again.
fn up_to_three_attempts(lock: &str, attempt: fn(usize) -> Option<String>) {
    for n in 0..3 {
        match attempt(n) {
            None => return,
            Some(note) => eprintln!("attempt {n}: {note}; again"),
        }
    }
    panic!("another run took {lock} over three times in a row");
}

fn hand_made_lock_attempt(attempt: usize) -> Option<String> {
    let env = Env::new(&format!("lockhand{attempt}"));
    let t = token(&env);
    fleet(&env, 2, None, 0);
    let holder = "ci@runner-7 pid 4242 (outpostctl apply)";
    let since = now_secs() - 3600;
    let expires = now_secs() + 12;
    let id = hand_made_lock(&env, holder, since, expires);
    let start = Instant::now();
    let r = env.apply(&["--lock-timeout", "2s"]);
    let took = start.elapsed();
    assert_eq!(r.code, 1, "{}", shown(&r));
    let want = format!(
        "error: integration local: the engine is locked by {holder} since {} (lease until {}); gave up when the run's --lock-timeout of 2s ran out",
        rfc3339(since),
        rfc3339(expires)
    );
    assert!(r.stderr.contains(&want), "want `{want}`:\n{}", shown(&r));
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    assert!(env.project_containers().is_empty());
    assert_eq!(
        lock_info().map(|l| (l.id, l.expires)),
        Some((id.clone(), expires)),
        "the lock that was waited for is as it was made"
    );

    // A patient apply: waits (once told), then takes the lock over.
    let mut p = Bg::apply(&env, &t, &["--lock-timeout", "60s"]);
    assert_eq!(p.wait(), 0, "{}", p.output());
    let err = p.stderr();
    let waiting = format!(
        "integration `local`: waiting for the lock held by {holder} since {}",
        rfc3339(since)
    );
    let takeover = format!(
        "taking over the lock of {holder} (since {}): its lease ran out at {}",
        rfc3339(since),
        rfc3339(expires)
    );
    assert!(err.contains(&waiting), "want `{waiting}`:\n{}", p.output());
    assert!(inspect(&id).is_none(), "the expired lock is still there");
    if !err.contains(&takeover) {
        return Some(format!(
            "the lock went without `{takeover}`:\n{}",
            p.output()
        ));
    }
    assert_eq!(err.matches("waiting for the lock").count(), 1, "{err}");
    let created = first_created(&env);
    assert!(
        created >= expires as f64,
        "a container was created at {created}, before the lease ran out at {expires}"
    );
    assert_fleet_converged(&env, 2);
    assert_no_lock_left(&[holder.to_string(), holder_of(p.pid)]);
    None
}

/// The holder is killed with SIGKILL while it works: the next apply waits for its lease (3 s)
/// to run out, takes the lock over naming the dead holder, and succeeds; the killed run's
/// project converges with one more apply.
#[test]
fn lock_of_a_killed_holder_is_taken_over_after_its_lease() {
    let _serial = serial();
    up_to_three_attempts("the dead holder's lock", killed_holder_attempt);
}

fn killed_holder_attempt(attempt: usize) -> Option<String> {
    let (a, b) = (
        Env::new(&format!("lockkilla{attempt}")),
        Env::new(&format!("lockkillb{attempt}")),
    );
    let (ta, tb) = (token(&a), token(&b));
    a.set_env("OUTPOSTCTL_LOCK_LEASE", LEASE);
    fleet(&a, 50, None, 0);
    fleet(&b, 2, None, 0);
    wait_lock_free();
    let mut pa = Bg::apply(&a, &ta, &[]);
    let lock = wait_for_holder(pa.pid, &mut pa);
    // Killed while it works: once its first containers are there.
    let working = wait_until(Duration::from_secs(60), || {
        !a.project_containers().is_empty() || pa.exited()
    });
    assert!(
        working && !pa.exited(),
        "the first apply ended too soon:\n{}",
        pa.output()
    );
    pa.kill();
    let killed_at = Instant::now();
    let mut pb = Bg::apply(&b, &tb, &[]);
    assert_eq!(pb.wait(), 0, "{}", pb.output());
    let took = killed_at.elapsed();
    // The dead holder never released its lock: it went because its lease ran out.
    assert!(
        took < Duration::from_secs(30),
        "the next apply needed {took:?} after the holder was killed (lease 3 s)"
    );
    assert!(
        inspect(&lock.id).is_none(),
        "the dead holder's lock is left"
    );
    let takeover = format!(
        "taking over the lock of {} (since {}): its lease ran out at ",
        holder_of(pa.pid),
        rfc3339(lock.since)
    );
    if !pb.stderr().contains(&takeover) {
        return Some(format!(
            "the lock went without `{takeover}`:\n{}",
            pb.output()
        ));
    }
    assert_fleet_converged(&b, 2);
    let created = first_created(&b);
    assert!(
        created >= lock.expires as f64,
        "a container was created at {created}, before the dead holder's lease ran out at {}",
        lock.expires
    );
    // The killed run's work is finished by the next apply.
    let r = a.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert_fleet_converged(&a, 50);
    assert_no_lock_left(&[holder_of(pa.pid), holder_of(pb.pid)]);
    None
}

/// Through haproxy with authentik's permission list only: the lock is taken, renewed (the
/// holder works for longer than its lease and is not taken over) and released; a second apply
/// with `--lock-timeout 2s` gives up naming the holder.
#[test]
fn lock_works_through_the_socket_proxy() {
    let _serial = serial();
    require_socket_proxy();
    let (a, b) = (Env::new("lockproxa"), Env::new("lockproxb"));
    let (ta, tb) = (token(&a), token(&b));
    fleet(&a, 80, Some(SOCKET_PROXY), 0);
    fleet(&b, 2, Some(SOCKET_PROXY), 0);
    wait_lock_free();
    let mut pa = Bg::apply(&a, &ta, &[]);
    let lock = wait_for_holder(pa.pid, &mut pa);
    let held_from = Instant::now();
    let mut impatient = Bg::apply(&b, &tb, &["--lock-timeout", "2s"]);
    assert_eq!(impatient.wait(), 1, "{}", impatient.output());
    assert!(
        impatient.stderr().contains(&format!(
            "the engine is locked by {} since {}",
            holder_of(pa.pid),
            rfc3339(lock.since)
        )),
        "{}",
        impatient.output()
    );
    // A patient one waits for as long as the holder works, longer than the lease.
    // (The holder's first lease ran out 3 s after it took the lock: if it was not renewed, the
    // patient one takes the lock over.)
    let mut patient = Bg::apply(&b, &tb, &["--lock-timeout", "5m"]);
    let patient_came = held_from.elapsed();
    assert_eq!(pa.wait(), 0, "{}", pa.output());
    let held = held_from.elapsed();
    assert_eq!(patient.wait(), 0, "{}", patient.output());
    assert!(
        held > Duration::from_secs(5) && held > patient_came,
        "the holder held the lock only {held:?} (the waiter came after {patient_came:?}): too short to prove the renewal (lease 3 s)"
    );
    assert!(
        patient.stderr().contains(&format!(
            "waiting for the lock held by {}",
            holder_of(pa.pid)
        )) && !patient.stderr().contains("taking over"),
        "a live holder lost its lock through the proxy (renewal denied?):\n{}\n{}",
        patient.output(),
        pa.output()
    );
    let (sa, sb) = (active_span(&a), active_span(&b));
    assert!(sa.1 < sb.0, "interleaved: {sa:?} {sb:?}");
    assert_fleet_converged(&a, 80);
    assert_fleet_converged(&b, 2);
    assert_no_lock_left(&[
        holder_of(pa.pid),
        holder_of(impatient.pid),
        holder_of(patient.pid),
    ]);
}

/// While a lock exists, plans (all formats), status and an apply that prunes an outpost never
/// show or touch the lock container; it stays until its lease runs out and is then taken
/// over, never pruned.
#[test]
fn lock_container_is_never_planned_or_pruned() {
    let _serial = serial();
    let env = Env::new("locknoprune");
    let t = token(&env);
    let m = fleet(&env, 3, None, 0);
    env.apply_ok();
    let mut m2 = m.clone();
    m2["outposts"]
        .as_object_mut()
        .expect("outposts")
        .remove("o02");
    env.write(&m2);
    let holder = "ops@elsewhere pid 7 (outpostctl watch)";
    let expires = now_secs() + 15;
    let id = hand_made_lock(&env, holder, now_secs(), expires);
    let short = &id[..12];
    for format in ["human", "json", "markdown"] {
        let r = env.plan(&["--format", format]);
        assert_eq!(r.code, 0, "{}", shown(&r));
        assert!(
            !r.stdout.contains(LOCK_NAME) && !r.stdout.contains(short),
            "the plan ({format}) shows the lock:\n{}",
            r.stdout
        );
    }
    let plan = env.plan_json();
    let acts = actions(&plan);
    let removals: Vec<&Value> = acts.iter().filter(|a| a["action"] == "remove").collect();
    assert_eq!(removals.len(), 1, "{plan:#}");
    assert_eq!(removals[0]["name"], json!(env.name_of("o02")));
    for format in ["human", "json"] {
        let r = env.run(&["status", "--format", format, "."]);
        assert_eq!(r.code, 0, "status ({format}):\n{}", shown(&r));
        assert!(
            !r.stdout.contains(LOCK_NAME) && !r.stdout.contains(short),
            "status ({format}) shows the lock:\n{}",
            r.stdout
        );
        // The outpost's container apply is about to remove is shown; the lock is not.
        assert!(
            r.stdout.contains(&env.name_of("o02")),
            "status ({format}) does not show the leftover:\n{}",
            r.stdout
        );
    }
    // Neither plan nor status removed or replaced the lock.
    assert_eq!(
        lock_info().map(|l| l.id),
        Some(id.clone()),
        "plan or status removed the lock"
    );
    // The apply that prunes waits for the lock, takes it over after its lease (the only way
    // a lock goes), and removes only the outpost.
    let mut p = Bg::apply(&env, &t, &["--lock-timeout", "60s"]);
    assert_eq!(p.wait(), 0, "{}", p.output());
    assert!(
        p.stderr()
            .contains(&format!("waiting for the lock held by {holder}")),
        "{}",
        p.output()
    );
    let out = p.stdout();
    assert!(
        out.contains(&format!("ok remove {}", env.name_of("o02"))),
        "{}",
        p.output()
    );
    assert!(
        !out.contains(LOCK_NAME) && out.contains("apply: 1 done, 0 failed"),
        "{}",
        p.output()
    );
    // Its wait ended when the lease ran out (taken over by it, or by another run on this
    // engine), never earlier.
    assert!(
        now_secs() >= expires,
        "the lock went before its lease ran out"
    );
    assert_fleet_converged(&env, 2);
    // And the apply's own lock, present during its plan under the lock, is not pruned either:
    // the apply's report names only outposts, and the lock is released at the end.
    assert!(inspect(&id).is_none());
    assert_no_lock_left(&[holder.to_string(), holder_of(p.pid)]);
}

/// A container that merely has the lock's name (made by someone else, running, without the
/// lock labels) is not a lock: outpostctl must not remove it.
#[test]
fn a_foreign_container_named_like_the_lock_is_left_alone() {
    let _serial = serial();
    let env = Env::new("lockforeign");
    token(&env);
    fleet(&env, 1, None, 0);
    wait_lock_free();
    let id = docker_ok(&[
        "run",
        "-d",
        "--name",
        LOCK_NAME,
        "--network",
        "none",
        "--restart",
        "unless-stopped",
        "--label",
        &format!("{LABEL_TEST}={}", env.project),
        IMAGE_V1,
    ]);
    let r = env.apply(&["--lock-timeout", "5s"]);
    let still = inspect(&id);
    // Clean up by id before asserting: the name blocks every apply on the engine.
    docker_ok(&["rm", "-f", &id]);
    assert!(
        still.is_some_and(|c| c.running()),
        "the foreign container `{LOCK_NAME}` was removed by `outpostctl apply`:\n{}",
        shown(&r)
    );
    // The apply fails at once (not after the lock timeout), saying why and what to do.
    assert_ne!(r.code, 0, "{}", shown(&r));
    assert!(
        r.stderr
            .contains(&format!("a container named `{LOCK_NAME}`"))
            && r.stderr.contains("did not create")
            && r.stderr.contains("rename or remove it"),
        "{}",
        shown(&r)
    );
}

/// `apply --auto-approve` applies no reviewed plan: when the engine changes while it waits for
/// the lock (here a container stopped by hand), it applies the plan made under the lock, says
/// so and shows it, instead of refusing; the run converges. (A saved plan is applied as shown
/// or not at all: the next test.)
#[test]
fn auto_approved_apply_applies_the_plan_made_under_the_lock() {
    let _serial = serial();
    up_to_three_attempts("the hand-made lock", fresh_plan_attempt);
}

fn fresh_plan_attempt(attempt: usize) -> Option<String> {
    let env = Env::new(&format!("lockfresh{attempt}"));
    let t = token(&env);
    fleet(&env, 2, None, 0);
    let mut first = Bg::apply(&env, &t, &[]);
    assert_eq!(first.wait(), 0, "{}", first.output());
    // A third outpost: the next apply has a change, so it needs the lock.
    fleet(&env, 3, None, 0);
    let mut p = match changed_while_waiting(
        &env,
        &t,
        &["apply", "--auto-approve", "--lock-timeout", "60s", "."],
    ) {
        Ok(p) => p,
        Err(note) => return Some(note),
    };
    assert_eq!(p.wait(), 0, "{}", p.output());
    let err = p.stderr();
    assert!(
        err.contains("changed while waiting for the lock; applying the plan made under the lock"),
        "{}",
        p.output()
    );
    assert!(
        p.stdout().contains("1 to create, 1 to start"),
        "the plan made under the lock is shown:\n{}",
        p.output()
    );
    assert_fleet_converged(&env, 3);
    None
}

/// Runs outpostctl `args` in the background behind a lock made by hand (its lease runs out in
/// 6 s) and, once it waits, stops the container of outpost `o00` by hand; returns the run
/// once it took the lock over. Err (to try again) when the run did not wait, or when another
/// run took the lock over first.
fn changed_while_waiting(env: &Env, token: &str, args: &[&str]) -> Result<Bg, String> {
    let holder = "ci@runner-9 pid 4343 (outpostctl apply)";
    hand_made_lock(env, holder, now_secs() - 10, now_secs() + 6);
    let mut p = Bg::spawn(env, token, args);
    assert!(
        wait_until(Duration::from_secs(30), || p
            .stderr()
            .contains("waiting for the lock")
            || p.exited()),
        "the run does not wait for the lock:\n{}",
        p.output()
    );
    if p.exited() {
        return Err(format!("the run did not wait:\n{}", p.output()));
    }
    docker_ok(&["stop", "-t", "1", &env.name_of("o00")]);
    p.wait();
    if !p
        .stderr()
        .contains(&format!("taking over the lock of {holder}"))
    {
        return Err(format!("another run took the lock over:\n{}", p.output()));
    }
    Ok(p)
}

/// A saved plan (the one reviewed on a pull request) is applied as shown or not at all: when
/// the engine changes while `apply --plan` waits for the lock (here a container stopped by
/// hand), the run refuses, says nothing was done there, and changes nothing.
#[test]
fn a_saved_plan_whose_engine_changed_while_waiting_for_the_lock_is_refused() {
    let _serial = serial();
    up_to_three_attempts("the hand-made lock", saved_plan_attempt);
}

fn saved_plan_attempt(attempt: usize) -> Option<String> {
    let env = Env::new(&format!("locksaved{attempt}"));
    let t = token(&env);
    fleet(&env, 2, None, 0);
    let mut first = Bg::apply(&env, &t, &[]);
    assert_eq!(first.wait(), 0, "{}", first.output());
    // A third outpost, planned and saved for review.
    fleet(&env, 3, None, 0);
    let mut saving = Bg::spawn(&env, &t, &["plan", "--out", "reviewed.plan", "."]);
    assert_eq!(saving.wait(), 0, "{}", saving.output());
    assert!(
        saving.stdout().contains("1 to create"),
        "{}",
        saving.output()
    );
    let args = [
        "apply",
        "--plan",
        "reviewed.plan",
        "--auto-approve",
        "--lock-timeout",
        "60s",
        ".",
    ];
    let mut p = match changed_while_waiting(&env, &t, &args) {
        Ok(p) => p,
        Err(note) => return Some(note),
    };
    assert_eq!(p.wait(), 1, "{}", p.output());
    let err = p.stderr();
    let stopped = env.name_of("o00");
    assert!(
        err.contains(
            "error: integration local: the containers changed since the plan was made (another writer?); nothing was done there: run again"
        ),
        "{}",
        p.output()
    );
    let names: Vec<String> = env.project_containers().into_keys().collect();
    assert_eq!(
        names,
        [env.name_of("o00"), env.name_of("o01")],
        "the saved plan's create was run"
    );
    assert!(
        !env.container(&stopped).running(),
        "the container stopped by hand was started"
    );
    None
}

/// A run waiting for the lock (held here by hand, with a long lease) stops waiting at once on
/// SIGTERM, as a service manager stops it, instead of after --lock-timeout; it changes
/// nothing and says why.
#[test]
fn sigterm_ends_the_wait_for_the_lock() {
    let _serial = serial();
    let env = Env::new("locksigterm");
    let t = token(&env);
    fleet(&env, 1, None, 0);
    let holder = "ci@runner-9 pid 4243 (outpostctl apply)";
    let id = hand_made_lock(&env, holder, now_secs(), now_secs() + 600);
    let mut p = Bg::apply(&env, &t, &["--lock-timeout", "10m"]);
    let waiting = wait_until(Duration::from_secs(30), || {
        p.stderr().contains("waiting for the lock")
    });
    let asked = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &p.pid.to_string()])
        .status();
    let code = p.wait();
    let took = asked.elapsed();
    let _ = docker(&["rm", "-f", &id]);
    assert!(waiting, "never waited for the lock:\n{}", p.output());
    assert_eq!(code, 1, "{}", p.output());
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to stop after SIGTERM:\n{}",
        p.output()
    );
    assert!(
        p.stderr()
            .contains(&format!("stopped waiting for the lock held by {holder}")),
        "{}",
        p.output()
    );
    assert!(env.project_containers().is_empty(), "something was applied");
}

/// The lock container removed while an apply works (by hand, or by another run that took an
/// expired lease over): the apply learns it at its next renewal, starts no new action, says
/// why, and fails; a second apply finishes the work.
#[test]
fn an_apply_whose_lock_is_taken_away_starts_nothing_more() {
    let _serial = serial();
    let env = Env::new("locklost");
    let t = token(&env);
    fleet(&env, 50, None, 0);
    wait_lock_free();
    let mut p = Bg::apply(&env, &t, &[]);
    let lock = wait_for_holder(p.pid, &mut p);
    // Taken away once the apply acts (a container made), not while it still plans.
    wait_acting(&env, &mut p);
    docker_ok(&["rm", "-f", &lock.id]);
    let code = p.wait();
    let out = format!("{}{}", p.stdout(), p.stderr());
    assert_eq!(code, 1, "{}", p.output());
    assert!(
        out.contains("not started: the engine's lock was lost (its lock container was removed)"),
        "{}",
        p.output()
    );
    assert_stopped_between_actions(&env, &p.stdout(), 50, "the engine's lock was lost");
    let r = env.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert_fleet_converged(&env, 50);
}

/// An apply of `n` creates stopped halfway (`why`), from its report `out`: every outpost is
/// accounted for, each either created (its container there and running: an action in flight
/// finished) or not started for `why` (no container); some of each.
fn assert_stopped_between_actions(env: &Env, out: &str, n: usize, why: &str) {
    let done: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("ok create "))
        .collect();
    let not_started = out
        .lines()
        .filter(|l| l.trim_start().starts_with(&format!("not started: {why}")))
        .count();
    assert_eq!(
        done.len() + not_started,
        n,
        "every outpost is done or not started:\n{out}"
    );
    assert!(
        !done.is_empty() && not_started > 0,
        "stopped before the first or after the last action:\n{out}"
    );
    let all = env.project_containers();
    assert_eq!(
        all.len(),
        done.len(),
        "{:?}\n{out}",
        all.keys().collect::<Vec<_>>()
    );
    for (name, c) in &all {
        assert!(
            done.iter()
                .any(|l| l.starts_with(&format!("ok create {name} "))),
            "{name} exists, not reported done:\n{out}"
        );
        assert!(c.running(), "{name} is {}: left half-made", c.status());
    }
}

/// One SIGINT (Ctrl-C) during an apply: no new action starts, the ones in flight finish
/// (no container is left created and not started), the run says so and fails, its lock is
/// released at once (the next apply does not wait for the lease), and the next apply
/// finishes the work.
#[test]
fn one_sigint_during_an_apply_finishes_what_is_in_flight() {
    let _serial = serial();
    let env = Env::new("locksigint");
    let t = token(&env);
    fleet(&env, 50, None, 0);
    wait_lock_free();
    let mut p = Bg::apply_leased(&env, &t, &[], LIVE_LEASE);
    let lock = wait_for_holder(p.pid, &mut p);
    wait_acting(&env, &mut p);
    let _ = Command::new("kill")
        .args(["-INT", &p.pid.to_string()])
        .status();
    assert_eq!(p.wait(), 1, "{}", p.output());
    assert!(
        p.stderr()
            .contains("interrupted: finishing what is in flight"),
        "{}",
        p.output()
    );
    assert_stopped_between_actions(&env, &p.stdout(), 50, "shutting down");
    assert!(
        inspect(&lock.id).is_none(),
        "the lock was left for its lease to run out"
    );
    let r = env.apply(&["--lock-timeout", "1s"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert_fleet_converged(&env, 50);
}

/// A watch whose first reconcile waits for the engine's lock (held by hand here, for a few
/// seconds) sees an edit made meanwhile: the files it read are watched right after their
/// validation, not once the reconcile ended (the edit was missed until the interval).
#[test]
fn an_edit_made_while_a_watch_waits_for_the_lock_is_applied() {
    let _serial = serial();
    let env = Env::new("lockwatchedit");
    let t = token(&env);
    fleet(&env, 1, None, 1);
    let holder = "ci@runner-7 pid 4242 (outpostctl apply)";
    hand_made_lock(&env, holder, now_secs(), now_secs() + 6);
    let args = [
        "watch",
        "--interval",
        "1h",
        "--debounce",
        "200ms",
        "--lock-timeout",
        "60s",
        ".",
    ];
    let mut w = Bg::spawn(&env, &t, &args);
    let waiting = wait_until(Duration::from_secs(20), || {
        w.stderr().contains("waiting for the lock held by")
    });
    assert!(
        waiting,
        "the watch does not wait for the lock:\n{}",
        w.output()
    );
    fleet(&env, 1, None, 2);
    let generation = |want: &str| {
        let all = env.project_containers();
        all.len() == 1
            && all
                .iter()
                .all(|(_, c)| c.running() && c.label("lock.generation").as_deref() == Some(want))
    };
    let edited = wait_until(Duration::from_secs(60), || generation("2"));
    signal_term(w.pid);
    w.wait();
    assert!(
        edited,
        "the edit made during the first reconcile was not applied:\n{}",
        w.output()
    );
}

fn signal_term(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
