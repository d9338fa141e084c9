// Compiles an optimized graph into a GPU program (see gpu_program.h) and runs it.
#include "backends/gpu/gpu_program.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstring>
#include <numeric>
#include <initializer_list>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>

#include "backends/cpu/memory_planner.h"
#include "backends/gpu/host_memory.h"
#include "passes/pass.h"
#include "runtime/specialize.h"

namespace kiln::gpu {

const char* precision_name(Precision p) {
  return p == Precision::kFP32 ? "fp32" : p == Precision::kFP16 ? "fp16" : p == Precision::kBF16 ? "bf16"
       : p == Precision::kFP8 ? "fp8" : "int8";
}

Precision parse_precision(const std::string& s) {
  if (s == "fp32") return Precision::kFP32;
  if (s == "fp16") return Precision::kFP16;
  if (s == "bf16") return Precision::kBF16;
  if (s == "fp8") return Precision::kFP8;
  if (s == "int8") return Precision::kINT8;
  throw Error(ErrorCode::kInvalidArgument, "precision '" + s + "' is not fp32, fp16, bf16, fp8 or int8");
}

Int8Scales int8_scales(const Node& n) {
  const Attribute* a = n.attr(kInt8Scales);
  if (!a || a->floats.size() != 3) return {};
  auto good = [](float v) { return std::isfinite(v) && v > 0 ? v : 0.f; };
  Int8Scales s{good(a->floats[0]), good(a->floats[1]), good(a->floats[2])};
  return s.ok() ? s : Int8Scales{};
}

float fp8_input_scale(const Node& n) {
  const Attribute* a = n.attr(kFp8InputScale);
  return a && std::isfinite(a->f) && a->f > 0 ? a->f : 0.f;
}

size_t TensorDesc::bytes() const {
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

namespace {

size_t elem_bytes(ElemType t) {
  switch (t) {
    case ElemType::kF32: case ElemType::kI32: return 4;
    case ElemType::kF16: case ElemType::kBF16: return 2;
    case ElemType::kF64: case ElemType::kI64: return 8;
    default: return 1;
  }
}

bool is_float(ElemType t) {
  return t == ElemType::kF32 || t == ElemType::kF16 || t == ElemType::kBF16 || t == ElemType::kF64;
}

// The element type of a tensor as it is stored at the graph's edges (and for constants' sources).
ElemType edge_type(DType dt) {
  switch (dt) {
    case DType::kF32: return ElemType::kF32;
    case DType::kF16: return ElemType::kF16;
    case DType::kBF16: return ElemType::kBF16;
    case DType::kF64: return ElemType::kF64;
    case DType::kI64: return ElemType::kI64;
    case DType::kI32: return ElemType::kI32;
    case DType::kI8: return ElemType::kI8;
    case DType::kU8: return ElemType::kU8;
    case DType::kBool: return ElemType::kBool;
    default: throw Error(ErrorCode::kUnsupported, std::string("the GPU backend has no ") + std::string(dtype_name(dt)) + " tensors");
  }
}

int64_t numel(const std::vector<int64_t>& d) {
  return std::accumulate(d.begin(), d.end(), int64_t{1}, std::multiplies<int64_t>());
}

std::vector<int64_t> dense_strides(const std::vector<int64_t>& d) {
  std::vector<int64_t> s(d.size(), 1);
  for (int i = static_cast<int>(d.size()) - 2; i >= 0; --i) s[i] = s[i + 1] * d[i + 1];
  return s;
}

// Reads element i of a host tensor as double.
double host_value(const Tensor& t, int64_t i) {
  const void* p = t.raw();
  switch (t.dtype()) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kF64: return static_cast<const double*>(p)[i];
    case DType::kF16: return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kI64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::kI32: return static_cast<const int32_t*>(p)[i];
    case DType::kI8: return static_cast<const int8_t*>(p)[i];
    case DType::kU8: case DType::kBool: return static_cast<const uint8_t*>(p)[i];
    default: throw Error(ErrorCode::kUnsupported, std::string("constant of dtype ") + std::string(dtype_name(t.dtype())));
  }
}

// A 64-bit hash of n bytes (FNV-1a over 8-byte words, then the tail, then a final mix).
uint64_t bytes_hash(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t h = 1469598103934665603ull ^ n;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  for (; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

uint64_t content_hash(const Tensor& t) { return bytes_hash(t.raw(), t.nbytes()); }

// Appends element value v as type t.
void put_value(std::vector<uint8_t>& out, ElemType t, double v, int64_t exact_int = 0, bool use_int = false) {
  uint8_t b[8];
  size_t n = elem_bytes(t);
  switch (t) {
    case ElemType::kF32: { float f = static_cast<float>(v); std::memcpy(b, &f, 4); break; }
    case ElemType::kF64: std::memcpy(b, &v, 8); break;
    case ElemType::kF16: { uint16_t h = float_to_half(static_cast<float>(v)); std::memcpy(b, &h, 2); break; }
    case ElemType::kBF16: { uint16_t h = float_to_bf16(static_cast<float>(v)); std::memcpy(b, &h, 2); break; }
    case ElemType::kI64: { int64_t x = use_int ? exact_int : static_cast<int64_t>(v); std::memcpy(b, &x, 8); break; }
    case ElemType::kI32: { int32_t x = static_cast<int32_t>(use_int ? exact_int : static_cast<int64_t>(v)); std::memcpy(b, &x, 4); break; }
    case ElemType::kI8: { int8_t x = static_cast<int8_t>(v); std::memcpy(b, &x, 1); break; }
    case ElemType::kU8: { uint8_t x = static_cast<uint8_t>(v); std::memcpy(b, &x, 1); break; }
    case ElemType::kBool: b[0] = v != 0 ? 1 : 0; break;
    case ElemType::kF8E4M3: b[0] = float_to_e4m3(static_cast<float>(v)); break;
  }
  out.insert(out.end(), b, b + n);
}

int64_t attr_int(const Node& n, const char* name, int64_t def) {
  const Attribute* a = n.attr(name);
  return a ? a->i : def;
}
float attr_float(const Node& n, const char* name, float def) {
  const Attribute* a = n.attr(name);
  return a ? a->f : def;
}
std::string attr_string(const Node& n, const char* name, const std::string& def = "") {
  const Attribute* a = n.attr(name);
  return a ? a->s : def;
}
std::vector<int64_t> attr_ints(const Node& n, const char* name) {
  const Attribute* a = n.attr(name);
  return a ? a->ints : std::vector<int64_t>{};
}

const std::set<std::string> kAliasOps = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"};

// Unary ops the elementwise interpreter runs, by ONNX name.
const std::map<std::string, EwOp> kUnary = {
    {"Relu", EwOp::kRelu},   {"Sigmoid", EwOp::kSigmoid}, {"Tanh", EwOp::kTanh},   {"Erf", EwOp::kErf},
    {"Exp", EwOp::kExp},     {"Log", EwOp::kLog},         {"Sqrt", EwOp::kSqrt},   {"Neg", EwOp::kNeg},
    {"Abs", EwOp::kAbs},     {"Reciprocal", EwOp::kReciprocal}, {"Floor", EwOp::kFloor}, {"Ceil", EwOp::kCeil},
    {"Round", EwOp::kRound}, {"Sign", EwOp::kSign},       {"Not", EwOp::kNot},     {"Sin", EwOp::kSin},
    {"Cos", EwOp::kCos},     {"HardSwish", EwOp::kHardSwish}, {"SiLU", EwOp::kSiLU}, {"GeluTanh", EwOp::kGeluTanh}};
const std::map<std::string, EwOp> kBinary = {
    {"Add", EwOp::kAdd},     {"Sub", EwOp::kSub},         {"Mul", EwOp::kMul},     {"Div", EwOp::kDiv},
    {"Pow", EwOp::kPow},     {"Min", EwOp::kMin},         {"Max", EwOp::kMax},     {"Mod", EwOp::kMod},
    {"Equal", EwOp::kEqual}, {"Less", EwOp::kLess},       {"LessOrEqual", EwOp::kLessEqual},
    {"Greater", EwOp::kGreater}, {"GreaterOrEqual", EwOp::kGreaterEqual}, {"And", EwOp::kAnd},
    {"Or", EwOp::kOr},       {"Xor", EwOp::kXor},         {"Sum", EwOp::kAdd}};
bool is_arith(EwOp op) { return op >= EwOp::kAdd && op <= EwOp::kMod; }

// The activation of a fused op as interpreter steps (appended after the op's own result).
bool activation_steps(const std::string& act, const std::vector<float>& p, std::vector<EwStep>& steps) {
  EwStep s;
  if (act.empty()) return true;
  if (act == "Relu") s.op = EwOp::kRelu;
  else if (act == "Sigmoid") s.op = EwOp::kSigmoid;
  else if (act == "Tanh") s.op = EwOp::kTanh;
  else if (act == "SiLU") s.op = EwOp::kSiLU;
  else if (act == "HardSwish") s.op = EwOp::kHardSwish;
  else if (act == "Gelu") s.op = EwOp::kGelu;
  else if (act == "GeluTanh") s.op = EwOp::kGeluTanh;
  else if (act == "Clip") s.op = EwOp::kClip, s.p0 = p.size() > 0 ? p[0] : -INFINITY, s.p1 = p.size() > 1 ? p[1] : INFINITY;
  else if (act == "LeakyRelu") s.op = EwOp::kLeakyRelu, s.p0 = p.empty() ? 0.01f : p[0];
  else if (act == "HardSigmoid") s.op = EwOp::kHardSigmoid, s.p0 = p.empty() ? 0.2f : p[0], s.p1 = p.size() > 1 ? p[1] : 0.5f;
  else return false;
  steps.push_back(s);
  return true;
}

// A stable name of an element type for timing-cache keys.
const char* type_tag(ElemType t) {
  static constexpr const char* kNames[] = {"f32", "f16", "bf16", "f64", "i64", "i32", "i8", "u8", "bool"};
  const auto i = static_cast<size_t>(t);
  return i < std::size(kNames) ? kNames[i] : "?";
}

}  // namespace

class GpuProgramBuilder {
 public:
  GpuProgramBuilder(std::shared_ptr<Device> dev, const Model& model, const ShapeMap& shapes, const CompileOptions& opt)
      : dev_(std::move(dev)), src_(model), shapes_(shapes), opt_(opt) {
    pool_ = opt.weights ? opt.weights : std::make_shared<WeightPool>(dev_);
    if (&pool_->device() != dev_.get())
      throw Error(ErrorCode::kInvalidArgument, "the weight pool belongs to another GPU than the one compiled for");
    compute_ = opt.precision == Precision::kFP32 ? ElemType::kF32
               : opt.precision == Precision::kBF16 ? ElemType::kBF16 : ElemType::kF16;  // FP8: FP16 between GEMMs
    fp8_ = opt.precision == Precision::kFP8;
    int8_ = opt.precision == Precision::kINT8;
  }
  std::shared_ptr<const GpuProgram> build();

 private:
  struct Val {
    ElemType type = ElemType::kF32;
    std::vector<int64_t> dims;  // logical (ONNX) dims
    bool nhwc = false;          // 4-D stored as N,H,W,C
    GpuProgram::Slot slot;      // kArena: index is the buffer id until planning
  };
  struct Pending {
    std::unique_ptr<Kernel> kernel;
    std::vector<std::string> inputs, outputs;  // value names ("" = absent)
    GpuStepInfo info;
  };

  ElemType internal_type(DType dt) const {
    const ElemType e = edge_type(dt);
    return is_float(e) ? compute_ : e;
  }
  const Graph& g() const { return m_.graph; }
  std::vector<int64_t> dims_of(const std::string& v) const {
    const TensorType* t = g().type_of(v);
    if (!t || !t->shape) throw Error(ErrorCode::kUnsupported, "'" + v + "' has no concrete shape at these input shapes");
    std::vector<int64_t> d;
    for (const Dim& x : *t->shape) {
      if (!x.known()) throw Error(ErrorCode::kUnsupported, "'" + v + "' has a data-dependent shape (the GPU backend needs concrete shapes)");
      d.push_back(x.value);
    }
    return d;
  }
  // Per logical dim, the element stride of the stored value.
  static std::vector<int64_t> logical_strides(const Val& v) {
    if (!v.nhwc) return dense_strides(v.dims);
    const int64_t c = v.dims[1], h = v.dims[2], w = v.dims[3];
    return {h * w * c, 1, w * c, c};
  }
  std::string new_value(const std::string& name, ElemType t, std::vector<int64_t> dims, bool nhwc) {
    Val v;
    v.type = t;
    v.dims = std::move(dims);
    v.nhwc = nhwc;
    v.slot.kind = GpuProgram::Slot::kArena;
    v.slot.index = buffers_.size();
    cpu::BufferRequest r;
    r.bytes = static_cast<size_t>(numel(v.dims)) * elem_bytes(t);
    r.first_step = r.last_step = static_cast<int>(steps_.size());
    buffers_.push_back(r);
    vals_[name] = v;
    return name;
  }
  const Val& val(const std::string& name) {
    auto it = vals_.find(name);
    if (it != vals_.end()) return it->second;
    auto c = g().initializers.find(name);
    if (c == g().initializers.end()) throw Error(ErrorCode::kInternal, "GPU program: value '" + name + "' is not computed");
    Val v;
    v.type = internal_type(c->second.dtype());
    v.dims = c->second.shape();
    v.slot.kind = GpuProgram::Slot::kWeight;
    v.slot.index = weight(name, v.type, {});
    return vals_[name] = v;
  }
  bool is_const(const std::string& name) const { return g().initializers.count(name) != 0; }
  const Tensor& constant(const std::string& name, const Node& n, const char* what) const {
    auto it = g().initializers.find(name);
    if (it == g().initializers.end())
      throw Error(ErrorCode::kUnsupported, "node '" + n.name + "' (" + n.op_type + "): the GPU backend needs its " + what + " to be a constant");
    return it->second;
  }
  // Uploads a constant converted to `type`, optionally reordered: element i of the result is
  // source element order[i]. Returns its index among the program's weights; cached by (name, type,
  // variant) here and by content in the weight pool.
  size_t weight(const std::string& name, ElemType type, const std::vector<int64_t>& order, const std::string& variant = "",
                double scale = 1.0) {
    const auto key = name + "|" + std::to_string(static_cast<int>(type)) + "|" + variant;
    if (auto it = weight_index_.find(key); it != weight_index_.end()) return it->second;
    const Tensor& t = g().initializers.at(name);
    std::ostringstream pool_key;
    pool_key << content_hash(t) << "|" << static_cast<int>(t.dtype());
    for (int64_t d : t.shape()) pool_key << "," << d;
    pool_key << "|" << static_cast<int>(type) << "|" << variant << "|" << std::hexfloat << scale << "|" << order.size();
    const WeightPool::Entry e = pool_->get(pool_key.str(), [&] {
      const bool ints = t.dtype() == DType::kI64 || t.dtype() == DType::kI32;
      const int64_t n = order.empty() ? t.numel() : static_cast<int64_t>(order.size());
      std::vector<uint8_t> bytes;
      if (t.dtype() == DType::kF32 && (type == ElemType::kF32 || type == ElemType::kF16 || type == ElemType::kBF16)) {
        // The common case (FP32 weights to the program's float type), without the per-element
        // dispatch of put_value: the same values, converted in place (what loading spends its time on).
        bytes.resize(static_cast<size_t>(n) * elem_bytes(type));
        const float* src = t.data<float>();
        for (int64_t i = 0; i < n; ++i) {
          const int64_t at = order.empty() ? i : order[static_cast<size_t>(i)];  // -1: a zero (padding)
          const float x = at < 0 ? 0.f : src[at];
          const float v = scale == 1.0 ? x : static_cast<float>(static_cast<double>(x) * scale);
          if (type == ElemType::kF32) std::memcpy(bytes.data() + 4 * i, &v, 4);
          else {
            const uint16_t h = type == ElemType::kF16 ? float_to_half(v) : float_to_bf16(v);
            std::memcpy(bytes.data() + 2 * i, &h, 2);
          }
        }
        return bytes;
      }
      bytes.reserve(static_cast<size_t>(n) * elem_bytes(type));
      for (int64_t i = 0; i < n; ++i) {
        const int64_t src = order.empty() ? i : order[static_cast<size_t>(i)];
        int64_t exact = 0;
        if (ints && src >= 0) exact = t.dtype() == DType::kI64 ? t.data<int64_t>()[src] : t.data<int32_t>()[src];
        put_value(bytes, type, src < 0 ? 0.0 : host_value(t, src) * scale, exact, ints && scale == 1.0);
      }
      return bytes;
    });
    weights_.push_back(e.data);
    weight_bytes_ += e.bytes;
    return weight_index_[key] = weights_.size() - 1;
  }
  std::string weight_value(const std::string& name, ElemType type, std::vector<int64_t> dims,
                           const std::vector<int64_t>& order, const std::string& variant, double scale = 1.0) {
    const std::string vname = name + "#" + variant + std::to_string(static_cast<int>(type));
    if (vals_.count(vname)) return vname;
    Val v;
    v.type = type;
    v.dims = std::move(dims);
    v.slot.kind = GpuProgram::Slot::kWeight;
    v.slot.index = weight(name, type, order, variant, scale);
    vals_[vname] = v;
    return vname;
  }

  // --- Tactics (CompileOptions::tactics). recorded(): the cached entry of `key`, if any.
  std::optional<cpu::TimingCache::Entry> recorded(const std::string& key) {
    if (!opt_.tactics) return std::nullopt;
    return opt_.tactics->find(key);
  }
  // A choice this build already made (`key` in its record), or one the timing cache holds with
  // one of the `valid` tactics (then taken into the record, untimed); nullopt: time it.
  std::optional<cpu::TimingCache::Entry> known_choice(const std::string& key,
                                                      std::initializer_list<std::string_view> valid) {
    if (auto it = tactics_.find(key); it != tactics_.end()) return it->second;
    const auto hit = recorded(key);
    if (!hit || std::find(valid.begin(), valid.end(), hit->tactic) == valid.end()) return std::nullopt;
    record(key, hit->tactic, hit->ms, false);
    return hit;
  }
  // The INT8 quantizing program over n dense values of the program's float type:
  // saturate(round_half_even(x * mul)) (the module runs it as its 16-byte quantizing kernel).
  EwProgram int8_quantize_program(int64_t n, float mul) const {
    EwProgram p;
    p.rank = 1, p.dims[0] = n, p.num_inputs = 1, p.in_types[0] = compute_, p.in_strides[0][0] = 1;
    p.num_steps = 4;
    p.steps[1] = EwStep{EwOp::kAffine, 0, 0, false, mul, 0.f};
    p.steps[2] = EwStep{EwOp::kRound};
    p.steps[3] = EwStep{EwOp::kClip, 0, 0, false, -128.f, 127.f};
    p.out_type = ElemType::kI8;
    return p;
  }
  // Before the first timing of a build: the GPU at its working clocks, or a cold GPU's slow
  // first timings would pick the wrong tactics.
  void warm_up() {
    if (warmed_) return;
    warmed_ = true;
    dev_->warm_up(2000);
  }
  void rejected(const std::string& node, const std::string& why) {
    ++stats_.rejected;
    if (opt_.log) opt_.log->push_back("node '" + node + "': recorded tactic not usable, timing again: " + why);
  }
  // Remembers the chosen tactic (for the program's record) and fills the cache when it was timed.
  // `ms`: the time it was timed at now, or the recorded entry's.
  void record(const std::string& key, const std::string& tactic, double ms, bool timed) {
    const cpu::TimingCache::Entry e{tactic, ms};
    tactics_[key] = e;
    if (timed && opt_.tactics) opt_.tactics->put(key, e);
  }
  // A tuned kernel under timing-cache `key`: made from its recorded tactic when there is one the
  // device takes, else made timed (make("")), and recorded either way.
  std::unique_ptr<Kernel> tuned(const std::string& key, const std::string& node,
                                const std::function<std::unique_ptr<Kernel>(const std::string&)>& make) {
    std::unique_ptr<Kernel> k;
    const auto hit = recorded(key);
    if (hit) {
      try {
        k = make(hit->tactic);
        ++stats_.recorded;
      } catch (const std::runtime_error& e) {
        rejected(node, e.what());
      }
    }
    const bool timed = !k;
    if (timed) {
      warm_up();
      k = make("");
      ++stats_.timed;
    }
    record(key, k->tactic(), timed ? k->timed_ms() : hit->ms, timed);
    return k;
  }
  std::unique_ptr<Kernel> tuned_matmul(const MatmulDesc& d, const std::string& node) {
    return tuned(matmul_key(d), node, [&](const std::string& t) { return dev_->matmul(d, opt_.workspace_limit, t); });
  }
  std::string matmul_key(const MatmulDesc& d) const {
    std::ostringstream os;
    os << "gpu.matmul m" << d.m << " n" << d.n << " k" << d.k << " batch" << d.batch << " wstride" << d.w_stride << " "
       << type_tag(d.type) << " bias" << d.bias << " residual" << d.residual << " epilogue"
       << static_cast<int>(d.epilogue) << " ws<=" << opt_.workspace_limit;
    return os.str();
  }
  std::string conv_key(const ConvDesc& d) const {
    std::ostringstream os;
    os << "gpu.conv n" << d.n << " c" << d.c << " " << d.h << "x" << d.w << " k" << d.k << " " << d.r << "x" << d.s
       << " groups" << d.groups << " pad" << d.pad_h << "," << d.pad_w << " stride" << d.stride_h << "," << d.stride_w
       << " dil" << d.dil_h << "," << d.dil_w << " " << type_tag(d.type) << " bias" << d.bias << " residual"
       << d.residual << " act" << static_cast<int>(d.act) << " clip" << d.clip_lo << "," << d.clip_hi
       << (d.in_clip ? " in<=" + std::to_string(d.in_clip_hi) : std::string()) << " ws<=" << opt_.workspace_limit;
    return os.str();
  }

  // Records a step; input values' buffers live at least until it.
  void add_step(std::unique_ptr<Kernel> k, std::vector<std::string> ins, std::vector<std::string> outs, GpuStepInfo info) {
    const int idx = static_cast<int>(steps_.size());
    for (const auto& i : ins)
      if (!i.empty()) touch(i, idx);
    for (const auto& o : outs)
      if (!o.empty()) touch(o, idx);
    info.kernel = k->describe();
    info.timed_ms = k->timed_ms();
    workspace_ = std::max(workspace_, k->workspace_bytes());
    if (opt_.log) {
      std::ostringstream os;
      os << info.op << " '" << info.name << "': " << info.kernel;
      opt_.log->push_back(os.str());
    }
    steps_.push_back({std::move(k), std::move(ins), std::move(outs), std::move(info)});
  }
  void touch(const std::string& name, int step) {
    const Val& v = val(name);
    if (v.slot.kind != GpuProgram::Slot::kArena) return;
    auto& b = buffers_[v.slot.index];
    b.last_step = std::max(b.last_step, step);
  }

  // A value holding `name`'s data in the given layout and type (inserting one converting copy).
  std::string as(const std::string& name, bool nhwc, ElemType type) {
    const Val v = val(name);
    if (v.nhwc == nhwc && v.type == type) return name;
    if (nhwc && v.dims.size() != 4) throw Error(ErrorCode::kInternal, "NHWC needs a 4-D value: " + name);
    const std::string key = name + (nhwc ? "#nhwc" : "#nchw") + std::to_string(static_cast<int>(type));
    if (vals_.count(key)) return key;
    new_value(key, type, v.dims, nhwc);
    emit_copy(name, key, std::string(nhwc ? "to nhwc " : "to nchw ") + name);
    return key;
  }
  std::string plain(const std::string& name) { return as(name, false, val(name).type); }
  // A 4-D value as dense NHWC of `type` with `channels` channels per pixel, the ones past its own
  // zero (one converting copy from any layout): the input of a convolution padded for the tensor cores.
  std::string padded_nhwc(const std::string& name, int64_t channels, ElemType type) {
    const Val v = val(name);
    if (v.dims.size() != 4 || channels < v.dims[1])
      throw Error(ErrorCode::kInternal, "channel padding needs a 4-D value of at most " + std::to_string(channels) +
                                            " channels: " + name);
    const std::string key = name + "#nhwc_c" + std::to_string(channels) + "_" + std::to_string(static_cast<int>(type));
    if (vals_.count(key)) return key;
    new_value(key, type, {v.dims[0], channels, v.dims[2], v.dims[3]}, true);
    add_step(dev_->copy(v.type, type, padded_copy(v, channels)), {name}, {key},
             {"to nhwc " + name + " (" + std::to_string(channels) + " channels)", "Copy", "", -1});
    return key;
  }

  // The copy of 4-D value v into dense NHWC with `channels` channels per pixel (the ones past its
  // own zero).
  StridedCopy padded_copy(const Val& v, int64_t channels) const {
    StridedCopy c;
    c.rank = 4;
    const auto xs = logical_strides(v);
    const int64_t ys[4] = {v.dims[2] * v.dims[3] * channels, 1, v.dims[3] * channels, channels};
    for (int d = 0; d < 4; ++d) c.dims[d] = v.dims[d], c.x_strides[d] = xs[d], c.y_strides[d] = ys[d];
    c.pad_channels = channels;
    return c;
  }
  // out = in (same logical dims), converting layout and type.
  void emit_copy(const std::string& in, const std::string& out, const std::string& label) {
    const Val& a = val(in);
    const Val& b = val(out);
    StridedCopy c;
    c.rank = static_cast<int>(b.dims.size());
    check_rank(c.rank, label);
    const auto xs = logical_strides(a), ys = logical_strides(b);
    for (int d = 0; d < c.rank; ++d) c.dims[d] = b.dims[d], c.x_strides[d] = xs[d], c.y_strides[d] = ys[d];
    add_step(dev_->copy(a.type, b.type, c), {in}, {out}, {label, "Copy", "", -1});
  }
  static void check_rank(int rank, const std::string& what) {
    if (rank > kMaxRank)
      throw Error(ErrorCode::kUnsupported, what + ": rank " + std::to_string(rank) + " is above the GPU kernels' 6");
  }

  void add_node(const Node& n);
  // The descriptor of a Conv / FusedConv node in the program's float type; the activation steps
  // that run after it (those no convolution kernel fuses) go to *post.
  ConvDesc conv_desc(const Node& n, std::vector<EwStep>* post);
  void lower_conv(const Node& n);
  void lower_conv_int8(const Node& n, ConvDesc d);
  // A CNN's stem (7x7/2 pad 3 over at most 4 channels to 64, bias, ReLU/clip/none) read only by a
  // 3x3/2 pad 1 MaxPool: lowered as Kiln's fused stem kernel (StemPoolDesc) when it is faster than
  // the separate steps (conv_ms: the convolution's time; copy_channels: the input's converting copy
  // to that many channels, 0 for none) plus the pooling and any quantizing pass; returns false to
  // leave both nodes to their own lowering. Recorded as "gpu.stempool <conv key>": fused or split.
  bool lower_stem_pool(const Node& n, const ConvDesc& d, const std::string& bias, double conv_ms, int64_t copy_channels);
  // A 1x1 convolution with stride 1 and no padding is a GEMM over NHWC rows: [N*H*W, C] x [C, K],
  // with the bias, the residual (cuBLASLt's C) and ReLU in cuBLASLt's epilogue.
  static bool is_gemm(const ConvDesc& d) {
    return d.r == 1 && d.s == 1 && d.stride_h == 1 && d.stride_w == 1 && d.pad_h == 0 && d.pad_w == 0 &&
           d.groups == 1 && (d.act == Act::kNone || d.act == Act::kRelu);
  }
  MatmulDesc as_gemm(const ConvDesc& d) const {
    MatmulDesc md;
    md.m = d.n * d.h * d.w, md.n = d.k, md.k = d.c, md.type = compute_, md.bias = d.bias, md.residual = d.residual;
    md.epilogue = d.act == Act::kRelu ? MatmulDesc::Epilogue::kRelu : MatmulDesc::Epilogue::kNone;
    return md;
  }
  // Precision int8: which convolutions run in INT8 (int8_nodes_) and which of their outputs stay
  // INT8 (int8_vals_: read only by INT8 convolutions, as input or residual).
  void plan_int8();
  // Whether value v has readers and all of them are convolutions in `convs` reading it as their
  // input or residual (what an INT8 value needs).
  bool read_only_by(const std::string& v, const std::set<size_t>& convs) const {
    const auto r = readers_.find(v);
    if (r == readers_.end() || r->second.empty()) return false;
    for (size_t j : r->second) {
      if (j == SIZE_MAX || !convs.count(j)) return false;
      const Node& reader = g().nodes[j];
      for (size_t k = 0; k < reader.inputs.size(); ++k)
        if (reader.inputs[k] == v && k != 0 && k != 3) return false;
    }
    return true;
  }
  std::pair<double, double> int8_times(const ConvDesc& d16, const std::string& node);
  double quantize_ms(int64_t elems);
  // `x` (4-D) as INT8 NHWC: round(x / scale) saturated, written by one quantizing step shared by
  // every reader (or the value itself when its producer wrote it in INT8).
  std::string int8_value(const std::string& x, float scale);
  // A weight made from constant `name` by `make` (bytes of `type`, shape `dims`), uploaded once per
  // content and variant.
  std::string derived_weight(const std::string& name, const std::string& variant, ElemType type,
                             std::vector<int64_t> dims, const std::function<std::vector<uint8_t>()>& make);
  // A weight of host-made bytes (`type`, shape `dims`), uploaded once per content.
  std::string host_weight(ElemType type, std::vector<int64_t> dims, std::vector<uint8_t> bytes);
  // Value `vname`: the weight pool's entry `pool_key` (made by `make` on first use) as a weight.
  std::string pooled_weight(const std::string& vname, const std::string& pool_key, ElemType type,
                            std::vector<int64_t> dims, const std::function<std::vector<uint8_t>()>& make);
  void lower_matmul(const Node& n);
  void lower_elementwise(const Node& n);
  void lower_pool(const Node& n);
  // Reductions, ArgMax/ArgMin, TopK, GatherElements, Pad, Resize/Upsample, BatchNormalization.
  void lower_tensor_op(const Node& n);
  void lower_attention(const Node& n);
  void plan_packed_qkv();
  void plan_deferred_clips();
  // Precision fp8 or int8: which GEMMs with an input scale read a narrow X (narrow_nodes_), and which
  // values their elementwise producers write narrow (narrow_out_). See the definition.
  void plan_narrow_gemms();
  // Whether an [M,K] x [K,N] GEMM runs faster in FP8 than in FP16, counting the quantizing pass
  // over X unless its producer writes it in FP8 (`prequantized`). See plan_narrow_gemms.
  bool fp8_pays(int64_t m, int64_t n, int64_t k, bool prequantized, const std::string& node);
  // The same for INT8 (Kiln's INT8 kernel, FP16 out), with or without a bias and ReLU.
  bool int8_gemm_pays(const ConvDesc& d8, bool prequantized, const std::string& node);
  double time_on_device(const Kernel& k, const std::vector<size_t>& in_bytes, size_t out_bytes);
  // The narrow type GEMM inputs take in this program: E4M3 (fp8) or INT8 (int8).
  ElemType narrow_type() const { return fp8_ ? ElemType::kF8E4M3 : ElemType::kI8; }
  // The scale of node n's narrow GEMM input, or 0 when n runs in the program's float type:
  // MatMul/Gemm/FusedMatMul of a 2-D constant B without transposed A, in FP8 programs with an
  // fp8_input_scale, in INT8 programs with int8_scales (unless int8_gemms is "none").
  float narrow_scale(const Node& n) const {
    if (!(fp8_ || (int8_ && opt_.int8_gemms != "none"))) return 0.f;
    if (!(n.op_type == "FusedMatMul" || n.op_type == "MatMul" || n.op_type == "Gemm")) return 0.f;
    if (n.inputs.size() < 2 || !is_const(n.inputs[1]) || g().initializers.at(n.inputs[1]).rank() != 2) return 0.f;
    if ((n.op_type != "MatMul" && attr_int(n, "transA", 0) != 0)) return 0.f;
    if (fp8_) return fp8_input_scale(n);
    const Int8Scales s = int8_scales(n);
    return s.ok() ? s.x : 0.f;
  }
  // `x` (plain layout) quantized to the narrow type as x / scale (INT8: rounded half to even and
  // saturated): the value itself when its producer already wrote it so (plan_narrow_gemms), a copy
  // its LayerNorm wrote, else one quantizing step (shared by every reader).
  std::string narrow_value(const std::string& x, float scale);
  std::string narrow_key(const std::string& x, float scale) const;  // the value name of x's narrow copy
  // A GEMM [M,K] x [K,N] as Kiln's INT8 kernel sees it: a 1x1 convolution over M pixels of K
  // channels to N, FP16 out.
  static ConvDesc int8_gemm_desc(int64_t m, int64_t n, int64_t k, bool bias, bool relu);
  // The INT8 convolution kernel of `d`: a recorded tactic, else timed (and recorded).
  std::unique_ptr<Kernel> int8_conv_kernel(const ConvDesc& d, const std::string& node);
  bool plan_sliced_qkv(size_t attention, const size_t (&producers)[3]);
  void lower_data(const Node& n);
  // Builds an elementwise step over `ins` writing output `out` (a new value) with `steps`.
  void emit_elementwise(const std::string& label, const std::string& op, std::vector<std::string> ins,
                        const std::vector<EwStep>& steps, const std::string& out, ElemType out_type,
                        const std::vector<int64_t>& out_dims);
  std::string unsupported_reason(const Node& n) const;
  // Graph input or output `name` as the caller's buffer `index` (its ONNX dtype, plain layout);
  // its description is appended to `descs`.
  Val edge_value(const std::string& name, GpuProgram::Slot::Kind kind, size_t index, std::vector<TensorDesc>& descs) {
    const TensorType* t = g().type_of(name);
    descs.push_back(TensorDesc{name, t->dtype, dims_of(name)});
    Val v;
    v.type = edge_type(t->dtype);
    v.dims = descs.back().shape;
    v.slot.kind = kind;
    v.slot.index = index;
    return v;
  }
  // True for an Add of two same-shaped float tensors whose first reader (in node order) is a
  // LayerNormalization of its output over the last axis (residual connections): the LayerNorm
  // kernel adds them itself. *keep_sum: the sum has other readers (a pre-LN transformer's residual
  // stream, or a graph output), so the kernel writes it too.
  bool fusable_into_layer_norm(const Node& n, bool* keep_sum) {
    const std::string& out = n.outputs[0];
    auto it = readers_.find(out);
    // The first reader must be a node (a graph output is listed as SIZE_MAX, after the nodes).
    if (it == readers_.end() || it->second.empty() || it->second.front() >= g().nodes.size()) return false;
    *keep_sum = it->second.size() > 1;
    const Node& ln = g().nodes[it->second.front()];
    if (ln.op_type != "LayerNormalization" || ln.inputs.empty() || ln.inputs[0] != out) return false;
    if (ln.outputs.size() > 1 && std::any_of(ln.outputs.begin() + 1, ln.outputs.end(), [](auto& o) { return !o.empty(); }))
      return false;
    const auto od = dims_of(out);
    const int64_t axis = attr_int(ln, "axis", -1);
    if (axis != -1 && axis != static_cast<int64_t>(od.size()) - 1) return false;
    for (const auto& i : n.inputs) {
      if (is_const(i) || dims_of(i) != od) return false;
      if (!is_float(val(i).type)) return false;
    }
    return true;
  }
  ElemType compute_type_of(const std::vector<std::string>& ins);

  std::shared_ptr<Device> dev_;
  const Model& src_;
  const ShapeMap& shapes_;
  const CompileOptions& opt_;
  ElemType compute_;
  Model m_;
  std::set<size_t> folded_;
  std::map<std::string, Val> vals_;
  std::map<std::string, std::vector<size_t>> readers_;  // value -> the unfolded nodes reading it (outputs: SIZE_MAX)
  std::map<std::string, size_t> producer_;              // value -> the unfolded node writing it
  struct PendingAdd {
    std::string a, b;
    bool keep_sum = false;
  };
  std::map<std::string, PendingAdd> pending_add_;  // Add output -> its inputs
  // Q, K and V projections of one attention run as one GEMM into a packed [.., Nq+Nk+Nv] value
  // (plan_packed_qkv): where each projection's output lies in it, the packed node to lower at the
  // first projection's place, and the other two projections (not lowered).
  struct PackedView {
    std::string base;
    int64_t offset = 0, width = 0;  // elements into each row, and the row's width
  };
  std::map<std::string, PackedView> packed_;
  std::map<size_t, Node> packed_first_;
  std::set<size_t> packed_skip_;
  // Convolutions whose ReLU6 (Clip [0, hi]) runs as a ReLU, the upper clamp moved onto the read of
  // their only reader, a depthwise convolution on Kiln's kernel (plan_deferred_clips): output -> hi.
  std::map<std::string, float> deferred_clip_;
  // Values whose only reader is a narrow GEMM: their elementwise producer writes them in the
  // narrow type, divided by the GEMM's input scale (plan_narrow_gemms): value -> scale.
  std::map<std::string, float> narrow_out_;
  std::set<size_t> narrow_nodes_;  // GEMM candidates that run on narrow inputs (the others run in FP16)
  std::set<size_t> int8_nodes_;                // convolutions that run in INT8
  std::map<std::string, float> int8_vals_;     // values stored INT8 -> their scale
  std::map<std::vector<std::string>, std::string> nhwc_concats_;  // a channel Concat's inputs -> its NHWC output
  bool int8_ = false;
  size_t current_ = SIZE_MAX;   // the index of the node being lowered
  bool fp8_ = false;
  std::vector<Pending> steps_;
  std::vector<cpu::BufferRequest> buffers_;
  std::shared_ptr<WeightPool> pool_;
  std::map<std::string, cpu::TimingCache::Entry> tactics_;
  TacticStats stats_;
  bool warmed_ = false;
  std::vector<void*> weights_;
  size_t weight_bytes_ = 0;
  std::map<std::string, size_t> weight_index_;
  size_t workspace_ = 0;
};

// Why node `n` cannot run on the GPU ("" when it can, as far as a static look tells).
std::string GpuProgramBuilder::unsupported_reason(const Node& n) const {
  const std::string& op = n.op_type;
  if (n.domain == "kiln") {
    static const std::set<std::string> ok = {"FusedConv", "FusedMatMul", "LayerNormalization", "Attention",
                                             "ElementwiseChain", "Gelu"};
    return ok.count(op) ? "" : "kiln::" + op + " has no GPU kernel";
  }
  if (!n.domain.empty() && n.domain != "ai.onnx") return "domain '" + n.domain + "' has no GPU kernels";
  static const std::set<std::string> ok = {
      "Conv", "MatMul", "Gemm", "LayerNormalization", "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool",
      "GlobalMaxPool", "Transpose", "Concat", "Split", "Slice", "Gather", "Expand", "Cast", "Where", "Clip",
      "LeakyRelu", "Elu", "HardSigmoid", "Gelu", "Mean", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
      "ReduceProd", "ArgMax", "ArgMin", "TopK", "GatherElements", "Pad", "Resize", "Upsample", "BatchNormalization"};
  if (ok.count(op) || kAliasOps.count(op) || kUnary.count(op) || kBinary.count(op)) return "";
  return op + " has no GPU kernel";
}

void GpuProgramBuilder::add_node(const Node& n) {
  const std::string& op = n.op_type;
  bool keep_sum = false;
  if (n.domain.empty() && op == "Add" && n.inputs.size() == 2 && fusable_into_layer_norm(n, &keep_sum)) {
    pending_add_[n.outputs[0]] = {n.inputs[0], n.inputs[1], keep_sum};
    return;
  }
  if (n.domain == "kiln" && op == "FusedConv") return lower_conv(n);
  if (n.domain.empty() && op == "Conv") return lower_conv(n);
  if (op == "FusedMatMul" || op == "MatMul" || op == "Gemm") return lower_matmul(n);
  if (op == "Attention") return lower_attention(n);
  if (op == "MaxPool" || op == "AveragePool" || op == "GlobalAveragePool" || op == "GlobalMaxPool") return lower_pool(n);
  if (op == "LayerNormalization") {
    if (n.outputs.size() > 1 && std::any_of(n.outputs.begin() + 1, n.outputs.end(), [](auto& o) { return !o.empty(); }))
      throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': LayerNormalization's Mean/InvStdDev outputs have no GPU kernel");
    const auto dims = dims_of(n.inputs[0]);
    const int64_t axis = attr_int(n, "axis", -1);
    if (axis != -1 && axis != static_cast<int64_t>(dims.size()) - 1)
      throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': LayerNormalization over several axes has no GPU kernel");
    // A residual Add read first by this LayerNorm was left for it to fuse (see the Add case above).
    std::string x, residual, sum;
    if (auto it = pending_add_.find(n.inputs[0]); it != pending_add_.end()) {
      x = as(it->second.a, false, compute_);
      residual = as(it->second.b, false, compute_);
      if (it->second.keep_sum) sum = n.inputs[0];
    } else {
      x = as(n.inputs[0], false, compute_);
    }
    std::string gamma, beta;
    if (n.inputs.size() > 1 && !n.inputs[1].empty()) gamma = as(n.inputs[1], false, compute_);
    if (n.inputs.size() > 2 && !n.inputs[2].empty()) beta = as(n.inputs[2], false, compute_);
    const int64_t cols = dims.back();
    new_value(n.outputs[0], compute_, dims, false);
    std::vector<std::string> outs = {n.outputs[0]};
    if (!sum.empty()) outs.push_back(new_value(sum, compute_, dims, false));
    // A narrow (FP8 or INT8) GEMM reading the output (a transformer's QKV or first FFN projection)
    // gets its quantized input from this kernel too, instead of from a separate pass (see narrow_value).
    float y8_scale = 0;
    if (auto r = readers_.find(n.outputs[0]); r != readers_.end())
      for (size_t i : r->second) {
        if (!narrow_nodes_.count(i) || y8_scale > 0) continue;
        const auto pf = packed_first_.find(i);
        const Node& reader = pf != packed_first_.end() ? pf->second : g().nodes[i];
        if (reader.inputs[0] == n.outputs[0]) y8_scale = narrow_scale(reader);
      }
    if (y8_scale > 0) outs.push_back(new_value(narrow_key(n.outputs[0], y8_scale), narrow_type(), dims, false));
    add_step(dev_->layer_norm(compute_, numel(dims) / cols, cols, attr_float(n, "epsilon", 1e-5f), !sum.empty(), y8_scale,
                              narrow_type()),
             {x, gamma, beta, residual}, outs, {n.name, residual.empty() ? op : "Add+" + op, "", -1});
    return;
  }
  if (op == "Softmax") {
    const auto dims = dims_of(n.inputs[0]);
    const int64_t opset = m_.opsets.count("") ? m_.opsets.at("") : 13;
    int64_t axis = attr_int(n, "axis", opset >= 13 ? -1 : 1);
    if (axis < 0) axis += static_cast<int64_t>(dims.size());
    const int64_t rank = static_cast<int64_t>(dims.size());
    if (axis < 0 || axis >= rank) throw Error(ErrorCode::kInvalidArgument, "node '" + n.name + "': Softmax axis outside the rank");
    int64_t inner = 1;
    for (int64_t a = axis + 1; a < rank; ++a) inner *= dims[static_cast<size_t>(a)];
    const std::string x = plain(n.inputs[0]);
    const ElemType t = val(x).type;
    // Before opset 13 Softmax flattens from `axis`: rows of everything after it, contiguous.
    const int64_t cols = opset >= 13 ? dims[static_cast<size_t>(axis)] : dims[static_cast<size_t>(axis)] * inner;
    if (opset < 13 || inner == 1) {
      new_value(n.outputs[0], t, dims, false);
      add_step(dev_->softmax(t, numel(dims) / cols, cols), {x}, {n.outputs[0]}, {n.name, op, "", -1});
      return;
    }
    // A middle axis: [outer, n, inner] moved to [outer, inner, n], softmax over rows, moved back.
    const int64_t len = cols, outer = numel(dims) / (len * inner);
    auto move = [&](const std::string& from, const std::string& to, std::vector<int64_t> d, std::vector<int64_t> xs) {
      StridedCopy c;
      c.rank = 3;
      for (int k = 0; k < 3; ++k) c.dims[k] = d[static_cast<size_t>(k)], c.x_strides[k] = xs[static_cast<size_t>(k)];
      c.y_strides[0] = d[1] * d[2], c.y_strides[1] = d[2], c.y_strides[2] = 1;
      add_step(dev_->copy(t, t, c), {from}, {to}, {n.name, "Transpose (for " + op + ")", "", -1});
    };
    const std::string rows = new_value(n.outputs[0] + "#rows", t, {outer, inner, len}, false);
    move(x, rows, {outer, inner, len}, {len * inner, 1, inner});
    const std::string done = new_value(n.outputs[0] + "#softmax", t, {outer, inner, len}, false);
    add_step(dev_->softmax(t, outer * inner, len), {rows}, {done}, {n.name, op, "", -1});
    new_value(n.outputs[0], t, dims, false);
    move(done, n.outputs[0], {outer, len, inner}, {inner * len, 1, len});
    return;
  }
  if (kAliasOps.count(op) && n.domain.empty()) {
    // The same bytes under new dims (plain layout only: NHWC is converted first).
    const std::string x = plain(n.inputs[0]);
    Val v = val(x);
    v.dims = dims_of(n.outputs[0]);
    v.nhwc = false;
    vals_[n.outputs[0]] = v;
    if (n.outputs.size() > 1 && !n.outputs[1].empty())
      throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': Dropout's mask output has no GPU kernel");
    return;
  }
  if (op == "Transpose" || op == "Concat" || op == "Split" || op == "Slice" || op == "Gather" || op == "Expand")
    return lower_data(n);
  if (op.rfind("Reduce", 0) == 0 || op == "ArgMax" || op == "ArgMin" || op == "TopK" || op == "GatherElements" ||
      op == "Pad" || op == "Resize" || op == "Upsample" || op == "BatchNormalization")
    return lower_tensor_op(n);
  return lower_elementwise(n);
}

ConvDesc GpuProgramBuilder::conv_desc(const Node& n, std::vector<EwStep>* post) {
  const auto xd = dims_of(n.inputs[0]);
  const Tensor& w = constant(n.inputs[1], n, "weights");
  if (xd.size() != 4) throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': only 2-D convolutions run on the GPU");
  const auto od = dims_of(n.outputs[0]);
  const auto& wd = w.shape();
  ConvDesc d;
  d.n = xd[0], d.c = xd[1], d.h = xd[2], d.w = xd[3], d.k = wd[0], d.r = wd[2], d.s = wd[3];
  d.groups = attr_int(n, "group", 1);
  auto strides = attr_ints(n, "strides"), dil = attr_ints(n, "dilations"), pads = attr_ints(n, "pads");
  if (strides.empty()) strides = {1, 1};
  if (dil.empty()) dil = {1, 1};
  const std::string auto_pad = attr_string(n, "auto_pad", "NOTSET");
  if (auto_pad != "NOTSET" && auto_pad != "VALID") {
    // SAME_UPPER / SAME_LOWER: total padding from the output size.
    pads.assign(4, 0);
    for (int i = 0; i < 2; ++i) {
      const int64_t in = xd[2 + i], out = od[2 + i], k = (wd[2 + i] - 1) * dil[i] + 1;
      const int64_t total = std::max<int64_t>(0, (out - 1) * strides[i] + k - in);
      pads[i] = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      pads[i + 2] = total - pads[i];
    }
  }
  if (pads.empty()) pads = {0, 0, 0, 0};
  if (pads[0] != pads[2] || pads[1] != pads[3])
    throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': asymmetric convolution padding has no GPU kernel");
  d.pad_h = static_cast<int>(pads[0]), d.pad_w = static_cast<int>(pads[1]);
  d.stride_h = static_cast<int>(strides[0]), d.stride_w = static_cast<int>(strides[1]);
  d.dil_h = static_cast<int>(dil[0]), d.dil_w = static_cast<int>(dil[1]);
  d.type = compute_;
  const bool has_b = n.inputs.size() > 2 && !n.inputs[2].empty();
  const bool has_z = n.inputs.size() > 3 && !n.inputs[3].empty();
  d.bias = has_b, d.residual = has_z;
  const std::string act = attr_string(n, "activation");
  std::vector<float> ap;
  if (const Attribute* a = n.attr("activation_params")) ap = a->floats;
  if (act == "Relu") d.act = Act::kRelu;
  else if (act == "Clip" && ap.size() == 2 && ap[0] == 0.f && std::isfinite(ap[1])) d.act = Act::kClip, d.clip_lo = 0, d.clip_hi = ap[1];
  // SiLU fuses into cuDNN's convolution (its graph API, or Kiln's epilogue after it); a depthwise
  // convolution keeps Kiln's kernel and a separate pass.
  else if (act == "SiLU" && !(d.groups > 1 && d.groups == d.c && d.k == d.c)) d.act = Act::kSilu;
  else if (!activation_steps(act, ap, *post))
    throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': activation " + act + " has no GPU kernel");
  if (deferred_clip_.count(n.outputs[0])) d.act = Act::kRelu;  // the reader clamps at the top
  if (auto it = deferred_clip_.find(n.inputs[0]); it != deferred_clip_.end()) d.in_clip = true, d.in_clip_hi = it->second;
  return d;
}

void GpuProgramBuilder::lower_conv(const Node& n) {
  std::vector<EwStep> post;
  ConvDesc d = conv_desc(n, &post);
  if (int8_nodes_.count(current_)) return lower_conv_int8(n, d);
  const std::string act = attr_string(n, "activation");
  const auto od = dims_of(n.outputs[0]);
  const Tensor& w = constant(n.inputs[1], n, "weights");
  const auto& wd = w.shape();
  const bool has_b = n.inputs.size() > 2 && !n.inputs[2].empty();
  const bool has_z = n.inputs.size() > 3 && !n.inputs[3].empty();
  // Filter OIHW -> KRSC (cuDNN's NHWC filter layout) over cp >= C channels, the ones past C zero.
  const int64_t K = wd[0], C = wd[1], R = wd[2], S = wd[3];
  auto krsc = [&](int64_t cp) {
    std::vector<int64_t> order(static_cast<size_t>(K * R * S * cp));
    size_t i = 0;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          for (int64_t c = 0; c < cp; ++c) order[i++] = c < C ? ((k * C + c) * R + r) * S + s : -1;
    return order;
  };
  std::vector<std::string> ins = {"", ""};  // the input and the weights once the kernel is chosen
  if (has_b) ins.push_back(as(n.inputs[2], false, compute_));
  if (has_z) ins.push_back(as(n.inputs[3], true, compute_));
  const std::string out = post.empty() ? n.outputs[0] : n.outputs[0] + "#preact";
  const bool gemm_ok = is_gemm(d);
  const std::string& tactic = opt_.conv1x1_tactic;
  std::unique_ptr<Kernel> conv_k, gemm_k, dw_k;
  const bool dw_ok = d.groups == d.c && d.k == d.c && d.groups > 1;
  const std::string& dw_tactic = opt_.depthwise_tactic;
  const MatmulDesc md = as_gemm(d);
  // A convolution over fewer than 8 channels (an image's first layer, C = 3) is also timed on its
  // input zero-padded to 4 and to 8 channels per pixel, with zero filter channels: the same sums,
  // in the channel counts cuDNN's tensor-core kernels are made for.
  const std::string& pad_opt = opt_.channel_pad;
  if (pad_opt != "auto" && pad_opt != "off" && pad_opt != "4" && pad_opt != "8")
    throw Error(ErrorCode::kInvalidArgument, "channel_pad '" + pad_opt + "' is not auto, off, 4 or 8");
  const bool pad_ok = pad_opt != "off" && d.groups == 1 && d.c < 8 && !d.in_clip &&
                      (compute_ == ElemType::kF16 || compute_ == ElemType::kBF16);
  std::unique_ptr<Kernel> pad_k;
  int64_t pad_c = 0;
  auto padded = [&](int64_t c) {
    ConvDesc dp = d;
    dp.c = c;
    return dp;
  };
  // The timing cache records the winning family and its tactic: "depthwise|t", "gemm|t", "cudnn|t",
  // "cudnn-pad4|t", "cudnn-pad8|t".
  const std::string key =
      conv_key(d) + " conv1x1=" + tactic + " depthwise=" + dw_tactic + (pad_ok ? " pad=" + pad_opt : std::string());
  const auto hit = recorded(key);
  if (hit) {
    const std::string& rec = hit->tactic;
    const size_t bar = rec.find('|');
    const std::string family = rec.substr(0, bar), t = bar == std::string::npos ? "" : rec.substr(bar + 1);
    try {
      if (family == "depthwise" && dw_ok) dw_k = dev_->depthwise(d, t);
      else if (family == "gemm" && gemm_ok) gemm_k = dev_->matmul(md, opt_.workspace_limit, t);
      else if (family == "cudnn" && !d.in_clip) conv_k = dev_->conv(d, opt_.workspace_limit, t);
      else if ((family == "cudnn-pad4" || family == "cudnn-pad8") && pad_ok && family.back() - '0' > d.c) {
        pad_c = family.back() - '0';
        pad_k = dev_->conv(padded(pad_c), opt_.workspace_limit, t);
      } else throw std::runtime_error("'" + rec + "' is not a convolution tactic for this node");
      ++stats_.recorded;
    } catch (const std::runtime_error& e) {
      rejected(n.name, e.what());
    }
  }
  const bool timed = !dw_k && !gemm_k && !conv_k && !pad_k;
  if (timed) {
    warm_up();
    const bool forced_pad = pad_ok && pad_opt != "auto";
    if (dw_ok && dw_tactic != "cudnn") dw_k = dev_->depthwise(d);
    if ((!gemm_ok || tactic != "gemm") && !(dw_k && dw_tactic == "kiln") && !d.in_clip && !forced_pad)
      conv_k = dev_->conv(d, opt_.workspace_limit);
    if (gemm_ok && tactic != "cudnn" && !forced_pad) gemm_k = dev_->matmul(md, opt_.workspace_limit);
    std::ostringstream pad_log;
    if (conv_k) pad_log << d.c << " channels " << conv_k->timed_ms() << " ms";
    for (int64_t c : {int64_t{4}, int64_t{8}}) {
      if (!pad_ok || c <= d.c || (forced_pad && pad_opt != std::to_string(c))) continue;
      try {
        auto k = dev_->conv(padded(c), opt_.workspace_limit);
        pad_log << (pad_log.tellp() > 0 ? ", " : "") << c << " channels " << k->timed_ms() << " ms";
        if (!pad_k || k->timed_ms() < pad_k->timed_ms()) pad_k = std::move(k), pad_c = c;
      } catch (const std::runtime_error& e) {
        if (forced_pad) throw;
        if (opt_.log) opt_.log->push_back("node '" + n.name + "': no convolution over " + std::to_string(c) + " channels (" + e.what() + ")");
      }
    }
    if (pad_ok && opt_.log) opt_.log->push_back("node '" + n.name + "': cuDNN on " + pad_log.str());
    ++stats_.timed;
  }
  // The fastest of the candidates, each timed on the device when it was made (or the one recorded).
  auto faster = [](const std::unique_ptr<Kernel>& a, const std::unique_ptr<Kernel>& b) {
    return a && (!b || a->timed_ms() < b->timed_ms());
  };
  const bool pad_wins = faster(pad_k, conv_k) && faster(pad_k, gemm_k) && faster(pad_k, dw_k);
  const bool dw_wins = !pad_wins && faster(dw_k, conv_k) && faster(dw_k, gemm_k);
  const bool gemm_wins = !pad_wins && !dw_wins && faster(gemm_k, conv_k);
  const Kernel& winner = pad_wins ? *pad_k : dw_wins ? *dw_k : gemm_wins ? *gemm_k : *conv_k;
  const std::string family = pad_wins ? "cudnn-pad" + std::to_string(pad_c) : dw_wins ? "depthwise" : gemm_wins ? "gemm" : "cudnn";
  record(key, family + "|" + winner.tactic(), timed ? winner.timed_ms() : hit->ms, timed);
  if (post.empty() && has_b) {
    // The input's converting copy (to NHWC of the compute type, channels padded or not) is part of
    // the separate steps' cost too.
    const std::string& x = n.inputs[0];
    const bool copied = pad_wins || !(val(x).nhwc && val(x).type == compute_);
    if (lower_stem_pool(n, d, ins[2], timed ? winner.timed_ms() : hit->ms, copied ? (pad_wins ? pad_c : d.c) : 0)) return;
  }
  new_value(out, compute_, od, true);
  ins[0] = pad_wins ? padded_nhwc(n.inputs[0], pad_c, compute_) : as(n.inputs[0], true, compute_);
  if (pad_wins) {
    ins[1] = weight_value(n.inputs[1], compute_, {K, R, S, pad_c}, krsc(pad_c), "krsc_c" + std::to_string(pad_c));
    add_step(std::move(pad_k), ins, {out}, {n.name, n.op_type, "", -1});
  } else if (dw_wins) {
    std::vector<int64_t> rsc(static_cast<size_t>(R * S * K));
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s2 = 0; s2 < S; ++s2)
        for (int64_t k = 0; k < K; ++k) rsc[static_cast<size_t>((r * S + s2) * K + k)] = (k * R + r) * S + s2;
    ins[1] = weight_value(n.inputs[1], compute_, {R, S, K}, rsc, "rsc");
    add_step(std::move(dw_k), ins, {out}, {n.name, n.op_type, "", -1});
  } else if (gemm_wins) {
    std::vector<int64_t> ck(static_cast<size_t>(C * K));
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < K; ++k) ck[static_cast<size_t>(c * K + k)] = k * C + c;
    ins[1] = weight_value(n.inputs[1], compute_, {C, K}, ck, "ck");
    add_step(std::move(gemm_k), ins, {out}, {n.name, n.op_type, "", -1});
  } else {
    ins[1] = weight_value(n.inputs[1], compute_, {K, R, S, C}, krsc(C), "krsc");
    add_step(std::move(conv_k), ins, {out}, {n.name, n.op_type, "", -1});
  }
  if (!post.empty()) {
    std::vector<EwStep> steps = {EwStep{}};
    steps.insert(steps.end(), post.begin(), post.end());
    emit_elementwise(n.name + " activation", act, {out}, steps, n.outputs[0], compute_, od);
  }
}

bool GpuProgramBuilder::lower_stem_pool(const Node& n, const ConvDesc& d, const std::string& bias, double conv_ms,
                                        int64_t copy_channels) {
  if (opt_.stem_pool != "auto" && opt_.stem_pool != "on" && opt_.stem_pool != "off")
    throw Error(ErrorCode::kInvalidArgument, "stem_pool '" + opt_.stem_pool + "' is not auto, on or off");
  if (opt_.stem_pool == "off" || compute_ != ElemType::kF16) return false;
  if (d.groups != 1 || d.c > 4 || d.k != 64 || d.r != 7 || d.s != 7 || d.stride_h != 2 || d.stride_w != 2 ||
      d.pad_h != 3 || d.pad_w != 3 || d.dil_h != 1 || d.dil_w != 1 || d.residual || d.in_clip || d.act == Act::kSilu ||
      deferred_clip_.count(n.outputs[0]))
    return false;
  const std::string& x = n.inputs[0];
  if (val(x).nhwc || (val(x).type != ElemType::kF32 && val(x).type != ElemType::kF16)) return false;
  // The one reader: a 3x3/2 pad 1 MaxPool without Indices.
  const auto r = readers_.find(n.outputs[0]);
  if (r == readers_.end() || r->second.size() != 1 || r->second[0] == SIZE_MAX) return false;
  const size_t pi = r->second[0];
  const Node& pool = g().nodes[pi];
  if (!pool.domain.empty() || pool.op_type != "MaxPool" || pool.inputs[0] != n.outputs[0]) return false;
  if (pool.outputs.size() > 1 && !pool.outputs[1].empty()) return false;
  auto ints = [&](const char* name, std::vector<int64_t> dflt) {
    const auto v = attr_ints(pool, name);
    return v.empty() ? dflt : v;
  };
  if (ints("kernel_shape", {}) != std::vector<int64_t>{3, 3} || ints("strides", {1, 1}) != std::vector<int64_t>{2, 2} ||
      ints("pads", {0, 0, 0, 0}) != std::vector<int64_t>{1, 1, 1, 1} || ints("dilations", {1, 1}) != std::vector<int64_t>{1, 1} ||
      attr_string(pool, "auto_pad", "NOTSET") != "NOTSET" || attr_int(pool, "storage_order", 0) != 0)
    return false;
  StemPoolDesc sd;
  sd.n = d.n, sd.c = d.c, sd.h = d.h, sd.w = d.w, sd.x_type = val(x).type;
  if (d.act == Act::kRelu) sd.lo = 0;
  if (d.act == Act::kClip) sd.lo = d.clip_lo, sd.hi = d.clip_hi;
  const auto pd = dims_of(pool.outputs[0]);
  if (pd.size() != 4 || pd[1] != 64 || pd[2] != sd.out_h() || pd[3] != sd.out_w()) return false;
  // INT8 out where every reader is an INT8 convolution reading it as its input or residual.
  const bool y8 = int8_ && read_only_by(pool.outputs[0], int8_nodes_);
  if (y8) sd.y_type = ElemType::kI8, sd.y_scale = int8_scales(g().nodes[readers_.at(pool.outputs[0])[0]]).x;
  const size_t x_bytes = static_cast<size_t>(d.n * d.c * d.h * d.w) * elem_bytes(sd.x_type);
  const size_t conv_elems = static_cast<size_t>(d.n * 64 * sd.conv_h() * sd.conv_w());
  const size_t out_elems = static_cast<size_t>(d.n * 64 * sd.out_h() * sd.out_w());
  std::unique_ptr<Kernel> k;
  try {
    k = dev_->stem_pool(sd);
  } catch (const std::runtime_error& e) {
    if (opt_.stem_pool == "on") throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': " + e.what());
    if (opt_.log) opt_.log->push_back("node '" + n.name + "': no fused stem (" + e.what() + ")");
    return false;
  }
  const std::string key = "gpu.stempool " + conv_key(d) + " x" + type_tag(sd.x_type) + (y8 ? " y8" : " y16");
  bool fused = opt_.stem_pool == "on";
  if (!fused) {
    if (const auto known = known_choice(key, {"fused", "split"})) {
      fused = known->tactic == "fused";
    } else {
      warm_up();
      const double t_fused = time_on_device(*k, {x_bytes, static_cast<size_t>(64 * stem_filter_pitch(d.c) * 2), 128},
                                            out_elems * (y8 ? 1 : 2));
      Pool2d p;
      p.max = true, p.n = d.n, p.c = 64, p.h = sd.conv_h(), p.w = sd.conv_w(), p.oh = sd.out_h(), p.ow = sd.out_w();
      p.kh = p.kw = 3, p.sh = p.sw = 2, p.pad_t = p.pad_l = 1;
      double t_split = conv_ms + time_on_device(*dev_->pool(compute_, p), {conv_elems * 2}, out_elems * 2);
      if (copy_channels > 0)
        t_split += time_on_device(*dev_->copy(sd.x_type, compute_, padded_copy(val(x), copy_channels)), {x_bytes},
                                  static_cast<size_t>(d.n * copy_channels * d.h * d.w) * 2);
      if (y8) t_split += quantize_ms(static_cast<int64_t>(out_elems));
      fused = t_fused < t_split;
      record(key, fused ? "fused" : "split", t_fused, true);
      if (opt_.log) {
        std::ostringstream os;
        os << "node '" << n.name << "' + '" << pool.name << "': fused stem " << t_fused << " ms, separate steps " << t_split
           << " ms";
        opt_.log->push_back(os.str());
      }
    }
  }
  if (!fused) return false;
  const std::string w = weight_value(n.inputs[1], ElemType::kF16, {64, stem_filter_pitch(d.c)}, stem_filter_order(d.c), "stem");
  new_value(pool.outputs[0], sd.y_type, pd, true);
  if (y8) int8_vals_[pool.outputs[0]] = sd.y_scale;
  add_step(std::move(k), {x, w, bias}, {pool.outputs[0]}, {n.name + " + " + pool.name, "Conv+MaxPool", "", -1});
  packed_skip_.insert(pi);
  return true;
}

void GpuProgramBuilder::lower_matmul(const Node& n) {
  const bool gemm = n.op_type == "Gemm" || n.op_type == "FusedMatMul";
  const bool ta = gemm && attr_int(n, "transA", 0) != 0, tb = gemm && attr_int(n, "transB", 0) != 0;
  const float alpha = gemm ? attr_float(n, "alpha", 1.f) : 1.f, beta = gemm ? attr_float(n, "beta", 1.f) : 1.f;
  const auto ad = dims_of(n.inputs[0]);
  const auto od = dims_of(n.outputs[0]);
  if (ta) throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': a transposed A operand has no GPU kernel");
  int64_t K = 0, N = 0, M = 0, batch = 1, w_stride = 0;
  std::string w;
  if (is_const(n.inputs[1])) {
    const Tensor& b = g().initializers.at(n.inputs[1]);
    const auto& bd = b.shape();
    if (bd.size() != 2) throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': only 2-D constant B operands run on the GPU");
    K = tb ? bd[1] : bd[0], N = tb ? bd[0] : bd[1];
    M = numel(ad) / K;
    // W as [K, N] row major, alpha folded in.
    std::vector<int64_t> order;
    if (tb) {
      order.resize(static_cast<size_t>(K * N));
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < N; ++j) order[static_cast<size_t>(k * N + j)] = j * K + k;
    }
    w = weight_value(n.inputs[1], compute_, {K, N}, order, tb ? "t" : "kn", alpha);
  } else {
    // Both operands computed (attention that was not fused): strided batches over the leading dims.
    const auto bd = dims_of(n.inputs[1]);
    if (tb || alpha != 1.f || ad.size() < 2 || bd.size() < 2)
      throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': this form of a computed B operand has no GPU kernel");
    K = bd[bd.size() - 2], N = bd.back();
    const int64_t batch_b = numel(bd) / (K * N);
    if (batch_b == 1) {
      M = numel(ad) / K;
    } else {
      const std::vector<int64_t> lead_a(ad.begin(), ad.end() - 2), lead_b(bd.begin(), bd.end() - 2);
      if (lead_a != lead_b)
        throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': a batched MatMul with broadcast batch dims has no GPU kernel");
      M = ad[ad.size() - 2];
      batch = batch_b;
      w_stride = K * N;
    }
    w = as(n.inputs[1], false, compute_);
  }
  MatmulDesc d;
  d.m = M, d.n = N, d.k = K, d.batch = batch, d.w_stride = w_stride, d.type = compute_;
  std::vector<std::string> ins = {"", w};
  const float sx = batch == 1 && narrow_nodes_.count(current_) ? narrow_scale(n) : 0.f;
  const bool i8 = sx > 0 && int8_;  // Kiln's INT8 kernel (a 1x1 convolution over M pixels)
  if (sx <= 0) ins[0] = as(n.inputs[0], false, compute_);
  if (i8) {
    // INT8: W as [N, K] (KRSC of a 1x1 filter) per output column, scale amax(alpha W[:, j]) / 127;
    // the kernel's FP32 scale[j] is the input's scale times column j's.
    const Tensor& b = g().initializers.at(n.inputs[1]);
    auto at = [&](int64_t k, int64_t j) { return alpha * host_value(b, tb ? j * K + k : k * N + j); };
    std::vector<double> sw(static_cast<size_t>(N), 1.0);
    for (int64_t j = 0; j < N; ++j) {
      double amax = 0;
      for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(at(k, j)));
      if (amax > 0 && std::isfinite(amax)) sw[static_cast<size_t>(j)] = amax / 127.0;
    }
    std::ostringstream variant;
    variant << (tb ? "int8nk-t/" : "int8nk/") << std::hexfloat << alpha;
    ins[1] = derived_weight(n.inputs[1], variant.str(), ElemType::kI8, {N, 1, 1, K}, [&] {
      std::vector<uint8_t> bytes(static_cast<size_t>(N * K));
      for (int64_t j = 0; j < N; ++j)
        for (int64_t k = 0; k < K; ++k) {
          const double q = std::nearbyint(at(k, j) / sw[static_cast<size_t>(j)]);
          bytes[static_cast<size_t>(j * K + k)] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(q, -127.0, 127.0)));
        }
      return bytes;
    });
    variant << "/x" << sx;
    ins.push_back(derived_weight(n.inputs[1], variant.str(), ElemType::kF32, {N}, [&] {
      std::vector<uint8_t> bytes(static_cast<size_t>(N) * 4);
      for (int64_t j = 0; j < N; ++j) {
        const float v = static_cast<float>(sx * sw[static_cast<size_t>(j)]);
        std::memcpy(&bytes[static_cast<size_t>(j) * 4], &v, 4);
      }
      return bytes;
    }));
    ins[0] = narrow_value(n.inputs[0], sx);
  } else if (sx > 0) {
    // FP8: W as E4M3 [N, K] scaled by 448 / amax(alpha W), X quantized by its calibrated scale.
    const Tensor& b = g().initializers.at(n.inputs[1]);
    double amax = 0;
    for (int64_t i = 0; i < b.numel(); ++i) amax = std::max(amax, std::fabs(host_value(b, i)));
    amax *= std::fabs(alpha);
    const double sw = amax > 0 && std::isfinite(amax) ? amax / kE4M3Max : 1.0;
    std::vector<int64_t> order;
    if (!tb) {
      order.resize(static_cast<size_t>(K * N));
      for (int64_t j = 0; j < N; ++j)
        for (int64_t k = 0; k < K; ++k) order[static_cast<size_t>(j * K + k)] = k * N + j;
    }
    ins[1] = weight_value(n.inputs[1], ElemType::kF8E4M3, {N, K}, order, tb ? "fp8nk-t" : "fp8nk", alpha / sw);
    ins[0] = narrow_value(n.inputs[0], sx);
    d.fp8 = true;
    d.x_scale = sx;
    d.w_scale = static_cast<float>(sw);
  }
  // C: a [N] (or [1,N]) constant is the bias epilogue; anything else is added after.
  std::string c_rest;
  if (n.inputs.size() > 2 && !n.inputs[2].empty()) {
    const std::string& c = n.inputs[2];
    const auto cd = is_const(c) ? g().initializers.at(c).shape() : dims_of(c);
    if (is_const(c) && numel(cd) == N && (cd.empty() || cd.back() == N)) {
      d.bias = true;
      ins.push_back(i8 ? weight_value(c, ElemType::kF32, {N}, {}, "gemmbias32", beta) : weight_value(c, compute_, {N}, {}, "bias", beta));
    } else {
      c_rest = c;
    }
  }
  const std::string act = n.op_type == "FusedMatMul" ? attr_string(n, "activation") : "";
  std::vector<float> ap;
  if (const Attribute* a = n.attr("activation_params")) ap = a->floats;
  std::vector<EwStep> post;
  if (c_rest.empty() && act == "Relu") d.epilogue = MatmulDesc::Epilogue::kRelu;
  else if (c_rest.empty() && act == "GeluTanh" && !i8) d.epilogue = MatmulDesc::Epilogue::kGeluTanh;
  else if (!activation_steps(act, ap, post))
    throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': activation " + act + " has no GPU kernel");
  const bool after = !c_rest.empty() || !post.empty();
  const std::string out = after ? n.outputs[0] + "#mm" : n.outputs[0];
  new_value(out, compute_, od, false);
  if (i8) {
    // [M, 1, 1, N] NHWC is [M, N] row major: the output is the GEMM's as it is.
    const ConvDesc cd = int8_gemm_desc(M, N, K, d.bias, d.epilogue == MatmulDesc::Epilogue::kRelu);
    add_step(int8_conv_kernel(cd, n.name), ins, {out}, {n.name, n.op_type, "", -1});
  } else {
    add_step(tuned_matmul(d, n.name), ins, {out}, {n.name, n.op_type, "", -1});
  }
  if (after) {
    std::vector<EwStep> steps = {EwStep{}};
    std::vector<std::string> ew_ins = {out};
    if (!c_rest.empty()) {
      ew_ins.push_back(c_rest);
      if (beta != 1.f) {
        // acc = mm + beta * C: load C scaled, then add the product.
        steps = {EwStep{EwOp::kLoad, 1}, EwStep{EwOp::kAffine, 0, 0, false, beta, 0}, EwStep{EwOp::kAdd, 0}};
      } else {
        steps.push_back(EwStep{EwOp::kAdd, 1});
      }
    }
    steps.insert(steps.end(), post.begin(), post.end());
    emit_elementwise(n.name + " epilogue", n.op_type, ew_ins, steps, n.outputs[0], compute_, od);
  }
}

