"""Helpers for the `kiln serve` end-to-end tests: a temporary repository with generated ONNX
models, and a running server process. Only the standard library and python3-onnx/numpy are used:
the clients in these tests are written against the published KServe v2 protocol, not Kiln."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

W = np.array([1.0, -5.0, 0.5], dtype=np.float32)


def add_relu_onnx(path, width=3):
    """y = relu(x + W) with x: [batch, 3] float32."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])
    w = numpy_helper.from_array(np.resize(W, width).astype(np.float32), "w")
    nodes = [helper.make_node("Add", ["x", "w"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    g = helper.make_graph(nodes, "addrelu", [x], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)


def add_relu_reference(x):
    return np.maximum(x + np.resize(W, x.shape[-1]).astype(np.float32), 0).astype(np.float32)


def make_repository(models):
    """models: {name: config_text}. Each gets version 1 with the add-relu model."""
    root = tempfile.mkdtemp(prefix="kiln_serve_py_")
    for name, config in models.items():
        os.makedirs(os.path.join(root, name, "1"))
        with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
            f.write(config)
        add_relu_onnx(os.path.join(root, name, "1", "model.onnx"))
    return root


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


class Server:
    """A `kiln serve` process on free loopback ports."""

    def __init__(self, kiln, repository, extra=()):
        self.dir = tempfile.mkdtemp(prefix="kiln_serve_run_")
        port_file = os.path.join(self.dir, "ports.json")
        self.log = open(os.path.join(self.dir, "serve.log"), "w+")
        self.proc = subprocess.Popen(
            [kiln, "serve", "--model-repository", repository, "--http-port", "0", "--grpc-port", "0",
             "--port-file", port_file, "--fast-load", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not _read(port_file).strip():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("kiln serve did not start:\n" + self.output())
            time.sleep(0.05)
        ports = json.loads(_read(port_file))
        self.http = ports.get("http")
        self.grpc = ports.get("grpc")
        self.url = "http://127.0.0.1:%d" % self.http
        while self.get("/v2/health/ready")[0] != 200:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("kiln serve did not become ready:\n" + self.output())
            time.sleep(0.05)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def request(self, method, path, body=None, headers=None, timeout=60):
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get(self, path):
        return self.request("GET", path)

    def post_json(self, path, obj, headers=None):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        return self.request("POST", path, json.dumps(obj).encode(), h)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("kiln serve did not exit within %ds of SIGTERM" % timeout)
        return self.proc.returncode

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
