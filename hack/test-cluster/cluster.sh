#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1 for the integration and e2e tiers.
#
#   hack/test-cluster/cluster.sh build                 compile (cached) + install kubectl/helm
#   hack/test-cluster/cluster.sh up DIR [--nodes N] [--node-labels k=v,...]
#   hack/test-cluster/cluster.sh add-node DIR NAME [k=v ...]
#   hack/test-cluster/cluster.sh status DIR
#   hack/test-cluster/cluster.sh env DIR               prints export lines (eval "$(... env DIR)")
#   hack/test-cluster/cluster.sh down DIR
#
# The work is done by cluster.py beside this file (Python standard library only).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v python3 >/dev/null 2>&1; then
    echo "cluster.sh: python3 is missing; install it: apt-get install -y python3" >&2
    exit 1
fi
exec python3 "$here/cluster.py" "$@"
