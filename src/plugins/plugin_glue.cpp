// Registers plugin creators with Kiln's tables (op schema, reference kernel, CPU tactic) and keeps
// engines naming the plugins they need (see plugins.h).
#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "backends/cpu/cpu_kernel.h"
#include "backends/reference/kernel.h"
#include "engine/engine_file.h"
#include "passes/pass.h"
#include "plugins/plugins.h"

namespace kiln::plugins {

namespace {

std::mutex& table_mutex() {
  static std::mutex mu;
  return mu;
}
// Entries never move or die: schemas, kernels and tactics point at them for the process's life.
std::map<std::pair<std::string, std::string>, std::unique_ptr<PluginEntry>>& table() {
  static auto* t = new std::map<std::pair<std::string, std::string>, std::unique_ptr<PluginEntry>>;
  return *t;
}

bool valid_identifier(const std::string& s, bool allow_dots) {
  if (s.empty()) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || (allow_dots && (c == '.' || c == '-'))))
      return false;
  return true;
}

AttrKind attr_kind_of(AttrValue::Type t) {
  switch (t) {
    case AttrValue::Type::kINT: return AttrKind::kInt;
    case AttrValue::Type::kFLOAT: return AttrKind::kFloat;
    case AttrValue::Type::kSTRING: return AttrKind::kString;
    case AttrValue::Type::kINTS: return AttrKind::kInts;
    case AttrValue::Type::kFLOATS: return AttrKind::kFloats;
  }
  return AttrKind::kInt;
}

// A declared value of another kind than the field: ints are widened to floats where floats are
// expected, as producers write `alpha=1` for a float attribute.
std::optional<AttrValue> coerce(const AttrValue& v, AttrValue::Type want) {
  if (v.type() == want) return v;
  if (want == AttrValue::Type::kFLOAT && v.type() == AttrValue::Type::kINT) return AttrValue(v.asFloat());
  if (want == AttrValue::Type::kFLOATS && v.type() == AttrValue::Type::kINTS) {
    std::vector<float> f;
    for (int64_t i : v.asInts()) f.push_back(static_cast<float>(i));
    return AttrValue::floats(std::move(f));
  }
  return std::nullopt;
}

// The node's attributes as the plugin sees them: declared fields completed with their defaults.
Attributes node_attributes(const Node& node, const PluginEntry& p) {
  Attributes out;
  for (const auto& [name, a] : node.attrs)
    if (auto v = to_public(a)) out.emplace(name, *v);
  for (const PluginField& f : p.fields) {
    auto it = out.find(f.name);
    if (it == out.end()) {
      if (f.defaultValue) out.emplace(f.name, *f.defaultValue);
    } else if (auto c = coerce(it->second, f.type)) {
      it->second = *c;
    }
  }
  return out;
}

std::string plugin_failure(const PluginEntry& p, const std::string& what) {
  return "plugin " + p.tactic + (p.library.empty() ? std::string() : " (" + p.library + ")") + ": " + what;
}

// Calls getOutputDescs; returns false with `error` set when the plugin rejects the inputs.
bool output_descs(const PluginEntry& p, const std::vector<PluginTensorDesc>& in, const Attributes& attrs,
                  std::vector<PluginTensorDesc>& out, std::string& error) {
  out.assign(static_cast<size_t>(p.nb_outputs), PluginTensorDesc{});
  bool ok = false;
  try {
    ok = p.creator->getOutputDescs(in, attrs, out, error);
  } catch (const std::exception& e) {
    ok = false;
    error = std::string("getOutputDescs threw: ") + e.what();
  }
  if (ok && out.size() != static_cast<size_t>(p.nb_outputs)) {
    error = "getOutputDescs resized its outputs to " + std::to_string(out.size()) + ", expected " +
            std::to_string(p.nb_outputs);
    ok = false;
  }
  for (size_t i = 0; ok && i < out.size(); ++i)
    if (out[i].dims.nbDims < 0 || out[i].dims.nbDims > Dims::MAX_DIMS) {
      error = "getOutputDescs gave output " + std::to_string(i) + " rank " + std::to_string(out[i].dims.nbDims);
      ok = false;
    }
  if (!ok && error.empty()) error = "getOutputDescs rejected the inputs";
  return ok;
}

