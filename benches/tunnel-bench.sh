#!/usr/bin/env bash
# tunnel-bench.sh -- side-by-side TCP throughput of gefyra's tunnel (cargo-client -> stowaway)
# and its peers (plain veth, wireguard-go, boringtun-cli, socat relay, onetun) between two network
# namespaces on ONE host (no traffic leaves the machine). Adapted from the workplace's reference
# wg-bench.sh. Writes benches/REPORT.md and benches/results.json (via report.py).
#
#   ns wa (10.99.0.1/24, veth "va")  <--veth-->  ns wb (10.99.0.2/24, veth "vb")
#   tunnel addresses: 10.100.0.1 (wa) / 10.100.0.2 (wb), tunnel MTU 1420
#
# Usage:  benches/tunnel-bench.sh [test ...]       (default: veth gefyra boringtun wggo socat)
#   tests: veth kernel gefyra wggo boringtun socat onetun
# Env:    GEFYRA_BIN=dir (prebuilt stowaway + cargo-client: no build), GEFYRA_LABEL=gefyra,
#         STOWAWAY_ENV="GEFYRA_WORKER_THREADS=1" (env of stowaway)
#         RUNS=3 DUR=10 OUT=benches/results BT_THREADS="4" PROFILE=ci|release
#         REPORT_MD= RESULTS_JSON= (defaults: benches/REPORT.md, benches/results.json)
#
# Needs: iproute2, iputils-ping, ethtool, wireguard-tools (wg), wireguard-go, iperf3, socat, jq, python3, and
#        boringtun-cli (cargo install boringtun-cli; found on PATH or in /var/cache/gefyra/tools/bin).
#        Our binaries: built here with `cargo build --profile $PROFILE -p stowaway -p cargo-client`.
# Every process this script starts is tracked by PID and killed by PID;
# namespaces are deleted on exit.  No namespace gets a default route.
set -u
RUNS=${RUNS:-3}
DUR=${DUR:-10}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(dirname "$HERE")
OUT=${OUT:-$HERE/results}
PROFILE=${PROFILE:-ci}
BT_THREADS=${BT_THREADS:-"4"}
NSA=wa; NSB=wb
A_IP=10.99.0.1; B_IP=10.99.0.2
A_TUN=10.100.0.1; B_TUN=10.100.0.2
WG_MTU=1420
WG_PORT=51820
IPERF_PORT=5201
KEYDIR=$OUT/keys
IPERF_EXTRA=${IPERF_EXTRA:-}   # e.g. "-R" or "-b 500M"
IPERF_TAG=${IPERF_TAG:-}       # suffix for labels when IPERF_EXTRA is used
export PATH=/var/cache/gefyra/tools/bin:$HOME/.cargo/bin:$PATH
mkdir -p "$OUT" "$KEYDIR"
SUMMARY=$OUT/summary.tsv

ALL_PIDS=()        # every background process we started (for final cleanup)
TUN_PIDS=()        # daemons of the test currently running

log() { echo "[$(date +%T)] $*" | tee -a "$OUT/bench.log" >&2; }

. "$HERE/lib.sh"   # kill_pids

