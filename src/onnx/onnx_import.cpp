// ONNX protobuf -> Kiln IR, and back. All decoding goes through the generated protobuf classes.
#include "onnx/onnx_import.h"

#include <google/protobuf/io/coded_stream.h>

#include <climits>
#include <cstring>
#include <fstream>
#include <unordered_set>

#include "onnx/onnx.pb.h"
#include "util/mapped_file.h"

namespace kiln {
namespace fs = std::filesystem;

namespace {

[[noreturn]] void invalid(const std::string& source, const std::string& what) {
  throw Error(ErrorCode::kInvalidModel, source + ": " + what);
}

// Resolves external-data locations inside the model folder and shares one mapping per file.
class ExternalData {
 public:
  ExternalData(fs::path base_dir, std::string source) : base_dir_(std::move(base_dir)), source_(std::move(source)) {}

  std::shared_ptr<const MappedFile> map(const std::string& tensor, const std::string& location) {
    if (base_dir_.empty())
      invalid(source_, "tensor '" + tensor + "' uses external data, but the model was not loaded from a file");
    fs::path rel(location);
    if (location.empty()) invalid(source_, "tensor '" + tensor + "' has external data with an empty location");
    if (rel.is_absolute())
      invalid(source_, "tensor '" + tensor + "': external data location '" + location +
                           "' is an absolute path; it must be relative to the model's folder");
    fs::path normal = rel.lexically_normal();
    if (!normal.empty() && *normal.begin() == "..")
      invalid(source_, "tensor '" + tensor + "': external data location '" + location + "' escapes the model's folder");
    fs::path full = base_dir_ / normal;
    std::error_code ec;
    fs::path canon_base = fs::weakly_canonical(base_dir_, ec);
    fs::path canon_full = fs::weakly_canonical(full, ec);
    auto rel_to_base = canon_full.lexically_relative(canon_base);
    if (ec || rel_to_base.empty() || *rel_to_base.begin() == "..")
      invalid(source_, "tensor '" + tensor + "': external data location '" + location +
                           "' resolves outside the model's folder (through a symbolic link)");
    if (!fs::exists(full, ec))
      throw Error(ErrorCode::kIo, source_ + ": tensor '" + tensor + "': external data file '" + full.string() + "' does not exist");
    auto key = canon_full.string();
    auto it = files_.find(key);
    if (it != files_.end()) return it->second;
    auto mapped = MappedFile::open(full);
    files_.emplace(key, mapped);
    return mapped;
  }

