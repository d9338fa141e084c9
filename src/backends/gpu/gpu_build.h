// From an ONNX model to a GPU program: type inference, the standard graph passes specialized to
// the given input shapes (so shape chains fold and attention fuses), then GpuProgram::compile on
// the chosen device. What `kiln run/bench --device cuda` and the GPU tests use.
#pragma once
#include <string>
#include <vector>

#include "backends/gpu/gpu_program.h"

namespace kiln::gpu {

struct GpuBuild {
  std::shared_ptr<const GpuProgram> program;
  Model optimized;  // the graph after the passes (what a GPU engine file stores)
  size_t nodes_before = 0, nodes_after = 0;
  double pass_ms = 0, compile_ms = 0;
  std::vector<std::string> pass_log;
};

// `shapes` must give every dynamic input's shape. opt_level 0 runs no passes.
GpuBuild build_gpu_program(Model model, const ShapeMap& shapes, int device_index, const CompileOptions& options,
                           int opt_level = 3);

}  // namespace kiln::gpu
