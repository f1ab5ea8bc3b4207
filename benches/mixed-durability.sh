#!/usr/bin/env bash
# Clean-session QoS 1 traffic next to persistent-session QoS 1 traffic on a 2-shard coremq: how long a clean
# publisher waits for its PUBACK (`ack_latency_us`) while persistent sessions on the same shards wait for the log's
# fsync (default interval 10 ms). Clean messages write nothing to any log, so their acknowledgements should not
# wait for a sync. Binaries alternate within each round (CQ is this tree's; set CQ_B to compare another build).
#
#   cargo build --release --workspace && benches/mixed-durability.sh
#   CQ_B=/tmp/old/target/release/coremq RUNS=3 benches/mixed-durability.sh
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18853}"
RUNS="${RUNS:-3}"
RATE="${RATE:-2000}"
DUR="${DUR:-6}"
PAIRS="${PAIRS:-20}"
DATA="$(mktemp -d)"
TMP="$(mktemp -d)"
trap 'stop_broker; rm -rf "$DATA" "$TMP"' EXIT

printf '%-8s %9s %12s %12s %12s %12s %14s\n' binary received ack_p50_us ack_p99_us del_p50_us del_p99_us bg_ack_p50_us
for _ in $(seq "$RUNS"); do
  for b in A ${CQ_B:+B}; do
    bin="$CQ"
    [ "$b" = B ] && bin="$CQ_B"
    rm -rf "$DATA"
    "$bin" --listen "127.0.0.1:$PORT" --shards 2 --data-dir "$DATA" --log-level error >/dev/null 2>&1 &
    BPID=$!
    sleep 0.7
    # Background: persistent sessions whose messages are logged on their subscribers' shards.
    "$LG" pairs --pairs "$PAIRS" --qos 1 --rate "$RATE" --duration $((DUR + 2)) --persistent \
      --client-prefix bg --topic 'bg/%i' --filter 'bg/%i' --threads 1 --broker "127.0.0.1:$PORT" --json \
      2>/dev/null | tail -1 > "$TMP/bg.json" &
    BG=$!
    sleep 1
    "$LG" pairs --pairs "$PAIRS" --qos 1 --rate "$RATE" --duration "$DUR" --client-prefix fg \
      --topic 'fg/%i' --filter 'fg/%i' --threads 1 --broker "127.0.0.1:$PORT" --json 2>/dev/null |
      tail -1 > "$TMP/fg.json"
    wait "$BG"
    stop_broker
    python3 - "$b" "$TMP/fg.json" "$TMP/bg.json" <<'EOF'
import json, sys
label, fg, bg = sys.argv[1:4]
try:
    f = json.load(open(fg))
    g = json.load(open(bg))
except (OSError, ValueError) as e:
    print(f"{label:<8} run failed: {e}")
    sys.exit(0)
a, d = f["ack_latency_us"], f["latency_us"]
print(f"{label:<8} {f['received']:>9} {a['p50']:>12.0f} {a['p99']:>12.0f} {d['p50']:>12.0f} {d['p99']:>12.0f} "
      f"{g['ack_latency_us']['p50']:>14.0f}")
EOF
  done
done
