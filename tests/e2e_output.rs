//! Snapshots of what people and pull requests read, made on the real engine: the plan (human,
//! `--diff`, Markdown, JSON) with every kind of action, the apply report and `status`. The
//! other e2e tests check what the engine ends up with; these check the words a user sees.
//!
//! What changes from run to run is redacted before the comparison: the test's project, name
//! prefix, directory and host ports, container and image ids, uuids, config hashes and times.
//! Update with `INSTA_UPDATE=always cargo test --test e2e_output`, then read the snapshots.

mod common;
mod support;

use std::time::Duration;

use common::Run;
use serde_json::json;
use support::*;

/// `text` with this test's project, name prefix and directory replaced; `FILTERS` do the rest.
fn redacted(env: &Env, text: &str) -> String {
    let dir = env.dir().to_string_lossy().into_owned();
    // `local: true` is shown where it points: the snapshots hold the default socket's.
    let text = match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.is_empty() => {
            text.replace(&format!("DOCKER_HOST={h}"), "unix:///var/run/docker.sock")
        }
        _ => text.to_string(),
    };
    text.replace(&dir, "[dir]")
        .replace(&env.prefix, "[prefix]-")
        .replace(&env.project, "[project]")
}

/// What else differs between runs, as insta filters (pattern, placeholder).
const FILTERS: [(&str, &str); 11] = [
    (r"host port \d+/", "host port [port]/"),
    // Another outpostctl on the engine at the same time (not these tests': see `ENGINE`), or
    // one killed earlier whose lock is taken over.
    (
        r"(?m)^integration `[^`]+`: waiting for the lock held by .*\n",
        "",
    ),
    (r"(?m)^taking over the lock of .*\n", ""),
    (
        r"Docker \S+ \(API [0-9.]+\)",
        "Docker [version] (API [api])",
    ),
    (r"sha256:[0-9a-f]{64}", "[image-id]"),
    (r"\b[0-9a-f]{64}\b", "[hash]"),
    (r"\b[0-9a-f]{32}\b", "[uuid]"),
    (
        r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
        "[uuid]",
    ),
    (r"\b[0-9a-f]{12}\b", "[id]"),
    (r"127\.0\.0\.1:\d{4,5}\b", "127.0.0.1:[port]"),
    // Measured times (`1.25s`, `340ms`, `3 seconds ago`), not the whole seconds a setting
    // holds (a health check's `interval 5s`).
    (
        r"\b(\d+\.\d+\s?(ns|µs|us|ms|s)|\d+\s?(ns|µs|us|ms)|\d+(\.\d+)?\s(seconds?|minutes?)( ago)?)\b",
        "[time]",
    ),
];

/// Snapshots `text` under `name` through `FILTERS`.
fn assert_redacted(name: &str, text: &str) {
    insta::with_settings!({ filters => FILTERS.to_vec() }, {
        insta::assert_snapshot!(name, text);
    });
}

/// Asserts a run's exit code and snapshots its stdout and stderr, redacted.
#[track_caller]
fn snapshot(env: &Env, name: &str, run: &Run, code: i32) {
    assert_eq!(run.code, code, "{name}:\n{}", shown(run));
    let text = format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        run.code,
        redacted(env, &run.stdout),
        redacted(env, &run.stderr)
    );
    assert_redacted(name, &text);
}

