// Reference kernels of softmax-family, reduction, ArgMax/ArgMin, TopK, CumSum, Einsum and NonMaxSuppression ops.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string_view>
#include <type_traits>

#include "backends/reference/kernel.h"
#include "ops/einsum_equation.h"

namespace kiln::reference {

namespace {

bool is_float_dtype(DType dt) {
  return dt == DType::kF32 || dt == DType::kF64 || dt == DType::kF16 || dt == DType::kBF16;
}
bool is_numeric_dtype(DType dt) { return is_float_dtype(dt) || dtype_is_integer(dt); }

void require_float(const KernelContext& ctx, const Tensor& t) {
  if (!is_float_dtype(t.dtype()))
    ctx.unsupported("input dtype " + std::string(dtype_name(t.dtype())) + " is not supported (expected a float type)");
}
void require_numeric(const KernelContext& ctx, const Tensor& t, bool allow_bool = false) {
  if (!is_numeric_dtype(t.dtype()) && !(allow_bool && t.dtype() == DType::kBool))
    ctx.unsupported("input dtype " + std::string(dtype_name(t.dtype())) +
                    " is not supported (expected a numeric type)");
}

// Wide accumulator: double for floats, 64-bit integers (wrapping, as the narrow type would) otherwise.
template <typename C>
using acc_t = std::conditional_t<std::is_floating_point_v<C>, double,
                                 std::conditional_t<std::is_signed_v<C>, int64_t, uint64_t>>;

template <typename A> A acc_add(A a, A b) {
  if constexpr (std::is_integral_v<A>) return static_cast<A>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
  else return a + b;
}
template <typename A> A acc_mul(A a, A b) {
  if constexpr (std::is_integral_v<A>) return static_cast<A>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
  else return a * b;
}

// Stores a double into T; integers truncate toward zero (as numpy's astype does) and saturate
// instead of invoking undefined behaviour out of range.
template <typename T> T from_double(double v) {
  using C = compute_t<T>;
  if constexpr (std::is_floating_point_v<C>) {
    return static_cast<T>(static_cast<C>(v));
  } else if constexpr (std::is_same_v<C, bool>) {
    return v != 0;
  } else {
    if (std::isnan(v)) return T(0);
    if (v <= static_cast<double>(std::numeric_limits<C>::lowest())) return std::numeric_limits<C>::lowest();
    if (v >= static_cast<double>(std::numeric_limits<C>::max())) return std::numeric_limits<C>::max();
    return static_cast<T>(static_cast<C>(v));
  }
}

template <typename C> bool is_nan(C v) {
  if constexpr (std::is_floating_point_v<C>) return std::isnan(v);
  else return false;
}

// Splits a shape around `axis` into [outer, n, inner] element counts.
struct AxisSplit {
  int64_t outer = 1, n = 1, inner = 1;
};
AxisSplit split_at(const std::vector<int64_t>& shape, int64_t axis) {
  AxisSplit s;
  for (int64_t i = 0; i < static_cast<int64_t>(shape.size()); ++i) {
    if (i < axis) s.outer *= shape[static_cast<size_t>(i)];
    else if (i == axis) s.n = shape[static_cast<size_t>(i)];
    else s.inner *= shape[static_cast<size_t>(i)];
  }
  return s;
}

// ---- Softmax, LogSoftmax, Hardmax

enum class SoftmaxKind { kSoftmax, kLogSoftmax, kHardmax };

template <SoftmaxKind kKind>
void softmax_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x);
  const int64_t rank = static_cast<int64_t>(x.rank());
  const int64_t axis_attr = ctx.attr_int("axis");
  AxisSplit s;
  if (ctx.opset() >= 13) {
    if (rank > 0) s = split_at(x.shape(), normalize_axis(ctx, axis_attr, rank));
  } else {
    // Coerced to 2-D [prod(dims[:axis]), prod(dims[axis:])]; axis == rank is allowed, as in Flatten.
    if (axis_attr < -rank || axis_attr > rank)
      ctx.fail("axis " + std::to_string(axis_attr) + " is out of range for rank " + std::to_string(rank));
    const int64_t axis = axis_attr < 0 ? axis_attr + rank : axis_attr;
    s.n = 1;
    for (int64_t i = 0; i < rank; ++i) (i < axis ? s.outer : s.n) *= x.dim(static_cast<size_t>(i));
  }
  Tensor& y = ctx.allocate_output(0, x.dtype(), x.shape());
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.mutable_data<T>();
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t in = 0; in < s.inner; ++in) {
        const int64_t base = o * s.n * s.inner + in;
        auto at = [&](int64_t j) { return base + j * s.inner; };
        if (s.n == 0) continue;
        double mx = static_cast<double>(px[at(0)]);
        int64_t arg = 0;
        for (int64_t j = 1; j < s.n; ++j) {
          const double v = static_cast<double>(px[at(j)]);
          if (v > mx) {
            mx = v;
            arg = j;
          }
        }
        if constexpr (kKind == SoftmaxKind::kHardmax) {
          for (int64_t j = 0; j < s.n; ++j) py[at(j)] = static_cast<T>(j == arg ? 1.0f : 0.0f);
        } else {
          double sum = 0;
          for (int64_t j = 0; j < s.n; ++j) sum += std::exp(static_cast<double>(px[at(j)]) - mx);
          for (int64_t j = 0; j < s.n; ++j) {
            const double d = static_cast<double>(px[at(j)]) - mx;
            const double v = kKind == SoftmaxKind::kSoftmax ? std::exp(d) / sum : d - std::log(sum);
            py[at(j)] = static_cast<T>(static_cast<compute_t<T>>(v));
          }
        }
      }
  });
}

