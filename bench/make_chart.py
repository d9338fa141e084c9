#!/usr/bin/python3
"""Chart of a bench/run_bench.sh run: median latency of Kiln and ONNX Runtime per model and batch.

    /usr/bin/python3 bench/make_chart.py RESULTS.tsv OUT.png [--title TITLE]

RESULTS.tsv is the table run_bench.sh writes (model, batch, kiln_median_ms, ort_median_ms, ...).
Latency is on a log scale (rows span 1 ms to 1 s); each pair
is labelled with the speed-up of Kiln (ORT ms / Kiln ms). Uses Debian's python3-matplotlib.
"""

import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PRETTY = {"resnet50": "ResNet-50", "mobilenet_v2": "MobileNetV2", "efficientnet_b0": "EfficientNet-B0",
          "bert": "BERT-base"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tsv")
    ap.add_argument("png")
    ap.add_argument("--title", default="Kiln vs ONNX Runtime, CPU")
    ap.add_argument("--seq", type=int, default=128, help="BERT sequence length, for the label")
    args = ap.parse_args()

    with open(args.tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise SystemExit(f"make_chart: {args.tsv} has no rows")
    pretty = dict(PRETTY, bert=f"BERT-base (seq {args.seq})")
    labels = [f"{pretty.get(r['model'], r['model'])}\nbatch {r['batch']}" for r in rows]
    kiln = [float(r["kiln_median_ms"]) for r in rows]
    ort = [float(r["ort_median_ms"]) for r in rows]

    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(rows) + 2), 5.5), dpi=120)
    xs = range(len(rows))
    w = 0.38
    kb = ax.bar([x - w / 2 for x in xs], kiln, w, label="Kiln (CPU engine, FP32)", color="#c0504d")
    ob = ax.bar([x + w / 2 for x in xs], ort, w, label="ONNX Runtime (CPU EP)", color="#4f81bd")
    ax.set_yscale("log")
    ax.set_ylabel("median latency, ms (log scale; lower is better)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_title(args.title, fontsize=10)
    ax.grid(axis="y", which="major", alpha=0.3)
    for bars in (kb, ob):
        for b in bars:
            h = b.get_height()
            ax.annotate(f"{h:.0f}" if h >= 10 else f"{h:.1f}", (b.get_x() + b.get_width() / 2, h),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    top = max(kiln + ort)
    ax.set_ylim(min(kiln + ort) / 3, top * 8)
    for x, k, o in zip(xs, kiln, ort):
        ratio = o / k
        ax.annotate(f"x{ratio:.2f}", (x, max(k, o)), ha="center", va="bottom", fontsize=7, color="#333333",
                    xytext=(0, 14), textcoords="offset points")
    ax.legend(loc="upper left", fontsize=8)
    fig.text(0.99, 0.01, "xN = speed-up of Kiln = ORT ms / Kiln ms (above 1: Kiln faster)", ha="right", fontsize=7,
             color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(args.png)
    print(f"make_chart: wrote {args.png}")


if __name__ == "__main__":
    main()
