#!/usr/bin/env bash
# Security and operations measurements (issues 14 and 16), coremq beside mosquitto in one run, brokers alternated
# round by round, each run on a fresh broker. Results: one line per run on stdout (and $OUT as JSON lines), then
# medians and ratios.
#
#   cargo build --release --workspace && benches/security.sh [connects|acl|idle|tls|handshakes|all]
#
# connects    CONNECTs/s with no password file, a $7$ file of 101 iterations and one of 100,000 (one user per
#             client, so coremq's verified-credential cache cannot answer; plus one shared user, where it does)
# acl         QoS 0 pairs, broker CPU per message at a fixed rate and the highest rate, no ACL vs 1,000 rules
# idle        broker RSS per idle connection at $IDLE (15,000) connections: TCP, TLS (both brokers), WebSocket
# tls         throughput, plain vs TLS, QoS 0 and QoS 1 pairs at the highest rate
# handshakes  a burst of $BURST (5,000) TLS connects: time until all are connected
#
# Brokers: coremq with 1 shard, not pinned (the load generator shares the 2 CPUs); mosquitto (single-threaded)
# with benches/lib.sh's config. Certificates: an ECDSA P-256 CA and server certificate made with openssl, the
# same files for both brokers. Stays under ~19k fds per process (ulimit 20k): clients bind 127.0.0.2-127.0.0.3.
set -u
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WHAT="${1:-all}"
PORT="${PORT:-18930}"
ROUNDS="${ROUNDS:-3}"
IDLE="${IDLE:-15000}"
BURST="${BURST:-5000}"
OUT="${OUT:-/tmp/coremq-security-$$.jsonl}"
MOSQ="${MOSQ:-/usr/sbin/mosquitto}"
ulimit -n 20000 2>/dev/null || true
W="$(mktemp -d)"
DATA="$W/data"
trap 'stop_broker; rm -rf "$W"' EXIT
: > "$OUT"

# mosquitto drops root privileges to its own user: it must be able to read every file made here.
chmod 755 "$W"
umask 022

# --- certificates and files -------------------------------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/ca.key" -out "$W/ca.crt" \
  -subj "/CN=bench CA" -days 30 -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/server.key" -out "$W/server.csr" \
  -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > "$W/ext"
openssl x509 -req -in "$W/server.csr" -CA "$W/ca.crt" -CAkey "$W/ca.key" -CAcreateserial -days 30 \
  -extfile "$W/ext" -out "$W/server.crt" 2>/dev/null