// ---- Reductions

// Which axes a reduction covers; `identity` when noop_with_empty_axes applies.
struct ReducePlan {
  bool identity = false;
  std::vector<bool> reduced;
  std::vector<int64_t> out_shape;   // the output's shape (keepdims applied)
  std::vector<int64_t> keep_shape;  // the output's shape with reduced axes kept as 1
  int64_t group = 1;                // how many input elements reduce into one output element
};

ReducePlan plan_reduce(const KernelContext& ctx, const Tensor& x) {
  std::vector<int64_t> axes;
  bool noop = false;
  if (ctx.schema().find_attr("axes")) {
    axes = ctx.attr_ints("axes");
  } else {
    noop = ctx.attr_int("noop_with_empty_axes") != 0;
    if (ctx.has_input(1)) {
      const Tensor& a = ctx.input(1);
      if (a.dtype() != DType::kI64)
        ctx.fail("axes input has dtype " + std::string(dtype_name(a.dtype())) + ", expected i64");
      if (a.rank() > 1) ctx.fail("axes input must be 1-D, got shape " + shape_to_string(a.shape()));
      axes = a.to_int64_vector();
    }
  }
  ReducePlan p;
  const int64_t rank = static_cast<int64_t>(x.rank());
  if (axes.empty() && noop) {
    p.identity = true;
    return p;
  }
  p.reduced.assign(static_cast<size_t>(rank), axes.empty());
  for (int64_t a : axes) {
    const int64_t n = normalize_axis(ctx, a, rank);
    if (p.reduced[static_cast<size_t>(n)]) ctx.fail("axis " + std::to_string(a) + " is listed twice in axes");
    p.reduced[static_cast<size_t>(n)] = true;
  }
  const bool keepdims = ctx.attr_int("keepdims") != 0;
  for (int64_t i = 0; i < rank; ++i) {
    const int64_t d = x.dim(static_cast<size_t>(i));
    if (p.reduced[static_cast<size_t>(i)]) {
      p.group *= d;
      p.keep_shape.push_back(1);
      if (keepdims) p.out_shape.push_back(1);
    } else {
      p.keep_shape.push_back(d);
      p.out_shape.push_back(d);
    }
  }
  return p;
}

