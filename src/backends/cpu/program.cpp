// Compiles an optimized graph into a CPU program (see program.h) and runs it.
#include "backends/cpu/program.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>
#include <sstream>

#include "backends/reference/executor.h"
#include "runtime/specialize.h"
#include "ops/model_check.h"

namespace kiln::cpu {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

class ReorderKernel final : public CpuKernel {
 public:
  ReorderKernel(DType dt, std::vector<int64_t> shape, Layout from, Layout to)
      : dt_(dt), shape_(std::move(shape)), from_(from), to_(to) {}
  void run(const KernelArgs& a) override { reorder(a.inputs[0], from_, a.outputs[0], to_, dt_, shape_); }
  std::string describe() const override {
    return std::string("reorder ") + layout_name(from_) + " -> " + layout_name(to_);
  }

 private:
  DType dt_;
  std::vector<int64_t> shape_;
  Layout from_, to_;
};

class CopyKernel final : public CpuKernel {
 public:
  explicit CopyKernel(size_t bytes) : bytes_(bytes) {}
  void run(const KernelArgs& a) override { std::memcpy(a.outputs[0], a.inputs[0], bytes_); }
  std::string describe() const override { return "copy"; }

 private:
  size_t bytes_;
};

std::string attr_signature(const Node& n) {
  std::ostringstream os;
  for (const auto& [k, a] : n.attrs) {
    if (k == "fused_ops") continue;  // bookkeeping only
    os << k << "=" << a.to_string() << ";";
  }
  return os.str();
}

// True when a value stored as `v` can be read in layout `want` without a reorder.
bool readable_as(const ValueInfo& v, Layout want) {
  return want == Layout::kAny || v.layout == want || v.shape.size() < 3 || layouts_coincide(v.shape);
}

// Sets each output's layout from the tactic (values of rank < 3 are always plain).
void set_output_layouts(const Tactic& t, KernelConfig& cfg) {
  const auto layouts = t.output_layouts(cfg);
  for (size_t i = 0; i < cfg.outputs.size(); ++i)
    cfg.outputs[i].layout = cfg.outputs[i].shape.size() >= 3 && i < layouts.size() ? layouts[i] : Layout::kPlain;
}

// Fills a timing buffer with a benign value (no NaN or denormal slow paths; index inputs 0).
void fill_for_timing(void* p, const ValueInfo& v) {
  if (v.dtype == DType::kF32) {
    float* f = static_cast<float*>(p);
    for (int64_t i = 0; i < v.numel(); ++i) f[i] = 0.25f + 0.001f * static_cast<float>(i % 97);
  } else {
    std::memset(p, 0, v.nbytes());
  }
}

}  // namespace

class ProgramBuilder {
 public:
  ProgramBuilder(const Model& model, const ShapeMap& shapes, const CompileOptions& opt)
      : src_(model), shapes_(shapes), opt_(opt) {}

  std::shared_ptr<const Program> build();

 private:
  struct Val {
    ValueInfo info;          // dtype, shape, layout of the stored bytes
    Program::Slot slot;      // kArena: slot.index is the buffer id until planning
    std::map<Layout, std::string> reordered;  // copies of this value in other layouts
  };
  struct PendingStep {
    std::unique_ptr<CpuKernel> kernel;
    std::vector<std::string> inputs, outputs;  // value names ("" = absent)
    StepInfo info;
  };

