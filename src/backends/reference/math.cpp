// Reference kernels of linear algebra, convolution, normalization and pooling ops (reductions and
// softmax live in reduce.cpp). MatMul and Conv share a small packed GEMM so that real models
// (ResNet-50, BERT) run in seconds; everything else is plain loops.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "backends/reference/kernel.h"
#include "backends/reference/window.h"

namespace kiln::reference {

namespace {

// ---- Small helpers

std::string ints_to_string(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

int64_t product(const std::vector<int64_t>& v, size_t begin = 0, size_t end = SIZE_MAX) {
  int64_t p = 1;
  for (size_t i = begin; i < std::min(end, v.size()); ++i) p *= v[i];
  return p;
}

void require_float(const KernelContext& ctx, const Tensor& t, const char* what) {
  if (!dtype_is_float(t.dtype()) || t.dtype() == DType::kF8E4M3FN || t.dtype() == DType::kF8E5M2)
    ctx.fail(std::string(what) + " must be a float tensor (f32, f64, f16 or bf16), got " +
             std::string(dtype_name(t.dtype())));
}

void require_same_dtype(const KernelContext& ctx, const Tensor& a, const Tensor& b, const char* what_a,
                        const char* what_b) {
  if (a.dtype() != b.dtype())
    ctx.fail(std::string(what_a) + " and " + what_b + " have different dtypes " + std::string(dtype_name(a.dtype())) +
             " and " + std::string(dtype_name(b.dtype())));
}

void require_rank_at_least(const KernelContext& ctx, const Tensor& t, size_t rank, const char* what) {
  if (t.rank() < rank)
    ctx.fail(std::string(what) + " must have rank >= " + std::to_string(rank) + ", got shape " +
             shape_to_string(t.shape()));
}

// A per-channel parameter (scale, bias, mean, ...) read as doubles; fails unless it has `count` elements.
std::vector<double> channel_param(const KernelContext& ctx, const Tensor& t, int64_t count, const char* what) {
  if (t.numel() != count)
    ctx.fail(std::string(what) + " has shape " + shape_to_string(t.shape()) + ", expected " + std::to_string(count) +
             " elements");
  return t.to_double_vector();
}

// Accumulation type: float for 16-bit floats, T for f32/f64, and a wrapping unsigned 64-bit
// integer for integer types (so overflow wraps as it does in numpy instead of being undefined).
template <typename T>
struct AccumType {
  using type = std::conditional_t<std::is_integral_v<T>, uint64_t, compute_t<T>>;
};
template <typename T> using acc_t = typename AccumType<T>::type;

// The dtype named by a stash_type attribute.
DType stash_dtype(const KernelContext& ctx) {
  const DType dt = dtype_from_onnx(static_cast<int>(ctx.attr_int("stash_type")));
  if (!dtype_is_float(dt) || dt == DType::kF8E4M3FN || dt == DType::kF8E5M2)
    ctx.fail("stash_type " + std::to_string(ctx.attr_int("stash_type")) + " is not a supported float type");
  return dt;
}

// Writes double values into a tensor of any float dtype.
void store_doubles(Tensor& t, const std::vector<double>& v) {
  dispatch_float(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* p = t.mutable_data<T>();
    for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<T>(static_cast<compute_t<T>>(v[i]));
  });
}

// ---- GEMM: C[M,N] += A[M,K] * B[K,N] over strided inputs of any storage type. A and B are packed
// into MR-row and NR-column slivers (converted to the accumulation type) so that the inner kernel
// has fixed trip counts the compiler can keep in registers and vectorize; blocks are sized for the
// caches (KC x NC panel of B in L2, MC x KC block of A in L2, one sliver of each in L1).

constexpr int64_t kMR = 4, kNR = 8, kKC = 256, kMC = 128, kNC = 2048;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

template <typename Acc, typename TA>
void pack_a(const TA* a, int64_t rs, int64_t cs, int64_t i0, int64_t mc, int64_t k0, int64_t kc, Acc* dst) {
  for (int64_t ir = 0; ir < mc; ir += kMR) {
    const int64_t mr = std::min(kMR, mc - ir);
    for (int64_t k = 0; k < kc; ++k) {
      const TA* col = a + (k0 + k) * cs + (i0 + ir) * rs;
      for (int64_t r = 0; r < kMR; ++r) *dst++ = r < mr ? static_cast<Acc>(col[r * rs]) : Acc(0);
    }
  }
}

template <typename Acc, typename TB>
void pack_b(const TB* b, int64_t rs, int64_t cs, int64_t k0, int64_t kc, int64_t j0, int64_t nc, Acc* dst) {
  for (int64_t jr = 0; jr < nc; jr += kNR) {
    const int64_t nr = std::min(kNR, nc - jr);
    for (int64_t k = 0; k < kc; ++k) {
      const TB* row = b + (k0 + k) * rs + (j0 + jr) * cs;
      if (nr == kNR && cs == 1) {
        for (int64_t j = 0; j < kNR; ++j) dst[j] = static_cast<Acc>(row[j]);
      } else {
        for (int64_t j = 0; j < kNR; ++j) dst[j] = j < nr ? static_cast<Acc>(row[j * cs]) : Acc(0);
      }
      dst += kNR;
    }
  }
}

template <typename Acc>
void micro_kernel(int64_t kc, const Acc* ap, const Acc* bp, Acc* c, int64_t ldc, int64_t mr, int64_t nr) {
  Acc acc[kMR][kNR] = {};
  for (int64_t k = 0; k < kc; ++k, ap += kMR, bp += kNR)
    for (int64_t r = 0; r < kMR; ++r)
      for (int64_t j = 0; j < kNR; ++j) acc[r][j] += ap[r] * bp[j];
  for (int64_t r = 0; r < mr; ++r)
    for (int64_t j = 0; j < nr; ++j) c[r * ldc + j] += acc[r][j];
}

// C[i*ldc + j] += sum_k A(i,k) * B(k,j), where A(i,k) = a[i*a_rs + k*a_cs] and B(k,j) = b[k*b_rs + j*b_cs].
template <typename Acc, typename TA, typename TB>
void gemm_accumulate(int64_t M, int64_t N, int64_t K, const TA* a, int64_t a_rs, int64_t a_cs, const TB* b,
                     int64_t b_rs, int64_t b_cs, Acc* c, int64_t ldc) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  const int64_t kc_max = std::min(kKC, K);
  std::vector<Acc> ap(static_cast<size_t>(round_up(std::min(kMC, M), kMR) * kc_max));
  std::vector<Acc> bp(static_cast<size_t>(round_up(std::min(kNC, N), kNR) * kc_max));
  for (int64_t jc = 0; jc < N; jc += kNC) {
    const int64_t nc = std::min(kNC, N - jc);
    for (int64_t pc = 0; pc < K; pc += kKC) {
      const int64_t kc = std::min(kKC, K - pc);
      pack_b(b, b_rs, b_cs, pc, kc, jc, nc, bp.data());
      for (int64_t ic = 0; ic < M; ic += kMC) {
        const int64_t mc = std::min(kMC, M - ic);
        pack_a(a, a_rs, a_cs, ic, mc, pc, kc, ap.data());
        for (int64_t jr = 0; jr < nc; jr += kNR)
          for (int64_t ir = 0; ir < mc; ir += kMR)
            micro_kernel(kc, ap.data() + ir * kc, bp.data() + jr * kc, c + (ic + ir) * ldc + jc + jr, ldc,
                         std::min(kMR, mc - ir), std::min(kNR, nc - jr));
      }
    }
  }
}

// ---- MatMul family

struct MatmulGeom {
  int64_t m = 1, n = 1, k = 1;
  std::vector<int64_t> batch, out_shape;
  std::vector<int64_t> a_batch_strides, b_batch_strides;  // in units of whole matrices
  int64_t a_batch_numel = 1, b_batch_numel = 1;
};

MatmulGeom matmul_geom(const KernelContext& ctx, const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  if (a.empty() || b.empty()) ctx.fail("matmul inputs must have rank >= 1 (scalars are not allowed)");
  std::vector<int64_t> sa = a, sb = b;
  if (a.size() == 1) sa.insert(sa.begin(), 1);
  if (b.size() == 1) sb.push_back(1);
  MatmulGeom g;
  g.m = sa[sa.size() - 2];
  g.k = sa.back();
  g.n = sb.back();
  if (sb[sb.size() - 2] != g.k)
    ctx.fail("inner dimensions do not match: A is " + shape_to_string(a) + ", B is " + shape_to_string(b));
  const std::vector<int64_t> ab(sa.begin(), sa.end() - 2), bb(sb.begin(), sb.end() - 2);
  g.batch = broadcast_dims(ctx, {ab, bb});
  g.a_batch_numel = shape_numel(ab);
  g.b_batch_numel = shape_numel(bb);
  g.a_batch_strides = broadcast_strides(ab, g.batch);
  g.b_batch_strides = broadcast_strides(bb, g.batch);
  g.out_shape = g.batch;
  if (a.size() > 1) g.out_shape.push_back(g.m);
  if (b.size() > 1) g.out_shape.push_back(g.n);
  return g;
}

// For every broadcast batch: acc = A_b x B_b (Acc), then store(batch_index, acc).
template <typename Acc, typename TA, typename TB, typename Store>
void batched_matmul(const MatmulGeom& g, const TA* a, const TB* b, Store store) {
  const int64_t batches = shape_numel(g.batch), mn = g.m * g.n;
  if (batches > 1 && g.a_batch_numel == batches && g.b_batch_numel == 1) {
    // One B for every batch of A (x @ W): the batches stack into a single taller GEMM.
    std::vector<Acc> acc(static_cast<size_t>(batches * mn), Acc(0));
    gemm_accumulate(batches * g.m, g.n, g.k, a, g.k, 1, b, g.n, 1, acc.data(), g.n);
    for (int64_t bi = 0; bi < batches; ++bi) store(bi, acc.data() + bi * mn);
    return;
  }
  std::vector<Acc> acc(static_cast<size_t>(mn));
  for_each_index(g.batch, {g.a_batch_strides, g.b_batch_strides}, [&](int64_t bi, const std::vector<int64_t>& off) {
    std::fill(acc.begin(), acc.end(), Acc(0));
    gemm_accumulate(g.m, g.n, g.k, a + off[0] * g.m * g.k, g.k, 1, b + off[1] * g.k * g.n, g.n, 1, acc.data(), g.n);
    store(bi, acc.data());
  });
}

void matmul_kernel(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  require_same_dtype(ctx, a, b, "A", "B");
  if (a.dtype() == DType::kBool) ctx.fail("MatMul does not support bool inputs");
  const MatmulGeom g = matmul_geom(ctx, a.shape(), b.shape());
  Tensor& out = ctx.allocate_output(0, a.dtype(), g.out_shape);
  dispatch_dtype(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    T* po = out.mutable_data<T>();
    const int64_t mn = g.m * g.n;
    batched_matmul<Acc>(g, a.data<T>(), b.data<T>(), [&](int64_t bi, const Acc* acc) {
      for (int64_t i = 0; i < mn; ++i) po[bi * mn + i] = static_cast<T>(acc[i]);
    });
  });
}

