"""`kiln serve` end to end with clients written only against the KServe v2 protocol: a Python
client (urllib, json, struct) and curl. Covers health, metadata, JSON and binary inference,
errors, metrics, concurrent clients, and graceful shutdown on SIGTERM.

Usage: /usr/bin/python3 test_http_client.py --kiln PATH/TO/kiln"""
import argparse
import csv
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import numpy as np

import serve_support as ss

KILN = None


class HttpClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repo = ss.make_repository({
            "addrelu": "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1000 }\n"
                       "instance_group [ { count: 2 kind: KIND_CPU } ]\n",
        })
        cls.server = ss.Server(KILN, cls.repo, ["--max-request-bytes", "65536"])

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.close()
        shutil.rmtree(cls.repo, ignore_errors=True)

    def infer_json(self, x, **extra):
        body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
        body.update(extra)
        return self.server.post_json("/v2/models/addrelu/infer", body)

    def test_health_and_metadata(self):
        s = self.server
        self.assertEqual(s.get("/v2/health/live")[0], 200)
        self.assertEqual(s.get("/v2/health/ready")[0], 200)
        status, _, body = s.get("/v2")
        self.assertEqual(status, 200)
        meta = json.loads(body)
        self.assertEqual(meta["name"], "kiln")
        self.assertIn("binary_tensor_data", meta["extensions"])
        status, _, body = s.get("/v2/models/addrelu")
        m = json.loads(body)
        self.assertEqual(m["inputs"], [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}])
        self.assertEqual(m["outputs"], [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}])
        self.assertEqual(s.get("/v2/models/addrelu/versions/1/ready")[0], 200)
        self.assertEqual(s.get("/v2/models/other/ready")[0], 503)

    def test_json_inference(self):
        x = np.array([[-2, 3, 7], [0.25, 6, -1]], dtype=np.float32)
        status, _, body = self.infer_json(x, id="abc")
        self.assertEqual(status, 200, body)
        out = json.loads(body)
        self.assertEqual(out["id"], "abc")
        self.assertEqual(out["model_name"], "addrelu")
        y = np.array(out["outputs"][0]["data"], dtype=np.float32).reshape(out["outputs"][0]["shape"])
        np.testing.assert_allclose(y, ss.add_relu_reference(x), rtol=0, atol=1e-6)

    def test_form_content_type_is_not_parsed_as_a_form(self):
        # curl -d and urllib send application/x-www-form-urlencoded unless told otherwise; a body of
        # any size must still be read as the v2 request it is.
        x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) / 7
        body = json.dumps({"inputs": [{"name": "x", "shape": [8, 3], "datatype": "FP32",
                                       "data": [float(v) for v in x.flatten()] * 1}],
                           "id": "p" * 9000}).encode()
        self.assertGreater(len(body), 8192)
        status, _, out = self.server.request("POST", "/v2/models/addrelu/infer", body,
                                             {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 200, out[:300])
        y = np.array(json.loads(out)["outputs"][0]["data"], dtype=np.float32).reshape(8, 3)
        np.testing.assert_allclose(y, ss.add_relu_reference(x), atol=1e-6)

    def test_binary_inference(self):
        x = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
        header = json.dumps({
            "inputs": [{"name": "x", "shape": [4, 3], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }).encode()
        status, headers, body = self.server.request(
            "POST", "/v2/models/addrelu/infer", header + x.tobytes(),
            {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
        self.assertEqual(status, 200, body)
        hl = int(headers["Inference-Header-Content-Length"])
        meta = json.loads(body[:hl])
        out = meta["outputs"][0]
        self.assertEqual(out["parameters"]["binary_data_size"], 48)
        y = np.frombuffer(body[hl:hl + 48], dtype="<f4").reshape(out["shape"])
        np.testing.assert_allclose(y, ss.add_relu_reference(x), rtol=0, atol=1e-6)

    def test_errors(self):
        s = self.server
        status, _, body = s.request("POST", "/v2/models/addrelu/infer", b"{oops", {"Content-Type": "application/json"})
        self.assertEqual(status, 400)
        self.assertIn("malformed request JSON", json.loads(body)["error"])
        status, _, body = s.post_json("/v2/models/nosuch/infer", {"inputs": []})
        self.assertEqual(status, 404)
        self.assertIn("error", json.loads(body))
        status, _, body = self.infer_json(np.zeros((1, 4), dtype=np.float32))
        self.assertEqual(status, 400)
        self.assertIn("the model expects [-1, 3]", json.loads(body)["error"])
        status, _, body = s.request("POST", "/v2/models/addrelu/infer", b" " * 70000, {"Content-Type": "application/json"})
        self.assertEqual(status, 413)
        self.assertIn("65536", json.loads(body)["error"])
        # Header length past the body.
        status, _, body = s.request("POST", "/v2/models/addrelu/infer", b"{}",
                                    {"Inference-Header-Content-Length": "50"})
        self.assertEqual(status, 400)
        # Still serving.
        self.assertEqual(self.infer_json(np.ones((1, 3), dtype=np.float32))[0], 200)

    def test_concurrent_clients_batched(self):
        results = {}

        def client(i):
            x = np.full((1, 3), float(i), dtype=np.float32)
            status, _, body = self.infer_json(x)
            results[i] = (status, body, x)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, (status, body, x) in results.items():
            self.assertEqual(status, 200, body)
            y = np.array(json.loads(body)["outputs"][0]["data"], dtype=np.float32).reshape(1, 3)
            np.testing.assert_allclose(y, ss.add_relu_reference(x), atol=1e-6)
        stats = json.loads(self.server.get("/v2/models/addrelu/stats")[2])["model_stats"][0]
        self.assertGreaterEqual(stats["inference_count"], 16)
        self.assertGreaterEqual(stats["inference_count"], stats["execution_count"])

    def test_metrics(self):
        self.infer_json(np.ones((2, 3), dtype=np.float32))
        status, headers, body = self.server.get("/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain"))
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        key = 'nv_inference_request_success{model="addrelu",version="1"}'
        self.assertGreaterEqual(values[key], 1)
        self.assertIn('nv_inference_queue_duration_us{model="addrelu",version="1"}', values)
        self.assertGreater(values["nv_cpu_memory_used_bytes"], 0)

    def test_binds_to_loopback_by_default(self):
        # Started without --host: reachable on 127.0.0.1, refused on the machine's other addresses.
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
        others = [a for a in out if ":" not in a and not a.startswith("127.")]
        if not others:
            self.skipTest("this machine has no non-loopback IPv4 address")
        for addr in others:
            with self.assertRaises(OSError, msg="reachable on " + addr):
                socket.create_connection((addr, self.server.http), timeout=5).close()

    def test_curl(self):
        curl = shutil.which("curl")
        if not curl:
            self.skipTest("curl is not installed")
        url = self.server.url
        r = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", url + "/v2/health/ready"],
                           capture_output=True, text=True)
        self.assertEqual(r.stdout, "200")
        data = '{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1.5,-2,3]}]}'
        r = subprocess.run([curl, "-s", "-X", "POST", "-H", "Content-Type: application/json", "-d", data,
                            url + "/v2/models/addrelu/infer"], capture_output=True, text=True)
        out = json.loads(r.stdout)
        self.assertEqual(out["outputs"][0]["data"], [2.5, 0.0, 3.5])


class Perf(unittest.TestCase):
    """kiln perf against the real server, over HTTP and gRPC."""

    def test_perf_http_and_grpc(self):
        repo = ss.make_repository({"addrelu": "max_batch_size: 8\ndynamic_batching { }\n"})
        server = ss.Server(KILN, repo)
        work = tempfile.mkdtemp(prefix="kiln_perf_e2e_")
        try:
            csv_path, json_path = os.path.join(work, "perf.csv"), os.path.join(work, "perf.json")
            r = subprocess.run([KILN, "perf", "-m", "addrelu", "-u", "127.0.0.1:%d" % server.http, "-b", "2",
                                "--concurrency-range", "1:2", "-p", "200", "-r", "5", "-s", "50",
                                "-f", csv_path, "--json", json_path], capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            with open(csv_path) as f:
                rows = list(csv.DictReader(f))
            self.assertEqual(sorted(int(row["Concurrency"]) for row in rows), [1, 2])
            for row in rows:
                self.assertEqual(int(row["Failed"]), 0)
                self.assertGreater(float(row["Inferences/Second"]), 0)
                self.assertNotEqual(row["Server Compute Infer"], "")
            with open(json_path) as f:
                report = json.load(f)
            sent = sum(level["requests"]["success"] for level in report["levels"])
            stats = json.loads(server.get("/v2/models/addrelu/stats")[2])["model_stats"][0]
            # Every request the client counted as answered was counted by the server (it may also
            # count a few that finished after the client's last window closed).
            self.assertGreaterEqual(stats["inference_stats"]["success"]["count"], sent)
            self.assertGreater(sent, 0)
            if server.grpc:
                r = subprocess.run([KILN, "perf", "-m", "addrelu", "-i", "grpc", "-u", "127.0.0.1:%d" % server.grpc,
                                    "-b", "2", "-p", "200", "-r", "5", "-s", "50", "--json", json_path],
                                   capture_output=True, text=True, timeout=300)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                with open(json_path) as f:
                    report = json.load(f)
                level = report["levels"][0]
                # max_batch_size comes from the ModelConfig call: -b means rows per request, as over HTTP.
                self.assertEqual(report["batch_size"], 2)
                self.assertEqual(level["requests"]["failed"], 0)
                self.assertGreater(level["requests"]["success"], 0)
        finally:
            server.stop()
            server.close()
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)


class Shutdown(unittest.TestCase):
    def test_sigterm_drains_in_flight_requests(self):
        # A long queue delay keeps requests queued while SIGTERM arrives.
        repo = ss.make_repository({
            "addrelu": "max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 2000000 }\n"})
        server = ss.Server(KILN, repo)
        try:
            results = []
            lock = threading.Lock()

            def client(i):
                x = np.full((1, 3), float(i), dtype=np.float32)
                body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": x.flatten().tolist()}]}
                status, _, out = server.post_json("/v2/models/addrelu/infer", body)
                with lock:
                    results.append((status, out, x))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            # Wait until the server holds all 8 in its queue.
            deadline = time.time() + 30
            while time.time() < deadline:
                m = server.get("/metrics")[2].decode()
                if 'nv_inference_pending_request_count{model="addrelu",version="1"} 8' in m:
                    break
                time.sleep(0.02)
            else:
                self.fail("requests never queued")
            server.proc.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(60)
            rc = server.proc.wait(60)
            self.assertEqual(rc, 0, server.output())
            self.assertEqual(len(results), 8)
            for status, out, x in results:
                self.assertEqual(status, 200, out)
                y = np.array(json.loads(out)["outputs"][0]["data"], dtype=np.float32).reshape(1, 3)
                np.testing.assert_allclose(y, ss.add_relu_reference(x), atol=1e-6)
            self.assertIn("SIGTERM", server.output())
        finally:
            server.close()
            shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    args, rest = ap.parse_known_args()
    KILN = args.kiln
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
