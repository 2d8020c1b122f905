//! End to end on the real engine: every setting that changes the container (image, network,
//! labels, ports, authentik host, insecure flag, token) is planned as a recreate with its
//! reason and converges after apply; a naming-template change renames (or recreates proxies,
//! whose Traefik labels embed the name). Needs `scripts/test-deps.sh`.

mod common;
mod support;

use serde_json::{Value, json};
use support::*;

/// What a change did: the plan before the apply and the container before and after.
struct Changed {
    env: Env,
    name: String,
    before: Inspect,
    after: Inspect,
    /// Human plan output.
    plan: String,
    /// `plan --diff` output.
    diff: String,
    /// The subject's action in the JSON plan.
    action: Value,
    /// The manifest after the change.
    manifest: Value,
}

/// Applies a manifest with the outpost `Subject` (of `kind`, shaped by `setup`) and an
/// unrelated `Bystander`; then `change`s the manifest and checks that the plan is exactly a
/// recreate of the subject (exit 2), that apply replaces its container and leaves the
/// bystander alone, and that the plan is empty afterwards.
fn recreate_case(
    tag: &str,
    kind: &str,
    setup: impl FnOnce(&Env, &mut Value),
    change: impl FnOnce(&Env, &mut Value),
) -> Changed {
    let env = Env::new(tag);
    let mut m = env.manifest();
    let mut subject = env.outpost(kind, "AK_SUBJECT");
    setup(&env, &mut subject);
    m["outposts"]["Subject"] = subject;
    m["outposts"]["Bystander"] = env.outpost("rac", "AK_BYSTANDER");
    env.write(&m);
    env.apply_ok();
    env.assert_converged();
    let name = env.name_of("subject");
    let before = env.container(&name);
    let bystander = env.container(&env.name_of("bystander")).id();

    let mut subject = m["outposts"]["Subject"].take();
    change(&env, &mut subject);
    m["outposts"]["Subject"] = subject;
    env.write(&m);

    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!("~ recreate  {name}"))
            && plan.stdout.contains("plan: 1 to recreate, 1 unchanged"),
        "{}",
        shown(&plan)
    );
    let json = env.plan_json();
    let action = action_of(&json, "Subject");
    assert_eq!(action["action"], "recreate", "{action:#}");
    assert_eq!(action["container"]["id"], before.id().as_str());
    let diff = env.plan(&["--diff"]);
    assert_eq!(diff.code, 0, "{}", shown(&diff));

    let r = env.apply_ok();
    assert!(
        r.stdout
            .contains(&format!("ok recreate {name} `Subject` on local")),
        "{}",
        shown(&r)
    );
    let after = env.container(&name);
    assert_ne!(after.id(), before.id(), "the container was replaced");
    assert!(after.running(), "{name} is {}", after.status());
    assert!(
        inspect(&before.id()).is_none(),
        "the old container was removed"
    );
    assert_eq!(
        env.container(&env.name_of("bystander")).id(),
        bystander,
        "the bystander was left alone"
    );
    assert_eq!(env.project_containers().len(), 2);
    assert_eq!(
        after.label(LABEL_UUID),
        before.label(LABEL_UUID),
        "same outpost"
    );
    assert_ne!(
        after.label(LABEL_CONFIG_HASH),
        before.label(LABEL_CONFIG_HASH)
    );
    env.assert_converged();
    Changed {
        env,
        name,
        before,
        after,
        plan: plan.stdout,
        diff: diff.stdout,
        action,
        manifest: m,
    }
}

/// The reason for `field` must be in the JSON action and the human plan.
fn assert_reason(c: &Changed, field: &str, before: Value, after: Value) {
    let r =
        reason(&c.action, field).unwrap_or_else(|| panic!("no reason `{field}` in {:#}", c.action));
    assert_eq!(r["before"], before, "{:#}", c.action);
    assert_eq!(r["after"], after, "{:#}", c.action);
    assert!(
        c.plan.contains(&format!("      {field}: ")),
        "the human plan does not name `{field}`:\n{}",
        c.plan
    );
}

#[test]
fn image_change_recreates() {
    let c = recreate_case(
        "image",
        "ldap",
        |_, o| o["config"]["container_image"] = json!(IMAGE_V1),
        |_, o| o["config"]["container_image"] = json!(IMAGE_V2),
    );
    assert_reason(&c, "image", json!(IMAGE_V1), json!(IMAGE_V2));
    assert_eq!(
        reason_fields(&c.action),
        ["image"],
        "only the image differs"
    );
    assert!(
        c.plan.contains(&format!("image: {IMAGE_V1} -> {IMAGE_V2}")),
        "{}",
        c.plan
    );
    assert_eq!(c.before.image(), IMAGE_V1);
    assert_eq!(c.after.image(), IMAGE_V2);
    assert_eq!(Some(c.after.image_id()), image_id(IMAGE_V2));
    assert_ne!(c.after.image_id(), c.before.image_id());
}

/// From authentik's default image to a custom one: the plan must say that the image changes.
/// (The default image is also the custom image's fallback, and the reasons skip a live image
/// equal to the fallback, so the plan only shows `config-hash: ... -> ...`.)
#[test]
fn image_change_from_the_default_image_names_the_image() {
    let c = recreate_case(
        "imagedef",
        "ldap",
        |_, _| {},
        |_, o| o["config"]["container_image"] = json!(IMAGE_V2),
    );
    assert_eq!(c.before.image(), "ghcr.io/goauthentik/ldap:2026.8.0");
    assert_eq!(c.after.image(), IMAGE_V2);
    assert_reason(
        &c,
        "image",
        json!("ghcr.io/goauthentik/ldap:2026.8.0"),
        json!(IMAGE_V2),
    );
}

