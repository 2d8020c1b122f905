//! The plan: what apply would do, per engine, as plain serializable data (rendered
//! elsewhere). A saved plan carries fingerprints of the manifests and of the live objects it
//! was computed from, so apply can refuse it when anything moved; it holds no secret values.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::desired::{ContainerSpec, LABEL_CONFIG_HASH, LABEL_OUTPOST, LABEL_PROJECT, LABEL_UUID};
use crate::diff::{self, Action, ActionKind, Change, DiffOptions};
use crate::engine::{Engine, EngineError, Inspected, Observed, State};
use crate::manifest::model::PullPolicy;
use crate::validate::Validated;

pub const FORMAT_VERSION: u32 = 1;

/// Connected engines by integration name; an engine that could not be reached keeps its error.
pub type Engines = BTreeMap<String, Result<Arc<dyn Engine>, EngineError>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    pub project: String,
    /// sha256 of the desired state (container settings with secrets as HMACs).
    pub manifest_fingerprint: String,
    /// Made with `--inspect`: `apply --plan` inspects the same way, so that the plan it makes
    /// to compare can show the same restart-policy recreates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inspected: bool,
    /// Made with `--adopt`: `apply --plan` adopts the same way (the saved actions say which
    /// containers; a plan that no longer would is stale).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    pub integrations: Vec<EnginePlan>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnginePlan {
    pub name: String,
    pub url: String,
    /// sha256 of the live containers this plan depends on; None when the engine failed.
    pub fingerprint: Option<String>,
    /// The engine's daemon ID, read for saved plans only (`plan --out`, `apply --plan`): a
    /// plan made against one engine is refused against another behind the same address
    /// (`local: true` on two machines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_id: Option<String>,
    /// Why this engine could not be planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub actions: Vec<Action>,
    /// For `--diff`: (live, desired) container settings as text, by outpost. Never saved: a
    /// saved plan is compared by its actions and fingerprints only.
    #[serde(skip)]
    pub spec_texts: BTreeMap<String, (String, String)>,
    /// What would let its blocked outposts go ahead (for the watch). Never saved.
    #[serde(skip)]
    pub unblocks: Vec<Unblock>,
    /// What the plan could not check on this engine and apply may still trip on (a network
    /// behind a socket proxy that refuses the network list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The outposts of an engine that could not be planned: not checked, left as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchecked: Vec<String>,
    /// Containers the plan was to inspect and could not (for the watch: the next plan tries
    /// again). Never saved.
    #[serde(skip)]
    pub uninspected: Vec<String>,
    /// What it tells the other integrations of the set. Never saved.
    #[serde(skip)]
    pub shared: Shared,
}

/// What one integration's plan tells the others of the set (`across_integrations`), derived
/// from its engine's list and its actions, alike for `plan` and `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shared {
    /// The containers of this project carrying one of its outposts' uuids
    /// (`diff::answered_for`): another integration does not remove them.
    pub answers_for: BTreeSet<String>,
    /// This project's containers on its engine that another integration of the set manages
    /// (`siblings_of`).
    pub siblings: Vec<Sibling>,
    /// The uuids of its outposts that are blocked (`diff::Keeps::blocked`).
    pub blocked_uuids: BTreeSet<String>,
    /// The outpost uuid of each container it removes (`diff::Keeps::uuid_of`).
    pub uuid_of: HashMap<String, String>,
}

impl Shared {
    /// For the integration of `opts` (`integration`, `integrations`), whose `desired`
    /// outposts got `actions` on an engine that listed `observed`.
    pub fn of(
        project: &str,
        desired: &[ContainerSpec],
        observed: &[Observed],
        actions: &[Action],
        opts: &DiffOptions,
    ) -> Shared {
        Shared {
            answers_for: diff::answered_for(project, desired, observed, opts),
            siblings: siblings_of(
                project,
                opts.integration.as_deref(),
                &opts.integrations,
                observed,
            ),
            blocked_uuids: blocked_uuids(desired, actions),
            uuid_of: uuid_of_removed(actions, observed),
        }
    }
}

/// The uuids of `desired`'s outposts whose action is blocked.
fn blocked_uuids(desired: &[ContainerSpec], actions: &[Action]) -> BTreeSet<String> {
    actions
        .iter()
        .filter(|a| a.action == ActionKind::Blocked)
        .filter_map(|a| desired.iter().find(|d| d.outpost == a.outpost))
        .map(|d| d.uuid.clone())
        .collect()
}

/// The outpost uuid of each container `actions` remove, from the list.
fn uuid_of_removed(actions: &[Action], observed: &[Observed]) -> HashMap<String, String> {
    actions
        .iter()
        .filter(|a| a.action == ActionKind::Remove)
        .filter_map(|a| a.container.as_ref())
        .filter_map(|c| {
            let o = observed.iter().find(|o| o.id == c.id)?;
            Some((c.id.clone(), o.label(LABEL_UUID)?.to_string()))
        })
        .collect()
}

/// A container of this project, on an integration's engine, labelled as another integration's
/// of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    pub container: diff::ContainerRef,
    pub integration: String,
    pub outpost: String,
    pub uuid: Option<String>,
}

/// The containers of `project` in `observed` that another integration of the set than
/// `integration` manages (by their label).
fn siblings_of(
    project: &str,
    integration: Option<&str>,
    integrations: &BTreeSet<String>,
    observed: &[Observed],
) -> Vec<Sibling> {
    observed
        .iter()
        .filter(|o| o.label(LABEL_PROJECT) == Some(project) && o.state != State::Removing)
        .filter_map(|o| {
            let theirs = o.label(crate::desired::LABEL_INTEGRATION)?;
            (Some(theirs) != integration && integrations.contains(theirs)).then(|| Sibling {
                container: diff::ContainerRef {
                    id: o.id.clone(),
                    name: o.name.clone(),
                },
                integration: theirs.to_string(),
                outpost: o.label(LABEL_OUTPOST).unwrap_or(&o.name).to_string(),
                uuid: o.label(LABEL_UUID).map(str::to_string),
            })
        })
        .collect()
}

/// Something on the engine that would let a blocked outpost go ahead: the watch reconciles
/// when its event comes, instead of waiting for its interval.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unblock {
    /// This container (outside the project) dies, is removed or renamed: the host port,
    /// name or uuid it holds is freed.
    Container(String),
    /// The container of this name is removed or renamed.
    Name(String),
    /// A network of this name is created.
    Network(String),
    /// A container of this name is made, renamed to it, started, stopped or removed: the
    /// namespace container of a `docker_network: container:<name>` outpost.
    Appears(String),
    /// This image arrives (pulled, loaded, tagged).
    Image(String),
}

/// Counts by action, for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub recreate: usize,
    pub rename: usize,
    pub start: usize,
    pub restart: usize,
    pub remove: usize,
    pub unchanged: usize,
    pub blocked: usize,
    pub failed_engines: usize,
    /// Outposts of the engines that could not be planned.
    pub unchecked: usize,
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for e in &self.integrations {
            if e.error.is_some() {
                s.failed_engines += 1;
            }
            s.unchecked += e.unchecked.len();
            for a in &e.actions {
                match a.action {
                    ActionKind::Create => s.create += 1,
                    ActionKind::Recreate => s.recreate += 1,
                    ActionKind::Rename => s.rename += 1,
                    // Unpausing is starting, for the summary.
                    ActionKind::Start | ActionKind::Unpause => s.start += 1,
                    ActionKind::Restart => s.restart += 1,
                    ActionKind::Remove => s.remove += 1,
                    ActionKind::Noop => s.unchanged += 1,
                    ActionKind::Blocked => s.blocked += 1,
                }
            }
        }
        s
    }

    pub fn has_changes(&self) -> bool {
        self.integrations
            .iter()
            .any(|e| e.actions.iter().any(|a| a.action.is_change()))
    }

    /// Engines that failed or outposts that are blocked: the plan cannot be fully applied.
    pub fn has_errors(&self) -> bool {
        self.integrations
            .iter()
            .any(|e| e.error.is_some() || e.actions.iter().any(|a| a.action == ActionKind::Blocked))
    }

    /// Reads each planned engine's daemon ID (one `info` request per engine), for a plan that
    /// is saved or checked against a saved one. An engine that does not answer keeps none.
    pub async fn identify_engines(&mut self, engines: &Engines) {
        let ids = daemon_ids(&self.integrations, engines).await;
        for (e, id) in self.integrations.iter_mut().zip(ids) {
            e.engine_id = id;
        }
    }

    /// The integrations that could not be planned (their engine did not answer).
    pub fn unplanned(&self) -> Vec<&str> {
        self.integrations
            .iter()
            .filter(|e| e.error.is_some())
            .map(|e| e.name.as_str())
            .collect()
    }

    /// The integrations planned without an error whose engine ID is not known.
    pub fn unidentified(&self) -> Vec<&str> {
        self.integrations
            .iter()
            .filter(|e| e.error.is_none() && e.engine_id.is_none())
            .map(|e| e.name.as_str())
            .collect()
    }

    /// Why `saved` may not be applied now that `self` was computed fresh; None when it may.
    pub fn staleness(&self, saved: &Plan) -> Option<String> {
        if saved.format_version != FORMAT_VERSION {
            return Some(format!(
                "the plan file has format version {}; this outpostctl reads version {FORMAT_VERSION}",
                saved.format_version
            ));
        }
        if saved.project != self.project {
            return Some(format!(
                "the plan is for project `{}`, the manifests are for `{}`",
                saved.project, self.project
            ));
        }
        if saved.manifest_fingerprint != self.manifest_fingerprint {
            return Some("the manifests (or the tokens and keys they reference) changed since the plan was made".into());
        }
        for now in &self.integrations {
            let Some(then) = saved.integrations.iter().find(|e| e.name == now.name) else {
                return Some(format!("integration `{}` is not in the plan", now.name));
            };
            if let Some(err) = &now.error {
                return Some(format!(
                    "integration `{}` cannot be planned now: {err}",
                    now.name
                ));
            }
            if let Some(err) = &then.error {
                return Some(format!(
                    "integration `{}` could not be planned when the plan was made ({err}): make a new plan",
                    now.name
                ));
            }
            if then.engine_id.is_none() {
                // Printed with `--format json`, not saved with `--out`: which engine it was
                // made against is unknown.
                return Some(format!(
                    "it holds no engine ID for integration `{}`, so it cannot be checked against the engine it was made for: save plans with `plan --out FILE` (not `--format json`)",
                    now.name
                ));
            }
            if let Some(then_id) = &then.engine_id {
                if now.engine_id.is_none() {
                    return Some(format!(
                        "the engine ID of integration `{}` (docker info) could not be read to check that it is the engine the plan was made against",
                        now.name
                    ));
                }
                if now.engine_id.as_ref() != Some(then_id) {
                    return Some(format!(
                        "integration `{}` reaches another Docker engine than when the plan was made (engine ID {} then, {} now)",
                        now.name,
                        short(then_id),
                        now.engine_id.as_deref().map_or("unknown", short)
                    ));
                }
            }
            if then.fingerprint != now.fingerprint || then.actions != now.actions {
                // Inspecting shows what the list does not (a restart policy changed by hand):
                // a plan made without it can differ from one made with it for that alone.
                let inspected = if self.inspected && !saved.inspected {
                    " (this apply inspects the containers, `--inspect`; the plan was made without it)"
                } else {
                    ""
                };
                if then.fingerprint == now.fingerprint && inspected.is_empty() {
                    // The same containers, another plan: what it checks beside them moved.
                    return Some(format!(
                        "what the plan would do on integration `{}` changed since it was made (a network or host port it needs appeared or went away)",
                        now.name
                    ));
                }
                return Some(format!(
                    "the containers on integration `{}` changed since the plan was made{inspected}",
                    now.name
                ));
            }
        }
        if saved.integrations.len() != self.integrations.len() {
            return Some("the plan names integrations the manifests no longer have".into());
        }
        None
    }
}

