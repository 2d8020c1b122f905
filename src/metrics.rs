//! Watch mode's health and metrics, served over plain HTTP on `--listen`: `/healthz` fails
//! until the first reconcile has finished, when the last one failed, and while one has run for
//! longer than a reconcile can take (stuck on an engine or a pull that stopped answering);
//! `/metrics` is Prometheus' text format.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Default)]
struct Inner {
    reconciles_ok: u64,
    reconciles_failed: u64,
    changes: BTreeMap<String, u64>,
    drift_corrections: u64,
    errors: u64,
    /// Failed actions, by action.
    action_failures: BTreeMap<String, u64>,
    /// Why the last reconcile failed (empty when it did not).
    last_causes: Vec<String>,
    last_success: Option<f64>,
    last_ok: Option<bool>,
    last_duration: f64,
    engines: BTreeMap<String, bool>,
    /// When the reconcile in progress started.
    running_since: Option<std::time::Instant>,
    /// How long a reconcile may run before `/healthz` calls the watch stuck (None: no bound).
    stuck_after: Option<Duration>,
}

/// Counters and gauges of the watch loop.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A poisoned lock only means a panic elsewhere; the counters are still usable.
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Sets how long a reconcile may run before `/healthz` fails.
    pub fn set_stuck_after(&self, bound: Duration) {
        self.with(|m| m.stuck_after = Some(bound));
    }

    pub fn reconcile_started(&self) {
        self.with(|m| m.running_since = Some(std::time::Instant::now()));
    }

    /// How long the reconcile in progress has run (None: none runs).
    fn running_for(m: &Inner) -> Option<Duration> {
        m.running_since.map(|t| t.elapsed())
    }

    /// `/healthz`'s status and body.
    pub fn health(&self) -> (&'static str, String) {
        self.with(|m| {
            let (status, mut body) = health(m.last_ok, Self::running_for(m), m.stuck_after);
            if m.last_ok == Some(false) && status != "200 OK" {
                body.push_str(&causes_text(&m.last_causes));
            }
            (status, body)
        })
    }

    /// Counts a reconcile that ended; `causes` says why it failed (none when `ok`).
    pub fn reconcile_finished(&self, ok: bool, took: Duration, causes: Vec<String>) {
        self.with(|m| {
            m.running_since = None;
            m.last_causes = causes;
            if ok {
                m.reconciles_ok += 1;
                m.last_success = Some(crate::watch::now_seconds());
            } else {
                m.reconciles_failed += 1;
                m.errors += 1;
            }
            m.last_ok = Some(ok);
            m.last_duration = took.as_secs_f64();
        });
    }

    pub fn change_applied(&self, action: &str, drift: bool) {
        self.with(|m| {
            *m.changes.entry(action.to_string()).or_default() += 1;
            if drift {
                m.drift_corrections += 1;
            }
        });
    }

    /// A container found crash-looping.
    pub fn error(&self) {
        self.with(|m| m.errors += 1);
    }

    pub fn action_failed(&self, action: &str) {
        self.with(|m| {
            m.errors += 1;
            *m.action_failures.entry(action.to_string()).or_default() += 1;
        });
    }

    pub fn engine_up(&self, integration: &str, up: bool) {
        self.with(|m| {
            m.engines.insert(integration.to_string(), up);
        });
    }

    /// Forgets the engines of integrations no longer in the manifests (a series left at 0
    /// would keep an alert firing).
    pub fn keep_engines(&self, integrations: &BTreeSet<&str>) {
        self.with(|m| {
            m.engines
                .retain(|name, _| integrations.contains(name.as_str()))
        });
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut s = String::new();
            let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = writeln!(s, "# HELP outpostctl_reconciles_total Reconciles run, by result.");
            let _ = writeln!(s, "# TYPE outpostctl_reconciles_total counter");
            let _ = writeln!(s, "outpostctl_reconciles_total{{result=\"success\"}} {}", m.reconciles_ok);
            let _ = writeln!(s, "outpostctl_reconciles_total{{result=\"failure\"}} {}", m.reconciles_failed);
            let _ = writeln!(s, "# HELP outpostctl_changes_applied_total Changes applied, by action.");
            let _ = writeln!(s, "# TYPE outpostctl_changes_applied_total counter");
            for action in ["create", "recreate", "rename", "start", "unpause", "restart", "remove"] {
                let n = m.changes.get(action).copied().unwrap_or(0);
                let _ = writeln!(s, "outpostctl_changes_applied_total{{action=\"{action}\"}} {n}");
            }
            let _ = writeln!(s, "# HELP outpostctl_drift_corrections_total Changes applied because the engine drifted (not the manifests).");
            let _ = writeln!(s, "# TYPE outpostctl_drift_corrections_total counter");
            let _ = writeln!(s, "outpostctl_drift_corrections_total {}", m.drift_corrections);
            let _ = writeln!(s, "# HELP outpostctl_action_failures_total Actions that failed, by action.");
            let _ = writeln!(s, "# TYPE outpostctl_action_failures_total counter");
            for action in ["create", "recreate", "rename", "start", "unpause", "restart", "remove"] {
                let n = m.action_failures.get(action).copied().unwrap_or(0);
                let _ = writeln!(s, "outpostctl_action_failures_total{{action=\"{action}\"}} {n}");
            }
            let _ = writeln!(s, "# HELP outpostctl_errors_total Failed reconciles, failed actions and containers found crash-looping, each counted once.");
            let _ = writeln!(s, "# TYPE outpostctl_errors_total counter");
            let _ = writeln!(s, "outpostctl_errors_total {}", m.errors);
            let _ = writeln!(s, "# HELP outpostctl_last_success_timestamp_seconds When the last reconcile succeeded.");
            let _ = writeln!(s, "# TYPE outpostctl_last_success_timestamp_seconds gauge");
            let _ = writeln!(s, "outpostctl_last_success_timestamp_seconds {}", m.last_success.unwrap_or(0.0));
            let _ = writeln!(s, "# HELP outpostctl_last_reconcile_duration_seconds How long the last reconcile took.");
            let _ = writeln!(s, "# TYPE outpostctl_last_reconcile_duration_seconds gauge");
            let _ = writeln!(s, "outpostctl_last_reconcile_duration_seconds {}", m.last_duration);
            let _ = writeln!(s, "# HELP outpostctl_reconcile_running_seconds How long the reconcile in progress has run (0: none runs).");
            let _ = writeln!(s, "# TYPE outpostctl_reconcile_running_seconds gauge");
            let running = Self::running_for(m).map_or(0.0, |d| d.as_secs_f64());
            let _ = writeln!(s, "outpostctl_reconcile_running_seconds {running:.3}");
            let _ = writeln!(s, "# HELP outpostctl_engine_up Whether the integration's engine answered the last reconcile.");
            let _ = writeln!(s, "# TYPE outpostctl_engine_up gauge");
            for (name, up) in &m.engines {
                let _ = writeln!(s, "outpostctl_engine_up{{integration=\"{}\"}} {}", esc(name), u8::from(*up));
            }
            s
        })
    }
}

