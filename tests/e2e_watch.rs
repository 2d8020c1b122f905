//! End to end on the real engine: `outpostctl watch` keeps a host converged. It applies at
//! start; an edit saved by rename, a new file, a deleted outpost (and `--no-prune`), an invalid
//! edit and its fix, a changed token file, a symlink swap of the manifest directory and a
//! Kubernetes-style `..data` swap are all seen; containers removed or stopped by hand come
//! back; SIGTERM during a reconcile leaves nothing half-done; `/healthz` and `/metrics`
//! answer; a crash-looping container does not make it loop. No token value ever appears in
//! the log or in `/metrics`. Needs `scripts/test-deps.sh`.
//!
//! The watch benchmarks are ignored tests here (see BENCHMARKS.md, section "watch"):
//!
//! ```sh
//! cargo test --release --test e2e_watch -- --ignored --nocapture --test-threads 1 bench_
//! ```

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use support::*;

/// How long anything the watch should do by itself may take.
const WAIT: Duration = Duration::from_secs(20);
const DEBOUNCE: &str = "200ms";

// ---------------------------------------------------------------------------------------------
// A test case: its Env, the token values the watch needs, its manifest directory

struct Case {
    env: Env,
    /// Token environment variables for the watch process, name -> value.
    tokens: Mutex<BTreeMap<String, String>>,
}

impl Case {
    fn new(tag: &str) -> Case {
        let env = Env::new(tag);
        fs::create_dir_all(env.dir().join("m")).expect("manifest dir");
        Case {
            env,
            tokens: Mutex::new(BTreeMap::new()),
        }
    }

    /// An outpost of `kind` with its own token in the environment variable `var`.
    fn outpost(&self, kind: &str, var: &str) -> Value {
        self.token(var);
        self.env.outpost(kind, var)
    }

    /// The token value of `var`, made (and recorded as a secret) on first use.
    fn token(&self, var: &str) -> String {
        let mut t = self.tokens.lock().unwrap();
        if let Some(v) = t.get(var) {
            return v.clone();
        }
        let v = self.env.new_token(var);
        t.insert(var.to_string(), v.clone());
        v
    }

    /// The default manifest directory, `<tmp>/m`; the watch runs in `<tmp>` on `m`.
    fn mdir(&self) -> PathBuf {
        self.env.dir().join("m")
    }

    /// Saves `m` as `rel` (relative to the test directory) as editors do: a temp file in the
    /// same directory, then a rename over the target.
    fn save(&self, rel: &str, m: &Value) {
        save_text(&self.env.dir().join(rel), &to_yaml(m));
    }

    fn name(&self, slug: &str) -> String {
        self.env.name_of(slug)
    }

    /// `outpostctl watch PATH --interval 1h --debounce 200ms --log-format json --listen ...`
    /// in the test directory, with the tokens in its environment.
    fn watch(&self, path: &str, extra: &[&str]) -> Watch {
        self.watch_with(path, extra, &[])
    }

    /// `watch`, with `vars` added to its environment.
    fn watch_with(&self, path: &str, extra: &[&str], vars: &[(&str, &str)]) -> Watch {
        let port = self.env.port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = self.watch_cmd(path, &addr, extra);
        cmd.envs(vars.iter().copied());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("outpostctl watch starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("piped stderr");
        let out = child.stdout.take().expect("piped stdout");
        let l = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
        });
        let o = Arc::clone(&stdout);
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(out).read_to_string(&mut s);
            o.lock().unwrap().push_str(&s);
        });
        Watch {
            child: Some(child),
            lines,
            stdout,
            addr,
        }
    }

    fn watch_cmd(&self, path: &str, addr: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(common::bin());
        // An hour between the reconciles of the interval, unless `extra` says.
        let interval = if extra.contains(&"--interval") {
            &[][..]
        } else {
            &["--interval", "1h"][..]
        };
        cmd.current_dir(self.env.dir())
            .args(["watch", path])
            .args(interval)
            .args([
                "--debounce",
                DEBOUNCE,
                "--log-format",
                "json",
                "--listen",
                addr,
            ])
            .args(extra)
            .env("NO_COLOR", "1")
            // A watch killed while it holds the engine lock blocks the other tests' watches
            // only this long.
            .env("OUTPOSTCTL_LOCK_LEASE", "6");
        for (k, v) in self.tokens.lock().unwrap().iter() {
            cmd.env(k, v);
        }
        cmd
    }

    /// The running container of `slug`, waited for (bounded); panics with the log if none.
    fn wait_running(&self, w: &Watch, slug: &str, what: &str) -> Inspect {
        let name = self.name(slug);
        let mut last = None;
        let ok = wait_until(WAIT, || {
            last = inspect(&name);
            last.as_ref().is_some_and(Inspect::running)
        });
        assert!(
            ok,
            "{what}: `{name}` is not running ({:?}); watch log:\n{}",
            last.map(|c| c.status()),
            w.text()
        );
        self.env.container(&name)
    }

    /// Waits until `slug`'s container runs and satisfies `f`.
    fn wait_container(
        &self,
        w: &Watch,
        slug: &str,
        what: &str,
        mut f: impl FnMut(&Inspect) -> bool,
    ) -> Inspect {
        let name = self.name(slug);
        let mut last = None;
        let ok = wait_until(WAIT, || {
            last = inspect(&name);
            last.as_ref().is_some_and(|c| c.running() && f(c))
        });
        assert!(
            ok,
            "{what}: `{name}` is not as expected (last seen: {:?}); watch log:\n{}",
            last.map(|c| (c.id(), c.status(), c.own_labels())),
            w.text()
        );
        self.env.container(&name)
    }

    /// Waits until `old`'s outpost (`slug`) runs in a new container with the restart policy
    /// put back; returns it.
    fn wait_policy_put_back(&self, w: &Watch, slug: &str, old: &Inspect, what: &str) -> Inspect {
        let new = self.wait_container(w, slug, what, |x| x.id() != old.id());
        assert_eq!(new.restart_policy(), "unless-stopped", "{what}");
        new
    }

    /// Every managed container of this test, grouped by outpost label.
    fn by_outpost(&self) -> BTreeMap<String, Vec<Inspect>> {
        let mut out: BTreeMap<String, Vec<Inspect>> = BTreeMap::new();
        for (_, c) in self.env.project_containers() {
            out.entry(c.label(LABEL_OUTPOST).unwrap_or_default())
                .or_default()
                .push(c);
        }
        out
    }

    /// No token value in what the watch printed or serves; call at the end of each test
    /// (and before `terminate`, for `/metrics`: a watch that runs must serve it).
    fn assert_no_secret_in(&self, w: &Watch) {
        self.env.assert_no_secret("the watch log", &w.text());
        self.env
            .assert_no_secret("the watch's stdout", &w.stdout.lock().unwrap());
        if w.child.is_some() {
            let (_, body) = w.http("/metrics");
            self.env.assert_no_secret("/metrics", &body);
        }
    }
}

/// Writes `text` to `path` by a temp file in the same directory (hidden, so never read as a
/// manifest) and a rename, as editors save.
fn save_text(path: &Path, text: &str) {
    let dir = path.parent().expect("parent dir");
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    fs::write(&tmp, text).expect("write temp file");
    fs::rename(&tmp, path).expect("rename over the manifest");
}

fn symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link).expect("symlink");
}

/// `ln -sfn TARGET LINK.tmp && mv -T LINK.tmp LINK`: an atomic swap of a symlink.
fn swap_symlink(target: &str, link: &Path) {
    let tmp = link.with_file_name(format!(
        "{}.tmp",
        link.file_name().unwrap().to_string_lossy()
    ));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp);
    fs::rename(&tmp, link).expect("rename the symlink over the old one");
}

// ---------------------------------------------------------------------------------------------
// The watch process and its JSON log

struct Watch {
    child: Option<Child>,
    /// stderr, line by line, as it comes.
    lines: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<String>>,
    /// The --listen address.
    addr: String,
}

