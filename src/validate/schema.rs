//! JSON Schema validation of each document, with messages written for a person.
//!
//! jsonschema reports keyword failures ("additionalProperties", "pattern", ...) against JSON
//! pointers; this module says what they mean for a manifest, points at the exact key or value,
//! and adds a hint (did you mean, what the field is for) taken from the same schema editors use.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use crate::diagnostics::Diagnostic;
use crate::manifest::load::{LoadedDoc, Origin};
use crate::manifest::model;
use crate::manifest::yaml::escape;

struct Compiled {
    schema: Value,
    validator: Validator,
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let schema = model::schema();
        // The schema is generated from our own types and checked by a test; failing to compile
        // it is a bug in outpostctl, not something a user can cause.
        #[allow(clippy::expect_used)]
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .expect("the generated schema compiles");
        Compiled { schema, validator }
    })
}

/// What the schema says of one document.
pub struct Checked {
    /// Empty when the document is valid.
    pub diagnostics: Vec<Diagnostic>,
    /// The JSON pointers of the values that failed (one per schema error).
    pub failed_at: BTreeSet<String>,
}

/// Validates one document.
pub fn check(doc: &LoadedDoc) -> Checked {
    let c = compiled();
    let mut out = Vec::new();
    let mut failed_at = BTreeSet::new();
    let errors: Vec<_> = c.validator.iter_errors(&doc.value).collect();
    // A value of the wrong type also fails its `const` (`version: "1"`): the type error
    // says it better, and alone.
    let mistyped: BTreeSet<String> = errors
        .iter()
        .filter(|e| matches!(e.kind(), ValidationErrorKind::Type { .. }))
        .map(|e| e.instance_path().as_str().to_string())
        .collect();
    // A value of the wrong type also fails its `enum` (`type:` with no value): the enum error,
    // which lists the allowed values, says it better, and alone.
    let not_allowed: BTreeSet<String> = errors
        .iter()
        .filter(|e| matches!(e.kind(), ValidationErrorKind::Enum { .. }))
        .map(|e| e.instance_path().as_str().to_string())
        .collect();
    // An empty value also fails its pattern (an `env` name): "must not be empty" says it alone.
    let empty: BTreeSet<String> = errors
        .iter()
        .filter(|e| matches!(e.kind(), ValidationErrorKind::MinLength { .. }))
        .map(|e| e.instance_path().as_str().to_string())
        .collect();
    // Where errors are: an entry that fails inside says so, not also that its shape is wrong.
    let inner: Vec<String> = errors
        .iter()
        .map(|e| e.instance_path().as_str().to_string())
        .collect();
    for err in errors {
        let pointer = err.instance_path().as_str().to_string();
        if entry_shape(&err).is_some()
            && inner.iter().any(|p| p.starts_with(&format!("{pointer}/")))
        {
            failed_at.insert(pointer);
            continue;
        }
        // An integration or keypair left empty (`nas:` with no value) also passes or fails
        // its entry's `oneOf`/`anyOf` as a non-mapping: the type error says it, and alone.
        let entry_of_wrong_type = matches!(
            err.kind(),
            ValidationErrorKind::OneOfMultipleValid { .. }
                | ValidationErrorKind::OneOfNotValid { .. }
                | ValidationErrorKind::AnyOf { .. }
        ) && !err.instance().is_object()
            && mistyped.contains(&pointer);
        if entry_of_wrong_type
            || (matches!(err.kind(), ValidationErrorKind::Constant { .. })
                && mistyped.contains(&pointer))
            || (matches!(err.kind(), ValidationErrorKind::Type { .. })
                && not_allowed.contains(&pointer))
            || (matches!(err.kind(), ValidationErrorKind::Pattern { .. })
                && empty.contains(&pointer))
        {
            failed_at.insert(pointer);
            continue;
        }
        failed_at.extend(failure_points(&err, &c.schema));
        let before = out.len();
        translate(&err, doc, &c.schema, &mut out);
        // A host port binding's value that is not one has one code, whichever check found it.
        if is_port_binding(&pointer) {
            for d in &mut out[before..] {
                if d.code == "invalid-value" {
                    d.code = "invalid-port";
                }
            }
        }
    }
    // jsonschema may report one mistake through two keywords; show it once.
    out.dedup_by(|a, b| a.message == b.message && a.headline() == b.headline());
    Checked {
        diagnostics: out,
        failed_at,
    }
}

