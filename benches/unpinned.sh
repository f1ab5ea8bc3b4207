#!/usr/bin/env bash
# Broker and load generator sharing every CPU (no taskset): coremq with 2 shards pinned (the default), 2 shards with
# `pin = false`, 1 shard unpinned, and mosquitto, alternating, RUNS rounds. Prints received, lost, latency and the
# broker's CPU share per run (report medians).
#
#   cargo build --release --workspace && benches/unpinned.sh
#   BROKERS="coremq-pin2 coremq-nopin2" RATE=20000 QOS=0 RUNS=5 benches/unpinned.sh
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18854}"
RUNS="${RUNS:-3}"
RATE="${RATE:-20000}"
QOS="${QOS:-0}"
DUR="${DUR:-6}"
SCEN="${SCEN:-pairs --pairs 100}"
DATA="$(mktemp -d)"
TMP="$(mktemp -d)"
mosquitto_conf "$PORT" > "$TMP/mosquitto.conf"
printf 'pin = false\n' > "$TMP/nopin.toml"
trap 'stop_broker; rm -rf "$DATA" "$TMP"' EXIT

start_broker() {
  rm -rf "$DATA"
  local cq=("$CQ" --listen "127.0.0.1:$PORT" --data-dir "$DATA" --log-level error)
  case $1 in
    coremq-pin2) "${cq[@]}" --shards 2 >/dev/null 2>&1 & ;;
    coremq-nopin2) "${cq[@]}" --shards 2 --config "$TMP/nopin.toml" >/dev/null 2>&1 & ;;
    coremq-nopin1) "${cq[@]}" --shards 1 --config "$TMP/nopin.toml" >/dev/null 2>&1 & ;;
    mosquitto) mosquitto -c "$TMP/mosquitto.conf" >/dev/null 2>&1 & ;;
    *) echo "unknown broker $1" >&2; exit 2 ;;
  esac
  BPID=$!
  sleep 0.7
}

printf '%-14s %9s %7s %9s %9s %9s\n' broker received lost p50_us p99_us cpu_pct
for _ in $(seq "$RUNS"); do
  for b in ${BROKERS:-coremq-pin2 coremq-nopin2 coremq-nopin1 mosquitto}; do
    start_broker "$b"
    # shellcheck disable=SC2086 # SCEN is a word list on purpose
    "$LG" $SCEN --qos "$QOS" --rate "$RATE" --duration "$DUR" --warmup 1 --threads 1 \
      --broker "127.0.0.1:$PORT" --broker-pid "$BPID" --json 2>/dev/null | tail -1 > "$TMP/run.json"
    stop_broker
    python3 - "$b" "$TMP/run.json" <<'EOF'
import json, sys
label, run = sys.argv[1:3]
try:
    v = json.load(open(run))
except (OSError, ValueError) as e:
    print(f"{label:<14} run failed: {e}")
    sys.exit(0)
l = v["latency_us"]
cpu = v.get("broker_cpu_pct")
cpu = f"{cpu:.0f}" if isinstance(cpu, (int, float)) else "?"
print(f"{label:<14} {v['received']:>9} {v['lost']:>7} {l['p50']:>9.0f} {l['p99']:>9.0f} {cpu:>9}")
EOF
  done
done
