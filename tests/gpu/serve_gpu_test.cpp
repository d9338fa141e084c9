// KIND_GPU serving on this host's GPUs, however many: the shared cases of serve_gpu_cases.h
// (every batch size against the reference executor; batches from concurrent clients on every GPU).
// Skipped, with a message, without a GPU.
#include "serve_gpu_cases.h"

namespace {
using namespace kiln::serve_gpu_cases;
INSTANTIATE_TEST_SUITE_P(Cuda, ServeGpu, ::testing::Values(std::string("cuda")));
}  // namespace
