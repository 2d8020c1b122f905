//! `outpostctl schema`: the JSON Schema editors use.

use super::{Exit, Printer};

/// The schema text, exactly as checked in at `schemas/outpostctl.schema.json`.
pub fn text() -> String {
    let schema = crate::manifest::model::schema();
    // Serializing a serde_json::Value cannot fail.
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

pub fn run(p: &Printer) -> Exit {
    p.out(&text());
    Exit::Success
}
