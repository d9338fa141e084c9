// CPU tactics of kiln::FusedMatMul, ai.onnx MatMul and ai.onnx Gemm: the oneDNN matmul and inner-product
// primitives (constant weights prepacked once at create) and dnnl_sgemm with Kiln's own vectorized epilogue.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "backends/cpu/cpu_kernel.h"
#include "backends/cpu/vec_math.h"
#include "backends/cpu/dnnl_util.h"
#include "kiln/error.h"

namespace kiln::cpu {

namespace {

using dnnl::memory;

// ---- The problem, normalized
//
// Every op becomes Y[batch..., M, N] = act(alpha * op(A)[batch..., M, K] x op(B)[batch..., K, N] + beta * C) over
// "padded" shapes of one rank R >= 2: 1-D operands get their missing M or N dim as 1 (the bytes are the same),
// batch dims are left-padded with 1s and broadcast numpy-style, C is right-aligned to the node's real output
// shape and then given the same padding. Dims of C are each 1 or the output's.
struct MatmulProblem {
  size_t rank = 2;
  std::vector<int64_t> a, b, y, c;  // padded dims of op(A), op(B), Y, C
  int64_t m = 1, n = 1, k = 1;
  bool trans_a = false, trans_b = false;  // only for rank 2
  float alpha = 1.0f, beta = 1.0f;
  bool has_c = false;
  const Tensor* b_const = nullptr;
  const Tensor* c_const = nullptr;
  std::string act;
  std::vector<float> act_params;
  // compute_precision "bf16" on a host with native bf16: A and B multiply as bfloat16 (f32 accumulation,
  // f32 Y and epilogue). Such a node is the oneDNN tactics' alone; without native bf16 it runs as f32.
  bool bf16 = false;

