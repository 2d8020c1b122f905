//! Remote engines for `tests/e2e_remote.rs`, made per test and torn down with it:
//!
//! - a PKI made with `openssl`: a CA, another CA, a server certificate for `localhost` and
//!   `127.0.0.1` (plus an expired one), a client certificate from each CA and an X.509 v1 one;
//! - `stunnel` requiring client certificates in front of the engine's socket (on 127.0.0.1
//!   and, for the name mismatch, 127.0.0.2), in front of the least-privilege socket proxy
//!   (127.0.0.1:2375), and with the expired certificate;
//! - `sshd` on a loopback port with a generated host key and an authorized client key; the
//!   far side runs `docker system dial-stdio` with the Docker CLI of this machine.
//!
//! Dropping a [`Remote`] kills its daemons with every process they started (ssh sessions,
//! `docker system dial-stdio`), any process still naming the test's private TMPDIR, removes
//! the test's containers (through [`Env`]) and deletes its files. Ports come from the
//! [`Env`]'s block, so parallel tests and parallel test binaries never share one.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::Run;
use crate::support::{Env, engine_socket, run_with_timeout, shown, wait_until};

const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(15);
const HOW_TO_FIX: &str = "run `scripts/test-deps.sh` (as root): it installs openssl, stunnel4, \
openssh-server and haproxy and starts the socket proxy";

// ---------------------------------------------------------------------------------------------
// Tools

fn tool(dir: &Path, program: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).args(args);
    let r = run_with_timeout(cmd, TOOL_TIMEOUT);
    assert_eq!(
        r.code,
        0,
        "`{program} {}` failed ({HOW_TO_FIX}):\n{}",
        args.join(" "),
        shown(&r)
    );
    r
}

fn openssl(dir: &Path, args: &[&str]) {
    tool(dir, "openssl", args);
}

