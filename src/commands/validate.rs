//! `outpostctl validate`: files -> diagnostics, never an engine.

use std::path::PathBuf;

use super::{Exit, Printer};
use crate::cli::Format;
use crate::diagnostics::count_summary;
use crate::render;
use crate::validate::validate;

pub fn run(p: &Printer, paths: &[PathBuf], format: Format) -> Exit {
    let outcome = validate(paths);
    let valid = !outcome.has_errors();
    match format {
        Format::Json => {
            let doc = serde_json::json!({
                "format_version": 1,
                "valid": valid,
                "files": outcome.file_count,
                "outposts": outcome.validated.as_ref().map_or(0, |v| v.outpost_count()),
                "diagnostics": render::diagnostics::json(&outcome.diagnostics),
            });
            p.out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            ));
        }
        Format::Human => {
            p.err(&render::diagnostics::human(&outcome.diagnostics, p.style));
            let counts = count_summary(&outcome.diagnostics);
            let summary = match (&outcome.validated, valid) {
                (Some(v), true) => {
                    let plural =
                        |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
                    let mut s = format!(
                        "valid: {}, {}, {}",
                        plural(outcome.file_count, "file"),
                        plural(v.integrations.len(), "integration"),
                        plural(v.outpost_count(), "outpost"),
                    );
                    if !counts.is_empty() {
                        s.push_str(&format!(" ({counts})"));
                    }
                    s
                }
                _ => format!("invalid: {counts}"),
            };
            p.out(&format!("{summary}\n"));
        }
    }
    // Only `main` calls this, and the process exits right after: giving every outpost's
    // container spec back to the allocator one by one was a tenth of a 1,000-outpost run.
    std::mem::forget(outcome);
    if valid { Exit::Success } else { Exit::Failure }
}