/// The start of an engine ID, for messages.
fn short(id: &str) -> &str {
    id.get(..14).unwrap_or(id)
}

/// The fingerprint of the desired state: what the manifests ask for, secrets as HMACs.
pub fn manifest_fingerprint(v: &Validated) -> String {
    let mut h = Sha256::new();
    h.update(v.project.as_bytes());
    for (name, def) in &v.integrations {
        h.update(format!("\0integration\0{name}\0{}", def.url).as_bytes());
        h.update(endpoint_digest(&def.endpoint));
        for spec in v.desired.get(name).into_iter().flatten() {
            h.update(
                format!(
                    "\0{}\0{}\0{}\0{:?}\0{:?}",
                    spec.outpost, spec.name, spec.config_hash, spec.pull, spec.fallback_image
                )
                .as_bytes(),
            );
        }
    }
    hex::encode(h.finalize())
}

/// How an integration reaches its engine beyond its URL, as a digest for the manifest
/// fingerprint: the CA it trusts, its client certificate and key, its ssh key, pinned host key
/// and ssh config (the file's path and what it says). A saved plan is stale when any of them
/// changed: it was reviewed for an engine reached that way. Key material enters only through
/// its own SHA-256. (`local: true` follows this machine's environment, which the daemon ID
/// the plan saved stands in for.)
fn endpoint_digest(endpoint: &crate::validate::Endpoint) -> [u8; 32] {
    use crate::validate::Endpoint;
    let digest = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
    let text = match endpoint {
        Endpoint::Local | Endpoint::Unix { .. } | Endpoint::Http { .. } => String::new(),
        Endpoint::Tls { ca_pem, client, .. } => format!(
            "tls\0{:?}\0{:?}",
            ca_pem.as_deref().map(|c| digest(c.as_bytes())),
            client
                .as_ref()
                .map(|(cert, key)| (digest(cert.as_bytes()), digest(key.expose().as_bytes())))
        ),
        Endpoint::Ssh {
            user,
            port,
            key,
            host_key,
            config,
            ..
        } => format!(
            "ssh\0{user:?}\0{port:?}\0{:?}\0{host_key:?}\0{:?}",
            key.as_ref().map(|k| digest(k.expose().as_bytes())),
            config.as_ref().map(|c| (
                c.display().to_string(),
                std::fs::read(c).map(|b| digest(&b)).unwrap_or_default()
            ))
        ),
    };
    Sha256::digest(text.as_bytes()).into()
}

/// The fingerprint of the live containers a plan for `desired` depends on: ours, those with
/// a desired uuid, and those with a desired name. Running and restarting (Docker's restart
/// policy bringing a crashed container back) are one state to every plan, so a container in a
/// crash loop does not make every saved plan of its engine stale.
pub fn engine_fingerprint(
    project: &str,
    desired: &[ContainerSpec],
    observed: &[Observed],
) -> String {
    let uuids: HashSet<&str> = desired.iter().map(|d| d.uuid.as_str()).collect();
    let names: HashSet<&str> = desired.iter().map(|d| d.name.as_str()).collect();
    let mut relevant: Vec<&Observed> = observed
        .iter()
        .filter(|o| {
            o.label(LABEL_PROJECT) == Some(project)
                || o.label(LABEL_UUID).is_some_and(|u| uuids.contains(u))
                || names.contains(o.name.as_str())
        })
        .collect();
    relevant.sort_by(|a, b| a.id.cmp(&b.id));
    let mut h = Sha256::new();
    for o in relevant {
        h.update(
            format!(
                "{}\0{}\0{}\0{}\0{}\0{}\n",
                o.id,
                o.name,
                match o.state {
                    State::Restarting => State::Running.as_str(),
                    other => other.as_str(),
                },
                o.label(LABEL_CONFIG_HASH).unwrap_or(""),
                o.label(LABEL_PROJECT).unwrap_or(""),
                o.networks.join(","),
            )
            .as_bytes(),
        );
    }
    hex::encode(h.finalize())
}

/// Each integration's list of containers, read ahead of `build` (`engine::connect::read_ahead`).
pub type Listed = BTreeMap<String, Result<Vec<Observed>, EngineError>>;

/// Computes the plan: one list per engine; an inspect for each container to be recreated
/// (for its reasons) and for those `opts.inspect` covers (for their restart policy).
/// Engines are read in parallel; one that fails does not stop the others.
pub async fn build(v: &Validated, engines: &Engines, opts: DiffOptions) -> Plan {
    build_listed(v, engines, opts, Listed::new()).await
}

/// `build`, with the lists of the integrations in `listed` already read; the others are
/// listed here.
pub async fn build_listed(
    v: &Validated,
    engines: &Engines,
    opts: DiffOptions,
    mut listed: Listed,
) -> Plan {
    let inspected = opts.inspect == diff::Inspect::All;
    let adopted = opts.adopt;
    let placed = placed(v);
    let futures = v.integrations.iter().map(|(name, def)| {
        let desired: &[ContainerSpec] = v.desired.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let engine = engines.get(name);
        let list = listed.remove(name);
        let opts = DiffOptions {
            integration: Some(name.clone()),
            integrations: v.integrations.keys().cloned().collect(),
            placed: Arc::clone(&placed),
            ..opts.clone()
        };
        async move {
            let engine = match engine {
                Some(Ok(e)) => Arc::clone(e),
                Some(Err(e)) => return failed(name, &def.address(), e.to_string(), desired),
                None => return failed(name, &def.address(), "not connected".into(), desired),
            };
            let planned = match list {
                Some(Ok(o)) => plan_listed(&v.project, desired, engine.as_ref(), opts, o).await,
                Some(Err(e)) => Err(e),
                None => plan_engine(&v.project, desired, engine.as_ref(), opts).await,
            };
            match planned {
                Ok(o) => EnginePlan {
                    name: name.clone(),
                    url: def.address(),
                    fingerprint: Some(o.fingerprint),
                    actions: o.actions,
                    spec_texts: o.spec_texts,
                    unblocks: o.unblocks,
                    notes: o.notes,
                    uninspected: o.uninspected,
                    shared: o.shared,
                    ..Default::default()
                },
                Err(e) => failed(name, &def.address(), e.to_string(), desired),
            }
        }
    });
    let mut integrations = futures_util::future::join_all(futures).await;
    across_integrations(v, engines, &mut integrations).await;
    Plan {
        format_version: FORMAT_VERSION,
        project: v.project.clone(),
        manifest_fingerprint: manifest_fingerprint(v),
        inspected,
        adopted,
        integrations,
    }
}

/// Each planned engine's daemon ID (`docker info`), asked in parallel; None for an engine that
/// failed or does not say.
async fn daemon_ids(plans: &[EnginePlan], engines: &Engines) -> Vec<Option<String>> {
    futures_util::future::join_all(plans.iter().map(|e| async move {
        if e.engine_id.is_some() {
            // Read already (status asks each engine's info for its report).
            return e.engine_id.clone();
        }
        match engines.get(&e.name) {
            Some(Ok(engine)) if e.error.is_none() => engine
                .info()
                .await
                .ok()
                .map(|i| i.id)
                .filter(|id| !id.is_empty()),
            _ => None,
        }
    }))
    .await
}

/// The integration each outpost uuid of the set is on (`DiffOptions::placed`).
pub fn placed(v: &Validated) -> Arc<std::collections::HashMap<String, String>> {
    Arc::new(
        v.desired
            .iter()
            .flat_map(|(i, specs)| specs.iter().map(move |s| (s.uuid.clone(), i.clone())))
            .collect(),
    )
}

/// What the integrations' plans decide together, after each was made on its own: an outpost
/// moving between two integrations of one engine is kept by the one it left until the other
/// takes it over (`keep_what_another_keeps`), and two integrations reaching one daemon do not
/// take each other's names or ports (`block_across_one_daemon`). `plans` sorted by name.
pub async fn across_integrations(v: &Validated, engines: &Engines, plans: &mut [EnginePlan]) {
    let keeps = crate::diff::Keeps {
        failed: plans
            .iter()
            .filter(|e| e.error.is_some())
            .map(|e| e.name.clone())
            .collect(),
        answers_for: plans
            .iter()
            .map(|e| (e.name.clone(), e.shared.answers_for.clone()))
            .collect(),
        blocked: plans
            .iter()
            .map(|e| (e.name.clone(), e.shared.blocked_uuids.clone()))
            .collect(),
        uuid_of: plans
            .iter()
            .flat_map(|e| e.shared.uuid_of.clone())
            .collect(),
    };
    let mut actions: Vec<&mut Vec<crate::diff::Action>> =
        plans.iter_mut().map(|e| &mut e.actions).collect();
    crate::diff::keep_what_another_keeps(&mut actions, &keeps);
    // Each engine is asked its ID only when the set has several integrations (one request
    // each).
    if plans.iter().filter(|e| e.error.is_none()).count() < 2 {
        return;
    }
    let ids = daemon_ids(plans, engines).await;
    for (e, id) in plans.iter_mut().zip(&ids) {
        if e.error.is_none() && id.is_none() {
            e.notes.push(format!(
                "the engine of integration `{}` did not give its daemon ID (a socket proxy that refuses `info`?): whether another integration of the set reaches the same engine was not checked (names and host ports across them, containers an integration left there): allow `info`",
                e.name
            ));
        }
    }
    remove_what_integrations_left(v, plans, &ids);
    block_across_one_daemon(v, plans, &ids);
}

