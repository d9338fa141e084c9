// Reference kernels of the recurrent ops (RNN, GRU, LSTM) and the signal ops (DFT, STFT, MelWeightMatrix).
// Everything is computed in double from inputs read as doubles, and rounded once on store.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <numbers>
#include <optional>

#include "backends/reference/kernel.h"

namespace kiln::reference {

namespace {

// Writes `values` (row-major, t's element count) into t, converting to its dtype.
void store(Tensor& t, const std::vector<double>& values) {
  dispatch_dtype(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* out = t.mutable_data<T>();
    for (size_t i = 0; i < values.size(); ++i) out[i] = static_cast<T>(static_cast<compute_t<T>>(values[i]));
  });
}

void require_float(const KernelContext& ctx, const Tensor& t, const char* name) {
  const DType dt = t.dtype();
  if (dt != DType::kF32 && dt != DType::kF64 && dt != DType::kF16 && dt != DType::kBF16)
    ctx.fail(std::string(name) + " has dtype " + std::string(dtype_name(dt)) + ", expected a float type");
}

void require_shape(const KernelContext& ctx, const Tensor& t, const std::vector<int64_t>& want, const char* name) {
  if (t.shape() != want)
    ctx.fail(std::string(name) + " has shape " + shape_to_string(t.shape()) + ", expected " + shape_to_string(want));
}

// A scalar integer input (rank 0, or one element).
int64_t scalar_int(const KernelContext& ctx, size_t i, const char* name) {
  const Tensor& t = ctx.input(i);
  if (!dtype_is_integer(t.dtype()))
    ctx.fail(std::string(name) + " has dtype " + std::string(dtype_name(t.dtype())) + ", expected an integer type");
  if (t.numel() != 1 || t.rank() > 1)
    ctx.fail(std::string(name) + " must be a scalar, got shape " + shape_to_string(t.shape()));
  return t.to_int64_vector()[0];
}

double scalar_float(const KernelContext& ctx, size_t i, const char* name) {
  const Tensor& t = ctx.input(i);
  require_float(ctx, t, name);
  if (t.numel() != 1 || t.rank() > 1)
    ctx.fail(std::string(name) + " must be a scalar, got shape " + shape_to_string(t.shape()));
  return t.to_double_vector()[0];
}

// ---- Activation functions of the recurrent ops.

struct Activation {
  enum Kind { kRelu, kTanh, kSigmoid, kAffine, kLeakyRelu, kThresholdedRelu, kScaledTanh, kHardSigmoid, kElu,
              kSoftsign, kSoftplus };
  Kind kind = kTanh;
  double alpha = 0, beta = 0;

  double operator()(double x) const {
    switch (kind) {
      case kRelu: return x > 0 ? x : 0.0;
      case kTanh: return std::tanh(x);
      case kSigmoid: return 1.0 / (1.0 + std::exp(-x));
      case kAffine: return alpha * x + beta;
      case kLeakyRelu: return x >= 0 ? x : alpha * x;
      case kThresholdedRelu: return x > alpha ? x : 0.0;
      case kScaledTanh: return alpha * std::tanh(beta * x);
      case kHardSigmoid: return std::clamp(alpha * x + beta, 0.0, 1.0);
      case kElu: return x >= 0 ? x : alpha * (std::exp(x) - 1.0);
      case kSoftsign: return x / (1.0 + std::fabs(x));
      case kSoftplus: return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x));
    }
    return x;
  }
};

