//! The manifest's typed model, one YAML document each.
//!
//! These types are the single source of the JSON Schema (schemars): doc comments become the
//! descriptions editors show on hover, so they are written for the person editing a manifest.
//! Documents are validated against that schema before they are deserialized into these types,
//! so serde here only has to accept what the schema already allowed.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

// A key that looks like a number (`9000:`, `-5:`) is a number to yaml-language-server, which
// checks `propertyNames` on it and skips a `pattern` there. So that the editor flags what
// validate refuses (whose keys are always strings, so these change nothing there): `ports`
// keys are strings (`PORT/tcp`); a name that may be all digits (`9000`, valid) may not be a
// negative number (`-5`, which no name pattern allows).

/// Names of keypairs and integrations: what references use.
pub const REF_NAME_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$";
/// An outpost's name: any text but control characters (a tab, a line break, a terminal escape
/// would reach terminals, logs and pull-request comments as they are).
pub const OUTPOST_NAME_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";
/// `project`: also a Docker label value, kept short and plain.
pub const PROJECT_PATTERN: &str = r"^[a-z0-9][a-z0-9_.-]{0,62}$";
/// An outpost UUID: 32 hex digits, dashes accepted.
pub const UUID_PATTERN: &str =
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$";
/// Docker label keys.
pub const LABEL_KEY_PATTERN: &str = r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$";
/// A container port with its protocol, as Docker writes it.
pub const CONTAINER_PORT_PATTERN: &str = r"^[0-9]{1,5}/(tcp|udp)$";
/// A host binding: `PORT`, `IPv4:PORT` or `[IPv6]:PORT`.
pub const HOST_PORT_PATTERN: &str =
    r"^(([0-9]{1,3}\.){3}[0-9]{1,3}:|\[[0-9A-Fa-f:.]+\]:)?[0-9]{1,5}$";
/// An external host of a proxy outpost: an http(s) URL with a host, the scheme in any case
/// (authentik takes the host of any URL).
pub const EXTERNAL_HOST_PATTERN: &str = r"^[hH][tT][tT][pP][sS]?://[^/\s]+";
/// Engine URLs.
pub const ENGINE_URL_PATTERN: &str = r"^(unix|http|https|tcp|ssh)://";
/// authentik versions: `2026.8.0`, `2026.8`, `2026.8.0-rc1`.
pub const VERSION_PATTERN: &str = r"^[0-9]{4}\.[0-9]{1,2}(\.[0-9]+)?(-rc[0-9]+)?$";
/// The name of an environment variable, as a shell writes it in `export NAME=...`.
pub const ENV_NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]*$";
/// An OpenSSH public key line.
pub const HOST_KEY_PATTERN: &str = r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( .*)?$";

pub const SCHEMA_ID: &str = "https://outpostctl.dev/schemas/outpostctl.schema.json";

/// One YAML document of an outpostctl manifest. A manifest set is any number of files and
/// documents; they merge into one desired state, and each name may be defined once in the set.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "outpostctl manifest",
    extend("$id" = SCHEMA_ID),
    example = example_document()
)]
pub struct Document {
    /// Manifest format version. `1` is the only version today.
    #[schemars(extend("const" = 1, "default" = 1))]
    pub version: u64,

    /// The project this manifest set belongs to. Every container outpostctl creates carries
    /// the label `outpostctl.project=<project>`, and pruning only ever removes containers of
    /// this project. Set it exactly once in the whole set. Lowercase letters, digits, `.`, `_`
    /// and `-`.
    #[serde(default)]
    #[schemars(pattern(PROJECT_PATTERN), example = &"homelab")]
    pub project: Option<String>,

    /// Values every outpost inherits unless it sets its own: authentik's outpost settings
    /// (the same keys as an outpost's `config`) plus `authentik_version`,
    /// `container_image_base` and `pull`. An outpost's own `config` wins key by key;
    /// `docker_labels` are merged, the outpost's labels winning.
    #[serde(default)]
    pub defaults: Option<Defaults>,

