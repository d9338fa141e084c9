// oneDNN tactics for convolution (Conv, kiln::FusedConv) and pooling (MaxPool, AveragePool, the global
// pools), plus Kiln's own global pooling loop.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "backends/cpu/cpu_kernel.h"
#include "backends/cpu/dnnl_util.h"
#include "backends/reference/window.h"
#include "kiln/error.h"

namespace kiln::cpu {

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

// ---- Shared helpers

size_t align64(size_t n) { return (n + 63) & ~size_t{63}; }

// Activation tags by rank (3: 1-D, 4: 2-D, 5: 3-D spatial) and layout.
Tag act_tag(size_t rank, Layout layout) {
  const bool last = layout == Layout::kChannelsLast;
  switch (rank) {
    case 3: return last ? Tag::nwc : Tag::ncw;
    case 4: return last ? Tag::nhwc : Tag::nchw;
    case 5: return last ? Tag::ndhwc : Tag::ncdhw;
    default: return Tag::undef;
  }
}

// The plain ONNX weight layout [M, C/group, k...], seen grouped as [G, M/G, C/G, k...] when group > 1.
Tag weight_tag(size_t rank, bool grouped) {
  switch (rank) {
    case 3: return grouped ? Tag::goiw : Tag::oiw;
    case 4: return grouped ? Tag::goihw : Tag::oihw;
    case 5: return grouped ? Tag::goidhw : Tag::oidhw;
    default: return Tag::undef;
  }
}

// Windows are resolved by the reference kernels' own function, so both compute the same pads and
// output extents; an invalid window makes supports() false (the reference then reports it).
using reference::Window;

Window resolve_window(const KernelConfig& cfg, const std::vector<int64_t>& in, const std::vector<int64_t>& kernel) {
  return reference::resolve_window(cfg.view(), in, kernel);
}

std::vector<int64_t> minus_one(std::vector<int64_t> v) {
  for (auto& x : v) --x;  // oneDNN counts dilation as the gap between taps: ONNX's dilation - 1
  return v;
}

// The output's spatial shape must be the one the window gives (inference and the reference agree).
void check_output_shape(const KernelConfig& cfg, int64_t channels, const Window& w) {
  std::vector<int64_t> want = {cfg.inputs[0].shape[0], channels};
  want.insert(want.end(), w.out.begin(), w.out.end());
  if (cfg.outputs.empty() || cfg.outputs[0].shape != want) unsupported(cfg, "unexpected output shape");
}

// ---- Convolution

enum class ConvVariant { kChannelsLast, kPlain, kWinograd };

// Everything decided for one convolution node at concrete shapes.
struct ConvPlan {
  size_t rank = 0;
  int64_t group = 1;
  Layout layout = Layout::kPlain;  // X, Z and Y buffers
  bool has_bias = false, has_z = false;
  std::string activation;
  std::vector<float> act_params;
  memory::desc x_md, y_md, w_user_md, b_md, zero_md;
  dnnl::convolution_forward::primitive_desc conv_pd;
  bool z_post_op = false;    // Z as the convolution's binary post-op (else in the epilogue)
  bool z_sum = false;        // Z accumulated by a sum post-op: Y holds Z before the convolution runs
  bool act_post_op = false;  // activation as the convolution's post-op (else in the epilogue)
  // Y = act(Y + Z), or act(Y + 0) without Z: a separate pass where fusing into the convolution is slower.
  std::optional<dnnl::binary::primitive_desc> epilogue_pd;
  // compute_precision "bf16": the primitive reads X and W as bfloat16 (W packed once, X converted into
  // scratch on each run) and writes Y in float32; bias, Z and the activation stay float32.
  bool bf16 = false;
  bool x_via_scratch = false;  // X reordered into the primitive's source (Winograd's blocked format, or bf16)
  bool y_via_scratch = false;  // Winograd: Y comes out blocked in scratch and is reordered into the output
  std::optional<dnnl::reorder::primitive_desc> x_reorder_pd, y_reorder_pd;
  std::optional<dnnl::reorder::primitive_desc> w_reorder_pd;  // W not constant: repacked on each run
};

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

ConvPlan make_conv_plan(const KernelConfig& cfg, ConvVariant variant) {
  const bool fused = cfg.node->domain == "kiln";
  if (cfg.inputs.size() < 2 || !cfg.has_input(0) || !cfg.has_input(1)) unsupported(cfg, "missing X or W");
  if (cfg.outputs.empty() || !cfg.outputs[0].present()) unsupported(cfg, "missing Y");
  const ValueInfo& x = cfg.inputs[0];
  const ValueInfo& w = cfg.inputs[1];
  ConvPlan p;
  p.rank = x.shape.size();
  if (p.rank < 3 || p.rank > 5 || w.shape.size() != p.rank) unsupported(cfg, "only 1-D, 2-D and 3-D convolutions");
  // f32 tensors only: oneDNN's f16/bf16 convolutions round the sum and the residual add differently
  // from the reference (which stores each fused step in the storage type). bf16 *compute* on f32
  // tensors is compute_precision's business, below.
  auto f32 = [&](const ValueInfo& v) { return v.dtype == DType::kF32; };
  if (!f32(x) || !f32(w) || !f32(cfg.outputs[0])) unsupported(cfg, "only float32");
  p.has_bias = cfg.has_input(2);
  p.has_z = fused && cfg.has_input(3);
  if (p.has_bias && (!f32(cfg.inputs[2]) || cfg.inputs[2].shape != std::vector<int64_t>{w.shape[0]}))
    unsupported(cfg, "bias must be float32 [M]");
  if (p.has_z && (!f32(cfg.inputs[3]) || cfg.inputs[3].shape != cfg.outputs[0].shape))
    unsupported(cfg, "Z must be float32 with Y's shape");
  if (x.numel() == 0 || w.numel() == 0 || cfg.outputs[0].numel() == 0) unsupported(cfg, "empty tensors");
  // A bf16-marked node runs in bf16 where the host has native bf16 kernels and in float32 elsewhere;
  // never in float32 on a bf16 host, so the precision the user asked for is what runs. Winograd has
  // no bf16 form: it takes such nodes only as float32 on hosts without bf16.
  if (fused) {
    const std::string& precision = cfg.view().attr_string("compute_precision");
    if (!precision.empty() && precision != "bf16") unsupported(cfg, "compute_precision " + precision);
    p.bf16 = precision == "bf16" && host_has_fast_bf16();
  }
  if (p.bf16 && variant == ConvVariant::kWinograd) unsupported(cfg, "no bf16 Winograd convolution");

  p.group = cfg.view().attr_int("group");
  const int64_t channels = x.shape[1], maps = w.shape[0];
  if (p.group < 1 || channels != w.shape[1] * p.group || maps % p.group != 0) unsupported(cfg, "bad group");
  const std::vector<int64_t> kernel(w.shape.begin() + 2, w.shape.end());
  const auto& ks = cfg.view().attr_ints("kernel_shape");
  if (!ks.empty() && ks != kernel) unsupported(cfg, "kernel_shape does not match W");
  const Window win = resolve_window(cfg, std::vector<int64_t>(x.shape.begin() + 2, x.shape.end()), kernel);
  check_output_shape(cfg, maps, win);

  if (fused) {
    p.activation = cfg.view().attr_string("activation");
    p.act_params = cfg.view().attr_floats("activation_params");
    if (p.activation == "Clip" && p.act_params.size() != 2) unsupported(cfg, "Clip needs [min, max]");
  }
  dnnl::post_ops act_ops;
  if (!append_activation(act_ops, p.activation, p.act_params)) unsupported(cfg, "activation " + p.activation);
  const bool has_act = act_ops.len() > 0;

  switch (variant) {
    case ConvVariant::kChannelsLast: p.layout = Layout::kChannelsLast; break;
    case ConvVariant::kPlain: p.layout = Layout::kPlain; break;
    case ConvVariant::kWinograd: p.layout = x.layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
  }
  const auto dt = memory::data_type::f32;
  const auto cdt = p.bf16 ? memory::data_type::bf16 : dt;  // what the primitive multiplies: X and W
  const Tag tag = act_tag(p.rank, p.layout);
  p.x_md = memory::desc(x.shape, dt, tag);
  p.y_md = memory::desc(cfg.outputs[0].shape, dt, tag);
  memory::dims wdims = w.shape;
  if (p.group > 1) {
    wdims = {p.group, maps / p.group, w.shape[1]};
    wdims.insert(wdims.end(), kernel.begin(), kernel.end());
  }
  p.w_user_md = memory::desc(wdims, dt, weight_tag(p.rank, p.group > 1));
  p.b_md = memory::desc({maps}, dt, Tag::x);
  p.zero_md = memory::desc(memory::dims(p.rank, 1), dt, act_tag(p.rank, Layout::kPlain));

  auto& eng = dnnl_engine();
  const bool wino = variant == ConvVariant::kWinograd;
  const auto alg = wino ? dnnl::algorithm::convolution_winograd : dnnl::algorithm::convolution_direct;
  // Winograd exists only for blocked activations, so it picks them (format any) and the kernel reorders.
  // bf16 reads X converted to bf16 in X's own layout.
  const memory::desc src_md =
      wino ? memory::desc(x.shape, dt, Tag::any) : (p.bf16 ? memory::desc(x.shape, cdt, tag) : p.x_md);
  const memory::desc dst_md = wino ? memory::desc(cfg.outputs[0].shape, dt, Tag::any) : p.y_md;
  const memory::desc w_any(wdims, cdt, Tag::any);
  const auto strides = win.strides, dil = minus_one(win.dilations), pl = win.pad_begin, pr = win.pad_end;
  const auto desc = p.has_bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, alg, src_md, w_any,
                                                                 p.b_md, dst_md, strides, dil, pl, pr)
                               : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, alg, src_md, w_any,
                                                                 dst_md, strides, dil, pl, pr);
  auto make_pd = [&](bool z_op, bool act_op, bool z_sum = false) {
    dnnl::post_ops ops;
    if (z_sum) ops.append_sum(1.f);
    if (z_op) ops.append_binary(dnnl::algorithm::binary_add, p.y_md);
    if (act_op) append_activation(ops, p.activation, p.act_params);
    dnnl::primitive_attr attr = user_scratchpad_attr();
    attr.set_post_ops(ops);
    return dnnl::convolution_forward::primitive_desc(desc, attr, eng);
  };
  auto try_pd = [&](bool z_op, bool act_op,
                    bool z_sum = false) -> std::optional<dnnl::convolution_forward::primitive_desc> {
    try {
      return make_pd(z_op, act_op, z_sum);
    } catch (const dnnl::error&) {
      return std::nullopt;
    }
  };

  // Where the residual add and the activation go (measured on Sapphire Rapids, oneDNN 2.6, 2 threads):
  // - gemm-based convolutions (plain layout) apply post-ops in a slow extra pass: a ResNet 3x3 64->64
  //   56x56 takes 1.06 ms alone, 1.82 with a fused Relu, 6.7 with a fused binary add, but 1.13 as
  //   convolution + a separate binary add with the Relu as the add's post-op. So: always separate.
  // - brgconv (channels-last) has no full-tensor binary post-op, so asking for one falls back to the
  //   plain jit kernel (0.65 ms vs 0.52 for brgconv + a separate add); jit_1x1 and jit_dw with the
  //   fused add beat the separate pass (64->256 1x1 56x56: 0.33 vs 0.36; depthwise 0.015 vs 0.023).
  //   A sum post-op needs Z copied into Y first and was slower than either (0.40, 0.59, 0.030).
  // - eltwise post-ops on jit/brgconv kernels are nearly free: fused.
  dnnl::convolution_forward::primitive_desc bare = make_pd(false, false);  // throws when oneDNN refuses
  const std::string bare_impl = bare.impl_info_str();
  if (p.bf16 && bare_impl.rfind("ref", 0) == 0) unsupported(cfg, "oneDNN has only its reference bf16 kernel here");
  p.conv_pd = bare;
  // When the program lets Y take over Z's buffer (Z dead after this node), a sum post-op
  // accumulates onto Z in place with no copy and keeps brgconv: the cheapest residual add.
  if (p.has_z && !wino && cfg.output0_inplace_of == 3 && !contains(bare_impl, "gemm")) {
    if (auto f = try_pd(false, has_act, true)) {
      const std::string impl = f->impl_info_str();
      if (impl == bare_impl || contains(impl, "1x1") || contains(impl, "_dw")) {
        p.conv_pd = *f;
        p.z_sum = true;
        p.act_post_op = has_act;
      }
    }
  }
  if (cfg.output0_inplace_of >= 0 && !p.z_sum)
    unsupported(cfg, "writing Y over Z needs the sum post-op, which oneDNN refused here");
  if ((p.has_z || has_act) && !p.z_sum) {
    if (!contains(bare_impl, "gemm")) {
      if (p.has_z && !wino) {
        if (auto f = try_pd(true, has_act)) {
          const std::string impl = f->impl_info_str();
          if (impl == bare_impl || contains(impl, "1x1") || contains(impl, "_dw")) {
            p.conv_pd = *f;
            p.z_post_op = true;
            p.act_post_op = has_act;
          }
        }
      }
      if (!p.z_post_op && has_act && !p.has_z) {
        if (auto f = try_pd(false, true); f && !contains(f->impl_info_str(), "gemm")) {
          p.conv_pd = *f;
          p.act_post_op = true;
        }
      }
    }
    if ((p.has_z && !p.z_post_op) || (has_act && !p.act_post_op)) {
      // The epilogue: a binary add of Z (or of a broadcast zero) with the activation as its post-op.
      dnnl::primitive_attr attr = user_scratchpad_attr();
      attr.set_post_ops(act_ops);
      p.epilogue_pd = dnnl::binary::primitive_desc(
          dnnl::binary::desc(dnnl::algorithm::binary_add, p.y_md, p.has_z ? p.y_md : p.zero_md, p.y_md), attr, eng);
    }
  }

  if (!wino && (p.conv_pd.src_desc() != src_md || p.conv_pd.dst_desc() != p.y_md))
    unsupported(cfg, "oneDNN chose other activation formats");
  p.x_via_scratch = wino || p.bf16;
  p.y_via_scratch = wino;
  const dnnl::primitive_attr attr = user_scratchpad_attr();
  // f32 -> bf16 in the reorder rounds to nearest even (oneDNN's conversion, vcvtneps2bf16 in its jit).
  if (p.x_via_scratch) p.x_reorder_pd = dnnl::reorder::primitive_desc(eng, p.x_md, eng, p.conv_pd.src_desc(), attr);
  if (p.y_via_scratch) p.y_reorder_pd = dnnl::reorder::primitive_desc(eng, p.conv_pd.dst_desc(), eng, p.y_md, attr);
  if (!w.constant)
    p.w_reorder_pd =
        dnnl::reorder::primitive_desc(eng, p.w_user_md, eng, p.conv_pd.weights_desc(), user_scratchpad_attr());
  return p;
}

