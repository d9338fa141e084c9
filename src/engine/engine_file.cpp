// Engine file writer and validating loader (layout in engine_file.h, schema in engine.fbs).
#include "engine/engine_file.h"

#include <cpuid.h>
#include <flatbuffers/flatbuffers.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <unordered_set>

#include "engine/engine_generated.h"
#include "ops/model_check.h"
#include "util/mapped_file.h"

namespace kiln {
namespace fs = std::filesystem;

namespace {

constexpr const char* kEngineHelp = " (see docs/troubleshooting.md#engine-file)";

[[noreturn]] void bad(const std::string& source, const std::string& what) {
  throw Error(ErrorCode::kInvalidModel, source + ": " + what + kEngineHelp);
}

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

template <typename T> void put(uint8_t* p, T v) { std::memcpy(p, &v, sizeof v); }
template <typename T> T get(const uint8_t* p) { T v; std::memcpy(&v, p, sizeof v); return v; }

uint32_t crc_update(uint32_t crc, const uint8_t* p, uint64_t n) {
  while (n > 0) {
    const uInt chunk = static_cast<uInt>(std::min<uint64_t>(n, 1u << 30));
    crc = static_cast<uint32_t>(::crc32(crc, p, chunk));
    p += chunk;
    n -= chunk;
  }
  return crc;
}

std::string cpu_vendor() {
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return "unknown";
  char v[13] = {};
  std::memcpy(v, &b, 4);
  std::memcpy(v + 4, &d, 4);
  std::memcpy(v + 8, &c, 4);
  return v;
}

std::string cpu_brand() {
  unsigned a, b, c, d;
  if (!__get_cpuid(0x80000000, &a, &b, &c, &d) || a < 0x80000004) return "unknown";
  char brand[49] = {};
  for (unsigned i = 0; i < 3; ++i) {
    __get_cpuid(0x80000002 + i, &a, &b, &c, &d);
    std::memcpy(brand + 16 * i, &a, 4);
    std::memcpy(brand + 16 * i + 4, &b, 4);
    std::memcpy(brand + 16 * i + 8, &c, 4);
    std::memcpy(brand + 16 * i + 12, &d, 4);
  }
  std::string s(brand);
  s.erase(0, s.find_first_not_of(' '));
  s.erase(s.find_last_not_of(' ') + 1);
  return s.empty() ? "unknown" : s;
}

// ---- Writing

using flatbuffers::FlatBufferBuilder;
using flatbuffers::Offset;

Offset<flatbuffers::Vector<Offset<flatbuffers::String>>> strings(FlatBufferBuilder& b, const std::vector<std::string>& v) {
  return b.CreateVectorOfStrings(v);
}

Offset<fb::ValueType> value_type(FlatBufferBuilder& b, const std::string& name, const TensorType* t) {
  std::vector<Offset<fb::DimRec>> dims;
  if (t && t->shape)
    for (const Dim& d : *t->shape) dims.push_back(fb::CreateDimRecDirect(b, d.known() ? d.value : -1, d.symbol.empty() ? nullptr : d.symbol.c_str()));
  return fb::CreateValueTypeDirect(b, name.c_str(), std::string(dtype_name(t ? t->dtype : DType::kUndefined)).c_str(),
                                   t && t->shape.has_value(), &dims);
}

Offset<fb::TensorData> tensor_data(FlatBufferBuilder& b, const Tensor& t) {
  std::vector<int64_t> dims = t.shape();
  auto data = b.CreateVector(static_cast<const uint8_t*>(t.raw()), t.nbytes());
  return fb::CreateTensorData(b, b.CreateString(std::string(dtype_name(t.dtype()))), b.CreateVector(dims), data);
}

Offset<fb::Attr> attribute(FlatBufferBuilder& b, const Node& n, const std::string& name, const Attribute& a) {
  if (a.kind == AttrKind::kGraph || a.kind == AttrKind::kGraphs)
    throw Error(ErrorCode::kUnsupported, n.describe() + ": attribute '" + name +
                                             "' holds a subgraph; engine files do not store subgraphs (If/Loop/Scan) yet");
  auto nm = b.CreateString(name);
  auto kind = b.CreateString(attr_kind_name(a.kind));
  auto s = b.CreateString(a.s);
  auto floats = b.CreateVector(a.floats);
  auto ints = b.CreateVector(a.ints);
  auto strs = strings(b, a.strings);
  std::vector<Offset<fb::TensorData>> tensors;
  if (a.kind == AttrKind::kTensor) tensors.push_back(tensor_data(b, a.t));
  for (const auto& t : a.tensors) tensors.push_back(tensor_data(b, t));
  return fb::CreateAttr(b, nm, kind, a.f, a.i, s, floats, ints, strs, b.CreateVector(tensors));
}

struct WeightLayout {
  std::vector<std::string> names;  // sorted
  std::vector<uint64_t> offsets;
  uint64_t size = 0;
};

WeightLayout layout_weights(const Graph& g) {
  WeightLayout w;
  for (const auto& [name, t] : g.initializers) w.names.push_back(name);
  std::sort(w.names.begin(), w.names.end());
  for (const auto& name : w.names) {
    const Tensor& t = g.initializers.at(name);
    if (dtype_size(t.dtype()) == 0)
      throw Error(ErrorCode::kUnsupported, "initializer '" + name + "' has dtype " + std::string(dtype_name(t.dtype())) +
                                               ", which engine files cannot store");
    w.size = align_up(w.size, kEngineWeightAlignment);
    w.offsets.push_back(w.size);
    w.size += t.nbytes();
  }
  w.size = align_up(w.size, kEngineWeightAlignment);
  return w;
}

std::vector<uint8_t> build_flatbuffer(const Model& model, const EngineInfo& info, const WeightLayout& w) {
  const Graph& g = model.graph;
  FlatBufferBuilder b(1 << 16);
  std::vector<Offset<fb::KeyValue>> props;
  for (const auto& [k, v] : info.target.properties) props.push_back(fb::CreateKeyValueDirect(b, k.c_str(), v.c_str()));
  auto target = fb::CreateTarget(b, b.CreateString(info.target.cpu_vendor), b.CreateString(info.target.cpu_model),
                                 strings(b, info.target.isa_features), strings(b, info.target.required_isa),
                                 b.CreateString(info.target.backend), b.CreateVector(props));
  std::vector<Offset<fb::ProfileShape>> profile;
  for (const auto& [name, dims] : info.profile_shapes) profile.push_back(fb::CreateProfileShapeDirect(b, name.c_str(), &dims));
  std::vector<Offset<fb::Profile>> profiles;
  for (const auto& p : info.profiles) {
    std::vector<Offset<fb::ProfileInput>> ins;
    for (const auto& [name, d] : p.inputs)
      ins.push_back(fb::CreateProfileInputDirect(b, name.c_str(), &d.min, &d.opt, &d.max));
    profiles.push_back(fb::CreateProfile(b, b.CreateVector(ins)));
  }
  std::vector<Offset<fb::TacticRecord>> tactics;
  for (const auto& [k, t] : info.tactics)
    tactics.push_back(fb::CreateTacticRecordDirect(b, k.c_str(), t.tactic.c_str(), t.ms));
  auto build = fb::CreateBuildOptions(b, info.opt_level, b.CreateVector(profile), strings(b, info.disabled_passes),
                                      b.CreateVector(profiles), info.threads, info.memory_peak, info.memory_total,
                                      info.kernels, b.CreateVector(tactics));
  if (!info.node_tactics.empty() && info.node_tactics.size() != g.nodes.size())
    throw Error(ErrorCode::kInternal, "save_engine: " + std::to_string(info.node_tactics.size()) + " tactics for " +
                                          std::to_string(g.nodes.size()) + " nodes");
  std::vector<Offset<fb::Opset>> opsets;
  for (const auto& [domain, version] : model.opsets) opsets.push_back(fb::CreateOpsetDirect(b, domain.c_str(), version));
  std::vector<Offset<fb::ValueType>> inputs, outputs, values;
  for (const auto& in : g.inputs) inputs.push_back(value_type(b, in, g.type_of(in)));
  for (const auto& out : g.outputs) outputs.push_back(value_type(b, out, g.type_of(out)));
  std::vector<std::string> typed;
  for (const auto& [name, t] : g.types)
    if (!g.is_initializer(name) && t.dtype != DType::kUndefined) typed.push_back(name);
  std::sort(typed.begin(), typed.end());
  for (const auto& name : typed) values.push_back(value_type(b, name, g.type_of(name)));
  std::vector<Offset<fb::NodeRec>> nodes;
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    const Node& n = g.nodes[ni];
    std::vector<Offset<fb::Attr>> attrs;
    for (const auto& [name, a] : n.attrs) attrs.push_back(attribute(b, n, name, a));
    auto it = model.opsets.find(n.domain);
    const int64_t opset = it == model.opsets.end() ? 0 : it->second;
    nodes.push_back(fb::CreateNodeRec(b, b.CreateString(n.name), b.CreateString(n.domain), b.CreateString(n.op_type), opset,
                                      strings(b, n.inputs), strings(b, n.outputs), b.CreateVector(attrs),
                                      b.CreateString(info.node_tactics.empty() ? "" : info.node_tactics[ni])));
  }
  std::vector<Offset<fb::Initializer>> inits;
  for (size_t i = 0; i < w.names.size(); ++i) {
    const Tensor& t = g.initializers.at(w.names[i]);
    std::vector<int64_t> dims = t.shape();
    inits.push_back(fb::CreateInitializerDirect(b, w.names[i].c_str(), std::string(dtype_name(t.dtype())).c_str(), &dims,
                                                w.offsets[i], t.nbytes()));
  }
  auto engine = fb::CreateEngine(b, b.CreateString(info.kiln_version), target, build, b.CreateString(model.producer),
                                 model.ir_version, b.CreateString(g.name), b.CreateVector(opsets), b.CreateVector(inputs),
                                 b.CreateVector(outputs), b.CreateVector(values), b.CreateVector(nodes), b.CreateVector(inits));
  fb::FinishSizePrefixedEngineBuffer(b, engine);  // the prefix (under the CRC) vouches for the header's size
  return std::vector<uint8_t>(b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize());
}

// Calls sink(bytes, n) for every byte of the file after the header, in order.
template <typename Sink>
void emit_body(const Graph& g, const std::vector<uint8_t>& fbuf, const WeightLayout& w, uint64_t weights_offset, Sink&& sink) {
  static const uint8_t kZeros[kEngineWeightAlignment] = {};
  sink(fbuf.data(), fbuf.size());
  uint64_t pos = kEngineHeaderSize + fbuf.size();
  sink(kZeros, weights_offset - pos);
  pos = 0;
  for (size_t i = 0; i < w.names.size(); ++i) {
    sink(kZeros, w.offsets[i] - pos);
    const Tensor& t = g.initializers.at(w.names[i]);
    sink(static_cast<const uint8_t*>(t.raw()), t.nbytes());
    pos = w.offsets[i] + t.nbytes();
  }
  sink(kZeros, w.size - pos);
}

struct Prepared {
  std::vector<uint8_t> fbuf;
  WeightLayout w;
  uint8_t header[kEngineHeaderSize] = {};
  uint64_t weights_offset = 0;
};

void prepare(const Model& model, const EngineInfo& info, Prepared& p) {
  p.w = layout_weights(model.graph);
  p.fbuf = build_flatbuffer(model, info, p.w);
  p.weights_offset = align_up(kEngineHeaderSize + p.fbuf.size(), kEngineWeightAlignment);
  uint32_t crc = static_cast<uint32_t>(::crc32(0, nullptr, 0));
  emit_body(model.graph, p.fbuf, p.w, p.weights_offset, [&](const uint8_t* d, uint64_t n) { crc = crc_update(crc, d, n); });
  std::memcpy(p.header, kEngineMagic, 8);
  put<uint32_t>(p.header + 8, kEngineFormatVersion);
  put<uint32_t>(p.header + 12, kEngineHeaderSize);
  put<uint64_t>(p.header + 16, kEngineHeaderSize);
  put<uint64_t>(p.header + 24, p.fbuf.size());
  put<uint64_t>(p.header + 32, p.weights_offset);
  put<uint64_t>(p.header + 40, p.w.size);
  put<uint32_t>(p.header + 48, crc);
}

// ---- Reading

std::string str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

std::vector<std::string> strs(const flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>* v) {
  std::vector<std::string> out;
  if (v)
    for (const auto* s : *v) out.push_back(str(s));
  return out;
}

template <typename T> std::vector<T> vec(const flatbuffers::Vector<T>* v) {
  return v ? std::vector<T>(v->begin(), v->end()) : std::vector<T>();
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

DType read_dtype(const std::string& source, const std::string& what, const flatbuffers::String* s) {
  DType dt = dtype_from_name(str(s));
  if (dt == DType::kUndefined || dt == DType::kString)
    bad(source, what + " has unknown dtype '" + str(s) + "'");
  return dt;
}

std::vector<int64_t> read_dims(const std::string& source, const std::string& what, const flatbuffers::Vector<int64_t>* v) {
  std::vector<int64_t> dims = vec(v);
  for (int64_t d : dims)
    if (d < 0) bad(source, what + " has negative dimension " + std::to_string(d));
  try {
    shape_numel(dims);
  } catch (const Error&) {
    bad(source, what + " has a shape whose element count overflows");
  }
  return dims;
}

TensorType read_type(const std::string& source, const fb::ValueType* v) {
  TensorType t;
  const std::string name = str(v->name());
  std::string dt = str(v->dtype());
  t.dtype = dt == "undefined" || dt.empty() ? DType::kUndefined : read_dtype(source, "value '" + name + "'", v->dtype());
  if (v->has_shape()) {
    Shape s;
    if (v->dims())
      for (const auto* d : *v->dims()) {
        if (!d) bad(source, "value '" + name + "' has a null dimension");
        if (d->value() >= 0) s.push_back(Dim(d->value()));
        else if (d->symbol() && d->symbol()->size()) s.push_back(Dim::sym(d->symbol()->str()));
        else s.push_back(Dim());
      }
    t.shape = std::move(s);
  }
  return t;
}

Tensor read_tensor_data(const std::string& source, const std::string& what, const fb::TensorData* td) {
  if (!td) bad(source, what + " is null");
  DType dt = read_dtype(source, what, td->dtype());
  auto dims = read_dims(source, what, td->dims());
  if (static_cast<uint64_t>(shape_numel(dims)) > (uint64_t{1} << 60) / dtype_size(dt)) bad(source, what + " is impossibly large");
  const uint64_t expected = static_cast<uint64_t>(shape_numel(dims)) * dtype_size(dt);
  const uint64_t have = td->data() ? td->data()->size() : 0;
  if (have != expected)
    bad(source, what + " holds " + std::to_string(have) + " bytes, expected " + std::to_string(expected) + " for " +
                    std::string(dtype_name(dt)) + "[" + shape_to_string(dims) + "]");
  Tensor t(dt, dims);
  if (expected) std::memcpy(t.mutable_raw(), td->data()->data(), expected);
  return t;
}

Attribute read_attr(const std::string& source, const std::string& label, const fb::Attr* a) {
  const std::string name = str(a->name());
  const std::string kind = str(a->kind());
  const std::string what = label + ": attribute '" + name + "'";
  Attribute out;
  auto tensors = [&] {
    std::vector<Tensor> v;
    if (a->tensors())
      for (unsigned i = 0; i < a->tensors()->size(); ++i)
        v.push_back(read_tensor_data(source, what + " tensor " + std::to_string(i), a->tensors()->Get(i)));
    return v;
  };
  if (kind == "float") out = Attribute::of_float(a->f());
  else if (kind == "int") out = Attribute::of_int(a->i());
  else if (kind == "string") out = Attribute::of_string(str(a->s()));
  else if (kind == "floats") out = Attribute::of_floats(vec(a->floats()));
  else if (kind == "ints") out = Attribute::of_ints(vec(a->ints()));
  else if (kind == "strings") {
    out.kind = AttrKind::kStrings;
    out.strings = strs(a->strings());
  } else if (kind == "tensor") {
    auto v = tensors();
    if (v.size() != 1) bad(source, what + " is a tensor attribute holding " + std::to_string(v.size()) + " tensors");
    out = Attribute::of_tensor(std::move(v.front()));
  } else if (kind == "tensors") {
    out.kind = AttrKind::kTensors;
    out.tensors = tensors();
  } else {
    bad(source, what + " has unknown kind '" + kind + "'");
  }
  return out;
}

LoadedEngine decode(const uint8_t* data, uint64_t size, std::shared_ptr<const void> owner, const std::string& source,
                    const EngineLoadOptions& options) {
  if (size == 0) bad(source, "the file is empty, not a Kiln engine");
  if (size < kEngineHeaderSize)
    bad(source, "the file is " + std::to_string(size) + " bytes, too short for a Kiln engine header (" +
                    std::to_string(kEngineHeaderSize) + " bytes): truncated or not an engine");
  if (std::memcmp(data, kEngineMagic, 8) != 0) bad(source, "not a Kiln engine file (bad magic; expected \"KILNENG\")");
  LoadedEngine e;
  EngineHeader& h = e.header;
  h.format_version = get<uint32_t>(data + 8);
  h.header_size = get<uint32_t>(data + 12);
  h.flatbuffer_offset = get<uint64_t>(data + 16);
  h.flatbuffer_size = get<uint64_t>(data + 24);
  h.weights_offset = get<uint64_t>(data + 32);
  h.weights_size = get<uint64_t>(data + 40);
  h.crc32 = get<uint32_t>(data + 48);
  h.file_size = size;
  if (h.format_version != kEngineFormatVersion)
    throw Error(ErrorCode::kUnsupported, source + ": engine format version " + std::to_string(h.format_version) +
                                             "; this Kiln (" + options.kiln_version + ") reads format version " +
                                             std::to_string(kEngineFormatVersion) + ": rebuild the engine with 'kiln build'" + kEngineHelp);
  if (h.header_size != kEngineHeaderSize)
    bad(source, "header size is " + std::to_string(h.header_size) + ", expected " + std::to_string(kEngineHeaderSize));
  auto range = [&](const char* what, uint64_t off, uint64_t len) {
    if (off < kEngineHeaderSize || off > size || len > size - off)
      bad(source, std::string(what) + " [" + std::to_string(off) + ", +" + std::to_string(len) +
                      ") lies outside the file (" + std::to_string(size) + " bytes): truncated or corrupted");
  };
  range("the flatbuffer", h.flatbuffer_offset, h.flatbuffer_size);
  range("the weight blob", h.weights_offset, h.weights_size);
  // The layout is fixed by the two sizes, so every header field is checked even though the CRC
  // covers only the bytes after the header.
  if (h.flatbuffer_offset != kEngineHeaderSize)
    bad(source, "the flatbuffer starts at " + std::to_string(h.flatbuffer_offset) + ", expected " + std::to_string(kEngineHeaderSize));
  if (h.weights_offset != align_up(h.flatbuffer_offset + h.flatbuffer_size, kEngineWeightAlignment))
    bad(source, "the weight blob starts at " + std::to_string(h.weights_offset) + ", expected " +
                    std::to_string(align_up(h.flatbuffer_offset + h.flatbuffer_size, kEngineWeightAlignment)) +
                    " (right after the flatbuffer, 64-byte aligned)");
  if (h.weights_offset % kEngineWeightAlignment != 0)
    bad(source, "the weight blob offset " + std::to_string(h.weights_offset) + " is not 64-byte aligned");
  if (h.flatbuffer_offset % 8 != 0) bad(source, "the flatbuffer offset " + std::to_string(h.flatbuffer_offset) + " is not 8-byte aligned");
  if (h.flatbuffer_offset + h.flatbuffer_size > h.weights_offset)
    bad(source, "the flatbuffer overlaps the weight blob");
  if (h.weights_offset + h.weights_size != size)
    bad(source, "the file has " + std::to_string(size - (h.weights_offset + h.weights_size)) +
                    " bytes after the weight blob");
  if (options.verify_crc) {
    uint32_t crc = crc_update(static_cast<uint32_t>(::crc32(0, nullptr, 0)), data + kEngineHeaderSize, size - kEngineHeaderSize);
    if (crc != h.crc32) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "CRC-32 mismatch (header says %08x, contents give %08x)", h.crc32, crc);
      bad(source, std::string(buf) + ": the file is corrupted");
    }
  }
  const uint8_t* fbuf = data + h.flatbuffer_offset;
  if (h.flatbuffer_size < 4 || get<uint32_t>(fbuf) != h.flatbuffer_size - 4)
    bad(source, "the header's flatbuffer size (" + std::to_string(h.flatbuffer_size) +
                    ") disagrees with the flatbuffer's own size prefix (" +
                    std::to_string(h.flatbuffer_size < 4 ? 0 : uint64_t{get<uint32_t>(fbuf)} + 4) + ")");
  flatbuffers::Verifier verifier(fbuf, h.flatbuffer_size, 64, 10'000'000);
  if (!fb::VerifySizePrefixedEngineBuffer(verifier)) bad(source, "the engine's flatbuffer fails verification (corrupted)");
  const fb::Engine* fe = fb::GetSizePrefixedEngine(fbuf);