/// Whether `pointer` is the value of a `ports` entry of an outpost
/// (`/outposts/<name>/ports/<container port>`).
fn is_port_binding(pointer: &str) -> bool {
    let parts: Vec<&str> = pointer.split('/').collect();
    matches!(parts.as_slice(), ["", "outposts", _, "ports", _])
}

/// The JSON pointers of the values that `err` is about: its own, or for an optional value
/// (`anyOf [T, null]`) that fails as a `T`, those of `T`'s errors (a wrong key of `defaults:`
/// is that key, not the whole block; an unknown key there is that key and the known key it
/// was probably meant to be, whose value is then not known either).
fn failure_points(err: &ValidationError<'_>, schema: &Value) -> Vec<String> {
    let pointer = err.instance_path().as_str().to_string();
    match err.kind() {
        // A document without `version` is read as version 1 (the only one), so that the rest
        // of it is checked in the same run.
        ValidationErrorKind::Required { property }
            if pointer.is_empty() && property.as_str() == Some("version") =>
        {
            Vec::new()
        }
        ValidationErrorKind::AdditionalProperties { unexpected } if pointer == "/defaults" => {
            let known = known_keys(schema, err.schema_path().as_str());
            unexpected
                .iter()
                .flat_map(|key| {
                    let meant = closest(key, known.iter().map(String::as_str));
                    std::iter::once(key.as_str())
                        .chain(meant)
                        .map(|k| format!("{pointer}/{}", escape(k)))
                        .collect::<Vec<_>>()
                })
                .collect()
        }
        // A bad name is reported at its section: the entry is what failed.
        ValidationErrorKind::PropertyNames { error } => vec![format!(
            "{pointer}/{}",
            escape(error.instance().as_str().unwrap_or_default())
        )],
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            let branches: Vec<&Vec<ValidationError<'static>>> = context
                .iter()
                .filter(|errs| !errs.iter().all(is_not_null))
                .collect();
            match branches.as_slice() {
                [one] if !one.is_empty() => {
                    one.iter().flat_map(|e| failure_points(e, schema)).collect()
                }
                _ => vec![pointer],
            }
        }
        _ => vec![pointer],
    }
}

/// Whether `e` says only that a value is not null (the other branch of an optional value).
fn is_not_null(e: &ValidationError<'_>) -> bool {
    matches!(e.kind(), ValidationErrorKind::Type { kind: TypeKind::Single(t) } if t.to_string() == "null")
}

/// The shape an integration or keypair must have, when `err` says it lacks it: an
/// integration is `local: true` or has a `url`, not both; a keypair has a `certificate`, a
/// `key` or both.
enum Shape {
    IntegrationNeither,
    IntegrationBoth,
    KeypairEmpty,
}

fn entry_shape(err: &ValidationError<'_>) -> Option<Shape> {
    let pointer = err.instance_path().as_str();
    let section = pointer.split('/').nth(1)?;
    if pointer.split('/').count() != 3 || !err.instance().is_object() {
        return None;
    }
    let keyword = err.schema_path().as_str().rsplit('/').next()?;
    match (section, keyword, err.kind()) {
        ("integrations", "oneOf", ValidationErrorKind::OneOfNotValid { .. }) => {
            Some(Shape::IntegrationNeither)
        }
        ("integrations", "oneOf", ValidationErrorKind::OneOfMultipleValid { .. }) => {
            Some(Shape::IntegrationBoth)
        }
        ("keypairs", "anyOf", ValidationErrorKind::AnyOf { .. }) => Some(Shape::KeypairEmpty),
        _ => None,
    }
}

