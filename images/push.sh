#!/bin/bash
# images/push.sh REGISTRY [PART...] — tag gefyra's local images <name>:<version> as
# REGISTRY/<name>:<version> and push them (PART: stowaway carrier cargo; default: all three).
#   images/push.sh 127.0.0.1:5000            # the test bed's registry (plain HTTP on loopback)
#   images/push.sh registry.example.com/team
# Build them first with images/build.sh. The reference format is proto::image_ref(registry, name, version).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -ge 1 ] && [ -n "$1" ] || { echo "usage: $0 REGISTRY [stowaway|carrier|cargo ...]" >&2; exit 64; }
REGISTRY=${1%/}; shift
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)
declare -A IMAGE=([stowaway]=gefyra-stowaway [carrier]=gefyra-carrier [cargo]=gefyra-cargo)
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(stowaway carrier cargo)
rc=0
for p in "${parts[@]}"; do
  name=${IMAGE[$p]:-}
  [ -n "$name" ] || { echo "push: unknown part '$p' (stowaway, carrier, cargo)" >&2; exit 64; }
  if ! docker image inspect "$name:$VERSION" >/dev/null 2>&1; then
    echo "push: $name:$VERSION is not built (run images/build.sh $p)" >&2; rc=1; continue
  fi
  docker tag "$name:$VERSION" "$REGISTRY/$name:$VERSION"
  if docker push "$REGISTRY/$name:$VERSION" >/dev/null; then
    echo "push: $REGISTRY/$name:$VERSION" >&2
  else
    echo "push: pushing $REGISTRY/$name:$VERSION failed" >&2; rc=1
  fi
done
exit $rc
