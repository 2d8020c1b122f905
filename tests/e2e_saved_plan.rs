//! End to end on the real engine: saved plans. `plan --out FILE` then `apply --plan FILE`
//! applies exactly that plan, holds no token, and is refused as stale (before anything
//! changes) when the manifests, a token or the containers moved in between. Needs
//! `scripts/test-deps.sh`.

mod common;
mod support;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use support::*;

fn saved(env: &Env, file: &str) -> Value {
    let text = std::fs::read_to_string(env.dir().join(file)).expect("the plan file exists");
    env.assert_no_secret(&format!("the plan file {file}"), &text);
    serde_json::from_str(&text).expect("the plan file is JSON")
}

fn plan_out(env: &Env, file: &str) {
    let r = env.plan(&["--out", file]);
    assert_eq!(r.code, 0, "{}", shown(&r));
}

fn apply_plan(env: &Env, file: &str) -> common::Run {
    env.run(&["apply", "--plan", file, "--auto-approve", "."])
}

/// What the project's containers look like: name -> (id, status, config hash).
fn snapshot(env: &Env) -> BTreeMap<String, (String, String, Option<String>)> {
    env.project_containers()
        .into_iter()
        .map(|(n, c)| (n, (c.id(), c.status(), c.label(LABEL_CONFIG_HASH))))
        .collect()
}

fn assert_stale(r: &common::Run, file: &str, why: &str) {
    assert_eq!(r.code, 1, "{}", shown(r));
    assert!(
        r.stderr
            .contains(&format!("error: the saved plan `{file}` is stale: "))
            && r.stderr.contains(why),
        "expected a stale-plan refusal mentioning `{why}`:\n{}",
        shown(r)
    );
}

#[test]
fn saved_plan_applies_and_holds_no_token() {
    let env = Env::new("saved");
    let mut m = env.manifest();
    m["outposts"]["One"] = env.outpost("proxy", "AK_ONE");
    m["outposts"]["Two"] = env.outpost("ldap", "AK_TWO");
    env.write(&m);

    plan_out(&env, "plan.json");
    let p = saved(&env, "plan.json");
    assert_eq!(p["format_version"], 1, "{p:#}");
    assert_eq!(p["project"], env.project.as_str());
    assert_eq!(p["summary"]["create"], 2, "{p:#}");
    assert!(p["manifest_fingerprint"].is_string());
    assert!(
        env.project_containers().is_empty(),
        "plan --out changed the engine"
    );

    let r = apply_plan(&env, "plan.json");
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert!(
        r.stdout.contains("apply: 2 done, 0 failed"),
        "{}",
        shown(&r)
    );
    assert_eq!(env.project_containers().len(), 2);
    env.assert_converged();

    // Applied once, the plan no longer matches the engine.
    let r = apply_plan(&env, "plan.json");
    assert_stale(&r, "plan.json", "changed since the plan was made");

    // A token change, saved and applied: the file holds neither token.
    let new = env.new_token("AK_ONE");
    plan_out(&env, "rotate.json");
    let p = saved(&env, "rotate.json");
    let a = action_of(&p, "One");
    assert_eq!(a["action"], "recreate");
    assert_eq!(
        reason(&a, "env.AUTHENTIK_TOKEN"),
        Some(&json!({"field": "env.AUTHENTIK_TOKEN", "before": "(secret)", "after": "(changed)"}))
    );
    let r = apply_plan(&env, "rotate.json");
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert_eq!(
        env.container(&env.name_of("one")).env()["AUTHENTIK_TOKEN"],
        new
    );
    env.assert_converged();
}

