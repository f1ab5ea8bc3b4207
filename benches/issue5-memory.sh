#!/usr/bin/env bash
# Issue 5 memory and recovery run: queue N (default 1M) 100-byte QoS 1 messages for one offline persistent
# session, report broker RSS before/after (offline queues keep only references; bodies live in the log), restart
# the broker and report recovery time and RSS, then drain the session and check nothing was lost or duplicated.
#
#   cargo build --release --workspace && benches/issue5-memory.sh          # N=200000 for a quicker run
set -eu
# shellcheck source=benches/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT="${PORT:-18853}"
N="${N:-1000000}"
DATA="$(mktemp -d)"
LOG="$DATA.log"
rss() { awk '/VmRSS/ {print $2" KiB"}' "/proc/$BPID/status"; }
start() {
  "$CQ" --listen "127.0.0.1:$PORT" --shards 1 --data-dir "$DATA" --max-queued-messages $((N + N / 10)) --log-level info >"$LOG" 2>&1 &
  BPID=$!
  for _ in $(seq 100); do grep -q "shard running" "$LOG" 2>/dev/null && break; sleep 0.1; done
}
trap 'stop_broker; rm -rf "$DATA" "$LOG"' EXIT

start
"$LG" sub --broker "127.0.0.1:$PORT" --filter 'mem/#' --qos 1 --persistent --client-prefix memsub --duration 1 --quiet >/dev/null
echo "RSS with the session offline, queue empty: $(rss)"
"$LG" pub --broker "127.0.0.1:$PORT" --publishers 4 --qos 1 --size 100 --count "$N" --topic 'mem/%i' --duration 600 --client-prefix mempub --quiet | grep -E "sent|lost"
sleep 1
echo "RSS with $N messages queued: $(rss)"
grep -E "^(Rss|Anonymous|Pss_File)" "/proc/$BPID/smaps_rollup"
echo "log on disk: $(du -sh "$DATA" | cut -f1)"
stop_broker
start
sed 's/\x1b\[[0-9;]*m//g' "$LOG" | grep -o "log recovered.*"
echo "RSS after recovery: $(rss)"
"$LG" sub --broker "127.0.0.1:$PORT" --filter 'mem/#' --qos 1 --persistent --client-prefix memsub --expected "$N" --duration 120 --quiet | grep -E "received|lost"
echo "RSS after draining: $(rss)"
