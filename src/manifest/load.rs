//! Finding and reading manifest files.
//!
//! Paths are read as manifest.md says: files as given, directories recursively in sorted
//! order, `*.yaml` and `*.yml` only, hidden entries (which covers Kubernetes' `..data`
//! swaps) skipped. Every file becomes its documents with positions, or a diagnostic.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::yaml::{self, Limits, NodePos, Span};
use crate::diagnostics::{Diagnostic, Location, SourceFile};

/// The largest manifest file read. Real manifests are kilobytes; this bounds memory and time
/// against a wrong path or a hostile file.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Where a node of a manifest stands: the file, the document's position map and the node's
/// JSON pointer. Semantic checks use it to point at the exact key or value.
#[derive(Debug, Clone)]
pub struct Origin {
    pub file: Arc<SourceFile>,
    pub positions: Arc<HashMap<String, NodePos>>,
    pub doc_span: Span,
    pub pointer: String,
}

impl Origin {
    fn node(&self, pointer: &str) -> NodePos {
        yaml::lookup(&self.positions, self.doc_span, pointer)
    }

    /// This node, or a descendant when `sub` is a relative pointer such as `/config/x`.
    pub fn child(&self, sub: &str) -> Origin {
        Origin {
            pointer: format!("{}{sub}", self.pointer),
            ..self.clone()
        }
    }

    /// The node's key (`name:`), falling back to its value.
    pub fn key(&self) -> Location {
        let n = self.node(&self.pointer);
        Location::new(&self.file, n.key.unwrap_or(n.value))
    }

    /// The node's value.
    pub fn value(&self) -> Location {
        Location::new(&self.file, self.node(&self.pointer).value)
    }

    /// Whether the node itself is present in the document (not just an ancestor).
    pub fn exists(&self) -> bool {
        self.positions.contains_key(&self.pointer)
    }

    /// The directory relative paths in this file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.file
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// One YAML document of one file.
#[derive(Debug, Clone)]
pub struct LoadedDoc {
    pub value: serde_json::Value,
    pub origin: Origin,
}

/// Everything read from the given paths.
#[derive(Debug, Default)]
pub struct Loaded {
    pub files: Vec<Arc<SourceFile>>,
    pub docs: Vec<LoadedDoc>,
    pub diagnostics: Vec<Diagnostic>,
    /// Manifest files looked at, each once: those that could not be read or parsed included.
    pub file_count: usize,
}

/// Reads every manifest under `paths`.
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut out = Loaded::default();
    let mut seen = HashSet::new();
    // A path given on the command line that is not a manifest file or a directory.
    let unreadable = |path: &Path, why: &str| {
        Diagnostic::error(
            "unreadable-path",
            format!("cannot read `{}`: {why}", path.display()),
        )
        .hint("give the path of a manifest file or of a directory of them")
    };
    for path in paths {
        let before = out.files.len() + out.diagnostics.len();
        match std::fs::metadata(path) {
            Err(e) => out
                .diagnostics
                .push(unreadable(path, &io_reason(&e)).transient(&e)),
            Ok(m) if m.is_dir() => {
                let mut files = Vec::new();
                walk(
                    path,
                    &mut files,
                    &mut out.diagnostics,
                    &mut HashSet::new(),
                    0,
                );
                files.sort();
                for f in files {
                    read_file(&f, &mut out, &mut seen);
                }
                if out.files.len() + out.diagnostics.len() == before {
                    out.diagnostics.push(
                        Diagnostic::error(
                            "no-manifests",
                            format!("no manifest files (*.yaml, *.yml) in `{}`", path.display()),
                        )
                        .hint("point outpostctl at the directory that holds your manifests"),
                    );
                }
            }
            Ok(m) if m.is_file() => read_file(path, &mut out, &mut seen),
            // A FIFO would block the run, `/dev/zero` would never end.
            Ok(_) => out
                .diagnostics
                .push(unreadable(path, "not a regular file or directory")),
        }
    }
    out
}

pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::NotADirectory => "a part of the path is a file, not a directory".into(),
        _ => e.to_string(),
    }
}