std::string GpuProgramBuilder::narrow_key(const std::string& x, float scale) const {
  std::ostringstream key;
  // INT8 rows (plain layout) are named apart from a convolution's NHWC INT8 input (int8_value).
  key << x << (fp8_ ? "#fp8/" : "#int8rows/") << std::hexfloat << scale;
  return key.str();
}

std::string GpuProgramBuilder::narrow_value(const std::string& x, float scale) {
  if (val(x).type == narrow_type()) return x;  // written so by its producer, with this scale
  const std::string key = narrow_key(x, scale);
  if (vals_.count(key)) return key;  // a copy its producer wrote (LayerNorm), or an earlier reader's
  if (int8_) {
    // Over the dense rows, in the program's float type (a graph input may be FP32), as one flat
    // range (what quantize_ms times).
    const std::string in = as(x, false, compute_);
    new_value(key, ElemType::kI8, val(in).dims, false);
    add_step(dev_->elementwise(int8_quantize_program(numel(val(in).dims), 1.f / scale)), {in}, {key},
             {"to int8 " + x, "QuantizeINT8", "", -1});
    return key;
  }
  const std::string in = plain(x);
  const std::vector<EwStep> steps = {EwStep{}, EwStep{EwOp::kAffine, 0, 0, false, 1.f / scale, 0.f}};
  emit_elementwise("to fp8 " + x, "QuantizeFP8", {in}, steps, key, ElemType::kF8E4M3, val(in).dims);
  return key;
}

