// Kiln engine files: an optimized graph plus its weights, ready to load without re-optimizing.
//
// Layout (little-endian):
//   [0, 64)        header: magic "KILNENG\0", format version (u32), header size (u32),
//                  flatbuffer offset + size (u64 each), weights offset + size (u64 each),
//                  CRC-32 (zlib) of every byte after the header (u32), zero padding
//   flatbuffer     size-prefixed, src/engine/engine.fbs: Kiln version, target fingerprint, build options,
//                  opsets, inputs/outputs, nodes, initializer records; everything by name
//   weight blob    64-byte aligned; every initializer starts at a 64-byte-aligned offset
//
// Loading maps the file; initializers are Tensor::view()s into the mapping (no copies).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ir/graph.h"

namespace kiln {

constexpr char kEngineMagic[8] = {'K', 'I', 'L', 'N', 'E', 'N', 'G', '\0'};
constexpr uint32_t kEngineFormatVersion = 2;
constexpr uint32_t kEngineHeaderSize = 64;
constexpr uint64_t kEngineWeightAlignment = 64;

// The machine an engine was built on and what its kernels need from the one it runs on.
struct TargetFingerprint {
  std::string cpu_vendor;                 // "GenuineIntel", "AuthenticAMD"
  std::string cpu_model;                  // the CPU brand string
  std::vector<std::string> isa_features;  // what the build machine has: avx2, avx512f, avx512_vnni, avx512_bf16, amx
  std::vector<std::string> required_isa;  // what the engine's kernels need (nothing for "reference")
  std::string backend = "reference";     // "cpu", "reference" or "cuda"
  // Backend-specific facts ("cuda": the GPU, its SM, the CUDA/cuBLASLt/cuDNN versions, precision).
  std::map<std::string, std::string> properties;
  std::string property(const std::string& key) const {  // "" when absent
    auto it = properties.find(key);
    return it == properties.end() ? std::string() : it->second;
  }
};

// This machine's fingerprint (cpuid / __builtin_cpu_supports), with nothing required.
TargetFingerprint host_fingerprint();
// The features `engine` requires that `host` lacks, in the engine's order.
std::vector<std::string> missing_isa_features(const TargetFingerprint& engine, const TargetFingerprint& host);

// One dynamic input's range; a profile covers every input with a dynamic dimension.
struct ProfileDims {
  std::vector<int64_t> min, opt, max;
};
struct OptimizationProfile {
  std::map<std::string, ProfileDims> inputs;
};

struct EngineInfo {
  std::string kiln_version = KILN_VERSION;
  TargetFingerprint target = host_fingerprint();
  int opt_level = 3;
  std::map<std::string, std::vector<int64_t>> profile_shapes;  // opt shapes of profile 0
  std::vector<std::string> disabled_passes;
  std::vector<OptimizationProfile> profiles;
  std::vector<std::string> node_tactics;  // per node of the optimized graph ("" none)
  int threads = 0;
  uint64_t memory_peak = 0, memory_total = 0, kernels = 0;
  // GPU engines: the tactic of every tuned kernel by timing-cache key (ms: as timed, -1 unknown).
  struct Tactic {
    std::string tactic;
    double ms = -1;
  };
  std::map<std::string, Tactic> tactics;
};

struct EngineHeader {
  uint32_t format_version = 0;
  uint32_t header_size = 0;
  uint64_t flatbuffer_offset = 0, flatbuffer_size = 0;
  uint64_t weights_offset = 0, weights_size = 0;
  uint32_t crc32 = 0;
  uint64_t file_size = 0;
};

struct LoadedEngine {
  Model model;           // initializers view the mapping, which they keep alive
  EngineInfo info;
  EngineHeader header;
};

struct EngineLoadOptions {
  std::optional<TargetFingerprint> host;      // default: host_fingerprint()
  std::string kiln_version = KILN_VERSION;    // the version this Kiln is
  bool verify_crc = true;                     // the fuzzer turns it off to reach the decoder
  // GPU ("cuda") engines are read, not run, by load_engine: the GPU loader
  // (src/backends/gpu/gpu_engine.h) checks their target against the device. The CPU runtime
  // refuses them.
};

// Writes `optimized` (types inferred) and `info`. Throws kUnsupported for subgraph attributes
// and kIo when the file cannot be written.
void save_engine(const Model& optimized, const EngineInfo& info, const std::filesystem::path& path);
// Same, to bytes.
std::vector<uint8_t> serialize_engine(const Model& optimized, const EngineInfo& info);

// Maps and validates an engine file (magic, format version, header, CRC, flatbuffer verifier,
// tensor ranges, ops known at their opsets, Kiln version, target). Every failure is a
// kiln::Error naming the file.
LoadedEngine load_engine(const std::filesystem::path& path, const EngineLoadOptions& options = {});
// Same from bytes (copied into an aligned buffer the tensors view).
LoadedEngine load_engine_from_memory(std::span<const uint8_t> bytes, const EngineLoadOptions& options = {},
                                     const std::string& source = "<memory>");

// True when the file starts with the engine magic (never throws).
bool is_engine_file(const std::filesystem::path& path);

}  // namespace kiln
