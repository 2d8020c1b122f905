//! `outpostctl plan`: manifests -> desired -> observed -> diff -> plan, rendered.

use std::path::Path;

use super::{Exit, Printer, plan_now, shell_word};
use crate::cli::{PlanArgs, PlanFormat};
use crate::plan::Plan;
use crate::render;

pub async fn run(p: &Printer, args: &PlanArgs) -> Exit {
    let plan = match plan_now(
        p,
        &args.paths,
        super::diff_options(args.adopt, args.inspect),
    )
    .await
    {
        Ok((_, engines, mut plan)) => {
            if args.out.is_some() {
                plan.identify_engines(&engines).await;
            }
            plan
        }
        Err(diagnostics) => {
            // A pull-request comment or a JSON consumer reading stdout learns why there is
            // no plan.
            match args.format {
                PlanFormat::Markdown => p.out(&render::diagnostics::markdown(&diagnostics)),
                PlanFormat::Json => super::invalid_json(p, &diagnostics),
                PlanFormat::Human => {}
            }
            return Exit::Failure;
        }
    };
    if let Some(out) = &args.out {
        // `apply --plan` checks each engine against the one the plan was made for: a plan
        // without an engine's ID would be refused there, so it is not saved.
        let unidentified = plan.unidentified();
        if !unidentified.is_empty() {
            p.err(&format!(
                "error: the plan was not saved: the engine ID (docker info) of integration {} could not be read, and apply --plan checks it\n  help: a socket proxy must allow `info` (INFO=1); try again when the engine answers\n",
                render::code_list(&unidentified)
            ));
            return Exit::Failure;
        }
        if let Err(e) = save(&plan, out) {
            p.err(&format!(
                "error: cannot write the plan to `{}`: {e}\n",
                out.display()
            ));
            return Exit::Failure;
        }
        p.err(&format!(
            "note: plan saved to `{}`; `{}` applies exactly this plan, or nothing if what it was made from changes first\n",
            out.display(),
            apply_command(args, out)
        ));
    }
    match args.format {
        PlanFormat::Human => p.out(&render::plan::human(&plan, p.out_style(), args.diff)),
        PlanFormat::Json => p.out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&render::plan::json(&plan)).unwrap_or_default()
        )),
        PlanFormat::Markdown => p.out(&render::plan::markdown(&plan)),
    }
    if plan.has_errors() {
        Exit::Failure
    } else if args.detailed_exitcode && plan.has_changes() {
        Exit::Changes
    } else {
        Exit::Success
    }
}

/// The command that applies the plan saved at `out` (the flags and paths that change what a
/// plan holds, repeated).
fn apply_command(args: &PlanArgs, out: &Path) -> String {
    let mut words = vec!["outpostctl".to_string(), "apply".into(), "--plan".into()];
    words.push(shell_word(&out.to_string_lossy()));
    if args.adopt {
        words.push("--adopt".into());
    }
    words.extend(args.paths.iter().map(|p| shell_word(&p.to_string_lossy())));
    words.join(" ")
}

/// Writes the plan file: the JSON format, which holds no secret values.
pub fn save(plan: &Plan, path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(&render::plan::json(plan)).unwrap_or_default();
    std::fs::write(path, text + "\n")
}

/// The largest plan file read, far above any real plan: a bound for a wrong path given.
const MAX_PLAN_BYTES: u64 = 64 * 1024 * 1024;

/// Reads a plan file written by `save`.
pub fn load(path: &Path) -> Result<Plan, String> {
    let text = crate::validate::read_text_file(path, MAX_PLAN_BYTES, "a plan file", true)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("`{}` is not an outpostctl plan: {e}", path.display()))
}
