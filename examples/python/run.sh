#!/usr/bin/env bash
# Run the Python example client against a grant-ledger cluster.
#
#   examples/python/run.sh --endpoint localhost:7101 --certs certs
#
# It makes a virtual environment (once) under $GRANT_PY_VENV, default
# target/py-venv, installs requirements.txt from PyPI into it, generates the
# gRPC stubs from proto/ with grpcio-tools, and runs client.py with the
# arguments given. Needs python3 with its venv module (Debian: python3-venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${GRANT_PY_VENV:-$root/target/py-venv}"
stamp="$venv/.requirements"
if ! cmp -s "$here/requirements.txt" "$stamp" 2>/dev/null; then
  command -v python3 >/dev/null || { echo "run.sh: python3 is needed" >&2; exit 2; }
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$stamp"
fi
# The stubs, from the protos as they are now.
stubs="$venv/stubs"
rm -rf "$stubs"
mkdir -p "$stubs"
"$venv/bin/python" -m grpc_tools.protoc -I "$root/proto/protos" \
  --python_out="$stubs" --grpc_python_out="$stubs" \
  "$root"/proto/protos/grantledger/v1/grants.proto \
  "$root"/proto/protos/grantledger/v1/cluster.proto
PYTHONPATH="$stubs" exec "$venv/bin/python" "$here/client.py" "$@"