/// What to do about a file or directory that cannot be read for `e`.
fn unreadable_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "outpostctl cannot read it as the user it runs as: make it readable to that user (`chmod`, `chown`), or run outpostctl as one who may"
        }
        std::io::ErrorKind::NotFound => "it went away while the manifests were read: run again",
        std::io::ErrorKind::NotADirectory => "check the path: a part of it names a file",
        _ => "the system cannot read it now: check the disk or the mount, then run again",
    }
}

/// How many directory levels below a `PATH` are read.
const MAX_DEPTH: usize = 32;

fn walk(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    diags: &mut Vec<Diagnostic>,
    visited: &mut HashSet<PathBuf>,
    depth: usize,
) {
    // Symlinked directories are followed, once each, and not without end.
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if depth > MAX_DEPTH {
        // Not read, and said: manifests in it would count as gone (their outposts removed).
        diags.push(
            Diagnostic::error(
                "too-deep",
                format!(
                    "directory `{}` is more than {MAX_DEPTH} levels deep: it is not read",
                    dir.display()
                ),
            )
            .hint("give outpostctl a path nearer the manifests, or move them up"),
        );
        return;
    }
    if !visited.insert(canonical) {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            diags.push(
                Diagnostic::error(
                    "unreadable-path",
                    format!(
                        "cannot read directory `{}`: {}",
                        dir.display(),
                        io_reason(&e)
                    ),
                )
                .hint(unreadable_hint(&e))
                .transient(&e),
            );
            return;
        }
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `./a.yaml` reads better as `a.yaml`.
        let path = path
            .strip_prefix(".")
            .map(Path::to_path_buf)
            .unwrap_or(path);
        // metadata() follows symlinks: a link to a manifest counts as a manifest.
        let manifest_name = name.ends_with(".yaml") || name.ends_with(".yml");
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, files, diags, visited, depth + 1),
            Ok(m) if m.is_file() && manifest_name => files.push(path),
            // A manifest that cannot be read (a dangling symlink) must not vanish silently:
            // its outposts would be planned for removal.
            Err(e) if manifest_name => diags.push(
                Diagnostic::error(
                    "unreadable-path",
                    format!("cannot read `{}`: {}", path.display(), io_reason(&e)),
                )
                .hint(if e.kind() == std::io::ErrorKind::NotFound {
                    "a dangling symlink? fix or remove it"
                } else {
                    "a symlink loop, or a file the system cannot read now? fix or remove it"
                })
                .transient(&e),
            ),
            // Nor one that is no regular file (a FIFO would block the run, a device never
            // end): it is not read, and said.
            Ok(_) if manifest_name => diags.push(
                Diagnostic::error(
                    "unreadable-path",
                    format!("cannot read `{}`: not a regular file", path.display()),
                )
                .hint("manifests are regular files: replace it with one, or remove it"),
            ),
            _ => {}
        }
    }
}

/// The position just past the end of `f`'s text (where a bad byte that ended it stood),
/// counting lines as the YAML reader does (`\n`, `\r\n` or a lone `\r`).
fn end_of(f: &SourceFile) -> Span {
    let line = f.line_of(f.text.len());
    let start = f.line_range(line).0;
    let col = f.text.get(start..).map_or(0, |l| l.chars().count());
    Span::at(line as u32 + 1, col as u32 + 1)
}

