#!/usr/bin/env bash
# Installs what the browser test (tests/browser.rs → tests/browser/passkeys.mjs) needs: Debian's
# Chromium at /usr/bin/chromium and the pinned playwright-core in tests/browser/node_modules.
# Idempotent and non-interactive: on a machine that has both it only checks, in well under a
# second. Installing Chromium needs root (CI runs as root); Node.js 20+ and npm must be there.
set -euo pipefail
cd "$(dirname "$0")"

if [[ ! -x /usr/bin/chromium ]]; then
    echo "tests/browser/setup.sh: installing Debian's chromium" >&2
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || {
            echo "tests/browser/setup.sh: /usr/bin/chromium is missing and installing it needs root" >&2
            exit 1
        }
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet: update only when the install needs it.
    if ! "${sudo[@]}" apt-get install -y -q chromium; then
        "${sudo[@]}" apt-get update -q
        "${sudo[@]}" apt-get install -y -q chromium
    fi
fi

command -v node >/dev/null && command -v npm >/dev/null || {
    echo "tests/browser/setup.sh: Node.js 20+ and npm are needed (node and npm on PATH)" >&2
    exit 1
}

# node_modules is stale when any package in it is missing or differs from the lock file.
if ! node -e '
    const fs = require("fs");
    const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8"));
    for (const [path, entry] of Object.entries(lock.packages)) {
        if (!path) continue;
        const installed = JSON.parse(fs.readFileSync(path + "/package.json", "utf8"));
        if (installed.version !== entry.version) process.exit(1);
    }
' 2>/dev/null; then
    echo "tests/browser/setup.sh: npm ci in tests/browser" >&2
    npm ci --no-audit --no-fund
fi