    /// Certificates and private keys, by name, for `tls_verification` and
    /// `tls_authentication` of integrations (authentik's certificate-keypairs).
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"pattern": REF_NAME_PATTERN, "minimum": 0}))]
    pub keypairs: BTreeMap<String, Keypair>,

    /// Docker engines, by name (authentik's Docker service connections). Outposts name the
    /// integration they run on.
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"pattern": REF_NAME_PATTERN, "minimum": 0}))]
    pub integrations: BTreeMap<String, Integration>,

    /// Outposts, by their name in authentik. Each becomes one container on its integration,
    /// the same container authentik's own Docker integration would deploy.
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"minLength": 1, "pattern": OUTPOST_NAME_PATTERN}))]
    pub outposts: BTreeMap<String, Outpost>,
}

fn example_document() -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "project": "homelab",
        "defaults": {"authentik_host": "https://auth.example.com", "authentik_version": "2026.8.0"},
        "integrations": {"local": {"local": true}},
        "outposts": {"Edge Proxy": {
            "type": "proxy",
            "integration": "local",
            "token": {"env": "AK_EDGE_PROXY_TOKEN"},
            "external_hosts": ["https://app.example.com"]
        }}
    })
}

/// A file or environment variable that holds public material (a certificate), or the
/// material itself. Exactly one of `file`, `env` or `value`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct PublicSource {
    /// Path of a file, relative to the manifest file that names it; `~` expands to the home
    /// directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1), example = &"certs/ca.pem")]
    pub file: Option<String>,
    /// Name of an environment variable of the outpostctl process, without `$` or braces:
    /// letters, digits and `_`, not starting with a digit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1), pattern(ENV_NAME_PATTERN), example = &"DOCKER_CA_PEM")]
    pub env: Option<String>,
    /// The PEM text itself. Allowed only for public material such as certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1))]
    pub value: Option<String>,
}

/// A file or environment variable that holds a secret (a token or a private key). Exactly
/// one of `file` or `env`: secrets are never written into a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct SecretSource {
    /// Path of a file, relative to the manifest file that names it; `~` expands to the home
    /// directory. Keep it readable by its owner only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1), example = &"secrets/edge-proxy.token")]
    pub file: Option<String>,
    /// Name of an environment variable of the outpostctl process, without `$` or braces:
    /// letters, digits and `_`, not starting with a digit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1), pattern(ENV_NAME_PATTERN), example = &"AK_EDGE_PROXY_TOKEN")]
    pub env: Option<String>,
}

/// A certificate, a private key, or both (authentik's certificate-keypair).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [{"required": ["certificate"]}, {"required": ["key"]}]))]
pub struct Keypair {
    /// PEM certificate, read from `{ file: PATH }`, `{ env: VARIABLE }` or given as
    /// `{ value: PEM }`. As `tls_verification`, the CA that must have signed the engine's
    /// certificate; as `tls_authentication`, the client certificate.
    #[serde(default)]
    pub certificate: Option<PublicSource>,
    /// Private key, PEM or OpenSSH format, read from `{ file: PATH }` or `{ env: VARIABLE }`
    /// (never written into a manifest). Required when the keypair is used for
    /// `tls_authentication` (client key) or for an `ssh://` integration (SSH key).
    #[serde(default)]
    pub key: Option<SecretSource>,
}

/// One Docker engine (authentik's Docker service connection). Either `local: true` or a
/// `url`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["url"], "properties": {"url": {"type": "string"}}},
    {"required": ["local"], "properties": {"local": {"const": true}}}
]))]
pub struct Integration {
    /// The engine of this machine: `DOCKER_HOST` (with `DOCKER_TLS_VERIFY` and
    /// `DOCKER_CERT_PATH`) when set, else `unix:///var/run/docker.sock`.
    #[serde(default)]
    #[schemars(extend("default" = false))]
    pub local: Option<bool>,

    /// The engine's address. `unix:///path`; `http://host:port` (plain, e.g. through a
    /// docker-socket-proxy); `https://host:port` or `tcp://host:port` (TLS, the engine's
    /// certificate always verified); `ssh://user@host:port` (the system `ssh` runs
    /// `docker system dial-stdio` on the host; user defaults to `authentik`, port to 22,
    /// unless `ssh.config` is given: then that file decides what the URL leaves out).
    #[serde(default)]
    #[schemars(pattern(ENGINE_URL_PATTERN), example = &"https://edge.example.com:2376")]
    pub url: Option<String>,

