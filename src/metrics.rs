//! Watch mode's health and metrics, served over plain HTTP on `--listen`: `/healthz` fails
//! until the first reconcile has finished, when the last one failed, and while one has run for
//! longer than a reconcile can take (stuck on an engine or a pull that stopped answering),
//! its body saying why; `/livez` fails only in that last case (a liveness probe: a failed
//! reconcile is no reason to restart the watch); `/metrics` is Prometheus' text format.

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
    /// Engine events received (those about the project's containers and those that may
    /// unblock an outpost), by integration.
    events: BTreeMap<String, u64>,
    /// When the reconcile in progress started.
    running_since: Option<std::time::Instant>,
    /// When the reconcile in progress last moved on (started, an action started or ended, a
    /// pull reported progress).
    progress_at: Option<std::time::Instant>,
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
        self.with(|m| {
            let now = std::time::Instant::now();
            m.running_since = Some(now);
            m.progress_at = Some(now);
        });
    }

    /// The reconcile in progress moved on: an action started or ended, a pull progressed.
    /// Outside a reconcile it counts for nothing (`stalled_for`; the next start sets it).
    pub fn progressed(&self) {
        self.with(|m| m.progress_at = Some(std::time::Instant::now()));
    }

    /// How long the reconcile in progress has run (None: none runs).
    fn running_for(m: &Inner) -> Option<Duration> {
        m.running_since.map(|t| t.elapsed())
    }

    /// How long the reconcile in progress has not moved on (None: none runs).
    fn stalled_for(m: &Inner) -> Option<Duration> {
        m.progress_at
            .filter(|_| m.running_since.is_some())
            .map(|t| t.elapsed())
    }

    /// `/healthz`'s status and body.
    pub fn health(&self) -> (&'static str, String) {
        self.with(|m| {
            let (status, mut body) = health(m.last_ok, Self::stalled_for(m), m.stuck_after);
            if m.last_ok == Some(false) && status != "200 OK" {
                // Under a stuck reconcile, the last one's causes are said as its own: they
                // are not why this one does not move on.
                if !body.starts_with("the last reconcile failed") {
                    body.push_str("the last reconcile before it failed:\n");
                }
                body.push_str(&causes_text(&m.last_causes));
            }
            (status, body)
        })
    }

    /// `/livez`: alive unless a reconcile is stuck (a failed reconcile is no reason to
    /// restart the watch).
    pub fn liveness(&self) -> (&'static str, String) {
        self.with(|m| health(Some(true), Self::stalled_for(m), m.stuck_after))
    }

    /// Counts a reconcile that ended: it failed when `causes` says why.
    pub fn reconcile_finished(&self, took: Duration, causes: Vec<String>) {
        let ok = causes.is_empty();
        self.with(|m| {
            m.running_since = None;
            m.progress_at = None;
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
            // Its event counter from 0, even before its stream ever delivered one (an engine
            // never reached has a series too, so that a stream that stays quiet shows).
            m.events.entry(integration.to_string()).or_default();
        });
    }

    /// An engine event came in from `integration`'s engine.
    pub fn event_received(&self, integration: &str) {
        self.with(|m| *m.events.entry(integration.to_string()).or_default() += 1);
    }

    /// Forgets the engines of integrations no longer in the manifests (a series left at 0
    /// would keep an alert firing).
    pub fn keep_engines(&self, integrations: &BTreeSet<&str>) {
        self.with(|m| {
            m.engines
                .retain(|name, _| integrations.contains(name.as_str()));
            m.events
                .retain(|name, _| integrations.contains(name.as_str()));
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
            by_action(&mut s, "outpostctl_changes_applied_total", "Changes applied, by action.", &m.changes);
            let _ = writeln!(s, "# HELP outpostctl_drift_corrections_total Changes applied because the engine drifted (not the manifests).");
            let _ = writeln!(s, "# TYPE outpostctl_drift_corrections_total counter");
            let _ = writeln!(s, "outpostctl_drift_corrections_total {}", m.drift_corrections);
            by_action(&mut s, "outpostctl_action_failures_total", "Actions that failed, by action.", &m.action_failures);
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
            let _ = writeln!(s, "# HELP outpostctl_engine_events_total Engine events received, by integration (a stream that stopped counting may be broken).");
            let _ = writeln!(s, "# TYPE outpostctl_engine_events_total counter");
            for (name, n) in &m.events {
                let _ = writeln!(s, "outpostctl_engine_events_total{{integration=\"{}\"}} {n}", esc(name));
            }
            s
        })
    }
}

