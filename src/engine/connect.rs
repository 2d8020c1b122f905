//! From an integration's endpoint to a connected `Engine`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::docker::DockerEngine;
use super::transport::Transport;
use super::{Engine, EngineError, ErrorKind, ssh, tls};
use crate::desired::Secret;
use crate::plan::{Engines, Listed};
use crate::validate::{Endpoint, IntegrationDef, Validated};

pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Connects to every integration of the set, in parallel; failures are kept per engine.
pub async fn connect_all(v: &Validated) -> Engines {
    connect_each(&v.integrations).await
}

/// Connects to each of `defs`, in parallel; failures are kept per engine.
pub async fn connect_each(defs: &BTreeMap<String, IntegrationDef>) -> Engines {
    let futures = defs
        .iter()
        .map(|(name, def)| async move { (name.clone(), connect_shared(def).await) });
    futures_util::future::join_all(futures)
        .await
        .into_iter()
        .collect()
}

/// Connects to the integrations of `defs` and lists each engine that answered, all in
/// parallel: what a plan reads first, started while the outposts are still being validated
/// (`validate::validate_with`). Engines reached over ssh are left out: a login to a host (a
/// private key written, ssh run) is more than a read, and waits until the set is valid.
///
/// `local`, the local engine's read started as the process did (`LocalRead::start`), is
/// used for the integration with `local: true`, if there is one.
pub async fn read_ahead(
    defs: &BTreeMap<String, IntegrationDef>,
    local: Option<LocalRead>,
) -> (Engines, Listed) {
    let mut local = local;
    let local_host = DockerHost::of_process();
    let early = defs
        .iter()
        .filter(|(_, def)| !logs_in(&def.endpoint, &local_host));
    let reads = early.map(|(name, def)| {
        let started = match &def.endpoint {
            Endpoint::Local => local.take(),
            // The same socket named by its path: read once.
            Endpoint::Unix { path } if local.as_ref().is_some_and(|l| l.socket == *path) => {
                local.take()
            }
            _ => None,
        };
        async move {
            let (engine, list) = match started {
                Some(read) => read.finish().await,
                None => connect_and_list(def.endpoint.clone()).await,
            };
            (name.clone(), engine, list)
        }
    });
    let mut engines = Engines::new();
    let mut listed = Listed::new();
    for (name, engine, list) in futures_util::future::join_all(reads).await {
        if let Some(list) = list {
            listed.insert(name.clone(), list);
        }
        engines.insert(name, engine);
    }
    (engines, listed)
}

/// Whether reaching `endpoint` is a login over ssh: an `ssh://` integration, or `local: true`
/// under DOCKER_HOST=ssh:// (`local_host`).
fn logs_in(endpoint: &Endpoint, local_host: &Result<DockerHost, EngineError>) -> bool {
    match endpoint {
        Endpoint::Ssh { .. } => true,
        Endpoint::Local => matches!(local_host, Ok(DockerHost::Ssh { .. })),
        _ => false,
    }
}

/// An engine connected to (or why not) and its containers listed (None: not connected).
type Read = (
    Result<Arc<dyn Engine>, EngineError>,
    Option<Result<Vec<super::Observed>, EngineError>>,
);

async fn connect_and_list(endpoint: Endpoint) -> Read {
    let engine = connect_endpoint(&endpoint)
        .await
        .map(|e| Arc::new(e) as Arc<dyn Engine>);
    let list = match &engine {
        Ok(e) => Some(e.list().await),
        Err(_) => None,
    };
    (engine, list)
}

/// The local engine (`local: true`) connected to and listed from the start of a plan, before
/// the manifests are read (which on a large set takes longer than a connection): only reads,
/// used only if the set, once valid, has a `local: true` integration, and stopped when
/// dropped unused. Only for a unix socket (DOCKER_HOST unset or `unix://`): never an ssh
/// login nor a connection over the network for a set that may not name that engine.
pub struct LocalRead {
    read: tokio::task::JoinHandle<Read>,
    /// The socket it reads.
    socket: String,
}

impl LocalRead {
    pub fn start() -> Option<LocalRead> {
        let Ok(DockerHost::Unix(socket)) = DockerHost::of_process() else {
            return None;
        };
        Some(LocalRead {
            read: tokio::spawn(connect_and_list(Endpoint::Local)),
            socket,
        })
    }

