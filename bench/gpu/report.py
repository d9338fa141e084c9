#!/usr/bin/env python3
"""Turns one GPU benchmark run (bench/gpu/run_bench.sh OUT) into a results page and a chart:
Kiln FP16 (and any other precision run) beside PyTorch eager FP16 and torch.compile FP16, per row,
with each row's fraction of the FP16 matrix rate measured in the same run.

    python3 bench/gpu/report.py OUT_DIR bench/results/DATE-gpu-models  [--title ...]
writes DATE-gpu-models.md and DATE-gpu-models.png (the chart needs matplotlib).
"""
import glob
import json
import os
import sys

# Row order of the pages: the rows first, then the others.
ORDER = ["resnet50", "mobilenet_v2", "vit_b16", "bert", "densenet121", "shufflenet_v2_x0_5", "yolov8_tiny"]


def main():
    src, dst = sys.argv[1], sys.argv[2]
    title = "GPU benchmark: Kiln vs PyTorch eager and torch.compile (FP16)"
    if "--title" in sys.argv[3:]:
        title = sys.argv[sys.argv.index("--title") + 1]
    torch = json.load(open(os.path.join(src, "torch.json"))) if os.path.exists(os.path.join(src, "torch.json")) else {"env": {}, "rows": []}
    peak = torch["env"].get("fp16_matmul_tflops")
    trow = {(r["model"], r["batch"]): r for r in torch["rows"]}
    kiln = {}
    device = ""
    for f in sorted(glob.glob(os.path.join(src, "kiln_*.json"))):
        j = json.load(open(f))
        name = os.path.basename(j["model"]).rsplit(".onnx", 1)[0]
        kiln[(name, j["batch"], j["precision"])] = j
        device = "%s (%s), driver %s, cuBLASLt %s, cuDNN %s" % (
            j["device"]["name"], j["device"]["sm"], j["device"]["driver"], j["device"]["cublaslt"], j["device"]["cudnn"])
    precisions = sorted({k[2] for k in kiln})
    rows = sorted({(k[0], k[1]) for k in kiln} | set(trow), key=lambda r: (ORDER.index(r[0]) if r[0] in ORDER else len(ORDER), r[1]))
    lines = []
    head = "| model | batch | GFLOP | " + " | ".join("Kiln %s ms" % p for p in precisions) + \
        " | eager ms | compile ms | Kiln fp16 / compile | Kiln fp16 items/s | Kiln fp16 % of peak |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    wins = 0
    compared = 0
    chart = []
    for (m, b) in rows:
        t = trow.get((m, b), {})
        gf = t.get("gflops")
        ks = [kiln.get((m, b, p)) for p in precisions]
        kms = [k["gpu_compute_ms"]["median"] if k else None for k in ks]
        k16 = kiln.get((m, b, "fp16"))
        k16ms = k16["gpu_compute_ms"]["median"] if k16 else None
        cms = t.get("compile_ms")
        speed = cms / k16ms if (cms and k16ms) else None
        if speed:
            compared += 1
            wins += speed > 1
        frac = gf * 1e9 / (k16ms * 1e-3) / (peak * 1e12) if (gf and k16ms and peak) else None
        fmt = lambda v, d=3: ("%.*f" % (d, v)) if v is not None else "—"
        lines.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
            m, b, fmt(gf, 1), " | ".join(fmt(v) for v in kms), fmt(t.get("eager_ms")), fmt(cms),
            (fmt(speed, 2) + "x") if speed else "—", fmt(b * 1000 / k16ms, 0) if k16ms else "—",
            (fmt(100 * frac, 1) + "%") if frac else "—"))
        chart.append(("%s b%d" % (m, b), k16ms, t.get("eager_ms"), cms, dict(zip(precisions, kms))))
    md = ["# " + title, "",
          "Device: %s. PyTorch %s. FP16 matrix rate measured in the same run: %s TFLOP/s." % (
              device or "?", torch["env"].get("torch", "?"), peak),
          "", "Kiln times are GPU compute (CUDA events around the CUDA-graph replay, inputs already on the GPU), "
          "the median of at least 1 s of runs; PyTorch's are CUDA-event medians of the model call on inputs "
          "already on the GPU (channels_last for CNNs). Same card, same call, same input shapes and dtypes "
          "(FP16 activations; Kiln takes FP32 at the edges and converts on the GPU, inside the timed graph).",
          "", "Kiln FP16 faster than torch.compile on %d of %d rows." % (wins, compared), ""] + lines
    with open(dst + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(11, 4.5))
        xs = range(len(chart))
        # One bar per Kiln precision that ran (FP16 first), then eager and torch.compile.
        series = [("Kiln " + p.upper(), [c[4].get(p) or 0 for c in chart]) for p in sorted(precisions, key=lambda p: p != "fp16")]
        series += [("PyTorch eager FP16", [c[2] or 0 for c in chart]), ("torch.compile FP16", [c[3] or 0 for c in chart])]
        w = 0.8 / len(series)
        for i, (label, vals) in enumerate(series):
            ax.bar([x + (i - (len(series) - 1) / 2) * w for x in xs], vals, w, label=label)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([c[0] for c in chart], rotation=30, ha="right")
        ax.set_ylabel("ms per batch (lower is better)")
        ax.set_yscale("log")
        ax.set_title("GPU compute time per batch, " + (device.split(" (")[0] or "GPU"))
        ax.legend()
        fig.tight_layout()
        fig.savefig(dst + ".png", dpi=110)
    except ImportError:
        print("report: no matplotlib; chart skipped", file=sys.stderr)
    print("\n".join(md))


if __name__ == "__main__":
    main()
