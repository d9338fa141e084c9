#!/usr/bin/python3
"""Exports a small CNN quantized the way PyTorch exports fake quantization, as an explicit Q/DQ
ONNX model: Kiln's test that Q/DQ models from PyTorch import and fuse into int8 kernels.

    /usr/bin/python3 models/pytorch_qdq.py --out DIR [--force]

Writes DIR/pytorch_qdq.onnx (opset 13; input "input" f32 [batch,3,32,32], output "output") and
DIR/pytorch_qdq.io.npz (two seeded inputs and PyTorch's outputs). Activations go through
torch.fake_quantize_per_tensor_affine (int8 for the input, uint8 after each ReLU), weights through
torch.fake_quantize_per_channel_affine (int8, symmetric, per output channel; their scales are
computed in the graph from the parameters, as quantization-aware-training exports do).
"""
import argparse
import os

import numpy as np
import torch
import torch.nn as nn


class FakeQuant(nn.Module):
    def __init__(self, scale, zero_point, lo, hi):
        super().__init__()
        self.scale, self.zero_point, self.lo, self.hi = scale, zero_point, lo, hi

    def forward(self, x):
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.lo, self.hi)


class QuantConv(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)

    def forward(self, x):
        w = self.conv.weight
        scale = (w.detach().abs().amax(dim=(1, 2, 3)) / 127).clamp(min=1e-8)
        zero = torch.zeros(w.shape[0], dtype=torch.int32)
        wq = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)
        return nn.functional.conv2d(x, wq, self.conv.bias, stride=self.conv.stride, padding=1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_in = FakeQuant(0.03, 0, -128, 127)
        self.c1, self.q1 = QuantConv(3, 16), FakeQuant(0.02, 0, 0, 255)
        self.c2, self.q2 = QuantConv(16, 32, stride=2), FakeQuant(0.02, 0, 0, 255)
        self.c3 = QuantConv(32, 32)
        self.q3 = FakeQuant(0.04, 0, 0, 255)
        self.pool = nn.MaxPool2d(2)
        self.q4 = FakeQuant(0.04, 0, 0, 255)
        self.head = QuantConv(32, 10)

    def forward(self, x):
        x = self.q1(torch.relu(self.c1(self.q_in(x))))
        y = self.q2(torch.relu(self.c2(x)))
        y = self.q3(torch.relu(self.c3(y) + y))  # residual
        y = self.q4(self.pool(y))
        return self.head(y).mean(dim=(2, 3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    onnx_path = os.path.join(a.out, "pytorch_qdq.onnx")
    io_path = os.path.join(a.out, "pytorch_qdq.io.npz")
    if os.path.exists(onnx_path) and os.path.exists(io_path) and not a.force:
        print("pytorch_qdq: exists, skipped")
        return
    torch.manual_seed(0)
    model = Net().eval()
    g = torch.Generator()
    g.manual_seed(7)
    x = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = model(x)
    torch.onnx.export(model, x, onnx_path + ".tmp", opset_version=13, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    np.savez(io_path + ".tmp.npz", input=x.numpy(), output=y.numpy())
    os.replace(onnx_path + ".tmp", onnx_path)
    os.replace(io_path + ".tmp.npz", io_path)
    print("pytorch_qdq: wrote", onnx_path)


if __name__ == "__main__":
    main()
