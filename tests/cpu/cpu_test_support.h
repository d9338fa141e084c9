// Helpers for CPU-backend kernel tests: run one node through a named tactic (with inputs in the
// layouts a producer would have made) and through the reference kernel, and compare.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_kernel.h"
#include "backends/reference/executor.h"
#include "ops/model_check.h"

namespace kiln_cpu_test {

using namespace kiln;
using kiln::cpu::Layout;

inline Tensor random_tensor(DType dt, std::vector<int64_t> shape, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  Tensor t(dt, std::move(shape));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    T* p = t.mutable_data<T>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<T>(u(rng));
  });
  return t;
}

struct NodeRun {
  Node node;
  int64_t opset = 17;
  std::vector<Tensor> inputs;            // by input index; an undefined Tensor is an absent input
  std::vector<bool> constant;            // inputs passed as constants (weights); default none
  std::vector<Layout> producer_layouts;  // the layout each input arrives in; default plain
  int threads = 2;
};

// Output types of the node, inferred by its schema on the inputs' concrete shapes.
inline std::vector<TensorType> infer_outputs(const NodeRun& r) {
  Model m;
  m.opsets[r.node.domain] = r.opset;
  if (!r.node.domain.empty()) m.opsets[""] = 17;
  Node n = r.node;
  for (size_t i = 0; i < r.inputs.size(); ++i) {
    if (!r.inputs[i].defined()) continue;
    const std::string name = n.inputs[i];
    if (i < r.constant.size() && r.constant[i]) {
      m.graph.initializers[name] = r.inputs[i];
    } else if (std::find(m.graph.inputs.begin(), m.graph.inputs.end(), name) == m.graph.inputs.end()) {
      m.graph.inputs.push_back(name);
      Shape s;
      for (int64_t d : r.inputs[i].shape()) s.push_back(Dim(d));
      m.graph.types[name] = TensorType{r.inputs[i].dtype(), s};
    }
  }
  m.graph.nodes.push_back(n);
  for (const auto& o : n.outputs)
    if (!o.empty()) m.graph.outputs.push_back(o);
  InferOptions opts;
  opts.evaluator = reference::constant_evaluator();
  infer_types(m, opts);
  std::vector<TensorType> out;
  for (const auto& o : n.outputs) out.push_back(o.empty() ? TensorType{} : *m.graph.type_of(o));
  return out;
}

inline const OpSchema& schema_of(const NodeRun& r) {
  const OpSchema* s = OpRegistry::global().find(r.node.domain, r.node.op_type, r.opset);
  if (!s) throw Error(ErrorCode::kUnsupported, "no schema for " + r.node.op_type);
  return *s;
}

// The KernelConfig the program would build for this node (inputs in their producer layouts).
inline cpu::KernelConfig make_config(const NodeRun& r) {
  cpu::KernelConfig cfg;
  cfg.node = &r.node;
  cfg.schema = &schema_of(r);
  cfg.opset = r.opset;
  cfg.threads = r.threads;
  for (size_t i = 0; i < r.node.inputs.size(); ++i) {
    cpu::ValueInfo v;
    v.name = r.node.inputs[i];
    if (i < r.inputs.size() && r.inputs[i].defined()) {
      v.dtype = r.inputs[i].dtype();
      v.shape = r.inputs[i].shape();
      v.layout = i < r.producer_layouts.size() && v.shape.size() >= 3 ? r.producer_layouts[i] : Layout::kPlain;
      if (i < r.constant.size() && r.constant[i]) {
        v.constant = &r.inputs[i];
        v.layout = Layout::kPlain;
      }
    }
    cfg.inputs.push_back(v);
  }
  auto types = infer_outputs(r);
  for (size_t i = 0; i < r.node.outputs.size(); ++i) {
    cpu::ValueInfo v;
    v.name = r.node.outputs[i];
    if (!r.node.outputs[i].empty()) {
      v.dtype = types[i].dtype;
      if (!types[i].shape) throw Error(ErrorCode::kInternal, "output shape not inferred");
      for (const Dim& d : *types[i].shape) {
        if (!d.known()) throw Error(ErrorCode::kInternal, "output dim not inferred");
        v.shape.push_back(d.value);
      }
    }
    cfg.outputs.push_back(v);
  }
  return cfg;
}

// True when the named tactic supports the node as given.
inline bool tactic_supports(const std::string& tactic, const NodeRun& r) {
  const cpu::Tactic* t = cpu::TacticRegistry::global().find_named(r.node.domain, r.node.op_type, tactic);
  if (!t) throw Error(ErrorCode::kInternal, "no tactic '" + tactic + "' for " + r.node.op_type);
  return t->supports(make_config(r));
}

