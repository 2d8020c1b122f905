//! Command-line interface. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub const EXIT_CODES: &str = "\
Exit codes:
  0   success; for `plan --detailed-exitcode`: success and no changes
  1   invalid manifests, or an engine operation failed
  2   `plan --detailed-exitcode` only: success, and there are changes
  64  the command line itself is wrong (unknown option, missing value)";

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
    /// Print the manifest JSON Schema (for editors and yaml-language-server).
    Schema,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}
