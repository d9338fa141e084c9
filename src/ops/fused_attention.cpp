// Schemas of the kiln-domain ops introduced by fuse-attention and fuse-elementwise-chains:
// kiln::Attention and kiln::ElementwiseChain (domain "kiln", version 1).
//
// kiln::Attention(Q, K, V [, mask]) -> Y
//   Q [B, Sq, H*Dk], K [B, Sk, H*Dk], V [B, Sk, H*Dv]; mask (optional) an additive float mask that
//   broadcasts (numpy rules, right-aligned) to [B, H, Sq, Sk]. Attributes: num_heads = H (int,
//   required), scale (float; 0 means 1/sqrt(Dk)). For every batch b and head h:
//     S = Q_h K_h^T * scale + mask[b, h],  P = softmax(S) over Sk,  Y_h = P V_h
//   where Q_h = Q[b, :, h*Dk:(h+1)*Dk] (likewise K_h, V_h) and Y [B, Sq, H*Dv] concatenates the heads
//   along the last dim: the layout HF BERT/GPT produce right before the output projection.
//   Softmax is max-subtracted like ai.onnx Softmax, so a row that is -inf everywhere gives NaN, as
//   the unfused graph does.
//
// kiln::ElementwiseChain(X, E1, ..., En) -> Y
//   A chain of elementwise ops applied to one "main" tensor X. Y has X's shape and dtype (a float
//   type). The extra inputs E1..En (constants or other tensors) broadcast unidirectionally onto X's
//   shape and share X's dtype. Attributes:
//     ops    (strings, required): steps applied in order to an accumulator `acc` that starts as X:
//              "Sqrt" "Exp" "Log" "Erf" "Tanh" "Sigmoid" "Relu" "Neg" "Abs" "Reciprocal":
//                                    acc = f(acc)
//              "LeakyRelu":          acc = acc < 0 ? alpha * acc : acc      (1 param: alpha)
//              "Clip":               acc = min(max(acc, lo), hi)           (2 params: lo, hi;
//                                    -inf / +inf mean "no bound", as an omitted Clip input)
//              "<Bin>:k"             acc = acc <Bin> input[k]               Bin in Add Sub Mul Div Pow
//              "<Bin>:k:r"           acc = input[k] <Bin> acc               (reversed operand order)
//            k is an input index of this node: 0 names X itself (as in x * sigmoid(x)), 1..n the
//            extra inputs.
//     params (floats, optional): the per-step constants, consumed in step order (LeakyRelu takes
//            one, Clip two, every other step none); their count must match exactly.
//   Every step rounds to the element type, exactly like the unfused ops, so a backend can compile
//   the chain into one loop: for each element i of Y, acc = X[i]; run the steps, reading input k
//   at i's broadcast offset; Y[i] = acc.
#include <string>

#include "ops/op_schema.h"

