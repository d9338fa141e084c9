// Reference kernels of kiln::Gelu, kiln::LayerNormalization and kiln::FusedMatMul. Each one composes
// the ONNX ops' own reference kernels (found through the KernelRegistry), so a fused graph computes
// exactly what the unfused one does, step by step.
#include <cmath>
#include <cstring>
#include <map>

#include "backends/reference/kernel.h"

namespace kiln::reference {

namespace {

void require_float(const KernelContext& ctx, const Tensor& t, const char* what) {
  const DType dt = t.dtype();
  if (dt != DType::kF32 && dt != DType::kF64 && dt != DType::kF16 && dt != DType::kBF16)
    ctx.fail(std::string(what) + " must be a float tensor (f32, f64, f16 or bf16), got " +
             std::string(dtype_name(dt)));
}

// Runs the default-domain kernel of `op` (schema of `opset`) on `node` and returns its output 0.
// `node` supplies the attributes the kernel reads; errors name the fused node `outer`.
Tensor run_onnx_kernel(const KernelContext& outer, const Node& node, const char* op, int64_t opset,
                       std::vector<const Tensor*> inputs) {
  const OpSchema* schema = OpRegistry::global().find("", op, opset);
  const KernelFn fn = KernelRegistry::global().find("", op);
  if (!schema || !fn) outer.fail(std::string("the reference ") + op + " kernel is not registered");
  KernelContext inner(node, *schema, opset, std::move(inputs));
  fn(inner);
  if (inner.outputs().empty() || !inner.outputs()[0].defined()) outer.fail(std::string(op) + " produced no output");
  return std::move(inner.outputs()[0]);
}

// A node of the given op carrying the fused node's name (so inner errors still point at it).
Node helper_node(const KernelContext& ctx, const char* op, std::map<std::string, Attribute> attrs = {}) {
  Node n;
  n.name = ctx.node().name;
  n.op_type = op;
  n.outputs = {"y"};
  n.attrs = std::move(attrs);
  return n;
}

// ---- kiln::Gelu: the ONNX Gelu-20 kernel (its 'approximate' attribute has the same name and default).

void gelu_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "X");
  ctx.set_output(0, run_onnx_kernel(ctx, ctx.node(), "Gelu", 20, {&x}));
}

// ---- kiln::LayerNormalization: the ONNX LayerNormalization-17 kernel with only Y requested.

void layer_norm_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  require_float(ctx, x, "X");
  const Node n = helper_node(ctx, "LayerNormalization",
                             {{"axis", Attribute::of_int(ctx.attr_int("axis"))},
                              {"epsilon", Attribute::of_float(ctx.attr_float("epsilon"))}});
  ctx.set_output(0, run_onnx_kernel(ctx, n, "LayerNormalization", 17,
                                    {&x, &ctx.input(1), ctx.has_input(2) ? &ctx.input(2) : nullptr}));
}

// ---- kiln::FusedMatMul

// The transpose of a 2-D tensor, in fresh storage.
Tensor transpose_2d(const KernelContext& ctx, const Tensor& t, const char* what) {
  if (t.rank() != 2)
    ctx.fail(std::string("trans") + what + " needs a 2-D " + what + ", got shape " + shape_to_string(t.shape()));
  const int64_t r = t.dim(0), c = t.dim(1);
  Tensor out(t.dtype(), {c, r});
  const size_t es = dtype_size(t.dtype());
  const auto* src = static_cast<const uint8_t*>(t.raw());
  auto* dst = static_cast<uint8_t*>(out.mutable_raw());
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) std::memcpy(dst + (j * r + i) * es, src + (i * c + j) * es, es);
  return out;
}

// y = alpha * p + beta * c, with c broadcast to p's shape in one direction.
Tensor scale_and_add(const KernelContext& ctx, const Tensor& p, const Tensor* c, float alpha, float beta) {
  if (c) {
    if (c->dtype() != p.dtype())
      ctx.fail("C has dtype " + std::string(dtype_name(c->dtype())) + ", expected " +
               std::string(dtype_name(p.dtype())));
    bool ok = c->rank() <= p.rank();
    for (size_t i = 0; ok && i < c->rank(); ++i) {
      const int64_t od = p.dim(p.rank() - c->rank() + i);
      ok = c->dim(i) == 1 || c->dim(i) == od;
    }
    if (!ok)
      ctx.fail("C of shape " + shape_to_string(c->shape()) + " does not broadcast to the output " +
               shape_to_string(p.shape()));
  }
  Tensor y(p.dtype(), p.shape());
  dispatch_float(p.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T* pp = p.data<T>();
    T* py = y.mutable_data<T>();
    const C a = static_cast<C>(alpha), b = static_cast<C>(beta);
    if (!c) {
      for (int64_t i = 0; i < p.numel(); ++i) py[i] = static_cast<T>(a * static_cast<C>(pp[i]));
      return;
    }
    const T* pc = c->data<T>();
    const std::vector<int64_t> c_strides = broadcast_strides(c->shape(), p.shape());
    for_each_index(p.shape(), {c_strides}, [&](int64_t i, const std::vector<int64_t>& off) {
      py[i] = static_cast<T>(a * static_cast<C>(pp[i]) + b * static_cast<C>(pc[off[0]]));
    });
  });
  return y;
}

