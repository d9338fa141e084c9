// Reference kernels of the loss ops, GridSample, Unique, Det, the window generators, RoiAlign and the random
// generators.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <numeric>
#include <optional>
#include <random>
#include <type_traits>

#include "backends/reference/kernel.h"

namespace kiln::reference {

namespace {

std::string dt_name(DType dt) { return std::string(dtype_name(dt)); }

void require_float(const KernelContext& ctx, const Tensor& t, const char* what) {
  if (!dtype_is_float(t.dtype()))
    ctx.fail(std::string(what) + " must be a float tensor, got " + dt_name(t.dtype()));
}

bool is_numeric(DType dt) { return dtype_is_float(dt) || dtype_is_integer(dt); }

// One double converted to an element of type To: float types round, integers truncate toward
// zero and saturate (NaN -> 0), as Cast does; bool is v != 0.
template <typename To>
To from_double(double v) {
  if constexpr (std::is_same_v<To, bool>) {
    return v != 0;
  } else if constexpr (std::is_integral_v<To>) {
    if (std::isnan(v)) return To(0);
    const double t = std::trunc(v);
    if (t <= static_cast<double>(std::numeric_limits<To>::min())) return std::numeric_limits<To>::min();
    if (t >= static_cast<double>(std::numeric_limits<To>::max())) return std::numeric_limits<To>::max();
    return static_cast<To>(t);
  } else if constexpr (std::is_same_v<To, double>) {
    return v;
  } else {
    return To(static_cast<float>(v));
  }
}

// Allocates output i with the given dtype and shape and fills it from doubles.
void store(KernelContext& ctx, size_t i, DType dt, std::vector<int64_t> shape, const std::vector<double>& v) {
  Tensor& out = ctx.allocate_output(i, dt, std::move(shape));
  if (static_cast<size_t>(out.numel()) != v.size())
    throw Error(ErrorCode::kInternal, "extra_ops store: value count does not match the shape");
  dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    T* p = out.mutable_data<T>();
    for (size_t k = 0; k < v.size(); ++k) p[k] = from_double<T>(v[k]);
  });
}

// Output dtype from an attribute holding an ONNX TensorProto.DataType code.
DType dtype_from_attr(const KernelContext& ctx, const std::string& name) {
  const int64_t code = ctx.attr_int(name);
  const DType dt = dtype_from_onnx(static_cast<int>(code));
  if (dt == DType::kUndefined) ctx.fail("attribute " + name + " = " + std::to_string(code) + " is not a known dtype");
  return dt;
}

// ---- NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss

// Loss from log-probabilities `logp` laid out as [N, C, D] (D = d1 * ... * dk), with the input,
// target and weight checks shared by both ops. Writes output 0.
void loss_from_log_probs(KernelContext& ctx, const Tensor& input, const std::vector<double>& logp) {
  const std::string reduction = ctx.attr_string("reduction");
  if (reduction != "none" && reduction != "sum" && reduction != "mean")
    ctx.fail("attribute reduction is '" + reduction + "', expected 'none', 'sum' or 'mean'");
  const Tensor& target = ctx.input(1);
  if (target.dtype() != DType::kI32 && target.dtype() != DType::kI64)
    ctx.fail("target must be int32 or int64, got " + dt_name(target.dtype()));
  const auto& in_shape = input.shape();
  std::vector<int64_t> want(in_shape.begin(), in_shape.end());
  want.erase(want.begin() + 1);
  if (target.shape() != want)
    ctx.fail("target has shape " + shape_to_string(target.shape()) + " but input of shape " +
             shape_to_string(in_shape) + " needs target shape " + shape_to_string(want));
  const int64_t N = in_shape[0], C = in_shape[1];
  const int64_t D = N == 0 ? 0 : target.numel() / N;
  std::vector<double> weight;
  if (ctx.has_input(2)) {
    const Tensor& w = ctx.input(2);
    if (w.dtype() != input.dtype())
      ctx.fail("weight has dtype " + dt_name(w.dtype()) + " but the input has dtype " + dt_name(input.dtype()));
    if (w.rank() != 1 || w.dim(0) != C)
      ctx.fail("weight must have shape [" + std::to_string(C) + "], got " + shape_to_string(w.shape()));
    weight = w.to_double_vector();
  }
  const std::optional<int64_t> ignore = ctx.attr_int_opt("ignore_index");
  const std::vector<int64_t> t = target.to_int64_vector();
  std::vector<double> loss(t.size(), 0.0);
  double loss_sum = 0, weight_sum = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) {
      const size_t k = static_cast<size_t>(n * D + d);
      const int64_t c = t[k];
      if (ignore && c == *ignore) continue;  // zero loss and zero weight
      if (c < 0 || c >= C)
        ctx.fail("target value " + std::to_string(c) + " at flat index " + std::to_string(k) +
                 " is out of range [0, " + std::to_string(C) + ")" +
                 (ignore ? " and is not ignore_index " + std::to_string(*ignore) : std::string()));
      const double w = weight.empty() ? 1.0 : weight[static_cast<size_t>(c)];
      loss[k] = -logp[static_cast<size_t>((n * C + c) * D + d)] * w;
      loss_sum += loss[k];
      weight_sum += w;
    }
  if (reduction == "none") {
    store(ctx, 0, input.dtype(), target.shape(), loss);
  } else {
    // "mean" divides by the total weight of the samples that count (their number without weights).
    store(ctx, 0, input.dtype(), {}, {reduction == "sum" ? loss_sum : loss_sum / weight_sum});
  }
}

