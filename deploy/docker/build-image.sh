#!/usr/bin/env bash
# Build the grantd image (FROM scratch) from statically linked binaries.
#
#   deploy/docker/build-image.sh            # tag grant-ledger/grantd:dev
#   IMAGE=my/grantd:1.0 PROFILE=release deploy/docker/build-image.sh
#
# PROFILE: cargo profile (release by default; the test suite uses dev to
# save build time). glibc is linked statically (crt-static); it resolves
# host names without NSS modules, so the image needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-grant-ledger/grantd:dev}
PROFILE=${PROFILE:-release}
TARGET=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --profile "$PROFILE" --target "$TARGET" -p grantd -p grant-client --bins
dir=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
bin="${CARGO_TARGET_DIR:-target}/$TARGET/$dir"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc" "$ctx/data"
cp "$bin/grantd" "$bin/grantctl" "$ctx/rootfs/usr/local/bin/"
echo 'grantd:x:65532:65532:grantd:/var/lib/grantd:/sbin/nologin' >"$ctx/rootfs/etc/passwd"
echo 'grantd:x:65532:' >"$ctx/rootfs/etc/group"
cp deploy/docker/Dockerfile "$ctx/"
chmod 0700 "$ctx/data"
docker build -q -t "$IMAGE" "$ctx" >/dev/null
echo "built $IMAGE"
