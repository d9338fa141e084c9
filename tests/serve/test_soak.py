"""Soak test of `kiln serve`: minutes of mixed valid and invalid traffic from concurrent loopback
clients. Every valid request's outputs are compared with the engine's own outputs (`kiln run` on
the same inputs, before the soak); every invalid one must get its 4xx; the server must stay live,
keep its memory bounded, count exactly the successes the clients saw, and shut down cleanly.

Usage: /usr/bin/python3 test_soak.py --kiln PATH/TO/kiln --model examples/tiny_cnn.onnx [--seconds 600]
(KILN_SOAK_SECONDS overrides the default duration.)"""
import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import serve_support as ss


def metric(server, name):
    for line in server.get("/metrics")[2].decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if 'reason=' in line and "reason" not in name:
                continue
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("KILN_SOAK_SECONDS", "600")))
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="kiln_soak_")
    repo = os.path.join(work, "repo")
    os.makedirs(os.path.join(repo, "cnn", "1"))
    shutil.copy(args.model, os.path.join(repo, "cnn", "1", "model.onnx"))
    with open(os.path.join(repo, "cnn", "config.pbtxt"), "w") as f:
        f.write("max_batch_size: 4\ndynamic_batching { max_queue_delay_microseconds: 2000 "
                "default_queue_policy { max_queue_size: 64 } }\ninstance_group [ { count: 2 kind: KIND_CPU } ]\n")
    os.makedirs(os.path.join(repo, "addrelu", "1"))
    ss.add_relu_onnx(os.path.join(repo, "addrelu", "1", "model.onnx"))
    with open(os.path.join(repo, "addrelu", "config.pbtxt"), "w") as f:
        f.write("max_batch_size: 8\ndynamic_batching { }\n")

    # The expected outputs: the engine run directly (kiln run) on 12 fixed inputs, batches 1 to 4.
    rng = np.random.default_rng(7)
    cases = []
    for i in range(12):
        b = 1 + i % 4
        x = rng.standard_normal((b, 1, 28, 28)).astype(np.float32)
        xin = os.path.join(work, "x%d.npy" % i)
        np.save(xin, x)
        out = os.path.join(work, "out%d" % i)
        r = subprocess.run([args.kiln, "run", os.path.join(repo, "cnn", "1", "model.onnx"), "--input", "image=" + xin,
                            "-o", out], capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout, r.stderr)
            return 1
        cases.append((x, np.load(os.path.join(out, "probabilities.npy"))))

    server = ss.Server(args.kiln, repo, ["--max-request-bytes", "1048576", "--http-read-timeout", "2"])
    start_rss = metric(server, "nv_cpu_memory_used_bytes")
    stop_at = time.time() + args.seconds
    lock = threading.Lock()
    counts = {"valid_ok": 0, "valid_by_model": {"cnn": 0, "addrelu": 0}, "invalid_ok": 0, "problems": [],
              "busy": 0}
    max_rss = [start_rss]

    def problem(msg):
        with lock:
            if len(counts["problems"]) < 20:
                counts["problems"].append(msg)

    def valid_cnn(r):
        x, want = cases[r.randrange(len(cases))]
        if r.random() < 0.5:
            body = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
            status, _, out = server.post_json("/v2/models/cnn/infer", body)
            if status == 200:
                y = np.array(json.loads(out)["outputs"][0]["data"], dtype=np.float32).reshape(want.shape)
        else:
            header = json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                             "parameters": {"binary_data_size": x.nbytes}}],
                                 "parameters": {"binary_data_output": True}}).encode()
            status, headers, out = server.request("POST", "/v2/models/cnn/infer", header + x.tobytes(),
                                                  {"Inference-Header-Content-Length": str(len(header))})
            if status == 200:
                hl = int(headers["Inference-Header-Content-Length"])
                y = np.frombuffer(out[hl:], dtype="<f4").reshape(want.shape)
        if status == 503:
            with lock:
                counts["busy"] += 1  # queue full under load: allowed, and not a success
            return
        if status != 200:
            problem("valid cnn request got %d: %s" % (status, out[:200]))
            return
        if not np.allclose(y, want, rtol=1e-4, atol=1e-5):
            problem("cnn output differs from the engine's: max err %g" % float(np.abs(y - want).max()))
            return
        with lock:
            counts["valid_ok"] += 1
            counts["valid_by_model"]["cnn"] += 1

    def valid_addrelu(r):
        x = np.array([[r.uniform(-5, 5) for _ in range(3)] for _ in range(r.randint(1, 8))], dtype=np.float32)
        body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
        status, _, out = server.post_json("/v2/models/addrelu/infer", body)
        if status != 200:
            problem("valid addrelu request got %d: %s" % (status, out[:200]))
            return
        y = np.array(json.loads(out)["outputs"][0]["data"], dtype=np.float32).reshape(x.shape)
        if not np.allclose(y, ss.add_relu_reference(x), atol=1e-6):
            problem("addrelu output wrong")
            return
        with lock:
            counts["valid_ok"] += 1
            counts["valid_by_model"]["addrelu"] += 1

    invalid = [
        (lambda: server.request("POST", "/v2/models/cnn/infer", b"{nope", {}), 400),
        (lambda: server.post_json("/v2/models/cnn/infer", {"inputs": [{"name": "image", "shape": [1, 1, 28, 27],
                                                                       "datatype": "FP32", "data": [0] * 756}]}), 400),
        (lambda: server.post_json("/v2/models/cnn/infer", {"inputs": [{"name": "image", "shape": [1, 1, 28, 28],
                                                                       "datatype": "INT32", "data": [0] * 784}]}), 400),
        (lambda: server.post_json("/v2/models/cnn/infer", {"inputs": [{"name": "image", "shape": [9, 1, 28, 28],
                                                                       "datatype": "FP32", "data": [0] * 784 * 9}]}), 400),
        (lambda: server.request("POST", "/v2/models/cnn/infer", b'{"inputs":[]}' + b"x" * 10,
                                {"Inference-Header-Content-Length": "13"}), 400),
        (lambda: server.request("POST", "/v2/models/cnn/infer", b"{}", {"Inference-Header-Content-Length": "999"}), 400),
        (lambda: server.request("POST", "/v2/models/cnn/infer", b" " * (1 << 20 | 1), {}), 413),
        (lambda: server.post_json("/v2/models/ghost/infer", {"inputs": []}), 404),
        (lambda: server.request("POST", "/v2/repository/models/cnn/unload", b"", {}), 403),
    ]

    def broken_connection(r):
        # Sends half a request and hangs up, or stays silent past the read timeout.
        s = socket.create_connection(("127.0.0.1", server.http))
        s.sendall(b"POST /v2/models/cnn/infer HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{\"inputs\":")
        if r.random() < 0.8:
            s.close()
            return
        s.settimeout(30)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        if not data.startswith(b"HTTP/1.1 400"):
            problem("a silent client was not answered 400: %r" % data[:100])

    def client(seed):
        r = random.Random(seed)
        while time.time() < stop_at:
            p = r.random()
            try:
                if p < 0.45:
                    valid_cnn(r)
                elif p < 0.7:
                    valid_addrelu(r)
                elif p < 0.98:
                    call, want = invalid[r.randrange(len(invalid))]
                    status, _, out = call()
                    if status != want:
                        problem("invalid request: want %d, got %d: %s" % (want, status, out[:200]))
                    elif "error" not in json.loads(out):
                        problem("an error response without \"error\": %s" % out[:200])
                    else:
                        with lock:
                            counts["invalid_ok"] += 1
                else:
                    broken_connection(r)
            except Exception as e:  # noqa: BLE001 - any client-side failure is a finding
                problem("client exception: %r" % e)

    def sampler():
        while time.time() < stop_at:
            try:
                max_rss[0] = max(max_rss[0], metric(server, "nv_cpu_memory_used_bytes"))
            except Exception as e:  # noqa: BLE001
                problem("metrics failed: %r" % e)
            time.sleep(1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    threads.append(threading.Thread(target=sampler))
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - t0

    ok = True
    live = server.get("/v2/health/live")[0] == 200
    success = {m: metric(server, 'nv_inference_request_success{model="%s",version="1"}' % m)
               for m in ("cnn", "addrelu")}
    queue_full = metric(server, 'nv_inference_request_failure{model="cnn",version="1",reason="queue_full"}')
    rc = server.stop()
    print("soak: %.0f s, %d clients: %d valid requests checked (cnn %d, addrelu %d), %d invalid answered as expected, "
          "%d queue-full 503s; server successes cnn %d addrelu %d; RSS %.1f -> max %.1f MiB; exit %d"
          % (elapsed, args.clients, counts["valid_ok"], counts["valid_by_model"]["cnn"],
             counts["valid_by_model"]["addrelu"], counts["invalid_ok"], counts["busy"], success["cnn"],
             success["addrelu"], start_rss / 2**20, max_rss[0] / 2**20, rc))
    for p in counts["problems"]:
        print("PROBLEM:", p)
        ok = False
    if not live:
        print("PROBLEM: the server was not live at the end")
        ok = False
    # Exactly once: the server counted precisely the successes the clients received.
    for m in ("cnn", "addrelu"):
        if success[m] != counts["valid_by_model"][m]:
            print("PROBLEM: %s: the server counts %d successes, the clients saw %d"
                  % (m, success[m], counts["valid_by_model"][m]))
            ok = False
    if queue_full != counts["busy"]:
        print("PROBLEM: the server counts %d queue-full failures, the clients saw %d" % (queue_full, counts["busy"]))
        ok = False
    # Bounded memory: the queues and bodies are bounded, so resident memory must not keep growing.
    if max_rss[0] > start_rss + 512 * 2**20:
        print("PROBLEM: resident memory grew from %.1f to %.1f MiB" % (start_rss / 2**20, max_rss[0] / 2**20))
        ok = False
    if counts["valid_ok"] == 0 or counts["invalid_ok"] == 0:
        print("PROBLEM: no traffic of one kind got through")
        ok = False
    if rc != 0:
        print("PROBLEM: kiln serve exited %d:\n%s" % (rc, server.output()[-2000:]))
        ok = False
    server.close()
    shutil.rmtree(work, ignore_errors=True)
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
