#!/usr/bin/env bash
# A highly available control plane (DESIGN.md, "Storage and a highly available control plane"
# and "Performance targets"): two control-plane replicas (cp-1, cp-2) sharing one PostgreSQL
# database, 8 gateways split across them (1–4: --control-plane cp-1 --control-plane cp-2; 5–8:
# cp-2 then cp-1) and a fixed-response upstream, all separate release processes on loopback.
# Each figure is printed with the command that made it:
#  1. the machine, and PostgreSQL's version and durability settings;
#  2. revocation propagation (`keygate-propagation`): revocations issued through cp-1, so
#     gateways 5–8 learn of each through cp-2's tail of the shared log; admin call → refused at
#     all 8 gateways, idle and under load, p50/p99 (target p99 ≤ 50 ms); idle again probing
#     only gateways 1–4 (same replica as the write), then only 5–8 (the other replica's tail);
#     beside it, the same through one control plane on SQLite with 8 gateways of its own;
#  3. admin write throughput (`keygate-bench cp-load`, 8 gateways attached, the same keys and
#     clients each time): on SQLite (the baseline's control plane and gateways), on PostgreSQL
#     through cp-1, and through both replicas at once (half the keys and clients each);
#  4. failover under load: a steady load at gateways 1–4 with a valid key, cp-1 SIGKILLed
#     halfway through; requests sent and not answered 200 (target 0), how long until gateways
#     1–4 are connected again (their /readyz `connected`, polled every 5 ms) and to which
#     control plane (their log), and whether they resumed without a snapshot
#     (`snapshotsApplied` unchanged); then revocations through cp-2 alone;
#  5. a summary with the target checks (also summary.json).
# Results go to benches/results/ha-DATE/ (JSON) and ha-DATE.txt (this output).
# Usage: benches/ha.sh [revocations (1000)] [load req/s (2000)]
#   KEYGATE_BIN=DIR: prebuilt binaries (keygate, keygate-bench, keygate-propagation);
#   KEEP=1: keep the work and PostgreSQL directories; CP_KEYS (2000): cp-load's keys;
#   FAILOVER_SECONDS (20): the failover load's length, cp-1 killed halfway;
#   PG_SETTINGS: PostgreSQL `-c` settings, space separated (default none: fsync on).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
revocations=${1:-1000}
load=${2:-2000}
cp_keys=${CP_KEYS:-2000}
failover_seconds=${FAILOVER_SECONDS:-20}
out=benches/results/ha-$(date -u +%F)
mkdir -p "$out"
# Ports from base 6000: upstream 14000, the SQLite control plane 13070 (gRPC) and 13080 (HTTP);
# cp-N 1307N and 1308N; PostgreSQL 13432; HA gateway i 1418i (admin 1519i); SQLite gateway i
# 1428i (admin 1529i).
bench_start 6000
pids=()   # everything started here, stopped in reverse order on exit
exec 3>&1 4>&2   # the original output, for the cleanup
ha_cleanup() {
  # Back to the original output: after Ctrl-C the tee below may be gone, and a write to its
  # pipe must not end this cleanup half done.
  trap '' PIPE
  exec 1>&3 2>&4
  local i left
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  # The replicas drain with their database still up; then it stops.
  [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}" 2>/dev/null || true
  bench_pg_stop
  left=$(jobs -p)
  if [ -n "$left" ]; then
    kill $left 2>/dev/null || true
    # Not a bare `wait`: it would also wait for the tee, which waits for this shell to exit.
    wait $left 2>/dev/null || true
  fi
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap ha_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
started=$SECONDS
exec > >(tee "$out.txt") 2>&1

echo "machine: $(sbs_machine); load average $(cut -d' ' -f1-3 /proc/loadavg)"
read -r -a pg_settings <<<"${PG_SETTINGS:-}"
bench_pg_start "$(mktemp -d -t keygate-ha-pg.XXXXXX)" 13432 "${pg_settings[@]}"
pg_about="SELECT 'PostgreSQL ' || current_setting('server_version')
  || ', fsync=' || current_setting('fsync')
  || ', synchronous_commit=' || current_setting('synchronous_commit')"
echo "postgresql: $(bench_psql keygate "$pg_about"), $pg_url"

cp1=http://127.0.0.1:13071
cp2=http://127.0.0.1:13072
# Both replicas start at once: their migrations take turns under the advisory lock.
for n in 1 2; do
  $bin/keygate control-plane --grpc-listen 127.0.0.1:1307$n --http-listen 127.0.0.1:1308$n \
    --database "$pg_url" --admin-token "$admin" --gateway-token "$gw" >/dev/null 2>"$work/cp-$n.log" &
  pids+=("$!")
  declare "cp${n}_pid=$!"
done
for n in 1 2; do bench_wait_http "http://127.0.0.1:1308$n/healthz" 200; done
export KEYGATE_ENDPOINT=$cp1
# Gateways log their sync stream's openings (which control plane) and snapshots.
for i in 1 2 3 4 5 6 7 8; do
  if [ $i -le 4 ]; then order=("$cp1" "$cp2"); else order=("$cp2" "$cp1"); fi
  NO_COLOR=1 KEYGATE_LOG=warn,keygate_proxy::sync=info $bin/keygate proxy --config "$routes" \
    --listen 127.0.0.1:1418$i --admin-listen 127.0.0.1:1519$i --control-plane "${order[0]}" \
    --control-plane "${order[1]}" --gateway-token "$gw" --gateway-id "ha-$i" \
    >/dev/null 2>"$work/gateway-$i.log" &
  pids+=("$!")
done
# The baseline beside them: 8 gateways on the SQLite control plane of bench_start.
sqlite_gateways=()
for i in 1 2 3 4 5 6 7 8; do
  $bin/keygate proxy --config "$routes" --listen 127.0.0.1:1428$i --admin-listen 127.0.0.1:1529$i \
    --control-plane "$cp_url" --gateway-token "$gw" --gateway-id "ha-sqlite-$i" >/dev/null 2>&1 &
  pids+=("$!")
  sqlite_gateways+=("$!")
done
for i in 1 2 3 4 5 6 7 8; do bench_wait_ready 1519$i; bench_wait_ready 1529$i; done
urls() {  # PORT_PREFIX N...: http://127.0.0.1:<PORT_PREFIX><N>/x for each N, comma separated
  local prefix=$1 list=() i
  shift
  for i; do list+=("http://127.0.0.1:$prefix$i/x"); done
  (IFS=,; echo "${list[*]}")
}
gateways=$(urls 1418 1 2 3 4 5 6 7 8)
sqlite_list=$(urls 1428 1 2 3 4 5 6 7 8)
echo "topology: cp-1 $cp1 and cp-2 $cp2 on one PostgreSQL database; gateways 1-4 (:14181-14184)"
echo "  cp-1 then cp-2, 5-8 (:14185-14188) cp-2 then cp-1. Baseline: a control plane on SQLite"
echo "  ($cp_url) with 8 gateways of its own (:14281-14288)."

echo
echo "== 2. revocation propagation through cp-1 to 8 gateways on two replicas (target p99 <= 50 ms)"
echo "\$ keygate-propagation --endpoint cp-1 --gateways <8> --revocations $revocations   (idle)"
$bin/keygate-propagation --endpoint "$cp1" --gateways "$gateways" --revocations "$revocations" \
  --json "$out/propagation-idle.json"
echo "\$ keygate-propagation --endpoint cp-1 --gateways <8> --revocations $revocations --load-rps $load"
$bin/keygate-propagation --endpoint "$cp1" --gateways "$gateways" --revocations "$revocations" \
  --load-rps "$load" --json "$out/propagation-load.json"
echo "where the time goes (idle): through cp-1, probing only the gateways on cp-1, then only those on cp-2"
echo "\$ keygate-propagation --endpoint cp-1 --gateways <1-4> --revocations $revocations"
$bin/keygate-propagation --endpoint "$cp1" --gateways "$(urls 1418 1 2 3 4)" \
  --revocations "$revocations" --json "$out/propagation-idle-same-replica.json"
echo "\$ keygate-propagation --endpoint cp-1 --gateways <5-8> --revocations $revocations"
$bin/keygate-propagation --endpoint "$cp1" --gateways "$(urls 1418 5 6 7 8)" \
  --revocations "$revocations" --json "$out/propagation-idle-other-replica.json"
echo "baseline, one control plane on SQLite:"
echo "\$ keygate-propagation --endpoint <SQLite control plane> --gateways <its 8> --revocations $revocations   (idle)"
$bin/keygate-propagation --endpoint "$cp_url" --gateways "$sqlite_list" --revocations "$revocations" \
  --json "$out/propagation-sqlite-idle.json"
echo "\$ keygate-propagation --endpoint <SQLite control plane> --gateways <its 8> --revocations $revocations --load-rps $load"
$bin/keygate-propagation --endpoint "$cp_url" --gateways "$sqlite_list" --revocations "$revocations" \
  --load-rps "$load" --json "$out/propagation-sqlite-load.json"

echo
echo "== 3. admin write throughput, 8 gateways attached (cp-load --keys $cp_keys --clients 8)"
echo "\$ keygate-bench cp-load --endpoint <SQLite control plane> --keys $cp_keys --clients 8   (8 gateways on it)"
$bin/keygate-bench cp-load --endpoint "$cp_url" --keys "$cp_keys" --clients 8 --json "$out/cp-load-sqlite.json"
kill "${sqlite_gateways[@]}"
wait "${sqlite_gateways[@]}" 2>/dev/null || true
echo "\$ keygate-bench cp-load --endpoint cp-1 --keys $cp_keys --clients 8   (PostgreSQL, the 8 HA gateways)"
$bin/keygate-bench cp-load --endpoint "$cp1" --keys "$cp_keys" --clients 8 --json "$out/cp-load-postgres-cp1.json"
echo "\$ keygate-bench cp-load --endpoint cp-1 --keys $((cp_keys / 2)) --clients 4 &"
echo "\$ keygate-bench cp-load --endpoint cp-2 --keys $((cp_keys / 2)) --clients 4   (at once)"
both=()
for n in 1 2; do
  endpoint=cp$n
  $bin/keygate-bench cp-load --endpoint "${!endpoint}" --keys $((cp_keys / 2)) --clients 4 \
    --json "$out/cp-load-postgres-both-cp$n.json" | sed "s/^/cp-$n: /" &
  both+=("$!")
done
for job in "${both[@]}"; do wait "$job"; done
python3 - "$out"/cp-load-postgres-both-cp{1,2}.json <<'PY'
import json, sys
runs = [json.load(open(path)) for path in sys.argv[1:]]
def combined(phase):
    operations = sum(run[phase]["operations"] for run in runs)
    seconds = max(run[phase]["seconds"] for run in runs)
    return f"{operations} {phase} in {seconds:.2f} s = {operations / seconds:.0f}/s"
print(f"both replicas together (operations over the longer of the two runs): {combined('creates')}; {combined('deletes')}")
PY

echo
echo "== 4. failover under load: $load req/s at gateways 1-4 for ${failover_seconds} s, cp-1 SIGKILLed after $((failover_seconds / 2)) s"
key=$(bench_create_key)
for i in 1 2 3 4 5 6 7 8; do
  bench_wait_http "http://127.0.0.1:1418$i/x" 200 -H "Authorization: Bearer $key"
done
echo "\$ keygate-bench load --url http://127.0.0.1:1418{1..4}/x --key <valid> --rate $((load / 4))" \
  "--connections 8 --duration ${failover_seconds}s --warmup 0s   (one per gateway, at once)"
loads=()
for i in 1 2 3 4; do
  $bin/keygate-bench --threads 1 load --url "http://127.0.0.1:1418$i/x" --label "gateway $i" --key "$key" \
    --rate $((load / 4)) --connections 8 --duration "${failover_seconds}s" --warmup 0s \
    --json "$out/failover-load-$i.json" &
  loads+=("$!")
done
echo "\$ kill -9 cp-1 after $((failover_seconds / 2)) s; poll /readyz of gateways 1-8 every 5 ms"
disown "$cp1_pid"   # no "Killed" line from the shell (the cleanup still has its pid)
python3 - "$cp1_pid" $((failover_seconds / 2)) "$out/failover.json" 15191 15192 15193 15194 15195 15196 15197 15198 <<'PY'
# Kills cp-1 and watches every gateway's /readyz: gateways 1-4 (the first four ports) must see
# their stream end and connect again; the others should stay connected throughout.
import json, os, signal, sys, threading, time, urllib.error, urllib.request
pid, delay, out, ports = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
failing_over = set(ports[:4])

def readyz(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as answer:  # 503: not ready, same body
        return json.load(answer)
    except Exception:
        return None

time.sleep(delay)
before = {port: readyz(port) for port in ports}
killed = time.monotonic()
os.kill(pid, signal.SIGKILL)
deadline = killed + 30
done = threading.Event()
seen = {port: {"disconnectedMs": None, "connectedAgainMs": None, "everNotReady": False} for port in ports}

def watch(port):
    state = seen[port]
    while time.monotonic() < deadline and not (port not in failing_over and done.is_set()):
        answer = readyz(port)
        at = (time.monotonic() - killed) * 1000
        if answer is not None:
            state["everNotReady"] |= not answer["ready"]
            if not answer["connected"] and state["disconnectedMs"] is None:
                state["disconnectedMs"] = round(at, 1)
            elif answer["connected"] and state["disconnectedMs"] is not None:
                state["connectedAgainMs"] = round(at, 1)
                if port in failing_over:
                    return
        time.sleep(0.005)

threads = {port: threading.Thread(target=watch, args=(port,)) for port in ports}
for thread in threads.values():
    thread.start()
for port in failing_over:
    threads[port].join()
done.set()
for thread in threads.values():
    thread.join()
report = []
for index, port in enumerate(ports, 1):
    after = readyz(port) or {}
    state = seen[port]
    state.update(gateway=index, snapshotsBefore=(before[port] or {}).get("snapshotsApplied"),
                 snapshotsAfter=after.get("snapshotsApplied"), connectedAtEnd=after.get("connected"))
    report.append(state)
    snapshots = f"snapshots installed {state['snapshotsBefore']} -> {state['snapshotsAfter']}"
    if port in failing_over:
        if state["connectedAgainMs"] is None:
            resumed = "NOT connected again within 30 s"
        else:
            resumed = (f"stream gone at +{state['disconnectedMs']:.0f} ms, "
                       f"connected again at +{state['connectedAgainMs']:.0f} ms")
        fresh = "without a snapshot" if state["snapshotsBefore"] == state["snapshotsAfter"] else "WITH A SNAPSHOT"
        print(f"gateway {index}: {resumed} ({snapshots}: resumed {fresh})")
    else:
        stayed = ("stayed connected" if state["disconnectedMs"] is None
                  else f"DISCONNECTED at +{state['disconnectedMs']:.0f} ms")
        print(f"gateway {index}: {stayed} ({snapshots})")
    if state["everNotReady"]:
        print(f"gateway {index}: /readyz said not ready at some point")
back = [s["connectedAgainMs"] for s in report[:4]]
if all(ms is not None for ms in back):
    print(f"time to resume (kill -> all of gateways 1-4 connected again): {max(back):.0f} ms")
json.dump({"gateways": report}, open(out, "w"), indent=1)
PY
for job in "${loads[@]}"; do wait "$job"; done
for i in 1 2 3 4; do
  reconnected=$(sed 's/\x1b\[[0-9;]*m//g' "$work/gateway-$i.log" | grep 'sync stream open' | tail -1 \
    | grep -o 'control_plane=[^ ]*' || echo 'control_plane=?')
  reconnected=${reconnected#control_plane=}
  case $reconnected in "$cp1") name=cp-1 ;; "$cp2") name=cp-2 ;; *) name=? ;; esac
  echo "gateway $i: last sync stream opened to $name ($reconnected)"
