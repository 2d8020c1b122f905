//! End to end with the real test registry on 127.0.0.1:5000: `pull: always` and `missing`
//! pull, and a custom image that cannot be pulled falls back to authentik's default image
//! (with a warning). Needs `scripts/test-deps.sh`.

mod common;
mod support;

use serde_json::json;
use support::*;

/// Removes the local tag `image` (pulled images are removed again at the end of the test,
/// so the next run pulls for real).
fn forget_locally(env: &Env, image: &str) {
    env.track_image_tag(image);
    let _ = docker(&["rmi", image]);
    assert!(image_id(image).is_none(), "{image} is still on the engine");
}

#[test]
fn pull_always_pulls_from_the_registry() {
    require_registry();
    let env = Env::new("pullalways");
    let image = format!("{REGISTRY}/outpostctl/outpost:1");
    forget_locally(&env, &image);
    let v1 = image_id(IMAGE_V1).expect("the v1 image");
    let v2 = image_id(IMAGE_V2).expect("the v2 image");

    let mut m = env.manifest();
    let mut o = env.outpost("ldap", "AK_P");
    o["pull"] = json!("always");
    o["config"]["container_image"] = json!(image);
    m["outposts"]["Puller"] = o;
    env.write(&m);
    env.apply_ok();
    let name = env.name_of("puller");
    let c = env.container(&name);
    assert_eq!(c.image(), image);
    assert_eq!(image_id(&image).as_deref(), Some(v1.as_str()), "not pulled");
    assert_eq!(c.image_id(), v1);
    env.assert_converged();

    // The engine's copy now differs from the registry's: `always` pulls anyway.
    docker_ok(&["tag", IMAGE_V2, &image]);
    assert_eq!(image_id(&image).as_deref(), Some(v2.as_str()));
    m["outposts"]["Puller"]["config"]["docker_labels"] = json!({"com.example.v": "2"});
    env.write(&m);
    env.apply_ok();
    assert_eq!(
        image_id(&image).as_deref(),
        Some(v1.as_str()),
        "pull: always did not pull"
    );
    let c = env.container(&name);
    assert_eq!(c.image_id(), v1, "the container runs the pulled image");
    env.assert_converged();
}

/// `pull: missing` (the default) pulls what the engine lacks: a custom image, and an image
/// from `defaults.container_image_base`.
#[test]
fn pull_missing_pulls_absent_images() {
    require_registry();
    let env = Env::new("pullmissing");
    let custom = format!("{REGISTRY}/outpostctl/outpost:2");
    let based = format!("{REGISTRY}/goauthentik/radius:{AK_VERSION}");
    forget_locally(&env, &custom);
    forget_locally(&env, &based);

    let mut m = env.manifest();
    m["defaults"]["container_image_base"] =
        json!(format!("{REGISTRY}/goauthentik/%(type)s:%(version)s"));
    let mut ldap = env.outpost("ldap", "AK_L");
    ldap["config"]["container_image"] = json!(custom);
    m["outposts"]["Custom"] = ldap;
    m["outposts"]["Based"] = env.outpost("radius", "AK_R");
    env.write(&m);
    let r = env.apply_ok();
    assert!(!r.stdout.contains("warning"), "{}", shown(&r));
    let c = env.container(&env.name_of("custom"));
    assert_eq!(c.image(), custom);
    assert_eq!(Some(c.image_id()), image_id(IMAGE_V2));
    let b = env.container(&env.name_of("based"));
    assert_eq!(b.image(), based);
    assert_eq!(Some(b.image_id()), image_id(IMAGE_V1));
    assert!(image_id(&based).is_some(), "{based} was not pulled");
    env.assert_converged();
}

/// authentik's fallback: a custom image that cannot be pulled is replaced by the default
/// image `ghcr.io/goauthentik/<type>:<version>` (on the engine already), with a warning; the
/// plan afterwards is empty.
#[test]
fn unpullable_custom_image_falls_back_to_the_default_image() {
    fallback_case("fallback", false);
}

/// The same with `image_by_id`: the container is made from the fallback's id, and the name it
/// keeps is the fallback's, which plan and status go by.
#[test]
fn unpullable_custom_image_falls_back_by_id() {
    fallback_case("fallbackid", true);
}