  int64_t batches() const { return shape_numel(std::vector<int64_t>(y.begin(), y.end() - 2)); }
  bool b_has_batch() const {
    for (size_t i = 0; i + 2 < rank; ++i)
      if (b[i] != 1) return true;
    return false;
  }
  // True when C is one value per output column ([..., 1, N], including N == 1).
  bool c_is_row() const {
    for (size_t i = 0; i + 1 < rank; ++i)
      if (c[i] != 1) return false;
    return true;
  }
  bool c_is_scalar() const { return shape_numel(c) == 1; }
};

// The normalized problem, or nullopt when the node is outside what these tactics implement (dtypes, empty dims,
// shapes that disagree with the planned output).
std::optional<MatmulProblem> analyze(const KernelConfig& cfg) {
  const Node& node = *cfg.node;
  const bool fused = node.domain == "kiln" && node.op_type == "FusedMatMul";
  const bool gemm = node.domain.empty() && node.op_type == "Gemm";
  const bool matmul = node.domain.empty() && node.op_type == "MatMul";
  if (!fused && !gemm && !matmul) return std::nullopt;
  if (cfg.inputs.size() < 2 || !cfg.has_input(0) || !cfg.has_input(1) || cfg.outputs.empty() ||
      !cfg.outputs[0].present() || !all_f32(cfg))
    return std::nullopt;
  MatmulProblem p;
  const NodeView v = cfg.view();
  if (!matmul) {
    const int64_t ta = v.attr_int("transA"), tb = v.attr_int("transB");
    if ((ta != 0 && ta != 1) || (tb != 0 && tb != 1)) return std::nullopt;
    p.trans_a = ta != 0;
    p.trans_b = tb != 0;
    p.alpha = v.attr_float("alpha");
    p.beta = v.attr_float("beta");
    p.has_c = cfg.has_input(2);
  }
  if (fused) {
    p.act = v.attr_string("activation");
    p.act_params = v.attr_floats("activation_params");
    const std::string& precision = v.attr_string("compute_precision");
    if (!precision.empty() && precision != "bf16") return std::nullopt;
    p.bf16 = precision == "bf16" && host_has_fast_bf16();
  }
  std::vector<int64_t> sa = cfg.inputs[0].shape, sb = cfg.inputs[1].shape;
  if (sa.empty() || sb.empty()) return std::nullopt;
  if (gemm && (sa.size() != 2 || sb.size() != 2)) return std::nullopt;
  if ((p.trans_a && sa.size() != 2) || (p.trans_b && sb.size() != 2)) return std::nullopt;
  if (p.trans_a) std::swap(sa[0], sa[1]);
  if (p.trans_b) std::swap(sb[0], sb[1]);
  const bool a_vec = sa.size() == 1, b_vec = sb.size() == 1;
  if (a_vec) sa.insert(sa.begin(), 1);
  if (b_vec) sb.push_back(1);
  p.rank = std::max(sa.size(), sb.size());
  sa.insert(sa.begin(), p.rank - sa.size(), 1);
  sb.insert(sb.begin(), p.rank - sb.size(), 1);
  p.m = sa[p.rank - 2];
  p.k = sa[p.rank - 1];
  p.n = sb[p.rank - 1];
  if (sb[p.rank - 2] != p.k) return std::nullopt;
  p.a = sa;
  p.b = sb;
  p.y.resize(p.rank);
  for (size_t i = 0; i + 2 < p.rank; ++i) {
    if (sa[i] != sb[i] && sa[i] != 1 && sb[i] != 1) return std::nullopt;
    p.y[i] = std::max(sa[i], sb[i]);
  }
  p.y[p.rank - 2] = p.m;
  p.y[p.rank - 1] = p.n;
  // Empty products (K == 0 gives beta * C) are left to the reference kernel.
  for (int64_t d : sa)
    if (d <= 0) return std::nullopt;
  for (int64_t d : sb)
    if (d <= 0) return std::nullopt;
  // The node's real output shape is the padded one less the dims 1-D operands do not have.
  std::vector<int64_t> real(p.y.begin(), p.y.end() - 2);
  if (!a_vec) real.push_back(p.m);
  if (!b_vec) real.push_back(p.n);
  const std::vector<int64_t>& out = cfg.outputs[0].shape;
  if (shape_numel(out) != shape_numel(p.y) || out.size() > real.size()) return std::nullopt;
  for (size_t i = 0; i < out.size(); ++i)
    if (out[out.size() - 1 - i] != real[real.size() - 1 - i]) return std::nullopt;
  if (p.has_c) {
    const std::vector<int64_t>& sc = cfg.inputs[2].shape;
    if (sc.size() > real.size()) return std::nullopt;
    std::vector<int64_t> c(real.size() - sc.size(), 1);
    c.insert(c.end(), sc.begin(), sc.end());
    for (size_t i = 0; i < c.size(); ++i)
      if (c[i] != 1 && c[i] != real[i]) return std::nullopt;
    if (a_vec) c.insert(c.end() - (b_vec ? 0 : 1), 1);
    if (b_vec) c.push_back(1);
    c.insert(c.begin(), p.rank - c.size(), 1);
    p.c = c;
    p.c_const = cfg.inputs[2].constant;
  }
  p.b_const = cfg.inputs[1].constant;
  return p;
}

// Collapses [batch..., M, K] x [K, N] into one [batch * M, K] x [K, N] product when B has no batch and C keeps
// a 2-D form. The bytes of A, Y and C are unchanged; returns false when the product cannot fold.
bool fold_batch(MatmulProblem& p) {
  if (p.rank == 2) return true;
  if (p.b_has_batch() || p.trans_a) return false;
  const int64_t rows = p.batches() * p.m;
  int64_t c_rows = 1;
  if (p.has_c) {
    bool ones = true, full = true;
    for (size_t i = 0; i + 1 < p.rank; ++i) {
      ones = ones && p.c[i] == 1;
      full = full && p.c[i] == p.y[i];
    }
    if (!ones && !full) return false;
    c_rows = ones ? 1 : rows;
    p.c = {c_rows, p.c[p.rank - 1]};
  }
  p.a = {rows, p.k};
  p.b = {p.k, p.n};
  p.y = {rows, p.n};
  p.m = rows;
  p.rank = 2;
  return true;
}

std::vector<int64_t> dense_strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) s[i - 1] = s[i] * dims[i];
  return s;
}

memory::desc plain_desc(const std::vector<int64_t>& dims, memory::data_type dt = memory::data_type::f32) {
  return memory::desc(dims, dt, dense_strides(dims));
}

// op(A) as stored: plain, or for transA the [K, M] matrix read through swapped strides.
memory::desc a_desc(const MatmulProblem& p) {
  if (!p.trans_a) return plain_desc(p.a);
  return memory::desc({p.m, p.k}, memory::data_type::f32, memory::dims{1, p.m});
}
memory::desc b_desc(const MatmulProblem& p) {
  if (!p.trans_b) return plain_desc(p.b);
  return memory::desc({p.k, p.n}, memory::data_type::f32, memory::dims{1, p.k});
}

// ---- The epilogue on oneDNN: C as the bias argument or as a binary add post-op, alpha / beta as the output
// scale before it and beta as a linear post-op after it (or folded into constant operands), then the activation.
// oneDNN 2.6's brgemm post-op injector gives two eltwise_linear post-ops the first one's parameters, so the
// scaling before the add is the output scale, never a second linear post-op.
struct DnnlEpilogue {
  enum class CMode { kNone, kBias, kBinary } c_mode = CMode::kNone;
  float output_scale = 1.0f;   // applied to the product before the post-ops (never together with a bias)
  std::vector<float> c_owned;  // beta * C (or a constant scalar C spread over N) when C is a prescaled constant
  memory::desc c_md;
  int binary_index = -1;  // position of the add in the post-ops
  dnnl::post_ops ops;
};