fn translate(
    err: &ValidationError<'_>,
    doc: &LoadedDoc,
    schema: &Value,
    out: &mut Vec<Diagnostic>,
) {
    let pointer = err.instance_path().as_str().to_string();
    let at = doc.origin.child(&pointer);
    let field = field_name(&doc.value, &pointer);
    let schema_path = err.schema_path().as_str().to_string();
    let instance = err.instance();
    if let Some(shape) = entry_shape(err) {
        out.push(match shape {
            Shape::IntegrationNeither => Diagnostic::error(
                "integration-kind",
                format!("integration `{field}` needs `local: true` or a `url`"),
            )
            .at(at.key())
            .hint("for example `url: \"ssh://authentik@host:22\"` or `local: true`"),
            Shape::IntegrationBoth => Diagnostic::error(
                "integration-kind",
                format!("integration `{field}` sets both `local: true` and `url`"),
            )
            .at(at.child("/url").key())
            .hint("use `local: true` for this machine's engine, or a `url`, not both"),
            Shape::KeypairEmpty => Diagnostic::error(
                "empty-keypair",
                format!("keypair `{field}` has neither `certificate` nor `key`"),
            )
            .at(at.key())
            .hint("give it a `certificate` (a CA for tls_verification), a `key`, or both"),
        });
        return;
    }
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let known = known_keys(schema, &schema_path);
            for key in unexpected {
                let child_pointer = format!("{pointer}/{}", escape(key));
                let child = at.child(&format!("/{}", escape(key)));
                // A key inside a secret's source may be the secret itself (`token: { ak-... }`,
                // what `envsubst` makes of `token: { ${AK_TOKEN} }`): not repeated.
                if crate::manifest::load::secret_as_key(&child_pointer) {
                    out.push(
                        Diagnostic::error(
                            "unknown-key",
                            "unknown key in a secret's source (not repeated: it may be the secret itself)",
                        )
                        .at(child.key())
                        .label("not a known key here")
                        .hint("a secret is read from `{ env: VARIABLE }` or `{ file: path }`, never written in the manifest"),
                    );
                    continue;
                }
                let mut d = Diagnostic::error("unknown-key", format!("unknown key `{}`", truncate(key)))
                    .at(child.key())
                    .label("not a known key here");
                d = d.maybe_hint(
                    misplaced_key_hint(schema, key, &pointer)
                        .or_else(|| unknown_key_hint(key, &pointer, &known)),
                );
                out.push(d);
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            let what = if pointer.is_empty() && name == "version" {
                Some("every file, and every document after a `---`, starts with `version: 1`".to_string())
            } else {
                describe(schema, &schema_path, name).map(|w| format!("`{name}`: {w}"))
            };
            let place = if pointer.is_empty() {
                "the document".to_string()
            } else {
                format!("`{field}`")
            };
            out.push(
                Diagnostic::error(
                    "missing-key",
                    format!("missing required key `{name}` in {place}"),
                )
                .at(at.key())
                .label(format!("`{name}` is missing here"))
                .maybe_hint(what),
            );
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => type_name(&t.to_string()).to_string(),
                TypeKind::Multiple(set) => {
                    let names: Vec<String> = set
                        .iter()
                        .map(|t| t.to_string())
                        .filter(|t| t != "null")
                        .map(|t| type_name(&t).to_string())
                        .collect();
                    names.join(" or ")
                }
            };
            // A secret written inline is not repeated (validate's JSON shows no snippet).
            let found = if matches!(field.as_str(), "token" | "key")
                && (instance.is_string() || instance.is_number())
            {
                "a string (not shown: it would be a secret)".to_string()
            } else {
                found(instance)
            };
            let mut d = Diagnostic::error(
                "wrong-type",
                format!("`{field}` must be {expected}, found {found}"),
            )
            .at(at.value())
            .label(format!("expected {expected}"));
            if matches!(field.as_str(), "token" | "key") && instance.is_string() && expected.contains("mapping") {
                d = d.hint(format!(
                    "a secret is never written into a manifest: name where it is, `{field}: {{ env: VARIABLE }}` or `{field}: {{ file: path }}`"
                ));
            } else if expected.contains("true or false")
                && let Some((word, value)) = instance.as_str().and_then(yaml11_boolean)
            {
                d = d.hint(format!(
                    "YAML 1.2 reads `{word}` as text; write `{value}`: `{field}: {value}`"
                ));
            } else if field == "healthcheck"
                && let Some(line) = instance.as_str().filter(|l| !l.trim().is_empty())
            {
                // A command line written as one string: one item per word.
                let items: Vec<String> = line
                    .split_whitespace()
                    .map(|w| Value::from(w).to_string())
                    .collect();
                d = d.hint(format!(
                    "one item per word of the command: `healthcheck: [{}]`",
                    items.join(", ")
                ));
            } else if expected.contains("list") && instance.is_string() {
                // One item written without the brackets.
                let written = at.value().text();
                let item = if written.is_empty() {
                    scalar_text(instance)
                } else {
                    written
                };
                d = d.hint(format!("a list of one: `{field}: [{item}]`"));
            } else if instance.is_null() && expected.contains("mapping") {
                d = d.hint(empty_mapping_hint(&pointer, &field));
            } else if expected == "a string" && (instance.is_number() || instance.is_boolean()) {
                // Quote what was written: the parsed number may read differently (1e3, 0o17).
                let written = at.value().text();
                let shown = if written.is_empty() {
                    scalar_text(instance)
                } else {
                    written
                };
                d = d.hint(if field.ends_with(']') {
                    format!("quote it: `- \"{shown}\"`")
                } else {
                    format!("quote it: `{field}: \"{shown}\"`")
                });
            } else if let Some(text) = instance.as_str().filter(|t| {
                // Written in quotes, and unquoted it would be what is expected.
                let quoted = at.value().text().starts_with(['"', '\'']);
                let t = t.trim();
                let number = !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
                    && t.parse::<f64>().is_ok();
                quoted
                    && ((expected.contains("integer") && t.parse::<i64>().is_ok())
                        || (expected.contains("number") && number)
                        || (expected.contains("true or false") && matches!(t, "true" | "false")))
            }) {
                // A number or boolean written in quotes.
                d = d.hint(if field.ends_with(']') {
                    format!("remove the quotes: `- {}`", text.trim())
                } else {
                    format!("remove the quotes: `{field}: {}`", text.trim())
                });
            } else if let Some(w) =
                describe_at(schema, &schema_path, err.evaluation_path().as_str())
            {
                d = d.hint(format!("`{field}`: {w}"));
            }
            out.push(d);
        }
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            out.push(enum_error(&field, instance, &opts, &at));
        }
        ValidationErrorKind::Constant { expected_value } => {
            out.push(
                Diagnostic::error(
                    "invalid-value",
                    format!(
                        "`{field}` must be {expected_value}; found {}",
                        found(instance)
                    ),
                )
                .at(at.value())
                .label(format!("expected {expected_value}"))
                .maybe_hint(
                    (field == "version")
                        .then(|| "1 is the only manifest version today".to_string()),
                ),
            );
        }
        ValidationErrorKind::Pattern { pattern } => {
            let (what, mut hint) = pattern_meaning(pattern);
            // `${AK_TOKEN}` or `$AK_TOKEN`: the name it holds.
            if pattern == model::ENV_NAME_PATTERN
                && let Some(given) = instance.as_str()
            {
                let name = given
                    .trim()
                    .trim_start_matches('$')
                    .trim_start_matches('{')
                    .trim_end_matches('}');
                let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if given.contains(['$', '{', '}']) && valid {
                    hint = format!("write the name without `$` and braces: `env: {name}`");
                }
            }
            // A project name with capitals or spaces: the name it could be.
            if pattern == model::PROJECT_PATTERN
                && let Some(given) = instance.as_str()
            {
                let mut name: String = given
                    .trim()
                    .to_lowercase()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
                    .collect();
                name = name.trim_start_matches(['.', '_', '-']).chars().take(63).collect();
                if !name.is_empty() && name != given {
                    hint = format!("{hint}: `project: {name}`?");
                }
            }
            out.push(
                Diagnostic::error(
                    "invalid-value",
                    match instance.as_str() {
                        // A token pasted where a variable's name goes: not repeated.
                        Some(s) if crate::manifest::load::looks_like_a_token(s) => format!(
                            "`{field}` is not {what}: it holds {} characters that look like a token (not repeated here)",
                            s.len()
                        ),
                        _ => format!("`{field}` is not {what}: `{}`", scalar_text(instance)),
                    },
                )
                .at(at.value())
                .label(format!("expected {what}"))
                .hint(hint),
            );
        }
        ValidationErrorKind::PropertyNames { error } => {
            // The failing key is the inner error's instance.
            let key = error.instance().as_str().unwrap_or_default().to_string();
            let child = at.child(&format!("/{}", escape(&key)));
            let (what, hint) = match error.kind() {
                // An outpost's `ports`: name the ports its type has.
                ValidationErrorKind::Pattern { pattern }
                    if pattern == model::CONTAINER_PORT_PATTERN =>
                {
                    let kind = pointer
                        .strip_suffix("/ports")
                        .and_then(|o| doc.value.pointer(&format!("{o}/type")))
                        .and_then(|t| serde_json::from_value::<model::OutpostType>(t.clone()).ok());
                    match kind {
                        Some(k) if !crate::desired::default_ports(k).is_empty() => {
                            let ports: Vec<String> = crate::desired::default_ports(k)
                                .iter()
                                .map(|(c, proto, _)| format!("`{c}/{}`", proto.as_str()))
                                .collect();
                            let (c, proto, _) = crate::desired::default_ports(k)[0];
                            (
                                "a container port",
                                format!(
                                    "the keys are the container ports of its type ({}): {}; the value is the host side, e.g. `{c}/{}: 127.0.0.1:{c}`",
                                    k.as_str(),
                                    ports.join(", "),
                                    proto.as_str()
                                ),
                            )
                        }
                        _ => pattern_meaning(pattern),
                    }
                }
                ValidationErrorKind::Pattern { pattern } => pattern_meaning(pattern),
                ValidationErrorKind::MinLength { .. } => {
                    ("a name", "names cannot be empty".to_string())
                }
                _ => ("a valid name", error.to_string()),
            };
            out.push(
                Diagnostic::error("invalid-name", format!("`{}` is not {what}", truncate(&key)))
                    .at(child.key())
                    .label(format!("expected {what}"))
                    .hint(hint),
            );
        }
        ValidationErrorKind::MinProperties { .. } | ValidationErrorKind::MaxProperties { .. }
            if schema_path.contains("Source") || is_source_field(&field) =>
        {
            let secret =
                schema_path.contains("SecretSource") || matches!(field.as_str(), "token" | "key");
            let choices = if secret {
                "`file` or `env`"
            } else {
                "`file`, `env` or `value`"
            };
            out.push(
                Diagnostic::error("invalid-source", format!("`{field}` must name exactly one of {choices}"))
                    .at(at.key())
                    .label("one source expected")
                    .hint(format!("for example `{field}: {{ env: MY_VARIABLE }}` or `{field}: {{ file: path/to/file }}`")),
            );
        }
        ValidationErrorKind::MinLength { .. } => out.push(
            Diagnostic::error("invalid-value", format!("`{field}` must not be empty"))
                .at(at.value())
                .label("empty")
                .hint(match field.as_str() {
                    "env" => "name the environment variable that holds the value: `env: MY_VARIABLE`".to_string(),
                    "file" => "give the path of the file that holds the value (relative to the manifest)".to_string(),
                    f if f.starts_with("healthcheck[") => "each word of the command is one item: `healthcheck: [\"/ldap\", \"healthcheck\"]`".to_string(),
                    _ => format!("give `{field}` a value, or remove the key"),
                }),
        ),
        ValidationErrorKind::MinItems { limit } => out.push(
            Diagnostic::error(
                "invalid-value",
                format!("`{field}` needs at least {limit} item(s)"),
            )
            .at(at.value())
            .label("too few items")
            .hint(if field == "healthcheck" {
                "give the command, e.g. `healthcheck: [\"/ldap\", \"healthcheck\"]`, or remove the key for authentik's".to_string()
            } else {
                format!("give `{field}` at least {limit} item(s), or remove the key")
            }),
        ),
        ValidationErrorKind::Minimum { limit } | ValidationErrorKind::Maximum { limit } => out
            .push(
                Diagnostic::error(
                    "invalid-value",
                    format!(
                        "`{field}` is out of range: {} (limit {limit})",
                        scalar_text(instance)
                    ),
                )
                .at(at.value())
                .label("out of range")
                .maybe_hint(
                    pointer
                        .contains("/ports/")
                        .then(|| "ports are 1 to 65535".to_string()),
                ),
            ),
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // `Option<Enum>` fields are `anyOf [enum, null]`: report the branch that is not
            // about null, which says what was expected.
            let branches: Vec<&Vec<ValidationError<'static>>> = context
                .iter()
                .filter(|errs| !errs.iter().all(is_not_null))
                .collect();
            // An enum whose values carry descriptions is a `oneOf` of constants.
            let constants: Option<Vec<String>> = context
                .iter()
                .map(|errs| match errs.as_slice() {
                    [e] => match e.kind() {
                        ValidationErrorKind::Constant { expected_value } => {
                            expected_value.as_str().map(str::to_string)
                        }
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            if let Some(opts) = constants.filter(|o| !o.is_empty()) {
                out.push(enum_error(&field, instance, &opts, &at));
            } else if branches.len() == 1 {
                // `pull: 5` fails the enum's type and its values: the values say it alone.
                let not_allowed: Vec<&str> = branches[0]
                    .iter()
                    .filter(|e| matches!(e.kind(), ValidationErrorKind::Enum { .. }))
                    .map(|e| e.instance_path().as_str())
                    .collect();
                for e in branches[0] {
                    if matches!(e.kind(), ValidationErrorKind::Type { .. })
                        && not_allowed.contains(&e.instance_path().as_str())
                    {
                        continue;
                    }
                    translate(e, doc, schema, out);
                }
            } else {
                out.push(generic(err, &at));
            }
        }
        _ => out.push(generic(err, &at)),
    }
}

