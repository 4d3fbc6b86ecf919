# Shared setup of the benchmark scripts (sourced, not run). bench_*: a release build (or KEYGATE_BIN), a control plane
# on SQLite in a temp dir and a fixed-response upstream, on ports derived from one base so
# several scripts can run side by side. After `bench_start BASE [CONTROL_PLANE_TOML]`:
#   $bin, $work, $admin, $gw, $routes (a [[route]] file: "/" key or session auth, "/public/"
#   no auth), $cp_url, $cp_http_url, and KEYGATE_ENDPOINT/KEYGATE_TOKEN exported for
#   `keygate keys …`. CONTROL_PLANE_TOML: settings for the control plane's config file
#   (e.g. "passkey_rate_per_address = 0"); flags still set listeners, database and tokens.
# Ports: upstream BASE+8000, control plane BASE+7070 (gRPC) and BASE+7080 (HTTP); gateways
# are the caller's (BASE+8081…, admin BASE+9901…).

bench_start() {
  local base=$1
  # KEYGATE_BIN=DIR: use prebuilt release binaries (keygate, keygate-bench) from DIR.
  if [ -n "${KEYGATE_BIN:-}" ]; then
    bin=$KEYGATE_BIN
  else
    cargo build --release --workspace --bins >&2
    bin=target/release
  fi
  work=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"' EXIT
  admin=$(head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9)
  gw=$(head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9)
  export KEYGATE_LOG=warn
  local upstream=127.0.0.1:$((base + 8000))
  $bin/keygate echo-upstream --fixed --listen "$upstream" >/dev/null &
  local cp_config=()
  if [ -n "${2:-}" ]; then
    printf '%s\n' "$2" > "$work/control-plane.toml"
    cp_config=(--config "$work/control-plane.toml")
  fi
  $bin/keygate control-plane "${cp_config[@]}" --grpc-listen 127.0.0.1:$((base + 7070)) \
    --http-listen 127.0.0.1:$((base + 7080)) --database "sqlite://$work/keygate.db" \
    --admin-token "$admin" --gateway-token "$gw" >/dev/null &
  cp_url=http://127.0.0.1:$((base + 7070))
  cp_http_url=http://127.0.0.1:$((base + 7080))
  routes=$work/routes.toml
  bench_write_routes "$routes" "$upstream"
  export KEYGATE_ENDPOINT=$cp_url KEYGATE_TOKEN=$admin
}

# bench_wait_ready ADMIN_PORT: waits (up to 60 s) for a gateway's /readyz.
# The gateway's routes for every benchmark: "/" verifies the key, "/public/" does not.
bench_write_routes() {  # FILE UPSTREAM(host:port)
  cat >"$1" <<TOML
[[route]]
path_prefix = "/"
upstream = "http://$2"
[[route]]
path_prefix = "/public/"
upstream = "http://$2"
auth = "none"
TOML
}

bench_wait_ready() {
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "gateway with admin port $1 never became ready" >&2
  return 1
}

# bench_create_key: creates a key for owner "bench" and prints its plaintext.
bench_create_key() {
  $bin/keygate keys create --owner bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}

# --- Instructions per request under callgrind (benches/callgrind-routes.sh, benches/authz.sh) ---
# After the caller started the gateway under `valgrind --tool=callgrind --callgrind-out-file=
# "$work/cg.out"` and set $cg_pid (its pid), $cg_url (its http://host:port) and $key:

# cg_total FILE: the program's total instructions in a callgrind dump.
cg_total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'; }