// `alpha_left` is the part of alpha not folded into the weights. `bias_rank` 0 means no bias argument exists
// (a C row then goes through the binary post-op), else the bias is given as [1, ..., 1, N] of that rank.
std::optional<DnnlEpilogue> plan_dnnl_epilogue(const MatmulProblem& p, float alpha_left, size_t bias_rank) {
  DnnlEpilogue e;
  auto linear = [&](float s) {
    if (s != 1.0f) e.ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_linear, s, 0.0f);
  };
  if (!p.has_c) {
    e.output_scale = alpha_left;
  } else {
    // A constant C is prescaled here (beta * C rounds as the reference's does), so only a plain add is left.
    float beta_left = p.beta;
    if (p.c_const) {
      beta_left = 1.0f;
    } else if (p.beta == 0.0f) {
      return std::nullopt;  // 0 * C must still turn an inf in C into NaN, which a post-op chain cannot express
    }
    const bool row = p.c_is_row() && (p.c[p.rank - 1] == p.n || p.c_const);
    if (bias_rank > 0 && row && alpha_left == 1.0f && beta_left == 1.0f) {
      e.c_mode = DnnlEpilogue::CMode::kBias;
      if (p.c_const) {
        // beta * C as one value per column (a constant scalar C spread over them).
        const float* src = p.c_const->data<float>();
        e.c_owned.resize(static_cast<size_t>(p.n));
        for (int64_t j = 0; j < p.n; ++j) e.c_owned[j] = p.beta * src[p.c_is_scalar() ? 0 : j];
      }
      std::vector<int64_t> dims(bias_rank, 1);
      dims.back() = p.n;
      e.c_md = plain_desc(dims);
    } else {
      e.c_mode = DnnlEpilogue::CMode::kBinary;
      if (p.c_const && p.beta != 1.0f) {
        const float* src = p.c_const->data<float>();
        e.c_owned.assign(src, src + p.c_const->numel());
        for (float& x : e.c_owned) x *= p.beta;
      }
      e.output_scale = alpha_left / beta_left;
      e.c_md = plain_desc(p.c);
      e.binary_index = e.ops.len();
      e.ops.append_binary(dnnl::algorithm::binary_add, e.c_md);
      linear(beta_left);
      if (beta_left != 1.0f && p.act == "HardSigmoid") return std::nullopt;  // a second eltwise_linear (see above)
    }
  }
  if (!append_activation(e.ops, p.act, p.act_params)) return std::nullopt;
  return e;
}

// A constant B (op(B) as [K, N] or batched) scaled by alpha, reordered into the primitive's weights format.
memory prepack_weights(const MatmulProblem& p, const memory::desc& user_md, const memory::desc& packed_md,
                       float alpha) {
  const float* src = p.b_const->data<float>();
  std::vector<float> scaled;
  if (alpha != 1.0f) {
    scaled.assign(src, src + p.b_const->numel());
    for (float& x : scaled) x *= alpha;
    src = scaled.data();
  }
  memory user(user_md, dnnl_engine(), const_cast<float*>(src));
  memory packed(packed_md, dnnl_engine());
  dnnl::reorder(user, packed).execute(dnnl_stream(), user, packed);
  dnnl_stream().wait();
  return packed;
}

size_t align64(size_t n) { return (n + 63) & ~size_t{63}; }

// The primitive's operands: A and B as stored in the step's buffers (`a`, `b`) and as the primitive reads them
// (`prim_a`, `prim_b`). They differ for bf16, where a reorder converts the f32 operand into scratch on each run
// (B only when it is not prepacked).
struct Operands {
  memory::desc a, b, prim_a, prim_b, y;
};

// Runs a oneDNN primitive with A, B (or prepacked weights), C and Y taken from the step's buffers.
class DnnlMatmulKernel final : public CpuKernel {
 public:
  DnnlMatmulKernel(std::string kind, dnnl::primitive prim, dnnl::primitive_desc_base pd, Operands md,
                   std::optional<memory> packed, DnnlEpilogue epi, bool bf16)
      : kind_(std::move(kind)), prim_(std::move(prim)), pd_(std::move(pd)), md_(std::move(md)),
        packed_(std::move(packed)), epi_(std::move(epi)), bf16_(bf16) {
    // Scratch: [A converted][B converted][oneDNN scratchpad, shared by the reorders and the primitive run in turn].
    size_t pad = pd_.scratchpad_desc().get_size(), off = 0;
    if (md_.prim_a != md_.a) {
      a_convert_pd_.emplace(dnnl_engine(), md_.a, dnnl_engine(), md_.prim_a, user_scratchpad_attr());
      a_convert_.emplace(*a_convert_pd_);
      pad = std::max(pad, a_convert_pd_->scratchpad_desc().get_size());
      off += align64(md_.prim_a.get_size());
    }
    if (!packed_ && md_.prim_b != md_.b) {
      b_convert_pd_.emplace(dnnl_engine(), md_.b, dnnl_engine(), md_.prim_b, user_scratchpad_attr());
      b_convert_.emplace(*b_convert_pd_);
      pad = std::max(pad, b_convert_pd_->scratchpad_desc().get_size());
      off_b_ = off;
      off += align64(md_.prim_b.get_size());
    }
    off_pad_ = off;
    scratch_bytes_ = pad > 0 ? off + pad : off;
  }

