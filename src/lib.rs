//! outpostctl: a declarative GitOps applier for authentik outposts on Docker.
//!
//! The flow: files -> `manifest` (YAML with positions) -> `validate` (schema and meaning) ->
//! `desired` (one container spec per outpost) -> observed -> diff -> plan -> apply.

pub mod apply;
pub mod cli;
pub mod commands;
pub mod desired;
pub mod diagnostics;
pub mod diff;
pub mod engine;
pub mod lock;
pub mod log;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod render;
pub mod signals;
pub mod validate;
pub mod watch;