fn read_file(path: &Path, out: &mut Loaded, seen: &mut HashSet<PathBuf>) {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if !seen.insert(canonical) {
        return;
    }
    out.file_count += 1;
    // What is shown of a file that is not text goes through the same masking as one that does
    // not parse.
    let whole_file =
        |text: &str| mask_secret_lines(&SourceFile::new(path.to_path_buf(), text.to_string()));
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > MAX_FILE_BYTES {
        let f = whole_file("");
        out.diagnostics.push(
            Diagnostic::error(
                "file-too-large",
                format!(
                    "file is {size} bytes; manifests are limited to {} MiB ({MAX_FILE_BYTES} bytes)",
                    MAX_FILE_BYTES / 1048576
                ),
            )
            .at(Location::new(&f, Span::at(1, 1)))
            .hint("is this the right file? split large manifest sets over several files"),
        );
        return;
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            out.diagnostics.push(
                Diagnostic::error(
                    "unreadable-path",
                    format!("cannot read `{}`: {}", path.display(), io_reason(&e)),
                )
                .hint(unreadable_hint(&e))
                .transient(&e),
            );
            return;
        }
    };
    // A NUL byte first: a binary file is said to be one, whatever bytes come before it.
    if let Some(i) = bytes.iter().position(|b| *b == 0) {
        let before = String::from_utf8_lossy(&bytes[..i]);
        let before = before.strip_prefix('\u{feff}').unwrap_or(&before);
        let f = whole_file(before);
        out.diagnostics.push(
            Diagnostic::error(
                "binary-file",
                "file contains a NUL byte: it is not a text file",
            )
            .at(Location::new(&f, end_of(&f)))
            .hint("remove the file, or point outpostctl at the manifests only"),
        );
        return;
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let prefix = String::from_utf8_lossy(valid).into_owned();
            let f = whole_file(&prefix);
            out.diagnostics.push(
                Diagnostic::error("not-utf8", "file is not UTF-8 text")
                    .at(Location::new(&f, end_of(&f)))
                    .label("invalid byte here")
                    .hint("manifests are UTF-8 YAML; is this a binary file, or saved in another encoding?"),
            );
            return;
        }
    };
    let text = text
        .strip_prefix('\u{feff}')
        .map(str::to_string)
        .unwrap_or(text);
    let file = SourceFile::new(path.to_path_buf(), text);
    let parsed = yaml::parse(&file.text, Limits::default());
    // A secret written inline (refused by validation) is not shown in any snippet: found by
    // its place in the documents, or in a file that does not parse, by its line's look. The
    // value of a duplicate key is not in the documents: a file with one is masked both ways.
    let file = mask_secrets(&file, &parsed.docs);
    let file = if parsed.errors.is_empty() {
        file
    } else {
        mask_secret_lines(&file)
    };
    out.files.push(Arc::clone(&file));
    for e in parsed.errors.iter().cloned() {
        let mut d = Diagnostic::error("yaml", e.message)
            .at(Location::new(&file, e.span))
            .label(e.label)
            .maybe_hint(e.hint);
        if let Some((span, label)) = e.related {
            d = d.related(Location::new(&file, span), label);
        }
        out.diagnostics.push(d);
    }
    if parsed.docs.is_empty() && parsed.errors.is_empty() {
        out.diagnostics.push(
            Diagnostic::error("empty-file", "file holds no YAML document")
                .at(Location::new(&file, Span::at(1, 1)))
                .hint("start the file with `version: 1`, or remove it"),
        );
    }
    // Documents with duplicate keys are checked too (with the first value of each), so that
    // every error is reported at once; the loader's errors keep the set from being used.
    for doc in parsed.docs {
        out.docs.push(LoadedDoc {
            value: doc.value,
            origin: Origin {
                file: Arc::clone(&file),
                positions: Arc::new(doc.positions),
                doc_span: doc.span,
                pointer: String::new(),
            },
        });
    }
}

/// Whether the value at `pointer` is a secret when written inline: one under a `token` or
/// `key` key (an outpost's token, a keypair's key, or either written in the wrong place), or
/// under a source of theirs other than `env` and `file`. An entry merely *named* `token` or
/// `key` (`outposts: { token: ... }`) keeps its settings shown, as do labels named `key`.
fn secret_pointer(pointer: &str) -> bool {
    // Called for every node of every file: no allocation.
    let mut back = pointer.rsplit('/');
    let (Some(last), parent) = (back.next(), back.next()) else {
        return false;
    };
    (secret_key(last) && parent != Some("docker_labels")) || inside_secret(pointer)
}

/// Where the password of `user:password@` is in a URL as written in the file (quoted, maybe
/// with escapes such as `\"` or `\x52` that the parsed password does not have): from the
/// first `:` after the user to the authority's last `@`.
fn written_password(written: &str) -> Option<(usize, usize)> {
    let start = written.find("://")? + 3;
    let rest = &written[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some((start + colon + 1, start + at))
}

/// The password of a URL's `user:password@`, if it has one.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo
        .split_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
}

/// Whether a variable name or file name looks like a token pasted where the name goes
/// (`token: { env: <the token> }`): 32 characters or more, letters and digits only, with
/// lowercase, uppercase and digits all in it, as authentik's tokens are and names are not.
pub(crate) fn looks_like_a_token(name: &str) -> bool {
    name.len() >= 32
        && name.chars().all(|c| c.is_ascii_alphanumeric())
        && name.chars().any(|c| c.is_ascii_lowercase())
        && name.chars().any(|c| c.is_ascii_uppercase())
        && name.chars().any(|c| c.is_ascii_digit())
}