    /// For https:// and tcp://: name of the keypair whose certificate is the CA that must have
    /// signed the engine's certificate (only that CA is trusted). Without it, the system's
    /// root certificates are used.
    #[serde(default)]
    #[schemars(pattern(REF_NAME_PATTERN))]
    pub tls_verification: Option<String>,

    /// For https:// and tcp://: name of the keypair with the client certificate and key. For
    /// ssh://: name of the keypair with the SSH private key.
    #[serde(default)]
    #[schemars(pattern(REF_NAME_PATTERN))]
    pub tls_authentication: Option<String>,

    /// SSH options, for ssh:// integrations only. Host keys are always checked.
    #[serde(default)]
    pub ssh: Option<SshOptions>,
}

/// How an ssh:// engine is reached. Host keys are always checked.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshOptions {
    /// Pin the host's public key, as an OpenSSH public key line (what `ssh-keyscan` prints
    /// without the host name). Without it, the user's known_hosts decides; an unknown or
    /// changed key is always an error.
    #[serde(default)]
    #[schemars(pattern(HOST_KEY_PATTERN), example = &"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0aR2Xl6l2d1lO1wY9pQm0Lk8sZP9y4T3X7yq2aB1cD")]
    pub host_key: Option<String>,
    /// Use this ssh config file as is (`ssh -F`), e.g. for certificates or ProxyJump. Relative
    /// to the manifest file; `~` expands.
    #[serde(default)]
    #[schemars(example = &"~/.ssh/config")]
    pub config: Option<String>,
}

/// The kind of outpost, which decides the image, ports and health check.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OutpostType {
    /// Proxy provider outpost (ports 9000 and 9443; Traefik labels).
    Proxy,
    /// LDAP provider outpost (ports 389 and 636 on the host).
    Ldap,
    /// RADIUS provider outpost (port 1812/udp).
    Radius,
    /// Remote access (RAC) outpost (no published ports).
    Rac,
}

impl OutpostType {
    pub fn as_str(self) -> &'static str {
        match self {
            OutpostType::Proxy => "proxy",
            OutpostType::Ldap => "ldap",
            OutpostType::Radius => "radius",
            OutpostType::Rac => "rac",
        }
    }
}

/// When to pull the outpost's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull only when the engine does not have the image.
    #[default]
    Missing,
    /// Pull on every apply that creates or recreates the container.
    Always,
    /// Never pull; the image must already be on the engine.
    Never,
}

