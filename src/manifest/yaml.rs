//! YAML text -> JSON values with a position for every node.
//!
//! The manifest is parsed exactly once, from saphyr-parser's event stream, into
//! `serde_json::Value` (what the JSON Schema validator and serde read) plus a map from JSON
//! pointer to source span (what diagnostics point at). Building the tree ourselves is what lets
//! us apply YAML 1.2 core-schema scalar rules, refuse duplicate keys with both positions, and
//! bound alias expansion and nesting depth before they can hurt.

// A parse error is returned at most once per file; its size costs nothing worth boxing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan, Tag};
use serde_json::{Map, Number, Value};

/// A position in a file: line from 1, column from 1, both counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

/// A range in a file, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: Pos,
    pub end: Pos,
}

impl Span {
    pub fn at(line: u32, col: u32) -> Span {
        let p = Pos { line, col };
        Span { start: p, end: p }
    }
    fn from_yaml(s: YSpan) -> Span {
        Span {
            start: pos(s.start),
            end: pos(s.end),
        }
    }
}

fn pos(m: saphyr_parser::Marker) -> Pos {
    Pos {
        line: m.line().min(u32::MAX as usize) as u32,
        col: (m.col() + 1).min(u32::MAX as usize) as u32,
    }
}

/// Where a node stands: the key that introduced it (for map entries) and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePos {
    pub key: Option<Span>,
    pub value: Span,
}

/// One YAML document of a file.
#[derive(Debug, Clone)]
pub struct Document {
    pub value: Value,
    pub positions: HashMap<String, NodePos>,
    /// Where the document starts (its first node).
    pub span: Span,
}

impl Document {
    /// The position recorded for `pointer`, or for its nearest ancestor (nodes copied in by an
    /// alias have no position of their own: they point at the alias).
    pub fn lookup(&self, pointer: &str) -> NodePos {
        lookup(&self.positions, self.span, pointer)
    }
}

/// The position of `pointer`, or of its nearest ancestor that has one; `fallback` when none.
pub fn lookup(positions: &HashMap<String, NodePos>, fallback: Span, pointer: &str) -> NodePos {
    let mut p = pointer;
    loop {
        if let Some(n) = positions.get(p) {
            return *n;
        }
        match p.rfind('/') {
            Some(i) => p = &p[..i],
            None => {
                return NodePos {
                    key: None,
                    value: fallback,
                };
            }
        }
    }
}

/// Bounds on what a manifest may make the parser do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Nesting of mappings and sequences.
    pub max_depth: usize,
    /// Nodes created by alias expansion, per file.
    pub max_alias_nodes: usize,
    /// All nodes, per file.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_alias_nodes: 10_000,
            max_nodes: 2_000_000,
        }
    }
}

/// A YAML error at a position, with an optional second position (e.g. the first occurrence of
/// a duplicate key) and a hint.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub message: String,
    pub span: Span,
    pub label: String,
    pub hint: Option<String>,
    pub related: Option<(Span, String)>,
}

impl YamlError {
    fn new(span: Span, message: impl Into<String>, label: impl Into<String>) -> Self {
        YamlError {
            message: message.into(),
            span,
            label: label.into(),
            hint: None,
            related: None,
        }
    }
    fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
}

enum Frame {
    Seq {
        items: Vec<Value>,
        pointer: String,
        anchor: usize,
        span: YSpan,
        nodes: usize,
        /// Inside the value of a duplicate key: read, then dropped, its positions not recorded.
        dropped: bool,
    },
    Map {
        map: Map<String, Value>,
        pointer: String,
        anchor: usize,
        span: YSpan,
        /// The key read and waiting for its value, with its span, and whether it is a duplicate
        /// (its value is read, then dropped: the first one stays).
        pending_key: Option<(String, YSpan, bool)>,
        key_spans: HashMap<String, YSpan>,
        nodes: usize,
        dropped: bool,
    },
}

impl Frame {
    /// Whether the node about to be attached to this frame is dropped.
    fn drops_child(&self) -> bool {
        match self {
            Frame::Seq { dropped, .. } => *dropped,
            Frame::Map {
                dropped,
                pending_key,
                ..
            } => *dropped || pending_key.as_ref().is_some_and(|(_, _, dup)| *dup),
        }
    }
}

/// What a file parses to: its documents and the errors found in them.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// The documents complete before an error stopped the parse, if one did (checked like
    /// any, so that their errors are reported with it; the file's error keeps the set from
    /// being used).
    pub docs: Vec<Document>,
    /// Every duplicate key (the parse goes on, the first value kept), then the error that
    /// stopped the parse, if one did. Empty for a file that parses cleanly.
    pub errors: Vec<YamlError>,
}

