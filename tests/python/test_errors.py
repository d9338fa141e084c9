"""kiln.Error and its subclasses: every failure raises the class of its kiln::ErrorCode with the text the
`kiln` command prints after 'kiln: error (<kind>): '."""
import unittest

import numpy as np

import kiln
import support

RANGE = ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))


def unknown_op_model():
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("FrobnicateV9", ["h"], ["y"])], "bad",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


class ErrorClassesTest(unittest.TestCase):
    def test_hierarchy_codes_and_kinds(self):
        cases = [
            (kiln.InvalidModelError, kiln.ErrorCode.INVALID_MODEL, "invalid model", ()),
            (kiln.UnsupportedError, kiln.ErrorCode.UNSUPPORTED, "unsupported", ()),
            (kiln.InvalidArgumentError, kiln.ErrorCode.INVALID_ARGUMENT, "invalid argument", (ValueError,)),
            (kiln.IoError, kiln.ErrorCode.IO, "I/O error", (OSError,)),
            (kiln.InternalError, kiln.ErrorCode.INTERNAL, "internal error", ()),
        ]
        for cls, code, kind, extra in cases:
            self.assertTrue(issubclass(cls, kiln.Error))
            for base in extra:
                self.assertTrue(issubclass(cls, base), cls)
            e = cls("message")
            self.assertEqual((e.code, e.kind, str(e)), (code, kind, "message"))
        self.assertTrue(issubclass(kiln.Error, Exception))


