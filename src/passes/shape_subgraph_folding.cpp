// Shape-subgraph folding: resolves the integer "shape arithmetic" that exporters emit
// (Shape -> Gather -> Unsqueeze -> Concat -> Reshape, Shape -> Slice, Size, Cast, Add/Sub/Mul/Div
// on shape values) to constant initializers, then lets constant folding collapse what follows.
//
// Shape values are tracked element by element, so a chain folds as soon as the elements it
// reads are known, even if other dims are symbolic: Gather(Shape([batch,seq,768]), 2) -> 768
// needs no profile. Partly known shape values also refine the types of the Reshape, Expand and
// ConstantOfShape (and Range) nodes they feed (Reshape(x, [batch, 2, 24, 28, 28]) is typed
// [batch,2,24,28,28] instead of [?,?,?,?,?]), and types are re-inferred downstream, so the
// shape chains of later layers see static dims too. Each refined value counts as a rewrite.
//
// SPECIALIZATION: when ctx.input_shapes gives concrete shapes for dynamic inputs (an
// optimization profile), types are re-inferred on a copy of the model with those inputs made
// static and every shape value they determine is folded. The result is then only valid for those
// input shapes: if any fold depended on them, the pass also declares those inputs with the
// static shapes, so running the optimized model with other shapes fails input validation instead
// of computing wrong results.
#include <algorithm>
#include <optional>
#include <set>
#include <unordered_set>

#include "ops/tensor_rules.h"
#include "passes/pass.h"

namespace kiln {
namespace {

using Types = std::unordered_map<std::string, TensorType>;

// Shape vectors are short; larger integer tensors are data, not shapes.
constexpr int64_t kMaxTrackedElements = 64;
// Each refinement round typically resolves one more layer of a network; this only bounds
// pathological cases.
constexpr int kMaxRefineRounds = 256;

// One element of a shape value: a known integer, else the symbol of the dim it equals (the
// "batch" of Gather(Shape([batch,seq]), 0)), else unknown.
struct El {
  std::optional<int64_t> v;
  std::string sym;

  static El dim(const Dim& d) { return d.known() ? El{d.value, {}} : El{std::nullopt, d.symbol}; }
  // As a dim of a tensor shape (negative values are not dims).
  Dim to_dim() const {
    if (v) return *v >= 0 ? Dim(*v) : Dim();
    return sym.empty() ? Dim() : Dim::sym(sym);
  }
};

// A rank-0 or rank-1 integer value, element by element.
struct Val {
  DType dtype = DType::kI64;
  bool scalar = false;
  std::vector<El> e;

