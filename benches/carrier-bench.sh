#!/usr/bin/env bash
# carrier beside socat, HAProxy and nginx `stream`, on loopback only, one run.
# Writes benches/carrier-REPORT.md (override with OUT=...).
#
# Needs: iperf3, jq, socat, haproxy, nginx with the stream module
#   apt-get install -y --no-install-recommends iperf3 jq socat haproxy nginx-light libnginx-mod-stream
# Settings (env): VETH=1 adds a throughput run through veth pairs between two network
#   namespaces it creates and removes (root; no default route anywhere); SECS (per measurement, default 5), IDLE (idle connections, default 2000),
#   CONC (cps concurrency, default 32), RR (exchanges for latency, default 20000).
# Not part of .ci/run: a benchmark, not a test.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$ROOT/benches/carrier-REPORT.md}
SECS=${SECS:-5}
IDLE=${IDLE:-2000}
CONC=${CONC:-32}
RR=${RR:-20000}
BASE=${BASE_PORT:-25200}

for t in iperf3 jq socat haproxy nginx; do
  command -v "$t" >/dev/null || { echo "missing $t (see the header of $0)" >&2; exit 1; }
done
NGX_STREAM=$(ls /usr/lib/nginx/modules/ngx_stream_module.so 2>/dev/null || true)
[ -n "$NGX_STREAM" ] || { echo "missing nginx stream module (libnginx-mod-stream)" >&2; exit 1; }

(cd "$ROOT" && cargo build --profile ci -p carrier --bin carrier --example loadgen) >&2
BIN=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/ci/carrier
LG=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/ci/examples/loadgen

WORK=$(mktemp -d /tmp/carrier-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

IPERF=$((BASE)); ECHO=$((BASE + 1))
LIP=127.0.0.1; UIP=127.0.0.1
iperf3 -s -B 127.0.0.1 -p "$IPERF" >/dev/null 2>&1 & PIDS+=($!)
"$LG" echo "127.0.0.1:$ECHO" & PIDS+=($!)

wait_port() { # port
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$LIP/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2; return 1
}
wait_port "$IPERF"; wait_port "$ECHO"

pss_kb() { # pid -> summed PSS (kB) of it and its children (nginx workers, socat forks)
  local t=0 v p
  for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    v=$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

cpu_s() { # pid -> CPU seconds of it, its live children and its reaped children
  local t=0 v p
  for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    v=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null)
    t=$((t + ${v:-0}))
  done
  awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }'
}

PROXY_PID=
start_proxy() { # name port_to_iperf port_to_echo
  local name=$1 p1=$2 p2=$3
  case $name in
    direct) PROXY_PID= ;;
    carrier*)
      local flags=()
      [ "$name" = carrier-buffered ] && flags+=(--no-splice)
      GEFYRA_LOG=warn "$BIN" forward --listen "$LIP:$p1" --to "$UIP:$IPERF" \
        --listen "$LIP:$p2" --to "$UIP:$ECHO" --max-connections 50000 "${flags[@]}" &
      PROXY_PID=$! ;;
    socat)
      # One socat per mapping; the one on the echo port is the one measured for memory.
      socat "TCP-LISTEN:$p1,bind=$LIP,fork,reuseaddr" "TCP:$UIP:$IPERF" & SOCAT1=$!; PIDS+=($!)
      socat "TCP-LISTEN:$p2,bind=$LIP,fork,reuseaddr,nodelay" "TCP:$UIP:$ECHO,nodelay" &
      PROXY_PID=$! ;;
    haproxy)
      cat >"$WORK/haproxy.cfg" <<EOF
global
  maxconn 9000
  nbthread 2
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f1
  bind $LIP:$p1
  default_backend b1
backend b1
  server s1 $UIP:$IPERF
frontend f2
  bind $LIP:$p2
  option tcp-smart-accept
  default_backend b2
backend b2
  server s2 $UIP:$ECHO
EOF
      haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 & PROXY_PID=$! ;;
    nginx)
      mkdir -p "$WORK/nginx"
      cat >"$WORK/nginx/nginx.conf" <<EOF