namespace kiln {

namespace {

bool is_float_type(DType dt) {
  return dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16 || dt == DType::kF64;
}

// Fails unless the present inputs of known dtype share one float dtype; returns it.
DType common_float_dtype(const InferContext& ctx) {
  DType dt = DType::kUndefined;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    if (!ctx.has_input(i)) continue;
    const DType d = ctx.input_type(i).dtype;
    if (d == DType::kUndefined) continue;
    if (!is_float_type(d))
      ctx.fail("input " + std::to_string(i) + " has dtype " + std::string(dtype_name(d)) + ", expected a float type");
    if (dt != DType::kUndefined && d != dt)
      ctx.fail("inputs have different dtypes " + std::string(dtype_name(dt)) + " and " + std::string(dtype_name(d)));
    dt = d;
  }
  return dt;
}

// Dims that may disagree only when both are known.
bool dims_conflict(const Dim& a, const Dim& b) { return a.known() && b.known() && a.value != b.value; }

// ---- kiln::Attention

void infer_attention(InferContext& ctx) {
  const int64_t heads = ctx.attr_int("num_heads");
  if (heads <= 0) ctx.fail("num_heads must be positive, got " + std::to_string(heads));
  const DType dt = common_float_dtype(ctx);
  const char* names[] = {"Q", "K", "V", "mask"};
  for (size_t i = 0; i < 3; ++i) {
    const TensorType& t = ctx.input_type(i);
    if (t.shape && t.shape->size() != 3)
      ctx.fail(std::string(names[i]) + " must have rank 3 [batch, seq, heads*head_size], got " +
               shape_to_string(*t.shape));
  }
  auto shape = [&](size_t i) -> const Shape* {
    const TensorType& t = ctx.input_type(i);
    return t.shape ? &*t.shape : nullptr;
  };
  const Shape* q = shape(0);
  const Shape* k = shape(1);
  const Shape* v = shape(2);
  auto check_heads = [&](const Shape* s, const char* what) {
    if (s && (*s)[2].known() && (*s)[2].value % heads != 0)
      ctx.fail(std::string(what) + "'s last dim " + std::to_string((*s)[2].value) + " is not a multiple of num_heads " +
               std::to_string(heads));
  };
  check_heads(q, "Q");
  check_heads(k, "K");
  check_heads(v, "V");
  if (q && k && dims_conflict((*q)[2], (*k)[2]))
    ctx.fail("Q and K have different hidden sizes: " + shape_to_string(*q) + " vs " + shape_to_string(*k));
  if (k && v && dims_conflict((*k)[1], (*v)[1]))
    ctx.fail("K and V have different sequence lengths: " + shape_to_string(*k) + " vs " + shape_to_string(*v));
  for (const Shape* s : {k, v})
    if (q && s && dims_conflict((*q)[0], (*s)[0]))
      ctx.fail("Q, K and V must share the batch size: " + shape_to_string(*q) + " vs " + shape_to_string(*s));
  if (ctx.has_input(3) && ctx.input_type(3).shape) {
    // The mask must broadcast to [B, H, Sq, Sk] without enlarging it.
    const Shape& m = *ctx.input_type(3).shape;
    if (m.size() > 4) ctx.fail("mask must have rank <= 4, got " + shape_to_string(m));
    const Shape full = {q ? (*q)[0] : Dim(), Dim(heads), q ? (*q)[1] : Dim(), k ? (*k)[1] : Dim()};
    for (size_t i = 0; i < m.size(); ++i) {
      const Dim& d = m[i];
      const Dim& f = full[4 - m.size() + i];
      if (d.known() && d.value != 1 && dims_conflict(d, f))
        ctx.fail("mask of shape " + shape_to_string(m) + " does not broadcast to [batch, heads, Sq, Sk] = " +
                 shape_to_string(full));
    }
  }
  ctx.set_output(0, dt, Shape{q ? (*q)[0] : Dim(), q ? (*q)[1] : Dim(), v ? (*v)[2] : Dim()});
}

// ---- kiln::ElementwiseChain

bool is_chain_unary(const std::string& op) {
  for (const char* u : {"Sqrt", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu", "Neg", "Abs", "Reciprocal"})
    if (op == u) return true;
  return false;
}
bool is_chain_binary(const std::string& op) {
  return op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Pow";
}

// Validates the ops/params encoding described at the top of this file.
void check_chain_encoding(const NodeView& ctx, size_t num_inputs) {
  const auto& ops = ctx.attr_strings("ops");
  const auto& params = ctx.attr_floats("params");
  size_t used_params = 0;
  for (const std::string& step : ops) {
    const size_t c1 = step.find(':');
    const std::string op = step.substr(0, c1);
    if (is_chain_unary(op) || op == "LeakyRelu" || op == "Clip") {
      if (c1 != std::string::npos) ctx.fail("step '" + step + "': a unary op takes no operand index");
      used_params += op == "LeakyRelu" ? 1 : op == "Clip" ? 2 : 0;
      continue;
    }
    if (!is_chain_binary(op)) ctx.fail("step '" + step + "': unsupported op '" + op + "'");
    if (c1 == std::string::npos) ctx.fail("step '" + step + "': a binary op needs an operand index (\"" + op + ":k\")");
    const size_t c2 = step.find(':', c1 + 1);
    const std::string index = step.substr(c1 + 1, c2 == std::string::npos ? std::string::npos : c2 - c1 - 1);
    if (c2 != std::string::npos && step.substr(c2 + 1) != "r")
      ctx.fail("step '" + step + "': the only operand flag is \":r\" (reversed)");
    if (index.empty() || index.find_first_not_of("0123456789") != std::string::npos || index.size() > 6 ||
        std::stoul(index) >= num_inputs)
      ctx.fail("step '" + step + "': operand index must name one of the node's " + std::to_string(num_inputs) +
               " inputs");
  }
  if (used_params != params.size())
    ctx.fail("ops take " + std::to_string(used_params) + " params, but params has " + std::to_string(params.size()));
}

void infer_elementwise_chain(InferContext& ctx) {
  check_chain_encoding(ctx, ctx.num_inputs());
  const DType dt = common_float_dtype(ctx);
  const TensorType& x = ctx.input_type(0);
  if (x.shape) {
    const Shape& xs = *x.shape;
    for (size_t i = 1; i < ctx.num_inputs(); ++i) {
      if (!ctx.has_input(i) || !ctx.input_type(i).shape) continue;
      const Shape& es = *ctx.input_type(i).shape;
      bool ok = es.size() <= xs.size();
      for (size_t k = 0; ok && k < es.size(); ++k) {
        const Dim& e = es[k];
        ok = !(e.known() && e.value != 1 && dims_conflict(e, xs[xs.size() - es.size() + k]));
      }
      if (!ok)
        ctx.fail("input " + std::to_string(i) + " of shape " + shape_to_string(es) +
                 " does not broadcast onto the main input's shape " + shape_to_string(xs));
    }
  }
  ctx.set_output(0, TensorType{dt, x.shape});
}

}  // namespace

void register_fused_attention_schemas(OpRegistry& r) {
  r.add({.domain = "kiln",
         .name = "Attention",
         .since_version = 1,
         .min_inputs = 3,
         .max_inputs = 4,
         .attrs = {attr_required("num_heads", AttrKind::kInt), attr_float("scale", 0.0f)},
         .infer = infer_attention,
         .doc = "multi-head attention: per head softmax(Q K^T * scale + mask) V, heads concatenated"});
  r.add({.domain = "kiln",
         .name = "ElementwiseChain",
         .since_version = 1,
         .min_inputs = 1,
         .max_inputs = OpSchema::kVariadic,
         .attrs = {attr_required("ops", AttrKind::kStrings), attr_floats("params")},
         .infer = infer_elementwise_chain,
         .doc = "a chain of unary/binary elementwise ops on one main tensor, extra operands broadcast onto it"});
}

}  // namespace kiln
