// A GPU program: an optimized graph compiled for one set of concrete input shapes into a list of
// device kernels (made by the GPU module, device_api.h) over one planned activation arena, plus the
// weights, converted and uploaded once. A GpuContext runs it: its own arena, workspace, stream and
// staging buffers, and a CUDA graph captured on its first run and replayed after.
//
// Compiling does, in order:
//   1. specialization at the shapes (runtime/specialize.h: types, folded constants);
//   2. a support check that names every node the GPU cannot run (an error, no silent fallback);
//   3. per node: the kernel (library kernels time their candidates on the device), the layout
//      its inputs need (4-D activations are NHWC between convolutions and pools, converted where
//      an op needs the plain layout) and the value's precision (float activations in the
//      program's precision, FP32 at the graph's edges, integer tensors as they are);
//   4. buffer assignment with the CPU backend's planner: values whose lifetimes do not overlap
//      share arena memory; Reshape-like ops alias their input.
// The workspace (scratch of library kernels) is the largest any kernel asked for; a limit that no
// algorithm of some kernel fits is a build error naming the kernel, not an out-of-memory crash.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backends/cpu/timing_cache.h"
#include "backends/gpu/device_api.h"
#include "backends/reference/executor.h"
#include "ir/graph.h"

namespace kiln::gpu {

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

// kFP8: FP16 everywhere, and FP8 E4M3 GEMMs (per-tensor scales, Hopper and Ada) for the MatMul,
// Gemm and FusedMatMul nodes of constant 2-D weights that carry an fp8_input_scale attribute (the
// activation's calibrated amax / 448, set by annotate_fp8_scales in gpu_build.h); the weight's own
// scale is its amax / 448, found when it is converted. Nodes without the attribute run in FP16.
//
// kINT8: FP16 everywhere, and INT8 convolutions (Kiln's implicit-GEMM kernel on the integer tensor
// cores, sm_80 and newer) for the Conv and FusedConv nodes that carry int8_scales (calibrated by
// annotate_int8_scales in gpu_build.h) and that the kernel takes: ungrouped, input channels a
// multiple of 16, output channels a multiple of 8, no activation or ReLU or Clip(0, hi). Weights are
// quantized per output channel (amax / 127). A value that only INT8 convolutions read stays INT8
// between them (written so by its producer); elsewhere a convolution reads FP16 (one quantizing
// pass) or writes FP16. The others run in FP16, as do nodes where INT8 is not faster (timed).
// GEMMs (MatMul, Gemm, FusedMatMul of a 2-D constant B, no transposed A) with int8_scales run on
// the same kernel as a 1x1 convolution over their rows, weights per output column, FP16 out; a
// LayerNorm or elementwise producer writes their INT8 input itself, as for FP8.
enum class Precision { kFP32, kFP16, kBF16, kFP8, kINT8 };
const char* precision_name(Precision p);
Precision parse_precision(const std::string& s);  // "fp32", "fp16", "bf16", "fp8", "int8"; kInvalidArgument otherwise

// The node attribute holding an FP8 GEMM's input scale, and its value (0 when absent or not a
// positive finite number).
inline constexpr const char* kFp8InputScale = "fp8_input_scale";
float fp8_input_scale(const Node& n);

// The node attribute holding an INT8 convolution's per-tensor scales (amax / 127): floats
// {input, output, residual} (residual 0 without one). int8_scales() gives zeros when the attribute
// is absent or its input or output scale is not a positive finite number.
inline constexpr const char* kInt8Scales = "int8_scales";
struct Int8Scales {
  float x = 0, y = 0, z = 0;
  bool ok() const { return x > 0 && y > 0; }
};
Int8Scales int8_scales(const Node& n);

// Device copies of converted weights, shared by the programs compiled on one device (e.g. one
// program per batch size of a served model): a weight is converted and uploaded once per content
// and layout, whatever program asks for it again. The key holds a hash of the source tensor's
// bytes, so tensors of equal name but different values (constants folded per shape) never alias.
// Programs keep their pool alive; the pool frees its buffers when the last one is gone. Thread-safe.
class WeightPool {
 public:
  explicit WeightPool(std::shared_ptr<Device> device) : device_(std::move(device)) {}
  ~WeightPool();
  WeightPool(const WeightPool&) = delete;
  WeightPool& operator=(const WeightPool&) = delete;

  // The device buffer under `key`; `make` gives its bytes the first time (then uploaded).
  struct Entry {
    void* data = nullptr;
    size_t bytes = 0;
  };
  template <class Make>
  Entry get(const std::string& key, Make&& make) {
    std::lock_guard lock(mu_);
    if (auto it = entries_.find(key); it != entries_.end()) return it->second;
    return insert(key, make());
  }
  size_t bytes() const;    // device memory held
  Device& device() const { return *device_; }

