//! Plans and apply reports, for people (aligned, coloured on a terminal), machines (JSON, the
//! documented format) and pull requests (Markdown).

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style as AStyle};

use super::{Style, md_code, md_escape};
use crate::apply::Report;
use crate::diff::{Action, ActionKind, Change, shown_value};
use crate::plan::{Plan, Summary};

fn paint(style: Style, color: AStyle, text: &str) -> String {
    if style.color {
        format!("{color}{text}{color:#}")
    } else {
        text.to_string()
    }
}

fn sigil(kind: ActionKind) -> (&'static str, AStyle) {
    let c = |c: AnsiColor| AStyle::new().fg_color(Some(c.into()));
    match kind {
        ActionKind::Create => ("+", c(AnsiColor::Green)),
        ActionKind::Recreate => ("~", c(AnsiColor::Yellow)),
        ActionKind::Rename => (">", c(AnsiColor::Cyan)),
        ActionKind::Start | ActionKind::Unpause => ("^", c(AnsiColor::Cyan)),
        ActionKind::Restart => ("^", c(AnsiColor::Cyan)),
        ActionKind::Remove => ("-", c(AnsiColor::Red)),
        ActionKind::Noop => ("=", AStyle::new().dimmed()),
        ActionKind::Blocked => ("!", c(AnsiColor::Red).bold()),
    }
}

pub fn change_text(c: &Change) -> String {
    let (before, after) = (
        c.before.as_deref().map(shown_value),
        c.after.as_deref().map(shown_value),
    );
    // The field names a label another writer may have set: its key is escaped like a value.
    let field = crate::engine::printable_line(c.field.as_str());
    match (before, after) {
        (Some(b), Some(a)) => format!("{field}: {b} -> {a}"),
        (None, Some(a)) => format!("{field}: (none) -> {a}"),
        (Some(b), None) => format!("{field}: {b} -> (removed)"),
        (None, None) => field,
    }
}

fn target(a: &Action) -> String {
    match (a.action, &a.container) {
        (ActionKind::Rename, Some(c)) => format!("{} -> {}", c.name, a.name),
        _ => a.name.clone(),
    }
}

/// "2 to create, 1 to recreate, 1 to remove" or "no changes".
pub fn summary_line(s: &Summary) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (s.create, "to create"),
        (s.recreate, "to recreate"),
        (s.rename, "to rename"),
        (s.start, "to start"),
        (s.restart, "to restart"),
        (s.remove, "to remove"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let mut line = if parts.is_empty() && s.failed_engines > 0 {
        // Not "no changes": the engines that could not be read may have some.
        "no changes on the engines reached".to_string()
    } else if parts.is_empty() {
        "no changes".to_string()
    } else {
        parts.join(", ")
    };
    if s.unchanged > 0 {
        let _ = write!(line, ", {} unchanged", s.unchanged);
    }
    let left = not_applied(s);
    if !left.is_empty() {
        let _ = write!(line, ", {left}");
    }
    line
}

/// The plan for a person. Unchanged outposts are counted, not listed, unless `verbose`.
pub fn human(plan: &Plan, style: Style, show_diff: bool) -> String {
    let mut out = String::new();
    let width = plan
        .integrations
        .iter()
        .flat_map(|e| &e.actions)
        .map(|a| target(a).chars().count())
        .max()
        .unwrap_or(0)
        .min(60);
    for e in &plan.integrations {
        let _ = writeln!(
            out,
            "{} {} ({})",
            paint(style, AStyle::new().bold(), "integration"),
            e.name,
            e.url
        );
        if let Some(err) = &e.error {
            let _ = writeln!(
                out,
                "  {} {err}",
                paint(style, sigil(ActionKind::Blocked).1, "! error:")
            );
            if let Some(line) = unchecked_line(&e.unchecked) {
                let _ = writeln!(out, "  {line}");
            }
            continue;
        }
        let mut unchanged = 0;
        for a in &e.actions {
            if a.action == ActionKind::Noop {
                unchanged += 1;
                continue;
            }
            let (s, color) = sigil(a.action);
            let verb = format!("{s} {:<9}", a.action.as_str());
            let adopt = if a.adopt { " (adopt)" } else { "" };
            let _ = writeln!(
                out,
                "  {} {:<width$}  {}{adopt}",
                paint(style, color, &verb),
                target(a),
                a.outpost
            );
            // An outpost blocked for several reasons: one line each.
            for why in a.error.iter().flat_map(|e| e.split(crate::plan::ALSO)) {
                let _ = writeln!(out, "      {why}");
            }
            for r in &a.reasons {
                let _ = writeln!(out, "      {}", change_text(r));
            }
            // The settings diff is the outpost's create or recreate, not a duplicate's removal.
            if show_diff
                && a.action != ActionKind::Remove
                && let Some((before, after)) = e.spec_texts.get(&a.outpost)
            {
                out.push_str(&unified(before, after, style, "      "));
            }
        }
        if unchanged > 0 {
            let _ = writeln!(
                out,
                "  {}",
                paint(
                    style,
                    AStyle::new().dimmed(),
                    &format!("{unchanged} unchanged")
                )
            );
        }
        for note in &e.notes {
            let _ = writeln!(
                out,
                "  {} {note}",
                paint(style, AStyle::new().bold(), "note:")
            );
        }
    }
    let _ = writeln!(out, "\nplan: {}", summary_line(&plan.summary()));
    out
}