    async fn finish(mut self) -> Read {
        match (&mut self.read).await {
            Ok(read) => read,
            // It panicked: read again, as without it.
            Err(_) => connect_and_list(Endpoint::Local).await,
        }
    }
}

impl Drop for LocalRead {
    fn drop(&mut self) {
        self.read.abort();
    }
}

/// `connect`, as the shared engine a plan holds.
async fn connect_shared(def: &IntegrationDef) -> Result<Arc<dyn Engine>, EngineError> {
    connect(def).await.map(|e| Arc::new(e) as Arc<dyn Engine>)
}

/// Connects to one engine and negotiates its API version.
pub async fn connect(def: &IntegrationDef) -> Result<DockerEngine, EngineError> {
    connect_endpoint(&def.endpoint).await
}

/// `connect`, to an endpoint.
async fn connect_endpoint(endpoint: &Endpoint) -> Result<DockerEngine, EngineError> {
    let transport = match endpoint {
        Endpoint::Local => local()?,
        Endpoint::Unix { path } => Transport::unix(path)?,
        Endpoint::Http { host, port } => Transport::http(host, *port),
        Endpoint::Tls {
            host,
            port,
            ca_pem,
            client,
        } => {
            let client = client.as_ref().map(|(c, k)| (c.as_str(), k));
            tls::connect(host, *port, ca_pem.as_deref(), client)?
        }
        Endpoint::Ssh {
            user,
            host,
            port,
            key,
            host_key,
            config,
        } => ssh::connect(&ssh::Target {
            user: user.clone(),
            host: host.clone(),
            port: *port,
            key: key.clone(),
            host_key: host_key.clone(),
            config: config.clone(),
            from_docker_host: false,
        })?,
    };
    DockerEngine::new(transport).await
}

