#!/usr/bin/env bash
# Instructions and cache misses per operation of one hot-path micro-benchmark, under callgrind
# (BENCHMARKS.md, 2026-12-01, "the in-memory hot path"). Load on the machine does not move these
# counts, unlike criterion's wall-clock medians.
#
# usage: benches/callgrind-hot-path.sh BENCH_BINARY FILTER [KEYS] [MARKER]
#   BENCH_BINARY  a criterion bench binary (`cargo bench -p keygate-benches --bench hot_path
#                 --no-run` prints its path; the `sessions` bench works too)
#   FILTER        criterion's filter, naming one benchmark (e.g. 'keys spread')
#   KEYS          replica size (KEYGATE_BENCH_KEYS; default 1000000)
#   MARKER        a function called once per operation (default blake3::hash; for sessions
#                 SessionVerifier::verify)
#
# The binary runs under valgrind with instrumentation off while it builds its fixture; when the
# benchmark starts, instrumentation is switched on and the counters zeroed, and when it
# completes they are dumped, so only the measured loop is counted. Prints totals ÷ MARKER calls.
set -euo pipefail
bin=$1 filter=$2 keys=${3:-1000000} marker=${4:-blake3::hash}
out=$(mktemp -d)/callgrind.out
log=$out.log
KEYGATE_BENCH_KEYS=$keys valgrind --tool=callgrind --cache-sim=yes --instr-atstart=no \
  --callgrind-out-file="$out" "$bin" --bench --profile-time 5 "$filter" >"$log" 2>&1 &
vg=$!
for _ in $(seq 1 1800); do grep -q "Profiling for" "$log" && break; sleep 0.5; done
callgrind_control -i on "$vg" >/dev/null 2>&1
callgrind_control -z "$vg" >/dev/null 2>&1
for _ in $(seq 1 3000); do grep -q "Complete" "$log" && break; sleep 0.2; done
callgrind_control -d "$vg" >/dev/null 2>&1
wait "$vg"
dump=$(ls "$out".* | grep -v '\.log$' | head -1)
python3 - "$dump" "$marker" <<'PY'
import re, sys
path, marker = sys.argv[1], sys.argv[2]
events = totals = None
names, current, calls = {}, "", 0
for line in open(path):
    if line.startswith("events:"):
        events = line.split()[1:]
    elif line.startswith(("summary:", "totals:")):
        totals = [int(x) for x in line.split()[1:]]
    for prefix in ("fn=", "cfn="):
        if line.startswith(prefix):
            m = re.match(prefix.replace("=", r"=\((\d+)\)(?: (.*))?"), line.strip())
            if m and m.group(2):
                names[m.group(1)] = m.group(2)
            if m and prefix == "cfn=":
                current = names.get(m.group(1), "")
    if line.startswith("calls=") and marker in current:
        calls += int(line.split()[0][len("calls="):])
counts = dict(zip(events, totals))
print(f"operations ({marker} calls): {calls}")
for event in ("Ir", "Dr", "Dw", "D1mr", "D1mw", "DLmr", "DLmw"):
    if calls and event in counts:
        print(f"  {event} per operation: {counts[event] / calls:.2f}")
PY
