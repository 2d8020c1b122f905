//! A pass-through proxy in front of the Docker engine's unix socket that times what goes
//! through it, for `benches/plan.rs` (included with `#[path]`).
//!
//! The benchmark runs the binary with `DOCKER_HOST=unix://<tmp>/proxy.sock`. Every connection
//! accepted there is joined to a new connection to the engine's socket by two threads, one per
//! direction, which copy the bytes unchanged. Each direction is parsed as HTTP/1.1 just enough
//! to find where a message starts and ends (request and status line, `Content-Length`,
//! `Transfer-Encoding: chunked`, bodies that end with the connection; `HEAD`, 1xx, 204 and
//! 304 answers have none; after a `101` both directions are copied without parsing). For each
//! request the proxy records:
//!
//! - `sent`: when the read that brought the request's first byte from the client returned;
//! - `answered`: when the write that forwarded the last byte of the engine's answer to the
//!   client returned (for an answer that ends with the connection: the last write before
//!   the engine closed it).
//!
//! So `answered - sent` is the engine's time for the request plus the proxy's copying, and
//! the client's time is everything else.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request seen by the proxy and what became of it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The connection it came on, numbered from 0 in the order they were accepted.
    pub conn: u64,
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// When the request's first byte arrived from the client.
    pub sent: Instant,
    /// The answer's final status (no 1xx).
    pub status: Option<u16>,
    /// When the answer's last byte was forwarded to the client; `None`: never answered.
    pub answered: Option<Instant>,
    /// Bytes of the answer, head included.
    pub answer_bytes: u64,
}

