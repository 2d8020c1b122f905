//! Editor support, proven with a real editor server: yaml-language-server (the server behind
//! VS Code's YAML extension and most other editors' YAML support) is driven over LSP stdio and
//! must complete keys and enum values from our schema, show our descriptions on hover and flag
//! mistakes, with the schema found through the `# yaml-language-server: $schema=...` modeline
//! exactly as the examples use it.
//!
//! Needs Node (`node` on PATH, or `$NODE`) and `tests/editor/node_modules` (installed by
//! `scripts/test-deps.sh`); without them the tests fail rather than skip. Test documents are
//! written to `target/editor-test/`, two directories below the repository like the examples.
//!
//! Known limit of yaml-language-server 1.25, not checked here: a modeline covers only the
//! YAML document it is in (each `---` document needs its own). Hovering a key shows the key's
//! own description, also for one whose value is one of our enums (`type`, `pull`,
//! `log_level`) or another type of the schema's `$defs`: the generated schema leaves out the
//! description of a type that only described keys use, which an optional key (`anyOf [T,
//! null]`) would otherwise show instead of its own.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Longest wait for any one answer of the server (its start included).
const WAIT: Duration = Duration::from_secs(20);
/// The modeline of the examples, relative to a file two directories below the repository.
const MODELINE: &str = "# yaml-language-server: $schema=../../schemas/outpostctl.schema.json";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema() -> Value {
    let text = std::fs::read_to_string(root().join("schemas/outpostctl.schema.json"))
        .expect("read schemas/outpostctl.schema.json");
    serde_json::from_str(&text).expect("schemas/outpostctl.schema.json is JSON")
}

/// A `file://` URI for an absolute path.
fn file_uri(path: &Path) -> String {
    let mut uri = String::from("file://");
    for b in path.to_str().expect("UTF-8 path").bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

/// Where a test document lives: `target/editor-test/<name>`, two directories below the
/// repository like the examples, so the examples' relative modeline works unchanged. The file
/// is written too, though the server only sees what `didOpen` sends.
fn test_doc(name: &str, text: &str) -> PathBuf {
    let dir = root().join("target/editor-test");
    std::fs::create_dir_all(&dir).expect("create target/editor-test");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test document");
    path
}

/// Cursor position of the first `|` in `marked`, and the text without it.
fn cursor(marked: &str) -> (String, u32, u32) {
    let at = marked.find('|').expect("a | marks the cursor");
    let before = &marked[..at];
    let line = before.matches('\n').count() as u32;
    let col = before.rsplit('\n').next().unwrap().encode_utf16().count() as u32;
    (format!("{before}{}", &marked[at + 1..]), line, col)
}

/// The 0-based number of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> u32 {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?} in:\n{text}")) as u32
}

/// Position of `needle` in `text` (0-based line and UTF-16 column), plus `offset` columns.
fn position_of(text: &str, needle: &str, offset: u32) -> (u32, u32) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in document"));
    let before = &text[..at];
    let line = before.matches('\n').count() as u32;
    let col = before.rsplit('\n').next().unwrap().encode_utf16().count() as u32;
    (line, col + offset)
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 4000 {
        let cut = (0..=4000).rev().find(|&i| s.is_char_boundary(i)).unwrap();
        format!("{}... ({} bytes)", &s[..cut], s.len())
    } else {
        s
    }
}

/// A yaml-language-server child process and a minimal LSP client for it.
struct Server {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Result<Value, String>>,
    stderr: Arc<Mutex<String>>,
    next_id: i64,
    /// Every message, `-->` sent and `<--` received, for failure reports.
    log: Vec<String>,
    /// Index in `log` where the current step began: a failure prints from there.
    step: usize,
    /// The latest `publishDiagnostics` per document URI.
    diagnostics: HashMap<String, Value>,
    settings: Value,
}