impl Parsed {
    /// The documents, or the first error.
    pub fn into_result(self) -> Result<Vec<Document>, YamlError> {
        match self.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(self.docs),
        }
    }
}

/// At most this many duplicate keys are reported per file; the parse goes on past them.
const MAX_DUPLICATES: usize = 100;

/// Parses every document of `text`. A duplicate key does not stop the parse: it is reported,
/// and the first value is kept.
pub fn parse(text: &str, limits: Limits) -> Parsed {
    let mut errors = Vec::new();
    let mut docs = Vec::new();
    if let Err(e) = parse_docs(text, limits, &mut docs, &mut errors) {
        errors.push(e);
    }
    Parsed { docs, errors }
}

/// Parses into `docs` each document as it completes.
fn parse_docs(
    text: &str,
    limits: Limits,
    docs: &mut Vec<Document>,
    duplicates: &mut Vec<YamlError>,
) -> Result<(), YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut positions: HashMap<String, NodePos> = HashMap::new();
    // anchor id -> (value, node count)
    let mut anchors: HashMap<usize, (Value, usize)> = HashMap::new();
    // Anchors of mappings and sequences of this document still open: an alias to one would
    // put a value inside itself.
    let mut open_anchors: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let mut alias_nodes = 0usize;
    let mut total_nodes = 0usize;
    let mut doc_span = Span::default();
    let mut root: Option<Value> = None;

    for item in &mut parser {
        let (event, yspan) = item.map_err(|e| {
            let m = e.marker();
            let (mut line, mut col) = (m.line(), m.col() + 1);
            // The scanner stops where the scalar it was reading began or ended; the tab it
            // complains of is at or after that, often at the start of the next line.
            if e.info().contains("found a tab")
                && let Some(at) = tab_from(text, line, col)
            {
                (line, col) = at;
            }
            // Other tab errors (a tab that indents, one after `:`) stop just past the tab: the
            // tab itself is shown.
            if (e.info().contains("tab") || e.info().contains("valid YAML whitespace"))
                && col > 1
                && text
                    .lines()
                    .nth(line.saturating_sub(1))
                    .and_then(|l| l.chars().nth(col - 2))
                    == Some('\t')
            {
                col -= 1;
            }
            // At the end of the file (an unclosed bracket or quote): shown on its last line
            // with text, not on the empty one after the final line break.
            if line > text.lines().count()
                && let Some((i, last)) = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .last()
            {
                (line, col) = (i + 1, last.chars().count() + 1);
            }
            let mut err = scan_error(Span::at(line as u32, col as u32), e.info());
            // Stumbled over later (`illegal placement of ':'`, an indentation): a `[` or `{`
            // left open above is the usual cause.
            if err.hint.is_none()
                && let Some((at, open)) = unclosed_flow_before(text, line)
            {
                let (close, what) = if open == '[' { (']', "items") } else { ('}', "entries") };
                err = err.hint(format!(
                    "the `{open}` on line {at} is not closed: end it with `{close}`, its {what} separated by `,`"
                ));
            }
            if let Some(hint) = text
                .lines()
                .nth(line.saturating_sub(1))
                .and_then(|l| shell_variable_hint(l, col))
            {
                err = err.hint(hint);
            }
            if e.info().contains("unknown anchor") {
                let name = alias_name(text, line, col);
                if !name.is_empty() {
                    err = err.hint(format!(
                        "`*{name}` names no anchor: define `&{name}` on a value above it in the same document (anchors do not reach past `---`)"
                    ));
                }
            }
            err
        })?;
        // A finished node (scalar, alias, or closed collection) to attach to its parent.
        let finished: Option<(Value, YSpan, usize, usize, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                positions = HashMap::new();
                anchors.clear();
                open_anchors.clear();
                root = None;
                doc_span = Span::from_yaml(yspan);
                None
            }
            Event::DocumentEnd => {
                // An empty document (a trailing `---`, only comments) holds nothing to merge.
                if let Some(value) = root.take().filter(|v| !v.is_null()) {
                    docs.push(Document {
                        value,
                        positions: std::mem::take(&mut positions),
                        span: doc_span,
                    });
                }
                None
            }
            Event::Alias(id) => {
                if open_anchors.contains(&id) {
                    return Err(YamlError::new(
                        Span::from_yaml(yspan),
                        "alias inside the value its anchor is on",
                        "the anchored value is not finished here",
                    )
                    .hint("a value cannot contain itself; write this part out"));
                }
                let (value, nodes) = anchors.get(&id).cloned().ok_or_else(|| {
                    // The YAML reader knows the anchor from an earlier document.
                    let span = Span::from_yaml(yspan);
                    let name =
                        alias_name(text, span.start.line as usize, span.start.col as usize);
                    let e = YamlError::new(
                        span,
                        if name.is_empty() {
                            "alias refers to an anchor of an earlier document".to_string()
                        } else {
                            format!("alias `*{name}` refers to an anchor of an earlier document")
                        },
                        "anchor not in this document",
                    );
                    let anchor = if name.is_empty() {
                        "the anchor".to_string()
                    } else {
                        format!("`&{name}`")
                    };
                    e.hint(format!(
                        "anchors do not reach past `---`: define {anchor} again in this document, or put shared settings under `defaults:`"
                    ))
                })?;
                alias_nodes += nodes;
                if alias_nodes > limits.max_alias_nodes {
                    return Err(YamlError::new(
                        Span::from_yaml(yspan),
                        format!(
                            "aliases expand to more than {} nodes",
                            limits.max_alias_nodes
                        ),
                        "expansion limit reached here",
                    )
                    .hint("a manifest this size is usually an alias bomb; write the values out or use `defaults:`"));
                }
                Some((value, yspan, 0, nodes, nodes))
            }
            Event::Scalar(text, style, anchor, tag) => {
                let span = Span::from_yaml(yspan);
                // A key is a name (of an outpost, an integration, a port): it keeps its text
                // as written, so that `1e3:` or `007:` is not renamed `1000.0` or `7`.
                let key = matches!(
                    stack.last(),
                    Some(Frame::Map {
                        pending_key: None,
                        ..
                    })
                );
                let value = if key && tag.is_none() {
                    Value::String(text.to_string())
                } else {
                    scalar(&text, style, tag.as_deref(), span)?
                };
                Some((value, yspan, anchor, 1, 1))
            }
            Event::SequenceStart(anchor, tag) => {
                check_tag(tag.as_deref(), "seq", Span::from_yaml(yspan))?;
                if stack.len() >= limits.max_depth {
                    return Err(depth_error(yspan, limits));
                }
                let pointer = child_pointer(&stack, yspan)?;
                let dropped = stack.last().is_some_and(Frame::drops_child);
                if anchor != 0 {
                    open_anchors.insert(anchor);
                }
                stack.push(Frame::Seq {
                    items: Vec::new(),
                    pointer,
                    anchor,
                    span: yspan,
                    nodes: 1,
                    dropped,
                });
                None
            }
            Event::MappingStart(anchor, tag) => {
                check_tag(tag.as_deref(), "map", Span::from_yaml(yspan))?;
                if stack.len() >= limits.max_depth {
                    return Err(depth_error(yspan, limits));
                }
                let pointer = child_pointer(&stack, yspan)?;
                let dropped = stack.last().is_some_and(Frame::drops_child);
                if anchor != 0 {
                    open_anchors.insert(anchor);
                }
                stack.push(Frame::Map {
                    map: Map::new(),
                    pointer,
                    anchor,
                    span: yspan,
                    pending_key: None,
                    key_spans: HashMap::new(),
                    nodes: 1,
                    dropped,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq {
                    items,
                    anchor,
                    span,
                    nodes,
                    ..
                }) => Some((Value::Array(items), span_to(span, yspan), anchor, nodes, 1)),
                Some(Frame::Map {
                    map,
                    anchor,
                    span,
                    nodes,
                    ..
                }) => Some((Value::Object(map), span_to(span, yspan), anchor, nodes, 1)),
                None => None,
            },
        };

        let Some((value, span, anchor, nodes, fresh)) = finished else {
            continue;
        };
        total_nodes += fresh;
        if total_nodes > limits.max_nodes {
            return Err(YamlError::new(
                Span::from_yaml(span),
                format!("the file holds more than {} YAML nodes", limits.max_nodes),
                "limit reached here",
            ));
        }
        if anchor != 0 {
            open_anchors.remove(&anchor);
            anchors.insert(anchor, (value.clone(), nodes));
        }
        attach(
            &mut stack,
            &mut positions,
            &mut root,
            (value, span, nodes),
            duplicates,
        )?;
    }
    Ok(())
}