done
python3 - "$out"/failover-load-{1,2,3,4}.json <<'PY'
import json, sys
runs = [json.load(open(path)) for path in sys.argv[1:]]
answered = sum(run["requests"] for run in runs)
errors = sum(run["errors"] for run in runs)
unsent = sum(run["unsent"] for run in runs)
codes = {}
for run in runs:
    for code, count in run["codes"].items():
        codes[code] = codes.get(code, 0) + count
not_200 = sum(count for code, count in codes.items() if code != "200")
print(f"failover load: {answered + errors} requests sent, {answered} answered {codes}; "
      f"not 200: {not_200}, failed below HTTP: {errors} (target 0 lost); never sent (generator behind): {unsent}")
PY
echo "\$ keygate-propagation --endpoint cp-2 --gateways <8> --revocations 20   (cp-1 gone)"
$bin/keygate-propagation --endpoint "$cp2" --gateways "$gateways" --revocations 20 \
  --json "$out/propagation-after-failover.json"

echo
echo "== summary (also $out/summary.json)"
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def read(name):
    return json.load(open(os.path.join(out, name + ".json")))
def p99(name):
    return read(name)["enforcedAtAllGateways"]["p99Ms"]
def verdict(met):
    return "MET" if met else "MISSED"
summary = {"propagationP99Ms": {name: p99("propagation-" + name) for name in
           ["idle", "load", "idle-same-replica", "idle-other-replica", "sqlite-idle", "sqlite-load"]}}
