#!/usr/bin/python3
"""Bar chart of bench/run_precision_bench.sh's results.tsv: speed-up over Kiln FP32 per model and
variant (higher is faster).  usage: make_precision_chart.py RESULTS.tsv OUT.png [--title T]"""
import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("tsv")
ap.add_argument("png")
ap.add_argument("--title", default="Kiln reduced precision vs ONNX Runtime, CPU")
a = ap.parse_args()
rows = list(csv.DictReader(open(a.tsv), delimiter="\t"))
models = list(dict.fromkeys(r["model"] + " b" + r["batch"] for r in rows))
variants = list(dict.fromkeys(r["variant"] for r in rows))
base = {r["model"] + " b" + r["batch"]: float(r["median_ms"]) for r in rows if r["variant"] == "Kiln FP32"}
fig, ax = plt.subplots(figsize=(10, 4.5))
top = 0.0
width = 0.8 / len(variants)
for k, v in enumerate(variants):
    xs, ys = [], []
    for i, m in enumerate(models):
        for r in rows:
            if r["model"] + " b" + r["batch"] == m and r["variant"] == v:
                xs.append(i + k * width)
                ys.append(base[m] / float(r["median_ms"]))
    ax.bar(xs, ys, width, label=v)
    top = max([top] + ys)
    for x, y in zip(xs, ys):
        ax.text(x, y + 0.05, f"{y:.1f}x", ha="center", fontsize=7)
ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))])
ax.set_xticklabels(models)
ax.set_ylabel("speed-up over Kiln FP32 (median latency)")
ax.axhline(1.0, color="gray", lw=0.8)
ax.set_title(a.title)
ax.set_ylim(0, top * 1.45)
ax.legend(fontsize=8, loc="upper center", ncol=3)
fig.tight_layout()
fig.savefig(a.png, dpi=120)
print("wrote", a.png)