/// A unified diff of two settings texts, indented.
pub fn unified(before: &str, after: &str, style: Style, indent: &str) -> String {
    let diff = similar::TextDiff::from_lines(before, after);
    let mut out = String::new();
    for change in diff.iter_all_changes() {
        let (sign, color) = match change.tag() {
            similar::ChangeTag::Delete => ("-", sigil(ActionKind::Remove).1),
            similar::ChangeTag::Insert => ("+", sigil(ActionKind::Create).1),
            similar::ChangeTag::Equal => (" ", AStyle::new().dimmed()),
        };
        let line = format!("{sign} {}", change.value().trim_end_matches('\n'));
        let _ = writeln!(out, "{indent}{}", paint(style, color, &line));
    }
    out
}

/// The documented JSON form: the plan itself plus its summary.
pub fn json(plan: &Plan) -> serde_json::Value {
    let mut v = serde_json::to_value(plan).unwrap_or_default();
    v["summary"] = serde_json::to_value(plan.summary()).unwrap_or_default();
    v["changes"] = plan.has_changes().into();
    v
}

/// A pull-request comment.
pub fn markdown(plan: &Plan) -> String {
    let mut out = String::new();
    let summary = plan.summary();
    let _ = writeln!(
        out,
        "### outpostctl plan for `{}`: {}\n",
        plan.project,
        summary_line(&summary)
    );
    for e in &plan.integrations {
        let _ = writeln!(
            out,
            "#### Integration `{}` ({})\n",
            e.name,
            md_escape(&e.url)
        );
        if let Some(err) = &e.error {
            let _ = writeln!(out, "> **Error:** {}\n", md_escape(err));
            if let Some(line) = unchecked_line(&e.unchecked) {
                let _ = writeln!(out, "{}\n", md_escape(&line));
            }
            continue;
        }
        let changes: Vec<&Action> = e
            .actions
            .iter()
            .filter(|a| a.action != ActionKind::Noop)
            .collect();
        for note in &e.notes {
            let _ = writeln!(out, "> **Note:** {}\n", md_escape(note));
        }
        if changes.is_empty() {
            let _ = writeln!(out, "No changes ({} unchanged).\n", e.actions.len());
            continue;
        }
        let _ = writeln!(out, "| | Action | Outpost | Container | Details |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for a in &changes {
            let emoji = match a.action {
                ActionKind::Create => "🟢",
                ActionKind::Recreate => "🟡",
                ActionKind::Remove => "🔴",
                ActionKind::Blocked => "⛔",
                _ => "🔵",
            };
            let mut details: Vec<String> =
                a.reasons.iter().map(|r| md_code(&change_text(r))).collect();
            if let Some(err) = &a.error {
                details.push(md_escape(err));
            }
            if a.adopt {
                details.insert(0, "adopts authentik's container".into());
            }
            let _ = writeln!(
                out,
                "| {emoji} | {} | {} | {} | {} |",
                a.action.as_str(),
                md_escape(&a.outpost),
                md_code(&target(a)),
                details.join("<br>")
            );
        }
        let unchanged = e.actions.len() - changes.len();
        if unchanged > 0 {
            let _ = writeln!(out, "\n{unchanged} unchanged.");
        }
        out.push('\n');
    }
    out
}

/// "2 outposts not checked: Edge, LDAP" for an engine that could not be planned (the first
/// ten named).
pub fn unchecked_line(outposts: &[String]) -> Option<String> {
    const SHOWN: usize = 10;
    let n = outposts.len();
    (n > 0).then(|| {
        let mut names = outposts[..n.min(SHOWN)].join(", ");
        if n > SHOWN {
            let _ = write!(names, " and {} more", n - SHOWN);
        }
        format!(
            "{n} outpost{} not checked: {names}",
            if n == 1 { "" } else { "s" }
        )
    })
}

/// What a plan holds that apply leaves alone: "1 blocked, 1 engine could not be read (2
/// outposts not checked)", or "". (Not "unreachable": an engine that answered may have
/// refused its container list.)
pub fn not_applied(s: &Summary) -> String {
    let mut parts = Vec::new();
    if s.blocked > 0 {
        parts.push(format!("{} blocked", s.blocked));
    }
    if s.failed_engines > 0 {
        parts.push(format!(
            "{} engine{} could not be read ({} outpost{} not checked)",
            s.failed_engines,
            if s.failed_engines == 1 { "" } else { "s" },
            s.unchecked,
            if s.unchecked == 1 { "" } else { "s" }
        ));
    }
    parts.join(", ")
}

/// What apply did, for a person; `planned` is the summary of the plan it applied, whose
/// blocked outposts were left alone (and make the run fail).
pub fn report_human(report: &Report, planned: &Summary, style: Style) -> String {
    let mut out = String::new();
    let (mut done, mut failed) = (0, 0);
    for o in &report.outcomes {
        let (mark, color) = if o.ok {
            done += 1;
            ("ok", sigil(ActionKind::Create).1)
        } else {
            failed += 1;
            ("FAILED", sigil(ActionKind::Blocked).1)
        };
        let _ = writeln!(
            out,
            "{} {} {} `{}` on {}",
            paint(style, color, mark),
            o.action.as_str(),
            o.name,
            o.outpost,
            o.integration
        );
        for m in &o.messages {
            let _ = writeln!(out, "    {m}");
        }
    }
    for (name, err) in &report.engine_errors {
        failed += 1;
        let _ = writeln!(
            out,
            "{} integration {name}: {err}",
            paint(style, sigil(ActionKind::Blocked).1, "FAILED")
        );
    }
    // An engine in error is among the failures above (its lock, or the engine itself).
    let _ = write!(out, "\napply: {done} done, {failed} failed");
    if planned.blocked > 0 {
        let _ = write!(out, ", {} blocked", planned.blocked);
    }
    out.push('\n');
    out
}
