// Reference kernels of Resize and Upsample. Resizing is separable: each axis is resampled in turn
// with per-output-coordinate taps (index, weight), computed in double as the ONNX reference does.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "backends/reference/kernel.h"
#include "backends/reference/tensor_kernel_util.h"
#include "ops/tensor_rules.h"

namespace kiln::reference {

namespace {

using namespace tensor_rules;
using namespace tensor_util;

struct ResizeParams {
  std::string mode;   // nearest, linear, cubic
  std::string coord;  // coordinate_transformation_mode
  std::string nearest_mode;
  double cubic_a = -0.75;
  bool exclude_outside = false;
  double extrapolation = 0;
  bool antialias = false;
  bool legacy = false;  // Upsample and Resize-10: asymmetric coordinates, floor/ceil nearest
};

struct Tap {
  int64_t index;
  double weight;
};

// Taps of one axis for every output coordinate; `outside` marks tf_crop_and_resize extrapolation.
struct AxisPlan {
  std::vector<std::vector<Tap>> taps;
  std::vector<bool> outside;
  bool identity = true;
};

double cubic_kernel(double x, double a) {
  x = std::fabs(x);
  if (x <= 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

// The input coordinate that output coordinate x maps to, or NaN for tf_crop_and_resize outside the roi.
double source_coordinate(const KernelContext& ctx, const ResizeParams& p, int64_t x, int64_t in, int64_t out,
                         double scale, double roi_start, double roi_end) {
  const double xd = static_cast<double>(x);
  const double in_d = static_cast<double>(in);
  if (p.legacy) return xd / scale;
  const double out_w = scale * in_d;  // the real-valued output length the reference uses
  const std::string& c = p.coord;
  if (c == "half_pixel") return (xd + 0.5) / scale - 0.5;
  if (c == "half_pixel_symmetric") {
    const double adjustment = static_cast<double>(out) / out_w;
    const double offset = in_d / 2 * (1 - adjustment);
    return offset + (xd + 0.5) / scale - 0.5;
  }
  if (c == "pytorch_half_pixel") return out_w == 1 ? -0.5 : (xd + 0.5) / scale - 0.5;
  if (c == "align_corners") return out_w == 1 ? 0.0 : xd * (in_d - 1) / (out_w - 1);
  if (c == "asymmetric") return xd / scale;
  if (c == "tf_half_pixel_for_nn") return (xd + 0.5) / scale;
  if (c == "tf_crop_and_resize") {
    double v =
        out_w == 1 ? (roi_end - roi_start) * (in_d - 1) / 2 : xd * (roi_end - roi_start) * (in_d - 1) / (out_w - 1);
    v += roi_start * (in_d - 1);
    return v < 0 || v > in_d - 1 ? std::numeric_limits<double>::quiet_NaN() : v;
  }
  ctx.fail("unknown coordinate_transformation_mode '" + c + "'");
}

AxisPlan plan_axis(const KernelContext& ctx, const ResizeParams& p, int64_t in, int64_t out, double scale,
                   double roi_start, double roi_end) {
  AxisPlan plan;
  plan.taps.resize(out);
  plan.outside.assign(out, false);
  plan.identity = in == out;
  for (int64_t x = 0; x < out; ++x) {
    const double xo = source_coordinate(ctx, p, x, in, out, scale, roi_start, roi_end);
    std::vector<Tap>& taps = plan.taps[x];
    if (std::isnan(xo)) {
      plan.outside[x] = true;
      plan.identity = false;
      continue;
    }
    const double f = std::floor(xo);
    const double ratio = xo - f;
    if (p.mode == "nearest") {
      double pick;
      if (p.legacy) {
        pick = scale < 1 ? std::ceil(xo) : f;  // ONNX Runtime's Upsample behaviour
      } else if (ratio == 0) {
        pick = xo;
      } else if (p.nearest_mode == "round_prefer_floor") {
        pick = ratio <= 0.5 ? f : f + 1;
      } else if (p.nearest_mode == "round_prefer_ceil") {
        pick = ratio < 0.5 ? f : f + 1;
      } else if (p.nearest_mode == "floor") {
        pick = f;
      } else {
        pick = f + 1;  // ceil
      }
      const int64_t idx = std::clamp<int64_t>(static_cast<int64_t>(pick), 0, in - 1);
      taps.push_back({idx, 1.0});
    } else {
      // Filter support: 2 (linear) or 4 (cubic) taps, stretched by 1/scale when antialiasing a downscale.
      const bool cubic = p.mode == "cubic";
      const double s = p.antialias ? std::min(scale, 1.0) : 1.0;
      const int64_t n =
          p.antialias ? 2 - 2 * static_cast<int64_t>(std::floor((cubic ? -2 : -1) / s) + 1) : (cubic ? 4 : 2);
      const int64_t first = static_cast<int64_t>(f) - n / 2 + 1;
      double sum = 0;
      for (int64_t k = 0; k < n; ++k) {
        const int64_t idx = first + k;
        const double d = (static_cast<double>(idx) - xo) * s;
        double w = cubic ? cubic_kernel(d, p.cubic_a) : std::max(0.0, 1 - std::fabs(d));
        taps.push_back({idx, w});
        sum += w;
      }
      if (p.antialias && sum != 0)
        for (Tap& t : taps) t.weight /= sum;
      if (p.exclude_outside) {
        sum = 0;
        for (Tap& t : taps) {
          if (t.index < 0 || t.index >= in) t.weight = 0;
          sum += t.weight;
        }
        if (sum != 0)
          for (Tap& t : taps) t.weight /= sum;
      }
      for (Tap& t : taps) t.index = std::clamp<int64_t>(t.index, 0, in - 1);  // edge padding
    }
    double w_self = 0, w_other = 0;
    for (const Tap& t : taps) (t.index == x ? w_self : w_other) += t.weight;
    if (!(w_self == 1 && w_other == 0)) plan.identity = false;
  }
  return plan;
}

void resize_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t rank = static_cast<int64_t>(x.rank());
  const bool upsample = ctx.node().op_type == "Upsample";
  ResizeParams p;
  p.legacy = upsample || ctx.opset() < 11;
  p.mode = ctx.attr_string("mode");
  if (p.mode == "bilinear" && p.legacy) p.mode = "linear";
  if (p.mode != "nearest" && p.mode != "linear" && !(p.mode == "cubic" && !p.legacy))
    ctx.fail("unsupported mode '" + p.mode + "'");
  if (!p.legacy) {
    p.coord = ctx.attr_string("coordinate_transformation_mode");
    if (p.coord == "half_pixel_symmetric" && ctx.opset() < 19)
      ctx.fail("coordinate_transformation_mode 'half_pixel_symmetric' needs opset 19");
    p.nearest_mode = ctx.attr_string("nearest_mode");
    if (p.nearest_mode != "round_prefer_floor" && p.nearest_mode != "round_prefer_ceil" && p.nearest_mode != "floor" &&
        p.nearest_mode != "ceil")
      ctx.fail("unknown nearest_mode '" + p.nearest_mode + "'");
    p.cubic_a = ctx.attr_float("cubic_coeff_a");
    p.exclude_outside = ctx.attr_int("exclude_outside") != 0;
    p.extrapolation = ctx.attr_float("extrapolation_value");
    p.antialias = attr_int_or(ctx, "antialias", 0) != 0;
  }

  std::optional<std::vector<double>> scales;
  std::optional<std::vector<int64_t>> sizes;
  std::vector<double> roi;
  if (upsample && ctx.opset() < 9) {
    const auto& f = ctx.attr_floats("scales");
    scales = std::vector<double>(f.begin(), f.end());
  } else {
    const size_t si = p.legacy ? 1 : 2;
    if (ctx.has_input(si) && ctx.input(si).numel() > 0) {
      if (!dtype_is_float(ctx.input(si).dtype())) ctx.fail("scales must be a float tensor");
      scales = ctx.input(si).to_double_vector();
    }
    if (!p.legacy && ctx.has_input(3) && ctx.input(3).numel() > 0) sizes = input_ints(ctx, 3);
    if (!p.legacy && ctx.has_input(1) && ctx.input(1).numel() > 0) roi = ctx.input(1).to_double_vector();
  }
  if (scales && sizes) ctx.fail("only one of scales and sizes may be given");
  const ResizeGeometry g = resize_geometry(ctx, x.shape(), scales, sizes);

  // roi: [start_0.., end_0..] over the resized axes; defaults to the whole input.
  const std::vector<int64_t> axes = resize_axes(ctx, rank);
  std::vector<double> roi_start(rank, 0.0), roi_end(rank, 1.0);
  if (p.coord == "tf_crop_and_resize") {
    if (roi.size() != 2 * axes.size())
      ctx.fail("roi has " + std::to_string(roi.size()) + " values, expected " + std::to_string(2 * axes.size()));
    for (size_t i = 0; i < axes.size(); ++i) {
      roi_start[axes[i]] = roi[i];
      roi_end[axes[i]] = roi[axes.size() + i];
    }
  }

  std::vector<int64_t> cur_shape = x.shape();
  std::vector<double> cur = x.to_double_vector();
  for (int64_t a = 0; a < rank; ++a) {
    if (std::find(axes.begin(), axes.end(), a) == axes.end()) continue;
    const int64_t in = cur_shape[a], out = g.out[a];
    if (in == 0 || out == 0) {
      cur_shape[a] = out;
      cur.assign(static_cast<size_t>(shape_numel(cur_shape)), 0.0);
      continue;
    }
    const AxisPlan plan = plan_axis(ctx, p, in, out, g.scale[a], roi_start[a], roi_end[a]);
    if (plan.identity) continue;
    const int64_t outer = product(cur_shape, 0, a), inner = product(cur_shape, a + 1, cur_shape.size());
    std::vector<double> next(static_cast<size_t>(outer * out * inner));
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < out; ++j) {
        double* dst = next.data() + (o * out + j) * inner;
        if (plan.outside[j]) {
          std::fill(dst, dst + inner, p.extrapolation);
          continue;
        }
        for (const Tap& t : plan.taps[j]) {
          if (t.weight == 0) continue;
          const double* src = cur.data() + (o * in + t.index) * inner;
          for (int64_t i = 0; i < inner; ++i) dst[i] += t.weight * src[i];
        }
      }
    cur.swap(next);
    cur_shape[a] = out;
  }

  Tensor& y = ctx.allocate_output(0, x.dtype(), g.out);
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* out = y.mutable_data<T>();
    for (size_t i = 0; i < cur.size(); ++i) {
      if constexpr (std::is_integral_v<T>) {
        // Truncate like the reference's astype, saturating instead of overflowing.
        double v = cur[i];
        if (std::isnan(v)) v = 0;
        v = std::clamp(v, static_cast<double>(std::numeric_limits<T>::lowest()),
                       static_cast<double>(std::numeric_limits<T>::max()));
        out[i] = static_cast<T>(v);
      } else {
        out[i] = static_cast<T>(static_cast<compute_t<T>>(cur[i]));
      }
    }
  });
}

}  // namespace

void register_resize_kernels(KernelRegistry& r) {
  r.add("", "Resize", resize_kernel);
  r.add("", "Upsample", resize_kernel);
}

}  // namespace kiln::reference