ConvDesc GpuProgramBuilder::int8_gemm_desc(int64_t m, int64_t n, int64_t k, bool bias, bool relu) {
  ConvDesc d;
  d.n = m, d.c = k, d.h = 1, d.w = 1, d.k = n, d.r = 1, d.s = 1;
  d.type = ElemType::kI8;
  d.bias = bias;
  d.act = relu ? Act::kRelu : Act::kNone;
  d.y_type = ElemType::kF16;
  return d;
}

std::unique_ptr<Kernel> GpuProgramBuilder::int8_conv_kernel(const ConvDesc& d, const std::string& node) {
  std::ostringstream key;
  key << conv_key(d) << " y" << type_tag(d.y_type) << " z" << type_tag(d.z_type);
  return tuned(key.str(), node, [&](const std::string& t) { return dev_->conv(d, opt_.workspace_limit, t); });
}

std::string GpuProgramBuilder::host_weight(ElemType type, std::vector<int64_t> dims, std::vector<uint8_t> bytes) {
  std::ostringstream key;
  key << "host|" << std::hex << bytes_hash(bytes.data(), bytes.size()) << "|" << bytes.size() << "|"
      << static_cast<int>(type);
  for (int64_t d : dims) key << "," << d;
  return pooled_weight("#" + key.str(), key.str(), type, std::move(dims), [&] { return bytes; });
}