/// The tests here apply on the same engine: one at a time, so that neither waits for the
/// other's lock (and says so in its output).
static ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One project through its life: created, changed in every way a plan can show (recreate with
/// its reasons and a token shown only as changed, rename, start, remove, unchanged), applied,
/// and its status, healthy and then with an outpost stopped and one gone.
#[test]
fn plan_apply_and_status_read_as_documented() {
    let _one_at_a_time = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new("output");
    let mut m = env.manifest();
    m["outposts"]["Directory"] = env.outpost("ldap", "AK_DIRECTORY");
    m["outposts"]["Desktop"] = env.outpost("rac", "AK_DESKTOP");
    m["outposts"]["Radius"] = env.outpost("radius", "AK_RADIUS");
    let mut web = env.outpost("proxy", "AK_WEB");
    web["external_hosts"] = json!(["https://app.example.com"]);
    m["outposts"]["Web"] = web;
    m["outposts"]["Kept"] = env.outpost("rac", "AK_KEPT");
    let mut portal = env.outpost("proxy", "AK_PORTAL");
    portal["external_hosts"] = json!(["https://portal.example.com"]);
    m["outposts"]["Portal"] = portal;
    env.write(&m);

    snapshot(&env, "create_plan", &env.plan(&["--detailed-exitcode"]), 2);
    snapshot(
        &env,
        "create_plan_markdown",
        &env.plan(&["--format", "markdown"]),
        0,
    );
    snapshot(&env, "create_apply", &env.apply(&[]), 0);
    snapshot(
        &env,
        "converged_plan",
        &env.plan(&["--detailed-exitcode"]),
        0,
    );
    snapshot(
        &env,
        "converged_plan_markdown",
        &env.plan(&["--format", "markdown"]),
        0,
    );

    // Every kind of change at once.
    m["outposts"]["Directory"]["config"]["docker_labels"] = json!({"com.example.team": "infra"});
    env.new_token("AK_DIRECTORY");
    m["outposts"]["Desktop"]["config"]["object_naming_template"] =
        json!(format!("{}renamed-%(name)s", env.prefix));
    docker_ok(&["stop", "-t", "2", &env.name_of("radius")]);
    m["outposts"]
        .as_object_mut()
        .expect("outposts")
        .remove("Web");
    // A new host: Traefik's rules (with their backticks) are among the reasons.
    m["outposts"]["Portal"]["external_hosts"] = json!(["https://portal2.example.com"]);
    env.write(&m);

    snapshot(&env, "changes_plan", &env.plan(&["--detailed-exitcode"]), 2);
    snapshot(
        &env,
        "changes_plan_diff",
        &env.plan(&["--diff", "--detailed-exitcode"]),
        2,
    );
    snapshot(
        &env,
        "changes_plan_markdown",
        &env.plan(&["--format", "markdown"]),
        0,
    );
    let json = env.plan(&["--format", "json"]);
    assert_eq!(json.code, 0, "{}", shown(&json));
    let value: serde_json::Value = serde_json::from_str(&json.stdout).expect("the plan is JSON");
    let pretty = serde_json::to_string_pretty(&value).expect("JSON");
    assert_redacted("changes_plan_json", &redacted(&env, &pretty));

    snapshot(&env, "changes_apply", &env.apply(&[]), 0);
    env.assert_converged();
    for c in ["directory", "renamed-desktop", "radius", "kept", "portal"] {
        let health = env.wait_healthy(&env.name_of(c), Duration::from_secs(60));
        assert_eq!(health.as_deref(), Some("healthy"), "{c}");
    }
    snapshot(
        &env,
        "status",
        &env.run(&["status", "--detailed-exitcode", "."]),
        0,
    );
    // A stopped outpost, one whose container is gone and one that left the manifests (its
    // container still runs until the next apply): still read fine (exit 0), and
    // `--detailed-exitcode` tells a monitoring check that something needs attention.
    docker_ok(&["stop", "-t", "2", &env.name_of("kept")]);
    docker_ok(&["rm", "-f", &env.name_of("radius")]);
    m["outposts"]
        .as_object_mut()
        .expect("outposts")
        .remove("Directory");
    env.write(&m);
    snapshot(
        &env,
        "status_needs_attention",
        &env.run(&["status", "."]),
        0,
    );
    let r = env.run(&["status", "--detailed-exitcode", "."]);
    assert_eq!(r.code, 2, "{}", shown(&r));
    let json = env.run(&["status", "--format", "json", "."]);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("status is JSON");
    let leftovers = &doc["integrations"][0]["leftovers"];
    assert_eq!(
        (
            &leftovers[0]["outpost"],
            &leftovers[0]["container"],
            &leftovers[0]["state"]
        ),
        (
            &json!("Directory"),
            &json!(env.name_of("directory")),
            &json!("running")
        ),
        "{}",
        json.stdout
    );
    assert_eq!(
        leftovers.as_array().map(Vec::len),
        Some(1),
        "{}",
        json.stdout
    );
    // Gone from the engine once applied: nothing left over.
    env.apply_ok();
    docker_ok(&["start", &env.name_of("kept")]);
    let json = env.run(&["status", "--format", "json", "."]);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("status is JSON");
    assert!(
        doc["integrations"][0].get("leftovers").is_none(),
        "{}",
        json.stdout
    );
}

/// Outposts blocked by a container in the way that this project did not create, a host port
/// another container publishes, a missing network and a missing `pull: never` image: the plan
/// names each cause (both for an outpost blocked twice over), says what to do, and exits 1;
/// apply does the rest, leaves those outposts alone, says so and exits 1.
#[test]
fn a_container_in_the_way_reads_as_blocked() {
    let _one_at_a_time = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new("outblocked");
    let mut m = env.manifest();
    m["outposts"]["Directory"] = env.outpost("ldap", "AK_DIRECTORY");
    m["outposts"]["Desktop"] = env.outpost("rac", "AK_DESKTOP");
    // What apply would fail on is blocked too: a host port another container publishes, a
    // network the engine lacks, an image `pull: never` may not fetch.
    let mut web = env.outpost("proxy", "AK_WEB");
    web["external_hosts"] = json!(["https://app.example.com"]);
    let taken = env.publish(&mut web)["9443/tcp"];
    // Blocked twice over: both reasons are shown at once.
    web["config"]["docker_network"] = json!(env.name_of("nowhere"));
    m["outposts"]["Web"] = web;
    let mut isolated = env.outpost("rac", "AK_ISOLATED");
    isolated["config"]["docker_network"] = json!(env.name_of("nowhere"));
    m["outposts"]["Isolated"] = isolated;
    let mut strict = env.outpost("rac", "AK_STRICT");
    strict["pull"] = json!("never");
    strict["config"]["container_image"] = json!("outpostctl-test/outpost:not-on-this-engine");
    m["outposts"]["Strict"] = strict;
    env.write(&m);
    env.docker_container(
        "create",
        &env.name_of("directory"),
        &["--network", "none", IMAGE_V1],
    );
    env.docker_container(
        "run",
        &env.name_of("squatter"),
        &["-d", "-p", &format!("127.0.0.1:{taken}:9443"), IMAGE_V1],
    );

    snapshot(&env, "blocked_plan", &env.plan(&[]), 1);
    snapshot(
        &env,
        "blocked_plan_markdown",
        &env.plan(&["--format", "markdown"]),
        1,
    );
    snapshot(&env, "blocked_apply", &env.apply(&[]), 1);
    // Only the blocked outpost is left: nothing to apply, and still a failure.
    snapshot(&env, "blocked_apply_again", &env.apply(&[]), 1);
    // `status` says why those outposts have no container.
    let health = env.wait_healthy(&env.name_of("desktop"), Duration::from_secs(60));
    assert_eq!(health.as_deref(), Some("healthy"));
    snapshot(
        &env,
        "blocked_status",
        &env.run(&["status", "--detailed-exitcode", "."]),
        2,
    );
    let json = env.run(&["status", "--format", "json", "."]);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("status is JSON");
    let blocked: Vec<(String, String)> = doc["integrations"][0]["outposts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let why = o["blocked"].as_str()?;
            Some((o["outpost"].as_str()?.to_string(), why.to_string()))
        })
        .collect();
    let outposts: Vec<&str> = blocked.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        outposts,
        ["Directory", "Isolated", "Strict", "Web"],
        "{}",
        json.stdout
    );
    assert!(blocked[3].1.starts_with("host port"), "{blocked:?}");
}

