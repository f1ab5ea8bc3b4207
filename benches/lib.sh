# Shared by the benches/*.sh runners (sourced, not run): binary paths, stopping the broker a runner started, and
# one load generator run appended as a JSON line to $OUT.
# shellcheck shell=bash
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LG="${LG:-$ROOT/target/release/coremq-loadgen}"
CQ="${CQ:-$ROOT/target/release/coremq}"
BPID=""
# Prefix for the load generator's command line, e.g. (taskset -c 1); empty = unpinned.
LG_PIN=()

stop_broker() {
  if [ -n "$BPID" ]; then
    kill "$BPID" 2>/dev/null
    wait "$BPID" 2>/dev/null
    BPID=""
    sleep 0.3
  fi
}

# loadgen_json LABEL SCENARIO ARGS...: one run against the broker on $PORT (pid $BPID), result line to $OUT.
loadgen_json() {
  local label=$1; shift
  "${LG_PIN[@]}" "$LG" "$@" --broker "127.0.0.1:$PORT" --threads 1 --broker-pid "$BPID" --label "$label" --json 2>/dev/null |
    tail -1 | tee -a "$OUT"
}
