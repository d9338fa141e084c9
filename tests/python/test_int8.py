"""INT8 through Python calibrator subclasses: entropy and min/max, the calibration cache round trip,
and failures inside the calibrator's methods."""
import unittest

import numpy as np

import kiln
import support

BATCH = 4


class ListCalibrator(kiln.IInt8EntropyCalibrator2):
    """Returns the given [BATCH, 3, 8, 8] arrays one per get_batch (as a list), and a cache if given."""

    def __init__(self, batches, cache=None):
        kiln.IInt8EntropyCalibrator2.__init__(self)
        self.batches = list(batches)
        self.cache = cache
        self.get_batch_calls = 0
        self.names_seen = None
        self.written = None

    def get_batch_size(self):
        return BATCH

    def get_batch(self, names):
        self.get_batch_calls += 1
        self.names_seen = names
        if not self.batches:
            return None
        return [self.batches.pop(0)]

    def read_calibration_cache(self):
        return self.cache

    def write_calibration_cache(self, cache):
        self.written = cache


class DictMinMaxCalibrator(kiln.IInt8MinMaxCalibrator):
    """Returns dicts name -> array; no cache methods (the base class's defaults)."""

    def __init__(self, batches):
        super().__init__()
        self.batches = list(batches)

    def get_batch_size(self):
        return BATCH

    def get_batch(self, names):
        return {"x": self.batches.pop(0)} if self.batches else None


def calibration_batches(count=6, seed=100):
    return [support.images(BATCH, seed + i) for i in range(count)]


def build(calibrator, logger=None, flags=(kiln.BuilderFlag.INT8,)):
    logger = logger or support.quiet_logger()
    builder = kiln.Builder(logger)
    network = builder.create_network()
    kiln.OnnxParser(network, logger).parse(support.conv_net()[0])
    config = builder.create_builder_config()
    for f in flags:
        config.set_flag(f)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 3, 8, 8), (BATCH, 3, 8, 8), (8, 3, 8, 8))
    config.add_optimization_profile(profile)
    config.int8_calibrator = calibrator
    assert config.int8_calibrator is calibrator
    serialized = builder.build_serialized_network(network, config)
    return kiln.Runtime(logger).deserialize_cuda_engine(serialized)