void check_loss_input(const KernelContext& ctx, const Tensor& input, const char* what) {
  require_float(ctx, input, what);
  if (input.rank() < 2)
    ctx.fail(std::string(what) + " must have rank >= 2, got shape " + shape_to_string(input.shape()));
}

void nll_kernel(KernelContext& ctx) {
  const Tensor& input = ctx.input(0);
  check_loss_input(ctx, input, "input");
  loss_from_log_probs(ctx, input, input.to_double_vector());
}

void sce_kernel(KernelContext& ctx) {
  const Tensor& scores = ctx.input(0);
  check_loss_input(ctx, scores, "scores");
  const int64_t N = scores.dim(0), C = scores.dim(1);
  const int64_t D = N * C == 0 ? 0 : scores.numel() / (N * C);
  std::vector<double> x = scores.to_double_vector();
  // Log-softmax over the class axis, shifted by the maximum for stability.
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) {
      auto at = [&](int64_t c) -> double& { return x[static_cast<size_t>((n * C + c) * D + d)]; };
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < C; ++c) m = std::max(m, at(c));
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += std::exp(at(c) - m);
      const double lse = m + std::log(s);
      for (int64_t c = 0; c < C; ++c) at(c) -= lse;
    }
  loss_from_log_probs(ctx, scores, x);
  if (ctx.has_output(1)) store(ctx, 1, scores.dtype(), scores.shape(), x);
}

// ---- GridSample

enum class GridMode { kLinear, kNearest, kCubic };
enum class GridPad { kZeros, kBorder, kReflection };

// Reflects x into [lo, hi] by bouncing off the borders (the rule ONNX and PyTorch use).
double reflect(double x, double lo, double hi) {
  const double range = hi - lo;
  if (range <= 0) return lo;
  if (!std::isfinite(x)) return lo;  // no meaningful reflection of an infinite coordinate
  if (x < lo) {
    const double dx = lo - x;
    const double n = std::floor(dx / range);
    const double r = dx - n * range;
    return std::fmod(n, 2.0) == 0 ? lo + r : hi - r;
  }
  if (x > hi) {
    const double dx = x - hi;
    const double n = std::floor(dx / range);
    const double r = dx - n * range;
    return std::fmod(n, 2.0) == 0 ? hi - r : lo + r;
  }
  return x;
}

// Keys cubic convolution weights (alpha = -0.75, as PyTorch) of taps at -1, 0, 1, 2 for offset t in [0, 1).
void cubic_coeffs(double t, double c[4]) {
  const double A = -0.75;
  const double x = std::fabs(t);
  c[0] = ((A * (x + 1) - 5 * A) * (x + 1) + 8 * A) * (x + 1) - 4 * A;
  c[1] = ((A + 2) * x - (A + 3)) * x * x + 1;
  c[2] = ((A + 2) * (1 - x) - (A + 3)) * (1 - x) * (1 - x) + 1;
  c[3] = ((A * (2 - x) - 5 * A) * (2 - x) + 8 * A) * (2 - x) - 4 * A;
}

struct Tap {
  int64_t index;  // -1: outside the input under zeros padding (contributes 0)
  double weight;
};

