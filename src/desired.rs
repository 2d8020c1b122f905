//! The container authentik would deploy for an outpost. authentik's semantics live here and
//! only here (see design/authentik-outposts.md): naming, image, environment, ports, labels,
//! Traefik labels, restart policy and health check.
//!
//! Everything is a pure function of the manifest, so validation can report what would go
//! wrong (a name Docker rejects, a port used twice) before any engine is contacted.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::model::{OutpostType, PullPolicy};

pub const LABEL_UUID: &str = "io.goauthentik.outpost-uuid";
pub const LABEL_PROJECT: &str = "outpostctl.project";
pub const LABEL_MANAGED_BY: &str = "outpostctl.managed-by";
pub const LABEL_CONFIG_HASH: &str = "outpostctl.config-hash";
pub const LABEL_OUTPOST: &str = "outpostctl.outpost";
/// The integration that manages the container (several may reach one engine).
pub const LABEL_INTEGRATION: &str = "outpostctl.integration";
/// On a container made from the fallback image because its own image could not be pulled.
pub const LABEL_FALLBACK: &str = "outpostctl.image-fallback";
/// On a replacement container: the id of the container it replaces, so an interrupted
/// recreate can be recognised and finished by any runner.
pub const LABEL_REPLACES: &str = "outpostctl.replaces";
/// On a container made from its image's id (`image_by_id`): the image's name, which the
/// engine shows in place of that id.
pub const LABEL_IMAGE: &str = "outpostctl.image";
pub const MANAGED_BY: &str = "outpostctl";
pub const DEFAULT_NAMING_TEMPLATE: &str = "ak-outpost-%(name)s";
pub const DEFAULT_IMAGE_BASE: &str = "ghcr.io/goauthentik/%(type)s:%(version)s";
pub const RESTART_POLICY: &str = "unless-stopped";
/// The first authentik release whose proxy image runs `/authentik healthcheck proxy` (its
/// `/proxy` binary is gone: goauthentik/authentik#25352 and #25485, filed against 2026.8.0).
pub const RUST_PROXY_SINCE: (u32, u32) = (2026, 8);

/// A secret value: shown nowhere, serialized nowhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The value itself, for the one place that needs it (the engine call).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(secret)")
    }
}

/// An environment value of the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Plain(String),
    Secret(Secret),
}

impl EnvValue {
    pub fn expose(&self) -> &str {
        match self {
            EnvValue::Plain(s) => s,
            EnvValue::Secret(s) => s.expose(),
        }
    }
    pub fn is_secret(&self) -> bool {
        matches!(self, EnvValue::Secret(_))
    }
    /// What may be shown: the value, or `(secret)`.
    pub fn shown(&self) -> &str {
        match self {
            EnvValue::Plain(s) => s,
            EnvValue::Secret(_) => "(secret)",
        }
    }
}

impl Serialize for EnvValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.shown())
    }
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A published port: container port -> host address and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortBinding {
    pub container_port: u16,
    pub proto: Proto,
    /// Empty: every interface (Docker's default).
    pub host_ip: String,
    pub host_port: u16,
}

impl fmt::Display for PortBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = if self.host_ip.contains(':') {
            format!("[{}]:", self.host_ip)
        } else if self.host_ip.is_empty() {
            String::new()
        } else {
            format!("{}:", self.host_ip)
        };
        write!(
            f,
            "{ip}{}->{}/{}",
            self.host_port,
            self.container_port,
            self.proto.as_str()
        )
    }
}

/// The container health check (Docker's HealthConfig), durations in nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub test: Vec<String>,
    pub interval_ns: i64,
    pub retries: i64,
    pub start_period_ns: i64,
}

/// Everything that makes up one outpost's container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerSpec {
    pub outpost: String,
    #[serde(rename = "type")]
    pub kind: OutpostType,
    pub uuid: String,
    pub name: String,
    pub image: String,
    /// authentik's default image for the type and version, tried when `image` cannot be
    /// pulled; None when `image` is that image already, or no version is known.
    pub fallback_image: Option<String>,
    pub pull: PullPolicy,
    /// Create the container from the image's id, the name kept in `LABEL_IMAGE`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub image_by_id: bool,
    pub env: BTreeMap<String, EnvValue>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortBinding>,
    pub network: Option<String>,
    pub restart_policy: String,
    pub healthcheck: HealthCheck,
    /// The health check to use with `fallback_image`, when it differs (the fallback may be
    /// another authentik version, whose proxy image answers another command).
    pub fallback_healthcheck: Option<HealthCheck>,
    /// sha256 of everything above except the name, secrets folded in through an HMAC.
    pub config_hash: String,
}

/// authentik's outpost settings after defaults were applied.
#[derive(Debug, Clone)]
pub struct Settings {
    pub authentik_host: String,
    pub authentik_host_insecure: bool,
    pub authentik_host_browser: String,
    pub naming_template: String,
    pub container_image: Option<String>,
    pub image_base: String,
    pub version: Option<String>,
    pub network: Option<String>,
    pub map_ports: bool,
    pub labels: BTreeMap<String, String>,
    pub pull: PullPolicy,
    pub image_by_id: bool,
}

/// Host binding overrides keyed by (container port, protocol): None leaves a port
/// unpublished, Some((host ip, host port)) binds it there.
pub type PortOverrides = BTreeMap<(u16, Proto), Option<(String, u16)>>;

