#!/usr/bin/env bash
# Shared subscriptions, coremq (2 shards, unpinned) against mosquitto, one broker at a time on this machine:
#   1. the loadgen's `shared` scenario (8 publishers -> one `$share/lg/...` group of 4), QoS 0 and QoS 1;
#   2. the spread across members: 4 mosquitto_sub members of `$share/sp/spread/+` (one line per message: the
#      topic, as payloads may hold newlines), 8 loadgen publishers sending
#      COUNT QoS 1 messages in all; lines received per member, and the total against COUNT.
#
#   benches/shared.sh [RATE] [DURATION] [COUNT]     (defaults 20000 msg/s, 5 s, 8000)
#   ROUNDS=N (default 2): rounds, the brokers alternating (mosquitto first in odd rounds, coremq in even ones), a
#   fresh broker (and empty coremq log) for each.
# Results: one JSON line per loadgen run in $OUT (default target/shared-bench.jsonl), spread on stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
RATE=${1:-20000}
DURATION=${2:-5}
COUNT=${3:-8000}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-$ROOT/target/shared-bench.jsonl}
WORK=$(mktemp -d)
PORT=18930
while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
CONF="$WORK/mosquitto.conf"
mosquitto_conf "$PORT" > "$CONF"
declare -a SUBS=()
cleanup() {
  for p in "${SUBS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_broker
  rm -rf "$WORK"
}
trap cleanup EXIT

start() {
  case $1 in
    mosquitto) mosquitto -c "$CONF" >/dev/null 2>&1 & ;;
    coremq) rm -rf "$WORK/data"; "$CQ" --listen "127.0.0.1:$PORT" --shards 2 --no-pin --data-dir "$WORK/data" --log-level error \
      >/dev/null 2>&1 & ;;
  esac
  BPID=$!
  sleep 1
}

for round in $(seq 1 "$ROUNDS"); do
 order="mosquitto coremq"
 [ $((round % 2)) -eq 0 ] && order="coremq mosquitto"
 for broker in $order; do
  start "$broker"
  for qos in 0 1; do
    loadgen_json "$broker-r$round" shared --publishers 8 --subscribers 4 --qos "$qos" --rate "$RATE" --duration "$DURATION"
  done
  SUBS=()
  for i in 1 2 3 4; do
    # shellcheck disable=SC2016 # a literal $share filter
    mosquitto_sub -p "$PORT" -i "spread-$i" -q 1 -F '%t' -t '$share/sp/spread/+' > "$WORK/member-$i" &
    SUBS+=("$!")
  done
  sleep 1
  "$LG" pub --broker "127.0.0.1:$PORT" --publishers 8 --qos 1 --topic 'spread/%i' --count "$COUNT" \
    --rate "$RATE" --duration 60 >/dev/null 2>&1
  sleep 2
  for p in "${SUBS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  SUBS=()
  total=0; per=""
  for i in 1 2 3 4; do n=$(wc -l < "$WORK/member-$i"); total=$((total + n)); per="$per $n"; done
  echo "round $round $broker spread: sent $COUNT, members got$per (total $total, missing $((COUNT - total)))"
  stop_broker
 done
done