PluginTensorDesc desc_of(DType dt, const std::vector<int64_t>& shape) {
  return PluginTensorDesc{to_public(dt), to_dims(shape)};
}

std::unique_ptr<IPluginKernel> make_kernel(const PluginEntry& p, const Node& node, const Attributes& attrs,
                                           const std::vector<PluginTensorDesc>& in,
                                           const std::vector<PluginTensorDesc>& out) {
  std::unique_ptr<IPluginKernel> k;
  try {
    k = p.creator->createPlugin(attrs, in, out);
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kInvalidArgument, node.describe() + ": " + plugin_failure(p, std::string("createPlugin failed: ") + e.what()));
  }
  if (!k) throw Error(ErrorCode::kInvalidArgument, node.describe() + ": " + plugin_failure(p, "createPlugin returned nullptr"));
  return k;
}

size_t align64(size_t n) { return (n + 63) / 64 * 64; }

// The reference kernel of every plugin op: looks the plugin up by the node's op, runs it once.
void plugin_reference_kernel(reference::KernelContext& ctx) {
  const PluginEntry* p = find_plugin(ctx.node().domain, ctx.node().op_type);
  if (!p) ctx.unsupported("no plugin provides this op any more");
  std::vector<PluginTensorDesc> in(ctx.num_inputs());
  std::vector<const void*> in_ptrs(ctx.num_inputs(), nullptr);
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    if (!ctx.has_input(i)) {
      in[i].dims = Dims::invalid();
      continue;
    }
    in[i] = desc_of(ctx.input(i).dtype(), ctx.input(i).shape());
    in_ptrs[i] = ctx.input(i).raw();
  }
  const Attributes attrs = node_attributes(ctx.node(), *p);
  std::vector<PluginTensorDesc> out;
  std::string error;
  if (!output_descs(*p, in, attrs, out, error)) ctx.fail(plugin_failure(*p, error));
  std::vector<Tensor> discarded;  // outputs the node omits still need a buffer to be written to
  discarded.reserve(out.size());
  std::vector<void*> out_ptrs(out.size(), nullptr);
  for (size_t i = 0; i < out.size(); ++i) {
    const DType dt = to_internal(out[i].type);
    const std::vector<int64_t> shape = from_dims(out[i].dims);
    if (ctx.has_output(i)) {
      out_ptrs[i] = ctx.allocate_output(i, dt, shape).mutable_raw();
    } else {
      discarded.emplace_back(dt, shape);
      out_ptrs[i] = discarded.back().mutable_raw();
    }
  }
  auto k = make_kernel(*p, ctx.node(), attrs, in, out);
  Tensor workspace(DType::kU8, {static_cast<int64_t>(k->getWorkspaceSize()) + 64});
  const int32_t rc = k->enqueue(in_ptrs.data(), out_ptrs.data(), workspace.mutable_raw());
  if (rc != 0) ctx.fail(plugin_failure(*p, "enqueue returned " + std::to_string(rc)));
}

class PluginCpuKernel final : public cpu::CpuKernel {
 public:
  PluginCpuKernel(const PluginEntry& p, std::string node, std::unique_ptr<IPluginKernel> k,
                  std::vector<size_t> discarded_offsets, size_t workspace)
      : p_(p), node_(std::move(node)), k_(std::move(k)), discarded_(std::move(discarded_offsets)),
        workspace_(workspace) {}

