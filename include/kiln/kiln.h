// Kiln's public C++ API, shaped like TensorRT's so its users feel at home: a logger, a network
// filled by the ONNX parser or by hand, a builder with its config and optimization profiles, and a
// runtime that loads engines and runs them through execution contexts. This header (and
// kiln/plugin.h, which it includes) uses only the standard library; the classes are pimpl'd.
//
// Error model: like TensorRT, calls report failure by return value (false, nullptr, an empty
// vector) and say why through the ILogger at kERROR. Nothing here throws, except AttrValue's typed
// accessors and loadPluginLibrary(path), which throw kiln::Error (kiln/error.h).
#pragma once
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "kiln/error.h"

namespace kiln {

// The Kiln version this header belongs to ("0.1.0").
const char* getVersion() noexcept;

// ---------------------------------------------------------------------------------------------
// Logging

class ILogger {
 public:
  enum class Severity : int32_t {
    kINTERNAL_ERROR = 0,  // a broken invariant inside Kiln
    kERROR = 1,           // the call failed
    kWARNING = 2,         // the call succeeded but something deserves attention (a stale timing cache)
    kINFO = 3,            // build steps, engine summary
    kVERBOSE = 4,         // tactic timings, per-pass details
  };
  virtual void log(Severity severity, const char* msg) noexcept = 0;
  virtual ~ILogger() = default;
};

// "ERROR", "WARNING", ...
const char* severityName(ILogger::Severity severity) noexcept;

// A ready-made logger: prints "[kiln] WARNING: msg" lines of severity up to `threshold` (kWARNING
// shows errors and warnings, kVERBOSE everything) to `out`.
class ConsoleLogger : public ILogger {
 public:
  explicit ConsoleLogger(Severity threshold = Severity::kWARNING, std::FILE* out = stderr)
      : threshold_(threshold), out_(out) {}
  void log(Severity severity, const char* msg) noexcept override;
  void setThreshold(Severity threshold) noexcept { threshold_ = threshold; }
  Severity getThreshold() const noexcept { return threshold_; }

 private:
  Severity threshold_;
  std::FILE* out_;
};

// ---------------------------------------------------------------------------------------------
// Value types

// Element types (TensorRT's values where they exist). kDOUBLE is Kiln's own.
enum class DataType : int32_t {
  kFLOAT = 0,
  kHALF = 1,
  kINT8 = 2,
  kINT32 = 3,
  kBOOL = 4,
  kUINT8 = 5,
  kBF16 = 7,
  kINT64 = 8,
  kDOUBLE = 10,
};
inline size_t getDataTypeSize(DataType type) noexcept;      // bytes per element; 0 for an unknown value
inline const char* getDataTypeName(DataType type) noexcept;  // "kFLOAT", ...

// A shape: nbDims dimensions, -1 for a dynamic one. Aggregate like TensorRT's Dims64:
// `Dims{4, {1, 3, 224, 224}}`, or `Dims::of({1, 3, 224, 224})`. nbDims == -1 marks an invalid
// result (an unknown name, a failed query).
struct Dims {
  static constexpr int32_t MAX_DIMS = 8;
  int32_t nbDims = 0;
  int64_t d[MAX_DIMS] = {};

  static Dims of(std::initializer_list<int64_t> dims) noexcept;
  static Dims invalid() noexcept { return Dims{-1, {}}; }
  // Product of the dimensions; -1 when one is dynamic or nbDims < 0.
  int64_t volume() const noexcept;
  std::string toString() const;  // "[1,3,224,224]", "[-1,3]"
};
bool operator==(const Dims& a, const Dims& b) noexcept;

// One node attribute: an int, a float, a string, a list of ints or a list of floats. Ints and
// floats convert implicitly (`{"alpha", 0.5}`); lists use AttrValue::ints / AttrValue::floats.
class AttrValue {
 public:
  enum class Type : int32_t { kINT, kFLOAT, kSTRING, kINTS, kFLOATS };
  using Value = std::variant<int64_t, float, std::string, std::vector<int64_t>, std::vector<float>>;