// Folds every input element into the accumulator of its output element:
// acc[o] = init, then step(acc[o], x) for each x, then out[o] = finish(acc[o]).
template <typename T, typename A, typename Step, typename Finish>
void reduce_into(const ReducePlan& p, const Tensor& x, Tensor& y, A init, Step step, Finish finish) {
  const int64_t out_n = shape_numel(p.out_shape);
  // Not std::vector: its bool specialisation hands out proxies, not references.
  std::unique_ptr<A[]> acc(new A[static_cast<size_t>(out_n)]);
  std::fill(acc.get(), acc.get() + out_n, init);
  std::vector<int64_t> out_strides = dense_strides(p.keep_shape);
  for (size_t d = 0; d < p.reduced.size(); ++d)
    if (p.reduced[d]) out_strides[d] = 0;
  const T* px = x.data<T>();
  for_each_index(x.shape(), {out_strides}, [&](int64_t i, const std::vector<int64_t>& off) {
    step(acc[static_cast<size_t>(off[0])], static_cast<compute_t<T>>(px[i]));
  });
  T* py = y.mutable_data<T>();
  for (int64_t o = 0; o < out_n; ++o) py[o] = finish(acc[static_cast<size_t>(o)]);
}

enum class ReduceKind { kSum, kMean, kMax, kMin, kProd, kL1, kL2, kLogSum, kLogSumExp, kSumSquare };

template <ReduceKind kKind>
void reduce_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  constexpr bool kMinMax = kKind == ReduceKind::kMax || kKind == ReduceKind::kMin;
  require_numeric(ctx, x, kMinMax);
  const ReducePlan p = plan_reduce(ctx, x);
  if (p.identity) {
    ctx.set_output(0, x);
    return;
  }
  Tensor& y = ctx.allocate_output(0, x.dtype(), p.out_shape);
  const double count = static_cast<double>(p.group);
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    using A = acc_t<C>;
    if constexpr (kMinMax) {
      // Over an empty set: -inf / +inf where the type has them, else its lowest / highest value.
      constexpr bool kMax = kKind == ReduceKind::kMax;
      C init;
      if constexpr (std::is_floating_point_v<C>)
        init = kMax ? -std::numeric_limits<C>::infinity() : std::numeric_limits<C>::infinity();
      else
        init = kMax ? std::numeric_limits<C>::lowest() : std::numeric_limits<C>::max();
      reduce_into<T>(p, x, y, init,
                     [](C& a, C v) {
                       if (is_nan(a)) return;  // NaN propagates, as numpy's maximum does
                       if (is_nan(v) || (kMax ? v > a : v < a)) a = v;
                     },
                     [](C a) { return static_cast<T>(a); });
    } else if constexpr (std::is_same_v<C, bool>) {
      ctx.unsupported("bool input is not supported");
    } else if constexpr (kKind == ReduceKind::kSum || kKind == ReduceKind::kMean || kKind == ReduceKind::kL1 ||
                         kKind == ReduceKind::kSumSquare || kKind == ReduceKind::kProd) {
      const A init = kKind == ReduceKind::kProd ? A(1) : A(0);
      reduce_into<T>(p, x, y, init,
                     [](A& a, C v) {
                       const A w = static_cast<A>(v);
                       if constexpr (kKind == ReduceKind::kProd) a = acc_mul(a, w);
                       else if constexpr (kKind == ReduceKind::kSumSquare) a = acc_add(a, acc_mul(w, w));
                       else if constexpr (kKind == ReduceKind::kL1 && std::is_signed_v<A>)
                         a = acc_add(a, w < A(0) ? acc_mul(w, A(-1)) : w);
                       else a = acc_add(a, w);
                     },
                     [&](A a) -> T {
                       if constexpr (kKind == ReduceKind::kMean) {
                         // The mean of an empty set is undefined: NaN for floats, 0 for integers.
                         if constexpr (std::is_floating_point_v<A>) return from_double<T>(a / count);
                         else return p.group == 0 ? T(0) : static_cast<T>(a / static_cast<A>(p.group));
                       } else if constexpr (std::is_floating_point_v<A>) {
                         return from_double<T>(a);
                       } else {
                         return static_cast<T>(a);
                       }
                     });
    } else if constexpr (kKind == ReduceKind::kL2 || kKind == ReduceKind::kLogSum) {
      reduce_into<T>(p, x, y, 0.0,
                     [](double& a, C v) {
                       const double d = static_cast<double>(v);
                       a += kKind == ReduceKind::kL2 ? d * d : d;
                     },
                     [](double a) { return from_double<T>(kKind == ReduceKind::kL2 ? std::sqrt(a) : std::log(a)); });
    } else {
      static_assert(kKind == ReduceKind::kLogSumExp);
      // Shift by the maximum so large inputs do not overflow exp(); an empty or all -inf set gives -inf.
      std::vector<double> shift(static_cast<size_t>(shape_numel(p.out_shape)),
                                -std::numeric_limits<double>::infinity());
      std::vector<int64_t> out_strides = dense_strides(p.keep_shape);
      for (size_t d = 0; d < p.reduced.size(); ++d)
        if (p.reduced[d]) out_strides[d] = 0;
      const T* px = x.data<T>();
      for_each_index(x.shape(), {out_strides}, [&](int64_t i, const std::vector<int64_t>& off) {
        const double v = static_cast<double>(static_cast<C>(px[i]));
        double& m = shift[static_cast<size_t>(off[0])];
        if (!std::isnan(m) && (std::isnan(v) || v > m)) m = v;
      });
      std::vector<double> sum(shift.size(), 0.0);
      for_each_index(x.shape(), {out_strides}, [&](int64_t i, const std::vector<int64_t>& off) {
        const size_t o = static_cast<size_t>(off[0]);
        const double m = std::isinf(shift[o]) ? 0.0 : shift[o];
        sum[o] += std::exp(static_cast<double>(static_cast<C>(px[i])) - m);
      });
      T* py = y.mutable_data<T>();
      for (size_t o = 0; o < sum.size(); ++o) {
        const double m = std::isinf(shift[o]) ? 0.0 : shift[o];
        py[o] = from_double<T>(m + std::log(sum[o]));
      }
    }
  });
}