  void run(const KernelArgs& args) override {
    dnnl::engine& eng = dnnl_engine();
    dnnl::stream& s = dnnl_stream();
    char* scratch = static_cast<char*>(args.scratch);
    std::unordered_map<int, memory> m;
    // f32 -> bf16 in oneDNN's reorder rounds to nearest even.
    auto convert = [&](const dnnl::reorder& prim, const dnnl::reorder::primitive_desc& pd, const memory::desc& from,
                       const memory::desc& to, const void* src, size_t off) {
      memory dst(to, eng, scratch + off);
      std::unordered_map<int, memory> r = {{DNNL_ARG_FROM, memory(from, eng, const_cast<void*>(src))},
                                           {DNNL_ARG_TO, dst}};
      if (pd.scratchpad_desc().get_size() > 0)
        r[DNNL_ARG_SCRATCHPAD] = memory(pd.scratchpad_desc(), eng, scratch + off_pad_);
      prim.execute(s, r);
      return dst;
    };
    m[DNNL_ARG_SRC] = a_convert_ ? convert(*a_convert_, *a_convert_pd_, md_.a, md_.prim_a, args.inputs[0], 0)
                                 : memory(md_.a, eng, const_cast<void*>(args.inputs[0]));
    if (packed_) {
      m[DNNL_ARG_WEIGHTS] = *packed_;
    } else if (b_convert_) {
      m[DNNL_ARG_WEIGHTS] = convert(*b_convert_, *b_convert_pd_, md_.b, md_.prim_b, args.inputs[1], off_b_);
    } else {
      m[DNNL_ARG_WEIGHTS] = memory(md_.b, eng, const_cast<void*>(args.inputs[1]));
    }
    m[DNNL_ARG_DST] = memory(md_.y, eng, args.outputs[0]);
    if (epi_.c_mode != DnnlEpilogue::CMode::kNone) {
      void* c = epi_.c_owned.empty() ? const_cast<void*>(args.inputs[2]) : const_cast<float*>(epi_.c_owned.data());
      const int arg = epi_.c_mode == DnnlEpilogue::CMode::kBias
                          ? DNNL_ARG_BIAS
                          : (DNNL_ARG_ATTR_MULTIPLE_POST_OP(epi_.binary_index) | DNNL_ARG_SRC_1);
      m[arg] = memory(epi_.c_md, eng, c);
    }
    const memory::desc scratch_md = pd_.scratchpad_desc();
    if (scratch_md.get_size() > 0) m[DNNL_ARG_SCRATCHPAD] = memory(scratch_md, eng, scratch + off_pad_);
    prim_.execute(s, m);
    s.wait();
  }
  size_t scratch_bytes() const override { return scratch_bytes_; }
  std::string describe() const override {
    return kind_ + " " + pd_.impl_info_str() + (bf16_ ? " bf16 (A, B bfloat16; f32 accumulation and output)" : "");
  }
  std::vector<std::string> required_isa() const override {
    std::vector<std::string> isa = isa_of_impl(pd_.impl_info_str());
    if (bf16_) add_bf16_isa(isa);
    return isa;
  }

 private:
  std::string kind_;
  dnnl::primitive prim_;
  dnnl::primitive_desc_base pd_;
  Operands md_;
  std::optional<memory> packed_;  // prepacked constant weights
  DnnlEpilogue epi_;
  bool bf16_ = false;
  std::optional<dnnl::reorder::primitive_desc> a_convert_pd_, b_convert_pd_;
  std::optional<dnnl::reorder> a_convert_, b_convert_;
  size_t off_b_ = 0, off_pad_ = 0, scratch_bytes_ = 0;
};

dnnl::primitive_attr make_attr(const DnnlEpilogue& e) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // scratch comes from the program: safe to run concurrently
  if (e.output_scale != 1.0f) attr.set_output_scales(0, {e.output_scale});
  attr.set_post_ops(e.ops);
  return attr;
}

