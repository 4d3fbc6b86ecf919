#!/usr/bin/env bash
# What plugging keygate into another gateway costs (issue 16), in one run:
#
# 1. Instructions per check in the gateway, counted by callgrind (exact, repeatable, whatever
#    else the machine does), the same key and keep-alive connections for each:
#      key-route   GET /x, verified and forwarded to the upstream (the reference)
#      authz       GET /_keygate/v1/authz/x (Envoy's path_prefix form): verified, answered
#      verify      POST /_keygate/v1/verify with the key in Authorization: verified, answered
# 2. CPU per request at a fixed rate, the proxies pinned to core 1 (nginx one worker, keygate
#    KEYGATE_WORKERS=1, TOKIO_WORKER_THREADS=1), load generator, upstream and control plane on
#    core 0:
#      nginx-map        nginx checking the key itself with a `map` (benches/side-by-side.sh's)
#      nginx-authreq    nginx with auth_request to keygate's /_keygate/v1/authz (nginx's CPU
#                       plus keygate's, both per request)
#    Medians over rounds of CPU µs per request and of the latency percentiles.
#
# Usage: benches/authz.sh [--rounds N] [--duration D] [--rate R] [--keys N] [--checks N]
# Defaults: 3 rounds of 8 s (+2 s warm-up), 3000 req/s, 20k keys, 5000 checks under callgrind:
# about 5 minutes. KEYGATE_BIN=DIR skips the release build. Needs root for apt-get (nginx).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

rounds=3 duration=8s warmup=2s rate=3000 keys=20000 checks=5000
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift ;;
    --duration) duration=$2; shift ;;
    --rate) rate=$2; shift ;;
    --keys) keys=$2; shift ;;
    --checks) checks=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
command -v valgrind >/dev/null || { echo "needs valgrind (callgrind)" >&2; exit 1; }
sbs_need nginx nginx-light || sbs_need nginx nginx
sbs_binaries
sbs_init
upstream=127.0.0.1:22000 cp=127.0.0.1:22070
kg=127.0.0.1:22080 kg_admin=127.0.0.1:22901 ng=127.0.0.1:22081
cg=127.0.0.1:22082 cg_admin=127.0.0.1:22902
sbs_start_backends
key=$(head -1 "$work/keys/valid.txt")
echo "authz benchmark, $(date -u +%F), $(sbs_machine)"

# --- 1. instructions per check ---
valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$work/cg.out" \
  "$bin/keygate" proxy --config "$work/routes.toml" --listen "$cg" --admin-listen "$cg_admin" \
  --control-plane "http://$cp" --gateway-token "$gw" --gateway-id callgrind \
  >/dev/null 2>"$work/valgrind.log" &
pids+=("$!")
sbs_wait_serving "$!" "http://$cg/x"
cg_pid=$(pgrep -f -- "--gateway-id callgrind" | head -1)
cg_url=http://$cg
echo "1. callgrind, $checks checks each, instructions per check in the gateway"
for round in 1 2; do
  a=$(cg_measure /x key-route "$checks"); b=$(cg_measure /_keygate/v1/authz/x authz "$checks")
  c=$(cg_measure /_keygate/v1/verify verify "$checks" POST)
  ia=$(( ${a#* } / checks )) ib=$(( ${b#* } / checks )) ic=$(( ${c#* } / checks ))
  echo "  round $round: key-route $ia, authz $ib ($(python3 -c "print(f'{$ib/$ia:.3f}')")× key-route), verify $ic ($(python3 -c "print(f'{$ib/$ic:.3f}')") authz÷verify)"
done
kill "$cg_pid" 2>/dev/null || true

# --- 2. nginx's own check against nginx + auth_request to keygate ---
KEYGATE_WORKERS=1 TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin/keygate" proxy --config "$work/routes.toml" \
  --listen "$kg" --admin-listen "$kg_admin" --control-plane "http://$cp" --gateway-token "$gw" \
  --gateway-id authz >/dev/null 2>"$work/keygate.log" &
kg_pid=$!; pids+=("$kg_pid")
sbs_wait_serving "$kg_pid" "http://$kg/x"

nginx_pid=
start_nginx() {  # map | authreq
  [ -n "$nginx_pid" ] && { kill "$nginx_pid"; wait "$nginx_pid" 2>/dev/null || true; }
  if [ "$1" = map ]; then
    sbs_nginx_conf 1 "listen $ng;"
  else
    # The deploy example (tests/nginx_authz.rs runs the same file), with this run's addresses.
    sed -e "s/127.0.0.1:8080/$kg/; s/127.0.0.1:3000/$upstream/; s/listen 80;/listen $ng;/" \
      deploy/examples/nginx/keygate.conf >"$work/keygate.conf"
    { sbs_nginx_head 1; echo "  include $work/keygate.conf;"; echo "}"; } >"$work/nginx.conf"
  fi
  taskset -c 1 nginx -c "$work/nginx.conf" -e "$work/nginx/error.log" &
  nginx_pid=$!; pids+=("$nginx_pid")
  sbs_wait_serving "$nginx_pid" "http://$ng/x"
}

echo "2. $rate req/s for $duration (+$warmup warm-up), $rounds rounds, CPU per request on core 1"
for round in $(seq "$rounds"); do
  for setup in $(sbs_rotated "$round" map authreq); do
    start_nginx "$setup"
    workers=$(pgrep -P "$nginx_pid" | tr '\n' ',' | sed 's/,$//')
    watched=${workers:-$nginx_pid}
    [ "$setup" = authreq ] && watched="$watched,$kg_pid"
    taskset -c 0 "$bin/keygate-bench" load --label "nginx-$setup" --url "http://$ng/x" \
      --key "$key" --rate "$rate" --duration "$duration" --warmup "$warmup" \
      --cpu-pid "$watched" --json "$work/$setup-r$round.json" >/dev/null
  done
done
kill "$nginx_pid" 2>/dev/null || true

python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def med(setup, f):
    return statistics.median(f(json.load(open(f"{work}/{setup}-r{r}.json"))) for r in range(1, rounds + 1))
cpu = lambda r: sum(c["usPerRequest"] for c in r["cpu"])
rows = {}
for setup in ("map", "authreq"):
    rows[setup] = [med(setup, cpu)] + [med(setup, lambda r, p=p: r["latency"][p] / 1000) for p in ("p50", "p99")]
    bad = sum(sum(v for k, v in json.load(open(f"{work}/{setup}-r{r}.json"))["codes"].items() if not k.startswith("200"))
              for r in range(1, rounds + 1))
    print(f"  nginx-{setup:8} CPU {rows[setup][0]:6.1f} µs/request   latency p50 {rows[setup][1]:.3f} ms  p99 {rows[setup][2]:.3f} ms   non-200: {bad}")
print(f"  auth_request to keygate ÷ nginx's map: {rows['authreq'][0] / rows['map'][0]:.2f}× CPU per request")
PY
