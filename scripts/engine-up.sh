#!/usr/bin/env bash
# Ensure a Docker engine answers on the local unix socket. Idempotent: exits at once when
# `docker info` already works; otherwise installs docker.io if needed and starts dockerd.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

engine_answers() { timeout 20 docker info >/dev/null 2>&1; }

engine_answers && exit 0

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  ensure_pkgs "${ENGINE_PKGS[@]}"
fi

# (no procps on a minimal Debian: look at /proc directly)
if grep -qx dockerd /proc/[0-9]*/comm 2>/dev/null; then
  log "dockerd runs but does not answer yet; waiting"
else
  # A killed dockerd leaves its pid file behind and a new one refuses to start.
  rm -f /var/run/docker.pid
  log "starting dockerd (log: /tmp/dockerd.log)"
  setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &
fi

if ! wait_for 60 "docker info" engine_answers; then
  log "last lines of /tmp/dockerd.log:"
  tail -n 30 /tmp/dockerd.log >&2 || true
  die "no Docker engine answers on /var/run/docker.sock. Start one as root with:
  rm -f /var/run/docker.pid; setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &
then check \`docker info\`. A dockerd that runs but never answers may be hung
(moby#42545): stop that dockerd and start it again."
fi
log "engine up: $(docker_q version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
