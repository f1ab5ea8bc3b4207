#!/usr/bin/env python3
"""Issue 19's comparison table (markdown) from a `benches/compare.sh` results.jsonl: one column per broker, one row
per measure, every round shown ("a, b"), loss beside each rate.

    benches/readme_table.py target/compare/DATE/results.jsonl > table.md
"""
import json
import sys
from collections import defaultdict

ORDER = ["coremq", "flashmq", "mosquitto", "null"]
NAMES = {"coremq": "coremq", "flashmq": "FlashMQ", "mosquitto": "mosquitto", "null": "null relay"}


def rate(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def latency(us):
    if us >= 1e6:
        return f"{us / 1e6:.1f} s"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.0f} µs"


def loss(r):
    exp = r.get("expected") or 0
    return f"{100.0 * r.get('lost', 0) / exp:.0f}%" if exp else "-"


def label(r):
    s, q = r["scenario"], r["qos"]
    if s == "pairs":
        return f"{r['publishers']} pairs QoS {q}"
    if s == "fanout":
        return f"1 → {r['subscribers']} fan-out QoS {q}"
    if s == "fanin":
        return f"{r['publishers']} → 1 fan-in QoS {q}"
    if s == "conn":
        return f"{r['connections']:,} idle connections"
    return f"{s} QoS {q}"


def main(path):
    runs = defaultdict(list)  # (label, broker) -> [result]
    labels = []
    brokers = set()
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        lab = label(r)
        if lab not in labels:
            labels.append(lab)
        brokers.add(r["broker"])
        runs[(lab, r["broker"])].append(r)
    cols = [b for b in ORDER if b in brokers] + sorted(brokers - set(ORDER))

    def cell(lab, b, f):
        rs = runs.get((lab, b), [])
        vals = [f(r) for r in rs]
        vals = [v for v in vals if v is not None]
        return ", ".join(vals) if vals else "-"

    print("| scenario | " + " | ".join(NAMES.get(b, b) for b in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for lab in labels:
        if "idle connections" in lab:
            print(f"| {lab}, broker RSS per connection | " + " | ".join(
                cell(lab, b, lambda r: f"{r['connect']['broker_rss_bytes_per_conn']:.0f} B"
                     if r.get("connect", {}).get("broker_rss_bytes_per_conn") else None) for b in cols) + " |")
            continue
        print(f"| {lab}, delivered/s (loss) | " + " | ".join(
            cell(lab, b, lambda r: f"{rate(r['recv_rate'])} ({loss(r)})") for b in cols) + " |")
        print(f"| {lab}, p50 latency | " + " | ".join(
            cell(lab, b, lambda r: latency(r["latency_us"]["p50"]) if r["latency_us"]["count"] else None)
            for b in cols) + " |")
        print(f"| {lab}, broker CPU µs per delivered message | " + " | ".join(
            cell(lab, b, lambda r: f"{r['broker_cpu_us_per_msg']:.2f}" if r.get("broker_cpu_us_per_msg") else None)
            for b in cols) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
