#!/usr/bin/env bash
# Export the image's file system into a directory, for running its processes without a
# container engine (the data-plane VM runs the director agent from it with chroot).
#
#   hack/image/rootfs.sh [IMAGE [DIR]]   IMAGE: lvs-operator:dev; DIR: /var/lib/lvs-operator/image-rootfs
#   make image-rootfs
#
# DIR is replaced as a whole (written beside it, then renamed), so a reader never sees half
# an export. DIR.image records which image it came from (id and OCI labels). The path is
# printed on standard output (everything else goes to standard error):
#
#   chroot DIR lvs-operator director --help
set -euo pipefail
image="${1:-${IMAGE:-lvs-operator:dev}}"
dir="${2:-${LVS_IMAGE_ROOTFS:-/var/lib/lvs-operator/image-rootfs}}"
say() { echo "[rootfs] $*" >&2; }

docker image inspect "$image" >/dev/null 2>&1 || {
    say "no image $image: build it first (make image)"
    exit 1
}
dir="$(realpath -m "$dir")"
mkdir -p "$(dirname "$dir")"
new="$(mktemp -d "$dir.new.XXXXXX")"
container=""
cleanup() {
    if [[ -n "$container" ]]; then docker rm -f "$container" >/dev/null 2>&1 || true; fi
    rm -rf "$new" "$new.image"
}
trap cleanup EXIT
container="$(docker create "$image")"
# --numeric-owner: uid 65532 and the like stay numbers, whatever the host's passwd says.
docker export "$container" | tar -x --numeric-owner -C "$new"
chmod 0755 "$new"
docker image inspect -f '{{.Id}}{{range $k, $v := .Config.Labels}}{{"\n"}}{{$k}}={{$v}}{{end}}' \
    "$image" >"$new.image"
rm -rf "$dir.old"
[[ -e "$dir" ]] && mv "$dir" "$dir.old"
mv "$new" "$dir"
mv "$new.image" "$dir.image"
rm -rf "$dir.old"
say "exported $image ($(du -sh "$dir" | cut -f1)) to $dir; run: chroot $dir lvs-operator --help"
echo "$dir"
