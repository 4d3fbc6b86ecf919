#!/usr/bin/env bash
# Issue-2 figures: a control plane, two gateways and a fixed-response upstream as separate
# release processes on loopback; then disable-latency over 100 tries, and requests/s through one
# gateway with a valid key vs the no-auth route, in interleaved rounds. Both rps runs send the
# identical request (same Authorization header; the no-auth route ignores and strips it), so the
# only difference is the verification. Usage: benches/quick.sh [duration] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
duration=${1:-10s}
rounds=${2:-5}
bench_start 10000
for i in 1 2; do
  $bin/keygate proxy --config "$routes" --listen 127.0.0.1:1808$i --admin-listen 127.0.0.1:1990$i \
    --control-plane "$cp_url" --gateway-token "$gw" --gateway-id "bench-$i" >/dev/null &
done
bench_wait_ready 19901
bench_wait_ready 19902
echo "machine: $(nproc) cores, $(uname -m); $(date -u +%F)"
$bin/keygate-bench disable-latency --gateways http://127.0.0.1:18081/,http://127.0.0.1:18082/ --tries 100
key=$(bench_create_key)
for round in $(seq "$rounds"); do
  $bin/keygate-bench rps --url http://127.0.0.1:18081/public/x --key "$key" --duration "$duration"
  $bin/keygate-bench rps --url http://127.0.0.1:18081/x --key "$key" --duration "$duration"
done
