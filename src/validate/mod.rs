//! Validation: schema per document, then meaning across the merged set, all errors at once.
//!
//! The result is either a `Validated` set (typed, defaults applied, secrets resolved, one
//! container spec per outpost) or the diagnostics that say why not. Nothing here contacts an
//! engine; everything downstream acts only on a `Validated` set (`validate_with` lets a
//! caller start reading engines early, see there).

pub mod schema;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::desired::{self, ContainerSpec, Proto, Secret, Settings};
use crate::diagnostics::{Diagnostic, SourceFile};
use crate::manifest::load::{self, LoadedDoc, Origin};
use crate::manifest::model::{self, Defaults, Integration, Keypair, Outpost, OutpostType};
use crate::manifest::yaml::escape;
use schema::did_you_mean;

/// How a Docker engine is reached, with the key material it needs, resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// `local: true`: DOCKER_HOST and friends, read when connecting.
    Local,
    Unix {
        path: String,
    },
    Http {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
        /// PEM of the only CA trusted, else the system roots.
        ca_pem: Option<String>,
        /// Client certificate PEM and key PEM.
        client: Option<(String, Secret)>,
    },
    Ssh {
        /// None: the ssh config's `User` applies (only when `ssh.config` is given).
        user: Option<String>,
        host: String,
        /// None: the ssh config's `Port` applies (only when `ssh.config` is given).
        port: Option<u16>,
        key: Option<Secret>,
        host_key: Option<String>,
        config: Option<PathBuf>,
    },
}

/// The engine identity of `local: true` under `docker_host` (as `Endpoint::engine_identity`),
/// DOCKER_HOST read as connecting reads it: the default socket when it is unset, the socket
/// it names, the host and port (and user) an integration would name; a value that cannot be
/// read only equals itself.
fn local_identity(docker_host: Result<crate::engine::connect::DockerHost, String>) -> String {
    match docker_host {
        Ok(h) => h.endpoint().engine_identity(),
        Err(e) => format!("local {e}"),
    }
}

