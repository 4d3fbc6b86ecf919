#!/usr/bin/env bash
# Limits across gateways (issue 17): real `keygate` processes — one control plane (SQLite), N
# gateways, a fixed-response upstream — for each N of --gateways (1 is the baseline: a single
# counter). Measures the overshoot of a global rate limit under a steady paced overload
# (admitted per 1 s window: p50, p99, max, against the limit and the README's bound), the
# credits stranded in leases when a key runs dry under closed-loop load at every gateway, and
# the control plane's CPU per 1,000 req/s of traffic with plain keys (baseline), rate-limited
# keys and keys with credits. Every process is stopped on exit, also on Ctrl-C.
# Usage: benches/limits.sh [keygate-bench limits flags…], e.g.
#   benches/limits.sh --gateways 1,2,4,8 --limit 100 --overload 4 --windows 30 \
#     --credits 10000 --trials 5 --cpu-gateways 4 --cpu-keys 100 --cpu-rate 2000
# (`keygate-bench limits --help` lists them all). Results:
# benches/results/limits-DATE[-TAG].{txt,json}.
# KEYGATE_BIN=DIR uses prebuilt release binaries; LIMITS_TAG=TAG names the results.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${KEYGATE_BIN:-}" ]; then
  bin=$KEYGATE_BIN
else
  cargo build --release -p keygate -p keygate-benches --bins >&2
  bin=target/release
fi
out=benches/results/limits-$(date -u +%F)${LIMITS_TAG:+-$LIMITS_TAG}
mkdir -p benches/results
# exec: Ctrl-C and SIGTERM reach the benchmark itself, which stops every process it started.
exec "$bin/keygate-bench" limits --keygate "$bin/keygate" --json "$out.json" "$@" \
  > >(trap '' INT TERM; tee "$out.txt")
