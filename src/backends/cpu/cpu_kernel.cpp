// Layout helpers, the tactic registry and the reference fallback tactic.
#include "backends/cpu/cpu_kernel.h"

#include <omp.h>

#include <cstring>
#include <thread>

#include "backends/reference/executor.h"

namespace kiln::cpu {

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kPlain: return "plain";
    case Layout::kChannelsLast: return "channels_last";
    case Layout::kAny: return "any";
  }
  return "?";
}

std::vector<int64_t> layout_strides(const std::vector<int64_t>& shape, Layout layout) {
  const size_t r = shape.size();
  std::vector<int64_t> s(r, 1);
  if (layout != Layout::kChannelsLast || r < 3) {
    for (size_t i = r; i-- > 1;) s[i - 1] = s[i] * shape[i];
    return s;
  }
  // Physical order: N, D1..Dk, C.
  s[1] = 1;
  int64_t acc = shape[1];
  for (size_t i = r; i-- > 2;) {
    s[i] = acc;
    acc *= shape[i];
  }
  s[0] = acc;
  return s;
}

bool layouts_coincide(const std::vector<int64_t>& shape) {
  if (shape.size() < 3) return true;
  if (shape[1] == 1) return true;
  for (size_t i = 2; i < shape.size(); ++i)
    if (shape[i] != 1) return false;
  return true;
}

bool all_f32(const KernelConfig& cfg) {
  for (const auto& v : cfg.inputs)
    if (v.present() && v.dtype != DType::kF32) return false;
  for (const auto& v : cfg.outputs)
    if (v.present() && v.dtype != DType::kF32) return false;
  return true;
}

std::vector<Layout> Tactic::input_layouts(const KernelConfig& cfg) const {
  return std::vector<Layout>(cfg.inputs.size(), Layout::kPlain);
}

std::vector<Layout> Tactic::output_layouts(const KernelConfig& cfg) const {
  return std::vector<Layout>(cfg.outputs.size(), Layout::kPlain);
}

void TacticRegistry::add(const std::string& domain, const std::string& op, std::shared_ptr<const Tactic> tactic) {
  tactics_[{domain, op}].push_back(std::move(tactic));
}

void TacticRegistry::add_first(const std::string& domain, const std::string& op, std::shared_ptr<const Tactic> tactic) {
  auto& list = tactics_[{domain, op}];
  list.insert(list.begin(), std::move(tactic));
}

std::vector<const Tactic*> TacticRegistry::find(const std::string& domain, const std::string& op) const {
  std::vector<const Tactic*> out;
  auto it = tactics_.find({domain, op});
  if (it != tactics_.end())
    for (const auto& t : it->second) out.push_back(t.get());
  return out;
}

const Tactic* TacticRegistry::find_named(const std::string& domain, const std::string& op,
                                         const std::string& name) const {
  if (name == reference_tactic().name()) return &reference_tactic();
  for (const Tactic* t : find(domain, op))
    if (t->name() == name) return t;
  return nullptr;
}

TacticRegistry& TacticRegistry::global() {
  static TacticRegistry* r = [] {
    auto* reg = new TacticRegistry;
    register_dnnl_conv_tactics(*reg);
    register_dnnl_matmul_tactics(*reg);
    register_transformer_tactics(*reg);
    register_elementwise_tactics(*reg);
    register_data_movement_tactics(*reg);
    register_int8_tactics(*reg);
    return reg;
  }();
  return *r;
}

namespace {

// Runs the reference kernel on views of the step's buffers and copies the outputs out.
class ReferenceKernel final : public CpuKernel {
 public:
  explicit ReferenceKernel(const KernelConfig& cfg) : cfg_(cfg), fn_(reference::KernelRegistry::global().find(cfg.node->domain, cfg.node->op_type)) {
    // Keep the node and value infos: cfg's pointers stay valid for the program's life.
    for (auto& v : cfg_.inputs) v.constant = nullptr;
  }

  void run(const KernelArgs& args) override {
    std::vector<Tensor> views(cfg_.inputs.size());
    std::vector<const Tensor*> ptrs(cfg_.inputs.size(), nullptr);
    for (size_t i = 0; i < cfg_.inputs.size(); ++i) {
      if (!cfg_.inputs[i].present() || !args.inputs[i]) continue;
      views[i] = Tensor::view(cfg_.inputs[i].dtype, cfg_.inputs[i].shape, nullptr, args.inputs[i]);
      ptrs[i] = &views[i];
    }
    reference::KernelContext ctx(*cfg_.node, *cfg_.schema, cfg_.opset, ptrs);
    fn_(ctx);
    auto& outs = ctx.outputs();
    for (size_t i = 0; i < cfg_.outputs.size(); ++i) {
      const ValueInfo& o = cfg_.outputs[i];
      if (!o.present() || !args.outputs[i]) continue;
      if (i >= outs.size() || !outs[i].defined())
        throw Error(ErrorCode::kInternal, cfg_.node->describe() + ": the reference kernel did not produce output " +
                                              std::to_string(i));
      if (outs[i].dtype() != o.dtype || outs[i].shape() != o.shape)
        throw Error(ErrorCode::kInternal, cfg_.node->describe() + ": output '" + o.name + "' is " +
                                              std::string(dtype_name(outs[i].dtype())) + " " +
                                              shape_to_string(outs[i].shape()) + ", but the engine planned " +
                                              std::string(dtype_name(o.dtype)) + " " + shape_to_string(o.shape));
      std::memcpy(args.outputs[i], outs[i].raw(), outs[i].nbytes());
    }
  }
  std::string describe() const override { return "reference kernel"; }

 private:
  KernelConfig cfg_;
  reference::KernelFn fn_;
};

class ReferenceTactic final : public Tactic {
 public:
  std::string name() const override { return "reference"; }
  bool supports(const KernelConfig& cfg) const override {
    return reference::KernelRegistry::global().find(cfg.node->domain, cfg.node->op_type) != nullptr;
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    return std::make_unique<ReferenceKernel>(cfg);
  }
};

}  // namespace

const Tactic& reference_tactic() {
  static const ReferenceTactic t;
  return t;
}

int default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void set_threads(int threads) { omp_set_num_threads(threads > 0 ? threads : default_threads()); }

}  // namespace kiln::cpu