/// What an outpost needs to become a container.
#[derive(Debug, Clone)]
pub struct OutpostInput<'a> {
    pub project: &'a str,
    pub integration: &'a str,
    pub name: &'a str,
    pub kind: OutpostType,
    pub uuid: String,
    pub token: Secret,
    pub external_hosts: &'a [String],
    pub settings: &'a Settings,
    /// Host binding overrides keyed by container port: None leaves a port unpublished.
    pub port_overrides: &'a PortOverrides,
    pub healthcheck: Option<&'a [String]>,
}

/// What is wrong with an outpost's settings; the field says where to point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Relative pointer below the outpost (`/config/object_naming_template`), or "" for the
    /// outpost itself.
    pub field: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    fn new(field: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Problem {
        Problem {
            field,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

/// Django's `slugify`, which authentik applies to the outpost name: NFKD, ASCII only,
/// lowercase, word characters, spaces and dashes kept, runs of spaces and dashes made one
/// dash, dashes and underscores trimmed.
pub fn slugify(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let ascii: String = name.nfkd().filter(char::is_ascii).collect();
    let mut out = String::with_capacity(ascii.len());
    let mut pending_dash = false;
    for c in ascii.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(c);
        } else if c == '-' || c.is_ascii_whitespace() || matches!(c, '\x0b' | '\x1c'..='\x1f') {
            // Python's `\s`, which Django's slugify uses, also takes the vertical tab and the
            // four ASCII separators.
            pending_dash = true;
        }
    }
    out.trim_matches(|c| c == '-' || c == '_').to_string()
}

/// The outpost UUID derived from its name when the manifest gives none (UUID v5).
pub fn derived_uuid(name: &str) -> String {
    let ns = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        b"https://outpostctl.dev/outposts",
    );
    uuid::Uuid::new_v5(&ns, name.as_bytes())
        .simple()
        .to_string()
}

/// One piece of a Python %-template: text, `%%`, or a `%(key)s` conversion with the flags,
/// width and precision Python's `%` operator applies to a string (`%(uuid).8s` is the
/// first 8 characters, `%(name)-20s` pads on the right).
enum Piece<'a> {
    Text(&'a str),
    Percent,
    Field {
        key: &'a str,
        left: bool,
        width: usize,
        precision: Option<usize>,
    },
}

/// The most spaces a field's width adds. Padding only adds spaces, which no container name or
/// image reference takes: a result with any is refused all the same, and a width of two
/// billion must not allocate two gigabytes to say so.
const MAX_PAD: usize = 256;

/// Parses a template as Python's `%` operator does with a mapping: `%(key)` then flags
/// (`-`, `0`, ` `, `+`, `#`), width, `.precision`, an optional length modifier (`h`, `l`,
/// `L`, ignored) and the conversion, which must be `s` (authentik fills text values).
fn pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find('%') {
        if i > 0 {
            out.push(Piece::Text(&rest[..i]));
        }
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('%') {
            out.push(Piece::Percent);
            rest = stripped;
            continue;
        }
        let Some(inner) = after.strip_prefix('(') else {
            let shown: String = rest[i..].chars().take(3).collect();
            return Err(format!("`{shown}` is not a placeholder"));
        };
        let Some(close) = inner.find(')') else {
            return Err("`%(` is not closed".into());
        };
        let key = &inner[..close];
        let spec = &inner[close + 1..];
        let flags = spec
            .find(|c: char| !matches!(c, '-' | '0' | ' ' | '+' | '#'))
            .unwrap_or(spec.len());
        let left = spec[..flags].contains('-');
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let after_flags = &spec[flags..];
        let w = digits(after_flags);
        // Python keeps a width in a Py_ssize_t and a precision in a C int: beyond, "width
        // too big" or "precision too big".
        let number = |s: &str, what: &str, max: u64| -> Result<usize, String> {
            match s.parse::<u64>() {
                Ok(n) if n <= max => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
                _ => Err(format!("`%({key})`: the {what} {s} is too big")),
            }
        };
        let width = if w == 0 {
            0
        } else {
            number(&after_flags[..w], "width", i64::MAX as u64)?
        };
        let mut conv = &after_flags[w..];
        let mut precision = None;
        if let Some(p) = conv.strip_prefix('.') {
            let n = digits(p);
            // Python reads `.` alone as precision 0.
            precision = Some(if n == 0 {
                0
            } else {
                number(&p[..n], "precision", i32::MAX as u64)?
            });
            conv = &p[n..];
        }
        conv = conv.strip_prefix(['h', 'l', 'L']).unwrap_or(conv);
        match conv.chars().next() {
            Some('s') => {}
            Some('*') => {
                return Err(format!(
                    "`%({key})` takes no `*`: a template has no separate width value"
                ));
            }
            Some(c) => {
                return Err(format!(
                    "`%({key}){}` is not a text conversion; write `%({key})s`",
                    &spec[..spec.len() - conv.len() + c.len_utf8()]
                ));
            }
            None => return Err(format!("`%({key})` must be followed by `s`")),
        }
        out.push(Piece::Field {
            key,
            left,
            width,
            precision,
        });
        rest = &conv[1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// `%(key)s` placeholders of a Python %-template, in order; `%%` is a literal percent.
/// Errors name the first thing that is not a placeholder Python would fill with text.
pub fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    Ok(pieces(template)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Field { key, .. } => Some(key),
            _ => None,
        })
        .collect())
}