void grid_sample_kernel(KernelContext& ctx) {
  const Tensor& X = ctx.input(0);
  const Tensor& grid = ctx.input(1);
  const bool v16 = ctx.opset() < 20;
  if (!dtype_is_float(grid.dtype())) ctx.fail("grid must be a float tensor, got " + dt_name(grid.dtype()));
  if (v16) {
    require_float(ctx, X, "X");
    if (X.dtype() != grid.dtype())
      ctx.fail("X has dtype " + dt_name(X.dtype()) + " but grid has dtype " + dt_name(grid.dtype()));
    if (X.rank() != 4) ctx.fail("X must be 4-D (N, C, H, W) at this opset, got " + shape_to_string(X.shape()));
  } else if (!is_numeric(X.dtype())) {
    ctx.fail("X must be a numeric tensor, got " + dt_name(X.dtype()));
  }
  if (X.rank() < 3) ctx.fail("X must have rank >= 3, got shape " + shape_to_string(X.shape()));
  const size_t r = X.rank() - 2;
  if (grid.rank() != X.rank() || grid.shape().back() != static_cast<int64_t>(r) || grid.dim(0) != X.dim(0))
    ctx.fail("grid of shape " + shape_to_string(grid.shape()) + " does not match X of shape " +
             shape_to_string(X.shape()) + " (expected [N, out dims..., " + std::to_string(r) + "])");
  const std::string& mode_s = ctx.attr_string("mode");
  GridMode mode;
  if (mode_s == "bilinear" || mode_s == "linear") mode = GridMode::kLinear;
  else if (mode_s == "nearest") mode = GridMode::kNearest;
  else if (mode_s == "bicubic" || mode_s == "cubic") mode = GridMode::kCubic;
  else ctx.fail("attribute mode is '" + mode_s + "', expected linear/bilinear, nearest or cubic/bicubic");
  const std::string& pad_s = ctx.attr_string("padding_mode");
  GridPad pad;
  if (pad_s == "zeros") pad = GridPad::kZeros;
  else if (pad_s == "border") pad = GridPad::kBorder;
  else if (pad_s == "reflection") pad = GridPad::kReflection;
  else ctx.fail("attribute padding_mode is '" + pad_s + "', expected zeros, border or reflection");
  const bool align = ctx.attr_int("align_corners") != 0;

  const int64_t N = X.dim(0), C = X.dim(1);
  std::vector<int64_t> in_dims(X.shape().begin() + 2, X.shape().end());
  std::vector<int64_t> out_shape = {N, C};
  out_shape.insert(out_shape.end(), grid.shape().begin() + 1, grid.shape().end() - 1);
  const std::vector<int64_t> in_strides = dense_strides(in_dims);
  const int64_t in_plane = shape_numel(in_dims);
  int64_t out_plane = 1;
  for (size_t i = 2; i < out_shape.size(); ++i) out_plane *= out_shape[i];
  const std::vector<double> xs = X.to_double_vector();
  const std::vector<double> gs = grid.to_double_vector();
  std::vector<double> ys(static_cast<size_t>(shape_numel(out_shape)), 0.0);
  if (in_plane == 0) {  // nothing to sample from: every position is padding
    store(ctx, 0, X.dtype(), out_shape, ys);
    return;
  }

  std::vector<std::vector<Tap>> taps(r);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < out_plane; ++p) {
      bool nan = false;
      for (size_t i = 0; i < r; ++i) {
        const double d = static_cast<double>(in_dims[i]);
        // The grid lists coordinates innermost dimension first (x, y, ...).
        const double g = gs[static_cast<size_t>((n * out_plane + p) * static_cast<int64_t>(r) + (r - 1 - i))];
        double v = align ? (g + 1) / 2 * (d - 1) : ((g + 1) * d - 1) / 2;
        if (std::isnan(v)) {
          nan = true;
          break;
        }
        // PyTorch (and so ONNX) rounds half to even in 2-D and half away from zero in 3-D.
        if (mode == GridMode::kNearest) v = r == 3 ? std::round(v) : std::nearbyint(v);
        const double lo = align ? 0 : -0.5, hi = align ? d - 1 : d - 0.5;
        if (v < lo || v > hi) {
          if (pad == GridPad::kBorder) v = std::clamp(v, 0.0, d - 1);
          else if (pad == GridPad::kReflection) v = reflect(v, lo, hi);
        }
        // Far outside the input every tap is padding; clamping keeps the integer conversion defined.
        v = std::clamp(v, -4.0 - d, d + 4.0);
        const int64_t size = in_dims[i];
        auto map = [&](int64_t k) -> int64_t {
          if (pad == GridPad::kZeros) return k >= 0 && k < size ? k : -1;
          if (pad == GridPad::kBorder) return std::clamp<int64_t>(k, 0, size - 1);
          return std::clamp<int64_t>(static_cast<int64_t>(reflect(static_cast<double>(k), lo, hi)), 0, size - 1);
        };
        auto& t = taps[i];
        t.clear();
        if (mode == GridMode::kNearest) {
          t.push_back({map(static_cast<int64_t>(v)), 1.0});
        } else {
          const double f = std::floor(v);
          const int64_t x0 = static_cast<int64_t>(f);
          const double frac = v - f;
          if (mode == GridMode::kLinear) {
            t.push_back({map(x0), 1 - frac});
            t.push_back({map(x0 + 1), frac});
          } else {
            double c[4];
            cubic_coeffs(frac, c);
            for (int k = 0; k < 4; ++k) t.push_back({map(x0 - 1 + k), c[k]});
          }
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        const size_t out_index = static_cast<size_t>((n * C + c) * out_plane + p);
        if (nan) {
          ys[out_index] = std::numeric_limits<double>::quiet_NaN();
          continue;
        }
        const int64_t plane = (n * C + c) * in_plane;
        // Tensor-product interpolation: sum over every combination of one tap per dimension.
        double acc = 0;
        std::vector<size_t> pick(r, 0);
        while (true) {
          double w = 1;
          int64_t off = 0;
          bool inside = true;
          for (size_t i = 0; i < r; ++i) {
            const Tap& tap = taps[i][pick[i]];
            if (tap.index < 0) inside = false;
            w *= tap.weight;
            off += tap.index * in_strides[i];
          }
          if (inside) acc += w * xs[static_cast<size_t>(plane + off)];
          size_t i = r;
          while (i-- > 0) {
            if (++pick[i] < taps[i].size()) break;
            pick[i] = 0;
          }
          if (i == static_cast<size_t>(-1)) break;
        }
        ys[out_index] = acc;
      }
    }
  store(ctx, 0, X.dtype(), out_shape, ys);
}

