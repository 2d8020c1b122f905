//! One module per subcommand: each wires the stages together and writes through `Printer`.

pub mod apply;
pub mod completions;
pub mod plan;
pub mod schema;
pub mod status;
pub mod validate;
pub mod watch;

use std::io::Write;

use std::path::PathBuf;

use crate::diagnostics::Diagnostic;
use crate::render::Style;
use crate::validate::{Outcome, Validated, validate, validate_with};

/// Every write of a command goes through here, so output streams and styling are decided
/// once.
pub struct Printer {
    pub style: Style,
    pub stdout_color: bool,
}

impl Printer {
    /// The style for stdout (diagnostics on stderr use `style`).
    pub fn out_style(&self) -> Style {
        Style {
            color: self.stdout_color,
            ..self.style
        }
    }

    pub fn out(&self, text: &str) {
        let mut o = std::io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = o.write_all(text.as_bytes());
        let _ = o.flush();
    }

    pub fn err(&self, text: &str) {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(text.as_bytes());
        let _ = e.flush();
    }
}

/// Installs the SIGINT/SIGTERM handler for a one-shot command that changes the engine: the
/// first signal lets the actions in flight finish.
pub fn install_signal_handler() {
    crate::signals::install(|| {
        eprintln!("interrupted: finishing what is in flight (press Ctrl-C again to stop at once)");
    });
}

/// Installs the SIGINT/SIGTERM handler for a command that only reads (`plan`, `status`): it
/// stops at once.
pub fn install_reader_signal_handler() {
    crate::signals::install(|| {
        eprintln!("interrupted: stopped; nothing was changed");
    });
}

pub use crate::signals::{interrupted, until_interrupted};

/// What a command asks `main` to exit with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    Failure,
    Changes,
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Changes => 2,
        }
    }
}

/// Validates the manifests for a command that acts on them: diagnostics go to stderr, and
/// nothing is returned (so nothing acts) unless the set is valid; an invalid set gives back
/// its diagnostics (for a command that also reports them in its own format).
pub fn load_valid(p: &Printer, paths: &[PathBuf]) -> Result<Validated, Vec<Diagnostic>> {
    shown_valid(p, validate(paths))
}

/// What `plan` and `status` print with `--format json` on manifests that do not validate: a
/// consumer reading stdout learns why there is nothing else.
pub fn invalid_json(p: &Printer, diagnostics: &[Diagnostic]) {
    let doc = serde_json::json!({
        "format_version": 1,
        "valid": false,
        "diagnostics": crate::render::diagnostics::json(diagnostics),
    });
    p.out(&format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    ));
}

/// `load_valid` on a validation's outcome.
fn shown_valid(p: &Printer, outcome: Outcome) -> Result<Validated, Vec<Diagnostic>> {
    if !outcome.diagnostics.is_empty() {
        p.err(&crate::render::diagnostics::human(
            &outcome.diagnostics,
            p.style,
        ));
    }
    if outcome.has_errors() {
        p.err(&format!(
            "error: the manifests are invalid ({}); nothing was planned or changed\n",
            crate::diagnostics::count_summary(&outcome.diagnostics)
        ));
        return Err(outcome.diagnostics);
    }
    outcome.validated.ok_or(outcome.diagnostics)
}

/// The diff options of `plan` and `apply`: `--adopt`, and `--inspect` (every kept container).
pub fn diff_options(adopt: bool, inspect: bool) -> crate::diff::DiffOptions {
    crate::diff::DiffOptions {
        adopt,
        inspect: if inspect {
            crate::diff::Inspect::All
        } else {
            crate::diff::Inspect::Nothing
        },
        ..Default::default()
    }
}

/// What plan and apply start with: valid manifests, connected engines, and the plan.
///
/// The engines are connected to and listed as soon as the integrations are validated, while
/// the outposts still are (on a large set most of the validation then hides behind the
/// engine's list), the local one from the start (`LocalRead`); engines reached over ssh wait
/// for the whole set (`read_ahead`). Only reads
/// happen before the whole set is known to be valid, and nothing read is used unless it is:
/// an invalid set stops the reads and plans nothing.
pub async fn plan_now(
    p: &Printer,
    paths: &[PathBuf],
    diff: crate::diff::DiffOptions,
) -> Result<(Validated, crate::plan::Engines, crate::plan::Plan), Vec<Diagnostic>> {
    let local = crate::engine::connect::LocalRead::start();
    let (ready, integrations) = tokio::sync::oneshot::channel();
    let owned = paths.to_vec();
    let validating = tokio::task::spawn_blocking(move || {
        validate_with(&owned, |defs| {
            let _ = ready.send(defs.clone());
        })
    });
    let reading = tokio::spawn(async move {
        match integrations.await {
            Ok(defs) => Some(crate::engine::connect::read_ahead(&defs, local).await),
            // The set had an error before its integrations were resolved.
            Err(_) => None,
        }
    });
    let outcome = match validating.await {
        Ok(outcome) => outcome,
        Err(e) => {
            reading.abort();
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => return Err(Vec::new()),
            }
        }
    };
    let v = shown_valid(p, outcome).inspect_err(|_| reading.abort())?;
    let (mut engines, listed) = match reading.await {
        Ok(Some(read)) => read,
        _ => Default::default(),
    };
    // Those not read ahead (ssh), connected now; the plan lists them.
    let rest: std::collections::BTreeMap<_, _> = v
        .integrations
        .iter()
        .filter(|(name, _)| !engines.contains_key(*name))
        .map(|(name, def)| (name.clone(), def.clone()))
        .collect();
    engines.extend(crate::engine::connect::connect_each(&rest).await);
    let plan = crate::plan::build_listed(&v, &engines, diff, listed).await;
    Ok((v, engines, plan))
}

/// `s` as one word for a POSIX shell: as is when it is plain, else single-quoted.
pub(crate) fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,".contains(c));
    if plain && s.starts_with('-') {
        // Not an option.
        format!("./{s}")
    } else if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn paths_are_shown_as_one_shell_word() {
        assert_eq!(shell_word("plans/pr-12.json"), "plans/pr-12.json");
        assert_eq!(shell_word("my plan.json"), "'my plan.json'");
        assert_eq!(shell_word("it's.json"), "'it'\\''s.json'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("-plan.json"), "./-plan.json");
    }
}