class DnnlConvKernel final : public CpuKernel {
 public:
  DnnlConvKernel(const KernelConfig& cfg, ConvPlan plan) : p_(std::move(plan)), conv_(p_.conv_pd) {
    auto& eng = dnnl_engine();
    auto& strm = dnnl_stream();
    if (p_.epilogue_pd) epilogue_ = dnnl::binary(*p_.epilogue_pd);
    if (p_.x_reorder_pd) x_reorder_ = dnnl::reorder(*p_.x_reorder_pd);
    if (p_.y_reorder_pd) y_reorder_ = dnnl::reorder(*p_.y_reorder_pd);
    if (p_.w_reorder_pd) w_reorder_ = dnnl::reorder(*p_.w_reorder_pd);
    // Constant weights are packed once into the primitive's preferred format.
    if (const Tensor* w = cfg.inputs[1].constant) {
      packed_w_ = memory(p_.conv_pd.weights_desc(), eng);
      memory user(p_.w_user_md, eng, const_cast<void*>(w->raw()));
      dnnl::reorder(user, *packed_w_).execute(strm, user, *packed_w_);
      strm.wait();
    }
    if (p_.has_bias && cfg.inputs[2].constant) {
      const float* b = cfg.inputs[2].constant->data<float>();
      bias_.assign(b, b + cfg.inputs[2].numel());
    }
    // Scratch: [X blocked or bf16][Y blocked][W packed][oneDNN scratchpad shared by the primitives, run in turn].
    size_t pad = p_.conv_pd.scratchpad_desc().get_size();
    if (p_.epilogue_pd) pad = std::max(pad, p_.epilogue_pd->scratchpad_desc().get_size());
    for (const auto* r : {&p_.x_reorder_pd, &p_.y_reorder_pd, &p_.w_reorder_pd})
      if (*r) pad = std::max(pad, (*r)->scratchpad_desc().get_size());
    size_t off = 0;
    if (p_.x_via_scratch) {
      off_x_ = off;
      off += align64(p_.conv_pd.src_desc().get_size());
    }
    if (p_.y_via_scratch) {
      off_y_ = off;
      off += align64(p_.conv_pd.dst_desc().get_size());
    }
    if (p_.w_reorder_pd) {
      off_w_ = off;
      off += align64(p_.conv_pd.weights_desc().get_size());
    }
    off_pad_ = off;
    scratch_bytes_ = off + align64(pad);
  }

