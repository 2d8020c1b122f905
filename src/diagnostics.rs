//! Diagnostics: every problem found in a manifest set, with where it stands and what to do.
//!
//! They are collected, never thrown one at a time, so a user sees every mistake in one run.
//! A diagnostic is plain data; `render` turns it into miette's report for people and JSON for
//! machines.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::manifest::yaml::Span;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A file as loaded: its display path and text, kept so diagnostics can show the line.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as the user gave it (relative stays relative).
    pub path: PathBuf,
    pub text: String,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
    /// `text` as snippets show it, when it holds control characters (an escape sequence in
    /// a manifest must not reach the terminal of whoever reads a CI log): each written as
    /// `?` (`¿` for the two-byte ones), so every offset stays.
    shown: Option<String>,
}

impl SourceFile {
    /// A lone carriage return ends a line in YAML as `\n` and `\r\n` do: it is read as `\n`
    /// (the same byte count, so every offset stays), so that the parser, the line index and
    /// the rendered snippet count lines alike.
    pub fn new(path: PathBuf, text: String) -> Arc<SourceFile> {
        let text = if text.contains('\r') {
            let mut bytes = text.into_bytes();
            for i in 0..bytes.len() {
                if bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n') {
                    bytes[i] = b'\n';
                }
            }
            // Only an ASCII byte was replaced by another.
            String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        } else {
            text
        };
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let unsafe_char = |c: char| c.is_control() && !matches!(c, '\n' | '\r' | '\t');
        let shown = text.contains(unsafe_char).then(|| {
            text.chars()
                .map(|c| match c {
                    c if !unsafe_char(c) => c,
                    c if c.len_utf8() == 1 => '?',
                    _ => '¿',
                })
                .collect()
        });
        Arc::new(SourceFile {
            path,
            text,
            line_starts,
            shown,
        })
    }

    /// The text as snippets show it (`shown`).
    pub fn shown_text(&self) -> &str {
        self.shown.as_deref().unwrap_or(&self.text)
    }

    /// The line (from 0) holding byte `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        self.line_starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1)
    }

    /// The byte range of line `line` (from 0), without its line break (`\n` or `\r\n`).
    pub fn line_range(&self, line: usize) -> (usize, usize) {
        let start = self
            .line_starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len());
        let mut end = self
            .line_starts
            .get(line + 1)
            .map_or(self.text.len(), |next| next.saturating_sub(1))
            .max(start);
        if end > start && self.text.as_bytes().get(end - 1) == Some(&b'\r') {
            end -= 1;
        }
        (start, end)
    }

    pub fn line_count(&self) -> usize {
        self.line_starts.len()
    }

    /// Byte offset of a (line from 1, column from 1 in characters) position, clamped to the
    /// text.
    pub fn offset(&self, line: u32, col: u32) -> usize {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1) as usize) else {
            return self.text.len();
        };
        let (_, end) = self.line_range(line.saturating_sub(1) as usize);
        let line_text = self.text.get(start..end).unwrap_or("");
        let chars = col.saturating_sub(1) as usize;
        start
            + line_text
                .char_indices()
                .nth(chars)
                .map(|(i, _)| i)
                .unwrap_or(line_text.len())
    }
}

/// Where a diagnostic points.
#[derive(Debug, Clone)]
pub struct Location {
    pub file: Arc<SourceFile>,
    pub span: Span,
}

impl Location {
    pub fn new(file: &Arc<SourceFile>, span: Span) -> Location {
        Location {
            file: Arc::clone(file),
            span,
        }
    }

    /// The source text the location covers (on its first line).
    pub fn text(&self) -> String {
        let start = self.file.offset(self.span.start.line, self.span.start.col);
        let end = self.file.offset(self.span.end.line, self.span.end.col);
        let line_end = self.file.line_range(self.file.line_of(start)).1.max(start);
        self.file
            .text
            .get(start..end.min(line_end).max(start))
            .unwrap_or_default()
            .to_string()
    }
}

#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable, short identifier (`unknown-key`, `missing-env`, ...) for machines and docs.
    pub code: &'static str,
    pub message: String,
    pub location: Option<Location>,
    /// What the caret under the source says.
    pub label: Option<String>,
    pub hint: Option<String>,
    /// A second place that explains the first (the other definition of a duplicate name).
    pub related: Vec<(Location, String)>,
    /// A failure to read that may pass by itself (too many open files, an I/O error), not
    /// one the files say: `watch` tries again rather than waiting for a file to change.
    pub transient: bool,
}

/// Whether reading failed for a reason that may pass by itself: not a path that is missing,
/// forbidden or of the wrong kind, which only a change on disk (that `watch` sees) mends.
pub fn transient_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    !matches!(
        e.kind(),
        K::NotFound
            | K::PermissionDenied
            | K::NotADirectory
            | K::IsADirectory
            | K::InvalidData
            | K::InvalidInput
            | K::FileTooLarge
    )
}

