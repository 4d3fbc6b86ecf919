# Shared setup of the benchmark scripts (sourced, not run): a release build (or KEYGATE_BIN), a control plane
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
  cat > "$routes" <<TOML
[[route]]
path_prefix = "/"
upstream = "http://$upstream"
[[route]]
path_prefix = "/public/"
upstream = "http://$upstream"
auth = "none"
TOML
  export KEYGATE_ENDPOINT=$cp_url KEYGATE_TOKEN=$admin
}

# bench_wait_ready ADMIN_PORT: waits (up to 60 s) for a gateway's /readyz.
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
