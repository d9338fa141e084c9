// kiln.Builder, kiln.BuilderConfig, kiln.IOptimizationProfile and the INT8 calibrator bases that
// Python subclasses (their C++ trampolines run during a build, with the GIL re-acquired).
#include <cstring>

#include "api/api_internal.h"
#include "common.h"

namespace kiln::py_bindings {

namespace {

// State every Python calibrator carries next to its IInt8Calibrator base: what the bindings hold
// (the builder passes only addresses) and the Python exception that failed the current build.
class CalibratorBridge {
 public:
  virtual ~CalibratorBridge() = default;

  struct Binding {
    std::string name;
    DType dtype = DType::kUndefined;
    std::vector<int64_t> dims;  // dims[0] is replaced by the batch size
  };

  // Before a build: the bindings the builder will allocate (IInt8Calibrator's contract: one per
  // network input, [getBatchSize(), profile 0's kOPT dims without dim 0, or the static dims]).
  void prepare(const Graph& g, const std::vector<IOptimizationProfile>& profiles, std::string class_name) {
    bindings_.clear();
    pending_ = py::object();
    class_name_ = std::move(class_name);
    for (const auto& in : g.inputs) {
      Binding b{in, DType::kUndefined, {}};
      const TensorType* t = g.type_of(in);
      if (t) b.dtype = t->dtype;
      const Dims opt =
          profiles.empty() ? Dims::invalid() : profiles.front().getDimensions(in, OptProfileSelector::kOPT);
      if (opt.nbDims > 0) {
        b.dims.assign(opt.d, opt.d + opt.nbDims);
      } else if (t && t->shape && shape_is_static(*t->shape)) {
        b.dims = static_dims(*t->shape);
      }
      bindings_.push_back(std::move(b));
    }
  }

  // The Python exception a method raised during the last build (None otherwise); taken once.
  py::object take_pending() { return std::exchange(pending_, py::object()); }

 protected:
  // Converts the Python exception in `e` into the kiln::Error that fails the build, keeping the
  // exception to chain it as the cause of the one Python sees. Needs the GIL.
  [[noreturn]] void fail(py::error_already_set& e, const char* method) {
    pending_ = e.value();
    ErrorCode code = ErrorCode::kInvalidArgument;
    if (py::isinstance(pending_, error_base()) && !py::getattr(pending_, "code", py::none()).is_none())
      code = py::getattr(pending_, "code").cast<ErrorCode>();
    const std::string type = text_of(py::type::handle_of(pending_).attr("__name__"));
    const std::string msg = text_of(pending_);
    throw Error(code, name(method) + " raised " + type + (msg.empty() ? "" : ": " + msg));
  }
  [[noreturn]] void fail(const std::string& method, const std::string& what) {
    throw Error(ErrorCode::kInvalidArgument, name(method.c_str()) + ": " + what);
  }
  std::string name(const char* method) const {
    return (class_name_.empty() ? std::string("IInt8Calibrator") : class_name_) + "." + method;
  }

  // Copies one array get_batch returned into binding `i`.
  void copy_into(void* dst, size_t i, const py::handle& value, int32_t batch) {
    if (i >= bindings_.size() || bindings_[i].dims.empty() || bindings_[i].dtype == DType::kUndefined)
      fail("get_batch", "Kiln cannot tell the shape of the binding for input #" + std::to_string(i));
    const Binding& b = bindings_[i];
    std::vector<int64_t> want = b.dims;
    want[0] = batch;
    const py::dtype dt = numpy_dtype(b.dtype);
    py::module_ np = py::module_::import("numpy");
    py::array arr = np.attr("asarray")(value);
    if (!arr.dtype().equal(dt)) {
      if (!np.attr("can_cast")(arr.dtype(), dt, "same_kind").cast<bool>())
        fail("get_batch",
             "the array for input '" + b.name + "' has dtype " + text_of(arr.dtype()) + ", expected " + text_of(dt));
      arr = arr.attr("astype")(dt);
    }
    std::vector<int64_t> got(arr.shape(), arr.shape() + arr.ndim());
    if (got != want)
      fail("get_batch",
           "the array for input '" + b.name + "' has shape " + std::string(py::repr(to_tuple(got))) + ", expected " +
               std::string(py::repr(to_tuple(want))) +
               " (get_batch_size() samples of optimization profile 0's opt shape, or of the static shape)");
    arr = np.attr("ascontiguousarray")(arr);
    std::memcpy(dst, arr.data(), static_cast<size_t>(arr.nbytes()));
  }

