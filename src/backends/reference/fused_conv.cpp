// Reference kernel of kiln::FusedConv: the registered Conv kernel, then the residual add and the
// activation, each rounded to the storage type as the unfused ops would be.
#include <algorithm>
#include <cmath>
#include <numbers>
#include <utility>

#include "backends/reference/kernel.h"

namespace kiln::reference {

namespace {

// Conv's attributes, copied onto the synthetic Conv node so that the Conv kernel sees them.
constexpr const char* kConvAttrs[] = {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"};

// Runs the "Conv" reference kernel on X, W and B with this node's convolution attributes.
Tensor run_conv(const KernelContext& ctx) {
  const OpSchema* schema = OpRegistry::global().find("", "Conv", 11);
  KernelFn conv = KernelRegistry::global().find("", "Conv");
  if (!schema || !conv) ctx.fail("the Conv reference kernel is not registered");
  Node node;
  node.name = ctx.node().name;  // errors from the Conv kernel then name the fused node
  node.op_type = "Conv";
  node.inputs = {"X", "W"};
  std::vector<const Tensor*> inputs = {&ctx.input(0), &ctx.input(1)};
  if (ctx.has_input(2)) {
    node.inputs.push_back("B");
    inputs.push_back(&ctx.input(2));
  }
  node.outputs = {"Y"};
  for (const char* a : kConvAttrs)
    if (const Attribute* v = ctx.node().attr(a)) node.attrs[a] = *v;
  KernelContext conv_ctx(node, *schema, 11, std::move(inputs));
  conv(conv_ctx);
  return std::move(conv_ctx.outputs()[0]);
}

enum class Act { kNone, kRelu, kClip, kSigmoid, kSiLU, kHardSwish, kHardSigmoid, kLeakyRelu, kGelu, kGeluTanh, kTanh };

constexpr std::pair<const char*, Act> kActNames[] = {{"", Act::kNone},
                                                     {"Relu", Act::kRelu},
                                                     {"Clip", Act::kClip},
                                                     {"Sigmoid", Act::kSigmoid},
                                                     {"SiLU", Act::kSiLU},
                                                     {"HardSwish", Act::kHardSwish},
                                                     {"HardSigmoid", Act::kHardSigmoid},
                                                     {"LeakyRelu", Act::kLeakyRelu},
                                                     {"Gelu", Act::kGelu},
                                                     {"GeluTanh", Act::kGeluTanh},
                                                     {"Tanh", Act::kTanh}};

// The activation of one element in the compute type C, with the same formulas as the standalone
// reference kernels so that f32 results match the unfused graph exactly. SiLU is x * Sigmoid(x)
// with the sigmoid rounded to the storage type T first, as the unfused Sigmoid node stores it.
template <typename T, typename C = compute_t<T>>
C activate(Act act, C x, C p0, C p1) {
  switch (act) {
    case Act::kNone:
      return x;
    case Act::kRelu:
      return x > C(0) ? x : C(0);
    case Act::kClip:
      // Same order as Clip's kernel: with min > max every element becomes max.
      if (x < p0) x = p0;
      if (x > p1) x = p1;
      return x;
    case Act::kSigmoid:
      return C(1) / (C(1) + std::exp(-x));
    case Act::kSiLU:
      return x * static_cast<C>(static_cast<T>(C(1) / (C(1) + std::exp(-x))));
    case Act::kHardSwish:
      return x * std::max(C(0), std::min(C(1), x / C(6) + C(0.5)));
    case Act::kHardSigmoid:
      return std::max(C(0), std::min(C(1), p0 * x + p1));
    case Act::kLeakyRelu:
      return x < C(0) ? p0 * x : x;
    case Act::kGelu:
      return C(0.5) * x * (C(1) + std::erf(x / static_cast<C>(std::numbers::sqrt2)));
    case Act::kGeluTanh: {
      const C k = static_cast<C>(std::sqrt(2.0 / std::numbers::pi));
      return C(0.5) * x * (C(1) + std::tanh(k * (x + C(0.044715) * x * x * x)));
    }
    case Act::kTanh:
      return std::tanh(x);
  }
  return x;
}

void fused_conv_kernel(KernelContext& ctx) {
  const std::string& name = ctx.attr_string("activation");
  const std::vector<float>& params = ctx.attr_floats("activation_params");
  const auto* found =
      std::find_if(std::begin(kActNames), std::end(kActNames), [&](const auto& e) { return name == e.first; });
  if (found == std::end(kActNames)) ctx.fail("unknown activation \"" + name + "\"");
  const Act act = found->second;
  if (act == Act::kClip && params.size() != 2) ctx.fail("Clip takes activation_params [min, max]");

  Tensor y = run_conv(ctx);
  const Tensor* z = ctx.has_input(3) ? &ctx.input(3) : nullptr;
  if (z && (z->dtype() != y.dtype() || z->shape() != y.shape()))
    ctx.fail("Z is " + std::string(dtype_name(z->dtype())) + " " + shape_to_string(z->shape()) + ", expected " +
             std::string(dtype_name(y.dtype())) + " " + shape_to_string(y.shape()) + " like the convolution's output");

  dispatch_float(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    // Defaults of LeakyRelu (alpha 0.01) and HardSigmoid (alpha 0.2, beta 0.5) when no params are given.
    C p0 = 0, p1 = 0;
    if (act == Act::kClip) {
      p0 = static_cast<C>(params[0]);
      p1 = static_cast<C>(params[1]);
    } else if (act == Act::kLeakyRelu) {
      p0 = static_cast<C>(params.empty() ? 0.01f : params[0]);
    } else if (act == Act::kHardSigmoid) {
      p0 = static_cast<C>(params.size() == 2 ? params[0] : 0.2f);
      p1 = static_cast<C>(params.size() == 2 ? params[1] : 0.5f);
    }
    T* py = y.mutable_data<T>();
    const T* pz = z ? z->data<T>() : nullptr;
    for (int64_t i = 0; i < y.numel(); ++i) {
      // Each step is rounded to T, as the separate Add and activation nodes would store it.
      T v = py[i];
      if (pz) v = static_cast<T>(static_cast<C>(v) + static_cast<C>(pz[i]));
      if (act != Act::kNone) v = static_cast<T>(activate<T>(act, static_cast<C>(v), p0, p1));
      py[i] = v;
    }
  });
  ctx.set_output(0, std::move(y));
}

}  // namespace

void register_fused_conv_kernels(KernelRegistry& r) { r.add("kiln", "FusedConv", fused_conv_kernel); }

}  // namespace kiln::reference
