//! Carrying out a plan through the engines.
//!
//! Engines are applied in parallel, outposts within an engine with a small bound (removals
//! with a smaller one: Docker 20.10 can deadlock when many running containers are removed at
//! once). A failure in one outpost is recorded and the others go on. A recreate never leaves
//! an outpost without a container: the new one must start before the old one is removed, and
//! if it cannot, the old one is put back (or, when its name cannot be had back, kept stopped
//! under its parked name, and the failure says so).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;

use crate::desired::{ContainerSpec, LABEL_FALLBACK, LABEL_REPLACES};
use crate::diff::{Action, ActionKind};
use crate::engine::{Engine, EngineError};
use crate::manifest::model::PullPolicy;
use crate::plan::{Engines, Plan};
use crate::validate::Validated;

/// Outposts changed at once on one engine.
/// What a recreate appends to the name of the container it replaces while it makes the new
/// one (then, if that name is taken, the container's short id).
pub const PARKED: &str = "-outpostctl-old";

pub const PARALLEL_PER_ENGINE: usize = 4;
/// Containers removed at once on one engine.
pub const PARALLEL_REMOVALS: usize = 2;

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub integration: String,
    pub outpost: String,
    pub action: ActionKind,
    pub name: String,
    pub ok: bool,
    /// The error, or what was noteworthy (a fallback image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    /// Engines that could not be applied at all.
    pub engine_errors: Vec<(String, String)>,
}

impl Report {
    pub fn failed(&self) -> bool {
        !self.engine_errors.is_empty() || self.outcomes.iter().any(|o| !o.ok)
    }
}

/// Where apply tells what it is doing (a terminal, a log, nothing).
pub trait Progress: Send + Sync {
    fn started(&self, _integration: &str, _action: &Action) {}
    fn pulling(&self, _integration: &str, _outpost: &str, _image: &str, _status: &str) {}
    fn finished(&self, _outcome: &Outcome) {}
    /// True once no new action may start (a shutdown was asked for); actions in flight finish.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A progress sink that says nothing.
pub struct Quiet;
impl Progress for Quiet {}

/// Applies `plan` (which must have been computed just now from `v`).
pub async fn apply(
    plan: &Plan,
    v: &Validated,
    engines: &Engines,
    progress: &dyn Progress,
) -> Report {
    // What each outpost's action came to, as it happens: the removal of the container an
    // outpost left on another engine waits for its action where it went.
    let arrivals = Arrivals::default();
    let progress = &Recording {
        inner: progress,
        arrivals: &arrivals,
    };
    let arrivals = &arrivals;
    let futures = plan.integrations.iter().map(|ep| async move {
        let result = apply_engine(plan, ep, v, engines, progress, arrivals).await;
        arrivals.finished(&ep.name);
        result
    });
    let mut report = Report::default();
    for r in futures_util::future::join_all(futures).await {
        match r {
            Ok(o) => report.outcomes.extend(o),
            Err(e) => report.engine_errors.push(e),
        }
    }
    report.outcomes.sort_by(|a, b| {
        (&a.integration, &a.outpost, &a.name).cmp(&(&b.integration, &b.outpost, &b.name))
    });
    report
}

/// What the actions of every engine of one apply came to so far, by (integration, outpost),
/// and which engines are done: the removal of a container an outpost left on one engine waits
/// until its action on the engine it went to has succeeded.
#[derive(Default)]
struct Arrivals {
    state: std::sync::Mutex<Arrived>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct Arrived {
    /// Whether each (integration, outpost)'s action succeeded.
    outcomes: BTreeMap<(String, String), bool>,
    /// The integrations whose apply has ended.
    ended: BTreeSet<String>,
}

impl Arrivals {
    fn outcome(&self, o: &Outcome) {
        if o.action == ActionKind::Remove {
            return;
        }
        if let Ok(mut s) = self.state.lock() {
            s.outcomes
                .insert((o.integration.clone(), o.outpost.clone()), o.ok);
        }
        self.changed.notify_waiters();
    }

    fn finished(&self, integration: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.ended.insert(integration.to_string());
        }
        self.changed.notify_waiters();
    }

    /// Whether `outpost`'s action on `integration` succeeded, once it has ended (false when
    /// that integration's apply ended without it).
    async fn succeeded(&self, integration: &str, outpost: &str) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Ok(s) = self.state.lock() {
                if let Some(ok) = s
                    .outcomes
                    .get(&(integration.to_string(), outpost.to_string()))
                {
                    return *ok;
                }
                if s.ended.contains(integration) {
                    return false;
                }
            }
            changed.await;
        }
    }
}

/// A progress sink that also notes each outcome in `arrivals`.
struct Recording<'a> {
    inner: &'a dyn Progress,
    arrivals: &'a Arrivals,
}

impl Progress for Recording<'_> {
    fn started(&self, integration: &str, action: &Action) {
        self.inner.started(integration, action);
    }
    fn pulling(&self, integration: &str, outpost: &str, image: &str, status: &str) {
        self.inner.pulling(integration, outpost, image, status);
    }
    fn finished(&self, outcome: &Outcome) {
        self.arrivals.outcome(outcome);
        self.inner.finished(outcome);
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

/// The removals of `ep` that wait for an outpost's action on another integration: the
/// container an outpost left here when it moved there (to another engine: on the same
/// engine the integration it went to takes the container over), when that integration
/// creates or changes it in this apply and nothing here takes the name. By the removal's
/// container id: (that integration, the outpost's name there).
fn moves_away(
    plan: &Plan,
    ep: &crate::plan::EnginePlan,
    v: &Validated,
) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for a in ep.actions.iter().filter(|a| a.action == ActionKind::Remove) {
        let (Some(c), Some(there)) = (&a.container, crate::diff::wanted_on(a)) else {
            continue;
        };
        if there == ep.name
            || ep
                .actions
                .iter()
                .any(|b| b.action != ActionKind::Remove && b.action.is_change() && b.name == a.name)
        {
            continue;
        }
        let Some(uuid) = ep.shared.uuid_of.get(&c.id) else {
            continue;
        };
        let Some(spec) = v
            .desired
            .get(there)
            .into_iter()
            .flatten()
            .find(|s| s.uuid == *uuid)
        else {
            continue;
        };
        let acts_there = plan
            .integrations
            .iter()
            .filter(|e| e.name == there)
            .flat_map(|e| &e.actions)
            .any(|b| {
                b.outpost == spec.outpost && b.action.is_change() && b.action != ActionKind::Remove
            });
        if acts_there {
            out.insert(c.id.clone(), (there.to_string(), spec.outpost.clone()));
        }
    }
    out
}