  AttrValue() : v_(int64_t{0}) {}
  template <std::integral T>
  AttrValue(T v) : v_(static_cast<int64_t>(v)) {}  // NOLINT(google-explicit-constructor)
  template <std::floating_point T>
  AttrValue(T v) : v_(static_cast<float>(v)) {}  // NOLINT(google-explicit-constructor)
  AttrValue(const char* v) : v_(std::string(v)) {}    // NOLINT(google-explicit-constructor)
  AttrValue(std::string v) : v_(std::move(v)) {}      // NOLINT(google-explicit-constructor)
  static AttrValue ints(std::vector<int64_t> v) { AttrValue a; a.v_ = std::move(v); return a; }
  static AttrValue floats(std::vector<float> v) { AttrValue a; a.v_ = std::move(v); return a; }

  Type type() const noexcept { return static_cast<Type>(v_.index()); }
  const Value& value() const noexcept { return v_; }
  // Typed reads; throw kiln::Error(kInvalidArgument) on another type. asFloat() also reads an int.
  int64_t asInt() const;
  float asFloat() const;
  const std::string& asString() const;
  const std::vector<int64_t>& asInts() const;
  const std::vector<float>& asFloats() const;
  std::string toString() const;

 private:
  Value v_;
};
using Attributes = std::map<std::string, AttrValue>;

// ---------------------------------------------------------------------------------------------
// Networks

class Builder;
class OnnxParser;
struct ApiAccess;  // Kiln's implementation reaches the private parts through it

// A graph of ONNX ops: filled by OnnxParser or by hand. Value names connect nodes, as in ONNX.
// Created by Builder::createNetworkV2(); errors go to the builder's logger.
class NetworkDefinition {
 public:
  ~NetworkDefinition();
  NetworkDefinition(const NetworkDefinition&) = delete;
  NetworkDefinition& operator=(const NetworkDefinition&) = delete;

  // A graph input; -1 in dims marks a dynamic dimension (give its range in an optimization profile).
  bool addInput(const std::string& name, DataType type, const Dims& dims);
  // A constant (weights); `data` holds volume(dims) dense row-major elements and is copied.
  bool addConstant(const std::string& name, DataType type, const Dims& dims, const void* data);
  // A node: op_type in `domain` ("" is ai.onnx; a plugin's namespace for plugin ops). Inputs must
  // be defined before (inputs, constants, earlier outputs); "" marks an omitted optional input.
  // `name` defaults to "<op_type>_<index>".
  bool addNode(const std::string& op_type, const std::vector<std::string>& inputs,
               const std::vector<std::string>& outputs, const Attributes& attributes = {},
               const std::string& domain = "", const std::string& name = "");
  // Same as addNode (TensorRT calls nodes layers).
  bool addLayer(const std::string& op_type, const std::vector<std::string>& inputs,
                const std::vector<std::string>& outputs, const Attributes& attributes = {},
                const std::string& domain = "", const std::string& name = "") {
    return addNode(op_type, inputs, outputs, attributes, domain, name);
  }
  bool markOutput(const std::string& name);
  // The opset a domain is imported at. Hand-built networks default to ai.onnx 17; a plugin domain
  // defaults to the highest version registered for it (else 1).
  void setOpsetVersion(const std::string& domain, int64_t version);

  int32_t getNbInputs() const;
  std::string getInputName(int32_t index) const;  // "" when out of range
  int32_t getNbOutputs() const;
  std::string getOutputName(int32_t index) const;
  int32_t getNbNodes() const;
  void setName(const std::string& name);
  std::string getName() const;

 private:
  friend struct ApiAccess;
  friend class Builder;
  friend class OnnxParser;
  struct Impl;
  explicit NetworkDefinition(ILogger& logger);
  std::unique_ptr<Impl> impl_;
};

// Fills an empty network from an ONNX model. Every op must be known to Kiln or to a loaded plugin
// (load plugins first); unsupported nodes are reported as errors, one per node.
class OnnxParser {
 public:
  OnnxParser(NetworkDefinition& network, ILogger& logger);
  ~OnnxParser();
  OnnxParser(const OnnxParser&) = delete;
  OnnxParser& operator=(const OnnxParser&) = delete;