// ---- Unique

template <typename T>
void unique_impl(KernelContext& ctx, const Tensor& x, std::optional<int64_t> axis, bool sorted) {
  using C = compute_t<T>;
  const T* p = x.data<T>();
  int64_t outer = 1, n = x.numel(), inner = 1;
  if (axis) {
    n = x.dim(static_cast<size_t>(*axis));
    for (int64_t i = 0; i < *axis; ++i) outer *= x.dim(static_cast<size_t>(i));
    for (size_t i = static_cast<size_t>(*axis) + 1; i < x.rank(); ++i) inner *= x.dim(i);
  }
  // NaNs sort last and compare equal to each other (as numpy.unique does).
  auto less = [](C a, C b) {
    if constexpr (std::is_floating_point_v<C>) {
      if (std::isnan(a)) return false;
      if (std::isnan(b)) return true;
    }
    return a < b;
  };
  // Lexicographic comparison of slices k1 and k2 along the axis (elements in row-major order).
  auto cmp = [&](int64_t k1, int64_t k2) {
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < inner; ++j) {
        const C a = static_cast<C>(p[(o * n + k1) * inner + j]);
        const C b = static_cast<C>(p[(o * n + k2) * inner + j]);
        if (less(a, b)) return -1;
        if (less(b, a)) return 1;
      }
    return 0;
  };
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cmp(a, b) < 0; });
  // Groups of equal slices in sorted order; stability makes each group's first member its first occurrence.
  std::vector<int64_t> first, count;
  std::vector<int64_t> group_of(static_cast<size_t>(n));
  for (size_t i = 0; i < order.size(); ++i) {
    if (i == 0 || cmp(order[i - 1], order[i]) != 0) {
      first.push_back(order[i]);
      count.push_back(0);
    }
    count.back()++;
    group_of[static_cast<size_t>(order[i])] = static_cast<int64_t>(first.size()) - 1;
  }
  const size_t U = first.size();
  std::vector<size_t> rank(U);  // group -> output position
  std::vector<size_t> by_position(U);
  std::iota(by_position.begin(), by_position.end(), size_t{0});
  if (!sorted)
    std::sort(by_position.begin(), by_position.end(), [&](size_t a, size_t b) { return first[a] < first[b]; });
  for (size_t u = 0; u < U; ++u) rank[by_position[u]] = u;

  std::vector<int64_t> y_shape = axis ? x.shape() : std::vector<int64_t>{n};
  y_shape[axis ? static_cast<size_t>(*axis) : 0] = static_cast<int64_t>(U);
  Tensor& y = ctx.allocate_output(0, x.dtype(), y_shape);
  T* yp = y.mutable_data<T>();
  for (int64_t o = 0; o < outer; ++o)
    for (size_t u = 0; u < U; ++u)
      for (int64_t j = 0; j < inner; ++j)
        yp[(o * static_cast<int64_t>(U) + static_cast<int64_t>(u)) * inner + j] =
            p[(o * n + first[by_position[u]]) * inner + j];
  if (ctx.has_output(1)) {
    int64_t* q = ctx.allocate_output(1, DType::kI64, {static_cast<int64_t>(U)}).mutable_data<int64_t>();
    for (size_t u = 0; u < U; ++u) q[u] = first[by_position[u]];
  }
  if (ctx.has_output(2)) {
    int64_t* q = ctx.allocate_output(2, DType::kI64, {n}).mutable_data<int64_t>();
    for (int64_t k = 0; k < n; ++k)
      q[k] = static_cast<int64_t>(rank[static_cast<size_t>(group_of[static_cast<size_t>(k)])]);
  }
  if (ctx.has_output(3)) {
    int64_t* q = ctx.allocate_output(3, DType::kI64, {static_cast<int64_t>(U)}).mutable_data<int64_t>();
    for (size_t u = 0; u < U; ++u) q[u] = count[by_position[u]];
  }
}

