#!/usr/bin/env bash
# The main job on a fresh machine: start a Docker engine, build outpostctl, and deploy the
# minimal example's proxy outpost with it: validate, plan, apply, plan again (no changes),
# status. No registry is reachable here, so the outpost image is a local stand-in built by
# scripts/build-test-images.sh; on a real host it is pulled from ghcr.io.
# Pass --keep to leave the outpost running; otherwise it is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/engine-up.sh
scripts/build-test-images.sh
cargo build --release --quiet
bin=./target/release/outpostctl
# A stand-in token; on a real host it comes from authentik (Outposts > Deployment info).
export AK_PROXY_TOKEN="${AK_PROXY_TOKEN:-demo-token-not-a-secret}"
set -x
$bin validate examples/minimal
$bin plan examples/minimal --diff
$bin apply examples/minimal --auto-approve
$bin plan examples/minimal --detailed-exitcode
$bin status examples/minimal
set +x
if [ "${1:-}" != "--keep" ]; then
  ids=$(docker ps -aq --filter label=outpostctl.project=minimal)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
  echo "demo container removed (run with --keep to leave it running)"
fi