  bool parseFromFile(const std::string& path);
  // `base_dir` resolves external data ("" forbids it).
  bool parse(const void* data, size_t size, const std::string& base_dir = "");
  int32_t getNbErrors() const;
  const char* getError(int32_t index) const;  // nullptr when out of range
  void clearErrors();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------
// Building

// Reduced precisions are allowed, not forced, and combine ("best available"): kINT8 where a layer
// can run it, then kBF16 for the other convolutions and matmuls, FP32 for everything else (norms,
// softmax, reductions, elementwise). Details: docs/precision.md.
enum class BuilderFlag : int32_t {
  kFP16 = 0,  // accepted, but the CPU backend has no FP16 kernels: layers stay FP32 (a warning says so)
  // Calibrated INT8 convolutions and matmuls: needs setInt8Calibrator() (or a calibration cache it
  // returns), unless the network has explicit QuantizeLinear/DequantizeLinear nodes (their scales are
  // used as written; no calibrator needed).
  kINT8 = 1,
  kDISABLE_TIMING_CACHE = 6,  // ignore setTimingCache()
  // setLayerPrecision() is binding: a layer that cannot run in the precision asked for fails the build.
  kOBEY_PRECISION_CONSTRAINTS = 10,
  // setLayerPrecision() is a preference (also the default): such a layer falls back to the best
  // allowed precision. kOBEY_PRECISION_CONSTRAINTS wins when both are set.
  kPREFER_PRECISION_CONSTRAINTS = 11,
  kBF16 = 17,  // BF16 convolutions and matmuls (FP32 accumulation) on CPUs with AVX512_BF16/AMX, else FP32
};
enum class MemoryPoolType : int32_t { kWORKSPACE = 0 };
enum class OptProfileSelector : int32_t { kMIN = 0, kOPT = 1, kMAX = 2 };

// min/opt/max shapes for each dynamic input. Tactics are timed at the opt shapes; contexts accept
// any shape between min and max. Named after TensorRT's interface, but a plain value type here.
class IOptimizationProfile {
 public:
  // Same rank for min, opt and max; checked by isValid() and at build.
  bool setDimensions(const std::string& inputName, OptProfileSelector select, const Dims& dims);
  Dims getDimensions(const std::string& inputName, OptProfileSelector select) const;  // invalid() if unset
  // Every input has all three shapes, of one rank, with 0 <= min <= opt <= max.
  bool isValid() const;
  std::vector<std::string> getInputNames() const;

 private:
  std::map<std::string, std::map<OptProfileSelector, Dims>> dims_;
};

// How INT8 calibration picks each tensor's clipping range (TensorRT's values where they exist).
enum class CalibrationAlgoType : int32_t {
  kENTROPY_CALIBRATION_2 = 2,     // minimizes the KL divergence of the quantized histogram
  kMINMAX_CALIBRATION = 3,        // the largest |value| seen
  kPERCENTILE_CALIBRATION = 100,  // Kiln's own: the getPercentile() percentile of |value|
};

// Feeds INT8 calibration (TensorRT's interface; subclass it, or IInt8EntropyCalibrator2 /
// IInt8MinMaxCalibrator). The builder calls getBatch() until it returns false, once per build, on
// the builder's thread. Kiln owns the buffers: bindings[i] is a HOST buffer for the network input
// names[i] (every input, in the network's order), holding getBatchSize() samples of the input's
// type, dense row-major, with dim 0 = the batch and the other dims from optimization profile 0's
// kOPT shape (or the input's static dims). Fill them and return true, or return false at the end.
class IInt8Calibrator {
 public:
  virtual ~IInt8Calibrator() = default;
  // Samples per getBatch(); must be > 0.
  virtual int32_t getBatchSize() const = 0;
  virtual bool getBatch(void* bindings[], const char* names[], int32_t nbBindings) = 0;
  // A calibration cache from an earlier build (the bytes writeCalibrationCache was given; plain text
  // starting "kiln-calibration"): when it returns bytes, the build uses them and calls getBatch()
  // only if the accuracy guard needs validation data. The bytes are copied before it returns.
  virtual const void* readCalibrationCache(std::size_t& length) {
    length = 0;
    return nullptr;
  }
  // Called after a calibration run with the cache's bytes (valid during the call), to store them.
  virtual void writeCalibrationCache(const void* /*ptr*/, std::size_t /*length*/) {}
  virtual CalibrationAlgoType getAlgorithm() { return CalibrationAlgoType::kENTROPY_CALIBRATION_2; }
  // kPERCENTILE_CALIBRATION only, in (0, 100]. Kiln extension.
  virtual double getPercentile() { return 99.99; }
};

// The entropy (KL divergence) method, TensorRT's default for CNNs.
class IInt8EntropyCalibrator2 : public IInt8Calibrator {
 public:
  CalibrationAlgoType getAlgorithm() override { return CalibrationAlgoType::kENTROPY_CALIBRATION_2; }
};

// The min/max method (often better for transformers, whose activations have rare large values).
class IInt8MinMaxCalibrator : public IInt8Calibrator {
 public:
  CalibrationAlgoType getAlgorithm() override { return CalibrationAlgoType::kMINMAX_CALIBRATION; }
};

class BuilderConfig {
 public:
  ~BuilderConfig();
  BuilderConfig(const BuilderConfig&) = delete;
  BuilderConfig& operator=(const BuilderConfig&) = delete;

