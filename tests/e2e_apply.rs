//! End to end on the real engine: creating outposts (checked with `docker inspect`), the
//! plan formats, confirmation, start/create/remove of what moved, and failures that do not
//! stop the other outposts. Needs `scripts/test-deps.sh`.

mod common;
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ports(pairs: &[(&str, u16)]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, p)| (k.to_string(), vec![format!("127.0.0.1:{p}")]))
        .collect()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase())
}

/// Labels of a container without the config hash, which must be a sha256.
fn labels_without_hash(c: &Inspect) -> BTreeMap<String, String> {
    let mut l = c.own_labels();
    let hash = l.remove(LABEL_CONFIG_HASH).unwrap_or_default();
    assert!(
        is_hex64(&hash),
        "config hash label `{hash}` of {}",
        c.name()
    );
    l
}

fn healthcheck(test: &[&str]) -> Value {
    json!({
        "Test": test,
        "Interval": 5_000_000_000u64,
        "StartPeriod": 3_000_000_000u64,
        "Retries": 20,
    })
}

/// A proxy, an ldap and a radius outpost, from a manifest written by hand: the containers
/// are exactly the ones authentik would deploy (name, image, env, labels with Traefik's,
/// ports, network, restart policy, health check), with our ownership labels; they start,
/// become healthy and answer on their ports; the plan afterwards is empty.
#[test]
fn creates_proxy_ldap_and_radius_as_authentik_would() {
    let env = Env::new("create");
    let (p9000, p9443, p389, p636, p1812) =
        (env.port(), env.port(), env.port(), env.port(), env.port());
    let tok_proxy = env.new_token("AK_PROXY");
    let tok_ldap = env.new_token("AK_LDAP");
    let tok_radius = env.new_token("AK_RADIUS");
    let (u_proxy, u_ldap, u_radius) = (env.uuid("p"), env.uuid("l"), env.uuid("r"));
    // The ldap uuid is written with dashes, as authentik's UI shows it.
    let u_ldap_dashed = format!(
        "{}-{}-{}-{}-{}",
        &u_ldap[..8],
        &u_ldap[8..12],
        &u_ldap[12..16],
        &u_ldap[16..20],
        &u_ldap[20..]
    );
    let yaml = format!(
        r#"# yaml-language-server: $schema=../../schemas/outpostctl.schema.json
version: 1
project: {project}

defaults:
  authentik_host: https://auth.example.com
  authentik_version: "2026.8.0"
  object_naming_template: "{prefix}%(name)s"
  docker_labels:
    com.example.team: infra

integrations:
  local: {{ local: true }}

outposts:
  Edge Proxy:
    type: proxy
    uuid: {u_proxy}
    integration: local
    token: {{ env: AK_PROXY }}
    external_hosts:
      - https://app.example.com
      - https://grafana.example.com:8443/path
    ports:
      "9000/tcp": "127.0.0.1:{p9000}"
      "9443/tcp": "127.0.0.1:{p9443}"
    config:
      docker_labels:
        traefik.enable: "false"    # Traefik's own labels win
  Directory:
    type: ldap
    uuid: {u_ldap_dashed}
    integration: local
    token: {{ env: AK_LDAP }}
    ports:
      "3389/tcp": "127.0.0.1:{p389}"
      "6636/tcp": "127.0.0.1:{p636}"
    config:
      authentik_host: https://LDAP-Auth.Example.com
      authentik_host_insecure: true
      docker_labels:
        com.example.role: directory
  RADIUS:
    type: radius
    uuid: {u_radius}
    integration: local
    token: {{ env: AK_RADIUS }}
    ports:
      "1812/udp": "127.0.0.1:{p1812}"
    config:
      authentik_host_browser: https://login.example.com
"#,
        project = env.project,
        prefix = env.prefix,
    );
    env.write_file("outposts.yaml", &yaml);

    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(
        plan.code,
        2,
        "a plan with changes exits 2:\n{}",
        shown(&plan)
    );
    assert!(
        plan.stdout.contains("plan: 3 to create"),
        "{}",
        shown(&plan)
    );
    let (n_proxy, n_ldap, n_radius) = (
        env.name_of("edge-proxy"),
        env.name_of("directory"),
        env.name_of("radius"),
    );
    for n in [&n_proxy, &n_ldap, &n_radius] {
        assert!(
            plan.stdout.contains(&format!("+ create    {n}")),
            "{n} not planned for create:\n{}",
            shown(&plan)
        );
    }
    // Planning changes nothing.
    assert!(env.project_containers().is_empty());

    let r = env.apply_ok();
    assert!(
        r.stdout.contains("apply: 3 done, 0 failed"),
        "{}",
        shown(&r)
    );
    for (n, o) in [
        (&n_proxy, "Edge Proxy"),
        (&n_ldap, "Directory"),
        (&n_radius, "RADIUS"),
    ] {
        assert!(
            r.stdout.contains(&format!("ok create {n} `{o}` on local")),
            "{}",
            shown(&r)
        );
    }
    let all = env.project_containers();
    assert_eq!(
        all.keys().cloned().collect::<Vec<_>>(),
        {
            let mut v = vec![n_proxy.clone(), n_ldap.clone(), n_radius.clone()];
            v.sort();
            v
        },
        "exactly the three outposts' containers carry the project label"
    );

    // --- proxy
    let proxy = env.container(&n_proxy);
    assert!(proxy.running(), "{} is {}", n_proxy, proxy.status());
    assert_eq!(proxy.image(), "ghcr.io/goauthentik/proxy:2026.8.0");
    let mut want_env = map(&[
        ("AUTHENTIK_HOST", "https://auth.example.com"),
        ("AUTHENTIK_INSECURE", "false"),
        ("AUTHENTIK_TOKEN", &tok_proxy),
        ("AUTHENTIK_HOST_BROWSER", ""),
    ]);
    // What the image itself sets.
    want_env.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    want_env.insert("TMPDIR".into(), "/tmp".into());
    assert_eq!(proxy.env(), want_env, "env of {n_proxy}");
    let r = format!("traefik.http.routers.{n_proxy}-router");
    let s = format!("traefik.http.services.{n_proxy}-service");
    let want = map(&[
        (LABEL_UUID, &u_proxy),
        ("com.example.team", "infra"),
        ("traefik.enable", "true"),
        (
            &format!("{r}.rule"),
            "(Host(`app.example.com`) || Host(`grafana.example.com:8443`)) && PathPrefix(`/outpost.goauthentik.io`)",
        ),
        (&format!("{r}.service"), &format!("{n_proxy}-service")),
        (&format!("{r}.tls"), "true"),
        (
            &format!("{s}.loadbalancer.healthcheck.path"),
            "/outpost.goauthentik.io/ping",
        ),
        (&format!("{s}.loadbalancer.healthcheck.port"), "9300"),
        (&format!("{s}.loadbalancer.server.port"), "9000"),
        (LABEL_PROJECT, &env.project),
        (LABEL_MANAGED_BY, "outpostctl"),
        (LABEL_OUTPOST, "Edge Proxy"),
        ("outpostctl.integration", "local"),
    ]);
    assert_eq!(labels_without_hash(&proxy), want, "labels of {n_proxy}");
    assert_eq!(
        proxy.port_bindings(),
        ports(&[("9000/tcp", p9000), ("9443/tcp", p9443)])
    );
    assert_eq!(proxy.restart_policy(), "unless-stopped");
    assert!(
        matches!(proxy.network_mode().as_str(), "default" | "bridge"),
        "network mode {}",
        proxy.network_mode()
    );
    assert_eq!(proxy.networks(), ["bridge"]);
    assert_eq!(
        proxy.healthcheck(),
        healthcheck(&["CMD", "/authentik", "healthcheck", "proxy"])
    );
    assert_eq!(proxy.0["Config"]["Cmd"], Value::Null, "no command");
    assert_eq!(proxy.0["HostConfig"]["Binds"], Value::Null, "no volumes");
    assert_eq!(proxy.0["Config"]["User"], "", "no user");

    // --- ldap
    let ldap = env.container(&n_ldap);
    assert!(ldap.running(), "{} is {}", n_ldap, ldap.status());
    assert_eq!(ldap.image(), "ghcr.io/goauthentik/ldap:2026.8.0");
    let e = ldap.env();
    assert_eq!(e["AUTHENTIK_HOST"], "https://ldap-auth.example.com");
    assert_eq!(e["AUTHENTIK_INSECURE"], "true");
    assert_eq!(e["AUTHENTIK_TOKEN"], tok_ldap);
    assert_eq!(e["AUTHENTIK_HOST_BROWSER"], "");
    assert_eq!(e.len(), 6, "env of {n_ldap}: {e:?}");
    let want = map(&[
        (LABEL_UUID, &u_ldap),
        ("com.example.team", "infra"),
        ("com.example.role", "directory"),
        (LABEL_PROJECT, &env.project),
        (LABEL_MANAGED_BY, "outpostctl"),
        (LABEL_OUTPOST, "Directory"),
        ("outpostctl.integration", "local"),
    ]);
    assert_eq!(labels_without_hash(&ldap), want, "labels of {n_ldap}");
    assert_eq!(
        ldap.port_bindings(),
        ports(&[("3389/tcp", p389), ("6636/tcp", p636)])
    );
    assert_eq!(ldap.restart_policy(), "unless-stopped");
    assert_eq!(ldap.networks(), ["bridge"]);
    assert_eq!(
        ldap.healthcheck(),
        healthcheck(&["CMD", "/ldap", "healthcheck"])
    );

    // --- radius
    let radius = env.container(&n_radius);
    assert!(radius.running(), "{} is {}", n_radius, radius.status());
    assert_eq!(radius.image(), "ghcr.io/goauthentik/radius:2026.8.0");
    let e = radius.env();
    assert_eq!(e["AUTHENTIK_HOST"], "https://auth.example.com");
    assert_eq!(e["AUTHENTIK_INSECURE"], "false");
    assert_eq!(e["AUTHENTIK_TOKEN"], tok_radius);
    assert_eq!(e["AUTHENTIK_HOST_BROWSER"], "https://login.example.com");
    assert_eq!(e.len(), 6, "env of {n_radius}: {e:?}");
    let want = map(&[
        (LABEL_UUID, &u_radius),
        ("com.example.team", "infra"),
        (LABEL_PROJECT, &env.project),
        (LABEL_MANAGED_BY, "outpostctl"),
        (LABEL_OUTPOST, "RADIUS"),
        ("outpostctl.integration", "local"),
    ]);
    assert_eq!(labels_without_hash(&radius), want, "labels of {n_radius}");
    assert_eq!(radius.port_bindings(), ports(&[("1812/udp", p1812)]));
    assert_eq!(radius.restart_policy(), "unless-stopped");
    assert_eq!(radius.networks(), ["bridge"]);
    assert_eq!(
        radius.healthcheck(),
        healthcheck(&["CMD", "/radius", "healthcheck"])
    );

    // Three different config hashes; no label holds a token (checked by `env.container`).
    let hashes: std::collections::BTreeSet<_> = [&proxy, &ldap, &radius]
        .iter()
        .map(|c| c.label(LABEL_CONFIG_HASH))
        .collect();
    assert_eq!(hashes.len(), 3);

    // The published port answers, and the health check command works in the image.
    let ping = || {
        http_get(
            &format!("127.0.0.1:{p9000}"),
            "/outpost.goauthentik.io/ping",
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || ping()
            .is_some_and(|(s, _)| s == 200)),
        "the proxy does not answer on 127.0.0.1:{p9000}: {:?}",
        ping()
    );
    for n in [&n_proxy, &n_ldap, &n_radius] {
        let h = env.wait_healthy(n, Duration::from_secs(40));
        assert_eq!(h.as_deref(), Some("healthy"), "health of {n}");
    }

    env.assert_converged();
    // A second apply has nothing to do and changes nothing.
    let again = env.apply_ok();
    assert!(
        again.stdout.contains("nothing to apply"),
        "{}",
        shown(&again)
    );
    assert_eq!(env.container(&n_proxy).id(), proxy.id());
}

