//! Desired versus observed, for one engine: pure, no I/O.
//!
//! A live container belongs to an outpost when its `io.goauthentik.outpost-uuid` label
//! matches; the name is only a fallback. A container is ours only when it carries this
//! project's label, and only ours are ever changed: anything else in the way is an error that
//! names it (or, with `--adopt`, a container authentik deployed for the same outpost is taken
//! over).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::desired::{
    ContainerSpec, LABEL_CONFIG_HASH, LABEL_FALLBACK, LABEL_IMAGE, LABEL_INTEGRATION,
    LABEL_MANAGED_BY, LABEL_OUTPOST, LABEL_PROJECT, LABEL_REPLACES, LABEL_UUID,
};

/// Labels outpostctl keeps for itself that say nothing about the container's settings.
fn bookkeeping(label: &str) -> bool {
    label == LABEL_CONFIG_HASH
        || label == LABEL_REPLACES
        || label == LABEL_FALLBACK
        || label == LABEL_IMAGE
}
use crate::engine::{Health, Inspected, Observed, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// No container yet.
    Create,
    /// The container's settings differ: replace it.
    Recreate,
    /// Only the name differs (the naming template changed): rename in place.
    Rename,
    /// Stopped or exited: start it.
    Start,
    /// Paused: unpause it.
    Unpause,
    /// Running but unhealthy, as authentik does: restart it.
    Restart,
    /// Ours, but its outpost left the manifests (or a leftover duplicate).
    Remove,
    /// Nothing to do.
    Noop,
    /// Something not ours is in the way; nothing is done.
    Blocked,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Create => "create",
            ActionKind::Recreate => "recreate",
            ActionKind::Rename => "rename",
            ActionKind::Start => "start",
            ActionKind::Unpause => "unpause",
            ActionKind::Restart => "restart",
            ActionKind::Remove => "remove",
            ActionKind::Noop => "no change",
            ActionKind::Blocked => "blocked",
        }
    }
    pub fn is_change(self) -> bool {
        !matches!(self, ActionKind::Noop | ActionKind::Blocked)
    }
}

/// A field that differs: what it is, and what it will be. Secrets are never shown, only
/// `(changed)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl Change {
    pub fn new(field: impl Into<String>, before: Option<String>, after: Option<String>) -> Change {
        Change {
            field: field.into(),
            before,
            after,
        }
    }
}

/// An existing container an action works on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    pub id: String,
    pub name: String,
}

