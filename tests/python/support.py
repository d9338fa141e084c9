"""Helpers for the Python package tests: tiny seeded models exported from PyTorch, temp dirs, the CLI.

Run the tests with Debian's /usr/bin/python3 and PYTHONPATH=BUILD/python (ctest sets both).
"""
import io
import os
import shutil
import subprocess
import tempfile
import unittest

import numpy as np

import kiln

SOURCE_DIR = os.environ.get("KILN_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
CLI_PATH = os.environ.get("KILN_CLI_PATH", "")

# The docs/troubleshooting.md links Kiln appends to messages that name no section.
SEE_ARGUMENT = " (see docs/troubleshooting.md#invalid-argument)"
SEE_IO = " (see docs/troubleshooting.md#io-error)"

# FP32 engines against PyTorch: both accumulate in f32 but in different orders.
FP32_RTOL, FP32_ATOL = 1e-4, 1e-5


def quiet_logger():
    """A logger that prints nothing but keeps every message (severity, text) for assertions."""

    class Recorder(kiln.ILogger):
        def __init__(self):
            kiln.ILogger.__init__(self)
            self.messages = []

        def log(self, severity, msg):
            self.messages.append((severity, msg))

        def errors(self):
            return [m for s, m in self.messages if s <= kiln.ILogger.ERROR]

    return Recorder()


_TORCH_MODELS = {}


def conv_net(dynamic_batch=True):
    """A small seeded CNN (conv, relu, conv, relu, global pool, linear) exported to ONNX.

    Returns (onnx bytes, torch module); input 'x' [batch, 3, 8, 8], output 'y' [batch, 5].
    """
    key = ("conv", dynamic_batch)
    if key not in _TORCH_MODELS:
        import torch
        import torch.nn as nn

        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
        f = io.BytesIO()
        axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
        torch.onnx.export(model, torch.randn(1, 3, 8, 8), f, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes=axes)
        _TORCH_MODELS[key] = (f.getvalue(), model)
    return _TORCH_MODELS[key]


def torch_reference(model, x):
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def images(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run_cli(*args):
    """Runs the kiln command; returns (exit code, stderr). Skips the test without it."""
    if not CLI_PATH or not os.path.exists(CLI_PATH):
        raise unittest.SkipTest("KILN_CLI_PATH does not name the built kiln command")
    p = subprocess.run([CLI_PATH, *args], capture_output=True, text=True)
    return p.returncode, p.stderr


def cli_error_text(stderr):
    """What the CLI prints after 'kiln: error (<kind>): ', and the kind."""
    line = stderr.strip().splitlines()[-1]
    prefix = "kiln: error ("
    assert line.startswith(prefix), stderr
    kind, _, text = line[len(prefix):].partition("): ")
    return kind, text


class TempDirTestCase(unittest.TestCase):
    """A fresh temporary directory per test, in self.tmp."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="kiln_py_")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write(self, name, data):
        p = self.path(name)
        with open(p, "wb") as f:
            f.write(data)
        return p