std::string unsupported_message(const KernelConfig& cfg, const std::string& tactic, const std::string& why) {
  return cfg.node->describe() + ": tactic " + tactic + " does not support this node (" + why + ")";
}

// Builds the oneDNN matmul kernel; `prepack` false only checks that the primitive exists. Throws kUnsupported.
std::unique_ptr<CpuKernel> build_dnnl_matmul(const KernelConfig& cfg, bool prepack) {
  const std::string tactic = "dnnl.matmul";
  std::optional<MatmulProblem> p = analyze(cfg);
  if (!p) throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, tactic, "dtype, shape or attributes"));
  // A batch over a single weight matrix is one taller GEMM (and one weights format).
  if (p->rank > 2) {
    MatmulProblem folded = *p;
    if (fold_batch(folded)) p = folded;
  }
  const bool const_b = p->b_const != nullptr;
  const float alpha_left = const_b ? 1.0f : p->alpha;
  std::optional<DnnlEpilogue> epi = plan_dnnl_epilogue(*p, alpha_left, p->rank);
  if (!epi) throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, tactic, "activation or beta"));
  // bf16 reads A (and a run-time B) as dense bf16 copies of op(A), op(B); constant B is packed as bf16.
  const auto cdt = p->bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  Operands md{a_desc(*p), b_desc(*p), {}, {}, plain_desc(p->y)};
  md.prim_a = p->bf16 ? plain_desc(p->a, cdt) : md.a;  // p->a, p->b are op(A), op(B)'s dims
  md.prim_b = p->bf16 ? plain_desc(p->b, cdt) : md.b;
  const memory::desc wei_md =
      const_b ? memory::desc(memory::dims(p->b.begin(), p->b.end()), cdt, memory::format_tag::any) : md.prim_b;
  try {
    const dnnl::matmul::desc d = epi->c_mode == DnnlEpilogue::CMode::kBias
                                     ? dnnl::matmul::desc(md.prim_a, wei_md, epi->c_md, md.y)
                                     : dnnl::matmul::desc(md.prim_a, wei_md, md.y);
    const dnnl::matmul::primitive_desc pd(d, make_attr(*epi), dnnl_engine());
    if (p->bf16 && std::string(pd.impl_info_str()).rfind("ref", 0) == 0)
      throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, tactic, "only oneDNN's reference bf16 kernel"));
    if (!prepack) return nullptr;
    std::optional<memory> packed;
    if (const_b) packed = prepack_weights(*p, md.b, pd.weights_desc(), p->alpha);
    return std::make_unique<DnnlMatmulKernel>("matmul", dnnl::matmul(pd), pd, md, std::move(packed), std::move(*epi),
                                              p->bf16);
  } catch (const dnnl::error& e) {
    throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, tactic, std::string("oneDNN: ") + e.what()));
  }
}

// Builds the oneDNN inner-product kernel: [rows, K] x constant [K, N] (weights as oneDNN's [N, K]).
std::unique_ptr<CpuKernel> build_dnnl_inner_product(const KernelConfig& cfg, bool prepack) {
  const std::string tactic = "dnnl.inner_product";
  std::optional<MatmulProblem> p = analyze(cfg);
  if (!p) throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, tactic, "dtype, shape or attributes"));
  if (!p->b_const || p->trans_a || !fold_batch(*p))
    throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, tactic, "needs constant 2-D weights"));
  std::optional<DnnlEpilogue> epi = plan_dnnl_epilogue(*p, 1.0f, 1);
  if (!epi) throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, tactic, "activation or beta"));
  const auto cdt = p->bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  // op(B)[k][n] as oneDNN's weights[n][k]: B stored [K, N] reads with strides {1, N}; a transB B is [N, K].
  const memory::dims wei_strides = p->trans_b ? memory::dims{p->k, 1} : memory::dims{1, p->n};
  const memory::desc user_wei_md({p->n, p->k}, memory::data_type::f32, wei_strides);
  const memory::desc wei_md({p->n, p->k}, cdt, memory::format_tag::any);
  Operands md{plain_desc(p->a), user_wei_md, plain_desc(p->a, cdt), {}, plain_desc(p->y)};
  try {
    using ip = dnnl::inner_product_forward;
    const ip::desc d = epi->c_mode == DnnlEpilogue::CMode::kBias
                           ? ip::desc(dnnl::prop_kind::forward_inference, md.prim_a, wei_md, epi->c_md, md.y)
                           : ip::desc(dnnl::prop_kind::forward_inference, md.prim_a, wei_md, md.y);
    const ip::primitive_desc pd(d, make_attr(*epi), dnnl_engine());
    if (p->bf16 && std::string(pd.impl_info_str()).rfind("ref", 0) == 0)
      throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, tactic, "only oneDNN's reference bf16 kernel"));
    if (!prepack) return nullptr;
    std::optional<memory> packed = prepack_weights(*p, user_wei_md, pd.weights_desc(), p->alpha);
    md.prim_b = pd.weights_desc();
    return std::make_unique<DnnlMatmulKernel>("inner_product", ip(pd), pd, md, std::move(packed), std::move(*epi),
                                              p->bf16);
  } catch (const dnnl::error& e) {
    throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, tactic, std::string("oneDNN: ") + e.what()));
  }
}