impl Endpoint {
    /// Equal for two endpoints that certainly reach the same engine (the same socket; the same
    /// host and port whatever the scheme; over SSH, also the same user); different ones may
    /// still meet there.
    pub fn engine_identity(&self) -> String {
        match self {
            Endpoint::Local => local_identity(
                crate::engine::connect::DockerHost::of_process().map_err(|e| e.to_string()),
            ),
            Endpoint::Unix { path } => format!("unix {path}"),
            Endpoint::Http { host, port } | Endpoint::Tls { host, port, .. } => {
                format!("tcp {}:{port}", host.to_lowercase())
            }
            // Each user may have an engine of their own (rootless Docker).
            Endpoint::Ssh {
                user,
                host,
                port,
                config,
                ..
            } => format!(
                "ssh {user:?}@{}:{} {config:?}",
                host.to_lowercase(),
                port.map_or("config".into(), |p| p.to_string())
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct IntegrationDef {
    pub name: String,
    /// The URL as written (`local` for local engines), safe to show.
    pub url: String,
    pub endpoint: Endpoint,
    pub origin: Origin,
}

impl IntegrationDef {
    /// Where the engine is, to show: the URL as written, or for `local: true` the
    /// `DOCKER_HOST` it follows (the default socket when that is unset).
    pub fn address(&self) -> String {
        match self.endpoint {
            Endpoint::Local => local_address(crate::engine::connect::env("DOCKER_HOST").as_deref()),
            _ => self.url.clone(),
        }
    }
}

/// The engine `local: true` reaches under `docker_host` (DOCKER_HOST), to show.
/// An engine address with the password of its `user:password@` (if any) written as `***`.
pub(crate) fn without_password(address: &str) -> String {
    let (scheme, rest) = address.split_once("://").unwrap_or(("", address));
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}{user}:***{}", &rest[userinfo.len()..])
        }
        _ => address.to_string(),
    }
}

/// Whether `user` is an ssh user name outpostctl passes on: letters, digits, `.`, `_`, `-`,
/// not starting with `-` (ssh would read an option); never a `user:password`.
pub(crate) fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Whether `host` is a DNS name or an IP address: nothing a shell or ssh could read as more
/// (`ssh` expands the host into a config's `ProxyCommand`, and hints print it in commands).
/// `bracketed`: written as `[...]`, an IPv6 address.
pub(crate) fn valid_host(host: &str, bracketed: bool) -> bool {
    if bracketed {
        return host.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn local_address(docker_host: Option<&str>) -> String {
    match docker_host.filter(|h| !h.is_empty()) {
        None => format!("unix://{}", crate::engine::connect::DEFAULT_SOCKET),
        Some(h) => format!(
            "DOCKER_HOST={}",
            crate::engine::printable_line(without_password(h))
        ),
    }
}

/// A manifest set that passed validation.
#[derive(Debug, Clone)]
pub struct Validated {
    pub project: String,
    pub files: Vec<Arc<SourceFile>>,
    /// Files the manifests reference (keys, certificates, tokens), for watch mode.
    pub referenced_files: Vec<PathBuf>,
    pub integrations: BTreeMap<String, IntegrationDef>,
    /// Container specs by integration, sorted by outpost name.
    pub desired: BTreeMap<String, Vec<ContainerSpec>>,
    pub outpost_origins: BTreeMap<String, Origin>,
    pub warnings: Vec<Diagnostic>,
}

impl Validated {
    pub fn outpost_count(&self) -> usize {
        self.desired.values().map(Vec::len).sum()
    }
}

/// The outcome of validating a set: diagnostics always, the set only when there is no error.
#[derive(Debug)]
pub struct Outcome {
    pub validated: Option<Validated>,
    pub diagnostics: Vec<Diagnostic>,
    pub file_count: usize,
    /// The files the manifests were read from and those they reference (read or not), valid
    /// or not: what watch mode watches.
    pub files: Vec<PathBuf>,
}

impl Outcome {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Loads and validates the manifests under `paths`.
pub fn validate(paths: &[PathBuf]) -> Outcome {
    validate_with(paths, |_| {})
}

/// `validate`, handing the set's integrations to `integrations_ready` as soon as they are
/// resolved with no error found so far, before the outposts are checked and their containers
/// built (most of the work on a large set): `plan` and `apply` start reading the engines then,
/// and use what they read only if the whole set turns out valid. Called at most once.
pub fn validate_with(
    paths: &[PathBuf],
    integrations_ready: impl FnOnce(&BTreeMap<String, IntegrationDef>),
) -> Outcome {
    let loaded = load::load(paths);
    let file_count = loaded.file_count;
    let mut v = Checker {
        diags: loaded.diagnostics,
        ..Checker::default()
    };
    if content_unknown(&v.diags) {
        // A file that could not be read or parsed may define the project, defaults,
        // integrations and keypairs the others use: nothing may be called missing.
        v.partial = true;
        v.failed_entries.insert(("defaults", None));
    }
    for doc in &loaded.docs {
        v.document(doc);
    }
    let mut files: Vec<PathBuf> = loaded.files.iter().map(|f| f.path.clone()).collect();
    let validated = v.finish(loaded.files, integrations_ready);
    files.extend(match &validated {
        Some(v) => v.referenced_files.clone(),
        None => v.referenced_files.clone(),
    });
    files.sort();
    files.dedup();
    let mut diagnostics = v.diags;
    crate::diagnostics::sort(&mut diagnostics);
    // A mistake in `defaults:` is found once per outpost that inherits it: show it once.
    diagnostics.dedup_by(|a, b| {
        a.code == b.code && a.severity == b.severity && a.headline() == b.headline()
    });
    // One unset variable read by many outposts is one error, listing where it is read.
    crate::diagnostics::fold_repeated_causes(&mut diagnostics);
    let has_errors = diagnostics.iter().any(Diagnostic::is_error);
    let validated = validated.filter(|_| !has_errors).map(|mut v| {
        v.warnings = diagnostics.clone();
        v
    });
    Outcome {
        validated,
        diagnostics,
        file_count,
        files,
    }
}

/// Whether one of the loader's `diagnostics` says a file's content is unknown (it could not be
/// read or parsed), rather than known to be empty (a file with no document, a directory with
/// no manifest).
fn content_unknown(diagnostics: &[Diagnostic]) -> bool {
    diagnostics
        .iter()
        .any(|d| d.is_error() && !matches!(d.code, "empty-file" | "no-manifests"))
}

/// `chmod 600 PATH`, with PATH quoted for a POSIX shell when it holds more than
/// `[A-Za-z0-9_./@%+=:,-]` (a space would make it two paths), so that the hint runs as shown.
#[cfg(unix)]
fn chmod_600(path: &Path) -> String {
    let path = path.display().to_string();
    // A path starting with `-` would be read as an option.
    let end_of_options = if path.starts_with('-') { "-- " } else { "" };
    format!("chmod 600 {end_of_options}{}", shell_quote(&path))
}

/// `s` as one word for a POSIX shell: as it is when every character is one of
/// `[A-Za-z0-9_./@%+=:,-]`, else in single quotes, a `'` written as `'\''`.
#[cfg(unix)]
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./@%+=:,-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// An entry that failed the schema: its section and its name (which may be empty: `"":` is
/// an entry, named by the pointer `/outposts/`), or None for the whole of `project` or
/// `defaults:`.
type FailedEntry = (&'static str, Option<String>);

/// The integrations that reach one engine and their outposts' containers.
type EngineUse<'a> = (Vec<&'a str>, Vec<&'a Built>);

/// A host IP bound by an outpost's container, for collision checks.
type HostPortUse<'a> = (&'a str, &'a Built);

/// An outpost's container as far as it is known, for the checks across outposts (names and
/// host ports per engine). One with an error of its own (an unset token, a `ports` value
/// that is not a binding) is built all the same, so that its collisions are found in the
/// same run; only a `complete` one is ever handed on.
struct Built {
    spec: ContainerSpec,
    origin: Origin,
    /// Whether its name is what it will be (its naming template is known).
    name_known: bool,
    /// Whether its host ports are what they will be (`docker_map_ports` and `ports` known).
    ports_known: bool,
    /// Built from the outpost's own values only, no placeholder: the container to deploy.
    complete: bool,
}

/// The keys of `defaults:` whose values are not known (they failed the schema): what the
/// outposts inherit there is not checked.
#[derive(Default)]
struct UnknownDefaults {
    /// Every key: `defaults:` failed as a whole, or a file or document was not read.
    all: bool,
    keys: BTreeSet<String>,
}

impl UnknownDefaults {
    fn contains(&self, key: &str) -> bool {
        self.all || self.keys.contains(key)
    }

    fn any(&self) -> bool {
        self.all || !self.keys.is_empty()
    }
}

/// What an outpost's `Settings` are worth.
struct SettingsKnown {
    /// All its own, and without error: the container to deploy.
    valid: bool,
    /// Its naming template is known and valid: the container name is what it will be.
    name: bool,
    /// Its `docker_map_ports` is known: whether ports are published is.
    ports: bool,
}

struct Named<T> {
    value: T,
    origin: Origin,
}

#[derive(Default)]
struct Checker {
    diags: Vec<Diagnostic>,
    project: Option<(String, Origin)>,
    /// Defaults merged key by key: key -> (value, origin of the key).
    defaults: BTreeMap<String, (Value, Origin)>,
    keypairs: BTreeMap<String, Named<Keypair>>,
    integrations: BTreeMap<String, Named<Integration>>,
    outposts: BTreeMap<String, Named<Outpost>>,
    referenced_files: Vec<PathBuf>,
    saw_document: bool,
    first_origin: Option<Origin>,
    /// The first `project:` written with no value, where a missing project is reported.
    empty_project: Option<Origin>,
    /// A document failed the schema: what it defines is unknown, so cross-document checks
    /// (references, the project) would report mistakes that are not there.
    partial: bool,
    /// Named entries (`("integrations", Some(name))`, ...) that failed the schema in a document
    /// whose other entries are checked: references to them are not reported as unknown.
    failed_entries: BTreeSet<FailedEntry>,
    /// Outposts that failed the schema, whose `integration` is a name all the same: the
    /// reference is still checked, so that a typo there is reported in the same run.
    failed_outpost_refs: Vec<(String, Origin)>,
    /// Image template errors already reported (one template set in `defaults:`, or authentik's
    /// default, is shared by many outposts: one error, not one per outpost).
    template_errors: BTreeSet<String>,
    /// The environment's UTF-8 variables, read once on the first `{ env: ... }` (a lookup in
    /// the process environment is a linear search: a set of 1,000 tokens from the environment
    /// made a million string comparisons).
    env: Option<HashMap<String, String>>,
}

impl Checker {
    /// The variable `name` of the environment: None when it is not set (or not UTF-8).
    fn env_var(&mut self, name: &str) -> Option<&String> {
        self.env
            .get_or_insert_with(|| {
                std::env::vars_os()
                    .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                    .collect()
            })
            .get(name)
    }

    fn document(&mut self, doc: &LoadedDoc) {
        self.saw_document = true;
        if self.first_origin.is_none() {
            self.first_origin = Some(doc.origin.clone());
        }
        let checked = schema::check(doc);
        let failed = !checked.diagnostics.is_empty();
        self.diags.extend(checked.diagnostics);
        self.ignored_keys(doc);
        let pruned;
        let mut failed_refs = Vec::new();
        let value = if failed {
            // Entries that passed are still checked for meaning, so that one run reports
            // every error; a failure outside a named entry leaves the document unknown.
            match without_failed_entries(&doc.value, &checked.failed_at) {
                Some((value, failed_entries)) => {
                    failed_refs = integration_refs(doc, &failed_entries, &checked.failed_at);
                    self.failed_entries.extend(failed_entries);
                    pruned = value;
                    &pruned
                }
                None => {
                    self.partial = true;
                    if doc.value.get("defaults").is_some() {
                        // Defaults the set would have: what outposts inherit is not known.
                        self.failed_entries.insert(("defaults", None));
                    }
                    return;
                }
            }
        } else {
            &doc.value
        };
        // A document without `version` (reported) is read as version 1.
        let versioned;
        let value = match value.as_object() {
            Some(map) if !map.contains_key("version") => {
                let mut map = map.clone();
                map.insert("version".into(), 1.into());
                versioned = Value::Object(map);
                &versioned
            }
            _ => value,
        };
        let parsed: model::Document = match serde_path_to_error::deserialize(value) {
            Ok(d) => d,
            Err(e) => {
                let pointer = path_to_pointer(&e.path().to_string());
                let key = e.path().to_string();
                let inner = e.inner().to_string();
                // JSON Schema calls 1.0 an integer; the program's types do not.
                let (message, hint) = if inner.contains("floating point") {
                    let found = inner.split('`').nth(1).unwrap_or("a decimal number");
                    (
                        format!("`{key}` must be a whole number, found `{found}`"),
                        "write it without a decimal point (`1`, not `1.0`)".to_string(),
                    )
                } else {
                    (
                        format!("`{key}`: {inner}"),
                        "see `outpostctl schema` for what this key takes".to_string(),
                    )
                };
                self.diags.push(
                    Diagnostic::error("invalid-value", message)
                        .at(doc.origin.child(&pointer).value())
                        .hint(hint),
                );
                // What the document defines is unknown: checks across the set must not
                // report what it may hold (its project, integrations, defaults).
                self.partial = true;
                if doc.value.get("defaults").is_some() {
                    self.failed_entries.insert(("defaults", None));
                }
                return;
            }
        };
        // Only now that the document's integrations are known too.
        self.failed_outpost_refs.extend(failed_refs);
        let origin = &doc.origin;
        if parsed.project.is_none()
            && value.get("project").is_some_and(Value::is_null)
            && self.empty_project.is_none()
        {
            self.empty_project = Some(origin.child("/project"));
        }
        if let Some(p) = parsed.project {
            let here = origin.child("/project");
            match &self.project {
                Some((_, first)) => self.diags.push(
                    Diagnostic::error("duplicate-project", "`project` is defined twice in the set")
                        .at(here.key())
                        .related(first.key(), "first defined here")
                        .hint("define `project` in exactly one document"),
                ),
                None => self.project = Some((p, here)),
            }
        }
        if let Some(obj) = value.get("defaults").and_then(Value::as_object) {
            for (k, v) in obj {
                let here = origin.child(&format!("/defaults/{}", escape(k)));
                if let Some((_, first)) = self.defaults.get(k) {
                    self.diags.push(
                        Diagnostic::error(
                            "duplicate-name",
                            format!("`defaults.{k}` is defined twice in the set"),
                        )
                        .at(here.key())
                        .related(first.key(), "first defined here")
                        .hint("set each default once"),
                    );
                } else {
                    self.defaults.insert(k.clone(), (v.clone(), here));
                }
            }
        }
        merge(
            &mut self.diags,
            &mut self.keypairs,
            parsed.keypairs,
            origin,
            "keypairs",
            "keypair",
        );
        merge(
            &mut self.diags,
            &mut self.integrations,
            parsed.integrations,
            origin,
            "integrations",
            "integration",
        );
        merge(
            &mut self.diags,
            &mut self.outposts,
            parsed.outposts,
            origin,
            "outposts",
            "outpost",
        );
    }

    /// authentik keys that do not apply to Docker: accepted, reported as warnings.
    fn ignored_keys(&mut self, doc: &LoadedDoc) {
        let mut objects: Vec<(String, &serde_json::Map<String, Value>)> = Vec::new();
        if let Some(d) = doc.value.get("defaults").and_then(Value::as_object) {
            objects.push(("/defaults".into(), d));
        }
        if let Some(o) = doc.value.get("outposts").and_then(Value::as_object) {
            for (name, outpost) in o {
                if let Some(c) = outpost.get("config").and_then(Value::as_object) {
                    objects.push((format!("/outposts/{}/config", escape(name)), c));
                }
            }
        }
        // One warning per settings block, so a pasted authentik block is not a wall of them.
        // A value the schema refuses gets its error alone: "accepted" would contradict it.
        let accepted = |k: &str, v: &Value| match k {
            "log_level" => {
                v.is_null()
                    || serde_json::from_value::<crate::manifest::model::LogLevel>(v.clone()).is_ok()
            }
            "refresh_interval" => v.is_null() || v.is_string(),
            _ => k.starts_with("kubernetes_"),
        };
        for (base, obj) in objects {
            let ignored: Vec<&String> = obj
                .iter()
                .filter(|(k, v)| accepted(k, v))
                .map(|(k, _)| k)
                .collect();
            let Some(first) = ignored.first() else {
                continue;
            };
            let list = crate::render::code_list(&ignored);
            let verb = if ignored.len() == 1 { "has" } else { "have" };
            self.diags.push(
                Diagnostic::warning("ignored-key", format!("{list} {verb} no effect on Docker"))
                    .at(doc.origin.child(&format!("{base}/{}", escape(first))).key())
                    .label("accepted, no effect")
                    .hint("authentik's Kubernetes settings do not apply to Docker, and the outpost reads log_level and refresh_interval from authentik itself"),
            );
        }
    }

    fn failed_entry(&self, kind: &'static str, name: &str) -> bool {
        self.failed_entries
            .contains(&(kind, Some(name.to_string())))
    }

    /// Whether the whole of `kind` (`project`, `defaults`) failed.
    fn failed_whole(&self, kind: &'static str) -> bool {
        self.failed_entries.contains(&(kind, None))
    }

    fn finish(
        &mut self,
        files: Vec<Arc<SourceFile>>,
        integrations_ready: impl FnOnce(&BTreeMap<String, IntegrationDef>),
    ) -> Option<Validated> {
        if !self.saw_document {
            return None;
        }
        let project = match &self.project {
            Some((p, _)) => p.clone(),
            None if self.partial || self.failed_whole("project") => String::new(),
            None => {
                let mut d = Diagnostic::error(
                    "missing-project",
                    "no `project` is defined in the manifest set",
                );
                d = match &self.empty_project {
                    // `project:` with no value: there, saying what to write.
                    Some(o) => d.at(o.key()).label("no value").hint("`project:` has no value; name the project, e.g. `project: homelab`: it scopes which containers outpostctl owns and may prune"),
                    None => {
                        d = d.hint("add `project: <name>` to one document; it scopes which containers outpostctl owns and may prune");
                        match &self.first_origin {
                            Some(o) => d.at(o.value()),
                            None => d,
                        }
                    }
                };
                self.diags.push(d);
                String::new()
            }
        };
        let defaults = self.merged_defaults();
        let keypairs = self.resolve_keypairs();
        let integrations = self.resolve_integrations(&keypairs);
        if !self.diags.iter().any(Diagnostic::is_error) {
            integrations_ready(&integrations);
        }
        let desired = self.outposts_to_specs(&project, defaults.as_ref(), &integrations);
        // An empty set is valid (the way to remove every outpost), but an easy accident: a
        // directory left out of the paths, an `outposts:` key mistyped in a broken document.
        if let Some((p, at)) = &self.project
            && self.outposts.is_empty()
            && !self.partial
            && !self
                .failed_entries
                .iter()
                .any(|(kind, _)| *kind == "outposts")
            && !self.diags.iter().any(Diagnostic::is_error)
        {
            self.diags.push(
                Diagnostic::warning(
                    "no-outposts",
                    format!("the set defines no outposts: `apply` removes every container of project `{p}` on its integrations"),
                )
                .at(at.key())
                .hint("if that is not the intent, check the paths given to outpostctl: every file of the set must be read in one run"),
            );
        }
        let outpost_origins = self
            .outposts
            .iter()
            .map(|(k, n)| (k.clone(), n.origin.clone()))
            .collect();
        Some(Validated {
            project,
            files,
            referenced_files: std::mem::take(&mut self.referenced_files),
            integrations,
            desired,
            outpost_origins,
            // Filled in by `validate`, from the sorted and deduplicated diagnostics.
            warnings: Vec::new(),
        })
    }

    fn merged_defaults(&mut self) -> Option<(Defaults, BTreeMap<String, Origin>)> {
        let obj: serde_json::Map<String, Value> = self
            .defaults
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        let origins = self
            .defaults
            .iter()
            .map(|(k, (_, o))| (k.clone(), o.clone()))
            .collect();
        // Each document's defaults passed the schema, and the union of disjoint keys does too.
        serde_json::from_value(Value::Object(obj))
            .ok()
            .map(|d| (d, origins))
    }

    /// Reads a source; diagnostics point at the reference.
    fn read_source(
        &mut self,
        file: Option<&str>,
        env: Option<&str>,
        value: Option<&str>,
        at: &Origin,
        secret: bool,
    ) -> Option<String> {
        if let Some(v) = value {
            return Some(v.to_string());
        }
        // The token itself pasted where the name of its variable or file goes.
        for (field, given, code, what, hint) in [
            (
                "env",
                env,
                "missing-env",
                "a variable's name",
                "write the name of the variable that holds the token (`env: AK_TOKEN`) and set that variable; a token never goes into a manifest",
            ),
            (
                "file",
                file,
                "unreadable-file",
                "a file's path",
                "write the path of the file that holds the token (`file: tokens/edge.token`); a token never goes into a manifest",
            ),
        ] {
            if let Some(given) =
                given.filter(|g| secret && crate::manifest::load::looks_like_a_token(g))
            {
                self.diags.push(
                    Diagnostic::error(
                        code,
                        format!("`{field}` holds what looks like a token ({} characters, not repeated here), not {what}", given.len()),
                    )
                    .at(at.child(&format!("/{field}")).value())
                    .label("the token itself?")
                    .hint(hint),
                );
                return None;
            }
        }
        if let Some(name) = env {
            if secret {
                remember_secret_env(name);
            }
            return match self.env_var(name).cloned() {
                Some(v) if !v.is_empty() => Some(v),
                Some(_) => {
                    self.diags.push(
                        Diagnostic::error(
                            "missing-env",
                            format!("environment variable `{name}` is empty"),
                        )
                        .at(at.child("/env").value())
                        .label("empty")
                        .hint(format!("set `{name}` in outpostctl's environment")),
                    );
                    None
                }
                None if std::env::var_os(name).is_some() => {
                    self.diags.push(
                        Diagnostic::error(
                            "missing-env",
                            format!("environment variable `{name}` is not UTF-8 text"),
                        )
                        .at(at.child("/env").value())
                        .label("not UTF-8")
                        .hint(format!("set `{name}` to the value as text (authentik's tokens and keys are ASCII)")),
                    );
                    None
                }
                None => {
                    self.diags.push(
                        Diagnostic::error("missing-env", format!("environment variable `{name}` is not set"))
                            .at(at.child("/env").value())
                            .label("not set")
                            .hint(format!("set `{name}` in outpostctl's environment, e.g. `export {name}=...` or a CI secret")),
                    );
                    None
                }
            };
        }
        let Some(file) = file else {
            self.diags.push(
                Diagnostic::error("invalid-source", "the source names no file, env or value")
                    .at(at.key())
                    .hint("write e.g. `{ env: VARIABLE }` or `{ file: path }`"),
            );
            return None;
        };
        let path = resolve_path(file, &at.base_dir());
        self.referenced_files.push(path.clone());
        match read_small_file(&path) {
            Ok(text) => {
                if secret {
                    self.check_private_permissions(&path, at);
                }
                Some(text)
            }
            Err(e) => {
                let reason = match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file".to_string(),
                    std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                    _ => e.to_string(),
                };
                self.diags.push(
                    Diagnostic::error("unreadable-file", format!("cannot read `{}`: {reason}", path.display()))
                        .at(at.child("/file").value())
                        .label("referenced here")
                        .hint("paths are relative to the manifest file that names them; `~` is your home directory")
                        .transient(&e),
                );
                None
            }
        }
    }

    #[cfg(unix)]
    fn check_private_permissions(&mut self, path: &Path, at: &Origin) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            let mode = m.permissions().mode();
            if mode & 0o077 != 0 {
                self.diags.push(
                    Diagnostic::warning(
                        "key-permissions",
                        format!(
                            "`{}` is accessible to group or others (mode {:o})",
                            path.display(),
                            mode & 0o777
                        ),
                    )
                    .at(at.child("/file").value())
                    .label("secret file")
                    .hint(format!("restrict it: `{}`", chmod_600(path))),
                );
            }
        }
    }

    #[cfg(not(unix))]
    fn check_private_permissions(&mut self, _: &Path, _: &Origin) {}

    fn resolve_keypairs(&mut self) -> BTreeMap<String, (Option<String>, Option<Secret>)> {
        let mut out = BTreeMap::new();
        let entries: Vec<(String, Keypair, Origin)> = self
            .keypairs
            .iter()
            .map(|(k, n)| (k.clone(), n.value.clone(), n.origin.clone()))
            .collect();
        for (name, kp, origin) in entries {
            if kp.certificate.is_none() && kp.key.is_none() {
                // `certificate:` or `key:` written with no value: what to write there.
                let written = ["certificate", "key"]
                    .into_iter()
                    .find(|k| origin.child(&format!("/{k}")).exists());
                let hint = match written {
                    Some(k) => format!(
                        "`{k}:` has no value; name where it is: `{k}: {{ file: PATH }}` or `{k}: {{ env: VARIABLE }}`"
                    ),
                    None => "give it a `certificate` (a CA for tls_verification), a `key`, or both"
                        .to_string(),
                };
                self.diags.push(
                    Diagnostic::error(
                        "empty-keypair",
                        format!("keypair `{name}` has neither `certificate` nor `key`"),
                    )
                    .at(origin.key())
                    .hint(hint),
                );
            }
            let cert = kp.certificate.as_ref().and_then(|c| {
                let at = origin.child("/certificate");
                let text = self.read_source(
                    c.file.as_deref(),
                    c.env.as_deref(),
                    c.value.as_deref(),
                    &at,
                    false,
                )?;
                if !text.contains("-----BEGIN CERTIFICATE-----") {
                    self.diags.push(
                        Diagnostic::error(
                            "not-pem",
                            format!("keypair `{name}`: the certificate is not a PEM certificate"),
                        )
                        .at(at.key())
                        .hint("expected text starting with `-----BEGIN CERTIFICATE-----`"),
                    );
                    return None;
                }
                Some(text)
            });
            let key = kp.key.as_ref().and_then(|k| {
                let at = origin.child("/key");
                let text =
                    self.read_source(k.file.as_deref(), k.env.as_deref(), None, &at, true)?;
                if !text.contains("PRIVATE KEY-----") {
                    self.diags.push(
                        Diagnostic::error(
                            "not-pem",
                            format!(
                                "keypair `{name}`: the key is not a PEM or OpenSSH private key"
                            ),
                        )
                        .at(at.key())
                        .hint("expected text starting with `-----BEGIN ... PRIVATE KEY-----`"),
                    );
                    return None;
                }
                Some(Secret::new(text))
            });
            out.insert(name, (cert, key));
        }
        out
    }

    fn keypair_ref(
        &mut self,
        name: &str,
        at: &Origin,
        keypairs: &BTreeMap<String, (Option<String>, Option<Secret>)>,
    ) -> Option<(Option<String>, Option<Secret>)> {
        match keypairs.get(name) {
            Some(kp) => Some(kp.clone()),
            None if self.partial || self.failed_entry("keypairs", name) => None,
            None => {
                let hint = did_you_mean(name, keypairs.keys().map(String::as_str))
                    .unwrap_or_else(|| "define it under `keypairs:`".into());
                self.diags.push(
                    Diagnostic::error("unknown-keypair", format!("unknown keypair `{name}`"))
                        .at(at.value())
                        .label("no keypair of this name")
                        .hint(hint),
                );
                None
            }
        }
    }

    fn resolve_integrations(
        &mut self,
        keypairs: &BTreeMap<String, (Option<String>, Option<Secret>)>,
    ) -> BTreeMap<String, IntegrationDef> {
        let mut out = BTreeMap::new();
        let entries: Vec<(String, Integration, Origin)> = self
            .integrations
            .iter()
            .map(|(k, n)| (k.clone(), n.value.clone(), n.origin.clone()))
            .collect();
        let mut first_by_engine: HashMap<String, (String, Origin)> = HashMap::new();
        for (name, i, origin) in entries {
            if let Some(def) = self.integration(&name, &i, &origin, keypairs) {
                let identity = def.endpoint.engine_identity();
                if let Some((first, first_origin)) = first_by_engine.get(&identity) {
                    self.diags.push(
                        Diagnostic::warning(
                            "same-engine",
                            format!("integrations `{first}` and `{name}` reach the same engine"),
                        )
                        .at(origin.key())
                        .related(first_origin.key(), "the other integration")
                        .hint("each manages only its own outposts' containers, and names and host ports are checked across both; one integration per engine is simpler"),
                    );
                } else {
                    first_by_engine.insert(identity, (name.clone(), origin.clone()));
                }
                out.insert(name, def);
            }
        }
        out
    }

    fn integration(
        &mut self,
        name: &str,
        i: &Integration,
        origin: &Origin,
        keypairs: &BTreeMap<String, (Option<String>, Option<Secret>)>,
    ) -> Option<IntegrationDef> {
        let err = |code, msg: String| Diagnostic::error(code, msg);
        let local = i.local.unwrap_or(false);
        let url = match (local, &i.url) {
            (true, Some(_)) => {
                self.diags.push(
                    err(
                        "integration-kind",
                        format!("integration `{name}` sets both `local: true` and `url`"),
                    )
                    .at(origin.child("/url").key())
                    .hint("use `local: true` for this machine's engine, or a `url`, not both"),
                );
                return None;
            }
            (true, None) => {
                for field in ["tls_verification", "tls_authentication", "ssh"] {
                    let at = origin.child(&format!("/{field}"));
                    if at.exists() {
                        self.diags.push(
                            err("integration-kind", format!("`{field}` has no effect with `local: true`"))
                                .at(at.key())
                                .hint("a local engine is configured by DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH"),
                        );
                    }
                }
                return Some(IntegrationDef {
                    name: name.to_string(),
                    url: "local".into(),
                    endpoint: Endpoint::Local,
                    origin: origin.clone(),
                });
            }
            (false, None) => {
                self.diags.push(
                    err(
                        "integration-kind",
                        format!("integration `{name}` needs `local: true` or a `url`"),
                    )
                    .at(origin.key())
                    .hint("for example `url: \"ssh://authentik@host:22\"` or `local: true`"),
                );
                return None;
            }
            (false, Some(u)) => u.clone(),
        };
        let url_at = origin.child("/url");
        let Some((scheme, rest)) = url.split_once("://") else {
            return None; // the schema's pattern already reported it
        };
        // A user (and a password) before the host: ssh:// takes a user, nothing takes a
        // password (a secret written into the manifest; not repeated).
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some((userinfo, _)) = rest[..authority_end].rsplit_once('@') {
            let refused = if userinfo.contains(':') {
                Some((
                    format!("the {scheme}:// URL holds a password (not repeated here)"),
                    "remove it: a password is never written into a manifest; ssh logs in with the `tls_authentication` key, TLS with its client certificate",
                ))
            } else if scheme != "ssh" {
                Some((
                    format!("{scheme}:// URLs take no user name"),
                    "remove `USER@`: only ssh:// URLs name a user",
                ))
            } else {
                None
            };
            if let Some((message, hint)) = refused {
                self.diags
                    .push(err("invalid-url", message).at(url_at.value()).hint(hint));
                return None;
            }
        }
        let tls_v = origin.child("/tls_verification");
        let tls_a = origin.child("/tls_authentication");
        let ssh_at = origin.child("/ssh");
        if scheme != "ssh" && ssh_at.exists() {
            self.diags.push(
                err(
                    "integration-kind",
                    "`ssh` options only apply to ssh:// URLs".into(),
                )
                .at(ssh_at.key())
                .hint("remove `ssh:` or use an ssh:// URL"),
            );
        }
        let endpoint = match scheme {
            "unix" | "http" => {
                for at in [&tls_v, &tls_a] {
                    if at.exists() {
                        self.diags.push(
                            err(
                                "plain-with-tls",
                                format!(
                                    "`{}` needs a TLS URL; {scheme}:// is not encrypted",
                                    field_of(at)
                                ),
                            )
                            .at(at.key())
                            .hint(format!(
                                "use https:// for TLS, or remove `{}`",
                                field_of(at)
                            )),
                        );
                    }
                }
                if scheme == "unix" {
                    if rest.is_empty() || !rest.starts_with('/') {
                        self.diags.push(
                            err("invalid-url", format!("`{url}` is not a socket path"))
                                .at(url_at.value())
                                .hint("write the absolute path: `unix:///var/run/docker.sock`"),
                        );
                        return None;
                    }
                    Endpoint::Unix {
                        path: rest.to_string(),
                    }
                } else {
                    let (host, port) = self.host_port(&url, rest, &url_at, None)?;
                    Endpoint::Http { host, port }
                }
            }
            "https" | "tcp" => {
                let (host, port) = self.host_port(&url, rest, &url_at, None)?;
                let ca_pem = match &i.tls_verification {
                    Some(kp) => {
                        let (cert, _) = self.keypair_ref(kp, &tls_v, keypairs)?;
                        if cert.is_none()
                            && self
                                .keypairs
                                .get(kp)
                                .is_some_and(|n| n.value.certificate.is_none())
                        {
                            self.diags.push(
                                err("keypair-needs-certificate", format!("keypair `{kp}` has no `certificate` to verify the engine with"))
                                    .at(tls_v.value())
                                    .hint("tls_verification needs the CA certificate that signed the engine's certificate"),
                            );
                        }
                        cert
                    }
                    None => None,
                };
                let client = match &i.tls_authentication {
                    Some(kp) => {
                        let (cert, key) = self.keypair_ref(kp, &tls_a, keypairs)?;
                        let def = self
                            .keypairs
                            .get(kp)
                            .map(|n| n.value.clone())
                            .unwrap_or_default();
                        if def.key.is_none() || def.certificate.is_none() {
                            self.diags.push(
                                err("keypair-needs-key", format!("keypair `{kp}` needs both `certificate` and `key` for TLS client authentication"))
                                    .at(tls_a.value())
                                    .hint("tls_authentication is the client certificate and its private key"),
                            );
                            None
                        } else {
                            let pair = cert.zip(key);
                            // Checked here, with a place, rather than when the engine is
                            // reached (which a CI plan of another integration would not do).
                            let problem = pair
                                .as_ref()
                                .and_then(|(c, k)| crate::engine::tls::client_pair_problem(c, k));
                            if let Some(problem) = problem {
                                let at = self
                                    .keypairs
                                    .get(kp)
                                    .map(|n| n.origin.child("/key").key())
                                    .unwrap_or_else(|| tls_a.value());
                                self.diags.push(
                                    err("bad-keypair", format!("keypair `{kp}`: {problem}"))
                                        .at(at)
                                        .hint("a TLS client keypair is a certificate and the private key it was issued for"),
                                );
                                None
                            } else {
                                pair
                            }
                        }
                    }
                    None => None,
                };
                Endpoint::Tls {
                    host,
                    port,
                    ca_pem,
                    client,
                }
            }
            "ssh" => {
                if tls_v.exists() {
                    self.diags.push(
                        err(
                            "plain-with-tls",
                            "`tls_verification` does not apply to ssh://".into(),
                        )
                        .at(tls_v.key())
                        .hint("pin the host key with `ssh.host_key` instead"),
                    );
                }
                // The user is before the host, not in a path (`ssh://h:22/x@y`).
                let (userinfo, hostport) = match rest[..authority_end].rsplit_once('@') {
                    Some((u, _)) => (Some(u), &rest[u.len() + 1..]),
                    None => (None, rest),
                };
                let (host, port) = self.host_port(&url, hostport, &url_at, Some(22))?;
                let explicit_port = hostport
                    .trim_end_matches('/')
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| !p.contains(']'));
                // With a custom ssh config, what the URL leaves out is the config's to decide.
                let custom_config = i.ssh.as_ref().is_some_and(|s| s.config.is_some());
                let user = userinfo.unwrap_or("authentik").to_string();
                if !valid_user(&user) {
                    self.diags.push(
                        err(
                            "invalid-url",
                            format!("`{user}` is not a valid ssh user name"),
                        )
                        .at(url_at.value())
                        .hint("user names use letters, digits, `.`, `_` and `-`"),
                    );
                    return None;
                }
                let key = match &i.tls_authentication {
                    Some(kp) => {
                        let (_, key) = self.keypair_ref(kp, &tls_a, keypairs)?;
                        if self.keypairs.get(kp).is_some_and(|n| n.value.key.is_none()) {
                            self.diags.push(
                                err("keypair-needs-key", format!("keypair `{kp}` has no `key` to log in with"))
                                    .at(tls_a.value())
                                    .hint("for ssh:// integrations tls_authentication is the SSH private key"),
                            );
                        }
                        if let Some((problem, hint)) = key
                            .as_ref()
                            .and_then(|k| crate::engine::ssh::key_problem(k.expose()))
                        {
                            self.diags.push(
                                err(
                                    "bad-keypair",
                                    format!("keypair `{kp}`: the ssh key cannot log in: {problem}"),
                                )
                                .at(tls_a.value())
                                .hint(hint),
                            );
                        }
                        key
                    }
                    None => None,
                };
                let ssh = i.ssh.clone().unwrap_or_default();
                let config = ssh.config.as_ref().and_then(|c| {
                    let p = resolve_path(c, &origin.base_dir());
                    if p.is_file() {
                        self.referenced_files.push(p.clone());
                        Some(p)
                    } else {
                        self.diags.push(
                            err("unreadable-file", format!("ssh config `{}` does not exist", p.display()))
                                .at(origin.child("/ssh/config").value())
                                .hint("paths are relative to the manifest file; `~` is your home directory"),
                        );
                        None
                    }
                });
                Endpoint::Ssh {
                    user: (userinfo.is_some() || !custom_config).then_some(user),
                    host,
                    port: (explicit_port || !custom_config).then_some(port),
                    key,
                    host_key: ssh.host_key.clone(),
                    config,
                }
            }
            _ => return None,
        };
        Some(IntegrationDef {
            name: name.to_string(),
            url,
            endpoint,
            origin: origin.clone(),
        })
    }

    /// `host:port` of a URL's authority; `default_port` when the scheme has one.
    fn host_port(
        &mut self,
        url: &str,
        rest: &str,
        at: &Origin,
        default_port: Option<u16>,
    ) -> Option<(String, u16)> {
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !path.is_empty() && path != "/" {
            let scheme = url.split("://").next().unwrap_or_default();
            self.diags.push(
                Diagnostic::error(
                    "invalid-url",
                    format!("`{url}` has a path; {scheme}:// URLs name a host and port only"),
                )
                .at(at.value())
                .label("path not allowed")
                .hint(format!("remove `{path}`")),
            );
            return None;
        }
        let no_host = |hint: &str| {
            Diagnostic::error("invalid-url", format!("`{url}` has no valid host"))
                .at(at.value())
                .hint(hint)
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            match h.split_once(']') {
                Some((ip, "")) => (ip.to_string(), None),
                Some((ip, p)) if p.starts_with(':') => (ip.to_string(), p.strip_prefix(':')),
                _ => {
                    self.diags.push(no_host(
                        "write an IPv6 address in brackets, the port after them: `scheme://[fd00::1]:2376`",
                    ));
                    return None;
                }
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    self.diags.push(no_host(
                        "write an IPv6 address in brackets, the port after them: `scheme://[fd00::1]:2376`",
                    ));
                    return None;
                }
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if !valid_host(&host, authority.starts_with('[')) {
            self.diags.push(no_host(
                "write `scheme://host:port`: the host is a DNS name (letters, digits, `.`, `-`, `_`), an IPv4 address or an IPv6 address in brackets",
            ));
            return None;
        }
        let port = match (port, default_port) {
            (Some(p), _) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    self.diags.push(
                        Diagnostic::error("invalid-url", format!("`{p}` is not a port"))
                            .at(at.value())
                            .hint("ports are 1 to 65535"),
                    );
                    return None;
                }
            },
            (None, Some(d)) => d,
            (None, None) => {
                let scheme = url.split("://").next().unwrap_or_default();
                let example = if scheme == "http" { 2375 } else { 2376 };
                self.diags.push(
                    Diagnostic::error("missing-port", format!("`{url}` needs a port"))
                        .at(at.value())
                        .label("no port")
                        .hint(format!(
                            "{scheme}:// URLs need an explicit port, e.g. `{}:{example}`",
                            url.trim_end_matches('/')
                        )),
                );
                return None;
            }
        };
        Some((host, port))
    }