 private:
  fs::path base_dir_;
  std::string source_;
  std::unordered_map<std::string, std::shared_ptr<const MappedFile>> files_;
};

std::vector<int64_t> proto_dims(const onnx::TensorProto& p, const std::string& source) {
  std::vector<int64_t> dims(p.dims().begin(), p.dims().end());
  for (int64_t d : dims)
    if (d < 0) invalid(source, "tensor '" + p.name() + "' has negative dimension " + std::to_string(d));
  return dims;
}

template <typename Src, typename Dst>
void copy_converted(const google::protobuf::RepeatedField<Src>& from, Tensor& t, const std::string& source) {
  if (static_cast<int64_t>(from.size()) != t.numel())
    invalid(source, "tensor has " + std::to_string(from.size()) + " values, expected " + std::to_string(t.numel()) +
                        " for shape " + shape_to_string(t.shape()));
  Dst* out = static_cast<Dst*>(t.mutable_raw());
  for (int i = 0; i < from.size(); ++i) out[i] = static_cast<Dst>(from.Get(i));
}

Tensor tensor_from_proto_impl(const onnx::TensorProto& p, ExternalData* external, const std::string& source) {
  const std::string label = "tensor '" + p.name() + "'";
  DType dt = dtype_from_onnx(p.data_type());
  if (dt == DType::kUndefined)
    throw Error(ErrorCode::kUnsupported, source + ": " + label + " has unsupported data type code " + std::to_string(p.data_type()));
  if (dt == DType::kString)
    throw Error(ErrorCode::kUnsupported, source + ": " + label + " is a string tensor; Kiln computes on numeric tensors only");
  if (p.has_segment()) throw Error(ErrorCode::kUnsupported, source + ": " + label + " is segmented");
  std::vector<int64_t> dims = proto_dims(p, source);
  int64_t numel;
  try {
    numel = shape_numel(dims);
  } catch (const Error&) {
    invalid(source, label + " has a shape whose element count overflows: " + shape_to_string(dims));
  }
  const size_t elem = dtype_size(dt);
  if (static_cast<uint64_t>(numel) > (uint64_t{1} << 60) / elem)
    invalid(source, label + " is impossibly large: " + shape_to_string(dims));
  const size_t expected_bytes = static_cast<size_t>(numel) * elem;
  const std::string type_str = std::string(dtype_name(dt)) + "[" + shape_to_string(dims) + "]";

  if (p.data_location() == onnx::TensorProto::EXTERNAL) {
    std::string location;
    int64_t offset = 0, length = -1;
    for (const auto& kv : p.external_data()) {
      try {
        if (kv.key() == "location") location = kv.value();
        else if (kv.key() == "offset") offset = std::stoll(kv.value());
        else if (kv.key() == "length") length = std::stoll(kv.value());
      } catch (const std::exception&) {
        invalid(source, label + " has a malformed external_data entry '" + kv.key() + "'='" + kv.value() + "'");
      }
    }
    if (!external) invalid(source, label + " uses external data, which is not allowed here");
    auto file = external->map(p.name(), location);
    if (offset < 0 || static_cast<uint64_t>(offset) > file->size())
      invalid(source, label + ": external data offset " + std::to_string(offset) + " is past the end of '" + location +
                          "' (" + std::to_string(file->size()) + " bytes)");
    if (length < 0) length = static_cast<int64_t>(file->size()) - offset;
    if (static_cast<uint64_t>(length) != expected_bytes)
      invalid(source, label + ": external data holds " + std::to_string(length) + " bytes, expected " +
                          std::to_string(expected_bytes) + " for " + type_str);
    if (static_cast<uint64_t>(offset) + static_cast<uint64_t>(length) > file->size())
      invalid(source, label + ": external data range [" + std::to_string(offset) + ", " + std::to_string(offset + length) +
                          ") is past the end of '" + location + "' (" + std::to_string(file->size()) + " bytes)");
    const uint8_t* ptr = file->data() + offset;
    if (reinterpret_cast<uintptr_t>(ptr) % 64 == 0) return Tensor::view(dt, dims, file, ptr);
    Tensor t(dt, dims);  // unaligned offset: copy so kernels can read it as typed data
    if (expected_bytes) std::memcpy(t.mutable_raw(), ptr, expected_bytes);
    return t;
  }

  // Sizes are checked before allocating, so a hostile shape cannot request a huge buffer.
  if (p.has_raw_data()) {
    if (p.raw_data().size() != expected_bytes)
      invalid(source, label + " has " + std::to_string(p.raw_data().size()) + " bytes of raw data, expected " +
                          std::to_string(expected_bytes) + " for " + type_str);
    Tensor t(dt, dims);
    if (expected_bytes) std::memcpy(t.mutable_raw(), p.raw_data().data(), expected_bytes);
    return t;
  }
  int64_t stored = 0;
  switch (dt) {
    case DType::kF32: stored = p.float_data_size(); break;
    case DType::kF64: stored = p.double_data_size(); break;
    case DType::kI64: stored = p.int64_data_size(); break;
    case DType::kU32: case DType::kU64: stored = p.uint64_data_size(); break;
    default: stored = p.int32_data_size(); break;
  }
  if (stored != numel)
    invalid(source, label + " (" + type_str + "): tensor has " + std::to_string(stored) + " values, expected " +
                        std::to_string(numel) + " for shape " + shape_to_string(dims));
  Tensor t(dt, dims);
  try {
    switch (dt) {
      case DType::kF32: copy_converted<float, float>(p.float_data(), t, source); break;
      case DType::kF64: copy_converted<double, double>(p.double_data(), t, source); break;
      case DType::kI64: copy_converted<int64_t, int64_t>(p.int64_data(), t, source); break;
      case DType::kI32: copy_converted<int32_t, int32_t>(p.int32_data(), t, source); break;
      case DType::kI16: copy_converted<int32_t, int16_t>(p.int32_data(), t, source); break;
      case DType::kI8: copy_converted<int32_t, int8_t>(p.int32_data(), t, source); break;
      case DType::kU16: copy_converted<int32_t, uint16_t>(p.int32_data(), t, source); break;
      case DType::kU8: copy_converted<int32_t, uint8_t>(p.int32_data(), t, source); break;
      case DType::kBool: copy_converted<int32_t, uint8_t>(p.int32_data(), t, source); break;
      case DType::kF16: copy_converted<int32_t, uint16_t>(p.int32_data(), t, source); break;
      case DType::kBF16: copy_converted<int32_t, uint16_t>(p.int32_data(), t, source); break;
      case DType::kF8E4M3FN: copy_converted<int32_t, uint8_t>(p.int32_data(), t, source); break;
      case DType::kF8E5M2: copy_converted<int32_t, uint8_t>(p.int32_data(), t, source); break;
      case DType::kU32: copy_converted<uint64_t, uint32_t>(p.uint64_data(), t, source); break;
      case DType::kU64: copy_converted<uint64_t, uint64_t>(p.uint64_data(), t, source); break;
      default: throw Error(ErrorCode::kUnsupported, source + ": " + label + ": unsupported dtype");
    }
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kInvalidModel) throw;
    invalid(source, label + " (" + type_str + "): " + std::string(e.what()).substr(source.size() + 2));
  }
  return t;
}

TensorType type_from_proto(const onnx::TypeProto& tp) {
  TensorType t;
  if (!tp.has_tensor_type()) return t;  // sequences, maps, optionals: left undefined
  t.dtype = dtype_from_onnx(tp.tensor_type().elem_type());
  if (tp.tensor_type().has_shape()) {
    Shape s;
    for (const auto& d : tp.tensor_type().shape().dim()) {
      if (d.has_dim_value() && d.dim_value() >= 0) s.push_back(Dim(d.dim_value()));
      else if (d.has_dim_param()) s.push_back(Dim::sym(d.dim_param()));
      else s.push_back(Dim());
    }
    t.shape = std::move(s);
  }
  return t;
}

struct Importer {
  ExternalData* external;
  std::string source;