/// `--format json` is the documented, versioned plan; `--format markdown` a table for a
/// pull-request comment.
#[test]
fn plan_formats_json_and_markdown() {
    let env = Env::new("formats");
    let mut m = env.manifest();
    m["outposts"]["Alpha"] = env.outpost("ldap", "AK_A");
    m["outposts"]["Beta"] = env.outpost("rac", "AK_B");
    env.write(&m);

    let plan = env.plan_json();
    assert_eq!(plan["format_version"], 1, "{plan:#}");
    assert_eq!(plan["project"], env.project.as_str());
    assert_eq!(plan["summary"]["create"], 2, "{plan:#}");
    assert_eq!(plan["summary"]["unchanged"], 0);
    assert_eq!(plan["changes"], true);
    let local = &plan["integrations"][0];
    assert_eq!(local["name"], "local");
    let a = action_of(&plan, "Alpha");
    assert_eq!(a["action"], "create");
    assert_eq!(a["name"], env.name_of("alpha").as_str());
    assert_eq!(action_of(&plan, "Beta")["action"], "create");

    let md = env.plan(&["--format", "markdown"]);
    assert_eq!(md.code, 0, "{}", shown(&md));
    assert!(
        md.stdout.contains(&format!(
            "### outpostctl plan for `{}`: 2 to create",
            env.project
        )),
        "{}",
        shown(&md)
    );
    assert!(
        md.stdout
            .contains("| | Action | Outpost | Container | Details |")
            && md.stdout.contains("|---|---|---|---|---|"),
        "no table:\n{}",
        shown(&md)
    );
    assert!(
        md.stdout
            .contains(&format!("| create | Alpha | `{}` |", env.name_of("alpha"))),
        "{}",
        shown(&md)
    );

    env.apply_ok();
    let plan = env.plan_json();
    assert_eq!(plan["summary"]["create"], 0);
    assert_eq!(plan["summary"]["unchanged"], 2, "{plan:#}");
    assert_eq!(plan["changes"], false);
    assert_eq!(action_of(&plan, "Alpha")["action"], "noop");
    let c = env.container(&env.name_of("alpha"));
    assert_eq!(
        action_of(&plan, "Alpha")["container"]["id"],
        c.id().as_str(),
        "the action names the live container"
    );
    let md = env.plan(&["--format", "markdown"]);
    assert!(md.stdout.contains("no changes"), "{}", shown(&md));

    // A change shows its reason in both.
    m["outposts"]["Alpha"]["config"]["docker_labels"] = json!({"com.example.x": "1"});
    env.write(&m);
    let plan = env.plan_json();
    let a = action_of(&plan, "Alpha");
    assert_eq!(a["action"], "recreate");
    assert_eq!(
        reason(&a, "labels.com.example.x"),
        Some(&json!({"field": "labels.com.example.x", "before": null, "after": "1"})),
        "{a:#}"
    );
    let md = env.plan(&["--format", "markdown"]);
    assert!(
        md.stdout.contains("| recreate | Alpha |") && md.stdout.contains("labels.com.example.x"),
        "{}",
        shown(&md)
    );
}

