#!/usr/bin/env bash
# Cluster mode on one machine (README "Cluster mode"): a redis-server, the reference backends and
# two gateway nodes sharing one set of keys. Open the web client on both nodes
# (http://127.0.0.1:8080 and http://127.0.0.1:8090), sign in as two users, one per node, and chat:
# pushes cross nodes through Redis. Ctrl-C stops everything.
# Usage: [BIN=target/debug] scripts/cluster-demo.sh [demo-dir]   (default: data/cluster-demo; keys kept there)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "${1:-data/cluster-demo}"
dir=$(cd "${1:-data/cluster-demo}" && pwd)
command -v redis-server >/dev/null || scripts/bootstrap.sh
# BIN=target/debug uses binaries built already (`cargo build -p im-gateway -p im-backends`).
bin=${BIN:-target/release}
[ -n "${BIN:-}" ] || cargo build --release -q -p im-gateway -p im-backends
umask 077
for f in jwt.key internal.token; do
  [ -s "$dir/$f" ] || openssl rand -hex 32 > "$dir/$f"
done
redis_port=6390
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$dir/redis.log" &
pids+=($!)
"$bin/im-backends" --listen 127.0.0.1:50051 --database "$dir/im.db" --files-dir "$dir/files" \
  --jwt-secret-file "$dir/jwt.key" --internal-token-file "$dir/internal.token" \
  --push-addr 127.0.0.1:7171,127.0.0.1:7271 >"$dir/backends.log" 2>&1 &
pids+=($!)
edge=(8080 8090); push=(8081 8091); admin=(9911 9921); internal=(7171 7271)
for i in 0 1; do
  n=$((i + 1))
  cat >"$dir/gateway-$n.yaml" <<YAML
listen: { edge: 127.0.0.1:${edge[$i]}, push: 127.0.0.1:${push[$i]}, admin: 127.0.0.1:${admin[$i]}, internal: 127.0.0.1:${internal[$i]} }
routes: $PWD/routes.yaml
auth: { hs256_secret_file: $dir/jwt.key }
push: { internal_token_file: $dir/internal.token }
cluster: { redis_url: "redis://127.0.0.1:$redis_port", node_id: node-$n, prefix: "demo:" }
YAML
done
for n in 1 2; do
  "$bin/im-gateway" run --config "$dir/gateway-$n.yaml" >"$dir/gateway-$n.log" 2>&1 &
  pids+=($!)
done
sleep 2
echo "node-1: http://127.0.0.1:8080  (admin http://127.0.0.1:9911/readyz)"
echo "node-2: http://127.0.0.1:8090  (admin http://127.0.0.1:9921/readyz)"
echo "logs in $dir; Ctrl-C stops"
wait -n
