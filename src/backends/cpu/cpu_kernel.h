// The CPU backend's kernel interface.
//
// A CPU engine is a list of steps, each one kernel. A kernel is created by a *tactic*: one way to
// run one kind of node (oneDNN's blocked-format convolution, Kiln's AVX-512 elementwise loop, the
// reference fallback). Several tactics may support the same node; the builder times them at the
// profile's opt shape and keeps the fastest (src/backends/cpu/program.h). Tactics are stored in
// engine files by stable name and version, never by position.
//
// Shapes are concrete when a kernel is created: a program is compiled for one set of input shapes
// (the ExecutionContext recompiles, with the same tactics, when the shapes change).
//
// Layouts: a value of rank >= 3 holding [N, C, D1..Dk] is stored either plain (row-major, NCHW) or
// channels-last ([N, D1..Dk, C], NHWC). The logical shape is always the NCHW one. Values of rank < 3
// and constants are always plain. The program inserts reorders where a producer's layout is not
// what the consumer's tactic asks for.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "kiln/error.h"
#include "ops/op_schema.h"

namespace kiln::cpu {

enum class Layout : uint8_t {
  kPlain,         // row-major in the logical (NCHW) order
  kChannelsLast,  // [N, spatial..., C]; only for rank >= 3
  kAny,           // in Tactic::input_layouts: "whatever the producer made"
};
const char* layout_name(Layout l);  // "plain", "channels_last", "any"

// Physical strides (in elements) of a value with `shape` stored in `layout`, indexed by logical dim.
std::vector<int64_t> layout_strides(const std::vector<int64_t>& shape, Layout layout);
// True when plain and channels-last store the same bytes for this shape (C == 1 or all spatial dims 1).
bool layouts_coincide(const std::vector<int64_t>& shape);

struct ValueInfo {
  std::string name;
  DType dtype = DType::kUndefined;    // kUndefined for an omitted optional input/output
  std::vector<int64_t> shape;         // logical (NCHW) shape, concrete
  Layout layout = Layout::kPlain;
  const Tensor* constant = nullptr;   // the value when it is a constant (weights), else nullptr

  bool present() const { return dtype != DType::kUndefined; }
  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
};

// Everything a tactic sees about the node it implements.
struct KernelConfig {
  const Node* node = nullptr;
  const OpSchema* schema = nullptr;
  int64_t opset = 0;
  std::vector<ValueInfo> inputs;   // one per node input; absent optional inputs are !present()
  std::vector<ValueInfo> outputs;  // one per node output; layout set by the tactic's output_layouts
  int threads = 1;                 // the engine's thread count
  // When >= 0, output 0 is written into input k's buffer: the program found input k dead after
  // this node (a residual add's Z), so args.outputs[0] == args.inputs[k] at run time.
  int output0_inplace_of = -1;

