// ErrorStats: accuracy metrics of a tensor against its reference, accumulated in double.
#include "quant/metrics.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace kiln::quant {

namespace {

// Index of the largest value in [p, p + n), NaNs skipped, first on ties; -1 when all are NaN.
int64_t argmax(const double* p, int64_t n) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(p[i])) continue;
    if (best < 0 || p[i] > p[best]) best = i;
  }
  return best;
}

bool numeric(DType dt) { return dtype_is_float(dt) || dtype_is_integer(dt) || dt == DType::kBool; }

}  // namespace

void ErrorStats::add(const Tensor& got, const Tensor& want) {
  if (got.shape() != want.shape())
    throw Error(ErrorCode::kInvalidArgument, "cannot compare tensors of different shapes: " +
                                                 shape_to_string(got.shape()) + " vs reference " +
                                                 shape_to_string(want.shape()));
  if (!numeric(got.dtype()) || !numeric(want.dtype()))
    throw Error(ErrorCode::kInvalidArgument, "cannot compare tensors of dtype " + std::string(dtype_name(got.dtype())) +
                                                 " and " + std::string(dtype_name(want.dtype())));
  const std::vector<double> a = got.to_double_vector();
  const std::vector<double> b = want.to_double_vector();
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = a[i], y = b[i];
    if (std::isnan(x) || std::isnan(y)) {
      has_nan = true;
      if (check_tolerance) ++tolerance_failures;
      continue;
    }
    // Equal values (the same infinity included) have no error; inf - inf would be NaN.
    const double diff = x == y ? 0.0 : std::fabs(x - y);
    max_abs = std::max(max_abs, diff);
    max_rel = std::max(max_rel, diff / std::max(std::fabs(y), kRelFloor));
    max_want = std::max(max_want, std::fabs(y));
    sum_abs += diff;
    if (check_tolerance) {
      const double excess = diff - (atol + rtol * std::fabs(y));
      if (excess > 0) {
        ++tolerance_failures;
        worst_excess = std::max(worst_excess, excess);
      }
    }
    dot_ += x * y;
    got_sq_ += x * x;
    want_sq_ += y * y;
  }
  count += static_cast<int64_t>(a.size());
  ++samples;
  if (got_sq_ == 0 && want_sq_ == 0) {
    cosine = 1;
  } else if (got_sq_ == 0 || want_sq_ == 0) {
    cosine = 0;
  } else {
    // Clamped: rounding can put identical vectors a hair above 1.
    cosine = std::clamp(dot_ / (std::sqrt(got_sq_) * std::sqrt(want_sq_)), -1.0, 1.0);
    if (std::isnan(cosine)) cosine = 0;  // infinite sums
  }

  const int64_t rank = static_cast<int64_t>(got.rank());
  const int64_t last = rank > 0 ? got.dim(static_cast<size_t>(rank - 1)) : 0;
  if (last > 1) {
    const int64_t rows = got.numel() / last;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t ia = argmax(a.data() + r * last, last), ib = argmax(b.data() + r * last, last);
      if (ia >= 0 && ia == ib) ++top1_agree;
      ++top1_total;
    }
  }
}

}  // namespace kiln::quant
