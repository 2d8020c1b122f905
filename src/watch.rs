//! Watch mode: keep a host converged.
//!
//! Like a Kubernetes controller, it reacts to the current state, never to the individual
//! event: every trigger (a saved file, the interval, an engine event, the start) leads to a
//! full validate, plan and apply of the whole set, so it is idempotent. An invalid set changes
//! nothing; the containers keep running as last applied.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use notify::RecursiveMode;
use tokio::sync::mpsc;

use crate::apply::{self, Outcome, Progress};
use crate::diff::{Action, ActionKind, DiffOptions};
use crate::engine::{EngineEvent, EventSubject};
use crate::log::Logger;
use crate::metrics::Metrics;
use crate::plan::{self, Unblock};
use crate::validate::{Validated, validate};

#[derive(Debug, Clone)]
pub struct Options {
    pub paths: Vec<PathBuf>,
    pub interval: Duration,
    pub debounce: Duration,
    pub no_prune: bool,
    pub adopt: bool,
    pub lock_timeout: Duration,
}

/// Why a reconcile runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Start,
    Files,
    Interval,
    /// A put-back held back by the backoff is due, or the retry after a reconcile in which
    /// something failed.
    Retry,
    Engine {
        integration: String,
        container: String,
        /// The container's id.
        id: String,
        action: String,
    },
    /// An engine's event stream broke and is back: what happened meanwhile left no event.
    EventsResumed {
        integration: String,
    },
    /// Something outside the project that may let a blocked outpost go ahead: a container
    /// that held its host port or name died, was removed or renamed; a network was created;
    /// an image arrived. A reconcile runs only if it is what a blocked outpost waits for.
    Unblocking {
        integration: String,
        event: EngineEvent,
    },
    /// Events outside the project came faster than they were read while outposts were
    /// blocked: some were dropped, and one may have been what they wait for.
    OutsideEventsDropped,
}

impl Trigger {
    fn name(&self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Files => "files",
            Trigger::Interval => "interval",
            Trigger::Retry => "backoff-retry",
            Trigger::Engine { .. } | Trigger::Unblocking { .. } => "engine-event",
            Trigger::OutsideEventsDropped => "engine-events-dropped",
            Trigger::EventsResumed { .. } => "engine-events-resumed",
        }
    }
}

/// Events of the engines' other objects (`Trigger::Unblocking`), kept apart from the trigger
/// channel: they matter only while an outpost is blocked, and many of them on a busy host (CI
/// jobs' containers coming and going) must not fill the channel that carries the project's
/// own events while a long reconcile runs. Read after each reconcile, against what its
/// blocked outposts wait for.
#[derive(Default)]
struct Outside {
    events: std::sync::Mutex<VecDeque<(String, EngineEvent)>>,
    /// More than `OUTSIDE_MAX` came before they were read: the oldest were dropped.
    overflowed: AtomicBool,
    arrived: tokio::sync::Notify,
}

/// Events outside the project kept until read.
const OUTSIDE_MAX: usize = 1024;

impl Outside {
    fn push(&self, integration: String, event: EngineEvent) {
        if let Ok(mut q) = self.events.lock() {
            if q.len() >= OUTSIDE_MAX {
                q.pop_front();
                self.overflowed.store(true, Ordering::Relaxed);
            }
            q.push_back((integration, event));
        }
        self.arrived.notify_one();
    }

    /// The events so far, and whether some were dropped.
    fn take(&self) -> (Vec<(String, EngineEvent)>, bool) {
        let events = self
            .events
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default();
        (events, self.overflowed.swap(false, Ordering::Relaxed))
    }
}

/// Put-backs of one outpost in a row (a container removed, stopped or unhealthy each time it
/// is looked at): after `PUT_BACKS_BEFORE_BACKOFF` of them, each next one waits longer (5 s,
/// doubling to 5 min), and a timer runs the retry. The row ends when no put-back was needed
/// for `ROW` after the last one could run.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    /// Put-backs in this row.
    strikes: u32,
    /// From when the next put-back may run.
    ready: Instant,
}

/// Put-backs in a row that run at once (a person removing a container a few times, a fight
/// with another controller shows as many more).
const PUT_BACKS_BEFORE_BACKOFF: u32 = 5;
/// A put-back this long after the previous one could run starts a new row.
const ROW: Duration = Duration::from_secs(60);
/// Deaths of one container (Docker's restart policy restarting it) that mute its events.
const STRIKES_BEFORE_BACKOFF: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long after a reconcile the events of its failed actions' containers are their echo.
const ECHO: Duration = Duration::from_secs(2);
/// How long apart one event may come through two integrations that reach one engine.
const TWIN_EVENT: Duration = Duration::from_secs(2);
/// How long after this watch restarted a container its `die` is the restart's.
const RESTART_ECHO: Duration = Duration::from_secs(30);
/// A new event subscription asks the engine for the events since this long before the
/// reconcile it precedes started (a `docker update` made while subscribing must not be
/// missed; the margin covers reading the engine's clock).
const REPLAY_MARGIN: Duration = Duration::from_secs(1);

/// An engine the last reconcile that tried could not connect to. Later reconciles do not
/// wait on it again (a host down behind a firewall that drops its packets costs each try the
/// whole request timeout, and the other engines' reconciles would wait as long) until its
/// event subscription, which keeps trying in the background, reaches it: that sends
/// `EventsResumed`, whose reconcile connects to it.
struct Down {
    /// Where it was, with its keys: a changed address or key is tried at once.
    url: String,
    endpoint: crate::validate::Endpoint,
    /// When a reconcile first failed to connect, and when one last tried.
    since: Instant,
    tried: Instant,
    error: String,
}

/// Whether an engine's event subscription reaches it: connected now, or when it last did.
#[derive(Default)]
struct Reach {
    connected: AtomicBool,
    answered: std::sync::Mutex<Option<Instant>>,
}

impl Reach {
    fn connected(&self, yes: bool) {
        self.connected.store(yes, Ordering::SeqCst);
        if yes && let Ok(mut at) = self.answered.lock() {
            *at = Some(Instant::now());
        }
    }
    /// Whether the engine answered the subscription after `at`, or its stream is open now.
    fn since(&self, at: Instant) -> bool {
        self.connected.load(Ordering::SeqCst)
            || self
                .answered
                .lock()
                .ok()
                .and_then(|a| *a)
                .is_some_and(|a| a > at)
    }
}

/// One engine's event subscription.
struct EventTask {
    /// Where it connects, with the keys it was given: replaced when they change.
    url: String,
    endpoint: crate::validate::Endpoint,
    /// The project whose containers' events it passes on: replaced when `project:` changes.
    project: String,
    task: tokio::task::JoinHandle<()>,
    reach: Arc<Reach>,
}

/// What failed in a reconcile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Failed {
    /// An engine (or its lock), by integration.
    Engine(String),
    /// An outpost's action: (integration, outpost).
    Outpost(String, String),
    /// The manifests (or a file they name) could not be read for a reason that may pass by
    /// itself (too many open files, an I/O error).
    Read,
}

/// What fails now, with the reconciles in a row each failed in (`before` counts the previous
/// ones), and the wait before the retry: that of the newest failure.
fn failure_row<K: Ord>(
    before: &BTreeMap<K, u32>,
    failed: BTreeSet<K>,
) -> (BTreeMap<K, u32>, Option<Duration>) {
    let now: BTreeMap<K, u32> = failed
        .into_iter()
        .map(|what| {
            let n = before.get(&what).map_or(1, |n| n.saturating_add(1));
            (what, n)
        })
        .collect();
    let wait = now.values().min().map(|n| backoff_delay(*n, 1));
    (now, wait)
}

/// The wait after the `n`-th strike once `limit` strikes were reached: 5 s, doubling, capped.
fn backoff_delay(n: u32, limit: u32) -> Duration {
    let exp = n.saturating_sub(limit).min(10);
    (BACKOFF_BASE * 2u32.pow(exp)).min(BACKOFF_MAX)
}

impl Backoff {
    /// A put-back is wanted at `now`: `None` if it may run (and it is counted), or how long
    /// it must wait.
    fn put_back(entry: &mut Option<Backoff>, now: Instant) -> Option<Duration> {
        if let Some(b) = entry {
            if b.ready > now {
                return Some(b.ready - now);
            }
            if now.duration_since(b.ready) > ROW {
                *entry = None;
            }
        }
        let b = entry.get_or_insert(Backoff {
            strikes: 0,
            ready: now,
        });
        b.strikes += 1;
        b.ready = if b.strikes >= PUT_BACKS_BEFORE_BACKOFF {
            now + backoff_delay(b.strikes, PUT_BACKS_BEFORE_BACKOFF)
        } else {
            now
        };
        None
    }
}

/// A put-back: the container disappeared, stopped or became unhealthy, or its restart policy
/// was changed by hand (a controller that keeps changing it is backed off like one that keeps
/// stopping the container).
fn is_put_back(a: &Action) -> bool {
    matches!(
        a.action,
        ActionKind::Create | ActionKind::Start | ActionKind::Restart
    ) || (a.action == ActionKind::Recreate
        && a.reasons
            .iter()
            .any(|r| r.field == crate::diff::RESTART_POLICY_FIELD))
}

/// A container kept as it is that the plan was asked to inspect but did not
/// (`diff::keeps_container` leaves it out: it is unpaused, or being removed): the next plan
/// inspects it again.
fn not_inspected(a: &Action) -> bool {
    matches!(a.action, ActionKind::Unpause | ActionKind::Noop) && !crate::diff::keeps_container(a)
}

/// A removal `--no-prune` keeps pending: of an outpost that left the manifests, not the
/// second container an interrupted recreate left (removing it finishes that recreate; kept,
/// it would hold the outpost's name against its own container for good).
fn kept_by_no_prune(a: &Action, no_prune: bool) -> bool {
    no_prune && a.action == ActionKind::Remove && !crate::diff::is_duplicate_removal(a)
}

/// Whether the outpost's container was last seen (up to date, or made so by this watch) with
/// the config the manifests still want.
fn seen_as_wanted(key: &(String, String), seen: &Hashes, wanted: &Hashes) -> bool {
    seen.get(key).is_some_and(|h| wanted.get(key) == Some(h))
}

/// A recreate back to the config the outpost's container was last seen with, the manifests
/// unchanged: someone else changed the container (another writer with other manifests, say),
/// and it is put back.
fn remakes(a: &Action, key: &(String, String), seen: &Hashes, wanted: &Hashes) -> bool {
    a.action == ActionKind::Recreate && seen_as_wanted(key, seen, wanted)
}

/// Whether an action corrects drift (the engine moved, not the manifests), whatever started
/// the reconcile: a container stopped, paused or unhealthy, a restart policy changed by hand,
/// or one `seen` with the config the manifests still want (up to date, or made so) that is
/// gone, renamed or changed since. A new outpost, a changed one and a removal are the
/// manifests' doing; so is what a watch that just started finds, but for the first kinds.
fn corrects_drift(a: &Action, key: &(String, String), seen: &Hashes, wanted: &Hashes) -> bool {
    match a.action {
        ActionKind::Start | ActionKind::Unpause | ActionKind::Restart => true,
        ActionKind::Recreate => is_put_back(a) || remakes(a, key, seen, wanted),
        ActionKind::Create | ActionKind::Rename => seen_as_wanted(key, seen, wanted),
        ActionKind::Remove | ActionKind::Noop | ActionKind::Blocked => false,
    }
}

