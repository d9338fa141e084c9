// Fuzzes the model loader: protobuf decoding, IR construction, topological sort, op checks and
// type inference with constant propagation. Any kiln::Error is a correct rejection; anything
// else (crash, sanitizer report, other exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <span>

#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    kiln::Model model = kiln::parse_onnx(std::span<const uint8_t>(data, size), "", "fuzz.onnx");
    if (!kiln::check_model(model).empty()) return 0;
    kiln::verify_graph(model.graph);
    kiln::reference::Executor exec(std::move(model));
  } catch (const kiln::Error&) {
  }
  return 0;
}