#[test]
fn network_change_recreates() {
    let mut net = String::new();
    let c = recreate_case(
        "network",
        "proxy",
        |_, _| {},
        |env, o| {
            net = env.network("net");
            o["config"]["docker_network"] = json!(net);
        },
    );
    assert_reason(&c, "network", json!("bridge"), json!(net));
    assert_eq!(c.before.networks(), ["bridge"]);
    assert_eq!(c.after.network_mode(), net);
    assert_eq!(c.after.networks(), [net.as_str()]);

    // And back to the default bridge.
    let env = &c.env;
    let mut m: Value = env.manifest();
    m["outposts"]["Subject"] = env.outpost("proxy", "AK_SUBJECT");
    m["outposts"]["Bystander"] = env.outpost("rac", "AK_BYSTANDER");
    env.write(&m);
    let plan = env.plan_json();
    let a = action_of(&plan, "Subject");
    assert_eq!(a["action"], "recreate");
    assert_eq!(
        reason(&a, "network"),
        Some(&json!({"field": "network", "before": net, "after": "bridge"}))
    );
    env.apply_ok();
    assert_eq!(env.container(&c.name).networks(), ["bridge"]);
    env.assert_converged();
}

/// A `docker_network` the engine does not have: the plan blocks the outpost and names the
/// network (exit 1) and apply leaves it alone, instead of a container made that cannot start.
/// Once the network exists the outpost is created on it; a change to another missing network
/// is blocked too, and the running container is kept as it is.
#[test]
fn a_missing_network_blocks_until_it_exists() {
    let env = Env::new("nonet");
    let net = format!("{}net", env.prefix);
    let mut m = env.manifest();
    m["defaults"]["docker_network"] = json!(net);
    m["outposts"]["A"] = env.outpost("rac", "AK_A");
    env.write(&m);
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 1, "{}", shown(&plan));
    assert!(
        plan.stdout.contains("! blocked")
            && plan
                .stdout
                .contains(&format!("network `{net}` does not exist on this engine"))
            && plan.stdout.contains("plan: no changes, 1 blocked"),
        "{}",
        shown(&plan)
    );
    env.apply_all_blocked(1);
    assert!(
        env.project_containers().is_empty(),
        "apply made a container"
    );

    assert_eq!(env.network("net"), net);
    env.apply_ok();
    let name = env.name_of("a");
    let before = env.container(&name);
    assert_eq!(before.networks(), [net.as_str()]);
    env.assert_converged();

    let gone = format!("{}gone", env.prefix);
    m["defaults"]["docker_network"] = json!(gone);
    env.write(&m);
    let plan = env.plan_json_with(&[], true);
    let a = action_of(&plan, "A");
    assert_eq!(a["action"], "blocked", "{a:#}");
    assert_eq!(
        reason(&a, "network"),
        Some(&json!({"field": "network", "before": net, "after": gone})),
        "the blocked recreate keeps its reasons: {a:#}"
    );
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    let after = env.container(&name);
    assert_eq!(after.id(), before.id(), "the container was replaced");
    assert!(after.running());
}

/// `docker_network` written as Docker takes it, not only as a network's name: `default` (the
/// bridge network), `bridge`, a network's id prefix, another container's network
/// (`container:NAME`), and a network whose name looks like an id (`<hex>dead`). The engine's list shows these differently (`bridge`, the network's
/// name, no network at all); each converges, and a second plan has nothing to do instead of
/// recreating the outposts again and again.
#[test]
fn docker_network_as_docker_takes_it_converges() {
    let env = Env::new("netforms");
    let net = env.network("byid");
    let id = docker_ok(&["network", "inspect", "-f", "{{.Id}}", &net]);
    let prefix = id.trim()[..12].to_string();
    // Named in hex only, as an id could be: Docker joins it by its name.
    let hex_named = env.network_named(&format!("{:x}dead", std::process::id()));
    let host = format!("{}host", env.prefix);
    env.docker_container("run", &host, &["-d", IMAGE_V1]);
    let mut m = env.manifest();
    for (outpost, network) in [
        ("Default", "default".to_string()),
        ("Bridge", "bridge".to_string()),
        ("By Id", prefix.clone()),
        ("Shares", format!("container:{host}")),
        ("Named", net.clone()),
        ("Hex Named", hex_named.clone()),
    ] {
        let mut o = env.outpost("ldap", &format!("AK_{}", outpost.replace(' ', "_")));
        o["config"]["docker_network"] = json!(network);
        m["outposts"][outpost] = o;
    }
    env.write(&m);
    env.apply_ok();
    env.assert_converged();
    assert_eq!(
        env.container(&env.name_of("default")).networks(),
        ["bridge"]
    );
    assert_eq!(env.container(&env.name_of("bridge")).networks(), ["bridge"]);
    assert_eq!(
        env.container(&env.name_of("by-id")).networks(),
        [net.as_str()]
    );
    assert_eq!(
        env.container(&env.name_of("hex-named")).networks(),
        [hex_named.as_str()]
    );
    let shares = env.container(&env.name_of("shares"));
    assert!(shares.networks().is_empty(), "{:?}", shares.networks());
    assert!(shares.network_mode().starts_with("container:"));

    // A network connected by hand to the one given by id is still seen.
    let extra = env.network("extra");
    docker_ok(&["network", "connect", &extra, &env.name_of("by-id")]);
    let plan = env.plan_json();
    let a = action_of(&plan, "By Id");
    assert_eq!(a["action"], "recreate", "{a:#}");
    let r = reason(&a, "network").unwrap_or_else(|| panic!("no network reason: {a:#}"));
    assert!(
        r["before"].as_str().is_some_and(|b| b.contains(&extra)),
        "{a:#}"
    );
    for other in ["Default", "Bridge", "Shares", "Named", "Hex Named"] {
        assert_eq!(action_of(&plan, other)["action"], "noop", "{plan:#}");
    }
    env.apply_ok();
    assert_eq!(
        env.container(&env.name_of("by-id")).networks(),
        [net.as_str()]
    );
    env.assert_converged();

    // Its network swapped for another by hand (Docker keeps the NetworkMode it was made
    // with): seen, whether the manifest names the network by id or by name.
    for outpost in ["by-id", "named"] {
        let name = env.name_of(outpost);
        docker_ok(&["network", "disconnect", &net, &name]);
        docker_ok(&["network", "connect", &extra, &name]);
    }
    let plan = env.plan_json();
    for outpost in ["By Id", "Named"] {
        let a = action_of(&plan, outpost);
        assert_eq!(a["action"], "recreate", "{a:#}");
    }
    env.apply_ok();
    for outpost in ["by-id", "named"] {
        assert_eq!(
            env.container(&env.name_of(outpost)).networks(),
            [net.as_str()]
        );
    }
    env.assert_converged();
}