/// What waits while its outpost backs off: its put-back, and the removal of a duplicate left
/// by an interrupted recreate (the previous container, removed only once the outpost's own
/// container runs again, which the held-back put-back would do).
fn waits_for_backoff(a: &Action) -> bool {
    is_put_back(a) || crate::diff::is_duplicate_removal(a)
}

/// What a watch's plans inspect, for what the container list does not show (a restart
/// policy changed with `docker update`).
#[derive(Debug, Default)]
struct Inspections {
    /// Containers to inspect in the next plan, by id -> integration: those `docker update`
    /// changed, those whose action failed, those a plan could not inspect.
    updated: BTreeMap<String, String>,
    /// Integrations whose every container was inspected since their events are watched; the
    /// others are inspected in full by the next plan (a `docker update` made while no watch
    /// ran, or while its event stream was broken, left no event to see).
    inspected: BTreeSet<String>,
}

impl Inspections {
    /// Remembers what the next plan must inspect: a container changed by `docker update`, or
    /// every container of an engine whose event stream was broken.
    fn note(&mut self, t: &Trigger) {
        match t {
            Trigger::Engine {
                integration,
                id,
                action,
                ..
            } if action == "update" => {
                self.updated.insert(id.clone(), integration.clone());
            }
            Trigger::EventsResumed { integration } => {
                self.inspected.remove(integration);
            }
            _ => {}
        }
    }

    /// An integration whose events are not watched at its current address (new, back, or
    /// pointed at another engine) is inspected in full by the next plan.
    /// `watched` tells the address an integration's events are watched at.
    fn forget_unwatched<'a>(&mut self, v: &Validated, watched: impl Fn(&str) -> Option<&'a str>) {
        self.inspected.retain(|i| {
            v.integrations
                .get(i)
                .is_some_and(|d| watched(i) == Some(d.url.as_str()))
        });
    }

    /// What the next plan inspects (see `updated` and `inspected`).
    fn options(&self, v: &Validated) -> crate::diff::Inspect {
        let integrations: BTreeSet<String> = v
            .integrations
            .keys()
            .filter(|i| !self.inspected.contains(*i))
            .cloned()
            .collect();
        if integrations.is_empty() && self.updated.is_empty() {
            crate::diff::Inspect::Nothing
        } else {
            crate::diff::Inspect::Only {
                integrations,
                ids: self.updated.keys().cloned().collect(),
            }
        }
    }

    /// After a reconcile's apply: on each engine that was planned, what was to be inspected
    /// was, except containers the plan could not inspect and those `again` (their action
    /// failed or was held back); they stay for the next plan.
    fn done(&mut self, plan: &plan::Plan, again: &BTreeMap<String, String>) {
        for e in plan.integrations.iter().filter(|e| e.error.is_none()) {
            let full = self.inspected.insert(e.name.clone());
            // Kept as they are without an inspect, or whose inspect failed (a timeout, a proxy
            // refusing one request): a `docker update` they had stays to be seen.
            let skipped: BTreeSet<&str> = e
                .actions
                .iter()
                .filter(|a| not_inspected(a))
                .filter_map(|a| a.container.as_ref().map(|c| c.id.as_str()))
                .chain(e.uninspected.iter().map(String::as_str))
                .collect();
            self.updated
                .retain(|id, integration| *integration != e.name || skipped.contains(id.as_str()));
            if full {
                for id in skipped {
                    self.updated.insert(id.to_string(), e.name.clone());
                }
            }
            for (id, integration) in again.iter().filter(|(_, i)| **i == e.name) {
                self.updated.insert(id.clone(), integration.clone());
            }
        }
    }
}

struct State {
    opts: Options,
    log: Logger,
    metrics: Arc<Metrics>,
    backoff: HashMap<(String, String), Backoff>,
    /// Put-backs held back by the backoff in this reconcile (integration, outpost); a
    /// reconcile is due when the first of them may run.
    deferred: BTreeSet<(String, String)>,
    /// Which file events matter (shared with the watcher's callback).
    filter: Arc<std::sync::Mutex<FileFilter>>,
    /// Recent `die` events per container, to recognise a crash loop.
    deaths: HashMap<String, Vec<Instant>>,
    /// Containers whose events are ignored until then (they keep dying).
    muted: HashMap<String, (Instant, u32)>,
    /// What the next plan inspects, for what the list does not show.
    inspections: Inspections,
    /// The engines whose events are being watched, by integration.
    event_tasks: BTreeMap<String, EventTask>,
    /// The engines a reconcile could not connect to, by integration.
    down: BTreeMap<String, Down>,
    /// Where engine events and resumptions are sent.
    tx: mpsc::Sender<Trigger>,
    /// Watched directories (recursive or not) and what they were when watched (where they
    /// resolved to, and their device and inode): a symlink swapped to another target, or a
    /// directory removed and made anew, must be watched again.
    watched_dirs: BTreeMap<(PathBuf, bool), DirIdentity>,
    /// The files the manifests were read from and the files they reference, as last seen
    /// (an invalid set adds its own: the fix may be a file it names that is not there yet).
    files_seen: Vec<PathBuf>,
    /// Of those, the ones that did not exist at the last validation.
    missing: Vec<PathBuf>,
    /// What the blocked outposts of the last reconcile wait for, by integration.
    unblocks: BTreeMap<String, Vec<Unblock>>,
    /// Events outside the project, as they come.
    outside: Arc<Outside>,
    /// What failed in the last reconcile, with the number of reconciles in a row it failed in.
    failures: BTreeMap<Failed, u32>,
    /// When the retry of what failed is due.
    retry: Option<Instant>,
    /// The containers (by name) of the actions that failed in the last reconcile, and until
    /// when their events are their own failure's echo. By name alone: two integrations that
    /// reach one engine both get its events.
    echoes: HashMap<String, Instant>,
    /// The containers (by id) this watch restarted (unhealthy), and when: their `die` is the
    /// restart's, not a crash.
    restarted: HashMap<String, Instant>,
    /// The last event of each container (by id and action) and the integration it came
    /// through: the same event through another integration that reaches the same engine is
    /// one event, not two.
    last_events: HashMap<String, (String, Instant)>,
    /// The config hash each outpost's container was last seen with, up to date (planned as
    /// nothing to do) or made so by this watch, by (integration, outpost). An action on it,
    /// the manifests unchanged (`wanted`), corrects drift (`corrects_drift`); a recreate back
    /// to it puts back someone else's change (another writer with other manifests: a fight
    /// is backed off like any other put-back, `remakes`).
    seen: Hashes,
}

/// Config hashes by (integration, outpost).
type Hashes = HashMap<(String, String), String>;

/// The config hash the manifests want for each outpost.
fn wanted(v: &Validated) -> Hashes {
    v.desired
        .iter()
        .flat_map(|(i, specs)| {
            specs
                .iter()
                .map(move |s| ((i.clone(), s.outpost.clone()), s.config_hash.clone()))
        })
        .collect()
}

struct WatchProgress<'a> {
    log: &'a Logger,
    metrics: &'a Metrics,
}

impl Progress for WatchProgress<'_> {
    fn started(&self, _integration: &str, _action: &Action) {
        self.metrics.progressed();
    }

    fn pulling(&self, _integration: &str, _outpost: &str, _image: &str, _status: &str) {
        self.metrics.progressed();
    }

    fn finished(&self, o: &Outcome) {
        self.metrics.progressed();
        let mut fields = vec![
            ("integration", o.integration.clone()),
            ("outpost", o.outpost.clone()),
            ("container", o.name.clone()),
            ("action", o.action.as_str().to_string()),
        ];
        if !o.messages.is_empty() {
            fields.push(("detail", o.messages.join("; ")));
        }
        if o.ok {
            self.log.info(
                "action",
                &format!("{} {}", o.action.as_str(), o.name),
                &fields,
            );
        } else if apply::held_back_by_shutdown(o) {
            // Asked for: no failure.
            self.log.warn(
                "action",
                &format!(
                    "{} {} not started: shutting down",
                    o.action.as_str(),
                    o.name
                ),
                &fields,
            );
        } else {
            self.log.error(
                "action",
                &format!("{} {} failed", o.action.as_str(), o.name),
                &fields,
            );
        }
    }
    fn cancelled(&self) -> bool {
        crate::signals::interrupted()
    }
}

/// How long a reconcile may go without moving on (no action started or ended, no pull
/// progress) before `/healthz` and `/livez` call the watch stuck: longer than any one wait
/// can last (a request within the engine timeout and a stop's grace, the engine lock): 15
/// minutes (or the engine timeout, if longer) plus the lock timeout. Its whole length does
/// not matter: a long pull that progresses is not stuck.
pub fn stuck_after(lock_timeout: Duration) -> Duration {
    let one_request = crate::engine::docker::request_timeout() + Duration::from_secs(10);
    Duration::from_secs(900).max(one_request) + lock_timeout
}

/// Whether what the file watcher reports calls for reading the set again: an error of the
/// watcher, or events lost (the kernel's queue overflowed, a rescan asked for), since what
/// changed is then not known; else a change (reads change nothing) to a manifest, a file
/// they reference or a watched path itself (not a log file written next to them).
fn files_may_have_changed(
    res: &notify_debouncer_full::DebounceEventResult,
    filter: &FileFilter,
) -> bool {
    let Ok(events) = res else {
        return true;
    };
    events.iter().any(|e| {
        e.event.need_rescan()
            || (!matches!(e.event.kind, notify::EventKind::Access(_))
                && e.event.paths.iter().any(|p| filter.relevant(p)))
    })
}