// Applies the named activation through the ONNX op's kernel.
Tensor apply_activation(const KernelContext& ctx, const Tensor& y) {
  const std::string& act = ctx.attr_string("activation");
  const std::vector<float>& params = ctx.attr_floats("activation_params");
  auto expect_params = [&](size_t lo, size_t hi) {
    if (params.size() < lo || params.size() > hi)
      ctx.fail("activation \"" + act + "\" takes " + std::to_string(lo) +
               (lo == hi ? "" : " or " + std::to_string(hi)) + " activation_params, got " +
               std::to_string(params.size()));
  };
  if (act.empty()) {
    expect_params(0, 0);
    return y;
  }
  if (act == "Relu" || act == "Sigmoid" || act == "Tanh") {
    expect_params(0, 0);
    return run_onnx_kernel(ctx, helper_node(ctx, act.c_str()), act.c_str(), 14, {&y});
  }
  if (act == "Gelu" || act == "GeluTanh") {
    expect_params(0, 0);
    const Node n = helper_node(ctx, "Gelu", {{"approximate", Attribute::of_string(act == "Gelu" ? "none" : "tanh")}});
    return run_onnx_kernel(ctx, n, "Gelu", 20, {&y});
  }
  if (act == "LeakyRelu") {
    expect_params(0, 1);
    std::map<std::string, Attribute> attrs;
    if (!params.empty()) attrs["alpha"] = Attribute::of_float(params[0]);
    return run_onnx_kernel(ctx, helper_node(ctx, "LeakyRelu", std::move(attrs)), "LeakyRelu", 16, {&y});
  }
  if (act == "Clip") {
    // Infinite bounds mean "no bound" (the Clip had that input omitted).
    expect_params(2, 2);
    Tensor lo, hi;
    dispatch_float(y.dtype(), [&](auto tag) {
      using T = decltype(tag);
      lo = Tensor::scalar<T>(static_cast<T>(params[0]));
      hi = Tensor::scalar<T>(static_cast<T>(params[1]));
    });
    const bool has_lo = !std::isinf(params[0]), has_hi = !std::isinf(params[1]);
    return run_onnx_kernel(ctx, helper_node(ctx, "Clip"), "Clip", 13,
                           {&y, has_lo ? &lo : nullptr, has_hi ? &hi : nullptr});
  }
  ctx.fail("unknown activation \"" + act + "\"");
}

void fused_matmul_kernel(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  require_float(ctx, a, "A");
  if (b.dtype() != a.dtype())
    ctx.fail("B has dtype " + std::string(dtype_name(b.dtype())) + ", expected " + std::string(dtype_name(a.dtype())));
  const int64_t ta = ctx.attr_int("transA"), tb = ctx.attr_int("transB");
  if ((ta != 0 && ta != 1) || (tb != 0 && tb != 1)) ctx.fail("transA and transB must be 0 or 1");
  const Tensor at = ta ? transpose_2d(ctx, a, "A") : a;
  const Tensor bt = tb ? transpose_2d(ctx, b, "B") : b;
  const Tensor p = run_onnx_kernel(ctx, helper_node(ctx, "MatMul"), "MatMul", 13, {&at, &bt});
  const Tensor* c = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  const float alpha = ctx.attr_float("alpha"), beta = ctx.attr_float("beta");
  // alpha * p is exact for alpha == 1, so skipping that pass changes nothing but time.
  const Tensor y = (c || alpha != 1.0f) ? scale_and_add(ctx, p, c, alpha, beta) : p;
  ctx.set_output(0, apply_activation(ctx, y));
}

}  // namespace

void register_fused_matmul_kernels(KernelRegistry& r) {
  r.add("kiln", "Gelu", gelu_kernel);
  r.add("kiln", "LayerNormalization", layer_norm_kernel);
  r.add("kiln", "FusedMatMul", fused_matmul_kernel);
}

}  // namespace kiln::reference