/// `c` was made from `image`: by its name, or by its id with the name in a label.
fn made_from(c: &Inspect, image: &str, by_id: bool) {
    if by_id {
        assert_eq!(Some(c.image()), image_id(image), "made from {image}'s id");
        assert_eq!(c.label("outpostctl.image").as_deref(), Some(image));
    } else {
        assert_eq!(c.image(), image);
        assert_eq!(c.label("outpostctl.image"), None);
    }
}

fn fallback_case(tag: &str, by_id: bool) {
    require_registry();
    let env = Env::new(tag);
    let missing = format!("{REGISTRY}/outpostctl/nonexistent:1");
    let mut m = env.manifest();
    if by_id {
        m["defaults"]["image_by_id"] = json!(true);
    }
    m["defaults"]["container_image_base"] =
        json!(format!("{REGISTRY}/goauthentik/%(type)s:%(version)s"));
    m["defaults"]["authentik_version"] = json!("2026.8.0");
    let mut o = env.outpost("ldap", "AK_F");
    o["config"]["container_image"] = json!(missing);
    m["outposts"]["Fallback"] = o;
    env.write(&m);

    let r = env.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    let name = env.name_of("fallback");
    assert!(
        r.stdout
            .contains(&format!("ok create {name} `Fallback` on local"))
            && r.stdout
                .contains(&format!("warning: could not pull `{missing}`"))
            && r.stdout
                .contains("using authentik's default image `ghcr.io/goauthentik/ldap:2026.8.0`"),
        "{}",
        shown(&r)
    );
    let c = env.container(&name);
    assert!(c.running());
    made_from(&c, "ghcr.io/goauthentik/ldap:2026.8.0", by_id);
    assert_eq!(
        c.healthcheck()["Test"],
        json!(["CMD", "/ldap", "healthcheck"])
    );
    assert!(image_id(&missing).is_none());
    env.assert_converged();
    // `status` says the outpost runs the fallback, which the plan (rightly) calls unchanged.
    let status = env.run(&["status"]);
    assert_eq!(status.code, 0, "{}", shown(&status));
    assert!(
        status.stdout.contains(&format!("{name}: running, "))
            && status.stdout.contains(
                ", on authentik's default image ghcr.io/goauthentik/ldap:2026.8.0 (its own could not be pulled"
            ),
        "{}",
        shown(&status)
    );

    // A new authentik_version moves it to that version's default (the config hash, which
    // holds the custom image without a version, stays the same): planned as a recreate, and
    // the apply tries the custom image again and falls back to the new default.
    let newer = "ghcr.io/goauthentik/ldap:2026.8.1";
    env.track_image_tag(newer);
    docker_ok(&["tag", IMAGE_V2, newer]);
    m["defaults"]["authentik_version"] = json!("2026.8.1");
    env.write(&m);
    let plan = env.plan_json();
    let a = action_of(&plan, "Fallback");
    assert_eq!(a["action"], "recreate", "{a:#}");
    let r = reason(&a, "image").unwrap_or_else(|| panic!("no image reason: {a:#}"));
    assert_eq!(r["before"], "ghcr.io/goauthentik/ldap:2026.8.0", "{a:#}");
    assert_eq!(r["after"], missing.as_str(), "{a:#}");
    let r = env.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert!(
        r.stdout
            .contains(&format!("ok recreate {name} `Fallback` on local"))
            && r.stdout
                .contains(&format!("using authentik's default image `{newer}`")),
        "{}",
        shown(&r)
    );
    let c = env.container(&name);
    assert!(c.running());
    made_from(&c, newer, by_id);
    env.assert_converged();
}

/// When the default image cannot be pulled either, the error stands: that outpost fails,
/// with both reasons.
#[test]
fn fallback_that_cannot_be_pulled_either_fails() {
    require_registry();
    let env = Env::new("nofallback");
    let missing = format!("{REGISTRY}/outpostctl/nonexistent:1");
    let mut m = env.manifest();
    // No image of this version is on the engine, and ghcr.io cannot be reached.
    m["defaults"]["authentik_version"] = json!("2026.9.0");
    let mut o = env.outpost("ldap", "AK_F");
    o["config"]["container_image"] = json!(missing);
    m["outposts"]["Doomed"] = o;
    env.write(&m);
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    let name = env.name_of("doomed");
    assert!(
        r.stdout
            .contains(&format!("FAILED create {name} `Doomed` on local"))
            && r.stdout.contains(&missing)
            && r.stdout.contains(
                "the default image `ghcr.io/goauthentik/ldap:2026.9.0` could not be pulled either"
            )
            && r.stdout.contains("apply: 0 done, 1 failed"),
        "{}",
        shown(&r)
    );
    assert!(inspect(&name).is_none());
}

