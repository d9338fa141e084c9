// GPU instances of a served model (KIND_GPU instance groups).
//
// Placement follows Triton: a KIND_GPU group puts `count` instances on each GPU it lists, or on
// every GPU of the host when it lists none. Per model version and GPU, a GpuModel holds programs
// compiled for a set of batch sizes (GPU programs have static shapes), all sharing one copy of the
// weights on that GPU. Each instance owns one context per program (its own arena, stream, pinned
// staging and CUDA graph, captured while loading). A batch of b rows runs on the program of the
// smallest batch size >= b, with the missing rows zero and the outputs cut back to b rows.
//
// Memory is checked at load: a version that needs more than the GPU has free, or than its
// kiln.memory_budget_bytes, is refused with the sizes, never an out-of-memory error at request time.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backends/gpu/gpu_program.h"
#include "serve/batcher.h"
#include "serve/model_config.h"

namespace kiln::serve {

// Where one instance runs: gpu -1 is the CPU.
struct InstancePlacement {
  std::string group;
  int gpu = -1;
};

// Expands the config's instance groups into instances (Triton's rule above; KIND_AUTO and KIND_CPU
// run on the CPU). `gpu_count` is the host's GPUs; `why_no_gpu` says why there are none. Throws
// kInvalidArgument naming the group for a GPU index the host lacks, or for KIND_GPU without GPUs.
std::vector<InstancePlacement> place_instances(const ModelConfig& c, int gpu_count, const std::string& why_no_gpu);

// The batch sizes a GPU model is compiled for: kiln.build.gpu_batch_size when set, else powers of
// two below max_batch_size, the preferred batch sizes and max_batch_size. {0} for a model without
// a batch dim (max_batch_size 0: one program at the config's shapes).
std::vector<int64_t> gpu_batch_sizes(const ModelConfig& c);

// Counters of one GpuModel, for /metrics.
struct GpuModelStats {
  uint64_t executions = 0;   // batches run
  uint64_t rows = 0;         // rows of requests run
  uint64_t padded_rows = 0;  // zero rows added to reach a compiled batch size
  uint64_t compute_us = 0;   // device time of the compute (CUDA events), summed
  // Input bytes copied to the GPU straight from registered host memory (shared-memory regions),
  // and through the pinned staging buffers.
  uint64_t direct_input_bytes = 0, staged_input_bytes = 0;
};

class GpuModel {
 public:
  // Compiles `model` (the ONNX model, checked against the completed config `c`) on GPU `gpu` for
  // every batch size of gpu_batch_sizes(c). Every input's dims besides the batch dim must be fixed
  // (by the model or the config). Throws kiln::Error (kUnsupported naming the nodes the GPU cannot
  // run, kInvalidArgument for dims that are not fixed or weights that do not fit).
  // With `engine` (a GPU engine file's info, `model` its optimized graph): one program, the engine's,
  // compiled from its recorded tactics (nothing timed). Its batch (dim 0) must hold max_batch_size
  // and its other dims must be the config's; a device the engine cannot run on is refused with the
  // reason (gpu_engine.h).
  GpuModel(const Model& model, const ModelConfig& c, int gpu, const EngineInfo* engine = nullptr);

  int gpu() const { return gpu_; }
  gpu::Device& device() const { return *device_; }
  const std::vector<int64_t>& batch_sizes() const { return batches_; }
  size_t weight_bytes() const { return pool_->bytes(); }
  // Device memory one instance allocates: every program's arena, workspace, inputs and outputs.
  size_t instance_bytes() const { return instance_bytes_; }

  // Creates one instance: a context per program, each run once on zeros (capturing its CUDA graph),
  // so the first request meets no setup. Throws kInvalidArgument when the GPU is out of memory (nothing is kept).
  // Batches of several requests are gathered by the instance (InstanceFns::run_parts).
  InstanceFns make_instance();

  // Throws kInvalidArgument when a request of these shapes (with its batch dim, when batching)
  // cannot run: a non-batch dim that differs from the compiled one, or too many rows.
  void check_shapes(const std::map<std::string, std::vector<int64_t>>& shapes) const;

  GpuModelStats stats() const;

 private:
  struct Counters {
    std::atomic<uint64_t> executions{0}, rows{0}, padded_rows{0}, compute_us{0}, direct_input_bytes{0},
        staged_input_bytes{0};
  };
  int gpu_ = 0;
  bool batching_ = false;
  std::shared_ptr<gpu::Device> device_;
  std::shared_ptr<gpu::WeightPool> pool_;
  std::vector<int64_t> batches_;
  std::map<int64_t, std::shared_ptr<const gpu::GpuProgram>> programs_;  // by batch size
  std::map<std::string, std::vector<int64_t>> shapes_;                   // inputs, without the batch dim
  void add_program(int64_t batch, std::shared_ptr<const gpu::GpuProgram> program);
  size_t instance_bytes_ = 0;
  std::shared_ptr<Counters> counters_ = std::make_shared<Counters>();
};

}  // namespace kiln::serve