/// An integration of the set whose containers are on an engine it no longer reaches (its
/// `url` moved to another engine): another integration that reaches that engine removes
/// them, as it would its own outposts' that left the manifests (else they would run on beside
/// the ones made on the new engine, and hold their names for ever). Told apart by daemon IDs;
/// an engine that refuses `info` (no ID) or an integration that could not be planned leaves
/// them alone. A container whose outpost is this integration's is not one of them: this
/// integration takes it over (`diff`).
fn remove_what_integrations_left(v: &Validated, plans: &mut [EnginePlan], ids: &[Option<String>]) {
    let placed = placed(v);
    let mut removing: HashSet<String> = HashSet::new();
    for i in 0..plans.len() {
        let Some(here) = ids[i].as_deref() else {
            continue;
        };
        if plans[i].error.is_some() {
            continue;
        }
        let moved_away = |s: &Sibling| {
            plans.iter().zip(ids).any(|(p, id)| {
                p.name == s.integration
                    && p.error.is_none()
                    && id.as_deref().is_some_and(|there| there != here)
            })
        };
        let left: Vec<Sibling> = plans[i]
            .shared
            .siblings
            .iter()
            .filter(|s| moved_away(s))
            .filter(|s| s.uuid.as_ref().and_then(|u| placed.get(u)) != Some(&plans[i].name))
            .filter(|s| removing.insert(s.container.id.clone()))
            .cloned()
            .collect();
        // An outpost blocked by one of them in the way of its name: said as it is.
        for a in plans[i]
            .actions
            .iter_mut()
            .filter(|a| a.action == ActionKind::Blocked && a.reasons.is_empty())
        {
            let Some(gone) = a
                .container
                .as_ref()
                .and_then(|c| left.iter().find(|l| l.container.id == c.id))
            else {
                continue;
            };
            a.error = Some(format!(
                "the name `{}` is taken by container {} of outpost `{}`, which integration `{}` left on this engine (it reaches another engine now): this apply removes it; apply again to create this one",
                a.name,
                gone.container.id.get(..12).unwrap_or(&gone.container.id),
                crate::engine::printable_line(&gone.outpost),
                gone.integration,
            ));
        }
        plans[i].actions.extend(left.into_iter().map(|s| Action {
            outpost: crate::engine::printable_line(&s.outpost),
            action: ActionKind::Remove,
            name: s.container.name.clone(),
            reasons: vec![Change::new(
                "outpost",
                Some(format!("on integration `{}`", s.integration)),
                Some(format!(
                    "integration `{}` reaches another engine now",
                    s.integration
                )),
            )],
            container: Some(s.container),
            adopt: false,
            error: None,
        }));
    }
}

/// Integrations that turn out to reach one daemon through different addresses (the socket and
/// a socket proxy to it): validation compares addresses, so only the plan can tell, by the
/// daemon IDs. Container names and host ports must be unique across them all the same: a
/// create, recreate, start or rename of a later integration (by name) that would take a name
/// or host port an outpost of an earlier one has is blocked, naming both. `ids`: the plans'
/// daemon IDs.
fn block_across_one_daemon(v: &Validated, plans: &mut [EnginePlan], ids: &[Option<String>]) {
    let everywhere = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
    for (i, id) in ids.iter().enumerate() {
        let Some(id) = id else { continue };
        // The integrations before this one (plans are sorted by name) on the same daemon.
        let earlier: Vec<String> = (0..i)
            .filter(|j| ids[*j].as_deref() == Some(id.as_str()))
            .map(|j| plans[j].name.clone())
            .collect();
        if earlier.is_empty() {
            continue;
        }
        let theirs: Vec<(&str, &ContainerSpec)> = earlier
            .iter()
            .flat_map(|n| {
                v.desired
                    .get(n)
                    .into_iter()
                    .flatten()
                    .map(move |s| (n.as_str(), s))
            })
            .collect();
        let mine = v.desired.get(&plans[i].name);
        let short = id.get(..12).unwrap_or(id);
        for a in plans[i].actions.iter_mut().filter(|a| {
            matches!(
                a.action,
                ActionKind::Create | ActionKind::Recreate | ActionKind::Start | ActionKind::Rename
            )
        }) {
            let Some(spec) = mine.and_then(|m| m.iter().find(|s| s.outpost == a.outpost)) else {
                continue;
            };
            let mut why = Vec::new();
            if let Some((n, other)) = theirs.iter().find(|(_, o)| o.name == spec.name) {
                why.push(format!(
                    "the name `{}` is also outpost `{}`'s, of integration `{n}`, which reaches the same engine (daemon {short}): change `object_naming_template` or rename an outpost",
                    spec.name, other.outpost
                ));
            }
            for p in &spec.ports {
                let taken = theirs.iter().find(|(_, o)| {
                    o.ports.iter().any(|q| {
                        q.proto == p.proto
                            && q.host_port == p.host_port
                            && (everywhere(&q.host_ip)
                                || everywhere(&p.host_ip)
                                || q.host_ip == p.host_ip)
                    })
                });
                if let Some((n, other)) = taken {
                    why.push(format!(
                        "host port {}/{} is also outpost `{}`'s, of integration `{n}`, which reaches the same engine (daemon {short}): give one of them another port with `ports:`",
                        p.host_port,
                        p.proto.as_str(),
                        other.outpost
                    ));
                }
            }
            for w in why {
                block(a, w);
            }
        }
    }
}

fn failed(name: &str, url: &str, error: String, desired: &[ContainerSpec]) -> EnginePlan {
    EnginePlan {
        name: name.to_string(),
        url: url.to_string(),
        error: Some(error),
        unchecked: desired.iter().map(|d| d.outpost.clone()).collect(),
        ..Default::default()
    }
}

/// A plan for one engine.
#[derive(Debug)]
pub struct EngineOutcome {
    pub fingerprint: String,
    pub actions: Vec<Action>,
    /// The settings texts for `--diff`: (live, desired) by outpost.
    pub spec_texts: BTreeMap<String, (String, String)>,
    /// What would unblock its blocked outposts.
    pub unblocks: Vec<Unblock>,
    /// What could not be checked (`EnginePlan::notes`).
    pub notes: Vec<String>,
    /// Containers it could not inspect (`EnginePlan::uninspected`).
    pub uninspected: Vec<String>,
    /// `EnginePlan::shared`.
    pub shared: Shared,
}

/// The live state of one engine and the actions it needs.
pub async fn plan_engine(
    project: &str,
    desired: &[ContainerSpec],
    engine: &dyn Engine,
    opts: DiffOptions,
) -> Result<EngineOutcome, EngineError> {
    let observed = engine.list().await?;
    plan_listed(project, desired, engine, opts, observed).await
}

/// `plan_engine` on the engine's list, read already.
async fn plan_listed(
    project: &str,
    desired: &[ContainerSpec],
    engine: &dyn Engine,
    opts: DiffOptions,
    observed: Vec<Observed>,
) -> Result<EngineOutcome, EngineError> {
    let fingerprint = engine_fingerprint(project, desired, &observed);
    let specs: Specs = desired.iter().map(|d| (d.outpost.as_str(), d)).collect();
    let inspect = opts.inspect.clone();
    let integration = opts.integration.clone();
    let keep = opts.keep_orphans;
    let scope = DiffOptions {
        integration: integration.clone(),
        integrations: opts.integrations.clone(),
        ..Default::default()
    };
    let mut actions = diff::diff(project, desired, &observed, opts);
    let mut notes = Vec::new();
    let (namespace_waits, read) =
        shared_namespaces(&specs, &observed, engine, &mut actions, &mut notes).await;
    let covers = |id: &str| inspect.covers(integration.as_deref(), id);
    // Containers already inspected for their restart policy, kept for their reasons below.
    let (mut inspected, unread) =
        restart_policies(&specs, engine, &covers, &read, &mut actions).await;
    let mut texts = BTreeMap::new();
    for a in &actions {
        if a.action == ActionKind::Create
            && let Some(spec) = specs.get(a.outpost.as_str())
        {
            texts.insert(a.outpost.clone(), (String::new(), diff::spec_text(spec)));
        }
    }
    // When no field explains a recreate: the config hash, live and desired.
    let hash_reason = |id: &str, spec: &ContainerSpec| {
        let before = observed
            .iter()
            .find(|o| o.id == id)
            .and_then(|o| o.label(LABEL_CONFIG_HASH))
            .map(short_hash);
        Change::new("config-hash", before, Some(short_hash(&spec.config_hash)))
    };
    for a in actions
        .iter_mut()
        .filter(|a| a.action == ActionKind::Recreate)
    {
        let (Some(spec), Some(c)) = (specs.get(a.outpost.as_str()).copied(), &a.container) else {
            continue;
        };
        // One container that cannot be read (removed since the list, say) loses its detailed
        // reasons, not the whole engine's plan: the config-hash reason below stands in, and
        // the apply reports that outpost's own failure if the container is really gone.
        let live = match inspected.remove(&c.id) {
            Some(live) => Ok(live),
            None => engine.inspect(&c.id).await,
        };
        let Ok(live) = live else {
            if a.reasons.is_empty() {
                a.reasons.push(hash_reason(&c.id, spec));
            }
            continue;
        };
        let image_labels = engine
            .image_labels(&live.image)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        texts.insert(
            a.outpost.clone(),
            (
                diff::live_text(&c.name, &live, spec, &image_labels),
                diff::spec_text(spec),
            ),
        );
        let mut reasons = diff::explain(spec, &c.name, &live, &image_labels);
        if reasons.is_empty() && a.reasons.is_empty() {
            reasons.push(hash_reason(&c.id, spec));
        }
        // Reasons from the list (ownership, state, network) first, then the field-by-field ones.
        for r in reasons {
            if !a.reasons.iter().any(|x| x.field == r.field) {
                a.reasons.push(r);
            }
        }
    }
    notes.extend(unread.iter().map(|(_, name, e)| {
        format!(
            "container `{name}` could not be inspected, so its restart policy was not checked: {e}"
        )
    }));
    let uninspected = unread.into_iter().map(|(id, _, _)| id).collect();
    let mut unblocks = block_what_would_fail(
        project,
        &specs,
        &observed,
        engine,
        &mut actions,
        &mut notes,
        keep,
    )
    .await;
    unblocks.extend(namespace_waits);
    // A blocked outpost is left as it is: its duplicates too (a previous container parked by
    // an interrupted recreate stays until the outpost's own container can run).
    let blocked: HashSet<String> = actions
        .iter()
        .filter(|a| a.action == ActionKind::Blocked)
        .map(|a| a.outpost.clone())
        .collect();
    actions.retain(|a| !(diff::is_duplicate_removal(a) && blocked.contains(&a.outpost)));
    unblocks.sort();
    unblocks.dedup();
    Ok(EngineOutcome {
        fingerprint,
        spec_texts: texts,
        unblocks,
        notes,
        uninspected,
        shared: Shared::of(project, desired, &observed, &actions, &scope),
        actions,
    })
}