/// Runs until SIGINT or SIGTERM; returns the exit code.
pub async fn run(opts: Options, log: Logger, metrics: Arc<Metrics>) -> i32 {
    let (tx, mut rx) = mpsc::channel::<Trigger>(256);
    let signal_log = log.clone();
    crate::signals::install(move || {
        signal_log.info(
            "stop",
            "signal received: finishing the action in flight, then exiting",
            &[],
        );
    });
    let file_tx = tx.clone();
    let filter = Arc::new(std::sync::Mutex::new(FileFilter::new(&opts.paths, &[])));
    let cb_filter = Arc::clone(&filter);
    let debouncer = notify_debouncer_full::new_debouncer(
        opts.debounce,
        None,
        move |res: notify_debouncer_full::DebounceEventResult| {
            let Ok(filter) = cb_filter.lock() else {
                return;
            };
            if files_may_have_changed(&res, &filter) {
                let _ = file_tx.try_send(Trigger::Files);
            }
        },
    );
    let mut debouncer = match debouncer {
        Ok(d) => d,
        Err(e) => {
            log.error("start", &format!("cannot watch files: {e}"), &[]);
            return 1;
        }
    };
    let mut state = State::new(opts, log.clone(), metrics, tx.clone(), filter);
    log.info(
        "start",
        "watching",
        &[
            (
                "paths",
                state
                    .opts
                    .paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "interval",
                humantime::format_duration(state.opts.interval).to_string(),
            ),
        ],
    );
    let mut interval = tokio::time::interval_at(
        tokio::time::Instant::now() + state.opts.interval,
        state.opts.interval,
    );
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outside = Arc::clone(&state.outside);
    let mut next = Some(Trigger::Start);
    loop {
        // Also before a reconcile: a signal may come while a burst of events is gathered.
        if crate::signals::interrupted() {
            break;
        }
        if let Some(trigger) = next.take() {
            state.reconcile(&trigger, &mut debouncer).await;
        }
        if crate::signals::interrupted() {
            break;
        }
        tokio::select! {
            _ = crate::signals::until_interrupted() => break,
            _ = interval.tick() => next = Some(Trigger::Interval),
            _ = sleep_until(state.retry_at()) => next = Some(Trigger::Retry),
            t = rx.recv() => {
                let Some(t) = t else { break };
                state.inspections.note(&t);
                if !state.accept(&t) {
                    continue;
                }
                next = Some(t);
            }
            _ = outside.arrived.notified() => {
                let Some(t) = state.unblocking() else { continue };
                next = Some(t);
            }
        }
        // Coalesce a burst (an editor's save, our own recreate's events) into one run.
        if let Some(t) = next.take_if(|t| {
            matches!(
                t,
                Trigger::Files | Trigger::Engine { .. } | Trigger::Unblocking { .. }
            )
        }) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut t = t;
            while let Ok(more) = rx.try_recv() {
                state.inspections.note(&more);
                if matches!(more, Trigger::Files) {
                    t = more;
                }
            }
            next = Some(t);
        }
    }
    for t in state.event_tasks.values() {
        t.task.abort();
    }
    log.info("stop", "shut down cleanly", &[]);
    0
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl State {
    fn new(
        opts: Options,
        log: Logger,
        metrics: Arc<Metrics>,
        tx: mpsc::Sender<Trigger>,
        filter: Arc<std::sync::Mutex<FileFilter>>,
    ) -> State {
        State {
            log,
            metrics,
            backoff: HashMap::new(),
            deferred: BTreeSet::new(),
            filter,
            deaths: HashMap::new(),
            muted: HashMap::new(),
            inspections: Inspections::default(),
            event_tasks: BTreeMap::new(),
            down: BTreeMap::new(),
            tx,
            watched_dirs: BTreeMap::new(),
            files_seen: Vec::new(),
            missing: Vec::new(),
            unblocks: BTreeMap::new(),
            outside: Arc::new(Outside::default()),
            failures: BTreeMap::new(),
            retry: None,
            echoes: HashMap::new(),
            restarted: HashMap::new(),
            last_events: HashMap::new(),
            seen: HashMap::new(),
            opts,
        }
    }

    /// The reconcile that the events outside the project read now call for, if one does: the
    /// first that a blocked outpost waits for (`accept`), or, when some were dropped while
    /// outposts wait, one in case a dropped one was.
    fn unblocking(&mut self) -> Option<Trigger> {
        let (events, dropped) = self.outside.take();
        let mut first = None;
        for (integration, event) in events {
            let t = Trigger::Unblocking { integration, event };
            // Every one is offered: `accept` counts the deaths of a crash-looping holder.
            if self.accept(&t) && first.is_none() {
                first = Some(t);
            }
        }
        if first.is_none() && dropped && !self.unblocks.is_empty() {
            first = Some(Trigger::OutsideEventsDropped);
        }
        first
    }

    /// When the first put-back held back by the backoff may run, or the retry after a
    /// reconcile in which something failed.
    fn retry_at(&self) -> Option<Instant> {
        self.deferred
            .iter()
            .filter_map(|k| self.backoff.get(k))
            .map(|b| b.ready)
            .chain(self.retry)
            .min()
    }

    /// After a reconcile: when something failed (an action, an engine, a lock), the next
    /// one runs in 5 s, then 10 s, doubling to 5 min while that failure goes on (a port held
    /// by a process outside Docker, an engine restarting, a registry away leave no event to
    /// wait for). Each failure counts on its own: a new one is retried in 5 s even while an
    /// engine has been away for an hour; one that did not fail again is forgotten.
    fn schedule_retry(&mut self, failed: BTreeSet<Failed>) {
        let (failures, wait) = failure_row(&self.failures, failed);
        self.failures = failures;
        self.retry = wait.map(|w| Instant::now() + w);
    }

    /// Whether an event of `container` is the echo of an action that just failed: one of its
    /// containers, or the previous one parked by its recreate (renamed `<name>-outpostctl-old`,
    /// maybe with its id after).
    fn is_echo(&self, container: &str, now: Instant) -> bool {
        let base = match container.find(crate::apply::PARKED) {
            Some(at) => &container[..at],
            None => container,
        };
        self.echoes.get(base).is_some_and(|until| *until > now)
    }

    /// Whether `action` of container `id` came through another integration a moment ago:
    /// the same event of an engine two integrations reach. Else noted as come through
    /// `integration`.
    fn seen_through_another(
        &mut self,
        integration: &str,
        id: &str,
        action: &str,
        now: Instant,
    ) -> bool {
        if id.is_empty() {
            return false;
        }
        let key = format!("{id}/{action}");
        let twin = self.last_events.get(&key).is_some_and(|(through, at)| {
            through != integration && now.duration_since(*at) < TWIN_EVENT
        });
        if !twin {
            self.last_events
                .retain(|_, (_, at)| now.duration_since(*at) < TWIN_EVENT);
            self.last_events.insert(key, (integration.to_string(), now));
        }
        twin
    }

    /// The diff options of a reconcile: `--adopt`, and what to inspect.
    fn diff_options(&self, v: &Validated) -> DiffOptions {
        DiffOptions {
            adopt: self.opts.adopt,
            inspect: self.inspections.options(v),
            keep_orphans: self.opts.no_prune,
            ..Default::default()
        }
    }

    /// Whether an engine event should trigger a reconcile. Docker's restart policy restarts a
    /// crashing container by itself; reconciling on each of its deaths would be a tight loop,
    /// so a container that died 3 times in 5 minutes is reported as dying and its events are
    /// ignored for a while (5 s, doubling to 5 min); the interval still reconciles.
    fn accept(&mut self, t: &Trigger) -> bool {
        let (integration, container, id, action, ours) = match t {
            Trigger::Engine {
                integration,
                container,
                id,
                action,
            } => (integration, container, id, action, true),
            Trigger::Unblocking { integration, event } => {
                let waits = self
                    .unblocks
                    .get(integration)
                    .map_or(&[][..], Vec::as_slice);
                if !unblocks(waits, event) {
                    return false;
                }
                // Removed, renamed, created, arrived: final, whatever it did before. Only a
                // container that keeps dying (restarted by its policy) is muted: its deaths
                // are counted, and its starts (a namespace an outpost shares) muted with them.
                if !matches!(event.action.as_str(), "die" | "start") {
                    return true;
                }
                (integration, &event.name, &event.id, &event.action, false)
            }
            _ => return true,
        };
        // A container that turned healthy (or started its checks) needs nothing; only
        // `health_status: unhealthy` may (a restart).
        if action.starts_with("health_status") && !action.ends_with("unhealthy") {
            return false;
        }
        let now = Instant::now();
        if self.seen_through_another(integration, id, action, now) {
            return false;
        }
        // A crash loop is one container restarted by its policy: counted by id (a container
        // removed and put back again and again is not one; the put-back backoff sees that).
        let key = id.to_string();
        // Removed, renamed, updated or paused by someone: no part of a crash loop, even for
        // a container that keeps dying (nothing else would put it back before the interval).
        let by_hand = matches!(action.as_str(), "destroy" | "rename" | "update" | "pause");
        if let Some((until, _)) = self.muted.get(&key)
            && *until > now
            && !by_hand
        {
            return false;
        }
        // The echo of an action that just failed (its half-made container removed, the
        // previous one put back): the retry scheduled for it runs it again.
        if ours && self.is_echo(container, now) {
            return false;
        }
        if action != "die" {
            return true;
        }
        // The watch's own restart (of an unhealthy container): no crash, nothing to do.
        if self
            .restarted
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < RESTART_ECHO)
        {
            return false;
        }
        let window = Duration::from_secs(300);
        // Forget containers that died long enough ago, and mutes that ended as long ago (a
        // mute's strikes grow while its container keeps dying).
        self.deaths
            .retain(|_, d| d.last().is_some_and(|t| now.duration_since(*t) < window));
        self.muted.retain(|_, (until, _)| *until + window > now);
        let deaths = self.deaths.entry(key.clone()).or_default();
        deaths.retain(|d| now.duration_since(*d) < window);
        deaths.push(now);
        if deaths.len() >= STRIKES_BEFORE_BACKOFF as usize {
            let strikes = self
                .muted
                .get(&key)
                .map_or(STRIKES_BEFORE_BACKOFF, |(_, s)| s + 1);
            let delay = backoff_delay(strikes, STRIKES_BEFORE_BACKOFF);
            self.muted.insert(key, (now + delay, strikes));
            if ours {
                self.metrics.error();
            }
            self.log.warn(
                "backoff",
                &format!(
                    "container `{container}` keeps dying ({} times in the last 5 minutes); Docker's restart policy restarts it; its events are ignored for {}s",
                    deaths.len(),
                    delay.as_secs()
                ),
                &[("integration", integration.clone()), ("container", container.clone())],
            );
            return false;
        }
        true
    }

    /// One full validate -> plan -> apply. The files it read are watched right after the
    /// validation: an edit made while it plans and applies (minutes, with image pulls or a
    /// lock held elsewhere) starts the next one.
    async fn reconcile<W: notify::Watcher, C: notify_debouncer_full::FileIdCache>(
        &mut self,
        trigger: &Trigger,
        debouncer: &mut notify_debouncer_full::Debouncer<W, C>,
    ) {
        let started = Instant::now();
        let mut fields = vec![("trigger", trigger.name().to_string())];
        if let Trigger::Engine {
            integration,
            container,
            action,
            ..
        } = trigger
        {
            fields.push(("integration", integration.clone()));
            fields.push(("container", container.clone()));
            fields.push(("docker_event", action.clone()));
        }
        if let Trigger::EventsResumed { integration } = trigger {
            fields.push(("integration", integration.clone()));
        }
        if let Trigger::Unblocking { integration, event } = trigger {
            fields.push(("integration", integration.clone()));
            let what = match event.subject {
                EventSubject::Network | EventSubject::Detached => "network",
                EventSubject::Image => "image",
                EventSubject::Managed | EventSubject::Container => "container",
            };
            fields.push((what, event.name.clone()));
            fields.push(("docker_event", event.action.clone()));
        }
        self.log.info("reconcile", "reconcile started", &fields);
        self.metrics.reconcile_started();
        // Why the reconcile failed (for /healthz): it succeeded when there is none.
        let mut causes: Vec<String> = Vec::new();
        let outcome = validate(&self.opts.paths);
        for d in &outcome.diagnostics {
            let line = d.headline();
            let hint = d.hint.clone().unwrap_or_default();
            if d.is_error() {
                self.log.error("invalid", &line, &[("hint", hint)]);
            } else {
                self.log.warn("manifest", &line, &[("hint", hint)]);
            }
        }
        let invalid = outcome.has_errors();
        // Files the set names that are not there (yet): one written before its directory is
        // watched sends no event (`watch_files` looks again).
        self.missing = outcome
            .files
            .iter()
            .filter(|f| !f.exists())
            .cloned()
            .collect();
        if invalid {
            self.files_seen.extend(outcome.files.iter().cloned());
            self.files_seen.sort();
            self.files_seen.dedup();
        } else {
            self.files_seen = outcome.files.clone();
        }
        self.watch_files(debouncer);
        let Some(v) = outcome.validated.filter(|_| !invalid) else {
            // Nothing to retry until a file changes (which starts a reconcile): neither what
            // failed nor a put-back held back (whose due time would pass and fire at once,
            // again and again). Unless reading failed for a reason no file change would
            // tell of (too many open files, an I/O error): then the reconcile is tried
            // again, backed off as a failed action is.
            self.unblocks.clear();
            self.deferred.clear();
            let unreadable = outcome
                .diagnostics
                .iter()
                .any(|d| d.is_error() && d.transient);
            if unreadable {
                self.schedule_retry(BTreeSet::from([Failed::Read]));
                let wait = self.retry.map_or(0.0, |at| {
                    at.saturating_duration_since(Instant::now()).as_secs_f64()
                });
                self.log.error(
                    "reconcile",
                    &format!("the manifests could not be read: nothing applied; containers keep running as last applied; trying again in {wait:.0}s"),
                    &[],
                );
                let first = outcome
                    .diagnostics
                    .iter()
                    .find(|d| d.is_error() && d.transient);
                causes.push(format!(
                    "the manifests could not be read: {}",
                    first.map(|d| d.headline()).unwrap_or_default()
                ));
            } else {
                self.failures.clear();
                self.retry = None;
                self.log.error(
                    "reconcile",
                    "manifests are invalid: nothing applied; containers keep running as last applied",
                    &[],
                );
                let n = outcome.diagnostics.iter().filter(|d| d.is_error()).count();
                causes.push(format!(
                    "the manifests are invalid ({n} error{}; see the log)",
                    if n == 1 { "" } else { "s" }
                ));
            }
            self.metrics.reconcile_finished(started.elapsed(), causes);
            return;
        };
        let tasks = &self.event_tasks;
        // A subscription for another project (`project:` changed) watches none of this one's.
        self.inspections.forget_unwatched(&v, |i| {
            tasks
                .get(i)
                .filter(|t| t.project == v.project)
                .map(|t| t.url.as_str())
        });
        self.watch_engines(&v, started);
        let engines = self.connect(&v).await;
        let mut plan = plan::build(&v, &engines, self.diff_options(&v)).await;
        // What failed (not only blocked), by integration or integration/outpost: a retry is
        // scheduled.
        let mut failed: BTreeSet<Failed> = BTreeSet::new();
        self.metrics
            .keep_engines(&v.integrations.keys().map(String::as_str).collect());
        for e in &plan.integrations {
            self.metrics.engine_up(&e.name, e.error.is_none());
            if let Some(err) = &e.error {
                failed.insert(Failed::Engine(e.name.clone()));
                self.log
                    .error("engine", err, &[("integration", e.name.clone())]);
                causes.push(format!("integration `{}`: {err}", e.name));
            }
            for a in e.actions.iter().filter(|a| a.action == ActionKind::Blocked) {
                causes.push(format!(
                    "outpost `{}` (integration `{}`) is blocked: {}",
                    a.outpost,
                    e.name,
                    a.error.as_deref().unwrap_or("blocked")
                ));
                self.log.error(
                    "blocked",
                    a.error.as_deref().unwrap_or("blocked"),
                    &[
                        ("integration", e.name.clone()),
                        ("outpost", a.outpost.clone()),
                    ],
                );
            }
        }
        let wanted = wanted(&v);
        self.seen.retain(|key, _| wanted.contains_key(key));
        // As planned, before the backoff held some actions back (see `Inspections::done`).
        let planned = plan.clone();
        for e in planned.integrations.iter().filter(|e| e.error.is_none()) {
            for a in e.actions.iter().filter(|a| a.action == ActionKind::Noop) {
                let key = (e.name.clone(), a.outpost.clone());
                if let Some(hash) = wanted.get(&key) {
                    self.seen.insert(key, hash.clone());
                }
            }
        }
        self.filter_actions(&mut plan, true, &wanted);
        let mut locks = Vec::new();
        if plan.has_changes() {
            // One writer per engine: lock the engines with changes and plan them again.
            let lock_opts = crate::lock::LockOptions::new(self.opts.lock_timeout, "watch");
            let log = self.log.clone();
            let waiting = move |m: &str| log.warn("lock", m, &[]);
            let (locked, held) = crate::lock::plan_under_lock(
                &v,
                &engines,
                &plan,
                self.diff_options(&v),
                false,
                &lock_opts,
                &waiting,
            )
            .await;
            plan = locked;
            locks = held;
            // What failed there now: not an engine whose failure was reported above already.
            for e in plan.integrations.iter().filter(|e| e.error.is_some()) {
                if !failed.insert(Failed::Engine(e.name.clone())) {
                    continue;
                }
                self.metrics.engine_up(&e.name, false);
                causes.push(format!(
                    "integration `{}`: {}",
                    e.name,
                    e.error.as_deref().unwrap_or_default()
                ));
                self.log.error(
                    "lock",
                    e.error.as_deref().unwrap_or_default(),
                    &[("integration", e.name.clone())],
                );
            }
            self.filter_actions(&mut plan, false, &wanted);
        }
        let mut summary = crate::render::plan::summary_line(&plan.summary());
        if !self.deferred.is_empty() {
            // Not "no changes": an outpost is down, its put-back waiting for its backoff.
            summary.push_str(&format!(
                ", {} held back by the put-back backoff",
                self.deferred.len()
            ));
        }
        // Outposts whose action failed, and those the backoff held back: their containers are
        // inspected again by the next plan.
        let mut again = self.deferred.clone();
        if plan.has_changes() {
            let progress = WatchProgress {
                log: &self.log,
                metrics: &self.metrics,
            };
            let report = apply::apply(&plan, &v, &engines, &progress).await;
            let now = Instant::now();
            self.restarted
                .retain(|_, at| now.duration_since(*at) < RESTART_ECHO);
            for o in &report.outcomes {
                let key = (o.integration.clone(), o.outpost.clone());
                // The planned action this outcome is of.
                let action = plan
                    .integrations
                    .iter()
                    .filter(|e| e.name == o.integration)
                    .flat_map(|e| &e.actions)
                    .find(|a| a.outpost == o.outpost && a.action == o.action);
                // Judged against what was seen before this apply.
                let drift = action.is_some_and(|a| corrects_drift(a, &key, &self.seen, &wanted));
                if o.ok
                    && o.action != ActionKind::Remove
                    && let Some(hash) = wanted.get(&key)
                {
                    self.seen.insert(key, hash.clone());
                }
                if o.ok
                    && o.action == ActionKind::Restart
                    && let Some(c) = action.and_then(|a| a.container.as_ref())
                {
                    self.restarted.insert(c.id.clone(), now);
                }
                if o.ok {
                    self.metrics.change_applied(o.action.as_str(), drift);
                } else {
                    failed.insert(Failed::Outpost(o.integration.clone(), o.outpost.clone()));
                    let said = o.failure().unwrap_or_default();
                    // Held back by a shutdown: asked for, not counted as an action's failure.
                    let what = if apply::held_back_by_shutdown(o) {
                        said.to_string()
                    } else {
                        self.metrics.action_failed(o.action.as_str());
                        format!("failed: {said}")
                    };
                    causes.push(format!(
                        "outpost `{}` (integration `{}`): {} {what}",
                        o.outpost,
                        o.integration,
                        o.action.as_str(),
                    ));
                    again.insert((o.integration.clone(), o.outpost.clone()));
                }
            }
            // Apply gives each engine that could not be planned as an error again: said once.
            for (name, err) in &report.engine_errors {
                if failed.insert(Failed::Engine(name.clone())) {
                    self.metrics.engine_up(name, false);
                    causes.push(format!("integration `{name}`: {err}"));
                }
            }
            // A lock lost once the last action had started: a failed reconcile, tried again.
            for (name, why) in apply::lock_lost_after_start(&plan, &report) {
                let why = format!("{why} (after its actions had started; they finished)");
                self.log
                    .error("lock", &why, &[("integration", name.clone())]);
                self.metrics.engine_up(&name, false);
                causes.push(format!("integration `{name}`: {why}"));
                failed.insert(Failed::Engine(name));
            }
        }
        crate::lock::release_all(locks).await;
        // The plan made under the lock is the latest look at the engines it covers.
        self.unblocks = planned
            .integrations
            .iter()
            .map(|e| {
                let latest = plan.integrations.iter().find(|l| l.name == e.name);
                let waits = latest.filter(|l| l.error.is_none()).unwrap_or(e);
                (e.name.clone(), waits.unblocks.clone())
            })
            .filter(|(_, w)| !w.is_empty())
            .collect();
        let again: BTreeMap<String, String> = [&planned, &plan]
            .into_iter()
            .flat_map(|p| &p.integrations)
            .flat_map(|e| e.actions.iter().map(move |a| (e, a)))
            .filter(|(e, a)| again.contains(&(e.name.clone(), a.outpost.clone())))
            .filter_map(|(e, a)| a.container.as_ref().map(|c| (c.id.clone(), e.name.clone())))
            .collect();
        self.inspections.done(&plan, &again);
        self.schedule_retry(failed);
        // Events of the failed actions' containers that come in the next moments are their
        // own echo (Docker reports them as they happen, within milliseconds).
        let until = Instant::now() + ECHO;
        self.echoes = plan
            .integrations
            .iter()
            .flat_map(|e| e.actions.iter().map(move |a| (e, a)))
            .filter(|(e, a)| {
                let failed = Failed::Outpost(e.name.clone(), a.outpost.clone());
                self.failures.contains_key(&failed)
            })
            .flat_map(|(_, a)| {
                let previous = a.container.as_ref().map(|c| c.name.clone());
                [Some(a.name.clone()), previous]
                    .into_iter()
                    .flatten()
                    .map(move |n| (n, until))
            })
            .collect();
        let ok = causes.is_empty();
        self.metrics.reconcile_finished(started.elapsed(), causes);
        let ms = started.elapsed().as_millis().to_string();
        if ok {
            self.log.info(
                "reconcile",
                &format!("reconcile done: {summary}"),
                &[("duration_ms", ms)],
            );
        } else {
            self.log.error(
                "reconcile",
                &format!("reconcile done with errors: {summary}"),
                &[("duration_ms", ms)],
            );
        }
    }

    /// Drops what must not happen now: removals with --no-prune (kept as pending), and
    /// put-backs of outposts that are backing off (a retry is scheduled for them).
    /// `count` is set for the first look at a reconcile's plan: put-backs are counted and
    /// held back there, and the look at the plan made under the lock holds back the same.
    /// `wanted`: the config hashes the manifests want (see `seen`).
    fn filter_actions(&mut self, plan: &mut plan::Plan, count: bool, wanted: &Hashes) {
        let now = Instant::now();
        if count {
            self.deferred.clear();
        }
        for e in &mut plan.integrations {
            let integration = e.name.clone();
            for a in e.actions.iter().filter(|_| count) {
                let key = (integration.clone(), a.outpost.clone());
                // An outpost whose action failed is tried again by the failure retry, not
                // counted as put back after someone else's change; nor is one whose engine
                // failed (its lock held by another writer, say): its put-back never ran.
                let failed = Failed::Outpost(key.0.clone(), key.1.clone());
                let engine_failed = Failed::Engine(key.0.clone());
                if (is_put_back(a) || remakes(a, &key, &self.seen, wanted))
                    && !self.failures.contains_key(&failed)
                    && !self.failures.contains_key(&engine_failed)
                {
                    let mut entry = self.backoff.remove(&key);
                    let wait = Backoff::put_back(&mut entry, now);
                    let strikes = entry.map_or(0, |b| b.strikes);
                    if let Some(b) = entry {
                        self.backoff.insert(key.clone(), b);
                    }
                    if let Some(wait) = wait {
                        self.log.warn(
                            "backoff",
                            &format!(
                                "outpost `{}` keeps needing to be put back ({strikes} put-backs in a row): something keeps removing, stopping or changing its container (another controller, such as authentik's own Docker integration for this outpost?); next attempt in {}s",
                                a.outpost,
                                wait.as_secs_f64().ceil() as u64
                            ),
                            &[("integration", integration.clone()), ("outpost", a.outpost.clone())],
                        );
                        self.deferred.insert(key);
                    }
                }
                // Seeing the container fine does not end the row: a plan started by the
                // `kill` of a `docker rm -f` may still list it running, and another
                // controller that keeps removing it lets it run in between. A quiet minute
                // ends it (`ROW`).
            }
            let log = &self.log;
            let no_prune = self.opts.no_prune;
            let deferred = &self.deferred;
            let seen = &self.seen;
            e.actions.retain(|a| {
                if kept_by_no_prune(a, no_prune) {
                    if count {
                        log.warn(
                            "pending",
                            &format!("remove {} is pending (--no-prune)", a.name),
                            &[
                                ("integration", integration.clone()),
                                ("outpost", a.outpost.clone()),
                            ],
                        );
                    }
                    return false;
                }
                let key = (integration.clone(), a.outpost.clone());
                !((waits_for_backoff(a) || remakes(a, &key, seen, wanted))
                    && deferred.contains(&key))
            });
        }
    }

    /// Watches the manifest paths and every directory holding a file the manifests were read
    /// from or reference (where it is, and where its symlinks lead).
    fn watch_files<W: notify::Watcher, C: notify_debouncer_full::FileIdCache>(
        &mut self,
        d: &mut notify_debouncer_full::Debouncer<W, C>,
    ) {
        if let Ok(mut f) = self.filter.lock() {
            *f = FileFilter::new(&self.opts.paths, &self.files_seen);
        }
        let want = watch_targets(&self.opts.paths, &self.files_seen);
        self.apply_watches(d, want);
        // A missing file that appeared between the validation and the watch: read again.
        if self.missing.iter().any(|f| f.exists()) {
            self.missing.clear();
            let _ = self.tx.try_send(Trigger::Files);
        }
    }

    fn apply_watches<W: notify::Watcher, C: notify_debouncer_full::FileIdCache>(
        &mut self,
        d: &mut notify_debouncer_full::Debouncer<W, C>,
        want: BTreeSet<(PathBuf, bool)>,
    ) {
        let mut now = BTreeMap::new();
        for (key, was) in &self.watched_dirs {
            if !want.contains(key) || DirIdentity::of(&key.0) != *was {
                let _ = d.unwatch(&key.0);
            } else {
                now.insert(key.clone(), was.clone());
            }
        }
        for (dir, recursive) in want {
            if now.contains_key(&(dir.clone(), recursive)) {
                continue;
            }
            let mode = if recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match d.watch(&dir, mode) {
                Ok(()) => {
                    let identity = DirIdentity::of(&dir);
                    now.insert((dir, recursive), identity);
                }
                // Not recorded: tried again at the next reconcile.
                Err(e) => self.log.warn(
                    "watch",
                    &format!("cannot watch {}: {e}", dir.display()),
                    &[],
                ),
            }
        }
        self.watched_dirs = now;
    }

    /// Connects to the engines of `v`, in parallel, but not to one that is down (see `Down`):
    /// that one counts as failed again, saying since when, without a wait.
    async fn connect(&mut self, v: &Validated) -> plan::Engines {
        self.down.retain(|name, d| {
            v.integrations
                .get(name)
                .is_some_and(|def| def.url == d.url && def.endpoint == d.endpoint)
        });
        let mut skipped = Vec::new();
        let mut tried = BTreeMap::new();
        for (name, def) in &v.integrations {
            let reached = |d: &Down| {
                self.event_tasks
                    .get(name)
                    .is_none_or(|t| t.reach.since(d.tried))
            };
            match self.down.get(name) {
                Some(d) if !reached(d) => skipped.push((name.clone(), d)),
                _ => {
                    tried.insert(name.clone(), def.clone());
                }
            }
        }
        let skipped: Vec<(String, crate::engine::EngineError)> = skipped
            .into_iter()
            .map(|(name, d)| {
                let down_for = Duration::from_secs(d.since.elapsed().as_secs());
                let message = format!(
                    "{} (unreachable for {}: not tried again until its event subscription, which keeps trying, reaches it)",
                    d.error,
                    humantime::format_duration(down_for)
                );
                let kind = crate::engine::ErrorKind::Unreachable;
                (name, crate::engine::EngineError::new(kind, message))
            })
            .collect();
        let now = Instant::now();
        let mut engines = crate::engine::connect::connect_each(&tried).await;
        for (name, result) in &engines {
            let Some(def) = tried.get(name) else { continue };
            match result {
                Ok(_) => {
                    self.down.remove(name);
                }
                Err(e) => {
                    let since = self.down.get(name).map_or(now, |d| d.since);
                    let down = Down {
                        url: def.url.clone(),
                        endpoint: def.endpoint.clone(),
                        since,
                        tried: now,
                        error: e.to_string(),
                    };
                    self.down.insert(name.clone(), down);
                }
            }
        }
        for (name, e) in skipped {
            engines.insert(name, Err(e));
        }
        engines
    }

    /// Watches the events of every engine of `v`, before the reconcile that started at
    /// `started` reads them: a subscription already watched at the same address is kept,
    /// others are made anew and replay the engine's events since `started`.
    fn watch_engines(&mut self, v: &Validated, started: Instant) {
        self.event_tasks.retain(|name, t| {
            // Same address and same keys, CA and pinned host key (a rotated key is used), for
            // the same project (its events are filtered by the project's label).
            let keep = v
                .integrations
                .get(name)
                .is_some_and(|d| d.url == t.url && d.endpoint == t.endpoint)
                && t.project == v.project
                && !t.task.is_finished();
            if !keep {
                t.task.abort();
            }
            keep
        });
        for (name, def) in &v.integrations {
            if self.event_tasks.contains_key(name) {
                continue;
            }
            let reach = Arc::new(Reach::default());
            let task = tokio::spawn(watch_events(
                name.clone(),
                def.clone(),
                v.project.clone(),
                started,
                Subscriber {
                    tx: self.tx.clone(),
                    outside: Arc::clone(&self.outside),
                    reach: Arc::clone(&reach),
                    log: self.log.clone(),
                    metrics: Arc::clone(&self.metrics),
                },
            ));
            let task = EventTask {
                url: def.url.clone(),
                endpoint: def.endpoint.clone(),
                project: v.project.clone(),
                task,
                reach,
            };
            self.event_tasks.insert(name.clone(), task);
        }
    }
}

