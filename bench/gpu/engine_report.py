#!/usr/bin/env python3
"""Writes the GPU engine results page's table and chart from bench/gpu/engine_bench.sh's files.

Usage: engine_report.py DIR/engines OUT.png   (prints the Markdown table)
"""
import json
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, png = sys.argv[1], sys.argv[2]
tags = ["resnet50_32", "resnet50_256", "mobilenet_v2_256", "bert_1", "bert_32"]
rows = []
for tag in tags:
    e = json.load(open(f"{src}/bench_{tag}_engine.json"))
    o = json.load(open(f"{src}/bench_{tag}_onnx.json"))
    b1 = open(f"{src}/build_{tag}_1.txt").read()
    b2 = open(f"{src}/build_{tag}_2.txt").read()
    total = lambda t: float(re.search(r"total ([0-9.]+) ms", t).group(1))  # noqa: E731
    distinct = re.search(r"\((\d+) distinct\)", b1).group(1)
    rows.append(dict(tag=tag, build1=total(b1), build2=total(b2), distinct=int(distinct),
                     onnx_setup=o["setup_ms"]["passes"] + o["setup_ms"]["compile"], onnx_timed=o["tactics"]["timed"],
                     load=e["setup_ms"]["compile"], recorded=e["tactics"]["recorded"], timed=e["tactics"]["timed"],
                     onnx_ms=o["gpu_compute_ms"]["median"], engine_ms=e["gpu_compute_ms"]["median"]))

print("| model, batch | kiln build (empty cache) | kiln build (cache) | bench from ONNX: passes + kernels | bench from engine: load | tuned kernels (distinct) | GPU compute, ONNX build | GPU compute, engine |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    name, b = r["tag"].rsplit("_", 1)
    print(f"| {name} {b} | {r['build1'] / 1000:.2f} s | {r['build2'] / 1000:.2f} s | {r['onnx_setup'] / 1000:.2f} s "
          f"({r['onnx_timed']} timed) | **{r['load'] / 1000:.2f} s** ({r['timed']} timed, {r['recorded']} recorded) | "
          f"{r['recorded']} ({r['distinct']}) | {r['onnx_ms']:.3f} ms | {r['engine_ms']:.3f} ms |")

fig, ax = plt.subplots(figsize=(8, 3.6))
x = range(len(rows))
ax.bar([i - 0.2 for i in x], [r["onnx_setup"] / 1000 for r in rows], 0.4, label="from ONNX (passes + kernels timed)")
ax.bar([i + 0.2 for i in x], [r["load"] / 1000 for r in rows], 0.4, label="from a GPU engine (recorded tactics)")
ax.set_xticks(list(x))
ax.set_xticklabels([r["tag"].replace("_", " ") for r in rows])
ax.set_ylabel("seconds before the first run")
ax.set_title("Kiln on an H100: program ready from ONNX vs from a GPU engine file")
ax.legend()
fig.tight_layout()
fig.savefig(png, dpi=110)