  void add_node(size_t index);
  std::string value_in_layout(const std::string& name, Layout want);
  std::string new_arena_value(const std::string& name, ValueInfo info);
  // The value naming graph output `index`'s buffer (plain, the caller's memory).
  std::string output_value(size_t index);
  // Appends a one-input, one-output step the program inserted (a reorder or a copy).
  void add_transfer_step(std::unique_ptr<CpuKernel> kernel, const std::string& in, const std::string& out,
                         std::string label, const char* op, const char* tactic, Layout out_layout);
  double time_candidate(const Tactic& t, const KernelConfig& base, std::unique_ptr<CpuKernel>* made,
                        int* made_inplace);
  // The name value_in_layout would give, without inserting anything.
  std::string value_in_layout_name(const std::string& name, Layout want) const {
    const Val& v = vals_.at(name);
    if (readable_as(v.info, want)) return name;
    auto it = v.reordered.find(want);
    return it != v.reordered.end() ? it->second : name;
  }
  size_t node_index_ = 0;
  double time_reorder(const ValueInfo& v, Layout to);
  std::string signature(const KernelConfig& cfg) const;
  void log(const std::string& line) {
    if (opt_.log) opt_.log->push_back(line);
  }

  const Model& src_;
  const ShapeMap& shapes_;
  const CompileOptions& opt_;
  Model m_;
  std::shared_ptr<Program> p_{new Program()};
  std::map<std::string, Val> vals_;
  std::set<size_t> folded_;
  std::vector<PendingStep> steps_;
  std::vector<BufferRequest> buffers_;
  std::map<std::string, size_t> output_index_;  // graph output name -> first index
  std::map<std::pair<std::string, int>, double> reorder_ms_;
  std::map<std::string, size_t> last_consumer_;  // value -> index of the last node reading it
  int inplace_for(const Tactic& t, const KernelConfig& cfg, const std::vector<std::string>& in_names,
                  size_t index) const;
};

std::string ProgramBuilder::new_arena_value(const std::string& name, ValueInfo info) {
  Val v;
  v.info = std::move(info);
  v.slot.kind = Program::Slot::kArena;
  v.slot.index = buffers_.size();
  buffers_.push_back({v.info.nbytes(), static_cast<int>(steps_.size()), static_cast<int>(steps_.size())});
  vals_[name] = std::move(v);
  return name;
}

std::string ProgramBuilder::output_value(size_t index) {
  const std::string name = "#out" + std::to_string(index);
  Val v;
  v.info = p_->outputs_[index];
  v.slot = {Program::Slot::kOutput, index};
  vals_[name] = v;
  return name;
}

void ProgramBuilder::add_transfer_step(std::unique_ptr<CpuKernel> kernel, const std::string& in, const std::string& out,
                                       std::string label, const char* op, const char* tactic, Layout out_layout) {
  PendingStep s;
  s.info.name = std::move(label);
  s.info.op = op;
  s.info.tactic = tactic;
  s.info.impl = kernel->describe();
  s.info.output_layouts = layout_name(out_layout);
  s.kernel = std::move(kernel);
  s.inputs = {in};
  s.outputs = {out};
  steps_.push_back(std::move(s));
}

// The name of a value holding `name`'s data in layout `want` (inserting a reorder step once).
std::string ProgramBuilder::value_in_layout(const std::string& name, Layout want) {
  Val& v = vals_.at(name);
  if (readable_as(v.info, want)) return name;
  auto it = v.reordered.find(want);
  if (it != v.reordered.end()) return it->second;
  const std::string copy = name + "@" + layout_name(want);
  ValueInfo info = v.info;
  info.layout = want;
  if (v.slot.kind == Program::Slot::kConstant) {
    // Constants are reordered once, now.
    Tensor t(info.dtype, info.shape);
    reorder(v.info.constant->raw(), v.info.layout, t.mutable_raw(), want, info.dtype, info.shape);
    p_->constants_.push_back(t);
    Val c;
    c.info = info;
    c.info.constant = &p_->constants_.back();
    c.slot = {Program::Slot::kConstant, p_->constants_.size() - 1};
    vals_[copy] = c;
  } else {
    const Layout from = v.info.layout;
    new_arena_value(copy, info);
    add_transfer_step(std::make_unique<ReorderKernel>(info.dtype, info.shape, from, want), name, copy,
                      "reorder " + name, "Reorder", "kiln.reorder", want);
  }
  vals_.at(name).reordered[want] = copy;
  return copy;
}