  void run(const cpu::KernelArgs& args) override {
    // The scratch holds the plugin's workspace, then buffers for outputs the node omits.
    std::vector<void*> outs(discarded_.size());
    char* scratch = static_cast<char*>(args.scratch);
    for (size_t i = 0; i < outs.size(); ++i)
      outs[i] = args.outputs[i] ? args.outputs[i] : scratch + discarded_[i];
    const int32_t rc = k_->enqueue(args.inputs, outs.data(), args.scratch);
    if (rc != 0) throw Error(ErrorCode::kInternal, node_ + ": " + plugin_failure(p_, "enqueue returned " + std::to_string(rc)));
  }
  size_t scratch_bytes() const override { return workspace_; }
  std::string describe() const override {
    return "plugin " + p_.op_label() + " v" + std::to_string(p_.version) +
           (p_.library.empty() ? std::string() : " (" + p_.library + ")");
  }

 private:
  const PluginEntry& p_;
  std::string node_;
  std::unique_ptr<IPluginKernel> k_;
  std::vector<size_t> discarded_;
  size_t workspace_;
};

// The plugin as a CPU tactic: plain layouts, dense buffers, supported wherever the plugin's
// output types agree with what inference planned.
class PluginTactic final : public cpu::Tactic {
 public:
  explicit PluginTactic(const PluginEntry& p) : p_(p) {}
  std::string name() const override { return p_.tactic; }
  int version() const override { return p_.version; }

  bool supports(const cpu::KernelConfig& cfg) const override {
    try {
      std::vector<PluginTensorDesc> in;
      if (!inputs(cfg, in)) return false;
      std::vector<PluginTensorDesc> out;
      std::string error;
      if (!output_descs(p_, in, node_attributes(*cfg.node, p_), out, error)) return false;
      for (size_t i = 0; i < cfg.outputs.size(); ++i) {
        if (!cfg.outputs[i].present()) continue;
        if (i >= out.size() || to_internal(out[i].type) != cfg.outputs[i].dtype ||
            from_dims(out[i].dims) != cfg.outputs[i].shape)
          return false;
      }
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }

  std::unique_ptr<cpu::CpuKernel> create(const cpu::KernelConfig& cfg) const override {
    std::vector<PluginTensorDesc> in;
    if (!inputs(cfg, in))
      throw Error(ErrorCode::kUnsupported, cfg.node->describe() + ": " + plugin_failure(p_, "cannot take these input types"));
    const Attributes attrs = node_attributes(*cfg.node, p_);
    std::vector<PluginTensorDesc> out;
    std::string error;
    if (!output_descs(p_, in, attrs, out, error))
      throw Error(ErrorCode::kInvalidModel, cfg.node->describe() + ": " + plugin_failure(p_, error));
    auto k = make_kernel(p_, *cfg.node, attrs, in, out);
    size_t scratch = align64(k->getWorkspaceSize());
    std::vector<size_t> discarded(out.size(), 0);
    for (size_t i = 0; i < out.size(); ++i) {
      if (i < cfg.outputs.size() && cfg.outputs[i].present()) continue;
      discarded[i] = scratch;
      scratch += align64(static_cast<size_t>(out[i].dims.volume()) * getDataTypeSize(out[i].type));
    }
    return std::make_unique<PluginCpuKernel>(p_, cfg.node->describe(), std::move(k), std::move(discarded), scratch);
  }

 private:
  static bool inputs(const cpu::KernelConfig& cfg, std::vector<PluginTensorDesc>& in) {
    for (const auto& v : cfg.inputs) {
      if (!v.present()) {
        in.push_back(PluginTensorDesc{DataType::kFLOAT, Dims::invalid()});
        continue;
      }
      if (v.shape.size() > static_cast<size_t>(Dims::MAX_DIMS)) return false;
      in.push_back(desc_of(v.dtype, v.shape));
    }
    return true;
  }
  const PluginEntry& p_;
};

// Type inference through the plugin: inputs of unknown rank leave the outputs as declared.
InferFn make_infer(const PluginEntry& p) {
  return [&p](InferContext& ctx) {
    std::vector<PluginTensorDesc> in(ctx.num_inputs());
    for (size_t i = 0; i < ctx.num_inputs(); ++i) {
      if (!ctx.has_input(i)) {
        in[i].dims = Dims::invalid();
        continue;
      }
      const TensorType& t = ctx.input_type(i);
      if (t.dtype == DType::kUndefined || !t.shape) return;
      if (t.shape->size() > static_cast<size_t>(Dims::MAX_DIMS))
        ctx.unsupported("input " + std::to_string(i) + " has rank " + std::to_string(t.shape->size()) +
                        "; plugins take at most " + std::to_string(Dims::MAX_DIMS));
      try {
        in[i].type = to_public(t.dtype);
      } catch (const Error& e) {
        ctx.unsupported(plugin_failure(p, e.what()));
      }
      in[i].dims.nbDims = static_cast<int32_t>(t.shape->size());
      for (size_t d = 0; d < t.shape->size(); ++d) in[i].dims.d[d] = (*t.shape)[d].known() ? (*t.shape)[d].value : -1;
    }
    std::vector<PluginTensorDesc> out;
    std::string error;
    if (!output_descs(p, in, node_attributes(ctx.node(), p), out, error)) ctx.fail(plugin_failure(p, error));
    for (size_t i = 0; i < out.size() && i < ctx.num_outputs(); ++i) {
      if (!ctx.has_output(i)) continue;
      Shape s;
      for (int32_t d = 0; d < out[i].dims.nbDims; ++d) s.push_back(out[i].dims.d[d] >= 0 ? Dim(out[i].dims.d[d]) : Dim());
      DType dt = DType::kUndefined;
      try {
        dt = to_internal(out[i].type);
      } catch (const Error& e) {
        ctx.fail(plugin_failure(p, e.what()));
      }
      ctx.set_output(i, dt, std::move(s));
    }
  };
}

}  // namespace

