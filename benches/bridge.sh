#!/usr/bin/env bash
# Messages/s and latency across one bridge (issue 18). Broker A (coremq) bridges `bench/# out QOS` to broker B
# (coremq or mosquitto). Subscribers always read from B; the publisher writes either to B itself ("direct", the
# baseline without a bridge) or to A ("bridged"): the difference is what the bridge costs. cpu/msg is each
# broker's CPU time (user + system, whole run) per received message; A's includes the bridge thread and, since
# the bridge's local session is persistent, its log writes. Runs alternate
# direct/bridged, ROUNDS times, each with a fresh pair of brokers. Every process is started here and stopped by
# its pid.
#
#   cargo build --release --workspace && benches/bridge.sh
#   PEER=mosquitto QOS=1 RATE=5000 benches/bridge.sh      # fixed rate: latency; RATE=0: as fast as possible
#   WINDOW=32 benches/bridge.sh                           # the default max_inflight (QoS 1 throughput bound)
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
# shellcheck source=benches/lib.sh
. benches/lib.sh
COREMQ="${COREMQ:-target/release/coremq}"
LG="${LOADGEN:-target/release/coremq-loadgen}"
MOSQUITTO="${MOSQUITTO:-/usr/sbin/mosquitto}"
PEER="${PEER:-coremq}"
QOS="${QOS:-1}"
RATE="${RATE:-0}"
COUNT="${COUNT:-200000}"
DUR="${DUR:-20}"
ROUNDS="${ROUNDS:-2}"
WINDOW="${WINDOW:-1000}"
PA="${PA:-18931}"
PB="${PB:-18932}"
TMP="$(mktemp -d)"
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  PIDS=()
}
trap 'stop_all; rm -rf "$TMP"' EXIT

start_brokers() {
  rm -rf "$TMP/a" "$TMP/b"
  mkdir -p "$TMP/a" "$TMP/b"
  if [ "$PEER" = mosquitto ]; then
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nmax_inflight_messages 100\n' \
      "$PB" > "$TMP/b/m.conf"
    "$MOSQUITTO" -c "$TMP/b/m.conf" 2>/dev/null &
  else
    "$COREMQ" --listen "127.0.0.1:$PB" --shards 1 --log-level error --data-dir "$TMP/b/data" >/dev/null &
  fi
  PIDS+=($!)
  wait_port "$PB"
  cat > "$TMP/a/coremq.toml" <<EOF
# The bridge's local session may have this many messages waiting for the remote's acknowledgement.
max_inflight = $WINDOW
[[bridge]]
name = "bench"
addresses = ["127.0.0.1:$PB"]
protocol_version = "3.1.1"
topic = ["bench/# out $QOS"]
max_inflight = $WINDOW
EOF
  "$COREMQ" --config "$TMP/a/coremq.toml" --listen "127.0.0.1:$PA" --shards 1 --log-level error \
    --data-dir "$TMP/a/data" >/dev/null &
  PIDS+=($!)
  wait_port "$PA"
  sleep 1
}

run() { # $1 = direct|bridged
  local pub_port=$PB
  [ "$1" = bridged ] && pub_port=$PA
  "$LG" sub --broker "127.0.0.1:$PB" --subscribers 1 --filter 'bench/#' --qos "$QOS" --expected "$COUNT" \
    --duration "$((DUR + 20))" --grace 3 --json > "$TMP/sub.json" 2>/dev/null &
  local sub=$!
  sleep 1
  "$LG" pub --broker "127.0.0.1:$pub_port" --publishers 1 --topic 'bench/%i' --qos "$QOS" --count "$COUNT" \
    --rate "$RATE" --duration "$DUR" --inflight 100 --json > "$TMP/pub.json" 2>/dev/null
  wait "$sub"
  # Broker CPU (user + system ticks) of B and, bridged, of A (which runs the bridge thread).
  local cpu_b cpu_a
  cpu_b=$(awk '{print $14 + $15}' "/proc/${PIDS[0]}/stat")
  cpu_a=$(awk '{print $14 + $15}' "/proc/${PIDS[1]}/stat")
  # The bridge thread's own share of A (its thread is named bridge-NAME).
  local cpu_t=0 t
  for t in /proc/"${PIDS[1]}"/task/*; do
    if [ "$(cat "$t/comm")" = bridge-bench ]; then cpu_t=$(awk '{print $14 + $15}' "$t/stat"); fi
  done
  [ "$1" = direct ] && cpu_a=0 && cpu_t=0
  python3 - "$1" "$TMP/pub.json" "$TMP/sub.json" "$cpu_a" "$cpu_t" "$cpu_b" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
label, pub, sub, cpu_a, cpu_t, cpu_b, hz = sys.argv[1:8]
def last(path):
    try:
        return json.loads(open(path).read().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
p, s = last(pub), last(sub)
if not p or not s:
    print(f"{label:<8} run failed (no report)")
    sys.exit()
l = s["latency_us"]
print(f"{label:<8} sent {p['sent']:>8} recv {s['received']:>8} lost {s['lost']:>6} dup {s['duplicates']:>5} "
      f"recv/s {s['recv_rate']:>9.0f} p50 {l['p50']:>8.0f} p99 {l['p99']:>8.0f} us "
      + "cpu/msg A %.1f (bridge thread %.1f) B %.1f us"
      % tuple(int(c) / int(hz) * 1e6 / max(1, s['received']) for c in (cpu_a, cpu_t, cpu_b)))
EOF
}

echo "peer=$PEER qos=$QOS rate=$RATE count=$COUNT window=$WINDOW (one publisher, one subscriber on the peer)"
for _ in $(seq "$ROUNDS"); do
  for mode in direct bridged; do
    start_brokers
    run "$mode"
    stop_all
  done
done
