// Reference kernels of linear algebra, normalization, pooling, softmax and reduction ops.
#include "backends/reference/kernel.h"

namespace kiln::reference {

void register_math_kernels(KernelRegistry& /*r*/) {}

}  // namespace kiln::reference
