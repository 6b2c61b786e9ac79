#!/bin/bash
# testbed/bed.sh — gefyra's test bed: a real single-node Kubernetes v1.20.2 on the local Docker,
# a registry on 127.0.0.1:5000 and a small cluster DNS, all on this machine only.
# Test-bed code, not product code. Derived from /work/shared/reference/k8s-local.sh.
#
#   testbed/bed.sh up       # install what is missing, start dockerd if needed, build Kubernetes once
#                           # (cached in $GEFYRA_K8S_WORK), start the bed, print its env
#   testbed/bed.sh down     # stop what `up` started (by PID), remove its containers, rules and state
#   testbed/bed.sh status   # each part: running or not; exit 0 only when the whole bed works
#   testbed/bed.sh env      # shell variables: eval "$(testbed/bed.sh env)"
#   testbed/bed.sh build    # only build (Kubernetes binaries, pause/busybox images, PKI, testbed-dns)
#   testbed/bed.sh hairpin  # one-shot: hairpin mode on docker0 ports (`up` also runs it in a loop)
#
# What runs, and where it listens (never 0.0.0.0, never the machine's outward address):
#   etcd               127.0.0.1:12379 (peer 127.0.0.1:12380)
#   kube-apiserver     NODE_IP:16443 (NODE_IP = docker0's address, normally 172.17.0.1); Pods reach it
#                      through the `kubernetes` Service 10.96.0.1:443 (in the certificate's SANs)
#   controller-manager, scheduler: no serving ports (--port=0), secure ports on 127.0.0.1
#   kubelet            127.0.0.1 (node name `localhost`, --node-ip NODE_IP, --cluster-dns NODE_IP)
#   kube-proxy         iptables mode; NodePorts on 127.0.0.0/8 and docker0's subnet only
#   testbed-dns        NODE_IP:53 udp+tcp (Pods' nameserver); only docker0 and loopback may reach it
#   docker-registry    127.0.0.1:5000
# Safety: the service CIDR routes into a local sink (ifb + iptables DROP); CVE-2020-8558 guard for
# route_localnet; devnet isolation: other Docker bridges (br-*, where gefyra's networks live) reach
# NodePorts at NODE_IP but neither Pod addresses, ClusterIPs nor the cluster DNS.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
W=${GEFYRA_K8S_WORK:-${K8S_WORK:-/var/cache/gefyra/k8s}}   # build cache (bin/, gocache, images, pki)
B=$W/bin
R=$W/run            # state of a running bed: pids, etcd data, kubelet root; removed by `down`
L=$W/logs
SRCVER=1.20.5+really1.20.2-1.1+deb12u1
APISERVER_PORT=16443
ETCD_PORT=12379
SERVICE_CIDR=10.96.0.0/16          # must match --service-cluster-ip-range
KUBERNETES_SVC_IP=10.96.0.1
POD_CIDR=172.17.0.0/16             # docker0's subnet: Pods use Docker's default bridge
CLUSTER_DOMAIN=cluster.local
SINK=kube-sink                     # ifb (or dummy) netdev that swallows un-DNATed service-CIDR traffic
SINKCHAIN=KLOCAL-SINK              # filter chain: drop service-CIDR packets nobody DNATed
GUARD=KLOCAL-GUARD                 # filter chain: CVE-2020-8558 guard (route_localnet=1)
DEVNET_IN=KLOCAL-DEVNET            # filter chain (INPUT): other bridges -> ClusterIPs with host endpoints
NODEGUARD=KLOCAL-NODE              # filter chain (INPUT): who may reach the DNS and the apiserver on NODE_IP
DEVNET_TAG=klocal-devnet           # comment on our rules in Docker's DOCKER-USER chain
NODEPORT_RANGE=30000:32767
REGISTRY_ADDR=127.0.0.1:5000
PROFILE=${TESTBED_PROFILE:-ci}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
DNS_BIN=$TARGET_DIR/x86_64-unknown-linux-gnu/$PROFILE/testbed-dns
# start order; `down` stops in reverse
PARTS=(registry etcd apiserver controller-manager scheduler dns kubelet kube-proxy hairpin)

say() { echo "bed: $*" >&2; }
die() { echo "bed: error: $*" >&2; exit 1; }

node_ip() {
  local ip
  ip=$(ip -4 -o addr show docker0 2>/dev/null | awk '{split($4,a,"/"); print a[1]; exit}' || true)
  echo "${ip:-}"
}