  void run(const KernelArgs& args) override {
    auto& eng = dnnl_engine();
    auto& strm = dnnl_stream();
    char* scratch = static_cast<char*>(args.scratch);
    // Each primitive sees the shared scratchpad region through its own descriptor.
    auto pad = [&](const auto& pd) { return memory(pd.scratchpad_desc(), eng, scratch + off_pad_); };
    memory x(p_.x_md, eng, const_cast<void*>(args.inputs[0]));
    memory y(p_.y_md, eng, args.outputs[0]);
    memory w;
    if (packed_w_) {
      w = *packed_w_;
    } else {
      w = memory(p_.conv_pd.weights_desc(), eng, scratch + off_w_);
      memory user(p_.w_user_md, eng, const_cast<void*>(args.inputs[1]));
      w_reorder_->execute(strm,
                          {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, w}, {DNNL_ARG_SCRATCHPAD, pad(*p_.w_reorder_pd)}});
    }
    memory src = x, dst = y;
    if (p_.x_via_scratch) {
      src = memory(p_.conv_pd.src_desc(), eng, scratch + off_x_);
      x_reorder_->execute(strm, {{DNNL_ARG_FROM, x}, {DNNL_ARG_TO, src}, {DNNL_ARG_SCRATCHPAD, pad(*p_.x_reorder_pd)}});
    }
    if (p_.y_via_scratch) dst = memory(p_.conv_pd.dst_desc(), eng, scratch + off_y_);
    std::unordered_map<int, memory> conv_args = {
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, pad(p_.conv_pd)}};
    if (p_.has_bias)
      conv_args[DNNL_ARG_BIAS] =
          memory(p_.b_md, eng, bias_.empty() ? const_cast<void*>(args.inputs[2]) : const_cast<float*>(bias_.data()));
    if (p_.z_post_op)
      conv_args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] =
          memory(p_.y_md, eng, const_cast<void*>(args.inputs[3]));
    if (p_.z_sum && args.inputs[3] != args.outputs[0])
      std::memcpy(args.outputs[0], args.inputs[3], p_.y_md.get_size());  // the sum post-op adds onto Y
    conv_.execute(strm, conv_args);
    if (p_.y_via_scratch)
      y_reorder_->execute(strm, {{DNNL_ARG_FROM, dst}, {DNNL_ARG_TO, y}, {DNNL_ARG_SCRATCHPAD, pad(*p_.y_reorder_pd)}});
    if (epilogue_) {
      memory src1 = p_.has_z ? memory(p_.y_md, eng, const_cast<void*>(args.inputs[3]))
                             : memory(p_.zero_md, eng, const_cast<float*>(&kZero));
      epilogue_->execute(strm, {{DNNL_ARG_SRC_0, y},
                                {DNNL_ARG_SRC_1, src1},
                                {DNNL_ARG_DST, y},
                                {DNNL_ARG_SCRATCHPAD, pad(*p_.epilogue_pd)}});
    }
    strm.wait();
  }

  size_t scratch_bytes() const override { return scratch_bytes_; }

  std::string describe() const override {
    std::string s = std::string(p_.conv_pd.impl_info_str()) + " " + layout_name(p_.layout);
    if (p_.bf16) s += " bf16 (X, W bfloat16; f32 accumulation and output)";
    if (p_.y_via_scratch) s += " via blocked reorders";
    if (p_.z_post_op) s += " +Z post-op";
    if (p_.z_sum) s += " +Z sum in place";
    if (p_.act_post_op) s += " +" + p_.activation + " post-op";
    if (epilogue_)
      s += std::string(" + ") + p_.epilogue_pd->impl_info_str() + " epilogue (" + (p_.has_z ? "Z" : "") +
           (p_.has_z && !p_.activation.empty() ? ", " : "") + p_.activation + ")";
    if (!packed_w_) s += " (W repacked per run)";
    return s;
  }

  std::vector<std::string> required_isa() const override {
    std::vector<std::string> isa = isa_of_impl(p_.conv_pd.impl_info_str());
    if (p_.bf16) add_bf16_isa(isa);
    return isa;
  }

 private:
  static constexpr float kZero = 0.f;
  ConvPlan p_;
  dnnl::convolution_forward conv_;
  std::optional<dnnl::binary> epilogue_;
  std::optional<dnnl::reorder> x_reorder_, y_reorder_, w_reorder_;
  std::optional<memory> packed_w_;
  std::vector<float> bias_;
  size_t off_x_ = 0, off_y_ = 0, off_w_ = 0, off_pad_ = 0, scratch_bytes_ = 0;
};

