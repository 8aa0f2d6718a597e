#!/usr/bin/env bash
# Regenerates docs/BENCHMARKS.md end to end: installs the baselines when missing (h2load, haproxy,
# nginx), builds release binaries, runs the HTTP/gRPC cases (bench/run.py: the gateway next to the
# backend called directly, bare Pingora, haproxy and nginx), then the WebSocket cases (bench/ws.py:
# the gateway next to a bare tokio-tungstenite server) and the cold JWT checks (bench/jwt_cold.py),
# alternating systems in every round, and
# writes medians, ratios, SVG plots and the raw JSON. About 15 minutes on 2 cores.
# Usage: bench/run.sh [--runs 3] [--requests 100000]   (the flags go to run.py)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx)
if [ "${#need[@]}" -gt 0 ]; then
  echo "bench: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p im-gateway -p im-backends -p im-bench
start=$(date +%s)
python3 bench/run.py "$@"
python3 bench/ws.py
# Cold token checks by backend and a reconnect storm with fresh RS256 tokens (builds
# bench/jwt-backends, outside the workspace, the first time).
python3 bench/jwt_cold.py --runs 3
echo "bench: done in $(( $(date +%s) - start )) s (after the build)"