/// In the Markdown plan, reasons are code spans; inside a code span Markdown shows `&gt;`
/// literally, so the arrow must stay `->` there (only `|` needs its table escape).
#[test]
fn markdown_reasons_show_a_plain_arrow() {
    let env = Env::new("mdarrow");
    let mut m = env.manifest();
    m["outposts"]["Alpha"] = env.outpost("rac", "AK_A");
    env.write(&m);
    env.apply_ok();
    m["outposts"]["Alpha"]["config"]["docker_labels"] = json!({"com.example.x": "1"});
    env.write(&m);
    let md = env.plan(&["--format", "markdown"]);
    assert!(
        md.stdout.contains("`labels.com.example.x: (none) -> 1`"),
        "{}",
        shown(&md)
    );
}

/// Without a terminal and without --auto-approve, apply refuses and changes nothing.
#[test]
fn apply_without_terminal_or_auto_approve_refuses() {
    let env = Env::new("notty");
    let mut m = env.manifest();
    m["outposts"]["Solo"] = env.outpost("radius", "AK_SOLO");
    env.write(&m);
    let r = env.run(&["apply", "."]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stderr.contains("refusing to apply without confirmation")
            && r.stderr.contains("--auto-approve"),
        "{}",
        shown(&r)
    );
    assert!(
        env.project_containers().is_empty(),
        "apply changed the engine"
    );
}

/// A stopped outpost is started (same container), not recreated.
#[test]
fn stopped_outpost_is_started() {
    let env = Env::new("start");
    let mut m = env.manifest();
    m["outposts"]["Sleepy"] = env.outpost("ldap", "AK_S");
    m["outposts"]["Awake"] = env.outpost("rac", "AK_W");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("sleepy");
    let before = env.container(&name);
    docker_ok(&["stop", "-t", "5", &name]);
    assert!(!env.container(&name).running());

    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!("^ start     {name}"))
            && plan.stdout.contains("state: exited -> running")
            && plan.stdout.contains("plan: 1 to start, 1 unchanged"),
        "{}",
        shown(&plan)
    );
    env.apply_ok();
    let after = env.container(&name);
    assert!(after.running(), "{name} is {}", after.status());
    assert_eq!(after.id(), before.id(), "started, not recreated");
    env.assert_converged();
}