/// Whether a (valid) template uses `key`, in any form (`%(version)s`, `%(version).3s`).
pub fn uses(template: &str, key: &str) -> bool {
    placeholders(template).is_ok_and(|p| p.contains(&key))
}

/// Fills a template as Python's `template % values` does. A template that does not parse
/// (validation refuses it first) is returned as written; a key without a value (validation
/// refuses unknown keys first) gives "".
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let Ok(pieces) = pieces(template) else {
        return template.to_string();
    };
    let mut out = String::with_capacity(template.len() + 32);
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Percent => out.push('%'),
            Piece::Field {
                key,
                left,
                width,
                precision,
            } => {
                let Some((_, v)) = values.iter().find(|(k, _)| *k == key) else {
                    continue;
                };
                let v = match precision {
                    Some(n) => v.char_indices().nth(n).map_or(*v, |(i, _)| &v[..i]),
                    None => v,
                };
                let pad = width.saturating_sub(v.chars().count()).min(MAX_PAD);
                if left {
                    out.push_str(v);
                }
                out.extend(std::iter::repeat_n(' ', pad));
                if !left {
                    out.push_str(v);
                }
            }
        }
    }
    out
}

/// Checks a template's placeholders against the allowed ones.
pub fn check_template(template: &str, allowed: &[&str]) -> Result<(), String> {
    for p in placeholders(template)? {
        if !allowed.contains(&p) {
            let list = allowed
                .iter()
                .map(|a| format!("`%({a})s`"))
                .collect::<Vec<_>>()
                .join(" and ");
            return Err(format!("unknown placeholder `%({p})s`; use {list}"));
        }
    }
    Ok(())
}

/// Container name: the naming template filled and lowercased, as authentik does.
pub fn container_name(template: &str, outpost_name: &str, uuid: &str) -> String {
    fill(
        template,
        &[("name", &slugify(outpost_name)), ("uuid", uuid)],
    )
    .to_lowercase()
}

/// Docker's rule for container names (it sets no upper length: a 300-character name is
/// created, as authentik would create it).
pub fn valid_container_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The type's ports (container port, protocol, host port) as authentik maps them.
pub fn default_ports(kind: OutpostType) -> &'static [(u16, Proto, u16)] {
    match kind {
        OutpostType::Proxy => &[(9000, Proto::Tcp, 9000), (9443, Proto::Tcp, 9443)],
        OutpostType::Ldap => &[(3389, Proto::Tcp, 389), (6636, Proto::Tcp, 636)],
        OutpostType::Radius => &[(1812, Proto::Udp, 1812)],
        OutpostType::Rac => &[],
    }
}

/// The ports an outpost's container listens on itself: its type's, and the metrics port
/// (never published, but on the host's network it is the host's).
pub fn listening_ports(kind: OutpostType) -> Vec<(u16, Proto)> {
    default_ports(kind)
        .iter()
        .map(|(p, proto, _)| (*p, *proto))
        .chain([(9300, Proto::Tcp)])
        .collect()
}

/// The host part (with port) of an external host URL, as Traefik's `Host()` wants it.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    (!host.is_empty()).then_some(host)
}

/// Whether `authority` (what `url_host` gives) is a host, with a port or not, as Traefik's
/// `Host()` matches it: a DNS name (labels of letters, digits, `-` and `_`; non-ASCII letters
/// for a name written in Unicode), an IPv4 address, or an IPv6 one in brackets; a port from 1
/// to 65535. Nothing that could end the rule's backquoted string or change the rule.
pub fn is_host_and_port(authority: &str) -> bool {
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let Some((v6, after)) = rest.split_once(']') else {
                return false;
            };
            let port = match after {
                "" => None,
                a => match a.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return false,
                },
            };
            (v6.parse::<std::net::Ipv6Addr>().is_ok(), port)
        }
        None => {
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            let label = |l: &str| {
                !l.is_empty()
                    && l.chars().count() <= 63
                    && l.chars()
                        .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            let name = host.strip_suffix('.').unwrap_or(host);
            (
                !name.is_empty() && name.len() <= 253 && name.split('.').all(label),
                port,
            )
        }
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    host_ok && port_ok
}

/// authentik's Traefik labels for a proxy outpost. With no external hosts there is no valid
/// rule, so no router is declared (authentik would emit the broken rule `() && ...`).
pub fn traefik_labels(name: &str, external_hosts: &[String]) -> BTreeMap<String, String> {
    let hosts: Vec<String> = external_hosts
        .iter()
        .filter_map(|h| url_host(h))
        .map(|h| format!("Host(`{h}`)"))
        .collect();
    let mut l = BTreeMap::new();
    if hosts.is_empty() {
        return l;
    }
    let router = format!("traefik.http.routers.{name}-router");
    let service = format!("traefik.http.services.{name}-service");
    l.insert("traefik.enable".into(), "true".into());
    l.insert(
        format!("{router}.rule"),
        format!(
            "({}) && PathPrefix(`/outpost.goauthentik.io`)",
            hosts.join(" || ")
        ),
    );
    l.insert(format!("{router}.service"), format!("{name}-service"));
    l.insert(format!("{router}.tls"), "true".into());
    l.insert(
        format!("{service}.loadbalancer.healthcheck.path"),
        "/outpost.goauthentik.io/ping".into(),
    );
    l.insert(
        format!("{service}.loadbalancer.healthcheck.port"),
        "9300".into(),
    );
    l.insert(format!("{service}.loadbalancer.server.port"), "9000".into());
    l
}

