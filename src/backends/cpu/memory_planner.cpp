// Greedy-by-size placement of activation buffers with lifetimes (see memory_planner.h).
#include "backends/cpu/memory_planner.h"

#include <algorithm>
#include <numeric>

#include "kiln/error.h"

namespace kiln::cpu {

MemoryPlan plan_memory(const std::vector<BufferRequest>& requests, size_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    throw Error(ErrorCode::kInternal, "plan_memory: alignment must be a power of two");
  auto align = [&](size_t n) { return (n + alignment - 1) & ~(alignment - 1); };
  MemoryPlan plan;
  plan.offsets.assign(requests.size(), 0);
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  // Largest first; ties by earlier start, then index, so plans are deterministic.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (requests[a].bytes != requests[b].bytes) return requests[a].bytes > requests[b].bytes;
    return requests[a].first_step < requests[b].first_step;
  });
  struct Placed {
    size_t offset, size;
    int first, last;
  };
  std::vector<Placed> placed;
  for (size_t idx : order) {
    const BufferRequest& r = requests[idx];
    if (r.last_step < r.first_step) throw Error(ErrorCode::kInternal, "plan_memory: buffer dies before it is written");
    const size_t size = align(std::max<size_t>(r.bytes, 1));
    plan.total_bytes += size;
    // Occupied ranges of buffers alive at the same time, sorted by offset.
    std::vector<std::pair<size_t, size_t>> busy;
    for (const Placed& p : placed)
      if (p.first <= r.last_step && r.first_step <= p.last) busy.emplace_back(p.offset, p.offset + p.size);
    std::sort(busy.begin(), busy.end());
    // The smallest gap that fits (best fit), else the end.
    size_t best = SIZE_MAX, best_gap = SIZE_MAX, cursor = 0;
    for (const auto& [begin, end] : busy) {
      if (begin > cursor && begin - cursor >= size && begin - cursor < best_gap) {
        best = cursor;
        best_gap = begin - cursor;
      }
      cursor = std::max(cursor, end);
    }
    if (best == SIZE_MAX) best = cursor;
    plan.offsets[idx] = best;
    plan.arena_bytes = std::max(plan.arena_bytes, best + size);
    placed.push_back({best, size, r.first_step, r.last_step});
  }
  return plan;
}

}  // namespace kiln::cpu
