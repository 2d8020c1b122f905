//! How requests reach one engine. Every kind of integration (unix socket, plain http, TLS,
//! ssh) is a `Transport`: the function bollard is handed as its custom transport, kept by
//! outpostctl as well, so that it can read what bollard does not give: the `Api-Version`
//! header of `GET /_ping`. The API version is negotiated through it, as the Docker CLI does:
//! one request the engine answers at once, where bollard's `/version` makes Docker 20.10 run
//! `runc --version` and `docker-init --version` first (10-15 ms, before every command).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as BError;
use bollard::{BollardRequest, ClientVersion, Docker};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::docker::{map_err, request_timeout};
use super::{EngineError, ErrorKind};

type Send = Arc<
    dyn Fn(BollardRequest) -> BoxFuture<'static, Result<Response<Incoming>, BError>>
        + std::marker::Send
        + Sync,
>;

/// One engine's transport: how a request is sent, and the address bollard builds URIs on.
#[derive(Clone)]
pub struct Transport {
    send: Send,
    /// `scheme://address` before a request's path (for ssh and TLS the connector dials on its
    /// own; for a unix socket the address is its hex-encoded path, as hyperlocal reads it).
    base: String,
    /// Where the engine is, for messages: `unix:///var/run/docker.sock`, `ssh://u@h:22`, ...
    pub url: String,
    /// How long a request may take (bollard's client timeout).
    pub timeout: Duration,
}

impl Transport {
    pub fn new<F, Fut>(send: F, base: impl Into<String>, url: impl Into<String>) -> Transport
    where
        F: Fn(BollardRequest) -> Fut + std::marker::Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Incoming>, BError>> + std::marker::Send + 'static,
    {
        Transport {
            send: Arc::new(move |req| Box::pin(send(req))),
            base: base.into(),
            url: url.into(),
            timeout: request_timeout(),
        }
    }

    /// A unix socket, such as the local engine's. A missing socket is said at once.
    pub fn unix(path: &str) -> Result<Transport, EngineError> {
        let url = format!("unix://{path}");
        if !std::path::Path::new(path).exists() {
            return Err(map_err(
                &url,
                "connect",
                BError::SocketNotFoundError(path.to_string()),
            ));
        }
        Ok(Transport::new(
            send_over(hyperlocal::UnixConnector),
            format!("unix://{}", hex::encode(path.as_bytes())),
            url,
        ))
    }

    /// Plain http, such as a docker-socket-proxy.
    pub fn http(host: &str, port: u16) -> Transport {
        let url = format!("http://{}", authority(host, port));
        Transport::new(send_over(tcp_connector()), url.clone(), url)
    }

    /// At least a second: bollard keeps its timeout in whole seconds.
    pub fn with_timeout(mut self, timeout: Duration) -> Transport {
        self.timeout = timeout.max(Duration::from_secs(1));
        self
    }

    /// A bollard client on this transport that speaks `version`.
    pub fn docker(&self, version: &ClientVersion) -> Result<Docker, EngineError> {
        let send = Arc::clone(&self.send);
        Docker::connect_with_custom_transport(
            move |req| send(req),
            Some(self.base.clone()),
            self.timeout.as_secs(),
            version,
        )
        .map_err(|e| EngineError::new(ErrorKind::Unreachable, format!("{}: {e}", self.url)))
    }

    /// `GET /_ping` within `timeout`: the engine's API version from its `Api-Version` header,
    /// or None when the answer has none or is an error (a proxy that drops headers, or allows
    /// only `/version`): `/version` is asked then, and its answer explains an error.
    pub async fn ping(&self, timeout: Duration) -> Result<Option<ClientVersion>, BError> {
        self.ping_reading(timeout, |resp| {
            resp.headers()
                .get("api-version")?
                .to_str()
                .ok()
                .and_then(parse_version)
        })
        .await
    }