 private:
  Entry insert(const std::string& key, const std::vector<uint8_t>& host);  // under mu_
  std::shared_ptr<Device> device_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
  size_t bytes_ = 0;
};

struct CompileOptions {
  Precision precision = Precision::kFP16;
  size_t workspace_limit = size_t{1} << 30;  // scratch any one library kernel may use
  std::vector<std::string>* log = nullptr;   // one line per step: op, kernel, timed ms
  // 1x1 convolutions (stride 1, no padding) are also GEMMs over NHWC: "auto" times cuDNN against
  // cuBLASLt and keeps the faster; "cudnn" or "gemm" forces one (tests cover both).
  std::string conv1x1_tactic = "auto";
  // Depthwise convolutions: cuDNN or Kiln's own kernel ("auto" times both; "cudnn", "kiln" force one).
  std::string depthwise_tactic = "auto";
  // Convolutions over fewer than 8 input channels in FP16/BF16 (an image's first layer): "auto"
  // times cuDNN on the input as it is and on a copy zero-padded to 4 and to 8 channels per pixel
  // (filters padded to match), keeping the fastest; "off" never pads; "4" or "8" always pads (tests).
  std::string channel_pad = "auto";
  // A stem convolution (7x7/2 over at most 4 channels to 64) read only by a 3x3/2 max pooling, in
  // FP16/INT8 programs: "auto" times Kiln's fused stem kernel against the separate steps and keeps
  // the faster; "on" always fuses where the pattern holds (tests); "off" never.
  std::string stem_pool = "auto";
  // Precision fp8: which GEMMs with an input scale run in FP8. "auto" times each against FP16
  // (counting the quantizing pass) and keeps the faster; "always" runs them all in FP8 (tests).
  std::string fp8_gemms = "auto";
  // Precision int8: which convolutions with scales run in INT8. "auto" times each against its FP16
  // kernel (counting the quantizing pass where its input is not already INT8) and keeps the
  // faster; "always" runs every one the kernel takes in INT8 (tests).
  std::string int8_convs = "auto";  // or "none": every convolution in FP16 (what "auto" is checked against)
  // Precision int8: which GEMMs (MatMul, Gemm, FusedMatMul of a 2-D constant B) with scales run on
  // Kiln's INT8 kernel, FP16 out. "auto" times each against its FP16 kernel (counting the
  // quantizing pass where no producer writes its input in INT8) and keeps the faster; "always"
  // runs every one in INT8 (tests); "none" keeps them all in FP16.
  std::string int8_gemms = "auto";
  // With "auto": time the INT8 program against the all-FP16 one and keep the faster (GpuProgram::
  // compile; recorded as a "gpu.int8.program" tactic). Off: the per-convolution choice stands.
  bool int8_program_check = true;
  // Where the weights go: programs compiled with one pool share their weights. Null: a pool of the
  // program's own. The pool's device must be the one compiled for.
  std::shared_ptr<WeightPool> weights;
  // The timing cache for tuned kernels (matmul, conv, depthwise), consulted before timing and
  // filled after; its target should be gpu_target() of the device. A recorded tactic is used
  // untimed; one the device rejects (another cuBLASLt, a corrupted record) is timed again. Null:
  // every tuned kernel is timed.
  cpu::TimingCache* tactics = nullptr;
};

// The timing-cache target of a device: tactics are valid for this GPU model and SM with these CUDA
// runtime, cuBLASLt and cuDNN versions ("NVIDIA H100 80GB HBM3 sm_90 cuda 13000 cublasLt 130100
// cudnn 91900").
std::string gpu_target(const DeviceProps& p);

// How a program's tuned kernels were chosen.
struct TacticStats {
  int timed = 0;     // timed on the device
  int recorded = 0;  // taken from the timing cache, untimed
  int rejected = 0;  // recorded, but the device refused the record: timed again
};

struct GpuStepInfo {
  std::string name;  // node name, or "to nhwc <value>" for inserted steps
  std::string op;
  std::string kernel;  // Kernel::describe()
  double timed_ms = -1;
};

struct TensorDesc {
  std::string name;
  DType dtype = DType::kUndefined;
  std::vector<int64_t> shape;
  size_t bytes() const;
};

class GpuProgram {
 public:
  // Throws kiln::Error: kUnsupported listing the nodes the GPU backend cannot run, kInvalidArgument
  // for shapes that do not fit, kInvalidArgument when a kernel needs more workspace than allowed
  // or the weights do not fit in GPU memory.
  static std::shared_ptr<const GpuProgram> compile(std::shared_ptr<Device> device, const Model& model,
                                                   const ShapeMap& shapes, const CompileOptions& options = {});
  ~GpuProgram();

  const std::vector<TensorDesc>& inputs() const { return inputs_; }
  const std::vector<TensorDesc>& outputs() const { return outputs_; }
  const std::vector<GpuStepInfo>& steps() const { return info_; }
  size_t arena_bytes() const { return arena_bytes_; }
  size_t activation_bytes_total() const { return activation_total_; }
  size_t workspace_bytes() const { return workspace_bytes_; }
  size_t weight_bytes() const { return weight_bytes_; }  // used by this program (maybe shared)
  const std::shared_ptr<WeightPool>& weight_pool() const { return pool_; }
  Precision precision() const { return precision_; }
  Device& device() const { return *device_; }
  const std::shared_ptr<Device>& device_ptr() const { return device_; }
  // The tactic of every tuned kernel, by its timing-cache key (what a GPU engine file stores).
  const std::map<std::string, cpu::TimingCache::Entry>& tactics() const { return tactics_; }
  const TacticStats& tactic_stats() const { return tactic_stats_; }

