#!/usr/bin/env bash
# The test command: set up what the tests need (scripts/test-deps.sh), then `cargo test`.
# Arguments go to cargo test, e.g. scripts/test.sh --test e2e -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
exec cargo test "$@"
