#!/usr/bin/env bash
# demo.sh — the tutorial (the OAuth2 demo: an app behind an auth sidecar, a bug found and fixed with
# the local container bridged into the cluster) as one command, on the local test bed. Needs root.
#
#   ./demo.sh               # install, build, bed up (if needed), deploy, walk the tutorial, clean up
#   ./demo.sh --keep-bed    # leave the test bed running afterwards even if the demo started it
#
# What it does, in order:
#   1. installs what is missing (Debian packages; the bed installs Docker, etcd, Go, the registry ...)
#   2. builds gefyra, stowaway, carrier, cargo-client and the demo binaries (cargo, profile ci) and
#      their images (FROM scratch); outputs are cached (CARGO_TARGET_DIR, default
#      /var/cache/gefyra/target; Kubernetes in /var/cache/gefyra/k8s), so a second run is quick
#   3. brings up the test bed (testbed/bed.sh up) unless it is already up, pushes the images to its
#      registry, deploys demo/oauth2-demo.yaml (namespace oauth2-demo: Deployment oauth2-demo with the
#      sidecar `oauth2-proxy` and the app `oauth2-demo-app`, Service oauth2-demo) with demo-kube (kube-rs;
#      no kubectl needed)
#   4. walks the tutorial with the real `gefyra`: up; run a local copy of the app with its "source" (the
#      file naming the claim it reads) mounted with -v; list; bridge; a request through the cluster
#      Service (from a container on docker0, i.e. inside the cluster's network) answered by the LOCAL
#      container (500, its log shows the request and the sidecar's token); the source fixed; the next
#      request shows the e-mail; unbridge (the cluster's app answers again); down
#   5. cleans up: the demo workload, gefyra's cluster side when it was not there before (and no other
#      client uses it), the temporary source copy; the bed goes down again if the demo started it
#      (unless --keep-bed). Exit 0 only when every step passed.
# Uses gefyra's default connection and ~/.config/gefyra like a user would: do not run it while the
# end-to-end tests run on the same bed (they use the default connection too and `down --all`).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

KEEP_BED=0
for a in "$@"; do
  case $a in
    --keep-bed) KEEP_BED=1 ;;
    -h | --help) sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument $a (--keep-bed, --help)" >&2; exit 64 ;;
  esac
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/gefyra/target}
export CARGO_TERM_COLOR=never
PROFILE=ci
BIN=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/$PROFILE
NS=oauth2-demo
LOCAL=myfastapi-demo
BRIDGE=myfastapi
EMAIL=john@gefyra.dev
T0=$SECONDS
LOG=$(mktemp -d /tmp/gefyra-demo.XXXXXX)   # command outputs; removed at the end when all passed

# ------------------------------------------------------------------ output helpers
PASSED=0
FAILED=0
FAILS=()
if [ -t 1 ]; then B=$'\e[1m'; G=$'\e[32m'; RD=$'\e[31m'; N=$'\e[0m'; else B= G= RD= N=; fi
phase() { printf '\n%s== %s%s  (%ds)\n' "$B" "$*" "$N" $((SECONDS - T0)); }
doing() { printf '%s$ %s%s\n' "$B" "$*" "$N"; }
ok() { PASSED=$((PASSED + 1)); printf '  %s✔%s %s\n' "$G" "$N" "$*"; }
bad() { FAILED=$((FAILED + 1)); FAILS+=("$*"); printf '  %s✘%s %s\n' "$RD" "$N" "$*"; }
check() { if eval "$1"; then ok "$2"; else bad "$2${3:+ — $3}"; fi; }
indent() { sed 's/^/    | /'; }
die() {
  bad "$*"
  finish
}

# runs a command shown as typed, prints its output indented; returns its status; output in $OUT
run() {
  local shown=$1; shift
  doing "$shown"
  OUT=$("$@" 2>&1)
  local rc=$?
  [ -n "$OUT" ] && printf '%s\n' "$OUT" | indent
  return $rc
}

gefyra() { "$BIN/gefyra" "$@"; }

# ------------------------------------------------------------------ cleanup (always runs)
BED_WAS_UP=0
BED_STARTED=0
DEPLOYED=0
GEFYRA_UP=0
GEFYRA_NS_BEFORE=1
CONFIG_DIR=${GEFYRA_CONFIG_DIR:-${XDG_CONFIG_HOME:-$HOME/.config}/gefyra}
CONFIG_BEFORE=1
[ -e "$CONFIG_DIR" ] || CONFIG_BEFORE=0
SRC=

