//! `outpostctl apply`: plan, confirm, apply, report.

use std::io::{BufRead, IsTerminal};

use super::{Exit, Printer, plan_now};
use crate::apply::{self, Outcome, Progress};
use crate::cli::ApplyArgs;
use crate::diff::{Action, DiffOptions};
use crate::lock::{self, LockOptions};
use crate::render;

/// Tells a person on a terminal what is happening while it happens.
struct TerminalProgress<'a> {
    p: &'a Printer,
}

impl Progress for TerminalProgress<'_> {
    fn started(&self, integration: &str, a: &Action) {
        self.p.err(&format!(
            "  {} {} on {integration}...\n",
            a.action.as_str(),
            a.name
        ));
    }
    fn pulling(&self, integration: &str, image: &str, status: &str) {
        if status.starts_with("Pulling from") || status.starts_with("Status:") {
            self.p
                .err(&format!("  pull {image} on {integration}: {status}\n"));
        }
    }
    fn finished(&self, _: &Outcome) {}
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

pub async fn run(p: &Printer, args: &ApplyArgs) -> Exit {
    let Some((v, engines, plan)) = plan_now(p, &args.paths, args.adopt).await else {
        return Exit::Failure;
    };
    if let Some(file) = &args.plan {
        let saved = match super::plan::load(file) {
            Ok(s) => s,
            Err(e) => {
                p.err(&format!("error: {e}\n"));
                return Exit::Failure;
            }
        };
        if let Some(why) = plan.staleness(&saved) {
            p.err(&format!(
                "error: the saved plan `{}` is stale: {why}\n  help: run `outpostctl plan --out {}` again and review it\n",
                file.display(),
                file.display()
            ));
            return Exit::Failure;
        }
    }
    p.out(&render::plan::human(&plan, p.out_style(), args.diff));
    if !plan.has_changes() {
        p.out("nothing to apply\n");
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
        p.out("\nApply these changes? Only `yes` is accepted: ");
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if answer.trim() != "yes" {
            p.out("apply cancelled; nothing was changed\n");
            return Exit::Failure;
        }
    }
    // One writer per engine: lock, plan again, and apply only what was shown.
    let lock_opts = LockOptions::new(args.lock_timeout, "apply");
    let waiting = |m: &str| p.err(&format!("{m}\n"));
    let diff = DiffOptions {
        adopt: args.adopt,
        ..Default::default()
    };
    let (plan, locks) =
        lock::plan_under_lock(&v, &engines, &plan, diff, true, &lock_opts, &waiting).await;
    for e in plan.integrations.iter().filter(|e| e.error.is_some()) {
        p.err(&format!(
            "error: integration {}: {}\n",
            e.name,
            e.error.as_deref().unwrap_or_default()
        ));
    }
    let report = if std::io::stderr().is_terminal() {
        apply::apply(&plan, &v, &engines, &TerminalProgress { p }).await
    } else {
        apply::apply(&plan, &v, &engines, &Unattended).await
    };
    lock::release_all(locks).await;
    p.out(&render::plan::report_human(&report, p.out_style()));
    if report.failed() || plan.has_errors() {
        Exit::Failure
    } else {
        Exit::Success
    }
}