class Int8CalibratorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        _, cls.model = support.conv_net()
        cls.x = support.images(8, 7)
        cls.reference = support.torch_reference(cls.model, cls.x)

    def assert_int8_close(self, y):
        # INT8 activations and weights: an error of a few percent of the output's range, far from FP32's 1e-5.
        scale = np.abs(self.reference).max()
        self.assertLess(np.abs(y - self.reference).max(), 0.05 * scale)
        self.assertGreater(support.cosine(y, self.reference), 0.995)

    def test_entropy_calibration_then_the_cache_skips_get_batch(self):
        logger = support.quiet_logger()
        logger.min_severity = kiln.ILogger.INFO
        calibrator = ListCalibrator(calibration_batches())
        engine = build(calibrator, logger)
        self.assertEqual(calibrator.get_batch_calls, 7)  # six batches, then None
        self.assertEqual(calibrator.names_seen, ["x"])
        self.assertIsInstance(calibrator.written, bytes)
        self.assertTrue(calibrator.written.startswith(b"kiln-calibration"))
        self.assertTrue(any(m.startswith("precision: int8:") for s, m in logger.messages), logger.messages)
        y = engine({"x": self.x})["y"]
        self.assert_int8_close(y)
        self.assertGreater(np.abs(y - self.reference).max(), 1e-4)  # quantized, not FP32

        cached = ListCalibrator(calibration_batches(), cache=calibrator.written)
        engine2 = build(cached)
        self.assertEqual(cached.get_batch_calls, 0)
        self.assertIsNone(cached.written)
        np.testing.assert_allclose(engine2({"x": self.x})["y"], y, rtol=0, atol=1e-5)

    def test_min_max_calibrator_returning_dicts(self):
        engine = build(DictMinMaxCalibrator(calibration_batches(seed=300)))
        self.assert_int8_close(engine({"x": self.x})["y"])

    def test_algorithm_defaults(self):
        self.assertEqual(ListCalibrator([]).get_algorithm(), kiln.CalibrationAlgoType.ENTROPY_CALIBRATION_2)
        self.assertEqual(DictMinMaxCalibrator([]).get_algorithm(), kiln.CalibrationAlgoType.MINMAX_CALIBRATION)

        class Percentile(ListCalibrator):
            def get_algorithm(self):
                return kiln.CalibrationAlgoType.PERCENTILE_CALIBRATION

            def get_percentile(self):
                return 150.0

        with self.assertRaisesRegex(kiln.InvalidArgumentError, r"getPercentile\(\) returned 150.*\(0, 100\]"):
            build(Percentile(calibration_batches()))

    def test_an_exception_in_get_batch_fails_the_build_with_its_message(self):
        class Broken(ListCalibrator):
            def get_batch(self, names):
                raise ValueError("batch 3 is corrupt")

        with self.assertRaises(kiln.InvalidArgumentError) as cm:
            build(Broken(calibration_batches()))
        self.assertEqual(str(cm.exception),
                         "Broken.get_batch raised ValueError: batch 3 is corrupt" + support.SEE_ARGUMENT)
        self.assertIsInstance(cm.exception.__cause__, ValueError)
        self.assertEqual(str(cm.exception.__cause__), "batch 3 is corrupt")

        # A kiln.Error keeps its class.
        class NoFile(ListCalibrator):
            def get_batch(self, names):
                raise kiln.IoError("calib.bin: cannot open")

        with self.assertRaises(kiln.IoError) as cm:
            build(NoFile(calibration_batches()))
        self.assertEqual(str(cm.exception), "NoFile.get_batch raised IoError: calib.bin: cannot open" + support.SEE_IO)

    def test_an_exception_in_the_cache_methods_or_batch_size(self):
        class BadSize(ListCalibrator):
            def get_batch_size(self):
                raise RuntimeError("no size")

        with self.assertRaisesRegex(kiln.InvalidArgumentError, r"^BadSize.get_batch_size raised RuntimeError: no size "
                                    r"\(see docs/troubleshooting.md#invalid-argument\)$"):
            build(BadSize([]))

        class BadWrite(ListCalibrator):
            def write_calibration_cache(self, cache):
                raise PermissionError("read-only")

        with self.assertRaisesRegex(kiln.InvalidArgumentError,
                                    "^BadWrite.write_calibration_cache raised PermissionError: read-only "
                                    r"\(see docs/troubleshooting.md#invalid-argument\)$"):
            build(BadWrite(calibration_batches()))

    def test_wrong_arrays_from_get_batch(self):
        class WrongShape(ListCalibrator):
            def get_batch(self, names):
                return [np.zeros((2, 3, 8, 8), np.float32)]

        with self.assertRaises(kiln.InvalidArgumentError) as cm:
            build(WrongShape([]))
        self.assertIn("WrongShape.get_batch: the array for input 'x' has shape (2, 3, 8, 8), expected (4, 3, 8, 8)",
                      str(cm.exception))

        class WrongType(ListCalibrator):
            def get_batch(self, names):
                return np.zeros((4, 3, 8, 8), np.float32)  # an array, not a list of arrays

        with self.assertRaisesRegex(kiln.InvalidArgumentError, "must return a list of numpy arrays"):
            build(WrongType([]))

        class IntData(ListCalibrator):
            def get_batch(self, names):
                return [np.zeros((4, 3, 8, 8), np.complex64)]

        with self.assertRaisesRegex(kiln.InvalidArgumentError, "has dtype complex64, expected float32"):
            build(IntData([]))

    def test_float64_batches_are_converted(self):
        batches = [b.astype(np.float64) for b in calibration_batches(seed=500)]
        self.assert_int8_close(build(ListCalibrator(batches))({"x": self.x})["y"])

    def test_int8_without_a_calibrator_is_refused(self):
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "BuilderFlag::kINT8 needs calibration data"):
            build(None)

    def test_a_cache_of_another_model_is_refused(self):
        bad = b"kiln-calibration 1 method=entropy samples=8 model=0123456789abcdef\n1 0 1 x\n"
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "another model"):
            build(ListCalibrator([], cache=bad))


if __name__ == "__main__":
    unittest.main()
