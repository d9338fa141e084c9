// The CUDA module's implementation of the core's device interface (src/backends/gpu/device_api.h):
// memory, streams, events and graphs over the CUDA runtime, and Kernel objects wrapping cuBLASLt
// (lt_matmul.h), cuDNN (conv.h) and Kiln's own kernels (kernels.h, ops.h). Exported through three
// C entry points that the core finds with dlsym.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>
#include <memory>
#include <mutex>
#include <string>

#include "backends/cuda/conv.h"
#include "backends/cuda/conv_int8.h"
#include "backends/cuda/cuda_util.h"
#include "backends/cuda/kernels.h"
#include "backends/cuda/lt_matmul.h"
#include "backends/cuda/ops.h"
#include "backends/cuda/stem.h"
#include "backends/gpu/device_api.h"

#include <cudnn.h>

namespace kiln::cuda {
namespace {

using gpu::ElemType;

cudaStream_t st(void* s) { return static_cast<cudaStream_t>(s); }

DType float_type(ElemType t, const char* what) {
  switch (t) {
    case ElemType::kF32: return DType::kF32;
    case ElemType::kF16: return DType::kF16;
    case ElemType::kBF16: return DType::kBF16;
    default: throw CudaError(std::string(what) + ": needs fp32, fp16 or bf16 tensors, got " + elem_type_name(t));
  }
}

class MatmulKernel final : public gpu::Kernel {
 public:
  MatmulKernel(const gpu::MatmulDesc& d, size_t limit, const std::string& tactic) : d_(d) {
    GemmType type = d.type == ElemType::kF16 ? GemmType::kF16 : d.type == ElemType::kBF16 ? GemmType::kBF16 : GemmType::kF32;
    if (d.type != ElemType::kF16 && d.type != ElemType::kBF16 && d.type != ElemType::kF32)
      throw CudaError(std::string("matmul: unsupported type ") + elem_type_name(d.type));
    Epilogue e = Epilogue::kNone;
    using E = gpu::MatmulDesc::Epilogue;
    if (d.bias) e = d.epilogue == E::kRelu ? Epilogue::kBiasRelu : d.epilogue == E::kGeluTanh ? Epilogue::kBiasGelu : Epilogue::kBias;
    else e = d.epilogue == E::kRelu ? Epilogue::kRelu : d.epilogue == E::kGeluTanh ? Epilogue::kGelu : Epilogue::kNone;
    if (d.fp8 && d.type == ElemType::kF32) throw CudaError("matmul: FP8 operands need an FP16 or BF16 output");
    mm_ = std::make_unique<LtMatmul>(GemmShape{d.m, d.n, d.k, d.batch, d.w_stride, d.residual}, type, e, limit, 8,
                                     nullptr, tactic, Fp8Inputs{d.fp8, d.x_scale, d.w_scale});
  }
  // Inputs: x, w, bias (when desc.bias).
  void launch(const void* const* in, void* const* out, void* ws, void* s) const override {
    mm_->run(in[0], in[1], d_.bias ? in[2] : nullptr, out[0], st(s), ws, mm_->chosen_workspace_bytes(),
             d_.residual ? in[d_.bias ? 3 : 2] : nullptr);
  }
  size_t workspace_bytes() const override { return mm_->chosen_workspace_bytes(); }
  std::string describe() const override { return mm_->describe(); }
  double timed_ms() const override { return mm_->chosen_ms(); }
  std::string tactic() const override { return mm_->tactic(); }