/// Which events of a new subscription are passed on: the engine first replays those it holds
/// since a moment before the cut (the engine's time when the reconcile that reads it
/// started); of those older than the cut only `update` counts (the list does not show what it
/// changed; it shows what the others did). Events come in order, so once one is as new as the
/// cut, all are passed. An event without a time is passed.
struct Replay(Option<i64>);

impl Replay {
    fn admits(&mut self, action: &str, time_nano: Option<i64>) -> bool {
        if let (Some(cut), Some(t)) = (self.0, time_nano) {
            if t < cut {
                return action == "update";
            }
            self.0 = None;
        }
        true
    }
}

/// Where an event subscription sends what it reads, and says whether it reaches its engine.
struct Subscriber {
    tx: mpsc::Sender<Trigger>,
    outside: Arc<Outside>,
    reach: Arc<Reach>,
    log: Logger,
    metrics: Arc<Metrics>,
}

/// Forwards one engine's events as triggers, subscribing again after a break. What the
/// engine did before `known` is known: the reconcile that started then reads the engine
/// after this subscription was asked for.
async fn watch_events(
    name: String,
    def: crate::validate::IntegrationDef,
    project: String,
    mut known: Instant,
    to: Subscriber,
) {
    let Subscriber {
        tx,
        outside,
        reach,
        log,
        metrics,
    } = to;
    use crate::engine::Engine;
    let mut delay = Duration::from_secs(1);
    // After a break, what happened meanwhile left no event: the next plan inspects this
    // engine in full.
    let mut broken = false;
    loop {
        match crate::engine::connect::connect(&def).await {
            Ok(engine) => {
                reach.connected(true);
                // The engine replays the events it holds since a moment before `known`, by its
                // own clock: a `docker update` made while subscribing is not missed. Replayed
                // events from before `known` other than `update` are dropped: the reconcile's
                // list shows what they did.
                let known_at = match engine.clock().await {
                    Ok(Some(now)) => {
                        let ago = i64::try_from(known.elapsed().as_nanos()).unwrap_or(i64::MAX);
                        Some(now.saturating_sub(ago))
                    }
                    Ok(None) | Err(_) => {
                        // No replay without the engine's clock: inspect in full instead.
                        log.warn(
                            "engine",
                            "cannot read the engine's clock: events are not replayed; its containers are inspected in full",
                            &[("integration", name.clone())],
                        );
                        broken = true;
                        None
                    }
                };
                let since = known_at.map(|t| t.saturating_sub(REPLAY_MARGIN.as_nanos() as i64));
                let mut events = engine.events(&project, since);
                if std::mem::take(&mut broken) {
                    let integration = name.clone();
                    let _ = tx.send(Trigger::EventsResumed { integration }).await;
                }
                let mut replay = Replay(known_at);
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(ev) if !replay.admits(&ev.action, ev.time_nano) => {}
                        Ok(ev) => {
                            delay = Duration::from_secs(1);
                            metrics.event_received(&name);
                            if ev.subject == EventSubject::Detached {
                                if let Some(t) = detached(&engine, &name, &project, ev).await {
                                    let _ = tx.send(t).await;
                                }
                                continue;
                            }
                            if ev.subject != EventSubject::Managed {
                                outside.push(name.clone(), ev);
                                continue;
                            }
                            let _ = tx
                                .send(Trigger::Engine {
                                    integration: name.clone(),
                                    container: ev.name,
                                    id: ev.id,
                                    action: ev.action,
                                })
                                .await;
                        }
                        Err(e) => {
                            log.warn(
                                "engine",
                                &format!("event stream: {e}"),
                                &[("integration", name.clone())],
                            );
                            break;
                        }
                    }
                }
            }
            Err(e) => log.warn(
                "engine",
                &format!("cannot watch events: {e}"),
                &[("integration", name.clone())],
            ),
        }
        reach.connected(false);
        broken = true;
        known = Instant::now();
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// A container taken off a network: a reconcile when it is a running container of `project`,
/// taken off by hand (`docker network disconnect`); the disconnect of a container's own stop
/// or removal finds it stopped or gone (the engine answers the inspect once the stop is done).
async fn detached<E: crate::engine::Engine + ?Sized>(
    engine: &E,
    integration: &str,
    project: &str,
    ev: EngineEvent,
) -> Option<Trigger> {
    if ev.id.is_empty() {
        return None;
    }
    let c = engine.inspect(&ev.id).await.ok()?;
    let ours = c
        .labels
        .get(crate::desired::LABEL_PROJECT)
        .map(String::as_str)
        == Some(project);
    (c.running && ours).then(|| Trigger::Engine {
        integration: integration.to_string(),
        container: c.name,
        id: c.id,
        action: ev.action,
    })
}

