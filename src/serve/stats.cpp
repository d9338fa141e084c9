// Per-model serving counters: a mutex-guarded snapshot, updated once per request or batch.
#include "serve/stats.h"

namespace kiln::serve {

const char* request_error_name(RequestError e) {
  switch (e) {
    case RequestError::kQueueFull: return "queue_full";
    case RequestError::kTimeout: return "timeout";
    case RequestError::kShuttingDown: return "shutting_down";
    case RequestError::kInvalid: return "invalid";
    case RequestError::kExecution: return "execution";
  }
  return "unknown";
}

uint64_t StatsSnapshot::failures() const {
  uint64_t n = 0;
  for (uint64_t f : failure) n += f;
  return n;
}

void Stats::accepted() {
  std::lock_guard lk(mu_);
  ++s_.pending;
}

void Stats::dispatched(size_t requests) {
  std::lock_guard lk(mu_);
  s_.pending -= static_cast<int64_t>(requests);
  s_.in_flight += static_cast<int64_t>(requests);
}

void Stats::dropped_from_queue() {
  std::lock_guard lk(mu_);
  --s_.pending;
}

void Stats::failed(RequestError e, bool was_in_flight) {
  std::lock_guard lk(mu_);
  ++s_.failure[static_cast<size_t>(e)];
  if (was_in_flight) --s_.in_flight;
}

void Stats::succeeded(uint64_t request_us, uint64_t queue_us, uint64_t input_us, uint64_t infer_us,
                      uint64_t output_us) {
  std::lock_guard lk(mu_);
  ++s_.success;
  --s_.in_flight;
  s_.request_us += request_us;
  s_.queue_us += queue_us;
  s_.compute_input_us += input_us;
  s_.compute_infer_us += infer_us;
  s_.compute_output_us += output_us;
}

void Stats::executed(int64_t rows) {
  std::lock_guard lk(mu_);
  ++s_.execution_count;
  s_.inference_count += static_cast<uint64_t>(rows);
  ++s_.batch_sizes[rows];
}

StatsSnapshot Stats::snapshot() const {
  std::lock_guard lk(mu_);
  return s_;
}

}  // namespace kiln::serve