  bool known() const {
    return std::all_of(e.begin(), e.end(), [](const El& x) { return x.v.has_value(); });
  }
  std::vector<int64_t> ints() const {
    std::vector<int64_t> v;
    for (const auto& x : e) v.push_back(*x.v);
    return v;
  }
};
using Vals = std::unordered_map<std::string, Val>;

bool tracked_dtype(DType dt) { return dt == DType::kI64 || dt == DType::kI32; }

std::optional<Val> from_tensor(const Tensor& t) {
  if (!t.defined() || !tracked_dtype(t.dtype()) || t.rank() > 1 || t.numel() > kMaxTrackedElements) return std::nullopt;
  Val v;
  v.dtype = t.dtype();
  v.scalar = t.rank() == 0;
  for (int64_t x : t.to_int64_vector()) v.e.push_back(El{x, {}});
  return v;
}

Tensor to_tensor(const Val& v) {
  std::vector<int64_t> shape;
  if (!v.scalar) shape.push_back(static_cast<int64_t>(v.e.size()));
  if (v.dtype == DType::kI32) {
    std::vector<int32_t> x;
    for (int64_t i : v.ints()) x.push_back(static_cast<int32_t>(i));
    return Tensor::from_vector<int32_t>(shape, x);
  }
  return Tensor::from_vector<int64_t>(shape, v.ints());
}

// Ops whose integer results this pass computes. All are pure, so dead ones can be dropped.
const std::unordered_set<std::string>& folded_ops() {
  static const std::unordered_set<std::string> ops = {"Shape", "Size",     "Gather", "Slice", "Concat",
                                                      "Unsqueeze", "Squeeze", "Cast", "Identity", "Add",
                                                      "Sub",   "Mul",      "Div",    "Max",   "Min"};
  return ops;
}

// Elementwise integer arithmetic with overflow and division guards (nullopt = unknown).
std::optional<int64_t> arith(const std::string& op, int64_t a, int64_t b) {
  int64_t r = 0;
  if (op == "Add") return __builtin_add_overflow(a, b, &r) ? std::nullopt : std::optional<int64_t>(r);
  if (op == "Sub") return __builtin_sub_overflow(a, b, &r) ? std::nullopt : std::optional<int64_t>(r);
  if (op == "Mul") return __builtin_mul_overflow(a, b, &r) ? std::nullopt : std::optional<int64_t>(r);
  if (op == "Div") {
    if (b == 0 || (a == INT64_MIN && b == -1)) return std::nullopt;
    return a / b;  // truncates toward zero, like the integer Div kernels
  }
  if (op == "Max") return std::max(a, b);
  if (op == "Min") return std::min(a, b);
  return std::nullopt;
}

// Computes every shape value reachable in `g`, reading tensor types from `types` (the model's
// own or a profile-specialized copy's).
Vals analyze(const Model& model, const Graph& g, const Types& types) {
  Vals vals;
  for (const auto& [name, t] : g.initializers)
    if (auto v = from_tensor(t)) vals.emplace(name, std::move(*v));
  const int64_t opset = model.default_opset();
  auto get = [&](const Node& n, size_t i) -> const Val* {
    if (i >= n.inputs.size() || n.inputs[i].empty()) return nullptr;
    auto it = vals.find(n.inputs[i]);
    return it == vals.end() ? nullptr : &it->second;
  };
  auto known_ints = [&](const Node& n, size_t i) -> std::optional<std::vector<int64_t>> {
    const Val* v = get(n, i);
    if (!v || !v->known()) return std::nullopt;
    return v->ints();
  };
  auto type_of = [&](const std::string& name) -> const TensorType* {
    auto it = types.find(name);
    return it == types.end() ? nullptr : &it->second;
  };
  // Squeeze/Unsqueeze/Slice moved some attributes to inputs at opsets 10/13.
  auto ints_from = [&](const Node& n, const char* attr, size_t input, int64_t since) -> std::optional<std::vector<int64_t>> {
    if (opset < since) {
      const Attribute* a = n.attr(attr);
      return a ? std::optional<std::vector<int64_t>>(a->ints) : std::nullopt;
    }
    return known_ints(n, input);
  };
  auto axis0 = [](int64_t axis) { return axis == 0 || axis == -1; };

  for (const Node& n : g.nodes) {
    if (!n.domain.empty() || n.outputs.empty() || n.outputs[0].empty()) continue;
    const std::string& op = n.op_type;
    std::optional<Val> out;
    if (op == "Constant") {
      if (const Attribute* a = n.attr("value"); a && a->kind == AttrKind::kTensor) out = from_tensor(a->t);
      else if (const Attribute* a = n.attr("value_int")) out = from_tensor(Tensor::scalar<int64_t>(a->i));
      else if (const Attribute* a = n.attr("value_ints"))
        out = from_tensor(Tensor::from_vector<int64_t>({static_cast<int64_t>(a->ints.size())}, a->ints));
    } else if (op == "Shape") {
      const TensorType* t = type_of(n.inputs[0]);
      if (!t || !t->shape) continue;
      const int64_t rank = static_cast<int64_t>(t->shape->size());
      int64_t start = 0, end = rank;
      if (opset >= 15) {
        start = int_attr(n, "start", 0);
        end = int_attr(n, "end", rank);
        if (start < 0) start += rank;
        if (end < 0) end += rank;
        start = std::clamp<int64_t>(start, 0, rank);
        end = std::clamp<int64_t>(end, start, rank);
      }
      Val v;
      for (int64_t k = start; k < end; ++k) {
        const Dim& d = (*t->shape)[static_cast<size_t>(k)];
        v.e.push_back(El::dim(d));
      }
      out = std::move(v);
    } else if (op == "Size") {
      const TensorType* t = type_of(n.inputs[0]);
      Val v;
      v.scalar = true;
      v.e.push_back(El{});
      if (t && t->shape && shape_is_static(*t->shape)) v.e[0].v = shape_numel(static_dims(*t->shape));
      out = std::move(v);
    } else if (op == "Gather") {
      const Val* data = get(n, 0);
      auto idx_val = get(n, 1);
      if (!data || data->scalar || !idx_val || !idx_val->known() || !axis0(int_attr(n, "axis", 0))) continue;
      Val v;
      v.dtype = data->dtype;
      v.scalar = idx_val->scalar;
      const int64_t size = static_cast<int64_t>(data->e.size());
      bool ok = true;
      for (int64_t i : idx_val->ints()) {
        if (i < 0) i += size;
        if (i < 0 || i >= size) ok = false;
        else v.e.push_back(data->e[static_cast<size_t>(i)]);
      }
      if (ok) out = std::move(v);
    } else if (op == "Slice") {
      const Val* data = get(n, 0);
      if (!data || data->scalar) continue;
      auto starts = ints_from(n, "starts", 1, 10), ends = ints_from(n, "ends", 2, 10);
      // Absent axes/steps mean "axis 0" and "step 1" for a rank-1 value.
      auto present = [&](size_t i) { return n.inputs.size() > i && !n.inputs[i].empty(); };
      std::optional<std::vector<int64_t>> axes = std::vector<int64_t>{0}, steps = std::vector<int64_t>{1};
      if (opset < 10 ? n.attr("axes") != nullptr : present(3)) axes = ints_from(n, "axes", 3, 10);
      if (opset >= 10 && present(4)) steps = known_ints(n, 4);
      if (!starts || !ends || !axes || !steps || starts->size() != 1 || ends->size() != 1 || axes->size() != 1 ||
          steps->size() != 1 || !axis0((*axes)[0]) || (*steps)[0] == 0)
        continue;
      const int64_t step = (*steps)[0];
      auto [first, count] =
          tensor_rules::slice_range(static_cast<int64_t>(data->e.size()), (*starts)[0], (*ends)[0], step);
      Val v;
      v.dtype = data->dtype;
      for (int64_t k = 0; k < count; ++k) v.e.push_back(data->e[static_cast<size_t>(first + k * step)]);
      out = std::move(v);
    } else if (op == "Concat") {
      if (!axis0(int_attr(n, "axis", 0))) continue;
      Val v;
      bool ok = !n.inputs.empty();
      for (size_t i = 0; i < n.inputs.size() && ok; ++i) {
        const Val* x = get(n, i);
        if (!x || x->scalar || (i > 0 && x->dtype != v.dtype)) {
          ok = false;
          break;
        }
        v.dtype = x->dtype;
        v.e.insert(v.e.end(), x->e.begin(), x->e.end());
      }
      if (ok) out = std::move(v);
    } else if (op == "Unsqueeze") {
      const Val* x = get(n, 0);
      auto axes = ints_from(n, "axes", 1, 13);
      if (!x || !x->scalar || !axes || axes->size() != 1 || !axis0((*axes)[0])) continue;
      out = *x;
      out->scalar = false;
    } else if (op == "Squeeze") {
      const Val* x = get(n, 0);
      if (!x || x->scalar || x->e.size() != 1) continue;
      const bool has_axes = opset < 13 ? n.attr("axes") != nullptr : (n.inputs.size() > 1 && !n.inputs[1].empty());
      if (has_axes) {
        auto axes = ints_from(n, "axes", 1, 13);
        if (!axes || axes->size() != 1 || !axis0((*axes)[0])) continue;
      }
      out = *x;
      out->scalar = true;
    } else if (op == "Cast") {
      const Val* x = get(n, 0);
      const Attribute* to = n.attr("to");
      if (!x || !to) continue;
      const DType dt = dtype_from_onnx(static_cast<int>(to->i));
      if (!tracked_dtype(dt)) continue;
      out = *x;
      out->dtype = dt;
      if (dt == DType::kI32)  // values that do not fit become unknown rather than wrapped
        for (auto& e : out->e)
          if (e.v && (*e.v < INT32_MIN || *e.v > INT32_MAX)) e = El{};
    } else if (op == "Identity") {
      if (const Val* x = get(n, 0)) out = *x;
    } else if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Max" || op == "Min") {
      if (n.inputs.size() != 2) continue;
      const Val* a = get(n, 0);
      const Val* b = get(n, 1);
      if (!a || !b || a->dtype != b->dtype) continue;
      const size_t na = a->e.size(), nb = b->e.size();
      if (na != nb && na != 1 && nb != 1) continue;
      Val v;
      v.dtype = a->dtype;
      v.scalar = a->scalar && b->scalar;
      const size_t len = std::max(na, nb);
      for (size_t k = 0; k < len; ++k) {
        const El& x = a->e[na == 1 ? 0 : k];
        const El& y = b->e[nb == 1 ? 0 : k];
        El r;
        if (x.v && y.v) {
          r.v = arith(op, *x.v, *y.v);
          // Values that leave the dtype's range are left to the kernels.
          if (r.v && v.dtype == DType::kI32 && (*r.v < INT32_MIN || *r.v > INT32_MAX)) r.v.reset();
        } else if (y.v && ((*y.v == 1 && (op == "Mul" || op == "Div")) || (*y.v == 0 && (op == "Add" || op == "Sub")))) {
          r = x;  // dim * 1, dim + 0: still that dim
        } else if (x.v && ((*x.v == 1 && op == "Mul") || (*x.v == 0 && op == "Add"))) {
          r = y;
        }
        v.e.push_back(r);
      }
      out = std::move(v);
    }
    if (out && static_cast<int64_t>(out->e.size()) <= kMaxTrackedElements) vals[n.outputs[0]] = std::move(*out);
  }
  return vals;
}

// ---- Type refinement from partly known shape values. Inference only uses fully constant shape
// inputs, so Reshape(x, Concat(batch, 2, 24, 28, 28)) would get the type [?,?,?,?,?] and
// everything after it would lose its static dims; with the shape value's elements it is
// [batch,2,24,28,28].

// prod(num) / prod(den without index `skip`) when the symbols cancel: a known size, a single
// remaining symbol, or unknown.
Dim quotient(const Shape& num, const Shape& den, size_t skip) {
  int64_t c_num = 1, c_den = 1;
  std::multiset<std::string> syms;
  for (const Dim& d : num) {
    if (d.known()) {
      if (__builtin_mul_overflow(c_num, d.value, &c_num)) return Dim();
    } else if (!d.symbol.empty()) {
      syms.insert(d.symbol);
    } else {
      return Dim();
    }
  }
  for (size_t k = 0; k < den.size(); ++k) {
    if (k == skip) continue;
    const Dim& d = den[k];
    if (d.known()) {
      if (__builtin_mul_overflow(c_den, d.value, &c_den)) return Dim();
    } else if (auto it = d.symbol.empty() ? syms.end() : syms.find(d.symbol); it != syms.end()) {
      syms.erase(it);
    } else {
      return Dim();
    }
  }
  // A zero-sized tensor leaves -1 ambiguous.
  if (c_num == 0 || c_den == 0 || c_num % c_den != 0) return Dim();
  const int64_t q = c_num / c_den;
  if (syms.empty()) return Dim(q);
  if (syms.size() == 1 && q == 1) return Dim::sym(*syms.begin());
  return Dim();
}

// Output dims of Reshape(x: in, spec): 0 copies the input dim (unless allowzero), one -1 is
// resolved by cancelling symbols. nullopt for specs the kernel would reject.
std::optional<Shape> reshape_dims(const Shape* in, const Val& spec, bool allowzero) {
  if (spec.scalar) return std::nullopt;
  Shape out;
  std::optional<size_t> minus_one;
  for (size_t k = 0; k < spec.e.size(); ++k) {
    const El& e = spec.e[k];
    if (!e.v) {
      out.push_back(e.to_dim());
    } else if (*e.v == 0 && !allowzero) {
      out.push_back(in && k < in->size() ? (*in)[k] : Dim());
    } else if (*e.v == -1 && !minus_one) {
      minus_one = k;
      out.push_back(Dim());
    } else if (*e.v < 0) {
      return std::nullopt;
    } else {
      out.push_back(Dim(*e.v));
    }
  }
  if (minus_one && in) out[*minus_one] = quotient(*in, out, *minus_one);
  return out;
}

// Output dims of Expand(x: in, spec) by multidirectional broadcasting.
std::optional<Shape> expand_dims(const Shape& in, const Val& spec) {
  if (spec.scalar) return std::nullopt;
  const size_t r = std::max(in.size(), spec.e.size());
  Shape out(r);
  for (size_t i = 0; i < r; ++i) {
    const Dim a = i + in.size() >= r ? in[i + in.size() - r] : Dim(1);
    const Dim b = i + spec.e.size() >= r ? spec.e[i + spec.e.size() - r].to_dim() : Dim(1);
    if (b.known() && b.value == 1) out[i] = a;
    else if (a.known() && a.value == 1) out[i] = b;
    else if (a.known() && b.known() && a.value != b.value) return std::nullopt;
    else if (a.known()) out[i] = a;  // b must be 1 or a at run time; either way the result is a
    else if (b.known()) out[i] = b;
    else if (a == b) out[i] = a;
  }
  return out;
}

// Output dims of Range(0, n, 1), the positions of a sequence: [n].
std::optional<Shape> range_dims(const Node& n, const Vals& vals) {
  if (n.inputs.size() != 3) return std::nullopt;
  auto scalar = [&](size_t i) -> const El* {
    auto it = vals.find(n.inputs[i]);
    return it == vals.end() || !it->second.scalar ? nullptr : &it->second.e[0];
  };
  const El *start = scalar(0), *limit = scalar(1), *delta = scalar(2);
  if (!start || !limit || !delta || start->v != 0 || delta->v != 1 || limit->sym.empty()) return std::nullopt;
  return Shape{Dim::sym(limit->sym)};
}

// Fills unknown output dims of Reshape, Expand, ConstantOfShape and Range from their shape
// values. Returns the number of values whose type became more precise.
int refine_types(Graph& g, const Vals& vals) {
  int refined = 0;
  for (const Node& n : g.nodes) {
    if (!n.domain.empty() || n.outputs.empty() || n.outputs[0].empty()) continue;
    const bool reshape = n.op_type == "Reshape", expand = n.op_type == "Expand", cos = n.op_type == "ConstantOfShape";
    const bool range = n.op_type == "Range";
    if (!reshape && !expand && !cos && !range) continue;
    const size_t spec_input = cos || range ? 0 : 1;
    if (n.inputs.size() <= spec_input) continue;
    auto sv = vals.find(n.inputs[spec_input]);
    if (sv == vals.end()) continue;
    const TensorType* in_t = cos || range ? nullptr : g.type_of(n.inputs[0]);
    const Shape* in = in_t && in_t->shape ? &*in_t->shape : nullptr;
    std::optional<Shape> dims;
    if (range) {
      dims = range_dims(n, vals);
    } else if (reshape) {
      const Attribute* az = n.attr("allowzero");
      dims = reshape_dims(in, sv->second, az && az->i != 0);
    } else if (expand) {
      if (in) dims = expand_dims(*in, sv->second);
    } else if (!sv->second.scalar) {
      dims.emplace();
      for (const El& e : sv->second.e) dims->push_back(e.to_dim());
    }
    auto t = g.types.find(n.outputs[0]);
    if (!dims || t == g.types.end()) continue;
    if (!t->second.shape) {
      t->second.shape = std::move(dims);
      ++refined;
      continue;
    }
    Shape& cur = *t->second.shape;
    if (cur.size() != dims->size()) continue;  // contradicts inference: leave it alone
    bool consistent = true, changed = false;
    for (size_t k = 0; k < cur.size(); ++k)
      if (cur[k].known() && (*dims)[k].known() && cur[k].value != (*dims)[k].value) consistent = false;
    if (!consistent) continue;
    for (size_t k = 0; k < cur.size(); ++k)
      if (!cur[k].known() && cur[k].symbol.empty() && !((*dims)[k] == Dim())) {
        cur[k] = (*dims)[k];
        changed = true;
      }
    if (changed) ++refined;
  }
  return refined;
}

class ShapeSubgraphFolding : public Pass {
 public:
  std::string_view name() const override { return "shape-subgraph-folding"; }
  int min_opt_level() const override { return 1; }