/// The name of the alias (`*name`) written at `line`, `col` (from 1, in characters); empty
/// when there is none there. At most 64 characters.
fn alias_name(text: &str, line: usize, col: usize) -> String {
    text.lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| {
            l.chars()
                .skip(col.saturating_sub(1))
                .collect::<String>()
                .strip_prefix('*')
                .map(str::to_string)
        })
        .map(|rest| {
            rest.chars()
                .take_while(|c| !c.is_whitespace() && !",[]{}".contains(*c))
                .take(64)
                .collect()
        })
        .unwrap_or_default()
}

fn span_to(start: YSpan, end: YSpan) -> YSpan {
    YSpan::new(start.start, end.end)
}

fn depth_error(yspan: YSpan, limits: Limits) -> YamlError {
    YamlError::new(
        Span::from_yaml(yspan),
        format!("nesting deeper than {} levels", limits.max_depth),
        "too deep",
    )
    .hint("manifests are at most a few levels deep; check the indentation and brackets")
}

/// The first tab at or after line `line`, column `col` (both from 1, the column in
/// characters), within that line and the next two: (line, column).
fn tab_from(text: &str, line: usize, col: usize) -> Option<(usize, usize)> {
    text.lines()
        .enumerate()
        .skip(line.checked_sub(1)?)
        .take(3)
        .find_map(|(i, l)| {
            let skip = if i + 1 == line { col - 1 } else { 0 };
            l.chars()
                .enumerate()
                .skip(skip)
                .find(|(_, c)| *c == '\t')
                .map(|(c, _)| (i + 1, c + 1))
        })
}