fn chmod_600(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

// ---------------------------------------------------------------------------------------------
// PKI

/// Certificates and keys, all PEM files in one directory.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Makes every certificate the tests use (EC P-256: fast to make, supported by rustls and
    /// OpenSSL).
    pub fn new(dir: &Path) -> Pki {
        fs::create_dir_all(dir).expect("pki dir");
        let key = |name: &str| {
            openssl(
                dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    name,
                ],
            );
            chmod_600(&dir.join(name));
        };
        let ca = |name: &str, cn: &str| {
            key(&format!("{name}.key"));
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    &format!("{name}.key"),
                    "-subj",
                    &format!("/CN={cn}"),
                    "-days",
                    "3",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        };
        ca("ca", "outpostctl e2e CA");
        ca("other-ca", "outpostctl e2e other CA");
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
             basicConstraints=CA:FALSE\n",
        )
        .expect("write");
        fs::write(
            dir.join("client.ext"),
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write");
        // A leaf: key, request, certificate signed by `ca` (v3 when `ext` is given).
        let leaf = |name: &str, cn: &str, ca: &str, serial: u32, ext: Option<&str>| {
            key(&format!("{name}.key"));
            openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-key",
                    &format!("{name}.key"),
                    "-subj",
                    &format!("/CN={cn}"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            let mut args = vec![
                "x509".to_string(),
                "-req".into(),
                "-in".into(),
                format!("{name}.csr"),
                "-CA".into(),
                format!("{ca}.pem"),
                "-CAkey".into(),
                format!("{ca}.key"),
                "-set_serial".into(),
                serial.to_string(),
                "-days".into(),
                "3".into(),
                "-out".into(),
                format!("{name}.pem"),
            ];
            if let Some(e) = ext {
                args.extend(["-extfile".into(), e.into()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            openssl(dir, &args);
        };
        leaf("server", "localhost", "ca", 1001, Some("server.ext"));
        leaf(
            "client",
            "outpostctl client",
            "ca",
            1002,
            Some("client.ext"),
        );
        leaf(
            "other-client",
            "outpostctl client of the other CA",
            "other-ca",
            1003,
            Some("client.ext"),
        );
        leaf("v1-client", "outpostctl v1 client", "ca", 1004, None);
        // The server's key, certified by the CA for a day in 2020: expired.
        fs::write(dir.join("index.txt"), "").expect("write");
        fs::write(dir.join("serial"), "4000\n").expect("write");
        fs::write(
            dir.join("expired-ca.cnf"),
            "[ ca ]\ndefault_ca = d\n[ d ]\ndatabase = index.txt\nserial = serial\n\
             new_certs_dir = .\ndefault_md = sha256\npolicy = p\nunique_subject = no\n\
             [ p ]\ncommonName = supplied\n\
             [ ext ]\nsubjectAltName = DNS:localhost,IP:127.0.0.1\n\
             extendedKeyUsage = serverAuth\nbasicConstraints = CA:FALSE\n",
        )
        .expect("write");
        openssl(
            dir,
            &[
                "ca",
                "-batch",
                "-notext",
                "-config",
                "expired-ca.cnf",
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                "server.csr",
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200102000000Z",
                "-extensions",
                "ext",
                "-out",
                "expired-server.pem",
            ],
        );
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    /// `NAME.pem` or `NAME.key`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn text(&self, file: &str) -> String {
        fs::read_to_string(self.path(file)).expect("read pki file")
    }

    /// The keypairs of a manifest: `ca`, `other-ca` (certificates only), `client`,
    /// `other-client`, `v1-client` (certificate and key) and `mixed` (the client's
    /// certificate with the other client's key).
    pub fn keypairs(&self) -> Value {
        let p = |f: &str| self.path(f).display().to_string();
        json!({
            "ca": { "certificate": { "file": p("ca.pem") } },
            "other-ca": { "certificate": { "file": p("other-ca.pem") } },
            "client": {
                "certificate": { "file": p("client.pem") },
                "key": { "file": p("client.key") },
            },
            "other-client": {
                "certificate": { "file": p("other-client.pem") },
                "key": { "file": p("other-client.key") },
            },
            "v1-client": {
                "certificate": { "file": p("v1-client.pem") },
                "key": { "file": p("v1-client.key") },
            },
            "mixed": {
                "certificate": { "file": p("client.pem") },
                "key": { "file": p("other-client.key") },
            },
        })
    }

    /// Every private key's text, for leak checks.
    pub fn private_keys(&self) -> Vec<String> {
        [
            "ca.key",
            "other-ca.key",
            "server.key",
            "client.key",
            "other-client.key",
            "v1-client.key",
        ]
        .iter()
        .map(|k| self.text(k))
        .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// (pid, parent pid) of every process, from /proc.
fn process_table() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = after.split_whitespace();
        let state = f.next().unwrap_or_default();
        if state == "Z" {
            continue;
        }
        if let Some(ppid) = f.next().and_then(|p| p.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// Every live descendant of `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let table = process_table();
    let mut found: BTreeSet<u32> = BTreeSet::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, parent) in &table {
            if *parent == p && found.insert(*child) {
                frontier.push(*child);
            }
        }
    }
    found.into_iter().collect()
}

/// Live processes whose command line contains `needle`, with that command line.
pub fn processes_naming(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            out.push((pid, cmdline.trim().to_string()));
        }
    }
    out
}

/// SIGKILL to each pid (processes this test started, directly or through outpostctl).
pub fn kill_pids(pids: &[u32]) {
    for p in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Sends `signal` (`INT`, `TERM`) to one process.
pub fn signal(pid: u32, signal: &str) {
    let st = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(st.success(), "kill -{signal} {pid} failed");
}

/// Sends `signal` to every process of the process group `pgid`, as a terminal's Ctrl-C does.
pub fn signal_group(pgid: u32, signal: &str) {
    let st = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .status()
        .expect("kill runs");
    assert!(st.success(), "kill -{signal} -- -{pgid} failed");
}

/// A background daemon this test started; killed with all its descendants on drop.
pub struct Daemon {
    what: String,
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    fn spawn(what: &str, mut cmd: Command, log: &Path) -> Daemon {
        let out = fs::File::create(log).expect("daemon log");
        let err = out.try_clone().expect("daemon log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}; {HOW_TO_FIX}"));
        Daemon {
            what: what.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a TCP connection to each address succeeds (exactly one successful
    /// connection per address); panics with the log if the daemon exits or the time runs out.
    fn wait_listening(&mut self, addrs: &[SocketAddr]) {
        let mut exited = None;
        let mut pending: Vec<SocketAddr> = addrs.to_vec();
        let ok = wait_until(START_TIMEOUT, || {
            if let Ok(Some(st)) = self.child.try_wait() {
                exited = Some(st);
                return true;
            }
            pending.retain(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_err());
            pending.is_empty()
        });
        if let Some(st) = exited {
            panic!(
                "{} exited at start ({st}); {HOW_TO_FIX}; its log:\n{}",
                self.what,
                self.log_text()
            );
        }
        assert!(
            ok,
            "{} does not listen on {addrs:?} after {} s; its log:\n{}",
            self.what,
            START_TIMEOUT.as_secs(),
            self.log_text()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id();
        // Its sessions first (sshd's per-connection processes and what they run), while they
        // are still its descendants, then the daemon itself.
        kill_pids(&descendants(pid));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// stunnel

/// stunnel with four TLS services, each requiring a client certificate from the CA.
pub struct Tls {
    /// 127.0.0.1: the engine, server certificate for localhost and 127.0.0.1.
    pub port: u16,
    /// 127.0.0.2: the engine, same certificate (not valid for 127.0.0.2).
    pub alt_port: u16,
    /// 127.0.0.1: the least-privilege socket proxy on 127.0.0.1:2375.
    pub proxy_port: u16,
    /// 127.0.0.1: the engine with an expired certificate.
    pub expired_port: u16,
    daemon: Daemon,
}

impl Tls {
    fn start(env: &Env, pki: &Pki, dir: &Path) -> Tls {
        let (port, alt_port, proxy_port, expired_port) =
            (env.port(), env.port(), env.port(), env.port());
        let p = |f: &str| pki.path(f).display().to_string();
        let service = |name: &str, accept: String, connect: String, cert: &str| {
            format!(
                "[{name}]\naccept = {accept}\nconnect = {connect}\ncert = {}\nkey = {}\n\
                 CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                p(cert),
                p("server.key"),
                p("ca.pem"),
            )
        };
        let sock = engine_socket();
        let conf = [
            "foreground = yes\npid =\ndebug = notice\n".to_string(),
            service(
                "engine",
                format!("127.0.0.1:{port}"),
                sock.clone(),
                "server.pem",
            ),
            service(
                "engine-alt",
                format!("127.0.0.2:{alt_port}"),
                sock.clone(),
                "server.pem",
            ),
            service(
                "socket-proxy",
                format!("127.0.0.1:{proxy_port}"),
                "127.0.0.1:2375".into(),
                "server.pem",
            ),
            service(
                "expired",
                format!("127.0.0.1:{expired_port}"),
                sock,
                "expired-server.pem",
            ),
        ]
        .join("");
        let conf_path = dir.join("stunnel.conf");
        fs::write(&conf_path, conf).expect("write stunnel.conf");
        let mut cmd = Command::new("stunnel");
        cmd.arg(&conf_path);
        let mut daemon = Daemon::spawn("stunnel", cmd, &dir.join("stunnel.log"));
        let addr = |ip: &str, port: u16| format!("{ip}:{port}").parse().expect("address");
        daemon.wait_listening(&[
            addr("127.0.0.1", port),
            addr("127.0.0.2", alt_port),
            addr("127.0.0.1", proxy_port),
            addr("127.0.0.1", expired_port),
        ]);
        let tls = Tls {
            port,
            alt_port,
            proxy_port,
            expired_port,
            daemon,
        };
        // The checks above connected once to each service: wait until stunnel logged them,
        // so that tests can count the connections their runs make.
        let services = ["engine", "engine-alt", "socket-proxy", "expired"];
        let logged = wait_until(START_TIMEOUT, || {
            services.iter().all(|s| tls.accepted(s) >= 1)
        });
        assert!(
            logged,
            "stunnel did not log its connections:\n{}",
            tls.log()
        );
        tls
    }

    pub fn log(&self) -> String {
        self.daemon.log_text()
    }

    /// How many connections the stunnel service `name` accepted so far.
    pub fn accepted(&self, service: &str) -> usize {
        self.log()
            .matches(&format!("Service [{service}] accepted connection"))
            .count()
    }
}

// ---------------------------------------------------------------------------------------------
// sshd

/// sshd on 127.0.0.1 with key authentication for root.
pub struct Ssh {
    pub port: u16,
    /// `ssh-ed25519 AAAA...`: what `ssh.host_key` pins.
    pub host_key: String,
    /// `SHA256:...` of the host key.
    pub fingerprint: String,
    /// Another host key, never served: a wrong pin of the same type.
    pub other_host_key: String,
    /// An ECDSA host key, never served: a wrong pin of another type.
    pub ecdsa_host_key: String,
    /// `ssh-rsa AAAA...`: the host's second key, served too (OpenSSH 8.8 and later sign with
    /// it as `rsa-sha2-*` only).
    pub rsa_host_key: String,
    /// The authorized client key (OpenSSH private key file, mode 0600).
    pub client_key: PathBuf,
    /// A client key that is not authorized.
    pub stranger_key: PathBuf,
    log: PathBuf,
    daemon: Daemon,
}

fn pub_line(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("read public key");
    let mut f = text.split_whitespace();
    format!(
        "{} {}",
        f.next().unwrap_or_default(),
        f.next().unwrap_or_default()
    )
}

fn keygen(dir: &Path, name: &str, kind: &str) -> PathBuf {
    tool(
        dir,
        "ssh-keygen",
        &["-q", "-t", kind, "-N", "", "-C", name, "-f", name],
    );
    dir.join(name)
}

impl Ssh {
    fn start(env: &Env, dir: &Path, extra_config: &[&str]) -> Ssh {
        let dir = dir.join("ssh");
        fs::create_dir_all(&dir).expect("ssh dir");
        let host = keygen(&dir, "host_ed25519", "ed25519");
        let other = keygen(&dir, "other_host_ed25519", "ed25519").with_extension("pub");
        let ecdsa = keygen(&dir, "other_host_ecdsa", "ecdsa").with_extension("pub");
        let rsa = keygen(&dir, "host_rsa", "rsa");
        let client_key = keygen(&dir, "client_ed25519", "ed25519");
        let stranger_key = keygen(&dir, "stranger_ed25519", "ed25519");
        fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys"))
            .expect("authorized_keys");
        let fp = tool(&dir, "ssh-keygen", &["-lf", "host_ed25519.pub"]).stdout;
        let fingerprint = fp.split_whitespace().nth(1).unwrap_or_default().to_string();
        assert!(fingerprint.starts_with("SHA256:"), "fingerprint `{fp}`");
        // The privilege separation directory sshd insists on.
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let port = env.port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nHostKey {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {}\n\
             LogLevel VERBOSE\n{}\n",
            host.display(),
            rsa.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display(),
            extra_config.join("\n"),
        );
        let conf_path = dir.join("sshd_config");
        fs::write(&conf_path, config).expect("write sshd_config");
        let log = dir.join("sshd.log");
        fs::write(&log, "").expect("sshd log");
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.arg("-D").arg("-E").arg(&log).arg("-f").arg(&conf_path);
        let mut daemon = Daemon::spawn("sshd", cmd, &dir.join("sshd.out"));
        daemon.wait_listening(&[format!("127.0.0.1:{port}").parse().expect("address")]);
        // sshd answers with its banner once it is really serving.
        let mut made = 1; // wait_listening's connection
        let banner_ok = wait_until(START_TIMEOUT, || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            made += 1;
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 8];
            s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-2.0")
        });
        let log_text = || fs::read_to_string(&log).unwrap_or_default();
        assert!(
            banner_ok,
            "sshd on port {port} sends no banner; its log:\n{}{}",
            daemon.log_text(),
            log_text()
        );
        // Wait until sshd logged (and closed) these connections, so that tests can count
        // the connections outpostctl makes.
        let settled = wait_until(START_TIMEOUT, || {
            let t = log_text();
            t.matches("Connection from").count() >= made
                && t.matches("Connection from").count()
                    == t.matches("Connection closed by 127.0.0.1").count()
                        + t.matches("Connection reset by 127.0.0.1").count()
        });
        assert!(
            settled,
            "sshd did not log the test's connections:\n{}",
            log_text()
        );
        Ssh {
            port,
            host_key: pub_line(&dir.join("host_ed25519.pub")),
            fingerprint,
            other_host_key: pub_line(&other),
            ecdsa_host_key: pub_line(&ecdsa),
            rsa_host_key: pub_line(&rsa.with_extension("pub")),
            client_key,
            stranger_key,
            log,
            daemon,
        }
    }

    /// sshd's own log (LogLevel VERBOSE).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many logins sshd accepted so far.
    pub fn logins(&self) -> usize {
        self.log().matches("Accepted publickey for").count()
    }

    /// How many TCP connections sshd saw so far.
    pub fn connections(&self) -> usize {
        self.log().matches("Connection from").count()
    }

    /// The sshd processes serving sessions (and their children, e.g. dial-stdio).
    pub fn sessions(&self) -> Vec<u32> {
        descendants(self.daemon.pid())
    }

    pub fn client_key_text(&self) -> String {
        fs::read_to_string(&self.client_key).expect("client key")
    }
}

// ---------------------------------------------------------------------------------------------
// The per-test fixture

/// One test's remote engines, PKI, private TMPDIR and [`Env`].
pub struct Remote {
    // Dropped in this order: daemons, then containers, then files.
    pub tls: Option<Tls>,
    pub ssh: Option<Ssh>,
    pub env: Env,
    pub pki: Pki,
    /// TMPDIR of every outpostctl run: must be empty after each one.
    pub tmp: PathBuf,
    /// Secret texts (private keys) that must never appear in any output.
    secrets: Vec<String>,
    dir: tempfile::TempDir,
}

impl Remote {
    /// The [`Env`] `tag`, a PKI and a private TMPDIR; no daemon yet.
    pub fn new(tag: &str) -> Remote {
        let env = Env::new(tag);
        // Short: ssh's control socket lives under TMPDIR and must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("oprx-")
            .tempdir()
            .expect("temp dir");
        let pki = Pki::new(&dir.path().join("pki"));
        let tmp = dir.path().join("t");
        fs::create_dir_all(&tmp).expect("tmp dir");
        env.set_env("TMPDIR", &tmp.display().to_string());
        let secrets = pki.private_keys();
        Remote {
            tls: None,
            ssh: None,
            env,
            pki,
            tmp,
            secrets,
            dir,
        }
    }

    /// With stunnel.
    pub fn tls(tag: &str) -> Remote {
        let mut r = Remote::new(tag);
        r.tls = Some(Tls::start(&r.env, &r.pki, r.dir.path()));
        r
    }

    /// With sshd (extra sshd_config lines appended).
    pub fn ssh_with(tag: &str, extra_sshd_config: &[&str]) -> Remote {
        let mut r = Remote::new(tag);
        let ssh = Ssh::start(&r.env, r.dir.path(), extra_sshd_config);
        r.secrets.push(ssh.client_key_text());
        r.secrets
            .push(fs::read_to_string(&ssh.stranger_key).expect("stranger key"));
        r.ssh = Some(ssh);
        r
    }

    pub fn ssh(tag: &str) -> Remote {
        Remote::ssh_with(tag, &[])
    }

    pub fn t(&self) -> &Tls {
        self.tls.as_ref().expect("this test started stunnel")
    }

    pub fn s(&self) -> &Ssh {
        self.ssh.as_ref().expect("this test started sshd")
    }

    /// A directory of this test outside the manifests' directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A manifest with the PKI's keypairs (plus an `ssh-key` keypair with sshd's client key
    /// and `stranger-key` with an unauthorized one when sshd runs), these integrations and
    /// these outposts (`(name, type, integration)`, each with its own token).
    pub fn manifest(&self, integrations: Value, outposts: &[(&str, &str, &str)]) -> Value {
        let mut m = self.env.manifest();
        let mut kp = self.pki.keypairs();
        if let Some(s) = &self.ssh {
            kp["ssh-key"] = json!({ "key": { "file": s.client_key.display().to_string() } });
            kp["stranger-key"] = json!({ "key": { "file": s.stranger_key.display().to_string() } });
        }
        m["keypairs"] = kp;
        m["integrations"] = integrations;
        for (name, kind, integration) in outposts {
            let var = format!(
                "AK_{}",
                name.to_uppercase()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            );
            let mut o = self.env.outpost(kind, &var);
            o["integration"] = json!(integration);
            m["outposts"][*name] = o;
        }
        m
    }

    /// An https/tcp integration.
    pub fn tls_integration(
        &self,
        url: &str,
        verification: Option<&str>,
        authentication: Option<&str>,
    ) -> Value {
        let mut i = json!({ "url": url });
        if let Some(v) = verification {
            i["tls_verification"] = json!(v);
        }
        if let Some(a) = authentication {
            i["tls_authentication"] = json!(a);
        }
        i
    }

    /// The good TLS engine: `https://127.0.0.1:PORT`, the CA, the client certificate.
    pub fn good_tls(&self) -> Value {
        let url = format!("https://127.0.0.1:{}", self.t().port);
        self.tls_integration(&url, Some("ca"), Some("client"))
    }

    /// The good ssh engine: `ssh://root@127.0.0.1:PORT`, the client key, the pinned host key.
    pub fn good_ssh(&self) -> Value {
        let s = self.s();
        json!({
            "url": format!("ssh://root@127.0.0.1:{}", s.port),
            "tls_authentication": "ssh-key",
            "ssh": { "host_key": s.host_key },
        })
    }

    /// Runs outpostctl; checks that no private key (nor any line of one) and no token is in
    /// its output and that the run left nothing behind: TMPDIR is empty and no process names
    /// it (bounded wait for ssh's shared connection to close).
    pub fn run(&self, args: &[&str]) -> Run {
        let r = self.env.run(args);
        self.assert_no_key_material(&format!("outpostctl {}", args.join(" ")), &r);
        self.assert_nothing_left(&format!("outpostctl {}", args.join(" ")));
        r
    }

    pub fn plan(&self, extra: &[&str]) -> Run {
        let mut args = vec!["plan"];
        args.extend(extra);
        args.push(".");
        self.run(&args)
    }

    pub fn apply(&self, extra: &[&str]) -> Run {
        let mut args = vec!["apply", "--auto-approve"];
        args.extend(extra);
        args.push(".");
        self.run(&args)
    }

    pub fn status(&self, extra: &[&str]) -> Run {
        let mut args = vec!["status"];
        args.extend(extra);
        args.push(".");
        self.run(&args)
    }

    /// A JSON plan; the exit code is not checked.
    pub fn plan_json(&self) -> (Run, Value) {
        let r = self.plan(&["--format", "json"]);
        let v = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("plan --format json is not JSON ({e}):\n{}", shown(&r)));
        (r, v)
    }

    /// No private key text, nor any of its lines, is in the run's output.
    pub fn assert_no_key_material(&self, what: &str, r: &Run) {
        for key in &self.secrets {
            for line in key
                .lines()
                .filter(|l| l.len() >= 16 && !l.contains("-----"))
            {
                for (stream, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
                    assert!(
                        !text.contains(line),
                        "a line of a private key leaked into the {stream} of `{what}`:\n{}",
                        shown(r)
                    );
                }
            }
        }
    }

    /// TMPDIR is empty (no key file, no control socket) and no process names it.
    pub fn assert_nothing_left(&self, what: &str) {
        let needle = self.tmp.display().to_string();
        let mut left = Vec::new();
        let mut procs = Vec::new();
        let clean = wait_until(Duration::from_secs(10), || {
            left = fs::read_dir(&self.tmp)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            procs = processes_naming(&needle);
            left.is_empty() && procs.is_empty()
        });
        if !clean {
            // Leave a clean slate for the next run of this test before failing.
            kill_pids(&procs.iter().map(|p| p.0).collect::<Vec<_>>());
            for p in &left {
                let _ = fs::remove_dir_all(p);
                let _ = fs::remove_file(p);
            }
        }
        assert!(
            clean,
            "`{what}` left files in its TMPDIR {needle}: {left:?}, or processes: {procs:?}"
        );
    }

    /// Waits (bounded) until sshd serves no session any more.
    pub fn assert_no_ssh_session(&self, what: &str) {
        let Some(s) = &self.ssh else { return };
        let mut left = Vec::new();
        let gone = wait_until(Duration::from_secs(10), || {
            left = s.sessions();
            left.is_empty()
        });
        assert!(
            gone,
            "sshd still serves sessions after `{what}`: pids {left:?}"
        );
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Whatever outpostctl started and left behind under our TMPDIR (ssh clients).
        let needle = self.tmp.display().to_string();
        let pids: Vec<u32> = processes_naming(&needle).iter().map(|p| p.0).collect();
        kill_pids(&pids);
    }
}

/// The key of the `host_key: "..."` line a host key error suggests pinning.
pub fn pinned_line_of(message: &str) -> Option<String> {
    let at = message.find("host_key: \"")? + "host_key: \"".len();
    let rest = &message[at..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Whether the user's own known_hosts (ssh reads the passwd home, not $HOME) has `host`.
pub fn user_known_hosts_has(host: &str) -> bool {
    let uid = run_with_timeout(
        {
            let mut c = Command::new("id");
            c.arg("-u");
            c
        },
        TOOL_TIMEOUT,
    )
    .stdout
    .trim()
    .to_string();
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let home = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[2] == uid)
        .map(|f| f[5].to_string())
        .unwrap_or_else(|| "/root".into());
    [
        format!("{home}/.ssh/known_hosts"),
        format!("{home}/.ssh/known_hosts2"),
        "/etc/ssh/ssh_known_hosts".into(),
    ]
    .iter()
    .filter(|f| Path::new(f).exists())
    .any(|f| {
        let mut c = Command::new("ssh-keygen");
        c.args(["-F", host, "-f", f]);
        let r = run_with_timeout(c, TOOL_TIMEOUT);
        r.code == 0 && !r.stdout.trim().is_empty()
    })
}

/// Whether the system knows the user `name`.
pub fn user_exists(name: &str) -> bool {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(':').next() == Some(name))
}

/// A TCP listener on 127.0.0.1 that accepts connections and never says a word (an ssh server
/// that hangs before its banner), until dropped: then every connection is closed.
pub struct Silent {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Silent {
    pub fn start(port: u16) -> Silent {
        use std::sync::atomic::Ordering;
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the silent listener");
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let accepted: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let count = std::sync::Arc::clone(&accepted);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            let start = std::time::Instant::now();
            // Bounded: never outlives the test by much.
            while !flag.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
                match listener.accept() {
                    Ok((s, _)) => {
                        held.push(s);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Silent {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// The connections it took so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The private directories outpostctl's ssh transport made under `tmp`.
pub fn ssh_dirs(tmp: &Path) -> Vec<PathBuf> {
    fs::read_dir(tmp)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("outpostctl-ssh-"))
                })
                .collect()
        })
        .unwrap_or_default()
}
