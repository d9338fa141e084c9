// Constant folding: nodes whose inputs are all initializers (and Constant nodes) are evaluated
// once with ctx.evaluator and replaced by initializers of the same names. Passes cannot include
// backends, so the caller provides the evaluator (reference::constant_evaluator()); without one
// the pass does nothing.
#include <algorithm>
#include <unordered_set>

#include "passes/pass.h"

namespace kiln {
namespace {

// Outputs of folded nodes may grow the model only up to this size: folding must not turn an
// Expand/Tile/ConstantOfShape of a small constant into a huge initializer.
constexpr size_t kMaxFoldedBytes = size_t{64} << 20;

class ConstantFolding : public Pass {
 public:
  std::string_view name() const override { return "constant-folding"; }
  int min_opt_level() const override { return 1; }

  int run(Model& model, PassContext& ctx) override {
    if (!ctx.evaluator) return 0;
    Graph& g = model.graph;
    int folded = 0;
    // One sweep in topological order folds whole chains (each folded output is an initializer
    // for the nodes after it); sweep again until nothing changes, for safety.
    for (bool changed = true; changed;) {
      changed = false;
      std::unordered_map<std::string, int> uses = count_uses(g);
      for (size_t i = 0; i < g.nodes.size();) {
        if (try_fold(model, ctx, i, uses)) {
          ++folded;
          changed = true;
        } else {
          ++i;
        }
      }
    }
    return folded;
  }

 private:
  static bool is_random(const std::string& op) {
    return op.starts_with("Random") || op == "Bernoulli" || op == "Multinomial";
  }

  // Folds node i into initializers; returns false (graph untouched) when a guard fails.
  static bool try_fold(Model& model, PassContext& ctx, size_t i, const std::unordered_map<std::string, int>& uses) {
    Graph& g = model.graph;
    const Node& n = g.nodes[i];
    // Guards: deterministic, side-effect-free ops only; no subgraphs (their bodies may read
    // outer-scope values); the quantization ops stay so that int8 backends still see Q/DQ pairs
    // (and folding DequantizeLinear would store the weights 4x larger).
    if (is_random(n.op_type) || n.op_type == "Dropout" || n.op_type == "QuantizeLinear" ||
        n.op_type == "DequantizeLinear")
      return false;
    for (const auto& [k, a] : n.attrs)
      if (a.kind == AttrKind::kGraph || a.kind == AttrKind::kGraphs) return false;
    // Guard: every input is an initializer (omitted optional inputs are fine).
    std::vector<const Tensor*> inputs;
    size_t in_bytes = 0;
    std::unordered_set<std::string> seen;
    for (const auto& in : n.inputs) {
      if (in.empty()) {
        inputs.push_back(nullptr);
        continue;
      }
      auto it = g.initializers.find(in);
      if (it == g.initializers.end()) return false;
      inputs.push_back(&it->second);
      if (seen.insert(in).second) in_bytes += it->second.nbytes();
    }
    if (n.inputs.empty() && n.op_type != "Constant") return false;
    // Guard: some output is used (dead nodes are left to dead-node elimination).
    bool used = false;
    for (const auto& o : n.outputs)
      if (!o.empty() && uses.count(o)) used = true;
    if (!used) return false;
    // Guard: the outputs do not blow up the model. Checked on the inferred types before
    // evaluating, so a huge output is never even allocated.
    auto too_big = [&](size_t out_bytes) { return out_bytes > kMaxFoldedBytes && out_bytes > in_bytes; };
    size_t typed_bytes = 0;
    bool all_typed = true;
    for (const auto& o : n.outputs) {
      if (o.empty()) continue;
      const TensorType* t = g.type_of(o);
      if (!t || !t->shape || !shape_is_static(*t->shape) || dtype_size(t->dtype) == 0) {
        all_typed = false;
        continue;
      }
      int64_t numel = 1;
      for (const Dim& d : *t->shape) {
        // Saturate instead of overflowing on absurd shapes.
        if (d.value != 0 && numel > INT64_MAX / d.value / 16) return false;
        numel *= d.value;
      }
      typed_bytes += static_cast<size_t>(numel) * dtype_size(t->dtype);
    }
    if (too_big(typed_bytes)) return false;

    auto opset_it = model.opsets.find(canonical_domain(n.domain));
    if (opset_it == model.opsets.end()) return false;
    const OpSchema* schema = OpRegistry::global().find(n.domain, n.op_type, opset_it->second);
    if (!schema) return false;
    std::vector<Tensor> outs;
    try {
      outs = ctx.evaluator(n, *schema, opset_it->second, inputs);
    } catch (const Error&) {
      return false;  // no kernel, or the kernel rejects these values: leave the node to run later
    }
    // Guards on the results: every named output produced, matching the inferred types, and
    // (when the types were not static) still within the size limit.
    size_t out_bytes = 0;
    for (size_t k = 0; k < n.outputs.size(); ++k) {
      if (n.outputs[k].empty()) continue;
      if (k >= outs.size() || !outs[k].defined()) return false;
      out_bytes += outs[k].nbytes();
      if (const TensorType* t = g.type_of(n.outputs[k])) {
        if (t->dtype != DType::kUndefined && t->dtype != outs[k].dtype()) return false;
        if (t->shape) {
          if (t->shape->size() != outs[k].rank()) return false;
          for (size_t d = 0; d < outs[k].rank(); ++d)
            if ((*t->shape)[d].known() && (*t->shape)[d].value != outs[k].dim(d)) return false;
        }
      }
    }
    if (!all_typed && too_big(out_bytes)) return false;

    // Rewrite: each output becomes an initializer of the same name, so consumers and graph
    // outputs keep their names.
    const std::vector<std::string> out_names = n.outputs;
    g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
    for (size_t k = 0; k < out_names.size(); ++k) {
      if (out_names[k].empty()) continue;
      g.types[out_names[k]] = TensorType{outs[k].dtype(), shape_from_dims(outs[k].shape())};
      g.initializers[out_names[k]] = std::move(outs[k]);
    }
    return true;
  }
};

}  // namespace

std::unique_ptr<Pass> make_constant_folding() { return std::make_unique<ConstantFolding>(); }

}  // namespace kiln