std::string tactic_name(const std::string& domain, const std::string& name, int version) {
  return "plugin:" + (domain.empty() ? std::string("ai.onnx") : domain) + "::" + name + ":" + std::to_string(version);
}

bool is_plugin_tactic(const std::string& tactic) { return tactic.starts_with("plugin:"); }

PluginEntry describe_creator(std::shared_ptr<IPluginCreator> creator, const std::string& library) {
  if (!creator) throw Error(ErrorCode::kInvalidArgument, "registerCreator got a null creator");
  PluginEntry e;
  const char* name = creator->getPluginName();
  const char* ns = creator->getPluginNamespace();
  e.name = name ? name : "";
  e.domain = canonical_domain(ns ? ns : "");
  e.version = creator->getPluginVersion();
  e.nb_inputs = creator->getNbInputs();
  e.nb_outputs = creator->getNbOutputs();
  const std::string who = "plugin '" + (e.domain.empty() ? std::string() : e.domain + "::") + e.name + "'";
  if (!valid_identifier(e.name, false))
    throw Error(ErrorCode::kInvalidArgument, who + ": getPluginName() must be a non-empty op name of letters, digits and '_'");
  if (!e.domain.empty() && !valid_identifier(e.domain, true))
    throw Error(ErrorCode::kInvalidArgument, who + ": getPluginNamespace() must be a domain of letters, digits, '_', '.' and '-'");
  if (e.version < 1) throw Error(ErrorCode::kInvalidArgument, who + ": getPluginVersion() must be >= 1");
  if (e.nb_outputs < 1 || e.nb_outputs > 64)
    throw Error(ErrorCode::kInvalidArgument, who + ": getNbOutputs() must be between 1 and 64");
  if (e.nb_inputs < -1 || e.nb_inputs > 1024)
    throw Error(ErrorCode::kInvalidArgument, who + ": getNbInputs() must be -1 (any) or between 0 and 1024");
  e.fields = creator->getFields();
  std::set<std::string> seen;
  for (const PluginField& f : e.fields) {
    if (f.name.empty() || !seen.insert(f.name).second)
      throw Error(ErrorCode::kInvalidArgument, who + ": getFields() has an empty or repeated name '" + f.name + "'");
    if (f.defaultValue && !coerce(*f.defaultValue, f.type))
      throw Error(ErrorCode::kInvalidArgument, who + ": the default of field '" + f.name + "' has another type");
  }
  e.creator = std::move(creator);
  e.library = library;
  e.tactic = tactic_name(e.domain, e.name, e.version);
  return e;
}