// Values of an 8-bit quantized tensor minus its zero point, as int32. The zero point is a scalar,
// a vector of `per_axis_len` values along `axis` (per-row / per-column quantization), or a tensor
// that broadcasts to the input's shape.
std::vector<int32_t> dequantize_ints(const KernelContext& ctx, const Tensor& x, const Tensor* zp, int64_t axis,
                                     const char* what) {
  if (x.dtype() != DType::kU8 && x.dtype() != DType::kI8)
    ctx.fail(std::string(what) + " must be uint8 or int8, got " + std::string(dtype_name(x.dtype())));
  std::vector<int32_t> out(static_cast<size_t>(x.numel()));
  const std::vector<int64_t> xv = x.to_int64_vector();
  if (!zp || zp->numel() == 1) {
    const int64_t z = zp ? zp->to_int64_vector()[0] : 0;
    if (zp && zp->dtype() != x.dtype()) ctx.fail(std::string(what) + "'s zero point has a different dtype");
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int32_t>(xv[i] - z);
    return out;
  }
  if (zp->dtype() != x.dtype()) ctx.fail(std::string(what) + "'s zero point has a different dtype");
  const std::vector<int64_t> zv = zp->to_int64_vector();
  std::vector<int64_t> zshape = zp->shape();
  if (zp->rank() == 1 && axis >= 0 && axis < static_cast<int64_t>(x.rank())) {
    // A vector of per-axis values: place it on `axis`.
    zshape.assign(x.rank() - axis, 1);
    zshape[0] = zp->numel();
  }
  if (zshape.size() > x.rank())
    ctx.fail(std::string(what) + "'s zero point " + shape_to_string(zp->shape()) + " does not fit");
  for (size_t i = 0; i < zshape.size(); ++i) {
    const int64_t xd = x.dim(x.rank() - zshape.size() + i);
    if (zshape[i] != 1 && zshape[i] != xd)
      ctx.fail(std::string(what) + "'s zero point of shape " + shape_to_string(zp->shape()) + " does not match " +
               shape_to_string(x.shape()));
  }
  for_each_index(x.shape(), {broadcast_strides(zshape, x.shape())}, [&](int64_t i, const std::vector<int64_t>& off) {
    out[i] = static_cast<int32_t>(xv[i] - zv[off[0]]);
  });
  return out;
}

void matmul_integer_kernel(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  const MatmulGeom g = matmul_geom(ctx, a.shape(), b.shape());
  const int64_t a_row_axis = static_cast<int64_t>(a.rank()) - 2, b_col_axis = static_cast<int64_t>(b.rank()) - 1;
  const std::vector<int32_t> av = dequantize_ints(ctx, a, ctx.has_input(2) ? &ctx.input(2) : nullptr, a_row_axis, "A");
  const std::vector<int32_t> bv = dequantize_ints(ctx, b, ctx.has_input(3) ? &ctx.input(3) : nullptr, b_col_axis, "B");
  Tensor& out = ctx.allocate_output(0, DType::kI32, g.out_shape);
  int32_t* po = out.mutable_data<int32_t>();
  const int64_t mn = g.m * g.n;
  batched_matmul<int64_t>(g, av.data(), bv.data(), [&](int64_t bi, const int64_t* acc) {
    for (int64_t i = 0; i < mn; ++i) po[bi * mn + i] = static_cast<int32_t>(acc[i]);
  });
}

// A quantization scale: one value, or `len` values (per row/column/channel).
std::vector<double> quant_scale(const KernelContext& ctx, const Tensor& s, int64_t len, const char* what) {
  require_float(ctx, s, what);
  if (s.numel() != 1 && s.numel() != len)
    ctx.fail(std::string(what) + " has shape " + shape_to_string(s.shape()) + ", expected a scalar or " +
             std::to_string(len) + " values");
  return s.to_double_vector();
}

// saturate(round(v) + zero_point) with ties to even, as QuantizeLinear does (rounding happens
// before the zero point is added, which matters for ties when the zero point is odd).
template <typename Q>
Q requantize(double v, double zero_point) {
  const double r = std::nearbyint(v) + zero_point;
  return static_cast<Q>(std::clamp(r, double(std::numeric_limits<Q>::min()), double(std::numeric_limits<Q>::max())));
}

void qlinear_matmul_kernel(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(3);
  const Tensor& yzp = ctx.input(7);
  const MatmulGeom g = matmul_geom(ctx, a.shape(), b.shape());
  const int64_t a_row_axis = static_cast<int64_t>(a.rank()) - 2, b_col_axis = static_cast<int64_t>(b.rank()) - 1;
  const std::vector<int32_t> av = dequantize_ints(ctx, a, &ctx.input(2), a_row_axis, "a");
  const std::vector<int32_t> bv = dequantize_ints(ctx, b, &ctx.input(5), b_col_axis, "b");
  const std::vector<double> as = quant_scale(ctx, ctx.input(1), g.m, "a_scale");
  const std::vector<double> bs = quant_scale(ctx, ctx.input(4), g.n, "b_scale");
  const std::vector<double> ys = quant_scale(ctx, ctx.input(6), 1, "y_scale");
  if (yzp.numel() != 1 || (yzp.dtype() != DType::kU8 && yzp.dtype() != DType::kI8))
    ctx.fail("y_zero_point must be a uint8 or int8 scalar");
  const double zy = static_cast<double>(yzp.to_int64_vector()[0]);
  Tensor& out = ctx.allocate_output(0, yzp.dtype(), g.out_shape);
  const int64_t mn = g.m * g.n;
  auto run = [&](auto tag) {
    using Q = decltype(tag);
    Q* po = out.mutable_data<Q>();
    batched_matmul<int64_t>(g, av.data(), bv.data(), [&](int64_t bi, const int64_t* acc) {
      for (int64_t i = 0; i < g.m; ++i)
        for (int64_t j = 0; j < g.n; ++j) {
          const double scale = as[as.size() == 1 ? 0 : i] * bs[bs.size() == 1 ? 0 : j] / ys[0];
          po[bi * mn + i * g.n + j] = requantize<Q>(static_cast<double>(acc[i * g.n + j]) * scale, zy);
        }
    });
  };
  if (yzp.dtype() == DType::kU8) run(uint8_t{});
  else run(int8_t{});
}