/// A container removed by hand is planned for create, and created again.
#[test]
fn container_removed_by_hand_is_created_again() {
    let env = Env::new("gone");
    let mut m = env.manifest();
    m["outposts"]["Lost"] = env.outpost("proxy", "AK_L");
    m["outposts"]["Kept"] = env.outpost("radius", "AK_K");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("lost");
    let old = env.container(&name).id();
    let kept = env.container(&env.name_of("kept")).id();
    docker_ok(&["rm", "-f", &name]);

    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!("+ create    {name}"))
            && plan.stdout.contains("plan: 1 to create, 1 unchanged"),
        "{}",
        shown(&plan)
    );
    env.apply_ok();
    let new = env.container(&name);
    assert!(new.running());
    assert_ne!(new.id(), old);
    assert_eq!(env.container(&env.name_of("kept")).id(), kept);
    env.assert_converged();
}

/// An outpost removed from the manifests is removed; the others stay as they are.
#[test]
fn outpost_removed_from_manifests_is_removed() {
    let env = Env::new("prune");
    let mut m = env.manifest();
    m["outposts"]["Old"] = env.outpost("ldap", "AK_O");
    m["outposts"]["Stays"] = env.outpost("radius", "AK_S");
    env.write(&m);
    env.apply_ok();
    let old = env.name_of("old");
    let stays = env.container(&env.name_of("stays")).id();
    assert!(inspect(&old).is_some());

    m["outposts"].as_object_mut().unwrap().remove("Old");
    env.write(&m);
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!("- remove    {old}"))
            && plan
                .stdout
                .contains("outpost: in the manifests -> removed from the manifests")
            && plan.stdout.contains("plan: 1 to remove, 1 unchanged"),
        "{}",
        shown(&plan)
    );
    let json = env.plan_json();
    assert_eq!(action_of(&json, "Old")["action"], "remove");
    let r = env.apply_ok();
    assert!(
        r.stdout
            .contains(&format!("ok remove {old} `Old` on local")),
        "{}",
        shown(&r)
    );
    assert!(inspect(&old).is_none(), "{old} is still there");
    assert_eq!(env.container(&env.name_of("stays")).id(), stays);
    env.assert_converged();
    assert_eq!(env.project_containers().len(), 1);
}

/// A host port held by a process outside Docker (the plan cannot see it) makes that one
/// outpost fail at apply, naming the port and the process; the others are created, the
/// summary names the failure and the exit code is 1. Once the port is free, a rerun converges.
#[test]
fn port_conflict_fails_one_outpost_not_the_others() {
    let env = Env::new("portclash");
    let mut m = env.manifest();
    let mut proxy = env.outpost("proxy", "AK_P");
    let proxy_ports = env.publish(&mut proxy);
    let taken = proxy_ports["9000/tcp"];
    m["outposts"]["Blocked Proxy"] = proxy;
    let mut ldap = env.outpost("ldap", "AK_L");
    env.publish(&mut ldap);
    m["outposts"]["Fine LDAP"] = ldap;
    let mut radius = env.outpost("radius", "AK_R");
    env.publish(&mut radius);
    m["outposts"]["Fine RADIUS"] = radius;
    env.write(&m);

    let squatter = std::net::TcpListener::bind(("127.0.0.1", taken))
        .unwrap_or_else(|e| panic!("cannot take port {taken} for the test: {e}"));

    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    let n_proxy = env.name_of("blocked-proxy");
    assert!(
        r.stdout
            .contains(&format!("FAILED create {n_proxy} `Blocked Proxy` on local")),
        "{}",
        shown(&r)
    );
    assert!(
        r.stdout.contains(&format!(
            "host port {taken} is already taken by a process outside Docker"
        )),
        "the failure names the port and what holds it:\n{}",
        shown(&r)
    );
    assert!(
        r.stdout.contains("apply: 2 done, 1 failed"),
        "{}",
        shown(&r)
    );
    for n in ["fine-ldap", "fine-radius"] {
        let c = env.container(&env.name_of(n));
        assert!(c.running(), "{n} was not created and started");
    }
    // The failed outpost leaves no half-made container behind.
    assert!(
        inspect(&n_proxy).is_none(),
        "{n_proxy} was left behind although its port is taken"
    );

    drop(squatter);
    let again = env.apply_ok();
    assert!(
        again
            .stdout
            .contains(&format!("ok create {n_proxy} `Blocked Proxy` on local")),
        "{}",
        shown(&again)
    );
    assert!(env.container(&n_proxy).running());
    env.assert_converged();
}

/// A host port published by a running container this project does not manage: the plan
/// blocks that outpost and names the container (exit 1); apply creates the others and leaves
/// the squatter alone; once it is gone, a rerun converges.
#[test]
fn a_port_another_container_publishes_blocks_that_outpost() {
    let env = Env::new("portsquat");
    let mut m = env.manifest();
    let mut proxy = env.outpost("proxy", "AK_P");
    let taken = env.publish(&mut proxy)["9443/tcp"];
    m["outposts"]["Web"] = proxy;
    m["outposts"]["Fine"] = env.outpost("rac", "AK_F");
    env.write(&m);
    let blocker = env.name_of("port-squatter");
    let blocker_id = env.docker_container(
        "run",
        &blocker,
        &["-d", "-p", &format!("127.0.0.1:{taken}:9443"), IMAGE_V1],
    );

    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 1, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!(
            "host port {taken}/tcp is taken by container `{blocker}` ({}), which outpostctl does not manage",
            &blocker_id[..12]
        )) && plan.stdout.contains("plan: 1 to create, 1 blocked"),
        "{}",
        shown(&plan)
    );
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stdout.contains("apply: 1 done, 0 failed, 1 blocked"),
        "{}",
        shown(&r)
    );
    assert!(inspect(&env.name_of("web")).is_none());
    assert!(env.container(&env.name_of("fine")).running());
    assert!(
        env.container(&blocker).running(),
        "the squatter was touched"
    );

    docker_ok(&["rm", "-f", &blocker]);
    env.apply_ok();
    assert!(env.container(&env.name_of("web")).running());
    env.assert_converged();
}