/// Blocks the actions that would fail at apply (a host port another container publishes, a
/// missing network, a missing `pull: never` image, a name whose container stays where it
/// is); returns what every blocked action,
/// these and the diff's (a container in the way of its name, or carrying its uuid), waits for.
async fn block_what_would_fail(
    project: &str,
    specs: &Specs<'_>,
    observed: &[Observed],
    engine: &dyn Engine,
    actions: &mut [Action],
    notes: &mut Vec<String>,
    keep_orphans: bool,
) -> Vec<Unblock> {
    let mut unblocks: Vec<Unblock> = actions
        .iter()
        .filter(|a| a.action == ActionKind::Blocked)
        .flat_map(waits_of_blocked)
        .collect();
    // Every reason an action would fail is found on the actions as the diff made them, so
    // that an outpost blocked for several reasons shows them all at once.
    let mut findings = taken_ports(project, specs, observed, actions, keep_orphans);
    findings.extend(missing_networks(specs, observed, engine, actions, notes).await);
    findings.extend(missing_images(specs, engine, actions).await);
    for f in findings {
        if let Some(a) = actions.get_mut(f.at) {
            block(a, f.why);
            unblocks.push(f.unblock);
        }
    }
    // A name the diff let an outpost take from another's container, counting on that one to
    // move: when it is now blocked and stays, so is the outpost that wanted its name.
    let was_blocked: Vec<bool> = actions
        .iter()
        .map(|a| a.action == ActionKind::Blocked)
        .collect();
    diff::keep_names_of_what_stays(actions, observed);
    unblocks.extend(
        actions
            .iter()
            .zip(was_blocked)
            .filter(|(a, was)| !was && a.action == ActionKind::Blocked)
            .flat_map(|(a, _)| waits_of_blocked(a)),
    );
    unblocks
}

/// What a blocked action waits for: the container in its way (or its own) to go, its name
/// to be freed.
fn waits_of_blocked(a: &Action) -> impl Iterator<Item = Unblock> + use<> {
    let by = a
        .container
        .as_ref()
        .map(|c| Unblock::Container(c.id.clone()));
    by.into_iter().chain([Unblock::Name(a.name.clone())])
}

/// A reason an action would fail at apply: the action's index, why, and what would let it
/// go ahead.
struct Finding {
    at: usize,
    why: String,
    unblock: Unblock,
}

/// What `plan` would do on one engine, without the inspects a plan makes to explain its
/// recreates: the diff of a list already read, with every action that would fail blocked
/// (`status`: which container is each outpost's, and why an outpost is blocked).
pub async fn checked(
    project: &str,
    desired: &[ContainerSpec],
    engine: &dyn Engine,
    observed: &[Observed],
    opts: DiffOptions,
) -> Vec<Action> {
    let specs: Specs = desired.iter().map(|d| (d.outpost.as_str(), d)).collect();
    let keep = opts.keep_orphans;
    let mut actions = diff::diff(project, desired, observed, opts);
    let mut notes = Vec::new();
    shared_namespaces(&specs, observed, engine, &mut actions, &mut notes).await;
    block_what_would_fail(
        project,
        &specs,
        observed,
        engine,
        &mut actions,
        &mut notes,
        keep,
    )
    .await;
    actions
}

/// `docker_network: container:<name>`: Docker joins the network namespace of the container
/// of that name when it starts the outpost's container, and keeps that container's id. An
/// outpost whose container joined a namespace that is gone (its container made anew, by its
/// compose file say, or restarted since) runs cut off, and cannot start again once stopped:
///
/// - the container of that name is made, recreated, started or restarted by this plan (it
///   is another outpost's): the outpost is recreated after it (apply orders them);
/// - else the container of that name is read (one inspect per name, and one of each such
///   outpost's container, only when an outpost names one): none, or not running, blocks the
///   outpost until it is; one made anew since recreates the outpost onto it; one restarted
///   since the outpost's container started restarts the outpost.
///
/// Returns what each such outpost waits for: a container of that name made, renamed to it,
/// started or removed; and the outposts' containers it inspected (by id), which
/// `restart_policies` does not read again.
async fn shared_namespaces(
    specs: &Specs<'_>,
    observed: &[Observed],
    engine: &dyn Engine,
    actions: &mut [Action],
    notes: &mut Vec<String>,
) -> (Vec<Unblock>, HashMap<String, Inspected>) {
    let target_of = |a: &Action| {
        if a.action == ActionKind::Remove {
            return None;
        }
        let spec = specs.get(a.outpost.as_str())?;
        let n = spec.network.as_deref()?.strip_prefix("container:")?;
        Some(n.to_string())
    };
    let targets: BTreeSet<String> = actions.iter().filter_map(target_of).collect();
    let mut read = HashMap::new();
    if targets.is_empty() {
        return (Vec::new(), read);
    }
    // The names this plan gives a container that (re)starts: another outpost's.
    let made_here: HashSet<String> = actions
        .iter()
        .filter(|a| {
            matches!(
                a.action,
                ActionKind::Create | ActionKind::Recreate | ActionKind::Start | ActionKind::Restart
            )
        })
        .map(|a| a.name.clone())
        .collect();
    // The others as the engine has them now: None when there is no such container. One that
    // this plan renames to that name (another outpost's) is read by its id.
    let renamed_to: HashMap<String, String> = actions
        .iter()
        .filter(|a| a.action == ActionKind::Rename)
        .filter_map(|a| Some((a.name.clone(), a.container.as_ref()?.id.clone())))
        .collect();
    let mut found: HashMap<String, Option<Inspected>> = HashMap::new();
    for t in targets.iter().filter(|t| !made_here.contains(*t)) {
        let by = renamed_to.get(t).unwrap_or(t);
        match engine.inspect(by).await {
            Ok(c) => {
                found.insert(t.clone(), Some(c));
            }
            Err(e) if e.is_not_found() => {
                found.insert(t.clone(), None);
            }
            Err(e) => notes.push(format!(
                "container `{}` (named by `docker_network: container:{}`) could not be read, so whether the outposts on its network namespace are still on it was not checked: {}",
                crate::engine::printable_line(t.as_str()),
                crate::engine::printable_line(t.as_str()),
                e.message
            )),
        }
    }
    for a in actions.iter_mut() {
        let Some(target) = target_of(a) else {
            continue;
        };
        if a.name == target {
            continue; // names itself: Docker refuses it at apply
        }
        let live = a
            .container
            .as_ref()
            .and_then(|c| observed.iter().find(|o| o.id == c.id));
        let recreate = |a: &mut Action, before: String, after: String| {
            if a.container.is_none() {
                return; // a create: made after it anyway
            }
            if matches!(
                a.action,
                ActionKind::Noop
                    | ActionKind::Start
                    | ActionKind::Restart
                    | ActionKind::Unpause
                    | ActionKind::Rename
                    | ActionKind::Recreate
            ) {
                a.action = ActionKind::Recreate;
                a.reasons.retain(|r| r.field != "network");
                a.reasons
                    .insert(0, Change::new("network", Some(before), Some(after)));
            }
        };
        if made_here.contains(&target) {
            recreate(
                a,
                format!("container:{target}"),
                format!("container:{target} (made anew by this plan, first)"),
            );
            continue;
        }
        let Some(c) = found.get(&target) else {
            continue; // not read: left as it is
        };
        let Some(c) = c else {
            block(
                a,
                format!(
                    "`docker_network: container:{target}` names no container on this engine: create the container `{target}` first, or fix `docker_network`"
                ),
            );
            continue;
        };
        if !c.running {
            block(
                a,
                format!(
                    "container `{target}`, whose network namespace the outpost shares (`docker_network`), is not running: start it first (`docker start {}`)",
                    crate::commands::shell_word(&target)
                ),
            );
            continue;
        }
        let Some(live) = live else {
            continue;
        };
        let joined = live
            .network_mode
            .as_deref()
            .and_then(|m| m.strip_prefix("container:"));
        match joined {
            None => {} // not on a namespace: the diff recreates it for its network
            Some(joined) if joined != c.id => recreate(
                a,
                format!(
                    "container:{} (a container since removed)",
                    joined.get(..12).unwrap_or(joined)
                ),
                format!("container:{target} ({})", c.id.get(..12).unwrap_or(&c.id)),
            ),
            // The same container, restarted since the outpost's started: a restart joins
            // its namespace again.
            Some(_) if a.action == ActionKind::Noop && live.state == State::Running => {
                let mine = engine.inspect(&live.id).await.ok();
                let started = mine.as_ref().and_then(|i| i.started_at);
                if let Some(mine) = mine {
                    read.insert(live.id.clone(), mine);
                }
                if let (Some(mine), Some(theirs)) = (started, c.started_at)
                    && mine < theirs
                {
                    a.action = ActionKind::Restart;
                    a.reasons.push(Change::new(
                        "network",
                        Some(format!("container:{target} (before it restarted)")),
                        Some(format!("container:{target} (as it runs now)")),
                    ));
                }
            }
            Some(_) => {}
        }
    }
    (targets.into_iter().map(Unblock::Appears).collect(), read)
}

/// A create, recreate or start that needs a host port a running container outside this
/// project publishes would fail at apply: it is blocked instead, naming that container.
/// Read from the list (no request). This project's own containers are left out: the set's
/// outposts never share a port (validation), and one that left the manifests is removed first
/// (unless `keep_orphans`, `watch --no-prune`: then it stays, and holds its ports).
/// A process outside Docker holding the port is not seen here; apply names it.
fn taken_ports(
    project: &str,
    specs: &Specs<'_>,
    observed: &[Observed],
    actions: &[Action],
    keep_orphans: bool,
) -> Vec<Finding> {
    // The removals that are held back: their containers stay.
    let pending: HashSet<&str> = actions
        .iter()
        .filter(|a| keep_orphans && a.action == ActionKind::Remove)
        .filter(|a| !diff::is_duplicate_removal(a))
        .filter_map(|a| a.container.as_ref().map(|c| c.id.as_str()))
        .collect();
    // Containers the plan acts on (one authentik deployed, adopted with --adopt) are not
    // in the way of their own outpost. One it only blocks (authentik's without --adopt,
    // another project's, one in the way of a name) stays as it is, with its ports.
    let acted_on: HashSet<&str> = actions
        .iter()
        .filter(|a| a.action != ActionKind::Blocked)
        .filter_map(|a| a.container.as_ref().map(|c| c.id.as_str()))
        .filter(|id| !pending.contains(id))
        .collect();
    let holders: Vec<&Observed> = observed
        .iter()
        .filter(|o| {
            (o.label(LABEL_PROJECT) != Some(project) || pending.contains(o.id.as_str()))
                && !acted_on.contains(o.id.as_str())
        })
        .filter(|o| matches!(o.state, State::Running | State::Restarting | State::Paused))
        .filter(|o| !o.host_ports.is_empty())
        .collect();
    let mut findings = Vec::new();
    if holders.is_empty() {
        return findings;
    }
    for (at, a) in actions.iter().enumerate().filter(|(_, a)| {
        matches!(
            a.action,
            ActionKind::Create | ActionKind::Recreate | ActionKind::Start
        )
    }) {
        let Some(spec) = specs.get(a.outpost.as_str()) else {
            continue;
        };
        // Docker publishes no ports for a container on the host's network or on none.
        if spec
            .network
            .as_deref()
            .is_some_and(|n| n == "host" || n == "none" || n.starts_with("container:"))
        {
            continue;
        }
        // Each container in the way, with the ports it takes, in the outpost's order.
        let mut taken: Vec<(&Observed, Vec<String>)> = Vec::new();
        for want in &spec.ports {
            let Some(o) = holders
                .iter()
                .find(|o| o.host_ports.iter().any(|held| port_overlaps(want, held)))
            else {
                continue;
            };
            let port = format!("{}/{}", want.host_port, want.proto.as_str());
            match taken.iter_mut().find(|(h, _)| h.id == o.id) {
                Some((_, ports)) => ports.push(port),
                None => taken.push((o, vec![port])),
            }
        }
        for (o, ports) in taken {
            let whose = match o.label(LABEL_PROJECT) {
                Some(_) if pending.contains(o.id.as_str()) => format!(
                    "of outpost `{}`, which left the manifests and whose removal is pending (--no-prune)",
                    crate::engine::printable_line(o.label(LABEL_OUTPOST).unwrap_or(&o.name))
                ),
                Some(other) => format!(
                    "of outpostctl project `{}`",
                    crate::engine::printable_line(other)
                ),
                None => "which outpostctl does not manage".into(),
            };
            let list = ports.join(", ");
            let (taken, fix) = if ports.len() == 1 {
                (
                    format!("port {list} is"),
                    "free it, or give this outpost another port",
                )
            } else {
                (
                    format!("ports {list} are"),
                    "free them, or give this outpost other ports",
                )
            };
            findings.push(Finding {
                at,
                why: format!(
                    "host {taken} taken by container `{}` ({}), {whose}: {fix} with `ports:`",
                    o.name,
                    o.short_id(),
                ),
                unblock: Unblock::Container(o.id.clone()),
            });
        }
    }
    findings
}