/// Whether `key` names a secret: `token` or `key` as the manifest spells them, or as a
/// slip of the hand would (`Token`, `KEY`, `tokens`, `token_value`, `authentik_token`,
/// `secret`, `password`, and typos validation answers with "did you mean `token`?":
/// `tokne`, `tken`, `kye`): a value under a misspelt key is masked all the same. No key of
/// the schema is that close.
fn secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    ["token", "key", "secret", "password", "private_key"].contains(&lower.as_str())
        || lower.starts_with("token")
        || lower.ends_with("token")
        // A distance is at least the difference of the lengths: most keys are not compared
        // (this runs for every node of every manifest, to find secrets to mask).
        || ((3..=7).contains(&lower.len()) && strsim::damerau_levenshtein(&lower, "token") <= 2)
        || ((2..=4).contains(&lower.len()) && strsim::damerau_levenshtein(&lower, "key") <= 1)
}

/// Whether `pointer` is the `env` or `file` of a secret's source (`/outposts/A/token/env`).
fn reference_of_a_secret(pointer: &str) -> bool {
    let mut back = pointer.rsplit('/');
    matches!(back.next(), Some("env" | "file")) && back.next().is_some_and(secret_key)
}

/// Whether the key at `pointer` may be a secret itself: a key inside a secret's source other
/// than `env`, `file` and `value` (`token: { ak-s3cr3t }`, what `envsubst` makes of
/// `token: { ${AK_TOKEN} }`).
pub(crate) fn secret_as_key(pointer: &str) -> bool {
    inside_secret(pointer) && !pointer.ends_with("/value")
}

/// Whether the node at `pointer` is inside a secret's source other than its `env` or `file`
/// (`token: { value: ... }`, or `token: { ak-s3cr3t }`, whose key is the secret itself).
fn inside_secret(pointer: &str) -> bool {
    let mut back = pointer.rsplit('/');
    let (Some(last), parent, grandparent) = (back.next(), back.next(), back.next()) else {
        return false;
    };
    let entries = |k: Option<&str>| matches!(k, Some("outposts" | "keypairs" | "integrations"));
    parent.is_some_and(secret_key) && !entries(grandparent) && !matches!(last, "env" | "file")
}

/// `file` with every secret scalar written inline in `docs` masked by characters of the same
/// width in bytes (so that every line, column and offset stays); `file` itself when none is.
fn mask_secrets(file: &Arc<SourceFile>, docs: &[yaml::Document]) -> Arc<SourceFile> {
    let mut ranges = Vec::new();
    for doc in docs {
        for (pointer, at) in &doc.positions {
            // The pointer's shape first: looking the value up costs a walk of the document.
            let secret = (secret_pointer(pointer)
                && doc
                    .value
                    .pointer(pointer)
                    .is_some_and(|v| v.is_string() || v.is_number()))
                || (reference_of_a_secret(pointer)
                    && doc
                        .value
                        .pointer(pointer)
                        .and_then(|v| v.as_str())
                        .is_some_and(looks_like_a_token));
            if secret {
                let span = at.value;
                ranges.push((
                    file.offset(span.start.line, span.start.col),
                    file.offset(span.end.line, span.end.col),
                ));
            }
            // A password in an engine URL (`ssh://user:pw@host`, refused by validation): the
            // password only, where it is written.
            if pointer.ends_with("/url")
                && let Some(url) = doc.value.pointer(pointer).and_then(|v| v.as_str())
                && url_password(url).is_some()
            {
                let (from, to) = (
                    file.offset(at.value.start.line, at.value.start.col),
                    file.offset(at.value.end.line, at.value.end.col),
                );
                let written = file.text.get(from..to).unwrap_or_default();
                match written_password(written) {
                    Some((a, b)) => ranges.push((from + a, from + b)),
                    // Not found as written (it cannot be, as the URL parsed): the whole URL.
                    None => ranges.push((from, to)),
                }
            }
            // A key inside a secret's source may be the secret itself: `token: { ak-s3cr3t }`.
            if let Some(span) = at.key.filter(|_| secret_as_key(pointer)) {
                ranges.push((
                    file.offset(span.start.line, span.start.col),
                    file.offset(span.end.line, span.end.col),
                ));
            }
        }
    }
    masked(file, &ranges)
}

