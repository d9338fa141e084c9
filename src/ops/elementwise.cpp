// Schemas of elementwise, comparison and logic ops.
#include "ops/op_schema.h"

namespace kiln {

namespace {

// Output has the broadcast shape of all inputs and the dtype of input 0.
void infer_broadcast_same_type(InferContext& ctx) {
  std::vector<Shape> shapes;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    if (!ctx.has_input(i)) continue;
    const TensorType& t = ctx.input_type(i);
    if (!t.shape) {
      ctx.set_output_unknown_shape(0, ctx.input_type(0).dtype);
      return;
    }
    shapes.push_back(*t.shape);
  }
  ctx.set_output(0, ctx.input_type(0).dtype, broadcast_shapes(ctx, shapes));
}

void infer_same_as_input(InferContext& ctx) { ctx.set_output(0, ctx.input_type(0)); }

}  // namespace

void register_elementwise_schemas(OpRegistry& r) {
  r.add({.name = "Add", .since_version = 7, .min_inputs = 2, .max_inputs = 2, .infer = infer_broadcast_same_type,
         .doc = "A + B with numpy broadcasting"});
  r.add({.name = "Relu", .since_version = 6, .infer = infer_same_as_input, .doc = "max(X, 0)"});
}

}  // namespace kiln