/// authentik never notices a network connected by hand; outpostctl does, because the network
/// is part of the container spec.
#[test]
fn network_connected_by_hand_is_planned_as_recreate() {
    let env = Env::new("netbyhand");
    let net = env.network("extra");
    let mut m = env.manifest();
    m["outposts"]["Wired"] = env.outpost("ldap", "AK_W");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("wired");
    let before = env.container(&name);
    docker_ok(&["network", "connect", &net, &name]);

    let plan = env.plan_json();
    let a = action_of(&plan, "Wired");
    assert_eq!(a["action"], "recreate", "{a:#}");
    let r = reason(&a, "network").unwrap_or_else(|| panic!("no network reason: {a:#}"));
    assert_eq!(r["after"], "bridge");
    assert!(
        r["before"].as_str().is_some_and(|b| b.contains(&net)),
        "{a:#}"
    );
    env.apply_ok();
    let after = env.container(&name);
    assert_ne!(after.id(), before.id());
    assert_eq!(after.networks(), ["bridge"]);
    env.assert_converged();
}

/// An outpost without `docker_network` disconnected from the bridge network by hand (on no
/// network, its ports published nowhere) is planned as a recreate from no network to
/// `bridge`, and the recreate puts it back.
#[test]
fn outpost_disconnected_from_bridge_by_hand_is_planned_as_recreate() {
    let env = Env::new("netunplugged");
    let mut m = env.manifest();
    m["outposts"]["Unplugged"] = env.outpost("ldap", "AK_U");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("unplugged");
    let before = env.container(&name);
    docker_ok(&["network", "disconnect", "bridge", &name]);
    assert!(env.container(&name).networks().is_empty());

    let plan = env.plan_json();
    let a = action_of(&plan, "Unplugged");
    assert_eq!(a["action"], "recreate", "{a:#}");
    let r = reason(&a, "network").unwrap_or_else(|| panic!("no network reason: {a:#}"));
    assert_eq!(r["before"], Value::Null, "{a:#}");
    assert_eq!(r["after"], "bridge", "{a:#}");
    let text = env.plan(&[]);
    assert!(
        text.stdout.contains("network: (none) -> bridge"),
        "{}",
        shown(&text)
    );
    env.apply_ok();
    let after = env.container(&name);
    assert_ne!(after.id(), before.id());
    assert_eq!(after.networks(), ["bridge"]);
    env.assert_converged();
}

/// The same with the outpost on a network of its own (`docker_network`): a second network
/// connected by hand is a change too, and the recreate leaves only the outpost's network.
#[test]
fn network_connected_by_hand_beside_the_outposts_network_is_planned_as_recreate() {
    let env = Env::new("netbeside");
    let own = env.network("own");
    let extra = env.network("extra");
    let mut m = env.manifest();
    let mut o = env.outpost("ldap", "AK_W");
    o["config"]["docker_network"] = json!(own);
    m["outposts"]["Wired"] = o;
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("wired");
    assert_eq!(env.container(&name).networks(), std::slice::from_ref(&own));
    env.assert_converged();
    docker_ok(&["network", "connect", &extra, &name]);

    let plan = env.plan_json();
    let a = action_of(&plan, "Wired");
    assert_eq!(a["action"], "recreate", "{a:#}");
    let r = reason(&a, "network").unwrap_or_else(|| panic!("no network reason: {a:#}"));
    assert_eq!(r["after"], json!(own));
    assert!(
        r["before"].as_str().is_some_and(|b| b.contains(&extra)),
        "{a:#}"
    );
    env.apply_ok();
    assert_eq!(env.container(&name).networks(), [own]);
    env.assert_converged();
}

#[test]
fn labels_change_recreates() {
    let c = recreate_case(
        "labels",
        "radius",
        |_, o| {
            o["config"]["docker_labels"] = json!({"com.example.keep": "k", "com.example.old": "1"});
        },
        |_, o| {
            o["config"]["docker_labels"] =
                json!({"com.example.keep": "k", "com.example.team": "infra"});
        },
    );
    assert_reason(&c, "labels.com.example.team", Value::Null, json!("infra"));
    assert_reason(&c, "labels.com.example.old", json!("1"), Value::Null);
    let mut fields = reason_fields(&c.action);
    fields.sort();
    assert_eq!(
        fields,
        ["labels.com.example.old", "labels.com.example.team"]
    );
    assert!(c.plan.contains("labels.com.example.team: (none) -> infra"));
    assert!(c.plan.contains("labels.com.example.old: 1 -> (removed)"));
    let l = c.after.labels();
    assert_eq!(l.get("com.example.team").map(String::as_str), Some("infra"));
    assert_eq!(l.get("com.example.keep").map(String::as_str), Some("k"));
    assert!(!l.contains_key("com.example.old"));
}

