#!/usr/bin/env bash
# Scale figures (DESIGN.md, "Performance targets"), each printed with the command that made it:
#  1. replica memory per key at 1M and 10M keys, no meta (RSS growth in a fresh process each);
#  2. time for a fresh gateway process to be ready (/readyz 200) from a 1M-key snapshot of the
#     synthetic control plane, three times;
#  3. control-plane write throughput through the Admin API with 8 real gateways attached: key
#     creations/s, deletes (revocations)/s, and until every gateway acked the last delete.
# Results go to benches/results/scale-DATE/ (JSON) and scale-DATE.txt (this output).
# Usage: benches/scale.sh [keys for the cp-load phase, default 2000]. KEYGATE_BIN=DIR uses
# prebuilt binaries; KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
cp_keys=${1:-2000}
out=benches/results/scale-$(date -u +%F)
mkdir -p "$out"
bench_start 16000   # control plane on 23070, upstream on 24000
exec > >(tee "$out.txt") 2>&1
echo "machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(date -u +%F)"

for keys in 1000000 10000000; do
  echo "\$ keygate-bench replica-memory --keys $keys"
  $bin/keygate-bench replica-memory --keys "$keys" --json "$out/replica-memory-$keys.json"
done

$bin/keygate-bench synthetic-cp --keys 1000000 --listen 127.0.0.1:22070 --gateway-token "$gw" \
  >"$work/synthetic-cp.log" 2>&1 &
for _ in $(seq 1200); do grep -q listening "$work/synthetic-cp.log" && break; sleep 0.1; done
head -1 "$work/synthetic-cp.log"
for try in 1 2 3; do
  echo "\$ keygate-bench ready-time --admin 127.0.0.1:22901 -- keygate proxy … (1M-key snapshot), try $try"
  $bin/keygate-bench ready-time --admin 127.0.0.1:22901 -- $bin/keygate proxy \
    --upstream http://127.0.0.1:24000 --listen 127.0.0.1:22080 --admin-listen 127.0.0.1:22901 \
    --control-plane http://127.0.0.1:22070 --gateway-token "$gw" --gateway-id "ready-$try"
done
grep 'snapshot of' "$work/synthetic-cp.log" || true

for i in 1 2 3 4 5 6 7 8; do
  $bin/keygate proxy --config "$routes" --listen 127.0.0.1:2408$i --admin-listen 127.0.0.1:2590$i \
    --control-plane "$cp_url" --gateway-token "$gw" --gateway-id "scale-$i" >/dev/null 2>&1 &
done
for i in 1 2 3 4 5 6 7 8; do bench_wait_ready 2590$i; done
echo "\$ keygate-bench cp-load --keys $cp_keys --clients 8   (real control plane, SQLite, 8 gateways)"
$bin/keygate-bench cp-load --keys "$cp_keys" --clients 8 --json "$out/cp-load.json"