  Attribute attribute(const onnx::AttributeProto& a, const std::string& node_label) {
    Attribute out;
    using AP = onnx::AttributeProto;
    auto type = a.type();
    if (type == AP::UNDEFINED) {  // very old models: infer from the populated field
      if (a.has_f()) type = AP::FLOAT;
      else if (a.has_i()) type = AP::INT;
      else if (a.has_s()) type = AP::STRING;
      else if (a.has_t()) type = AP::TENSOR;
      else if (a.has_g()) type = AP::GRAPH;
      else if (a.floats_size()) type = AP::FLOATS;
      else if (a.ints_size()) type = AP::INTS;
      else if (a.strings_size()) type = AP::STRINGS;
      else if (a.tensors_size()) type = AP::TENSORS;
      else if (a.graphs_size()) type = AP::GRAPHS;
    }
    if (!a.ref_attr_name().empty())
      throw Error(ErrorCode::kUnsupported, source + ": " + node_label + ": attribute '" + a.name() + "' refers to a function attribute");
    switch (type) {
      case AP::FLOAT: out.kind = AttrKind::kFloat; out.f = a.f(); break;
      case AP::INT: out.kind = AttrKind::kInt; out.i = a.i(); break;
      case AP::STRING: out.kind = AttrKind::kString; out.s = a.s(); break;
      case AP::TENSOR: out.kind = AttrKind::kTensor; out.t = tensor_from_proto_impl(a.t(), external, source); break;
      case AP::GRAPH: out.kind = AttrKind::kGraph; out.g = std::make_shared<Graph>(graph(a.g(), true)); break;
      case AP::FLOATS: out.kind = AttrKind::kFloats; out.floats.assign(a.floats().begin(), a.floats().end()); break;
      case AP::INTS: out.kind = AttrKind::kInts; out.ints.assign(a.ints().begin(), a.ints().end()); break;
      case AP::STRINGS: out.kind = AttrKind::kStrings; out.strings.assign(a.strings().begin(), a.strings().end()); break;
      case AP::TENSORS:
        out.kind = AttrKind::kTensors;
        for (const auto& t : a.tensors()) out.tensors.push_back(tensor_from_proto_impl(t, external, source));
        break;
      case AP::GRAPHS:
        out.kind = AttrKind::kGraphs;
        for (const auto& g : a.graphs()) out.graphs.push_back(std::make_shared<Graph>(graph(g, true)));
        break;
      default:
        throw Error(ErrorCode::kUnsupported, source + ": " + node_label + ": attribute '" + a.name() +
                                                 "' has unsupported type " + std::to_string(static_cast<int>(type)));
    }
    return out;
  }