#[test]
fn ports_change_recreates() {
    let mut old = 0;
    let mut new = 0;
    let c = recreate_case(
        "ports",
        "proxy",
        |env, o| {
            old = env.publish(o)["9000/tcp"];
        },
        |env, o| {
            new = env.port();
            o["ports"]["9000/tcp"] = json!(format!("127.0.0.1:{new}"));
        },
    );
    let r = reason(&c.action, "ports").expect("a ports reason");
    assert!(
        r["before"]
            .as_str()
            .is_some_and(|b| b.contains(&format!("127.0.0.1:{old}->9000/tcp")))
            && r["after"]
                .as_str()
                .is_some_and(|a| a.contains(&format!("127.0.0.1:{new}->9000/tcp"))),
        "{:#}",
        c.action
    );
    assert!(c.plan.contains("      ports: "), "{}", c.plan);
    assert!(
        c.diff.contains(&format!("-   - 127.0.0.1:{old}->9000/tcp"))
            && c.diff.contains(&format!("+   - 127.0.0.1:{new}->9000/tcp")),
        "plan --diff:\n{}",
        c.diff
    );
    assert_eq!(
        c.after.port_bindings()["9000/tcp"],
        [format!("127.0.0.1:{new}")]
    );
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            http_get(&format!("127.0.0.1:{new}"), "/outpost.goauthentik.io/ping")
                .is_some_and(|(s, _)| s == 200)
        }),
        "the proxy does not answer on its new port {new}"
    );
    assert!(
        http_get(&format!("127.0.0.1:{old}"), "/").is_none(),
        "the old port {old} still answers"
    );
}

/// Turning docker_map_ports off unpublishes the ports.
#[test]
fn map_ports_off_recreates_without_ports() {
    let mut published = Default::default();
    let c = recreate_case(
        "mapoff",
        "ldap",
        |env, o| published = env.publish(o),
        |_, o| o["config"]["docker_map_ports"] = json!(false),
    );
    let before = format!(
        "127.0.0.1:{}->3389/tcp, 127.0.0.1:{}->6636/tcp",
        published["3389/tcp"], published["6636/tcp"]
    );
    assert_reason(&c, "ports", json!(before), json!(""));
    assert_eq!(reason_fields(&c.action), ["ports"]);
    assert_eq!(c.before.port_bindings().len(), 2);
    assert!(
        c.after.port_bindings().is_empty(),
        "{:?}",
        c.after.port_bindings()
    );
}

#[test]
fn authentik_host_change_recreates() {
    let c = recreate_case(
        "akhost",
        "proxy",
        |_, _| {},
        |_, o| o["config"]["authentik_host"] = json!("https://Auth2.Example.com"),
    );
    // authentik lowercases the host.
    assert_reason(
        &c,
        "env.AUTHENTIK_HOST",
        json!(AK_HOST),
        json!("https://auth2.example.com"),
    );
    assert_eq!(reason_fields(&c.action), ["env.AUTHENTIK_HOST"]);
    assert_eq!(c.after.env()["AUTHENTIK_HOST"], "https://auth2.example.com");
}

#[test]
fn authentik_host_browser_change_recreates() {
    let c = recreate_case(
        "akbrowser",
        "radius",
        |_, _| {},
        |_, o| o["config"]["authentik_host_browser"] = json!("https://login.example.com"),
    );
    assert_reason(
        &c,
        "env.AUTHENTIK_HOST_BROWSER",
        json!(""),
        json!("https://login.example.com"),
    );
    assert_eq!(
        c.after.env()["AUTHENTIK_HOST_BROWSER"],
        "https://login.example.com"
    );
}

#[test]
fn insecure_flag_change_recreates() {
    let c = recreate_case(
        "insecure",
        "ldap",
        |_, _| {},
        |_, o| o["config"]["authentik_host_insecure"] = json!(true),
    );
    assert_reason(&c, "env.AUTHENTIK_INSECURE", json!("false"), json!("true"));
    assert_eq!(reason_fields(&c.action), ["env.AUTHENTIK_INSECURE"]);
    assert_eq!(c.after.env()["AUTHENTIK_INSECURE"], "true");
}

/// A new token recreates; the plan shows only `(changed)`, never a value (every run checks
/// that no token value is printed).
#[test]
fn token_change_recreates_without_showing_it() {
    let mut new_token = String::new();
    let c = recreate_case(
        "token",
        "proxy",
        |_, _| {},
        |env, _| new_token = env.new_token("AK_SUBJECT"),
    );
    assert_reason(
        &c,
        "env.AUTHENTIK_TOKEN",
        json!("(secret)"),
        json!("(changed)"),
    );
    assert_eq!(reason_fields(&c.action), ["env.AUTHENTIK_TOKEN"]);
    assert!(
        c.plan
            .contains("env.AUTHENTIK_TOKEN: (secret) -> (changed)"),
        "{}",
        c.plan
    );
    assert_eq!(c.after.env()["AUTHENTIK_TOKEN"], new_token);
    assert_ne!(c.before.env()["AUTHENTIK_TOKEN"], new_token);
    assert!(
        c.diff.contains("-   AUTHENTIK_TOKEN: (secret, differs)")
            && c.diff.contains("+   AUTHENTIK_TOKEN: (secret)"),
        "plan --diff:\n{}",
        c.diff
    );
}