  // Version and target first: an engine from another Kiln or machine is refused as such.
  EngineInfo& info = e.info;
  info.kiln_version = str(fe->kiln_version());
  if (info.kiln_version != options.kiln_version)
    throw Error(ErrorCode::kUnsupported, source + ": engine built by Kiln " + info.kiln_version + ", this is Kiln " +
                                             options.kiln_version + ": rebuild the engine with 'kiln build'" + kEngineHelp);
  if (!fe->target()) bad(source, "the engine has no target fingerprint");
  info.target.cpu_vendor = str(fe->target()->cpu_vendor());
  info.target.cpu_model = str(fe->target()->cpu_model());
  info.target.isa_features = strs(fe->target()->isa_features());
  info.target.required_isa = strs(fe->target()->required_isa());
  info.target.backend = str(fe->target()->backend());
  if (info.target.backend != "reference" && info.target.backend != "cpu" && info.target.backend != "cuda")
    throw Error(ErrorCode::kUnsupported, source + ": engine backend '" + info.target.backend +
                                             "' is not available in this Kiln (it has: cpu, reference, cuda)" + kEngineHelp);
  if (const auto* props = fe->target()->properties())
    for (const auto* kv : *props) info.target.properties[str(kv->key())] = str(kv->value());
  const TargetFingerprint host = options.host ? *options.host : host_fingerprint();
  if (auto missing = missing_isa_features(info.target, host); !missing.empty())
    throw Error(ErrorCode::kUnsupported, source + ": engine was built for " + info.target.cpu_model + " and needs CPU features this machine (" +
                                             host.cpu_model + ") lacks: " + join(missing) + "; rebuild it here with 'kiln build'" + kEngineHelp);
  if (const auto* bo = fe->build()) {
    info.opt_level = bo->opt_level();
    if (bo->profile_shapes())
      for (const auto* p : *bo->profile_shapes()) info.profile_shapes[str(p->input())] = vec(p->dims());
    info.disabled_passes = strs(bo->disabled_passes());
    if (bo->profiles())
      for (const auto* p : *bo->profiles()) {
        OptimizationProfile prof;
        if (p->inputs())
          for (const auto* pi : *p->inputs()) {
            ProfileDims d{vec(pi->min()), vec(pi->opt()), vec(pi->max())};
            if (d.min.size() != d.opt.size() || d.opt.size() != d.max.size())
              bad(source, "profile input '" + str(pi->input()) + "' has min/opt/max of different ranks");
            for (size_t k = 0; k < d.min.size(); ++k)
              if (d.min[k] < 0 || d.min[k] > d.opt[k] || d.opt[k] > d.max[k])
                bad(source, "profile input '" + str(pi->input()) + "' does not satisfy 0 <= min <= opt <= max");
            prof.inputs[str(pi->input())] = std::move(d);
          }
        info.profiles.push_back(std::move(prof));
      }
    info.threads = bo->threads();
    info.memory_peak = bo->memory_peak();
    info.memory_total = bo->memory_total();
    info.kernels = bo->kernels();
    if (bo->tactics())
      for (const auto* t : *bo->tactics()) {
        if (!t->key() || !t->tactic()) bad(source, "a tactic record has no key or no tactic");
        info.tactics[str(t->key())] = EngineInfo::Tactic{str(t->tactic()), t->ms()};
      }
  }