// ---- ArgMax, ArgMin

template <bool kMax>
void arg_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_numeric(ctx, x);
  const int64_t rank = static_cast<int64_t>(x.rank());
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), rank);
  const bool last = ctx.schema().find_attr("select_last_index") && ctx.attr_int("select_last_index") != 0;
  const AxisSplit s = split_at(x.shape(), axis);
  if (s.n == 0) ctx.fail("cannot take " + ctx.schema().name + " over axis " + std::to_string(axis) + " of size 0");
  std::vector<int64_t> out_shape = x.shape();
  if (ctx.attr_int("keepdims") != 0) out_shape[static_cast<size_t>(axis)] = 1;
  else out_shape.erase(out_shape.begin() + axis);
  Tensor& y = ctx.allocate_output(0, DType::kI64, out_shape);
  int64_t* py = y.mutable_data<int64_t>();
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T* px = x.data<T>();
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t in = 0; in < s.inner; ++in) {
        const int64_t base = o * s.n * s.inner + in;
        C best = static_cast<C>(px[base]);
        int64_t arg = 0;
        for (int64_t j = 1; j < s.n; ++j) {
          const C v = static_cast<C>(px[base + j * s.inner]);
          // A NaN wins (as in numpy); among equal values the first, or the last with select_last_index.
          bool take;
          if (is_nan(best)) take = last && is_nan(v);
          else take = is_nan(v) || (kMax ? v > best : v < best) || (last && v == best);
          if (take) {
            best = v;
            arg = j;
          }
        }
        py[o * s.inner + in] = arg;
      }
  });
}

// ---- TopK

