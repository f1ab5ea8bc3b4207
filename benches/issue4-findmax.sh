#!/usr/bin/env bash
# Sustainable throughput (issue 4): the highest offered rate with zero loss and p99 under 10 ms, found by
# `coremq-loadgen --find-max`, for mosquitto and coremq, each broker alone. MODE=pinned (default: broker on CPU 0,
# loadgen on CPU 1) or MODE=unpinned; RUNS repetitions (report medians). One JSON line per run in $OUT; the
# `capacity.max_rate` field is the result. A step that fails only on p99 (no loss) is run once more (RETRIES=1):
# on this shared VM one host stall fails a 4 s step. Both brokers hold up to 100,000 messages per client (mosquitto
# `max_queued_messages`, coremq `--max-queued-messages`).
#
# BROKERS may include null (`coremq-loadgen null-broker`, a relay that only forwards QoS 0 to exact topics: the
# ceiling this machine and the loadgen allow; it runs fanout and pairs only). SCENARIOS picks scenarios.
#
#   cargo build --release --workspace && benches/issue4-findmax.sh        # MODE=unpinned RUNS=1 BROKERS=coremq
#   BROKERS="null coremq mosquitto" SCENARIOS=pairs benches/issue4-findmax.sh
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18854}"
RUNS="${RUNS:-3}"
MODE="${MODE:-pinned}"
OUT="${OUT:-$ROOT/target/issue4-findmax-$MODE.jsonl}"
DATA="$(mktemp -d)"
CONF="$DATA.mosquitto.conf"
mosquitto_conf "$PORT" > "$CONF"
ulimit -n 20000 2>/dev/null || true
SEARCH=(--find-max --p99-max-ms 10 --start-rate 8000 --step-duration 4 --warmup 1 --bisect-steps 3 --step-retries "${RETRIES:-1}")

BROKER_PIN=(taskset -c 0)
LG_PIN=(taskset -c 1)
if [ "$MODE" = unpinned ]; then BROKER_PIN=(); LG_PIN=(); fi

start_broker() {
  rm -rf "$DATA"; mkdir -p "$DATA"
  case $1 in
    mosquitto) "${BROKER_PIN[@]}" mosquitto -c "$CONF" >/dev/null 2>&1 & ;;
    # Unpinned coremq runs one shard per CPU (2 here); pinned, the one CPU it may use.
    coremq) "${BROKER_PIN[@]}" "$CQ" --listen "127.0.0.1:$PORT" --data-dir "$DATA" --max-queued-messages 100000 --log-level error >/dev/null 2>&1 & ;;
    null) "${BROKER_PIN[@]}" "$LG" null-broker --listen "127.0.0.1:$PORT" >/dev/null 2>&1 & ;;
    *) echo "unknown broker $1" >&2; exit 2 ;;
  esac
  BPID=$!
  sleep 0.7
}
trap 'stop_broker; rm -rf "$DATA" "$CONF"' EXIT

run() {
  local b=$1; shift
  start_broker "$b"
  loadgen_json "$b-$MODE" "$@" "${SEARCH[@]}" >/dev/null
  tail -1 "$OUT" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["scenario"], r["broker"], r["qos"], "max_rate", r["capacity"]["max_rate"], "cpu%", round(r.get("broker_cpu_pct", 0)))' >&2
  stop_broker
}

for i in $(seq "$RUNS"); do
  for b in ${BROKERS:-mosquitto coremq}; do
    echo "# run $i: $b ($MODE)" >&2
    for sc in ${SCENARIOS:-fanin0 fanout pairs fanin1}; do
      case $b/$sc in
        null/fanin*) ;; # wildcard subscription and QoS 1: not something the null broker does
        */fanin0) run "$b" fanin --publishers 8 --qos 0 ;;
        */fanout) run "$b" fanout --subscribers 100 --qos 0 ;;
        */pairs) run "$b" pairs --pairs 100 --qos 0 ;;
        */fanin1) run "$b" fanin --publishers 8 --qos 1 ;;
        *) echo "unknown scenario $sc" >&2; exit 2 ;;
      esac
    done
  done
done
echo "results: $OUT" >&2
