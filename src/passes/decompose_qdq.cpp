// decompose-qdq: for backends without Q/DQ kernels (the GPU program compiler runs it before the
// standard passes), explicit QuantizeLinear/DequantizeLinear nodes of 8-bit values become float
// arithmetic that computes the same values, so a Q/DQ model imports and runs there:
//
//   DQ(Q(x)) with the same parameters ("fake quantization"):
//       (Clip(Round(x / S) + Z, qmin, qmax) - Z) * S
//   a Q left alone (its 8-bit output used elsewhere):
//       Cast(Clip(Round(x / S) + Z, qmin, qmax), to = int8 | uint8)
//   a DQ left alone (an 8-bit input or weight):
//       (Cast(q, to = float) - Z) * S
//
// S and Z are constants: a scalar, or [C, 1, ...] along the axis of a per-axis scale. Round is
// ONNX's (half to even), as QuantizeLinear rounds; Z is left out where every zero point is 0.
// Constant folding turns a DQ of constant weights into float weights afterwards; a Q whose every
// consumer became a fake quantization is removed. Guards (the node stays as it is): non-constant
// or non-float32 scales, block quantization, FP8 or 16-bit types, non-float32 x.
#include <cstdint>
#include <optional>
#include <vector>

#include "passes/pass.h"

namespace kiln {
namespace {

struct Emitter {
  Graph& g;
  NameGen& names;
  std::vector<Node> out;
  int opset = 17;

  std::string constant(const std::string& base, const std::vector<float>& values, int64_t rank, int64_t axis) {
    std::vector<int64_t> shape;
    if (values.size() > 1) {  // [C, 1, ...]: broadcasts along `axis` of a rank-`rank` tensor
      shape.assign(static_cast<size_t>(rank - axis), 1);
      shape[0] = static_cast<int64_t>(values.size());
    }
    Tensor t = Tensor::from_vector<float>(shape, values);
    const std::string name = names.make(base);
    g.types[name] = TensorType{DType::kF32, shape_from_dims(t.shape())};
    g.initializers[name] = std::move(t);
    return name;
  }
  std::string value(const std::string& base, const TensorType& type) {
    const std::string name = names.make(base);
    g.types[name] = type;
    return name;
  }
  void node(const std::string& name, const std::string& op, std::vector<std::string> in, const std::string& y,
            std::map<std::string, Attribute> attrs = {}) {
    out.push_back(Node{names.make(name), op, "", std::move(in), {y}, std::move(attrs)});
  }
  // Clip(v, lo, hi) into y: inputs from opset 11, attributes before.
  void clip(const std::string& name, const std::string& v, float lo, float hi, const std::string& y) {
    if (opset >= 11) {
      node(name, "Clip", {v, constant(name + "_min", {lo}, 0, 0), constant(name + "_max", {hi}, 0, 0)}, y);
    } else {
      node(name, "Clip", {v}, y, {{"min", Attribute::of_float(lo)}, {"max", Attribute::of_float(hi)}});
    }
  }
};

std::vector<float> as_floats(const std::vector<int32_t>& v) { return std::vector<float>(v.begin(), v.end()); }

// Round(x / S) + Z clipped to the 8-bit range, into `y` (typed like x).
void emit_quantize(Emitter& e, const Node& n, const QParams& q, const std::string& x, const TensorType& xt,
                   const std::string& y) {
  const int64_t rank = xt.shape ? static_cast<int64_t>(xt.shape->size()) : 0;
  const std::string s = e.constant(n.name + "_scale", q.scale, rank, q.axis);
  const std::string scaled = e.value(n.name + "_scaled", xt), rounded = e.value(n.name + "_rounded", xt);
  e.node(n.name + "_div", "Div", {x, s}, scaled);
  e.node(n.name + "_round", "Round", {scaled}, rounded);
  std::string shifted = rounded;
  if (!q.zero_points_zero()) {
    shifted = e.value(n.name + "_shifted", xt);
    e.node(n.name + "_add_zp", "Add", {rounded, e.constant(n.name + "_zp", as_floats(q.zero_point), rank, q.axis)}, shifted);
  }
  const bool u8 = q.dtype == DType::kU8;
  e.clip(n.name + "_saturate", shifted, u8 ? 0.f : -128.f, u8 ? 255.f : 127.f, y);
}

// (v - Z) * S into `y`.
void emit_dequantize(Emitter& e, const Node& n, const QParams& q, const std::string& v, const TensorType& vt,
                     const std::string& y) {
  const int64_t rank = vt.shape ? static_cast<int64_t>(vt.shape->size()) : 0;
  std::string centred = v;
  if (!q.zero_points_zero()) {
    centred = e.value(n.name + "_centred", vt);
    e.node(n.name + "_sub_zp", "Sub", {v, e.constant(n.name + "_zp", as_floats(q.zero_point), rank, q.axis)}, centred);
  }
  e.node(n.name + "_mul_scale", "Mul", {centred, e.constant(n.name + "_scale", q.scale, rank, q.axis)}, y);
}

class DecomposeQdq : public Pass {
 public:
  std::string_view name() const override { return "decompose-qdq"; }
  int min_opt_level() const override { return 0; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    NameGen names(g);
    Emitter e{g, names, {}, static_cast<int>(model.default_opset())};
    int done = 0;
    std::vector<Node> result;
    result.reserve(g.nodes.size());
    {
      const UseIndex u(g);
      for (const Node& n : g.nodes) {
        e.out.clear();
        if (rewrite(g, u, n, e)) {
          ++done;
          for (Node& r : e.out) result.push_back(std::move(r));
        } else {
          result.push_back(n);
        }
      }
    }
    if (!done) return 0;
    g.nodes = std::move(result);
    // QuantizeLinear nodes whose every consumer became a fake quantization.
    for (bool removed = true; removed;) {
      removed = false;
      const UseIndex u(g);
      for (size_t i = 0; i < g.nodes.size(); ++i) {
        const Node& n = g.nodes[i];
        if (n.op_type != "QuantizeLinear" || !n.domain.empty() || !u.unused(n.outputs[0])) continue;
        g.types.erase(n.outputs[0]);
        g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
        removed = true;
        break;
      }
    }
    return done;
  }