std::string GpuProgramBuilder::pooled_weight(const std::string& vname, const std::string& pool_key, ElemType type,
                                             std::vector<int64_t> dims, const std::function<std::vector<uint8_t>()>& make) {
  if (vals_.count(vname)) return vname;
  const WeightPool::Entry e = pool_->get(pool_key, make);
  weights_.push_back(e.data);
  weight_bytes_ += e.bytes;
  Val v;
  v.type = type;
  v.dims = std::move(dims);
  v.slot.kind = GpuProgram::Slot::kWeight;
  v.slot.index = weights_.size() - 1;
  vals_[vname] = v;
  return vname;
}

void GpuProgramBuilder::lower_tensor_op(const Node& n) {
  const std::string& op = n.op_type;
  auto fail = [&](const std::string& why) {
    throw Error(ErrorCode::kUnsupported, "node '" + n.name + "' (" + op + "): " + why);
  };
  const int64_t opset = m_.opsets.count("") ? m_.opsets.at("") : 13;
  const auto xd = dims_of(n.inputs[0]);
  const int64_t rank = static_cast<int64_t>(xd.size());
  auto norm_axis = [&](int64_t a) {
    if (a < -rank || a >= rank) fail("axis " + std::to_string(a) + " outside the rank " + std::to_string(rank));
    return a < 0 ? a + rank : a;
  };
  auto float_input = [&](const std::string& name) {
    const std::string x = plain(name);
    if (!is_float(val(x).type)) fail("only float tensors have a GPU kernel for this op");
    return x;
  };
  auto product = [&](int64_t from, int64_t to) {  // of xd[from, to)
    int64_t p = 1;
    for (int64_t i = from; i < to; ++i) p *= xd[static_cast<size_t>(i)];
    return p;
  };
  auto ints_input = [&](size_t i, const char* what) {
    std::vector<int64_t> v;
    if (n.inputs.size() <= i || n.inputs[i].empty()) return v;
    const Tensor& t = constant(n.inputs[i], n, what);
    for (int64_t k = 0; k < t.numel(); ++k) v.push_back(static_cast<int64_t>(host_value(t, k)));
    return v;
  };
  const auto od = dims_of(n.outputs[0]);

  if (op == "BatchNormalization") {
    // Inference form y = x * s + t per channel (the decompose-batchnorm pass's; it runs before
    // lowering at opt levels >= 1, so this is for graphs it did not touch).
    const std::optional<BatchnormAffine> f = batchnorm_affine(g(), n);
    if (!f)
      fail("only inference mode with constant per-channel statistics (and only Y used) has a GPU kernel");
    const int64_t c = xd[1];
    std::vector<uint8_t> sb(static_cast<size_t>(c) * 4), bbytes(static_cast<size_t>(c) * 4);
    for (int64_t i = 0; i < c; ++i) {
      const float sf = static_cast<float>(f->s[static_cast<size_t>(i)]), bf = static_cast<float>(f->t[static_cast<size_t>(i)]);
      std::memcpy(sb.data() + 4 * i, &sf, 4);
      std::memcpy(bbytes.data() + 4 * i, &bf, 4);
    }
    std::vector<int64_t> pd(static_cast<size_t>(rank - 1), 1);
    pd[0] = c;  // [C, 1, ...]: broadcast over the dims after the channel
    const std::string s = host_weight(ElemType::kF32, pd, std::move(sb));
    const std::string b = host_weight(ElemType::kF32, pd, std::move(bbytes));
    const std::vector<EwStep> steps = {{EwOp::kLoad, 0}, {EwOp::kMul, 1}, {EwOp::kAdd, 2}};
    emit_elementwise(n.name, op, {n.inputs[0], s, b}, steps, n.outputs[0], internal_type(g().type_of(n.outputs[0])->dtype), od);
    return;
  }

  if (op.rfind("Reduce", 0) == 0) {
    static const std::map<std::string, ReduceOp> kReduce = {{"ReduceMean", ReduceOp::kMean}, {"ReduceSum", ReduceOp::kSum},
                                                            {"ReduceMax", ReduceOp::kMax},   {"ReduceMin", ReduceOp::kMin},
                                                            {"ReduceProd", ReduceOp::kProd}};
    const auto r = kReduce.find(op);
    if (r == kReduce.end()) fail("no GPU kernel");
    std::vector<int64_t> axes = attr_ints(n, "axes");
    const bool axes_input = op == "ReduceSum" ? opset >= 13 : opset >= 18;
    if (axes_input) axes = ints_input(1, "axes");
    if (axes.empty()) {
      if (attr_int(n, "noop_with_empty_axes", 0) != 0) {  // the input itself
        Val v = val(plain(n.inputs[0]));
        vals_[n.outputs[0]] = v;
        return;
      }
      for (int64_t a = 0; a < rank; ++a) axes.push_back(a);
    }
    for (auto& a : axes) a = norm_axis(a);
    std::sort(axes.begin(), axes.end());
    axes.erase(std::unique(axes.begin(), axes.end()), axes.end());
    for (size_t i = 1; i < axes.size(); ++i)
      if (axes[i] != axes[i - 1] + 1) fail("reducing axes that are not adjacent has no GPU kernel");
    const int64_t first = axes.front(), last = axes.back() + 1;
    // A spatial mean of an NHWC value (a global average pool written as ReduceMean) reads it as is.
    const Val& in = val(n.inputs[0]);
    if (r->second == ReduceOp::kMean && rank == 4 && first == 2 && last == 4 && in.nhwc && is_float(in.type)) {
      const std::string x = n.inputs[0];
      new_value(n.outputs[0], in.type, od, false);
      add_step(dev_->mean_middle(val(x).type, xd[0], xd[2] * xd[3], xd[1]), {x}, {n.outputs[0]}, {n.name, op, "", -1});
      return;
    }
    const std::string x = float_input(n.inputs[0]);
    new_value(n.outputs[0], val(x).type, od, false);
    add_step(dev_->reduce(val(x).type, r->second, product(0, first), product(first, last), product(last, rank)), {x},
             {n.outputs[0]}, {n.name, op, "", -1});
    return;
  }

  if (op == "ArgMax" || op == "ArgMin") {
    const int64_t axis = norm_axis(attr_int(n, "axis", 0));
    const std::string x = float_input(n.inputs[0]);
    new_value(n.outputs[0], ElemType::kI64, od, false);
    add_step(dev_->reduce(val(x).type, op == "ArgMax" ? ReduceOp::kArgMax : ReduceOp::kArgMin, product(0, axis),
                          xd[static_cast<size_t>(axis)], product(axis + 1, rank), attr_int(n, "select_last_index", 0) != 0),
             {x}, {n.outputs[0]}, {n.name, op, "", -1});
    return;
  }

  if (op == "TopK") {
    const int64_t axis = norm_axis(attr_int(n, "axis", -1));
    int64_t k = attr_int(n, "k", -1);
    if (opset >= 10) {
      const auto kv = ints_input(1, "k");
      if (kv.size() != 1) fail("k must be one constant");
      k = kv[0];
    }
    const int64_t len = xd[static_cast<size_t>(axis)];
    if (k < 0 || k > len) fail("k = " + std::to_string(k) + " outside [0, " + std::to_string(len) + "]");
    const std::string x = float_input(n.inputs[0]);
    new_value(n.outputs[0], val(x).type, od, false);
    std::vector<std::string> outs = {n.outputs[0]};
    const std::string indices = n.outputs.size() > 1 && !n.outputs[1].empty() ? n.outputs[1] : n.name + "#indices";
    outs.push_back(new_value(indices, ElemType::kI64, od, false));
    add_step(dev_->topk(val(x).type, product(0, axis), len, product(axis + 1, rank), k, attr_int(n, "largest", 1) != 0),
             {x}, outs, {n.name, op, "", -1});
    return;
  }

  if (op == "GatherElements") {
    const int64_t axis = norm_axis(attr_int(n, "axis", 0));
    const std::string data = plain(n.inputs[0]);
    const std::string idx = plain(n.inputs[1]);
    const ElemType it = val(idx).type;
    if (it != ElemType::kI64 && it != ElemType::kI32) fail("indices must be int64 or int32");
    GatherElementsDesc d;
    d.rank = static_cast<int>(rank);
    check_rank(d.rank, n.name);
    for (int64_t a = 0; a < rank; ++a) d.data_dims[a] = xd[static_cast<size_t>(a)], d.out_dims[a] = od[static_cast<size_t>(a)];
    d.axis = static_cast<int>(axis);
    new_value(n.outputs[0], val(data).type, od, false);
    add_step(dev_->gather_elements(it, elem_bytes(val(data).type), d), {data, idx}, {n.outputs[0]}, {n.name, op, "", -1});
    return;
  }

  if (op == "Pad") {
    std::vector<int64_t> pads = opset >= 11 ? ints_input(1, "pads") : attr_ints(n, "pads");
    float value = opset >= 11 ? 0.f : attr_float(n, "value", 0.f);
    if (opset >= 11 && n.inputs.size() > 2 && !n.inputs[2].empty())
      value = static_cast<float>(host_value(constant(n.inputs[2], n, "constant_value"), 0));
    std::vector<int64_t> axes = ints_input(3, "axes");
    if (axes.empty())
      for (int64_t a = 0; a < rank; ++a) axes.push_back(a);
    if (pads.size() != 2 * axes.size()) fail("pads has " + std::to_string(pads.size()) + " values for " + std::to_string(axes.size()) + " axes");
    PadDesc d;
    d.rank = static_cast<int>(rank);
    check_rank(d.rank, n.name);
    bool none = true;
    for (int64_t a = 0; a < rank; ++a) d.in_dims[a] = xd[static_cast<size_t>(a)], d.out_dims[a] = od[static_cast<size_t>(a)];
    for (size_t i = 0; i < axes.size(); ++i) {
      d.begin[norm_axis(axes[i])] = pads[i];
      none = none && pads[i] == 0 && pads[i + axes.size()] == 0;
    }
    const std::string mode = attr_string(n, "mode", "constant");
    d.mode = mode == "constant" ? PadDesc::Mode::kConstant : mode == "edge" ? PadDesc::Mode::kEdge
           : mode == "reflect" ? PadDesc::Mode::kReflect : mode == "wrap" ? PadDesc::Mode::kWrap : (fail("mode " + mode), PadDesc::Mode::kConstant);
    d.value = value;
    const std::string x = float_input(n.inputs[0]);
    if (none) {  // nothing to pad: the same bytes
      vals_[n.outputs[0]] = val(x);
      return;
    }
    new_value(n.outputs[0], val(x).type, od, false);
    add_step(dev_->pad(val(x).type, d), {x}, {n.outputs[0]}, {n.name, op, "", -1});
    return;
  }

  if (op == "Resize" || op == "Upsample") {
    const bool legacy = op == "Upsample" || opset < 11;
    const std::string mode = attr_string(n, "mode", "nearest");
    if (mode != "nearest" && mode != "linear" && mode != "bilinear") fail("mode " + mode + " has no GPU kernel");
    const bool linear = mode != "nearest";
    const std::string coord = legacy ? "asymmetric" : attr_string(n, "coordinate_transformation_mode", "half_pixel");
    const std::string nearest = attr_string(n, "nearest_mode", "round_prefer_floor");
    if (attr_int(n, "antialias", 0) != 0) fail("antialias has no GPU kernel");
    if (coord == "tf_crop_and_resize") fail("tf_crop_and_resize has no GPU kernel");
    if (attr_string(n, "keep_aspect_ratio_policy", "stretch") != "stretch") fail("keep_aspect_ratio_policy has no GPU kernel");
    // Per-axis scales: the scales input (or attribute) when given, else output / input.
    std::vector<double> scales(static_cast<size_t>(rank), 0.0);
    std::vector<int64_t> axes = attr_ints(n, "axes");
    if (axes.empty())
      for (int64_t a = 0; a < rank; ++a) axes.push_back(a);
    std::vector<double> given;
    if (op == "Upsample" && opset < 9) {
      if (const Attribute* a = n.attr("scales")) given.assign(a->floats.begin(), a->floats.end());
    } else {
      const size_t si = legacy ? 1 : 2;
      if (n.inputs.size() > si && !n.inputs[si].empty()) {
        const Tensor& t = constant(n.inputs[si], n, "scales");
        for (int64_t i = 0; i < t.numel(); ++i) given.push_back(host_value(t, i));
      }
    }
    for (size_t i = 0; i < axes.size(); ++i) {
      const size_t a = static_cast<size_t>(norm_axis(axes[i]));
      scales[a] = i < given.size() ? given[i] : 0.0;
    }
    for (int64_t a = 0; a < rank; ++a) {
      double& sc = scales[static_cast<size_t>(a)];
      if (sc <= 0) sc = static_cast<double>(od[static_cast<size_t>(a)]) / static_cast<double>(xd[static_cast<size_t>(a)]);
    }
    // The tap table: per axis, per output coordinate {i0, i1, w}. An NHWC input is resampled as it
    // is stored (axes N, H, W, C), into an NHWC output.
    const bool nhwc = val(n.inputs[0]).nhwc && rank == 4;
    const std::vector<int64_t> order = nhwc ? std::vector<int64_t>{0, 2, 3, 1} : [&] {
      std::vector<int64_t> o(static_cast<size_t>(rank));
      std::iota(o.begin(), o.end(), 0);
      return o;
    }();
    std::vector<std::vector<uint8_t>> axis_taps(static_cast<size_t>(rank));
    std::vector<uint8_t>* table = nullptr;
    auto put = [&](int32_t i0, int32_t i1, float w) {
      const size_t at = table->size();
      table->resize(at + 12);
      std::memcpy(table->data() + at, &i0, 4);
      std::memcpy(table->data() + at + 4, &i1, 4);
      std::memcpy(table->data() + at + 8, &w, 4);
    };
    for (int64_t a = 0; a < rank; ++a) {
      table = &axis_taps[static_cast<size_t>(a)];
      const int64_t in = xd[static_cast<size_t>(a)], out = od[static_cast<size_t>(a)];
      const double scale = scales[static_cast<size_t>(a)], in_d = static_cast<double>(in);
      const double out_w = scale * in_d;
      for (int64_t o = 0; o < out; ++o) {
        const double x = static_cast<double>(o);
        double src = 0;
        if (coord == "asymmetric") src = x / scale;
        else if (coord == "half_pixel") src = (x + 0.5) / scale - 0.5;
        else if (coord == "pytorch_half_pixel") src = out_w == 1 ? -0.5 : (x + 0.5) / scale - 0.5;
        else if (coord == "align_corners") src = out_w == 1 ? 0.0 : x * (in_d - 1) / (out_w - 1);
        else if (coord == "tf_half_pixel_for_nn") src = (x + 0.5) / scale;
        else if (coord == "half_pixel_symmetric") src = in_d / 2 * (1 - static_cast<double>(out) / out_w) + (x + 0.5) / scale - 0.5;
        else fail("coordinate_transformation_mode " + coord + " has no GPU kernel");
        const double f = std::floor(src);
        auto clamp = [&](double i) { return static_cast<int32_t>(std::clamp<double>(i, 0, static_cast<double>(in - 1))); };
        if (!linear) {
          double pick = f;
          const double frac = src - f;
          if (legacy) pick = scale < 1 ? std::ceil(src) : f;
          else if (frac == 0) pick = src;
          else if (nearest == "round_prefer_floor") pick = frac <= 0.5 ? f : f + 1;
          else if (nearest == "round_prefer_ceil") pick = frac < 0.5 ? f : f + 1;
          else if (nearest == "floor") pick = f;
          else if (nearest == "ceil") pick = f + 1;
          else fail("nearest_mode " + nearest);
          put(clamp(pick), clamp(pick), 0.f);
        } else {
          put(clamp(f), clamp(f + 1), static_cast<float>(src - f));
        }
      }
    }
    ResampleDesc d;
    d.rank = static_cast<int>(rank);
    check_rank(d.rank, n.name);
    std::vector<uint8_t> all;
    for (int64_t k = 0; k < rank; ++k) {
      const size_t a = static_cast<size_t>(order[static_cast<size_t>(k)]);
      d.in_dims[k] = xd[a], d.out_dims[k] = od[a];
      all.insert(all.end(), axis_taps[a].begin(), axis_taps[a].end());
    }
    const std::string x = nhwc ? n.inputs[0] : float_input(n.inputs[0]);
    if (!is_float(val(x).type)) fail("only float tensors have a GPU kernel for this op");
    const std::string taps = host_weight(ElemType::kU8, {static_cast<int64_t>(all.size())}, std::move(all));
    new_value(n.outputs[0], val(x).type, od, nhwc);
    add_step(dev_->resample(val(x).type, d), {x, taps}, {n.outputs[0]}, {n.name, op, "", -1});
    return;
  }
  fail("no GPU kernel");
}

