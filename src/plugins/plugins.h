// Plugin glue: turns a public IPluginCreator into an op schema, a reference kernel and a CPU tactic
// registered with Kiln's tables, and the build/load helpers that keep engines honest about the
// plugins they need. Used by the public API (src/api) and the kiln tool.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kiln/plugin.h"
#include "runtime/builder.h"

namespace kiln::plugins {

struct PluginEntry {
  std::shared_ptr<IPluginCreator> creator;
  std::string domain;  // canonical: "" for ai.onnx
  std::string name;
  int version = 1;
  int nb_inputs = 1;   // -1: any number
  int nb_outputs = 1;
  std::vector<PluginField> fields;
  std::string library;          // the shared library it came from; "" when registered in-process
  std::string tactic;           // "plugin:<domain>::<name>:<version>"
  bool replaces_builtin = false;  // the op has a built-in schema: the plugin only provides kernels

  std::string op_label() const { return (domain.empty() ? std::string("ai.onnx") : domain) + "::" + name; }
};

// "plugin:<domain>::<name>:<version>", with "ai.onnx" for the default domain.
std::string tactic_name(const std::string& domain, const std::string& name, int version);
bool is_plugin_tactic(const std::string& tactic);

// Reads and checks what a creator declares. Throws kInvalidArgument naming the problem.
PluginEntry describe_creator(std::shared_ptr<IPluginCreator> creator, const std::string& library);
// Throws kInvalidArgument when a plugin for the same domain and op is already registered.
void check_not_registered(const PluginEntry& entry);
// Adds the schema (unless the op is built in), the reference kernel (idem) and the tactic (first).
void register_plugin(PluginEntry entry);
// The plugin providing an op, or nullptr.
const PluginEntry* find_plugin(const std::string& domain, const std::string& op);
std::vector<const PluginEntry*> all_plugins();

// ---- Build and load helpers. build_engine() (src/runtime/builder.cpp) applies the first two to
// every build, whichever front end (API, kiln build, kiln run) starts it.

// Before build_engine: when the model uses a built-in op a plugin replaces, turns off the passes
// that could fuse it away (the plugin would then never run). Returns one line per change made.
std::vector<std::string> adapt_build_config(const Model& model, BuildConfig& config);
// After build_engine: records the plugin's tactic for every node of a plugin op, whatever won the
// timing (the reference tactic runs the same plugin), so the engine names the plugin it needs.
void pin_plugin_tactics(BuildResult& result);
// The plugin tactics an engine's bytes name that are not registered now, for error messages
// ("plugin:kiln.example::ScaledTanh:1"). Scans the engine's description, never throws.
std::vector<std::string> missing_plugin_tactics(std::span<const uint8_t> engine_bytes);
// A sentence telling which plugins to load, or "" when `tactics` is empty.
std::string missing_plugins_advice(const std::vector<std::string>& tactics);

// ---- Conversions between the public types and the IR's.

DataType to_public(DType dt);  // throws kUnsupported for dtypes the API has no name for
DType to_internal(DataType dt);  // throws kInvalidArgument for an unknown value
Dims to_dims(const std::vector<int64_t>& dims);  // throws kUnsupported above Dims::MAX_DIMS
std::vector<int64_t> from_dims(const Dims& dims);
// A public attribute as the IR's; and back (kinds the API lacks, tensors or graphs, give nullopt).
Attribute to_internal(const AttrValue& v);
std::optional<AttrValue> to_public(const Attribute& a);

}  // namespace kiln::plugins
