// Whether a batch may run as independent sub-batches (see batch_split.h).
#include "runtime/batch_split.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <set>
#include <unordered_map>

#include "runtime/specialize.h"

namespace kiln {

namespace {

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

// What a value is with respect to the samples.
enum class Kind {
  kFree,        // the same at every batch size: a weight, a constant, or computed from them only
  kBatched,     // axis 0 is k x batch and the samples' parts follow one another
  kShapeConst,  // a constant folded from the input shapes (a Shape chain): only a shape operand
};

struct State {
  Kind kind = Kind::kFree;
  int64_t k = 0;  // kBatched: axis 0 holds k rows per sample
};

bool member(std::initializer_list<const char*> names, const std::string& op) {
  return std::any_of(names.begin(), names.end(), [&](const char* n) { return op == n; });
}

// Ops that compute each output element from the elements at the same (broadcast) position.
bool is_elementwise(const std::string& op) {
  return member({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Mod", "Where", "Equal", "Less",
                 "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Not", "BitShift", "PRelu", "Relu",
                 "LeakyRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "HardSwish",
                 "Tanh", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Abs",
                 "Neg", "Sign", "Floor", "Ceil", "Round", "Clip", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan",
                 "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "IsNaN", "IsInf", "Cast", "CastLike", "Identity",
                 "Dropout", "QuantizeLinear", "DequantizeLinear", "ElementwiseChain"},
                op);
}

// Ops whose first input is the data, whose other inputs are weights (or a residual shaped like
// the output), and which work within each index of axis 0.
bool is_per_item(const std::string& op) {
  return member({"Conv", "FusedConv", "QConv", "ConvInteger", "QLinearConv", "ConvTranspose", "MaxPool",
                 "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
                 "BatchNormalization", "InstanceNormalization", "LRN", "DepthToSpace", "SpaceToDepth", "Resize",
                 "Upsample", "Pad"},
                op);
}

bool is_matmul(const std::string& op) {
  return member({"MatMul", "Gemm", "FusedMatMul", "QMatMul", "MatMulInteger", "QLinearMatMul"}, op);
}

// Ops that keep the element order and only regroup dims.
bool is_regroup(const std::string& op) { return member({"Reshape", "Flatten", "Squeeze", "Unsqueeze"}, op); }

class Analysis {
 public:
  Analysis(const Model& model, const ShapeMap& full, int64_t sub) : model_(model), full_(full), sub_(sub) {}

  BatchSplitCheck run() {
    if (model_.graph.inputs.empty()) return no("the model has no inputs");
    batch_ = -1;
    for (const auto& in : model_.graph.inputs) {
      auto it = full_.find(in);
      if (it == full_.end() || it->second.empty()) return no("input '" + in + "' has no batch axis");
      if (batch_ < 0) batch_ = it->second[0];
      if (it->second[0] != batch_) return no("the inputs' axis 0 differ (input '" + in + "')");
    }
    if (batch_ < 2 || sub_ < 1 || sub_ >= batch_) return no("a batch of " + std::to_string(batch_));
    ShapeMap small = full_;
    for (auto& [name, dims] : small) dims[0] = sub_;
    try {
      a_ = specialize_model(model_, full_);
      b_ = specialize_model(model_, small);
    } catch (const Error& e) {
      return no(std::string("the model does not take a batch of ") + std::to_string(sub_) + ": " + e.what());
    }
    for (const auto& in : model_.graph.inputs) state_[in] = {Kind::kBatched, 1};
    for (const auto& [name, t] : model_.graph.initializers) state_[name] = {Kind::kFree, 0};
    const auto& nodes = model_.graph.nodes;
    for (size_t i = 0; i < nodes.size(); ++i) {
      std::string why = a_.folded.count(i) && b_.folded.count(i) ? fold(nodes[i]) : visit(nodes[i]);
      if (!why.empty()) return no(nodes[i].describe() + " " + why);
    }
    for (const auto& out : model_.graph.outputs) {
      auto it = state_.find(out);
      if (it == state_.end() || it->second.kind != Kind::kBatched)
        return no("output '" + out + "' does not hold one part per sample");
    }
    return {true, ""};
  }

 private:
  static BatchSplitCheck no(std::string why) { return {false, std::move(why)}; }

  std::vector<int64_t> dims_a(const std::string& v) const { return concrete_dims(a_.model.graph.type_of(v)); }
  std::vector<int64_t> dims_b(const std::string& v) const { return concrete_dims(b_.model.graph.type_of(v)); }
  size_t rank(const std::string& v) const { return dims_a(v).size(); }

