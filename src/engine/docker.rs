//! `Engine` on a real Docker engine through bollard.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BError;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, PortBinding as BPortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions,
    RemoveContainerOptions, RenameContainerOptions, RestartContainerOptions, StartContainerOptions,
    StopContainerOptions,
};
use bollard::{API_DEFAULT_VERSION, Docker};
use futures_util::StreamExt;

use super::transport::Transport;
use super::{
    EngineError, EngineEvent, EngineInfo, ErrorKind, EventSubject, Health, HostPort, Inspected,
    Observed, Result, State, image_name,
};
use crate::desired::{ContainerSpec, HealthCheck, LABEL_IMAGE, PortBinding, Proto};

/// Seconds any one request may take before the engine counts as hung, unless
/// `OUTPOSTCTL_ENGINE_TIMEOUT` says otherwise (`request_timeout`).
pub const REQUEST_TIMEOUT_SECS: u64 = 120;
/// `OUTPOSTCTL_ENGINE_TIMEOUT` is held to this range (seconds): the first answer gets half of
/// it, and bollard keeps whole seconds.
const MIN_TIMEOUT_SECS: u64 = 2;
const MAX_TIMEOUT_SECS: u64 = 3600;
/// Seconds the first request to an engine (the ping) gets before it is tried once more (see
/// `DockerEngine::negotiated`); both together stay within the request timeout.
const FIRST_ANSWER_SECS: u64 = 20;
/// How long any one request may take: `OUTPOSTCTL_ENGINE_TIMEOUT` seconds (kept within 2 to
/// 3600, rounded up; a value that is not a number is ignored), 120 s without it. An engine that is down behind
/// a firewall dropping packets costs a run this long.
pub fn request_timeout() -> Duration {
    static TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TIMEOUT.get_or_init(|| {
        let secs = super::env_seconds(
            "OUTPOSTCTL_ENGINE_TIMEOUT",
            MIN_TIMEOUT_SECS,
            MAX_TIMEOUT_SECS,
        )
        .unwrap_or(REQUEST_TIMEOUT_SECS);
        Duration::from_secs(secs)
    })
}

/// Seconds a container gets to stop before it is killed (outposts stop in well under one).
pub const STOP_TIMEOUT_SECS: i32 = 10;

pub struct DockerEngine {
    docker: Docker,
    /// How requests reach the engine, for what bollard does not read (the ping's `Date`).
    transport: super::transport::Transport,
    /// Where the engine is, for messages.
    url: String,
    requests: AtomicU64,
}

/// A client whose requests name the API version it negotiated, as the Docker CLI's do.
/// bollard 0.21 builds each path as `/vX.Y/path` and then joins the path onto it, which drops
/// the version (bollard#736): the engine would answer in its own newest version, whatever was
/// negotiated.
fn versioned(docker: Docker) -> Docker {
    let v = docker.client_version();
    let prefix = format!("/v{}.{}", v.major_version, v.minor_version);
    docker.with_request_modifier(move |mut req| {
        if let Some(uri) = with_version(req.uri(), &prefix) {
            *req.uri_mut() = uri;
        }
        req
    })
}

