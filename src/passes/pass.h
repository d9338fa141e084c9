// Graph passes: small, named, guarded rewrites of a Model, run by a PassManager at an
// optimization level. Each pass lives in its own file: guard conditions first, then the rewrite.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "ops/model_check.h"

namespace kiln {

struct PassContext {
  int opt_level = 3;                    // passes with min_opt_level() above this are skipped
  std::set<std::string> disabled;       // pass names turned off by the user
#ifdef NDEBUG
  bool verify_after_each_pass = false;
#else
  bool verify_after_each_pass = true;   // debug builds check the IR's invariants after every pass
#endif
  ConstantEvaluator evaluator;          // evaluates nodes on constants (constant folding)
  // Concrete shapes for dynamic inputs (an optimization profile's opt shapes), used to resolve
  // shape subgraphs. Empty: only static shapes are used.
  std::map<std::string, std::vector<int64_t>> input_shapes;
  std::vector<std::string> log;         // one line per pass that changed the graph
};

class Pass {
 public:
  virtual ~Pass() = default;
  virtual std::string_view name() const = 0;
  virtual int min_opt_level() const { return 1; }
  // Rewrites the model; returns the number of rewrites made (0 = unchanged).
  virtual int run(Model& model, PassContext& ctx) = 0;
};

class PassManager {
 public:
  void add(std::unique_ptr<Pass> pass) { passes_.push_back(std::move(pass)); }
  // Runs every enabled pass in order; returns the total number of rewrites. Throws kInvalidArgument
  // if ctx.disabled names a pass that does not exist.
  int run(Model& model, PassContext& ctx) const;
  std::vector<std::string> pass_names() const;

  // The standard pipeline, in order.
  static PassManager standard();

 private:
  std::vector<std::unique_ptr<Pass>> passes_;
};

// ---- Use-def helpers shared by passes.

// Number of uses of each value by nodes, plus one per graph output.
std::unordered_map<std::string, int> count_uses(const Graph& g);
// An inference-mode BatchNormalization as y = x * s + t per channel (axis 1), s = scale /
// sqrt(var + eps), t = B - mean * s: when only Y is used, x is float of rank >= 2 with known
// channels and the statistics are constants of x's dtype (fold_batchnorm.cpp); else nullopt.
struct BatchnormAffine {
  std::vector<double> s, t;
};
std::optional<BatchnormAffine> batchnorm_affine(const Graph& g, const Node& bn);

// Replaces every use of `from` (node inputs and graph outputs) with `to`.
void replace_uses(Graph& g, const std::string& from, const std::string& to);

// Producers and distinct consumers of every value. Rebuild it after each rewrite.
struct UseIndex {
  std::unordered_map<std::string, int> producer;
  std::unordered_map<std::string, std::vector<int>> consumers;
  std::unordered_set<std::string> graph_outputs;

  explicit UseIndex(const Graph& g);
  int producer_of(const std::string& v) const;
  const std::vector<int>& consumers_of(const std::string& v) const;
  // The single consumer of `v`, or -1 when it has several, none, or is a graph output (then the
  // value must survive and cannot be absorbed into a fused node).
  int sole_consumer(const std::string& v) const;
  bool unused(const std::string& v) const;
};

// The value of `v` when it is a constant: an initializer, a Constant node (value, value_float(s),
// value_int(s)), or an Identity of one.
std::optional<Tensor> constant_value(const Graph& g, const UseIndex& u, const std::string& v, int depth = 0);

// The quantization parameters of a QuantizeLinear or DequantizeLinear node (fuse_qdq.cpp).
struct QParams {
  std::vector<float> scale;  // one value (per tensor) or one per index along axis
  std::vector<int32_t> zero_point;
  DType dtype = DType::kUndefined;  // the quantized side's type
  int64_t axis = 1;                 // normalized (non-negative) when per axis
  bool per_tensor() const { return scale.size() == 1; }
  bool zero_points_zero() const {
    for (int32_t z : zero_point)
      if (z != 0) return false;
    return true;
  }
  bool same(const QParams& o) const {
    return scale == o.scale && zero_point == o.zero_point && dtype == o.dtype && (per_tensor() || axis == o.axis);
  }
};
// Reads a Q/DQ node's float32 scale and zero point when both are constants and valid (positive
// finite scales, no block quantization, a known rank for per-axis ones); nullopt otherwise.
std::optional<QParams> qparams(const Graph& g, const UseIndex& u, const Node& n);

// Fresh value names, unique among everything the graph names (inputs, outputs, initializers, typed
// values and every node's inputs and outputs): base, then base_1, base_2, ...
class NameGen {
 public:
  explicit NameGen(const Graph& g);
  std::string make(const std::string& base);
  std::string operator()(const std::string& base) { return make(base); }

