// The dynamic batcher and instance scheduler of `kiln serve`: queues inference requests by
// priority, merges compatible ones into batches and runs them on a model's instances.
//
// Policy (Triton's dynamic batcher):
// - Queue order: priority levels 1..N (1 first); within a level, requests in arrival order, then
//   the level's delayed requests (those whose timeout expired under timeout_action DELAY).
// - A batch is formed only when an instance is idle, from the front of that order: requests are
//   taken while their inputs agree with the first one (same names, dtypes and non-batch dims) and
//   the rows fit the cap (the largest preferred batch size, else max_batch_size; a first request
//   always fits). An incompatible or non-fitting request closes the batch.
// - Dispatch: when a preferred size is reachable, the largest such prefix runs at once (the rest
//   waits for the next idle instance), unless the oldest request has already waited
//   max_queue_delay_us, in which case everything gathered runs. Otherwise the
//   gathered requests run when the batch cannot grow (cap reached, or closed), when the oldest has
//   waited max_queue_delay_us, when that delay is 0, or when draining at shutdown; otherwise the
//   idle instance sleeps until more requests come or the delay runs out.
// - Spreading (spread_over_idle_instances, Kiln's addition): when such a batch is dispatched while
//   other instances sit idle, it is split evenly, by rows and in queue order, over this instance
//   and the idle ones, so its parts run at once (on several GPUs, or on instances with their own
//   cores) instead of whole on one while the others wait. Batches formed at a preferred size are
//   not split.
// - The batch's inputs are concatenated along dim 0, the instance runs once, and every output is
//   split back by each request's rows. max_batch_size 0: the model does not batch; each request
//   runs alone with its inputs as given.
// - Per-level queue policy: max_queue_size (enqueue past it fails at once with kQueueFull),
//   default timeout (a request may shorten it when allow_timeout_override), timeout_action REJECT
//   (an expired queued request is answered kTimeout without running) or DELAY (it moves behind the
//   level's unexpired requests). A timeout covers queueing only: a dispatched request runs.
// - preserve_ordering: responses are delivered in acceptance order, whatever order batches finish.
// - Every request is answered exactly once through its callback: a rejected one before enqueue()
//   returns, an accepted one from a batcher thread. shutdown(drain) stops accepting
//   (kShuttingDown); drain runs everything queued at once, without waiting for delays; no drain
//   fails the queued requests with kShuttingDown. In-flight batches always finish.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "ir/tensor.h"
#include "serve/model_config.h"
#include "serve/stats.h"

namespace kiln::serve {

using TensorMap = std::map<std::string, Tensor>;

// TimeoutAction and QueuePolicy (per-level queue settings) come from the model configuration.

// The batcher's settings; the model configuration fills them.
struct BatcherOptions {
  int64_t max_batch_size = 0;                // 0: no batching (each request runs alone)
  std::vector<int64_t> preferred_batch_sizes;  // each in 1..max_batch_size
  uint64_t max_queue_delay_us = 0;           // how long a partial batch may wait to grow
  bool preserve_ordering = false;
  int priority_levels = 0;                   // 0: a single level
  int default_priority_level = 0;            // 1..priority_levels when there are levels
  QueuePolicy default_queue_policy;
  std::map<int, QueuePolicy> priority_queue_policy;  // by level; others use the default policy
  int instance_count = 1;                    // worker threads, each with its own instance
  // false: requests are never merged; each runs alone with its own batch (Triton's default
  // scheduler, for a batching model without dynamic_batching).
  bool merge = true;
  // Split a dispatched batch over the instances idle at that moment (see the policy above).
  bool spread_over_idle_instances = true;
};

struct InferResponse {
  std::optional<RequestError> error;  // empty: success
  std::string message;                // why it failed
  TensorMap outputs;                  // this request's rows of the outputs it asked for

  bool ok() const { return !error.has_value(); }
};

struct InferRequest {
  // With batching, every input has a leading batch dim of the same size b >= 1.
  TensorMap inputs;
  std::vector<std::string> outputs;  // the outputs wanted; empty: all of them
  int priority = 0;                  // 1 is highest; 0: the default level
  uint64_t timeout_us = 0;           // 0: the level's default timeout
  std::function<void(InferResponse)> on_complete;  // called exactly once
};

// Runs one batch on one instance. Called from a single thread at a time per instance.
using ExecuteFn = std::function<TensorMap(const TensorMap&)>;
// Runs one batch given as its requests' inputs, in batch order (each with its own rows), instead
// of concatenated: for an instance that gathers the rows itself (a GPU instance copies each
// request straight into its pinned staging buffers, saving the batcher's copy). Returns the whole
// batch's outputs, like ExecuteFn.
using ExecutePartsFn = std::function<TensorMap(const std::vector<const TensorMap*>& parts, int64_t rows)>;
// One instance's functions: `run` always; `run_parts`, when set, for batches of several requests.
struct InstanceFns {
  ExecuteFn run;
  ExecutePartsFn run_parts;
  InstanceFns() = default;
  InstanceFns(ExecuteFn r, ExecutePartsFn p) : run(std::move(r)), run_parts(std::move(p)) {}
  template <class F, class = std::enable_if_t<std::is_constructible_v<ExecuteFn, F> &&
                                              !std::is_same_v<std::decay_t<F>, InstanceFns>>>
  InstanceFns(F&& f) : run(std::forward<F>(f)) {}  // NOLINT: any callable of ExecuteFn's signature
};
// Creates instance `index` (0-based), e.g. around its own Context.
using InstanceFactory = std::function<InstanceFns(int index)>;

// Time source for arrivals, queue delays and timeouts, in microseconds. A real clock lets idle
// instances sleep until the next deadline; with any other clock they sleep until woken (enqueue,
// resume, poke), so tests move time explicitly.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t now_us() const = 0;
  virtual bool is_steady_clock() const { return false; }
};