/// A container the plan only blocks stays where it is, with its ports: authentik's own
/// container of an outpost, not adopted (no `--adopt`), still publishes its port, so another
/// outpost that wants that port is blocked too, naming it, instead of a create that fails at
/// apply with "port is already allocated". Neither is touched.
#[test]
fn a_port_held_by_a_container_the_plan_only_blocks_blocks_the_outpost_that_wants_it() {
    let env = Env::new("blockedport");
    let uuid = env.uuid("migrating");
    let mut m = env.manifest();
    let mut migrating = env.outpost("radius", "AK_M");
    migrating["uuid"] = json!(uuid);
    m["outposts"]["Migrating"] = migrating;
    let mut web = env.outpost("proxy", "AK_W");
    let taken = env.publish(&mut web)["9443/tcp"];
    m["outposts"]["Web"] = web;
    env.write(&m);
    // authentik's container of `Migrating`, still running, on the port `Web` wants.
    let theirs_name = env.name_of("authentik-migrating");
    let theirs = env.docker_container(
        "run",
        &theirs_name,
        &[
            "-d",
            "--label",
            &format!("{LABEL_UUID}={uuid}"),
            "-p",
            &format!("127.0.0.1:{taken}:9443"),
            IMAGE_V1,
        ],
    );

    let plan = env.plan_json_with(&[], true);
    assert_eq!(
        action_of(&plan, "Migrating")["action"],
        "blocked",
        "{plan:#}"
    );
    let a = action_of(&plan, "Web");
    assert_eq!(a["action"], "blocked", "{a:#}");
    assert!(
        a["error"].as_str().is_some_and(|e| e.contains(&format!(
            "host port {taken}/tcp is taken by container `{theirs_name}`"
        ))),
        "{a:#}"
    );
    env.apply_all_blocked(2);
    assert!(inspect(&env.name_of("web")).is_none());
    let after = env.container(&theirs_name);
    assert!(
        after.running() && after.id() == theirs,
        "authentik's container was touched"
    );
}

/// `pull: never` with an image the engine does not have: the plan blocks that outpost only,
/// naming the image and the policy; the others are applied.
#[test]
fn pull_never_with_missing_image_blocks_that_outpost_only() {
    let env = Env::new("never");
    let image = format!("outpostctl-test/outpost:absent-{}", std::process::id());
    let mut m = env.manifest();
    let mut strict = env.outpost("radius", "AK_N");
    strict["pull"] = json!("never");
    strict["config"]["container_image"] = json!(image);
    m["outposts"]["Strict"] = strict;
    m["outposts"]["Other"] = env.outpost("ldap", "AK_O");
    env.write(&m);

    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    let strict_name = env.name_of("strict");
    assert!(
        r.stdout
            .contains(&format!("! blocked   {strict_name}  Strict"))
            && r.stdout.contains(&format!(
                "image `{image}` is not on this engine and `pull: never` forbids pulling it"
            )),
        "{}",
        shown(&r)
    );
    assert!(
        r.stdout.contains("apply: 1 done, 0 failed, 1 blocked"),
        "{}",
        shown(&r)
    );
    assert!(env.container(&env.name_of("other")).running());
    assert!(inspect(&strict_name).is_none());
    assert!(image_id(&image).is_none(), "pull: never pulled");

    // Once the image is there, a rerun converges without pulling.
    env.track_image_tag(&image);
    docker_ok(&["tag", IMAGE_V1, &image]);
    env.apply_ok();
    assert_eq!(env.container(&strict_name).image(), image);
    env.assert_converged();
}

/// A recreate whose new container cannot start (its new host port is taken by a process) puts
/// the old container back, under its name and running, and reports the error; freed, it
/// converges.
#[test]
fn failed_recreate_puts_the_old_container_back() {
    let env = Env::new("putback");
    let mut m = env.manifest();
    let mut o = env.outpost("proxy", "AK_P");
    env.publish(&mut o);
    m["outposts"]["Phoenix"] = o;
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("phoenix");
    let old = env.container(&name);

    let taken = env.port();
    m["outposts"]["Phoenix"]["ports"]["9000/tcp"] = json!(format!("127.0.0.1:{taken}"));
    env.write(&m);
    // A process holds the new port: the plan cannot see it, the new container cannot start.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", taken))
        .unwrap_or_else(|e| panic!("cannot take port {taken} for the test: {e}"));
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stdout
            .contains(&format!("FAILED recreate {name} `Phoenix` on local"))
            && r.stdout
                .contains("the previous container was started again"),
        "{}",
        shown(&r)
    );
    let back = env.container(&name);
    assert_eq!(back.id(), old.id(), "the old container is back");
    assert!(back.running(), "the old container runs again");
    assert_eq!(back.port_bindings(), old.port_bindings());
    assert_eq!(
        env.project_containers().len(),
        1,
        "no half-made replacement is left"
    );
    let plan = env.plan_json();
    assert_eq!(action_of(&plan, "Phoenix")["action"], "recreate");

    drop(squatter);
    env.apply_ok();
    let new = env.container(&name);
    assert_ne!(new.id(), old.id());
    assert_eq!(
        new.port_bindings()["9000/tcp"],
        [format!("127.0.0.1:{taken}")]
    );
    env.assert_converged();
}

