#!/bin/bash
# demo/images.sh — the tutorial's test workloads as images, built offline (FROM scratch, one static
# binary each, assembled with `docker import` like images/build.sh), optionally pushed:
#
#   demo/images.sh                    # build gefyra-demo-app:<version> and gefyra-demo-sidecar:<version>
#   demo/images.sh 127.0.0.1:5000     # ... and tag + push them as 127.0.0.1:5000/<name>:<version>
#   PROFILE=dev NO_BUILD=1 demo/images.sh
#
#   gefyra-demo-app:<version>      /usr/local/bin/demo-app (port 8155), /app/claim = "Email"  (USER 65532)
#   gefyra-demo-sidecar:<version>  /usr/local/bin/demo-sidecar (port 8809 -> 127.0.0.1:8155) (USER 65532)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PROFILE=${PROFILE:-ci}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN_DIR=$TARGET_DIR/x86_64-unknown-linux-gnu/$PROFILE
UID_NONROOT=65532
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)
[ -n "$VERSION" ] || { echo "demo images: cannot read the workspace version" >&2; exit 1; }
REGISTRY=${1:-}
REGISTRY=${REGISTRY%/}
docker info >/dev/null 2>&1 || { echo "demo images: dockerd is not running" >&2; exit 1; }

if [ -z "${NO_BUILD:-}" ]; then
  (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --profile "$PROFILE" -p gefyra-demo --bins) >&2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for part in app sidecar; do
  bin=$BIN_DIR/demo-$part
  [ -x "$bin" ] || { echo "demo images: $bin missing" >&2; exit 1; }
  if [[ $(readelf -l "$bin" 2>/dev/null) == *"program interpreter"* ]]; then
    echo "demo images: $bin is dynamically linked (expected +crt-static)" >&2; exit 1
  fi
  root=$work/$part
  mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc"
  cp "$bin" "$root/usr/local/bin/demo-$part"
  chmod 0755 "$root/usr/local/bin/demo-$part"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/:/sbin/nologin\n' $UID_NONROOT $UID_NONROOT >"$root/etc/passwd"
  if [ $part = app ]; then
    mkdir -p "$root/app"
    echo Email >"$root/app/claim"
    chmod 0755 "$root/app"; chmod 0644 "$root/app/claim"
  fi
  ref=gefyra-demo-$part:$VERSION
  tar -C "$root" --numeric-owner --owner=0 --group=0 -c . |
    docker import \
      --change "USER $UID_NONROOT:$UID_NONROOT" \
      --change "ENTRYPOINT [\"/usr/local/bin/demo-$part\"]" \
      --change "LABEL org.opencontainers.image.title=gefyra-demo-$part org.opencontainers.image.version=$VERSION" \
      - "$ref" >/dev/null
  echo "demo images: built $ref" >&2
  if [ -n "$REGISTRY" ]; then
    docker tag "$ref" "$REGISTRY/$ref"
    docker push "$REGISTRY/$ref" >/dev/null
    echo "demo images: pushed $REGISTRY/$ref" >&2
  fi
done