  // k when `v` has k x batch rows on axis 0 at both sizes and equal other dims.
  std::optional<int64_t> batched_form(const std::string& v) const {
    const auto da = dims_a(v), db = dims_b(v);
    if (da.empty() || da.size() != db.size() || !is_concrete(da) || !is_concrete(db)) return std::nullopt;
    if (da[0] <= 0 || da[0] % batch_ != 0) return std::nullopt;
    const int64_t k = da[0] / batch_;
    if (db[0] != k * sub_) return std::nullopt;
    for (size_t d = 1; d < da.size(); ++d)
      if (da[d] != db[d]) return std::nullopt;
    return k;
  }
  bool free_form(const std::string& v) const {
    const auto da = dims_a(v);
    return is_concrete(da) && da == dims_b(v);
  }

  const State* state(const std::string& v) const {
    auto it = state_.find(v);
    return it == state_.end() ? nullptr : &it->second;
  }

  // A node both specializations evaluated to constants.
  std::string fold(const Node& n) {
    for (const auto& o : n.outputs) {
      if (o.empty()) continue;
      const Tensor& ta = a_.model.graph.initializers.at(o);
      const Tensor& tb = b_.model.graph.initializers.at(o);
      if (ta.dtype() == tb.dtype() && ta.shape() == tb.shape() &&
          (ta.nbytes() == 0 || std::memcmp(ta.raw(), tb.raw(), ta.nbytes()) == 0)) {
        state_[o] = {Kind::kFree, 0};
      } else if (auto k = batched_form(o); k && same_rows(ta, tb)) {
        state_[o] = {Kind::kBatched, *k};  // e.g. a class token expanded to every sample
      } else {
        state_[o] = {Kind::kShapeConst, 0};
      }
    }
    return "";
  }
  // Every sample's part of a (full) and of b (sub-batch) is the same bytes.
  bool same_rows(const Tensor& a, const Tensor& b) const {
    if (a.dtype() != b.dtype() || a.dtype() == DType::kString) return false;
    const size_t part = a.nbytes() / static_cast<size_t>(batch_);
    if (part == 0 || part * static_cast<size_t>(sub_) != b.nbytes()) return false;
    const char* pa = static_cast<const char*>(a.raw());
    const char* pb = static_cast<const char*>(b.raw());
    for (int64_t s = 0; s < batch_; ++s)
      if (std::memcmp(pa + s * part, pb, part) != 0) return false;
    for (int64_t s = 1; s < sub_; ++s)
      if (std::memcmp(pb + s * part, pb, part) != 0) return false;
    return true;
  }

  // The constant operand at input `i` as integers (the same at both sizes), or nullopt.
  std::optional<std::vector<int64_t>> const_ints(const Node& n, size_t i) const {
    if (i >= n.inputs.size() || n.inputs[i].empty()) return std::nullopt;
    auto ia = a_.model.graph.initializers.find(n.inputs[i]);
    auto ib = b_.model.graph.initializers.find(n.inputs[i]);
    if (ia == a_.model.graph.initializers.end() || ib == b_.model.graph.initializers.end()) return std::nullopt;
    auto va = ia->second.to_int64_vector(), vb = ib->second.to_int64_vector();
    if (va != vb) return std::nullopt;
    return va;
  }
  // Axes from attribute `name` (or constant input `input`), normalized to [0, r); nullopt if unknown.
  std::optional<std::vector<int64_t>> axes_of(const Node& n, const char* name, size_t input, int64_t r) const {
    std::vector<int64_t> axes;
    if (const Attribute* a = n.attr(name)) {
      axes = a->kind == AttrKind::kInt ? std::vector<int64_t>{a->i} : a->ints;
    } else if (input < n.inputs.size() && !n.inputs[input].empty()) {
      auto c = const_ints(n, input);
      if (!c) return std::nullopt;
      axes = *c;
    }
    for (auto& x : axes) {
      if (x < 0) x += r;
      if (x < 0 || x >= r) return std::nullopt;
    }
    return axes;
  }
  static bool has_axis0(const std::vector<int64_t>& axes) {
    return std::find(axes.begin(), axes.end(), 0) != axes.end();
  }
  int64_t opset() const {
    auto it = model_.opsets.find("");
    return it == model_.opsets.end() ? 17 : it->second;
  }
  int64_t int_attr(const Node& n, const char* name, int64_t def) const {
    const Attribute* a = n.attr(name);
    return a && a->kind == AttrKind::kInt ? a->i : def;
  }