/// The hint for a parse error at column `col` (from 1, in characters) of `line` that is a
/// shell variable written as `${NAME}` (envsubst style), whose `{` YAML reads as a mapping
/// in `{ }` or `[ ]`: the name alone after `env:`, else that outpostctl does not expand it.
fn shell_variable_hint(line: &str, col: usize) -> Option<String> {
    let chars: Vec<char> = line.chars().collect();
    let mut from = 0;
    while let Some(dollar) =
        (from..chars.len().saturating_sub(1)).find(|&i| chars[i] == '$' && chars[i + 1] == '{')
    {
        from = dollar + 1;
        let close = (dollar + 2..chars.len()).find(|&i| chars[i] == '}');
        let end = close.unwrap_or(chars.len());
        // The error is at the `${...}` (columns from 1): at the `$` up to just past the `}`.
        if col < dollar + 1 || col > end + 2 {
            continue;
        }
        let name: String = chars[dollar + 2..end].iter().take(64).collect();
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid || close.is_none() {
            return None;
        }
        let before: String = chars[..dollar].iter().collect();
        return Some(if before.trim_end().ends_with("env:") {
            format!(
                "`${{{name}}}` is shell syntax that YAML reads as a mapping: an `env:` source takes the variable's name alone, `env: {name}`"
            )
        } else {
            format!(
                "outpostctl does not expand `${{{name}}}`, and inside `{{ }}` or `[ ]` YAML reads its `{{` as a mapping: write the value itself, or read a secret with `{{ env: {name} }}`"
            )
        });
    }
    None
}

/// The innermost flow `[` or `{` opened before `line` (1-based) and not closed there, with
/// the line it is on; quoted text and comments left out.
fn unclosed_flow_before(text: &str, line: usize) -> Option<(usize, char)> {
    let mut open: Vec<(usize, char)> = Vec::new();
    for (i, l) in text.lines().enumerate().take(line.saturating_sub(1)) {
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for c in l.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                // A quote starts a scalar only where one may start; `#` after a space is a
                // comment (`https://a/#b` is not).
                None if matches!(c, '"' | '\'') && " [{,:".contains(prev) => quote = Some(c),
                None if c == '#' && prev.is_whitespace() => break,
                None if matches!(c, '[' | '{') => open.push((i + 1, c)),
                None if matches!(c, ']' | '}') => {
                    open.pop();
                }
                None => {}
            }
            prev = c;
        }
    }
    open.last().copied()
}

fn scan_error(span: Span, info: &str) -> YamlError {
    let mut e = YamlError::new(span, format!("invalid YAML: {info}"), "here");
    if info.contains("must be followed by a valid YAML whitespace") {
        e = e.hint("write a space after `:` (a tab or another character there is not accepted)");
    } else if info.contains("tab") {
        e = e.hint("YAML does not allow tabs for indentation; indent with spaces");
    } else if info.contains("recursion limit") {
        e = e.hint("the document nests too deeply; manifests are at most a few levels deep");
    } else if info.contains("mapping values are not allowed") {
        e = e.hint("a value that contains `: ` must be quoted; a key on a line of its own is indented like the keys beside it");
    } else if info.contains("simple key") {
        e = e.hint("a key must be followed by `:` on its line, and YAML allows at most 1,024 characters before it; shorten the key or finish the line with `:`");
    } else if info.contains("did not find expected key") || info.contains("block mapping") {
        e = e.hint("check the indentation of this line against the lines above it");
    } else if info.contains("flow mapping") || info.contains("expected ',' or '}'") {
        e = e.hint("a `{` is not closed: end it with `}`, its entries separated by `,`");
    } else if info.contains("flow sequence") || info.contains("expected ',' or ']'") {
        e = e.hint("a `[` is not closed: end it with `]`, its items separated by `,`");
    } else if info.contains("quoted scalar") {
        e = e.hint("a quoted value is not closed: end it with the same quote it starts with");
    } else if info.contains("expected node content") {
        e = e.hint("a value is missing here: write one (or close the `[` or `{` it is in)");
    } else if info.contains("unknown anchor") {
        e = e.hint(
            "an alias `*name` names an anchor `&name` set on a value above it in the same document",
        );
    }
    e
}

