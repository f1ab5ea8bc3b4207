#!/usr/bin/env bash
# Syscalls and server CPU per echoed message: the io_uring backend (src/server/uring.rs) against today's epoll
# path (epoll_wait + recv + send, as shard_loop.rs does), backends alternating. CONNS connections each send one
# MSG-byte message per round and wait for every echo. Counts come from perf's syscall tracepoints on the server
# process only (the client is a separate process). Needs perf (Debian linux-perf).
#
#   cargo build --example echo_syscalls && benches/uring-echo-syscalls.sh 100 2000
#   BACKENDS="uring-sqpoll uring epoll" benches/uring-echo-syscalls.sh 10 5000
set -eu
conns=${1:-100}
rounds=${2:-2000}
msg=${MSG:-16}
bin=${BIN:-target/debug/examples/echo_syscalls}
total=$((conns * rounds * msg))
msgs=$((conns * rounds))
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for be in ${BACKENDS:-uring epoll uring epoll}; do
  port=$((20000 + $(od -An -N2 -tu2 /dev/urandom) % 20000))
  perf stat -x, -e raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,task-clock -o "$out" -- \
    "$bin" server "$be" "$port" "$total" 2>/dev/null &
  server=$!
  sleep 0.5
  "$bin" client "$port" "$conns" "$rounds" "$msg" 2>/dev/null
  wait "$server"
  sys=$(grep raw_syscalls "$out" | cut -d, -f1)
  enter=$(grep io_uring_enter "$out" | cut -d, -f1)
  cpu=$(grep task-clock "$out" | cut -d, -f1)
  awk -v be="$be" -v c="$conns" -v m="$msgs" -v s="$sys" -v e="$enter" -v cpu="$cpu" 'BEGIN {
    printf "%-13s conns=%d msgs=%d syscalls=%d (io_uring_enter %d) per_msg=%.3f server_cpu_us_per_msg=%.2f\n",
      be, c, m, s, e, s / m, cpu * 1000 / m }'
done
