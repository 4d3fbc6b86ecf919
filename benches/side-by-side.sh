#!/usr/bin/env bash
# keygate side by side with nginx and HAProxy (DESIGN.md, "Performance targets"), in one run:
# the fixed-response upstream, a synthetic control plane holding N keys (default 1M), and in
# interleaved rounds the same load against
#   upstream        the upstream directly (the limit of the load generator's core)
#   keygate-noauth  keygate's no-auth route (same request, Authorization ignored)
#   keygate-key     keygate verifying the key against its 1M-key replica
#   nginx           nginx with the same keys in a `map` on the Authorization header
#   haproxy         HAProxy with the same keys in a map file
# Mode "pinned": every proxy on core 1 with one worker (nginx worker_processes 1, HAProxy
# nbthread 1, keygate KEYGATE_WORKERS=1 serving threads and TOKIO_WORKER_THREADS=1), load
# generator, upstream and control plane on core 0. Mode "unpinned-2w": two workers each,
# nothing pinned.
# Phases per round: saturation (closed loop), fixed-rate (open loop at --rate, proxy CPU time
# per request from /proc), half-peak (open loop at half of keygate-key's saturation rate of the
# round; latency from the intended send time). Medians over rounds, ratios and target checks go
# to OUT.json, the chart to OUT.svg.
# Syscall census, pinned mode, after the measured rounds: for each target a short open-loop run
# at --rate (3 s, no warm-up) with `strace -c -f` attached to its process(es) (keygate and its
# threads, nginx's worker, HAProxy, the upstream), to OUT/pinned-syscalls-TARGET-r1.strace;
# the summary divides the calls by the requests answered. strace stops the process at every
# call, so these runs are no CPU, throughput or latency figures: only the counts are used.
#
# Usage: benches/side-by-side.sh [--quick] [--rounds N] [--duration D] [--warmup D]
#          [--keys N] [--rate R] [--connections C] [--out PREFIX]
# Defaults: 3 rounds of 8 s (+2 s warm-up) per measurement, 1M keys, 8000 req/s: ~13 minutes.
# --quick: 1 round of 2 s, 20k keys, pinned only (a smoke run, a minute or two).
# Longer: e.g. --rounds 5 --duration 20s (~45 minutes).
# Needs root for apt-get (nginx-light, haproxy, strace) when they are missing, and ptrace for
# the census (without it the census is skipped with a warning). KEYGATE_BIN=DIR skips the
# release build and uses the binaries in DIR; KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

quick=0 rounds=3 duration=8s warmup=2s keys=1000000 rate=8000 connections=32
out=benches/results/side-by-side-$(date -u +%F)
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 rounds=1 duration=2s warmup=1s keys=20000 ;;
    --rounds) rounds=$2; shift ;;
    --duration) duration=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --keys) keys=$2; shift ;;
    --rate) rate=$2; shift ;;
    --connections) connections=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$quick" = 1 ] && [ "$out" = "benches/results/side-by-side-$(date -u +%F)" ] && out=$(mktemp -d)/quick

sbs_need nginx nginx-light || sbs_need nginx nginx
sbs_need haproxy haproxy
sbs_need strace strace
sbs_binaries
sbs_init
# Ports below the ephemeral range (32768+), where the load generator's own connections live.
upstream=127.0.0.1:21000 cp=127.0.0.1:21070
kg=127.0.0.1:21080 kg_admin=127.0.0.1:21901 ng=127.0.0.1:21081 ha=127.0.0.1:21082

# The same keys for keygate, nginx (sbs_start_backends writes its map) and HAProxy: valid → 1,
# disabled → 2 (403), anything else 401.
sbs_start_backends
# HAProxy map keys end at the first space, so its map holds the bare keys and the lookup skips
# "Bearer " after checking it is there.
awk '{printf "%s 1\n", $0}' "$work/keys/valid.txt" >"$work/haproxy.map"
awk '{printf "%s 2\n", $0}' "$work/keys/disabled.txt" >>"$work/haproxy.map"

start_proxies() {  # WORKERS PIN ("taskset -c 1" or "")
  local workers=$1 pin=$2
  sbs_nginx_conf "$workers" "listen $ng;"
  cat >"$work/haproxy.cfg" <<HAPROXY
global
  nbthread $workers
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend keys
  bind $ha
  acl bearer req.fhdr(authorization) -m beg "Bearer "
  http-request set-var(txn.kg) req.fhdr(authorization),bytes(7),map($work/haproxy.map,0)
  http-request deny deny_status 401 unless bearer
  http-request deny deny_status 401 if { var(txn.kg) -m str 0 }
  http-request deny deny_status 403 if { var(txn.kg) -m str 2 }
  default_backend fixed
backend fixed
  server up $upstream
HAPROXY
  KEYGATE_WORKERS=$workers TOKIO_WORKER_THREADS=$workers $pin "$bin/keygate" proxy --config "$work/routes.toml" \
    --listen "$kg" --admin-listen "$kg_admin" --control-plane "http://$cp" --gateway-token "$gw" \
    --gateway-id side-by-side >/dev/null &
  kg_pid=$!; pids+=("$kg_pid")
  $pin nginx -e stderr -p "$work/nginx" -c "$work/nginx.conf" &
  ng_pid=$!; pids+=("$ng_pid")
  $pin haproxy -db -f "$work/haproxy.cfg" >/dev/null &
  ha_pid=$!; pids+=("$ha_pid")
  bench_wait_http "http://$kg_admin/readyz" 200
  sbs_wait_serving "$kg_pid" "http://$kg/x"
  sbs_wait_serving "$ng_pid" "http://$ng/x"
  sbs_wait_serving "$ha_pid" "http://$ha/x"
  ng_workers=$(pgrep -P "$ng_pid" | paste -sd, -)
  echo "proxies up ($workers worker(s), ${pin:-unpinned}): keygate threads $(ls /proc/$kg_pid/task | wc -l), nginx workers $ng_workers, haproxy $ha_pid" >&2
}

