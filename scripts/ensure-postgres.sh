#!/usr/bin/env bash
# The PostgreSQL server that tests/dropout_study/test_workers.py starts in a temporary folder (initdb, pg_ctl),
# for the multi-worker study test. Installs Debian's `postgresql` package when no server is there and this
# runs as root with apt; otherwise says why the test will be skipped. Never starts a server itself.
set -euo pipefail
found() { command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
if found; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-postgres: installing Debian's postgresql (server for the multi-worker test)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    found && exit 0
fi
echo "ensure-postgres: no PostgreSQL server (initdb) and cannot install one here (needs root and apt-get);" \
     "the PostgreSQL multi-worker test will be skipped" >&2
