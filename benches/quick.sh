#!/usr/bin/env bash
# Issue-2 figures: a control plane, two gateways and a fixed-response upstream as separate
# release processes on loopback; then disable-latency over 100 tries, and requests/s through one
# gateway with a valid key vs the no-auth route, in interleaved rounds. Both rps runs send the
# identical request (same Authorization header; the no-auth route ignores and strips it), so the
# only difference is the verification. Usage: benches/quick.sh [duration] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}
rounds=${2:-5}
cargo build --release --workspace --bins >&2
bin=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
admin=$(head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9)
gw=$(head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9)
export KEYGATE_LOG=warn
$bin/keygate echo-upstream --fixed --listen 127.0.0.1:18000 >/dev/null &
$bin/keygate control-plane --grpc-listen 127.0.0.1:17070 --http-listen 127.0.0.1:17080 \
  --database "sqlite://$work/keygate.db" --admin-token "$admin" --gateway-token "$gw" >/dev/null &
cat > "$work/routes.toml" <<TOML
[[route]]
path_prefix = "/"
upstream = "http://127.0.0.1:18000"
[[route]]
path_prefix = "/public/"
upstream = "http://127.0.0.1:18000"
auth = "none"
TOML
for i in 1 2; do
  $bin/keygate proxy --config "$work/routes.toml" --listen 127.0.0.1:1808$i --admin-listen 127.0.0.1:1990$i \
    --control-plane http://127.0.0.1:17070 --gateway-token "$gw" --gateway-id "bench-$i" >/dev/null &
done
for port in 19901 19902; do
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
done
export KEYGATE_ENDPOINT=http://127.0.0.1:17070 KEYGATE_TOKEN=$admin
echo "machine: $(nproc) cores, $(uname -m); $(date -u +%F)"
$bin/keygate-bench disable-latency --gateways http://127.0.0.1:18081/,http://127.0.0.1:18082/ --tries 100
key=$($bin/keygate keys create --owner bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
for round in $(seq "$rounds"); do
  $bin/keygate-bench rps --url http://127.0.0.1:18081/public/x --key "$key" --duration "$duration"
  $bin/keygate-bench rps --url http://127.0.0.1:18081/x --key "$key" --duration "$duration"
done