// Runs the node through the named tactic; returns the outputs in plain layout.
inline std::vector<Tensor> run_tactic(const std::string& tactic, const NodeRun& r) {
  const cpu::Tactic* t = cpu::TacticRegistry::global().find_named(r.node.domain, r.node.op_type, tactic);
  if (!t) throw Error(ErrorCode::kInternal, "no tactic '" + tactic + "' for " + r.node.op_type);
  cpu::KernelConfig cfg = make_config(r);
  if (!t->supports(cfg)) throw Error(ErrorCode::kUnsupported, "tactic '" + tactic + "' does not support the node");
  // Inputs in the producer's layout, then reordered where the tactic asks for another.
  std::vector<Tensor> staged(cfg.inputs.size());
  const auto want = t->input_layouts(cfg);
  for (size_t i = 0; i < cfg.inputs.size(); ++i) {
    if (!cfg.inputs[i].present()) continue;
    cpu::ValueInfo& v = cfg.inputs[i];
    if (v.constant) {
      staged[i] = *v.constant;
      continue;
    }
    Tensor produced(v.dtype, v.shape);
    cpu::reorder(r.inputs[i].raw(), Layout::kPlain, produced.mutable_raw(), v.layout, v.dtype, v.shape);
    if (want[i] != Layout::kAny && want[i] != v.layout && v.shape.size() >= 3) {
      Tensor re(v.dtype, v.shape);
      cpu::reorder(produced.raw(), v.layout, re.mutable_raw(), want[i], v.dtype, v.shape);
      produced = re;
      v.layout = want[i];
    }
    staged[i] = produced;
  }
  const auto out_layouts = t->output_layouts(cfg);
  for (size_t i = 0; i < cfg.outputs.size(); ++i)
    cfg.outputs[i].layout = cfg.outputs[i].shape.size() >= 3 ? out_layouts[i] : Layout::kPlain;
  std::vector<Tensor> outs(cfg.outputs.size());
  if (t->aliases_input(cfg)) {
    outs[0] = staged[0].clone().reshaped(cfg.outputs[0].shape);
  } else {
    auto kernel = t->create(cfg);
    std::vector<const void*> in_ptrs(cfg.inputs.size(), nullptr);
    std::vector<void*> out_ptrs(cfg.outputs.size(), nullptr);
    for (size_t i = 0; i < cfg.inputs.size(); ++i)
      if (staged[i].defined()) in_ptrs[i] = staged[i].raw();
    for (size_t i = 0; i < cfg.outputs.size(); ++i) {
      if (!cfg.outputs[i].present()) continue;
      outs[i] = Tensor(cfg.outputs[i].dtype, cfg.outputs[i].shape);
      out_ptrs[i] = outs[i].mutable_raw();
    }
    Tensor scratch(DType::kU8, {static_cast<int64_t>(kernel->scratch_bytes()) + 1});
    cpu::set_threads(r.threads);
    cpu::KernelArgs args{in_ptrs.data(), out_ptrs.data(), scratch.mutable_raw()};
    kernel->run(args);
    kernel->run(args);  // a kernel must be re-runnable on the same buffers
  }
  for (size_t i = 0; i < cfg.outputs.size(); ++i) {
    if (!outs[i].defined()) continue;
    Tensor plain(cfg.outputs[i].dtype, cfg.outputs[i].shape);
    cpu::reorder(outs[i].raw(), cfg.outputs[i].layout, plain.mutable_raw(), Layout::kPlain, cfg.outputs[i].dtype,
                 cfg.outputs[i].shape);
    outs[i] = plain;
  }
  return outs;
}

inline std::vector<Tensor> run_reference(const NodeRun& r) {
  std::vector<const Tensor*> ptrs;
  for (const auto& t : r.inputs) ptrs.push_back(t.defined() ? &t : nullptr);
  return reference::evaluate_node(r.node, schema_of(r), r.opset, ptrs);
}

// |got - want| <= atol + rtol * |want| elementwise; reports the first few mismatches.
inline void expect_close(const Tensor& got, const Tensor& want, double rtol, double atol) {
  ASSERT_EQ(got.dtype(), want.dtype());
  ASSERT_EQ(got.shape(), want.shape());
  auto g = got.to_double_vector(), w = want.to_double_vector();
  int bad = 0;
  for (size_t i = 0; i < g.size() && bad < 5; ++i) {
    if (std::isnan(w[i]) && std::isnan(g[i])) continue;
    if (std::fabs(g[i] - w[i]) <= atol + rtol * std::fabs(w[i])) continue;
    ADD_FAILURE() << "element " << i << ": got " << g[i] << ", want " << w[i];
    ++bad;
  }
}

// Runs the tactic and the reference on the same inputs and compares every output.
inline void expect_matches_reference(const std::string& tactic, const NodeRun& r, double rtol = 1e-4,
                                     double atol = 1e-5) {
  auto got = run_tactic(tactic, r);
  auto want = run_reference(r);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (!got[i].defined()) continue;
    SCOPED_TRACE("output " + std::to_string(i));
    expect_close(got[i], want[i], rtol, atol);
  }
}

}  // namespace kiln_cpu_test
