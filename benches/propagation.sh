#!/usr/bin/env bash
# Revocation propagation (issues 3 and 4): a control plane, 8 gateways and a fixed-response
# upstream as separate release processes on loopback; then `keygate-propagation` over N
# revocations, once idle and once with a steady background load on the gateways. Reports admin
# call → refused at all 8 gateways (probed by requests) and the `--wait` time.
#   default:    API keys, alternately disabled and deleted.
#   --passkeys: passkeys (RevokePasskey), each enrolled first by a software authenticator,
#               probed with the session it signed in, which must turn 401 REVOKED; the
#               control plane runs with its passkey rate limits off.
# Usage: benches/propagation.sh [--passkeys] [revocations (1000)] [load req/s (2000)]
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
mode=key
if [ "${1:-}" = --passkeys ]; then
  mode=passkey
  shift
fi
revocations=${1:-1000}
load=${2:-2000}
if [ $mode = passkey ]; then
  results=benches/results/passkey-propagation
  # Every revocation enrolls a passkey through the passkey API from one address and for a new
  # user: with the default limits (60/min per address) the run would be throttled, not measured.
  bench_start 20000 $'passkey_rate_per_address = 0\npasskey_rate_per_user = 0'
else
  results=benches/results/propagation
  bench_start 20000
fi
gateways=()
for i in 1 2 3 4 5 6 7 8; do
  $bin/keygate proxy --config "$routes" --listen 127.0.0.1:2908$i --admin-listen 127.0.0.1:3090$i \
    --control-plane "$cp_url" --gateway-token "$gw" --gateway-id "prop-$i" >/dev/null 2>"$work/gateway-$i.log" &
  gateways+=("http://127.0.0.1:2908$i/x")
done
for i in 1 2 3 4 5 6 7 8; do bench_wait_ready 3090$i; done
list=$(IFS=,; echo "${gateways[*]}")
mkdir -p benches/results
echo "machine: $(nproc) cores, $(uname -m); $(date -u +%F); 8 gateways; revoking: $mode"
echo "== idle"
$bin/keygate-propagation --revoke $mode --passkey-api "$cp_http_url" --gateways "$list" \
  --revocations "$revocations" --json "$results-idle.json"
echo "== under load ($load req/s over the 8 gateways)"
$bin/keygate-propagation --revoke $mode --passkey-api "$cp_http_url" --gateways "$list" \
  --revocations "$revocations" --load-rps "$load" --json "$results-load.json"