std::string ProgramBuilder::signature(const KernelConfig& cfg) const {
  std::ostringstream os;
  os << cfg.node->domain << "::" << cfg.node->op_type << "|" << cfg.opset << "|" << attr_signature(*cfg.node) << "|";
  for (const auto& v : cfg.inputs) {
    if (!v.present()) {
      os << "-,";
      continue;
    }
    os << dtype_name(v.dtype) << shape_to_string(v.shape) << (v.constant ? "c" : "") << layout_name(v.layout) << ",";
  }
  os << "|t" << cfg.threads;
  return os.str();
}

double ProgramBuilder::time_reorder(const ValueInfo& v, Layout to) {
  auto key = std::make_pair(v.name, static_cast<int>(to));
  auto it = reorder_ms_.find(key);
  if (it != reorder_ms_.end()) return it->second;
  Tensor a(v.dtype, v.shape), b(v.dtype, v.shape);
  reorder(a.raw(), v.layout, b.mutable_raw(), to, v.dtype, v.shape);
  int iters = 0;
  double ms = 1e300;
  const auto t0 = Clock::now();
  while (iters < opt_.timing_max_iterations && (iters < 3 || ms_since(t0) < opt_.timing_min_ms)) {
    const auto t1 = Clock::now();
    reorder(a.raw(), v.layout, b.mutable_raw(), to, v.dtype, v.shape);
    ms = std::min(ms, ms_since(t1));  // the fastest run: see time_candidate
    ++iters;
  }
  reorder_ms_[key] = ms;
  return ms;
}

// Builds the candidate's kernel at these shapes and measures one run (the fastest of several);
// includes the reorders its input layouts would need. Returns -1 when the tactic fails to build.
// The fastest run, not the median: when other processes hold a core, a multi-threaded kernel waits
// at its barriers for a descheduled thread in most runs, and a median then prefers single-threaded
// kernels that are slower on an idle machine, the one the engine is built for.
double ProgramBuilder::time_candidate(const Tactic& t, const KernelConfig& base, std::unique_ptr<CpuKernel>* made,
                                      int* made_inplace) {
  KernelConfig cfg = base;
  double reorder_cost = 0;
  const auto want = t.input_layouts(cfg);
  for (size_t i = 0; i < cfg.inputs.size(); ++i) {
    ValueInfo& v = cfg.inputs[i];
    if (!v.present() || i >= want.size() || readable_as(v, want[i])) continue;
    if (!v.constant) reorder_cost += time_reorder(v, want[i]);
    v.layout = want[i];
  }
  set_output_layouts(t, cfg);
  if (t.aliases_input(cfg)) return reorder_cost;
  std::vector<std::string> names = cfg.node->inputs;
  for (size_t i = 0; i < names.size(); ++i)
    if (!names[i].empty() && cfg.inputs[i].present()) names[i] = value_in_layout_name(names[i], cfg.inputs[i].layout);
  cfg.output0_inplace_of = inplace_for(t, cfg, names, node_index_);
  std::unique_ptr<CpuKernel> k;
  try {
    k = t.create(cfg);
  } catch (const std::exception& e) {
    log("  " + t.name() + ": cannot build (" + e.what() + ")");
    return -1;
  }
  if (opt_.workspace_bytes && k->scratch_bytes() > opt_.workspace_bytes) {
    log("  " + t.name() + ": needs " + std::to_string(k->scratch_bytes()) + " bytes of scratch, over the workspace limit");
    return -1;
  }
  std::vector<Tensor> bufs;
  std::vector<const void*> in(cfg.inputs.size(), nullptr);
  std::vector<void*> out(cfg.outputs.size(), nullptr);
  for (size_t i = 0; i < cfg.inputs.size(); ++i) {
    if (!cfg.inputs[i].present()) continue;
    if (cfg.inputs[i].constant && cfg.inputs[i].layout == Layout::kPlain) {
      in[i] = cfg.inputs[i].constant->raw();
      continue;
    }
    bufs.emplace_back(cfg.inputs[i].dtype, cfg.inputs[i].shape);
    if (cfg.inputs[i].constant)
      reorder(cfg.inputs[i].constant->raw(), Layout::kPlain, bufs.back().mutable_raw(), cfg.inputs[i].layout,
              cfg.inputs[i].dtype, cfg.inputs[i].shape);
    else
      fill_for_timing(bufs.back().mutable_raw(), cfg.inputs[i]);
    in[i] = bufs.back().raw();
  }
  for (size_t i = 0; i < cfg.outputs.size(); ++i) {
    if (!cfg.outputs[i].present()) continue;
    bufs.emplace_back(cfg.outputs[i].dtype, cfg.outputs[i].shape);
    out[i] = bufs.back().mutable_raw();
  }
  if (cfg.output0_inplace_of >= 0) in[cfg.output0_inplace_of] = out[0];
  Tensor scratch(DType::kU8, {static_cast<int64_t>(k->scratch_bytes()) + 64});
  KernelArgs args{in.data(), out.data(), scratch.mutable_raw()};
  std::vector<double> times;
  try {
    k->run(args);  // warm-up (first-touch, JIT caches)
    const auto t0 = Clock::now();
    while (static_cast<int>(times.size()) < opt_.timing_max_iterations &&
           (times.size() < 3 || ms_since(t0) < opt_.timing_min_ms)) {
      const auto t1 = Clock::now();
      k->run(args);
      times.push_back(ms_since(t1));
    }
  } catch (const std::exception& e) {
    log("  " + t.name() + ": failed on timing inputs (" + e.what() + ")");
    return -1;
  }
  if (made) {
    *made = std::move(k);
    if (made_inplace) *made_inplace = cfg.output0_inplace_of;
  }
  return *std::min_element(times.begin(), times.end()) + reorder_cost;
}

