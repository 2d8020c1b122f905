#!/usr/bin/env bash
# The engine's own cost of the one request a no-change plan makes: `GET /containers/json`.
# No outpostctl involved. For N containers (default 500) created twice, once with the image
# given by name (as authentik and outpostctl create them) and once by image id, it times the
# engine's answer to a list of each set (curl on the socket, median of 15) and prints a
# Markdown table. Docker re-resolves the image reference of every listed container whose image
# was not given by id (it reads that image's config from the image store), so the by-name list
# costs more per container: that part is the engine's floor for a plan of many outposts.
# Then it lists the by-name set as two halves at once, to show that splitting does not help.
#
#   scripts/bench-engine-list.sh [N]          # needs scripts/test-deps.sh (engine, images)
#
# The containers are only created, never started, and are removed at the end (also when
# interrupted). They carry the label `outpostctl-bench-engine`; nothing else is touched.
set -euo pipefail

N=${1:-500}
RUNS=15
SOCK=${DOCKER_SOCK:-/var/run/docker.sock}
IMAGE=ghcr.io/goauthentik/rac:2026.8.0
LABEL=outpostctl-bench-engine

api() { curl -sf --unix-socket "$SOCK" "$@"; }
cleanup() {
  docker ps -aq --filter "label=$LABEL" | xargs -r -n 20 -P 2 docker rm -f >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

ID=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null) ||
  { echo "error: $IMAGE is not on the engine: run scripts/test-deps.sh first" >&2; exit 1; }
cleanup

create() { # kind image
  seq 1 "$N" | xargs -P 4 -I{} curl -sf --unix-socket "$SOCK" -o /dev/null \
    -H 'Content-Type: application/json' \
    -d "{\"Image\":\"$2\",\"Labels\":{\"$LABEL\":\"$1\"}}" \
    "http://engine/containers/create?name=$LABEL-$1-{}"
}
create name "$IMAGE"
create id "$ID"

# The filter `label=outpostctl-bench-engine=KIND`, URL-encoded.
filter() { printf '%%7B%%22label%%22%%3A%%5B%%22%s%%3D%s%%22%%5D%%7D' "$LABEL" "$1"; }
median_ms() { # kind
  local url
  url="http://engine/containers/json?all=1&filters=$(filter "$1")"
  for _ in $(seq "$RUNS"); do
    api -o /dev/null -w '%{time_total}\n' "$url"
  done | sort -n | awk '{ v[NR] = $1 } END { printf "%.1f", v[int((NR + 1) / 2)] * 1000 }'
}
bytes() { api "http://engine/containers/json?all=1&filters=$(filter "$1")" | wc -c; }

echo "engine list: $N created containers per set, $(nproc) CPUs, $(docker version -f '{{.Server.Version}}'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| containers created with the image given by | listed | response (KB) | engine's list, median of $RUNS (ms) | per container (µs) |"
echo "|---|---:|---:|---:|---:|"
# Interleaved, twice, so that a change in the machine's load shows as disagreeing rows.
for _ in 1 2; do
  for kind in name id; do
    n=$(api "http://engine/containers/json?all=1&filters=$(filter "$kind")" | grep -o '"Id"' | wc -l)
    ms=$(median_ms "$kind")
    kb=$(($(bytes "$kind") / 1024))
    label=$([ "$kind" = name ] && echo "name (\`$IMAGE\`)" || echo "id (\`sha256:…\`)")
    echo "| $label | $n | $kb | $ms | $(awk -v ms="$ms" -v n="$n" 'BEGIN { printf "%.0f", ms * 1000 / n }') |"
  done
done

# Would splitting the list help? The by-name set listed as two halves at once (a name filter on
# the last digit; the daemon filters by name before it resolves images), wall time of both,
# two curl processes started per round.
half() { printf '%%7B%%22label%%22%%3A%%5B%%22%s%%3Dname%%22%%5D%%2C%%22name%%22%%3A%%5B%%22%s%%24%%22%%5D%%7D' "$LABEL" "$1"; }
A="http://engine/containers/json?all=1&filters=$(half '%5B0-4%5D')"
B="http://engine/containers/json?all=1&filters=$(half '%5B%5E0-4%5D')"
na=$(api "$A" | grep -o '"Id"' | wc -l)
nb=$(api "$B" | grep -o '"Id"' | wc -l)
split_ms=$(for _ in $(seq "$RUNS"); do
  s=$(date +%s%N)
  api -o /dev/null "$A" &
  api -o /dev/null "$B"
  wait
  e=$(date +%s%N)
  echo $(((e - s) / 1000))
done | sort -n | awk '{ v[NR] = $1 } END { printf "%.1f", v[int((NR + 1) / 2)] / 1000 }')
one_ms=$(median_ms name)
echo
echo "| the by-name set listed as | requests | listed | wall, median of $RUNS (ms) |"
echo "|---|---:|---:|---:|"
echo "| one list | 1 | $N | $one_ms |"
echo "| two halves at once | 2 | $na + $nb | $split_ms |"