void unique_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (!is_numeric(x.dtype()) && x.dtype() != DType::kBool)
    ctx.unsupported("no reference kernel computes Unique on dtype " + dt_name(x.dtype()));
  std::optional<int64_t> axis = ctx.attr_int_opt("axis");
  if (axis) axis = normalize_axis(ctx, *axis, static_cast<int64_t>(x.rank()));
  const int64_t s = ctx.attr_int("sorted");
  if (s != 0 && s != 1) ctx.fail("attribute sorted must be 0 or 1, got " + std::to_string(s));
  dispatch_dtype(x.dtype(), [&](auto tag) { unique_impl<decltype(tag)>(ctx, x, axis, s == 1); });
}

// ---- Det

void det_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "X");
  if (x.rank() < 2) ctx.fail("X must have rank >= 2, got shape " + shape_to_string(x.shape()));
  const int64_t M = x.dim(x.rank() - 1);
  if (x.dim(x.rank() - 2) != M) ctx.fail("X must hold square matrices, got shape " + shape_to_string(x.shape()));
  std::vector<int64_t> out_shape(x.shape().begin(), x.shape().end() - 2);
  const int64_t batch = shape_numel(out_shape);
  const std::vector<double> v = x.to_double_vector();
  std::vector<double> out(static_cast<size_t>(batch));
  std::vector<double> a(static_cast<size_t>(M * M));
  for (int64_t b = 0; b < batch; ++b) {
    std::copy(v.begin() + b * M * M, v.begin() + (b + 1) * M * M, a.begin());
    auto at = [&](int64_t i, int64_t j) -> double& { return a[static_cast<size_t>(i * M + j)]; };
    // Gaussian elimination with partial pivoting: det = sign * product of pivots.
    double det = 1;
    for (int64_t k = 0; k < M; ++k) {
      int64_t piv = k;
      for (int64_t i = k + 1; i < M; ++i)
        if (std::fabs(at(i, k)) > std::fabs(at(piv, k))) piv = i;
      if (at(piv, k) == 0) {
        det = 0;
        break;
      }
      if (piv != k) {
        for (int64_t j = 0; j < M; ++j) std::swap(at(k, j), at(piv, j));
        det = -det;
      }
      det *= at(k, k);
      for (int64_t i = k + 1; i < M; ++i) {
        const double f = at(i, k) / at(k, k);
        for (int64_t j = k + 1; j < M; ++j) at(i, j) -= f * at(k, j);
      }
    }
    out[static_cast<size_t>(b)] = det;
  }
  store(ctx, 0, x.dtype(), out_shape, out);
}

// ---- HannWindow, HammingWindow, BlackmanWindow