  // Enqueues every step on `stream`: inputs/outputs are device buffers in inputs()/outputs() order.
  // With `events` (steps().size() + 1 of them), records events[i] before step i and the last after
  // the last step, for per-step GPU times.
  void enqueue(void* arena, void* workspace, const std::vector<const void*>& inputs, const std::vector<void*>& outputs,
               void* stream, const std::vector<void*>* events = nullptr) const;

 private:
  GpuProgram() = default;
  struct Slot {
    enum Kind : uint8_t { kArena, kInput, kOutput, kWeight, kNone } kind = kNone;
    size_t index = 0;  // arena offset (after planning), input/output index, weight index
  };
  struct Step {
    std::unique_ptr<Kernel> kernel;
    std::vector<Slot> inputs, outputs;
  };
  void* resolve(const Slot& s, char* arena, const std::vector<const void*>& in, const std::vector<void*>& out) const;

  std::shared_ptr<Device> device_;
  Precision precision_ = Precision::kFP16;
  std::vector<Step> steps_;
  std::vector<GpuStepInfo> info_;
  std::vector<TensorDesc> inputs_, outputs_;
  std::shared_ptr<WeightPool> pool_;
  std::vector<void*> weights_;  // Slot::kWeight indexes these
  size_t weight_bytes_ = 0, arena_bytes_ = 0, activation_total_ = 0, workspace_bytes_ = 0;
  std::map<std::string, cpu::TimingCache::Entry> tactics_;
  TacticStats tactic_stats_;
  friend class GpuProgramBuilder;
};

// Runs a program: owns an arena, a workspace, a stream, device and pinned host copies of the
// inputs and outputs, and the CUDA graph captured on the first run. One thread at a time; several
// contexts on one program run concurrently.
class GpuContext {
 public:
  // Throws kiln::Error kInvalidArgument ("cannot create a GPU context: out of GPU memory ...") when
  // an allocation fails; what it took is given back.
  explicit GpuContext(std::shared_ptr<const GpuProgram> program, bool use_graph = true);
  ~GpuContext();
  GpuContext(const GpuContext&) = delete;
  GpuContext& operator=(const GpuContext&) = delete;

  // Validates names, dtypes and shapes (kInvalidArgument), copies in, runs, copies out. A CUDA
  // error throws kiln::Error: kInternal "GPU context is broken" after a sticky error (the process
  // must not reuse the GPU), kRuntime otherwise (the context stays usable).
  reference::TensorMap run(const reference::TensorMap& inputs);
  // run() for a batch of `rows` (1 .. the program's batch, dim 0 of every input and output): the
  // inputs carry `rows` rows, the program's other rows are zeros, and the outputs are cut back to
  // `rows`. How the server runs any batch on a program compiled for a larger one.
  reference::TensorMap run_rows(const reference::TensorMap& inputs, int64_t rows);
  // run_rows() for a batch given in parts (e.g. one per request), copied in order into the
  // staging buffers (or, for a part in registered host memory, straight to the GPU): their rows
  // must add up to `rows`.
  reference::TensorMap run_parts(const std::vector<const reference::TensorMap*>& parts, int64_t rows);
  // The program's batch: dim 0 of every input and output (kInvalidArgument when they differ).
  int64_t batch_rows() const;

  // Device-side milliseconds of the last run(): host-to-device copies, compute, device-to-host;
  // and how its input bytes reached the GPU: straight from host memory registered with the GPUs
  // (host_memory.h), or through the pinned staging buffers.
  struct Timing {
    float h2d_ms = 0, compute_ms = 0, d2h_ms = 0;
    size_t direct_bytes = 0, staged_bytes = 0;
  };
  const Timing& last_timing() const { return timing_; }
  // Enqueues only the compute (graph replay) and waits: what `kiln bench` times as GPU compute.
  float run_compute_only();
  const GpuProgram& program() const { return *program_; }
  // One run launched step by step with an event between steps: each step's GPU milliseconds.
  std::vector<float> profile_steps();

 private:
  // rows < 0: one part, the whole batch.
  reference::TensorMap run_impl(const std::vector<const reference::TensorMap*>& parts, int64_t rows);
  void ensure_graph();
  void launch_compute();
  void release();  // frees everything held (also after a constructor that failed half-way)

  std::shared_ptr<const GpuProgram> program_;
  Device& dev_;
  bool use_graph_;
  void* stream_ = nullptr;
  void* graph_ = nullptr;
  void* arena_ = nullptr;
  void* workspace_ = nullptr;
  std::vector<void*> d_in_, d_out_, h_in_, h_out_;
  void* ev_[4] = {};
  Timing timing_;
};

}  // namespace kiln::gpu
