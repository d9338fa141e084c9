// kiln.Runtime, kiln.Engine and kiln.ExecutionContext: the TensorRT-shaped calls (raw host addresses,
// execute_v2 / execute_async_v3) and the numpy call `engine({"x": x})`, which runs on the caller's
// arrays in place: C-contiguous inputs of the engine's dtype are read where they are, and outputs are
// numpy arrays the engine writes into.
#include <filesystem>
#include <mutex>

#include "api/api_internal.h"
#include "common.h"
#include "engine/engine_file.h"
#include "quant/calibration.h"

namespace kiln::py_bindings {

namespace {

struct PyRuntime {
  std::unique_ptr<Runtime> runtime;
  int32_t threads = 0;
};

// One ExecutionContext and the lock that lets one thread at a time use it. The lock is only taken
// with the GIL released (a thread holding it may need the GIL to log).
struct PyContext {
  std::shared_ptr<Engine> engine;
  std::unique_ptr<ExecutionContext> context;
  std::mutex mu;
  py::object py_engine;  // the kiln.Engine it came from (None for the engine's own pool)
};

// An engine plus the contexts its __call__ runs on: a call takes a free context (or makes one),
// so concurrent calls from several threads run in parallel, each with its own activation memory.
struct PyEngine {
  std::shared_ptr<Engine> engine;
  std::mutex pool_mu;
  std::vector<std::unique_ptr<PyContext>> pool;

  const EngineRuntime& runtime() const { return *ApiAccess::impl(*engine).runtime; }
  const Graph& graph() const { return runtime().model().graph; }