  // Marks every output batched with the same k as `k`; fails when one is not in that form.
  std::string outputs_batched(const Node& n, std::optional<int64_t> k) {
    for (size_t o = 0; o < n.outputs.size(); ++o) {
      const std::string& v = n.outputs[o];
      if (v.empty()) continue;
      auto got = batched_form(v);
      if (!got || (k && *got != *k)) return "changes axis 0 (output '" + v + "')";
      state_[v] = {Kind::kBatched, *got};
    }
    return "";
  }

  // A non-data operand: free, or batched with the output's k and rank (a residual, a mask).
  bool side_ok(const std::string& v, int64_t k, size_t out_rank, bool may_broadcast) const {
    if (v.empty()) return true;
    const State* s = state(v);
    if (!s) return false;
    if (s->kind == Kind::kBatched) return s->k == k && rank(v) == out_rank;
    if (s->kind != Kind::kFree) return false;
    if (!may_broadcast) return true;
    const auto d = dims_a(v);
    return d.size() < out_rank || (!d.empty() && d[0] == 1);  // does not reach the output's axis 0
  }

  std::string visit(const Node& n) {
    const std::string& op = n.op_type;
    bool any_batched = false;
    for (const auto& in : n.inputs) {
      if (in.empty()) continue;
      const State* s = state(in);
      if (!s) return "reads '" + in + "', which this check does not know";
      if (s->kind == Kind::kBatched) any_batched = true;
    }
    if (n.domain != "" && n.domain != "kiln" && n.domain != "ai.onnx" && n.domain != "com.microsoft")
      return "is from domain '" + n.domain + "', which this check does not know";
    if (!any_batched) {
      // Computed from weights only. A shape constant here (ConstantOfShape, Range, Expand of a
      // weight to a batch-sized shape) is a batch-sized tensor the same for every sample, or not.
      for (const auto& in : n.inputs)
        if (!in.empty() && state(in)->kind == Kind::kShapeConst && !shape_operand(n, in))
          return "reads the shape constant '" + in + "'";
      for (const auto& o : n.outputs) {
        if (o.empty()) continue;
        if (free_form(o)) state_[o] = {Kind::kFree, 0};
        else if (op == "Expand" && batched_form(o)) state_[o] = {Kind::kBatched, *batched_form(o)};  // the same per sample
        else return "makes a value whose shape follows the batch from no sample ('" + o + "')";
      }
      return "";
    }
    // Shape constants may only be shape operands.
    for (const auto& in : n.inputs)
      if (!in.empty() && state(in)->kind == Kind::kShapeConst && !shape_operand(n, in))
        return "reads '" + in + "', a constant computed from the batch size";
    const std::string& x = n.inputs.empty() ? std::string() : n.inputs[0];
    const State* sx = x.empty() ? nullptr : state(x);
    const int64_t r = x.empty() ? 0 : static_cast<int64_t>(rank(x));

    if (is_elementwise(op)) {
      if ((op == "QuantizeLinear" || op == "DequantizeLinear") && n.inputs.size() > 1 &&
          dims_numel(n.inputs[1]) != 1) {
        int64_t axis = int_attr(n, "axis", 1);
        if (axis < 0) axis += r;
        if (axis == 0) return "quantizes per index of axis 0";
      }
      const auto k = out_k(n);
      if (!k) return "changes axis 0";
      const size_t out_rank = rank(n.outputs[0]);
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        if (n.inputs[i].empty()) continue;
        const State* s = state(n.inputs[i]);
        if (s->kind == Kind::kBatched ? (s->k != *k || rank(n.inputs[i]) != out_rank)
                                      : !side_ok(n.inputs[i], *k, out_rank, true))
          return "broadcasts '" + n.inputs[i] + "' across samples";
      }
      return outputs_batched(n, k);
    }
    if (is_per_item(op)) {
      if (!sx || sx->kind != Kind::kBatched) return "runs on a weight with a batched operand";
      if (op == "BatchNormalization" && int_attr(n, "training_mode", 0) != 0) return "computes batch statistics";
      if (op == "MaxPool" && n.outputs.size() > 1 && !n.outputs[1].empty())
        return "returns indices into the whole batch";
      const size_t out_rank = rank(n.outputs[0]);
      for (size_t i = 1; i < n.inputs.size(); ++i)
        if (!side_ok(n.inputs[i], sx->k, out_rank, false) && !shape_operand(n, n.inputs[i]))
          return "mixes '" + n.inputs[i] + "' into the samples";
      return outputs_batched(n, sx->k);
    }
    if (is_matmul(op)) return matmul(n);
    if (is_regroup(op)) {
      if (!sx || sx->kind != Kind::kBatched) return "regroups a weight with a batched operand";
      return outputs_batched(n, std::nullopt);  // row-major order kept: each sample's block stays whole
    }
    if (op == "Attention") {  // kiln's fused attention: [batch, seq, hidden] operands, batch-first
      for (size_t i = 0; i < 3 && i < n.inputs.size(); ++i) {
        const State* s = state(n.inputs[i]);
        if (s->kind != Kind::kBatched || s->k != sx->k || rank(n.inputs[i]) != rank(x))
          return "attends across samples";
      }
      const size_t out_rank = rank(n.outputs[0]);
      for (size_t i = 3; i < n.inputs.size(); ++i)
        if (!side_ok(n.inputs[i], sx->k, std::max(out_rank, rank(n.inputs[i])), true))
          return "applies a mask across samples";
      return outputs_batched(n, sx->k);
    }
    if (op == "Gather" && sx && sx->kind == Kind::kFree) {  // an embedding lookup: rows of a weight per index
      const State* si = state(n.inputs[1]);
      if (int_attr(n, "axis", 0) != 0 || si->kind != Kind::kBatched) return "gathers across samples";
      return outputs_batched(n, si->k);
    }
    if (!sx || sx->kind != Kind::kBatched) return "takes a batched value at an operand this check does not allow";
    std::optional<std::vector<int64_t>> axes;
    if (member({"Softmax", "LogSoftmax", "Hardmax"}, op)) {
      axes = std::vector<int64_t>{int_attr(n, "axis", opset() >= 13 ? -1 : 1)};
    } else if (op == "LayerNormalization" || op == "ArgMax" || op == "ArgMin" || op == "TopK" || op == "Split" ||
               op == "Concat" || op == "Gather" || op == "GatherElements") {
      axes = std::vector<int64_t>{int_attr(n, "axis", op == "LayerNormalization" || op == "TopK" ? -1 : 0)};
    } else if (op.starts_with("Reduce")) {
      axes = axes_of(n, "axes", opset() >= 18 || op == "ReduceSum" ? 1 : 99, r);
      if (axes && axes->empty()) {
        if (int_attr(n, "noop_with_empty_axes", 0) == 0) return "reduces over every axis";
      }
    } else if (op == "CumSum") {
      axes = axes_of(n, "axis", 1, r);
    } else if (op == "Transpose") {
      const Attribute* p = n.attr("perm");
      if (!p || p->ints.empty() || p->ints[0] != 0) return "moves axis 0";
      return outputs_batched(n, sx->k);
    } else if (op == "Slice") {
      axes = axes_of(n, "axes", 3, r);
      if (!axes && n.inputs.size() <= 3) {  // no axes: every axis, from the first
        axes = std::vector<int64_t>();
        for (int64_t d = 0; d < r; ++d) axes->push_back(d);
      }
      if (axes && has_axis0(*axes)) {
        // Axis 0 kept whole (start 0, step 1, end past it) at both sizes.
        const size_t at = static_cast<size_t>(std::find(axes->begin(), axes->end(), 0) - axes->begin());
        auto starts = const_ints(n, 1);
        auto steps = n.inputs.size() > 4 ? const_ints(n, 4) : std::optional<std::vector<int64_t>>{};
        const bool start0 = starts && at < starts->size() && (*starts)[at] == 0;
        const bool step1 = n.inputs.size() <= 4 || n.inputs[4].empty() || (steps && at < steps->size() && (*steps)[at] == 1);
        if (!start0 || !step1) return "slices axis 0";
        return outputs_batched(n, sx->k);  // the end reaches the batch at both sizes
      }
    } else if (op == "Tile") {
      auto reps = const_ints(n, 1);
      if (!reps || reps->empty() || (*reps)[0] != 1) return "tiles axis 0";
      return outputs_batched(n, sx->k);
    } else if (op == "Expand") {
      return outputs_batched(n, sx->k);
    } else {
      return "is not known to keep the samples apart";
    }
    if (!axes) return "has axes this check cannot read";
    for (auto& a : *axes) {
      if (a < 0) a += r;
      if (a == 0) return "works along axis 0";
    }
    if (op == "GatherElements") {  // indices shaped like the output, per sample, on another axis
      const State* si = state(n.inputs[1]);
      if (si->kind != Kind::kBatched || si->k != sx->k || rank(n.inputs[1]) != rank(x))
        return "gathers with indices that are not per sample";
      return outputs_batched(n, sx->k);
    }
    if (op == "Gather") {
      if (!side_ok(n.inputs[1], sx->k, 0, false) || state(n.inputs[1])->kind == Kind::kBatched)
        return "gathers with per-sample indices";
    }
    if (op == "Concat") {
      for (const auto& in : n.inputs)
        if (state(in)->kind != Kind::kBatched || state(in)->k != sx->k) return "joins a value that is not per sample";
    }
    for (size_t i = 1; i < n.inputs.size(); ++i) {
      if (n.inputs[i].empty() || op == "Concat") continue;
      const State* s = state(n.inputs[i]);
      if (s->kind == Kind::kBatched) return "reads the batched '" + n.inputs[i] + "' as a parameter";
    }
    return outputs_batched(n, sx->k);
  }