// Parses `activations` with `activation_alpha`/`activation_beta`. The alpha and beta lists are
// consumed in order by the functions that take them (as ONNX Runtime does); a function without a
// value left gets the default of the ONNX op of that name. Returns per_dir functions per direction.
std::vector<Activation> parse_activations(const KernelContext& ctx, size_t per_dir, size_t num_dir,
                                          const std::vector<std::string>& defaults) {
  std::vector<std::string> names = ctx.attr_strings("activations");
  if (names.empty()) names = defaults;
  const std::vector<float>& alphas = ctx.attr_floats("activation_alpha");
  const std::vector<float>& betas = ctx.attr_floats("activation_beta");
  size_t next_alpha = 0, next_beta = 0;
  std::vector<Activation> acts;
  for (const std::string& name : names) {
    std::string lower = name;
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    struct Entry {
      const char* name;
      Activation::Kind kind;
      bool uses_alpha, uses_beta;
      double alpha, beta;
    };
    static const Entry kTable[] = {
        {"relu", Activation::kRelu, false, false, 0, 0},
        {"tanh", Activation::kTanh, false, false, 0, 0},
        {"sigmoid", Activation::kSigmoid, false, false, 0, 0},
        {"affine", Activation::kAffine, true, true, 1.0, 0.0},
        {"leakyrelu", Activation::kLeakyRelu, true, false, 0.01, 0},
        {"thresholdedrelu", Activation::kThresholdedRelu, true, false, 1.0, 0},
        {"scaledtanh", Activation::kScaledTanh, true, true, 1.0, 1.0},
        {"hardsigmoid", Activation::kHardSigmoid, true, true, 0.2, 0.5},
        {"elu", Activation::kElu, true, false, 1.0, 0},
        {"softsign", Activation::kSoftsign, false, false, 0, 0},
        {"softplus", Activation::kSoftplus, false, false, 0, 0},
    };
    const Entry* e = nullptr;
    for (const Entry& cand : kTable)
      if (lower == cand.name) e = &cand;
    if (!e)
      ctx.fail("unknown activation '" + name +
               "' (expected Relu, Tanh, Sigmoid, Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, "
               "Softsign or Softplus)");
    Activation a;
    a.kind = e->kind;
    a.alpha = e->alpha;
    a.beta = e->beta;
    if (e->uses_alpha && next_alpha < alphas.size()) a.alpha = alphas[next_alpha++];
    if (e->uses_beta && next_beta < betas.size()) a.beta = betas[next_beta++];
    acts.push_back(a);
  }
  if (acts.size() == per_dir * num_dir) return acts;
  if (acts.size() == per_dir) {  // one set given for both directions
    std::vector<Activation> both = acts;
    both.insert(both.end(), acts.begin(), acts.end());
    return num_dir == 2 ? both : acts;
  }
  // RNN's spec default lists two functions (one per direction) even for a single direction.
  if (per_dir == 1 && num_dir == 1 && acts.size() == 2) return {acts[0]};
  ctx.fail("expected " + std::to_string(per_dir * num_dir) + " activations (" + std::to_string(per_dir) +
           " per direction), got " + std::to_string(acts.size()));
}

// ---- RNN, GRU, LSTM

enum class Cell { kRnn, kGru, kLstm };

