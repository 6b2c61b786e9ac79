#!/bin/bash
# images/build.sh — build gefyra's images offline from locally built static binaries.
#
#   images/build.sh [PART...]        # PART: stowaway carrier cargo (default: all three)
#   PROFILE=release images/build.sh  # cargo profile (default: ci; release = LTO, slow)
#   NO_BUILD=1 images/build.sh       # skip cargo; use the binaries already in the target dir
#
# Each image is FROM scratch with one static binary (glibc + crt-static, see .cargo/config.toml),
# assembled with `docker import` (no base image, no registry, no network):
#   gefyra-stowaway:<version>  /usr/local/bin/stowaway      USER 65532:65532
#   gefyra-carrier:<version>   /usr/local/bin/carrier       USER 65532:65532, plus the same binary under
#                              the names bridged containers' commands start with (see CARRIER_NAMES)
#   gefyra-cargo:<version>     /usr/local/bin/cargo-client  USER 0: cargo configures its TUN device and
#                              routes, which needs NET_ADMIN inside its own container (no other privilege)
# <version> is the workspace version (root Cargo.toml). The multi-stage Dockerfiles next to this script
# build the same images on machines with a registry. Push with images/push.sh REGISTRY.
# A part whose crate does not build is reported and skipped (never packed from a stale binary); the
# exit status is non-zero if any requested image was not built.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PROFILE=${PROFILE:-ci}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN_DIR=$TARGET_DIR/x86_64-unknown-linux-gnu/$PROFILE
UID_NONROOT=65532   # proto::IMAGE_UID
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)
[ -n "$VERSION" ] || { echo "images: cannot read the workspace version from $REPO/Cargo.toml" >&2; exit 1; }

# names a bridged container's `command` commonly starts with; carrier answers to all of them
# (in-Pod mode as PID 1; as `env` it prints the environment; otherwise it says the container is bridged)
CARRIER_NAMES="carrier sh bash ash dash zsh env python python2 python3 python3.8 python3.9 python3.10 python3.11
  python3.12 python3.13 pypy3 node nodejs npm npx yarn pnpm deno bun java ruby bundle rails perl php php-fpm
  uvicorn gunicorn hypercorn daphne uwsgi flask django-admin celery pip pipenv poetry dotnet nginx httpd caddy
  go air tini dumb-init docker-entrypoint.sh entrypoint.sh start.sh run.sh"
CARRIER_DIRS="/bin /usr/bin /usr/local/bin"

declare -A CRATE=([stowaway]=stowaway [carrier]=carrier [cargo]=cargo-client)
declare -A IMAGE=([stowaway]=gefyra-stowaway [carrier]=gefyra-carrier [cargo]=gefyra-cargo)
declare -A USERID=([stowaway]="$UID_NONROOT:$UID_NONROOT" [carrier]="$UID_NONROOT:$UID_NONROOT" [cargo]="0:0")

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(stowaway carrier cargo)
for p in "${parts[@]}"; do
  [ -n "${CRATE[$p]:-}" ] || { echo "images: unknown part '$p' (stowaway, carrier, cargo)" >&2; exit 64; }
done
command -v docker >/dev/null || { echo "images: docker missing (Debian package docker.io)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "images: dockerd is not running (testbed/bed.sh up starts it)" >&2; exit 1; }

failed=()
built_ok=()
if [ -z "${NO_BUILD:-}" ]; then
  args=(); for p in "${parts[@]}"; do args+=(-p "${CRATE[$p]}"); done
  echo "images: cargo build --profile $PROFILE ${args[*]}" >&2
  if (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --profile "$PROFILE" "${args[@]}"); then
    built_ok=("${parts[@]}")
  else
    # one crate may be broken right now: build the others one by one
    for p in "${parts[@]}"; do
      if (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --profile "$PROFILE" -p "${CRATE[$p]}" --bins); then
        built_ok+=("$p")
      else
        echo "images: ${CRATE[$p]} does not build: no ${IMAGE[$p]} image" >&2
        failed+=("$p")
      fi
    done
  fi
else
  built_ok=("${parts[@]}")
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for p in "${built_ok[@]}"; do
  bin=$BIN_DIR/${CRATE[$p]}
  if [ ! -x "$bin" ]; then
    echo "images: $bin missing: no ${IMAGE[$p]} image" >&2; failed+=("$p"); continue
  fi
  if [[ $(readelf -l "$bin" 2>/dev/null) == *"program interpreter"* ]]; then
    echo "images: $bin is dynamically linked (expected +crt-static): no ${IMAGE[$p]} image" >&2; failed+=("$p"); continue
  fi
  root=$work/$p
  mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc"
  cp "$bin" "$root/usr/local/bin/${CRATE[$p]}"
  chmod 0755 "$root/usr/local/bin/${CRATE[$p]}"
  chmod 1777 "$root/tmp"   # for parts that run with a writable root
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/:/sbin/nologin\n' "$UID_NONROOT" "$UID_NONROOT" >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$UID_NONROOT" >"$root/etc/group"
  if [ "$p" = carrier ]; then
    for d in $CARRIER_DIRS; do
      mkdir -p "$root$d"
      for n in $CARRIER_NAMES; do
        [ "$d/$n" = /usr/local/bin/carrier ] || ln -sf /usr/local/bin/carrier "$root$d/$n"
      done
    done
  fi
  ref=${IMAGE[$p]}:$VERSION
  tar -C "$root" --numeric-owner --owner=0 --group=0 -c . |
    docker import \
      --change "USER ${USERID[$p]}" \
      --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
      --change "ENTRYPOINT [\"/usr/local/bin/${CRATE[$p]}\"]" \
      --change "LABEL org.opencontainers.image.title=${IMAGE[$p]} org.opencontainers.image.version=$VERSION" \
      - "$ref" >/dev/null
  echo "images: built $ref ($(du -h "$bin" | cut -f1) binary, user ${USERID[$p]})" >&2
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "images: NOT built: ${failed[*]}" >&2
  exit 1
fi
