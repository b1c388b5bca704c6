#!/usr/bin/env bash
# A Docker engine for building the image on a machine that runs none (CI, the development
# machines): Debian's own docker.io package, started in the background.
#
#   hack/image/engine.sh start    nothing when `docker info` answers; else installs docker.io
#                                 (when dockerd is missing) and starts dockerd, waits for it
#   hack/image/engine.sh stop     stops the dockerd that `start` started (its pid file), only
#   hack/image/engine.sh status
#
# dockerd runs with options that leave the host as it was: --bridge=none (no docker0, so no
# container network: hack/image/build.sh builds with `--network host`), --iptables=false and
# --ip6tables=false (no NAT or FORWARD rules in the host's firewall, which the data-plane tests
# use). Storage: overlay2 (LVS_DOCKERD_STORAGE=vfs where overlayfs is not available).
# State: $LVS_DOCKERD_DIR (default /var/tmp/lvs-operator-dockerd): dockerd.pid, dockerd.log.
set -euo pipefail
state="${LVS_DOCKERD_DIR:-/var/tmp/lvs-operator-dockerd}"
apt="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/apt-get.sh"  # waits for another apt-get
pidfile="$state/dockerd.pid"
log="$state/dockerd.log"
say() { echo "[engine] $*" >&2; }

# The pid file names a running dockerd (not a pid reused after a reboot).
ours() { [[ -s "$pidfile" && "$(cat "/proc/$(cat "$pidfile")/comm" 2>/dev/null)" == dockerd ]]; }

start() {
    if docker info >/dev/null 2>&1; then
        say "a Docker engine answers: $(docker version -f '{{.Server.Version}}' 2>/dev/null)"
        return 0
    fi
    if [[ "$(id -u)" != 0 ]]; then
        say "no Docker engine answers and starting one needs root"
        return 1
    fi
    mkdir -p "$state"
    if ! command -v dockerd >/dev/null 2>&1; then
        say "installing Debian's docker.io (dockerd, containerd, runc)"
        local t0=$SECONDS
        export DEBIAN_FRONTEND=noninteractive
        "$apt" install -y -q --no-install-recommends docker.io >"$state/apt.log" 2>&1 || {
            "$apt" update -q >/dev/null && "$apt" install -y -q --no-install-recommends \
                docker.io >"$state/apt.log" 2>&1
        } || { tail -20 "$state/apt.log" >&2; return 1; }
        say "installed in $((SECONDS - t0)) s"
    fi
    if ours; then
        say "dockerd (pid $(cat "$pidfile")) is starting already"
    else
        say "starting dockerd $(dockerd --version | sed 's/^Docker version //'); log: $log"
        setsid dockerd --storage-driver="${LVS_DOCKERD_STORAGE:-overlay2}" \
            --iptables=false --ip6tables=false --bridge=none \
            --pidfile "$state/dockerd.pidfile" >"$log" 2>&1 </dev/null &
        echo $! >"$pidfile"
    fi
    local i pid
    pid="$(cat "$pidfile")"
    for ((i = 0; i < 60; i++)); do
        if docker info >/dev/null 2>&1; then
            # dockerd's own pid file: the daemon itself, whatever setsid did
            [[ -s "$state/dockerd.pidfile" ]] && cp "$state/dockerd.pidfile" "$pidfile"
            say "dockerd (pid $(cat "$pidfile")) answers after ${i} s"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "dockerd exited; the end of its log:"
            tail -15 "$log" >&2
            return 1
        fi
        sleep 1
    done
    say "dockerd does not answer after 60 s; the end of its log:"
    tail -15 "$log" >&2
    return 1
}

stop() {
    if ! ours; then
        say "no dockerd started by this script is running"
        return 0
    fi
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    rm -f "$pidfile"
    # dockerd leaves its default network namespace's bind mount behind (seen with --bridge=none)
    if mountpoint -q /run/docker/netns/default 2>/dev/null; then
        umount /run/docker/netns/default || true
    fi
    say "stopped dockerd (pid $pid)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status)
        if ours; then say "dockerd pid $(cat "$pidfile") (started here)"; fi
        docker info >/dev/null 2>&1 && say "an engine answers" || { say "no engine answers"; exit 1; }
        ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