/// On a terminal, apply shows the plan and asks: anything but `yes` cancels and changes
/// nothing; `yes` applies.
#[test]
fn apply_on_a_terminal_asks_first() {
    let env = Env::new("confirm");
    let mut m = env.manifest();
    m["outposts"]["Asked"] = env.outpost("ldap", "AK_A");
    env.write(&m);
    let name = env.name_of("asked");

    let r = env.run_on_terminal(&["apply", "."], "no");
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stdout.contains(&format!("+ create    {name}"))
            && r.stdout
                .contains("Apply these changes? Only `yes` is accepted:")
            && r.stdout.contains("apply cancelled; nothing was changed"),
        "{}",
        shown(&r)
    );
    assert!(
        env.project_containers().is_empty(),
        "a cancelled apply changed the engine"
    );

    let r = env.run_on_terminal(&["apply", "."], "yes");
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert!(
        r.stdout
            .contains(&format!("ok create {name} `Asked` on local")),
        "{}",
        shown(&r)
    );
    assert!(env.container(&name).running());
    env.assert_converged();
}

/// Ctrl-C at the question cancels the apply at once (the read of the answer does not hold
/// the process), and nothing is changed.
#[test]
fn ctrl_c_at_the_question_cancels_at_once() {
    let env = Env::new("confirmint");
    let mut m = env.manifest();
    m["outposts"]["Asked"] = env.outpost("ldap", "AK_A");
    env.write(&m);
    // ^C on the terminal once the question is asked (the time noted); then a key that ends
    // no line (NUL) every 0.1 s for 10 s, until the terminal is gone.
    let pressed = env.dir().join(".ctrl-c-at");
    let typing = format!(
        "{WAIT_FOR_THE_QUESTION}; date +%s.%N > '{}'; printf '\\003'; i=0; \
        while [ $i -lt 100 ] && printf '\\000' 2>/dev/null; do sleep 0.1; i=$((i+1)); done",
        pressed.display()
    );
    let r = env.run_on_terminal_typing(&["apply", "."], &typing, None);
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let at: f64 = std::fs::read_to_string(&pressed)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("Ctrl-C was never pressed:\n{}", shown(&r)));
    let took = Duration::from_secs_f64((ended - at).max(0.0));
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stdout
            .contains("Apply these changes? Only `yes` is accepted:")
            && r.stdout
                .contains("apply cancelled (interrupted); nothing was changed"),
        "{}",
        shown(&r)
    );
    assert!(
        took < Duration::from_secs(5),
        "the apply waited for the keyboard after Ctrl-C: {took:?}"
    );
    assert!(env.project_containers().is_empty());
}

/// `apply > log` on a terminal: the question is asked on the terminal with the plan it is
/// about (not only in the file), and the file has the plan as well.
#[test]
fn apply_with_its_output_in_a_file_asks_with_the_plan_on_the_terminal() {
    let env = Env::new("confirmlog");
    let mut m = env.manifest();
    m["outposts"]["Asked"] = env.outpost("ldap", "AK_A");
    env.write(&m);
    let name = env.name_of("asked");
    let log = env.dir().join("apply.log");

    let r = env.run_on_terminal_to(&["apply", "."], "no", Some(&log));
    assert_eq!(r.code, 1, "{}", shown(&r));
    let create = format!("+ create    {name}");
    let terminal = &r.stdout;
    let (plan, question) = (
        terminal.find(&create),
        terminal.find("Apply these changes? Only `yes` is accepted:"),
    );
    assert!(
        plan.zip(question).is_some_and(|(p, q)| p < q),
        "the terminal does not show the plan before the question:\n{terminal}"
    );
    let written = fs::read_to_string(&log).expect("the log file");
    assert!(written.contains(&create), "the log file:\n{written}");
    env.assert_no_secret("the log file", &written);
    assert!(env.project_containers().is_empty());
}

/// A running container that fails its health check is restarted (same container), as
/// authentik does. The unhealthy container is a copy of ours made by hand with a quick
/// health check and the fake image's switch to fail it (`OUTPOSTCTL_TEST_UNHEALTHY`).
#[test]
fn unhealthy_outpost_is_restarted() {
    let env = Env::new("unhealthy");
    let mut m = env.manifest();
    m["outposts"]["Sick"] = env.outpost("ldap", "AK_S");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("sick");
    let ours = env.container(&name);
    docker_ok(&["rm", "-f", &name]);

    let id = unhealthy_copy(&name, &ours, "/ldap healthcheck");
    let started = env.container(&id).0["State"]["StartedAt"].clone();

    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!("^ restart   {name}"))
            && plan.stdout.contains("health: unhealthy -> restarted")
            && plan.stdout.contains("plan: 1 to restart"),
        "{}",
        shown(&plan)
    );
    let r = env.apply_ok();
    assert!(
        r.stdout
            .contains(&format!("ok restart {name} `Sick` on local")),
        "{}",
        shown(&r)
    );
    let after = env.container(&name);
    assert_eq!(after.id(), id, "restarted, not recreated");
    assert!(after.running());
    assert_ne!(after.0["State"]["StartedAt"], started, "not restarted");
}

