"""`kiln serve` over gRPC, driven by a client that knows nothing of Kiln: only grpcio and the
protocol's .proto (src/serve/grpc/grpc_service.proto and the model_config.proto it imports),
compiled here with protoc, and a stub made from the service's descriptor (each method a unary call
on /inference.GRPCInferenceService/<method>), as a generated stub does. Checks health, metadata, raw and typed inference
against values computed here, errors with their gRPC codes, statistics, and a clean SIGTERM exit.

Run with Debian's /usr/bin/python3 (python3-grpcio, python3-numpy, python3-onnx; protoc from
protobuf-compiler) and KILN_CLI_PATH set to the kiln binary:
    KILN_CLI_PATH=BUILD/kiln /usr/bin/python3 tests/serve/test_grpc_client.py -v
"""
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

SOURCE_DIR = os.environ.get("KILN_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
CLI_PATH = os.environ.get("KILN_CLI_PATH", "")
PROTO = os.path.join(SOURCE_DIR, "src", "serve", "grpc", "grpc_service.proto")
CONFIG_PROTO = os.path.join(SOURCE_DIR, "src", "serve", "model_config.proto")  # imported by PROTO

try:
    import grpc
except ImportError:  # the package is optional: the test says why it did not run
    grpc = None
PROTOC = shutil.which("protoc")


class Stub:
    """The service's methods as unary calls, from its descriptor (what grpc_tools would generate)."""

    def __init__(self, pb, channel):
        service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        for m in service.methods:
            request, response = getattr(pb, m.input_type.name), getattr(pb, m.output_type.name)
            setattr(self, m.name, channel.unary_unary("/%s/%s" % (service.full_name, m.name),
                                                      request_serializer=request.SerializeToString,
                                                      response_deserializer=response.FromString))

W = np.array([1.0, -5.0, 0.5], dtype=np.float32)


def add_relu(x):
    """y = relu(x + [1, -5, 0.5]) with numpy: the expected output, independent of Kiln."""
    return np.maximum(x + W, 0).astype(np.float32)


def write_add_relu_model(path):
    """x: f32[batch, 3] -> y = Relu(x + w), opset 17, written with the onnx package."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
        "add_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def read_ports(path):
    """The --port-file's {"http": N, "grpc": N} once it is completely written, else None."""
    try:
        with open(path) as f:
            ports = json.load(f)
    except (OSError, ValueError):
        return None
    return ports if "grpc" in ports else None


@unittest.skipIf(grpc is None, "python3-grpcio is not installed")
@unittest.skipIf(not PROTOC, "protoc (protobuf-compiler) is not installed")
@unittest.skipIf(not CLI_PATH, "KILN_CLI_PATH is not set")
class ServeGrpcClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="kiln_serve_grpc_py_")
        # The client's modules, generated from the protocol file alone.
        gen = os.path.join(cls.tmp, "gen")
        os.makedirs(gen)
        rc = subprocess.call([PROTOC, "-I" + os.path.dirname(PROTO), "-I" + os.path.dirname(CONFIG_PROTO),
                              "--python_out=" + gen, PROTO, CONFIG_PROTO])
        assert rc == 0, "protoc failed on " + PROTO
        sys.path.insert(0, gen)
        cls.pb = importlib.import_module("grpc_service_pb2")

        repo = os.path.join(cls.tmp, "repo")
        os.makedirs(os.path.join(repo, "addrelu", "1"))
        with open(os.path.join(repo, "addrelu", "config.pbtxt"), "w") as f:
            f.write("max_batch_size: 4\n")
        write_add_relu_model(os.path.join(repo, "addrelu", "1", "model.onnx"))

        port_file = os.path.join(cls.tmp, "ports.json")
        cls.log = open(os.path.join(cls.tmp, "serve.log"), "w+")
        cls.proc = subprocess.Popen([CLI_PATH, "serve", "--model-repository", repo, "--http-port", "0", "--grpc-port",
                                     "0", "--port-file", port_file, "--fast-load"],
                                    stdout=cls.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        ports = read_ports(port_file)
        while ports is None:
            if cls.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("kiln serve did not start: " + cls.server_log())
            time.sleep(0.05)
            ports = read_ports(port_file)
        cls.port = ports["grpc"]
        cls.channel = grpc.insecure_channel("127.0.0.1:%d" % cls.port)
        cls.stub = Stub(cls.pb, cls.channel)
        while True:  # listening comes before loading: wait for readiness
            try:
                if cls.stub.ServerReady(cls.pb.ServerReadyRequest(), timeout=5).ready:
                    break
            except grpc.RpcError:
                pass
            if cls.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("kiln serve did not become ready: " + cls.server_log())
            time.sleep(0.05)

    @classmethod
    def server_log(cls):
        cls.log.flush()
        cls.log.seek(0)
        return cls.log.read()

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "proc", None) and cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait()
        if getattr(cls, "channel", None):
            cls.channel.close()
        cls.log.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def infer_request(self, x):
        pb = self.pb
        req = pb.ModelInferRequest(model_name="addrelu", id="py-1")
        req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.astype("<f4").tobytes())
        return req

    def test_a_health_and_metadata(self):
        pb = self.pb
        self.assertTrue(self.stub.ServerLive(pb.ServerLiveRequest()).live)
        self.assertTrue(self.stub.ServerReady(pb.ServerReadyRequest()).ready)
        self.assertTrue(self.stub.ModelReady(pb.ModelReadyRequest(name="addrelu")).ready)
        self.assertFalse(self.stub.ModelReady(pb.ModelReadyRequest(name="addrelu", version="9")).ready)
        meta = self.stub.ServerMetadata(pb.ServerMetadataRequest())
        self.assertEqual(meta.name, "kiln")
        self.assertIn("model_repository", meta.extensions)
        md = self.stub.ModelMetadata(pb.ModelMetadataRequest(name="addrelu"))
        self.assertEqual(list(md.versions), ["1"])
        self.assertEqual([(t.name, t.datatype, list(t.shape)) for t in md.inputs], [("x", "FP32", [-1, 3])])
        self.assertEqual([(t.name, t.datatype, list(t.shape)) for t in md.outputs], [("y", "FP32", [-1, 3])])

    def test_b_raw_and_typed_inference(self):
        x = np.array([[-2, 3, 7], [0.25, 6, -1], [1.5, 5.5, -0.75]], dtype=np.float32)
        resp = self.stub.ModelInfer(self.infer_request(x))
        self.assertEqual((resp.model_name, resp.model_version, resp.id), ("addrelu", "1", "py-1"))
        self.assertEqual([(o.name, o.datatype, list(o.shape)) for o in resp.outputs], [("y", "FP32", [3, 3])])
        y = np.frombuffer(resp.raw_output_contents[0], dtype="<f4").reshape(3, 3)
        np.testing.assert_array_equal(y, add_relu(x))

        req = self.pb.ModelInferRequest(model_name="addrelu")
        tensor = req.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        tensor.contents.fp32_contents.extend([4.0, 4.0, -4.0])
        req.outputs.add(name="y")
        resp = self.stub.ModelInfer(req)
        np.testing.assert_array_equal(np.frombuffer(resp.raw_output_contents[0], dtype="<f4"),
                                      add_relu(np.array([4.0, 4.0, -4.0], dtype=np.float32)))

    def test_c_errors_carry_grpc_codes(self):
        bad = self.infer_request(np.zeros((2, 3), dtype=np.float32))
        bad.model_name = "nosuch"
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.ModelInfer(bad)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertIn('unknown model "nosuch"', e.exception.details())

        wrong_shape = self.infer_request(np.zeros((2, 4), dtype=np.float32))
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.ModelInfer(wrong_shape)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("has shape [2, 4]", e.exception.details())

        with self.assertRaises(grpc.RpcError) as e:
            self.stub.RepositoryModelUnload(self.pb.RepositoryModelUnloadRequest(model_name="addrelu"))
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)

        # Still serving.
        x = np.ones((1, 3), dtype=np.float32)
        resp = self.stub.ModelInfer(self.infer_request(x))
        np.testing.assert_array_equal(np.frombuffer(resp.raw_output_contents[0], dtype="<f4"), add_relu(x).ravel())

    def test_d_repository_and_statistics(self):
        index = self.stub.RepositoryIndex(self.pb.RepositoryIndexRequest())
        self.assertEqual([(m.name, m.version, m.state) for m in index.models], [("addrelu", "1", "READY")])
        stats = self.stub.ModelStatistics(self.pb.ModelStatisticsRequest(name="addrelu"))
        self.assertEqual(len(stats.model_stats), 1)
        s = stats.model_stats[0]
        # test_b and test_c ran 3 good requests of 3 + 1 + 1 rows (unittest runs tests by name).
        self.assertEqual(s.inference_stats.success.count, 3)
        self.assertEqual(s.inference_count, 5)
        self.assertGreaterEqual(s.inference_stats.fail.count, 1)  # the wrong shape

    def test_d2_model_config(self):
        stub = self.stub
        c = stub.ModelConfig(self.pb.ModelConfigRequest(name="addrelu")).config
        self.assertEqual(c.name, "addrelu")
        self.assertEqual(c.max_batch_size, 4)
        self.assertEqual([(t.name, list(t.dims)) for t in c.input], [("x", [3])])
        with self.assertRaises(grpc.RpcError) as e:
            stub.ModelConfig(self.pb.ModelConfigRequest(name="nope"))
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_e_sigterm_exits_cleanly(self):
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(timeout=60), 0, self.server_log())
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.ServerLive(self.pb.ServerLiveRequest(), timeout=5)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)


if __name__ == "__main__":
    unittest.main()