    /// Whether the outpost at `origin` refers to a defined integration; reports an unknown
    /// one (one that failed the schema, or a set only partly known, is not reported).
    fn integration_ref(&mut self, integration: &str, origin: &Origin) -> bool {
        if self.integrations.contains_key(integration) {
            return true;
        }
        if self.partial || self.failed_entry("integrations", integration) {
            return false;
        }
        let hint = did_you_mean(integration, self.integrations.keys().map(String::as_str))
            .unwrap_or_else(|| "define it under `integrations:`".into());
        self.diags.push(
            Diagnostic::error(
                "unknown-integration",
                format!("unknown integration `{integration}`"),
            )
            .at(origin.child("/integration").value())
            .label("no integration of this name")
            .hint(hint),
        );
        false
    }

    fn outposts_to_specs(
        &mut self,
        project: &str,
        defaults: Option<&(Defaults, BTreeMap<String, Origin>)>,
        integrations: &BTreeMap<String, IntegrationDef>,
    ) -> BTreeMap<String, Vec<ContainerSpec>> {
        let mut by_integration: BTreeMap<String, Vec<Built>> = BTreeMap::new();
        let mut uuids: HashMap<String, (String, Origin)> = HashMap::new();
        let entries: Vec<(String, Outpost, Origin)> = self
            .outposts
            .iter()
            .map(|(k, n)| (k.clone(), n.value.clone(), n.origin.clone()))
            .collect();
        let empty = (Defaults::default(), BTreeMap::new());
        let (defaults, default_origins) = defaults.unwrap_or(&empty);
        let unknown_defaults = self.unknown_defaults();
        for (integration, origin) in std::mem::take(&mut self.failed_outpost_refs) {
            self.integration_ref(&integration, &origin);
        }
        for (name, o, origin) in entries {
            let mut ok = self.integration_ref(&o.integration, &origin);
            let uuid = match &o.uuid {
                Some(u) => u.replace('-', "").to_lowercase(),
                None => desired::derived_uuid(&name),
            };
            let uuid_at = if o.uuid.is_some() {
                origin.child("/uuid")
            } else {
                origin.clone()
            };
            if let Some((other, first)) = uuids.get(&uuid) {
                self.diags.push(
                    Diagnostic::error(
                        "duplicate-uuid",
                        format!("outposts `{other}` and `{name}` have the same uuid"),
                    )
                    .at(if o.uuid.is_some() {
                        uuid_at.value()
                    } else {
                        uuid_at.key()
                    })
                    .related(first.clone().value(), "also used here")
                    .hint("each outpost has its own UUID in authentik"),
                );
                ok = false;
            } else {
                uuids.insert(uuid.clone(), (name.clone(), uuid_at));
            }
            if !o.external_hosts.is_empty() && o.kind != OutpostType::Proxy {
                self.diags.push(
                    Diagnostic::error(
                        "external-hosts-not-proxy",
                        format!(
                            "`external_hosts` only applies to proxy outposts; this one is `{}`",
                            o.kind.as_str()
                        ),
                    )
                    .at(origin.child("/external_hosts").key())
                    .hint("remove `external_hosts`, or set `type: proxy`"),
                );
                ok = false;
            }
            for (i, h) in o.external_hosts.iter().enumerate() {
                if !desired::url_host(h).is_some_and(desired::is_host_and_port)
                    || h.contains(char::is_whitespace)
                    || h.contains(char::is_control)
                    || h.contains('`')
                {
                    self.diags.push(
                        Diagnostic::error("invalid-url", format!("`{h}` is not a URL with a host (`host` or `host:port`, the port 1 to 65535)"))
                            .at(origin.child(&format!("/external_hosts/{i}")).value())
                            .hint("write the provider's external host, e.g. `https://app.example.com`"),
                    );
                    ok = false;
                }
            }
            if let Some(cmd) = &o.healthcheck {
                self.healthcheck(cmd, &origin.child("/healthcheck"));
            }
            if o.kind == OutpostType::Proxy && o.external_hosts.is_empty() {
                self.diags.push(
                    Diagnostic::warning("no-external-hosts", "proxy outpost without `external_hosts`: no Traefik router is declared for it")
                        .at(origin.key())
                        .hint("list the external hosts of the outpost's providers to get Traefik labels"),
                );
            }
            let token = o.token.clone();
            let read = self.read_source(
                token.file.as_deref(),
                token.env.as_deref(),
                None,
                &origin.child("/token"),
                true,
            );
            // A blank token would be deployed as `AUTHENTIK_TOKEN=` (an unfilled secret file in
            // CI, say): the outpost could not connect, and its working container would be
            // recreated without its token.
            let token = match read {
                Some(t) if t.trim().is_empty() => {
                    let (what, at) = match (&token.file, &token.env) {
                        (Some(f), _) => (
                            format!("the token file `{f}` is empty or only whitespace"),
                            "/token/file",
                        ),
                        (None, Some(e)) => (
                            format!("environment variable `{e}` holds only whitespace"),
                            "/token/env",
                        ),
                        (None, None) => ("the token is empty".to_string(), "/token"),
                    };
                    self.diags.push(
                        Diagnostic::error("empty-token", what)
                            .at(origin.child(at).value())
                            .label("empty")
                            .hint("put the outpost's token there (authentik shows it in the outpost's deployment info)"),
                    );
                    None
                }
                other => other,
            };
            // Its `ports` keys and values do not depend on the rest of its settings: checked
            // whatever they hold, `docker_map_ports` only when it is known.
            let map_ports = match o.config.docker_map_ports {
                Some(own) => Some(own),
                None if unknown_defaults.contains("docker_map_ports") => None,
                None => Some(defaults.config.docker_map_ports.unwrap_or(true)),
            };
            let overrides = self.port_overrides(&o, &origin, map_ports);
            // What depends on a setting that is wrong or unknown is left unsaid; the rest is
            // checked.
            let (settings, known) = self.settings(
                &name,
                &o,
                &origin,
                defaults,
                default_origins,
                &unknown_defaults,
            );
            if !ok {
                continue;
            }
            // An unset token (reported) does not change the container's name or ports: an
            // empty one stands in for it, in a container that is never handed on; so do
            // settings that are wrong, for the name and ports when they are known.
            let complete = token.is_some() && overrides.is_some() && known.valid;
            let ports_known = overrides.is_some() && known.ports;
            let input = desired::OutpostInput {
                project,
                integration: &o.integration,
                name: &name,
                kind: o.kind,
                uuid,
                token: Secret::new(token.as_deref().map(str::trim).unwrap_or_default()),
                external_hosts: &o.external_hosts,
                settings: &settings,
                port_overrides: &overrides.unwrap_or_default(),
                healthcheck: o.healthcheck.as_deref(),
            };
            let mut name_known = known.name;
            let built = desired::container(&input).or_else(|problems| {
                // A name that cannot be made (its template wrong, or a name Docker refuses)
                // leaves the ports checked: built again under a stand-in name, not claimed.
                if !problems.iter().all(|p| p.field == NAMING_TEMPLATE_FIELD) {
                    return Err(problems);
                }
                let stand_in = Settings {
                    naming_template: "outpostctl-unnamed-%(uuid)s".into(),
                    ..settings.clone()
                };
                let spec = desired::container(&desired::OutpostInput {
                    settings: &stand_in,
                    ..input.clone()
                })
                .map_err(|_| problems.clone())?;
                name_known = false;
                self.report_outpost_problems(problems, &origin, ports_known, known.name);
                Ok(spec)
            });
            match built {
                Ok(spec) => {
                    if integrations.contains_key(&o.integration) {
                        by_integration
                            .entry(o.integration.clone())
                            .or_default()
                            .push(Built {
                                spec,
                                origin,
                                name_known,
                                ports_known,
                                complete: complete && name_known,
                            });
                    }
                }
                Err(problems) => {
                    self.report_outpost_problems(problems, &origin, ports_known, known.name)
                }
            }
        }
        // Names and host ports are unique per engine, and two integrations may reach one.
        let mut by_engine: BTreeMap<String, EngineUse<'_>> = BTreeMap::new();
        for (name, def) in integrations {
            by_engine
                .entry(def.endpoint.engine_identity())
                .or_default()
                .0
                .push(name);
        }
        for (names, specs) in by_engine.values_mut() {
            specs.extend(names.iter().flat_map(|n| by_integration.get(*n)).flatten());
        }
        for (names, specs) in by_engine.values() {
            self.collisions(names, specs);
        }
        // An outpost that did not become a container must have said why: a valid set that
        // silently lost an outpost would make plan remove its container.
        let built: usize = by_integration
            .values()
            .flatten()
            .filter(|b| b.complete)
            .count();
        if built != self.outposts.len() && !self.diags.iter().any(Diagnostic::is_error) {
            self.diags.push(Diagnostic::error(
                "internal",
                format!(
                    "{} outpost(s) could not be turned into containers without a reported reason; this is a bug in outpostctl",
                    self.outposts.len() - built
                ),
            ));
        }
        by_integration
            .into_iter()
            .map(|(k, v)| {
                let specs = v.into_iter().filter(|b| b.complete).map(|b| b.spec);
                (k, specs.collect::<Vec<_>>())
            })
            .filter(|(_, specs)| !specs.is_empty())
            .collect()
    }