#[test]
fn saved_plan_is_stale_when_the_manifests_changed() {
    let env = Env::new("stalemf");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("ldap", "AK_A");
    env.write(&m);
    env.apply_ok();

    m["outposts"]["A"]["config"]["docker_labels"] = json!({"com.example.v": "1"});
    m["outposts"]["B"] = env.outpost("radius", "AK_B");
    env.write(&m);
    plan_out(&env, "plan.json");
    let before = snapshot(&env);

    m["outposts"]["A"]["config"]["docker_labels"] = json!({"com.example.v": "2"});
    env.write(&m);
    let r = apply_plan(&env, "plan.json");
    assert_stale(&r, "plan.json", "the manifests");
    assert!(
        r.stderr.contains("outpostctl plan --out"),
        "the refusal says what to do:\n{}",
        shown(&r)
    );
    assert_eq!(snapshot(&env), before, "a stale plan changed the engine");

    // A token alone is part of the manifests' fingerprint too.
    m["outposts"]["A"]["config"]["docker_labels"] = json!({"com.example.v": "1"});
    env.write(&m);
    plan_out(&env, "plan2.json");
    env.new_token("AK_B");
    let r = apply_plan(&env, "plan2.json");
    assert_stale(&r, "plan2.json", "tokens");
    assert_eq!(snapshot(&env), before, "a stale plan changed the engine");
}

#[test]
fn saved_plan_is_stale_when_a_container_was_stopped_by_hand() {
    let env = Env::new("stalestop");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("ldap", "AK_A");
    m["outposts"]["C"] = env.outpost("rac", "AK_C");
    env.write(&m);
    env.apply_ok();

    m["outposts"]["A"]["config"]["docker_labels"] = json!({"com.example.v": "1"});
    m["outposts"]["B"] = env.outpost("radius", "AK_B");
    env.write(&m);
    plan_out(&env, "plan.json");
    let p = saved(&env, "plan.json");
    assert_eq!(action_of(&p, "C")["action"], "noop");

    docker_ok(&["stop", "-t", "5", &env.name_of("c")]);
    let before = snapshot(&env);
    let r = apply_plan(&env, "plan.json");
    assert_stale(
        &r,
        "plan.json",
        "the containers on integration `local` changed since the plan was made",
    );
    assert_eq!(snapshot(&env), before, "a stale plan changed the engine");
    assert_eq!(env.container(&env.name_of("c")).status(), "exited");
    assert!(inspect(&env.name_of("b")).is_none());
}

#[test]
fn saved_plan_is_stale_when_a_container_was_renamed_or_removed_by_hand() {
    let env = Env::new("stalemv");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("ldap", "AK_A");
    m["outposts"]["C"] = env.outpost("rac", "AK_C");
    env.write(&m);
    env.apply_ok();
    m["outposts"]["A"]["config"]["authentik_host_insecure"] = json!(true);
    env.write(&m);
    plan_out(&env, "plan.json");

    let c = env.name_of("c");
    let moved = format!("{c}-by-hand");
    docker_ok(&["rename", &c, &moved]);
    let before = snapshot(&env);
    let r = apply_plan(&env, "plan.json");
    assert_stale(&r, "plan.json", "changed since the plan was made");
    assert_eq!(snapshot(&env), before, "a stale plan changed the engine");
    docker_ok(&["rename", &moved, &c]);

    // Put back as it was, nothing the plan depends on moved: it applies.
    let r = apply_plan(&env, "plan.json");
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert_eq!(
        env.container(&env.name_of("a")).env()["AUTHENTIK_INSECURE"],
        "true"
    );

    // A container removed by hand.
    m["outposts"]["A"]["config"]["authentik_host_insecure"] = json!(false);
    env.write(&m);
    plan_out(&env, "plan2.json");
    docker_ok(&["rm", "-f", &c]);
    let before = snapshot(&env);
    let r = apply_plan(&env, "plan2.json");
    assert_stale(&r, "plan2.json", "changed since the plan was made");
    assert_eq!(snapshot(&env), before, "a stale plan changed the engine");
}

/// A saved plan records each engine's daemon ID, and `apply --plan` refuses it on another
/// engine, even when nothing else could tell (a create-only plan, `local: true` on two
/// machines: same address, no containers yet). The other engine is simulated by editing the
/// ID in the file; the engine is left untouched.
#[test]
fn saved_plan_is_stale_on_another_engine() {
    let env = Env::new("staleeng");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("ldap", "AK_A");
    env.write(&m);
    plan_out(&env, "plan.json");
    let mut plan = saved(&env, "plan.json");
    let id = docker_ok(&["info", "--format", "{{.ID}}"]);
    let local = plan["integrations"]
        .as_array_mut()
        .and_then(|i| i.iter_mut().find(|e| e["name"] == "local"))
        .expect("the local integration is in the plan");
    assert_eq!(local["engine_id"], json!(id), "{local:#}");
    local["engine_id"] = json!("OTHR:ENGI:NE00:0000:0000:0000:0000:0000:0000:0000:0000:0000");
    std::fs::write(
        env.dir().join("other.json"),
        serde_json::to_string_pretty(&plan).expect("JSON"),
    )
    .expect("write");

    let r = apply_plan(&env, "other.json");
    assert_stale(&r, "other.json", "reaches another Docker engine");
    assert!(
        env.project_containers().is_empty(),
        "a stale plan created containers"
    );
    // The plan as saved still applies.
    let r = apply_plan(&env, "plan.json");
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert_eq!(env.project_containers().len(), 1);
    env.assert_converged();
}