void gemm_kernel(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  const Tensor* c = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  require_same_dtype(ctx, a, b, "A", "B");
  if (c) require_same_dtype(ctx, a, *c, "A", "C");
  if (a.dtype() == DType::kBool) ctx.fail("Gemm does not support bool inputs");
  if (a.rank() != 2 || b.rank() != 2)
    ctx.fail("A and B must be matrices, got " + shape_to_string(a.shape()) + " and " + shape_to_string(b.shape()));
  const bool ta = ctx.attr_int("transA") != 0, tb = ctx.attr_int("transB") != 0;
  const int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1);
  const int64_t kb = tb ? b.dim(1) : b.dim(0), n = tb ? b.dim(0) : b.dim(1);
  if (k != kb)
    ctx.fail("inner dimensions do not match: op(A) is " + std::to_string(m) + "x" + std::to_string(k) + ", op(B) is " +
             std::to_string(kb) + "x" + std::to_string(n));
  const std::vector<int64_t> out_shape = {m, n};
  std::vector<int64_t> c_strides;
  if (c) {
    bool ok = c->rank() <= 2;
    for (size_t i = 0; ok && i < c->rank(); ++i) {
      const int64_t od = out_shape[2 - c->rank() + i];
      ok = c->dim(i) == 1 || c->dim(i) == od;
    }
    if (!ok)
      ctx.fail("C of shape " + shape_to_string(c->shape()) + " does not broadcast to " + shape_to_string(out_shape));
    c_strides = broadcast_strides(c->shape(), out_shape);
  }
  const double alpha = ctx.attr_float("alpha"), beta = ctx.attr_float("beta");
  Tensor& out = ctx.allocate_output(0, a.dtype(), out_shape);
  dispatch_dtype(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    // Compute in the accumulation type for floats, in double for integers (alpha/beta are floats).
    using Out = std::conditional_t<std::is_integral_v<T>, double, compute_t<T>>;
    std::vector<Acc> acc(static_cast<size_t>(m * n));
    const T* pa = a.data<T>();
    gemm_accumulate(m, n, k, pa, ta ? 1 : a.dim(1), ta ? a.dim(1) : 1, b.data<T>(), tb ? 1 : b.dim(1),
                    tb ? b.dim(1) : 1, acc.data(), n);
    T* po = out.mutable_data<T>();
    const T* pc = c ? c->data<T>() : nullptr;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        // Integer accumulators wrap as unsigned; reading them back through T restores the sign.
        Out prod;
        if constexpr (std::is_integral_v<T>) prod = static_cast<Out>(static_cast<T>(acc[i * n + j]));
        else prod = acc[i * n + j];
        Out v = static_cast<Out>(alpha) * prod;
        if (pc) v += static_cast<Out>(beta) * static_cast<Out>(pc[i * c_strides[0] + j * c_strides[1]]);
        po[i * n + j] = static_cast<T>(v);
      }
  });
}

}  // namespace

// ---- Sliding windows (declared in window.h; shared with the CPU backend)

std::vector<int64_t> window_ints(const NodeView& ctx, const char* name, size_t len, int64_t def, int64_t min) {
  std::vector<int64_t> v;
  if (ctx.schema().find_attr(name)) v = ctx.attr_ints(name);
  if (v.empty()) v.assign(len, def);
  if (v.size() != len)
    ctx.fail(std::string("attribute '") + name + "' has " + std::to_string(v.size()) + " values, expected " +
             std::to_string(len));
  for (int64_t x : v)
    if (x < min) ctx.fail(std::string("attribute '") + name + "' has invalid value " + ints_to_string(v));
  return v;
}

std::string auto_pad_of(const NodeView& ctx) {
  std::string p = ctx.schema().find_attr("auto_pad") ? ctx.attr_string("auto_pad") : "NOTSET";
  if (p.empty()) p = "NOTSET";
  if (p != "NOTSET" && p != "SAME_UPPER" && p != "SAME_LOWER" && p != "VALID") ctx.fail("invalid auto_pad '" + p + "'");
  return p;
}

void check_kernel(const NodeView& ctx, const std::vector<int64_t>& kernel, size_t n) {
  if (kernel.size() != n)
    ctx.fail("kernel_shape " + ints_to_string(kernel) + " does not match " + std::to_string(n) + " spatial axes");
  for (int64_t k : kernel)
    if (k <= 0) ctx.fail("kernel_shape " + ints_to_string(kernel) + " has non-positive values");
}

// Resolves auto_pad / pads / ceil_mode (where the schema has them) into explicit pads and output extents.
Window resolve_window(const NodeView& ctx, const std::vector<int64_t>& in, const std::vector<int64_t>& kernel) {
  const size_t n = in.size();
  check_kernel(ctx, kernel, n);
  Window w;
  w.in = in;
  w.kernel = kernel;
  w.strides = window_ints(ctx, "strides", n, 1, 1);
  w.dilations = window_ints(ctx, "dilations", n, 1, 1);
  const std::vector<int64_t> pads = window_ints(ctx, "pads", 2 * n, 0, 0);
  const std::string auto_pad = auto_pad_of(ctx);
  const bool ceil_mode = ctx.schema().find_attr("ceil_mode") && ctx.attr_int("ceil_mode") != 0;
  w.pad_begin.resize(n);
  w.pad_end.resize(n);
  w.out.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t s = w.strides[i], eff = (kernel[i] - 1) * w.dilations[i] + 1;
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      w.out[i] = (in[i] + s - 1) / s;
      const int64_t total = std::max<int64_t>(0, (w.out[i] - 1) * s + eff - in[i]);
      // The odd pixel of padding goes at the end for SAME_UPPER, at the beginning for SAME_LOWER.
      w.pad_begin[i] = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      w.pad_end[i] = total - w.pad_begin[i];
      continue;
    }
    if (auto_pad == "NOTSET") {
      w.pad_begin[i] = pads[i];
      w.pad_end[i] = pads[i + n];
    }
    const int64_t span = in[i] + w.pad_begin[i] + w.pad_end[i] - eff;
    if (span < 0)
      ctx.fail("the window (" + std::to_string(eff) + " with dilation) is larger than the padded input (" +
               std::to_string(in[i] + w.pad_begin[i] + w.pad_end[i]) + ") on spatial axis " + std::to_string(i));
    const bool use_ceil = ceil_mode && auto_pad == "NOTSET";
    w.out[i] = (use_ceil ? (span + s - 1) / s : span / s) + 1;
    // In ceil mode a window that would start inside the end padding is dropped.
    if (use_ceil && (w.out[i] - 1) * s >= in[i] + w.pad_begin[i]) --w.out[i];
  }
  return w;
}

