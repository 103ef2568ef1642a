#!/usr/bin/env bash
# Random faults against a real local cluster under load, then the linearizability check.
#
#   scripts/chaos.sh [--duration 10m] [--nodes 5] [--seed S]
#
# Builds release binaries, runs `chaos` (tests/src/bin/chaos.rs), prints a summary and exits
# non-zero on any violation. Not run by CI.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -q -p raftd --bin raftd
cargo build --release -q -p faults --bin chaos
exec target/release/chaos "$@"