/// A naming-template change renames the ldap container in place (same id) and a proxy
/// without external hosts; a proxy with external hosts is recreated, since its Traefik labels
/// embed the container name.
#[test]
fn naming_template_change_renames_or_recreates_proxies() {
    let env = Env::new("rename");
    let mut m = env.manifest();
    m["outposts"]["Dir"] = env.outpost("ldap", "AK_D");
    let mut web = env.outpost("proxy", "AK_P");
    web["external_hosts"] = json!(["https://app.example.com"]);
    m["outposts"]["Web"] = web;
    m["outposts"]["Bare"] = env.outpost("proxy", "AK_B");
    env.write(&m);
    env.apply_ok();
    let old = |s: &str| env.name_of(s);
    let new = |s: &str| format!("{}r-{s}", env.prefix);
    let dir = env.container(&old("dir"));
    let web = env.container(&old("web"));
    let bare = env.container(&old("bare"));
    // A paused container renamed is also unpaused: one apply converges.
    docker_ok(&["pause", &old("bare")]);

    m["defaults"]["object_naming_template"] = json!(format!("{}R-%(name)s", env.prefix));
    env.write(&m);
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout
            .contains(&format!("> rename    {} -> {}", old("dir"), new("dir"))),
        "{}",
        shown(&plan)
    );
    assert!(
        plan.stdout
            .contains(&format!("name: {} -> {}", old("dir"), new("dir"))),
        "{}",
        shown(&plan)
    );
    assert!(
        plan.stdout.contains(&format!("~ recreate  {}", new("web")))
            && plan.stdout.contains("plan: 1 to recreate, 2 to rename"),
        "{}",
        shown(&plan)
    );
    let json = env.plan_json();
    let a = action_of(&json, "Web");
    assert_eq!(a["action"], "recreate");
    assert_eq!(
        reason(&a, "name"),
        Some(&json!({"field": "name", "before": old("web"), "after": new("web")}))
    );
    let rule = format!("labels.traefik.http.routers.{}-router.rule", new("web"));
    assert!(reason(&a, &rule).is_some(), "no reason `{rule}`: {a:#}");
    assert_eq!(action_of(&json, "Dir")["action"], "rename");
    assert_eq!(action_of(&json, "Bare")["action"], "rename");

    env.apply_ok();
    let dir2 = env.container(&new("dir"));
    assert_eq!(dir2.id(), dir.id(), "renamed in place");
    assert!(dir2.running());
    assert!(inspect(&old("dir")).is_none());
    let bare2 = env.container(&new("bare"));
    assert_eq!(bare2.id(), bare.id(), "no Traefik labels: renamed in place");
    assert_eq!(bare2.status(), "running", "renamed and unpaused");
    // Its health checks failed while it was paused: the next one, 5 s on, passes.
    assert_eq!(
        env.wait_healthy(&new("bare"), std::time::Duration::from_secs(30))
            .as_deref(),
        Some("healthy")
    );
    let web2 = env.container(&new("web"));
    assert_ne!(web2.id(), web.id(), "the proxy was recreated");
    assert_eq!(
        web2.label(&format!(
            "traefik.http.routers.{}-router.service",
            new("web")
        )),
        Some(format!("{}-service", new("web")))
    );
    assert!(
        web2.labels().keys().all(|k| !k.contains(&old("web"))),
        "old Traefik labels remain: {:?}",
        web2.labels()
    );
    assert!(inspect(&old("web")).is_none());
    assert_eq!(env.project_containers().len(), 3);
    env.assert_converged();
}

#[test]
fn healthcheck_change_recreates() {
    let c = recreate_case(
        "hcchange",
        "ldap",
        |_, _| {},
        |_, o| o["healthcheck"] = json!(["/ldap", "healthcheck", "--deep"]),
    );
    assert_reason(
        &c,
        "healthcheck",
        json!("CMD /ldap healthcheck every 5s"),
        json!("CMD /ldap healthcheck --deep every 5s"),
    );
    assert_eq!(
        c.after.healthcheck()["Test"],
        json!(["CMD", "/ldap", "healthcheck", "--deep"])
    );
}

/// A proxy's external hosts are its Traefik rule.
#[test]
fn external_hosts_change_recreates() {
    let c = recreate_case(
        "exthosts",
        "proxy",
        |_, o| o["external_hosts"] = json!(["https://a.example.com"]),
        |_, o| o["external_hosts"] = json!(["https://a.example.com", "https://b.example.com"]),
    );
    let rule = format!("labels.traefik.http.routers.{}-router.rule", c.name);
    assert_reason(
        &c,
        &rule,
        json!("(Host(`a.example.com`)) && PathPrefix(`/outpost.goauthentik.io`)"),
        json!(
            "(Host(`a.example.com`) || Host(`b.example.com`)) && PathPrefix(`/outpost.goauthentik.io`)"
        ),
    );
    assert_eq!(reason_fields(&c.action), [rule.as_str()]);
    assert_eq!(
        c.after.label(&rule[7..]).as_deref(),
        Some(
            "(Host(`a.example.com`) || Host(`b.example.com`)) && PathPrefix(`/outpost.goauthentik.io`)"
        )
    );
}

/// A port bound on every interface (no address) converges: Docker reports it as `0.0.0.0`
/// or `""`, and the plan must not see a difference.
#[test]
fn port_on_all_interfaces_converges() {
    let env = Env::new("allifaces");
    let port = env.port();
    let mut m = env.manifest();
    let mut o = env.outpost("radius", "AK_R");
    o["config"]["docker_map_ports"] = json!(true);
    o["ports"] = json!({ "1812/udp": port });
    m["outposts"]["Everywhere"] = o;
    env.write(&m);
    env.apply_ok();
    let c = env.container(&env.name_of("everywhere"));
    let b = c.port_bindings();
    assert!(
        b["1812/udp"] == [format!(":{port}")] || b["1812/udp"] == [format!("0.0.0.0:{port}")],
        "{b:?}"
    );
    env.assert_converged();
}

/// A token read from a file (with the newline `echo` leaves): the container gets the token
/// without it; a new file content recreates, shown only as `(changed)`.
#[test]
fn token_from_a_file_is_trimmed_and_its_change_recreates() {
    let env = Env::new("tokfile");
    let first = format!("s3cr3t-file-{}-one", env.project);
    let second = format!("s3cr3t-file-{}-two", env.project);
    // Known secrets, so no output may contain them.
    env.set_token("UNUSED_FILE_TOKEN_1", &first);
    env.set_token("UNUSED_FILE_TOKEN_2", &second);
    let path = env.dir().join("ldap.token");
    let write_token = |t: &str| {
        std::fs::write(&path, format!("{t}\n")).expect("token file");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };
    write_token(&first);
    let mut m = env.manifest();
    let mut o = env.outpost("ldap", "AK_UNUSED");
    o["token"] = json!({ "file": "ldap.token" });
    m["outposts"]["Filed"] = o;
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("filed");
    let c = env.container(&name);
    assert_eq!(c.env()["AUTHENTIK_TOKEN"], first);
    env.assert_converged();

    write_token(&second);
    let plan = env.plan_json();
    let a = action_of(&plan, "Filed");
    assert_eq!(a["action"], "recreate");
    assert_eq!(reason_fields(&a), ["env.AUTHENTIK_TOKEN"]);
    env.apply_ok();
    assert_eq!(env.container(&name).env()["AUTHENTIK_TOKEN"], second);
    env.assert_converged();
}

