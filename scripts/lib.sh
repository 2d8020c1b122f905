# shellcheck shell=bash disable=SC2034
# Shared helpers for the test-infrastructure scripts. Source it; do not run it.
# Every helper is idempotent and bounded in time.

# Paths shared by the scripts.
OUTPOSTCTL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export OUTPOSTCTL_ROOT
export DEBIAN_FRONTEND=noninteractive
# The legacy builder works with every client (20.10 from Debian, or newer without buildx).
export DOCKER_BUILDKIT=0

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ensure_pkgs PKG... : apt-get install the Debian packages that are not installed yet.
# `apt-get update` runs at most once per process tree (OUTPOSTCTL_APT_UPDATED is exported).
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}; run as root or install them"
  if [ -z "${OUTPOSTCTL_APT_UPDATED:-}" ]; then
    log "apt-get update"
    timeout 600 apt-get update -qq </dev/null >>/tmp/outpostctl-apt.log 2>&1 ||
      { tail -n 20 /tmp/outpostctl-apt.log >&2; die "apt-get update failed"; }
    export OUTPOSTCTL_APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]} (log: /tmp/outpostctl-apt.log)"
  timeout 1200 apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null \
    >>/tmp/outpostctl-apt.log 2>&1 ||
    { tail -n 20 /tmp/outpostctl-apt.log >&2; die "apt-get install ${missing[*]} failed"; }
}

# wait_for SECONDS DESCRIPTION CMD... : run CMD every 0.25 s until it succeeds or SECONDS pass
# (bounded in both tries and wall time, even when CMD itself is slow).
wait_for() {
  local secs=$1 what=$2 i end=$((SECONDS + $1))
  shift 2
  for ((i = 0; i < secs * 4 && SECONDS <= end; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  log "timed out after ${secs}s waiting for $what"
  return 1
}

# proc_start PID : the process's start time (clock ticks since boot), empty when it is gone.
proc_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) } # the command name may hold spaces; the fields after it do not
  # shellcheck disable=SC2086
  set -- $stat
  echo "${20}"
}

# record_pid PIDFILE PID : remember PID with its start time, so that a later run does not take
# another process that got the same PID (after a reboot with /tmp kept) for this one.
record_pid() { echo "$2 $(proc_start "$2")" >"$1"; }

# pid_alive PIDFILE [COMM] : true when PIDFILE names a live process, the one record_pid
# recorded. A file of the scripts before record_pid holds only a PID: it counts when that
# process's command name is COMM.
pid_alive() {
  local pid start
  [ -s "$1" ] || return 1
  read -r pid start <"$1" || true
  [ -n "$pid" ] || return 1
  if [ -z "$start" ]; then
    [ -n "${2:-}" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
    return
  fi
  [ "$(proc_start "$pid")" = "$start" ]
}

# stop_pidfile PIDFILE [COMM] : stop the process this project started (by its recorded id),
# bounded.
stop_pidfile() {
  local pid i
  pid_alive "$1" "${2:-}" || { rm -f "$1"; return 0; }
  read -r pid _ <"$1"
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  rm -f "$1"
}

# docker_q ARGS... : docker with a time limit, so a hung engine is an error, not a hang.
docker_q() { timeout "${DOCKER_CALL_TIMEOUT:-120}" docker "$@"; }

# The scripts always set up and use the local engine on the default unix socket
# (the socket proxy, registry pushes and test images all live there).
unset DOCKER_HOST DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH

# run_once SCRIPT : run scripts/SCRIPT unless this process tree already ran it successfully
# (test-deps.sh runs each setup script once; a script run alone still sets up what it needs).
run_once() {
  local var="OUTPOSTCTL_DONE_${1//[^A-Za-z0-9]/_}"
  [ -n "${!var:-}" ] && return 0
  "$OUTPOSTCTL_ROOT/scripts/$1"
  export "$var=1"
}

# Packages dockerd needs to run containers on a fresh Debian 12 (docker.io's useful recommends).
ENGINE_PKGS=(docker.io ca-certificates cgroupfs-mount apparmor)