// Whether output 0 may take over input k's buffer (k from the tactic): the buffer must be an
// arena buffer that no value read after this node shares, with the output's dtype, shape and layout.
int ProgramBuilder::inplace_for(const Tactic& t, const KernelConfig& cfg, const std::vector<std::string>& in_names,
                                size_t index) const {
  const int k = t.inplace_input(cfg);
  if (k < 0 || static_cast<size_t>(k) >= cfg.inputs.size() || !cfg.inputs[k].present() || cfg.outputs.empty())
    return -1;
  const ValueInfo& in = cfg.inputs[k];
  const ValueInfo& out = cfg.outputs[0];
  if (output_index_.count(cfg.node->outputs[0]) || in.dtype != out.dtype || in.shape != out.shape ||
      in.layout != out.layout)
    return -1;
  const Val& v = vals_.at(in_names[k]);
  if (v.slot.kind != Program::Slot::kArena) return -1;
  // Every value living in that buffer must be dead after this node (and no other input of it).
  for (const auto& [name, other] : vals_) {
    if (other.slot.kind != Program::Slot::kArena || other.slot.index != v.slot.index) continue;
    const std::string base = name.substr(0, name.find('@'));
    if (output_index_.count(base)) return -1;
    auto it = last_consumer_.find(base);
    if (it != last_consumer_.end() && it->second > index) return -1;
  }
  for (size_t i = 0; i < in_names.size(); ++i)
    if (static_cast<int>(i) != k && in_names[i] == in_names[k]) return -1;
  return k;
}