/// The pointer of the node about to start at `start`, from its parent on the stack.
fn child_pointer(stack: &[Frame], start: YSpan) -> Result<String, YamlError> {
    Ok(match stack.last() {
        None => String::new(),
        Some(Frame::Seq { items, pointer, .. }) => format!("{pointer}/{}", items.len()),
        Some(Frame::Map {
            pointer,
            pending_key,
            ..
        }) => match pending_key {
            Some((k, _, _)) => format!("{pointer}/{}", escape(k)),
            // The node starting here is a key: point at it, not at the mapping it is in.
            None => return Err(complex_key(Span::from_yaml(start))),
        },
    })
}

/// A mapping or sequence (or an alias to one) written where a key goes, at `span`.
fn complex_key(span: Span) -> YamlError {
    YamlError::new(
        span,
        "a mapping or sequence cannot be used as a key",
        "complex key",
    )
    .hint("keys are plain names; quote the key if it contains special characters")
}

/// Escapes a key for use in a JSON pointer (RFC 6901).
pub fn escape(key: &str) -> String {
    if key.contains(['~', '/']) {
        key.replace('~', "~0").replace('/', "~1")
    } else {
        key.to_string()
    }
}

/// Attaches a finished node (its value, span and node count) to its parent on the stack. A
/// duplicate key is added to `duplicates` and its value, when it comes, dropped.
fn attach(
    stack: &mut [Frame],
    positions: &mut HashMap<String, NodePos>,
    root: &mut Option<Value>,
    (value, yspan, nodes): (Value, YSpan, usize),
    duplicates: &mut Vec<YamlError>,
) -> Result<(), YamlError> {
    let span = Span::from_yaml(yspan);
    let record = !stack.last().is_some_and(Frame::drops_child);
    match stack.last_mut() {
        None => {
            positions.insert(
                String::new(),
                NodePos {
                    key: None,
                    value: span,
                },
            );
            *root = Some(value);
        }
        Some(Frame::Seq {
            items,
            pointer,
            nodes: n,
            ..
        }) => {
            if record {
                positions.insert(
                    format!("{pointer}/{}", items.len()),
                    NodePos {
                        key: None,
                        value: span,
                    },
                );
            }
            items.push(value);
            *n += nodes;
        }
        Some(Frame::Map {
            map,
            pointer,
            pending_key,
            key_spans,
            nodes: n,
            ..
        }) => match pending_key.take() {
            None => {
                let key = match value {
                    Value::String(s) => s,
                    Value::Null => "null".to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(complex_key(span)),
                };
                let duplicate = match key_spans.get(&key) {
                    Some(first) => {
                        if duplicates.len() < MAX_DUPLICATES {
                            let mut e = YamlError::new(
                                span,
                                format!("duplicate key `{key}`"),
                                "defined again here",
                            )
                            .hint("each key may appear once in a mapping; remove one of them (the other checks read the first)");
                            e.related =
                                Some((Span::from_yaml(*first), "first defined here".into()));
                            duplicates.push(e);
                        }
                        true
                    }
                    None => {
                        key_spans.insert(key.clone(), yspan);
                        false
                    }
                };
                *pending_key = Some((key, yspan, duplicate));
            }
            // The value of a duplicate key: dropped, the first one stays.
            Some((_, _, true)) => {}
            Some((key, kspan, false)) => {
                if record {
                    positions.insert(
                        format!("{pointer}/{}", escape(&key)),
                        NodePos {
                            key: Some(Span::from_yaml(kspan)),
                            value: span,
                        },
                    );
                }
                map.insert(key, value);
                *n += nodes;
            }
        },
    }
    Ok(())
}

fn check_tag(tag: Option<&Tag>, expected: &str, span: Span) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(t) if core_tag(t) == Some(expected) => Ok(()),
        Some(t) => Err(unsupported_tag(t, span)),
    }
}

