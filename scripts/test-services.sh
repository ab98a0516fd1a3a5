#!/usr/bin/env bash
# Installs (Debian packages) and starts what the labeling app's tests need, then writes
# .test-services.env with `export` lines that `make test` sources:
#   INSTRUCTRL_TEST_PG_URL  a throwaway PostgreSQL database on 127.0.0.1 (load test on PostgreSQL)
#   INSTRUCTRL_CHROMIUM     Debian's Chromium (Playwright browser test; never `playwright install`)
# Idempotent and fast when everything is already there. It never fails `make test`: whatever
# cannot be installed or started is left unset and the tests that need it skip, saying why.
set -u
cd "$(dirname "$0")/.."

ENV_FILE=.test-services.env
PG_DIR=${INSTRUCTRL_PG_DIR:-/tmp/instructrl-test-pg}
PG_PORT=${INSTRUCTRL_PG_PORT:-54329}
PG_DB=instructrl_test
PG_URL=""
CHROMIUM=""

say() { echo "test-services: $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"
    else return 1; fi
}

pg_bindir() {
    # Debian's server binaries live in /usr/lib/postgresql/<version>/bin; take the newest.
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

find_chromium() {
    local c
    for c in /usr/bin/chromium /usr/bin/chromium-browser; do
        [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}

# 1. Install the Debian packages that are missing (one apt-get update, only when needed).
missing=()
pg_bindir >/dev/null || missing+=(postgresql)
find_chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} (apt-get)"
        if as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 &&
           as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
               --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
            say "installed ${missing[*]}"
        else
            say "could not install ${missing[*]} (no root, no network or no apt); the tests that need them will skip"
        fi
    else
        say "no apt-get; ${missing[*]} missing, the tests that need them will skip"
    fi
fi

CHROMIUM=$(find_chromium || true)

# 2. A throwaway PostgreSQL cluster under /tmp, listening on 127.0.0.1 only, trust auth (it holds
#    nothing but test data and is reachable only from this machine).
start_pg() {
    local bin pguser run
    bin=$(pg_bindir) || { say "PostgreSQL server binaries not found"; return 1; }
    if [ "$(id -u)" = 0 ]; then
        # The server refuses to run as root: run it as Debian's `postgres` user.
        id postgres >/dev/null 2>&1 || { say "no postgres user"; return 1; }
        pguser=postgres
        run() { runuser -u postgres -- "$@"; }
    else
        pguser=$(id -un)
        run() { "$@"; }
    fi
    if [ ! -f "$PG_DIR/PG_VERSION" ]; then
        rm -rf "$PG_DIR"
        mkdir -p "$PG_DIR" && chown "$pguser" "$PG_DIR" && chmod 700 "$PG_DIR" || return 1
        run "$bin/initdb" -D "$PG_DIR" -U "$pguser" --auth=trust -E UTF8 --no-locale \
            >"$PG_DIR.initdb.log" 2>&1 || { say "initdb failed (see $PG_DIR.initdb.log)"; return 1; }
    fi
    if ! run "$bin/pg_ctl" -D "$PG_DIR" status >/dev/null 2>&1; then
        # fsync off: a test cluster trades durability for speed. Socket in the data dir so no
        # system directory is needed.
        run "$bin/pg_ctl" -D "$PG_DIR" -l "$PG_DIR/server.log" -w -t 30 start \
            -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_DIR -c fsync=off -c max_connections=200" \
            >/dev/null 2>&1 || { say "PostgreSQL did not start (see $PG_DIR/server.log)"; return 1; }
    fi
    if ! run "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$pguser" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname='$PG_DB'" 2>/dev/null | grep -q 1; then
        run "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$pguser" "$PG_DB" \
            || { say "createdb failed"; return 1; }
    fi
    PG_URL="postgresql://$pguser@127.0.0.1:$PG_PORT/$PG_DB"
}
start_pg || PG_URL=""

# 3. The env file, written whole (tmp + rename) so a half-written file is never sourced.
tmp=$(mktemp "$ENV_FILE.XXXXXX")
{
    echo "# written by scripts/test-services.sh"
    if [ -n "$PG_URL" ]; then echo "export INSTRUCTRL_TEST_PG_URL=$PG_URL"
    else echo "unset INSTRUCTRL_TEST_PG_URL"; fi
    if [ -n "$CHROMIUM" ]; then echo "export INSTRUCTRL_CHROMIUM=$CHROMIUM"
    else echo "unset INSTRUCTRL_CHROMIUM"; fi
} >"$tmp"
mv "$tmp" "$ENV_FILE"
say "PostgreSQL: ${PG_URL:-unavailable}; Chromium: ${CHROMIUM:-unavailable}"
exit 0
