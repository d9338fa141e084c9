#!/usr/bin/python3
"""Exports a tiny torchvision VisionTransformer (2 layers, hidden 64, 4 heads, MLP 128, 32x32
images, 8x8 patches, 10 classes) the way models/export.py exports ViT-B/16: TorchScript
exporter, opset 17, autograd on (so nn.MultiheadAttention takes its composite path, not the
fused inference kernel). Torch 2.x writes MultiheadAttention's packed projections as
Reshape/Unsqueeze/Transpose/Squeeze + Gather and a sequence-first layout; Debian's torch 1.13
writes Slices instead. The graph-pass tests use the torch 2.x file (vit_tiny.onnx, written by
torch 2.11 on the GPU machine) with the inputs and torch's outputs (vit_tiny.io.npz).

    python3 tests/data/vit_torch2/export.py OUT_DIR
"""
import inspect
import os
import sys

import numpy as np
import torch
import torchvision

out = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                             hidden_dim=64, mlp_dim=128, num_classes=10).eval()
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
extra = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
with torch.enable_grad():
    y = model(x)
    torch.onnx.export(model, (x,), os.path.join(out, "vit_tiny.onnx"), opset_version=17, do_constant_folding=True,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **extra)
np.savez(os.path.join(out, "vit_tiny.io.npz"), input=x.numpy(), output=y.detach().numpy())
print("torch", torch.__version__, "->", out)