void topk_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_numeric(ctx, x);
  int64_t k;
  if (ctx.schema().find_attr("k")) {
    k = ctx.attr_int("k");
  } else {
    const Tensor& kt = ctx.input(1);
    if (kt.dtype() != DType::kI64)
      ctx.fail("K input has dtype " + std::string(dtype_name(kt.dtype())) + ", expected i64");
    if (kt.numel() != 1 || kt.rank() > 1)
      ctx.fail("K input must be a 1-D tensor of one element, got shape " + shape_to_string(kt.shape()));
    k = kt.data<int64_t>()[0];
  }
  const bool largest = !ctx.schema().find_attr("largest") || ctx.attr_int("largest") != 0;
  const int64_t rank = static_cast<int64_t>(x.rank());
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), rank);
  const AxisSplit s = split_at(x.shape(), axis);
  if (k < 0 || k > s.n)
    ctx.fail("k = " + std::to_string(k) + " is out of range for axis " + std::to_string(axis) + " of size " +
             std::to_string(s.n));
  std::vector<int64_t> out_shape = x.shape();
  out_shape[static_cast<size_t>(axis)] = k;
  Tensor& values = ctx.allocate_output(0, x.dtype(), out_shape);
  Tensor& indices = ctx.allocate_output(1, DType::kI64, out_shape);
  int64_t* pi = indices.mutable_data<int64_t>();
  // The result is always sorted (an allowed order when sorted=0); ties go to the lower index and NaN
  // sorts after every number, as numpy's stable argsort orders them.
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T* px = x.data<T>();
    T* pv = values.mutable_data<T>();
    std::vector<std::pair<C, int64_t>> row(static_cast<size_t>(s.n));
    auto before = [&](const std::pair<C, int64_t>& a, const std::pair<C, int64_t>& b) {
      const bool na = is_nan(a.first), nb = is_nan(b.first);
      if (na || nb) return na == nb ? a.second < b.second : nb;
      if (a.first != b.first) return largest ? a.first > b.first : a.first < b.first;
      return a.second < b.second;
    };
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t in = 0; in < s.inner; ++in) {
        for (int64_t j = 0; j < s.n; ++j)
          row[static_cast<size_t>(j)] = {static_cast<C>(px[(o * s.n + j) * s.inner + in]), j};
        std::sort(row.begin(), row.end(), before);
        for (int64_t j = 0; j < k; ++j) {
          const int64_t dst = (o * k + j) * s.inner + in;
          pv[dst] = static_cast<T>(row[static_cast<size_t>(j)].first);
          pi[dst] = row[static_cast<size_t>(j)].second;
        }
      }
  });
}

// ---- CumSum

void cumsum_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_numeric(ctx, x);
  const Tensor& at = ctx.input(1);
  if (at.dtype() != DType::kI32 && at.dtype() != DType::kI64)
    ctx.fail("axis input has dtype " + std::string(dtype_name(at.dtype())) + ", expected i32 or i64");
  if (at.numel() != 1 || at.rank() > 1)
    ctx.fail("axis input must be a scalar, got shape " + shape_to_string(at.shape()));
  const int64_t rank = static_cast<int64_t>(x.rank());
  if (rank == 0) ctx.fail("input must have rank >= 1");
  const int64_t axis = normalize_axis(ctx, at.to_int64_vector()[0], rank);
  const bool exclusive = ctx.attr_int("exclusive") != 0;
  const bool reverse = ctx.attr_int("reverse") != 0;
  const AxisSplit s = split_at(x.shape(), axis);
  Tensor& y = ctx.allocate_output(0, x.dtype(), x.shape());
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    if constexpr (std::is_same_v<C, bool>) {
      ctx.unsupported("bool input is not supported");
    } else {
      using A = acc_t<C>;
      const T* px = x.data<T>();
      T* py = y.mutable_data<T>();
      for (int64_t o = 0; o < s.outer; ++o)
        for (int64_t in = 0; in < s.inner; ++in) {
          A acc = 0;
          for (int64_t step = 0; step < s.n; ++step) {
            const int64_t j = reverse ? s.n - 1 - step : step;
            const int64_t idx = (o * s.n + j) * s.inner + in;
            const A v = static_cast<A>(static_cast<C>(px[idx]));
            if (!exclusive) acc = acc_add(acc, v);
            if constexpr (std::is_floating_point_v<A>) py[idx] = from_double<T>(acc);
            else py[idx] = static_cast<T>(acc);
            if (exclusive) acc = acc_add(acc, v);
          }
        }
    }
  });
}

// ---- Einsum