  // MatMul, Gemm and their fused and quantized forms: the samples are A's rows or batch axis, or
  // B's batch axis.
  std::string matmul(const Node& n) {
    const State* sa = state(n.inputs[0]);
    const State* sb = n.inputs.size() > 1 ? state(n.inputs[1]) : nullptr;
    if (!sb) return "has no second operand";
    const size_t ra = rank(n.inputs[0]), rb = rank(n.inputs[1]);
    const bool trans_a = int_attr(n, "transA", 0) != 0;
    std::optional<int64_t> k;
    if (sa->kind == Kind::kBatched && sb->kind == Kind::kBatched) {
      if (ra < 3 || rb < 3 || ra != rb || sa->k != sb->k) return "multiplies samples with each other";
      k = sa->k;
    } else if (sa->kind == Kind::kBatched) {
      if (sb->kind != Kind::kFree) return "reads a shape constant";
      if (ra == 2 && trans_a) return "contracts over the samples";
      if (ra < 2) return "contracts over the samples";
      k = sa->k;
    } else if (sb->kind == Kind::kBatched) {
      if (rb < 3 || (ra == rb && dims_a(n.inputs[0])[0] != 1)) return "contracts over the samples";
      k = sb->k;
    } else {
      return "reads a shape constant";
    }
    const size_t out_rank = rank(n.outputs[0]);
    for (size_t i = 2; i < n.inputs.size(); ++i) {
      if (n.inputs[i].empty()) continue;
      // Gemm's C and fused bias/residual operands broadcast to [M, N]; quantization parameters
      // are weights.
      if (!side_ok(n.inputs[i], *k, out_rank, true)) return "mixes '" + n.inputs[i] + "' into the samples";
    }
    return outputs_batched(n, k);
  }

