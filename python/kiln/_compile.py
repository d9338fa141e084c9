"""kiln.compile and kiln.load: the short API, written on the TensorRT-shaped classes of kiln._kiln.

compile() parses an ONNX model, turns `shapes` into an optimization profile, `precision` into
builder flags and `calibration` into an INT8 calibrator, builds and loads the engine.
"""
import os
import warnings

import numpy as np

from . import _kiln

_PRECISIONS = {
    "fp32": None,
    "bf16": _kiln.BuilderFlag.BF16,
    "fp16": _kiln.BuilderFlag.FP16,
    "int8": _kiln.BuilderFlag.INT8,
}
_LAYER_PRECISIONS = {
    "fp32": _kiln.DataType.FLOAT,
    "bf16": _kiln.DataType.BF16,
    "fp16": _kiln.DataType.HALF,
    "int8": _kiln.DataType.INT8,
}


class KilnWarning(UserWarning):
    """A warning from Kiln's builder or runtime (kiln.compile and kiln.load report them this way)."""


class _WarningsLogger(_kiln.ILogger):
    """compile()/load()'s default logger: warnings become Python warnings; errors become the
    exceptions raised, so they are not printed as well."""

    def __init__(self):
        super().__init__(_kiln.ILogger.Severity.WARNING)

    def log(self, severity, msg):
        if severity == _kiln.ILogger.Severity.WARNING:
            warnings.warn(msg, KilnWarning, stacklevel=2)


def _invalid(msg):
    """An InvalidArgumentError worded like Kiln's own (with its docs/troubleshooting.md section)."""
    return _kiln.InvalidArgumentError(_kiln._with_help(_kiln.ErrorCode.INVALID_ARGUMENT, msg))


def _precision_flags(precision):
    if not isinstance(precision, str):
        raise _invalid(f"precision must be a string such as 'fp32', 'bf16', 'int8' or 'int8+bf16', got {precision!r}")
    flags = []
    for part in precision.lower().replace(",", "+").split("+"):
        part = part.strip()
        if part not in _PRECISIONS:
            raise _invalid(f"precision: '{part}' is not one of {', '.join(_PRECISIONS)} "
                           "(combine with '+': 'int8+bf16')")
        if _PRECISIONS[part] is not None:
            flags.append(_PRECISIONS[part])
    return flags


def _budget_fraction(budget):
    if budget is None:
        return None
    if isinstance(budget, str):
        text = budget.strip()
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise _invalid(f"accuracy_budget: '{budget}' is not a fraction (0.01) or a percentage ('1%')") from None
    else:
        value = float(budget)
    if not 0 <= value < 1:
        raise _invalid(f"accuracy_budget: {budget!r} is outside [0, 1) (0.01 or '1%' allow a 1% loss)")
    return value


def _is_shape(value):
    return isinstance(value, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in value)


