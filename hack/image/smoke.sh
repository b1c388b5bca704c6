#!/usr/bin/env bash
# Smoke test of the built image (CI runs it after `make image`; see .ci/run):
#
#   hack/image/smoke.sh [IMAGE [ROOTFS]]     IMAGE: lvs-operator:dev; ROOTFS: optional
#
# - every subcommand of the entry point answers --help inside the image, --version prints
#   pyproject's version, `python -m lvs_operator` works; the director's --help also under the
#   DaemonSet's restrictions (root, read-only root file system, NET_ADMIN + NET_RAW only);
# - the default user is 65532 and there is no pip;
# - the size is at most LVS_IMAGE_MAX_MB (200) MB;
# - the OCI labels source, revision and created are this checkout's (hack/image/labels.py);
# - with ROOTFS (hack/image/rootfs.sh's export): `chroot ROOTFS lvs-operator director --help`,
#   and the same through hack/image/in-rootfs.sh (how the data-plane VM can run the agent).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
image="${1:-${IMAGE:-lvs-operator:dev}}"
rootfs="${2:-}"
max_mb="${LVS_IMAGE_MAX_MB:-200}"
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml" | head -1)"
passed=0
failed=0
say() { echo "[smoke] $*" >&2; }
ok() { passed=$((passed + 1)); say "ok    $*"; }
bad() { failed=$((failed + 1)); say "FAIL  $*"; }
run() { docker run --rm --network none "$@"; }

# check NAME EXPECTED-SUBSTRING COMMAND...: the command succeeds and prints the substring
check() {
    local name="$1" want="$2" out
    shift 2
    if out="$("$@" 2>&1)" && [[ "$out" == *"$want"* ]]; then
        ok "$name"
    else
        bad "$name: wanted '$want' in:"
        sed 's/^/        /' <<<"$out" | tail -15 >&2
    fi
}

if ! docker info >/dev/null 2>&1 && [[ "${LVS_IMAGE_START_ENGINE:-1}" == 1 ]]; then
    "$here/engine.sh" start
fi
start=$SECONDS
check "lvs-operator (default CMD: --help)" "usage: lvs-operator" run "$image"
check "lvs-operator --help" "usage: lvs-operator" run "$image" --help
check "lvs-operator --version = $version" "$version" run "$image" --version
for sub in controller director node-settings realserver demo; do
    check "lvs-operator $sub --help" "usage:" run "$image" "$sub" --help
done
check "python -m lvs_operator --help" "usage: lvs-operator" \
    run --entrypoint python3 "$image" -m lvs_operator --help
check "director --help as the DaemonSet runs it" "usage:" \
    run --user 0 --read-only --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW \
    --security-opt no-new-privileges "$image" director --help
check "default user is 65532" "65532:65532" run --entrypoint sh "$image" -c 'echo "$(id -u):$(id -g)"'
check "no pip in the image" "no pip" \
    run --entrypoint sh "$image" -c 'command -v pip pip3 || python3 -c "import pip" 2>/dev/null || echo no pip'

bytes="$(docker image inspect -f '{{.Size}}' "$image")"
mb="$(awk -v b="$bytes" 'BEGIN{printf "%.1f", b/1e6}')"
say "image size: $mb MB ($bytes bytes; goal <= $max_mb MB)"
if awk -v b="$bytes" -v m="$max_mb" 'BEGIN{exit !(b <= m * 1e6)}'; then
    ok "size $mb MB <= $max_mb MB"
else
    bad "size $mb MB > $max_mb MB"
fi

# The labels are what hack/image/labels.py says for this checkout (source, revision, created).
while IFS='=' read -r key want; do
    value="$(docker image inspect -f "{{index .Config.Labels \"$key\"}}" "$image")"
    say "label $key=$value"
    if [[ -n "$value" && "$value" == "$want" ]]; then
        ok "label ${key#org.opencontainers.image.} is this checkout's"
    else
        bad "label $key is '$value', this checkout's is '$want' (rebuild?)"
    fi
done <<<"$(python3 "$here/labels.py" "$repo")"
created="$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.created"}}' "$image")"
[[ "$created" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]] \
    && ok "label created is RFC 3339 UTC" || bad "label created '$created' is not RFC 3339 UTC"

if [[ -n "$rootfs" ]]; then
    check "chroot $rootfs lvs-operator director --help" "usage:" \
        chroot "$rootfs" lvs-operator director --help
    check "chroot $rootfs lvs-operator --version" "$version" chroot "$rootfs" lvs-operator --version
    check "in-rootfs.sh (own mount namespace, clean env): director --help" "usage:" \
        "$here/in-rootfs.sh" --rootfs "$rootfs" -- lvs-operator director --help
fi

say "took $((SECONDS - start)) s"
echo "smoke: $passed passed, $failed failed"
((failed == 0))