void ProgramBuilder::add_node(size_t index) {
  const Graph& g = m_.graph;
  auto node = std::make_unique<Node>(g.nodes[index]);
  const Node& n = *node;
  const int64_t opset = m_.opsets.count(n.domain) ? m_.opsets.at(n.domain) : 0;
  KernelConfig cfg;
  cfg.node = node.get();
  cfg.schema = OpRegistry::global().find(n.domain, n.op_type, opset);
  cfg.opset = opset;
  cfg.threads = p_->threads_;
  if (!cfg.schema) throw Error(ErrorCode::kUnsupported, n.describe() + ": no schema at opset " + std::to_string(opset));
  for (const auto& in : n.inputs) {
    if (in.empty()) {
      cfg.inputs.emplace_back();
      continue;
    }
    auto it = vals_.find(in);
    if (it == vals_.end()) throw Error(ErrorCode::kInternal, n.describe() + ": input '" + in + "' is not computed yet");
    cfg.inputs.push_back(it->second.info);
  }
  for (const auto& o : n.outputs) {
    ValueInfo v;
    v.name = o;
    if (!o.empty()) {
      const TensorType* t = g.type_of(o);
      const auto dims = concrete_dims(t);
      if (!t || !is_concrete(dims))
        throw Error(ErrorCode::kUnsupported, n.describe() + ": output '" + o + "' has no static shape at these input " +
                                                 "shapes (" + (t ? t->to_string() : "unknown") +
                                                 "); the CPU backend needs shapes known before running");
      v.dtype = t->dtype;
      v.shape = dims;
    }
    cfg.outputs.push_back(v);
  }

  // Candidates: a forced tactic (from an engine file), else the registry's, then the fallback.
  std::vector<const Tactic*> candidates;
  auto supports = [&](const Tactic* t) {
    try {
      return t->supports(cfg);
    } catch (const std::exception& e) {
      log("  " + t->name() + ": supports() threw: " + e.what());
      return false;
    }
  };
  if (opt_.forced_tactics && index < opt_.forced_tactics->size() && !(*opt_.forced_tactics)[index].empty()) {
    const std::string& name = (*opt_.forced_tactics)[index];
    const Tactic* t = TacticRegistry::global().find_named(n.domain, n.op_type, name);
    if (t && supports(t)) candidates.push_back(t);
    else log(n.describe() + ": the engine's tactic '" + name + "' does not support it at these shapes; reselecting");
  }
  if (candidates.empty()) {
    for (const Tactic* t : TacticRegistry::global().find(n.domain, n.op_type))
      if (supports(t)) candidates.push_back(t);
    if (supports(&reference_tactic())) candidates.push_back(&reference_tactic());
  }
  if (candidates.empty())
    throw Error(ErrorCode::kUnsupported, n.describe() + " (opset " + std::to_string(opset) +
                                             "): no CPU kernel supports it (see docs/troubleshooting.md#unknown-op)");

  const Tactic* chosen = candidates.front();
  double chosen_ms = -1;
  std::unique_ptr<CpuKernel> prebuilt;
  int prebuilt_inplace = -1;
  node_index_ = index;
  if (candidates.size() > 1 && opt_.time_tactics) {
    const std::string key = signature(cfg);
    std::optional<TimingCache::Entry> hit = opt_.timing_cache ? opt_.timing_cache->find(key) : std::nullopt;
    const Tactic* cached = nullptr;
    if (hit)
      for (const Tactic* t : candidates)
        if (t->name() == hit->tactic) cached = t;
    if (cached) {
      chosen = cached;
      chosen_ms = hit->ms;
    } else {
      std::ostringstream line;
      line << n.describe() << ":";
      for (const Tactic* t : candidates) {
        std::unique_ptr<CpuKernel> k;
        int k_inplace = -1;
        const double ms = time_candidate(*t, cfg, &k, &k_inplace);
        line << " " << t->name() << "=" << (ms < 0 ? std::string("n/a") : std::to_string(ms) + "ms");
        if (ms >= 0 && (chosen_ms < 0 || ms < chosen_ms)) {
          chosen = t;
          chosen_ms = ms;
          prebuilt = std::move(k);
          prebuilt_inplace = k_inplace;
        }
      }
      log(line.str() + " -> " + chosen->name());
      if (chosen_ms < 0) chosen = candidates.front();
      else if (opt_.timing_cache) opt_.timing_cache->put(key, {chosen->name(), chosen_ms});
    }
  }

  // Apply the tactic's layouts: reorder inputs where it asks for another layout.
  std::vector<std::string> in_names = n.inputs;
  const auto want = chosen->input_layouts(cfg);
  for (size_t i = 0; i < cfg.inputs.size(); ++i) {
    if (!cfg.inputs[i].present() || i >= want.size()) continue;
    const std::string name = value_in_layout(n.inputs[i], want[i]);
    if (name != n.inputs[i]) {
      prebuilt.reset();  // the timed kernel saw other layouts only if timing reordered; rebuild
      in_names[i] = name;
      const Val& rv = vals_.at(name);
      cfg.inputs[i].layout = rv.info.layout;
      if (rv.slot.kind == Program::Slot::kConstant) cfg.inputs[i].constant = &p_->constants_[rv.slot.index];
    }
  }
  set_output_layouts(*chosen, cfg);
  p_->node_tactics_[index] = chosen->name();
  cfg.output0_inplace_of = chosen->aliases_input(cfg) ? -1 : inplace_for(*chosen, cfg, in_names, index);
  if (prebuilt && prebuilt_inplace != cfg.output0_inplace_of) prebuilt.reset();

  StepInfo info;
  info.name = n.name.empty() ? n.describe() : n.name;
  info.op = n.domain.empty() ? n.op_type : n.domain + "::" + n.op_type;
  info.node_index = static_cast<int>(index);
  info.tactic = chosen->name();
  info.timed_ms = chosen_ms;
  if (const Attribute* f = n.attr("fused_ops")) info.fused_ops = f->strings;
  for (size_t i = 0; i < cfg.outputs.size(); ++i)
    info.output_layouts += (i ? "," : "") + std::string(layout_name(cfg.outputs[i].layout));

  // An aliasing op shares its input's buffer (unless the output is a graph output: then copy).
  const bool alias = chosen->aliases_input(cfg);
  const std::string& out0 = n.outputs[0];
  if (alias && !output_index_.count(out0)) {
    Val v = vals_.at(in_names[0]);
    v.info = cfg.outputs[0];
    v.info.constant = vals_.at(in_names[0]).info.constant;
    v.reordered.clear();
    vals_[out0] = v;
    // The shared buffer stays alive while the alias is used: lifetimes are per buffer.
    info.impl = "alias (no kernel)";
    PendingStep s;
    s.info = info;
    steps_.push_back(std::move(s));
    return;
  }

  PendingStep s;
  if (alias) {
    s.kernel = std::make_unique<CopyKernel>(cfg.outputs[0].nbytes());
  } else {
    s.kernel = prebuilt ? std::move(prebuilt) : chosen->create(cfg);
  }
  s.inputs = alias ? std::vector<std::string>{in_names[0]} : in_names;
  info.impl = s.kernel->describe();
  // Outputs: a graph output in plain layout is written straight into the caller's buffer.
  std::vector<std::pair<std::string, size_t>> late_reorders;  // (value, output index)
  for (size_t i = 0; i < n.outputs.size(); ++i) {
    const std::string& o = n.outputs[i];
    if (o.empty() || !cfg.outputs[i].present()) {
      s.outputs.push_back("");
      continue;
    }
    ValueInfo vi = cfg.outputs[i];
    auto oi = output_index_.find(o);
    if (oi != output_index_.end() && (vi.layout == Layout::kPlain || layouts_coincide(vi.shape))) {
      Val v;
      vi.layout = Layout::kPlain;
      v.info = vi;
      v.slot = {Program::Slot::kOutput, oi->second};
      vals_[o] = v;
    } else if (i == 0 && cfg.output0_inplace_of >= 0) {
      Val v;
      v.info = vi;
      v.slot = vals_.at(in_names[cfg.output0_inplace_of]).slot;  // the dead input's buffer
      vals_[o] = v;
      info.impl += " (in place of input " + std::to_string(cfg.output0_inplace_of) + ")";
    } else {
      new_arena_value(o, vi);
      if (oi != output_index_.end()) late_reorders.emplace_back(o, oi->second);
    }
    s.outputs.push_back(o);
  }
  s.info = info;
  steps_.push_back(std::move(s));
  p_->nodes_.push_back(std::move(node));
  for (const auto& [o, idx] : late_reorders) {
    const ValueInfo& v = vals_.at(o).info;
    add_transfer_step(std::make_unique<ReorderKernel>(v.dtype, v.shape, v.layout, Layout::kPlain), o,
                      output_value(idx), "reorder " + o + " to the output", "Reorder", "kiln.reorder", Layout::kPlain);
  }
}

