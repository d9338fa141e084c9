"""Builds and runs release the GIL: another Python thread makes progress while they are in flight.

The proof counts instead of timing. The interpreter's switch interval is set to 1000 s, so a thread
waiting for the GIL only gets it when the holder releases it on its own. A worker is released
(`go`) just before the call and counts to 1000; after the call returns, the count is complete only
if the call let go of the GIL while it ran.
"""
import sys
import threading
import unittest

import numpy as np

import kiln
import support

WIDTH = 512


def matmul_chain_engine():
    """x[N, 512] -> 4 x (MatMul, Relu): heavy enough that a run lasts a while."""
    logger = support.quiet_logger()
    builder = kiln.Builder(logger)
    network = builder.create_network()
    network.add_input("x", kiln.float32, (-1, WIDTH))
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32) for _ in range(4)]
    value = "x"
    for i, w in enumerate(weights):
        network.add_constant(f"w{i}", w)
        network.add_node("MatMul", [value, f"w{i}"], [f"m{i}"])
        network.add_node("Relu", [f"m{i}"], [f"r{i}"])
        value = f"r{i}"
    network.mark_output(value)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, WIDTH), (1024, WIDTH), (4096, WIDTH))
    config.add_optimization_profile(profile)
    return builder, network, config, weights


class GilTest(unittest.TestCase):
    def assert_releases_gil(self, call):
        go, done = threading.Event(), threading.Event()
        count = [0]

        def worker():
            go.wait()
            for _ in range(1000):
                count[0] += 1
            done.set()

        thread = threading.Thread(target=worker)
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1000.0)
        try:
            thread.start()
            go.set()
            call()
            finished_during_call = done.is_set()
            count_during_call = count[0]
        finally:
            sys.setswitchinterval(interval)
            thread.join()
        self.assertTrue(finished_during_call, f"the worker counted to {count_during_call} of 1000 during the call")

    def test_build_and_execute_release_the_gil(self):
        builder, network, config, weights = matmul_chain_engine()
        serialized = []
        self.assert_releases_gil(lambda: serialized.append(builder.build_serialized_network(network, config)))

        engine = kiln.Runtime(support.quiet_logger()).deserialize_cuda_engine(serialized[0])
        x = np.random.default_rng(1).standard_normal((4096, WIDTH)).astype(np.float32)
        y = np.empty((4096, WIDTH), np.float32)
        context = engine.create_execution_context()
        context.set_input_shape("x", x.shape)
        self.assertEqual(context.get_tensor_shape("r3"), x.shape)  # compiles for this shape now
        context.set_tensor_address("x", x.ctypes.data)
        context.set_tensor_address("r3", y.ctypes.data)
        self.assert_releases_gil(lambda: context.execute_async_v3(0))

        # The result is right too (float64 reference).
        expected = x.astype(np.float64)
        for w in weights:
            expected = np.maximum(expected @ w.astype(np.float64), 0)
        np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-3)

        # The numpy call releases it as well.
        self.assert_releases_gil(lambda: engine({"x": x}))


if __name__ == "__main__":
    unittest.main()