    /// Why an outpost did not become a container. Ports from a `ports` that is wrong
    /// (reported) are not the outpost's, nor a name from a template that is wrong or unknown:
    /// their problems are left unsaid.
    fn report_outpost_problems(
        &mut self,
        problems: Vec<desired::Problem>,
        origin: &Origin,
        ports_known: bool,
        name_known: bool,
    ) {
        for p in problems {
            if (p.field == "/config/docker_network" && !ports_known)
                || (p.field == NAMING_TEMPLATE_FIELD && !name_known)
            {
                continue;
            }
            let at = origin.child(p.field);
            let at = if at.exists() {
                at.value()
            } else {
                origin.key()
            };
            self.diags.push(
                Diagnostic::error("invalid-outpost", p.message)
                    .at(at)
                    .maybe_hint(p.hint),
            );
        }
    }

    /// Container names and host ports must be unique per engine; `integrations` are the names
    /// of the integrations that reach it.
    fn collisions(&mut self, integrations: &[&str], specs: &[&Built]) {
        let mut names: HashMap<&str, &Built> = HashMap::new();
        let mut ports: HashMap<(Proto, u16), Vec<HostPortUse<'_>>> = HashMap::new();
        let mut clashed: HashSet<(String, String)> = HashSet::new();
        let integration = match integrations {
            [one] => format!("integration `{one}`"),
            [rest @ .., last] => {
                let all = if rest.len() == 1 { "both" } else { "all" };
                format!(
                    "the engine that integrations {} and `{last}` {all} reach",
                    crate::render::code_list(rest)
                )
            }
            [] => return,
        };
        for &entry in specs {
            let Built {
                spec,
                origin,
                name_known,
                ports_known,
                ..
            } = entry;
            // A name or ports not known yet (their settings are wrong) are checked once fixed.
            let first_named = match names.get(spec.name.as_str()) {
                _ if !name_known => None,
                Some(first) => Some(*first),
                None => {
                    names.insert(&spec.name, entry);
                    None
                }
            };
            if let Some(first) = first_named {
                self.diags.push(
                    Diagnostic::error(
                        "name-collision",
                        format!("outposts `{}` and `{}` would both be named `{}` on {integration}", first.spec.outpost, spec.outpost, spec.name),
                    )
                    .at(origin.key())
                    .related(first.origin.key(), "the other outpost")
                    .hint("change `object_naming_template` (e.g. add `%(uuid)s`) or rename an outpost"),
                );
            }
            // On the host's network an outpost publishes nothing: it listens on the host's
            // ports itself (its type's and metrics' 9300), on every address.
            let on_host = spec.network.as_deref() == Some("host");
            // (container port, protocol, host address, host port)
            let taken_here: Vec<(u16, Proto, &str, u16)> = if on_host {
                desired::listening_ports(spec.kind)
                    .into_iter()
                    .map(|(port, proto)| (port, proto, "", port))
                    .collect()
            } else if *ports_known {
                spec.ports
                    .iter()
                    .map(|p| (p.container_port, p.proto, p.host_ip.as_str(), p.host_port))
                    .collect()
            } else {
                Vec::new()
            };
            for (container_port, proto, host_ip, host_port) in taken_here {
                let clash = ports.get(&(proto, host_port)).and_then(|taken| {
                    taken.iter().find(|(ip, _)| {
                        all_interfaces(ip) || all_interfaces(host_ip) || *ip == host_ip
                    })
                });
                if let Some((_, first)) = clash {
                    let at =
                        origin.child(&format!("/ports/{}~1{}", container_port, proto.as_str()));
                    let at = if at.exists() { at.key() } else { origin.key() };
                    let host_network = |b: &Built| b.spec.network.as_deref() == Some("host");
                    if on_host || host_network(first) {
                        // One error for the two, not one per port they share.
                        if !clashed.insert((first.spec.outpost.clone(), spec.outpost.clone())) {
                            continue;
                        }
                        let on_it = |b: &Built| {
                            if host_network(b) {
                                format!("`{}` (on the host's network)", b.spec.outpost)
                            } else {
                                format!("`{}`", b.spec.outpost)
                            }
                        };
                        self.diags.push(
                            Diagnostic::error(
                                "port-collision",
                                format!("host port {}/{} is taken by both {} and {} on {integration}", host_port, proto.as_str(), on_it(first), on_it(entry)),
                            )
                            .at(origin.key())
                            .related(first.origin.key(), "the other outpost")
                            .hint("on the host's network an outpost listens on its own ports (and 9300 for metrics): give at most one outpost per engine `docker_network: host`, or put them on a bridge network"),
                        );
                        continue;
                    }
                    self.diags.push(
                        Diagnostic::error(
                            "port-collision",
                            format!("host port {}/{} is published by both `{}` and `{}` on {integration}", host_port, proto.as_str(), first.spec.outpost, spec.outpost),
                        )
                        .at(at)
                        .related(first.origin.key(), "the other outpost")
                        .hint(format!("give one of them another host port: `ports: {{ \"{}/{}\": \"<port>\" }}`, or set `docker_map_ports: false`", container_port, proto.as_str())),
                    );
                } else {
                    ports
                        .entry((proto, host_port))
                        .or_default()
                        .push((host_ip, entry));
                }
            }
        }
    }