void check_not_registered(const PluginEntry& e) {
  std::lock_guard lock(table_mutex());
  auto it = table().find({e.domain, e.name});
  if (it != table().end())
    throw Error(ErrorCode::kInvalidArgument,
                "plugin " + e.tactic + " is already registered (as " + it->second->tactic +
                    (it->second->library.empty() ? std::string() : " from " + it->second->library) + ")");
}

void register_plugin(PluginEntry entry) {
  check_not_registered(entry);
  std::lock_guard lock(table_mutex());
  auto owned = std::make_unique<PluginEntry>(std::move(entry));
  PluginEntry& p = *owned;
  p.replaces_builtin = !OpRegistry::global().versions(p.domain, p.name).empty();
  if (!p.replaces_builtin) {
    OpSchema s;
    s.domain = p.domain;
    s.name = p.name;
    s.since_version = p.version;
    s.min_inputs = p.nb_inputs < 0 ? 0 : p.nb_inputs;
    s.max_inputs = p.nb_inputs < 0 ? OpSchema::kVariadic : p.nb_inputs;
    s.min_outputs = 1;  // trailing outputs may be omitted, as for ONNX ops
    s.max_outputs = p.nb_outputs;
    for (const PluginField& f : p.fields) {
      AttrSpec a{f.name, attr_kind_of(f.type), std::nullopt, f.required};
      if (f.defaultValue) a.default_value = to_internal(*coerce(*f.defaultValue, f.type));
      s.attrs.push_back(std::move(a));
    }
    s.infer = make_infer(p);
    s.doc = "plugin op" + (p.library.empty() ? std::string() : " from " + p.library);
    OpRegistry::mutable_global().add(std::move(s));
    if (!reference::KernelRegistry::global().find(p.domain, p.name))
      reference::KernelRegistry::mutable_global().add(p.domain, p.name, &plugin_reference_kernel);
  }
  // A replacement keeps the built-in schema and reference kernel (the ONNX definition stays the
  // oracle); its tactic goes first and pin_plugin_tactics() makes it the one engines use.
  cpu::TacticRegistry::global().add_first(p.domain, p.name, std::make_shared<PluginTactic>(p));
  table().emplace(std::make_pair(p.domain, p.name), std::move(owned));
}

const PluginEntry* find_plugin(const std::string& domain, const std::string& op) {
  std::lock_guard lock(table_mutex());
  auto it = table().find({canonical_domain(domain), op});
  return it == table().end() ? nullptr : it->second.get();
}

std::vector<const PluginEntry*> all_plugins() {
  std::lock_guard lock(table_mutex());
  std::vector<const PluginEntry*> out;
  for (const auto& [key, e] : table()) out.push_back(e.get());
  return out;
}

std::vector<std::string> adapt_build_config(const Model& model, BuildConfig& config) {
  std::vector<std::string> notes;
  std::set<std::string> replaced;
  for (const Node& n : model.graph.nodes)
    if (const PluginEntry* p = find_plugin(n.domain, n.op_type); p && p->replaces_builtin) replaced.insert(p->tactic);
  if (replaced.empty() || config.opt_level == 0) return notes;
  // Fusion passes match built-in op types; a fused node would no longer run the plugin.
  static const std::set<std::string> keep = {"constant-folding", "dead-node-elimination", "shape-subgraph-folding"};
  std::string off;
  for (const auto& name : PassManager::standard().pass_names())
    if (!keep.count(name) && config.disabled_passes.insert(name).second) off += (off.empty() ? "" : ", ") + name;
  if (!off.empty()) {
    std::string list;
    for (const auto& t : replaced) list += (list.empty() ? "" : ", ") + t;
    notes.push_back("the network uses built-in ops replaced by plugins (" + list +
                    "): passes that could fuse them away are off: " + off);
  }
  return notes;
}

