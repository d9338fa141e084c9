// kiln.DataType and dtype conversions, kiln.NetworkDefinition (inputs, outputs, layers, and building
// one by hand) and kiln.OnnxParser.
#include <filesystem>

#include "api/api_internal.h"
#include "common.h"
#include "onnx/onnx_import.h"
#include "ops/model_check.h"
#include "plugins/plugins.h"
#include "quant/qdq.h"

namespace kiln::py_bindings {

// ---- Types

namespace {

struct NumpyName {
  DType dtype;
  const char* numpy;
};
constexpr NumpyName kNumpyNames[] = {
    {DType::kF32, "float32"}, {DType::kF16, "float16"}, {DType::kF64, "float64"}, {DType::kI8, "int8"},
    {DType::kU8, "uint8"},    {DType::kI16, "int16"},   {DType::kU16, "uint16"},  {DType::kI32, "int32"},
    {DType::kU32, "uint32"},  {DType::kI64, "int64"},   {DType::kU64, "uint64"},  {DType::kBool, "bool"},
};

}  // namespace

py::dtype numpy_dtype(DType dt) {
  for (const auto& n : kNumpyNames)
    if (n.dtype == dt) return py::dtype(n.numpy);
  throw Error(ErrorCode::kUnsupported,
              "Kiln's " + std::string(dtype_name(dt)) + " has no numpy dtype (numpy has no bfloat16 or fp8)");
}

py::dtype numpy_dtype(DataType dt) { return numpy_dtype(plugins::to_internal(dt)); }

std::optional<DType> dtype_of_numpy(const py::dtype& dt) {
  for (const auto& n : kNumpyNames)
    if (dt.equal(py::dtype(n.numpy))) return n.dtype;
  return std::nullopt;
}

std::string numpy_name(DType dt) {
  for (const auto& n : kNumpyNames)
    if (n.dtype == dt) return n.numpy;
  return std::string(dtype_name(dt));
}

Dims to_dims(const py::handle& shape, const std::string& what) {
  if (!py::isinstance<py::sequence>(shape) || py::isinstance<py::str>(shape))
    throw Error(ErrorCode::kInvalidArgument,
                what + ": a shape is a sequence of ints, got " + text_of(py::type::of(shape).attr("__name__")));
  const auto seq = py::reinterpret_borrow<py::sequence>(shape);
  if (seq.size() > static_cast<size_t>(Dims::MAX_DIMS))
    throw Error(ErrorCode::kInvalidArgument, what + ": at most " + std::to_string(Dims::MAX_DIMS) +
                                                 " dimensions, got " + std::to_string(seq.size()));
  Dims d;
  for (const auto& item : seq) {
    PyObject* index = PyNumber_Index(item.ptr());
    if (!index) {
      PyErr_Clear();
      throw Error(ErrorCode::kInvalidArgument, what + ": dimensions must be ints, got " + std::string(py::repr(shape)));
    }
    d.d[d.nbDims++] = py::reinterpret_steal<py::int_>(index).cast<int64_t>();
  }
  return d;
}

py::tuple to_tuple(const Dims& d) {
  if (d.nbDims < 0) return py::tuple();
  py::tuple t(static_cast<size_t>(d.nbDims));
  for (int32_t i = 0; i < d.nbDims; ++i) t[static_cast<size_t>(i)] = py::int_(d.d[i]);
  return t;
}

py::tuple to_tuple(const std::vector<int64_t>& d) {
  py::tuple t(d.size());
  for (size_t i = 0; i < d.size(); ++i) t[i] = py::int_(d[i]);
  return t;
}

namespace {

// One node of a network (TensorRT's ILayer, read-only).
struct Layer {
  std::string name, type, domain;
  std::vector<std::string> inputs, outputs;
};

}  // namespace

TensorInfo tensor_info(const Graph& g, const std::string& name) {
  TensorInfo info{name, py::none(), py::none()};
  const TensorType* t = g.type_of(name);
  if (!t) return info;
  if (t->shape) {
    py::tuple shape(t->shape->size());
    for (size_t i = 0; i < t->shape->size(); ++i)
      shape[i] = py::int_((*t->shape)[i].known() ? (*t->shape)[i].value : -1);
    info.shape = shape;
  }
  if (t->dtype != DType::kUndefined) {
    try {
      info.dtype = py::cast(plugins::to_public(t->dtype));
    } catch (const Error&) {
      // A dtype the public API has no name for (i16, u16...): left unknown.
    }
  }
  return info;
}

namespace {

// kiln.DataType, or anything numpy.dtype() accepts (np.float32, "float32").
DataType data_type_of(const py::handle& h) {
  if (py::isinstance<DataType>(h)) return h.cast<DataType>();
  py::dtype dt;
  try {
    dt = py::dtype::from_args(py::reinterpret_borrow<py::object>(h));
  } catch (py::error_already_set&) {
    throw Error(ErrorCode::kInvalidArgument,
                "not a data type: " + std::string(py::repr(h)) + " (use kiln.DataType or a numpy dtype)");
  }
  const auto internal = dtype_of_numpy(dt);
  if (internal) {
    try {
      return plugins::to_public(*internal);
    } catch (const Error&) {
    }
  }
  throw Error(ErrorCode::kInvalidArgument, "numpy dtype " + text_of(dt) + " has no kiln.DataType");
}

AttrValue to_attr(const std::string& key, const py::handle& v) {
  auto is_int = [](const py::handle& x) {
    return !PyFloat_Check(x.ptr()) && (PyLong_Check(x.ptr()) || PyIndex_Check(x.ptr()));
  };
  auto is_float = [](const py::handle& x) {
    return PyFloat_Check(x.ptr()) || py::isinstance(x, py::module_::import("numpy").attr("floating"));
  };
  if (py::isinstance<py::str>(v)) return AttrValue(v.cast<std::string>());
  if (is_int(v)) return AttrValue(py::int_(py::reinterpret_borrow<py::object>(v)).cast<int64_t>());
  if (is_float(v)) return AttrValue(v.cast<double>());
  if (py::isinstance<py::sequence>(v)) {
    auto seq = py::reinterpret_borrow<py::sequence>(v);
    bool all_int = true;
    for (const auto& x : seq) {
      if (is_int(x)) continue;
      if (!is_float(x))
        throw Error(ErrorCode::kInvalidArgument,
                    "attribute '" + key + "': a list holds ints or floats, got " + std::string(py::repr(x)));
      all_int = false;
    }
    if (all_int) {
      std::vector<int64_t> ints;
      for (const auto& x : seq) ints.push_back(py::int_(py::reinterpret_borrow<py::object>(x)).cast<int64_t>());
      return AttrValue::ints(std::move(ints));
    }
    std::vector<float> floats;
    for (const auto& x : seq) floats.push_back(x.cast<float>());
    return AttrValue::floats(std::move(floats));
  }
  throw Error(ErrorCode::kInvalidArgument,
              "attribute '" + key + "': an int, float, str or list of ints or floats, got " + std::string(py::repr(v)));
}

template <typename F>
void check(bool ok, const ErrorCapture& capture, F&& fallback) {
  if (!ok) capture.raise(fallback());
}

}  // namespace

// ---- Registration

void register_network(py::module_& m) {
  py::enum_<DataType>(m, "DataType", "Element types (TensorRT's names; DOUBLE is Kiln's own).")
      .value("FLOAT", DataType::kFLOAT)
      .value("HALF", DataType::kHALF)
      .value("INT8", DataType::kINT8)
      .value("INT32", DataType::kINT32)
      .value("BOOL", DataType::kBOOL)
      .value("UINT8", DataType::kUINT8)
      .value("BF16", DataType::kBF16)
      .value("INT64", DataType::kINT64)
      .value("DOUBLE", DataType::kDOUBLE)
      .def_property_readonly(
          "itemsize", [](DataType t) { return getDataTypeSize(t); }, "Bytes per element.");
  m.def(
      "_numpy_dtype", [](DataType t) { return numpy_dtype(t); }, py::arg("dtype"),
      "The numpy dtype of a kiln.DataType; UnsupportedError for BF16 (numpy has none).");

  py::enum_<TensorIOMode>(m, "TensorIOMode")
      .value("NONE", TensorIOMode::kNONE)
      .value("INPUT", TensorIOMode::kINPUT)
      .value("OUTPUT", TensorIOMode::kOUTPUT);

  py::class_<TensorInfo>(m, "TensorInfo", "A tensor's name, shape (-1: dynamic) and kiln.DataType.")
      .def_readonly("name", &TensorInfo::name)
      .def_readonly("shape", &TensorInfo::shape)
      .def_readonly("dtype", &TensorInfo::dtype)
      .def("__repr__", [](const TensorInfo& t) {
        return "TensorInfo(name=" + std::string(py::repr(to_str(t.name))) +
               ", shape=" + std::string(py::repr(t.shape)) + ", dtype=" + text_of(t.dtype) + ")";
      });

  py::class_<Layer>(m, "Layer", "One node of a network: name, op type, domain, input and output names.")
      .def_readonly("name", &Layer::name)
      .def_readonly("type", &Layer::type)
      .def_readonly("domain", &Layer::domain)
      .def_readonly("inputs", &Layer::inputs)
      .def_readonly("outputs", &Layer::outputs)
      .def("__repr__", [](const Layer& l) { return "Layer(name='" + l.name + "', type='" + l.type + "')"; });

  auto graph = [](NetworkDefinition& n) -> const Graph& { return ApiAccess::impl(n).model.graph; };
  py::class_<NetworkDefinition>(m, "NetworkDefinition",
                                "A graph of ONNX ops, filled by kiln.OnnxParser or by hand (Builder.create_network).")
      .def_property_readonly("num_inputs", &NetworkDefinition::getNbInputs)
      .def_property_readonly("num_outputs", &NetworkDefinition::getNbOutputs)
      .def_property_readonly("num_layers", &NetworkDefinition::getNbNodes)
      .def_property("name", &NetworkDefinition::getName, &NetworkDefinition::setName)
      .def(
          "get_input",
          [graph](NetworkDefinition& n, int32_t i) {
            if (i < 0 || i >= n.getNbInputs())
              throw py::index_error("input index " + std::to_string(i) + " out of range");
            return tensor_info(graph(n), n.getInputName(i));
          },
          py::arg("index"))
      .def(
          "get_output",
          [graph](NetworkDefinition& n, int32_t i) {
            if (i < 0 || i >= n.getNbOutputs())
              throw py::index_error("output index " + std::to_string(i) + " out of range");
            return tensor_info(graph(n), n.getOutputName(i));
          },
          py::arg("index"))
      .def(
          "get_layer",
          [graph](NetworkDefinition& n, int32_t i) {
            const auto& nodes = graph(n).nodes;
            if (i < 0 || static_cast<size_t>(i) >= nodes.size())
              throw py::index_error("layer index " + std::to_string(i) + " out of range");
            const Node& node = nodes[static_cast<size_t>(i)];
            return Layer{node.name, node.op_type, node.domain, node.inputs, node.outputs};
          },
          py::arg("index"))
      .def(
          "add_input",
          [graph](NetworkDefinition& n, const std::string& name, const py::object& dtype, const py::object& shape) {
            const DataType t = data_type_of(dtype);
            const Dims d = to_dims(shape, "add_input('" + name + "')");
            ErrorCapture capture;
            check(n.addInput(name, t, d), capture, [&] { return "add_input('" + name + "') failed"; });
            return tensor_info(graph(n), name);
          },
          py::arg("name"), py::arg("dtype"), py::arg("shape"),
          "Adds a graph input; -1 marks a dynamic dimension (give its range in an optimization profile).")
      .def(
          "add_constant",
          [graph](NetworkDefinition& n, const std::string& name, const py::object& weights) {
            auto arr = py::array::ensure(weights, py::array::c_style);
            if (!arr)
              throw Error(ErrorCode::kInvalidArgument, "add_constant('" + name + "'): weights must be array-like");
            const DataType t = data_type_of(arr.dtype());
            std::vector<int64_t> shape(arr.shape(), arr.shape() + arr.ndim());
            if (shape.size() > static_cast<size_t>(Dims::MAX_DIMS))
              throw Error(ErrorCode::kInvalidArgument, "add_constant('" + name + "'): at most 8 dimensions");
            Dims d;
            for (int64_t v : shape) d.d[d.nbDims++] = v;
            ErrorCapture capture;
            check(n.addConstant(name, t, d, arr.data()), capture,
                  [&] { return "add_constant('" + name + "') failed"; });
            return tensor_info(graph(n), name);
          },
          py::arg("name"), py::arg("weights"), "Adds a constant from a numpy array (copied); its dtype gives the type.")
      .def(
          "add_node",
          [graph](NetworkDefinition& n, const std::string& op_type, const std::vector<std::string>& inputs,
                  const std::vector<std::string>& outputs, const py::object& attributes, const std::string& domain,
                  const std::string& name) {
            Attributes attrs;
            if (!attributes.is_none())
              for (const auto& [k, v] : attributes.cast<py::dict>()) {
                const auto key = k.cast<std::string>();
                attrs[key] = to_attr(key, v);
              }
            ErrorCapture capture;
            check(n.addNode(op_type, inputs, outputs, attrs, domain, name), capture,
                  [&] { return "add_node('" + op_type + "') failed"; });
            const Node& node = graph(n).nodes.back();
            return Layer{node.name, node.op_type, node.domain, node.inputs, node.outputs};
          },
          py::arg("op_type"), py::arg("inputs"), py::arg("outputs"), py::arg("attributes") = py::none(),
          py::arg("domain") = "", py::arg("name") = "",
          "Adds an ONNX node; attributes are ints, floats, strs or lists of ints or floats. \"\" in inputs omits an "
          "optional input.")
      .def(
          "mark_output",
          [](NetworkDefinition& n, const std::string& name) {
            ErrorCapture capture;
            check(n.markOutput(name), capture, [&] { return "mark_output('" + name + "') failed"; });
          },
          py::arg("name"))
      .def("set_opset_version", &NetworkDefinition::setOpsetVersion, py::arg("domain"), py::arg("version"))
      .def(
          "_has_qdq_nodes", [graph](NetworkDefinition& n) { return quant::has_qdq_nodes(graph(n)); },
          "True when the network has QuantizeLinear/DequantizeLinear nodes (INT8 needs no calibration then).");
  m.attr("NetworkDefinition").attr("add_layer") = m.attr("NetworkDefinition").attr("add_node");

  py::class_<OnnxParser>(m, "OnnxParser", R"(Fills an empty network from an ONNX model (TensorRT's OnnxParser).

parse() and parse_from_file() return False on failure, with the reasons in get_error(i).)")
      .def(py::init([](NetworkDefinition& n, PyLogger& l) { return std::make_unique<OnnxParser>(n, l); }),
           py::arg("network"), py::arg("logger"), py::keep_alive<1, 2>(), py::keep_alive<1, 3>())
      .def(
          "parse",
          [](OnnxParser& p, const py::buffer& model, const py::object& path) {
            std::string base_dir;
            if (!path.is_none()) {
              base_dir = std::filesystem::path(fspath(path)).parent_path().string();
              if (base_dir.empty()) base_dir = ".";
            }
            py::buffer_info info = model.request();
            const size_t size = static_cast<size_t>(info.size * info.itemsize);
            py::gil_scoped_release release;
            return p.parse(info.ptr, size, base_dir);
          },
          py::arg("model"), py::arg("path") = py::none(),
          "Parses a serialized ONNX model (bytes). `path`, the model file's path, locates external weights beside "
          "it; without it external data is refused.")
      .def(
          "parse_from_file",
          [](OnnxParser& p, const py::object& path) {
            const std::string file = fspath(path);
            py::gil_scoped_release release;
            return p.parseFromFile(file);
          },
          py::arg("path"))
      .def_property_readonly("num_errors", &OnnxParser::getNbErrors)
      .def(
          "get_error",
          [](const OnnxParser& p, int32_t i) -> py::object {
            const char* e = p.getError(i);
            if (!e) return py::none();
            return to_str(e);
          },
          py::arg("index"))
      .def("clear_errors", &OnnxParser::clearErrors);

  // kiln.compile's parser: the first problem as a kiln::Error with its code and the text `kiln build`
  // prints (OnnxParser reports every problem as a string instead).
  m.def(
      "_parse_strict",
      [](NetworkDefinition& n, const py::object& model, const py::object& path) {
        auto& net = ApiAccess::impl(n);
        if (!net.model.graph.nodes.empty() || !net.model.graph.inputs.empty())
          throw Error(ErrorCode::kInvalidArgument, "the network is not empty");
        const std::string file = path.is_none() ? std::string() : fspath(path);
        Model parsed;
        if (model.is_none()) {
          py::gil_scoped_release release;
          parsed = load_onnx(file);
          require_supported(parsed);
        } else {
          py::buffer_info info = py::reinterpret_borrow<py::buffer>(model).request();
          const std::span<const uint8_t> bytes(static_cast<const uint8_t*>(info.ptr),
                                               static_cast<size_t>(info.size * info.itemsize));
          const std::string base_dir =
              file.empty() ? std::string() : std::filesystem::path(file).parent_path().string();
          py::gil_scoped_release release;
          parsed = parse_onnx(bytes, base_dir.empty() && !file.empty() ? "." : base_dir, "<memory>");
          require_supported(parsed);
        }
        net.model = std::move(parsed);
        net.nodes_added = static_cast<int>(net.model.graph.nodes.size());
      },
      py::arg("network"), py::arg("model"), py::arg("path"));
}

}  // namespace kiln::py_bindings
