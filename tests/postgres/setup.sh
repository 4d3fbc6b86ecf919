#!/usr/bin/env bash
# Installs what the PostgreSQL tests (test-support/postgres: a throwaway server per test) need:
# the server programs initdb, postgres and pg_ctl and the clients psql and pg_isready, from
# Debian's postgresql package when no initdb is on PATH or in /usr/lib/postgresql/*/bin.
# Idempotent and non-interactive: on a machine that has them it only checks, in well under a
# second. The tests start their own servers, so the cluster the package creates and starts is
# stopped and its service disabled. Installing needs root (CI runs as root).
set -euo pipefail

have_initdb() {
    command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

if ! have_initdb; then
    echo "tests/postgres/setup.sh: installing Debian's postgresql" >&2
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || {
            echo "tests/postgres/setup.sh: initdb is missing and installing postgresql needs root" >&2
            exit 1
        }
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql

    # The package's postinst creates a cluster (e.g. 15/main on port 5432) and starts it where
    # it can. Nothing here uses it: stop it, and keep systemd from starting it at boot.
    if command -v pg_lsclusters >/dev/null; then
        pg_lsclusters --no-header | while read -r version cluster _port status _rest; do
            if [[ $status == online* ]]; then
                "${sudo[@]}" pg_ctlcluster "$version" "$cluster" stop || true
            fi
        done
    fi
    if [[ -d /run/systemd/system ]]; then
        "${sudo[@]}" systemctl disable --now postgresql >/dev/null 2>&1 || true
    fi

    have_initdb || {
        echo "tests/postgres/setup.sh: still no initdb after installing postgresql" >&2
        exit 1
    }
fi