void recurrent_kernel(KernelContext& ctx, Cell cell) {
  const int64_t G = cell == Cell::kRnn ? 1 : cell == Cell::kGru ? 3 : 4;  // gates
  const std::string& direction = ctx.attr_string("direction");
  int64_t nd = 0;
  if (direction == "forward" || direction == "reverse") nd = 1;
  else if (direction == "bidirectional") nd = 2;
  else ctx.fail("direction must be forward, reverse or bidirectional, got '" + direction + "'");
  const int64_t layout = ctx.opset() >= 14 ? ctx.attr_int("layout") : 0;
  if (layout != 0 && layout != 1) ctx.fail("layout must be 0 or 1, got " + std::to_string(layout));

  const Tensor& X = ctx.input(0);
  const Tensor& W = ctx.input(1);
  const Tensor& R = ctx.input(2);
  require_float(ctx, X, "X");
  const DType dt = X.dtype();
  for (size_t i : {1, 2, 3, 5, 6, 7}) {
    if (i >= 6 && cell != Cell::kLstm) break;
    if (ctx.has_input(i) && ctx.input(i).dtype() != dt)
      ctx.fail("input " + std::to_string(i) + " has dtype " + std::string(dtype_name(ctx.input(i).dtype())) +
               " but X has " + std::string(dtype_name(dt)));
  }
  if (X.rank() != 3) ctx.fail("X must have rank 3, got shape " + shape_to_string(X.shape()));
  const int64_t S = layout == 0 ? X.dim(0) : X.dim(1);
  const int64_t NB = layout == 0 ? X.dim(1) : X.dim(0);
  const int64_t I = X.dim(2);
  if (R.rank() != 3) ctx.fail("R must have rank 3, got shape " + shape_to_string(R.shape()));
  const int64_t H = R.dim(2);
  if (auto hs = ctx.attr_int_opt("hidden_size"); hs && *hs != H)
    ctx.fail("hidden_size is " + std::to_string(*hs) + " but R has shape " + shape_to_string(R.shape()));
  const int64_t GH = G * H;
  require_shape(ctx, W, {nd, GH, I}, "W");
  require_shape(ctx, R, {nd, GH, H}, "R");
  using Dims = std::vector<int64_t>;
  const Dims state_shape = layout == 0 ? Dims{nd, NB, H} : Dims{NB, nd, H};

  const std::vector<double> x = X.to_double_vector(), w = W.to_double_vector(), r = R.to_double_vector();
  std::vector<double> bias(static_cast<size_t>(nd * 2 * GH), 0.0);
  if (ctx.has_input(3)) {
    require_shape(ctx, ctx.input(3), {nd, 2 * GH}, "B");
    bias = ctx.input(3).to_double_vector();
  }
  std::vector<int64_t> lens(static_cast<size_t>(NB), S);
  if (ctx.has_input(4)) {
    const Tensor& sl = ctx.input(4);
    if (!dtype_is_integer(sl.dtype()))
      ctx.fail("sequence_lens has dtype " + std::string(dtype_name(sl.dtype())) + ", expected i32");
    require_shape(ctx, sl, {NB}, "sequence_lens");
    lens = sl.to_int64_vector();
    for (int64_t v : lens)
      if (v < 0 || v > S)
        ctx.fail("sequence_lens value " + std::to_string(v) + " is outside [0, " + std::to_string(S) + "]");
  }
  std::vector<double> h0(static_cast<size_t>(nd * NB * H), 0.0), c0 = h0;
  if (ctx.has_input(5)) {
    require_shape(ctx, ctx.input(5), state_shape, "initial_h");
    h0 = ctx.input(5).to_double_vector();
  }
  std::vector<double> peep(static_cast<size_t>(nd * 3 * H), 0.0);
  if (cell == Cell::kLstm) {
    if (ctx.has_input(6)) {
      require_shape(ctx, ctx.input(6), state_shape, "initial_c");
      c0 = ctx.input(6).to_double_vector();
    }
    if (ctx.has_input(7)) {
      require_shape(ctx, ctx.input(7), {nd, 3 * H}, "P");
      peep = ctx.input(7).to_double_vector();
    }
  }
  std::optional<double> clip;
  if (ctx.has_attr("clip")) {
    clip = ctx.attr_float("clip");
    if (!(*clip > 0)) ctx.fail("clip must be positive, got " + std::to_string(*clip));
  }
  auto clipped = [&](double v) { return clip ? std::clamp(v, -*clip, *clip) : v; };
  const size_t per_dir = static_cast<size_t>(cell == Cell::kRnn ? 1 : cell == Cell::kGru ? 2 : 3);
  const std::vector<Activation> acts =
      parse_activations(ctx, per_dir, static_cast<size_t>(nd),
                        cell == Cell::kRnn   ? std::vector<std::string>{"Tanh"}
                        : cell == Cell::kGru ? std::vector<std::string>{"Sigmoid", "Tanh"}
                                             : std::vector<std::string>{"Sigmoid", "Tanh", "Tanh"});
  const bool linear_before_reset = cell == Cell::kGru && ctx.attr_int("linear_before_reset") != 0;
  const bool input_forget = cell == Cell::kLstm && ctx.attr_int("input_forget") != 0;

  // Index helpers over the layout-dependent tensors.
  auto x_at = [&](int64_t t, int64_t b, int64_t i) {
    return x[static_cast<size_t>(layout == 0 ? (t * NB + b) * I + i : (b * S + t) * I + i)];
  };
  auto state_index = [&](int64_t d, int64_t b, int64_t j) {
    return static_cast<size_t>(layout == 0 ? (d * NB + b) * H + j : (b * nd + d) * H + j);
  };
  auto y_index = [&](int64_t t, int64_t d, int64_t b, int64_t j) {
    return static_cast<size_t>(layout == 0 ? ((t * nd + d) * NB + b) * H + j : ((b * S + t) * nd + d) * H + j);
  };
  std::vector<double> y(static_cast<size_t>(S * nd * NB * H), 0.0), yh(static_cast<size_t>(nd * NB * H), 0.0);
  std::vector<double> yc = yh;

  for (int64_t d = 0; d < nd; ++d) {
    const bool reverse = direction == "reverse" || d == 1;
    const Activation* act = &acts[static_cast<size_t>(d) * per_dir];
    // Xt W^T for gate g, unit j; v R^T for a vector v of size H; biases.
    auto xw = [&](int64_t t, int64_t b, int64_t g, int64_t j) {
      double s = 0;
      const size_t row = static_cast<size_t>((d * GH + g * H + j) * I);
      for (int64_t i = 0; i < I; ++i) s += x_at(t, b, i) * w[row + static_cast<size_t>(i)];
      return s;
    };
    auto vr = [&](const std::vector<double>& v, int64_t g, int64_t j) {
      double s = 0;
      const size_t row = static_cast<size_t>((d * GH + g * H + j) * H);
      for (int64_t k = 0; k < H; ++k) s += v[static_cast<size_t>(k)] * r[row + static_cast<size_t>(k)];
      return s;
    };
    auto wb = [&](int64_t g, int64_t j) { return bias[static_cast<size_t>(d * 2 * GH + g * H + j)]; };
    auto rb = [&](int64_t g, int64_t j) { return bias[static_cast<size_t>(d * 2 * GH + GH + g * H + j)]; };
    auto p = [&](int64_t g, int64_t j) { return peep[static_cast<size_t>(d * 3 * H + g * H + j)]; };

    for (int64_t b = 0; b < NB; ++b) {
      const int64_t len = lens[static_cast<size_t>(b)];
      std::vector<double> h(static_cast<size_t>(H)), c(static_cast<size_t>(H)), hn(h.size()), cn(h.size());
      for (int64_t j = 0; j < H; ++j) {
        h[static_cast<size_t>(j)] = h0[state_index(d, b, j)];
        c[static_cast<size_t>(j)] = c0[state_index(d, b, j)];
      }
      // Steps past a batch entry's length are skipped: its state carries over and Y stays zero.
      for (int64_t s = 0; s < len; ++s) {
        const int64_t t = reverse ? len - 1 - s : s;
        if (cell == Cell::kRnn) {
          for (int64_t j = 0; j < H; ++j)
            hn[static_cast<size_t>(j)] = act[0](clipped(xw(t, b, 0, j) + vr(h, 0, j) + wb(0, j) + rb(0, j)));
        } else if (cell == Cell::kGru) {
          // Gates z (0), r (1), h (2).
          std::vector<double> z(h.size()), rg(h.size()), rh(h.size());
          for (int64_t j = 0; j < H; ++j) {
            const size_t u = static_cast<size_t>(j);
            z[u] = act[0](clipped(xw(t, b, 0, j) + vr(h, 0, j) + wb(0, j) + rb(0, j)));
            rg[u] = act[0](clipped(xw(t, b, 1, j) + vr(h, 1, j) + wb(1, j) + rb(1, j)));
            rh[u] = rg[u] * h[u];
          }
          for (int64_t j = 0; j < H; ++j) {
            const size_t u = static_cast<size_t>(j);
            const double pre = linear_before_reset ? xw(t, b, 2, j) + rg[u] * (vr(h, 2, j) + rb(2, j)) + wb(2, j)
                                                   : xw(t, b, 2, j) + vr(rh, 2, j) + rb(2, j) + wb(2, j);
            const double ht = act[1](clipped(pre));
            hn[u] = (1.0 - z[u]) * ht + z[u] * h[u];
          }
        } else {
          // Gates i (0), o (1), f (2), c (3); peepholes i (0), o (1), f (2).
          for (int64_t j = 0; j < H; ++j) {
            const size_t u = static_cast<size_t>(j);
            const double it = act[0](clipped(xw(t, b, 0, j) + vr(h, 0, j) + wb(0, j) + rb(0, j) + p(0, j) * c[u]));
            const double ft =
                input_forget ? 1.0 - it
                             : act[0](clipped(xw(t, b, 2, j) + vr(h, 2, j) + wb(2, j) + rb(2, j) + p(2, j) * c[u]));
            const double ct = act[1](clipped(xw(t, b, 3, j) + vr(h, 3, j) + wb(3, j) + rb(3, j)));
            cn[u] = ft * c[u] + it * ct;
            const double ot = act[0](clipped(xw(t, b, 1, j) + vr(h, 1, j) + wb(1, j) + rb(1, j) + p(1, j) * cn[u]));
            hn[u] = ot * act[2](cn[u]);
          }
          c = cn;
        }
        h = hn;
        for (int64_t j = 0; j < H; ++j) y[y_index(t, d, b, j)] = h[static_cast<size_t>(j)];
      }
      for (int64_t j = 0; j < H; ++j) {
        yh[state_index(d, b, j)] = h[static_cast<size_t>(j)];
        yc[state_index(d, b, j)] = c[static_cast<size_t>(j)];
      }
    }
  }

  if (ctx.has_output(0))
    store(ctx.allocate_output(0, dt, layout == 0 ? Dims{S, nd, NB, H} : Dims{NB, S, nd, H}), y);
  if (ctx.has_output(1)) store(ctx.allocate_output(1, dt, state_shape), yh);
  if (cell == Cell::kLstm && ctx.has_output(2)) store(ctx.allocate_output(2, dt, state_shape), yc);
}