  Graph graph(const onnx::GraphProto& gp, bool is_subgraph) {
    Graph g;
    g.name = gp.name();
    for (const auto& init : gp.initializer()) {
      if (init.name().empty()) invalid(source, "an initializer has no name");
      if (g.initializers.count(init.name())) invalid(source, "initializer '" + init.name() + "' is defined twice");
      Tensor t = tensor_from_proto_impl(init, external, source);
      g.types[init.name()] = TensorType{t.dtype(), shape_from_dims(t.shape())};
      g.initializers.emplace(init.name(), std::move(t));
    }
    if (gp.sparse_initializer_size() > 0)
      throw Error(ErrorCode::kUnsupported, source + ": sparse initializers are not supported");
    std::unordered_set<std::string> seen_inputs;
    for (const auto& in : gp.input()) {
      if (in.name().empty()) invalid(source, "a graph input has no name");
      if (!seen_inputs.insert(in.name()).second) invalid(source, "graph input '" + in.name() + "' is listed twice");
      TensorType t = type_from_proto(in.type());
      if (g.initializers.count(in.name())) continue;  // IR<4 lists initializers as inputs
      if (!is_subgraph && in.has_type() && !in.type().has_tensor_type())
        throw Error(ErrorCode::kUnsupported, source + ": graph input '" + in.name() +
                                                 "' is a sequence, map or optional; Kiln supports tensor inputs only");
      if (!is_subgraph && in.type().has_tensor_type() && t.dtype == DType::kUndefined)
        throw Error(ErrorCode::kUnsupported, source + ": graph input '" + in.name() + "' has unsupported element type " +
                                                 std::to_string(in.type().tensor_type().elem_type()));
      g.inputs.push_back(in.name());
      g.types[in.name()] = t;
    }
    for (const auto& vi : gp.value_info()) {
      TensorType t = type_from_proto(vi.type());
      if (t.dtype != DType::kUndefined) g.types[vi.name()] = t;
    }
    for (const auto& out : gp.output()) {
      if (out.name().empty()) invalid(source, "a graph output has no name");
      g.outputs.push_back(out.name());
      TensorType t = type_from_proto(out.type());
      if (t.dtype != DType::kUndefined && !g.types.count(out.name())) g.types[out.name()] = t;
    }
    int index = 0;
    for (const auto& np : gp.node()) {
      Node n;
      n.name = np.name();
      n.op_type = np.op_type();
      n.domain = canonical_domain(np.domain());
      n.inputs.assign(np.input().begin(), np.input().end());
      n.outputs.assign(np.output().begin(), np.output().end());
      std::string label = n.op_type.empty() ? "node #" + std::to_string(index) : n.describe();
      if (n.op_type.empty()) invalid(source, label + " has no op_type");
      for (const auto& a : np.attribute()) {
        if (a.name().empty()) invalid(source, label + " has an attribute with no name");
        if (n.attrs.count(a.name())) invalid(source, label + " has attribute '" + a.name() + "' twice");
        n.attrs.emplace(a.name(), attribute(a, label));
      }
      g.nodes.push_back(std::move(n));
      ++index;
    }
    if (!is_subgraph) {
      topological_sort(g);  // throws on cycles and undefined inputs
      std::unordered_set<std::string> produced(g.inputs.begin(), g.inputs.end());
      for (const auto& [name, t] : g.initializers) produced.insert(name);
      for (const auto& n : g.nodes)
        for (const auto& o : n.outputs) {
          if (o.empty()) continue;
          if (produced.count(o)) invalid(source, n.describe() + " redefines value '" + o + "'");
          produced.insert(o);
        }
      for (const auto& o : g.outputs)
        if (!produced.count(o)) invalid(source, "graph output '" + o + "' is not produced by any node, input or initializer");
    }
    return g;
  }
};

}  // namespace