void window_kernel(KernelContext& ctx) {
  const Tensor& size_in = ctx.input(0);
  if (size_in.dtype() != DType::kI32 && size_in.dtype() != DType::kI64)
    ctx.fail("size must be int32 or int64, got " + dt_name(size_in.dtype()));
  if (size_in.numel() != 1) ctx.fail("size must be a scalar, got shape " + shape_to_string(size_in.shape()));
  const int64_t size = size_in.to_int64_vector()[0];
  if (size <= 0) ctx.fail("size must be greater than 0, got " + std::to_string(size));
  const int64_t periodic = ctx.attr_int("periodic");
  if (periodic != 0 && periodic != 1) ctx.fail("attribute periodic must be 0 or 1, got " + std::to_string(periodic));
  const DType dt = dtype_from_attr(ctx, "output_datatype");
  if (!is_numeric(dt)) ctx.fail("attribute output_datatype names " + dt_name(dt) + ", expected a numeric dtype");
  // Generalized cosine window a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N).
  double a0 = 0.5, a1 = 0.5, a2 = 0.0;
  if (ctx.node().op_type == "HammingWindow") {
    a0 = 25.0 / 46.0;
    a1 = 21.0 / 46.0;
  } else if (ctx.node().op_type == "BlackmanWindow") {
    a0 = 0.42;
    a2 = 0.08;
  }
  // A symmetric window has N = size - 1, so a symmetric window of size 1 is 0/0 (NaN), as in the
  // spec's function body.
  const double N = static_cast<double>(periodic ? size : size - 1);
  std::vector<double> w(static_cast<size_t>(size));
  for (int64_t n = 0; n < size; ++n) {
    const double angle = 2 * std::numbers::pi * static_cast<double>(n) / N;
    w[static_cast<size_t>(n)] = a0 - a1 * std::cos(angle) + a2 * std::cos(2 * angle);
  }
  store(ctx, 0, dt, {size}, w);
}

// ---- RoiAlign