class CliParityTest(support.TempDirTestCase):
    """Each case fails once through Python and once through the CLI, on the same file."""

    def assert_same_as_cli(self, exc, cli_args):
        code, stderr = support.run_cli(*cli_args)
        self.assertEqual(code, 1, stderr)
        kind, text = support.cli_error_text(stderr)
        self.assertEqual(kind, exc.kind)
        self.assertEqual(str(exc), text)

    def test_bad_model_bytes(self):
        path = self.write("garbage.onnx", b"\x08\x07this is not protobuf")
        with self.assertRaises(kiln.InvalidModelError) as cm:
            kiln.compile(path)
        self.assertIn("garbage.onnx", str(cm.exception))
        self.assert_same_as_cli(cm.exception, ["build", path, "-o", self.path("out.engine")])
        with self.assertRaises(kiln.InvalidModelError):
            kiln.compile(b"\x08\x07this is not protobuf")

    def test_unsupported_op(self):
        path = self.write("unknown_op.onnx", unknown_op_model())
        with self.assertRaises(kiln.UnsupportedError) as cm:
            kiln.compile(path)
        self.assertIn("FrobnicateV9", str(cm.exception))
        self.assertIn("see docs/troubleshooting.md#unknown-op", str(cm.exception))
        self.assert_same_as_cli(cm.exception, ["build", path, "-o", self.path("out.engine")])

    def test_missing_files(self):
        missing = self.path("missing.onnx")
        with self.assertRaises(kiln.IoError) as cm:
            kiln.compile(missing)
        self.assertIsInstance(cm.exception, OSError)
        self.assert_same_as_cli(cm.exception, ["build", missing, "-o", self.path("out.engine")])
        with self.assertRaises(kiln.IoError) as cm:
            kiln.load(self.path("missing.engine"))
        self.assert_same_as_cli(cm.exception, ["run", self.path("missing.engine")])

    def test_corrupted_engine(self):
        engine = kiln.compile(support.conv_net()[0], shapes={"x": RANGE})
        data = bytearray(engine.serialize())
        data[len(data) // 2] ^= 0xFF
        path = self.write("corrupt.engine", bytes(data))
        with self.assertRaises(kiln.Error) as cm:
            kiln.load(path)
        self.assertRegex(str(cm.exception), "CRC-32 mismatch|checksum")
        self.assertIn("see docs/troubleshooting.md#engine-file", str(cm.exception))
        self.assert_same_as_cli(cm.exception, ["run", path])
        # From bytes, through the TensorRT-shaped runtime: same class.
        with self.assertRaises(type(cm.exception)) as cm2:
            kiln.Runtime(support.quiet_logger()).deserialize_cuda_engine(bytes(data))
        self.assertRegex(str(cm2.exception), "CRC-32 mismatch|checksum")

    def test_input_outside_the_profile(self):
        engine = kiln.compile(support.conv_net()[0], shapes={"x": RANGE})
        path = self.path("conv.engine")
        engine.save(path)
        with self.assertRaises(kiln.InvalidArgumentError) as cm:
            engine({"x": support.images(9, 1)})
        self.assertTrue(str(cm.exception).startswith(
            "input 'x' has shape 9x3x8x8, outside optimization profile 0 (min 1x3x8x8, max 4x3x8x8); rebuild the "
            "engine with a profile that covers it (see docs/troubleshooting.md#"), str(cm.exception))
        self.assert_same_as_cli(cm.exception, ["run", path, "--shapes", "x:9x3x8x8"])


class RunErrorsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.engine = kiln.compile(support.conv_net()[0], shapes={"x": RANGE})

    def test_unknown_input_name(self):
        with self.assertRaises(kiln.InvalidArgumentError) as cm:
            self.engine({"image": support.images(1, 0)})
        self.assertIsInstance(cm.exception, ValueError)
        self.assertEqual(str(cm.exception), "'image' is not an input of the engine (inputs: x)" + support.SEE_ARGUMENT)

    def test_missing_input(self):
        with self.assertRaisesRegex(kiln.InvalidArgumentError, r"^missing input 'x' of type f32\[batch,3,8,8\] \(see"):
            self.engine({})

    def test_wrong_dtype(self):
        with self.assertRaises(kiln.InvalidArgumentError) as cm:
            self.engine({"x": support.images(2, 0).astype(np.float64)})
        self.assertEqual(str(cm.exception), "input 'x' has dtype float64, expected float32" + support.SEE_ARGUMENT)
        with self.assertRaisesRegex(kiln.InvalidArgumentError,
                                    r"^input 'x' has dtype complex128, expected float32 \(see"):
            self.engine({"x": [[[[1j]]]]})

    def test_wrong_shape(self):
        with self.assertRaises(kiln.InvalidArgumentError) as cm:
            self.engine({"x": np.zeros((2, 3, 9, 8), np.float32)})
        self.assertEqual(str(cm.exception),
                         "input 'x' has shape 2x3x9x8, expected [batch,3,8,8]" + support.SEE_ARGUMENT)
        with self.assertRaisesRegex(kiln.InvalidArgumentError,
                                    r"^input 'x' has shape 3x8x8, expected \[batch,3,8,8\] \(see"):
            self.engine({"x": np.zeros((3, 8, 8), np.float32)})

    def test_bad_outputs(self):
        with self.assertRaisesRegex(kiln.InvalidArgumentError, r"^output 'y' must be a writeable C-contiguous numpy "
                                    r"array of dtype float32 and shape \(2, 5\), got float64 \(2, 5\) \(see"):
            self.engine({"x": support.images(2, 0)}, outputs={"y": np.zeros((2, 5))})
        with self.assertRaisesRegex(kiln.InvalidArgumentError,
                                    r"^'z' is not an output of the engine \(outputs: y\) \(see"):
            self.engine({"x": support.images(2, 0)}, outputs={"z": np.zeros((2, 5), np.float32)})

    def test_trt_context_errors(self):
        logger = support.quiet_logger()
        runtime = kiln.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(self.engine.serialize())
        context = engine.create_execution_context()
        with self.assertRaises(kiln.InvalidArgumentError) as cm:
            context.set_input_shape("x", (9, 3, 8, 8))
        self.assertEqual(str(cm.exception), "setInputShape('x', [9,3,8,8]): outside every optimization profile "
                                            "(profile 0: min 1x3x8x8, max 4x3x8x8); rebuild the engine with a "
                                            "profile that covers it" + support.SEE_ARGUMENT)
        self.assertEqual(logger.errors()[-1] + support.SEE_ARGUMENT, str(cm.exception))  # the logger saw it too
        with self.assertRaisesRegex(kiln.InvalidArgumentError, r"^setInputShape\('nope', \[1\]\): not an input"):
            context.set_input_shape("nope", (1,))
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "call setInputShape\\(\\) first"):
            context.execute_async_v3(0)
        context.set_input_shape("x", (2, 3, 8, 8))
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "no address set for 'x', 'y'"):
            context.execute_async_v3(0)
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "pass no stream"):
            context.execute_async_v3(1234)
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "1 bindings for an engine with 2 IO tensors"):
            context.execute_v2([0])
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "'z' is not an input or output of the engine"):
            engine.get_tensor_shape("z")
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "'z' is not an input or output of the engine"):
            context.set_tensor_address("z", 0)


