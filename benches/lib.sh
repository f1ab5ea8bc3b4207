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

# loadgen_line LABEL SCENARIO ARGS...: one run (ARGS name the broker) measuring the broker of pid $BPID; its
# result line is appended to $OUT and printed.
loadgen_line() {
  local label=$1; shift
  "${LG_PIN[@]}" "$LG" "$@" --threads 1 --broker-pid "$BPID" --label "$label" --json 2>/dev/null |
    tail -1 | tee -a "$OUT"
}

# loadgen_json LABEL SCENARIO ARGS...: one run against the broker on $PORT (pid $BPID), result line to $OUT.
loadgen_json() {
  local label=$1; shift
  loadgen_line "$label" "$@" --broker "127.0.0.1:$PORT"
}

# wait_port PORT [TRIES]: wait (TRIES x 0.1 s, default 100) until something accepts on 127.0.0.1:PORT; 1 if not.
wait_port() {
  for _ in $(seq "${2:-100}"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
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

# start_one_core_broker NAME: one broker alone on CPU 0, pid in BPID. NAME is mosquitto (config in $CONF), null
# (`coremq-loadgen null-broker`, the floor), coremq (1 shard, its defaults), coremq-spinN (`idle_spin_us = N`,
# written to $SPINCONF), or coremq-epoll / coremq-uring (`--io epoll|uring`: the socket backend). coremq keeps its
# log in $DATA, emptied first.
start_one_core_broker() {
  rm -rf "$DATA"
  local cq=(taskset -c 0 "$CQ" --listen "127.0.0.1:$PORT" --shards 1 --data-dir "$DATA" --log-level error)
  case $1 in
    mosquitto) taskset -c 0 mosquitto -c "$CONF" >/dev/null 2>&1 & ;;
    null) taskset -c 0 "$LG" null-broker --listen "127.0.0.1:$PORT" >/dev/null 2>&1 & ;;
    coremq) "${cq[@]}" >/dev/null 2>&1 & ;;
    coremq-epoll | coremq-uring) "${cq[@]}" --io "${1#coremq-}" >/dev/null 2>&1 & ;;
    coremq-spin*)
      printf 'idle_spin_us = %s\n' "${1#coremq-spin}" > "$SPINCONF"
      "${cq[@]}" --config "$SPINCONF" >/dev/null 2>&1 & ;;
    *) echo "unknown broker $1" >&2; exit 2 ;;
  esac
  BPID=$!
  sleep 0.7
  # A loaded machine can take longer to start a broker: wait (bounded) until it accepts.
  wait_port "$PORT" 50 || true
}
