#!/usr/bin/env bash
# Make a Docker engine reachable, starting our own dockerd when none answers.
#
#   eval "$(scripts/dockerd_up.sh)"     # prints `export DOCKER_HOST=...` (and the pid it started)
#   scripts/dockerd_up.sh --stop        # stops the dockerd this script started (by its pidfile)
#
# Order: $DOCKER_HOST (or the client's default) if it answers; else our own daemon under
# $BNLAB_DOCKERD_DIR (default $BNLAB_DOCKER_CACHE/engine, BNLAB_DOCKER_CACHE defaulting to
# /var/cache/bnlab-docker), started if needed: its own unix socket, --data-root (kept between runs:
# images and build cache survive), --exec-root and pidfile. Installs Debian's docker.io with apt
# when dockerd is missing.
#
# Exit status: 0 the engine answers; 3 no engine can run here (the cause on stderr: no root,
# no apt, dockerd died at start with its log's last lines); 2 bad usage.
set -euo pipefail

CACHE="${BNLAB_DOCKER_CACHE:-/var/cache/bnlab-docker}"
D="${BNLAB_DOCKERD_DIR:-$CACHE/engine}"
SOCK="unix://$D/docker.sock"
PIDFILE="$D/dockerd.pid"
LOG="$D/dockerd.log"
WAIT_S="${BNLAB_DOCKERD_WAIT_S:-60}"

say() { printf 'dockerd_up: %s\n' "$*" >&2; }
no_engine() { say "NO ENGINE: $*"; exit 3; }
answers() { timeout 10 docker ${1:+-H "$1"} version --format '{{.Server.Version}}' >/dev/null 2>&1; }
alive() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

if [ "${1:-}" = "--stop" ]; then
    if alive; then
        pid="$(cat "$PIDFILE")"
        say "stopping dockerd $pid"
        kill "$pid"
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then say "dockerd $pid still running after 30 s"; exit 1; fi
        # dockerd leaves its default network namespace mounted (nsfs) under --exec-root: unmount
        # it, so the folder can be removed and the next start begins clean.
        awk -v d="$D/exec/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r \
            | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    else
        say "no dockerd of ours running ($PIDFILE)"
    fi
    exit 0
elif [ $# -gt 0 ]; then
    say "usage: eval \"\$($0)\"  |  $0 --stop"; exit 2
fi

# 1. An engine that already answers: whoever runs it, use it.
if command -v docker >/dev/null 2>&1 && answers "${DOCKER_HOST:-}"; then
    say "engine answers at ${DOCKER_HOST:-the client default}"
    [ -n "${DOCKER_HOST:-}" ] && printf 'export DOCKER_HOST=%q\n' "$DOCKER_HOST"
    exit 0
fi

# 2. Ours, if it runs already.
if command -v docker >/dev/null 2>&1 && answers "$SOCK"; then
    say "our dockerd answers at $SOCK"
    printf 'export DOCKER_HOST=%q\n' "$SOCK"
    exit 0
fi

# 3. Start ours.
[ "$(id -u)" = 0 ] || no_engine "no engine answers and starting dockerd needs root (uid $(id -u))"
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || no_engine "dockerd is not installed and there is no apt-get"
    say "installing docker.io (apt)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
          --no-install-recommends docker.io >/dev/null; } 2>&1 | tail -n 5 >&2 \
        || true
    command -v dockerd >/dev/null 2>&1 || no_engine "apt could not install docker.io"
fi

mkdir -p "$D"
if alive; then
    say "dockerd $(cat "$PIDFILE") is running but does not answer yet; waiting"
else
    rm -f "$PIDFILE"
    driver="${BNLAB_DOCKER_STORAGE_DRIVER:-overlay2}"
    start() {
        say "starting dockerd (storage driver $1, data root $D/data, log $LOG)"
        printf '\n== %s dockerd start (%s)\n' "$(date -u +%FT%TZ)" "$1" >>"$LOG"
        # setsid + nohup: it outlives this script; its output goes to the log, not our pipes.
        setsid nohup dockerd -H "$SOCK" --data-root "$D/data" --exec-root "$D/exec" \
            --pidfile "$PIDFILE" --storage-driver "$1" </dev/null >>"$LOG" 2>&1 &
        echo $! >"$D/dockerd.spawned"
    }
    start "$driver"
fi

deadline=$((SECONDS + WAIT_S))
tried_vfs=0
while ! answers "$SOCK"; do
    spawned="$(cat "$D/dockerd.spawned" 2>/dev/null || true)"
    if [ -n "$spawned" ] && ! kill -0 "$spawned" 2>/dev/null && ! alive; then
        # It died. overlay2 is the usual casualty in nested containers: try vfs once (slow,
        # disk-hungry, but it works) unless the driver was chosen explicitly.
        if [ "$tried_vfs" = 0 ] && [ -z "${BNLAB_DOCKER_STORAGE_DRIVER:-}" ] \
                && tail -n 20 "$LOG" | grep -qi -E 'overlay|storage driver|graphdriver'; then
            tried_vfs=1
            say "dockerd failed with overlay2; retrying with vfs"
            start vfs
            deadline=$((SECONDS + WAIT_S))
            continue
        fi
        cause="$(tail -n 8 "$LOG" | sed 's/^/    /')"
        no_engine "dockerd exited at start; the end of $LOG:
$cause"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        cause="$(tail -n 8 "$LOG" | sed 's/^/    /')"
        no_engine "dockerd did not answer at $SOCK within ${WAIT_S}s; the end of $LOG:
$cause"
    fi
    sleep 0.5
done
say "dockerd $(cat "$PIDFILE" 2>/dev/null) answers at $SOCK"
printf 'export DOCKER_HOST=%q\n' "$SOCK"
printf 'BNLAB_DOCKERD_STARTED=%q\n' "$(cat "$PIDFILE" 2>/dev/null)"
