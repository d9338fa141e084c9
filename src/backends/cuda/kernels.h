// Kiln's own CUDA kernels for what the libraries do not fuse: LayerNormalization over the last
// dim, Softmax over the last dim, bias + GELU (erf, ONNX's Gelu) and residual Add. Each takes
// FP32, FP16 or BF16 tensors (statistics always in FP32) and launches on the given stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace kiln::cuda {

enum class DType { kF32, kF16, kBF16 };
const char* dtype_name(DType t);

// y = (x - mean) / sqrt(var + eps) * gamma + beta, per row of `cols`; gamma and beta may be null
// (1 and 0).
void layer_norm(DType t, const void* x, const void* gamma, const void* beta, void* y, int64_t rows, int64_t cols,
                float eps, cudaStream_t stream);
// The same on x + residual (a fused residual Add; the sum is rounded to the dtype first, as the
// unfused Add's output would be). residual may be null. With `sum`, the rounded x + residual is
// written there too (the Add's output, for its other readers). With `y8`, y (rounded to the dtype)
// times y8_mul is also written there as FP8 E4M3, or with y8_int8 as INT8 (round half to even,
// saturated): a narrow GEMM's quantized input.
void layer_norm(DType t, const void* x, const void* residual, const void* gamma, const void* beta, void* y, int64_t rows,
                int64_t cols, float eps, cudaStream_t stream, void* sum = nullptr, void* y8 = nullptr, float y8_mul = 1.f,
                bool y8_int8 = false);
// y = softmax(x) along each row of `cols`.
void softmax_rows(DType t, const void* x, void* y, int64_t rows, int64_t cols, cudaStream_t stream);
// y = gelu(x + bias[col]) with gelu(v) = 0.5 v (1 + erf(v / sqrt 2)); bias may be null.
void bias_gelu(DType t, const void* x, const void* bias, void* y, int64_t rows, int64_t cols, cudaStream_t stream);
// y = a + b (same shape).
void add(DType t, const void* a, const void* b, void* y, int64_t n, cudaStream_t stream);

// Keeps every SM busy with dependent FMAs until the GPU runs at steady clocks (a fixed launch takes
// the same time five times in a row) or `ms` milliseconds have passed: brings the GPU to its
// working clocks before tactics are timed.
void busy_wait(int ms, int multiprocessors);

// Fused attention, flash-attention style (scores never reach memory; softmax online, statistics
// in FP32): O = softmax(Q K^T * scale + mask) V per batch and head. Q and O are [batch, heads,
// sq, head_dim], K and V [batch, heads, sk, head_dim], row major. `key_mask`, when given, is an
// additive FP32 mask [batch, sk] (BERT's padding mask: 0 or a large negative); `causal` hides keys
// after each query (key j > query i + sk - sq). A query that sees no key gets zeros. head_dim must
// be 16, 32, 64 or 128 (CudaError otherwise).
void attention(DType t, const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads,
               int64_t sq, int64_t sk, int64_t head_dim, float scale, const float* key_mask, bool causal,
               cudaStream_t stream);
// The same with explicit strides (elements; head dims contiguous): batch, head and row strides of
// Q, K, V and O, so [B, S, H*D] projections (kiln::Attention's layout) are read in place; and an
// FP32 additive mask whose last dim is the keys (contiguous) with batch, head and query-row strides
// (0 where it broadcasts; BERT's [B,1,1,S] padding mask is {S, 0, 0}, a [S,S] mask {0, 0, S}).
struct AttnLayout {
  int64_t q[3], k[3], v[3], o[3];
  int64_t mask[3];
};
void attention(DType t, const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads,
               int64_t sq, int64_t sk, int64_t head_dim, float scale, const AttnLayout& layout, const float* mask,
               bool causal, cudaStream_t stream);

// The tensor-core version (attention_tc.cu): FP16 or BF16 with head_dim 32, 64 or 128; FP32
// accumulation and softmax statistics. attention_tc_supported says whether it takes the problem.
// Three kernels (attention_tc.cu's header): kAuto picks by the grid; the others force one, for
// tests and benchmarks (kSplit needs sk >= 64; a forced kernel that does not take the problem
// throws CudaError).
enum class AttnKernel { kAuto, kMma, kSplit, kWarp };
bool attention_tc_supported(DType t, int64_t head_dim, const AttnLayout& layout);
void attention_tc(DType t, const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads,
                  int64_t sq, int64_t sk, int64_t head_dim, float scale, const AttnLayout& layout, const float* mask,
                  bool causal, cudaStream_t stream, AttnKernel which = AttnKernel::kAuto);

}  // namespace kiln::cuda