 private:
  gpu::MatmulDesc d_;
  std::unique_ptr<LtMatmul> mm_;
};

ConvAct conv_act(gpu::Act a) {
  switch (a) {
    case gpu::Act::kNone: return ConvAct::kNone;
    case gpu::Act::kRelu: return ConvAct::kRelu;
    case gpu::Act::kClip: return ConvAct::kClip;
    case gpu::Act::kSilu: return ConvAct::kSilu;
  }
  throw CudaError("conv: unknown activation");
}

// A convolution on cuDNN: the legacy API's candidates (its fused call, or a plain convolution and
// Kiln's epilogue; tactic "cudnn:..."), and for the activations that call cannot fuse (SiLU, a
// clip), cuDNN's graph API too (one fused kernel; tactic "graph:<n>"). The faster is kept.
class ConvKernel final : public gpu::Kernel {
 public:
  ConvKernel(const gpu::ConvDesc& d, size_t limit, const std::string& tactic) : d_(d) {
    ConvParams p;
    p.n = d.n, p.c = d.c, p.h = d.h, p.w = d.w, p.k = d.k, p.r = d.r, p.s = d.s, p.groups = d.groups;
    p.pad_h = d.pad_h, p.pad_w = d.pad_w, p.stride_h = d.stride_h, p.stride_w = d.stride_w;
    p.dil_h = d.dil_h, p.dil_w = d.dil_w;
    p.type = float_type(d.type, "conv");
    p.bias = d.bias, p.residual = d.residual;
    p.act = conv_act(d.act);
    p.clip_lo = d.clip_lo, p.clip_hi = d.clip_hi;
    if (tactic.rfind("graph:", 0) == 0) {
      graph_ = std::make_unique<CudnnGraphConv>(p, limit, nullptr, tactic);
      return;
    }
    conv_ = std::make_unique<CudnnConv>(p, limit, nullptr, tactic);
    if (!tactic.empty() || (p.act != ConvAct::kSilu && p.act != ConvAct::kClip)) return;
    if (const std::string why = conv_graph_unsupported(p); !why.empty()) {
      graph_note_ = why;
      return;
    }
    try {
      auto g = std::make_unique<CudnnGraphConv>(p, limit, nullptr);
      graph_note_ = "graph " + std::to_string(g->chosen_ms()) + " ms";
      if (g->chosen_ms() < conv_->chosen_ms()) graph_ = std::move(g), conv_.reset();
    } catch (const CudaError& e) {
      if (e.sticky()) throw;
      graph_note_ = e.what();  // the legacy candidates stay
    }
  }
  // Inputs: x, w, bias (when desc.bias), z (when desc.residual).
  void launch(const void* const* in, void* const* out, void* ws, void* s) const override {
    const void* bias = d_.bias ? in[2] : nullptr;
    const void* z = d_.residual ? in[d_.bias ? 3 : 2] : nullptr;
    if (graph_) {
      graph_->run(in[0], in[1], bias, z, out[0], st(s), ws, graph_->workspace_bytes());
      return;
    }
    conv_->run(in[0], in[1], bias, z, out[0], st(s), ws, conv_->workspace_bytes());
  }
  size_t workspace_bytes() const override { return graph_ ? graph_->workspace_bytes() : conv_->workspace_bytes(); }
  std::string describe() const override {
    if (graph_) return graph_->describe();
    return conv_->describe() + (graph_note_.empty() ? "" : "; " + graph_note_);
  }
  double timed_ms() const override { return graph_ ? graph_->chosen_ms() : conv_->chosen_ms(); }
  std::string tactic() const override { return graph_ ? graph_->tactic() : conv_->tactic(); }

