// A host-simulated GPU for tests: implements the GPU module interface (src/backends/gpu/
// device_api.h) with plain C++ loops on host memory, so the GPU compiler and runtime (lowering,
// layouts, fusions, memory planning, graph capture and replay, contexts) run in CI without a GPU,
// on any number of simulated devices. Each kernel follows the contract its CUDA counterpart
// documents (same descriptors, same FP32 accumulation and rounding to the element type). Work
// enqueued during a graph capture is recorded, not run, and runs when the graph is launched, as
// on a GPU; everything else runs at once.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "backends/gpu/device_api.h"
#include "ir/dtype.h"

namespace kiln_test {

using namespace kiln::gpu;

inline float sim_load(ElemType t, const void* p, int64_t i) {
  switch (t) {
    case ElemType::kF32: return static_cast<const float*>(p)[i];
    case ElemType::kF16: return kiln::half_to_float(static_cast<const uint16_t*>(p)[i]);
    case ElemType::kBF16: return kiln::bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case ElemType::kF64: return static_cast<float>(static_cast<const double*>(p)[i]);
    case ElemType::kI64: return static_cast<float>(static_cast<const int64_t*>(p)[i]);
    case ElemType::kI32: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
    case ElemType::kI8: return static_cast<const int8_t*>(p)[i];
    case ElemType::kU8: return static_cast<const uint8_t*>(p)[i];
    case ElemType::kF8E4M3: return kiln::e4m3_to_float(static_cast<const uint8_t*>(p)[i]);
    default: return static_cast<const uint8_t*>(p)[i] ? 1.f : 0.f;
  }
}

inline void sim_store(ElemType t, void* p, int64_t i, float v) {
  switch (t) {
    case ElemType::kF32: static_cast<float*>(p)[i] = v; break;
    case ElemType::kF16: static_cast<uint16_t*>(p)[i] = kiln::float_to_half(v); break;
    case ElemType::kBF16: static_cast<uint16_t*>(p)[i] = kiln::float_to_bf16(v); break;
    case ElemType::kF64: static_cast<double*>(p)[i] = v; break;
    case ElemType::kI64: static_cast<int64_t*>(p)[i] = std::isfinite(v) ? static_cast<int64_t>(v) : 0; break;
    case ElemType::kI32: static_cast<int32_t*>(p)[i] = std::isfinite(v) ? static_cast<int32_t>(v) : 0; break;
    case ElemType::kI8: static_cast<int8_t*>(p)[i] = static_cast<int8_t>(std::clamp(v, -128.f, 127.f)); break;
    case ElemType::kU8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(std::clamp(v, 0.f, 255.f)); break;
    case ElemType::kF8E4M3: static_cast<uint8_t*>(p)[i] = kiln::float_to_e4m3(v); break;
    default: static_cast<uint8_t*>(p)[i] = v != 0.f ? 1 : 0; break;
  }
}

inline size_t sim_size(ElemType t) {
  switch (t) {
    case ElemType::kF32: case ElemType::kI32: return 4;
    case ElemType::kF16: case ElemType::kBF16: return 2;
    case ElemType::kF64: case ElemType::kI64: return 8;
    default: return 1;
  }
}

// x rounded to the element type, as a kernel's stored intermediate would be.
inline float sim_round(ElemType t, float v) {
  if (t == ElemType::kF16) return kiln::half_to_float(kiln::float_to_half(v));
  if (t == ElemType::kBF16) return kiln::bf16_to_float(kiln::float_to_bf16(v));
  return v;
}

inline float sim_unary(EwOp op, float v, float p0, float p1) {
  auto sig = [](float x) { return 1.f / (1.f + std::exp(-x)); };
  switch (op) {
    case EwOp::kRelu: return v > 0 ? v : 0;
    case EwOp::kSigmoid: return sig(v);
    case EwOp::kTanh: return std::tanh(v);
    case EwOp::kErf: return std::erf(v);
    case EwOp::kExp: return std::exp(v);
    case EwOp::kLog: return std::log(v);
    case EwOp::kSqrt: return std::sqrt(v);
    case EwOp::kNeg: return -v;
    case EwOp::kAbs: return std::fabs(v);
    case EwOp::kReciprocal: return 1.f / v;
    case EwOp::kFloor: return std::floor(v);
    case EwOp::kCeil: return std::ceil(v);
    case EwOp::kRound: return std::nearbyint(v);
    case EwOp::kSign: return v > 0 ? 1.f : v < 0 ? -1.f : 0.f;
    case EwOp::kNot: return v != 0 ? 0.f : 1.f;
    case EwOp::kSin: return std::sin(v);
    case EwOp::kCos: return std::cos(v);
    case EwOp::kGelu: return 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));
    case EwOp::kGeluTanh: return 0.5f * v * (1.f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    case EwOp::kSiLU: return v * sig(v);
    case EwOp::kHardSwish: return v * std::clamp(v / 6.f + 0.5f, 0.f, 1.f);
    case EwOp::kHardSigmoid: return std::clamp(p0 * v + p1, 0.f, 1.f);
    case EwOp::kLeakyRelu: return v < 0 ? p0 * v : v;
    case EwOp::kElu: return v < 0 ? p0 * (std::exp(v) - 1.f) : v;
    case EwOp::kClip: return std::min(std::max(v, p0), p1);
    case EwOp::kAffine: return p0 * v + p1;
    default: return v;
  }
}

inline float sim_binary(EwOp op, float a, float b) {
  switch (op) {
    case EwOp::kAdd: return a + b;
    case EwOp::kSub: return a - b;
    case EwOp::kMul: return a * b;
    case EwOp::kDiv: return a / b;
    case EwOp::kPow: return std::pow(a, b);
    case EwOp::kMin: return std::min(a, b);
    case EwOp::kMax: return std::max(a, b);
    case EwOp::kMod: return std::fmod(a, b);
    case EwOp::kEqual: return a == b;
    case EwOp::kLess: return a < b;
    case EwOp::kLessEqual: return a <= b;
    case EwOp::kGreater: return a > b;
    case EwOp::kGreaterEqual: return a >= b;
    case EwOp::kAnd: return a != 0 && b != 0;
    case EwOp::kOr: return a != 0 || b != 0;
    case EwOp::kXor: return (a != 0) != (b != 0);
    default: return a;
  }
}