/// One outpost: a container on its integration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Outpost {
    /// The outpost's type in authentik.
    #[serde(rename = "type")]
    pub kind: OutpostType,

    /// The outpost's UUID in authentik (32 hex digits; dashes accepted). It is the value of
    /// the container label `io.goauthentik.outpost-uuid`: set it, and run `apply --adopt`
    /// once, to take over a container authentik itself deployed (without `--adopt` the plan
    /// refuses to touch it). Without it, a UUID is derived from the outpost name, so renaming
    /// the outpost replaces its container.
    #[serde(default)]
    #[schemars(pattern(UUID_PATTERN), example = &"5c5e0e3c4d4f4b6c9a0e1f2a3b4c5d6e")]
    pub uuid: Option<String>,

    /// Name of the integration (Docker engine) this outpost runs on.
    #[schemars(pattern(REF_NAME_PATTERN), example = &"local")]
    pub integration: String,

    /// The outpost's API token from authentik (Outposts > Deployment info), read from
    /// `{ env: VARIABLE }` or `{ file: PATH }` (never written into a manifest). It becomes
    /// `AUTHENTIK_TOKEN` in the container and is never shown, saved in a plan or put in a
    /// label.
    pub token: SecretSource,

    /// Proxy outposts only: the external hosts of the outpost's providers. Each becomes a
    /// `Host()` of the Traefik router rule on the container.
    #[serde(default)]
    #[schemars(inner(pattern(EXTERNAL_HOST_PATTERN)), example = vec!["https://app.example.com"])]
    pub external_hosts: Vec<String>,

    /// When to pull the image: `missing` (default), `always` or `never`. Overrides
    /// `defaults.pull`.
    #[serde(default)]
    pub pull: Option<PullPolicy>,

    /// Create the container from the image's id (`sha256:...`) instead of its name.
    /// Overrides `defaults.image_by_id`; see there.
    #[serde(default)]
    pub image_by_id: Option<bool>,

    /// Host bindings for the outpost's ports, keyed by container port (`9000/tcp`). A value is
    /// `PORT`, `IP:PORT` or `[IPv6]:PORT`; `null` leaves that port unpublished. Ports not
    /// listed keep authentik's mapping. Only applies when `docker_map_ports` is true.
    #[serde(default)]
    #[schemars(
        extend("propertyNames" = {"type": "string", "pattern": CONTAINER_PORT_PATTERN}),
        extend("additionalProperties" = {
            "type": ["string", "integer", "null"],
            "pattern": HOST_PORT_PATTERN,
            "minimum": 1,
            "maximum": 65535
        }),
        example = serde_json::json!({"9000/tcp": "127.0.0.1:9000"})
    )]
    pub ports: BTreeMap<String, serde_json::Value>,

    /// Health check command, run inside the container: exec form, one item per word, without
    /// Docker's `CMD` (outpostctl adds it; a first item `CMD`, `CMD-SHELL` or `NONE` is an
    /// error, and a first item with a space in it a warning: it names a program with a space
    /// in its path). By default it follows the image: `/authentik healthcheck proxy` for
    /// proxy images of authentik 2026.8 and later, `/<type> healthcheck` otherwise.
    #[serde(default)]
    #[schemars(length(min = 1), inner(length(min = 1)), example = vec!["/ldap", "healthcheck"])]
    pub healthcheck: Option<Vec<String>>,

    /// authentik's outpost settings ("Advanced settings" in authentik): paste that block
    /// here unchanged. Keys that only matter on Kubernetes are accepted and ignored. Every
    /// key is optional: unset keys come from `defaults`, then from authentik's own defaults;
    /// `null` means unset.
    #[serde(default)]
    pub config: OutpostConfig,
}

/// authentik's outpost settings. Every key is optional; unset keys come from `defaults`,
/// then from authentik's own defaults. `null` means unset.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[schemars(transform = authentik_config_transform)]
pub struct OutpostConfig {
    /// URL of authentik as the outpost reaches it; becomes `AUTHENTIK_HOST` (lowercased, as
    /// authentik does: `HTTPS://Auth.Example.com` is accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([hH][tT][tT][pP][sS]?://.+)?$"), example = &"https://auth.example.com")]
    pub authentik_host: Option<String>,

    /// Skip TLS verification of `authentik_host` inside the outpost; becomes
    /// `AUTHENTIK_INSECURE`. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub authentik_host_insecure: Option<bool>,

    /// URL of authentik as browsers reach it, when it differs from `authentik_host`; becomes
    /// `AUTHENTIK_HOST_BROWSER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([hH][tT][tT][pP][sS]?://.+)?$"), extend("default" = ""))]
    pub authentik_host_browser: Option<String>,

    /// Container name template. Placeholders: `%(name)s` (the outpost name, slugified as
    /// authentik does) and `%(uuid)s` (the outpost UUID, hex), with Python's precision
    /// (`%(uuid).8s`: the first 8 digits). The result is lowercased.
    /// Changing it renames the container, or recreates it for proxy outposts (their Traefik
    /// labels contain the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "ak-outpost-%(name)s"), example = &"ak-outpost-%(name)s")]
    pub object_naming_template: Option<String>,

    /// Image of the outpost container, used as given. `%(type)s` and `%(version)s` are
    /// filled in (authentik itself does not). An outpost that leaves it unset or `null` takes
    /// the one under `defaults`; unset there too, or empty (`""`), the image comes from
    /// `container_image_base` (under `defaults`), the default image authentik ends up with.
    /// If a custom image cannot be pulled, authentik's default image for the type and version
    /// is used instead, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"ghcr.io/goauthentik/proxy:2026.8.0")]
    pub container_image: Option<String>,