/// What a user reads when outpostctl refuses or cannot go on: apply without a terminal to ask
/// on, a saved plan that went stale, and an engine that does not answer beside one that does.
#[test]
fn refusals_and_unreachable_engines_read_as_documented() {
    let _one_at_a_time = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new("outrefuse");
    let mut m = env.manifest();
    m["outposts"]["Directory"] = env.outpost("ldap", "AK_DIRECTORY");
    env.write(&m);

    snapshot(&env, "saved_plan", &env.plan(&["--out", "plan.json"]), 0);
    snapshot(
        &env,
        "apply_without_a_terminal",
        &env.run(&["apply", "."]),
        1,
    );
    env.apply_ok();
    snapshot(
        &env,
        "apply_a_stale_plan",
        &env.run(&["apply", "--plan", "plan.json", "."]),
        1,
    );

    // Nothing listens on this port of the test's block.
    let closed = env.port();
    m["integrations"]["gone"] = json!({ "url": format!("http://127.0.0.1:{closed}") });
    let mut far = env.outpost("rac", "AK_FAR");
    far["integration"] = json!("gone");
    m["outposts"]["Far"] = far;
    env.write(&m);
    snapshot(
        &env,
        "plan_with_an_unreachable_engine",
        &env.plan(&["--detailed-exitcode"]),
        1,
    );
    snapshot(
        &env,
        "plan_with_an_unreachable_engine_markdown",
        &env.plan(&["--format", "markdown"]),
        1,
    );
    // Healthy, not `starting`: what status shows does not depend on how long the runs above
    // took against the health check's interval.
    let directory = env.name_of("directory");
    assert_eq!(
        env.wait_healthy(&directory, Duration::from_secs(60))
            .as_deref(),
        Some("healthy")
    );
    snapshot(
        &env,
        "status_with_an_unreachable_engine",
        &env.run(&["status", "."]),
        1,
    );
}

