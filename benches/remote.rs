//! `cargo bench --bench remote`: remote engines (issue 4, "Speed").
//!
//! The same real engine is reached three ways:
//! - **local**: the unix socket (`local: true`);
//! - **ssh**: `sshd` on a loopback port (generated host key, key authentication for root,
//!   the host key pinned with `ssh.host_key`); outpostctl runs `ssh ... docker system
//!   dial-stdio`, one ssh process reused for the requests of a run. The sessions get an empty
//!   `HOME` (sshd's `SetEnv`), so that root's login shell reads no `~/.bashrc` and the figures
//!   are the transport's; a second sshd without it (**ssh, root's .bashrc**) shows what a
//!   heavy remote shell start-up adds (here: `pyenv init` in root's `.bashrc`);
//! - **tls**: `stunnel` on a loopback port in front of the engine's socket, requiring a client
//!   certificate (a CA, a server certificate for 127.0.0.1 and localhost, a client
//!   certificate, all made here with openssl; `tls_verification` + `tls_authentication`).
//!
//! Figures:
//! 1. **per-request latency** after the first request, in-process: one connected engine per
//!    transport, then 50 rounds of one `list` (every container of the engine) and one image
//!    inspect (a small answer) on each transport in turn; median and p95. Goal: ssh within a
//!    few ms of the local socket. The first request (connect: ssh start and login, or the TLS
//!    handshake, plus the API version negotiation) is shown separately.
//! 2. **no-change plan of 100 outposts** over each transport: the release binary
//!    `outpostctl plan --detailed-exitcode DIR` (exit 0), runs interleaved across transports,
//!    median wall and mean user+sys (ssh included); and in-process `connect_all` + `plan::build` (a fresh
//!    connection each time). sshd's log gives the number of ssh logins per plan run.
//!
//! The 100 outposts (`rac`, no ports, `docker_network: none`) are created once over the local
//! socket and removed at the end, also when the benchmark fails. sshd and stunnel are killed
//! at the end with everything they started, as is any ssh process still naming this run's
//! private TMPDIR.
//!
//! Environment: `OUTPOSTCTL_BENCH_RUNS` (plan runs per transport, default 15),
//! `OUTPOSTCTL_BENCH_REQUESTS` (requests per transport, default 50).

#[path = "../tests/remote_bench_support/mod.rs"]
mod support;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outpostctl::diff::DiffOptions;
use outpostctl::engine::Engine;
use outpostctl::engine::connect::{connect, connect_all};
use outpostctl::plan::build;
use support::*;

const IMAGE: &str = "ghcr.io/goauthentik/rac:2026.8.0";
const PROJECT: &str = "outpostctl-bench-remote";
const OUTPOSTS: usize = 100;

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn tool(dir: &Path, program: &str, args: &[&str]) -> Out {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).args(args);
    match run(cmd, Duration::from_secs(30)) {
        Ok(o) if o.ok() => o,
        Ok(o) => fail(&format!(
            "`{program} {}` failed ({HOW_TO_FIX}; it installs openssl, stunnel4 and openssh-server):\n{}",
            args.join(" "),
            o.shown()
        )),
        Err(e) => fail(&format!("{e}; {HOW_TO_FIX}")),
    }
}

