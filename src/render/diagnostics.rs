//! Diagnostics as miette reports (people) or a JSON document (machines).

use std::fmt;
use std::sync::Arc;

use miette::{
    GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteError, NamedSource, SourceCode,
    SourceSpan, SpanContents,
};

use super::{Style, md_code, md_escape};
use crate::diagnostics::{Diagnostic, Location, PLACES_SHOWN, Severity, SourceFile};

/// A source file's text shared with miette without copying it.
#[derive(Debug, Clone)]
struct Text(Arc<SourceFile>);

/// Bytes of a long line shown on each side of the mark.
const WINDOW: usize = 120;

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i.min(s.len())
}

impl SourceCode for Text {
    /// Only the lines around the span, found through the line index: miette's own `str`
    /// reader scans from the start of the file for every diagnostic. A very long line is
    /// shown as a window around the mark.
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let f = &self.0;
        let text = f.text.as_str();
        let start = span.offset().min(text.len());
        let end = (start + span.len()).min(text.len());
        let (l0, l1) = (
            f.line_of(start),
            f.line_of(end.saturating_sub(1).max(start)),
        );
        let first = l0.saturating_sub(context_lines_before);
        let last = (l1 + context_lines_after).min(f.line_count().saturating_sub(1));
        let (mut from, mut to) = (f.line_range(first).0, f.line_range(last).1);
        let (mut line, mut column, mut count) = (first, 0, last - first + 1);
        if context_lines_before == 0 {
            // As miette's own reader does: a read without context (the header's position)
            // starts at the span itself.
            let ls = f.line_range(l0).0;
            from = start;
            column = text[ls..start].chars().count();
        }
        if to - from > 16 * WINDOW {
            let (ls, le) = f.line_range(l0);
            if context_lines_before > 0 {
                from = floor_char(text, start.saturating_sub(WINDOW).max(ls));
            }
            to = ceil_char(text, (end + WINDOW).min(le)).max(from);
            line = l0;
            column = text[ls..from].chars().count();
            count = 1;
        }
        Ok(Box::new(miette::MietteSpanContents::new(
            &f.shown_text().as_bytes()[from..to],
            SourceSpan::new(from.into(), to - from),
            line,
            column,
            count,
        )))
    }
}

fn source_span(l: &Location) -> SourceSpan {
    let start = l.file.offset(l.span.start.line, l.span.start.col);
    let mut end = l.file.offset(l.span.end.line, l.span.end.col);
    // A multi-line value is marked on its first line only, to keep the snippet short.
    if l.span.end.line != l.span.start.line || end <= start {
        let line_end = l.file.line_range(l.file.line_of(start)).1.max(start);
        end = if end <= start { start } else { line_end };
    }
    // A mark longer than a window would outgrow a shortened line.
    let end = ceil_char(&l.file.text, start + (end - start).min(WINDOW));
    SourceSpan::new(start.into(), end - start)
}

/// One diagnostic, or one of its related places, in the shape miette renders.
struct Report<'a> {
    diag: &'a Diagnostic,
    /// Set for a related place: (location, what it says).
    related_place: Option<&'a (Location, String)>,
    /// The hint, and how many related places are not shown (`PLACES_SHOWN` are).
    help: Option<String>,
    source: Option<NamedSource<Text>>,
    related: Vec<Report<'a>>,
}

impl<'a> Report<'a> {
    fn new(diag: &'a Diagnostic) -> Report<'a> {
        let hidden = diag.related.len().saturating_sub(PLACES_SHOWN);
        let related: Vec<Report<'a>> = diag
            .related
            .iter()
            .take(PLACES_SHOWN)
            .map(|r| Report {
                diag,
                related_place: Some(r),
                help: None,
                source: Some(named(&r.0)),
                related: Vec::new(),
            })
            .collect();
        let more = (hidden > 0).then(|| {
            format!(
                "{hidden} more place{} not shown (`--format json` lists them all)",
                if hidden == 1 { " is" } else { "s are" }
            )
        });
        let help = match (&diag.hint, more) {
            (Some(h), Some(m)) => Some(format!("{h}\n{m}")),
            (h, m) => h.clone().or(m),
        };
        Report {
            diag,
            related_place: None,
            help,
            source: diag.location.as_ref().map(named),
            related,
        }
    }
}

fn named(l: &Location) -> NamedSource<Text> {
    NamedSource::new(l.file.path.display().to_string(), Text(Arc::clone(&l.file)))
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.related_place {
            Some((l, label)) => write!(
                f,
                "{}:{}:{}: {label}",
                l.file.path.display(),
                l.span.start.line,
                l.span.start.col
            ),
            None => f.write_str(&self.diag.headline()),
        }
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn severity(&self) -> Option<miette::Severity> {
        if self.related_place.is_some() {
            return Some(miette::Severity::Advice);
        }
        Some(match self.diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        if self.related_place.is_some() {
            return None;
        }
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let (location, label) = match self.related_place {
            Some((l, label)) => (l, Some(label.clone())),
            None => (self.diag.location.as_ref()?, self.diag.label.clone()),
        };
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            label,
            source_span(location),
        ))))
    }

    fn related<'b>(&'b self) -> Option<Box<dyn Iterator<Item = &'b dyn miette::Diagnostic> + 'b>> {
        if self.related.is_empty() {
            return None;
        }
        Some(Box::new(
            self.related.iter().map(|r| r as &dyn miette::Diagnostic),
        ))
    }
}

/// Renders diagnostics for a person, each once, in order.
pub fn human(diags: &[Diagnostic], style: Style) -> String {
    let theme = if style.color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(style.width)
        .with_links(false)
        .with_context_lines(1)
        .with_show_related_as_nested(true);
    let mut out = String::new();
    for d in diags {
        let report = Report::new(d);
        if handler.render_report(&mut out, &report).is_err() {
            // Rendering only fails on a broken writer to a String; fall back to the headline.
            out.push_str(&d.headline());
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// The JSON document of `--format json`.
/// Invalid manifests as a pull-request comment (`plan --format markdown`): every error and
/// warning with its file, line and column, and the hint.
pub fn markdown(diags: &[Diagnostic]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "### outpostctl plan: the manifests are invalid ({})\n\nNothing was planned.\n\n",
        crate::diagnostics::count_summary(diags)
    );
    out.push_str("| | Where | Problem | Hint |\n|---|---|---|---|\n");
    for d in diags {
        let mark = match d.severity {
            Severity::Error => "❌",
            Severity::Warning => "⚠️",
        };
        let at = |l: &Location| {
            md_code(&format!(
                "{}:{}:{}",
                l.file.path.display(),
                l.span.start.line,
                l.span.start.col
            ))
        };
        let mut problem = md_escape(&d.message);
        for (l, label) in d.related.iter().take(PLACES_SHOWN) {
            let _ = write!(problem, "<br>{}: {}", md_escape(label), at(l));
        }
        let hidden = d.related.len().saturating_sub(PLACES_SHOWN);
        if hidden > 0 {
            let _ = write!(
                problem,
                "<br>and {hidden} more place{}",
                if hidden == 1 { "" } else { "s" }
            );
        }
        let _ = writeln!(
            out,
            "| {mark} | {} | {problem} | {} |",
            d.location.as_ref().map(at).unwrap_or_default(),
            d.hint.as_deref().map(md_escape).unwrap_or_default()
        );
    }
    out
}

pub fn json(diags: &[Diagnostic]) -> serde_json::Value {
    serde_json::Value::Array(diags.iter().map(Diagnostic::to_json).collect())
}