/// How many connections are served at once. More wait in the kernel's backlog, not in this
/// process: each one served holds a file descriptor, and the watch needs its own (200 idle
/// clients under `ulimit -n 128` left none to read the manifests with).
const MAX_CONNECTIONS: usize = 32;
/// How long a client has to send its request head (from the connection's accept).
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the answer may take to be written (a client that does not read it).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long what a client still sends after the answer is read and dropped, until it closes.
const LINGER: Duration = Duration::from_secs(1);
/// The largest request head read; a larger one is answered 431.
const HEAD_MAX: usize = 4096;

const TEXT: &str = "text/plain";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// Serves `/healthz`, `/livez` and `/metrics` (GET and HEAD, one request per connection) until
/// the process ends, at most `MAX_CONNECTIONS` connections at once.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // The permit first: while all are taken, clients wait in the backlog, unaccepted.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            // Only a closed semaphore fails, and this one is never closed.
            return;
        };
        let Ok((conn, _)) = listener.accept().await else {
            // Out of file descriptors, say: not a tight loop while it lasts.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            serve_connection(conn, &metrics).await;
            drop(permit);
        });
    }
}

/// A counter by action, every action listed (0 for those not counted yet).
fn by_action(s: &mut String, name: &str, help: &str, counts: &BTreeMap<String, u64>) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} counter");
    for action in [
        "create", "recreate", "rename", "start", "unpause", "restart", "remove",
    ] {
        let n = counts.get(action).copied().unwrap_or(0);
        let _ = writeln!(s, "{name}{{action=\"{action}\"}} {n}");
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

/// What reading a request head came to.
#[derive(Debug, PartialEq)]
enum Head {
    /// The head, up to its blank line (maybe with more after it), or all that came before the
    /// client closed its side: this many bytes of the buffer.
    Read(usize),
    /// The buffer filled up before the head's blank line.
    TooLarge,
    /// Some bytes came, but not the whole head in time.
    TimedOut,
    /// Nothing came (in time, or before the client closed or the connection failed).
    Nothing,
}

/// Reads one request head into `buf`, bounded by its size and `HEAD_TIMEOUT`.
async fn read_head(conn: &mut (impl AsyncReadExt + Unpin), buf: &mut [u8]) -> Head {
    let mut len = 0;
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            if len == buf.len() {
                return Head::TooLarge;
            }
            match conn.read(&mut buf[len..]).await {
                Ok(0) if len > 0 => return Head::Read(len),
                Ok(0) | Err(_) => return Head::Nothing,
                Ok(n) => {
                    len += n;
                    if head_end(&buf[..len]).is_some() {
                        return Head::Read(len);
                    }
                }
            }
        }
    })
    .await;
    match read {
        Ok(head) => head,
        Err(_) if len > 0 => Head::TimedOut,
        Err(_) => Head::Nothing,
    }
}

/// One connection: its request head, the answer, then `Connection: close`.
async fn serve_connection(mut conn: tokio::net::TcpStream, metrics: &Metrics) {
    let mut buf = vec![0u8; HEAD_MAX];
    let answer = match read_head(&mut conn, &mut buf).await {
        Head::Read(len) => respond(&buf[..len], metrics),
        Head::TooLarge => error_response("431 Request Header Fields Too Large", true),
        Head::TimedOut => error_response("408 Request Timeout", true),
        Head::Nothing => return,
    };
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        conn.write_all(&answer).await?;
        conn.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    // What the client still sends (a body, a pipelined request, the rest of a head too large) is
    // read and dropped until it closes, for a while: closing with unread data resets the
    // connection, and a reset can discard the answer before the client has read it.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = conn.read(&mut sink).await
            && n > 0
        {}
    })
    .await;
}

/// Where the request head in `buf` ends (just after its blank line), if it does. Lines may end
/// in a bare LF, and empty lines before the request line are skipped (RFC 9112, 2.2).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    let mut seen_request_line = false;
    for (i, &b) in buf.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line = &buf[line_start..i];
        if line.strip_suffix(b"\r").unwrap_or(line).is_empty() {
            if seen_request_line {
                return Some(i + 1);
            }
        } else {
            seen_request_line = true;
        }
        line_start = i + 1;
    }
    None
}

