// Shared oneDNN plumbing for the CPU tactics: the engine, per-thread streams, dtype and activation
// mapping. oneDNN (Debian libdnnl-dev 2.6, OpenMP runtime) runs on the calling thread's OpenMP team.
#pragma once
#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <string>
#include <vector>

#include "ir/dtype.h"

namespace kiln::cpu {

// The process-wide CPU engine (thread-safe, created once).
dnnl::engine& dnnl_engine();
// A stream for the calling thread (primitives run on the caller's OpenMP team).
dnnl::stream& dnnl_stream();
// f32, f16, bf16, s8, u8, s32; throws kUnsupported for the rest.
dnnl::memory::data_type dnnl_dtype(DType dt);
bool dnnl_supports_dtype(DType dt);

// Appends the eltwise post-op for a fused activation ("" appends nothing). Names and params are
// those of FusedConv / FusedMatMul's `activation` / `activation_params` (src/ops/fused_activation.h).
// Returns false when oneDNN has no equivalent (the tactic then does not support the node).
bool append_activation(dnnl::post_ops& ops, const std::string& activation, const std::vector<float>& params);

// The ISA features an implementation string implies, in host_fingerprint()'s names:
// "brgconv:avx512_core" -> {"avx512f"}; "jit:avx2" -> {"avx2"}; "gemm:jit", "ref" -> {} (oneDNN's
// gemm dispatches at run time on whatever the machine has). oneDNN's ISA levels nest (AMX implies
// AVX512_BF16 implies VNNI), so "brgconv:avx512_core_amx_bf16" needs all of them.
std::vector<std::string> isa_of_impl(const std::string& impl_info);

// True when oneDNN runs bfloat16 convolutions and matmuls natively here (AVX512_BF16 or AMX-BF16,
// within DNNL_MAX_CPU_ISA). Without it oneDNN would emulate bf16 on plain AVX-512 (slower than f32)
// or use its reference kernels, so the bf16 tactics refuse and the f32 tactics run bf16-marked nodes
// in float32. Decided once per process.
bool host_has_fast_bf16();

// Adds what a bf16 kernel needs beyond its impl string ({"avx512f", "avx512_bf16"}, once each): it was
// chosen because host_has_fast_bf16(), so an engine holding it must not load where that is false,
// even for impls whose string names no ISA ("gemm:jit" dispatches at run time).
void add_bf16_isa(std::vector<std::string>& isa);

// oneDNN's jit kernels split their work for the thread count current when the primitive is created
// and keep that split: build them under the engine's thread count (the caller's team size at run time).
class ThreadCountScope {
 public:
  explicit ThreadCountScope(int threads) : saved_(omp_get_max_threads()) {
    if (threads > 0) omp_set_num_threads(threads);
  }
  ~ThreadCountScope() { omp_set_num_threads(saved_); }
  ThreadCountScope(const ThreadCountScope&) = delete;
  ThreadCountScope& operator=(const ThreadCountScope&) = delete;

 private:
  int saved_;
};

// Scratchpads are always the caller's (args.scratch): no hidden per-primitive buffers, and
// concurrent runs on different scratch buffers stay independent.
inline dnnl::primitive_attr user_scratchpad_attr() {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
}

}  // namespace kiln::cpu
