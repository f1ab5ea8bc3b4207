#!/usr/bin/env bash
# Soak (issue 20): an hour of mixed traffic with connection churn against the release broker, sampling its RSS and
# open file descriptors every 30 s to a CSV; at the end prints first/last/max of both and each load's summary.
# Modest rates on purpose (the machine is shared): ~1,000 QoS 1 msg/s over persistent pairs, 300 QoS 2 msg/s fan-in
# to a persistent subscriber, 200 QoS 0 msg/s fanned out to 10 subscribers, plus a churn loop that opens and closes
# idle connections and short-lived persistent pairs (same client ids every time, so sessions are resumed).
#
#   cargo build --release --workspace && benches/soak.sh                 # one hour
#   DUR=300 INTERVAL=10 benches/soak.sh                                  # five minutes
#   OUTDIR=/tmp/soak benches/soak.sh                                     # keep the CSV and results there
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18871}"
DUR="${DUR:-3600}"
INTERVAL="${INTERVAL:-30}"
OUTDIR="${OUTDIR:-$(mktemp -d)}"
DATA="$(mktemp -d)"
CSV="$OUTDIR/soak.csv"
mkdir -p "$OUTDIR"
LOADS=()
CHURN=""

cleanup() {
  for p in "${LOADS[@]}" $CHURN; do
    kill "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  stop_broker
  rm -rf "$DATA"
}
trap cleanup EXIT

printf 'pin = false\n' > "$OUTDIR/soak.toml"
"$CQ" --config "$OUTDIR/soak.toml" --listen "127.0.0.1:$PORT" --shards 2 --data-dir "$DATA" --log-level warn \
  >/dev/null 2>"$OUTDIR/broker.log" &
BPID=$!
sleep 1
if ! kill -0 "$BPID" 2>/dev/null; then
  echo "broker did not start (see $OUTDIR/broker.log)" >&2
  exit 1
fi

lg() {
  local name=$1; shift
  "$LG" "$@" --broker "127.0.0.1:$PORT" --threads 1 --quiet --json >"$OUTDIR/$name.json" 2>"$OUTDIR/$name.err"
}

lg q1-pairs pairs --pairs 20 --qos 1 --rate 1000 --duration "$DUR" --persistent --client-prefix soak-q1 \
  --topic 'soak/q1/%i' --filter 'soak/q1/%i' &
LOADS+=($!)
lg q2-fanin fanin --publishers 5 --subscribers 1 --qos 2 --rate 300 --duration "$DUR" --persistent \
  --client-prefix soak-q2 --topic 'soak/q2/%i' --filter 'soak/q2/+' &
LOADS+=($!)
lg q0-fanout fanout --publishers 1 --subscribers 10 --qos 0 --rate 200 --duration "$DUR" --client-prefix soak-q0 \
  --topic 'soak/q0' --filter 'soak/q0' &
LOADS+=($!)

# Churn: idle connection bursts and short persistent pairs, until the soak ends.
churn() {
  local end=$(( $(date +%s) + DUR )) i=0
  while [ "$(date +%s)" -lt "$end" ]; do
    i=$((i + 1))
    "$LG" conn --connections 200 --connect-rate 400 --duration 2 --client-prefix "soak-idle-$((i % 4))" \
      --broker "127.0.0.1:$PORT" --threads 1 --quiet >/dev/null 2>&1
    "$LG" pairs --pairs 10 --qos 1 --rate 200 --duration 3 --persistent --client-prefix soak-churn \
      --topic 'soak/churn/%i' --filter 'soak/churn/%i' --broker "127.0.0.1:$PORT" --threads 1 --quiet --json \
      2>/dev/null | tail -1 >>"$OUTDIR/churn.jsonl"
  done
  echo "$i" >"$OUTDIR/churn.cycles"
}
churn &
CHURN=$!

sample() {
  local rss fds
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$BPID/status" 2>/dev/null)
  fds=$(find "/proc/$BPID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  printf '%s,%s,%s,%s\n' "$(date +%s)" "$1" "${rss:-}" "$fds" >>"$CSV"
}

echo "unix_time,elapsed_s,rss_kib,open_fds" >"$CSV"
start=$(date +%s)
while :; do
  now=$(date +%s)
  sample $((now - start))
  if ! kill -0 "$BPID" 2>/dev/null; then
    echo "broker died after $((now - start)) s" >&2
    break
  fi
  [ $((now - start)) -ge "$DUR" ] && break
  sleep "$INTERVAL"
done
for p in "${LOADS[@]}"; do
  wait "$p"
done
wait "$CHURN"
CHURN=""
LOADS=()
sample $(( $(date +%s) - start ))

echo "samples: $CSV"
python3 - "$CSV" "$OUTDIR" <<'EOF'
import csv, json, os, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rows = [r for r in rows if r["rss_kib"]]
for col in ("rss_kib", "open_fds"):
    v = [int(r[col]) for r in rows]
    print(f"{col:>9}: first {v[0]} last {v[-1]} max {max(v)} min {min(v)} ({len(v)} samples)")
out = sys.argv[2]
for name in ("q1-pairs", "q2-fanin", "q0-fanout"):
    try:
        r = json.loads(open(os.path.join(out, name + ".json")).read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError) as e:
        print(f"{name}: no result ({e})")
        continue
    keys = ("sent", "acked", "received", "expected", "lost", "duplicates", "out_of_order", "errors")
    print(name + ": " + ", ".join(f"{k} {r[k]}" for k in keys if k in r))
try:
    churn = [json.loads(l) for l in open(os.path.join(out, "churn.jsonl")) if l.strip()]
    print(f"churn: {len(churn)} short persistent runs, received {sum(c.get('received', 0) for c in churn)}")
except OSError:
    pass
EOF