/// For a file that does not parse (no documents to find secrets in): every value written
/// after a `token:` or `key:` key on a line (a block key, a list item, a key in a `{ ... }`
/// mapping, quoted or not), and the lines of a block or multi-line value under a block key,
/// masked as `mask_secrets` does. A `{ env: ... }` or `{ file: ... }` reference, and
/// `env:`/`file:` lines under the key, are shown. A line indented with a tab counts as deeper
/// than the key above it (tabs are a likely reason the file does not parse).
fn mask_secret_lines(file: &Arc<SourceFile>) -> Arc<SourceFile> {
    let mut ranges = Vec::new();
    // The indentation of a block `token:`/`key:` whose value may go on below, and whether it
    // was written bare (`token:`) with nothing below it yet.
    let mut under: Option<(usize, bool)> = None;
    let mut offset = 0;
    for line in file.text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        let start = offset;
        offset += line.len();
        let body = content.trim_start_matches([' ', '\t']);
        let indent = content.len() - body.len();
        if let Some((key_indent, bare)) = under {
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            if indent > key_indent || content[..indent].contains('\t') {
                if !(body.starts_with("env:") || body.starts_with("file:")) {
                    ranges.push((start + indent, start + content.len()));
                }
                under = Some((key_indent, false));
                continue;
            }
            under = None;
            // The line right below a bare `token:`, not indented under it (a likely reason the
            // file does not parse): its value all the same, unless it is a key of its own.
            if bare && !looks_like_a_key(body) {
                ranges.push((start + indent, start + content.len()));
                continue;
            }
        }
        let mut from = 0;
        while let Some((key_at, value_at)) = secret_key_at(content, from) {
            from = value_at.max(key_at + 1);
            let value = &content[value_at..];
            let in_flow = content[..key_at].contains(['{', '[']);
            if value
                .strip_prefix('{')
                .map(str::trim_start)
                .is_some_and(|v| v.starts_with("env:") || v.starts_with("file:"))
            {
                continue;
            }
            if value.is_empty() || value.starts_with('#') || value.starts_with(['|', '>']) {
                let bare = value.is_empty() || value.starts_with('#');
                under = (!in_flow).then_some((key_at, bare));
                continue;
            }
            let end = match value.chars().next() {
                Some(q @ ('"' | '\'')) => value[1..].find(q).map_or(value.len(), |i| i + 2),
                _ if in_flow => value.find([',', '}', ']']).unwrap_or(value.len()),
                _ => value.find(" #").unwrap_or(value.len()),
            };
            ranges.push((start + value_at, start + value_at + end));
            if !in_flow {
                // A plain or quoted value may go on, more indented, on the lines below.
                under = Some((key_at, false));
            }
            from = value_at + end;
        }
    }
    masked(file, &ranges)
}

/// Whether a line's text (indentation removed) is a mapping key of its own (`name:`,
/// `- name: x`, `"quoted name": x`), not a value.
fn looks_like_a_key(body: &str) -> bool {
    let body = body.strip_prefix("- ").unwrap_or(body).trim_start();
    let key_end = match body.chars().next() {
        Some(q @ ('"' | '\'')) => body[1..].find(q).map(|i| i + 2),
        _ => body.find(':'),
    };
    key_end.is_some_and(|end| {
        body[end..]
            .strip_prefix(':')
            .is_some_and(|v| v.is_empty() || v.starts_with([' ', '\t']))
    })
}