/// A recreate that keeps the host ports works: the old container is stopped first, so its
/// ports are free for the new one; the new one answers on them.
#[test]
fn recreate_keeps_its_host_ports() {
    let mut ports = Default::default();
    let c = recreate_case(
        "keepports",
        "proxy",
        |env, o| ports = env.publish(o),
        |_, o| o["config"]["docker_labels"] = json!({"com.example.v": "2"}),
    );
    assert_eq!(c.after.port_bindings(), c.before.port_bindings());
    let p = ports["9000/tcp"];
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            http_get(&format!("127.0.0.1:{p}"), "/outpost.goauthentik.io/ping")
                .is_some_and(|(s, _)| s == 200)
        }),
        "the new container does not answer on 127.0.0.1:{p}"
    );
}

/// A restart policy changed by hand (`docker update --restart`) does not show in the
/// container list: a plain plan does not see it (one list, nothing inspected); `plan
/// --inspect` does, as a recreate with its reason; a plan saved with `--inspect` is applied as
/// it was made (`apply --plan` inspects the same way); afterwards the container has the
/// manifest's policy again and the bystander was not touched.
#[test]
fn restart_policy_changed_by_hand_is_found_by_inspect() {
    let env = Env::new("restartbyhand");
    let mut m = env.manifest();
    m["outposts"]["Kept"] = env.outpost("radius", "AK_KEPT");
    m["outposts"]["Bystander"] = env.outpost("rac", "AK_BYSTANDER");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("kept");
    let before = env.container(&name);
    assert_eq!(before.restart_policy(), "unless-stopped");
    let bystander = env.container(&env.name_of("bystander")).id();
    docker_ok(&["update", "--restart", "no", &name]);
    assert_eq!(env.container(&name).restart_policy(), "no");

    env.assert_converged();
    let plan = env.plan_json_with(&["--inspect"], false);
    let a = action_of(&plan, "Kept");
    assert_eq!(a["action"], "recreate", "{a:#}");
    assert_eq!(reason_fields(&a), ["restart_policy"], "{a:#}");
    let r = reason(&a, "restart_policy").unwrap_or_else(|| panic!("no reason: {a:#}"));
    assert_eq!(
        (&r["before"], &r["after"]),
        (&json!("no"), &json!("unless-stopped"))
    );
    assert_eq!(action_of(&plan, "Bystander")["action"], "noop", "{plan:#}");

    let saved = env.plan(&["--inspect", "--detailed-exitcode", "--out", "drift.plan"]);
    assert_eq!(saved.code, 2, "{}", shown(&saved));
    assert!(
        saved.stdout.contains(&format!("~ recreate  {name}"))
            && saved.stdout.contains("restart_policy"),
        "{}",
        shown(&saved)
    );
    let applied = env.run(&["apply", "--plan", "drift.plan", "."]);
    assert_eq!(applied.code, 0, "{}", shown(&applied));
    let after = env.container(&name);
    assert_ne!(after.id(), before.id(), "recreated");
    assert_eq!(after.restart_policy(), "unless-stopped");
    assert_eq!(env.container(&env.name_of("bystander")).id(), bystander);
    let r = env.plan(&["--inspect", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
}

/// `docker_network: container:NAME` joins the namespace of the container named so when the
/// outpost's container is made (Docker keeps that container's id). That container made anew
/// (its compose file re-run, say) leaves the outpost cut off, and unable to start once
/// stopped: the plan recreates it onto the new one, and converges. With no container of that
/// name, the outpost is blocked, naming it, not failed at apply.
#[test]
fn a_shared_namespace_made_anew_is_followed() {
    let env = Env::new("nsanew");
    let host = format!("{}vpn", env.prefix);
    env.docker_container("run", &host, &["-d", IMAGE_V1]);
    let mut m = env.manifest();
    let mut o = env.outpost("ldap", "AK_SHARES");
    o["config"]["docker_network"] = json!(format!("container:{host}"));
    o["config"]["docker_map_ports"] = json!(false);
    m["outposts"]["Shares"] = o;
    env.write(&m);
    env.apply_ok();
    env.assert_converged();
    let name = env.name_of("shares");
    let first = docker_ok(&["inspect", "-f", "{{.Id}}", &host]);
    assert_eq!(
        env.container(&name).network_mode(),
        format!("container:{}", first.trim())
    );

    docker_ok(&["rm", "-f", &host]);
    env.docker_container("run", &host, &["-d", IMAGE_V1]);
    let second = docker_ok(&["inspect", "-f", "{{.Id}}", &host]);
    let plan = env.plan_json();
    let a = action_of(&plan, "Shares");
    assert_eq!(a["action"], "recreate", "{a:#}");
    let r = reason(&a, "network").unwrap_or_else(|| panic!("no network reason: {a:#}"));
    assert!(
        r["before"]
            .as_str()
            .is_some_and(|b| b.contains(&first.trim()[..12]) && b.contains("since removed")),
        "{a:#}"
    );
    assert!(
        r["after"]
            .as_str()
            .is_some_and(|b| b.contains(&host) && b.contains(&second.trim()[..12])),
        "{a:#}"
    );
    env.apply_ok();
    assert_eq!(
        env.container(&name).network_mode(),
        format!("container:{}", second.trim())
    );
    assert!(env.container(&name).running());
    env.assert_converged();

    // Restarted: the outpost is left on the namespace that went (or stopped with it):
    // restarted (started) after it, onto its namespace as it runs now.
    docker_ok(&["restart", &host]);
    let plan = env.plan_json();
    let a = action_of(&plan, "Shares");
    assert!(
        a["action"] == "restart" && reason(&a, "network").is_some() || a["action"] == "start",
        "{a:#}"
    );
    env.apply_ok();
    env.assert_converged();
    let shares = env.container(&name);
    assert!(shares.running(), "{}", shares.status());

    // Stopped: blocked until it runs (Docker refuses to start the outpost on it), then the
    // outpost follows it.
    docker_ok(&["stop", "-t", "1", &host]);
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 1, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!("container `{host}`, whose network namespace the outpost shares (`docker_network`), is not running")),
        "{}",
        shown(&plan)
    );
    docker_ok(&["start", &host]);
    env.apply_ok();
    env.assert_converged();

    // No container of that name: blocked, naming it; the container is left as it is.
    docker_ok(&["rm", "-f", &host]);
    let before = env.container(&name).id();
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 1, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!(
            "`docker_network: container:{host}` names no container on this engine"
        )),
        "{}",
        shown(&plan)
    );
    env.apply_all_blocked(1);
    assert_eq!(env.container(&name).id(), before, "left as it was");
}