    /// An outpost's `healthcheck`: a command in exec form, which Docker runs as `CMD` + its
    /// items. Docker's own forms (`CMD`, `CMD-SHELL`, `NONE` first) would become `CMD CMD ...`,
    /// a check that can never pass: an error. A first item with a space names a program with
    /// a space in its path, almost always a command written as one item: a warning.
    fn healthcheck(&mut self, cmd: &[String], at: &Origin) {
        let Some(first) = cmd.first() else {
            return;
        };
        let rest = &cmd[1..];
        let default = "remove `healthcheck` for authentik's own, which follows the image";
        let hint = match first.as_str() {
            "CMD" | "CMD-SHELL" if rest.is_empty() => Some(default.to_string()),
            "CMD" => Some(format!(
                "outpostctl adds `CMD` itself; write the command alone: `healthcheck: {}`",
                exec_form(rest)
            )),
            "CMD-SHELL" => {
                let line = rest.join(" ");
                Some(
                    if line.contains(['|', '&', ';', '$', '>', '<', '`', '*', '"', '\'']) {
                        format!(
                            "the command runs in exec form, without a shell; if the image has one, `healthcheck: {}`",
                            exec_form(&["/bin/sh".into(), "-c".into(), line])
                        )
                    } else {
                        format!(
                            "the command runs in exec form, without a shell: one item per word, `healthcheck: {}`",
                            exec_form(&words(&line))
                        )
                    },
                )
            }
            "NONE" => Some(format!(
                "an outpost's container always has a health check, as authentik deploys it; {default}"
            )),
            _ => None,
        };
        if let Some(hint) = hint {
            self.diags.push(
                Diagnostic::error(
                    "invalid-healthcheck",
                    format!("`healthcheck` is the command alone, without Docker's `{first}`: this one would never pass"),
                )
                .at(at.child("/0").value())
                .label("not a command")
                .hint(hint),
            );
        } else if first.contains(char::is_whitespace) {
            let mut split = words(first);
            split.extend(rest.iter().cloned());
            self.diags.push(
                Diagnostic::warning(
                    "healthcheck-spaces",
                    format!("`healthcheck` runs a program named `{first}`, spaces included"),
                )
                .at(at.child("/0").value())
                .label("one item: the program's path")
                .hint(format!(
                    "each word of the command is one item: `healthcheck: {}`",
                    exec_form(&split)
                )),
            );
        }
    }

    /// The keys of `defaults:` whose values are not known: those that failed the schema, or
    /// all of them (a `defaults:` that failed as a whole, a document or file not read).
    fn unknown_defaults(&self) -> UnknownDefaults {
        let mut out = UnknownDefaults::default();
        for (kind, key) in &self.failed_entries {
            if *kind == "defaults" {
                match key {
                    None => out.all = true,
                    Some(key) => {
                        out.keys.insert(key.clone());
                    }
                }
            }
        }
        out
    }

