#!/usr/bin/env python3
"""The PyTorch peers of Kiln's GPU benchmark: eager FP16 and torch.compile(mode="reduce-overhead")
FP16, on the rows of the GPU issue, with the same model definitions Kiln's tests export
(models/export.py: torchvision ResNet-50 / MobileNetV2 / ViT-B/16, and the BERT-base encoder).

    python3 bench/gpu/torch_baseline.py [--rows resnet50:1,resnet50:32,...] [--json OUT.json]
                                        [--modes eager,compile] [--iters-ms 1000]

Timing: CUDA events around each call, after warm-up; the median of repeated calls (each at least
--iters-ms of work in total). Inputs are seeded random data of the model's dtypes, fixed per row.
FLOPs per inference are counted once with torch.utils.flop_counter (multiply-add = 2 FLOPs), and
each row reports its fraction of the H100's dense FP16 matrix rate measured in the same run (an
8192^3 fp16 matmul), so the numbers stay comparable across cards.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "models"))

DEFAULT_ROWS = ("resnet50:1,resnet50:32,resnet50:256,mobilenet_v2:1,mobilenet_v2:256,"
                "vit_b16:1,vit_b16:64,bert:1,bert:32,bert:128")


def build(name):
    import torchvision
    torch.manual_seed(0)
    if name == "resnet50":
        return torchvision.models.resnet50(weights=None), "image"
    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(weights=None), "image"
    if name == "vit_b16":
        return torchvision.models.vit_b_16(weights=None), "image"
    if name == "bert":
        import export  # models/export.py: the BERT-base encoder Kiln's tests export
        return export.BertModel(export.BertConfig()), "tokens"
    if name in ("densenet121", "shufflenet_v2_x0_5"):
        return getattr(torchvision.models, name)(weights=None), "image"
    if name == "yolov8_tiny":
        import export  # the YOLOv8-style detector Kiln's tests export, with its TopK/gather head
        return export.build_yolov8_tiny()[0], "image320"
    raise SystemExit(f"unknown model {name}")


def make_inputs(kind, batch, device):
    g = torch.Generator().manual_seed(1234)
    if kind in ("image", "image320"):
        side = 320 if kind == "image320" else 224
        x = torch.randn(batch, 3, side, side, generator=g).to(device, torch.float16)
        return (x.contiguous(memory_format=torch.channels_last),)
    seq = 128
    ids = torch.randint(1000, 30522, (batch, seq), generator=g).to(device)
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    return ids, mask


def time_fn(fn, inputs, budget_ms):
    for _ in range(3):
        fn(*inputs)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(*inputs)
    end.record()
    torch.cuda.synchronize()
    once = max(start.elapsed_time(end), 1e-3)
    reps = max(10, min(2000, int(budget_ms / once)))
    times = []
    for _ in range(reps):
        start.record()
        fn(*inputs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), reps


def matmul_peak():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    ms, _ = time_fn(lambda x, y: x @ y, (a, b), 500)
    return 2 * 8192 ** 3 / (ms * 1e-3) / 1e12


def count_flops(model, inputs):
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*inputs)
    return fc.get_total_flops()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=DEFAULT_ROWS)
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--iters-ms", type=float, default=1000)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(0)
    env = {"gpu": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    torch.backends.cudnn.benchmark = True
    peak = matmul_peak()
    env["fp16_matmul_tflops"] = round(peak, 1)
    print("env:", json.dumps(env), flush=True)
    results = []
    models = {}
    for row in a.rows.split(","):
        name, batch = row.split(":")
        batch = int(batch)
        if name not in models:
            m, kind = build(name)
            m = m.eval().to(dev, torch.float16)
            if kind.startswith("image"):
                m = m.to(memory_format=torch.channels_last)
            models[name] = (m, kind, {})
        m, kind, compiled = models[name]
        inputs = make_inputs(kind, batch, dev)
        flops = count_flops(m, inputs)
        rec = {"model": name, "batch": batch, "gflops": flops / 1e9}
        for mode in a.modes.split(","):
            with torch.no_grad():
                if mode == "eager":
                    fn = m
                else:
                    if "fn" not in compiled:
                        compiled["fn"] = torch.compile(m, mode="reduce-overhead")
                    fn = compiled["fn"]
                t0 = time.time()
                ms, reps = time_fn(fn, inputs, a.iters_ms)
                rec[mode + "_ms"] = ms
                rec[mode + "_reps"] = reps
                rec[mode + "_setup_s"] = round(time.time() - t0, 1)
                rec[mode + "_per_s"] = batch / (ms * 1e-3)
                rec[mode + "_peak_frac"] = flops / (ms * 1e-3) / (peak * 1e12)
        results.append(rec)
        print(json.dumps(rec), flush=True)
    print("\n%-14s %5s %10s %10s %12s %12s %8s" % ("model", "batch", "eager ms", "compile ms", "eager /s",
                                                 "compile /s", "peak%"))
    for r in results:
        print("%-14s %5d %10.3f %10.3f %12.0f %12.0f %7.1f%%" % (
            r["model"], r["batch"], r.get("eager_ms", float("nan")), r.get("compile_ms", float("nan")),
            r.get("eager_per_s", 0), r.get("compile_per_s", 0), 100 * r.get("compile_peak_frac", 0)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"env": env, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