class SimDevice;

// A kernel is a host function; during a capture its launches are recorded by the device.
class SimKernel final : public Kernel {
 public:
  using Fn = std::function<void(const void* const*, void* const*, void*)>;
  SimKernel(SimDevice* dev, std::string what, int inputs, Fn fn, int outputs = 1)
      : dev_(dev), what_(std::move(what)), fn_(std::move(fn)), inputs_(inputs), outputs_(outputs) {}
  void launch(const void* const* in, void* const* out, void* ws, void* stream) const override;
  std::string describe() const override { return "sim " + what_; }
  // Every simulated tactic costs the same; a kernel made from a recorded tactic was not timed.
  double timed_ms() const override { return tactic_.empty() || timed_ ? ms_ : -1.0; }
  // FP8 GEMMs report a tenth of the time, so that FP8 builds choose them as they do on Hopper.
  void set_ms(double ms) { ms_ = ms; }
  std::string tactic() const override { return tactic_; }
  void set_tactic(std::string tactic, bool timed) {
    tactic_ = std::move(tactic);
    timed_ = timed;
  }

 private:
  SimDevice* dev_;
  std::string what_;
  Fn fn_;
  int inputs_;  // how many input pointers the program passes (the launch copies them)
  int outputs_;
  std::string tactic_;
  bool timed_ = true;
  double ms_ = 1.0;
};

class SimDevice final : public Device {
 public:
  explicit SimDevice(int id, size_t memory = size_t{8} << 30, int sm_major = 9, int sm_minor = 0) {
    props_.id = id;
    props_.name = "Kiln simulated GPU " + std::to_string(id);
    props_.sm_major = sm_major;
    props_.sm_minor = sm_minor;
    props_.runtime_version = 13000;
    props_.driver_version = 13000;
    props_.cublaslt_version = 130100;
    props_.cudnn_version = 91900;
    props_.multiprocessors = 1;
    props_.total_memory = memory;
  }
  ~SimDevice() override {
    for (auto& [p, n] : live_) std::free(p);
  }
  const DeviceProps& props() const override { return props_; }
  void bind() const override {}
  bool broken() const override { return false; }