load_module $NGX_STREAM;
worker_processes 2;
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 9000; }
stream {
  server { listen $LIP:$p1; proxy_pass $UIP:$IPERF; }
  server { listen $LIP:$p2; proxy_pass $UIP:$ECHO; tcp_nodelay on; }
}
EOF
      nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' & PROXY_PID=$! ;;
  esac
  [ -n "$PROXY_PID" ] && PIDS+=("$PROXY_PID")
  if [ "$name" != direct ]; then wait_port "$p1"; wait_port "$p2"; fi
  sleep 0.3
}

stop_proxy() {
  [ -z "$PROXY_PID" ] && return 0
  kill "$PROXY_PID" 2>/dev/null || true
  if [ -n "${SOCAT1:-}" ]; then kill "$SOCAT1" 2>/dev/null || true; SOCAT1=; fi
  sleep 0.5
}

gbps() { jq -r '.end.sum_received.bits_per_second / 1e9 | . * 100 | round / 100'; }

ROWS=()
DIRECT_P50=; DIRECT_P99=
for name in direct carrier carrier-buffered socat haproxy nginx; do
  BASE=$((BASE + 10))
  p1=$BASE; p2=$((BASE + 1))
  if [ "$name" = direct ]; then p1=$IPERF; p2=$ECHO; fi
  echo "== $name" >&2
  start_proxy "$name" "$p1" "$p2"
  t1=$(iperf3 -c 127.0.0.1 -p "$p1" -t "$SECS" -J | gbps)
  t8=$(iperf3 -c 127.0.0.1 -p "$p1" -t "$SECS" -P 8 -J | gbps)
  cps=$("$LG" cps "127.0.0.1:$p2" "$CONC" "$SECS")
  # The machine is shared: the direct baseline is measured right before each proxy.
  base=$("$LG" rr "127.0.0.1:$ECHO" 1 "$RR" 64)
  DIRECT_P50=$(jq -r .p50_us <<<"$base"); DIRECT_P99=$(jq -r .p99_us <<<"$base")
  rr=$("$LG" rr "127.0.0.1:$p2" 1 "$RR" 64)
  p50=$(jq -r .p50_us <<<"$rr"); p99=$(jq -r .p99_us <<<"$rr")
  mem="n/a"
  if [ -n "$PROXY_PID" ]; then
    before=$(pss_kb "$PROXY_PID")
    "$LG" idle "127.0.0.1:$p2" "$IDLE" 6 >"$WORK/idle.out" & idle_pid=$!
    for _ in $(seq 1 200); do grep -q idle "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
    sleep 0.5
    after=$(pss_kb "$PROXY_PID")
    wait "$idle_pid" || true
    mem=$(awk -v a="$after" -v b="$before" -v n="$IDLE" 'BEGIN { printf "%.1f", (a - b) * 1024 / n / 1024 }')
  fi
  if [ "$name" = direct ]; then add50="—"; add99="—"
  else
    add50=$(awk -v a="$p50" -v b="$DIRECT_P50" 'BEGIN { printf "%.1f", a - b }')
    add99=$(awk -v a="$p99" -v b="$DIRECT_P99" 'BEGIN { printf "%.1f", a - b }')
  fi
  ROWS+=("| $name | $t1 | $t8 | $(jq -r .per_sec <<<"$cps") ($(jq -r .failed <<<"$cps") failed) | $p50 / $p99 | $add50 / $add99 | $mem |")
  echo "${ROWS[-1]}" >&2
  stop_proxy
done