 private:
  gpu::ConvDesc d_;
  std::unique_ptr<CudnnConv> conv_;
  std::unique_ptr<CudnnGraphConv> graph_;
  std::string graph_note_;  // what the graph candidate measured, or why there was none
};

// An INT8 convolution (conv_int8.h): Kiln's implicit GEMM with one of its CTA tiles (tactic
// "kiln-int8:<tile>"), for a 1x1 layer that is one GEMM cuBLASLt's INT8 GEMM (tactic "lt:..."), or
// cuDNN's graph API with the whole epilogue fused (tactic "graph8:<n>"). Each tile, cuBLASLt's best
// algorithm and cuDNN's best configuration are timed on scratch buffers; the fastest is kept.
class Int8ConvKernel final : public gpu::Kernel {
 public:
  Int8ConvKernel(const gpu::ConvDesc& d, size_t limit, const std::string& tactic) : d_(d) {
    if (d.groups != 1) throw CudaError("conv int8: grouped convolutions have no INT8 kernel");
    if (d.y_type != ElemType::kI8 && d.y_type != ElemType::kF16) throw CudaError("conv int8: the output must be int8 or fp16");
    if (d.residual && d.z_type != ElemType::kI8 && d.z_type != ElemType::kF16)
      throw CudaError("conv int8: the residual must be int8 or fp16");
    p_.n = d.n, p_.c = d.c, p_.h = d.h, p_.w = d.w, p_.k = d.k, p_.r = d.r, p_.s = d.s;
    p_.pad_h = d.pad_h, p_.pad_w = d.pad_w, p_.stride_h = d.stride_h, p_.stride_w = d.stride_w;
    p_.dil_h = d.dil_h, p_.dil_w = d.dil_w;
    p_.bias = d.bias, p_.residual = d.residual, p_.z_f16 = d.z_type == ElemType::kF16, p_.z_scale = d.z_scale;
    p_.y_f16 = d.y_type == ElemType::kF16, p_.y_scale = d.y_scale;
    if (d.act == gpu::Act::kSilu) throw CudaError("conv int8: the INT8 kernel has no SiLU epilogue");
    p_.act = conv_act(d.act);
    p_.clip_lo = d.clip_lo, p_.clip_hi = d.clip_hi;
    if (const std::string why = conv_int8_unsupported(p_); !why.empty()) throw CudaError("conv int8: " + why);
    if (tactic.rfind("graph8:", 0) == 0) {
      graph_ = std::make_unique<CudnnGraphConv>(int8_conv_shape(p_), int8_graph_quant(p_), limit, nullptr, tactic);
      return;
    }
    if (tactic.rfind("lt:", 0) == 0) {
      if (const std::string why = conv_int8_gemm_unsupported(p_); !why.empty())
        throw CudaError("conv int8: tactic '" + tactic.substr(0, 16) + "...' is cuBLASLt's, but " + why);
      gemm_ = std::make_unique<Int8ConvGemm>(p_, limit, nullptr, tactic);
      return;
    }
    if (!tactic.empty()) {
      const std::string prefix = "kiln-int8:";
      if (tactic.rfind(prefix, 0) != 0 || !parse_int8_tile(tactic.substr(prefix.size()), &tile_))
        throw CudaError("conv int8: tactic '" + tactic + "' is not a tile of Kiln's INT8 convolution");
      if (!int8_tile_takes(p_, tile_))
        throw CudaError("conv int8: tile " + std::string(int8_tile_name(tile_)) + " does not run here or does not take " + p_.str());
      return;
    }
    // Each candidate timed on scratch buffers (time_tactic: as a CUDA graph replays it), filled with the
    // constant non-zero bytes cuDNN's and cuBLASLt's candidates are timed on (zeros run faster).
    const int64_t ny = d.n * p_.out_h() * p_.out_w() * d.k;
    DeviceBuffer x(static_cast<size_t>(d.n * d.h * d.w * d.c)), w(static_cast<size_t>(d.k * d.r * d.s * d.c)),
        sc(static_cast<size_t>(d.k) * 4), b(static_cast<size_t>(d.k) * 4), z(static_cast<size_t>(ny) * 2),
        y(static_cast<size_t>(ny) * 2);
    KILN_CUDA_CHECK(cudaMemset(x.get(), 0x3c, x.bytes()));
    KILN_CUDA_CHECK(cudaMemset(w.get(), 0x31, w.bytes()));
    for (DeviceBuffer* buf : {&sc, &b, &z}) KILN_CUDA_CHECK(cudaMemset(buf->get(), 0x30, buf->bytes()));
    for (int t = 0; t < static_cast<int>(Int8Tile::kCount); ++t) {
      if (!int8_tile_takes(p_, static_cast<Int8Tile>(t))) continue;  // the wgmma tiles off Hopper, the streaming ones on other shapes
      const float ms = time_tactic(
          [&](cudaStream_t s) {
            conv_int8(p_, static_cast<Int8Tile>(t), static_cast<const int8_t*>(x.get()),
                      static_cast<const int8_t*>(w.get()), static_cast<const float*>(sc.get()),
                      static_cast<const float*>(b.get()), z.get(), y.get(), s);
          },
          nullptr);
      if (ms_ < 0 || ms < ms_) ms_ = ms, tile_ = static_cast<Int8Tile>(t);
    }
    time_graph(limit);
    if (!conv_int8_gemm_unsupported(p_).empty()) return;
    std::unique_ptr<Int8ConvGemm> gemm;
    try {
      gemm = std::make_unique<Int8ConvGemm>(p_, limit, nullptr);
    } catch (const CudaError& e) {
      if (e.sticky()) throw;
      gemm_note_ = e.what();  // no cuBLASLt algorithm here: the tiles stay
      return;
    }
    DeviceBuffer ws(gemm->workspace_bytes());
    // The scales-and-GEMM pair, as the program runs it.
    const float ms = time_tactic(
        [&](cudaStream_t s) {
          gemm->run(static_cast<const int8_t*>(x.get()), static_cast<const int8_t*>(w.get()),
                    static_cast<const float*>(sc.get()), static_cast<const float*>(b.get()), z.get(), y.get(), s, ws.get());
        },
        nullptr);
    gemm_note_ += std::string(gemm_note_.empty() ? "" : "; ") + "cublasLt " + std::to_string(ms) + " ms";
    if (ms < ms_) ms_ = ms, gemm_ = std::move(gemm), graph_.reset();
  }
  void launch(const void* const* in, void* const* out, void* ws, void* s) const override {
    const float* bias = d_.bias ? static_cast<const float*>(in[3]) : nullptr;
    const void* z = d_.residual ? in[d_.bias ? 4 : 3] : nullptr;
    if (graph_) {
      graph_->run_quant(in[0], in[1], static_cast<const float*>(in[2]), bias, z, out[0], st(s), ws, graph_->workspace_bytes());
      return;
    }
    if (gemm_) {
      gemm_->run(static_cast<const int8_t*>(in[0]), static_cast<const int8_t*>(in[1]), static_cast<const float*>(in[2]),
                 bias, z, out[0], st(s), ws);
      return;
    }
    conv_int8(p_, tile_, static_cast<const int8_t*>(in[0]), static_cast<const int8_t*>(in[1]),
              static_cast<const float*>(in[2]), bias, z, out[0], st(s));
  }
  size_t workspace_bytes() const override {
    return graph_ ? graph_->workspace_bytes() : gemm_ ? gemm_->workspace_bytes() : 0;
  }
  std::string describe() const override {
    const std::string timed = ms_ < 0 ? std::string(" (recorded tactic)") : " (" + std::to_string(ms_) + " ms)";
    if (graph_) return graph_->describe() + (ms_ < 0 ? "" : timed);  // a recorded graph says so itself
    if (gemm_) return "int8 1x1 as one gemm: " + gemm_->describe() + " -> " + elem_type_name(d_.y_type) + timed;
    return "kiln int8 implicit gemm " + std::string(int8_tile_name(tile_)) + " -> " + elem_type_name(d_.y_type) + timed +
           (gemm_note_.empty() ? "" : "; " + gemm_note_);
  }
  double timed_ms() const override { return ms_; }
  std::string tactic() const override {
    return graph_ ? graph_->tactic() : gemm_ ? gemm_->tactic() : std::string("kiln-int8:") + int8_tile_name(tile_);
  }

