//! SIGINT and SIGTERM (and SIGHUP, SIGQUIT: a closed terminal or session must not leave an ssh
//! key or session behind) for every long-running command: the first asks for a clean stop (no new
//! engine action starts, what runs finishes, temporary keys are removed on the way out); a
//! second one exits at once (releasing the engine locks within a moment, then closing the ssh
//! sessions and removing their keys).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Wakes whoever waits in `until_interrupted` (no polling while nothing happens).
static STOP: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Installs the handler (inside a tokio runtime); `on_first` says what happens next. The
/// signals are caught from this call on (not from when the task first runs): one that comes
/// right after it is a clean stop, not the default death.
pub fn install(on_first: impl Fn() + Send + 'static) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int, mut hup, mut quit) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::quit()),
    ) {
        (Ok(term), Ok(int), Ok(hup), Ok(quit)) => (term, int, hup, quit),
        (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
            // Then the default stands: a signal ends the process at once.
            eprintln!(
                "warning: cannot handle SIGINT, SIGTERM, SIGHUP and SIGQUIT ({e}): a signal stops outpostctl at once"
            );
            return;
        }
    };
    tokio::spawn(async move {
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {}
                _ = quit.recv() => {}
            }
            if n == 0 {
                INTERRUPTED.store(true, Ordering::SeqCst);
                // Said before the waiters wake: what they print on their way out comes after.
                on_first();
                STOP.notify_waiters();
            } else {
                // No destructor runs past this point. The engine locks are released (for 2 s
                // at most: a hung engine may be why a second signal came), so the next run
                // does not wait for their leases to run out; then the ssh sessions are closed
                // and their keys removed (after the locks: a lock may be reached through one).
                let released = crate::lock::release_on_exit();
                let _ = tokio::time::timeout(Duration::from_secs(2), released).await;
                crate::engine::ssh::remove_private_dirs();
                std::process::exit(130);
            }
        }
    });
}

/// Whether a stop was asked for.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Resolves once a stop was asked for.
pub async fn until_interrupted() {
    loop {
        // Made before the check: a stop asked for in between still wakes it.
        let stop = STOP.notified();
        if interrupted() {
            return;
        }
        stop.await;
    }
}
