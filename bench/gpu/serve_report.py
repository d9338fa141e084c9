#!/usr/bin/env python3
"""Turns one GPU serving run (bench/gpu/serve_bench.sh OUT) into a results page and a chart:
throughput, latency and failures per client count for each placement (one GPU, two GPUs), the
scaling of the second placement over the first, and the batches each GPU ran.

    python3 bench/gpu/serve_report.py OUT bench/results/DATE-gpu-serve [--device TEXT] [--command TEXT]
writes DATE-gpu-serve.md and DATE-gpu-serve.png (the chart needs matplotlib).
"""
import argparse
import json
import os
import re


def per_gpu_batches(path):
    """GPU -> (batches, rows) from a metrics scrape."""
    out = {}
    if not os.path.exists(path):
        return out
    for m in re.finditer(r'kiln_gpu_(execution|inference)_count\{[^}]*gpu="(\d+)"\} (\d+)', open(path).read()):
        out.setdefault(int(m.group(2)), {})[m.group(1)] = int(m.group(3))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--device", default="")
    ap.add_argument("--command", default="scripts/device-test.sh run serve")
    ap.add_argument("--title", default="kiln serve on GPUs: ResNet-50 FP16, one GPU against two")
    a = ap.parse_args()
    rows = json.load(open(os.path.join(a.src, "serve-gpu.json")))
    placements = []
    for r in rows:
        if r["gpus"] not in placements:
            placements.append(r["gpus"])
    levels = sorted({r["clients"] for r in rows})
    by = {(r["gpus"], r["clients"]): r for r in rows}
    lines = ["# " + a.title, ""]
    if a.device:
        lines += ["Machine: " + a.device, ""]
    lines += ["Reproduce: `" + a.command + "` (the device tool's multi-GPU machine; see scripts/device-test.sh).", ""]
    head = "| clients |"
    sep = "|---:|"
    for p in placements:
        head += f" GPU {p}: infer/s | p50 ms | p99 ms | failed |"
        sep += "---:|---:|---:|---:|"
    if len(placements) > 1:
        head += f" GPU {placements[-1]} / GPU {placements[0]} |"
        sep += "---:|"
    lines += [head, sep]
    for c in levels:
        line = f"| {c} |"
        for p in placements:
            r = by.get((p, c))
            mark = "" if not r or r["stable"] else "*"
            line += (f" {r['throughput']:.0f}{mark} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['failed']} |" if r
                     else " - | - | - | - |")
        if len(placements) > 1:
            r = by.get((placements[-1], c))
            line += f" {r['scaling_vs_first']:.2f}x |" if r and "scaling_vs_first" in r else " - |"
        lines.append(line)
    if any(not r["stable"] for r in rows):
        lines += ["", "\\* not stable: the level's windows did not settle within the stability percentage in the"
                  " trials allowed (kiln perf reports it anyway, marked unstable)."]
    lines += ["", "Batches run per GPU over each server's whole run (from `/metrics`, `kiln_gpu_execution_count`"
              " and `kiln_gpu_inference_count`):", ""]
    for p in placements:
        tag = "gpus" + p.replace(",", "")
        last = os.path.join(a.src, f"{tag}-c{levels[-1]}.metrics")
        for gpu, v in sorted(per_gpu_batches(last).items()):
            b, n = v.get("execution", 0), v.get("inference", 0)
            lines.append(f"- placement GPU {p}, GPU {gpu}: {b} batches, {n} images, average batch {n / max(b, 1):.1f}")
    lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(a.dst)), exist_ok=True)
    open(a.dst + ".md", "w").write("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: chart skipped")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for p in placements:
        xs = [c for c in levels if (p, c) in by]
        ax.plot(xs, [by[(p, c)]["throughput"] for c in xs], marker="o", label=f"GPU {p}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.set_xticklabels([str(c) for c in levels])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("images / s")
    ax.set_title(a.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.dst + ".png", dpi=110)


if __name__ == "__main__":
    main()