namespace {

// Steps a row-major multi-index over `shape`; returns false after the last index.
bool next_index(std::vector<int64_t>& idx, const std::vector<int64_t>& shape, size_t count) {
  for (size_t d = count; d-- > 0;) {
    if (++idx[d] < shape[d]) return true;
    idx[d] = 0;
  }
  return false;
}

// Unfolds one image x[channels, in...] into col[channels * prod(kernel), prod(out)], zero in the padding.
template <typename Acc, typename TX>
void im2col(const TX* x, int64_t channels, const Window& w, Acc* col) {
  const size_t nd = w.rank();
  const int64_t ksize = product(w.kernel), out_size = product(w.out), in_size = product(w.in);
  if (nd == 0 || out_size == 0) return;
  const int64_t out_last = w.out[nd - 1], in_last = w.in[nd - 1], s_last = w.strides[nd - 1];
  const int64_t outer = out_size / out_last;
  const std::vector<int64_t> in_strides = dense_strides(w.in);
  std::vector<int64_t> kpos(nd, 0), opos(nd, 0);
  for (int64_t c = 0; c < channels; ++c) {
    const TX* xc = x + c * in_size;
    std::fill(kpos.begin(), kpos.end(), 0);
    for (int64_t kidx = 0; kidx < ksize; ++kidx, next_index(kpos, w.kernel, nd)) {
      Acc* row = col + (c * ksize + kidx) * out_size;
      const int64_t off_last = kpos[nd - 1] * w.dilations[nd - 1] - w.pad_begin[nd - 1];
      std::fill(opos.begin(), opos.end(), 0);
      for (int64_t o = 0; o < outer; ++o, next_index(opos, w.out, nd - 1)) {
        Acc* dst = row + o * out_last;
        bool valid = true;
        int64_t base = 0;
        for (size_t d = 0; d + 1 < nd; ++d) {
          const int64_t ip = opos[d] * w.strides[d] - w.pad_begin[d] + kpos[d] * w.dilations[d];
          if (ip < 0 || ip >= w.in[d]) valid = false;
          base += ip * in_strides[d];
        }
        if (!valid) {
          std::fill(dst, dst + out_last, Acc(0));
          continue;
        }
        for (int64_t ow = 0; ow < out_last; ++ow) {
          const int64_t iw = ow * s_last + off_last;
          dst[ow] = (iw >= 0 && iw < in_last) ? static_cast<Acc>(xc[base + iw]) : Acc(0);
        }
      }
    }
  }
}

// y[n, m, out...] += conv(x[n, c, in...], w[m, c/group, kernel...]) for the whole batch.
template <typename Acc, typename TX, typename TW>
void conv_accumulate(const TX* x, const TW* w, Acc* y, int64_t batch, int64_t channels, int64_t maps, int64_t group,
                     const Window& win) {
  const int64_t cg = channels / group, mg = maps / group;
  const int64_t ksize = product(win.kernel), kdim = cg * ksize;
  const int64_t in_size = product(win.in), out_size = product(win.out);
  bool pointwise = true;  // 1x1, stride 1, no padding: the image itself is the GEMM's B
  for (size_t i = 0; i < win.rank(); ++i)
    pointwise = pointwise && win.kernel[i] == 1 && win.strides[i] == 1 && win.pad_begin[i] == 0 && win.pad_end[i] == 0;
  std::vector<Acc> col(pointwise ? 0 : static_cast<size_t>(kdim * out_size));
  for (int64_t n = 0; n < batch; ++n)
    for (int64_t g = 0; g < group; ++g) {
      const TX* xg = x + (n * channels + g * cg) * in_size;
      const TW* wg = w + g * mg * kdim;
      Acc* yg = y + (n * maps + g * mg) * out_size;
      if (pointwise) {
        gemm_accumulate(mg, out_size, kdim, wg, kdim, 1, xg, in_size, 1, yg, out_size);
      } else {
        im2col(xg, cg, win, col.data());
        gemm_accumulate(mg, out_size, kdim, wg, kdim, 1, col.data(), out_size, 1, yg, out_size);
      }
    }
}

struct ConvShape {
  int64_t batch, channels, maps, group;
  Window win;
};

// Validates X [N, C, in...] against W [M, C/group, k...] and resolves the window.
ConvShape conv_shape(const KernelContext& ctx, const Tensor& x, const Tensor& w) {
  require_rank_at_least(ctx, x, 3, "X");
  if (w.rank() != x.rank())
    ctx.fail("W has shape " + shape_to_string(w.shape()) + ", expected rank " + std::to_string(x.rank()) + " like X " +
             shape_to_string(x.shape()));
  ConvShape s;
  s.group = ctx.attr_int("group");
  if (s.group < 1) ctx.fail("group must be >= 1, got " + std::to_string(s.group));
  s.batch = x.dim(0);
  s.channels = x.dim(1);
  s.maps = w.dim(0);
  if (s.channels != w.dim(1) * s.group)
    ctx.fail("X has " + std::to_string(s.channels) + " channels but W " + shape_to_string(w.shape()) + " with group " +
             std::to_string(s.group) + " expects " + std::to_string(w.dim(1) * s.group));
  if (s.maps % s.group != 0)
    ctx.fail("W has " + std::to_string(s.maps) + " output channels, not divisible by group " + std::to_string(s.group));
  const std::vector<int64_t> kernel(w.shape().begin() + 2, w.shape().end());
  const auto& ks = ctx.attr_ints("kernel_shape");
  if (!ks.empty() && ks != kernel)
    ctx.fail("kernel_shape " + ints_to_string(ks) + " does not match the weights' spatial shape " +
             ints_to_string(kernel));
  s.win = resolve_window(ctx, std::vector<int64_t>(x.shape().begin() + 2, x.shape().end()), kernel);
  return s;
}

std::vector<int64_t> conv_out_shape(const ConvShape& s) {
  std::vector<int64_t> out = {s.batch, s.maps};
  out.insert(out.end(), s.win.out.begin(), s.win.out.end());
  return out;
}

void conv_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& w = ctx.input(1);
  require_float(ctx, x, "X");
  require_same_dtype(ctx, x, w, "X", "W");
  const ConvShape s = conv_shape(ctx, x, w);
  const Tensor* bias = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  if (bias) {
    require_same_dtype(ctx, x, *bias, "X", "B");
    if (bias->rank() != 1 || bias->dim(0) != s.maps)
      ctx.fail("B has shape " + shape_to_string(bias->shape()) + ", expected [" + std::to_string(s.maps) + "]");
  }
  Tensor& y = ctx.allocate_output(0, x.dtype(), conv_out_shape(s));
  const int64_t out_size = product(s.win.out);
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using Acc = compute_t<T>;
    // f32/f64 accumulate in place; 16-bit floats through a float buffer rounded once at the end.
    std::vector<Acc> buffer(std::is_same_v<T, Acc> ? 0 : static_cast<size_t>(y.numel()), Acc(0));
    Acc* acc;
    if constexpr (std::is_same_v<T, Acc>) acc = y.mutable_data<T>();
    else acc = buffer.data();
    if (bias) {
      const T* pb = bias->data<T>();
      for (int64_t n = 0; n < s.batch; ++n)
        for (int64_t m = 0; m < s.maps; ++m)
          std::fill_n(acc + (n * s.maps + m) * out_size, out_size, static_cast<Acc>(pb[m]));
    }
    conv_accumulate(x.data<T>(), w.data<T>(), acc, s.batch, s.channels, s.maps, s.group, s.win);
    if constexpr (!std::is_same_v<T, Acc>) {
      T* py = y.mutable_data<T>();
      for (int64_t i = 0; i < y.numel(); ++i) py[i] = static_cast<T>(acc[i]);
    }
  });
}

void conv_integer_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& w = ctx.input(1);
  const ConvShape s = conv_shape(ctx, x, w);
  const Tensor* xzp = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  const Tensor* wzp = ctx.has_input(3) ? &ctx.input(3) : nullptr;
  if (xzp && xzp->numel() != 1) ctx.fail("x_zero_point must be a scalar, got shape " + shape_to_string(xzp->shape()));
  if (wzp && wzp->numel() != 1 && wzp->numel() != s.maps)
    ctx.fail("w_zero_point must be a scalar or have one value per output channel, got shape " +
             shape_to_string(wzp->shape()));
  const std::vector<int32_t> xv = dequantize_ints(ctx, x, xzp, -1, "x");
  const std::vector<int32_t> wv = dequantize_ints(ctx, w, wzp, 0, "w");
  Tensor& y = ctx.allocate_output(0, DType::kI32, conv_out_shape(s));
  std::vector<int64_t> acc(static_cast<size_t>(y.numel()), 0);
  conv_accumulate(xv.data(), wv.data(), acc.data(), s.batch, s.channels, s.maps, s.group, s.win);
  int32_t* py = y.mutable_data<int32_t>();
  for (int64_t i = 0; i < y.numel(); ++i) py[i] = static_cast<int32_t>(acc[i]);
}

void qlinear_conv_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& w = ctx.input(3);
  const Tensor& yzp = ctx.input(7);
  const ConvShape s = conv_shape(ctx, x, w);
  const Tensor& xzp = ctx.input(2);
  const Tensor& wzp = ctx.input(5);
  if (xzp.numel() != 1) ctx.fail("x_zero_point must be a scalar, got shape " + shape_to_string(xzp.shape()));
  if (wzp.numel() != 1 && wzp.numel() != s.maps)
    ctx.fail("w_zero_point must be a scalar or have one value per output channel, got shape " +
             shape_to_string(wzp.shape()));
  const std::vector<int32_t> xv = dequantize_ints(ctx, x, &xzp, -1, "x");
  const std::vector<int32_t> wv = dequantize_ints(ctx, w, &wzp, 0, "w");
  const std::vector<double> xs = quant_scale(ctx, ctx.input(1), 1, "x_scale");
  const std::vector<double> ws = quant_scale(ctx, ctx.input(4), s.maps, "w_scale");
  const std::vector<double> ys = quant_scale(ctx, ctx.input(6), 1, "y_scale");
  if (yzp.numel() != 1 || (yzp.dtype() != DType::kU8 && yzp.dtype() != DType::kI8))
    ctx.fail("y_zero_point must be a uint8 or int8 scalar");
  std::vector<int64_t> bias(static_cast<size_t>(s.maps), 0);
  if (ctx.has_input(8)) {
    const Tensor& b = ctx.input(8);
    if (b.dtype() != DType::kI32 || b.numel() != s.maps)
      ctx.fail("B must be int32 with " + std::to_string(s.maps) + " values, got " + std::string(dtype_name(b.dtype())) +
               shape_to_string(b.shape()));
    bias = b.to_int64_vector();
  }
  Tensor& y = ctx.allocate_output(0, yzp.dtype(), conv_out_shape(s));
  const int64_t out_size = product(s.win.out);
  std::vector<int64_t> acc(static_cast<size_t>(y.numel()), 0);
  conv_accumulate(xv.data(), wv.data(), acc.data(), s.batch, s.channels, s.maps, s.group, s.win);
  const double zy = static_cast<double>(yzp.to_int64_vector()[0]);
  auto run = [&](auto tag) {
    using Q = decltype(tag);
    Q* py = y.mutable_data<Q>();
    for (int64_t n = 0; n < s.batch; ++n)
      for (int64_t m = 0; m < s.maps; ++m) {
        const double scale = xs[0] * ws[ws.size() == 1 ? 0 : m] / ys[0];
        const int64_t base = (n * s.maps + m) * out_size;
        for (int64_t i = 0; i < out_size; ++i)
          py[base + i] = requantize<Q>(static_cast<double>(acc[base + i] + bias[m]) * scale, zy);
      }
  };
  if (yzp.dtype() == DType::kU8) run(uint8_t{});
  else run(int8_t{});
}

