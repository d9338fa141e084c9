// The public API's private parts shared between its files: the network's model and the loaded
// engine's runtime.
#pragma once
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "kiln/kiln.h"
#include "runtime/runtime.h"

namespace kiln {

namespace api {
// Logs one message; long multi-line messages stay one call.
inline void log(ILogger* logger, ILogger::Severity s, const std::string& msg) {
  if (logger) logger->log(s, msg.c_str());
}
inline void error(ILogger* logger, const std::string& msg) { log(logger, ILogger::Severity::kERROR, msg); }
}  // namespace api

struct NetworkDefinition::Impl {
  ILogger* logger = nullptr;
  Model model;
  int nodes_added = 0;
};

struct BuilderConfig::Impl {
  ILogger* logger = nullptr;
  std::set<BuilderFlag> flags;
  size_t workspace = 0;
  std::vector<IOptimizationProfile> profiles;
  int opt_level = 3;
  std::string timing_cache;
  int threads = 0;
  IInt8Calibrator* calibrator = nullptr;       // not owned
  std::map<std::string, DataType> layer_precision;  // by node name
  double accuracy_budget = -1;                 // < 0: off
};

struct Engine::Impl {
  ILogger* logger = nullptr;
  std::shared_ptr<const EngineRuntime> runtime;
  std::vector<std::string> io_names;  // inputs, then outputs
  size_t nb_inputs = 0;
};

struct ApiAccess {
  static NetworkDefinition::Impl& impl(NetworkDefinition& n) { return *n.impl_; }
  static const NetworkDefinition::Impl& impl(const NetworkDefinition& n) { return *n.impl_; }
  static BuilderConfig::Impl& impl(BuilderConfig& c) { return *c.impl_; }
  static Engine::Impl& impl(Engine& e) { return *e.impl_; }
  static std::shared_ptr<Engine> make_engine(std::shared_ptr<Engine::Impl> impl) {
    return std::shared_ptr<Engine>(new Engine(std::move(impl)));
  }
};

}  // namespace kiln