void einsum_kernel(KernelContext& ctx) {
  const size_t n_ops = ctx.num_inputs();
  for (size_t k = 0; k < n_ops; ++k) {
    require_numeric(ctx, ctx.input(k));
    if (ctx.input(k).dtype() != ctx.input(0).dtype())
      ctx.fail("inputs have different dtypes " + std::string(dtype_name(ctx.input(0).dtype())) + " and " +
               std::string(dtype_name(ctx.input(k).dtype())));
  }
  const EinsumSpec spec = parse_einsum(ctx, n_ops);
  const std::vector<EinsumTerm>& terms = spec.inputs;
  const EinsumTerm& out_term = spec.output;
  std::map<int, int> count;  // label -> number of uses over all input terms
  for (const auto& t : terms)
    for (int l : t)
      if (l != kEllipsis) ++count[l];

  // The combined index space: ellipsis dims first (right-aligned broadcast), then one dim per label.
  int64_t ell_rank = 0;
  std::vector<int64_t> op_ell_rank(n_ops, 0);
  for (size_t k = 0; k < n_ops; ++k) {
    const EinsumTerm& t = terms[k];
    const bool has_ell = std::find(t.begin(), t.end(), kEllipsis) != t.end();
    const int64_t nlabels = static_cast<int64_t>(t.size()) - (has_ell ? 1 : 0);
    const int64_t rank = static_cast<int64_t>(ctx.input(k).rank());
    if (has_ell ? rank < nlabels : rank != nlabels)
      ctx.fail("input " + std::to_string(k) + " has rank " + std::to_string(rank) + " but its equation term has " +
               std::to_string(nlabels) + " labels" + (has_ell ? " and an ellipsis" : ""));
    op_ell_rank[k] = rank - nlabels;
    ell_rank = std::max(ell_rank, op_ell_rank[k]);
  }
  std::map<int, size_t> label_pos;  // label -> combined dim
  for (const auto& [l, n] : count) label_pos.emplace(l, static_cast<size_t>(ell_rank) + label_pos.size());
  const size_t total = static_cast<size_t>(ell_rank) + label_pos.size();
  std::vector<int64_t> sizes(total, -1);
  for (size_t e = 0; e < static_cast<size_t>(ell_rank); ++e) sizes[e] = 1;
  std::vector<std::vector<int64_t>> strides(n_ops + 1, std::vector<int64_t>(total, 0));
  for (size_t k = 0; k < n_ops; ++k) {
    const Tensor& x = ctx.input(k);
    const std::vector<int64_t> dense = dense_strides(x.shape());
    size_t axis = 0;
    for (int l : terms[k]) {
      if (l == kEllipsis) {
        for (int64_t e = 0; e < op_ell_rank[k]; ++e, ++axis) {
          const size_t c = static_cast<size_t>(ell_rank - op_ell_rank[k] + e);
          const int64_t d = x.dim(axis);
          if (d != 1) {
            if (sizes[c] != 1 && sizes[c] != d)
              ctx.fail("ellipsis dimensions of the inputs cannot be broadcast: " + std::to_string(sizes[c]) + " and " +
                       std::to_string(d));
            sizes[c] = d;
            strides[k][c] += dense[axis];
          }
        }
        continue;
      }
      const size_t c = label_pos.at(l);
      const int64_t d = x.dim(axis);
      if (sizes[c] >= 0 && sizes[c] != d)
        ctx.fail("label '" + std::string(1, static_cast<char>(l)) + "' has size " + std::to_string(sizes[c]) + " and " +
                 std::to_string(d));
      sizes[c] = d;
      strides[k][c] += dense[axis];  // a repeated label walks the diagonal
      ++axis;
    }
  }
  std::vector<int64_t> out_shape;
  std::vector<size_t> out_dims;  // combined dim of each output axis
  for (int l : out_term) {
    if (l == kEllipsis) {
      for (size_t e = 0; e < static_cast<size_t>(ell_rank); ++e) out_dims.push_back(e);
    } else {
      out_dims.push_back(label_pos.at(l));
    }
  }
  for (size_t c : out_dims) out_shape.push_back(sizes[c]);
  const std::vector<int64_t> out_dense = dense_strides(out_shape);
  for (size_t a = 0; a < out_dims.size(); ++a) strides[n_ops][out_dims[a]] = out_dense[a];

  Tensor& y = ctx.allocate_output(0, ctx.input(0).dtype(), out_shape);
  dispatch_dtype(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    if constexpr (std::is_same_v<C, bool>) {
      ctx.unsupported("bool input is not supported");
    } else {
      using A = acc_t<C>;
      std::vector<const T*> ptrs;
      for (size_t k = 0; k < n_ops; ++k) ptrs.push_back(ctx.input(k).data<T>());
      std::vector<A> acc(static_cast<size_t>(y.numel()), A(0));
      for_each_index(sizes, strides, [&](int64_t, const std::vector<int64_t>& off) {
        A prod = A(1);
        for (size_t k = 0; k < n_ops; ++k) prod = acc_mul(prod, static_cast<A>(static_cast<C>(ptrs[k][off[k]])));
        A& a = acc[static_cast<size_t>(off[n_ops])];
        a = acc_add(a, prod);
      });
      T* py = y.mutable_data<T>();
      for (size_t i = 0; i < acc.size(); ++i) {
        if constexpr (std::is_floating_point_v<A>) py[i] = from_double<T>(acc[i]);
        else py[i] = static_cast<T>(acc[i]);
      }
    }
  });
}

