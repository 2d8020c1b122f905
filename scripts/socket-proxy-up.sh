#!/usr/bin/env bash
# Run the least-privilege docker-socket-proxy (haproxy, tests/proxy/haproxy.cfg) on
# 127.0.0.1:2375 in front of /var/run/docker.sock, and the same without `info` on
# 127.0.0.1:2385. Idempotent: leaves a running proxy with the
# same config alone, restarts it when the config changed.
# Use it as DOCKER_HOST=tcp://127.0.0.1:2375 (docker CLI) or http://127.0.0.1:2375 (outpostctl).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CONFIG="$OUTPOSTCTL_ROOT/tests/proxy/haproxy.cfg"
PIDFILE=/tmp/outpostctl-socket-proxy.pid
STAMP=/tmp/outpostctl-socket-proxy.config-sha
LOG=/tmp/outpostctl-socket-proxy.log
URL=http://127.0.0.1:2375

run_once engine-up.sh
ensure_pkgs haproxy curl

answers() { curl -fsS -m 3 -o /dev/null "$URL/_ping" 2>/dev/null; }
want=$(sha256sum "$CONFIG" | cut -d' ' -f1)

if pid_alive "$PIDFILE" haproxy; then
  if [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && answers; then
    exit 0
  fi
  log "socket proxy config changed or proxy not answering; restarting it"
  stop_pidfile "$PIDFILE" haproxy
fi
for port in 2375 2385; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    die "127.0.0.1:$port is taken by a process this script did not start; stop it first"
  fi
done
out=$(haproxy -c -f "$CONFIG" 2>&1) || die "invalid $CONFIG:
$out"
log "starting haproxy socket proxy on 127.0.0.1:2375 (log: $LOG)"
setsid haproxy -db -f "$CONFIG" >"$LOG" 2>&1 </dev/null &
record_pid "$PIDFILE" $!
echo "$want" >"$STAMP"
if ! wait_for 20 "socket proxy /_ping" answers; then
  tail -n 20 "$LOG" >&2 || true
  die "the socket proxy on 127.0.0.1:2375 does not answer"
fi
pid_alive "$PIDFILE" haproxy || die "haproxy exited after it started; see $LOG"
# The proxy must refuse what is not on the list.
code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$URL/v1.41/networks")
[ "$code" = 403 ] || die "socket proxy allowed GET /networks (HTTP $code)"
code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:2385/v1.41/info")
[ "$code" = 403 ] || die "socket proxy on 127.0.0.1:2385 allowed GET /info (HTTP $code)"
log "socket proxy ready on 127.0.0.1:2375 (and without info on 127.0.0.1:2385)"