/// The name of a YAML core schema tag (`str` for `!!str`, or its verbatim form
/// `!<tag:yaml.org,2002:str>`), None for any other tag.
fn core_tag(t: &Tag) -> Option<&str> {
    if t.is_yaml_core_schema() {
        Some(t.suffix.as_str())
    } else if t.handle.is_empty() || t.handle == "!" {
        t.suffix.strip_prefix("tag:yaml.org,2002:")
    } else {
        None
    }
}

/// A tag as it is written: `!!binary`, `!local`, `!<tag:example.com,2026:x>`.
fn tag_text(t: &Tag) -> String {
    if t.is_yaml_core_schema() {
        format!("!!{}", t.suffix)
    } else if t.handle == "!" {
        format!("!{}", t.suffix)
    } else if t.handle.is_empty() {
        format!("!<{}>", t.suffix)
    } else {
        format!("{}{}", t.handle, t.suffix)
    }
}

fn unsupported_tag(t: &Tag, span: Span) -> YamlError {
    YamlError::new(span, format!("unsupported YAML tag `{}`", tag_text(t)), "tag").hint(
        "manifests use plain YAML values; remove the tag (only !!str, !!int, !!float, !!bool, !!null are understood)",
    )
}

/// Resolves a scalar by the YAML 1.2 core schema: only plain scalars can be anything but a
/// string, and `yes`/`no`/`on`/`off` stay strings.
fn scalar(
    text: &str,
    style: ScalarStyle,
    tag: Option<&Tag>,
    span: Span,
) -> Result<Value, YamlError> {
    if let Some(t) = tag {
        // `!` alone (non-specific tag) forces a string.
        if (t.handle == "!" && t.suffix.is_empty()) || (t.handle.is_empty() && t.suffix == "!") {
            return Ok(Value::String(text.to_string()));
        }
        let Some(core) = core_tag(t) else {
            return Err(unsupported_tag(t, span));
        };
        let bad = |what: &str| {
            YamlError::new(
                span,
                // Not repeated: it may be a secret written in the wrong place (the snippet
                // shows it, masked then).
                format!("the tagged value is not a valid {what}"),
                "tagged value",
            )
        };
        return match core {
            "str" => Ok(Value::String(text.to_string())),
            "null" => Ok(Value::Null),
            "bool" => match plain(text) {
                v @ Value::Bool(_) => Ok(v),
                _ => Err(bad("boolean")),
            },
            "int" => match plain(text) {
                v @ Value::Number(_) if !text.contains(['.', 'e', 'E']) => Ok(v),
                _ => Err(bad("integer")),
            },
            "float" => match plain(text) {
                Value::Number(n) => Ok(Value::Number(
                    Number::from_f64(n.as_f64().unwrap_or(0.0)).unwrap_or(n),
                )),
                _ => Err(bad("number")),
            },
            _ => Err(unsupported_tag(t, span)),
        };
    }
    Ok(match style {
        ScalarStyle::Plain => plain(text),
        _ => Value::String(text.to_string()),
    })
}

fn plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return Value::String(text.to_string());
    }
    if let Some(n) = int(text) {
        return Value::Number(n);
    }
    if is_float(text)
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    // .inf / .nan have no JSON form; they stay strings and the schema says what was expected.
    Value::String(text.to_string())
}

