// fuse-matmul-bias-activation: MatMul with a constant operand + Add(constant bias along the last
// dim) [+ activation], and Gemm [+ activation], become one kiln::FusedMatMul.
#include <algorithm>
#include <cfloat>
#include <limits>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "passes/pass.h"

namespace kiln {
namespace {

using Uses = UseIndex;

bool is_float(DType dt) { return dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16 || dt == DType::kF64; }

// A rank known for value v, or nullopt.
std::optional<size_t> rank_of(const Graph& g, const std::string& v) {
  const TensorType* t = g.type_of(v);
  return t && t->shape ? std::optional<size_t>(t->shape->size()) : std::nullopt;
}

class FuseMatmulBiasActivation : public Pass {
 public:
  std::string_view name() const override { return "fuse-matmul-bias-activation"; }
  int min_opt_level() const override { return 2; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    int rewrites = 0;
    // One rewrite at a time, then a fresh use-def view: rewrites shift node indices.
    for (bool changed = true; changed;) {
      changed = false;
      const Uses u(g);
      for (int i = 0; i < static_cast<int>(g.nodes.size()) && !changed; ++i) {
        const Node& n = g.nodes[i];
        if (!n.domain.empty() || (n.op_type != "MatMul" && n.op_type != "Gemm")) continue;
        std::optional<Match> m = n.op_type == "MatMul" ? match_matmul(model, u, i) : match_gemm(model, u, i);
        if (m) {
          apply(model, *m);
          changed = true;
        }
      }
      rewrites += changed;
    }
    return rewrites;
  }

 private:
  struct Match {
    Node fused;              // inputs and attributes filled; output set by apply()
    std::vector<int> nodes;  // replaced nodes: the root, then the bias Add and the activation if absorbed
  };

  // Where `value` feeds a single activation FusedMatMul can apply, that activation's index, name and
  // activation_params; nullopt otherwise.
  struct Activation {
    int node = -1;
    std::string name;
    std::vector<float> params;
  };
  static std::optional<Activation> match_activation(const Model& model, const Uses& u, const std::string& value) {
    const Graph& g = model.graph;
    const int i = u.sole_consumer(value);
    if (i < 0) return std::nullopt;
    const Node& n = g.nodes[i];
    if (n.inputs.empty() || n.inputs[0] != value) return std::nullopt;
    Activation a;
    a.node = i;
    if (n.domain == "kiln" && n.op_type == "Gelu") {
      const Attribute* ap = n.attr("approximate");
      const std::string approx = ap ? ap->s : "none";
      if (approx != "none" && approx != "tanh") return std::nullopt;
      a.name = approx == "none" ? "Gelu" : "GeluTanh";
      return a;
    }
    if (!n.domain.empty()) return std::nullopt;
    const int64_t opset = model.default_opset();
    const OpSchema* schema = OpRegistry::global().find("", n.op_type, opset);
    if (!schema) return std::nullopt;
    const NodeView view(n, *schema, opset);
    if (n.op_type == "Relu" || n.op_type == "Sigmoid" || n.op_type == "Tanh") {
      a.name = n.op_type;
    } else if (n.op_type == "Gelu") {  // ONNX Gelu-20, if fuse-gelu did not run
      const std::string& approx = view.attr_string("approximate");
      if (approx != "none" && approx != "tanh") return std::nullopt;
      a.name = approx == "none" ? "Gelu" : "GeluTanh";
    } else if (n.op_type == "LeakyRelu") {
      a.name = "LeakyRelu";
      a.params = {view.attr_float("alpha")};
    } else if (n.op_type == "Clip") {
      a.name = "Clip";
      if (opset < 11) {
        a.params = {view.attr_float("min"), view.attr_float("max")};
      } else {
        // Bounds must be constant scalars; an omitted bound is infinite (no clamp on that side).
        a.params = {-std::numeric_limits<float>::infinity(), std::numeric_limits<float>::infinity()};
        for (size_t k = 1; k < 3; ++k) {
          if (k >= n.inputs.size() || n.inputs[k].empty()) continue;
          const auto t = constant_value(g, u, n.inputs[k]);
          if (!t || t->numel() != 1 || !is_float(t->dtype())) return std::nullopt;
          a.params[k - 1] = static_cast<float>(t->to_double_vector()[0]);
        }
      }
    } else {
      return std::nullopt;
    }
    return a;
  }

  // A constant bias for Add(y, bias) that only runs along y's last dim N: dims all 1 except the
  // last, which is N or 1, and a rank no higher than y's, so the Add keeps y's shape.
  static bool bias_along_last_dim(const Graph& g, const Tensor& bias, const std::string& a, const std::string& b,
                                  DType dt) {
    if (bias.dtype() != dt) return false;
    if (bias.rank() == 0) return true;  // a scalar broadcasts everywhere without changing y's shape
    const TensorType* bt = g.type_of(b);
    if (!bt || !bt->shape || bt->shape->size() < 2) return false;  // y's last dim is B's last
    const Dim& n = bt->shape->back();
    // A lower bound on y's rank: exact when A's rank is known; else B's batch dims plus N.
    const std::optional<size_t> ra = rank_of(g, a);
    const size_t rb = bt->shape->size();
    const size_t ry = !ra ? rb - 1 : *ra == 1 ? rb - 1 : std::max(*ra, rb);
    if (bias.rank() > ry) return false;
    for (size_t i = 0; i + 1 < bias.rank(); ++i)
      if (bias.dim(i) != 1) return false;
    const int64_t last = bias.shape().back();
    return last == 1 || (n.known() && n.value == last);
  }