// ---- NonMaxSuppression

void nms_kernel(KernelContext& ctx) {
  const Tensor& boxes = ctx.input(0);
  const Tensor& scores = ctx.input(1);
  if (boxes.dtype() != DType::kF32 || scores.dtype() != DType::kF32)
    ctx.unsupported("boxes and scores must be f32, got " + std::string(dtype_name(boxes.dtype())) + " and " +
                    std::string(dtype_name(scores.dtype())));
  if (boxes.rank() != 3 || boxes.dim(2) != 4)
    ctx.fail("boxes must have shape [num_batches, num_boxes, 4], got " + shape_to_string(boxes.shape()));
  if (scores.rank() != 3 || scores.dim(0) != boxes.dim(0) || scores.dim(2) != boxes.dim(1))
    ctx.fail("scores must have shape [num_batches, num_classes, num_boxes] matching boxes " +
             shape_to_string(boxes.shape()) + ", got " + shape_to_string(scores.shape()));
  auto scalar_input = [&](size_t i, DType dt, const char* name) -> const Tensor* {
    if (!ctx.has_input(i)) return nullptr;
    const Tensor& t = ctx.input(i);
    if (t.dtype() != dt || t.numel() != 1)
      ctx.fail(std::string(name) + " must hold one " + std::string(dtype_name(dt)) + " value, got " +
               std::string(dtype_name(t.dtype())) + "[" + shape_to_string(t.shape()) + "]");
    return &t;
  };
  const Tensor* max_t = scalar_input(2, DType::kI64, "max_output_boxes_per_class");
  const Tensor* iou_t = scalar_input(3, DType::kF32, "iou_threshold");
  const Tensor* score_t = scalar_input(4, DType::kF32, "score_threshold");
  const int64_t max_out = max_t ? max_t->data<int64_t>()[0] : 0;
  const float iou_threshold = iou_t ? iou_t->data<float>()[0] : 0.0f;
  if (iou_threshold < 0 || iou_threshold > 1)
    ctx.fail("iou_threshold must be in [0, 1], got " + std::to_string(iou_threshold));
  const int64_t center = ctx.attr_int("center_point_box");
  if (center != 0 && center != 1) ctx.fail("center_point_box must be 0 or 1, got " + std::to_string(center));

  const int64_t batches = boxes.dim(0), n = boxes.dim(1), classes = scores.dim(1);
  const float* pb = boxes.data<float>();
  const float* ps = scores.data<float>();
  // Corners as [ymin, xmin, ymax, xmax], whatever the input format and corner order.
  auto corners = [&](int64_t b, int64_t i) {
    const float* p = pb + (b * n + i) * 4;
    std::array<float, 4> c;
    if (center) {
      c = {p[1] - p[3] / 2, p[0] - p[2] / 2, p[1] + p[3] / 2, p[0] + p[2] / 2};
    } else {
      c = {std::min(p[0], p[2]), std::min(p[1], p[3]), std::max(p[0], p[2]), std::max(p[1], p[3])};
    }
    return c;
  };
  auto suppresses = [&](const std::array<float, 4>& a, const std::array<float, 4>& b) {
    const float ih = std::min(a[2], b[2]) - std::max(a[0], b[0]);
    const float iw = std::min(a[3], b[3]) - std::max(a[1], b[1]);
    if (ih <= 0 || iw <= 0) return false;
    const float inter = ih * iw;
    const float area_a = (a[2] - a[0]) * (a[3] - a[1]);
    const float area_b = (b[2] - b[0]) * (b[3] - b[1]);
    if (area_a <= 0 || area_b <= 0) return false;
    const float uni = area_a + area_b - inter;
    return uni > 0 && inter / uni > iou_threshold;
  };
  std::vector<std::array<int64_t, 3>> selected;
  for (int64_t b = 0; b < batches && max_out > 0; ++b)
    for (int64_t c = 0; c < classes; ++c) {
      const float* sc = ps + (b * classes + c) * n;
      std::vector<int64_t> order;
      for (int64_t i = 0; i < n; ++i)
        if (!score_t || sc[i] > score_t->data<float>()[0]) order.push_back(i);
      // Highest score first, ties to the lower box index.
      std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) { return sc[i] > sc[j]; });
      std::vector<int64_t> kept;
      for (int64_t i : order) {
        if (static_cast<int64_t>(kept.size()) >= max_out) break;
        const auto ci = corners(b, i);
        bool ok = true;
        for (int64_t j : kept)
          if (suppresses(corners(b, j), ci)) {
            ok = false;
            break;
          }
        if (ok) kept.push_back(i);
      }
      for (int64_t i : kept) selected.push_back({b, c, i});
    }
  Tensor& y = ctx.allocate_output(0, DType::kI64, {static_cast<int64_t>(selected.size()), 3});
  int64_t* py = y.mutable_data<int64_t>();
  for (size_t i = 0; i < selected.size(); ++i)
    for (size_t j = 0; j < 3; ++j) py[i * 3 + j] = selected[i][j];
}

}  // namespace