  int run(Model& model, PassContext& ctx) override {
    Graph& g = model.graph;
    // Validates ctx.input_shapes up front, so a bad profile is reported even if nothing folds.
    std::optional<Model> profile;
    if (!ctx.input_shapes.empty()) profile = specialize(model, ctx);

    std::unordered_set<std::string> created;
    InferOptions options;
    options.evaluator = ctx.evaluator;
    // Phase 1 folds what holds for every input shape, refining the types of shape consumers
    // and re-inferring the types downstream of them until that exposes nothing new. Phase 2
    // then folds what the profile shapes determine, so any fold there specializes the model.
    int total = 0;
    for (int round = 0; round < kMaxRefineRounds; ++round) {
      total += fold_until_stable(model, ctx, g.types, created);
      const int refined = refine_types(g, analyze(model, g, g.types));
      if (refined == 0) break;
      total += refined;
      infer_types(model, options);
    }
    const int profile_folds = profile ? fold_until_stable(model, ctx, profile->graph.types, created) : 0;
    total += profile_folds;
    if (total == 0) return 0;
    if (profile_folds > 0)
      for (const auto& [name, dims] : ctx.input_shapes) g.types[name].shape = shape_from_dims(dims);
    remove_dead_shape_nodes(g, created);
    // Consumers of the folded values (Reshape, Expand, ...) now have constant inputs: refresh
    // the types so later passes see the static shapes.
    infer_types(model, options);
    return total;
  }