  void* alloc(size_t bytes) override {
    if (bytes == 0) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    if (used_ + bytes > props_.total_memory)
      throw std::runtime_error("out of GPU memory: asked for " + std::to_string(bytes >> 20) + " MiB on simulated GPU " +
                               std::to_string(props_.id));
    void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    live_[p] = bytes;
    used_ += bytes;
    return p;
  }
  void free(void* p) override {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) throw std::runtime_error("sim: free of a pointer this device did not allocate");
    used_ -= it->second;
    live_.erase(it);
    std::free(p);
  }
  void* alloc_host(size_t bytes) override { return bytes ? std::aligned_alloc(256, (bytes + 255) / 256 * 256) : nullptr; }
  void free_host(void* p) override { std::free(p); }
  size_t free_memory() const override { return props_.total_memory - used_; }
  // Host registration: recorded (copies are host copies anyway); refused when told to.
  bool register_host(const void* p, size_t bytes, std::string* why) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (refuse_register_) {
      if (why) *why = "sim: registration refused";
      return false;
    }
    registered_[p] = bytes;
    return true;
  }
  void unregister_host(const void* p) override {
    std::lock_guard<std::mutex> lock(mu_);
    registered_.erase(p);
  }
  size_t registered_ranges() const {
    std::lock_guard<std::mutex> lock(mu_);
    return registered_.size();
  }
  void set_refuse_register(bool refuse) { refuse_register_ = refuse; }
  size_t used_memory() const { return used_; }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy_async(void* dst, const void* src, size_t bytes, void*) override { std::memcpy(dst, src, bytes); }
  void memset_async(void* dst, int value, size_t bytes, void*) override { std::memset(dst, value, bytes); }
  void* create_stream() override { return new int(0); }
  void destroy_stream(void* s) override { delete static_cast<int*>(s); }
  // Waiting for a stream takes `sync_delay_ms` (0 by default): a simulated GPU that is busy for a
  // while, so tests of scheduling over several devices do not depend on thread timing.
  void synchronize(void*) override {
    if (sync_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sync_delay_ms_));
  }
  void set_sync_delay_ms(int ms) { sync_delay_ms_ = ms; }
  // Events hold the host clock, or with modeled time (set_modeled_time) the sum of the modeled
  // milliseconds (SimKernel::timed_ms) of the kernels run so far: deterministic timings for tests
  // of choices made by timing whole programs.
  struct Event {
    std::chrono::steady_clock::time_point wall;
    double modeled = 0;
  };
  void* create_event() override { return new Event(); }
  void destroy_event(void* e) override { delete static_cast<Event*>(e); }
  void record(void* e, void*) override {
    auto* ev = static_cast<Event*>(e);
    ev->wall = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> lock(mu_);
    ev->modeled = modeled_ms_;
  }
  float elapsed_ms(void* a, void* b) override {
    const auto *x = static_cast<Event*>(a), *y = static_cast<Event*>(b);
    if (modeled_time_) return static_cast<float>(y->modeled - x->modeled);
    return std::chrono::duration<float, std::milli>(y->wall - x->wall).count();
  }
  void set_modeled_time(bool on) { modeled_time_ = on; }
  void add_modeled_ms(double ms) {
    std::lock_guard<std::mutex> lock(mu_);
    modeled_ms_ += ms;
  }
  struct Graph {
    std::vector<std::function<void()>> work;
  };
  void begin_capture(void* stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    capturing_[stream] = std::make_unique<Graph>();
  }
  void* end_capture(void* stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = capturing_.find(stream);
    if (it == capturing_.end()) throw std::runtime_error("sim: end_capture without begin_capture");
    Graph* g = it->second.release();
    capturing_.erase(it);
    ++graphs_made_;
    return g;
  }
  void launch_graph(void* graph, void*) override {
    ++graph_launches_;
    for (auto& w : static_cast<Graph*>(graph)->work) w();
  }
  void destroy_graph(void* graph) override { delete static_cast<Graph*>(graph); }
  int graphs_made() const { return graphs_made_; }
  int graph_launches() const { return graph_launches_; }
  int64_t kernels_run() const { return kernels_run_; }
  // Tuned kernels (matmul, conv, depthwise) made by timing, and made from a recorded tactic.
  int tuned_timed() const { return tuned_timed_; }
  int tuned_recorded() const { return tuned_recorded_; }
  DeviceProps& mutable_props() { return props_; }  // tests: pretend to be another GPU or library

  // Runs `work` now, or records it when `stream` is being captured.
  void enqueue(void* stream, std::function<void()> work) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = capturing_.find(stream);
      if (it != capturing_.end()) {
        it->second->work.push_back(std::move(work));
        return;
      }
    }
    work();
  }
  void count_kernel() { ++kernels_run_; }

  std::unique_ptr<Kernel> matmul(const MatmulDesc& d, size_t, const std::string& tactic) override {
    if (d.fp8 && (d.type == ElemType::kF32 || d.batch != 1))
      throw std::runtime_error("matmul: FP8 operands need an FP16 or BF16 output and one unbatched product");
    if (d.fp8 && props_.sm_major * 10 + props_.sm_minor < 89)
      throw std::runtime_error("matmul: FP8 GEMMs need SM 8.9 or newer (Ada, Hopper); this GPU is " + props_.sm());
    if (d.fp8) {
      auto k = tuned("sim-matmul-fp8", tactic, "matmul fp8e4m3", 2 + d.bias + d.residual, [d](const void* const* in, void* const* out, void*) {
        const void* bias = d.bias ? in[2] : nullptr;
        const void* res = d.residual ? in[d.bias ? 3 : 2] : nullptr;
        for (int64_t i = 0; i < d.m; ++i)
          for (int64_t j = 0; j < d.n; ++j) {
            double acc = 0;
            for (int64_t k = 0; k < d.k; ++k)  // W stored [N, K]
              acc += static_cast<double>(sim_load(ElemType::kF8E4M3, in[0], i * d.k + k)) *
                     sim_load(ElemType::kF8E4M3, in[1], j * d.k + k);
            float v = static_cast<float>(acc) * d.x_scale * d.w_scale;
            const int64_t o = i * d.n + j;
            if (res) v += sim_load(d.type, res, o);
            if (bias) v += sim_load(d.type, bias, j);
            if (d.epilogue == MatmulDesc::Epilogue::kRelu) v = std::max(v, 0.f);
            if (d.epilogue == MatmulDesc::Epilogue::kGeluTanh) v = sim_unary(EwOp::kGeluTanh, v, 0, 0);
            sim_store(d.type, out[0], o, v);
          }
      });
      static_cast<SimKernel*>(k.get())->set_ms(0.1);
      return k;
    }
    return tuned("sim-matmul", tactic, "matmul", 2 + d.bias + d.residual, [d](const void* const* in, void* const* out, void*) {
      const void* bias = d.bias ? in[2] : nullptr;
      const void* res = d.residual ? in[d.bias ? 3 : 2] : nullptr;
      for (int64_t b = 0; b < d.batch; ++b)
        for (int64_t i = 0; i < d.m; ++i)
          for (int64_t j = 0; j < d.n; ++j) {
            double acc = 0;
            for (int64_t k = 0; k < d.k; ++k)
              acc += static_cast<double>(sim_load(d.type, in[0], (b * d.m + i) * d.k + k)) *
                     sim_load(d.type, in[1], b * d.w_stride + k * d.n + j);
            float v = static_cast<float>(acc);
            const int64_t o = (b * d.m + i) * d.n + j;
            if (res) v += sim_load(d.type, res, o);
            if (bias) v += sim_load(d.type, bias, j);
            if (d.epilogue == MatmulDesc::Epilogue::kRelu) v = std::max(v, 0.f);
            if (d.epilogue == MatmulDesc::Epilogue::kGeluTanh) v = sim_unary(EwOp::kGeluTanh, v, 0, 0);
            sim_store(d.type, out[0], o, v);
          }
    });
  }
  std::unique_ptr<Kernel> conv(const ConvDesc& d, size_t, const std::string& tactic) override {
    if (d.in_clip) throw std::runtime_error("conv: cuDNN cannot clamp a convolution's input");
    if (d.type == ElemType::kI8) return int8_conv_kernel(d, tactic);
    return conv_kernel(d, false, tactic);
  }
  std::unique_ptr<Kernel> depthwise(const ConvDesc& d, const std::string& tactic) override {
    if (d.groups != d.c || d.k != d.c) throw std::runtime_error("depthwise: needs groups == in channels == out channels");
    if (d.act == Act::kSilu) throw std::runtime_error("depthwise: no SiLU epilogue");
    return conv_kernel(d, true, tactic);
  }
  std::unique_ptr<Kernel> copy(ElemType xt, ElemType yt, const StridedCopy& c) override {
    if (!channel_pad_ok(c)) throw std::runtime_error("copy: pad_channels needs a dense NHWC output of at least C channels");
    return make("copy", 1, [xt, yt, c](const void* const* in, void* const* out, void*) {
      if (c.pad_channels > 0) {  // the padding channels are zeros
        const int64_t pixels = c.dims[0] * c.dims[2] * c.dims[3];
        for (int64_t e = 0; e < pixels; ++e)
          for (int64_t ch = c.dims[1]; ch < c.pad_channels; ++ch) sim_store(yt, out[0], e * c.pad_channels + ch, 0.f);
      }
      int64_t n = 1;
      for (int d = 0; d < c.rank; ++d) n *= c.dims[d];
      for (int64_t e = 0; e < n; ++e) {
        int64_t rest = e, xo = 0, yo = 0;
        for (int d = c.rank - 1; d >= 0; --d) {
          const int64_t i = rest % c.dims[d];
          rest /= c.dims[d];
          xo += i * c.x_strides[d], yo += i * c.y_strides[d];
        }
        if (xt == yt) std::memcpy(static_cast<char*>(out[0]) + yo * static_cast<int64_t>(sim_size(yt)),
                                  static_cast<const char*>(in[0]) + xo * static_cast<int64_t>(sim_size(xt)), sim_size(xt));
        else sim_store(yt, out[0], yo, sim_load(xt, in[0], xo));
      }
    });
  }
  std::unique_ptr<Kernel> elementwise(const EwProgram& p) override {
    return make("elementwise", p.num_inputs, [p](const void* const* in, void* const* out, void*) {
      int64_t n = 1;
      for (int d = 0; d < p.rank; ++d) n *= p.dims[d];
      for (int64_t e = 0; e < n; ++e) {
        int64_t offs[kMaxEwInputs] = {};
        int64_t rest = e;
        for (int d = p.rank - 1; d >= 0; --d) {
          const int64_t i = rest % p.dims[d];
          rest /= p.dims[d];
          for (int k = 0; k < p.num_inputs; ++k) offs[k] += i * p.in_strides[k][d];
        }
        float acc = 0;
        for (int s = 0; s < p.num_steps; ++s) {
          const EwStep& st = p.steps[s];
          auto ld = [&](int k) { return sim_load(p.in_types[k], in[k], offs[k]); };
          if (st.op == EwOp::kLoad) acc = ld(st.a);
          else if (st.op == EwOp::kWhere) acc = acc != 0 ? ld(st.a) : ld(st.b);
          else if (st.op <= EwOp::kXor) acc = st.reversed ? sim_binary(st.op, ld(st.a), acc) : sim_binary(st.op, acc, ld(st.a));
          else acc = sim_unary(st.op, acc, st.p0, st.p1);
        }
        sim_store(p.out_type, out[0], e, acc);
      }
    });
  }
  std::unique_ptr<Kernel> gather(ElemType idx, size_t eb, int64_t outer, int64_t axis_dim, int64_t inner,
                                 int64_t count) override {
    return make("gather", 2, [=](const void* const* in, void* const* out, void*) {
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t t = 0; t < count; ++t) {
          int64_t j = idx == ElemType::kI64 ? static_cast<const int64_t*>(in[1])[t] : static_cast<const int32_t*>(in[1])[t];
          if (j < 0) j += axis_dim;
          char* dst = static_cast<char*>(out[0]) + ((o * count + t) * inner) * static_cast<int64_t>(eb);
          if (j < 0 || j >= axis_dim) std::memset(dst, 0, static_cast<size_t>(inner) * eb);
          else std::memcpy(dst, static_cast<const char*>(in[0]) + ((o * axis_dim + j) * inner) * static_cast<int64_t>(eb),
                           static_cast<size_t>(inner) * eb);
        }
    });
  }
  std::unique_ptr<Kernel> pool(ElemType t, const Pool2d& p) override {
    return make("pool", 1, [t, p](const void* const* in, void* const* out, void*) { pool2d(t, in[0], out[0], p); });
  }
  // Pooling over NHWC by its definition (padding never wins a max).
  static void pool2d(ElemType t, const void* x, void* y, const Pool2d& p) {
    for (int64_t b = 0; b < p.n; ++b)
      for (int64_t oy = 0; oy < p.oh; ++oy)
        for (int64_t ox = 0; ox < p.ow; ++ox)
          for (int64_t c = 0; c < p.c; ++c) {
            float acc = p.max ? -INFINITY : 0.f;
            int count = 0;
            for (int ky = 0; ky < p.kh; ++ky)
              for (int kx = 0; kx < p.kw; ++kx) {
                const int64_t iy = oy * p.sh - p.pad_t + ky * p.dh, ix = ox * p.sw - p.pad_l + kx * p.dw;
                if (iy < 0 || iy >= p.h || ix < 0 || ix >= p.w) {
                  if (p.count_include_pad) ++count;
                  continue;
                }
                const float v = sim_load(t, x, ((b * p.h + iy) * p.w + ix) * p.c + c);
                acc = p.max ? std::max(acc, v) : acc + v;
                ++count;
              }
            sim_store(t, y, ((b * p.oh + oy) * p.ow + ox) * p.c + c, p.max ? acc : (count ? acc / count : 0.f));
          }
  }
  // The fused stem by its definition: FP16-rounded input, the packed FP16 filter, FP32 sums, then
  // the pooling above over the FP32 map and the output's rounding.
  std::unique_ptr<Kernel> stem_pool(const StemPoolDesc& d) override {
    if (d.c < 1 || d.c > 4) throw std::runtime_error("stem_pool: 1 to 4 input channels");
    return make(std::string("stem+maxpool -> ") + (d.y_type == ElemType::kI8 ? "int8" : "fp16"), 3, [d](const void* const* in, void* const* out, void*) {
      const int64_t oh = d.conv_h(), ow = d.conv_w(), ph = d.out_h(), pw = d.out_w(), pitch = stem_filter_pitch(d.c);
      std::vector<float> conv(static_cast<size_t>(d.n * oh * ow * 64)), pooled(static_cast<size_t>(d.n * ph * pw * 64));
      for (int64_t b = 0; b < d.n; ++b)
        for (int64_t i = 0; i < oh; ++i)
          for (int64_t j = 0; j < ow; ++j)
            for (int64_t k = 0; k < 64; ++k) {
              float acc = sim_load(ElemType::kF16, in[2], k);
              for (int64_t c = 0; c < d.c; ++c)
                for (int64_t r = 0; r < 7; ++r)
                  for (int64_t s = 0; s < 7; ++s) {
                    const int64_t y = i * 2 - 3 + r, x = j * 2 - 3 + s;
                    if (y < 0 || y >= d.h || x < 0 || x >= d.w) continue;
                    const float xv = kiln::half_to_float(kiln::float_to_half(sim_load(d.x_type, in[0], ((b * d.c + c) * d.h + y) * d.w + x)));
                    acc += xv * sim_load(ElemType::kF16, in[1], k * pitch + c * 56 + r * 8 + s);
                  }
              conv[static_cast<size_t>(((b * oh + i) * ow + j) * 64 + k)] = std::min(std::max(acc, d.lo), d.hi);
            }
      Pool2d p;
      p.n = d.n, p.c = 64, p.h = oh, p.w = ow, p.oh = ph, p.ow = pw, p.kh = p.kw = 3, p.sh = p.sw = 2, p.pad_t = p.pad_l = 1;
      pool2d(ElemType::kF32, conv.data(), pooled.data(), p);
      for (size_t o = 0; o < pooled.size(); ++o) {
        if (d.y_type == ElemType::kI8) sim_store(ElemType::kI8, out[0], static_cast<int64_t>(o), std::clamp(std::nearbyint(pooled[o] / d.y_scale), -128.f, 127.f));
        else sim_store(ElemType::kF16, out[0], static_cast<int64_t>(o), pooled[o]);
      }
    });
  }
  std::unique_ptr<Kernel> mean_middle(ElemType t, int64_t n, int64_t s, int64_t c) override {
    return make("mean", 1, [=](const void* const* in, void* const* out, void*) {
      for (int64_t b = 0; b < n; ++b)
        for (int64_t ch = 0; ch < c; ++ch) {
          float acc = 0;
          for (int64_t i = 0; i < s; ++i) acc += sim_load(t, in[0], (b * s + i) * c + ch);
          sim_store(t, out[0], b * c + ch, acc / static_cast<float>(s));
        }
    });
  }
  std::unique_ptr<Kernel> reduce(ElemType t, ReduceOp op, int64_t outer, int64_t r, int64_t inner,
                                 bool select_last) override {
    using R = ReduceOp;
    return make("reduce", 1, [=](const void* const* in, void* const* out, void*) {
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
          std::vector<float> v;
          for (int64_t j = 0; j < r; ++j) v.push_back(sim_load(t, in[0], (o * r + j) * inner + i));
          const int64_t e = o * inner + i;
          if (op == R::kArgMax || op == R::kArgMin) {
            int64_t at = 0;
            for (int64_t j = 1; j < r; ++j) {
              const float a = v[static_cast<size_t>(j)], b = v[static_cast<size_t>(at)];
              if (op == R::kArgMax ? (a > b || (select_last && a == b)) : (a < b || (select_last && a == b))) at = j;
            }
            static_cast<int64_t*>(out[0])[e] = at;
            continue;
          }
          double acc = op == R::kProd ? 1.0 : 0.0;
          if (op == R::kMax || op == R::kMin) acc = v[0];
          for (float x : v) {
            if (op == R::kSum || op == R::kMean) acc += x;
            else if (op == R::kProd) acc *= x;
            else if (std::isnan(x) || std::isnan(acc)) acc = NAN;
            else acc = op == R::kMax ? std::max<double>(acc, x) : std::min<double>(acc, x);
          }
          if (op == R::kMean) acc /= static_cast<double>(r);
          sim_store(t, out[0], e, static_cast<float>(acc));
        }
    });
  }
  std::unique_ptr<Kernel> pad(ElemType t, const PadDesc& d) override {
    return make("pad", 1, [t, d](const void* const* in, void* const* out, void*) {
      int64_t total = 1;
      for (int a = 0; a < d.rank; ++a) total *= d.out_dims[a];
      for (int64_t e = 0; e < total; ++e) {
        int64_t rest = e, src = 0, stride = 1;
        bool inside = true;
        for (int a = d.rank - 1; a >= 0; --a) {
          int64_t c = rest % d.out_dims[a] - d.begin[a];
          rest /= d.out_dims[a];
          const int64_t n = d.in_dims[a];
          if (c < 0 || c >= n) {
            if (d.mode == PadDesc::Mode::kConstant) inside = false;
            else if (d.mode == PadDesc::Mode::kEdge) c = c < 0 ? 0 : n - 1;
            else if (d.mode == PadDesc::Mode::kWrap) c = ((c % n) + n) % n;
            else if (n == 1) c = 0;
            else
              while (c < 0 || c >= n) c = c < 0 ? -c : 2 * (n - 1) - c;  // reflect
          }
          src += c * stride;
          stride *= n;
        }
        sim_store(t, out[0], e, inside ? sim_load(t, in[0], src) : d.value);
      }
    });
  }
  std::unique_ptr<Kernel> resample(ElemType t, const ResampleDesc& d) override {
    return make("resample", 2, [t, d](const void* const* in, void* const* out, void*) {
      struct Tap {
        int32_t i0, i1;
        float w;
      };
      const Tap* taps = static_cast<const Tap*>(in[1]);
      int64_t total = 1;
      for (int a = 0; a < d.rank; ++a) total *= d.out_dims[a];
      // Separable: resample one axis at a time, in FP32.
      std::vector<float> cur(static_cast<size_t>(std::accumulate(d.in_dims, d.in_dims + d.rank, int64_t{1},
                                                                 std::multiplies<int64_t>())));
      for (size_t i = 0; i < cur.size(); ++i) cur[i] = sim_load(t, in[0], static_cast<int64_t>(i));
      std::vector<int64_t> dims(d.in_dims, d.in_dims + d.rank);
      int64_t base = 0;
      for (int a = 0; a < d.rank; ++a) {
        int64_t outer = 1, inner = 1;
        for (int b = 0; b < a; ++b) outer *= dims[static_cast<size_t>(b)];
        for (int b = a + 1; b < d.rank; ++b) inner *= dims[static_cast<size_t>(b)];
        const int64_t n_in = dims[static_cast<size_t>(a)], n_out = d.out_dims[a];
        std::vector<float> next(static_cast<size_t>(outer * n_out * inner));
        for (int64_t o = 0; o < outer; ++o)
          for (int64_t c = 0; c < n_out; ++c) {
            const Tap tp = taps[base + c];
            for (int64_t i = 0; i < inner; ++i) {
              const float lo = cur[static_cast<size_t>((o * n_in + tp.i0) * inner + i)];
              const float hi = cur[static_cast<size_t>((o * n_in + tp.i1) * inner + i)];
              next[static_cast<size_t>((o * n_out + c) * inner + i)] = tp.w == 0.f ? lo : (1 - tp.w) * lo + tp.w * hi;
            }
          }
        cur.swap(next);
        dims[static_cast<size_t>(a)] = n_out;
        base += n_out;
      }
      for (int64_t e = 0; e < total; ++e) sim_store(t, out[0], e, cur[static_cast<size_t>(e)]);
    });
  }
  std::unique_ptr<Kernel> topk(ElemType t, int64_t outer, int64_t n, int64_t inner, int64_t k, bool largest) override {
    return make("topk", 1, [=](const void* const* in, void* const* out, void*) {
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
          std::vector<int64_t> order(static_cast<size_t>(n));
          std::iota(order.begin(), order.end(), 0);
          auto at = [&](int64_t j) { return sim_load(t, in[0], (o * n + j) * inner + i); };
          std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
            const float x = at(a), y = at(b);
            if (std::isnan(x) || std::isnan(y)) return std::isnan(x) && !std::isnan(y);  // NaN is the largest
            return largest ? x > y : x < y;
          });
          for (int64_t r = 0; r < k; ++r) {
            const int64_t e = (o * k + r) * inner + i;
            sim_store(t, out[0], e, at(order[static_cast<size_t>(r)]));
            static_cast<int64_t*>(out[1])[e] = order[static_cast<size_t>(r)];
          }
        }
    }, 2);
  }
  std::unique_ptr<Kernel> gather_elements(ElemType idx, size_t eb, const GatherElementsDesc& d) override {
    return make("gather_elements", 2, [idx, eb, d](const void* const* in, void* const* out, void*) {
      int64_t total = 1;
      for (int a = 0; a < d.rank; ++a) total *= d.out_dims[a];
      for (int64_t e = 0; e < total; ++e) {
        int64_t j = idx == ElemType::kI64 ? static_cast<const int64_t*>(in[1])[e] : static_cast<const int32_t*>(in[1])[e];
        if (j < 0) j += d.data_dims[d.axis];
        char* dst = static_cast<char*>(out[0]) + e * static_cast<int64_t>(eb);
        if (j < 0 || j >= d.data_dims[d.axis]) {
          std::memset(dst, 0, eb);
          continue;
        }
        int64_t rest = e, src = 0, stride = 1;
        for (int a = d.rank - 1; a >= 0; --a) {
          const int64_t c = rest % d.out_dims[a];
          rest /= d.out_dims[a];
          src += (a == d.axis ? j : c) * stride;
          stride *= d.data_dims[a];
        }
        std::memcpy(dst, static_cast<const char*>(in[0]) + src * static_cast<int64_t>(eb), eb);
      }
    });
  }
  std::unique_ptr<Kernel> layer_norm(ElemType t, int64_t rows, int64_t cols, float eps, bool write_sum,
                                     float copy_scale, ElemType copy_type) override {
    const int y8 = copy_scale > 0 ? (write_sum ? 2 : 1) : -1;
    if (y8 >= 0 && copy_type != ElemType::kF8E4M3 && copy_type != ElemType::kI8)
      throw std::runtime_error("layer_norm: a copy is FP8 E4M3 or INT8");
    const std::string name = y8 < 0 ? "layer_norm" : copy_type == ElemType::kI8 ? "layer_norm (+ int8 copy)" : "layer_norm (+ fp8e4m3 copy)";
    return make(name, 4, [=](const void* const* in, void* const* out, void*) {
      std::vector<float> x(static_cast<size_t>(cols));
      for (int64_t r = 0; r < rows; ++r) {
        double mean = 0, var = 0;
        for (int64_t c = 0; c < cols; ++c) {
          float v = sim_load(t, in[0], r * cols + c);
          if (in[3]) v = sim_round(t, v + sim_load(t, in[3], r * cols + c));  // the fused residual Add
          if (write_sum) sim_store(t, out[1], r * cols + c, v);
          x[static_cast<size_t>(c)] = v;
          mean += v;
        }
        mean /= static_cast<double>(cols);
        for (float v : x) var += (v - mean) * (v - mean);
        const double rstd = 1.0 / std::sqrt(var / static_cast<double>(cols) + eps);
        for (int64_t c = 0; c < cols; ++c) {
          float v = static_cast<float>((x[static_cast<size_t>(c)] - mean) * rstd);
          if (in[1]) v *= sim_load(t, in[1], c);
          if (in[2]) v += sim_load(t, in[2], c);
          sim_store(t, out[0], r * cols + c, v);
          if (y8 < 0) continue;
          const float q = sim_round(t, v) * (1.f / copy_scale);
          sim_store(copy_type, out[y8], r * cols + c, copy_type == ElemType::kI8 ? std::nearbyint(q) : q);
        }
      }
    }, (write_sum ? 2 : 1) + (y8 >= 0));
  }
  std::unique_ptr<Kernel> softmax(ElemType t, int64_t rows, int64_t cols) override {
    return make("softmax", 1, [=](const void* const* in, void* const* out, void*) {
      for (int64_t r = 0; r < rows; ++r) {
        float m = -INFINITY;
        for (int64_t c = 0; c < cols; ++c) m = std::max(m, sim_load(t, in[0], r * cols + c));
        double sum = 0;
        for (int64_t c = 0; c < cols; ++c) sum += std::exp(sim_load(t, in[0], r * cols + c) - m);
        for (int64_t c = 0; c < cols; ++c)
          sim_store(t, out[0], r * cols + c, static_cast<float>(std::exp(sim_load(t, in[0], r * cols + c) - m) / sum));
      }
    });
  }
  std::unique_ptr<Kernel> attention(const AttentionDesc& d) override {
    return make("attention", 3 + d.has_mask, [d](const void* const* in, void* const* out, void*) {
      const float* mask = d.has_mask ? static_cast<const float*>(in[3]) : nullptr;
      std::vector<double> s(static_cast<size_t>(d.sk));
      for (int64_t b = 0; b < d.batch; ++b)
        for (int64_t h = 0; h < d.heads; ++h)
          for (int64_t i = 0; i < d.sq; ++i) {
            double m = -INFINITY;
            for (int64_t j = 0; j < d.sk; ++j) {
              double v = -INFINITY;
              if (!d.causal || j <= i + (d.sk - d.sq)) {
                v = 0;
                for (int64_t e = 0; e < d.head_dim; ++e)
                  v += static_cast<double>(
                           sim_load(d.type, in[0], d.q_offset + b * d.q[0] + h * d.q[1] + i * d.q[2] + e)) *
                       sim_load(d.type, in[1], d.k_offset + b * d.k[0] + h * d.k[1] + j * d.k[2] + e);
                v *= d.scale;
                if (mask) v += mask[b * d.mask[0] + h * d.mask[1] + i * d.mask[2] + j];
              }
              s[static_cast<size_t>(j)] = v;
              m = std::max(m, v);
            }
            double sum = 0;
            for (auto& v : s) sum += (v = m == -INFINITY ? 0 : std::exp(v - m));
            for (int64_t e = 0; e < d.head_dim; ++e) {
              double acc = 0;
              for (int64_t j = 0; j < d.sk; ++j)
                acc += s[static_cast<size_t>(j)] *
                       sim_load(d.type, in[2], d.v_offset + b * d.v[0] + h * d.v[1] + j * d.v[2] + e);
              sim_store(d.type, out[0], b * d.o[0] + h * d.o[1] + i * d.o[2] + e,
                        static_cast<float>(sum > 0 ? acc / sum : 0));
            }
          }
    });
  }

 private:
  std::unique_ptr<Kernel> make(std::string what, int inputs, SimKernel::Fn fn, int outputs = 1) {
    return std::make_unique<SimKernel>(this, std::move(what), inputs, std::move(fn), outputs);
  }
  // A tuned kernel: its tactic is `name`; a recorded tactic must be exactly that (else the
  // std::runtime_error a real device throws for a record it cannot use).
  std::unique_ptr<Kernel> tuned(const std::string& name, const std::string& tactic, std::string what, int inputs,
                                SimKernel::Fn fn) {
    if (!tactic.empty() && tactic != name)
      throw std::runtime_error(what + ": tactic '" + tactic + "' is not valid here (expected '" + name + "')");
    auto k = std::make_unique<SimKernel>(this, std::move(what), inputs, std::move(fn));
    k->set_tactic(name, tactic.empty());
    ++(tactic.empty() ? tuned_timed_ : tuned_recorded_);
    return k;
  }
  // NHWC convolution (KRSC filter; [R,S,C] for the depthwise kernel) with bias, residual, clamp.
  std::unique_ptr<Kernel> conv_kernel(const ConvDesc& d, bool depthwise, const std::string& tactic) {
    const int64_t oh = (d.h + 2 * d.pad_h - d.dil_h * (d.r - 1) - 1) / d.stride_h + 1;
    const int64_t ow = (d.w + 2 * d.pad_w - d.dil_w * (d.s - 1) - 1) / d.stride_w + 1;
    if (oh <= 0 || ow <= 0 || d.c % d.groups || d.k % d.groups) throw std::runtime_error("conv: bad parameters");
    std::string what = depthwise ? "depthwise" : "conv";
    if (d.in_clip) what += " input<=" + std::to_string(d.in_clip_hi);
    return tuned(depthwise ? "sim-depthwise" : "sim-conv", tactic, what, 2 + d.bias + d.residual, [d, oh, ow, depthwise](const void* const* in, void* const* out, void*) {
      const int64_t cg = d.c / d.groups, kg = d.k / d.groups;
      const void* bias = d.bias ? in[2] : nullptr;
      const void* z = d.residual ? in[d.bias ? 3 : 2] : nullptr;
      for (int64_t n = 0; n < d.n; ++n)
        for (int64_t y = 0; y < oh; ++y)
          for (int64_t x = 0; x < ow; ++x)
            for (int64_t k = 0; k < d.k; ++k) {
              const int64_t g = k / kg;
              double acc = 0;
              for (int64_t r = 0; r < d.r; ++r)
                for (int64_t s = 0; s < d.s; ++s) {
                  const int64_t iy = y * d.stride_h - d.pad_h + r * d.dil_h, ix = x * d.stride_w - d.pad_w + s * d.dil_w;
                  if (iy < 0 || iy >= d.h || ix < 0 || ix >= d.w) continue;
                  for (int64_t ci = 0; ci < cg; ++ci) {
                    const int64_t c = g * cg + ci;
                    const int64_t wi = depthwise ? (r * d.s + s) * d.c + k : ((k * d.r + r) * d.s + s) * cg + ci;
                    float xv = sim_load(d.type, in[0], ((n * d.h + iy) * d.w + ix) * d.c + c);
                    if (d.in_clip) xv = std::min(xv, d.in_clip_hi);
                    acc += static_cast<double>(xv) * sim_load(d.type, in[1], wi);
                  }
                }
              const int64_t o = ((n * oh + y) * ow + x) * d.k + k;
              float v = static_cast<float>(acc);
              if (bias) v += sim_load(d.type, bias, k);
              if (z) v += sim_load(d.type, z, o);
              if (d.act == Act::kRelu) v = std::max(v, 0.f);
              if (d.act == Act::kClip) v = std::min(std::max(v, d.clip_lo), d.clip_hi);
              if (d.act == Act::kSilu) v = v / (1.f + std::exp(-v));
              sim_store(d.type, out[0], o, v);
            }
    });
  }

  // Kiln's INT8 convolution (ConvDesc's INT8 contract): exact integer sums, the FP32 epilogue,
  // INT8 outputs rounded half to even and saturated. The same shape rules as the CUDA kernel.
  std::unique_ptr<Kernel> int8_conv_kernel(const ConvDesc& d, const std::string& tactic) {
    if (props_.sm_major < 8) throw std::runtime_error("conv int8: INT8 tensor-core convolutions need sm_80 or newer");
    if (d.groups != 1 || d.c % 16 || d.k % 8) throw std::runtime_error("conv int8: needs groups 1, c % 16 == 0, k % 8 == 0");
    if (d.y_type != ElemType::kI8 && d.y_type != ElemType::kF16) throw std::runtime_error("conv int8: bad output type");
    if (d.act == Act::kSilu) throw std::runtime_error("conv int8: no SiLU epilogue");
    const int64_t oh = (d.h + 2 * d.pad_h - d.dil_h * (d.r - 1) - 1) / d.stride_h + 1;
    const int64_t ow = (d.w + 2 * d.pad_w - d.dil_w * (d.s - 1) - 1) / d.stride_w + 1;
    if (oh <= 0 || ow <= 0) throw std::runtime_error("conv int8: bad parameters");
    auto k = tuned("sim-conv-int8", tactic, std::string("conv int8 -> ") + (d.y_type == ElemType::kI8 ? "int8" : "fp16"),
                 3 + d.bias + d.residual, [d, oh, ow](const void* const* in, void* const* out, void*) {
      const auto* x = static_cast<const int8_t*>(in[0]);
      const auto* w = static_cast<const int8_t*>(in[1]);
      const auto* scale = static_cast<const float*>(in[2]);
      const float* bias = d.bias ? static_cast<const float*>(in[3]) : nullptr;
      const void* z = d.residual ? in[d.bias ? 4 : 3] : nullptr;
      for (int64_t n = 0; n < d.n; ++n)
        for (int64_t y = 0; y < oh; ++y)
          for (int64_t xo = 0; xo < ow; ++xo)
            for (int64_t k = 0; k < d.k; ++k) {
              int64_t acc = 0;
              for (int64_t r = 0; r < d.r; ++r)
                for (int64_t s = 0; s < d.s; ++s) {
                  const int64_t iy = y * d.stride_h - d.pad_h + r * d.dil_h, ix = xo * d.stride_w - d.pad_w + s * d.dil_w;
                  if (iy < 0 || iy >= d.h || ix < 0 || ix >= d.w) continue;
                  for (int64_t c = 0; c < d.c; ++c)
                    acc += static_cast<int64_t>(x[((n * d.h + iy) * d.w + ix) * d.c + c]) * w[((k * d.r + r) * d.s + s) * d.c + c];
                }
              const int64_t o = ((n * oh + y) * ow + xo) * d.k + k;
              float v = std::fma(static_cast<float>(acc), scale[k], bias ? bias[k] : 0.f);
              if (z) v = d.z_type == ElemType::kF16 ? v + sim_load(ElemType::kF16, z, o)
                                                     : std::fma(sim_load(ElemType::kI8, z, o), d.z_scale, v);
              if (d.act == Act::kRelu) v = std::max(v, 0.f);
              if (d.act == Act::kClip) v = std::min(std::max(v, d.clip_lo), d.clip_hi);
              if (d.y_type == ElemType::kF16) sim_store(ElemType::kF16, out[0], o, v);
              else static_cast<int8_t*>(out[0])[o] = static_cast<int8_t>(std::clamp(std::nearbyint(v * (1.f / d.y_scale)), -128.f, 127.f));
            }
    });
    static_cast<SimKernel*>(k.get())->set_ms(0.1);  // faster than FP16 (1 ms), as on a GPU at scale
    return k;
  }

  DeviceProps props_;
  mutable std::mutex mu_;
  std::map<void*, size_t> live_;
  std::map<const void*, size_t> registered_;
  std::atomic<bool> refuse_register_{false};
  size_t used_ = 0;
  std::map<void*, std::unique_ptr<Graph>> capturing_;
  int graphs_made_ = 0, graph_launches_ = 0;
  std::atomic<int> sync_delay_ms_{0};
  int64_t kernels_run_ = 0;
  std::atomic<int> tuned_timed_{0}, tuned_recorded_{0};
  std::atomic<bool> modeled_time_{false};
  double modeled_ms_ = 0;  // under mu_
};

inline void SimKernel::launch(const void* const* in, void* const* out, void* ws, void* stream) const {
  // The pointers are copied: a captured launch runs later, after the caller's arrays are gone.
  std::vector<const void*> ins(in, in + inputs_);
  std::vector<void*> outs(out, out + outputs_);
  SimDevice* dev = dev_;
  Fn fn = fn_;
  const double ms = ms_;
  dev_->enqueue(stream, [dev, fn, ins, outs, ws, ms] {
    dev->count_kernel();
    dev->add_modeled_ms(ms);
    fn(ins.data(), outs.data(), ws);
  });
}

}  // namespace kiln_test
