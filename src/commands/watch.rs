//! `outpostctl watch`: the reconcile loop, with its optional HTTP endpoint.

use std::sync::Arc;

use crate::cli::{LogFormatArg, WatchArgs};
use crate::log::{LogFormat, Logger};
use crate::metrics::{self, Metrics};
use crate::watch;

pub async fn run(args: &WatchArgs) -> i32 {
    let log = Logger {
        format: match args.log_format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        },
    };
    let metrics = Arc::new(Metrics::default());
    metrics.set_stuck_after(watch::stuck_after(args.lock_timeout));
    if let Some(addr) = args.listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                // The port bound (`:0` asks the system for one).
                let bound = l.local_addr().unwrap_or(addr);
                log.info(
                    "start",
                    &format!("serving /healthz, /livez and /metrics on http://{bound}"),
                    &[],
                );
                tokio::spawn(metrics::serve(l, Arc::clone(&metrics)));
            }
            Err(e) => {
                let hint = match e.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        "another process listens there (another watch?): give another --listen"
                    }
                    std::io::ErrorKind::AddrNotAvailable => {
                        "that address is not one of this machine's: give one it has, e.g. 127.0.0.1:9090"
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        "ports below 1024 need privileges: give a port above 1023"
                    }
                    _ => "give another --listen",
                };
                log.error(
                    "start",
                    &format!("cannot listen on {addr}: {e}"),
                    &[("hint", hint.to_string())],
                );
                return 1;
            }
        }
    }
    let opts = watch::Options {
        paths: args.paths.clone(),
        interval: args.interval,
        debounce: args.debounce,
        no_prune: args.no_prune,
        adopt: args.adopt,
        lock_timeout: args.lock_timeout,
    };
    watch::run(opts, log, metrics).await
}