impl Watch {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// The number of log lines so far: a mark to look after.
    fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Every log line from `from` on, parsed; each must be a JSON object with ts, level,
    /// event and msg.
    fn logs(&self, from: usize) -> Vec<Value> {
        let lines = self.lines.lock().unwrap().clone();
        lines
            .iter()
            .skip(from)
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
                for k in ["ts", "level", "event", "msg"] {
                    assert!(v[k].is_string(), "log line without `{k}`: {l}");
                }
                v
            })
            .collect()
    }

    fn count(&self, from: usize, f: impl Fn(&Value) -> bool) -> usize {
        self.logs(from).iter().filter(|v| f(v)).count()
    }

    /// The first line from `from` on that satisfies `f`, waited for (polled every 20 ms).
    fn wait_log(
        &self,
        from: usize,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.logs(from).into_iter().find(|v| f(v)) {
                return v;
            }
            if start.elapsed() > timeout {
                panic!(
                    "no log line {what} within {} s; watch log:\n{}",
                    timeout.as_secs(),
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of the reconcile that started at or after `from`: its "reconcile done" line, or
    /// the line saying the manifests are invalid.
    /// The line "reconcile started" of a reconcile with `trigger`, logged after line `from`.
    fn wait_started(&self, from: usize, trigger: &str) -> Value {
        self.wait_log(
            from,
            &format!("`reconcile started trigger={trigger}`"),
            WAIT,
            |v| is_start(v, trigger),
        )
    }

    fn wait_reconciled(&self, from: usize, what: &str) -> Value {
        self.wait_log(from, what, WAIT, |v| {
            v["event"] == "reconcile"
                && v["msg"].as_str().is_some_and(|m| {
                    m.starts_with("reconcile done") || m.starts_with("manifests are invalid")
                })
        })
    }

    /// Waits until no log line came for `quiet` (bounded by 30 s).
    fn wait_quiet(&self, quiet: Duration) {
        let start = Instant::now();
        let mut n = self.mark();
        let mut since = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
            let m = self.mark();
            if m != n {
                n = m;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    fn http(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path)
            .unwrap_or_else(|| panic!("nothing answers on {}{path}", self.addr))
    }

    /// Waits (bounded) until metric `series` is at least `n`.
    fn wait_metric_at_least(&self, series: &str, n: f64) {
        assert!(
            wait_until(WAIT, || self.metric(series).is_some_and(|v| v >= n)),
            "{series} never reached {n}:\n{}",
            self.http("/metrics").1
        );
    }

    /// A metric's value (the line starting with `series `), or None.
    fn metric(&self, series: &str) -> Option<f64> {
        let (code, body) = self.http("/metrics");
        assert_eq!(code, 200, "/metrics:\n{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .and_then(|v| v.trim().parse().ok())
    }

    fn signal(&self, sig: &str) {
        let r = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(r.success(), "kill -{sig} {}", self.pid());
    }

    /// Waits for the process to exit, bounded; its status and how long it took.
    fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let child = self.child.as_mut().expect("the watch runs");
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                self.child = None;
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return (s, start.elapsed());
            }
            if start.elapsed() > timeout {
                panic!(
                    "the watch did not exit within {} s; log:\n{}",
                    timeout.as_secs(),
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then it must exit 0 within `timeout` and say it shut down cleanly.
    fn terminate(&mut self, timeout: Duration) -> Duration {
        self.signal("TERM");
        let (status, took) = self.wait_exit(timeout);
        assert_eq!(status.code(), Some(0), "exit status; log:\n{}", self.text());
        let logs = self.logs(0);
        assert!(
            logs.iter().any(|v| v["msg"] == "shut down cleanly"),
            "no `shut down cleanly`; log:\n{}",
            self.text()
        );
        took
    }
}

impl Drop for Watch {
    /// SIGTERM first, so that a reconcile in flight ends and releases the engine lock (the
    /// tests of this file run in parallel on one engine); SIGKILL if it does not exit soon.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A "reconcile started" line of `trigger`. (Matched on msg and trigger, not on `event`: see
/// `engine_triggered_reconciles_are_logged_as_reconcile_events`.)
fn is_start(v: &Value, trigger: &str) -> bool {
    v["msg"] == "reconcile started" && v["trigger"] == trigger
}

fn is_action(v: &Value, action: &str, container: &str) -> bool {
    v["event"] == "action" && v["action"] == action && v["container"] == container
}

fn is_ok_action(v: &Value, action: &str, container: &str) -> bool {
    is_action(v, action, container) && v["level"] == "info"
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-11-22T18:46:33.650Z`, any number
/// of fraction digits).
fn epoch(ts: &str) -> f64 {
    let (date, time) = ts.split_once('T').expect("RFC 3339 time");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    let time = time.trim_end_matches('Z');
    let mut t = time.split(':');
    let hh: i64 = t.next().unwrap().parse().unwrap();
    let mm: i64 = t.next().unwrap().parse().unwrap();
    let ss: f64 = t.next().unwrap().parse().unwrap();
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + hh * 3600 + mm * 60) as f64 + ss
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The manifest with outposts `names` (rac, own tokens `AK_<NAME>`).
fn manifest_with(c: &Case, names: &[&str]) -> Value {
    let mut m = c.env.manifest();
    for n in names {
        m["outposts"][*n] = c.outpost("rac", &format!("AK_{}", n.to_uppercase()));
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Files

/// At start the outposts are applied; then an edit saved by rename (a temp file renamed over
/// the manifest) recreates the outpost it changes with the new label, and only that one.
#[test]
fn applies_at_start_and_an_edit_saved_by_rename() {
    let c = Case::new("wedit");
    let mut m = manifest_with(&c, &["Alpha", "Beta"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    let b = c.wait_running(&w, "beta", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");
    let logs = w.logs(0);
    assert!(logs.iter().any(|v| is_start(v, "start")), "{}", w.text());
    for n in [c.name("alpha"), c.name("beta")] {
        assert!(
            logs.iter().any(|v| is_ok_action(v, "create", &n)),
            "no `create {n}` line:\n{}",
            w.text()
        );
    }
    assert_eq!(a.label("e2e.watch"), None);

    let mark = w.mark();
    m["outposts"]["Alpha"]["config"] = json!({ "docker_labels": { "e2e.watch": "v2" } });
    c.save("m/outposts.yaml", &m);
    let a2 = c.wait_container(&w, "alpha", "after the edit", |x| {
        x.label("e2e.watch").as_deref() == Some("v2")
    });
    assert_ne!(a2.id(), a.id(), "recreated");
    assert!(
        wait_until(WAIT, || inspect(&a.id()).is_none()),
        "the old container is gone"
    );
    w.wait_started(mark, "files");
    w.wait_log(mark, "`recreate` of Alpha", WAIT, |v| {
        is_ok_action(v, "recreate", &c.name("alpha")) && v["outpost"] == "Alpha"
    });
    assert_eq!(
        c.env.container(&c.name("beta")).id(),
        b.id(),
        "Beta untouched"
    );
    assert_eq!(c.env.project_containers().len(), 2);
    c.assert_no_secret_in(&w);
}

/// A new manifest file added to the directory is applied: its outpost is created.
#[test]
fn a_new_file_is_applied() {
    let c = Case::new("wnewfile");
    let m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    c.token("AK_GAMMA");
    let w = c.watch("m", &[]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");

    let mark = w.mark();
    let more = json!({
        "version": 1,
        "outposts": { "Gamma": c.outpost("radius", "AK_GAMMA") },
    });
    c.save("m/more.yml", &more);
    c.wait_running(&w, "gamma", "after adding more.yml");
    w.wait_log(mark, "`create` of Gamma", WAIT, |v| {
        is_ok_action(v, "create", &c.name("gamma"))
    });
    assert_eq!(c.env.container(&c.name("alpha")).id(), a.id());
    assert_eq!(c.env.project_containers().len(), 2);
    c.assert_no_secret_in(&w);
}

/// A directory of manifests moved into the watched one as a whole is applied at once, even
/// named like a file (`conf.d`: its files send no event of their own); moved away again, its
/// outpost is removed.
#[test]
fn a_directory_moved_in_and_away_is_applied() {
    let c = Case::new("wmovedir");
    let m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    c.token("AK_GAMMA");
    let more = json!({
        "version": 1,
        "outposts": { "Gamma": c.outpost("radius", "AK_GAMMA") },
    });
    std::fs::create_dir_all(c.env.dir().join("stage/conf.d")).expect("stage/conf.d");
    c.save("stage/conf.d/more.yml", &more);
    let w = c.watch("m", &[]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");

    let (staged, inside) = (c.env.dir().join("stage/conf.d"), c.mdir().join("conf.d"));
    let mark = w.mark();
    std::fs::rename(&staged, &inside).expect("move conf.d in");
    c.wait_running(&w, "gamma", "after moving conf.d in");
    w.wait_log(mark, "`create` of Gamma", WAIT, |v| {
        is_ok_action(v, "create", &c.name("gamma"))
    });

    let mark = w.mark();
    std::fs::rename(&inside, &staged).expect("move conf.d away");
    let gamma = c.name("gamma");
    assert!(
        wait_until(WAIT, || inspect(&gamma).is_none()),
        "`{gamma}` was not removed after conf.d moved away; log:\n{}",
        w.text()
    );
    w.wait_log(mark, "`remove` of Gamma", WAIT, |v| {
        is_ok_action(v, "remove", &gamma)
    });
    assert_eq!(c.env.container(&c.name("alpha")).id(), a.id());
    c.assert_no_secret_in(&w);
}

/// An outpost deleted from the manifest is removed; the others stay.
#[test]
fn a_deleted_outpost_is_removed() {
    let c = Case::new("wdelete");
    let mut m = manifest_with(&c, &["Alpha", "Beta"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    c.wait_running(&w, "beta", "applied at start");

    let mark = w.mark();
    m["outposts"].as_object_mut().unwrap().remove("Beta");
    c.save("m/outposts.yaml", &m);
    let beta = c.name("beta");
    assert!(
        wait_until(WAIT, || inspect(&beta).is_none()),
        "`{beta}` was not removed; log:\n{}",
        w.text()
    );
    w.wait_log(mark, "`remove` of Beta", WAIT, |v| {
        is_ok_action(v, "remove", &beta)
    });
    assert_eq!(c.env.container(&c.name("alpha")).id(), a.id());
    assert_eq!(c.env.project_containers().len(), 1);
    c.assert_no_secret_in(&w);
}

/// With `--no-prune` a deleted outpost's container is kept, and the log says the removal is
/// pending.
#[test]
fn no_prune_keeps_a_deleted_outpost_pending() {
    let c = Case::new("wnoprune");
    let mut m = manifest_with(&c, &["Alpha", "Beta"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &["--no-prune"]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    let b = c.wait_running(&w, "beta", "applied at start");

    let mark = w.mark();
    m["outposts"].as_object_mut().unwrap().remove("Beta");
    c.save("m/outposts.yaml", &m);
    let beta = c.name("beta");
    let pending = w.wait_log(mark, "saying the removal is pending", WAIT, |v| {
        v["event"] == "pending"
    });
    assert_eq!(pending["level"], "warn", "{pending}");
    assert!(
        pending["msg"].as_str().unwrap().contains(&beta)
            && pending["msg"].as_str().unwrap().contains("pending"),
        "{pending}"
    );
    assert_eq!(pending["outpost"], "Beta", "{pending}");
    w.wait_reconciled(mark, "ending the reconcile");
    let b2 = c.env.container(&beta);
    assert_eq!(b2.id(), b.id(), "Beta is kept");
    assert!(b2.running());
    assert_eq!(c.env.container(&c.name("alpha")).id(), a.id());
    assert_eq!(
        w.count(mark, |v| v["event"] == "action"),
        0,
        "nothing was done:\n{}",
        w.text()
    );

    // A new outpost whose container takes the kept one's name (`beta`, another outpost: its
    // own uuid) is blocked, saying the removal is pending, not tried and failed again and
    // again.
    let mark = w.mark();
    let mut new_beta = c.outpost("rac", "AK_BETA");
    new_beta["uuid"] = json!(c.env.uuid("another beta"));
    m["outposts"]["beta"] = new_beta;
    c.save("m/outposts.yaml", &m);
    let blocked = w.wait_log(mark, "blocking the new outpost", WAIT, |v| {
        v["event"] == "blocked" && v["outpost"] == "beta"
    });
    assert!(
        blocked["msg"]
            .as_str()
            .is_some_and(|m| m.contains(&beta) && m.contains("its removal is pending (--no-prune)")),
        "{blocked}"
    );
    w.wait_reconciled(mark, "ending the reconcile");
    assert_eq!(
        w.count(mark, |v| v["event"] == "action"),
        0,
        "nothing was tried:\n{}",
        w.text()
    );
    assert_eq!(c.env.container(&beta).id(), b.id(), "Beta is kept");
    c.assert_no_secret_in(&w);
}

/// An invalid edit changes nothing (the container keeps running as it was, the log gives the
/// error at FILE:LINE:COL, /healthz fails); the fix is then applied and /healthz recovers.
#[test]
fn an_invalid_edit_changes_nothing_and_the_fix_is_applied() {
    let c = Case::new("winvalid");
    let mut m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");
    assert_eq!(w.http("/healthz").0, 200);

    // A label change (which would recreate) plus an unknown key: nothing may be applied.
    let mark = w.mark();
    m["outposts"]["Alpha"]["config"] = json!({ "docker_labels": { "e2e.watch": "v2" } });
    m["outposts"]["Alpha"]["typo_key"] = json!("x");
    let text = to_yaml(&m);
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("\"typo_key\"").map(|c| (i + 1, c + 1)))
        .expect("the bad key is in the text");
    save_text(&c.mdir().join("outposts.yaml"), &text);
    let err = w.wait_log(mark, "with the error", WAIT, |v| v["event"] == "invalid");
    assert_eq!(err["level"], "error", "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains(&format!("outposts.yaml:{line}:{col}")) && msg.contains("typo_key"),
        "the error does not point at outposts.yaml:{line}:{col}: {err}"
    );
    w.wait_log(mark, "saying nothing is applied", WAIT, |v| {
        v["event"] == "reconcile"
            && v["level"] == "error"
            && v["msg"].as_str().unwrap().contains("nothing applied")
    });
    let still = c.env.container(&c.name("alpha"));
    assert_eq!(still.id(), a.id(), "the container is untouched");
    assert!(still.running());
    assert_eq!(still.label("e2e.watch"), None);
    assert_eq!(w.count(mark, |v| v["event"] == "action"), 0);
    let (code, body) = w.http("/healthz");
    assert_eq!(code, 503, "/healthz after an invalid edit: {body}");

    // The fix.
    let mark = w.mark();
    m["outposts"]["Alpha"]
        .as_object_mut()
        .unwrap()
        .remove("typo_key");
    c.save("m/outposts.yaml", &m);
    let a2 = c.wait_container(&w, "alpha", "after the fix", |x| {
        x.label("e2e.watch").as_deref() == Some("v2")
    });
    assert_ne!(a2.id(), a.id());
    w.wait_reconciled(mark, "ending the reconcile of the fix");
    assert!(
        wait_until(WAIT, || w.http("/healthz").0 == 200),
        "/healthz stays failed after the fix; log:\n{}",
        w.text()
    );
    c.assert_no_secret_in(&w);
}

/// A manifest that cannot be read for a reason no file change tells of (in life too many
/// open files or an I/O error; here a symlink loop outside the watched directory) is read
/// again with the backoff, not left until a file changes; once it reads, it is applied.
#[test]
fn a_manifest_that_cannot_be_read_is_tried_again() {
    let c = Case::new("wunread");
    let outside = c.env.dir().join("outside");
    fs::create_dir_all(&outside).unwrap();
    symlink("b.yaml", &outside.join("a.yaml"));
    symlink("a.yaml", &outside.join("b.yaml"));
    symlink("../outside/a.yaml", &c.mdir().join("outposts.yaml"));
    // Its token is in the watch's environment from the start.
    let m = manifest_with(&c, &["Alpha"]);
    let w = c.watch("m", &[]);
    w.wait_log(0, "the read failure", WAIT, |v| {
        v["event"] == "reconcile"
            && v["msg"].as_str().is_some_and(|m| {
                m.contains("the manifests could not be read") && m.contains("trying again in 5s")
            })
    });
    let mark = w.mark();
    w.wait_started(mark, "backoff-retry");
    assert_eq!(w.http("/healthz").0, 503);

    fs::remove_file(outside.join("b.yaml")).unwrap();
    c.save("outside/b.yaml", &m);
    c.wait_running(&w, "alpha", "applied once the manifest reads");
    assert!(
        wait_until(WAIT, || w.http("/healthz").0 == 200),
        "/healthz stays failed; log:\n{}",
        w.text()
    );
    c.assert_no_secret_in(&w);
}

/// A token read from a file in another directory: changing the file recreates the outpost
/// with the new token (a referenced file is watched, not only the manifests).
#[test]
fn a_changed_token_file_is_applied() {
    let c = Case::new("wtokenfile");
    let secrets = c.env.dir().join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    let t1 = format!("s3cr3t-file-1-{}", c.env.project);
    let t2 = format!("s3cr3t-file-2-{}", c.env.project);
    c.env.set_token("UNUSED_FILE_TOKEN_1", &t1);
    c.env.set_token("UNUSED_FILE_TOKEN_2", &t2);
    let tok = secrets.join("alpha.token");
    fs::write(&tok, format!("{t1}\n")).unwrap();
    fs::set_permissions(&tok, fs::Permissions::from_mode(0o600)).unwrap();
    let mut m = c.env.manifest();
    m["outposts"]["Alpha"] = json!({
        "type": "rac",
        "uuid": c.env.uuid("Alpha"),
        "integration": "local",
        "token": { "file": "../secrets/alpha.token" },
    });
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    assert_eq!(a.env().get("AUTHENTIK_TOKEN"), Some(&t1));
    w.wait_reconciled(0, "ending the first reconcile");

    let mark = w.mark();
    save_text(&tok, &format!("{t2}\n"));
    fs::set_permissions(&tok, fs::Permissions::from_mode(0o600)).unwrap();
    let a2 = c.wait_container(&w, "alpha", "after the token file changed", |x| {
        x.env().get("AUTHENTIK_TOKEN") == Some(&t2)
    });
    assert_ne!(a2.id(), a.id());
    w.wait_log(mark, "`recreate` of Alpha", WAIT, |v| {
        is_ok_action(v, "recreate", &c.name("alpha"))
    });
    c.assert_no_secret_in(&w);
}

/// A token file that an edit names before it exists: the edit is invalid (nothing applied);
/// once the file is written, in a directory the manifests did not reference before, the
/// outpost is created without waiting for the interval.
#[test]
fn a_token_file_named_before_it_exists_is_applied_when_written() {
    token_file_written_later("wtokenlater", "secrets", false);
}

/// The same when the token file's directory (two levels of it) does not exist either until
/// the file is written: its nearest existing ancestor is watched meanwhile. (Was a bug: the
/// watch of the missing directory failed, and the outpost waited for the interval.)
#[test]
fn a_token_file_in_a_directory_made_later_is_applied_when_written() {
    token_file_written_later("wtokendir", "secrets/later", true);
}

fn token_file_written_later(tag: &str, dir: &str, made_later: bool) {
    let c = Case::new(tag);
    let secrets = c.env.dir().join(dir);
    if !made_later {
        fs::create_dir_all(&secrets).unwrap();
    }
    let mut m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    c.wait_running(&w, "alpha", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");

    let mark = w.mark();
    let t = format!("s3cr3t-later-{}", c.env.project);
    c.env.set_token("UNUSED_LATER_TOKEN", &t);
    m["outposts"]["Beta"] = json!({
        "type": "rac",
        "uuid": c.env.uuid("Beta"),
        "integration": "local",
        "token": { "file": format!("../{dir}/beta.token") },
    });
    c.save("m/outposts.yaml", &m);
    w.wait_log(mark, "saying nothing is applied", WAIT, |v| {
        v["event"] == "reconcile"
            && v["level"] == "error"
            && v["msg"].as_str().unwrap().contains("nothing applied")
    });

    let tok = secrets.join("beta.token");
    fs::create_dir_all(&secrets).unwrap();
    save_text(&tok, &format!("{t}\n"));
    fs::set_permissions(&tok, fs::Permissions::from_mode(0o600)).unwrap();
    let b = c.wait_running(&w, "beta", "after the token file was written");
    assert_eq!(b.env().get("AUTHENTIK_TOKEN"), Some(&t));
    c.assert_no_secret_in(&w);
}

/// A manifest that is a symlink to a file in another directory (`m/outposts.yaml ->
/// ../shared/outposts.yaml`): an edit saved to the target is applied.
#[test]
fn an_edit_to_a_symlinked_manifests_target_is_seen() {
    let c = Case::new("wlinktarget");
    let shared = c.env.dir().join("shared");
    fs::create_dir_all(&shared).unwrap();
    let mut m = manifest_with(&c, &["Alpha"]);
    c.save("shared/outposts.yaml", &m);
    symlink("../shared/outposts.yaml", &c.mdir().join("outposts.yaml"));
    let w = c.watch("m", &[]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");

    m["outposts"]["Alpha"]["config"] = json!({ "docker_labels": { "e2e.version": "v2" } });
    c.save("shared/outposts.yaml", &m);
    let a2 = c.wait_container(&w, "alpha", "after the target was edited", |x| {
        has_version(x, "v2")
    });
    assert_ne!(a2.id(), a.id());
    c.assert_no_secret_in(&w);
}

/// The manifest directory moved away and made anew (`mv m m.old && mkdir m`, an unpacked
/// bundle): its content is applied, and so is a later edit inside the new directory.
#[test]
fn a_manifest_directory_made_anew_is_still_watched() {
    let c = Case::new("wdiranew");
    let mut m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    c.wait_running(&w, "alpha", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");

    fs::rename(c.mdir(), c.env.dir().join("m.old")).unwrap();
    let staged = c.env.dir().join("m.new");
    fs::create_dir_all(&staged).unwrap();
    m["outposts"]["Alpha"]["config"] = json!({ "docker_labels": { "e2e.version": "v2" } });
    save_text(&staged.join("outposts.yaml"), &to_yaml(&m));
    fs::rename(&staged, c.mdir()).unwrap();
    let a2 = c.wait_container(&w, "alpha", "after the new directory", |x| {
        has_version(x, "v2")
    });
    assert_eq!(
        c.env.wait_healthy(&a2.name(), WAIT).as_deref(),
        Some("healthy")
    );
    w.wait_quiet(Duration::from_millis(1500));

    m["outposts"]["Alpha"]["config"] = json!({ "docker_labels": { "e2e.version": "v3" } });
    c.save("m/outposts.yaml", &m);
    let name = c.name("alpha");
    let seen = wait_until(Duration::from_secs(10), || {
        inspect(&name).is_some_and(|x| has_version(&x, "v3"))
    });
    assert!(
        seen,
        "an edit in the new directory was not applied within 10 s; log:\n{}",
        w.text()
    );
    c.assert_no_secret_in(&w);
}

// ---------------------------------------------------------------------------------------------
// Symlink swaps

/// Lays out `<tmp>/v1` and `<tmp>/v2` (Alpha with the label `e2e.version`) and `current -> v1`.
fn versioned_dirs(c: &Case) -> Value {
    let m = manifest_with(c, &["Alpha"]);
    for v in ["v1", "v2"] {
        let mut mv = m.clone();
        mv["outposts"]["Alpha"]["config"] = json!({ "docker_labels": { "e2e.version": v } });
        fs::create_dir_all(c.env.dir().join(v)).unwrap();
        c.save(&format!("{v}/outposts.yaml"), &mv);
    }
    symlink("v1", &c.env.dir().join("current"));
    m
}

fn has_version(x: &Inspect, v: &str) -> bool {
    x.label("e2e.version").as_deref() == Some(v)
}

/// The watched path is a symlink `current -> v1/`; an atomic swap to `v2`
/// (`ln -sfn v2 current.tmp && mv -T current.tmp current`) is seen and v2 is applied.
#[test]
fn a_symlink_swap_of_the_directory_is_seen() {
    let c = Case::new("wswap");
    versioned_dirs(&c);
    let w = c.watch("current", &[]);
    let a = c.wait_container(&w, "alpha", "applied at start", |x| has_version(x, "v1"));
    w.wait_reconciled(0, "ending the first reconcile");

    let mark = w.mark();
    swap_symlink("v2", &c.env.dir().join("current"));
    let a2 = c.wait_container(&w, "alpha", "after the swap to v2", |x| {
        has_version(x, "v2")
    });
    assert_ne!(a2.id(), a.id());
    w.wait_started(mark, "files");
    assert_eq!(c.env.project_containers().len(), 1);
    c.assert_no_secret_in(&w);
}

/// After the swap, an edit inside the new target (saved through `current/`) must be seen too.
/// (Was a bug until bd90b23: the recursive watch stayed on the old target's inode, so later
/// edits in v2 waited for an unrelated trigger: an engine event, the interval.)
#[test]
fn an_edit_after_a_symlink_swap_is_seen() {
    let c = Case::new("wswapedit");
    let m = versioned_dirs(&c);
    let w = c.watch("current", &[]);
    c.wait_container(&w, "alpha", "applied at start", |x| has_version(x, "v1"));
    swap_symlink("v2", &c.env.dir().join("current"));
    let a2 = c.wait_container(&w, "alpha", "after the swap to v2", |x| {
        has_version(x, "v2")
    });
    // Let the new container's own events (kill of the old one, health_status) pass, so that
    // they cannot hide the missing file event.
    assert_eq!(
        c.env.wait_healthy(&a2.name(), WAIT).as_deref(),
        Some("healthy")
    );
    w.wait_quiet(Duration::from_millis(1500));

    let mark = w.mark();
    let mut m3 = m.clone();
    m3["outposts"]["Alpha"]["config"] = json!({ "docker_labels": { "e2e.version": "v2-edited" } });
    c.save("current/outposts.yaml", &m3);
    let name = c.name("alpha");
    let seen = wait_until(Duration::from_secs(10), || {
        inspect(&name).is_some_and(|x| has_version(&x, "v2-edited"))
    });
    assert!(
        seen,
        "an edit in the new target of `current` was not applied within 10 s; log since the edit:\n{}",
        w.logs(mark)
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A Kubernetes ConfigMap volume: `outposts.yaml -> ..data/outposts.yaml`,
/// `..data -> ..2026_01_01`; kubelet swaps `..data` to a new timestamped directory and removes
/// the old one. Both of two swaps in a row are seen.
#[test]
fn a_kubernetes_data_swap_is_seen() {
    kubernetes_data_swaps("wk8sdata", "cm");
}

/// The same, watching the ConfigMap's file (`watch cm/outposts.yaml`) rather than its
/// directory: the swap happens beside the file, not under it.
#[test]
fn a_kubernetes_data_swap_is_seen_when_the_file_is_watched() {
    kubernetes_data_swaps("wk8sfile", "cm/outposts.yaml");
}

fn kubernetes_data_swaps(tag: &str, watched: &str) {
    let c = Case::new(tag);
    let cm = c.env.dir().join("cm");
    fs::create_dir_all(&cm).unwrap();
    let m = manifest_with(&c, &["Alpha"]);
    let write_version = |ts: &str, v: &str| {
        let mut mv = m.clone();
        mv["outposts"]["Alpha"]["config"] = json!({ "docker_labels": { "e2e.version": v } });
        let d = cm.join(ts);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("outposts.yaml"), to_yaml(&mv)).unwrap();
    };
    write_version("..2026_01_01_00_00_00.000000001", "v1");
    symlink("..2026_01_01_00_00_00.000000001", &cm.join("..data"));
    symlink("..data/outposts.yaml", &cm.join("outposts.yaml"));
    let w = c.watch(watched, &[]);
    let a = c.wait_container(&w, "alpha", "applied at start", |x| has_version(x, "v1"));
    w.wait_reconciled(0, "ending the first reconcile");

    let mut prev = "..2026_01_01_00_00_00.000000001".to_string();
    let mut prev_id = a.id();
    for (ts, v) in [
        ("..2026_01_02_00_00_00.000000002", "v2"),
        ("..2026_01_03_00_00_00.000000003", "v3"),
    ] {
        let mark = w.mark();
        write_version(ts, v);
        let tmp = cm.join("..data_tmp");
        symlink(ts, &tmp);
        fs::rename(&tmp, cm.join("..data")).unwrap();
        fs::remove_dir_all(cm.join(&prev)).unwrap();
        let x = c.wait_container(&w, "alpha", &format!("after the swap to {v}"), |x| {
            has_version(x, v)
        });
        assert_ne!(x.id(), prev_id);
        w.wait_started(mark, "files");
        w.wait_reconciled(mark, "ending the reconcile");
        prev = ts.to_string();
        prev_id = x.id();
    }
    assert_eq!(c.env.project_containers().len(), 1);
    c.assert_no_secret_in(&w);
}

/// The watch's own log, appended to a file next to the manifest directory (as in
/// `cd /srv/checkout && outpostctl watch deploy/ 2>>watch.log`), must not make it reconcile
/// again and again. (Was a bug until bd90b23: the parent of a watched directory is watched for
/// symlink swaps, and any event there, the log file's own writes included, triggered a
/// reconcile whose log lines triggered the next one: about 2 a second, forever.)
#[test]
fn a_log_file_next_to_the_manifest_directory_does_not_loop() {
    let c = Case::new("wloglooop");
    let m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    let log = c.env.dir().join("watch.log");
    let port = c.env.port();
    let mut cmd = c.watch_cmd("m", &format!("127.0.0.1:{port}"), &[]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&log).unwrap()));
    let mut w = Watch {
        child: Some(cmd.spawn().expect("outpostctl watch starts")),
        lines: Arc::new(Mutex::new(Vec::new())),
        stdout: Arc::new(Mutex::new(String::new())),
        addr: format!("127.0.0.1:{port}"),
    };
    let read = || fs::read_to_string(&log).unwrap_or_default();
    let started = |s: &str| s.matches("\"reconcile started\"").count();
    assert!(
        wait_until(WAIT, || read().contains("reconcile done")),
        "{}",
        read()
    );
    c.wait_running(&w, "alpha", "applied at start");
    // One edit: one reconcile (plus perhaps one for the container's health event).
    let mut m2 = m.clone();
    m2["outposts"]["Alpha"]["config"] = json!({ "docker_labels": { "e2e.watch": "v2" } });
    c.save("m/outposts.yaml", &m2);
    let looped = wait_until(Duration::from_secs(10), || started(&read()) > 6);
    assert!(
        !looped,
        "{} reconciles after one edit; log:\n{}",
        started(&read()),
        read()
    );
    // And the edit was applied, by a watch that still runs.
    c.wait_container(&w, "alpha", "after the edit", |x| {
        x.label("e2e.watch").as_deref() == Some("v2")
    });
    let child = w.child.as_mut().expect("the watch runs");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the watch exited; log:\n{}",
        read()
    );
    drop(w);
}

// ---------------------------------------------------------------------------------------------
// Drift

/// `watch` over the outposts Alpha and Beta: both running, the first reconcile over.
fn watching_alpha_and_beta(tag: &str) -> (Case, Watch, Inspect, Inspect) {
    let c = Case::new(tag);
    let m = manifest_with(&c, &["Alpha", "Beta"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    let b = c.wait_running(&w, "beta", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");
    (c, w, a, b)
}

/// A container removed by hand (`docker rm -f`) is back within seconds, and one stopped by
/// hand (`docker stop`) is running again within seconds; both count as drift corrections.
#[test]
fn containers_removed_or_stopped_by_hand_come_back() {
    let (c, w, a, b) = watching_alpha_and_beta("wdrift");
    assert_eq!(w.metric("outpostctl_drift_corrections_total"), Some(0.0));

    let mark = w.mark();
    docker_ok(&["rm", "-f", &a.name()]);
    let a2 = c.wait_container(&w, "alpha", "after docker rm -f", |x| x.id() != a.id());
    w.wait_started(mark, "engine-event");
    w.wait_log(mark, "`create` of Alpha", WAIT, |v| {
        is_ok_action(v, "create", &a.name())
    });
    assert_eq!(a2.label(LABEL_UUID), a.label(LABEL_UUID));
    w.wait_metric_at_least("outpostctl_drift_corrections_total", 1.0);

    let mark = w.mark();
    docker_ok(&["stop", &b.name()]);
    let b2 = c.wait_running(&w, "beta", "after docker stop");
    // Within seconds: started by the stop's event, not at the interval (an hour here).
    w.wait_started(mark, "engine-event");
    assert_eq!(b2.id(), b.id(), "started again, not recreated");
    w.wait_log(mark, "`start` of Beta", WAIT, |v| {
        is_ok_action(v, "start", &b.name())
    });
    w.wait_metric_at_least("outpostctl_drift_corrections_total", 2.0);
    assert_eq!(c.env.project_containers().len(), 2);
    c.assert_no_secret_in(&w);
}

/// `project:` changed while the watch runs: the new project's containers are the ones whose
/// events count from then on, so one removed by hand comes back within seconds (not at the
/// interval, an hour here); the old project's container is left alone.
#[test]
fn a_changed_project_is_watched_for_events() {
    let c = Case::new("wproject");
    let mut m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let old = c.wait_running(&w, "alpha", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");

    let renamed = c.name("renamed-alpha");
    c.env.track_container(&renamed);
    m["project"] = json!(format!("{}-renamed", c.env.project));
    m["defaults"]["object_naming_template"] = json!(format!("{}renamed-%(name)s", c.env.prefix));
    m["outposts"]["Alpha"]["uuid"] = json!(c.env.uuid("renamed alpha"));
    let mark = w.mark();
    c.save("m/outposts.yaml", &m);
    let first = c.wait_running(&w, "renamed-alpha", "after the project changed");
    w.wait_reconciled(mark, "ending the reconcile of the new project");

    let mark = w.mark();
    docker_ok(&["rm", "-f", &renamed]);
    c.wait_container(&w, "renamed-alpha", "after docker rm -f", |x| {
        x.id() != first.id()
    });
    w.wait_started(mark, "engine-event");
    assert_eq!(c.env.container(&old.name()).id(), old.id(), "left alone");
    c.assert_no_secret_in(&w);
}

/// A container taken off its network by hand (`docker network disconnect`: still running,
/// reachable by nobody) is recreated on its network within seconds, not at the interval;
/// the other outpost is left as it is.
#[test]
fn a_container_disconnected_from_its_network_by_hand_is_recreated() {
    let (c, w, a, b) = watching_alpha_and_beta("wdetach");
    let mark = w.mark();
    docker_ok(&["network", "disconnect", "bridge", &a.name()]);
    let a2 = c.wait_running(&w, "alpha", "after docker network disconnect");
    let a2 = if a2.id() == a.id() {
        c.wait_container(&w, "alpha", "recreated after the disconnect", |x| {
            x.id() != a.id()
        })
    } else {
        a2
    };
    assert!(
        a2.0["NetworkSettings"]["Networks"]["bridge"].is_object(),
        "back on bridge: {}",
        a2.0["NetworkSettings"]["Networks"]
    );
    let started = w.wait_started(mark, "engine-event");
    assert_eq!(started["docker_event"], "disconnect", "{started}");
    w.wait_log(mark, "`recreate` of Alpha", WAIT, |v| {
        is_ok_action(v, "recreate", &a.name())
    });
    assert_eq!(c.env.container(&b.name()).id(), b.id(), "Beta untouched");
    c.assert_no_secret_in(&w);
}

/// `--interval` reconciles on its own, with no event and no edit: here every 2 s, each a full
/// plan that finds nothing to change, counted in `/metrics`.
#[test]
fn the_interval_reconciles_without_an_event() {
    let c = Case::new("winterval");
    let m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &["--interval", "2s"]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");
    let mark = w.mark();
    let t = Instant::now();
    let first = w.wait_started(mark, "interval");
    let second = w.wait_log(
        mark,
        "a second `reconcile started trigger=interval`",
        WAIT,
        |v| is_start(v, "interval") && v["ts"] != first["ts"],
    );
    let took = t.elapsed();
    let gap = epoch(second["ts"].as_str().unwrap_or_default())
        - epoch(first["ts"].as_str().unwrap_or_default());
    // 2 s apart, or as long as the first took when it took longer (a tick missed during a
    // reconcile waits for it: `MissedTickBehavior::Delay`).
    let done = w.wait_reconciled(mark, "ending the first interval reconcile");
    let ran = done["duration_ms"]
        .as_str()
        .and_then(|ms| ms.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1000.0;
    assert!(
        gap >= 1.5 && gap <= ran.max(2.0) + 1.5,
        "interval reconciles {gap:.2} s apart, not 2 s (the first ran {ran:.2} s):\n{}",
        w.text()
    );
    assert!(
        took < Duration::from_secs(10).max(Duration::from_secs_f64(2.0 * ran + 6.0)),
        "took {took:?}"
    );
    assert!(
        w.logs(mark)
            .iter()
            .all(|v| v["msg"] != "reconcile started" || v["trigger"] == "interval"),
        "a reconcile of another trigger:\n{}",
        w.text()
    );
    w.wait_metric_at_least("outpostctl_reconciles_total{result=\"success\"}", 3.0);
    assert_eq!(c.env.container(&a.name()).id(), a.id(), "Alpha untouched");
}

/// A container that turns unhealthy is restarted by the watch (the same container, not a new
/// one), as authentik does. The unhealthy container is a copy of ours with a quick health
/// check (`unhealthy_copy`), swapped in while the watch is paused (SIGSTOP): once it goes
/// on, the engine's events of the swap start the reconcile that finds it unhealthy.
#[test]
fn an_unhealthy_container_is_restarted() {
    let (c, w, a, b) = watching_alpha_and_beta("wunhealthy");
    w.signal("STOP");
    docker_ok(&["rm", "-f", &a.name()]);
    let sick = unhealthy_copy(&a.name(), &a, "/rac healthcheck");
    let started = c.env.container(&sick).0["State"]["StartedAt"].clone();
    let mark = w.mark();
    w.signal("CONT");
    w.wait_started(mark, "engine-event");
    w.wait_log(mark, "`restart` of Alpha", WAIT, |v| {
        is_ok_action(v, "restart", &a.name())
    });
    let after = c.env.container(&a.name());
    assert_eq!(after.id(), sick, "recreated, not restarted");
    assert_ne!(
        after.0["State"]["StartedAt"],
        started,
        "not restarted:\n{}",
        w.text()
    );
    w.wait_metric_at_least("outpostctl_drift_corrections_total", 1.0);
    assert_eq!(c.env.container(&b.name()).id(), b.id(), "Beta untouched");
}

/// A container renamed by hand (`docker rename`) is renamed back within seconds, the same
/// container (not recreated), on its `rename` event.
#[test]
fn a_container_renamed_by_hand_is_renamed_back() {
    let (c, w, a, _b) = watching_alpha_and_beta("wrename");
    let mark = w.mark();
    let elsewhere = c.name("elsewhere");
    c.env.track_container(&elsewhere);
    docker_ok(&["rename", &a.name(), &elsewhere]);
    let started = w.wait_started(mark, "engine-event");
    assert_eq!(started["docker_event"], "rename", "{started}");
    let back = c.wait_running(&w, "alpha", "after docker rename");
    assert_eq!(back.id(), a.id(), "renamed back, not recreated");
    assert!(inspect(&elsewhere).is_none());
    w.wait_log(mark, "`rename` of Alpha", WAIT, |v| {
        is_ok_action(v, "rename", &a.name())
    });
    c.assert_no_secret_in(&w);
}

/// A container turning healthy needs nothing: its `health_status: healthy` event starts no
/// reconcile (each would list the engine and log two lines for nothing).
#[test]
fn a_container_turning_healthy_starts_no_reconcile() {
    let (c, w, a, b) = watching_alpha_and_beta("whealthy");
    for x in [&a, &b] {
        assert_eq!(
            c.env.wait_healthy(&x.name(), WAIT).as_deref(),
            Some("healthy"),
            "{}",
            x.name()
        );
    }
    w.wait_quiet(Duration::from_millis(800));
    let health_reconciles = w.count(0, |v| {
        v["msg"] == "reconcile started"
            && v["docker_event"]
                .as_str()
                .is_some_and(|e| e.starts_with("health_status"))
    });
    assert_eq!(health_reconciles, 0, "{}", w.text());
}

/// A signal that comes while the watch gathers a burst of engine events (it waits 200 ms for
/// more) ends the watch without starting the reconcile those events asked for. The signal is
/// sent once `/metrics` counts the event; when the test was too slow for the 200 ms (the
/// reconcile started first), it tries again, five times at most.
#[test]
fn a_signal_during_an_event_burst_starts_no_reconcile() {
    for attempt in 0..5 {
        match signal_during_burst(attempt) {
            None => return,
            Some(note) => eprintln!("attempt {attempt}: {note}; again"),
        }
    }
    panic!("the signal never came within the 200 ms of the burst");
}

/// The engine events the watch received (every integration).
fn events_received(w: &Watch) -> f64 {
    let (code, body) = w.http("/metrics");
    assert_eq!(code, 200, "/metrics:\n{body}");
    body.lines()
        .filter(|l| l.starts_with("outpostctl_engine_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn signal_during_burst(attempt: usize) -> Option<String> {
    let (_c, mut w, a, _b) = watching_alpha_and_beta(&format!("wsigburst{attempt}"));
    w.wait_quiet(Duration::from_millis(800));
    let before = events_received(&w);
    let mark = w.mark();
    // A `kill` event that changes nothing: the container ignores SIGWINCH and keeps running.
    docker_ok(&["kill", "--signal", "WINCH", &a.name()]);
    // Polled closely (not every 200 ms as `wait_until` does): the burst lasts 200 ms.
    let asked = Instant::now();
    while events_received(&w) <= before {
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the watch never received the kill event:\n{}",
            w.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    w.signal("TERM");
    let (status, _) = w.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", w.text());
    let logs = w.logs(mark);
    let signalled = logs
        .iter()
        .position(|v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("signal received"))
        })
        .unwrap_or_else(|| panic!("no `signal received`:\n{}", w.text()));
    if logs[..signalled]
        .iter()
        .any(|v| v["msg"] == "reconcile started")
    {
        return Some("the reconcile started before the signal".into());
    }
    assert!(
        !logs[signalled..]
            .iter()
            .any(|v| v["msg"] == "reconcile started"),
        "a reconcile started after the signal:\n{}",
        w.text()
    );
    assert!(
        logs.iter().any(|v| v["msg"] == "shut down cleanly"),
        "{}",
        w.text()
    );
    None
}

/// A restart policy changed by hand (`docker update --restart no`) is put back: the engine's
/// `update` event makes the next plan inspect that container, which is recreated with the
/// manifest's policy; the other outpost is not touched. One changed while no watch ran is put
/// back by the next watch's first reconcile, which inspects every container.
#[test]
fn a_restart_policy_changed_by_hand_is_put_back() {
    let (c, w, a, b) = watching_alpha_and_beta("wupdate");
    assert_eq!(a.restart_policy(), "unless-stopped");

    let mark = w.mark();
    docker_ok(&["update", "--restart", "no", &a.name()]);
    let a2 = c.wait_policy_put_back(&w, "alpha", &a, "after docker update");
    w.wait_log(mark, "`recreate` of Alpha", WAIT, |v| {
        is_ok_action(v, "recreate", &a.name())
    });
    assert_eq!(c.env.container(&b.name()).id(), b.id(), "Beta untouched");
    c.assert_no_secret_in(&w);

    // Changed while no watch ran: no event to see; the next watch inspects all at start.
    drop(w);
    docker_ok(&["update", "--restart", "no", &b.name()]);
    let w = c.watch("m", &[]);
    c.wait_policy_put_back(&w, "beta", &b, "at the next start");
    w.wait_reconciled(0, "ending the first reconcile");
    assert_eq!(c.env.container(&a2.name()).id(), a2.id(), "Alpha untouched");
}

/// `http://127.0.0.1:PORT` in front of the engine's socket that the test can cut: while cut,
/// its connections are closed and new ones are closed at once (a network outage between a
/// watch and its engine). While it is a black hole, new connections are taken and never
/// answered (a host down behind a firewall that drops packets). While events are held, a
/// request for the engine's events waits in it before it reaches the engine (a subscription
/// that is slow to come up).
struct Cuttable {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    black_hole: Arc<std::sync::atomic::AtomicBool>,
    /// The connections the black hole took.
    swallowed: Arc<Mutex<Vec<std::net::TcpStream>>>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
    hold_events: Arc<std::sync::atomic::AtomicBool>,
    /// Event requests that were held so far.
    held: Arc<std::sync::atomic::AtomicUsize>,
    /// Event requests passed on to the engine so far.
    subscribed: Arc<std::sync::atomic::AtomicUsize>,
}

/// Copies a client's requests to the engine; one for `/events` waits while `hold` is set.
fn forward_requests(
    mut from: std::net::TcpStream,
    mut to: std::os::unix::net::UnixStream,
    hold: &std::sync::atomic::AtomicBool,
    held: &std::sync::atomic::AtomicUsize,
    subscribed: &std::sync::atomic::AtomicUsize,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let events = chunk.windows(8).any(|w| w == b"/events?");
        if events && hold.load(SeqCst) {
            held.fetch_add(1, SeqCst);
            while hold.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        if events {
            subscribed.fetch_add(1, SeqCst);
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl Cuttable {
    fn start() -> Cuttable {
        use std::os::unix::net::UnixStream;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let black_hole: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let swallowed: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let hold_events: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let held: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let subscribed: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let socket = engine_socket();
        let (c, o) = (cut.clone(), open.clone());
        let (hole, taken) = (black_hole.clone(), swallowed.clone());
        let (hold, count, asked) = (hold_events.clone(), held.clone(), subscribed.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                if hole.load(std::sync::atomic::Ordering::SeqCst) {
                    taken.lock().unwrap().push(tcp);
                    continue;
                }
                let Ok(mut unix) = UnixStream::connect(&socket) else {
                    continue;
                };
                let (Ok(mut tcp_w), Ok(unix_w), Ok(kept)) =
                    (tcp.try_clone(), unix.try_clone(), tcp.try_clone())
                else {
                    continue;
                };
                o.lock().unwrap().push(kept);
                let (hold, count, asked) = (hold.clone(), count.clone(), asked.clone());
                std::thread::spawn(move || forward_requests(tcp, unix_w, &hold, &count, &asked));
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut unix, &mut tcp_w);
                    let _ = tcp_w.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Cuttable {
            port,
            cut,
            black_hole,
            swallowed,
            open,
            hold_events,
            held,
            subscribed,
        }
    }

    /// Waits until a request for the engine's events went through to the engine.
    fn wait_subscribed(&self) {
        assert!(
            wait_until(WAIT, || self
                .subscribed
                .load(std::sync::atomic::Ordering::SeqCst)
                > 0),
            "no request for the engine's events went through within {WAIT:?}"
        );
    }

    fn set_hold_events(&self, hold: bool) {
        self.hold_events
            .store(hold, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits until a request for the engine's events is held.
    fn wait_held(&self) {
        let deadline = Instant::now() + WAIT;
        while self.held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "no request for the engine's events within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A black hole, or no more: then the connections it took are closed.
    fn set_black_hole(&self, on: bool) {
        self.black_hole
            .store(on, std::sync::atomic::Ordering::SeqCst);
        if !on {
            for c in self.swallowed.lock().unwrap().drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
        if cut {
            for c in self.open.lock().unwrap().drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// A watch of one outpost, Alpha, on the engine reached through `proxy`: once its first
/// reconcile ended, with Alpha running.
fn watching_alpha_through(c: &Case, proxy: &Cuttable) -> (Watch, Inspect) {
    let mut m = manifest_with(c, &["Alpha"]);
    m["integrations"]["local"] = json!({ "url": format!("http://127.0.0.1:{}", proxy.port) });
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");
    (w, a)
}

/// An engine down behind a firewall (its connections taken, never answered) costs the first
/// reconcile the request timeout (8 s here); the reconciles after it do not wait on it again:
/// a container removed by hand on the other engine is back at once, its reconcile saying the
/// engine is not tried. When the engine answers again, its event subscription (which kept
/// trying) reaches it, and its outpost is applied.
#[test]
fn an_engine_down_behind_a_firewall_does_not_delay_the_others() {
    let c = Case::new("wdown");
    let proxy = Cuttable::start();
    proxy.set_black_hole(true);
    let mut m = manifest_with(&c, &["Alpha", "Beta"]);
    m["integrations"]["away"] = json!({ "url": format!("http://127.0.0.1:{}", proxy.port) });
    m["outposts"]["Beta"]["integration"] = json!("away");
    c.save("m/outposts.yaml", &m);
    let timeout = 8;
    let w = c.watch_with(
        "m",
        &[],
        &[("OUTPOSTCTL_ENGINE_TIMEOUT", &timeout.to_string())],
    );
    let a = c.wait_running(&w, "alpha", "applied at start, the other engine down");
    let done = w.wait_reconciled(0, "ending the first reconcile");
    assert!(
        done["msg"].as_str().unwrap().contains("with errors"),
        "{done}"
    );
    let away_errors = |from: usize| -> Vec<String> {
        w.logs(from)
            .iter()
            .filter(|v| {
                v["event"] == "engine" && v["integration"] == "away" && v["level"] == "error"
            })
            .map(|v| v["msg"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let first = away_errors(0);
    assert!(
        first
            .first()
            .is_some_and(|e| e.contains(&format!("did not answer within {timeout} s"))),
        "the first reconcile waited for the engine and said so: {first:?}\n{}",
        w.text()
    );
    assert!(inspect(&c.name("beta")).is_none());

    let mark = w.mark();
    docker_ok(&["rm", "-f", &a.name()]);
    c.wait_container(&w, "alpha", "after docker rm -f", |x| x.id() != a.id());
    let started = w.wait_started(mark, "engine-event");
    let done = w.wait_reconciled(mark, "ending the put-back's reconcile");
    let took = done["duration_ms"]
        .as_str()
        .and_then(|d| d.parse::<u64>().ok());
    assert!(
        took.is_some_and(|ms| ms < timeout * 1000),
        "the put-back's reconcile ({started}) waited for the engine that is down: {done}"
    );
    let later = away_errors(mark);
    assert!(
        !later.is_empty() && later.iter().all(|e| e.contains("not tried again")),
        "reconciles after the first try the engine again: {later:?}\n{}",
        w.text()
    );
    // Said once, as what it is: not again as a lock's failure, nor twice in /healthz.
    assert_eq!(
        w.count(mark, |v| v["event"] == "lock" && v["integration"] == "away"),
        0,
        "{}",
        w.text()
    );
    let (_, health) = w.http("/healthz");
    assert_eq!(
        health.matches("integration `away`").count(),
        1,
        "/healthz:\n{health}"
    );

    let mark = w.mark();
    proxy.set_black_hole(false);
    let beta = c.name("beta");
    assert!(
        wait_until(Duration::from_secs(90), || inspect(&beta)
            .is_some_and(|x| x.running())),
        "Beta is not applied once its engine answers; watch log:\n{}",
        w.text()
    );
    let resumed = w.wait_started(mark, "engine-events-resumed");
    assert_eq!(resumed["integration"], "away", "{resumed}");
    c.assert_no_secret_in(&w);
}

/// A restart policy changed while the watch's event stream was broken (the engine out of
/// reach) left no event: when the stream is back, the watch inspects that engine in full and
/// puts the policy back.
#[test]
fn a_restart_policy_changed_while_the_events_were_cut_is_put_back() {
    let c = Case::new("wresume");
    let proxy = Cuttable::start();
    let (w, a) = watching_alpha_through(&c, &proxy);
    proxy.wait_subscribed();

    let mark = w.mark();
    proxy.set_cut(true);
    // The stream that was up breaks (not a subscription that never came up).
    w.wait_log(mark, "the event stream's break", WAIT, |v| {
        v["event"] == "engine"
            && v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("event stream:"))
    });
    docker_ok(&["update", "--restart", "no", &a.name()]);
    proxy.set_cut(false);
    c.wait_policy_put_back(&w, "alpha", &a, "after the stream is back");
    let resumed = w.wait_started(mark, "engine-events-resumed");
    assert_eq!(resumed["integration"], "local", "{resumed}");
}

/// A restart policy changed while the watch subscribes to the engine's events (the
/// subscription, asked for as the first reconcile starts, is held back here until after that
/// reconcile read the engine) is put back: the subscription asks the engine for the events
/// since that reconcile started. (Was the one gap left
/// by 4b89178: the `update` event was missed and the interval's plans do not inspect.)
#[test]
fn a_restart_policy_changed_while_the_watch_subscribes_is_put_back() {
    let c = Case::new("wsubscribe");
    let proxy = Cuttable::start();
    proxy.set_hold_events(true);
    let (w, a) = watching_alpha_through(&c, &proxy);
    proxy.wait_held();

    docker_ok(&["update", "--restart", "no", &a.name()]);
    let mark = w.mark();
    proxy.set_hold_events(false);
    c.wait_policy_put_back(&w, "alpha", &a, "once the subscription is up");
    let v = w.wait_started(mark, "engine-event");
    assert_eq!(v["docker_event"], "update", "{v}");
}

/// In `--log-format json`, the "reconcile started" line of an engine-triggered reconcile must
/// keep `"event":"reconcile"` (what log shippers filter on). (Was a bug until bd90b23: the
/// Docker action was added as a field named `event`, overwriting the line's own:
/// `{"event":"kill","msg":"reconcile started","trigger":"engine-event",...}`.)
#[test]
fn engine_triggered_reconciles_are_logged_as_reconcile_events() {
    let c = Case::new("wevfield");
    let m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");
    let mark = w.mark();
    docker_ok(&["rm", "-f", &a.name()]);
    let v = w.wait_started(mark, "engine-event");
    assert_eq!(v["event"], "reconcile", "{v}");
}

/// Blocked outposts go ahead as soon as what blocks them moves, not at the next interval (1 h
/// here): the container holding a host port is removed, the container in the way of a name
/// is renamed, the missing network is created, the `pull: never` images arrive (one tagged,
/// one pulled from the registry). Each starts one reconcile, logged with what moved; a
/// container outside the project that blocks nothing comes and goes without a reconcile,
/// and so does an image no outpost waits for.
#[test]
fn a_blocked_outpost_goes_ahead_when_what_blocks_it_moves() {
    require_registry();
    let c = Case::new("wunblock");
    let mut m = c.env.manifest();
    let mut web = c.outpost("proxy", "AK_WEB");
    let taken = c.env.publish(&mut web)["9443/tcp"];
    m["outposts"]["Web"] = web;
    let net = c.name("net");
    let mut netless = c.outpost("ldap", "AK_NETLESS");
    netless["config"]["docker_network"] = json!(net);
    m["outposts"]["Netless"] = netless;
    let image = format!("outpostctl-test/outpost:unblock-{}", std::process::id());
    let mut strict = c.outpost("radius", "AK_STRICT");
    strict["pull"] = json!("never");
    strict["config"]["container_image"] = json!(image);
    m["outposts"]["Strict"] = strict;
    // Only e2e_registry, another test binary, uses this image.
    let pulled_image = format!("{REGISTRY}/outpostctl/outpost:2");
    let _ = docker(&["rmi", &pulled_image]);
    c.env.track_image_tag(&pulled_image);
    let mut pulled = c.outpost("rac", "AK_PULLED");
    pulled["pull"] = json!("never");
    pulled["config"]["container_image"] = json!(pulled_image);
    m["outposts"]["Pulled"] = pulled;
    m["outposts"]["Named"] = c.outpost("rac", "AK_NAMED");
    c.save("m/outposts.yaml", &m);
    let holder = c.name("port-holder");
    c.env.docker_container(
        "run",
        &holder,
        &["-d", "-p", &format!("127.0.0.1:{taken}:9443"), IMAGE_V1],
    );
    let in_way = c.name("named");
    c.env.docker_container("create", &in_way, &[IMAGE_V1]);
    c.env.track_image_tag(&image);

    let w = c.watch("m", &[]);
    w.wait_reconciled(0, "ending the first reconcile");
    let blocked: BTreeSet<String> = w
        .logs(0)
        .iter()
        .filter(|v| v["event"] == "blocked")
        .filter_map(|v| v["outpost"].as_str().map(String::from))
        .collect();
    assert_eq!(
        blocked,
        ["Named", "Netless", "Pulled", "Strict", "Web"]
            .map(String::from)
            .into(),
        "{}",
        w.text()
    );
    w.wait_quiet(Duration::from_millis(500));

    // A container outside the project that blocks nothing: no reconcile.
    let mark = w.mark();
    let bystander = c.name("bystander");
    c.env.docker_container("run", &bystander, &["-d", IMAGE_V1]);
    docker_ok(&["rm", "-f", &bystander]);
    let unrelated = format!("outpostctl-test/outpost:unrelated-{}", std::process::id());
    c.env.track_image_tag(&unrelated);
    docker_ok(&["tag", IMAGE_V1, &unrelated]);
    w.wait_quiet(Duration::from_millis(800));
    assert_eq!(
        w.count(mark, |v| v["msg"] == "reconcile started"),
        0,
        "{}",
        w.text()
    );

    let moved_away = c.name("moved-away");
    c.env.track_container(&moved_away);
    // (outpost, what moves, its name, how)
    type Step<'a> = (&'a str, &'a str, &'a str, Box<dyn Fn() + 'a>);
    let steps: [Step; 5] = [
        (
            "web",
            "container",
            &holder,
            Box::new(|| {
                docker_ok(&["rm", "-f", &holder]);
            }),
        ),
        (
            "named",
            "container",
            &moved_away,
            Box::new(|| {
                docker_ok(&["rename", &in_way, &moved_away]);
            }),
        ),
        (
            "netless",
            "network",
            &net,
            Box::new(|| {
                assert_eq!(c.env.network("net"), net);
            }),
        ),
        (
            "strict",
            "image",
            &image,
            Box::new(|| {
                docker_ok(&["tag", IMAGE_V1, &image]);
            }),
        ),
        (
            "pulled",
            "image",
            &pulled_image,
            Box::new(|| {
                docker_ok(&["pull", "-q", &pulled_image]);
            }),
        ),
    ];
    for (slug, what, name, unblock) in steps {
        let mark = w.mark();
        unblock();
        let started = w.wait_started(mark, "engine-event");
        assert_eq!(started[what], name, "{started}");
        c.wait_running(&w, slug, &format!("once its {what} `{name}` moved"));
    }
    w.wait_reconciled(w.mark().saturating_sub(1), "the last reconcile");
    assert_eq!(c.env.project_containers().len(), 5);
    c.assert_no_secret_in(&w);
}

/// An action that fails for a reason no event reports (a host port held by a process outside
/// Docker) is retried by itself, 5 s later, then less and less often: once the port is free
/// the outpost runs, without a file change, an engine event or the interval (1 h here).
#[test]
fn a_failed_action_is_retried_with_a_backoff() {
    let c = Case::new("wretry");
    let mut m = c.env.manifest();
    let mut web = c.outpost("proxy", "AK_WEB");
    let taken = c.env.publish(&mut web)["9443/tcp"];
    m["outposts"]["Web"] = web;
    c.save("m/outposts.yaml", &m);
    let squatter = std::net::TcpListener::bind(("127.0.0.1", taken)).expect("bind the port");

    let w = c.watch("m", &[]);
    w.wait_log(0, "the failed create of Web", WAIT, |v| {
        v["event"] == "action" && v["action"] == "create" && v["level"] == "error"
    });
    w.wait_reconciled(0, "ending the first reconcile");
    // The first retry, 5 s later, fails again: the next waits 10 s.
    let mark = w.mark();
    w.wait_started(mark, "backoff-retry");
    w.wait_reconciled(mark, "ending the first retry");
    drop(squatter);
    let mark = w.mark();
    c.wait_container(&w, "web", "once the port is free", |_| true);
    w.wait_started(mark, "backoff-retry");
    assert_eq!(
        w.count(0, |v| v["msg"] == "reconcile started"),
        3,
        "start, then two retries; log:\n{}",
        w.text()
    );
    // The retry created a new outpost: the manifests' doing, not drift.
    w.wait_reconciled(mark, "ending the retry that created it");
    assert_eq!(w.metric("outpostctl_drift_corrections_total"), Some(0.0));
    assert_eq!(
        w.metric("outpostctl_changes_applied_total{action=\"create\"}"),
        Some(1.0)
    );
    c.assert_no_secret_in(&w);
}

/// A recreate that fails (the outpost's new host port is held by a process) puts the running
/// container back, and is retried by the backoff only: the events of its own stop, rename
/// and put-back start no reconcile (each would stop the live outpost again). Once the port is
/// free, the retry recreates it.
#[test]
fn a_failed_recreate_is_retried_by_the_backoff_only() {
    let c = Case::new("wrecfail");
    let mut m = c.env.manifest();
    let mut web = c.outpost("proxy", "AK_WEB");
    c.env.publish(&mut web);
    m["outposts"]["Web"] = web;
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let before = c.wait_running(&w, "web", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");
    w.wait_quiet(Duration::from_millis(500));

    let port = c.env.port();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the port");
    m["outposts"]["Web"]["ports"]["9443/tcp"] = json!(format!("127.0.0.1:{port}"));
    let mark = w.mark();
    c.save("m/outposts.yaml", &m);
    w.wait_log(mark, "the failed recreate of Web", WAIT, |v| {
        is_action(v, "recreate", &before.name()) && v["level"] == "error"
    });
    let failed = w.wait_reconciled(mark, "ending the failed reconcile");
    let back = c.wait_running(&w, "web", "put back after the failed recreate");
    assert_eq!(back.id(), before.id(), "the previous container is put back");
    // The port is freed by a process outside Docker: no event says so; the retry, 5 s after
    // the failure, recreates it, and nothing starts before it.
    drop(squatter);
    let after = c.wait_container(&w, "web", "recreated once the port is free", |x| {
        x.id() != before.id()
    });
    let retry = w.wait_started(mark, "backoff-retry");
    let waited = epoch(retry["ts"].as_str().unwrap_or_default())
        - epoch(failed["ts"].as_str().unwrap_or_default());
    assert!(waited >= 4.5, "retried {waited:.1} s after the failure");
    assert_eq!(
        w.count(mark, |v| v["msg"] == "reconcile started"),
        2,
        "only the reconcile of the saved file and the retry; log:\n{}",
        w.text()
    );
    assert!(after.publishes(port), "{:?}", after.port_bindings());
    c.assert_no_secret_in(&w);
}

/// A container removed by hand is put back without a failed action. (Was a bug until
/// bd90b23, a race lost in most rounds: the `kill` event of `docker rm -f` triggered a
/// reconcile while the container was being removed, the plan said `start`, the engine answered
/// 409 "container is marked for removal and cannot be started", and that reconcile failed:
/// /healthz 503, errors_total + 1.)
#[test]
fn a_container_removed_by_hand_comes_back_without_errors() {
    let c = Case::new("wrmrace");
    let m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let mut a = c.wait_running(&w, "alpha", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");
    // Right after the create, as in `containers_removed_or_stopped_by_hand_come_back`; a
    // few rounds, since it is a race (lost in most rounds on the 2-core test machine). Five
    // put-backs in a row run at once.
    for _ in 0..5 {
        w.wait_quiet(Duration::from_millis(300));
        let mark = w.mark();
        docker_ok(&["rm", "-f", &a.name()]);
        let old = a.id();
        a = c.wait_container(&w, "alpha", "after docker rm -f", |x| x.id() != old);
        w.wait_quiet(Duration::from_millis(800));
        let errors: Vec<Value> = w
            .logs(mark)
            .into_iter()
            .filter(|v| v["level"] == "error")
            .collect();
        assert!(
            errors.is_empty(),
            "errors while putting a removed container back: {errors:#?}"
        );
    }
    assert_eq!(w.metric("outpostctl_errors_total"), Some(0.0));

    // The sixth in a row waits (something keeps removing it: another controller?), the log
    // says so, and a timer puts it back with nothing else happening. (Was a bug: the
    // held-back put-back waited for the next interval, an hour here.)
    w.wait_quiet(Duration::from_millis(300));
    let mark = w.mark();
    docker_ok(&["rm", "-f", &a.name()]);
    let old = a.id();
    w.wait_log(mark, "saying the put-back waits", WAIT, |v| {
        v["event"] == "backoff"
            && v["level"] == "warn"
            && v["msg"]
                .as_str()
                .is_some_and(|m| m.contains("`Alpha`") && m.contains("next attempt in"))
    });
    // That reconcile does not read as "no changes": the outpost is down meanwhile.
    w.wait_log(mark, "saying one put-back is held back", WAIT, |v| {
        v["msg"].as_str().is_some_and(|m| {
            m.starts_with("reconcile done") && m.ends_with("1 held back by the put-back backoff")
        })
    });
    c.wait_container(&w, "alpha", "put back after the backoff", |x| x.id() != old);
    w.wait_started(mark, "backoff-retry");
}

// ---------------------------------------------------------------------------------------------
// Shutdown

const SIGTERM_OUTPOSTS: [&str; 8] = ["O1", "O2", "O3", "O4", "O5", "O6", "O7", "O8"];

/// Eight running outposts; an edit that recreates all of them (four at a time); SIGTERM right
/// when the first recreate finished, so that others are in flight. Returns the case, the
/// exited watch, the log mark of the edit, the container ids before, and the exit time.
fn sigterm_during_recreates(tag: &str) -> (Case, Watch, usize, BTreeMap<String, String>, Duration) {
    let c = Case::new(tag);
    let mut m = manifest_with(&c, &SIGTERM_OUTPOSTS);
    c.save("m/outposts.yaml", &m);
    let mut w = c.watch("m", &[]);
    for n in SIGTERM_OUTPOSTS {
        c.wait_running(&w, &n.to_lowercase(), "applied at start");
    }
    w.wait_reconciled(0, "ending the first reconcile");
    w.wait_quiet(Duration::from_millis(800));
    let before: BTreeMap<String, String> = c
        .by_outpost()
        .into_iter()
        .map(|(k, v)| (k, v[0].id()))
        .collect();
    assert_eq!(before.len(), SIGTERM_OUTPOSTS.len());

    let mark = w.mark();
    m["defaults"]["docker_labels"] = json!({ "e2e.watch": "v2" });
    c.save("m/outposts.yaml", &m);
    w.wait_started(mark, "files");
    w.wait_log(mark, "of the first recreate", WAIT, |v| {
        v["event"] == "action"
    });
    c.assert_no_secret_in(&w);
    let took = w.terminate(Duration::from_secs(60));
    (c, w, mark, before, took)
}

/// SIGTERM while a reconcile recreates several outposts: the watch lets the actions in
/// flight finish, starts no new ones, exits 0 within a bounded time, and afterwards every
/// outpost has exactly one container, running, and no parked `*-outpostctl-old` is left.
#[test]
fn sigterm_during_a_reconcile_leaves_nothing_half_done() {
    let (c, w, mark, before, took) = sigterm_during_recreates("wsigterm");
    assert!(took < Duration::from_secs(30), "exit took {took:?}");
    let logs = w.logs(mark);
    assert!(
        logs.iter().any(|v| v["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("signal received"))),
        "{}",
        w.text()
    );
    let finished: Vec<String> = logs
        .iter()
        .filter(|v| v["event"] == "action" && v["level"] == "info" && v["action"] == "recreate")
        .map(|v| v["outpost"].as_str().unwrap_or_default().to_string())
        .collect();
    // Actions that were not started may be logged as such; none may have failed otherwise.
    let failed = logs
        .iter()
        .filter(|v| {
            v["event"] == "action"
                && v["level"] != "info"
                && !v["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("not started"))
        })
        .count();
    assert_eq!(failed, 0, "no action failed:\n{}", w.text());

    let after = c.by_outpost();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "every outpost still has a container"
    );
    let mut recreated = Vec::new();
    for (outpost, cs) in &after {
        assert_eq!(
            cs.len(),
            1,
            "`{outpost}` has {} containers: {:?}",
            cs.len(),
            cs.iter()
                .map(|x| (x.name(), x.status()))
                .collect::<Vec<_>>()
        );
        let x = &cs[0];
        assert!(x.running(), "`{}` is {}", x.name(), x.status());
        assert!(
            !x.name().ends_with("-outpostctl-old"),
            "parked: {}",
            x.name()
        );
        let new = x.id() != before[outpost];
        let labelled = x.label("e2e.watch").as_deref() == Some("v2");
        assert_eq!(
            new,
            labelled,
            "`{}`: a new container iff the new label",
            x.name()
        );
        if new {
            recreated.push(outpost.clone());
        }
    }
    let mut logged = finished.clone();
    logged.sort();
    assert_eq!(
        recreated, logged,
        "the recreated outposts are the ones logged as done"
    );
    assert!(
        recreated.len() < SIGTERM_OUTPOSTS.len(),
        "SIGTERM came too late to stop anything:\n{}",
        w.text()
    );
    eprintln!(
        "SIGTERM during 8 recreates: {} finished, {} not started, exit {took:?} after the signal",
        recreated.len(),
        SIGTERM_OUTPOSTS.len() - recreated.len()
    );
    let parked = c.env.parked();
    assert!(parked.is_empty(), "parked containers left: {parked:?}");
    c.assert_no_secret_in(&w);
}

/// Issue 5: "one log line per action", also for the actions a shutdown keeps from starting.
/// (Was a bug until bd90b23: their "not started: shutting down" outcome was never logged.)
/// Those are warnings saying so, not failures.
#[test]
fn sigterm_logs_the_actions_it_did_not_start() {
    let (_c, w, mark, _before, _took) = sigterm_during_recreates("wsigtermlog");
    let actions = w.count(mark, |v| v["event"] == "action");
    assert_eq!(
        actions,
        SIGTERM_OUTPOSTS.len(),
        "one log line per planned action (done or not started):\n{}",
        w.text()
    );
    let not_started = w.count(mark, |v| {
        v["event"] == "action"
            && v["level"] == "warn"
            && v["msg"]
                .as_str()
                .is_some_and(|m| m.ends_with("not started: shutting down"))
    });
    let failed = w.count(mark, |v| v["event"] == "action" && v["level"] == "error");
    assert!(not_started > 0 && failed == 0, "{}", w.text());
}

// ---------------------------------------------------------------------------------------------
// /healthz and /metrics

/// /healthz answers 200 after a good reconcile and 503 after an invalid edit; /metrics counts
/// reconciles, creates, drift corrections and engine reachability; unknown paths are 404; an
/// idle watch exits 0 on SIGTERM at once.
#[test]
fn healthz_and_metrics_answer() {
    let c = Case::new("wmetrics");
    let mut m = manifest_with(&c, &["Alpha", "Beta"]);
    c.save("m/outposts.yaml", &m);
    let mut w = c.watch("m", &[]);
    c.wait_running(&w, "alpha", "applied at start");
    c.wait_running(&w, "beta", "applied at start");
    w.wait_reconciled(0, "ending the first reconcile");
    let (code, body) = w.http("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = w.http("/metrics");
    assert_eq!(code, 200);
    for needle in [
        "# TYPE outpostctl_reconciles_total counter",
        "outpostctl_changes_applied_total{action=\"create\"} 2\n",
        "outpostctl_changes_applied_total{action=\"remove\"} 0\n",
        "outpostctl_drift_corrections_total 0\n",
        "outpostctl_engine_up{integration=\"local\"} 1\n",
        "outpostctl_last_success_timestamp_seconds ",
        "outpostctl_errors_total 0\n",
    ] {
        assert!(body.contains(needle), "no `{needle}` in /metrics:\n{body}");
    }
    assert!(
        w.metric("outpostctl_reconciles_total{result=\"success\"}")
            .is_some_and(|n| n >= 1.0),
        "{body}"
    );
    let last = w
        .metric("outpostctl_last_success_timestamp_seconds")
        .unwrap();
    assert!((now_epoch() - last).abs() < 120.0, "last success {last}");
    assert_eq!(w.http("/nope").0, 404);

    // A hand-removed container comes back: one more create, one drift correction.
    docker_ok(&["rm", "-f", &c.name("alpha")]);
    c.wait_running(&w, "alpha", "after docker rm -f");
    assert!(
        wait_until(WAIT, || {
            w.metric("outpostctl_drift_corrections_total")
                .is_some_and(|n| n >= 1.0)
                && w.metric("outpostctl_changes_applied_total{action=\"create\"}") == Some(3.0)
        }),
        "{}",
        w.http("/metrics").1
    );

    // An invalid edit fails /healthz and counts a failed reconcile.
    let mark = w.mark();
    m["outposts"]["Alpha"]["integration"] = json!("nowhere");
    c.save("m/outposts.yaml", &m);
    w.wait_log(mark, "with the error", WAIT, |v| v["event"] == "invalid");
    assert!(
        wait_until(WAIT, || w.http("/healthz").0 == 503),
        "{}",
        w.text()
    );
    let (_, body) = w.http("/healthz");
    assert_eq!(
        body, "the last reconcile failed:\n- the manifests are invalid (1 error; see the log)\n",
        "/healthz says why"
    );
    assert!(
        w.metric("outpostctl_reconciles_total{result=\"failure\"}")
            .is_some_and(|n| n >= 1.0)
    );
    m["outposts"]["Alpha"]["integration"] = json!("local");
    let mark = w.mark();
    c.save("m/outposts.yaml", &m);
    w.wait_reconciled(mark, "ending the reconcile of the fix");
    assert!(wait_until(WAIT, || w.http("/healthz").0 == 200));

    // A blocked outpost (its `pull: never` image is not there) is named by /healthz.
    m["outposts"]["Beta"]["pull"] = json!("never");
    m["outposts"]["Beta"]["config"]["container_image"] = json!("outpostctl-e2e/absent:1");
    let mark = w.mark();
    c.save("m/outposts.yaml", &m);
    w.wait_reconciled(mark, "ending the reconcile of the blocked outpost");
    let (code, body) = w.http("/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with(
            "the last reconcile failed:\n- outpost `Beta` (integration `local`) is blocked: "
        ) && body.contains("outpostctl-e2e/absent:1"),
        "{body}"
    );
    // Alive all the same: nothing to restart the watch for.
    let (code, body) = w.http("/livez");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    c.assert_no_secret_in(&w);

    let took = w.terminate(Duration::from_secs(20));
    assert!(
        took < Duration::from_secs(5),
        "an idle watch exits at once, took {took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A container that keeps dying

/// Builds `outpostctl-test/crashing:<project>`: the fake outpost with `/bin/false` as its
/// entry point, so its containers exit 1 at once (and Docker restarts them: unless-stopped).
fn crashing_image(c: &Case) -> String {
    let tag = format!("outpostctl-test/crashing:{}", c.env.project);
    c.env.track_image_tag(&tag);
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", &tag, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker build runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("FROM {IMAGE_V1}\nENTRYPOINT [\"/bin/false\"]\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("docker build finishes");
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tag
}

fn crashing_case(tag: &str) -> (Case, Watch) {
    let c = Case::new(tag);
    let image = crashing_image(&c);
    let mut m = manifest_with(&c, &["Alpha"]);
    m["outposts"]["Alpha"]["config"] = json!({ "container_image": image });
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let name = c.name("alpha");
    assert!(
        wait_until(WAIT, || inspect(&name).is_some()),
        "{}",
        w.text()
    );
    (c, w)
}

/// Whether `v` is the watch's line saying container `name` keeps dying (its events muted).
fn keeps_dying(v: &Value, name: &str) -> bool {
    v["event"] == "backoff"
        && v["container"] == name
        && v["msg"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("container `{name}` keeps dying")))
}

/// A container that exits at once, over and over, does not make the watch reconcile in a
/// tight loop: once it has died three times its deaths start no reconcile for a while (5 s
/// at first), though it goes on dying; and the container is not removed or duplicated.
#[test]
fn a_crashing_container_does_not_make_it_loop() {
    let (c, w) = crashing_case("wcrash");
    let name = c.name("alpha");
    let dying = w.wait_log(
        0,
        "saying the container keeps dying",
        Duration::from_secs(40),
        |v| keeps_dying(v, &name),
    );
    let msg = dying["msg"].as_str().unwrap_or_default();
    let muted_for: f64 = msg
        .rsplit_once("ignored for ")
        .and_then(|(_, s)| s.strip_suffix('s')?.parse().ok())
        .unwrap_or_else(|| panic!("no mute in {msg}"));
    let from = epoch(dying["ts"].as_str().unwrap_or_default());
    let until = from + muted_for;
    // By the watch's clock (the log's): wait until the mute is over, then look back.
    while now_epoch() < until + 0.5 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let deaths = docker_ok(&[
        "events",
        "--since",
        &format!("{from:.3}"),
        "--until",
        &format!("{until:.3}"),
        "--filter",
        &format!("container={name}"),
        "--filter",
        "event=die",
        "--format",
        "{{.TimeNano}}",
    ]);
    assert!(
        deaths.lines().count() >= 1,
        "it did not die while muted ({muted_for} s from {from:.3}): the test saw nothing"
    );
    let reconciles: Vec<Value> = w
        .logs(0)
        .into_iter()
        .filter(|v| v["msg"] == "reconcile started" && v["trigger"] == "engine-event")
        .filter(|v| {
            let t = epoch(v["ts"].as_str().unwrap_or_default());
            t > from && t < until
        })
        .collect();
    assert!(
        reconciles.is_empty(),
        "its {} deaths started reconciles while muted:\n{}",
        deaths.lines().count(),
        w.text()
    );
    let cs = c.by_outpost();
    assert_eq!(cs.len(), 1);
    assert_eq!(cs["Alpha"].len(), 1, "one container");
    assert!(
        cs["Alpha"][0].0["RestartCount"].as_u64().unwrap_or(0) >= 2,
        "it does keep dying: {:?}",
        cs["Alpha"][0].0["RestartCount"]
    );
    c.assert_no_secret_in(&w);
}

/// The log must say when a container keeps dying (issue 5: "put back with exponential
/// backoff ... and the log says so"). (Was a bug until bd90b23: Docker's restart policy puts a
/// crashing container back, the plan saw `restarting` as fine, and a no-op reset the strike
/// count, so no "keeps dying" line was ever written.) While its events are ignored, one that
/// says it was removed by hand is not: the outpost is put back at once. (Was a bug: the
/// removal waited for the interval.)
#[test]
fn a_crashing_container_is_reported_as_keeps_dying() {
    let (c, w) = crashing_case("wcrashlog");
    w.wait_log(
        0,
        "saying the container keeps dying",
        Duration::from_secs(40),
        |v| keeps_dying(v, &c.name("alpha")),
    );
    let name = c.name("alpha");
    let muted = c.env.container(&name);
    docker_ok(&["rm", "-f", &name]);
    let back = wait_until(WAIT, || {
        inspect(&name).is_some_and(|x| x.id() != muted.id())
    });
    assert!(
        back,
        "not put back while its events were ignored:\n{}",
        w.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Benchmarks (ignored; see the module comment and BENCHMARKS.md)

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn summary(label: &str, v: &mut [f64]) {
    let n = v.len();
    let min = percentile(v, 0.0);
    let med = percentile(v, 0.5);
    let max = percentile(v, 1.0);
    println!("{label}: n={n} min={min:.0} ms median={med:.0} ms max={max:.0} ms");
}

/// (1) Time from a saved edit (rename) to "reconcile started trigger=files", for edits that
/// change nothing (a comment) and for edits that recreate the container; for the latter also
/// to the new container running.
#[test]
#[ignore = "benchmark"]
fn bench_watch_edit_to_apply() {
    let c = Case::new("bwedit");
    let mut m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let a = c.wait_running(&w, "alpha", "applied at start");
    c.env.wait_healthy(&a.name(), WAIT);
    w.wait_quiet(Duration::from_millis(1000));

    let path = c.mdir().join("outposts.yaml");
    let mut noop = Vec::new();
    for i in 0..20 {
        let mark = w.mark();
        let text = format!("{}# edit {i}\n", to_yaml(&m));
        let t0 = now_epoch();
        save_text(&path, &text);
        let v = w.wait_started(mark, "files");
        noop.push((epoch(v["ts"].as_str().unwrap()) - t0) * 1000.0);
        w.wait_reconciled(mark, "done");
        w.wait_quiet(Duration::from_millis(500));
    }
    let mut to_start = Vec::new();
    let mut to_running = Vec::new();
    for i in 0..8 {
        let mark = w.mark();
        m["outposts"]["Alpha"]["config"] =
            json!({ "docker_labels": { "e2e.bench": i.to_string() } });
        let t0 = now_epoch();
        c.save("m/outposts.yaml", &m);
        let v = w.wait_started(mark, "files");
        to_start.push((epoch(v["ts"].as_str().unwrap()) - t0) * 1000.0);
        let x = c.wait_container(&w, "alpha", "recreated", |x| {
            x.label("e2e.bench").as_deref() == Some(&i.to_string())
        });
        let started = epoch(x.0["State"]["StartedAt"].as_str().unwrap());
        to_running.push((started - t0) * 1000.0);
        c.env.wait_healthy(&x.name(), WAIT);
        w.wait_quiet(Duration::from_millis(1000));
    }
    println!("debounce {DEBOUNCE}");
    summary(
        "save -> reconcile started (comment edit, no change)",
        &mut noop,
    );
    summary(
        "save -> reconcile started (label edit, recreate)",
        &mut to_start,
    );
    summary(
        "save -> new container running (label edit, recreate)",
        &mut to_running,
    );
}

/// (2) Time from `docker rm -f` of a managed container to its replacement running (Docker's
/// StartedAt of the new container).
#[test]
#[ignore = "benchmark"]
fn bench_watch_removed_to_running() {
    let c = Case::new("bwremove");
    let m = manifest_with(&c, &["Alpha"]);
    c.save("m/outposts.yaml", &m);
    let w = c.watch("m", &[]);
    let mut a = c.wait_running(&w, "alpha", "applied at start");
    c.env.wait_healthy(&a.name(), WAIT);
    w.wait_quiet(Duration::from_millis(1000));
    let mut to_event = Vec::new();
    let mut to_running = Vec::new();
    for _ in 0..10 {
        let mark = w.mark();
        let t0 = now_epoch();
        docker_ok(&["rm", "-f", &a.name()]);
        let rm_took = (now_epoch() - t0) * 1000.0;
        let v = w.wait_started(mark, "engine-event");
        to_event.push((epoch(v["ts"].as_str().unwrap()) - t0) * 1000.0);
        let old = a.id();
        let x = c.wait_container(&w, "alpha", "back", |x| x.id() != old);
        let started = epoch(x.0["State"]["StartedAt"].as_str().unwrap());
        to_running.push((started - t0) * 1000.0);
        println!("  docker rm -f took {rm_took:.0} ms");
        c.env.wait_healthy(&x.name(), WAIT);
        w.wait_quiet(Duration::from_millis(1000));
        a = x;
    }
    summary(
        "docker rm -f issued -> reconcile started (engine-event)",
        &mut to_event,
    );
    summary(
        "docker rm -f issued -> replacement running (StartedAt)",
        &mut to_running,
    );
}

/// /proc/<pid>/status VmRSS and VmHWM in kB; utime+stime in clock ticks.
fn proc_stats(pid: u32) -> (u64, u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3, utime 14 and stime 15 (1-based over the whole line).
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    (kb("VmRSS:"), kb("VmHWM:"), ticks)
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// (3) Resident memory and CPU of an idle watch over 500 outposts (rac, network `none`, no
/// published ports), created through `outpostctl apply` and removed 10 at a time afterwards.
/// `OUTPOSTCTL_BENCH_WATCH_N` sets another number of outposts.
/// `n` rac outposts (no network, no ports) with one token, for the idle benchmarks.
fn idle_manifest(c: &Case, n: usize) -> Value {
    c.token("AK_BENCH");
    let mut m = c.env.manifest();
    m["defaults"]["docker_network"] = json!("none");
    m["defaults"]["docker_map_ports"] = json!(false);
    for i in 0..n {
        let name = format!("o{i:03}");
        m["outposts"][&name] = json!({
            "type": "rac",
            "uuid": c.env.uuid(&name),
            "integration": "local",
            "token": { "env": "AK_BENCH" },
        });
    }
    m
}

/// The line that ends the watch's start reconcile.
fn start_reconcile_done(w: &Watch, timeout: Duration) -> Value {
    w.wait_log(0, "ending the start reconcile", timeout, |v| {
        v["event"] == "reconcile"
            && v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("reconcile done"))
    })
}

/// 30 s of an idle watch: its resident memory, CPU time and log lines, as one line.
fn idle_for_30s(w: &Watch) -> String {
    let pid = w.pid();
    let hz = clock_ticks();
    let (rss0, _, t0) = proc_stats(pid);
    let mark = w.mark();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let secs = start.elapsed().as_secs_f64();
    let (rss1, hwm, t1) = proc_stats(pid);
    format!(
        "{secs:.0} s: VmRSS {rss0} kB -> {rss1} kB (peak VmHWM {hwm} kB), CPU {:.2} s ({:.3}% of one core), {} log lines",
        (t1 - t0) as f64 / hz,
        (t1 - t0) as f64 / hz / secs * 100.0,
        w.mark() - mark
    )
}

#[test]
#[ignore = "benchmark"]
fn bench_watch_idle_500() {
    let n: usize = std::env::var("OUTPOSTCTL_BENCH_WATCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let c = Case::new("bwidle");
    let m = idle_manifest(&c, n);
    c.save("m/outposts.yaml", &m);

    let mut apply = Command::new(common::bin());
    apply
        .current_dir(c.env.dir())
        .args(["apply", "--auto-approve", "m"])
        .env("NO_COLOR", "1");
    for (k, v) in c.tokens.lock().unwrap().iter() {
        apply.env(k, v);
    }
    let t = Instant::now();
    let r = run_with_timeout(apply, Duration::from_secs(4 * 3600));
    let apply_took = t.elapsed();
    assert_eq!(r.code, 0, "{}", shown(&r));
    c.env.assert_no_secret("apply output", &r.stdout);
    println!("apply of {n} creates: {:.1} s", apply_took.as_secs_f64());
    let ids: Vec<String> = docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label={LABEL_PROJECT}={}", c.env.project),
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect();
    println!("running containers: {}", ids.len());
    // Let every container pass its first health check, so that the idle period has no
    // `health_status` events.
    let t = Instant::now();
    let all_healthy = wait_until(Duration::from_secs(900), || {
        docker_ok(&[
            "ps",
            "--filter",
            &format!("label={LABEL_PROJECT}={}", c.env.project),
            "--format",
            "{{.Status}}",
        ])
        .lines()
        .all(|l| l.contains("(healthy)"))
    });
    println!(
        "all healthy: {all_healthy} after {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut w = c.watch("m", &[]);
    let done = start_reconcile_done(&w, Duration::from_secs(600));
    println!(
        "start reconcile over {n} (no changes): {} ms ({})",
        done["duration_ms"], done["msg"]
    );
    // Health events of 500 containers may still come in: let them pass.
    w.wait_quiet(Duration::from_secs(5));
    let idle = idle_for_30s(&w);
    let health = docker_ok(&[
        "ps",
        "--filter",
        &format!("label={LABEL_PROJECT}={}", c.env.project),
        "--format",
        "{{.Status}}",
    ]);
    let unhealthy = health.lines().filter(|l| !l.contains("(healthy)")).count();
    println!("containers not healthy at the end of the idle period: {unhealthy}");
    println!("idle over {idle}");
    c.assert_no_secret_in(&w);
    let took = w.terminate(Duration::from_secs(60));
    println!("SIGTERM -> exit: {} ms", took.as_millis());
    c.assert_no_secret_in(&w);

    let all: Vec<String> = docker_ok(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label={LABEL_PROJECT}={}", c.env.project),
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect();
    let t = Instant::now();
    for batch in all.chunks(10) {
        let mut args = vec!["rm", "-f"];
        args.extend(batch.iter().map(String::as_str));
        let _ = docker(&args);
    }
    println!(
        "removed {} containers, 10 at a time: {:.1} s",
        all.len(),
        t.elapsed().as_secs_f64()
    );
}

/// (3b) The same idle watch over 500 outposts, with no engine behind the integration (a
/// closed loopback port): what holding the manifest set costs, without the containers (and
/// without loading the 2-core test machine with 500 containers' health checks).
#[test]
#[ignore = "benchmark"]
fn bench_watch_idle_500_engine_down() {
    let n: usize = std::env::var("OUTPOSTCTL_BENCH_WATCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let c = Case::new("bwidledown");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut m = idle_manifest(&c, n);
    m["integrations"] = json!({ "local": { "url": format!("http://127.0.0.1:{port}") } });
    c.save("m/outposts.yaml", &m);
    let mut w = c.watch("m", &[]);
    let done = start_reconcile_done(&w, Duration::from_secs(120));
    println!(
        "start reconcile over {n}, engine down: {} ms ({})",
        done["duration_ms"], done["msg"]
    );
    w.wait_quiet(Duration::from_secs(3));
    println!("idle over {}, engine down", idle_for_30s(&w));
    c.assert_no_secret_in(&w);
    w.terminate(Duration::from_secs(30));
    c.assert_no_secret_in(&w);
}