/// The spec of each outpost, by name.
type Specs<'a> = HashMap<&'a str, &'a ContainerSpec>;

/// Between the reasons of an outpost blocked for several (the human plan shows one a line).
pub const ALSO: &str = "; also, ";

/// Marks `a` blocked, saying why (after the reasons it is already blocked for): nothing is
/// done for its outpost.
fn block(a: &mut Action, why: String) {
    a.error = match (a.action, a.error.take()) {
        (ActionKind::Blocked, Some(before)) => Some(format!("{before}{ALSO}{why}")),
        _ => Some(why),
    };
    a.action = ActionKind::Blocked;
}

/// The spec of `a` when it is a create or recreate: what the checks before one look at.
fn creating<'a>(specs: &Specs<'a>, a: &Action) -> Option<&'a ContainerSpec> {
    matches!(a.action, ActionKind::Create | ActionKind::Recreate)
        .then(|| specs.get(a.outpost.as_str()).copied())
        .flatten()
}

/// Whether binding `want` on the host conflicts with `held`: the same port and protocol, on
/// the same address or where one of them is every address (of the same IP family, or of both
/// when no address is given).
fn port_overlaps(want: &crate::desired::PortBinding, held: &crate::engine::HostPort) -> bool {
    if want.host_port != held.port || want.proto.as_str() != held.proto {
        return false;
    }
    let v6 = |ip: &str| ip.contains(':');
    let every = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
    want.host_ip.is_empty()
        || held.ip.is_empty()
        || (v6(&want.host_ip) == v6(&held.ip)
            && (every(&want.host_ip) || every(&held.ip) || want.host_ip == held.ip))
}

/// A create or recreate with `pull: never` whose image the engine does not have would fail at
/// apply: it is blocked instead. One image inspect per such image, only for those actions; an
/// engine that does not answer leaves the actions as they are (apply then reports it).
async fn missing_images(
    specs: &Specs<'_>,
    engine: &dyn Engine,
    actions: &[Action],
) -> Vec<Finding> {
    let image_of = |a: &Action| {
        creating(specs, a)
            .filter(|spec| spec.pull == PullPolicy::Never)
            .map(|spec| spec.image.clone())
    };
    let images: BTreeSet<String> = actions.iter().filter_map(image_of).collect();
    let mut missing = BTreeSet::new();
    for image in images {
        if let Ok(None) = engine.image_labels(&image).await {
            missing.insert(image);
        }
    }
    let found = actions.iter().enumerate().filter_map(|(at, a)| {
        let image = image_of(a).filter(|i| missing.contains(i))?;
        Some(Finding {
            at,
            why: format!(
                "image `{image}` is not on this engine and `pull: never` forbids pulling it: load or pull it there first (`docker pull {image}`), or set `pull: missing`"
            ),
            unblock: Unblock::Image(image),
        })
    });
    found.collect()
}

/// Networks every engine has.
const BUILTIN_NETWORKS: [&str; 4] = ["bridge", "host", "none", "default"];

/// A create or recreate onto a network the engine does not have would fail at apply (the
/// container is made, then cannot start): it is blocked instead, naming the network. A
/// network some listed container is on exists; the others take one request, only when an
/// action needs them. An engine that does not answer it (a socket proxy that does not allow
/// the network list) leaves the actions as they are: apply then reports the missing network.
async fn missing_networks(
    specs: &Specs<'_>,
    observed: &[Observed],
    engine: &dyn Engine,
    actions: &[Action],
    notes: &mut Vec<String>,
) -> Vec<Finding> {
    let network_of = |a: &Action| {
        let n = creating(specs, a)?.network.clone()?;
        let known = BUILTIN_NETWORKS.contains(&n.as_str())
            || n.starts_with("container:")
            || observed.iter().any(|o| o.networks.contains(&n));
        (!known).then_some(n)
    };
    let unknown: BTreeSet<String> = actions.iter().filter_map(network_of).collect();
    if unknown.is_empty() {
        return Vec::new();
    }
    let networks = match engine.networks().await {
        Ok(n) => n,
        Err(e) => {
            let list = crate::render::code_list(&unknown);
            notes.push(format!(
                "network {list} not checked: the engine refused the network list ({}); if it is missing, apply fails that outpost and keeps its previous container (a socket proxy needs NETWORKS=1 for the check)",
                e.message
            ));
            return Vec::new();
        }
    };
    // Docker finds a network by its name, its id, or a prefix of its id.
    let missing: BTreeSet<String> = unknown
        .into_iter()
        .filter(|n| {
            !networks
                .iter()
                .any(|(id, name)| name == n || id.starts_with(n.as_str()))
        })
        .collect();
    // A Swarm worker creates containers on attachable overlay networks it does not list
    // yet: asked only when a network is missing, and then not checked there.
    if missing.is_empty() || engine.info().await.is_ok_and(|i| i.swarm_worker) {
        return Vec::new();
    }
    let found = actions.iter().enumerate().filter_map(|(at, a)| {
        let n = network_of(a).filter(|n| missing.contains(n))?;
        Some(Finding {
            at,
            why: format!(
                "network `{n}` does not exist on this engine: create it first (`docker network create {}`), or fix `docker_network`",
                crate::commands::shell_word(&n)
            ),
            unblock: Unblock::Network(n),
        })
    });
    found.collect()
}

/// A container that could not be inspected: (id, name, error).
type Unread = (String, String, String);

/// What the list cannot show: the restart policy of the kept containers `inspect` covers,
/// read by one inspect each (in parallel). One changed by hand (`docker update --restart`)
/// makes the action a recreate, whose reasons the caller then completes from the inspect
/// returned here (by container id). A container that cannot be inspected keeps its action,
/// and is returned as `Unread` (one removed since the list is not: it is gone). Those in
/// `known` (inspected by this plan already) are not inspected again.
async fn restart_policies(
    specs: &Specs<'_>,
    engine: &dyn Engine,
    covers: &(dyn Fn(&str) -> bool + Sync),
    known: &HashMap<String, Inspected>,
    actions: &mut [Action],
) -> (HashMap<String, Inspected>, Vec<Unread>) {
    let checks = actions.iter().enumerate().filter_map(|(i, a)| {
        let c = a.container.as_ref()?;
        let spec = *specs.get(a.outpost.as_str())?;
        (diff::keeps_container(a) && covers(&c.id)).then_some(async move {
            let live = match known.get(&c.id) {
                Some(live) => live.clone(),
                None => match engine.inspect(&c.id).await {
                    Ok(live) => live,
                    Err(e) if e.is_not_found() => return None,
                    Err(e) => return Some(Err((c.id.clone(), c.name.clone(), e.to_string()))),
                },
            };
            (live.restart_policy != spec.restart_policy).then(|| {
                let change = Change::new(
                    diff::RESTART_POLICY_FIELD,
                    Some(live.restart_policy.clone()),
                    Some(spec.restart_policy.clone()),
                );
                Ok((i, change, live))
            })
        })
    });
    let read: Vec<Result<(usize, Change, Inspected), Unread>> = futures_util::stream::iter(checks)
        .buffer_unordered(INSPECTS_AT_ONCE)
        .filter_map(std::future::ready)
        .collect()
        .await;
    let mut inspected = HashMap::new();
    let mut unread = Vec::new();
    for r in read {
        let (i, change, live) = match r {
            Ok(changed) => changed,
            Err(u) => {
                unread.push(u);
                continue;
            }
        };
        let a = &mut actions[i];
        a.action = ActionKind::Recreate;
        a.reasons.push(change);
        if let Some(c) = &a.container {
            inspected.insert(c.id.clone(), live);
        }
    }
    unread.sort();
    (inspected, unread)
}

/// Inspects in flight at once for `--inspect` (the engine serves them on one core or two).
const INSPECTS_AT_ONCE: usize = 8;