 private:
  // cuDNN's graph candidate, kept when faster than the tiles (its own configurations timed inside).
  void time_graph(size_t limit) {
    const ConvParams shape = int8_conv_shape(p_);
    const GraphQuant q = int8_graph_quant(p_);
    if (!conv_graph_quant_unsupported(shape, q).empty()) return;
    try {
      auto g = std::make_unique<CudnnGraphConv>(shape, q, limit, nullptr);
      const float ms = g->chosen_ms();
      gemm_note_ = "cudnn graph " + std::to_string(ms) + " ms";
      if (ms >= 0 && (ms_ < 0 || ms < ms_)) ms_ = ms, graph_ = std::move(g);
    } catch (const CudaError& e) {
      if (e.sticky()) throw;
      gemm_note_ = "no cudnn graph engine";
    }
  }

  gpu::ConvDesc d_;
  Int8ConvParams p_;
  Int8Tile tile_ = Int8Tile::k128x128;
  std::unique_ptr<Int8ConvGemm> gemm_;
  std::unique_ptr<CudnnGraphConv> graph_;
  std::string gemm_note_;  // what cuDNN's and cuBLASLt's candidates measured, or why there was none
  float ms_ = -1;
};

class DepthwiseKernel final : public gpu::Kernel {
 public:
  DepthwiseKernel(const gpu::ConvDesc& d, const std::string& tactic) : d_(d) {
    if (d.groups != d.c || d.k != d.c) throw CudaError("depthwise: needs groups == in channels == out channels");
    p_.n = d.n, p_.h = d.h, p_.w = d.w, p_.c = d.c;
    p_.r = static_cast<int>(d.r), p_.s = static_cast<int>(d.s);
    p_.sh = d.stride_h, p_.sw = d.stride_w, p_.pad_t = d.pad_h, p_.pad_l = d.pad_w, p_.dh = d.dil_h, p_.dw = d.dil_w;
    p_.oh = (d.h + 2 * d.pad_h - d.dil_h * (d.r - 1) - 1) / d.stride_h + 1;
    p_.ow = (d.w + 2 * d.pad_w - d.dil_w * (d.s - 1) - 1) / d.stride_w + 1;
    if (p_.oh <= 0 || p_.ow <= 0) throw CudaError("depthwise: the kernel is larger than the padded input");
    if (d.act == gpu::Act::kSilu) throw CudaError("depthwise: Kiln's depthwise kernel has no SiLU epilogue");
    if (d.act == gpu::Act::kRelu) p_.lo = 0;
    if (d.act == gpu::Act::kClip) p_.lo = d.clip_lo, p_.hi = d.clip_hi;
    if (d.in_clip) p_.in_hi = d.in_clip_hi;
    if (!tactic.empty() && tactic != kTactic)
      throw CudaError("depthwise: tactic '" + tactic + "' is not Kiln's depthwise kernel ('" + kTactic + "')");
    if (!tactic.empty()) return;  // recorded: no timing
    // Timed on scratch buffers as a CUDA graph replays it (time_tactic), to compete with cuDNN.
    const size_t es = elem_size(d.type);
    DeviceBuffer x(static_cast<size_t>(d.n * d.h * d.w * d.c) * es), w(static_cast<size_t>(d.r * d.s * d.c) * es),
        b(static_cast<size_t>(d.c) * es), y(static_cast<size_t>(d.n * p_.oh * p_.ow * d.c) * es);
    KILN_CUDA_CHECK(cudaMemset(x.get(), 0, x.bytes()));
    KILN_CUDA_CHECK(cudaMemset(w.get(), 0, w.bytes()));
    KILN_CUDA_CHECK(cudaMemset(b.get(), 0, b.bytes()));
    ms_ = time_tactic(
        [&](cudaStream_t s) {
          depthwise_nhwc(d.type, x.get(), w.get(), d.bias ? b.get() : nullptr, d.residual ? y.get() : nullptr, y.get(),
                         p_, s);
        },
        nullptr);
  }
  void launch(const void* const* in, void* const* out, void*, void* s) const override {
    const void* bias = d_.bias ? in[2] : nullptr;
    const void* z = d_.residual ? in[d_.bias ? 3 : 2] : nullptr;
    depthwise_nhwc(d_.type, in[0], in[1], bias, z, out[0], p_, st(s));
  }
  std::string describe() const override {
    return std::string("kiln depthwise nhwc ") + elem_type_name(d_.type) +
           (d_.in_clip ? " input<=" + std::to_string(d_.in_clip_hi) : std::string()) +
           (ms_ < 0 ? std::string(" (recorded tactic)") : " (" + std::to_string(ms_) + " ms)");
  }
  double timed_ms() const override { return ms_; }
  std::string tactic() const override { return kTactic; }
  static constexpr const char* kTactic = "kiln-depthwise";

