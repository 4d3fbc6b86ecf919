#!/usr/bin/env bash
# Instructions per request in the gateway process, key route vs no-auth route, counted by
# callgrind (exact and repeatable; independent of what else the machine is doing). The gateway
# runs under valgrind; control plane, upstream and load generator run natively. Counters are
# zeroed after a warm-up and dumped after exactly N requests per route, sent over the same
# keep-alive connections with the identical request.
# Usage: benches/callgrind-routes.sh [requests per route, default 5000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5000}
cargo build --release --workspace --bins >&2
bin=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP:-}" ] && echo "profiles kept in $work" || rm -rf "$work"' EXIT
admin=$(head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9)
gw=$(head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9)
export KEYGATE_LOG=warn
$bin/keygate echo-upstream --fixed --listen 127.0.0.1:28000 >/dev/null &
$bin/keygate control-plane --grpc-listen 127.0.0.1:27070 --http-listen 127.0.0.1:27080 \
  --database "sqlite://$work/keygate.db" --admin-token "$admin" --gateway-token "$gw" >/dev/null &
cat > "$work/routes.toml" <<TOML
[[route]]
path_prefix = "/"
upstream = "http://127.0.0.1:28000"
[[route]]
path_prefix = "/public/"
upstream = "http://127.0.0.1:28000"
auth = "none"
TOML
valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$work/cg.out" \
  $bin/keygate proxy --config "$work/routes.toml" --listen 127.0.0.1:28081 --admin-listen 127.0.0.1:29901 \
  --control-plane http://127.0.0.1:27070 --gateway-token "$gw" --gateway-id callgrind >/dev/null 2>"$work/valgrind.log" &
for _ in $(seq 600); do curl -sf http://127.0.0.1:29901/readyz >/dev/null && break; sleep 0.1; done
pid=$(pgrep -f -- "--gateway-id callgrind" | head -1)
export KEYGATE_ENDPOINT=http://127.0.0.1:27070 KEYGATE_TOKEN=$admin
key=$($bin/keygate keys create --owner bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'; }
measure() {  # route-path label
  $bin/keygate-bench rps --url "http://127.0.0.1:28081$1" --key "$key" --connections 8 --requests 500 >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  $bin/keygate-bench rps --url "http://127.0.0.1:28081$1" --key "$key" --connections 8 --requests "$n" >/dev/null
  callgrind_control -d "$2" "$pid" >/dev/null 2>&1
  sleep 1
  local file; file=$(ls -t "$work"/cg.out.* | head -1)
  echo "$2 $(total "$file")"
}
echo "callgrind, $n requests per route, $(date -u +%F), $(nproc) cores"
for round in 1 2; do
  a=$(measure /public/x no-auth); b=$(measure /x key)
  ia=${a#* }; ib=${b#* }
  echo "round $round: no-auth $((ia / n)) instr/req, key $((ib / n)) instr/req, ratio $(python3 -c "print(f'{$ib/$ia:.3f}')")"
done