/// Whether `ev` (outside the project) brings what one of `waits` waits for: the container
/// that held a host port, a name or an outpost's uuid dies, is removed or renamed; a container
/// of the blocked name is removed or renamed; a container of a name an outpost shares the
/// network namespace of is made, renamed to it or started; the missing network is created; the image waited
/// for arrives (pulled or tagged as that reference; loaded, imported or built, which name none).
fn unblocks(waits: &[Unblock], ev: &EngineEvent) -> bool {
    let gone = matches!(ev.action.as_str(), "destroy" | "rename");
    waits.iter().any(|w| match (w, ev.subject) {
        (Unblock::Container(id), EventSubject::Container) => *id == ev.id,
        (Unblock::Name(n), EventSubject::Container) => {
            gone && (ev.name == *n || ev.old_name.as_ref() == Some(n))
        }
        (Unblock::Appears(n), EventSubject::Container) => {
            matches!(
                ev.action.as_str(),
                "create" | "rename" | "start" | "die" | "destroy"
            ) && ev.name == *n
        }
        (Unblock::Network(n), EventSubject::Network) => ev.name == *n || ev.name.is_empty(),
        // A load, an import or a build names no reference: any may have brought it.
        (Unblock::Image(image), EventSubject::Image) => {
            matches!(ev.action.as_str(), "load" | "import" | "create")
                || familiar(&ev.name) == familiar(image)
        }
        _ => false,
    })
}