    /// The outpost's `ports`, checked; `map_ports` is its `docker_map_ports` (own or from
    /// `defaults`), None when that is not known.
    fn port_overrides(
        &mut self,
        o: &Outpost,
        origin: &Origin,
        map_ports: Option<bool>,
    ) -> Option<desired::PortOverrides> {
        let mut out = BTreeMap::new();
        let mut ok = true;
        let known = desired::default_ports(o.kind);
        if !o.ports.is_empty() && map_ports == Some(false) {
            self.diags.push(
                Diagnostic::warning(
                    "ports-unused",
                    "`ports` has no effect: `docker_map_ports` is false",
                )
                .at(origin.child("/ports").key())
                .hint("remove `ports`, or set `docker_map_ports: true` to publish them"),
            );
        }
        for (key, value) in &o.ports {
            let at = origin.child(&format!("/ports/{}", escape(key)));
            // Written as Docker writes it, `9000/tcp`: `09000/tcp` or `9000/TCP` would be a
            // second key for the same port (the later one winning, unseen).
            let parsed = key.split_once('/').and_then(|(p, proto)| {
                let proto = match proto {
                    "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    _ => return None,
                };
                let port = p.parse::<u16>().ok()?;
                (port.to_string() == p).then_some((port, proto))
            });
            let Some((cport, proto)) =
                parsed.filter(|(p, pr)| known.iter().any(|(kp, kpr, _)| kp == p && kpr == pr))
            else {
                let list = if known.is_empty() {
                    "none".to_string()
                } else {
                    known
                        .iter()
                        .map(|(p, pr, _)| format!("`{p}/{}`", pr.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                self.diags.push(
                    Diagnostic::error(
                        "unknown-port",
                        format!(
                            "{} {} outpost has no port `{key}`",
                            if o.kind == OutpostType::Ldap {
                                "an"
                            } else {
                                "a"
                            },
                            o.kind.as_str()
                        ),
                    )
                    .at(at.key())
                    .hint(format!("its ports are: {list}")),
                );
                ok = false;
                continue;
            };
            let binding = match value {
                Value::Null => None,
                Value::Number(n) => n
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .map(|p| (String::new(), p)),
                Value::String(s) => parse_host_binding(s),
                _ => None,
            };
            match (value, binding) {
                (Value::Null, _) => {
                    out.insert((cport, proto), None);
                }
                (_, Some(b)) if b.1 > 0 => {
                    out.insert((cport, proto), Some(b));
                }
                _ => {
                    self.diags.push(
                        Diagnostic::error(
                            "invalid-port",
                            format!(
                                "`{key}` is not a host port binding: `{}`",
                                value
                                    .as_str()
                                    .map_or_else(|| value.to_string(), str::to_string)
                            ),
                        )
                        .at(at.value())
                        .hint(
                            "write `PORT`, `IP:PORT` or `[IPv6]:PORT` with a port from 1 to 65535",
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// authentik's settings for one outpost: its config over the defaults over authentik's.
    fn settings(
        &mut self,
        name: &str,
        o: &Outpost,
        origin: &Origin,
        d: &Defaults,
        default_origins: &BTreeMap<String, Origin>,
        unknown: &UnknownDefaults,
    ) -> (Settings, SettingsKnown) {
        let c = &o.config;
        let dc = &d.config;
        // A setting the outpost takes from a default that failed the schema (reported) is not
        // known: what depends on it is checked once it is fixed.
        let inherited_unknown = |own: bool, key: &str| !own && unknown.contains(key);
        let name_known =
            !inherited_unknown(c.object_naming_template.is_some(), "object_naming_template");
        let host_known = !inherited_unknown(c.authentik_host.is_some(), "authentik_host");
        let network_known = !inherited_unknown(c.docker_network.is_some(), "docker_network");
        let map_ports_known = !inherited_unknown(c.docker_map_ports.is_some(), "docker_map_ports");
        let version_known = !unknown.contains("authentik_version");
        let base_known = !unknown.contains("container_image_base");
        let template_known = match c.container_image.as_deref() {
            Some("") => base_known,
            Some(_) => true,
            None if unknown.contains("container_image") => false,
            None => dc.container_image.as_deref().is_some_and(|i| !i.is_empty()) || base_known,
        };
        // Where a setting came from, to point at it: the outpost's own, or where its `config`
        // is written when that is an alias (`config: *shared`, whose keys have no place of
        // their own here); else the default it inherits.
        let own_keys: BTreeSet<String> = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_object().map(|m| m.keys().cloned().collect()))
            .unwrap_or_default();
        let at = |key: &str| -> Origin {
            let own = origin.child(&format!("/config/{key}"));
            if own.exists() {
                return own;
            }
            if own_keys.contains(key) {
                let config = origin.child("/config");
                return if config.exists() {
                    config
                } else {
                    origin.clone()
                };
            }
            default_origins
                .get(key)
                .cloned()
                .unwrap_or_else(|| origin.clone())
        };
        let mut ok = true;
        let naming_template = c
            .object_naming_template
            .clone()
            .or_else(|| dc.object_naming_template.clone())
            .unwrap_or_else(|| desired::DEFAULT_NAMING_TEMPLATE.into());
        let naming_ok = !name_known
            || match desired::check_template(&naming_template, &["name", "uuid"]) {
                Ok(()) => true,
                Err(e) => {
                    self.diags.push(
                        Diagnostic::error("invalid-template", format!("object_naming_template: {e}"))
                            .at(at("object_naming_template").value())
                            .hint("the template knows `%(name)s` and `%(uuid)s`; write `%%` for a literal `%`"),
                    );
                    false
                }
            };
        ok &= naming_ok;
        let version = d.authentik_version.clone();
        // An empty `container_image` is authentik's default image (authentik pulls "",
        // fails, and falls back to it): the base template here.
        let container_image = match c.container_image.as_deref() {
            Some("") => None,
            Some(_) => c.container_image.clone(),
            None => dc.container_image.clone().filter(|s| !s.is_empty()),
        };
        let image_base = d
            .container_image_base
            .clone()
            .unwrap_or_else(|| desired::DEFAULT_IMAGE_BASE.into());
        // Whether the template is written in the manifests, not authentik's default image.
        let written =
            container_image.is_some() || default_origins.contains_key("container_image_base");
        let (template, template_at, field) = match &container_image {
            Some(t) => (t.clone(), at("container_image"), "container_image"),
            None => {
                let o = default_origins
                    .get("container_image_base")
                    .cloned()
                    .unwrap_or_else(|| origin.clone());
                (image_base.clone(), o, "container_image_base")
            }
        };
        // The template's own place, or none for authentik's default image.
        let template_place = if written && template_at.exists() {
            let l = template_at.value();
            format!(
                "{}:{}:{}",
                l.file.path.display(),
                l.span.start.line,
                l.span.start.col
            )
        } else {
            "default".to_string()
        };
        let first = |set: &mut BTreeSet<String>, code: &str| {
            set.insert(format!("{code}|{template}|{template_place}"))
        };
        match desired::check_template(&template, &["type", "version"]) {
            _ if !template_known => {}
            Ok(()) if desired::uses(&template, "version") && !version_known => {}
            Err(_) if !first(&mut self.template_errors, "invalid-template") => ok = false,
            Err(e) => {
                self.diags.push(
                    Diagnostic::error("invalid-template", format!("{field}: {e}"))
                        .at(if template_at.exists() {
                            template_at.value()
                        } else {
                            template_at.key()
                        })
                        .hint(if template.contains("%(build_hash)") {
                            "image templates know `%(type)s` and `%(version)s`; authentik fills `%(build_hash)s` with its own build's commit (beta images), which outpostctl cannot know: write the tag out"
                        } else {
                            "image templates know `%(type)s` and `%(version)s`"
                        }),
                );
                ok = false;
            }
            Ok(())
                if desired::uses(&template, "version")
                    && version.is_none()
                    && !first(&mut self.template_errors, "missing-version") =>
            {
                ok = false;
            }
            Ok(()) if desired::uses(&template, "version") && version.is_none() => {
                let whose = if written {
                    format!("the image `{template}`")
                } else {
                    format!(
                        "outpost `{name}` (and every other outpost without `container_image`) uses authentik's default image `{template}`, which"
                    )
                };
                self.diags.push(
                    Diagnostic::error("missing-version", format!("{whose} needs `%(version)s`, but no `authentik_version` is set"))
                        .at(if template_at.exists() { template_at.value() } else { template_at.key() })
                        .hint("set `defaults.authentik_version` to your authentik server's version, e.g. `2026.8.0`"),
                );
                ok = false;
            }
            Ok(()) => {
                let image = desired::fill(
                    &template,
                    &[
                        ("type", o.kind.as_str()),
                        ("version", version.as_deref().unwrap_or("")),
                    ],
                );
                // Once per template and place (the same mistake shows in every type's image).
                let problem = desired::reference_problem(&image);
                ok &= problem.is_none();
                if let Some(why) = problem
                    && first(&mut self.template_errors, &format!("invalid-image|{why}"))
                {
                    let shown = if image == template {
                        format!("`{image}`")
                    } else {
                        format!("`{image}` (from `{template}`)")
                    };
                    self.diags.push(
                        Diagnostic::error(
                            "invalid-image",
                            format!("{field}: {shown} is not an image reference Docker accepts: {why}"),
                        )
                        .at(if template_at.exists() {
                            template_at.value()
                        } else {
                            template_at.key()
                        })
                        .hint("an image is `[registry/]repository[:tag][@digest]` with a lowercase repository, e.g. `ghcr.io/goauthentik/proxy:2026.8.0`"),
                    );
                }
            }
        }
        let authentik_host = c
            .authentik_host
            .clone()
            .or_else(|| dc.authentik_host.clone())
            .unwrap_or_default();
        if authentik_host.is_empty() && host_known {
            self.diags.push(
                Diagnostic::error("missing-authentik-host", format!("outpost `{name}` has no `authentik_host`"))
                    .at(origin.key())
                    .hint("set `authentik_host` (where the outpost reaches authentik) in `defaults:` or the outpost's `config:`"),
            );
            ok = false;
        }
        let mut labels = BTreeMap::new();
        let default_labels = if unknown.contains("docker_labels") {
            &None
        } else {
            &dc.docker_labels
        };
        for (labels_src, base) in [(default_labels, None), (&c.docker_labels, Some(origin))] {
            for (k, v) in labels_src.iter().flatten() {
                let at = match base {
                    Some(o) => o.child(&format!("/config/docker_labels/{}", escape(k))),
                    None => default_origins
                        .get("docker_labels")
                        .map(|o| o.child(&format!("/{}", escape(k))))
                        .unwrap_or_else(|| origin.clone()),
                };
                if k.starts_with("outpostctl.") || k == desired::LABEL_UUID {
                    self.diags.push(
                        Diagnostic::error("reserved-label", format!("label `{k}` is reserved"))
                            .at(at.key())
                            .hint("outpostctl and authentik set `io.goauthentik.outpost-uuid` and `outpostctl.*` themselves; set `uuid:` on the outpost instead"),
                    );
                    ok = false;
                }
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => number_as_written(n, &at.value().text()),
                    other => other.to_string(),
                };
                labels.insert(k.clone(), v);
            }
        }
        let settings = Settings {
            authentik_host,
            authentik_host_insecure: c
                .authentik_host_insecure
                .or(dc.authentik_host_insecure)
                .unwrap_or(false),
            authentik_host_browser: c
                .authentik_host_browser
                .clone()
                .or_else(|| dc.authentik_host_browser.clone())
                .unwrap_or_default(),
            naming_template,
            container_image,
            image_base,
            version,
            // Unknown: none, and no ports, so that nothing is claimed of them.
            network: c
                .docker_network
                .clone()
                .or_else(|| dc.docker_network.clone())
                .filter(|n| !n.is_empty() && network_known),
            map_ports: map_ports_known
                && c.docker_map_ports.or(dc.docker_map_ports).unwrap_or(true),
            labels,
            pull: o.pull.or(d.pull).unwrap_or_default(),
            image_by_id: o.image_by_id.or(d.image_by_id).unwrap_or(false),
        };
        let known = SettingsKnown {
            valid: ok && !unknown.any(),
            name: name_known && naming_ok,
            ports: map_ports_known,
        };
        (settings, known)
    }
}

/// Where a problem of an outpost's container name is reported.
const NAMING_TEMPLATE_FIELD: &str = "/config/object_naming_template";

/// The document without the keypairs, integrations and outposts that failed the schema, and
/// their names; without a `project` that failed (named `("project", None)`) and the defaults
/// that failed (`("defaults", Some(key))`, or `("defaults", None)` for the whole block). None
/// when a failure lies elsewhere (the root, `version`, or a section that is not a mapping).
///
/// The pointers are JSON pointers: `/outposts/` names the outpost whose name is empty (`"":`),
/// not the section, which is `/outposts`.
fn without_failed_entries(
    doc: &Value,
    failed_at: &BTreeSet<String>,
) -> Option<(Value, BTreeSet<FailedEntry>)> {
    const SECTIONS: [&str; 3] = ["keypairs", "integrations", "outposts"];
    let mut entries = BTreeSet::new();
    for pointer in failed_at {
        if pointer == "/project" || pointer == "/defaults" {
            entries.insert((
                if pointer == "/project" {
                    "project"
                } else {
                    "defaults"
                },
                None,
            ));
            continue;
        }
        let mut segments = pointer.split('/').skip(1);
        let section = segments.next()?;
        let kind = ["defaults"]
            .into_iter()
            .chain(SECTIONS)
            .find(|s| *s == section)?;
        let name = segments.next()?.replace("~1", "/").replace("~0", "~");
        entries.insert((kind, Some(name)));
    }
    let mut value = doc.clone();
    for (kind, name) in &entries {
        let map = value.as_object_mut()?;
        let Some(name) = name else {
            // The project, or a `defaults:` that failed as a whole.
            map.remove(*kind);
            continue;
        };
        if *kind == "defaults" {
            // A key not there is one an unknown key was probably meant to be; a block
            // already removed as a whole has none.
            if let Some(block) = map.get_mut(*kind).and_then(Value::as_object_mut) {
                block.remove(name);
            }
        } else {
            map.get_mut(*kind)
                .and_then(Value::as_object_mut)?
                .remove(name)?;
        }
    }
    Some((value, entries))
}

/// The `integration` of each outpost in `failed` (entries cut out after failing the schema)
/// whose failure is elsewhere than at its `integration`, with the outpost's origin.
fn integration_refs(
    doc: &LoadedDoc,
    failed: &BTreeSet<FailedEntry>,
    failed_at: &BTreeSet<String>,
) -> Vec<(String, Origin)> {
    failed
        .iter()
        .filter(|(kind, _)| *kind == "outposts")
        .filter_map(|(_, name)| {
            let name = name.as_ref()?;
            let base = format!("/outposts/{}", escape(name));
            let field = format!("{base}/integration");
            // The pointers under `field` sort right after it: a range, not a scan of every
            // failure for every failed outpost (quadratic with thousands of them).
            if failed_at
                .range::<str, _>((
                    std::ops::Bound::Included(field.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|p| p.starts_with(&field))
                .any(|p| {
                    let rest = &p[field.len()..];
                    rest.is_empty() || rest.starts_with('/')
                })
            {
                return None;
            }
            let integration = doc.value.pointer(&field)?.as_str()?;
            Some((integration.to_string(), doc.origin.child(&base)))
        })
        .collect()
}

fn field_of(o: &Origin) -> String {
    o.pointer.rsplit('/').next().unwrap_or_default().to_string()
}

fn merge<T>(
    diags: &mut Vec<Diagnostic>,
    into: &mut BTreeMap<String, Named<T>>,
    items: BTreeMap<String, T>,
    origin: &Origin,
    section: &str,
    what: &str,
) {
    for (name, value) in items {
        let here = origin.child(&format!("/{section}/{}", escape(&name)));
        if let Some(first) = into.get(&name) {
            diags.push(
                Diagnostic::error(
                    "duplicate-name",
                    format!("{what} `{name}` is defined twice"),
                )
                .at(here.key())
                .related(first.origin.key(), "first defined here")
                .hint(format!(
                    "names are unique across the whole set; rename or remove one {what}"
                )),
            );
        } else {
            into.insert(
                name,
                Named {
                    value,
                    origin: here,
                },
            );
        }
    }
}

/// The largest file a source may name: tokens, keys and certificates are kilobytes.
pub const MAX_SOURCE_BYTES: u64 = 1024 * 1024;

/// Reads a referenced file: a regular file of at most `MAX_SOURCE_BYTES` (never a device,
/// FIFO or directory, which could hang or exhaust memory).
pub fn read_small_file(path: &Path) -> std::io::Result<String> {
    read_text_file(
        path,
        MAX_SOURCE_BYTES,
        "a token, key or certificate file",
        false,
    )
}

/// Reads a file of UTF-8 text of at most `max` bytes (`what` says what such a file is, for the
/// error): a regular file, or with `streams` also a pipe or device (`/dev/stdin`, `<(...)`),
/// read up to `max` bytes. A huge file, or a device that never ends, is an error, not an
/// abort; a device or FIFO where `streams` is false is refused before any read (a FIFO
/// nobody writes to would hang the run).
pub fn read_text_file(path: &Path, max: u64, what: &str, streams: bool) -> std::io::Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() || !(meta.is_file() || streams) {
        return Err(std::io::Error::other("not a regular file"));
    }
    let too_big =
        |size: &str| std::io::Error::other(format!("{size} bytes; {what} is at most {max}"));
    if meta.is_file() && meta.len() > max {
        return Err(too_big(&meta.len().to_string()));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                std::io::Error::other("not UTF-8 text")
            } else {
                e
            }
        })?;
    // A file that grew since it was measured, or a stream.
    if text.len() as u64 > max {
        return Err(too_big(&format!("more than {max}")));
    }
    Ok(text)
}

/// The environment variables this process read a secret from (a token, a key), by name.
fn secret_env<T>(f: impl FnOnce(&mut BTreeSet<String>) -> T) -> T {
    static NAMES: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    f(&mut NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner))
}

fn remember_secret_env(name: &str) {
    secret_env(|n| n.insert(name.to_string()));
}

/// The environment variables secrets were read from, to keep out of the processes outpostctl
/// starts (ssh passes on what an ssh config's `SendEnv` names).
pub fn secret_env_names() -> Vec<String> {
    secret_env(|n| n.iter().cloned().collect())
}

/// `~` expands to $HOME; relative paths are relative to `base`.
pub fn resolve_path(p: &str, base: &Path) -> PathBuf {
    // `HOME`, else the user's home in the password database (a system service without
    // `User=` has no HOME).
    if let Some(rest) = p.strip_prefix("~/")
        && let Some(home) = std::env::home_dir().filter(|h| !h.as_os_str().is_empty())
    {
        return home.join(rest);
    }
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// The words of a command line, split on whitespace.
fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// A command as a YAML flow list of quoted items: `["/ldap", "healthcheck"]`.
fn exec_form(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| serde_json::Value::from(i.as_str()).to_string())
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// A host address that binds every interface (of its family).
fn all_interfaces(ip: &str) -> bool {
    ip.is_empty() || ip == "0.0.0.0" || ip == "::"
}

fn parse_host_binding(s: &str) -> Option<(String, u16)> {
    let (ip, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, port) = rest.split_once("]:")?;
        (ip.parse::<std::net::Ipv6Addr>().ok()?.to_string(), port)
    } else if let Some((ip, port)) = s.rsplit_once(':') {
        let ip = ip.parse::<std::net::Ipv4Addr>().ok()?;
        // Docker reports 0.0.0.0 as "all interfaces", which the spec writes as "".
        (
            if ip.is_unspecified() {
                String::new()
            } else {
                ip.to_string()
            },
            port,
        )
    } else {
        (String::new(), s)
    };
    Some((ip, port.parse().ok()?))
}

/// serde_path_to_error's `a.b[0]` -> `/a/b/0`.
fn path_to_pointer(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    let mut out = String::new();
    for seg in path.split('.') {
        let mut rest = seg;
        if let Some(i) = rest.find('[') {
            out.push('/');
            out.push_str(&escape(&rest[..i]));
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                out.push('/');
                out.push_str(rest.get(1..end).unwrap_or_default());
                rest = rest.get(end + 1..).unwrap_or_default();
            }
        } else {
            out.push('/');
            out.push_str(&escape(rest));
        }
    }
    out
}

/// A number given as a label's value, as its text: the text written in the manifest, so that
/// `2026.10`, `1e3` or `0x1f` label as written (not `2026.1`, `1000.0`, `31`), when that text
/// is the number (an alias, say, is not: then the number's own text).
fn number_as_written(n: &serde_json::Number, written: &str) -> String {
    // Past its anchor and tag (`&n !!int 012`), the text is the scalar's.
    let mut written = written.trim();
    while written.starts_with(['&', '!']) {
        written = written
            .split_once(char::is_whitespace)
            .map_or("", |(_, rest)| rest.trim_start());
    }
    let same = crate::manifest::yaml::parse(written, Default::default())
        .into_result()
        .ok()
        .and_then(|docs| docs.into_iter().next())
        .is_some_and(|d| d.value == Value::Number(n.clone()));
    if same {
        written.to_string()
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_hosts_are_names_or_addresses() {
        for ok in ["docker.example.com", "10.0.0.7", "docker_1", "a-b.c"] {
            assert!(valid_host(ok, false), "{ok}");
        }
        for bad in [
            "",
            "-oX",
            ".x",
            "a;id",
            "a b",
            "a$(id)",
            "a`x`",
            "é.example",
            "a%41",
        ] {
            assert!(!valid_host(bad, false), "{bad}");
        }
        assert!(valid_host("::1", true) && valid_host("fd00::7", true));
        assert!(!valid_host("::1;id", true) && !valid_host("zz", true));
        assert_eq!(
            without_password("ssh://deploy:s3cret@eng:22/x"),
            "ssh://deploy:***@eng:22/x"
        );
        assert_eq!(without_password("ssh://deploy@eng"), "ssh://deploy@eng");
        assert_eq!(without_password("unix:///a@b:c"), "unix:///a@b:c");
    }

    fn failed(pointers: &[&str]) -> BTreeSet<String> {
        pointers.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn failed_entries_are_cut_out_and_named() {
        let doc = serde_json::json!({
            "version": 1,
            "project": "Not Valid",
            "defaults": { "pull": 3, "authentik_host": "https://a.example.com" },
            "integrations": { "a/b": { "url": 1 }, "ok": { "local": true } },
            "outposts": { "X": { "type": "proxy", "bogus": 1 }, "Y": { "type": "ldap" } },
        });
        let (value, names) = without_failed_entries(
            &doc,
            &failed(&[
                "/integrations/a~1b/url",
                "/outposts/X",
                "/project",
                "/defaults/pull",
            ]),
        )
        .expect("every failure is inside a named entry or the project");
        assert_eq!(
            value,
            serde_json::json!({
                "version": 1,
                "defaults": { "authentik_host": "https://a.example.com" },
                "integrations": { "ok": { "local": true } },
                "outposts": { "Y": { "type": "ldap" } },
            })
        );
        assert_eq!(
            names,
            BTreeSet::from([
                ("integrations", Some("a/b".to_string())),
                ("outposts", Some("X".into())),
                ("project", None),
                ("defaults", Some("pull".into())),
            ])
        );
    }

    #[cfg(unix)]
    #[test]
    fn paths_are_quoted_for_the_shell_only_when_they_need_it() {
        assert_eq!(shell_quote("rac.token"), "rac.token");
        assert_eq!(
            shell_quote("a/b-c_d@e%f+g=h:i,j.token"),
            "a/b-c_d@e%f+g=h:i,j.token"
        );
        assert_eq!(shell_quote("perm dir/tok"), "'perm dir/tok'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME/`x`;*"), "'$HOME/`x`;*'");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            chmod_600(Path::new("perm dir/tok")),
            "chmod 600 'perm dir/tok'"
        );
        assert_eq!(chmod_600(Path::new("-x.token")), "chmod 600 -- -x.token");
    }

    #[test]
    fn an_empty_name_is_an_entry_not_its_section() {
        let doc = serde_json::json!({
            "version": 1,
            "defaults": { "": 1, "pull": "always" },
            "keypairs": { "": {}, "ca": {} },
            "integrations": { "": { "local": true }, "edge": { "local": true } },
            "outposts": { "": { "type": "ldap" }, "a": { "type": "proxy" } },
        });
        let (value, names) = without_failed_entries(
            &doc,
            &failed(&["/defaults/", "/keypairs/", "/integrations/", "/outposts/"]),
        )
        .expect("every failure is inside a named entry");
        assert_eq!(
            value,
            serde_json::json!({
                "version": 1,
                "defaults": { "pull": "always" },
                "keypairs": { "ca": {} },
                "integrations": { "edge": { "local": true } },
                "outposts": { "a": { "type": "proxy" } },
            })
        );
        assert_eq!(
            names,
            BTreeSet::from([
                ("defaults", Some(String::new())),
                ("keypairs", Some(String::new())),
                ("integrations", Some(String::new())),
                ("outposts", Some(String::new())),
            ])
        );
    }

    #[test]
    fn a_local_engine_is_shown_where_docker_host_points() {
        assert_eq!(local_address(None), "unix:///var/run/docker.sock");
        assert_eq!(local_address(Some("")), "unix:///var/run/docker.sock");
        assert_eq!(
            local_address(Some("tcp://10.0.0.5:2376")),
            "DOCKER_HOST=tcp://10.0.0.5:2376"
        );
        assert_eq!(
            local_address(Some("ssh://a@b\u{1b}[31m\n")),
            "DOCKER_HOST=ssh://a@b\\u001b[31m\\n"
        );
    }

    #[test]
    fn defaults_that_fail_as_a_whole_are_cut_out() {
        let doc = serde_json::json!({ "version": 1, "defaults": { "pull": 3, "bogus": 1 } });
        let (value, names) =
            without_failed_entries(&doc, &failed(&["/defaults", "/defaults/pull"]))
                .expect("defaults are cut out");
        assert_eq!(value, serde_json::json!({ "version": 1 }));
        assert!(names.contains(&("defaults", None)));
    }

    #[test]
    fn a_failure_elsewhere_leaves_the_document_unknown() {
        let doc = serde_json::json!({ "defaults": { "pull": 3 }, "outposts": [] });
        for pointer in ["", "/version", "/outposts", "/keypairs/x"] {
            assert!(
                without_failed_entries(&doc, &failed(&[pointer])).is_none(),
                "{pointer}"
            );
        }
    }

    #[test]
    fn engine_identity_is_the_same_only_for_the_same_engine() {
        let tcp = |host: &str, port| Endpoint::Http {
            host: host.into(),
            port,
        };
        let ssh = |user: &str, host: &str, port| Endpoint::Ssh {
            user: Some(user.into()),
            host: host.into(),
            port: Some(port),
            key: None,
            host_key: None,
            config: None,
        };
        let tls = Endpoint::Tls {
            host: "Docker.example.com".into(),
            port: 2376,
            ca_pem: None,
            client: None,
        };
        let same = |a: &Endpoint, b: &Endpoint| a.engine_identity() == b.engine_identity();
        assert!(same(&tcp("docker.example.com", 2376), &tls));
        assert!(!same(&tcp("docker.example.com", 2375), &tls));
        assert!(same(&ssh("a", "h", 22), &ssh("a", "H", 22)));
        // Rootless Docker: one engine per user.
        assert!(!same(&ssh("a", "h", 22), &ssh("b", "h", 22)));
        assert!(!same(&ssh("a", "h", 22), &ssh("a", "h", 2222)));
        assert!(same(&Endpoint::Local, &Endpoint::Local));
        let unix = |p: &str| Endpoint::Unix { path: p.into() };
        assert!(!same(&unix("/a.sock"), &unix("/b.sock")));
        // `local: true` is the default socket, or the one DOCKER_HOST names, read as
        // connecting reads it (`DockerHost::read`).
        let local = |vars: &[(&str, &str)]| {
            let env = |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
                    .filter(|v| !v.is_empty())
            };
            local_identity(
                crate::engine::connect::DockerHost::read(&env).map_err(|e| e.to_string()),
            )
        };
        let host = |h: &str| local(&[("DOCKER_HOST", h)]);
        assert_eq!(local(&[]), unix("/var/run/docker.sock").engine_identity());
        assert_eq!(host(""), local(&[]));
        assert_eq!(
            host("unix:///run/user/1000/docker.sock"),
            unix("/run/user/1000/docker.sock").engine_identity()
        );
        // A TCP address is the host and port an `http://`/`https://` integration names.
        assert_eq!(host("tcp://Docker.example.com:2376"), tls.engine_identity());
        assert_eq!(
            host("tcp://127.0.0.1"),
            tcp("127.0.0.1", 2375).engine_identity(),
            "Docker's port without TLS"
        );
        assert_eq!(
            local(&[
                ("DOCKER_HOST", "tcp://docker.example.com"),
                ("DOCKER_TLS_VERIFY", "1")
            ]),
            tls.engine_identity(),
            "Docker's port with TLS"
        );
        assert_eq!(
            local(&[("DOCKER_HOST", "tcp://10.0.0.5"), ("DOCKER_TLS_VERIFY", "")]),
            tcp("10.0.0.5", 2375).engine_identity(),
            "an empty DOCKER_TLS_VERIFY is unset"
        );
        assert_eq!(
            local(&[("DOCKER_HOST", "http://proxy"), ("DOCKER_TLS_VERIFY", "1")]),
            tcp("proxy", 2375).engine_identity(),
            "http:// is plain"
        );
        assert_eq!(
            host("tcp://[fd00::5]:2375"),
            tcp("fd00::5", 2375).engine_identity(),
            "an IPv6 host without its brackets, as in an integration's URL"
        );
        assert_eq!(host("ssh://a@h:22"), ssh("a", "h", 22).engine_identity());
        assert_ne!(host("tcp://docker.example.com:2375"), tls.engine_identity());
        assert_ne!(host("bogus://x"), host("bogus://y"));
    }

    /// What `validate_with` hands over early, for `set` (a manifest beside a token file).
    fn handed_early(set: &str) -> (Option<Vec<String>>, bool) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("token"), "t0ken\n").expect("token");
        std::fs::write(dir.path().join("set.yaml"), set).expect("manifest");
        let mut handed = None;
        let outcome = validate_with(&[dir.path().to_path_buf()], |defs| {
            handed = Some(defs.keys().cloned().collect());
        });
        (handed, outcome.validated.is_some())
    }

    #[test]
    fn the_integrations_are_handed_early_only_while_no_error_is_known() {
        let head = "version: 1\nproject: p\ndefaults: { authentik_host: https://a.example.com, authentik_version: \"2026.8.0\" }\n\
                    integrations:\n  one: { local: true }\n  two: { url: http://127.0.0.1:2375 }\n";
        let outpost = "outposts:\n  A: { type: ldap, integration: one, token: { file: token } }\n";
        // Valid: handed over, and the set is valid.
        let (handed, valid) = handed_early(&format!("{head}{outpost}"));
        assert_eq!(handed, Some(vec!["one".to_string(), "two".to_string()]));
        assert!(valid);
        // An error in an outpost is found after the hand-over: the set is still refused, so
        // what a caller read early is never used.
        let bad_outpost =
            "outposts:\n  A: { type: ldap, integration: three, token: { file: token } }\n";
        let (handed, valid) = handed_early(&format!("{head}{bad_outpost}"));
        assert!(handed.is_some());
        assert!(!valid, "an unknown integration makes the set invalid");
        // An error found before (here in an integration): nothing is handed over.
        let bad_head = head.replace("http://127.0.0.1:2375", "ftp://127.0.0.1:2375");
        let (handed, valid) = handed_early(&format!("{bad_head}{outpost}"));
        assert_eq!(
            handed, None,
            "no engine is read for a set known to be invalid"
        );
        assert!(!valid);
    }

    /// authentik settings that do not apply to Docker are one warning per settings block; a
    /// value the schema refuses gets its error alone, not also "accepted, no effect".
    #[test]
    fn settings_without_effect_are_one_warning_unless_refused() {
        let codes = |config: &str| {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(dir.path().join("token"), "t0ken\n").expect("token");
            let set = format!(
                "version: 1\nproject: p\ndefaults: {{ authentik_host: https://a.example.com, authentik_version: \"2026.8.0\" }}\n\
                 integrations:\n  one: {{ local: true }}\n\
                 outposts:\n  A: {{ type: ldap, integration: one, token: {{ file: token }}, config: {config} }}\n"
            );
            std::fs::write(dir.path().join("set.yaml"), set).expect("manifest");
            validate(&[dir.path().to_path_buf()])
                .diagnostics
                .iter()
                .filter(|d| d.code != "key-permissions")
                .map(|d| format!("{} {}", d.code, d.message))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            codes("{ log_level: debug, refresh_interval: minutes=5, kubernetes_replicas: 2 }"),
            [
                "ignored-key `log_level`, `refresh_interval`, `kubernetes_replicas` have no effect on Docker"
            ]
        );
        let refused = codes("{ log_level: verbose, refresh_interval: 5 }");
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused.iter().all(|c| !c.starts_with("ignored-key")),
            "{refused:?}"
        );
    }

