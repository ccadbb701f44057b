#!/bin/sh
# As the official redis image's entrypoint: `redis-server ...` or `-flags` run redis-server as
# the redis user in /data, with protected mode off unless the command line sets it (the
# container's network is the boundary; compose publishes no redis port).
set -e
case "$1" in -*) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ]; then
    shift
    case " $* " in *" --protected-mode "*) ;; *) set -- "$@" --protected-mode no ;; esac
    set -- redis-server "$@"
    if [ "$(id -u)" = 0 ]; then
        find . \! -user redis -exec chown redis '{}' + 2>/dev/null || true
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"
