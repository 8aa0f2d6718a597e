#!/usr/bin/env bash
# The rolling-restart soak of cluster mode: 100 clients (50 pairs of friends on two nodes) chat
# while both nodes restart one after the other; every message must reach its recipient (push or
# after_seq catch-up), none stored twice, presence never offline. CI runs the same test with 20
# clients; this runs it with more, several times (a flake shows up as a failed round).
# Usage: scripts/rolling-soak.sh [rounds (default 5)] [clients (default 100)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
clients=${2:-100}
for i in $(seq 1 "$rounds"); do
  echo "rolling-soak: round $i/$rounds, $clients clients"
  IM_ROLLING_CLIENTS=$clients cargo test -q -p im-tests --test e2e rolling:: -- --nocapture
done
