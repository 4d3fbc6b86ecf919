#!/usr/bin/env bash
# Installs what the nginx test (tests/nginx_authz.rs: a real nginx with `auth_request` in front
# of an echo upstream, asking the gateway's /_keygate/v1/authz) needs: Debian's nginx package,
# whose binary is built with the auth_request module, when no nginx is on PATH or in /usr/sbin.
# Idempotent and non-interactive: on a machine that has it it only checks. The test starts its
# own nginx, so the service the package starts is stopped and disabled. Installing needs root
# (CI runs as root).
set -euo pipefail

have_nginx() {
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]
}

if ! have_nginx; then
    echo "tests/nginx/setup.sh: installing Debian's nginx" >&2
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || {
            echo "tests/nginx/setup.sh: nginx is missing and installing it needs root" >&2
            exit 1
        }
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends nginx

    # The package starts a server on port 80 where it can; nothing here uses it.
    if [[ -d /run/systemd/system ]]; then
        "${sudo[@]}" systemctl disable --now nginx >/dev/null 2>&1 || true
    elif [[ -f /run/nginx.pid ]]; then
        "${sudo[@]}" kill "$(cat /run/nginx.pid)" 2>/dev/null || true
    fi

    have_nginx || {
        echo "tests/nginx/setup.sh: still no nginx after installing it" >&2
        exit 1
    }
fi
