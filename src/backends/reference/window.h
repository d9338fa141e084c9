// Sliding windows of Conv, ConvTranspose and the pooling ops: auto_pad, pads, strides, dilations
// and ceil_mode resolved into explicit pads and output extents. One definition serves the
// reference kernels and the CPU backend's tactics, so both compute exactly the same windows.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ops/op_schema.h"

namespace kiln::reference {

// A resolved window over `in` spatial extents: explicit begin/end pads and output extents.
struct Window {
  std::vector<int64_t> in, kernel, strides, dilations, pad_begin, pad_end, out;
  size_t rank() const { return in.size(); }
};

// An ints attribute of `len` values (default `def` each when absent or empty, or when the schema
// does not declare it), each >= min. Fails through ctx otherwise.
std::vector<int64_t> window_ints(const NodeView& ctx, const char* name, size_t len, int64_t def, int64_t min);
// The auto_pad attribute ("NOTSET" when absent or empty); fails on an unknown value.
std::string auto_pad_of(const NodeView& ctx);
// Fails unless `kernel` has n positive extents.
void check_kernel(const NodeView& ctx, const std::vector<int64_t>& kernel, size_t n);
// Resolves auto_pad / pads / ceil_mode (where the schema has them) into explicit pads and output
// extents. Fails (kInvalidModel, naming the node) when the window does not fit the padded input.
Window resolve_window(const NodeView& ctx, const std::vector<int64_t>& in, const std::vector<int64_t>& kernel);

}  // namespace kiln::reference
