//! `cargo bench --bench plan`: outpostctl on the real Docker engine (issue 3, "Speed").
//!
//! 1. **apply of 100 outposts from nothing** (`OUTPOSTCTL_BENCH_APPLY_SIZE`) against plain
//!    loops that create and start the same containers with the same parallelism (4 at a
//!    time, outpostctl's `PARALLEL_PER_ENGINE`): a loop of `docker create` + `docker start`
//!    (the Docker CLI, four threads, like `xargs -P4`), and the same through bollard
//!    directly (four concurrent create + start, the API-level floor). Same engine, image,
//!    environment, labels, network, restart policy and health check: `/bin/sh -c "/rac
//!    healthcheck"` for all three (the Docker CLI can only create that shell form,
//!    CMD-SHELL; outpostctl's manifests and the bollard loop give the same command in exec
//!    form, so every container runs the same processes). Rounds rotate the order; every
//!    round starts from nothing (the containers of the previous one are removed, untimed). A
//!    round in which outpostctl had to wait for another run's lock on the engine is done
//!    again as a whole (all three methods: the other run weighed on the loops too).
//! 2. **plan with nothing to change** for 10, 100 and 1,000 outposts on one engine: one
//!    project per size, all present at once, created once (timed as well). For each:
//!    - in-process: `connect_all` + `plan::build` (what `outpostctl plan` does besides
//!      validation; `build` runs `plan_engine` per engine), with the number of API requests
//!      from `Engine::requests()`, and, measured apart, `engine.list()` (the engine's answer
//!      and outpostctl's parsing of it) and the diff;
//!    - the release binary `outpostctl plan --detailed-exitcode DIR` (exit 0: no changes),
//!      run with `DOCKER_HOST` at a pass-through proxy on a unix socket (`plan/proxy.rs`) in
//!      front of the engine's socket, which counts the binary's requests and times each one
//!      from its first byte's arrival to its answer's last byte forwarded. Per run: wall
//!      (spawn to exit), the engine's list in the run (that span for the list request),
//!      before the list (spawn to its first byte), after the list (its answer forwarded to
//!      exit), outpostctl's part = wall - the list in the run. Medians of each, wall min-max,
//!      mean user+sys (`getrusage` of the children, in µs). After each run the engine alone:
//!      the binary's list request sent raw (bytes read to the answer's end, not parsed), to
//!      the engine's socket and through the proxy (the proxy's cost). The binary's request
//!      count must be the same in every run and for every size (the benchmark fails
//!      otherwise); the requests' paths are shown;
//!    - the same with `--inspect` (one inspect per container): requests and the binary.
//!
//! Goals: the same small number of requests for 10 and 1,000 outposts; under 150 ms wall for
//! 1,000; apply no slower than the loop.
//!
//! Outposts are `rac` (no ports) with `docker_map_ports: false` and `docker_network: none`, so
//! that 1,000 running containers need no veth pairs nor bridge ports. Sets of up to
//! `OUTPOSTCTL_BENCH_APPLY_MAX` (100) outposts are created by `outpostctl apply`. Larger ones
//! cannot be, on a small machine: every outpost container runs authentik's health check every
//! 5 s (a `docker exec` each), and 1,000 of them need far more than 2 cores just for that. So
//! the benchmark creates those containers itself through the API, exactly as outpostctl would
//! (name, image, environment, every label including the config hash, network, restart
//! policy) but without a health check; outpostctl's plan cannot tell them apart (it plans from
//! the list: uuid, config hash, name, state, networks, health) and has nothing to change.
//!
//! Every container of the benchmark's projects is removed at the end, also when it fails;
//! leftovers of an interrupted run are removed at the start.
//!
//! Arguments select sections: `apply`, `plan` (default both). Environment:
//! `OUTPOSTCTL_BENCH_SIZES` (default `10,100,1000`), `OUTPOSTCTL_BENCH_ROUNDS` (apply rounds,
//! default 3), `OUTPOSTCTL_BENCH_RUNS` (plan runs per size, default 15),
//! `OUTPOSTCTL_BENCH_APPLY_MAX` (largest set created by `outpostctl apply`, default 100),
//! `OUTPOSTCTL_BENCH_APPLY_SIZE` (outposts in the apply comparison, default 100),
//! `OUTPOSTCTL_BENCH_PER_RUN=1` (print each proxied run's timeline to stderr),
//! `OUTPOSTCTL_BENCH_IMAGE_BY_ID=1` (the plan projects' outposts set `image_by_id: true`: their
//! containers are made from the image's id, which the engine lists without a lookup),
//! `OUTPOSTCTL_BENCH_KEEP=DIR` (write the manifests under DIR and keep the plan projects'
//! containers at the end, for profiling a plan by hand; the next run removes them). Remove
//! them before running the tests: 1,000 running containers make `e2e_engine_restart`'s
//! restart of the engine time out (containerd cleans up a shim at a time).

#[path = "../tests/remote_bench_support/mod.rs"]
mod support;

#[path = "plan/proxy.rs"]
mod proxy;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{CreateContainerOptions, StartContainerOptions};
use futures_util::StreamExt;
use outpostctl::desired::{ContainerSpec, LABEL_IMAGE, LABEL_UUID};
use outpostctl::diff::{ActionKind, DiffOptions};
use outpostctl::engine::connect::connect_all;
use outpostctl::plan::build;
use proxy::Proxy;
use support::*;

