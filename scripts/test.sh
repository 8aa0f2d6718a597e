#!/usr/bin/env bash
# The test command of the README: installs what is missing, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
cargo test --workspace "$@"
