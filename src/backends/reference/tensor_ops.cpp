// Reference kernels of shape and data-movement ops, quantization and misc ops.
#include "backends/reference/kernel.h"

namespace kiln::reference {

void register_tensor_kernels(KernelRegistry& /*r*/) {}

}  // namespace kiln::reference