std::string GpuProgramBuilder::derived_weight(const std::string& name, const std::string& variant, ElemType type,
                                              std::vector<int64_t> dims, const std::function<std::vector<uint8_t>()>& make) {
  const std::string vname = name + "#" + variant;
  if (vals_.count(vname)) return vname;
  const Tensor& t = g().initializers.at(name);
  std::ostringstream pool_key;
  pool_key << content_hash(t) << "|" << static_cast<int>(t.dtype());
  for (int64_t d : t.shape()) pool_key << "," << d;
  pool_key << "|derived|" << variant;
  return pooled_weight(vname, pool_key.str(), type, std::move(dims), make);
}

std::string GpuProgramBuilder::int8_value(const std::string& x, float scale) {
  if (auto it = int8_vals_.find(x); it != int8_vals_.end() && it->second == scale) return x;
  std::ostringstream key;
  key << x << "#int8/" << std::hexfloat << scale;
  if (vals_.count(key.str())) return key.str();
  // Over the dense NHWC buffer as one flat range: the same layout in and out, so the kernel reads
  // and writes contiguously (what quantize_ms timed).
  const std::string in = as(x, true, compute_);
  const std::vector<int64_t> dims = val(in).dims;
  new_value(key.str(), ElemType::kI8, dims, true);
  add_step(dev_->elementwise(int8_quantize_program(numel(dims), 1.f / scale)), {in}, {key.str()},
           {"to int8 " + x, "QuantizeINT8", "", -1});
  return key.str();
}

// INT8 convolutions. A candidate is a Conv or FusedConv with int8_scales that Kiln's INT8 kernel
// takes. Which candidates run in INT8 is chosen for the whole graph, not one node at a time, from
// times measured on the device: each candidate's INT8 kernel and its best FP16 kernel (cuDNN, or
// cuBLASLt for a 1x1 GEMM), and the quantizing pass over each value an INT8 convolution reads that
// is not already INT8. The cost of a choice S is the sum of its convolutions' times plus its
// quantizing passes; a value stays INT8 (no pass) when its producer and every reader (as input or
// residual) are in S. Starting from the nodes whose INT8 kernel is faster, single flips are applied
// while they lower the cost (adding a node must save at least 5% of its FP16 time: INT8 costs
// accuracy, and the margin clears timing noise), so a run of INT8 convolutions is kept or dropped
// with its boundary passes counted. The times are recorded like tactics ("gpu.int8 ..."), so an
// engine or a timing cache replays the same choice untimed.
void GpuProgramBuilder::plan_int8() {
  if (!int8_) return;
  if (opt_.int8_convs != "auto" && opt_.int8_convs != "always" && opt_.int8_convs != "none")
    throw Error(ErrorCode::kInvalidArgument, "int8_convs '" + opt_.int8_convs + "' is not auto, always or none");
  if (opt_.int8_convs == "none") return;
  auto candidate = [&](size_t i, ConvDesc* d) {
    const Node& n = g().nodes[i];
    const bool conv = (n.domain.empty() && n.op_type == "Conv") || (n.domain == "kiln" && n.op_type == "FusedConv");
    if (!conv || !int8_scales(n).ok() || !is_const(n.inputs[1])) return false;
    std::vector<EwStep> post;
    try {
      *d = conv_desc(n, &post);
    } catch (const Error&) {
      return false;  // lowering reports it
    }
    return post.empty() && d->act != Act::kSilu && !d->in_clip && !deferred_clip_.count(n.outputs[0]) && d->groups == 1 && d->c % 16 == 0 &&
           d->k % 8 == 0 && (!d->residual || dims_of(n.inputs[3]) == dims_of(n.outputs[0]));
  };
  std::vector<size_t> cands;
  std::map<size_t, ConvDesc> descs;
  for (size_t i = 0; i < g().nodes.size(); ++i) {
    ConvDesc d;
    if (!folded_.count(i) && candidate(i, &d)) cands.push_back(i), descs[i] = d;
  }
  // The INT8 values of a choice: outputs of chosen nodes read only by chosen nodes as input/residual.
  auto stored = [&](const std::set<size_t>& S) {
    std::map<std::string, float> out;
    for (size_t i : S) {
      const Node& n = g().nodes[i];
      if (read_only_by(n.outputs[0], S)) out[n.outputs[0]] = int8_scales(n).y;
    }
    return out;
  };
  std::set<size_t> S;
  if (opt_.int8_convs == "always") {
    S.insert(cands.begin(), cands.end());
  } else {
    std::map<size_t, std::pair<double, double>> t;  // node -> (fp16 ms, int8 ms; -1: no INT8 kernel)
    std::map<std::string, double> tq;                // value -> quantizing ms
    for (size_t i : cands) {
      t[i] = int8_times(descs[i], g().nodes[i].name);
      const std::string& x = g().nodes[i].inputs[0];
      if (!tq.count(x)) tq[x] = quantize_ms(numel(dims_of(x)));
    }
    auto cost = [&](const std::set<size_t>& s) {
      double c = 0;
      for (size_t i : cands) c += s.count(i) ? t[i].second : t[i].first;
      const auto kept = stored(s);
      std::set<std::string> passes;
      for (size_t i : s)
        if (!kept.count(g().nodes[i].inputs[0])) passes.insert(g().nodes[i].inputs[0]);
      for (const auto& v : passes) c += tq[v];
      return c;
    };
    for (size_t i : cands)
      if (t[i].second >= 0 && t[i].first >= 0 && t[i].second < 0.95 * t[i].first) S.insert(i);
    for (int pass = 0; pass < 32; ++pass) {
      bool changed = false;
      for (size_t i : cands) {
        if (t[i].second < 0 || t[i].first < 0) continue;
        std::set<size_t> with = S, without = S;
        with.insert(i), without.erase(i);
        const bool in = cost(with) < cost(without) - 0.05 * t[i].first;
        if (in != static_cast<bool>(S.count(i))) {
          S = in ? with : without;
          changed = true;
        }
      }
      if (!changed) break;
    }
    if (opt_.log) {
      std::set<size_t> none;
      std::ostringstream os;
      os << "int8: " << S.size() << " of " << cands.size() << " candidate convolutions in INT8; estimated "
         << cost(S) << " ms against " << cost(none) << " ms all FP16";
      opt_.log->push_back(os.str());
    }
  }
  int8_nodes_ = S;
  int8_vals_ = stored(S);
}

// FP16's best time for a convolution and the INT8 kernel's (-1 where it has none): timed, or the
// recorded times ("gpu.int8.fp16 <key>" and "gpu.int8.int8 <key>").
std::pair<double, double> GpuProgramBuilder::int8_times(const ConvDesc& d16, const std::string& node) {
  const std::string k16 = "gpu.int8.fp16 " + conv_key(d16), k8 = "gpu.int8.int8 " + conv_key(d16);
  auto known = [&](const std::string& key) -> std::optional<double> {
    const auto e = known_choice(key, {"fp16", "int8", "none"});
    if (!e) return std::nullopt;
    return e->tactic == "none" ? -1.0 : e->ms;
  };
  const auto r16 = known(k16), r8 = known(k8);
  if (r16 && r8) return {*r16, *r8};
  warm_up();
  ConvDesc d8 = d16;
  d8.type = ElemType::kI8;
  d8.y_type = d8.z_type = ElemType::kI8;
  double t16 = -1, t8 = -1;
  // FP16's best: cuDNN, or cuBLASLt for a 1x1 convolution that is a GEMM (as lower_conv chooses).
  const bool gemm_ok = is_gemm(d16);
  if (!gemm_ok || opt_.conv1x1_tactic != "gemm") t16 = dev_->conv(d16, opt_.workspace_limit)->timed_ms();
  if (gemm_ok && opt_.conv1x1_tactic != "cudnn") {
    const double tg = dev_->matmul(as_gemm(d16), opt_.workspace_limit)->timed_ms();
    if (tg >= 0 && (t16 < 0 || tg < t16)) t16 = tg;
  }
  try {
    t8 = dev_->conv(d8, opt_.workspace_limit)->timed_ms();
  } catch (const std::runtime_error& e) {
    if (opt_.log) opt_.log->push_back("node '" + node + "': no INT8 convolution here (" + e.what() + "): FP16");
  }
  if (opt_.log) {
    std::ostringstream os;
    os << "node '" << node << "': fp16 " << t16 << " ms, int8 " << t8 << " ms";
    opt_.log->push_back(os.str());
  }
  record(k16, "fp16", t16, true);
  record(k8, t8 < 0 ? "none" : "int8", t8, true);
  return {t16, t8};
}

// The quantizing pass over `elems` values of the program's float type (timed, or recorded as
// "gpu.int8.quantize n<elems>").
double GpuProgramBuilder::quantize_ms(int64_t elems) {
  const std::string key = "gpu.int8.quantize n" + std::to_string(elems) + " " + type_tag(compute_);
  if (const auto known = known_choice(key, {"quantize"})) return known->ms;
  warm_up();
  const double ms = time_on_device(*dev_->elementwise(int8_quantize_program(elems, 1.f)), {static_cast<size_t>(elems) * elem_bytes(compute_)},
                                   static_cast<size_t>(elems));
  record(key, "quantize", ms, true);
  return ms;
}

void GpuProgramBuilder::lower_conv_int8(const Node& n, ConvDesc d) {
  const Tensor& w = constant(n.inputs[1], n, "weights");
  const auto& wd = w.shape();
  const int64_t K = wd[0], C = wd[1], R = wd[2], S = wd[3];
  const auto od = dims_of(n.outputs[0]);
  const Int8Scales sc = int8_scales(n);
  const float sx = int8_vals_.count(n.inputs[0]) ? int8_vals_.at(n.inputs[0]) : sc.x;
  std::vector<std::string> ins = {int8_value(n.inputs[0], sx)};
  // Weights per output channel: scale amax / 127, values round(w / scale) in [-127, 127], KRSC.
  std::vector<double> sw(static_cast<size_t>(K), 1.0);
  for (int64_t k = 0; k < K; ++k) {
    double amax = 0;
    for (int64_t i = 0; i < C * R * S; ++i) amax = std::max(amax, std::fabs(host_value(w, k * C * R * S + i)));
    if (amax > 0 && std::isfinite(amax)) sw[static_cast<size_t>(k)] = amax / 127.0;
  }
  ins.push_back(derived_weight(n.inputs[1], "int8krsc", ElemType::kI8, {K, R, S, C}, [&] {
    std::vector<uint8_t> bytes(static_cast<size_t>(K * R * S * C));
    size_t i = 0;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s2 = 0; s2 < S; ++s2)
          for (int64_t c = 0; c < C; ++c) {
            const double q = std::nearbyint(host_value(w, ((k * C + c) * R + r) * S + s2) / sw[static_cast<size_t>(k)]);
            bytes[i++] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(q, -127.0, 127.0)));
          }
    return bytes;
  }));
  std::ostringstream variant;
  variant << "int8scale/" << std::hexfloat << sx;
  ins.push_back(derived_weight(n.inputs[1], variant.str(), ElemType::kF32, {K}, [&] {
    std::vector<uint8_t> bytes(static_cast<size_t>(K) * 4);
    for (int64_t k = 0; k < K; ++k) {
      const float v = static_cast<float>(sx * sw[static_cast<size_t>(k)]);
      std::memcpy(&bytes[static_cast<size_t>(k) * 4], &v, 4);
    }
    return bytes;
  }));
  if (d.bias) ins.push_back(weight_value(n.inputs[2], ElemType::kF32, {K}, {}, "bias32"));
  if (d.residual) {
    const std::string& z = n.inputs[3];
    if (auto it = int8_vals_.find(z); it != int8_vals_.end()) {
      ins.push_back(z);
      d.z_type = ElemType::kI8, d.z_scale = it->second;
    } else {
      ins.push_back(as(z, true, ElemType::kF16));
      d.z_type = ElemType::kF16;
    }
  }
  const std::string& out = n.outputs[0];
  if (auto it = int8_vals_.find(out); it != int8_vals_.end()) d.y_type = ElemType::kI8, d.y_scale = it->second;
  else d.y_type = ElemType::kF16;
  d.type = ElemType::kI8;
  new_value(out, d.y_type, od, true);
  add_step(int8_conv_kernel(d, n.name), ins, {out}, {n.name, n.op_type, "", -1});
}

// GEMMs on narrow inputs: FP8 E4M3 in FP8 programs (cuBLASLt), INT8 in INT8 programs (Kiln's
// INT8 kernel, per-column weight scales, FP16 out). Values read only by one such GEMM (as its X)
// are written narrow by their producer when that is an elementwise step (emit_elementwise appends
// the scaling): the GELU between a transformer's FFN GEMMs then writes one byte per element
// instead of two, and no separate quantizing pass runs. A LayerNorm writes a narrow copy beside
// its output.
//
// Each candidate runs narrow only where that is faster (TensorRT's rule for a precision flag: it
// allows, the timing decides): its narrow kernel, plus the quantizing pass when the producer cannot
// write X narrow, against its FP16 kernel. Small GEMMs (batch 1) are bound by latency, not by the
// tensor cores, and stay in FP16. The choice is timed once per shape and recorded like a tactic
// ("gpu.fp8 ..." or "gpu.int8.gemm ..."), so an engine or a timing cache replays it untimed.
void GpuProgramBuilder::plan_narrow_gemms() {
  if (!fp8_ && !int8_) return;
  if (int8_ && opt_.int8_gemms != "auto" && opt_.int8_gemms != "always" && opt_.int8_gemms != "none")
    throw Error(ErrorCode::kInvalidArgument, "int8_gemms '" + opt_.int8_gemms + "' is not auto, always or none");
  for (size_t i = 0; i < g().nodes.size(); ++i) {
    if (folded_.count(i) || packed_skip_.count(i)) continue;
    const auto pf = packed_first_.find(i);
    const Node& n = pf != packed_first_.end() ? pf->second : g().nodes[i];
    const float sx = narrow_scale(n);
    if (sx <= 0) continue;
    const std::string& x = n.inputs[0];
    const bool tb = n.op_type != "MatMul" && attr_int(n, "transB", 0) != 0;
    const auto& bd = g().initializers.at(n.inputs[1]).shape();
    const int64_t K = tb ? bd[1] : bd[0], N = tb ? bd[0] : bd[1];
    const int64_t M = numel(dims_of(x)) / K;
    auto r = readers_.find(x);
    const TensorType* t = g().type_of(x);
    const bool fusable = r != readers_.end() && r->second == std::vector<size_t>{i} &&
                         std::count(n.inputs.begin(), n.inputs.end(), x) == 1 && producer_.count(x) && t && t->shape &&
                         t->shape->size() != 4;  // 4-D values may be stored NHWC
    // A LayerNorm producer writes the E4M3 copy beside its output (one more write, no extra read).
    const bool from_layer_norm = producer_.count(x) && g().nodes[producer_.at(x)].op_type == "LayerNormalization" &&
                                 g().nodes[producer_.at(x)].outputs[0] == x;
    if (fp8_ && !fp8_pays(M, N, K, fusable || from_layer_norm, n.name)) continue;
    if (int8_) {
      if (K % 16 != 0 || N % 8 != 0) continue;  // the INT8 kernel's shape rules (conv_int8_unsupported)
      const bool bias = n.inputs.size() > 2 && !n.inputs[2].empty();
      const bool relu = n.op_type == "FusedMatMul" && attr_string(n, "activation") == "Relu";
      if (!int8_gemm_pays(int8_gemm_desc(M, N, K, bias, relu), fusable || from_layer_norm, n.name)) continue;
    }
    narrow_nodes_.insert(i);
    if (fusable) narrow_out_[x] = sx;
  }
}