class BuildErrorsTest(unittest.TestCase):
    def test_dynamic_input_without_shapes(self):
        with self.assertRaisesRegex(kiln.InvalidArgumentError, r"^input 'x' has dynamic dimensions \(-1, 3, 8, 8\): "
                                    r"give its shape in shapes=\{'x': \(...\)\} or a \(min, opt, max\) range \(see"):
            kiln.compile(support.conv_net()[0])
        # The TensorRT-shaped builder says the same in its own terms.
        logger = support.quiet_logger()
        builder = kiln.Builder(logger)
        network = builder.create_network()
        kiln.OnnxParser(network, logger).parse(support.conv_net()[0])
        with self.assertRaisesRegex(kiln.InvalidArgumentError, r"^input 'x' has dynamic dimensions \[batch,3,8,8\]: "
                                    "give its range in an optimization profile"):
            builder.build_serialized_network(network, builder.create_builder_config())

    def test_bad_profiles(self):
        logger = support.quiet_logger()
        builder = kiln.Builder(logger)
        profile = builder.create_optimization_profile()
        profile.set_shape("x", (4, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8))
        with self.assertRaisesRegex(kiln.InvalidArgumentError,
                                    "^addOptimizationProfile: input 'x' needs min <= opt <= max"):
            builder.create_builder_config().add_optimization_profile(profile)
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "dimensions must be >= 0"):
            profile.set_shape("x", (-1, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8))
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "a shape is a sequence of ints"):
            profile.set_shape("x", 4, (2, 3, 8, 8), (8, 3, 8, 8))
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "dimension 1 is static"):
            kiln.compile(support.conv_net()[0], shapes={"x": ((1, 4, 8, 8), (2, 4, 8, 8), (4, 4, 8, 8))})

    def test_compile_argument_mistakes(self):
        data = support.conv_net()[0]
        cases = [
            (dict(precision="int4"), "precision: 'int4' is not one of fp32, bf16, fp16, int8"),
            (dict(precision="int8"), "precision='int8' needs calibration data"),
            (dict(shapes={"image": (1, 3, 8, 8)}), "shapes: 'image' is not an input of the model (inputs: x)"),
            (dict(shapes={"x": "1x3x8x8"}), "shapes['x']: expected a shape"),
            (dict(accuracy_budget=1.5, precision="int8", calibration=[]), "accuracy_budget: 1.5 is outside [0, 1)"),
            (dict(opt_level=9), "builder optimization level 9 is out of range (0 to 5)"),
            (dict(precision="int8", calibration=[np.zeros((2, 3, 9, 9), np.float32)]),
             "calibration item 0: input 'x' has shape (2, 3, 9, 9), expected (3, 8, 8)"),
            (dict(precision="int8", calibration=[]), "calibration: the data holds no samples"),
            (dict(precision="int8", calibration=[{"y": np.zeros((3, 8, 8), np.float32)}]),
             "calibration item 0: 'y' is not an input of the model"),
            (dict(precision="int8", calibration="/nonexistent/calib.npz"), "/nonexistent/calib.npz"),
        ]
        for kwargs, message in cases:
            kwargs.setdefault("shapes", {"x": RANGE})
            with self.subTest(**{k: repr(v)[:40] for k, v in kwargs.items()}):
                with self.assertRaises(kiln.InvalidArgumentError) as cm:
                    kiln.compile(data, **kwargs)
                self.assertIn(message, str(cm.exception))


if __name__ == "__main__":
    unittest.main()
