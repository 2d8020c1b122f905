//! End to end on the real engine: which containers outpostctl may change. A same-named
//! container made by hand blocks the plan and is left alone; a container authentik deployed
//! (uuid label only) is refused without `--adopt` and taken over with it; another project's
//! containers are never touched; identity follows the uuid. Needs `scripts/test-deps.sh`.

mod common;
mod support;

use serde_json::json;
use support::*;

fn dashed(u: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &u[..8],
        &u[8..12],
        &u[12..16],
        &u[16..20],
        &u[20..]
    )
}

/// `docker create --name <name> outpostctl-test/outpost:latest` in the way of an outpost:
/// the plan fails naming it (exit 1, also with --detailed-exitcode), apply leaves it exactly
/// as it was and still creates the other outposts.
#[test]
fn same_named_container_made_by_hand_blocks_and_is_left_alone() {
    let env = Env::new("squat");
    let mut m = env.manifest();
    m["outposts"]["Dir"] = env.outpost("ldap", "AK_D");
    m["outposts"]["Other"] = env.outpost("radius", "AK_O");
    env.write(&m);
    let name = env.name_of("dir");
    env.track_container(&name);
    let id = docker_ok(&["create", "--name", &name, IMAGE_V1]);
    let squatter = env.container(&name);
    let short = &id[..12];

    let plan = env.plan(&[]);
    assert_eq!(plan.code, 1, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!("! blocked   {name}"))
            && plan.stdout.contains(&format!(
                "a container named `{name}` ({short}) exists and is not managed by outpostctl"
            )),
        "{}",
        shown(&plan)
    );
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(
        plan.code,
        1,
        "an error wins over changes:\n{}",
        shown(&plan)
    );
    let json = env.plan_json_with(&[], true);
    let a = action_of(&json, "Dir");
    assert_eq!(a["action"], "blocked");
    assert!(
        a["error"].as_str().is_some_and(|e| e.contains(&name)),
        "{a:#}"
    );
    assert_eq!(json["summary"]["blocked"], 1);
    assert_eq!(json["summary"]["create"], 1);

    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    let after = env.container(&name);
    assert_eq!(after.id(), squatter.id(), "the squatter was replaced");
    assert_eq!(after.status(), "created", "the squatter was started");
    assert_eq!(after.labels(), squatter.labels(), "its labels changed");
    assert_eq!(after.env(), squatter.env(), "its env changed");
    assert_eq!(after.image(), IMAGE_V1);
    assert!(
        env.container(&env.name_of("other")).running(),
        "the other outpost was not created:\n{}",
        shown(&r)
    );
    assert_eq!(
        env.project_containers().len(),
        1,
        "only the other outpost's container is ours"
    );

    // Once the squatter is gone, the outpost is created.
    docker_ok(&["rm", "-f", &name]);
    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(plan.stdout.contains(&format!("+ create    {name}")));
    env.apply_ok();
    env.assert_converged();
}

