//! One writer per engine.
//!
//! Two applies against one engine (CI and a watch, two pipelines) must never interleave. The
//! lock lives on the engine itself, so every runner sees it, and uses nothing beyond the
//! containers API of authentik's permission list: it is a never-started container named
//! `outpostctl-lock`. Creating it is atomic (names are unique); its labels say who holds it
//! and since when; its lease (an expiry on the engine's clock, kept in the restart policy's
//! retry count, which the update call can change) is renewed while the holder works, so a
//! holder that dies loses the lock when the lease runs out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{Engine, EngineError, ErrorKind};

pub const LOCK_NAME: &str = "outpostctl-lock";
pub const LABEL_LOCK: &str = "outpostctl.lock";
pub const LABEL_HOLDER: &str = "outpostctl.lock.holder";
pub const LABEL_SINCE: &str = "outpostctl.lock.since";
/// A random id of the run that holds the lock. The holder text (`user@host pid N`) is for
/// people: two runs can share it (containers with the same hostname, each outpostctl as PID
/// 1), so only this id tells a run that a lock is its own.
pub const LABEL_RUN: &str = "outpostctl.lock.run";

/// How long a lease lasts without renewal; `OUTPOSTCTL_LOCK_LEASE` (seconds) overrides it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// `OUTPOSTCTL_LOCK_LEASE` is held to this range (seconds): a lease shorter than a renewal
/// round trip would expire under its holder, a longer one would keep a crashed holder's lock.
const MIN_LEASE_SECS: u64 = 3;
const MAX_LEASE_SECS: u64 = 86_400;

#[derive(Debug, Clone)]
pub struct LockOptions {
    /// How long to wait for another holder before giving up.
    pub timeout: Duration,
    pub lease: Duration,
    /// What the holder is doing (`apply`, `watch`), shown to whoever waits.
    pub purpose: String,
    /// An image to pull when the engine has none to create the lock container from.
    pub seed_image: Option<String>,
    /// When the wait ends, if earlier than `timeout` from the start: several engines locked
    /// one after the other share one `--lock-timeout` (`plan_under_lock`).
    pub deadline: Option<Instant>,
}

impl LockOptions {
    pub fn new(timeout: Duration, purpose: &str) -> LockOptions {
        let lease =
            crate::engine::env_seconds("OUTPOSTCTL_LOCK_LEASE", MIN_LEASE_SECS, MAX_LEASE_SECS)
                .map_or(DEFAULT_LEASE, Duration::from_secs);
        LockOptions {
            timeout,
            lease,
            purpose: purpose.to_string(),
            seed_image: None,
            deadline: None,
        }
    }
}

/// A held lock: renewed in the background until released.
pub struct Lock {
    engine: Arc<dyn Engine>,
    id: String,
    /// None when this run already held the engine's lock through another integration
    /// (two integrations may reach one engine): the first handle releases it.
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Lock {
    /// Stops renewing and removes the lock container.
    pub async fn release(mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
            // Forgotten once removed: a second signal meanwhile removes it too.
            let _ = self.engine.remove(&self.id).await;
            held(|h| h.remove(&self.id));
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Without `release` (a panic, an early return), the lease runs out by itself.
        if let Some(h) = &self.heartbeat {
            h.abort();
            held(|h| h.remove(&self.id));
        }
    }
}

/// Removes every lock container this process holds, in parallel: for an exit that runs no
/// destructor (a second SIGINT or SIGTERM), so that the next run does not wait for the lease
/// to run out. The caller bounds it (an engine that hangs is why some stop at once).
pub async fn release_on_exit() {
    let locks: Vec<(String, Arc<dyn Engine>)> = held(|h| {
        h.iter_mut()
            .filter_map(|(id, l)| l.engine.take().map(|e| (id.clone(), e)))
            .collect()
    });
    let removals = locks
        .iter()
        .map(|(id, engine)| async move { engine.remove(id).await });
    // Engines whose lock was being taken: one this run created (its answer still on the
    // way) is removed too.
    let pending: Vec<Arc<dyn Engine>> = acquiring(|a| a.values().cloned().collect());
    let ids: Vec<String> = locks.iter().map(|(id, _)| id.clone()).collect();
    futures_util::future::join(
        futures_util::future::join_all(removals),
        remove_unfinished(&pending, &ids),
    )
    .await;
}

/// Removes the lock container of each of `engines` that this run created, unless it is one
/// of `released` (removed already); another run's is left alone.
async fn remove_unfinished(engines: &[Arc<dyn Engine>], released: &[String]) {
    let removals = engines.iter().map(|engine| async move {
        if let Ok(Some((id, labels, _))) = engine.read_marker(LOCK_NAME).await
            && labels.get(LABEL_RUN).map(String::as_str) == Some(run_id())
            && !released.contains(&id)
        {
            let _ = engine.remove(&id).await;
        }
    });
    futures_util::future::join_all(removals).await;
}

/// The engines whose lock this process is taking (`acquire` in progress), by a number of
/// their own: a second signal may come between the lock's creation and its answer.
fn acquiring<T>(f: impl FnOnce(&mut BTreeMap<u64, Arc<dyn Engine>>) -> T) -> T {
    static ACQUIRING: std::sync::Mutex<BTreeMap<u64, Arc<dyn Engine>>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut a = ACQUIRING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut a)
}

/// An `acquiring` entry, dropped when `acquire` returns (or is cancelled).
struct Acquiring(u64);

impl Acquiring {
    fn new(engine: &Arc<dyn Engine>) -> Acquiring {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        acquiring(|a| a.insert(n, Arc::clone(engine)));
        Acquiring(n)
    }
}