/// An engine that cannot be reached fails its integration only: the plan says so (exit 1),
/// and apply still changes the engines it can reach.
#[test]
fn unreachable_engine_fails_its_integration_only() {
    let env = Env::new("down");
    let dead = env.port();
    let mut m = env.manifest();
    m["integrations"]["down"] = json!({ "url": format!("http://127.0.0.1:{dead}") });
    m["outposts"]["Here"] = env.outpost("ldap", "AK_H");
    let mut far = env.outpost("ldap", "AK_F");
    far["integration"] = json!("down");
    m["outposts"]["Far"] = far;
    env.write(&m);

    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 1, "{}", shown(&plan));
    assert!(
        plan.stdout
            .contains(&format!("integration down (http://127.0.0.1:{dead})"))
            && plan.stdout.contains("! error:")
            && plan
                .stdout
                .contains("1 engine could not be read (1 outpost not checked)")
            && plan.stdout.contains("1 outpost not checked: Far")
            && plan
                .stdout
                .contains(&format!("+ create    {}", env.name_of("here"))),
        "{}",
        shown(&plan)
    );
    let json = env.plan_json_with(&[], true);
    assert_eq!(json["summary"]["failed_engines"], 1, "{json:#}");
    assert_eq!(json["summary"]["unchecked"], 1, "{json:#}");
    let down = json["integrations"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == "down"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(down["unchecked"], json!(["Far"]), "{json:#}");
    assert_eq!(down["actions"], json!([]), "{json:#}");

    let status = env.run(&["status", "--format", "json", "."]);
    assert_eq!(status.code, 1, "{}", shown(&status));
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap_or_default();
    let down = status["integrations"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["integration"] == "down"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(down["reachable"], false, "{status:#}");
    assert_eq!(down["unchecked"], json!(["Far"]), "{status:#}");

    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stdout.contains("FAILED integration down:")
            && r.stdout.contains("apply: 1 done, 1 failed"),
        "{}",
        shown(&r)
    );
    assert!(env.container(&env.name_of("here")).running());
}

/// A `docker_network` that does not exist blocks that outpost, with a hint to create it; the
/// others are applied. (Docker 20.10 accepts the create and fails the start with 404 "network
/// NET not found": the plan finds it first. Where it cannot, through a socket proxy that
/// refuses the network list, apply fails that outpost with the same hint: e2e_proxy.)
#[test]
fn missing_network_blocks_that_outpost_with_a_hint() {
    let env = Env::new("nonet");
    let net = env.name_of("no-such-net");
    let mut m = env.manifest();
    let mut o = env.outpost("radius", "AK_N");
    o["config"]["docker_network"] = json!(net);
    m["outposts"]["Netless"] = o;
    m["outposts"]["Fine"] = env.outpost("rac", "AK_F");
    env.write(&m);
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stdout
            .contains(&format!("! blocked   {}  Netless", env.name_of("netless")))
            && r.stdout.contains(&format!("`docker network create {net}`"))
            && r.stdout.contains("apply: 1 done, 0 failed, 1 blocked"),
        "{}",
        shown(&r)
    );
    assert!(env.container(&env.name_of("fine")).running());
    assert!(
        inspect(&env.name_of("netless")).is_none(),
        "a container was made for the blocked outpost"
    );
}

/// A host port handed from one outpost to another in one change (Old moves to other ports,
/// New takes Old's): one apply converges, since the recreates that move ports run before
/// the actions that may need the ports they free.
#[test]
fn a_host_port_handed_from_one_outpost_to_another_converges_in_one_apply() {
    let env = Env::new("handoff");
    let mut m = env.manifest();
    let mut old = env.outpost("ldap", "AK_OLD");
    let first = env.publish(&mut old);
    m["outposts"]["Old"] = old;
    env.write(&m);
    env.apply_ok();

    let mut moved = m["outposts"]["Old"].clone();
    env.publish(&mut moved);
    m["outposts"]["Old"] = moved;
    let mut new = env.outpost("ldap", "AK_NEW");
    for (port, host) in &first {
        new["ports"][port] = json!(format!("127.0.0.1:{host}"));
    }
    new["config"]["docker_map_ports"] = json!(true);
    m["outposts"]["New"] = new;
    env.write(&m);
    let r = env.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    let new = env.container(&env.name_of("new"));
    for host in first.values() {
        assert!(
            new.publishes(*host),
            "New does not publish {host}: {:?}",
            new.port_bindings()
        );
    }
    env.assert_converged();
}

/// Two outposts swapping host ports in one change (each needs the other's freed first): one
/// apply converges, both previous containers stopped before either new one starts.
#[test]
fn host_ports_swapped_between_two_outposts_converge_in_one_apply() {
    let env = Env::new("swap");
    let mut m = env.manifest();
    let mut left = env.outpost("ldap", "AK_LEFT");
    let left_ports = env.publish(&mut left);
    let mut right = env.outpost("ldap", "AK_RIGHT");
    let right_ports = env.publish(&mut right);
    m["outposts"]["Left"] = left;
    m["outposts"]["Right"] = right;
    env.write(&m);
    env.apply_ok();

    for (port, host) in &right_ports {
        m["outposts"]["Left"]["ports"][port] = json!(format!("127.0.0.1:{host}"));
    }
    for (port, host) in &left_ports {
        m["outposts"]["Right"]["ports"][port] = json!(format!("127.0.0.1:{host}"));
    }
    env.write(&m);
    let r = env.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    for (slug, want) in [("left", &right_ports), ("right", &left_ports)] {
        let c = env.container(&env.name_of(slug));
        for host in want.values() {
            assert!(
                c.publishes(*host),
                "{slug} does not publish {host}: {:?}",
                c.port_bindings()
            );
        }
    }
    env.assert_converged();
}