/// What to write for a mapping left without a value (`nas:`): `{}` where that is valid, else
/// the smallest mapping that is.
fn empty_mapping_hint(pointer: &str, field: &str) -> String {
    let segments: Vec<&str> = pointer.split('/').skip(1).collect();
    match segments.as_slice() {
        ["integrations", _] => format!(
            "`{field}:` has no value; an integration is `{field}: {{ local: true }}` (this machine's engine) or `{field}: {{ url: \"ssh://authentik@host:22\" }}`"
        ),
        // (A keypair's `key:` and `certificate:` may be null: unset.)
        ["outposts", _, "token"] => format!(
            "`{field}:` has no value; name where the secret is: `{field}: {{ env: VARIABLE }}` or `{field}: {{ file: PATH }}`"
        ),
        ["keypairs", _] => format!(
            "`{field}:` has no value; a keypair holds a `certificate`, a `key` or both, e.g. `{field}: {{ certificate: {{ file: PATH }} }}`"
        ),
        ["outposts", _] => format!(
            "`{field}:` has no value; an outpost needs `type`, `integration` and `token`, e.g. `{field}: {{ type: proxy, integration: local, token: {{ env: VARIABLE }} }}`"
        ),
        // Sections, `config`, `ports`: empty is fine.
        _ => format!("`{field}:` has no value; write `{field}: {{}}` or remove the line"),
    }
}

