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
pub async fn read_ahead(defs: &BTreeMap<String, IntegrationDef>) -> (Engines, Listed) {
    let early = defs
        .iter()
        .filter(|(_, def)| !matches!(def.endpoint, Endpoint::Ssh { .. }));
    let reads = early.map(|(name, def)| async move {
        let engine = connect_shared(def).await;
        let list = match &engine {
            Ok(e) => Some(e.list().await),
            Err(_) => None,
        };
        (name.clone(), engine, list)
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

/// `connect`, as the shared engine a plan holds.
async fn connect_shared(def: &IntegrationDef) -> Result<Arc<dyn Engine>, EngineError> {
    connect(def).await.map(|e| Arc::new(e) as Arc<dyn Engine>)
}

/// Connects to one engine and negotiates its API version.
pub async fn connect(def: &IntegrationDef) -> Result<DockerEngine, EngineError> {
    let transport = match &def.endpoint {
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
        })?,
    };
    DockerEngine::new(transport).await
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// `local: true`: DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH as the Docker CLI reads
/// them, else the default socket.
fn local() -> Result<Transport, EngineError> {
    local_with(&env)
}

/// `local`, with the environment read through `env`.
fn local_with(env: &dyn Fn(&str) -> Option<String>) -> Result<Transport, EngineError> {
    let Some(h) = env("DOCKER_HOST") else {
        return Transport::unix(DEFAULT_SOCKET);
    };
    let unreachable = |m: String| EngineError::new(ErrorKind::Unreachable, m);
    let host_port = |rest: &str, default: u16| -> Result<(String, u16), EngineError> {
        let rest = rest.trim_end_matches('/');
        match rest.rsplit_once(':') {
            Some((host, p)) => p
                .parse()
                .map(|p| (host.to_string(), p))
                .map_err(|_| unreachable(format!("DOCKER_HOST `{h}`: `{p}` is not a port"))),
            None => Ok((rest.to_string(), default)),
        }
    };
    if let Some(path) = h.strip_prefix("unix://") {
        return Transport::unix(path);
    }
    // Without a port, Docker's: 2376 for TLS, else 2375 (as the Docker CLI fills it in).
    if let Some(rest) = h.strip_prefix("http://") {
        let (host, port) = host_port(rest, 2375)?;
        return Ok(Transport::http(&host, port));
    }
    if let Some(rest) = h
        .strip_prefix("tcp://")
        .or_else(|| h.strip_prefix("https://"))
    {
        // Set to anything (even `0`), as the Docker CLI reads it.
        let verify = env("DOCKER_TLS_VERIFY").is_some() || h.starts_with("https://");
        let (host, port) = host_port(rest, if verify { 2376 } else { 2375 })?;
        if !verify {
            return Ok(Transport::http(&host, port));
        }
        let dir = env("DOCKER_CERT_PATH")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".docker")))
            .unwrap_or_default();
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p).map_err(|e| {
                unreachable(format!(
                    "DOCKER_TLS_VERIFY is set but `{}` cannot be read: {e}",
                    p.display()
                ))
            })
        };
        let ca = read("ca.pem")?;
        let client = match (read("cert.pem"), read("key.pem")) {
            (Ok(c), Ok(k)) => Some((c, Secret::new(k))),
            _ => None,
        };
        return tls::connect(
            &host,
            port,
            Some(&ca),
            client.as_ref().map(|(c, k)| (c.as_str(), k)),
        );
    }
    if let Some(rest) = h.strip_prefix("ssh://") {
        let (user, hostport) = match rest.split_once('@') {
            Some((u, hp)) => (u.to_string(), hp),
            None => (env("USER").unwrap_or_else(|| "root".into()), rest),
        };
        let (host, port) = host_port(hostport, 22)?;
        let target = ssh::Target {
            user: Some(user),
            host,
            port: Some(port),
            key: None,
            host_key: None,
            config: None,
        };
        return ssh::connect(&target);
    }
    Err(unreachable(format!(
        "DOCKER_HOST `{h}`: use unix://, tcp://, http://, https:// or ssh://"
    )))
}

#[cfg(test)]
mod tests {
    use super::local_with;

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
