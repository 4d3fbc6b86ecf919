#!/usr/bin/env bash
# The region simulator (issue 19): keygate at internet latencies. A control plane, a
# fixed-response upstream, M gateways in each region behind that region's WAN relay
# (test-support/wan: delay, jitter, bandwidth, loss bursts, partitions) and M on loopback as the
# baseline of the same run; then revoke → refused per region under load and the `--wait` time,
# time to STALE in a partition and recovery after it, and a fresh gateway's time to ready from a
# 1M-key snapshot over a long round trip. Every process is stopped on exit, also on Ctrl-C.
# Usage: benches/wan.sh [keygate-bench wan flags…], e.g.
#   benches/wan.sh --regions 20ms,60ms,120ms --gateways 4 --revocations 1000 --load-rps 2000 \
#     --jitter 2ms --loss-burst 200ms --loss-every 5s --bandwidth 10000000 --bounds 10s,60s
# (`keygate-bench wan --help` lists them all); `--replicas 2` runs two control planes on a
# PostgreSQL server of its own. Results: benches/results/wan-DATE[-TAG].{txt,json,svg}.
# KEYGATE_BIN=DIR uses prebuilt release binaries; WAN_TAG=TAG names the results.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${KEYGATE_BIN:-}" ]; then
  bin=$KEYGATE_BIN
else
  cargo build --release -p keygate -p keygate-benches --bins >&2
  bin=target/release
fi
out=benches/results/wan-$(date -u +%F)${WAN_TAG:+-$WAN_TAG}
mkdir -p benches/results
# exec: Ctrl-C and SIGTERM reach the simulator itself, which stops every process it started.
exec "$bin/keygate-bench" wan --keygate "$bin/keygate" --json "$out.json" --chart "$out.svg" "$@" \
  > >(trap '' INT TERM; tee "$out.txt")