/// An environment variable as the engine settings read it: unset when empty; one that is not
/// UTF-8 is kept (its odd bytes replaced), so DOCKER_HOST so set fails to connect, naming
/// itself, instead of reaching the default socket's engine.
pub(crate) fn env(k: &str) -> Option<String> {
    std::env::var_os(k)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

/// What `local: true` reaches: DOCKER_HOST (with DOCKER_TLS_VERIFY) read once, as the Docker
/// CLI reads them, for connecting, for the engine identity validation compares, and for the
/// reads started before the set is valid (never a login over ssh).
#[derive(Debug, Clone, PartialEq)]
pub enum DockerHost {
    /// DOCKER_HOST unset or empty (the default socket), or `unix://`.
    Unix(String),
    /// `http://`, or `tcp://` without DOCKER_TLS_VERIFY.
    Http { host: String, port: u16 },
    /// `tcp://` with DOCKER_TLS_VERIFY set (to anything, as the Docker CLI reads it), or
    /// `https://`; `verify`: DOCKER_TLS_VERIFY is set, so the CA must come from the
    /// certificate directory (for `https://` without it: that directory's `ca.pem` if there
    /// is one, else the system roots, as an `https://` integration).
    Tls {
        host: String,
        port: u16,
        verify: bool,
    },
    /// `ssh://[user@]host[:port]`: what it omits is left to ssh (its config, the login name,
    /// 22), as the Docker CLI does.
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
}

impl DockerHost {
    /// `local: true` under the environment read through `env`.
    pub fn read(env: &dyn Fn(&str) -> Option<String>) -> Result<DockerHost, EngineError> {
        let Some(h) = env("DOCKER_HOST") else {
            return Ok(DockerHost::Unix(DEFAULT_SOCKET.into()));
        };
        // A password in it (`ssh://user:secret@host`) is refused without being repeated: ssh
        // would get it in `-l` (seen in `ps`), and every message would show it.
        let authority = h.split_once("://").map_or(h.as_str(), |(_, r)| r);
        let authority = authority.split('/').next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && !crate::validate::valid_user(userinfo)
        {
            return Err(EngineError::new(
                ErrorKind::Unreachable,
                "DOCKER_HOST: the part before `@` must be a user name (letters, digits, `.`, `_`, `-`); a password is not taken: log in with a key",
            ));
        }
        let host_port = |rest: &str, default: u16| -> Result<(String, u16), EngineError> {
            let (host, port) = split_host_port(&h, rest)?;
            Ok((host, port.unwrap_or(default)))
        };
        if let Some(path) = h.strip_prefix("unix://") {
            return Ok(DockerHost::Unix(path.into()));
        }
        // Without a port, Docker's: 2376 for TLS, else 2375 (as the Docker CLI fills it in).
        if let Some(rest) = h.strip_prefix("http://") {
            let (host, port) = host_port(rest, 2375)?;
            return Ok(DockerHost::Http { host, port });
        }
        let verify = env("DOCKER_TLS_VERIFY").is_some();
        if let Some(rest) = h.strip_prefix("https://") {
            let (host, port) = host_port(rest, 2376)?;
            return Ok(DockerHost::Tls { host, port, verify });
        }
        if let Some(rest) = h.strip_prefix("tcp://") {
            let (host, port) = host_port(rest, if verify { 2376 } else { 2375 })?;
            return Ok(if verify {
                DockerHost::Tls { host, port, verify }
            } else {
                DockerHost::Http { host, port }
            });
        }
        if let Some(rest) = h.strip_prefix("ssh://") {
            let (user, hostport) = match rest.split_once('@') {
                Some((u, hp)) => (Some(u.to_string()), hp),
                None => (None, rest),
            };
            let (host, port) = split_host_port(&h, hostport)?;
            return Ok(DockerHost::Ssh { user, host, port });
        }
        Err(EngineError::new(
            ErrorKind::Unreachable,
            format!("DOCKER_HOST `{h}`: use unix://, tcp://, http://, https:// or ssh://"),
        ))
    }

    /// `local: true` under this process's environment.
    pub fn of_process() -> Result<DockerHost, EngineError> {
        DockerHost::read(&env)
    }

    /// The endpoint an integration would name for the same engine, without its keys: for
    /// `Endpoint::engine_identity`.
    pub fn endpoint(&self) -> Endpoint {
        match self.clone() {
            DockerHost::Unix(path) => Endpoint::Unix { path },
            DockerHost::Http { host, port } => Endpoint::Http { host, port },
            DockerHost::Tls { host, port, .. } => Endpoint::Tls {
                host,
                port,
                ca_pem: None,
                client: None,
            },
            DockerHost::Ssh { user, host, port } => Endpoint::Ssh {
                user,
                host,
                port,
                key: None,
                host_key: None,
                config: None,
            },
        }
    }
}

/// `local: true`: DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH as the Docker CLI reads
/// them, else the default socket.
fn local() -> Result<Transport, EngineError> {
    local_with(&env)
}

/// `local`, with the environment read through `env`.
fn local_with(env: &dyn Fn(&str) -> Option<String>) -> Result<Transport, EngineError> {
    match DockerHost::read(env)? {
        DockerHost::Unix(path) => Transport::unix(&path),
        DockerHost::Http { host, port } => Ok(Transport::http(&host, port)),
        DockerHost::Tls { host, port, verify } => {
            let (ca, client) = docker_certs(env, verify)?;
            tls::connect(
                &host,
                port,
                ca.as_deref(),
                client.as_ref().map(|(c, k)| (c.as_str(), k)),
            )
        }
        DockerHost::Ssh { user, host, port } => ssh::connect(&ssh::Target {
            user,
            host,
            port,
            key: None,
            host_key: None,
            config: None,
            from_docker_host: true,
        }),
    }
}

/// A client certificate: its PEM and its key's.
type ClientCert = (String, Secret);

/// The CA and client certificate of a TLS DOCKER_HOST, where the Docker CLI looks:
/// DOCKER_CERT_PATH, else the Docker config directory (DOCKER_CONFIG, else ~/.docker); never
/// the working directory. With DOCKER_TLS_VERIFY (`verify`) the CA must be there; for
/// `https://` without it, no `ca.pem` there means the system roots.
fn docker_certs(
    env: &dyn Fn(&str) -> Option<String>,
    verify: bool,
) -> Result<(Option<String>, Option<ClientCert>), EngineError> {
    let unreachable = |m: String| EngineError::new(ErrorKind::Unreachable, m);
    let why = if verify {
        "DOCKER_TLS_VERIFY is set"
    } else {
        "DOCKER_HOST is https://"
    };
    let dir = env("DOCKER_CERT_PATH")
        .or_else(|| env("DOCKER_CONFIG"))
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".docker")));
    let Some(dir) = dir else {
        if !verify {
            return Ok((None, None));
        }
        return Err(unreachable(format!(
            "{why} but neither DOCKER_CERT_PATH nor HOME says where its certificates are: set DOCKER_CERT_PATH"
        )));
    };
    let read = |f: &str| {
        let p = dir.join(f);
        crate::validate::read_small_file(&p)
            .map_err(|e| unreachable(format!("{why} but `{}` cannot be read: {e}", p.display())))
    };
    let ca = if verify || dir.join("ca.pem").exists() {
        Some(read("ca.pem")?)
    } else {
        None
    };
    // No client certificate when neither file is there; one without the other, or one that
    // cannot be read, is an error.
    let client = if !dir.join("cert.pem").exists() && !dir.join("key.pem").exists() {
        None
    } else {
        Some((read("cert.pem")?, Secret::new(read("key.pem")?)))
    };
    Ok((ca, client))
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` of DOCKER_HOST `h`: the host without brackets, and
/// the port.
fn split_host_port(h: &str, rest: &str) -> Result<(String, Option<u16>), EngineError> {
    let unreachable = |m: String| EngineError::new(ErrorKind::Unreachable, m);
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, tail)) => match tail.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => {
                    return Err(unreachable(format!(
                        "DOCKER_HOST `{h}`: `{tail}` after the address"
                    )));
                }
            },
            None => return Err(unreachable(format!("DOCKER_HOST `{h}`: no `]`"))),
        },
        None => match rest.rsplit_once(':') {
            Some((host, p)) => (host, Some(p)),
            None => (rest, None),
        },
    };
    if !crate::validate::valid_host(host, rest.starts_with('[')) {
        return Err(unreachable(format!(
            "DOCKER_HOST `{h}`: `{host}` is not a DNS name (letters, digits, `.`, `-`, `_`) or an IP address"
        )));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| unreachable(format!("DOCKER_HOST `{h}`: `{p}` is not a port")))
        })
        .transpose()?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::{DockerHost, docker_certs, local_with, logs_in, split_host_port};
    use crate::engine::{EngineError, ErrorKind};
    use crate::validate::Endpoint;

    fn error_of(vars: &[(&str, &str)]) -> String {
        let env = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        match local_with(&env) {
            Ok(_) => panic!("{vars:?}: connected"),
            Err(e) => e.to_string(),
        }
    }

    fn host_of(vars: &[(&str, &str)]) -> Result<DockerHost, String> {
        let env = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
                .filter(|v| !v.is_empty())
        };
        DockerHost::read(&env).map_err(|e| e.to_string())
    }

    /// A password in DOCKER_HOST is refused and never repeated (ssh would show it in `ps`); a
    /// host a shell or ssh could read as more than a name is refused.
    #[test]
    fn docker_host_takes_no_password_and_only_a_plain_host() {
        for h in [
            "ssh://deploy:s3cretPW@eng:22",
            "http://u:s3cretPW@127.0.0.1:2375",
            "ssh://-oProxyCommand=x@eng",
        ] {
            let e = host_of(&[("DOCKER_HOST", h)]).expect_err(h);
            assert!(e.contains("a password is not taken"), "{e}");
            assert!(!e.contains("s3cret") && !e.contains("Proxy"), "{e}");
        }
        for h in [
            "ssh://deploy@eng;id>x;true:22",
            "tcp://a$(id):2375",
            "ssh://[::1;x]:22",
        ] {
            let e = host_of(&[("DOCKER_HOST", h)]).expect_err(h);
            assert!(e.contains("is not a DNS name"), "{e}");
        }
        assert!(host_of(&[("DOCKER_HOST", "tcp://docker_1.internal-x:2375")]).is_ok());
    }

    /// DOCKER_HOST=ssh:// without user or port leaves both to ssh (its config, the login
    /// name, 22), as the Docker CLI does; an IPv6 address loses its brackets.
    #[test]
    fn docker_host_ssh_leaves_what_it_omits_to_ssh() {
        let ssh = |user: Option<&str>, host: &str, port| DockerHost::Ssh {
            user: user.map(String::from),
            host: host.into(),
            port,
        };
        assert_eq!(
            host_of(&[("DOCKER_HOST", "ssh://eng")]),
            Ok(ssh(None, "eng", None))
        );
        assert_eq!(
            host_of(&[("DOCKER_HOST", "ssh://deploy@[::1]:2222")]),
            Ok(ssh(Some("deploy"), "::1", Some(2222)))
        );
        assert_eq!(
            split_host_port("", "[fd00::1]").expect("split"),
            ("fd00::1".to_string(), None)
        );
        assert!(split_host_port("h", "host:x").is_err());
        assert!(split_host_port("h", "[::1").is_err());
    }

    /// DOCKER_HOST is read as the Docker CLI reads it, the same way for connecting and for
    /// the engine identity: an empty variable is unset; `http://` is plain whatever
    /// DOCKER_TLS_VERIFY says; `tcp://` is TLS only with DOCKER_TLS_VERIFY (and then 2376 by
    /// default); an IPv6 host loses its brackets, as in an integration's URL.
    #[test]
    fn docker_host_is_read_as_the_cli_reads_it() {
        let http = |host: &str, port| DockerHost::Http {
            host: host.into(),
            port,
        };
        let tls = |host: &str, port, verify| DockerHost::Tls {
            host: host.into(),
            port,
            verify,
        };
        assert_eq!(
            host_of(&[]),
            Ok(DockerHost::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            host_of(&[("DOCKER_HOST", "")]),
            Ok(DockerHost::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            host_of(&[("DOCKER_HOST", "tcp://10.0.0.5"), ("DOCKER_TLS_VERIFY", "")]),
            Ok(http("10.0.0.5", 2375))
        );
        assert_eq!(
            host_of(&[
                ("DOCKER_HOST", "tcp://10.0.0.5"),
                ("DOCKER_TLS_VERIFY", "0")
            ]),
            Ok(tls("10.0.0.5", 2376, true))
        );
        assert_eq!(
            host_of(&[("DOCKER_HOST", "http://proxy"), ("DOCKER_TLS_VERIFY", "1")]),
            Ok(http("proxy", 2375))
        );
        assert_eq!(
            host_of(&[("DOCKER_HOST", "https://docker.example.com")]),
            Ok(tls("docker.example.com", 2376, false))
        );
        assert_eq!(
            host_of(&[("DOCKER_HOST", "tcp://[fd00::5]:2375/")]),
            Ok(http("fd00::5", 2375))
        );
        let wrong = host_of(&[("DOCKER_HOST", "npipe:////./pipe/docker_engine")]);
        assert!(
            wrong.as_ref().is_err_and(|e| e.contains("use unix://")),
            "{wrong:?}"
        );
    }

    /// Nothing logs in over ssh before the set is valid: neither an `ssh://` integration nor
    /// `local: true` under DOCKER_HOST=ssh:// is read early.
    #[test]
    fn an_ssh_docker_host_is_not_read_before_the_set_is_valid() {
        let host = |h: &str| {
            host_of(&[("DOCKER_HOST", h)]).map_err(|e| EngineError::new(ErrorKind::Unreachable, e))
        };
        assert!(logs_in(&Endpoint::Local, &host("ssh://deploy@eng")));
        assert!(!logs_in(&Endpoint::Local, &host("unix:///run/docker.sock")));
        assert!(!logs_in(&Endpoint::Local, &host("tcp://10.0.0.5")));
        assert!(!logs_in(&Endpoint::Local, &host("bogus://x")));
        let ssh = Endpoint::Ssh {
            user: Some("a".into()),
            host: "h".into(),
            port: None,
            key: None,
            host_key: None,
            config: None,
        };
        assert!(logs_in(&ssh, &host("unix:///run/docker.sock")));
        let http = Endpoint::Http {
            host: "h".into(),
            port: 2375,
        };
        assert!(!logs_in(&http, &host("ssh://deploy@eng")));
    }

    /// `https://` without DOCKER_TLS_VERIFY trusts the system roots when the certificate
    /// directory has no `ca.pem` (as an `https://` integration does), and a `ca.pem` there
    /// when it has one; what cannot be read is reported for what asked for TLS.
    #[test]
    fn https_docker_host_without_a_ca_file_trusts_the_system_roots() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().display().to_string();
        let env = |k: &str| match k {
            "DOCKER_CERT_PATH" => Some(path.clone()),
            _ => None,
        };
        let (ca, client) = docker_certs(&env, false).expect("no CA file: the system roots");
        assert!(ca.is_none() && client.is_none());
        let no_where = |_: &str| None;
        assert!(matches!(docker_certs(&no_where, false), Ok((None, None))));
        std::fs::write(dir.path().join("ca.pem"), "PEM").expect("write");
        let (ca, _) = docker_certs(&env, false).expect("a CA file");
        assert_eq!(ca.as_deref(), Some("PEM"));
        std::fs::write(dir.path().join("key.pem"), "KEY").expect("write");
        let err = docker_certs(&env, false)
            .map(|_| ())
            .expect_err("a key without its cert");
        assert!(
            err.to_string().contains("DOCKER_HOST is https:// but")
                && err.to_string().contains("cert.pem` cannot be read"),
            "{err}"
        );
    }

    /// An unknown host key behind DOCKER_HOST=ssh:// is explained with known_hosts, not with
    /// `ssh.host_key`, which `local: true` cannot take.
    #[test]
    fn an_unknown_host_key_behind_docker_host_points_at_known_hosts() {
        let t = crate::engine::ssh::Target {
            user: None,
            host: "127.0.0.1".into(),
            port: Some(1),
            key: None,
            host_key: None,
            config: None,
            from_docker_host: true,
        };
        let said = crate::engine::ssh::describe(
            "ssh://127.0.0.1:1",
            &t,
            "No ED25519 host key is known for [127.0.0.1]:1 and you have requested strict checking.\nHost key verification failed.",
            "",
        );
        assert!(
            said.contains("host's key is unknown")
                && said.contains("known_hosts")
                && said.contains("ssh-keyscan -p 1 127.0.0.1"),
            "{said}"
        );
        assert!(
            said.contains("DOCKER_HOST")
                && !said.contains("pin it with")
                && !said.contains("host_key: \""),
            "{said}"
        );
    }

    /// The certificates come from DOCKER_CERT_PATH, else DOCKER_CONFIG, else ~/.docker; with
    /// none of them set there is no directory to read (never the working directory). A
    /// client certificate without its key is an error, not "no client certificate".
    #[test]
    fn docker_tls_certificates_are_looked_for_as_the_cli_does() {
        let tls = [("DOCKER_HOST", "tcp://[::1]"), ("DOCKER_TLS_VERIFY", "1")];
        let with = |more: &[(&'static str, &'static str)]| {
            let mut v = tls.to_vec();
            v.extend_from_slice(more);
            error_of(&v)
        };
        assert!(
            with(&[("DOCKER_CONFIG", "/nonexistent-config")])
                .contains("`/nonexistent-config/ca.pem`")
        );
        assert!(
            with(&[("HOME", "/nonexistent-home")]).contains("`/nonexistent-home/.docker/ca.pem`")
        );
        assert!(with(&[]).contains("set DOCKER_CERT_PATH"));

        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), "x").expect("write");
        std::fs::write(dir.path().join("cert.pem"), "x").expect("write");
        let path = dir.path().display().to_string();
        let env = |k: &str| match k {
            "DOCKER_HOST" => Some("tcp://127.0.0.1".to_string()),
            "DOCKER_TLS_VERIFY" => Some("1".to_string()),
            "DOCKER_CERT_PATH" => Some(path.clone()),
            _ => None,
        };
        let err = match local_with(&env) {
            Ok(_) => panic!("connected with a certificate and no key"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("key.pem` cannot be read"), "{err}");
    }

    /// `DOCKER_TLS_VERIFY` set to anything, `0` too, means TLS, as for the Docker CLI: here
    /// the certificates it then needs are looked for (and reported missing).
    #[test]
    fn docker_tls_verify_set_to_anything_means_tls() {
        for verify in ["1", "0", "false"] {
            let env = |k: &str| match k {
                "DOCKER_HOST" => Some("tcp://127.0.0.1".to_string()),
                "DOCKER_TLS_VERIFY" => Some(verify.to_string()),
                "DOCKER_CERT_PATH" => Some("/nonexistent-certs".to_string()),
                _ => None,
            };
            let err = match local_with(&env) {
                Ok(_) => panic!("DOCKER_TLS_VERIFY={verify}: connected without certificates"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains("DOCKER_TLS_VERIFY is set but `/nonexistent-certs/ca.pem`"),
                "DOCKER_TLS_VERIFY={verify}: {err}"
            );
        }
    }
}