fn int(text: &str) -> Option<Number> {
    let (neg, digits) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if let Some(oct) = text.strip_prefix("0o") {
        return u64::from_str_radix(oct, 8).ok().map(Number::from);
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok().map(Number::from);
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if neg {
        text.parse::<i64>().ok().map(Number::from)
    } else {
        digits.parse::<u64>().ok().map(Number::from)
    }
}

fn is_float(text: &str) -> bool {
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let b = text.trim_start_matches(['-', '+']).as_bytes();
    if text.len() - b.len() > 1 {
        return false;
    }
    let mut i = 0;
    let mut mantissa_digits = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
        mantissa_digits += 1;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
            mantissa_digits += 1;
        }
    }
    if mantissa_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn core_tags_in_either_form_and_others_named_as_written() {
        let d = one("a: !!int 5\nb: !<tag:yaml.org,2002:int> 6\nc: !!str 7\nd: ! 8\n");
        assert_eq!(d.value, json!({"a": 5, "b": 6, "c": "7", "d": "8"}));
        for (text, shown) in [
            ("a: !!binary aGk=\n", "`!!binary`"),
            ("a: !local x\n", "`!local`"),
            (
                "a: !<tag:example.com,2026:x> y\n",
                "`!<tag:example.com,2026:x>`",
            ),
        ] {
            let e = parse(text, Limits::default()).into_result().unwrap_err();
            assert!(e.message.contains(shown), "{text}: {}", e.message);
        }
    }

    fn one(text: &str) -> Document {
        let mut docs = parse(text, Limits::default())
            .into_result()
            .expect("parses");
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    #[test]
    fn yaml_1_2_scalars() {
        let d = one(
            "a: yes\nb: on\nc: true\nd: 0o17\ne: 012\nf: 1.5\ng: ~\nh: '1'\ni: 1e3\nj: .inf\nk: -3\n",
        );
        assert_eq!(
            d.value,
            json!({"a":"yes","b":"on","c":true,"d":15,"e":12,"f":1.5,"g":null,"h":"1","i":1000.0,"j":".inf","k":-3})
        );
    }

    #[test]
    fn positions_of_keys_and_values() {
        let d = one("outposts:\n  Edge:\n    type: proxy\n");
        let p = d.lookup("/outposts/Edge/type");
        assert_eq!(p.key.map(|s| s.start), Some(Pos { line: 3, col: 5 }));
        assert_eq!(p.value.start, Pos { line: 3, col: 11 });
        // a pointer below a leaf falls back to the leaf
        assert_eq!(d.lookup("/outposts/Edge/type/x").value.start.line, 3);
    }

    /// A key keeps its text as written: it names an outpost or an integration, and `1e3:`,
    /// `007:`, `0x10:` or `~:` read as numbers or null would rename it (`1000.0`, `7`, `16`,
    /// `null`); a duplicate is told by that text too.
    #[test]
    fn keys_keep_their_text() {
        let d = one("1e3: 1\n007: 2\n0x10: 3\n~: 4\ntrue: 5\n\"q\": 6\n!!int 12: 7\n");
        assert_eq!(
            d.value,
            json!({"1e3": 1, "007": 2, "0x10": 3, "~": 4, "true": 5, "q": 6, "12": 7})
        );
        let e = parse("007: 1\n007: 2\n", Limits::default())
            .into_result()
            .unwrap_err();
        assert_eq!(e.message, "duplicate key `007`");
        // `7` and `007` are two names.
        assert!(parse("7: 1\n007: 2\n", Limits::default()).errors.is_empty());
    }

    #[test]
    fn duplicate_keys_name_both_places() {
        let e = parse("a: 1\nb: 2\na: 3\n", Limits::default())
            .into_result()
            .unwrap_err();
        assert_eq!(e.message, "duplicate key `a`");
        assert_eq!(e.span.start, Pos { line: 3, col: 1 });
        assert_eq!(e.related.map(|r| r.0.start), Some(Pos { line: 1, col: 1 }));
    }

    /// A duplicate key does not stop the parse: every one is reported, the first value of
    /// each is kept with its positions (the dropped value's nodes record none), and the
    /// documents are there for the other checks.
    #[test]
    fn duplicate_keys_are_collected_and_the_first_value_kept() {
        let text = "a: 1\nb:\n  c: [x]\na: 2\nb:\n  c: [y, z]\n  d: 3\n---\nq: 1\nq: 2\n";
        let parsed = parse(text, Limits::default());
        let found: Vec<(String, u32)> = parsed
            .errors
            .iter()
            .map(|e| (e.message.clone(), e.span.start.line))
            .collect();
        assert_eq!(
            found,
            [
                ("duplicate key `a`".to_string(), 4),
                ("duplicate key `b`".to_string(), 5),
                ("duplicate key `q`".to_string(), 10),
            ]
        );
        assert_eq!(parsed.docs.len(), 2);
        let d = &parsed.docs[0];
        assert_eq!(d.value, json!({"a": 1, "b": {"c": ["x"]}}));
        assert_eq!(d.lookup("/b/c/0").value.start, Pos { line: 3, col: 7 });
        assert!(!d.positions.contains_key("/b/c/1"));
        assert!(!d.positions.contains_key("/b/d"));
        assert_eq!(parsed.docs[1].value, json!({"q": 1}));
        // An error that stops the parse comes after the duplicates found before it.
        let parsed = parse("a: 1\na: 2\nb: [\n", Limits::default());
        assert!(parsed.docs.is_empty());
        assert_eq!(parsed.errors.len(), 2);
        assert_eq!(parsed.errors[0].message, "duplicate key `a`");
    }

    #[test]
    fn a_complex_key_is_pointed_at_itself() {
        for (text, line, col) in [
            ("a: 1\n[x, y]: 2\n", 2, 1),
            ("outposts:\n  A: 1\n  ? { b: 1 }\n  : 2\n", 3, 5),
            ("a: { b: 1, [c]: 2 }\n", 1, 12),
            ("x: &l [1]\na: 1\n? *l\n: 2\n", 3, 3),
        ] {
            let e = parse(text, Limits::default()).into_result().unwrap_err();
            assert_eq!(e.message, "a mapping or sequence cannot be used as a key");
            assert_eq!(e.span.start, Pos { line, col }, "{text:?}");
        }
    }

    /// An alias whose anchor the YAML reader knows but this document does not: one of an
    /// earlier document (anchors do not reach past `---`), or the value the alias is in.
    #[test]
    fn aliases_to_anchors_out_of_reach_say_why() {
        let e = parse("a: &x 1\n---\nb: *x\n", Limits::default())
            .into_result()
            .unwrap_err();
        assert_eq!(
            e.message,
            "alias `*x` refers to an anchor of an earlier document"
        );
        assert_eq!(e.span.start, Pos { line: 3, col: 4 });
        assert!(e.hint.unwrap_or_default().contains("`&x`"));
        for text in ["a: &x [*x]\n", "a: &x\n  b: *x\n"] {
            let e = parse(text, Limits::default()).into_result().unwrap_err();
            assert_eq!(
                e.message, "alias inside the value its anchor is on",
                "{text:?}"
            );
        }
    }

    #[test]
    fn alias_bomb_is_bounded() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for c in 'b'..='j' {
            text.push_str(&format!(
                "{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = c;
        }
        let e = parse(&text, Limits::default()).into_result().unwrap_err();
        assert!(e.message.contains("aliases expand"), "{}", e.message);
    }

    #[test]
    fn depth_is_bounded() {
        // Flow nesting is stopped by the scanner, block nesting by our own limit.
        let e = parse(&"[".repeat(100_000), Limits::default())
            .into_result()
            .unwrap_err();
        assert!(
            e.hint.unwrap_or_default().contains("nests too deeply"),
            "{}",
            e.message
        );
        let block: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let e = parse(&block, Limits::default()).into_result().unwrap_err();
        assert!(
            e.message.contains("nesting deeper than 64"),
            "{}",
            e.message
        );
    }

    #[test]
    fn multi_document() {
        let docs = parse("a: 1\n---\nb: 2\n---\n", Limits::default())
            .into_result()
            .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].lookup("/b").value.start.line, 3);
    }

    /// Every tab error points at the tab itself, as an editor does.
    #[test]
    fn tab_errors_point_at_the_tab() {
        for (text, line, col) in [
            ("a:\n\tb: 1\n", 2, 1),
            ("a: 1\n\tb: 2\n", 2, 1),
            ("version:\t1\n", 1, 9),
            ("outposts:\n  A:\n    type: proxy\n\ttype: ldap\n", 4, 1),
            ("a:\n  b: x\n\tc: 1\n", 3, 1),
        ] {
            let e = parse(text, Limits::default()).into_result().unwrap_err();
            assert_eq!(e.span.start, Pos { line, col }, "{text:?}: {}", e.message);
        }
    }

    /// `${NAME}` in a flow mapping (envsubst style) does not parse: the hint names the
    /// variable as an `env:` source takes it, not an unclosed `{`.
    #[test]
    fn shell_variables_are_explained() {
        let e = parse("token: { env: ${AK_TOKEN} }\n", Limits::default())
            .into_result()
            .unwrap_err();
        let hint = e.hint.unwrap_or_default();
        assert!(hint.contains("`env: AK_TOKEN`"), "{hint}");
        assert!(!hint.contains("not closed"), "{hint}");
        let e = parse("config: { authentik_host: ${HOST} }\n", Limits::default())
            .into_result()
            .unwrap_err();
        assert!(
            e.hint
                .unwrap_or_default()
                .contains("does not expand `${HOST}`"),
            "{}",
            e.message
        );
        // A `{` that is not closed still says so.
        let e = parse("token: { env: AK\n", Limits::default())
            .into_result()
            .unwrap_err();
        assert!(e.hint.unwrap_or_default().contains("not closed"));
    }

    #[test]
    fn tabs_are_explained() {
        let e = parse("a:\n\tb: 1\n", Limits::default())
            .into_result()
            .unwrap_err();
        assert!(e.hint.unwrap_or_default().contains("tabs"));
    }

    /// Where an unclosed flow collection began: brackets in quotes, in comments and closed
    /// ones do not count; an apostrophe inside a word does not start a quote.
    #[test]
    fn an_unclosed_flow_collection_is_found_above() {
        let text = "a: [1, 2]\nb: \"[\" # [\nc: don't [x, {y: 1}\nd: e\n";
        assert_eq!(unclosed_flow_before(text, 4), Some((3, '[')));
        assert_eq!(unclosed_flow_before(text, 3), None);
        assert_eq!(
            unclosed_flow_before("a: {b: [1]\nc: d\n", 2),
            Some((1, '{'))
        );
    }
}
