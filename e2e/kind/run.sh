#!/usr/bin/env bash
# End to end on kind, with real IPVS and real traffic:
#   create a kind cluster (2 director nodes + 2 workers) -> build and load the image ->
#   helm install the chart -> apply examples/three-tier (VIP on kind's Docker network) ->
#   curl the VIP (both virtual hosts) -> delete the active director's pod -> curl again and
#   check that the standby took over.
#
# Needs: Docker, kind, kubectl, helm, curl; the ip_vs kernel modules on this machine (kind's
# nodes are containers sharing its kernel); access to Docker Hub (kindest/node, httpd, mysql).
#
#   e2e/kind/run.sh               everything, then delete the cluster
#   KEEP=1 e2e/kind/run.sh        leave the cluster running (kind delete cluster --name lvs-e2e)
#   SKIP_BUILD=1 e2e/kind/run.sh  use an existing $IMAGE instead of `make image`
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster="${CLUSTER:-lvs-e2e}"
image="${IMAGE:-lvs-operator:e2e}"
failover_budget="${FAILOVER_SECONDS:-10}"
ctx="kind-$cluster"
say() { echo "[e2e/kind $(date +%H:%M:%S)] $*" >&2; }
die() { say "FAIL: $*"; exit 1; }
k() { kubectl --context "$ctx" "$@"; }

for tool in docker kind kubectl helm curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info)"
if ! grep -qw ip_vs /proc/modules 2>/dev/null; then
    modprobe ip_vs 2>/dev/null || die "the ip_vs kernel module is not loaded: sudo modprobe ip_vs"
fi

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        say "diagnostics:"
        k get nodes,pods -A -o wide >&2 || true
        k -n three-tier get lvs,rsp -o yaml >&2 || true
        k -n lvs-system logs deploy/lvs-operator --tail=50 >&2 || true
        k -n lvs-system logs -l app.kubernetes.io/name=lvs-director --tail=30 --prefix >&2 || true
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then
        say "KEEP=1: cluster $cluster left running (kind delete cluster --name $cluster)"
    else
        kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    fi
    exit $rc
}
trap cleanup EXIT

# ------------------------------------------------------------------------------ cluster, image
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    say "reusing kind cluster $cluster"
else
    say "creating kind cluster $cluster"
    kind create cluster --name "$cluster" --config "$here/kind-config.yaml" --wait 180s
fi
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    say "building $image"
    make -C "$repo" -f hack/make/ship.mk image IMAGE="$image"
fi
say "loading $image into the nodes"
kind load docker-image "$image" --name "$cluster"

# A VIP on kind's Docker network (reachable from this machine), far from Docker's allocations.
subnet="$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' \
    | tr ' ' '\n' | grep -E '^[0-9]+\.' | head -1)"
[[ -n "$subnet" ]] || die "no IPv4 subnet on Docker network 'kind'"
IFS=./ read -r a b _ _ _ <<<"$subnet"
vip="${VIP:-$a.$b.255.200}"
say "VIP $vip (kind network $subnet)"

# ------------------------------------------------------------------------------ operator
repository="${image%:*}"
tag="${image##*:}"
say "helm install lvs-operator"
helm --kube-context "$ctx" upgrade --install lvs-operator "$repo/charts/lvs-operator" \
    -n lvs-system --create-namespace \
    --set "image.repository=$repository" --set "image.tag=$tag" --set image.pullPolicy=Never \
    --set "vipRanges={$vip/32}" \
    --wait --timeout 180s
k -n lvs-system rollout status deployment/lvs-operator --timeout=120s

# ------------------------------------------------------------------------------ example
# Everything but the NFS volume (kind has no NFS server): a hostPath volume stands in for it,
# with the same name and claim. MySQL's claim uses kind's default StorageClass.
say "applying examples/three-tier (VIP $vip, hostPath instead of NFS)"
k apply -f "$repo/examples/three-tier/00-namespace.yaml"
k apply -f - <<YAML
apiVersion: v1
kind: PersistentVolume
metadata:
  name: three-tier-web-content
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: ""
  hostPath: {path: /var/lib/three-tier/www, type: DirectoryOrCreate}
  claimRef: {namespace: three-tier, name: web-content}
