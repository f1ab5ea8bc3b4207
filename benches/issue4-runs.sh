#!/usr/bin/env bash
# The runs behind the issue-4 performance table: each broker alone, pinned to CPU 0, loadgen pinned to CPU 1,
# one JSON line per run appended to $OUT. Brokers: mosquitto (Debian), coremq (1 shard, pinned), coremq2 (2 shards,
# unpinned, loadgen unpinned). For side-by-side tables and plots of any brokers see benches/compare.sh.
#
#   cargo build --release --workspace && benches/issue4-runs.sh            # BROKERS="coremq" to run one
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18850}"
OUT="${OUT:-$ROOT/target/issue4-runs.jsonl}"
CONF="$(mktemp)"
DATA="$(mktemp -d)"
mosquitto_conf "$PORT" > "$CONF"
ulimit -n 20000 2>/dev/null || true

start_broker() {
  case $1 in
    mosquitto) taskset -c 0 mosquitto -c "$CONF" >/dev/null 2>&1 & ;;
    coremq) rm -rf "$DATA"; taskset -c 0 "$CQ" --listen "127.0.0.1:$PORT" --data-dir "$DATA" --log-level error >/dev/null 2>&1 & ;;
    coremq2) rm -rf "$DATA"; "$CQ" --listen "127.0.0.1:$PORT" --shards 2 --data-dir "$DATA" --log-level error >/dev/null 2>&1 & ;;
    *) echo "unknown broker $1" >&2; exit 2 ;;
  esac
  BPID=$!
  sleep 0.7
}
trap 'stop_broker; rm -rf "$CONF" "$DATA"' EXIT

run() {
  local b=$1; shift
  LG_PIN=(taskset -c 1)
  [ "$b" = coremq2 ] && LG_PIN=()
  start_broker "$b"
  loadgen_json "$b" "$@"
  stop_broker
}

for b in ${BROKERS:-mosquitto coremq coremq2}; do
  run "$b" fanin --publishers 8 --qos 0 --duration 5
  run "$b" fanin --publishers 8 --qos 1 --duration 5
  run "$b" fanout --subscribers 100 --qos 0 --duration 5
  run "$b" pairs --pairs 100 --qos 0 --duration 5
  run "$b" pairs --pairs 100 --qos 1 --duration 5
  run "$b" pairs --pairs 10 --qos 0 --rate 10000 --duration 10
  run "$b" conn --connections 15000 --connect-rate 3000 --duration 8 --source 127.0.0.2-127.0.0.3
done
echo "results: $OUT (coremq-loadgen table $OUT prints them side by side)"
