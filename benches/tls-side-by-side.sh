#!/usr/bin/env bash
# keygate terminating TLS side by side with nginx terminating TLS (DESIGN.md, "Performance
# targets", the TLS bullet; issue 11, "Benchmarks"), with the plaintext figures of the same run
# beside them. One fixed-response upstream and a synthetic control plane holding N keys (default
# 1M) feed
#   keygate (plain)  keygate on http://, routes "/" (key verified) and "/public/" (no auth)
#   keygate (TLS)    the same with --tls-cert/--tls-key, on https://
#   nginx            one nginx with two servers, http:// and https:// (`ssl_protocols TLSv1.3`),
#                    doing the same `map $http_authorization` key check as side-by-side.sh
# keygate and nginx serve the same leaf certificate, ECDSA P-256, made here with openssl by a
# throwaway P-256 CA (SANs localhost and 127.0.0.1). Both keep their defaults for session
# tickets (nginx `ssl_session_tickets on`, keygate's rustls ticketer), and the load generator
# keeps no session (rustls, resumption disabled), so every new connection is a full TLS 1.3
# handshake (X25519, ECDSA P-256 signature), which the generator counts and reports.
# Pinned as side-by-side.sh pins: every proxy on core 1 with one worker (keygate
# KEYGATE_WORKERS=1 and TOKIO_WORKER_THREADS=1, nginx worker_processes 1), load generator (one
# thread), upstream and control plane on core 0.
# Modes: "pinned-tls" (https://, targets keygate-noauth, keygate-key, nginx) and "pinned" (the
# same over http://, the plaintext baseline of this run). Phases per round, targets rotated:
#   fixed-rate  keep-alive connections, open loop at --rate req/s; proxy CPU per request from
#               /proc (schedstat total, split into user and kernel time by utime/stime)
#   new-conn    closed loop, one request per new connection (Connection: close); over TLS
#               every request is a new full handshake: handshakes/s at saturation and the
#               proxy's CPU per handshake (connect + handshake + one proxied request)
# Medians over rounds, ratios and the target checks (keygate-key CPU/request over keep-alive
# HTTPS ≤ nginx's; handshakes/s ≥ nginx's) go to OUT.json, as text to OUT.txt; runs in OUT/.
#
# Usage: benches/tls-side-by-side.sh [--quick] [--rounds N] [--duration D] [--warmup D]
#          [--keys N] [--rate R] [--connections C] [--handshake-connections C]
#          [--targets keygate-noauth,keygate-key,nginx] [--out PREFIX]
# Defaults: 3 rounds of 8 s (+2 s warm-up) per measurement, 1M keys, 8000 req/s, 32 keep-alive
# connections, 32 connections in flight for new-conn: ~8 minutes.
# --quick: 1 round of 2 s (+1 s), 20k keys (a smoke run, about a minute).
# --targets: measure only these (e.g. `--targets nginx` to try the harness without keygate).
# Needs root for apt-get (nginx-light) when nginx is missing. KEYGATE_BIN=DIR skips the release
# build and uses the binaries in DIR; KEEP=1 keeps the work directory (certificates, configs).
# PERF=1: after the rounds, one more TLS run per phase of keygate-key and nginx, each under
# `perf record` (sampling, no call graphs; not part of the figures), reports in OUT/perf/;
# with --rounds 0 only these.
# Every run reports how busy each core was (by anyone): core 1 busier than the proxy on it
# means other work shared the proxy's core during that run.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

quick=0 rounds=3 duration=8s warmup=2s keys=1000000 rate=8000 connections=32 hs_connections=32
targets=(keygate-noauth keygate-key nginx)
out=benches/results/tls-side-by-side-$(date -u +%F)
default_out=$out
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 rounds=1 duration=2s warmup=1s keys=20000 ;;
    --rounds) rounds=$2; shift ;;
    --duration) duration=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --keys) keys=$2; shift ;;
    --rate) rate=$2; shift ;;
    --connections) connections=$2; shift ;;
    --handshake-connections) hs_connections=$2; shift ;;
    --targets) IFS=, read -r -a targets <<<"$2"; shift ;;
    --out) out=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