void rnn_kernel(KernelContext& ctx) { recurrent_kernel(ctx, Cell::kRnn); }
void gru_kernel(KernelContext& ctx) { recurrent_kernel(ctx, Cell::kGru); }
void lstm_kernel(KernelContext& ctx) { recurrent_kernel(ctx, Cell::kLstm); }

// ---- DFT, STFT

// e^{sign * 2 pi i k n / N} with k n reduced modulo N first, so large products keep full precision.
void twiddle(int64_t k, int64_t n, int64_t N, double sign, double& re, double& im) {
  double theta;
  if (N <= 3037000499) {  // k, n < N: the product fits in int64
    theta = static_cast<double>((k * n) % N) / static_cast<double>(N);
  } else {
    const long double f = static_cast<long double>(k) * static_cast<long double>(n) / static_cast<long double>(N);
    theta = static_cast<double>(f - std::floor(f));
  }
  theta *= sign * 2.0 * std::numbers::pi;
  re = std::cos(theta);
  im = std::sin(theta);
}

void dft_kernel(KernelContext& ctx) {
  const Tensor& in = ctx.input(0);
  require_float(ctx, in, "input");
  const int64_t inverse = ctx.attr_int("inverse"), onesided = ctx.attr_int("onesided");
  if (inverse != 0 && inverse != 1) ctx.fail("inverse must be 0 or 1, got " + std::to_string(inverse));
  if (onesided != 0 && onesided != 1) ctx.fail("onesided must be 0 or 1, got " + std::to_string(onesided));
  const int64_t rank = static_cast<int64_t>(in.rank());
  if (rank < 2) ctx.fail("input must have rank >= 2 (signal dims plus a last dim of 1 or 2), got shape " +
                         shape_to_string(in.shape()));
  const int64_t comps = in.shape().back();
  if (comps != 1 && comps != 2)
    ctx.fail("the last dimension of the input must be 1 (real) or 2 (complex), got " + std::to_string(comps));
  int64_t axis = -2;
  if (ctx.opset() < 20) axis = ctx.attr_int("axis");
  else if (ctx.has_input(2)) axis = scalar_int(ctx, 2, "axis");
  if (axis < -rank || axis > rank - 2)
    ctx.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank) +
             " (the last dimension holds real/imaginary parts)");
  if (axis < 0) axis += rank;
  if (axis == rank - 1) ctx.fail("axis must not be the last dimension (real/imaginary parts)");

  // IRFFT (onesided inverse): the input is a one-sided spectrum, the output a real signal.
  const bool irfft = inverse == 1 && onesided == 1;
  const int64_t n_in = in.dim(static_cast<size_t>(axis));
  int64_t N = irfft ? 2 * (n_in - 1) : n_in;
  if (ctx.has_input(1)) {
    N = scalar_int(ctx, 1, "dft_length");
    if (N <= 0) ctx.fail("dft_length must be positive, got " + std::to_string(N));
  }
  if (N <= 0) ctx.fail("the transform length is " + std::to_string(N) + " for an axis of size " + std::to_string(n_in));
  const int64_t n_out = irfft ? N : onesided ? N / 2 + 1 : N;
  const int64_t out_comps = irfft ? 1 : 2;
  int64_t outer = 1, inner = 1;
  for (int64_t k = 0; k < axis; ++k) outer *= in.dim(static_cast<size_t>(k));
  for (int64_t k = axis + 1; k < rank - 1; ++k) inner *= in.dim(static_cast<size_t>(k));
  std::vector<int64_t> out_shape = in.shape();
  out_shape[static_cast<size_t>(axis)] = n_out;
  out_shape.back() = out_comps;

  const std::vector<double> x = in.to_double_vector();
  std::vector<double> y(static_cast<size_t>(shape_numel(out_shape)), 0.0);
  auto at = [&](int64_t o, int64_t n, int64_t i, int64_t c) -> double {
    if (c >= comps || n >= n_in) return 0.0;  // real input has no imaginary part; zero padding past n_in
    return x[static_cast<size_t>(((o * n_in + n) * inner + i) * comps + c)];
  };
  const double sign = inverse ? 1.0 : -1.0;
  const double scale = inverse ? 1.0 / static_cast<double>(N) : 1.0;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i)
      for (int64_t k = 0; k < n_out; ++k) {
        double sr = 0, si = 0;
        for (int64_t n = 0; n < N; ++n) {
          double cr, ci, xr, xi;
          if (irfft) {
            // Hermitian extension of the one-sided spectrum: X[n] = conj(X[N - n]) past N / 2.
            if (n <= N / 2) {
              xr = at(o, n, i, 0);
              xi = at(o, n, i, 1);
            } else {
              xr = at(o, N - n, i, 0);
              xi = -at(o, N - n, i, 1);
            }
          } else {
            if (n >= n_in) break;
            xr = at(o, n, i, 0);
            xi = at(o, n, i, 1);
          }
          twiddle(k, n, N, sign, cr, ci);
          sr += xr * cr - xi * ci;
          si += xr * ci + xi * cr;
        }
        const size_t base = static_cast<size_t>(((o * n_out + k) * inner + i) * out_comps);
        y[base] = sr * scale;
        if (!irfft) y[base + 1] = si * scale;
      }
  store(ctx.allocate_output(0, in.dtype(), out_shape), y);
}

