#!/usr/bin/env bash
# apt-get for the project's set-up scripts: they run in parallel (make setup: the control
# plane's and the VM's at once), and apt-get fails at once when another one holds its locks.
# This one waits: the project's own calls take turns (flock), and a foreign apt-get holding
# the locks is waited for (DPkg::Lock::Timeout; the package lists' lock is retried), for up
# to 15 minutes. Same arguments as apt-get.
set -uo pipefail
LOCK=/run/lock/lvs-operator-apt.lock
[ -d /run/lock ] || LOCK=/tmp/lvs-operator-apt.lock
deadline=$((SECONDS + 900))
while :; do
    err=$(mktemp)
    flock -w 900 "$LOCK" apt-get -o DPkg::Lock::Timeout=600 "$@" 2>"$err"
    rc=$?
    cat "$err" >&2
    if [ "$rc" -ne 0 ] && grep -q "Could not get lock" "$err" && [ "$SECONDS" -lt "$deadline" ]; then
        rm -f "$err"
        echo "apt-get.sh: another apt-get holds its lock; trying again in 5 s" >&2
        sleep 5
        continue
    fi
    rm -f "$err"
    exit "$rc"
done