#[test]
fn saved_plan_made_without_inspect_is_stale_when_inspecting_finds_a_changed_restart_policy() {
    let env = Env::new("staleinspect");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("rac", "AK_A");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("a");
    docker_ok(&["update", "--restart", "no", &name]);

    // The list does not show a restart policy: without --inspect there is nothing to do.
    plan_out(&env, "plan.json");
    assert_eq!(action_of(&saved(&env, "plan.json"), "A")["action"], "noop");
    let before = snapshot(&env);
    let r = env.run(&["apply", "--plan", "plan.json", "--inspect", "."]);
    assert_stale(
        &r,
        "plan.json",
        "the containers on integration `local` changed since the plan was made (this apply inspects the containers, `--inspect`; the plan was made without it)",
    );
    assert!(
        r.stderr
            .contains("help: run `outpostctl plan --inspect --out plan.json .` again"),
        "the help names the flag the plan needs:\n{}",
        shown(&r)
    );
    assert_eq!(snapshot(&env), before, "a stale plan changed the engine");
    assert_eq!(env.container(&name).restart_policy(), "no");

    // Made as the help says, the plan shows the recreate and applies.
    let r = env.plan(&["--inspect", "--out", "plan.json"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    let r = env.run(&["apply", "--plan", "plan.json", "."]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert_eq!(env.container(&name).restart_policy(), "unless-stopped");
}

/// A saved plan that would now be blocked: a container this project does not manage took
/// the outpost's host port after the plan was made. Its containers did not move, but what the
/// plan would do did: the plan is refused as stale, saying so, and nothing is created.
#[test]
fn saved_plan_is_stale_when_a_port_it_needs_was_taken_since() {
    let env = Env::new("savedport");
    let mut m = env.manifest();
    let mut web = env.outpost("proxy", "AK_WEB");
    let taken = env.publish(&mut web)["9000/tcp"];
    m["outposts"]["Web"] = web;
    env.write(&m);
    plan_out(&env, "plan.json");
    assert_eq!(
        action_of(&saved(&env, "plan.json"), "Web")["action"],
        "create"
    );

    env.docker_container(
        "run",
        &env.name_of("squatter"),
        &["-d", "-p", &format!("127.0.0.1:{taken}:9000"), IMAGE_V1],
    );
    let r = apply_plan(&env, "plan.json");
    assert_stale(
        &r,
        "plan.json",
        "what the plan would do on integration `local` changed since it was made (a network or host port it needs appeared or went away)",
    );
    assert!(
        inspect(&env.name_of("web")).is_none(),
        "a stale plan created the outpost"
    );
}

/// A plan saved with `--adopt` applies as saved (`apply --plan` adopts as the plan did, no
/// flag to repeat): the container authentik deployed is taken over. The file says so. One
/// saved without it is not applied with `--adopt`.
#[test]
fn saved_plan_made_with_adopt_adopts() {
    let env = Env::new("savedadopt");
    let mut m = env.manifest();
    let uuid = env.uuid("dir");
    let mut dir = env.outpost("ldap", "AK_DIR");
    dir["uuid"] = json!(uuid);
    m["outposts"]["Dir"] = dir;
    env.write(&m);
    // As authentik deploys it: its uuid label, none of ours.
    let name = env.name_of("dir");
    let authentiks = env.authentik_container(
        &name,
        &uuid,
        &format!("ghcr.io/goauthentik/ldap:{AK_VERSION}"),
    );
    // Saved without `--adopt` (the outpost blocked by authentik's container), `--adopt` at
    // apply would apply what was not reviewed: refused, saying how to review it.
    let r = env.plan(&["--out", "blocked.json"]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    let r = env.run(&[
        "apply",
        "--plan",
        "blocked.json",
        "--adopt",
        "--auto-approve",
        ".",
    ]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stderr.contains("error: the saved plan `blocked.json` was made without `--adopt`: it cannot be applied with it\n  help: to adopt, run `outpostctl plan --adopt --out blocked.json .` and review it"),
        "{}",
        shown(&r)
    );
    assert!(env.project_containers().is_empty(), "something was applied");
    assert_eq!(
        env.container(&name).id(),
        authentiks,
        "authentik's container was touched"
    );

    let r = env.plan(&["--adopt", "--out", "plan.json"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert_eq!(saved(&env, "plan.json")["adopted"], json!(true));

    let r = apply_plan(&env, "plan.json");
    assert_eq!(r.code, 0, "{}", shown(&r));
    let c = env.container(&name);
    assert_eq!(c.label(LABEL_PROJECT), Some(env.project.clone()), "adopted");
    assert!(c.running());
    assert_eq!(c.label(LABEL_UUID), Some(uuid));
    assert_eq!(c.env()["AUTHENTIK_TOKEN"], env.token_of("AK_DIR"));
    assert!(
        inspect(&authentiks).is_none(),
        "authentik's container remains beside the adopted one"
    );
    env.assert_converged();
}

/// A saved plan whose engine cannot be reached at apply time is refused for that reason
/// (not as "another engine" or "the containers changed").
#[test]
fn saved_plan_is_stale_when_its_engine_cannot_be_reached() {
    let env = Env::new("staledown");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("ldap", "AK_A");
    env.write(&m);
    plan_out(&env, "plan.json");
    let r = env
        .command(&["apply", "--plan", "plan.json", "--auto-approve", "."])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .expect("outpostctl runs");
    let r = common::Run {
        code: r.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
    };
    assert_stale(
        &r,
        "plan.json",
        "integration `local` cannot be planned now:",
    );
    assert!(!r.stderr.contains("another Docker engine"), "{}", shown(&r));
    assert!(env.project_containers().is_empty());
}

/// A plan made while an engine did not answer is saved (to be read), says it cannot be
/// applied, and `apply --plan` refuses it for that reason once the engine answers again
/// (not as "the containers changed"): nothing is created.
#[test]
fn saved_plan_made_while_its_engine_was_down_is_refused_for_that() {
    let env = Env::new("plandown");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("ldap", "AK_A");
    // Nothing listens on this port of the test's block until the engine "comes back".
    let port = env.port();
    m["integrations"]["far"] = json!({ "url": format!("http://127.0.0.1:{port}") });
    m["outposts"]["A"]["integration"] = json!("far");
    env.write(&m);
    let r = env.plan(&["--out", "plan.json"]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stderr.contains(
            "note: plan saved to `plan.json`, but it cannot be applied: integration `far` could not be planned"
        ) && !r.stderr.contains("applies exactly this plan"),
        "{}",
        shown(&r)
    );
    saved(&env, "plan.json");
    forward_to_engine(port);
    let r = apply_plan(&env, "plan.json");
    assert_stale(
        &r,
        "plan.json",
        "integration `far` could not be planned when the plan was made (",
    );
    assert!(env.project_containers().is_empty());
}

/// A wrong path given as the plan (a device that never ends, a directory) is refused at once,
/// naming the path, and nothing is created; a plan read from a pipe (`--plan /dev/stdin`) is
/// applied.
#[test]
fn a_plan_from_a_pipe_is_read_and_a_wrong_path_refused() {
    let env = Env::new("notaplan");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("ldap", "AK_A");
    env.write(&m);
    for (path, why) in [
        ("/dev/zero", "bytes; a plan file is at most"),
        (".", "not a regular file"),
    ] {
        let r = apply_plan(&env, path);
        assert_eq!(r.code, 1, "{}", shown(&r));
        assert!(
            r.stderr.contains(&format!("cannot read `{path}`: ")) && r.stderr.contains(why),
            "{}",
            shown(&r)
        );
    }
    assert!(env.project_containers().is_empty());

    plan_out(&env, "plan.json");
    let file = std::fs::File::open(env.dir().join("plan.json")).expect("the plan file");
    let out = env
        .command(&["apply", "--plan", "/dev/stdin", "--auto-approve", "."])
        .stdin(file)
        .output()
        .expect("outpostctl runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.project_containers().len(), 1);
}

/// A plan printed with `--format json` (same format, but without the engines' IDs, which
/// only `--out` asks for) is refused by `apply --plan`: it cannot be checked against the
/// engine it was made for.
#[test]
fn a_plan_printed_as_json_is_refused_for_lack_of_engine_ids() {
    let env = Env::new("jsonplan");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("ldap", "AK_A");
    env.write(&m);
    let r = env.plan(&["--format", "json"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    std::fs::write(env.dir().join("printed.json"), &r.stdout).expect("write");
    let r = apply_plan(&env, "printed.json");
    assert_stale(
        &r,
        "printed.json",
        "holds no engine ID for integration `local`",
    );
    assert!(env.project_containers().is_empty());
}

/// A plan file of another format version (a newer outpostctl's, with an action this one does
/// not know) is refused for its version, before any engine is asked: here none could be.
#[test]
fn a_plan_of_another_format_version_is_refused_for_its_version() {
    let env = Env::new("planv2");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("ldap", "AK_A");
    env.write(&m);
    plan_out(&env, "plan.json");
    let mut p = saved(&env, "plan.json");
    p["format_version"] = json!(2);
    p["integrations"][0]["actions"][0]["action"] = json!("frobnicate");
    std::fs::write(env.dir().join("v2.json"), p.to_string()).expect("write");
    env.set_env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let r = apply_plan(&env, "v2.json");
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stderr
            .contains("`v2.json` is a plan of format version 2; this outpostctl reads version 1")
            && !r.stderr.contains("frobnicate")
            && !r.stderr.contains("nonexistent"),
        "{}",
        shown(&r)
    );
    // A version written as text is said to be one, not missing.
    p["format_version"] = json!("1");
    std::fs::write(env.dir().join("text.json"), p.to_string()).expect("write");
    let r = apply_plan(&env, "text.json");
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stderr
            .contains("its `format_version` is not a whole number"),
        "{}",
        shown(&r)
    );
    assert!(env.project_containers().is_empty());
}

/// A plan that cannot be saved is still shown (the pull-request comment or the JSON consumer
/// gets it), the run fails, and no partial file is left where it was to be.
#[test]
fn a_plan_that_cannot_be_saved_is_still_shown() {
    let env = Env::new("planunsaved");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("ldap", "AK_A");
    env.write(&m);
    let r = env.plan(&["--format", "json", "--out", "missing/dir/plan.json"]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    let shown_plan: Value = serde_json::from_str(&r.stdout).expect("the plan is on stdout");
    assert_eq!(
        shown_plan["integrations"][0]["actions"][0]["action"],
        "create",
        "{}",
        shown(&r)
    );
    assert!(
        r.stderr
            .contains("error: cannot write the plan to `missing/dir/plan.json`: no such file or directory\n  help: the directory it goes in must exist"),
        "{}",
        shown(&r)
    );
    // A directory where the file should go: refused, nothing left beside it.
    std::fs::create_dir(env.dir().join("plan.json")).expect("mkdir");
    let r = env.plan(&["--format", "markdown", "--out", "plan.json"]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(r.stdout.contains("| create | A |"), "{}", shown(&r));
    let partials = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect()
    };
    assert!(
        partials(env.dir()).is_empty(),
        "a partial file is left: {:?}",
        partials(env.dir())
    );

    // Written in a file of this run's own (never through a symlink in the way: see the unit
    // test `a_plan_file_is_never_written_through_a_symlink`), then renamed: a file of its own.
    std::fs::remove_dir(env.dir().join("plan.json")).expect("rmdir");
    let r = env.plan(&["--out", "plan.json"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    let saved = std::fs::read_to_string(env.dir().join("plan.json")).expect("the plan file");
    assert!(saved.contains("\"format_version\""), "{saved}");
    assert!(
        std::fs::symlink_metadata(env.dir().join("plan.json"))
            .is_ok_and(|m| m.file_type().is_file()),
        "the plan file is a file of its own"
    );
    assert!(
        partials(env.dir()).is_empty(),
        "a partial file is left: {:?}",
        partials(env.dir())
    );
}
