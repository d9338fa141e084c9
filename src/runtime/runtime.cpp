// EngineRuntime (programs per input shapes) and Context (arena + run).
#include "runtime/runtime.h"

#include <omp.h>

#include <algorithm>
#include <exception>

#include "runtime/batch_split.h"

namespace kiln {

EngineRuntime::EngineRuntime(Model optimized, EngineInfo info, int threads)
    : model_(std::move(optimized)), info_(std::move(info)) {
  threads_ = threads > 0 ? threads : info_.threads > 0 ? info_.threads : cpu::default_threads();
  if (info_.target.backend == "cuda") {
    throw Error(ErrorCode::kInvalidArgument, "this is a GPU engine (built for " + info_.target.property("gpu") +
                                                 ", " + info_.target.property("sm") +
                                                 "); the CPU runtime cannot run it: use --device cuda, or build a "
                                                 "CPU engine with 'kiln build' without --device");
  }
  // A plugin's tactic (include/kiln/plugin.h) must be loaded: the program would otherwise quietly
  // reselect a built-in kernel for an op the plugin replaced.
  const auto& nodes = model_.graph.nodes;
  for (size_t i = 0; i < info_.node_tactics.size() && i < nodes.size(); ++i) {
    const std::string& t = info_.node_tactics[i];
    if (t.starts_with("plugin:") && !cpu::TacticRegistry::global().find_named(nodes[i].domain, nodes[i].op_type, t))
      throw Error(ErrorCode::kUnsupported, nodes[i].describe() + ": the engine was built with plugin '" + t +
                                               "', which is not loaded: load the plugin library that provides it " +
                                               "first (kiln::loadPluginLibrary(path), or kiln --plugin LIB.so)");
  }
}

int EngineRuntime::check_shapes(const cpu::ShapeMap& shapes) const {
  const Graph& g = model_.graph;
  for (const auto& in : g.inputs) {
    auto it = shapes.find(in);
    if (it == shapes.end()) throw Error(ErrorCode::kInvalidArgument, "input '" + in + "' is missing");
    const TensorType* t = g.type_of(in);
    if (!t || !t->shape) continue;
    const auto& dims = it->second;
    if (dims.size() != t->shape->size())
      throw Error(ErrorCode::kInvalidArgument, "input '" + in + "' must have rank " +
                                                   std::to_string(t->shape->size()) + " (" + t->to_string() +
                                                   "), got shape " + shape_to_string(dims));
    for (size_t d = 0; d < dims.size(); ++d)
      if ((*t->shape)[d].known() && (*t->shape)[d].value != dims[d])
        throw Error(ErrorCode::kInvalidArgument, "input '" + in + "' is " + t->to_string() + ", got shape " +
                                                     shape_to_string(dims));
  }
  if (info_.profiles.empty()) return -1;
  std::string why;
  for (size_t p = 0; p < info_.profiles.size(); ++p) {
    bool inside = true;
    for (const auto& [name, range] : info_.profiles[p].inputs) {
      auto it = shapes.find(name);
      if (it == shapes.end()) continue;
      const auto& dims = it->second;
      bool ok = dims.size() == range.min.size();
      for (size_t d = 0; ok && d < dims.size(); ++d) ok = dims[d] >= range.min[d] && dims[d] <= range.max[d];
      if (!ok) {
        inside = false;
        if (why.empty())
          why = "input '" + name + "' has shape " + shape_to_string(dims) + ", outside optimization profile " +
                std::to_string(p) + " (min " + shape_to_string(range.min) + ", max " + shape_to_string(range.max) + ")";
        break;
      }
    }
    if (inside) return static_cast<int>(p);
  }
  throw Error(ErrorCode::kInvalidArgument, why + (info_.profiles.size() > 1 ? " and every other profile" : "") +
                                               "; rebuild the engine with a profile that covers it (see docs/troubleshooting.md#engine-profile)");
}

std::shared_ptr<const cpu::Program> EngineRuntime::program_for(const cpu::ShapeMap& shapes) const {
  check_shapes(shapes);
  return program_at(shapes, threads_);
}

std::shared_ptr<const cpu::Program> EngineRuntime::program_at(const cpu::ShapeMap& shapes, int threads) const {
  std::lock_guard lock(mu_);
  auto it = programs_.find({shapes, threads});
  if (it != programs_.end()) return it->second;
  cpu::CompileOptions co;
  co.threads = threads;
  co.time_tactics = false;  // the engine's tactics are used; nodes without one take the first supporting
  co.forced_tactics = info_.node_tactics.empty() ? nullptr : &info_.node_tactics;
  auto program = cpu::Program::compile(model_, shapes, co);
  programs_[{shapes, threads}] = program;
  return program;
}

void EngineRuntime::add_program(const cpu::ShapeMap& shapes, std::shared_ptr<const cpu::Program> program) {
  std::lock_guard lock(mu_);
  programs_[{shapes, program->threads()}] = std::move(program);
}

namespace {

// A sub-batch's activations should stay in the core's own caches: the samples per sub-batch are
// this many bytes over one sample's activation arena (at least 1). On the 2-core machine of
// bench/results/2026-11-28-batch-split.md, two one-thread streams (`kiln bench --streams 2
// --threads 1`) ran MobileNetV2 at 569 images/s with batches of 1, 504 with 4 and 456 with 8;
// ResNet-50 did not care (59.3 with 1, 58.4 with 8).
constexpr size_t kSubBatchArenaBytes = size_t{1} << 20;

cpu::ShapeMap with_batch(cpu::ShapeMap shapes, int64_t batch) {
  for (auto& [name, dims] : shapes) dims[0] = batch;
  return shapes;
}

}  // namespace

const EngineRuntime::BatchPlan& EngineRuntime::batch_plan(const cpu::ShapeMap& shapes) const {
  check_shapes(shapes);
  std::lock_guard lock(plan_mu_);
  auto it = plans_.find(shapes);
  if (it != plans_.end()) return *it->second;
  auto plan = std::make_unique<BatchPlan>();
  BatchPlan& p = *plan;
  int64_t batch = -1;
  for (const auto& [name, dims] : shapes) {
    const int64_t b = dims.empty() ? -1 : dims[0];
    if (batch == -1) batch = b;
    if (b != batch || b < 0) batch = -2;
  }
  p.batch = std::max<int64_t>(batch, 0);
  if (!split_enabled_) p.why = "off";
  else if (threads_ < 2) p.why = "one thread";
  else if (batch == -2) p.why = "the inputs have no common axis 0";
  else if (batch < 2) p.why = "a batch of " + std::to_string(std::max<int64_t>(batch, 0));
  if (p.why.empty()) {
    try {
      const auto one = program_at(with_batch(shapes, 1), 1);
      const size_t per_sample = std::max<size_t>(one->arena_bytes(), 1);
      const int64_t even = (batch + threads_ - 1) / threads_;
      const int64_t sub = std::clamp<int64_t>(static_cast<int64_t>(kSubBatchArenaBytes / per_sample), 1, even);
      BatchSplitCheck check = analyze_batch_split(model_, shapes, sub);
      if (check.ok && batch % sub != 0 && batch % sub != sub) check = analyze_batch_split(model_, shapes, batch % sub);
      if (check.ok) p.sub = sub;
      else p.why = check.why;
    } catch (const std::exception& e) {
      p.why = std::string("no program for a sub-batch: ") + e.what();
    }
  }
  return *plans_.emplace(shapes, std::move(plan)).first->second;
}

Context::Context(std::shared_ptr<const EngineRuntime> engine) : engine_(std::move(engine)) {}

void Context::Scratch::fit(const cpu::Program& p) {
  if (static_cast<size_t>(arena.numel()) < p.arena_bytes() + 64)
    arena = Tensor(DType::kU8, {static_cast<int64_t>(p.arena_bytes()) + 64});
  if (static_cast<size_t>(scratch.numel()) < p.scratch_bytes() + 64)
    scratch = Tensor(DType::kU8, {static_cast<int64_t>(p.scratch_bytes()) + 64});
}

reference::TensorMap Context::run_split(const reference::TensorMap& inputs, const cpu::ShapeMap& shapes,
                                        const EngineRuntime::BatchPlan& plan) {
  const int64_t batch = plan.batch, sub = plan.sub, rest = batch % sub;
  const int threads = engine_->threads();
  auto full = engine_->program_at(with_batch(shapes, sub), 1);
  auto tail = rest ? engine_->program_at(with_batch(shapes, rest), 1) : full;
  // Outputs: the sub-batch's shapes with axis 0 scaled to the batch (k rows per sample).
  reference::TensorMap out;
  std::vector<char*> out_base;
  std::vector<size_t> out_part;  // bytes per sample
  for (const auto& v : full->outputs()) {
    std::vector<int64_t> dims = v.shape;
    if (dims.empty() || dims[0] % sub != 0)
      throw Error(ErrorCode::kInternal, "batch split: output '" + v.name + "' is not per sample");
    dims[0] = dims[0] / sub * batch;
    Tensor t(v.dtype, dims);
    out_part.push_back(t.nbytes() / static_cast<size_t>(batch));
    out_base.push_back(static_cast<char*>(t.mutable_raw()));
    out[v.name] = std::move(t);
  }
  std::vector<const char*> in_base;
  std::vector<size_t> in_part;
  for (const auto& v : full->inputs()) {
    const Tensor& t = inputs.at(v.name);
    in_base.push_back(static_cast<const char*>(t.raw()));
    in_part.push_back(t.nbytes() / static_cast<size_t>(batch));
  }
  if (workers_.size() < static_cast<size_t>(threads)) workers_.resize(static_cast<size_t>(threads));
  for (auto& w : workers_) {
    w.fit(*full);
    w.fit(*tail);
  }
  const int64_t parts = (batch + sub - 1) / sub;
  std::exception_ptr failure;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < parts; ++c) {
    Scratch& w = workers_[static_cast<size_t>(omp_get_thread_num())];
    const int64_t first = c * sub;
    const cpu::Program& p = first + sub <= batch ? *full : *tail;
    std::vector<const void*> in(in_base.size());
    std::vector<void*> outs(out_base.size());
    for (size_t i = 0; i < in.size(); ++i) in[i] = in_base[i] + static_cast<size_t>(first) * in_part[i];
    for (size_t i = 0; i < outs.size(); ++i) outs[i] = out_base[i] + static_cast<size_t>(first) * out_part[i];
    try {
      p.run(w.arena.mutable_raw(), w.scratch.mutable_raw(), in, outs, nullptr);
    } catch (...) {
#pragma omp critical(kiln_batch_split)
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  program_ = full;
  shapes_.clear();  // the next unsplit run looks its program up again
  return out;
}

reference::TensorMap Context::run(const reference::TensorMap& inputs, std::vector<double>* step_ms) {
  const Graph& g = engine_->model().graph;
  cpu::ShapeMap shapes;
  for (const auto& [name, t] : inputs) {
    if (std::find(g.inputs.begin(), g.inputs.end(), name) == g.inputs.end()) {
      std::string names;
      for (const auto& in : g.inputs) names += (names.empty() ? "" : ", ") + in;
      throw Error(ErrorCode::kInvalidArgument, "'" + name + "' is not an input of the engine (inputs: " + names + ")");
    }
    const TensorType* decl = g.type_of(name);
    if (decl && decl->dtype != DType::kUndefined && decl->dtype != t.dtype())
      throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' must be " + std::string(dtype_name(decl->dtype)) + ", got " +
                                                   std::string(dtype_name(t.dtype())));
    shapes[name] = t.shape();
  }
  if (!step_ms) {
    if (!plan_ || shapes != plan_shapes_) {
      plan_ = &engine_->batch_plan(shapes);
      plan_shapes_ = shapes;
    }
    if (plan_->split()) return run_split(inputs, shapes, *plan_);
  }
  if (!program_ || shapes != shapes_) {
    program_ = engine_->program_for(shapes);
    shapes_ = shapes;
    own_.fit(*program_);
  }
  std::vector<const void*> in_ptrs;
  for (const auto& v : program_->inputs()) in_ptrs.push_back(inputs.at(v.name).raw());
  reference::TensorMap out;
  std::vector<void*> out_ptrs;
  std::vector<Tensor> outs;
  for (const auto& v : program_->outputs()) {
    outs.emplace_back(v.dtype, v.shape);
    out_ptrs.push_back(outs.back().mutable_raw());
  }
  program_->run(own_.arena.mutable_raw(), own_.scratch.mutable_raw(), in_ptrs, out_ptrs, step_ms);
  for (size_t i = 0; i < outs.size(); ++i) out[program_->outputs()[i].name] = outs[i];
  return out;
}

}  // namespace kiln