/// One engine's part of an apply.
async fn apply_engine(
    plan: &Plan,
    ep: &crate::plan::EnginePlan,
    v: &Validated,
    engines: &Engines,
    progress: &dyn Progress,
    arrivals: &Arrivals,
) -> Result<Vec<Outcome>, (String, String)> {
    {
        if let Some(e) = &ep.error {
            return Err((ep.name.clone(), e.clone()));
        }
        let engine = match engines.get(&ep.name) {
            Some(Ok(e)) => Arc::clone(e),
            Some(Err(e)) => return Err((ep.name.clone(), e.to_string())),
            None => return Err((ep.name.clone(), "not connected".into())),
        };
        let specs: BTreeMap<&str, &ContainerSpec> = v
            .desired
            .get(&ep.name)
            .into_iter()
            .flatten()
            .map(|s| (s.outpost.as_str(), s))
            .collect();
        // An action; `pre` when its image was made sure of (and it was announced) already:
        // then it is under way, and runs even once a shutdown was asked for.
        let run_with = |a: &'_ Action, pre: Option<Prepared>| {
            let engine = Arc::clone(&engine);
            let spec = specs.get(a.outpost.as_str()).copied();
            let integration = ep.name.clone();
            let a = a.clone();
            async move {
                if let Some(why) = stop_reason(progress, &integration).filter(|_| pre.is_none()) {
                    let outcome = Outcome {
                        integration,
                        outpost: a.outpost.clone(),
                        action: a.action,
                        name: a.name.clone(),
                        ok: false,
                        messages: vec![not_started(&why, false)],
                    };
                    progress.finished(&outcome);
                    return outcome;
                }
                if pre.is_none() {
                    progress.started(&integration, &a);
                }
                let (image, mut messages) = match pre {
                    Some(p) => (Some(p.image), p.messages),
                    None => (None, Vec::new()),
                };
                let result = run_action(
                    engine.as_ref(),
                    &a,
                    spec,
                    image,
                    &integration,
                    progress,
                    &mut messages,
                )
                .await;
                if let Err(e) = result {
                    messages.push(e.to_string());
                }
                let outcome = outcome_of(&integration, &a, messages);
                progress.finished(&outcome);
                outcome
            }
        };
        let run = |a: &'_ Action| run_with(a, None);
        let (removals, others): (Vec<&Action>, Vec<&Action>) = ep
            .actions
            .iter()
            .filter(|a| a.action.is_change())
            .partition(|a| a.action == ActionKind::Remove);
        let away = moves_away(plan, ep, v);
        let (moving, removals): (Vec<&Action>, Vec<&Action>) =
            removals.into_iter().partition(|a| {
                a.container
                    .as_ref()
                    .is_some_and(|c| away.contains_key(&c.id))
            });
        // A duplicate left by an interrupted recreate (the parked previous container) that
        // does not hold the name its outpost's container needs is removed only once that
        // container runs (its start, rename, unpause, restart or recreate succeeded): if it
        // does not, the previous one is kept. (A recreate then parks the current container
        // under a name of its own, as the duplicate holds the usual one.)
        let target = |a: &Action| {
            others
                .iter()
                .find(|o| {
                    o.outpost == a.outpost
                        && matches!(
                            o.action,
                            ActionKind::Start
                                | ActionKind::Rename
                                | ActionKind::Unpause
                                | ActionKind::Restart
                                | ActionKind::Recreate
                        )
                })
                .map(|o| o.name.clone())
        };
        let (deferred, removals): (Vec<&Action>, Vec<&Action>) =
            removals.into_iter().partition(|a| {
                crate::diff::is_duplicate_removal(a) && target(a).is_some_and(|name| name != a.name)
            });
        // Each batch runs after the one before, its actions `parallel` at a time.
        let run_all = |batch: Vec<_>, parallel: usize| {
            futures_util::stream::iter(batch.into_iter().map(&run))
                .buffer_unordered(parallel)
                .collect::<Vec<Outcome>>()
        };
        // Removals first: they free the names and ports the others may need.
        let mut outcomes = run_all(removals, PARALLEL_REMOVALS).await;
        // Then the containers giving up a name another action takes are moved aside.
        let (cannot, others) =
            move_out_of_the_way(engine.as_ref(), others, progress, &ep.name).await;
        outcomes.extend(cannot);
        // An outpost on the network namespace of another's container (`docker_network:
        // container:<name>`) that this plan makes, starts or gives that name goes after it:
        // Docker joins the namespace the container of that name has when the outpost's starts.
        let starting: BTreeSet<&str> = others
            .iter()
            .filter(|a| {
                matches!(
                    a.action,
                    ActionKind::Create
                        | ActionKind::Recreate
                        | ActionKind::Start
                        | ActionKind::Restart
                        | ActionKind::Rename
                )
            })
            .map(|a| a.name.as_str())
            .collect();
        let (later, others): (Vec<&Action>, Vec<&Action>) = others.into_iter().partition(|a| {
            specs
                .get(a.outpost.as_str())
                .and_then(|s| s.network.as_deref())
                .and_then(|n| n.strip_prefix("container:"))
                .is_some_and(|t| t != a.name && starting.contains(t))
        });
        // Then the recreates that move host ports: the ports their previous containers free
        // may be another outpost's now (a port handed over in one change), whose create or
        // start must come after. (The set's outposts never share a port: the others can run
        // at once.) Among themselves, one that takes a port another frees runs after it; those
        // that swap ports (each needs the other's freed first) have their previous containers
        // stopped before any of them starts its new one.
        let (movers, others): (Vec<&Action>, Vec<&Action>) =
            others.into_iter().partition(|a| moves_ports(a));
        let (waves, swapping) = port_waves(movers);
        let mut rest: Vec<Outcome> = Vec::new();
        for wave in waves {
            rest.extend(run_all(wave, PARALLEL_PER_ENGINE).await);
        }
        if !swapping.is_empty() {
            // Their images first, while the previous containers still serve: one whose image
            // cannot be had fails here and is not stopped.
            let mut ready = Vec::new();
            for a in swapping {
                if stop_reason(progress, &ep.name).is_some() {
                    rest.push(run(a).await);
                    continue;
                }
                progress.started(&ep.name, a);
                let mut messages = Vec::new();
                let image = match specs.get(a.outpost.as_str()) {
                    Some(spec) => {
                        ensure_image(engine.as_ref(), spec, &ep.name, progress, &mut messages).await
                    }
                    None => Err(missing_spec(a)),
                };
                match image {
                    Ok(image) => ready.push((a, Prepared { image, messages })),
                    Err(e) => {
                        messages.push(e.to_string());
                        let outcome = outcome_of(&ep.name, a, messages);
                        progress.finished(&outcome);
                        rest.push(outcome);
                    }
                }
            }
            // Then every previous container is stopped before any new one starts. A shutdown
            // asked for (or the lock lost) meanwhile starts the stopped ones again and runs none.
            let mut stopped = Vec::new();
            for (a, _) in &ready {
                if stop_reason(progress, &ep.name).is_some() {
                    break;
                }
                if let Some(c) = &a.container {
                    // A failure here shows in the recreate, which stops it again.
                    let _ = engine.stop(&c.id).await;
                    stopped.push(c.id.clone());
                }
            }
            if let Some(why) = stop_reason(progress, &ep.name) {
                for id in &stopped {
                    let _ = engine.start(id).await;
                }
                for (a, _) in ready {
                    let outcome = outcome_of(&ep.name, a, vec![not_started(&why, true)]);
                    progress.finished(&outcome);
                    rest.push(outcome);
                }
            } else {
                let batch = ready.into_iter().map(|(a, pre)| run_with(a, Some(pre)));
                rest.extend(
                    futures_util::stream::iter(batch)
                        .buffer_unordered(PARALLEL_PER_ENGINE)
                        .collect::<Vec<Outcome>>()
                        .await,
                );
            }
        }
        rest.extend(run_all(others, PARALLEL_PER_ENGINE).await);
        rest.extend(run_all(later, PARALLEL_PER_ENGINE).await);
        for a in deferred {
            let kept_runs = rest
                .iter()
                .any(|o| o.outpost == a.outpost && o.action != ActionKind::Remove && o.ok);
            if kept_runs {
                outcomes.push(run(a).await);
                continue;
            }
            // Not started again: with the same host ports it would keep the kept container
            // from starting on the next apply. It stays, stopped, for that apply to retry.
            // When a shutdown (or the lost lock) kept the outpost's own action from starting,
            // that is what this one says too.
            let said = match stop_reason(progress, &ep.name) {
                Some(why) => not_started(&why, false),
                None => format!(
                    "kept `{}`: the outpost's own container is not up (its action above failed); the next apply tries again",
                    a.name
                ),
            };
            let outcome = outcome_of(&ep.name, a, vec![said]);
            progress.finished(&outcome);
            outcomes.push(outcome);
        }
        outcomes.extend(rest);
        // Last, the containers outposts left here for another engine: each once its outpost
        // is up there (else it stays, and the outpost keeps running here).
        for a in moving {
            let Some((there, outpost)) = a.container.as_ref().and_then(|c| away.get(&c.id)) else {
                continue;
            };
            if arrivals.succeeded(there, outpost).await {
                outcomes.push(run(a).await);
                continue;
            }
            let said = format!(
                "kept `{}`: outpost `{outpost}` is not up on integration `{there}` (its action there did not succeed); removed once it is",
                a.name
            );
            let outcome = outcome_of(&ep.name, a, vec![said]);
            progress.finished(&outcome);
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}

/// Why no new action may start on `integration`'s engine: a shutdown was asked for, or that
/// engine's lock was lost.
fn stop_reason(progress: &dyn Progress, integration: &str) -> Option<String> {
    if progress.cancelled() {
        Some(SHUTTING_DOWN.into())
    } else {
        crate::lock::lost_on(integration)
    }
}

/// After a pull (which takes its time), whether the action may still go on: not when the
/// lock was lost meanwhile (another writer may be at work on this outpost) or a shutdown
/// asked for. `kept`: a previous container runs as it was.
fn still_go(progress: &dyn Progress, integration: &str, kept: bool) -> Result<(), EngineError> {
    match stop_reason(progress, integration) {
        Some(why) => Err(EngineError::new(
            crate::engine::ErrorKind::Api,
            not_started(&why, kept),
        )),
        None => Ok(()),
    }
}

/// The `stop_reason` of a shutdown.
const SHUTTING_DOWN: &str = "shutting down";

/// What an action that was not started for `why` says; `kept`: it had a previous container,
/// left running as it was.
fn not_started(why: &str, kept: bool) -> String {
    let kept = if kept {
        " (the previous container runs as it was)"
    } else {
        ""
    };
    format!("not started: {why}{kept}")
}

/// The integrations of `plan` whose lock was lost once their last action had started, with
/// why: every action there ran (none failed, so none was stopped by the loss), but what ran
/// may have crossed another writer's work. A failure of the run; an integration with a
/// failed action said so at that action already.
pub fn lock_lost_after_start(plan: &Plan, report: &Report) -> Vec<(String, String)> {
    plan.integrations
        .iter()
        .filter(|e| e.error.is_none() && e.actions.iter().any(|a| a.action.is_change()))
        .filter(|e| {
            !report
                .outcomes
                .iter()
                .any(|o| o.integration == e.name && !o.ok)
        })
        .filter_map(|e| crate::lock::lost_on(&e.name).map(|why| (e.name.clone(), why)))
        .collect()
}

/// Whether `o` is an action a shutdown kept from starting: asked for, not a failure (a
/// warning it said before, a fallback image's, does not change that).
pub fn held_back_by_shutdown(o: &Outcome) -> bool {
    let said = not_started(SHUTTING_DOWN, false);
    let mut errors = o.messages.iter().filter(|m| !is_warning(m)).peekable();
    errors.peek().is_some() && errors.all(|m| m.starts_with(&said))
}

/// Whether an outcome's message is a warning (the action may still have gone well).
fn is_warning(message: &str) -> bool {
    message.starts_with("warning: ")
}

impl Outcome {
    /// Why the action failed: its first message that is not a warning.
    pub fn failure(&self) -> Option<&str> {
        self.messages
            .iter()
            .map(String::as_str)
            .find(|m| !is_warning(m))
    }
}

/// An image made sure of ahead of its action, and what that said (a fallback's warning).
struct Prepared {
    image: String,
    messages: Vec<String>,
}

/// Names handed from one outpost's container to another's (a naming template changed,
/// outposts swapping names): each container giving up a name another action takes is first
/// renamed aside, under a name of its own, so that the renames and creates find their names
/// free in any order, a swap too. Interrupted here, the next plan renames it on from where it
/// is. Returns the outcomes of the actions that cannot go ahead (their container could not be
/// moved aside, or the name they take is still held), and the others.
async fn move_out_of_the_way<'a>(
    engine: &dyn Engine,
    actions: Vec<&'a Action>,
    progress: &dyn Progress,
    integration: &str,
) -> (Vec<Outcome>, Vec<&'a Action>) {
    let taken_names: BTreeSet<&str> = actions
        .iter()
        .filter(|a| crate::diff::takes_a_name(a))
        .map(|a| a.name.as_str())
        .collect();
    let mut outcomes = Vec::new();
    // The actions whose container could not be moved, and the names those keep.
    let mut unmoved: Vec<&Action> = Vec::new();
    let mut held: BTreeSet<&str> = BTreeSet::new();
    for a in actions.iter().copied() {
        let Some(c) = a.container.as_ref().filter(|c| {
            matches!(a.action, ActionKind::Rename | ActionKind::Recreate)
                && c.name != a.name
                && taken_names.contains(c.name.as_str())
        }) else {
            continue;
        };
        if stop_reason(progress, integration).is_some() {
            break;
        }
        let mut aside = format!("{}{PARKED}-{}", c.name, c.id.get(..12).unwrap_or(&c.id));
        let mut moved = engine.rename(&c.id, &aside).await;
        if moved
            .as_ref()
            .is_err_and(|e| e.kind == crate::engine::ErrorKind::Conflict)
        {
            // That name is taken (by hand?): the whole id then.
            aside = format!("{}{PARKED}-{}", c.name, c.id);
            moved = engine.rename(&c.id, &aside).await;
        }
        if let Err(e) = moved {
            outcomes.push(failed_before_start(
                progress,
                integration,
                a,
                format!(
                    "could not move container `{}` out of the way of the outpost that takes its name (renaming it `{aside}`): {e}",
                    c.name
                ),
            ));
            held.insert(c.name.as_str());
            unmoved.push(a);
        }
    }
    let rest = actions
        .into_iter()
        .filter(|a| !unmoved.iter().any(|u| std::ptr::eq(*u, *a)));
    // What would take a name still held is not tried: it would fail the same way.
    let (waiting, go): (Vec<&Action>, Vec<&Action>) =
        rest.partition(|a| crate::diff::takes_a_name(a) && held.contains(a.name.as_str()));
    for a in waiting {
        outcomes.push(failed_before_start(
            progress,
            integration,
            a,
            format!(
                "not started: the name `{}` is still held by a container that could not be moved out of its way (see that outpost)",
                a.name
            ),
        ));
    }
    (outcomes, go)
}

