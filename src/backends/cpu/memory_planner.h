// Activation memory planning: buffers whose lifetimes do not overlap share memory.
//
// Each buffer is live from the step that writes it to the last step that reads it (inclusive).
// The planner places buffers in one arena, largest first, each at the lowest aligned offset that
// does not overlap any already-placed buffer whose lifetime intersects its own (greedy by size,
// as TFLite's and TensorRT's planners do). The arena size is the plan's peak.
#pragma once
#include <cstddef>
#include <vector>

namespace kiln::cpu {

struct BufferRequest {
  size_t bytes = 0;
  int first_step = 0;  // the step that writes it
  int last_step = 0;   // the last step that reads it (>= first_step)
};

struct MemoryPlan {
  std::vector<size_t> offsets;  // one per request, aligned
  size_t arena_bytes = 0;       // peak: the arena holding every buffer
  size_t total_bytes = 0;       // the sum of all buffers (what no sharing would need), aligned sizes
};

MemoryPlan plan_memory(const std::vector<BufferRequest>& requests, size_t alignment = 64);

}  // namespace kiln::cpu