void pin_plugin_tactics(BuildResult& result) {
  const Graph& g = result.model.graph;
  auto& tactics = result.info.node_tactics;
  for (size_t i = 0; i < g.nodes.size() && i < tactics.size(); ++i) {
    if (tactics[i].empty()) continue;  // folded away at these shapes
    const Node& n = g.nodes[i];
    const PluginEntry* p = find_plugin(n.domain, n.op_type);
    if (!p || tactics[i] == p->tactic) continue;
    // A replacement that refuses the node's types (a float-only Relu on ints) leaves the node to
    // the built-in kernels, and the engine free of the plugin.
    if (p->replaces_builtin) {
      std::vector<PluginTensorDesc> in;
      bool known = true;
      for (const auto& name : n.inputs) {
        if (name.empty()) {
          in.push_back(PluginTensorDesc{DataType::kFLOAT, Dims::invalid()});
          continue;
        }
        const TensorType* t = g.type_of(name);
        if (!t || !t->shape || t->shape->size() > static_cast<size_t>(Dims::MAX_DIMS)) {
          known = false;
          break;
        }
        PluginTensorDesc d;
        try {
          d.type = to_public(t->dtype);
        } catch (const Error&) {
          known = false;
          break;
        }
        d.dims.nbDims = static_cast<int32_t>(t->shape->size());
        for (size_t k = 0; k < t->shape->size(); ++k) d.dims.d[k] = (*t->shape)[k].known() ? (*t->shape)[k].value : -1;
        in.push_back(d);
      }
      std::vector<PluginTensorDesc> out;
      std::string error;
      if (!known || !output_descs(*p, in, node_attributes(n, *p), out, error)) continue;
    }
    tactics[i] = p->tactic;
  }
}

std::vector<std::string> missing_plugin_tactics(std::span<const uint8_t> bytes) {
  std::vector<std::string> out;
  if (bytes.size() < kEngineHeaderSize || std::memcmp(bytes.data(), kEngineMagic, sizeof(kEngineMagic)) != 0) return out;
  auto u64 = [&](size_t at) {
    uint64_t v = 0;
    for (int k = 7; k >= 0; --k) v = (v << 8) | bytes[at + static_cast<size_t>(k)];
    return v;
  };
  const uint64_t off = u64(16), size = u64(24);
  if (off >= bytes.size()) return out;
  const size_t end = static_cast<size_t>(std::min<uint64_t>(bytes.size(), off + std::min<uint64_t>(size, bytes.size())));
  // FlatBuffers strings are a u32 length, the bytes, then a NUL: find those starting "plugin:".
  static constexpr char kPrefix[] = "plugin:";
  std::set<std::string> seen;
  for (size_t i = static_cast<size_t>(off) + 4; i + sizeof(kPrefix) - 1 <= end; ++i) {
    if (std::memcmp(bytes.data() + i, kPrefix, sizeof(kPrefix) - 1) != 0) continue;
    uint32_t len = 0;
    for (int k = 3; k >= 0; --k) len = (len << 8) | bytes[i - 4 + static_cast<size_t>(k)];
    if (len > 512 || i + len >= end || bytes[i + len] != 0) continue;
    std::string t(reinterpret_cast<const char*>(bytes.data() + i), len);
    if (!seen.insert(t).second) continue;
    // "plugin:<domain>::<name>:<version>"
    const size_t sep = t.find("::", 7), colon = t.rfind(':');
    bool registered = false;
    if (sep != std::string::npos && colon > sep + 1) {
      const std::string domain = canonical_domain(t.substr(7, sep - 7));
      const std::string name = t.substr(sep + 2, colon - sep - 2);
      const PluginEntry* p = find_plugin(domain, name);
      registered = p && p->tactic == t;
    }
    if (!registered) out.push_back(t);
  }
  return out;
}