impl Drop for Acquiring {
    fn drop(&mut self) {
        acquiring(|a| a.remove(&self.0));
    }
}

/// One lock container this process holds.
#[derive(Default)]
struct Held {
    /// None while renewed, else why the lease was lost (the container removed by someone, or
    /// not renewed in time: another writer may take the engine over, so no new action starts
    /// there).
    lost: Option<String>,
    /// The integrations it covers (two may reach one engine).
    integrations: BTreeSet<String>,
    /// When it counts as lost by the wall clock unless renewed again (its last renewal,
    /// asked for then, plus two thirds of the lease): the renewals' own timers stand still
    /// while the machine sleeps (a suspended laptop), the wall clock and the engine's do not.
    valid_until: Option<std::time::SystemTime>,
    /// Its engine, to release it on the way out of an exit that runs no destructor
    /// (`release_on_exit`); None where only a test made it.
    engine: Option<Arc<dyn Engine>>,
}

/// The lock containers this process holds, by id. A lock with this run's id that is not
/// renewed here was left by a release that failed (the engine was away for a moment, in a
/// watch), or was lost: it is removed and taken anew, not shared.
fn held<T>(f: impl FnOnce(&mut BTreeMap<String, Held>) -> T) -> T {
    static HELD: std::sync::Mutex<BTreeMap<String, Held>> = std::sync::Mutex::new(BTreeMap::new());
    let mut held = HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut held)
}

/// Why no new action may start on `integration`'s engine: its lock was lost. None while it is
/// held (the other engines' actions go on when one engine's lock is lost).
pub fn lost_on(integration: &str) -> Option<String> {
    held(|h| {
        let l = h.values().find(|l| l.integrations.contains(integration))?;
        l.lost.clone().or_else(|| {
            l.valid_until
                .filter(|t| std::time::SystemTime::now() > *t)
                .map(|_| {
                    "the engine's lock was lost (not renewed for two thirds of its lease: was the machine asleep?); another writer may be at work: run again".to_string()
                })
        })
    })
}

/// This run's id, the same for every engine it locks (two integrations may reach one engine).
fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

/// Who we are, as the lock's label tells it.
fn holder(purpose: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!(
        "{user}@{host} pid {} (outpostctl {purpose})",
        std::process::id()
    )
}

