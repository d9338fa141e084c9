// Kiln plugins: custom ops (or replacements for built-in ones) implemented in a shared library.
//
// A plugin library defines one IPluginCreator per op and exports
//
//   extern "C" int kilnRegisterPlugins(kiln::IPluginRegistry* registry);
//
// which calls registry->registerCreator(...) for each and returns 0 (anything else is a failure,
// and nothing of the library is registered). loadPluginLibrary(path) dlopens the library and calls
// it. Each creator then provides, for its (namespace, name): an op schema (version = the plugin's
// version, type inference through getOutputDescs), a reference kernel (so the reference executor
// and constant folding run it) and a CPU tactic named "plugin:<namespace>::<name>:<version>"
// ("ai.onnx" for the empty namespace), preferred over every built-in kernel of that op.
//
// ABI: the interface is C++ (std::string, std::vector, std::shared_ptr, virtual calls), so a
// plugin must be built with the same compiler and standard library, and against the same Kiln
// version, as the program that loads it. KILN_PLUGIN_DEFINE_ABI_VERSION() records the version the
// library was built against; a library built against another ABI version is refused.
//
// Engines store tactics by name: an engine built with a plugin needs that plugin loaded (same
// namespace, name and version) before it is deserialized; otherwise loading fails with an error
// naming the missing "plugin:..." tactic.
//
// Registration changes process-wide tables: load plugins at startup, before other threads build or
// run engines.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/kiln.h"

// Bumped whenever a class in this header changes layout or virtual functions.
#define KILN_PLUGIN_ABI_VERSION 1

namespace kiln {

// A tensor as a plugin sees it: dense, row-major, of this type and shape. While types are being
// inferred (building), dims may hold -1 for sizes not known yet; createPlugin always gets concrete
// shapes. An omitted optional input has nbDims == -1 (and a nullptr buffer).
struct PluginTensorDesc {
  DataType type = DataType::kFLOAT;
  Dims dims;
};

// An attribute the op takes. Missing attributes get their default before the plugin sees them;
// a missing required one fails the model check. Attributes not declared are passed through as given.
struct PluginField {
  std::string name;
  AttrValue::Type type = AttrValue::Type::kFLOAT;
  std::optional<AttrValue> defaultValue;
  bool required = false;
};

// A kernel for one node at concrete shapes (made once when the engine's program is compiled).
class IPluginKernel {
 public:
  virtual ~IPluginKernel() = default;
  // Scratch bytes enqueue() needs (64-byte aligned, not preserved between calls).
  virtual size_t getWorkspaceSize() const noexcept { return 0; }
  // Computes the outputs. inputs[i]/outputs[i] are dense row-major buffers of the descs given to
  // createPlugin (inputs[i] is nullptr for an omitted optional input). Returns 0 on success; any
  // other value fails the run. Several execution contexts may call it concurrently on different
  // buffers: keep per-call state in the workspace, never in the kernel object.
  virtual int32_t enqueue(const void* const* inputs, void* const* outputs, void* workspace) noexcept = 0;
};

class IPluginCreator {
 public:
  virtual ~IPluginCreator() = default;
  // The op type nodes use ("ScaledTanh").
  virtual const char* getPluginName() const noexcept = 0;
  // The ONNX domain of the op ("com.example"). "" (ai.onnx) provides or replaces a standard op.
  virtual const char* getPluginNamespace() const noexcept { return ""; }
  // >= 1. For a new domain it is also the lowest opset of that domain the op exists at.
  virtual int32_t getPluginVersion() const noexcept { return 1; }
  // Number of inputs (-1: any number); number of outputs (>= 1).
  virtual int32_t getNbInputs() const noexcept { return 1; }
  virtual int32_t getNbOutputs() const noexcept { return 1; }
  // The attributes it takes, with defaults.
  virtual std::vector<PluginField> getFields() const { return {}; }
  // Output types: fill outputs (already sized getNbOutputs()) from the inputs and attributes.
  // Return false with `error` set when the op cannot take these inputs (wrong type or rank): the
  // model is then rejected with that message.
  virtual bool getOutputDescs(const std::vector<PluginTensorDesc>& inputs, const Attributes& attributes,
                              std::vector<PluginTensorDesc>& outputs, std::string& error) const = 0;
  // A kernel for concrete shapes. May throw (kiln::Error, std::exception) or return nullptr to fail.
  virtual std::unique_ptr<IPluginKernel> createPlugin(const Attributes& attributes,
                                                      const std::vector<PluginTensorDesc>& inputs,
                                                      const std::vector<PluginTensorDesc>& outputs) const = 0;
};

class IPluginRegistry {
 public:
  // false (with getLastError()) when the name or namespace is empty or malformed, the version is
  // < 1, the output count is < 1, or a plugin with that namespace and name is already registered.
  virtual bool registerCreator(std::shared_ptr<IPluginCreator> creator) noexcept = 0;
  // nullptr when none is registered.
  virtual IPluginCreator* getCreator(const char* name, int32_t version, const char* pluginNamespace = "") const noexcept = 0;
  virtual std::vector<IPluginCreator*> getAllCreators() const = 0;
  virtual const char* getLastError() const noexcept = 0;

 protected:
  virtual ~IPluginRegistry() = default;
};

// The process-wide registry: creators registered here directly (plugins linked into the program)
// take effect at once.
IPluginRegistry& getPluginRegistry() noexcept;

// Loads a plugin library and registers its creators. Loading the same library twice is a no-op.
// Throws kiln::Error naming the library: kIo when it cannot be opened (missing file, unresolved
// symbols), kInvalidArgument when it does not export kilnRegisterPlugins, was built against
// another ABI version, or its registration fails. The one-line API for tools: `--plugin LIB.so`.
void loadPluginLibrary(const std::string& path);
// Same, reporting failure through the logger (kERROR) and the return value.
bool loadPluginLibrary(const std::string& path, ILogger& logger) noexcept;
// Paths of the libraries loaded so far, in load order.
std::vector<std::string> getLoadedPluginLibraries();

}  // namespace kiln

// The entry point a plugin library exports.
using KilnRegisterPluginsFn = int (*)(kiln::IPluginRegistry* registry);
#define KILN_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))
// Put once in a plugin library: lets the loader refuse a library built against another ABI.
#define KILN_PLUGIN_DEFINE_ABI_VERSION() \
  KILN_PLUGIN_EXPORT int kilnPluginAbiVersion() { return KILN_PLUGIN_ABI_VERSION; }