  void setFlag(BuilderFlag flag);
  void clearFlag(BuilderFlag flag);
  bool getFlag(BuilderFlag flag) const;
  // kWORKSPACE: the most scratch memory one kernel may use (tactics needing more are skipped).
  // 0 (default): no limit.
  void setMemoryPoolLimit(MemoryPoolType pool, size_t bytes);
  size_t getMemoryPoolLimit(MemoryPoolType pool) const;
  // Returns the profile's index, or -1 (logged) when it is not valid.
  int32_t addOptimizationProfile(const IOptimizationProfile* profile);
  int32_t addOptimizationProfile(const IOptimizationProfile& profile) { return addOptimizationProfile(&profile); }
  int32_t getNbOptimizationProfiles() const;
  // Graph optimization level 0 (no passes) to 5; default 3. Checked at build.
  void setBuilderOptimizationLevel(int32_t level);
  int32_t getBuilderOptimizationLevel() const;
  // A JSON timing cache file: read before the build (a missing file is an empty cache; one from
  // another CPU is ignored with a warning) and written after a successful build. "" turns it off.
  void setTimingCache(const std::string& path);
  std::string getTimingCache() const;
  // Threads the engine's kernels use (0, the default: every core). Stored in the engine.
  void setNbThreads(int32_t threads);
  int32_t getNbThreads() const;

  // Reduced precision (with BuilderFlag kINT8 / kBF16 / kFP16).
  // The calibration data for kINT8; not owned (it must outlive the build); nullptr clears it.
  void setInt8Calibrator(IInt8Calibrator* calibrator);
  IInt8Calibrator* getInt8Calibrator() const;
  // The precision of one layer, by node name of the network (TensorRT sets it on ILayer): kFLOAT keeps
  // it out of INT8 and BF16, kBF16 runs it in BF16, kINT8 asks for INT8 (with kINT8 set), kHALF is
  // FP32 on the CPU. Names and types are checked at build.
  void setLayerPrecision(const std::string& layerName, DataType type);
  // The INT8 accuracy guard (Kiln extension): after calibrating, compares the INT8 engine with FP32
  // on the calibrator's batches (the first 64 samples, kept in memory) and keeps the most sensitive
  // layers in floating point until the metric (top-1 agreement for classifiers, else cosine) is
  // >= 1 - fraction. fraction in [0, 1); < 0 (the default) turns it off. Needs kINT8 and a calibrator.
  void setAccuracyBudget(double fraction);
  double getAccuracyBudget() const;

 private:
  friend struct ApiAccess;
  friend class Builder;
  struct Impl;
  BuilderConfig();
  std::unique_ptr<Impl> impl_;
};

class Builder {
 public:
  explicit Builder(ILogger& logger);
  ~Builder();
  Builder(const Builder&) = delete;
  Builder& operator=(const Builder&) = delete;

