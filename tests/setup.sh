#!/usr/bin/env bash
# Installs what the tests need where it is missing (the README's test command runs it first):
# the browser test's Chromium and playwright-core (tests/browser/setup.sh) and the PostgreSQL
# server programs the store tests start throwaway servers with (tests/postgres/setup.sh), and
# nginx for the auth_request test (tests/nginx/setup.sh).
# Idempotent: on a machine that has everything it only checks.
set -euo pipefail
cd "$(dirname "$0")"
./browser/setup.sh
./postgres/setup.sh
./nginx/setup.sh