    /// Docker network the container joins at creation. An outpost that leaves it unset or
    /// `null` takes the one under `defaults`; unset there too, or `""`, it is Docker's
    /// default bridge network (`""` in an outpost's `config` overrides `defaults`). The
    /// network must exist on the engine. Anything `docker run
    /// --network` takes: a name, an id or id prefix, `default`, `host`, `none`,
    /// `container:<name>` (the outpost shares that container's network). On `host`, `none` and
    /// `container:<name>` Docker publishes no ports: set `docker_map_ports: false` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"traefik")]
    pub docker_network: Option<String>,

    /// Publish the outpost type's ports on the host: proxy 9000, 9443; ldap 389 (container
    /// 3389), 636 (container 6636); radius 1812/udp; rac none. Default true. See `ports` to
    /// change host ports or bind addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub docker_map_ports: Option<bool>,

    /// Extra container labels. authentik's own labels and, for proxy outposts, the Traefik
    /// labels win over these. Keys starting with `outpostctl.` and
    /// `io.goauthentik.outpost-uuid` are reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        extend("propertyNames" = {"pattern": LABEL_KEY_PATTERN, "minimum": 0}),
        extend("additionalProperties" = {"type": ["string", "number", "boolean"]}),
        example = serde_json::json!({"com.example.team": "infra"})
    )]
    pub docker_labels: Option<BTreeMap<String, serde_json::Value>>,

    /// Accepted so authentik's settings paste unchanged; the outpost reads it from authentik,
    /// so it has no effect on the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,

    /// Accepted so authentik's settings paste unchanged; the outpost reads it from authentik,
    /// so it has no effect on the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"minutes=5")]
    pub refresh_interval: Option<String>,
}

/// authentik's outpost log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
}

/// Settings every outpost inherits. The keys of an outpost's `config`, plus the ones below.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[schemars(transform = authentik_config_transform)]
pub struct Defaults {
    /// The authentik version the outposts run: fills `%(version)s` in image names and picks
    /// the health check. Use the version of your authentik server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(VERSION_PATTERN), example = &"2026.8.0")]
    pub authentik_version: Option<String>,

    /// Image template for outposts without `container_image`. `%(type)s` is the outpost type,
    /// `%(version)s` is `authentik_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "ghcr.io/goauthentik/%(type)s:%(version)s"))]
    pub container_image_base: Option<String>,

    /// When to pull images: `missing` (default), `always` or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullPolicy>,

    /// Create containers from their image's id (`sha256:...`) instead of its name (default
    /// false). Docker re-resolves the image name of every container it lists; a container
    /// made from the id is listed without that lookup, which makes a `plan` of many outposts
    /// several times faster (1,000 outposts on Docker 20.10: see BENCHMARKS.md). The cost:
    /// `docker ps` and `docker inspect` show the id as the container's image, not
    /// `ghcr.io/goauthentik/...` (outpostctl keeps the name in the label `outpostctl.image`
    /// and shows it in `plan` and `status`). Changing it recreates the containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_by_id: Option<bool>,

    #[serde(flatten)]
    pub config: OutpostConfig,
}

/// Closes an authentik settings object to unknown keys, except `kubernetes_*` keys, which
/// authentik's settings block carries and which do not apply to Docker.
fn authentik_config_transform(schema: &mut Schema) {
    schema.insert("additionalProperties".into(), false.into());
    schema.insert(
        "patternProperties".into(),
        serde_json::json!({
            "^kubernetes_": {
                "description": "authentik's Kubernetes setting: accepted so the settings block pastes unchanged, and ignored on Docker (with a warning)."
            }
        }),
    );
}

/// The schema document: the manifest schema with the `$schema` dialect of schemars.
pub fn schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let schema = generator.into_root_schema_for::<Document>();
    let mut value = schema.to_value();
    // Defaults flattens OutpostConfig; make sure the merged object keeps the closed shape.
    if let Some(defs) = value.get_mut("$defs").and_then(|d| d.as_object_mut())
        && let Some(d) = defs.get_mut("Defaults").and_then(|d| d.as_object_mut())
    {
        d.insert("additionalProperties".into(), false.into());
    }
    polish(&mut value);
    drop_shadowed_descriptions(&mut value);
    value
}