/// An image reference as Docker's events write it: without `docker.io/` and `library/`, and
/// with `:latest` when it has neither tag nor digest.
fn familiar(reference: &str) -> String {
    let r = reference.trim();
    let r = r
        .strip_prefix("docker.io/")
        .or_else(|| r.strip_prefix("index.docker.io/"))
        .unwrap_or(r);
    let r = match r.strip_prefix("library/") {
        Some(rest) if !rest.contains('/') => rest,
        _ => r,
    };
    let last = r.rsplit('/').next().unwrap_or(r);
    if last.contains(':') || last.contains('@') {
        r.to_string()
    } else {
        format!("{r}:latest")
    }
}

fn dir_or_dot(p: &Path) -> PathBuf {
    let p = if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    };
    // Absolute, but symlinks kept: a swapped symlink must be seen as the path it is.
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Which changed paths concern the manifest set: the manifest paths themselves (a symlink
/// swapped), manifests under them, Kubernetes' `..data` swaps, and referenced files.
#[derive(Debug, Default)]
struct FileFilter {
    roots: Vec<PathBuf>,
    referenced: Vec<PathBuf>,
    /// Directories of referenced files that are not there yet: their creation matters.
    pending: Vec<PathBuf>,
}

impl FileFilter {
    fn new(paths: &[PathBuf], referenced: &[PathBuf]) -> FileFilter {
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        let mut roots: Vec<PathBuf> = paths.iter().map(abs).collect();
        roots.extend(paths.iter().filter_map(|p| std::fs::canonicalize(p).ok()));
        let mut refs: Vec<PathBuf> = referenced.iter().map(abs).collect();
        refs.extend(
            referenced
                .iter()
                .filter_map(|p| std::fs::canonicalize(p).ok()),
        );
        let mut pending = Vec::new();
        for f in &refs {
            let mut dir = f.parent();
            while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
                pending.push(d.to_path_buf());
                dir = d.parent();
            }
        }
        FileFilter {
            roots,
            referenced: refs,
            pending,
        }
    }

    fn relevant(&self, path: &Path) -> bool {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let swap_internal = name.starts_with("..");
        // A directory is one whatever its name (`conf.d`): moved or copied in, its files may
        // send no event of their own.
        let manifest_like =
            path.extension().is_none_or(|e| e == "yaml" || e == "yml") || path.is_dir();
        let sibling = |r: &PathBuf| r.parent().is_some_and(|d| path.parent() == Some(d));
        self.roots.iter().any(|r| {
            path == r
                || (path.starts_with(r) && (manifest_like || swap_internal))
                || (swap_internal && sibling(r))
        }) || self.referenced.iter().any(|f| {
            // A file of the set, or a directory holding some (removed or moved away as a
            // whole, `conf.d` included: no event comes for the files in it).
            f.starts_with(path)
                || (swap_internal && f.parent().is_some_and(|d| path.parent() == Some(d)))
        }) || self.pending.iter().any(|d| path == d)
    }
}

/// Directories to watch: each manifest directory recursively, plus its parent (a symlink
/// swap replaces the directory itself); a manifest file's directory; and the directory of each
/// of `files` (read or referenced; its nearest existing ancestor while it is not there), and
/// of where its symlinks lead. A directory a recursive
/// watch covers is not watched again (a second watch of one directory would replace the
/// first, and removing it would remove both).
fn watch_targets(paths: &[PathBuf], files: &[PathBuf]) -> BTreeSet<(PathBuf, bool)> {
    let mut out = BTreeSet::new();
    let mut shallow = |p: &Path| {
        if let Some(parent) = p.parent() {
            // A directory that is not there yet: its nearest ancestor that is, for its
            // creation (`FileFilter::pending`).
            let mut dir = dir_or_dot(parent);
            while !dir.exists() {
                match dir.parent() {
                    Some(up) => dir = dir_or_dot(up),
                    None => break,
                }
            }
            out.insert((dir, false));
        }
    };
    for p in paths {
        shallow(p);
        if let Ok(real) = std::fs::canonicalize(p)
            && !p.is_dir()
        {
            shallow(&real);
        }
    }
    for f in files {
        shallow(f);
        if let Ok(real) = std::fs::canonicalize(f) {
            shallow(&real);
        }
    }
    let roots: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| dir_or_dot(p))
        .collect();
    // Compared where they lead (`m/../secrets` is not under `m`).
    let resolved = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| lexical(p));
    let covering: Vec<PathBuf> = roots.iter().map(|r| resolved(r)).collect();
    out.retain(|(d, _)| {
        let d = resolved(d);
        !covering.iter().any(|r| d.starts_with(r))
    });
    out.extend(roots.into_iter().map(|r| (r, true)));
    out
}

