// A CPU program: an optimized graph compiled for one set of concrete input shapes into a list of
// kernel steps over one activation arena.
//
// Compiling does, in order:
//   1. type inference at the concrete shapes, and folding of everything that became constant
//      (Shape chains of dynamic models);
//   2. per node, in topological order: the candidate tactics (TacticRegistry, then the reference
//      fallback) that support it; the fastest one, timed at these shapes (or looked up in the
//      timing cache, or forced by an engine file); the layout reorders its inputs need;
//   3. buffer assignment: graph inputs and outputs are the caller's buffers, constants are the
//      weights, aliasing ops (Reshape...) share their input's buffer, and every other activation
//      gets an offset in the arena from the memory planner.
// A program is immutable once compiled; run() may be called concurrently with different arenas.
#pragma once
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backends/cpu/cpu_kernel.h"
#include "backends/cpu/memory_planner.h"
#include "backends/cpu/timing_cache.h"

namespace kiln::cpu {

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

struct CompileOptions {
  int threads = 0;                        // 0: default_threads()
  bool time_tactics = true;               // time the candidates; false: the first supporting one wins
  TimingCache* timing_cache = nullptr;    // consulted before timing and filled after
  // Tactic per node index of the graph (from an engine file). A forced tactic that no longer
  // supports the node falls back to normal selection, with a log line.
  const std::vector<std::string>* forced_tactics = nullptr;
  size_t workspace_bytes = 0;             // tactics needing more scratch than this are skipped (0: no limit)
  double timing_min_ms = 2.0;             // time each candidate for at least this long...
  int timing_max_iterations = 50;         // ...or this many runs, whichever comes first
  std::function<void(size_t done, size_t total)> progress;  // called after each node
  std::vector<std::string>* log = nullptr;                  // verbose build log lines
};

struct StepInfo {
  std::string name;          // node name, or "reorder <value>"
  std::string op;            // "FusedConv", "Reorder", "Copy"
  int node_index = -1;       // index in the graph; -1 for inserted steps
  std::string tactic;        // stable tactic name
  std::string impl;          // CpuKernel::describe()
  std::vector<std::string> fused_ops;  // what the node fused (its "fused_ops" attribute)
  std::string output_layouts;          // "channels_last", ...
  double timed_ms = -1;      // the winning time when timed at build (or from the cache)
};

class Program {
 public:
  // Throws kUnsupported when a value's shape cannot be made concrete (data-dependent shapes) or a
  // node has no tactic; kInvalidArgument when input_shapes do not fit the graph.
  static std::shared_ptr<const Program> compile(const Model& model, const ShapeMap& input_shapes,
                                                const CompileOptions& options = {});

  const std::vector<StepInfo>& steps() const { return steps_; }
  // The tactic chosen for each node of the graph ("" for nodes folded away at these shapes).
  const std::vector<std::string>& node_tactics() const { return node_tactics_; }
  // ISA features the chosen kernels need.
  const std::vector<std::string>& required_isa() const { return required_isa_; }

  const std::vector<ValueInfo>& inputs() const { return inputs_; }    // graph inputs, plain
  const std::vector<ValueInfo>& outputs() const { return outputs_; }  // graph outputs, plain
  size_t arena_bytes() const { return plan_.arena_bytes; }            // peak activation memory
  size_t activation_bytes_total() const { return plan_.total_bytes; } // sum of all activations
  size_t scratch_bytes() const { return scratch_bytes_; }
  int threads() const { return threads_; }
  size_t kernel_count() const;  // steps that run a kernel (aliases and folded nodes excluded)

  // Runs the program. `arena` has arena_bytes() and `scratch` scratch_bytes() (64-byte aligned);
  // inputs/outputs are dense plain buffers in inputs()/outputs() order. When step_ms is given it
  // receives each step's wall time. Sets the calling thread's OpenMP thread count.
  void run(void* arena, void* scratch, const std::vector<const void*>& inputs, const std::vector<void*>& outputs,
           std::vector<double>* step_ms = nullptr) const;

 private:
  Program() = default;
  struct Slot {  // where a value's bytes are at run time
    enum Kind : uint8_t { kArena, kInput, kOutput, kConstant, kNone } kind = kNone;
    size_t index = 0;  // arena offset, input/output index, or constant index
  };
  struct Step {
    std::unique_ptr<CpuKernel> kernel;
    std::vector<Slot> inputs, outputs;
  };
  void* resolve(const Slot& s, char* arena, const std::vector<const void*>& in,
                const std::vector<void*>& out) const;

  int threads_ = 1;
  std::vector<Step> run_steps_;
  std::vector<StepInfo> steps_;
  std::vector<std::string> node_tactics_;
  std::vector<std::string> required_isa_;
  std::vector<ValueInfo> inputs_, outputs_;
  std::deque<Tensor> constants_;  // stable addresses: configs point at them
  std::vector<std::unique_ptr<Node>> nodes_;  // nodes the kernels' configs point to
  MemoryPlan plan_;
  size_t scratch_bytes_ = 0;
  friend class ProgramBuilder;
};

}  // namespace kiln::cpu
