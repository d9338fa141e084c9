// Reference executor.
#include "backends/reference/executor.h"

#include <algorithm>
#include <unordered_map>

namespace kiln::reference {

namespace {
constexpr const char* kInputHelp = " (see docs/troubleshooting.md#input-mismatch)";
}  // namespace

namespace {

std::string prefix(const Model& m) { return m.source_path.empty() ? std::string() : m.source_path + ": "; }

bool shape_compatible(const Shape& declared, const std::vector<int64_t>& actual) {
  if (declared.size() != actual.size()) return false;
  for (size_t i = 0; i < actual.size(); ++i)
    if (declared[i].known() && declared[i].value != actual[i]) return false;
  return true;
}

}  // namespace

std::vector<Tensor> evaluate_node(const Node& node, const OpSchema& schema, int64_t opset,
                                  const std::vector<const Tensor*>& inputs) {
  KernelFn fn = KernelRegistry::global().find(node.domain, node.op_type);
  if (!fn) throw Error(ErrorCode::kUnsupported, node.describe() + ": the reference backend has no kernel for " + node.op_type);
  KernelContext ctx(node, schema, opset, inputs);
  fn(ctx);
  return std::move(ctx.outputs());
}

ConstantEvaluator constant_evaluator() {
  return [](const Node& n, const OpSchema& s, int64_t opset, const std::vector<const Tensor*>& in) {
    return evaluate_node(n, s, opset, in);
  };
}

Executor::Executor(Model model) : model_(std::move(model)) {
  require_supported(model_);
  for (const Node& n : model_.graph.nodes) {
    auto it = model_.opsets.find(n.domain);
    const int64_t opset = it == model_.opsets.end() ? 0 : it->second;
    const OpSchema* schema = OpRegistry::global().find(n.domain, n.op_type, opset);
    KernelFn fn = KernelRegistry::global().find(n.domain, n.op_type);
    if (!fn)
      throw Error(ErrorCode::kUnsupported, prefix(model_) + n.describe() + " (opset " + std::to_string(opset) +
                                               "): the reference backend has no kernel for this op");
    schemas_.push_back(schema);
    kernels_.push_back(fn);
    opsets_.push_back(opset);
  }
  InferOptions options;
  options.evaluator = constant_evaluator();
  infer_types(model_, options);
}

void Executor::validate_inputs(const TensorMap& inputs) const {
  const Graph& g = model_.graph;
  for (const auto& [name, t] : inputs) {
    bool known = std::find(g.inputs.begin(), g.inputs.end(), name) != g.inputs.end();
    if (!known) {
      std::string names;
      for (const auto& in : g.inputs) names += (names.empty() ? "" : ", ") + in;
      throw Error(ErrorCode::kInvalidArgument, prefix(model_) + "'" + name + "' is not an input of the model (inputs: " + names + ")" + kInputHelp);
    }
  }
  std::unordered_map<std::string, int64_t> symbols;
  for (const auto& name : g.inputs) {
    auto it = inputs.find(name);
    const TensorType* declared = g.type_of(name);
    if (it == inputs.end())
      throw Error(ErrorCode::kInvalidArgument, prefix(model_) + "missing input '" + name + "'" +
                                                   (declared ? " of type " + declared->to_string() : std::string()) + kInputHelp);
    const Tensor& t = it->second;
    if (!declared) continue;
    if (declared->dtype != DType::kUndefined && t.dtype() != declared->dtype)
      throw Error(ErrorCode::kInvalidArgument, prefix(model_) + "input '" + name + "' has dtype " +
                                                   std::string(dtype_name(t.dtype())) + ", expected " +
                                                   std::string(dtype_name(declared->dtype)) + kInputHelp);
    if (!declared->shape) continue;
    if (!shape_compatible(*declared->shape, t.shape()))
      throw Error(ErrorCode::kInvalidArgument, prefix(model_) + "input '" + name + "' has shape " +
                                                   shape_to_string(t.shape()) + ", expected " +
                                                   shape_to_string(*declared->shape) + kInputHelp);
    for (size_t i = 0; i < t.rank(); ++i) {
      const Dim& d = (*declared->shape)[i];
      if (d.known() || d.symbol.empty()) continue;
      auto [sit, inserted] = symbols.emplace(d.symbol, t.dim(i));
      if (!inserted && sit->second != t.dim(i))
        throw Error(ErrorCode::kInvalidArgument, prefix(model_) + "input '" + name + "' has " + d.symbol + "=" +
                                                     std::to_string(t.dim(i)) + " but another input has " + d.symbol +
                                                     "=" + std::to_string(sit->second) + kInputHelp);
    }
  }
}

TensorMap Executor::run(const TensorMap& inputs, const RunOptions& options) const {
  validate_inputs(inputs);
  const Graph& g = model_.graph;
  std::unordered_map<std::string, Tensor> env;
  for (const auto& [name, t] : g.initializers) env.emplace(name, t);
  for (const auto& [name, t] : inputs) env[name] = t;

  // Last use of each value, so intermediates are freed as soon as possible.
  std::unordered_map<std::string, size_t> last_use;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (const auto& in : g.nodes[i].inputs) last_use[in] = i;
  std::unordered_map<std::string, bool> is_output;
  for (const auto& o : g.outputs) is_output[o] = true;

  TensorMap kept;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    std::vector<const Tensor*> in;
    for (const auto& name : n.inputs) {
      if (name.empty()) {
        in.push_back(nullptr);
        continue;
      }
      auto it = env.find(name);
      if (it == env.end())
        throw Error(ErrorCode::kInternal, n.describe() + ": input '" + name + "' has not been computed");
      in.push_back(&it->second);
    }
    KernelContext ctx(n, *schemas_[i], opsets_[i], in);
    try {
      kernels_[i](ctx);
    } catch (const Error& e) {
      throw Error(e.code(), prefix(model_) + e.what());
    }
    auto& outs = ctx.outputs();
    for (size_t k = 0; k < n.outputs.size(); ++k) {
      const std::string& name = n.outputs[k];
      if (name.empty()) continue;
      if (k >= outs.size() || !outs[k].defined())
        throw Error(ErrorCode::kInternal, n.describe() + ": the kernel did not produce output '" + name + "'");
      if (options.check_inferred_types) {
        const TensorType* t = g.type_of(name);
        if (t && ((t->dtype != DType::kUndefined && t->dtype != outs[k].dtype()) ||
                  (t->shape && !shape_compatible(*t->shape, outs[k].shape()))))
          throw Error(ErrorCode::kInternal, prefix(model_) + n.describe() + ": output '" + name + "' is " +
                                                std::string(dtype_name(outs[k].dtype())) + "[" +
                                                shape_to_string(outs[k].shape()) + "] but type inference said " +
                                                t->to_string());
      }
      if (options.keep_intermediates) kept[name] = outs[k];
      env[name] = std::move(outs[k]);
    }
    if (!options.keep_intermediates)
      for (const auto& name : n.inputs) {
        if (name.empty() || is_output.count(name) || g.is_initializer(name)) continue;
        auto lu = last_use.find(name);
        if (lu != last_use.end() && lu->second == i) env.erase(name);
      }
  }
  TensorMap result;
  for (const auto& o : g.outputs) {
    auto it = env.find(o);
    if (it == env.end()) throw Error(ErrorCode::kInternal, "graph output '" + o + "' was not computed");
    result[o] = it->second;
  }
  if (options.keep_intermediates)
    for (auto& [k, v] : kept) result.emplace(k, std::move(v));
  return result;
}

}  // namespace kiln::reference