class DnnlMatmulTactic final : public Tactic {
 public:
  std::string name() const override { return "dnnl.matmul"; }
  bool supports(const KernelConfig& cfg) const override {
    try {
      build_dnnl_matmul(cfg, false);
      return true;
    } catch (const Error&) {
      return false;
    }
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override { return build_dnnl_matmul(cfg, true); }
};

class DnnlInnerProductTactic final : public Tactic {
 public:
  std::string name() const override { return "dnnl.inner_product"; }
  bool supports(const KernelConfig& cfg) const override {
    try {
      build_dnnl_inner_product(cfg, false);
      return true;
    } catch (const Error&) {
      return false;
    }
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    return build_dnnl_inner_product(cfg, true);
  }
};

// ---- kiln.sgemm: dnnl_sgemm per batch, then Y = act(Y + beta * C) in one vectorized pass per row.

enum class Act { kNone, kRelu, kLeakyRelu, kClip, kSigmoid, kTanh, kGelu, kGeluTanh };

std::optional<Act> parse_act(const std::string& name) {
  if (name.empty()) return Act::kNone;
  if (name == "Relu") return Act::kRelu;
  if (name == "LeakyRelu") return Act::kLeakyRelu;
  if (name == "Clip") return Act::kClip;
  if (name == "Sigmoid") return Act::kSigmoid;
  if (name == "Tanh") return Act::kTanh;
  if (name == "Gelu") return Act::kGelu;
  if (name == "GeluTanh") return Act::kGeluTanh;
  return std::nullopt;
}

// One output row: y[j] = act(y[j] + beta * c[j * c_step]) (c may be null: no C). p0, p1: the activation's params.
using EpilogueFn = void (*)(float* y, int64_t n, const float* c, int64_t c_step, float beta, Act act, float p0,
                            float p1);

// The vector math below is written as plain loops that GCC vectorizes for each ISA variant. Comparisons must
// not be treated as trapping, or GCC keeps them as branches; nothing here reads the FP exception flags.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

#define KILN_INLINE static inline __attribute__((always_inline))

using vec::vexp;  // src/backends/cpu/vec_math.h

KILN_INLINE float vtanh(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float x2 = x * x;
  float t = 62.0f / 2835.0f;
  t = t * x2 - 17.0f / 315.0f;
  t = t * x2 + 2.0f / 15.0f;
  t = t * x2 - 1.0f / 3.0f;
  const float small = x + x * x2 * t;
  const float e = vexp(2.0f * (ax > 10.0f ? 10.0f : ax));
  const float big = 1.0f - 2.0f / (e + 1.0f);
  return ax < 0.3f ? small : (x < 0.0f ? -big : big);
}

// Gelu via erfc(|z|) = t * P(t) * exp(-z^2) (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7), so the negative
// tail is computed without the cancellation of 1 + erf(z).
KILN_INLINE float vgelu(float x) {
  const float z = (x < 0.0f ? -x : x) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  float q = 1.061405429f;
  q = q * t - 1.453152027f;
  q = q * t + 1.421413741f;
  q = q * t - 0.284496736f;
  q = q * t + 0.254829592f;
  const float erfc = t * q * vexp(-z * z);
  return 0.5f * x * (x < 0.0f ? erfc : 2.0f - erfc);
}

KILN_INLINE float vact(float x, Act act, float p0, float p1) {
  switch (act) {
    case Act::kNone: return x;
    case Act::kRelu: return x < 0.0f ? 0.0f : x;
    case Act::kLeakyRelu: return x < 0.0f ? p0 * x : x;
    case Act::kClip: {
      const float lo = x < p0 ? p0 : x;
      return lo > p1 ? p1 : lo;
    }
    case Act::kSigmoid: return 1.0f / (1.0f + vexp(-x));
    case Act::kTanh: return vtanh(x);
    case Act::kGelu: return vgelu(x);
    case Act::kGeluTanh: return 0.5f * x * (1.0f + vtanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
  }
  return x;
}

// One loop per (C form, activation): the switch folds away and the loop body is branch-free.
template <Act kAct>
KILN_INLINE void epilogue_loop(float* y, int64_t n, const float* c, int64_t c_step, float beta, float p0, float p1) {
  if (!c) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = vact(y[j], kAct, p0, p1);
  } else if (c_step == 0) {
    const float bc = beta * c[0];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = vact(y[j] + bc, kAct, p0, p1);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = vact(y[j] + beta * c[j], kAct, p0, p1);
  }
}

KILN_INLINE void epilogue_body(float* y, int64_t n, const float* c, int64_t c_step, float beta, Act act, float p0,
                               float p1) {
  switch (act) {
    case Act::kNone: return epilogue_loop<Act::kNone>(y, n, c, c_step, beta, p0, p1);
    case Act::kRelu: return epilogue_loop<Act::kRelu>(y, n, c, c_step, beta, p0, p1);
    case Act::kLeakyRelu: return epilogue_loop<Act::kLeakyRelu>(y, n, c, c_step, beta, p0, p1);
    case Act::kClip: return epilogue_loop<Act::kClip>(y, n, c, c_step, beta, p0, p1);
    case Act::kSigmoid: return epilogue_loop<Act::kSigmoid>(y, n, c, c_step, beta, p0, p1);
    case Act::kTanh: return epilogue_loop<Act::kTanh>(y, n, c, c_step, beta, p0, p1);
    case Act::kGelu: return epilogue_loop<Act::kGelu>(y, n, c, c_step, beta, p0, p1);
    case Act::kGeluTanh: return epilogue_loop<Act::kGeluTanh>(y, n, c, c_step, beta, p0, p1);
  }
}

__attribute__((target("avx512f,fma"))) void epilogue_avx512(float* y, int64_t n, const float* c, int64_t c_step,
                                                             float beta, Act act, float p0, float p1) {
  epilogue_body(y, n, c, c_step, beta, act, p0, p1);
}
__attribute__((target("avx2,fma"))) void epilogue_avx2(float* y, int64_t n, const float* c, int64_t c_step,
                                                        float beta, Act act, float p0, float p1) {
  epilogue_body(y, n, c, c_step, beta, act, p0, p1);
}
void epilogue_generic(float* y, int64_t n, const float* c, int64_t c_step, float beta, Act act, float p0, float p1) {
  epilogue_body(y, n, c, c_step, beta, act, p0, p1);
}

#undef KILN_INLINE
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// The best epilogue variant for this machine and the ISA features it needs.
EpilogueFn pick_epilogue(std::vector<std::string>& isa) {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
    isa = {"avx512f", "fma"};
    return epilogue_avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    isa = {"avx2", "fma"};
    return epilogue_avx2;
  }
  isa = {};
  return epilogue_generic;
}

