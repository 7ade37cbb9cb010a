#!/usr/bin/env bash
# grant-ledger against etcd on this machine: installs Debian's etcd-server
# if etcd is missing (apt-get, root), builds release binaries, and runs
# bench/src/compare.rs (three nodes of each on loopback, same load).
#   bench/compare.sh                       # 1,16,64 clients, 5 s per run
#   bench/compare.sh --seconds 10 --ops check,mixed --grant-mtls
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v etcd >/dev/null; then
  echo "compare: installing etcd-server (Debian)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends etcd-server >/dev/null
  # The package may start its own etcd service; ours are separate processes
  # on other ports, so it can stay.
fi
cargo build --release -q --bins
exec target/release/compare "$@"