/// `2026.8.0`, `2026.8`, `2026.8.0-rc1`, optionally with a leading `v` -> (2026, 8).
pub fn parse_version(s: &str) -> Option<(u32, u32)> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut parts = s.split(['.', '-']);
    let year = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    (year >= 2000).then_some((year, minor))
}

/// The tag of an image reference, when it has one (`host:5000/a/b:tag@sha` -> `tag`).
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next()?;
    let last = without_digest.rsplit('/').next()?;
    last.split_once(':').map(|(_, t)| t)
}

/// What is wrong with an image reference, by the grammar Docker parses it with
/// (`[registry[:port]/]path[:tag][@digest]`, distribution's `reference` package), or None
/// when the engine would take it. Checked at validation so a typo fails there, not at apply.
pub fn reference_problem(reference: &str) -> Option<String> {
    if reference.is_empty() {
        return Some("it is empty".into());
    }
    if let Some(c) = reference
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Some(format!("it contains {c:?}"));
    }
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        // The algorithms Docker verifies, each with its length of lowercase hex.
        let ok = d.split_once(':').is_some_and(|(algo, hex)| {
            let len = match algo {
                "sha256" => 64,
                "sha384" => 96,
                "sha512" => 128,
                _ => return false,
            };
            hex.len() == len
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        });
        if !ok {
            return Some(format!(
                "`@{d}` is not a digest (`sha256:` and 64 lowercase hex digits)"
            ));
        }
    }
    // A tag follows the last `:` after the last `/` (an earlier `:` is a registry's port).
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], Some(&name[slash + i + 1..])),
        None => (name, None),
    };
    if let Some(t) = tag {
        let ok = t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && t.len() <= 128
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Some(format!(
                "the tag `{t}` is not valid (letters, digits, `_`, `.`, `-`; at most 128; not starting with `.` or `-`)"
            ));
        }
    }
    // The first component is a registry when it has a `.` or `:`, is `localhost`, or has
    // capitals (as Docker splits it).
    let (registry, mut path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    };
    if let Some(r) = registry {
        // `[v6]:port` or `host:port`.
        let split_at = match r.find(']') {
            Some(end) if r.starts_with('[') => r[end..].find(':').map(|i| end + i),
            _ => r.find(':'),
        };
        let (host, port) = match split_at {
            Some(i) => (&r[..i], Some(&r[i + 1..])),
            None => (r, None),
        };
        let host_ok = if let Some(v6) = host.strip_prefix('[') {
            v6.strip_suffix(']').is_some_and(|a| {
                !a.is_empty() && a.chars().all(|c| c.is_ascii_hexdigit() || c == ':')
            })
        } else {
            host.split('.').all(|part| {
                !part.is_empty()
                    && !part.starts_with('-')
                    && !part.ends_with('-')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        };
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if !host_ok || !port_ok {
            // Not a host, but a valid path component (`my_registry.com`): Docker reads the
            // whole name as a repository path on Docker Hub.
            if !path_component_ok(r) {
                return Some(format!("`{r}` is not a registry host (`host[:port]`)"));
            }
            path = name;
        }
    }
    // Only the repository path counts (distribution/reference since Docker 26), with the
    // `library/` Docker Hub gives a one-part name.
    let hub = registry.is_none_or(|r| r == "docker.io" || r == "index.docker.io");
    let path_len = path.len() + if hub && !path.contains('/') { 8 } else { 0 };
    if path_len > 255 {
        return Some("the repository name is longer than 255 characters".into());
    }
    for component in path.split('/') {
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Some(format!("repository names are lowercase: `{component}`"));
        }
        if !path_component_ok(component) {
            return Some(format!(
                "`{component}` is not a valid repository name component (lowercase letters and digits, separated by one `.` or `_`, two `_`, or dashes)"
            ));
        }
    }
    None
}

/// `[a-z0-9]+` runs separated by `.`, `_`, `__` or any number of `-`.
fn path_component_ok(c: &str) -> bool {
    let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    if !c.starts_with(alnum) || !c.ends_with(alnum) {
        return false;
    }
    let mut sep = String::new();
    for ch in c.chars() {
        if alnum(ch) {
            if !(sep.is_empty()
                || sep == "."
                || sep == "_"
                || sep == "__"
                || sep.chars().all(|s| s == '-'))
            {
                return false;
            }
            sep.clear();
        } else if "._-".contains(ch) {
            sep.push(ch);
        } else {
            return false;
        }
    }
    true
}

/// The health check command authentik's images answer to. Proxy images moved to the Rust
/// `/authentik` entrypoint in 2026.8; which one applies follows the image tag's version, else
/// the declared authentik version, else the newest.
pub fn healthcheck_command(kind: OutpostType, image: &str, version: Option<&str>) -> Vec<String> {
    let ver = image_tag(image)
        .and_then(parse_version)
        .or_else(|| version.and_then(parse_version));
    let rust_proxy = ver.is_none_or(|v| v >= RUST_PROXY_SINCE);
    if kind == OutpostType::Proxy && rust_proxy {
        vec!["/authentik".into(), "healthcheck".into(), "proxy".into()]
    } else {
        vec![format!("/{}", kind.as_str()), "healthcheck".into()]
    }
}

