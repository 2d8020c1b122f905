#!/usr/bin/env bash
# The main job on a fresh machine: build outpostctl and run it on the minimal example.
# The token is a stand-in; on a real host it comes from authentik (Outposts > Deployment info).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
export AK_PROXY_TOKEN="${AK_PROXY_TOKEN:-demo-token-not-a-secret}"
./target/release/outpostctl validate examples/minimal
