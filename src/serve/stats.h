// Per-model serving counters (the figures `kiln serve` exports on /metrics under Triton's names),
// updated by the batcher's threads and read as consistent snapshots.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <mutex>

namespace kiln::serve {

// Why a request failed. The server maps these to protocol statuses (queue full: unavailable;
// timeout: request timeout; invalid: bad request; execution and shutting down: server errors).
enum class RequestError : uint8_t {
  kQueueFull,     // the request's priority level already holds max_queue_size requests
  kTimeout,       // its queue timeout expired before it was scheduled (timeout_action REJECT)
  kShuttingDown,  // the batcher stopped accepting, or was shut down without draining
  kInvalid,       // malformed request: no inputs, batch dims that disagree, too large a batch
  kExecution,     // the instance failed running the batch this request was part of
};
inline constexpr size_t kRequestErrorCount = 5;
// "queue_full", "timeout", "shutting_down", "invalid", "execution".
const char* request_error_name(RequestError e);

struct StatsSnapshot {
  uint64_t success = 0;                                   // requests answered with outputs
  std::array<uint64_t, kRequestErrorCount> failure{};     // failed requests, by RequestError
  uint64_t inference_count = 0;                           // samples (batch rows) inferred
  uint64_t execution_count = 0;                           // engine calls (batches)
  // Cumulative durations over successful requests, in microseconds. As in Triton, each request of
  // a batch is charged the whole batch's compute time.
  uint64_t request_us = 0;         // arrival to completion
  uint64_t queue_us = 0;           // arrival to dispatch
  uint64_t compute_input_us = 0;   // concatenating the batch's inputs
  uint64_t compute_infer_us = 0;   // the engine call
  uint64_t compute_output_us = 0;  // splitting outputs back to requests
  int64_t pending = 0;             // requests queued, not yet dispatched
  int64_t in_flight = 0;           // requests dispatched, not yet answered
  std::map<int64_t, uint64_t> batch_sizes;  // executions by batch size in rows

  uint64_t failures() const;
  uint64_t failures(RequestError e) const { return failure[static_cast<size_t>(e)]; }
};

class Stats {
 public:
  void accepted();                      // a request entered the queue
  void dispatched(size_t requests);     // queued requests left the queue for an instance
  void dropped_from_queue();            // a queued request failed without running
  void failed(RequestError e, bool was_in_flight);
  void succeeded(uint64_t request_us, uint64_t queue_us, uint64_t input_us, uint64_t infer_us,
                 uint64_t output_us);
  void executed(int64_t rows);
  StatsSnapshot snapshot() const;

 private:
  mutable std::mutex mu_;
  StatsSnapshot s_;
};

}  // namespace kiln::serve
