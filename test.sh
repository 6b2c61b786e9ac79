#!/usr/bin/env bash
# test.sh — the project's test command (README: "Test"). On a fresh Debian machine it installs what the
# tests need, brings up the local Kubernetes test bed (testbed/bed.sh), builds the images and pushes them
# to the bed's registry, then runs the whole suite: unit tests, real-process tests on loopback, the
# network-namespace tunnel test, and the end-to-end tests on the bed. Needs root.
#
#   ./test.sh                 # everything
#   ./test.sh -p carrier      # extra arguments go to `cargo test` (the bed still comes up)
#
# Build outputs are cached outside the repo (CARGO_TARGET_DIR, default /var/cache/gefyra/target;
# Kubernetes under /var/cache/gefyra/k8s), so a second run is quick.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/gefyra/target}
export CARGO_TERM_COLOR=never
step() { echo "== $(date +%T) $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "test.sh: needs root (network namespaces, Docker, the test bed)" >&2; exit 1; }

# what the real-process tests use (the bed installs its own: docker.io, etcd, golang, registry, ...)
need=()
for p in iproute2:ip dnsmasq-base:dnsmasq iperf3:iperf3 socat:socat iptables:iptables jq:jq; do
  command -v "${p#*:}" >/dev/null 2>&1 || need+=("${p%%:*}")
done
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

step "test bed up"
# a bed whose processes are gone (a reboot, an ended session) leaves state behind: clean it first
if [ -d /var/cache/gefyra/k8s/run ] && ! testbed/bed.sh status >/dev/null 2>&1; then
  step "the test bed is not (fully) running: cleaning its leftovers"
  testbed/bed.sh down || true
fi
testbed/bed.sh up
eval "$(testbed/bed.sh env)"
export KUBECONFIG GEFYRA_REGISTRY

step "images: build and push to $GEFYRA_REGISTRY"
images/build.sh
images/push.sh "$GEFYRA_REGISTRY"

step "cargo test (profile ci)"
# GEFYRA_E2E=1: an end-to-end test whose bed is missing fails instead of skipping
export GEFYRA_E2E=1
cargo test --profile ci --workspace --no-fail-fast "$@"
if [ $# -eq 0 ]; then
  step "tunnel rekey test under boringtun's mock clock (a feature kept out of the binaries above)"
  cargo test --profile ci -p gefyra-tunnel --features mock-clock
fi
if [ $# -eq 0 ]; then
  step "lints: rustfmt and clippy (warnings are errors)"
  cargo fmt --all --check
  cargo clippy --profile ci --workspace --all-targets -- -D warnings
fi
step "all tests passed"
