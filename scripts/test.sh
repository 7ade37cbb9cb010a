#!/usr/bin/env bash
# The whole test suite: unit tests, openraft's storage suite, and the
# integration and fault tests against real grantd processes.
set -euo pipefail
cd "$(dirname "$0")/.."
# The integration tests run the grantd binary: build it first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads 2