/// The answer to a request head (the bytes read, maybe followed by more): the request line
/// decides it, the header fields are not looked at.
fn respond(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    let line = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let Some((method, target, major)) = request_line(line) else {
        return error_response("400 Bad Request", true);
    };
    // An answer to HEAD has no body, an error's neither.
    let head_only = method == "HEAD";
    if major != b'1' {
        return error_response("505 HTTP Version Not Supported", !head_only);
    }
    let Some(path) = target_path(target) else {
        return error_response("400 Bad Request", !head_only);
    };
    let with_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => {
            return response(
                "405 Method Not Allowed",
                TEXT,
                "Allow: GET, HEAD\r\n",
                "method not allowed (GET or HEAD)\n",
                true,
            );
        }
    };
    let (status, content_type, body) = match path {
        "/healthz" => {
            let (status, body) = metrics.health();
            (status, TEXT, body)
        }
        "/livez" => {
            let (status, body) = metrics.liveness();
            (status, TEXT, body)
        }
        "/metrics" => ("200 OK", PROMETHEUS_TEXT, metrics.render()),
        _ => ("404 Not Found", TEXT, "not found\n".to_string()),
    };
    response(status, content_type, "", &body, with_body)
}

/// A request line's method, target and HTTP major version (the digit), if it is one:
/// `METHOD SP TARGET SP HTTP/d.d`.
fn request_line(line: &[u8]) -> Option<(&str, &str, u8)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || target.is_empty() || target.contains(char::is_control) {
        return None;
    }
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return None;
    }
    match version.strip_prefix("HTTP/")?.as_bytes() {
        &[major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            Some((method, target, major))
        }
        _ => None,
    }
}

/// The path of a request target, without its query: of the origin form (`/metrics?x=1`) or the
/// absolute form (`http://host:port/metrics`); `*` stays itself. None: no target of HTTP.
fn target_path(target: &str) -> Option<&str> {
    let path = if target.starts_with('/') || target == "*" {
        target
    } else {
        let (scheme, rest) = target.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if authority_end == 0 {
            return None;
        }
        &rest[authority_end..]
    };
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    Some(if path.is_empty() { "/" } else { path })
}

/// The answer to a request that could not be read or understood.
fn error_response(status: &'static str, with_body: bool) -> Vec<u8> {
    let reason = status.split_once(' ').map_or(status, |(_, reason)| reason);
    response(
        status,
        TEXT,
        "",
        &format!("{}\n", reason.to_lowercase()),
        with_body,
    )
}

