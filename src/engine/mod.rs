//! The Docker boundary. `Engine` is the one narrow trait through which outpostctl reads and
//! changes an engine; `docker` implements it on bollard, `fake` in memory for unit tests of
//! pure logic. Nothing else knows Docker's API.

pub mod connect;
pub mod docker;
#[cfg(test)]
pub mod fake;
pub mod ssh;
pub mod tls;
pub mod transport;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::desired::{ContainerSpec, HealthCheck, PortBinding};

/// A container as the engine's list shows it: enough to plan without inspecting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: State,
    pub health: Option<Health>,
    pub labels: BTreeMap<String, String>,
    pub networks: Vec<String>,
    /// The network the container was created on, as given (`HostConfig.NetworkMode`: a
    /// name, an id, `default`, `container:<id>`); None when the engine does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// The id of each of `networks`, in the same order; empty when the engine does not say
    /// (Docker fills it in for a running container only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_ids: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// Host ports the container publishes (running containers only).
    #[serde(default)]
    pub host_ports: Vec<HostPort>,
}

/// A host port a container publishes, as the engine's list shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostPort {
    /// The host address (`0.0.0.0`, `::`, `127.0.0.1`, ...); empty when not given.
    pub ip: String,
    pub port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub proto: String,
}

impl Observed {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
    pub fn short_id(&self) -> &str {
        // Docker ids are hex; whatever an engine or a proxy sends, never a panic.
        self.id.get(..12).unwrap_or(&self.id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Removing,
    Dead,
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Restarting => "restarting",
            State::Exited => "exited",
            State::Removing => "removing",
            State::Dead => "dead",
            State::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    /// From the list's status text: `Up 2 minutes (healthy)`.
    pub fn from_status(status: &str) -> Option<Health> {
        if status.contains("(unhealthy)") {
            Some(Health::Unhealthy)
        } else if status.contains("(healthy)") {
            Some(Health::Healthy)
        } else if status.contains("(health: starting)") {
            Some(Health::Starting)
        } else {
            None
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// A container's settings as inspect shows them, in the shape of `ContainerSpec`, to explain
/// a recreate field by field. Its env holds the live token: Debug shows env names only.
#[derive(Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The full id (a container inspected by name is then acted on by id).
    pub id: String,
    /// Its name, without the leading `/`.
    pub name: String,
    /// Whether it runs (`running`, not restarting, paused or stopped).
    pub running: bool,
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortBinding>,
    pub network: Option<String>,
    pub restart_policy: String,
    pub healthcheck: Option<HealthCheck>,
    /// When it last started; None when it never did (or the engine's time is unreadable).
    pub started_at: Option<std::time::SystemTime>,
}

impl std::fmt::Debug for Inspected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspected")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("running", &self.running)
            .field("image", &self.image)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("labels", &self.labels)
            .field("ports", &self.ports)
            .field("network", &self.network)
            .field("restart_policy", &self.restart_policy)
            .field("healthcheck", &self.healthcheck)
            .field("started_at", &self.started_at)
            .finish()
    }
}

/// Something happened on an engine: `action` is Docker's event name (`die`, `destroy`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEvent {
    /// What it happened to.
    pub subject: EventSubject,
    /// The container's or network's id; an image's id or reference.
    pub id: String,
    /// The container's, network's or image's name.
    pub name: String,
    /// A renamed container's previous name.
    pub old_name: Option<String>,
    pub action: String,
    /// When it happened, by the engine's clock (nanoseconds since the epoch), if it says.
    pub time_nano: Option<i64>,
}

/// What an engine event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSubject {
    /// A container of the project the events were asked for.
    Managed,
    /// Any other container.
    Container,
    Network,
    Image,
    /// A container taken off a network (`disconnect`): the event's id is the container's,
    /// its name the network's. The engine's events do not say whose container it is.
    Detached,
}

/// The engine's identity, from System/Info and the negotiated API version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineInfo {
    /// The daemon's own ID (`docker info`): tells two engines apart behind the same address.
    pub id: String,
    pub server_version: String,
    pub api_version: String,
    pub os: String,
    /// A Swarm worker: it does not list the cluster's attachable overlay networks until a
    /// container on it joins one, yet creates containers on them.
    #[serde(skip)]
    pub swarm_worker: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The engine could not be reached at all (connection refused, DNS, TLS, SSH).
    Unreachable,
    Timeout,
    NotFound,
    /// The name or port is taken, or the container is in a state that forbids the call.
    Conflict,
    /// The engine refused the call (e.g. a socket proxy's 403).
    Forbidden,
    /// Any other answer from the engine.
    Api,
}

/// An engine call that failed, with a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    pub kind: ErrorKind,
    pub message: String,
}