# ------------------------------------------------------------------ prerequisites
# command -> Debian package
declare -A PKG=(
  [dockerd]=docker.io [docker]=docker.io [etcd]=etcd-server [docker-registry]=docker-registry
  [conntrack]=conntrack [iptables]=iptables [ip]=iproute2 [curl]=curl [openssl]=openssl
  [flock]=util-linux [go]=golang-go [make]=make [gcc]=gcc [rsync]=rsync [cargo]=cargo
)
need() {   # need CMD... : install the Debian packages of missing commands, or name them and fail
  local c missing=()
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("${PKG[$c]:-$c}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  say "installing missing Debian packages: ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >"$L/apt.log" 2>&1; then
    apt-get update >>"$L/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >>"$L/apt.log" 2>&1 ||
      die "missing prerequisites; install the Debian packages: apt-get install ${missing[*]} (log: $L/apt.log)"
  fi
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || die "'$c' still missing; install Debian package ${PKG[$c]:-$c}"; done
}
need_busybox_static() {
  if ! [ -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
    say "installing busybox-static"
    DEBIAN_FRONTEND=noninteractive apt-get install -y busybox-static >>"$L/apt.log" 2>&1 ||
      die "install the Debian package busybox-static (a static /bin/busybox for the test image)"
  fi
}

# ------------------------------------------------------------------ dockerd
docker_up() {
  need docker dockerd iptables
  docker info >/dev/null 2>&1 && return 0
  local dp
  dp=$(cat /var/run/docker.pid 2>/dev/null || true)
  if alive dockerd; then
    say "dockerd (pid $(cat "$R/dockerd.pid")) started earlier is not answering yet; waiting"
  elif [ -n "$dp" ] && [ -d "/proc/$dp" ] && [[ $(tr '\0' ' ' <"/proc/$dp/cmdline" 2>/dev/null) == *dockerd* ]]; then
    say "a dockerd (pid $dp, not ours) is running but not answering yet; waiting (never a second one)"
  else
    say "dockerd is not running: starting it (log $L/dockerd.log)"
    nohup dockerd --host=unix:///var/run/docker.sock >"$L/dockerd.log" 2>&1 </dev/null 9>&- &
    echo $! >"$R/dockerd.pid"
    echo dockerd >"$R/dockerd.name"
  fi
  local _
  for _ in $(seq 1 150); do docker info >/dev/null 2>&1 && return 0; sleep 0.2; done
  fail dockerd "$L/dockerd.log" "dockerd does not answer"
}

# ------------------------------------------------------------------ build (cached in $W)
# Bump when the build recipe changes: binaries without this stamp are rebuilt.
# v2: vendored modern-go/reflect2 1.0.1 -> Debian's 1.0.2. With Go >= 1.18, 1.0.1 makes the apiserver
#     panic on JSON encode/decode of many objects (GET nodes, POST configmaps ...; protobuf clients such
#     as the kubelet are unaffected, JSON clients such as kube-rs are not).
BUILD_STAMP="gefyra-k8s-build v2 reflect2-1.0.2"
build_k8s() {
  local missing=0 c
  for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet; do
    [ -x "$B/$c" ] || missing=1
  done
  if [ "$(cat "$B/.stamp" 2>/dev/null)" != "$BUILD_STAMP" ]; then
    [ $missing = 1 ] || say "binaries in $B predate '$BUILD_STAMP': rebuilding them"
    rm -f "$B"/kube-apiserver "$B"/kube-controller-manager "$B"/kube-scheduler "$B"/kube-proxy "$B"/kubelet
    missing=1
  fi
  [ $missing = 0 ] && return 0
  need go make gcc rsync curl
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y golang-github-modern-go-reflect2-dev >>"$L/apt.log" 2>&1 ||
      die "install the Debian package golang-github-modern-go-reflect2-dev (reflect2 1.0.2 for Go >= 1.18)"
  }
  say "building Kubernetes v1.20.2 from Debian's source package into $B (cold: ~10 min on 2 cores; log $L/k8s-build.log)"
  local t0=$SECONDS
  mkdir -p "$W/apt/parts" "$W/apt/lists/partial" "$W/apt/cache/archives/partial" "$B"
  if [ ! -f "$W/kubernetes_1.20.5+really1.20.2.orig.tar.gz" ]; then
    # deb-src entries derived from the machine's own Debian source list
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$W/apt/parts/src.sources"
    else
      sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >"$W/apt/parts/src.list"
    fi
    local APTO=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$W/apt/parts"
                -o Dir::State::Lists="$W/apt/lists" -o Dir::Cache="$W/apt/cache")
    apt-get "${APTO[@]}" update >>"$L/k8s-build.log" 2>&1
    (cd "$W" && apt-get "${APTO[@]}" source --download-only "kubernetes=$SRCVER" >>"$L/k8s-build.log" 2>&1) ||
      die "cannot download Debian's kubernetes=$SRCVER source package (log $L/k8s-build.log)"
  fi
  local S=$W/kubernetes-1.20.2
  if [ ! -d "$S/cmd" ]; then
    rm -rf "$S" && tar -C "$W" -xzf "$W/kubernetes_1.20.5+really1.20.2.orig.tar.gz"
    # these machines lack CAP_SYS_RESOURCE: runc cannot set a negative oom_score_adj
    sed -i 's/defaultSandboxOOMAdj int = -998/defaultSandboxOOMAdj int = 0/' "$S/pkg/kubelet/dockershim/docker_sandbox.go"
    sed -i 's/guaranteedOOMScoreAdj int = -997/guaranteedOOMScoreAdj int = 0/' "$S/pkg/kubelet/qos/policy.go"
  fi
  if ! grep -q 'v1.0.2' "$S/vendor/github.com/modern-go/reflect2/.gefyra-version" 2>/dev/null; then
    rm -rf "$S/vendor/github.com/modern-go/reflect2"
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$S/vendor/github.com/modern-go/reflect2"
    rm -rf "$S/vendor/github.com/modern-go/reflect2/tests" "$S/vendor/github.com/modern-go/reflect2/"*_test.go
    echo v1.0.2 >"$S/vendor/github.com/modern-go/reflect2/.gefyra-version"
  fi
  (
    export GOCACHE=$W/gocache GOPATH=$W/gopath GOPROXY=off GOFLAGS= HOME=$W/home
    if [ ! -f "$S/pkg/generated/openapi/zz_generated.openapi.go" ]; then
      (cd "$S" && env -u GO111MODULE make gen_openapi >"$W/gen_openapi.log" 2>&1)
    fi
    mkdir -p "$GOPATH/src/k8s.io" && ln -sfn "$S" "$GOPATH/src/k8s.io/kubernetes"
    export GO111MODULE=off
    local LD="-s -w" P=k8s.io/kubernetes/vendor kv
    for kv in gitVersion=v1.20.2 gitMajor=1 gitMinor=20 gitTreeState=clean buildDate=2021-01-13T00:00:00Z; do
      LD="$LD -X $P/k8s.io/component-base/version.$kv -X $P/k8s.io/client-go/pkg/version.$kv"
    done
    cd "$GOPATH/src/k8s.io/kubernetes"
    for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
      [ -x "$B/$c" ] || CGO_ENABLED=0 go build -p 2 -tags selinux,notest -ldflags "$LD" -o "$B/$c" "./cmd/$c"
    done
    [ -x "$B/kubelet" ] || go build -p 2 -tags selinux,notest -ldflags "$LD" -o "$B/kubelet" ./cmd/kubelet   # cgo
  ) >>"$L/k8s-build.log" 2>&1 || { tail -n 30 "$L/k8s-build.log" >&2; die "Kubernetes build failed (log $L/k8s-build.log)"; }
  echo "$BUILD_STAMP" >"$B/.stamp"
  say "Kubernetes built in $((SECONDS - t0)) s"
}