void stft_kernel(KernelContext& ctx) {
  const Tensor& signal = ctx.input(0);
  require_float(ctx, signal, "signal");
  if (signal.rank() != 3 || (signal.dim(2) != 1 && signal.dim(2) != 2))
    ctx.fail("signal must have shape [batch, length, 1 or 2], got " + shape_to_string(signal.shape()));
  const int64_t onesided = ctx.attr_int("onesided");
  if (onesided != 0 && onesided != 1) ctx.fail("onesided must be 0 or 1, got " + std::to_string(onesided));
  const int64_t batch = signal.dim(0), len = signal.dim(1), comps = signal.dim(2);
  const int64_t step = scalar_int(ctx, 1, "frame_step");
  if (step <= 0) ctx.fail("frame_step must be positive, got " + std::to_string(step));
  std::optional<std::vector<double>> window;
  if (ctx.has_input(2)) {
    const Tensor& wt = ctx.input(2);
    if (wt.dtype() != signal.dtype())
      ctx.fail("window has dtype " + std::string(dtype_name(wt.dtype())) + " but signal has " +
               std::string(dtype_name(signal.dtype())));
    if (wt.rank() != 1) ctx.fail("window must have rank 1, got shape " + shape_to_string(wt.shape()));
    window = wt.to_double_vector();
  }
  // The frame length defaults to the window's length, or without a window to the whole signal.
  int64_t fl = window ? static_cast<int64_t>(window->size()) : len;
  if (ctx.has_input(3)) {
    fl = scalar_int(ctx, 3, "frame_length");
    if (fl <= 0) ctx.fail("frame_length must be positive, got " + std::to_string(fl));
    if (window && static_cast<int64_t>(window->size()) != fl)
      ctx.fail("the window has " + std::to_string(window->size()) + " elements but frame_length is " +
               std::to_string(fl));
  }
  if (fl <= 0) ctx.fail("the frame length must be positive, got " + std::to_string(fl));
  if (fl > len)
    ctx.fail("frame length " + std::to_string(fl) + " is longer than the signal (" + std::to_string(len) + ")");
  const int64_t frames = (len - fl) / step + 1;
  const int64_t bins = onesided ? fl / 2 + 1 : fl;

  const std::vector<double> x = signal.to_double_vector();
  std::vector<double> y(static_cast<size_t>(batch * frames * bins * 2), 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t f = 0; f < frames; ++f)
      for (int64_t k = 0; k < bins; ++k) {
        double sr = 0, si = 0;
        for (int64_t n = 0; n < fl; ++n) {
          const size_t idx = static_cast<size_t>((b * len + f * step + n) * comps);
          const double wv = window ? (*window)[static_cast<size_t>(n)] : 1.0;
          const double xr = x[idx] * wv, xi = comps == 2 ? x[idx + 1] * wv : 0.0;
          double cr, ci;
          twiddle(k, n, fl, -1.0, cr, ci);
          sr += xr * cr - xi * ci;
          si += xr * ci + xi * cr;
        }
        const size_t base = static_cast<size_t>(((b * frames + f) * bins + k) * 2);
        y[base] = sr;
        y[base + 1] = si;
      }
  store(ctx.allocate_output(0, signal.dtype(), {batch, frames, bins, 2}), y);
}

