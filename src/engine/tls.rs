//! https:// and tcp:// engines: TLS with the keypairs from the manifest, kept in memory.
//!
//! The engine's certificate is always verified: against the `tls_verification` CA when one
//! is given (and only it), else the system's roots. bollard's own TLS reads key files lazily
//! and swallows errors, so the connection is built here (rustls with the ring provider, no
//! temp files) and handed to bollard as a custom transport.

use std::error::Error as StdError;
use std::sync::Arc;

use bollard::BollardRequest;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::transport::Transport;
use super::{EngineError, ErrorKind};
use crate::desired::Secret;

/// A client for `https://host:port` with the given trust and identity.
pub fn connect(
    host: &str,
    port: u16,
    ca_pem: Option<&str>,
    client: Option<(&str, &Secret)>,
) -> Result<Transport, EngineError> {
    let url = format!("https://{}", super::transport::authority(host, port));
    let config = client_config(&url, ca_pem, client)?;
    let mut tcp = super::transport::tcp_connector();
    tcp.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(tcp);
    let http = Client::builder(TokioExecutor::new()).build(connector);
    let shown = url.clone();
    let transport = move |req: BollardRequest| {
        let http = http.clone();
        let shown = shown.clone();
        async move {
            http.request(req)
                .await
                .map_err(|e| bollard::errors::Error::IOError {
                    err: std::io::Error::other(describe(&shown, &e)),
                })
        }
    };
    Ok(Transport::new(transport, url.clone(), url))
}

fn client_config(
    url: &str,
    ca_pem: Option<&str>,
    client: Option<(&str, &Secret)>,
) -> Result<ClientConfig, EngineError> {
    let bad = |what: String| EngineError::new(ErrorKind::Unreachable, format!("{url}: {what}"));
    let mut roots = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let certs = certificates(pem).map_err(|e| {
                bad(format!(
                    "the tls_verification certificate cannot be read: {e}"
                ))
            })?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    bad(format!(
                        "the tls_verification certificate is not a usable CA certificate: {e}"
                    ))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                // A broken system root is skipped, as every TLS client does.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(bad("the system has no root certificates to verify the engine with; set `tls_verification` to the engine's CA keypair".into()));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key)) => with_client(builder, cert_pem, key).map_err(bad)?,
    };
    Ok(config)
}

/// Why a client certificate and key cannot authenticate a TLS connection (unreadable, an
/// X.509 v1 certificate, a key of another certificate), if they cannot: what `validate`
/// says of a keypair before any engine is reached.
pub fn client_pair_problem(cert_pem: &str, key: &Secret) -> Option<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(RootCertStore::empty());
    with_client(builder, cert_pem, key).err()
}

fn with_client(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    cert_pem: &str,
    key: &Secret,
) -> Result<ClientConfig, String> {
    let chain = certificates(cert_pem)
        .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes()).map_err(|_| {
        "the client key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)".to_string()
    })?;
    builder.with_client_auth_cert(chain, key).map_err(|e| {
        let text = e.to_string();
        if text.contains("UnsupportedCertVersion") {
            "the client certificate is an X.509 v1 certificate; TLS needs v3: re-issue it with extensions (e.g. `openssl x509 -req ... -extfile ext.cnf`)".into()
        } else if text.contains("KeyMismatch") {
            // rustls names its error type; said in words.
            "the client key is not the key of the client certificate: give the key the certificate was issued for".into()
        } else {
            format!("the client certificate and key do not go together: {text}")
        }
    })
}

fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// A TLS failure in words a person can act on: which side refused and why.
pub fn describe(url: &str, err: &(dyn StdError + 'static)) -> String {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return tls_message(url, tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return tls_message(url, tls);
            }
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return format!(
                    "cannot reach the engine at {url}: connection refused (is the engine listening there?)"
                );
            }
        }
        source = e.source();
    }
    let mut text = err.to_string();
    let mut s = err.source();
    while let Some(e) = s {
        text.push_str(&format!(": {e}"));
        s = e.source();
    }
    // The rustls error is sometimes only reachable as text through hyper's wrappers; match
    // both its Debug names and rustls 0.23's Display wording.
    let by_text = [
        (
            ["UnknownIssuer", "unknown issuer"],
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ),
        (
            ["NotValidForName", "not valid for name"],
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        ),
        (
            ["Expired", "certificate expired"],
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        ),
        (
            ["InvalidContentType", "InvalidContentType"],
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        ),
    ];
    for (needles, e) in by_text {
        if let Some(at) = needles.iter().find_map(|n| text.find(n)) {
            // Keep rustls' own detail (which names the certificate is valid for, when).
            let detail = text[at..].trim();
            return format!("{} ({detail})", tls_message(url, &e));
        }
    }
    // With TLS 1.3 the engine checks the client certificate after the handshake; its refusal
    // can arrive as a connection closed before the first request could be sent (hyper words
    // it three ways, depending on when the close is seen).
    if text.contains("connection was not ready")
        || text.contains("connection closed before message completed")
        || text.contains("operation was canceled: connection closed")
    {
        return format!(
            "TLS to {url}: the engine rejected the client certificate or closed the connection right after the handshake (a missing client certificate, or one not signed by a CA the engine trusts): check `tls_authentication`"
        );
    }
    format!("cannot reach the engine at {url}: {text}")
}

fn tls_message(url: &str, e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => format!(
            "TLS to {url}: the engine's certificate is not signed by the trusted CA (the `tls_verification` keypair's certificate, or the system roots)"
        ),
        E::InvalidCertificate(C::NotValidForName)
        | E::InvalidCertificate(C::NotValidForNameContext { .. }) => format!(
            "TLS to {url}: the engine's certificate is not valid for this host name; use the name (or IP address) the certificate was issued for"
        ),
        E::InvalidCertificate(C::Expired) | E::InvalidCertificate(C::ExpiredContext { .. }) => {
            format!("TLS to {url}: the engine's certificate has expired")
        }
        E::AlertReceived(
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateRequired
            | A::CertificateUnknown
            | A::AccessDenied
            | A::DecryptError,
        ) => format!(
            "TLS to {url}: the engine rejected the client certificate (missing, or not signed by a CA the engine trusts): check `tls_authentication`"
        ),
        E::AlertReceived(A::HandshakeFailure) => format!(
            "TLS to {url}: the handshake failed; the engine may require a client certificate (`tls_authentication`)"
        ),
        // A plain-HTTP server answering a TLS hello (a socket proxy, an engine without TLS).
        E::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => format!(
            "TLS to {url}: the engine did not answer with TLS (plain HTTP there?); `https://` and `tcp://` always use TLS: write `http://` for an engine or socket proxy without TLS"
        ),
        other => format!("TLS to {url}: {other}"),
    }
}
