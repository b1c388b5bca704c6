#!/usr/bin/env bash
# Make the Dockerfile's base image available to the local Docker engine.
#
#   hack/image/seed-base.sh [IMAGE]        IMAGE defaults to debian:bookworm-slim
#
# 1. Already in the engine's image store?  Done.
# 2. `docker pull IMAGE` (skipped with LVS_IMAGE_NO_PULL=1).  Done when a registry answers.
# 3. No registry reachable: build the same thing from Debian's own archive. `debootstrap
#    --variant=minbase` makes a bookworm root file system, it is slimmed the way the official
#    slim images are (dpkg path-excludes for docs/man/locales, apt caches cleaned), and
#    `docker import` stores it under IMAGE. An ordinary `docker build` then finds it locally.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SUITE (bookworm).
set -euo pipefail

image="${1:-debian:bookworm-slim}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${DEBIAN_SUITE:-bookworm}"
say() { echo "[seed-base] $*" >&2; }

if ! docker info >/dev/null 2>&1; then
    say "no Docker engine answers ('docker info' failed):"
    docker info 2>&1 | tail -3 >&2 || true
    say "install and start one: apt-get install -y docker.io && dockerd &"
    exit 1
fi

if docker image inspect "$image" >/dev/null 2>&1; then
    say "$image is already in the local image store"
    exit 0
fi

if [[ "${LVS_IMAGE_NO_PULL:-0}" != 1 ]]; then
    say "trying: docker pull $image"
    if timeout "${LVS_IMAGE_PULL_TIMEOUT:-60}" docker pull -q "$image" >/dev/null 2>&1; then
        say "pulled $image"
        exit 0
    fi
    say "no registry reachable for $image; seeding it from the Debian archive instead"
fi

if [[ "$(id -u)" != 0 ]]; then
    say "debootstrap needs root; run this as root (or pull $image on a machine with a registry)"
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/lvs-seed-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

# What the official slim images exclude, set before packages unpack so nothing lands there.
mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG

say "debootstrap --variant=minbase $suite from $mirror (a few minutes)"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 1
}

cat >"$root/etc/apt/sources.list" <<SRC
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SRC
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
cat >"$root/etc/apt/apt.conf.d/docker-no-languages" <<'CFG'
Acquire::Languages "none";
CFG
# Drop what minbase left behind that a container never uses.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/log/* "$root"/usr/share/doc/*/changelog* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/tmp/* "$root"/var/tmp/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
: >"$root/etc/machine-id"

say "docker import -> $image"
tar --numeric-owner -C "$root" -c . | docker import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL io.lvs-operator.seeded-by=debootstrap io.lvs-operator.suite=$suite" \
    - "$image" >/dev/null
say "seeded $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}')"
