//! End to end through the least-privilege socket proxy (haproxy on 127.0.0.1:2375, allowing
//! only containers, images, info, version and ping, like docker-socket-proxy configured with
//! authentik's permission list): a full plan and apply (create, pull, recreate, rename, start,
//! remove, saved plan) succeed over `http://`, so outpostctl needs no more than that list.
//! Needs `scripts/test-deps.sh`.

mod common;
mod support;

use serde_json::json;
use support::*;

#[test]
fn full_lifecycle_through_the_socket_proxy() {
    require_socket_proxy();
    require_registry();
    let proxy_addr = SOCKET_PROXY.trim_start_matches("http://");
    // The proxy really is least-privilege: networks are not on the list.
    assert_eq!(
        http_get(proxy_addr, "/v1.41/networks").map(|(s, _)| s),
        Some(403),
        "the socket proxy allows /networks; rerun scripts/test-deps.sh"
    );

    let env = Env::new("sockproxy");
    let net = env.network("net");
    let pulled = format!("{REGISTRY}/goauthentik/rac:{AK_VERSION}");
    env.track_image_tag(&pulled);
    let _ = docker(&["rmi", &pulled]);
    assert!(
        image_id(&pulled).is_none(),
        "{pulled} is still on the engine"
    );

    let mut m = env.manifest();
    m["integrations"] = json!({ "edge": { "url": SOCKET_PROXY } });
    let on_edge = |kind: &str, var: &str| {
        let mut o = env.outpost(kind, var);
        o["integration"] = json!("edge");
        o
    };
    let mut web = on_edge("proxy", "AK_WEB");
    web["external_hosts"] = json!(["https://app.example.com"]);
    let ports = env.publish(&mut web);
    m["outposts"]["Web"] = web;
    let mut dir = on_edge("ldap", "AK_DIR");
    dir["config"]["docker_network"] = json!(net);
    m["outposts"]["Dir"] = dir;
    m["outposts"]["Radius"] = on_edge("radius", "AK_RADIUS");
    let mut rac = on_edge("rac", "AK_RAC");
    rac["pull"] = json!("always");
    rac["config"]["container_image"] = json!(pulled);
    m["outposts"]["Remote"] = rac;
    env.write(&m);

    // Create (with a pull) through the proxy.
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout
            .contains(&format!("integration edge ({SOCKET_PROXY})"))
            && plan.stdout.contains("plan: 4 to create"),
        "{}",
        shown(&plan)
    );
    let r = env.apply_ok();
    assert!(
        r.stdout.contains("apply: 4 done, 0 failed") && !shown(&r).contains("could not pull"),
        "{}",
        shown(&r)
    );
    let web = env.container(&env.name_of("web"));
    assert!(web.running());
    assert_eq!(
        web.port_bindings()["9000/tcp"],
        [format!("127.0.0.1:{}", ports["9000/tcp"])]
    );
    let dir = env.container(&env.name_of("dir"));
    assert_eq!(dir.networks(), [net.as_str()]);
    let rac = env.container(&env.name_of("remote"));
    assert_eq!(rac.image(), pulled);
    assert!(image_id(&pulled).is_some(), "not pulled through the proxy");
    env.assert_converged();

    // Recreate and rename.
    m["outposts"]["Dir"]["config"]["docker_labels"] = json!({"com.example.v": "2"});
    m["outposts"]["Radius"]["config"]["object_naming_template"] =
        json!(format!("{}moved-%(name)s", env.prefix));
    env.write(&m);
    let plan = env.plan(&[]);
    assert!(
        plan.stdout
            .contains("plan: 1 to recreate, 1 to rename, 2 unchanged"),
        "{}",
        shown(&plan)
    );
    let radius = env.container(&env.name_of("radius"));
    env.apply_ok();
    let dir2 = env.container(&env.name_of("dir"));
    assert_ne!(dir2.id(), dir.id());
    assert_eq!(dir2.networks(), [net.as_str()]);
    let moved = env.name_of("moved-radius");
    assert_eq!(env.container(&moved).id(), radius.id());
    env.assert_converged();

    // Start a container stopped by hand.
    docker_ok(&["stop", "-t", "5", &moved]);
    let plan = env.plan(&[]);
    assert!(plan.stdout.contains("plan: 1 to start"), "{}", shown(&plan));
    env.apply_ok();
    assert!(env.container(&moved).running());

    // Remove, through a saved plan.
    m["outposts"].as_object_mut().unwrap().remove("Web");
    env.write(&m);
    let r = env.plan(&["--out", "plan.json"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert!(r.stdout.contains("plan: 1 to remove"), "{}", shown(&r));
    let r = env.run(&["apply", "--plan", "plan.json", "--auto-approve", "."]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert!(
        inspect(&web.id()).is_none(),
        "not removed through the proxy"
    );
    assert_eq!(env.project_containers().len(), 3);
    env.assert_converged();
}

/// Two integrations that reach the same engine (the local socket and the socket proxy in
/// front of it, as during a migration): "prune removes only containers whose outpost left
/// the manifests" (manifest.md), so neither integration may plan to remove the other's
/// outposts, which are still in the manifests; right after apply the plan is empty.
#[test]
fn two_integrations_on_one_engine_do_not_prune_each_other() {
    require_socket_proxy();
    let env = Env::new("sameengine");
    let mut m = env.manifest();
    m["integrations"]["edge"] = json!({ "url": SOCKET_PROXY });
    m["outposts"]["Here"] = env.outpost("ldap", "AK_H");
    let mut there = env.outpost("radius", "AK_T");
    there["integration"] = json!("edge");
    m["outposts"]["There"] = there;
    env.write(&m);
    env.apply_ok();
    let plan = env.plan_json();
    for a in actions(&plan) {
        assert_ne!(
            a["action"], "remove",
            "an outpost still in the manifests is planned for removal: {a:#}"
        );
    }
    env.assert_converged();
}

/// A container labelled with an integration that left the set (renamed `old` -> `here`) is
/// in scope for every integration reaching its engine. The one whose outpost it is (`here`)
/// answers for it and for the copies of it made by hand, which it leaves alone (blocked): the
/// other (`edge`, the socket proxy to the same engine) must not remove them as "wanted on
/// `here`" (it did: the outpost's container and a copy that outpostctl never made, gone).
#[test]
fn another_integration_does_not_remove_what_the_outposts_own_leaves_alone() {
    require_socket_proxy();
    let env = Env::new("answersfor");
    let mut m = env.manifest();
    m["integrations"] = json!({ "old": { "local": true } });
    let mut one = env.outpost("ldap", "AK_ONE");
    one["integration"] = json!("old");
    m["outposts"]["One"] = one;
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("one");
    let own = env.container(&name);

    // A copy made by hand (Portainer's duplicate keeps every label).
    let copy = env.name_of("one-copy");
    let labels: Vec<String> = own
        .labels()
        .iter()
        .flat_map(|(k, v)| ["--label".to_string(), format!("{k}={v}")])
        .collect();
    let mut args: Vec<&str> = vec!["-d"];
    args.extend(labels.iter().map(String::as_str));
    args.push(IMAGE_V1);
    env.track_container(&copy);
    let mut run = vec!["run", "--name", copy.as_str()];
    run.extend(args);
    let copy_id = docker_ok(&run);

    m["integrations"] = json!({ "here": { "local": true }, "edge": { "url": SOCKET_PROXY } });
    m["outposts"]["One"]["integration"] = json!("here");
    env.write(&m);
    let plan = env.plan_json_with(&[], true);
    for a in actions(&plan) {
        assert_ne!(a["action"], "remove", "{plan:#}");
    }
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(r.stdout.contains("a copy made by hand?"), "{}", shown(&r));
    assert_eq!(
        env.container(&name).id(),
        own.id(),
        "the outpost's container"
    );
    assert_eq!(env.container(&copy).id(), copy_id, "the copy made by hand");
    // And status does not list them as containers apply would remove.
    let st = env.run(&["status", "--format", "json", "."]);
    let doc: serde_json::Value = serde_json::from_str(&st.stdout).expect("status JSON");
    for i in doc["integrations"].as_array().into_iter().flatten() {
        assert!(i.get("leftovers").is_none(), "{doc:#}");
    }
}

/// Outpost `Mover` on the local socket, applied, with integration `edge` (the socket proxy to
/// the same engine) in the set: the env, the manifest and the container's name.
fn mover_applied(tag: &str) -> (Env, serde_json::Value, String) {
    require_socket_proxy();
    let env = Env::new(tag);
    let mut m = env.manifest();
    m["integrations"]["edge"] = json!({ "url": SOCKET_PROXY });
    m["outposts"]["Mover"] = env.outpost("ldap", "AK_M");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("mover");
    (env, m, name)
}

/// An outpost moved from one integration to another that reaches the same engine: the new
/// integration takes its container over with one recreate (relabelled as its own) and the old
/// one leaves it alone, so one apply moves it. Another outpost (another uuid) wanting the name
/// of a container the other integration removes cannot have it in the same apply: the plan
/// says so truthfully (not "not managed by outpostctl"), the next apply creates it.
#[test]
fn outpost_moved_between_integrations_on_one_engine() {
    let (env, mut m, name) = mover_applied("moveinteg");
    let before = env.container(&name);

    m["outposts"]["Mover"]["integration"] = json!("edge");
    env.write(&m);
    let plan = env.plan_json_with(&[], true);
    let actions_in = |integration: &str| -> Vec<serde_json::Value> {
        plan["integrations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["name"] == integration)
            .flat_map(|i| i["actions"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    assert!(
        !actions_in("local").iter().any(|a| a["outpost"] == "Mover"),
        "local acts on the container edge takes over: {plan:#}"
    );
    let edge = actions_in("edge");
    let a = edge
        .iter()
        .find(|a| a["outpost"] == "Mover")
        .unwrap_or_else(|| panic!("no action for Mover on edge: {plan:#}"));
    assert_eq!(a["action"], "recreate", "{a:#}");
    assert_eq!(a["container"]["id"], before.id().as_str(), "{a:#}");
    assert_eq!(
        a["reasons"][0],
        json!({"field": "labels.outpostctl.integration", "before": "local", "after": "edge"}),
        "{a:#}"
    );
    let human = env.plan(&[]);
    assert!(
        human.stdout.contains("plan: 1 to recreate") && !human.stdout.contains("remove"),
        "{}",
        shown(&human)
    );

    // One apply moves it: the container edge makes replaces the one local made.
    env.apply_ok();
    assert!(
        inspect(&before.id()).is_none(),
        "the old container is still there"
    );
    let after = env.container(&name);
    assert_eq!(
        after.label("outpostctl.integration"),
        Some("edge".to_string())
    );
    assert!(after.running());
    env.assert_converged();

    // Back on local as another outpost (another uuid) under the same name.
    m["outposts"]["Mover"]["integration"] = json!("local");
    m["outposts"]["Mover"]["uuid"] = json!(env.uuid("other"));
    env.write(&m);
    let plan = env.plan_json_with(&[], true);
    let error = plan["integrations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["name"] == "local")
        .flat_map(|i| i["actions"].as_array().cloned().unwrap_or_default())
        .find(|a| a["outpost"] == "Mover")
        .and_then(|a| a["error"].as_str().map(str::to_string))
        .unwrap_or_default();
    assert!(
        error.contains("managed by integration `edge`") && !error.contains("not managed"),
        "{plan:#}"
    );
    // The first apply removes edge's container; local's create waits for the next one (each
    // integration plans its own), blocked, naming why.
    let first = env.apply(&[]);
    assert_eq!(first.code, 1, "{}", shown(&first));
    assert!(
        first.stdout.contains("managed by integration `edge`"),
        "{}",
        shown(&first)
    );
    assert!(
        inspect(&after.id()).is_none(),
        "edge did not remove its container:\n{}",
        shown(&first)
    );
    env.apply_ok();
    assert_eq!(
        env.container(&name).label("outpostctl.integration"),
        Some("local".to_string())
    );
    env.assert_converged();
}

/// `local: true` follows DOCKER_HOST as the Docker CLI does, also without a port:
/// `tcp://127.0.0.1` is port 2375 (here the socket proxy). (With DOCKER_TLS_VERIFY, 2376:
/// e2e_remote `tls_local_engine_from_docker_tls_environment`.)
#[test]
fn docker_host_without_a_port_gets_dockers_default_port() {
    require_socket_proxy();
    let env = Env::new("hostnoport");
    let mut m = env.manifest();
    m["outposts"]["Dir"] = env.outpost("ldap", "AK_DIR");
    env.write(&m);
    env.set_env("DOCKER_HOST", "tcp://127.0.0.1");
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout.contains("plan: 1 to create"),
        "{}",
        shown(&plan)
    );
    // The plan says which engine `local: true` reached.
    assert!(
        plan.stdout
            .contains("integration local (DOCKER_HOST=tcp://127.0.0.1)"),
        "{}",
        shown(&plan)
    );
    // Where nothing listens, the error names the address tried and says what happened
    // (hyper alone says "client error (Connect)").
    env.set_env("DOCKER_HOST", "tcp://127.0.0.2");
    let r = env.plan(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains(
            "cannot reach the engine at http://127.0.0.2:2375: connection refused (is an engine or socket proxy listening there?)"
        ),
        "{}",
        shown(&r)
    );
    // A socket that is not there.
    env.set_env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let r = env.plan(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains(
            "there is no socket at /nonexistent/docker.sock (is the Docker engine running?)"
        ),
        "{}",
        shown(&r)
    );
}

/// The proxy refuses the network list, so the plan cannot tell a missing `docker_network`: it
/// plans the create and says the network was not checked (in the human and the JSON plan),
/// and apply fails that outpost naming the network and how to create it, leaving no container.
#[test]
fn a_missing_network_through_the_proxy_fails_at_apply() {
    require_socket_proxy();
    let env = Env::new("proxynonet");
    let net = format!("{}net", env.prefix);
    let mut m = env.manifest();
    m["integrations"] = json!({ "edge": { "url": SOCKET_PROXY } });
    let mut o = env.outpost("rac", "AK_A");
    o["integration"] = json!("edge");
    o["config"]["docker_network"] = json!(net);
    m["outposts"]["A"] = o;
    env.write(&m);
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout.contains("plan: 1 to create")
            && plan.stdout.contains(&format!(
                "note: network `{net}` not checked: the engine refused the network list"
            )),
        "{}",
        shown(&plan)
    );
    let json = env.plan_json();
    let notes = json["integrations"][0]["notes"].to_string();
    assert!(notes.contains("NETWORKS=1"), "{json:#}");
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stdout.contains(&format!("network {net} not found"))
            && r.stdout.contains(&format!("docker network create {net}"))
            && r.stdout.contains("apply: 0 done, 1 failed"),
        "{}",
        shown(&r)
    );
    assert!(env.project_containers().is_empty(), "a container was left");
}

/// The socket and a socket proxy to it are one engine reached at two addresses, which
/// validation cannot know: the plan finds it by the daemon IDs and blocks the outpost of the
/// second integration (by name) that would take a host port an outpost of the first has,
/// instead of planning a create that fails at apply. The first is applied as usual.
#[test]
fn two_addresses_of_one_engine_share_its_host_ports() {
    require_socket_proxy();
    let env = Env::new("proxysameport");
    let mut m = env.manifest();
    m["integrations"] = json!({ "edge": { "url": SOCKET_PROXY }, "local": { "local": true } });
    let mut a = env.outpost("ldap", "AK_A");
    a["integration"] = json!("edge");
    let ports = env.publish(&mut a);
    let mut b = env.outpost("ldap", "AK_B");
    b["ports"] = a["ports"].clone();
    b["config"]["docker_map_ports"] = json!(true);
    m["outposts"]["A"] = a;
    m["outposts"]["B"] = b;
    env.write(&m);
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 1, "{}", shown(&plan));
    let port = ports["3389/tcp"];
    assert!(
        plan.stdout.contains(&format!(
            "host port {port}/tcp is also outpost `A`'s, of integration `edge`, which reaches the same engine"
        )) && plan.stdout.contains("plan: 1 to create, 1 blocked"),
        "{}",
        shown(&plan)
    );
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(env.container(&env.name_of("a")).running());
    assert_eq!(env.project_containers().len(), 1, "B was created");
    // `status` says B is blocked, and why, as the plan does (exit 2: not as wanted).
    let status = env.run(&["status", "--detailed-exitcode", "."]);
    assert_eq!(status.code, 2, "{}", shown(&status));
    assert!(
        status.stdout.contains(&format!(
            "host port {port}/tcp is also outpost `A`'s, of integration `edge`, which reaches the same engine"
        )),
        "{}",
        shown(&status)
    );
}

/// A watch's connections to a `http://` engine probe a silent peer (TCP keepalive): an engine
/// host that went away, or a NAT that dropped the idle event stream, ends the stream in about
/// a minute and the watch subscribes again, instead of waiting on it forever. What `ss`
/// shows on the engine's port for the watch process: a keepalive timer.
#[test]
fn a_watchs_event_stream_through_the_proxy_has_tcp_keepalive() {
    require_socket_proxy();
    let env = Env::new("keepalive");
    let mut m = env.manifest();
    m["integrations"] = json!({ "edge": { "url": SOCKET_PROXY } });
    m["outposts"] = json!({});
    env.write(&m);
    let mut child = env
        .command(&["watch", ".", "--interval", "1h"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("outpostctl watch starts");
    let pid = child.id();
    let port = SOCKET_PROXY
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut seen = String::new();
    let ok = wait_until(std::time::Duration::from_secs(20), || {
        let out = std::process::Command::new("ss")
            .args(["-tnop", "state", "established"])
            .arg(format!("( dport = :{port} )"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        seen = out.clone();
        out.lines()
            .any(|l| l.contains(&format!("pid={pid},")) && l.contains("timer:(keepalive"))
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ok,
        "no connection of the watch with a keepalive timer:\n{seen}"
    );
}

/// An outpost moved to another integration on the same engine whose plan fails this time (its
/// address unreachable): the integration it left does not remove its container (nothing would
/// take it over), and once the new integration answers, the move completes.
#[test]
fn an_outpost_moved_to_an_integration_that_fails_keeps_its_container() {
    let (env, mut m, name) = mover_applied("movefail");
    let before = env.container(&name).id();

    // Moved to `edge`, which points at a closed port for now.
    let closed = env.port();
    m["integrations"]["edge"] = json!({ "url": format!("http://127.0.0.1:{closed}") });
    m["outposts"]["Mover"]["integration"] = json!("edge");
    env.write(&m);
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(!r.stdout.contains("remove"), "{}", shown(&r));
    let c = env.container(&name);
    assert_eq!(c.id(), before, "the container was removed or replaced");
    assert!(c.running());

    m["integrations"]["edge"] = json!({ "url": SOCKET_PROXY });
    env.write(&m);
    env.apply_ok();
    assert_eq!(env.project_containers().len(), 1);
    env.assert_converged();
}

/// An outpost moved to another integration on the same engine, under a new name that a
/// container outside the project holds: it is blocked there, and the integration it left
/// keeps its container (the plan says nothing is done for it, and nothing is).
#[test]
fn a_blocked_move_keeps_the_outposts_container() {
    let (env, mut m, name) = mover_applied("moveblock");
    let before = env.container(&name).id();

    let taken = format!("{}edge-mover", env.prefix);
    env.track_container(&taken);
    docker_ok(&["create", "--name", &taken, IMAGE_V1]);
    m["outposts"]["Mover"]["integration"] = json!("edge");
    m["outposts"]["Mover"]["config"]["object_naming_template"] =
        json!(format!("{}edge-%(name)s", env.prefix));
    env.write(&m);
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(r.stdout.contains("! blocked"), "{}", shown(&r));
    let c = env.container(&name);
    assert_eq!(
        c.id(),
        before,
        "the blocked outpost's container was removed"
    );
    assert!(c.running());
}

/// An integration naming the engine's socket by its path (`unix://...`) plans and applies
/// like `local: true` (the read started for the local engine serves it), and converges.
#[test]
fn an_integration_naming_the_socket_by_its_path_applies() {
    let env = Env::new("sockurl");
    let mut m = env.manifest();
    m["integrations"] = json!({ "sock": { "url": format!("unix://{}", engine_socket()) } });
    let mut dir = env.outpost("ldap", "AK_DIR");
    dir["integration"] = json!("sock");
    m["outposts"]["Dir"] = dir;
    env.write(&m);
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout
            .contains(&format!("integration sock (unix://{})", engine_socket()))
            && plan.stdout.contains("plan: 1 to create"),
        "{}",
        shown(&plan)
    );
    let r = env.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    env.assert_converged();
}

/// Through a socket proxy that refuses `info` (docker-socket-proxy's INFO=0): plan and apply
/// work (the engine lock's lease is judged by the `Date` of the engine's answer to a ping);
/// a plan cannot be saved (`apply --plan` checks the engine's ID, which only `info` gives),
/// which is said with the plan still shown; the proxy's 403 page is said as text.
#[test]
fn through_a_proxy_that_refuses_info_apply_works_and_a_plan_is_not_saved() {
    require_socket_proxy();
    let proxy_addr = SOCKET_PROXY_NO_INFO.trim_start_matches("http://");
    assert_eq!(
        http_get(proxy_addr, "/v1.41/info").map(|(s, _)| s),
        Some(403),
        "the socket proxy on {SOCKET_PROXY_NO_INFO} allows /info; rerun scripts/test-deps.sh"
    );
    let env = Env::new("noinfo");
    let mut m = env.manifest();
    m["integrations"] = json!({ "edge": { "url": SOCKET_PROXY_NO_INFO } });
    let mut o = env.outpost("rac", "AK_NOINFO");
    o["integration"] = json!("edge");
    m["outposts"]["Remote"] = o;
    env.write(&m);
    let name = env.name_of("remote");

    let r = env.plan(&["--out", "reviewed.plan"]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stdout.contains(&format!("+ create    {name}"))
            && r.stdout.contains("plan: 1 to create")
            && r.stderr.contains(
                "error: the plan was not saved: the engine ID (docker info) of integration `edge` could not be read"
            ),
        "{}",
        shown(&r)
    );
    assert!(!env.dir().join("reviewed.plan").exists());

    let r = env.apply_ok();
    assert!(
        r.stdout
            .contains(&format!("ok create {name} `Remote` on edge")),
        "{}",
        shown(&r)
    );
    assert!(env.container(&name).running());
    env.assert_converged();
    let r = env.run(&["status", "."]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    let status = &r.stdout;
    assert!(
        status.contains("reachable, Docker 20.10")
            && status.contains("its info could not be read")
            && status
                .contains("answered 403: 403 Forbidden Request forbidden by administrative rules.")
            && status.contains("docker-socket-proxy's INFO=1")
            && !status.contains("<html>"),
        "{status}"
    );
}

/// With several integrations, one whose engine gives no daemon ID (a proxy that refuses
/// `info`) cannot be told apart from the others' engines: the plan says what was not
/// checked, instead of a silent 409 at apply when two outposts share a name there.
#[test]
fn an_engine_without_its_id_beside_another_integration_is_noted() {
    require_socket_proxy();
    let env = Env::new("noinfonote");
    let mut m = env.manifest();
    m["integrations"]["edge"] = json!({ "url": SOCKET_PROXY_NO_INFO });
    let mut o = env.outpost("rac", "AK_NOTE");
    o["integration"] = json!("edge");
    m["outposts"]["Remote"] = o;
    m["outposts"]["Here"] = env.outpost("rac", "AK_HERE");
    env.write(&m);
    let plan = env.plan_json();
    let notes: Vec<String> = plan["integrations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["name"] == "edge")
        .flat_map(|i| i["notes"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect();
    assert!(
        notes.iter().any(|n| n.contains(
            "the engine of integration `edge` did not give its daemon ID (a socket proxy that refuses `info`?)"
        )),
        "{plan:#}"
    );
    let local_notes = plan["integrations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == "local")
        .map(|i| i["notes"].clone());
    assert_eq!(local_notes, Some(serde_json::Value::Null), "{plan:#}");
}