  std::vector<Binding> bindings_;
  py::object pending_;
  std::string class_name_;
  std::string cache_;          // readCalibrationCache's bytes, valid until the next call
  mutable int32_t batch_ = 0;  // the last getBatchSize()
};

// The trampoline of kiln.IInt8Calibrator and its two algorithm subclasses.
template <class Base>
class PyCalibrator final : public Base, public CalibratorBridge {
 public:
  int32_t getBatchSize() const override {
    py::gil_scoped_acquire gil;
    auto* self = const_cast<PyCalibrator*>(this);
    try {
      py::function f = py::get_override(static_cast<const Base*>(this), "get_batch_size");
      if (!f) self->fail("get_batch_size", "a calibrator must override get_batch_size()");
      batch_ = f().template cast<int32_t>();
      return batch_;
    } catch (py::error_already_set& e) {
      self->fail(e, "get_batch_size");
    } catch (const py::cast_error&) {
      self->fail("get_batch_size", "must return an int");
    }
  }

  bool getBatch(void* bindings[], const char* names[], int32_t nb) override {
    py::gil_scoped_acquire gil;
    try {
      py::function f = py::get_override(static_cast<const Base*>(this), "get_batch");
      if (!f) fail("get_batch", "a calibrator must override get_batch(names)");
      py::list py_names;
      for (int32_t i = 0; i < nb; ++i) py_names.append(to_str(names[i]));
      py::object r = f(py_names);
      if (r.is_none()) return false;
      const size_t n = static_cast<size_t>(nb);
      if (py::isinstance<py::dict>(r)) {
        auto d = r.cast<py::dict>();
        if (d.empty()) return false;
        for (const auto& [k, v] : d) {
          bool known = false;
          for (int32_t i = 0; i < nb && !known; ++i) known = text_of(k) == names[i];
          if (!known)
            fail("get_batch", "returned an array for " + std::string(py::repr(k)) + ", not an input of the network");
        }
        for (size_t i = 0; i < n; ++i) {
          if (!d.contains(names[i])) fail("get_batch", "returned no array for input '" + std::string(names[i]) + "'");
          copy_into(bindings[i], i, d[names[i]], batch_);
        }
        return true;
      }
      if (!py::isinstance<py::sequence>(r) || py::isinstance<py::str>(r) || py::isinstance<py::bytes>(r) ||
          py::isinstance<py::array>(r))
        fail("get_batch",
             "must return a list of numpy arrays (one per name, in order), a dict name -> array, or None "
             "at the end of the data; got " +
                 text_of(py::type::handle_of(r).attr("__name__")));
      auto seq = r.cast<py::sequence>();
      if (seq.size() == 0) return false;
      if (seq.size() != n)
        fail("get_batch", "returned " + std::to_string(seq.size()) + " arrays for " + std::to_string(n) + " inputs");
      for (size_t i = 0; i < n; ++i) copy_into(bindings[i], i, seq[i], batch_);
      return true;
    } catch (py::error_already_set& e) {
      fail(e, "get_batch");
    }
  }

