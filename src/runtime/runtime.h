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

  // How a batch of these shapes runs (runtime/batch_split.h): as one program over every thread, or
  // as sub-batches of `sub` samples (axis 0 of every input), each on a one-thread program, the
  // threads taking the next sub-batch as they finish. Splitting needs 2+ threads, a batch of 2+,
  // and a graph that keeps the samples apart; `why` says which was missing. Cached per shapes;
  // throws for shapes the engine refuses (as program_for).
  struct BatchPlan {
    int64_t batch = 0;  // axis 0 of the inputs
    int64_t sub = 0;    // samples per sub-batch; 0: not split
    std::string why;    // when not split
    bool split() const { return sub > 0; }
  };
  const BatchPlan& batch_plan(const cpu::ShapeMap& shapes) const;
  // On by default. Off: every batch runs as one program. Set it before the first run (plans are
  // cached).
  void set_batch_split(bool on) { split_enabled_ = on; }
  bool batch_split_enabled() const { return split_enabled_; }
  // A sub-batch's program: these shapes at `threads` threads. Skips the profile check (a sub-batch
  // is an internal piece of a batch the profiles admitted); the model's declared dims still hold.
  std::shared_ptr<const cpu::Program> program_at(const cpu::ShapeMap& shapes, int threads) const;

 private:
  Model model_;
  EngineInfo info_;
  int threads_;
  bool split_enabled_ = true;
  mutable std::mutex mu_;
  mutable std::map<std::pair<cpu::ShapeMap, int>, std::shared_ptr<const cpu::Program>> programs_;
  mutable std::mutex plan_mu_;
  mutable std::map<cpu::ShapeMap, std::unique_ptr<BatchPlan>> plans_;
};

class Context {
 public:
  explicit Context(std::shared_ptr<const EngineRuntime> engine);

  // Validates names, dtypes and shapes, runs, and returns the outputs (plain, dense).
  reference::TensorMap run(const reference::TensorMap& inputs, std::vector<double>* step_ms = nullptr);
  // The program used by the last run (for profiles and inspect): a sub-batch's when it was split.
  const cpu::Program* last_program() const { return program_.get(); }
  // The plan of the last run (EngineRuntime::batch_plan), or nullptr before any run.
  const EngineRuntime::BatchPlan* last_plan() const { return plan_; }

 private:
  reference::TensorMap run_split(const reference::TensorMap& inputs, const cpu::ShapeMap& shapes,
                                 const EngineRuntime::BatchPlan& plan);

  struct Scratch {
    Tensor arena, scratch;
    void fit(const cpu::Program& p);
  };
  std::shared_ptr<const EngineRuntime> engine_;
  std::shared_ptr<const cpu::Program> program_;
  cpu::ShapeMap shapes_;
  Scratch own_;  // whole-batch runs
  const EngineRuntime::BatchPlan* plan_ = nullptr;
  cpu::ShapeMap plan_shapes_;  // the shapes plan_ is for (looked up again only when they change)
  std::vector<Scratch> workers_;  // split runs: one per thread
};

}  // namespace kiln