  Model& m = e.model;
  m.source_path = source;
  m.producer = str(fe->producer());
  m.ir_version = fe->ir_version();
  Graph& g = m.graph;
  g.name = str(fe->graph_name());
  if (fe->opsets())
    for (const auto* o : *fe->opsets()) {
      const std::string d = canonical_domain(str(o->domain()));
      if (!m.opsets.emplace(d, o->version()).second) bad(source, "opset domain '" + d + "' is listed twice");
    }
  if (fe->value_types())
    for (const auto* v : *fe->value_types()) g.types[str(v->name())] = read_type(source, v);
  if (fe->inputs())
    for (const auto* v : *fe->inputs()) {
      g.inputs.push_back(str(v->name()));
      g.types[g.inputs.back()] = read_type(source, v);
    }
  if (fe->outputs())
    for (const auto* v : *fe->outputs()) {
      g.outputs.push_back(str(v->name()));
      TensorType t = read_type(source, v);
      if (t.dtype != DType::kUndefined) g.types[g.outputs.back()] = t;
    }

  // Initializers: views into the blob, ranges and sizes checked first.
  const uint8_t* blob = data + h.weights_offset;
  if (fe->initializers())
    for (const auto* r : *fe->initializers()) {
      const std::string name = str(r->name());
      const std::string what = "initializer '" + name + "'";
      if (name.empty()) bad(source, "an initializer has no name");
      DType dt = read_dtype(source, what, r->dtype());
      auto dims = read_dims(source, what, r->dims());
      const uint64_t numel = static_cast<uint64_t>(shape_numel(dims));
      if (numel > (uint64_t{1} << 60) / dtype_size(dt)) bad(source, what + " is impossibly large");
      const uint64_t expected = numel * dtype_size(dt);
      if (r->byte_size() != expected)
        bad(source, what + " records " + std::to_string(r->byte_size()) + " bytes, but " + std::string(dtype_name(dt)) + "[" +
                        shape_to_string(dims) + "] needs " + std::to_string(expected));
      if (r->offset() % kEngineWeightAlignment != 0)
        bad(source, what + " starts at blob offset " + std::to_string(r->offset()) + ", which is not 64-byte aligned");
      if (r->offset() > h.weights_size || expected > h.weights_size - r->offset())
        bad(source, what + " [" + std::to_string(r->offset()) + ", +" + std::to_string(expected) +
                        ") lies outside the weight blob (" + std::to_string(h.weights_size) + " bytes)");
      Tensor t = Tensor::view(dt, dims, owner, blob + r->offset());
      g.types[name] = TensorType{dt, shape_from_dims(dims)};
      if (!g.initializers.emplace(name, std::move(t)).second) bad(source, what + " is defined twice");
    }