 private:
  std::unordered_set<std::string> taken_;
};

// The shape of `value` when its rank is known, else null.
const Shape* shape_of(const Graph& g, const std::string& value);
// An integer attribute, or `def` when the node does not set it.
int64_t int_attr(const Node& n, const std::string& key, int64_t def);

// Records on a fused node which original nodes it replaced ("Conv:conv1", "Relu:relu1"), as the
// string-list attribute "fused_ops", so tools can show what was fused into what.
void record_fusion(Node& fused, const std::vector<const Node*>& originals);
// Makes sure the model imports the "kiln" domain (version 1) used by fused ops.
void import_kiln_domain(Model& model);

// Pass factories (one file each), in the order of PassManager::standard().
std::unique_ptr<Pass> make_remove_identity_ops();          // Identity, Dropout, same-type Cast
std::unique_ptr<Pass> make_remove_noop_reshapes();         // Reshape to same shape, Reshape chains, Transpose pairs
std::unique_ptr<Pass> make_constant_folding();             // nodes whose inputs are all constant
std::unique_ptr<Pass> make_shape_subgraph_folding();       // Shape->Gather->...->Reshape from static/profile shapes
std::unique_ptr<Pass> make_fold_batchnorm();               // BatchNormalization into Conv, Gemm or MatMul
std::unique_ptr<Pass> make_decompose_batchnorm();          // the rest into Mul + Add of per-channel constants
std::unique_ptr<Pass> make_fuse_layernorm();               // ReduceMean/Sub/Pow/Sqrt/Div -> kiln::LayerNormalization
std::unique_ptr<Pass> make_fuse_gelu();                    // Erf and tanh GELU forms -> kiln::Gelu
std::unique_ptr<Pass> make_split_packed_projections();     // Reshape/Unsqueeze/Transpose/Squeeze/Gather of a packed projection -> Slice
std::unique_ptr<Pass> make_fuse_attention();               // MatMul/scale/mask/Softmax/MatMul -> kiln::Attention
std::unique_ptr<Pass> make_fuse_conv_bias_activation();    // Conv + bias + activation + residual -> kiln::FusedConv
std::unique_ptr<Pass> make_fuse_matmul_bias_activation();  // MatMul/Gemm + bias + activation -> kiln::FusedMatMul
std::unique_ptr<Pass> make_cancel_transposes();            // Transpose -> row-wise ops -> inverse Transpose: both go
std::unique_ptr<Pass> make_fuse_qdq();                     // DQ -> Conv/MatMul/MaxPool -> Q -> kiln::QConv, QMatMul, int8 MaxPool
std::unique_ptr<Pass> make_fuse_elementwise_chains();      // chains of elementwise ops -> kiln::ElementwiseChain
std::unique_ptr<Pass> make_dead_node_elimination();

// Not in the standard pipeline: for backends without Q/DQ kernels (the GPU), every
// QuantizeLinear/DequantizeLinear of 8-bit values becomes float arithmetic with the same result
// (decompose_qdq.cpp).
std::unique_ptr<Pass> make_decompose_qdq();

}  // namespace kiln