/// A container labelled as authentik would (`io.goauthentik.outpost-uuid` only, named
/// `ak-outpost-<slug>`) is refused without `--adopt`, and with it replaced by one with our
/// labels. Matching is by the uuid label, so a container authentik named differently is
/// taken over too, under the manifest's name.
#[test]
fn adopt_takes_over_what_authentik_deployed() {
    let env = Env::new("adopt");
    let pid = std::process::id();
    let mut m = env.manifest();
    // authentik's own naming template for this outpost.
    m["defaults"]
        .as_object_mut()
        .unwrap()
        .remove("object_naming_template");
    let legacy = format!("Legacy LDAP {pid}");
    let ak_name = format!("ak-outpost-legacy-ldap-{pid}");
    let u_ldap = env.uuid("legacy");
    let mut ldap = env.outpost("ldap", "AK_LEGACY");
    ldap["uuid"] = json!(dashed(&u_ldap));
    m["outposts"][legacy.as_str()] = ldap;
    // A proxy authentik deployed under its default name; the manifest names it otherwise.
    let ak_web = format!("ak-outpost-web-{pid}");
    let new_web = env.name_of("web");
    let u_web = env.uuid("web");
    let mut proxy = env.outpost("proxy", "AK_WEB");
    proxy["uuid"] = json!(u_web);
    proxy["config"]["object_naming_template"] = json!(format!("{}%(name)s", env.prefix));
    m["outposts"]["Web"] = proxy;
    env.write(&m);

    let old_token = "authentik-token-not-a-secret-of-this-test";
    for (name, uuid, image) in [
        (&ak_name, &u_ldap, "ghcr.io/goauthentik/ldap:2026.8.0"),
        (&ak_web, &u_web, "ghcr.io/goauthentik/proxy:2026.8.0"),
    ] {
        env.track_container(name);
        docker_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--label",
            &format!("{LABEL_UUID}={uuid}"),
            "-e",
            "AUTHENTIK_HOST=https://auth.example.com",
            "-e",
            "AUTHENTIK_INSECURE=false",
            "-e",
            &format!("AUTHENTIK_TOKEN={old_token}"),
            "--restart",
            "unless-stopped",
            image,
        ]);
    }
    let ak_ldap = env.container(&ak_name);
    let ak_proxy = env.container(&ak_web);

    // Without --adopt: refused, named, and untouched.
    let plan = env.plan(&[]);
    assert_eq!(plan.code, 1, "{}", shown(&plan));
    for (n, id) in [(&ak_name, ak_ldap.id()), (&ak_web, ak_proxy.id())] {
        assert!(
            plan.stdout.contains(&format!(
                "container `{n}` ({}) carries this outpost's uuid but was not created by outpostctl",
                &id[..12]
            )) && plan.stdout.contains("--adopt"),
            "{}",
            shown(&plan)
        );
    }
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert_eq!(env.container(&ak_name).id(), ak_ldap.id());
    assert!(env.container(&ak_name).running());
    assert_eq!(env.container(&ak_web).id(), ak_proxy.id());
    assert!(env.project_containers().is_empty());

    // With --adopt: planned as recreates that adopt.
    let plan = env.plan(&["--adopt", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!("~ recreate  {ak_name}"))
            && plan.stdout.contains("(adopt)")
            && plan
                .stdout
                .contains("outpostctl.managed-by: (none) -> outpostctl")
            && plan.stdout.contains("plan: 2 to recreate"),
        "{}",
        shown(&plan)
    );
    let json = env.plan_json_with(&["--adopt"], false);
    let a = action_of(&json, &legacy);
    assert_eq!(a["action"], "recreate");
    assert_eq!(a["adopt"], true);
    assert_eq!(a["container"]["id"], ak_ldap.id().as_str());
    assert_eq!(
        reason(&a, "env.AUTHENTIK_TOKEN"),
        Some(&json!({"field": "env.AUTHENTIK_TOKEN", "before": "(secret)", "after": "(changed)"}))
    );
    let w = action_of(&json, "Web");
    assert_eq!(w["adopt"], true);
    assert_eq!(w["name"], new_web.as_str());
    assert!(
        !json.to_string().contains(old_token),
        "the live token leaked into the plan"
    );

    let r = env.apply(&["--adopt"]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert!(!r.stdout.contains(old_token), "{}", shown(&r));
    assert!(
        inspect(&ak_ldap.id()).is_none(),
        "authentik's ldap container remains"
    );
    assert!(
        inspect(&ak_proxy.id()).is_none(),
        "authentik's proxy container remains"
    );
    assert!(inspect(&ak_web).is_none());
    let ldap = env.container(&ak_name);
    assert!(ldap.running());
    assert_eq!(ldap.label(LABEL_UUID), Some(u_ldap.clone()));
    assert_eq!(ldap.label(LABEL_PROJECT), Some(env.project.clone()));
    assert_eq!(ldap.label(LABEL_MANAGED_BY).as_deref(), Some("outpostctl"));
    assert_eq!(ldap.label(LABEL_OUTPOST), Some(legacy.clone()));
    assert_eq!(ldap.env()["AUTHENTIK_TOKEN"], env.token_of("AK_LEGACY"));
    let proxy = env.container(&new_web);
    assert!(proxy.running());
    assert_eq!(proxy.label(LABEL_UUID), Some(u_web));
    assert_eq!(proxy.label(LABEL_PROJECT), Some(env.project.clone()));
    assert_eq!(proxy.env()["AUTHENTIK_TOKEN"], env.token_of("AK_WEB"));
    assert_eq!(env.project_containers().len(), 2);
    // Once ours, no --adopt is needed.
    env.assert_converged();
}