  // MatMul(A, B) with A or B constant (a projection: both non-constant are attention matmuls,
  // left to fuse-attention) + Add(constant bias along the last dim) [+ activation].
  static std::optional<Match> match_matmul(const Model& model, const Uses& u, int mm) {
    const Graph& g = model.graph;
    const Node& n = g.nodes[mm];
    if (n.inputs.size() != 2 || n.outputs.size() != 1) return std::nullopt;
    const std::string &a = n.inputs[0], &b = n.inputs[1];
    const TensorType* at = g.type_of(a);
    const TensorType* bt = g.type_of(b);
    if (!at || !bt || !is_float(at->dtype) || at->dtype != bt->dtype) return std::nullopt;
    if (!constant_value(g, u, a) && !constant_value(g, u, b)) return std::nullopt;
    Match m;
    m.nodes = {mm};
    m.fused.inputs = {a, b};
    std::string tail = n.outputs[0];
    const int add = u.sole_consumer(tail);
    if (add >= 0 && g.nodes[add].domain.empty() && g.nodes[add].op_type == "Add" && g.nodes[add].inputs.size() == 2) {
      const Node& an = g.nodes[add];
      const std::string c = an.inputs[0] == tail ? an.inputs[1] : an.inputs[0];
      const auto bias = c == tail ? std::nullopt : constant_value(g, u, c);
      if (bias && bias_along_last_dim(g, *bias, a, b, at->dtype)) {
        m.fused.inputs.push_back(c);
        m.nodes.push_back(add);
        tail = an.outputs[0];
      }
    }
    if (const auto act = match_activation(model, u, tail)) add_activation(m, *act);
    // A lone MatMul gains nothing from becoming FusedMatMul.
    if (m.nodes.size() == 1) return std::nullopt;
    return m;
  }

  // Gemm [+ activation], keeping transA/transB/alpha/beta; C keeps Gemm's unidirectional broadcast.
  static std::optional<Match> match_gemm(const Model& model, const Uses& u, int gi) {
    const Graph& g = model.graph;
    const Node& n = g.nodes[gi];
    const int64_t opset = model.default_opset();
    const OpSchema* schema = OpRegistry::global().find("", "Gemm", opset);
    const TensorType* at = n.inputs.empty() ? nullptr : g.type_of(n.inputs[0]);
    if (!schema || !at || !is_float(at->dtype) || n.inputs.size() < 2 || n.outputs.size() != 1) return std::nullopt;
    const NodeView view(n, *schema, opset);
    Match m;
    m.nodes = {gi};
    m.fused.inputs = {n.inputs[0], n.inputs[1]};
    if (n.inputs.size() > 2 && !n.inputs[2].empty()) m.fused.inputs.push_back(n.inputs[2]);
    m.fused.attrs["transA"] = Attribute::of_int(view.attr_int("transA") != 0);
    m.fused.attrs["transB"] = Attribute::of_int(view.attr_int("transB") != 0);
    m.fused.attrs["alpha"] = Attribute::of_float(view.attr_float("alpha"));
    m.fused.attrs["beta"] = Attribute::of_float(view.attr_float("beta"));
    if (const auto act = match_activation(model, u, n.outputs[0])) add_activation(m, *act);
    return m;
  }

  static void add_activation(Match& m, const Activation& act) {
    m.nodes.push_back(act.node);
    m.fused.attrs["activation"] = Attribute::of_string(act.name);
    if (!act.params.empty()) m.fused.attrs["activation_params"] = Attribute::of_floats(act.params);
  }

  // kiln::FusedMatMul replaces the matched chain at the position of its last node.
  static void apply(Model& model, Match& m) {
    Graph& g = model.graph;
    const int root = m.nodes.front(), last = m.nodes.back();  // a chain: each node consumes the previous
    Node& fused = m.fused;
    fused.name = g.nodes[root].name;
    fused.op_type = "FusedMatMul";
    fused.domain = "kiln";
    fused.outputs = {g.nodes[last].outputs[0]};
    std::vector<const Node*> originals;
    for (int i : m.nodes) originals.push_back(&g.nodes[i]);
    record_fusion(fused, originals);
    for (int i : m.nodes)
      if (i != last)
        for (const auto& o : g.nodes[i].outputs) g.types.erase(o);
    g.nodes[last] = std::move(fused);
    std::vector<int> idx(m.nodes.begin(), m.nodes.end() - 1);
    std::sort(idx.rbegin(), idx.rend());
    for (int i : idx) g.nodes.erase(g.nodes.begin() + i);
    import_kiln_domain(model);
  }
};

}  // namespace

std::unique_ptr<Pass> make_fuse_matmul_bias_activation() { return std::make_unique<FuseMatmulBiasActivation>(); }

}  // namespace kiln
