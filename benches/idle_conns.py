#!/usr/bin/env python3
"""Open N idle MQTT connections (plain TCP, or WebSocket with --ws PATH), each through CONNECT/CONNACK, and print
the broker's RSS growth per connection as JSON. Used by benches/security.sh for WebSocket vs plain TCP, since the
load generator speaks MQTT over TCP and TLS only.

  idle_conns.py --port P --pid BROKER_PID --connections 15000 [--ws /mqtt] [--sources 127.0.0.2-127.0.0.3]
"""
import argparse, json, os, selectors, socket, struct, sys, time

def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS for %d" % pid)

def connect_packet(cid):
    cid = cid.encode()
    # MQTT 3.1.1, clean session, keep-alive 0 (no pings while idle).
    var = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack(">H", len(cid)) + cid
    return b"\x10" + bytes([len(var)]) + var

def ws_frame(payload, mask=b"\x11\x22\x33\x44"):
    assert len(payload) < 126
    return b"\x82" + bytes([0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--connections", type=int, default=15000)
    ap.add_argument("--ws", default=None, help="WebSocket path, e.g. /mqtt")
    ap.add_argument("--sources", default="127.0.0.2-127.0.0.3")
    ap.add_argument("--hold", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=200)
    a = ap.parse_args()
    lo, _, hi = a.sources.partition("-")
    base, first = lo.rsplit(".", 1)
    last = int(hi.rsplit(".", 1)[1]) if hi else int(first)
    sources = ["%s.%d" % (base, i) for i in range(int(first), last + 1)]
    before = rss_kib(a.pid)
    sel = selectors.DefaultSelector()
    socks, ok, failed = [], 0, 0
    t0 = time.monotonic()
    for start in range(0, a.connections, a.batch):
        pending = {}
        for i in range(start, min(start + a.batch, a.connections)):
            s = socket.socket()
            s.setsockopt(socket.SOL_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
            s.bind((sources[i % len(sources)], 0))
            s.connect(("127.0.0.1", a.port))
            pkt = connect_packet("idle-%d" % i)
            if a.ws:
                head = ("GET %s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                        "Sec-WebSocket-Protocol: mqtt\r\n\r\n" % a.ws).encode()
                s.sendall(head + ws_frame(pkt))
            else:
                s.sendall(pkt)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
            pending[s] = b""
            socks.append(s)
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                buf = pending.get(s, b"") + data
                done = buf.endswith(b"\x20\x02\x00\x00") if data else True
                if not data or done:
                    sel.unregister(s)
                    del pending[s]
                    if data and (not a.ws or buf.startswith(b"HTTP/1.1 101")):
                        ok += 1
                    else:
                        failed += 1
                else:
                    pending[s] = buf
        for s in pending:
            sel.unregister(s)
            failed += 1
    secs = time.monotonic() - t0
    time.sleep(a.hold)
    after = rss_kib(a.pid)
    print(json.dumps({"kind": "ws" if a.ws else "tcp", "connected": ok, "failed": failed, "connect_secs": secs,
                      "rss_kib_before": before, "rss_kib_after": after,
                      "bytes_per_conn": (after - before) * 1024.0 / max(ok, 1)}))
    for s in socks:
        s.close()

if __name__ == "__main__":
    main()
