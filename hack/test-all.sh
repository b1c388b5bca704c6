#!/usr/bin/env bash
# Every test tier, each in its own pytest run (each tier boots its own cluster or VM; one
# at a time on a 2-core machine). Runs them all even when one fails, then exits non-zero
# if any failed. Extra arguments go to every pytest run.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
declare -a names=() codes=()
tier() {
    local name=$1; shift
    echo
    echo "=================== tier: $name ($(date +%T)) ==================="
    local t0=$SECONDS
    "$PYTHON" -m pytest "$@"
    local rc=$?
    # 5 = no tests collected: a tier that selects nothing is a broken tier.
    names+=("$name ($((SECONDS - t0)) s)"); codes+=("$rc")
}
# --durations: where each tier's time goes (CI has a time budget; the slow cases show here)
tier "unit + integration" -m "not dataplane and not e2e" --durations=10 tests "$@"
tier "data plane" -m dataplane --durations=25 tests/dataplane "$@"
tier "e2e" -m e2e --durations=15 e2e "$@"
echo
echo "=================== summary ==================="
failed=0
for i in "${!names[@]}"; do
    if [ "${codes[$i]}" = 0 ]; then echo "ok      ${names[$i]}"; else echo "FAILED  ${names[$i]} (pytest exit ${codes[$i]})"; failed=1; fi
done
exit $failed