/// In `line` from byte `from`: the next key that names a secret (`token`, `key`, or a slip of
/// the hand for one: `secret_key`) written as a key (at the line's start, after a list's `-`,
/// a `{`, `[` or `,`, maybe quoted, then `:` and a space or the line's end), as (where the
/// key starts, where its value starts).
fn secret_key_at(line: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = line.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        let rest = &line[i..];
        let quote = rest.starts_with(['"', '\'']) as usize;
        let before = line[..i].trim_end_matches([' ', '\t']);
        // A list item's `-` stands alone (`foo-key:` is another key).
        let item = before
            .strip_suffix('-')
            .is_some_and(|b| b.is_empty() || b.ends_with([' ', '\t']));
        let starts_key = before.is_empty() || before.ends_with(['{', '[', ',']) || item;
        let name_len = rest[quote..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(rest.len() - quote);
        let name = &rest[quote..quote + name_len];
        if starts_key && !name.is_empty() && secret_key(name) {
            let after = &rest[quote + name_len..];
            let after = if quote == 1 {
                after.strip_prefix(['"', '\'']).unwrap_or("\u{0}")
            } else {
                after
            };
            let after_colon = after.trim_start_matches([' ', '\t']).strip_prefix(':');
            if let Some(v) = after_colon.filter(|v| v.is_empty() || v.starts_with([' ', '\t'])) {
                let value = v.trim_start_matches([' ', '\t']);
                return Some((i, line.len() - value.len()));
            }
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    None
}

/// `file` with the bytes in `ranges` (but whitespace) replaced by characters of the same width
/// in bytes; `file` itself when there are none.
fn masked(file: &Arc<SourceFile>, ranges: &[(usize, usize)]) -> Arc<SourceFile> {
    if ranges.is_empty() {
        return Arc::clone(file);
    }
    let mut text = String::with_capacity(file.text.len());
    for (i, c) in file.text.char_indices() {
        let masked = !c.is_whitespace() && ranges.iter().any(|(a, b)| (*a..*b).contains(&i));
        text.push(if !masked {
            c
        } else {
            match c.len_utf8() {
                1 => '*',
                2 => '\u{b7}',
                3 => '\u{2022}',
                _ => '\u{1d7ce}',
            }
        });
    }
    SourceFile::new(file.path.clone(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory below the depth that is read is an error naming it, not a silent skip (its
    /// manifests would count as gone); one at that depth is read.
    #[test]
    fn a_directory_too_deep_is_an_error_not_a_skip() {
        let root = tempfile::tempdir().expect("temp dir");
        let mut dir = root.path().to_path_buf();
        for _ in 0..MAX_DEPTH {
            dir.push("d");
        }
        std::fs::create_dir_all(&dir).expect("deep dirs");
        std::fs::write(dir.join("read.yaml"), "version: 1\n").expect("manifest");
        let loaded = load(&[root.path().to_path_buf()]);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        assert_eq!(loaded.file_count, 1);

        let deeper = dir.join("d");
        std::fs::create_dir(&deeper).expect("deeper");
        std::fs::write(deeper.join("lost.yaml"), "version: 1\n").expect("manifest");
        let loaded = load(&[root.path().to_path_buf()]);
        let codes: Vec<&str> = loaded.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(codes, ["too-deep"], "{:?}", loaded.diagnostics);
        assert!(
            loaded.diagnostics[0]
                .message
                .contains(&format!("`{}`", deeper.display())),
            "{}",
            loaded.diagnostics[0].message
        );
    }

    #[test]
    fn secrets_are_masked_by_the_look_of_their_lines_in_a_file_that_does_not_parse() {
        let text = "outposts:\n  A:\n    token: ak-sekrit # note\n    \"token\": 'q'\n    \
             token: { env: AK_A }\n  - key: abc\n  k:\n    key: |\n      -----BEGIN-----\n\n      \
             line2\n    certificate: c\n    token:\n      file: t\n      value: v2\n    \
             host_key: ssh-ed25519 AAAA\n    tokens: x\n  B: { type: ldap, token: flow-sekrit }\n  \
             C: { token: { env: AK_C } }\n    foo-key: shown\n    token: \"a #b\"\n  k2:\n    key: |\n\t\
             tabbed-line\n    Token: capital\n";
        let file = SourceFile::new(PathBuf::from("set.yaml"), text.to_string());
        let out = mask_secret_lines(&file);
        assert_eq!(
            out.text,
            "outposts:\n  A:\n    token: ********* # note\n    \"token\": ***\n    \
             token: { env: AK_A }\n  - key: ***\n  k:\n    key: |\n      ***************\n\n      \
             *****\n    certificate: c\n    token:\n      file: t\n      ****** **\n    \
             host_key: ssh-ed25519 AAAA\n    tokens: *\n  B: { type: ldap, token: *********** }\n  \
             C: { token: { env: AK_C } }\n    foo-key: shown\n    token: ** ***\n  k2:\n    key: |\n\t\
             ***********\n    Token: *******\n"
        );
        assert_eq!(out.text.len(), text.len(), "offsets kept");
    }

    /// Keys that name a secret the way a slip of the hand does, and a bare `token:` whose
    /// value went on the next line without being indented under it: masked in a file that
    /// does not parse as in one that does; keys of their own below a bare `token:` are shown.
    #[test]
    fn misspelt_and_misplaced_secrets_are_masked_in_a_file_that_does_not_parse() {
        let text = "a:\n  tokne: s1\n  password: s2\n  private_key: s3\n  secret: s4\n  \
             kye: s5\n  type: shown\n  token:\n  s6-under\n  token:\n  integration: shown\n  \
             token:\ns7\n- token:\n  - s8\n";
        let file = SourceFile::new(PathBuf::from("set.yaml"), text.to_string());
        let out = mask_secret_lines(&file);
        assert_eq!(
            out.text,
            "a:\n  tokne: **\n  password: **\n  private_key: **\n  secret: **\n  \
             kye: **\n  type: shown\n  token:\n  ********\n  token:\n  integration: shown\n  \
             token:\n**\n- token:\n  * **\n"
        );
        for key in [
            "tokne",
            "toekn",
            "tocken",
            "tken",
            "oken",
            "tooken",
            "kye",
            "Kei",
            "AUTHENTIK_TOKEN",
            "authentik_token",
        ] {
            assert!(secret_key(key), "{key}");
        }
        for key in [
            "type",
            "uuid",
            "env",
            "file",
            "value",
            "url",
            "host_key",
            "ports",
            "config",
            "keypairs",
            "integration",
            "integrations",
            "local",
            "ssh",
            "pull",
            "version",
        ] {
            assert!(!secret_key(key), "{key}");
        }
    }

    /// A token pasted where a variable's or file's name goes looks like one; names do not.
    #[test]
    fn tokens_pasted_as_names_are_told_from_names() {
        assert!(looks_like_a_token("Qx7kP2mZ9vL4nR8tY3wB6cD1fG5hJ0sA"));
        for name in [
            "AK_EDGE_PROXY_TOKEN",
            "AKEDGEPROXYTOKEN0123456789ABCDEFGHIJ",
            "tokens/edge.token",
            "5c5e0e3c4d4f4b6c9a0e1f2a3b4c5d6e",
            "Qx7kP2mZ9vL4nR8tY3wB6cD1fG5hJ0s",
        ] {
            assert!(!looks_like_a_token(name), "{name}");
        }
    }

    /// An engine URL's password is masked where it is written, escapes and all.
    #[test]
    fn a_url_password_is_found_as_written() {
        for (written, password) in [
            ("\"https://deploy:SEK\\\"RIT@edge:2376\"", "SEK\\\"RIT"),
            ("\"ssh://deploy:SEK\\x52IT@edge\"", "SEK\\x52IT"),
            ("'ssh://u:it''s@h/path@x'", "it''s"),
            ("ssh://u:p@h", "p"),
        ] {
            let (a, b) = written_password(written).unwrap_or_else(|| panic!("{written}"));
            assert_eq!(&written[a..b], password, "{written}");
        }
        assert_eq!(written_password("ssh://u@h"), None);
    }

    #[test]
    fn secret_pointers_are_any_token_or_key_and_their_inline_sources() {
        for p in [
            "/outposts/A/token",
            "/outposts/token",
            "/defaults/token",
            "/keypairs/k/key",
            "/outposts/A/token/value",
            "/outposts/token",
            // Misspelt, or the secret written as a key.
            "/outposts/A/Token",
            "/outposts/A/TOKEN",
            "/outposts/A/tokens",
            "/keypairs/k/Key",
            "/outposts/A/password",
            "/outposts/A/token/ak-s3cr3t",
        ] {
            assert!(secret_pointer(p), "{p}");
        }
        for p in [
            "",
            "/outposts/A/token/env",
            "/keypairs/k/key/file",
            "/integrations/x/ssh/host_key",
            "/keypairs/k/certificate",
            // Entries named `token` or `key`, and a label named `key`.
            "/outposts/token/integration",
            "/keypairs/key/certificate",
            "/outposts/A/config/docker_labels/key",
        ] {
            assert!(!secret_pointer(p), "{p}");
        }
    }
}