build_images() {   # k8s.gcr.io/pause:3.2 (pod sandboxes) and busybox:1.36, built locally
  local S=$W/kubernetes-1.20.2
  if ! docker image inspect k8s.gcr.io/pause:3.2 >/dev/null 2>&1; then
    need gcc
    mkdir -p "$W/img/pause"
    [ -x "$W/img/pause/pause" ] || gcc -Os -static -o "$W/img/pause/pause" "$S/build/pause/linux/pause.c"
    tar -C "$W/img/pause" -c . | docker import --change 'ENTRYPOINT ["/pause"]' - k8s.gcr.io/pause:3.2 >/dev/null
  fi
  if ! docker image inspect busybox:1.36 >/dev/null 2>&1; then
    need_busybox_static
    mkdir -p "$W/img/bb/bin" "$W/img/bb/www"
    cp /bin/busybox "$W/img/bb/bin/busybox"
    local a
    for a in sh ls cat echo sleep httpd wget env ps hostname nc nslookup mkdir true id; do ln -sf busybox "$W/img/bb/bin/$a"; done
    echo hello-from-pod >"$W/img/bb/www/index.html"
    tar -C "$W/img/bb" -c . | docker import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - busybox:1.36 >/dev/null
  fi
}

pki() {   # CA, apiserver certificate (SANs for every address a client may use), SA keys, kubeconfig
  local ip=$1 P=$W/pki
  if [ -f "$P/ext.cnf" ] && grep -q "IP:$ip," "$P/ext.cnf" && [ -f "$P/apiserver.crt" ] && [ -f "$W/kubeconfig" ] &&
     grep -q "https://$ip:$APISERVER_PORT" "$W/kubeconfig"; then
    return 0
  fi
  need openssl
  say "generating the bed's PKI for node address $ip"
  mkdir -p "$P"
  (
    cd "$P"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj /CN=gefyra-testbed-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
    printf 'subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.%s,IP:%s,IP:%s,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' \
      "$CLUSTER_DOMAIN" "$KUBERNETES_SVC_IP" "$ip" >ext.cnf
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile ext.cnf 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    echo "admintoken,admin,admin,system:masters" >tokens.csv
  )
  cat >"$W/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: gefyra-testbed
  cluster: {server: "https://$ip:$APISERVER_PORT", certificate-authority: "$P/ca.crt"}
users:
- name: admin
  user: {token: admintoken}
contexts:
- name: gefyra-testbed
  context: {cluster: gefyra-testbed, user: admin, namespace: default}
current-context: gefyra-testbed
EOF
}

