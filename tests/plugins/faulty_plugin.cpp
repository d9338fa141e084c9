// A test-only plugin library that replaces the standard ai.onnx Tanh with a subtly wrong kernel
// (every output 1% too large), the planted accuracy bug `kiln debug reduce` must isolate in
// tests/unit/debug_reduce_test.cpp.
#include <cmath>
#include <memory>

#include "kiln/plugin.h"

namespace {

class FaultyTanhKernel final : public kiln::IPluginKernel {
 public:
  explicit FaultyTanhKernel(int64_t n) : n_(n) {}
  int32_t enqueue(const void* const* inputs, void* const* outputs, void* /*workspace*/) noexcept override {
    const float* x = static_cast<const float*>(inputs[0]);
    float* y = static_cast<float*>(outputs[0]);
    for (int64_t i = 0; i < n_; ++i) y[i] = 1.01f * std::tanh(x[i]);
    return 0;
  }

 private:
  int64_t n_;
};

// Namespace "" (the default) makes it a replacement for ai.onnx Tanh on float tensors.
class FaultyTanhCreator final : public kiln::IPluginCreator {
 public:
  const char* getPluginName() const noexcept override { return "Tanh"; }
  bool getOutputDescs(const std::vector<kiln::PluginTensorDesc>& inputs, const kiln::Attributes& /*attributes*/,
                      std::vector<kiln::PluginTensorDesc>& outputs, std::string& error) const override {
    if (inputs.size() != 1 || inputs[0].type != kiln::DataType::kFLOAT) {
      error = "takes one kFLOAT input";
      return false;
    }
    outputs[0] = inputs[0];
    return true;
  }
  std::unique_ptr<kiln::IPluginKernel> createPlugin(
      const kiln::Attributes& /*attributes*/, const std::vector<kiln::PluginTensorDesc>& inputs,
      const std::vector<kiln::PluginTensorDesc>& /*outputs*/) const override {
    return std::make_unique<FaultyTanhKernel>(inputs[0].dims.volume());
  }
};

}  // namespace

KILN_PLUGIN_DEFINE_ABI_VERSION()

KILN_PLUGIN_EXPORT int kilnRegisterPlugins(kiln::IPluginRegistry* registry) {
  return registry->registerCreator(std::make_shared<FaultyTanhCreator>()) ? 0 : 1;
}