/// `uri` with `prefix` (`/v1.41`) before its path, unless its path names a version already.
fn with_version(uri: &http::Uri, prefix: &str) -> Option<http::Uri> {
    let pq = uri.path_and_query()?;
    let named = pq
        .path()
        .strip_prefix("/v")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
    if named {
        return None;
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(format!("{prefix}{pq}").parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

impl DockerEngine {
    /// Connects through `transport` and negotiates the API version (Debian's 20.10 speaks
    /// 1.41).
    pub async fn new(transport: Transport) -> Result<DockerEngine> {
        Self::negotiated(transport, Duration::from_secs(FIRST_ANSWER_SECS)).await
    }

    /// The API version is negotiated as the Docker CLI does it: from the `Api-Version` header
    /// of `/_ping` (the lowest of it and bollard's), falling back to bollard's `/version` when
    /// the ping's answer has no such header or is an error (a socket proxy may allow only
    /// `/version`; when it is the address that is wrong, `/version` says so as well). The ping
    /// gets `first` to answer, then one more try on a new connection; everything stays within
    /// the client's timeout. An engine answers the ping at once; a connection that stays
    /// silent was lost on the way (seen once in thousands of TLS connections that the
    /// engine's side rejected: no alert, no close ever reached the client), and waiting out
    /// the whole timeout on it would only delay the real answer or error.
    async fn negotiated(transport: Transport, first: Duration) -> Result<DockerEngine> {
        let url = transport.url.clone();
        let started = std::time::Instant::now();
        let full = transport.timeout;
        let first = first.min(full / 2);
        let mut requests = 1;
        let answered = match transport.ping(first).await {
            Err(BError::RequestTimeoutError) => {
                requests += 1;
                transport.ping(full.saturating_sub(first)).await
            }
            other => other,
        };
        let docker = match answered.map_err(|e| map_err(&url, "connect", e))? {
            Some(server) => transport.docker(if server < *API_DEFAULT_VERSION {
                &server
            } else {
                API_DEFAULT_VERSION
            })?,
            None => {
                requests += 1;
                let left = full.saturating_sub(started.elapsed());
                // bollard's timeout ends at the answer's head; its body is read after it.
                let asked = transport
                    .clone()
                    .with_timeout(left)
                    .docker(API_DEFAULT_VERSION)?
                    .negotiate_version();
                tokio::time::timeout(left, asked)
                    .await
                    .unwrap_or(Err(BError::RequestTimeoutError))
                    .map_err(|e| map_err(&url, "connect", e))?
                    .with_timeout(full)
            }
        };
        Ok(DockerEngine {
            docker: versioned(docker),
            transport,
            url,
            requests: AtomicU64::new(requests),
        })
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn err(&self, what: &str, e: BError) -> EngineError {
        map_err(&self.url, what, e)
    }

    /// A request answered in one body (not a stream), bounded as a whole by the client's
    /// timeout: bollard's own ends when the headers arrive, and an engine (or a proxy before
    /// it) that stalls in the middle of a body would hold the run forever.
    async fn call<T>(
        &self,
        request: impl std::future::Future<Output = std::result::Result<T, BError>>,
    ) -> std::result::Result<T, BError> {
        tokio::time::timeout(self.docker.timeout(), request)
            .await
            .unwrap_or(Err(BError::RequestTimeoutError))
    }

    /// A client whose requests may take the grace a stop gives a container on top of the
    /// timeout: the engine answers a stop (or restart) once the container stopped, up to
    /// `STOP_TIMEOUT_SECS` later, whatever the timeout is set to.
    fn stopping(&self) -> Docker {
        let grace = Duration::from_secs(STOP_TIMEOUT_SECS.unsigned_abs().into());
        self.docker
            .clone()
            .with_timeout(self.docker.timeout() + grace)
    }
}

/// A listed container's health: the list's `Health` field where the engine sends it (API
/// 1.52 and later; for a running container only: a stopped one keeps its last status), else
/// the status text's "(healthy)", "(unhealthy)" or "(health: starting)", which Docker shows
/// for a running container with a health check.
fn health_of(
    state: State,
    field: Option<bollard::models::ContainerSummaryHealth>,
    status: Option<&str>,
) -> Option<Health> {
    use bollard::models::ContainerSummaryHealthStatusEnum as H;
    match field.and_then(|h| h.status) {
        Some(_) if state != State::Running => None,
        Some(H::HEALTHY) => Some(Health::Healthy),
        Some(H::UNHEALTHY) => Some(Health::Unhealthy),
        Some(H::STARTING) => Some(Health::Starting),
        Some(H::NONE | H::EMPTY) => None,
        None => status.and_then(Health::from_status),
    }
}

/// `message` with every secret value of `env` masked: as written, and as JSON writes it (an
/// error that echoes the create request has a token with `"` or `\` escaped).
fn without_secrets(message: &str, env: &BTreeMap<String, crate::desired::EnvValue>) -> String {
    let mut out = message.to_string();
    for v in env.values().filter(|v| v.is_secret()) {
        let json = serde_json::to_string(v.expose()).unwrap_or_default();
        let escaped = json
            .strip_prefix('"')
            .and_then(|j| j.strip_suffix('"'))
            .unwrap_or_default();
        // As written, as JSON writes it, and as an error shows it (control characters escaped).
        let shown = super::printable(v.expose());
        for form in [v.expose(), escaped, shown.as_str()] {
            if !form.is_empty() {
                out = out.replace(form, v.shown());
            }
        }
    }
    out
}

/// An error body as one line of text, whitespace runs made one space: a proxy's HTML page
/// (haproxy's and nginx's 403) without its tags. The engine's own messages are text, which
/// may have a `<` of its own (`<none>:<none>`): only a body that starts with a tag and
/// closes one is read as HTML.
fn plain_text(message: &str) -> String {
    let html = message.trim_start().starts_with('<') && message.contains("</");
    if !html {
        return message.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    let mut text = String::with_capacity(message.len());
    let mut in_tag = false;
    for c in message.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The API section (as docker-socket-proxy names its switches) a request described by `what`
/// (as given to `map_err`) belongs to. Told by how `what` starts, never by the names in it (a
/// container may be called `ak-outpost-info`); every request not named here is about a
/// container, the lock's own included.
fn section_of(what: &str) -> &'static str {
    [
        ("read engine info", "info"),
        ("read the engine's clock", "info"),
        ("watch engine events", "events"),
        ("list networks", "networks"),
        ("list images", "images"),
        ("inspect image ", "images"),
        ("pull ", "images"),
    ]
    .into_iter()
    .find(|(start, _)| what.starts_with(start))
    .map_or("containers", |(_, section)| section)
}

/// Turns bollard's errors into ones a person can act on.
pub fn map_err(url: &str, what: &str, e: BError) -> EngineError {
    match e {
        BError::DockerResponseServerError {
            status_code,
            message,
        } => {
            let kind = match status_code {
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                401 | 403 => ErrorKind::Forbidden,
                _ => ErrorKind::Api,
            };
            let text = plain_text(&message);
            let mut msg = if text.is_empty() {
                format!("{what}: the engine at {url} answered {status_code}, with no message")
            } else {
                format!("{what}: the engine at {url} answered {status_code}: {text}")
            };
            if status_code == 404 && what == "connect" {
                msg.push_str(" (is this the address of a Docker engine or socket proxy?)");
            }
            if kind == ErrorKind::Forbidden {
                if what == "connect" {
                    msg.push_str(" (a socket proxy must allow `/_ping` or `/version`, and the containers, images and info API sections)");
                } else {
                    msg.push_str(
                        " (a socket proxy must allow the containers, images and info API sections",
                    );
                    let section = section_of(what);
                    msg.push_str(&format!(
                        "; this request is in `{section}`, docker-socket-proxy's {}=1)",
                        section.to_uppercase()
                    ));
                }
            }
            if message.contains("port is already allocated")
                || message.contains("address already in use")
            {
                return EngineError::new(
                    ErrorKind::Conflict,
                    format!(
                        "{what}: a host port is already in use on {url}: {}",
                        message.trim()
                    ),
                );
            }
            EngineError::new(kind, msg)
        }
        BError::RequestTimeoutError => EngineError::new(
            ErrorKind::Timeout,
            format!(
                "{what}: the engine at {url} did not answer within {} s",
                request_timeout().as_secs()
            ),
        ),
        // Our transports (TLS, ssh) already say which engine and what went wrong.
        BError::IOError { err } if err.to_string().contains(url) => {
            EngineError::new(ErrorKind::Unreachable, err.to_string())
        }
        BError::IOError { err } => EngineError::new(
            ErrorKind::Unreachable,
            format!("{what}: cannot reach the engine at {url}: {err}"),
        ),
        BError::SocketNotFoundError(path) => EngineError::new(
            ErrorKind::Unreachable,
            format!(
                "{what}: cannot reach the engine at {url}: there is no socket at {path} (is the Docker engine running?)"
            ),
        ),
        other if io_cause(&other).is_some() => {
            let cause = io_cause(&other).unwrap_or_default();
            EngineError::new(
                ErrorKind::Unreachable,
                format!("{what}: cannot reach the engine at {url}: {cause}"),
            )
        }
        other => {
            let text = other.to_string();
            let lower = text.to_lowercase();
            let kind = if lower.contains("connect")
                || lower.contains("connection refused")
                || lower.contains("no such file")
            {
                ErrorKind::Unreachable
            } else {
                ErrorKind::Api
            };
            EngineError::new(kind, format!("{what}: engine at {url}: {text}"))
        }
    }
}

/// What went wrong at the bottom of an error chain that ends in an I/O error (hyper's "client
/// error (Connect)" says nothing), in words a person can act on.
fn io_cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    use std::io::ErrorKind as Io;
    let mut deepest = None;
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            deepest = Some(io);
        }
        source = e.source();
    }
    let io = deepest?;
    Some(match io.kind() {
        Io::ConnectionRefused => {
            "connection refused (is an engine or socket proxy listening there?)".into()
        }
        Io::NotFound => "no such socket (is the Docker engine running?)".into(),
        Io::PermissionDenied => {
            "permission denied (may this user use the socket? e.g. the `docker` group)".into()
        }
        Io::TimedOut => "the connection timed out".into(),
        _ => io.to_string(),
    })
}

fn state_of(s: &str) -> State {
    match s {
        "created" => State::Created,
        "running" => State::Running,
        "paused" => State::Paused,
        "restarting" => State::Restarting,
        "exited" => State::Exited,
        "removing" => State::Removing,
        "dead" => State::Dead,
        _ => State::Unknown,
    }
}

fn ports_of(map: Option<&HashMap<String, Option<Vec<BPortBinding>>>>) -> Vec<PortBinding> {
    let mut out = Vec::new();
    for (key, bindings) in map.into_iter().flatten() {
        let Some((port, proto)) = key.split_once('/') else {
            continue;
        };
        let Ok(container_port) = port.parse::<u16>() else {
            continue;
        };
        let proto = if proto == "udp" {
            Proto::Udp
        } else {
            Proto::Tcp
        };
        for b in bindings.iter().flatten() {
            let host_port = b
                .host_port
                .as_deref()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let ip = b.host_ip.clone().unwrap_or_default();
            // Docker stores "all interfaces" as "" or 0.0.0.0 depending on how it was asked.
            let host_ip = if ip == "0.0.0.0" { String::new() } else { ip };
            out.push(PortBinding {
                container_port,
                proto,
                host_ip,
                host_port,
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

#[async_trait]
impl super::Engine for DockerEngine {
    async fn info(&self) -> Result<EngineInfo> {
        self.count();
        let info = self
            .call(self.docker.info())
            .await
            .map_err(|e| self.err("read engine info", e))?;
        let v = self.docker.client_version();
        let swarm_worker = info.swarm.as_ref().is_some_and(|s| {
            s.local_node_state == Some(bollard::models::LocalNodeState::ACTIVE)
                && s.control_available != Some(true)
        });
        // What the engine says is shown on the operator's terminal: its control characters
        // escaped (an engine, or whatever answers in its place, could send escape sequences).
        Ok(EngineInfo {
            id: super::printable_line(info.id.unwrap_or_default()),
            server_version: super::printable_line(info.server_version.unwrap_or_default()),
            api_version: format!("{}.{}", v.major_version, v.minor_version),
            os: super::printable_line(info.operating_system.unwrap_or_default()),
            swarm_worker,
        })
    }

    async fn version(&self) -> Result<EngineInfo> {
        self.count();
        let version = self
            .call(self.docker.version())
            .await
            .map_err(|e| self.err("read engine version", e))?;
        let v = self.docker.client_version();
        Ok(EngineInfo {
            id: String::new(),
            server_version: super::printable_line(version.version.unwrap_or_default()),
            api_version: format!("{}.{}", v.major_version, v.minor_version),
            os: super::printable_line(version.os.unwrap_or_default()),
            swarm_worker: false,
        })
    }

    async fn list(&self) -> Result<Vec<Observed>> {
        self.count();
        let opts = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let list = self
            .call(self.docker.list_containers(Some(opts)))
            .await
            .map_err(|e| self.err("list containers", e))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let name = own_name(&c.names.unwrap_or_default());
                let mut endpoints: Vec<(String, String)> = c
                    .network_settings
                    .and_then(|n| n.networks)
                    .map(|n| {
                        n.into_iter()
                            .map(|(name, e)| (name, e.network_id.unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                endpoints.sort();
                let (networks, network_ids): (Vec<String>, Vec<String>) =
                    endpoints.into_iter().unzip();
                let state = c
                    .state
                    .map(|s| state_of(s.as_ref()))
                    .unwrap_or(State::Unknown);
                let labels = c.labels.unwrap_or_default().into_iter().collect();
                Observed {
                    id: c.id.unwrap_or_default(),
                    name,
                    image: image_name(c.image.unwrap_or_default(), &labels),
                    health: health_of(state, c.health, c.status.as_deref()),
                    state,
                    labels,
                    networks,
                    network_mode: c.host_config.and_then(|h| h.network_mode),
                    network_ids,
                    created: c.created.unwrap_or_default(),
                    host_ports: {
                        let mut p: Vec<HostPort> = c
                            .ports
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|p| {
                                Some(HostPort {
                                    port: p.public_port?,
                                    ip: p.ip.unwrap_or_default(),
                                    proto: p
                                        .typ
                                        .map(|t| t.to_string())
                                        .filter(|t| !t.is_empty())
                                        .unwrap_or_else(|| "tcp".into()),
                                })
                            })
                            .collect();
                        p.sort_unstable();
                        p.dedup();
                        p
                    },
                }
            })
            .collect())
    }

    async fn inspect(&self, id: &str) -> Result<Inspected> {
        self.count();
        let c = self
            .call(self.docker.inspect_container(id, None))
            .await
            .map_err(|e| self.err("inspect container", e))?;
        let config = c.config.unwrap_or_default();
        let host = c.host_config.unwrap_or_default();
        let env = config
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| {
                e.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let network = host
            .network_mode
            .filter(|m| !matches!(m.as_str(), "default" | "bridge" | ""));
        let healthcheck = config.healthcheck.map(|h| HealthCheck {
            test: h.test.unwrap_or_default(),
            interval_ns: h.interval.unwrap_or_default(),
            retries: h.retries.unwrap_or_default(),
            start_period_ns: h.start_period.unwrap_or_default(),
        });
        let state = c.state.unwrap_or_default();
        let labels = config.labels.unwrap_or_default().into_iter().collect();
        Ok(Inspected {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            running: state
                .status
                .is_some_and(|s| s == bollard::models::ContainerStateStatusEnum::RUNNING),
            image: image_name(config.image.unwrap_or_default(), &labels),
            env,
            labels,
            ports: ports_of(host.port_bindings.as_ref()),
            network,
            restart_policy: host
                .restart_policy
                .and_then(|r| r.name)
                .map(|n| n.to_string())
                .unwrap_or_default(),
            healthcheck,
            // `0001-01-01T00:00:00Z` for a container never started: before 1970, None.
            started_at: state
                .started_at
                .and_then(|t| humantime::parse_rfc3339_weak(&t).ok()),
        })
    }

    async fn networks(&self) -> Result<Vec<(String, String)>> {
        self.count();
        let list = self
            .call(self.docker.list_networks(None))
            .await
            .map_err(|e| self.err("list networks", e))?;
        Ok(list
            .into_iter()
            .map(|n| (n.id.unwrap_or_default(), n.name.unwrap_or_default()))
            .collect())
    }

    async fn image_labels(&self, image: &str) -> Result<Option<BTreeMap<String, String>>> {
        self.count();
        match self.call(self.docker.inspect_image(image)).await {
            Ok(i) => Ok(Some(
                i.config
                    .and_then(|c| c.labels)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            )),
            Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.err(&format!("inspect image {image}"), e)),
        }
    }

    async fn pull(
        &self,
        image: &str,
        progress: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<()> {
        self.count();
        let (repo, tag) = split_image(image);
        let opts = CreateImageOptions {
            from_image: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(opts), None, None);
        // The request timeout bounds the wait for the engine's first answer only (bollard's
        // own); a registry that stops sending half-way would hold the pull, and the run or
        // the watch's reconcile with it, for good. Docker reports progress while it downloads
        // or extracts, so a pull that says nothing for as long is given up (the engine then
        // cancels it): a custom image falls back as when its pull fails.
        let silence = self.docker.timeout();
        loop {
            let Ok(next) = tokio::time::timeout(silence, stream.next()).await else {
                return Err(EngineError::new(
                    ErrorKind::Timeout,
                    format!(
                        "pull {image}: no progress for {} s (the registry stopped answering?); \
                         given up (`OUTPOSTCTL_ENGINE_TIMEOUT` sets how long a pull may stall)",
                        silence.as_secs()
                    ),
                ));
            };
            let Some(item) = next else { break };
            match item {
                Ok(info) => {
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Err(EngineError::new(
                            ErrorKind::Api,
                            format!("pull {image}: {e}"),
                        ));
                    }
                    if let Some(status) = info.status {
                        progress(&super::printable_line(status));
                    }
                }
                Err(e) => return Err(self.err(&format!("pull {image}"), e)),
            }
        }
        Ok(())
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>> {
        self.count();
        match self.call(self.docker.inspect_image(image)).await {
            // Without a sha256 id (none on Docker): as if absent, never made from by id.
            Ok(i) => Ok(i.id.filter(|id| id.starts_with("sha256:"))),
            Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.err(&format!("inspect image {image}"), e)),
        }
    }

    async fn create(
        &self,
        spec: &ContainerSpec,
        image: &str,
        by_id: Option<&str>,
        extra_labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        self.count();
        let mut bindings: HashMap<String, Option<Vec<BPortBinding>>> = HashMap::new();
        for p in &spec.ports {
            bindings
                .entry(format!("{}/{}", p.container_port, p.proto.as_str()))
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(BPortBinding {
                    host_ip: (!p.host_ip.is_empty()).then(|| p.host_ip.clone()),
                    host_port: Some(p.host_port.to_string()),
                });
        }
        let exposed: Vec<String> = bindings.keys().cloned().collect();
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.extend(extra_labels.clone());
        // By id: the engine then lists the container without looking its image name up.
        let from = match by_id {
            Some(id) => {
                labels.insert(LABEL_IMAGE.to_string(), image.to_string());
                id.to_string()
            }
            None => image.to_string(),
        };
        let body = ContainerCreateBody {
            image: Some(from),
            env: Some(
                spec.env
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.expose()))
                    .collect(),
            ),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck: Some(health_config(spec.healthcheck_for(image))),
            host_config: Some(HostConfig {
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                network_mode: spec.network.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let r = self
            .call(self.docker.create_container(Some(opts), body))
            .await
            .map_err(|e| {
                let mut err = self.err(&format!("create container {}", spec.name), e);
                // An engine, proxy or plugin that echoes the request would show the token.
                err.message = without_secrets(&err.message, &spec.env);
                if err.message.contains("network") && err.message.contains("not found") {
                    err.message.push_str(&format!(
                        " (create the network first: `docker network create {}`)",
                        crate::commands::shell_word(spec.network.as_deref().unwrap_or_default())
                    ));
                }
                err
            })?;
        Ok(r.id)
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.count();
        let started = self
            .call(
                self.docker
                    .start_container(id, None::<StartContainerOptions>),
            )
            .await;
        // 304: already running.
        if let Err(BError::DockerResponseServerError {
            status_code: 304, ..
        }) = started
        {
            return Ok(());
        }
        started.map_err(|e| {
                let mut err = self.err("start container", e);
                // Docker 20.10 accepts a missing network at create and fails at start.
                if let Some(net) = missing_network(&err.message) {
                    err.message.push_str(&format!(
                        " (create the network first: `docker network create {}`, or fix `docker_network`)",
                        crate::commands::shell_word(net)
                    ));
                }
                err
            })
    }

    async fn unpause(&self, id: &str) -> Result<()> {
        self.count();
        self.call(self.docker.unpause_container(id))
            .await
            .map_err(|e| self.err("unpause container", e))
    }

    async fn stop(&self, id: &str) -> Result<()> {
        self.count();
        let opts = StopContainerOptions {
            t: Some(STOP_TIMEOUT_SECS),
            ..Default::default()
        };
        let docker = self.stopping();
        let stopped = tokio::time::timeout(docker.timeout(), docker.stop_container(id, Some(opts)));
        match stopped.await.unwrap_or(Err(BError::RequestTimeoutError)) {
            // 304: already stopped.
            Err(BError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            r => r.map_err(|e| self.err("stop container", e)),
        }
    }

    async fn restart(&self, id: &str) -> Result<()> {
        self.count();
        let opts = RestartContainerOptions {
            t: Some(STOP_TIMEOUT_SECS),
            ..Default::default()
        };
        let docker = self.stopping();
        let restarted = docker.restart_container(id, Some(opts));
        tokio::time::timeout(docker.timeout(), restarted)
            .await
            .unwrap_or(Err(BError::RequestTimeoutError))
            .map_err(|e| self.err("restart container", e))
    }

    async fn rename(&self, id: &str, name: &str) -> Result<()> {
        self.count();
        let opts = RenameContainerOptions {
            name: name.to_string(),
        };
        self.call(self.docker.rename_container(id, opts))
            .await
            .map_err(|e| self.err(&format!("rename container to {name}"), e))
    }

    async fn remove(&self, id: &str) -> Result<bool> {
        self.count();
        let opts = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self
            .call(self.docker.remove_container(id, Some(opts)))
            .await
        {
            Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            r => r
                .map(|()| true)
                .map_err(|e| self.err("remove container", e)),
        }
    }

    fn events(
        &self,
        project: &str,
        since: Option<i64>,
    ) -> futures_util::stream::BoxStream<'static, Result<EngineEvent>> {
        self.count();
        let filters = HashMap::from([
            (
                "type".to_string(),
                ["container", "network", "image"].map(String::from).to_vec(),
            ),
            (
                "event".to_string(),
                MANAGED_EVENTS
                    .iter()
                    .chain(UNBLOCKING_EVENTS.iter())
                    .chain(DETACHING_EVENTS.iter())
                    .map(|e| e.to_string())
                    .collect(),
            ),
        ]);
        let opts = EventsOptions {
            filters: Some(filters),
            since: since.map(|t| format!("{}.{:09}", t.div_euclid(NANOS), t.rem_euclid(NANOS))),
            ..Default::default()
        };
        let url = self.url.clone();
        let project = project.to_string();
        self.docker
            .events(Some(opts))
            .filter_map(move |r| {
                let ev = match r {
                    Ok(m) => event_of(&project, m).map(Ok),
                    Err(e) => Some(Err(map_err(&url, "watch engine events", e))),
                };
                std::future::ready(ev)
            })
            .boxed()
    }

    /// The engine's time, for the lock's lease: never this machine's (two runs on machines
    /// whose clocks disagree would judge a lease each their own way).
    async fn now(&self) -> Result<i64> {
        match self.clock().await? {
            Some(nanos) => Ok(nanos.div_euclid(NANOS)),
            None => Err(EngineError::new(
                ErrorKind::Api,
                format!(
                    "read the engine's clock: the engine at {} does not say its time (`SystemTime` in `docker info`), which the engine lock's lease is judged by",
                    self.url
                ),
            )),
        }
    }

    /// From `docker info`; where a socket proxy refuses `info`, from the `Date` of the
    /// engine's answer to a ping (whole seconds, rounded down: a lease then looks a moment
    /// longer, never shorter; events are replayed from a moment earlier).
    async fn clock(&self) -> Result<Option<i64>> {
        self.count();
        let info = match self.call(self.docker.info()).await {
            Ok(info) => return Ok(info.system_time.as_deref().and_then(engine_time)),
            Err(e) => self.err("read the engine's clock", e),
        };
        if info.kind != ErrorKind::Forbidden {
            return Err(info);
        }
        self.count();
        match self.transport.date().await {
            Ok(Some(nanos)) => Ok(Some(nanos)),
            // Said as the refusal of `info`, the way to the engine's own clock.
            Ok(None) | Err(_) => Err(info),
        }
    }

    async fn any_image(&self) -> Result<Option<String>> {
        self.count();
        let images = self
            .call(
                self.docker
                    .list_images(None::<bollard::query_parameters::ListImagesOptions>),
            )
            .await
            .map_err(|e| self.err("list images", e))?;
        // The smallest, to keep the marker cheap; an id works when an image has no tag.
        Ok(images.into_iter().min_by_key(|i| i.size).map(|i| {
            i.repo_tags
                .into_iter()
                .find(|t| t != "<none>:<none>")
                .unwrap_or(i.id)
        }))
    }

    async fn create_marker(
        &self,
        name: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
        expires: i64,
    ) -> Result<Option<String>> {
        self.count();
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            host_config: Some(HostConfig {
                // Never started; the restart policy's retry count carries the lease's expiry,
                // the one setting the containers API can change later (update).
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ON_FAILURE),
                    maximum_retry_count: Some(expires),
                }),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        match self
            .call(self.docker.create_container(Some(opts), body))
            .await
        {
            Ok(r) => Ok(Some(r.id)),
            Err(BError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(None),
            Err(e) => Err(self.err(&format!("create {name}"), e)),
        }
    }

    async fn read_marker(
        &self,
        name: &str,
    ) -> Result<Option<(String, BTreeMap<String, String>, i64)>> {
        self.count();
        match self.call(self.docker.inspect_container(name, None)).await {
            Ok(c) => {
                let expires = c
                    .host_config
                    .and_then(|h| h.restart_policy)
                    .and_then(|r| r.maximum_retry_count)
                    .unwrap_or(0);
                let labels = c
                    .config
                    .and_then(|c| c.labels)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                Ok(Some((c.id.unwrap_or_default(), labels, expires)))
            }
            Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.err(&format!("read {name}"), e)),
        }
    }

    async fn renew_marker(&self, id: &str, expires: i64) -> Result<()> {
        self.count();
        let body = bollard::models::ContainerUpdateBody {
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: Some(expires),
            }),
            ..Default::default()
        };
        self.call(self.docker.update_container(id, body))
            .await
            .map_err(|e| self.err("renew the lock", e))
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// The network named in Docker's "network NAME not found".
fn missing_network(message: &str) -> Option<&str> {
    let rest = message[message.find("network ")? + "network ".len()..].trim_start();
    let name = rest.split_whitespace().next()?;
    rest[name.len()..]
        .trim_start()
        .starts_with("not found")
        .then_some(name)
}

/// What to pull for an image reference, as the engine's `fromImage` and `tag`:
/// `host:5000/a/b:tag` -> (`host:5000/a/b`, `tag`); no tag means `latest`; a digest wins
/// over a tag, as with `docker pull`: `a/b:tag@sha256:…` -> (`a/b`, `sha256:…`).
pub fn split_image(image: &str) -> (&str, &str) {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], &name[slash + i + 1..]),
        None => (name, "latest"),
    };
    (repo, digest.unwrap_or(tag))
}

/// A health check as the engine takes it.
pub fn health_config(h: &crate::desired::HealthCheck) -> HealthConfig {
    HealthConfig {
        test: Some(h.test.clone()),
        interval: Some(h.interval_ns),
        retries: Some(h.retries),
        start_period: Some(h.start_period_ns),
        ..Default::default()
    }
}

const NANOS: i64 = 1_000_000_000;

/// Events of this project's containers that can mean something to do.
const MANAGED_EVENTS: [&str; 9] = [
    // Renamed by hand: the plan renames it back (and a name it held may be free now).
    "rename",
    "die",
    "destroy",
    "stop",
    "kill",
    "oom",
    "pause",
    "health_status",
    // `docker update`: the restart policy, which the list does not show.
    "update",
];

/// Besides those, events of the engine's other objects that can unblock an outpost: a
/// container that held its host port or its name dies, is removed or renamed (above); its
/// network is created; its image arrives (`create`: a build on Docker 27 and later); the
/// container whose network namespace it shares is made or started (`create`, `start`).
const UNBLOCKING_EVENTS: [&str; 6] = ["create", "start", "pull", "load", "tag", "import"];

/// A network's event that can mean drift: a container taken off it (`docker network
/// disconnect` by hand, or a container's own stop or removal).
const DETACHING_EVENTS: [&str; 1] = ["disconnect"];

/// A listed container's own name, without the leading `/`. Docker also lists the names it
/// goes by in the containers linked to it (`--link`: `/linker/alias`), in any order: the
/// own name is the one with no `/` after the first (as the Docker CLI shows it).
fn own_name(names: &[String]) -> String {
    let trimmed = |n: &String| n.strip_prefix('/').unwrap_or(n).to_string();
    names
        .iter()
        .find(|n| !n.strip_prefix('/').unwrap_or(n).contains('/'))
        .or_else(|| names.first())
        .map(trimmed)
        .unwrap_or_default()
}

/// The event the watch cares about in `m`, if it does: any of `MANAGED_EVENTS` of a container
/// of `project`; another container dying, removed or renamed; a network created; an image
/// pulled, loaded, tagged, imported or built. An image's `name` is the reference it arrived
/// as (a pull's or a tag's), or its id (a load, an import or a build).
fn event_of(project: &str, m: bollard::models::EventMessage) -> Option<EngineEvent> {
    use bollard::models::EventMessageTypeEnum as T;
    let action = m.action.unwrap_or_default();
    // `health_status: healthy` and the like.
    let base = action.split(':').next().unwrap_or_default().trim();
    let actor = m.actor.unwrap_or_default();
    let mut attrs = actor.attributes.unwrap_or_default();
    let subject = match m.typ {
        Some(T::CONTAINER)
            if attrs.get(crate::desired::LABEL_PROJECT).map(String::as_str) == Some(project) =>
        {
            MANAGED_EVENTS
                .contains(&base)
                .then_some(EventSubject::Managed)
        }
        // `create` and `start`: a container of a name an outpost shares the network
        // namespace of (`docker_network: container:<name>`), made anew or started.
        Some(T::CONTAINER) => matches!(base, "die" | "destroy" | "rename" | "create" | "start")
            .then_some(EventSubject::Container),
        Some(T::NETWORK) if base == "create" => Some(EventSubject::Network),
        Some(T::NETWORK) if DETACHING_EVENTS.contains(&base) => Some(EventSubject::Detached),
        Some(T::IMAGE) => matches!(base, "pull" | "load" | "tag" | "import" | "create")
            .then_some(EventSubject::Image),
        _ => None,
    }?;
    let id = match subject {
        // The container taken off the network (the actor is the network).
        EventSubject::Detached => attrs.remove("container").unwrap_or_default(),
        _ => actor.id.unwrap_or_default(),
    };
    let name = match (subject, base) {
        // A pull's id is the reference pulled; its `name` lacks the tag.
        (EventSubject::Image, "pull") => id.clone(),
        _ => attrs.remove("name").unwrap_or_default(),
    };
    Some(EngineEvent {
        subject,
        id,
        name,
        old_name: attrs
            .remove("oldName")
            .map(|n| n.trim_start_matches('/').to_string()),
        action,
        time_nano: m
            .time_nano
            .or_else(|| m.time.and_then(|t| t.checked_mul(NANOS))),
    })
}

/// The engine's `SystemTime` (RFC 3339 in the daemon's time zone, e.g.
/// `2026-11-23T10:13:02.123456789+01:00`) as nanoseconds since the epoch.
fn engine_time(t: &str) -> Option<i64> {
    let (local, offset) = match t.strip_suffix('Z') {
        Some(utc) => (utc, 0),
        None => {
            let cut = t.len().checked_sub(6)?;
            let (local, zone) = (t.get(..cut)?, t.get(cut..)?);
            let sign = match zone.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            let digits = |r: std::ops::Range<usize>| {
                zone.get(r)
                    .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?
                    .parse::<i64>()
                    .ok()
            };
            if zone.get(3..4) != Some(":") {
                return None;
            }
            let minutes = digits(1..3)? * 60 + digits(4..6)?;
            (local, sign * minutes * 60)
        }
    };
    let at = humantime::parse_rfc3339_weak(local).ok()?;
    let since_epoch = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    let nanos = i64::try_from(since_epoch.as_nanos()).ok()?;
    nanos.checked_sub(offset.checked_mul(NANOS)?)
}

#[cfg(test)]
mod tests {
    use super::{
        BError, ErrorKind, EventSubject, engine_time, event_of, map_err, missing_network,
        plain_text, section_of, split_image,
    };

    /// What the watch hears of the engine's events: every event of its project's containers
    /// it reconciles on; of the others only what can unblock an outpost.
    #[test]
    fn requests_name_the_negotiated_api_version() {
        let uri = |s: &str| s.parse::<http::Uri>().expect("a URI");
        assert_eq!(
            super::with_version(&uri("unix://2f7661/containers/json?all=true"), "/v1.41"),
            Some(uri("unix://2f7661/v1.41/containers/json?all=true"))
        );
        assert_eq!(
            super::with_version(&uri("http://127.0.0.1:2375/version"), "/v1.41"),
            Some(uri("http://127.0.0.1:2375/v1.41/version"))
        );
        // A path that names one already (a bollard that mends its join) is left alone.
        assert_eq!(
            super::with_version(&uri("http://h/v1.44/containers/json"), "/v1.41"),
            None
        );
    }

    #[test]
    fn events_are_sorted_into_the_projects_and_those_that_can_unblock() {
        use bollard::models::{EventActor, EventMessage, EventMessageTypeEnum as T};
        let msg = |typ, action: &str, attrs: &[(&str, &str)]| EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            time: Some(2),
            ..Default::default()
        };
        let ours = [("name", "ak-a"), (crate::desired::LABEL_PROJECT, "p")];
        let theirs = [("name", "portainer"), (crate::desired::LABEL_PROJECT, "q")];
        let subject = |m| event_of("p", m).map(|e| e.subject);
        let cases = [
            (msg(T::CONTAINER, "die", &ours), Some(EventSubject::Managed)),
            (
                msg(T::CONTAINER, "update", &ours),
                Some(EventSubject::Managed),
            ),
            (
                msg(T::CONTAINER, "health_status: unhealthy", &ours),
                Some(EventSubject::Managed),
            ),
            // A rename by hand is drift; our own apply's creates need no reconcile.
            (
                msg(T::CONTAINER, "rename", &ours),
                Some(EventSubject::Managed),
            ),
            (msg(T::CONTAINER, "create", &ours), None),
            (msg(T::CONTAINER, "start", &ours), None),
            (
                msg(T::CONTAINER, "die", &theirs),
                Some(EventSubject::Container),
            ),
            (
                msg(T::CONTAINER, "destroy", &[]),
                Some(EventSubject::Container),
            ),
            (
                msg(T::CONTAINER, "rename", &theirs),
                Some(EventSubject::Container),
            ),
            // Made or started: it may be the container an outpost shares the network
            // namespace of (`docker_network: container:<name>`).
            (
                msg(T::CONTAINER, "create", &theirs),
                Some(EventSubject::Container),
            ),
            (
                msg(T::CONTAINER, "start", &theirs),
                Some(EventSubject::Container),
            ),
            (msg(T::CONTAINER, "health_status: healthy", &theirs), None),
            (msg(T::CONTAINER, "update", &theirs), None),
            (
                msg(T::NETWORK, "create", &[("name", "traefik")]),
                Some(EventSubject::Network),
            ),
            (msg(T::NETWORK, "destroy", &[("name", "traefik")]), None),
            (
                msg(
                    T::NETWORK,
                    "disconnect",
                    &[("name", "bridge"), ("container", "c1")],
                ),
                Some(EventSubject::Detached),
            ),
            (
                msg(
                    T::NETWORK,
                    "connect",
                    &[("name", "bridge"), ("container", "c1")],
                ),
                None,
            ),
            (
                msg(T::IMAGE, "pull", &[("name", "x:1")]),
                Some(EventSubject::Image),
            ),
            (
                msg(T::IMAGE, "tag", &[("name", "x:1")]),
                Some(EventSubject::Image),
            ),
            (msg(T::IMAGE, "create", &[]), Some(EventSubject::Image)),
            (msg(T::IMAGE, "delete", &[("name", "x:1")]), None),
            (msg(T::VOLUME, "create", &[]), None),
        ];
        for (m, want) in cases {
            let shown = format!("{m:?}");
            assert_eq!(subject(m), want, "{shown}");
        }
        // A disconnect names the container taken off the network, not the network.
        let detached = event_of(
            "p",
            msg(
                T::NETWORK,
                "disconnect",
                &[("name", "bridge"), ("container", "c1")],
            ),
        );
        assert_eq!(
            detached.map(|e| (e.id, e.name)),
            Some(("c1".to_string(), "bridge".to_string()))
        );
        let renamed = event_of(
            "p",
            msg(
                T::CONTAINER,
                "rename",
                &[("name", "new"), ("oldName", "/old")],
            ),
        );
        let renamed = renamed.map(|e| (e.name, e.old_name, e.time_nano));
        assert_eq!(
            renamed,
            Some(("new".into(), Some("old".into()), Some(2_000_000_000)))
        );
        // A pull names the reference pulled (its id), not the tagless `name` attribute.
        let mut pulled = msg(T::IMAGE, "pull", &[("name", "example/radius")]);
        if let Some(actor) = pulled.actor.as_mut() {
            actor.id = Some("example/radius:1".into());
        }
        assert_eq!(
            event_of("p", pulled).map(|e| e.name).as_deref(),
            Some("example/radius:1")
        );
    }

    #[test]
    fn the_engines_clock_is_read_in_its_own_time_zone() {
        // 2026-11-23T09:13:02Z, in nanoseconds
        let utc = 1_795_425_182 * 1_000_000_000;
        assert_eq!(
            engine_time("2026-11-23T09:13:02.123456789Z"),
            Some(utc + 123_456_789)
        );
        assert_eq!(
            engine_time("2026-11-23T10:13:02.5+01:00"),
            Some(utc + 500_000_000)
        );
        assert_eq!(engine_time("2026-11-23T04:43:02-04:30"), Some(utc));
        for bad in [
            "",
            "Z",
            "+01:00",
            "yesterday",
            "2026-11-23T10:13:02é+01:00",
            "2026-11-23T10:13:02+1:000",
        ] {
            assert_eq!(engine_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_proxy_that_forbids_says_what_to_allow() {
        let forbidden = || BError::DockerResponseServerError {
            status_code: 403,
            message: "Forbidden".into(),
        };
        let at_connect = map_err("http://p:2375", "connect", forbidden());
        assert_eq!(at_connect.kind, ErrorKind::Forbidden);
        assert!(
            at_connect.message.contains("must allow `/_ping` or `/version`, and the containers, images and info API sections"),
            "{at_connect:?}"
        );
        // Past the connect, the ping went through: the sections are named, and the one the
        // request is in.
        let later = map_err("http://p:2375", "create container", forbidden());
        assert!(
            later.message.ends_with(
                "(a socket proxy must allow the containers, images and info API sections; this request is in `containers`, docker-socket-proxy's CONTAINERS=1)"
            ),
            "{later:?}"
        );
        // haproxy's 403 page, as a line of text.
        let page = BError::DockerResponseServerError {
            status_code: 403,
            message: "<html><body><h1>403 Forbidden</h1>\nRequest forbidden by administrative rules.\n</body></html>\n".into(),
        };
        let clock = map_err("http://p:2385", "read the engine's clock", page);
        assert_eq!(
            clock.message,
            "read the engine's clock: the engine at http://p:2385 answered 403: 403 Forbidden Request forbidden by administrative rules. (a socket proxy must allow the containers, images and info API sections; this request is in `info`, docker-socket-proxy's INFO=1)"
        );
        assert_eq!(
            section_of("pull ghcr.io/goauthentik/ldap:2026.8.0"),
            "images"
        );
        assert_eq!(section_of("list networks"), "networks");
        assert_eq!(section_of("renew the lock"), "containers");
        assert_eq!(section_of("watch engine events"), "events");
        // Names in the description do not count.
        assert_eq!(
            section_of("create container ak-outpost-info-image"),
            "containers"
        );
        assert_eq!(
            section_of("rename container to ak-outpost-events"),
            "containers"
        );
    }

    /// An engine's own error messages are plain text and keep every word (`<none>:<none>`
    /// included); an HTML page loses its tags.
    #[test]
    fn error_bodies_are_made_one_line_of_text() {
        assert_eq!(
            plain_text("Conflict. The container name \"/x\" is already in use"),
            "Conflict. The container name \"/x\" is already in use"
        );
        assert_eq!(plain_text("  a\n\n  b \t c\n"), "a b c");
        assert_eq!(plain_text("<p>Forbidden</p>"), "Forbidden");
        assert_eq!(
            plain_text("No such image: <none>:<none>"),
            "No such image: <none>:<none>"
        );
        assert_eq!(plain_text(""), "");
    }

    #[test]
    fn missing_network_is_read_from_any_message() {
        assert_eq!(
            missing_network("Error response: network traefik not found"),
            Some("traefik")
        );
        // Whatever an engine echoes (here an entrypoint), never a panic.
        assert_eq!(missing_network("exec: network  é x"), None);
        assert_eq!(missing_network("network  é not found"), Some("é"));
        assert_eq!(missing_network("network"), None);
    }

    #[test]
    fn image_references_split_at_the_tag() {
        assert_eq!(
            split_image("ghcr.io/goauthentik/proxy:2026.8.0"),
            ("ghcr.io/goauthentik/proxy", "2026.8.0")
        );
        assert_eq!(
            split_image("127.0.0.1:5000/a/b"),
            ("127.0.0.1:5000/a/b", "latest")
        );
        assert_eq!(split_image("busybox"), ("busybox", "latest"));
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            split_image(&format!("127.0.0.1:5000/a/b@{digest}")),
            ("127.0.0.1:5000/a/b", digest)
        );
        assert_eq!(
            split_image(&format!("ghcr.io/goauthentik/proxy:2026.8.0@{digest}")),
            ("ghcr.io/goauthentik/proxy", digest)
        );
    }
}

/// The first request's retry, against the real engine behind a listener that keeps chosen
/// connections silent (accepted, never answered): what a lost connection looks like.
#[cfg(test)]
mod first_answer {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::time::{Duration, Instant};

    use tokio::net::{TcpListener, TcpStream, UnixStream};

    use super::{DockerEngine, REQUEST_TIMEOUT_SECS};
    use crate::engine::connect::DEFAULT_SOCKET;
    use crate::engine::transport::Transport;
    use crate::engine::{Engine, ErrorKind, Health};

    /// `http://127.0.0.1:PORT` forwarding to the engine's socket, except the first `silent`
    /// connections; and how many connections it accepted.
    async fn listener(silent: u64) -> (String, Arc<AtomicU64>) {
        listener_at("127.0.0.1:0", silent).await
    }

    /// `listener` on `address`.
    async fn listener_at(address: &str, silent: u64) -> (String, Arc<AtomicU64>) {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
            .unwrap_or_else(|| DEFAULT_SOCKET.into());
        let listener = TcpListener::bind(address).await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                if count.fetch_add(1, SeqCst) < silent {
                    held.push(tcp);
                    continue;
                }
                let socket = socket.clone();
                tokio::spawn(async move {
                    if let Ok(mut unix) = UnixStream::connect(&socket).await {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                });
            }
        });
        (url, accepted)
    }

    fn client(url: &str, timeout_secs: u64) -> Transport {
        let (host, port) = url
            .trim_start_matches("http://")
            .rsplit_once(':')
            .expect("host:port");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Transport::http(host, port.parse().expect("port"))
            .with_timeout(Duration::from_secs(timeout_secs))
    }

    #[tokio::test]
    async fn a_silent_first_connection_is_tried_again_on_a_new_one() {
        let (url, accepted) = listener(1).await;
        let started = Instant::now();
        let engine =
            DockerEngine::negotiated(client(&url, REQUEST_TIMEOUT_SECS), Duration::from_secs(1))
                .await
                .expect("the second connection reaches the engine");
        assert_eq!(accepted.load(SeqCst), 2, "one silent connection, one more");
        assert!(
            started.elapsed() < Duration::from_secs(REQUEST_TIMEOUT_SECS / 2),
            "the silent connection was waited on for {:?}",
            started.elapsed()
        );
        let info = engine.info().await.expect("the engine answers on");
        assert!(!info.server_version.is_empty(), "{info:?}");
        assert_eq!(engine.requests(), 3, "the ping twice, then info");
    }

    /// `http://127.0.0.1:PORT` answering `/_ping` with `ping_status` and without an
    /// `Api-Version` header (as a proxy that drops headers, or allows only `/version`, would)
    /// and `/version` as Docker 20.10 does; and the paths asked.
    async fn headerless_engine(
        ping_status: &'static str,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                log.lock().expect("log").push(path.clone());
                let (status, body) = if path.ends_with("/version") {
                    (
                        "200 OK",
                        r#"{"Version":"20.10.24","ApiVersion":"1.41","MinAPIVersion":"1.12"}"#,
                    )
                } else {
                    (ping_status, "OK")
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            }
        });
        (url, asked)
    }

    #[tokio::test]
    async fn the_api_version_comes_from_the_ping_or_else_from_version() {
        // The real engine says its version in the ping's header: one request.
        let (url, _) = listener(0).await;
        let engine = answering(&url).await;
        assert_eq!(engine.requests(), 1, "the ping alone negotiates");
        let info = engine.info().await.expect("info");
        assert!(info.api_version.starts_with("1."), "{info:?}");
        // Without the header, or refused by a proxy that allows only /version: bollard's
        // /version says it.
        for ping_status in ["200 OK", "403 Forbidden"] {
            let (url, asked) = headerless_engine(ping_status).await;
            let engine = DockerEngine::negotiated(client(&url, 10), Duration::from_secs(5))
                .await
                .expect("negotiated through /version");
            assert_eq!(
                engine.requests(),
                2,
                "{ping_status}: the ping, then /version"
            );
            assert_eq!(
                asked.lock().expect("log").clone(),
                ["/_ping", "/version"],
                "{ping_status}: what was asked"
            );
            let v = engine.docker.client_version();
            assert_eq!((v.major_version, v.minor_version), (1, 41));
        }
    }

    /// `http://[::1]:PORT`: an IPv6 address is put in brackets in the URL.
    #[tokio::test]
    async fn an_engine_at_an_ipv6_address_is_reached() {
        // The address in brackets, as a URL has it (also where no IPv6 loopback exists).
        let url = Transport::http("::1", 2375).url;
        assert_eq!(url, "http://[::1]:2375");
        assert_eq!(Transport::http("[::1]", 2375).url, url);
        // The machines the tests run on have an IPv6 loopback: a missing one is a failure,
        // not a silent skip.
        assert!(
            std::net::TcpListener::bind("[::1]:0").is_ok(),
            "no IPv6 loopback here (`ip -6 addr show lo`): this test needs ::1"
        );
        let (url, accepted) = listener_at("[::1]:0", 0).await;
        let transport = client(&url, 10);
        assert_eq!(transport.url, url, "the URL shown");
        let engine = DockerEngine::negotiated(transport, Duration::from_secs(5))
            .await
            .expect("the engine answers over IPv6");
        engine.list().await.expect("the list over IPv6");
        assert_eq!(
            accepted.load(SeqCst),
            2,
            "the ping and the list came through"
        );
    }

    /// `http://127.0.0.1:PORT` answering `/_ping` as Docker 20.10 does and every other
    /// request with `answer(request head and body)`, then keeping the connection open.
    async fn scripted_engine(answer: fn(&str) -> String) -> String {
        scripted(answer, false).await
    }

    /// `scripted_engine`; with `ping_too`, `answer` answers `/_ping` as well.
    async fn scripted(answer: fn(&str) -> String, ping_too: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                // The whole request: the head, then as many bytes as its Content-Length says.
                let mut got = Vec::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        if n == 0 {
                            break;
                        }
                        continue;
                    };
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if n == 0 || body.len() >= length {
                        break;
                    }
                }
                let request = String::from_utf8_lossy(&got).into_owned();
                let reply = if request.contains("/_ping") && !ping_too {
                    "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK".to_string()
                } else {
                    answer(&request)
                };
                let _ = tcp.write_all(reply.as_bytes()).await;
                held.push(tcp);
            }
        });
        url
    }

    /// An engine (or a socket proxy, or an authorization plugin) that echoes the create
    /// request in its error: the outpost's token is not repeated in the error shown.
    #[tokio::test]
    async fn a_create_error_echoing_the_request_does_not_show_the_token() {
        let url = scripted_engine(|request| {
            let echoed = request.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let body = serde_json::json!({ "message": format!("denied: {echoed}") }).to_string();
            format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        })
        .await;
        let v = crate::engine::fake::validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\n\
             outposts:\n  A: { type: ldap, integration: local, token: { file: token } }\n",
        );
        let spec = &v.desired["local"][0];
        let engine = answering(&url).await;
        let err = engine
            .create(
                spec,
                "ghcr.io/goauthentik/ldap:2026.8.0",
                None,
                &Default::default(),
            )
            .await
            .expect_err("the create is refused");
        assert_eq!(err.kind, ErrorKind::Forbidden, "{err:?}");
        // The echo came through (so the token was in it), masked.
        assert!(
            err.message.contains("AUTHENTIK_TOKEN=(secret)"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("t0ken"), "{}", err.message);
    }

    /// A `/version` answer that stalls after its head (the ping said no API version) fails
    /// within the client's timeout: the timeout of bollard's request ends at the head.
    #[tokio::test]
    async fn a_version_answer_that_stalls_after_its_head_times_out() {
        let url = scripted(
            |request| {
                if request.contains("/_ping") {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"Api".into()
                }
            },
            true,
        )
        .await;
        let started = Instant::now();
        let connected = tokio::time::timeout(
            Duration::from_secs(30),
            DockerEngine::negotiated(client(&url, 2), Duration::from_secs(1)),
        )
        .await
        .expect("connect gave up by itself, within its timeout");
        let Err(err) = connected else {
            panic!("connected to an engine that never said its version");
        };
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(err.message.contains("connect"), "{err:?}");
    }

    /// What the engine (or a registry through it) says and outpostctl shows on a terminal has
    /// its control characters escaped: the engine's version and OS in `status`, a pull's
    /// progress.
    #[tokio::test]
    async fn escape_sequences_from_the_engine_do_not_reach_the_terminal() {
        let url = scripted_engine(|request| {
            if request.contains("/images/create") {
                json_answer("{\"status\":\"Pulling \\u001b]0;owned\\u0007\"}\n")
            } else {
                json_answer(
                    r#"{"ID":"X\u001b[2J","ServerVersion":"20.10.24\u001b[31m","OperatingSystem":"Debian\u001b[0m"}"#,
                )
            }
        })
        .await;
        let engine = answering(&url).await;
        let info = engine.info().await.expect("info");
        for shown in [&info.id, &info.server_version, &info.os] {
            assert!(
                !shown.contains('\u{1b}') && shown.contains("\\u001b"),
                "{shown:?}"
            );
        }
        let said = std::sync::Mutex::new(Vec::new());
        engine
            .pull("example/radius:1", &|s| {
                said.lock().expect("lock").push(s.to_string())
            })
            .await
            .expect("pulled");
        let said = said.into_inner().expect("lock");
        assert!(
            !said.is_empty()
                && said
                    .iter()
                    .all(|s| !s.contains('\u{1b}') && !s.contains('\u{7}')),
            "{said:?}"
        );
    }

    /// A 200 answer with `body` as JSON.
    fn json_answer(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// The engine at `url` (a `scripted_engine`), its ping answered.
    async fn answering(url: &str) -> DockerEngine {
        DockerEngine::negotiated(client(url, 10), Duration::from_secs(5))
            .await
            .expect("the ping is answered")
    }

    /// The lock's lease is judged by the engine's clock only: an engine whose `info` does not
    /// say its time is an error, not this machine's clock (which another run's may disagree
    /// with by more than a lease).
    #[tokio::test]
    async fn an_engine_that_does_not_say_its_time_has_no_lease_clock() {
        let url = scripted_engine(|_| {
            json_answer(r#"{"ID":"X","ServerVersion":"20.10.24","OSType":"linux"}"#)
        })
        .await;
        let engine = answering(&url).await;
        let err = engine.now().await.expect_err("no time, no clock");
        assert!(err.message.contains("does not say its time"), "{err:?}");
    }

    /// A newer engine's list says a container's health in its `Health` field (API 1.52; the
    /// status text may not say it, as Podman's does not): read from there, for running
    /// containers only; an older engine's status text still counts.
    #[tokio::test]
    async fn health_is_read_from_the_lists_health_field_or_its_status_text() {
        let url = scripted_engine(|_| {
            let container = |id: &str, state: &str, status: &str, health: Option<&str>| {
                let mut c = serde_json::json!({
                    "Id": id, "Names": [format!("/{id}")], "Image": "x", "State": state,
                    "Status": status, "Labels": {},
                });
                if let Some(h) = health {
                    c["Health"] = serde_json::json!({ "Status": h, "FailingStreak": 0 });
                }
                c
            };
            let body = serde_json::json!([
                container("a", "running", "Up 4 days", Some("unhealthy")),
                container("b", "running", "Up 4 days", Some("healthy")),
                container("c", "exited", "Exited (0) 1 hour ago", Some("healthy")),
                container("d", "running", "Up 2 seconds (health: starting)", None),
                container("e", "running", "Up 4 days", Some("none")),
            ])
            .to_string();
            json_answer(&body)
        })
        .await;
        let engine = answering(&url).await;
        let list = engine.list().await.expect("the list is read");
        let health: Vec<(String, Option<Health>)> =
            list.into_iter().map(|o| (o.id, o.health)).collect();
        assert_eq!(
            health,
            vec![
                ("a".to_string(), Some(Health::Unhealthy)),
                ("b".to_string(), Some(Health::Healthy)),
                ("c".to_string(), None),
                ("d".to_string(), Some(Health::Starting)),
                ("e".to_string(), None),
            ]
        );
    }

    /// An engine (or a proxy before it) that sends the headers of its answer and then stalls
    /// in the middle of the body: the request ends with the client's timeout, not never.
    #[tokio::test]
    async fn an_answer_that_stalls_mid_body_times_out_within_the_client_timeout() {
        // A list promised 1000 bytes long, of which one comes.
        let url = scripted_engine(|_| {
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n["
                .to_string()
        })
        .await;
        let engine = DockerEngine::negotiated(client(&url, 2), Duration::from_secs(1))
            .await
            .expect("the ping is answered");
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(30), engine.list())
            .await
            .expect("the list ended within 30 s")
            .expect_err("a body that never ends is an error");
        let took = started.elapsed();
        assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");
        assert!(err.message.contains("list containers"), "{err:?}");
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(5),
            "the list took {took:?}, not the client's 2 s"
        );
    }

    #[tokio::test]
    async fn an_engine_that_never_answers_times_out_within_the_client_timeout() {
        let (url, accepted) = listener(u64::MAX).await;
        let started = Instant::now();
        let err = DockerEngine::negotiated(client(&url, 3), Duration::from_secs(1))
            .await
            .err()
            .expect("nothing answers");
        let took = started.elapsed();
        assert_eq!(err.kind, ErrorKind::Timeout, "{err:?}");
        assert!(err.message.contains("did not answer"), "{err:?}");
        assert_eq!(accepted.load(SeqCst), 2, "tried twice");
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(6),
            "the two tries took {took:?}, not the client's 3 s"
        );
    }
}