/// `pull: always` with an image the registry does not have, but the engine does: the
/// engine's copy is used, with a warning.
#[test]
fn failed_pull_of_a_present_image_uses_the_engines_copy() {
    require_registry();
    let env = Env::new("localcopy");
    let image = format!("{REGISTRY}/outpostctl/local-only:{}", std::process::id());
    env.track_image_tag(&image);
    docker_ok(&["tag", IMAGE_V1, &image]);
    let mut m = env.manifest();
    let mut o = env.outpost("radius", "AK_L");
    o["pull"] = json!("always");
    o["config"]["container_image"] = json!(image);
    m["outposts"]["Local"] = o;
    env.write(&m);
    let r = env.apply(&[]);
    assert_eq!(r.code, 0, "{}", shown(&r));
    assert!(
        r.stdout
            .contains(&format!("warning: could not pull `{image}`"))
            && r.stdout.contains("using the copy the engine has"),
        "{}",
        shown(&r)
    );
    assert_eq!(env.container(&env.name_of("local")).image(), image);
    env.assert_converged();
}

/// An image pinned by digest (`repo@sha256:…`, as `container_image` allows verbatim) is
/// pulled by that digest, not as `repo:latest`, and the container runs exactly that image.
#[test]
fn image_pinned_by_digest_is_pulled_by_digest() {
    require_registry();
    let env = Env::new("pulldigest");
    // A repository of this test's own (the other tests pull `outpostctl/outpost` at the same
    // time): the v1 image pushed there, its registry digest learnt, the local names removed.
    let repo = format!("{REGISTRY}/outpostctl/pinned-{}", env.project);
    let tagged = format!("{repo}:1");
    env.track_image_tag(&tagged);
    docker_ok(&["tag", IMAGE_V1, &tagged]);
    docker_ok(&["push", "-q", &tagged]);
    let digests = docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{range .RepoDigests}}{{println .}}{{end}}",
        &tagged,
    ]);
    let pinned = digests
        .lines()
        .find(|d| d.starts_with(&format!("{repo}@sha256:")))
        .unwrap_or_else(|| panic!("no registry digest for {tagged}: {digests}"))
        .to_string();
    let want = image_id(IMAGE_V1).expect("the v1 image");
    env.track_image_tag(&pinned);
    let _ = docker(&["rmi", &tagged]);
    let _ = docker(&["rmi", &pinned]);
    assert!(
        image_id(&pinned).is_none(),
        "{pinned} is still on the engine"
    );

    let mut m = env.manifest();
    let mut o = env.outpost("ldap", "AK_P");
    o["config"]["container_image"] = json!(pinned);
    m["outposts"]["Pinned"] = o;
    env.write(&m);
    let out = env.apply_ok();
    let shown = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !shown.contains("could not pull") && !shown.contains("default image"),
        "the pinned image was not pulled:\n{shown}"
    );
    let c = env.container(&env.name_of("pinned"));
    assert_eq!(c.image(), pinned);
    assert_eq!(c.image_id(), want, "the container runs the pinned image");
    assert!(c.running(), "{}", c.status());
    env.assert_converged();
}

