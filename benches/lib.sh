# benches/lib.sh -- shell helpers shared by the bench scripts (sourced, not run).

# kill_pids PID... : stop the given PIDs and their direct children -- by PID only, and only those that are
# live jobs of the calling shell (never anything else with the same name). SIGTERM, up to 2 s, then SIGKILL.
kill_pids() {
  local p c live=() mine=" $(jobs -p | tr '\n' ' ') "
  for p in "$@"; do [[ $mine == *" $p "* ]] && live+=("$p"); done
  [ ${#live[@]} -eq 0 ] && return 0
  set -- "${live[@]}"
  for p in "$@"; do
    for c in $(pgrep -P "$p" 2>/dev/null); do kill "$c" 2>/dev/null; done
    kill "$p" 2>/dev/null
  done
  local i; for i in $(seq 20); do
    local alive=0; for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for p in "$@"; do kill -9 "$p" 2>/dev/null; done
  for p in "$@"; do wait "$p" 2>/dev/null; done
  return 0
}
