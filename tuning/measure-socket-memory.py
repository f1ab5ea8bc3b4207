#!/usr/bin/env python3
"""Measure the kernel memory of idle established TCP sockets on this kernel.

Opens N loopback connection pairs (2N sockets), registers every socket with epoll
the way an event-driven broker does, and reports the slab growth per socket from
/proc/slabinfo (needs root). The result is the KERNEL_SOCK_BYTES constant that
tuning/check.sh uses (3900 B on Linux 6.18).

Bounded: at most (RLIMIT_NOFILE - 64) / 2 pairs, and it gives up after --timeout
seconds. Other activity on the machine changes slab too: run it a few times and
read the per-cache rows, which are less noisy than the total. To keep the host's
network out of it, run it in a private network namespace:

    unshare -n sh -c 'ip link set lo up && tuning/measure-socket-memory.py --pairs 5000'
"""

import argparse
import resource
import select
import socket
import sys
import time

CACHES = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq")


def slab_bytes():
    """Bytes held per slab cache (num_objs x objsize)."""
    out = {}
    with open("/proc/slabinfo") as f:
        for line in f:
            if line.startswith(("slabinfo", "#")):
                continue
            p = line.split()
            out[p[0]] = int(p[2]) * int(p[3])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=4000)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    max_pairs = (hard - 64) // 2
    if args.pairs < 1 or args.pairs > max_pairs:
        sys.exit(f"--pairs must be 1..{max_pairs} (open files limit {hard})")
    try:
        before = slab_bytes()
    except PermissionError:
        sys.exit("/proc/slabinfo is not readable: run as root")

    deadline = time.monotonic() + args.timeout
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(min(args.pairs, 4096))
    addr = listener.getsockname()
    ep = select.epoll()
    socks = []
    for _ in range(args.pairs):
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {len(socks) // 2} pairs")
        c = socket.create_connection(addr)
        s, _ = listener.accept()
        for x in (c, s):
            ep.register(x.fileno(), select.EPOLLIN)
            socks.append(x)
    time.sleep(0.5)  # let RCU-freed objects settle
    after = slab_bytes()

    n = len(socks)
    total = sum(after.values()) - sum(before.values())
    print(f"{args.pairs} established pairs = {n} idle sockets, each in epoll")
    for cache in CACHES:
        d = after.get(cache, 0) - before.get(cache, 0)
        print(f"  {cache:<18} {d / n:8.0f} B/socket")
    named = sum(after.get(c, 0) - before.get(c, 0) for c in CACHES)
    print(f"  {'named caches':<18} {named / n:8.0f} B/socket")
    print(f"  {'all slab caches':<18} {total / n:8.0f} B/socket (includes unrelated activity)")
    others = sorted(
        ((after.get(c, 0) - before.get(c, 0), c) for c in after if c not in CACHES),
        reverse=True,
    )[:4]
    print("  largest other growth: " + ", ".join(f"{c} {d / n:.0f} B" for d, c in others))
    for x in socks:
        x.close()
    listener.close()
    ep.close()


if __name__ == "__main__":
    main()