Model import_model_proto(const onnx::ModelProto& proto, const fs::path& base_dir, const std::string& source) {
  if (!proto.has_graph()) invalid(source, "the model has no graph (not an ONNX model, or truncated)");
  Model m;
  m.ir_version = proto.ir_version();
  m.producer = proto.producer_name();
  m.source_path = source;
  for (const auto& op : proto.opset_import()) m.opsets[canonical_domain(op.domain())] = op.version();
  if (proto.opset_import_size() == 0) m.opsets[""] = 1;  // IR version 1 models have no opset_import
  if (proto.functions_size() > 0) {
    // Local functions are not inlined yet; nodes calling them show as unknown ops.
  }
  ExternalData external(base_dir, source);
  Importer importer{&external, source};
  m.graph = importer.graph(proto.graph(), false);
  return m;
}

Model parse_onnx(std::span<const uint8_t> bytes, const fs::path& base_dir, const std::string& source) {
  if (bytes.size() > static_cast<size_t>(INT_MAX))
    invalid(source, "the protobuf is larger than 2 GiB; store weights as external data");
  onnx::ModelProto proto;
  google::protobuf::io::CodedInputStream stream(bytes.data(), static_cast<int>(bytes.size()));
  stream.SetTotalBytesLimit(INT_MAX);
  stream.SetRecursionLimit(256);
  if (!proto.ParseFromCodedStream(&stream) || !stream.ConsumedEntireMessage())
    invalid(source, "not a valid ONNX model: the protobuf is truncated or corrupted");
  return import_model_proto(proto, base_dir, source);
}

Model load_onnx(const fs::path& path) {
  std::vector<uint8_t> bytes = read_file_bytes(path);
  fs::path base = path.parent_path();
  if (base.empty()) base = ".";
  return parse_onnx(bytes, base, path.string());
}

Tensor tensor_from_proto(const onnx::TensorProto& proto, const fs::path& base_dir, const std::string& source) {
  ExternalData external(base_dir, source);
  return tensor_from_proto_impl(proto, &external, source);
}

Tensor read_tensor_proto_file(const fs::path& path, std::string* name) {
  std::vector<uint8_t> bytes = read_file_bytes(path);
  onnx::TensorProto proto;
  if (!proto.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    invalid(path.string(), "not a valid TensorProto");
  if (name) *name = proto.name();
  return tensor_from_proto(proto, path.parent_path(), path.string());
}

// ---- Export

void tensor_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto* p) {
  p->set_name(name);
  p->set_data_type(dtype_to_onnx(t.dtype()));
  for (int64_t d : t.shape()) p->add_dims(d);
  p->set_raw_data(t.raw(), t.nbytes());
}