  const void* readCalibrationCache(std::size_t& length) override {
    length = 0;
    py::gil_scoped_acquire gil;
    try {
      py::function f = py::get_override(static_cast<const Base*>(this), "read_calibration_cache");
      if (!f) return nullptr;
      py::object r = f();
      if (r.is_none()) return nullptr;
      if (py::isinstance<py::str>(r)) {
        cache_ = r.cast<std::string>();
      } else {
        py::buffer_info info = py::reinterpret_borrow<py::buffer>(r).request();
        cache_.assign(static_cast<const char*>(info.ptr), static_cast<size_t>(info.size * info.itemsize));
      }
      length = cache_.size();
      return cache_.empty() ? nullptr : cache_.data();
    } catch (py::error_already_set& e) {
      fail(e, "read_calibration_cache");
    } catch (const std::runtime_error&) {
      fail("read_calibration_cache", "must return bytes or None");
    }
  }

  void writeCalibrationCache(const void* ptr, std::size_t length) override {
    py::gil_scoped_acquire gil;
    try {
      py::function f = py::get_override(static_cast<const Base*>(this), "write_calibration_cache");
      if (f) f(py::bytes(static_cast<const char*>(ptr), length));
    } catch (py::error_already_set& e) {
      fail(e, "write_calibration_cache");
    }
  }

  CalibrationAlgoType getAlgorithm() override {
    py::gil_scoped_acquire gil;
    try {
      py::function f = py::get_override(static_cast<const Base*>(this), "get_algorithm");
      if (!f) return Base::getAlgorithm();
      return f().template cast<CalibrationAlgoType>();
    } catch (py::error_already_set& e) {
      fail(e, "get_algorithm");
    } catch (const py::cast_error&) {
      fail("get_algorithm", "must return a kiln.CalibrationAlgoType");
    }
  }

