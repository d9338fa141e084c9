// Reference kernels of kiln::Attention and kiln::ElementwiseChain (encodings documented in
// src/ops/fused_attention.cpp). Plain loops for attention; the chain runs the registered ai.onnx
// reference kernels step by step, so it is bit-identical to the unfused ops.
#include <cmath>
#include <limits>
#include <string>

#include "backends/reference/kernel.h"

namespace kiln::reference {

namespace {

// ---- kiln::Attention

template <typename T>
std::vector<double> to_doubles(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  const T* p = t.data<T>();
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(static_cast<compute_t<T>>(p[i]));
  return out;
}

void attention_kernel(KernelContext& ctx) {
  const Tensor& q = ctx.input(0);
  const Tensor& k = ctx.input(1);
  const Tensor& v = ctx.input(2);
  const Tensor* mask = ctx.has_input(3) ? &ctx.input(3) : nullptr;
  if (q.rank() != 3 || k.rank() != 3 || v.rank() != 3)
    ctx.fail("Q, K and V must have rank 3, got " + shape_to_string(q.shape()) + ", " + shape_to_string(k.shape()) +
             ", " + shape_to_string(v.shape()));
  if (k.dtype() != q.dtype() || v.dtype() != q.dtype() || (mask && mask->dtype() != q.dtype()))
    ctx.fail("Q, K, V and mask must share one dtype");
  const int64_t heads = ctx.attr_int("num_heads");
  const int64_t batch = q.dim(0), sq = q.dim(1), sk = k.dim(1);
  if (heads <= 0 || q.dim(2) % heads != 0 || v.dim(2) % heads != 0)
    ctx.fail("hidden sizes " + std::to_string(q.dim(2)) + " and " + std::to_string(v.dim(2)) +
             " must be multiples of num_heads " + std::to_string(heads));
  if (k.dim(0) != batch || v.dim(0) != batch || k.dim(2) != q.dim(2) || v.dim(1) != sk)
    ctx.fail("Q " + shape_to_string(q.shape()) + ", K " + shape_to_string(k.shape()) + " and V " +
             shape_to_string(v.shape()) + " do not fit [B,Sq,H*Dk], [B,Sk,H*Dk], [B,Sk,H*Dv]");
  const int64_t dk = q.dim(2) / heads, dv = v.dim(2) / heads;
  const float scale_attr = ctx.attr_float("scale");
  const double scale = scale_attr != 0.0f ? static_cast<double>(scale_attr) : 1.0 / std::sqrt(static_cast<double>(dk));

  const std::vector<int64_t> full = {batch, heads, sq, sk};
  std::vector<int64_t> mstrides(4, 0);
  if (mask) {
    if (mask->rank() > 4) ctx.fail("mask must have rank <= 4, got " + shape_to_string(mask->shape()));
    for (size_t i = 0; i < mask->rank(); ++i) {
      const int64_t d = mask->dim(i);
      if (d != 1 && d != full[4 - mask->rank() + i])
        ctx.fail("mask of shape " + shape_to_string(mask->shape()) + " does not broadcast to " + shape_to_string(full));
    }
    mstrides = broadcast_strides(mask->shape(), full);
  }

  Tensor& y = ctx.allocate_output(0, q.dtype(), {batch, sq, v.dim(2)});
  dispatch_float(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const std::vector<double> qd = to_doubles<T>(q), kd = to_doubles<T>(k), vd = to_doubles<T>(v);
    const std::vector<double> md = mask ? to_doubles<T>(*mask) : std::vector<double>();
    T* py = y.mutable_data<T>();
    std::vector<double> s(static_cast<size_t>(sk)), acc(static_cast<size_t>(dv));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < sq; ++i) {
          const double* qi = &qd[static_cast<size_t>((b * sq + i) * heads * dk + h * dk)];
          for (int64_t j = 0; j < sk; ++j) {
            const double* kj = &kd[static_cast<size_t>((b * sk + j) * heads * dk + h * dk)];
            double dot = 0;
            for (int64_t d = 0; d < dk; ++d) dot += qi[d] * kj[d];
            s[j] = dot * scale;
            if (mask)
              s[j] += md[static_cast<size_t>(b * mstrides[0] + h * mstrides[1] + i * mstrides[2] + j * mstrides[3])];
          }
          // Softmax as ai.onnx computes it: max-subtracted, so an all -inf row is NaN.
          double mx = sk > 0 ? s[0] : 0;
          for (int64_t j = 1; j < sk; ++j) mx = s[j] > mx ? s[j] : mx;
          double sum = 0;
          for (int64_t j = 0; j < sk; ++j) sum += std::exp(s[j] - mx);
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t j = 0; j < sk; ++j) {
            const double p = std::exp(s[j] - mx) / sum;
            const double* vj = &vd[static_cast<size_t>((b * sk + j) * heads * dv + h * dv)];
            for (int64_t e = 0; e < dv; ++e) acc[e] += p * vj[e];
          }
          T* yi = py + (b * sq + i) * heads * dv + h * dv;
          for (int64_t e = 0; e < dv; ++e) yi[e] = static_cast<T>(static_cast<compute_t<T>>(acc[e]));
        }
  });
}