/// Another project's containers are never changed: the same uuid blocks, naming the
/// project; pruning and removals leave them alone.
#[test]
fn another_projects_containers_are_never_touched() {
    let a = Env::new("owna");
    let b = Env::new("ownb");
    let shared_uuid = b.uuid("shared");

    let mut mb = b.manifest();
    let mut theirs = b.outpost("ldap", "AK_B");
    theirs["uuid"] = json!(shared_uuid);
    mb["outposts"]["Theirs"] = theirs;
    mb["outposts"]["Unrelated"] = b.outpost("rac", "AK_U");
    b.write(&mb);
    b.apply_ok();
    let theirs = b.container(&b.name_of("theirs"));
    let unrelated = b.container(&b.name_of("unrelated"));

    let mut ma = a.manifest();
    let mut mine = a.outpost("ldap", "AK_A");
    mine["uuid"] = json!(shared_uuid);
    ma["outposts"]["Mine"] = mine;
    ma["outposts"]["Own"] = a.outpost("radius", "AK_OWN");
    a.write(&ma);
    let plan = a.plan(&[]);
    assert_eq!(plan.code, 1, "{}", shown(&plan));
    assert!(
        plan.stdout.contains(&format!(
            "belongs to outpostctl project `{}`; outpostctl never changes another project's containers",
            b.project
        )),
        "{}",
        shown(&plan)
    );
    let plan = a.plan_json_with(&[], true);
    assert_eq!(plan["summary"]["remove"], 0, "{plan:#}");
    for act in actions(&plan) {
        assert_ne!(act["container"]["id"], unrelated.id().as_str(), "{act:#}");
    }
    let r = a.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    let r = a.apply(&["--adopt"]);
    assert_eq!(r.code, 1, "--adopt never takes another project's container");
    assert_eq!(b.container(&theirs.id()).status(), "running");
    assert_eq!(b.container(&theirs.id()).name(), theirs.name());
    assert_eq!(b.container(&unrelated.id()).status(), "running");

    // A's own outpost goes; B's containers stay.
    ma["outposts"] = json!({});
    a.write(&ma);
    let r = a.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert!(a.project_containers().is_empty());
    assert_eq!(b.project_containers().len(), 2);
    b.assert_converged();
}

/// Without `uuid`, the uuid is derived from the outpost name: 32 hex digits, stable across
/// recreates; renaming the outpost is a remove plus a create.
#[test]
fn derived_uuid_is_stable_and_renaming_the_outpost_replaces_it() {
    let env = Env::new("derived");
    let pid = std::process::id();
    let first = format!("Derived {pid}");
    let second = format!("Renamed {pid}");
    let mut m = env.manifest();
    let mut o = env.outpost("radius", "AK_D");
    o.as_object_mut().unwrap().remove("uuid");
    m["outposts"][first.as_str()] = o.clone();
    env.write(&m);
    env.apply_ok();
    let name = env.name_of(&format!("derived-{pid}"));
    let c = env.container(&name);
    let uuid = c.label(LABEL_UUID).unwrap_or_default();
    assert!(
        uuid.len() == 32
            && uuid
                .chars()
                .all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch)),
        "uuid label `{uuid}`"
    );

    m["outposts"][first.as_str()]["config"]["docker_labels"] = json!({"com.example.v": "2"});
    env.write(&m);
    env.apply_ok();
    let c2 = env.container(&name);
    assert_ne!(c2.id(), c.id());
    assert_eq!(c2.label(LABEL_UUID), Some(uuid.clone()), "the uuid moved");

    let mut o = m["outposts"][first.as_str()].take();
    m["outposts"].as_object_mut().unwrap().remove(&first);
    o["config"] = json!({});
    m["outposts"][second.as_str()] = o;
    env.write(&m);
    let plan = env.plan_json();
    assert_eq!(action_of(&plan, &first)["action"], "remove", "{plan:#}");
    assert_eq!(action_of(&plan, &second)["action"], "create", "{plan:#}");
    env.apply_ok();
    let c3 = env.container(&env.name_of(&format!("renamed-{pid}")));
    assert_ne!(c3.label(LABEL_UUID), Some(uuid));
    assert!(inspect(&name).is_none());
    env.assert_converged();
}

