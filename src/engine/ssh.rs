//! ssh:// engines: the system `ssh` runs `docker system dial-stdio` on the host, as the Docker
//! CLI does, so the user's ssh config, agent, certificates and ProxyJump keep working.
//!
//! Host keys are always checked (`StrictHostKeyChecking=yes`): a pinned `ssh.host_key` is the
//! only key accepted; otherwise the user's known_hosts decides. The manifest's private key is
//! written, mode 0600 in a 0700 directory, only for the run and removed after it. Everything
//! from the manifest reaches ssh as separate arguments after validation, never through a shell,
//! and the host comes after `--`, so nothing can inject options or a remote command.
//!
//! HTTP connections are pooled: sequential requests reuse one `ssh` process; parallel ones
//! share one SSH session through ControlMaster.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bollard::BollardRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::transport::Transport;
use super::{EngineError, ErrorKind};
use crate::desired::Secret;

/// The name the pinned host key is filed under in the run's private known_hosts.
const PIN_ALIAS: &str = "outpostctl-pinned-host";

/// Seconds ssh may take to connect.
pub const CONNECT_TIMEOUT_SECS: u32 = 15;

/// Where and how to reach an engine over ssh.
#[derive(Debug, Clone)]
pub struct Target {
    /// None: ssh (its config) decides.
    pub user: Option<String>,
    pub host: String,
    /// None: ssh (its config) decides.
    pub port: Option<u16>,
    pub key: Option<Secret>,
    pub host_key: Option<String>,
    pub config: Option<PathBuf>,
    /// From DOCKER_HOST (`local: true`): there is no manifest entry to pin a host key in.
    pub from_docker_host: bool,
}

impl Target {
    pub fn url(&self) -> String {
        let user = self
            .user
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("ssh://{user}{}{port}", self.host)
    }
}

/// The run's private directory: key, pinned known_hosts, control socket. Removed on drop,
/// after the shared SSH session is closed.
#[derive(Debug)]
struct Session {
    dir: PathBuf,
    /// `dir/lock`, locked while the session lives: the directory is in use (see `sweep_stale`).
    _lock: std::fs::File,
    args: Vec<OsString>,
    target: Target,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Close the shared session, then remove the key.
        close_master(&self.dir, &self.target);
        let _ = std::fs::remove_dir_all(&self.dir);
        live(|l| l.remove(&self.dir));
    }
}