std::shared_ptr<const Program> ProgramBuilder::build() {
  p_->threads_ = opt_.threads > 0 ? opt_.threads : default_threads();
  set_threads(p_->threads_);
  {
    SpecializedModel sm = specialize_model(src_, shapes_);
    m_ = std::move(sm.model);
    folded_ = std::move(sm.folded);
  }
  const Graph& g = m_.graph;
  p_->node_tactics_.assign(g.nodes.size(), "");

  for (size_t i = 0; i < g.outputs.size(); ++i) output_index_.emplace(g.outputs[i], i);
  for (size_t i = 0; i < g.inputs.size(); ++i) {
    Val v;
    v.info.name = g.inputs[i];
    v.info.dtype = g.type_of(g.inputs[i])->dtype;
    v.info.shape = concrete_dims(g.type_of(g.inputs[i]));
    v.slot = {Program::Slot::kInput, i};
    p_->inputs_.push_back(v.info);
    vals_[g.inputs[i]] = v;
  }
  // Constants: initializers, including what folding produced at these shapes.
  for (const auto& [name, t] : g.initializers) {
    if (vals_.count(name)) continue;  // an input overrides an initializer of the same name
    p_->constants_.push_back(t);
    Val v;
    v.info.name = name;
    v.info.dtype = t.dtype();
    v.info.shape = t.shape();
    v.info.constant = &p_->constants_.back();
    v.slot = {Program::Slot::kConstant, p_->constants_.size() - 1};
    vals_[name] = v;
  }
  for (const auto& o : g.outputs) {
    ValueInfo vi;
    vi.name = o;
    const TensorType* t = g.type_of(o);
    vi.dtype = t ? t->dtype : DType::kUndefined;
    vi.shape = concrete_dims(t);
    if (!t || !is_concrete(vi.shape))
      throw Error(ErrorCode::kUnsupported, "output '" + o + "' has no static shape at these input shapes");
    p_->outputs_.push_back(vi);
  }

  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (const auto& in : g.nodes[i].inputs)
      if (!in.empty()) last_consumer_[in] = i;
  const size_t total = g.nodes.size();
  for (size_t i = 0; i < total; ++i) {
    if (!folded_.count(i)) add_node(i);
    if (opt_.progress) opt_.progress(i + 1, total);
  }
  // Outputs no kernel wrote: graph inputs, constants, or a value listed twice.
  for (size_t i = 0; i < g.outputs.size(); ++i) {
    const std::string& o = g.outputs[i];
    const Val& src = vals_.at(o);
    if (src.slot.kind == Program::Slot::kOutput && src.slot.index == i) continue;
    const std::string from = value_in_layout(o, Layout::kPlain);
    add_transfer_step(std::make_unique<CopyKernel>(p_->outputs_[i].nbytes()), from, output_value(i),
                      "copy " + o + " to the output", "Copy", "kiln.copy", Layout::kPlain);
  }

  // Lifetimes, then offsets.
  for (size_t si = 0; si < steps_.size(); ++si)
    for (const auto& in : steps_[si].inputs) {
      if (in.empty()) continue;
      const Val& v = vals_.at(in);
      if (v.slot.kind == Program::Slot::kArena)
        buffers_[v.slot.index].last_step = std::max(buffers_[v.slot.index].last_step, static_cast<int>(si));
    }
  p_->plan_ = plan_memory(buffers_);
  auto slot_of = [&](const std::string& name) -> Program::Slot {
    if (name.empty()) return {};
    Program::Slot s = vals_.at(name).slot;
    if (s.kind == Program::Slot::kArena) s.index = p_->plan_.offsets[s.index];
    return s;
  };
  std::set<std::string> isa;
  for (auto& ps : steps_) {
    Program::Step st;
    for (const auto& in : ps.inputs) st.inputs.push_back(slot_of(in));
    for (const auto& out : ps.outputs) st.outputs.push_back(slot_of(out));
    if (ps.kernel) {
      p_->scratch_bytes_ = std::max(p_->scratch_bytes_, ps.kernel->scratch_bytes());
      for (const auto& f : ps.kernel->required_isa()) isa.insert(f);
    }
    st.kernel = std::move(ps.kernel);
    p_->run_steps_.push_back(std::move(st));
    p_->steps_.push_back(std::move(ps.info));
  }
  p_->required_isa_.assign(isa.begin(), isa.end());
  return p_;
}