/// A word YAML 1.1 read as a boolean (`yes`, `No`, `ON`, `y`, ...), which YAML 1.2 reads
/// as text: the word as written and the boolean it meant.
fn yaml11_boolean(text: &str) -> Option<(&str, bool)> {
    match text.to_ascii_lowercase().as_str() {
        "yes" | "y" | "on" => Some((text, true)),
        "no" | "n" | "off" => Some((text, false)),
        _ => None,
    }
}

fn enum_error(field: &str, instance: &Value, opts: &[String], at: &Origin) -> Diagnostic {
    let list = crate::render::code_list(opts);
    let given = scalar_text(instance);
    let shown = if instance.is_string() {
        format!("`{given}`")
    } else {
        found(instance)
    };
    let hint = did_you_mean(&given, opts.iter().map(String::as_str)).or_else(|| {
        let first = opts.first()?;
        instance
            .is_null()
            .then(|| format!("`{field}:` has no value; write one of them, e.g. `{field}: {first}`"))
    });
    Diagnostic::error(
        "invalid-value",
        format!("`{field}` must be one of {list}; found {shown}"),
    )
    .at(at.value())
    .label("not an allowed value")
    .maybe_hint(hint)
}

fn generic(err: &ValidationError<'_>, at: &Origin) -> Diagnostic {
    Diagnostic::error("schema", err.to_string()).at(at.value())
}

