// GPU engine files: build, target check and load (see gpu_engine.h).
#include "backends/gpu/gpu_engine.h"

#include <algorithm>
#include <chrono>

#include "backends/gpu/gpu_build.h"
#include "backends/gpu/loader.h"
#include "kiln/error.h"

namespace kiln::gpu {

namespace {

// Target property names (EngineInfo::target.properties of a "cuda" engine).
constexpr const char* kGpu = "gpu";
constexpr const char* kSm = "sm";
constexpr const char* kCuda = "cuda";
constexpr const char* kCublasLt = "cublaslt";
constexpr const char* kCudnn = "cudnn";
constexpr const char* kDriver = "driver";
constexpr const char* kPrecision = "precision";
constexpr const char* kHardwareCompatible = "hardware_compatible";
constexpr const char* kWorkspace = "workspace_limit";
constexpr const char* kTacticTarget = "tactic_target";
constexpr int kMinSmMajor = 8;  // the oldest architecture the module is built for (sm_80)

std::string prop(const EngineInfo& info, const char* key) { return info.target.property(key); }

// "sm_90" -> 90; -1 when malformed.
int sm_number(const std::string& sm) {
  if (sm.size() < 5 || sm.size() > 6 || sm.compare(0, 3, "sm_") != 0) return -1;
  int v = 0;
  for (size_t i = 3; i < sm.size(); ++i) {
    if (sm[i] < '0' || sm[i] > '9') return -1;
    v = v * 10 + (sm[i] - '0');
  }
  return v;
}

}  // namespace

bool is_gpu_engine(const EngineInfo& info) { return info.target.backend == "cuda"; }

GpuEngineBuild build_gpu_engine(Model model, const ShapeMap& shapes, int device_index, const GpuEngineOptions& options) {
  for (const auto& in : model.graph.inputs)
    if (!shapes.count(in))
      throw Error(ErrorCode::kInvalidArgument, "a GPU engine has static shapes: give input '" + in + "' one with --shapes");
  CompileOptions co;
  co.precision = options.precision;
  co.workspace_limit = options.workspace_limit;
  co.tactics = options.timing_cache;
  co.log = options.log;
  GpuBuild b = build_gpu_program(std::move(model), shapes, device_index, co, options.opt_level, options.fp8);
  GpuEngineBuild out;
  out.program = b.program;
  out.nodes_before = b.nodes_before;
  out.nodes_after = b.nodes_after;
  out.pass_ms = b.pass_ms;
  out.compile_ms = b.compile_ms;
  out.fp8_gemms = b.fp8_gemms;
  out.int8_convs = b.int8_convs;
  out.int8_gemms = b.int8_gemms;
  out.calib_ms = b.calib_ms;
  out.guard = std::move(b.guard);
  out.guard_ms = b.guard_ms;
  out.optimized = std::move(b.optimized);

  const DeviceProps& d = out.program->device().props();
  EngineInfo& info = out.info;
  info.target = TargetFingerprint{};
  info.target.backend = "cuda";
  auto& p = info.target.properties;
  p[kGpu] = d.name;
  p[kSm] = d.sm();
  p[kCuda] = std::to_string(d.runtime_version);
  p[kDriver] = std::to_string(d.driver_version);
  p[kCublasLt] = std::to_string(d.cublaslt_version);
  p[kCudnn] = std::to_string(d.cudnn_version);
  p[kPrecision] = precision_name(options.precision);
  p[kHardwareCompatible] = options.hardware_compatible ? "1" : "0";
  p[kWorkspace] = std::to_string(options.workspace_limit);
  p[kTacticTarget] = gpu_target(d);
  info.opt_level = options.opt_level;
  info.profile_shapes = shapes;
  OptimizationProfile prof;
  for (const auto& [name, dims] : shapes) prof.inputs[name] = ProfileDims{dims, dims, dims};
  info.profiles = {prof};
  info.memory_peak = out.program->arena_bytes();
  info.memory_total = out.program->activation_bytes_total();
  info.kernels = out.program->steps().size();
  for (const auto& [key, e] : out.program->tactics()) info.tactics[key] = EngineInfo::Tactic{e.tactic, e.ms};
  return out;
}

std::string gpu_engine_mismatch(const EngineInfo& info, const DeviceProps& device) {
  const std::string sm = prop(info, kSm), gpu = prop(info, kGpu);
  const bool compatible = prop(info, kHardwareCompatible) == "1";
  const std::string here = device.name + " (" + device.sm() + ")";
  if (compatible) {
    if (device.sm_major < kMinSmMajor)
      return "the engine is hardware-compatible with SM 8.0 and newer, and this GPU is " + here;
    return {};
  }
  if (sm != device.sm())
    return "the engine was built for " + gpu + " (" + sm + ") and this GPU is " + here +
           ": GPU engines run on the architecture they were built for; rebuild it on this GPU, or build it with "
           "--hardware-compatible";
  std::vector<std::string> diffs;
  auto check = [&](const char* what, const char* key, long long value) {
    if (prop(info, key) != std::to_string(value))
      diffs.push_back(std::string(what) + " " + prop(info, key) + " at build, " + std::to_string(value) + " here");
  };
  check("CUDA runtime", kCuda, device.runtime_version);
  check("cuBLASLt", kCublasLt, static_cast<long long>(device.cublaslt_version));
  check("cuDNN", kCudnn, static_cast<long long>(device.cudnn_version));
  if (diffs.empty()) return {};
  std::string s = "the engine's kernels were chosen with other libraries (";
  for (size_t i = 0; i < diffs.size(); ++i) s += (i ? "; " : "") + diffs[i];
  return s + "): rebuild it with this CUDA installation, or build it with --hardware-compatible";
}

LoadedGpuEngine load_gpu_engine(const Model& optimized, const EngineInfo& info, int device_index,
                                std::shared_ptr<WeightPool> weights, std::vector<std::string>* log) {
  if (!is_gpu_engine(info))
    throw Error(ErrorCode::kInvalidArgument,
                "this is a CPU engine (backend '" + info.target.backend +
                    "'); build a GPU engine with 'kiln build --device cuda', or run this one without --device");
  const std::string sm = prop(info, kSm), precision = prop(info, kPrecision), workspace = prop(info, kWorkspace);
  if (sm_number(sm) < 0 || precision.empty() || workspace.empty() || info.profile_shapes.empty())
    throw Error(ErrorCode::kInvalidArgument, "the GPU engine's record is incomplete (its SM, precision, workspace "
                                             "limit or input shapes are missing): rebuild it with 'kiln build --device cuda'");
  LoadedGpuEngine out;
  out.precision = parse_precision(precision);
  out.shapes = info.profile_shapes;
  size_t limit = 0;
  try {
    size_t used = 0;
    limit = std::stoull(workspace, &used);
    if (used != workspace.size()) throw std::invalid_argument(workspace);
  } catch (const std::exception&) {
    throw Error(ErrorCode::kInvalidArgument, "the GPU engine's workspace limit '" + workspace + "' is not a number");
  }
  auto device = open_device(device_index);
  const DeviceProps& d = device->props();
  if (const std::string why = gpu_engine_mismatch(info, d); !why.empty())
    throw Error(ErrorCode::kUnsupported, "cannot run this GPU engine on cuda:" + std::to_string(d.id) + ": " + why);
  // The recorded shapes must be sizes a tensor on this GPU can have (a hostile file could hold any).
  for (const auto& [name, dims] : out.shapes) {
    const TensorType* t = optimized.graph.type_of(name);
    uint64_t bytes = t ? std::max<size_t>(1, dtype_size(t->dtype)) : 1;
    bool fits = true;
    for (int64_t v : dims) fits = fits && v >= 0 && !__builtin_mul_overflow(bytes, static_cast<uint64_t>(v), &bytes);
    if (!fits || bytes > d.total_memory)
      throw Error(ErrorCode::kInvalidArgument, "the GPU engine's input '" + name + "' has shape " +
                                                   shape_to_string(dims) + ", which no tensor on cuda:" +
                                                   std::to_string(d.id) + " can hold (the file is corrupted)");
  }
  // The recorded tactics apply where the tactic target is this device's; a hardware-compatible
  // engine elsewhere times its kernels here.
  cpu::TimingCache cache(gpu_target(d));
  out.tactics_used = prop(info, kTacticTarget) == cache.target();
  if (out.tactics_used)
    for (const auto& [key, t] : info.tactics) cache.put(key, {t.tactic, t.ms});
  CompileOptions co;
  co.precision = out.precision;
  co.workspace_limit = limit;
  co.weights = std::move(weights);
  co.log = log;
  co.tactics = &cache;
  const auto t0 = std::chrono::steady_clock::now();
  out.program = GpuProgram::compile(device, optimized, out.shapes, co);
  out.compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace kiln::gpu
