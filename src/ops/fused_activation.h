// The activation attribute shared by the fused ops (kiln::FusedConv, kiln::FusedMatMul): each op
// lists the activations it accepts and how many activation_params each takes.
#pragma once
#include <array>
#include <span>
#include <string>
#include <string_view>

#include "ops/op_schema.h"

namespace kiln {

struct ActivationSpec {
  std::string_view name;
  size_t min_params, max_params;
};

// Fails with the node's context unless its "activation" is one of `allowed` and its
// "activation_params" count fits (HardSigmoid takes alpha and beta together, or nothing).
inline void check_activation(const InferContext& ctx, std::span<const ActivationSpec> allowed) {
  const std::string& act = ctx.attr_string("activation");
  const size_t params = ctx.attr_floats("activation_params").size();
  for (const auto& spec : allowed) {
    if (spec.name != act) continue;
    if (params < spec.min_params || params > spec.max_params || (act == "HardSigmoid" && params == 1))
      ctx.fail("activation \"" + act + "\" takes " +
               (spec.min_params == spec.max_params
                    ? std::to_string(spec.min_params)
                    : std::to_string(spec.min_params) + " or " + std::to_string(spec.max_params)) +
               " activation_params, got " + std::to_string(params));
    return;
  }
  ctx.fail("unknown activation \"" + act + "\"");
}

// Activations FusedConv and QConv apply after the residual add, with the number of activation_params each
// accepts (Clip: exactly min,max; LeakyRelu: alpha or nothing; HardSigmoid: alpha,beta or nothing).
inline constexpr std::array<ActivationSpec, 11> kConvActivations = {{{"", 0, 0},
                                                          {"Relu", 0, 0},
                                                          {"Clip", 2, 2},
                                                          {"Sigmoid", 0, 0},
                                                          {"SiLU", 0, 0},
                                                          {"HardSwish", 0, 0},
                                                          {"HardSigmoid", 0, 2},
                                                          {"LeakyRelu", 0, 1},
                                                          {"Gelu", 0, 0},
                                                          {"GeluTanh", 0, 0},
                                                          {"Tanh", 0, 0}}};

}  // namespace kiln