/// The image: the outpost's own (templated) or the base template.
pub fn image(kind: OutpostType, s: &Settings) -> String {
    let template = s.container_image.as_deref().unwrap_or(&s.image_base);
    fill(
        template,
        &[
            ("type", kind.as_str()),
            ("version", s.version.as_deref().unwrap_or("")),
        ],
    )
}

/// Builds the container spec of one outpost.
pub fn container(input: &OutpostInput<'_>) -> Result<ContainerSpec, Vec<Problem>> {
    let s = input.settings;
    let mut problems = Vec::new();
    let name = container_name(&s.naming_template, input.name, &input.uuid);
    if !valid_container_name(&name) {
        problems.push(Problem::new(
            "/config/object_naming_template",
            format!("the container name `{name}` is not one Docker accepts"),
            "names start with a letter or digit and use letters, digits, `_`, `.` and `-` (at least 2 characters)",
        ));
    } else if name == crate::lock::LOCK_NAME {
        problems.push(Problem::new(
            "/config/object_naming_template",
            format!("the container name `{name}` is the engine lock's, which outpostctl keeps for itself"),
            "give the outpost another name, or use a naming template that adds to it, such as the default `ak-outpost-%(name)s`",
        ));
    }
    let image = image(input.kind, s);
    let default_image = s
        .version
        .as_ref()
        .map(|v| format!("ghcr.io/goauthentik/{}:{v}", input.kind.as_str()));
    let fallback_image = default_image.filter(|d| *d != image);

    let mut env = BTreeMap::new();
    env.insert(
        "AUTHENTIK_HOST".to_string(),
        EnvValue::Plain(s.authentik_host.to_lowercase()),
    );
    env.insert(
        "AUTHENTIK_INSECURE".to_string(),
        EnvValue::Plain(s.authentik_host_insecure.to_string()),
    );
    env.insert(
        "AUTHENTIK_TOKEN".to_string(),
        EnvValue::Secret(input.token.clone()),
    );
    env.insert(
        "AUTHENTIK_HOST_BROWSER".to_string(),
        EnvValue::Plain(s.authentik_host_browser.clone()),
    );

    let mut labels = BTreeMap::new();
    labels.insert(LABEL_UUID.to_string(), input.uuid.clone());
    labels.extend(s.labels.clone());
    if input.kind == OutpostType::Proxy {
        labels.extend(traefik_labels(&name, input.external_hosts));
    }

    let mut ports = Vec::new();
    if s.map_ports {
        for &(cport, proto, hport) in default_ports(input.kind) {
            match input.port_overrides.get(&(cport, proto)) {
                None => ports.push(PortBinding {
                    container_port: cport,
                    proto,
                    host_ip: String::new(),
                    host_port: hport,
                }),
                Some(None) => {}
                Some(Some((ip, port))) => ports.push(PortBinding {
                    container_port: cport,
                    proto,
                    host_ip: ip.clone(),
                    host_port: *port,
                }),
            }
        }
    }
    // Where Docker publishes no ports, publishing them is an error: on the host's network the
    // outpost listens on the host's ports itself, on every address, whatever `ports` says; with
    // no network (Docker keeps the bindings and starts the container) nothing could reach them;
    // on another container's network namespace Docker refuses them.
    if !ports.is_empty() {
        let published = ports
            .iter()
            .map(|p| format!("{}/{}", p.container_port, p.proto.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let problem = match s.network.as_deref() {
            Some("host") => Some((
                format!(
                    "`docker_network: host` uses the host's network, where Docker publishes no ports, but the outpost publishes {published}: it would listen on the host's {published} itself, on every address, whatever its host ports say"
                ),
                "set `docker_map_ports: false` (on the host's network, its ports are the container's own)",
            )),
            Some("none") => Some((
                format!(
                    "`docker_network: none` gives the container no network, where Docker publishes no ports, but the outpost publishes {published}: nothing could reach them"
                ),
                "name a network the outpost can reach authentik on (with none it cannot reach authentik either), or set `docker_map_ports: false`",
            )),
            Some(n) if n.starts_with("container:") => Some((
                format!(
                    "`docker_network: {n}` shares another container's network, where Docker publishes no ports, but the outpost publishes {published}"
                ),
                "set `docker_map_ports: false` (publish the ports on the container whose network it shares)",
            )),
            _ => None,
        };
        if let Some((message, hint)) = problem {
            problems.push(Problem::new("/config/docker_network", message, hint));
        }
    }

    let check = |test: Vec<String>| HealthCheck {
        test: std::iter::once("CMD".to_string()).chain(test).collect(),
        interval_ns: 5_000_000_000,
        retries: 20,
        start_period_ns: 3_000_000_000,
    };
    let healthcheck = check(match input.healthcheck {
        Some(cmd) => cmd.to_vec(),
        None => healthcheck_command(input.kind, &image, s.version.as_deref()),
    });
    let fallback_healthcheck = match (&fallback_image, input.healthcheck) {
        (Some(f), None) => Some(check(healthcheck_command(
            input.kind,
            f,
            s.version.as_deref(),
        )))
        .filter(|h| *h != healthcheck),
        _ => None,
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    let mut spec = ContainerSpec {
        outpost: input.name.to_string(),
        kind: input.kind,
        uuid: input.uuid.clone(),
        name,
        image,
        fallback_image,
        pull: s.pull,
        image_by_id: s.image_by_id,
        env,
        labels,
        ports,
        network: s.network.clone(),
        restart_policy: RESTART_POLICY.to_string(),
        healthcheck,
        fallback_healthcheck,
        config_hash: String::new(),
    };
    spec.config_hash = config_hash(&spec, input.project);
    spec.labels
        .insert(LABEL_PROJECT.into(), input.project.to_string());
    spec.labels
        .insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    spec.labels
        .insert(LABEL_INTEGRATION.into(), input.integration.to_string());
    spec.labels
        .insert(LABEL_OUTPOST.into(), input.name.to_string());
    spec.labels
        .insert(LABEL_CONFIG_HASH.into(), spec.config_hash.clone());
    Ok(spec)
}

impl ContainerSpec {
    /// The health check for a container made from `image` (the spec's image or its fallback).
    pub fn healthcheck_for(&self, image: &str) -> &HealthCheck {
        match (&self.fallback_image, &self.fallback_healthcheck) {
            (Some(f), Some(h)) if f == image => h,
            _ => &self.healthcheck,
        }
    }
}

/// sha256 over the container's settings, the name excepted (a rename keeps the container).
/// Secret values enter only as an HMAC keyed by project and uuid, so the label reveals
/// nothing about them.
pub fn config_hash(spec: &ContainerSpec, project: &str) -> String {
    /// The hashed document: compact JSON, keys in this order (the order of the first
    /// implementation, a `serde_json::json!` object). Serialized straight into the hasher,
    /// without building a JSON value: this runs once per outpost on every command.
    #[derive(Serialize)]
    struct Canonical<'a> {
        image: &'a str,
        env: BTreeMap<&'a str, std::borrow::Cow<'a, str>>,
        labels: &'a BTreeMap<String, String>,
        ports: &'a [PortBinding],
        network: &'a Option<String>,
        restart_policy: &'a str,
        healthcheck: &'a HealthCheck,
        /// Only when true: the hashes of containers made before it existed stay the same.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        image_by_id: bool,
    }
    struct Hasher(Sha256);
    impl std::io::Write for Hasher {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let env = spec
        .env
        .iter()
        .map(|(k, v)| {
            let shown = match v {
                EnvValue::Plain(p) => std::borrow::Cow::Borrowed(p.as_str()),
                EnvValue::Secret(s) => std::borrow::Cow::Owned(format!(
                    "hmac:{}",
                    secret_digest(project, &spec.uuid, s.expose())
                )),
            };
            (k.as_str(), shown)
        })
        .collect();
    let canonical = Canonical {
        image: &spec.image,
        env,
        labels: &spec.labels,
        ports: &spec.ports,
        network: &spec.network,
        restart_policy: &spec.restart_policy,
        healthcheck: &spec.healthcheck,
        image_by_id: spec.image_by_id,
    };
    let mut hasher = Hasher(Sha256::new());
    // Writing to a hasher cannot fail, and every field serializes (strings, integers).
    let _ = serde_json::to_writer(&mut hasher, &canonical);
    hex::encode(hasher.0.finalize())
}

/// HMAC-SHA256 of a secret, keyed by project and outpost: comparable, not reversible.
pub fn secret_digest(project: &str, uuid: &str, secret: &str) -> String {
    let key = format!("outpostctl/{project}/{uuid}");
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(secret.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_references_as_docker_parses_them() {
        // Only the repository path counts toward 255, with `library/` for a Hub name.
        assert_eq!(
            reference_problem(&format!("ghcr.io/{}", "a".repeat(250))),
            None
        );
        assert_eq!(reference_problem(&"a".repeat(247)), None);
        assert!(reference_problem(&"a".repeat(248)).is_some());
        for ok in [
            "ghcr.io/goauthentik/proxy:2026.8.0",
            "proxy",
            "library/ubuntu:22.04",
            "localhost:5000/outpostctl-test/outpost:v1",
            "127.0.0.1:5000/a/b",
            "[::1]:5000/img:tag",
            "[fe80::1]/img",
            "Registry.Example.COM/team/img",
            "my-registry:5000/a__b/c.d/e--f_g:Tag_1.0-rc",
            "ghcr.io/goauthentik/ldap@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "img:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "outpostctl-test/outpost:latest",
            "my_registry.com/x",
            "a-b_c.d__e/x:1",
            "img@sha512:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ] {
            assert_eq!(reference_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            (" ", "contains"),
            ("ghcr.io/goauthentik/Proxy:2026.8.0", "lowercase: `Proxy`"),
            ("Proxy:1", "lowercase"),
            ("ghcr.io/goauthentik/proxy:", "tag ``"),
            ("ghcr.io/goauthentik/proxy:-x", "tag `-x`"),
            ("img@sha256:abc", "not a digest"),
            (
                "img@sha256:0123456789abcdef0123456789abcdef",
                "not a digest",
            ),
            (
                "img@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
                "not a digest",
            ),
            ("img@md5:0123456789abcdef0123456789abcdef", "not a digest"),
            ("a..b/c", "`a..b` is not a registry host"),
            ("foo/-bar", "`-bar`"),
            ("foo/bar./baz", "`bar.`"),
            ("foo/b._r", "`b._r`"),
            ("ghcr.io//proxy", "``"),
            ("ghcr.io:port/x", "not a registry host"),
        ] {
            let got = reference_problem(bad);
            assert!(
                got.as_deref().is_some_and(|g| g.contains(why)),
                "{bad:?}: {got:?}"
            );
        }
    }

    use super::*;

    #[test]
    fn slugify_like_django() {
        assert_eq!(slugify("Edge Proxy"), "edge-proxy");
        assert_eq!(slugify("  Café -- LDAP_1! "), "cafe-ldap_1");
        assert_eq!(slugify("__x__"), "x");
        assert_eq!(slugify("日本"), "");
        // Python's `\s`: the vertical tab and the ASCII separators too.
        assert_eq!(slugify("Edge\x0bProxy\x1fOne"), "edge-proxy-one");
    }

    #[test]
    fn names_follow_the_template() {
        let uuid = "5c5e0e3c4d4f4b6c9a0e1f2a3b4c5d6e";
        assert_eq!(
            container_name(DEFAULT_NAMING_TEMPLATE, "Edge Proxy", uuid),
            "ak-outpost-edge-proxy"
        );
        assert_eq!(
            container_name("AK-%(uuid)s-100%%", "x", uuid),
            format!("ak-{uuid}-100%")
        );
        assert!(check_template("ak-%(name)s-%(uuid)s", &["name", "uuid"]).is_ok());
        assert!(
            check_template("ak-%(type)s", &["name", "uuid"])
                .unwrap_err()
                .contains("%(type)s")
        );
        assert!(check_template("ak-%s", &["name"]).is_err());
        assert!(!valid_container_name("ak-outpost-100%"));
        assert!(valid_container_name(&"a".repeat(300)));
        assert!(!valid_container_name("a"));
        assert!(!valid_container_name("-ak"));
    }

    #[test]
    fn templates_take_python_widths_and_precisions() {
        // Each expected value is what Python's `template % values` gives.
        let uuid = "5c5e0e3c4d4f4b6c9a0e1f2a3b4c5d6e";
        assert_eq!(container_name("ak-%(uuid).8s", "x", uuid), "ak-5c5e0e3c");
        let v = [("name", "abc")];
        assert_eq!(fill("ak-%(name)-6s|", &v), "ak-abc   |");
        assert_eq!(fill("ak-%(name)06s|", &v), "ak-   abc|");
        assert_eq!(fill("ak-%(name).s|", &v), "ak-|");
        assert_eq!(fill("ak-%(name)ls|", &v), "ak-abc|");
        assert_eq!(fill("ak-%(name)#+ 2.2s|", &v), "ak-ab|");
        assert_eq!(fill("%(name).99s", &[("name", "é-x")]), "é-x");
        assert_eq!(fill("%(name).1s", &[("name", "é-x")]), "é");
        assert!(uses("reg/ak:%(version).4s", "version"));
        assert!(!uses("reg/ak:1", "version"));
        let err = |t: &str| check_template(t, &["name"]).unwrap_err();
        assert!(err("ak-%(name)d").contains("`%(name)d` is not a text conversion"));
        assert!(err("ak-%(name)-5r").contains("`%(name)-5r`"));
        assert!(err("ak-%(name)*s").contains("no `*`"));
        assert!(
            err("ak-%(name)9223372036854775808s")
                .contains("the width 9223372036854775808 is too big")
        );
        assert!(err("ak-%(name).2147483648s").contains("the precision 2147483648 is too big"));
        // Python accepts any width in a Py_ssize_t: one shorter than the value pads nothing.
        assert_eq!(fill("%(name)2147483648.3s", &v).len(), 3 + MAX_PAD);
        assert_eq!(fill("ak-%(name)2s", &v), "ak-abc");
        assert!(err("ak-%(name)").contains("must be followed by `s`"));
    }

    #[test]
    fn external_hosts_are_hosts_traefik_can_match() {
        for ok in [
            "app.example.com",
            "app.example.com:8443",
            "localhost",
            "10.0.0.5:443",
            "[fd00::1]",
            "[fd00::1]:443",
            "bücher.example",
            "a_b.example.com.",
        ] {
            assert!(is_host_and_port(ok), "{ok}");
        }
        for bad in [
            "",
            ":443",
            "a.example.com:99999",
            "a.example.com:0",
            "a.example.com:",
            "a.example.com:+443",
            "a.example.com)||Host(x",
            "a.example.com`",
            "a.example.com\u{1b}[2J",
            "-a.example.com",
            "a..example.com",
            "[fd00::1",
            "[fd00::1]x",
            "[not-v6]",
            "*.example.com",
        ] {
            assert!(!is_host_and_port(bad), "{bad:?}");
        }
    }

    #[test]
    fn traefik_rule_joins_hosts() {
        let l = traefik_labels(
            "ak-p",
            &[
                "https://a.example.com".into(),
                "http://b.example.com:8443/x".into(),
            ],
        );
        assert_eq!(
            l["traefik.http.routers.ak-p-router.rule"],
            "(Host(`a.example.com`) || Host(`b.example.com:8443`)) && PathPrefix(`/outpost.goauthentik.io`)"
        );
        assert!(traefik_labels("ak-p", &[]).is_empty());
        // User info is no part of a host name (authentik would put it in the rule).
        let l = traefik_labels("ak-p", &["https://user:pass@a.example.com/x".into()]);
        assert_eq!(
            l["traefik.http.routers.ak-p-router.rule"],
            "(Host(`a.example.com`)) && PathPrefix(`/outpost.goauthentik.io`)"
        );
        // A scheme in capitals, which validation accepts as authentik does: the same host.
        let l = traefik_labels(
            "ak-p",
            &[
                "HTTPS://a.example.com".into(),
                "Http://b.example.com:8443/x".into(),
            ],
        );
        assert_eq!(
            l["traefik.http.routers.ak-p-router.rule"],
            "(Host(`a.example.com`) || Host(`b.example.com:8443`)) && PathPrefix(`/outpost.goauthentik.io`)"
        );
    }

    #[test]
    fn healthcheck_follows_the_version() {
        let new = healthcheck_command(
            OutpostType::Proxy,
            "ghcr.io/goauthentik/proxy:2026.8.0",
            None,
        );
        assert_eq!(new, ["/authentik", "healthcheck", "proxy"]);
        let old = healthcheck_command(
            OutpostType::Proxy,
            "ghcr.io/goauthentik/proxy:2025.10.1",
            None,
        );
        assert_eq!(old, ["/proxy", "healthcheck"]);
        let by_version = healthcheck_command(
            OutpostType::Proxy,
            "registry:5000/proxy:latest",
            Some("2025.2"),
        );
        assert_eq!(by_version, ["/proxy", "healthcheck"]);
        assert_eq!(
            healthcheck_command(OutpostType::Ldap, "x:2026.8.0", None),
            ["/ldap", "healthcheck"]
        );
    }

    /// The config hash is written into every container's label: if it changed between two
    /// outpostctl versions, the upgrade would recreate every outpost. These values were
    /// computed by the first implementation (a `serde_json::json!` document); any other way of
    /// computing the hash must give the same ones.
    #[test]
    fn config_hash_is_stable_across_versions() {
        let settings = |network: Option<&str>, map_ports: bool| Settings {
            authentik_host: "https://AK.example.com/".into(),
            authentik_host_insecure: false,
            authentik_host_browser: String::new(),
            naming_template: DEFAULT_NAMING_TEMPLATE.into(),
            container_image: None,
            image_base: "ghcr.io/goauthentik/%(type)s:%(version)s".into(),
            version: Some("2026.8.0".into()),
            network: network.map(str::to_string),
            map_ports,
            labels: BTreeMap::from([
                (
                    "com.example.team".to_string(),
                    "infra \"edge\" é\n\u{1}".to_string(),
                ),
                ("a".to_string(), String::new()),
            ]),
            pull: PullPolicy::Missing,
            image_by_id: false,
        };
        let proxy_settings = settings(Some("traefik"), true);
        let ldap_settings = settings(None, false);
        let overrides: PortOverrides =
            BTreeMap::from([((9443, Proto::Tcp), Some(("127.0.0.1".to_string(), 8443)))]);
        let hosts = [
            "https://a.example.com".to_string(),
            "https://b.example.com:8443".into(),
        ];
        let input = |name: &'static str, kind, settings, hosts| OutpostInput {
            project: "homelab",
            integration: "local",
            name,
            kind,
            uuid: derived_uuid(name),
            token: Secret::new(format!("token-of-{name}")),
            external_hosts: hosts,
            settings,
            port_overrides: &overrides,
            healthcheck: None,
        };
        let proxy = container(&input(
            "Edge Proxy",
            OutpostType::Proxy,
            &proxy_settings,
            &hosts,
        ));
        let ldap = container(&input("Directory", OutpostType::Ldap, &ldap_settings, &[]));
        let hash = |spec: Result<ContainerSpec, Vec<Problem>>| match spec {
            Ok(s) => s.config_hash,
            Err(p) => panic!("not a valid outpost: {p:?}"),
        };
        assert_eq!(
            hash(proxy),
            "63440eed9faded88eb036b5b33f989a8cfebc39b7af7a8f5d6a687989adae9e1"
        );
        assert_eq!(
            hash(ldap),
            "4bf657b33130b2580eeb10f55f1b179c7a42d33b27e6f85da2966c75584e05f7"
        );
        // `image_by_id` enters the hash only when true (the hashes above are those of
        // containers made before it existed): switching it on recreates.
        let by_id = Settings {
            image_by_id: true,
            ..settings(None, false)
        };
        let ldap_by_id = container(&input("Directory", OutpostType::Ldap, &by_id, &[]));
        assert_ne!(
            hash(ldap_by_id),
            "4bf657b33130b2580eeb10f55f1b179c7a42d33b27e6f85da2966c75584e05f7"
        );
    }

    #[test]
    fn secret_digest_hides_the_secret() {
        let d = secret_digest("p", "u", "token-value");
        assert_eq!(d.len(), 64);
        assert!(!d.contains("token"));
        assert_ne!(d, secret_digest("p", "u", "token-valuf"));
    }
}