#[cfg(test)]
mod masking {
    use std::collections::BTreeMap;

    use crate::desired::{EnvValue, Secret};

    #[test]
    fn secrets_are_masked_as_written_and_as_json_escapes_them() {
        let env = BTreeMap::from([
            (
                "AUTHENTIK_TOKEN".to_string(),
                EnvValue::Secret(Secret::new(r#"ab"c\d"#)),
            ),
            (
                "AUTHENTIK_HOST".to_string(),
                EnvValue::Plain("https://ak".into()),
            ),
        ]);
        let echoed = r#"denied: {"Env":["AUTHENTIK_TOKEN=ab\"c\\d","AUTHENTIK_HOST=https://ak"]} raw ab"c\d"#;
        assert_eq!(
            super::without_secrets(echoed, &env),
            r#"denied: {"Env":["AUTHENTIK_TOKEN=(secret)","AUTHENTIK_HOST=https://ak"]} raw (secret)"#
        );
    }

    /// A token with control characters inside, echoed raw by an engine: the error shows
    /// them escaped (`EngineError::new`), and the token is masked in that form too.
    #[test]
    fn secrets_with_control_characters_are_masked_as_the_error_shows_them() {
        let env = BTreeMap::from([(
            "AUTHENTIK_TOKEN".to_string(),
            EnvValue::Secret(Secret::new("ab\r\ncd\u{1b}ef")),
        )]);
        let err = crate::engine::EngineError::new(
            crate::engine::ErrorKind::Forbidden,
            "denied: AUTHENTIK_TOKEN=ab\r\ncd\u{1b}ef",
        );
        let shown = super::without_secrets(&err.message, &env);
        assert_eq!(shown, "denied: AUTHENTIK_TOKEN=(secret)");
    }
}
