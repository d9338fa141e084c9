"""Kiln for Python: compile ONNX models into CPU engines and run them on numpy arrays.

Two APIs share the same objects:

* TensorRT's Python API, with its names: kiln.Logger, kiln.Builder, kiln.OnnxParser,
  kiln.BuilderConfig, kiln.Runtime, kiln.Engine, kiln.ExecutionContext, INT8 calibrators.
* A short one: ``engine = kiln.compile("model.onnx", precision="int8", calibration=data)``,
  ``outputs = engine({"input": x})``, ``engine.save(path)``, ``kiln.load(path)``.

Failures raise kiln.Error subclasses whose message is the text the ``kiln`` command prints.
See docs/python.md.
"""
import enum as _enum

import numpy as _np

from . import _kiln
from ._kiln import (  # noqa: F401 (re-exported)
    Builder,
    BuilderConfig,
    BuilderFlag,
    CalibrationAlgoType,
    DataType,
    Engine,
    Error,
    ErrorCode,
    ExecutionContext,
    ICudaEngine,
    IExecutionContext,
    IInt8Calibrator,
    IInt8EntropyCalibrator2,
    IInt8MinMaxCalibrator,
    ILogger,
    InternalError,
    InvalidArgumentError,
    InvalidModelError,
    IoError,
    IOptimizationProfile,
    Layer,
    MemoryPoolType,
    NetworkDefinition,
    OnnxParser,
    OptimizationProfile,
    Runtime,
    TensorInfo,
    TensorIOMode,
    UnsupportedError,
)

__version__ = _kiln.__version__


class Logger(ILogger):
    """Prints messages of ``min_severity`` or more severe to sys.stderr as "[kiln] WARNING: msg".

    TensorRT's trt.Logger. Subclass it (or kiln.ILogger) and override ``log(severity, msg)`` to
    handle messages yourself.
    """

    def __init__(self, min_severity=ILogger.Severity.WARNING):
        super().__init__(min_severity)
        self._console = True


class NetworkDefinitionCreationFlag(_enum.IntEnum):
    """Accepted for TensorRT code: Kiln's networks are always explicit-batch."""

    EXPLICIT_BATCH = 0


# TensorRT's module-level names for the data types.
float32 = DataType.FLOAT
float16 = DataType.HALF
bfloat16 = DataType.BF16
float64 = DataType.DOUBLE
int8 = DataType.INT8
uint8 = DataType.UINT8
int32 = DataType.INT32
int64 = DataType.INT64
globals()["bool"] = DataType.BOOL  # kiln.bool, without shadowing bool in this module's code


def nptype(dtype):
    """The numpy scalar type of a kiln.DataType (kiln.nptype(kiln.float32) is numpy.float32).

    Raises kiln.UnsupportedError for BF16, which numpy lacks.
    """
    return _np.dtype(_kiln._numpy_dtype(dtype)).type


def volume(shape):
    """The product of a shape's dimensions (TensorRT's trt.volume)."""
    n = 1
    for d in shape:
        n *= d
    return n


from ._compile import KilnWarning, compile, load  # noqa: E402 (needs the names above)
from ._kiln import load_plugin_library  # noqa: E402,F401 (re-exported)

__all__ = [
    "Builder", "BuilderConfig", "BuilderFlag", "CalibrationAlgoType", "DataType", "Engine", "Error", "ErrorCode",
    "ExecutionContext", "ICudaEngine", "IExecutionContext", "IInt8Calibrator", "IInt8EntropyCalibrator2",
    "IInt8MinMaxCalibrator", "ILogger", "InternalError", "InvalidArgumentError", "InvalidModelError", "IoError",
    "IOptimizationProfile", "KilnWarning", "Layer", "Logger", "MemoryPoolType", "NetworkDefinition",
    "NetworkDefinitionCreationFlag", "OnnxParser", "OptimizationProfile", "Runtime", "TensorInfo", "TensorIOMode",
    "UnsupportedError", "bfloat16", "bool", "compile", "float16", "float32", "float64", "int8", "int32", "int64",
    "load", "load_plugin_library", "nptype", "uint8", "volume",
]
