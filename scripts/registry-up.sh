#!/usr/bin/env bash
# Run a real registry (Debian's docker-registry) on 127.0.0.1:5000 and push the test images:
#   127.0.0.1:5000/outpostctl/outpost:1                    = outpostctl-test/outpost:latest
#   127.0.0.1:5000/outpostctl/outpost:2                    = outpostctl-test/outpost:v2
#   127.0.0.1:5000/goauthentik/{proxy,ldap,radius,rac}:2026.8.0 = outpostctl-test/outpost:latest
# (the last ones serve fallback tests with a base image template on the local registry).
# The pushed tags are removed locally again, so a test's pull really pulls.
# Idempotent: leaves a running registry alone and pushes only what the registry lacks.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

REGISTRY=127.0.0.1:5000
CONFIG="$OUTPOSTCTL_ROOT/tests/images/registry.yml"
PIDFILE=/tmp/outpostctl-registry.pid
STAMP=/tmp/outpostctl-registry.config-sha
LOG=/tmp/outpostctl-registry.log
AUTHENTIK_VERSION=2026.8.0

run_once build-test-images.sh
ensure_pkgs docker-registry curl

answers() { curl -fsS -m 3 -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null; }
want=$(sha256sum "$CONFIG" | cut -d' ' -f1)

if pid_alive "$PIDFILE" docker-registry && [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  log "registry config changed; restarting it"
  stop_pidfile "$PIDFILE" docker-registry
fi
if ! pid_alive "$PIDFILE" docker-registry && answers; then
  log "a registry not started by this script answers on $REGISTRY; using it"
elif ! answers; then
  if ! pid_alive "$PIDFILE" docker-registry; then
    if (exec 3<>"/dev/tcp/127.0.0.1/5000") 2>/dev/null; then
      die "127.0.0.1:5000 is taken by something that is not a registry"
    fi
    mkdir -p /tmp/outpostctl-registry
    log "starting docker-registry on $REGISTRY (log: $LOG)"
    setsid docker-registry serve "$CONFIG" >"$LOG" 2>&1 </dev/null &
    record_pid "$PIDFILE" $!
    echo "$want" >"$STAMP"
  fi
  if ! wait_for 30 "registry /v2/" answers; then
    tail -n 20 "$LOG" >&2 || true
    die "the registry on $REGISTRY does not answer"
  fi
  pid_alive "$PIDFILE" docker-registry || die "docker-registry exited after it started; see $LOG"
fi

# push SOURCE NAME:TAG : push SOURCE unless the registry already holds it under NAME:TAG.
push() {
  local src=$1 dst="$REGISTRY/$2" id have out
  id=$(docker_q image inspect --format '{{.Id}}' "$src")
  have=$(curl -fsS -m 10 -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REGISTRY/v2/${2%%:*}/manifests/${2##*:}" 2>/dev/null |
    tr -d ' \n\t' | grep -o '"config":{[^}]*}' | grep -o 'sha256:[0-9a-f]*' || true)
  [ "$have" = "$id" ] && return 0
  log "pushing $src as $dst"
  docker_q tag "$src" "$dst"
  out=$(docker_q push "$dst" 2>&1) || die "docker push $dst failed:
$out"
  docker_q rmi "$dst" >/dev/null
}

push outpostctl-test/outpost:latest outpostctl/outpost:1
push outpostctl-test/outpost:v2 outpostctl/outpost:2
for t in proxy ldap radius rac; do push outpostctl-test/outpost:latest "goauthentik/$t:$AUTHENTIK_VERSION"; done
log "registry ready on $REGISTRY"
