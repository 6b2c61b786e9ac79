#!/usr/bin/env bash
# peers-bench.sh -- stowaway's memory and CPU with ten peers (issue 7: "stowaway resident memory:
# < 20 MiB idle, < 64 MiB with 10 busy peers; no growth over a 10-minute soak").
#
# ONE stowaway in namespace pkb-cl and TEN cargo-clients, each in its own namespace pkb-p0..pkb-p9
# with its own key and tunnel address. Nothing leaves the machine: every namespace is created (and
# deleted on exit) by this script, none has a default route, and the only address the peers route
# into their tunnel is the service net 10.78.200.0/24, which exists only on pkb-cl's loopback.
#
#   pkb-pN: v0 10.78.N.2/24 --veth-- cN 10.78.N.1/24 :pkb-cl   (stowaway listens on 0.0.0.0:51820)
#           gtun0 192.168.99.(11+N)/24 (cargo-client --no-routes; we add 10.78.200.0/24 dev gtun0)
#   pkb-cl: lo 10.78.200.1/32 -- iperf3 servers :5301..5310, python TCP/UDP/DNS server :7000/:7001/:53
#           stowaway health/status on 127.0.0.1:18091, dns_upstream 10.78.200.1:53
#
# Phases (stowaway VmRSS, VmHWM (peak, reset per phase via clear_refs), PSS and CPU seconds each):
#   bare      stowaway up, no peer connected yet
#   idle      all peers handshaken, no traffic (+IDLE_SECS)
#   busy      BUSY_SECS: every peer runs one iperf3 TCP stream (even peers upload, odd peers
#             download with -R) plus SHORT_RATE short TCP connections/s; sampled every second
#   after     right after the busy load, then once stowaway's flows have drained
#   soak      SOAK_SECS (0 = skip): rolling iperf3 TCP runs (3 s, SOAK_TCP_RATE, alternating
#             direction), iperf3 UDP runs (2 s at SOAK_UDP_RATE), pings, short TCP connections,
#             DNS queries via stowaway's 192.168.99.1:53 (a fresh source port each) and UDP echo;
#             sampled every SAMPLE_SECS into peers-soak.tsv; then drained again
#
# Usage:  benches/peers-bench.sh
# Env:    GEFYRA_BIN=dir (prebuilt stowaway + cargo-client: no build), PROFILE=ci,
#         BENCH_COMMIT=sha (the commit GEFYRA_BIN was built from, for the header)
#         NPEERS=10 IDLE_SECS=10 BUSY_SECS=30 SOAK_SECS=600 WARMUP_SECS=60 SAMPLE_SECS=10
#         SHORT_RATE=4 DNS_RATE=2 ECHO_RATE=2 (per peer per second) SOAK_TCP_RATE=50M SOAK_UDP_RATE=2M
#         TOL_PCT=10 TOL_MIB=4 (soak "no growth": |end - warm| <= max(TOL_PCT % of warm, TOL_MIB))
#         STOWAWAY_ENV="GEFYRA_TCP_BUFFER=131072" (env of stowaway), TAG=-x (suffix of result files)
#         OUT=benches/results NICE=-20 (empty: no renice) DRAIN_SECS=90
#         MALLOC_PROBE=1 (diagnostic: gdb prints glibc malloc_stats() at busy-end, soak-end and the
#         end, then malloc_trim(0) at the end; output in -stowaway.log, phase "...-trimmed")
# Writes: $OUT/peers$TAG-phases.tsv, -busy.tsv, -soak.tsv, -summary.md, -load.tsv, -stowaway.log,
#         -status-*.json; per-peer logs under a temporary directory (removed; kept with KEEP_TMP=1).
# Needs:  root, iproute2, wireguard-tools (wg genkey), iperf3, ping, curl, jq, python3.
# Every process this script starts is tracked by PID and killed by PID (with its descendants).
set -u
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(dirname "$HERE")
OUT=${OUT:-$HERE/results}
PROFILE=${PROFILE:-ci}
TAG=${TAG:-}
NPEERS=${NPEERS:-10}
IDLE_SECS=${IDLE_SECS:-10}
BUSY_SECS=${BUSY_SECS:-30}
SOAK_SECS=${SOAK_SECS:-600}
WARMUP_SECS=${WARMUP_SECS:-60}
SAMPLE_SECS=${SAMPLE_SECS:-10}
SHORT_RATE=${SHORT_RATE:-4}
DNS_RATE=${DNS_RATE:-2}
ECHO_RATE=${ECHO_RATE:-2}
SOAK_TCP_RATE=${SOAK_TCP_RATE:-50M}
SOAK_UDP_RATE=${SOAK_UDP_RATE:-2M}
TOL_PCT=${TOL_PCT:-10}
TOL_MIB=${TOL_MIB:-4}
DRAIN_SECS=${DRAIN_SECS:-90}        # longest wait for flows to close (UDP flows idle out after 60 s)
CL=pkb-cl
PNS=pkb-p                           # peer namespaces: pkb-p0 ..
SVC=10.78.200.1                     # service address (pkb-cl's lo only)
DNS_TUN=192.168.99.1                # stowaway's tunnel address (DNS)
HEALTH=127.0.0.1:18091
WG_PORT=51820
MTU=1420
IPERF_BASE=5301
[ "$NPEERS" -ge 1 ] && [ "$NPEERS" -le 50 ] || { echo "NPEERS must be 1..50"; exit 2; }
mkdir -p "$OUT"
P="$OUT/peers$TAG"                  # result file prefix
TMP=$(mktemp -d /tmp/peers-bench.XXXXXX)
HZ=$(getconf CLK_TCK)