fn short_hash(h: &str) -> String {
    h.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{LABEL_INTEGRATION, LABEL_MANAGED_BY, Proto};
    use crate::engine::fake::{Fake, observed, validated};

    /// A saved plan was reviewed for engines reached in a certain way: a change to an
    /// integration's trusted CA, its pinned ssh host key or its ssh key makes it stale, though
    /// no URL and no outpost changed; the same set gives the same fingerprint.
    #[test]
    fn the_manifest_fingerprint_covers_how_engines_are_reached() {
        let set = |ca: &str, host_key: &str, key: &str| {
            let dir = tempfile::tempdir().expect("temp dir");
            let key_path = dir.path().join("id");
            std::fs::write(&key_path, key).expect("key");
            std::fs::set_permissions(
                &key_path,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("mode");
            validated(&format!(
                "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
                 authentik_version: \"2026.8.0\"\nkeypairs:\n  ca: {{ certificate: {{ value: \"-----BEGIN CERTIFICATE-----\\n{ca}\\n-----END CERTIFICATE-----\" }} }}\n  \
                 nas-ssh: {{ key: {{ file: {} }} }}\nintegrations:\n  \
                 edge: {{ url: \"https://edge.example.com:2376\", tls_verification: ca }}\n  \
                 nas: {{ url: \"ssh://u@nas:22\", tls_authentication: nas-ssh, ssh: {{ host_key: \"ssh-ed25519 {host_key}\" }} }}\n\
                 outposts:\n  A: {{ type: ldap, integration: edge, token: {{ file: token }} }}\n",
                key_path.display()
            ))
        };
        let k1 = include_str!("../tests/fixtures/ssh-keys/plain");
        let k2 = include_str!("../tests/fixtures/ssh-keys/plain-other");
        let base = manifest_fingerprint(&set("CA1", "AAAA1", k1));
        assert_eq!(base, manifest_fingerprint(&set("CA1", "AAAA1", k1)));
        for (what, other) in [
            ("the trusted CA", set("CA2", "AAAA1", k1)),
            ("the pinned host key", set("CA1", "AAAA2", k1)),
            ("the ssh key", set("CA1", "AAAA1", k2)),
        ] {
            assert_ne!(base, manifest_fingerprint(&other), "{what} changed");
        }
    }

    /// A plan is saved only when every engine planned gave its daemon ID (`apply --plan`
    /// checks it): one whose `info` fails is named; one that could not be planned is not.
    #[tokio::test]
    async fn an_engine_without_its_id_is_named_before_a_plan_is_saved() {
        let plan_of = |name: &str, error: Option<&str>| EnginePlan {
            name: name.into(),
            url: name.into(),
            error: error.map(str::to_string),
            ..Default::default()
        };
        let mut plan = Plan {
            format_version: FORMAT_VERSION,
            project: "p".into(),
            manifest_fingerprint: String::new(),
            inspected: false,
            adopted: false,
            integrations: vec![
                plan_of("a", None),
                plan_of("b", None),
                plan_of("c", Some("unreachable")),
            ],
        };
        let engine = |id: Option<&str>| -> Result<Arc<dyn Engine>, crate::engine::EngineError> {
            Ok(Arc::new(Fake {
                daemon_id: id.map(str::to_string),
                ..Fake::default()
            }))
        };
        let engines: Engines = BTreeMap::from([
            ("a".to_string(), engine(Some("ID-A"))),
            ("b".to_string(), engine(None)),
            ("c".to_string(), engine(Some("ID-C"))),
        ]);
        plan.identify_engines(&engines).await;
        assert_eq!(plan.integrations[0].engine_id.as_deref(), Some("ID-A"));
        assert_eq!(plan.unidentified(), ["b"]);
        // An ID known already is not asked again (`b`'s engine still refuses `info`).
        plan.integrations[1].engine_id = Some("ID-B".into());
        plan.identify_engines(&engines).await;
        assert_eq!(plan.integrations[1].engine_id.as_deref(), Some("ID-B"));
    }

    /// A saved plan depends on the containers' states, except that a container flapping
    /// between running and restarting (a crash loop under Docker's restart policy) is the
    /// same to it: every plan treats both alike.
    #[test]
    fn a_crash_loop_does_not_move_the_fingerprint_but_a_stop_does() {
        let c = |state| {
            observed(
                "0123456789abcdef",
                "ak-outpost-a",
                state,
                &[(LABEL_PROJECT, "p")],
            )
        };
        let of = |state| engine_fingerprint("p", &[], &[c(state)]);
        assert_eq!(of(State::Running), of(State::Restarting));
        assert_ne!(of(State::Running), of(State::Exited));
        assert_ne!(of(State::Running), of(State::Paused));
        assert_ne!(of(State::Restarting), of(State::Exited));
    }

    /// A container that needs a recreate but cannot be inspected any more still gets its
    /// recreate planned (with the config hash as the reason); the engine's plan does not fail.
    #[tokio::test]
    async fn a_container_that_cannot_be_inspected_does_not_fail_the_engine() {
        let spec = ldap_a();
        let live = outdated(&spec);
        let planned = plan_engine(
            "p",
            std::slice::from_ref(&spec),
            // Listed, then removed before the inspect.
            &Fake {
                listed: vec![live],
                ..Fake::default()
            },
            DiffOptions::default(),
        )
        .await
        .map(|o| o.actions);
        let actions = match planned {
            Ok(a) => a,
            Err(e) => panic!("the engine's plan failed: {e}"),
        };
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert_eq!(actions[0].action, ActionKind::Recreate);
        assert_eq!(actions[0].reasons[0].field, "config-hash", "{actions:?}");
    }

    /// A container the plan was asked to inspect (its restart policy) that could not be read
    /// keeps its action, and the plan says so: in a note, and to the watch, which inspects it
    /// again (a `docker update` it had is not forgotten).
    #[tokio::test]
    async fn a_container_whose_inspect_failed_is_noted_and_kept_for_the_next_plan() {
        let spec = ldap_a();
        let engine = Fake {
            listed: vec![up_to_date(&spec)],
            inspect_fails: Some(crate::engine::ErrorKind::Timeout),
            ..Fake::default()
        };
        let o = inspected_plan(&spec, &engine).await;
        assert_eq!(o.actions[0].action, ActionKind::Noop, "{:?}", o.actions);
        assert_eq!(o.uninspected, ["0123456789abcdef"]);
        assert!(
            o.notes[0].starts_with(&format!(
                "container `{}` could not be inspected, so its restart policy was not checked",
                spec.name
            )),
            "{:?}",
            o.notes
        );
    }

    /// An outpost on another container's network namespace, with nothing to do, is inspected
    /// once for its start time; `--inspect` reads its restart policy from that inspect
    /// instead of asking the engine again.
    #[tokio::test]
    async fn an_outpost_on_a_shared_namespace_is_inspected_once() {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\n\
             outposts:\n  A:\n    type: ldap\n    integration: local\n    token: { file: token }\n    \
             config: { docker_network: \"container:vpn\", docker_map_ports: false }\n",
        );
        let spec = v.desired["local"][0].clone();
        let mut current = up_to_date(&spec);
        current.networks.clear();
        // The Fake's inspect of `vpn` answers the id `id-of-vpn`: the namespace it joined.
        current.network_mode = Some("container:id-of-vpn".into());
        let id = current.id.clone();
        let engine = Fake {
            listed: vec![current],
            inspected_labels: [("vpn", ()), (id.as_str(), ())]
                .into_iter()
                .map(|(k, ())| (k.to_string(), BTreeMap::new()))
                .collect(),
            ..Fake::default()
        };
        let o = inspected_plan(&spec, &engine).await;
        // The Fake's restart policy is empty: `--inspect` found it changed, from that inspect.
        assert_eq!(o.actions[0].action, ActionKind::Recreate, "{:?}", o.actions);
        assert!(
            o.actions[0]
                .reasons
                .iter()
                .any(|r| r.field == diff::RESTART_POLICY_FIELD),
            "{:?}",
            o.actions
        );
        assert_eq!(
            engine.inspects.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one inspect of `vpn`, one of the outpost's container"
        );
    }

    /// Integration `b`'s url moved to another engine while `a` still reaches the one it was
    /// on: `a` removes the container `b` left there (its outpost runs on `b`'s new engine),
    /// once. While `b` reaches the same engine (the same daemon ID), or cannot be planned,
    /// the container is `b`'s and `a` leaves it alone.
    #[tokio::test]
    async fn an_integrations_containers_left_on_an_engine_it_no_longer_reaches_are_removed() {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  a: { local: true }\n  \
             b: { url: \"http://127.0.0.1:2375\" }\n  c: { url: \"http://127.0.0.1:2385\" }\n\
             outposts:\n  X:\n    type: ldap\n    integration: b\n    token: { file: token }\n",
        );
        let spec = v.desired["b"][0].clone();
        let left = crate::engine::fake::outposts_container(&spec, "b", &spec.config_hash);
        // `a` and `c` reach the old engine (AAAA); `b` the daemon `b_on`.
        let engines = |b_on: Option<&str>| -> Engines {
            let fake = |id: &str, listed: Vec<Observed>| {
                Ok(Arc::new(Fake {
                    daemon_id: Some(id.into()),
                    listed,
                    networks: Some(vec!["bridge".into()]),
                    ..Fake::default()
                }) as Arc<dyn Engine>)
            };
            BTreeMap::from([
                ("a".to_string(), fake("AAAA", vec![left.clone()])),
                (
                    "b".to_string(),
                    match b_on {
                        Some(id) if id == "AAAA" => fake(id, vec![left.clone()]),
                        Some(id) => fake(id, Vec::new()),
                        None => Err(EngineError::new(
                            crate::engine::ErrorKind::Unreachable,
                            "down in this test",
                        )),
                    },
                ),
                ("c".to_string(), fake("AAAA", vec![left.clone()])),
            ])
        };
        let actions_of = |plan: &Plan, i: &str| {
            plan.integrations
                .iter()
                .find(|e| e.name == i)
                .map(|e| {
                    e.actions
                        .iter()
                        .map(|a| (a.action, a.container.as_ref().map(|c| c.id.clone())))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };

        let moved = build(&v, &engines(Some("BBBB")), DiffOptions::default()).await;
        let removal = (ActionKind::Remove, Some("0ld".to_string()));
        assert_eq!(
            actions_of(&moved, "a"),
            std::slice::from_ref(&removal),
            "{moved:?}"
        );
        assert_eq!(actions_of(&moved, "c"), [], "removed twice: {moved:?}");
        assert_eq!(
            actions_of(&moved, "b"),
            [(ActionKind::Create, None)],
            "{moved:?}"
        );
        let a = &moved.integrations[0].actions[0];
        assert_eq!(
            a.reasons[0].after.as_deref(),
            Some("integration `b` reaches another engine now"),
            "{a:?}"
        );

        for b_on in [Some("AAAA"), None] {
            let plan = build(&v, &engines(b_on), DiffOptions::default()).await;
            assert_eq!(actions_of(&plan, "a"), [], "{b_on:?}: {plan:?}");
            assert_eq!(actions_of(&plan, "c"), [], "{b_on:?}: {plan:?}");
        }

        // An outpost of `a` wanting that container's name: blocked until it is gone, and told
        // that this apply removes it.
        let mut v = v;
        let mut y = spec.clone();
        y.outpost = "Y".into();
        y.uuid = "0ther-uuid".into();
        v.desired.insert("a".into(), vec![y]);
        let plan = build(&v, &engines(Some("BBBB")), DiffOptions::default()).await;
        assert_eq!(
            actions_of(&plan, "a"),
            [(ActionKind::Blocked, Some("0ld".to_string())), removal],
            "{plan:?}"
        );
        let blocked = plan.integrations[0].actions[0].error.as_deref();
        assert!(
            blocked.is_some_and(|e| e.contains(
                "which integration `b` left on this engine (it reaches another engine now): this apply removes it; apply again"
            )),
            "{blocked:?}"
        );
    }

    /// An outpost moved to an integration on another engine where its create is blocked
    /// (its image missing there, `pull: never`): the container it left keeps running (it
    /// was removed, and the outpost ran nowhere); once the create can be made, it goes.
    #[tokio::test]
    async fn a_move_to_an_engine_where_the_outpost_is_blocked_keeps_its_container() {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  a: { local: true }\n  \
             b: { url: \"http://127.0.0.1:2375\" }\noutposts:\n  X:\n    type: ldap\n    \
             integration: b\n    token: { file: token }\n    pull: never\n",
        );
        let spec = v.desired["b"][0].clone();
        let left = crate::engine::fake::outposts_container(&spec, "a", "0ld");
        let engines = |images: Vec<String>| -> Engines {
            BTreeMap::from([
                (
                    "a".to_string(),
                    Ok(Arc::new(Fake {
                        daemon_id: Some("AAAA".into()),
                        listed: vec![left.clone()],
                        ..Fake::default()
                    }) as Arc<dyn Engine>),
                ),
                (
                    "b".to_string(),
                    Ok(Arc::new(Fake {
                        daemon_id: Some("BBBB".into()),
                        images: Some(images),
                        networks: Some(vec!["bridge".into()]),
                        ..Fake::default()
                    }) as Arc<dyn Engine>),
                ),
            ])
        };
        let kinds = |plan: &Plan, i: &str| -> Vec<ActionKind> {
            plan.integrations
                .iter()
                .filter(|e| e.name == i)
                .flat_map(|e| e.actions.iter().map(|a| a.action))
                .collect()
        };
        let blocked = build(&v, &engines(Vec::new()), DiffOptions::default()).await;
        assert_eq!(kinds(&blocked, "b"), [ActionKind::Blocked], "{blocked:?}");
        assert_eq!(
            kinds(&blocked, "a"),
            [],
            "removed though blocked there: {blocked:?}"
        );

        let ready = build(
            &v,
            &engines(vec![spec.image.clone()]),
            DiffOptions::default(),
        )
        .await;
        assert_eq!(kinds(&ready, "b"), [ActionKind::Create], "{ready:?}");
        assert_eq!(kinds(&ready, "a"), [ActionKind::Remove], "{ready:?}");
    }

    /// Outpost A (ldap) on the local engine, project `p`.
    fn ldap_a() -> ContainerSpec {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\n\
             outposts:\n  A:\n    type: ldap\n    integration: local\n    token: { file: token }\n",
        );
        v.desired["local"][0].clone()
    }

    /// `ldap_a` on `network`.
    fn on_network(network: &str) -> ContainerSpec {
        let v = validated(&format!(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\n  docker_network: {network}\nintegrations:\n  \
             local: {{ local: true }}\noutposts:\n  A:\n    type: ldap\n    integration: local\n    \
             token: {{ file: token }}\n"
        ));
        v.desired["local"][0].clone()
    }

    /// This project's running container of `spec`, made from another config.
    fn outdated(spec: &ContainerSpec) -> Observed {
        observed(
            "0123456789abcdef",
            &spec.name,
            State::Running,
            &[
                (LABEL_UUID, spec.uuid.as_str()),
                (LABEL_PROJECT, "p"),
                (LABEL_MANAGED_BY, "outpostctl"),
                (LABEL_INTEGRATION, "local"),
                (LABEL_CONFIG_HASH, "0ld"),
            ],
        )
    }

    /// This project's running container of `spec`, made from its config.
    fn up_to_date(spec: &ContainerSpec) -> Observed {
        let mut current = outdated(spec);
        current
            .labels
            .insert(LABEL_CONFIG_HASH.to_string(), spec.config_hash.clone());
        current
    }

    /// The plan of `spec` on `engine` with `--inspect`; panics if the engine's plan fails.
    async fn inspected_plan(spec: &ContainerSpec, engine: &Fake) -> EngineOutcome {
        let opts = DiffOptions {
            inspect: diff::Inspect::All,
            ..DiffOptions::default()
        };
        match plan_engine("p", std::slice::from_ref(spec), engine, opts).await {
            Ok(o) => o,
            Err(e) => panic!("the engine's plan failed: {e}"),
        }
    }

    /// The plan of `desired` on `engine` (project `p`); panics if the engine's plan fails.
    async fn outcome_on(desired: &[ContainerSpec], engine: &Fake) -> EngineOutcome {
        match plan_engine("p", desired, engine, DiffOptions::default()).await {
            Ok(o) => o,
            Err(e) => panic!("the engine's plan failed: {e}"),
        }
    }

    async fn actions_on(spec: &ContainerSpec, engine: &Fake) -> Vec<Action> {
        outcome_on(std::slice::from_ref(spec), engine).await.actions
    }

    /// A create onto a network the engine does not have is blocked, naming it; one that
    /// exists (by name or id prefix) is not; the network list is read only when no listed
    /// container shows the network, and an engine that refuses it leaves the create alone.
    #[tokio::test]
    async fn a_create_onto_a_missing_network_is_blocked() {
        let spec = on_network("traefik");
        let engine = |networks: Option<&[&str]>| Fake {
            networks: networks.map(|n| n.iter().map(|s| s.to_string()).collect()),
            ..Fake::default()
        };
        let missing = engine(Some(&["bridge", "host", "none"]));
        let a = &actions_on(&spec, &missing).await[0];
        assert_eq!(a.action, ActionKind::Blocked);
        let error = a.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("network `traefik` does not exist")
                && error.contains("docker network create traefik"),
            "{error}"
        );

        let present = engine(Some(&["bridge", "traefik"]));
        assert_eq!(
            actions_on(&spec, &present).await[0].action,
            ActionKind::Create
        );
        // The fake's ids are the names reversed: `kifeart` begins with `kif`.
        let by_id = on_network("kif");
        assert_eq!(
            actions_on(&by_id, &present).await[0].action,
            ActionKind::Create
        );

        let refused = engine(None);
        assert_eq!(
            actions_on(&spec, &refused).await[0].action,
            ActionKind::Create
        );

        let mut seen = engine(Some(&[]));
        let mut other = observed("0123456789abcdef", "web", State::Running, &[]);
        other.networks = vec!["traefik".into()];
        seen.listed = vec![other];
        assert_eq!(actions_on(&spec, &seen).await[0].action, ActionKind::Create);
        assert_eq!(
            seen.network_reads
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "a network a listed container is on needs no request"
        );
        assert_eq!(
            actions_on(&on_network("bridge"), &missing).await[0].action,
            ActionKind::Create
        );
    }

    /// A recreate onto a missing network is blocked with its reasons kept, and its container
    /// stays claimed: another integration on the same engine does not remove it as an orphan.
    #[tokio::test]
    async fn a_recreate_onto_a_missing_network_keeps_its_container() {
        let spec = on_network("traefik");
        let mut live = outdated(&spec);
        live.networks = vec!["bridge".into()];
        let engine = Fake {
            listed: vec![live],
            networks: Some(vec!["bridge".into()]),
            ..Fake::default()
        };
        let mut actions = actions_on(&spec, &engine).await;
        assert_eq!(actions[0].action, ActionKind::Blocked, "{actions:?}");
        assert!(!actions[0].reasons.is_empty(), "{actions:?}");
        let mut orphan = actions[0].clone();
        orphan.action = ActionKind::Remove;
        orphan.reasons = vec![Change::new(
            "outpost",
            Some("in the manifests".into()),
            None,
        )];
        let mut other = vec![orphan];
        diff::keep_what_another_keeps(&mut [&mut actions, &mut other], &Default::default());
        assert!(
            other.is_empty(),
            "the blocked outpost's container was removed: {other:?}"
        );
    }

    fn bound(ip: &str, port: u16, proto: &str) -> crate::engine::HostPort {
        crate::engine::HostPort {
            ip: ip.into(),
            port,
            proto: proto.into(),
        }
    }

    #[test]
    fn ports_overlap_on_the_same_address_or_every_address_of_its_family() {
        // (wanted address, port, protocol; held address, port, protocol; clash)
        let cases = [
            ("", 9000, Proto::Tcp, "0.0.0.0", 9000, "tcp", true),
            ("", 9000, Proto::Tcp, "::1", 9000, "tcp", true),
            ("127.0.0.1", 9000, Proto::Tcp, "0.0.0.0", 9000, "tcp", true),
            ("0.0.0.0", 9000, Proto::Tcp, "127.0.0.1", 9000, "tcp", true),
            (
                "127.0.0.1",
                9000,
                Proto::Tcp,
                "127.0.0.1",
                9000,
                "tcp",
                true,
            ),
            (
                "127.0.0.1",
                9000,
                Proto::Tcp,
                "127.0.0.2",
                9000,
                "tcp",
                false,
            ),
            ("127.0.0.1", 9000, Proto::Tcp, "::", 9000, "tcp", false),
            ("", 9000, Proto::Tcp, "0.0.0.0", 9001, "tcp", false),
            ("", 1812, Proto::Udp, "0.0.0.0", 1812, "tcp", false),
        ];
        for (ip, port, proto, held_ip, held_port, held_proto, clash) in cases {
            let want = crate::desired::PortBinding {
                container_port: port,
                proto,
                host_ip: ip.into(),
                host_port: port,
            };
            assert_eq!(
                port_overlaps(&want, &bound(held_ip, held_port, held_proto)),
                clash,
                "{ip}:{port}/{} against {held_ip}:{held_port}/{held_proto}",
                proto.as_str()
            );
        }
    }

    /// The container of a proxy outpost `Web` on `local` (authentik's ports 9000 and 9443).
    fn web_proxy() -> ContainerSpec {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\n\
             outposts:\n  Web:\n    type: proxy\n    integration: local\n    token: { file: token }\n",
        );
        v.desired["local"][0].clone()
    }

    /// A proxy outpost publishing 9000 and 9443 (authentik's default) beside a container that
    /// holds 9443 (Portainer's port, say): the create is blocked, naming it; not when that
    /// container is stopped, is this project's, or is the one adopted for the outpost.
    #[tokio::test]
    async fn a_create_onto_a_host_port_a_running_container_holds_is_blocked() {
        let spec = web_proxy();
        assert!(
            !spec.ports.is_empty(),
            "authentik maps the proxy's ports by default"
        );
        let holder = |state, labels: &[(&str, &str)]| {
            let mut o = observed("0123456789abcdef", "portainer", state, labels);
            o.host_ports = vec![bound("0.0.0.0", 9443, "tcp"), bound("::", 9443, "tcp")];
            Fake {
                listed: vec![o],
                ..Fake::default()
            }
        };
        let a = &actions_on(&spec, &holder(State::Running, &[])).await[0];
        assert_eq!(a.action, ActionKind::Blocked, "{a:?}");
        let error = a.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("host port 9443/tcp is taken by container `portainer` (0123456789ab)")
                && error.contains("which outpostctl does not manage"),
            "{error}"
        );
        let other = &actions_on(&spec, &holder(State::Running, &[(LABEL_PROJECT, "q")])).await[0];
        assert!(
            other
                .error
                .as_deref()
                .unwrap_or_default()
                .contains("of outpostctl project `q`"),
            "{other:?}"
        );
        // On the host's network Docker publishes nothing: no port of its own to clash.
        let mut on_host = spec.clone();
        on_host.network = Some("host".into());
        let host = &actions_on(&on_host, &holder(State::Running, &[])).await[0];
        assert_eq!(host.action, ActionKind::Create, "{host:?}");
        let stopped = &actions_on(&spec, &holder(State::Exited, &[])).await[0];
        assert_eq!(stopped.action, ActionKind::Create);
        let ours = &actions_on(&spec, &holder(State::Running, &[(LABEL_PROJECT, "p")])).await[0];
        assert_eq!(ours.action, ActionKind::Create, "{ours:?}");

        let adopted = holder(State::Running, &[(LABEL_UUID, spec.uuid.as_str())]);
        let opts = DiffOptions {
            adopt: true,
            ..DiffOptions::default()
        };
        let planned = plan_engine("p", std::slice::from_ref(&spec), &adopted, opts).await;
        let actions = planned.map(|o| o.actions).unwrap_or_default();
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert_eq!(actions[0].action, ActionKind::Recreate, "{actions:?}");
        assert!(actions[0].adopt);
    }

    /// `watch --no-prune` holds back the removal of a container whose outpost left the
    /// manifests: it keeps its name and its host ports, so an outpost that needs either is
    /// blocked, saying the removal is pending, instead of a create that fails at apply. The
    /// removal is still planned (the watch reports it pending).
    #[tokio::test]
    async fn held_back_removals_keep_their_names_and_ports() {
        let spec = web_proxy();
        let orphan = |name: &str, ports: bool| {
            let mut o = observed(
                "0123456789abcdef",
                name,
                State::Running,
                &[
                    (LABEL_UUID, "0000000000000000000000000000000a"),
                    (LABEL_PROJECT, "p"),
                    (LABEL_MANAGED_BY, "outpostctl"),
                    (LABEL_INTEGRATION, "local"),
                    (LABEL_OUTPOST, "Old Web"),
                ],
            );
            if ports {
                o.host_ports = vec![bound("0.0.0.0", 9443, "tcp")];
            }
            Fake {
                listed: vec![o],
                ..Fake::default()
            }
        };
        let plan = |engine: Fake, keep_orphans: bool| {
            let spec = spec.clone();
            async move {
                let opts = DiffOptions {
                    keep_orphans,
                    ..DiffOptions::default()
                };
                let planned = plan_engine("p", std::slice::from_ref(&spec), &engine, opts).await;
                planned.map(|o| o.actions).unwrap_or_default()
            }
        };
        let kinds = |actions: &[Action]| actions.iter().map(|a| a.action).collect::<Vec<_>>();

        // Its host port.
        let pruned = plan(orphan("ak-outpost-old-web", true), false).await;
        assert_eq!(kinds(&pruned), [ActionKind::Create, ActionKind::Remove]);
        let kept = plan(orphan("ak-outpost-old-web", true), true).await;
        assert_eq!(kinds(&kept), [ActionKind::Blocked, ActionKind::Remove]);
        let error = kept[0].error.as_deref().unwrap_or_default();
        assert!(
            error.contains("host port 9443/tcp is taken by container `ak-outpost-old-web`")
                && error.contains("of outpost `Old Web`, which left the manifests and whose removal is pending (--no-prune)"),
            "{error}"
        );

        // Its name.
        let pruned = plan(orphan(&spec.name, false), false).await;
        assert_eq!(kinds(&pruned), [ActionKind::Create, ActionKind::Remove]);
        let kept = plan(orphan(&spec.name, false), true).await;
        assert_eq!(kinds(&kept), [ActionKind::Blocked, ActionKind::Remove]);
        let error = kept[0].error.as_deref().unwrap_or_default();
        assert!(
            error.contains(&format!("the name `{}` is taken", spec.name))
                && error.contains("its removal is pending (--no-prune)"),
            "{error}"
        );
    }

    /// An interrupted recreate left the outpost's container stopped beside the parked previous
    /// one; now its port is taken: the start is blocked and the previous container is kept
    /// (not removed as a duplicate while the outpost has nothing else that could run).
    #[tokio::test]
    async fn a_blocked_outpost_keeps_its_parked_previous_container() {
        let spec = web_proxy();
        let ours = |id: &str, name: &str, created: i64| {
            let mut o = observed(
                id,
                name,
                State::Exited,
                &[
                    (LABEL_UUID, spec.uuid.as_str()),
                    (LABEL_PROJECT, "p"),
                    (LABEL_MANAGED_BY, "outpostctl"),
                    (LABEL_INTEGRATION, "local"),
                    (LABEL_CONFIG_HASH, spec.config_hash.as_str()),
                ],
            );
            o.created = created;
            o
        };
        let mut squatter = observed("fedcba9876543210", "portainer", State::Running, &[]);
        squatter.host_ports = vec![bound("0.0.0.0", 9000, "tcp")];
        // The new container names the one it replaces, as a recreate makes it.
        let mut new = ours("1111111111111111", &spec.name, 200);
        new.labels.insert(
            crate::desired::LABEL_REPLACES.to_string(),
            "2222222222222222".to_string(),
        );
        let listed = vec![
            new,
            ours(
                "2222222222222222",
                &format!("{}-outpostctl-old", spec.name),
                100,
            ),
            squatter,
        ];
        let free = Fake {
            listed: listed[..2].to_vec(),
            ..Fake::default()
        };
        let unblocked = actions_on(&spec, &free).await;
        assert!(
            unblocked.iter().any(|a| a.action == ActionKind::Remove),
            "the test needs a duplicate to remove: {unblocked:?}"
        );
        let taken = Fake {
            listed,
            ..Fake::default()
        };
        let actions = actions_on(&spec, &taken).await;
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert_eq!(actions[0].action, ActionKind::Blocked, "{actions:?}");
    }

    /// Each blocked outpost says what would let it go ahead, for the watch: the container
    /// holding its host port, the container (and name) in its way, its missing network, its
    /// missing image. An outpost that is not blocked waits for nothing.
    #[tokio::test]
    async fn a_blocked_outpost_says_what_would_unblock_it() {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\n\
             outposts:\n  Web:\n    type: proxy\n    integration: local\n    token: { file: token }\n  \
             Netless:\n    type: ldap\n    integration: local\n    token: { file: token }\n    \
             config: { docker_network: traefik }\n  \
             Strict:\n    type: radius\n    integration: local\n    token: { file: token }\n    \
             pull: never\n    config: { container_image: \"example/radius:absent\" }\n  \
             Named:\n    type: rac\n    integration: local\n    token: { file: token }\n  \
             Fine:\n    type: rac\n    integration: local\n    token: { file: token }\n    \
             pull: never\n    config: { container_image: \"example/rac:here\" }\n",
        );
        let desired = &v.desired["local"];
        let name_of = |outpost: &str| match desired.iter().find(|d| d.outpost == outpost) {
            Some(d) => d.name.clone(),
            None => panic!("no outpost {outpost}"),
        };
        let mut portainer = observed("0123456789abcdef", "portainer", State::Running, &[]);
        portainer.host_ports = vec![bound("0.0.0.0", 9443, "tcp")];
        let squatter = observed("fedcba9876543210", &name_of("Named"), State::Exited, &[]);
        let engine = Fake {
            listed: vec![portainer, squatter],
            networks: Some(vec!["bridge".into(), "host".into(), "none".into()]),
            images: Some(vec!["example/rac:here".into()]),
            ..Fake::default()
        };
        let planned = outcome_on(desired, &engine).await;
        let blocked: BTreeSet<&str> = planned
            .actions
            .iter()
            .filter(|a| a.action == ActionKind::Blocked)
            .map(|a| a.outpost.as_str())
            .collect();
        assert_eq!(
            blocked,
            BTreeSet::from(["Named", "Netless", "Strict", "Web"]),
            "{:?}",
            planned.actions
        );
        assert_eq!(
            planned.unblocks,
            vec![
                Unblock::Container("0123456789abcdef".into()),
                Unblock::Container("fedcba9876543210".into()),
                Unblock::Name(name_of("Named")),
                Unblock::Network("traefik".into()),
                Unblock::Image("example/radius:absent".into()),
            ]
        );

        // Nothing blocked, nothing to wait for.
        let free = Fake {
            networks: Some(vec!["traefik".into()]),
            images: Some(vec![
                "example/rac:here".into(),
                "example/radius:absent".into(),
            ]),
            ..Fake::default()
        };
        let planned = outcome_on(desired, &free).await;
        assert!(
            planned
                .actions
                .iter()
                .all(|a| a.action == ActionKind::Create),
            "{:?}",
            planned.actions
        );
        assert!(planned.unblocks.is_empty(), "{:?}", planned.unblocks);
    }

    /// An outpost blocked for several reasons shows them all at once (every port a container
    /// takes, its missing network, its missing image), so that one round of fixes is enough;
    /// and waits for any of them to move.
    #[tokio::test]
    async fn an_outpost_blocked_for_several_reasons_shows_them_all() {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\n\
             outposts:\n  Web:\n    type: proxy\n    integration: local\n    token: { file: token }\n    \
             pull: never\n    config: { docker_network: traefik, container_image: \"example/proxy:absent\" }\n",
        );
        let spec = v.desired["local"][0].clone();
        let mut portainer = observed("0123456789abcdef", "portainer", State::Running, &[]);
        portainer.host_ports = vec![bound("0.0.0.0", 9000, "tcp"), bound("0.0.0.0", 9443, "tcp")];
        let engine = Fake {
            listed: vec![portainer],
            networks: Some(vec!["bridge".into()]),
            images: Some(Vec::new()),
            ..Fake::default()
        };
        let planned = outcome_on(&[spec], &engine).await;
        let [a] = planned.actions.as_slice() else {
            panic!("{:?}", planned.actions)
        };
        assert_eq!(a.action, ActionKind::Blocked);
        assert_eq!(
            a.error.as_deref().unwrap_or_default(),
            "host ports 9000/tcp, 9443/tcp are taken by container `portainer` (0123456789ab), \
             which outpostctl does not manage: free them, or give this outpost other ports with \
             `ports:`; also, network `traefik` does not exist on this engine: create it first \
             (`docker network create traefik`), or fix `docker_network`; also, image \
             `example/proxy:absent` is not on this engine and `pull: never` forbids pulling it: \
             load or pull it there first (`docker pull example/proxy:absent`), or set `pull: missing`"
        );
        assert_eq!(
            planned.unblocks,
            vec![
                Unblock::Container("0123456789abcdef".into()),
                Unblock::Network("traefik".into()),
                Unblock::Image("example/proxy:absent".into()),
            ]
        );
    }
}