/// A naming-template change whose new name is taken by a container made by hand: like a
/// create, the rename (and a proxy's recreate under the new name) must be a plan error that
/// names the container in the way, not a change that fails at apply with a 409.
#[test]
fn new_name_taken_by_hand_blocks_a_rename() {
    let env = Env::new("renametaken");
    let mut m = env.manifest();
    m["outposts"]["Dir"] = env.outpost("ldap", "AK_D");
    let mut web = env.outpost("proxy", "AK_W");
    web["external_hosts"] = json!(["https://app.example.com"]);
    m["outposts"]["Web"] = web;
    env.write(&m);
    env.apply_ok();
    let dir = env.container(&env.name_of("dir"));
    let web = env.container(&env.name_of("web"));

    m["defaults"]["object_naming_template"] = json!(format!("{}new-%(name)s", env.prefix));
    env.write(&m);
    let mut squatters = Vec::new();
    for s in ["dir", "web"] {
        let n = env.name_of(&format!("new-{s}"));
        env.track_container(&n);
        squatters.push((n.clone(), docker_ok(&["create", "--name", &n, IMAGE_V1])));
    }

    let plan = env.plan(&["--detailed-exitcode"]);
    let r = env.apply(&[]);
    // Whatever happens, the squatters and the old container stay as they were.
    for (n, id) in &squatters {
        let c = env.container(n);
        assert_eq!(&c.id(), id);
        assert_eq!(c.status(), "created");
    }
    // Both outposts keep their containers, under their old names.
    for (old, c) in [("dir", &dir), ("web", &web)] {
        let now = env.container(&env.name_of(old));
        assert_eq!(now.id(), c.id(), "{old}");
        assert!(now.running(), "{old}: {}", now.status());
    }
    assert!(
        plan.stdout.contains("plan: no changes, 2 blocked"),
        "{}",
        shown(&plan)
    );
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stdout.contains("nothing to apply; left alone: 2 blocked"),
        "{}",
        shown(&r)
    );
    assert_eq!(
        plan.code,
        1,
        "the plan must fail, naming the containers in the way:\n{}",
        shown(&plan)
    );
    for (n, _) in &squatters {
        assert!(
            plan.stdout.contains(&format!("a container named `{n}`")),
            "{}",
            shown(&plan)
        );
    }
    assert!(!r.stdout.contains("409"), "{}", shown(&r));
}

/// An outpost UUID copied from authentik may be all digits; unquoted, YAML reads a number.
/// The error's hint must quote what was written, not the float YAML made of it (which is a
/// different, wrong uuid).
#[test]
fn numeric_uuid_hint_quotes_what_was_written() {
    let env = Env::new("numuuid");
    let digits = "12345678123412341234123456789012";
    let mut m = env.manifest();
    m["outposts"]["Dir"] = env.outpost("ldap", "AK_D");
    env.write(&m);
    let text = std::fs::read_to_string(env.dir().join("outposts.yaml")).unwrap();
    let uuid = env.uuid("AK_D");
    env.write_file(
        "outposts.yaml",
        &text.replace(&format!("\"{uuid}\""), digits),
    );
    let r = env.run(&["validate", "."]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stderr.contains(&format!("uuid: \"{digits}\"")),
        "{}",
        shown(&r)
    );
}

