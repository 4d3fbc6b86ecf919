#!/usr/bin/env bash
# Two keygate builds against each other, with nginx as the baseline measured in the same run:
# CPU per proxied request (µs, and its user/kernel split) at a fixed open-loop rate, for deciding
# whether a change pays before keeping it (issue 15: a change that does not pay in CPU is not
# kept). The three proxies run at once, each pinned to core 1 with one worker (keygate:
# KEYGATE_WORKERS=1 and TOKIO_WORKER_THREADS=1), against the same synthetic control plane and
# fixed-response upstream; load generator and backends on core 0. Only one proxy is loaded at a time, in an order rotated
# each round. Medians over rounds, per proxy, to stdout and OUT.json.
#
# Usage: benches/ab-cpu.sh DIR_A DIR_B [--rounds N] [--duration D] [--warmup D] [--keys N]
#          [--rate R] [--route key|noauth] [--out PREFIX]
# DIR_A, DIR_B: directories holding a release `keygate` each (DIR_A also `keygate-bench`).
# Defaults: 5 rounds of 8 s (+2 s warm-up), 20k keys, 8000 req/s, the key route: ~6 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

[ $# -ge 2 ] || { sed -n 2,14p "$0" >&2; exit 2; }
dir_a=$(realpath "$1") dir_b=$(realpath "$2"); shift 2
rounds=5 duration=8s warmup=2s keys=20000 rate=8000 route=key connections=32
out=benches/results/ab-cpu-$(date -u +%F)
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift ;;
    --duration) duration=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --keys) keys=$2; shift ;;
    --rate) rate=$2; shift ;;
    --route) route=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
case $route in key) path=/x ;; noauth) path=/public/x ;; *) echo "--route key|noauth" >&2; exit 2 ;; esac
for dir in "$dir_a" "$dir_b"; do
  [ -x "$dir/keygate" ] || { echo "$dir/keygate: no such executable" >&2; exit 2; }
done

sbs_need nginx nginx-light || sbs_need nginx nginx
bin=$dir_a
sbs_init
upstream=127.0.0.1:22000 cp=127.0.0.1:22070
a=127.0.0.1:22080 a_admin=127.0.0.1:22901 b=127.0.0.1:22083 b_admin=127.0.0.1:22902
ng=127.0.0.1:22081
sbs_start_backends
sbs_nginx_conf 1 "listen $ng;"

start_keygate() {  # DIR LISTEN ADMIN ID
  KEYGATE_WORKERS=1 TOKIO_WORKER_THREADS=1 taskset -c 1 "$1/keygate" proxy --config "$work/routes.toml" \
    --listen "$2" --admin-listen "$3" --control-plane "http://$cp" --gateway-token "$gw" \
    --gateway-id "$4" >/dev/null &
  pids+=("$!")
}
start_keygate "$dir_a" "$a" "$a_admin" ab-a; a_pid=$!
start_keygate "$dir_b" "$b" "$b_admin" ab-b; b_pid=$!
taskset -c 1 nginx -e stderr -p "$work/nginx" -c "$work/nginx.conf" &
ng_pid=$!; pids+=("$ng_pid")
bench_wait_http "http://$a_admin/readyz" 200
bench_wait_http "http://$b_admin/readyz" 200
sbs_wait_serving "$a_pid" "http://$a/x"
sbs_wait_serving "$b_pid" "http://$b/x"
sbs_wait_serving "$ng_pid" "http://$ng/x"
ng_workers=$(pgrep -P "$ng_pid" | paste -sd, -)

url_of() { case $1 in a) echo "http://$a$path" ;; b) echo "http://$b$path" ;; nginx) echo "http://$ng/x" ;; esac; }
pid_of() { case $1 in a) echo "$a_pid" ;; b) echo "$b_pid" ;; nginx) echo "$ng_workers" ;; esac; }

rm -rf "$out"; mkdir -p "$out"
echo "machine: $(sbs_machine); A = $dir_a, B = $dir_b; $route route; $keys keys; $rounds rounds × $duration at $rate/s" >&2
for round in $(seq "$rounds"); do
  for target in $(sbs_rotated "$round" a b nginx); do
    taskset -c 0 "$bin/keygate-bench" --threads 1 load --label "$target" --url "$(url_of "$target")" \
      --keys "$work/keys/valid.txt" --connections "$connections" --duration "$duration" \
      --warmup "$warmup" --cpu-pid "$(pid_of "$target")" --rate "$rate" \
      --json "$out/$target-r$round.json" | sed "s/^/[r$round] /" >&2
  done
done

python3 - "$out" "$dir_a" "$dir_b" "$route" <<'PY'
import json, statistics, sys, glob, os
out, dir_a, dir_b, route = sys.argv[1:5]
rows = {}
for target in ("a", "b", "nginx"):
    runs = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/{target}-r*.json"))]
    total = [sum(c["usPerRequest"] for c in r["cpu"]) for r in runs]
    user = [sum(c["usPerRequest"] * (1 - c.get("systemShare", 0)) for c in r["cpu"]) for r in runs]
    kernel = [t - u for t, u in zip(total, user)]
    errors = sum(r["errors"] + r["unsent"] for r in runs)
    rows[target] = dict(total=statistics.median(total), user=statistics.median(user),
                        kernel=statistics.median(kernel), per_round=total, errors=errors,
                        p99_us=statistics.median(r["latency"]["p99"] for r in runs))
# Round by round: the three proxies of a round ran back to back, so their ratio leaves out
# what the host did between rounds (on a noisy host, the ratio of medians does not).
def by_round(x, y):
    return statistics.median(b / a for a, b in zip(rows[x]["per_round"], rows[y]["per_round"]))
summary = {"a": dir_a, "b": dir_b, "route": route, "proxies": rows,
           "b_over_a": rows["b"]["total"] / rows["a"]["total"],
           "a_over_nginx": rows["a"]["total"] / rows["nginx"]["total"],
           "b_over_nginx": rows["b"]["total"] / rows["nginx"]["total"],
           "by_round": {"b_over_a": by_round("a", "b"), "a_over_nginx": by_round("nginx", "a"),
                        "b_over_nginx": by_round("nginx", "b")}}
json.dump(summary, open(out + ".json", "w"), indent=2)
print(f"CPU µs per request, median of {len(rows['a']['per_round'])} rounds ({route} route):")
print("| proxy | total | user | kernel | per round | p99 ms | errors |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for name, label in (("a", f"A {os.path.basename(dir_a)}"), ("b", f"B {os.path.basename(dir_b)}"), ("nginx", "nginx")):
    r = rows[name]
    rounds = " ".join(f"{v:.1f}" for v in r["per_round"])
    print(f"| {label} | {r['total']:.1f} | {r['user']:.1f} | {r['kernel']:.1f} | {rounds} | {r['p99_us'] / 1000:.2f} | {r['errors']} |")
print(f"B ÷ A {summary['b_over_a']:.3f}; A ÷ nginx {summary['a_over_nginx']:.3f}; B ÷ nginx {summary['b_over_nginx']:.3f}")
r = summary["by_round"]
print(f"median of round-by-round ratios: B ÷ A {r['b_over_a']:.3f}; A ÷ nginx {r['a_over_nginx']:.3f}; B ÷ nginx {r['b_over_nginx']:.3f}")
PY
echo "runs: $out/, summary: $out.json" >&2
