#!/usr/bin/env bash
# Installs the system packages the build and tests need, only when missing (Debian/Ubuntu).
# Pingora's zlib-ng needs cmake; the TLS test uses openssl and curl; the browser test drives
# Debian's Chromium with playwright-core from npm (no browser download), and a CJK font makes
# Chinese text legible in its screenshots. The gRPC contract tests use clients the project did not
# write: python grpcio (in a venv under tests/grpc-clients) and @grpc/grpc-js from npm; the span
# export is checked against a collector made of grpcio and PyPI's opentelemetry-proto. Cluster
# mode's tests need redis-server 7 (sharded pub/sub, RESP3); the dashboard test, Prometheus.
# Service discovery: the etcd-client crate compiles etcd's protos with protoc, and its tests start
# Debian's etcd. Speech-to-text: the reference backend runs PocketSphinx's recognizer with its
# US-English model, and the tests feed it the recordings of pocketsphinx-testdata.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v cmake >/dev/null || need+=(cmake)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
# Cluster-mode tests start their own redis-server (and read its counters with redis-cli).
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
# The dashboard test evaluates every panel's query on a real Prometheus it starts itself.
command -v prometheus >/dev/null || need+=(prometheus)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v etcd >/dev/null || need+=(etcd-server)
command -v pocketsphinx_continuous >/dev/null || need+=(pocketsphinx)
[ -d /usr/share/pocketsphinx/model/en-us ] || need+=(pocketsphinx-en-us)
[ -f /usr/share/pocketsphinx/test/data/goforward.raw ] || need+=(pocketsphinx-testdata)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v python3 >/dev/null || need+=(python3)
python3 -c "import ensurepip" 2>/dev/null || need+=(python3-venv)
fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk" || need+=(fonts-wqy-zenhei)
if [ "${#need[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "bootstrap: npm ci (tests/browser: playwright-core)"
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi
if ! tests/grpc-clients/.venv/bin/python -c "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2" 2>/dev/null; then
  echo "bootstrap: python venv with grpcio and opentelemetry-proto (tests/grpc-clients)"
  python3 -m venv tests/grpc-clients/.venv
  tests/grpc-clients/.venv/bin/pip install -q --disable-pip-version-check -r tests/grpc-clients/requirements.txt
fi
if [ ! -d tests/grpc-clients/node_modules/@grpc/grpc-js ]; then
  echo "bootstrap: npm ci (tests/grpc-clients: @grpc/grpc-js)"
  npm ci --prefix tests/grpc-clients --no-audit --no-fund --loglevel=error
fi