/// Removes the description of each `$defs` type that is only ever used by properties with a
/// description of their own (`pull`, `log_level`, `ssh`, `token`, ...). An editor hovering
/// an optional property (`anyOf [T, null]`) shows T's description instead of the property's
/// (yaml-language-server does), and the property's says what the key is for where it stands.
/// Types also used elsewhere (an outpost, under `outposts:` NAME) keep theirs.
fn drop_shadowed_descriptions(schema: &mut serde_json::Value) {
    use serde_json::Value;
    /// Each `$ref` under `node` (at `path`, its segments) with whether it is covered: the
    /// schema of a described property, or a branch of one's `anyOf`.
    fn refs(node: &Value, path: &mut Vec<String>, out: &mut Vec<(String, bool)>) {
        match node {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push((r.clone(), false));
                }
                for (k, v) in map {
                    path.push(k.clone());
                    refs(v, path, out);
                    path.pop();
                }
                // A described property: the refs it holds directly or in its `anyOf` are
                // covered by its description.
                if path.len() >= 2
                    && path[path.len() - 2] == "properties"
                    && map.contains_key("description")
                {
                    let own: Vec<&str> = map
                        .get("$ref")
                        .and_then(Value::as_str)
                        .into_iter()
                        .chain(
                            map.get("anyOf")
                                .and_then(Value::as_array)
                                .into_iter()
                                .flatten()
                                .filter_map(|b| b.get("$ref").and_then(Value::as_str)),
                        )
                        .collect();
                    for r in own {
                        // The matching entries were pushed by this node and its branches.
                        if let Some(e) = out.iter_mut().rev().find(|(x, c)| x == r && !c) {
                            e.1 = true;
                        }
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    path.push(i.to_string());
                    refs(v, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(schema, &mut Vec::new(), &mut found);
    let Some(defs) = schema.get_mut("$defs").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, def) in defs.iter_mut() {
        let target = format!("#/$defs/{name}");
        let mut uses = found.iter().filter(|(r, _)| *r == target).peekable();
        if uses.peek().is_some()
            && uses.all(|(_, covered)| *covered)
            && let Some(d) = def.as_object_mut()
        {
            d.remove("description");
        }
    }
}

/// Shapes the generated schema for editors (yaml-language-server, VS Code):
/// - an enum whose values have doc comments becomes `enum` + `enumDescriptions` instead of a
///   `oneOf` of constants, so hovering the key shows the key's description, not a value's;
/// - single line breaks of doc comments are joined (editors render each as a paragraph);
/// - `"default": null` is dropped (completion would insert `key: null`).
fn polish(node: &mut serde_json::Value) {
    use serde_json::Value;
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(branches)) = map.get("oneOf") {
                let consts: Option<Vec<(Value, String)>> = branches
                    .iter()
                    .map(|b| {
                        let c = b.get("const")?.clone();
                        let d = b
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        Some((c, reflow(d)))
                    })
                    .collect();
                if let Some(consts) = consts.filter(|c| !c.is_empty()) {
                    map.remove("oneOf");
                    map.insert("type".into(), "string".into());
                    map.insert(
                        "enum".into(),
                        consts.iter().map(|(c, _)| c.clone()).collect(),
                    );
                    let descriptions: Vec<Value> =
                        consts.iter().map(|(_, d)| d.clone().into()).collect();
                    map.insert("enumDescriptions".into(), descriptions.clone().into());
                    map.insert("markdownEnumDescriptions".into(), descriptions.into());
                }
            }
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            for (k, v) in map.iter_mut() {
                if k == "description" {
                    if let Value::String(s) = v {
                        *s = reflow(s);
                    }
                } else {
                    polish(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(polish),
        _ => {}
    }
}

/// Joins the lines of each paragraph; blank lines still separate paragraphs.
fn reflow(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}
