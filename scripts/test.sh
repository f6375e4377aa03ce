#!/usr/bin/env bash
# Runs the whole test suite (unit tests and the real-kernel zdtm suite).
# Needs root: the tests use ptrace, namespaces and clone3 with set_tid.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast "$@"
