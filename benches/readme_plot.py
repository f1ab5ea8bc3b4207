#!/usr/bin/env python3
"""Issue 19's comparison as one picture for the README, from a `benches/compare.sh` results.jsonl: per scenario,
each broker's delivered messages/s (median of the rounds; a hatched bar lost messages, the loss written on it),
broker CPU µs per delivered message, and p50 latency. Needs matplotlib (`pip install matplotlib`); the loadgen's
own `plot` draws every run's latency curve instead.

    benches/readme_plot.py target/compare/DATE/results.jsonl docs/compare.png "title"
"""
import json
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

ORDER = ["coremq", "flashmq", "mosquitto", "null"]
NAMES = {"coremq": "coremq", "flashmq": "FlashMQ", "mosquitto": "mosquitto", "null": "null relay (floor)"}
COLORS = {"coremq": "#d62728", "flashmq": "#2ca02c", "mosquitto": "#1f77b4", "null": "#7f7f7f"}


def label(r):
    s, q = r["scenario"], r["qos"]
    return {
        "pairs": f"{r['publishers']} pairs\nQoS {q}",
        "fanout": f"1 → {r['subscribers']}\nfan-out QoS {q}",
        "fanin": f"{r['publishers']} → 1\nfan-in QoS {q}",
    }.get(s, f"{s} QoS {q}")


def main(path, out, title):
    runs = defaultdict(list)
    labels, brokers = [], set()
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        if r["scenario"] == "conn":
            continue
        lab = label(r)
        if lab not in labels:
            labels.append(lab)
        brokers.add(r["broker"])
        runs[(lab, r["broker"])].append(r)
    cols = [b for b in ORDER if b in brokers]
    fig, axes = plt.subplots(3, 1, figsize=(12, 11), sharex=True)
    width = 0.8 / len(cols)

    def med(rs, f):
        vals = [v for v in (f(r) for r in rs) if v is not None]
        return statistics.median(vals) if vals else None

    for i, b in enumerate(cols):
        xs, rate, cpu, p50, lossy = [], [], [], [], []
        for j, lab in enumerate(labels):
            rs = runs.get((lab, b))
            if not rs:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            rate.append(med(rs, lambda r: r["recv_rate"]) or 0)
            cpu.append(med(rs, lambda r: r.get("broker_cpu_us_per_msg")))
            p50.append(med(rs, lambda r: r["latency_us"]["p50"] / 1000 if r["latency_us"]["count"] else None))
            lossy.append(med(rs, lambda r: 100.0 * r["lost"] / r["expected"] if r.get("expected") else 0.0))
        bars = axes[0].bar(xs, rate, width, color=COLORS.get(b), label=NAMES.get(b, b))
        for bar, loss in zip(bars, lossy):
            if loss and loss >= 0.5:
                bar.set_hatch("//")
                bar.set_alpha(0.55)
                axes[0].annotate(f"{loss:.0f}% lost", (bar.get_x() + bar.get_width() / 2, max(bar.get_height(), 1e3)),
                                 ha="center", va="bottom", fontsize=7, rotation=90)
        axes[1].bar([x for x, c in zip(xs, cpu) if c], [c for c in cpu if c], width, color=COLORS.get(b))
        axes[2].bar([x for x, p in zip(xs, p50) if p], [p for p in p50 if p], width, color=COLORS.get(b))
    axes[0].set_yscale("log")
    axes[0].set_ylabel("delivered msg/s (log)")
    # Legend from plain patches: a broker's first bar may be hatched (lossy).
    handles = [Patch(color=COLORS.get(b), label=NAMES.get(b, b)) for b in cols]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="lost ≥ 0.5%"))
    axes[0].legend(handles=handles, loc="upper right", fontsize=9)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("broker CPU µs per\ndelivered msg (log)")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("p50 latency ms (log)")
    for ax in axes:
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[2].set_xticks(range(len(labels)))
    axes[2].set_xticklabels(labels)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
