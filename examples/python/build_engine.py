"""ONNX -> Kiln engine with the TensorRT-style Python API, then one run (python3 build_engine.py MODEL ENGINE)."""
import sys

import numpy as np

import kiln

model_path = sys.argv[1] if len(sys.argv) > 1 else "examples/tiny_cnn.onnx"
engine_path = sys.argv[2] if len(sys.argv) > 2 else "tiny_cnn.engine"

logger = kiln.Logger(kiln.Logger.WARNING)
builder = kiln.Builder(logger)
network = builder.create_network()
parser = kiln.OnnxParser(network, logger)
with open(model_path, "rb") as f:
    if not parser.parse(f.read(), model_path):
        for i in range(parser.num_errors):
            print(parser.get_error(i))
        sys.exit(1)

config = builder.create_builder_config()
config.set_memory_pool_limit(kiln.MemoryPoolType.WORKSPACE, 1 << 26)
image = network.get_input(0)  # tiny_cnn.onnx: 'image', shape (-1, 1, 28, 28) with a dynamic batch
sample = image.shape[1:]
profile = builder.create_optimization_profile()
profile.set_shape(image.name, (1, *sample), (8, *sample), (32, *sample))
config.add_optimization_profile(profile)
serialized = builder.build_serialized_network(network, config)  # raises kiln.Error on failure
with open(engine_path, "wb") as f:
    f.write(serialized)

runtime = kiln.Runtime(logger)
engine = runtime.deserialize_cuda_engine(serialized)
context = engine.create_execution_context()
context.set_input_shape(image.name, (4, *sample))
buffers = {}  # host memory for every IO tensor; the context reads and writes it in place
for i in range(engine.num_io_tensors):
    name = engine.get_tensor_name(i)
    shape, dtype = context.get_tensor_shape(name), kiln.nptype(engine.get_tensor_dtype(name))
    if engine.get_tensor_mode(name) == kiln.TensorIOMode.INPUT:
        buffers[name] = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    else:
        buffers[name] = np.empty(shape, dtype)
    context.set_tensor_address(name, buffers[name].ctypes.data)
context.execute_async_v3(0)
for name, array in buffers.items():
    if engine.get_tensor_mode(name) == kiln.TensorIOMode.OUTPUT:
        print(name, array.shape)
        print(np.array2string(array, precision=4))