bool GpuProgramBuilder::fp8_pays(int64_t m, int64_t n, int64_t k, bool prequantized, const std::string& node) {
  if (opt_.fp8_gemms == "always") return true;
  if (opt_.fp8_gemms != "auto")
    throw Error(ErrorCode::kInvalidArgument, "fp8_gemms '" + opt_.fp8_gemms + "' is not auto or always");
  std::ostringstream key;
  key << "gpu.fp8 m" << m << " n" << n << " k" << k << " prequantized" << prequantized << " ws<=" << opt_.workspace_limit;
  if (const auto known = known_choice(key.str(), {"fp8", "fp16"})) return known->tactic == "fp8";
  warm_up();
  MatmulDesc d16;
  d16.m = m, d16.n = n, d16.k = k;
  MatmulDesc d8 = d16;
  d8.fp8 = true;
  double t16 = -1, t8 = -1, tq = 0;
  try {
    t16 = dev_->matmul(d16, opt_.workspace_limit)->timed_ms();
    t8 = dev_->matmul(d8, opt_.workspace_limit)->timed_ms();
    if (!prequantized) {
      EwProgram p;
      p.rank = 1, p.dims[0] = m * k, p.num_inputs = 1, p.in_types[0] = compute_, p.in_strides[0][0] = 1;
      p.num_steps = 2;
      p.steps[1] = EwStep{EwOp::kAffine, 0, 0, false, 1.f, 0.f};
      p.out_type = ElemType::kF8E4M3;
      const auto q = dev_->elementwise(p);
      tq = time_on_device(*q, {static_cast<size_t>(m * k) * elem_bytes(compute_)}, static_cast<size_t>(m * k));
    }
  } catch (const std::runtime_error& e) {
    if (opt_.log) opt_.log->push_back("node '" + node + "': no FP8 GEMM here (" + e.what() + "): FP16");
    t8 = -1;
  }
  // FP8 costs accuracy: it must save at least 5% of the GEMM's FP16 time (also a margin over the
  // timing noise of microsecond kernels, which graph replay does not reproduce exactly).
  const bool fp8 = t8 >= 0 && t16 >= 0 && t8 + tq < 0.95 * t16;
  if (opt_.log) {
    std::ostringstream os;
    os << "node '" << node << "': " << (fp8 ? "FP8" : "FP16") << " (GEMM M=" << m << " N=" << n << " K=" << k << ": fp16 "
       << t16 << " ms, fp8 " << t8 << " ms + quantizing " << tq << " ms)";
    opt_.log->push_back(os.str());
  }
  record(key.str(), fp8 ? "fp8" : "fp16", fp8 ? t8 + tq : t16, true);
  return fp8;
}

bool GpuProgramBuilder::int8_gemm_pays(const ConvDesc& d8, bool prequantized, const std::string& node) {
  if (opt_.int8_gemms == "always") return true;
  std::ostringstream key;
  key << "gpu.int8.gemm m" << d8.n << " n" << d8.k << " k" << d8.c << " bias" << d8.bias << " relu"
      << (d8.act == Act::kRelu) << " prequantized" << prequantized << " ws<=" << opt_.workspace_limit;
  if (const auto known = known_choice(key.str(), {"int8", "fp16"})) return known->tactic == "int8";
  warm_up();
  MatmulDesc d16;
  d16.m = d8.n, d16.n = d8.k, d16.k = d8.c, d16.type = compute_, d16.bias = d8.bias;
  if (d8.act == Act::kRelu) d16.epilogue = MatmulDesc::Epilogue::kRelu;
  double t16 = -1, t8 = -1;
  const double tq = prequantized ? 0.0 : quantize_ms(d8.n * d8.c);
  try {
    t16 = dev_->matmul(d16, opt_.workspace_limit)->timed_ms();
    t8 = dev_->conv(d8, opt_.workspace_limit)->timed_ms();
  } catch (const std::runtime_error& e) {
    if (opt_.log) opt_.log->push_back("node '" + node + "': no INT8 GEMM here (" + e.what() + "): FP16");
    t8 = -1;
  }
  // As for FP8: INT8 must save at least 5% of the GEMM's FP16 time.
  const bool int8 = t8 >= 0 && t16 >= 0 && t8 + tq < 0.95 * t16;
  if (opt_.log) {
    std::ostringstream os;
    os << "node '" << node << "': " << (int8 ? "INT8" : "FP16") << " (GEMM M=" << d8.n << " N=" << d8.k << " K=" << d8.c
       << ": fp16 " << t16 << " ms, int8 " << t8 << " ms + quantizing " << tq << " ms)";
    opt_.log->push_back(os.str());
  }
  record(key.str(), int8 ? "int8" : "fp16", int8 ? t8 + tq : t16, true);
  return int8;
}

