// EngineRuntime (programs per input shapes) and Context (arena + run).
#include "runtime/runtime.h"

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
  std::lock_guard lock(mu_);
  auto it = programs_.find(shapes);
  if (it != programs_.end()) return it->second;
  cpu::CompileOptions co;
  co.threads = threads_;
  co.time_tactics = false;  // the engine's tactics are used; nodes without one take the first supporting
  co.forced_tactics = info_.node_tactics.empty() ? nullptr : &info_.node_tactics;
  auto program = cpu::Program::compile(model_, shapes, co);
  programs_[shapes] = program;
  return program;
}

void EngineRuntime::add_program(const cpu::ShapeMap& shapes, std::shared_ptr<const cpu::Program> program) {
  std::lock_guard lock(mu_);
  programs_[shapes] = std::move(program);
}

Context::Context(std::shared_ptr<const EngineRuntime> engine) : engine_(std::move(engine)) {}

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
  if (!program_ || shapes != shapes_) {
    program_ = engine_->program_for(shapes);
    shapes_ = shapes;
    if (static_cast<size_t>(arena_.numel()) < program_->arena_bytes() + 64)
      arena_ = Tensor(DType::kU8, {static_cast<int64_t>(program_->arena_bytes()) + 64});
    if (static_cast<size_t>(scratch_.numel()) < program_->scratch_bytes() + 64)
      scratch_ = Tensor(DType::kU8, {static_cast<int64_t>(program_->scratch_bytes()) + 64});
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
  program_->run(arena_.mutable_raw(), scratch_.mutable_raw(), in_ptrs, out_ptrs, step_ms);
  for (size_t i = 0; i < outs.size(); ++i) out[program_->outputs()[i].name] = outs[i];
  return out;
}

}  // namespace kiln
