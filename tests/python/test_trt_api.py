"""The TensorRT-shaped API end to end: parse, config with a profile, build, deserialize, run with raw
host addresses, dynamic shapes, hand-built networks, loggers, metadata."""
import contextlib
import io
import json
import os
import subprocess
import unittest

import numpy as np

import kiln
import support
from support import FP32_ATOL, FP32_RTOL


def build_conv_engine(logger, profile_shapes=((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))):
    data, _ = support.conv_net()
    builder = kiln.Builder(logger)
    network = builder.create_network(1 << int(kiln.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = kiln.OnnxParser(network, logger)
    assert parser.parse(data), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", *profile_shapes)
    config.add_optimization_profile(profile)
    return builder.build_serialized_network(network, config)


class TrtFlowTest(support.TempDirTestCase):
    def test_parse_build_deserialize_and_run_at_two_batch_sizes(self):
        data, model = support.conv_net()
        logger = support.quiet_logger()
        builder = kiln.Builder(logger)
        network = builder.create_network()
        parser = kiln.OnnxParser(network, logger)
        self.assertTrue(parser.parse(data))
        self.assertEqual(parser.num_errors, 0)

        self.assertEqual(network.num_inputs, 1)
        x_info = network.get_input(0)
        self.assertEqual((x_info.name, x_info.shape, x_info.dtype), ("x", (-1, 3, 8, 8), kiln.DataType.FLOAT))
        self.assertEqual(network.num_outputs, 1)
        self.assertEqual(network.get_output(0).name, "y")
        self.assertEqual(network.num_layers, 7)  # Conv Relu Conv Relu GlobalAveragePool Flatten Gemm
        self.assertEqual(network.get_layer(0).type, "Conv")
        with self.assertRaises(IndexError):
            network.get_input(1)

        config = builder.create_builder_config()
        config.set_memory_pool_limit(kiln.MemoryPoolType.WORKSPACE, 1 << 26)
        self.assertEqual(config.get_memory_pool_limit(kiln.MemoryPoolType.WORKSPACE), 1 << 26)
        profile = builder.create_optimization_profile()
        profile.set_shape("x", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
        self.assertEqual(profile.get_shape("x"), ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)))
        self.assertEqual(config.add_optimization_profile(profile), 0)
        self.assertEqual(config.num_optimization_profiles, 1)
        serialized = builder.build_serialized_network(network, config)
        self.assertIsInstance(serialized, bytes)
        self.assertTrue(serialized.startswith(b"KILNENG\0"))
        self.assertEqual(logger.errors(), [])

        runtime = kiln.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(serialized)
        self.assertEqual(engine.num_io_tensors, 2)
        self.assertEqual([engine.get_tensor_name(i) for i in range(2)], ["x", "y"])
        self.assertEqual(engine.get_tensor_mode("x"), kiln.TensorIOMode.INPUT)
        self.assertEqual(engine.get_tensor_mode("y"), kiln.TensorIOMode.OUTPUT)
        self.assertEqual(engine.get_tensor_mode("nope"), kiln.TensorIOMode.NONE)
        self.assertEqual(engine.get_tensor_shape("x"), (-1, 3, 8, 8))
        self.assertEqual(engine.get_tensor_dtype("y"), kiln.DataType.FLOAT)
        self.assertEqual(engine.num_optimization_profiles, 1)
        self.assertEqual(engine.get_tensor_profile_shape("x", 0), [(1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)])

        context = engine.create_execution_context()
        self.assertIs(context.engine, engine)
        self.assertFalse(context.all_input_dimensions_specified)
        for batch, seed in ((1, 1), (3, 2)):
            x = support.images(batch, seed)
            self.assertTrue(context.set_input_shape("x", x.shape))
            self.assertTrue(context.all_input_dimensions_specified)
            self.assertEqual(context.get_tensor_shape("y"), (batch, 5))
            self.assertEqual(context.active_optimization_profile, 0)
            y = np.full((batch, 5), np.nan, np.float32)
            context.set_tensor_address("x", x.ctypes.data)
            context.set_tensor_address("y", y.ctypes.data)
            self.assertEqual(context.get_tensor_address("y"), y.ctypes.data)
            self.assertTrue(context.execute_async_v3(0))
            np.testing.assert_allclose(y, support.torch_reference(model, x), rtol=FP32_RTOL, atol=FP32_ATOL)

            y2 = np.full((batch, 5), np.nan, np.float32)
            self.assertTrue(context.execute_v2([x.ctypes.data, y2.ctypes.data]))
            np.testing.assert_array_equal(y2, y)

    def test_serialize_save_and_load_engine_round_trip(self):
        _, model = support.conv_net()
        logger = support.quiet_logger()
        serialized = build_conv_engine(logger)
        runtime = kiln.Runtime(logger)
        engine = runtime.deserialize_engine(serialized)
        self.assertEqual(engine.serialize(), serialized)
        path = self.path("conv.engine")
        engine.save(path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), serialized)
        loaded = runtime.load_engine(path)
        x = support.images(2, 5)
        context = loaded.create_execution_context()
        context.set_input_shape("x", x.shape)
        y = np.empty((2, 5), np.float32)
        context.execute_v2([x.ctypes.data, y.ctypes.data])
        np.testing.assert_allclose(y, support.torch_reference(model, x), rtol=FP32_RTOL, atol=FP32_ATOL)

    def test_hand_built_network(self):
        logger = support.quiet_logger()
        builder = kiln.Builder(logger)
        network = builder.create_network()
        rng = np.random.default_rng(3)
        w = rng.standard_normal((4, 3)).astype(np.float32)
        x_info = network.add_input("x", kiln.float32, (-1, 4))
        self.assertEqual(x_info.shape, (-1, 4))
        network.add_constant("w", w)
        network.add_node("MatMul", ["x", "w"], ["h"])
        layer = network.add_node("LeakyRelu", ["h"], ["y"], {"alpha": 0.25}, name="act")
        self.assertEqual((layer.name, layer.type, layer.inputs, layer.outputs), ("act", "LeakyRelu", ["h"], ["y"]))
        network.mark_output("y")
        self.assertEqual(network.num_layers, 2)
        config = builder.create_builder_config()
        profile = kiln.OptimizationProfile()
        profile.set_shape("x", (1, 4), (2, 4), (6, 4))
        config.add_optimization_profile(profile)
        engine = kiln.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))

        x = rng.standard_normal((5, 4)).astype(np.float32)
        h = x.astype(np.float64) @ w.astype(np.float64)
        expected = np.where(h > 0, h, 0.25 * h)
        np.testing.assert_allclose(engine({"x": x})["y"], expected, rtol=1e-5, atol=1e-6)

    def test_plugin_library_provides_a_custom_op(self):
        plugin = os.environ.get("KILN_EXAMPLE_PLUGIN", "")
        if not os.path.exists(plugin):
            self.skipTest("the example plugin library was not built (KILN_EXAMPLE_PLUGIN)")
        with self.assertRaises(kiln.Error) as missing:
            kiln.load_plugin_library(os.path.join(self.tmp, "no_such_plugin.so"))
        self.assertIn("no_such_plugin.so", str(missing.exception))
        kiln.load_plugin_library(plugin)
        kiln.load_plugin_library(plugin)  # a second load does nothing
        logger = support.quiet_logger()
        builder = kiln.Builder(logger)
        network = builder.create_network()
        network.add_input("x", kiln.float32, (2, 5))
        network.add_node("ScaledTanh", ["x"], ["y"], {"alpha": 2.0, "beta": 0.5}, domain="kiln.example")
        network.mark_output("y")
        engine = kiln.Runtime(logger).deserialize_cuda_engine(
            builder.build_serialized_network(network, builder.create_builder_config()))
        x = np.random.default_rng(5).standard_normal((2, 5)).astype(np.float32)
        np.testing.assert_allclose(engine({"x": x})["y"], 2.0 * np.tanh(0.5 * x.astype(np.float64)), rtol=1e-5, atol=1e-6)

    def test_hand_built_network_mistakes_raise_with_the_logged_message(self):
        logger = support.quiet_logger()
        network = kiln.Builder(logger).create_network()
        network.add_input("x", np.float32, (2, 4))
        with self.assertRaises(kiln.InvalidArgumentError) as cm:
            network.add_node("Relu", ["missing"], ["y"])
        self.assertIn("input 'missing' is not defined yet", str(cm.exception))
        self.assertEqual([e + support.SEE_ARGUMENT for e in logger.errors()], [str(cm.exception)])
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "'x' is already defined"):
            network.add_input("x", kiln.float32, (2, 4))
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "no input, constant or node defines it"):
            network.mark_output("nothing")
        with self.assertRaisesRegex(kiln.InvalidArgumentError, "has no kiln.DataType"):
            network.add_input("z", np.int16, (2,))

    def test_loggers(self):
        logger = support.quiet_logger()
        logger.min_severity = kiln.ILogger.INFO
        build_conv_engine(logger)
        infos = [m for s, m in logger.messages if s == kiln.ILogger.INFO]
        self.assertTrue(any(m.startswith("building engine") for m in infos), infos)
        self.assertFalse(any(s == kiln.ILogger.VERBOSE for s, _ in logger.messages))

        # kiln.Logger prints "[kiln] SEVERITY: msg" to sys.stderr, from min_severity up.
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            console = kiln.Logger(kiln.Logger.WARNING)
            builder = kiln.Builder(console)
            network = builder.create_network()
            kiln.OnnxParser(network, console).parse(support.conv_net()[0])
            config = builder.create_builder_config()
            config.set_flag(kiln.BuilderFlag.FP16)
            profile = builder.create_optimization_profile()
            profile.set_shape("x", (1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8))
            config.add_optimization_profile(profile)
            builder.build_serialized_network(network, config)
        lines = stderr.getvalue().splitlines()
        self.assertTrue(lines and all(line.startswith("[kiln] WARNING: ") for line in lines), lines)
        self.assertTrue(any("BuilderFlag::kFP16" in line for line in lines), lines)

    def test_parser_reports_errors_by_return_value(self):
        logger = support.quiet_logger()
        network = kiln.Builder(logger).create_network()
        parser = kiln.OnnxParser(network, logger)
        self.assertFalse(parser.parse(b"\x08\x07garbage"))
        self.assertGreaterEqual(parser.num_errors, 1)
        self.assertEqual(parser.get_error(0), logger.errors()[0])
        self.assertIsNone(parser.get_error(parser.num_errors))
        parser.clear_errors()
        self.assertEqual(parser.num_errors, 0)
        self.assertFalse(parser.parse_from_file(self.path("missing.onnx")))
        self.assertIn("missing.onnx", parser.get_error(0))

    def test_parse_with_path_resolves_external_data(self):
        import onnx
        from onnx import helper, numpy_helper

        w = np.arange(12, dtype=np.float32).reshape(4, 3)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])], "ext",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
            [numpy_helper.from_array(w, "w")])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        path = self.path("ext.onnx")
        onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.bin",
                        size_threshold=0)
        with open(path, "rb") as f:
            data = f.read()
        logger = support.quiet_logger()
        builder = kiln.Builder(logger)
        # Without the path the external weights are refused; with it they are found beside the model.
        self.assertFalse(kiln.OnnxParser(builder.create_network(), logger).parse(data))
        network = builder.create_network()
        self.assertTrue(kiln.OnnxParser(network, logger).parse(data, path))
        engine = kiln.Runtime(logger).deserialize_cuda_engine(
            builder.build_serialized_network(network, builder.create_builder_config()))
        x = np.ones((2, 4), np.float32)
        np.testing.assert_array_equal(engine({"x": x})["y"], x @ w)

    def test_config_options(self):
        logger = support.quiet_logger()
        builder = kiln.Builder(logger)
        config = builder.create_builder_config()
        self.assertFalse(config.get_flag(kiln.BuilderFlag.INT8))
        config.set_flag(kiln.BuilderFlag.INT8)
        self.assertTrue(config.get_flag(kiln.BuilderFlag.INT8))
        config.clear_flag(kiln.BuilderFlag.INT8)
        self.assertFalse(config.get_flag(kiln.BuilderFlag.INT8))
        self.assertEqual(config.builder_optimization_level, 3)
        config.builder_optimization_level = 1
        self.assertEqual(config.builder_optimization_level, 1)
        config.num_threads = 1
        self.assertEqual(config.num_threads, 1)
        self.assertIsNone(config.int8_calibrator)
        self.assertIsNone(config.get_timing_cache())
        self.assertLess(config.accuracy_budget, 0)
        config.accuracy_budget = 0.02
        self.assertAlmostEqual(config.accuracy_budget, 0.02)

        # A timing cache is written after the build, as JSON.
        cache = self.path("timing.json")
        config.set_timing_cache(cache)
        self.assertEqual(config.get_timing_cache(), cache)
        network = builder.create_network()
        kiln.OnnxParser(network, logger).parse(support.conv_net()[0])
        profile = builder.create_optimization_profile()
        profile.set_shape("x", (1, 3, 8, 8), (1, 3, 8, 8), (2, 3, 8, 8))
        config.add_optimization_profile(profile)
        config.accuracy_budget = None
        builder.build_serialized_network(network, config)
        with open(cache) as f:
            json.load(f)

    def test_module_helpers(self):
        self.assertIs(kiln.nptype(kiln.float32), np.float32)
        self.assertIs(kiln.nptype(kiln.DataType.INT64), np.int64)
        self.assertIs(kiln.nptype(kiln.bool), np.bool_)
        self.assertIs(kiln.nptype(kiln.DataType.HALF), np.float16)
        with self.assertRaisesRegex(kiln.UnsupportedError, "bfloat16"):
            kiln.nptype(kiln.bfloat16)
        self.assertEqual(kiln.volume((2, 3, 4)), 24)
        self.assertEqual(kiln.DataType.HALF.itemsize, 2)
        self.assertRegex(kiln.__version__, r"^\d+\.\d+\.\d+$")
        if support.CLI_PATH and os.path.exists(support.CLI_PATH):
            out = subprocess.run([support.CLI_PATH, "--version"], capture_output=True, text=True).stdout
            self.assertEqual(out.split(), ["kiln", kiln.__version__])


if __name__ == "__main__":
    unittest.main()