  // Nodes: every op must be known to the registry at the opset it was built against.
  const OpRegistry& registry = OpRegistry::global();
  if (fe->nodes())
    for (unsigned i = 0; i < fe->nodes()->size(); ++i) {
      const fb::NodeRec* nr = fe->nodes()->Get(i);
      Node n;
      n.name = str(nr->name());
      n.domain = canonical_domain(str(nr->domain()));
      n.op_type = str(nr->op_type());
      n.inputs = strs(nr->inputs());
      n.outputs = strs(nr->outputs());
      info.node_tactics.push_back(str(nr->tactic()));
      const std::string label = n.op_type.empty() ? "node #" + std::to_string(i) : n.describe();
      if (n.op_type.empty()) bad(source, label + " has no op_type");
      const std::string op = (n.domain.empty() ? "" : n.domain + "::") + n.op_type;
      auto it = m.opsets.find(n.domain);
      if (it == m.opsets.end())
        bad(source, label + ": domain '" + n.domain + "' is not among the engine's opsets");
      if (nr->opset() != it->second)
        bad(source, label + " was built against opset " + std::to_string(nr->opset()) + " but the engine imports " +
                        (n.domain.empty() ? "ai.onnx" : n.domain) + " " + std::to_string(it->second));
      if (!registry.find(n.domain, n.op_type, nr->opset()))
        throw Error(ErrorCode::kUnsupported, source + ": " + label + ": op " + op + " at opset " + std::to_string(nr->opset()) +
                                                 (registry.versions(n.domain, n.op_type).empty() ? " is unknown to this Kiln"
                                                                                                 : " is not supported by this Kiln"));
      if (nr->attrs())
        for (const auto* a : *nr->attrs()) {
          const std::string an = str(a->name());
          if (an.empty()) bad(source, label + " has an attribute with no name");
          if (!n.attrs.emplace(an, read_attr(source, label, a)).second) bad(source, label + " has attribute '" + an + "' twice");
        }
      g.nodes.push_back(std::move(n));
    }