void conv_transpose_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& w = ctx.input(1);
  require_float(ctx, x, "X");
  require_same_dtype(ctx, x, w, "X", "W");
  require_rank_at_least(ctx, x, 3, "X");
  if (w.rank() != x.rank())
    ctx.fail("W has shape " + shape_to_string(w.shape()) + ", expected rank " + std::to_string(x.rank()));
  const size_t nd = x.rank() - 2;
  const int64_t group = ctx.attr_int("group");
  if (group < 1) ctx.fail("group must be >= 1, got " + std::to_string(group));
  const int64_t batch = x.dim(0), channels = x.dim(1);
  if (w.dim(0) != channels)
    ctx.fail("X has " + std::to_string(channels) + " channels but W " + shape_to_string(w.shape()) + " expects " +
             std::to_string(w.dim(0)));
  if (channels % group != 0)
    ctx.fail(std::to_string(channels) + " input channels are not divisible by group " + std::to_string(group));
  const int64_t mg = w.dim(1), maps = mg * group, cg = channels / group;
  Window win;
  win.in.assign(x.shape().begin() + 2, x.shape().end());
  win.kernel.assign(w.shape().begin() + 2, w.shape().end());
  const auto& ks = ctx.attr_ints("kernel_shape");
  if (!ks.empty() && ks != win.kernel)
    ctx.fail("kernel_shape " + ints_to_string(ks) + " does not match the weights' spatial shape " +
             ints_to_string(win.kernel));
  check_kernel(ctx, win.kernel, nd);
  win.strides = window_ints(ctx, "strides", nd, 1, 1);
  win.dilations = window_ints(ctx, "dilations", nd, 1, 1);
  const std::vector<int64_t> pads = window_ints(ctx, "pads", 2 * nd, 0, 0);
  const std::vector<int64_t> out_pad = window_ints(ctx, "output_padding", nd, 0, 0);
  const std::string auto_pad = auto_pad_of(ctx);
  const auto& out_shape = ctx.attr_ints("output_shape");
  if (!out_shape.empty() && out_shape.size() != nd && out_shape.size() != nd + 2)
    ctx.fail("output_shape " + ints_to_string(out_shape) + " does not match " + std::to_string(nd) + " spatial axes");
  win.pad_begin.resize(nd);
  win.pad_end.resize(nd);
  win.out.resize(nd);
  for (size_t i = 0; i < nd; ++i) {
    const int64_t s = win.strides[i], eff = (win.kernel[i] - 1) * win.dilations[i] + 1;
    if (out_pad[i] >= s && out_pad[i] >= win.dilations[i])
      ctx.fail("output_padding " + ints_to_string(out_pad) + " must be smaller than the stride or dilation");
    const int64_t full = s * (win.in[i] - 1) + out_pad[i] + eff;  // output extent before any cropping
    const bool same = auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER";
    if (!out_shape.empty() || same) {
      win.out[i] = !out_shape.empty() ? out_shape[out_shape.size() - nd + i] : win.in[i] * s;
      const int64_t total = full - win.out[i];
      // As specified: SAME_UPPER crops the odd pixel at the end, anything else at the beginning.
      // Halving rounds down (as the spec's Python does), so a requested output larger than the
      // natural one (negative total) grows at the end.
      const int64_t half = total >= 0 ? total / 2 : -((-total + 1) / 2);
      win.pad_begin[i] = auto_pad == "SAME_UPPER" ? half : total - half;
      win.pad_end[i] = total - win.pad_begin[i];
    } else {
      if (auto_pad == "NOTSET") {
        win.pad_begin[i] = pads[i];
        win.pad_end[i] = pads[i + nd];
      }
      win.out[i] = full - win.pad_begin[i] - win.pad_end[i];
    }
    if (win.out[i] <= 0) ctx.fail("the output would be empty on spatial axis " + std::to_string(i));
  }
  const Tensor* bias = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  if (bias) {
    require_same_dtype(ctx, x, *bias, "X", "B");
    if (bias->rank() != 1 || bias->dim(0) != maps)
      ctx.fail("B has shape " + shape_to_string(bias->shape()) + ", expected [" + std::to_string(maps) + "]");
  }
  std::vector<int64_t> yshape = {batch, maps};
  yshape.insert(yshape.end(), win.out.begin(), win.out.end());
  Tensor& y = ctx.allocate_output(0, x.dtype(), yshape);
  const int64_t ksize = product(win.kernel), in_size = product(win.in), out_size = product(win.out);
  const int64_t rows = mg * ksize;
  const std::vector<int64_t> out_strides = dense_strides(win.out);
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using Acc = compute_t<T>;
    std::vector<Acc> acc(static_cast<size_t>(y.numel()), Acc(0));
    if (bias) {
      const T* pb = bias->data<T>();
      for (int64_t n = 0; n < batch; ++n)
        for (int64_t m = 0; m < maps; ++m)
          std::fill_n(acc.begin() + (n * maps + m) * out_size, out_size, static_cast<Acc>(pb[m]));
    }
    // col[(m, k), i] = sum_c W[c, m, k] * X[c, i]; then every column is scattered (col2im) onto
    // the output positions i * stride - pad + k * dilation.
    std::vector<Acc> col(static_cast<size_t>(rows * in_size));
    std::vector<int64_t> kpos(nd), ipos(nd);
    for (int64_t n = 0; n < batch; ++n)
      for (int64_t g = 0; g < group; ++g) {
        std::fill(col.begin(), col.end(), Acc(0));
        const T* xg = x.data<T>() + (n * channels + g * cg) * in_size;
        const T* wg = w.data<T>() + g * cg * rows;
        gemm_accumulate(rows, in_size, cg, wg, 1, rows, xg, in_size, 1, col.data(), in_size);
        for (int64_t m = 0; m < mg; ++m) {
          Acc* ym = acc.data() + (n * maps + g * mg + m) * out_size;
          std::fill(kpos.begin(), kpos.end(), 0);
          for (int64_t kidx = 0; kidx < ksize; ++kidx, next_index(kpos, win.kernel, nd)) {
            const Acc* row = col.data() + (m * ksize + kidx) * in_size;
            std::fill(ipos.begin(), ipos.end(), 0);
            for (int64_t i = 0; i < in_size; ++i, next_index(ipos, win.in, nd)) {
              int64_t off = 0;
              bool valid = true;
              for (size_t d = 0; d < nd && valid; ++d) {
                const int64_t op = ipos[d] * win.strides[d] - win.pad_begin[d] + kpos[d] * win.dilations[d];
                valid = op >= 0 && op < win.out[d];
                off += op * out_strides[d];
              }
              if (valid) ym[off] += row[i];
            }
          }
        }
      }
    T* py = y.mutable_data<T>();
    for (int64_t i = 0; i < y.numel(); ++i) py[i] = static_cast<T>(acc[i]);
  });
}

// ---- Pooling

// For every output position of a window over one (n, c) plane: the in-plane offsets of the input
// elements it covers, and how many window positions fall inside the padded input (for
// count_include_pad). Computed once and reused for every plane.
struct PoolPlan {
  Window win;
  std::vector<int64_t> begin;      // output position o covers offsets[begin[o] .. begin[o+1])
  std::vector<int64_t> offsets;
  std::vector<int64_t> padded_count;
};

PoolPlan make_pool_plan(const Window& w) {
  PoolPlan p;
  p.win = w;
  const size_t nd = w.rank();
  const int64_t out_size = product(w.out), ksize = product(w.kernel);
  const std::vector<int64_t> in_strides = dense_strides(w.in);
  p.begin.reserve(out_size + 1);
  p.padded_count.reserve(out_size);
  std::vector<int64_t> opos(nd, 0), kpos(nd, 0);
  for (int64_t o = 0; o < out_size; ++o, next_index(opos, w.out, nd)) {
    p.begin.push_back(static_cast<int64_t>(p.offsets.size()));
    int64_t padded = 0;
    std::fill(kpos.begin(), kpos.end(), 0);
    for (int64_t k = 0; k < ksize; ++k, next_index(kpos, w.kernel, nd)) {
      bool valid = true, in_padded = true;
      int64_t off = 0;
      for (size_t d = 0; d < nd; ++d) {
        const int64_t ip = opos[d] * w.strides[d] - w.pad_begin[d] + kpos[d] * w.dilations[d];
        valid = valid && ip >= 0 && ip < w.in[d];
        in_padded = in_padded && ip >= -w.pad_begin[d] && ip < w.in[d] + w.pad_end[d];
        off += ip * in_strides[d];
      }
      if (valid) p.offsets.push_back(off);
      if (in_padded) ++padded;
    }
    p.padded_count.push_back(padded);
  }
  p.begin.push_back(static_cast<int64_t>(p.offsets.size()));
  return p;
}

