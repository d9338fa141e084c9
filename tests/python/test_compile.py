"""The short API: kiln.compile for fp32/bf16/int8, engine(...) with zero-copy inputs and outputs,
save/load, metadata, calibration data forms, concurrency."""
import os
import threading
import unittest
import warnings

import numpy as np

import kiln
import support
from support import FP32_ATOL, FP32_RTOL

RANGE = ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))


class CompileTest(support.TempDirTestCase):
    @classmethod
    def setUpClass(cls):
        cls.onnx_bytes, cls.model = support.conv_net()
        cls.x = support.images(5, 11)
        cls.reference = support.torch_reference(cls.model, cls.x)

    def model_path(self):
        return self.write("conv.onnx", self.onnx_bytes)

    def calibration(self, n=24, seed=40):
        return support.images(n, seed)

    def test_fp32_from_a_path_matches_torch(self):
        engine = kiln.compile(self.model_path(), shapes={"x": RANGE})
        self.assertIsInstance(engine, kiln.Engine)
        out = engine({"x": self.x})
        self.assertEqual(list(out), ["y"])
        np.testing.assert_allclose(out["y"], self.reference, rtol=FP32_RTOL, atol=FP32_ATOL)
        # A one-input engine also takes the array alone; other batch sizes within the range work.
        np.testing.assert_allclose(engine(self.x[:1])["y"], self.reference[:1], rtol=FP32_RTOL, atol=FP32_ATOL)

    def test_fixed_shape_from_bytes(self):
        engine = kiln.compile(self.onnx_bytes, shapes={"x": (5, 3, 8, 8)}, opt_level=0, threads=1)
        np.testing.assert_allclose(engine(self.x)["y"], self.reference, rtol=FP32_RTOL, atol=FP32_ATOL)
        self.assertEqual(engine.get_tensor_profile_shape("x", 0), [(5, 3, 8, 8)] * 3)

    def test_metadata(self):
        engine = kiln.compile(self.onnx_bytes, shapes={"x": RANGE})
        (x,), (y,) = engine.inputs, engine.outputs
        self.assertEqual((x.name, x.shape, x.dtype), ("x", (-1, 3, 8, 8), kiln.DataType.FLOAT))
        self.assertEqual((y.name, y.shape, y.dtype), ("y", (-1, 5), kiln.DataType.FLOAT))
        self.assertIn("TensorInfo(name='x'", repr(x))

    def test_zero_copy_inputs_and_outputs(self):
        engine = kiln.compile(self.onnx_bytes, shapes={"x": RANGE})
        context = engine.create_execution_context()
        x = np.ascontiguousarray(self.x)
        out = context({"x": x})
        # The context read the caller's array and wrote into the returned one: no copy either way.
        self.assertEqual(context.get_tensor_address("x"), x.ctypes.data)
        self.assertEqual(context.get_tensor_address("y"), out["y"].ctypes.data)
        np.testing.assert_allclose(out["y"], self.reference, rtol=FP32_RTOL, atol=FP32_ATOL)

        # A non-contiguous view is copied first (same values, another address).
        wide = np.zeros((5, 3, 8, 16), np.float32)
        wide[..., ::2] = self.x
        view = wide[..., ::2]
        self.assertFalse(view.flags.c_contiguous)
        out = context({"x": view})
        self.assertNotEqual(context.get_tensor_address("x"), view.ctypes.data)
        np.testing.assert_allclose(out["y"], self.reference, rtol=FP32_RTOL, atol=FP32_ATOL)

        # Outputs given by the caller are written in place and returned.
        y = np.full((5, 5), np.nan, np.float32)
        out = engine({"x": x}, outputs={"y": y})
        self.assertIs(out["y"], y)
        self.assertTrue(np.shares_memory(out["y"], y))
        np.testing.assert_allclose(y, self.reference, rtol=FP32_RTOL, atol=FP32_ATOL)

        # Lists are converted to the engine's dtype.
        out = engine({"x": self.x.tolist()})
        np.testing.assert_allclose(out["y"], self.reference, rtol=FP32_RTOL, atol=FP32_ATOL)

    def test_bf16(self):
        logger = support.quiet_logger()
        logger.min_severity = kiln.ILogger.INFO
        engine = kiln.compile(self.onnx_bytes, precision="bf16", shapes={"x": RANGE}, logger=logger)
        # The builder marked the two convolutions and the linear layer (whether a BF16 kernel runs them
        # depends on the CPU and on which tactic was fastest).
        self.assertIn("precision: bf16: 3 convolutions/matmuls", [m for _, m in logger.messages])
        y = engine({"x": self.x})["y"]
        # BF16 products (8-bit mantissa) with f32 accumulation: within a few percent of the output's range.
        self.assertLess(np.abs(y - self.reference).max(), 0.03 * np.abs(self.reference).max())

    def test_int8_with_an_iterable_of_dicts(self):
        data = self.calibration()
        engine = kiln.compile(self.onnx_bytes, precision="int8", shapes={"x": RANGE},
                              calibration=[{"x": data[i:i + 3]} for i in range(0, len(data), 3)])
        y = engine({"x": self.x})["y"]
        self.assertLess(np.abs(y - self.reference).max(), 0.05 * np.abs(self.reference).max())
        self.assertGreater(np.abs(y - self.reference).max(), 1e-4)  # quantized, not FP32

    def test_int8_calibration_forms_agree(self):
        """Samples one by one, stacked arrays, an .npz and a folder of .npy give one calibration."""
        data = self.calibration()
        kwargs = dict(precision="int8", shapes={"x": RANGE}, calibration_method="minmax")
        y_samples = kiln.compile(self.onnx_bytes, calibration=iter(list(data)), **kwargs)(self.x)["y"]
        y_stacked = kiln.compile(self.onnx_bytes, calibration=[data], **kwargs)(self.x)["y"]
        np.savez(self.path("calib.npz"), x=data)
        y_npz = kiln.compile(self.onnx_bytes, calibration=self.path("calib.npz"), **kwargs)(self.x)["y"]
        os.mkdir(self.path("calib"))
        for i in range(0, len(data), 4):
            np.save(self.path(f"calib/batch_{i:03d}.npy"), data[i:i + 4])
        y_dir = kiln.compile(self.onnx_bytes, calibration=self.path("calib"), **kwargs)(self.x)["y"]
        # Min/max ranges do not depend on how the samples are grouped.
        for y in (y_stacked, y_npz, y_dir):
            np.testing.assert_allclose(y, y_samples, rtol=0, atol=1e-5)

    def test_int8_calibration_cache_file(self):
        cache = self.path("calib.cache")
        data = self.calibration()
        y1 = kiln.compile(self.onnx_bytes, precision="int8", shapes={"x": RANGE}, calibration=[data],
                          calibration_cache=cache)(self.x)["y"]
        with open(cache, "rb") as f:
            self.assertTrue(f.read().startswith(b"kiln-calibration"))
        # The cache alone is enough for the next build.
        y2 = kiln.compile(self.onnx_bytes, precision="int8", shapes={"x": RANGE}, calibration_cache=cache)(self.x)["y"]
        np.testing.assert_allclose(y2, y1, rtol=0, atol=1e-5)

    def test_int8_accuracy_budget_and_layer_precision(self):
        logger = support.quiet_logger()
        builder = kiln.Builder(logger)
        network = builder.create_network()
        kiln.OnnxParser(network, logger).parse(self.onnx_bytes)
        first_conv = network.get_layer(0).name
        data = self.calibration(64, 90)
        engine = kiln.compile(self.onnx_bytes, precision="int8", shapes={"x": RANGE}, calibration=[data],
                              accuracy_budget="0.1%", layer_precision={first_conv: "fp32"})
        y = engine({"x": self.x})["y"]
        self.assertGreater(support.cosine(y, self.reference), 0.999)
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "the network has no layer \\(node\\) named 'nope'"):
            kiln.compile(self.onnx_bytes, precision="int8", shapes={"x": RANGE}, calibration=[data],
                         layer_precision={"nope": "fp32"})

    def test_save_and_load(self):
        engine = kiln.compile(self.onnx_bytes, shapes={"x": RANGE})
        path = self.path("conv.engine")
        engine.save(path)
        loaded = kiln.load(path)
        np.testing.assert_array_equal(loaded(self.x)["y"], engine(self.x)["y"])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), engine.serialize())

    def test_fp16_warns_and_stays_fp32(self):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine = kiln.compile(self.onnx_bytes, precision="fp16", shapes={"x": RANGE})
        self.assertTrue(any(issubclass(w.category, kiln.KilnWarning) and "kFP16" in str(w.message) for w in caught))
        np.testing.assert_allclose(engine(self.x)["y"], self.reference, rtol=FP32_RTOL, atol=FP32_ATOL)

    def test_concurrent_calls_from_threads(self):
        engine = kiln.compile(self.onnx_bytes, shapes={"x": RANGE})
        inputs = [support.images(1 + i % 8, 200 + i) for i in range(16)]
        expected = [support.torch_reference(self.model, x) for x in inputs]
        results = [None] * len(inputs)

        def work(k):
            for i in range(k, len(inputs), 4):
                results[i] = engine({"x": inputs[i]})["y"]

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for got, want in zip(results, expected):
            np.testing.assert_allclose(got, want, rtol=FP32_RTOL, atol=FP32_ATOL)


if __name__ == "__main__":
    unittest.main()
