#!/usr/bin/env bash
# The latency floor of this machine: the latency scenario (10 QoS 0 pairs at a fixed rate) through
# `coremq-loadgen null-broker`, a single-threaded epoll relay that only forwards frames, next to coremq and
# mosquitto. The null broker's numbers are what the kernel, the loopback and the loadgen cost here; what a broker
# adds above them is its own. Each broker alone, pinned to CPU 0, loadgen pinned to CPU 1, brokers alternating,
# RUNS rounds; one line per run.
#
#   cargo build --release --workspace && benches/latency-floor.sh
#   RUNS=5 RATE=20000 DUR=10 benches/latency-floor.sh
#   BROKERS="null coremq-spin100" benches/latency-floor.sh
# null is the null broker; coremq-spinN is coremq with `idle_spin_us = N`; plain coremq runs its defaults.
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18890}"
RUNS="${RUNS:-3}"
RATE="${RATE:-10000}"
DUR="${DUR:-8}"
CONF="$(mktemp)"
SPINCONF="$(mktemp)"
DATA="$(mktemp -d)"
TMP="$(mktemp -d)"
mosquitto_conf "$PORT" > "$CONF"
trap 'stop_broker; rm -rf "$CONF" "$SPINCONF" "$DATA" "$TMP"' EXIT


printf '%-14s %9s %7s %8s %9s %9s\n' broker received lost p50_us p99_us p999_us
for _ in $(seq "$RUNS"); do
  for b in ${BROKERS:-null coremq coremq-spin100 mosquitto}; do
    start_one_core_broker "$b"
    taskset -c 1 "$LG" pairs --pairs 10 --qos 0 --rate "$RATE" --duration "$DUR" --warmup 1 --threads 1 \
      --broker "127.0.0.1:$PORT" --label "$b" --json 2>/dev/null | tail -1 > "$TMP/run.json"
    stop_broker
    python3 - "$b" "$TMP/run.json" <<'EOF'
import json, sys
label, run = sys.argv[1:3]
try:
    v = json.load(open(run))
except ValueError:
    print(f'{label:<14} run failed (no report from the loadgen)')
    sys.exit()
l = v["latency_us"]
print(f'{label:<14} {v["received"]:>9} {v["lost"]:>7} {l["p50"]:>8.0f} {l["p99"]:>9.0f} {l["p999"]:>9.0f}')
EOF
  done
done
