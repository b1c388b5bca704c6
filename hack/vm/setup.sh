#!/usr/bin/env bash
# Installs what the data-plane tier (tests/dataplane, pytest -m dataplane) needs on Debian 12:
# qemu (TCG is used: nested KVM here has no EPT and is slower), virtme-ng, and Debian's stock
# kernel, whose ip_vs* modules the host kernel may lack. The VM boots over the host's root
# filesystem, so the kernel's modules must live in the host's /lib/modules/<version>.
#
# Idempotent and non-interactive: a second run only checks and prints "ok" lines.
# Environment:
#   LVS_VM_CACHE      cache directory (default ~/.cache/lvs-operator/vm)
#   LVS_VM_KERNEL_PKG pin the kernel package (default: newest linux-image-6.1.0-*-amd64-unsigned)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${LVS_VM_CACHE:-$HOME/.cache/lvs-operator/vm}"
APT_PKGS=(qemu-system-x86 kmod busybox-static iproute2 nftables ipvsadm procps python3-pip)
# examples/three-tier run for real in the VM (e2e tier and demo; e2e/three_tier/README.md):
# installed on the host, they are in the VM too, which boots over the host's root file system
APT_PKGS+=(apache2 libapache2-mod-php php-mysql mariadb-server mariadb-client
           nfs-kernel-server nfs-common)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi

log() { printf '[vm-setup] %s\n' "$*"; }

# --- apt packages -----------------------------------------------------------------------
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    # None of their system daemons may start on this machine (apache2 would take port 80, and
    # the tests run private instances in the VM): a policy-rc.d refusing every start while
    # installing, unless one is there already (Docker's images have one).
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# hack/vm/setup.sh: no daemon starts while it installs\nexit 101\n' \
            | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
    fi
    rc=0
    $SUDO "$REPO/hack/apt-get.sh" update -qq || rc=$?
    [ "$rc" -ne 0 ] || $SUDO "$REPO/hack/apt-get.sh" install -y -qq --no-install-recommends \
        "${missing[@]}" </dev/null || rc=$?
    [ -z "$policy" ] || $SUDO rm -f "$policy"
    [ "$rc" -eq 0 ] || { log "error: apt-get failed ($rc)"; exit "$rc"; }
else
    log "ok: apt packages"
fi

# --- virtme-ng ----------------------------------------------------------------------------
if command -v vng >/dev/null 2>&1; then
    log "ok: virtme-ng ($(vng --version 2>/dev/null | head -n1))"
else
    log "pip install virtme-ng"
    # Debian 12 marks the system Python as externally managed; this is a test machine.
    python3 -m pip install -q --break-system-packages virtme-ng </dev/null \
        || python3 -m pip install -q virtme-ng </dev/null
fi

# --- kernel -------------------------------------------------------------------------------
mkdir -p "$CACHE"
pkg="${LVS_VM_KERNEL_PKG:-}"
if [ -z "$pkg" ] && [ -f "$CACHE/kernel-package" ]; then
    pkg="$(cat "$CACHE/kernel-package")"
fi
if [ -z "$pkg" ]; then
    pkg="$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' \
        | awk '{print $1}' | sort -V | tail -n1)"
    if [ -z "$pkg" ]; then
        log "apt-get update (looking for the kernel package)"
        $SUDO "$REPO/hack/apt-get.sh" update -qq
        pkg="$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' \
            | awk '{print $1}' | sort -V | tail -n1)"
    fi
fi
[ -n "$pkg" ] || { log "error: no linux-image-6.1.0-*-amd64-unsigned package found"; exit 1; }
# linux-image-6.1.0-56-amd64-unsigned -> 6.1.0-56-amd64
kver="${pkg#linux-image-}"; kver="${kver%-unsigned}"
root="$CACHE/$pkg"
if [ -f "$root/boot/vmlinuz-$kver" ]; then
    log "ok: kernel $kver in $root"
else
    log "apt-get download $pkg"
    tmp="$(mktemp -d)"; chmod 755 "$tmp"
    chown _apt "$tmp" 2>/dev/null || true  # apt-get download drops privileges to _apt
    (cd "$tmp" && apt-get download -qq "$pkg" </dev/null)
    rm -rf "$root.partial"
    dpkg -x "$tmp"/*.deb "$root.partial"
    rm -rf "$tmp" "$root"
    mv "$root.partial" "$root"
    log "unpacked into $root"
fi
echo "$pkg" >"$CACHE/kernel-package"

if [ -f "/lib/modules/$kver/modules.dep" ] && [ -d "/lib/modules/$kver/kernel/net/netfilter/ipvs" ]; then
    log "ok: /lib/modules/$kver"
else
    log "installing modules into /lib/modules/$kver and running depmod"
    $SUDO mkdir -p "/lib/modules/$kver"
    $SUDO cp -a "$root/lib/modules/$kver/." "/lib/modules/$kver/"
    $SUDO depmod -a "$kver"
fi

# --- virtiofsd (optional, recommended) ----------------------------------------------------
# With virtiofsd on its PATH, vng shares the root filesystem over virtio-fs instead of 9p:
# measured here, the guest boots in ~13 s instead of ~27 s and a Python import of pyroute2 takes
# ~8 s instead of ~25 s (9p lookups are uncached). Debian 12 does not package the Rust
# virtiofsd (vng refuses qemu's old C one), so build it from crates.io when cargo exists.
VFS="$CACHE/virtiofsd"
if [ -x "$VFS/bin/virtiofsd" ]; then
    log "ok: virtiofsd ($("$VFS/bin/virtiofsd" --version 2>/dev/null | head -n1))"
elif command -v cargo >/dev/null 2>&1 && [ "${LVS_VM_NO_VIRTIOFS:-}" != "1" ]; then
    vfs_deps=()
    for p in libcap-ng-dev libseccomp-dev pkg-config; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || vfs_deps+=("$p")
    done
    if [ "${#vfs_deps[@]}" -gt 0 ]; then
        log "apt-get install ${vfs_deps[*]} (to build virtiofsd)"
        $SUDO "$REPO/hack/apt-get.sh" install -y -qq --no-install-recommends "${vfs_deps[@]}" </dev/null \
            || { $SUDO "$REPO/hack/apt-get.sh" update -qq && $SUDO "$REPO/hack/apt-get.sh" install -y -qq \
                 --no-install-recommends "${vfs_deps[@]}" </dev/null; } \
            || log "warning: could not install ${vfs_deps[*]}"
    fi
    log "cargo install virtiofsd (a few minutes, once)"
    if cargo install --quiet --locked virtiofsd --root "$VFS" </dev/null; then
        log "ok: virtiofsd built"
    else
        log "warning: virtiofsd build failed; the VM will share files over 9p (slower)"
    fi
else
    log "note: no cargo, no virtiofsd: the VM will share files over 9p (slower)"
fi

# A stable name for the tests (tests/dataplane/vm.py looks here first).
ln -sfn "$root/boot/vmlinuz-$kver" "$CACHE/vmlinuz"
echo "$kver" >"$CACHE/kernel-version"
log "done: kernel $CACHE/vmlinuz -> vmlinuz-$kver"