cleanup() {
  trap - EXIT INT TERM
  phase "clean up"
  if [ $GEFYRA_UP = 1 ]; then
    # a step failed half-way: restore Pods and remove what this client created
    doing "gefyra unbridge -A; gefyra down"
    gefyra unbridge -A >/dev/null 2>&1
    gefyra down >"$LOG/cleanup-down.log" 2>&1 || echo "    (gefyra down failed: $LOG/cleanup-down.log)"
  fi
  if [ $DEPLOYED = 1 ]; then
    if [ $GEFYRA_NS_BEFORE = 0 ]; then
      # what `gefyra down --all` does on the cluster side; --all would also remove every other
      # local connection's containers, which are not the demo's to remove
      doing "demo-kube remove-gefyra gefyra    # the cluster side was not there before the demo"
      t=$SECONDS
      "$BIN/demo-kube" remove-gefyra gefyra 120 2>&1 | indent
      echo "    ($((SECONDS - t))s)"
    fi
    doing "demo-kube delete demo/oauth2-demo.yaml"
    t=$SECONDS
    if sed -e "s|REGISTRY|$GEFYRA_REGISTRY|g" -e "s|VERSION|$VERSION|g" demo/oauth2-demo.yaml |
      "$BIN/demo-kube" delete - 120 2>&1 | indent; then
      echo "    namespace $NS removed ($((SECONDS - t))s)"
    fi
  fi
  [ -n "$SRC" ] && rm -rf "$SRC"
  [ $CONFIG_BEFORE = 0 ] && rm -rf "$CONFIG_DIR"
  if [ $BED_STARTED = 1 ]; then
    if [ $KEEP_BED = 1 ]; then
      echo "  the test bed stays up (--keep-bed); stop it with: testbed/bed.sh down"
    else
      doing "testbed/bed.sh down    # the demo started it"
      testbed/bed.sh down 2>&1 | tail -n 3 | indent
    fi
  elif [ $BED_WAS_UP = 1 ]; then
    echo "  the test bed was up before the demo and stays up (testbed/bed.sh down stops it)"
  fi
}

finish() {
  cleanup
  local total=$((PASSED + FAILED))
  echo
  if [ $FAILED = 0 ] && [ $total -gt 0 ]; then
    printf '%sDEMO PASSED%s: all %d checks passed in %ds\n' "$G$B" "$N" $total $((SECONDS - T0))
    rm -rf "$LOG"
    exit 0
  fi
  printf '%sDEMO FAILED%s: %d of %d checks failed in %ds (command outputs: %s)\n' "$RD$B" "$N" \
    "$FAILED" "$total" $((SECONDS - T0)) "$LOG"
  for f in "${FAILS[@]}"; do printf '  ✘ %s\n' "$f"; done
  exit 1
}
trap 'echo; echo "demo.sh: interrupted"; FAILED=$((FAILED + 1)); FAILS+=("interrupted"); finish' INT TERM
trap 'finish' EXIT

