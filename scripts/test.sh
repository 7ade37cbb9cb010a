#!/usr/bin/env bash
# The whole test suite: formatting and clippy, unit tests, openraft's
# storage suite, and the integration and fault tests against real grantd
# processes.
set -euo pipefail
cd "$(dirname "$0")/.."
# Habits first: formatting, and clippy with every warning an error.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
# The integration tests run the grantd binary: build it first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads 2
