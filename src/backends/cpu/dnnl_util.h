// Shared oneDNN plumbing for the CPU tactics: the engine, per-thread streams, dtype and activation
// mapping. oneDNN (Debian libdnnl-dev 2.6, OpenMP runtime) runs on the calling thread's OpenMP team.
#pragma once
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
// gemm dispatches at run time on whatever the machine has).
std::vector<std::string> isa_of_impl(const std::string& impl_info);

}  // namespace kiln::cpu