class SgemmKernel final : public CpuKernel {
 public:
  SgemmKernel(const MatmulProblem& p, Act act) : p_(p), act_(act) {
    epilogue_ = pick_epilogue(isa_);
    if (act == Act::kLeakyRelu) p0_ = p.act_params.empty() ? 0.01f : p.act_params[0];
    if (act == Act::kClip) {
      p0_ = p.act_params[0];
      p1_ = p.act_params[1];
    }
    // Element offsets of every batch's A, B and C matrices (broadcast dims step by 0).
    const size_t bd = p.rank - 2;
    const std::vector<int64_t> as = dense_strides(p.a), bs = dense_strides(p.b);
    const std::vector<int64_t> cs = p.has_c ? dense_strides(p.c) : std::vector<int64_t>(p.rank, 0);
    std::vector<int64_t> idx(bd, 0);
    const int64_t batches = p.batches();
    for (int64_t bi = 0; bi < batches; ++bi) {
      int64_t ao = 0, bo = 0, co = 0;
      for (size_t d = 0; d < bd; ++d) {
        ao += p.a[d] == 1 ? 0 : idx[d] * as[d];
        bo += p.b[d] == 1 ? 0 : idx[d] * bs[d];
        if (p.has_c) co += p.c[d] == 1 ? 0 : idx[d] * cs[d];
      }
      a_off_.push_back(ao);
      b_off_.push_back(bo);
      c_off_.push_back(co);
      for (size_t d = bd; d-- > 0;)
        if (++idx[d] < p.y[d]) break;
        else idx[d] = 0;
    }
    if (p.has_c) {
      c_row_step_ = p.c[p.rank - 2] == 1 ? 0 : cs[p.rank - 2];
      c_col_step_ = p.c[p.rank - 1] == 1 ? 0 : 1;
    }
  }