 private:
  gpu::ConvDesc d_;
  Depthwise2d p_;
  float ms_ = -1;
};

// A kernel from a lambda over (inputs, outputs, stream) with a fixed description.
template <typename F>
class FnKernel final : public gpu::Kernel {
 public:
  FnKernel(std::string what, F f) : what_(std::move(what)), f_(std::move(f)) {}
  void launch(const void* const* in, void* const* out, void*, void* s) const override { f_(in, out, st(s)); }
  std::string describe() const override { return what_; }

 private:
  std::string what_;
  F f_;
};
template <typename F>
std::unique_ptr<gpu::Kernel> fn_kernel(std::string what, F f) {
  return std::make_unique<FnKernel<F>>(std::move(what), std::move(f));
}

bool is_sticky(cudaError_t e) {
  return e == cudaErrorIllegalAddress || e == cudaErrorLaunchFailure || e == cudaErrorIllegalInstruction ||
         e == cudaErrorMisalignedAddress || e == cudaErrorHardwareStackError || e == cudaErrorAssert ||
         e == cudaErrorInvalidPc || e == cudaErrorInvalidAddressSpace;
}

class CudaDevice final : public gpu::Device {
 public:
  explicit CudaDevice(int id) {
    DeviceInfo info = query_device(id);
    require_compute_capability(info, 8, 0);
    props_.id = id;
    props_.name = info.name;
    props_.sm_major = info.sm_major;
    props_.sm_minor = info.sm_minor;
    props_.multiprocessors = info.multiprocessors;
    props_.total_memory = info.total_memory;
    props_.driver_version = info.driver_version;
    props_.runtime_version = info.runtime_version;
    props_.cublaslt_version = info.cublaslt_version;
    props_.cudnn_version = cudnnGetVersion();
  }
  const gpu::DeviceProps& props() const override { return props_; }
  void bind() const override { KILN_CUDA_CHECK(cudaSetDevice(props_.id)); }
  bool broken() const override {
    const cudaError_t e = cudaPeekAtLastError();
    return broken_ || is_sticky(e);
  }

