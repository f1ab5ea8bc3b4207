#!/usr/bin/env bash
# What one delivered message costs each broker at the same offered load: broker CPU time (perf's task-clock, so
# CPU actually used, not sampled from /proc) and syscalls, divided by messages received. Each broker alone, pinned
# to CPU 0, loadgen pinned to CPU 1, brokers alternating, RUNS rounds. Efficiency = messages per broker
# CPU-second = 1 / (CPU µs per message) * 1e6. Needs perf (Debian linux-perf) with the syscall tracepoints.
#
#   cargo build --release --workspace && benches/cost-per-message.sh
#   SCEN="pairs --pairs 10" RATE=10000 benches/cost-per-message.sh         # the latency scenario
#   BROKERS="coremq coremq-spin0 coremq-spin100 mosquitto" RUNS=3 benches/cost-per-message.sh
# coremq-spinN is coremq with `idle_spin_us = N`; plain coremq runs its defaults. null is `coremq-loadgen
# null-broker`, a relay that only forwards QoS 0 frames to exact topics: the floor of what any broker can cost here
# (pairs and fan-out only; it refuses wildcard filters).
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18851}"
RUNS="${RUNS:-3}"
RATE="${RATE:-30000}"
DUR="${DUR:-6}"
QOS="${QOS:-0}"
SCEN="${SCEN:-pairs --pairs 100}"
CONF="$(mktemp)"
SPINCONF="$(mktemp)"
DATA="$(mktemp -d)"
TMP="$(mktemp -d)"
mosquitto_conf "$PORT" > "$CONF"
trap 'stop_broker; rm -rf "$CONF" "$SPINCONF" "$DATA" "$TMP"' EXIT


printf '%-14s %9s %8s %9s %9s %10s %12s %11s %9s\n' broker received p50_us p99_us p999_us cpu_us/msg syscalls/msg ctxsw/msg lg_cpu
for _ in $(seq "$RUNS"); do
  for b in ${BROKERS:-coremq coremq-spin0 coremq-spin100 mosquitto}; do
    start_one_core_broker "$b"
    perf stat -x, -e task-clock,raw_syscalls:sys_enter,context-switches -p "$BPID" -o "$TMP/perf" &
    PERF=$!
    # shellcheck disable=SC2086 # SCEN is a word list on purpose
    taskset -c 1 "$LG" $SCEN --qos "$QOS" --rate "$RATE" --duration "$DUR" --warmup 1 --threads 1 \
      --broker "127.0.0.1:$PORT" --json 2>/dev/null | tail -1 > "$TMP/run.json"
    kill -INT "$PERF"; wait "$PERF" 2>/dev/null
    stop_broker
    python3 - "$b" "$TMP/run.json" "$TMP/perf" <<'EOF'
import json, sys
label, run, perf = sys.argv[1:4]
v = json.load(open(run))
stat = {}
for line in open(perf):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "", 1).isdigit():
        stat[f[2]] = float(f[0])
n = max(v["received"], 1)
l = v["latency_us"]
print(f'{label:<14} {v["received"]:>9} {l["p50"]:>8.0f} {l["p99"]:>9.0f} {l["p999"]:>9.0f} '
      f'{stat.get("task-clock", 0) * 1000 / n:>10.2f} {stat.get("raw_syscalls:sys_enter", 0) / n:>12.2f} '
      f'{stat.get("context-switches", 0) / n:>11.3f} {v["loadgen_cpu_pct"]:>8.0f}%')
EOF
  done
done
