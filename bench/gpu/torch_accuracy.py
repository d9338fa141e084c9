#!/usr/bin/env python3
"""PyTorch's own FP16 error on Kiln's test models, the yardstick for Kiln's GPU FP16 accuracy: each
model of models/export.py (same seeded weights and inputs as its .io.npz) runs in FP32 on the CPU
(the reference the .io.npz holds) and in FP16 on the GPU (channels_last for CNNs); prints the
relative L2 error, cosine and top-1 agreement of FP16 against FP32, as JSON lines.

    python3 bench/gpu/torch_accuracy.py [--models resnet50,mobilenet_v2,bert,gpt] [--json OUT]
"""
import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "models"))
import export  # noqa: E402


def metrics(got, want):
    g, w = got.double().flatten(), want.double().flatten()
    rel = float((g - w).norm() / w.norm().clamp_min(1e-30))
    cos = float(torch.nn.functional.cosine_similarity(g, w, dim=0))
    top1 = None
    if want.dim() == 2:
        top1 = float((got.argmax(-1) == want.argmax(-1)).double().mean())
    return {"rel_l2": rel, "cosine": cos, "top1_agree": top1}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet50,mobilenet_v2,bert,gpt")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        model, inputs, out_names, _ = export.BUILDERS[name]()
        model.eval()
        with torch.no_grad():
            ref = model(*inputs.values())
            ref = ref if isinstance(ref, (tuple, list)) else (ref,)
            m16 = model.to("cuda", torch.float16)
            image = "input" in inputs
            if image:
                m16 = m16.to(memory_format=torch.channels_last)
            args = [v.to("cuda") for v in inputs.values()]
            args = [(x.half().contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x.half()) if x.is_floating_point() else x for x in args]
            out = m16(*args)
            out = out if isinstance(out, (tuple, list)) else (out,)
        for k, r, o in zip(out_names, ref, out):
            rec = {"model": name, "output": k, **metrics(o.float().cpu(), r.float())}
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