/// `p` with `.` and `..` taken away as written (for a path that does not exist).
fn lexical(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// What a watched directory was: where it resolved to, its device and inode. None when it
/// could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DirIdentity(Option<(PathBuf, u64, u64)>);

impl DirIdentity {
    fn of(dir: &Path) -> DirIdentity {
        use std::os::unix::fs::MetadataExt;
        DirIdentity(std::fs::canonicalize(dir).ok().and_then(|real| {
            std::fs::metadata(&real)
                .ok()
                .map(|m| (real, m.dev(), m.ino()))
        }))
    }
}

/// Seconds since the epoch, for metrics.
pub fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// File events: an error of the watcher or a rescan (events lost) reads the set again,
    /// whatever the paths; reads and files that are not the set's do not.
    #[test]
    fn lost_file_events_read_the_set_again() {
        use notify::event::{AccessKind, Flag, ModifyKind};
        use notify::{Event, EventKind};
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = dir.path().join("set.yaml");
        std::fs::write(&manifest, "version: 1\n").expect("manifest");
        let filter = FileFilter::new(&[dir.path().to_path_buf()], &[]);
        let at = |kind: EventKind, path: &Path| {
            notify_debouncer_full::DebouncedEvent::new(
                Event::new(kind).add_path(path.to_path_buf()),
                std::time::Instant::now(),
            )
        };
        let modify = EventKind::Modify(ModifyKind::Any);
        let read = EventKind::Access(AccessKind::Any);
        let log = dir.path().join("watch.log");
        assert!(files_may_have_changed(
            &Ok(vec![at(modify, &manifest)]),
            &filter
        ));
        assert!(!files_may_have_changed(
            &Ok(vec![at(read, &manifest)]),
            &filter
        ));
        assert!(!files_may_have_changed(
            &Ok(vec![at(modify, &log)]),
            &filter
        ));
        // A directory named like a file (`conf.d`), moved in or away as a whole: its files
        // send no event of their own.
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).expect("conf.d");
        let moved = EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::Any));
        assert!(files_may_have_changed(
            &Ok(vec![at(moved, &conf_d)]),
            &filter
        ));
        let inside = conf_d.join("more.yaml");
        std::fs::write(&inside, "version: 1\n").expect("manifest in conf.d");
        let read_it = FileFilter::new(&[dir.path().to_path_buf()], &[inside]);
        std::fs::remove_dir_all(&conf_d).expect("remove conf.d");
        let removed = EventKind::Remove(notify::event::RemoveKind::Any);
        assert!(files_may_have_changed(
            &Ok(vec![at(removed, &conf_d)]),
            &read_it
        ));
        // One that held none of the set's files changes nothing.
        assert!(!files_may_have_changed(
            &Ok(vec![at(removed, &dir.path().join("logs.d"))]),
            &read_it
        ));
        let mut rescan = at(EventKind::Other, &log);
        rescan.event = rescan.event.clone().set_flag(Flag::Rescan);
        assert!(files_may_have_changed(&Ok(vec![rescan]), &filter));
        assert!(files_may_have_changed(
            &Err(vec![notify::Error::generic("inotify queue overflow")]),
            &filter
        ));
    }

    /// Events outside the project are kept up to 1,024 between two reads: the newest, in
    /// order, and the read says that older ones were dropped (the watch then reconciles in
    /// case a dropped one was what a blocked outpost waited for); the next read starts afresh.
    #[test]
    fn events_outside_the_project_are_capped_newest_kept() {
        let outside = Outside::default();
        let event = |i: usize| EngineEvent {
            subject: EventSubject::Container,
            id: format!("c{i}"),
            name: format!("web-{i}"),
            old_name: None,
            action: "die".into(),
            time_nano: None,
        };
        for i in 0..1100 {
            outside.push("local".into(), event(i));
        }
        let (events, dropped) = outside.take();
        assert!(dropped);
        assert_eq!(events.len(), OUTSIDE_MAX);
        assert_eq!(events[0].1.id, "c76");
        assert_eq!(events[OUTSIDE_MAX - 1].1.id, "c1099");
        outside.push("local".into(), event(0));
        let (events, dropped) = outside.take();
        assert!(!dropped);
        assert_eq!(events.len(), 1);
        assert_eq!(outside.take().0.len(), 0);
    }

    /// An action of outpost `X` with one reason, on `field`.
    fn action(kind: ActionKind, field: &str) -> Action {
        Action {
            outpost: "X".into(),
            action: kind,
            name: "ak-outpost-x".into(),
            container: None,
            reasons: vec![crate::diff::Change::new(field, None, None)],
            adopt: false,
            error: None,
        }
    }

    #[test]
    fn a_duplicates_removal_waits_with_its_outposts_put_back() {
        assert!(waits_for_backoff(&action(ActionKind::Start, "state")));
        assert!(waits_for_backoff(&action(ActionKind::Remove, "duplicate")));
        // An outpost removed from the manifests has no put-back to wait for.
        assert!(!waits_for_backoff(&action(ActionKind::Remove, "outpost")));
        assert!(!waits_for_backoff(&action(ActionKind::Recreate, "image")));
        // A restart policy put back is a put-back too: one that keeps changing backs off.
        let policy = action(ActionKind::Recreate, crate::diff::RESTART_POLICY_FIELD);
        assert!(waits_for_backoff(&policy));
        // --no-prune keeps the removal of an outpost that left the manifests pending, not
        // that of an interrupted recreate's second container.
        assert!(kept_by_no_prune(
            &action(ActionKind::Remove, "outpost"),
            true
        ));
        assert!(!kept_by_no_prune(
            &action(ActionKind::Remove, "outpost"),
            false
        ));
        assert!(!kept_by_no_prune(
            &action(ActionKind::Remove, "duplicate"),
            true
        ));
    }

    /// Drift is what the engine did, whatever started the reconcile: a manifest edit
    /// applied by a retry is no drift; a container seen (or made) as wanted, gone or changed
    /// since, is.
    #[test]
    fn drift_is_judged_by_the_action_not_the_trigger() {
        let key = ("local".to_string(), "X".to_string());
        let hashes = |h: &str| Hashes::from([(key.clone(), h.to_string())]);
        let (none, wanted) = (Hashes::new(), hashes("new"));
        let (seen_as_wanted, seen_before_the_edit) = (hashes("new"), hashes("old"));
        let drift =
            |kind, field, seen: &Hashes| corrects_drift(&action(kind, field), &key, seen, &wanted);
        for kind in [ActionKind::Start, ActionKind::Unpause, ActionKind::Restart] {
            assert!(drift(kind, "state", &none), "{kind:?}");
        }
        // A container removed, renamed or changed after it was seen (or made) as wanted.
        for kind in [ActionKind::Create, ActionKind::Rename, ActionKind::Recreate] {
            assert!(drift(kind, "image", &seen_as_wanted), "{kind:?}");
            // The manifests changed since (an edit whose first apply failed, retried).
            assert!(!drift(kind, "image", &seen_before_the_edit), "{kind:?}");
            // A new outpost, or one found as the watch starts.
            assert!(!drift(kind, "image", &none), "{kind:?}");
        }
        // `docker update --restart`: only ever the engine's doing.
        assert!(drift(
            ActionKind::Recreate,
            crate::diff::RESTART_POLICY_FIELD,
            &none
        ));
        assert!(!drift(ActionKind::Remove, "outpost", &seen_as_wanted));
    }

    /// A watch's state before its first reconcile (no paths, its triggers dropped).
    fn state() -> State {
        let (tx, _rx) = mpsc::channel(1);
        let opts = Options {
            paths: Vec::new(),
            interval: Duration::from_secs(300),
            debounce: Duration::from_millis(200),
            no_prune: false,
            adopt: false,
            lock_timeout: Duration::from_secs(1),
        };
        let filter = Arc::new(std::sync::Mutex::new(FileFilter::new(&[], &[])));
        let log = Logger {
            format: crate::log::LogFormat::Json,
        };
        State::new(opts, log, Arc::default(), tx, filter)
    }

    /// A put-back whose engine failed in the last reconcile (its lock held by another writer)
    /// never ran: it is not counted, and after more such reconciles than the backoff allows
    /// it is neither held back nor blamed on another controller.
    #[tokio::test]
    async fn put_backs_on_an_engine_that_failed_are_not_counted() {
        let mut state = state();
        let wanted = Hashes::new();
        state.failures.insert(Failed::Engine("local".into()), 1);
        for _ in 0..PUT_BACKS_BEFORE_BACKOFF + 3 {
            let mut plan = plan_of(vec![("local", Some(vec![on("c1", ActionKind::Start)]))]);
            state.filter_actions(&mut plan, true, &wanted);
            assert_eq!(plan.integrations[0].actions.len(), 1, "held back");
        }
        assert!(state.deferred.is_empty());
        assert!(state.backoff.is_empty(), "counted: {:?}", state.backoff);
        // Once the engine is back, put-backs count again.
        state.failures.clear();
        let mut plan = plan_of(vec![("local", Some(vec![on("c1", ActionKind::Start)]))]);
        state.filter_actions(&mut plan, true, &wanted);
        assert_eq!(state.backoff.len(), 1);
    }

    /// Two writers with different manifests recreating one outpost back and forth: each of
    /// this watch's recreates back to the config it last saw (its manifests unchanged) is a
    /// put-back, so the fight is backed off and reported like a container that keeps being
    /// removed; a recreate the manifests ask for (a new config) is not counted.
    #[tokio::test]
    async fn a_fight_over_an_outposts_config_is_backed_off() {
        let mut state = state();
        let key = ("local".to_string(), "outpost of c1".to_string());
        let wanted = Hashes::from([(key.clone(), "h1".to_string())]);
        state.seen.insert(key.clone(), "h1".into());
        let recreate = || plan_of(vec![("local", Some(vec![on("c1", ActionKind::Recreate)]))]);
        for _ in 0..PUT_BACKS_BEFORE_BACKOFF {
            let mut plan = recreate();
            state.filter_actions(&mut plan, true, &wanted);
            assert_eq!(plan.integrations[0].actions.len(), 1);
        }
        let mut plan = recreate();
        state.filter_actions(&mut plan, true, &wanted);
        assert!(plan.integrations[0].actions.is_empty(), "not held back");
        assert!(state.deferred.contains(&key));
        // The manifests changed: a new config is applied, not counted.
        let mut state2 = super::tests::state();
        let wanted2 = Hashes::from([(key.clone(), "h2".to_string())]);
        state2.seen.insert(key.clone(), "h1".into());
        for _ in 0..PUT_BACKS_BEFORE_BACKOFF + 1 {
            let mut plan = recreate();
            state2.filter_actions(&mut plan, true, &wanted2);
            assert_eq!(plan.integrations[0].actions.len(), 1);
        }
        assert!(state2.backoff.is_empty());
    }

    /// The `die` of a container this watch just restarted (it was unhealthy) is the
    /// restart's: not counted as a crash, so a container restarted often is not muted (its
    /// next `unhealthy` would be ignored) nor reported as dying.
    #[tokio::test]
    async fn the_watchs_own_restarts_are_not_crashes() {
        let mut state = state();
        let die = |id: &str| Trigger::Engine {
            integration: "local".into(),
            container: "ak-outpost-x".into(),
            id: id.into(),
            action: "die".into(),
        };
        state.restarted.insert("c1".into(), Instant::now());
        for _ in 0..STRIKES_BEFORE_BACKOFF + 2 {
            assert!(!state.accept(&die("c1")));
        }
        assert!(state.muted.is_empty() && state.deaths.is_empty());
        // Another container's deaths still count.
        for _ in 0..STRIKES_BEFORE_BACKOFF {
            state.accept(&die("c2"));
        }
        assert!(state.muted.contains_key("c2"));
    }

    /// Two integrations that reach one engine get each of its events, once each: the second
    /// is the same event (a death counted once, not twice); the echo of an action that
    /// failed on one integration is an echo through the other too (it looped: a reconcile
    /// on each failure's echo, twice a second); the watch's own restart is one through both.
    #[tokio::test]
    async fn an_event_through_two_integrations_of_one_engine_is_one_event() {
        let mut state = state();
        let on = |integration: &str, id: &str, action: &str| Trigger::Engine {
            integration: integration.into(),
            container: "ak-outpost-x".into(),
            id: id.into(),
            action: action.into(),
        };
        for _ in 0..STRIKES_BEFORE_BACKOFF - 1 {
            assert!(state.accept(&on("local", "c1", "die")));
            assert!(!state.accept(&on("edge", "c1", "die")), "the same death");
            // The next death comes later than a twin would.
            state.last_events.clear();
        }
        assert!(
            state.muted.is_empty(),
            "muted after fewer deaths than it takes"
        );
        assert_eq!(state.deaths.get("c1").map(Vec::len), Some(2));

        state
            .echoes
            .insert("ak-outpost-y".into(), Instant::now() + ECHO);
        let echo = |integration: &str| Trigger::Engine {
            integration: integration.into(),
            container: "ak-outpost-y-outpostctl-old".into(),
            id: "c2".into(),
            action: "destroy".into(),
        };
        assert!(!state.accept(&echo("local")));
        assert!(
            !state.accept(&echo("edge")),
            "an echo through the other integration"
        );

        state.restarted.insert("c3".into(), Instant::now());
        assert!(!state.accept(&on("edge", "c3", "die")));
        assert!(!state.deaths.contains_key("c3"));
    }

    /// The container an outpost shares the network namespace of, crash-looping under its
    /// restart policy: its starts reconcile until its deaths mute it like any container
    /// that keeps dying; then its starts are muted too (they reconciled for ever).
    #[tokio::test]
    async fn a_crash_looping_namespace_container_is_muted() {
        let mut state = state();
        state
            .unblocks
            .insert("local".into(), vec![Unblock::Appears("vpn".into())]);
        let on_vpn = |action: &str| Trigger::Unblocking {
            integration: "local".into(),
            event: event(EventSubject::Container, "v1", "vpn", action),
        };
        assert!(state.accept(&on_vpn("start")));
        for _ in 0..STRIKES_BEFORE_BACKOFF - 1 {
            assert!(state.accept(&on_vpn("die")));
            assert!(state.accept(&on_vpn("start")));
        }
        assert!(!state.accept(&on_vpn("die")), "the last strike mutes it");
        assert!(!state.accept(&on_vpn("start")), "its starts are muted too");
        // Removed: final, whatever it did before.
        assert!(state.accept(&on_vpn("destroy")));
    }

    fn on(id: &str, kind: ActionKind) -> Action {
        Action {
            outpost: format!("outpost of {id}"),
            action: kind,
            name: format!("ak-{id}"),
            container: Some(crate::diff::ContainerRef {
                id: id.into(),
                name: format!("ak-{id}"),
            }),
            reasons: Vec::new(),
            adopt: false,
            error: None,
        }
    }

    fn plan_of(engines: Vec<(&str, Option<Vec<Action>>)>) -> plan::Plan {
        plan::Plan {
            format_version: plan::FORMAT_VERSION,
            project: "p".into(),
            manifest_fingerprint: String::new(),
            inspected: false,
            adopted: false,
            integrations: engines
                .into_iter()
                .map(|(name, actions)| plan::EnginePlan {
                    name: name.into(),
                    url: String::new(),
                    error: actions.is_none().then(|| "away".to_string()),
                    actions: actions.unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn only(integrations: &[&str], ids: &[&str]) -> crate::diff::Inspect {
        crate::diff::Inspect::Only {
            integrations: integrations.iter().map(|s| s.to_string()).collect(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// What a watch inspects: every container of an engine until one plan of it went
    /// through (and again after its event stream broke), then only containers reported
    /// updated; a container the plan could not inspect (paused), or whose action failed or
    /// was held back, is inspected again; an engine that was away keeps everything.
    #[test]
    fn a_watch_inspects_what_it_has_not_seen() {
        let v = crate::engine::fake::validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  a: { local: true }\n  \
             b: { url: \"http://127.0.0.1:2375\" }\noutposts: {}\n",
        );
        let mut i = Inspections::default();
        assert_eq!(i.options(&v), only(&["a", "b"], &[]));

        // a planned (c2 paused, so only unpaused), b away.
        let first = plan_of(vec![
            (
                "a",
                Some(vec![
                    on("c1", ActionKind::Noop),
                    on("c2", ActionKind::Unpause),
                ]),
            ),
            ("b", None),
        ]);
        i.done(&first, &BTreeMap::new());
        assert_eq!(i.options(&v), only(&["b"], &["c2"]));

        let update = |id: &str| Trigger::Engine {
            integration: "a".into(),
            container: format!("ak-{id}"),
            id: id.into(),
            action: "update".into(),
        };
        i.note(&update("c1"));
        i.note(&update("c3"));
        let second = plan_of(vec![
            (
                "a",
                Some(vec![on("c1", ActionKind::Noop), on("c2", ActionKind::Noop)]),
            ),
            ("b", Some(vec![on("c9", ActionKind::Noop)])),
        ]);
        // c3 was recreated and failed.
        let again = BTreeMap::from([("c3".to_string(), "a".to_string())]);
        i.done(&second, &again);
        assert_eq!(i.options(&v), only(&[], &["c3"]));

        i.done(&second, &BTreeMap::new());
        assert_eq!(i.options(&v), crate::diff::Inspect::Nothing);

        // An update whose inspect failed (a timeout) is inspected again by the next plan,
        // until one could read it.
        i.note(&update("c1"));
        let mut failed = second.clone();
        failed.integrations[0].uninspected = vec!["c1".into()];
        i.done(&failed, &BTreeMap::new());
        assert_eq!(i.options(&v), only(&[], &["c1"]));
        i.done(&second, &BTreeMap::new());
        assert_eq!(i.options(&v), crate::diff::Inspect::Nothing);

        i.note(&Trigger::EventsResumed {
            integration: "b".into(),
        });
        assert_eq!(i.options(&v), only(&["b"], &[]));
        i.done(&second, &BTreeMap::new());
        assert_eq!(i.options(&v), crate::diff::Inspect::Nothing);

        // An integration pointed at another engine than the one whose events are watched
        // (or not watched at all) is inspected in full.
        let url = |n: &str| v.integrations[n].url.clone();
        let mut w = BTreeMap::from([("a".to_string(), url("a")), ("b".to_string(), url("b"))]);
        i.forget_unwatched(&v, |n| w.get(n).map(String::as_str));
        assert_eq!(i.options(&v), crate::diff::Inspect::Nothing);
        w.insert("b".into(), "http://127.0.0.1:2376".into());
        i.forget_unwatched(&v, |n| w.get(n).map(String::as_str));
        assert_eq!(i.options(&v), only(&["b"], &[]));
        i.done(&second, &BTreeMap::new());
        w.remove("a");
        i.forget_unwatched(&v, |n| w.get(n).map(String::as_str));
        assert_eq!(i.options(&v), only(&["a", "b"], &[]));
    }

    #[test]
    fn a_subscription_passes_on_replayed_updates_and_what_is_newer_than_the_reconcile() {
        let mut r = Replay(Some(1_000));
        assert!(
            !r.admits("die", Some(400)),
            "older than the cut: the list showed it"
        );
        assert!(
            r.admits("update", Some(500)),
            "the list does not show an update"
        );
        assert!(r.admits("destroy", None), "no time: passed");
        assert!(r.admits("die", Some(1_000)), "as new as the cut");
        assert!(
            r.admits("die", Some(900)),
            "once past the cut, all are passed (the engine's clock stepped back)"
        );
        let mut none = Replay(None);
        assert!(
            none.admits("die", Some(1)),
            "no clock, no replay: all passed"
        );
    }

    fn event(subject: EventSubject, id: &str, name: &str, action: &str) -> EngineEvent {
        EngineEvent {
            subject,
            id: id.into(),
            name: name.into(),
            old_name: None,
            action: action.into(),
            time_nano: None,
        }
    }

    /// An event outside the project starts a reconcile only when a blocked outpost waits for
    /// it: the container holding its port dies or goes, the container in its way is removed
    /// or renamed away, its network is created, an image arrives. Nothing else does.
    #[test]
    fn only_what_a_blocked_outpost_waits_for_unblocks_it() {
        use EventSubject::{Container, Image, Managed, Network};
        let waits = [
            Unblock::Container("holder".into()),
            Unblock::Name("ak-outpost-web".into()),
            Unblock::Network("traefik".into()),
        ];
        let mut renamed = event(Container, "other", "elsewhere", "rename");
        renamed.old_name = Some("ak-outpost-web".into());
        let cases = [
            (event(Container, "holder", "portainer", "die"), true),
            (event(Container, "holder", "portainer", "destroy"), true),
            (event(Container, "someone", "portainer2", "die"), false),
            (event(Container, "other", "ak-outpost-web", "destroy"), true),
            (event(Container, "other", "ak-outpost-web", "die"), false),
            (renamed, true),
            (event(Network, "n1", "traefik", "create"), true),
            (event(Network, "n2", "other-net", "create"), false),
            // An image arrives, but no outpost waits for one.
            (
                event(Image, "sha256:1", "example/radius:absent", "tag"),
                false,
            ),
            // The project's own containers are not matched here (they always reconcile).
            (event(Managed, "holder", "portainer", "die"), false),
        ];
        for (ev, want) in cases {
            assert_eq!(unblocks(&waits, &ev), want, "{ev:?}");
        }
        // The container an outpost shares the network namespace of: made, started, renamed
        // to that name, stopped or removed; another container's start does not.
        let shared = [Unblock::Appears("vpn".into())];
        for action in ["create", "start", "rename", "die", "destroy"] {
            assert!(
                unblocks(&shared, &event(Container, "v", "vpn", action)),
                "{action}"
            );
        }
        assert!(!unblocks(&shared, &event(Container, "v", "vpn", "pause")));
        assert!(!unblocks(&shared, &event(Container, "w", "web", "start")));
        let image = [Unblock::Image("example/radius:absent".into())];
        assert!(unblocks(
            &image,
            &event(Image, "x", "example/radius:absent", "pull")
        ));
        // Another image pulled (our own apply's, say) does not; a load names no reference.
        let other = event(Image, "x", "example/proxy:1", "pull");
        assert!(!unblocks(&image, &other));
        let loaded = event(Image, "sha256:2", "sha256:2", "load");
        assert!(unblocks(&image, &loaded));
        let hub = [Unblock::Image("docker.io/library/nginx".into())];
        assert!(unblocks(
            &hub,
            &event(Image, "sha256:3", "nginx:latest", "tag")
        ));
        assert!(!unblocks(
            &hub,
            &event(Image, "sha256:3", "nginx:1.27", "tag")
        ));
        assert!(!unblocks(
            &[],
            &event(Container, "holder", "portainer", "die")
        ));
    }

    #[test]
    fn image_references_are_compared_as_events_write_them() {
        for (written, familiar_form) in [
            ("nginx", "nginx:latest"),
            ("docker.io/library/nginx:1.27", "nginx:1.27"),
            ("library/nginx", "nginx:latest"),
            ("docker.io/goauthentik/server", "goauthentik/server:latest"),
            (
                "ghcr.io/goauthentik/proxy:2026.8.0",
                "ghcr.io/goauthentik/proxy:2026.8.0",
            ),
            (
                "127.0.0.1:5000/goauthentik/ldap",
                "127.0.0.1:5000/goauthentik/ldap:latest",
            ),
            ("example/rac@sha256:abc", "example/rac@sha256:abc"),
        ] {
            assert_eq!(familiar(written), familiar_form, "{written}");
        }
    }

    /// A failure that goes on is retried less and less often; a new one beside it in 5 s;
    /// one that no longer fails is forgotten, and nothing failing means no retry.
    #[test]
    fn each_failure_is_retried_on_its_own_row() {
        let away = || Failed::Engine("away".into());
        let web = || Failed::Outpost("local".into(), "Web".into());
        let mut row = BTreeMap::new();
        let mut waits = Vec::new();
        for _ in 0..4 {
            let (next, wait) = failure_row(&row, BTreeSet::from([away()]));
            row = next;
            waits.push(wait.map(|w| w.as_secs()));
        }
        assert_eq!(waits, [Some(5), Some(10), Some(20), Some(40)]);
        let (row, wait) = failure_row(&row, BTreeSet::from([away(), web()]));
        assert_eq!(wait, Some(Duration::from_secs(5)), "{row:?}");
        assert_eq!(row.get(&away()), Some(&5));
        let (row, wait) = failure_row(&row, BTreeSet::from([web()]));
        assert_eq!(
            (row.get(&away()), wait),
            (None, Some(Duration::from_secs(10)))
        );
        let (row, wait) = failure_row(&row, BTreeSet::new());
        assert!(row.is_empty() && wait.is_none());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_delay(3, 3), Duration::from_secs(5));
        assert_eq!(backoff_delay(4, 3), Duration::from_secs(10));
        assert_eq!(backoff_delay(30, 3), BACKOFF_MAX);
    }

    #[test]
    fn put_backs_run_at_once_then_wait_longer_and_a_quiet_minute_ends_the_row() {
        let t0 = Instant::now();
        let mut b = None;
        for i in 1..PUT_BACKS_BEFORE_BACKOFF {
            let now = t0 + Duration::from_secs(u64::from(i));
            assert_eq!(Backoff::put_back(&mut b, now), None, "put-back {i} runs");
        }
        // The fifth runs too, and makes the next one wait 5 s.
        let fifth = t0 + Duration::from_secs(10);
        assert_eq!(Backoff::put_back(&mut b, fifth), None);
        let early = fifth + Duration::from_secs(2);
        assert_eq!(
            Backoff::put_back(&mut b, early),
            Some(Duration::from_secs(3))
        );
        // Held back: not counted. When due, it runs, and the next waits twice as long.
        let due = fifth + Duration::from_secs(5);
        assert_eq!(Backoff::put_back(&mut b, due), None);
        assert_eq!(
            Backoff::put_back(&mut b, due),
            Some(Duration::from_secs(10))
        );
        // More than a minute after the last one could run: a new row, at once.
        let later = due + Duration::from_secs(10) + ROW + Duration::from_secs(1);
        assert_eq!(Backoff::put_back(&mut b, later), None);
        assert_eq!(b.map(|b| b.strikes), Some(1));
    }
}
