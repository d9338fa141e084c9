// ONNX model -> optimized graph -> GPU program (see gpu_build.h).
#include "backends/gpu/gpu_build.h"

#include <chrono>

#include "backends/gpu/loader.h"
#include "backends/reference/executor.h"
#include "passes/pass.h"

namespace kiln::gpu {

GpuBuild build_gpu_program(Model model, const ShapeMap& shapes, int device_index, const CompileOptions& options,
                           int opt_level) {
  using Clock = std::chrono::steady_clock;
  GpuBuild out;
  auto device = open_device(device_index);  // before any work: no GPU is the first error to report
  const auto t0 = Clock::now();
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  infer_types(model, infer);
  out.nodes_before = model.graph.nodes.size();
  if (opt_level > 0) {
    PassContext ctx;
    ctx.opt_level = opt_level;
    ctx.evaluator = reference::constant_evaluator();
    ctx.input_shapes = shapes;
    PassManager::standard().run(model, ctx);
    infer_types(model, infer);
    out.pass_log = std::move(ctx.log);
  }
  out.nodes_after = model.graph.nodes.size();
  const auto t1 = Clock::now();
  out.program = GpuProgram::compile(device, model, shapes, options);
  out.pass_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  out.compile_ms = std::chrono::duration<double, std::milli>(Clock::now() - t1).count();
  out.optimized = std::move(model);
  return out;
}

}  // namespace kiln::gpu
