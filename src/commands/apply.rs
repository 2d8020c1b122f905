//! `outpostctl apply`: plan, confirm, apply, report.

use std::io::{BufRead, IsTerminal};

use super::{Exit, Printer, plan_now};
use crate::apply::{self, Outcome, Progress};
use crate::cli::ApplyArgs;
use crate::diff::Action;
use crate::lock::{self, LockOptions};
use crate::render;

/// Tells a person on a terminal what is happening while it happens: a spinner per action,
/// whose message follows the image pull, finished with the outcome.
struct TerminalProgress {
    bars: indicatif::MultiProgress,
    active: std::sync::Mutex<std::collections::HashMap<(String, String), indicatif::ProgressBar>>,
}

impl TerminalProgress {
    fn new() -> TerminalProgress {
        TerminalProgress {
            bars: indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::stderr(),
            ),
            active: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn bar(&self, integration: &str, outpost: &str) -> Option<indicatif::ProgressBar> {
        let active = self.active.lock().ok()?;
        active
            .get(&(integration.to_string(), outpost.to_string()))
            .cloned()
    }
}

impl Progress for TerminalProgress {
    fn started(&self, integration: &str, a: &Action) {
        let bar = self.bars.add(indicatif::ProgressBar::new_spinner());
        let style = indicatif::ProgressStyle::with_template("  {spinner} {prefix} {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(format!("{} {} on {integration}", a.action.as_str(), a.name));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        if let Ok(mut active) = self.active.lock() {
            active.insert((integration.to_string(), a.outpost.clone()), bar);
        }
    }
    fn pulling(&self, integration: &str, outpost: &str, image: &str, status: &str) {
        // The pull's last status line, on the spinner of the action that pulls.
        if let Some(bar) = self.bar(integration, outpost) {
            bar.set_message(format!("pull {image}: {status}"));
        }
    }
    fn finished(&self, o: &Outcome) {
        if let Some(bar) = self.bar(&o.integration, &o.outpost) {
            let mark = if o.ok { "ok" } else { "FAILED" };
            bar.finish_with_message(mark.to_string());
        }
    }
    fn cancelled(&self) -> bool {
        super::interrupted()
    }
}

/// Without a terminal: only stops when interrupted.
struct Unattended;

impl Progress for Unattended {
    fn cancelled(&self) -> bool {
        super::interrupted()
    }
}

/// `paths` as the words of a command line (each after a space, quoted for the shell).
fn paths_as_words(paths: &[std::path::PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!(" {}", super::shell_word(&p.to_string_lossy())))
        .collect()
}

pub async fn run(p: &Printer, args: &ApplyArgs) -> Exit {
    let saved = match args.plan.as_deref().map(super::plan::load).transpose() {
        Ok(s) => s,
        Err(e) => {
            p.err(&format!("error: {e}\n"));
            return Exit::Failure;
        }
    };
    // `--adopt` on a plan saved without it would apply what was not reviewed (adoptions
    // instead of blocked outposts): refused, saying how to review it.
    if let (true, Some(file), Some(s)) = (args.adopt, &args.plan, &saved)
        && !s.adopted
    {
        let paths = paths_as_words(&args.paths);
        p.err(&format!(
            "error: the saved plan `{}` was made without `--adopt`: it cannot be applied with it\n  help: to adopt, run `outpostctl plan --adopt --out {}{paths}` and review it; to apply the plan as it is, leave `--adopt` out\n",
            file.display(),
            super::shell_word(&file.to_string_lossy()),
        ));
        return Exit::Failure;
    }
    // A plan saved with --inspect or --adopt is compared with one made the same way.
    let inspect = args.inspect || saved.as_ref().is_some_and(|s| s.inspected);
    let adopt = args.adopt || saved.as_ref().is_some_and(|s| s.adopted);
    let diff = super::diff_options(adopt, inspect);
    // Until something is applied, an interruption stops at once (an engine that does not
    // answer would otherwise hold the run for its request timeout).
    let interrupted = || {
        p.err("interrupted: stopped before applying anything; nothing was changed\n");
        Exit::Failure
    };
    let planned = tokio::select! {
        planned = plan_now(p, &args.paths, diff.clone()) => planned,
        _ = crate::signals::until_interrupted() => return interrupted(),
    };
    let Ok((v, engines, mut plan)) = planned else {
        return Exit::Failure;
    };
    if let (Some(file), Some(saved)) = (&args.plan, &saved) {
        tokio::select! {
            _ = plan.identify_engines(&engines) => {}
            _ = crate::signals::until_interrupted() => return interrupted(),
        }
        if let Some(why) = plan.staleness(saved) {
            // The help repeats the flags that change what a plan shows.
            let flags = [(adopt, " --adopt"), (inspect, " --inspect")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, flag)| *flag)
                .collect::<String>();
            let paths = paths_as_words(&args.paths);
            p.err(&format!(
                "error: the saved plan `{}` is stale: {why}\n  help: run `outpostctl plan{flags} --out {}{paths}` again and review it\n",
                file.display(),
                super::shell_word(&file.to_string_lossy()),
            ));
            return Exit::Failure;
        }
    }
    p.out(&render::plan::human(&plan, p.out_style(), args.diff));
    if !plan.has_changes() {
        let left = render::plan::not_applied(&plan.summary());
        if left.is_empty() {
            p.out("nothing to apply\n");
        } else {
            p.out(&format!("nothing to apply; left alone: {left}\n"));
        }
        return if plan.has_errors() {
            Exit::Failure
        } else {
            Exit::Success
        };
    }
    if !args.auto_approve && args.plan.is_none() {
        if !std::io::stdin().is_terminal() {
            p.err("error: refusing to apply without confirmation: there is no terminal to ask on\n  help: review the plan and pass --auto-approve (as CI does), or apply a saved plan with --plan FILE\n");
            return Exit::Failure;
        }
        // On stderr: with stdout sent to a file (`apply > log`), the question still reaches
        // the person at the terminal, after the plan it is about.
        if !std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            p.err(&render::plan::human(&plan, p.style, args.diff));
        }
        p.err("\nApply these changes? Only `yes` is accepted: ");
        // Read on a thread of its own, so that Ctrl-C (or SIGTERM) at the question cancels
        // it at once: a blocking read cannot be interrupted, and the process exits with the
        // thread still waiting on the terminal.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut answer = String::new();
            let _ = std::io::stdin().lock().read_line(&mut answer);
            let _ = tx.send(answer);
        });
        let answer = tokio::select! {
            answer = rx => answer.unwrap_or_default(),
            _ = crate::signals::until_interrupted() => {
                p.err("\napply cancelled (interrupted); nothing was changed\n");
                return Exit::Failure;
            }
        };
        if answer.trim() != "yes" {
            p.err("apply cancelled; nothing was changed\n");
            return Exit::Failure;
        }
    }
    // One writer per engine: lock, plan again, and apply only what was shown.
    let lock_opts = LockOptions::new(args.lock_timeout, "apply");
    let waiting = |m: &str| p.err(&format!("{m}\n"));
    // A plan a person confirmed, or a saved one, is applied as it was shown or not at all.
    // With --auto-approve nobody reviewed it: when an engine changed while this run waited
    // for its lock (another writer, a killed run's last requests), the plan made under the
    // lock is applied, and shown.
    let strict = !args.auto_approve || args.plan.is_some();
    let (locked, locks) =
        lock::plan_under_lock(&v, &engines, &plan, diff, strict, &lock_opts, &waiting).await;
    // Engines planned anew under the lock with other actions (not those that failed to lock:
    // their error is reported below).
    let moved: Vec<&str> = locked
        .integrations
        .iter()
        .filter(|e| !strict && e.error.is_none())
        .filter(|e| {
            plan.integrations
                .iter()
                .any(|s| s.name == e.name && s.actions != e.actions)
        })
        .map(|e| e.name.as_str())
        .collect();
    if !moved.is_empty() {
        p.err(&format!(
            "note: the containers on {} changed while waiting for the lock; applying the plan made under the lock instead:\n",
            render::code_list(&moved)
        ));
        p.out(&render::plan::human(&locked, p.out_style(), args.diff));
    }
    let plan = locked;
    for e in plan.integrations.iter().filter(|e| e.error.is_some()) {
        p.err(&format!(
            "error: integration {}: {}\n",
            e.name,
            e.error.as_deref().unwrap_or_default()
        ));
    }
    let report = if std::io::stderr().is_terminal() {
        apply::apply(&plan, &v, &engines, &TerminalProgress::new()).await
    } else {
        apply::apply(&plan, &v, &engines, &Unattended).await
    };
    // A lock lost once the last action had started: said, and a failure, as when it stops
    // an action (said there already).
    let lost = apply::lock_lost_after_start(&plan, &report);
    lock::release_all(locks).await;
    p.out(&render::plan::report_human(
        &report,
        &plan.summary(),
        p.out_style(),
    ));
    for (integration, why) in &lost {
        p.err(&format!(
            "error: integration {integration}: {why} (after its actions had started; they finished)\n"
        ));
    }
    if report.failed() || plan.has_errors() || !lost.is_empty() {
        Exit::Failure
    } else {
        Exit::Success
    }
}
