#!/usr/bin/env bash
# The runs behind the issue-5 numbers: QoS 1 publishes to persistent sessions, with the log on (fsync interval, the
# default; and always) versus persistence off, and mosquitto with persistence on, in one run. Each broker alone,
# pinned to CPU 0, loadgen pinned to CPU 1, RUNS repetitions each (report medians). One JSON line per run in $OUT.
#
#   cargo build --release --workspace && benches/issue5-runs.sh        # BROKERS="coremq-off coremq-interval" RUNS=1
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18851}"
RUNS="${RUNS:-3}"
OUT="${OUT:-$ROOT/target/issue5-runs.jsonl}"
DATA="$(mktemp -d)"
CONF="$DATA.mosquitto.conf"
mosquitto_conf "$PORT" 1000000 "$DATA" > "$CONF"

start_broker() {
  rm -rf "$DATA"; mkdir -p "$DATA"
  local cq=(taskset -c 0 "$CQ" --listen "127.0.0.1:$PORT" --data-dir "$DATA" --log-level error)
  case $1 in
    mosquitto-persist) taskset -c 0 mosquitto -c "$CONF" >/dev/null 2>&1 & ;;
    coremq-off) "${cq[@]}" --no-persistence >/dev/null 2>&1 & ;;
    coremq-interval) "${cq[@]}" --fsync interval:10ms >/dev/null 2>&1 & ;;
    coremq-always) "${cq[@]}" --fsync always >/dev/null 2>&1 & ;;
    *) echo "unknown broker $1" >&2; exit 2 ;;
  esac
  BPID=$!
  sleep 0.7
}
trap 'stop_broker; rm -rf "$DATA" "$CONF"' EXIT

LG_PIN=(taskset -c 1)
run() {
  local b=$1; shift
  start_broker "$b"
  loadgen_json "$b" "$@"
  stop_broker
}

for i in $(seq "$RUNS"); do
  for b in ${BROKERS:-coremq-off coremq-interval coremq-always mosquitto-persist}; do
    echo "# run $i: $b" >&2
    # 8 publishers -> 1 persistent subscriber, QoS 1, as fast as acknowledgements allow (64 in flight each).
    run "$b" fanin --publishers 8 --qos 1 --persistent --duration 5
    # 20 independent persistent publisher/subscriber pairs, QoS 1.
    run "$b" pairs --pairs 20 --qos 1 --persistent --duration 5
  done
done
echo "results: $OUT (coremq-loadgen table $OUT prints them side by side)"