// Validates X [N, C, spatial...] and kernel_shape, and plans the pooling window.
PoolPlan pool_plan(const KernelContext& ctx, const Tensor& x) {
  require_rank_at_least(ctx, x, 3, "X");
  const std::vector<int64_t> in(x.shape().begin() + 2, x.shape().end());
  return make_pool_plan(resolve_window(ctx, in, ctx.attr_ints("kernel_shape")));
}

std::vector<int64_t> pool_out_shape(const Tensor& x, const Window& w) {
  std::vector<int64_t> out = {x.dim(0), x.dim(1)};
  out.insert(out.end(), w.out.begin(), w.out.end());
  return out;
}

void max_pool_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.dtype() == DType::kBool) ctx.fail("MaxPool does not support bool inputs");
  const PoolPlan p = pool_plan(ctx, x);
  const int64_t storage_order = ctx.schema().find_attr("storage_order") ? ctx.attr_int("storage_order") : 0;
  if (storage_order != 0 && storage_order != 1)
    ctx.fail("storage_order must be 0 or 1, got " + std::to_string(storage_order));
  const std::vector<int64_t> out_shape = pool_out_shape(x, p.win);
  Tensor& y = ctx.allocate_output(0, x.dtype(), out_shape);
  const bool want_indices = ctx.has_output(1);
  int64_t* pi = want_indices ? ctx.allocate_output(1, DType::kI64, out_shape).mutable_data<int64_t>() : nullptr;
  // Indices in column-major order (storage_order 1) renumber each in-plane offset.
  std::vector<int64_t> index_of;
  const int64_t in_size = product(p.win.in), out_size = product(p.win.out);
  if (want_indices && storage_order == 1) {
    const size_t nd = p.win.rank();
    index_of.resize(static_cast<size_t>(in_size));
    std::vector<int64_t> pos(nd, 0);
    for (int64_t off = 0; off < in_size; ++off, next_index(pos, p.win.in, nd)) {
      int64_t cm = 0, stride = 1;
      for (size_t d = 0; d < nd; ++d) {
        cm += pos[d] * stride;
        stride *= p.win.in[d];
      }
      index_of[off] = cm;
    }
  }
  const int64_t planes = x.dim(0) * x.dim(1);
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T* px = x.data<T>();
    T* py = y.mutable_data<T>();
    for (int64_t plane = 0; plane < planes; ++plane) {
      const T* xp = px + plane * in_size;
      for (int64_t o = 0; o < out_size; ++o) {
        int64_t best_off = -1;
        C best;  // an all-padding window (possible with large pads) yields -inf / the lowest value
        if constexpr (std::numeric_limits<C>::has_infinity) best = -std::numeric_limits<C>::infinity();
        else best = std::numeric_limits<C>::lowest();
        for (int64_t e = p.begin[o]; e < p.begin[o + 1]; ++e) {
          const C v = static_cast<C>(xp[p.offsets[e]]);
          if (best_off < 0 || v > best) {
            best = v;
            best_off = p.offsets[e];
          }
        }
        py[plane * out_size + o] = static_cast<T>(best);
        if (pi)
          pi[plane * out_size + o] =
              best_off < 0 ? -1 : plane * in_size + (storage_order == 1 ? index_of[best_off] : best_off);
      }
    }
  });
}

void average_pool_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "X");
  const PoolPlan p = pool_plan(ctx, x);
  const bool include_pad = ctx.schema().find_attr("count_include_pad") && ctx.attr_int("count_include_pad") != 0;
  Tensor& y = ctx.allocate_output(0, x.dtype(), pool_out_shape(x, p.win));
  const int64_t in_size = product(p.win.in), out_size = product(p.win.out), planes = x.dim(0) * x.dim(1);
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T* px = x.data<T>();
    T* py = y.mutable_data<T>();
    for (int64_t plane = 0; plane < planes; ++plane) {
      const T* xp = px + plane * in_size;
      for (int64_t o = 0; o < out_size; ++o) {
        C sum = 0;
        for (int64_t e = p.begin[o]; e < p.begin[o + 1]; ++e) sum += static_cast<C>(xp[p.offsets[e]]);
        const int64_t count = include_pad ? p.padded_count[o] : p.begin[o + 1] - p.begin[o];
        py[plane * out_size + o] = static_cast<T>(count > 0 ? sum / static_cast<C>(count) : C(0));
      }
    }
  });
}

// (sum |v|^p)^(1/p), exact for the common p = 1 and p = 2.
template <typename C>
struct LpAccumulator {
  int64_t p;
  C sum = 0;
  void add(C v) {
    const C a = std::fabs(v);
    sum += p == 1 ? a : p == 2 ? a * a : static_cast<C>(std::pow(a, static_cast<C>(p)));
  }
  C result() const {
    return p == 1 ? sum : p == 2 ? std::sqrt(sum) : static_cast<C>(std::pow(sum, C(1) / static_cast<C>(p)));
  }
};

int64_t lp_p(const KernelContext& ctx) {
  const int64_t p = ctx.attr_int("p");
  if (p < 1) ctx.fail("p must be >= 1, got " + std::to_string(p));
  return p;
}

void lp_pool_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "X");
  const int64_t p_norm = lp_p(ctx);
  const PoolPlan p = pool_plan(ctx, x);
  Tensor& y = ctx.allocate_output(0, x.dtype(), pool_out_shape(x, p.win));
  const int64_t in_size = product(p.win.in), out_size = product(p.win.out), planes = x.dim(0) * x.dim(1);
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T* px = x.data<T>();
    T* py = y.mutable_data<T>();
    for (int64_t plane = 0; plane < planes; ++plane) {
      const T* xp = px + plane * in_size;
      for (int64_t o = 0; o < out_size; ++o) {
        LpAccumulator<C> acc{p_norm};
        for (int64_t e = p.begin[o]; e < p.begin[o + 1]; ++e) acc.add(static_cast<C>(xp[p.offsets[e]]));
        py[plane * out_size + o] = static_cast<T>(acc.result());
      }
    }
  });
}

// Global pools: one value per (n, c) plane. `reduce(begin, end)` returns the plane's result.
template <typename Reduce>
void global_pool(KernelContext& ctx, bool any_numeric, Reduce reduce) {
  const Tensor& x = ctx.input(0);
  require_rank_at_least(ctx, x, 2, "X");
  if (!any_numeric) require_float(ctx, x, "X");
  if (x.dtype() == DType::kBool) ctx.fail("bool inputs are not supported");
  std::vector<int64_t> out_shape = x.shape();
  for (size_t i = 2; i < out_shape.size(); ++i) out_shape[i] = 1;
  Tensor& y = ctx.allocate_output(0, x.dtype(), out_shape);
  const int64_t planes = x.dim(0) * x.dim(1), size = product(x.shape(), 2);
  if (size == 0 && planes > 0) ctx.fail("cannot pool over empty spatial axes " + shape_to_string(x.shape()));
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.mutable_data<T>();
    for (int64_t plane = 0; plane < planes; ++plane) py[plane] = reduce(px + plane * size, px + (plane + 1) * size);
  });
}

void global_average_pool_kernel(KernelContext& ctx) {
  global_pool(ctx, false, [](const auto* b, const auto* e) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(b)>>;
    compute_t<T> sum = 0;
    for (auto* p = b; p != e; ++p) sum += static_cast<compute_t<T>>(*p);
    return static_cast<T>(sum / static_cast<compute_t<T>>(e - b));
  });
}

void global_max_pool_kernel(KernelContext& ctx) {
  global_pool(ctx, true, [](const auto* b, const auto* e) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(b)>>;
    compute_t<T> best = static_cast<compute_t<T>>(*b);
    for (auto* p = b + 1; p != e; ++p) best = std::max(best, static_cast<compute_t<T>>(*p));
    return static_cast<T>(best);
  });
}

void global_lp_pool_kernel(KernelContext& ctx) {
  const int64_t p = lp_p(ctx);
  global_pool(ctx, false, [p](const auto* b, const auto* e) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(b)>>;
    using C = compute_t<T>;
    if constexpr (std::is_floating_point_v<C>) {
      LpAccumulator<C> acc{p};
      for (auto* q = b; q != e; ++q) acc.add(static_cast<C>(*q));
      return static_cast<T>(acc.result());
    } else {
      return T{};  // unreachable: require_float rejected integer inputs
    }
  });
}