ha = summary["propagationP99Ms"]
print(f"propagation p99 through two replicas: idle {ha['idle']:.1f} ms, under load {ha['load']:.1f} ms "
      f"(target <= 50 ms: {verdict(max(ha['idle'], ha['load']) <= 50)}); idle, gateways on cp-1 only "
      f"{ha['idle-same-replica']:.1f} ms, on cp-2 only {ha['idle-other-replica']:.1f} ms; "
      f"SQLite baseline idle {ha['sqlite-idle']:.1f} ms, under load {ha['sqlite-load']:.1f} ms")
def rates(names):
    runs = [read(name) for name in names]
    return {phase: sum(run[phase]["operations"] for run in runs) / max(run[phase]["seconds"] for run in runs)
            for phase in ["creates", "deletes"]}
summary["adminWritesPerSecond"] = {
    "sqlite": rates(["cp-load-sqlite"]),
    "postgresOneReplica": rates(["cp-load-postgres-cp1"]),
    "postgresBothReplicas": rates(["cp-load-postgres-both-cp1", "cp-load-postgres-both-cp2"]),
}
print("admin writes (creates/s, deletes/s): " + "; ".join(
    f"{name} {r['creates']:.0f}, {r['deletes']:.0f}" for name, r in summary["adminWritesPerSecond"].items()))
loads = [read(f"failover-load-{i}") for i in range(1, 5)]
gateways = read("failover")["gateways"]
lost = sum(run["errors"] + sum(n for code, n in run["codes"].items() if code != "200") for run in loads)
back = [g["connectedAgainMs"] for g in gateways[:4]]
summary["failover"] = {
    "sent": sum(run["requests"] + run["errors"] for run in loads),
    "lost": lost,
    "resumedMs": max(back) if None not in back else None,
    "snapshotsDuringFailover": sum((g["snapshotsAfter"] or 0) - (g["snapshotsBefore"] or 0) for g in gateways),
}
f = summary["failover"]
resumed = f"{f['resumedMs']:.0f} ms" if f["resumedMs"] is not None else "NOT within 30 s"
print(f"failover: {f['sent']} requests sent, {f['lost']} lost (target 0: {verdict(f['lost'] == 0)}); "
      f"gateways 1-4 connected again after {resumed}; snapshots installed meanwhile: {f['snapshotsDuringFailover']}")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
PY
echo "total runtime: $((SECONDS - started)) s (after the build)"