  std::unique_ptr<PyContext> make_context() {
    auto c = std::make_unique<PyContext>();
    c->engine = engine;
    c->context = engine->createExecutionContext();
    return c;
  }
};

// numpy array flags, as ints (the enums differ in type).
constexpr int kCContiguous = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_;
constexpr int kAligned = py::detail::npy_api::NPY_ARRAY_ALIGNED_;
constexpr int kWriteable = py::detail::npy_api::NPY_ARRAY_WRITEABLE_;

std::string names_of(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

py::object wrap_engine(std::shared_ptr<Engine> e, const ErrorCapture& capture, const std::string& fallback) {
  if (!e) capture.raise(fallback);
  auto pe = std::make_unique<PyEngine>();
  pe->engine = std::move(e);
  return py::cast(std::move(pe));
}

// ---- The numpy call

// Converts one input to an array the engine can read in place: an ndarray of the right dtype that is
// C-contiguous and aligned is used as is; other ndarrays are copied; other objects (lists, scalars)
// are converted. A dtype that would lose its kind (float -> int) is refused.
py::array input_array(const std::string& name, const py::handle& value, DType want_dt) {
  py::module_ np = py::module_::import("numpy");
  const py::dtype want = numpy_dtype(want_dt);
  if (py::isinstance<py::array>(value)) {
    auto arr = py::reinterpret_borrow<py::array>(value);
    if (!arr.dtype().equal(want))
      throw Error(ErrorCode::kInvalidArgument,
                  "input '" + name + "' has dtype " + text_of(arr.dtype()) + ", expected " + text_of(want));
    const int needed = kCContiguous | kAligned;
    if ((arr.flags() & needed) != needed) arr = np.attr("ascontiguousarray")(arr);
    return arr;
  }
  py::array arr = np.attr("asarray")(value);
  if (!arr.dtype().equal(want)) {
    if (!np.attr("can_cast")(arr.dtype(), want, "same_kind").cast<bool>())
      throw Error(ErrorCode::kInvalidArgument,
                  "input '" + name + "' has dtype " + text_of(arr.dtype()) + ", expected " + text_of(want));
    arr = arr.attr("astype")(want);
  }
  return np.attr("ascontiguousarray")(arr);
}

py::dict run_call(PyEngine& pe, PyContext& pc, const py::object& inputs, const py::object& outputs) {
  const EngineRuntime& rt = pe.runtime();
  const Graph& g = rt.model().graph;
  py::module_ np = py::module_::import("numpy");

  py::dict given;
  if (py::isinstance<py::dict>(inputs)) {
    given = inputs;
  } else if (py::isinstance(inputs, py::module_::import("collections.abc").attr("Mapping"))) {
    given = py::dict(inputs);
  } else if (g.inputs.size() == 1 && !inputs.is_none()) {
    given[to_str(g.inputs[0])] = inputs;  // a single-input engine also takes the array alone
  } else {
    throw Error(ErrorCode::kInvalidArgument,
                "the engine takes a dict of input name -> array (inputs: " + names_of(g.inputs) + ")");
  }
  for (const auto& [k, v] : given) {
    const std::string name = text_of(k);
    if (std::find(g.inputs.begin(), g.inputs.end(), name) == g.inputs.end())
      throw Error(ErrorCode::kInvalidArgument,
                  "'" + name + "' is not an input of the engine (inputs: " + names_of(g.inputs) + ")");
  }

  // The checks and messages of `kiln run` (tools/cli_common.cpp check_inputs), with numpy's dtype names.
  std::vector<py::array> arrays;
  cpu::ShapeMap shapes;
  std::map<std::string, int64_t> symbols;
  for (const auto& name : g.inputs) {
    const TensorType* decl = g.type_of(name);
    if (!given.contains(to_str(name)))
      throw Error(ErrorCode::kInvalidArgument,
                  "missing input '" + name + "'" + (decl ? " of type " + decl->to_string() : std::string()));
    py::array arr = input_array(name, given[to_str(name)], decl ? decl->dtype : DType::kF32);
    std::vector<int64_t> shape(arr.shape(), arr.shape() + arr.ndim());
    if (decl && decl->shape) {
      const Shape& want = *decl->shape;
      bool ok = want.size() == shape.size();
      for (size_t i = 0; ok && i < shape.size(); ++i) ok = !want[i].known() || want[i].value == shape[i];
      if (!ok)
        throw Error(ErrorCode::kInvalidArgument,
                    "input '" + name + "' has shape " + shape_to_string(shape) + ", expected " + shape_to_string(want));
      for (size_t i = 0; i < shape.size(); ++i) {
        const Dim& d = want[i];
        if (d.known() || d.symbol.empty()) continue;
        auto [it, inserted] = symbols.emplace(d.symbol, shape[i]);
        if (!inserted && it->second != shape[i])
          throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' has " + d.symbol + "=" +
                                                       std::to_string(shape[i]) + " but another input has " + d.symbol +
                                                       "=" + std::to_string(it->second));
      }
    }
    shapes[name] = shape;
    arrays.push_back(arr);
  }
  rt.check_shapes(shapes);  // the optimization profiles (kiln::Error naming the input and the range)

  std::shared_ptr<const cpu::Program> program;
  {
    py::gil_scoped_release release;  // compiling for new shapes takes a while
    program = rt.program_for(shapes);
  }

  py::dict out_given;
  if (!outputs.is_none()) {
    if (!py::isinstance<py::dict>(outputs))
      throw Error(ErrorCode::kInvalidArgument, "outputs must be a dict of output name -> numpy array");
    out_given = outputs;
    for (const auto& [k, v] : out_given) {
      const std::string name = text_of(k);
      if (std::find(g.outputs.begin(), g.outputs.end(), name) == g.outputs.end())
        throw Error(ErrorCode::kInvalidArgument,
                    "'" + name + "' is not an output of the engine (outputs: " + names_of(g.outputs) + ")");
    }
  }
  py::dict result;
  std::vector<std::pair<std::string, void*>> out_ptrs;
  for (const auto& v : program->outputs()) {
    const py::dtype dt = numpy_dtype(v.dtype);
    const py::tuple shape = to_tuple(v.shape);
    py::array arr;
    if (out_given.contains(to_str(v.name))) {
      py::object o = out_given[to_str(v.name)];
      const int needed = kCContiguous | kAligned | kWriteable;
      bool ok = py::isinstance<py::array>(o);
      if (ok) {
        arr = py::reinterpret_borrow<py::array>(o);
        ok = arr.dtype().equal(dt) && (arr.flags() & needed) == needed &&
             std::vector<int64_t>(arr.shape(), arr.shape() + arr.ndim()) == v.shape;
      }
      if (!ok)
        throw Error(
            ErrorCode::kInvalidArgument,
            "output '" + v.name + "' must be a writeable C-contiguous numpy array of dtype " + text_of(dt) +
                " and shape " + std::string(py::repr(shape)) + ", got " +
                (py::isinstance<py::array>(o) ? text_of(arr.dtype()) + " " + std::string(py::repr(arr.attr("shape"))) +
                                                    (arr.flags() & kCContiguous ? "" : " (not C-contiguous)") +
                                                    (arr.writeable() ? "" : " (read-only)")
                                              : text_of(py::type::handle_of(o).attr("__name__"))));
    } else {
      arr = np.attr("empty")(shape, dt);
    }
    out_ptrs.emplace_back(v.name, arr.mutable_data());
    result[to_str(v.name)] = arr;
  }

  std::vector<std::pair<std::string, const void*>> in_ptrs;
  for (size_t i = 0; i < g.inputs.size(); ++i) in_ptrs.emplace_back(g.inputs[i], arrays[i].data());
  ErrorCapture capture;
  bool ok = true;
  {
    py::gil_scoped_release release;
    std::lock_guard lock(pc.mu);
    ExecutionContext& c = *pc.context;
    for (const auto& [name, shape] : shapes) {
      Dims d;
      for (int64_t s : shape) d.d[d.nbDims++] = s;
      ok = ok && c.setInputShape(name, d);
    }
    for (const auto& [name, p] : in_ptrs) ok = ok && c.setInputTensorAddress(name, p);
    for (const auto& [name, p] : out_ptrs) ok = ok && c.setTensorAddress(name, p);
    ok = ok && c.execute();
  }
  if (!ok) capture.raise("the engine run failed");
  return result;
}

// Takes a context from the engine's pool for one call and gives it back after.
struct PooledContext {
  PyEngine& engine;
  std::unique_ptr<PyContext> context;
  explicit PooledContext(PyEngine& e) : engine(e) {
    {
      std::lock_guard lock(e.pool_mu);
      if (!e.pool.empty()) {
        context = std::move(e.pool.back());
        e.pool.pop_back();
      }
    }
    if (!context) context = e.make_context();
  }
  ~PooledContext() {
    std::lock_guard lock(engine.pool_mu);
    engine.pool.push_back(std::move(context));
  }
};

template <typename T>
T context_call(PyContext& pc, const std::function<T(ExecutionContext&)>& f) {
  py::gil_scoped_release release;
  std::lock_guard lock(pc.mu);
  return f(*pc.context);
}

// Runs one ExecutionContext call that reports failure by returning false; raises what it logged.
void checked(PyContext& pc, const std::string& fallback, const std::function<bool(ExecutionContext&)>& f) {
  ErrorCapture capture;
  if (!context_call<bool>(pc, f)) capture.raise(fallback);
}

}  // namespace

void register_runtime(py::module_& m) {
  py::class_<PyRuntime>(m, "Runtime", "Loads engines (TensorRT's Runtime).")
      .def(py::init([](PyLogger& logger) {
             auto r = std::make_unique<PyRuntime>();
             r->runtime = std::make_unique<Runtime>(logger);
             return r;
           }),
           py::arg("logger"), py::keep_alive<1, 2>())
      .def(
          "deserialize_cuda_engine",
          [](PyRuntime& r, const py::buffer& serialized) {
            py::buffer_info info = serialized.request();
            ErrorCapture capture;
            std::shared_ptr<Engine> e;
            {
              py::gil_scoped_release release;
              e = r.runtime->deserializeEngine(info.ptr, static_cast<size_t>(info.size * info.itemsize));
            }
            return wrap_engine(std::move(e), capture, "deserialize_cuda_engine failed");
          },
          py::arg("serialized_engine"), py::keep_alive<0, 1>(),
          "An engine from its bytes (copied). Raises a kiln.Error when they are not a valid engine for this Kiln "
          "and this machine.")
      .def(
          "load_engine",
          [](PyRuntime& r, const py::object& path) {
            const std::string file = fspath(path);
            ErrorCapture capture;
            std::shared_ptr<Engine> e;
            {
              py::gil_scoped_release release;
              e = r.runtime->loadEngine(file);
            }
            return wrap_engine(std::move(e), capture, "load_engine failed");
          },
          py::arg("path"), py::keep_alive<0, 1>(), "An engine from its file, memory-mapped (weights are not copied).")
      .def_property(
          "num_threads", [](const PyRuntime& r) { return r.threads; },
          [](PyRuntime& r, int32_t n) {
            if (n < 0) throw Error(ErrorCode::kInvalidArgument, "num_threads must be >= 0");
            r.threads = n;
            r.runtime->setNbThreads(n);
          },
          "Threads for the kernels of engines loaded afterwards (0: what the engine was built with).");
  m.attr("Runtime").attr("deserialize_engine") = m.attr("Runtime").attr("deserialize_cuda_engine");

  py::class_<PyEngine>(m, "Engine", R"(A loaded engine (TensorRT's ICudaEngine); immutable and thread-safe.

engine({"name": array, ...}) runs it on numpy arrays and returns a dict of output arrays.)")
      .def_property_readonly("num_io_tensors", [](PyEngine& e) { return e.engine->getNbIOTensors(); })
      .def(
          "get_tensor_name",
          [](PyEngine& e, int32_t i) {
            const char* n = e.engine->getIOTensorName(i);
            if (!n) throw py::index_error("IO tensor index " + std::to_string(i) + " out of range");
            return to_str(n);
          },
          py::arg("index"), "Inputs first, then outputs.")
      .def(
          "get_tensor_mode", [](PyEngine& e, const std::string& name) { return e.engine->getTensorIOMode(name); },
          py::arg("name"), "INPUT, OUTPUT, or NONE for a name the engine does not have.")
      .def(
          "get_tensor_shape",
          [](PyEngine& e, const std::string& name) {
            ErrorCapture capture;
            const Dims d = e.engine->getTensorShape(name);
            if (d.nbDims < 0) capture.raise("get_tensor_shape('" + name + "') failed");
            return to_tuple(d);
          },
          py::arg("name"), "As built: -1 for dynamic dimensions.")
      .def(
          "get_tensor_dtype",
          [](PyEngine& e, const std::string& name) {
            ErrorCapture capture;
            const DataType t = e.engine->getTensorDataType(name);
            if (!capture.entries().empty()) capture.raise("");
            return t;
          },
          py::arg("name"))
      .def_property_readonly("num_optimization_profiles",
                             [](PyEngine& e) { return e.engine->getNbOptimizationProfiles(); })
      .def(
          "get_tensor_profile_shape",
          [](PyEngine& e, const std::string& name, int32_t profile) {
            ErrorCapture capture;
            py::list out;
            for (auto sel : {OptProfileSelector::kMIN, OptProfileSelector::kOPT, OptProfileSelector::kMAX}) {
              const Dims d = e.engine->getProfileShape(name, profile, sel);
              if (d.nbDims < 0) capture.raise("get_tensor_profile_shape('" + name + "') failed");
              out.append(to_tuple(d));
            }
            return out;
          },
          py::arg("name"), py::arg("profile_index"), "[min, opt, max] of an input in a profile.")
      .def_property_readonly(
          "device_memory_size", [](PyEngine& e) { return e.engine->getActivationMemorySize(); },
          "Peak activation bytes of one context at the build's opt shapes (host memory).")
      .def(
          "serialize",
          [](PyEngine& e) {
            ErrorCapture capture;
            std::vector<uint8_t> bytes;
            {
              py::gil_scoped_release release;
              bytes = e.engine->serialize();
            }
            if (bytes.empty()) capture.raise("serialize failed");
            return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
          },
          "The engine file's bytes.")
      .def(
          "save",
          [](PyEngine& e, const py::object& path) {
            const std::string file = fspath(path);
            py::gil_scoped_release release;
            save_engine(e.runtime().model(), e.runtime().info(), file);
          },
          py::arg("path"), "Writes the engine file (load it back with kiln.load or Runtime.load_engine).")
      .def(
          "create_execution_context",
          [](const py::object& self) {
            auto c = self.cast<PyEngine&>().make_context();
            c->py_engine = self;
            return c;
          },
          "A context with its own activation memory; use one per thread.")
      .def_property_readonly(
          "inputs",
          [](PyEngine& e) {
            std::vector<TensorInfo> v;
            for (const auto& n : e.graph().inputs) v.push_back(tensor_info(e.graph(), n));
            return v;
          },
          "The inputs' TensorInfo (name, shape with -1 for dynamic dimensions, dtype).")
      .def_property_readonly(
          "outputs",
          [](PyEngine& e) {
            std::vector<TensorInfo> v;
            for (const auto& n : e.graph().outputs) v.push_back(tensor_info(e.graph(), n));
            return v;
          },
          "The outputs' TensorInfo.")
      .def(
          "__call__",
          [](PyEngine& e, const py::object& inputs, const py::object& outputs) {
            PooledContext pooled(e);
            return run_call(e, *pooled.context, inputs, outputs);
          },
          py::arg("inputs"), py::arg("outputs") = py::none(),
          R"(Runs the engine: inputs is a dict name -> numpy array (or the array alone for a one-input engine).

Returns a dict name -> numpy array. Inputs that are C-contiguous numpy arrays of the engine's dtype
are read in place; others are converted first. Outputs are new arrays the engine writes into, or
the arrays given in `outputs` (dict name -> writeable C-contiguous array of the right dtype and
shape). Releases the GIL; concurrent calls from several threads run in parallel on separate contexts.)");
  m.attr("ICudaEngine") = m.attr("Engine");

  py::class_<PyContext>(m, "ExecutionContext",
                        R"(Runs an engine with its own activation memory (TensorRT's IExecutionContext).

One thread at a time uses a context (a second caller waits); create one per thread to run in parallel.)")
      .def_property_readonly("engine", [](PyContext& c) { return c.py_engine; })
      .def(
          "set_input_shape",
          [](PyContext& c, const std::string& name, const py::object& shape) {
            const Dims d = to_dims(shape, "set_input_shape('" + name + "')");
            checked(c, "set_input_shape('" + name + "') failed",
                    [&](ExecutionContext& x) { return x.setInputShape(name, d); });
            return true;
          },
          py::arg("name"), py::arg("shape"),
          "Sets a dynamic input's shape; raises when the name is unknown or the shape is outside every profile.")
      .def(
          "get_tensor_shape",
          [](PyContext& c, const std::string& name) {
            ErrorCapture capture;
            const Dims d = context_call<Dims>(c, [&](ExecutionContext& x) { return x.getTensorShape(name); });
            if (d.nbDims < 0 || !capture.entries().empty()) capture.raise("get_tensor_shape('" + name + "') failed");
            return to_tuple(d);
          },
          py::arg("name"), "Outputs are resolved once every input shape is known (the context compiles for them).")
      .def_property_readonly("all_input_dimensions_specified",
                             [](PyContext& c) {
                               return context_call<bool>(
                                   c, [](ExecutionContext& x) { return x.allInputDimensionsSpecified(); });
                             })
      .def_property_readonly(
          "active_optimization_profile",
          [](PyContext& c) {
            return context_call<int32_t>(c, [](ExecutionContext& x) { return x.getOptimizationProfile(); });
          },
          "The profile the input shapes fall in (-1 before they are all set).")
      .def(
          "set_tensor_address",
          [](PyContext& c, const std::string& name, uintptr_t address) {
            checked(c, "set_tensor_address('" + name + "') failed",
                    [&](ExecutionContext& x) { return x.setTensorAddress(name, reinterpret_cast<void*>(address)); });
            return true;
          },
          py::arg("name"), py::arg("memory"),
          "A host address (e.g. array.ctypes.data) of a dense row-major buffer of the tensor's shape; the caller keeps "
          "the buffer alive until the run returns.")
      .def(
          "get_tensor_address",
          [](PyContext& c, const std::string& name) {
            return reinterpret_cast<uintptr_t>(
                context_call<const void*>(c, [&](ExecutionContext& x) { return x.getTensorAddress(name); }));
          },
          py::arg("name"))
      .def(
          "execute_v2",
          [](PyContext& c, const std::vector<uintptr_t>& bindings) {
            const auto n = static_cast<size_t>(c.engine->getNbIOTensors());
            if (bindings.size() != n)
              throw Error(ErrorCode::kInvalidArgument, "execute_v2: " + std::to_string(bindings.size()) +
                                                           " bindings for an engine with " + std::to_string(n) +
                                                           " IO tensors (one address per tensor, inputs first)");
            std::vector<void*> ptrs;
            for (uintptr_t b : bindings) ptrs.push_back(reinterpret_cast<void*>(b));
            checked(c, "execute_v2 failed", [&](ExecutionContext& x) { return x.executeV2(ptrs.data()); });
            return true;
          },
          py::arg("bindings"), "Runs with one host address per IO tensor (engine order). Releases the GIL.")
      .def(
          "execute_async_v3",
          [](PyContext& c, uintptr_t stream) {
            checked(c, "execute_async_v3 failed",
                    [&](ExecutionContext& x) { return x.enqueueV3(reinterpret_cast<void*>(stream)); });
            return true;
          },
          py::arg("stream_handle") = 0,
          "Runs with the addresses set by set_tensor_address. Kiln runs on the CPU, synchronously: the outputs are "
          "written when it returns; stream_handle must be 0. Releases the GIL.")
      .def(
          "__call__",
          [](PyContext& c, const py::object& inputs, const py::object& outputs) {
            auto& e = c.py_engine.cast<PyEngine&>();
            return run_call(e, c, inputs, outputs);
          },
          py::arg("inputs"), py::arg("outputs") = py::none(),
          "Like Engine.__call__, on this context (its tensor addresses are then the arrays used).");
  m.attr("IExecutionContext") = m.attr("ExecutionContext");

  // kiln.compile's file datasets: `kiln build --calib`'s rules (quant::FileCalibrator), as an iterator
  // of dicts name -> array.
  struct CalibrationFiles {
    std::unique_ptr<quant::FileCalibrator> files;
  };
  py::class_<CalibrationFiles>(m, "_CalibrationFiles")
      .def(py::init([](const py::object& path, NetworkDefinition& network, int64_t batch) {
             auto c = std::make_unique<CalibrationFiles>();
             c->files = std::make_unique<quant::FileCalibrator>(fspath(path), ApiAccess::impl(network).model, batch);
             return c;
           }),
           py::arg("path"), py::arg("network"), py::arg("batch_size"))
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", [](CalibrationFiles& c) {
        quant::TensorMap batch;
        bool more = false;
        {
          py::gil_scoped_release release;
          more = c.files->next_batch(batch);
        }
        if (!more) throw py::stop_iteration();
        py::dict d;
        for (const auto& [name, t] : batch) {
          py::array arr(numpy_dtype(t.dtype()), t.shape());
          std::memcpy(arr.mutable_data(), t.raw(), t.nbytes());
          d[to_str(name)] = arr;
        }
        return d;
      });
}

}  // namespace kiln::py_bindings