void roi_align_kernel(KernelContext& ctx) {
  const Tensor& X = ctx.input(0);
  const Tensor& rois = ctx.input(1);
  const Tensor& batch_indices = ctx.input(2);
  require_float(ctx, X, "X");
  if (rois.dtype() != X.dtype())
    ctx.fail("rois has dtype " + dt_name(rois.dtype()) + " but X has dtype " + dt_name(X.dtype()));
  if (batch_indices.dtype() != DType::kI64)
    ctx.fail("batch_indices must be int64, got " + dt_name(batch_indices.dtype()));
  if (X.rank() != 4) ctx.fail("X must be 4-D (N, C, H, W), got shape " + shape_to_string(X.shape()));
  if (rois.rank() != 2 || rois.dim(1) != 4)
    ctx.fail("rois must have shape [num_rois, 4], got " + shape_to_string(rois.shape()));
  const int64_t num_rois = rois.dim(0);
  if (batch_indices.rank() != 1 || batch_indices.dim(0) != num_rois)
    ctx.fail("batch_indices must have shape [" + std::to_string(num_rois) + "], got " +
             shape_to_string(batch_indices.shape()));
  const std::string& mode = ctx.attr_string("mode");
  if (mode != "avg" && mode != "max") ctx.fail("attribute mode is '" + mode + "', expected 'avg' or 'max'");
  bool half_pixel = false;
  if (ctx.opset() >= 16) {
    const std::string& ctm = ctx.attr_string("coordinate_transformation_mode");
    if (ctm != "half_pixel" && ctm != "output_half_pixel")
      ctx.fail("attribute coordinate_transformation_mode is '" + ctm +
               "', expected 'half_pixel' or 'output_half_pixel'");
    half_pixel = ctm == "half_pixel";
  }
  const int64_t PH = ctx.attr_int("output_height"), PW = ctx.attr_int("output_width");
  if (PH < 1 || PW < 1)
    ctx.fail("output_height and output_width must be >= 1, got " + std::to_string(PH) + " and " + std::to_string(PW));
  const int64_t sampling_ratio = ctx.attr_int("sampling_ratio");
  if (sampling_ratio < 0) ctx.fail("sampling_ratio must be >= 0, got " + std::to_string(sampling_ratio));
  const double scale = ctx.attr_float("spatial_scale");
  const int64_t N = X.dim(0), C = X.dim(1), H = X.dim(2), W = X.dim(3);
  const std::vector<double> xs = X.to_double_vector();
  const std::vector<double> rs = rois.to_double_vector();
  const std::vector<int64_t> bi = batch_indices.to_int64_vector();
  std::vector<double> out(static_cast<size_t>(num_rois * C * PH * PW), 0.0);
  const double offset = half_pixel ? 0.5 : 0.0;

  for (int64_t r = 0; r < num_rois; ++r) {
    const int64_t b = bi[static_cast<size_t>(r)];
    if (b < 0 || b >= N)
      ctx.fail("batch_indices[" + std::to_string(r) + "] = " + std::to_string(b) + " is out of range [0, " +
               std::to_string(N) + ")");
    const double* roi = &rs[static_cast<size_t>(r * 4)];
    for (int k = 0; k < 4; ++k)
      if (!std::isfinite(roi[k])) ctx.fail("rois[" + std::to_string(r) + "] has a non-finite coordinate");
    const double start_w = roi[0] * scale - offset, start_h = roi[1] * scale - offset;
    const double end_w = roi[2] * scale - offset, end_h = roi[3] * scale - offset;
    double roi_w = end_w - start_w, roi_h = end_h - start_h;
    if (!half_pixel) {  // the legacy mode forces malformed RoIs to 1x1
      roi_w = std::max(roi_w, 1.0);
      roi_h = std::max(roi_h, 1.0);
    }
    const double bin_h = roi_h / static_cast<double>(PH), bin_w = roi_w / static_cast<double>(PW);
    const double grid_hd = sampling_ratio > 0 ? static_cast<double>(sampling_ratio) : std::ceil(roi_h / PH);
    const double grid_wd = sampling_ratio > 0 ? static_cast<double>(sampling_ratio) : std::ceil(roi_w / PW);
    if (grid_hd * grid_wd > double(1 << 24))
      ctx.fail("rois[" + std::to_string(r) + "] needs " + std::to_string(grid_hd) + " x " + std::to_string(grid_wd) +
               " samples per bin, more than the reference kernel allows");
    const int64_t grid_h = std::max<int64_t>(static_cast<int64_t>(grid_hd), 0);
    const int64_t grid_w = std::max<int64_t>(static_cast<int64_t>(grid_wd), 0);
    const double count = static_cast<double>(std::max<int64_t>(grid_h * grid_w, 1));

    // Bilinear sample weights and positions, shared by all channels.
    struct Sample {
      int64_t pos[4];
      double w[4];
    };
    auto sample_at = [&](double y, double x) {
      Sample s{{0, 0, 0, 0}, {0, 0, 0, 0}};
      if (y < -1.0 || y > static_cast<double>(H) || x < -1.0 || x > static_cast<double>(W) || H == 0 || W == 0)
        return s;  // outside the feature map: contributes 0
      y = std::max(y, 0.0);
      x = std::max(x, 0.0);
      int64_t y_low = static_cast<int64_t>(y), x_low = static_cast<int64_t>(x), y_high, x_high;
      if (y_low >= H - 1) {
        y_high = y_low = H - 1;
        y = static_cast<double>(y_low);
      } else {
        y_high = y_low + 1;
      }
      if (x_low >= W - 1) {
        x_high = x_low = W - 1;
        x = static_cast<double>(x_low);
      } else {
        x_high = x_low + 1;
      }
      const double ly = y - static_cast<double>(y_low), lx = x - static_cast<double>(x_low);
      const double hy = 1 - ly, hx = 1 - lx;
      s = Sample{{y_low * W + x_low, y_low * W + x_high, y_high * W + x_low, y_high * W + x_high},
                 {hy * hx, hy * lx, ly * hx, ly * lx}};
      return s;
    };
    for (int64_t ph = 0; ph < PH; ++ph)
      for (int64_t pw = 0; pw < PW; ++pw) {
        std::vector<Sample> samples;
        for (int64_t iy = 0; iy < grid_h; ++iy) {
          const double y = start_h + ph * bin_h + (iy + 0.5) * bin_h / static_cast<double>(grid_h);
          for (int64_t ix = 0; ix < grid_w; ++ix) {
            const double x = start_w + pw * bin_w + (ix + 0.5) * bin_w / static_cast<double>(grid_w);
            samples.push_back(sample_at(y, x));
          }
        }
        for (int64_t c = 0; c < C && H * W > 0; ++c) {
          const double* plane = &xs[static_cast<size_t>((b * C + c) * H * W)];
          double v = 0;
          if (mode == "avg") {
            for (const Sample& s : samples)
              for (int k = 0; k < 4; ++k) v += s.w[k] * plane[s.pos[k]];
            v /= count;
          } else {
            // "max" takes the largest weighted corner value (w_k * x_k), not the max of the
            // interpolated samples: this is what ONNX's reference and ONNX Runtime compute.
            bool first = true;
            for (const Sample& s : samples) {
              double m = s.w[0] * plane[s.pos[0]];
              for (int k = 1; k < 4; ++k) m = std::max(m, s.w[k] * plane[s.pos[k]]);
              v = first ? m : std::max(v, m);
              first = false;
            }
          }
          out[static_cast<size_t>(((r * C + c) * PH + ph) * PW + pw)] = v;
        }
      }
  }
  store(ctx, 0, X.dtype(), {num_rois, C, PH, PW}, out);
}

