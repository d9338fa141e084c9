// Microbenchmarks of the CUDA backend's building blocks on the GPU at hand: cuBLASLt matmuls with
// and without fused epilogues (TFLOP/s, the chosen candidate among those timed), and the
// memory-bound kernels (GB/s counting bytes read and written once). Median of timed repeats after a
// warm-up, with device events; inputs are seeded random values (never zeros or constants, which
// run faster than real data).
//
//   kiln_cuda_bench            # prints a table; exit 1 with the error when there is no GPU
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <cstdio>
#include <functional>
#include <vector>

#include "backends/cuda/conv.h"
#include "backends/cuda/conv_int8.h"
#include "backends/cuda/cuda_util.h"
#include "backends/cuda/kernels.h"
#include "backends/cuda/lt_matmul.h"
#include "backends/cuda/stem.h"

using namespace kiln::cuda;

namespace {
// As an engine's CUDA graph runs it: time_tactic (back-to-back runs replayed as a graph), so a
// library's host-side launch overhead is not counted as GPU time.
float median_ms(const std::function<void(cudaStream_t)>& f, cudaStream_t s) { return time_tactic(f, s); }

// Uniform random values in [-1, 1) as fp32, or as fp16 / bf16 bit patterns (es == 2, `bf16`).
DeviceBuffer filled(size_t bytes, int seed, bool bf16 = false) {
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<uint16_t> h16;
  std::vector<float> h32;
  DeviceBuffer d(bytes);
  if (bytes % 4 == 0 && !bf16 && seed < 0) {
    h32.resize(bytes / 4);
    for (float& v : h32) v = u(rng);
    KILN_CUDA_CHECK(cudaMemcpy(d.get(), h32.data(), bytes, cudaMemcpyHostToDevice));
    return d;
  }
  h16.resize(bytes / 2);
  for (uint16_t& v : h16) {
    const float f = u(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if (bf16) {
      v = static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
    } else {  // fp16 from fp32 for |f| < 1 (normal range; subnormals flushed)
      const uint32_t sign = (bits >> 16) & 0x8000, exp = (bits >> 23) & 0xff, man = bits & 0x7fffff;
      const int e = static_cast<int>(exp) - 127 + 15;
      v = static_cast<uint16_t>(e <= 0 ? sign : sign | (e << 10) | (man >> 13));
    }
  }
  KILN_CUDA_CHECK(cudaMemcpy(d.get(), h16.data(), bytes, cudaMemcpyHostToDevice));
  return d;
}
}  // namespace

int main() {
  try {
    DeviceInfo d = query_device(0);
    std::printf("device: %s (%s, %d SMs, %.1f GiB), driver %d, runtime %d, cuBLASLt %zu\n", d.name.c_str(),
                d.sm().c_str(), d.multiprocessors, d.total_memory / 1073741824.0, d.driver_version, d.runtime_version,
                d.cublaslt_version);
    Stream stream;
    // KILN_CUDA_BENCH_CONV=<text>: only the convolution rows whose name holds <text>.
    const char* only = std::getenv("KILN_CUDA_BENCH_CONV");
    if (!only) {
    std::printf("\n%-44s %10s %10s  %s\n", "matmul (Y[M,N] = X[M,K] W[K,N])", "ms", "TFLOP/s", "algorithm");
    struct Row {
      const char* name;
      GemmShape s;
      GemmType t;
      Epilogue e;
    };
    const Row rows[] = {
        {"fp16 8192^3", {8192, 8192, 8192}, GemmType::kF16, Epilogue::kNone},
        {"fp16 8192^3 +bias+gelu", {8192, 8192, 8192}, GemmType::kF16, Epilogue::kBiasGelu},
        {"bf16 8192^3", {8192, 8192, 8192}, GemmType::kBF16, Epilogue::kNone},
        {"tf32 8192^3", {8192, 8192, 8192}, GemmType::kF32, Epilogue::kNone},
        {"fp16 BERT FFN1 b32 s128 (4096x3072x768) +bias+gelu", {4096, 3072, 768}, GemmType::kF16, Epilogue::kBiasGelu},
        {"fp16 BERT FFN2 b32 s128 (4096x768x3072) +bias", {4096, 768, 3072}, GemmType::kF16, Epilogue::kBias},
        {"fp16 BERT QKV b1 s128 (128x2304x768) +bias", {128, 2304, 768}, GemmType::kF16, Epilogue::kBias},
    };
    for (const Row& r : rows) {
      const size_t es = r.t == GemmType::kF32 ? 4 : 2;
      const bool bf = r.t == GemmType::kBF16;
      const int sg = r.t == GemmType::kF32 ? -1 : 1;  // negative seed: fp32 values
      DeviceBuffer x = filled(r.s.m * r.s.k * es, sg * 1, bf), w = filled(r.s.k * r.s.n * es, sg * 2, bf),
                   b = filled(r.s.n * es, sg * 3, bf), y(r.s.m * r.s.n * es);
      LtMatmul mm(r.s, r.t, r.e, 32u << 20, 8, stream.get());
      const float ms = median_ms([&](cudaStream_t s) { mm.run(x.get(), w.get(), b.get(), y.get(), s); }, stream.get());
      const double tflops = 2.0 * r.s.m * r.s.n * r.s.k / (ms * 1e-3) / 1e12;
      std::printf("%-44s %10.3f %10.1f  candidate %d of %zu\n", r.name, ms, tflops, mm.chosen(), mm.timings().size());
    }
    std::printf("\n%-44s %10s %10s\n", "memory-bound kernel", "ms", "GB/s");
    {
      const int64_t rows = 32 * 128, cols = 768;  // BERT b32 s128 hidden
      for (DType t : {DType::kF16, DType::kF32}) {
        const size_t es = t == DType::kF32 ? 4 : 2;
        const int sg = t == DType::kF32 ? -1 : 1;
        DeviceBuffer x = filled(rows * cols * es, sg * 4), g = filled(cols * es, sg * 5), b = filled(cols * es, sg * 6),
                     y(rows * cols * es);
        float ms = median_ms(
            [&](cudaStream_t s) { layer_norm(t, x.get(), g.get(), b.get(), y.get(), rows, cols, 1e-5f, s); },
            stream.get());
        std::printf("layer_norm %s 4096x768 %28s %10.4f %10.1f\n", dtype_name(t), "", ms,
                    2.0 * rows * cols * es / (ms * 1e-3) / 1e9);
        DeviceBuffer big = filled(64 * 1024 * 1024 * es / 4, sg * 7), out(64 * 1024 * 1024 * es / 4);
        const int64_t n = 16 * 1024 * 1024;
        ms = median_ms([&](cudaStream_t s) { add(t, big.get(), big.get(), out.get(), n, s); }, stream.get());
        std::printf("add %s 16M %36s %10.4f %10.1f\n", dtype_name(t), "", ms, 3.0 * n * es / (ms * 1e-3) / 1e9);
      }
      const int64_t srows = 32 * 12 * 128, scols = 128;  // attention probabilities, BERT b32
      DeviceBuffer x = filled(srows * scols * 2, 8), y(srows * scols * 2);
      float ms = median_ms([&](cudaStream_t s) { softmax_rows(DType::kF16, x.get(), y.get(), srows, scols, s); },
                           stream.get());
      std::printf("softmax fp16 49152x128 %28s %10.4f %10.1f\n", "", ms, 2.0 * srows * scols * 2 / (ms * 1e-3) / 1e9);
    }
    std::printf("\n%-44s %10s %10s\n", "fused attention (FP32 FMA version)", "ms", "TFLOP/s");
    for (int64_t batch : {1, 32}) {
      const int64_t heads = 12, seq = 128, dim = 64, n = batch * heads * seq * dim;
      DeviceBuffer q = filled(n * 2, 9), k = filled(n * 2, 10), v = filled(n * 2, 11), o(n * 2);
      const float ms = median_ms(
          [&](cudaStream_t s) {
            attention(DType::kF16, q.get(), k.get(), v.get(), o.get(), batch, heads, seq, seq, dim, 0.125f, nullptr,
                      false, s);
          },
          stream.get());
      std::printf("attention fp16 BERT b%-3ld h12 s128 d64 %20s %10.4f %10.2f\n", static_cast<long>(batch), "", ms,
                  4.0 * batch * heads * seq * seq * dim / (ms * 1e-3) / 1e12);
    }
    // The tensor-core kernels (attention_tc) on dense [b, h, s, d] tensors: BERT-base with a
    // key-padding mask (zeros, one row of key biases per batch row), ViT-B/16 without a mask.
    std::printf("\n%-46s %10s %10s\n", "fused attention (tensor cores, attention_tc)", "ms", "TFLOP/s");
    struct AttnRow {
      const char* model;
      int64_t batch, seq;
      bool mask;
    };
    const AttnRow attn_rows[] = {
        {"BERT", 1, 128, true}, {"BERT", 32, 128, true}, {"BERT", 128, 128, true}, {"ViT", 1, 197, false},
        {"ViT", 64, 197, false}};
    for (const AttnRow& r : attn_rows) {
      const int64_t heads = 12, dim = 64, n = r.batch * heads * r.seq * dim;
      DeviceBuffer q = filled(n * 2, 16), k = filled(n * 2, 17), v = filled(n * 2, 18), o(n * 2);
      DeviceBuffer mask(r.batch * r.seq * 4);
      KILN_CUDA_CHECK(cudaMemset(mask.get(), 0, mask.bytes()));
      AttnLayout L{};
      for (int64_t* x : {L.q, L.k, L.v, L.o}) x[0] = heads * r.seq * dim, x[1] = r.seq * dim, x[2] = dim;
      L.mask[0] = r.seq, L.mask[1] = 0, L.mask[2] = 0;
      const std::pair<AttnKernel, const char*> kernels[] = {
          {AttnKernel::kAuto, "auto"}, {AttnKernel::kMma, "mma"}, {AttnKernel::kSplit, "split"}, {AttnKernel::kWarp, "warp"}};
      for (const auto& [which, kname] : kernels) {
        const float ms = median_ms(
            [&](cudaStream_t s) {
              attention_tc(DType::kF16, q.get(), k.get(), v.get(), o.get(), r.batch, heads, r.seq, r.seq, dim, 0.125f, L,
                           r.mask ? mask.as<float>() : nullptr, false, s, which);
            },
            stream.get());
        char name[80];
        std::snprintf(name, sizeof(name), "attention_tc fp16 %s b%ld h12 s%ld d64%s [%s]", r.model,
                      static_cast<long>(r.batch), static_cast<long>(r.seq), r.mask ? " +mask" : "", kname);
        std::printf("%-52s %10.4f %10.2f\n", name, ms, 4.0 * r.batch * heads * r.seq * r.seq * dim / (ms * 1e-3) / 1e12);
      }
    }
    }  // !only
    // cuDNN convolutions, NHWC fp16 with the epilogue a ResNet-50 layer fuses (bias + ReLU; the
    // last 1x1 of a bottleneck also adds the residual), batch 32 and 256.
    std::printf("\n%-44s %10s %10s  %s\n", "conv (ResNet-50 layers, fp16 NHWC)", "ms", "TFLOP/s", "algorithm");
    struct ConvRow {
      const char* name;
      int64_t c, hw, k, rs;
      int pad, stride;
      bool residual;
    };
    const ConvRow convs[] = {
        {"stem 7x7/2 3->64 224", 3, 224, 64, 7, 3, 2, false},
        {"stem 7x7/2 4->64 224 (channels padded to 4)", 4, 224, 64, 7, 3, 2, false},
        // The stem as a space-to-depth convolution: 2x2 blocks of the padded 230x230 input as 12
        // (padded to 16) channels of a 115x115 image, the 7x7 filter zero-padded to 8x8 as a 4x4.
        {"stem s2d 4x4 16->64 115", 16, 115, 64, 4, 0, 1, false},
        {"res2 1x1 256->64 56", 256, 56, 64, 1, 0, 1, false},
        {"res2 3x3 64->64 56", 64, 56, 64, 3, 1, 1, false},
        {"res2 1x1 64->256 56 +residual", 64, 56, 256, 1, 0, 1, true},
        {"res3 3x3/2 128->128 56", 128, 56, 128, 3, 1, 2, false},
        {"res3 3x3 128->128 28", 128, 28, 128, 3, 1, 1, false},
        {"res3 1x1 128->512 28 +residual", 128, 28, 512, 1, 0, 1, true},
        {"res4 1x1 1024->256 14", 1024, 14, 256, 1, 0, 1, false},
        {"res4 3x3 256->256 14", 256, 14, 256, 3, 1, 1, false},
        {"res5 1x1/2 1024->2048 14 (downsample)", 1024, 14, 2048, 1, 0, 2, false},
        {"res5 3x3 512->512 7", 512, 7, 512, 3, 1, 1, false},
        {"res5 1x1 512->2048 7 +residual", 512, 7, 2048, 1, 0, 1, true},
    };
    // The INT8 kernels' main loop apart from their epilogue: long K (many stages per tile) against
    // the ResNet-50 shapes' 8-36, each tile's rate.
    if (!only) {
      struct Probe {
        const char* name;
        int64_t n, c, hw, k, rs;
      };
      const Probe probes[] = {{"1x1 4096->256 14 b256 (K 4096)", 256, 4096, 14, 256, 1},
                              {"1x1 1024->1024 28 b64", 64, 1024, 28, 1024, 1},
                              {"3x3 512->256 14 b256 (K 4608)", 256, 512, 14, 256, 3}};
      for (const Probe& pr : probes) {
        Int8ConvParams q;
        q.n = pr.n, q.c = pr.c, q.h = q.w = pr.hw, q.k = pr.k, q.r = q.s = pr.rs, q.pad_h = q.pad_w = pr.rs / 2;
        q.bias = true, q.act = ConvAct::kRelu, q.y_scale = 0.05f;
        const double ops = 2.0 * q.n * q.h * q.w * q.k * q.c * q.r * q.s;
        DeviceBuffer x = filled(q.n * q.h * q.w * q.c, 21), w = filled(q.k * q.r * q.s * q.c, 22), y(q.n * q.h * q.w * q.k);
        std::vector<float> sv(static_cast<size_t>(q.k), 1e-4f);
        DeviceBuffer scale(q.k * 4);
        KILN_CUDA_CHECK(cudaMemcpy(scale.get(), sv.data(), sv.size() * 4, cudaMemcpyHostToDevice));
        std::string line;
        for (int t = 0; t < static_cast<int>(Int8Tile::kCount); ++t) {
          if (!int8_tile_takes(q, static_cast<Int8Tile>(t))) continue;
          const float ms8 = median_ms(
              [&](cudaStream_t s) {
                conv_int8(q, static_cast<Int8Tile>(t), static_cast<const int8_t*>(x.get()), static_cast<const int8_t*>(w.get()),
                          static_cast<const float*>(scale.get()), static_cast<const float*>(scale.get()), nullptr, y.get(), s);
              },
              stream.get());
          char one[64];
          std::snprintf(one, sizeof(one), " %s %.0f", int8_tile_name(static_cast<Int8Tile>(t)), ops / (ms8 * 1e-3) / 1e12);
          line += one;
        }
        std::printf("int8 probe %-34s TOPS:%s\n", pr.name, line.c_str());
      }
    }
    for (int64_t batch : {32, 256}) {
      for (const ConvRow& r : convs) {
        if (only && !std::strstr(r.name, only)) continue;
        ConvParams p;
        p.n = batch, p.c = r.c, p.h = p.w = r.hw, p.k = r.k, p.r = p.s = r.rs;
        p.pad_h = p.pad_w = r.pad, p.stride_h = p.stride_w = r.stride;
        p.type = DType::kF16, p.bias = true, p.residual = r.residual, p.act = ConvAct::kRelu;
        const int64_t oh = p.out_h(), ow = p.out_w();
        DeviceBuffer x = filled(p.n * p.h * p.w * p.c * 2, 12), w = filled(p.k * p.r * p.s * p.c * 2, 13),
                     b = filled(p.k * 2, 14), y(p.n * oh * ow * p.k * 2);
        DeviceBuffer z = r.residual ? filled(p.n * oh * ow * p.k * 2, 15) : DeviceBuffer();
        CudnnConv conv(p, 64u << 20, stream.get());
        const float ms = median_ms(
            [&](cudaStream_t s) { conv.run(x.get(), w.get(), b.get(), r.residual ? z.get() : nullptr, y.get(), s); },
            stream.get());
        const double tflops = 2.0 * p.n * oh * ow * p.k * p.r * p.s * p.c / (ms * 1e-3) / 1e12;
        std::printf("b%-3ld %-40s %10.3f %10.1f  %s\n", static_cast<long>(batch), r.name, ms, tflops,
                    conv.describe().c_str());
        // Kiln's INT8 implicit GEMM on the same layer (INT8 in and out, per-channel scales, the
        // same epilogue), each tile; the row is skipped where the kernel does not take the shape.
        Int8ConvParams q;
        q.n = p.n, q.c = p.c, q.h = p.h, q.w = p.w, q.k = p.k, q.r = p.r, q.s = p.s;
        q.pad_h = p.pad_h, q.pad_w = p.pad_w, q.stride_h = p.stride_h, q.stride_w = p.stride_w;
        q.bias = true, q.residual = r.residual, q.act = ConvAct::kRelu, q.y_scale = 0.05f, q.z_scale = 0.02f;
        const bool kiln_takes = conv_int8_unsupported(q).empty();  // else only cuDNN's graph below
        DeviceBuffer scale(p.k * 4), bias32(p.k * 4);
        {
          std::vector<float> sv(static_cast<size_t>(p.k), 1e-4f);
          KILN_CUDA_CHECK(cudaMemcpy(scale.get(), sv.data(), sv.size() * 4, cudaMemcpyHostToDevice));
          KILN_CUDA_CHECK(cudaMemcpy(bias32.get(), sv.data(), sv.size() * 4, cudaMemcpyHostToDevice));
        }
        // The FP16 buffers' bytes serve as INT8 data (random, non-zero).
        float best = 1e30f;
        Int8Tile best_tile = Int8Tile::k128x128;
        float best_mma = 1e30f;
        std::string tiles;  // every tile's time
        for (int t = 0; t < static_cast<int>(Int8Tile::kCount); ++t) {
          if (!kiln_takes || !int8_tile_takes(q, static_cast<Int8Tile>(t))) continue;
          const float ms8 = median_ms(
              [&](cudaStream_t s) {
                conv_int8(q, static_cast<Int8Tile>(t), static_cast<const int8_t*>(x.get()),
                          static_cast<const int8_t*>(w.get()), static_cast<const float*>(scale.get()),
                          static_cast<const float*>(bias32.get()), r.residual ? z.get() : nullptr, y.get(), s);
              },
              stream.get());
          if (ms8 < best) best = ms8, best_tile = static_cast<Int8Tile>(t);
          if (t < static_cast<int>(Int8Tile::kW128x256)) best_mma = std::min(best_mma, ms8);
          char one[48];
          std::snprintf(one, sizeof(one), " %s %.3f", int8_tile_name(static_cast<Int8Tile>(t)), ms8);
          tiles += one;
        }
        if (kiln_takes) {
        std::printf("b%-3ld %-40s %10.3f %10.1f  kiln int8 implicit gemm %s (%.2fx fp16; best mma.sync tile %.3f ms)\n",
                    static_cast<long>(batch), r.name, best, 2.0 * p.n * oh * ow * p.k * p.r * p.s * p.c / (best * 1e-3) / 1e12,
                    int8_tile_name(best_tile), ms / best, best_mma);
        std::printf("     tiles:%s\n", tiles.c_str());
        }
        // A 1x1 layer as one cuBLASLt INT8 GEMM (scales made on the stream, then the GEMM).
        if (conv_int8_gemm_unsupported(q).empty()) try {
          Int8ConvGemm g(q, 64u << 20, stream.get());
          DeviceBuffer ws(g.workspace_bytes());
          const float msg = median_ms(
              [&](cudaStream_t s) {
                g.run(static_cast<const int8_t*>(x.get()), static_cast<const int8_t*>(w.get()),
                      static_cast<const float*>(scale.get()), static_cast<const float*>(bias32.get()),
                      r.residual ? z.get() : nullptr, y.get(), s, ws.get());
              },
              stream.get());
          const double bytes = static_cast<double>(p.n * p.h * p.w * (p.c + p.k * (r.residual ? 2 : 1)));
          std::printf("b%-3ld %-40s %10.3f %10.1f  cublasLt int8 gemm, %.2f TB/s (%.2fx fp16) %s\n",
                      static_cast<long>(batch), r.name, msg, 2.0 * p.n * oh * ow * p.k * p.c / (msg * 1e-3) / 1e12,
                      bytes / (msg * 1e-3) / 1e12, ms / msg, g.describe().c_str());
        } catch (const CudaError& e) {
          std::printf("b%-3ld %-40s  cublasLt int8 gemm: %s\n", static_cast<long>(batch), r.name, e.what());
        }
        // cuDNN's graph API on the same 8-bit layer: INT8 and FP8 E4M3, 8-bit or FP16 out.
        for (const bool fp8 : {false, true}) {
          for (const bool y8 : {true, false}) {
            GraphQuant gq;
            gq.fp8 = fp8, gq.y_8bit = y8, gq.y_scale = 0.05f, gq.z_8bit = y8, gq.z_scale = 0.02f;
            const char* kind = fp8 ? (y8 ? "fp8->fp8" : "fp8->fp16") : (y8 ? "int8->int8" : "int8->fp16");
            try {
              CudnnGraphConv g(p, gq, 64u << 20, stream.get(), {}, 8);
              DeviceBuffer ws(g.workspace_bytes());
              const float msg = median_ms(
                  [&](cudaStream_t s) {
                    g.run_quant(x.get(), w.get(), static_cast<const float*>(scale.get()), bias32.get(),
                                r.residual ? z.get() : nullptr, y.get(), s, ws.get(), ws.bytes());
                  },
                  stream.get());
              std::printf("b%-3ld %-40s %10.3f %10.1f  cudnn graph %s (%.2fx fp16) %s\n", static_cast<long>(batch), r.name,
                          msg, 2.0 * p.n * oh * ow * p.k * p.r * p.s * p.c / (msg * 1e-3) / 1e12, kind, ms / msg,
                          g.describe().c_str());
            } catch (const CudaError& e) {
              std::printf("b%-3ld %-40s  cudnn graph %s: %.300s\n", static_cast<long>(batch), r.name, kind, e.what());
            }
          }
        }
      }
    }
    // Kiln's fused stem (stem.cu): ResNet-50's 7x7/2 3->64 convolution, bias, ReLU and 3x3/2 max
    // pooling from the FP32 NCHW image, FP16 or INT8 out; TFLOP/s counts the convolution's FLOPs.
    if (!only || std::strstr("stem fused", only)) {
      std::printf("\n%-44s %10s %10s\n", "fused stem (conv 7x7/2 + ReLU + maxpool 3x3/2)", "ms", "TFLOP/s");
      const char* only_batch = std::getenv("KILN_CUDA_BENCH_STEM_BATCH");  // one batch (profiling)
      for (int64_t batch : {1, 32, 256}) {
        if (only_batch && std::atoll(only_batch) != batch) continue;
        kiln::gpu::StemPoolDesc sd;
        sd.n = batch, sd.c = 3, sd.h = sd.w = 224, sd.lo = 0;
        DeviceBuffer x = filled(sd.n * 3 * 224 * 224 * 4, -31), w = filled(64 * kiln::gpu::stem_filter_pitch(3) * 2, 32),
                     b = filled(64 * 2, 33), y(sd.n * 56 * 56 * 64 * 2);
        for (const bool y8 : {false, true}) {
          sd.y_type = y8 ? kiln::gpu::ElemType::kI8 : kiln::gpu::ElemType::kF16, sd.y_scale = 0.05f;
          const float ms = median_ms([&](cudaStream_t s) { stem_pool(sd, x.get(), w.get(), b.get(), y.get(), s); }, stream.get());
          std::printf("b%-3ld fused stem fp32 in, %s out %18s %10.3f %10.1f\n", static_cast<long>(batch), y8 ? "int8" : "fp16", "",
                      ms, 2.0 * batch * 112 * 112 * 64 * 147 / (ms * 1e-3) / 1e12);
        }
      }
    }
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
  } catch (const CudaError& e) {
    std::fprintf(stderr, "kiln_cuda_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
