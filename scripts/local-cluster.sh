#!/usr/bin/env bash
# Start a local three-node grant-ledger cluster on loopback with mTLS, data
# under ./data (or $GRANT_DATA), initialise it, print how to use it, and
# stop the nodes (by PID) on Ctrl-C.
#   scripts/local-cluster.sh          build (release) and run
#   GRANT_DATA=/tmp/gl scripts/local-cluster.sh
# On first start it makes development certificates in $GRANT_DATA/certs
# (`grantctl dev certs`: a CA, node-1..3, and admin, orchestrator, tool,
# auditor and agent workloads, with the matching role mapping).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${GRANT_DATA:-$PWD/data}
PROFILE=${GRANT_PROFILE:-release}
if [ "$PROFILE" = release ]; then cargo build --release -q -p grantd -p grant-client; else cargo build -q -p grantd -p grant-client; fi
BIN=${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE
mkdir -p "$DATA"
DATA=$(cd "$DATA" && pwd)
CERTS=$DATA/certs
[ -f "$CERTS/grantd-tls.toml" ] || "$BIN/grantctl" dev certs --out "$CERTS" >/dev/null
pids=()
stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop EXIT INT TERM
for i in 1 2 3; do
  "$BIN/grantd" --config "$CERTS/grantd-tls.toml" \
    --tls-cert-file "$CERTS/node-$i.pem" --tls-key-file "$CERTS/node-$i.key" \
    --node-id $i --data-dir "$DATA/node$i" \
    --api-addr 127.0.0.1:710$i --raft-addr 127.0.0.1:720$i --metrics-addr 127.0.0.1:730$i \
    >>"$DATA/node$i.log" 2>&1 &
  pids+=($!)
done
export GRANTCTL_ENDPOINTS=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
export GRANTCTL_CA=$CERTS/ca.pem GRANTCTL_CERT=$CERTS/admin.pem GRANTCTL_KEY=$CERTS/admin.key
# Wait for the nodes to listen, then initialise once (a restart finds the
# cluster already initialised and leaves it alone).
for _ in $(seq 100); do "$BIN/grantctl" cluster status >/dev/null 2>&1 && break; sleep 0.1; done
if ! "$BIN/grantctl" cluster status | grep 'voters=\[1' >/dev/null; then
  "$BIN/grantctl" --endpoints 127.0.0.1:7101 cluster init \
    --member 1=127.0.0.1:7201,127.0.0.1:7101 \
    --member 2=127.0.0.1:7202,127.0.0.1:7102 \
    --member 3=127.0.0.1:7203,127.0.0.1:7103
fi
for _ in $(seq 100); do "$BIN/grantctl" cluster status | grep 'role=leader' >/dev/null && break; sleep 0.1; done
"$BIN/grantctl" cluster status
cat <<MSG

grant-ledger is running: three nodes with mTLS, API on 127.0.0.1:7101-7103, metrics on http://127.0.0.1:7301-7303/metrics, data in $DATA, logs in $DATA/node*.log, development certificates in $CERTS.
Try, in another shell (as the orchestrator, then as the tool server that checks):

  export PATH=$BIN:\$PATH GRANTCTL_CA=$CERTS/ca.pem
  export GRANTCTL_CERT=$CERTS/orchestrator.pem GRANTCTL_KEY=$CERTS/orchestrator.key
  grantctl task begin t1 --tool github --intent "triage" --deadline 3600
  grantctl issue --subject spiffe://example.org/agent/planner --task t1 --scope github=read --intent "triage" --ttl 300
  GRANTCTL_CERT=$CERTS/tool.pem GRANTCTL_KEY=$CERTS/tool.key \\
    grantctl check --token <token> --identity spiffe://example.org/agent/planner --resource github --action read
  grantctl revoke <grant_id>
  grantctl task complete t1
  GRANTCTL_CERT=$CERTS/admin.pem GRANTCTL_KEY=$CERTS/admin.key grantctl cluster status

Ctrl-C stops the cluster.
MSG
wait
