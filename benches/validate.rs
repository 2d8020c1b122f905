//! Placeholder replaced by the validate benchmark.
fn main() {}
