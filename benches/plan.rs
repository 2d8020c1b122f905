//! `cargo bench --bench plan`: outpostctl on the real Docker engine (issue 3, "Speed").
//!
//! 1. **apply of 100 outposts from nothing** against plain loops that create and start the
//!    same containers with the same parallelism (4 at a time, outpostctl's
//!    `PARALLEL_PER_ENGINE`): a loop of `docker create` + `docker start` (the Docker CLI, four
//!    threads, like `xargs -P4`), and the same through bollard directly (four concurrent
//!    create + start, the API-level floor). Same engine, image, environment, labels, network,
//!    restart policy and health check. Rounds rotate the order; every round starts from
//!    nothing (the containers of the previous one are removed, untimed). A round in which
//!    outpostctl had to wait for another run's lock on the engine is done again.
//! 2. **plan with nothing to change** for 10, 100 and 1,000 outposts on one engine: one
//!    project per size, all present at once, created once (timed as well). For each:
//!    - in-process: `connect_all` + `plan::build` (what `outpostctl plan` does besides
//!      validation; `build` runs `plan_engine` per engine), with the number of API requests
//!      from `Engine::requests()`, and, measured apart, the engine's list and the diff;
//!    - the release binary `outpostctl plan --detailed-exitcode DIR` (exit 0: no changes):
//!      median wall, and mean user+sys (`getrusage` of the children, in µs); each run is
//!      followed by one list of the engine alone, and outpostctl's part is the median of
//!      (run's wall - that list), since the engine's answer varies more than outpostctl;
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
//! `OUTPOSTCTL_BENCH_KEEP=DIR` (write the manifests under DIR and keep the plan projects'
//! containers at the end, for profiling a plan by hand; the next run removes them). Remove
//! them before running the tests: 1,000 running containers make `e2e_engine_restart`'s
//! restart of the engine time out (containerd cleans up a shim at a time).

#[path = "../tests/remote_bench_support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{CreateContainerOptions, StartContainerOptions};
use futures_util::StreamExt;
use outpostctl::desired::{ContainerSpec, LABEL_UUID};
use outpostctl::diff::{ActionKind, DiffOptions};
use outpostctl::engine::connect::connect_all;
use outpostctl::plan::build;
use support::*;

const IMAGE: &str = "ghcr.io/goauthentik/rac:2026.8.0";
/// The containers of both loops.
const LOOP_PROJECT: &str = "outpostctl-bench-loop";
/// Containers created at once by the loops, as outpostctl's apply does per engine.
const PARALLEL: usize = outpostctl::apply::PARALLEL_PER_ENGINE;
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
                        // The CLI has only the shell form (CMD-SHELL) for health checks.
                        "--health-cmd".into(),
                        spec.healthcheck.test[1..].join(" "),
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