/// A timestamp read from the engine (a label, a restart count), for messages: whatever the
/// number, never a panic (RFC 3339 ends with the year 9999).
fn when(ts: i64) -> String {
    const YEAR_9999_END: i64 = 253_402_300_799;
    if !(0..=YEAR_9999_END).contains(&ts) {
        return format!("{ts} (seconds since 1970)");
    }
    let t = std::time::UNIX_EPOCH + Duration::from_secs(ts.unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Takes the engine's lock, waiting up to `opts.timeout` for another holder; a lock whose
/// lease ran out is taken over. `waiting` is told once who holds it.
pub async fn acquire(
    engine: Arc<dyn Engine>,
    integration: &str,
    opts: &LockOptions,
    waiting: &(dyn Fn(&str) + Send + Sync),
) -> Result<Lock, EngineError> {
    let until = opts
        .deadline
        .unwrap_or_else(|| Instant::now() + opts.timeout);
    let _acquiring = Acquiring::new(&engine);
    let lease = opts.lease.as_secs().clamp(MIN_LEASE_SECS, MAX_LEASE_SECS) as i64;
    let me = holder(&opts.purpose);
    let mut image = lock_image(engine.as_ref(), opts).await?;
    let mut image_retries = 0;
    let mut told = false;
    // Tries in a row that ended without the lock and without a wait for its holder (its
    // name taken but no container found by it: an engine after a crash can answer so for
    // good): each waits a little longer and, after the few a takeover needs, they count
    // against the deadline.
    let mut quick_retries: u32 = 0;
    loop {
        if quick_retries > 0 {
            if quick_retries > 3 && Instant::now() >= until {
                return Err(EngineError::new(
                    ErrorKind::Conflict,
                    format!(
                        "could not take the engine's lock within {} (--lock-timeout): its name `{LOCK_NAME}` stays taken, yet no container answers to it (restarting the engine clears that)",
                        humantime::format_duration(opts.timeout)
                    ),
                ));
            }
            let pause = Duration::from_millis(50 * u64::from(quick_retries.min(10)));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = crate::signals::until_interrupted() => {}
            }
            if crate::signals::interrupted() {
                return Err(EngineError::new(
                    ErrorKind::Conflict,
                    "stopped trying to take the engine's lock: shutting down".to_string(),
                ));
            }
        }
        quick_retries += 1;
        // The lease runs from the engine's clock as read now: its renewals count from here.
        let asked = tokio::time::Instant::now();
        let asked_wall = std::time::SystemTime::now();
        let now = engine.now().await?;
        let labels = BTreeMap::from([
            (LABEL_LOCK.to_string(), "engine".to_string()),
            (LABEL_HOLDER.to_string(), me.clone()),
            (LABEL_RUN.to_string(), run_id().to_string()),
            (LABEL_SINCE.to_string(), now.to_string()),
        ]);
        let created = match engine
            .create_marker(LOCK_NAME, &image, &labels, now.saturating_add(lease))
            .await
        {
            // The image went away between choosing and using it (someone removed it).
            Err(e) if e.is_not_found() && image_retries < 5 => {
                image_retries += 1;
                image = lock_image(engine.as_ref(), opts).await?;
                continue;
            }
            other => other?,
        };
        if let Some(id) = created {
            held(|h| {
                h.insert(
                    id.clone(),
                    Held {
                        lost: None,
                        integrations: BTreeSet::from([integration.to_string()]),
                        engine: Some(Arc::clone(&engine)),
                        valid_until: Some(asked_wall + patience(lease)),
                    },
                )
            });
            let renewing = renew(Arc::clone(&engine), id.clone(), lease, asked);
            let heartbeat = Some(tokio::spawn(renewing));
            return Ok(Lock {
                engine,
                id,
                heartbeat,
            });
        }
        let Some((id, labels, expires)) = engine.read_marker(LOCK_NAME).await? else {
            continue; // released between our create and read
        };
        if labels.get(LABEL_LOCK).map(String::as_str) != Some("engine") {
            // Someone else's container that merely has the name: never ours to remove.
            return Err(EngineError::new(
                ErrorKind::Conflict,
                format!(
                    "a container named `{LOCK_NAME}` ({}) exists that outpostctl did not create (it has no `{LABEL_LOCK}` label); outpostctl leaves it alone and cannot take the engine's lock while that name is taken: rename or remove it",
                    id.get(..12).unwrap_or(&id)
                ),
            ));
        }
        let who = labels
            .get(LABEL_HOLDER)
            .cloned()
            .unwrap_or_else(|| "an unknown holder".into());
        if labels.get(LABEL_RUN).map(String::as_str) == Some(run_id()) {
            let shared = held(|h| match h.get_mut(&id) {
                Some(l) if l.lost.is_none() => {
                    l.integrations.insert(integration.to_string());
                    true
                }
                _ => false,
            });
            if !shared {
                // This run's, but nobody renews it any more: take it anew.
                engine.remove(&id).await?;
                continue;
            }
            // This run holds it already, through another integration reaching this engine.
            return Ok(Lock {
                engine,
                id,
                heartbeat: None,
            });
        }
        let since = labels
            .get(LABEL_SINCE)
            .and_then(|s| s.parse::<i64>().ok())
            .map(when)
            .unwrap_or_else(|| "?".into());
        // Strictly after: the expiry was written from a clock read in whole seconds (up to
        // one late), and the holder gives up two thirds into the lease; this keeps a second
        // between the two at the smallest lease.
        if expires < now {
            // The holder stopped renewing: it died. Remove that lock (by id, so a lock someone
            // else just took is never removed) and try again.
            match engine.remove(&id).await {
                Ok(true) => waiting(&format!(
                    "taking over the lock of {who} (since {since}): its lease ran out at {}",
                    when(expires)
                )),
                // Another run removed it first (and may hold the lock now): nothing was
                // taken over from {who}; the next try tells.
                Ok(false) => {}
                // Another run is removing it at the same moment (to take it over, or its
                // holder releasing it): try again in a moment (the pause at the top).
                Err(e) if e.kind == ErrorKind::Conflict => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        if Instant::now() >= until {
            return Err(EngineError::new(
                ErrorKind::Conflict,
                format!(
                    "the engine is locked by {who} since {since} (lease until {}); gave up when the run's --lock-timeout of {} ran out",
                    when(expires),
                    humantime::format_duration(opts.timeout)
                ),
            ));
        }
        if !told {
            waiting(&format!(
                "integration `{integration}`: waiting for the lock held by {who} since {since}"
            ));
            told = true;
        }
        // A real wait for a live holder, next: not a quick retry.
        quick_retries = 0;
        // A shutdown asked for ends the wait (a service manager's stop grace is seconds,
        // not --lock-timeout).
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = crate::signals::until_interrupted() => {}
        }
        if crate::signals::interrupted() {
            return Err(EngineError::new(
                ErrorKind::Conflict,
                format!("stopped waiting for the lock held by {who} since {since}: shutting down"),
            ));
        }
    }
}

/// The image to create the lock container from: the outposts' own image when the engine has
/// it (it stays, as containers use it), else any image, else the outposts' image pulled.
async fn lock_image(engine: &dyn Engine, opts: &LockOptions) -> Result<String, EngineError> {
    if let Some(seed) = &opts.seed_image
        && engine.image_labels(seed).await?.is_some()
    {
        return Ok(seed.clone());
    }
    if let Some(any) = engine.any_image().await? {
        return Ok(any);
    }
    if let Some(seed) = &opts.seed_image {
        engine.pull(seed, &|_| {}).await?;
        return Ok(seed.clone());
    }
    Err(EngineError::new(
        ErrorKind::Api,
        "the engine has no image to create its lock container from".to_string(),
    ))
}

/// How long a lock counts as held after a renewal was asked for: two thirds of the lease (at
/// least a second), so that its holder stops before another may take it over.
fn patience(lease: i64) -> Duration {
    Duration::from_secs((lease - lease / 3).max(1) as u64)
}

/// The longest time between two renewals of a held lock (`renew`).
const RENEW_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// The shortest wait before a failed renewal is tried again (`renew`).
const RETRY_AT_LEAST_AFTER: Duration = Duration::from_millis(250);

/// Renews the lease three times per lease period, from `since` (taken before the engine's
/// clock was read for the lease being renewed). When the lock container is gone, or no
/// renewal succeeded for two thirds of the lease (another writer may take the lock over once
/// it runs out; the engine's clock is read in whole seconds, and a lease is at least 3 s), the
/// lock is lost (`lost_on`): no new action starts on its engine. A renewal counts from when it
/// was asked for, and a renewal that hangs (an engine or network that stopped answering)
/// counts as failed when those two thirds are over, not when its request times out (after
/// the lease could have run out). After a failed renewal the next one comes sooner.
async fn renew(engine: Arc<dyn Engine>, id: String, lease: i64, since: tokio::time::Instant) {
    // A third of the lease, and at most `RENEW_AT_MOST_EVERY`: a lock container removed
    // under the run (`docker container prune` takes it: it is never started) is noticed
    // within that, whatever the lease.
    let every = Duration::from_secs((lease / 3).max(1) as u64).min(RENEW_AT_MOST_EVERY);
    let patience = patience(lease);
    // After a failed renewal: a quarter of the period, at least 250 ms. A floor of a second
    // left the shortest lease (3 s: lost 2 s after its last renewal) a single retry.
    let again = (every / 4).max(RETRY_AT_LEAST_AFTER).min(every);
    let mut renewed_at = since;
    let mut next = since + every;
    let mut failed: Option<EngineError> = None;
    let in_time = || {
        EngineError::new(
            ErrorKind::Timeout,
            "the engine did not answer the renewal in time",
        )
    };
    loop {
        tokio::time::sleep_until(next).await;
        let asked = tokio::time::Instant::now();
        let asked_wall = std::time::SystemTime::now();
        let left = (renewed_at + patience).saturating_duration_since(asked);
        let result = if left.is_zero() {
            Err(failed.take().unwrap_or_else(in_time))
        } else {
            let attempt = async {
                let now = engine.now().await?;
                engine.renew_marker(&id, now.saturating_add(lease)).await
            };
            tokio::time::timeout(left, attempt)
                .await
                .unwrap_or_else(|_| Err(in_time()))
        };
        let why = match result {
            Ok(()) => {
                renewed_at = asked;
                next = asked + every;
                failed = None;
                held(|h| {
                    if let Some(state) = h.get_mut(&id) {
                        state.valid_until = Some(asked_wall + patience);
                    }
                });
                continue;
            }
            Err(e) if e.is_not_found() => "its lock container was removed".to_string(),
            Err(e) if renewed_at.elapsed() >= patience => {
                format!(
                    "its lease could not be renewed for {}s ({e})",
                    renewed_at.elapsed().as_secs()
                )
            }
            Err(e) => {
                failed = Some(e);
                next = (tokio::time::Instant::now() + again).min(renewed_at + patience);
                continue;
            }
        };
        held(|h| {
            // Unless released meanwhile.
            if let Some(state) = h.get_mut(&id) {
                state.lost = Some(format!(
                    "the engine's lock was lost ({why}); another writer may be at work: run again"
                ));
            }
        });
        return;
    }
}

/// Locks every engine that `shown` has changes for, then plans those engines again under the
/// lock. Returns the plan to apply and the locks (to release after apply). An engine that
/// could not be locked gets an error instead of actions. With `strict` (apply: do what was
/// shown, or nothing), an engine that changed since `shown` was computed (another writer got
/// there first) gets an error too; without it (watch: a reconciler), the fresh plan stands.
pub async fn plan_under_lock(
    v: &crate::validate::Validated,
    engines: &crate::plan::Engines,
    shown: &crate::plan::Plan,
    diff: crate::diff::DiffOptions,
    strict: bool,
    opts: &LockOptions,
    waiting: &(dyn Fn(&str) + Send + Sync),
) -> (crate::plan::Plan, Vec<Lock>) {
    let wanted: Vec<&crate::plan::EnginePlan> = shown
        .integrations
        .iter()
        .filter(|e| e.error.is_none() && e.actions.iter().any(|a| a.action.is_change()))
        .collect();
    // The engines are locked one after the other, in the order of their daemon IDs (the
    // same for every run, whatever its integrations are called): two runs that both need two
    // engines never hold one each while waiting for the other's. An engine that refuses
    // `info` has no ID to go by and comes last, by its address: two runs that reach two such
    // engines by different addresses can wait for each other until the lock timeout (README).
    let keyed = wanted.iter().filter_map(|e| {
        let engine = match engines.get(&e.name) {
            Some(Ok(engine)) => Arc::clone(engine),
            _ => return None,
        };
        Some(async move {
            let key = match engine.info().await {
                Ok(info) if !info.id.is_empty() => info.id,
                _ => format!("~{}", e.url),
            };
            (key, e.name.clone(), engine)
        })
    });
    let mut order = futures_util::future::join_all(keyed).await;
    order.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut locks = Vec::new();
    let mut errors = BTreeMap::new();
    // One --lock-timeout for them all: each engine waits for what is left of it (engines
    // busy one after the other, or two integrations of one busy engine, do not add up).
    let deadline = Instant::now() + opts.timeout;
    for (_, name, engine) in order {
        let mut opts = opts.clone();
        opts.deadline = Some(deadline);
        opts.seed_image = v
            .desired
            .get(&name)
            .and_then(|s| s.first())
            .map(|s| s.image.clone());
        match acquire(engine, &name, &opts, waiting).await {
            Ok(l) => locks.push(l),
            Err(e) => {
                errors.insert(name, e.to_string());
            }
        }
    }
    let fresh = crate::plan::build(v, engines, diff).await;
    let mut out = shown.clone();
    for e in &mut out.integrations {
        let was_wanted = wanted.iter().any(|w| w.name == e.name);
        if !was_wanted {
            // Nothing to change there when the plan was shown: leave it alone.
            continue;
        }
        if let Some(err) = errors.remove(&e.name) {
            e.error = Some(err);
            e.actions.clear();
            continue;
        }
        let Some(now) = fresh.integrations.iter().find(|f| f.name == e.name) else {
            continue;
        };
        if now.error.is_some() || !strict {
            *e = now.clone();
        } else if now.actions != e.actions || now.fingerprint != e.fingerprint {
            e.error = Some(
                "the containers changed since the plan was made (another writer?); nothing was done there: run again"
                    .to_string(),
            );
            e.actions.clear();
        }
    }
    (out, locks)
}

/// Releases every lock.
pub async fn release_all(locks: Vec<Lock>) {
    futures_util::future::join_all(locks.into_iter().map(Lock::release)).await;
}

/// Makes this process hold a lock `id` for `integrations` (for tests elsewhere).
#[cfg(test)]
pub(crate) fn hold_for_test(id: &str, integrations: &[&str]) {
    held(|h| {
        h.insert(
            id.to_string(),
            Held {
                integrations: integrations.iter().map(|i| i.to_string()).collect(),
                ..Held::default()
            },
        )
    });
}

/// Loses lock `id` for `why`, as a failed renewal does (for tests elsewhere).
#[cfg(test)]
pub(crate) fn lose_for_test(id: &str, why: &str) {
    held(|h| {
        if let Some(state) = h.get_mut(id) {
            state.lost = Some(why.to_string());
        }
    });
}

/// Forgets lock `id` (for tests elsewhere).
#[cfg(test)]
pub(crate) fn forget_for_test(id: &str) {
    held(|h| h.remove(id));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::engine::fake::Fake;

    /// An engine whose lock is held, unexpired, by a holder with this process's own holder
    /// text (`user@host pid N`) and the given run id.
    fn locked_by(id: &str, run: Option<&str>) -> Arc<dyn Engine> {
        let mut labels = BTreeMap::from([
            (LABEL_LOCK.to_string(), "engine".to_string()),
            (LABEL_HOLDER.to_string(), holder("apply")),
            (LABEL_SINCE.to_string(), "1000".to_string()),
        ]);
        if let Some(run) = run {
            labels.insert(LABEL_RUN.to_string(), run.to_string());
        }
        Arc::new(Fake {
            marker: std::sync::Mutex::new(Some((id.to_string(), labels, 1_060))),
            clock: 1_010,
            image: Some("img".into()),
            ..Fake::default()
        })
    }

    fn opts() -> LockOptions {
        LockOptions {
            timeout: Duration::ZERO,
            lease: DEFAULT_LEASE,
            purpose: "apply".into(),
            seed_image: None,
            deadline: None,
        }
    }

    /// Two runs with the same `user@host pid N` (containers with one hostname, each
    /// outpostctl as PID 1) are still two writers: the second waits for the first's lock.
    #[tokio::test]
    async fn a_lock_with_the_same_holder_text_from_another_run_is_not_ours() {
        for run in [None, Some("0123456789abcdef0123456789abcdef")] {
            match acquire(locked_by("f00d", run), "local", &opts(), &|_| {}).await {
                Ok(_) => panic!("took a lock held by another run ({run:?}) as its own"),
                Err(e) => assert!(
                    e.to_string().contains("the engine is locked by")
                        && e.to_string().contains("(outpostctl apply)"),
                    "{e}"
                ),
            }
        }
    }

    /// A renewal that hangs (the engine stopped answering) loses the lock when two thirds of
    /// the lease are over, before another writer may take it over: not when the request
    /// would time out (120 s, after a 60 s lease ran out).
    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_hangs_loses_the_lock_before_the_lease_runs_out() {
        let engine = Arc::new(Fake {
            renewals_hang: true,
            ..Fake::default()
        });
        held(|h| {
            h.insert(
                "hung".to_string(),
                Held {
                    lost: None,
                    integrations: BTreeSet::from(["hung-a".to_string()]),
                    engine: None,
                    valid_until: None,
                },
            )
        });
        // A lease of 3 s: renewed every second, lost after 2 s without a renewal.
        let started = tokio::time::Instant::now();
        let renewing = tokio::spawn(renew(engine, "hung".into(), 3, started));
        let lost = tokio::time::timeout(Duration::from_secs(10), renewing).await;
        let why = lost_on("hung-a");
        held(|h| h.remove("hung"));
        assert!(lost.is_ok(), "still renewing after 10 s");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "lost when two thirds of the lease were over"
        );
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("did not answer the renewal in time")),
            "{why:?}"
        );
    }

    /// A fake engine that records its calls.
    fn recording() -> Arc<Fake> {
        Arc::new(Fake {
            calls: Some(std::sync::Mutex::new(Vec::new())),
            ..Fake::default()
        })
    }

    /// Holds lock `id` and renews it on `engine` with a lease of `lease` seconds, from now.
    fn renewing(engine: &Arc<Fake>, id: &str, lease: i64) -> tokio::task::JoinHandle<()> {
        held(|h| h.insert(id.to_string(), Held::default()));
        tokio::spawn(renew(
            Arc::clone(engine) as Arc<dyn Engine>,
            id.into(),
            lease,
            tokio::time::Instant::now(),
        ))
    }

    /// One renewal that fails at once (a reset connection, a proxy's 502) is tried again
    /// soon, within the lease: the lock is kept. Renewals that keep failing lose it when two
    /// thirds of the lease are over, saying why.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_fails_once_is_tried_again_in_time() {
        let engine = recording();
        engine.fail_once("renew flaky", ErrorKind::Api);
        // A lease of 30 s: renewed every 10 s, again 2.5 s after a failure.
        let renewing = renewing(&engine, "flaky", 30);
        tokio::time::sleep(Duration::from_secs(65)).await;
        let kept = held(|h| h.get("flaky").map(|l| l.lost.clone()));
        renewing.abort();
        held(|h| h.remove("flaky"));
        assert_eq!(kept, Some(None), "the lock was lost");
        // Failed at 10 s, renewed at 12.5 s, then every 10 s.
        assert_eq!(
            engine.recorded(),
            [
                "renew flaky",
                "renew flaky",
                "renew flaky",
                "renew flaky",
                "renew flaky",
                "renew flaky",
                "renew flaky"
            ]
        );

        for _ in 0..20 {
            engine.fail_once("renew broken", ErrorKind::Api);
        }
        held(|h| h.insert("broken".to_string(), Held::default()));
        let started = tokio::time::Instant::now();
        let renewing = tokio::spawn(renew(
            Arc::clone(&engine) as Arc<dyn Engine>,
            "broken".into(),
            60,
            started,
        ));
        let lost = tokio::time::timeout(Duration::from_secs(120), renewing).await;
        let why = held(|h| h.remove("broken")).and_then(|l| l.lost);
        assert!(lost.is_ok(), "still renewing");
        assert_eq!(started.elapsed(), Duration::from_secs(40));
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("could not be renewed for 40s")
                    && w.contains("renew broken: failed in this test")),
            "{why:?}"
        );
    }

    /// With the shortest lease (3 s: renewed every second, lost 2 s after the last renewal),
    /// two renewals failing at once in a row (an engine restarting) do not lose the lock:
    /// a failed renewal is tried again 250 ms later.
    #[tokio::test(start_paused = true)]
    async fn the_shortest_lease_survives_two_failed_renewals() {
        let engine = recording();
        engine.fail_once("renew short", ErrorKind::Api);
        engine.fail_once("renew short", ErrorKind::Api);
        let renewing = renewing(&engine, "short", 3);
        tokio::time::sleep(Duration::from_millis(3_900)).await;
        let kept = held(|h| h.get("short").map(|l| l.lost.clone()));
        renewing.abort();
        held(|h| h.remove("short"));
        assert_eq!(kept, Some(None), "the lock was lost");
        // Failed at 1 s and 1.25 s, renewed at 1.5 s, then at 2.5 s and 3.5 s.
        assert_eq!(engine.recorded(), ["renew short"; 5]);
    }

    /// However long the lease, a held lock is renewed at least every 10 s: a lock container
    /// removed under the run (`docker container prune`) is noticed that soon.
    #[tokio::test(start_paused = true)]
    async fn a_long_lease_is_renewed_at_least_every_ten_seconds() {
        let engine = recording();
        let renewing = renewing(&engine, "long", 86_400);
        tokio::time::sleep(Duration::from_secs(35)).await;
        renewing.abort();
        held(|h| h.remove("long"));
        assert_eq!(
            engine.recorded(),
            ["renew long", "renew long", "renew long"]
        );
    }

    /// An engine holding the lock of a run that died (its lease ran out at 1,000; the clock
    /// says 1,010), with `removed_by_another` as the fake's.
    fn expired_lock(removed_by_another: Option<&str>) -> Arc<Fake> {
        let labels = BTreeMap::from([
            (LABEL_LOCK.to_string(), "engine".to_string()),
            (LABEL_HOLDER.to_string(), "ci@elsewhere pid 1".to_string()),
            (LABEL_RUN.to_string(), "a-dead-run".to_string()),
        ]);
        Arc::new(Fake {
            calls: Some(std::sync::Mutex::new(Vec::new())),
            marker: std::sync::Mutex::new(Some(("0ld".into(), labels, 1_000))),
            clock: 1_010,
            image: Some("img".into()),
            removed_by_another: removed_by_another.map(str::to_string),
            ..Fake::default()
        })
    }

    /// Takes `engine`'s lock with `opts`: what the run said while waiting. The lock is
    /// released from this process's books at once.
    async fn take_saying(engine: &Arc<Fake>, opts: &LockOptions) -> Vec<String> {
        let said = std::sync::Mutex::new(Vec::new());
        let lock = acquire(
            Arc::clone(engine) as Arc<dyn Engine>,
            "local",
            opts,
            &|m: &str| {
                said.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(m.to_string())
            },
        )
        .await
        .expect("the lock is taken");
        held(|h| h.remove(&lock.id));
        if let Some(h) = &lock.heartbeat {
            h.abort();
        }
        said.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// Two runs taking over one expired lock at once: the one whose removal the engine
    /// refuses (the other's is in progress) tries again, as when the lock is held, and takes
    /// the lock once it is free; it does not fail.
    #[tokio::test]
    async fn a_takeover_that_meets_another_goes_on_waiting() {
        let engine = expired_lock(None);
        engine.fail_once("remove 0ld", ErrorKind::Conflict);
        let mut opts = opts();
        opts.timeout = Duration::from_secs(5);
        let said = take_saying(&engine, &opts).await;
        assert_eq!(engine.recorded(), ["remove 0ld", "remove 0ld"]);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("taking over the lock of ci@elsewhere pid 1"),
            "{said:?}"
        );
    }

    /// Another run removes the expired lock just before this run's removal of it: this run
    /// takes the lock once it is free and does not claim it took over the dead holder's lock
    /// (it said "taking over the lock of ..." whoever removed it).
    #[tokio::test]
    async fn a_takeover_that_another_run_did_first_is_not_claimed() {
        let engine = expired_lock(Some("0ld"));
        let said = take_saying(&engine, &opts()).await;
        assert_eq!(engine.recorded(), ["remove 0ld"]);
        assert!(said.is_empty(), "{said:?}");
    }

    /// An engine whose lock name stays taken by no container (a create refused, nothing to
    /// read): the run gives up at its --lock-timeout, saying why, after a few tries a growing
    /// pause apart (it spun thousands of times a second, for ever).
    #[tokio::test]
    async fn a_lock_name_taken_by_nothing_is_given_up_at_the_timeout() {
        let engine = Arc::new(Fake {
            phantom_marker: Some(std::sync::atomic::AtomicU64::new(0)),
            clock: 1_010,
            image: Some("img".into()),
            ..Fake::default()
        });
        let mut opts = opts();
        opts.timeout = Duration::from_secs(1);
        let started = Instant::now();
        let e = acquire(
            Arc::clone(&engine) as Arc<dyn Engine>,
            "local",
            &opts,
            &|_| {},
        )
        .await
        .err()
        .expect("no lock is taken");
        assert!(
            e.to_string().contains("stays taken, yet no container"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let tries = engine
            .phantom_marker
            .as_ref()
            .map_or(0, |t| t.load(std::sync::atomic::Ordering::SeqCst));
        assert!((2..=20).contains(&tries), "{tries} tries");
    }

    /// A second signal that comes while a lock is being taken (created, its answer not yet
    /// back): the lock this run created is removed on the way out, another run's is not.
    #[tokio::test]
    async fn a_lock_being_taken_is_released_on_exit_if_it_is_this_runs() {
        let marker = |run: &str| {
            let labels = BTreeMap::from([
                (LABEL_LOCK.to_string(), "engine".to_string()),
                (LABEL_RUN.to_string(), run.to_string()),
            ]);
            std::sync::Mutex::new(Some(("m1".to_string(), labels, 2_000)))
        };
        let ours = Arc::new(Fake {
            marker: marker(run_id()),
            ..Fake::default()
        });
        let theirs = Arc::new(Fake {
            marker: marker("another-run"),
            ..Fake::default()
        });
        let ours = Arc::clone(&ours) as Arc<dyn Engine>;
        let taking = Acquiring::new(&ours);
        let pending = acquiring(|a| a.get(&taking.0).cloned());
        assert!(
            pending.is_some_and(|e| Arc::ptr_eq(&e, &ours)),
            "not registered"
        );
        drop(taking);
        assert!(acquiring(|a| a.values().all(|e| !Arc::ptr_eq(e, &ours))));
        remove_unfinished(
            &[Arc::clone(&ours), Arc::clone(&theirs) as Arc<dyn Engine>],
            &[],
        )
        .await;
        assert!(
            ours.read_marker(LOCK_NAME).await.ok().flatten().is_none(),
            "this run's lock is left behind"
        );
        assert!(theirs.marker().is_some(), "another run's lock was removed");
    }

    /// A lost lock stops new actions on its own engine's integrations only.
    #[test]
    fn a_lost_lock_stops_its_engine_only() {
        held(|h| {
            h.insert(
                "lost-test".to_string(),
                Held {
                    lost: Some("the engine's lock was lost".into()),
                    integrations: BTreeSet::from(["lost-a".into(), "lost-b".into()]),
                    engine: None,
                    valid_until: None,
                },
            )
        });
        let (a, b, c) = (lost_on("lost-a"), lost_on("lost-b"), lost_on("lost-c"));
        held(|h| h.remove("lost-test"));
        assert_eq!(a.as_deref(), Some("the engine's lock was lost"));
        assert_eq!(b, a);
        assert_eq!(c, None);
    }

    /// A machine that slept past two thirds of the lease (the renewals' timers stood still):
    /// the lock reads as lost by the wall clock at once, before any renewal runs again.
    #[test]
    fn a_lock_not_renewed_by_the_wall_clock_is_lost() {
        let now = std::time::SystemTime::now();
        for (id, until, lost) in [
            ("slept", now - Duration::from_secs(1), true),
            ("awake", now + Duration::from_secs(60), false),
        ] {
            let integration = format!("wall-{id}");
            held(|h| {
                h.insert(
                    id.to_string(),
                    Held {
                        integrations: BTreeSet::from([integration.clone()]),
                        valid_until: Some(until),
                        ..Held::default()
                    },
                )
            });
            let why = lost_on(&integration);
            held(|h| h.remove(id));
            assert_eq!(why.is_some(), lost, "{id}: {why:?}");
            if let Some(why) = why {
                assert!(why.contains("was the machine asleep?"), "{why}");
            }
        }
    }

    /// The same run reaching one engine through two integrations holds its lock once.
    #[tokio::test]
    async fn this_runs_own_lock_is_recognised() {
        held(|h| {
            h.insert(
                "beef".to_string(),
                Held {
                    lost: None,
                    integrations: BTreeSet::from(["proxy".to_string()]),
                    engine: None,
                    valid_until: None,
                },
            )
        });
        let got = acquire(locked_by("beef", Some(run_id())), "local", &opts(), &|_| {}).await;
        let covered = held(|h| h.remove("beef")).map(|l| l.integrations);
        match got {
            Ok(lock) => assert!(lock.heartbeat.is_none(), "renewed twice"),
            Err(e) => panic!("waited for its own lock: {e}"),
        }
        // A loss of that lock stops both integrations' actions.
        assert_eq!(
            covered,
            Some(BTreeSet::from(["local".to_string(), "proxy".to_string()]))
        );
    }

    /// A lock of this run that nobody renews (its release failed while the engine was away, in
    /// a watch) is not shared as if held: it is removed and taken anew, with a heartbeat.
    #[tokio::test]
    async fn a_lock_of_this_run_that_nobody_renews_is_taken_anew() {
        let engine = locked_by("cafe", Some(run_id()));
        match acquire(Arc::clone(&engine), "local", &opts(), &|_| {}).await {
            Ok(lock) => {
                assert!(lock.heartbeat.is_some(), "not renewed");
                assert_eq!(lock.id, crate::engine::fake::CREATED_MARKER);
            }
            Err(e) => panic!("did not take its stale lock anew: {e}"),
        }
    }

    #[test]
    fn timestamps_from_the_engine_never_panic() {
        assert_eq!(when(0), "1970-01-01T00:00:00Z");
        assert_eq!(when(1_795_000_000), "2026-11-18T11:06:40Z");
        // Labels and restart counts on the engine can hold any number.
        assert_eq!(when(253_402_300_800), "253402300800 (seconds since 1970)");
        assert_eq!(when(i64::MAX), format!("{} (seconds since 1970)", i64::MAX));
        assert_eq!(when(-5), "-5 (seconds since 1970)");
    }

    /// `plan_under_lock` of a shown plan (strict), waiting up to `timeout` in all.
    async fn under_lock(
        v: &crate::validate::Validated,
        engines: &crate::plan::Engines,
        shown: &crate::plan::Plan,
        timeout: Duration,
    ) -> (crate::plan::Plan, Vec<Lock>) {
        let mut opts = opts();
        opts.timeout = timeout;
        plan_under_lock(v, engines, shown, Default::default(), true, &opts, &|_| {}).await
    }

    /// A set of two integrations, `a` and `b`, one outpost on each.
    fn two_engines() -> crate::validate::Validated {
        crate::engine::fake::validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  a: { local: true }\n  \
             b: { url: \"http://127.0.0.1:2375\" }\noutposts:\n  \
             A: { type: rac, integration: a, token: { env: HOME } }\n  \
             B: { type: rac, integration: b, token: { env: HOME } }\n",
        )
    }

    /// Two engines to lock, the first (by daemon ID) held by another run: nothing is taken
    /// on the second while waiting for the first (two runs needing both could otherwise hold
    /// one each and wait for the other until their timeouts); once the wait ends, the second
    /// is locked as before.
    #[tokio::test]
    async fn engines_are_locked_one_at_a_time_in_daemon_id_order() {
        let v = two_engines();
        let held = BTreeMap::from([
            (LABEL_LOCK.to_string(), "engine".to_string()),
            (
                LABEL_HOLDER.to_string(),
                "ci@elsewhere pid 1 (outpostctl apply)".to_string(),
            ),
            (LABEL_RUN.to_string(), "another-run".to_string()),
        ]);
        // `b` comes first by daemon ID, and another run holds it.
        let first = Arc::new(Fake {
            daemon_id: Some("AAAA".into()),
            networks: Some(vec!["bridge".into()]),
            images: Some(vec!["ghcr.io/goauthentik/rac:2026.8.0".into()]),
            marker: std::sync::Mutex::new(Some(("0ther".into(), held, 1_000_000))),
            clock: 1_010,
            image: Some("img".into()),
            ..Fake::default()
        });
        let second = Arc::new(Fake {
            daemon_id: Some("ZZZZ".into()),
            networks: Some(vec!["bridge".into()]),
            images: Some(vec!["ghcr.io/goauthentik/rac:2026.8.0".into()]),
            clock: 1_010,
            image: Some("img".into()),
            ..Fake::default()
        });
        let engines: crate::plan::Engines = BTreeMap::from([
            ("a".to_string(), Ok(Arc::clone(&second) as Arc<dyn Engine>)),
            ("b".to_string(), Ok(Arc::clone(&first) as Arc<dyn Engine>)),
        ]);
        let shown = crate::plan::build(&v, &engines, Default::default()).await;
        assert!(shown.has_changes(), "{shown:?}");
        let locking = under_lock(&v, &engines, &shown, Duration::from_millis(1500));
        let meanwhile = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            second.marker().is_none()
        };
        let ((plan, locks), untouched) = tokio::join!(locking, meanwhile);
        assert!(
            untouched,
            "locked the second engine while waiting for the first"
        );
        let error = |name: &str| {
            plan.integrations
                .iter()
                .find(|e| e.name == name)
                .and_then(|e| e.error.clone())
        };
        assert!(
            error("b").is_some_and(|e| e.contains("--lock-timeout of")),
            "{plan:?}"
        );
        assert_eq!(error("a"), None, "{plan:?}");
        assert_eq!(locks.len(), 1);
        release_all(locks).await;
    }

    /// Engines that another run holds, locked one after the other, share one
    /// `--lock-timeout`: the second does not wait a whole one more after the first gave up.
    #[tokio::test]
    async fn engines_held_elsewhere_share_one_lock_timeout() {
        let v = two_engines();
        let held = || {
            let labels = BTreeMap::from([
                (LABEL_LOCK.to_string(), "engine".to_string()),
                (LABEL_HOLDER.to_string(), "ci@elsewhere pid 1".to_string()),
                (LABEL_RUN.to_string(), "another-run".to_string()),
            ]);
            Some(("0ther".to_string(), labels, 1_000_000))
        };
        let busy = |id: &str| {
            Arc::new(Fake {
                daemon_id: Some(id.into()),
                networks: Some(vec!["bridge".into()]),
                images: Some(vec!["ghcr.io/goauthentik/rac:2026.8.0".into()]),
                marker: std::sync::Mutex::new(held()),
                clock: 1_010,
                image: Some("img".into()),
                ..Fake::default()
            })
        };
        let engines: crate::plan::Engines = BTreeMap::from([
            ("a".to_string(), Ok(busy("AAAA") as Arc<dyn Engine>)),
            ("b".to_string(), Ok(busy("ZZZZ") as Arc<dyn Engine>)),
        ]);
        let shown = crate::plan::build(&v, &engines, Default::default()).await;
        let started = Instant::now();
        let (plan, locks) = under_lock(&v, &engines, &shown, Duration::from_secs(1)).await;
        let took = started.elapsed();
        assert!(locks.is_empty());
        for e in &plan.integrations {
            assert!(
                e.error.as_deref().is_some_and(
                    |m| m.contains("gave up when the run's --lock-timeout of 1s ran out")
                ),
                "{plan:?}"
            );
        }
        // One timeout (with the wait's half-second steps), not one per engine (two would
        // take 2 s at least).
        assert!(took < Duration::from_secs(2), "waited {took:?} in all");
    }
}