/// Names handed from one outpost's container to another's converge in one apply: a naming
/// template change where one outpost's new name is another's old one (`q` becomes `x-q`,
/// whose container becomes `x-x-q`; renamed, and for a proxy with external hosts recreated),
/// and two outposts swapping names (each keeps its uuid). Each was blocked, for ever for the
/// swap, or needed a second apply after a failed first.
#[test]
fn names_handed_between_outposts_converge_in_one_apply() {
    let env = Env::new("handover");
    let mut m = env.manifest();
    m["outposts"]["Q"] = env.outpost("ldap", "AK_Q");
    m["outposts"]["X Q"] = env.outpost("ldap", "AK_XQ");
    for (outpost, var) in [("Web", "AK_W"), ("X Web", "AK_XW")] {
        let mut web = env.outpost("proxy", var);
        web["external_hosts"] = json!([format!("https://{var}.example.com").to_lowercase()]);
        m["outposts"][outpost] = web;
    }
    m["outposts"]["One"] = env.outpost("rac", "AK_ONE");
    m["outposts"]["Two"] = env.outpost("rac", "AK_TWO");
    env.write(&m);
    env.apply_ok();
    env.assert_converged();
    let id = |slug: &str| env.container(&env.name_of(slug)).id();
    let (q, xq) = (id("q"), id("x-q"));

    // `x-` in front of every name: `x-q` passes from X Q's container to Q's.
    m["defaults"]["object_naming_template"] = json!(format!("{}x-%(name)s", env.prefix));
    env.write(&m);
    let plan = env.plan_json();
    for outpost in ["Q", "X Q", "One", "Two"] {
        assert_eq!(action_of(&plan, outpost)["action"], "rename", "{plan:#}");
    }
    for outpost in ["Web", "X Web"] {
        assert_eq!(action_of(&plan, outpost)["action"], "recreate", "{plan:#}");
    }
    let r = env.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    env.assert_converged();
    // Renamed in place: the same containers under their new names.
    let now = |slug: &str| env.container(&env.name_of(&format!("x-{slug}")));
    assert_eq!(now("q").id(), q);
    assert_eq!(now("x-q").id(), xq);
    for slug in ["q", "x-q", "web", "x-web", "one", "two"] {
        assert!(now(slug).running(), "x-{slug} is {}", now(slug).status());
    }
    let (one, two) = (now("one").id(), now("two").id());

    // One and Two swap names (each keeps its uuid, so its container).
    let (a, b) = (m["outposts"]["One"].take(), m["outposts"]["Two"].take());
    m["outposts"]["One"] = b;
    m["outposts"]["Two"] = a;
    env.write(&m);
    let plan = env.plan_json();
    for outpost in ["One", "Two"] {
        assert_eq!(action_of(&plan, outpost)["action"], "rename", "{plan:#}");
    }
    let r = env.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    env.assert_converged();
    assert_eq!(
        now("two").id(),
        one,
        "One's container is named after Two now"
    );
    assert_eq!(now("one").id(), two);
    // Nothing left under another name.
    assert_eq!(
        env.project_containers().len(),
        6,
        "{:?}",
        env.project_containers().keys()
    );
}

/// A name another outpost's container gives up is taken only if that container really
/// moves: when its own new name is held by a container outpostctl leaves alone, both
/// outposts are blocked, the second naming the first, and apply changes neither.
#[test]
fn a_name_whose_container_cannot_move_is_not_taken() {
    let env = Env::new("handstuck");
    let mut m = env.manifest();
    m["outposts"]["Q"] = env.outpost("ldap", "AK_Q");
    m["outposts"]["X Q"] = env.outpost("ldap", "AK_XQ");
    env.write(&m);
    env.apply_ok();
    let (q, xq) = (env.name_of("q"), env.name_of("x-q"));
    let (q_id, xq_id) = (env.container(&q).id(), env.container(&xq).id());
    env.docker_container("run", &env.name_of("x-x-q"), &["-d", IMAGE_V1]);

    m["defaults"]["object_naming_template"] = json!(format!("{}x-%(name)s", env.prefix));
    env.write(&m);
    let plan = env.plan_json_with(&[], true);
    assert_eq!(action_of(&plan, "X Q")["action"], "blocked", "{plan:#}");
    let a = action_of(&plan, "Q");
    assert_eq!(a["action"], "blocked", "{a:#}");
    assert!(
        a["error"].as_str().is_some_and(|e| e.contains(&format!(
            "the name `{xq}` is taken by container {} of outpost `X Q`, which keeps it",
            &xq_id[..12]
        ))),
        "{a:#}"
    );
    env.apply_all_blocked(2);
    assert_eq!(env.container(&q).id(), q_id);
    assert_eq!(env.container(&xq).id(), xq_id);
}

