// Shape rules shared by the float ops and their int8 counterparts (kiln::QConv, kiln::QMatMul),
// so both infer output shapes identically.
#pragma once
#include <optional>

#include "ir/graph.h"
#include "ops/op_schema.h"

namespace kiln {

// Conv's output: X at input ix, W at iw, the Conv attributes of the node; the output gets out_dtype.
void infer_conv_like(InferContext& ctx, size_t ix, size_t iw, DType out_dtype);
// FusedMatMul's output shape (A at 0, B at 1, transA/transB), or nullopt when a shape is unknown.
std::optional<Shape> fused_matmul_shape(const InferContext& ctx);

// The y_type attribute of the int8 ops: "float32", "int8" or "uint8" (fails on anything else).
DType quantized_output_type(const NodeView& v);

}  // namespace kiln
