#!/usr/bin/env bash
# Reconnect storm (issue 20): N persistent sessions (default 15,000) are created, the broker is restarted (SIGTERM,
# then again with kill -9), and all N clients reconnect at once with the same client ids. Reports the restart time
# (start to "listening": log recovery of N sessions), the connect rate and the time until every client has its
# CONNACK. Clients are spread over source addresses 127.0.0.2.. so loopback ports do not run out; each process
# stays under its 20,000 open files.
#
#   cargo build --release --workspace && benches/reconnect-storm.sh
#   N=5000 RATE=2000 benches/reconnect-storm.sh        # smaller, paced at 2,000 connects/s
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18881}"
N="${N:-15000}"
RATE="${RATE:-0}"
SOURCES="${SOURCES:-127.0.0.2-127.0.0.41}"
DATA="$(mktemp -d)"
TMP="$(mktemp -d)"
trap 'stop_broker; rm -rf "$DATA" "$TMP"' EXIT

# start_broker: start on $DATA, wait for its "listening" line; the seconds it took go to T.
start_broker() {
  : >"$TMP/stdout"
  local t0
  t0=$(date +%s.%N)
  "$CQ" --listen "127.0.0.1:$PORT" --shards 2 --no-pin --data-dir "$DATA" --log-level error >"$TMP/stdout" 2>&1 &
  BPID=$!
  for _ in $(seq 6000); do
    grep -q "listening on" "$TMP/stdout" && break
    kill -0 "$BPID" 2>/dev/null || { echo "broker exited: $(cat "$TMP/stdout")" >&2; exit 1; }
    sleep 0.01
  done
  T=$(echo "$(date +%s.%N) - $t0" | bc)
}

# storm LABEL: N persistent clients connect at once (paced by RATE if set); one JSON line.
storm() {
  "$LG" conn --connections "$N" --persistent --client-prefix storm --source "$SOURCES" --connect-rate "$RATE" \
    --connect-timeout 120 --duration 1 --broker "127.0.0.1:$PORT" --broker-pid "$BPID" --quiet --json 2>"$TMP/lg.err" |
    tail -1 >"$TMP/$1.json"
}

# report NAME LABEL RESTART_SECS
report() {
  python3 - "$2" "$3" "$TMP/$1.json" <<'EOF'
import json, sys
label, restart, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
try:
    r = json.load(open(path))
except (OSError, ValueError) as e:
    print(f"{label}: no result ({e})")
    sys.exit(0)
c = r.get("connect") or r
print(f"{label:<18} restart {restart:6.2f} s  connected {c['connected']:>6} of {c.get('attempted', '?')}  "
      f"{c['connect_rate']:>8.0f} connects/s  all served after {c['connect_secs']:6.2f} s "
      f"(restart + storm {restart + c['connect_secs']:.2f} s)")
EOF
}

T=0
start_broker
storm create
report create "create sessions" "$T"
stop_broker
start_broker
storm after-sigterm
report after-sigterm "after SIGTERM" "$T"
kill -9 "$BPID"
wait "$BPID" 2>/dev/null
BPID=""
start_broker
storm after-kill9
report after-kill9 "after kill -9" "$T"
