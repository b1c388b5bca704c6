#!/usr/bin/env bash
# Make the Dockerfile's base image available to the local Docker engine.
#
#   hack/image/seed-base.sh [IMAGE]        IMAGE defaults to debian:12.15-slim
#
# The base is pinned by Debian point release: the tag names it (debian:12.15-slim is Docker
# Hub's name for Debian 12.15's slim image), and a seeded one is checked against it.
# 1. Already in the engine's image store?  Done.
# 2. `docker pull IMAGE` (skipped with LVS_IMAGE_NO_PULL=1).  Done when a registry answers.
# 3. No registry reachable: build the same thing from Debian's own archive. `debootstrap
#    --variant=minbase` makes a bookworm root file system, it is slimmed the way the official
#    slim images are (dpkg path-excludes for docs/man/locales, apt caches cleaned), and
#    `docker import` stores it under IMAGE. An ordinary `docker build` then finds it locally.
#    The archive's dists/SUITE/Release must say `Version: 12.15` (the tag's point release),
#    else this fails instead of seeding something else under that name
#    (LVS_IMAGE_BASE_ANY_POINT=1 seeds whatever the archive has, and says so in a label).
#    The seeded image is labelled with the Release file's Version and Date.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian); the suite follows from
# the tag's major version (12: bookworm).
set -euo pipefail

image="${1:-debian:12.15-slim}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
say() { echo "[seed-base] $*" >&2; }
point="$(sed -n 's/^debian:\([0-9][0-9]*\.[0-9][0-9]*\)-slim$/\1/p' <<<"$image")"
case "${point%%.*}" in
    12) suite=bookworm ;;
    13) suite=trixie ;;
    *) suite="" ;;
esac

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

if [[ -z "$suite" ]]; then
    say "cannot seed $image: only debian:<12|13>.<point>-slim names say what to debootstrap"
    exit 1
fi
release="$(curl -fsS --max-time 30 "$mirror/dists/$suite/Release" | sed -n '1,/^MD5Sum:/p')" || {
    say "cannot read $mirror/dists/$suite/Release"
    exit 1
}
archive_point="$(sed -n 's/^Version: *//p' <<<"$release")"
archive_date="$(sed -n 's/^Date: *//p' <<<"$release")"
if [[ "$archive_point" != "$point" ]]; then
    if [[ "${LVS_IMAGE_BASE_ANY_POINT:-0}" != 1 ]]; then
        say "the archive's $suite is Debian $archive_point ($archive_date), $image pins $point:"
        say "  bump BASE_IMAGE in Dockerfile, hack/image/build.sh and hack/image/seed-base.sh to"
        say "  debian:$archive_point-slim (or LVS_IMAGE_BASE_ANY_POINT=1 for this build only)"
        exit 1
    fi
    say "warning: seeding $image from Debian $archive_point (LVS_IMAGE_BASE_ANY_POINT=1)"
fi
say "the archive's $suite is Debian $archive_point, released $archive_date"

if [[ "$(id -u)" != 0 ]]; then
    say "debootstrap needs root; run this as root (or pull $image on a machine with a registry)"
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive "$(dirname "$0")/../apt-get.sh" install -y -q debootstrap >/dev/null
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
    --change "LABEL io.lvs-operator.debian-version=$archive_point" \
    --change "LABEL io.lvs-operator.debian-release-date=\"$archive_date\"" \
    - "$image" >/dev/null
say "seeded $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}')"