/// Labels are any writer's text: a container of this project's made by hand with escape
/// sequences and line breaks in its labels is planned with them escaped, so the plan can
/// neither clear nor recolour the terminal, nor forge a line of its own (`plan: no changes`);
/// and a duplicate's removal does not repeat the recreate's settings diff under it.
#[test]
fn labels_set_by_hand_are_shown_escaped() {
    let _one_at_a_time = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new("outlabels");
    let mut m = env.manifest();
    let mut directory = env.outpost("ldap", "AK_DIRECTORY");
    directory["config"]["docker_labels"] = json!({ "x.y": "plain" });
    m["outposts"]["Directory"] = directory;
    env.write(&m);
    let ours = |uuid: &str, more: &[String]| -> Vec<String> {
        let mut labels = vec![
            format!("{LABEL_UUID}={uuid}"),
            format!("{LABEL_PROJECT}={}", env.project),
            format!("{LABEL_MANAGED_BY}=outpostctl"),
            format!("{LABEL_CONFIG_HASH}=deadbeef"),
            "outpostctl.integration=local".to_string(),
        ];
        labels.extend(more.iter().cloned());
        labels
            .iter()
            .flat_map(|l| ["--label".to_string(), l.clone()])
            .collect()
    };
    let create = |name: &str, labels: Vec<String>| {
        let mut args: Vec<&str> = labels.iter().map(String::as_str).collect();
        args.push(IMAGE_V1);
        env.docker_container("create", &env.name_of(name), &args)
    };
    let uuid = env.uuid("AK_DIRECTORY");
    let first = create("by-hand", ours(&uuid, &[]));
    // Its copy, as a recreate cut short leaves one: the copy is kept (and recreated, its
    // labels shown), `first` removed.
    create(
        "copy",
        ours(
            &uuid,
            &[
                format!("outpostctl.replaces={}", first.trim()),
                "x.y=\u{1b}[2J\u{1b}[31mRED".into(),
                "\u{1b}]0;title\u{7}=v".into(),
            ],
        ),
    );
    // An outpost that left the manifests, whose name label holds a line of its own.
    create(
        "gone",
        ours(
            &env.uuid("gone"),
            &[format!("{LABEL_OUTPOST}=Gone\nplan: no changes\u{1b}[8m")],
        ),
    );

    let human = env.plan(&["--diff", "--color", "never"]);
    let markdown = env.plan(&["--format", "markdown"]);
    let status = env.run(&["status", "."]);
    for (what, run) in [
        ("plan", &human),
        ("markdown", &markdown),
        ("status", &status),
    ] {
        let out = format!("{}{}", run.stdout, run.stderr);
        assert!(
            !out.contains(|c: char| c.is_control() && c != '\n'),
            "{what} prints a control character:\n{}",
            shown(run)
        );
        assert!(
            !out.lines()
                .any(|l| l.trim().starts_with("plan: no changes")),
            "{what} prints a line a label forged:\n{}",
            shown(run)
        );
    }
    assert_eq!(human.code, 0, "{}", shown(&human));
    for line in [
        r#"labels.x.y: "\u001b[2J\u001b[31mRED" -> plain"#,
        r"labels.\u001b]0;title\u0007: v -> (removed)",
        r#"- remove    "#,
        r"Gone\nplan: no changes\u001b[8m",
    ] {
        assert!(
            human.stdout.contains(line),
            "no `{line}` in:\n{}",
            shown(&human)
        );
    }
    assert!(
        status.stdout.contains(r"Gone\nplan: no changes\u001b[8m"),
        "{}",
        shown(&status)
    );
    // The settings diff is shown once: under the recreate of the copy, not under the removal.
    assert_eq!(
        human.stdout.matches("+ name: ").count(),
        1,
        "{}",
        shown(&human)
    );
}