void register_reduce_kernels(KernelRegistry& r) {
  r.add("", "Softmax", softmax_kernel<SoftmaxKind::kSoftmax>);
  r.add("", "LogSoftmax", softmax_kernel<SoftmaxKind::kLogSoftmax>);
  r.add("", "Hardmax", softmax_kernel<SoftmaxKind::kHardmax>);
  r.add("", "ReduceSum", reduce_kernel<ReduceKind::kSum>);
  r.add("", "ReduceMean", reduce_kernel<ReduceKind::kMean>);
  r.add("", "ReduceMax", reduce_kernel<ReduceKind::kMax>);
  r.add("", "ReduceMin", reduce_kernel<ReduceKind::kMin>);
  r.add("", "ReduceProd", reduce_kernel<ReduceKind::kProd>);
  r.add("", "ReduceL1", reduce_kernel<ReduceKind::kL1>);
  r.add("", "ReduceL2", reduce_kernel<ReduceKind::kL2>);
  r.add("", "ReduceLogSum", reduce_kernel<ReduceKind::kLogSum>);
  r.add("", "ReduceLogSumExp", reduce_kernel<ReduceKind::kLogSumExp>);
  r.add("", "ReduceSumSquare", reduce_kernel<ReduceKind::kSumSquare>);
  r.add("", "ArgMax", arg_kernel<true>);
  r.add("", "ArgMin", arg_kernel<false>);
  r.add("", "TopK", topk_kernel);
  r.add("", "CumSum", cumsum_kernel);
  r.add("", "Einsum", einsum_kernel);
  r.add("", "NonMaxSuppression", nms_kernel);
}

}  // namespace kiln::reference