  // Operands that only give a shape, sizes or scales (read at each batch size on its own).
  bool shape_operand(const Node& n, const std::string& v) const {
    const std::string& op = n.op_type;
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      if (n.inputs[i] != v) continue;
      const bool ok = (op == "Reshape" && i == 1) || (op == "Expand" && i == 1) ||
                      ((op == "Resize" || op == "Upsample") && i >= 1) || (op == "Pad" && i >= 1) ||
                      (op == "ConstantOfShape" && i == 0) || (op == "Range") ||
                      (op == "Slice" && i >= 1) || (op == "Tile" && i == 1) || (op == "Squeeze" && i == 1) ||
                      (op == "Unsqueeze" && i == 1);
      if (!ok) return false;
    }
    return true;
  }

  int64_t dims_numel(const std::string& v) const {
    const auto d = dims_a(v);
    if (!is_concrete(d)) return -1;
    int64_t n = 1;
    for (int64_t x : d) n *= x;
    return n;
  }

  std::optional<int64_t> out_k(const Node& n) const {
    if (n.outputs.empty() || n.outputs[0].empty()) return std::nullopt;
    return batched_form(n.outputs[0]);
  }

  const Model& model_;
  const ShapeMap& full_;
  int64_t sub_;
  int64_t batch_ = -1;
  SpecializedModel a_, b_;
  std::unordered_map<std::string, State> state_;
};

}  // namespace

BatchSplitCheck analyze_batch_split(const Model& model, const ShapeMap& full, int64_t sub) {
  try {
    return Analysis(model, full, sub).run();
  } catch (const std::exception& e) {
    return {false, std::string("the check failed: ") + e.what()};
  }
}

}  // namespace kiln