impl Exchange {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

struct Shared {
    log: Mutex<Vec<Exchange>>,
    /// Connections accepted and not yet finished in both directions.
    active: AtomicUsize,
    next_conn: AtomicU64,
    stop: AtomicBool,
    /// What went wrong in the proxy itself (not the client's or the engine's closing).
    errors: Mutex<Vec<String>>,
}

/// The proxy; stopped, and its socket removed, when dropped.
pub struct Proxy {
    path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// The engine's socket: DOCKER_HOST's `unix://` path, else `/var/run/docker.sock`.
pub fn engine_socket() -> Result<PathBuf, String> {
    match std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        None => Ok(PathBuf::from("/var/run/docker.sock")),
        Some(h) => match h.strip_prefix("unix://") {
            Some(p) => Ok(PathBuf::from(p)),
            None => Err(format!(
                "DOCKER_HOST `{h}`: the benchmark's proxy only forwards to a unix socket \
                 (unix://PATH, or DOCKER_HOST unset for /var/run/docker.sock)"
            )),
        },
    }
}

impl Proxy {
    /// Listens on `path` and forwards every connection to `upstream`.
    pub fn start(path: &Path, upstream: &Path) -> Result<Proxy, String> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        // The engine must answer through it before the benchmark relies on it.
        UnixStream::connect(upstream)
            .map_err(|e| format!("cannot connect to {}: {e}", upstream.display()))?;
        let shared = Arc::new(Shared {
            log: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            next_conn: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
        });
        let upstream = upstream.to_path_buf();
        let s = Arc::clone(&shared);
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let client = match client {
                    Ok(c) => c,
                    Err(e) => {
                        s.errors.lock().unwrap().push(format!("accept: {e}"));
                        continue;
                    }
                };
                s.active.fetch_add(1, Ordering::SeqCst);
                let conn = s.next_conn.fetch_add(1, Ordering::SeqCst);
                let engine = match UnixStream::connect(&upstream) {
                    Ok(e) => e,
                    Err(e) => {
                        s.errors.lock().unwrap().push(format!(
                            "connection {conn}: cannot connect to {}: {e}",
                            upstream.display()
                        ));
                        s.active.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                };
                serve(Arc::clone(&s), conn, client, engine);
            }
        });
        Ok(Proxy {
            path: path.to_path_buf(),
            shared,
            accept: Some(accept),
        })
    }

    /// The socket to point DOCKER_HOST at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The exchanges recorded since the last call, in the order the requests arrived, once
    /// every connection accepted so far has ended (at most `wait`: `Err` after that, or when
    /// the proxy itself failed).
    pub fn take(&self, wait: Duration) -> Result<Vec<Exchange>, String> {
        let start = Instant::now();
        while self.shared.active.load(Ordering::SeqCst) > 0 {
            if start.elapsed() > wait {
                return Err(format!(
                    "{} connections through the proxy still open after {} s",
                    self.shared.active.load(Ordering::SeqCst),
                    wait.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let errors: Vec<String> = std::mem::take(&mut *self.shared.errors.lock().unwrap());
        if !errors.is_empty() {
            return Err(format!("the proxy failed: {}", errors.join("; ")));
        }
        let mut log = std::mem::take(&mut *self.shared.log.lock().unwrap());
        log.sort_by_key(|x| x.sent);
        Ok(log)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Decrements `active` when both directions of a connection are done.
struct Finished(Arc<Shared>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The requests of one connection waiting for their answer: (index in the log, is HEAD).
type Pending = Arc<Mutex<VecDeque<(usize, bool)>>>;

fn serve(s: Arc<Shared>, conn: u64, client: UnixStream, engine: UnixStream) {
    let done = Arc::new(Finished(Arc::clone(&s)));
    let pending: Pending = Arc::new(Mutex::new(VecDeque::new()));
    let upgraded = Arc::new(AtomicBool::new(false));
    let (c_in, e_out) = match (client.try_clone(), engine.try_clone()) {
        (Ok(c), Ok(e)) => (c, e),
        (Err(e), _) | (_, Err(e)) => {
            s.errors
                .lock()
                .unwrap()
                .push(format!("connection {conn}: {e}"));
            return;
        }
    };
    {
        let (s, done, pending, upgraded) = (
            Arc::clone(&s),
            Arc::clone(&done),
            Arc::clone(&pending),
            Arc::clone(&upgraded),
        );
        std::thread::spawn(move || {
            requests(&s, conn, c_in, e_out, &pending, &upgraded);
            drop(done);
        });
    }
    std::thread::spawn(move || {
        answers(&s, engine, client, &pending, &upgraded);
        drop(done);
    });
}

/// Client to engine: records each request's arrival, forwards the bytes.
fn requests(
    s: &Shared,
    conn: u64,
    mut from: UnixStream,
    mut to: UnixStream,
    pending: &Pending,
    upgraded: &AtomicBool,
) {
    let mut parser = Parser::new(Side::Request);
    let mut buf = vec![0u8; 64 * 1024];
    let mut current: Option<usize> = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let at = Instant::now();
        if upgraded.load(Ordering::SeqCst) {
            parser.state = State::Raw;
        }
        let mut data = &buf[..n];
        while !data.is_empty() {
            let (used, event) = parser.step(data);
            data = &data[used..];
            match event {
                Some(Event::Start) => {
                    let mut log = s.log.lock().unwrap();
                    log.push(Exchange {
                        conn,
                        method: String::new(),
                        target: String::new(),
                        sent: at,
                        status: None,
                        answered: None,
                        answer_bytes: 0,
                    });
                    current = Some(log.len() - 1);
                }
                Some(Event::Head { line, .. }) => {
                    let mut f = line.split_whitespace();
                    let method = f.next().unwrap_or_default().to_string();
                    let target = f.next().unwrap_or_default().to_string();
                    if let Some(i) = current {
                        pending
                            .lock()
                            .unwrap()
                            .push_back((i, method.eq_ignore_ascii_case("HEAD")));
                        let mut log = s.log.lock().unwrap();
                        log[i].method = method;
                        log[i].target = target;
                    }
                }
                Some(Event::End) | None => {}
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Engine to client: forwards the bytes, records when each answer's last byte went out.
fn answers(
    s: &Shared,
    mut from: UnixStream,
    mut to: UnixStream,
    pending: &Pending,
    upgraded: &AtomicBool,
) {
    let mut parser = Parser::new(Side::Response);
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_write: Option<Instant> = None;
    let mut bytes: u64 = 0;
    let mut final_status: Option<u16> = None;
    'outer: loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut data = &buf[..n];
        // Where the bytes not yet forwarded start in `data`.
        let mut unsent = 0;
        let mut offset = 0;
        // A head that says "no body" ends its message with no further byte.
        while offset < n || matches!(parser.state, State::Empty) {
            let (used, event) = parser.step(data);
            data = &data[used..];
            offset += used;
            bytes += used as u64;
            match event {
                Some(Event::Start) => {
                    bytes = 0;
                    final_status = None;
                    parser.no_body = pending.lock().unwrap().front().is_some_and(|p| p.1);
                }
                Some(Event::Head { status, .. }) => {
                    if status.is_some_and(|c| (100..200).contains(&c) && c != 101) {
                        continue;
                    }
                    final_status = status;
                    if status == Some(101) {
                        upgraded.store(true, Ordering::SeqCst);
                    }
                }
                Some(Event::End) => {
                    if to.write_all(&buf[unsent..offset]).is_err() {
                        break 'outer;
                    }
                    unsent = offset;
                    let at = Instant::now();
                    last_write = Some(at);
                    if let Some((i, _)) = pending.lock().unwrap().pop_front() {
                        let mut log = s.log.lock().unwrap();
                        log[i].answered = Some(at);
                        log[i].status = final_status;
                        log[i].answer_bytes = bytes;
                    }
                    bytes = 0;
                }
                None => {}
            }
        }
        if unsent < n {
            if to.write_all(&buf[unsent..n]).is_err() {
                break;
            }
            last_write = Some(Instant::now());
        }
    }
    // An answer that ends with the connection ends with the last byte forwarded.
    if matches!(parser.state, State::UntilClose | State::Raw)
        && let Some((i, _)) = pending.lock().unwrap().pop_front()
    {
        let mut log = s.log.lock().unwrap();
        log[i].answered = last_write;
        log[i].status = final_status;
        log[i].answer_bytes = bytes;
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// Just enough HTTP/1.1

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// The message's first byte.
    Start,
    /// Its head is complete: the request or status line.
    Head { line: String, status: Option<u16> },
    /// Its last byte.
    End,
}

#[derive(Debug)]
enum State {
    Idle,
    Head(Vec<u8>),
    /// The head said there is no body.
    Empty,
    Length(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    /// The CRLF after a chunk's data: bytes still to come.
    ChunkEnd(u8),
    Trailer(Vec<u8>),
    UntilClose,
    Raw,
}

/// A parser of one direction of a connection, fed the bytes as they come.
struct Parser {
    side: Side,
    state: State,
    /// The answer being parsed is to a HEAD request (no body whatever its head says).
    no_body: bool,
}

/// Heads larger than this are not HTTP as the engine speaks it: copied raw from there on.
const MAX_HEAD: usize = 1 << 20;

impl Parser {
    fn new(side: Side) -> Parser {
        Parser {
            side,
            state: State::Idle,
            no_body: false,
        }
    }

    /// Consumes a prefix of `data` (possibly none, when there is an event to report) up to
    /// the next event.
    fn step(&mut self, data: &[u8]) -> (usize, Option<Event>) {
        match &mut self.state {
            State::Idle => {
                if data.is_empty() {
                    return (0, None);
                }
                self.state = State::Head(Vec::new());
                (0, Some(Event::Start))
            }
            State::Head(buf) => {
                let before = buf.len();
                let from = before.saturating_sub(3);
                buf.extend_from_slice(data);
                match find(&buf[from..], b"\r\n\r\n") {
                    Some(p) => {
                        let end = from + p + 4;
                        buf.truncate(end);
                        let head = std::mem::take(buf);
                        let event = self.head(&head);
                        (end - before, Some(event))
                    }
                    None => {
                        if buf.len() > MAX_HEAD {
                            self.state = State::Raw;
                        }
                        (data.len(), None)
                    }
                }
            }
            State::Empty => {
                self.state = State::Idle;
                (0, Some(Event::End))
            }
            State::Length(left) => {
                let take = (*left).min(data.len() as u64);
                *left -= take;
                if *left == 0 {
                    self.state = State::Idle;
                    (take as usize, Some(Event::End))
                } else {
                    (take as usize, None)
                }
            }
            State::ChunkSize(line) => match data.iter().position(|&b| b == b'\n') {
                Some(p) => {
                    line.extend_from_slice(&data[..p]);
                    let text = String::from_utf8_lossy(line);
                    let hex = text.split(';').next().unwrap_or_default().trim();
                    self.state = match u64::from_str_radix(hex, 16) {
                        Ok(0) => State::Trailer(Vec::new()),
                        Ok(k) => State::ChunkData(k),
                        Err(_) => State::Raw,
                    };
                    (p + 1, None)
                }
                None => {
                    line.extend_from_slice(data);
                    (data.len(), None)
                }
            },
            State::ChunkData(left) => {
                let take = (*left).min(data.len() as u64);
                *left -= take;
                if *left == 0 {
                    self.state = State::ChunkEnd(2);
                }
                (take as usize, None)
            }
            State::ChunkEnd(left) => {
                let take = usize::from(*left).min(data.len());
                *left -= take as u8;
                if *left == 0 {
                    self.state = State::ChunkSize(Vec::new());
                }
                (take, None)
            }
            State::Trailer(line) => match data.iter().position(|&b| b == b'\n') {
                Some(p) => {
                    line.extend_from_slice(&data[..p]);
                    let empty = line.iter().all(|&b| b == b'\r');
                    if empty {
                        self.state = State::Idle;
                        (p + 1, Some(Event::End))
                    } else {
                        self.state = State::Trailer(Vec::new());
                        (p + 1, None)
                    }
                }
                None => {
                    line.extend_from_slice(data);
                    (data.len(), None)
                }
            },
            State::UntilClose | State::Raw => (data.len(), None),
        }
    }

    /// The head is complete: the event, and the state for the body.
    fn head(&mut self, head: &[u8]) -> Event {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or_default().to_string();
        let (mut length, mut chunked) = (None, false);
        for h in lines {
            let Some((k, v)) = h.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<u64>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.to_ascii_lowercase().contains("chunked");
            }
        }
        let status = match self.side {
            Side::Request => None,
            Side::Response => line.split_whitespace().nth(1).and_then(|c| c.parse().ok()),
        };
        let body = if chunked {
            State::ChunkSize(Vec::new())
        } else {
            match length {
                Some(0) => State::Empty,
                Some(l) => State::Length(l),
                None if self.side == Side::Request => State::Empty,
                None => State::UntilClose,
            }
        };
        self.state = match (self.side, status) {
            (Side::Response, Some(101)) => State::Raw,
            // An interim answer: the final one follows.
            (Side::Response, Some(c)) if (100..200).contains(&c) => State::Idle,
            (Side::Response, Some(204 | 304)) => State::Empty,
            (Side::Response, _) if self.no_body => State::Empty,
            _ => body,
        };
        Event::Head { line, status }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The engine alone

/// What a raw request to the engine took: from the request's first byte written to the
/// answer's last byte read (the connection is made before, untimed).
pub struct Raw {
    pub time: Duration,
    pub status: Option<u16>,
}

/// `GET target` on `socket` (the engine's, or the proxy's), reading the answer's bytes until
/// it ends, without parsing its body.
pub fn raw_get(socket: &Path, target: &str, timeout: Duration) -> Result<Raw, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let _ = s.set_read_timeout(Some(timeout));
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: outpostctl-bench\r\n\r\n");
    let mut parser = Parser::new(Side::Response);
    let mut buf = vec![0u8; 64 * 1024];
    let mut status = None;
    let start = Instant::now();
    s.write_all(request.as_bytes())
        .map_err(|e| format!("writing to {}: {e}", socket.display()))?;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) if matches!(parser.state, State::UntilClose) => break,
            Ok(0) => {
                return Err(format!(
                    "{} closed before the answer ended",
                    socket.display()
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading from {}: {e}", socket.display())),
        };
        let mut data = &buf[..n];
        let mut ended = false;
        while !data.is_empty() || matches!(parser.state, State::Empty) {
            let (used, event) = parser.step(data);
            data = &data[used..];
            match event {
                Some(Event::Head {
                    status: Some(c), ..
                }) if !(100..200).contains(&c) => {
                    status = Some(c);
                }
                Some(Event::End) => ended = true,
                _ => {}
            }
            if ended {
                break;
            }
        }
        if ended {
            break;
        }
    }
    Ok(Raw {
        time: start.elapsed(),
        status,
    })
}
