//! A registry that answers a pull's first steps and then stops sending: the API check
//! (`/v2/`) and the image's manifest are served, and a request for a blob (a layer or the
//! image's config) is held open without a word until the registry is dropped. The engine
//! has then reported progress ("Pulling fs layer") and waits for good: a pull stalled half-way.
//! Plain HTTP on 127.0.0.1, which Docker treats as an insecure registry (it first tries HTTPS
//! and is told, as by Go's own server, that this is HTTP).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct StallingRegistry {
    stop: Arc<AtomicBool>,
    blobs: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl StallingRegistry {
    pub fn start(port: u16) -> StallingRegistry {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the registry");
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let blobs: Arc<AtomicUsize> = Default::default();
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&blobs));
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            let start = Instant::now();
            // Bounded: never outlives the test by much.
            while !flag.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(300) {
                match listener.accept() {
                    Ok((s, _)) => {
                        if let Some(stalled) = answer(s) {
                            count.fetch_add(1, Ordering::SeqCst);
                            held.push(stalled);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        StallingRegistry {
            stop,
            blobs,
            thread: Some(thread),
        }
    }

    /// The blob requests it holds (the engine got as far as downloading).
    pub fn blob_requests(&self) -> usize {
        self.blobs.load(Ordering::SeqCst)
    }
}

impl Drop for StallingRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one connection's request; a blob request's connection is given back, unanswered.
fn answer(mut s: TcpStream) -> Option<TcpStream> {
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).ok().filter(|n| *n > 0)?;
        if head.is_empty() && buf[0] == 0x16 {
            // A TLS handshake: say what Go's HTTP server says, and the client falls back.
            let _ = s.write_all(
                b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
            );
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let (kind, body) = if path.contains("/blobs/") {
        return Some(s);
    } else if path.contains("/manifests/") {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            manifest(),
        )
    } else if path == "/v2/" || path == "/v2" {
        ("application/json", "{}".to_string())
    } else {
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return None;
    };
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    None
}

/// An image manifest (schema 2) of one layer; neither blob exists anywhere.
fn manifest() -> String {
    let digest = |seed: &str| {
        use sha2::Digest;
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(seed.as_bytes()))
        )
    };
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1469,
            "digest": digest("outpostctl stalled config"),
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": 2811478,
            "digest": digest("outpostctl stalled layer"),
        }],
    })
    .to_string()
}
