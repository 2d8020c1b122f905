//! Any bytes as a manifest file: load, validate and render the diagnostics as `outpostctl
//! validate` does. Nothing may panic, hang or allocate without bound; every diagnostic must
//! render (its position must lie in its file).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpostctl::manifest::yaml::{self, Limits};
use outpostctl::render::{self, Style};

/// One temp directory for the whole run; the input is rewritten into the same file.
fn input_path() -> &'static PathBuf {
    static PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PATH
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("fuzz.yaml");
            (dir, path)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = yaml::parse(text, Limits::default());
    }
    let path = input_path();
    std::fs::write(path, data).expect("write the input");
    let outcome = outpostctl::validate::validate(std::slice::from_ref(path));
    let _ = render::diagnostics::human(&outcome.diagnostics, Style::plain());
    let _ = render::diagnostics::json(&outcome.diagnostics);
});
