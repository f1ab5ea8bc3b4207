#!/usr/bin/env bash
# Broker CPU per delivered message for pairs whose publisher and subscriber are owned by different shards, against
# pairs on one shard (issue 19: at most 1.2x), in one run: coremq with 2 shards, both on CPU 0 (`pin = false`), the
# load generator on CPU 1, a fresh broker per run, placements alternating. The loadgen picks client ids by
# coremq's client-id hash (`--place same:2` / `--place cross:2`).
#
#   cargo build --release --workspace && benches/cross-shard.sh      # RUNS=3 RATE=100000 QOS="0 1" PAIRS=100
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18840}"
RUNS="${RUNS:-3}"
RATE="${RATE:-100000}"
QOS="${QOS:-0 1}"
PAIRS="${PAIRS:-100}"
DURATION="${DURATION:-5}"
DATA="$(mktemp -d)"
CONF="$DATA.toml"
printf 'pin = false\n' > "$CONF"
OUT="${OUT:-$ROOT/target/cross-shard-$(date +%Y%m%d-%H%M%S).jsonl}"
LG_PIN=(taskset -c 1)
trap 'stop_broker; rm -rf "$DATA" "$CONF"' EXIT

for qos in $QOS; do
  for run in $(seq 1 "$RUNS"); do
    for place in same cross; do
      rm -rf "$DATA"
      taskset -c 0 "$CQ" --listen "127.0.0.1:$PORT" --shards 2 --config "$CONF" --data-dir "$DATA" \
        --log-level error >/dev/null 2>&1 &
      BPID=$!
      sleep 0.7
      echo "qos $qos run $run $place (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
      loadgen_json "coremq-2sh-$place" pairs --pairs "$PAIRS" --qos "$qos" --rate "$RATE" --duration "$DURATION" \
        --place "$place:2" >/dev/null
      stop_broker
    done
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
for qos in sorted({r["qos"] for r in rows}):
    per = {}
    for r in rows:
        if r["qos"] == qos and r.get("broker_cpu_us_per_msg"):
            per.setdefault(r["broker"], []).append((r["broker_cpu_us_per_msg"], r["recv_rate"], r["lost"]))
    med = {b: statistics.median(v[0] for v in vs) for b, vs in per.items()}
    for b, vs in sorted(per.items()):
        print("qos %d %-18s runs %d  broker µs/msg %s (median %.2f)  recv/s %s  lost %s" % (
            qos, b, len(vs), " ".join("%.2f" % v[0] for v in vs), med[b],
            " ".join("%.0f" % v[1] for v in vs), " ".join(str(v[2]) for v in vs)))
    if "coremq-2sh-same" in med and "coremq-2sh-cross" in med:
        print("qos %d cross/same = %.2f" % (qos, med["coremq-2sh-cross"] / med["coremq-2sh-same"]))
PY