YAML
sed -n '/^---$/,$p' "$repo/examples/three-tier/10-web-content.yaml" | k apply -f -
k apply -f "$repo/examples/three-tier/20-mysql.yaml" -f "$repo/examples/three-tier/30-web.yaml"
sed "s/192\.0\.2\.20/$vip/" "$repo/examples/three-tier/40-lvs.yaml" | k apply -f -

k -n three-tier rollout status deployment/web --timeout=300s
k -n three-tier rollout status statefulset/mysql --timeout=300s
say "waiting for the VirtualServer to be Ready"
k -n three-tier wait --for=condition=Ready virtualserver/web --timeout=180s
# A stock kind node has net.ipv4.vs.conntrack=0 and no IPVS expiry settings: the directors'
# privileged init container (node-settings, on by default) sets them before the agent starts.
# Show what it did on each director node, and fail if an agent still reports a wrong one.
for pod in $(k -n lvs-system get pods -l app.kubernetes.io/name=lvs-director -o name); do
    say "$pod node-settings: $(k -n lvs-system logs "$pod" -c node-settings | tr '\n' ' ')"
    if k -n lvs-system logs "$pod" -c director | grep -q "node setting wrong"; then
        die "$pod: the agent reports a node setting the init step did not set"
    fi
done
k -n three-tier get lvs,rsp -o wide

# ------------------------------------------------------------------------------ traffic
fetch() {  # fetch HOST -> body (fails after 3 tries)
    curl -fsS --max-time 3 --retry 3 --retry-delay 1 --retry-all-errors \
        -H "Host: $1" "http://$vip/"
}
check_vhosts() {
    fetch www.example.com | grep -q '<h1>www.example.com</h1>' || die "www.example.com via $vip"
    fetch shop.example.com | grep -q '<h1>shop.example.com</h1>' || die "shop.example.com via $vip"
    say "both virtual hosts answer through $vip"
}
check_vhosts

# ------------------------------------------------------------------------------ failover
active="$(k -n three-tier get virtualserver web -o jsonpath='{.status.activeDirector}')"
[[ -n "$active" ]] || die "no active director in the VirtualServer's status"
pod="$(k -n lvs-system get pods -l app.kubernetes.io/name=lvs-director \
    --field-selector "spec.nodeName=$active" -o jsonpath='{.items[0].metadata.name}')"
say "active director: $active (pod $pod); deleting it"
start=$(date +%s)
k -n lvs-system delete pod "$pod" --wait=false
# Poll the VIP and the status until the standby has taken over and the VIP answers again.
failed=0
now="$active"
taken_over=""
while :; do
    elapsed=$(($(date +%s) - start))
    ((elapsed <= 60)) || die "no takeover within 60 s (active: $now, failed requests: $failed)"
    if [[ -z "$taken_over" ]]; then
        now="$(k -n three-tier get virtualserver web -o jsonpath='{.status.activeDirector}')"
        [[ -n "$now" && "$now" != "$active" ]] && taken_over=$elapsed
    fi
    if curl -fsS --max-time 1 -H 'Host: www.example.com' "http://$vip/" 2>/dev/null \
        | grep -q '<h1>www.example.com</h1>'; then
        [[ -n "$taken_over" ]] && break
    else
        failed=$((failed + 1))
        if [[ -n "$taken_over" ]] && ((elapsed - taken_over > failover_budget)); then
            die "the VIP did not answer within ${failover_budget} s of the takeover by $now"
        fi
    fi
    sleep 0.2
done
say "standby $now took over ${taken_over}s after the delete; failed requests meanwhile: $failed"
check_vhosts
say "PASS"