/// A recreate blocked by a missing network leaves the previous container running, healthy;
/// `status` says the outpost is blocked and why, and `--detailed-exitcode` flags it (2) for
/// monitoring, although the container itself is fine.
#[test]
fn status_flags_an_outpost_whose_recreate_is_blocked() {
    let env = Env::new("stblock");
    let mut m = env.manifest();
    m["outposts"]["Moving"] = env.outpost("rac", "AK_M");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("moving");
    assert_eq!(
        env.wait_healthy(&name, Duration::from_secs(60)).as_deref(),
        Some("healthy")
    );
    let fine = env.run(&["status", "--detailed-exitcode", "."]);
    assert_eq!(fine.code, 0, "{}", shown(&fine));

    let net = env.name_of("not-yet");
    m["outposts"]["Moving"]["config"]["docker_network"] = json!(net);
    env.write(&m);
    let r = env.run(&["status", "--detailed-exitcode", "."]);
    assert_eq!(r.code, 2, "{}", shown(&r));
    assert!(
        r.stdout.contains(&format!(
            "{name}: running, healthy; blocked: network `{net}` does not exist on this engine"
        )),
        "{}",
        shown(&r)
    );
    let plain = env.run(&["status", "."]);
    assert_eq!(plain.code, 0, "status only reads: {}", shown(&plain));
}

/// A paused outpost is brought back to running: Docker refuses to start a paused container
/// (409 "try unpause instead"), so apply unpauses it: the same container, running.
#[test]
fn paused_outpost_is_resumed() {
    let env = Env::new("paused");
    let mut m = env.manifest();
    m["outposts"]["Frozen"] = env.outpost("ldap", "AK_F");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("frozen");
    let id = env.container(&name).id();
    docker_ok(&["pause", &name]);
    assert_eq!(env.container(&name).status(), "paused");
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    let planned = env.plan_json();
    assert_eq!(
        action_of(&planned, "Frozen")["action"],
        "unpause",
        "{planned:#}"
    );
    let r = env.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert!(
        r.stdout.contains(&format!("ok unpause {name}")),
        "{}",
        shown(&r)
    );
    let c = env.container(&name);
    assert_eq!(c.status(), "running");
    assert_eq!(c.id(), id);
    // While paused, its health checks failed; the next one after unpausing passes. Until
    // then the plan rightly wants to restart an unhealthy container, as authentik does.
    assert!(
        wait_until(Duration::from_secs(20), || env
            .container(&name)
            .health()
            .as_deref()
            == Some("healthy")),
        "the unpaused container becomes healthy again"
    );
    env.assert_converged();
}

/// Leftovers of an interrupted recreate (a second container of ours for the same outpost,
/// parked under `<name>-outpostctl-old`, linked to the other by `outpostctl.replaces`: here
/// a recreate to other settings, interrupted, whose manifests then went back) are removed;
/// the right one is kept.
#[test]
fn leftover_of_an_interrupted_recreate_is_removed() {
    let env = Env::new("leftover");
    let mut m = env.manifest();
    m["outposts"]["Twice"] = env.outpost("radius", "AK_T");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("twice");
    let ours = env.container(&name);
    // The old container a recreate parked, stopped, with our labels.
    let parked = format!("{name}-outpostctl-old");
    let mut args: Vec<String> = vec!["create".into(), "--name".into(), parked.clone()];
    for (k, v) in ours.own_labels() {
        let v = if k == LABEL_CONFIG_HASH {
            "0".repeat(64)
        } else {
            v
        };
        args.extend(["--label".into(), format!("{k}={v}")]);
    }
    args.extend([
        "--label".into(),
        format!("outpostctl.replaces={}", ours.id()),
    ]);
    args.push(ours.image());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let parked_id = docker_ok(&args);

    let json = env.plan_json();
    let removals: Vec<_> = actions(&json)
        .into_iter()
        .filter(|a| a["action"] == "remove")
        .collect();
    assert_eq!(removals.len(), 1, "{json:#}");
    assert_eq!(removals[0]["container"]["id"], parked_id.as_str());
    assert_eq!(reason_fields(&removals[0]), ["duplicate"]);
    let twice: Vec<_> = actions(&json)
        .into_iter()
        .filter(|a| a["outpost"] == "Twice" && a["action"] != "remove")
        .collect();
    assert_eq!(twice.len(), 1);
    assert_eq!(twice[0]["action"], "noop", "{json:#}");

    env.apply_ok();
    assert!(inspect(&parked_id).is_none(), "the leftover remains");
    assert_eq!(env.container(&name).id(), ours.id());
    env.assert_converged();
}

/// The health check follows the image: `/proxy healthcheck` for proxy images older than
/// 2026.8, `/authentik healthcheck proxy` from 2026.8; the manifest may override it.
#[test]
fn health_check_follows_the_image_version_or_the_manifest() {
    let env = Env::new("hcheck");
    let old_image = format!("outpostctl-test/outpost:2025.10.{}", std::process::id());
    env.track_image_tag(&old_image);
    docker_ok(&["tag", IMAGE_V1, &old_image]);
    let mut m = env.manifest();
    let mut old = env.outpost("proxy", "AK_O");
    old["config"]["container_image"] = json!(old_image);
    m["outposts"]["Old"] = old;
    m["outposts"]["New"] = env.outpost("proxy", "AK_N");
    let mut custom = env.outpost("radius", "AK_C");
    custom["healthcheck"] = json!(["/radius", "healthcheck", "--custom"]);
    m["outposts"]["Custom"] = custom;
    env.write(&m);
    env.apply_ok();
    assert_eq!(
        env.container(&env.name_of("old")).healthcheck()["Test"],
        json!(["CMD", "/proxy", "healthcheck"])
    );
    assert_eq!(
        env.container(&env.name_of("new")).healthcheck()["Test"],
        json!(["CMD", "/authentik", "healthcheck", "proxy"])
    );
    assert_eq!(
        env.container(&env.name_of("custom")).healthcheck()["Test"],
        json!(["CMD", "/radius", "healthcheck", "--custom"])
    );
    let h = env.wait_healthy(&env.name_of("old"), Duration::from_secs(40));
    assert_eq!(h.as_deref(), Some("healthy"));
    env.assert_converged();
}