std::string missing_plugins_advice(const std::vector<std::string>& tactics) {
  if (tactics.empty()) return {};
  std::string list;
  for (const auto& t : tactics) list += (list.empty() ? "'" : ", '") + t + "'";
  return "the engine was built with plugin" + std::string(tactics.size() > 1 ? "s " : " ") + list +
         ", not loaded in this process: load the plugin library that provides " +
         (tactics.size() > 1 ? "them" : "it") +
         " first (kiln::loadPluginLibrary(\"libX.so\"), or kiln --plugin libX.so)";
}

// ---- Conversions

DataType to_public(DType dt) {
  switch (dt) {
    case DType::kF32: return DataType::kFLOAT;
    case DType::kF16: return DataType::kHALF;
    case DType::kBF16: return DataType::kBF16;
    case DType::kF64: return DataType::kDOUBLE;
    case DType::kI8: return DataType::kINT8;
    case DType::kU8: return DataType::kUINT8;
    case DType::kI32: return DataType::kINT32;
    case DType::kI64: return DataType::kINT64;
    case DType::kBool: return DataType::kBOOL;
    default: break;
  }
  throw Error(ErrorCode::kUnsupported, "dtype " + std::string(dtype_name(dt)) + " has no kiln::DataType");
}

DType to_internal(DataType dt) {
  switch (dt) {
    case DataType::kFLOAT: return DType::kF32;
    case DataType::kHALF: return DType::kF16;
    case DataType::kBF16: return DType::kBF16;
    case DataType::kDOUBLE: return DType::kF64;
    case DataType::kINT8: return DType::kI8;
    case DataType::kUINT8: return DType::kU8;
    case DataType::kINT32: return DType::kI32;
    case DataType::kINT64: return DType::kI64;
    case DataType::kBOOL: return DType::kBool;
  }
  throw Error(ErrorCode::kInvalidArgument, "unknown kiln::DataType value " + std::to_string(static_cast<int>(dt)));
}

Dims to_dims(const std::vector<int64_t>& dims) {
  if (dims.size() > static_cast<size_t>(Dims::MAX_DIMS))
    throw Error(ErrorCode::kUnsupported, "shape " + shape_to_string(dims) + " has more than " +
                                             std::to_string(Dims::MAX_DIMS) + " dimensions");
  Dims d;
  d.nbDims = static_cast<int32_t>(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) d.d[i] = dims[i];
  return d;
}

std::vector<int64_t> from_dims(const Dims& dims) {
  if (dims.nbDims < 0 || dims.nbDims > Dims::MAX_DIMS)
    throw Error(ErrorCode::kInvalidArgument, "Dims with nbDims " + std::to_string(dims.nbDims));
  return std::vector<int64_t>(dims.d, dims.d + dims.nbDims);
}

Attribute to_internal(const AttrValue& v) {
  switch (v.type()) {
    case AttrValue::Type::kINT: return Attribute::of_int(v.asInt());
    case AttrValue::Type::kFLOAT: return Attribute::of_float(v.asFloat());
    case AttrValue::Type::kSTRING: return Attribute::of_string(v.asString());
    case AttrValue::Type::kINTS: return Attribute::of_ints(v.asInts());
    case AttrValue::Type::kFLOATS: return Attribute::of_floats(v.asFloats());
  }
  return Attribute{};
}

std::optional<AttrValue> to_public(const Attribute& a) {
  switch (a.kind) {
    case AttrKind::kInt: return AttrValue(a.i);
    case AttrKind::kFloat: return AttrValue(a.f);
    case AttrKind::kString: return AttrValue(a.s);
    case AttrKind::kInts: return AttrValue::ints(a.ints);
    case AttrKind::kFloats: return AttrValue::floats(a.floats);
    default: return std::nullopt;
  }
}

}  // namespace kiln::plugins
