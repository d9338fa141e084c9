// Schemas of linear algebra, normalization, pooling, softmax and reduction ops.
#include "ops/op_schema.h"

namespace kiln {

void register_math_schemas(OpRegistry& /*r*/) {}

}  // namespace kiln
