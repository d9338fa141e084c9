// Batch splitting: whether a batch may run as independent sub-batches.
//
// A CPU engine given a batch of N samples (axis 0 of every input) normally runs one program over
// all of them, each kernel spread over the context's threads. When every node treats the samples
// independently, the batch can instead run as sub-batches of a few samples, one sub-batch per
// thread at a time, each on a single-threaded program: no barrier between kernels, and each
// thread's activations stay in its own cache. On 2 cores MobileNetV2 runs a batch of 16 1.25x and
// a batch of 32 1.36x faster that way (bench/results/2026-11-28-batch-split.md).
//
// That is only right when the outputs for N samples are the outputs for each sub-batch, joined
// along axis 0. `analyze_batch_split` proves it node by node, on the graph specialized at the full
// batch and at the sub-batch size: it tracks, for each value, whether it is free of the batch
// (a weight, a constant) or batched (its axis 0 is k times the batch, the samples' parts lying one
// after another), and accepts only ops known to keep the samples apart: elementwise ops and
// convolutions, pooling and normalization over other axes, matmuls whose rows or batch axis are
// the samples, reshapes that keep the samples' blocks whole, and the like. Anything else (an op on
// axis 0, a Transpose that moves it, a recurrent op, an op it does not know) makes it say no, with
// the node that did.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ir/graph.h"

namespace kiln {

struct BatchSplitCheck {
  bool ok = false;
  std::string why;  // when !ok: what ties the samples together (a node, an input, an output)
};

// `full` holds every input's shape at the full batch: axis 0 of each is the batch, the same for
// all. `sub` (1 <= sub < batch) is the sub-batch size to check. Never throws for a model it cannot
// prove; the reason is in `why`.
BatchSplitCheck analyze_batch_split(const Model& model, const std::map<std::string, std::vector<int64_t>>& full,
                                    int64_t sub);

}  // namespace kiln