impl Server {
    /// Starts the server, initializes it with the repository as workspace and our settings.
    fn start() -> Server {
        let root = root();
        let entry =
            root.join("tests/editor/node_modules/yaml-language-server/bin/yaml-language-server");
        let hint = "run `scripts/test-deps.sh` (or `cd tests/editor && npm ci`) to install Node and yaml-language-server";
        assert!(
            entry.is_file(),
            "yaml-language-server is not installed ({} is missing): {hint}",
            entry.display()
        );
        let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
        let mut child = Command::new(&node)
            .arg(&entry)
            .arg("--stdio")
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {node:?} ({e}): {hint}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();

        let (tx, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                match read_message(&mut reader) {
                    Ok(Some(msg)) => {
                        if tx.send(Ok(msg)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Err("the server closed its stdout".into()));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        let settings = json!({
            "yaml": {
                "validate": true,
                "completion": true,
                "hover": true,
                "format": {"enable": false},
                "schemas": {},
                // No network: no schemastore.org catalog, no Kubernetes CRD store.
                "schemaStore": {"enable": false},
                "kubernetesCRDStore": {"enable": false}
            },
            "http": {"proxy": "", "proxyStrictSSL": false},
            "[yaml]": {},
            "editor": {"tabSize": 2}
        });
        let mut server = Server {
            child,
            stdin,
            incoming,
            stderr,
            next_id: 1,
            log: Vec::new(),
            step: 0,
            diagnostics: HashMap::new(),
            settings,
        };
        let root_uri = file_uri(&root);
        let result = server.request(
            "initialize",
            json!({
                "processId": std::process::id(),
                "clientInfo": {"name": "outpostctl-editor-test"},
                "rootUri": root_uri,
                "workspaceFolders": [{"uri": root_uri, "name": "outpostctl"}],
                "capabilities": {
                    "workspace": {
                        "configuration": true,
                        "didChangeConfiguration": {"dynamicRegistration": true},
                        "workspaceFolders": true
                    },
                    "textDocument": {
                        "synchronization": {"dynamicRegistration": true},
                        "completion": {
                            "completionItem": {
                                "snippetSupport": true,
                                "documentationFormat": ["markdown", "plaintext"]
                            }
                        },
                        "hover": {"contentFormat": ["markdown", "plaintext"]},
                        "publishDiagnostics": {"relatedInformation": true}
                    }
                },
                "initializationOptions": {}
            }),
        );
        let version = result["serverInfo"]["version"].as_str().unwrap_or("");
        if !version.starts_with("1.") {
            server.fail(&format!(
                "expected yaml-language-server 1.x, got {version:?}: {hint}"
            ));
        }
        let caps = &result["capabilities"];
        if caps["completionProvider"].is_null() || caps["hoverProvider"].is_null() {
            server.fail("the server does not offer completion and hover");
        }
        server.notify("initialized", json!({}));
        let settings = server.settings.clone();
        server.notify(
            "workspace/didChangeConfiguration",
            json!({"settings": settings}),
        );
        server
    }

    /// Begins a step of the test: a failure prints the traffic from here on.
    fn begin(&mut self, what: &str) {
        self.step = self.log.len();
        self.log.push(format!("=== {what}"));
    }

    fn fail(&self, msg: &str) -> ! {
        let stderr = self.stderr.lock().unwrap().clone();
        let tail: String = {
            let chars: Vec<char> = stderr.chars().collect();
            chars[chars.len().saturating_sub(4000)..].iter().collect()
        };
        panic!(
            "{msg}\n\nLSP traffic of this step ({} of {} messages):\n{}\n\nserver stderr (tail):\n{}",
            self.log.len() - self.step,
            self.log.len(),
            self.log[self.step..].join("\n"),
            tail
        );
    }

    fn send(&mut self, msg: Value) {
        self.log.push(format!("--> {}", compact(&msg)));
        let body = msg.to_string();
        let frame = format!("Content-Length: {}\r\n\r\n{body}", body.len());
        if let Err(e) = self
            .stdin
            .write_all(frame.as_bytes())
            .and_then(|_| self.stdin.flush())
        {
            self.fail(&format!("cannot write to the server: {e}"));
        }
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Receives one message before `deadline`; answers the server's own requests and records
    /// diagnostics on the way. `None` when the deadline passed.
    fn receive(&mut self, deadline: Instant) -> Option<Value> {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match self.incoming.recv_timeout(left) {
            Ok(Ok(msg)) => msg,
            Ok(Err(e)) => self.fail(&format!("reading from the server failed: {e}")),
            Err(RecvTimeoutError::Timeout) => return None,
            Err(RecvTimeoutError::Disconnected) => self.fail("the server's output ended"),
        };
        self.log.push(format!("<-- {}", compact(&msg)));
        if let Some(method) = msg["method"].as_str() {
            if !msg["id"].is_null() {
                // A request of the server to the client.
                let result = match method {
                    "workspace/configuration" => Value::Array(
                        msg["params"]["items"]
                            .as_array()
                            .map(|items| {
                                items
                                    .iter()
                                    .map(|item| {
                                        let section = item["section"].as_str().unwrap_or("");
                                        self.settings.get(section).cloned().unwrap_or(Value::Null)
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    _ => Value::Null,
                };
                let id = msg["id"].clone();
                self.send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
            } else if method == "textDocument/publishDiagnostics" {
                let uri = msg["params"]["uri"].as_str().unwrap_or("").to_string();
                self.diagnostics.insert(uri, msg["params"].clone());
            }
        }
        Some(msg)
    }

    /// Sends a request and waits (at most `WAIT`) for its result.
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + WAIT;
        loop {
            let Some(msg) = self.receive(deadline) else {
                self.fail(&format!("no answer to {method} (id {id}) within {WAIT:?}"));
            };
            if msg["method"].is_null() && msg["id"] == json!(id) {
                if !msg["error"].is_null() {
                    self.fail(&format!("{method} failed: {}", msg["error"]));
                }
                return msg["result"].clone();
            }
        }
    }

    fn open(&mut self, path: &Path, text: &str) -> String {
        let uri = file_uri(path);
        self.diagnostics.remove(&uri);
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "yaml", "version": 1, "text": text}}),
        );
        uri
    }

    /// Waits (at most `WAIT`) for the diagnostics of `uri` after it was opened.
    fn diagnostics_of(&mut self, uri: &str) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        while !self.diagnostics.contains_key(uri) {
            if self.receive(deadline).is_none() {
                self.fail(&format!("no diagnostics for {uri} within {WAIT:?}"));
            }
        }
        self.diagnostics[uri]["diagnostics"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Labels of the completion items at `line`:`col`.
    fn completion_labels(&mut self, uri: &str, line: u32, col: u32) -> Vec<String> {
        let result = self.request(
            "textDocument/completion",
            json!({
                "textDocument": {"uri": uri},
                "position": {"line": line, "character": col},
                "context": {"triggerKind": 1}
            }),
        );
        let items = match &result {
            Value::Array(items) => items.clone(),
            Value::Object(list) => list
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        items
            .iter()
            .filter_map(|i| i["label"].as_str().map(str::to_string))
            .collect()
    }

    /// The hover text at `line`:`col` (markdown or plain), empty when there is none.
    fn hover(&mut self, uri: &str, line: u32, col: u32) -> String {
        let result = self.request(
            "textDocument/hover",
            json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": col}}),
        );
        fn text(v: &Value) -> String {
            match v {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts.iter().map(text).collect::<Vec<_>>().join("\n"),
                Value::Object(o) => o.get("value").map(text).unwrap_or_default(),
                _ => String::new(),
            }
        }
        text(&result["contents"])
    }

    fn expect_labels(&self, what: &str, labels: &[String], expected: &[&str]) {
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|e| !labels.iter().any(|l| l == e))
            .collect();
        if !missing.is_empty() {
            self.fail(&format!(
                "{what}: completion lacks {missing:?}; it offered {labels:?}"
            ));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one Content-Length framed message; `None` at a clean end of stream.
fn read_message(reader: &mut impl BufRead) -> Result<Option<Value>, String> {
    let mut length = None;
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("read header: {e}"))?;
        if n == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|e| format!("bad Content-Length {value:?}: {e}"))?,
            );
        }
    }
    let length = length.ok_or("a message without Content-Length")?;
    let mut body = vec![0u8; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| format!("bad JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

/// What an editor shows of hover markdown: escapes removed, whitespace collapsed.
fn rendered(markdown: &str) -> String {
    let mut out = String::new();
    let mut chars = markdown.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(|n| n.is_ascii_punctuation()) {
            out.push(chars.next().unwrap());
        } else {
            out.push(c);
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn normalized(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Looks up `pointer` in the checked-in schema; the test's expectations come from there.
fn schema_at(schema: &Value, pointer: &str) -> Value {
    schema
        .pointer(pointer)
        .cloned()
        .unwrap_or_else(|| panic!("schemas/outpostctl.schema.json has no {pointer}"))
}

fn property_names(schema: &Value, pointer: &str) -> Vec<String> {
    schema_at(schema, pointer)
        .as_object()
        .unwrap_or_else(|| panic!("{pointer} is not an object"))
        .keys()
        .cloned()
        .collect()
}

fn enum_values(schema: &Value, def: &str) -> Vec<String> {
    schema_at(schema, &format!("/$defs/{def}/enum"))
        .as_array()
        .unwrap_or_else(|| panic!("{def} is not an enum"))
        .iter()
        .map(|v| v.as_str().expect("a string value").to_string())
        .collect()
}

/// `expected` must be part of what the schema lists, so a schema change cannot make the
/// test check less than the issue asks for.
fn all_of<'a>(from_schema: &'a [String], expected: &[&str]) -> Vec<&'a str> {
    for e in expected {
        assert!(
            from_schema.iter().any(|s| s == e),
            "the schema no longer has {e:?}: {from_schema:?}"
        );
    }
    from_schema.iter().map(String::as_str).collect()
}

/// A complete, valid outpost; `{extra}` adds lines inside it, `{config}` inside its config.
fn outpost_doc(version: &str, extra: &str, config: &str) -> String {
    format!(
        "{MODELINE}\nversion: {version}\nproject: editor-test\n\nintegrations:\n  local: {{ local: true }}\n\noutposts:\n  Edge Proxy:\n    type: proxy\n    integration: local\n    token: {{ env: AK_EDGE_PROXY_TOKEN }}\n    external_hosts:\n      - https://app.example.com\n{extra}    config:\n      authentik_host: https://auth.example.com\n{config}"
    )
}

/// Whether an error on `line` mentions `word` (a schema-load failure is also reported on a
/// document's first line, so the position alone proves nothing).
fn has_error(diags: &[Value], line: u32, word: &str) -> bool {
    diagnostics_on_line(diags, line)
        .iter()
        .any(|d| d["severity"] == json!(1) && d["message"].as_str().unwrap_or("").contains(word))
}

fn diagnostics_on_line(diags: &[Value], line: u32) -> Vec<&Value> {
    diags
        .iter()
        .filter(|d| d["range"]["start"]["line"] == json!(line))
        .collect()
}

/// A new server's diagnostics of `doc`, written as the test document `file`, as the step
/// `what`; the server and the document's uri, for the test's next steps.
fn diagnosed(what: &str, file: &str, doc: &str) -> (Server, String, Vec<Value>) {
    let mut s = Server::start();
    s.begin(what);
    let uri = s.open(&test_doc(file, doc), doc);
    let diags = s.diagnostics_of(&uri);
    (s, uri, diags)
}

/// Fails unless every line of `lines` has an error among `diags`.
fn expect_errors_on(s: &Server, diags: &[Value], lines: &[u32]) {
    for line in lines {
        if !diags
            .iter()
            .any(|d| d["severity"] == json!(1) && d["range"]["start"]["line"] == json!(line))
        {
            s.fail(&format!(
                "line {line} is not flagged; diagnostics:\n{}",
                summary(diags)
            ));
        }
    }
}

fn summary(diags: &[Value]) -> String {
    diags
        .iter()
        .map(|d| {
            format!(
                "line {} col {} severity {}: {}",
                d["range"]["start"]["line"],
                d["range"]["start"]["character"],
                d["severity"],
                d["message"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn completes_top_level_keys() {
    let schema = schema();
    let keys = property_names(&schema, "/properties");
    let expected = all_of(
        &keys,
        &[
            "version",
            "project",
            "defaults",
            "integrations",
            "outposts",
            "keypairs",
        ],
    );
    let mut s = Server::start();
    s.begin("completion at the top level of an empty manifest");
    let (text, line, col) = cursor(&format!("{MODELINE}\n|\n"));
    let uri = s.open(&test_doc("top-level.yaml", &text), &text);
    let labels = s.completion_labels(&uri, line, col);
    s.expect_labels("top level", &labels, &expected);
}

#[test]
fn completes_outpost_keys() {
    let schema = schema();
    let keys = property_names(&schema, "/$defs/Outpost/properties");
    let expected = all_of(
        &keys,
        &["type", "integration", "token", "external_hosts", "config"],
    );
    let mut s = Server::start();
    s.begin("completion inside a new outpost");
    let (text, line, col) = cursor(&format!(
        "{MODELINE}\nversion: 1\noutposts:\n  Edge Proxy:\n    |\n"
    ));
    let uri = s.open(&test_doc("outpost-keys.yaml", &text), &text);
    let labels = s.completion_labels(&uri, line, col);
    s.expect_labels("outpost keys", &labels, &expected);

    s.begin("completion inside an outpost's config");
    let keys = property_names(&schema, "/$defs/OutpostConfig/properties");
    let expected = all_of(
        &keys,
        &["docker_network", "docker_map_ports", "container_image"],
    );
    let (text, line, col) = cursor(&format!(
        "{MODELINE}\nversion: 1\noutposts:\n  Edge Proxy:\n    type: proxy\n    config:\n      |\n"
    ));
    let uri = s.open(&test_doc("config-keys.yaml", &text), &text);
    let labels = s.completion_labels(&uri, line, col);
    s.expect_labels("config keys", &labels, &expected);
}

#[test]
fn completes_enum_values() {
    let schema = schema();
    let types = enum_values(&schema, "OutpostType");
    let types = all_of(&types, &["proxy", "ldap", "radius", "rac"]);
    let pulls = enum_values(&schema, "PullPolicy");
    let pulls = all_of(&pulls, &["missing", "always", "never"]);
    let mut s = Server::start();

    s.begin("completion of the value of `type:`");
    let (text, line, col) = cursor(&format!(
        "{MODELINE}\nversion: 1\noutposts:\n  Edge Proxy:\n    type: |\n    integration: local\n"
    ));
    let uri = s.open(&test_doc("type-value.yaml", &text), &text);
    let labels = s.completion_labels(&uri, line, col);
    s.expect_labels("values of type", &labels, &types);

    s.begin("completion of the value of `pull:` (an optional enum)");
    let (text, line, col) = cursor(&format!(
        "{MODELINE}\nversion: 1\noutposts:\n  Edge Proxy:\n    type: proxy\n    pull: |\n"
    ));
    let uri = s.open(&test_doc("pull-value.yaml", &text), &text);
    let labels = s.completion_labels(&uri, line, col);
    s.expect_labels("values of pull", &labels, &pulls);
}

#[test]
fn hover_shows_schema_descriptions() {
    let schema = schema();
    let doc = outpost_doc(
        "1",
        "    pull: always\n",
        "      docker_map_ports: false\n      log_level: info\n",
    );
    let cases = [
        (
            "integration:",
            "/$defs/Outpost/properties/integration/description",
        ),
        (
            "external_hosts:",
            "/$defs/Outpost/properties/external_hosts/description",
        ),
        ("token:", "/$defs/Outpost/properties/token/description"),
        // An enum-valued key shows its own description, not its value's nor its type's,
        // also when it is optional (`anyOf [enum, null]`).
        ("type:", "/$defs/Outpost/properties/type/description"),
        ("pull:", "/$defs/Outpost/properties/pull/description"),
        (
            "log_level:",
            "/$defs/OutpostConfig/properties/log_level/description",
        ),
        (
            "docker_map_ports:",
            "/$defs/OutpostConfig/properties/docker_map_ports/description",
        ),
        ("outposts:", "/properties/outposts/description"),
    ];
    let mut s = Server::start();
    let uri = s.open(&test_doc("hover.yaml", &doc), &doc);
    for (key, pointer) in cases {
        s.begin(&format!("hover on `{key}`"));
        let want = schema_at(&schema, pointer);
        let want = normalized(want.as_str().expect("a description"));
        let (line, col) = position_of(&doc, key, 2);
        let hover = s.hover(&uri, line, col);
        if !rendered(&hover).contains(&want) {
            s.fail(&format!(
                "hover on `{key}` (line {line}) lacks the schema's description {want:?}; it shows {hover:?}"
            ));
        }
    }
}

#[test]
fn flags_wrong_types_at_their_line() {
    let doc = outpost_doc("\"one\"", "", "      docker_map_ports: \"yes\"\n");
    let (s, _, diags) = diagnosed(
        "diagnostics of a manifest with two wrong types",
        "wrong-types.yaml",
        &doc,
    );
    let cases = [
        (line_of(&doc, "version:"), "integer"),
        (line_of(&doc, "      docker_map_ports:"), "boolean"),
    ];
    for (line, expected_type) in cases {
        if !has_error(&diags, line, expected_type) {
            s.fail(&format!(
                "no error expecting {expected_type} on line {line}; diagnostics:\n{}",
                summary(&diags)
            ));
        }
    }
    let elsewhere: Vec<Value> = diags
        .iter()
        .filter(|d| {
            !cases
                .iter()
                .any(|(l, _)| d["range"]["start"]["line"] == json!(l))
        })
        .cloned()
        .collect();
    if !elsewhere.is_empty() {
        s.fail(&format!(
            "diagnostics on lines that are fine:\n{}",
            summary(&elsewhere)
        ));
    }
}

#[test]
fn flags_unknown_keys() {
    let doc = outpost_doc(
        "1",
        "    imgae: ghcr.io/goauthentik/proxy\n",
        "      kubernetes_replicas: 2\n      imgae: ghcr.io/goauthentik/proxy\n",
    );
    let (s, _, diags) = diagnosed(
        "diagnostics of a manifest with misspelt keys",
        "unknown-keys.yaml",
        &doc,
    );
    let cases = [
        (line_of(&doc, "    imgae:"), "the outpost"),
        (line_of(&doc, "      imgae:"), "its config"),
    ];
    for (line, where_) in cases {
        if !has_error(&diags, line, "imgae") {
            s.fail(&format!(
                "the unknown key `imgae` in {where_} (line {line}) is not flagged; diagnostics:\n{}",
                summary(&diags)
            ));
        }
    }
    if diags.len() != cases.len() {
        s.fail(&format!(
            "expected exactly the two `imgae` errors (`kubernetes_*` keys are allowed); diagnostics:\n{}",
            summary(&diags)
        ));
    }
}

/// A key that looks like a number is a number to the editor, which checks a name's `pattern`
/// on strings only: a `ports` key (always `PORT/tcp`) and a negative number as an
/// integration, keypair or label name are flagged all the same, as `validate` refuses them
/// (`invalid-name`); a number that is a valid name (`9000:`, an integration or a label
/// `validate` accepts) is not.
#[test]
fn flags_numeric_keys_that_are_not_names() {
    let doc = format!(
        "{MODELINE}\nversion: 1\nproject: editor-test\nkeypairs:\n  -7: {{ key: {{ env: SSH_KEY }} }}\n\
         integrations:\n  -5: {{ local: true }}\n  9000: {{ local: true }}\n\
         outposts:\n  Edge Proxy:\n    type: proxy\n    integration: \"9000\"\n    \
         token: {{ env: AK_EDGE_PROXY_TOKEN }}\n    ports:\n      9000: 9080\n    config:\n      \
         docker_labels:\n        -1: x\n        9000: y\n"
    );
    let (s, _, diags) = diagnosed(
        "diagnostics of numbers written as names",
        "numeric-keys.yaml",
        &doc,
    );
    let flagged = [
        line_of(&doc, "  -7:"),
        line_of(&doc, "  -5:"),
        line_of(&doc, "      9000: 9080"),
        line_of(&doc, "        -1:"),
    ];
    expect_errors_on(&s, &diags, &flagged);
    let elsewhere: Vec<Value> = diags
        .iter()
        .filter(|d| {
            !flagged
                .iter()
                .any(|l| d["range"]["start"]["line"] == json!(l))
        })
        .cloned()
        .collect();
    if !elsewhere.is_empty() {
        s.fail(&format!(
            "diagnostics on lines that are fine:\n{}",
            summary(&elsewhere)
        ));
    }
}

/// An integration that is neither `local: true` nor has a `url`, or is both, and a keypair
/// with neither `certificate` nor `key`, are flagged at their line, as `validate` refuses
/// them; `local: true` alone (also beside a `url` left empty), a `url` alone (also beside
/// `local: false`) and a keypair with a key are not; and hovering a key of an integration still shows its description.
#[test]
fn flags_integrations_and_keypairs_of_the_wrong_shape() {
    let schema = schema();
    let doc = format!(
        "{MODELINE}\nversion: 1\nkeypairs:\n  nothing: {{}}\n  ssh: {{ key: {{ env: SSH_KEY }} }}\n\
         integrations:\n  empty: {{}}\n  both:\n    local: true\n    url: http://proxy:2375\n  \
         off: {{ local: false }}\n  here: {{ local: true }}\n  blank: {{ local: true, url: ~ }}\n  \
         proxy:\n    url: http://other-proxy:2375\n  \
         remote: {{ local: false, url: \"ssh://deploy@host\" }}\n"
    );
    let (mut s, uri, diags) = diagnosed(
        "diagnostics of integrations and keypairs of the wrong shape",
        "shapes.yaml",
        &doc,
    );
    // yaml-language-server flags a block mapping that matches both branches at its first key.
    let flagged = [
        line_of(&doc, "  nothing:"),
        line_of(&doc, "  empty:"),
        line_of(&doc, "    local: true"),
        line_of(&doc, "  off:"),
    ];
    expect_errors_on(&s, &diags, &flagged);
    for key in [
        "  ssh:",
        "  here:",
        "  blank:",
        "  proxy:",
        "    url: http://other-proxy",
        "  remote:",
    ] {
        let line = line_of(&doc, key);
        if flagged.contains(&line) {
            continue;
        }
        if !diagnostics_on_line(&diags, line).is_empty() {
            s.fail(&format!(
                "`{key}` (line {line}) is flagged; diagnostics:\n{}",
                summary(&diags)
            ));
        }
    }
    s.begin("hover on an integration's `url`");
    let want = normalized(
        schema_at(&schema, "/$defs/Integration/properties/url/description")
            .as_str()
            .expect("a description"),
    );
    let (line, col) = position_of(&doc, "    url: http", 6);
    let hover = s.hover(&uri, line, col);
    if !rendered(&hover).contains(&want) {
        s.fail(&format!(
            "hover on `url` lacks its description {want:?}; it shows {hover:?}"
        ));
    }
}

/// Every example, opened with its real URI and content, is clean; hovering `version` proves
/// the relative modeline attached the schema.
#[test]
fn examples_are_clean_in_the_editor() {
    let schema = schema();
    let want = normalized(
        schema_at(&schema, "/properties/version/description")
            .as_str()
            .unwrap(),
    );
    let mut files = Vec::new();
    for dir in ["examples/minimal", "examples/homelab"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .unwrap_or_else(|e| panic!("read {dir}: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        found.sort();
        assert!(!found.is_empty(), "no manifests in {dir}");
        files.extend(found);
    }
    let mut s = Server::start();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        s.begin(&format!("example {}", path.display()));
        assert!(
            text.starts_with(MODELINE),
            "{} does not start with the modeline {MODELINE:?}",
            path.display()
        );
        let uri = s.open(&path, &text);
        let diags = s.diagnostics_of(&uri);
        if !diags.is_empty() {
            s.fail(&format!(
                "{} is valid but the editor reports:\n{}",
                path.display(),
                summary(&diags)
            ));
        }
        let line = line_of(&text, "version:");
        let hover = s.hover(&uri, line, 2);
        if !rendered(&hover).contains(&want) {
            s.fail(&format!(
                "{}: no schema behind the modeline (hover on `version` shows {hover:?})",
                path.display()
            ));
        }
    }
}

/// The other ways to name the schema: an absolute path, a `file://` URI, and one modeline per
/// document of a multi-document file (a modeline only covers its own document).
#[test]
fn other_modeline_forms() {
    let schema_path = root().join("schemas/outpostctl.schema.json");
    let body = "version: \"one\"\n";
    let mut s = Server::start();
    for (name, target) in [
        ("absolute-path.yaml", schema_path.display().to_string()),
        ("file-uri.yaml", file_uri(&schema_path)),
    ] {
        s.begin(&format!("modeline with {target}"));
        let doc = format!("# yaml-language-server: $schema={target}\n{body}");
        let uri = s.open(&test_doc(name, &doc), &doc);
        let diags = s.diagnostics_of(&uri);
        if !has_error(&diags, 1, "integer") {
            s.fail(&format!(
                "the schema named {target} was not applied; diagnostics:\n{}",
                summary(&diags)
            ));
        }
    }

    s.begin("a multi-document file with a modeline per document");
    let doc = format!("{MODELINE}\nversion: 1\nproject: editor-test\n---\n{MODELINE}\n{body}");
    let uri = s.open(&test_doc("multi-document.yaml", &doc), &doc);
    let diags = s.diagnostics_of(&uri);
    let line = line_of(&doc, body.trim_end());
    if !has_error(&diags, line, "integer") || diags.len() != diagnostics_on_line(&diags, line).len()
    {
        s.fail(&format!(
            "expected errors on line {line} (the second document) only; diagnostics:\n{}",
            summary(&diags)
        ));
    }
}
