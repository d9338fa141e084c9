// Plugin libraries that fail to load, for the loader's error tests: BAD_PLUGIN_FAIL_STATUS
// returns 1, BAD_PLUGIN_DUPLICATE registers one op twice, BAD_PLUGIN_ABI_MISMATCH claims another ABI.
#include <memory>

#include "kiln/plugin.h"

namespace {
class Identity final : public kiln::IPluginCreator {
 public:
  const char* getPluginName() const noexcept override { return "BadIdentity"; }
  const char* getPluginNamespace() const noexcept override { return "kiln.test.bad"; }
  bool getOutputDescs(const std::vector<kiln::PluginTensorDesc>& in, const kiln::Attributes&,
                      std::vector<kiln::PluginTensorDesc>& out, std::string&) const override {
    out[0] = in[0];
    return true;
  }
  std::unique_ptr<kiln::IPluginKernel> createPlugin(const kiln::Attributes&, const std::vector<kiln::PluginTensorDesc>&,
                                                    const std::vector<kiln::PluginTensorDesc>&) const override {
    return nullptr;
  }
};
}  // namespace

#ifdef BAD_PLUGIN_ABI_MISMATCH
KILN_PLUGIN_EXPORT int kilnPluginAbiVersion() { return KILN_PLUGIN_ABI_VERSION + 1000; }
#else
KILN_PLUGIN_DEFINE_ABI_VERSION()
#endif

KILN_PLUGIN_EXPORT int kilnRegisterPlugins(kiln::IPluginRegistry* registry) {
  registry->registerCreator(std::make_shared<Identity>());
#if defined(BAD_PLUGIN_FAIL_STATUS)
  return 1;
#elif defined(BAD_PLUGIN_DUPLICATE)
  registry->registerCreator(std::make_shared<Identity>());
  return 0;
#else
  return 0;
#endif
}