# ------------------------------------------------------------------ HTTP from inside the cluster
# A busybox container on docker0's default bridge, where the bed's Pods live (gefyra's own Docker
# networks cannot reach it): the raw response in $RESP, its status in $STATUS, the answering host
# (header X-Demo-Host: the Pod name, or the local container's hostname) in $HOST_SEEN.
cluster_get() {
  local host=$1 port=$2 path=$3
  RESP=$(timeout -s KILL 40 docker run --rm --network bridge busybox:1.36 sh -c \
    "printf 'GET $path HTTP/1.0\r\nHost: $host\r\n\r\n' | timeout -s KILL 15 nc -w 10 $host $port; exit 0" 2>/dev/null | tr -d '\r')
  STATUS=$(printf '%s\n' "$RESP" | head -n1 | awk '{print $2}')
  STATUS=${STATUS:-0}
  HOST_SEEN=$(printf '%s\n' "$RESP" | sed -n 's/^[Xx]-[Dd]emo-[Hh]ost: *//p' | head -n1)
  BODY=$(printf '%s\n' "$RESP" | sed '1,/^$/d')
}
# cluster_get until CONDITION (a shell expression over STATUS/HOST_SEEN/BODY) holds or SECS pass
get_until() {
  local secs=$1 cond=$2 host=$3 port=$4 path=$5 t=$SECONDS
  while :; do
    cluster_get "$host" "$port" "$path"
    eval "$cond" && return 0
    [ $((SECONDS - t)) -ge "$secs" ] && return 1
    sleep 1
  done
}
show_resp() {
  printf '    | HTTP %s from %s: %s\n' "$STATUS" "${HOST_SEEN:-?}" "${BODY:-<empty>}"
}
# the members of a flat JSON object, sorted (to compare objects whatever their key order)
json_members() { printf '%s' "$1" | tr -d '{} \n' | tr ',' '\n' | sort | paste -sd, -; }
# the payload of a JWT (base64url), decoded
jwt_payload() {
  local p
  p=$(printf '%s' "$1" | cut -d. -f2 | tr '_-' '/+')
  while [ $((${#p} % 4)) -ne 0 ]; do p="$p="; done
  printf '%s' "$p" | base64 -d 2>/dev/null
}

# ------------------------------------------------------------------ 1. prerequisites
phase "1. prerequisites"
[ "$(id -u)" = 0 ] || { echo "demo.sh: needs root (Docker, the test bed's network rules)" >&2; trap - EXIT; exit 1; }
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 ||
  die "cargo not found: install Rust >= 1.85 (https://rustup.rs; Debian 12's cargo is too old)"
need=()
for p in binutils:readelf coreutils:base64; do
  command -v "${p#*:}" >/dev/null 2>&1 || need+=("${p%%:*}")
done
if [ ${#need[@]} -gt 0 ]; then
  doing "apt-get install ${need[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >"$LOG/apt.log" 2>&1 ||
    die "apt-get install ${need[*]} failed ($LOG/apt.log)"
fi
ok "root, $(cargo --version | cut -d' ' -f1-2), readelf (Docker, etcd, Go, the registry: installed by the bed)"
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)

# ------------------------------------------------------------------ 2. test bed
phase "2. the local Kubernetes (test bed)"
if testbed/bed.sh status >"$LOG/bed-status.log" 2>&1; then
  BED_WAS_UP=1
  ok "the test bed is already up (it stays up afterwards)"
else
  BED_STARTED=1
  doing "testbed/bed.sh up    # a cold machine builds Kubernetes v1.20.2 once (~6-11 min, cached)"
  if testbed/bed.sh up >"$LOG/bed-up.log" 2>&1; then
    if grep -q "already up" "$LOG/bed-up.log"; then
      # another bed.sh brought it up meanwhile (bed.sh holds a lock): not ours to take down
      BED_STARTED=0
      BED_WAS_UP=1
    fi
    ok "test bed up: Kubernetes v1.20.2, registry 127.0.0.1:5000, cluster DNS"
  else
    tail -n 15 "$LOG/bed-up.log" | indent
    die "testbed/bed.sh up failed ($LOG/bed-up.log)"
  fi
fi
eval "$(testbed/bed.sh env)"
export KUBECONFIG GEFYRA_REGISTRY

# ------------------------------------------------------------------ 3. build
phase "3. build binaries and images (cached in $CARGO_TARGET_DIR)"
doing "cargo build --profile $PROFILE -p gefyra -p stowaway -p carrier -p cargo-client -p gefyra-demo"
t=$SECONDS
# (another cargo using the same target dir makes this wait: cargo's "Blocking" line shows it)
cargo build --profile $PROFILE -p gefyra -p stowaway -p carrier -p cargo-client -p gefyra-demo --bins 2>&1 |
  tee "$LOG/cargo.log" | grep --line-buffered -E '^ *Blocking' | indent
if [ "${PIPESTATUS[0]}" = 0 ]; then
  ok "binaries built in $((SECONDS - t))s: gefyra, stowaway, carrier, cargo-client, demo-app, demo-sidecar, demo-kube"
else
  grep -E '^(error|warning: unused)' -A5 "$LOG/cargo.log" | head -n 30 | indent
  die "cargo build failed ($LOG/cargo.log)"
fi
t=$SECONDS
doing "images/build.sh && images/push.sh $GEFYRA_REGISTRY && demo/images.sh $GEFYRA_REGISTRY"
if NO_BUILD=1 images/build.sh >"$LOG/images.log" 2>&1 &&
  images/push.sh "$GEFYRA_REGISTRY" >>"$LOG/images.log" 2>&1 &&
  NO_BUILD=1 demo/images.sh "$GEFYRA_REGISTRY" >>"$LOG/images.log" 2>&1; then
  ok "images in $GEFYRA_REGISTRY in $((SECONDS - t))s: gefyra-stowaway, gefyra-carrier, gefyra-cargo, gefyra-demo-app, gefyra-demo-sidecar (:$VERSION)"
else
  tail -n 10 "$LOG/images.log" | indent
  die "building or pushing the images failed ($LOG/images.log)"
fi
APP_IMAGE=$GEFYRA_REGISTRY/gefyra-demo-app:$VERSION
SIDECAR_IMAGE=$GEFYRA_REGISTRY/gefyra-demo-sidecar:$VERSION
CARRIER_IMAGE=$GEFYRA_REGISTRY/gefyra-carrier:$VERSION
demo_kube() { "$BIN/demo-kube" "$@"; }

# ------------------------------------------------------------------ 4. the tutorial's workload
phase "4. deploy the tutorial's workload (namespace $NS)"
"$BIN/demo-kube" exists namespace gefyra 2>/dev/null || GEFYRA_NS_BEFORE=0
if "$BIN/demo-kube" exists namespace $NS 2>/dev/null; then
  echo "  (namespace $NS exists already: it is applied again and removed at the end)"
fi
DEPLOYED=1
if run "demo-kube apply demo/oauth2-demo.yaml    # server-side apply (REGISTRY=$GEFYRA_REGISTRY, VERSION=$VERSION)" \
  bash -c "sed -e 's|REGISTRY|$GEFYRA_REGISTRY|g' -e 's|VERSION|$VERSION|g' demo/oauth2-demo.yaml | '$BIN/demo-kube' apply -"; then
  ok "namespace, Deployment (containers oauth2-proxy + oauth2-demo-app) and Service applied"
else
  die "apply failed"
fi
if run "demo-kube wait-ready $NS oauth2-demo" demo_kube wait-ready $NS oauth2-demo 180; then
  read -r POD POD_IP <<<"$OUT"
  ok "Pod $POD is Ready (2/2) at $POD_IP"
else
  die "the oauth2-demo Deployment did not become ready"
fi
CLUSTER_IP=$(demo_kube service-ip $NS oauth2-demo) || die "no ClusterIP for service oauth2-demo"
run "demo-kube images $NS $POD" demo_kube images $NS "$POD"
doing "GET http://oauth2-demo.$NS:8080/items/123 from inside the cluster (ClusterIP $CLUSTER_IP)"
get_until 30 '[ "$STATUS" != 0 ]' "$CLUSTER_IP" 8080 /items/123
show_resp
check '[ "$STATUS" = 500 ] && [ "$HOST_SEEN" = "$POD" ]' \
  "the bug, in the cluster: HTTP 500 from Pod $POD (the app reads claim 'Email', the token has 'email')" \
  "got HTTP $STATUS from ${HOST_SEEN:-?}"

# ------------------------------------------------------------------ 5. the tutorial with gefyra
phase "5. gefyra up"
GEFYRA_UP=1
if run "gefyra up" gefyra up; then
  ok "gefyra is up: stowaway in the cluster, cargo and the gefyra network here"
else
  die "gefyra up failed"
fi

phase "6. gefyra run: the app locally, its source mounted"
SRC=$(mktemp -d /tmp/oauth2-demo-app.XXXXXX)   # the local "source": the file naming the claim
chmod 0755 "$SRC"
echo Email >"$SRC/claim"
chmod 0644 "$SRC/claim"
echo "  local source $SRC/claim: $(cat "$SRC/claim")   (the app runs as uid 65532 and re-reads it per request)"
echo "  (the tutorial's -c \"... uvicorn --reload\" is not needed: the image's entrypoint is the app, and it"
echo "   re-reads its source on every request; -d runs it in the background instead of following its log)"
if run "gefyra run -d -i $APP_IMAGE -N $LOCAL -n $NS -v $SRC:/app" \
  gefyra run -d -i "$APP_IMAGE" -N $LOCAL -n $NS -v "$SRC:/app"; then
  ok "local container $LOCAL runs (namespace $NS, the image the cluster runs)"
else
  die "gefyra run failed"
fi
LOCAL_HOST=$(docker inspect -f '{{.Config.Hostname}}' $LOCAL 2>/dev/null)
LOCAL_IP=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' $LOCAL 2>/dev/null)

phase "7. gefyra list"
run "gefyra list" gefyra list
check 'printf "%s" "$OUT" | grep -q "$LOCAL" && printf "%s" "$OUT" | grep -qF "$LOCAL_IP"' \
  "gefyra list shows $LOCAL with its address $LOCAL_IP (where a debugger would attach)" \
  "docker says $LOCAL has ${LOCAL_IP:-no address}"

phase "8. gefyra bridge"
if run "gefyra bridge -N $LOCAL -n $NS --deployment oauth2-demo --port 8155:8155 --container-name oauth2-demo-app -I $BRIDGE" \
  gefyra bridge -N $LOCAL -n $NS --deployment oauth2-demo --port 8155:8155 --container-name oauth2-demo-app -I $BRIDGE; then
  check 'printf "%s" "$OUT" | grep -q "established"' "bridge $BRIDGE established"
else
  bad "gefyra bridge failed"
fi
run "demo-kube images $NS $POD" demo_kube images $NS "$POD"
check 'printf "%s" "$OUT" | grep -qx "oauth2-demo-app $CARRIER_IMAGE" && printf "%s" "$OUT" | grep -qx "oauth2-proxy $SIDECAR_IMAGE"' \
  "the same Pod: oauth2-demo-app now runs carrier, the sidecar oauth2-proxy keeps running"

phase "9. a request through the cluster Service reaches the LOCAL container"
doing "GET http://oauth2-demo.$NS:8080/items/123 from inside the cluster (ClusterIP $CLUSTER_IP)"
get_until 30 '[ "$STATUS" = 500 ] && [ "$HOST_SEEN" = "$LOCAL_HOST" ]' "$CLUSTER_IP" 8080 /items/123
show_resp
check '[ "$STATUS" = 500 ] && [ "$HOST_SEEN" = "$LOCAL_HOST" ]' \
  "HTTP 500 answered by the local container ($LOCAL, hostname $LOCAL_HOST), not by Pod $POD" \
  "got HTTP $STATUS from ${HOST_SEEN:-?}"
doing "docker logs $LOCAL"
LOGS=$(docker logs $LOCAL 2>&1)
printf '%s\n' "$LOGS" | tail -n 4 | cut -c1-160 | indent
TOKEN=$(printf '%s\n' "$LOGS" | sed -n 's/^GET \/items\/123 token=//p' | tail -n1)
CLAIMS=$(jwt_payload "$TOKEN")
echo "    the token's payload: ${CLAIMS:-<none>}"
check '[ -n "$TOKEN" ] && printf "%s" "$CLAIMS" | grep -q "\"email\":\"$EMAIL\""' \
  "the local log shows the request with the sidecar's X-Forwarded-Access-Token (claim \"email\": $EMAIL)"
check 'printf "%s" "$LOGS" | grep -q "KeyError: '"'"'Email'"'"'"' \
  "and the cause of the 500: KeyError: 'Email' (the claim is lowercase)"

phase "10. fix the local source; the next request shows the change"
doing "echo email > $SRC/claim    # the fix: the key is a lowercase 'email'"
echo email >"$SRC/claim.tmp" && chmod 0644 "$SRC/claim.tmp" && mv "$SRC/claim.tmp" "$SRC/claim"
doing "GET http://oauth2-demo.$NS:8080/items/123 from inside the cluster"
get_until 10 '[ "$STATUS" = 200 ]' "$CLUSTER_IP" 8080 /items/123
show_resp
WANT="{\"item_id\":123,\"Email\":\"$EMAIL\"}"
check '[ "$STATUS" = 200 ] && [ "$(json_members "$BODY")" = "$(json_members "$WANT")" ] && [ "$HOST_SEEN" = "$LOCAL_HOST" ]' \
  "$WANT from the local container (the tutorial's answer; JSON members in any order)" \
  "got HTTP $STATUS from ${HOST_SEEN:-?}: ${BODY:-<empty>}"

phase "11. gefyra unbridge"
if run "gefyra unbridge -I $BRIDGE" gefyra unbridge -I $BRIDGE; then
  ok "bridge $BRIDGE removed"
else
  bad "gefyra unbridge failed"
fi
run "demo-kube images $NS $POD" demo_kube images $NS "$POD"
check 'printf "%s" "$OUT" | grep -qx "oauth2-demo-app $APP_IMAGE"' "the Pod runs its original app image again"
doing "GET http://oauth2-demo.$NS:8080/items/123 from inside the cluster"
get_until 30 '[ "$HOST_SEEN" = "$POD" ]' "$CLUSTER_IP" 8080 /items/123
show_resp
check '[ "$STATUS" = 500 ] && [ "$HOST_SEEN" = "$POD" ]' \
  "HTTP 500 from the cluster's Pod $POD again (its image still has the bug; roll out the fix to keep it)" \
  "got HTTP $STATUS from ${HOST_SEEN:-?}"

phase "12. gefyra down"
if run "gefyra down" gefyra down; then
  GEFYRA_UP=0
  ok "gefyra down: dev containers, cargo, network and this client's registration removed"
else
  bad "gefyra down failed"
fi
check '! docker inspect $LOCAL >/dev/null 2>&1' "the local container $LOCAL is gone"
run "demo-kube images $NS $POD" demo_kube images $NS "$POD"
check 'printf "%s" "$OUT" | grep -qx "oauth2-demo-app $APP_IMAGE" && printf "%s" "$OUT" | grep -qx "oauth2-proxy $SIDECAR_IMAGE"' \
  "the cluster is as before: the Pod runs its original images"

finish