build_dns() {
  need cargo
  say "building testbed-dns (cargo build --profile $PROFILE -p gefyra-testbed; log $L/testbed-dns-build.log)"
  (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --profile "$PROFILE" -p gefyra-testbed --bin testbed-dns) \
    >"$L/testbed-dns-build.log" 2>&1 || { tail -n 30 "$L/testbed-dns-build.log" >&2; die "testbed-dns does not build"; }
  [ -x "$DNS_BIN" ] || die "testbed-dns built but $DNS_BIN is missing"
}

build() {
  mkdir -p "$W" "$B" "$R" "$L"
  need curl iptables ip conntrack etcd docker-registry openssl flock
  docker_up
  local ip; ip=$(node_ip); [ -n "$ip" ] || die "docker0 has no IPv4 address (is dockerd running with its default bridge?)"
  build_k8s
  build_images
  pki "$ip"
  build_dns
}

# ------------------------------------------------------------------ process bookkeeping
# $R/<part>.pid holds the PID, $R/<part>.name a word that must appear in /proc/PID/cmdline
# (guards against PID reuse).
alive() {
  local part=$1 p n
  [ -f "$R/$part.pid" ] || return 1
  p=$(cat "$R/$part.pid"); n=$(cat "$R/$part.name" 2>/dev/null || echo "")
  [ -d "/proc/$p" ] || return 1
  [ "$(awk '/^State:/{print $2}' "/proc/$p/status" 2>/dev/null)" != Z ] || return 1
  [ -z "$n" ] && return 0
  local cmd; cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
  [[ $cmd == *"$n"* ]]
}
spawn() {   # spawn PART NAME-IN-CMDLINE CMD...
  local part=$1 name=$2; shift 2
  nohup "$@" >"$L/$part.log" 2>&1 </dev/null 9>&- &   # 9: the bed's lock, not for children
  echo $! >"$R/$part.pid"
  echo "$name" >"$R/$part.name"
}
fail() {   # fail PART LOG MESSAGE
  echo "bed: error: $1: $3" >&2
  if [ -f "$2" ]; then
    echo "---- last 25 lines of $2 ----" >&2
    tail -n 25 "$2" >&2
    echo "----" >&2
  fi
  echo "bed: the bed is half started; run: $0 down" >&2
  exit 1
}
wait_for() {   # wait_for PART SECONDS CHECK-CMD...
  local part=$1 secs=$2 i; shift 2
  for i in $(seq 1 $((secs * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    alive "$part" || fail "$part" "$L/$part.log" "exited during start"
    sleep 0.2
  done
  fail "$part" "$L/$part.log" "not ready after ${secs} s"
}
stop_pid() {   # stop_pid PART: SIGTERM, wait up to 10 s, SIGKILL
  local part=$1 p i
  [ -f "$R/$part.pid" ] || return 0
  if alive "$part"; then
    p=$(cat "$R/$part.pid")
    kill "$p" 2>/dev/null || true
    for i in $(seq 1 50); do alive "$part" || break; sleep 0.2; done
    alive "$part" && kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$R/$part.pid" "$R/$part.name"
}

# ------------------------------------------------------------------ checks
# (no `| grep -q` under pipefail: grep's early exit would fail the pipeline with SIGPIPE)
api() { curl -sf -m 3 --cacert "$W/pki/ca.crt" -H 'Authorization: Bearer admintoken' "https://$(cat "$R/node_ip"):$APISERVER_PORT$1"; }
has() { local want=$1 out; shift; out=$("$@" 2>/dev/null) || return 1; [[ $out == *"$want"* ]]; }
check_registry() { curl -sf -m 2 -o /dev/null "http://$REGISTRY_ADDR/v2/"; }
check_etcd() { has '"health":"true"' curl -sf -m 2 "http://127.0.0.1:$ETCD_PORT/health"; }
check_apiserver() { [ "$(api /readyz)" = ok ]; }
check_controller-manager() { api /api/v1/namespaces/default/serviceaccounts/default >/dev/null; }
check_scheduler() { has ok curl -sfk -m 2 https://127.0.0.1:10259/healthz; }
check_dns() { has "$KUBERNETES_SVC_IP" "$R/testbed-dns" query --server "$(cat "$R/node_ip"):53" "kubernetes.default.svc.$CLUSTER_DOMAIN"; }
node_ready() { local j; j=$(api /api/v1/nodes/localhost) || return 1; j=${j//[[:space:]]/}; [[ $j == *'"type":"Ready","status":"True"'* ]]; }
check_kubelet() { node_ready; }
check_kube-proxy() { has lastUpdated curl -sf -m 2 http://127.0.0.1:10256/healthz; }
check_hairpin() { true; }

# ------------------------------------------------------------------ network safety
# Service-CIDR packets that kube-proxy does NOT DNAT must never follow the default route off the
# machine: route the CIDR into a NOARP device that discards what it is asked to send ('dummy' if
# the kernel has it, else 'ifb'), and drop anything still addressed to it after nat (filter
# OUTPUT/FORWARD see packets after DNAT). A device route, not 'blackhole', so that connect() and
# sendto() still reach nat OUTPUT's DNAT.
sink_up() {
  if ! ip link show "$SINK" >/dev/null 2>&1; then
    ip link add "$SINK" type dummy 2>/dev/null || ip link add "$SINK" type ifb
  fi
  sysctl -qw "net.ipv6.conf.$SINK.disable_ipv6=1" 2>/dev/null || true
  ip link set "$SINK" up
  ip route replace "$SERVICE_CIDR" dev "$SINK"
  [[ $(ip route get "$KUBERNETES_SVC_IP") == *"dev $SINK"* ]] || die "sink route for $SERVICE_CIDR missing"
  iptables -w 5 -N "$SINKCHAIN" 2>/dev/null || iptables -w 5 -F "$SINKCHAIN"
  # frames bridged between two containers of one Docker network (a dev container -> its gateway, cargo)
  # pass iptables too (bridge-nf-call-iptables): they never leave that bridge, so they are not ours
  iptables -w 5 -A "$SINKCHAIN" -m physdev --physdev-is-bridged -j RETURN
  iptables -w 5 -A "$SINKCHAIN" -d "$SERVICE_CIDR" -j DROP
  local c
  for c in OUTPUT FORWARD; do
    iptables -w 5 -C "$c" -j "$SINKCHAIN" 2>/dev/null || iptables -w 5 -I "$c" -j "$SINKCHAIN"
  done
}
sink_down() {
  local c
  for c in OUTPUT FORWARD; do while iptables -w 5 -D "$c" -j "$SINKCHAIN" 2>/dev/null; do :; done; done
  iptables -w 5 -F "$SINKCHAIN" 2>/dev/null || true
  iptables -w 5 -X "$SINKCHAIN" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" dev "$SINK" 2>/dev/null || true
  ip link del "$SINK" 2>/dev/null || true
}

# kube-proxy sets net.ipv4.conf.all.route_localnet=1 (NodePorts on 127.0.0.1); the kubelet would add
# the CVE-2020-8558 drop rule but runs with --make-iptables-util-chains=false: add it ourselves.
guard_up() {
  iptables -w 5 -N "$GUARD" 2>/dev/null || iptables -w 5 -F "$GUARD"
  iptables -w 5 -A "$GUARD" ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
  iptables -w 5 -C INPUT -j "$GUARD" 2>/dev/null || iptables -w 5 -I INPUT -j "$GUARD"
}
guard_down() {
  while iptables -w 5 -D INPUT -j "$GUARD" 2>/dev/null; do :; done
  iptables -w 5 -F "$GUARD" 2>/dev/null || true
  iptables -w 5 -X "$GUARD" 2>/dev/null || true
}

# Who may reach what the bed serves on NODE_IP: the cluster DNS only from docker0 (Pods) and the
# host itself (lo); the apiserver also from other Docker bridges (the developer's machine has API
# access), never from other interfaces.
nodeguard_up() {
  local ip=$1
  iptables -w 5 -N "$NODEGUARD" 2>/dev/null || iptables -w 5 -F "$NODEGUARD"
  iptables -w 5 -A "$NODEGUARD" -i lo -j RETURN
  iptables -w 5 -A "$NODEGUARD" -i docker0 -j RETURN
  iptables -w 5 -A "$NODEGUARD" -d "$ip" -p udp --dport 53 -j DROP
  iptables -w 5 -A "$NODEGUARD" -d "$ip" -p tcp --dport 53 -j DROP
  iptables -w 5 -A "$NODEGUARD" -i br-+ -j RETURN
  iptables -w 5 -A "$NODEGUARD" -d "$ip" -p tcp --dport "$APISERVER_PORT" -j DROP
  iptables -w 5 -C INPUT -j "$NODEGUARD" 2>/dev/null || iptables -w 5 -I INPUT -j "$NODEGUARD"
}
nodeguard_down() {
  while iptables -w 5 -D INPUT -j "$NODEGUARD" 2>/dev/null; do :; done
  iptables -w 5 -F "$NODEGUARD" 2>/dev/null || true
  iptables -w 5 -X "$NODEGUARD" 2>/dev/null || true
}

# devnet isolation: one machine plays two. Containers on OTHER Docker bridges (br-*, e.g. gefyra's
# networks where cargo lives) are the developer's machine. Rules in Docker's DOCKER-USER chain
# (tagged; Docker jumps there first in FORWARD and never flushes it) plus our INPUT chain:
#  ALLOWED: connections whose conntrack ORIGINAL destination is NODE_IP:NODEPORT_RANGE (tcp/udp),
#    i.e. NodePorts on the node address, DNATed by kube-proxy to a Pod, both directions (Docker's
#    DOCKER-ISOLATION chains would drop these bridge-to-bridge packets even after DNAT).
#  DROPPED from br-+: original destination in the service CIDR (forwarded, or local endpoints such
#    as `kubernetes` -> apiserver via $DEVNET_IN), and Pod IPs unless the original destination was
#    NODE_IP. Matched on the destination before DNAT, so only the tunnel can carry such traffic.
devnet_rules() {
  local ip=$1 p
  # frames bridged within one Docker network (a dev container -> cargo, its gateway on the same
  # bridge) go through iptables too (bridge-nf-call-iptables); they stay on that bridge: let them be
  echo "-m physdev --physdev-is-bridged -m comment --comment $DEVNET_TAG -j RETURN"
  # the sink's DROP again, first in FORWARD (Docker moves its own accepts above KLOCAL-SINK when it
  # creates a network): after nat, a service-CIDR destination means nobody DNATed it
  echo "-d $SERVICE_CIDR -m comment --comment $DEVNET_TAG -j DROP"
  for p in udp tcp; do
    echo "-m conntrack --ctstate DNAT --ctorigdst $ip --ctproto $p --ctorigdstport $NODEPORT_RANGE -m comment --comment $DEVNET_TAG -j ACCEPT"
  done
  echo "-i br-+ -m conntrack --ctorigdst $SERVICE_CIDR -m comment --comment $DEVNET_TAG -j DROP"
  echo "-i br-+ -d $POD_CIDR -m conntrack ! --ctorigdst $ip -m comment --comment $DEVNET_TAG -j DROP"
}
devnet_up() {
  local ip=$1 r i=1
  iptables -w 5 -n -L DOCKER-USER >/dev/null 2>&1 || die "no DOCKER-USER chain (dockerd must run with its iptables rules)"
  devnet_down "$ip"
  while read -r r; do
    # shellcheck disable=SC2086
    iptables -w 5 -I DOCKER-USER "$i" $r; i=$((i + 1))
  done < <(devnet_rules "$ip")
  # the DOCKER-USER jump first in FORWARD, above kube-proxy's prepended jumps (Docker does the same)
  if [ "$(iptables -w 5 -S FORWARD | grep -v "$SINKCHAIN" | sed -n 2p)" != "-A FORWARD -j DOCKER-USER" ]; then
    iptables -w 5 -D FORWARD -j DOCKER-USER 2>/dev/null || true
    iptables -w 5 -I FORWARD -j DOCKER-USER
  fi
  # kube-proxy's nat PREROUTING would DNAT a bridged dev container -> cargo frame addressed to a
  # ClusterIP to a Pod, and the host would then route it to the Pod around the tunnel: traffic that
  # enters from another Docker bridge to the service CIDR is never DNATed (then the sink drops it,
  # unless it is bridged to cargo, which carries it through the tunnel)
  iptables -w 5 -t nat -C PREROUTING -i br-+ -d "$SERVICE_CIDR" -m comment --comment "$DEVNET_TAG" -j RETURN 2>/dev/null ||
    iptables -w 5 -t nat -I PREROUTING 1 -i br-+ -d "$SERVICE_CIDR" -m comment --comment "$DEVNET_TAG" -j RETURN
  iptables -w 5 -N "$DEVNET_IN" 2>/dev/null || iptables -w 5 -F "$DEVNET_IN"
  iptables -w 5 -A "$DEVNET_IN" -i br-+ -m conntrack --ctorigdst "$SERVICE_CIDR" -j DROP
  iptables -w 5 -C INPUT -j "$DEVNET_IN" 2>/dev/null || iptables -w 5 -I INPUT -j "$DEVNET_IN"
}
devnet_down() {
  local ip=$1 r
  if iptables -w 5 -n -L DOCKER-USER >/dev/null 2>&1; then
    while read -r r; do
      # shellcheck disable=SC2086
      while iptables -w 5 -D DOCKER-USER $r 2>/dev/null; do :; done
    done < <(devnet_rules "$ip")
  fi
  while iptables -w 5 -t nat -D PREROUTING -i br-+ -d "$SERVICE_CIDR" -m comment --comment "$DEVNET_TAG" -j RETURN 2>/dev/null; do :; done
  while iptables -w 5 -D INPUT -j "$DEVNET_IN" 2>/dev/null; do :; done
  iptables -w 5 -F "$DEVNET_IN" 2>/dev/null || true
  iptables -w 5 -X "$DEVNET_IN" 2>/dev/null || true
}

# A Pod reaching itself through its own Service needs hairpin mode on its docker0 port; the kubelet
# sets it only for kubenet/CNI. `up` runs this in a loop (every 2 s) so new Pods get it.
hairpin() {
  local p
  for p in /sys/class/net/docker0/brif/*/hairpin_mode; do
    [ -e "$p" ] && [ "$(cat "$p" 2>/dev/null)" != 1 ] && echo 1 >"$p" 2>/dev/null
  done
  return 0
}
hairpin_loop() { while :; do hairpin; sleep 2; done; }

# ------------------------------------------------------------------ registry
registry_config() {
  mkdir -p "$W/registry/data"
  cat >"$W/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: "$W/registry/data"}
  delete: {enabled: true}
http: {addr: "$REGISTRY_ADDR"}
EOF
}

# ------------------------------------------------------------------ up / down / status / env
up() {
  mkdir -p "$W" "$R" "$L"
  exec 9>"$W/.lock"; flock -w 900 9 || die "another bed.sh holds $W/.lock"
  local t0=$SECONDS part any=0 dead=()
  for part in "${PARTS[@]}"; do
    if [ -f "$R/$part.pid" ]; then any=1; alive "$part" || dead+=("$part"); fi
  done
  if [ $any = 1 ]; then
    if [ ${#dead[@]} -eq 0 ] && status_quiet; then
      say "the bed is already up; nothing to do"
      env_out
      return 0
    fi
    for part in "${dead[@]}"; do
      echo "bed: $part is not running; last lines of $L/$part.log:" >&2
      tail -n 15 "$L/$part.log" >&2 2>/dev/null || true
    done
    # a reboot or an ended session leaves state behind: clear it and start afresh
    say "the bed is half up (${dead[*]:-not healthy}): taking what is left down first"
    down
  fi
  build
  local ip; ip=$(node_ip)
  echo "$ip" >"$R/node_ip"
  install -m 0755 "$DNS_BIN" "$R/testbed-dns"   # a copy: rebuilding the crate never touches the running bed
  local P=$W/pki
  say "starting (node address $ip)"
  sink_up      # BEFORE anything that could create or send service-CIDR traffic
  guard_up
  nodeguard_up "$ip"

  registry_config
  spawn registry docker-registry docker-registry serve "$W/registry/config.yml"
  wait_for registry 20 check_registry

  rm -rf "$R/etcd"
  spawn etcd etcd etcd --name t --data-dir "$R/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls http://127.0.0.1:12380 \
    --initial-advertise-peer-urls http://127.0.0.1:12380 --initial-cluster t=http://127.0.0.1:12380
  wait_for etcd 30 check_etcd

  spawn apiserver kube-apiserver "$B/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address="$ip" \
    --advertise-address="$ip" --secure-port="$APISERVER_PORT" --insecure-port=0 \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
    --token-auth-file="$P/tokens.csv" --authorization-mode=Node,RBAC \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
    --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-cluster-ip-range="$SERVICE_CIDR" --service-node-port-range="${NODEPORT_RANGE/:/-}" --allow-privileged=true \
    --kubelet-preferred-address-types=Hostname \
    --kubelet-client-certificate="$P/apiserver.crt" --kubelet-client-key="$P/apiserver.key"
  wait_for apiserver 60 check_apiserver

  spawn controller-manager kube-controller-manager "$B/kube-controller-manager" --kubeconfig="$W/kubeconfig" --leader-elect=false \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
    --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
    --bind-address=127.0.0.1 --port=0
  spawn scheduler kube-scheduler "$B/kube-scheduler" --kubeconfig="$W/kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --port=0
  GEFYRA_LOG=${GEFYRA_LOG:-info} spawn dns testbed-dns "$R/testbed-dns" serve --listen "$ip:53" \
    --kubeconfig "$W/kubeconfig" --domain "$CLUSTER_DOMAIN" ${TESTBED_DNS_UPSTREAM:+--upstream "$TESTBED_DNS_UPSTREAM"}
  wait_for scheduler 30 check_scheduler
  wait_for controller-manager 60 check_controller-manager
  wait_for dns 30 check_dns

  # node name 'localhost' => the apiserver reaches the kubelet on 127.0.0.1 (exec/logs/port-forward)
  mkdir -p "$R/kubelet"
  spawn kubelet kubelet "$B/kubelet" --kubeconfig="$W/kubeconfig" --hostname-override=localhost --node-ip="$ip" --oom-score-adj=0 \
    --address=127.0.0.1 --read-only-port=0 --healthz-bind-address=127.0.0.1 \
    --root-dir="$R/kubelet" --cert-dir="$R/kubelet/pki" --volume-plugin-dir="$R/kubelet/plugins" \
    --container-runtime=docker --pod-infra-container-image=k8s.gcr.io/pause:3.2 \
    --cluster-dns="$ip" --cluster-domain="$CLUSTER_DOMAIN" \
    --fail-swap-on=false --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= \
    --make-iptables-util-chains=false --anonymous-auth=true --authorization-mode=AlwaysAllow \
    --image-gc-high-threshold=100 --image-gc-low-threshold=99 --eviction-hard='memory.available<50Mi'

  [ -f "$R/route_localnet.orig" ] || sysctl -n net.ipv4.conf.all.route_localnet >"$R/route_localnet.orig"
  # conntrack-* = 0 and oom-score-adj=0: leave host sysctls alone (no CAP_SYS_RESOURCE here)
  spawn kube-proxy kube-proxy "$B/kube-proxy" --kubeconfig="$W/kubeconfig" --proxy-mode=iptables \
    --hostname-override=localhost --cluster-cidr="$POD_CIDR" \
    --bind-address=127.0.0.1 --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
    --nodeport-addresses="127.0.0.0/8,$POD_CIDR" \
    --oom-score-adj=0 --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0
  wait_for kube-proxy 60 check_kube-proxy
  devnet_up "$ip"   # after kube-proxy: its FORWARD jumps are prepended, ours must come first
  spawn hairpin hairpin-loop bash "$REPO/testbed/bed.sh" hairpin-loop
  wait_for kubelet 90 check_kubelet
  say "up in $((SECONDS - t0)) s"
  env_out
}

down() {
  mkdir -p "$W" "$R" "$L"
  exec 9>"$W/.lock"; flock -w 900 9 || die "another bed.sh holds $W/.lock"
  local ip part i
  ip=$(cat "$R/node_ip" 2>/dev/null || node_ip)
  for ((i = ${#PARTS[@]} - 1; i >= 0; i--)); do
    part=${PARTS[$i]}
    if [ -f "$R/$part.pid" ]; then say "stopping $part"; stop_pid "$part"; fi
  done
  # the Pods' containers (dockershim names them k8s_<container>_<pod>_... and labels them)
  if docker info >/dev/null 2>&1; then
    local ids
    ids=$(docker ps -aq --filter name=^k8s_ --filter label=io.kubernetes.pod.uid 2>/dev/null || true)
    if [ -n "$ids" ]; then
      say "removing $(echo "$ids" | wc -l) Pod containers"
      echo "$ids" | xargs -r docker rm -f >/dev/null 2>&1 || true
    fi
  fi
  # the kubelet's volume mounts (secrets/tmpfs) under its root dir
  if [ -d "$R/kubelet" ]; then
    awk -v d="$R/kubelet" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$R/kubelet"
  fi
  rm -rf "$R/etcd"
  # kube-proxy leaves its iptables rules behind on exit: remove them (not IPVS: not ours)
  if [ -x "$B/kube-proxy" ] && [[ $(iptables-save -t nat 2>/dev/null) == *$'\n:KUBE-'* ]]; then
    timeout 60 "$B/kube-proxy" --cleanup --cleanup-ipvs=false >"$L/kube-proxy-cleanup.log" 2>&1 || true
    local t c
    for t in nat filter mangle; do
      for c in KUBE-MARK-MASQ KUBE-MARK-DROP KUBE-PROXY-CANARY KUBE-KUBELET-CANARY; do
        iptables -w 5 -t "$t" -F "$c" 2>/dev/null && iptables -w 5 -t "$t" -X "$c" 2>/dev/null || true
      done
    done
  fi
  [ -n "$ip" ] && devnet_down "$ip"
  nodeguard_down
  guard_down
  if [ -f "$R/route_localnet.orig" ]; then
    sysctl -qw net.ipv4.conf.all.route_localnet="$(cat "$R/route_localnet.orig")" || true
    rm -f "$R/route_localnet.orig"
  fi
  sink_down
  # dockerd last, and only if `up` started it
  if [ -f "$R/dockerd.pid" ]; then say "stopping dockerd (started by up)"; stop_pid dockerd; fi
  rm -f "$R/node_ip"
  say "down"
}

status_quiet() {
  local part
  [ -f "$R/node_ip" ] || return 1
  for part in "${PARTS[@]}"; do
    alive "$part" && "check_$part" >/dev/null 2>&1 || return 1
  done
}

status() {
  local part ok=0 st
  if [ ! -f "$R/node_ip" ]; then
    echo "bed: down (no state in $R)"
    return 3
  fi
  for part in "${PARTS[@]}"; do
    if ! [ -f "$R/$part.pid" ]; then st="not started"; ok=1
    elif ! alive "$part"; then st="DEAD (pid $(cat "$R/$part.pid"); log $L/$part.log)"; ok=1
    elif ! "check_$part" >/dev/null 2>&1; then st="running (pid $(cat "$R/$part.pid")) but NOT HEALTHY; log $L/$part.log"; ok=1
    else st="ok (pid $(cat "$R/$part.pid"))"
    fi
    printf '%-20s %s\n' "$part" "$st"
  done
  if docker info >/dev/null 2>&1; then printf '%-20s %s\n' dockerd ok; else printf '%-20s %s\n' dockerd DOWN; ok=1; fi
  [ $ok = 0 ] && echo "bed: up" || echo "bed: NOT healthy (run: $0 down; $0 up)"
  return $ok
}

env_out() {
  local ip; ip=$(cat "$R/node_ip" 2>/dev/null || node_ip)
  cat <<EOF
export KUBECONFIG=$W/kubeconfig
export GEFYRA_REGISTRY=$REGISTRY_ADDR
export GEFYRA_NODE_IP=$ip
export GEFYRA_CLUSTER_DNS=$ip
export GEFYRA_TESTBED_DIR=$W
EOF
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) env_out ;;
  build) mkdir -p "$W" "$R" "$L"; exec 9>"$W/.lock"; flock -w 900 9; build ;;
  hairpin) hairpin ;;
  hairpin-loop) hairpin_loop ;;
  *) echo "usage: $0 up|down|status|env|build|hairpin" >&2; exit 64 ;;
esac
