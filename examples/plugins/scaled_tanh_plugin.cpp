// An example Kiln plugin library (see docs/api.md): a custom op kiln.example::ScaledTanh computing
// alpha * tanh(beta * x), and a replacement for the built-in ai.onnx Relu that counts its runs (the
// count is read through kilnExampleReluCalls(), to show the plugin ran instead of Kiln's kernel).
#include <atomic>
#include <cmath>
#include <memory>

#include "kiln/plugin.h"

namespace {

std::atomic<long> g_relu_calls{0};
std::atomic<long> g_scaled_tanh_calls{0};

// Float tensors in, one float tensor of the same shape out: the shape rule both ops share.
bool same_float_shape(const std::vector<kiln::PluginTensorDesc>& in, std::vector<kiln::PluginTensorDesc>& out,
                      std::string& error) {
  if (in.size() != 1 || in[0].type != kiln::DataType::kFLOAT) {
    error = "takes one kFLOAT input";
    return false;
  }
  out[0] = in[0];
  return true;
}

class ScaledTanhKernel final : public kiln::IPluginKernel {
 public:
  ScaledTanhKernel(float alpha, float beta, int64_t n) : alpha_(alpha), beta_(beta), n_(n) {}
  int32_t enqueue(const void* const* inputs, void* const* outputs, void* /*workspace*/) noexcept override {
    const float* x = static_cast<const float*>(inputs[0]);
    float* y = static_cast<float*>(outputs[0]);
    for (int64_t i = 0; i < n_; ++i) y[i] = alpha_ * std::tanh(beta_ * x[i]);
    g_scaled_tanh_calls.fetch_add(1, std::memory_order_relaxed);
    return 0;
  }

 private:
  float alpha_, beta_;
  int64_t n_;
};

class ScaledTanhCreator final : public kiln::IPluginCreator {
 public:
  const char* getPluginName() const noexcept override { return "ScaledTanh"; }
  const char* getPluginNamespace() const noexcept override { return "kiln.example"; }
  int32_t getPluginVersion() const noexcept override { return 1; }
  std::vector<kiln::PluginField> getFields() const override {
    return {{"alpha", kiln::AttrValue::Type::kFLOAT, kiln::AttrValue(1.0f)},
            {"beta", kiln::AttrValue::Type::kFLOAT, kiln::AttrValue(1.0f)}};
  }
  bool getOutputDescs(const std::vector<kiln::PluginTensorDesc>& inputs, const kiln::Attributes& /*attributes*/,
                      std::vector<kiln::PluginTensorDesc>& outputs, std::string& error) const override {
    return same_float_shape(inputs, outputs, error);
  }
  std::unique_ptr<kiln::IPluginKernel> createPlugin(const kiln::Attributes& attributes,
                                                    const std::vector<kiln::PluginTensorDesc>& inputs,
                                                    const std::vector<kiln::PluginTensorDesc>& /*outputs*/) const override {
    // Missing attributes arrive with the defaults declared in getFields().
    return std::make_unique<ScaledTanhKernel>(attributes.at("alpha").asFloat(), attributes.at("beta").asFloat(),
                                              inputs[0].dims.volume());
  }
};

class ReluKernel final : public kiln::IPluginKernel {
 public:
  explicit ReluKernel(int64_t n) : n_(n) {}
  int32_t enqueue(const void* const* inputs, void* const* outputs, void* /*workspace*/) noexcept override {
    const float* x = static_cast<const float*>(inputs[0]);
    float* y = static_cast<float*>(outputs[0]);
    for (int64_t i = 0; i < n_; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
    g_relu_calls.fetch_add(1, std::memory_order_relaxed);
    return 0;
  }

 private:
  int64_t n_;
};

// Namespace "" makes it ai.onnx Relu: Kiln keeps the op's schema and runs this kernel instead of
// its own wherever the plugin takes the inputs (float only here).
class ReluCreator final : public kiln::IPluginCreator {
 public:
  const char* getPluginName() const noexcept override { return "Relu"; }
  bool getOutputDescs(const std::vector<kiln::PluginTensorDesc>& inputs, const kiln::Attributes& /*attributes*/,
                      std::vector<kiln::PluginTensorDesc>& outputs, std::string& error) const override {
    return same_float_shape(inputs, outputs, error);
  }
  std::unique_ptr<kiln::IPluginKernel> createPlugin(const kiln::Attributes& /*attributes*/,
                                                    const std::vector<kiln::PluginTensorDesc>& inputs,
                                                    const std::vector<kiln::PluginTensorDesc>& /*outputs*/) const override {
    return std::make_unique<ReluKernel>(inputs[0].dims.volume());
  }
};

}  // namespace

KILN_PLUGIN_DEFINE_ABI_VERSION()

KILN_PLUGIN_EXPORT int kilnRegisterPlugins(kiln::IPluginRegistry* registry) {
  if (!registry->registerCreator(std::make_shared<ScaledTanhCreator>())) return 1;
  if (!registry->registerCreator(std::make_shared<ReluCreator>())) return 1;
  return 0;
}

// Run counters, for tests and demos.
KILN_PLUGIN_EXPORT long kilnExampleReluCalls() { return g_relu_calls.load(); }
KILN_PLUGIN_EXPORT long kilnExampleScaledTanhCalls() { return g_scaled_tanh_calls.load(); }