namespace {

void type_to_proto(const TensorType& t, onnx::TypeProto* tp) {
  auto* tt = tp->mutable_tensor_type();
  tt->set_elem_type(dtype_to_onnx(t.dtype));
  if (!t.shape) return;
  auto* sp = tt->mutable_shape();
  for (const Dim& d : *t.shape) {
    auto* dp = sp->add_dim();
    if (d.known()) dp->set_dim_value(d.value);
    else if (!d.symbol.empty()) dp->set_dim_param(d.symbol);
  }
}

void graph_to_proto(const Graph& g, onnx::GraphProto* gp);

void attr_to_proto(const std::string& name, const Attribute& a, onnx::AttributeProto* ap) {
  using AP = onnx::AttributeProto;
  ap->set_name(name);
  switch (a.kind) {
    case AttrKind::kFloat: ap->set_type(AP::FLOAT); ap->set_f(a.f); break;
    case AttrKind::kInt: ap->set_type(AP::INT); ap->set_i(a.i); break;
    case AttrKind::kString: ap->set_type(AP::STRING); ap->set_s(a.s); break;
    case AttrKind::kTensor: ap->set_type(AP::TENSOR); tensor_to_proto(a.t, "", ap->mutable_t()); break;
    case AttrKind::kGraph: ap->set_type(AP::GRAPH); graph_to_proto(*a.g, ap->mutable_g()); break;
    case AttrKind::kFloats: ap->set_type(AP::FLOATS); for (float f : a.floats) ap->add_floats(f); break;
    case AttrKind::kInts: ap->set_type(AP::INTS); for (int64_t i : a.ints) ap->add_ints(i); break;
    case AttrKind::kStrings: ap->set_type(AP::STRINGS); for (const auto& s : a.strings) ap->add_strings(s); break;
    case AttrKind::kTensors: ap->set_type(AP::TENSORS); for (const auto& t : a.tensors) tensor_to_proto(t, "", ap->add_tensors()); break;
    case AttrKind::kGraphs: ap->set_type(AP::GRAPHS); for (const auto& g : a.graphs) graph_to_proto(*g, ap->add_graphs()); break;
  }
}

void graph_to_proto(const Graph& g, onnx::GraphProto* gp) {
  gp->set_name(g.name.empty() ? "main" : g.name);
  // Deterministic initializer order.
  std::vector<std::string> names;
  for (const auto& [n, t] : g.initializers) names.push_back(n);
  std::sort(names.begin(), names.end());
  for (const auto& n : names) tensor_to_proto(g.initializers.at(n), n, gp->add_initializer());
  for (const auto& in : g.inputs) {
    auto* vi = gp->add_input();
    vi->set_name(in);
    if (const TensorType* t = g.type_of(in)) type_to_proto(*t, vi->mutable_type());
  }
  for (const auto& out : g.outputs) {
    auto* vi = gp->add_output();
    vi->set_name(out);
    if (const TensorType* t = g.type_of(out); t && t->dtype != DType::kUndefined) type_to_proto(*t, vi->mutable_type());
  }
  for (const auto& n : g.nodes) {
    auto* np = gp->add_node();
    np->set_name(n.name);
    np->set_op_type(n.op_type);
    if (!n.domain.empty()) np->set_domain(n.domain);
    for (const auto& i : n.inputs) np->add_input(i);
    for (const auto& o : n.outputs) np->add_output(o);
    for (const auto& [k, a] : n.attrs) attr_to_proto(k, a, np->add_attribute());
  }
}

}  // namespace

void model_to_proto(const Model& m, onnx::ModelProto* p) {
  p->set_ir_version(m.ir_version > 0 ? m.ir_version : 8);
  p->set_producer_name(m.producer.empty() ? "kiln" : m.producer);
  p->set_producer_version(KILN_VERSION);
  for (const auto& [domain, version] : m.opsets) {
    auto* op = p->add_opset_import();
    op->set_domain(domain);
    op->set_version(version);
  }
  graph_to_proto(m.graph, p->mutable_graph());
}

void save_onnx(const Model& model, const fs::path& path) {
  onnx::ModelProto proto;
  model_to_proto(model, &proto);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out || !proto.SerializeToOstream(&out)) throw Error(ErrorCode::kIo, path.string() + ": cannot write model");
}

}  // namespace kiln