class DnnlConvTactic final : public Tactic {
 public:
  DnnlConvTactic(std::string name, ConvVariant variant) : name_(std::move(name)), variant_(variant) {}
  std::string name() const override { return name_; }

  bool supports(const KernelConfig& cfg) const override {
    try {
      make_conv_plan(cfg, variant_);
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }

  std::vector<Layout> input_layouts(const KernelConfig& cfg) const override {
    Layout act = Layout::kPlain;
    if (variant_ == ConvVariant::kChannelsLast) act = Layout::kChannelsLast;
    if (variant_ == ConvVariant::kWinograd)
      act = cfg.inputs[0].layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
    std::vector<Layout> l(cfg.inputs.size(), Layout::kPlain);  // W and B plain
    l[0] = variant_ == ConvVariant::kWinograd ? Layout::kAny : act;
    if (l.size() > 3) l[3] = act;  // Z in Y's layout
    return l;
  }

  // Only when the plan really accumulates with a sum post-op: the other residual paths read Z
  // after the convolution has written Y, so Y must not be Z's buffer.
  int inplace_input(const KernelConfig& cfg) const override {
    if (variant_ == ConvVariant::kWinograd || !cfg.has_input(3)) return -1;
    try {
      KernelConfig c = cfg;
      c.output0_inplace_of = 3;
      return make_conv_plan(c, variant_).z_sum ? 3 : -1;
    } catch (const std::exception&) {
      return -1;
    }
  }

  std::vector<Layout> output_layouts(const KernelConfig& cfg) const override {
    Layout act = variant_ == ConvVariant::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
    if (variant_ == ConvVariant::kWinograd)
      act = cfg.inputs[0].layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
    return std::vector<Layout>(cfg.outputs.size(), act);
  }

  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    const ThreadCountScope threads(cfg.threads);
    try {
      return std::make_unique<DnnlConvKernel>(cfg, make_conv_plan(cfg, variant_));
    } catch (const dnnl::error& e) {
      unsupported(cfg, std::string("oneDNN: ") + e.what());
    }
  }

 private:
  std::string name_;
  ConvVariant variant_;
};

// ---- Int8 convolution (kiln::QConv)
//
// oneDNN's u8/s8 x s8 convolution with s32 accumulation. The real-valued result is formed by the
// output scales (x_scale * w_scale[c]) with the bias pre-divided into accumulator units (oneDNN 2.x
// adds the bias before scaling); then, as post-ops in the real domain, the residual (a sum post-op
// reading Z's int8 bytes in Y's buffer with Z's scale and zero point, or a binary add of a float
// Z), the activation, and for an int8 output the requantization y / y_scale + y_zero_point as a
// linear post-op before oneDNN's saturating conversion. Activations are channels-last.

