// check_model, infer_types, verify_graph and dump_model.
#include "ops/model_check.h"

#include <algorithm>
#include <sstream>
#include <unordered_set>

namespace kiln {

std::string ModelIssue::to_string() const {
  std::string s = op;
  if (!node.empty()) s += " node '" + node + "'";
  s += " (opset " + std::to_string(opset) + "): " + reason;
  return s;
}

namespace {

int64_t opset_for(const Model& model, const std::string& domain) {
  auto it = model.opsets.find(canonical_domain(domain));
  return it == model.opsets.end() ? -1 : it->second;
}

bool attr_kind_compatible(AttrKind declared, AttrKind actual) {
  if (declared == actual) return true;
  // Producers sometimes write an empty list where a scalar kind is expected, or vice versa.
  return false;
}

}  // namespace

std::vector<ModelIssue> check_model(const Model& model, const OpRegistry& registry) {
  std::vector<ModelIssue> issues;
  const int64_t default_opset = model.default_opset();
  if (default_opset > kMaxSupportedOpset)
    issues.push_back({"", "model", default_opset,
                      "ai.onnx opset " + std::to_string(default_opset) + " is newer than Kiln supports (at most " +
                          std::to_string(kMaxSupportedOpset) + ")",
                      ErrorCode::kUnsupported});
  for (const Node& n : model.graph.nodes) {
    const std::string op = n.domain.empty() ? n.op_type : n.domain + "::" + n.op_type;
    const int64_t opset = opset_for(model, n.domain);
    if (opset < 0) {
      issues.push_back({n.name, op, 0, "the model does not import an opset for domain '" + n.domain + "'",
                        ErrorCode::kInvalidModel});
      continue;
    }
    const OpSchema* schema = registry.find(n.domain, n.op_type, opset);
    if (!schema) {
      auto versions = registry.versions(n.domain, n.op_type);
      if (versions.empty()) {
        issues.push_back({n.name, op, opset,
                          "unknown op: Kiln has no implementation of " + op +
                              " at any opset; a plugin library can provide it (see docs/troubleshooting.md#unknown-op)",
                          ErrorCode::kUnsupported});
      } else {
        std::string ranges;
        for (const auto* v : versions) {
          if (!ranges.empty()) ranges += ", ";
          ranges += std::to_string(v->since_version) + "-" +
                    (v->until_version >= 1000 ? std::string("") : std::to_string(v->until_version));
        }
        issues.push_back({n.name, op, opset,
                          "unsupported opset " + std::to_string(opset) + " for " + op + " (Kiln supports opsets " + ranges +
                              "; see docs/troubleshooting.md#unsupported-opset)",
                          ErrorCode::kUnsupported});
      }
      continue;
    }
    const int n_in = static_cast<int>(n.inputs.size());
    const int n_out = static_cast<int>(n.outputs.size());
    if (n_in < schema->min_inputs || n_in > schema->max_inputs) {
      issues.push_back({n.name, op, opset,
                        "has " + std::to_string(n_in) + " inputs, expected " + std::to_string(schema->min_inputs) +
                            (schema->max_inputs == schema->min_inputs
                                 ? std::string()
                                 : " to " + (schema->max_inputs >= OpSchema::kVariadic ? std::string("any")
                                                                                       : std::to_string(schema->max_inputs))),
                        ErrorCode::kInvalidModel});
      continue;
    }
    for (int i = 0; i < std::min(n_in, schema->min_inputs); ++i)
      if (n.inputs[i].empty() && !(schema->max_inputs >= OpSchema::kVariadic)) {
        issues.push_back({n.name, op, opset, "required input " + std::to_string(i) + " is empty", ErrorCode::kInvalidModel});
        break;
      }
    if (n_out < schema->min_outputs || n_out > schema->max_outputs) {
      issues.push_back({n.name, op, opset,
                        "has " + std::to_string(n_out) + " outputs, expected " + std::to_string(schema->min_outputs) +
                            (schema->max_outputs == schema->min_outputs ? std::string() : " or more"),
                        ErrorCode::kInvalidModel});
      continue;
    }
    for (const auto& spec : schema->attrs)
      if (spec.required && !n.attr(spec.name))
        issues.push_back({n.name, op, opset, "missing required attribute '" + spec.name + "'", ErrorCode::kInvalidModel});
    for (const auto& [name, a] : n.attrs) {
      const AttrSpec* spec = schema->find_attr(name);
      if (!spec) continue;  // unknown attributes are ignored, as ONNX Runtime does
      if (!attr_kind_compatible(spec->kind, a.kind))
        issues.push_back({n.name, op, opset,
                          "attribute '" + name + "' has type " + attr_kind_name(a.kind) + ", expected " +
                              attr_kind_name(spec->kind),
                          ErrorCode::kInvalidModel});
    }
  }
  return issues;
}

void require_supported(const Model& model, const OpRegistry& registry) {
  auto issues = check_model(model, registry);
  if (issues.empty()) return;
  std::string msg = model.source_path.empty() ? std::string() : model.source_path + ": ";
  msg += issues.front().to_string();
  if (issues.size() > 1) msg += " (and " + std::to_string(issues.size() - 1) + " more; run 'kiln check' for the full list)";
  throw Error(issues.front().code, msg);
}

namespace {

// Merges an inferred type into a declared one. Returns the merged type or throws.
TensorType merge_types(const Node& node, const std::string& value, const TensorType* declared, const TensorType& inferred) {
  if (!declared || declared->dtype == DType::kUndefined) return inferred;
  auto conflict = [&](const std::string& what) {
    throw Error(ErrorCode::kInvalidModel, node.describe() + ": output '" + value + "' is declared as " +
                                              declared->to_string() + " but the op produces " + inferred.to_string() +
                                              " (" + what + ")");
  };
  if (inferred.dtype != DType::kUndefined && inferred.dtype != declared->dtype) conflict("dtype differs");
  TensorType out;
  out.dtype = inferred.dtype != DType::kUndefined ? inferred.dtype : declared->dtype;
  if (!inferred.shape) {
    out.shape = declared->shape;
    return out;
  }
  if (!declared->shape) {
    out.shape = inferred.shape;
    return out;
  }
  if (declared->shape->size() != inferred.shape->size()) conflict("rank differs");
  Shape merged = *inferred.shape;
  for (size_t i = 0; i < merged.size(); ++i) {
    const Dim& d = (*declared->shape)[i];
    if (merged[i].known()) {
      if (d.known() && d.value != merged[i].value) conflict("dimension " + std::to_string(i) + " differs");
    } else if (d.known() || !d.symbol.empty()) {
      merged[i] = d;
    }
  }
  out.shape = std::move(merged);
  return out;
}

}  // namespace

void infer_types(Model& model, const InferOptions& options, const OpRegistry& registry) {
  Graph& g = model.graph;
  std::unordered_map<std::string, Tensor> constants;  // initializers plus folded values
  for (const auto& [name, t] : g.initializers) {
    constants.emplace(name, t);
    g.types[name] = TensorType{t.dtype(), shape_from_dims(t.shape())};
  }
  for (const Node& n : g.nodes) {
    const int64_t opset = opset_for(model, n.domain);
    const OpSchema* schema = registry.find(n.domain, n.op_type, opset);
    if (!schema) throw Error(ErrorCode::kUnsupported, n.describe() + ": no schema (call require_supported first)");
    std::vector<const TensorType*> in_types;
    std::vector<const Tensor*> in_values;
    bool all_constant = true;
    for (const auto& in : n.inputs) {
      if (in.empty()) {
        in_types.push_back(nullptr);
        in_values.push_back(nullptr);
        continue;
      }
      const TensorType* t = g.type_of(in);
      static const TensorType kUnknown;
      in_types.push_back(t ? t : &kUnknown);
      auto it = constants.find(in);
      in_values.push_back(it == constants.end() ? nullptr : &it->second);
      if (it == constants.end()) all_constant = false;
    }
    InferContext ctx(n, *schema, opset, in_types, in_values);
    if (schema->infer) {
      try {
        schema->infer(ctx);
      } catch (const Error& e) {
        if (e.code() == ErrorCode::kInternal) throw;
        throw Error(e.code(), (model.source_path.empty() ? std::string() : model.source_path + ": ") + e.what());
      }
    }
    for (size_t i = 0; i < n.outputs.size(); ++i) {
      const std::string& out = n.outputs[i];
      if (out.empty() || !ctx.outputs()[i]) continue;
      g.types[out] = merge_types(n, out, g.type_of(out), *ctx.outputs()[i]);
    }
    // Constant propagation keeps shape chains (Shape -> Gather -> Concat -> Reshape) static.
    if (n.op_type == "Shape" && n.domain.empty() && !n.inputs.empty()) {
      const TensorType* t = g.type_of(n.inputs[0]);
      if (t && t->shape && shape_is_static(*t->shape)) {
        constants[n.outputs[0]] = shape_op_value(n, opset, static_dims(*t->shape));
      }
      continue;
    }
    if (options.evaluator && all_constant && !n.op_type.starts_with("Random") && n.op_type != "Multinomial" && n.op_type != "Bernoulli" &&
        n.op_type != "Dropout") {
      bool small = true;
      for (size_t i = 0; i < n.outputs.size(); ++i) {
        const TensorType* t = g.type_of(n.outputs[i]);
        if (!t || !t->shape || !shape_is_static(*t->shape) ||
            shape_numel(static_dims(*t->shape)) > options.max_folded_elements)
          small = false;
      }
      if (small) {
        std::vector<Tensor> outs = options.evaluator(n, *schema, opset, in_values);
        for (size_t i = 0; i < n.outputs.size() && i < outs.size(); ++i)
          if (!n.outputs[i].empty() && outs[i].defined()) constants[n.outputs[i]] = std::move(outs[i]);
      }
    }
  }
}

void verify_graph(const Graph& g) {
  std::unordered_set<std::string> defined(g.inputs.begin(), g.inputs.end());
  for (const auto& [name, t] : g.initializers) {
    if (!defined.insert(name).second)
      throw Error(ErrorCode::kInternal, "verifier: '" + name + "' is both a graph input and an initializer");
    if (!t.defined()) throw Error(ErrorCode::kInternal, "verifier: initializer '" + name + "' has no data");
  }
  for (const Node& n : g.nodes) {
    if (n.op_type.empty()) throw Error(ErrorCode::kInternal, "verifier: a node has no op_type");
    for (const auto& in : n.inputs)
      if (!in.empty() && !defined.count(in))
        throw Error(ErrorCode::kInternal, "verifier: " + n.describe() + " uses '" + in + "' before it is defined");
    for (const auto& out : n.outputs) {
      if (out.empty()) continue;
      if (!defined.insert(out).second)
        throw Error(ErrorCode::kInternal, "verifier: '" + out + "' is defined twice (by " + n.describe() + ")");
    }
  }
  for (const auto& out : g.outputs)
    if (!defined.count(out)) throw Error(ErrorCode::kInternal, "verifier: graph output '" + out + "' is never defined");
  for (const auto& [name, t] : g.types)
    if (t.shape)
      for (const Dim& d : *t.shape)
        if (d.value < -1) throw Error(ErrorCode::kInternal, "verifier: '" + name + "' has a negative dimension");
}

std::string dump_model(const Model& model) {
  const Graph& g = model.graph;
  std::ostringstream os;
  auto type_str = [&](const std::string& v) {
    const TensorType* t = g.type_of(v);
    return t ? t->to_string() : std::string("?");
  };
  os << "model " << (model.source_path.empty() ? "<memory>" : model.source_path) << "\n";
  os << "  opsets:";
  for (const auto& [d, v] : model.opsets) os << ' ' << (d.empty() ? "ai.onnx" : d) << '=' << v;
  os << "\n";
  for (const auto& in : g.inputs) os << "  input  %" << in << ": " << type_str(in) << "\n";
  std::vector<std::string> inits;
  for (const auto& [n, t] : g.initializers) inits.push_back(n);
  std::sort(inits.begin(), inits.end());
  for (const auto& n : inits) os << "  const  %" << n << ": " << type_str(n) << "\n";
  for (const Node& n : g.nodes) {
    os << "  ";
    for (size_t i = 0; i < n.outputs.size(); ++i) os << (i ? ", " : "") << '%' << n.outputs[i];
    os << " = " << (n.domain.empty() ? "" : n.domain + "::") << n.op_type << '(';
    for (size_t i = 0; i < n.inputs.size(); ++i) os << (i ? ", " : "") << (n.inputs[i].empty() ? "<none>" : "%" + n.inputs[i]);
    os << ')';
    if (!n.attrs.empty()) {
      os << " {";
      bool first = true;
      for (const auto& [k, a] : n.attrs) {
        os << (first ? "" : ", ") << k << '=' << a.to_string();
        first = false;
      }
      os << '}';
    }
    os << "  :";
    for (const auto& o : n.outputs) os << ' ' << (o.empty() ? "-" : type_str(o));
    if (!n.name.empty()) os << "  # " << n.name;
    os << "\n";
  }
  for (const auto& out : g.outputs) os << "  output %" << out << ": " << type_str(out) << "\n";
  return os.str();
}

Tensor shape_op_value(const Node& n, int64_t opset, const std::vector<int64_t>& dims) {
  const int64_t rank = static_cast<int64_t>(dims.size());
  int64_t start = 0, end = rank;
  if (opset >= 15) {
    if (const Attribute* a = n.attr("start")) start = a->i;
    if (const Attribute* a = n.attr("end")) end = a->i;
    if (start < 0) start += rank;
    if (end < 0) end += rank;
    start = std::clamp<int64_t>(start, 0, rank);
    end = std::clamp<int64_t>(end, start, rank);
  }
  std::vector<int64_t> v(dims.begin() + start, dims.begin() + end);
  return Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v);
}

}  // namespace kiln