  void* alloc(size_t bytes) override {
    bind();
    return device_malloc(bytes);
  }
  void free(void* p) override {
    if (p) cudaFree(p);
  }
  void* alloc_host(size_t bytes) override {
    void* p = nullptr;
    if (bytes == 0) return nullptr;
    KILN_CUDA_CHECK(cudaMallocHost(&p, bytes));
    return p;
  }
  void free_host(void* p) override {
    if (p) cudaFreeHost(p);
  }
  bool register_host(const void* p, size_t bytes, std::string* why) override {
    bind();
    int read_only = 0;
    cudaDeviceGetAttribute(&read_only, cudaDevAttrHostRegisterReadOnlySupported, props_.id);
    unsigned flags = cudaHostRegisterPortable | (read_only ? cudaHostRegisterReadOnly : 0u);
    const cudaError_t e = cudaHostRegister(const_cast<void*>(p), bytes, flags);
    if (e == cudaSuccess) return true;
    cudaGetLastError();  // not sticky: clear it so the next call does not report it
    if (why)
      *why = std::string("cudaHostRegister: ") + cudaGetErrorString(e) +
             (read_only ? "" : " (this GPU cannot register read-only host memory)");
    return false;
  }
  void unregister_host(const void* p) override {
    bind();
    if (p && cudaHostUnregister(const_cast<void*>(p)) != cudaSuccess) cudaGetLastError();
  }
  size_t free_memory() const override {
    bind();
    size_t f = 0, t = 0;
    KILN_CUDA_CHECK(cudaMemGetInfo(&f, &t));
    return f;
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    bind();
    if (bytes) KILN_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
  }
  void copy_async(void* dst, const void* src, size_t bytes, void* s) override {
    if (bytes) guard([&] { KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, st(s))); });
  }
  void memset_async(void* dst, int value, size_t bytes, void* s) override {
    if (bytes) guard([&] { KILN_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, st(s))); });
  }
  void* create_stream() override {
    bind();
    cudaStream_t s = nullptr;
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return s;
  }
  void destroy_stream(void* s) override {
    if (s) cudaStreamDestroy(st(s));
  }
  void synchronize(void* s) override {
    guard([&] { KILN_CUDA_CHECK(cudaStreamSynchronize(st(s))); });
  }
  void* create_event() override {
    bind();
    cudaEvent_t e = nullptr;
    KILN_CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }
  void destroy_event(void* e) override {
    if (e) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  }
  void record(void* e, void* s) override { KILN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(e), st(s))); }
  float elapsed_ms(void* a, void* b) override {
    float ms = 0;
    guard([&] {
      KILN_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(b)));
      KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(a), static_cast<cudaEvent_t>(b)));
    });
    return ms;
  }
  void begin_capture(void* s) override {
    bind();
    KILN_CUDA_CHECK(cudaStreamBeginCapture(st(s), cudaStreamCaptureModeThreadLocal));
  }
  void* end_capture(void* s) override {
    cudaGraph_t g = nullptr;
    KILN_CUDA_CHECK(cudaStreamEndCapture(st(s), &g));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    check(e, "cudaGraphInstantiate");
    return exec;
  }
  void warm_up(int ms) override {
    const auto now = std::chrono::steady_clock::now();
    {
      std::lock_guard<std::mutex> lock(warm_mu_);
      if (warmed_ && now - last_warm_ < std::chrono::seconds(5)) return;
      warmed_ = true;
      last_warm_ = now;
    }
    bind();
    guard([&] { busy_wait(ms, props_.multiprocessors); });
    std::lock_guard<std::mutex> lock(warm_mu_);
    last_warm_ = std::chrono::steady_clock::now();
  }
  void launch_graph(void* g, void* s) override {
    guard([&] { KILN_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(g), st(s))); });
  }
  void destroy_graph(void* g) override {
    if (g) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(g));
  }

  std::unique_ptr<gpu::Kernel> matmul(const gpu::MatmulDesc& d, size_t limit, const std::string& tactic) override {
    bind();
    if (d.fp8 && props_.sm_major * 10 + props_.sm_minor < 89)
      throw CudaError("matmul: FP8 GEMMs need SM 8.9 or newer (Ada, Hopper); this GPU is " + props_.sm());
    return std::make_unique<MatmulKernel>(d, limit, tactic);
  }
  std::unique_ptr<gpu::Kernel> conv(const gpu::ConvDesc& d, size_t limit, const std::string& tactic) override {
    if (d.in_clip) throw CudaError("conv: cuDNN cannot clamp a convolution's input (Kiln's depthwise kernel can)");
    bind();
    if (d.type == ElemType::kI8) return std::make_unique<Int8ConvKernel>(d, limit, tactic);
    return std::make_unique<ConvKernel>(d, limit, tactic);
  }
  std::unique_ptr<gpu::Kernel> depthwise(const gpu::ConvDesc& d, const std::string& tactic) override {
    bind();
    return std::make_unique<DepthwiseKernel>(d, tactic);
  }
  std::unique_ptr<gpu::Kernel> copy(ElemType x, ElemType y, const gpu::StridedCopy& c) override {
    if (!gpu::channel_pad_ok(c))
      throw CudaError("copy: pad_channels needs rank 4 and a dense NHWC output of at least C and at most 64 channels");
    return fn_kernel(std::string("copy ") + elem_type_name(x) + "->" + elem_type_name(y),
                     [x, y, c](const void* const* in, void* const* out, cudaStream_t s) {
                       copy_strided(x, in[0], y, out[0], c, s);
                     });
  }
  std::unique_ptr<gpu::Kernel> elementwise(const gpu::EwProgram& p) override {
    return fn_kernel("elementwise " + std::to_string(p.num_steps) + " steps",
                     [p](const void* const* in, void* const* out, cudaStream_t s) {
                       cuda::elementwise(p, in, out[0], s);
                     });
  }
  std::unique_ptr<gpu::Kernel> gather(ElemType idx, size_t elem_bytes, int64_t outer, int64_t axis_dim,
                                      int64_t inner, int64_t count) override {
    return fn_kernel("gather", [=](const void* const* in, void* const* out, cudaStream_t s) {
      cuda::gather(idx, in[0], in[1], out[0], outer, axis_dim, inner, count, elem_bytes, s);
    });
  }
  std::unique_ptr<gpu::Kernel> pool(ElemType t, const gpu::Pool2d& p) override {
    return fn_kernel(p.max ? "maxpool nhwc" : "avgpool nhwc", [t, p](const void* const* in, void* const* out, cudaStream_t s) {
      pool2d_nhwc(t, in[0], out[0], p, s);
    });
  }
  std::unique_ptr<gpu::Kernel> stem_pool(const gpu::StemPoolDesc& d) override {
    if (const std::string why = stem_pool_unsupported(d); !why.empty()) throw CudaError("stem_pool: " + why);
    if (props_.sm_major < 8) throw CudaError("stem_pool: Kiln's fused stem needs SM 8.0 or newer; this GPU is " + props_.sm());
    bind();
    const std::string what = std::string("kiln fused stem conv 7x7/2 + maxpool 3x3/2 ") + elem_type_name(d.x_type) + " -> " +
                             (d.y_type == ElemType::kI8 ? "int8" : "fp16");
    return fn_kernel(what, [d](const void* const* in, void* const* out, cudaStream_t s) {
      cuda::stem_pool(d, in[0], in[1], in[2], out[0], s);
    });
  }
  std::unique_ptr<gpu::Kernel> mean_middle(ElemType t, int64_t n, int64_t sz, int64_t c) override {
    return fn_kernel("mean", [=](const void* const* in, void* const* out, cudaStream_t s) {
      cuda::mean_middle(t, in[0], out[0], n, sz, c, s);
    });
  }
  std::unique_ptr<gpu::Kernel> reduce(ElemType t, gpu::ReduceOp op, int64_t outer, int64_t r, int64_t inner,
                                      bool select_last) override {
    return fn_kernel("reduce", [=](const void* const* in, void* const* out, cudaStream_t s) {
      cuda::reduce(t, op, in[0], out[0], outer, r, inner, select_last, s);
    });
  }
  std::unique_ptr<gpu::Kernel> pad(ElemType t, const gpu::PadDesc& d) override {
    return fn_kernel("pad", [=](const void* const* in, void* const* out, cudaStream_t s) { cuda::pad(t, in[0], out[0], d, s); });
  }
  std::unique_ptr<gpu::Kernel> resample(ElemType t, const gpu::ResampleDesc& d) override {
    return fn_kernel("resample", [=](const void* const* in, void* const* out, cudaStream_t s) {
      cuda::resample(t, in[0], in[1], out[0], d, s);
    });
  }
  std::unique_ptr<gpu::Kernel> topk(ElemType t, int64_t outer, int64_t n, int64_t inner, int64_t k, bool largest) override {
    return fn_kernel("topk", [=](const void* const* in, void* const* out, cudaStream_t s) {
      cuda::topk(t, in[0], out[0], out[1], outer, n, inner, k, largest, s);
    });
  }
  std::unique_ptr<gpu::Kernel> gather_elements(ElemType idx, size_t elem_bytes, const gpu::GatherElementsDesc& d) override {
    return fn_kernel("gather_elements", [=](const void* const* in, void* const* out, cudaStream_t s) {
      cuda::gather_elements(idx, in[0], in[1], out[0], d, elem_bytes, s);
    });
  }
  std::unique_ptr<gpu::Kernel> layer_norm(ElemType t, int64_t rows, int64_t cols, float eps, bool write_sum,
                                          float copy_scale, ElemType copy_type) override {
    const DType dt = float_type(t, "layer_norm");
    const bool copy = copy_scale > 0;
    if (copy && copy_type != ElemType::kF8E4M3 && copy_type != ElemType::kI8)
      throw CudaError("layer_norm: a copy is FP8 E4M3 or INT8");
    const bool i8 = copy && copy_type == ElemType::kI8;
    const float mul = copy ? 1.f / copy_scale : 1.f;
    return fn_kernel(std::string("layer_norm ") + dtype_name(dt) + (write_sum ? " (+ residual sum)" : "") +
                         (!copy ? "" : i8 ? " (+ int8 copy)" : " (+ fp8e4m3 copy)"),
                     [=](const void* const* in, void* const* out, cudaStream_t s) {
                       cuda::layer_norm(dt, in[0], in[3], in[1], in[2], out[0], rows, cols, eps, s,
                                        write_sum ? out[1] : nullptr, copy ? out[write_sum ? 2 : 1] : nullptr, mul, i8);
                     });
  }
  std::unique_ptr<gpu::Kernel> softmax(ElemType t, int64_t rows, int64_t cols) override {
    const DType dt = float_type(t, "softmax");
    return fn_kernel(std::string("softmax ") + dtype_name(dt), [=](const void* const* in, void* const* out, cudaStream_t s) {
      softmax_rows(dt, in[0], out[0], rows, cols, s);
    });
  }
  std::unique_ptr<gpu::Kernel> attention(const gpu::AttentionDesc& d) override {
    const DType dt = float_type(d.type, "attention");
    if (d.head_dim != 16 && d.head_dim != 32 && d.head_dim != 64 && d.head_dim != 128)
      throw CudaError("attention: head_dim " + std::to_string(d.head_dim) + " is not supported (16, 32, 64 or 128)");
    AttnLayout L;
    for (int i = 0; i < 3; ++i) L.q[i] = d.q[i], L.k[i] = d.k[i], L.v[i] = d.v[i], L.o[i] = d.o[i], L.mask[i] = d.mask[i];
    // Tensor cores (WMMA) for FP16/BF16; the FP32 FMA kernels otherwise.
    const bool tc = attention_tc_supported(dt, d.head_dim, L);
    return fn_kernel(std::string(tc ? "attention tensor-core " : "attention ") + dtype_name(dt) +
                         (d.causal ? " causal" : "") + (d.has_mask ? " masked" : ""),
                     [=](const void* const* in, void* const* out, cudaStream_t s) {
                       const float* mask = d.has_mask ? static_cast<const float*>(in[3]) : nullptr;
                       const size_t es = cuda::elem_size(d.type);
                       const void* q = static_cast<const char*>(in[0]) + d.q_offset * es;
                       const void* k = static_cast<const char*>(in[1]) + d.k_offset * es;
                       const void* v = static_cast<const char*>(in[2]) + d.v_offset * es;
                       if (tc)
                         cuda::attention_tc(dt, q, k, v, out[0], d.batch, d.heads, d.sq, d.sk, d.head_dim, d.scale, L,
                                            mask, d.causal, s);
                       else
                         cuda::attention(dt, q, k, v, out[0], d.batch, d.heads, d.sq, d.sk, d.head_dim, d.scale, L,
                                         mask, d.causal, s);
                     });
  }

 private:
  // Runs f; a sticky CUDA error marks the device broken before the exception goes on.
  template <typename F>
  void guard(F&& f) {
    try {
      f();
    } catch (const CudaError& e) {
      if (e.sticky()) broken_ = true;
      throw;
    }
  }

  gpu::DeviceProps props_;
  bool broken_ = false;
  std::mutex warm_mu_;
  bool warmed_ = false;
  std::chrono::steady_clock::time_point last_warm_;
};

}  // namespace
}  // namespace kiln::cuda

extern "C" __attribute__((visibility("default"))) int kiln_gpu_api_version() { return kiln::gpu::kApiVersion; }

extern "C" __attribute__((visibility("default"))) int kiln_gpu_device_count(char* why, size_t why_len) {
  std::string reason;
  const int n = kiln::cuda::device_count(&reason);
  if (n == 0) kiln::gpu::copy_message(reason, why, why_len);
  return n;
}

extern "C" __attribute__((visibility("default"))) kiln::gpu::Device* kiln_gpu_open_device(int index, char* error,
                                                                                         size_t error_len) {
  try {
    return new kiln::cuda::CudaDevice(index);
  } catch (const std::exception& e) {
    kiln::gpu::copy_message(e.what(), error, error_len);
    return nullptr;
  }
}