 private:
  // Replaces every fully known shape value by an initializer, then runs constant folding on
  // what that exposes, until nothing changes. Types are read from `types`.
  static int fold_until_stable(Model& model, PassContext& ctx, const Types& types,
                               std::unordered_set<std::string>& created) {
    Graph& g = model.graph;
    int total = 0;
    // Constant folding may complete further shape values (e.g. a dim cast to float, scaled and
    // cast back), hence the rounds; each folds at least one node, so they terminate.
    for (;;) {
      Vals vals = analyze(model, g, types);
      std::vector<size_t> plan;
      for (size_t i = 0; i < g.nodes.size(); ++i)
        if (foldable(g, g.nodes[i], vals, types)) plan.push_back(i);
      if (plan.empty()) break;
      // Rewrite: each planned node becomes an initializer of the same name (graph outputs and
      // consumers keep their names). Erase from the back so the planned indices stay valid.
      for (auto it = plan.rbegin(); it != plan.rend(); ++it) {
        const std::string out = g.nodes[*it].outputs[0];
        Tensor t = to_tensor(vals.at(out));
        g.types[out] = TensorType{t.dtype(), shape_from_dims(t.shape())};
        g.initializers[out] = std::move(t);
        created.insert(out);
        g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(*it));
      }
      total += static_cast<int>(plan.size());
      remove_dead_shape_nodes(g, created);
      // The same folding logic as the constant-folding pass (a no-op without ctx.evaluator).
      total += make_constant_folding()->run(model, ctx);
    }
    return total;
  }