// ---- MelWeightMatrix

// Triangular filters between mel-spaced edges, as the ONNX reference computes them: num_mel_bins + 2
// points over [lower, upper] in mel (step (high - low) / (num_mel_bins + 2)), mapped to DFT bins by
// floor((dft_length + 1) * hz / sample_rate).
void mel_weight_matrix_kernel(KernelContext& ctx) {
  const int64_t num_mel_bins = scalar_int(ctx, 0, "num_mel_bins");
  const int64_t dft_length = scalar_int(ctx, 1, "dft_length");
  const int64_t sample_rate = scalar_int(ctx, 2, "sample_rate");
  const double lower = scalar_float(ctx, 3, "lower_edge_hertz");
  const double upper = scalar_float(ctx, 4, "upper_edge_hertz");
  if (num_mel_bins <= 0) ctx.fail("num_mel_bins must be positive, got " + std::to_string(num_mel_bins));
  if (dft_length <= 0) ctx.fail("dft_length must be positive, got " + std::to_string(dft_length));
  if (sample_rate <= 0) ctx.fail("sample_rate must be positive, got " + std::to_string(sample_rate));
  if (!(lower >= 0) || !(upper >= lower) || std::isinf(upper))
    ctx.fail("the edges must satisfy 0 <= lower_edge_hertz <= upper_edge_hertz, got " + std::to_string(lower) +
             " and " + std::to_string(upper));
  const int64_t onnx_type = ctx.attr_int("output_datatype");
  const DType out_dt = dtype_from_onnx(static_cast<int>(onnx_type));
  if (out_dt == DType::kUndefined || out_dt == DType::kBool || out_dt == DType::kString ||
      out_dt == DType::kF8E4M3FN || out_dt == DType::kF8E5M2)
    ctx.fail("output_datatype " + std::to_string(onnx_type) + " is not a numeric type");

  const int64_t spec_bins = dft_length / 2 + 1;
  const double low_mel = 2595.0 * std::log10(1.0 + lower / 700.0);
  const double high_mel = 2595.0 * std::log10(1.0 + upper / 700.0);
  const double mel_step = (high_mel - low_mel) / static_cast<double>(num_mel_bins + 2);
  std::vector<int64_t> edge(static_cast<size_t>(num_mel_bins + 2));
  for (int64_t i = 0; i < num_mel_bins + 2; ++i) {
    const double hz = 700.0 * (std::pow(10.0, (static_cast<double>(i) * mel_step + low_mel) / 2595.0) - 1.0);
    const double bin = std::floor(static_cast<double>(dft_length + 1) * hz / static_cast<double>(sample_rate));
    if (bin < 0 || bin >= static_cast<double>(spec_bins))
      ctx.fail("upper_edge_hertz " + std::to_string(upper) + " maps past the last of the " +
               std::to_string(spec_bins) + " spectrogram bins (sample_rate " + std::to_string(sample_rate) +
               ", dft_length " + std::to_string(dft_length) + ")");
    edge[static_cast<size_t>(i)] = static_cast<int64_t>(bin);
  }
  std::vector<double> out(static_cast<size_t>(spec_bins * num_mel_bins), 0.0);
  auto at = [&](int64_t j, int64_t i) -> double& { return out[static_cast<size_t>(j * num_mel_bins + i)]; };
  for (int64_t i = 0; i < num_mel_bins; ++i) {
    const int64_t lo = edge[static_cast<size_t>(i)], mid = edge[static_cast<size_t>(i + 1)],
                  hi = edge[static_cast<size_t>(i + 2)];
    if (mid == lo) at(mid, i) = 1.0;
    else
      for (int64_t j = lo; j <= mid; ++j) at(j, i) = static_cast<double>(j - lo) / static_cast<double>(mid - lo);
    if (hi > mid)
      for (int64_t j = mid; j < hi; ++j) at(j, i) = static_cast<double>(hi - j) / static_cast<double>(hi - mid);
  }
  store(ctx.allocate_output(0, out_dt, {spec_bins, num_mel_bins}), out);
}

}  // namespace

void register_rnn_kernels(KernelRegistry& r) {
  r.add("", "RNN", rnn_kernel);
  r.add("", "GRU", gru_kernel);
  r.add("", "LSTM", lstm_kernel);
  r.add("", "DFT", dft_kernel);
  r.add("", "STFT", stft_kernel);
  r.add("", "MelWeightMatrix", mel_weight_matrix_kernel);
}

}  // namespace kiln::reference