void max_unpool_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& idx = ctx.input(1);
  require_rank_at_least(ctx, x, 3, "X");
  if (x.dtype() == DType::kBool) ctx.fail("bool inputs are not supported");
  if (idx.dtype() != DType::kI64) ctx.fail("I must be int64, got " + std::string(dtype_name(idx.dtype())));
  if (idx.shape() != x.shape())
    ctx.fail("I has shape " + shape_to_string(idx.shape()) + ", expected X's shape " + shape_to_string(x.shape()));
  const size_t nd = x.rank() - 2;
  // Indices address the tensor MaxPool saw, whose shape is inferred from the window.
  const auto& ks = ctx.attr_ints("kernel_shape");
  check_kernel(ctx, ks, nd);
  const std::vector<int64_t> strides = window_ints(ctx, "strides", nd, 1, 1);
  const std::vector<int64_t> pads = window_ints(ctx, "pads", 2 * nd, 0, 0);
  std::vector<int64_t> inferred = {x.dim(0), x.dim(1)};
  for (size_t i = 0; i < nd; ++i) {
    const int64_t v = (x.dim(i + 2) - 1) * strides[i] + ks[i] - pads[i] - pads[i + nd];
    if (v <= 0) ctx.fail("the output would be empty on spatial axis " + std::to_string(i));
    inferred.push_back(v);
  }
  // An explicit output_shape pads that tensor at the end of each axis (as the ONNX reference does).
  std::vector<int64_t> out_shape = inferred;
  if (ctx.has_input(2)) {
    out_shape = ctx.input(2).to_int64_vector();
    if (out_shape.size() != x.rank())
      ctx.fail("output_shape " + ints_to_string(out_shape) + " does not have the rank of X");
    for (size_t i = 0; i < out_shape.size(); ++i)
      if (out_shape[i] < inferred[i] || (i < 2 && out_shape[i] != inferred[i]))
        ctx.fail("output_shape " + ints_to_string(out_shape) + " is smaller than the unpooled shape " +
                 ints_to_string(inferred));
  }
  Tensor& y = ctx.allocate_output(0, x.dtype(), out_shape);
  const int64_t* pi = idx.data<int64_t>();
  const int64_t total = shape_numel(inferred);
  const std::vector<int64_t> out_strides = dense_strides(out_shape);
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.mutable_data<T>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      if (pi[i] < 0 || pi[i] >= total)
        ctx.fail("index " + std::to_string(pi[i]) + " in I is out of range for an unpooled tensor of shape " +
                 ints_to_string(inferred));
      int64_t rest = pi[i], off = 0;
      for (size_t d = inferred.size(); d-- > 0;) {
        off += (rest % inferred[d]) * out_strides[d];
        rest /= inferred[d];
      }
      py[off] = px[i];
    }
  });
}

// ---- Normalization. Statistics are accumulated in double; outputs are rounded once.

void batch_norm_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "X");
  require_rank_at_least(ctx, x, 2, "X");
  const bool training = ctx.schema().find_attr("training_mode") && ctx.attr_int("training_mode") != 0;
  if (!training && ctx.opset() < 14)
    for (size_t i = 1; i < ctx.num_outputs(); ++i)
      if (ctx.has_output(i))
        ctx.unsupported(
            "training-mode outputs (mean, var, saved_mean, saved_var) of opsets before 14 are not supported");
  const int64_t n = x.dim(0), c = x.dim(1), spatial = product(x.shape(), 2);
  // BatchNormalization-7 with spatial=0 has one parameter per (channel, position).
  const bool per_position = ctx.schema().find_attr("spatial") && ctx.attr_int("spatial") == 0;
  if (per_position && training) ctx.unsupported("spatial=0 in training mode is not supported");
  const int64_t params = per_position ? c * spatial : c;
  for (size_t i = 1; i < 5; ++i) require_float(ctx, ctx.input(i), i <= 2 ? "scale and B" : "mean and var");
  const std::vector<double> scale = channel_param(ctx, ctx.input(1), params, "scale");
  const std::vector<double> bias = channel_param(ctx, ctx.input(2), params, "B");
  std::vector<double> mean = channel_param(ctx, ctx.input(3), params, "input_mean");
  std::vector<double> var = channel_param(ctx, ctx.input(4), params, "input_var");
  const double eps = ctx.attr_float("epsilon");
  if (training) {
    const double momentum = ctx.attr_float("momentum");
    std::vector<double> bmean(c, 0.0), bvar(c, 0.0);
    const std::vector<double> xv = x.to_double_vector();
    const double count = static_cast<double>(n * spatial);
    for (int64_t b = 0; b < n; ++b)
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t s = 0; s < spatial; ++s) bmean[ch] += xv[(b * c + ch) * spatial + s];
    for (auto& m : bmean) m /= count;
    for (int64_t b = 0; b < n; ++b)
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t s = 0; s < spatial; ++s) {
          const double d = xv[(b * c + ch) * spatial + s] - bmean[ch];
          bvar[ch] += d * d;
        }
    for (auto& v : bvar) v /= count;
    for (int out = 1; out <= 2; ++out) {
      if (!ctx.has_output(out)) continue;
      const std::vector<double>& running = out == 1 ? mean : var;
      const std::vector<double>& current = out == 1 ? bmean : bvar;
      std::vector<double> r(c);
      for (int64_t ch = 0; ch < c; ++ch) r[ch] = running[ch] * momentum + current[ch] * (1 - momentum);
      const Tensor& like = ctx.input(out == 1 ? 3 : 4);
      store_doubles(ctx.allocate_output(out, like.dtype(), like.shape()), r);
    }
    mean = bmean;
    var = bvar;
  } else {
    // Outside training the running statistics pass through unchanged.
    for (int out = 1; out <= 2; ++out)
      if (ctx.has_output(out)) ctx.set_output(out, ctx.input(out == 1 ? 3 : 4));
  }
  Tensor& y = ctx.allocate_output(0, x.dtype(), x.shape());
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.mutable_data<T>();
    for (int64_t b = 0; b < n; ++b)
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t s = 0; s < spatial; ++s) {
          const int64_t i = (b * c + ch) * spatial + s;
          const int64_t p = per_position ? ch * spatial + s : ch;
          const double v = (static_cast<double>(px[i]) - mean[p]) / std::sqrt(var[p] + eps) * scale[p] + bias[p];
          py[i] = static_cast<T>(static_cast<compute_t<T>>(v));
        }
  });
}

// Normalizes each of `groups` contiguous runs of `group_size` elements of x; the affine parameters
// of element i of group g are param_index(g, i).
template <typename ParamIndex>
void normalize_groups(const Tensor& x, Tensor& y, int64_t groups, int64_t group_size, double eps,
                      const std::vector<double>& scale, const std::vector<double>& bias, ParamIndex param_index) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.mutable_data<T>();
    for (int64_t g = 0; g < groups; ++g) {
      const T* xg = px + g * group_size;
      double mean = 0, var = 0;
      for (int64_t i = 0; i < group_size; ++i) mean += static_cast<double>(xg[i]);
      mean /= static_cast<double>(group_size);
      for (int64_t i = 0; i < group_size; ++i) {
        const double d = static_cast<double>(xg[i]) - mean;
        var += d * d;
      }
      var /= static_cast<double>(group_size);
      const double inv_std = 1.0 / std::sqrt(var + eps);
      for (int64_t i = 0; i < group_size; ++i) {
        const int64_t p = param_index(g, i);
        const double v = (static_cast<double>(xg[i]) - mean) * inv_std * scale[p] + bias[p];
        py[g * group_size + i] = static_cast<T>(static_cast<compute_t<T>>(v));
      }
    }
  });
}

void instance_norm_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "X");
  require_rank_at_least(ctx, x, 2, "X");
  const int64_t c = x.dim(1), spatial = product(x.shape(), 2);
  const std::vector<double> scale = channel_param(ctx, ctx.input(1), c, "scale");
  const std::vector<double> bias = channel_param(ctx, ctx.input(2), c, "B");
  Tensor& y = ctx.allocate_output(0, x.dtype(), x.shape());
  normalize_groups(x, y, x.dim(0) * c, spatial, ctx.attr_float("epsilon"), scale, bias,
                   [c](int64_t g, int64_t) { return g % c; });
}

void group_norm_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "X");
  require_rank_at_least(ctx, x, 2, "X");
  if (ctx.schema().find_attr("stash_type")) stash_dtype(ctx);
  const int64_t groups = ctx.attr_int("num_groups");
  const int64_t c = x.dim(1), spatial = product(x.shape(), 2);
  if (groups < 1 || c % groups != 0)
    ctx.fail(std::to_string(c) + " channels are not divisible into num_groups=" + std::to_string(groups) + " groups");
  const int64_t per_group = c / groups;
  // Opset 18 has one scale/bias per group, opset 21 one per channel.
  const bool per_channel = ctx.opset() >= 21;
  const int64_t params = per_channel ? c : groups;
  const std::vector<double> scale = channel_param(ctx, ctx.input(1), params, "scale");
  const std::vector<double> bias = channel_param(ctx, ctx.input(2), params, "bias");
  Tensor& y = ctx.allocate_output(0, x.dtype(), x.shape());
  normalize_groups(x, y, x.dim(0) * groups, per_group * spatial, ctx.attr_float("epsilon"), scale, bias,
                   [&](int64_t g, int64_t i) {
                     const int64_t grp = g % groups;
                     return per_channel ? grp * per_group + i / spatial : grp;
                   });
}