  void run(const KernelArgs& args) override {
    const float* a = static_cast<const float*>(args.inputs[0]);
    const float* b = static_cast<const float*>(args.inputs[1]);
    const float* c = p_.has_c ? static_cast<const float*>(args.inputs[2]) : nullptr;
    float* y = static_cast<float*>(args.outputs[0]);
    const int64_t batches = static_cast<int64_t>(a_off_.size()), mn = p_.m * p_.n;
    const bool epilogue = c || act_ != Act::kNone;
    if (batches >= omp_get_max_threads() && batches > 1) {
      // Many small products (attention-style): one per thread, dnnl_sgemm single-threaded inside the team.
      // An exception must not leave the parallel region: the first failure is recorded and thrown after it.
      dnnl_status_t failed = dnnl_success;
#pragma omp parallel for schedule(static)
      for (int64_t bi = 0; bi < batches; ++bi) {
        const dnnl_status_t st = gemm(a + a_off_[bi], b + b_off_[bi], y + bi * mn);
        if (st != dnnl_success) {
#pragma omp critical(kiln_sgemm_failure)
          failed = st;
          continue;
        }
        if (epilogue)
          for (int64_t i = 0; i < p_.m; ++i) row_epilogue(y + bi * mn + i * p_.n, c, bi, i);
      }
      check(failed);
      return;
    }
    for (int64_t bi = 0; bi < batches; ++bi) check(gemm(a + a_off_[bi], b + b_off_[bi], y + bi * mn));
    if (!epilogue) return;
    const int64_t rows = batches * p_.m;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) row_epilogue(y + r * p_.n, c, r / p_.m, r % p_.m);
  }

  std::string describe() const override {
    return "dnnl_sgemm + " + std::string(isa_.empty() ? "generic" : isa_[0]) + " epilogue";
  }
  // dnnl_sgemm dispatches at run time; the epilogue variant is what was chosen here.
  std::vector<std::string> required_isa() const override { return isa_; }

 private:
  dnnl_status_t gemm(const float* a, const float* b, float* y) const {
    const int64_t lda = p_.trans_a ? p_.m : p_.k, ldb = p_.trans_b ? p_.k : p_.n;
    return dnnl_sgemm(p_.trans_a ? 'T' : 'N', p_.trans_b ? 'T' : 'N', p_.m, p_.n, p_.k, p_.alpha, a, lda, b, ldb, 0.0f,
                      y, p_.n);
  }
  static void check(dnnl_status_t st) {
    if (st != dnnl_success) throw Error(ErrorCode::kInternal, "dnnl_sgemm failed with status " + std::to_string(st));
  }
  void row_epilogue(float* row, const float* c, int64_t bi, int64_t i) const {
    const float* cr = c ? c + c_off_[bi] + i * c_row_step_ : nullptr;
    epilogue_(row, p_.n, cr, c_col_step_, p_.beta, act_, p0_, p1_);
  }

  MatmulProblem p_;
  Act act_;
  float p0_ = 0.0f, p1_ = 0.0f;
  EpilogueFn epilogue_ = nullptr;
  std::vector<std::string> isa_;
  std::vector<int64_t> a_off_, b_off_, c_off_;
  int64_t c_row_step_ = 0, c_col_step_ = 0;
};

std::optional<MatmulProblem> sgemm_problem(const KernelConfig& cfg) {
  std::optional<MatmulProblem> p = analyze(cfg);
  // dnnl_sgemm is float32 only: a bf16-marked node is left to the oneDNN tactics where bf16 is native.
  if (!p || p->bf16 || !parse_act(p->act)) return std::nullopt;
  if (p->act == "Clip" && p->act_params.size() != 2) return std::nullopt;
  if (p->act == "LeakyRelu" && p->act_params.size() > 1) return std::nullopt;
  if (!p->act.empty() && p->act != "Clip" && p->act != "LeakyRelu" && !p->act_params.empty()) return std::nullopt;
  if (p->rank > 2) {
    MatmulProblem folded = *p;
    if (fold_batch(folded)) p = folded;
  }
  return p;
}

class SgemmTactic final : public Tactic {
 public:
  std::string name() const override { return "kiln.sgemm"; }
  bool supports(const KernelConfig& cfg) const override { return sgemm_problem(cfg).has_value(); }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    std::optional<MatmulProblem> p = sgemm_problem(cfg);
    if (!p) throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, name(), "dtype, shape or activation"));
    return std::make_unique<SgemmKernel>(*p, *parse_act(p->act));
  }
};

}  // namespace

void register_dnnl_matmul_tactics(TacticRegistry& r) {
  auto matmul = std::make_shared<DnnlMatmulTactic>();
  auto ip = std::make_shared<DnnlInnerProductTactic>();
  auto sgemm = std::make_shared<SgemmTactic>();
  const std::pair<const char*, const char*> ops[] = {{"kiln", "FusedMatMul"}, {"", "MatMul"}, {"", "Gemm"}};
  for (const auto& [domain, op] : ops) {
    r.add(domain, op, matmul);
    r.add(domain, op, ip);
    r.add(domain, op, sgemm);
  }
}

}  // namespace kiln::cpu