# cg_measure PATH LABEL N [METHOD]: after a warm-up of 500, zeroes the counters, sends exactly N
# identical requests (8 keep-alive connections, the key as Bearer) and prints
# "LABEL INSTRUCTIONS" for those N.
cg_measure() {
  local path=$1 label=$2 n=$3 method=${4:-GET} file before
  $bin/keygate-bench rps --method "$method" --url "$cg_url$path" --key "$key" --connections 8 --requests 500 >/dev/null
  callgrind_control -z "$cg_pid" >/dev/null 2>&1
  $bin/keygate-bench rps --method "$method" --url "$cg_url$path" --key "$key" --connections 8 --requests "$n" >/dev/null
  before=$(find "$work" -maxdepth 1 -name 'cg.out.*' | wc -l)
  callgrind_control -d "$label" "$cg_pid" >/dev/null 2>&1
  # The gateway writes the dump asynchronously: wait (up to 30 s) for a new file that is
  # complete (its last line is the totals).
  for _ in $(seq 300); do
    file=$(ls -t "$work"/cg.out.* 2>/dev/null | head -1 || true)
    [ "$(find "$work" -maxdepth 1 -name 'cg.out.*' | wc -l)" -gt "$before" ] &&
      tail -n 3 "$file" | grep -q '^totals:' && break
    sleep 0.1
  done
  echo "$label $(cg_total "$file")"
}

# --- Side by side with other proxies (benches/side-by-side.sh, benches/tls-side-by-side.sh) ---
# These use the caller's globals: $work, $bin, the array pids (every process started, killed on
# exit), $keys (number of keys), $gw (gateway token), $upstream and $cp (host:port).

# sbs_need COMMAND PACKAGE...: installs the Debian packages when COMMAND is missing.
sbs_need() {
  local command=$1; shift
  command -v "$command" >/dev/null && return 0
  echo "installing $* from Debian packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "$@" >&2
}

# sbs_binaries: sets $bin — KEYGATE_BIN=DIR uses prebuilt release binaries (keygate,
# keygate-bench) instead of building them.
sbs_binaries() {
  if [ -n "${KEYGATE_BIN:-}" ]; then
    bin=$KEYGATE_BIN
  else
    cargo build --release -p keygate -p keygate-benches --bins >&2
    bin=$PWD/target/release
  fi
}

# sbs_init: the work directory, the process list and its cleanup on exit, the gateway token.
sbs_init() {
  work=$(mktemp -d)
  pids=()
  trap sbs_cleanup EXIT
  export KEYGATE_LOG=warn
  gw=$(head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9)
}

sbs_cleanup() {  # the proxies first (started last), so none logs its control plane going away
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}

# sbs_start_backends: on core 0, the fixed-response upstream ($upstream_pid) and the synthetic
# control plane with $keys keys, written to $work/keys/{valid,disabled,unknown,…}.txt; then the
# same keys as nginx `map` entries in $work/nginx.map (valid → 1, disabled → 2, anything else
# 401), and $work/routes.toml for keygate ("/" verifies the key, "/public/" does not).
sbs_start_backends() {
  taskset -c 0 "$bin/keygate" echo-upstream --fixed --listen "$upstream" >/dev/null &
  upstream_pid=$!; pids+=("$upstream_pid")
  taskset -c 0 "$bin/keygate-bench" synthetic-cp --keys "$keys" --listen "$cp" --gateway-token "$gw" \
    --write-keys "$work/keys" >"$work/cp.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 1200); do grep -q listening "$work/cp.log" 2>/dev/null && break; sleep 0.1; done
  grep listening "$work/cp.log" >&2
  awk '{printf "\"Bearer %s\" 1;\n", $0}' "$work/keys/valid.txt" >"$work/nginx.map"
  awk '{printf "\"Bearer %s\" 2;\n", $0}' "$work/keys/disabled.txt" >>"$work/nginx.map"
  bench_write_routes "$work/routes.toml" "$upstream"
}

# sbs_nginx_head WORKERS: prints the start of an nginx.conf for the benchmarks, up to and within
# an open `http {` block: foreground, pid, logs and temp files under $work/nginx (created), no
# access log, keep-alive without a request limit. The caller adds the rest and the closing `}`.
sbs_nginx_head() {
  mkdir -p "$work/nginx"
  cat <<NGINX
worker_processes $1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  keepalive_requests 10000000;
NGINX
}