impl EngineError {
    /// An error whose message may carry what an engine, proxy or registry said: control
    /// characters in it but line feeds (which outpostctl's own hints use) are written as
    /// escapes (`\u{1b}`, `\r`), so that an answer cannot move the cursor, colour or clear
    /// a terminal, nor overwrite a line of the output.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> EngineError {
        EngineError {
            kind,
            message: printable(message.into()),
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

/// The image a container was made from, by name: what the engine shows (`Config.Image`, or
/// the list's image), except for a container made from its image's id (`image_by_id`), whose
/// name is in `LABEL_IMAGE`. Only a name Docker would take counts (anyone may label a
/// container: the label's text reaches terminals).
pub fn image_name(shown: String, labels: &BTreeMap<String, String>) -> String {
    match labels.get(crate::desired::LABEL_IMAGE) {
        Some(name)
            if shown.starts_with("sha256:")
                && !name.is_empty()
                && crate::desired::reference_problem(name).is_none() =>
        {
            name.clone()
        }
        _ => shown,
    }
}

/// A control character as outpostctl's messages write it: `\t`, `\r`, `\n`, else as JSON
/// writes one (`\u001b`), the form the plan's quoted values and the JSON outputs use too.
pub fn escaped_control(c: char) -> String {
    match c {
        '\t' => "\\t".into(),
        '\r' => "\\r".into(),
        '\n' => "\\n".into(),
        c => format!("\\u{:04x}", u32::from(c)),
    }
}

/// `text` with its control characters but line feeds written as escapes (`\u001b`, `\r`,
/// `\t`): text an engine, a proxy or a container's labels hold, made safe to print.
pub fn printable(text: impl Into<String>) -> String {
    let text: String = text.into();
    let escaped = |c: char| c.is_control() && c != '\n';
    if !text.chars().any(escaped) {
        return text;
    }
    text.chars()
        .map(|c| {
            if escaped(c) {
                escaped_control(c)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Seconds from the environment variable `name`, kept within `min..=max`: any number (`-5`
/// is `min`, `2.5` is 3: whole seconds, rounded up); None when unset or not a number.
pub fn env_seconds(name: &str, min: u64, max: u64) -> Option<u64> {
    seconds_within(&std::env::var(name).ok()?, min, max)
}

fn seconds_within(text: &str, min: u64, max: u64) -> Option<u64> {
    let n = text.trim().parse::<f64>().ok().filter(|n| !n.is_nan())?;
    // `as` saturates: a huge or infinite number is `max` after the clamp.
    Some((n.ceil().max(0.0) as u64).clamp(min, max))
}

#[cfg(test)]
#[test]
fn seconds_from_the_environment_are_any_number_kept_within_bounds() {
    assert_eq!(seconds_within("30", 2, 3600), Some(30));
    assert_eq!(seconds_within(" -5 ", 2, 3600), Some(2));
    assert_eq!(seconds_within("2.5", 2, 3600), Some(3));
    assert_eq!(seconds_within("1e9", 2, 3600), Some(3600));
    assert_eq!(seconds_within("inf", 2, 3600), Some(3600));
    assert_eq!(seconds_within("NaN", 2, 3600), None);
    assert_eq!(seconds_within("ten", 2, 3600), None);
}

/// `text` with every control character written as an escape, line feeds included: a value
/// another writer put in a label or an engine sent, shown on one line of outpostctl's output
/// (where a line feed would let it forge a line of its own).
pub fn printable_line(text: impl Into<String>) -> String {
    printable(text).replace('\n', "\\n")
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EngineError {}

pub type Result<T> = std::result::Result<T, EngineError>;

/// Everything outpostctl asks of a Docker engine: the API sections of authentik's permission
/// list (containers, images, info) and, only to check that a network an outpost names exists
/// before planning to create on it, the network list (which an engine or socket proxy may
/// refuse: the check is then skipped).
#[async_trait]
pub trait Engine: Send + Sync {
    /// System/Info plus the negotiated API version.
    async fn info(&self) -> Result<EngineInfo>;
    /// What `/version` says, for an engine whose `info` is refused (a socket proxy allows
    /// `/version` by default, not `info`): versions and OS, no daemon ID (empty).
    async fn version(&self) -> Result<EngineInfo> {
        Err(EngineError::new(ErrorKind::Api, "no /version here"))
    }
    /// Every container, running or not: one request.
    async fn list(&self) -> Result<Vec<Observed>>;
    async fn inspect(&self, id: &str) -> Result<Inspected>;
    /// Every network: (id, name). One request.
    async fn networks(&self) -> Result<Vec<(String, String)>>;
    /// The image's labels, or None when the engine does not have the image.
    async fn image_labels(&self, image: &str) -> Result<Option<BTreeMap<String, String>>>;
    /// The image's id (`sha256:...`), or None when the engine does not have the image.
    async fn image_id(&self, image: &str) -> Result<Option<String>>;
    /// Pulls `image`; `progress` is told about layers as they come.
    async fn pull(
        &self,
        image: &str,
        progress: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<()>;
    /// Creates the container of `spec` from `image` (the spec's image or its fallback), or
    /// from that image's id `by_id` (`image_by_id`: the name `image` is kept in
    /// `LABEL_IMAGE`); returns its id.
    async fn create(
        &self,
        spec: &ContainerSpec,
        image: &str,
        by_id: Option<&str>,
        extra_labels: &BTreeMap<String, String>,
    ) -> Result<String>;
    async fn start(&self, id: &str) -> Result<()>;
    async fn stop(&self, id: &str) -> Result<()>;
    async fn unpause(&self, id: &str) -> Result<()>;
    async fn restart(&self, id: &str) -> Result<()>;
    async fn rename(&self, id: &str, name: &str) -> Result<()>;
    /// Kills if running, then removes (with force, as authentik does). `false`: there was no
    /// such container any more (someone else removed it first), which is not an error.
    async fn remove(&self, id: &str) -> Result<bool>;
    /// The engine's clock (seconds since the epoch): leases are judged by it, so the clocks
    /// of the machines running outpostctl do not matter.
    async fn now(&self) -> Result<i64>;
    /// The engine's own clock in nanoseconds since the epoch; None when it does not tell
    /// (`now` then falls back to this machine's clock).
    async fn clock(&self) -> Result<Option<i64>>;
    /// Any image the engine has (to create the never-started lock container from).
    async fn any_image(&self) -> Result<Option<String>>;
    /// Creates a container that is never started; None when the name is taken.
    async fn create_marker(
        &self,
        name: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
        expires: i64,
    ) -> Result<Option<String>>;
    /// A marker container by name: (id, labels, expires), or None.
    async fn read_marker(
        &self,
        name: &str,
    ) -> Result<Option<(String, BTreeMap<String, String>, i64)>>;
    /// Moves a marker's expiry (its lease) forward.
    async fn renew_marker(&self, id: &str, expires: i64) -> Result<()>;
    /// Lifecycle events (die, destroy, ...) of this project's containers, as they happen, and
    /// those of the engine's other objects that can unblock an outpost (another container
    /// dying, removed or renamed; a network created; an image pulled, loaded or tagged);
    /// with `since` (the engine's clock, as `clock`), those the engine still holds from that
    /// moment on first.
    fn events(
        &self,
        project: &str,
        since: Option<i64>,
    ) -> futures_util::stream::BoxStream<'static, Result<EngineEvent>>;
    /// How many API requests this engine has sent.
    fn requests(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an engine or proxy answers is shown as text: an escape sequence in a 403's body
    /// does not reach the terminal, nor a carriage return that would overwrite the line.
    #[test]
    fn engine_messages_carry_no_control_characters() {
        let e = EngineError::new(ErrorKind::Forbidden, "403: \u{1b}[31mno\u{1b}[0m\rdone\tx");
        assert_eq!(e.to_string(), "403: \\u001b[31mno\\u001b[0m\\rdone\\tx");
        let hint = "pin it:\n  ssh:\n    host_key: x";
        assert_eq!(EngineError::new(ErrorKind::Api, hint).to_string(), hint);
    }

    /// A container made from its image's id shows the name it keeps in a label; any other
    /// shows what the engine shows (a by-name container whose tag moved is listed by id).
    #[test]
    fn a_container_made_by_id_shows_its_image_name() {
        let id = format!("sha256:{}", "a".repeat(64));
        let labelled = BTreeMap::from([(
            crate::desired::LABEL_IMAGE.to_string(),
            "ghcr.io/goauthentik/ldap:2026.8.0".to_string(),
        )]);
        assert_eq!(
            image_name(id.clone(), &labelled),
            "ghcr.io/goauthentik/ldap:2026.8.0"
        );
        assert_eq!(image_name(id.clone(), &BTreeMap::new()), id);
        assert_eq!(image_name("busybox:1".into(), &labelled), "busybox:1");
        let forged = BTreeMap::from([(
            crate::desired::LABEL_IMAGE.to_string(),
            "ghcr.io/x:1\u{1b}[2J".to_string(),
        )]);
        assert_eq!(
            image_name(id.clone(), &forged),
            id,
            "not a name Docker takes"
        );
    }

    #[test]
    fn short_ids_never_split_a_character() {
        let o = |id: &str| Observed {
            id: id.to_string(),
            name: "x".into(),
            image: "x".into(),
            state: State::Running,
            health: None,
            labels: BTreeMap::new(),
            networks: Vec::new(),
            network_mode: None,
            network_ids: Vec::new(),
            created: 0,
            host_ports: Vec::new(),
        };
        assert_eq!(o("0123456789abcdef").short_id(), "0123456789ab");
        assert_eq!(o("abc").short_id(), "abc");
        assert_eq!(o("0123456789aé...").short_id(), "0123456789aé...");
    }
}