fn is_source_field(field: &str) -> bool {
    matches!(field, "token" | "key" | "certificate")
}

/// The last segment of a pointer, as a user reads it; `the document` for the root.
/// The name of the value at `pointer` for a message: its key, or `list[i]` for a list item.
fn field_name(doc: &Value, pointer: &str) -> String {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return "document".to_string();
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer(parent) {
        Some(Value::Array(_)) => format!("{}[{last}]", field_name(doc, parent)),
        _ => last,
    }
}

fn type_name(t: &str) -> &'static str {
    match t {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "true or false",
        "null" => "empty",
        _ => "a value",
    }
}

fn found(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("number `{n}`"),
        Value::String(s) => format!("string `{}`", truncate(s)),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => truncate(s),
        other => truncate(&other.to_string()),
    }
}

/// User text for a message: at most 60 characters, control characters escaped (`\t`,
/// `\u001b`) so that none reaches a terminal, a log or a pull-request comment as it is.
fn truncate(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(256));
    for c in s.chars().take(60) {
        if c.is_control() {
            out.push_str(&crate::engine::escaped_control(c));
        } else {
            out.push(c);
        }
    }
    if s.chars().count() > 60 {
        out.push('…');
    }
    out
}

/// The schema object a keyword failed in: the schema path minus its last segment, following
/// `$ref`s into `$defs`.
fn schema_at<'a>(schema: &'a Value, schema_path: &str) -> Option<&'a Value> {
    let mut node = schema;
    let segments: Vec<&str> = schema_path.split('/').skip(1).collect();
    let Some((_, parents)) = segments.split_last() else {
        return Some(node);
    };
    for seg in parents {
        node = deref(schema, node);
        let seg = seg.replace("~1", "/").replace("~0", "~");
        node = match node {
            Value::Object(m) => m.get(&seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(deref(schema, node))
}

fn deref<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    let mut node = node;
    for _ in 0..8 {
        match node.get("$ref").and_then(Value::as_str) {
            Some(r) => match r.strip_prefix("#").and_then(|p| root.pointer(p)) {
                Some(n) => node = n,
                None => return node,
            },
            None => return node,
        }
    }
    node
}

fn known_keys(schema: &Value, schema_path: &str) -> Vec<String> {
    schema_at(schema, schema_path)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The first sentence of a property's description, for a hint.
/// What `property` of the object at `schema_path` is for: its own description (that of the
/// type it refers to only when it has none), with the values it takes when it is an enum.
fn describe(schema: &Value, schema_path: &str, property: &str) -> Option<String> {
    let prop = schema_at(schema, schema_path)?
        .get("properties")?
        .get(property)?;
    let target = deref(schema, prop);
    let text = first_sentence(prop).or_else(|| first_sentence(target))?;
    let values: Vec<&str> = target
        .get("enum")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Some(if values.is_empty() {
        text
    } else {
        format!(
            "{}: one of {}.",
            text.trim_end_matches('.'),
            crate::render::code_list(values)
        )
    })
}

/// What the value whose keyword at `schema_path` failed is: the description of the schema
/// the keyword is in, else of the property that led there (`evaluation_path`, through its
/// `$ref`s and `anyOf` branches: a type used only by described properties has none of its
/// own in the schema).
fn describe_at(schema: &Value, schema_path: &str, evaluation_path: &str) -> Option<String> {
    // schema_path ends in the failing keyword; its parent is the property's schema.
    if let Some(d) = schema_at(schema, schema_path).and_then(first_sentence) {
        return Some(d);
    }
    let segments: Vec<&str> = evaluation_path.split('/').skip(1).collect();
    let (_, parents) = segments.split_last()?;
    for end in (1..=parents.len()).rev() {
        let prefix = &parents[..end];
        if let Some(d) = node_at(schema, prefix).and_then(first_sentence) {
            return Some(d);
        }
        // Not past the property itself: its parent object's description is no answer.
        if prefix.len() >= 2 && prefix[prefix.len() - 2] == "properties" {
            return None;
        }
    }
    None
}

/// The node at `segments` of an evaluation path (a `$ref` segment follows the reference).
fn node_at<'a>(schema: &'a Value, segments: &[&str]) -> Option<&'a Value> {
    let mut node = schema;
    for seg in segments {
        if *seg == "$ref" {
            node = deref(schema, node);
            continue;
        }
        let seg = seg.replace("~1", "/").replace("~0", "~");
        node = match node {
            Value::Object(m) => m.get(&seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

fn first_sentence(node: &Value) -> Option<String> {
    let d = node.get("description")?.as_str()?.replace('\n', " ");
    let end = d.find(". ").map(|i| i + 1).unwrap_or(d.len());
    Some(d[..end].to_string())
}

/// A key that is valid one level up or down (an authentik setting written beside `config:`
/// instead of inside it, a per-outpost key under `defaults:`, ...): where it goes.
fn misplaced_key_hint(schema: &Value, key: &str, pointer: &str) -> Option<String> {
    let keys_of = |def: &str| -> Vec<String> {
        schema
            .pointer(&format!("/$defs/{def}/properties"))
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    };
    // authentik's Kubernetes settings are keys of its settings too (`patternProperties`).
    let kubernetes = key.starts_with("kubernetes_");
    let has = |def: &str| {
        keys_of(def).iter().any(|k| k == key)
            || (kubernetes && matches!(def, "OutpostConfig" | "Defaults"))
    };
    let segments: Vec<&str> = pointer.split('/').skip(1).collect();
    let here = match segments.as_slice() {
        [] => "root",
        ["defaults"] => "defaults",
        ["outposts", _] => "outpost",
        ["outposts", _, "config"] => "config",
        _ => return None,
    };
    let per_set_only = has("Defaults") && !has("OutpostConfig") && !has("Outpost");
    let hint = match here {
        "outpost" | "root" if kubernetes => format!(
            "`{key}` is one of authentik's outpost settings (a Kubernetes one, ignored on Docker): it goes under {}, or remove it",
            if here == "root" {
                "`defaults:`"
            } else {
                "this outpost's `config:`"
            }
        ),
        "outpost" if has("OutpostConfig") => format!(
            "`{key}` is one of authentik's outpost settings: put it under this outpost's `config:` (or under `defaults:` for every outpost)"
        ),
        "outpost" | "config" if per_set_only => {
            format!("`{key}` is set once for the whole set, under `defaults:`")
        }
        "config" if has("Outpost") => {
            format!("`{key}` belongs to the outpost itself, beside `config:`, not inside it")
        }
        "defaults" if key == "config" => {
            "`defaults:` takes authentik's outpost settings directly: move them up out of `config:`"
                .to_string()
        }
        "defaults" if has("Outpost") => {
            format!("`{key}` is set per outpost, not under `defaults:`")
        }
        // A misspelt section (`integration:`) is a typo, not a misplaced key.
        "root" if schema_top_level_close(schema, key) => return None,
        "root" if has("Defaults") => format!("`{key}` goes under `defaults:`"),
        "root" if has("Outpost") => {
            format!("`{key}` is set per outpost, under `outposts:` NAME")
        }
        _ => return None,
    };
    Some(hint)
}

fn schema_top_level_close(schema: &Value, key: &str) -> bool {
    let top = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect::<Vec<_>>())
        .unwrap_or_default();
    did_you_mean(key, top.into_iter()).is_some()
}

fn unknown_key_hint(key: &str, pointer: &str, known: &[String]) -> Option<String> {
    if key == "<<" {
        return Some(
            "YAML merge keys are not supported; put shared settings under `defaults:`".into(),
        );
    }
    if key == "value" && (pointer.ends_with("/token") || pointer.ends_with("/key")) {
        return Some("secrets are never written into a manifest; use `{ env: VARIABLE }` or `{ file: path }`".into());
    }
    if key.starts_with("kubernetes_") {
        return Some("authentik's Kubernetes settings (`kubernetes_*`) are accepted in an outpost's `config:` and in `defaults:`, and have no effect on Docker".into());
    }
    did_you_mean(key, known.iter().map(String::as_str)).or_else(|| {
        (!known.is_empty()).then(|| format!("known keys here: {}", crate::render::code_list(known)))
    })
}

/// "did you mean `x`?" for the closest candidate, when one is close.
pub fn did_you_mean<'a>(given: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    closest(given, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The candidate closest to `given`, when one is close.
fn closest<'a>(given: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let given_l = given.to_lowercase();
    candidates
        .map(|c| (strsim::jaro_winkler(&given_l, &c.to_lowercase()), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// What a pattern from the model means, and how to write a good value.
fn pattern_meaning(pattern: &str) -> (&'static str, String) {
    match pattern {
        p if p == model::UUID_PATTERN => (
            "a UUID",
            "32 hex digits, dashes allowed: the outpost's UUID in authentik".into(),
        ),
        p if p == model::OUTPOST_NAME_PATTERN => (
            "an outpost name",
            "write the name without control characters (tabs, line breaks, escapes), as authentik shows it".into(),
        ),
        p if p == model::REF_NAME_PATTERN => (
            "a valid name",
            "names start with a letter or digit and use ASCII letters, digits, `.`, `_` and `-` (at most 63)".into(),
        ),
        p if p == model::PROJECT_PATTERN => (
            "a valid project name",
            "lowercase letters, digits, `.`, `_` and `-`, at most 63, starting with a letter or digit".into(),
        ),
        p if p == model::LABEL_KEY_PATTERN => (
            "a valid label key",
            "label keys use letters, digits, `.`, `_`, `/` and `-`, e.g. `com.example.team`".into(),
        ),
        p if p == model::CONTAINER_PORT_PATTERN => (
            "a container port",
            "write the container port with its protocol, e.g. `9000/tcp`".into(),
        ),
        p if p == model::HOST_PORT_PATTERN => (
            "a host port binding",
            "write `PORT`, `IP:PORT` or `[IPv6]:PORT`, e.g. `127.0.0.1:9000`".into(),
        ),
        p if p == model::ENGINE_URL_PATTERN => (
            "a Docker engine URL",
            "use unix://, http://, https://, tcp:// or ssh://, e.g. `ssh://authentik@host:22`".into(),
        ),
        p if p == model::VERSION_PATTERN => (
            "an authentik version",
            "write the version of your authentik server, e.g. `2026.8.0`".into(),
        ),
        p if p == model::ENV_NAME_PATTERN => (
            "an environment variable name",
            "a variable name uses letters, digits and `_`, and does not start with a digit".into(),
        ),
        p if p == model::HOST_KEY_PATTERN => (
            "an SSH public key",
            "paste the key as `ssh-keyscan HOST` prints it, without the host name: `ssh-ed25519 AAAA...`".into(),
        ),
        p if p.starts_with("^([hH][tT][tT][pP][sS]?://.+)?$") => (
            "an http(s) URL",
            "write the full URL, e.g. `https://auth.example.com`".into(),
        ),
        p if p == model::EXTERNAL_HOST_PATTERN => (
            "an http(s) URL",
            "write the full URL, e.g. `https://app.example.com`".into(),
        ),
        other => ("valid", format!("the value must match `{other}`")),
    }
}