cleanup() {
  log "cleanup: killing ${#ALL_PIDS[@]} started PIDs, deleting netns"
  [ ${#ALL_PIDS[@]} -gt 0 ] && kill_pids "${ALL_PIDS[@]}"
  ALL_PIDS=()
  ip netns del $NSA 2>/dev/null
  ip netns del $NSB 2>/dev/null
  rm -f /var/run/wireguard/wga.sock /var/run/wireguard/wgb.sock
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start CMD... in background, remember PID (ip netns exec / env exec, so PID == daemon PID)
start_bg() { local logf=$1; shift; "$@" >"$logf" 2>&1 & local p=$!; ALL_PIDS+=("$p"); LAST_PID=$p; }

setup_ns() {
  ip netns del $NSA 2>/dev/null; ip netns del $NSB 2>/dev/null
  ip netns add $NSA; ip netns add $NSB
  ip link add va netns $NSA type veth peer name vb netns $NSB
  ip -n $NSA addr add $A_IP/24 dev va
  ip -n $NSB addr add $B_IP/24 dev vb
  for ns in $NSA $NSB; do ip -n $ns link set lo up; done
  ip -n $NSA link set va up; ip -n $NSB link set vb up
  # safety: no default route anywhere in our namespaces
  for ns in $NSA $NSB; do
    if [ -n "$(ip -n $ns route show default)" ]; then echo "default route in $ns!"; exit 1; fi
  done
  ip netns exec $NSA ping -c1 -W1 $B_IP >/dev/null || { echo "veth ping failed"; exit 1; }
  {
    echo "== veth offloads (ns $NSA, va) =="; ip netns exec $NSA ethtool -k va 2>/dev/null |
      grep -E '^(tcp-segmentation-offload|generic-segmentation-offload|generic-receive-offload|rx-checksumming|tx-checksumming|scatter-gather):'
    ip -n $NSA -d link show va | head -3
  } > "$OUT/veth-offloads.txt"
}

gen_keys() {
  umask 077
  [ -f "$KEYDIR/a.key" ] || { wg genkey > "$KEYDIR/a.key"; wg genkey > "$KEYDIR/b.key"; }
  wg pubkey < "$KEYDIR/a.key" > "$KEYDIR/a.pub"
  wg pubkey < "$KEYDIR/b.key" > "$KEYDIR/b.pub"
  A_PUB=$(cat "$KEYDIR/a.pub"); B_PUB=$(cat "$KEYDIR/b.pub")
  umask 022
}

# configure one end: ns ifname mykey peerpub mytunip peertunip [peer-endpoint]
wg_conf() {
  local ns=$1 ifn=$2 key=$3 peerpub=$4 myip=$5 peerip=$6 ep=${7:-}
  local epargs=(); [ -n "$ep" ] && epargs=(endpoint "$ep:$WG_PORT")
  ip netns exec "$ns" wg set "$ifn" listen-port $WG_PORT private-key "$key" \
     peer "$peerpub" allowed-ips "$peerip/32" "${epargs[@]}"
  ip -n "$ns" addr add "$myip/24" dev "$ifn"
  ip -n "$ns" link set "$ifn" mtu $WG_MTU up
}

wait_sock() { local i; for i in $(seq 100); do [ -S /var/run/wireguard/$1.sock ] && return 0; sleep 0.1; done; echo "no uapi sock $1"; return 1; }

# ---- measurement -----------------------------------------------------------
ticks_of() { local p=$1; cut -d' ' -f14-17 /proc/$p/stat 2>/dev/null | awk '{print $1+$2+$3+$4}'; }
# busy = user+nice+system+irq+softirq (steal excluded from busy, included in total)
sysstat() { awk '/^cpu /{busy=$2+$3+$4+$7+$8; tot=busy+$5+$6+$9; print busy, tot, $8}' /proc/stat; }

udp_errs() { local n t=0; for n in $NSA $NSB; do
  t=$((t + $(ip netns exec $n awk '/^Udp:/{if(h){print $6}else{h=1}}' /proc/net/snmp))); done; echo $t; }  # RcvbufErrors
bgload() {  # busy cores on the whole machine over 1 s (our tunnel is idle at this point)
  local a b c d; read -r a c _ < <(sysstat); sleep 1; read -r b d _ < <(sysstat)
  awk -v a=$a -v b=$b -v c=$c -v d=$d -v n=$(nproc) 'BEGIN{printf "%.2f", (b-a)/(d-c)*n}'; }

# measure LABEL CLIENT_NS ADDR PORT PARALLEL 'pid-spec'
#   pid-spec is eval'ed before every run, e.g. 'wa:$PID_wga wb:$PID_wgb'
#   PRE_RUN / POST_RUN: optional function names called around every run
measure() {
  local label=$1 cns=$2 addr=$3 port=$4 par=$5 pidspec_t=${6:-}
  local i j f ncpu pidspec; ncpu=$(nproc)
  for i in $(seq "$RUNS"); do
    [ -n "${PRE_RUN:-}" ] && $PRE_RUN
    pidspec=$(eval echo "$pidspec_t")
    local bg; bg=$(bgload)
    declare -A t0=()
    for j in $pidspec; do t0[$j]=$(ticks_of "${j#*:}"); done
    local u0; u0=$(udp_errs)
    f="$OUT/$label-P$par$IPERF_TAG-run$i.json"
    # fresh one-shot iperf3 server in wb for every run (a broken run cannot poison the next)
    start_bg "$OUT/iperf3-server.log" ip netns exec $NSB iperf3 -s -1 -p $IPERF_PORT; local srv=$LAST_PID
    sleep 0.3
    read -r b0 tot0 si0 < <(sysstat)
    timeout $((DUR + 15)) ip netns exec "$cns" iperf3 -c "$addr" -p "$port" -t "$DUR" -P "$par" $IPERF_EXTRA -J > "$f"
    read -r b1 tot1 si1 < <(sysstat)
    local gbps sgbps retr hcpu rcpu syscores sicores dcpu="" u1
    u1=$(udp_errs)
    for j in $pidspec; do
      local t1; t1=$(ticks_of "${j#*:}")
      dcpu+="${j%%:*}=$(awk -v a=${t0[$j]:-0} -v b=${t1:-0} -v d=$DUR 'BEGIN{printf "%.2f", (b-a)/100/d}') "
    done
    sleep 0.5; kill_pids "$srv"
    # receiver-side goodput (what actually arrived at the receiving iperf3)
    gbps=$(jq -r '.end.sum_received.bits_per_second / 1e9' "$f" 2>/dev/null || echo NaN)
    sgbps=$(jq -r '.end.sum_sent.bits_per_second / 1e9' "$f" 2>/dev/null || echo NaN)
    retr=$(jq -r '.end.sum_sent.retransmits // "NA"' "$f" 2>/dev/null)
    hcpu=$(jq -r '.end.cpu_utilization_percent.host_total // "NA" | if type=="number" then (.*10|round/10) else . end' "$f" 2>/dev/null)
    rcpu=$(jq -r '.end.cpu_utilization_percent.remote_total // "NA" | if type=="number" then (.*10|round/10) else . end' "$f" 2>/dev/null)
    syscores=$(awk -v a=$b0 -v b=$b1 -v c=$tot0 -v d=$tot1 -v n=$ncpu 'BEGIN{printf "%.2f", (b-a)/(d-c)*n}')
    sicores=$(awk -v a=$si0 -v b=$si1 -v c=$tot0 -v d=$tot1 -v n=$ncpu 'BEGIN{printf "%.2f", (b-a)/(d-c)*n}')
    printf '%s\tP%s%s\trun%s\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$par" "$IPERF_TAG" "$i" \
       "$gbps" "$sgbps" "$retr" "$((u1 - u0))" "$syscores" "$sicores" "$bg" "$hcpu" "$rcpu" "${dcpu:-none}" | tee -a "$SUMMARY"
    unset t0
    [ -n "${POST_RUN:-}" ] && $POST_RUN
  done
  return 0
}

# 1 and 4 streams, both directions (up = client in wa sends; down = iperf3 -R)
#   MODES="1-up 1-down 4-up 4-down" (default) picks a subset (e.g. MODES=1-down for profiling)
measure_both() {
  local p
  for p in 1 4; do
    [[ " ${MODES:-1-up 1-down 4-up 4-down} " == *" $p-up "* ]] &&
      IPERF_TAG=-up measure "$1" "$2" "$3" "$4" $p "${5:-}"
    [[ " ${MODES:-1-up 1-down 4-up 4-down} " == *" $p-down "* ]] &&
      IPERF_TAG=-down IPERF_EXTRA=-R measure "$1" "$2" "$3" "$4" $p "${5:-}"
  done
  return 0
}

stop_tun() { [ ${#TUN_PIDS[@]} -gt 0 ] && kill_pids "${TUN_PIDS[@]}"; TUN_PIDS=(); sleep 0.5; }

# ---- tests -----------------------------------------------------------------
t_veth() { log "baseline: plain veth"; measure_both veth $NSA $B_IP $IPERF_PORT; }

t_kernel() {
  log "kernel wireguard"
  if ip -n $NSA link add wga type wireguard 2>"$OUT/kernel-wg.err"; then
    ip -n $NSB link add wgb type wireguard
    wg_conf $NSA wga "$KEYDIR/a.key" "$B_PUB" $A_TUN $B_TUN $B_IP
    wg_conf $NSB wgb "$KEYDIR/b.key" "$A_PUB" $B_TUN $A_TUN $A_IP
    measure_both kernel-wg $NSA $B_TUN $IPERF_PORT
    ip -n $NSA link del wga; ip -n $NSB link del wgb
  else
    log "kernel wireguard NOT available: $(cat "$OUT/kernel-wg.err")"
    printf 'kernel-wg\tSKIPPED\t%s\n' "$(cat "$OUT/kernel-wg.err")" >> "$SUMMARY"
  fi
}

start_wggo() {  # ns ifname
  start_bg "$OUT/wggo-$2.log" ip netns exec "$1" env LOG_LEVEL=error wireguard-go -f "$2"
  TUN_PIDS+=("$LAST_PID"); eval "PID_$2=$LAST_PID"; wait_sock "$2"
}
start_bt() {    # ns ifname threads
  start_bg "$OUT/boringtun-$2.log" ip netns exec "$1" boringtun-cli -f --disable-drop-privileges \
     --threads "$3" --log "$OUT/boringtun-$2.out" "$2"
  TUN_PIDS+=("$LAST_PID"); eval "PID_$2=$LAST_PID"; wait_sock "$2"
}

t_wggo() {
  log "wireguard-go $(wireguard-go --version | head -1)"
  start_wggo $NSA wga; start_wggo $NSB wgb
  wg_conf $NSA wga "$KEYDIR/a.key" "$B_PUB" $A_TUN $B_TUN $B_IP
  wg_conf $NSB wgb "$KEYDIR/b.key" "$A_PUB" $B_TUN $A_TUN $A_IP
  ip netns exec $NSA ping -c2 -W2 $B_TUN >/dev/null || log "WARN tunnel ping failed"
  ip netns exec $NSA ethtool -k wga 2>/dev/null | grep -E '^(tcp-segmentation-offload|generic-segmentation-offload|generic-receive-offload):' > "$OUT/wggo-tun-offloads.txt"
  measure_both wireguard-go $NSA $B_TUN $IPERF_PORT 'wa:$PID_wga wb:$PID_wgb'
  ip netns exec $NSA wg show wga > "$OUT/wggo-wg-show.txt"
  stop_tun
}

t_boringtun() {
  local th
  for th in $BT_THREADS; do
    log "boringtun-cli $(boringtun-cli --version) threads=$th"
    start_bt $NSA wga "$th"; start_bt $NSB wgb "$th"
    wg_conf $NSA wga "$KEYDIR/a.key" "$B_PUB" $A_TUN $B_TUN $B_IP
    wg_conf $NSB wgb "$KEYDIR/b.key" "$A_PUB" $B_TUN $A_TUN $A_IP
    ip netns exec $NSA ping -c2 -W2 $B_TUN >/dev/null || log "WARN tunnel ping failed"
    measure_both "boringtun-t$th" $NSA $B_TUN $IPERF_PORT 'wa:$PID_wga wb:$PID_wgb'
    ip netns exec $NSA wg show wga > "$OUT/boringtun-t$th-wg-show.txt"
    stop_tun
  done
}

# onetun in wa (boringtun + smoltcp, no TUN) -> WireGuard peer in wb -> iperf3 server at 10.100.0.2
# onetun is restarted for EVERY run: once its internal tokio broadcast "event bus" (capacity 1000)
# overflows, the lagging endpoint logs "Failed to read event bus" and stalls forever.
onetun_start() {
  ONETUN_RUN=$((${ONETUN_RUN:-0} + 1))
  start_bg "$OUT/onetun-$ONETUN_RUN.log" ip netns exec $NSA onetun \
     "127.0.0.1:15201:$B_TUN:$IPERF_PORT:TCP" \
     --endpoint-addr "$B_IP:$WG_PORT" --endpoint-bind-addr "$A_IP:0" \
     --endpoint-public-key "$B_PUB" --private-key-file "$KEYDIR/a.key" \
     --source-peer-ip "$A_TUN" --keep-alive 10 --max-transmission-unit $WG_MTU --log warn
  PID_onetun=$LAST_PID; sleep 1.5
}
onetun_stop() {
  kill_pids "$PID_onetun"
  echo "    onetun run $ONETUN_RUN: $(grep -c 'Failed to read event bus' "$OUT/onetun-$ONETUN_RUN.log") 'Failed to read event bus' errors" | tee -a "$SUMMARY"
}
t_onetun() {
  local peer=${ONETUN_PEER:-wggo}
  log "onetun $(onetun --version 2>/dev/null | head -1), peer in wb = $peer"
  if [ "$peer" = wggo ]; then start_wggo $NSB wgb; else start_bt $NSB wgb 4; fi
  wg_conf $NSB wgb "$KEYDIR/b.key" "$A_PUB" $B_TUN $A_TUN     # no endpoint: learned from onetun
  local lbl="onetun(peer=$peer)"
  # upload: iperf3 client in wa -> onetun -> tunnel -> server in wb.  NOTE: onetun reads the local
  # socket into an unbounded queue, so the sender-side number is meaningless; use recv_Gbit/s.
  PRE_RUN=onetun_start POST_RUN=onetun_stop IPERF_TAG=-up \
    measure_both "$lbl" $NSA 127.0.0.1 15201 'onetun:$PID_onetun wb:$PID_wgb'
  # download: iperf3 -R (server in wb sends through the tunnel to onetun -> client in wa)
  PRE_RUN=onetun_start POST_RUN=onetun_stop IPERF_TAG=-down IPERF_EXTRA=-R \
    measure_both "$lbl" $NSA 127.0.0.1 15201 'onetun:$PID_onetun wb:$PID_wgb'
  stop_tun
}

# gefyra: cargo-client (TUN) in wa -> UDP -> stowaway in wb, which ends TCP in smoltcp and dials
# 10.100.0.2:5201 (an address on wb's loopback device, where iperf3 listens) with a kernel socket.
t_gefyra() {
  local bin=${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-gnu/$PROFILE
  if [ -n "${GEFYRA_BIN:-}" ]; then   # prebuilt binaries (A/B runs of saved builds)
    bin=$GEFYRA_BIN
  else
    (cd "$ROOT" && cargo build -q --profile "$PROFILE" -p stowaway -p cargo-client) || { log "build failed"; return 1; }
  fi
  log "gefyra $(git -C "$ROOT" rev-parse --short HEAD) bin=$bin profile=$PROFILE"
  local ak bk apub bpub
  ak=$(cat "$KEYDIR/a.key"); bk=$(cat "$KEYDIR/b.key"); apub=$(cat "$KEYDIR/a.pub"); bpub=$(cat "$KEYDIR/b.pub")
  ip -n $NSB addr add $B_TUN/32 dev lo 2>/dev/null || true
  cat > "$OUT/stowaway.json" <<EOC
{"private_key":"$bk","listen":"$B_IP:$WG_PORT","health_listen":"127.0.0.1:18090","mtu":$WG_MTU,
 "dns_upstream":"127.0.0.1:53","peers":[{"name":"bench","public_key":"$apub","tunnel_ip":"$A_TUN"}]}
EOC
  cat > "$OUT/cargo.json" <<EOC
{"private_key":"$ak","peer_public_key":"$bpub","endpoint":"$B_IP:$WG_PORT","tunnel_ip":"$A_TUN",
 "tun_name":"gtun0","mtu":$WG_MTU,"keepalive_secs":10}
EOC
  start_bg "$OUT/stowaway.log" ip netns exec $NSB env ${STOWAWAY_ENV:-} "$bin/stowaway" --config "$OUT/stowaway.json"
  TUN_PIDS+=("$LAST_PID"); PID_stowaway=$LAST_PID
  start_bg "$OUT/cargo-client.log" ip netns exec $NSA "$bin/cargo-client" --config "$OUT/cargo.json" --status-file "$OUT/cargo-status.json"
  TUN_PIDS+=("$LAST_PID"); PID_cargo=$LAST_PID
  local i; for i in $(seq 50); do ip netns exec $NSA ping -c1 -W1 $B_TUN >/dev/null 2>&1 && break; sleep 0.2; done
  ip netns exec $NSA ping -c2 -W2 $B_TUN >/dev/null || log "WARN tunnel ping failed"
  sleep 1
  { echo "idle (after handshake, before load): $(grep VmRSS /proc/$PID_stowaway/status)"; } > "$OUT/stowaway-mem.txt"
  measure_both "${GEFYRA_LABEL:-gefyra}" $NSA $B_TUN $IPERF_PORT 'cargo:$PID_cargo stowaway:$PID_stowaway'
  {
    echo "after load: $(grep VmRSS /proc/$PID_stowaway/status)"
    echo "peak under load: $(grep VmHWM /proc/$PID_stowaway/status)"
  } >> "$OUT/stowaway-mem.txt"
  cp "$OUT/cargo-status.json" "$OUT/cargo-status-final.json" 2>/dev/null || true
  stop_tun
  ip -n $NSB addr del $B_TUN/32 dev lo 2>/dev/null || true
}

# plain userspace TCP relay in wa: 127.0.0.1:15202 -> 10.99.0.2:5201 over plain veth
t_socat() {
  log "socat relay $(socat -V | grep 'socat version')"
  start_bg "$OUT/socat.log" ip netns exec $NSA socat TCP-LISTEN:15202,bind=127.0.0.1,fork,reuseaddr "TCP:$B_IP:$IPERF_PORT"
  TUN_PIDS+=("$LAST_PID"); local spid=$LAST_PID
  sleep 0.5
  measure_both socat-relay $NSA 127.0.0.1 15202 "socat:$spid"
  stop_tun
}

# ---- main --------------------------------------------------------------------
[ "${BENCH_LIB:-0}" = 1 ] && return 0   # "source" mode for interactive experiments
# The VM may be shared with other CPU-heavy jobs (compilers etc.).  Give every process of this
# benchmark (all children inherit it) a high CPU priority so results reflect the tunnels, not the
# neighbours.  Kernel softirq threads (ksoftirqd) are NOT covered by this.  NICE= (empty) disables.
NICE=${NICE--20}
[ -n "$NICE" ] && renice -n "$NICE" -p $$ >/dev/null
TESTS=${*:-"veth gefyra boringtun wggo socat"}
BENCH_COMMIT=${BENCH_COMMIT:-$(git -C "$ROOT" rev-parse HEAD 2>/dev/null)}; export BENCH_COMMIT
: > "$SUMMARY"
{
  echo "# $(date -Is) host: $(uname -r), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2))"
  echo "# RUNS=$RUNS DUR=$DUR WG_MTU=$WG_MTU veth MTU=1500 nice=${NICE:-0}"
  echo "# versions: $(iperf3 --version | head -1); wireguard-go $(wireguard-go --version | head -1 | awk '{print $2}'); $(boringtun-cli --version 2>/dev/null); $(onetun --version 2>/dev/null); $(socat -V | grep 'socat version' | awk '{print $1,$3}')"
  echo "# top CPU consumers at start (other jobs on this VM):"; ps -eo pcpu,etime,comm --sort=-pcpu | head -5 | sed 's/^/#   /' 
  echo -e "# label\tmode\trun\trecv_Gbit/s\tsent_Gbit/s\ttcp_retrans\tudp_rcvbuf_errs\tsys_busy_cores\tsoftirq_cores\tbg_busy_cores_before\tiperf_client_cpu%\tiperf_server_cpu%\tdaemon_cores(per process)"
} >> "$SUMMARY"
setup_ns
gen_keys
for t in $TESTS; do "t_$t"; done
log "done; results in $SUMMARY"
python3 "$HERE/report.py" "$SUMMARY" "${REPORT_MD:-$HERE/REPORT.md}" "${RESULTS_JSON:-$HERE/results.json}" "$TESTS" "$OUT"