/// A copy of an outpost's container made by hand (`docker commit` then `docker run`, as
/// Portainer's "duplicate" does, keeps every label): outpostctl does not take one for the
/// leftover of an interrupted recreate and remove the other. The outpost is blocked, naming
/// both, and neither is touched.
#[test]
fn a_copy_of_an_outposts_container_is_not_taken_for_a_leftover() {
    let env = Env::new("copied");
    let mut m = env.manifest();
    m["outposts"]["Dir"] = env.outpost("ldap", "AK_DIR");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("dir");
    let original = env.container(&name).id();

    let image = format!("outpostctl-e2e-copy:{}", env.project);
    env.track_image_tag(&image);
    docker_ok(&["commit", &name, &image]);
    let copy = format!("{}-debug", name);
    env.track_container(&copy);
    let copy_id = docker_ok(&["run", "-d", "--name", &copy, &image]);
    assert_eq!(
        env.container(&copy).label(LABEL_PROJECT),
        Some(env.project.clone()),
        "the copy carries the project's label"
    );

    let plan = env.plan(&["--detailed-exitcode"]);
    assert_eq!(plan.code, 1, "{}", shown(&plan));
    assert!(
        plan.stdout.contains("! blocked")
            && plan.stdout.contains(&format!("`{name}`"))
            && plan.stdout.contains(&format!("`{copy}`"))
            && plan.stdout.contains("none replaced the others"),
        "{}",
        shown(&plan)
    );
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert_eq!(
        env.container(&name).id(),
        original,
        "the original was touched"
    );
    assert_eq!(
        env.container(&copy).id(),
        copy_id.trim(),
        "the copy was touched"
    );
    assert!(env.container(&name).running() && env.container(&copy).running());
}

/// A container linked to an outpost's (`docker run --link <outpost>:alias`, the legacy links
/// of Docker's default bridge): Docker lists the outpost's container under the name it has in
/// the linker too (`/linker/alias`), in any order. The outpost's own name is read: no rename
/// planned (which failed on every apply with Docker's 400), its recreate parks it and goes
/// ahead, and a name taken by a linked foreign container still blocks.
#[test]
fn a_container_linked_to_an_outpost_does_not_hide_its_name() {
    let env = Env::new("linked");
    let mut m = env.manifest();
    m["outposts"]["Dir"] = env.outpost("ldap", "AK_D");
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("dir");
    let dir = env.container(&name);
    // Two linkers, named to sort before and after it (Docker lists link names first).
    for linker in ["aa-linker", "zz-linker"] {
        let n = format!("{}{linker}", env.prefix);
        env.docker_container(
            "run",
            &n,
            &["-d", "--link", &format!("{name}:ak"), IMAGE_V1],
        );
    }
    env.assert_converged();

    // A change that recreates it: parked and replaced, not a 409 on its own name.
    m["outposts"]["Dir"]["config"]["docker_labels"] = json!({ "com.example.v": "2" });
    env.write(&m);
    let plan = env.plan_json();
    assert_eq!(action_of(&plan, "Dir")["action"], "recreate", "{plan:#}");
    env.apply_ok();
    let new = env.container(&name);
    assert_ne!(new.id(), dir.id());
    assert!(new.running());
    env.assert_converged();

    // A foreign container linked to by another holds a name an outpost wants: blocked,
    // naming it, not a create that fails with a 409.
    let held = env.name_of("held");
    let holder = env.docker_container("run", &held, &["-d", IMAGE_V1]);
    let n = format!("{}mm-linker", env.prefix);
    env.docker_container("run", &n, &["-d", "--link", &format!("{held}:x"), IMAGE_V1]);
    m["outposts"]["Held"] = env.outpost("radius", "AK_H");
    env.write(&m);
    let plan = env.plan_json_with(&[], true);
    let a = action_of(&plan, "Held");
    assert_eq!(a["action"], "blocked", "{a:#}");
    assert!(
        a["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("a container named `{held}`"))),
        "{a:#}"
    );
    assert_eq!(env.container(&held).id(), holder);
}