impl Diagnostic {
    /// An error saying `message`. Control characters in it (from a key, a path or a value of
    /// the manifest) are escaped: they never reach the terminal.
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: crate::engine::printable(message),
            location: None,
            label: None,
            hint: None,
            related: Vec::new(),
            transient: false,
        }
    }

    /// Marks a read failure that may pass by itself (`transient_io`).
    pub fn transient(mut self, e: &std::io::Error) -> Self {
        self.transient = transient_io(e);
        self
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(crate::engine::printable(hint));
        self
    }

    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        if let Some(h) = hint {
            self.hint = Some(crate::engine::printable(h));
        }
        self
    }

    pub fn related(mut self, location: Location, label: impl Into<String>) -> Self {
        self.related.push((location, label.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `FILE:LINE:COL: message`, or just the message when it points nowhere.
    pub fn headline(&self) -> String {
        match &self.location {
            Some(l) => format!(
                "{}:{}:{}: {}",
                l.file.path.display(),
                l.span.start.line,
                l.span.start.col,
                self.message
            ),
            None => self.message.clone(),
        }
    }

    /// The JSON form, documented in the README.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
        });
        if let Some(l) = &self.location {
            v["file"] = l.file.path.display().to_string().into();
            v["line"] = l.span.start.line.into();
            v["column"] = l.span.start.col.into();
            v["end_line"] = l.span.end.line.into();
            v["end_column"] = l.span.end.col.into();
        }
        if let Some(h) = &self.hint {
            v["hint"] = h.clone().into();
        }
        if !self.related.is_empty() {
            v["related"] = self
                .related
                .iter()
                .map(|(l, label)| {
                    serde_json::json!({
                        "file": l.file.path.display().to_string(),
                        "line": l.span.start.line,
                        "column": l.span.start.col,
                        "message": label,
                    })
                })
                .collect();
        }
        v
    }
}

/// The sort order diagnostics are shown in: by file, position, then message.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        let key = |d: &Diagnostic| {
            d.location
                .as_ref()
                .map(|l| (l.file.path.clone(), l.span.start.line, l.span.start.col))
        };
        key(a).cmp(&key(b)).then_with(|| a.message.cmp(&b.message))
    });
}

/// Diagnostics whose message names their whole cause: an environment variable that is not
/// set, a file that cannot be read or is readable by others. Many outposts commonly read
/// their token from one of them.
const ONE_CAUSE: [&str; 3] = ["missing-env", "unreadable-file", "key-permissions"];

/// How many of a folded diagnostic's other places a person is shown (`--format json` lists
/// them all).
pub const PLACES_SHOWN: usize = 3;

/// Folds each cause of `ONE_CAUSE` met at many places into one diagnostic at its first place,
/// listing the others as related places: an unset variable that 1,000 outposts read their
/// token from is one error, not 1,000 identical ones. Order is kept (sort first).
pub fn fold_repeated_causes(diags: &mut Vec<Diagnostic>) {
    let mut first: std::collections::HashMap<(&'static str, String), usize> =
        std::collections::HashMap::new();
    let mut out: Vec<Diagnostic> = Vec::with_capacity(diags.len());
    for d in diags.drain(..) {
        if ONE_CAUSE.contains(&d.code) {
            let key = (d.code, d.message.clone());
            if let Some(&i) = first.get(&key) {
                if let Some(l) = d.location {
                    out[i].related.push((l, "here too".into()));
                }
                continue;
            }
            first.insert(key, out.len());
        }
        out.push(d);
    }
    for &i in first.values() {
        let places = out[i].related.len() + 1;
        if places > 1 {
            let _ = write!(out[i].message, " (referenced at {places} places)");
        }
    }
    *diags = out;
}

/// Counts for a summary line: "2 errors, 1 warning".
pub fn count_summary(diags: &[Diagnostic]) -> String {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    let mut s = String::new();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    if errors > 0 {
        s.push_str(&plural(errors, "error"));
    }
    if warnings > 0 {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(s, "{}", plural(warnings, "warning"));
    }
    s
}

#[cfg(test)]
mod transient_tests {
    use std::io::{Error, ErrorKind};

    /// What a file change mends is not retried; what may pass by itself is.
    #[test]
    fn only_reads_that_may_pass_by_themselves_are_transient() {
        for kind in [ErrorKind::NotFound, ErrorKind::PermissionDenied] {
            assert!(!super::transient_io(&Error::from(kind)), "{kind:?}");
        }
        // EMFILE (too many open files) and EIO.
        for errno in [24, 5] {
            assert!(
                super::transient_io(&Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }
}

#[cfg(test)]
mod escape_tests {
    use super::Diagnostic;

    /// What a manifest puts in a message or a hint (a duplicate key, a file name, a value) has
    /// its control characters escaped: an escape sequence never reaches the terminal.
    #[test]
    fn control_characters_in_messages_are_escaped() {
        let d = Diagnostic::error("yaml", "duplicate key `x\u{1b}[31mRED`")
            .hint("remove `x\u{1b}[31mRED`");
        assert_eq!(d.message, "duplicate key `x\\u001b[31mRED`");
        assert_eq!(d.hint.as_deref(), Some("remove `x\\u001b[31mRED`"));
        let w = Diagnostic::warning("ignored-key", "a\u{7}b").maybe_hint(Some("c\u{9b}d".into()));
        assert_eq!(w.message, "a\\u0007b");
        assert_eq!(w.hint.as_deref(), Some("c\\u009bd"));
    }
}
