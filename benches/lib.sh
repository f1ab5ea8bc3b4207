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

# mosquitto_conf PORT [MAX_QUEUED] [PERSIST_DIR]: the mosquitto config every comparison uses, on stdout: defaults
# except a raised max_queued_messages (default 100000) and TCP_NODELAY (coremq sets it too); persistence off unless
# a directory is given.
mosquitto_conf() {
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages %s\nset_tcp_nodelay true\n' "$1" "${2:-100000}"
  if [ -n "${3:-}" ]; then
    printf 'persistence true\npersistence_location %s/\n' "$3"
  else
    printf 'persistence false\n'
  fi
}