for target in "${targets[@]}"; do
  case $target in keygate-noauth|keygate-key|nginx) ;; *) echo "unknown target $target" >&2; exit 2 ;; esac
done
[ "$quick" = 1 ] && [ "$out" = "$default_out" ] && out=$(mktemp -d)/quick
wants_keygate=0
case " ${targets[*]} " in *" keygate-"*) wants_keygate=1 ;; esac

sbs_need nginx nginx-light || sbs_need nginx nginx
sbs_need openssl openssl
sbs_binaries
if [ "$wants_keygate" = 1 ] && ! "$bin/keygate" proxy --help 2>&1 | grep -- --tls-cert >/dev/null; then
  echo "$bin/keygate proxy has no --tls-cert (TLS not built in): measure nginx alone with --targets nginx" >&2
  exit 1
fi
sbs_init
# Ports below the ephemeral range (32768+), where the load generator's own connections live;
# apart from side-by-side.sh's.
upstream=127.0.0.1:22000 cp=127.0.0.1:22070
kg=127.0.0.1:22080 kg_admin=127.0.0.1:22901 kgs=127.0.0.1:22443 kgs_admin=127.0.0.1:22902
ng=127.0.0.1:22081 ngs=127.0.0.1:22444
tls=$work/tls

make_certificates() {  # a P-256 CA and a P-256 leaf for localhost and 127.0.0.1, in $tls
  mkdir -p "$tls"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tls/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$tls/ca.key" -sha256 -days 7 -subj "/CN=keygate bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$tls/ca.pem" 2>/dev/null
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tls/leaf.key" 2>/dev/null
  openssl req -new -key "$tls/leaf.key" -subj "/CN=localhost" -out "$tls/leaf.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$tls/leaf.ext"
  openssl x509 -req -in "$tls/leaf.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 7 -sha256 -extfile "$tls/leaf.ext" -out "$tls/leaf.pem" 2>/dev/null
  echo "certificate: $(openssl x509 -in "$tls/leaf.pem" -noout -subject -ext subjectAltName | tr '\n' ' ')($(openssl x509 -in "$tls/leaf.pem" -noout -text | grep -m1 -o 'ASN1 OID: [a-z0-9]*'))" >&2
}

start_proxies() {
  sbs_nginx_conf 1 "listen $ng;" "listen $ngs ssl;
    ssl_certificate $tls/leaf.pem;
    ssl_certificate_key $tls/leaf.key;
    ssl_protocols TLSv1.3;"
  kg_pid="" kgs_pid=""
  if [ "$wants_keygate" = 1 ]; then
    local common=(--config "$work/routes.toml" --control-plane "http://$cp" --gateway-token "$gw")
    KEYGATE_WORKERS=1 TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin/keygate" proxy "${common[@]}" --listen "$kg" \
      --admin-listen "$kg_admin" --gateway-id tls-side-by-side-plain >/dev/null &
    kg_pid=$!; pids+=("$kg_pid")
    KEYGATE_WORKERS=1 TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin/keygate" proxy "${common[@]}" --listen "$kgs" \
      --admin-listen "$kgs_admin" --gateway-id tls-side-by-side-tls \
      --tls-cert "$tls/leaf.pem" --tls-key "$tls/leaf.key" >/dev/null &
    kgs_pid=$!; pids+=("$kgs_pid")
  fi
  taskset -c 1 nginx -e stderr -p "$work/nginx" -c "$work/nginx.conf" &
  ng_pid=$!; pids+=("$ng_pid")
  if [ "$wants_keygate" = 1 ]; then
    bench_wait_http "http://$kg_admin/readyz" 200
    bench_wait_http "http://$kgs_admin/readyz" 200
    sbs_wait_serving "$kg_pid" "http://$kg/x"
    sbs_wait_serving "$kgs_pid" "https://$kgs/x" --cacert "$tls/ca.pem" --tlsv1.3
  fi
  sbs_wait_serving "$ng_pid" "http://$ng/x"
  sbs_wait_serving "$ng_pid" "https://$ngs/x" --cacert "$tls/ca.pem" --tlsv1.3
  ng_workers=$(pgrep -P "$ng_pid" | paste -sd, -)
  echo "proxies up (1 worker each, on core 1): keygate plain $kg_pid ($(ls /proc/${kg_pid:-0}/task 2>/dev/null | wc -l) threads), keygate TLS $kgs_pid ($(ls /proc/${kgs_pid:-0}/task 2>/dev/null | wc -l) threads), nginx workers $ng_workers" >&2
}