std::shared_ptr<const Program> Program::compile(const Model& model, const ShapeMap& input_shapes,
                                                const CompileOptions& options) {
  ProgramBuilder b(model, input_shapes, options);
  return b.build();
}

size_t Program::kernel_count() const {
  size_t n = 0;
  for (const auto& s : run_steps_) n += s.kernel != nullptr;
  return n;
}

void* Program::resolve(const Slot& s, char* arena, const std::vector<const void*>& in,
                       const std::vector<void*>& out) const {
  switch (s.kind) {
    case Slot::kArena: return arena + s.index;
    case Slot::kInput: return const_cast<void*>(in[s.index]);
    case Slot::kOutput: return out[s.index];
    case Slot::kConstant: return const_cast<void*>(constants_[s.index].raw());
    case Slot::kNone: return nullptr;
  }
  return nullptr;
}

void Program::run(void* arena, void* scratch, const std::vector<const void*>& inputs,
                  const std::vector<void*>& outputs, std::vector<double>* step_ms) const {
  if (inputs.size() != inputs_.size() || outputs.size() != outputs_.size())
    throw Error(ErrorCode::kInvalidArgument, "Program::run: expected " + std::to_string(inputs_.size()) +
                                                 " inputs and " + std::to_string(outputs_.size()) + " outputs");
  set_threads(threads_);
  char* base = static_cast<char*>(arena);
  if (step_ms) step_ms->assign(run_steps_.size(), 0.0);
  std::vector<const void*> in_ptrs;
  std::vector<void*> out_ptrs;
  for (size_t i = 0; i < run_steps_.size(); ++i) {
    const Step& s = run_steps_[i];
    if (!s.kernel) continue;
    in_ptrs.resize(s.inputs.size());
    out_ptrs.resize(s.outputs.size());
    for (size_t k = 0; k < s.inputs.size(); ++k) in_ptrs[k] = resolve(s.inputs[k], base, inputs, outputs);
    for (size_t k = 0; k < s.outputs.size(); ++k) out_ptrs[k] = resolve(s.outputs[k], base, inputs, outputs);
    KernelArgs args{in_ptrs.data(), out_ptrs.data(), scratch};
    if (step_ms) {
      const auto t0 = Clock::now();
      s.kernel->run(args);
      (*step_ms)[i] = ms_since(t0);
    } else {
      s.kernel->run(args);
    }
  }
}

}  // namespace kiln::cpu
