//! outpostctl: a declarative GitOps applier for authentik outposts on Docker.
//!
//! The flow: files -> `manifest` (YAML with positions) -> `validate` (schema and meaning) ->
//! `desired` (one container spec per outpost) -> observed -> diff -> plan -> apply.

pub mod cli;
pub mod commands;
pub mod desired;
pub mod diagnostics;
pub mod manifest;
pub mod render;
pub mod validate;