struct QConvPlan {
  size_t rank = 0;
  int64_t group = 1;
  bool has_bias = false, has_z = false;
  bool z_sum = false;       // Z (Y's size) accumulated by the sum post-op; else a float Z as binary post-op
  bool src_zp = false;      // X has a nonzero zero point, passed at run time
  int32_t x_zp = 0;
  DType y_dtype = DType::kF32;
  std::vector<float> acc_scale;  // x_scale * w_scale[c], per output channel (or one)
  memory::desc x_md, y_md, z_md, w_user_md, b_md;
  dnnl::convolution_forward::primitive_desc pd;
};

QConvPlan make_qconv_plan(const KernelConfig& cfg) {
  if (cfg.inputs.size() < 2 || !cfg.has_input(0) || !cfg.has_input(1)) unsupported(cfg, "missing X or W");
  if (cfg.outputs.empty() || !cfg.outputs[0].present()) unsupported(cfg, "missing Y");
  const ValueInfo& x = cfg.inputs[0];
  const ValueInfo& w = cfg.inputs[1];
  const NodeView v = cfg.view();
  QConvPlan p;
  p.rank = x.shape.size();
  if (p.rank < 3 || p.rank > 5 || w.shape.size() != p.rank) unsupported(cfg, "only 1-D, 2-D and 3-D convolutions");
  if (!dtype_is_8bit(x.dtype) || w.dtype != DType::kI8) unsupported(cfg, "X must be 8-bit and W int8");
  if (!w.constant) unsupported(cfg, "W must be constant");
  p.y_dtype = cfg.outputs[0].dtype;
  if (p.y_dtype != DType::kF32 && !dtype_is_8bit(p.y_dtype)) unsupported(cfg, "Y type");
  p.has_bias = cfg.has_input(2);
  if (p.has_bias && (cfg.inputs[2].dtype != DType::kF32 || !cfg.inputs[2].constant ||
                     cfg.inputs[2].shape != std::vector<int64_t>{w.shape[0]}))
    unsupported(cfg, "B must be a constant float32 [M]");
  p.has_z = cfg.has_input(3);
  if (p.has_z) {
    const ValueInfo& z = cfg.inputs[3];
    if (z.shape != cfg.outputs[0].shape) unsupported(cfg, "Z must have Y's shape");
    if (z.dtype == p.y_dtype || (dtype_is_8bit(z.dtype) && dtype_is_8bit(p.y_dtype))) p.z_sum = true;
    else if (z.dtype != DType::kF32) unsupported(cfg, "an 8-bit Z needs an 8-bit Y");
  }
  if (x.numel() == 0 || w.numel() == 0 || cfg.outputs[0].numel() == 0) unsupported(cfg, "empty tensors");
  p.group = v.attr_int("group");
  const int64_t channels = x.shape[1], maps = w.shape[0];
  if (p.group < 1 || channels != w.shape[1] * p.group || maps % p.group != 0) unsupported(cfg, "bad group");
  const std::vector<int64_t> kernel(w.shape.begin() + 2, w.shape.end());
  const auto& ks = v.attr_ints("kernel_shape");
  if (!ks.empty() && ks != kernel) unsupported(cfg, "kernel_shape does not match W");
  const Window win = resolve_window(cfg, std::vector<int64_t>(x.shape.begin() + 2, x.shape.end()), kernel);
  check_output_shape(cfg, maps, win);

  const float x_scale = v.attr_float("x_scale");
  const auto& w_scale = v.attr_floats("w_scale");
  if (w_scale.size() != 1 && static_cast<int64_t>(w_scale.size()) != maps) unsupported(cfg, "w_scale size");
  for (float s : w_scale) p.acc_scale.push_back(x_scale * s);
  p.x_zp = static_cast<int32_t>(v.attr_int("x_zero_point"));
  p.src_zp = p.x_zp != 0;

  const std::string activation = v.attr_string("activation");
  const std::vector<float> act_params = v.attr_floats("activation_params");
  dnnl::post_ops ops;
  if (p.has_z) {
    if (p.z_sum) {
      const bool int8 = dtype_is_8bit(p.y_dtype);
      ops.append_sum(int8 ? v.attr_float("z_scale") : 1.f, int8 ? static_cast<int32_t>(v.attr_int("z_zero_point")) : 0,
                     dnnl_dtype(cfg.inputs[3].dtype));
    } else {
      ops.append_binary(dnnl::algorithm::binary_add,
                        memory::desc(cfg.outputs[0].shape, memory::data_type::f32, act_tag(p.rank, Layout::kChannelsLast)));
    }
  }
  if (!append_activation(ops, activation, act_params)) unsupported(cfg, "activation " + activation);
  if (dtype_is_8bit(p.y_dtype))
    ops.append_eltwise(1.f, dnnl::algorithm::eltwise_linear, 1.f / v.attr_float("y_scale"),
                       static_cast<float>(v.attr_int("y_zero_point")));

  const Tag tag = act_tag(p.rank, Layout::kChannelsLast);
  p.x_md = memory::desc(x.shape, dnnl_dtype(x.dtype), tag);
  p.y_md = memory::desc(cfg.outputs[0].shape, dnnl_dtype(p.y_dtype), tag);
  if (p.has_z) p.z_md = memory::desc(cfg.outputs[0].shape, dnnl_dtype(cfg.inputs[3].dtype), tag);
  memory::dims wdims = w.shape;
  if (p.group > 1) {
    wdims = {p.group, maps / p.group, w.shape[1]};
    wdims.insert(wdims.end(), kernel.begin(), kernel.end());
  }
  p.w_user_md = memory::desc(wdims, memory::data_type::s8, weight_tag(p.rank, p.group > 1));
  p.b_md = memory::desc({maps}, memory::data_type::f32, Tag::x);
  const memory::desc w_any(wdims, memory::data_type::s8, Tag::any);
  const auto dil = minus_one(win.dilations);
  const auto desc =
      p.has_bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference,
                                                   dnnl::algorithm::convolution_direct, p.x_md, w_any, p.b_md, p.y_md,
                                                   win.strides, dil, win.pad_begin, win.pad_end)
                 : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference,
                                                   dnnl::algorithm::convolution_direct, p.x_md, w_any, p.y_md,
                                                   win.strides, dil, win.pad_begin, win.pad_end);
  dnnl::primitive_attr attr = user_scratchpad_attr();
  attr.set_output_scales(p.acc_scale.size() == 1 ? 0 : 1 << 1, p.acc_scale);
  if (p.src_zp) attr.set_zero_points(DNNL_ARG_SRC, 0, {DNNL_RUNTIME_S32_VAL});
  attr.set_post_ops(ops);
  p.pd = dnnl::convolution_forward::primitive_desc(desc, attr, dnnl_engine());
  if (p.pd.src_desc() != p.x_md || p.pd.dst_desc() != p.y_md) unsupported(cfg, "oneDNN chose other activation formats");
  return p;
}