void layer_norm_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "X");
  const int64_t rank = static_cast<int64_t>(x.rank());
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), rank);
  const DType stash = stash_dtype(ctx);
  const int64_t rows = product(x.shape(), 0, axis), cols = product(x.shape(), axis);
  // Scale and B broadcast (numpy rules, towards X) over X.
  auto param_strides = [&](const Tensor& t, const char* what) {
    require_float(ctx, t, what);
    bool ok = t.rank() <= x.rank();
    for (size_t i = 0; ok && i < t.rank(); ++i) {
      const int64_t xd = x.dim(x.rank() - t.rank() + i);
      ok = t.dim(i) == 1 || t.dim(i) == xd;
    }
    if (!ok)
      ctx.fail(std::string(what) + " of shape " + shape_to_string(t.shape()) + " does not broadcast to X " +
               shape_to_string(x.shape()));
    return broadcast_strides(t.shape(), x.shape());
  };
  const Tensor& scale_t = ctx.input(1);
  const std::vector<double> scale = scale_t.to_double_vector();
  const std::vector<int64_t> scale_strides = param_strides(scale_t, "Scale");
  const Tensor* bias_t = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  const std::vector<double> bias = bias_t ? bias_t->to_double_vector() : std::vector<double>{0.0};
  const std::vector<int64_t> bias_strides =
      bias_t ? param_strides(*bias_t, "B") : std::vector<int64_t>(x.rank(), 0);
  const double eps = ctx.attr_float("epsilon");
  const std::vector<double> xv = x.to_double_vector();
  std::vector<double> mean(rows, 0.0), inv_std(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = xv.data() + r * cols;
    double m = 0, v = 0;
    for (int64_t j = 0; j < cols; ++j) m += xr[j];
    m /= static_cast<double>(cols);
    for (int64_t j = 0; j < cols; ++j) v += (xr[j] - m) * (xr[j] - m);
    v /= static_cast<double>(cols);
    mean[r] = m;
    inv_std[r] = 1.0 / std::sqrt(v + eps);
  }
  std::vector<double> yv(xv.size());
  for_each_index(x.shape(), {scale_strides, bias_strides}, [&](int64_t i, const std::vector<int64_t>& off) {
    const int64_t r = i / cols;
    yv[i] = (xv[i] - mean[r]) * inv_std[r] * scale[off[0]] + (bias_t ? bias[off[1]] : 0.0);
  });
  store_doubles(ctx.allocate_output(0, x.dtype(), x.shape()), yv);
  std::vector<int64_t> stat_shape(x.shape().begin(), x.shape().begin() + axis);
  stat_shape.resize(x.rank(), 1);
  if (ctx.has_output(1)) store_doubles(ctx.allocate_output(1, stash, stat_shape), mean);
  if (ctx.has_output(2)) store_doubles(ctx.allocate_output(2, stash, stat_shape), inv_std);
}

void lp_norm_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "input");
  const int64_t p = ctx.attr_int("p");
  if (p != 1 && p != 2) ctx.fail("p must be 1 or 2, got " + std::to_string(p));
  if (x.rank() == 0) ctx.fail("input must have rank >= 1");
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), static_cast<int64_t>(x.rank()));
  const int64_t outer = product(x.shape(), 0, axis), len = x.dim(axis), inner = product(x.shape(), axis + 1);
  Tensor& y = ctx.allocate_output(0, x.dtype(), x.shape());
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.mutable_data<T>();
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t in = 0; in < inner; ++in) {
        const int64_t base = o * len * inner + in;
        double norm = 0;
        for (int64_t a = 0; a < len; ++a) {
          const double v = static_cast<double>(px[base + a * inner]);
          norm += p == 1 ? std::fabs(v) : v * v;
        }
        if (p == 2) norm = std::sqrt(norm);
        for (int64_t a = 0; a < len; ++a)
          py[base + a * inner] =
              static_cast<T>(static_cast<compute_t<T>>(static_cast<double>(px[base + a * inner]) / norm));
      }
  });
}

void mvn_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "X");
  const int64_t rank = static_cast<int64_t>(x.rank());
  // Statistics are kept per index of X with the reduced axes collapsed to 1.
  std::vector<int64_t> kept = x.shape();
  for (int64_t a : ctx.attr_ints("axes")) kept[normalize_axis(ctx, a, rank)] = 1;
  const std::vector<int64_t> strides = broadcast_strides(kept, x.shape());
  const int64_t groups = product(kept);
  const double count = groups > 0 ? static_cast<double>(x.numel()) / static_cast<double>(groups) : 1.0;
  const std::vector<double> xv = x.to_double_vector();
  std::vector<double> mean(groups, 0.0), var(groups, 0.0), yv(xv.size());
  for_each_index(x.shape(), {strides}, [&](int64_t i, const std::vector<int64_t>& off) { mean[off[0]] += xv[i]; });
  for (auto& m : mean) m /= count;
  for_each_index(x.shape(), {strides}, [&](int64_t i, const std::vector<int64_t>& off) {
    const double d = xv[i] - mean[off[0]];
    var[off[0]] += d * d;
  });
  for (auto& v : var) v /= count;
  // As the ONNX function body: (X - mean) / (sqrt(var) + 1e-9).
  for_each_index(x.shape(), {strides}, [&](int64_t i, const std::vector<int64_t>& off) {
    yv[i] = (xv[i] - mean[off[0]]) / (std::sqrt(var[off[0]]) + 1e-9);
  });
  store_doubles(ctx.allocate_output(0, x.dtype(), x.shape()), yv);
}

void lrn_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "X");
  require_rank_at_least(ctx, x, 2, "X");
  const int64_t size = ctx.attr_int("size");
  if (size < 1) ctx.fail("size must be >= 1, got " + std::to_string(size));
  const double alpha = ctx.attr_float("alpha"), beta = ctx.attr_float("beta"), bias = ctx.attr_float("bias");
  const int64_t n = x.dim(0), c = x.dim(1), spatial = product(x.shape(), 2);
  const int64_t before = (size - 1) / 2, after = size - 1 - before;  // floor and ceil of (size-1)/2
  const std::vector<double> xv = x.to_double_vector();
  std::vector<double> yv(xv.size());
  for (int64_t b = 0; b < n; ++b)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t s = 0; s < spatial; ++s) {
        double sq = 0;
        for (int64_t k = std::max<int64_t>(0, ch - before); k <= std::min(c - 1, ch + after); ++k) {
          const double v = xv[(b * c + k) * spatial + s];
          sq += v * v;
        }
        const int64_t i = (b * c + ch) * spatial + s;
        yv[i] = xv[i] / std::pow(bias + alpha / static_cast<double>(size) * sq, beta);
      }
  store_doubles(ctx.allocate_output(0, x.dtype(), x.shape()), yv);
}

}  // namespace

void register_math_kernels(KernelRegistry& r) {
  r.add("", "MatMul", matmul_kernel);
  r.add("", "MatMulInteger", matmul_integer_kernel);
  r.add("", "QLinearMatMul", qlinear_matmul_kernel);
  r.add("", "Gemm", gemm_kernel);
  r.add("", "Conv", conv_kernel);
  r.add("", "ConvInteger", conv_integer_kernel);
  r.add("", "QLinearConv", qlinear_conv_kernel);
  r.add("", "ConvTranspose", conv_transpose_kernel);
  r.add("", "MaxPool", max_pool_kernel);
  r.add("", "AveragePool", average_pool_kernel);
  r.add("", "LpPool", lp_pool_kernel);
  r.add("", "GlobalAveragePool", global_average_pool_kernel);
  r.add("", "GlobalMaxPool", global_max_pool_kernel);
  r.add("", "GlobalLpPool", global_lp_pool_kernel);
  r.add("", "MaxUnpool", max_unpool_kernel);
  r.add("", "BatchNormalization", batch_norm_kernel);
  r.add("", "InstanceNormalization", instance_norm_kernel);
  r.add("", "GroupNormalization", group_norm_kernel);
  r.add("", "LayerNormalization", layer_norm_kernel);
  r.add("", "LpNormalization", lp_norm_kernel);
  r.add("", "MeanVarianceNormalization", mvn_kernel);
  r.add("", "LRN", lrn_kernel);
}

}  // namespace kiln::reference