  // A node this pass replaces by a constant: a shape op whose single result is fully known.
  static bool foldable(const Graph& g, const Node& n, const Vals& vals, const Types& types) {
    if (!n.domain.empty() || !folded_ops().count(n.op_type) || n.outputs.size() != 1 || n.outputs[0].empty())
      return false;
    if (g.is_initializer(n.outputs[0])) return false;
    auto it = vals.find(n.outputs[0]);
    if (it == vals.end() || !it->second.known()) return false;
    // Guard: the inferred dtype agrees with the computed one.
    auto t = types.find(n.outputs[0]);
    return t == types.end() || t->second.dtype == DType::kUndefined || t->second.dtype == it->second.dtype;
  }

  // Drops the shape ops and the initializers this pass created that nothing reads any more.
  static void remove_dead_shape_nodes(Graph& g, const std::unordered_set<std::string>& created) {
    std::unordered_set<std::string> live(g.outputs.begin(), g.outputs.end());
    std::vector<bool> keep(g.nodes.size(), true);
    for (size_t i = g.nodes.size(); i-- > 0;) {
      const Node& n = g.nodes[i];
      bool used = false;
      for (const auto& o : n.outputs)
        if (!o.empty() && live.count(o)) used = true;
      if (!used && n.domain.empty() && (folded_ops().count(n.op_type) || n.op_type == "Constant")) {
        keep[i] = false;
        continue;
      }
      for (const auto& in : n.inputs)
        if (!in.empty()) live.insert(in);
    }
    std::vector<Node> kept;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      if (keep[i]) {
        kept.push_back(std::move(g.nodes[i]));
      } else {
        for (const auto& o : g.nodes[i].outputs) g.types.erase(o);
      }
    }
    g.nodes = std::move(kept);
    for (const auto& name : created)
      if (!live.count(name) && g.initializers.erase(name)) g.types.erase(name);
  }

  // A copy of the model whose dynamic inputs have the profile's static shapes, with types
  // re-inferred from them (the copy shares the weights' storage).
  static Model specialize(const Model& model, const PassContext& ctx) {
    const Graph& g = model.graph;
    Model copy = model;
    for (const auto& [name, dims] : ctx.input_shapes) {
      if (std::find(g.inputs.begin(), g.inputs.end(), name) == g.inputs.end())
        throw Error(ErrorCode::kInvalidArgument, "input_shapes names '" + name + "', which is not an input of the model");
      const TensorType* t = g.type_of(name);
      if (t && t->shape) {
        bool ok = t->shape->size() == dims.size();
        for (size_t i = 0; ok && i < dims.size(); ++i)
          if (dims[i] < 0 || ((*t->shape)[i].known() && (*t->shape)[i].value != dims[i])) ok = false;
        if (!ok)
          throw Error(ErrorCode::kInvalidArgument, "input_shapes gives '" + name + "' the shape " +
                                                       shape_to_string(shape_from_dims(dims)) + ", but the model declares " +
                                                       shape_to_string(*t->shape));
      }
      copy.graph.types[name] = TensorType{t ? t->dtype : DType::kUndefined, shape_from_dims(dims)};
    }
    // Forget the symbolic types of intermediate values so inference recomputes them.
    std::unordered_set<std::string> keep(g.inputs.begin(), g.inputs.end());
    keep.insert(g.outputs.begin(), g.outputs.end());
    for (auto it = copy.graph.types.begin(); it != copy.graph.types.end();) {
      if (!keep.count(it->first) && !g.is_initializer(it->first))
        it = copy.graph.types.erase(it);
      else
        ++it;
    }
    InferOptions options;
    options.evaluator = ctx.evaluator;
    infer_types(copy, options);
    return copy;
  }
};

}  // namespace

std::unique_ptr<Pass> make_shape_subgraph_folding() { return std::make_unique<ShapeSubgraphFolding>(); }

}  // namespace kiln
