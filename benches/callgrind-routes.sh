#!/usr/bin/env bash
# Instructions per request in the gateway process, key route vs no-auth route, counted by
# callgrind (exact and repeatable; independent of what else the machine is doing). The gateway
# runs under valgrind; control plane, upstream and load generator run natively. Counters are
# zeroed after a warm-up and dumped after exactly N requests per route, sent over the same
# keep-alive connections with the identical request. KEEP=1 keeps the profiles.
# Usage: benches/callgrind-routes.sh [requests per route, default 5000]
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
n=${1:-5000}
bench_start 12000
valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$work/cg.out" \
  $bin/keygate proxy --config "$routes" --listen 127.0.0.1:28081 --admin-listen 127.0.0.1:29901 \
  --control-plane "$cp_url" --gateway-token "$gw" --gateway-id callgrind >/dev/null 2>"$work/valgrind.log" &
bench_wait_ready 29901
cg_pid=$(pgrep -f -- "--gateway-id callgrind" | head -1)
cg_url=http://127.0.0.1:28081
key=$(bench_create_key)
echo "callgrind, $n requests per route, $(date -u +%F), $(nproc) cores"
for round in 1 2; do
  a=$(cg_measure /public/x no-auth "$n"); b=$(cg_measure /x key "$n")
  ia=${a#* }; ib=${b#* }
  echo "round $round: no-auth $((ia / n)) instr/req, key $((ib / n)) instr/req, ratio $(python3 -c "print(f'{$ib/$ia:.3f}')")"
done
