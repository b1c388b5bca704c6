#!/usr/bin/env bash
# Build the lvs-operator image with the local Docker engine.
#
#   hack/image/build.sh [IMAGE]         IMAGE defaults to lvs-operator:dev (env IMAGE too)
#
# 1. hack/image/seed-base.sh makes the Dockerfile's base image available (pulled, or made
#    with debootstrap + docker import when no registry is reachable).
# 2. The host's locally added CA certificates (/usr/local/share/ca-certificates/*.crt, e.g. a
#    TLS-intercepting proxy's) go into the build stage only, so pip can reach PyPI.
# 3. An ordinary `docker build`; the image's size is printed at the end.
#
# Environment: BASE_IMAGE (default debian:bookworm-slim), DOCKER_BUILD_ARGS (extra args),
# LVS_IMAGE_EXTRA_CA=0 to skip step 2.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
image="${1:-${IMAGE:-lvs-operator:dev}}"
base="${BASE_IMAGE:-debian:bookworm-slim}"
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml" | head -1)"
say() { echo "[image] $*" >&2; }

if ! command -v docker >/dev/null 2>&1; then
    say "docker is not installed; install an engine: apt-get install -y docker.io && dockerd &"
    exit 1
fi
"$here/seed-base.sh" "$base"

ca_dir="$here/ca"
cleanup() { find "$ca_dir" -maxdepth 1 -name '*.crt' -delete 2>/dev/null || true; }
trap cleanup EXIT
cleanup
if [[ "${LVS_IMAGE_EXTRA_CA:-1}" == 1 ]]; then
    shopt -s nullglob
    extra=(/usr/local/share/ca-certificates/*.crt)
    if ((${#extra[@]})); then
        say "build stage trusts the host's extra CAs: ${extra[*]##*/}"
        cp "${extra[@]}" "$ca_dir/"
    fi
fi

say "docker build -t $image (base $base)"
start=$(date +%s)
# shellcheck disable=SC2086
docker build --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" \
    -t "$image" ${DOCKER_BUILD_ARGS:-} "$repo"
bytes="$(docker image inspect -f '{{.Size}}' "$image")"
say "built $image in $(($(date +%s) - start)) s: $(awk -v b="$bytes" 'BEGIN{printf "%.1f MB", b/1e6}')"
docker run --rm "$image" --version >/dev/null && say "smoke test: '$image --version' runs"
