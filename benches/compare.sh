#!/usr/bin/env bash
# Side-by-side broker comparison with coremq-loadgen.
#
#   benches/compare.sh --start mosquitto --start coremq            # start each locally, one at a time
#   benches/compare.sh --start coremq --start flashmq --start mosquitto --start null --rounds 2   # issue 19's table
#   benches/compare.sh --start coremq-epoll --start coremq-uring --start null --scenarios benches/saturation.scenarios
#   benches/compare.sh emqx=10.0.0.5:1883 nanomq=10.0.0.6:1883     # brokers already running elsewhere
#   benches/compare.sh --start rumqttd='rumqttd -c /etc/rumqttd.toml' --port rumqttd=1883
#
# Every broker runs the same scenario list (one `coremq-loadgen` argument list per line, see --scenarios); the
# results go to OUT/results.jsonl, then one table (stdout, OUT/table.txt) and one plot (OUT/compare.png).
# Brokers started here run alone, pinned with taskset to --broker-cpu while the load generator is pinned to
# --loadgen-cpu, each on its default config, a fresh process for every run, brokers alternating within each
# scenario and round; they are stopped afterwards (also on Ctrl-C). Commands may contain {port} and {conf}.
# Known brokers: coremq (1 shard; coremq-epoll / coremq-uring: with that socket backend), mosquitto (defaults plus set_tcp_nodelay), flashmq (thread_count 1; built with
# the peers' build-flashmq.sh when $FLASHMQ is not set), null (`coremq-loadgen null-broker`, the floor: QoS 0
# scenarios on exact topics only). Every row shows loss (lost/expected) next to the rates, and the broker's CPU
# µs per delivered message.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
BROKER_CPU=0
LOADGEN_CPU=1
OUT="$ROOT/target/compare/$(date +%Y%m%d-%H%M%S)"
SCENARIOS=""
QUICK=0
ROUNDS=1
declare -a TARGETS=()      # name=host:port
declare -a START=()        # name or name=command
declare -A PORTS=()        # name -> port for started brokers

usage() { sed -n '2,12p' "$0"; cat <<'U'
Options:
  --start NAME[=CMD]     start a broker locally: mosquitto, coremq[-epoll|-uring], flashmq, null are known;
                         others need CMD ({port})
  --port NAME=PORT       port for a started broker (default: a free one from 18830 up)
  --broker-cpu LIST      taskset CPU list for started brokers (default 0)
  --loadgen-cpu LIST     taskset CPU list for the load generator (default 1)
  --scenarios FILE       one loadgen argument list per line (# comments); default: built-in list
  --rounds N             run every scenario N times, brokers alternating (default 1)
  --quick                1-2 s per scenario (smoke test)
  --out DIR              where results go (default target/compare/DATE)
U
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --start) START+=("$2"); shift 2 ;;
    --port) PORTS["${2%%=*}"]="${2#*=}"; shift 2 ;;
    --broker-cpu) BROKER_CPU="$2"; shift 2 ;;
    --loadgen-cpu) LOADGEN_CPU="$2"; shift 2 ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *=*) TARGETS+=("$1"); shift ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ ${#TARGETS[@]} -eq 0 && ${#START[@]} -eq 0 ]]; then usage >&2; exit 2; fi

D=5; C=5000
if [[ $QUICK -eq 1 ]]; then D=1; C=500; fi
default_scenarios() {
  # conn first: the broker's RSS per connection is only meaningful on a freshly started broker.
  cat <<S
conn   --connections $C --connect-rate 5000 --duration 2
fanin  --publishers 10 --qos 0 --duration $D
fanin  --publishers 10 --qos 1 --duration $D
fanout --subscribers 10 --qos 0 --duration $D
pairs  --pairs 10 --qos 1 --duration $D
pairs  --pairs 10 --qos 0 --rate 10000 --duration $D
S
}

mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
if [[ -n "$SCENARIOS" ]]; then grep -v '^\s*\(#\|$\)' "$SCENARIOS" > "$OUT/scenarios.txt"; else default_scenarios > "$OUT/scenarios.txt"; fi

# LOADGEN / COREMQ: prebuilt binaries to use instead of building this tree's.
if [[ -z "${LOADGEN:-}" ]]; then
  echo "building coremq-loadgen (release)..." >&2
  (cd "$ROOT" && cargo build --release -q -p coremq-loadgen)
  LOADGEN="$ROOT/target/release/coremq-loadgen"
fi
TASKSET=()
if command -v taskset >/dev/null; then TASKSET=(taskset -c "$LOADGEN_CPU"); fi

# The FlashMQ binary: $FLASHMQ, else built once (into /tmp/flashmq) by the peers' build script.
flashmq_bin() {
  if [[ -n "${FLASHMQ:-}" ]]; then echo "$FLASHMQ"; return; fi
  local d s
  for d in "$ROOT/../shared/peers" "$ROOT/../../shared/peers"; do
    s="$d/build-flashmq.sh"
    if [[ -x "$s" ]]; then "$s" | tail -1; return; fi
  done
  echo "flashmq: set FLASHMQ=/path/to/flashmq (no shared/peers/build-flashmq.sh found)" >&2; exit 2
}

# A port nothing listens on, never the same twice in a run (a broker's port may linger after it stopped).
NEXT_PORT=18830
free_port() {
  local p=$NEXT_PORT
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  NEXT_PORT=$((p + 1))
  echo "$p"
}

BROKER_PID=""
stop_broker() {
  if [[ -n "$BROKER_PID" ]]; then
    kill "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
  fi
}
trap stop_broker EXIT INT TERM

# Starts broker $1 (name or name=command) on port $2; sets BROKER_PID.
start_broker() {
  local spec="$1" port="$2" name cmd conf
  name="${spec%%=*}"
  cmd=""; [[ "$spec" == *=* ]] && cmd="${spec#*=}"
  conf="$OUT/$name.conf"
  if [[ -z "$cmd" ]]; then
    case "$name" in
      mosquitto)
        # mosquitto's own queue bound (1000, as coremq's), TCP_NODELAY as coremq sets it.
        mosquitto_conf "$port" 1000 > "$conf"
        cmd="mosquitto -c {conf}" ;;
      coremq)
        rm -rf "$OUT/coremq-data"
        cmd="${COREMQ:-$ROOT/target/release/coremq} --listen 127.0.0.1:{port} --shards 1 --data-dir $OUT/coremq-data --log-level error" ;;
      coremq-epoll | coremq-uring)
        rm -rf "$OUT/$name-data"
        cmd="${COREMQ:-$ROOT/target/release/coremq} --io ${name#coremq-} --listen 127.0.0.1:{port} --shards 1 --data-dir $OUT/$name-data --log-level error" ;;
      flashmq)
        printf 'thread_count 1\nallow_anonymous true\nlog_file %s\nlisten {\n  protocol mqtt\n  port %s\n  inet4_bind_address 127.0.0.1\n}\n' \
          "$OUT/flashmq.log" "$port" > "$conf"
        cmd="$(flashmq_bin) --config-file {conf}" ;;
      null)
        cmd="$LOADGEN null-broker --listen 127.0.0.1:{port}" ;;
      *) echo "no built-in start command for $name: use --start $name='COMMAND {port}'" >&2; exit 2 ;;
    esac
  fi
  cmd="${cmd//\{port\}/$port}"; cmd="${cmd//\{conf\}/$conf}"
  echo "starting $name: taskset -c $BROKER_CPU $cmd" >&2
  # shellcheck disable=SC2086
  taskset -c "$BROKER_CPU" $cmd > "$OUT/$name.log" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$BROKER_PID" 2>/dev/null || { echo "$name exited; see $OUT/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$name did not listen on port $port within 10 s" >&2; exit 1
}