  double getPercentile() override {
    py::gil_scoped_acquire gil;
    try {
      py::function f = py::get_override(static_cast<const Base*>(this), "get_percentile");
      if (!f) return Base::getPercentile();
      return f().template cast<double>();
    } catch (py::error_already_set& e) {
      fail(e, "get_percentile");
    } catch (const py::cast_error&) {
      fail("get_percentile", "must return a float");
    }
  }
};

// BuilderConfig plus the Python calibrator it points to (kept alive through the build).
struct PyConfig {
  std::unique_ptr<BuilderConfig> config;
  py::object calibrator = py::none();
};

template <class T>
void bind_calibrator_methods(py::class_<T, IInt8Calibrator, PyCalibrator<T>>& c) {
  c.def(py::init<>()).def("get_algorithm", [](T& self) { return self.T::getAlgorithm(); });
}

}  // namespace

void register_builder(py::module_& m) {
  py::enum_<BuilderFlag>(m, "BuilderFlag", "Builder options (TensorRT's names). See docs/precision.md.")
      .value("FP16", BuilderFlag::kFP16)
      .value("INT8", BuilderFlag::kINT8)
      .value("DISABLE_TIMING_CACHE", BuilderFlag::kDISABLE_TIMING_CACHE)
      .value("OBEY_PRECISION_CONSTRAINTS", BuilderFlag::kOBEY_PRECISION_CONSTRAINTS)
      .value("PREFER_PRECISION_CONSTRAINTS", BuilderFlag::kPREFER_PRECISION_CONSTRAINTS)
      .value("BF16", BuilderFlag::kBF16);
  py::enum_<MemoryPoolType>(m, "MemoryPoolType").value("WORKSPACE", MemoryPoolType::kWORKSPACE);
  py::enum_<CalibrationAlgoType>(m, "CalibrationAlgoType")
      .value("ENTROPY_CALIBRATION_2", CalibrationAlgoType::kENTROPY_CALIBRATION_2)
      .value("MINMAX_CALIBRATION", CalibrationAlgoType::kMINMAX_CALIBRATION)
      .value("PERCENTILE_CALIBRATION", CalibrationAlgoType::kPERCENTILE_CALIBRATION);

  // ---- Optimization profiles
  py::class_<IOptimizationProfile>(m, "IOptimizationProfile",
                                   "min/opt/max shapes per dynamic input (Builder.create_optimization_profile()).")
      .def(py::init<>())
      .def(
          "set_shape",
          [](IOptimizationProfile& p, const std::string& input, const py::object& min, const py::object& opt,
             const py::object& max) {
            const std::string what = "set_shape('" + input + "')";
            if (input.empty()) throw Error(ErrorCode::kInvalidArgument, "set_shape: the input name is empty");
            const std::pair<OptProfileSelector, const py::object*> parts[] = {
                {OptProfileSelector::kMIN, &min}, {OptProfileSelector::kOPT, &opt}, {OptProfileSelector::kMAX, &max}};
            for (const auto& [sel, shape] : parts) {
              const Dims d = to_dims(*shape, what);
              for (int32_t i = 0; i < d.nbDims; ++i)
                if (d.d[i] < 0)
                  throw Error(ErrorCode::kInvalidArgument, what +
                                                               ": dimensions must be >= 0 (a profile gives concrete "
                                                               "shapes), got " +
                                                               std::string(py::repr(*shape)));
              if (!p.setDimensions(input, sel, d)) throw Error(ErrorCode::kInvalidArgument, what + ": invalid shape");
            }
          },
          py::arg("input"), py::arg("min"), py::arg("opt"), py::arg("max"),
          "Sets an input's range: contexts accept shapes between min and max; tactics are timed at opt.")
      .def(
          "get_shape",
          [](const IOptimizationProfile& p, const std::string& input) {
            const Dims mn = p.getDimensions(input, OptProfileSelector::kMIN);
            if (mn.nbDims < 0)
              throw Error(ErrorCode::kInvalidArgument, "get_shape: the profile has no shapes for '" + input + "'");
            return py::make_tuple(to_tuple(mn), to_tuple(p.getDimensions(input, OptProfileSelector::kOPT)),
                                  to_tuple(p.getDimensions(input, OptProfileSelector::kMAX)));
          },
          py::arg("input"), "(min, opt, max) of an input.")
      .def_property_readonly("input_names", &IOptimizationProfile::getInputNames)
      .def("is_valid", &IOptimizationProfile::isValid,
           "Every input has min, opt and max of one rank with 0 <= min <= opt <= max.");
  m.attr("OptimizationProfile") = m.attr("IOptimizationProfile");

  // ---- Calibrators
  py::class_<IInt8Calibrator, PyCalibrator<IInt8Calibrator>>(m, "IInt8Calibrator", R"(Feeds INT8 calibration.

Subclass kiln.IInt8EntropyCalibrator2 or kiln.IInt8MinMaxCalibrator (call the base __init__) and
override get_batch_size() and get_batch(names), optionally read_calibration_cache() and
write_calibration_cache(cache). get_batch returns one numpy array per name, in order (or a dict
name -> array), each of get_batch_size() samples of the input's shape in optimization profile 0's
opt shape; None ends the data. Kiln copies the arrays into its own buffers. These methods run
during Builder.build_serialized_network with the GIL held; an exception they raise fails the
build with its message (it is chained as the cause of the kiln.Error raised).)")
      .def(py::init<>())
      .def("get_algorithm", [](IInt8Calibrator& self) { return self.IInt8Calibrator::getAlgorithm(); })
      .def(
          "get_percentile", [](IInt8Calibrator& self) { return self.IInt8Calibrator::getPercentile(); },
          "The percentile of PERCENTILE_CALIBRATION, in (0, 100] (Kiln extension; default 99.99).")
      .def(
          "read_calibration_cache", [](IInt8Calibrator&) { return py::none(); },
          "bytes of an earlier write_calibration_cache, or None to calibrate.")
      .def(
          "write_calibration_cache", [](IInt8Calibrator&, const py::bytes&) {}, py::arg("cache"),
          "Receives the calibration cache (bytes) after calibrating.");
  py::class_<IInt8EntropyCalibrator2, IInt8Calibrator, PyCalibrator<IInt8EntropyCalibrator2>> entropy(
      m, "IInt8EntropyCalibrator2", "Entropy (KL divergence) calibration, the default for CNNs.");
  bind_calibrator_methods(entropy);
  py::class_<IInt8MinMaxCalibrator, IInt8Calibrator, PyCalibrator<IInt8MinMaxCalibrator>> minmax(
      m, "IInt8MinMaxCalibrator", "Min/max calibration (often better for transformers).");
  bind_calibrator_methods(minmax);

  // ---- BuilderConfig
  auto cfg = [](PyConfig& c) -> BuilderConfig& { return *c.config; };
  py::class_<PyConfig>(m, "BuilderConfig", "Build options (Builder.create_builder_config()).")
      .def(
          "set_flag", [cfg](PyConfig& c, BuilderFlag f) { cfg(c).setFlag(f); }, py::arg("flag"))
      .def(
          "clear_flag", [cfg](PyConfig& c, BuilderFlag f) { cfg(c).clearFlag(f); }, py::arg("flag"))
      .def(
          "get_flag", [cfg](PyConfig& c, BuilderFlag f) { return cfg(c).getFlag(f); }, py::arg("flag"))
      .def(
          "set_memory_pool_limit",
          [cfg](PyConfig& c, MemoryPoolType pool, int64_t bytes) {
            if (bytes < 0)
              throw Error(ErrorCode::kInvalidArgument, "set_memory_pool_limit: the limit must be >= 0 bytes");
            cfg(c).setMemoryPoolLimit(pool, static_cast<size_t>(bytes));
          },
          py::arg("pool"), py::arg("pool_size"), "WORKSPACE: the most scratch memory one kernel may use (0: no limit).")
      .def(
          "get_memory_pool_limit", [cfg](PyConfig& c, MemoryPoolType pool) { return cfg(c).getMemoryPoolLimit(pool); },
          py::arg("pool"))
      .def(
          "add_optimization_profile",
          [cfg](PyConfig& c, const IOptimizationProfile& p) {
            ErrorCapture capture;
            const int32_t index = cfg(c).addOptimizationProfile(p);
            if (index < 0) capture.raise("add_optimization_profile: the profile is not valid");
            return index;
          },
          py::arg("profile"), "Adds a copy of the profile; returns its index. Raises for an invalid profile.")
      .def_property_readonly("num_optimization_profiles",
                             [cfg](PyConfig& c) { return cfg(c).getNbOptimizationProfiles(); })
      .def_property(
          "builder_optimization_level", [cfg](PyConfig& c) { return cfg(c).getBuilderOptimizationLevel(); },
          [cfg](PyConfig& c, int32_t level) { cfg(c).setBuilderOptimizationLevel(level); },
          "Graph optimization level 0 (no passes) to 5; default 3.")
      .def(
          "set_timing_cache",
          [cfg](PyConfig& c, const py::object& path) {
            cfg(c).setTimingCache(path.is_none() ? std::string() : fspath(path));
          },
          py::arg("path"), "A JSON timing cache file read before the build and written after it (None turns it off).")
      .def("get_timing_cache",
           [cfg](PyConfig& c) -> py::object {
             const std::string p = cfg(c).getTimingCache();
             return p.empty() ? py::object(py::none()) : py::object(to_str(p));
           })
      .def_property(
          "num_threads", [cfg](PyConfig& c) { return cfg(c).getNbThreads(); },
          [cfg](PyConfig& c, int32_t n) { cfg(c).setNbThreads(n); },
          "Threads the engine's kernels use (0: every core). Stored in the engine.")
      .def_property(
          "int8_calibrator", [](PyConfig& c) { return c.calibrator; },
          [cfg](PyConfig& c, const py::object& calibrator) {
            if (calibrator.is_none()) {
              cfg(c).setInt8Calibrator(nullptr);
            } else {
              if (!py::isinstance<IInt8Calibrator>(calibrator))
                throw Error(ErrorCode::kInvalidArgument,
                            "int8_calibrator must be a kiln.IInt8Calibrator subclass "
                            "instance (IInt8EntropyCalibrator2, IInt8MinMaxCalibrator)");
              cfg(c).setInt8Calibrator(calibrator.cast<IInt8Calibrator*>());
            }
            c.calibrator = calibrator;
          },
          "The calibrator for BuilderFlag.INT8 (None clears it).")
      .def(
          "set_layer_precision",
          [cfg](PyConfig& c, const std::string& layer, DataType t) { cfg(c).setLayerPrecision(layer, t); },
          py::arg("layer_name"), py::arg("dtype"),
          "A layer's (node's) precision: FLOAT keeps it in FP32, BF16, INT8 (with BuilderFlag.INT8); HALF means FP32.")
      .def_property(
          "accuracy_budget", [cfg](PyConfig& c) { return cfg(c).getAccuracyBudget(); },
          [cfg](PyConfig& c, const py::object& f) { cfg(c).setAccuracyBudget(f.is_none() ? -1.0 : f.cast<double>()); },
          "The INT8 accuracy guard (Kiln extension): the fraction of top-1 agreement or cosine similarity the INT8 "
          "engine may lose against FP32, in [0, 1); None or < 0 turns it off.");

  // ---- Builder
  py::class_<Builder>(m, "Builder", "Turns networks into serialized engines (TensorRT's Builder).")
      .def(py::init([](PyLogger& logger) { return std::make_unique<Builder>(logger); }), py::arg("logger"),
           py::keep_alive<1, 2>())
      .def(
          "create_network", [](Builder& b, uint32_t flags) { return b.createNetworkV2(flags); }, py::arg("flags") = 0,
          py::keep_alive<0, 1>(),
          "An empty network; `flags` is accepted for TensorRT code (networks are explicit-batch).")
      .def(
          "create_builder_config",
          [](Builder& b) {
            auto c = std::make_unique<PyConfig>();
            c->config = b.createBuilderConfig();
            return c;
          },
          py::keep_alive<0, 1>())
      .def("create_optimization_profile", &Builder::createOptimizationProfile,
           py::return_value_policy::reference_internal)
      .def(
          "build_serialized_network",
          [](Builder& b, NetworkDefinition& network, PyConfig& c) {
            auto* bridge = c.calibrator.is_none()
                               ? nullptr
                               : dynamic_cast<CalibratorBridge*>(c.calibrator.cast<IInt8Calibrator*>());
            if (bridge)
              bridge->prepare(ApiAccess::impl(network).model.graph, ApiAccess::impl(*c.config).profiles,
                              text_of(py::type::handle_of(c.calibrator).attr("__name__")));
            std::vector<uint8_t> bytes;
            ErrorCapture capture;
            {
              py::gil_scoped_release release;
              bytes = b.buildSerializedNetwork(network, *c.config);
            }
            py::object cause = bridge ? bridge->take_pending() : py::object();
            if (bytes.empty() && cause && !py::isinstance(cause, PyExc_Exception)) {
              // KeyboardInterrupt, SystemExit: re-raised as they are.
              PyErr_SetObject(py::type::handle_of(cause).ptr(), cause.ptr());
              throw py::error_already_set();
            }
            if (bytes.empty() && cause) {
              std::string msg;
              for (const auto& e : capture.entries()) msg += (msg.empty() ? "" : "\n") + e.message;
              const ErrorCode code =
                  capture.entries().empty() ? ErrorCode::kInvalidArgument : capture.entries().front().code;
              py::object cls = exception_class(code);
              py::object exc = cls(to_str(error_message_with_help(Error(code, msg))));
              PyException_SetCause(exc.ptr(), cause.release().ptr());
              PyErr_SetObject(cls.ptr(), exc.ptr());
              throw py::error_already_set();
            }
            if (bytes.empty()) capture.raise("build_serialized_network failed");
            return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
          },
          py::arg("network"), py::arg("config"),
          "Optimizes the network, selects kernels and returns the engine's bytes. Releases the GIL; raises a "
          "kiln.Error with the builder's message on failure.");
}

}  // namespace kiln::py_bindings
