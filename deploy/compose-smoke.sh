#!/usr/bin/env bash
# End to end on the docker compose cluster: build the image, make
# development certificates, bring three nodes up with mTLS (they initialise
# themselves), issue/check/revoke, refuse a caller without the role, stop one node
# and keep working, start it again and check that it caught up, tear
# everything down (containers, network, volumes, image).
#
#   deploy/compose-smoke.sh          # PROFILE=release by default
#
# Exits 77 (skip) when no Docker engine or docker-compose is available.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
  echo "compose-smoke: SKIPPED: no Docker engine reachable"; exit 77
fi
if command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
else echo "compose-smoke: SKIPPED: neither docker-compose nor 'docker compose'"; exit 77
fi

project="grantledger-smoke-$$"
export GRANTD_IMAGE="grant-ledger/grantd:smoke-$$"
# Publish on random loopback ports: the smoke test must not collide with a
# local cluster on 7101-7103.
for i in 1 2 3; do export "GRANTD${i}_PUBLISH=127.0.0.1:"; done
dc() { "${COMPOSE[@]}" -p "$project" -f deploy/docker/compose.yml "$@"; }
export GRANTD_TLS_DIR
GRANTD_TLS_DIR=$(mktemp -d)
cleanup() {
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  docker rmi "$GRANTD_IMAGE" >/dev/null 2>&1 || true
  rm -rf "$GRANTD_TLS_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

IMAGE="$GRANTD_IMAGE" deploy/docker/build-image.sh
# The image's own grantctl (static) makes the certificates on the host.
PROFILE_DIR=$([ "${PROFILE:-release}" = dev ] && echo debug || echo "${PROFILE:-release}")
"${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/$PROFILE_DIR/grantctl" dev certs --out "$GRANTD_TLS_DIR" >/dev/null
# The containers' unprivileged user reads the keys of this throwaway set.
chmod 0755 "$GRANTD_TLS_DIR"
chmod 0644 "$GRANTD_TLS_DIR"/*.key
dc up -d

EPS=grantd1:7101,grantd2:7101,grantd3:7101
declare -A cid
for i in 1 2 3; do cid[grantd$i]=$(dc ps -q "grantd$i"); done
# grantctl runs inside a node's container, on the compose network, as the
# development admin (every role); as_agent speaks as a workload with none.
as() {
  local who=$1 node=$2; shift 2
  docker exec -e "GRANTCTL_CERT=/etc/grant-ledger/tls/$who.pem" -e "GRANTCTL_KEY=/etc/grant-ledger/tls/$who.key" \
    "${cid[$node]}" /usr/local/bin/grantctl --endpoints "$EPS" "$@"
}
ctl() { as admin "$@"; }
WAIT_S=${SMOKE_WAIT_S:-120}
wait_until() { # wait_until WHAT CMD...
  local what=$1; shift
  local deadline=$((SECONDS + WAIT_S))
  while [ $SECONDS -lt $deadline ]; do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "compose-smoke: FAILED: timed out (${WAIT_S}s) waiting for $what"; dc logs --tail 30; exit 1
}
# Node $1's own view (status exits 1 while another node is down).
leader_known() { { ctl "$1" cluster status || true; } | grep "^$1:7101 .*leader=[123] " >/dev/null; }
all_healthy() {
  for i in 1 2 3; do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "${cid[grantd$i]}")" = healthy ] || return 1
  done
}

wait_until "a leader" leader_known grantd1
wait_until "three healthy containers" all_healthy
ctl grantd1 cluster status

issue() {
  ctl "$1" task begin "$2" --tool github --intent smoke --deadline 3600 >/dev/null
  ctl "$1" issue --subject spiffe://example.org/agent/smoke --task "$2" --scope github=read --intent smoke --ttl 600
}
field() { awk -v k="$1:" '$1 == k { print $2 }'; }
check() { ctl "$1" check --token "$2" --identity spiffe://example.org/agent/smoke --resource github --action read; }

out=$(issue grantd1 smoke-1)
g1=$(field grant_id <<<"$out"); t1=$(field token <<<"$out")
check grantd2 "$t1" | grep "decision: DECISION_ALLOW" >/dev/null
ctl grantd3 revoke "$g1" --reason smoke >/dev/null
if check grantd1 "$t1" >/dev/null; then echo "compose-smoke: FAILED: revoked grant allowed"; exit 1; fi
if as agent grantd1 issue --subject spiffe://example.org/agent/smoke --task nope --scope github=read --intent smoke >/dev/null 2>&1; then
  echo "compose-smoke: FAILED: an agent certificate could issue grants"; exit 1
fi
echo "issue, check, revoke over mTLS, a caller without the role refused: ok"

# Lose the current leader's container; the other two carry on.
leader=$(ctl grantd1 cluster status | awk '/^grantd1:/ { sub("leader=", "", $4); print $4 }')
victim="grantd$leader"
survivor=grantd1; [ "$victim" = grantd1 ] && survivor=grantd2
# docker stop sends SIGTERM: the leader hands over before it exits.
dc stop "$victim"
dc logs "$victim" | grep "leadership handed over" >/dev/null \
  || { echo "compose-smoke: FAILED: $victim stopped without handing leadership over"; exit 1; }
wait_until "a new leader" leader_known "$survivor"
out=$(issue "$survivor" smoke-2)
g2=$(field grant_id <<<"$out"); t2=$(field token <<<"$out")
check "$survivor" "$t2" | grep "decision: DECISION_ALLOW" >/dev/null
echo "one node down ($victim): still serving"

# Bring it back: it rejoins from its volume and catches up.
dc start "$victim"
caught_up() {
  ctl "$victim" get "$g2" --stale | grep "state: GRANT_STATE_ACTIVE" >/dev/null
}
wait_until "$victim to catch up" caught_up
ctl "$victim" get "$g1" --stale | grep "state: GRANT_STATE_REVOKED" >/dev/null
wait_until "three healthy containers" all_healthy
echo "compose-smoke: ok ($victim stopped, restarted and caught up)"