    /// The engine's clock in nanoseconds since the epoch, from the `Date` header of its answer
    /// to `GET /_ping` (whole seconds, rounded down): for a socket proxy that refuses `info`
    /// (docker-socket-proxy's default) but passes the ping. None when the answer has no
    /// readable `Date` or is an error.
    pub async fn date(&self) -> Result<Option<i64>, BError> {
        self.ping_reading(self.timeout, |resp| {
            http_date_nanos(resp.headers().get(hyper::header::DATE)?.to_str().ok()?)
        })
        .await
    }

    /// `GET /_ping` within `timeout`, and what `read` finds in a successful answer's head.
    async fn ping_reading<T>(
        &self,
        timeout: Duration,
        read: impl FnOnce(&Response<Incoming>) -> Option<T>,
    ) -> Result<Option<T>, BError> {
        let req = hyper::Request::get(format!("{}/_ping", self.base))
            .body(bollard::body_full(Bytes::new()))
            .map_err(|e| BError::IOError {
                err: std::io::Error::other(e),
            })?;
        let asked = async {
            let resp = (self.send)(req).await?;
            let found = if resp.status().is_success() {
                read(&resp)
            } else {
                None
            };
            // Read to the end, so that a kept-alive connection can serve the next request.
            resp.into_body().collect().await.map_err(BError::from)?;
            Ok(found)
        };
        tokio::time::timeout(timeout, asked)
            .await
            .unwrap_or(Err(BError::RequestTimeoutError))
    }
}

/// An HTTP `Date` (`Fri, 04 Dec 2026 20:08:11 GMT`) in nanoseconds since the epoch.
fn http_date_nanos(date: &str) -> Option<i64> {
    let at = httpdate::parse_http_date(date).ok()?;
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_nanos()).ok()
}

/// A transport's send over a hyper client on `connector`, a new connection per request as
/// bollard's own unix and http clients do (an engine restarted between two requests is met on
/// a fresh connection).
fn send_over<C>(
    connector: C,
) -> impl Fn(BollardRequest) -> BoxFuture<'static, Result<Response<Incoming>, BError>>
+ std::marker::Send
+ Sync
+ 'static
where
    C: hyper_util::client::legacy::connect::Connect + Clone + std::marker::Send + Sync + 'static,
{
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    move |req: BollardRequest| {
        let client = client.clone();
        Box::pin(async move { client.request(req).await.map_err(BError::from) })
    }
}

/// `host:port`, with an IPv6 address in brackets (`[::1]:2375`).
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `1.41` -> 1.41; anything else -> None.
fn parse_version(s: &str) -> Option<ClientVersion> {
    let (major, minor) = s.trim().split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

/// A TCP connector whose connections probe a silent peer: an engine's host that went away
/// (powered off, or a NAT or firewall that dropped the idle connection) ends a watch's event
/// stream, or a response stuck half-read, in about a minute instead of never (Docker sends
/// nothing on an idle event stream, and bollard's timeout ends when the headers arrive).
pub fn tcp_connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_keepalive(Some(Duration::from_secs(30)));
    c.set_keepalive_interval(Some(Duration::from_secs(10)));
    c.set_keepalive_retries(Some(3));
    c
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn the_date_header_is_read_in_nanoseconds() {
        assert_eq!(
            super::http_date_nanos("Fri, 04 Dec 2026 20:08:11 GMT"),
            Some(1_796_414_891_000_000_000)
        );
        assert_eq!(super::http_date_nanos("yesterday"), None);
        assert_eq!(super::http_date_nanos(""), None);
    }

    #[test]
    fn the_api_version_header_is_read_as_major_and_minor() {
        let v = parse_version("1.41").expect("a version");
        assert_eq!((v.major_version, v.minor_version), (1, 41));
        assert!(parse_version(" 1.52 ").is_some());
        assert!(parse_version("1").is_none());
        assert!(parse_version("one.two").is_none());
        assert!(parse_version("").is_none());
    }
}
