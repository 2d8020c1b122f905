//! From an integration's endpoint to a connected `Engine`.

use std::sync::Arc;

use bollard::{API_DEFAULT_VERSION, Docker};

use super::docker::{DockerEngine, REQUEST_TIMEOUT_SECS, map_err};
use super::{Engine, EngineError, ErrorKind};
use crate::plan::Engines;
use crate::validate::{Endpoint, IntegrationDef, Validated};

pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Connects to every integration of the set, in parallel; failures are kept per engine.
pub async fn connect_all(v: &Validated) -> Engines {
    let futures = v.integrations.iter().map(|(name, def)| async move {
        (
            name.clone(),
            connect(def).await.map(|e| Arc::new(e) as Arc<dyn Engine>),
        )
    });
    futures_util::future::join_all(futures)
        .await
        .into_iter()
        .collect()
}

/// Connects to one engine and negotiates its API version.
pub async fn connect(def: &IntegrationDef) -> Result<DockerEngine, EngineError> {
    let (docker, url) = match &def.endpoint {
        Endpoint::Local => local()?,
        Endpoint::Unix { path } => unix(path)?,
        Endpoint::Http { host, port } => http(host, *port)?,
        Endpoint::Tls { .. } | Endpoint::Ssh { .. } => {
            return Err(EngineError::new(
                ErrorKind::Unreachable,
                format!(
                    "{}: https:// and ssh:// engines are not supported yet",
                    def.url
                ),
            ));
        }
    };
    DockerEngine::new(docker, url).await
}

fn unix(path: &str) -> Result<(Docker, String), EngineError> {
    let url = format!("unix://{path}");
    let d = Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        .map_err(|e| map_err(&url, "connect", e))?;
    Ok((d, url))
}

fn http(host: &str, port: u16) -> Result<(Docker, String), EngineError> {
    let url = format!("http://{host}:{port}");
    let d = Docker::connect_with_http(&url, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        .map_err(|e| map_err(&url, "connect", e))?;
    Ok((d, url))
}

/// `local: true`: DOCKER_HOST like the Docker CLI, else the default socket.
fn local() -> Result<(Docker, String), EngineError> {
    match std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        None => unix(DEFAULT_SOCKET),
        Some(h) => {
            if let Some(path) = h.strip_prefix("unix://") {
                unix(path)
            } else if let Some(rest) = h
                .strip_prefix("tcp://")
                .or_else(|| h.strip_prefix("http://"))
            {
                let (host, port) = rest
                    .trim_end_matches('/')
                    .rsplit_once(':')
                    .and_then(|(h, p)| p.parse().ok().map(|p| (h.to_string(), p)))
                    .ok_or_else(|| {
                        EngineError::new(
                            ErrorKind::Unreachable,
                            format!("DOCKER_HOST `{h}` has no port"),
                        )
                    })?;
                http(&host, port)
            } else {
                Err(EngineError::new(
                    ErrorKind::Unreachable,
                    format!(
                        "DOCKER_HOST `{h}`: only unix:// and tcp:// are understood for local engines"
                    ),
                ))
            }
        }
    }
}
