#!/usr/bin/env bash
# Build the lvs-operator image with the local Docker engine.
#
#   hack/image/build.sh [IMAGE]         IMAGE defaults to lvs-operator:dev (env IMAGE too)
#
# 0. No Docker engine answers: hack/image/engine.sh starts Debian's (installed if need be).
# 1. hack/image/seed-base.sh makes the Dockerfile's base image available (pulled, or made
#    with debootstrap + docker import when no registry is reachable).
# 2. The host's locally added CA certificates (/usr/local/share/ca-certificates/*.crt, e.g. a
#    TLS-intercepting proxy's) go into the build stage only, so pip can reach PyPI.
# 3. An ordinary `docker build`, with the OCI labels source/revision/created from git
#    (hack/image/labels.py). When the engine has no default bridge network (as
#    hack/image/engine.sh starts it: --bridge=none, so it never touches the host's network),
#    the build's RUN steps use the host's network (`--network host`) to reach the archives.
#    The image's size is printed at the end.
#
# Environment: BASE_IMAGE (default debian:12.15-slim), DOCKER_BUILD_ARGS (extra args),
# LVS_IMAGE_EXTRA_CA=0 to skip step 2, LVS_IMAGE_SOURCE (the source label; default: the git
# remote origin when it is a URL), SOURCE_DATE_EPOCH (the created label; default: the commit's
# time).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
image="${1:-${IMAGE:-lvs-operator:dev}}"
base="${BASE_IMAGE:-debian:12.15-slim}"
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml" | head -1)"
say() { echo "[image] $*" >&2; }

# No engine answering: start Debian's (hack/image/engine.sh; LVS_IMAGE_START_ENGINE=0: don't).
if ! docker info >/dev/null 2>&1 && [[ "${LVS_IMAGE_START_ENGINE:-1}" == 1 ]]; then
    "$here/engine.sh" start
fi
"$here/seed-base.sh" "$base"

# Labels first: the CA certificates copied below would make the checkout look dirty.
labels="$(python3 "$here/labels.py" "$repo")"
label_args=()
while IFS='=' read -r key value; do
    say "label $key=$value"
    name="${key#org.opencontainers.image.}"  # source -> --build-arg SOURCE=...
    label_args+=(--build-arg "${name^^}=$value")
done <<<"$labels"
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

network_args=()
if ! docker network inspect bridge >/dev/null 2>&1; then
    say "the engine has no bridge network: the build's RUN steps use the host's (--network host)"
    network_args=(--network host)
fi

say "docker build -t $image (base $base)"
start=$(date +%s)
# shellcheck disable=SC2086
docker build --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" "${label_args[@]}" \
    "${network_args[@]}" -t "$image" ${DOCKER_BUILD_ARGS:-} "$repo"
bytes="$(docker image inspect -f '{{.Size}}' "$image")"
say "built $image in $(($(date +%s) - start)) s: $(awk -v b="$bytes" 'BEGIN{printf "%.1f MB", b/1e6}')"
docker run --rm "$image" --version >/dev/null && say "smoke test: '$image --version' runs"
