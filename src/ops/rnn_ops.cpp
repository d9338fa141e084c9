// Schemas of the recurrent ops (RNN, GRU, LSTM) and the signal ops (DFT, STFT, MelWeightMatrix).
#include <initializer_list>
#include <optional>

#include "ops/op_schema.h"

namespace kiln {

namespace {

bool is_float_dtype(DType dt) {
  return dt == DType::kF32 || dt == DType::kF64 || dt == DType::kF16 || dt == DType::kBF16;
}

// Fails when present input i has a known dtype that `ok` rejects.
template <typename Pred>
void require_dtype(const InferContext& ctx, size_t i, Pred ok, const char* what) {
  if (!ctx.has_input(i)) return;
  const DType dt = ctx.input_type(i).dtype;
  if (dt == DType::kUndefined || ok(dt)) return;
  ctx.fail("input " + std::to_string(i) + " has dtype " + std::string(dtype_name(dt)) + ", expected " + what);
}

void require_float(const InferContext& ctx, size_t i) { require_dtype(ctx, i, is_float_dtype, "a float type"); }
void require_int(const InferContext& ctx, size_t i) {
  require_dtype(ctx, i, [](DType d) { return d == DType::kI32 || d == DType::kI64; }, "i32 or i64");
}

// Fails unless the present `others` of known dtype share input `ref`'s dtype.
void require_same_dtype(const InferContext& ctx, size_t ref, std::initializer_list<size_t> others) {
  const DType want = ctx.input_type(ref).dtype;
  if (want == DType::kUndefined) return;
  for (size_t i : others) {
    if (!ctx.has_input(i)) continue;
    const DType d = ctx.input_type(i).dtype;
    if (d != DType::kUndefined && d != want)
      ctx.fail("input " + std::to_string(i) + " has dtype " + std::string(dtype_name(d)) + " but input " +
               std::to_string(ref) + " has " + std::string(dtype_name(want)));
  }
}

// Fails when present input i has a known rank other than `rank`.
void require_rank(const InferContext& ctx, size_t i, size_t rank, const char* name) {
  if (!ctx.has_input(i)) return;
  const TensorType& t = ctx.input_type(i);
  if (t.shape && t.shape->size() != rank)
    ctx.fail(std::string(name) + " must have rank " + std::to_string(rank) + ", got shape " +
             shape_to_string(*t.shape));
}

// Dim k of present input i, or an unknown Dim when the input or its rank is unknown.
Dim input_dim(const InferContext& ctx, size_t i, size_t k) {
  if (!ctx.has_input(i)) return Dim();
  const TensorType& t = ctx.input_type(i);
  if (!t.shape || k >= t.shape->size()) return Dim();
  return (*t.shape)[k];
}

// Fails when two known dims disagree.
void check_dim(const InferContext& ctx, const Dim& got, const Dim& want, const std::string& what) {
  if (got.known() && want.known() && got.value != want.value)
    ctx.fail(what + " is " + std::to_string(got.value) + ", expected " + std::to_string(want.value));
}

// The value of a scalar integer input when it is a known constant (a one-element tensor).
std::optional<int64_t> scalar_value(const InferContext& ctx, size_t i, const char* name) {
  if (!ctx.has_input(i)) return std::nullopt;
  const TensorType& t = ctx.input_type(i);
  if (t.shape) {
    const Shape& s = *t.shape;
    const bool scalar_like = s.empty() || (s.size() == 1 && (!s[0].known() || s[0].value == 1));
    if (!scalar_like) ctx.fail(std::string(name) + " must be a scalar, got shape " + shape_to_string(s));
  }
  const Tensor* v = ctx.input_value(i);
  if (!v) return std::nullopt;
  if (v->numel() != 1) ctx.fail(std::string(name) + " must be a scalar, got " + std::to_string(v->numel()) + " values");
  if (!dtype_is_integer(v->dtype())) ctx.fail(std::string(name) + " must be an integer");
  return v->to_int64_vector()[0];
}

// ---- RNN, GRU, LSTM

// Number of gates: RNN 1, GRU 3, LSTM 4. Input order: X, W, R, B, sequence_lens, initial_h,
// (LSTM) initial_c, P. Output order: Y, Y_h, (LSTM) Y_c.
InferFn infer_recurrent(int64_t gates) {
  return [gates](InferContext& ctx) {
    const std::string& direction = ctx.attr_string("direction");
    int64_t num_dir = 0;
    if (direction == "forward" || direction == "reverse") num_dir = 1;
    else if (direction == "bidirectional") num_dir = 2;
    else ctx.fail("direction must be forward, reverse or bidirectional, got '" + direction + "'");
    const int64_t layout = ctx.opset() >= 14 ? ctx.attr_int("layout") : 0;
    if (layout != 0 && layout != 1) ctx.fail("layout must be 0 or 1, got " + std::to_string(layout));

    require_float(ctx, 0);
    require_same_dtype(ctx, 0, {1, 2, 3, 5, 6, 7});
    require_int(ctx, 4);
    require_rank(ctx, 0, 3, "X");
    require_rank(ctx, 1, 3, "W");
    require_rank(ctx, 2, 3, "R");
    require_rank(ctx, 3, 2, "B");
    require_rank(ctx, 4, 1, "sequence_lens");
    require_rank(ctx, 5, 3, "initial_h");
    if (gates == 4) {
      require_rank(ctx, 6, 3, "initial_c");
      require_rank(ctx, 7, 2, "P");
    }

    // hidden_size: the attribute, else R's last dim, else W's rows / gates.
    Dim hidden;
    if (auto h = ctx.attr_int_opt("hidden_size")) {
      if (*h <= 0) ctx.fail("hidden_size must be positive, got " + std::to_string(*h));
      hidden = Dim(*h);
    }
    const Dim r_cols = input_dim(ctx, 2, 2);
    check_dim(ctx, r_cols, hidden, "R's last dimension (hidden_size)");
    if (!hidden.known() && r_cols.known()) hidden = r_cols;
    const Dim w_rows = input_dim(ctx, 1, 1);
    if (!hidden.known() && w_rows.known()) {
      if (w_rows.value % gates != 0)
        ctx.fail("W's second dimension " + std::to_string(w_rows.value) + " is not a multiple of " +
                 std::to_string(gates));
      hidden = Dim(w_rows.value / gates);
    }
    const Dim gh = hidden.known() ? Dim(gates * hidden.value) : Dim();
    check_dim(ctx, input_dim(ctx, 1, 0), Dim(num_dir), "W's first dimension (num_directions)");
    check_dim(ctx, input_dim(ctx, 2, 0), Dim(num_dir), "R's first dimension (num_directions)");
    check_dim(ctx, w_rows, gh, "W's second dimension");
    check_dim(ctx, input_dim(ctx, 2, 1), gh, "R's second dimension");
    check_dim(ctx, input_dim(ctx, 1, 2), input_dim(ctx, 0, 2), "W's last dimension (input_size)");
    check_dim(ctx, input_dim(ctx, 3, 0), Dim(num_dir), "B's first dimension (num_directions)");
    if (gh.known()) check_dim(ctx, input_dim(ctx, 3, 1), Dim(2 * gh.value), "B's second dimension");
    if (gates == 4) {
      check_dim(ctx, input_dim(ctx, 7, 0), Dim(num_dir), "P's first dimension (num_directions)");
      if (hidden.known()) check_dim(ctx, input_dim(ctx, 7, 1), Dim(3 * hidden.value), "P's second dimension");
    }

    const Dim seq = input_dim(ctx, 0, layout == 0 ? 0 : 1);
    const Dim batch = input_dim(ctx, 0, layout == 0 ? 1 : 0);
    check_dim(ctx, input_dim(ctx, 4, 0), batch, "sequence_lens' length (batch_size)");
    const Shape state = layout == 0 ? Shape{Dim(num_dir), batch, hidden} : Shape{batch, Dim(num_dir), hidden};
    for (size_t i : {size_t{5}, size_t{6}}) {
      if (i == 6 && gates != 4) break;
      const char* name = i == 5 ? "initial_h" : "initial_c";
      for (size_t k = 0; k < 3; ++k)
        check_dim(ctx, input_dim(ctx, i, k), state[k], std::string(name) + "'s dimension " + std::to_string(k));
    }

    const DType dt = ctx.input_type(0).dtype;
    const Dim nd(num_dir);
    ctx.set_output(0, dt, layout == 0 ? Shape{seq, nd, batch, hidden} : Shape{batch, seq, nd, hidden});
    ctx.set_output(1, dt, state);
    if (gates == 4) ctx.set_output(2, dt, state);
  };
}

void add_recurrent(OpRegistry& r, const char* name, int64_t gates, std::vector<AttrSpec> extra, const char* doc) {
  std::vector<AttrSpec> attrs = {attr_floats("activation_alpha"),
                                 attr_floats("activation_beta"),
                                 attr_optional("activations", AttrKind::kStrings),
                                 attr_optional("clip", AttrKind::kFloat),
                                 attr_string("direction", "forward"),
                                 attr_optional("hidden_size", AttrKind::kInt)};
  attrs.insert(attrs.end(), extra.begin(), extra.end());
  const int max_in = gates == 4 ? 8 : 6;
  const int max_out = gates == 4 ? 3 : 2;
  r.add({.name = name, .since_version = 7, .until_version = 13, .min_inputs = 3, .max_inputs = max_in,
         .min_outputs = 0, .max_outputs = max_out, .attrs = attrs, .infer = infer_recurrent(gates),
         .doc = std::string(doc) + "; X is [seq, batch, input]"});
  attrs.push_back(attr_int("layout", 0));
  r.add({.name = name, .since_version = 14, .min_inputs = 3, .max_inputs = max_in, .min_outputs = 0,
         .max_outputs = max_out, .attrs = attrs, .infer = infer_recurrent(gates),
         .doc = std::string(doc) + "; X is [seq, batch, input], or [batch, seq, input] with layout=1"});
}

// ---- DFT

void infer_dft(InferContext& ctx) {
  require_float(ctx, 0);
  require_int(ctx, 1);
  if (ctx.opset() >= 20) require_int(ctx, 2);
  const int64_t inverse = ctx.attr_int("inverse"), onesided = ctx.attr_int("onesided");
  if (inverse != 0 && inverse != 1) ctx.fail("inverse must be 0 or 1, got " + std::to_string(inverse));
  if (onesided != 0 && onesided != 1) ctx.fail("onesided must be 0 or 1, got " + std::to_string(onesided));
  const bool irfft = inverse == 1 && onesided == 1;  // one-sided spectrum in, real signal out
  const TensorType& in = ctx.input_type(0);
  if (!in.shape) {
    ctx.set_output_unknown_shape(0, in.dtype);
    return;
  }
  const int64_t rank = static_cast<int64_t>(in.shape->size());
  if (rank < 2) ctx.fail("input must have rank >= 2 (signal dims plus a last dim of 1 or 2), got " +
                         shape_to_string(*in.shape));
  const Dim& last = in.shape->back();
  if (last.known() && last.value != 1 && last.value != 2)
    ctx.fail("the last dimension of the input must be 1 (real) or 2 (complex), got " + std::to_string(last.value));
  const std::optional<int64_t> length = scalar_value(ctx, 1, "dft_length");
  if (length && *length <= 0) ctx.fail("dft_length must be positive, got " + std::to_string(*length));

  std::optional<int64_t> axis;
  if (ctx.opset() < 20) axis = ctx.attr_int("axis");
  else if (!ctx.has_input(2)) axis = -2;
  else axis = scalar_value(ctx, 2, "axis");
  if (axis) {
    if (*axis < -rank || *axis > rank - 2)
      ctx.fail("axis " + std::to_string(*axis) + " is out of range for rank " + std::to_string(rank) +
               " (the last dimension holds real/imaginary parts)");
    if (*axis < 0) *axis += rank;
    if (*axis == rank - 1) ctx.fail("axis must not be the last dimension (real/imaginary parts)");
  }

  Shape out = *in.shape;
  out.back() = Dim(irfft ? 1 : 2);
  if (!axis) {
    // Unknown axis: only a transform that keeps the length keeps every dim.
    if (ctx.has_input(1) || onesided)
      for (int64_t k = 0; k + 1 < rank; ++k) out[k] = Dim();
  } else {
    Dim n = (*in.shape)[*axis];
    if (length) n = Dim(*length);
    else if (ctx.has_input(1)) n = Dim();
    else if (irfft) n = n.known() ? Dim(2 * (n.value - 1)) : Dim();
    if (onesided && !irfft) n = n.known() ? Dim(n.value / 2 + 1) : Dim();
    out[*axis] = n;
  }
  ctx.set_output(0, in.dtype, std::move(out));
}

// ---- STFT

void infer_stft(InferContext& ctx) {
  require_float(ctx, 0);
  require_int(ctx, 1);
  require_same_dtype(ctx, 0, {2});
  require_int(ctx, 3);
  require_rank(ctx, 0, 3, "signal");
  require_rank(ctx, 2, 1, "window");
  const int64_t onesided = ctx.attr_int("onesided");
  if (onesided != 0 && onesided != 1) ctx.fail("onesided must be 0 or 1, got " + std::to_string(onesided));
  const Dim last = input_dim(ctx, 0, 2);
  if (last.known() && last.value != 1 && last.value != 2)
    ctx.fail("the last dimension of signal must be 1 (real) or 2 (complex), got " + std::to_string(last.value));
  const std::optional<int64_t> step = scalar_value(ctx, 1, "frame_step");
  if (step && *step <= 0) ctx.fail("frame_step must be positive, got " + std::to_string(*step));
  std::optional<int64_t> frame_length = scalar_value(ctx, 3, "frame_length");
  if (frame_length && *frame_length <= 0)
    ctx.fail("frame_length must be positive, got " + std::to_string(*frame_length));
  const Dim window = input_dim(ctx, 2, 0);
  if (frame_length) check_dim(ctx, window, Dim(*frame_length), "the window length");
  // The frame length defaults to the window's length, or without a window to the whole signal.
  Dim fl;
  if (frame_length) fl = Dim(*frame_length);
  else if (ctx.has_input(3)) fl = Dim();
  else if (ctx.has_input(2)) fl = window.known() ? window : Dim();
  else fl = input_dim(ctx, 0, 1);
  const Dim len = input_dim(ctx, 0, 1);
  if (len.known() && fl.known() && fl.value > len.value)
    ctx.fail("frame length " + std::to_string(fl.value) + " is longer than the signal (" +
             std::to_string(len.value) + ")");
  Dim frames;
  if (len.known() && fl.known() && step) frames = Dim((len.value - fl.value) / *step + 1);
  Dim bins;
  if (fl.known()) bins = Dim(onesided ? fl.value / 2 + 1 : fl.value);
  ctx.set_output(0, ctx.input_type(0).dtype, Shape{input_dim(ctx, 0, 0), frames, bins, Dim(2)});
}

// ---- MelWeightMatrix

void infer_mel_weight_matrix(InferContext& ctx) {
  for (size_t i = 0; i < 3; ++i) require_int(ctx, i);
  require_float(ctx, 3);
  require_float(ctx, 4);
  const DType out = dtype_from_onnx(static_cast<int>(ctx.attr_int("output_datatype")));
  if (out == DType::kUndefined || out == DType::kBool || out == DType::kString || out == DType::kF8E4M3FN ||
      out == DType::kF8E5M2)
    ctx.fail("output_datatype " + std::to_string(ctx.attr_int("output_datatype")) + " is not a numeric type");
  const std::optional<int64_t> bins = scalar_value(ctx, 0, "num_mel_bins");
  const std::optional<int64_t> length = scalar_value(ctx, 1, "dft_length");
  if (bins && *bins <= 0) ctx.fail("num_mel_bins must be positive, got " + std::to_string(*bins));
  if (length && *length <= 0) ctx.fail("dft_length must be positive, got " + std::to_string(*length));
  ctx.set_output(0, out, Shape{length ? Dim(*length / 2 + 1) : Dim(), bins ? Dim(*bins) : Dim()});
}

}  // namespace

void register_rnn_schemas(OpRegistry& r) {
  add_recurrent(r, "RNN", 1, {}, "simple recurrent network Ht = f(Xt W^T + Ht-1 R^T + Wb + Rb)");
  add_recurrent(r, "GRU", 3, {attr_int("linear_before_reset", 0)},
                "gated recurrent unit (gates z, r, h; linear_before_reset applies r after R h)");
  add_recurrent(r, "LSTM", 4, {attr_int("input_forget", 0)},
                "long short-term memory (gates i, o, f, c; optional peepholes P, coupled input/forget gates)");

  r.add({.name = "DFT", .since_version = 17, .until_version = 19, .min_inputs = 1, .max_inputs = 2,
         .attrs = {attr_int("axis", 1), attr_int("inverse", 0), attr_int("onesided", 0)}, .infer = infer_dft,
         .doc = "discrete Fourier transform along the axis attribute; last dim holds (re, im) or re"});
  r.add({.name = "DFT", .since_version = 20, .min_inputs = 1, .max_inputs = 3,
         .attrs = {attr_int("inverse", 0), attr_int("onesided", 0)}, .infer = infer_dft,
         .doc = "discrete Fourier transform along the axis input (default -2); last dim holds (re, im) or re"});
  r.add({.name = "STFT", .since_version = 17, .min_inputs = 2, .max_inputs = 4, .attrs = {attr_int("onesided", 1)},
         .infer = infer_stft, .doc = "short-time Fourier transform of [batch, length, 1|2] signals"});
  r.add({.name = "MelWeightMatrix", .since_version = 17, .min_inputs = 5, .max_inputs = 5,
         .attrs = {attr_int("output_datatype", 1)}, .infer = infer_mel_weight_matrix,
         .doc = "[dft_length/2+1, num_mel_bins] triangular mel filter bank"});
}

}  // namespace kiln