// ---- Random generators

// A generator seeded from the seed attribute when present (the same seed gives the same values in
// this implementation, though not in others), else from std::random_device.
std::mt19937_64 make_rng(const KernelContext& ctx) {
  if (ctx.has_attr("seed")) {
    const float seed = ctx.attr_float("seed");
    uint32_t bits;
    std::memcpy(&bits, &seed, sizeof bits);
    return std::mt19937_64(0x9e3779b97f4a7c15ull ^ bits);
  }
  std::random_device rd;
  return std::mt19937_64((static_cast<uint64_t>(rd()) << 32) ^ rd());
}

double uniform01(std::mt19937_64& g) { return std::generate_canonical<double, 53>(g); }

// Output dtype of the *Like ops and Bernoulli: the dtype attribute, else the input's dtype.
DType like_dtype(const KernelContext& ctx) {
  return ctx.has_attr("dtype") ? dtype_from_attr(ctx, "dtype") : ctx.input(0).dtype();
}

void fill_random(KernelContext& ctx, DType dt, std::vector<int64_t> shape) {
  if (!dtype_is_float(dt)) ctx.fail("the output dtype must be a float type, got " + dt_name(dt));
  std::mt19937_64 g = make_rng(ctx);
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  const bool uniform = ctx.node().op_type.starts_with("RandomUniform");
  if (uniform) {
    const double low = ctx.attr_float("low"), high = ctx.attr_float("high");
    for (double& x : v) x = low + (high - low) * uniform01(g);
  } else {
    const double mean = ctx.attr_float("mean"), scale = ctx.attr_float("scale");
    std::normal_distribution<double> normal(0.0, 1.0);
    for (double& x : v) x = mean + scale * normal(g);
  }
  store(ctx, 0, dt, std::move(shape), v);
}

void random_kernel(KernelContext& ctx) {
  const std::vector<int64_t>& shape = ctx.attr_ints("shape");
  for (int64_t d : shape)
    if (d < 0) ctx.fail("attribute shape has a negative dimension " + std::to_string(d));
  fill_random(ctx, dtype_from_attr(ctx, "dtype"), shape);
}

void random_like_kernel(KernelContext& ctx) { fill_random(ctx, like_dtype(ctx), ctx.input(0).shape()); }

void bernoulli_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "input");
  const DType dt = like_dtype(ctx);
  if (!is_numeric(dt) && dt != DType::kBool) ctx.fail("the output dtype must be numeric or bool, got " + dt_name(dt));
  const std::vector<double> p = x.to_double_vector();
  std::mt19937_64 g = make_rng(ctx);
  std::vector<double> v(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    if (!(p[i] >= 0 && p[i] <= 1))
      ctx.fail("input[" + std::to_string(i) + "] = " + std::to_string(p[i]) + " is not a probability in [0, 1]");
    v[i] = uniform01(g) < p[i] ? 1.0 : 0.0;
  }
  store(ctx, 0, dt, x.shape(), v);
}

}  // namespace

void register_extra_kernels(KernelRegistry& r) {
  r.add("", "NegativeLogLikelihoodLoss", nll_kernel);
  r.add("", "SoftmaxCrossEntropyLoss", sce_kernel);
  r.add("", "GridSample", grid_sample_kernel);
  r.add("", "Unique", unique_kernel);
  r.add("", "Det", det_kernel);
  r.add("", "HannWindow", window_kernel);
  r.add("", "HammingWindow", window_kernel);
  r.add("", "BlackmanWindow", window_kernel);
  r.add("", "RoiAlign", roi_align_kernel);
  r.add("", "RandomUniform", random_kernel);
  r.add("", "RandomNormal", random_kernel);
  r.add("", "RandomUniformLike", random_like_kernel);
  r.add("", "RandomNormalLike", random_like_kernel);
  r.add("", "Bernoulli", bernoulli_kernel);
}

}  // namespace kiln::reference