/// The containers outpostctl would create for `specs` (same name, image, environment, labels
/// with the config hash, network, restart policy), created and started through the API with
/// one difference: no health check. See `plan_section`.
async fn quiet_twins(docker: &Docker, specs: &[ContainerSpec]) -> Vec<String> {
    let results: Vec<Result<(), String>> = futures_util::stream::iter(specs.iter().map(|spec| {
        let labels = spec.labels.clone().into_iter().collect();
        let none = HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        create_start(docker, spec.name.clone(), body(spec, labels, none))
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

fn apply_section(rt: &tokio::runtime::Runtime, tmp: &Path, projects: &Projects, rounds: usize) {
    let dir = tmp.join(format!("apply-{APPLY_SIZE}"));
    let p = APPLY_PROJECT.to_string();
    write_set(&dir, &p, LOCAL_INTEGRATION, "bapply rac", APPLY_SIZE);
    let v = validated(&dir);
    let specs: Vec<ContainerSpec> = v.desired.get("engine").cloned().unwrap_or_default();
    assert_eq!(specs.len(), APPLY_SIZE);
    let api = bollard_client(rt);
    let methods = [Method::Outpostctl, Method::Cli, Method::Api];
    let mut walls: HashMap<&str, Vec<f64>> = HashMap::new();
    println!(
        "\n### apply of {APPLY_SIZE} outposts from nothing ({rounds} rounds, order rotated)\n"
    );
    println!("| round | method | wall (s) | machine busy (cores) |");
    println!("|---:|---|---:|---:|");
    for r in 0..rounds {
        for k in 0..methods.len() {
            let m = methods[(k + r) % methods.len()];
            let (wall, busy) = match m {
                Method::Outpostctl => {
                    // Another run holding the engine's lock would make this a measure of its
                    // apply: such rounds are done again.
                    let mut attempt = 1;
                    loop {
                        let (t, busy) = machine_busy(|| apply(&dir, &[]));
                        if !waited_for_lock(&t) {
                            break (t.out.wall, busy);
                        }
                        eprintln!(
                            "round {}: outpostctl waited for another run's lock on the engine; \
                             doing it again",
                            r + 1
                        );
                        projects.remove(&p);
                        if attempt == ATTEMPTS {
                            fail(&format!(
                                "the engine stayed locked by other runs for {ATTEMPTS} attempts"
                            ));
                        }
                        attempt += 1;
                    }
                }
                Method::Cli => {
                    let t = Instant::now();
                    let (errors, busy) = machine_busy(|| cli_loop(&specs));
                    if !errors.is_empty() {
                        fail(&format!(
                            "the docker CLI loop failed: {}",
                            errors.join("; ")
                        ));
                    }
                    (t.elapsed(), busy)
                }
                Method::Api => {
                    let t = Instant::now();
                    let (errors, busy) = machine_busy(|| rt.block_on(api_loop(&api, &specs)));
                    if !errors.is_empty() {
                        fail(&format!("the bollard loop failed: {}", errors.join("; ")));
                    }
                    (t.elapsed(), busy)
                }
            };
            let owner = if m == Method::Outpostctl {
                p.as_str()
            } else {
                LOOP_PROJECT
            };
            let up = running(owner);
            if up != APPLY_SIZE {
                fail(&format!(
                    "{}: {up} of {APPLY_SIZE} containers are running",
                    m.label()
                ));
            }
            println!(
                "| {} | {} | {:.2} | {} |",
                r + 1,
                m.label(),
                wall.as_secs_f64(),
                busy.map_or("?".into(), |b| format!("{b:.2}"))
            );
            walls.entry(m.label()).or_default().push(wall.as_secs_f64());
            projects.remove(owner);
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
            w * 1000.0 / APPLY_SIZE as f64,
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
            write_set(
                &dir,
                &project(n),
                LOCAL_INTEGRATION,
                &format!("bplan{n} rac"),
                n,
            );
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
        let prefix = format!("bplan{n} rac");
        if *n <= apply_max {
            // In steps, so that the engine's lock (one writer per engine, whatever the
            // project) is never held for minutes: other users of the engine wait at most one
            // step.
            let (mut wall, mut cpu, mut applies, mut waited) = (0.0, 0.0, 0, 0);
            let mut k = 0;
            while k < *n {
                k = (k + STEP).min(*n);
                write_set(dir, &project(*n), LOCAL_INTEGRATION, &prefix, k);
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
        "| outposts | containers listed | API requests | connect (ms) | build (ms) | total (ms) | list alone (ms) | diff alone (ms) |"
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

    println!(
        "\n### plan with nothing to change, release binary (`outpostctl plan --detailed-exitcode DIR`, exit 0; median of {runs})\n"
    );
    println!(
        "Each run is followed by one list of the engine alone (in-process, as the binary lists), \
         so that the engine's own time is measured beside each run: the engine's answer varies \
         more from minute to minute than outpostctl's part. \"outpostctl's part\" is the \
         median over the runs of the run's wall time minus the list that followed it.\n"
    );
    println!(
        "| outposts | wall median (ms) | wall min–max (ms) | engine's list alone, median (ms) | outpostctl's part, median (ms) | user+sys mean (ms) | machine busy (cores) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut wall_max_size = f64::NAN;
    let mut last_line = String::new();
    for (n, dir) in &dirs {
        let _ = plan_no_change(dir, &[]);
        let v = validated(dir);
        let engine = rt.block_on(async {
            match connect_all(&v).await.remove("engine") {
                Some(Ok(e)) => e,
                Some(Err(e)) => fail(&format!("cannot connect to the engine: {e}; {HOW_TO_FIX}")),
                None => fail("no engine `engine` in the set"),
            }
        });
        let ((timed, lists), busy) = machine_busy(|| {
            (0..runs)
                .map(|_| {
                    let t = plan_no_change(dir, &[]);
                    let start = Instant::now();
                    if let Err(e) = rt.block_on(engine.list()) {
                        fail(&format!("list failed: {e}"));
                    }
                    (t, ms(start.elapsed()))
                })
                .unzip::<_, _, Vec<Timed>, Vec<f64>>()
        });
        last_line = timed
            .last()
            .and_then(|t| t.out.stdout.lines().last().map(str::to_string))
            .unwrap_or_default();
        let f = summarize(&timed);
        let own: Vec<f64> = timed
            .iter()
            .zip(&lists)
            .map(|(t, l)| t.wall_ms() - l)
            .collect();
        wall_max_size = f.wall;
        println!(
            "| {n} | {} | {}–{} | {} | {} | {} | {} |",
            fmt_ms(f.wall),
            fmt_ms(f.wall_min),
            fmt_ms(f.wall_max),
            fmt_ms(median(&lists)),
            fmt_ms(median(&own)),
            fmt_opt(f.cpu_mean),
            busy.map_or("?".into(), |b| format!("{b:.2}"))
        );
    }
    println!("\nlast line of the plan: {last_line:?}");

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
    let same = reqs.windows(2).all(|w| w[0] == w[1]);
    println!(
        "\ngoal (the same small number of requests whatever the number of outposts): {} ({reqs:?})",
        if same { "met" } else { "NOT met" }
    );
    if let Some(&largest) = sizes.iter().max() {
        println!(
            "goal (under 150 ms wall for {largest} outposts): {} ({} ms)",
            if wall_max_size < 150.0 {
                "met"
            } else {
                "NOT met"
            },
            fmt_ms(wall_max_size)
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
        apply_section(&rt, tmp.path(), &projects, rounds);
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
