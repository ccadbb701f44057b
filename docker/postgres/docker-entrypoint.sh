#!/bin/bash
# As the official postgres image's entrypoint, for what bnlab's compose file uses: `postgres`
# runs as the postgres user; on the first start into an empty $PGDATA, initdb with
# POSTGRES_USER (superuser, default postgres) and POSTGRES_PASSWORD (required unless
# POSTGRES_HOST_AUTH_METHOD=trust), then POSTGRES_DB (default: the user's name) is created.
# Connections over TCP need the password (scram-sha-256); local socket ones are trusted.
set -euo pipefail

[ $# -gt 0 ] || set -- postgres
case "$1" in -*) set -- postgres "$@" ;; esac
if [ "$1" = postgres ]; then
    if [ "$(id -u)" = 0 ]; then
        mkdir -p "$PGDATA" /var/run/postgresql
        chown -R postgres:postgres "$PGDATA" /var/run/postgresql
        chmod 700 "$PGDATA"
        exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
    fi

    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        user="${POSTGRES_USER:-postgres}"
        db="${POSTGRES_DB:-$user}"
        auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
        if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
            echo "error: database is uninitialized and POSTGRES_PASSWORD is not set" \
                 "(or set POSTGRES_HOST_AUTH_METHOD=trust)" >&2
            exit 1
        fi
        echo "initializing $PGDATA: user $user, database $db"
        initdb --username="$user" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
            --auth-local=trust --auth-host="$auth" --encoding=UTF8 --locale=C.UTF-8 \
            ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA" >/dev/null
        printf 'host all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
        printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
        if [ "$db" != postgres ]; then
            # Single-user mode: no server, so nothing can connect before the database exists.
            printf 'CREATE DATABASE "%s" OWNER "%s";\n' "${db//\"/\"\"}" "${user//\"/\"\"}" \
                | postgres --single -D "$PGDATA" postgres >/dev/null
        fi
        echo "initialized"
    fi
fi
exec "$@"
