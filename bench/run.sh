#!/usr/bin/env bash
# Regenerates docs/BENCHMARKS.md: builds release binaries, starts the echo backend, the gateway and
# a bare Pingora pass-through, drives each with h2load several times (alternating systems), then
# the WebSocket cases (gateway vs a bare tokio-tungstenite server, bench/ws.py), and writes medians
# and ratios. Usage: bench/run.sh [--runs 3] [--requests 100000]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if ! command -v h2load >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nghttp2-client >/dev/null
fi
cargo build --release -q -p im-gateway -p im-backends -p im-bench
python3 bench/run.py "$@"
exec python3 bench/ws.py
