//! `outpostctl status`: authentik's "service connection state" view: is each engine
//! reachable, which version, and how is each outpost's container doing.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Exit, Printer, load_valid};
use crate::cli::Format;
use crate::desired::{LABEL_FALLBACK, LABEL_PROJECT};
use crate::diff::ActionKind;
use crate::engine::EngineInfo;
use crate::engine::connect::connect_all;

#[derive(Debug, Serialize)]
pub struct EngineStatus {
    pub integration: String,
    pub url: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub outposts: Vec<OutpostStatus>,
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
                url: def.url.clone(),
                reachable: false,
                engine: None,
                error: None,
                outposts: Vec::new(),
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
            match (info, list) {
                (Ok(info), Ok(list)) => {
                    s.reachable = true;
                    s.unchecked.clear();
                    s.engine = Some(info);
                    // The container the plan would act on for each outpost (its own, one
                    // authentik deployed, or the one in the way of its name), and why it
                    // is blocked: what `plan` says (with what the integrations decide
                    // together, below).
                    let actions =
                        crate::plan::checked(&project, &desired, engine.as_ref(), &list, opts)
                            .await;
                    (s, Some((actions, list)))
                }
                (Err(e), _) | (_, Err(e)) => {
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
            let c = action
                .and_then(|a| a.container.as_ref())
                .and_then(|c| list.iter().find(|o| o.id == c.id));
            s.outposts.push(OutpostStatus {
                outpost: spec.outpost.clone(),
                container: c.map(|c| c.name.clone()),
                state: c.map(|c| c.state.as_str().to_string()),
                health: c.and_then(|c| c.health).map(|h| h.as_str().to_string()),
                managed: c.is_some_and(|c| c.label(LABEL_PROJECT) == Some(project.as_str())),
                image: c.map(|c| c.image.clone()),
                fallback_image: c.is_some_and(|c| c.label(LABEL_FALLBACK).is_some()),
                blocked: action
                    .filter(|a| a.action == ActionKind::Blocked)
                    .and_then(|a| a.error.clone()),
            });
        }
        statuses.push(s);
    }
    let all_ok = statuses.iter().all(|s| s.reachable);
    let all_fine = statuses
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
                .flat_map(|s| &s.outposts)
                .map(|o| o.outpost.chars().count())
                .max()
                .unwrap_or(0)
                .min(40);
            for s in &statuses {
                match (&s.engine, &s.error) {
                    (Some(e), _) => {
                        let _ = writeln!(
                            out,
                            "integration {} ({}): reachable, Docker {} (API {})",
                            s.integration, s.url, e.server_version, e.api_version
                        );
                    }
                    (None, err) => {
                        let _ = writeln!(
                            out,
                            "integration {} ({}): unreachable: {}",
                            s.integration,
                            s.url,
                            err.as_deref().unwrap_or("not connected")
                        );
                    }
                }
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
                            let owner = if o.managed {
                                ""
                            } else {
                                " (not managed by outpostctl)"
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