// ---- kiln::ElementwiseChain

// The ai.onnx opset whose schemas the steps run under (numpy broadcasting, Clip bounds as inputs).
constexpr int64_t kChainOpset = 17;

// A scalar of dtype `dt` holding `v`.
Tensor scalar_of(DType dt, float v) {
  Tensor t(dt, {});
  dispatch_float(dt, [&](auto tag) {
    using T = decltype(tag);
    t.mutable_data<T>()[0] = static_cast<T>(static_cast<compute_t<T>>(v));
  });
  return t;
}

void elementwise_chain_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (!dtype_is_float(x.dtype()) || x.dtype() == DType::kF8E4M3FN || x.dtype() == DType::kF8E5M2)
    ctx.fail("the main input must be f32, f16, bf16 or f64, got " + std::string(dtype_name(x.dtype())));
  const auto& ops = ctx.attr_strings("ops");
  const auto& params = ctx.attr_floats("params");
  size_t next_param = 0;
  auto param = [&]() {
    if (next_param >= params.size()) ctx.fail("ops need more params than the node has");
    return params[next_param++];
  };
  Tensor acc = x;
  for (const std::string& step : ops) {
    const size_t c1 = step.find(':');
    Node n;
    n.name = ctx.node().name + "/" + step;
    n.op_type = step.substr(0, c1);
    std::vector<Tensor> owned;  // scalar bound inputs of Clip
    owned.reserve(2);
    std::vector<const Tensor*> inputs = {&acc};
    if (n.op_type == "LeakyRelu") {
      n.attrs["alpha"] = Attribute::of_float(param());
    } else if (n.op_type == "Clip") {
      const float lo = param(), hi = param();
      // An infinite bound stands for an omitted Clip input, which clamps nothing (not even NaN).
      inputs.push_back(std::isinf(lo) ? nullptr : &owned.emplace_back(scalar_of(x.dtype(), lo)));
      inputs.push_back(std::isinf(hi) ? nullptr : &owned.emplace_back(scalar_of(x.dtype(), hi)));
    } else if (c1 != std::string::npos) {
      const size_t c2 = step.find(':', c1 + 1);
      const size_t k = std::stoul(step.substr(c1 + 1, c2 == std::string::npos ? std::string::npos : c2 - c1 - 1));
      const Tensor* other = &ctx.input(k);
      if (other->dtype() != x.dtype()) ctx.fail("input " + std::to_string(k) + " does not have the main input's dtype");
      if (c2 != std::string::npos) inputs = {other, &acc};  // ":r": input[k] OP acc
      else inputs.push_back(other);
    }
    const OpSchema* schema = OpRegistry::global().find("", n.op_type, kChainOpset);
    const KernelFn fn = KernelRegistry::global().find("", n.op_type);
    if (!schema || !fn) ctx.fail("step '" + step + "' names no ai.onnx op with a reference kernel");
    KernelContext step_ctx(n, *schema, kChainOpset, inputs);
    fn(step_ctx);
    Tensor out = std::move(step_ctx.outputs()[0]);
    acc = std::move(out);
  }
  if (next_param != params.size()) ctx.fail("ops take fewer params than the node has");
  if (acc.shape() != x.shape())
    ctx.fail("the chain's result has shape " + shape_to_string(acc.shape()) + ", not the main input's " +
             shape_to_string(x.shape()) + " (an extra input broadcasts beyond it)");
  ctx.set_output(0, std::move(acc));
}

}  // namespace

void register_fused_attention_kernels(KernelRegistry& r) {
  r.add("kiln", "Attention", attention_kernel);
  r.add("kiln", "ElementwiseChain", elementwise_chain_kernel);
}

}  // namespace kiln::reference
