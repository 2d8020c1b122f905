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
        Ok((v, engines, mut plan)) => {
            // Only `main` calls this, and the process exits right after: the set is not
            // given back to the allocator spec by spec (the engines are dropped: that ends
            // ssh sessions and removes their keys).
            std::mem::forget(v);
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
    match args.format {
        PlanFormat::Human => p.out(&render::plan::human(&plan, p.out_style(), args.diff)),
        PlanFormat::Json => p.out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&render::plan::json(&plan)).unwrap_or_default()
        )),
        PlanFormat::Markdown => p.out(&render::plan::markdown(&plan)),
    }
    // The plan is shown whether or not it can be saved: a pull-request comment or a JSON
    // consumer still gets it.
    let mut saved = true;
    if let Some(out) = &args.out {
        // `apply --plan` checks each engine against the one the plan was made for: a plan
        // without an engine's ID would be refused there, so it is not saved.
        let unidentified = plan.unidentified();
        if !unidentified.is_empty() {
            p.err(&format!(
                "error: the plan was not saved: the engine ID (docker info) of integration {} could not be read, and apply --plan checks it\n  help: a socket proxy must allow `info` (INFO=1); try again when the engine answers\n",
                render::code_list(&unidentified)
            ));
            saved = false;
        } else if let Err(e) = save(&plan, out) {
            let help = match e.kind() {
                std::io::ErrorKind::NotFound => "the directory it goes in must exist",
                std::io::ErrorKind::PermissionDenied => {
                    "give a path in a directory outpostctl may write to"
                }
                std::io::ErrorKind::IsADirectory => "a directory is there: give a file's path",
                _ => "give another path",
            };
            p.err(&format!(
                "error: cannot write the plan to `{}`: {}\n  help: {help}\n",
                out.display(),
                crate::manifest::load::io_reason(&e)
            ));
            saved = false;
        } else if !plan.unplanned().is_empty() {
            // Kept to be read, but `apply --plan` refuses it: part of it is unknown.
            p.err(&format!(
                "note: plan saved to `{}`, but it cannot be applied: integration {} could not be planned; make a new plan when its engine answers\n",
                out.display(),
                render::code_list(plan.unplanned())
            ));
        } else {
            p.err(&format!(
                "note: plan saved to `{}`; `{}` applies exactly this plan, or nothing if what it was made from changes first\n",
                out.display(),
                apply_command(args, out)
            ));
        }
    }
    let exit = if plan.has_errors() || !saved {
        Exit::Failure
    } else if args.detailed_exitcode && plan.has_changes() {
        Exit::Changes
    } else {
        Exit::Success
    };
    std::mem::forget(plan);
    exit
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

/// Writes the plan file: the JSON format, which holds no secret values. It is written beside
/// its place and renamed there: an interrupted run leaves the previous file or none, never
/// half of one.
pub fn save(plan: &Plan, path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(&render::plan::json(plan)).unwrap_or_default();
    // A name of this run's own, made anew (`create_new`: never through a file or a symlink
    // already there, which another user of a shared directory could have put in its way).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".{}-{nanos}.partial", std::process::id()));
    write_through(&text, path, Path::new(&partial))
}

/// Writes `text` and a line feed to `partial`, a file made anew (a file or a symlink already
/// there is an error, and is left as it is), then renames it to `path`.
fn write_through(text: &str, path: &Path, partial: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(partial)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        });
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = std::fs::remove_file(partial);
        }
        return Err(e);
    }
    std::fs::rename(partial, path).inspect_err(|_| {
        let _ = std::fs::remove_file(partial);
    })
}

/// The largest plan file read, far above any real plan: a bound for a wrong path given.
const MAX_PLAN_BYTES: u64 = 64 * 1024 * 1024;

/// Reads a plan file written by `save`.
pub fn load(path: &Path) -> Result<Plan, String> {
    let text = crate::validate::read_text_file(path, MAX_PLAN_BYTES, "a plan file", true)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    // The version first: a newer format may hold what this outpostctl cannot read.
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("`{}` is not an outpostctl plan: {e}", path.display()))?;
    let version = value.get("format_version");
    match version.and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(crate::plan::FORMAT_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "`{}` is a plan of format version {v}; this outpostctl reads version {}: make and apply the plan with the same outpostctl version",
                path.display(),
                crate::plan::FORMAT_VERSION
            ));
        }
        None if version.is_some() => {
            return Err(format!(
                "`{}` is not an outpostctl plan: its `format_version` is not a whole number (write it with `outpostctl plan --out`)",
                path.display()
            ));
        }
        None => {
            return Err(format!(
                "`{}` is not an outpostctl plan: it has no `format_version` (write it with `outpostctl plan --out`)",
                path.display()
            ));
        }
    }
    serde_json::from_value(value)
        .map_err(|e| format!("`{}` is not an outpostctl plan: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan file is written through a file made anew: a symlink put at that name (by
    /// another user of a shared directory) is not written through, and no plan file is left
    /// half written; without one, the file lands whole and nothing is left beside it.
    #[test]
    fn a_plan_file_is_never_written_through_a_symlink() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("plan.json");
        let partial = dir.path().join("plan.json.1-2.partial");
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "untouched\n").expect("victim");
        std::os::unix::fs::symlink(&victim, &partial).expect("symlink");

        let e = write_through("{}", &path, &partial).expect_err("written through the symlink");
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "untouched\n"
        );
        assert!(!path.exists(), "a plan file was written");

        std::fs::remove_file(&partial).expect("remove the symlink");
        write_through("{}", &path, &partial).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("plan"), "{}\n");
        assert!(!partial.exists(), "the partial file is left");
    }
}