  // `flags` is accepted for TensorRT compatibility; networks are always explicit-batch.
  std::unique_ptr<NetworkDefinition> createNetworkV2(uint32_t flags = 0);
  std::unique_ptr<BuilderConfig> createBuilderConfig();
  // A profile owned by the builder (TensorRT style); a stack IOptimizationProfile works too.
  IOptimizationProfile* createOptimizationProfile();
  // Optimizes the network, selects kernels and returns an engine file's bytes (save them, or pass
  // them to Runtime::deserializeEngine). Logs steps at kINFO and tactic timings at kVERBOSE.
  // Returns an empty vector (error logged) on failure.
  std::vector<uint8_t> buildSerializedNetwork(NetworkDefinition& network, BuilderConfig& config);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------
// Running

enum class TensorIOMode : int32_t { kNONE = 0, kINPUT = 1, kOUTPUT = 2 };

class ExecutionContext;

// A loaded engine: the optimized graph, its weights and its kernels' tactics. Immutable; shared by
// all its execution contexts (weights are not copied per context). Thread-safe.
class Engine : public std::enable_shared_from_this<Engine> {
 public:
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  std::vector<uint8_t> serialize() const;
  // Inputs first, then outputs, in the network's order.
  int32_t getNbIOTensors() const;
  const char* getIOTensorName(int32_t index) const;  // nullptr when out of range
  TensorIOMode getTensorIOMode(const std::string& name) const;
  DataType getTensorDataType(const std::string& name) const;
  // As built: -1 for dynamic dimensions; invalid() for an unknown name.
  Dims getTensorShape(const std::string& name) const;
  // At least 1 (an engine with static shapes has one implicit profile).
  int32_t getNbOptimizationProfiles() const;
  Dims getProfileShape(const std::string& name, int32_t profile, OptProfileSelector select) const;
  // Peak activation bytes of one context at the build's opt shapes.
  size_t getActivationMemorySize() const;
  std::unique_ptr<ExecutionContext> createExecutionContext();

