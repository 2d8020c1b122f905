//! `outpostctl status`: authentik's "service connection state" view: is each engine
//! reachable, which version, and how is each outpost's container doing.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Exit, Printer, load_valid};
use crate::cli::Format;
use crate::desired::{LABEL_FALLBACK, LABEL_PROJECT, LABEL_UUID};
use crate::diff::ActionKind;
use crate::engine::EngineInfo;
use crate::engine::connect::connect_all;

#[derive(Debug, Serialize)]
pub struct EngineStatus {
    pub integration: String,
    pub url: String,
    /// The engine answered (its ping): a refused list (a socket proxy's 403) is an `error` of
    /// a reachable engine, not an unreachable one.
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineInfo>,
    /// Why its version could not be read (`docker info`; a socket proxy may refuse it) while
    /// its containers could: not a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info_error: Option<String>,
    /// Why it could not be reached or its containers could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub outposts: Vec<OutpostStatus>,
    /// Containers of this project that apply would remove: their outpost left the manifests
    /// or moved to another integration, or a second container of an outpost left by an
    /// interrupted recreate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<Leftover>,
    /// The outposts of an unreachable engine: not checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unchecked: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct OutpostStatus {
    pub outpost: String,
    /// The container's name, or None when it does not exist.
    pub container: Option<String>,
    pub state: Option<String>,
    pub health: Option<String>,
    /// Whether the container carries this project's label.
    pub managed: bool,
    /// The outpostctl project whose label the container carries, when not this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_project: Option<String>,
    /// The container's image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The container runs authentik's default image because its own could not be pulled.
    pub fallback_image: bool,
    /// Why apply would leave this outpost alone (as `plan` says): a name or host port taken,
    /// a missing network or image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

/// A container apply would remove (`EngineStatus::leftovers`).
#[derive(Debug, Serialize)]
pub struct Leftover {
    /// The outpost it was made for.
    pub outpost: String,
    pub container: String,
    pub state: String,
    pub health: Option<String>,
    /// Why apply removes it, as the plan says it.
    pub reasons: Vec<String>,
}

impl OutpostStatus {
    /// Running as outpostctl deployed it, and healthy or without a health check; not blocked
    /// (a recreate apply cannot make, the previous container still running).
    pub fn fine(&self) -> bool {
        self.blocked.is_none()
            && self.managed
            && !self.fallback_image
            && self.state.as_deref() == Some("running")
            && matches!(self.health.as_deref(), None | Some("healthy"))
    }
}

pub async fn run(
    p: &Printer,
    paths: &[std::path::PathBuf],
    format: Format,
    detailed_exitcode: bool,
) -> Exit {
    let v = match load_valid(p, paths) {
        Ok(v) => v,
        Err(diagnostics) => {
            if format == Format::Json {
                super::invalid_json(p, &diagnostics);
            }
            return Exit::Failure;
        }
    };
    let engines = connect_all(&v).await;
    let placed = crate::plan::placed(&v);
    let futures = v.integrations.iter().map(|(name, def)| {
        let engine = engines.get(name);
        let desired = v.desired.get(name).cloned().unwrap_or_default();
        let project = v.project.clone();
        let opts = crate::diff::DiffOptions {
            integration: Some(name.clone()),
            integrations: v.integrations.keys().cloned().collect(),
            placed: std::sync::Arc::clone(&placed),
            ..Default::default()
        };
        async move {
            let mut s = EngineStatus {
                integration: name.clone(),
                url: def.address(),
                reachable: false,
                engine: None,
                info_error: None,
                error: None,
                outposts: Vec::new(),
                leftovers: Vec::new(),
                // Emptied once the engine has answered.
                unchecked: desired.iter().map(|d| d.outpost.clone()).collect(),
            };
            let engine = match engine {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    s.error = Some(e.to_string());
                    return (s, None);
                }
                None => return (s, None),
            };
            let (info, list) = futures_util::join!(engine.info(), engine.list());
            // Connected: the engine answered its ping.
            s.reachable = true;
            match info {
                Ok(info) => s.engine = Some(info),
                Err(e) => {
                    s.info_error = Some(e.to_string());
                    // Its versions from `/version`, which a socket proxy allows by default.
                    s.engine = engine.version().await.ok();
                }
            }
            match list {
                Ok(list) => {
                    s.unchecked.clear();
                    // The container the plan would act on for each outpost (its own, one
                    // authentik deployed, or the one in the way of its name), and why it
                    // is blocked: what `plan` says (with what the integrations decide
                    // together, below).
                    let actions =
                        crate::plan::checked(&project, &desired, engine.as_ref(), &list, opts)
                            .await;
                    (s, Some((actions, list)))
                }
                Err(e) => {
                    s.error = Some(e.to_string());
                    (s, None)
                }
            }
        }
    });
    let checked = futures_util::future::join_all(futures).await;
    let mut plans: Vec<crate::plan::EnginePlan> = checked
        .iter()
        .map(|(s, c)| crate::plan::EnginePlan {
            name: s.integration.clone(),
            url: s.url.clone(),
            // Its daemon ID, read above: the cross-integration step does not ask it again.
            engine_id: s
                .engine
                .as_ref()
                .map(|e| e.id.clone())
                .filter(|id| !id.is_empty()),
            error: c.is_none().then(|| s.error.clone().unwrap_or_default()),
            actions: c.as_ref().map(|(a, _)| a.clone()).unwrap_or_default(),
            shared: c
                .as_ref()
                .map(|(actions, list)| {
                    let desired = v.desired.get(&s.integration).map_or(&[][..], Vec::as_slice);
                    let scope = crate::diff::DiffOptions {
                        integration: Some(s.integration.clone()),
                        integrations: v.integrations.keys().cloned().collect(),
                        ..Default::default()
                    };
                    crate::plan::Shared::of(&v.project, desired, list, actions, &scope)
                })
                .unwrap_or_default(),
            ..Default::default()
        })
        .collect();
    crate::plan::across_integrations(&v, &engines, &mut plans).await;
    let mut statuses = Vec::new();
    for ((mut s, c), plan) in checked.into_iter().zip(&plans) {
        let Some((_, list)) = c else {
            statuses.push(s);
            continue;
        };
        let project = &v.project;
        for spec in v.desired.get(&s.integration).into_iter().flatten() {
            let action = plan
                .actions
                .iter()
                .find(|a| a.outpost == spec.outpost && a.action != ActionKind::Remove);
            // The container the action is on, if it is the outpost's (a blocked create's is
            // the one in the way of its name: the outpost has none, `blocked` says why).
            let c = action
                .and_then(|a| a.container.as_ref())
                .and_then(|c| list.iter().find(|o| o.id == c.id))
                .filter(|c| c.label(LABEL_UUID) == Some(spec.uuid.as_str()));
            let label = c.and_then(|c| c.label(LABEL_PROJECT));
            s.outposts.push(OutpostStatus {
                outpost: spec.outpost.clone(),
                container: c.map(|c| c.name.clone()),
                state: c.map(|c| c.state.as_str().to_string()),
                health: c.and_then(|c| c.health).map(|h| h.as_str().to_string()),
                managed: label == Some(project.as_str()),
                other_project: label
                    .filter(|l| *l != project)
                    .map(crate::engine::printable_line),
                image: c.map(|c| c.image.clone()),
                fallback_image: c.is_some_and(|c| c.label(LABEL_FALLBACK).is_some()),
                blocked: action
                    .filter(|a| a.action == ActionKind::Blocked)
                    .and_then(|a| a.error.clone()),
            });
        }
        for a in plan
            .actions
            .iter()
            .filter(|a| a.action == ActionKind::Remove)
        {
            let Some(c) = a
                .container
                .as_ref()
                .and_then(|c| list.iter().find(|o| o.id == c.id))
            else {
                continue;
            };
            s.leftovers.push(Leftover {
                outpost: a.outpost.clone(),
                container: c.name.clone(),
                state: c.state.as_str().to_string(),
                health: c.health.map(|h| h.as_str().to_string()),
                reasons: a
                    .reasons
                    .iter()
                    .map(crate::render::plan::change_text)
                    .collect(),
            });
        }
        statuses.push(s);
    }
    let all_ok = statuses.iter().all(|s| s.reachable && s.error.is_none());
    let all_fine = statuses.iter().all(|s| s.leftovers.is_empty())
        && statuses
            .iter()
            .flat_map(|s| &s.outposts)
            .all(OutpostStatus::fine);
    match format {
        Format::Json => {
            let doc = serde_json::json!({ "format_version": 1, "project": v.project, "integrations": statuses });
            p.out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            ));
        }
        Format::Human => {
            let mut out = String::new();
            let width = statuses
                .iter()
                .flat_map(|s| {
                    let leftovers = s.leftovers.iter().map(|l| &l.outpost);
                    s.outposts.iter().map(|o| &o.outpost).chain(leftovers)
                })
                .map(|o| o.chars().count())
                .max()
                .unwrap_or(0)
                .min(40);
            for s in &statuses {
                let _ = writeln!(
                    out,
                    "integration {} ({}): {}",
                    s.integration,
                    s.url,
                    engine_line(s)
                );
                if let Some(line) = crate::render::plan::unchecked_line(&s.unchecked) {
                    let _ = writeln!(out, "  {line}");
                }
                for o in &s.outposts {
                    let line = match (&o.container, &o.state) {
                        (Some(c), Some(state)) => {
                            let health = o
                                .health
                                .as_deref()
                                .map(|h| format!(", {h}"))
                                .unwrap_or_default();
                            let owner = match (&o.other_project, o.managed) {
                                (_, true) => String::new(),
                                (Some(other), _) => format!(" (of outpostctl project `{other}`)"),
                                (None, false) => " (not managed by outpostctl)".to_string(),
                            };
                            let fallback = match (&o.image, o.fallback_image) {
                                (Some(image), true) => format!(
                                    ", on authentik's default image {image} (its own could not be pulled; a recreate tries it again)"
                                ),
                                _ => String::new(),
                            };
                            format!("{c}: {state}{health}{owner}{fallback}")
                        }
                        _ => "no container".to_string(),
                    };
                    let line = match &o.blocked {
                        Some(why) => format!("{line}; blocked: {why}"),
                        None => line,
                    };
                    let _ = writeln!(out, "  {:<width$}  {line}", o.outpost);
                }
                for l in &s.leftovers {
                    let health = l.health.as_deref().map(|h| format!(", {h}"));
                    let _ = writeln!(
                        out,
                        "  {:<width$}  {}: {}{}; apply removes it ({})",
                        l.outpost,
                        l.container,
                        l.state,
                        health.unwrap_or_default(),
                        l.reasons.join("; ")
                    );
                }
            }
            p.out(&out);
        }
    }
    if !all_ok {
        Exit::Failure
    } else if detailed_exitcode && !all_fine {
        Exit::Changes
    } else {
        Exit::Success
    }
}

