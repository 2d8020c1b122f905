//! Shared helpers for CLI tests: run the real binary, redact what changes between runs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpostctl"))
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A finished run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs outpostctl in `dir` with `args`, a clean colourless environment plus `env`.
pub fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().expect("outpostctl runs"))
}

/// Environment the examples need: tokens and keys as a CI secret store would give them.
pub fn example_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AK_PROXY_TOKEN", "example-token-proxy"),
        ("AK_EDGE_PROXY_TOKEN", "example-token-edge"),
        ("AK_HOME_PROXY_TOKEN", "example-token-home"),
        ("AK_RADIUS_TOKEN", "example-token-radius"),
        ("AK_LDAP_TOKEN", "example-token-ldap"),
        // The key of examples/homelab/certs/edge-client.pem: validation checks the pair.
        (
            "EDGE_DOCKER_CLIENT_KEY",
            include_str!("../fixtures/example-keys/edge-client-key.pem"),
        ),
        // A test-only key: validation reads an OpenSSH key's header (no passphrase?).
        ("NAS_SSH_KEY", include_str!("../fixtures/ssh-keys/plain")),
    ]
}