  // Structure: SSA, topological order, every output produced.
  std::unordered_set<std::string> produced(g.inputs.begin(), g.inputs.end());
  for (const auto& [name, t] : g.initializers) produced.insert(name);
  for (const Node& n : g.nodes) {
    for (const auto& in : n.inputs)
      if (!in.empty() && !produced.count(in)) bad(source, n.describe() + " uses '" + in + "', which no earlier node, input or initializer defines");
    for (const auto& o : n.outputs) {
      if (o.empty()) continue;
      if (!produced.insert(o).second) bad(source, n.describe() + " redefines value '" + o + "'");
    }
  }
  for (const auto& o : g.outputs)
    if (!produced.count(o)) bad(source, "graph output '" + o + "' is not produced by any node, input or initializer");
  require_supported(m);
  return e;
}

}  // namespace

namespace {

TargetFingerprint probe_host() {
  TargetFingerprint f;
  f.cpu_vendor = cpu_vendor();
  f.cpu_model = cpu_brand();
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) f.isa_features.push_back("avx2");
  if (__builtin_cpu_supports("fma")) f.isa_features.push_back("fma");
  if (__builtin_cpu_supports("avx512f")) f.isa_features.push_back("avx512f");
  unsigned a, b, c, d;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    if (c & (1u << 11)) f.isa_features.push_back("avx512_vnni");
    if (d & (1u << 24)) f.isa_features.push_back("amx");  // AMX-TILE
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5))) {
    auto pos = std::find(f.isa_features.begin(), f.isa_features.end(), "amx");
    f.isa_features.insert(pos, "avx512_bf16");
  }
  f.backend = "reference";
  return f;
}

}  // namespace

