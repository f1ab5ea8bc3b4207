#!/usr/bin/env bash
# Broker RSS per idle connection (issue 4 target: <= 512 B at 15,000 connections), median of RUNS fresh brokers
# per shard count. The load generator takes the broker's RSS before connecting and after the hold, and divides
# the growth by the connections made; kernel socket memory is not in RSS.
#
#   cargo build --release --workspace && benches/idle-memory.sh          # SHARDS="1 2" RUNS=3 CONNS=15000
#   IOS="epoll uring" SHARDS=1 benches/idle-memory.sh    # each socket backend (`--io`), alternating per run
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18830}"
SHARDS="${SHARDS:-1 2}"
RUNS="${RUNS:-3}"
CONNS="${CONNS:-15000}"
ulimit -n 20000 2>/dev/null || true
DATA="$(mktemp -d)"

trap 'stop_broker; rm -rf "$DATA"' EXIT

for shards in $SHARDS; do
  declare -A results=()
  for run in $(seq 1 "$RUNS"); do
    # Backends alternate within each run (the machine's noise hits both alike).
    for io in ${IOS:-default}; do
      ioarg=()
      [[ $io != default ]] && ioarg=(--io "$io")
      rm -rf "$DATA"
      "$CQ" --listen "127.0.0.1:$PORT" --shards "$shards" --data-dir "$DATA" --log-level error "${ioarg[@]}" >/dev/null 2>&1 &
      BPID=$!
      sleep 0.7
      line=$("$LG" conn --broker "127.0.0.1:$PORT" --connections "$CONNS" --connect-rate 3000 --duration 8 \
        --source 127.0.0.2-127.0.0.3 --threads 1 --broker-pid "$BPID" --json 2>/dev/null |
        python3 -c '
import json, sys
t = sys.stdin.read()
c = json.loads(t[t.index("{"):])["connect"]
l = c["latency_ms"]
print("%.0f %d %d %d %.2f %.2f" % (c["broker_rss_bytes_per_conn"], c["connected"], c["broker_rss_kib_before"],
      c["broker_rss_kib_after"], l["p50"], l["p99"]))')
      stop_broker
      sleep 1
      echo "shards $shards io $io run $run: B/conn connected rss_before_KiB rss_after_KiB connect_p50_ms connect_p99_ms = $line"
      results[$io]+="$line"$'\n'
    done
  done
  for io in ${IOS:-default}; do
    printf '%s' "${results[$io]}" | python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
med = lambda i: statistics.median(r[i] for r in rows)
print("shards %s io %s median of %d: %.0f B/conn, connect p50 %.2f ms, p99 %.2f ms" % (sys.argv[1], sys.argv[2], len(rows), med(0), med(4), med(5)))
' "$shards" "$io"
  done
  unset results
done