 private:
  friend struct ApiAccess;
  friend class Runtime;
  friend class ExecutionContext;
  struct Impl;
  explicit Engine(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

class Runtime {
 public:
  explicit Runtime(ILogger& logger);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // From engine bytes (copied). nullptr (error logged) when the bytes are not a valid engine for
  // this Kiln and this machine: truncated, corrupted, another target, a plugin not loaded.
  std::shared_ptr<Engine> deserializeEngine(const void* blob, size_t size);
  std::shared_ptr<Engine> deserializeCudaEngine(const void* blob, size_t size) { return deserializeEngine(blob, size); }
  // From an engine file, memory-mapped (weights are not copied).
  std::shared_ptr<Engine> loadEngine(const std::string& path);
  // Threads for the kernels of engines loaded afterwards (0: what the engine was built with).
  void setNbThreads(int32_t threads);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Runs an engine with its own activation memory. One context is used by one thread at a time;
// several contexts of one engine run concurrently from different threads.
class ExecutionContext {
 public:
  ~ExecutionContext();
  ExecutionContext(const ExecutionContext&) = delete;
  ExecutionContext& operator=(const ExecutionContext&) = delete;

  const Engine& getEngine() const;
  // Sets a dynamic input's shape. false (logged) for an unknown input, a wrong rank, a static
  // dimension changed, or a shape outside every optimization profile.
  bool setInputShape(const std::string& name, const Dims& dims);
  // Inputs: the shape set (-1 where still dynamic). Outputs: resolved once every input shape is
  // known (the context compiles its kernels for those shapes on first use).
  Dims getTensorShape(const std::string& name) const;
  bool allInputDimensionsSpecified() const;
  // Dense row-major buffers of getTensorShape()'s size, owned by the caller; inputs are only read.
  bool setTensorAddress(const std::string& name, void* data);
  bool setInputTensorAddress(const std::string& name, const void* data);
  const void* getTensorAddress(const std::string& name) const;
  // The profile the current input shapes fall in (-1 before they are all set).
  int32_t getOptimizationProfile() const;

  // Runs synchronously on the calling thread. false (logged) when an input shape or an address is
  // missing or the run fails.
  bool execute();
  // TensorRT names: bindings are addresses in IO tensor order; the stream must be nullptr.
  bool executeV2(void* const* bindings);
  bool enqueueV3(void* stream = nullptr);

 private:
  friend struct ApiAccess;
  friend class Engine;
  struct Impl;
  explicit ExecutionContext(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// TensorRT-style factories.
std::unique_ptr<Builder> createInferBuilder(ILogger& logger);
std::unique_ptr<Runtime> createInferRuntime(ILogger& logger);

// ---------------------------------------------------------------------------------------------
// Inline definitions: plugins use these types, and need no Kiln library at link time.

inline size_t getDataTypeSize(DataType type) noexcept {
  switch (type) {
    case DataType::kFLOAT: case DataType::kINT32: return 4;
    case DataType::kHALF: case DataType::kBF16: return 2;
    case DataType::kINT8: case DataType::kUINT8: case DataType::kBOOL: return 1;
    case DataType::kINT64: case DataType::kDOUBLE: return 8;
  }
  return 0;
}

inline const char* getDataTypeName(DataType type) noexcept {
  switch (type) {
    case DataType::kFLOAT: return "kFLOAT";
    case DataType::kHALF: return "kHALF";
    case DataType::kINT8: return "kINT8";
    case DataType::kINT32: return "kINT32";
    case DataType::kBOOL: return "kBOOL";
    case DataType::kUINT8: return "kUINT8";
    case DataType::kBF16: return "kBF16";
    case DataType::kINT64: return "kINT64";
    case DataType::kDOUBLE: return "kDOUBLE";
  }
  return "unknown";
}

inline Dims Dims::of(std::initializer_list<int64_t> dims) noexcept {
  Dims r;
  if (dims.size() > static_cast<size_t>(MAX_DIMS)) return invalid();
  for (int64_t v : dims) r.d[r.nbDims++] = v;
  return r;
}

inline int64_t Dims::volume() const noexcept {
  if (nbDims < 0) return -1;
  int64_t v = 1;
  for (int32_t i = 0; i < nbDims; ++i) {
    if (d[i] < 0) return -1;
    v *= d[i];
  }
  return v;
}

inline std::string Dims::toString() const {
  if (nbDims < 0) return "invalid";
  std::string s = "[";
  for (int32_t i = 0; i < nbDims; ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

inline bool operator==(const Dims& a, const Dims& b) noexcept {
  if (a.nbDims != b.nbDims) return false;
  for (int32_t i = 0; i < a.nbDims; ++i)
    if (a.d[i] != b.d[i]) return false;
  return true;
}

namespace detail {
[[noreturn]] inline void attr_type_error(const char* want, AttrValue::Type got) {
  static const char* const kNames[] = {"int", "float", "string", "ints", "floats"};
  throw Error(ErrorCode::kInvalidArgument,
              std::string("attribute holds ") + kNames[static_cast<int>(got)] + ", read as " + want);
}
}  // namespace detail

inline int64_t AttrValue::asInt() const {
  if (auto* v = std::get_if<int64_t>(&v_)) return *v;
  detail::attr_type_error("int", type());
}
inline float AttrValue::asFloat() const {
  if (auto* v = std::get_if<float>(&v_)) return *v;
  if (auto* v = std::get_if<int64_t>(&v_)) return static_cast<float>(*v);
  detail::attr_type_error("float", type());
}
inline const std::string& AttrValue::asString() const {
  if (auto* v = std::get_if<std::string>(&v_)) return *v;
  detail::attr_type_error("string", type());
}
inline const std::vector<int64_t>& AttrValue::asInts() const {
  if (auto* v = std::get_if<std::vector<int64_t>>(&v_)) return *v;
  detail::attr_type_error("ints", type());
}
inline const std::vector<float>& AttrValue::asFloats() const {
  if (auto* v = std::get_if<std::vector<float>>(&v_)) return *v;
  detail::attr_type_error("floats", type());
}
inline std::string AttrValue::toString() const {
  switch (type()) {
    case Type::kINT: return std::to_string(asInt());
    case Type::kFLOAT: return std::to_string(asFloat());
    case Type::kSTRING: return "\"" + asString() + "\"";
    case Type::kINTS: {
      std::string s = "[";
      for (size_t i = 0; i < asInts().size(); ++i) s += (i ? "," : "") + std::to_string(asInts()[i]);
      return s + "]";
    }
    case Type::kFLOATS: {
      std::string s = "[";
      for (size_t i = 0; i < asFloats().size(); ++i) s += (i ? "," : "") + std::to_string(asFloats()[i]);
      return s + "]";
    }
  }
  return {};
}

}  // namespace kiln

#include "kiln/plugin.h"  // NOLINT(misc-header-include-cycle): the umbrella also declares plugins