# sbs_nginx_conf WORKERS SERVER...: writes $work/nginx.conf, nginx doing the key check with the
# `map` of $work/nginx.map in front of the upstream (keep-alive pool of 64); one `server` per
# SERVER argument, which holds its `listen` (and e.g. ssl_*) directives.
sbs_nginx_conf() {
  local workers=$1 server; shift
  {
    sbs_nginx_head "$workers"
    cat <<NGINX
  map_hash_max_size 4194304;
  map_hash_bucket_size 128;
  map \$http_authorization \$kg_ok {
    default 0;
    include $work/nginx.map;
  }
  upstream fixed {
    server $upstream;
    keepalive 64;
    keepalive_requests 10000000;
  }
NGINX
    for server in "$@"; do
      cat <<NGINX
  server {
    $server
    location / {
      if (\$kg_ok = 0) { return 401; }
      if (\$kg_ok = 2) { return 403; }
      proxy_pass http://fixed;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
NGINX
    done
    echo "}"
  } >"$work/nginx.conf"
}

# bench_wait_http URL EXPECTED_STATUS [CURL_ARG...]: up to 120 s.
bench_wait_http() {
  local url=$1 expected=$2; shift 2
  for _ in $(seq 1200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" || true)" = "$expected" ] && return 0
    sleep 0.1
  done
  echo "$url never answered $expected" >&2
  return 1
}

# sbs_wait_serving PID URL [CURL_ARG...]: waits (up to 120 s) until URL answers a valid key
# with 200 while PID lives, then checks that it answers an unknown key with 401.
sbs_wait_serving() {
  local pid=$1 url=$2; shift 2
  local key unknown ok bad
  key=$(head -1 "$work/keys/valid.txt")
  unknown=$(head -1 "$work/keys/unknown.txt")
  for _ in $(seq 1200); do
    kill -0 "$pid" 2>/dev/null || { echo "$url: its process exited" >&2; exit 1; }
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$@" -H "Authorization: Bearer $key" "$url" || true)" = 200 ] && break
    sleep 0.1
  done
  ok=$(curl -s -o /dev/null -w '%{http_code}' "$@" -H "Authorization: Bearer $key" "$url" || true)
  bad=$(curl -s -o /dev/null -w '%{http_code}' "$@" -H "Authorization: Bearer $unknown" "$url" || true)
  [ "$ok" = 200 ] && [ "$bad" = 401 ] || { echo "$url answers $ok/$bad, not 200/401" >&2; exit 1; }
}

# sbs_rotated ROUND NAME...: the names, starting at a different one each round.
sbs_rotated() {
  local round=$1; shift
  local names=("$@") i n=$#
  for i in $(seq 0 $((n - 1))); do echo "${names[$(( (i + round) % n ))]}"; done
}

# sbs_machine: one line describing the machine, for the reports.
sbs_machine() {
  echo "$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(uname -r), $(date -u +%F)"
}

# --- A throwaway PostgreSQL server (benches/ha.sh) ---
# Mirrors test-support/postgres: initdb with trust authentication, superuser "keygate", UTF8
# and the C locale; `postgres` as a child of this shell, on 127.0.0.1:PORT with its unix socket
# in the cluster's directory. PostgreSQL's programs refuse to run as root, so as root they run
# as the `postgres` system user (setpriv, else runuser) in a directory handed over to it.
# Unlike the test harness, durability stays at PostgreSQL's defaults (fsync on) unless settings
# say otherwise.

# bench_pg_bin: the directory of PostgreSQL's server programs: the `initdb` on PATH (through
# symlinks), else the newest /usr/lib/postgresql/*/bin.
bench_pg_bin() {
  local initdb
  if initdb=$(command -v initdb); then
    dirname "$(readlink -f "$initdb")"
  else
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
  fi
}

# bench_pg_start DIR PORT [SETTING...]: a new cluster in DIR (an empty directory; its data in
# DIR/data, the server's log in DIR/postgres.log), started with `-c SETTING` for each SETTING;
# returns once it accepts connections, with the database "keygate" created. Sets $pg_url
# (postgres://keygate@127.0.0.1:PORT/keygate), $pg_pid (the postmaster), $pg_dir, $pg_port,
# $pg_bin and the command prefix $pg_as (the user switch when root). bench_pg_stop stops it.
bench_pg_start() {
  local setting
  pg_dir=$1 pg_port=$2
  shift 2
  pg_bin=$(bench_pg_bin)
  if [ ! -x "$pg_bin/initdb" ]; then
    echo "PostgreSQL's initdb not found (apt-get install postgresql)" >&2
    return 1
  fi
  pg_as=()
  if [ "$(id -u)" = 0 ]; then
    if command -v setpriv >/dev/null; then
      pg_as=(setpriv "--reuid=$(id -u postgres)" "--regid=$(id -g postgres)" --clear-groups --)
    else
      pg_as=(runuser -u postgres --)
    fi
    chown postgres: "$pg_dir"
  fi
  chmod 700 "$pg_dir"
  # No PG* variable of the caller's may redirect these programs.
  pg_as+=(env $(compgen -e | sed -n 's/^PG/-u PG/p') LC_ALL=C)
  (cd "$pg_dir" && "${pg_as[@]}" "$pg_bin/initdb" -D "$pg_dir/data" --username=keygate \
    --auth=trust --encoding=UTF8 --locale=C --no-sync) >"$pg_dir/initdb.log" 2>&1 \
    || { cat "$pg_dir/initdb.log" >&2; return 1; }
  local args=(-D "$pg_dir/data" "--port=$pg_port" --listen_addresses=127.0.0.1
    -c "unix_socket_directories=$pg_dir")
  for setting; do args+=(-c "$setting"); done
  (cd "$pg_dir" && exec "${pg_as[@]}" "$pg_bin/postgres" "${args[@]}") >>"$pg_dir/postgres.log" 2>&1 &
  pg_pid=$!
  for _ in $(seq 600); do
    if ! kill -0 "$pg_pid" 2>/dev/null; then
      echo "postgres exited during startup:" >&2; tail -20 "$pg_dir/postgres.log" >&2; return 1
    fi
    "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break
    sleep 0.1
  done
  "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" \
    || { echo "postgres not ready after 60 s:" >&2; tail -20 "$pg_dir/postgres.log" >&2; return 1; }
  pg_url=postgres://keygate@127.0.0.1:$pg_port/keygate
  bench_psql postgres 'CREATE DATABASE keygate' >/dev/null
}

# bench_psql DATABASE SQL: runs SQL through psql on the server of bench_pg_start (unaligned,
# no headers, stopping at the first error) and prints the result.
bench_psql() {
  "$pg_bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U keygate \
    -d "$1" -c "$2" \
    | sed 's/|/ /g'
}

# bench_pg_stop: stops the server of bench_pg_start (`pg_ctl stop -m fast`: open transactions
# roll back, clients are disconnected), waits for it to exit and removes its directory (kept
# with KEEP=1). Safe to call twice, or when the server already exited.
bench_pg_stop() {
  [ -n "${pg_dir:-}" ] || return 0
  if [ -n "${pg_pid:-}" ]; then
    if kill -0 "$pg_pid" 2>/dev/null; then
      (cd "$pg_dir" && "${pg_as[@]}" "$pg_bin/pg_ctl" stop -D "$pg_dir/data" -m fast -s -W) \
        || kill "$pg_pid" 2>/dev/null || true
    fi
    wait "$pg_pid" 2>/dev/null || true
  fi
  if [ -n "${KEEP:-}" ]; then echo "kept $pg_dir" >&2; else rm -rf "$pg_dir"; fi
  pg_pid= pg_dir=
}