# ---- through veth pairs: client netns -> proxy (root netns) -> server netns.
# Closer to a Pod than loopback (splice's gain depends on the device). Needs root and `ip`.
VROWS=()
if [ "${VETH:-0}" = 1 ] && [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
  NSC=cbench-c$$; NSS=cbench-s$$
  veth_cleanup() {
    ip netns del "$NSC" 2>/dev/null || true; ip netns del "$NSS" 2>/dev/null || true
    ip link del cbc$$ 2>/dev/null || true; ip link del cbs$$ 2>/dev/null || true
  }
  trap 'veth_cleanup; cleanup' EXIT
  ip netns add "$NSC"; ip netns add "$NSS"
  ip link add cbc$$ type veth peer name cbc$$p; ip link set cbc$$p netns "$NSC"
  ip link add cbs$$ type veth peer name cbs$$p; ip link set cbs$$p netns "$NSS"
  ip addr add 10.233.1.1/24 dev cbc$$; ip link set cbc$$ up
  ip addr add 10.233.2.1/24 dev cbs$$; ip link set cbs$$ up
  ip -n "$NSC" addr add 10.233.1.2/24 dev cbc$$p; ip -n "$NSC" link set cbc$$p up
  ip -n "$NSS" addr add 10.233.2.2/24 dev cbs$$p; ip -n "$NSS" link set cbs$$p up
  # No default route anywhere: each namespace reaches only its own /24.
  LIP=10.233.1.1; UIP=10.233.2.2
  ip netns exec "$NSS" iperf3 -s -B "$UIP" -p "$IPERF" >/dev/null 2>&1 & PIDS+=($!)
  sleep 0.5
  for name in carrier carrier-buffered socat haproxy nginx; do
    BASE=$((BASE + 10)); p1=$BASE; p2=$((BASE + 1))
    echo "== veth $name" >&2
    start_proxy "$name" "$p1" "$p2"
    t1=$(ip netns exec "$NSC" iperf3 -c "$LIP" -p "$p1" -t "$SECS" -J | gbps)
    t8=$(ip netns exec "$NSC" iperf3 -c "$LIP" -p "$p1" -t "$SECS" -P 8 -J | gbps)
    cpu=$(cpu_s "${SOCAT1:-$PROXY_PID}")
    VROWS+=("| $name | $t1 | $t8 | ${cpu:-?} |")
    echo "${VROWS[-1]}" >&2
    stop_proxy
  done
  veth_cleanup
fi

C1=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' '$2 ~ /^ carrier $/ {print $3+0}')
S1=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' '$2 ~ /^ socat $/ {print $3+0}')
RATIO=$(awk -v c="$C1" -v s="$S1" 'BEGIN { if (s > 0) printf "%.2f", c / s; else print "n/a" }')

{
  echo "# carrier benchmark (loopback)"
  echo
  echo "Generated by \`benches/carrier-bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo
  echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet -- carrier || echo ' (carrier/ modified)')"
  echo "- kernel: $(uname -r); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') × $(nproc)"
  echo "- versions: socat $(socat -V | awk '/socat version/{print $3}'), $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'), $(nginx -v 2>&1 | sed 's/.*: //'), iperf3 $(iperf3 -v | head -1 | awk '{print $2}')"
  echo "- settings: ${SECS}s per throughput/cps run; cps concurrency $CONC; latency: 1 connection, $RR exchanges of 64 bytes (after 100 warm-up), \"added\" = proxy minus a direct run made just before it; $IDLE idle connections for memory"
  echo "- carrier: \`carrier forward\` (splice, default 64 KiB pipes) and \`--no-splice\`; socat: \`fork\`; HAProxy: mode tcp, nbthread 2; nginx: stream, 2 workers"
  echo "- the machine is shared (other builds may run): figures are one run, not a controlled lab$([ ${#VROWS[@]} -gt 0 ] && echo '; run with VETH=1')"
  echo
  echo "| proxy | 1 stream Gbit/s | 8 streams Gbit/s | new conn/s | latency p50 / p99 µs | added p50 / p99 µs | PSS per idle conn KiB |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Single-stream throughput carrier / socat: **${RATIO}×** (target ≥ 1.2×)."
  echo
  if [ ${#VROWS[@]} -gt 0 ]; then
    echo "## Through veth pairs (client netns → proxy → server netns)"
    echo
    echo "| proxy | 1 stream Gbit/s | 8 streams Gbit/s | proxy CPU s (both runs) |"
    echo "|---|---|---|---|"
    printf '%s\n' "${VROWS[@]}"
    echo
  fi
  echo "Memory is the PSS growth of the proxy's processes with $IDLE idle connections (each got one"
  echo "1-byte exchange first), divided by $IDLE. It leaves out kernel memory: socket buffers for all,"
  echo "and for carrier the two pipes a connection holds once both directions carried data (an idle pipe"
  echo "holds no data pages; carrier makes none for a direction that never carried data)."
} >"$OUT"
echo "wrote $OUT" >&2
cat "$OUT"