// The median time of `k` over a few launches on scratch buffers of the given sizes (zeroed).
double GpuProgramBuilder::time_on_device(const Kernel& k, const std::vector<size_t>& in_bytes, size_t out_bytes) {
  std::vector<void*> ins;
  void* out = nullptr;
  void* ws = nullptr;
  void* stream = dev_->create_stream();
  void* ev[2] = {dev_->create_event(), dev_->create_event()};
  std::vector<double> ms;
  auto release = [&] {
    for (void* p : ins) dev_->free(p);
    if (out) dev_->free(out);
    if (ws) dev_->free(ws);
    dev_->destroy_event(ev[0]);
    dev_->destroy_event(ev[1]);
    dev_->destroy_stream(stream);
  };
  try {
    for (size_t b : in_bytes) {
      ins.push_back(dev_->alloc(std::max<size_t>(b, 16)));
      dev_->memset_async(ins.back(), 0, std::max<size_t>(b, 16), stream);
    }
    out = dev_->alloc(std::max<size_t>(out_bytes, 16));
    if (k.workspace_bytes()) ws = dev_->alloc(k.workspace_bytes());
    k.launch(ins.data(), &out, ws, stream);  // warm-up
    for (int r = 0; r < 5; ++r) {
      dev_->record(ev[0], stream);
      k.launch(ins.data(), &out, ws, stream);
      dev_->record(ev[1], stream);
      dev_->synchronize(stream);
      ms.push_back(dev_->elapsed_ms(ev[0], ev[1]));
    }
  } catch (...) {
    release();
    throw;
  }
  release();
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void GpuProgramBuilder::emit_elementwise(const std::string& label, const std::string& op, std::vector<std::string> ins,
                                         const std::vector<EwStep>& steps_in, const std::string& out, ElemType out_type,
                                         const std::vector<int64_t>& od) {
  std::vector<EwStep> steps = steps_in;
  if (auto q = narrow_out_.find(out); q != narrow_out_.end() && out_type != narrow_type()) {
    steps.push_back(EwStep{EwOp::kAffine, 0, 0, false, 1.f / q->second, 0.f});
    if (int8_) {  // round half to even, saturate: what the quantizing pass writes
      steps.push_back(EwStep{EwOp::kRound});
      steps.push_back(EwStep{EwOp::kClip, 0, 0, false, -128.f, 127.f});
    }
    out_type = narrow_type();
  }
  if (ins.size() > static_cast<size_t>(kMaxEwInputs) || steps.size() > static_cast<size_t>(kMaxEwSteps))
    throw Error(ErrorCode::kUnsupported, label + ": more than 8 inputs or 24 steps in one elementwise kernel");
  const int rank = static_cast<int>(od.size());
  check_rank(rank, label);
  // NHWC output when a full-size 4-D input is NHWC (the others are read through their strides).
  bool nhwc = false;
  for (const auto& i : ins)
    if (val(i).nhwc && val(i).dims == od) nhwc = true;
  const std::vector<int> perm = nhwc ? std::vector<int>{0, 2, 3, 1} : [&] {
    std::vector<int> p(static_cast<size_t>(rank));
    std::iota(p.begin(), p.end(), 0);
    return p;
  }();
  EwProgram p;
  p.rank = rank;
  for (int k = 0; k < rank; ++k) p.dims[k] = od[static_cast<size_t>(perm[k])];
  p.num_inputs = static_cast<int>(ins.size());
  for (size_t i = 0; i < ins.size(); ++i) {
    const Val& v = val(ins[i]);
    p.in_types[i] = v.type;
    const auto ls = logical_strides(v);
    const int off = rank - static_cast<int>(v.dims.size());
    if (off < 0) throw Error(ErrorCode::kInternal, label + ": input of higher rank than the output");
    for (int k = 0; k < rank; ++k) {
      const int j = perm[k] - off;  // the input's dim for output dim perm[k]
      p.in_strides[i][k] = (j < 0 || v.dims[static_cast<size_t>(j)] == 1) ? 0 : ls[static_cast<size_t>(j)];
    }
  }
  p.num_steps = static_cast<int>(steps.size());
  for (size_t s = 0; s < steps.size(); ++s) p.steps[s] = steps[s];
  p.out_type = out_type;
  new_value(out, out_type, od, nhwc);
  add_step(dev_->elementwise(p), ins, {out}, {label, op, "", -1});
}

void GpuProgramBuilder::lower_elementwise(const Node& n) {
  const std::string& op = n.op_type;
  const auto od = dims_of(n.outputs[0]);
  const DType out_dt = g().type_of(n.outputs[0])->dtype;
  const ElemType out_t = internal_type(out_dt);
  std::vector<std::string> ins;
  std::vector<EwStep> steps;
  auto in = [&](const std::string& name) {
    for (size_t i = 0; i < ins.size(); ++i)
      if (ins[i] == name) return static_cast<int8_t>(i);
    ins.push_back(name);
    return static_cast<int8_t>(ins.size() - 1);
  };
  auto fail = [&](const std::string& why) {
    throw Error(ErrorCode::kUnsupported, "node '" + n.name + "' (" + op + "): " + why);
  };
  if (op == "ElementwiseChain") {
    steps.push_back({EwOp::kLoad, in(n.inputs[0])});
    std::vector<float> params;
    if (const Attribute* a = n.attr("params")) params = a->floats;
    size_t pi = 0;
    const Attribute* ops = n.attr("ops");
    if (!ops) fail("no ops");
    for (const std::string& s : ops->strings) {
      std::vector<std::string> parts;
      std::stringstream ss(s);
      for (std::string t; std::getline(ss, t, ':');) parts.push_back(t);
      EwStep st;
      if (parts.size() >= 2) {
        auto b = kBinary.find(parts[0]);
        if (b == kBinary.end()) fail("chain step " + s);
        st.op = b->second;
        st.a = in(n.inputs.at(static_cast<size_t>(std::stoi(parts[1]))));
        st.reversed = parts.size() > 2 && parts[2] == "r";
      } else if (s == "LeakyRelu") {
        st.op = EwOp::kLeakyRelu, st.p0 = params.at(pi++);
      } else if (s == "Clip") {
        st.op = EwOp::kClip, st.p0 = params.at(pi), st.p1 = params.at(pi + 1), pi += 2;
      } else if (auto u = kUnary.find(s); u != kUnary.end()) {
        st.op = u->second;
      } else {
        fail("chain step " + s);
      }
      steps.push_back(st);
    }
  } else if (op == "Cast") {
    steps.push_back({EwOp::kLoad, in(n.inputs[0])});
  } else if (op == "Where") {
    steps.push_back({EwOp::kLoad, in(n.inputs[0])});
    EwStep st{EwOp::kWhere};
    st.a = in(n.inputs[1]);
    st.b = in(n.inputs[2]);
    steps.push_back(st);
  } else if (auto u = kUnary.find(op); u != kUnary.end() && n.inputs.size() == 1) {
    steps.push_back({EwOp::kLoad, in(n.inputs[0])});
    steps.push_back({u->second});
  } else if (auto b = kBinary.find(op); b != kBinary.end() || op == "Mean") {
    if (is_arith(b == kBinary.end() ? EwOp::kAdd : b->second) && !is_float(out_t))
      fail("integer arithmetic has no GPU kernel (the interpreter computes in FP32)");
    steps.push_back({EwOp::kLoad, in(n.inputs[0])});
    for (size_t i = 1; i < n.inputs.size(); ++i) steps.push_back({b == kBinary.end() ? EwOp::kAdd : b->second, in(n.inputs[i])});
    if (op == "Mean") steps.push_back({EwOp::kAffine, 0, 0, false, 1.f / static_cast<float>(n.inputs.size()), 0});
  } else if (op == "Clip") {
    steps.push_back({EwOp::kLoad, in(n.inputs[0])});
    float lo = -INFINITY, hi = INFINITY;
    if (const Attribute* a = n.attr("min")) lo = a->f;
    if (const Attribute* a = n.attr("max")) hi = a->f;
    if (n.inputs.size() > 1 && !n.inputs[1].empty()) lo = static_cast<float>(host_value(constant(n.inputs[1], n, "min"), 0));
    if (n.inputs.size() > 2 && !n.inputs[2].empty()) hi = static_cast<float>(host_value(constant(n.inputs[2], n, "max"), 0));
    steps.push_back({EwOp::kClip, 0, 0, false, lo, hi});
  } else if (op == "LeakyRelu" || op == "Elu" || op == "HardSigmoid") {
    steps.push_back({EwOp::kLoad, in(n.inputs[0])});
    EwStep st;
    st.op = op == "LeakyRelu" ? EwOp::kLeakyRelu : op == "Elu" ? EwOp::kElu : EwOp::kHardSigmoid;
    st.p0 = attr_float(n, "alpha", op == "LeakyRelu" ? 0.01f : op == "Elu" ? 1.f : 0.2f);
    st.p1 = attr_float(n, "beta", 0.5f);
    steps.push_back(st);
  } else if (op == "Gelu") {
    steps.push_back({EwOp::kLoad, in(n.inputs[0])});
    steps.push_back({attr_string(n, "approximate", "none") == "tanh" ? EwOp::kGeluTanh : EwOp::kGelu});
  } else {
    fail("no GPU kernel");
  }
  emit_elementwise(n.name, op, ins, steps, n.outputs[0], out_t, od);
}

void GpuProgramBuilder::lower_pool(const Node& n) {
  const auto xd = dims_of(n.inputs[0]);
  const auto od = dims_of(n.outputs[0]);
  if (xd.size() != 4) throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': only 2-D pooling runs on the GPU");
  const std::string x = as(n.inputs[0], true, is_float(val(n.inputs[0]).type) ? compute_ : val(n.inputs[0]).type);
  const ElemType t = val(x).type;
  if (n.op_type == "GlobalAveragePool") {
    // [N, C, 1, 1]: the same bytes in both layouts.
    new_value(n.outputs[0], t, od, false);
    add_step(dev_->mean_middle(t, xd[0], xd[2] * xd[3], xd[1]), {x}, {n.outputs[0]}, {n.name, n.op_type, "", -1});
    return;
  }
  Pool2d p;
  p.max = n.op_type == "MaxPool" || n.op_type == "GlobalMaxPool";
  p.n = xd[0], p.c = xd[1], p.h = xd[2], p.w = xd[3], p.oh = od[2], p.ow = od[3];
  if (n.op_type == "GlobalMaxPool") {
    p.kh = static_cast<int>(xd[2]), p.kw = static_cast<int>(xd[3]);
  } else {
    if (n.outputs.size() > 1 && !n.outputs[1].empty())
      throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': MaxPool's Indices output has no GPU kernel");
    const auto k = attr_ints(n, "kernel_shape");
    auto s = attr_ints(n, "strides"), d = attr_ints(n, "dilations"), pads = attr_ints(n, "pads");
    if (s.empty()) s = {1, 1};
    if (d.empty()) d = {1, 1};
    if (pads.empty()) pads = {0, 0, 0, 0};
    const std::string auto_pad = attr_string(n, "auto_pad", "NOTSET");
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      for (int i = 0; i < 2; ++i) {
        const int64_t total = std::max<int64_t>(0, (od[2 + i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - xd[2 + i]);
        pads[i] = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      }
    }
    p.kh = static_cast<int>(k[0]), p.kw = static_cast<int>(k[1]);
    p.sh = static_cast<int>(s[0]), p.sw = static_cast<int>(s[1]);
    p.dh = static_cast<int>(d[0]), p.dw = static_cast<int>(d[1]);
    p.pad_t = static_cast<int>(pads[0]), p.pad_l = static_cast<int>(pads[1]);
    p.count_include_pad = attr_int(n, "count_include_pad", 0) != 0;
  }
  const bool nhwc_out = !(od[2] == 1 && od[3] == 1);
  new_value(n.outputs[0], t, od, nhwc_out);
  add_step(dev_->pool(t, p), {x}, {n.outputs[0]}, {n.name, n.op_type, "", -1});
}

// An attention's Q, K and V projections (MatMul or FusedMatMul of one input by constant [K, N]
// FP32 weights, with constant biases or none, no activation, each read only by that attention) become
// one GEMM by the concatenated weights: one launch that fills the GPU better than three small ones
// (BERT at batch 1: [128, 768] x [768, 768] each). The attention reads Q, K and V in place.
void GpuProgramBuilder::plan_packed_qkv() {
  for (size_t ai = 0; ai < g().nodes.size(); ++ai) {
    const Node& at = g().nodes[ai];
    if (folded_.count(ai) || at.domain != "kiln" || at.op_type != "Attention" || at.inputs.size() < 3) continue;
    const std::string q = at.inputs[0], k = at.inputs[1], v = at.inputs[2];
    if (q.empty() || k.empty() || v.empty() || q == k || q == v || k == v) continue;
    if (!producer_.count(q) || !producer_.count(k) || !producer_.count(v)) continue;
    const size_t idx[3] = {producer_.at(q), producer_.at(k), producer_.at(v)};
    if (plan_sliced_qkv(ai, idx)) continue;
    const Node& p0 = g().nodes[idx[0]];
    const bool biased = p0.inputs.size() > 2 && !p0.inputs[2].empty();
    int64_t K = -1;
    bool ok = true;
    int64_t widths[3] = {};
    for (int j = 0; j < 3 && ok; ++j) {
      const Node& p = g().nodes[idx[j]];
      const std::string& out = at.inputs[static_cast<size_t>(j)];
      const bool fused = p.domain == "kiln" && p.op_type == "FusedMatMul";
      const bool plain = p.domain.empty() && p.op_type == "MatMul";
      auto readers = readers_.find(out);
      ok = (fused || plain) && p.outputs.size() == 1 && p.inputs.size() >= 2 && p.inputs[0] == p0.inputs[0] &&
           is_const(p.inputs[1]) && attr_int(p, "transA", 0) == 0 && attr_int(p, "transB", 0) == 0 &&
           attr_float(p, "alpha", 1.f) == 1.f && attr_float(p, "beta", 1.f) == 1.f &&
           attr_string(p, "activation").empty() && ((p.inputs.size() > 2 && !p.inputs[2].empty()) == biased) &&
           readers != readers_.end() && readers->second == std::vector<size_t>{ai};
      if (!ok) break;
      const Tensor& w = g().initializers.at(p.inputs[1]);
      ok = w.dtype() == DType::kF32 && w.rank() == 2;
      if (!ok) break;
      const int64_t kk = w.dim(0), nn = w.dim(1);
      ok = (K < 0 || kk == K);
      K = kk, widths[j] = nn;
      if (ok && biased) {
        ok = is_const(p.inputs[2]);
        if (ok) {
          const Tensor& b = g().initializers.at(p.inputs[2]);
          ok = b.dtype() == DType::kF32 && b.numel() == nn && (b.rank() == 1 || (b.rank() == 2 && b.dim(0) == 1));
        }
      }
    }
    const TensorType* qt = g().type_of(q);
    if (!ok || !qt || !qt->shape || qt->shape->empty()) continue;
    const int64_t W = widths[0] + widths[1] + widths[2];
    // The concatenated weights [K, W] and biases, as new constants.
    const std::string base = q + "#qkv";
    Tensor wcat(DType::kF32, {K, W});
    Tensor bcat(DType::kF32, {W});
    int64_t at_col = 0;
    for (int j = 0; j < 3; ++j) {
      const Node& p = g().nodes[idx[j]];
      const float* w = g().initializers.at(p.inputs[1]).data<float>();
      const int64_t n = widths[j];
      float* dst = wcat.mutable_data<float>();
      for (int64_t r = 0; r < K; ++r) std::copy_n(w + r * n, n, dst + r * W + at_col);
      if (biased) std::copy_n(g().initializers.at(p.inputs[2]).data<float>(), n, bcat.mutable_data<float>() + at_col);
      at_col += n;
    }
    m_.graph.initializers[base + "#w"] = std::move(wcat);
    if (biased) m_.graph.initializers[base + "#b"] = std::move(bcat);
    TensorType packed_type = *qt;
    packed_type.shape->back() = Dim(W);
    m_.graph.types[base] = packed_type;
    Node packed{p0.name + "+qkv", "FusedMatMul", "kiln", {p0.inputs[0], base + "#w", biased ? base + "#b" : ""}, {base}, {}};
    // One input, so one narrow input scale (calibration gives the three projections the same).
    if (const float sx = narrow_scale(p0); sx > 0 && fp8_) packed.attrs[kFp8InputScale] = Attribute::of_float(sx);
    if (const Int8Scales sc = int8_scales(p0); sc.ok()) packed.attrs[kInt8Scales] = p0.attrs.at(kInt8Scales);
    const size_t first = *std::min_element(idx, idx + 3);
    packed_first_[first] = std::move(packed);
    for (size_t i : idx)
      if (i != first) packed_skip_.insert(i);
    packed_[q] = {base, 0, W};
    packed_[k] = {base, widths[0], W};
    packed_[v] = {base, widths[0] + widths[1], W};
  }
}

// Q, K and V as Slices of one value's last axis (a packed projection split by the graph, e.g.
// torch's nn.MultiheadAttention after split-packed-projections): the attention reads the column
// ranges in place and the Slices are not lowered. Each Slice must be read only by this attention,
// with constant bounds within the row and step 1.
bool GpuProgramBuilder::plan_sliced_qkv(size_t ai, const size_t (&idx)[3]) {
  const Node& at = g().nodes[ai];
  std::string base;
  int64_t width = 0, offsets[3] = {};
  for (int j = 0; j < 3; ++j) {
    const Node& s = g().nodes[idx[j]];
    if (!s.domain.empty() || s.op_type != "Slice" || s.inputs.size() < 4 || s.outputs.size() != 1) return false;
    if (j > 0 && s.inputs[0] != base) return false;
    base = s.inputs[0];
    const TensorType* xt = g().type_of(base);
    if (!xt || !xt->shape || xt->shape->size() != 3 || !shape_is_static(*xt->shape)) return false;
    const int64_t rank = 3, w = xt->shape->back().value;
    width = w;
    std::vector<int64_t> b[4];
    for (size_t i = 1; i < s.inputs.size() && i < 5; ++i) {
      if (s.inputs[i].empty()) continue;
      if (!is_const(s.inputs[i])) return false;
      const Tensor& t = g().initializers.at(s.inputs[i]);
      if (!dtype_is_integer(t.dtype()) || t.rank() != 1) return false;
      b[i - 1] = t.to_int64_vector();
    }
    if (b[0].size() != 1 || b[1].size() != 1 || b[2].size() != 1 || (!b[3].empty() && (b[3].size() != 1 || b[3][0] != 1)))
      return false;
    if ((b[2][0] < 0 ? b[2][0] + rank : b[2][0]) != rank - 1) return false;
    int64_t lo = b[0][0] < 0 ? b[0][0] + w : b[0][0], hi = b[1][0] < 0 ? b[1][0] + w : std::min(b[1][0], w);
    if (lo < 0 || lo >= hi) return false;
    const auto readers = readers_.find(s.outputs[0]);
    if (readers == readers_.end() || readers->second != std::vector<size_t>{ai}) return false;
    offsets[j] = lo;
  }
  for (int j = 0; j < 3; ++j) {
    packed_[at.inputs[static_cast<size_t>(j)]] = {base, offsets[j], width};
    packed_skip_.insert(idx[j]);
  }
  return true;
}

// MobileNet's inverted residuals: a convolution with ReLU6 feeds a depthwise convolution and
// nothing else. cuDNN's fused epilogue and cuBLASLt's (1x1 as a GEMM) take ReLU but not a clamp, so
// the expansion would need a separate pass over its output, the largest tensor of the block.
// Instead it runs with a ReLU and the depthwise convolution (Kiln's kernel) clamps each value at
// the top as it reads it: relu then min(., hi) is the same Clip [0, hi]. Skipped when the
// depthwise convolution is forced to cuDNN.
void GpuProgramBuilder::plan_deferred_clips() {
  if (opt_.depthwise_tactic == "cudnn") return;
  for (size_t ci = 0; ci < g().nodes.size(); ++ci) {
    const Node& c = g().nodes[ci];
    if (folded_.count(ci) || c.domain != "kiln" || c.op_type != "FusedConv" || c.inputs.size() < 2) continue;
    const std::string& x = c.inputs[0];
    const auto p = producer_.find(x);
    const auto readers = readers_.find(x);
    if (p == producer_.end() || readers == readers_.end() || readers->second != std::vector<size_t>{ci}) continue;
    const Node& pn = g().nodes[p->second];
    if (pn.domain != "kiln" || pn.op_type != "FusedConv" || pn.outputs.size() != 1 || attr_string(pn, "activation") != "Clip")
      continue;
    std::vector<float> ap;
    if (const Attribute* a = pn.attr("activation_params")) ap = a->floats;
    if (ap.size() != 2 || ap[0] != 0.f || !std::isfinite(ap[1])) continue;
    // The reader: depthwise (groups == in channels == out channels), x read once, as its input.
    const TensorType* xt = g().type_of(x);
    if (!is_const(c.inputs[1]) || !xt || !xt->shape || xt->shape->size() != 4 || !(*xt->shape)[1].known()) continue;
    const int64_t channels = (*xt->shape)[1].value;
    const Tensor& w = g().initializers.at(c.inputs[1]);
    if (attr_int(c, "group", 1) != channels || w.rank() != 4 || w.dim(0) != channels || w.dim(1) != 1) continue;
    if (std::count(c.inputs.begin(), c.inputs.end(), x) != 1) continue;
    deferred_clip_[x] = ap[1];
  }
}

void GpuProgramBuilder::lower_attention(const Node& n) {
  const auto qd = dims_of(n.inputs[0]), kd = dims_of(n.inputs[1]), vd = dims_of(n.inputs[2]);
  const int64_t H = attr_int(n, "num_heads", 0);
  if (qd.size() != 3 || kd.size() != 3 || vd.size() != 3 || H <= 0 || qd[2] % H || vd[2] % H)
    throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': attention needs [B, S, H*D] inputs");
  const int64_t B = qd[0], Sq = qd[1], Sk = kd[1], Dk = qd[2] / H, Dv = vd[2] / H;
  if (Dk != Dv) throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': attention with Dk != Dv has no GPU kernel");
  AttentionDesc d;
  d.batch = B, d.heads = H, d.sq = Sq, d.sk = Sk, d.head_dim = Dk, d.type = compute_;
  const float scale = attr_float(n, "scale", 0.f);
  d.scale = scale == 0.f ? 1.f / std::sqrt(static_cast<float>(Dk)) : scale;
  const int64_t od = vd[2];
  auto bshd = [&](int64_t s_len, int64_t width, int64_t* st) { st[0] = s_len * width, st[1] = Dk, st[2] = width; };
  std::vector<std::string> ins;
  auto pq = packed_.find(n.inputs[0]), pk = packed_.find(n.inputs[1]), pv = packed_.find(n.inputs[2]);
  if (pq != packed_.end() && pk != packed_.end() && pv != packed_.end()) {
    // Q, K and V are column ranges of one packed GEMM output: read in place, through its row width.
    const std::string base = as(pq->second.base, false, compute_);
    bshd(Sq, pq->second.width, d.q);
    bshd(Sk, pk->second.width, d.k);
    bshd(Sk, pv->second.width, d.v);
    d.q_offset = pq->second.offset, d.k_offset = pk->second.offset, d.v_offset = pv->second.offset;
    ins = {base, base, base};
  } else {
    bshd(Sq, qd[2], d.q);
    bshd(Sk, kd[2], d.k);
    bshd(Sk, vd[2], d.v);
    ins = {as(n.inputs[0], false, compute_), as(n.inputs[1], false, compute_), as(n.inputs[2], false, compute_)};
  }
  bshd(Sq, od, d.o);
  if (n.inputs.size() > 3 && !n.inputs[3].empty()) {
    const std::string m = as(n.inputs[3], false, ElemType::kF32);
    const auto md = val(m).dims;
    if (md.empty() || md.size() > 4 || md.back() != Sk)
      throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': the attention mask's last dim must be the keys");
    std::vector<int64_t> m4(4 - md.size(), 1);
    m4.insert(m4.end(), md.begin(), md.end());
    const auto st = dense_strides(m4);
    d.mask[0] = m4[0] == 1 ? 0 : st[0];
    d.mask[1] = m4[1] == 1 ? 0 : st[1];
    d.mask[2] = m4[2] == 1 ? 0 : st[2];
    d.has_mask = true;
    ins.push_back(m);
  }
  new_value(n.outputs[0], compute_, {B, Sq, od}, false);
  add_step(dev_->attention(d), ins, {n.outputs[0]}, {n.name, "Attention", "", -1});
}

void GpuProgramBuilder::lower_data(const Node& n) {
  const std::string& op = n.op_type;
  auto strided = [&](const std::string& in, const std::string& out, const std::vector<int64_t>& dims,
                     const std::vector<int64_t>& xs, const std::vector<int64_t>& ys, int64_t x_off, int64_t y_off,
                     const std::string& label) {
    StridedCopy c;
    c.rank = static_cast<int>(dims.size());
    check_rank(c.rank, label);
    for (int d = 0; d < c.rank; ++d) c.dims[d] = dims[d], c.x_strides[d] = xs[d], c.y_strides[d] = ys[d];
    const ElemType t = val(in).type;
    // Offsets are applied through a view kernel: the copy kernel reads x + x_off, writes y + y_off.
    struct Offset final : Kernel {
      std::unique_ptr<Kernel> k;
      int64_t xo, yo;
      size_t es;
      void launch(const void* const* i, void* const* o, void* ws, void* s) const override {
        const void* x = static_cast<const char*>(i[0]) + xo * static_cast<int64_t>(es);
        void* y = static_cast<char*>(o[0]) + yo * static_cast<int64_t>(es);
        k->launch(&x, &y, ws, s);
      }
      std::string describe() const override { return k->describe(); }
    };
    auto k = std::make_unique<Offset>();
    k->k = dev_->copy(t, t, c);
    k->xo = x_off, k->yo = y_off, k->es = elem_bytes(t);
    add_step(std::move(k), {in}, {out}, {label, op, "", -1});
  };
  // A channel Concat or Split of NHWC values stays NHWC: each part is a strided copy into (or out
  // of) a channel slice, with no layout change on either side (DenseNet's and C2f blocks' concats).
  if ((op == "Concat" || op == "Split") && dims_of(n.inputs[0]).size() == 4) {
    int64_t axis = attr_int(n, "axis", op == "Split" ? 0 : 1);
    if (axis < 0) axis += 4;
    bool nhwc = false;
    if (op == "Concat")
      for (const auto& in : n.inputs) nhwc = nhwc || (!in.empty() && val(in).nhwc);
    else
      nhwc = val(n.inputs[0]).nhwc;
    if (axis == 1 && nhwc) {
      auto nhwc_strides = [](const std::vector<int64_t>& d) {  // of NCHW dims d, stored NHWC
        return std::vector<int64_t>{d[2] * d[3] * d[1], d[3] * d[1], d[1], 1};
      };
      int64_t pos = 0;
      if (op == "Concat") {
        const auto od = dims_of(n.outputs[0]);
        const ElemType t = compute_type_of(n.inputs);
        new_value(n.outputs[0], t, od, true);
        // A Concat whose inputs begin with every input of an earlier one (DenseNet: each layer
        // concatenates the block's features so far) copies that one's output as its first part:
        // per block, a copy per layer and input instead of one per layer and earlier feature.
        std::vector<std::string> parts = n.inputs;
        parts.erase(std::remove(parts.begin(), parts.end(), std::string()), parts.end());
        std::vector<std::string> todo = parts;
        for (size_t k = parts.size() - 1; parts.size() >= 3 && k >= 2; --k) {
          auto it = nhwc_concats_.find(std::vector<std::string>(parts.begin(), parts.begin() + static_cast<std::ptrdiff_t>(k)));
          if (it == nhwc_concats_.end() || val(it->second).type != t) continue;
          todo.assign(parts.begin() + static_cast<std::ptrdiff_t>(k), parts.end());
          todo.insert(todo.begin(), it->second);
          break;
        }
        nhwc_concats_[parts] = n.outputs[0];
        for (const auto& in : todo) {
          const std::string p = as(in, true, t);
          const auto pd = val(p).dims;
          strided(p, n.outputs[0], {pd[0], pd[2], pd[3], pd[1]}, nhwc_strides(pd), nhwc_strides(od), 0, pos, n.name);
          pos += pd[1];
        }
      } else {
        const std::string x = n.inputs[0];
        const auto xd = val(x).dims;
        for (const auto& out : n.outputs) {
          if (out.empty()) continue;
          const auto od = dims_of(out);
          new_value(out, val(x).type, od, true);
          strided(x, out, {od[0], od[2], od[3], od[1]}, nhwc_strides(xd), nhwc_strides(od), pos, 0, n.name);
          pos += od[1];
        }
      }
      return;
    }
  }
  if (op == "Gather") {
    const auto dd = dims_of(n.inputs[0]);
    const auto id = is_const(n.inputs[1]) ? g().initializers.at(n.inputs[1]).shape() : dims_of(n.inputs[1]);
    int64_t axis = attr_int(n, "axis", 0);
    if (axis < 0) axis += static_cast<int64_t>(dd.size());
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < axis; ++i) outer *= dd[static_cast<size_t>(i)];
    for (size_t i = static_cast<size_t>(axis) + 1; i < dd.size(); ++i) inner *= dd[i];
    const std::string data = plain(n.inputs[0]);
    const std::string idx = n.inputs[1];
    const ElemType it = val(idx).type;
    if (it != ElemType::kI64 && it != ElemType::kI32)
      throw Error(ErrorCode::kUnsupported, "node '" + n.name + "': Gather indices must be int64 or int32");
    new_value(n.outputs[0], val(data).type, dims_of(n.outputs[0]), false);
    add_step(dev_->gather(it, elem_bytes(val(data).type), outer, dd[static_cast<size_t>(axis)], inner, numel(id)),
             {data, idx}, {n.outputs[0]}, {n.name, op, "", -1});
    return;
  }
  // A Slice of an NHWC value reads it in place and writes NHWC (C2f blocks' channel chunks).
  const bool slice_nhwc = op == "Slice" && val(n.inputs[0]).nhwc && val(n.inputs[0]).dims.size() == 4;
  const std::string x = slice_nhwc ? n.inputs[0] : plain(n.inputs[0]);
  const Val xv = val(x);
  const auto xs = slice_nhwc ? logical_strides(xv) : dense_strides(xv.dims);
  const int rank = static_cast<int>(xv.dims.size());
  auto norm_axis = [&](int64_t a) { return a < 0 ? a + rank : a; };
  if (op == "Transpose") {
    auto perm = attr_ints(n, "perm");
    if (perm.empty())
      for (int i = rank - 1; i >= 0; --i) perm.push_back(i);
    const auto od = dims_of(n.outputs[0]);
    // Moving only dims of size 1 keeps every element where it is ([S,1,D] -> [1,S,D] at batch 1):
    // the output is the input's bytes under new dims, as for a Reshape, with no kernel.
    std::vector<int64_t> kept;
    for (int i = 0; i < rank; ++i)
      if (xv.dims[static_cast<size_t>(perm[i])] != 1) kept.push_back(perm[i]);
    if (std::is_sorted(kept.begin(), kept.end())) {
      Val v = xv;
      v.dims = od;
      vals_[n.outputs[0]] = v;
      return;
    }
    std::vector<int64_t> ps(static_cast<size_t>(rank));
    for (int i = 0; i < rank; ++i) ps[i] = xs[static_cast<size_t>(perm[i])];
    new_value(n.outputs[0], xv.type, od, false);
    strided(x, n.outputs[0], od, ps, dense_strides(od), 0, 0, n.name);
  } else if (op == "Expand") {
    const auto od = dims_of(n.outputs[0]);
    std::vector<int64_t> bs(od.size(), 0);
    const size_t off = od.size() - xv.dims.size();
    for (size_t i = 0; i < xv.dims.size(); ++i) bs[off + i] = xv.dims[i] == 1 ? 0 : xs[i];
    new_value(n.outputs[0], xv.type, od, false);
    strided(x, n.outputs[0], od, bs, dense_strides(od), 0, 0, n.name);
  } else if (op == "Slice") {
    const auto od = dims_of(n.outputs[0]);
    std::vector<int64_t> starts, ends, axes, steps;
    auto ints_of = [&](size_t i) {
      std::vector<int64_t> v;
      if (n.inputs.size() > i && !n.inputs[i].empty()) {
        const Tensor& t = constant(n.inputs[i], n, "slice bounds");
        for (int64_t k = 0; k < t.numel(); ++k) v.push_back(static_cast<int64_t>(host_value(t, k)));
      }
      return v;
    };
    if (n.attr("starts")) {
      starts = attr_ints(n, "starts"), ends = attr_ints(n, "ends"), axes = attr_ints(n, "axes");
    } else {
      starts = ints_of(1), ends = ints_of(2), axes = ints_of(3), steps = ints_of(4);
    }
    if (axes.empty())
      for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
    if (steps.empty()) steps.assign(starts.size(), 1);
    std::vector<int64_t> ss = xs;
    int64_t offset = 0;
    for (size_t i = 0; i < starts.size(); ++i) {
      const int64_t a = norm_axis(axes[i]), dim = xv.dims[static_cast<size_t>(a)], st = steps[i];
      int64_t s = starts[i];
      if (s < 0) s += dim;
      s = st > 0 ? std::clamp<int64_t>(s, 0, dim) : std::clamp<int64_t>(s, 0, dim - 1);
      offset += s * xs[static_cast<size_t>(a)];
      ss[static_cast<size_t>(a)] = xs[static_cast<size_t>(a)] * st;
    }
    new_value(n.outputs[0], xv.type, od, slice_nhwc);
    if (slice_nhwc) {
      // Walked in storage order (N, H, W, C) so the innermost copies are contiguous.
      const std::vector<int64_t> ys = logical_strides(val(n.outputs[0]));
      const int perm[4] = {0, 2, 3, 1};
      std::vector<int64_t> pd(4), px(4), py(4);
      for (int k = 0; k < 4; ++k) pd[k] = od[perm[k]], px[k] = ss[perm[k]], py[k] = ys[perm[k]];
      strided(x, n.outputs[0], pd, px, py, offset, 0, n.name);
    } else {
      strided(x, n.outputs[0], od, ss, dense_strides(od), offset, 0, n.name);
    }
  } else if (op == "Concat") {
    const auto od = dims_of(n.outputs[0]);
    const int64_t axis = norm_axis(attr_int(n, "axis", 0));
    new_value(n.outputs[0], compute_type_of(n.inputs), od, false);
    const auto ys = dense_strides(od);
    int64_t pos = 0;
    for (const auto& in : n.inputs) {
      if (in.empty()) continue;
      const std::string p = as(in, false, val(n.outputs[0]).type);
      const auto pd = val(p).dims;
      strided(p, n.outputs[0], pd, dense_strides(pd), ys, 0, pos * ys[static_cast<size_t>(axis)], n.name);
      pos += pd[static_cast<size_t>(axis)];
    }
  } else if (op == "Split") {
    const int64_t axis = norm_axis(attr_int(n, "axis", 0));
    int64_t pos = 0;
    for (const auto& out : n.outputs) {
      if (out.empty()) continue;
      const auto od = dims_of(out);
      new_value(out, xv.type, od, false);
      strided(x, out, od, xs, dense_strides(od), pos * xs[static_cast<size_t>(axis)], 0, n.name);
      pos += od[static_cast<size_t>(axis)];
    }
  }
}

std::shared_ptr<const GpuProgram> GpuProgramBuilder::build() {
  {
    SpecializedModel sm = specialize_model(src_, shapes_);
    m_ = std::move(sm.model);
    folded_ = std::move(sm.folded);
  }
  std::shared_ptr<GpuProgram> p(new GpuProgram());
  p->device_ = dev_;
  p->precision_ = opt_.precision;
  // Every node the GPU cannot run, named at once.
  std::vector<std::string> missing;
  for (size_t i = 0; i < g().nodes.size(); ++i) {
    if (folded_.count(i)) continue;
    const std::string why = unsupported_reason(g().nodes[i]);
    if (!why.empty()) missing.push_back("'" + g().nodes[i].name + "': " + why);
  }
  if (!missing.empty()) {
    std::string msg = std::to_string(missing.size()) + " node(s) cannot run on the GPU backend:";
    for (size_t i = 0; i < missing.size() && i < 12; ++i) msg += "\n  " + missing[i];
    if (missing.size() > 12) msg += "\n  ... and " + std::to_string(missing.size() - 12) + " more";
    throw Error(ErrorCode::kUnsupported, msg);
  }
  dev_->bind();
  for (size_t i = 0; i < g().nodes.size(); ++i)
    if (!folded_.count(i))
      for (const auto& in : g().nodes[i].inputs)
        if (!in.empty()) readers_[in].push_back(i);
  for (const auto& o : g().outputs) readers_[o].push_back(SIZE_MAX);
  for (size_t i = 0; i < g().nodes.size(); ++i)
    if (!folded_.count(i))
      for (const auto& o : g().nodes[i].outputs)
        if (!o.empty()) producer_[o] = i;
  // Inputs are kept in their own type: the first op that needs one converts it (with a layout
  // change in the same copy, e.g. NCHW FP32 -> NHWC FP16 for a first convolution).
  for (size_t i = 0; i < g().inputs.size(); ++i)
    vals_[g().inputs[i]] = edge_value(g().inputs[i], GpuProgram::Slot::kInput, i, p->inputs_);
  plan_packed_qkv();
  plan_deferred_clips();
  plan_narrow_gemms();
  plan_int8();
  for (size_t i = 0; i < g().nodes.size(); ++i) {
    if (folded_.count(i) || packed_skip_.count(i)) continue;
    current_ = i;
    if (auto it = packed_first_.find(i); it != packed_first_.end()) {
      lower_matmul(it->second);
      continue;
    }
    add_node(g().nodes[i]);
  }
  // Outputs: converted back to their declared dtype and plain layout, into the caller's buffers.
  for (size_t i = 0; i < g().outputs.size(); ++i) {
    const std::string& name = g().outputs[i];
    vals_[name + "#out"] = edge_value(name, GpuProgram::Slot::kOutput, i, p->outputs_);
    emit_copy(name, name + "#out", "output " + name);
  }
  // Buffers, then weights.
  const cpu::MemoryPlan plan = cpu::plan_memory(buffers_, 256);
  p->arena_bytes_ = plan.arena_bytes;
  p->activation_total_ = plan.total_bytes;
  p->workspace_bytes_ = workspace_;
  auto slot_of = [&](const std::string& name) {
    if (name.empty()) return GpuProgram::Slot{};
    GpuProgram::Slot s = val(name).slot;
    if (s.kind == GpuProgram::Slot::kArena) s.index = plan.offsets[s.index];
    return s;
  };
  for (auto& st : steps_) {
    GpuProgram::Step step;
    step.kernel = std::move(st.kernel);
    for (const auto& i : st.inputs) step.inputs.push_back(slot_of(i));
    for (const auto& o : st.outputs) step.outputs.push_back(slot_of(o));
    p->steps_.push_back(std::move(step));
    p->info_.push_back(std::move(st.info));
  }
  p->pool_ = pool_;
  p->tactics_ = std::move(tactics_);
  p->tactic_stats_ = stats_;
  p->weights_ = std::move(weights_);
  p->weight_bytes_ = weight_bytes_;
  return p;
}

ElemType GpuProgramBuilder::compute_type_of(const std::vector<std::string>& ins) {
  for (const auto& i : ins)
    if (!i.empty()) return val(i).type;
  return compute_;
}

std::string gpu_target(const DeviceProps& p) {
  return p.name + " " + p.sm() + " cuda " + std::to_string(p.runtime_version) + " cublasLt " +
         std::to_string(p.cublaslt_version) + " cudnn " + std::to_string(p.cudnn_version);
}

namespace {

std::shared_ptr<GpuProgram> build_program(std::shared_ptr<Device> device, const Model& model, const ShapeMap& shapes,
                                          const CompileOptions& options);

// The median GPU time of a program's compute (CUDA graph replay) over a few runs.
double program_ms(const std::shared_ptr<const GpuProgram>& p) {
  GpuContext ctx(p);
  std::vector<double> ms;
  for (int i = 0; i < 3; ++i) ctx.run_compute_only();
  for (int i = 0; i < 9; ++i) ms.push_back(ctx.run_compute_only());
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

// Precision int8 with int8_convs and int8_gemms "auto" (or "none"): the per-node choice rests on
// kernels timed one at a time, which can mislead (clocks, caches, the passes at INT8/FP16
// boundaries), and close per-node times tip differently from one build to the next. The whole
// program is the judge: the chosen INT8 program and the one with every candidate in INT8 (no
// boundary passes at all; the set the accuracy guard checks) are timed against the same graph
// with every convolution and GEMM in FP16. The faster INT8 program is kept only when it is at
// least 3% faster than FP16, so an INT8 engine is never slower than FP16. The verdict ("int8",
// "int8all" or "fp16") is recorded like a tactic ("gpu.int8.program <the chosen INT8 nodes and
// shapes>"), so an engine or a timing cache replays it untimed.
namespace {

std::string int8_step_names(const GpuProgram& p) {
  std::string names;
  for (const auto& st : p.steps())
    if ((st.op.find("Conv") != std::string::npos || st.op.find("MatMul") != std::string::npos || st.op == "Gemm") &&
        st.kernel.find("int8") != std::string::npos)
      names += st.name + ";";
  return names;
}

}  // namespace

std::shared_ptr<const GpuProgram> GpuProgram::compile(std::shared_ptr<Device> device, const Model& model,
                                                      const ShapeMap& shapes, const CompileOptions& options) {
  std::shared_ptr<GpuProgram> p = build_program(device, model, shapes, options);
  if (options.precision != Precision::kINT8 || options.int8_convs == "always" || options.int8_gemms == "always" ||
      !options.int8_program_check)
    return p;
  const std::string convs = int8_step_names(*p);  // the INT8 convolutions and GEMMs
  if (convs.empty()) return p;
  std::ostringstream key;
  key << "gpu.int8.program " << std::hex << std::hash<std::string>{}(convs) << std::dec << " convs"
      << std::count(convs.begin(), convs.end(), ';');
  for (const auto& [name, dims] : shapes) {
    key << " " << name << ":";
    for (int64_t d : dims) key << d << "x";
  }
  CompileOptions o16 = options, oall = options;
  o16.int8_convs = o16.int8_gemms = "none";
  // "always" where "auto" would choose; "none" stays none.
  if (oall.int8_convs == "auto") oall.int8_convs = "always";
  if (oall.int8_gemms == "auto") oall.int8_gemms = "always";
  std::optional<cpu::TimingCache::Entry> verdict;
  if (options.tactics) verdict = options.tactics->find(key.str());
  if (verdict && verdict->tactic != "int8" && verdict->tactic != "int8all" && verdict->tactic != "fp16")
    verdict.reset();
  std::shared_ptr<GpuProgram> p16, pall;
  bool timed = false;
  if (!verdict) {
    p16 = build_program(device, model, shapes, o16);
    pall = build_program(device, model, shapes, oall);
    const std::string all_convs = int8_step_names(*pall);
    const double t8 = program_ms(p), t16 = program_ms(p16);
    const double tall = all_convs == convs ? -1.0 : program_ms(pall);
    const bool all_faster = tall >= 0 && tall < t8;
    const double best = all_faster ? tall : t8;
    const bool int8 = best < 0.97 * t16;
    verdict = cpu::TimingCache::Entry{int8 ? (all_faster ? "int8all" : "int8") : "fp16", int8 ? best : t16};
    timed = true;
    if (options.log) {
      std::ostringstream os;
      os << "int8 program: " << t8 << " ms with " << std::count(convs.begin(), convs.end(), ';')
         << " INT8 convolutions and GEMMs, ";
      if (tall >= 0) os << tall << " ms with all " << std::count(all_convs.begin(), all_convs.end(), ';') << ", ";
      os << "against " << t16 << " ms with every convolution in FP16: "
         << (!int8 ? "FP16 kept" : all_faster ? "all in INT8 kept" : "INT8 kept");
      options.log->push_back(os.str());
    }
  }
  std::shared_ptr<GpuProgram> chosen;
  if (verdict->tactic == "int8") chosen = p;
  else if (verdict->tactic == "int8all") chosen = pall ? pall : build_program(device, model, shapes, oall);
  else chosen = p16 ? p16 : build_program(device, model, shapes, o16);
  chosen->tactics_[key.str()] = *verdict;
  if (timed && options.tactics) options.tactics->put(key.str(), *verdict);
  return chosen;
}

namespace {

std::shared_ptr<GpuProgram> build_program(std::shared_ptr<Device> device, const Model& model, const ShapeMap& shapes,
                                          const CompileOptions& options) {
  GpuProgramBuilder b(std::move(device), model, shapes, options);
  try {
    return std::const_pointer_cast<GpuProgram>(b.build());
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // the module's CudaError
    throw Error(ErrorCode::kUnsupported, std::string("GPU build failed: ") + e.what());
  }
}

}  // namespace

WeightPool::~WeightPool() {
  for (auto& [key, e] : entries_) device_->free(e.data);
}

WeightPool::Entry WeightPool::insert(const std::string& key, const std::vector<uint8_t>& host) {
  Entry e;
  e.bytes = host.size();
  if (!host.empty()) {
    e.data = device_->alloc(host.size());
    try {
      device_->upload(e.data, host.data(), host.size());
    } catch (...) {
      device_->free(e.data);
      throw;
    }
  }
  bytes_ += e.bytes;
  entries_.emplace(key, e);
  return e;
}

size_t WeightPool::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

GpuProgram::~GpuProgram() {
  steps_.clear();
  pool_.reset();
}

void* GpuProgram::resolve(const Slot& s, char* arena, const std::vector<const void*>& in,
                          const std::vector<void*>& out) const {
  switch (s.kind) {
    case Slot::kArena: return arena + s.index;
    case Slot::kInput: return const_cast<void*>(in[s.index]);
    case Slot::kOutput: return out[s.index];
    case Slot::kWeight: return weights_[s.index];
    default: return nullptr;
  }
}

void GpuProgram::enqueue(void* arena, void* workspace, const std::vector<const void*>& inputs,
                         const std::vector<void*>& outputs, void* stream, const std::vector<void*>* events) const {
  std::vector<const void*> ins;
  std::vector<void*> outs;
  size_t k = 0;
  for (const Step& s : steps_) {
    if (events) device_->record((*events)[k++], stream);
    ins.clear();
    outs.clear();
    for (const Slot& i : s.inputs) ins.push_back(resolve(i, static_cast<char*>(arena), inputs, outputs));
    for (const Slot& o : s.outputs) outs.push_back(resolve(o, static_cast<char*>(arena), inputs, outputs));
    s.kernel->launch(ins.data(), outs.data(), workspace, stream);
  }
  if (events) device_->record((*events)[k], stream);
}

std::vector<float> GpuContext::profile_steps() {
  dev_.bind();
  std::vector<void*> events;
  for (size_t i = 0; i <= program_->steps().size(); ++i) events.push_back(dev_.create_event());
  std::vector<float> ms;
  try {
    std::vector<const void*> in(d_in_.begin(), d_in_.end());
    program_->enqueue(arena_, workspace_, in, d_out_, stream_, &events);
    dev_.synchronize(stream_);
    for (size_t i = 0; i + 1 < events.size(); ++i) ms.push_back(dev_.elapsed_ms(events[i], events[i + 1]));
  } catch (...) {
    for (void* e : events) dev_.destroy_event(e);
    throw;
  }
  for (void* e : events) dev_.destroy_event(e);
  return ms;
}

// --- GpuContext

GpuContext::GpuContext(std::shared_ptr<const GpuProgram> program, bool use_graph)
    : program_(std::move(program)), dev_(program_->device()), use_graph_(use_graph) {
  try {
    dev_.bind();
    stream_ = dev_.create_stream();
    arena_ = dev_.alloc(program_->arena_bytes());
    workspace_ = dev_.alloc(program_->workspace_bytes());
    for (const auto& t : program_->inputs()) {
      d_in_.push_back(dev_.alloc(std::max<size_t>(t.bytes(), 1)));
      h_in_.push_back(dev_.alloc_host(std::max<size_t>(t.bytes(), 1)));
    }
    for (const auto& t : program_->outputs()) {
      d_out_.push_back(dev_.alloc(std::max<size_t>(t.bytes(), 1)));
      h_out_.push_back(dev_.alloc_host(std::max<size_t>(t.bytes(), 1)));
    }
    for (auto& e : ev_) e = dev_.create_event();
  } catch (const Error&) {
    release();
    throw;
  } catch (const std::exception& e) {
    release();  // an allocation failed (out of GPU memory): give back what was taken
    throw Error(ErrorCode::kInvalidArgument, std::string("cannot create a GPU context: ") + e.what());
  }
}

GpuContext::~GpuContext() { release(); }

void GpuContext::release() {
  try {
    if (stream_) dev_.synchronize(stream_);
  } catch (...) {
  }
  dev_.destroy_graph(graph_);
  for (auto& e : ev_) dev_.destroy_event(e);
  for (void* p : d_in_) dev_.free(p);
  for (void* p : d_out_) dev_.free(p);
  for (void* p : h_in_) dev_.free_host(p);
  for (void* p : h_out_) dev_.free_host(p);
  dev_.free(arena_);
  dev_.free(workspace_);
  dev_.destroy_stream(stream_);
  graph_ = arena_ = workspace_ = stream_ = nullptr;
  for (auto& e : ev_) e = nullptr;
  d_in_.clear(), d_out_.clear(), h_in_.clear(), h_out_.clear();
}

void GpuContext::ensure_graph() {
  if (!use_graph_ || graph_) return;
  std::vector<const void*> in(d_in_.begin(), d_in_.end());
  // A first plain run (library kernels may initialize lazily), then the capture.
  program_->enqueue(arena_, workspace_, in, d_out_, stream_);
  dev_.synchronize(stream_);
  dev_.begin_capture(stream_);
  try {
    program_->enqueue(arena_, workspace_, in, d_out_, stream_);
  } catch (...) {
    try {
      dev_.end_capture(stream_);
    } catch (...) {
    }
    throw;
  }
  graph_ = dev_.end_capture(stream_);
}

void GpuContext::launch_compute() {
  if (use_graph_) {
    dev_.launch_graph(graph_, stream_);
  } else {
    std::vector<const void*> in(d_in_.begin(), d_in_.end());
    program_->enqueue(arena_, workspace_, in, d_out_, stream_);
  }
}

float GpuContext::run_compute_only() {
  try {
    dev_.bind();
    ensure_graph();
    dev_.record(ev_[1], stream_);
    launch_compute();
    dev_.record(ev_[2], stream_);
    dev_.synchronize(stream_);
    return dev_.elapsed_ms(ev_[1], ev_[2]);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    if (dev_.broken()) throw Error(ErrorCode::kInternal, std::string("GPU context is broken: ") + e.what());
    throw Error(ErrorCode::kInternal, std::string("GPU run failed (the context is still usable): ") + e.what());
  }
}

reference::TensorMap GpuContext::run(const reference::TensorMap& inputs) { return run_impl({&inputs}, -1); }

int64_t GpuContext::batch_rows() const {
  const auto batch_of = [](const TensorDesc& d) { return d.shape.empty() ? int64_t{-1} : d.shape[0]; };
  const auto& ins = program_->inputs();
  const int64_t batch = ins.empty() ? -1 : batch_of(ins[0]);
  for (const auto* list : {&ins, &program_->outputs()})
    for (const TensorDesc& d : *list)
      if (batch_of(d) != batch || batch < 1)
        throw Error(ErrorCode::kInvalidArgument, "this program has no common batch dim ('" + d.name + "' has shape " +
                                                     shape_to_string(d.shape) + ")");
  return batch;
}

reference::TensorMap GpuContext::run_rows(const reference::TensorMap& inputs, int64_t rows) {
  return run_parts({&inputs}, rows);
}

reference::TensorMap GpuContext::run_parts(const std::vector<const reference::TensorMap*>& parts, int64_t rows) {
  const int64_t batch = batch_rows();
  if (rows < 1 || rows > batch)
    throw Error(ErrorCode::kInvalidArgument, "a batch of " + std::to_string(rows) + " rows does not fit this program's " +
                                                 std::to_string(batch));
  if (parts.empty()) throw Error(ErrorCode::kInvalidArgument, "a batch needs at least one part");
  return run_impl(parts, rows);
}

reference::TensorMap GpuContext::run_impl(const std::vector<const reference::TensorMap*>& parts, int64_t rows) {
  const auto& ins = program_->inputs();
  for (const auto* part : parts)
    for (const auto& entry : *part) {
      const std::string& name = entry.first;
      if (std::none_of(ins.begin(), ins.end(), [&](const TensorDesc& d) { return d.name == name; }))
        throw Error(ErrorCode::kInvalidArgument, "'" + name + "' is not an input of the model");
    }
  // With rows >= 0 only the first `rows` rows of each edge tensor move; the rest of the inputs is
  // zero. Each part brings its own rows, in order. A part in host memory registered with the GPUs
  // is copied from where it is; the others are gathered into the pinned staging buffer first, and
  // adjacent staged parts move in one copy.
  const auto moved = [rows](const TensorDesc& d) {
    return rows < 0 ? d.bytes() : d.bytes() / static_cast<size_t>(d.shape[0]) * static_cast<size_t>(rows);
  };
  struct Piece {
    size_t input, offset, bytes;
    const void* direct;  // null: staged at the same offset of h_in_[input]
  };
  std::vector<Piece> pieces;
  Timing timing;
  for (size_t i = 0; i < ins.size(); ++i) {
    size_t offset = 0;
    int64_t seen = 0;
    for (const auto* part : parts) {
      auto it = part->find(ins[i].name);
      if (it == part->end()) throw Error(ErrorCode::kInvalidArgument, "input '" + ins[i].name + "' is missing");
      const Tensor& t = it->second;
      if (t.dtype() != ins[i].dtype)
        throw Error(ErrorCode::kInvalidArgument, "input '" + ins[i].name + "' must be " +
                                                     std::string(dtype_name(ins[i].dtype)) + ", got " +
                                                     std::string(dtype_name(t.dtype())));
      std::vector<int64_t> want = ins[i].shape;
      if (rows >= 0) {
        if (t.rank() == 0) throw Error(ErrorCode::kInvalidArgument, "input '" + ins[i].name + "' has no batch dim");
        want[0] = t.dim(0);
      }
      if (t.shape() != want || (rows >= 0 && seen + t.dim(0) > rows))
        throw Error(ErrorCode::kInvalidArgument, "input '" + ins[i].name + "' must have shape " +
                                                     shape_to_string(ins[i].shape) +
                                                     (rows >= 0 ? " with up to " + std::to_string(rows) + " rows" : "") +
                                                     " (this program's), got " + shape_to_string(t.shape()));
      const size_t n = t.nbytes();
      if (n && host_range_pinned(t.raw(), n)) {
        pieces.push_back({i, offset, n, t.raw()});
        timing.direct_bytes += n;
      } else if (n) {
        std::memcpy(static_cast<char*>(h_in_[i]) + offset, t.raw(), n);
        if (!pieces.empty() && !pieces.back().direct && pieces.back().input == i &&
            pieces.back().offset + pieces.back().bytes == offset)
          pieces.back().bytes += n;
        else
          pieces.push_back({i, offset, n, nullptr});
        timing.staged_bytes += n;
      }
      offset += n;
      seen += rows >= 0 ? t.dim(0) : 0;
    }
    if (offset != moved(ins[i]))
      throw Error(ErrorCode::kInvalidArgument, "input '" + ins[i].name + "' has " + std::to_string(seen) + " rows; the batch has " +
                                                   std::to_string(rows));
  }
  reference::TensorMap out;
  try {
    dev_.bind();
    ensure_graph();
    dev_.record(ev_[0], stream_);
    for (const Piece& p : pieces)
      dev_.copy_async(static_cast<char*>(d_in_[p.input]) + p.offset,
                      p.direct ? p.direct : static_cast<const char*>(h_in_[p.input]) + p.offset, p.bytes, stream_);
    for (size_t i = 0; i < ins.size(); ++i) {
      const size_t n = moved(ins[i]);
      if (n < ins[i].bytes()) dev_.memset_async(static_cast<char*>(d_in_[i]) + n, 0, ins[i].bytes() - n, stream_);
    }
    dev_.record(ev_[1], stream_);
    launch_compute();
    dev_.record(ev_[2], stream_);
    const auto& outs = program_->outputs();
    for (size_t i = 0; i < outs.size(); ++i) dev_.copy_async(h_out_[i], d_out_[i], moved(outs[i]), stream_);
    dev_.record(ev_[3], stream_);
    dev_.synchronize(stream_);
    timing.h2d_ms = dev_.elapsed_ms(ev_[0], ev_[1]);
    timing.compute_ms = dev_.elapsed_ms(ev_[1], ev_[2]);
    timing.d2h_ms = dev_.elapsed_ms(ev_[2], ev_[3]);
    timing_ = timing;
    for (size_t i = 0; i < outs.size(); ++i) {
      std::vector<int64_t> shape = outs[i].shape;
      if (rows >= 0) shape[0] = rows;
      Tensor t(outs[i].dtype, shape);
      std::memcpy(t.mutable_raw(), h_out_[i], moved(outs[i]));
      out[outs[i].name] = std::move(t);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    if (dev_.broken()) throw Error(ErrorCode::kInternal, std::string("GPU context is broken: ") + e.what());
    throw Error(ErrorCode::kInternal, std::string("GPU run failed (the context is still usable): ") + e.what());
  }
  return out;
}

}  // namespace kiln::gpu