class SteadyClock : public Clock {
 public:
  int64_t now_us() const override;
  bool is_steady_clock() const override { return true; }
};

class ManualClock : public Clock {
 public:
  int64_t now_us() const override { return now_.load(); }
  void advance(int64_t us) { now_ += us; }

 private:
  std::atomic<int64_t> now_{0};
};

// Concatenates tensors of equal dtype and non-batch dims along dim 0.
Tensor concat_rows(const std::vector<const Tensor*>& parts);
// Rows [begin, begin + count) of `t` as a new tensor.
Tensor slice_rows(const Tensor& t, int64_t begin, int64_t count);

class Batcher {
 public:
  // Checks the options (kInvalidArgument naming the field), creates the instances with `factory`
  // on this thread (its errors propagate) and starts one worker thread per instance.
  Batcher(BatcherOptions options, InstanceFactory factory, std::shared_ptr<const Clock> clock = nullptr);
  ~Batcher();  // shutdown(true)
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues a request. Returns the error it was rejected with (its callback has then already been
  // called with it), or nothing when accepted.
  std::optional<RequestError> enqueue(InferRequest request);
  // enqueue() with a future in place of the callback.
  std::future<InferResponse> submit(TensorMap inputs, int priority = 0, uint64_t timeout_us = 0,
                                    std::vector<std::string> outputs = {});

  // Stops accepting and joins the workers once every accepted request is answered (see above).
  // Later calls return at once. Never call it from a completion callback: callbacks run on the
  // worker threads it joins.
  void shutdown(bool drain = true);

  // While paused no batch is formed (timeouts still apply); requests accumulate. Used to hold a
  // model during reload, and by tests to queue requests deterministically.
  void pause();
  void resume();
  // Re-evaluates delays and timeouts now (after a non-steady clock moved).
  void poke();

  StatsSnapshot stats() const { return stats_.snapshot(); }
  // Instances waiting for work now.
  int idle_instances() const {
    std::lock_guard lk(mu_);
    return idle_;
  }
  const BatcherOptions& options() const { return options_; }

 private:
  struct Pending {
    InferRequest request;
    uint64_t seq = 0;           // acceptance order, for preserve_ordering
    int64_t rows = 1;
    int64_t arrival_us = 0;
    int64_t deadline_us = 0;    // kNever when the request has no timeout
    int64_t dispatch_us = 0;
    TimeoutAction action = TimeoutAction::kReject;
  };
  struct Level {
    QueuePolicy policy;
    std::deque<Pending> queue;    // unexpired, arrival order
    std::deque<Pending> delayed;  // expired under DELAY, after `queue`
    size_t size() const { return queue.size() + delayed.size(); }
  };
  struct Done {
    uint64_t seq;
    std::function<void(InferResponse)> callback;
    InferResponse response;
  };

  std::optional<std::string> validate(const InferRequest& r, int64_t* rows) const;
  void worker(int index);
  // Under mu_: expires timed-out requests (REJECT ones into `failed`), lowers `wake` to the next
  // deadline.
  void expire(int64_t now, std::vector<Done>& failed, int64_t& wake);
  // Under mu_: pops the next batch per the policy, or lowers `wake` to when it is due.
  std::vector<Pending> next_batch(int64_t now, int64_t& wake);
  void run_batch(int index, std::vector<Pending>& batch);
  static Done failure(Pending& p, RequestError e, std::string message);
  void deliver(std::vector<Done> done);

  static constexpr int64_t kNever = INT64_MAX;

  BatcherOptions options_;
  std::shared_ptr<const Clock> clock_;
  int64_t cap_ = 0;  // most rows per batch
  std::vector<InstanceFns> instances_;
  std::vector<std::thread> workers_;
  Stats stats_;

  mutable std::mutex mu_;  // guards the queue state below
  std::condition_variable cv_;
  std::vector<Level> levels_;
  size_t queued_ = 0;
  size_t timed_ = 0;  // queued requests with a deadline still ahead
  int idle_ = 0;      // workers waiting for work
  uint64_t next_seq_ = 0;
  bool paused_ = false;
  bool stopping_ = false;

  std::mutex join_mu_;  // serializes shutdown's join

  std::mutex order_mu_;  // preserve_ordering: responses held until their predecessors are out
  std::map<uint64_t, Done> held_;
  uint64_t next_delivery_ = 0;
  bool delivering_ = false;
};

}  // namespace kiln::serve