TargetFingerprint host_fingerprint() {
  static const TargetFingerprint host = probe_host();  // cpuid can trap to the hypervisor: probe once
  return host;
}

std::vector<std::string> missing_isa_features(const TargetFingerprint& engine, const TargetFingerprint& host) {
  std::vector<std::string> missing;
  for (const auto& r : engine.required_isa)
    if (std::find(host.isa_features.begin(), host.isa_features.end(), r) == host.isa_features.end()) missing.push_back(r);
  return missing;
}

std::vector<uint8_t> serialize_engine(const Model& optimized, const EngineInfo& info) {
  Prepared p;
  prepare(optimized, info, p);
  std::vector<uint8_t> out(p.header, p.header + kEngineHeaderSize);
  out.reserve(p.weights_offset + p.w.size);
  emit_body(optimized.graph, p.fbuf, p.w, p.weights_offset,
            [&](const uint8_t* d, uint64_t n) { out.insert(out.end(), d, d + n); });
  return out;
}

void save_engine(const Model& optimized, const EngineInfo& info, const fs::path& path) {
  Prepared p;
  prepare(optimized, info, p);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(ErrorCode::kIo, path.string() + ": cannot open for writing");
  out.write(reinterpret_cast<const char*>(p.header), kEngineHeaderSize);
  emit_body(optimized.graph, p.fbuf, p.w, p.weights_offset,
            [&](const uint8_t* d, uint64_t n) { out.write(reinterpret_cast<const char*>(d), static_cast<std::streamsize>(n)); });
  out.flush();
  if (!out) throw Error(ErrorCode::kIo, path.string() + ": write failed");
}

LoadedEngine load_engine(const fs::path& path, const EngineLoadOptions& options) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw Error(ErrorCode::kIo, path.string() + ": is a directory, expected an engine file");
  auto file = MappedFile::open(path);
  return decode(file->data(), file->size(), file, path.string(), options);
}

LoadedEngine load_engine_from_memory(std::span<const uint8_t> bytes, const EngineLoadOptions& options, const std::string& source) {
  Tensor buffer(DType::kU8, {static_cast<int64_t>(bytes.size())});  // 64-byte aligned storage
  if (!bytes.empty()) std::memcpy(buffer.mutable_raw(), bytes.data(), bytes.size());
  auto owner = std::make_shared<Tensor>(buffer);
  return decode(static_cast<const uint8_t*>(owner->raw()), bytes.size(), owner, source, options);
}

bool is_engine_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  std::ifstream in(path, std::ios::binary);
  char magic[8] = {};
  if (!in.read(magic, 8)) return false;
  return std::memcmp(magic, kEngineMagic, 8) == 0;
}

}  // namespace kiln