/// What an integration's heading says of its engine: reachable and its version, or why not.
fn engine_line(s: &EngineStatus) -> String {
    if !s.reachable {
        let why = s.error.as_deref().unwrap_or("not connected");
        return format!("unreachable: {why}");
    }
    let mut line = match (&s.engine, &s.info_error) {
        // Its versions from `/version`: `info` was refused (a socket proxy's INFO=0).
        (Some(e), Some(why)) => format!(
            "reachable, Docker {} (API {}; its info could not be read: {why})",
            e.server_version, e.api_version
        ),
        (Some(e), None) => format!(
            "reachable, Docker {} (API {})",
            e.server_version, e.api_version
        ),
        (None, Some(why)) => format!("reachable (its version could not be read: {why})"),
        (None, None) => "reachable".to_string(),
    };
    if let Some(why) = &s.error {
        let _ = write!(line, "; its containers could not be read: {why}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::{EngineStatus, OutpostStatus, engine_line};
    use crate::engine::EngineInfo;

    /// An engine that answered but refused a read (a socket proxy's 403 on the container
    /// list, or on `info`) is said to be reachable, with what it refused; only one that did
    /// not answer is "unreachable".
    #[test]
    fn an_engine_that_refuses_a_read_is_reachable() {
        let mut s = EngineStatus {
            integration: "nas".into(),
            url: "http://nas:2375".into(),
            reachable: false,
            engine: None,
            info_error: None,
            error: Some("connect: connection refused".into()),
            outposts: Vec::new(),
            leftovers: Vec::new(),
            unchecked: Vec::new(),
        };
        assert_eq!(engine_line(&s), "unreachable: connect: connection refused");
        s.reachable = true;
        s.error = Some("list containers: 403".into());
        s.info_error = Some("info: 403".into());
        assert_eq!(
            engine_line(&s),
            "reachable (its version could not be read: info: 403); its containers could not be read: list containers: 403"
        );
        s.error = None;
        s.info_error = None;
        s.engine = Some(EngineInfo {
            id: "X".into(),
            server_version: "20.10.24".into(),
            api_version: "1.41".into(),
            os: "linux".into(),
            swarm_worker: false,
        });
        assert_eq!(engine_line(&s), "reachable, Docker 20.10.24 (API 1.41)");
        // `info` refused, the versions read from `/version`.
        s.info_error = Some("info: 403".into());
        assert_eq!(
            engine_line(&s),
            "reachable, Docker 20.10.24 (API 1.41; its info could not be read: info: 403)"
        );
    }

    fn outpost(state: Option<&str>, health: Option<&str>) -> OutpostStatus {
        OutpostStatus {
            outpost: "Edge".into(),
            container: state.map(|_| "ak-outpost-edge".into()),
            state: state.map(str::to_string),
            health: health.map(str::to_string),
            managed: state.is_some(),
            other_project: None,
            image: None,
            fallback_image: false,
            blocked: None,
        }
    }

    /// `status --detailed-exitcode` exits 0 only for outposts running as deployed, healthy or
    /// without a health check; every other state a container can be in is worth a look.
    #[test]
    fn only_a_running_healthy_managed_outpost_is_fine() {
        assert!(outpost(Some("running"), Some("healthy")).fine());
        assert!(outpost(Some("running"), None).fine());
        for (state, health) in [
            (Some("running"), Some("starting")),
            (Some("running"), Some("unhealthy")),
            (Some("paused"), Some("healthy")),
            (Some("restarting"), None),
            (Some("exited"), None),
            (Some("created"), None),
            (Some("dead"), None),
            (Some("removing"), None),
            (None, None),
        ] {
            assert!(!outpost(state, health).fine(), "{state:?} {health:?}");
        }
        let mut theirs = outpost(Some("running"), Some("healthy"));
        theirs.managed = false;
        theirs.other_project = Some("other".into());
        assert!(!theirs.fine(), "another project's container");
        let mut fallback = outpost(Some("running"), Some("healthy"));
        fallback.fallback_image = true;
        assert!(!fallback.fine(), "on authentik's fallback image");
        let mut blocked = outpost(Some("running"), Some("healthy"));
        blocked.blocked = Some("host port 9443 is published by x".into());
        assert!(!blocked.fine(), "blocked");
    }
}
