//! Command-line interface. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub const EXIT_CODES: &str = "\
Exit codes:
  0   success; for `plan --detailed-exitcode`: success and no changes
  1   invalid manifests, an engine could not be reached, an outpost is blocked (plan,
      apply), an action failed, `plan`/`status` was interrupted, or `apply` was
      interrupted once or cancelled at its question
  2   `plan --detailed-exitcode`: success, and there are changes; `status
      --detailed-exitcode`: an outpost is not running and healthy as deployed, or
      blocked, or a container apply would remove is left
  64  the command line itself is wrong (unknown option, missing value)
  130 interrupted twice (the first SIGINT, SIGTERM, SIGHUP or SIGQUIT lets actions in
      flight finish; the second exits at once, after releasing the engine locks and
      closing ssh sessions)

Environment:
  OUTPOSTCTL_ENGINE_TIMEOUT  seconds one engine request may take, and an image pull go
                             without progress (default 120; 2 to 3600)
  OUTPOSTCTL_LOCK_LEASE      seconds of the engine lock's lease (default 60; 3 to 86400)
  NO_COLOR                   set and not empty: no colour (--color always|never
                             overrides)";

/// Deploy authentik outposts on Docker from manifests kept in git.
///
/// outpostctl validates YAML manifests against its JSON Schema, computes the container
/// authentik itself would deploy for each outpost, diffs it against the live engine, and
/// plans or applies the difference.
#[derive(Debug, Parser)]
#[command(name = "outpostctl", version, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    /// When to colour output: `auto` colours a terminal unless NO_COLOR is set.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Human,
    /// For machines; documented in the README.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// For people.
    Human,
    /// For machines: the documented, versioned plan format.
    Json,
    /// For a pull-request comment.
    Markdown,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Manifest files or directories (read recursively: *.yaml, *.yml).
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Human)]
    pub format: PlanFormat,
    /// Show a unified diff of each changed container's settings (human format only).
    #[arg(long)]
    pub diff: bool,
    /// Save the plan to FILE (JSON, no secrets) for `apply --plan FILE`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Exit 0 when there is nothing to change, 2 when there are changes, 1 on error (invalid
    /// manifests, an engine that could not be read, an outpost blocked).
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Take over containers authentik deployed for the same outpost (same uuid label)
    /// instead of refusing to touch them.
    #[arg(long)]
    pub adopt: bool,
    /// Also inspect each kept container (one request each) for what the container list does
    /// not show: a restart policy changed by hand with `docker update`.
    #[arg(long)]
    pub inspect: bool,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Manifest files or directories (read recursively: *.yaml, *.yml).
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,
    /// Apply this saved plan, and only if nothing it depends on moved since it was made.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Do not ask for confirmation (required without a terminal, e.g. in CI).
    #[arg(long)]
    pub auto_approve: bool,
    /// Take over containers authentik deployed for the same outpost (same uuid label).
    #[arg(long)]
    pub adopt: bool,
    /// Also inspect each kept container (one request each) for what the container list does
    /// not show: a restart policy changed by hand with `docker update`
    /// (implied by a saved plan made with `plan --inspect`).
    #[arg(long)]
    pub inspect: bool,
    /// Show a unified diff of each changed container's settings.
    #[arg(long)]
    pub diff: bool,
    /// How long to wait for another outpostctl holding an engine's lock (humantime: 30s, 5m;
    /// 0s to 1 day).
    #[arg(long, default_value = "2m", value_parser = lock_timeout)]
    pub lock_timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// One readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Manifest files or directories (read recursively: *.yaml, *.yml).
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,
    /// Reconcile at least this often, to correct drift (humantime: 30s, 5m, 1h; 1s to 30
    /// days).
    #[arg(long, default_value = "5m", value_parser = interval)]
    pub interval: std::time::Duration,
    /// How long file changes settle before a reconcile (10ms to 10m).
    #[arg(long, default_value = "500ms", value_parser = debounce)]
    pub debounce: std::time::Duration,
    /// Never remove the containers of outposts that left the manifests; those removals are
    /// logged as pending (the second container an interrupted recreate left is still removed).
    #[arg(long)]
    pub no_prune: bool,
    /// Take over containers authentik deployed for the same outpost (same uuid label).
    #[arg(long)]
    pub adopt: bool,
    /// Serve /healthz, /livez and /metrics (Prometheus) on this address, e.g. 127.0.0.1:9810.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Text)]
    pub log_format: LogFormatArg,
    /// How long to wait for another outpostctl holding an engine's lock (humantime: 30s, 5m;
    /// 0s to 1 day).
    #[arg(long, default_value = "2m", value_parser = lock_timeout)]
    pub lock_timeout: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests against the schema and for meaning; never contacts an engine.
    ///
    /// Every problem is reported once, at FILE:LINE:COL, with a hint. Exits 0 when the set
    /// is valid (warnings are printed), 1 when it is not.
    Validate {
        /// Manifest files or directories (read recursively: *.yaml, *.yml).
        #[arg(default_value = ".")]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Show what apply would change on each engine: create, recreate (with every reason),
    /// rename, start, restart, remove.
    Plan(PlanArgs),
    /// Plan, confirm, and change the engines to match the manifests.
    ///
    /// When stdin is a terminal it shows the plan and asks on stderr (an answer other than
    /// `yes` cancels, exit 1); elsewhere it needs --auto-approve. A saved plan (--plan) was reviewed: it is applied
    /// without asking. A failure in one outpost does not stop the others; the exit code is 1
    /// if anything failed.
    Apply(ApplyArgs),
    /// Show each engine's state (reachable, Docker and API version) and each outpost's
    /// container (state and health).
    Status {
        /// Manifest files or directories (read recursively: *.yaml, *.yml).
        #[arg(default_value = ".")]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Exit 0 when every outpost's container runs and is healthy (or has no health check),
        /// 2 when one is missing, not running, starting, unhealthy, not managed by this
        /// project, on authentik's fallback image or blocked (apply could not make it as the
        /// manifests say), or a container apply would remove is left; 1 when the manifests
        /// are invalid, an engine could not be read, or the run was interrupted.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Keep the engines converged: apply at start, on every change to the manifests or the
    /// files they reference, on engine events for managed containers (and for what a blocked
    /// outpost waits for: a port or name freed, its network created, its image arrived), and
    /// every --interval.
    ///
    /// An invalid edit changes nothing (errors are logged); SIGINT or SIGTERM lets the action
    /// in flight finish and exits 0.
    Watch(WatchArgs),
    /// Print the manifest JSON Schema (for editors and yaml-language-server).
    Schema,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A humantime duration (`30s`, `5m`, `1h`) within `min..=max`.
fn duration_within(
    s: &str,
    min: std::time::Duration,
    max: std::time::Duration,
) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < min || d > max {
        return Err(format!(
            "must be from {} to {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

const SECOND: std::time::Duration = std::time::Duration::from_secs(1);
const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

fn interval(s: &str) -> Result<std::time::Duration, String> {
    duration_within(s, SECOND, 30 * DAY)
}

/// At least 10 ms: the file watcher checks for settled changes a quarter of this often, and
/// with none at all it would spin a core for as long as the watch runs.
fn debounce(s: &str) -> Result<std::time::Duration, String> {
    duration_within(s, std::time::Duration::from_millis(10), 10 * 60 * SECOND)
}

fn lock_timeout(s: &str) -> Result<std::time::Duration, String> {
    duration_within(s, std::time::Duration::ZERO, DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded() {
        assert!(interval("0").is_err(), "a zero interval would spin");
        assert!(interval("10000000000000000000s").is_err());
        assert_eq!(interval("5m"), Ok(std::time::Duration::from_secs(300)));
        assert!(
            debounce("0s").is_err(),
            "a zero debounce would spin the file watcher"
        );
        assert_eq!(debounce("10ms"), Ok(std::time::Duration::from_millis(10)));
        assert!(debounce("1h").is_err());
        assert!(lock_timeout("99999999999999s").is_err());
        assert_eq!(lock_timeout("2m"), Ok(std::time::Duration::from_secs(120)));
    }
}
