// Accuracy metrics of a tensor against a reference tensor (max abs/rel error, cosine similarity,
// top-1 agreement, tolerance violations), accumulated over many samples: what `kiln compare` and
// the INT8/BF16 accuracy checks report.
#pragma once
#include <cstdint>

#include "ir/tensor.h"

namespace kiln::quant {

// Errors of `got` (the thing under test) against `want` (the reference), accumulated over every
// add(). Values are read as doubles (any numeric dtype; the two sides may differ in dtype, e.g. a
// bf16 engine output against f32). Definitions, per element a = got, b = want:
//   abs error  |a - b|                       (0 when a == b, infinities included)
//   rel error  |a - b| / max(|b|, 1e-6)
//   cosine     sum(a*b) / sqrt(sum(a^2) * sum(b^2)) over all elements of all samples; 1 when both
//              sides are all zeros, 0 when only one is
//   top-1      for tensors whose last dim is > 1: each row (the last dim) agrees when the index of
//              its largest value (first one on ties) is the same on both sides
//   tolerance  when set_tolerance() was called: an element fails when |a - b| > atol + rtol*|b|
// A NaN on either side sets has_nan (a failure for every check) and is left out of the sums.
struct ErrorStats {
  static constexpr double kRelFloor = 1e-6;

  double max_abs = 0;        // largest |a - b|
  double max_rel = 0;        // largest |a - b| / max(|b|, kRelFloor)
  double cosine = 1;         // over everything added so far
  double max_want = 0;       // largest |b|: the scale max_abs is relative to
  double sum_abs = 0;        // sum of |a - b| (mean_abs())
  int64_t top1_agree = 0, top1_total = 0;  // rows
  int64_t count = 0;         // elements compared
  int64_t samples = 0;       // add() calls
  bool has_nan = false;
  // Tolerance check (off until set_tolerance()).
  bool check_tolerance = false;
  double atol = 0, rtol = 0;
  int64_t tolerance_failures = 0;  // elements outside atol + rtol*|b| (NaNs included)
  double worst_excess = 0;         // largest |a - b| - (atol + rtol*|b|) among them

  void set_tolerance(double abs_tol, double rel_tol) {
    check_tolerance = true;
    atol = abs_tol;
    rtol = rel_tol;
  }
  // Adds one sample. Throws kInvalidArgument when the shapes differ or a tensor is not numeric.
  void add(const Tensor& got, const Tensor& want);

  double mean_abs() const { return count ? sum_abs / static_cast<double>(count) : 0.0; }
  // Fraction of rows whose top-1 agrees; 1 when no row was compared.
  double top1_rate() const {
    return top1_total ? static_cast<double>(top1_agree) / static_cast<double>(top1_total) : 1.0;
  }
  bool has_top1() const { return top1_total > 0; }
  // max_abs relative to the reference's scale (max_want), for telling noise from real error.
  double normalized_max_abs() const { return max_want > 0 ? max_abs / max_want : max_abs; }

 private:
  double dot_ = 0, got_sq_ = 0, want_sq_ = 0;
};

}  // namespace kiln::quant
