#!/usr/bin/env bash
# Install and start everything outpostctl's tests need, on a fresh Debian 12 machine as root.
# Idempotent and quick when all is in place. Leaves running (started with setsid):
#   dockerd (/var/run/docker.sock), registry 127.0.0.1:5000, socket proxy 127.0.0.1:2375.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_pkgs "${ENGINE_PKGS[@]}" docker-registry openssh-server haproxy stunnel4 busybox-static \
  openssl curl iproute2
command -v npm >/dev/null 2>&1 || ensure_pkgs nodejs npm

# yaml-language-server for the editor tests, pinned by tests/editor/package-lock.json.
editor="$OUTPOSTCTL_ROOT/tests/editor"
stamp="$editor/node_modules/.outpostctl-lock-sha"
if [ -f "$editor/package-lock.json" ]; then
  want=$(sha256sum "$editor/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] ||
    [ ! -x "$editor/node_modules/.bin/yaml-language-server" ]; then
    log "npm ci in tests/editor"
    (cd "$editor" && timeout 600 npm ci --no-audit --no-fund --ignore-scripts </dev/null) ||
      die "npm ci in tests/editor failed"
    echo "$want" >"$stamp"
  fi
else
  log "no tests/editor/package-lock.json: npm install (commit the lock file it writes)"
  (cd "$editor" && timeout 600 npm install --no-audit --no-fund --ignore-scripts </dev/null) ||
    die "npm install in tests/editor failed"
fi

run_once engine-up.sh
run_once build-test-images.sh
run_once registry-up.sh
run_once socket-proxy-up.sh