/// Two outposts swapping host ports (each previous container is stopped before either new one
/// starts) where one's new image cannot be had: its image is tried first, while both still
/// run, so neither is left stopped. The one that failed keeps its container running; the
/// other, whose new container cannot take the port still held, gets its previous one back.
#[test]
fn a_port_swap_whose_image_cannot_be_pulled_leaves_both_running() {
    require_registry();
    let env = Env::new("swapnopull");
    let mut m = env.manifest();
    // No default image of this version is on the engine, and ghcr.io cannot be reached: the
    // fallback fails too. Both run the local test image, named explicitly.
    m["defaults"]["authentik_version"] = json!("2026.9.0");
    let present = format!("ghcr.io/goauthentik/ldap:{AK_VERSION}");
    let mut left = env.outpost("ldap", "AK_LEFT");
    left["config"]["container_image"] = json!(present);
    let left_ports = env.publish(&mut left);
    let mut right = env.outpost("ldap", "AK_RIGHT");
    right["config"]["container_image"] = json!(present);
    let right_ports = env.publish(&mut right);
    m["outposts"]["Left"] = left;
    m["outposts"]["Right"] = right;
    env.write(&m);
    env.apply_ok();
    let (left_name, right_name) = (env.name_of("left"), env.name_of("right"));
    let (left_id, right_id) = (
        env.container(&left_name).id(),
        env.container(&right_name).id(),
    );

    for (port, host) in &right_ports {
        m["outposts"]["Left"]["ports"][port] = json!(format!("127.0.0.1:{host}"));
    }
    for (port, host) in &left_ports {
        m["outposts"]["Right"]["ports"][port] = json!(format!("127.0.0.1:{host}"));
    }
    let missing = format!("{REGISTRY}/outpostctl/nonexistent:1");
    m["outposts"]["Left"]["config"]["container_image"] = json!(missing);
    env.write(&m);
    let r = env.apply(&[]);
    assert_eq!(r.code, 1, "{}", shown(&r));
    assert!(
        r.stdout
            .contains(&format!("FAILED recreate {left_name} `Left` on local"))
            && r.stdout.contains("could not be pulled either")
            && r.stdout
                .contains(&format!("FAILED recreate {right_name} `Right` on local"))
            && r.stdout
                .contains("the previous container was started again")
            && r.stdout.contains("apply: 0 done, 2 failed"),
        "{}",
        shown(&r)
    );
    for (name, id, ports) in [
        (&left_name, &left_id, &left_ports),
        (&right_name, &right_id, &right_ports),
    ] {
        let c = env.container(name);
        assert_eq!(&c.id(), id, "{name} was replaced");
        assert!(c.running(), "{name} was left stopped");
        for host in ports.values() {
            assert!(c.publishes(*host), "{name} lost port {host}");
        }
    }
}

/// A pull that stalls half-way (the registry served the manifest, then never sends a layer)
/// is given up after `OUTPOSTCTL_ENGINE_TIMEOUT` seconds without progress, instead of holding
/// the apply for good; the custom image then falls back to authentik's default image, as
/// authentik does when its pull fails, and the other outpost is deployed meanwhile.
#[test]
fn a_pull_that_stalls_half_way_is_given_up_and_falls_back() {
    let env = Env::new("pullstall");
    let port = env.port();
    let registry = stall::StallingRegistry::start(port);
    let stalls = format!("127.0.0.1:{port}/stalls/ldap:1");
    // It bounds every engine request too: long enough for any of them on a slow machine.
    env.set_env("OUTPOSTCTL_ENGINE_TIMEOUT", "15");
    let mut m = env.manifest();
    m["defaults"]["authentik_version"] = json!(AK_VERSION);
    let mut o = env.outpost("ldap", "AK_S");
    o["config"]["container_image"] = json!(stalls);
    m["outposts"]["Stalls"] = o;
    m["outposts"]["Other"] = env.outpost("radius", "AK_O");
    env.write(&m);

    let r = env.apply(&[]);
    assert!(
        registry.blob_requests() > 0,
        "the engine did not get as far as the layers: {}",
        shown(&r)
    );
    assert_eq!(r.code, 0, "{}", shown(&r));
    let name = env.name_of("stalls");
    assert!(
        r.stdout
            .contains(&format!("ok create {name} `Stalls` on local"))
            && r.stdout.contains(&format!(
                "warning: could not pull `{stalls}` (pull {stalls}: no progress for 15 s"
            ))
            && r.stdout.contains(&format!(
                "using authentik's default image `ghcr.io/goauthentik/ldap:{AK_VERSION}`"
            ))
            && r.stdout.contains("apply: 2 done, 0 failed"),
        "{}",
        shown(&r)
    );
    let c = env.container(&name);
    assert!(c.running(), "{}", c.status());
    assert_eq!(c.image(), format!("ghcr.io/goauthentik/ldap:{AK_VERSION}"));
    assert!(env.container(&env.name_of("other")).running());
    assert!(image_id(&stalls).is_none());
    env.assert_converged();
}