fn chmod_600(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// A CA, a server certificate (localhost, 127.0.0.1) and a client certificate (X.509 v3,
/// clientAuth), EC P-256, in `dir`.
fn make_pki(dir: &Path) {
    fs::create_dir_all(dir).expect("pki dir");
    let key = |name: &str| {
        tool(
            dir,
            "openssl",
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
    key("ca.key");
    tool(
        dir,
        "openssl",
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=outpostctl bench CA",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "ca.pem",
        ],
    );
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write");
    fs::write(
        dir.join("client.ext"),
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write");
    for (name, cn, serial) in [
        ("server", "localhost", "1001"),
        ("client", "outpostctl bench client", "1002"),
    ] {
        key(&format!("{name}.key"));
        tool(
            dir,
            "openssl",
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
        tool(
            dir,
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

/// The engine's socket: the path of a `unix://` DOCKER_HOST, else the default.
fn engine_socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into())
}

/// stunnel on 127.0.0.1:port in front of the engine's socket, requiring a client certificate.
fn start_stunnel(dir: &Path, pki: &Path) -> (Daemon, u16) {
    let port = free_port();
    let p = |f: &str| pki.join(f).display().to_string();
    let conf = format!(
        "foreground = yes\npid =\ndebug = warning\n[engine]\naccept = 127.0.0.1:{port}\n\
         connect = {}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
        engine_socket(),
        p("server.pem"),
        p("server.key"),
        p("ca.pem"),
    );
    let conf_path = dir.join("stunnel.conf");
    fs::write(&conf_path, conf).expect("write stunnel.conf");
    let mut cmd = Command::new("stunnel");
    cmd.arg(&conf_path);
    let mut d = Daemon::spawn("stunnel", cmd, &dir.join("stunnel.log"));
    d.wait_listening(port, None);
    (d, port)
}

struct Sshd {
    /// Killed, with its sessions, on drop.
    _daemon: Daemon,
    port: u16,
    /// `ssh-ed25519 AAAA...`, for `ssh.host_key`.
    host_key: String,
    client_key: PathBuf,
    log: PathBuf,
}

impl Sshd {
    /// Logins sshd accepted so far.
    fn logins(&self) -> usize {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("Accepted publickey for")
            .count()
    }
}

/// sshd on a free loopback port. With `clean_home`, sessions get `HOME` set to an empty
/// directory (sshd's `SetEnv`), so the login shell sources no `~/.bashrc`: the ssh figures
/// then measure the transport, not this machine's shell start-up. Without it, root's own
/// environment applies (on the benchmark machine a `.bashrc` running `pyenv init`).
fn start_sshd(dir: &Path, name: &str, clean_home: bool) -> Sshd {
    let dir = dir.join(name);
    fs::create_dir_all(&dir).expect("ssh dir");
    for name in ["host_ed25519", "client_ed25519"] {
        tool(
            &dir,
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", name],
        );
    }
    fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys")).expect("authorized_keys");
    let host_pub = fs::read_to_string(dir.join("host_ed25519.pub")).expect("host key");
    let host_key = host_pub
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    // The privilege separation directory sshd insists on.
    fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
    let port = free_port();
    let log = dir.join("sshd.log");
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
         PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {}\n\
         LogLevel VERBOSE\nMaxSessions 50\nMaxStartups 50\n{}",
        dir.join("host_ed25519").display(),
        dir.join("authorized_keys").display(),
        dir.join("sshd.pid").display(),
        if clean_home {
            let home = dir.join("home");
            fs::create_dir_all(&home).expect("home dir");
            format!("SetEnv HOME={}\n", home.display())
        } else {
            String::new()
        }
    );
    let conf_path = dir.join("sshd_config");
    fs::write(&conf_path, config).expect("write sshd_config");
    fs::write(&log, "").expect("sshd log");
    let mut cmd = Command::new("/usr/sbin/sshd");
    cmd.arg("-D").arg("-E").arg(&log).arg("-f").arg(&conf_path);
    let mut daemon = Daemon::spawn("sshd", cmd, &dir.join("sshd.out"));
    daemon.wait_listening(port, Some(&log));
    // sshd is serving once it sends its banner.
    let start = Instant::now();
    loop {
        let mut buf = [0u8; 7];
        let ok = std::net::TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.read_exact(&mut buf)
            })
            .is_ok();
        if ok && &buf == b"SSH-2.0" {
            break;
        }
        if start.elapsed() > Duration::from_secs(15) {
            fail(&format!(
                "sshd on port {port} sends no banner; its log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd {
        _daemon: daemon,
        port,
        host_key,
        client_key: dir.join("client_ed25519"),
        log,
    }
}

/// Kills, on drop, every process still naming `needle` (ssh control masters of this run's
/// private TMPDIR, if any outlived their run).
struct Leftovers {
    needle: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let left = processes_naming(&self.needle);
        if !left.is_empty() {
            eprintln!(
                "cleanup: {} process(es) still named {}; killing them",
                left.len(),
                self.needle
            );
            kill_pids(&left);
        }
    }
}

/// What `outpostctl plan` does after validation: `connect_all` (API version negotiation
/// included) and `plan::build`; checks the plan has nothing to change.
async fn connect_and_plan(v: &outpostctl::validate::Validated) -> (f64, u64) {
    let url = &v.integrations["engine"].url;
    let t = Instant::now();
    let engines = connect_all(v).await;
    let plan = build(v, &engines, DiffOptions::default()).await;
    let took = ms(t.elapsed());
    let engine = match engines.get("engine") {
        Some(Ok(e)) => e,
        Some(Err(e)) => fail(&format!("cannot connect to {url}: {e}")),
        None => fail("no engine `engine` in the set"),
    };
    if plan.has_changes() || plan.has_errors() || plan.summary().unchanged != OUTPOSTS {
        fail(&format!(
            "the plan over {url} is not \"nothing to change\": {:?}",
            plan.summary()
        ));
    }
    (took, engine.requests())
}

/// One way to reach the engine: a manifest set whose integration `engine` goes that way.
struct Transport {
    name: &'static str,
    dir: PathBuf,
    v: outpostctl::validate::Validated,
    /// Index into the sshd list, for ssh transports.
    sshd: Option<usize>,
}

fn ssh_integration(sshd: &Sshd) -> String {
    format!(
        "keypairs:\n  ssh-key: {{ key: {{ file: {} }} }}\nintegrations:\n  engine:\n    \
         url: \"ssh://root@127.0.0.1:{}\"\n    tls_authentication: ssh-key\n    \
         ssh:\n      host_key: \"{}\"\n",
        sshd.client_key.display(),
        sshd.port,
        sshd.host_key
    )
}

fn tls_integration(pki: &Path, port: u16) -> String {
    let p = |f: &str| pki.join(f).display().to_string();
    format!(
        "keypairs:\n  ca: {{ certificate: {{ file: {} }} }}\n  client:\n    \
         certificate: {{ file: {} }}\n    key: {{ file: {} }}\nintegrations:\n  engine:\n    \
         url: \"https://127.0.0.1:{port}\"\n    tls_verification: ca\n    \
         tls_authentication: client\n",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    )
}

fn busy_text(b: Option<f64>) -> String {
    b.map_or("?".into(), |b| format!("{b:.2}"))
}

fn main() {
    set_env();
    let runs = env_num("OUTPOSTCTL_BENCH_RUNS", 15);
    let requests = env_num("OUTPOSTCTL_BENCH_REQUESTS", 50);
    let (version, api) = require_engine();
    require_image(IMAGE);
    let bin = binary();
    let projects = Projects::new(&[PROJECT]);
    // Short: ssh's control socket lives under TMPDIR and must fit in 108 bytes.
    let tmp = tempfile::Builder::new()
        .prefix("obr-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let private_tmp = tmp.path().join("t");
    fs::create_dir_all(&private_tmp).expect("tmp dir");
    // SAFETY: no other thread exists yet (the runtime is built below).
    unsafe { std::env::set_var("TMPDIR", &private_tmp) };
    let _leftovers = Leftovers {
        needle: tmp.path().display().to_string(),
    };
    let pki = tmp.path().join("pki");
    make_pki(&pki);
    let (stunnel, tls_port) = start_stunnel(tmp.path(), &pki);
    let sshds = [
        start_sshd(tmp.path(), "ssh", true),
        start_sshd(tmp.path(), "ssh-login-env", false),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!(
        "outpostctl remote benchmark: {} CPUs, Docker engine {version} (API {api}), binary {}; \
         process time: {}; load average {} at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bin.display(),
        PROCESS_TIME,
        loadavg()
    );
    println!(
        "ssh: sshd on 127.0.0.1:{} (clean HOME) and 127.0.0.1:{} (root's own HOME); tls: stunnel \
         on 127.0.0.1:{tls_port} in front of {}",
        sshds[0].port,
        sshds[1].port,
        engine_socket()
    );

    // The same project and outposts behind integrations named `engine`.
    let defs: [(&'static str, String, Option<usize>); 4] = [
        ("local", LOCAL_INTEGRATION.to_string(), None),
        ("ssh", ssh_integration(&sshds[0]), Some(0)),
        ("tls", tls_integration(&pki, tls_port), None),
        ("ssh, root's .bashrc", ssh_integration(&sshds[1]), Some(1)),
    ];
    let transports: Vec<Transport> = defs
        .into_iter()
        .enumerate()
        .map(|(i, (name, integration, sshd))| {
            let dir = tmp.path().join(format!("set-{i}"));
            write_set(&dir, PROJECT, &integration, "bremote rac", OUTPOSTS);
            let v = validated(&dir);
            Transport { name, dir, v, sshd }
        })
        .collect();
    let n = transports.len();
    let logins = |t: &Transport| t.sshd.map_or(0, |k| sshds[k].logins());

    let t = apply(&transports[0].dir, &[]);
    println!(
        "\ncreated {OUTPOSTS} outposts over the local socket in {:.1} s",
        t.out.wall.as_secs_f64()
    );
    // Every transport sees the same containers: a plan over each has nothing to change.
    for t in &transports {
        let _ = plan_no_change(&t.dir, &[]);
    }

    // 2. No-change plan of 100 outposts per transport, measured first (printed last) so that
    // nothing of this process runs ssh while the binary is measured.
    let mut timed: Vec<Vec<Timed>> = (0..n).map(|_| Vec::new()).collect();
    let mut plan_logins = vec![0usize; n];
    let (_, plan_busy) = machine_busy(|| {
        for _ in 0..runs {
            for (i, t) in transports.iter().enumerate() {
                let before = logins(t);
                timed[i].push(plan_no_change(&t.dir, &[]));
                plan_logins[i] += logins(t) - before;
            }
        }
    });
    let mut in_proc: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut reqs: Vec<u64> = vec![0; n];
    rt.block_on(async {
        for t in &transports {
            let _ = connect_and_plan(&t.v).await;
        }
        for _ in 0..runs {
            for (i, t) in transports.iter().enumerate() {
                let (took, r) = connect_and_plan(&t.v).await;
                in_proc[i].push(took);
                reqs[i] = r;
            }
        }
    });

    // 1. Per-request latency, in-process: one engine per transport, connected once.
    struct Connected {
        engine: outpostctl::engine::docker::DockerEngine,
        connect_ms: f64,
        first_list_ms: f64,
        listed: usize,
        logins: usize,
    }
    let mut conns: Vec<Connected> = rt.block_on(async {
        let mut out = Vec::new();
        for t in &transports {
            let before = logins(t);
            let start = Instant::now();
            let engine = connect(&t.v.integrations["engine"])
                .await
                .unwrap_or_else(|e| fail(&format!("{}: cannot connect: {e}", t.name)));
            let connect_ms = ms(start.elapsed());
            let start = Instant::now();
            let listed = engine
                .list()
                .await
                .unwrap_or_else(|e| fail(&format!("{}: list: {e}", t.name)))
                .len();
            out.push(Connected {
                engine,
                connect_ms,
                first_list_ms: ms(start.elapsed()),
                listed,
                logins: logins(t) - before,
            });
        }
        out
    });
    let mut lists: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut inspects: Vec<Vec<f64>> = vec![Vec::new(); n];
    let before: Vec<usize> = transports.iter().map(&logins).collect();
    let (_, lat_busy) = machine_busy(|| {
        rt.block_on(async {
            for _ in 0..requests {
                for (i, c) in conns.iter().enumerate() {
                    let name = transports[i].name;
                    let start = Instant::now();
                    c.engine
                        .list()
                        .await
                        .unwrap_or_else(|e| fail(&format!("{name}: list: {e}")));
                    lists[i].push(ms(start.elapsed()));
                    let start = Instant::now();
                    let found = c
                        .engine
                        .image_labels(IMAGE)
                        .await
                        .unwrap_or_else(|e| fail(&format!("{name}: image inspect: {e}")));
                    if found.is_none() {
                        fail(&format!("{name}: the engine has no {IMAGE}"));
                    }
                    inspects[i].push(ms(start.elapsed()));
                }
            }
        })
    });
    for (i, t) in transports.iter().enumerate() {
        conns[i].logins += logins(t) - before[i];
    }

    println!(
        "\n### per-request latency after the first ({requests} rounds, transports interleaved; \
         machine busy {} cores)\n",
        busy_text(lat_busy)
    );
    println!(
        "| transport | connect + first request (ms) | first `list` (ms) | `list` min (ms) | `list` median (ms) | `list` p95 (ms) | image inspect min (ms) | image inspect median (ms) | image inspect p95 (ms) | ssh logins |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, t) in transports.iter().enumerate() {
        let c = &conns[i];
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.name,
            fmt_ms(c.connect_ms),
            fmt_ms(c.first_list_ms),
            fmt_ms(percentile(&lists[i], 0.0)),
            fmt_ms(median(&lists[i])),
            fmt_ms(percentile(&lists[i], 95.0)),
            fmt_ms(percentile(&inspects[i], 0.0)),
            fmt_ms(median(&inspects[i])),
            fmt_ms(percentile(&inspects[i], 95.0)),
            if t.sshd.is_some() {
                c.logins.to_string()
            } else {
                "-".into()
            }
        );
    }
    println!(
        "\n`list` returns every container of the engine ({} now); the image inspect answer is a \
         few KB.",
        conns[0].listed
    );
    let med = |i: usize| (median(&lists[i]), median(&inspects[i]));
    let (local, ssh, tls) = (med(0), med(1), med(2));
    println!(
        "ssh minus local: list {:+.2} ms, image inspect {:+.2} ms; tls minus local: list \
         {:+.2} ms, image inspect {:+.2} ms",
        ssh.0 - local.0,
        ssh.1 - local.1,
        tls.0 - local.0,
        tls.1 - local.1
    );
    println!(
        "goal (one request over ssh, after the first, within a few ms of the local socket): {}",
        if ssh.0 - local.0 <= 3.0 && ssh.1 - local.1 <= 3.0 {
            "met (within 3 ms)"
        } else {
            "NOT met (more than 3 ms)"
        }
    );
    drop(conns);

    println!(
        "\n### no-change plan of {OUTPOSTS} outposts ({runs} runs per transport, interleaved; \
         machine busy {} cores)\n",
        busy_text(plan_busy)
    );
    println!(
        "| transport | binary wall median (ms) | binary wall min–max (ms) | binary user+sys mean (ms) | ssh logins per run | in-process connect_all + build median (ms) | API requests |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut walls = Vec::new();
    for (i, t) in transports.iter().enumerate() {
        let f = summarize(&timed[i]);
        walls.push(f.wall);
        println!(
            "| {} | {} | {}–{} | {} | {} | {} | {} |",
            t.name,
            fmt_ms(f.wall),
            fmt_ms(f.wall_min),
            fmt_ms(f.wall_max),
            fmt_opt(f.cpu_mean),
            if t.sshd.is_some() {
                format!("{:.1}", plan_logins[i] as f64 / runs as f64)
            } else {
                "-".into()
            },
            fmt_ms(median(&in_proc[i])),
            reqs[i]
        );
    }
    println!(
        "\nbinary wall vs local: ssh {:+.0} ms, tls {:+.0} ms, ssh with root's .bashrc {:+.0} ms",
        walls[1] - walls[0],
        walls[2] - walls[0],
        walls[3] - walls[0]
    );

    println!("\nstopping sshd and stunnel, removing the benchmark's containers...");
    drop(sshds);
    drop(stunnel);
    drop(projects);
}