# Runs one scenario ($4) against $1 (label) at $2 (host:port), with an optional broker pid $3.
run_one() {
  local label="$1" addr="$2" pid="$3" line="$4"
  echo "== $label: $line  (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  local extra=()
  [[ -n "$pid" ]] && extra=(--broker-pid "$pid")
  # shellcheck disable=SC2086
  "${TASKSET[@]}" "$LOADGEN" $line --broker "$addr" --label "$label" --out "$RESULTS" --quiet "${extra[@]}" >&2 \
    || echo "   (failed: $label $line)" >&2
  sleep 1
}

# The null relay forwards QoS 0 on exact topics only: fanin (a wildcard) and QoS 1/2 would only time out.
null_can_run() { [[ "$1" != fanin* && "$1" != *"--qos 1"* && "$1" != *"--qos 2"* ]]; }

if [[ ${#START[@]} -gt 0 && "$(command -v mosquitto || true)" == "" ]]; then
  for spec in "${START[@]}"; do [[ "$spec" == mosquitto ]] && { echo "mosquitto is not installed" >&2; exit 2; }; done
fi
if [[ ${#START[@]} -gt 0 ]]; then
  [[ -n "${COREMQ:-}" ]] || (cd "$ROOT" && cargo build --release -q --bin coremq)
  for spec in "${START[@]}"; do [[ "$spec" == flashmq ]] && flashmq_bin >/dev/null; done
fi
mapfile -t LINES < "$OUT/scenarios.txt"
for round in $(seq "$ROUNDS"); do
  for line in "${LINES[@]}"; do
    for spec in "${START[@]}"; do
      name="${spec%%=*}"
      if [[ "$name" == null ]] && ! null_can_run "$line"; then continue; fi
      if [[ -n "${PORTS[$name]:-}" ]]; then port="${PORTS[$name]}"; else free_port > "$OUT/.port"; port="$(cat "$OUT/.port")"; NEXT_PORT=$((port + 1)); fi
      echo "-- round $round" >&2
      start_broker "$spec" "$port"
      run_one "$name" "127.0.0.1:$port" "$BROKER_PID" "$line"
      stop_broker
    done
    for t in "${TARGETS[@]}"; do
      run_one "${t%%=*}" "${t#*=}" "" "$line"
    done
  done
done

"$LOADGEN" table "$RESULTS" | tee "$OUT/table.txt"
"$LOADGEN" plot "$RESULTS" -o "$OUT/compare.png" --title "broker comparison ($(hostname), $(date +%F))" >&2
echo "results: $RESULTS, table: $OUT/table.txt, plot: $OUT/compare.png" >&2