def _profile_from_shapes(builder, network, shapes):
    """One optimization profile from shapes={name: shape or (min, opt, max)}; None when not needed."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    shapes = dict(shapes or {})
    for name in shapes:
        if name not in names:
            raise _invalid(f"shapes: '{name}' is not an input of the model (inputs: {', '.join(names)})")
    for t in inputs:
        if t.name not in shapes and t.shape is not None and -1 in t.shape:
            raise _invalid(f"input '{t.name}' has dynamic dimensions {t.shape}: give its shape in "
                           f"shapes={{'{t.name}': (...)}} or a (min, opt, max) range")
    if not shapes:
        return None
    profile = builder.create_optimization_profile()
    for name, value in shapes.items():
        if _is_shape(value):
            lo = opt = hi = tuple(value)
        elif isinstance(value, (tuple, list)) and len(value) == 3 and all(_is_shape(v) for v in value):
            lo, opt, hi = (tuple(v) for v in value)
        else:
            raise _invalid(f"shapes['{name}']: expected a shape such as (1, 3, 224, 224) or a (min, opt, max) "
                           f"triple of shapes, got {value!r}")
        profile.set_shape(name, lo, opt, hi)
    return profile


def _default_calibration_batch(network, profile):
    """As `kiln build`: profile 0's opt batch, else the first input's static batch, else 8."""
    first = network.get_input(0)
    if profile is not None and first.name in profile.input_names:
        return profile.get_shape(first.name)[1][0]
    if first.shape and first.shape[0] > 0:
        return first.shape[0]
    return 8


def _sample_shapes(network, profile):
    """name -> (numpy dtype, the shape of one sample): the calibrator bindings without dim 0."""
    out = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if profile is not None and t.name in profile.input_names:
            dims = profile.get_shape(t.name)[1]
        else:
            dims = t.shape
        if not dims:
            raise _invalid(f"calibration: input '{t.name}' has no batch dimension (dim 0) to stack samples along")
        out[t.name] = (np.dtype(_kiln._numpy_dtype(t.dtype)), tuple(dims[1:]))
    return out


def _batches(source, samples, batch):
    """Re-cuts an iterable of input dicts (or arrays, for one input) into batches of `batch` samples.

    Each item holds one sample (rank of the input minus one) or a stack of samples along dim 0. A
    last partial batch is completed with repeats of its own samples, so no made-up values reach the
    histograms.
    """
    names = list(samples)
    pending = {n: [] for n in names}
    count = 0
    for index, item in enumerate(source):
        where = f"calibration item {index}"
        if not isinstance(item, dict):
            if hasattr(item, "keys"):
                item = dict(item)
            elif len(names) == 1:
                item = {names[0]: item}
            else:
                raise _invalid(f"{where}: the model has {len(names)} inputs ({', '.join(names)}): give dicts of "
                               "input name -> array")
        for key in item:
            if key not in samples:
                raise _invalid(f"{where}: '{key}' is not an input of the model (inputs: {', '.join(names)})")
        n_item = None
        arrays = {}
        for name in names:
            if name not in item:
                raise _invalid(f"{where} has no array for input '{name}'")
            dtype, shape = samples[name]
            a = np.asarray(item[name])
            if a.dtype != dtype:
                if not np.can_cast(a.dtype, dtype, "same_kind"):
                    raise _invalid(f"{where}: input '{name}' has dtype {a.dtype}, expected {dtype}")
                a = a.astype(dtype)
            if a.ndim == len(shape):
                a = a[np.newaxis]
            if a.shape[1:] != shape or a.ndim != len(shape) + 1:
                raise _invalid(f"{where}: input '{name}' has shape {tuple(np.asarray(item[name]).shape)}, expected "
                               f"{shape} for one sample or (n,) + {shape} for n samples")
            if n_item is not None and a.shape[0] != n_item:
                raise _invalid(f"{where}: the inputs hold different numbers of samples")
            n_item = a.shape[0]
            arrays[name] = a
        for name in names:
            pending[name].append(arrays[name])
        count += n_item
        while count >= batch:
            out = {}
            for name in names:
                joined = np.concatenate(pending[name])
                out[name] = np.ascontiguousarray(joined[:batch])
                pending[name] = [joined[batch:]] if joined.shape[0] > batch else []
            count -= batch
            yield out
    if count > 0:
        take = np.arange(batch) % count
        yield {name: np.ascontiguousarray(np.concatenate(pending[name])[take]) for name in names}


class _DatasetCalibrator(_kiln.IInt8Calibrator):
    """compile()'s calibrator: batches from _batches(), an optional cache file."""

    def __init__(self, batches, batch, algorithm, percentile, cache_path):
        super().__init__()
        self._batches = batches
        self._batch = batch
        self._algorithm = algorithm
        self._percentile = percentile
        self._cache_path = cache_path
        self.batches_read = 0

    def get_algorithm(self):
        return self._algorithm

    def get_percentile(self):
        return self._percentile

    def get_batch_size(self):
        return self._batch

    def get_batch(self, names):
        batch = next(self._batches, None)
        if batch is None:
            if self.batches_read == 0:
                raise _invalid("calibration: the data holds no samples")
            return None
        self.batches_read += 1
        return [batch[n] for n in names]

    def read_calibration_cache(self):
        if self._cache_path and os.path.exists(self._cache_path):
            with open(self._cache_path, "rb") as f:
                return f.read()
        return None

    def write_calibration_cache(self, cache):
        if self._cache_path:
            with open(self._cache_path, "wb") as f:
                f.write(cache)


def _calibration_algorithm(method):
    method = str(method).strip().lower()
    if method == "entropy":
        return _kiln.CalibrationAlgoType.ENTROPY_CALIBRATION_2, 99.99
    if method == "minmax":
        return _kiln.CalibrationAlgoType.MINMAX_CALIBRATION, 99.99
    if method.startswith("percentile"):
        value = 99.99
        if "=" in method:
            try:
                value = float(method.split("=", 1)[1])
            except ValueError:
                value = float("nan")
        if not 0 < value <= 100:
            raise _invalid(f"calibration_method: '{method}' needs a percentile in (0, 100]")
        return _kiln.CalibrationAlgoType.PERCENTILE_CALIBRATION, value
    raise _invalid(f"calibration_method: '{method}' is not entropy, minmax or percentile[=P]")


def _model_source(model):
    """(bytes or None, path or None) of a path, bytes, or anything with SerializeToString (onnx)."""
    if isinstance(model, (str, os.PathLike)):
        return None, os.fspath(model)
    if isinstance(model, (bytes, bytearray, memoryview)):
        return model, None
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString(), None
    raise _invalid(f"model must be a path, bytes or an onnx.ModelProto, got {type(model).__name__}")