  NodeView view() const { return NodeView(*node, *schema, opset); }
  bool has_input(size_t i) const { return i < inputs.size() && inputs[i].present(); }
};

// Pointers a kernel reads and writes on each run. Inputs are in the layouts the tactic asked for
// (or, for kAny, the layouts in KernelConfig::inputs); outputs in the layouts it declared.
struct KernelArgs {
  const void* const* inputs = nullptr;  // nullptr for an absent optional input
  void* const* outputs = nullptr;
  void* scratch = nullptr;              // scratch_bytes() bytes, 64-byte aligned, not preserved
};

class CpuKernel {
 public:
  virtual ~CpuKernel() = default;
  virtual void run(const KernelArgs& args) = 0;
  // Bytes of scratch memory needed on each run (shared by all steps of a program).
  virtual size_t scratch_bytes() const { return 0; }
  // What actually runs, for inspect and profiles: "brgconv:avx512_core", "avx512 loop".
  virtual std::string describe() const { return {}; }
  // ISA features the kernel's code needs on the machine that runs it ("avx512f", "avx2"; none for
  // portable C++). Recorded in the engine's target fingerprint.
  virtual std::vector<std::string> required_isa() const { return {}; }
};

class Tactic {
 public:
  virtual ~Tactic() = default;
  // Stable name, stored in engine files and timing caches: "dnnl.conv", "kiln.eltwise", "reference".
  virtual std::string name() const = 0;
  virtual int version() const { return 1; }
  // Whether this tactic can run the node as configured (dtypes, shapes, attributes).
  virtual bool supports(const KernelConfig& cfg) const = 0;
  // The layout wanted for each input (kAny: take it as produced). Called after supports().
  // Default: plain for every input.
  virtual std::vector<Layout> input_layouts(const KernelConfig& cfg) const;
  // The layout of each output, given the inputs' final layouts in cfg. Default: plain.
  virtual std::vector<Layout> output_layouts(const KernelConfig& cfg) const;
  // True when output 0 is input 0's bytes reinterpreted (Reshape, Flatten, Squeeze on plain data):
  // the program then shares the buffer and never calls create().
  virtual bool aliases_input(const KernelConfig& /*cfg*/) const { return false; }
  // The input whose buffer output 0 could take over (same dtype, shape and layout) if the program
  // finds it dead after this node, saving a copy (a convolution accumulating onto its residual).
  virtual int inplace_input(const KernelConfig& /*cfg*/) const { return -1; }
  // Builds the kernel (prepacks weights: cfg.inputs[i].constant). Throws kiln::Error on failure.
  virtual std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const = 0;
};

// Tactics by op (domain, op_type), in preference order: when timing is off (or ties), the first
// supporting tactic wins. The reference fallback is not in the registry; the program adds it last.
class TacticRegistry {
 public:
  void add(const std::string& domain, const std::string& op, std::shared_ptr<const Tactic> tactic);
  // Adds a tactic ahead of the op's others (plugins, which replace the built-in kernels).
  void add_first(const std::string& domain, const std::string& op, std::shared_ptr<const Tactic> tactic);
  std::vector<const Tactic*> find(const std::string& domain, const std::string& op) const;
  // The tactic with this stable name for this op, or nullptr.
  const Tactic* find_named(const std::string& domain, const std::string& op, const std::string& name) const;
  static TacticRegistry& global();

 private:
  std::map<std::pair<std::string, std::string>, std::vector<std::shared_ptr<const Tactic>>> tactics_;
};

// Registration list: one function per kernel group (src/backends/cpu/<group>.cpp).
void register_dnnl_conv_tactics(TacticRegistry& r);      // FusedConv, Conv, pooling
void register_dnnl_matmul_tactics(TacticRegistry& r);    // FusedMatMul, MatMul, Gemm
void register_transformer_tactics(TacticRegistry& r);    // Attention, Softmax, LayerNormalization
void register_elementwise_tactics(TacticRegistry& r);    // ElementwiseChain, unary/binary ops, Gelu
void register_data_movement_tactics(TacticRegistry& r);  // Reshape family, Transpose, Concat, Slice, ...
void register_int8_tactics(TacticRegistry& r);           // QMatMul, QuantizeLinear, DequantizeLinear (QConv: dnnl_conv)

// The reference kernels wrapped as a CPU tactic: supports every op the reference backend has,
// plain layouts only, output shapes must match inference. Named "reference".
const Tactic& reference_tactic();

// Throws kUnsupported naming the node: a tactic's create() (or the plan its supports() tries)
// refusing a node it cannot run as configured.
[[noreturn]] inline void unsupported(const KernelConfig& cfg, const std::string& why) {
  throw Error(ErrorCode::kUnsupported, cfg.node->describe() + ": " + why);
}

// True when every present input and output is f32 (the tactics that only have float32 kernels).
bool all_f32(const KernelConfig& cfg);

// Calls f(T{}) with the unsigned integer type T of `bytes` bytes (1, 2, 4 or 8), so a kernel that
// only moves elements serves every dtype of that size with one instantiation. Returns false (and
// calls nothing) for any other size.
template <typename F>
bool with_element_type(size_t bytes, F&& f) {
  switch (bytes) {
    case 1: f(uint8_t{}); return true;
    case 2: f(uint16_t{}); return true;
    case 4: f(uint32_t{}); return true;
    case 8: f(uint64_t{}); return true;
    default: return false;
  }
}

// Copies a value between layouts (plain <-> channels-last; same layout is a memcpy). Parallel.
void reorder(const void* src, Layout from, void* dst, Layout to, DType dtype, const std::vector<int64_t>& shape);

// Sets the OpenMP thread count for kernels run from the calling thread (0: the core count).
void set_threads(int threads);
int default_threads();

}  // namespace kiln::cpu