/// An outpost on the network namespace of another outpost's container (`docker_network:
/// container:<its name>`) is made after it in the same apply, and recreated after it when
/// that one is recreated: one apply each, no outpost blocked or left cut off.
#[test]
fn an_outpost_on_another_outposts_namespace_follows_it_in_one_apply() {
    let env = Env::new("nsoutpost");
    let mut m = env.manifest();
    m["outposts"]["Vpn"] = env.outpost("rac", "AK_VPN");
    let mut o = env.outpost("ldap", "AK_BEHIND");
    o["config"]["docker_network"] = json!(format!("container:{}", env.name_of("vpn")));
    m["outposts"]["Behind"] = o;
    env.write(&m);
    env.apply_ok();
    env.assert_converged();
    let mode = |n: &str| env.container(&env.name_of(n)).network_mode();
    let vpn = env.container(&env.name_of("vpn")).id();
    assert_eq!(mode("behind"), format!("container:{vpn}"));

    m["outposts"]["Vpn"]["config"] = json!({"docker_labels": {"changed": "yes"}});
    env.write(&m);
    let plan = env.plan_json();
    assert_eq!(action_of(&plan, "Vpn")["action"], "recreate", "{plan:#}");
    assert_eq!(action_of(&plan, "Behind")["action"], "recreate", "{plan:#}");
    env.apply_ok();
    env.assert_converged();
    let vpn = env.container(&env.name_of("vpn")).id();
    assert_eq!(mode("behind"), format!("container:{vpn}"));
    assert!(env.container(&env.name_of("behind")).running());

    // A naming template change renames the namespace container, and `docker_network` names
    // its new name: found by the id it keeps, not blocked as missing (its setting changed:
    // the outpost on it is recreated, onto the same namespace).
    m["defaults"]["object_naming_template"] = json!(format!("{}n-%(name)s", env.prefix));
    m["outposts"]["Behind"]["config"]["docker_network"] =
        json!(format!("container:{}", env.name_of("n-vpn")));
    env.write(&m);
    let plan = env.plan_json();
    assert_eq!(action_of(&plan, "Vpn")["action"], "rename", "{plan:#}");
    assert_eq!(action_of(&plan, "Behind")["action"], "recreate", "{plan:#}");
    env.apply_ok();
    env.assert_converged();
    assert_eq!(mode("n-behind"), format!("container:{vpn}"));
}

/// A swap where one side is blocked by a check after the diff (its network is missing):
/// the other does not take a name that stays held (it failed the apply with Docker's 409),
/// it is blocked, naming the container.
#[test]
fn a_swap_with_a_blocked_side_blocks_both() {
    let env = Env::new("swapblock");
    let mut m = env.manifest();
    m["outposts"]["A"] = env.outpost("rac", "AK_A");
    m["outposts"]["B"] = env.outpost("rac", "AK_B");
    env.write(&m);
    env.apply_ok();
    let (a, b) = (m["outposts"]["A"].take(), m["outposts"]["B"].take());
    m["outposts"]["A"] = b;
    m["outposts"]["B"] = a;
    m["outposts"]["B"]["config"] = json!({"docker_network": format!("{}nonet", env.prefix)});
    env.write(&m);
    let plan = env.plan_json_with(&[], true);
    let b = action_of(&plan, "B");
    assert_eq!(b["action"], "blocked", "{b:#}");
    let a = action_of(&plan, "A");
    assert_eq!(a["action"], "blocked", "{a:#}");
    assert!(
        a["error"]
            .as_str()
            .is_some_and(|e| e.contains("which keeps it")),
        "{a:#}"
    );
    env.apply_all_blocked(2);
}

/// `image_by_id: true`: the container is made from the image's id (Docker then lists it
/// without looking the name up), the name kept in a label and shown by plan and status; the
/// switch, either way, is a recreate with its reason, and both states converge.
#[test]
fn image_by_id_creates_from_the_id_and_back() {
    let c = recreate_case(
        "byid",
        "ldap",
        |_, o| o["config"]["container_image"] = json!(IMAGE_V1),
        |_, o| o["image_by_id"] = json!(true),
    );
    assert_reason(&c, "image_by_id", json!("false"), json!("true"));
    // `plan --diff` says what changes: the same image, by id.
    assert!(
        c.diff.contains(&format!("+ image: {IMAGE_V1} (by id)\n"))
            && c.diff.contains(&format!("- image: {IMAGE_V1}\n")),
        "{}",
        c.diff
    );
    assert_eq!(reason_fields(&c.action), ["image_by_id"], "{:#}", c.action);
    let id = image_id(IMAGE_V1).expect("the test image is on the engine");
    assert_eq!(c.before.image(), IMAGE_V1);
    assert_eq!(c.after.image(), id, "made from the image's id");
    assert_eq!(c.after.image_id(), id);
    assert_eq!(
        c.after.label("outpostctl.image").as_deref(),
        Some(IMAGE_V1),
        "the name kept in a label"
    );
    // What `docker ps` shows: the id.
    let ps = docker_ok(&[
        "ps",
        "--no-trunc",
        "--filter",
        &format!("id={}", c.after.id()),
        "--format",
        "{{.Image}}",
    ]);
    assert_eq!(ps.trim(), id);

    // plan and status show the name.
    let env = &c.env;
    let diff = env.plan(&["--diff", "--format", "json"]);
    assert_eq!(diff.code, 0, "{}", shown(&diff));
    let status = env.run(&["status", "--format", "json"]);
    let status: Value = serde_json::from_str(&status.stdout)
        .unwrap_or_else(|e| panic!("status JSON: {e}: {}", shown(&status)));
    let images: Vec<String> = status
        .pointer("/integrations/0/outposts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|o| o["image"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        images.contains(&IMAGE_V1.to_string()) && !images.iter().any(|i| i.starts_with("sha256:")),
        "{status:#}"
    );

    // And back: made from the name again.
    let mut m = c.manifest.clone();
    m["outposts"]["Subject"]["image_by_id"] = json!(false);
    env.write(&m);
    let json = env.plan_json();
    let back = action_of(&json, "Subject");
    assert_eq!(back["action"], "recreate", "{back:#}");
    assert_eq!(reason_fields(&back), ["image_by_id"], "{back:#}");
    env.apply_ok();
    let again = env.container(&c.name);
    assert_eq!(again.image(), IMAGE_V1);
    assert_eq!(again.label("outpostctl.image"), None);
    env.assert_converged();
}
