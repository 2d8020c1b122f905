//! SIGINT and SIGTERM for every long-running command: the first asks for a clean stop (no new
//! engine action starts, what runs finishes, temporary keys are removed on the way out); a
//! second one exits at once (releasing the engine locks within a moment, then closing the ssh
//! sessions and removing their keys).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (inside a tokio runtime); `on_first` says what happens next.
pub fn install(on_first: impl Fn() + Send + 'static) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if n == 0 {
                INTERRUPTED.store(true, Ordering::SeqCst);
                on_first();
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
    while !interrupted() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