stop_proxies() {
  kill "$kg_pid" "$ng_pid" "$ha_pid" 2>/dev/null || true
  wait "$kg_pid" "$ng_pid" "$ha_pid" 2>/dev/null || true
}

targets=(upstream keygate-noauth keygate-key nginx haproxy)
url_of() {
  case $1 in
    upstream) echo "http://$upstream/x" ;; keygate-noauth) echo "http://$kg/public/x" ;;
    keygate-key) echo "http://$kg/x" ;; nginx) echo "http://$ng/x" ;; haproxy) echo "http://$ha/x" ;;
  esac
}
pid_of() {
  case $1 in
    upstream) echo "$upstream_pid" ;; keygate-*) echo "$kg_pid" ;;
    nginx) echo "$ng_workers" ;; haproxy) echo "$ha_pid" ;;
  esac
}

measure() {  # MODE PHASE TARGET ROUND [RATE]
  local mode=$1 phase=$2 target=$3 round=$4 rate_arg=()
  [ -n "${5:-}" ] && rate_arg=(--rate "$5")
  $loadpin "$bin/keygate-bench" --threads "$load_threads" load --label "$target" \
    --url "$(url_of "$target")" --keys "$work/keys/valid.txt" --connections "$connections" \
    --duration "$duration" --warmup "$warmup" --cpu-pid "$(pid_of "$target")" "${rate_arg[@]}" \
    --json "$out/$mode-$phase-$target-r$round.json" | sed "s/^/[$mode r$round $phase] /"
}

census_duration=3s
census() {  # MODE TARGET: the syscall census of TARGET (the proxies are up)
  local mode=$1 target=$2 name log strace_pid want
  name=$out/$mode-syscalls-$target-r1 log=$work/strace-$target.log
  want=$(pid_of "$target" | tr ',' '\n' | wc -l)
  # -f with -p attaches every thread the process already has ("attached with N threads").
  strace -c -f -o "$name.strace" -p "$(pid_of "$target")" 2>"$log" &
  strace_pid=$!; pids+=("$strace_pid")
  attached() { grep -s -c ' attached' "$log" || true; }
  for _ in $(seq 300); do
    [ "$(attached)" -ge "$want" ] && break
    kill -0 "$strace_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$(attached)" -lt "$want" ]; then
    echo "[$mode syscalls] $target: strace did not attach, no census:" >&2; cat "$log" >&2
    kill "$strace_pid" 2>/dev/null || true; wait "$strace_pid" 2>/dev/null || true
    rm -f "$name.strace"
    return 0
  fi
  $loadpin "$bin/keygate-bench" --threads "$load_threads" load --label "$target" \
    --url "$(url_of "$target")" --keys "$work/keys/valid.txt" --connections "$connections" \
    --duration "$census_duration" --warmup 0s --rate "$rate" --json "$name.json" \
    | sed "s/^/[$mode syscalls, under strace] /"
  # On SIGINT strace detaches, writes its table and dies by the signal.
  kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
  [ -s "$name.strace" ] || { echo "[$mode syscalls] $target: strace wrote no table" >&2; cat "$log" >&2; rm -f "$name.strace"; }
}

run_mode() {  # MODE WORKERS PIN PHASES...
  local mode=$1 workers=$2 pin=$3; shift 3
  local phases=("$@")
  start_proxies "$workers" "$pin"
  for round in $(seq "$rounds"); do
    for phase in "${phases[@]}"; do
      local phase_rate=""
      [ "$phase" = fixed-rate ] && phase_rate=$rate
      if [ "$phase" = half-peak ]; then
        phase_rate=$(python3 -c "import json; print(round(json.load(open('$out/$mode-saturation-keygate-key-r$round.json'))['rps'] / 2))")
      fi
      for target in $(sbs_rotated "$round" "${targets[@]}"); do
        measure "$mode" "$phase" "$target" "$round" "$phase_rate"
      done
    done
  done
  if [ "$mode" = pinned ]; then
    for target in "${targets[@]}"; do census "$mode" "$target"; done
  fi
  stop_proxies
}

rm -rf "$out"; mkdir -p "$out"
machine=$(sbs_machine)
echo "machine: $machine; $keys keys; rounds $rounds × $duration (+$warmup warm-up); fixed rate $rate/s" >&2
started=$(date +%s)
loadpin="taskset -c 0" load_threads=1
run_mode pinned 1 "taskset -c 1" saturation fixed-rate half-peak
if [ "$quick" = 0 ]; then
  loadpin="" load_threads=2
  run_mode unpinned-2w 2 "" saturation
fi
echo "measured in $(( $(date +%s) - started )) s" >&2
"$bin/keygate-bench" summarize "$out" --out "$out.json" --machine "$machine"
"$bin/keygate-bench" chart "$out.json" "$out.svg"
echo "results: $out.json, chart: $out.svg, runs: $out/" >&2
