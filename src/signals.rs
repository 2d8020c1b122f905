//! SIGINT and SIGTERM for every long-running command: the first asks for a clean stop (no new
//! engine action starts, what runs finishes, temporary keys are removed on the way out); a
//! second one exits at once (removing the temporary keys first).

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
                // No destructor runs past this point: the ssh sessions' keys go first.
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
