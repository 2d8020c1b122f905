#!/usr/bin/env bash
# Build the fake outpost image (tests/images/outpost) and tag it under every name tests use.
# Idempotent: skips the build when the images carry the current context hash label.
#
#   outpostctl-test/outpost:latest (= :v1)   version 1
#   ghcr.io/goauthentik/{proxy,ldap,radius,rac}:2026.8.0   same image as :latest
#   outpostctl-test/outpost:v2               version 2 (different image id and /version)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

AUTHENTIK_VERSION=2026.8.0
REPO=outpostctl-test/outpost
V1_TAGS=("$REPO:latest" "$REPO:v1")
for t in proxy ldap radius rac; do V1_TAGS+=("ghcr.io/goauthentik/$t:$AUTHENTIK_VERSION"); done
V2_TAGS=("$REPO:v2")

run_once engine-up.sh
ensure_pkgs busybox-static

ctx="$OUTPOSTCTL_ROOT/tests/images/outpost"
if ! cmp -s /bin/busybox "$ctx/busybox"; then
  cp /bin/busybox "$ctx/busybox.tmp" && chmod 755 "$ctx/busybox.tmp" && mv "$ctx/busybox.tmp" "$ctx/busybox"
fi
chmod 755 "$ctx/busybox" "$ctx/rootfs/outpost"
# Content hash of the whole build context (names, modes, contents), independent of mtimes.
hash=$(tar -C "$ctx" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . | sha256sum | cut -c1-16)

label_of() {
  docker_q image inspect --format '{{index .Config.Labels "io.outpostctl.test.context-hash"}}' "$1" 2>/dev/null || true
}
id_of() { docker_q image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# build VERSION TAG... : build unless the first tag already has this context hash; tag all.
build() {
  local version=$1 main=$2 id out
  shift
  if [ "$(label_of "$main")" != "$hash" ]; then
    log "building $main (version $version, context $hash)"
    out=$(docker_q build -q --build-arg "OUTPOST_VERSION=$version" --build-arg "CONTEXT_HASH=$hash" \
      -t "$main" "$ctx" 2>&1) || die "docker build of $main failed:
$out"
    built=1
  fi
  id=$(id_of "$main")
  [ -n "$id" ] || die "image $main missing after build"
  for t in "$@"; do
    [ "$(id_of "$t")" = "$id" ] || docker_q tag "$id" "$t"
  done
}

built=
build 1 "${V1_TAGS[@]}"
build 2 "${V2_TAGS[@]}"
[ "$(id_of "${V1_TAGS[0]}")" != "$(id_of "${V2_TAGS[0]}")" ] || die "v1 and v2 images are identical"
# Earlier builds of these images, now untagged; only images with this project's label.
[ -z "$built" ] || docker_q image prune -f --filter label=io.outpostctl.test.image=outpost >/dev/null || true
log "images ready: ${V1_TAGS[*]} ${V2_TAGS[*]}"