class DnnlQConvKernel final : public CpuKernel {
 public:
  DnnlQConvKernel(const KernelConfig& cfg, QConvPlan plan) : p_(std::move(plan)), conv_(p_.pd) {
    auto& eng = dnnl_engine();
    auto& strm = dnnl_stream();
    packed_w_ = memory(p_.pd.weights_desc(), eng);
    memory user(p_.w_user_md, eng, const_cast<void*>(cfg.inputs[1].constant->raw()));
    dnnl::reorder(user, packed_w_).execute(strm, user, packed_w_);
    strm.wait();
    if (p_.has_bias) {
      // Bias in accumulator units: B[c] / (x_scale * w_scale[c]).
      const float* b = cfg.inputs[2].constant->data<float>();
      bias_.resize(static_cast<size_t>(cfg.inputs[2].numel()));
      for (size_t c = 0; c < bias_.size(); ++c) bias_[c] = b[c] / p_.acc_scale[p_.acc_scale.size() == 1 ? 0 : c];
    }
    scratch_bytes_ = align64(p_.pd.scratchpad_desc().get_size());
  }

  void run(const KernelArgs& args) override {
    auto& eng = dnnl_engine();
    auto& strm = dnnl_stream();
    memory x(p_.x_md, eng, const_cast<void*>(args.inputs[0]));
    memory y(p_.y_md, eng, args.outputs[0]);
    std::unordered_map<int, memory> a = {{DNNL_ARG_SRC, x},
                                         {DNNL_ARG_WEIGHTS, packed_w_},
                                         {DNNL_ARG_DST, y},
                                         {DNNL_ARG_SCRATCHPAD, memory(p_.pd.scratchpad_desc(), eng, args.scratch)}};
    if (p_.has_bias) a[DNNL_ARG_BIAS] = memory(p_.b_md, eng, bias_.data());
    if (p_.src_zp)
      a[DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC] =
          memory(memory::desc({1}, memory::data_type::s32, Tag::x), eng, const_cast<int32_t*>(&p_.x_zp));
    if (p_.has_z && !p_.z_sum)
      a[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = memory(p_.z_md, eng, const_cast<void*>(args.inputs[3]));
    if (p_.z_sum && args.inputs[3] != args.outputs[0])
      std::memcpy(args.outputs[0], args.inputs[3], p_.y_md.get_size());  // the sum post-op adds onto Y
    conv_.execute(strm, a);
    strm.wait();
  }

  size_t scratch_bytes() const override { return scratch_bytes_; }
  std::string describe() const override {
    std::string s = std::string(p_.pd.impl_info_str()) + " channels_last int8";
    if (p_.z_sum) s += " +Z sum";
    else if (p_.has_z) s += " +Z post-op";
    return s + " -> " + std::string(dtype_name(p_.y_dtype));
  }
  std::vector<std::string> required_isa() const override { return isa_of_impl(p_.pd.impl_info_str()); }

 private:
  QConvPlan p_;
  dnnl::convolution_forward conv_;
  memory packed_w_;
  std::vector<float> bias_;
  size_t scratch_bytes_ = 0;
};

class DnnlQConvTactic final : public Tactic {
 public:
  std::string name() const override { return "dnnl.qconv.nhwc"; }
  bool supports(const KernelConfig& cfg) const override {
    try {
      make_qconv_plan(cfg);
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }
  std::vector<Layout> input_layouts(const KernelConfig& cfg) const override {
    std::vector<Layout> l(cfg.inputs.size(), Layout::kPlain);
    l[0] = Layout::kChannelsLast;
    if (l.size() > 3) l[3] = Layout::kChannelsLast;
    return l;
  }
  std::vector<Layout> output_layouts(const KernelConfig& cfg) const override {
    return std::vector<Layout>(cfg.outputs.size(), Layout::kChannelsLast);
  }
  int inplace_input(const KernelConfig& cfg) const override {
    return cfg.has_input(3) && cfg.inputs[3].dtype == cfg.outputs[0].dtype ? 3 : -1;
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    const ThreadCountScope threads(cfg.threads);
    try {
      return std::make_unique<DnnlQConvKernel>(cfg, make_qconv_plan(cfg));
    } catch (const dnnl::error& e) {
      unsupported(cfg, std::string("oneDNN: ") + e.what());
    }
  }
};

// ---- Pooling

bool is_global_pool(const std::string& op) { return op == "GlobalAveragePool" || op == "GlobalMaxPool"; }

struct PoolPlan {
  Layout layout = Layout::kPlain;
  memory::desc x_md, y_md;
  dnnl::pooling_v2_forward::primitive_desc pd;
};

PoolPlan make_pool_plan(const KernelConfig& cfg) {
  const std::string& op = cfg.node->op_type;
  const bool is_max = op == "MaxPool" || op == "GlobalMaxPool";
  if (!cfg.has_input(0) || cfg.outputs.empty() || !cfg.outputs[0].present()) unsupported(cfg, "missing X or Y");
  if (cfg.outputs.size() > 1 && cfg.outputs[1].present()) unsupported(cfg, "MaxPool's Indices output");
  const ValueInfo& x = cfg.inputs[0];
  const size_t rank = x.shape.size();
  if (rank < 3 || rank > 5) unsupported(cfg, "only 1-D, 2-D and 3-D pooling");
  if (x.numel() == 0) unsupported(cfg, "empty tensors");
  // Max is exact in any type oneDNN has; averages only in f32 (16-bit types would round differently).
  if (is_max ? !dnnl_supports_dtype(x.dtype) : x.dtype != DType::kF32) unsupported(cfg, "dtype");
  if (cfg.outputs[0].dtype != x.dtype) unsupported(cfg, "output dtype");

  const std::vector<int64_t> in(x.shape.begin() + 2, x.shape.end());
  const size_t nd = in.size();
  Window w;
  if (is_global_pool(op)) {
    w.in = in;
    w.kernel = in;
    w.strides = w.dilations = w.out = std::vector<int64_t>(nd, 1);
    w.pad_begin = w.pad_end = std::vector<int64_t>(nd, 0);
  } else {
    w = resolve_window(cfg, in, cfg.view().attr_ints("kernel_shape"));
  }
  check_output_shape(cfg, x.shape[1], w);

  const bool include_pad = op == "AveragePool" && cfg.schema->find_attr("count_include_pad") &&
                           cfg.view().attr_int("count_include_pad") != 0;
  // oneDNN wants the right padding that reproduces the output size with floor division. In ceil mode
  // that is more than ONNX's end pad; harmless for max and exclude-pad averages (padding never counts),
  // but include-pad averages divide by the full window where the reference counts only taps inside
  // ONNX's padding: those are not supported.
  std::vector<int64_t> pad_r(nd);
  for (size_t i = 0; i < nd; ++i) {
    const int64_t eff = (w.kernel[i] - 1) * w.dilations[i] + 1;
    pad_r[i] = std::max<int64_t>(0, (w.out[i] - 1) * w.strides[i] + eff - w.in[i] - w.pad_begin[i]);
    if (include_pad && pad_r[i] > w.pad_end[i]) unsupported(cfg, "count_include_pad with a window past the end pad");
    // A window with no tap inside the input is -inf / 0 in the reference and lowest / 0/0 in oneDNN.
    for (int64_t o = 0; o < w.out[i]; ++o) {
      bool any = false;
      for (int64_t k = 0; k < w.kernel[i] && !any; ++k) {
        const int64_t ip = o * w.strides[i] - w.pad_begin[i] + k * w.dilations[i];
        any = ip >= 0 && ip < w.in[i];
      }
      if (!any) unsupported(cfg, "a window lies entirely in the padding");
    }
  }

  PoolPlan p;
  p.layout = x.layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
  const auto dt = dnnl_dtype(x.dtype);
  p.x_md = memory::desc(x.shape, dt, act_tag(rank, p.layout));
  p.y_md = memory::desc(cfg.outputs[0].shape, dt, act_tag(rank, p.layout));
  const auto alg = is_max        ? dnnl::algorithm::pooling_max
                   : include_pad ? dnnl::algorithm::pooling_avg_include_padding
                                 : dnnl::algorithm::pooling_avg_exclude_padding;
  p.pd = dnnl::pooling_v2_forward::primitive_desc(
      dnnl::pooling_v2_forward::desc(dnnl::prop_kind::forward_inference, alg, p.x_md, p.y_md, w.strides, w.kernel,
                                     minus_one(w.dilations), w.pad_begin, pad_r),
      user_scratchpad_attr(), dnnl_engine());
  return p;
}

class DnnlPoolKernel final : public CpuKernel {
 public:
  explicit DnnlPoolKernel(PoolPlan plan) : p_(std::move(plan)), prim_(p_.pd) {}