    /// An empty `container_image` is authentik's default image (what authentik ends up with,
    /// after its pull of "" fails), also over `defaults.container_image`.
    #[test]
    fn an_empty_container_image_is_the_default_image() {
        let v = crate::engine::fake::validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\n  docker_map_ports: false\n  \
             container_image: registry.example.com/ak/%(type)s:1\n\
             integrations:\n  local: { local: true }\noutposts:\n  \
             A: { type: ldap, integration: local, token: { file: token }, config: { container_image: \"\" } }\n  \
             B: { type: ldap, integration: local, token: { file: token } }\n",
        );
        let image = |o: &str| {
            v.desired["local"]
                .iter()
                .find(|s| s.outpost == o)
                .map(|s| s.image.clone())
        };
        assert_eq!(
            image("A").as_deref(),
            Some("ghcr.io/goauthentik/ldap:2026.8.0")
        );
        assert_eq!(
            image("B").as_deref(),
            Some("registry.example.com/ak/ldap:1")
        );
    }

    /// authentik lowercases `authentik_host`, so an upper-case scheme works there: accepted
    /// here too, and lowercased the same way.
    #[test]
    fn an_upper_case_authentik_host_is_lowercased() {
        let v = crate::engine::fake::validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: HTTPS://AK.Example.com\n  \
             authentik_host_browser: HTTPS://Login.Example.com\n  \
             authentik_version: \"2026.8.0\"\nintegrations:\n  local: { local: true }\n\
             outposts:\n  A: { type: ldap, integration: local, token: { file: token } }\n",
        );
        let env = &v.desired["local"][0].env;
        assert_eq!(env["AUTHENTIK_HOST"].expose(), "https://ak.example.com");
        assert_eq!(
            env["AUTHENTIK_HOST_BROWSER"].expose(),
            "HTTPS://Login.Example.com"
        );
    }