/// A whole answer; without its body for HEAD (whose Content-Length is still GET's).
fn response(
    status: &str,
    content_type: &str,
    extra_headers: &str,
    body: &str,
    with_body: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// `/healthz`'s status and body for the last reconcile's result (None: none finished yet),
/// unless the one in progress has not moved on for longer than `stuck_after`.
fn health(
    last_ok: Option<bool>,
    stalled_for: Option<Duration>,
    stuck_after: Option<Duration>,
) -> (&'static str, String) {
    const DOWN: &str = "503 Service Unavailable";
    if let (Some(stalled), Some(bound)) = (stalled_for, stuck_after)
        && stalled > bound
    {
        return (
            DOWN,
            format!(
                "a reconcile has not moved on for {} s, longer than any wait should last (an engine or an image pull that stopped answering?)\n",
                stalled.as_secs()
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
        m.reconcile_finished(Duration::from_secs(1), causes);
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
        m.reconcile_finished(Duration::from_secs(1), Vec::new());
        assert_eq!(m.health(), ("200 OK", "ok\n".to_string()));
    }

    /// A reconcile is stuck when it has not moved on for the bound, however long it runs:
    /// an action or a pull's progress sets the clock back.
    #[test]
    fn progress_keeps_a_long_reconcile_from_counting_as_stuck() {
        let m = Metrics::default();
        m.reconcile_finished(Duration::ZERO, Vec::new());
        m.set_stuck_after(Duration::from_millis(200));
        m.reconcile_started();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(m.liveness().0, "503 Service Unavailable");
        m.progressed();
        assert_eq!(m.liveness(), ("200 OK", "ok\n".to_string()));
        assert_eq!(m.health().0, "200 OK");
        // Progress outside a reconcile starts no clock: the next reconcile's own start does.
        m.reconcile_finished(Duration::ZERO, Vec::new());
        m.progressed();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(m.liveness().0, "200 OK");
        m.reconcile_started();
        assert_eq!(
            m.liveness().0,
            "200 OK",
            "stuck from progress before it started"
        );
    }

    /// Under a stuck reconcile, what made the one before it fail is said as that one's, not
    /// as why this one does not move on.
    #[test]
    fn a_stuck_reconcile_does_not_take_the_last_ones_causes() {
        let m = Metrics::default();
        m.reconcile_finished(Duration::ZERO, vec!["integration `nas`: refused".into()]);
        m.set_stuck_after(Duration::from_millis(50));
        m.reconcile_started();
        std::thread::sleep(Duration::from_millis(120));
        let (status, body) = m.health();
        assert_eq!(status, "503 Service Unavailable");
        let stuck = body.find("has not moved on");
        let before = body.find("the last reconcile before it failed:");
        let cause = body.find("- integration `nas`: refused");
        assert!(
            stuck < before && before < cause && stuck.is_some(),
            "{body}"
        );
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
            body.starts_with("a reconcile has not moved on for 601 s"),
            "{body}"
        );
        let m = Metrics::default();
        m.reconcile_started();
        assert!(
            m.render()
                .contains("outpostctl_reconcile_running_seconds 0.")
        );
        m.reconcile_finished(Duration::from_secs(1), Vec::new());
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
        m.event_received("gone");
        m.event_received("here");
        m.event_received("here");
        m.keep_engines(&["here"].into_iter().collect());
        let text = m.render();
        assert!(
            text.contains("outpostctl_engine_events_total{integration=\"here\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("outpostctl_changes_applied_total{action=\"unpause\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("outpostctl_engine_up{integration=\"here\"} 1\n"));
        assert!(!text.contains("integration=\"gone\""), "{text}");
        // An engine never reached has its event series, at 0.
        m.engine_up("down", false);
        let text = m.render();
        assert!(
            text.contains("outpostctl_engine_events_total{integration=\"down\"} 0\n"),
            "{text}"
        );
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

#[cfg(test)]
mod serve_tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{HEAD_MAX, Head, Metrics, head_end, read_head, respond, serve, target_path};

    /// A status line, the header fields (names in lower case) and the body of an answer.
    fn parse(answer: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
        let text = String::from_utf8_lossy(answer);
        let (head, _) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {text:?}"));
        let body = answer[head.len() + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .map(|l| {
                let (name, value) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("not a header field: {l:?}"));
                (name.to_ascii_lowercase(), value.trim().to_string())
            })
            .collect();
        (status, headers, body)
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn healthy() -> Metrics {
        let m = Metrics::default();
        m.reconcile_finished(Duration::from_secs(1), Vec::new());
        m
    }

    fn status_of(head: &str, m: &Metrics) -> String {
        parse(&respond(head.as_bytes(), m)).0
    }

    #[test]
    fn get_serves_each_endpoint_with_its_length_and_connection_close() {
        let m = healthy();
        for (path, body) in [
            ("/healthz", "ok\n".to_string()),
            ("/livez", "ok\n".to_string()),
            ("/metrics", m.render()),
        ] {
            let (status, headers, got) = parse(&respond(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                &m,
            ));
            assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
            assert_eq!(String::from_utf8_lossy(&got), body, "{path}");
            assert_eq!(
                header(&headers, "content-length"),
                Some(body.len().to_string().as_str())
            );
            assert_eq!(header(&headers, "connection"), Some("close"));
        }
        let (_, headers, _) = parse(&respond(b"GET /metrics HTTP/1.0\r\n\r\n", &m));
        assert_eq!(
            header(&headers, "content-type"),
            Some("text/plain; version=0.0.4")
        );
    }

    /// HEAD has GET's status and Content-Length, and no body.
    #[test]
    fn head_has_no_body() {
        let m = healthy();
        for path in ["/healthz", "/livez", "/metrics", "/nope"] {
            let get = parse(&respond(
                format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes(),
                &m,
            ));
            let head = parse(&respond(
                format!("HEAD {path} HTTP/1.1\r\n\r\n").as_bytes(),
                &m,
            ));
            assert_eq!(head.0, get.0, "{path}");
            assert_eq!(head.1, get.1, "{path}");
            assert!(!get.2.is_empty(), "{path}");
            assert!(head.2.is_empty(), "{path}: {:?}", head.2);
        }
    }

    #[test]
    fn other_methods_are_not_allowed() {
        let m = healthy();
        for method in ["POST", "DELETE", "PUT", "OPTIONS", "get"] {
            let (status, headers, body) = parse(&respond(
                format!("{method} /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                &m,
            ));
            assert_eq!(status, "HTTP/1.1 405 Method Not Allowed", "{method}");
            assert_eq!(header(&headers, "allow"), Some("GET, HEAD"), "{method}");
            assert_eq!(
                header(&headers, "content-length"),
                Some(body.len().to_string().as_str())
            );
        }
        assert_eq!(
            status_of("OPTIONS * HTTP/1.1\r\n\r\n", &m),
            "HTTP/1.1 405 Method Not Allowed"
        );
    }

    /// A query (Prometheus' `params:`) and the absolute form name the same endpoint.
    #[test]
    fn targets_with_a_query_or_in_absolute_form_are_served() {
        let m = healthy();
        for target in [
            "/metrics?x=1",
            "/metrics?",
            "http://127.0.0.1:9810/metrics",
            "HTTP://outpost.example/metrics?module=a&b=c",
            "https://[::1]:9810/metrics#frag",
        ] {
            let (status, _, body) = parse(&respond(
                format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes(),
                &m,
            ));
            assert_eq!(status, "HTTP/1.1 200 OK", "{target}");
            assert_eq!(String::from_utf8_lossy(&body), m.render(), "{target}");
        }
        assert_eq!(target_path("http://h:1"), Some("/"));
        assert_eq!(target_path("http://h:1?q"), Some("/"));
        assert_eq!(target_path("/healthz?a=/metrics"), Some("/healthz"));
        assert_eq!(target_path("http:///metrics"), None);
        assert_eq!(target_path("ftp://h/metrics"), None);
        assert_eq!(target_path("metrics"), None);
        for target in ["/metricsx", "/metrics/", "/", "http://h/metricsx?x", "*"] {
            assert_eq!(
                status_of(&format!("GET {target} HTTP/1.1\r\n\r\n"), &m),
                "HTTP/1.1 404 Not Found",
                "{target}"
            );
        }
    }

    #[test]
    fn a_request_line_that_is_not_one_is_a_bad_request() {
        let m = healthy();
        for head in [
            "",
            "\r\n\r\n",
            "hello\r\n\r\n",
            "GET /metrics\r\n\r\n",
            "GET  /metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1 extra\r\n\r\n",
            "GET /metrics HTTP/1\r\n\r\n",
            "GET /metrics http/1.1\r\n\r\n",
            "GET /metrics FTP/1.1\r\n\r\n",
            "G(T /metrics HTTP/1.1\r\n\r\n",
            "GET metrics HTTP/1.1\r\n\r\n",
            "GET /met\trics HTTP/1.1\r\n\r\n",
        ] {
            let (status, headers, body) = parse(&respond(head.as_bytes(), &m));
            assert_eq!(status, "HTTP/1.1 400 Bad Request", "{head:?}");
            assert_eq!(header(&headers, "connection"), Some("close"));
            assert_eq!(String::from_utf8_lossy(&body), "bad request\n");
        }
        // Not UTF-8.
        assert_eq!(
            parse(&respond(b"GET /\xff HTTP/1.1\r\n\r\n", &m)).0,
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(
            status_of("GET /metrics HTTP/2.0\r\n\r\n", &m),
            "HTTP/1.1 505 HTTP Version Not Supported"
        );
        // An error's answer to HEAD has no body either.
        for head in [
            "HEAD /metrics HTTP/2.0\r\n\r\n",
            "HEAD metrics HTTP/1.1\r\n\r\n",
        ] {
            let (status, _, body) = parse(&respond(head.as_bytes(), &m));
            assert!(status.starts_with("HTTP/1.1 50") || status.starts_with("HTTP/1.1 400"));
            assert!(
                body.is_empty(),
                "{head:?}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        // Bare LFs and an empty line before the request line are tolerated (RFC 9112, 2.2).
        assert_eq!(
            status_of("\r\nGET /livez HTTP/1.0\nHost: x\n\n", &m),
            "HTTP/1.1 200 OK"
        );
    }

    /// `/livez` fails only while a reconcile is stuck; `/healthz` also before the first one and
    /// after a failed one.
    #[test]
    fn livez_fails_only_while_a_reconcile_is_stuck() {
        let m = Metrics::default();
        let get = |path: &str| status_of(&format!("GET {path} HTTP/1.1\r\n\r\n"), &m);
        assert_eq!(get("/livez"), "HTTP/1.1 200 OK");
        assert_eq!(get("/healthz"), "HTTP/1.1 503 Service Unavailable");
        m.reconcile_finished(Duration::from_secs(1), vec!["an engine away".into()]);
        assert_eq!(get("/livez"), "HTTP/1.1 200 OK");
        assert_eq!(get("/healthz"), "HTTP/1.1 503 Service Unavailable");
        m.set_stuck_after(Duration::ZERO);
        m.reconcile_started();
        std::thread::sleep(Duration::from_millis(5));
        let (status, _, body) = parse(&respond(b"GET /livez HTTP/1.1\r\n\r\n", &m));
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert!(
            String::from_utf8_lossy(&body).starts_with("a reconcile has not moved on for"),
            "{body:?}"
        );
        m.reconcile_finished(Duration::from_secs(1), Vec::new());
        assert_eq!(get("/livez"), "HTTP/1.1 200 OK");
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"\r\n\r\nGET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[tokio::test]
    async fn read_head_stops_at_the_blank_line_the_buffer_or_the_end() {
        let mut buf = [0u8; 64];
        let mut input: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(read_head(&mut input, &mut buf).await, Head::Read(18));
        let mut input: &[u8] = b"GET / HTTP/1.1\r\n";
        assert_eq!(read_head(&mut input, &mut buf).await, Head::Read(16));
        let mut input: &[u8] = b"";
        assert_eq!(read_head(&mut input, &mut buf).await, Head::Nothing);
        let long = [b'a'; 100];
        let mut input: &[u8] = &long;
        assert_eq!(read_head(&mut input, &mut buf).await, Head::TooLarge);
    }

    /// `serve` on 127.0.0.1 in a runtime of its own (dropped, with its tasks, at the end).
    fn server(m: Metrics) -> (tokio::runtime::Runtime, SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        rt.spawn(serve(listener, Arc::new(m)));
        (rt, addr)
    }

    /// Sends `request` on a new connection and reads until the server closes (bounded).
    fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request).expect("write");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .expect("the server answers and closes");
        answer
    }

    /// Idle connections beyond the bound wait in the backlog (the server does not hold them),
    /// and a request behind them is answered once the held ones time out.
    #[test]
    fn idle_connections_are_bounded_and_do_not_block_the_endpoint_for_long() {
        let (_rt, addr) = server(healthy());
        let start = Instant::now();
        let mut idle: Vec<TcpStream> = (0..40)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        // 32 idle ones are being served: this one waits (no answer, not even a close).
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let mut first = [0u8; 1];
        let early = s.read(&mut first);
        assert!(
            matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "answered while 32 idle connections were held: {early:?}"
        );
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("an answer");
        let took = start.elapsed();
        let (status, _, body) = parse(&answer);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(String::from_utf8_lossy(&body).contains("outpostctl_reconciles_total"));
        assert!(took < Duration::from_secs(8), "answered after {took:?}");
        // The idle ones are closed without an answer.
        for c in &mut idle {
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut rest = Vec::new();
            let n = c.read_to_end(&mut rest).expect("closed by the server");
            assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&rest));
        }
    }

    #[test]
    fn head_over_a_socket_has_content_length_and_no_body() {
        let (_rt, addr) = server(healthy());
        let answer = exchange(addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 3\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n"),
            "a body after the head: {text:?}"
        );
    }

    /// One answer per connection, even to pipelined requests; garbage, a head too large and
    /// one that does not end in time have theirs.
    #[test]
    fn pipelined_garbage_too_large_and_slow_heads_over_a_socket() {
        let (_rt, addr) = server(healthy());
        let answer = exchange(
            addr,
            b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
        let (status, headers, body) = parse(&answer);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(header(&headers, "connection"), Some("close"));
        assert_eq!(body, b"ok\n");

        let answer = exchange(addr, b"\x00\x01garbage\r\n\r\n");
        assert_eq!(parse(&answer).0, "HTTP/1.1 400 Bad Request");

        let answer = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert_eq!(parse(&answer).0, "HTTP/1.1 405 Method Not Allowed");

        let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(HEAD_MAX + 1000, b'a');
        let answer = exchange(addr, &big);
        assert_eq!(
            parse(&answer).0,
            "HTTP/1.1 431 Request Header Fields Too Large"
        );

        let start = Instant::now();
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\n").expect("write");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("an answer");
        assert_eq!(parse(&answer).0, "HTTP/1.1 408 Request Timeout");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
            "408 after {took:?}"
        );
    }
}
