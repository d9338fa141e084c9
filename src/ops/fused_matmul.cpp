// Schemas of the kiln-domain ops made by fuse-gelu, fuse-layernorm and fuse-matmul-bias-activation:
// kiln::Gelu, kiln::LayerNormalization and kiln::FusedMatMul (Y = act(alpha * op(A) x op(B) + beta * C)).
#include <array>
#include <string_view>

#include "ops/fused_activation.h"
#include "ops/op_schema.h"
#include "ops/quant_rules.h"

namespace kiln {

namespace {

bool has_shape(const InferContext& ctx, size_t i) { return ctx.has_input(i) && ctx.input_type(i).shape.has_value(); }

void require_float_input(const InferContext& ctx, size_t i, const char* what) {
  const DType dt = ctx.input_type(i).dtype;
  if (dt != DType::kUndefined && dt != DType::kF32 && dt != DType::kF64 && dt != DType::kF16 && dt != DType::kBF16)
    ctx.fail(std::string(what) + " must be a float tensor (f32, f64, f16 or bf16), got " +
             std::string(dtype_name(dt)));
}

// Input i must have input 0's dtype (when both are known).
void require_dtype_of_first(const InferContext& ctx, size_t i, const char* what) {
  if (!ctx.has_input(i)) return;
  const DType a = ctx.input_type(0).dtype, b = ctx.input_type(i).dtype;
  if (a != DType::kUndefined && b != DType::kUndefined && a != b)
    ctx.fail(std::string(what) + " has dtype " + std::string(dtype_name(b)) + ", expected " +
             std::string(dtype_name(a)));
}

// Input i must broadcast towards `target` in one direction (rank <= target's, each known dim 1 or
// equal), so the op's output keeps the target's shape.
void require_unidirectional(const InferContext& ctx, size_t i, const Shape& target, const char* what) {
  if (!has_shape(ctx, i)) return;
  const Shape& s = *ctx.input_type(i).shape;
  bool ok = s.size() <= target.size();
  for (size_t k = 0; ok && k < s.size(); ++k) {
    const Dim& d = s[k];
    const Dim& t = target[target.size() - s.size() + k];
    ok = !(d.known() && d.value != 1 && t.known() && d.value != t.value);
  }
  if (!ok)
    ctx.fail(std::string(what) + " of shape " + shape_to_string(s) + " does not broadcast to " +
             shape_to_string(target));
}

// ---- kiln::Gelu

void infer_gelu(InferContext& ctx) {
  const std::string& approx = ctx.attr_string("approximate");
  if (approx != "none" && approx != "tanh")
    ctx.fail("approximate must be \"none\" or \"tanh\", got \"" + approx + "\"");
  require_float_input(ctx, 0, "X");
  ctx.set_output(0, ctx.input_type(0));
}

// ---- kiln::LayerNormalization

void infer_layer_norm(InferContext& ctx) {
  require_float_input(ctx, 0, "X");
  require_dtype_of_first(ctx, 1, "Scale");
  require_dtype_of_first(ctx, 2, "B");
  const TensorType& x = ctx.input_type(0);
  if (x.shape) {
    normalize_axis(ctx, ctx.attr_int("axis"), static_cast<int64_t>(x.shape->size()));
    require_unidirectional(ctx, 1, *x.shape, "Scale");
    require_unidirectional(ctx, 2, *x.shape, "B");
  }
  ctx.set_output(0, x);
}

// ---- kiln::FusedMatMul

// Activations FusedMatMul applies last, with how many activation_params each takes (same names and
// conventions as kiln::FusedConv: Clip takes exactly min,max; LeakyRelu takes alpha or nothing).
constexpr std::array<ActivationSpec, 8> kActivations = {{{"", 0, 0},
                                                         {"Relu", 0, 0},
                                                         {"Gelu", 0, 0},
                                                         {"GeluTanh", 0, 0},
                                                         {"Sigmoid", 0, 0},
                                                         {"Tanh", 0, 0},
                                                         {"LeakyRelu", 0, 1},
                                                         {"Clip", 2, 2}}};

// The shape of op(A) x op(B) with numpy matmul rules, or nullopt when either rank is unknown.
}  // namespace

// Declared in ops/quant_rules.h (kiln::QMatMul shares it).
std::optional<Shape> fused_matmul_shape(const InferContext& ctx) {
  const bool ta = ctx.attr_int("transA") != 0, tb = ctx.attr_int("transB") != 0;
  for (size_t i = 0; i < 2; ++i) {
    const bool trans = i == 0 ? ta : tb;
    if (trans && has_shape(ctx, i) && ctx.input_type(i).shape->size() != 2)
      ctx.fail(std::string(i == 0 ? "transA" : "transB") + " needs a 2-D " + (i == 0 ? "A" : "B") + ", got " +
               shape_to_string(*ctx.input_type(i).shape));
  }
  if (!has_shape(ctx, 0) || !has_shape(ctx, 1)) return std::nullopt;
  Shape a = *ctx.input_type(0).shape, b = *ctx.input_type(1).shape;
  if (a.empty() || b.empty()) ctx.fail("A and B must have rank >= 1 (scalars are not allowed)");
  if (ta) std::swap(a[0], a[1]);
  if (tb) std::swap(b[0], b[1]);
  const bool a_vec = a.size() == 1, b_vec = b.size() == 1;
  if (a_vec) a.insert(a.begin(), Dim(1));
  if (b_vec) b.push_back(Dim(1));
  const Dim& ka = a.back();
  const Dim& kb = b[b.size() - 2];
  if (ka.known() && kb.known() && ka.value != kb.value)
    ctx.fail("inner dimensions do not match: op(A) is " + shape_to_string(a) + ", op(B) is " + shape_to_string(b));
  Shape out = broadcast_shapes(ctx, {Shape(a.begin(), a.end() - 2), Shape(b.begin(), b.end() - 2)});
  if (!a_vec) out.push_back(a[a.size() - 2]);
  if (!b_vec) out.push_back(b.back());
  return out;
}

namespace {

void infer_fused_matmul(InferContext& ctx) {
  check_activation(ctx, kActivations);
  // "bf16": the CPU tactics multiply in bfloat16 (tensors stay as typed; the reference ignores it).
  if (const std::string& p = ctx.attr_string("compute_precision"); !p.empty() && p != "bf16")
    ctx.fail("compute_precision must be \"\" (float32) or \"bf16\", got \"" + p + "\"");
  for (const char* flag : {"transA", "transB"}) {
    const int64_t v = ctx.attr_int(flag);
    if (v != 0 && v != 1) ctx.fail(std::string(flag) + " must be 0 or 1, got " + std::to_string(v));
  }
  require_float_input(ctx, 0, "A");
  require_dtype_of_first(ctx, 1, "B");
  require_dtype_of_first(ctx, 2, "C");
  const DType dt = ctx.input_type(0).dtype;
  const auto shape = fused_matmul_shape(ctx);
  if (!shape) {
    ctx.set_output_unknown_shape(0, dt);
    return;
  }
  require_unidirectional(ctx, 2, *shape, "C");
  ctx.set_output(0, dt, *shape);
}

}  // namespace

void register_fused_matmul_schemas(OpRegistry& r) {
  const AttrSpec fused_ops = attr_optional("fused_ops", AttrKind::kStrings);
  r.add({.domain = "kiln", .name = "Gelu", .since_version = 1,
         .attrs = {attr_string("approximate", "none"), fused_ops}, .infer = infer_gelu,
         .doc = "X * Phi(X): 0.5 X (1 + erf(X / sqrt 2)), or the tanh approximation"});
  r.add({.domain = "kiln", .name = "LayerNormalization", .since_version = 1, .min_inputs = 2, .max_inputs = 3,
         .attrs = {attr_int("axis", -1), attr_float("epsilon", 1e-5f), fused_ops}, .infer = infer_layer_norm,
         .doc = "(X - mean) / sqrt(var + epsilon) * Scale + B over the trailing axes from 'axis' (Y only)"});
  r.add({.domain = "kiln", .name = "FusedMatMul", .since_version = 1, .min_inputs = 2, .max_inputs = 3,
         .attrs = {attr_int("transA", 0), attr_int("transB", 0), attr_float("alpha", 1.0f), attr_float("beta", 1.0f),
                   attr_string("activation", ""), attr_floats("activation_params"),
                   attr_string("compute_precision", ""), fused_ops},
         .infer = infer_fused_matmul,
         .doc = "act(alpha * op(A) x op(B) + beta * C): numpy matmul batching, C broadcast to the output; "
                "compute_precision \"bf16\" multiplies in bfloat16 with float32 accumulation"});
}

}  // namespace kiln
