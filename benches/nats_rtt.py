#!/usr/bin/env python3
"""NATS cost on this machine, for docs/cluster.md: starts its own nats-server on a free loopback port (stopped by
its pid), then over the raw text protocol (no client library):
  - PING/PONG round trip (the floor: one server hop, no routing),
  - PUB -> MSG round trip through a subject subscription on a second connection (a cross-node publish is
    at least this: one hop into NATS and one out),
  - pipelined throughput: N messages published, counted arriving on the subscriber,
  - a JetStream key-value put (what recording client-id ownership at CONNECT costs), single node, R1.
Usage: benches/nats_rtt.py [--count 20000] [--size 64] [--server /usr/sbin/nats-server]
"""
import argparse
import os
import signal
import socket
import statistics
import subprocess
import shutil
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.line()  # INFO
        self.s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')

    def line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(1 << 16)
            if not d:
                raise EOFError
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n:
            self.buf += self.s.recv(1 << 16)
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def msg(self):
        """Next MSG's payload (skips PING by answering it)."""
        while True:
            line = self.line()
            if line.startswith(b"MSG "):
                n = int(line.split()[-1])
                d = self.exact(n + 2)
                return d[:-2]
            if line == b"PING":
                self.s.sendall(b"PONG\r\n")


def jetstream_kv_put(port, n):
    """A KV put is a JetStream publish to `$KV.<bucket>.<key>` acknowledged once stored: what a CONNECT would
    pay to record client-id ownership. The bucket is a stream with one message per subject (latest owner)."""
    c = Conn(port)
    c.s.sendall(b"SUB _INBOX.kv 9\r\n")
    cfg = (b'{"name":"KV_owners","subjects":["$KV.owners.>"],"max_msgs_per_subject":1,'
           b'"storage":"file","num_replicas":1,"discard":"new","allow_rollup_hdrs":true}')
    c.s.sendall(b"PUB $JS.API.STREAM.CREATE.KV_owners _INBOX.kv %d\r\n%s\r\n" % (len(cfg), cfg))
    reply = c.msg()
    assert b"error" not in reply, reply
    lat = []
    for i in range(n):
        t = time.perf_counter_ns()
        c.s.sendall(b"PUB $KV.owners.client-%d _INBOX.kv 6\r\nnode-1\r\n" % (i % 1000))
        ack = c.msg()
        lat.append((time.perf_counter_ns() - t) / 1000)
        assert b'"seq"' in ack, ack
    return lat


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--server", default="/usr/sbin/nats-server")
    a = ap.parse_args()
    port = free_port()
    store = tempfile.mkdtemp(prefix="nats-js-")
    srv = subprocess.Popen([a.server, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        pub, sub = Conn(port), Conn(port)
        sub.s.sendall(b"SUB cluster.x 1\r\nPING\r\n")
        assert sub.line() == b"PONG"
        payload = b"x" * a.size
        # PING/PONG round trip.
        rtt = []
        for _ in range(min(a.count, 5000)):
            t = time.perf_counter_ns()
            pub.s.sendall(b"PING\r\n")
            assert pub.line() == b"PONG"
            rtt.append((time.perf_counter_ns() - t) / 1000)
        # PUB on one connection -> MSG on the other.
        hop = []
        for _ in range(min(a.count, 5000)):
            t = time.perf_counter_ns()
            pub.s.sendall(b"PUB cluster.x %d\r\n%s\r\n" % (a.size, payload))
            sub.msg()
            hop.append((time.perf_counter_ns() - t) / 1000)
        # Pipelined: write everything, count arrivals.
        frame = b"PUB cluster.x %d\r\n%s\r\n" % (a.size, payload)
        t = time.perf_counter()
        batch = frame * 500
        sent = 0
        got = 0
        while sent < a.count:
            pub.s.sendall(batch)
            sent += 500
            # Keep the subscriber drained so NATS never marks it a slow consumer.
            while got < sent - 2000:
                sub.msg()
                got += 1
        while got < sent:
            sub.msg()
            got += 1
        secs = time.perf_counter() - t
        kv = jetstream_kv_put(port, min(a.count, 3000))
        print(f"nats-server {subprocess.run([a.server, '--version'], capture_output=True, text=True).stdout.strip()}")
        print(f"PING/PONG round trip  us: p50 {statistics.median(rtt):.1f}  p99 {pct(rtt, 0.99):.1f}  (n={len(rtt)})")
        print(f"PUB->MSG (2 conns)    us: p50 {statistics.median(hop):.1f}  p99 {pct(hop, 0.99):.1f}  (n={len(hop)})")
        print(f"pipelined {sent} x {a.size} B: {sent / secs:,.0f} msg/s (python client bound)")
        print(f"JetStream KV put (R1, file, acked) us: p50 {statistics.median(kv):.1f}  p99 {pct(kv, 0.99):.1f}  (n={len(kv)})")
    finally:
        os.kill(srv.pid, signal.SIGTERM)
        srv.wait()
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