/// Ends the shared ssh session (the ControlMaster, logged in to `target`) whose control
/// socket is in `dir`, if one runs.
fn close_master(dir: &std::path::Path, target: &Target) {
    let socket = dir.join("cm");
    if !socket.exists() {
        return;
    }
    let mut ssh = std::process::Command::new("ssh");
    for name in crate::validate::secret_env_names() {
        ssh.env_remove(name);
    }
    let _ = ssh
        .args(
            target
                .config
                .iter()
                .flat_map(|c| [OsString::from("-F"), c.clone().into_os_string()]),
        )
        .args([
            "-o",
            &format!("ControlPath={}", socket.display()),
            "-O",
            "exit",
            "--",
            &target.host,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The private directories of this process's sessions, by path, with the target of each one's
/// session once it has one, while they exist.
fn live<T>(f: impl FnOnce(&mut BTreeMap<PathBuf, Option<Target>>) -> T) -> T {
    static LIVE: std::sync::Mutex<BTreeMap<PathBuf, Option<Target>>> =
        std::sync::Mutex::new(BTreeMap::new());
    f(&mut LIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// Ends every shared ssh session of this process and removes every private directory (and the
/// key in it): for an exit that runs no destructor (a second SIGINT or SIGTERM). Without it,
/// a session's ControlMaster would stay logged in to its host for up to `ControlPersist`.
pub fn remove_private_dirs() {
    let dirs = live(std::mem::take);
    for (dir, target) in dirs {
        if let Some(target) = target {
            close_master(&dir, &target);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A new private directory (mode 0700) for one session, locked (see `sweep_stale`) and known
/// to `remove_private_dirs`.
fn private_dir() -> io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    // The control socket lives here, and a Unix socket path has at most 108 bytes.
    let tmp = std::env::temp_dir();
    let base = if tmp.as_os_str().len() > 40 {
        PathBuf::from("/tmp")
    } else {
        tmp
    };
    sweep_stale(&base);
    for attempt in 0..16u32 {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "outpostctl-ssh-{}-{nonce:x}-{attempt}",
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                live(|l| l.insert(dir.clone(), None));
                // Locked before it gets its name, so a sweep never finds it unlocked.
                let locked = (|| {
                    let tmp = dir.join("lock.tmp");
                    let lock = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    lock.lock()?;
                    std::fs::rename(&tmp, dir.join("lock"))?;
                    Ok(lock)
                })();
                return match locked {
                    Ok(lock) => Ok((dir, lock)),
                    Err(e) => {
                        forget_dir(&dir);
                        Err(e)
                    }
                };
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "cannot create a private temporary directory",
    ))
}

/// Removes session directories of runs that were killed before they could clean up, so a
/// private key never outlives its run for long. A directory is in use while its `lock` file
/// is locked (by the run, whatever its pid namespace or system); one without a lock file (in
/// the making, or of an older outpostctl) is left alone unless its pid is gone and it is older
/// than a minute.
fn sweep_stale(base: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("outpostctl-ssh-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        // A shared temp directory holds anyone's files: only a real directory is looked into,
        // and its lock is opened without following a link or waiting (a FIFO put there would
        // block the open for ever), and must be a plain file.
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(e.path().join("lock"));
        let stale = match opened {
            Ok(lock) if !lock.metadata().is_ok_and(|m| m.is_file()) => false,
            Ok(lock) => lock.try_lock().is_ok(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(60));
                old && Path::new("/proc/self").exists()
                    && !Path::new(&format!("/proc/{pid}")).exists()
            }
            Err(_) => false,
        };
        if stale {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn write_private(path: &Path, content: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    if !content.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    Ok(())
}

/// Removes a private directory that no session came to own.
fn forget_dir(dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dir);
    live(|l| l.remove(dir));
}

impl Session {
    fn new(target: &Target) -> io::Result<Session> {
        let (dir, lock) = private_dir()?;
        match Self::args(target, &dir) {
            Ok(args) => {
                live(|l| l.insert(dir.clone(), Some(target.clone())));
                Ok(Session {
                    dir,
                    _lock: lock,
                    args,
                    target: target.clone(),
                })
            }
            Err(e) => {
                // The pin or the key could not be written: nothing of them is left behind.
                forget_dir(&dir);
                Err(e)
            }
        }
    }

    /// ssh's arguments for `target`, writing its pin and key into `dir`.
    fn args(target: &Target, dir: &std::path::Path) -> io::Result<Vec<OsString>> {
        let mut args: Vec<OsString> = Vec::new();
        let mut opt = |k: &str, v: String| {
            args.push("-o".into());
            args.push(format!("{k}={v}").into());
        };
        opt("BatchMode", "yes".into());
        opt("StrictHostKeyChecking", "yes".into());
        opt("ConnectTimeout", CONNECT_TIMEOUT_SECS.to_string());
        opt("ControlMaster", "auto".into());
        opt("ControlPath", dir.join("cm").display().to_string());
        opt("ControlPersist", "60".into());
        opt("ServerAliveInterval", "15".into());
        if let Some(pin) = &target.host_key {
            // Only the pinned key is accepted for this host.
            let mut fields = pin.split_whitespace();
            let (kind, blob) = (
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
            );
            // Looked up under a fixed alias, so an ssh config's HostName or Port cannot make
            // ssh look for another name than the one pinned.
            let line = format!("{PIN_ALIAS} {kind} {blob}");
            let path = dir.join("known_hosts");
            write_private(&path, &line)?;
            opt("HostKeyAlias", PIN_ALIAS.into());
            opt("UserKnownHostsFile", path.display().to_string());
            opt("GlobalKnownHostsFile", "/dev/null".into());
            // Nor any other source of host keys an ssh config may name: a command, or DNS
            // (SSHFP records). OpenSSH before 8.5 does not know KnownHostsCommand.
            opt("VerifyHostKeyDNS", "no".into());
            opt("IgnoreUnknown", "KnownHostsCommand".into());
            opt("KnownHostsCommand", "none".into());
            opt("HostKeyAlgorithms", host_key_algorithms(kind));
        }
        if let Some(key) = &target.key {
            let path = dir.join("key");
            write_private(&path, key.expose())?;
            opt("IdentityFile", path.display().to_string());
            opt("IdentitiesOnly", "yes".into());
        }
        if let Some(config) = &target.config {
            args.push("-F".into());
            args.push(config.clone().into_os_string());
        }
        if let Some(port) = target.port {
            args.extend(["-p".into(), port.to_string().into()]);
        }
        if let Some(user) = &target.user {
            args.extend(["-l".into(), user.clone().into()]);
        }
        args.push("--".into());
        args.push(target.host.clone().into());
        args.extend(["docker", "system", "dial-stdio"].map(OsString::from));
        Ok(args)
    }
}

/// One `ssh ... docker system dial-stdio` process as a byte stream.
pub struct SshStream {
    _child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Connection for SshStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for SshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }
}

/// What ssh processes said on stderr, newest last (at most `SAID_LINES`), with when.
type Said = Arc<Mutex<std::collections::VecDeque<(std::time::Instant, String)>>>;
const SAID_LINES: usize = 200;

/// Opens an `ssh` process per HTTP connection; what ssh says on stderr is kept to explain
/// failures.
#[derive(Clone)]
struct Connector {
    session: Arc<Session>,
    stderr: Said,
    spawned: Arc<std::sync::atomic::AtomicU64>,
    /// ssh processes whose stderr has been read to the end.
    finished: Arc<std::sync::atomic::AtomicU64>,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<SshStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let session = Arc::clone(&self.session);
        let stderr = Arc::clone(&self.stderr);
        let finished = Arc::clone(&self.finished);
        self.spawned
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            let mut ssh = Command::new("ssh");
            // The secrets read from the environment stay out of ssh's: an ssh config's
            // `SendEnv` would pass them to the host.
            for name in crate::validate::secret_env_names() {
                ssh.env_remove(name);
            }
            // A process group of its own: a Ctrl-C on the terminal (or a stop that signals
            // the whole group) is outpostctl's to handle, finishing what is in flight over this
            // connection; ssh dying of the same signal would break it. outpostctl ends it.
            let mut child = ssh
                .args(&session.args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    io::Error::other(format!(
                        "cannot run `ssh`: {e} (is OpenSSH's client installed?)"
                    ))
                })?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(io::Error::other("ssh started without pipes"));
            };
            if let Some(err) = child.stderr.take() {
                tokio::spawn(async move {
                    let mut lines = BufReader::new(err).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Ok(mut s) = stderr.lock() {
                            if s.len() >= SAID_LINES {
                                s.pop_front();
                            }
                            s.push_back((std::time::Instant::now(), line));
                        }
                    }
                    finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
            Ok(TokioIo::new(SshStream {
                _child: child,
                stdin,
                stdout,
            }))
        })
    }
}

/// A client for the engine behind `target`.
pub fn connect(target: &Target) -> Result<Transport, EngineError> {
    let url = target.url();
    let session = Session::new(target).map_err(|e| {
        EngineError::new(
            ErrorKind::Unreachable,
            format!("{url}: cannot prepare the ssh session: {e}"),
        )
    })?;
    let connector = Connector {
        session: Arc::new(session),
        stderr: Arc::new(Mutex::new(std::collections::VecDeque::new())),
        spawned: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        finished: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    let stderr = Arc::clone(&connector.stderr);
    let (spawned, finished) = (
        Arc::clone(&connector.spawned),
        Arc::clone(&connector.finished),
    );
    let http = Client::builder(TokioExecutor::new()).build(connector);
    let shown = url.clone();
    let t = target.clone();
    let transport = move |req: BollardRequest| {
        let http = http.clone();
        let stderr = Arc::clone(&stderr);
        let (spawned, finished) = (Arc::clone(&spawned), Arc::clone(&finished));
        let shown = shown.clone();
        let t = t.clone();
        async move {
            let asked = std::time::Instant::now();
            match http.request(req).await {
                Ok(r) => Ok(r),
                Err(e) => {
                    // ssh explains a failure on stderr as it exits: wait (briefly) until every
                    // ssh that ended has been read, so the explanation is not lost.
                    use std::sync::atomic::Ordering::SeqCst;
                    for _ in 0..100 {
                        if finished.load(SeqCst) >= spawned.load(SeqCst) {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    // What ssh said for this request: not an earlier failure's words (a
                    // long-lived event stream's old "Permission denied" read as the cause of
                    // a later network error).
                    let since = asked
                        .checked_sub(std::time::Duration::from_secs(1))
                        .unwrap_or(asked);
                    let said = stderr
                        .lock()
                        .map(|s| {
                            s.iter()
                                .filter(|(at, _)| *at >= since)
                                .map(|(_, line)| format!("{line}\n"))
                                .collect::<String>()
                        })
                        .unwrap_or_default();
                    // Off the runtime's threads: explaining an unknown host key runs
                    // `ssh-keyscan` (up to 5 s), which would stall every other engine's
                    // requests polled on this thread meanwhile.
                    let fallback = e.to_string();
                    let described =
                        tokio::task::spawn_blocking(move || describe(&shown, &t, &said, &fallback))
                            .await
                            .unwrap_or_else(|_| format!("ssh failed: {e}"));
                    Err(bollard::errors::Error::IOError {
                        err: io::Error::other(described),
                    })
                }
            }
        }
    };
    // The URI bollard builds is never dialled: the connector always runs ssh.
    Ok(Transport::new(transport, "http://ssh.invalid", url))
}

/// What went wrong, from ssh's own words.
pub fn describe(url: &str, t: &Target, ssh_said: &str, fallback: &str) -> String {
    let said = ssh_said.trim();
    let pin_hint = || {
        let port = t.port.unwrap_or(22);
        if t.from_docker_host {
            // `local: true` takes ssh's own configuration: its known_hosts is the place.
            return format!(
                "DOCKER_HOST is read as ssh reads it: add the host's key to your known_hosts (`ssh-keyscan -p {port} {} >> ~/.ssh/known_hosts`, then verify its fingerprint out of band), or use an `ssh://` integration with a pinned `ssh.host_key`",
                t.host
            );
        }
        // With an ssh config, `host` may be an alias (`HostName`, `ProxyJump`): scanning it
        // from here could offer another machine's key to pin.
        if let Some(config) = &t.config {
            return format!(
                "add the host's key to known_hosts, or pin it with `ssh.host_key` (with this ssh config, find the address and port it reaches with `ssh -G -F {} {} | grep -Ei '^(hostname|port) '`, get the key there with `ssh-keyscan`, and verify its fingerprint out of band)",
                crate::commands::shell_word(&config.display().to_string()),
                crate::commands::shell_word(&t.host)
            );
        }
        let scanned = scan_host_key(&t.host, port);
        match scanned {
            Some((line, fingerprint)) => {
                let file = match line.split_whitespace().next().unwrap_or_default() {
                    "ssh-rsa" => "ssh_host_rsa_key.pub",
                    k if k.starts_with("ecdsa-") => "ssh_host_ecdsa_key.pub",
                    _ => "ssh_host_ed25519_key.pub",
                };
                format!(
                    "the host offers {fingerprint}; verify it out of band (e.g. `ssh-keygen -lf /etc/ssh/{file}` on the host), then pin it in the manifest:\n      ssh:\n        host_key: \"{line}\""
                )
            }
            None => format!(
                "add the host's key to known_hosts, or pin it with `ssh.host_key` (get it with `ssh-keyscan -p {} {}` and verify its fingerprint out of band)",
                port, t.host
            ),
        }
    };
    let key_refused = said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || said.contains("Host key verification failed")
        || said.contains("host key is known")
        || said.contains("no matching host key type");
    if key_refused && t.host_key.is_some() {
        return format!(
            "{url}: the host's key does not match the pinned `ssh.host_key`: refusing to connect. {}",
            pin_hint()
        );
    }
    if said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || said.contains("Host key for") && said.contains("has changed")
    {
        return format!(
            "{url}: the host key CHANGED since it was trusted: refusing to connect (this may be an attack, or the host was reinstalled); if the change is expected, update known_hosts or `ssh.host_key`"
        );
    }
    if key_refused {
        return format!(
            "{url}: the host's key is unknown: refusing to connect. {}",
            pin_hint()
        );
    }
    if said.contains("Permission denied") {
        return format!(
            "{url}: authentication refused for user `{}`: check the `tls_authentication` key (or your ssh agent/config) and that its public key is in the host's authorized_keys",
            t.user.as_deref().unwrap_or("(from the ssh config)")
        );
    }
    if said.contains("command not found")
        || said.contains("docker: not found")
        || said.contains("No such file or directory") && said.contains("docker")
    {
        return format!(
            "{url}: there is no `docker` command on the host: install the Docker CLI there (outpostctl runs `docker system dial-stdio` on it)"
        );
    }
    if said.contains("Connection refused")
        || said.contains("Could not resolve")
        || said.contains("timed out")
        || said.contains("No route to host")
    {
        let line = said.lines().last().unwrap_or(said);
        return format!("{url}: cannot reach the host: {line}");
    }
    if said.contains("Cannot connect to the Docker daemon")
        || said.contains("permission denied while trying to connect")
    {
        let line = said.lines().last().unwrap_or(said);
        return format!("{url}: the host's docker CLI cannot reach its engine: {line}");
    }
    if said.is_empty() {
        format!("{url}: {fallback}")
    } else {
        format!("{url}: ssh failed: {}", said.lines().last().unwrap_or(said))
    }
}

/// The host's key line and fingerprint, from `ssh-keyscan` (bounded), to help pinning.
fn scan_host_key(host: &str, port: u16) -> Option<(String, String)> {
    let out = std::process::Command::new("timeout")
        .args([
            "5",
            "ssh-keyscan",
            "-T",
            "4",
            "-t",
            "ed25519,ecdsa,rsa",
            "-p",
            &port.to_string(),
            "--",
            host,
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // ssh-keyscan prints the keys as they come: the strongest kind is shown.
    let rank = |l: &&str| {
        let kind = l.split_whitespace().nth(1).unwrap_or_default();
        ["ssh-ed25519", "ecdsa-sha2-", "ssh-rsa"]
            .iter()
            .position(|k| kind.starts_with(k))
            .unwrap_or(usize::MAX)
    };
    let line = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.split_whitespace().count() >= 3)
        .min_by_key(rank)?;
    let mut f = line.split_whitespace().skip(1);
    let key = format!("{} {}", f.next()?, f.next()?);
    let mut fp = std::process::Command::new("ssh-keygen")
        .args(["-lf", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    {
        use std::io::Write;
        let mut stdin = fp.stdin.take()?;
        let _ = writeln!(stdin, "{line}");
    }
    let out = fp.wait_with_output().ok()?;
    let fingerprint = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((key, fingerprint))
}

/// The host key algorithms that verify a pinned key of type `kind`: an RSA key signs with
/// SHA-2 (`rsa-sha2-512`, `rsa-sha2-256`) on OpenSSH 8.8 and later, where `ssh-rsa` alone
/// (SHA-1 signatures) is no longer offered; older servers still sign with `ssh-rsa`.
fn host_key_algorithms(kind: &str) -> String {
    match kind {
        "ssh-rsa" => "rsa-sha2-512,rsa-sha2-256,ssh-rsa".into(),
        other => other.into(),
    }
}

/// Why an ssh private key cannot log in without a person at a terminal, if it cannot: one
/// protected by a passphrase (ssh runs in batch mode and cannot ask for it), or an OpenSSH
/// key whose body is not one: (why, what to do). Other forms (PEM, PKCS #8) are left to ssh.
pub fn key_problem(text: &str) -> Option<(&'static str, &'static str)> {
    use base64::Engine as _;
    const ENCRYPTED: (&str, &str) = (
        "it is protected by a passphrase, which ssh cannot ask for here (it runs without a terminal)",
        "give a key without a passphrase (`ssh-keygen -p -N '' -f KEY` removes it from a copy) and keep it as a secret",
    );
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Some(ENCRYPTED);
    }
    let begin = "-----BEGIN OPENSSH PRIVATE KEY-----";
    let start = text.find(begin)? + begin.len();
    let body: String = text[start..]
        .split("-----END OPENSSH PRIVATE KEY-----")
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let damaged = (
        "its body is not an OpenSSH private key (cut short, or changed when copied?)",
        "copy the whole key file again, from `-----BEGIN OPENSSH PRIVATE KEY-----` to its `-----END` line",
    );
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(body) else {
        return Some(damaged);
    };
    // "openssh-key-v1\0", then the cipher's name as an SSH string (a u32 length, big-endian).
    let Some(rest) = bytes.strip_prefix(b"openssh-key-v1\0") else {
        return Some(damaged);
    };
    let len = rest
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
    match len.and_then(|n| rest.get(4..4 + n)) {
        Some(b"none") => None,
        Some(_) => Some(ENCRYPTED),
        None => Some(damaged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ssh key that cannot log in without a person at a terminal is told at validation:
    /// one protected by a passphrase (OpenSSH or PEM), or an OpenSSH key cut short; a plain
    /// key passes.
    #[test]
    fn keys_that_cannot_log_in_unattended_are_told() {
        let plain = include_str!("../../tests/fixtures/ssh-keys/plain");
        assert_eq!(key_problem(plain), None);
        for protected in [
            include_str!("../../tests/fixtures/ssh-keys/with-passphrase"),
            include_str!("../../tests/fixtures/ssh-keys/pem-with-passphrase"),
        ] {
            let why = key_problem(protected).map(|(why, _)| why);
            assert!(why.is_some_and(|w| w.contains("passphrase")), "{why:?}");
        }
        // Cut short: the last lines of its body lost.
        let lines: Vec<&str> = plain.lines().collect();
        let cut = format!("{}\n{}\n", lines[..2].join("\n"), lines[lines.len() - 1]);
        let why = key_problem(&cut).map(|(why, _)| why);
        assert!(
            why.is_some_and(|w| w.contains("not an OpenSSH private key")),
            "{why:?}"
        );
        // A character that is not base64 in its body.
        let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        changed[1].replace_range(..1, "*");
        let why = key_problem(&changed.join("\n")).map(|(why, _)| why);
        assert!(
            why.is_some_and(|w| w.contains("not an OpenSSH private key")),
            "{why:?}"
        );
    }

    /// With an ssh config the host may be an alias: an unknown host key is explained without
    /// scanning the alias from here (which could offer another machine's key to pin), by how
    /// to find the address the config reaches.
    #[test]
    fn an_unknown_host_key_behind_an_ssh_config_is_not_scanned_from_here() {
        let t = Target {
            user: None,
            host: "eng".into(),
            port: None,
            key: None,
            host_key: None,
            config: Some(PathBuf::from("/etc/outpostctl/ssh config")),
            from_docker_host: false,
        };
        let started = std::time::Instant::now();
        let said = describe(
            "ssh://eng",
            &t,
            "No ED25519 host key is known for eng and you have requested strict checking.\nHost key verification failed.",
            "",
        );
        assert!(
            said.contains("the host's key is unknown")
                && said.contains("ssh -G -F '/etc/outpostctl/ssh config' eng")
                && !said.contains("the host offers"),
            "{said}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    /// What anyone may leave in a shared temp directory cannot stop the sweep: a FIFO named
    /// `lock` (which a plain open would wait on for ever) or a link to one, and a directory
    /// that is a link, are passed over; a stale session's directory is still removed.
    #[test]
    fn the_sweep_of_stale_sessions_cannot_be_made_to_hang() {
        let base = tempfile::tempdir().expect("temp dir");
        let trap = base.path().join("outpostctl-ssh-1-trap-0");
        std::fs::create_dir(&trap).expect("trap dir");
        let fifo = trap.join("lock");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let linked = base.path().join("outpostctl-ssh-2-link-0");
        std::fs::create_dir(&linked).expect("dir");
        std::os::unix::fs::symlink(&fifo, linked.join("lock")).expect("link to the fifo");
        std::os::unix::fs::symlink(&trap, base.path().join("outpostctl-ssh-3-dirlink-0"))
            .expect("link to the dir");
        let stale = base.path().join("outpostctl-ssh-4-stale-0");
        std::fs::create_dir(&stale).expect("stale dir");
        std::fs::write(stale.join("lock"), "").expect("its unlocked lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let swept = base.path().to_path_buf();
        std::thread::spawn(move || {
            sweep_stale(&swept);
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok(),
            "the sweep hangs"
        );
        assert!(!stale.exists(), "the stale session's directory is left");
        assert!(fifo.exists() && linked.exists());
    }

    /// A second signal exits at once, running no destructor: `remove_private_dirs` removes the
    /// key of every session still open (then a session dropped later finds nothing to do).
    #[test]
    fn an_exit_without_destructors_leaves_no_key_behind() {
        let target = Target {
            user: None,
            host: "127.0.0.1".into(),
            port: Some(1),
            key: Some(crate::desired::Secret::new(
                "-----BEGIN OPENSSH PRIVATE KEY-----",
            )),
            host_key: Some("ssh-ed25519 AAAA".into()),
            config: None,
            from_docker_host: false,
        };
        let session = Session::new(&target).expect("a session directory");
        let key = session.dir.join("key");
        assert!(key.exists(), "the key is written for ssh");
        remove_private_dirs();
        assert!(!key.exists(), "the key is still there");
        assert!(
            !session.dir.exists(),
            "the session directory is still there"
        );
        drop(session);
    }
}