const IMAGE: &str = "ghcr.io/goauthentik/rac:2026.8.0";
/// The containers of both loops.
const LOOP_PROJECT: &str = "outpostctl-bench-loop";
/// Containers created at once by the loops, as outpostctl's apply does per engine.
const PARALLEL: usize = outpostctl::apply::PARALLEL_PER_ENGINE;
/// Outposts in the apply comparison (`OUTPOSTCTL_BENCH_APPLY_SIZE`).
const APPLY_SIZE: usize = 100;
/// New outposts per apply when creating the plan projects.
const STEP: usize = 100;
/// Attempts at an apply round that had to wait for another run's lock on the engine.
const ATTEMPTS: usize = 5;
/// outpostctl's containers in the apply comparison.
const APPLY_PROJECT: &str = "outpostctl-bench-apply";

fn project(n: usize) -> String {
    format!("outpostctl-bench-plan-{n}")
}

fn env_list(key: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(key)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The running containers of `project`.
fn running(project: &str) -> usize {
    let filter = format!("label={LABEL_PROJECT}={project}");
    docker(&[
        "ps",
        "-q",
        "--filter",
        &filter,
        "--filter",
        "status=running",
    ])
    .map(|o| o.stdout.split_whitespace().count())
    .unwrap_or(0)
}

/// The loop's copy of a spec's labels: its own project, a uuid no outpost has.
fn loop_labels(spec: &ContainerSpec) -> Vec<(String, String)> {
    spec.labels
        .iter()
        .map(|(k, v)| match k.as_str() {
            LABEL_PROJECT => (k.clone(), LOOP_PROJECT.to_string()),
            LABEL_UUID => (k.clone(), format!("loop{v}")),
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

/// The command of `spec`'s health check `CMD /bin/sh -c CMD` (see `APPLY_HEALTH_SHELL`), for
/// the CLI's `--health-cmd`.
fn shell_health_cmd(spec: &ContainerSpec) -> String {
    match spec.healthcheck.test.as_slice() {
        [_, sh, c, cmd] if sh == "/bin/sh" && c == "-c" => cmd.clone(),
        other => fail(&format!(
            "{}: health check {other:?} is not `CMD /bin/sh -c ...`",
            spec.name
        )),
    }
}

/// `docker create` + `docker start` per spec, `PARALLEL` threads; returns failures.
fn cli_loop(specs: &[ContainerSpec]) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let specs = Arc::new(specs.to_vec());
    let threads: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let next = Arc::clone(&next);
            let specs = Arc::clone(&specs);
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(spec) = specs.get(i) else { break };
                    let mut args: Vec<String> = vec![
                        "create".into(),
                        "--name".into(),
                        format!("bench-cli-{}", spec.name),
                        "--network".into(),
                        spec.network.clone().unwrap_or_else(|| "bridge".into()),
                        "--restart".into(),
                        spec.restart_policy.clone(),
                        // The CLI has only the shell form (CMD-SHELL, run as `/bin/sh -c CMD`):
                        // the specs hold that very command in exec form.
                        "--health-cmd".into(),
                        shell_health_cmd(spec),
                        "--health-interval".into(),
                        format!("{}ms", spec.healthcheck.interval_ns / 1_000_000),
                        "--health-retries".into(),
                        spec.healthcheck.retries.to_string(),
                        "--health-start-period".into(),
                        format!("{}ms", spec.healthcheck.start_period_ns / 1_000_000),
                    ];
                    for (k, v) in loop_labels(spec) {
                        args.extend(["--label".into(), format!("{k}={v}")]);
                    }
                    for (k, v) in &spec.env {
                        args.extend(["--env".into(), format!("{k}={}", v.expose())]);
                    }
                    args.push(spec.image.clone());
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let created = match docker(&args) {
                        Ok(o) if o.ok() => o.stdout.trim().to_string(),
                        Ok(o) => {
                            errors.push(format!("docker create: {}", o.stderr.trim()));
                            continue;
                        }
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                    match docker(&["start", &created]) {
                        Ok(o) if o.ok() => {}
                        Ok(o) => errors.push(format!("docker start: {}", o.stderr.trim())),
                        Err(e) => errors.push(e),
                    }
                }
                errors
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| {
            t.join()
                .unwrap_or_else(|_| vec!["a loop thread panicked".into()])
        })
        .collect()
}

/// The create body outpostctl's engine sends for `spec`, with these labels and health check.
fn body(
    spec: &ContainerSpec,
    labels: HashMap<String, String>,
    health: HealthConfig,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        env: Some(
            spec.env
                .iter()
                .map(|(k, v)| format!("{k}={}", v.expose()))
                .collect(),
        ),
        labels: Some(labels),
        healthcheck: Some(health),
        host_config: Some(HostConfig {
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            network_mode: spec.network.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates and starts `name` with `body`.
async fn create_start(
    docker: &Docker,
    name: String,
    body: ContainerCreateBody,
) -> Result<(), String> {
    let opts = CreateContainerOptions {
        name: Some(name),
        ..Default::default()
    };
    let id = docker
        .create_container(Some(opts), body)
        .await
        .map_err(|e| format!("create: {e}"))?
        .id;
    docker
        .start_container(&id, None::<StartContainerOptions>)
        .await
        .map_err(|e| format!("start: {e}"))
}

/// Create + start through bollard, `PARALLEL` at a time; returns failures.
async fn api_loop(docker: &Docker, specs: &[ContainerSpec]) -> Vec<String> {
    let results: Vec<Result<(), String>> = futures_util::stream::iter(specs.iter().map(|spec| {
        let labels = loop_labels(spec).into_iter().collect();
        create_start(
            docker,
            format!("bench-api-{}", spec.name),
            body(
                spec,
                labels,
                outpostctl::engine::docker::health_config(&spec.healthcheck),
            ),
        )
    }))
    .buffer_unordered(PARALLEL)
    .collect()
    .await;
    results.into_iter().filter_map(Result::err).collect()
}

/// `OUTPOSTCTL_BENCH_IMAGE_BY_ID=1`: the plan projects' outposts set `image_by_id: true`.
fn image_by_id() -> bool {
    std::env::var_os("OUTPOSTCTL_BENCH_IMAGE_BY_ID").is_some_and(|v| v == "1")
}

/// The plan project of `size` outposts in `dir`, with its first `k` outposts.
fn write_plan_set(dir: &Path, size: usize, k: usize) {
    write_set(
        dir,
        &project(size),
        LOCAL_INTEGRATION,
        &format!("bplan{size} rac"),
        k,
    );
    if image_by_id() {
        let file = dir.join("project.yaml");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let by_id = text.replacen("defaults:\n", "defaults:\n  image_by_id: true\n", 1);
        if by_id == text {
            fail("project.yaml has no `defaults:` to add `image_by_id` to");
        }
        std::fs::write(&file, by_id).unwrap_or_else(|e| fail(&format!("write {file:?}: {e}")));
    }
}

/// The containers outpostctl would create for `specs` (same name, image, environment, labels
/// with the config hash, network, restart policy), created and started through the API with
/// one difference: no health check. See `plan_section`.
async fn quiet_twins(docker: &Docker, specs: &[ContainerSpec]) -> Vec<String> {
    // With `image_by_id`, from the image's id with its name in a label, as outpostctl does.
    let mut ids = HashMap::new();
    for spec in specs.iter().filter(|s| s.image_by_id) {
        if !ids.contains_key(&spec.image) {
            match docker.inspect_image(&spec.image).await.map(|i| i.id) {
                Ok(Some(id)) => ids.insert(spec.image.clone(), id),
                _ => return vec![format!("inspect image {}", spec.image)],
            };
        }
    }
    let results: Vec<Result<(), String>> = futures_util::stream::iter(specs.iter().map(|spec| {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        let none = HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        let mut body = body(spec, HashMap::new(), none);
        if let Some(id) = ids.get(&spec.image) {
            body.image = Some(id.clone());
            labels.insert(LABEL_IMAGE.into(), spec.image.clone());
        }
        body.labels = Some(labels);
        create_start(docker, spec.name.clone(), body)
    }))
    .buffer_unordered(PARALLEL)
    .collect()
    .await;
    results.into_iter().filter_map(Result::err).collect()
}

/// A bollard client of the engine (DOCKER_HOST, else the default socket).
fn bollard_client(rt: &tokio::runtime::Runtime) -> Docker {
    rt.block_on(async {
        Docker::connect_with_defaults()
            .map_err(|e| e.to_string())?
            .negotiate_version()
            .await
            .map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| {
        fail(&format!(
            "bollard cannot reach the engine: {e}; {HOW_TO_FIX}"
        ))
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Outpostctl,
    Cli,
    Api,
}

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::Outpostctl => "`outpostctl apply --auto-approve` (release binary)",
            Method::Cli => "loop: `docker create` + `docker start`, 4 threads",
            Method::Api => "loop: bollard create + start, 4 concurrent",
        }
    }
}

/// The health check of every container in the apply comparison, the same for all three
/// methods: the Docker CLI can only create the shell form (`--health-cmd`, `CMD-SHELL`, which
/// the engine runs as `/bin/sh -c CMD`), so outpostctl and the bollard loop are given that very
/// command in exec form (`CMD /bin/sh -c CMD`, through the manifests' `healthcheck`): the
/// same processes every 5 s in every container, whichever method created it.
const APPLY_HEALTH_SHELL: &str = "/rac healthcheck";

/// The apply comparison's set: `write_set`'s, each outpost with the shell-form health check.
fn write_apply_set(dir: &Path, project: &str, n: usize) {
    write_set(dir, project, LOCAL_INTEGRATION, "bapply rac", n);
    let file = dir.join("outposts.yaml");
    let text = std::fs::read_to_string(&file).expect("read outposts.yaml");
    let with_check: String = text
        .lines()
        .map(|l| match l.strip_suffix(" }") {
            Some(head) if l.starts_with("  ") => {
                format!("{head}, healthcheck: [/bin/sh, -c, \"{APPLY_HEALTH_SHELL}\"] }}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&file, with_check).expect("write outposts.yaml");
}

/// One timed method of an apply round: its wall time, how busy the machine was, and whether
/// it had to wait for another run's lock on the engine (outpostctl only).
fn apply_once(
    m: Method,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    specs: &[ContainerSpec],
    api: &Docker,
) -> (Duration, Option<f64>, bool) {
    match m {
        Method::Outpostctl => {
            let (t, busy) = machine_busy(|| apply(dir, &[]));
            (t.out.wall, busy, waited_for_lock(&t))
        }
        Method::Cli => {
            let t = Instant::now();
            let (errors, busy) = machine_busy(|| cli_loop(specs));
            if !errors.is_empty() {
                fail(&format!(
                    "the docker CLI loop failed: {}",
                    errors.join("; ")
                ));
            }
            (t.elapsed(), busy, false)
        }
        Method::Api => {
            let t = Instant::now();
            let (errors, busy) = machine_busy(|| rt.block_on(api_loop(api, specs)));
            if !errors.is_empty() {
                fail(&format!("the bollard loop failed: {}", errors.join("; ")));
            }
            (t.elapsed(), busy, false)
        }
    }
}

fn apply_section(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    projects: &Projects,
    rounds: usize,
    size: usize,
) {
    let dir = tmp.join(format!("apply-{size}"));
    let p = APPLY_PROJECT.to_string();
    write_apply_set(&dir, &p, size);
    let v = validated(&dir);
    let specs: Vec<ContainerSpec> = v.desired.get("engine").cloned().unwrap_or_default();
    assert_eq!(specs.len(), size);
    let shell_form = ["CMD", "/bin/sh", "-c", APPLY_HEALTH_SHELL];
    if let Some(s) = specs.iter().find(|s| s.healthcheck.test != shell_form) {
        fail(&format!(
            "{}: health check {:?}, not {shell_form:?}",
            s.name, s.healthcheck.test
        ));
    }
    let api = bollard_client(rt);
    let methods = [Method::Outpostctl, Method::Cli, Method::Api];
    let mut walls: HashMap<&str, Vec<f64>> = HashMap::new();
    println!("\n### apply of {size} outposts from nothing ({rounds} rounds, order rotated)\n");
    println!(
        "Health check of every container, whichever method: `/bin/sh -c \"{APPLY_HEALTH_SHELL}\"` \
         every 5 s (the CLI's `--health-cmd`, CMD-SHELL; outpostctl and bollard: the same command \
         in exec form). A round in which outpostctl waited for another run's lock on the engine \
         is done again as a whole, all three methods.\n"
    );
    println!("| round | method | wall (s) | machine busy (cores) |");
    println!("|---:|---|---:|---:|");
    for r in 0..rounds {
        // Another run holding the engine's lock would make outpostctl's time a measure of its
        // apply, and the other run's work weighs on the loops as well: such a round is done
        // again, every method (the round's containers are removed after each method).
        let mut attempt = 1;
        let rows = loop {
            let mut rows = Vec::new();
            let mut waited = false;
            for k in 0..methods.len() {
                let m = methods[(k + r) % methods.len()];
                let (wall, busy, w) = apply_once(m, rt, &dir, &specs, &api);
                let owner = if m == Method::Outpostctl {
                    p.as_str()
                } else {
                    LOOP_PROJECT
                };
                if w {
                    waited = true;
                    projects.remove(owner);
                    break;
                }
                let up = running(owner);
                if up != size {
                    fail(&format!(
                        "{}: {up} of {size} containers are running",
                        m.label()
                    ));
                }
                projects.remove(owner);
                rows.push((m, wall, busy));
            }
            if !waited {
                break rows;
            }
            if attempt == ATTEMPTS {
                fail(&format!(
                    "the engine stayed locked by other runs for {ATTEMPTS} attempts at round {}",
                    r + 1
                ));
            }
            attempt += 1;
            eprintln!(
                "round {}: outpostctl waited for another run's lock on the engine; doing the \
                 whole round again (attempt {attempt} of {ATTEMPTS})",
                r + 1
            );
        };
        for (m, wall, busy) in rows {
            println!(
                "| {} | {} | {:.2} | {} |",
                r + 1,
                m.label(),
                wall.as_secs_f64(),
                busy.map_or("?".into(), |b| format!("{b:.2}"))
            );
            walls.entry(m.label()).or_default().push(wall.as_secs_f64());
        }
    }
    let med = |m: Method| median(walls.get(m.label()).map(Vec::as_slice).unwrap_or(&[]));
    let tool = med(Method::Outpostctl);
    println!("\n| method | median wall (s) | per container (ms) | outpostctl / this |");
    println!("|---|---:|---:|---:|");
    for m in methods {
        let w = med(m);
        println!(
            "| {} | {w:.2} | {:.0} | {:.2} |",
            m.label(),
            w * 1000.0 / size as f64,
            tool / w
        );
    }
    let cli = med(Method::Cli);
    println!(
        "\ngoal (outpostctl no slower than the `docker create` + `docker start` loop): {} \
         (outpostctl takes {:.2}x the loop's time)",
        if tool <= cli { "met" } else { "NOT met" },
        tool / cli
    );
}

struct InProcess {
    connect_ms: f64,
    plan_ms: f64,
    total_ms: f64,
    list_ms: f64,
    diff_ms: f64,
    requests: u64,
    observed: usize,
}

/// What `outpostctl plan` does after validation, in-process and one after the other:
/// `connect_all` (one engine here, the API version negotiated through `/_ping`) and
/// `plan::build` (`plan_engine` per engine); median of `runs` after a warm-up. Also the
/// engine's list alone and the diff alone. (The binary overlaps the connect and the list
/// with the validation of the outposts.)
async fn in_process(v: &outpostctl::validate::Validated, n: usize, runs: usize) -> InProcess {
    let desired = v.desired.get("engine").map(Vec::as_slice).unwrap_or(&[]);
    let (mut c, mut p, mut t, mut l, mut d) = (vec![], vec![], vec![], vec![], vec![]);
    let mut requests = Vec::new();
    let mut observed = 0;
    for i in 0..=runs {
        let t0 = Instant::now();
        let engines = connect_all(v).await;
        let t1 = Instant::now();
        let plan = build(v, &engines, DiffOptions::default()).await;
        let t2 = Instant::now();
        let engine = match engines.get("engine") {
            Some(Ok(e)) => Arc::clone(e),
            Some(Err(e)) => fail(&format!("cannot connect to the engine: {e}; {HOW_TO_FIX}")),
            None => fail("no engine `engine` in the set"),
        };
        let changes: Vec<String> = plan
            .integrations
            .iter()
            .flat_map(|e| {
                e.error.iter().cloned().chain(
                    e.actions
                        .iter()
                        .filter(|a| a.action != ActionKind::Noop)
                        .map(|a| format!("{} {}", a.action.as_str(), a.name)),
                )
            })
            .collect();
        let unchanged = plan.summary().unchanged;
        if !changes.is_empty() || unchanged != n {
            fail(&format!(
                "the plan for {n} outposts is not \"nothing to change\" ({unchanged} unchanged): {}",
                changes
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        requests.push(engine.requests());
        // The parts: one list, and the diff on what it returned.
        let t3 = Instant::now();
        let list = engine
            .list()
            .await
            .unwrap_or_else(|e| fail(&format!("list failed: {e}")));
        let t4 = Instant::now();
        let _ = outpostctl::diff::diff(&v.project, desired, &list, DiffOptions::default());
        let t5 = Instant::now();
        observed = list.len();
        if i > 0 {
            c.push(ms(t1 - t0));
            p.push(ms(t2 - t1));
            t.push(ms(t2 - t0));
            l.push(ms(t4 - t3));
            d.push(ms(t5 - t4));
        }
    }
    requests.sort_unstable();
    requests.dedup();
    if requests.len() != 1 {
        fail(&format!(
            "the request count varies between runs: {requests:?}"
        ));
    }
    InProcess {
        connect_ms: median(&c),
        plan_ms: median(&p),
        total_ms: median(&t),
        list_ms: median(&l),
        diff_ms: median(&d),
        requests: requests[0],
        observed,
    }
}

/// How the binary's runs are measured, printed above their table.
fn binary_method(upstream: &Path) -> String {
    format!(
        "The binary runs with `DOCKER_HOST=unix://<tmp>/proxy.sock`: a pass-through proxy started \
         by the benchmark in front of the engine's socket ({}), two threads per connection \
         copying the bytes unchanged both ways and parsing just enough HTTP/1.1 to time each \
         request from its first byte's arrival from the binary to the forwarding of the last \
         byte of the engine's answer. Per run: wall (spawn to exit); the engine's list in the \
         run (that span for the binary's one `GET /…/containers/json`, the proxy's copying \
         included); before the list (spawn to that request's first byte: process start, reading \
         the manifests, connect and `/_ping`); after the list (its answer's last byte forwarded \
         to exit: reading the answer, whatever is left of validating the outposts, which runs \
         while the list is under way, diff, rendering, exit); outpostctl's part = wall − the engine's \
         list in the run (before + after). Medians over the runs, but wall min–max. The engine \
         alone: after each run, the binary's own list request sent raw (connection made first, \
         untimed; first byte written to the answer's last byte read, body not parsed) to the \
         engine's socket and through the proxy, alternately first: their difference is the \
         proxy's cost. user+sys: mean. list answer: its size as forwarded, head included.",
        upstream.display()
    )
}

/// One run of the binary through the proxy, in ms.
struct ProxiedRun {
    timed: Timed,
    wall: f64,
    /// Spawn to the list request's first byte at the proxy.
    before: f64,
    /// The list request's first byte to its answer's last byte forwarded.
    list: f64,
    /// The list's answer forwarded to the process's exit.
    after: f64,
    /// `METHOD path` of each request, in the order they were sent.
    requests: Vec<String>,
    /// The list request's target (path and query), to send again raw.
    list_target: String,
    list_bytes: u64,
}

/// Runs `cmd` (stdin closed, output captured, killed after `OUTPOSTCTL_TIMEOUT`): what it
/// said, when it was spawned and when it exited.
fn spawn_timed(cmd: Command) -> (Out, Instant, Instant) {
    support::run_timed(cmd, OUTPOSTCTL_TIMEOUT).unwrap_or_else(|e| fail(&e))
}

/// `outpostctl plan --detailed-exitcode DIR` with DOCKER_HOST at the proxy; must say "no
/// changes" (exit 0) with exactly one list request, every request answered.
fn plan_through_proxy(dir: &Path, proxy: &Proxy) -> ProxiedRun {
    let d = dir.display().to_string();
    let mut cmd = Command::new(binary());
    cmd.args(["plan", "--detailed-exitcode", &d])
        .env("DOCKER_HOST", format!("unix://{}", proxy.path().display()));
    let before_cpu = children_cpu_ms();
    let (out, spawned, exited) = spawn_timed(cmd);
    let cpu_ms = match (before_cpu, children_cpu_ms()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    if !out.ok() {
        fail(&format!(
            "outpostctl plan --detailed-exitcode {d} (through the proxy) did not report \"no changes\":\n{}",
            out.shown()
        ));
    }
    let exchanges = proxy
        .take(Duration::from_secs(10))
        .unwrap_or_else(|e| fail(&e));
    let requests: Vec<String> = exchanges
        .iter()
        .map(|x| format!("{} {}", x.method, x.path()))
        .collect();
    if let Some(x) = exchanges
        .iter()
        .find(|x| x.answered.is_none() || x.sent < spawned)
    {
        fail(&format!(
            "the proxy saw {} {} (connection {}) unanswered or before the run (every request: {requests:?})",
            x.method, x.target, x.conn
        ));
    }
    let lists: Vec<&proxy::Exchange> = exchanges
        .iter()
        .filter(|x| x.method == "GET" && x.path().ends_with("/containers/json"))
        .collect();
    let [list] = lists.as_slice() else {
        fail(&format!(
            "expected one list request (GET /…/containers/json) from the binary, the proxy saw: {requests:?}"
        ))
    };
    if list.status != Some(200) {
        fail(&format!(
            "the engine answered the list with {:?}",
            list.status
        ));
    }
    let answered = list.answered.unwrap_or(exited);
    if std::env::var_os("OUTPOSTCTL_BENCH_PER_RUN").is_some() {
        // Every run's timeline, in ms from the spawn.
        let at = |t: Instant| fmt_ms(ms(t.saturating_duration_since(spawned)));
        let timeline: Vec<String> = exchanges
            .iter()
            .map(|x| {
                let end = x.answered.map_or("?".into(), at);
                format!("{} {} {}→{end}", x.method, x.path(), at(x.sent))
            })
            .collect();
        eprintln!(
            "run: {}, exit {} (ms from the spawn)",
            timeline.join(", "),
            at(exited)
        );
    }
    ProxiedRun {
        wall: ms(out.wall),
        before: ms(list.sent - spawned),
        list: ms(answered - list.sent),
        after: ms(exited.saturating_duration_since(answered)),
        requests,
        list_target: list.target.clone(),
        list_bytes: list.answer_bytes,
        timed: Timed { out, cpu_ms },
    }
}

/// The engine's answer to `GET target` on `socket`, raw (see `proxy::raw_get`), in ms; what
/// went through the proxy is cleared from its log.
fn raw_list(socket: &Path, target: &str, proxy: &Proxy, through_proxy: bool) -> f64 {
    let r = proxy::raw_get(socket, target, Duration::from_secs(60))
        .unwrap_or_else(|e| fail(&format!("raw list: {e}")));
    if r.status != Some(200) {
        fail(&format!(
            "raw GET {target} on {}: status {:?}",
            socket.display(),
            r.status
        ));
    }
    if through_proxy {
        let _ = proxy
            .take(Duration::from_secs(10))
            .unwrap_or_else(|e| fail(&e));
    }
    ms(r.time)
}

fn plan_section(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    sizes: &[usize],
    runs: usize,
    apply_max: usize,
) {
    let dirs: Vec<(usize, PathBuf)> = sizes
        .iter()
        .map(|&n| {
            let dir = tmp.join(format!("plan-{n}"));
            write_plan_set(&dir, n, n);
            (n, dir)
        })
        .collect();

    println!(
        "\n### creating the projects (up to {apply_max} outposts: `outpostctl apply \
         --auto-approve` from nothing, at most {STEP} new outposts per apply; larger: the same \
         containers through the API without health check, 4 at a time)\n"
    );
    println!(
        "| outposts | created by | applies | wall, sum (s) | per container (ms) | outpostctl user+sys, sum (s) | applies that waited for another run's lock |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let api = bollard_client(rt);
    for (n, dir) in &dirs {
        if *n <= apply_max {
            // In steps, so that the engine's lock (one writer per engine, whatever the
            // project) is never held for minutes: other users of the engine wait at most one
            // step.
            let (mut wall, mut cpu, mut applies, mut waited) = (0.0, 0.0, 0, 0);
            let mut k = 0;
            while k < *n {
                k = (k + STEP).min(*n);
                write_plan_set(dir, *n, k);
                let t = apply(dir, &[]);
                wall += t.out.wall.as_secs_f64();
                cpu += t.cpu_ms.unwrap_or(f64::NAN) / 1000.0;
                applies += 1;
                waited += usize::from(waited_for_lock(&t));
            }
            println!(
                "| {n} | outpostctl apply | {applies} | {wall:.2} | {:.0} | {cpu:.2} | {waited} |",
                wall * 1000.0 / *n as f64,
            );
        } else {
            let specs = validated(dir)
                .desired
                .get("engine")
                .cloned()
                .unwrap_or_default();
            let t = Instant::now();
            let errors = rt.block_on(quiet_twins(&api, &specs));
            if !errors.is_empty() {
                fail(&format!(
                    "creating {n} containers failed: {}",
                    errors[..errors.len().min(5)].join("; ")
                ));
            }
            let wall = t.elapsed().as_secs_f64();
            println!(
                "| {n} | the benchmark (API, no health check) | - | {wall:.2} | {:.0} | - | - |",
                wall * 1000.0 / *n as f64,
            );
        }
        let up = running(&project(*n));
        if up != *n {
            fail(&format!(
                "{up} of {n} containers of {} are running",
                project(*n)
            ));
        }
    }
    let total = docker(&["ps", "-aq"])
        .map(|o| o.stdout.split_whitespace().count())
        .unwrap_or(0);
    println!("\ncontainers on the engine now: {total} (all projects, other users' included)");
    // Let the health checks of the new containers start (the first runs after 3-5 s).
    std::thread::sleep(Duration::from_secs(6));

    println!(
        "\n### plan with nothing to change, in-process (`connect_all` + `plan::build`, median of {runs})\n"
    );
    println!(
        "| outposts | containers listed | API requests | connect (ms) | build (ms) | total (ms) | `engine.list()` alone, parsing included (ms) | diff alone (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut reqs = Vec::new();
    for (n, dir) in &dirs {
        let v = validated(dir);
        let f = rt.block_on(in_process(&v, *n, runs));
        reqs.push(f.requests);
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} |",
            f.observed,
            f.requests,
            fmt_ms(f.connect_ms),
            fmt_ms(f.plan_ms),
            fmt_ms(f.total_ms),
            fmt_ms(f.list_ms),
            fmt_ms(f.diff_ms)
        );
    }

    // The binary reaches the engine through a pass-through proxy that times its requests.
    let upstream = proxy::engine_socket().unwrap_or_else(|e| fail(&e));
    let sock_dir = tempfile::tempdir().expect("temp dir");
    let proxy = Proxy::start(&sock_dir.path().join("proxy.sock"), &upstream)
        .unwrap_or_else(|e| fail(&format!("{e}; {HOW_TO_FIX}")));
    println!(
        "\n### plan with nothing to change, release binary (`outpostctl plan --detailed-exitcode DIR`, exit 0; median of {runs})\n"
    );
    println!("{}\n", binary_method(&upstream));
    println!(
        "| outposts | wall median (ms) | wall min–max (ms) | before the list (ms) | engine's list in the run (ms) | after the list (ms) | outpostctl's part (ms) | engine alone: raw list (ms) | raw list through the proxy (ms) | list answer (KB) | user+sys mean (ms) | machine busy (cores) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let largest = sizes.iter().copied().max();
    let mut wall_largest = f64::NAN;
    let mut last_line = String::new();
    // Per size: the binary's requests per run and what they were.
    let mut seen: Vec<(usize, usize, Vec<String>)> = Vec::new();
    for (n, dir) in &dirs {
        // Warm-up (page cache, the engine's), through the proxy as well.
        let _ = plan_through_proxy(dir, &proxy);
        let ((all, raws), busy) = machine_busy(|| {
            (0..runs)
                .map(|i| {
                    let run = plan_through_proxy(dir, &proxy);
                    // The engine alone, right after: the binary's own list request, raw, on the
                    // engine's socket and through the proxy (alternating which goes first).
                    let direct = || raw_list(&upstream, &run.list_target, &proxy, false);
                    let via = || raw_list(proxy.path(), &run.list_target, &proxy, true);
                    let (d, v) = if i % 2 == 0 {
                        let d = direct();
                        (d, via())
                    } else {
                        let v = via();
                        (direct(), v)
                    };
                    (run, (d, v))
                })
                .unzip::<_, _, Vec<ProxiedRun>, Vec<(f64, f64)>>()
        });
        let counts: BTreeSet<usize> = all.iter().map(|r| r.requests.len()).collect();
        if counts.len() != 1 {
            fail(&format!(
                "the binary's request count varies between runs of {n} outposts: {counts:?} ({:?})",
                all.iter().map(|r| &r.requests).collect::<Vec<_>>()
            ));
        }
        let mut paths: Vec<String> = Vec::new();
        for r in &all {
            for q in &r.requests {
                if !paths.contains(q) {
                    paths.push(q.clone());
                }
            }
        }
        seen.push((*n, all[0].requests.len(), paths));
        let col = |f: fn(&ProxiedRun) -> f64| median(&all.iter().map(f).collect::<Vec<_>>());
        let (before, list, after, own, kb) = (
            col(|r| r.before),
            col(|r| r.list),
            col(|r| r.after),
            col(|r| r.wall - r.list),
            col(|r| r.list_bytes as f64 / 1024.0),
        );
        let timed: Vec<Timed> = all.into_iter().map(|r| r.timed).collect();
        let f = summarize(&timed);
        last_line = timed
            .last()
            .and_then(|t| t.out.stdout.lines().last().map(str::to_string))
            .unwrap_or_default();
        if Some(*n) == largest {
            wall_largest = f.wall;
        }
        println!(
            "| {n} | {} | {}–{} | {} | {} | {} | {} | {} | {} | {kb:.0} | {} | {} |",
            fmt_ms(f.wall),
            fmt_ms(f.wall_min),
            fmt_ms(f.wall_max),
            fmt_ms(before),
            fmt_ms(list),
            fmt_ms(after),
            fmt_ms(own),
            fmt_ms(median(&raws.iter().map(|r| r.0).collect::<Vec<_>>())),
            fmt_ms(median(&raws.iter().map(|r| r.1).collect::<Vec<_>>())),
            fmt_opt(f.cpu_mean),
            busy.map_or("?".into(), |b| format!("{b:.2}"))
        );
    }
    drop(proxy);
    let shown = |paths: &[String]| paths.join(", ");
    let first = &seen[0];
    if seen.iter().any(|(_, c, _)| *c != first.1) {
        fail(&format!(
            "the binary's requests per run differ between sizes: {}",
            seen.iter()
                .map(|(n, c, p)| format!("{n} outposts: {c} ({})", shown(p)))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let requests_line = if seen.iter().all(|(_, _, p)| *p == first.2) {
        format!("{} per run at every size: {}", first.1, shown(&first.2))
    } else {
        format!(
            "{} per run at every size; {}",
            first.1,
            seen.iter()
                .map(|(n, _, p)| format!("{n} outposts: {}", shown(p)))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    println!(
        "\nthe binary's requests (counted at the proxy, query strings left out): {requests_line}"
    );
    println!("last line of the plan: {last_line:?}");

    // What `--inspect` (one inspect per kept container, for a restart policy changed by
    // hand) costs on top: in-process requests, and the binary's wall time.
    println!(
        "\n### plan --inspect with nothing to change (`outpostctl plan --inspect --detailed-exitcode DIR`, exit 0; median of {runs})\n"
    );
    println!(
        "| outposts | API requests | wall median (ms) | wall min–max (ms) | user+sys mean (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for (n, dir) in &dirs {
        let v = validated(dir);
        let requests = rt.block_on(async {
            let engines = connect_all(&v).await;
            let opts = DiffOptions {
                inspect: outpostctl::diff::Inspect::All,
                ..DiffOptions::default()
            };
            let plan = build(&v, &engines, opts).await;
            if plan.has_changes() || plan.has_errors() {
                fail(&format!(
                    "plan --inspect of {n} outposts is not \"nothing to change\""
                ));
            }
            match engines.get("engine") {
                Some(Ok(e)) => e.requests(),
                _ => fail("no engine `engine` in the set"),
            }
        });
        let d = dir.display().to_string();
        let timed: Vec<Timed> = (0..runs)
            .map(|_| {
                let t = outpostctl(&["plan", "--inspect", "--detailed-exitcode", &d], &[]);
                if !t.out.ok() {
                    fail(&format!(
                        "outpostctl plan --inspect {d} did not report \"no changes\":\n{}",
                        t.out.shown()
                    ));
                }
                t
            })
            .collect();
        let f = summarize(&timed);
        println!(
            "| {n} | {requests} | {} | {}–{} | {} |",
            fmt_ms(f.wall),
            fmt_ms(f.wall_min),
            fmt_ms(f.wall_max),
            fmt_opt(f.cpu_mean),
        );
    }
    println!(
        "\ngoal (the same small number of requests whatever the number of outposts): met \
         (the binary's, counted at the proxy: {requests_line}; in-process: {reqs:?})"
    );
    if let Some(largest) = largest {
        println!(
            "goal (under 150 ms wall for {largest} outposts): {} ({} ms)",
            if wall_largest < 150.0 {
                "met"
            } else {
                "NOT met"
            },
            fmt_ms(wall_largest)
        );
    }
}

/// The diff alone (pure logic, no engine): `n` outposts against a list as the engine returns
/// it when nothing changed (one running container per outpost, as outpostctl created it) plus
/// 110 containers of other users. Median of 21 runs.
fn diff_section(dir: &Path, sizes: &[usize]) {
    println!(
        "\n### diff alone (no engine: the list is made from the desired containers, plus 110 others; median of 21)\n"
    );
    println!("| outposts | containers | diff (ms) | per outpost (µs) |");
    println!("|---:|---:|---:|---:|");
    for &n in sizes {
        let d = dir.join(format!("diff-{n}"));
        write_set(&d, &project(n), LOCAL_INTEGRATION, "bdiff rac", n);
        let v = validated(&d);
        let desired = v.desired.get("engine").map(Vec::as_slice).unwrap_or(&[]);
        let mut list: Vec<outpostctl::engine::Observed> = desired
            .iter()
            .enumerate()
            .map(|(i, s)| outpostctl::engine::Observed {
                id: format!("{i:064x}"),
                name: s.name.clone(),
                image: s.image.clone(),
                state: outpostctl::engine::State::Running,
                health: Some(outpostctl::engine::Health::Healthy),
                labels: s.labels.clone(),
                networks: s.network.iter().cloned().collect(),
                network_mode: s.network.clone(),
                network_ids: Vec::new(),
                created: 1_700_000_000 + i as i64,
                host_ports: Vec::new(),
            })
            .collect();
        for i in 0..110 {
            list.push(outpostctl::engine::Observed {
                id: format!("f{i:063x}"),
                name: format!("someone-else-{i}"),
                image: "nginx:latest".into(),
                state: outpostctl::engine::State::Running,
                health: None,
                labels: Default::default(),
                networks: vec!["bridge".into()],
                network_mode: None,
                network_ids: Vec::new(),
                created: 1_600_000_000,
                host_ports: Vec::new(),
            });
        }
        let mut times = Vec::new();
        for _ in 0..21 {
            let t = Instant::now();
            let actions =
                outpostctl::diff::diff(&v.project, desired, &list, DiffOptions::default());
            times.push(ms(t.elapsed()));
            if actions.iter().any(|a| a.action != ActionKind::Noop) || actions.len() != n {
                fail(&format!("the diff of {n} outposts is not all no-ops"));
            }
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        println!(
            "| {n} | {} | {med:.2} | {:.2} |",
            list.len(),
            med * 1000.0 / n as f64
        );
    }
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| filter.is_empty() || filter.iter().any(|f| f == s);
    set_env();
    let sizes = env_list("OUTPOSTCTL_BENCH_SIZES", &[10, 100, 1000]);
    let rounds = env_list("OUTPOSTCTL_BENCH_ROUNDS", &[3])[0];
    let runs = env_list("OUTPOSTCTL_BENCH_RUNS", &[15])[0];
    let apply_max = env_list("OUTPOSTCTL_BENCH_APPLY_MAX", &[100])[0];
    let apply_size = env_list("OUTPOSTCTL_BENCH_APPLY_SIZE", &[APPLY_SIZE])[0];

    let tmp = tempfile::tempdir().expect("temp dir");
    let keep = std::env::var_os("OUTPOSTCTL_BENCH_KEEP").map(PathBuf::from);
    if want("diff") {
        diff_section(
            tmp.path(),
            &env_list("OUTPOSTCTL_BENCH_DIFF_SIZES", &[10, 100, 1000, 10000]),
        );
        if filter.iter().all(|f| f == "diff") {
            return;
        }
    }
    let (version, api) = require_engine();
    require_image(IMAGE);
    let bin = binary();
    let mut names: Vec<String> = sizes.iter().map(|&n| project(n)).collect();
    names.push(APPLY_PROJECT.into());
    names.push(LOOP_PROJECT.into());
    names.sort();
    names.dedup();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let projects = Projects::new(&name_refs);
    let rt = runtime();

    println!(
        "outpostctl plan/apply benchmark: {} CPUs, Docker engine {version} (API {api}), binary {}, \
         process time: {}; load average {} at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bin.display(),
        PROCESS_TIME,
        loadavg()
    );

    if want("apply") {
        apply_section(&rt, tmp.path(), &projects, rounds, apply_size);
    }
    if want("plan") {
        plan_section(
            &rt,
            keep.as_deref().unwrap_or(tmp.path()),
            &sizes,
            runs,
            apply_max,
        );
    }
    if let Some(dir) = &keep {
        println!(
            "\nkept the plan projects' containers and their manifests in {} (OUTPOSTCTL_BENCH_KEEP); \
             the next run of the benchmark removes them",
            dir.display()
        );
        std::mem::forget(projects);
        return;
    }
    println!("\nremoving the benchmark's containers...");
    let t = Instant::now();
    drop(projects);
    println!("removed in {:.1} s", t.elapsed().as_secs_f64());
}
