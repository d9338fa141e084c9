// Specializing a graph to concrete shapes (see specialize.h).
#include "runtime/specialize.h"

#include <algorithm>

#include "backends/reference/executor.h"
#include "ops/op_schema.h"

namespace kiln {

namespace {

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

bool is_random_op(const Node& n) {
  return n.op_type.starts_with("Random") || n.op_type == "Bernoulli" || n.op_type == "Multinomial";
}

void fold_constants(Model& m, std::set<size_t>& folded) {
  Graph& g = m.graph;
  const auto& reg = OpRegistry::global();
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (is_random_op(n)) continue;
    const int64_t opset = m.opsets.count(n.domain) ? m.opsets.at(n.domain) : 0;
    const OpSchema* schema = reg.find(n.domain, n.op_type, opset);
    if (!schema) continue;
    std::vector<Tensor> shape_only;  // data-less views for Shape/Size, which read only the shape
    std::vector<const Tensor*> ins;
    bool all_const = true;
    const bool shape_op = n.domain.empty() && (n.op_type == "Shape" || n.op_type == "Size");
    for (const auto& in : n.inputs) {
      if (in.empty()) {
        ins.push_back(nullptr);
        continue;
      }
      auto it = g.initializers.find(in);
      if (it != g.initializers.end()) {
        ins.push_back(&it->second);
        continue;
      }
      if (shape_op) {
        const auto dims = concrete_dims(g.type_of(in));
        if (is_concrete(dims)) {
          shape_only.reserve(1);
          shape_only.push_back(Tensor::view(g.type_of(in)->dtype, dims, nullptr, nullptr));
          ins.push_back(&shape_only.back());
          continue;
        }
      }
      all_const = false;
      break;
    }
    if (!all_const) continue;
    int64_t out_elems = 0;
    for (const auto& o : n.outputs) {
      if (o.empty()) continue;
      const auto dims = concrete_dims(g.type_of(o));
      if (!is_concrete(dims)) {
        out_elems = -1;
        break;
      }
      out_elems += shape_numel(dims);
    }
    if (out_elems < 0 || out_elems > (int64_t{1} << 24)) continue;
    auto outs = reference::evaluate_node(n, *schema, opset, ins);
    for (size_t k = 0; k < n.outputs.size() && k < outs.size(); ++k)
      if (!n.outputs[k].empty()) g.initializers[n.outputs[k]] = std::move(outs[k]);
    folded.insert(i);
  }
}

}  // namespace

std::vector<int64_t> concrete_dims(const TensorType* t) {
  std::vector<int64_t> dims;
  if (!t || !t->shape) return {-1};
  for (const Dim& d : *t->shape) dims.push_back(d.known() ? d.value : -1);
  return dims;
}

bool is_concrete(const std::vector<int64_t>& dims) {
  return std::all_of(dims.begin(), dims.end(), [](int64_t d) { return d >= 0; });
}

SpecializedModel specialize_model(const Model& model, const ShapeMap& shapes) {
  SpecializedModel out;
  out.model = model;
  Model& m = out.model;
  Graph& g = m.graph;
  for (const auto& [name, dims] : shapes)
    if (std::find(g.inputs.begin(), g.inputs.end(), name) == g.inputs.end())
      throw Error(ErrorCode::kInvalidArgument, "'" + name + "' is not an input of the model");
  for (const auto& in : g.inputs) {
    const TensorType* declared = g.type_of(in);
    if (!declared) throw Error(ErrorCode::kInvalidModel, "input '" + in + "' has no declared type");
    std::vector<int64_t> dims;
    auto it = shapes.find(in);
    if (it != shapes.end()) {
      dims = it->second;
      if (declared->shape) {
        if (declared->shape->size() != dims.size())
          throw Error(ErrorCode::kInvalidArgument, "input '" + in + "' has rank " +
                                                       std::to_string(declared->shape->size()) + ", got shape " +
                                                       shape_to_string(dims));
        for (size_t d = 0; d < dims.size(); ++d) {
          const Dim& dd = (*declared->shape)[d];
          if (dims[d] < 0 || (dd.known() && dd.value != dims[d]))
            throw Error(ErrorCode::kInvalidArgument, "input '" + in + "' is " + declared->to_string() + ", got shape " +
                                                         shape_to_string(dims));
        }
      }
    } else {
      dims = concrete_dims(declared);
      if (!is_concrete(dims))
        throw Error(ErrorCode::kInvalidArgument, "input '" + in + "' is " + declared->to_string() +
                                                     ": give its shape (it has dynamic dimensions)");
    }
    Shape s;
    for (int64_t d : dims) s.push_back(Dim(d));
    g.types[in] = TensorType{declared->dtype, s};
  }
  // Re-infer every intermediate type at these shapes.
  std::set<std::string> keep(g.inputs.begin(), g.inputs.end());
  for (auto it = g.types.begin(); it != g.types.end();) {
    if (!keep.count(it->first) && !g.initializers.count(it->first)) it = g.types.erase(it);
    else ++it;
  }
  InferOptions io;
  io.evaluator = reference::constant_evaluator();
  infer_types(m, io);
  fold_constants(m, out.folded);
  return out;
}

}  // namespace kiln