impl ContainerRef {
    fn of(o: &Observed) -> ContainerRef {
        ContainerRef {
            id: o.id.clone(),
            name: o.name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub outpost: String,
    pub action: ActionKind,
    /// The container's name after the action (its current name for a removal).
    pub name: String,
    /// The live container acted on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Change>,
    /// Takes over a container authentik deployed (`--adopt`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
    /// Why the action is blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Options that change what a diff may do.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    pub adopt: bool,
    /// The integration being planned. Several integrations may reach one engine (the socket
    /// and a socket proxy, say): each owns only the containers labelled with its name, plus
    /// unlabelled ones and those of integrations no longer in the set.
    pub integration: Option<String>,
    /// Every integration of the set.
    pub integrations: BTreeSet<String>,
    /// Which of its containers the plan also inspects, for what the list does not show.
    pub inspect: Inspect,
    /// The integration each outpost uuid of the set is on: a container of this project whose
    /// outpost is wanted on another integration is removed here only if that one takes it
    /// over, or has failed this time (see `keep_what_another_keeps`).
    pub placed: std::sync::Arc<HashMap<String, String>>,
    /// `watch --no-prune`: the removals of containers of outposts that left the manifests are
    /// held back (still planned, then dropped), so those containers keep their names and host
    /// ports: an outpost that needs one is blocked, saying so, instead of a create that fails.
    pub keep_orphans: bool,
}

/// Containers a plan inspects although the list shows nothing to change: the list does not
/// carry a container's restart policy, which `docker update --restart` changes in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Inspect {
    /// None (the default: a no-change plan costs one list, whatever the number of outposts).
    #[default]
    Nothing,
    /// Every container the plan keeps (`plan --inspect`: one request per container).
    All,
    /// Every container of these integrations, and these container ids (the watch: engines it
    /// has not inspected since their events are watched; containers the engine reported
    /// updated).
    Only {
        integrations: BTreeSet<String>,
        ids: BTreeSet<String>,
    },
}

impl Inspect {
    pub fn covers(&self, integration: Option<&str>, id: &str) -> bool {
        match self {
            Inspect::Nothing => false,
            Inspect::All => true,
            Inspect::Only { integrations, ids } => {
                ids.contains(id) || integration.is_some_and(|i| integrations.contains(i))
            }
        }
    }
}

/// The label Docker puts on a Swarm service's task containers.
const LABEL_SWARM_SERVICE: &str = "com.docker.swarm.service.name";

/// The reason of a recreate for a restart policy changed by hand.
pub const RESTART_POLICY_FIELD: &str = "restart_policy";

/// Actions on a kept container that a restart policy changed by hand turns into a recreate
/// (the recreate also starts, renames or restarts it). Left alone: an unpause (the next plan
/// sees the running container) and a no-op with a reason (a container being removed).
pub fn keeps_container(a: &Action) -> bool {
    match a.action {
        ActionKind::Start | ActionKind::Restart | ActionKind::Rename => true,
        ActionKind::Noop => a.reasons.is_empty(),
        _ => false,
    }
}

impl DiffOptions {
    /// Whether `o` is this integration's to change (given it is this project's).
    fn in_scope(&self, o: &Observed) -> bool {
        match (o.label(LABEL_INTEGRATION), &self.integration) {
            (Some(theirs), Some(mine)) => theirs == mine || !self.integrations.contains(theirs),
            _ => true,
        }
    }
}

/// The actions for one engine, in the order they are shown: by outpost name, removals last.
pub fn diff(
    project: &str,
    desired: &[ContainerSpec],
    observed: &[Observed],
    opts: DiffOptions,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let desired_uuids: HashSet<&str> = desired.iter().map(|d| d.uuid.as_str()).collect();
    let ours = |o: &Observed| o.label(LABEL_PROJECT) == Some(project) && opts.in_scope(o);
    // This project's containers that another integration of the set manages.
    let sibling = |o: &Observed| o.label(LABEL_PROJECT) == Some(project) && !opts.in_scope(o);
    // Names that a removal or rename in this plan frees (none when removals are held back).
    let orphan = |o: &Observed| {
        ours(o)
            && o.label(LABEL_UUID)
                .is_none_or(|u| !desired_uuids.contains(u))
    };
    let freed: HashSet<&str> = observed
        .iter()
        .filter(|o| orphan(o) && !opts.keep_orphans)
        .map(|o| o.name.as_str())
        .collect();
    // Indexes, so that a plan of n outposts over m containers is O(n + m), not O(n * m).
    let mut by_uuid: HashMap<&str, Vec<&Observed>> = HashMap::new();
    let mut by_name: HashMap<&str, Vec<&Observed>> = HashMap::new();
    for o in observed {
        if let Some(u) = o.label(LABEL_UUID) {
            by_uuid.entry(u).or_default().push(o);
        }
        by_name.entry(o.name.as_str()).or_default().push(o);
    }
    let named = |name: &str| by_name.get(name).map(Vec::as_slice).unwrap_or_default();
    // Which of an outpost's containers is the one it keeps: the one already right, then a
    // running one, then the newest.
    let preference = |spec: &ContainerSpec, o: &Observed| {
        (
            o.label(LABEL_CONFIG_HASH) != Some(spec.config_hash.as_str()),
            o.state != State::Running,
            std::cmp::Reverse(o.created),
        )
    };
    // Containers that give up their names in this plan: each outpost's own, when its name
    // is to change (a naming template changed, outposts swapping names). Another outpost may
    // take such a name (apply first moves the container out of its way); one that turns out
    // not to move (blocked, here or by the plan's checks after) keeps it, and blocks the
    // other in turn (`keep_names_of_what_stays`, once every check has run).
    let vacating: HashSet<&str> = desired
        .iter()
        .filter_map(|spec| {
            let current = by_uuid
                .get(spec.uuid.as_str())?
                .iter()
                .copied()
                .filter(|o| ours(o))
                .min_by_key(|o| preference(spec, o))?;
            (current.name != spec.name && current.state != State::Removing)
                .then_some(current.id.as_str())
        })
        .collect();

    for spec in desired {
        // Every container with this outpost's uuid.
        let with_uuid: &[&Observed] = by_uuid
            .get(spec.uuid.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut same_uuid: Vec<&Observed> =
            with_uuid.iter().copied().filter(|o| !sibling(o)).collect();
        same_uuid.sort_by_key(|o| preference(spec, o));
        // Another container holding the name this outpost's container must get (not one
        // this plan removes: removals run first; nor one it moves to another name).
        let taken = |current: &Observed, removed: &[&Observed]| {
            named(&spec.name).iter().copied().find(|o| {
                o.id != current.id
                    && !freed.contains(o.name.as_str())
                    && !vacating.contains(o.id.as_str())
                    && !removed.iter().any(|r| r.id == o.id)
            })
        };
        // This outpost's container, made by another integration of the set that reaches the
        // same engine: the outpost moved here from there (a uuid belongs to one outpost).
        let moved = with_uuid
            .iter()
            .copied()
            .find(|o| sibling(o) && o.state != State::Removing);
        let (mine, foreign): (Vec<&Observed>, Vec<&Observed>) =
            same_uuid.into_iter().partition(|o| ours(o));
        // Several of this integration's containers for one outpost are the leftovers of an
        // interrupted recreate only when each replaced another (`outpostctl.replaces`): any
        // other is a copy made by hand (Portainer's duplicate, `docker commit` and `run`,
        // which keep the labels), and outpostctl does not choose between them.
        let unlinked = mine.first().map(|first| unlinked_copies(first, &mine));
        let action = if let Some(copies) = unlinked.filter(|c| !c.is_empty()) {
            let current = mine[0];
            let names: Vec<String> = std::iter::once(current)
                .chain(copies)
                .map(|o| format!("`{}` ({})", o.name, o.short_id()))
                .collect();
            blocked(
                spec,
                current,
                format!(
                    "containers {} all carry this outpost's uuid and this project's labels, and none replaced the others: a copy made by hand? outpostctl changes none of them: remove the ones that are not the outpost's",
                    names.join(", ")
                ),
            )
        } else if let Some(current) = mine.first() {
            // Leftovers of an interrupted recreate: one container per outpost.
            for extra in &mine[1..] {
                actions.push(duplicate(spec, extra, format!("kept {}", current.name)));
            }
            // A recreate that took a container over, interrupted after the create: one that
            // was adopted (authentik's, without this project's label; taking it over was
            // agreed with `--adopt` in the run that made ours) or one another integration of
            // the set made on this engine (the outpost moved here). Our container names it in
            // its `outpostctl.replaces` label; finishing the recreate removes it once ours
            // runs. Any other container of this uuid that is not ours is left alone.
            let replaced: HashSet<&str> = mine
                .iter()
                .filter_map(|o| o.label(LABEL_REPLACES))
                .collect();
            let adopted: Vec<&Observed> = with_uuid
                .iter()
                .copied()
                .filter(|o| {
                    (o.label(LABEL_PROJECT).is_none() || sibling(o))
                        && o.state != State::Removing
                        && replaced.contains(o.id.as_str())
                })
                .collect();
            for old in &adopted {
                let how = if sibling(old) {
                    "moved here"
                } else {
                    "adopted"
                };
                let kept = format!("kept {}, which replaced it ({how})", current.name);
                actions.push(duplicate(spec, old, kept));
            }
            let removed: Vec<&Observed> = mine[1..].iter().chain(&adopted).copied().collect();
            // The duplicates are removed first, so the one kept may take their name: after
            // a recreate interrupted once the new container existed, reverting the manifests
            // brings the parked old container back.
            existing(spec, current, false, taken(current, &removed))
        } else if let Some(theirs) = foreign.first() {
            match theirs
                .label(LABEL_PROJECT)
                .map(crate::engine::printable_line)
            {
                Some(other) => blocked(
                    spec,
                    theirs,
                    format!(
                        "container `{}` ({}) carries this outpost's uuid but belongs to outpostctl project `{other}`; outpostctl never changes another project's containers",
                        theirs.name,
                        theirs.short_id()
                    ),
                ),
                // A Swarm task: the service would start a new task for every one taken away.
                None if theirs.label(LABEL_SWARM_SERVICE).is_some() => blocked(
                    spec,
                    theirs,
                    format!(
                        "container `{}` ({}) carries this outpost's uuid but is a task of Swarm service `{}`, which would start it again if outpostctl replaced it; outpostctl does not take over Swarm services: remove the service (`docker service rm`) or the outpost's uuid label from it",
                        theirs.name,
                        theirs.short_id(),
                        shown_label(theirs, LABEL_SWARM_SERVICE)
                    ),
                ),
                None if opts.adopt => existing(spec, theirs, true, taken(theirs, &[])),
                None => blocked(
                    spec,
                    theirs,
                    format!(
                        "container `{}` ({}) carries this outpost's uuid but was not created by outpostctl (authentik deployed it?); rerun with --adopt to take it over",
                        theirs.name,
                        theirs.short_id()
                    ),
                ),
            }
        } else if let Some(from) = moved {
            moved_in(spec, from, taken(from, &[]))
        } else if let Some(in_way) = named(&spec.name)
            .iter()
            .copied()
            .find(|o| !freed.contains(o.name.as_str()) && !vacating.contains(o.id.as_str()))
        {
            let msg = if orphan(in_way) && opts.keep_orphans {
                format!(
                    "the name `{}` is taken by container {} of outpost `{}`, which left the manifests; its removal is pending (--no-prune): remove it (`docker rm -f {}`), or run without --no-prune",
                    spec.name,
                    in_way.short_id(),
                    shown_label(in_way, LABEL_OUTPOST),
                    crate::commands::shell_word(&in_way.name)
                )
            } else if ours(in_way) {
                format!(
                    "the name `{}` is taken by container {} of outpost `{}`",
                    spec.name,
                    in_way.short_id(),
                    shown_label(in_way, LABEL_OUTPOST)
                )
            } else if sibling(in_way) {
                // This project's container of another outpost, managed by another integration
                // of the set that reaches the same engine: two outposts share a name (its
                // outpost is in the manifests), or that outpost left them (that integration
                // removes the container, unless --no-prune keeps it).
                let still_wanted = in_way
                    .label(LABEL_UUID)
                    .is_some_and(|u| opts.placed.contains_key(u));
                let then = if still_wanted {
                    "both outposts are in the manifests and cannot have one name: change `object_naming_template` or rename an outpost"
                } else if opts.keep_orphans {
                    "that outpost left the manifests, and its removal is pending (--no-prune): remove it by hand, or run without --no-prune"
                } else {
                    "that outpost left the manifests: that integration removes the container in this apply (unless it cannot be reached); apply again to create this one"
                };
                format!(
                    "the name `{}` is taken by container {} of outpost `{}`, managed by integration `{}` on the same engine; {then}",
                    spec.name,
                    in_way.short_id(),
                    shown_label(in_way, LABEL_OUTPOST),
                    shown_label(in_way, LABEL_INTEGRATION)
                )
            } else if let Some(other) = in_way.label(LABEL_PROJECT) {
                format!(
                    "a container named `{}` ({}) belongs to outpostctl project `{}`, not this one (`{project}`); outpostctl leaves it alone: remove it, or change `object_naming_template`",
                    spec.name,
                    in_way.short_id(),
                    crate::engine::printable_line(other)
                )
            } else {
                format!(
                    "a container named `{}` ({}) exists and is not managed by outpostctl; outpostctl leaves it alone: remove or rename it, or change `object_naming_template`",
                    spec.name,
                    in_way.short_id()
                )
            };
            blocked(spec, in_way, msg)
        } else {
            Action {
                outpost: spec.outpost.clone(),
                action: ActionKind::Create,
                name: spec.name.clone(),
                container: None,
                reasons: Vec::new(),
                adopt: false,
                error: None,
            }
        };
        actions.push(action);
    }

    for o in observed {
        if ours(o)
            && o.state != State::Removing
            && o.label(LABEL_UUID)
                .is_none_or(|u| !desired_uuids.contains(u))
        {
            // Wanted on another integration of the set (moved there, or its integration
            // renamed): that one takes it over, or it stays (`keep_what_another_keeps`).
            let gone = match o.label(LABEL_UUID).and_then(|u| opts.placed.get(u)) {
                Some(there) => format!("{MOVED_TO}`{there}`"),
                None => "removed from the manifests".into(),
            };
            actions.push(Action {
                outpost: crate::engine::printable_line(o.label(LABEL_OUTPOST).unwrap_or(&o.name)),
                action: ActionKind::Remove,
                name: o.name.clone(),
                container: Some(ContainerRef::of(o)),
                reasons: vec![Change::new(
                    "outpost",
                    Some("in the manifests".into()),
                    Some(gone),
                )],
                adopt: false,
                error: None,
            });
        }
    }
    actions.sort_by(|a, b| {
        (a.action == ActionKind::Remove, &a.outpost, &a.name).cmp(&(
            b.action == ActionKind::Remove,
            &b.outpost,
            &b.name,
        ))
    });
    actions
}

/// Whether `a` gives its outpost's container a name it does not have yet.
pub fn takes_a_name(a: &Action) -> bool {
    matches!(
        a.action,
        ActionKind::Create | ActionKind::Rename | ActionKind::Recreate
    ) && a.container.as_ref().is_none_or(|c| c.name != a.name)
}

/// A name the diff let an outpost take from another outpost's container (`vacating`) is
/// free only if that container moves (is renamed or recreated under its own new name, or
/// removed): when it does not (its outpost is blocked, by the diff or by a check after it),
/// the outpost that wanted the name is blocked too, naming it; and so on, along chains of
/// names. Run once the plan's checks have blocked what would fail.
pub fn keep_names_of_what_stays(actions: &mut [Action], observed: &[Observed]) {
    loop {
        // Containers of this plan's actions that stay where they are, by name.
        let staying: HashMap<&str, &ContainerRef> = actions
            .iter()
            .filter(|a| {
                !matches!(
                    a.action,
                    ActionKind::Rename | ActionKind::Recreate | ActionKind::Remove
                )
            })
            .filter_map(|a| a.container.as_ref())
            .map(|c| (c.name.as_str(), c))
            .collect();
        let blocked: Vec<(usize, &Observed)> = actions
            .iter()
            .enumerate()
            .filter(|(_, a)| takes_a_name(a))
            .filter_map(|(at, a)| {
                let holder = staying.get(a.name.as_str())?;
                let mine = a.container.as_ref().is_some_and(|c| c.id == holder.id);
                let o = observed.iter().find(|o| o.id == holder.id)?;
                (!mine).then_some((at, o))
            })
            .collect();
        if blocked.is_empty() {
            return;
        }
        for (at, o) in blocked {
            let a = &mut actions[at];
            a.error = Some(format!(
                "the name `{}` is taken by container {} of outpost `{}`, which keeps it: that outpost's container cannot move in this plan (see its action)",
                a.name,
                o.short_id(),
                shown_label(o, LABEL_OUTPOST)
            ));
            a.action = ActionKind::Blocked;
            // A create blocked names the container in its way, as the diff's do.
            if a.container.is_none() {
                a.container = Some(ContainerRef::of(o));
            }
        }
    }
}

/// Whether a container is on exactly the spec's network: one connected or disconnected by
/// hand is a change. The list names networks; `docker_network` may also be written as Docker
/// takes it: `default` (the bridge network), a network's id or id prefix (the list shows its
/// name; the container's `NetworkMode` keeps what it was created with), `container:<name>`
/// (the list shows no network, and `NetworkMode` the other container's id; which container
/// is in the config hash).
pub fn networks_match(network: Option<&str>, o: &Observed) -> bool {
    match network {
        // Docker lists a container on no network (disconnected from bridge by hand) with none.
        None | Some("default") => {
            !o.networks.is_empty() && o.networks.iter().all(|x| x == "bridge")
        }
        Some(n) if n.starts_with("container:") => {
            o.networks.is_empty()
                && o.network_mode
                    .as_deref()
                    .is_none_or(|m| m.starts_with("container:"))
        }
        Some(n) => match o.networks.as_slice() {
            [] => false,
            // Created on `n` given by id: its one network is that network, unless one was
            // swapped for it by hand (`NetworkMode` stays as created). A stopped container's
            // network id is not listed: taken as that network until it runs. Docker looks a
            // network up by name first, so a network named like hex (`db`, `cafe`) is `n`
            // by its name.
            [one] if o.network_mode.as_deref() == Some(n) && is_id(n) => {
                one == n
                    || match o.network_ids.first() {
                        Some(id) if !id.is_empty() => id.starts_with(n),
                        _ => true,
                    }
            }
            all => all.iter().all(|x| x == n),
        },
    }
}

/// Whether a `docker_network` reads as a network id or id prefix (lowercase hex).
fn is_id(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// The reason field of a duplicate's removal.
const DUPLICATE: &str = "duplicate";

/// A container's label as a message shows it ("?" when it has none): another writer's label
/// may hold anything, control characters included.
fn shown_label(o: &Observed, key: &str) -> String {
    crate::engine::printable_line(o.label(key).unwrap_or("?"))
}

/// Whether `a` removes a second container of its outpost (left by an interrupted recreate):
/// the apply removes it only once the kept container is up, and a watch holds it back with
/// the outpost's own put-back.
pub fn is_duplicate_removal(a: &Action) -> bool {
    a.action == ActionKind::Remove && a.reasons.iter().any(|r| r.field == DUPLICATE)
}

/// The removal of a second container of the outpost (see `is_duplicate_removal`).
fn duplicate(spec: &ContainerSpec, o: &Observed, kept: String) -> Action {
    Action {
        outpost: spec.outpost.clone(),
        action: ActionKind::Remove,
        name: o.name.clone(),
        container: Some(ContainerRef::of(o)),
        reasons: vec![Change::new(DUPLICATE, Some(o.name.clone()), Some(kept))],
        adopt: false,
        error: None,
    }
}

fn blocked(spec: &ContainerSpec, o: &Observed, error: String) -> Action {
    Action {
        outpost: spec.outpost.clone(),
        action: ActionKind::Blocked,
        name: spec.name.clone(),
        container: Some(ContainerRef::of(o)),
        reasons: Vec::new(),
        adopt: false,
        error: Some(error),
    }
}

/// The field of the reason that changes a container's published ports.
pub const PORTS_FIELD: &str = "ports";

/// The field of the reason that moves a container to another integration of the set.
pub const MOVED_FIELD: &str = "labels.outpostctl.integration";

/// The action for an outpost whose container another integration of the set made, on this
/// same engine: a recreate that relabels it as this integration's (labels cannot change in
/// place). The integration it came from keeps its hands off it (`keep_what_another_keeps`).
fn moved_in(spec: &ContainerSpec, o: &Observed, taken_by: Option<&Observed>) -> Action {
    let mut a = existing(spec, o, false, taken_by);
    if a.action == ActionKind::Blocked {
        return a;
    }
    if a.action != ActionKind::Recreate {
        a.reasons.clear();
        a.action = ActionKind::Recreate;
    }
    a.reasons.insert(
        0,
        Change::new(
            MOVED_FIELD,
            o.label(LABEL_INTEGRATION).map(str::to_string),
            spec.labels.get(LABEL_INTEGRATION).cloned(),
        ),
    );
    a
}

/// What an orphan's removal says when its outpost is wanted on another integration.
const MOVED_TO: &str = "wanted on integration ";

/// The containers of `mine` not linked to `first` by a chain of `outpostctl.replaces`.
fn unlinked_copies<'a>(first: &'a Observed, mine: &[&'a Observed]) -> Vec<&'a Observed> {
    let linked = |a: &Observed, b: &Observed| {
        a.label(LABEL_REPLACES) == Some(b.id.as_str())
            || b.label(LABEL_REPLACES) == Some(a.id.as_str())
    };
    let mut group: Vec<&Observed> = vec![first];
    let mut rest: Vec<&Observed> = mine.iter().copied().filter(|o| o.id != first.id).collect();
    while let Some(i) = rest.iter().position(|o| group.iter().any(|g| linked(g, o))) {
        group.push(rest.remove(i));
    }
    rest
}

/// The integration an orphan's removal says its outpost is wanted on (see `MOVED_TO`).
pub fn wanted_on(a: &Action) -> Option<&str> {
    a.reasons.iter().find_map(|r| {
        r.after
            .as_deref()?
            .strip_prefix(MOVED_TO)?
            .strip_prefix('`')?
            .strip_suffix('`')
    })
}

/// The removal of a container whose outpost left the manifests (not of a duplicate).
fn orphan_removal(a: &Action) -> bool {
    a.action == ActionKind::Remove && a.reasons.iter().any(|r| r.field == "outpost")
}

/// Across the integrations of one plan: a container that one integration takes care of (any
/// action on it but a block or an orphan's removal: it keeps it, recreates it, or removes it
/// as a duplicate once its own container runs) is not removed as an orphan by another. Several
/// integrations may reach one engine; when an outpost moves between two of them, the one it
/// left sees the container as its own and no longer wanted, while the one it joined takes it
/// over. Container ids are unique across engines, so integrations on different engines never
/// meet here.
///
/// An integration that could not be planned (`failed`) keeps what it would have taken over:
/// a container whose outpost is wanted on a failed integration is not removed as an orphan.
///
/// An integration also answers for every container of this project that carries the uuid of
/// one of its outposts (`answered_for`), whatever it does with them: a removal of one of those
/// by another integration, as wanted on it, is dropped. (Its own container blocked, or copies
/// made by hand that it leaves alone, would otherwise be removed by the other.) And an
/// outpost moved to an integration where it is blocked (its image missing there, say) keeps
/// the container it left: it would otherwise run nowhere.
pub fn keep_what_another_keeps(plans: &mut [&mut Vec<Action>], keeps: &Keeps) {
    let claimed: HashSet<String> = plans
        .iter()
        .flat_map(|actions| actions.iter())
        // A block by a container in the way leaves that container to whoever owns it; a
        // blocked change to the outpost's own container (its reasons say what would change;
        // its network is missing, say) keeps the container as it is.
        .filter(|a| {
            (a.action != ActionKind::Blocked || !a.reasons.is_empty()) && !orphan_removal(a)
        })
        .filter_map(|a| a.container.as_ref().map(|c| c.id.clone()))
        .collect();
    // Several integrations of one engine seeing the same orphan: the one that gives its name
    // to an outpost removes it (apply frees a name before it makes the container that takes
    // it, within one integration; across two they run at once).
    let mut remover: HashMap<String, usize> = HashMap::new();
    for (i, actions) in plans.iter().enumerate() {
        for a in actions.iter().filter(|a| orphan_removal(a)) {
            let takes_name = actions
                .iter()
                .any(|b| b.action != ActionKind::Remove && b.name == a.name);
            if let (true, Some(c)) = (takes_name, &a.container) {
                remover.entry(c.id.clone()).or_insert(i);
            }
        }
    }
    // One removal per container, however many integrations see it as an orphan.
    let mut removing: HashSet<String> = HashSet::new();
    for (i, actions) in plans.iter_mut().enumerate() {
        actions.retain(|a| {
            let Some(c) = a.container.as_ref().filter(|_| orphan_removal(a)) else {
                return true;
            };
            let uuid = keeps.uuid_of.get(&c.id);
            !claimed.contains(&c.id)
                && !wanted_on(a).is_some_and(|there| {
                    keeps.failed.contains(there)
                        || keeps
                            .answers_for
                            .get(there)
                            .is_some_and(|ids| ids.contains(&c.id))
                        || keeps
                            .blocked
                            .get(there)
                            .is_some_and(|uuids| uuid.is_some_and(|u| uuids.contains(u)))
                })
                && remover.get(&c.id).is_none_or(|r| *r == i)
                && removing.insert(c.id.clone())
        });
    }
}

/// What the integrations of one plan keep, for `keep_what_another_keeps`.
#[derive(Debug, Default)]
pub struct Keeps {
    /// The integrations that could not be planned: they keep what they would take over.
    pub failed: BTreeSet<String>,
    /// By integration: the containers it answers for (`answered_for`).
    pub answers_for: BTreeMap<String, BTreeSet<String>>,
    /// By integration: the uuids of its outposts that are blocked there (a create that
    /// cannot be made): the container one moving there left elsewhere stays until it can.
    pub blocked: BTreeMap<String, BTreeSet<String>>,
    /// The outpost uuid of the containers the plans remove.
    pub uuid_of: HashMap<String, String>,
}

/// The containers of this project on an engine that carry the uuid of one of `desired`'s
/// outposts (its own, duplicates, copies made by hand) and that its integration may change
/// (`opts`: not labelled as another integration's of the set, which it could not remove):
/// those it answers for (`keep_what_another_keeps`).
pub fn answered_for(
    project: &str,
    desired: &[ContainerSpec],
    observed: &[Observed],
    opts: &DiffOptions,
) -> BTreeSet<String> {
    let uuids: HashSet<&str> = desired.iter().map(|d| d.uuid.as_str()).collect();
    observed
        .iter()
        .filter(|o| o.label(LABEL_PROJECT) == Some(project) && opts.in_scope(o))
        .filter(|o| o.label(LABEL_UUID).is_some_and(|u| uuids.contains(u)))
        .map(|o| o.id.clone())
        .collect()
}

/// A container on authentik's default image (its own could not be pulled) made for another
/// `authentik_version`: the config hash holds the outpost's own image, which has no version
/// in it, so only the image the list shows tells. Recreated, it tries its own image again and
/// falls back to the default of this version. An image listed by id (its tag moved since)
/// says nothing of the version: images are pinned by reference.
fn on_an_old_fallback(spec: &ContainerSpec, o: &Observed) -> bool {
    o.label(LABEL_FALLBACK).is_some()
        && !o.image.starts_with("sha256:")
        && spec
            .fallback_image
            .as_deref()
            .is_some_and(|fallback| fallback != o.image)
}

/// The action for an outpost whose container exists (ours, or adopted).
fn existing(
    spec: &ContainerSpec,
    o: &Observed,
    adopt: bool,
    taken_by: Option<&Observed>,
) -> Action {
    // `docker rm -f` in progress: it is gone in a moment, and its destroy event (or the next
    // plan) brings the outpost back; acting on it now would fail.
    if o.state == State::Removing {
        return Action {
            outpost: spec.outpost.clone(),
            action: ActionKind::Noop,
            name: spec.name.clone(),
            container: Some(ContainerRef::of(o)),
            reasons: vec![Change::new("state", Some("removing".into()), None)],
            adopt,
            error: None,
        };
    }
    if let Some(in_way) = taken_by.filter(|_| o.name != spec.name) {
        let whose = match in_way.label(LABEL_OUTPOST) {
            Some(outpost) if in_way.label(LABEL_PROJECT).is_some() => {
                let outpost = crate::engine::printable_line(outpost);
                format!("it belongs to outpost `{outpost}`")
            }
            _ => "it is not managed by outpostctl, which leaves it alone".to_string(),
        };
        // With its reason: a blocked change to the outpost's own container, which keeps it
        // (no other integration removes it).
        let mut a = blocked(
            spec,
            o,
            format!(
                "the container must become `{}`, but a container named `{}` ({}) exists: {whose}; remove or rename it, or change `object_naming_template`",
                spec.name,
                spec.name,
                in_way.short_id()
            ),
        );
        a.reasons.push(Change::new(
            "name",
            Some(o.name.clone()),
            Some(spec.name.clone()),
        ));
        return a;
    }
    let mut reasons = Vec::new();
    let mut kind = ActionKind::Noop;
    let hash_ok = o.label(LABEL_CONFIG_HASH) == Some(spec.config_hash.as_str());
    let networks_ok = networks_match(spec.network.as_deref(), o);
    if adopt || !hash_ok || o.state == State::Dead || on_an_old_fallback(spec, o) {
        kind = ActionKind::Recreate;
        if adopt {
            reasons.push(Change::new(
                LABEL_MANAGED_BY,
                None,
                Some("outpostctl".into()),
            ));
        }
        if o.state == State::Dead {
            reasons.push(Change::new(
                "state",
                Some("dead".into()),
                Some("running".into()),
            ));
        }
    } else if !networks_ok {
        // Someone connected or disconnected networks by hand: the network is part of the spec.
        kind = ActionKind::Recreate;
        reasons.push(Change::new(
            "network",
            Some(o.networks.join(", ")).filter(|n| !n.is_empty()),
            Some(spec.network.clone().unwrap_or_else(|| "bridge".into())),
        ));
    } else if o.name != spec.name {
        kind = ActionKind::Rename;
        reasons.push(Change::new(
            "name",
            Some(o.name.clone()),
            Some(spec.name.clone()),
        ));
        // A container parked by an interrupted run is also stopped (or paused by hand): one
        // apply finishes both.
        if !matches!(o.state, State::Running | State::Restarting) {
            reasons.push(Change::new(
                "state",
                Some(o.state.as_str().into()),
                Some("running".into()),
            ));
        }
    } else if o.state == State::Paused {
        kind = ActionKind::Unpause;
        reasons.push(Change::new(
            "state",
            Some("paused".into()),
            Some("running".into()),
        ));
    } else if !matches!(o.state, State::Running | State::Restarting) {
        kind = ActionKind::Start;
        reasons.push(Change::new(
            "state",
            Some(o.state.as_str().into()),
            Some("running".into()),
        ));
    } else if o.health == Some(Health::Unhealthy) {
        kind = ActionKind::Restart;
        reasons.push(Change::new(
            "health",
            Some("unhealthy".into()),
            Some("restarted".into()),
        ));
    }
    Action {
        outpost: spec.outpost.clone(),
        action: kind,
        name: spec.name.clone(),
        container: Some(ContainerRef::of(o)),
        reasons,
        adopt,
        error: None,
    }
}

/// Field-by-field reasons for a recreate, from the live container's settings. Labels the image
/// brings are not ours to compare.
pub fn explain(
    spec: &ContainerSpec,
    live_name: &str,
    live: &Inspected,
    image_labels: &BTreeMap<String, String>,
) -> Vec<Change> {
    let mut out = Vec::new();
    if live_name != spec.name {
        out.push(Change::new(
            "name",
            Some(live_name.to_string()),
            Some(spec.name.clone()),
        ));
    }
    // A container made from the fallback image (its own could not be pulled) is up to date.
    let on_fallback = Some(&live.image) == spec.fallback_image.as_ref()
        && live.labels.contains_key(LABEL_FALLBACK);
    if live.image != spec.image && !on_fallback {
        out.push(Change::new(
            "image",
            Some(live.image.clone()),
            Some(spec.image.clone()),
        ));
    }
    let by_id = live.labels.contains_key(LABEL_IMAGE);
    if by_id != spec.image_by_id {
        out.push(Change::new(
            "image_by_id",
            Some(by_id.to_string()),
            Some(spec.image_by_id.to_string()),
        ));
    }
    for (k, v) in &spec.env {
        let before = live.env.get(k);
        if before.map(String::as_str) != Some(v.expose()) {
            let field = format!("env.{k}");
            if v.is_secret() {
                out.push(Change::new(
                    field,
                    before.map(|_| "(secret)".into()),
                    Some("(changed)".into()),
                ));
            } else {
                out.push(Change::new(field, before.cloned(), Some(v.shown().into())));
            }
        }
    }
    for (k, v) in &spec.labels {
        if bookkeeping(k) {
            continue;
        }
        if live.labels.get(k) != Some(v) {
            out.push(Change::new(
                format!("labels.{k}"),
                live.labels.get(k).cloned(),
                Some(v.clone()),
            ));
        }
    }
    for (k, v) in &live.labels {
        if !spec.labels.contains_key(k) && image_labels.get(k) != Some(v) && !bookkeeping(k) {
            out.push(Change::new(format!("labels.{k}"), Some(v.clone()), None));
        }
    }
    let fmt_ports = |p: &[crate::desired::PortBinding]| {
        let mut v: Vec<String> = p.iter().map(ToString::to_string).collect();
        v.sort();
        v.join(", ")
    };
    let mut want = spec.ports.clone();
    want.sort();
    if live.ports != want {
        out.push(Change::new(
            PORTS_FIELD,
            Some(fmt_ports(&live.ports)),
            Some(fmt_ports(&want)),
        ));
    }
    // The engine keeps `default` for the bridge network and `container:<id>` for a
    // container's, which the spec names (the config hash tells them apart).
    fn mode(n: Option<&str>) -> Option<&str> {
        match n {
            None | Some("" | "default" | "bridge") => None,
            Some(c) if c.starts_with("container:") => Some("container:"),
            Some(other) => Some(other),
        }
    }
    if mode(live.network.as_deref()) != mode(spec.network.as_deref()) {
        out.push(Change::new(
            "network",
            Some(live.network.clone().unwrap_or_else(|| "bridge".into())),
            Some(spec.network.clone().unwrap_or_else(|| "bridge".into())),
        ));
    }
    if live.restart_policy != spec.restart_policy {
        out.push(Change::new(
            RESTART_POLICY_FIELD,
            Some(live.restart_policy.clone()),
            Some(spec.restart_policy.clone()),
        ));
    }
    if live.healthcheck.as_ref() != Some(spec.healthcheck_for(&live.image)) {
        let show = |h: &crate::desired::HealthCheck| {
            format!(
                "{} every {}s",
                h.test.join(" "),
                h.interval_ns / 1_000_000_000
            )
        };
        out.push(Change::new(
            "healthcheck",
            live.healthcheck.as_ref().map(show),
            Some(show(&spec.healthcheck)),
        ));
    }
    out
}

/// The container settings as text, one `key: value` per line, for `plan --diff`.
pub fn spec_text(spec: &ContainerSpec) -> String {
    let env = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.shown().to_string()))
        .collect();
    let labels = spec
        .labels
        .iter()
        .filter(|(k, _)| !bookkeeping(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    text(
        &spec.name,
        &shown_image(&spec.image, spec.image_by_id),
        &env,
        &labels,
        &spec.ports,
        spec.network.as_deref(),
        &spec.restart_policy,
        Some(&spec.healthcheck),
    )
}

/// The live container's settings in the shape of `spec_text`: only the env keys outpostctl
/// sets, no labels the image brings, secrets hidden (marked when they differ).
pub fn live_text(
    name: &str,
    live: &Inspected,
    spec: &ContainerSpec,
    image_labels: &BTreeMap<String, String>,
) -> String {
    let env = spec
        .env
        .iter()
        .filter_map(|(k, v)| {
            let before = live.env.get(k)?;
            let shown = if v.is_secret() {
                if before == v.expose() {
                    "(secret)"
                } else {
                    "(secret, differs)"
                }
                .to_string()
            } else {
                before.clone()
            };
            Some((k.clone(), shown))
        })
        .collect();
    let labels = live
        .labels
        .iter()
        .filter(|(k, v)| {
            !bookkeeping(k) && (spec.labels.contains_key(*k) || image_labels.get(*k) != Some(*v))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let by_id = live.labels.contains_key(LABEL_IMAGE);
    text(
        name,
        &shown_image(&live.image, by_id),
        &env,
        &labels,
        &live.ports,
        live.network.as_deref(),
        &live.restart_policy,
        live.healthcheck.as_ref(),
    )
}

/// The image as plan texts show it: a container made from its image's id says so.
fn shown_image(image: &str, by_id: bool) -> String {
    if by_id {
        format!("{image} (by id)")
    } else {
        image.to_string()
    }
}

/// A value as plan texts show it: as is, unless that would be ambiguous on one line (empty,
/// with a line break, or starting or ending with a space) or unsafe on a terminal (a control
/// character: a label another writer set may hold an escape sequence): then quoted,
/// JSON-style, with what JSON leaves as is (DEL, C1 controls) escaped too.
pub fn shown_value(v: &str) -> std::borrow::Cow<'_, str> {
    if v.is_empty() || v.contains(char::is_control) || v.trim() != v {
        crate::engine::printable_line(serde_json::to_string(v).unwrap_or_default()).into()
    } else {
        v.into()
    }
}

#[allow(clippy::too_many_arguments)]
fn text(
    name: &str,
    image: &str,
    env: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    ports: &[crate::desired::PortBinding],
    network: Option<&str>,
    restart: &str,
    health: Option<&crate::desired::HealthCheck>,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "name: {name}");
    let _ = writeln!(s, "image: {image}");
    let _ = writeln!(s, "env:");
    for (k, v) in env {
        let _ = writeln!(s, "  {k}: {}", shown_value(v));
    }
    let _ = writeln!(s, "labels:");
    for (k, v) in labels {
        // A label's key is another writer's text too.
        let k = crate::engine::printable_line(k.as_str());
        let _ = writeln!(s, "  {k}: {}", shown_value(v));
    }
    if ports.is_empty() {
        let _ = writeln!(s, "ports: (none published)");
    } else {
        let _ = writeln!(s, "ports:");
    }
    let mut ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
    ports.sort();
    for p in ports {
        let _ = writeln!(s, "  - {p}");
    }
    let _ = writeln!(s, "network: {}", network.unwrap_or("bridge"));
    let _ = writeln!(s, "restart_policy: {restart}");
    match health {
        Some(h) => {
            let _ = writeln!(
                s,
                "healthcheck: {} (interval {}s, retries {}, start period {}s)",
                h.test.join(" "),
                h.interval_ns / 1_000_000_000,
                h.retries,
                h.start_period_ns / 1_000_000_000
            );
        }
        None => {
            let _ = writeln!(s, "healthcheck: none");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::{observed as container, validated};

    #[test]
    fn networks_match_what_docker_keeps_for_each_way_of_naming_one() {
        let on = |networks: &[&str], mode: Option<&str>| {
            let mut o = container("c1", "n", State::Running, &[]);
            o.networks = networks.iter().map(|n| n.to_string()).collect();
            o.network_mode = mode.map(str::to_string);
            o
        };
        let with_id = |mut o: Observed, id: &str| {
            o.network_ids = vec![id.to_string()];
            o
        };
        let yes = [
            (None, on(&["bridge"], Some("default"))),
            (Some("default"), on(&["bridge"], Some("default"))),
            (Some("bridge"), on(&["bridge"], Some("bridge"))),
            (Some("traefik"), on(&["traefik"], Some("traefik"))),
            (Some("b70f111aad62"), on(&["traefik"], Some("b70f111aad62"))),
            (
                Some("b70f111aad62"),
                with_id(on(&["traefik"], Some("b70f111aad62")), "b70f111aad62ff"),
            ),
            (Some("host"), on(&["host"], Some("host"))),
            (Some("container:web"), on(&[], Some("container:0123abcd"))),
            // A network named like an id, joined by its name (its id is another).
            (Some("db"), with_id(on(&["db"], Some("db")), "7f3a0c")),
        ];
        for (n, o) in &yes {
            assert!(networks_match(*n, o), "{n:?} {o:?}");
        }
        let no = [
            (None, on(&["bridge", "extra"], Some("default"))),
            // Disconnected from bridge by hand: on no network, its ports published nowhere.
            (None, on(&[], Some("default"))),
            (Some("default"), on(&["traefik"], Some("traefik"))),
            (Some("traefik"), on(&["bridge"], Some("default"))),
            (Some("traefik"), on(&[], Some("traefik"))),
            // Given by id, with another network connected by hand.
            (
                Some("b70f111aad62"),
                on(&["extra", "traefik"], Some("b70f111aad62")),
            ),
            (Some("b70f111aad62"), on(&["bridge"], Some("default"))),
            // The network it was created on swapped for another by hand: `NetworkMode` stays.
            (Some("traefik"), on(&["other"], Some("traefik"))),
            (
                Some("b70f111aad62"),
                with_id(on(&["other"], Some("b70f111aad62")), "0123abcd"),
            ),
            (Some("container:web"), on(&["bridge"], Some("default"))),
            (Some("db"), with_id(on(&["other"], Some("db")), "7f3a0c")),
        ];
        for (n, o) in &no {
            assert!(!networks_match(*n, o), "{n:?} {o:?}");
        }
    }

    #[test]
    fn values_that_would_be_ambiguous_on_one_line_are_quoted() {
        assert_eq!(
            shown_value("https://auth.example.com"),
            "https://auth.example.com"
        );
        assert_eq!(shown_value("two words"), "two words");
        assert_eq!(shown_value(""), "\"\"");
        assert_eq!(shown_value(" padded"), "\" padded\"");
        assert_eq!(shown_value("a\nb"), "\"a\\nb\"");
        // Control characters cannot reach a terminal, those JSON keeps as they are included.
        assert_eq!(shown_value("\u{1b}[2J"), "\"\\u001b[2J\"");
        assert_eq!(shown_value("a\u{9b}2Jb\u{7f}"), "\"a\\u009b2Jb\\u007f\"");
    }

    /// A Swarm task carrying an outpost's uuid is not adopted: its service would start
    /// another task for the one taken away.
    #[test]
    fn a_swarm_task_is_not_adopted() {
        let spec = spec_on_b();
        let authentiks = |extra: &[(&str, &str)]| {
            let mut labels = vec![(LABEL_UUID, spec.uuid.as_str())];
            labels.extend_from_slice(extra);
            container("c1", "ak-outpost-x", State::Running, &labels)
        };
        let opts = DiffOptions {
            adopt: true,
            integration: Some("b".into()),
            ..DiffOptions::default()
        };
        let plain = diff(
            "p",
            std::slice::from_ref(&spec),
            &[authentiks(&[])],
            opts.clone(),
        );
        assert_eq!(plain[0].action, ActionKind::Recreate, "{plain:?}");
        assert!(plain[0].adopt, "{plain:?}");
        let task = authentiks(&[
            (LABEL_SWARM_SERVICE, "outposts_ldap"),
            ("com.docker.swarm.task.id", "q1w2e3"),
        ]);
        let actions = diff("p", std::slice::from_ref(&spec), &[task], opts);
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert_eq!(actions[0].action, ActionKind::Blocked, "{actions:?}");
        let error = actions[0].error.as_deref().unwrap_or_default();
        assert!(
            error.contains("a task of Swarm service `outposts_ldap`"),
            "{error}"
        );
        assert!(!error.contains("--adopt"), "{error}");
    }

    /// A container that fell back to authentik's default image is up to date while that
    /// default is the manifests' version's; after a new `authentik_version` (which leaves the
    /// config hash of a custom image without `%(version)s` as it was) it is recreated. Listed
    /// by image id (the tag moved since), it says nothing of the version: left as it is.
    #[test]
    fn a_container_on_an_old_fallback_image_is_recreated() {
        let mut spec = spec_on_b();
        spec.image = "registry.example.com/custom/ldap:mine".into();
        spec.fallback_image = Some("ghcr.io/goauthentik/ldap:2026.9.0".into());
        let on = |image: &str| {
            let mut o = container(
                "c1",
                &spec.name,
                State::Running,
                &[
                    (LABEL_UUID, spec.uuid.as_str()),
                    (LABEL_PROJECT, "p"),
                    (LABEL_INTEGRATION, "b"),
                    (LABEL_OUTPOST, "X"),
                    (LABEL_CONFIG_HASH, spec.config_hash.as_str()),
                    (LABEL_FALLBACK, "true"),
                ],
            );
            o.image = image.into();
            o
        };
        let opts = DiffOptions {
            integration: Some("b".into()),
            ..DiffOptions::default()
        };
        let plan = |o: Observed| diff("p", std::slice::from_ref(&spec), &[o], opts.clone());
        let old = plan(on("ghcr.io/goauthentik/ldap:2026.8.0"));
        assert_eq!(old[0].action, ActionKind::Recreate, "{old:?}");
        let current = plan(on("ghcr.io/goauthentik/ldap:2026.9.0"));
        assert_eq!(current[0].action, ActionKind::Noop, "{current:?}");
        let by_id = plan(on(
            "sha256:5000ec1a8b8190506718916e6c9b74cfdc89307f9fee88952cc2db0971f7f7c5",
        ));
        assert_eq!(by_id[0].action, ActionKind::Noop, "{by_id:?}");
        // Not on the fallback (no label): its image is the config hash's business.
        let mut own = on("ghcr.io/goauthentik/ldap:2026.8.0");
        own.labels.remove(LABEL_FALLBACK);
        let own = plan(own);
        assert_eq!(own[0].action, ActionKind::Noop, "{own:?}");
    }

    /// Outpost `X` on integration `b`; `a` reaches the same engine.
    fn spec_on_b() -> ContainerSpec {
        let v = validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  a: { local: true }\n  \
             b: { url: \"http://127.0.0.1:2375\" }\noutposts:\n  X:\n    type: ldap\n    \
             integration: b\n    token: { file: token }\n",
        );
        v.desired["b"][0].clone()
    }

    /// The plans of `a` (which wants nothing) and `b` over one engine's containers, after
    /// `keep_what_another_keeps`.
    fn plan_both(spec: &ContainerSpec, observed: &[Observed]) -> (Vec<Action>, Vec<Action>) {
        let opts = |i: &str| DiffOptions {
            adopt: false,
            integration: Some(i.into()),
            integrations: ["a".to_string(), "b".to_string()].into(),
            ..DiffOptions::default()
        };
        let mut a = diff("p", &[], observed, opts("a"));
        let mut b = diff("p", std::slice::from_ref(spec), observed, opts("b"));
        let answers_for = BTreeMap::from([
            (
                "a".to_string(),
                answered_for("p", &[], observed, &opts("a")),
            ),
            (
                "b".to_string(),
                answered_for("p", std::slice::from_ref(spec), observed, &opts("b")),
            ),
        ]);
        let keeps = Keeps {
            answers_for,
            ..Keeps::default()
        };
        keep_what_another_keeps(&mut [&mut a, &mut b], &keeps);
        (a, b)
    }

    fn kinds(actions: &[Action]) -> Vec<(ActionKind, Option<String>)> {
        actions
            .iter()
            .map(|a| (a.action, a.container.as_ref().map(|c| c.id.clone())))
            .collect()
    }

    /// Moving an outpost between two integrations of one engine: `b` takes the container over
    /// with a recreate and `a` leaves it alone; when that recreate was interrupted after the
    /// create, `b` starts its container and only then removes the one `a` made (a duplicate,
    /// which the apply defers), and `a` still leaves it alone.
    #[test]
    fn a_moved_outpost_is_taken_over_once_even_after_an_interrupted_recreate() {
        let spec = spec_on_b();
        let of_a = [
            (LABEL_UUID, spec.uuid.as_str()),
            (LABEL_PROJECT, "p"),
            (LABEL_INTEGRATION, "a"),
            (LABEL_OUTPOST, "X"),
            (LABEL_CONFIG_HASH, spec.config_hash.as_str()),
        ];
        let moved = container("c0ffee", &spec.name, State::Running, &of_a);
        let (a, b) = plan_both(&spec, std::slice::from_ref(&moved));
        assert_eq!(kinds(&a), vec![], "{a:?}");
        assert_eq!(
            kinds(&b),
            vec![(ActionKind::Recreate, Some("c0ffee".into()))],
            "{b:?}"
        );
        assert_eq!(b[0].reasons[0].field, MOVED_FIELD);

        // Interrupted after the create: `a`'s container parked and stopped, `b`'s created.
        let parked = format!("{}{}", spec.name, crate::apply::PARKED);
        let old = container("c0ffee", &parked, State::Exited, &of_a);
        let mut of_b: Vec<(&str, &str)> = of_a
            .iter()
            .map(|&(k, v)| {
                if k == LABEL_INTEGRATION {
                    (k, "b")
                } else {
                    (k, v)
                }
            })
            .collect();
        of_b.push((LABEL_REPLACES, "c0ffee"));
        let new = container("d00d", &spec.name, State::Created, &of_b);
        let (a, b) = plan_both(&spec, &[old, new]);
        assert_eq!(kinds(&a), vec![], "{a:?}");
        assert_eq!(
            kinds(&b),
            vec![
                (ActionKind::Start, Some("d00d".into())),
                (ActionKind::Remove, Some("c0ffee".into()))
            ],
            "{b:?}"
        );
        assert!(is_duplicate_removal(&b[1]), "{b:?}");
    }

    /// A running container of project `p` for `outpost`, which the manifests no longer hold,
    /// with `more` labels.
    fn stray(outpost: &str, more: &[(&str, &str)]) -> Observed {
        let mut labels = vec![
            (LABEL_UUID, "0123456789abcdef0123456789abcdef"),
            (LABEL_PROJECT, "p"),
            (LABEL_OUTPOST, outpost),
        ];
        labels.extend_from_slice(more);
        container("5eed", "ak-outpost-gone", State::Running, &labels)
    }

    /// A container of an integration that left the set, seen as an orphan by the two that
    /// remain on its engine, is removed once, not by both.
    #[test]
    fn an_orphan_two_integrations_see_is_removed_once() {
        let stray = stray("Gone", &[(LABEL_INTEGRATION, "dropped")]);
        let opts = |i: &str| DiffOptions {
            integration: Some(i.into()),
            integrations: ["a".to_string(), "b".to_string()].into(),
            ..DiffOptions::default()
        };
        let observed = std::slice::from_ref(&stray);
        let mut a = diff("p", &[], observed, opts("a"));
        let mut b = diff("p", &[], observed, opts("b"));
        assert_eq!(kinds(&a), vec![(ActionKind::Remove, Some("5eed".into()))]);
        assert_eq!(kinds(&b), kinds(&a));
        keep_what_another_keeps(&mut [&mut a, &mut b], &Keeps::default());
        assert_eq!(a.len() + b.len(), 1, "{a:?} {b:?}");

        // When an outpost of `b` takes its name, `b` removes it (its apply frees the name
        // before it makes the container; `a` removing it at the same time raced `b`'s create).
        let mut taker = spec_on_b();
        taker.name = "ak-outpost-gone".into();
        let mut a = diff("p", &[], observed, opts("a"));
        let mut b = diff("p", std::slice::from_ref(&taker), observed, opts("b"));
        keep_what_another_keeps(&mut [&mut a, &mut b], &Keeps::default());
        assert_eq!(kinds(&a), vec![], "{a:?}");
        assert_eq!(
            kinds(&b),
            vec![
                (ActionKind::Create, None),
                (ActionKind::Remove, Some("5eed".into()))
            ],
            "{b:?}"
        );
    }

    /// Reverted after an interrupted move (`a` -> `b` on one engine, stopped once `b`'s
    /// container was made and `a`'s parked): `b` removes the container it made, which `a`
    /// cannot touch (it stayed for ever when `a` answered for it, and `a` was blocked by it).
    #[test]
    fn a_reverted_interrupted_move_is_rolled_back() {
        let spec = spec_on_b();
        let uuid = spec.uuid.as_str();
        let parked = format!("{}{}", spec.name, crate::apply::PARKED);
        let old = container(
            "0ld",
            &parked,
            State::Exited,
            &[
                (LABEL_UUID, uuid),
                (LABEL_PROJECT, "p"),
                (LABEL_INTEGRATION, "a"),
            ],
        );
        let new = container(
            "n3w",
            &spec.name,
            State::Running,
            &[
                (LABEL_UUID, uuid),
                (LABEL_PROJECT, "p"),
                (LABEL_INTEGRATION, "b"),
                (LABEL_REPLACES, "0ld"),
            ],
        );
        let observed = [old, new];
        let opts = |i: &str| DiffOptions {
            integration: Some(i.into()),
            integrations: ["a".to_string(), "b".to_string()].into(),
            placed: std::sync::Arc::new(HashMap::from([(uuid.to_string(), "a".to_string())])),
            ..DiffOptions::default()
        };
        let mut a = diff("p", std::slice::from_ref(&spec), &observed, opts("a"));
        let mut b = diff("p", &[], &observed, opts("b"));
        let keeps = Keeps {
            answers_for: BTreeMap::from([
                (
                    "a".to_string(),
                    answered_for("p", std::slice::from_ref(&spec), &observed, &opts("a")),
                ),
                (
                    "b".to_string(),
                    answered_for("p", &[], &observed, &opts("b")),
                ),
            ]),
            ..Keeps::default()
        };
        keep_what_another_keeps(&mut [&mut a, &mut b], &keeps);
        assert_eq!(
            kinds(&b),
            vec![(ActionKind::Remove, Some("n3w".into()))],
            "{b:?}"
        );
    }

    /// A name held by a container this integration may not touch says what will free it, as
    /// it is: another integration's outpost still in the manifests (nothing will: two
    /// outposts want one name), one that left them (that integration removes it; with
    /// --no-prune, nobody), another project's container (not "not managed by outpostctl").
    #[test]
    fn a_name_held_by_another_integrations_or_projects_container_says_what_frees_it() {
        let spec = spec_on_b();
        let holder =
            |labels: &[(&str, &str)]| container("h01d", &spec.name, State::Running, labels);
        let sibling = holder(&[
            (LABEL_UUID, "0123456789abcdef0123456789abcdef"),
            (LABEL_PROJECT, "p"),
            (LABEL_OUTPOST, "Y"),
            (LABEL_INTEGRATION, "a"),
        ]);
        let error = |o: &Observed, placed: bool, keep_orphans: bool| {
            let placed: HashMap<String, String> = if placed {
                HashMap::from([("0123456789abcdef0123456789abcdef".into(), "a".into())])
            } else {
                HashMap::new()
            };
            let opts = DiffOptions {
                integration: Some("b".into()),
                integrations: ["a".to_string(), "b".to_string()].into(),
                placed: std::sync::Arc::new(placed),
                keep_orphans,
                ..DiffOptions::default()
            };
            let actions = diff(
                "p",
                std::slice::from_ref(&spec),
                std::slice::from_ref(o),
                opts,
            );
            assert_eq!(actions[0].action, ActionKind::Blocked, "{actions:?}");
            actions[0].error.clone().unwrap_or_default()
        };
        let e = error(&sibling, true, false);
        assert!(
            e.contains("both outposts are in the manifests and cannot have one name"),
            "{e}"
        );
        let e = error(&sibling, false, false);
        assert!(
            e.contains("that integration removes the container in this apply"),
            "{e}"
        );
        let e = error(&sibling, false, true);
        assert!(e.contains("its removal is pending (--no-prune)"), "{e}");
        let other = holder(&[(LABEL_PROJECT, "q"), (LABEL_OUTPOST, "Y")]);
        let e = error(&other, false, false);
        assert!(
            e.contains("belongs to outpostctl project `q`, not this one (`p`)"),
            "{e}"
        );
    }

    /// A label is another writer's text: an outpost name with an escape sequence in it (on a
    /// container this plan removes) is shown escaped, and cannot colour or clear a terminal.
    #[test]
    fn label_text_in_actions_is_printable() {
        let stray = stray("Gone\u{1b}[2J", &[]);
        let a = diff(
            "p",
            &[],
            std::slice::from_ref(&stray),
            DiffOptions::default(),
        );
        assert_eq!(kinds(&a), vec![(ActionKind::Remove, Some("5eed".into()))]);
        assert_eq!(a[0].outpost, "Gone\\u001b[2J");
    }

    /// Labels of a container outpostctl blocks on (another project's, a Swarm task) are
    /// another writer's text too: an escape sequence or a line feed in them cannot reach a
    /// terminal or forge a line of the plan through the blocked message.
    #[test]
    fn labels_quoted_in_a_blocked_message_are_one_printable_line() {
        let spec = spec_on_b();
        let forged = "svc\u{1b}[2J\n  + create    forged-line";
        for key in [LABEL_PROJECT, LABEL_SWARM_SERVICE] {
            let theirs = container(
                "beef",
                "theirs",
                State::Running,
                &[(LABEL_UUID, spec.uuid.as_str()), (key, forged)],
            );
            let a = diff(
                "p",
                std::slice::from_ref(&spec),
                std::slice::from_ref(&theirs),
                DiffOptions::default(),
            );
            let error = a[0].error.clone().unwrap_or_default();
            assert_eq!(a[0].action, ActionKind::Blocked, "{a:?}");
            assert!(
                error.contains("svc\\u001b[2J\\n  + create    forged-line")
                    && !error.contains(['\n', '\u{1b}']),
                "{key}: {error}"
            );
        }
    }
}