 private:
  static bool float32(const TensorType* t) { return t && t->dtype == DType::kF32; }

  static bool rewrite(Graph& g, const UseIndex& u, const Node& n, Emitter& e) {
    if (!n.domain.empty() || (n.op_type != "QuantizeLinear" && n.op_type != "DequantizeLinear")) return false;
    if (n.outputs.empty() || n.outputs[0].empty()) return false;
    const std::optional<QParams> q = qparams(g, u, n);
    if (!q || !dtype_is_8bit(q->dtype)) return false;
    if (n.op_type == "DequantizeLinear") {
      const TensorType* yt = g.type_of(n.outputs[0]);
      if (!float32(yt)) return false;
      // DQ(Q(x)) with the same parameters: the fake quantization of x, in float.
      const int p = u.producer_of(n.inputs[0]);
      if (p >= 0) {
        const Node& qn = g.nodes[static_cast<size_t>(p)];
        if (qn.op_type == "QuantizeLinear" && qn.domain.empty()) {
          const std::optional<QParams> qq = qparams(g, u, qn);
          const TensorType* xt = g.type_of(qn.inputs[0]);
          if (qq && qq->same(*q) && float32(xt)) {
            const std::string clipped = e.value(n.name + "_quantized", *yt);
            emit_quantize(e, qn, *q, qn.inputs[0], *yt, clipped);
            emit_dequantize(e, n, *q, clipped, *yt, n.outputs[0]);
            return true;
          }
        }
      }
      const std::string f = e.value(n.name + "_float", *yt);
      e.node(n.name + "_cast", "Cast", {n.inputs[0]}, f, {{"to", Attribute::of_int(static_cast<int64_t>(dtype_to_onnx(DType::kF32)))}});
      emit_dequantize(e, n, *q, f, *yt, n.outputs[0]);
      return true;
    }
    const TensorType* xt = g.type_of(n.inputs[0]);
    if (!float32(xt)) return false;
    // A Q whose consumers are all fake quantizations goes with them (run() removes it once unused);
    // one with an 8-bit consumer left becomes float arithmetic and a Cast.
    bool all_fake = !u.graph_outputs.count(n.outputs[0]);
    for (int c : u.consumers_of(n.outputs[0])) {
      const Node& cn = g.nodes[static_cast<size_t>(c)];
      const std::optional<QParams> cq =
          cn.op_type == "DequantizeLinear" && cn.domain.empty() ? qparams(g, u, cn) : std::nullopt;
      all_fake = all_fake && cq && cq->same(*q) && float32(g.type_of(cn.outputs[0]));
    }
    if (all_fake) return false;
    const std::string clipped = e.value(n.name + "_quantized", *xt);
    emit_quantize(e, n, *q, n.inputs[0], *xt, clipped);
    e.node(n.name + "_cast", "Cast", {clipped}, n.outputs[0], {{"to", Attribute::of_int(static_cast<int64_t>(dtype_to_onnx(q->dtype)))}});
    return true;
  }
};

}  // namespace

std::unique_ptr<Pass> make_decompose_qdq() { return std::make_unique<DecomposeQdq>(); }

}  // namespace kiln