  void run(const KernelArgs& args) override {
    auto& eng = dnnl_engine();
    auto& strm = dnnl_stream();
    prim_.execute(strm, {{DNNL_ARG_SRC, memory(p_.x_md, eng, const_cast<void*>(args.inputs[0]))},
                         {DNNL_ARG_DST, memory(p_.y_md, eng, args.outputs[0])},
                         {DNNL_ARG_SCRATCHPAD, memory(p_.pd.scratchpad_desc(), eng, args.scratch)}});
    strm.wait();
  }
  size_t scratch_bytes() const override { return p_.pd.scratchpad_desc().get_size(); }
  std::string describe() const override { return std::string(p_.pd.impl_info_str()) + " " + layout_name(p_.layout); }
  std::vector<std::string> required_isa() const override { return isa_of_impl(p_.pd.impl_info_str()); }

 private:
  PoolPlan p_;
  dnnl::pooling_v2_forward prim_;
};

// Input as produced (plain or channels-last), output in the same layout.
class PoolTacticBase : public Tactic {
 public:
  std::vector<Layout> input_layouts(const KernelConfig& cfg) const override {
    return std::vector<Layout>(cfg.inputs.size(), Layout::kAny);
  }
  std::vector<Layout> output_layouts(const KernelConfig& cfg) const override {
    const Layout l = cfg.inputs[0].layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
    return std::vector<Layout>(cfg.outputs.size(), l);
  }
};

class DnnlPoolTactic final : public PoolTacticBase {
 public:
  std::string name() const override { return "dnnl.pool"; }
  bool supports(const KernelConfig& cfg) const override {
    try {
      make_pool_plan(cfg);
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    const ThreadCountScope threads(cfg.threads);
    try {
      return std::make_unique<DnnlPoolKernel>(make_pool_plan(cfg));
    } catch (const dnnl::error& e) {
      unsupported(cfg, std::string("oneDNN: ") + e.what());
    }
  }
};

// ---- Kiln's global pooling loop
//
// GlobalAveragePool / GlobalMaxPool in f32 without oneDNN's per-call setup. Channels-last input is
// reduced row by row (for each channel the same sequential order over spatial positions as the
// reference, so sums are bit-identical); plain input plane by plane with 16 partial sums.

#define KILN_POOL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// acc[c] = sum or max of x[r * stride + c] over rows r, for c < width. (`omp simd`: GCC's -O2 cost
// model does not vectorize loops of unknown trip count on its own.)
KILN_POOL_CLONES void rows_sum(const float* __restrict x, int64_t rows, int64_t stride, int64_t width,
                               float* __restrict acc) {
  for (int64_t c = 0; c < width; ++c) acc[c] = x[c];
  for (int64_t r = 1; r < rows; ++r) {
    const float* row = x + r * stride;
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) acc[c] += row[c];
  }
}

KILN_POOL_CLONES void rows_max(const float* __restrict x, int64_t rows, int64_t stride, int64_t width,
                               float* __restrict acc) {
  for (int64_t c = 0; c < width; ++c) acc[c] = x[c];
  for (int64_t r = 1; r < rows; ++r) {
    const float* row = x + r * stride;
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) acc[c] = acc[c] < row[c] ? row[c] : acc[c];  // std::max's NaN rule
  }
}

// 16 independent lanes vectorize without reassociating any single chain.
KILN_POOL_CLONES float plane_sum(const float* x, int64_t n) {
  float lanes[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
#pragma omp simd
    for (int j = 0; j < 16; ++j) lanes[j] += x[i + j];
  float s = 0;
  for (int j = 0; j < 16; ++j) s += lanes[j];
  for (; i < n; ++i) s += x[i];
  return s;
}

KILN_POOL_CLONES float plane_max(const float* x, int64_t n) {
  float best = x[0];
  int64_t i = 0;
  if (n >= 16) {
    float lanes[16];
    for (int j = 0; j < 16; ++j) lanes[j] = x[j];
    for (i = 16; i + 16 <= n; i += 16)
#pragma omp simd
      for (int j = 0; j < 16; ++j) lanes[j] = lanes[j] < x[i + j] ? x[i + j] : lanes[j];
    for (int j = 0; j < 16; ++j) best = std::max(best, lanes[j]);
  }
  for (; i < n; ++i) best = std::max(best, x[i]);
  return best;
}

class GlobalPoolKernel final : public CpuKernel {
 public:
  GlobalPoolKernel(const KernelConfig& cfg, Layout layout) : layout_(layout) {
    const auto& shape = cfg.inputs[0].shape;
    n_ = shape[0];
    c_ = shape[1];
    spatial_ = shape_numel(shape) / (n_ * c_);
    max_ = cfg.node->op_type == "GlobalMaxPool";
  }

  void run(const KernelArgs& args) override {
    const float* x = static_cast<const float*>(args.inputs[0]);
    float* y = static_cast<float*>(args.outputs[0]);
    const float count = static_cast<float>(spatial_);
    if (layout_ == Layout::kChannelsLast) {
      // Channel blocks of 64 (four cache lines per row; narrower blocks measured slower even when they
      // give idle threads work). Rows are never split, so each channel sums in the reference's order.
      constexpr int64_t block = 64;
      const int64_t blocks = (c_ + block - 1) / block;
#pragma omp parallel for schedule(static)
      for (int64_t t = 0; t < n_ * blocks; ++t) {
        const int64_t n = t / blocks, c0 = (t % blocks) * block, width = std::min(block, c_ - c0);
        const float* src = x + n * spatial_ * c_ + c0;
        float* dst = y + n * c_ + c0;
        if (max_) {
          rows_max(src, spatial_, c_, width, dst);
        } else {
          rows_sum(src, spatial_, c_, width, dst);
          for (int64_t c = 0; c < width; ++c) dst[c] /= count;
        }
      }
    } else {
#pragma omp parallel for schedule(static)
      for (int64_t plane = 0; plane < n_ * c_; ++plane) {
        const float* src = x + plane * spatial_;
        y[plane] = max_ ? plane_max(src, spatial_) : plane_sum(src, spatial_) / count;
      }
    }
  }

  std::string describe() const override {
    return std::string("kiln global ") + (max_ ? "max" : "average") + " pool " + layout_name(layout_) + " (" + isa() +
           ")";
  }
  std::vector<std::string> required_isa() const override {
    const std::string i = isa();
    return i == "generic" ? std::vector<std::string>{} : std::vector<std::string>{i};
  }

 private:
  // The clone target_clones' resolver picks on this machine.
  static std::string isa() {
    if (__builtin_cpu_supports("avx512f")) return "avx512f";
    if (__builtin_cpu_supports("avx2")) return "avx2";
    return "generic";
  }
  Layout layout_;
  int64_t n_ = 0, c_ = 0, spatial_ = 0;
  bool max_ = false;
};

class GlobalPoolTactic final : public PoolTacticBase {
 public:
  std::string name() const override { return "kiln.global_pool"; }
  bool supports(const KernelConfig& cfg) const override {
    if (!is_global_pool(cfg.node->op_type) || !cfg.has_input(0) || cfg.outputs.empty()) return false;
    const ValueInfo& x = cfg.inputs[0];
    if (x.dtype != DType::kF32 || cfg.outputs[0].dtype != DType::kF32 || x.shape.size() < 3) return false;
    if (x.numel() == 0) return false;
    std::vector<int64_t> want = {x.shape[0], x.shape[1]};
    want.resize(x.shape.size(), 1);
    return cfg.outputs[0].shape == want;
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    return std::make_unique<GlobalPoolKernel>(
        cfg, cfg.inputs[0].layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain);
  }
};

}  // namespace

void register_dnnl_conv_tactics(TacticRegistry& r) {
  r.add("kiln", "QConv", std::make_shared<DnnlQConvTactic>());
  for (const char* domain : {"", "kiln"}) {
    const char* op = *domain ? "FusedConv" : "Conv";
    r.add(domain, op, std::make_shared<DnnlConvTactic>("dnnl.conv.nhwc", ConvVariant::kChannelsLast));
    r.add(domain, op, std::make_shared<DnnlConvTactic>("dnnl.conv.nchw", ConvVariant::kPlain));
    r.add(domain, op, std::make_shared<DnnlConvTactic>("dnnl.conv.winograd", ConvVariant::kWinograd));
  }
  auto pool = std::make_shared<DnnlPoolTactic>();
  auto global = std::make_shared<GlobalPoolTactic>();
  for (const char* op : {"MaxPool", "AveragePool"}) r.add("", op, pool);
  // Kiln's loop first: measured faster for the usual N=1 7x7 heads (2048x7x7 average: 3.8 us vs 4.5
  // channels-last, 7.0 vs 28 plain) and any plain input; oneDNN wins on large channels-last planes
  // (64x56x56: 6 us vs 9.5), which timing picks.
  for (const char* op : {"GlobalAveragePool", "GlobalMaxPool"}) {
    r.add("", op, global);
    r.add("", op, pool);
  }
}

}  // namespace kiln::cpu
