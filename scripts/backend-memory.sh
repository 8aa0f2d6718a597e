#!/usr/bin/env bash
# Backend memory under abuse (security issue, items 3 and 4), on the release build:
#   scripts/backend-memory.sh logins      400 users register and log in, 16 at a time: RSS growth
#   scripts/backend-memory.sh multi-file  one 8 MiB file asked for 20 times: peak RSS growth
# Flags: --users N --concurrency N --size MiB --copies N --backend PATH [-- im-backends flags]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p im-backends -p im-tests --bin im-backends --bin backend_memory
exec target/release/backend_memory "$@"
