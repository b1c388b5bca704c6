#!/usr/bin/env bash
# Run a command from the image's exported file system (hack/image/rootfs.sh) the way its
# container sees it: the image's programs and libraries only, a clean environment, the
# caller's network namespace (so `ip netns exec NS hack/image/in-rootfs.sh ...` puts it in NS).
#
#   hack/image/in-rootfs.sh [--rootfs DIR] [--bind HOST_DIR:DIR] [--env NAME=VALUE]...
#                           [--read-only-root] [--read-only-proc-sys] -- CMD...
#
# In a private mount namespace (unshare --mount; nothing leaks into the caller's), it mounts
# proc on DIR/proc, binds /sys and /dev, binds each HOST_DIR onto DIR's existing directory
# (the export may be read-only, as the host's file system is in the data-plane VM, so use
# one the image has: /mnt, /srv, /media), then `chroot DIR env -i PATH=... CMD`. Root only.
# --read-only-root: the tree read-only (a pod's readOnlyRootFilesystem); --read-only-proc-sys:
# /proc/sys read-only, as a container runtime mounts it in every unprivileged container (the
# data-plane tier runs the director agent with both).
# DIR defaults to $LVS_IMAGE_ROOTFS or /var/lib/lvs-operator/image-rootfs.
#
#   hack/image/in-rootfs.sh --bind /tmp/shared:/mnt --env POD_NAME=p -- \
#       lvs-operator director --kubeconfig /mnt/kubeconfig.json ...
set -euo pipefail
rootfs="${LVS_IMAGE_ROOTFS:-/var/lib/lvs-operator/image-rootfs}"
binds=()
envs=()
ro_proc_sys=0
ro_root=0
while (($#)); do
    case "$1" in
        --read-only-root) ro_root=1; shift ;;
        --read-only-proc-sys) ro_proc_sys=1; shift ;;
        --rootfs) rootfs="$2"; shift 2 ;;
        --bind) binds+=("$2"); shift 2 ;;
        --env) envs+=("$2"); shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
if (($# == 0)); then
    echo "usage: $0 [--rootfs DIR] [--bind HOST_DIR:DIR]... [--env NAME=VALUE]... -- CMD..." >&2
    exit 2
fi
if [[ ! -x "$rootfs/opt/lvs-operator/bin/lvs-operator" ]]; then
    echo "in-rootfs: $rootfs is not an export of the image (make image-rootfs)" >&2
    exit 1
fi

if [[ "${LVS_IN_ROOTFS_NS:-}" != 1 ]]; then  # first pass: into a private mount namespace
    again=(--rootfs "$rootfs")
    for b in "${binds[@]}"; do again+=(--bind "$b"); done
    for e in "${envs[@]}"; do again+=(--env "$e"); done
    if ((ro_proc_sys)); then again+=(--read-only-proc-sys); fi
    if ((ro_root)); then again+=(--read-only-root); fi
    LVS_IN_ROOTFS_NS=1 exec unshare --mount --propagation private -- "$0" "${again[@]}" -- "$@"
fi
if ((ro_root)); then  # a mount of its own, read-only; the mounts below go on top of it
    mount --bind "$rootfs" "$rootfs"
    mount -o remount,bind,ro "$rootfs"
fi
mount -t proc proc "$rootfs/proc"
if ((ro_proc_sys)); then
    mount --bind "$rootfs/proc/sys" "$rootfs/proc/sys"
    mount -o remount,bind,ro "$rootfs/proc/sys"
fi
mount --rbind /sys "$rootfs/sys"
mount --rbind /dev "$rootfs/dev"
for b in "${binds[@]}"; do
    mount --bind "${b%%:*}" "$rootfs/${b#*:}"
done
exec chroot "$rootfs" /usr/bin/env -i \
    PATH=/opt/lvs-operator/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/nonexistent LANG=C.UTF-8 \
    "${envs[@]}" "$@"