url_of() {  # MODE TARGET
  case $1-$2 in
    pinned-keygate-noauth) echo "http://$kg/public/x" ;; pinned-keygate-key) echo "http://$kg/x" ;;
    pinned-nginx) echo "http://$ng/x" ;;
    pinned-tls-keygate-noauth) echo "https://$kgs/public/x" ;;
    pinned-tls-keygate-key) echo "https://$kgs/x" ;; pinned-tls-nginx) echo "https://$ngs/x" ;;
  esac
}
pid_of() {  # MODE TARGET
  case $1-$2 in
    pinned-keygate-*) echo "$kg_pid" ;; pinned-tls-keygate-*) echo "$kgs_pid" ;; *-nginx) echo "$ng_workers" ;;
  esac
}

measure() {  # MODE PHASE TARGET ROUND [JSON]
  local mode=$1 phase=$2 target=$3 round=$4 json=${5:-$out/$1-$2-$3-r$4.json} args=()
  case $phase in
    fixed-rate) args=(--rate "$rate" --connections "$connections") ;;
    new-conn) args=(--new-connection-per-request --connections "$hs_connections") ;;
  esac
  [ "$mode" = pinned-tls ] && args+=(--tls-ca "$tls/ca.pem" --tls-server-name localhost)
  taskset -c 0 "$bin/keygate-bench" --threads 1 load --label "$target" --url "$(url_of "$mode" "$target")" \
    --keys "$work/keys/valid.txt" --duration "$duration" --warmup "$warmup" \
    --cpu-pid "$(pid_of "$mode" "$target")" "${args[@]}" \
    --json "$json" | sed "s/^/[$mode r$round $phase] /"
}

rm -rf "$out"; mkdir -p "$out"
machine="$(sbs_machine); $(nginx -v 2>&1 | sed 's/^nginx version: //') with $(openssl version | cut -d' ' -f1-2)"
machine="$machine; load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "machine: $machine; $keys keys; rounds $rounds × $duration (+$warmup warm-up); fixed rate $rate/s; targets ${targets[*]}" >&2
make_certificates
sbs_start_backends
start_proxies
started=$(date +%s)
for round in $(seq "$rounds"); do
  for step in "pinned-tls fixed-rate" "pinned fixed-rate" "pinned-tls new-conn" "pinned new-conn"; do
    for target in $(sbs_rotated "$round" "${targets[@]}"); do
      measure ${step% *} ${step#* } "$target" "$round"
    done
  done
done
echo "measured in $(( $(date +%s) - started )) s; load average now $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [ -n "${PERF:-}" ] && command -v perf >/dev/null; then
  mkdir -p "$out/perf"
  for phase in fixed-rate new-conn; do
    for target in "${targets[@]}"; do
      [ "$target" = keygate-noauth ] && continue
      perf record -q -F 999 -p "$(pid_of pinned-tls "$target")" -o "$out/perf/$phase-$target.data" 2>/dev/null &
      perf_pid=$!
      measure pinned-tls "$phase" "$target" perf "$out/perf/$phase-$target.json"
      kill -INT "$perf_pid"; wait "$perf_pid" || true
      for sort in dso dso,symbol; do
        perf report -i "$out/perf/$phase-$target.data" --no-children --sort "$sort" \
          --percent-limit 0.2 --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' || true
      done >"$out/perf/$phase-$target.txt"
      rm -f "$out/perf/$phase-$target.data"
    done
  done
  echo "profiles: $out/perf/" >&2
fi
grep -v '^\s*$' "$work/nginx/error.log" 2>/dev/null | tail -5 | sed 's/^/nginx error.log: /' >&2 || true
[ "$rounds" -gt 0 ] || exit 0  # --rounds 0: only the PERF profiles
"$bin/keygate-bench" summarize "$out" --out "$out.json" --machine "$machine"
"$bin/keygate-bench" table "$out.json" --out "$out.txt"
cat "$out.txt"
echo "results: $out.json, table: $out.txt, runs: $out/" >&2