/// Serves `/healthz` and `/metrics` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            // Out of file descriptors, say: not a tight loop while it lasts.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head, bounded in size and time.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            len += n;
                            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, body, ctype) = match path {
                "/healthz" => {
                    let (status, body) = metrics.health();
                    (status, body, "text/plain")
                }
                "/metrics" => ("200 OK", metrics.render(), "text/plain; version=0.0.4"),
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// The causes of a failed reconcile as lines of `/healthz`'s body: at most 20, each one line.
fn causes_text(causes: &[String]) -> String {
    const MAX: usize = 20;
    let mut out = String::new();
    for c in causes.iter().take(MAX) {
        let line = c.lines().next().unwrap_or_default();
        let _ = writeln!(out, "- {}", crate::engine::printable(line));
    }
    if causes.len() > MAX {
        let _ = writeln!(out, "- and {} more (see the log)", causes.len() - MAX);
    }
    out
}

/// `/healthz`'s status and body for the last reconcile's result (None: none finished yet),
/// unless the one in progress has run for longer than `stuck_after`.
fn health(
    last_ok: Option<bool>,
    running_for: Option<Duration>,
    stuck_after: Option<Duration>,
) -> (&'static str, String) {
    const DOWN: &str = "503 Service Unavailable";
    if let (Some(running), Some(bound)) = (running_for, stuck_after)
        && running > bound
    {
        return (
            DOWN,
            format!(
                "a reconcile has been running for {} s, longer than any should (an engine or an image pull that stopped answering?)\n",
                running.as_secs()
            ),
        );
    }
    match last_ok {
        Some(true) => ("200 OK", "ok\n".into()),
        Some(false) => (DOWN, "the last reconcile failed:\n".into()),
        None => (DOWN, "the first reconcile has not finished yet\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Metrics, health};

    #[test]
    fn health_says_whether_a_reconcile_has_finished_yet() {
        let m = Metrics::default();
        assert_eq!(
            m.health(),
            (
                "503 Service Unavailable",
                "the first reconcile has not finished yet\n".to_string()
            )
        );
        assert_eq!(
            health(Some(false), None, None).1,
            "the last reconcile failed:\n"
        );
        assert_eq!(
            health(Some(true), None, None),
            ("200 OK", "ok\n".to_string())
        );
    }

    /// A failed reconcile's /healthz names its causes, one line each, at most 20; a later
    /// success forgets them. A failed action counts under its action.
    #[test]
    fn health_names_what_failed() {
        let m = Metrics::default();
        let causes: Vec<String> = (0..22)
            .map(|i| format!("outpost `O{i}` (integration `local`) is blocked: x\ny\u{1b}"))
            .collect();
        m.action_failed("recreate");
        m.reconcile_finished(false, Duration::from_secs(1), causes);
        let (status, body) = m.health();
        assert_eq!(status, "503 Service Unavailable");
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines[0], "the last reconcile failed:");
        assert_eq!(
            lines[1],
            "- outpost `O0` (integration `local`) is blocked: x"
        );
        assert_eq!(lines.len(), 22, "{body}");
        assert_eq!(lines[21], "- and 2 more (see the log)");
        let text = m.render();
        assert!(text.contains("outpostctl_action_failures_total{action=\"recreate\"} 1\n"));
        assert!(text.contains("outpostctl_errors_total 2\n"), "{text}");
        m.reconcile_finished(true, Duration::from_secs(1), Vec::new());
        assert_eq!(m.health(), ("200 OK", "ok\n".to_string()));
    }

    /// A reconcile that runs for longer than the bound fails /healthz, whatever the last one
    /// did; one within it does not.
    #[test]
    fn health_fails_while_a_reconcile_is_stuck() {
        let bound = Some(Duration::from_secs(600));
        let within = health(Some(true), Some(Duration::from_secs(30)), bound);
        assert_eq!(within, ("200 OK", "ok\n".to_string()));
        let (status, body) = health(Some(true), Some(Duration::from_secs(601)), bound);
        assert_eq!(status, "503 Service Unavailable");
        assert!(
            body.starts_with("a reconcile has been running for 601 s"),
            "{body}"
        );
        let m = Metrics::default();
        m.reconcile_started();
        assert!(
            m.render()
                .contains("outpostctl_reconcile_running_seconds 0.")
        );
        m.reconcile_finished(true, Duration::from_secs(1), Vec::new());
        assert!(
            m.render()
                .contains("outpostctl_reconcile_running_seconds 0.000\n")
        );
    }

    /// Every applied action has its series; an integration that left the manifests has none.
    #[test]
    fn metrics_show_unpauses_and_only_current_engines() {
        let m = Metrics::default();
        m.change_applied("unpause", true);
        m.engine_up("gone", false);
        m.engine_up("here", true);
        m.keep_engines(&["here"].into_iter().collect());
        let text = m.render();
        assert!(
            text.contains("outpostctl_changes_applied_total{action=\"unpause\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("outpostctl_engine_up{integration=\"here\"} 1\n"));
        assert!(!text.contains("integration=\"gone\""), "{text}");
        // Each family's HELP comes right before its TYPE (a family's lines stay together).
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if let Some(name) = l.strip_prefix("# TYPE ").and_then(|t| t.split(' ').next()) {
                let help = format!("# HELP {name} ");
                assert!(i > 0 && lines[i - 1].starts_with(&help), "{text}");
            }
        }
    }
}