def compile(model, precision="fp32", calibration=None, shapes=None, timing_cache=None, opt_level=3, threads=0,
            accuracy_budget=None, layer_precision=None, *, calibration_method="entropy", calibration_batch=None,
            calibration_cache=None, logger=None):
    """Builds an engine from an ONNX model and returns it loaded (a kiln.Engine).

    model: a path, the model's bytes, or an onnx.ModelProto.
    precision: "fp32" (default), "bf16", "fp16" (FP32 on the CPU), "int8", or a combination such
        as "int8+bf16" (best available per layer; docs/precision.md).
    calibration: INT8 calibration data: an iterable of dicts input name -> array (or of arrays for
        a one-input model), each one sample or a stack of samples along dim 0; or the path of a .npz
        file or a folder, as `kiln build --calib` takes.
    shapes: {input: shape} for a fixed shape, or {input: (min, opt, max)} for a range. Every input
        with dynamic dimensions needs one.
    timing_cache: a JSON file of tactic timings, read before and written after the build.
    opt_level: graph optimization level 0-5. threads: kernel threads (0: every core).
    accuracy_budget: the INT8 accuracy guard: 0.01 or "1%" keeps the most sensitive layers in
        floating point until the engine is within 1% of FP32 (top-1 agreement, else cosine).
    layer_precision: {node name: "fp32" | "bf16" | "int8" | kiln.DataType}.
    calibration_method: "entropy" (default), "minmax" or "percentile[=P]".
    calibration_batch: samples per calibration batch (default: the opt batch of `shapes`, else the
        model's static batch, else 8). calibration_cache: a file holding the calibration ranges:
        read when it exists (no calibration then), else written.
    logger: a kiln.ILogger; by default warnings become KilnWarning warnings.
    """
    logger = logger if logger is not None else _WarningsLogger()
    flags = _precision_flags(precision)
    budget = _budget_fraction(accuracy_budget)
    data, path = _model_source(model)

    builder = _kiln.Builder(logger)
    network = builder.create_network()
    _kiln._parse_strict(network, data, path)

    config = builder.create_builder_config()
    config.builder_optimization_level = opt_level
    config.num_threads = threads
    if timing_cache is not None:
        config.set_timing_cache(timing_cache)
    for flag in flags:
        config.set_flag(flag)
    profile = _profile_from_shapes(builder, network, shapes)
    if profile is not None:
        config.add_optimization_profile(profile)

    int8 = _kiln.BuilderFlag.INT8 in flags
    if int8 and calibration is None and calibration_cache is None and not network._has_qdq_nodes():
        raise _invalid("precision='int8' needs calibration data: calibration=<an iterable of input dicts or arrays, "
                       "or a .npz file or folder> (a model with QuantizeLinear/DequantizeLinear nodes needs none)")
    if not int8 and (calibration is not None or budget is not None):
        warnings.warn("calibration and accuracy_budget are only used with precision='int8'", KilnWarning, stacklevel=2)
    if int8 and (calibration is not None or calibration_cache is not None):
        batch = calibration_batch or _default_calibration_batch(network, profile)
        if isinstance(calibration, (str, os.PathLike)):
            source = _kiln._CalibrationFiles(calibration, network, batch)
        else:
            source = calibration if calibration is not None else ()
        algorithm, percentile = _calibration_algorithm(calibration_method)
        batches = _batches(iter(source), _sample_shapes(network, profile), batch)
        cache = os.fspath(calibration_cache) if calibration_cache is not None else None
        config.int8_calibrator = _DatasetCalibrator(batches, batch, algorithm, percentile, cache)
        if budget is not None:
            config.accuracy_budget = budget
    for layer, value in (layer_precision or {}).items():
        if isinstance(value, str):
            if value.lower() not in _LAYER_PRECISIONS:
                raise _invalid(f"layer_precision['{layer}']: '{value}' is not one of {', '.join(_LAYER_PRECISIONS)}")
            value = _LAYER_PRECISIONS[value.lower()]
        config.set_layer_precision(layer, value)

    try:
        serialized = builder.build_serialized_network(network, config)
    except _kiln.Error as e:
        # A mistake in the calibration data, found by _batches(): its own message, not the calibrator's.
        if isinstance(e.__cause__, _kiln.Error) and isinstance(config.int8_calibrator, _DatasetCalibrator):
            raise e.__cause__ from None
        raise
    return _kiln.Runtime(logger).deserialize_cuda_engine(serialized)


def load(path, logger=None):
    """Loads an engine file (memory-mapped: weights are not copied). Raises kiln.IoError for a file
    that cannot be read, kiln.InvalidModelError or kiln.UnsupportedError for one this Kiln or this
    machine cannot run."""
    runtime = _kiln.Runtime(logger if logger is not None else _WarningsLogger())
    return runtime.load_engine(path)