chmod 644 "$W"/*

# mkpw FILE ITERATIONS: users lg-c0..lg-c19999 and "same", password "pw", one $7$ hash (same salt) for all:
# each user is still verified on its own (no broker can tell the hashes are equal without computing them).
mkpw() {
  python3 - "$1" "$2" <<'PY'
import base64, hashlib, os, sys
path, it = sys.argv[1], int(sys.argv[2])
salt = os.urandom(12)
h = hashlib.pbkdf2_hmac("sha512", b"pw", salt, it)
line = "$7$%d$%s$%s" % (it, base64.b64encode(salt).decode(), base64.b64encode(h).decode())
with open(path, "w") as f:
    for i in range(20000):
        f.write("lg-c%d:%s\n" % (i, line))
    f.write("same:%s\n" % line)
PY
}
mkpw "$W/pw101" 101
mkpw "$W/pw100k" 100000

# 1,000 ACL rules for anonymous clients: 900 topic rules with wildcards on other trees, 99 patterns, and the one
# that grants the load generator's topics (lg/...). mosquitto reads the same file.
{
  for i in $(seq 1 900); do echo "topic readwrite fleet/$i/+/telemetry/#"; done
  for i in $(seq 1 99); do echo "pattern readwrite devices/%c/$i/#"; done
  echo "topic readwrite lg/#"
} > "$W/acl1000"

# start BROKER MODE: a fresh broker on $PORT, pid in BPID. BROKER: coremq | mosquitto. MODE: plain | pw101 |
# pw100k | acl | tls | ws.
start() {
  local broker=$1 mode=$2
  rm -rf "$DATA"
  if [ "$broker" = coremq ]; then
    local c="$W/coremq.toml"
    printf 'listen = ["127.0.0.1:%s"]\nshards = 1\npin = false\npersistence = false\nsys_interval = 0\n' "$PORT" > "$c"
    case $mode in
      pw101|pw100k) printf 'password_file = "%s"\n' "$W/$mode" >> "$c" ;;
      acl) printf 'acl_file = "%s"\n' "$W/acl1000" >> "$c" ;;
      tls) printf '[[listeners]]\naddress = "127.0.0.1:%s"\ncertfile = "%s"\nkeyfile = "%s"\n' \
             "$((PORT + 1))" "$W/server.crt" "$W/server.key" >> "$c" ;;
      ws) printf '[[listeners]]\naddress = "127.0.0.1:%s"\nprotocol = "websockets"\n' "$((PORT + 1))" >> "$c" ;;
    esac
    "$CQ" --config "$c" --log-level error >/dev/null 2>&1 &
  else
    local c="$W/mosquitto.conf"
    mosquitto_conf "$PORT" > "$c"
    case $mode in
      pw101|pw100k) printf 'password_file %s\nallow_anonymous false\n' "$W/$mode" >> "$c" ;;
      acl) printf 'acl_file %s\n' "$W/acl1000" >> "$c" ;;
      tls) printf 'listener %s 127.0.0.1\ncertfile %s\nkeyfile %s\n' "$((PORT + 1))" "$W/server.crt" "$W/server.key" >> "$c" ;;
    esac
    "$MOSQ" -c "$c" >/dev/null 2>&1 &
  fi
  BPID=$!
  sleep 0.8
}

# lg LABEL ARGS...: one load generator run against this broker (pid $BPID); its JSON line to $OUT, and on stdout.
lg() {
  loadgen_line "$@" --quiet
}

# field JSON PATH...: print fields of a JSON line.
field() {
  python3 -c '
import json, sys
v = json.loads(sys.argv[1])
out = []
for p in sys.argv[2:]:
    x = v
    for k in p.split("."):
        x = x.get(k) if isinstance(x, dict) else None
    out.append("%.1f" % x if isinstance(x, float) else str(x))
print(" ".join(out))' "$@"
}

summary() {
  # summary TAG: medians per label of the metric lines "TAG label value" collected in $W/sum.
  python3 - "$W/sum" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    tag, label, value = line.split()
    rows[(tag, label)].append(float(value))
for (tag, label), vs in sorted(rows.items()):
    print("median %-22s %-28s %10.1f  (runs: %s)" % (tag, label, statistics.median(vs), " ".join("%.1f" % v for v in vs)))
PY
}
: > "$W/sum"
note() { echo "$1 $2 $3" >> "$W/sum"; echo "  $1 $2 = $3"; }

connects() {
  echo "== CONNECTs per second (conn, concurrency 64, one user per client unless 'same user')"
  for r in $(seq 1 "$ROUNDS"); do
    for mode in plain pw101 pw100k; do
      for broker in coremq mosquitto; do
        local n=2000 auth=()
        case $mode in
          pw101) auth=(--username %c --password pw) ;;
          pw100k) n=200; auth=(--username %c --password pw) ;;
        esac
        start "$broker" "$mode"
        local j; j=$(lg "$broker-$mode" conn --broker "127.0.0.1:$PORT" --connections "$n" --connect-concurrency 64 \
          --duration 0.3 --client-prefix lg "${auth[@]}")
        stop_broker
        read -r rate ok failed <<< "$(field "$j" connect.connect_rate connect.connected connect.failed)"
        echo "round $r $broker $mode: $ok/$n connected ($failed failed), $rate connects/s"
        note connects_per_s "$broker-$mode" "$rate"
      done
      if [ "$mode" = pw100k ]; then
        start coremq pw100k
        j=$(lg "coremq-pw100k-same" conn --broker "127.0.0.1:$PORT" --connections 2000 --connect-concurrency 64 \
          --duration 0.3 --client-prefix lg --username same --password pw)
        stop_broker
        read -r rate ok failed <<< "$(field "$j" connect.connect_rate connect.connected connect.failed)"
        echo "round $r coremq pw100k, one shared user (cache): $ok/2000 connected ($failed failed), $rate connects/s"
        note connects_per_s coremq-pw100k-same-user "$rate"
      fi
    done
  done
}

acl() {
  echo "== QoS 0 pairs: no ACL vs 1,000 rules"
  for r in $(seq 1 "$ROUNDS"); do
    for broker in coremq mosquitto; do
      for mode in plain acl; do
        start "$broker" "$mode"
        local j; j=$(lg "$broker-$mode" pairs --broker "127.0.0.1:$PORT" --pairs 10 --qos 0 --rate 20000 --duration 5 --warmup 1)
        read -r recv cpu lost <<< "$(field "$j" recv_rate broker_cpu_us_per_msg lost)"
        j=$(lg "$broker-$mode-max" pairs --broker "127.0.0.1:$PORT" --pairs 10 --qos 0 --rate 0 --duration 5 --warmup 1)
        read -r maxrecv maxlost <<< "$(field "$j" recv_rate lost)"
        stop_broker
        echo "round $r $broker $mode: at 20k/s ${cpu} us CPU/msg (recv $recv/s, lost $lost); max recv $maxrecv/s (lost $maxlost)"
        note acl_cpu_us_per_msg "$broker-$mode" "$cpu"
        note acl_max_recv_per_s "$broker-$mode" "$maxrecv"
      done
    done
  done
}

idle() {
  echo "== RSS per idle connection at $IDLE"
  for r in $(seq 1 "$ROUNDS"); do
    for broker in coremq mosquitto; do
      for mode in plain tls; do
        start "$broker" "$mode"
        local port=$PORT tls=()
        [ "$mode" = tls ] && { port=$((PORT + 1)); tls=(--tls --cafile "$W/ca.crt"); }
        local j; j=$(lg "$broker-$mode-idle" conn --broker "127.0.0.1:$port" --connections "$IDLE" --connect-rate 3000 \
          --duration 5 --source 127.0.0.2-127.0.0.3 "${tls[@]}")
        stop_broker
        read -r bpc ok <<< "$(field "$j" connect.broker_rss_bytes_per_conn connect.connected)"
        echo "round $r $broker $mode: $ok connected, $bpc B/conn"
        note idle_bytes_per_conn "$broker-$mode" "$bpc"
      done
    done
    for mode in plain ws; do
      start coremq "$mode"
      local port=$PORT ws=()
      [ "$mode" = ws ] && { port=$((PORT + 1)); ws=(--ws /mqtt); }
      local j; j=$(python3 "$ROOT/benches/idle_conns.py" --port "$port" --pid "$BPID" --connections "$IDLE" "${ws[@]}")
      stop_broker
      echo "$j" >> "$OUT"
      read -r bpc ok <<< "$(field "$j" bytes_per_conn connected)"
      echo "round $r coremq $mode (python client): $ok connected, $bpc B/conn"
      note idle_bytes_per_conn "coremq-$mode-py" "$bpc"
    done
  done
}

tls() {
  echo "== throughput, plain vs TLS (10 pairs, highest rate, 5 s)"
  for r in $(seq 1 "$ROUNDS"); do
    for broker in coremq mosquitto; do
      start "$broker" tls
      for qos in 0 1; do
        for mode in plain tls; do
          local port=$PORT t=()
          [ "$mode" = tls ] && { port=$((PORT + 1)); t=(--tls --cafile "$W/ca.crt"); }
          local j; j=$(lg "$broker-$mode-q$qos" pairs --broker "127.0.0.1:$port" --pairs 10 --qos "$qos" --rate 0 \
            --duration 5 --warmup 1 "${t[@]}")
          read -r recv cpu lost p50 <<< "$(field "$j" recv_rate broker_cpu_us_per_msg lost latency_us.p50)"
          echo "round $r $broker $mode QoS $qos: recv $recv/s, $cpu us CPU/msg, p50 $p50 us, lost $lost"
          note "tls_recv_per_s_q$qos" "$broker-$mode" "$recv"
          note "tls_cpu_us_per_msg_q$qos" "$broker-$mode" "$cpu"
        done
      done
      stop_broker
    done
  done
}

handshakes() {
  echo "== burst of $BURST TLS connects (concurrency 256, no pacing)"
  for r in $(seq 1 "$ROUNDS"); do
    for broker in coremq mosquitto; do
      start "$broker" tls
      local j; j=$(lg "$broker-burst" conn --broker "127.0.0.1:$((PORT + 1))" --connections "$BURST" \
        --connect-concurrency 256 --duration 0.3 --source 127.0.0.2-127.0.0.3 --tls --cafile "$W/ca.crt")
      stop_broker
      read -r secs rate ok p99 <<< "$(field "$j" connect.connect_secs connect.connect_rate connect.connected connect.latency_ms.p99)"
      echo "round $r $broker: $ok/$BURST in $secs s ($rate connects/s, p99 $p99 ms)"
      note burst_secs "$broker" "$secs"
      note burst_connects_per_s "$broker" "$rate"
    done
  done
}

case $WHAT in
  connects) connects ;;
  acl) acl ;;
  idle) idle ;;
  tls) tls ;;
  handshakes) handshakes ;;
  all) connects; acl; idle; tls; handshakes ;;
  *) echo "unknown: $WHAT" >&2; exit 2 ;;
esac
chmod 644 "$W"/* 2>/dev/null
summary
echo "JSON lines: $OUT"