/// The outcome of an action that failed before it ran, told to `progress` as started and
/// finished.
fn failed_before_start(
    progress: &dyn Progress,
    integration: &str,
    a: &Action,
    why: String,
) -> Outcome {
    progress.started(integration, a);
    let outcome = outcome_of(integration, a, vec![why]);
    progress.finished(&outcome);
    outcome
}

/// The outcome of `a` from what it said: ok unless something other than a warning.
fn outcome_of(integration: &str, a: &Action, messages: Vec<String>) -> Outcome {
    Outcome {
        integration: integration.to_string(),
        outpost: a.outpost.clone(),
        action: a.action,
        name: a.name.clone(),
        ok: messages.iter().all(|m| is_warning(m)),
        messages,
    }
}

fn missing_spec(a: &Action) -> EngineError {
    EngineError::new(
        crate::engine::ErrorKind::Api,
        format!("no desired container for outpost `{}`", a.outpost),
    )
}

/// `image`: the image made sure of already (a recreate's, see `Prepared`).
async fn run_action(
    engine: &dyn Engine,
    a: &Action,
    spec: Option<&ContainerSpec>,
    image: Option<String>,
    integration: &str,
    progress: &dyn Progress,
    messages: &mut Vec<String>,
) -> Result<(), EngineError> {
    let id = a.container.as_ref().map(|c| c.id.as_str());
    let missing_spec = || missing_spec(a);
    match (a.action, id) {
        (ActionKind::Create, _) => {
            let spec = spec.ok_or_else(missing_spec)?;
            let image = ensure_image(engine, spec, integration, progress, messages).await?;
            still_go(progress, integration, false)?;
            create_and_start(engine, spec, &image, None, &BTreeMap::new()).await?;
        }
        (ActionKind::Recreate, Some(_)) => {
            let spec = spec.ok_or_else(missing_spec)?;
            let old = a.container.as_ref().ok_or_else(missing_spec)?;
            recreate(engine, spec, old, image, integration, progress, messages).await?;
        }
        (ActionKind::Rename, Some(id)) => {
            engine.rename(id, &a.name).await?;
            match a.reasons.iter().find(|r| r.field == "state") {
                Some(r) if r.before.as_deref() == Some("paused") => engine.unpause(id).await?,
                Some(_) => engine.start(id).await?,
                None => {}
            }
        }
        (ActionKind::Start, Some(id)) => match engine.start(id).await {
            Err(e) if spec.is_some() && runtime_state_left_behind(&e, id) => {
                let spec = spec.ok_or_else(missing_spec)?;
                made_anew(engine, spec, id, e, integration, progress, messages).await?;
            }
            other => other?,
        },
        (ActionKind::Restart, Some(id)) => engine.restart(id).await?,
        (ActionKind::Unpause, Some(id)) => engine.unpause(id).await?,
        // Gone already (removed by hand meanwhile) is as good as removed.
        (ActionKind::Remove, Some(id)) => {
            engine.remove(id).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Whether a start failed because the engine's runtime still holds a task or container of
/// that id: Docker's state after an unclean restart of the engine in the middle of a start
/// (moby#36145, docker/for-linux#211). Starting it again fails the same way for good.
fn runtime_state_left_behind(e: &EngineError, id: &str) -> bool {
    let m = &e.message;
    // containerd's `task ID: already exists` and `container "ID": already exists`, runc's
    // `container with id exists: ID`, for this very container (not a network endpoint's
    // "... already exists in network", nor another object's).
    m.contains(&format!("task {id}: already exists"))
        || m.contains(&format!("container \"{id}\": already exists"))
        || m.contains(&format!("container with id exists: {id}"))
}

/// An outpost's container that cannot be started for the runtime state an engine restart
/// left behind is made anew: removed (it is not running: nothing is lost) and created again
/// from its spec, keeping the link (`outpostctl.replaces`) of an interrupted recreate to the
/// container it replaces. Said as a warning.
async fn made_anew(
    engine: &dyn Engine,
    spec: &ContainerSpec,
    id: &str,
    why: EngineError,
    integration: &str,
    progress: &dyn Progress,
    messages: &mut Vec<String>,
) -> Result<(), EngineError> {
    // Its link to the container an interrupted recreate replaces, which must not be lost.
    let replaces = match engine.inspect(id).await {
        Ok(i) => i.labels.get(LABEL_REPLACES).cloned(),
        Err(_) => return Err(why),
    };
    let left = "the engine's runtime kept its state across a restart";
    let context = |e: EngineError, what: &str| {
        EngineError::new(
            e.kind,
            format!("{} ({left}); {what}: {}", why.message, e.message),
        )
    };
    let image = ensure_image(engine, spec, integration, progress, messages)
        .await
        .map_err(|e| context(e, "to make it anew, its image is needed"))?;
    if let Some(why) = stop_reason(progress, integration) {
        return Err(context(
            EngineError::new(crate::engine::ErrorKind::Api, why),
            "it was not made anew",
        ));
    }
    engine
        .remove(id)
        .await
        .map_err(|e| context(e, "removing the container to make it anew failed too"))?;
    let extra = replaces
        .map(|r| BTreeMap::from([(LABEL_REPLACES.to_string(), r)]))
        .unwrap_or_default();
    create_and_start(engine, spec, &image, None, &extra)
        .await
        .map_err(|e| {
            context(
                e,
                "the container was removed to be made anew, and that failed (the next apply creates it)",
            )
        })?;
    messages.push(format!(
        "warning: the container could not be started ({}: {left}), so it was made anew",
        why.message
    ));
    Ok(())
}

/// The id of `image` when `spec`'s container is made from it (`image_by_id`), else None.
async fn image_id_for(
    engine: &dyn Engine,
    spec: &ContainerSpec,
    image: &str,
) -> Result<Option<String>, EngineError> {
    if !spec.image_by_id {
        return Ok(None);
    }
    match engine.image_id(image).await? {
        Some(id) => Ok(Some(id)),
        None => Err(EngineError::new(
            crate::engine::ErrorKind::NotFound,
            format!(
                "image `{image}` is no longer on the engine (removed since it was pulled?), and `image_by_id` makes the container from its id: apply again to pull it"
            ),
        )),
    }
}

/// Creates and starts; a container that was created but cannot start is removed again, so a
/// rerun starts from a clean slate. `by_id`: the image's id, looked up already (a recreate's,
/// before it stopped the previous container); else looked up here when the spec needs it.
async fn create_and_start(
    engine: &dyn Engine,
    spec: &ContainerSpec,
    image: &str,
    by_id: Option<String>,
    extra: &BTreeMap<String, String>,
) -> Result<String, EngineError> {
    let mut extra = extra.clone();
    if Some(image) == spec.fallback_image.as_deref() && image != spec.image {
        extra.insert(LABEL_FALLBACK.to_string(), "true".to_string());
    }
    let by_id = match by_id {
        Some(id) => Some(id),
        None => image_id_for(engine, spec, image).await?,
    };
    let id = engine.create(spec, image, by_id.as_deref(), &extra).await?;
    if let Err(e) = engine.start(&id).await {
        let removed = engine.remove(&id).await;
        let e = explain_port_conflict(engine, e).await;
        return Err(match removed {
            Ok(_) => e,
            Err(r) => EngineError::new(
                e.kind,
                format!("{e}; the new container could not be removed: {r}"),
            ),
        });
    }
    Ok(id)
}

/// The host port in Docker's "Bind for 0.0.0.0:9000 failed: port is already allocated" or
/// "listen tcp4 0.0.0.0:9000: bind: address already in use", or Docker 28's "failed to bind
/// host port 0.0.0.0:9000/tcp: ..." and "failed to bind host port for
/// 0.0.0.0:9000:172.17.0.2:9000/tcp: ...".
pub fn conflicting_port(message: &str) -> Option<u16> {
    if let Some(port) = bind_host_port(message) {
        return Some(port);
    }
    let addr = if let Some(i) = message.find("Bind for ") {
        message[i + 9..].split_whitespace().next()?
    } else if let Some(i) = message.find("listen tcp") {
        message[i..]
            .split_whitespace()
            .nth(2)?
            .trim_end_matches(':')
    } else if let Some(i) = message.find("listen udp") {
        message[i..]
            .split_whitespace()
            .nth(2)?
            .trim_end_matches(':')
    } else {
        return None;
    };
    addr.rsplit(':').next()?.parse().ok()
}

/// The host port in Docker 28's "failed to bind host port [for] IP:PORT[:...]/PROTO".
fn bind_host_port(message: &str) -> Option<u16> {
    const BIND_HOST_PORT: &str = "failed to bind host port ";
    let i = message.find(BIND_HOST_PORT)?;
    let rest = &message[i + BIND_HOST_PORT.len()..];
    let rest = rest.strip_prefix("for ").unwrap_or(rest);
    let addr = rest.split_whitespace().next()?.split('/').next()?;
    // The host port follows the host address (`[::]` bracketed, as Docker writes it).
    let after_host = match addr.strip_prefix('[') {
        Some(v6) => v6.split_once("]:")?.1,
        None => addr.split_once(':')?.1,
    };
    after_host.split(':').next()?.parse().ok()
}

/// Names what holds a host port the new container needs: another container, or a process.
async fn explain_port_conflict(engine: &dyn Engine, e: EngineError) -> EngineError {
    let Some(port) = conflicting_port(&e.message) else {
        return e;
    };
    let holder = match engine.list().await {
        Ok(list) => list
            .into_iter()
            .find(|c| c.host_ports.iter().any(|p| p.port == port))
            .map(|c| format!("container `{}` ({})", c.name, c.short_id())),
        Err(_) => None,
    };
    let holder = holder.unwrap_or_else(|| {
        "a process outside Docker (see `ss -lntup` on the engine's host)".into()
    });
    EngineError::new(
        crate::engine::ErrorKind::Conflict,
        format!(
            "host port {port} is already taken by {holder}; free it, or give this outpost another port with `ports:` ({})",
            e.message
        ),
    )
}

/// A recreate whose published host ports change.
fn moves_ports(a: &Action) -> bool {
    a.action == ActionKind::Recreate
        && a.reasons
            .iter()
            .any(|r| r.field == crate::diff::PORTS_FIELD)
}

/// Host ports as (port, protocol).
type HostPorts = BTreeSet<(String, String)>;

/// The host ports of a `ports` reason's value, as `PortBinding` writes them:
/// `[ip:]host->container/proto`, joined by `, `.
fn host_ports(value: Option<&str>) -> HostPorts {
    value
        .into_iter()
        .flat_map(|v| v.split(", "))
        .filter_map(|p| {
            let (host, container) = p.split_once("->")?;
            let port = host.rsplit(':').next()?.to_string();
            let proto = container.split_once('/')?.1.to_string();
            Some((port, proto))
        })
        .collect()
}

/// The order of the recreates that move host ports: waves in which none takes a port that a
/// recreate still to run holds now; and those left, which swap ports in a cycle.
fn port_waves(movers: Vec<&Action>) -> (Vec<Vec<&Action>>, Vec<&Action>) {
    let ports = |a: &Action, live: bool| -> HostPorts {
        a.reasons
            .iter()
            .filter(|r| r.field == crate::diff::PORTS_FIELD)
            .flat_map(|r| {
                host_ports(if live {
                    r.before.as_deref()
                } else {
                    r.after.as_deref()
                })
            })
            .collect()
    };
    let mut pending: Vec<(&Action, HostPorts, HostPorts)> = movers
        .into_iter()
        .map(|a| (a, ports(a, true), ports(a, false)))
        .collect();
    let mut waves = Vec::new();
    while !pending.is_empty() {
        let free = |i: usize| {
            let (_, _, wants) = &pending[i];
            pending
                .iter()
                .enumerate()
                .all(|(j, (_, held, _))| j == i || held.is_disjoint(wants))
        };
        let ready: Vec<usize> = (0..pending.len()).filter(|i| free(*i)).collect();
        if ready.is_empty() {
            break;
        }
        let mut wave = Vec::new();
        for i in ready.into_iter().rev() {
            wave.push(pending.remove(i).0);
        }
        wave.reverse();
        waves.push(wave);
    }
    (waves, pending.into_iter().map(|(a, _, _)| a).collect())
}

async fn recreate(
    engine: &dyn Engine,
    spec: &ContainerSpec,
    old: &crate::diff::ContainerRef,
    image: Option<String>,
    integration: &str,
    progress: &dyn Progress,
    messages: &mut Vec<String>,
) -> Result<(), EngineError> {
    // Pull while the old container still serves.
    let image = match image {
        Some(image) => image,
        None => {
            let image = ensure_image(engine, spec, integration, progress, messages).await?;
            // A pull may take minutes: a shutdown or a lost lock that came meanwhile leaves
            // the old container as it is.
            still_go(progress, integration, true)?;
            image
        }
    };
    // Made from the image's id: looked up while the old container still serves.
    let by_id = image_id_for(engine, spec, &image).await?;
    let (old, old_name) = (old.id.as_str(), old.name.as_str());
    // Stopping first frees the host ports the new container needs.
    if let Err(e) = engine.stop(old).await {
        // The stop may have happened although its answer was lost (a timeout, a dropped
        // connection): the old container is started again (nothing, when it runs).
        let again = match engine.start(old).await {
            Ok(()) => "the previous container runs".to_string(),
            Err(s) => format!("the previous container could not be started again: {s}"),
        };
        return Err(EngineError::new(e.kind, format!("{e}; {again}")));
    }
    // The lock lost while the old container stopped (a stop may take minutes): another
    // writer may be at work on this outpost. Nothing more is done: what is left is what a
    // kill would leave, and the next run finishes the recreate.
    let lost_half_way = |left: &str| {
        crate::lock::lost_on(integration).map(|why| {
            EngineError::new(
                crate::engine::ErrorKind::Api,
                format!("stopped half way, {why}: {left}; the next run finishes the recreate"),
            )
        })
    };
    if let Some(e) = lost_half_way(&format!("the previous container `{old_name}` is stopped")) {
        return Err(e);
    }
    let parked = format!("{}{PARKED}", spec.name);
    let renamed = old_name == spec.name;
    // Parked by an earlier recreate that was interrupted: put back, it gets the outpost's
    // name again.
    let was_parked = old_name.starts_with(&parked);
    // Where the old container is while the new one is made.
    let mut parked_as = old_name.to_string();
    if renamed {
        parked_as = parked.clone();
        let mut result = engine.rename(old, &parked).await;
        if result
            .as_ref()
            .is_err_and(|e| e.kind == crate::engine::ErrorKind::Conflict)
        {
            // The parked name is taken: by the previous container of an earlier interrupted
            // recreate, removed only once this one's new container runs. Park under a name
            // of its own; later plans find parked containers by uuid, not by name.
            let own = format!("{parked}-{}", old.get(..12).unwrap_or(old));
            result = engine.rename(old, &own).await;
            parked_as = own;
        }
        if let Err(e) = result {
            let _ = engine.start(old).await;
            return Err(e);
        }
    }
    if let Some(e) = lost_half_way(&format!(
        "the previous container is stopped, as `{parked_as}`"
    )) {
        return Err(e);
    }
    let extra = BTreeMap::from([(LABEL_REPLACES.to_string(), old.to_string())]);
    match create_and_start(engine, spec, &image, by_id, &extra).await {
        Ok(_) => engine.remove(old).await.map(|_| ()),
        Err(e) => {
            // Put the old container back as it was, under the outpost's name.
            let back = if renamed || was_parked {
                name_back(engine, old, spec).await
            } else {
                Ok(())
            };
            // Not started under another name: it would hold the outpost's host ports against
            // the container that has its name (the next plan sorts the two out).
            let outcome = match back {
                Ok(()) => match engine.start(old).await {
                    Ok(()) => "the previous container was started again".to_string(),
                    Err(s) => format!(
                        "the previous container was kept but could not be started again: {s}"
                    ),
                },
                Err(r) => format!(
                    "the previous container is kept, stopped, as `{parked_as}`: it could not get its name `{}` back: {r}",
                    spec.name
                ),
            };
            Err(EngineError::new(e.kind, format!("{e}; {outcome}")))
        }
    }
}

/// Renames the previous container `old` back to the name of `spec`. When the name is taken
/// by the new container meant to replace it (`outpostctl.replaces` names `old`, and it is
/// this project's: its create answered too late, or its removal after a failed start
/// failed), that one is removed first.
async fn name_back(
    engine: &dyn Engine,
    old: &str,
    spec: &ContainerSpec,
) -> Result<(), EngineError> {
    let name = spec.name.as_str();
    let project = spec.labels.get(crate::desired::LABEL_PROJECT);
    let first = engine.rename(old, name).await;
    let Err(e) = first else { return Ok(()) };
    if e.kind != crate::engine::ErrorKind::Conflict {
        return Err(e);
    }
    // By id: whatever holds the name by the time of the removal is not removed unchecked.
    let replacement = match engine.inspect(name).await {
        Ok(holder)
            if !holder.id.is_empty()
                && holder.labels.get(LABEL_REPLACES).map(String::as_str) == Some(old)
                && project.is_some()
                && holder.labels.get(crate::desired::LABEL_PROJECT) == project =>
        {
            holder.id
        }
        _ => return Err(e),
    };
    engine.remove(&replacement).await?;
    engine.rename(old, name).await
}

/// Makes sure the engine has the image, by the pull policy; falls back to authentik's default
/// image for the type and version when a custom image cannot be pulled.
async fn ensure_image(
    engine: &dyn Engine,
    spec: &ContainerSpec,
    integration: &str,
    progress: &dyn Progress,
    messages: &mut Vec<String>,
) -> Result<String, EngineError> {
    let report = |status: &str| progress.pulling(integration, &spec.outpost, &spec.image, status);
    let present = engine.image_labels(&spec.image).await?.is_some();
    let pull = match spec.pull {
        PullPolicy::Always => true,
        PullPolicy::Missing => !present,
        PullPolicy::Never if present => false,
        PullPolicy::Never => {
            return Err(EngineError::new(
                crate::engine::ErrorKind::NotFound,
                format!(
                    "image `{}` is not on the engine and `pull: never` forbids pulling it",
                    spec.image
                ),
            ));
        }
    };
    if !pull {
        return Ok(spec.image.clone());
    }
    match engine.pull(&spec.image, &report).await {
        Ok(()) => Ok(spec.image.clone()),
        Err(e) if present => {
            messages.push(format!(
                "warning: could not pull `{}` ({e}); using the copy the engine has",
                spec.image
            ));
            Ok(spec.image.clone())
        }
        Err(e) => {
            let Some(fallback) = &spec.fallback_image else {
                return Err(e);
            };
            if engine.image_labels(fallback).await?.is_none() {
                let fb_report =
                    |status: &str| progress.pulling(integration, &spec.outpost, fallback, status);
                engine.pull(fallback, &fb_report).await.map_err(|fe| {
                    EngineError::new(
                        fe.kind,
                        format!(
                            "{e}; the default image `{fallback}` could not be pulled either: {fe}"
                        ),
                    )
                })?;
            }
            messages.push(format!(
                "warning: could not pull `{}` ({e}); using authentik's default image `{fallback}`",
                spec.image
            ));
            Ok(fallback.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::conflicting_port;

    #[test]
    fn port_conflicts_name_the_port() {
        let by_container = "driver failed programming external connectivity on endpoint x (abc): Bind for 127.0.0.1:19000 failed: port is already allocated";
        assert_eq!(conflicting_port(by_container), Some(19000));
        let by_process =
            "Error starting userland proxy: listen tcp4 0.0.0.0:9443: bind: address already in use";
        assert_eq!(conflicting_port(by_process), Some(9443));
        assert_eq!(conflicting_port("something else"), None);
        // Docker 28 words it otherwise, with and without the container's side.
        let v28 = "failed to set up container networking: failed to bind host port 0.0.0.0:53/tcp: address already in use";
        assert_eq!(conflicting_port(v28), Some(53));
        let v28_for = "driver failed programming external connectivity on endpoint app (f8a3): failed to bind host port for 0.0.0.0:8000:172.31.0.2:8000/tcp: address already in use";
        assert_eq!(conflicting_port(v28_for), Some(8000));
        let v6 = "failed to bind host port [::]:8443/tcp: address already in use";
        assert_eq!(conflicting_port(v6), Some(8443));
    }
}

#[cfg(test)]
mod swap_tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::{Progress, apply};
    use crate::diff::{Action, ContainerRef};
    use crate::engine::fake::{Fake, validated};
    use crate::plan::{EnginePlan, Plan};

    /// Asks to shut down once the engine was told to stop something.
    struct StopsThenCancels(Arc<Fake>);
    impl Progress for StopsThenCancels {
        fn cancelled(&self) -> bool {
            self.0.recorded().iter().any(|c| c.starts_with("stop "))
        }
    }

    fn swap(outpost: &str, id: &str, before: &str, after: &str) -> Action {
        let mut a = super::port_order_tests::mover(outpost, before, after);
        a.name = format!("ak-outpost-{}", a.name);
        a.container = Some(ContainerRef {
            id: id.into(),
            name: a.name.clone(),
        });
        a
    }

    /// A plan of `actions` on integration `local`.
    fn on_local(actions: Vec<Action>) -> Plan {
        Plan {
            format_version: crate::plan::FORMAT_VERSION,
            project: "p".into(),
            manifest_fingerprint: String::new(),
            inspected: false,
            adopted: false,
            integrations: vec![EnginePlan {
                name: "local".into(),
                url: "local".into(),
                actions,
                ..Default::default()
            }],
        }
    }

    /// An outpost's container left half-started by an engine restart (Docker's runtime kept
    /// its task: every start fails with "already exists") is made anew from its spec, still
    /// linked to the container its interrupted recreate replaces; said as a warning.
    #[tokio::test]
    async fn a_container_whose_task_outlived_an_engine_restart_is_made_anew() {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\n\
             outposts:\n  A: { type: ldap, integration: local, token: { file: token } }\n",
        );
        let fake = Arc::new(Fake {
            images: Some(vec!["ghcr.io/goauthentik/ldap:2026.8.0".into()]),
            calls: Some(Mutex::new(Vec::new())),
            stuck: Some("c1".into()),
            writable: true,
            inspected_labels: BTreeMap::from([(
                "c1".to_string(),
                BTreeMap::from([(
                    crate::desired::LABEL_REPLACES.to_string(),
                    "old1".to_string(),
                )]),
            )]),
            ..Fake::default()
        });
        let engines: crate::plan::Engines = BTreeMap::from([(
            "local".to_string(),
            Ok(Arc::clone(&fake) as Arc<dyn crate::engine::Engine>),
        )]);
        let start = Action {
            outpost: "A".into(),
            action: crate::diff::ActionKind::Start,
            name: "ak-outpost-a".into(),
            container: Some(ContainerRef {
                id: "c1".into(),
                name: "ak-outpost-a".into(),
            }),
            reasons: Vec::new(),
            adopt: false,
            error: None,
        };
        let report = apply(&on_local(vec![start]), &v, &engines, &super::Quiet).await;
        assert_eq!(
            fake.recorded(),
            [
                "remove c1",
                "create ak-outpost-a replaces=old1",
                "start new-1"
            ]
        );
        let o = &report.outcomes[0];
        assert!(o.ok, "{o:?}");
        assert!(
            o.messages[0].starts_with("warning: the container could not be started (")
                && o.messages[0].contains("already exists"),
            "{o:?}"
        );
    }

    /// Loses the lock of integration `local` once an action there is done.
    struct LosesTheLockAtTheEnd;
    impl Progress for LosesTheLockAtTheEnd {
        fn finished(&self, _outcome: &super::Outcome) {
            crate::lock::lose_for_test("lost-mid-apply", "its lock container was removed");
        }
    }

    /// A lock lost once the last action had started (here: once it was done, before the run
    /// ends): the run is told the integration and why, to fail with; with the lock kept,
    /// nothing is said.
    #[tokio::test]
    async fn a_lock_lost_after_the_last_action_started_is_reported() {
        let v = ldap_a();
        let fake = writable(true);
        let engines: crate::plan::Engines = BTreeMap::from([(
            "local".to_string(),
            Ok(Arc::clone(&fake) as Arc<dyn crate::engine::Engine>),
        )]);
        let create = Action {
            outpost: "A".into(),
            action: crate::diff::ActionKind::Create,
            name: "ak-outpost-a".into(),
            container: None,
            reasons: Vec::new(),
            adopt: false,
            error: None,
        };
        let plan = on_local(vec![create]);
        crate::lock::hold_for_test("lost-mid-apply", &["local"]);
        let report = apply(&plan, &v, &engines, &LosesTheLockAtTheEnd).await;
        let lost = super::lock_lost_after_start(&plan, &report);
        crate::lock::forget_for_test("lost-mid-apply");
        assert!(
            report.outcomes.iter().all(|o| o.ok),
            "{:?}",
            report.outcomes
        );
        assert_eq!(
            fake.recorded(),
            ["create ak-outpost-a replaces=-", "start new-1"]
        );
        assert_eq!(
            lost,
            [(
                "local".to_string(),
                "its lock container was removed".to_string()
            )]
        );

        // The same run with the lock kept: nothing to say.
        crate::lock::hold_for_test("kept-mid-apply", &["local"]);
        let fake = writable(true);
        let engines: crate::plan::Engines = BTreeMap::from([(
            "local".to_string(),
            Ok(Arc::clone(&fake) as Arc<dyn crate::engine::Engine>),
        )]);
        let report = apply(&plan, &v, &engines, &super::Quiet).await;
        let lost = super::lock_lost_after_start(&plan, &report);
        crate::lock::forget_for_test("kept-mid-apply");
        assert!(
            report.outcomes.iter().all(|o| o.ok),
            "{:?}",
            report.outcomes
        );
        assert!(lost.is_empty(), "{lost:?}");
    }

    /// The lock lost while a recreate stopped the old container: nothing more is done (no
    /// rename, no create: another writer may be at work), and the error says what is left.
    #[tokio::test]
    async fn a_recreate_stops_half_way_when_the_lock_is_lost() {
        let v = ldap_a();
        let spec = &v.desired["local"][0];
        let fake = writable(true);
        crate::lock::hold_for_test("lost-in-recreate", &["lost-in-recreate"]);
        crate::lock::lose_for_test("lost-in-recreate", "its lock container was removed");
        let old = crate::diff::ContainerRef {
            id: "c1".into(),
            name: spec.name.clone(),
        };
        let mut messages = Vec::new();
        let r = super::recreate(
            fake.as_ref(),
            spec,
            &old,
            Some(spec.image.clone()),
            "lost-in-recreate",
            &super::Quiet,
            &mut messages,
        )
        .await;
        crate::lock::forget_for_test("lost-in-recreate");
        let e = r.expect_err("the recreate stops");
        assert_eq!(fake.recorded(), ["stop c1"]);
        assert!(
            e.to_string()
                .starts_with("stopped half way, its lock container was removed: the previous"),
            "{e}"
        );
        assert!(e.to_string().contains("is stopped"), "{e}");
    }

    fn ldap_a() -> crate::validate::Validated {
        validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\n\
             outposts:\n  A: { type: ldap, integration: local, token: { file: token } }\n",
        )
    }

    /// A fake engine for `ldap_a` that records the calls and accepts writes; `image`: the
    /// outpost's image is there (else it is pulled).
    fn writable_fake(image: bool) -> Fake {
        Fake {
            images: Some(if image {
                vec!["ghcr.io/goauthentik/ldap:2026.8.0".into()]
            } else {
                Vec::new()
            }),
            calls: Some(Mutex::new(Vec::new())),
            writable: true,
            ..Fake::default()
        }
    }

    fn writable(image: bool) -> Arc<Fake> {
        Arc::new(writable_fake(image))
    }

    /// `fake` (with the outpost's image) whose `calls` fail once each, in order, with their
    /// kind of error.
    fn failing_on(fake: Fake, calls: &[(&str, crate::engine::ErrorKind)]) -> Arc<Fake> {
        for (call, kind) in calls {
            fake.fail_once(call, *kind);
        }
        Arc::new(fake)
    }

    fn failing(calls: &[(&str, crate::engine::ErrorKind)]) -> Arc<Fake> {
        failing_on(writable_fake(true), calls)
    }

    /// A recreate of A's container `c1`, named `name`.
    /// Outpost `outpost`'s container `id`, named `from`, renamed `to`.
    fn rename_of(outpost: &str, id: &str, from: &str, to: &str) -> Action {
        Action {
            outpost: outpost.into(),
            action: crate::diff::ActionKind::Rename,
            name: to.into(),
            container: Some(ContainerRef {
                id: id.into(),
                name: from.into(),
            }),
            reasons: Vec::new(),
            adopt: false,
            error: None,
        }
    }

    /// Two outposts swapping names, one of whose containers cannot be moved aside (both
    /// names it would take are taken): that one fails saying so, the other is not tried
    /// (its name is still held), and nothing is left to run.
    #[tokio::test]
    async fn a_container_that_cannot_move_aside_holds_back_what_takes_its_name() {
        let fake = Fake {
            calls: Some(Mutex::new(Vec::new())),
            writable: true,
            ..Fake::default()
        };
        for _ in 0..2 {
            fake.fail_once(
                "rename b y-outpostctl-old-b",
                crate::engine::ErrorKind::Conflict,
            );
        }
        let (a, b) = (rename_of("A", "a", "x", "y"), rename_of("B", "b", "y", "x"));
        let (failed, go) =
            super::move_out_of_the_way(&fake, vec![&a, &b], &super::Quiet, "local").await;
        assert!(go.is_empty(), "{go:?}");
        let said = |outpost: &str| {
            failed
                .iter()
                .find(|o| o.outpost == outpost && !o.ok)
                .map(|o| o.messages.join("; "))
                .unwrap_or_default()
        };
        assert!(
            said("B").starts_with("could not move container `y` out of the way"),
            "{failed:?}"
        );
        assert!(
            said("A").contains("the name `y` is still held"),
            "{failed:?}"
        );
        assert_eq!(
            fake.recorded(),
            [
                "rename a x-outpostctl-old-a",
                "rename b y-outpostctl-old-b",
                "rename b y-outpostctl-old-b"
            ]
        );
    }

    fn recreate_of(name: &str) -> Action {
        Action {
            outpost: "A".into(),
            action: crate::diff::ActionKind::Recreate,
            name: "ak-outpost-a".into(),
            container: Some(ContainerRef {
                id: "c1".into(),
                name: name.into(),
            }),
            reasons: Vec::new(),
            adopt: false,
            error: None,
        }
    }

    async fn apply_on(fake: &Arc<Fake>, a: Action, progress: &dyn Progress) -> super::Outcome {
        let engines: crate::plan::Engines = BTreeMap::from([(
            "local".to_string(),
            Ok(Arc::clone(fake) as Arc<dyn crate::engine::Engine>),
        )]);
        let report = apply(&on_local(vec![a]), &ldap_a(), &engines, progress).await;
        report.outcomes.into_iter().next().expect("an outcome")
    }

    /// Asks to shut down once an image was pulled.
    struct CancelsDuringThePull(Arc<Fake>);
    impl Progress for CancelsDuringThePull {
        fn cancelled(&self) -> bool {
            self.0.recorded().iter().any(|c| c.starts_with("pull "))
        }
    }

    /// A shutdown (or a lost lock) that comes while a recreate pulls its image: the old
    /// container is not stopped; nothing is changed.
    #[tokio::test]
    async fn a_shutdown_during_a_recreates_pull_leaves_the_old_container_running() {
        let fake = writable(false);
        let progress = CancelsDuringThePull(Arc::clone(&fake));
        let o = apply_on(&fake, recreate_of("ak-outpost-a"), &progress).await;
        assert_eq!(fake.recorded(), ["pull ghcr.io/goauthentik/ldap:2026.8.0"]);
        assert!(!o.ok, "{o:?}");
        assert_eq!(
            o.messages,
            ["not started: shutting down (the previous container runs as it was)"]
        );
    }

    /// A recreate from the image's id (`image_by_id`) looks the id up while the previous
    /// container still serves: when that fails, the previous container is not touched.
    #[tokio::test]
    async fn a_recreate_by_id_looks_the_id_up_before_it_stops_anything() {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\n  image_by_id: true\nintegrations:\n  local: { local: true }\n\
             outposts:\n  A: { type: ldap, integration: local, token: { file: token } }\n",
        );
        let run = |fake: &Arc<Fake>| {
            let engines: crate::plan::Engines = BTreeMap::from([(
                "local".to_string(),
                Ok(Arc::clone(fake) as Arc<dyn crate::engine::Engine>),
            )]);
            let v = v.clone();
            async move {
                let report = apply(
                    &on_local(vec![recreate_of("ak-outpost-a")]),
                    &v,
                    &engines,
                    &super::Quiet,
                )
                .await;
                report.outcomes.into_iter().next().expect("an outcome")
            }
        };
        let image = "ghcr.io/goauthentik/ldap:2026.8.0";
        let fake = failing(&[(&format!("image_id {image}"), crate::engine::ErrorKind::Api)]);
        let o = run(&fake).await;
        assert!(!o.ok, "{o:?}");
        assert_eq!(
            fake.recorded(),
            [format!("image_id {image}")],
            "nothing stopped"
        );
        // When it answers: looked up first, then the usual stop, park, create.
        let fake = writable(true);
        let o = run(&fake).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(
            fake.recorded()[..2],
            [format!("image_id {image}"), "stop c1".to_string()]
        );
    }

    /// The same during a create's pull: nothing is created (another writer that took the
    /// lost lock may be removing that outpost).
    #[tokio::test]
    async fn a_shutdown_during_a_creates_pull_creates_nothing() {
        let fake = writable(false);
        let progress = CancelsDuringThePull(Arc::clone(&fake));
        let create = Action {
            action: crate::diff::ActionKind::Create,
            container: None,
            ..recreate_of("ak-outpost-a")
        };
        let o = apply_on(&fake, create, &progress).await;
        assert_eq!(fake.recorded(), ["pull ghcr.io/goauthentik/ldap:2026.8.0"]);
        assert!(!o.ok, "{o:?}");
        assert_eq!(o.messages, ["not started: shutting down"]);
    }

    /// Asks to shut down from the start.
    struct ShuttingDown;
    impl Progress for ShuttingDown {
        fn cancelled(&self) -> bool {
            true
        }
    }

    /// A duplicate kept because a shutdown kept its outpost's own action from starting says
    /// so as that action does (a shutdown's, not a failure), not "its action above failed".
    #[tokio::test]
    async fn a_duplicate_kept_by_a_shutdown_says_it_was_not_started() {
        let fake = writable(true);
        let engines: crate::plan::Engines = BTreeMap::from([(
            "local".to_string(),
            Ok(Arc::clone(&fake) as Arc<dyn crate::engine::Engine>),
        )]);
        let start = Action {
            action: crate::diff::ActionKind::Start,
            ..recreate_of("ak-outpost-a")
        };
        let duplicate = Action {
            action: crate::diff::ActionKind::Remove,
            name: "ak-outpost-a-outpostctl-old".into(),
            container: Some(ContainerRef {
                id: "c2".into(),
                name: "ak-outpost-a-outpostctl-old".into(),
            }),
            reasons: vec![crate::diff::Change::new("duplicate", None, None)],
            ..recreate_of("ak-outpost-a")
        };
        assert!(crate::diff::is_duplicate_removal(&duplicate));
        let report = apply(
            &on_local(vec![start, duplicate]),
            &ldap_a(),
            &engines,
            &ShuttingDown,
        )
        .await;
        assert!(fake.recorded().is_empty(), "{:?}", fake.recorded());
        assert_eq!(report.outcomes.len(), 2, "{report:?}");
        for o in &report.outcomes {
            assert!(!o.ok && super::held_back_by_shutdown(o), "{o:?}");
        }
    }

    /// A warning said before (a fallback image's) is not why an action failed, and does not
    /// make an action a shutdown held back count as a failure.
    #[test]
    fn a_warning_is_not_the_failure() {
        let o = |messages: &[&str]| super::Outcome {
            integration: "local".into(),
            outpost: "A".into(),
            action: crate::diff::ActionKind::Create,
            name: "ak-outpost-a".into(),
            ok: false,
            messages: messages.iter().map(|m| m.to_string()).collect(),
        };
        let warned = "warning: could not pull `example/ldap:1`; using the copy the engine has";
        assert_eq!(
            o(&[warned, "port is already allocated"]).failure(),
            Some("port is already allocated")
        );
        assert_eq!(o(&[warned]).failure(), None);
        assert!(super::held_back_by_shutdown(&o(&[
            warned,
            "not started: shutting down"
        ])));
        assert!(!super::held_back_by_shutdown(&o(&[warned])));
        assert!(!super::held_back_by_shutdown(&o(&[
            "not started: shutting down",
            "port is already allocated"
        ])));
        assert!(!super::held_back_by_shutdown(&o(&[
            "not started: the engine lock was lost"
        ])));
    }

    /// A stop whose answer was lost (it may have stopped the container): the old container
    /// is started again, and the recreate fails saying so.
    #[tokio::test]
    async fn a_failed_stop_starts_the_old_container_again() {
        let fake = failing(&[("stop c1", crate::engine::ErrorKind::Timeout)]);
        let o = apply_on(&fake, recreate_of("ak-outpost-a"), &super::Quiet).await;
        assert_eq!(fake.recorded(), ["stop c1", "start c1"]);
        assert!(!o.ok, "{o:?}");
        assert!(
            o.messages[0].ends_with("; the previous container runs"),
            "{o:?}"
        );
    }

    /// A recreate of `ak-outpost-a` (project `p`) whose create failed although the engine
    /// made a container of that name, of project `holder`, saying it replaces `c1`: what the
    /// engine was asked, and the outcome.
    async fn recreate_whose_create_answer_was_lost(holder: &str) -> (Arc<Fake>, super::Outcome) {
        use crate::engine::ErrorKind::{Conflict, Timeout};
        let mut fake = writable_fake(true);
        fake.inspected_labels.insert(
            "ak-outpost-a".into(),
            BTreeMap::from([
                (crate::desired::LABEL_REPLACES.to_string(), "c1".to_string()),
                (
                    crate::desired::LABEL_PROJECT.to_string(),
                    holder.to_string(),
                ),
            ]),
        );
        let fake = failing_on(
            fake,
            &[
                ("create ak-outpost-a replaces=c1", Timeout),
                ("rename c1 ak-outpost-a", Conflict),
            ],
        );
        let o = apply_on(&fake, recreate_of("ak-outpost-a"), &super::Quiet).await;
        (fake, o)
    }

    /// A create that failed although the engine made the container (its answer was lost):
    /// the new container holds the outpost's name, so the old one's rename back fails; the
    /// new one, which names the old one as the one it replaces, is removed, and the old one
    /// gets its name back and runs (not started under its parked name, where it would hold
    /// the outpost's host ports against the container with its name, for good).
    #[tokio::test]
    async fn a_create_whose_answer_was_lost_is_undone_and_the_old_container_named_back() {
        let (fake, o) = recreate_whose_create_answer_was_lost("p").await;
        assert_eq!(
            fake.recorded(),
            [
                "stop c1",
                "rename c1 ak-outpost-a-outpostctl-old",
                "create ak-outpost-a replaces=c1",
                "rename c1 ak-outpost-a",
                "remove id-of-ak-outpost-a",
                "rename c1 ak-outpost-a",
                "start c1"
            ]
        );
        assert!(!o.ok, "{o:?}");
        assert!(
            o.messages[0].ends_with("; the previous container was started again"),
            "{o:?}"
        );
    }

    /// A container of another project that holds the name, even one saying it replaces the
    /// old container, is not removed to make room.
    #[tokio::test]
    async fn a_name_held_by_another_projects_container_is_not_freed() {
        let (fake, o) = recreate_whose_create_answer_was_lost("other").await;
        assert!(
            !fake.recorded().iter().any(|c| c.starts_with("remove ")),
            "{:?}",
            fake.recorded()
        );
        assert!(!o.ok, "{o:?}");
    }

    /// The name is held by something else: the old container is not started under its
    /// parked name, and the message says where it is.
    #[tokio::test]
    async fn an_old_container_that_cannot_get_its_name_back_stays_stopped() {
        use crate::engine::ErrorKind::{Api, Conflict};
        let fake = failing(&[
            ("create ak-outpost-a replaces=c1", Api),
            ("rename c1 ak-outpost-a", Conflict),
        ]);
        let o = apply_on(&fake, recreate_of("ak-outpost-a"), &super::Quiet).await;
        assert_eq!(
            fake.recorded(),
            [
                "stop c1",
                "rename c1 ak-outpost-a-outpostctl-old",
                "create ak-outpost-a replaces=c1",
                "rename c1 ak-outpost-a",
            ]
        );
        assert!(
            o.messages[0].contains(
                "the previous container is kept, stopped, as `ak-outpost-a-outpostctl-old`"
            ),
            "{o:?}"
        );
    }

    /// The parked name is taken (by an earlier interrupted recreate's container): the old
    /// container is parked under a name of its own, and the message names that one.
    #[tokio::test]
    async fn the_message_names_where_the_old_container_was_parked() {
        use crate::engine::ErrorKind::{Api, Conflict};
        let fake = failing(&[
            ("rename c1 ak-outpost-a-outpostctl-old", Conflict),
            ("create ak-outpost-a replaces=c1", Api),
            ("rename c1 ak-outpost-a", Conflict),
        ]);
        let o = apply_on(&fake, recreate_of("ak-outpost-a"), &super::Quiet).await;
        assert!(
            o.messages[0].contains(
                "the previous container is kept, stopped, as `ak-outpost-a-outpostctl-old-c1`"
            ),
            "{o:?}"
        );
    }

    /// The old container of an interrupted recreate, parked already: when the new one fails,
    /// it is put back under the outpost's name (not started as `*-outpostctl-old`).
    #[tokio::test]
    async fn a_parked_old_container_is_put_back_under_the_outposts_name() {
        let fake = failing(&[(
            "create ak-outpost-a replaces=c1",
            crate::engine::ErrorKind::Api,
        )]);
        let parked = recreate_of("ak-outpost-a-outpostctl-old");
        let o = apply_on(&fake, parked, &super::Quiet).await;
        assert_eq!(
            fake.recorded(),
            [
                "stop c1",
                "create ak-outpost-a replaces=c1",
                "rename c1 ak-outpost-a",
                "start c1"
            ]
        );
        assert!(
            o.messages[0].ends_with("; the previous container was started again"),
            "{o:?}"
        );
    }

    /// Only the runtime's own leftovers are made anew, not any start error that says
    /// "already exists".
    #[test]
    fn runtime_leftovers_are_told_from_other_conflicts() {
        let e =
            |m: &str| crate::engine::EngineError::new(crate::engine::ErrorKind::Api, m.to_string());
        for m in [
            "start container: the engine at unix:///var/run/docker.sock answered 500: task 3e95: already exists",
            "start container: ... answered 500: container \"3e95\": already exists",
            "start container: ... OCI runtime create failed: container with id exists: 3e95",
        ] {
            assert!(super::runtime_state_left_behind(&e(m), "3e95"), "{m}");
        }
        for m in [
            "start container: ... answered 403: endpoint with name ak-outpost-a already exists in network traefik",
            "start container: ... answered 409: Conflict. The container name \"/x\" is already in use",
            // Docker 23+ words every runtime failure so: another object's leftover.
            "start container: ... failed to create task for container: task 77aa: already exists",
        ] {
            assert!(!super::runtime_state_left_behind(&e(m), "3e95"), "{m}");
        }
    }

    /// Two outposts swapping host ports: a shutdown asked for after the first previous
    /// container was stopped starts it again, and neither recreate goes on.
    #[tokio::test]
    async fn a_shutdown_amid_a_port_swap_starts_the_stopped_containers_again() {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\n  docker_map_ports: false\nintegrations:\n  local: { local: true }\n\
             outposts:\n  A: { type: ldap, integration: local, token: { file: token } }\n  \
             B: { type: ldap, integration: local, token: { file: token } }\n",
        );
        let fake = Arc::new(Fake {
            images: Some(vec!["ghcr.io/goauthentik/ldap:2026.8.0".into()]),
            calls: Some(Mutex::new(Vec::new())),
            ..Fake::default()
        });
        let engines: crate::plan::Engines = BTreeMap::from([(
            "local".to_string(),
            Ok(Arc::clone(&fake) as Arc<dyn crate::engine::Engine>),
        )]);
        let plan = on_local(vec![
            swap("A", "c1", "7000->3389/tcp", "7001->3389/tcp"),
            swap("B", "c2", "7001->3389/tcp", "7000->3389/tcp"),
        ]);
        let report = apply(&plan, &v, &engines, &StopsThenCancels(Arc::clone(&fake))).await;
        assert_eq!(fake.recorded(), ["stop c1", "start c1"]);
        assert_eq!(report.outcomes.len(), 2);
        for o in &report.outcomes {
            assert!(!o.ok, "{o:?}");
            assert_eq!(
                o.messages,
                ["not started: shutting down (the previous container runs as it was)"]
            );
        }
    }
}

#[cfg(test)]
mod port_order_tests {
    use super::{host_ports, port_waves};
    use crate::diff::{Action, ActionKind, Change, PORTS_FIELD};

    pub(super) fn mover(outpost: &str, before: &str, after: &str) -> Action {
        Action {
            outpost: outpost.into(),
            action: ActionKind::Recreate,
            name: outpost.to_lowercase(),
            container: None,
            reasons: vec![Change::new(
                PORTS_FIELD,
                Some(before.into()),
                Some(after.into()),
            )],
            adopt: false,
            error: None,
        }
    }

    fn names(v: &[&Action]) -> Vec<String> {
        v.iter().map(|a| a.outpost.clone()).collect()
    }

    #[test]
    fn host_ports_are_read_as_written() {
        let ports = host_ports(Some(
            "127.0.0.1:9000->9000/tcp, [::1]:9443->9443/tcp, 1812->1812/udp",
        ));
        let want: Vec<(String, String)> = [("1812", "udp"), ("9000", "tcp"), ("9443", "tcp")]
            .iter()
            .map(|(p, q)| (p.to_string(), q.to_string()))
            .collect();
        assert_eq!(ports.into_iter().collect::<Vec<_>>(), want);
        assert!(host_ports(Some("")).is_empty() && host_ports(None).is_empty());
    }

    /// A shift (A takes B's port, B takes C's, C a free one) runs C, then B, then A; a swap
    /// (D and E trade ports) is left for the stop-all-first path; one that conflicts with
    /// nobody runs in the first wave.
    #[test]
    fn recreates_that_move_ports_run_after_those_that_free_them() {
        let a = mover("A", "127.0.0.1:9000->3389/tcp", "127.0.0.1:9001->3389/tcp");
        let b = mover("B", "127.0.0.1:9001->3389/tcp", "127.0.0.1:9002->3389/tcp");
        let c = mover("C", "127.0.0.1:9002->3389/tcp", "127.0.0.1:9003->3389/tcp");
        let d = mover("D", "127.0.0.1:7000->3389/tcp", "127.0.0.1:7001->3389/tcp");
        let e = mover("E", "127.0.0.1:7001->3389/tcp", "127.0.0.1:7000->3389/tcp");
        let lone = mover("F", "127.0.0.1:8000->3389/tcp", "127.0.0.1:8001->3389/tcp");
        let (waves, swapping) = port_waves(vec![&a, &b, &c, &d, &e, &lone]);
        let waves: Vec<Vec<String>> = waves.iter().map(|w| names(w)).collect();
        assert_eq!(waves, [vec!["C", "F"], vec!["B"], vec!["A"]]);
        assert_eq!(names(&swapping), ["D", "E"]);
    }
}

#[cfg(test)]
mod move_tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::{Outcome, Progress, apply};
    use crate::diff::{ActionKind, DiffOptions};
    use crate::engine::fake::{Fake, outposts_container, validated};
    use crate::engine::{Engine, ErrorKind};
    use crate::plan::Engines;

    /// Notes the outcomes in the order they come.
    #[derive(Default)]
    struct Order(Mutex<Vec<(String, ActionKind, bool)>>);
    impl Progress for Order {
        fn finished(&self, o: &Outcome) {
            if let Ok(mut v) = self.0.lock() {
                v.push((o.integration.clone(), o.action, o.ok));
            }
        }
    }

    /// An outpost moved from integration `a` to `b`, on another engine: the container it left
    /// on `a`'s engine is removed once it runs on `b`'s, not at the same time; when its
    /// create there fails, that container is kept (the outpost keeps running somewhere) and
    /// the apply says so.
    #[tokio::test]
    async fn the_container_an_outpost_left_goes_once_it_runs_where_it_went() {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  a: { local: true }\n  \
             b: { url: \"http://127.0.0.1:2375\" }\noutposts:\n  X:\n    type: ldap\n    \
             integration: b\n    token: { file: token }\n",
        );
        let spec = v.desired["b"][0].clone();
        let left = outposts_container(&spec, "a", "0ld");
        for create_fails in [false, true] {
            let fake = |id: &str, listed: Vec<_>| Fake {
                daemon_id: Some(id.into()),
                listed,
                images: Some(vec![spec.image.clone()]),
                networks: Some(vec!["bridge".into()]),
                calls: Some(Mutex::new(Vec::new())),
                writable: true,
                ..Fake::default()
            };
            let a = Arc::new(fake("AAAA", vec![left.clone()]));
            let b = Arc::new(fake("BBBB", Vec::new()));
            if create_fails {
                b.fail_once(&format!("create {} replaces=-", spec.name), ErrorKind::Api);
            }
            let engines: Engines = BTreeMap::from([
                ("a".to_string(), Ok(Arc::clone(&a) as Arc<dyn Engine>)),
                ("b".to_string(), Ok(Arc::clone(&b) as Arc<dyn Engine>)),
            ]);
            let plan = crate::plan::build(&v, &engines, DiffOptions::default()).await;
            let order = Order::default();
            let report = apply(&plan, &v, &engines, &order).await;
            let seen = order.0.lock().map(|v| v.clone()).unwrap_or_default();
            let removed = a.recorded().contains(&"remove 0ld".to_string());
            if create_fails {
                assert!(
                    !removed,
                    "removed though the outpost is not up on b: {seen:?}"
                );
                let kept = report
                    .outcomes
                    .iter()
                    .find(|o| o.integration == "a" && o.action == ActionKind::Remove);
                assert!(
                    kept.is_some_and(|o| !o.ok
                        && o.messages[0].starts_with(&format!(
                            "kept `{}`: outpost `X` is not up on integration `b`",
                            spec.name
                        ))),
                    "{:?}",
                    report.outcomes
                );
            } else {
                assert!(removed, "{seen:?}");
                assert_eq!(
                    seen,
                    [
                        ("b".to_string(), ActionKind::Create, true),
                        ("a".to_string(), ActionKind::Remove, true)
                    ],
                    "the removal did not wait for the create"
                );
            }
        }
    }
}
