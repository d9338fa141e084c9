// The engine runtime: an optimized graph with its chosen tactics, compiled into CPU programs on
// demand (one per set of input shapes, cached and shared), and execution contexts that run them.
//
// An EngineRuntime is shared by every context of an engine (weights are its constants, viewed from
// the engine file's mapping); a Context owns one activation arena and runs on one thread at a time.
// Several contexts run concurrently from different threads.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backends/cpu/program.h"
#include "backends/reference/executor.h"
#include "engine/engine_file.h"

namespace kiln {

class EngineRuntime {
 public:
  // `info` carries the tactics and profiles (from build_engine or an engine file). threads > 0
  // overrides the engine's thread count.
  EngineRuntime(Model optimized, EngineInfo info, int threads = 0);

  const Model& model() const { return model_; }
  const EngineInfo& info() const { return info_; }
  int threads() const { return threads_; }

  // Checks shapes against the declared input types and, when the engine has profiles, that some
  // profile contains them; returns that profile's index (-1 without profiles). Throws
  // kInvalidArgument saying which input is out of which range.
  int check_shapes(const cpu::ShapeMap& shapes) const;
  // The program for these input shapes (compiled with the engine's tactics on first use).
  std::shared_ptr<const cpu::Program> program_for(const cpu::ShapeMap& shapes) const;
  // Seeds the program cache (the builder's program at the opt shapes).
  void add_program(const cpu::ShapeMap& shapes, std::shared_ptr<const cpu::Program> program);

 private:
  Model model_;
  EngineInfo info_;
  int threads_;
  mutable std::mutex mu_;
  mutable std::map<cpu::ShapeMap, std::shared_ptr<const cpu::Program>> programs_;
};

class Context {
 public:
  explicit Context(std::shared_ptr<const EngineRuntime> engine);

  // Validates names, dtypes and shapes, runs, and returns the outputs (plain, dense).
  reference::TensorMap run(const reference::TensorMap& inputs, std::vector<double>* step_ms = nullptr);
  // The program used by the last run (for profiles and inspect).
  const cpu::Program* last_program() const { return program_.get(); }

 private:
  std::shared_ptr<const EngineRuntime> engine_;
  std::shared_ptr<const cpu::Program> program_;
  cpu::ShapeMap shapes_;
  Tensor arena_, scratch_;
};

}  // namespace kiln
