// Schemas of elementwise, comparison and logic ops, and Cast/CastLike.
#include <cfloat>

#include "ops/op_schema.h"

namespace kiln {

namespace {

// ---- dtype classes, as bit sets over DType, so schemas can say which dtypes an op accepts.

constexpr uint32_t bit(DType d) { return 1u << static_cast<unsigned>(d); }
constexpr uint32_t kFloatT = bit(DType::kF32) | bit(DType::kF64) | bit(DType::kF16) | bit(DType::kBF16);
constexpr uint32_t kSignedIntT = bit(DType::kI8) | bit(DType::kI16) | bit(DType::kI32) | bit(DType::kI64);
constexpr uint32_t kUnsignedIntT = bit(DType::kU8) | bit(DType::kU16) | bit(DType::kU32) | bit(DType::kU64);
constexpr uint32_t kIntT = kSignedIntT | kUnsignedIntT;
constexpr uint32_t kNumericT = kFloatT | kIntT;
constexpr uint32_t kBoolT = bit(DType::kBool);
constexpr uint32_t kSignedT = kFloatT | kSignedIntT;
constexpr uint32_t kFp8T = bit(DType::kF8E4M3FN) | bit(DType::kF8E5M2);

std::string mask_names(uint32_t mask) {
  std::string s;
  for (unsigned d = 0; d < 32; ++d)
    if (mask & (1u << d)) s += (s.empty() ? "" : ", ") + std::string(dtype_name(static_cast<DType>(d)));
  return s;
}

// Fails unless input i (when present and of known dtype) has a dtype in `mask`.
void check_dtype(const InferContext& ctx, size_t i, uint32_t mask) {
  if (!ctx.has_input(i)) return;
  DType dt = ctx.input_type(i).dtype;
  if (dt == DType::kUndefined || (mask & bit(dt))) return;
  if (dt == DType::kString || (kFp8T & bit(dt)))
    ctx.unsupported("input " + std::to_string(i) + " has dtype " + std::string(dtype_name(dt)) +
                    ", which this op does not compute on (supported: " + mask_names(mask) + ")");
  ctx.fail("input " + std::to_string(i) + " has dtype " + std::string(dtype_name(dt)) +
           ", expected one of " + mask_names(mask));
}

// Fails unless the present inputs in [first, last) of known dtype all share one dtype; returns it.
DType common_dtype(const InferContext& ctx, size_t first, size_t last) {
  DType dt = DType::kUndefined;
  size_t where = first;
  for (size_t i = first; i < last && i < ctx.num_inputs(); ++i) {
    if (!ctx.has_input(i)) continue;
    DType d = ctx.input_type(i).dtype;
    if (d == DType::kUndefined) continue;
    if (dt == DType::kUndefined) {
      dt = d;
      where = i;
    } else if (d != dt) {
      ctx.fail("inputs " + std::to_string(where) + " and " + std::to_string(i) + " have different dtypes " +
               std::string(dtype_name(dt)) + " and " + std::string(dtype_name(d)));
    }
  }
  return dt;
}

// Broadcast shape of the present inputs in [first, last), or nullopt if any has unknown rank.
std::optional<Shape> broadcast_inputs(const InferContext& ctx, size_t first, size_t last) {
  std::vector<Shape> shapes;
  for (size_t i = first; i < last && i < ctx.num_inputs(); ++i) {
    if (!ctx.has_input(i)) continue;
    const TensorType& t = ctx.input_type(i);
    if (!t.shape) return std::nullopt;
    shapes.push_back(*t.shape);
  }
  return broadcast_shapes(ctx, shapes);
}

void set_output(InferContext& ctx, DType dt, std::optional<Shape> shape) {
  if (shape) ctx.set_output(0, dt, std::move(*shape));
  else ctx.set_output_unknown_shape(0, dt);
}

// Elementwise op over all inputs with numpy broadcasting; all inputs share a dtype in `mask`;
// the output has that dtype, or bool when `bool_out`.
InferFn infer_broadcast(uint32_t mask, bool bool_out = false) {
  return [mask, bool_out](InferContext& ctx) {
    for (size_t i = 0; i < ctx.num_inputs(); ++i) check_dtype(ctx, i, mask);
    DType dt = common_dtype(ctx, 0, ctx.num_inputs());
    set_output(ctx, bool_out ? DType::kBool : dt, broadcast_inputs(ctx, 0, ctx.num_inputs()));
  };
}

// One input, output of the same shape with the input's dtype (or bool).
InferFn infer_unary(uint32_t mask, bool bool_out = false) {
  return [mask, bool_out](InferContext& ctx) {
    check_dtype(ctx, 0, mask);
    const TensorType& t = ctx.input_type(0);
    set_output(ctx, bool_out ? DType::kBool : t.dtype, t.shape);
  };
}

// Checks the shape of a Clip bound input (a scalar; a one-element 1-D tensor is tolerated).
void check_scalar_input(const InferContext& ctx, size_t i, const char* what) {
  if (!ctx.has_input(i)) return;
  const TensorType& t = ctx.input_type(i);
  if (!t.shape || t.shape->empty()) return;
  if (t.shape->size() == 1 && (!(*t.shape)[0].known() || (*t.shape)[0].value == 1)) return;
  ctx.fail(std::string(what) + " must be a scalar, got shape " + shape_to_string(*t.shape));
}

InferFn infer_clip(uint32_t mask) {
  return [mask](InferContext& ctx) {
    check_dtype(ctx, 0, mask);
    if (ctx.opset() >= 11) {
      common_dtype(ctx, 0, 3);
      check_scalar_input(ctx, 1, "min");
      check_scalar_input(ctx, 2, "max");
    }
    ctx.set_output(0, ctx.input_type(0));
  };
}

void infer_prelu(InferContext& ctx) {
  check_dtype(ctx, 0, kSignedT | kUnsignedIntT);
  DType dt = common_dtype(ctx, 0, 2);
  const TensorType& x = ctx.input_type(0);
  const TensorType& slope = ctx.input_type(1);
  // Slope broadcasts unidirectionally to X: the output always has X's shape.
  if (x.shape && slope.shape) {
    const Shape& xs = *x.shape;
    const Shape& ss = *slope.shape;
    if (ss.size() > xs.size())
      ctx.fail("slope of shape " + shape_to_string(ss) + " does not broadcast to X of shape " + shape_to_string(xs));
    for (size_t k = 0; k < ss.size(); ++k) {
      const Dim& s = ss[k];
      const Dim& d = xs[xs.size() - ss.size() + k];
      if (s.known() && s.value != 1 && d.known() && s.value != d.value)
        ctx.fail("slope of shape " + shape_to_string(ss) + " does not broadcast to X of shape " + shape_to_string(xs));
    }
  }
  set_output(ctx, dt, x.shape);
}

// PRelu-6 (from Caffe2): a slope of one element is shared; a 1-D slope of X's channel count
// (dim 1) applies per channel; anything else must broadcast unidirectionally to X.
void infer_prelu_legacy(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  const TensorType& slope = ctx.input_type(1);
  if (x.shape && slope.shape && slope.shape->size() == 1 && x.shape->size() >= 2) {
    const Dim& s = (*slope.shape)[0];
    const Dim& c = (*x.shape)[1];
    if (s.known() && c.known() && s.value == c.value) {
      check_dtype(ctx, 0, kSignedT | kUnsignedIntT);
      set_output(ctx, common_dtype(ctx, 0, 2), x.shape);
      return;
    }
  }
  infer_prelu(ctx);
}

// Opset 6 and older of the binary ops: B is broadcast to A's shape only when broadcast=1, either by
// suffix matching or aligned at `axis`; with broadcast=0 the shapes must be equal.
InferFn infer_legacy_binary(uint32_t mask, bool bool_out = false) {
  return [mask, bool_out](InferContext& ctx) {
    check_dtype(ctx, 0, mask);
    check_dtype(ctx, 1, mask);
    DType dt = common_dtype(ctx, 0, 2);
    const TensorType& a = ctx.input_type(0);
    const TensorType& b = ctx.input_type(1);
    if (a.shape && b.shape) {
      const Shape& as = *a.shape;
      const Shape& bs = *b.shape;
      const int64_t ra = static_cast<int64_t>(as.size()), rb = static_cast<int64_t>(bs.size());
      auto mismatch = [&] {
        ctx.fail("B of shape " + shape_to_string(bs) + " cannot be broadcast to A of shape " + shape_to_string(as) +
                 " (broadcast=" + std::to_string(ctx.attr_int("broadcast")) + ")");
      };
      if (rb > ra) mismatch();
      int64_t axis = ra - rb;
      if (ctx.attr_int("broadcast") == 0) {
        if (rb != ra) mismatch();
      } else if (auto ax = ctx.attr_int_opt("axis")) {
        axis = *ax < 0 ? *ax + ra : *ax;
        if (axis < 0 || axis + rb > ra) mismatch();
      }
      bool all_ones = true;
      for (const Dim& d : bs) all_ones = all_ones && d.known() && d.value == 1;
      if (ctx.attr_int("broadcast") == 0 || !all_ones)
        for (int64_t k = 0; k < rb; ++k) {
          const Dim& d = bs[k];
          const Dim& e = as[axis + k];
          if (d.known() && e.known() && d.value != e.value && !(d.value == 1 && ctx.attr_int("broadcast") != 0))
            mismatch();
        }
    }
    set_output(ctx, bool_out ? DType::kBool : dt, a.shape);
  };
}

void infer_where(InferContext& ctx) {
  check_dtype(ctx, 0, kBoolT);
  DType dt = common_dtype(ctx, 1, 3);
  set_output(ctx, dt, broadcast_inputs(ctx, 0, 3));
}

InferFn infer_pow() {
  return [](InferContext& ctx) {
    if (ctx.opset() < 12) {  // Pow-7: base and exponent share one float dtype
      check_dtype(ctx, 0, kFloatT);
      check_dtype(ctx, 1, kFloatT);
      common_dtype(ctx, 0, 2);
    } else {
      check_dtype(ctx, 0, kNumericT);
      check_dtype(ctx, 1, kNumericT);
    }
    set_output(ctx, ctx.input_type(0).dtype, broadcast_inputs(ctx, 0, 2));
  };
}

void infer_mod(InferContext& ctx) {
  check_dtype(ctx, 0, kNumericT);
  DType dt = common_dtype(ctx, 0, 2);
  const int64_t fmod = ctx.attr_int("fmod");
  if (fmod != 0 && fmod != 1) ctx.fail("fmod must be 0 or 1, got " + std::to_string(fmod));
  if (fmod == 0 && dt != DType::kUndefined && (kFloatT & bit(dt)))
    ctx.fail("fmod must be 1 for floating-point inputs (dtype " + std::string(dtype_name(dt)) + ")");
  set_output(ctx, dt, broadcast_inputs(ctx, 0, 2));
}

void infer_bitshift(InferContext& ctx) {
  const std::string& dir = ctx.attr_string("direction");
  if (dir != "LEFT" && dir != "RIGHT") ctx.fail("direction must be \"LEFT\" or \"RIGHT\", got \"" + dir + "\"");
  infer_broadcast(kUnsignedIntT)(ctx);
}

void infer_gelu(InferContext& ctx) {
  const std::string& approx = ctx.attr_string("approximate");
  if (approx != "none" && approx != "tanh")
    ctx.fail("approximate must be \"none\" or \"tanh\", got \"" + approx + "\"");
  infer_unary(kFloatT)(ctx);
}

// The target of Cast's `to`: a Kiln dtype, or a clear error for ONNX types Kiln lacks.
DType cast_target(const InferContext& ctx) {
  const int64_t to = ctx.attr_int("to");
  DType dt = dtype_from_onnx(static_cast<int>(to));
  if (dt != DType::kUndefined) return dt;
  if (to == 14 || to == 15 || (to >= 18 && to <= 23))
    ctx.unsupported("cast to ONNX data type " + std::to_string(to) +
                    " (complex, fp8 *FNUZ, int4 or fp4) is not supported");
  ctx.fail("'to' is not a valid ONNX data type: " + std::to_string(to));
}

constexpr uint32_t kCastT = kNumericT | kBoolT | kFp8T | bit(DType::kString);

void infer_cast(InferContext& ctx) {
  check_dtype(ctx, 0, kCastT);
  DType to = cast_target(ctx);
  set_output(ctx, to, ctx.input_type(0).shape);
}

void infer_cast_like(InferContext& ctx) {
  check_dtype(ctx, 0, kCastT);
  check_dtype(ctx, 1, kCastT);
  set_output(ctx, ctx.input_type(1).dtype, ctx.input_type(0).shape);
}

constexpr int kVar = OpSchema::kVariadic;

}  // namespace

void register_elementwise_schemas(OpRegistry& r) {
  // ---- Binary arithmetic. Opsets 1-6 used a `broadcast` attribute instead of numpy broadcasting.
  // Legacy broadcasting, opset 6 (opsets 1-5 versions also carried consumed_inputs and, as for
  // the unary ops, are not covered).
  const AttrSpec legacy_broadcast = attr_int("broadcast", 0), legacy_axis = attr_optional("axis", AttrKind::kInt);
  for (const char* op : {"Add", "Sub", "Mul", "Div"})
    r.add({.name = op, .since_version = 6, .until_version = 6, .min_inputs = 2, .max_inputs = 2,
           .attrs = {legacy_broadcast, legacy_axis}, .infer = infer_legacy_binary(kNumericT),
           .doc = "elementwise arithmetic; B broadcast to A only with broadcast=1 (legacy rules)"});
  r.add({.name = "Pow", .since_version = 1, .until_version = 6, .min_inputs = 2, .max_inputs = 2,
         .attrs = {legacy_broadcast, legacy_axis}, .infer = infer_legacy_binary(kFloatT),
         .doc = "X ^ Y; Y broadcast to X only with broadcast=1 (legacy rules)"});
  for (const char* op : {"And", "Or", "Xor"})
    r.add({.name = op, .since_version = 1, .until_version = 6, .min_inputs = 2, .max_inputs = 2,
           .attrs = {legacy_broadcast, legacy_axis}, .infer = infer_legacy_binary(kBoolT),
           .doc = "logical op; B broadcast to A only with broadcast=1 (legacy rules)"});
  r.add({.name = "Equal", .since_version = 1, .until_version = 6, .min_inputs = 2, .max_inputs = 2,
         .attrs = {legacy_broadcast, legacy_axis}, .infer = infer_legacy_binary(kIntT | kBoolT, true),
         .doc = "A == B; B broadcast to A only with broadcast=1 (legacy rules)"});
  for (const char* op : {"Less", "Greater"})
    r.add({.name = op, .since_version = 1, .until_version = 6, .min_inputs = 2, .max_inputs = 2,
           .attrs = {legacy_broadcast, legacy_axis}, .infer = infer_legacy_binary(kFloatT, true),
           .doc = "comparison; B broadcast to A only with broadcast=1 (legacy rules)"});
  r.add({.name = "PRelu", .since_version = 6, .until_version = 6, .min_inputs = 2, .max_inputs = 2,
         .infer = infer_prelu_legacy, .doc = "X < 0 ? slope * X : X, slope shared, per channel or broadcast"});

  // From opset 7 numpy broadcasting; type-only revisions (13: bf16, 14: 8/16-bit ints) share one entry.
  r.add({.name = "Add", .since_version = 7, .min_inputs = 2, .max_inputs = 2, .infer = infer_broadcast(kNumericT),
         .doc = "A + B with numpy broadcasting"});
  r.add({.name = "Sub", .since_version = 7, .min_inputs = 2, .max_inputs = 2, .infer = infer_broadcast(kNumericT),
         .doc = "A - B with numpy broadcasting"});
  r.add({.name = "Mul", .since_version = 7, .min_inputs = 2, .max_inputs = 2, .infer = infer_broadcast(kNumericT),
         .doc = "A * B with numpy broadcasting"});
  r.add({.name = "Div", .since_version = 7, .min_inputs = 2, .max_inputs = 2, .infer = infer_broadcast(kNumericT),
         .doc = "A / B with numpy broadcasting; integer division truncates toward zero"});
  r.add({.name = "Pow", .since_version = 7, .until_version = 11, .min_inputs = 2, .max_inputs = 2,
         .infer = infer_pow(), .doc = "X ^ Y with numpy broadcasting (same float dtype)"});
  r.add({.name = "Pow", .since_version = 12, .min_inputs = 2, .max_inputs = 2, .infer = infer_pow(),
         .doc = "X ^ Y with numpy broadcasting; Y may have another numeric dtype; output has X's dtype"});
  r.add({.name = "Mod", .since_version = 10, .min_inputs = 2, .max_inputs = 2, .attrs = {attr_int("fmod", 0)},
         .infer = infer_mod, .doc = "remainder: sign of the divisor (fmod=0) or of the dividend (fmod=1)"});
  r.add({.name = "BitShift", .since_version = 11, .min_inputs = 2, .max_inputs = 2,
         .attrs = {attr_required("direction", AttrKind::kString)}, .infer = infer_bitshift,
         .doc = "X << Y or X >> Y on unsigned integers, with broadcasting"});
  r.add({.name = "PRelu", .since_version = 7, .min_inputs = 2, .max_inputs = 2, .infer = infer_prelu,
         .doc = "X < 0 ? slope * X : X, slope broadcast unidirectionally to X"});

  // ---- Variadic. Opsets 6-7 required equal shapes; broadcasting (from 8) is a superset, so one
  // entry covers both. Min/Max gained integer types at 12.
  r.add({.name = "Min", .since_version = 6, .min_inputs = 1, .max_inputs = kVar, .infer = infer_broadcast(kNumericT),
         .doc = "elementwise minimum of the inputs, with broadcasting"});
  r.add({.name = "Max", .since_version = 6, .min_inputs = 1, .max_inputs = kVar, .infer = infer_broadcast(kNumericT),
         .doc = "elementwise maximum of the inputs, with broadcasting"});
  r.add({.name = "Sum", .since_version = 6, .min_inputs = 1, .max_inputs = kVar, .infer = infer_broadcast(kNumericT),
         .doc = "elementwise sum of the inputs, with broadcasting"});
  r.add({.name = "Mean", .since_version = 6, .min_inputs = 1, .max_inputs = kVar, .infer = infer_broadcast(kFloatT),
         .doc = "elementwise mean of the inputs, with broadcasting"});

  // ---- Unary math. Revisions 6 (dropped consumed_inputs), 13 (bf16) and 14/16 (more types) keep
  // the semantics, so each op has one entry.
  const struct {
    const char* name;
    int since;
    uint32_t types;
    const char* doc;
  } unary[] = {
      {"Sqrt", 6, kFloatT, "sqrt(X)"},
      {"Exp", 6, kFloatT, "exp(X)"},
      {"Log", 6, kFloatT, "log(X)"},
      {"Erf", 9, kNumericT, "erf(X)"},
      {"Tanh", 6, kFloatT, "tanh(X)"},
      {"Sigmoid", 6, kFloatT, "1 / (1 + exp(-X))"},
      {"Relu", 6, kSignedT, "max(X, 0)"},
      {"HardSwish", 14, kFloatT, "X * max(0, min(1, X / 6 + 0.5))"},
      {"Abs", 6, kNumericT, "|X|"},
      {"Neg", 6, kSignedT, "-X"},
      {"Reciprocal", 6, kFloatT, "1 / X"},
      {"Floor", 6, kFloatT, "floor(X)"},
      {"Ceil", 6, kFloatT, "ceil(X)"},
      {"Round", 11, kFloatT, "X rounded to the nearest integer, halves to even"},
      {"Sign", 9, kNumericT, "-1, 0 or 1 by the sign of X"},
      {"Sin", 7, kFloatT, "sin(X)"},
      {"Cos", 7, kFloatT, "cos(X)"},
      {"Tan", 7, kFloatT, "tan(X)"},
      {"Asin", 7, kFloatT, "asin(X)"},
      {"Acos", 7, kFloatT, "acos(X)"},
      {"Atan", 7, kFloatT, "atan(X)"},
      {"Sinh", 9, kFloatT, "sinh(X)"},
      {"Cosh", 9, kFloatT, "cosh(X)"},
      {"Asinh", 9, kFloatT, "asinh(X)"},
      {"Acosh", 9, kFloatT, "acosh(X)"},
      {"Atanh", 9, kFloatT, "atanh(X)"},
      {"Softplus", 1, kFloatT, "log(1 + exp(X))"},
      {"Softsign", 1, kFloatT, "X / (1 + |X|)"},
      {"Mish", 18, kFloatT, "X * tanh(softplus(X))"},
  };
  for (const auto& u : unary)
    r.add({.name = u.name, .since_version = u.since, .infer = infer_unary(u.types), .doc = u.doc});

  r.add({.name = "LeakyRelu", .since_version = 6, .attrs = {attr_float("alpha", 0.01f)}, .infer = infer_unary(kFloatT),
         .doc = "X < 0 ? alpha * X : X"});
  r.add({.name = "Elu", .since_version = 6, .attrs = {attr_float("alpha", 1.0f)}, .infer = infer_unary(kFloatT),
         .doc = "X < 0 ? alpha * (exp(X) - 1) : X"});
  r.add({.name = "Selu", .since_version = 6,
         .attrs = {attr_float("alpha", 1.67326319217681884765625f), attr_float("gamma", 1.05070102214813232421875f)},
         .infer = infer_unary(kFloatT), .doc = "gamma * (X <= 0 ? alpha * (exp(X) - 1) : X)"});
  r.add({.name = "Celu", .since_version = 12, .attrs = {attr_float("alpha", 1.0f)}, .infer = infer_unary(kFloatT),
         .doc = "max(0, X) + min(0, alpha * (exp(X / alpha) - 1))"});
  r.add({.name = "Gelu", .since_version = 20, .attrs = {attr_string("approximate", "none")}, .infer = infer_gelu,
         .doc = "X * Phi(X), exact (erf) or with the tanh approximation"});
  r.add({.name = "HardSigmoid", .since_version = 6, .attrs = {attr_float("alpha", 0.2f), attr_float("beta", 0.5f)},
         .infer = infer_unary(kFloatT), .doc = "max(0, min(1, alpha * X + beta))"});
  r.add({.name = "ThresholdedRelu", .since_version = 10, .attrs = {attr_float("alpha", 1.0f)},
         .infer = infer_unary(kFloatT), .doc = "X > alpha ? X : 0"});
  r.add({.name = "Shrink", .since_version = 9, .attrs = {attr_float("bias", 0.0f), attr_float("lambd", 0.5f)},
         .infer = infer_unary(kNumericT), .doc = "X < -lambd ? X + bias : X > lambd ? X - bias : 0"});
  r.add({.name = "IsNaN", .since_version = 9, .infer = infer_unary(kFloatT, true), .doc = "X is NaN"});
  r.add({.name = "IsInf",
         .since_version = 10,
         .attrs = {attr_int("detect_negative", 1), attr_int("detect_positive", 1)},
         .infer = infer_unary(kFloatT, true),
         .doc = "X is +inf (detect_positive) or -inf (detect_negative)"});

  // Clip: bounds are attributes before 11, optional scalar inputs from 11; integer types from 12.
  r.add({.name = "Clip", .since_version = 6, .until_version = 10,
         .attrs = {attr_float("min", -FLT_MAX), attr_float("max", FLT_MAX)}, .infer = infer_clip(kFloatT),
         .doc = "min(max(X, min), max) with bounds as attributes"});
  r.add({.name = "Clip", .since_version = 11, .until_version = 11, .min_inputs = 1, .max_inputs = 3,
         .infer = infer_clip(kFloatT), .doc = "min(max(X, min), max) with optional scalar bound inputs"});
  r.add({.name = "Clip", .since_version = 12, .min_inputs = 1, .max_inputs = 3, .infer = infer_clip(kNumericT),
         .doc = "min(max(X, min), max) with optional scalar bound inputs"});

  // ---- Comparison (bool output) and logic. Equal-19 added strings, which no kernel computes on.
  r.add({.name = "Equal", .since_version = 7, .min_inputs = 2, .max_inputs = 2,
         .infer = infer_broadcast(kNumericT | kBoolT, true), .doc = "A == B with broadcasting"});
  r.add({.name = "Less", .since_version = 7, .min_inputs = 2, .max_inputs = 2,
         .infer = infer_broadcast(kNumericT, true), .doc = "A < B with broadcasting"});
  r.add({.name = "LessOrEqual", .since_version = 12, .min_inputs = 2, .max_inputs = 2,
         .infer = infer_broadcast(kNumericT, true), .doc = "A <= B with broadcasting"});
  r.add({.name = "Greater", .since_version = 7, .min_inputs = 2, .max_inputs = 2,
         .infer = infer_broadcast(kNumericT, true), .doc = "A > B with broadcasting"});
  r.add({.name = "GreaterOrEqual", .since_version = 12, .min_inputs = 2, .max_inputs = 2,
         .infer = infer_broadcast(kNumericT, true), .doc = "A >= B with broadcasting"});
  r.add({.name = "Where", .since_version = 9, .min_inputs = 3, .max_inputs = 3, .infer = infer_where,
         .doc = "condition ? X : Y with three-way broadcasting"});
  r.add({.name = "Not", .since_version = 1, .infer = infer_unary(kBoolT), .doc = "logical not"});
  r.add({.name = "And", .since_version = 7, .min_inputs = 2, .max_inputs = 2, .infer = infer_broadcast(kBoolT),
         .doc = "logical and with broadcasting"});
  r.add({.name = "Or", .since_version = 7, .min_inputs = 2, .max_inputs = 2, .infer = infer_broadcast(kBoolT),
         .doc = "logical or with broadcasting"});
  r.add({.name = "Xor", .since_version = 7, .min_inputs = 2, .max_inputs = 2, .infer = infer_broadcast(kBoolT),
         .doc = "logical xor with broadcasting"});
  r.add({.name = "BitwiseAnd", .since_version = 18, .min_inputs = 2, .max_inputs = 2, .infer = infer_broadcast(kIntT),
         .doc = "A & B on integers with broadcasting"});
  r.add({.name = "BitwiseOr", .since_version = 18, .min_inputs = 2, .max_inputs = 2, .infer = infer_broadcast(kIntT),
         .doc = "A | B on integers with broadcasting"});
  r.add({.name = "BitwiseXor", .since_version = 18, .min_inputs = 2, .max_inputs = 2, .infer = infer_broadcast(kIntT),
         .doc = "A ^ B on integers with broadcasting"});
  r.add({.name = "BitwiseNot", .since_version = 18, .infer = infer_unary(kIntT), .doc = "~X on integers"});

  // ---- Cast: `to` is an int from 6 (a string in Cast-1); 19 added `saturate` for fp8 targets.
  r.add({.name = "Cast", .since_version = 6, .until_version = 18, .attrs = {attr_required("to", AttrKind::kInt)},
         .infer = infer_cast, .doc = "converts X to the dtype `to`"});
  r.add({.name = "Cast", .since_version = 19, .attrs = {attr_required("to", AttrKind::kInt), attr_int("saturate", 1)},
         .infer = infer_cast, .doc = "converts X to the dtype `to`; saturate clamps out-of-range fp8 results"});
  r.add({.name = "CastLike", .since_version = 15, .until_version = 18, .min_inputs = 2, .max_inputs = 2,
         .infer = infer_cast_like, .doc = "converts X to the dtype of target_type"});
  r.add({.name = "CastLike", .since_version = 19, .min_inputs = 2, .max_inputs = 2, .attrs = {attr_int("saturate", 1)},
         .infer = infer_cast_like, .doc = "converts X to the dtype of target_type; saturate as in Cast-19"});
}

}  // namespace kiln