ALL_PIDS=()
log() { echo "[$(date +%T)] $*" | tee -a "$P-bench.log" >&2; }
die() { log "FATAL: $*"; exit 1; }

descendants() { local c; for c in $(pgrep -P "$1" 2>/dev/null); do descendants "$c"; echo "$c"; done; }
kill_pids() {       # kill the given PIDs of our own jobs and all their descendants -- by PID only
  local p live=() mine=" $(jobs -p | tr '\n' ' ') " all=()
  for p in "$@"; do [[ $mine == *" $p "* ]] && live+=("$p"); done
  [ ${#live[@]} -eq 0 ] && return 0
  for p in "${live[@]}"; do all+=($(descendants "$p") "$p"); done
  for p in "${all[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  for p in "${all[@]}"; do kill -9 "$p" 2>/dev/null; done
  for p in "${live[@]}"; do wait "$p" 2>/dev/null; done
  return 0
}
del_ns() { local i; ip netns del $CL 2>/dev/null; for i in $(seq 0 $((NPEERS - 1))); do ip netns del $PNS$i 2>/dev/null; done; }
cleanup() {
  log "cleanup: killing ${#ALL_PIDS[@]} started PIDs, deleting namespaces"
  [ ${#ALL_PIDS[@]} -gt 0 ] && kill_pids "${ALL_PIDS[@]}"
  ALL_PIDS=()
  del_ns
  if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start CMD... in background (ip netns exec / env exec: PID == the program's PID)
start_bg() { local logf=$1; shift; "$@" >"$logf" 2>&1 & local p=$!; ALL_PIDS+=("$p"); LAST_PID=$p; }
start_bg_append() { local logf=$1; shift; "$@" >>"$logf" 2>&1 & local p=$!; ALL_PIDS+=("$p"); LAST_PID=$p; }

# ---- helpers run inside the namespaces --------------------------------------------------------
cat > "$TMP/pkb.py" <<'PY'
"""Servers (in pkb-cl) and bounded load generator (in a peer namespace) for peers-bench.sh."""
import asyncio, json, random, socket, struct, sys, time

def dns_answer(q):
    if len(q) < 17:
        return None
    i = 12
    while i < len(q) and q[i] != 0:
        i += q[i] + 1
    i += 5
    hdr = q[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00"
    return hdr + q[12:i] + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([10, 78, 200, 77])

class Echo(asyncio.DatagramProtocol):
    def __init__(self, dns=False): self.dns = dns
    def connection_made(self, t): self.t = t
    def datagram_received(self, d, a):
        r = dns_answer(d) if self.dns else d
        if r: self.t.sendto(r, a)

async def serve(ip, tcp_port, udp_port, dns_port):
    async def handle(r, w):
        try:
            line = await asyncio.wait_for(r.readline(), 10)
            n = max(0, min(int(line.strip() or b"0"), 1 << 20))
            w.write(b"x" * n)
            await asyncio.wait_for(w.drain(), 10)
        except Exception:
            pass
        finally:
            w.close()
    srv = await asyncio.start_server(handle, ip, tcp_port, backlog=1024)
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Echo(), local_addr=(ip, udp_port))
    await loop.create_datagram_endpoint(lambda: Echo(dns=True), local_addr=(ip, dns_port))
    print("serving", flush=True)
    async with srv:
        await srv.serve_forever()

def pct(xs, p):
    if not xs: return None
    xs = sorted(xs); return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2)

async def load(svc, tcp_port, echo_port, dns_ip, secs, tcp_rate, dns_rate, echo_rate, out):
    end = time.monotonic() + secs
    st = {k: {"ok": 0, "err": 0, "skipped": 0, "lat": [], "errors": {}} for k in ("tcp", "dns", "echo")}
    loop = asyncio.get_running_loop()
    echo_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # one socket: one UDP flow
    echo_sock.setblocking(False)
    echo_sock.connect((svc, echo_port))
    echo_lock = asyncio.Lock()

    def fail(k, e):
        st[k]["err"] += 1
        n = type(e).__name__
        st[k]["errors"][n] = st[k]["errors"].get(n, 0) + 1

    async def tcp_once():
        t = time.monotonic()
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(svc, tcp_port), 5)
            n = random.choice((512, 4096, 32768))
            w.write(b"%d\n" % n)
            got = 0
            while True:
                d = await asyncio.wait_for(r.read(65536), 5)
                if not d: break
                got += len(d)
            w.close()
            if got != n: raise EOFError(f"short {got}/{n}")
            st["tcp"]["ok"] += 1; st["tcp"]["lat"].append(time.monotonic() - t)
        except Exception as e:
            fail("tcp", e)

    async def dns_once(qid):
        t = time.monotonic()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # fresh source port, like a stub resolver
        s.setblocking(False)
        try:
            q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x04svc1\x04pkb\x05local\x00\x00\x01\x00\x01"
            await loop.sock_sendto(s, q, (dns_ip, 53))
            d = await asyncio.wait_for(loop.sock_recv(s, 2048), 2)
            if d[:2] != q[:2] or not d[-4:] == bytes([10, 78, 200, 77]): raise ValueError("bad answer")
            st["dns"]["ok"] += 1; st["dns"]["lat"].append(time.monotonic() - t)
        except Exception as e:
            fail("dns", e)
        finally:
            s.close()

    async def echo_once(seq):
        t = time.monotonic()
        async with echo_lock:
            try:
                m = b"pkb-%d" % seq
                await loop.sock_sendall(echo_sock, m)
                while True:
                    d = await asyncio.wait_for(loop.sock_recv(echo_sock, 2048), 2)
                    if d == m: break
                st["echo"]["ok"] += 1; st["echo"]["lat"].append(time.monotonic() - t)
            except Exception as e:
                fail("echo", e)

    tasks = set()
    async def driver(kind, rate, mk):
        if rate <= 0: return
        n = 0; t0 = time.monotonic()
        while time.monotonic() < end and n < rate * secs + 1:
            live = sum(1 for x in tasks if getattr(x, "kind", "") == kind)
            if live >= 32:
                st[kind]["skipped"] += 1
            else:
                tk = asyncio.ensure_future(mk(n)); tk.kind = kind
                tasks.add(tk); tk.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
    await asyncio.gather(driver("tcp", tcp_rate, lambda n: tcp_once()),
                         driver("dns", dns_rate, lambda n: dns_once(n & 0xffff)),
                         driver("echo", echo_rate, echo_once))
    if tasks:
        await asyncio.wait(set(tasks), timeout=15)
    for k in st:
        lat = st[k].pop("lat")
        st[k]["p50_ms"] = pct(lat, 0.5); st[k]["p99_ms"] = pct(lat, 0.99); st[k]["max_ms"] = pct(lat, 1.0)
    with open(out, "w") as f:
        json.dump(st, f)

if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
    else:  # load svc tcp_port echo_port dns_ip secs tcp_rate dns_rate echo_rate out
        a = sys.argv[2:]
        asyncio.run(load(a[0], int(a[1]), int(a[2]), a[3], float(a[4]), float(a[5]), float(a[6]),
                         float(a[7]), a[8]))
PY

# ---- measurement ------------------------------------------------------------------------------
# "rss_kib hwm_kib pss_kib anon_kib threads cpu_s" of stowaway
mem() {
  local p=$PID_st s
  [ -r /proc/$p/status ] || { echo "NA NA NA NA NA NA"; return; }
  s=$(awk '/^VmRSS:/{r=$2} /^VmHWM:/{h=$2} /^RssAnon:/{a=$2} /^Threads:/{t=$2} END{print r, h, a, t}' /proc/$p/status)
  local pss; pss=$(awk '/^Pss:/{print $2; exit}' /proc/$p/smaps_rollup 2>/dev/null)
  local cpu; cpu=$(awk -v hz="$HZ" '{printf "%.2f", ($14+$15)/hz}' /proc/$p/stat)
  set -- $s
  echo "$1 $2 ${pss:-NA} $3 $4 $cpu"
}
# MALLOC_PROBE=1: attach gdb, print glibc's malloc_stats() (arena "system" vs "in use" bytes) into
# stowaway's log; with "trim" also call malloc_trim(0) and record the phase "<label>-trimmed".
# Pauses stowaway for about a second: diagnostic runs only (off by default).
malloc_probe() {
  [ "${MALLOC_PROBE:-0}" = 1 ] || return 0
  command -v gdb >/dev/null || { log "MALLOC_PROBE: no gdb"; return 0; }
  local ex=(-ex 'call (void) malloc_stats()')
  [ "${2:-}" = trim ] && ex+=(-ex 'call (int) malloc_trim(0)')
  echo "=== malloc_stats $1 (rss hwm pss anon threads cpu_s = $(mem); flows $(flows))" >> "$P-stowaway.log"
  timeout 60 gdb -p "$PID_st" -batch -nx "${ex[@]}" >> "$P-gdb.log" 2>&1 || log "WARN gdb failed (see $P-gdb.log)"
  echo "=== end malloc_stats $1" >> "$P-stowaway.log"
  sleep 1
  [ "${2:-}" = trim ] && phase "$1-trimmed"
  return 0
}
reset_hwm() { echo 5 > /proc/$PID_st/clear_refs 2>/dev/null || log "WARN cannot reset VmHWM"; }
status_json() { ip netns exec $CL curl -s -m 3 "http://$HEALTH/status"; }
# "tcp_open udp_open tcp_total udp_total dns icmp dropped bad rx_MiB tx_MiB peers_handshaken"
flows() {
  status_json | jq -r '[.counters.tcp_flows_open, .counters.udp_flows_open, .counters.tcp_flows_total,
      .counters.udp_flows_total, .counters.dns_queries, .counters.icmp_echo, .counters.dropped_packets,
      .counters.bad_packets, (([.peers[].rx_bytes]|add)/1048576|floor), (([.peers[].tx_bytes]|add)/1048576|floor),
      ([.peers[]|select(.last_handshake_secs != null)]|length)] | map(tostring) | join(" ")' 2>/dev/null ||
    echo "NA NA NA NA NA NA NA NA NA NA NA"
}
bgload() { cut -d' ' -f1-3 /proc/loadavg; }
PH_HDR="phase\ttime\trss_kib\thwm_kib\tpss_kib\tanon_kib\tthreads\tcpu_s\ttcp_open\tudp_open\ttcp_total\tudp_total\tdns\ticmp\tdropped\tbad\trx_MiB\ttx_MiB\thandshaken\tloadavg"
phase() {  # record one row of peers-phases.tsv
  local m f; m=$(mem); f=$(flows)
  echo -e "$1\t$(date +%T)\t${m// /\\t}\t${f// /\\t}\t$(bgload | tr ' ' '/')" >> "$P-phases.tsv"
  log "phase $1: rss hwm pss anon threads cpu_s = $m | flows $f"
}
wait_drained() {   # until tcp_open == 0 and udp_open == 0, at most $1 s; echoes the seconds waited
  local t0=$SECONDS f
  while [ $((SECONDS - t0)) -lt "$1" ]; do
    f=($(flows)); [ "${f[0]}" = 0 ] && [ "${f[1]}" = 0 ] && break; sleep 1
  done
  echo $((SECONDS - t0))
}

# ---- setup ------------------------------------------------------------------------------------
setup_ns() {
  local i
  del_ns
  ip netns add $CL || die "netns add $CL"
  ip -n $CL link set lo up
  ip -n $CL addr add $SVC/32 dev lo
  for i in $(seq 0 $((NPEERS - 1))); do
    ip netns add $PNS$i || die "netns add $PNS$i"
    ip -n $PNS$i link set lo up
    ip link add v0 netns $PNS$i type veth peer name c$i netns $CL || die "veth $i"
    ip -n $PNS$i addr add 10.78.$i.2/24 dev v0; ip -n $PNS$i link set v0 up
    ip -n $CL addr add 10.78.$i.1/24 dev c$i; ip -n $CL link set c$i up
  done
  for i in $CL $(seq -f "$PNS%g" 0 $((NPEERS - 1))); do   # safety: no default route anywhere
    [ -z "$(ip -n "$i" route show default)" ] || die "default route in $i"
  done
  # the service address is NOT reachable from a peer namespace without the tunnel
  ip netns exec ${PNS}0 ping -c1 -W1 $SVC >/dev/null 2>&1 && die "service reachable without the tunnel"
  ip netns exec ${PNS}0 ping -c1 -W1 10.78.0.1 >/dev/null 2>&1 || die "veth ping failed"
}

build() {
  if [ -n "${GEFYRA_BIN:-}" ]; then BIN=$GEFYRA_BIN; else
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-gnu/$PROFILE
    (cd "$ROOT" && cargo build -q --profile "$PROFILE" -p stowaway -p cargo-client) || die "build failed"
  fi
  [ -x "$BIN/stowaway" ] && [ -x "$BIN/cargo-client" ] || die "no binaries in $BIN"
}

configs() {
  local i umask_old; umask_old=$(umask); umask 077
  wg genkey > "$TMP/st.key"; ST_PUB=$(wg pubkey < "$TMP/st.key")
  local peers=""
  for i in $(seq 0 $((NPEERS - 1))); do
    wg genkey > "$TMP/p$i.key"; wg pubkey < "$TMP/p$i.key" > "$TMP/p$i.pub"
    peers+="${peers:+,}{\"name\":\"peer$i\",\"public_key\":\"$(cat "$TMP/p$i.pub")\",\"tunnel_ip\":\"192.168.99.$((11 + i))\"}"
    cat > "$TMP/cargo$i.json" <<EOC
{"private_key":"$(cat "$TMP/p$i.key")","peer_public_key":"$ST_PUB","endpoint":"10.78.$i.1:$WG_PORT",
 "tunnel_ip":"192.168.99.$((11 + i))","tun_name":"gtun0","mtu":$MTU,"keepalive_secs":10}
EOC
  done
  cat > "$TMP/stowaway.json" <<EOC
{"private_key":"$(cat "$TMP/st.key")","listen":"0.0.0.0:$WG_PORT","health_listen":"$HEALTH","mtu":$MTU,
 "dns_upstream":"$SVC:53","pod_ip":"$SVC","peers":[$peers]}
EOC
  umask "$umask_old"
}

start_servers() {
  local i
  start_bg "$TMP/pyserv.log" ip netns exec $CL python3 "$TMP/pkb.py" serve $SVC 7000 7001 53
  for i in $(seq 0 $((NPEERS - 1))); do
    start_bg "$TMP/iperf3-s$i.log" ip netns exec $CL iperf3 -s -B $SVC -p $((IPERF_BASE + i)) --idle-timeout 60
  done
  for i in $(seq 50); do grep -q serving "$TMP/pyserv.log" 2>/dev/null && return 0; sleep 0.1; done
  die "python server did not start: $(cat "$TMP/pyserv.log")"
}

start_stowaway() {
  : > "$P-stowaway.log"
  start_bg_append "$P-stowaway.log" ip netns exec $CL env NO_COLOR=1 GEFYRA_LOG=${STOWAWAY_LOG:-info} ${STOWAWAY_ENV:-} \
    "$BIN/stowaway" --config "$TMP/stowaway.json"
  PID_st=$LAST_PID
  local i
  for i in $(seq 50); do
    [ "$(ip netns exec $CL curl -s -m 1 "http://$HEALTH/healthz" 2>/dev/null)" = ok ] && return 0; sleep 0.2
  done
  die "stowaway not healthy: $(tail -5 "$P-stowaway.log")"
}

start_peers() {
  local i j
  PID_cargo=()
  for i in $(seq 0 $((NPEERS - 1))); do
    start_bg "$TMP/cargo$i.log" ip netns exec $PNS$i env GEFYRA_LOG=info "$BIN/cargo-client" \
      --config "$TMP/cargo$i.json" --status-file "$TMP/cargo$i-status.json" --no-routes
    PID_cargo+=("$LAST_PID")
  done
  for i in $(seq 0 $((NPEERS - 1))); do   # only the service net goes into the tunnel
    for j in $(seq 50); do ip -n $PNS$i link show gtun0 >/dev/null 2>&1 && break; sleep 0.1; done
    ip -n $PNS$i route add 10.78.200.0/24 dev gtun0 || die "route in $PNS$i"
  done
  local t0=$SECONDS ok
  while [ $((SECONDS - t0)) -lt 30 ]; do
    ok=0
    for i in $(seq 0 $((NPEERS - 1))); do
      "$BIN/cargo-client" status --status-file "$TMP/cargo$i-status.json" >/dev/null 2>&1 && ok=$((ok + 1))
    done
    [ $ok -eq "$NPEERS" ] && break
    # a packet starts the handshake (cargo-client also initiates on its own)
    for i in $(seq 0 $((NPEERS - 1))); do ip netns exec $PNS$i ping -c1 -W1 $SVC >/dev/null 2>&1 & done; wait_plain
    sleep 0.5
  done
  log "handshaken peers: $ok/$NPEERS after $((SECONDS - t0)) s"
  [ $ok -eq "$NPEERS" ] || die "only $ok of $NPEERS peers handshaken"
}
# waits for un-tracked short-lived jobs (pings above): each has -W1 -c1, so this is bounded
wait_plain() { local p; for p in $(jobs -p); do [[ " ${ALL_PIDS[*]} " == *" $p "* ]] || wait "$p" 2>/dev/null; done; }

# ---- load -------------------------------------------------------------------------------------
# loadgen I SECS TCP_RATE DNS_RATE ECHO_RATE OUTFILE  (background; PID in LAST_PID)
loadgen() {
  start_bg "$TMP/loadgen-$1-$(basename "$6").log" ip netns exec $PNS$1 timeout $(($2 + 30)) python3 "$TMP/pkb.py" \
    load $SVC 7000 7001 $DNS_TUN "$2" "$3" "$4" "$5" "$6"
}

busy() {
  local i pids=() dir
  log "busy: $NPEERS peers x (1 iperf3 TCP stream + $SHORT_RATE short TCP conn/s) for $BUSY_SECS s"
  reset_hwm
  local cpu0; cpu0=$(mem | cut -d' ' -f6)
  for i in $(seq 0 $((NPEERS - 1))); do
    dir=""; [ $((i % 2)) -eq 1 ] && dir=-R
    start_bg "$TMP/busy-iperf$i.json" ip netns exec $PNS$i timeout $((BUSY_SECS + 20)) \
      iperf3 -c $SVC -p $((IPERF_BASE + i)) -t "$BUSY_SECS" $dir -J --connect-timeout 5000
    pids+=("$LAST_PID")
    loadgen "$i" "$BUSY_SECS" "$SHORT_RATE" 0 0 "$TMP/busy-load$i.json"; pids+=("$LAST_PID")
  done
  echo -e "t\t$(echo "rss_kib hwm_kib pss_kib anon_kib threads cpu_s tcp_open udp_open tcp_total udp_total dns icmp dropped bad rx_MiB tx_MiB handshaken" | tr ' ' '\t')" > "$P-busy.tsv"
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt $((BUSY_SECS + 20)) ]; do
    echo -e "$((SECONDS - t0))\t$(mem | tr ' ' '\t')\t$(flows | tr ' ' '\t')" >> "$P-busy.tsv"
    local alive=0 p; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 1
  done
  phase busy-end
  malloc_probe busy-end
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  local cpu1; cpu1=$(mem | cut -d' ' -f6)
  BUSY_CPU=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.2f", b-a}')
  # per-peer results
  {
    echo -e "peer\tdir\trecv_Mbit/s\tretrans\terror\tshort_ok\tshort_err\tshort_p50_ms\tshort_p99_ms"
    for i in $(seq 0 $((NPEERS - 1))); do
      dir=up; [ $((i % 2)) -eq 1 ] && dir=down
      local f="$TMP/busy-iperf$i.json" g="$TMP/busy-load$i.json"
      echo -e "$i\t$dir\t$(jq -r '(.end.sum_received.bits_per_second // 0)/1e6|floor' "$f" 2>/dev/null || echo NA)\t$(jq -r '.end.sum_sent.retransmits // "NA"' "$f" 2>/dev/null || echo NA)\t$(jq -r '.error // "-"' "$f" 2>/dev/null || echo unreadable)\t$(jq -r '[.tcp.ok, .tcp.err, .tcp.p50_ms, .tcp.p99_ms]|map(tostring)|join("\t")' "$g" 2>/dev/null || echo -e "NA\tNA\tNA\tNA")"
    done
  } > "$P-busy-peers.tsv"
  log "busy done: stowaway CPU ${BUSY_CPU} s; per peer:"; column -t "$P-busy-peers.tsv" >&2
}

# one peer's rolling soak loop, bounded by END (epoch s) and a cycle count
soak_peer() {
  local i=$1 n=0 dir port=$((IPERF_BASE + $1)) f
  trap - EXIT INT TERM   # (subshell: the parent cleans up)
  while [ "$(date +%s)" -lt "$SOAK_END" ] && [ $n -lt $((SOAK_SECS / 2 + 1)) ]; do
    n=$((n + 1))
    dir=""; [ $(((n + i) % 2)) -eq 1 ] && dir=-R
    f="$TMP/soak-tcp$i.json"
    timeout 20 ip netns exec $PNS$i iperf3 -c $SVC -p $port -t 3 -b "$SOAK_TCP_RATE" $dir -J --connect-timeout 5000 > "$f" 2>&1
    echo -e "$(date +%s)\t$i\ttcp${dir}\t$(jq -r '[((.end.sum_received.bits_per_second // 0)/1e6|floor), (.error // "-")]|map(tostring)|join("\t")' "$f" 2>/dev/null || echo -e "NA\tunreadable")" >> "$TMP/soak-runs$i.tsv"
    [ "$(date +%s)" -lt "$SOAK_END" ] || break
    f="$TMP/soak-udp$i.json"
    timeout 20 ip netns exec $PNS$i iperf3 -c $SVC -p $port -u -t 2 -b "$SOAK_UDP_RATE" -l 1200 -J --connect-timeout 5000 > "$f" 2>&1
    echo -e "$(date +%s)\t$i\tudp\t$(jq -r '[((.end.sum.bits_per_second // 0)/1e6|floor), (.error // "-"), ((.end.sum.lost_percent // -1)*10|round/10)]|map(tostring)|join("\t")' "$f" 2>/dev/null || echo -e "NA\tunreadable")" >> "$TMP/soak-runs$i.tsv"
    timeout 5 ip netns exec $PNS$i ping -q -c 3 -i 0.2 -W 1 $SVC > "$TMP/soak-ping$i.txt" 2>&1 || echo -e "$(date +%s)\t$i\tping\t-\tfailed" >> "$TMP/soak-runs$i.tsv"
    sleep "1.$((RANDOM % 10))"
  done
}

soak() {
  local i pids=()
  log "soak: $SOAK_SECS s, sample every $SAMPLE_SECS s, warm-up $WARMUP_SECS s"
  reset_hwm
  SOAK_END=$(( $(date +%s) + SOAK_SECS ))
  local cpu0; cpu0=$(mem | cut -d' ' -f6)
  for i in $(seq 0 $((NPEERS - 1))); do
    : > "$TMP/soak-runs$i.tsv"
    soak_peer "$i" > "$TMP/soak-peer$i.log" 2>&1 &
    ALL_PIDS+=("$!"); pids+=("$!")
    loadgen "$i" "$SOAK_SECS" "$SHORT_RATE" "$DNS_RATE" "$ECHO_RATE" "$TMP/soak-load$i.json"; pids+=("$LAST_PID")
  done
  echo -e "t\telapsed_s\t$(echo "rss_kib hwm_kib pss_kib anon_kib threads cpu_s tcp_open udp_open tcp_total udp_total dns icmp dropped bad rx_MiB tx_MiB handshaken" | tr ' ' '\t')\tloadavg" > "$P-soak.tsv"
  local t0=$SECONDS next=0
  while [ $((SECONDS - t0)) -le $((SOAK_SECS + 40)) ]; do
    if [ $((SECONDS - t0)) -ge $next ]; then
      echo -e "$(date +%T)\t$((SECONDS - t0))\t$(mem | tr ' ' '\t')\t$(flows | tr ' ' '\t')\t$(bgload | tr ' ' '/')" >> "$P-soak.tsv"
      next=$((next + SAMPLE_SECS))
    fi
    local alive=0 p; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 1
  done
  kill_pids "${pids[@]}"    # normally all have ended by themselves
  phase soak-end
  malloc_probe soak-end
  SOAK_CPU=$(awk -v a="$cpu0" -v b="$(mem | cut -d' ' -f6)" 'BEGIN{printf "%.2f", b-a}')
  cat "$TMP"/soak-runs*.tsv > "$P-soak-runs.tsv" 2>/dev/null
  {
    echo -e "peer\tshort_ok\tshort_err\tshort_p99_ms\tdns_ok\tdns_err\tdns_p99_ms\techo_ok\techo_err\terrors"
    for i in $(seq 0 $((NPEERS - 1))); do
      echo -e "$i\t$(jq -r '[.tcp.ok, .tcp.err, .tcp.p99_ms, .dns.ok, .dns.err, .dns.p99_ms, .echo.ok, .echo.err, ([.[] | .errors | to_entries[] | "\(.key)=\(.value)"] | join(","))]|map(tostring)|join("\t")' "$TMP/soak-load$i.json" 2>/dev/null || echo unreadable)"
    done
  } > "$P-soak-peers.tsv"
  log "soak done: stowaway CPU ${SOAK_CPU} s"
}

# ---- summary (also alone: SUMMARY_ONLY=1 with the same TAG/OUT/SOAK_SECS/WARMUP_SECS) ----------
summarize() {
python3 - "$P" "$WARMUP_SECS" "$TOL_PCT" "$TOL_MIB" "$SOAK_SECS" <<'PY' | tee "$P-summary.md"
import sys, os
pre, warm, tolp, tolm, soak = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
def table(path):
    rows = [l.rstrip("\n").split("\t") for l in open(path) if not l.startswith("#")]
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
mib = lambda k: "NA" if k in (None, "NA", "") else f"{int(k)/1024:.1f}"
_, ph = table(pre + "-phases.tsv")
print("| phase | VmRSS MiB | VmHWM MiB (peak since last reset) | PSS MiB | RssAnon MiB | threads | CPU s (cumulative) | tcp open | udp open | tcp total | udp total |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in ph:
    print(f"| {r['phase']} | {mib(r['rss_kib'])} | {mib(r['hwm_kib'])} | {mib(r['pss_kib'])} | {mib(r['anon_kib'])} | {r['threads']} | {r['cpu_s']} | {r['tcp_open']} | {r['udp_open']} | {r['tcp_total']} | {r['udp_total']} |")
_, busy = table(pre + "-busy.tsv")
rss = [int(r["rss_kib"]) for r in busy if r["rss_kib"] != "NA"]
if rss:
    print(f"\nbusy samples (1 s): {len(rss)}, VmRSS max {max(rss)/1024:.1f} MiB, mean {sum(rss)/len(rss)/1024:.1f} MiB; "
          f"max tcp_open {max(int(r['tcp_open']) for r in busy if r['tcp_open'] != 'NA')}")
if soak > 0 and os.path.exists(pre + "-soak.tsv"):
    _, s = table(pre + "-soak.tsv")
    s = [r for r in s if r["rss_kib"] != "NA"]
    def series(k):
        return [(int(r["elapsed_s"]), int(r[k])) for r in s if r[k] not in ("NA", "")]
    for k in ("rss_kib", "pss_kib"):
        xs = series(k)
        if not xs: continue
        load = [x for x in xs if x[0] <= soak]
        vals = [v for _, v in load]
        med = lambda v: sorted(v)[len(v) // 2] if v else None
        # "warm": median of the minute after the warm-up; "end": median of the last minute under load
        w = med([v for t, v in load if warm <= t < warm + 60])
        end = med([v for t, v in load if t > load[-1][0] - 60])
        post = [(t, v) for t, v in load if t >= warm]
        slope = 0.0
        if len(post) >= 2:
            mt = sum(t for t, _ in post) / len(post); mv = sum(v for _, v in post) / len(post)
            den = sum((t - mt) ** 2 for t, _ in post)
            slope = sum((t - mt) * (v - mv) for t, v in post) / den * 60 / 1024 if den else 0.0
        tol = max(w * tolp / 100, tolm * 1024) if w else None
        ok = w is not None and end - w <= tol
        blocks = "▁▂▃▄▅▆▇█"; lo, hi = min(vals), max(vals)
        spark = "".join(blocks[min(7, int((v - lo) / (hi - lo + 1e-9) * 8))] for v in vals)
        print(f"\nsoak {k[:-4].upper()}: first {vals[0]/1024:.1f}, min {lo/1024:.1f}, max {hi/1024:.1f}, last under load {load[-1][1]/1024:.1f} MiB; "
              f"median of minute {warm}..{warm + 60} s {w/1024 if w else float('nan'):.1f}, of the last minute {end/1024:.1f} MiB: "
              f"growth {(end - (w or 0))/1024:+.1f} MiB (tolerance max({tolp:g} %, {tolm:g} MiB) = {tol/1024 if tol else float('nan'):.1f} MiB): "
              f"{'NO GROWTH (met)' if ok else 'GROWTH (missed)'}; least-squares slope after warm-up {slope:+.2f} MiB/min")
        print(f"  sparkline ({len(vals)} samples, {lo/1024:.1f}..{hi/1024:.1f} MiB): {spark}")
    per_min, nxt = [], 0
    for r in s:   # the first sample of every minute, and the last one
        if int(r["elapsed_s"]) >= nxt:
            per_min.append(r); nxt = (int(r["elapsed_s"]) // 60 + 1) * 60
    if s and per_min[-1] is not s[-1]:
        per_min.append(s[-1])
    print("\n| t s | VmRSS MiB | PSS MiB | CPU s | tcp open | udp open | tcp total | udp total | dns | loadavg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in per_min:
        print(f"| {r['elapsed_s']} | {mib(r['rss_kib'])} | {mib(r['pss_kib'])} | {r['cpu_s']} | {r['tcp_open']} | {r['udp_open']} | {r['tcp_total']} | {r['udp_total']} | {r['dns']} | {r['loadavg']} |")
if os.path.exists(pre + "-busy-peers.tsv"):
    _, bp = table(pre + "-busy-peers.tsv")
    print("\nbusy per peer: " + "; ".join(f"p{r['peer']} {r['dir']} {r['recv_Mbit/s']} Mbit/s short {r['short_ok']}/{r['short_err']} err"
                                        + ("" if r["error"] == "-" else f" ERROR {r['error']}") for r in bp))
if soak > 0 and os.path.exists(pre + "-soak-runs.tsv"):
    runs = [l.rstrip("\n").split("\t") for l in open(pre + "-soak-runs.tsv") if l.strip()]
    kinds = {}
    for r in runs:
        k = kinds.setdefault(r[2], [0, 0, []])
        k[0] += 1
        if len(r) > 4 and r[4] != "-": k[1] += 1
        elif r[3] not in ("NA", "-"): k[2].append(int(r[3]))
    print("\nsoak runs: " + "; ".join(f"{k}: {v[0]} runs, {v[1]} failed, median {sorted(v[2])[len(v[2])//2] if v[2] else 'NA'} Mbit/s" for k, v in sorted(kinds.items())))
if soak > 0 and os.path.exists(pre + "-soak-peers.tsv"):
    _, sp = table(pre + "-soak-peers.tsv")
    tot = lambda c: sum(int(r[c]) for r in sp if r.get(c, "NA") not in ("NA", "", None))
    print(f"soak load generators (all peers): short TCP {tot('short_ok')} ok / {tot('short_err')} failed, "
          f"DNS {tot('dns_ok')} ok / {tot('dns_err')} failed, UDP echo {tot('echo_ok')} ok / {tot('echo_err')} failed; "
          f"errors: {', '.join(r['errors'] for r in sp if r.get('errors')) or 'none'}")
for l in open(pre + "-phases.tsv"):
    if l.startswith("# stowaway") or l.startswith("# cargo") or l.startswith("# loadavg"):
        print("\n" + l.strip("# \n"))
PY
}
[ "${SUMMARY_ONLY:-0}" = 1 ] && { summarize; exit 0; }

# ---- main -------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "needs root"; exit 1; }
NICE=${NICE--20}
[ -n "$NICE" ] && renice -n "$NICE" -p $$ >/dev/null
: > "$P-bench.log"
build
if [ -n "${BENCH_COMMIT:-}" ]; then SRC="commit $BENCH_COMMIT (BENCH_COMMIT: binaries built from it)"; else
  SRC="checkout at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) (uncommitted files in stowaway/tunnel/udpio/proto: $(git -C "$ROOT" status --porcelain -- stowaway tunnel udpio proto 2>/dev/null | wc -l))"
fi
{
  echo "# $(date -Is) $SRC bin=$BIN (stowaway $(stat -c %y "$BIN/stowaway" | cut -d. -f1))"
  echo "# host $(uname -r), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -m | awk '/^Mem:/{print $2}') MiB RAM"
  echo "# NPEERS=$NPEERS IDLE_SECS=$IDLE_SECS BUSY_SECS=$BUSY_SECS SOAK_SECS=$SOAK_SECS WARMUP_SECS=$WARMUP_SECS SAMPLE_SECS=$SAMPLE_SECS"
  echo "# SHORT_RATE=$SHORT_RATE DNS_RATE=$DNS_RATE ECHO_RATE=$ECHO_RATE SOAK_TCP_RATE=$SOAK_TCP_RATE SOAK_UDP_RATE=$SOAK_UDP_RATE MTU=$MTU nice=${NICE:-0}"
  echo "# STOWAWAY_ENV=${STOWAWAY_ENV:-} (stowaway default GEFYRA_TCP_BUFFER 512 KiB per direction per TCP flow)"
  echo "# loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg); top CPU consumers at start:"
  ps -eo pcpu,etime,comm --sort=-pcpu | head -6 | sed 's/^/#   /'
  echo -e "$PH_HDR"
} > "$P-phases.tsv"
setup_ns
configs
start_servers
start_stowaway
sleep 1
phase bare
start_peers
sleep "$IDLE_SECS"
reset_hwm; sleep 1
phase idle
busy
sleep 5
phase after-busy
w=$(wait_drained "$DRAIN_SECS"); log "flows drained after $w s"
phase after-busy-drained
status_json | jq . > "$P-status-after-busy.json" 2>/dev/null
if [ "$SOAK_SECS" -gt 0 ]; then
  soak
  w=$(wait_drained "$DRAIN_SECS"); log "flows drained after $w s"
  phase after-soak-drained
  status_json | jq . > "$P-status-after-soak.json" 2>/dev/null
  malloc_probe after-soak-drained trim
else
  malloc_probe after-busy-drained trim
fi
TOTAL_CPU=$(mem | cut -d' ' -f6)
ALIVE=$(kill -0 "$PID_st" 2>/dev/null && echo yes || echo NO)
{
  echo "# stowaway alive at the end: $ALIVE; CPU seconds total $TOTAL_CPU, busy ${BUSY_CPU:-NA}, soak ${SOAK_CPU:-NA}"
  echo "# stowaway log lines: $(wc -l < "$P-stowaway.log"), WARN $(grep -c WARN "$P-stowaway.log"), ERROR $(grep -c ERROR "$P-stowaway.log")"
  echo "# cargo-client logs: WARN $(cat "$TMP"/cargo*.log | grep -c WARN), ERROR $(cat "$TMP"/cargo*.log | grep -c ERROR); alive: $(for p in "${PID_cargo[@]}"; do kill -0 "$p" 2>/dev/null && echo -n y || echo -n N; done)"
  echo "# loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} >> "$P-phases.tsv"
summarize
log "done; results in $P-*"
