// Schemas of shape and data-movement ops, quantization and misc ops.
#include "ops/op_schema.h"

namespace kiln {

void register_tensor_schemas(OpRegistry& /*r*/) {}

}  // namespace kiln