    /// A number as a label's value labels as written: `2026.10` is not `2026.1`, `1e3` not
    /// `1000.0`, `0x1f` not `31` (authentik_version, where the same happens, is an error).
    #[test]
    fn numbers_in_labels_keep_their_text() {
        let v = crate::engine::fake::validated(
            "version: 1\nproject: p\ndefaults:\n  authentik_host: https://ak.example.com\n  \
             authentik_version: \"2026.8.0\"\n  docker_map_ports: false\n  \
             docker_labels: { d: 2026.10, e: &n 012, j: !!int 0o17 }\n\
             integrations:\n  local: { local: true }\noutposts:\n  \
             A:\n    type: ldap\n    integration: local\n    token: { file: token }\n    \
             config:\n      docker_labels:\n        a: 2026.10\n        b: 1e3\n        \
             c: 0x1f\n        f: 1\n        g: true\n        h: -0.50\n        i: *n\n",
        );
        let labels = &v.desired["local"][0].labels;
        for (k, want) in [
            ("a", "2026.10"),
            ("b", "1e3"),
            ("c", "0x1f"),
            ("d", "2026.10"),
            ("e", "012"),
            ("f", "1"),
            ("g", "true"),
            ("h", "-0.50"),
            // Through an alias: the number's own text.
            ("i", "12"),
            ("j", "0o17"),
        ] {
            assert_eq!(
                labels.get(k).map(String::as_str),
                Some(want),
                "{k}: {labels:?}"
            );
        }
    }
}
