// The dynamic batcher: request validation, the priority queues, batch formation, the instance
// worker threads, input concatenation and output splitting, and ordered delivery.
#include "serve/batcher.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>

#include "kiln/error.h"

namespace kiln::serve {

namespace {

uint64_t elapsed_us(std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(to - from).count());
}

std::string dims_of(const Tensor& t) {
  return std::string(dtype_name(t.dtype())) + "[" + shape_to_string(t.shape()) + "]";
}

// Requests merge when their inputs have the same names, dtypes and non-batch dims.
bool compatible(const TensorMap& a, const TensorMap& b) {
  if (a.size() != b.size()) return false;
  for (auto ia = a.begin(), ib = b.begin(); ia != a.end(); ++ia, ++ib) {
    if (ia->first != ib->first) return false;
    const Tensor& x = ia->second;
    const Tensor& y = ib->second;
    if (x.dtype() != y.dtype() || x.rank() != y.rank()) return false;
    for (size_t d = 1; d < x.rank(); ++d)
      if (x.dim(d) != y.dim(d)) return false;
  }
  return true;
}

void answer(const std::function<void(InferResponse)>& cb, InferResponse r) {
  if (!cb) return;
  // A throwing callback must not take a worker thread (and every later request) down with it.
  try {
    cb(std::move(r));
  } catch (...) {
  }
}

}  // namespace

int64_t SteadyClock::now_us() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Tensor concat_rows(const std::vector<const Tensor*>& parts) {
  if (parts.empty()) throw Error(ErrorCode::kInternal, "concat_rows: no tensors");
  const Tensor& first = *parts[0];
  if (first.rank() == 0) throw Error(ErrorCode::kInternal, "concat_rows: a scalar has no rows");
  int64_t rows = 0;
  for (const Tensor* p : parts) {
    if (p->dtype() != first.dtype() || p->rank() != first.rank() ||
        !std::equal(p->shape().begin() + 1, p->shape().end(), first.shape().begin() + 1))
      throw Error(ErrorCode::kInternal, "concat_rows: " + dims_of(*p) + " does not match " + dims_of(first));
    rows += p->dim(0);
  }
  std::vector<int64_t> shape = first.shape();
  shape[0] = rows;
  Tensor out(first.dtype(), shape);
  auto* dst = static_cast<char*>(out.mutable_raw());
  for (const Tensor* p : parts) {
    if (p->nbytes()) std::memcpy(dst, p->raw(), p->nbytes());
    dst += p->nbytes();
  }
  return out;
}

Tensor slice_rows(const Tensor& t, int64_t begin, int64_t count) {
  if (t.rank() == 0 || begin < 0 || count < 0 || begin + count > t.dim(0))
    throw Error(ErrorCode::kInternal, "slice_rows: rows [" + std::to_string(begin) + ", " +
                                          std::to_string(begin + count) + ") outside " + dims_of(t));
  std::vector<int64_t> shape = t.shape();
  shape[0] = count;
  Tensor out(t.dtype(), shape);
  size_t row_bytes = t.dim(0) ? t.nbytes() / static_cast<size_t>(t.dim(0)) : 0;
  if (out.nbytes())
    std::memcpy(out.mutable_raw(), static_cast<const char*>(t.raw()) + row_bytes * static_cast<size_t>(begin),
                out.nbytes());
  return out;
}

Batcher::Batcher(BatcherOptions options, InstanceFactory factory, std::shared_ptr<const Clock> clock)
    : options_(std::move(options)), clock_(clock ? std::move(clock) : std::make_shared<SteadyClock>()) {
  auto bad = [](const std::string& m) { throw Error(ErrorCode::kInvalidArgument, "batcher: " + m); };
  const BatcherOptions& o = options_;
  if (o.max_batch_size < 0) bad("max_batch_size must be >= 0, got " + std::to_string(o.max_batch_size));
  for (int64_t p : o.preferred_batch_sizes) {
    if (o.max_batch_size == 0) bad("preferred_batch_size needs max_batch_size > 0 (the model does not batch)");
    if (p < 1 || p > o.max_batch_size)
      bad("preferred_batch_size " + std::to_string(p) + " is outside 1.." + std::to_string(o.max_batch_size));
  }
  if (o.instance_count < 1) bad("instance_count must be >= 1, got " + std::to_string(o.instance_count));
  if (o.priority_levels < 0) bad("priority_levels must be >= 0, got " + std::to_string(o.priority_levels));
  int levels = std::max(1, o.priority_levels);
  if (o.priority_levels > 0 && (o.default_priority_level < 1 || o.default_priority_level > o.priority_levels))
    bad("default_priority_level " + std::to_string(o.default_priority_level) + " is outside 1.." +
        std::to_string(o.priority_levels));
  if (o.priority_levels == 0 && o.default_priority_level != 0)
    bad("default_priority_level needs priority_levels > 0");
  for (const auto& [level, policy] : o.priority_queue_policy)
    if (level < 1 || level > o.priority_levels)
      bad("priority_queue_policy for level " + std::to_string(level) + ", outside 1.." +
          std::to_string(o.priority_levels));
  if (!factory) bad("no instance factory");

  cap_ = o.preferred_batch_sizes.empty()
             ? o.max_batch_size
             : *std::max_element(o.preferred_batch_sizes.begin(), o.preferred_batch_sizes.end());
  levels_.resize(static_cast<size_t>(levels));
  for (int l = 0; l < levels; ++l) {
    auto it = o.priority_queue_policy.find(l + 1);
    levels_[static_cast<size_t>(l)].policy = it != o.priority_queue_policy.end() ? it->second : o.default_queue_policy;
  }
  for (int i = 0; i < o.instance_count; ++i) {
    instances_.push_back(factory(i));
    if (!instances_.back().run) bad("the instance factory returned no function for instance " + std::to_string(i));
  }
  for (int i = 0; i < o.instance_count; ++i) workers_.emplace_back([this, i] { worker(i); });
}

Batcher::~Batcher() { shutdown(true); }

std::optional<std::string> Batcher::validate(const InferRequest& r, int64_t* rows) const {
  *rows = 1;
  if (r.inputs.empty()) return "the request has no inputs";
  int levels = static_cast<int>(levels_.size());
  if (r.priority < 0 || r.priority > levels)
    return "priority " + std::to_string(r.priority) + " is outside 0.." + std::to_string(levels) +
           " (0: the default level)";
  for (const auto& [name, t] : r.inputs) {
    if (!t.defined()) return "input '" + name + "' has no data";
    if (options_.max_batch_size == 0) continue;
    if (t.rank() == 0) return "input '" + name + "' is a scalar, but the model batches: it needs a leading batch dim";
    if (t.dim(0) < 1) return "input '" + name + "' has batch size " + std::to_string(t.dim(0)) + "; it must be >= 1";
    if (name != r.inputs.begin()->first && t.dim(0) != *rows)
      return "input '" + name + "' has batch size " + std::to_string(t.dim(0)) + " but input '" +
             r.inputs.begin()->first + "' has " + std::to_string(*rows);
    *rows = t.dim(0);
  }
  if (options_.max_batch_size > 0 && *rows > options_.max_batch_size)
    return "batch size " + std::to_string(*rows) + " exceeds the model's max_batch_size " +
           std::to_string(options_.max_batch_size);
  return std::nullopt;
}

std::optional<RequestError> Batcher::enqueue(InferRequest request) {
  auto reject = [&](RequestError e, const std::string& message) {
    stats_.failed(e, false);
    InferResponse r;
    r.error = e;
    r.message = message;
    answer(request.on_complete, std::move(r));
    return e;
  };
  int64_t rows = 1;
  if (auto problem = validate(request, &rows)) return reject(RequestError::kInvalid, *problem);
  {
    std::unique_lock lk(mu_);
    if (stopping_) {
      lk.unlock();
      return reject(RequestError::kShuttingDown, "the model is shutting down and accepts no new requests");
    }
    int level = request.priority ? request.priority : std::max(1, options_.default_priority_level);
    Level& q = levels_[static_cast<size_t>(level - 1)];
    if (q.policy.max_queue_size && q.size() >= q.policy.max_queue_size) {
      lk.unlock();
      return reject(RequestError::kQueueFull, "the queue of priority level " + std::to_string(level) + " is full (" +
                                                  std::to_string(q.policy.max_queue_size) + " requests)");
    }
    Pending p;
    p.rows = rows;
    p.arrival_us = clock_->now_us();
    uint64_t timeout = q.policy.default_timeout_microseconds;
    if (q.policy.allow_timeout_override && request.timeout_us && (!timeout || request.timeout_us < timeout))
      timeout = request.timeout_us;
    p.deadline_us = timeout ? p.arrival_us + static_cast<int64_t>(timeout) : kNever;
    p.action = q.policy.timeout_action;
    p.seq = next_seq_++;
    p.request = std::move(request);
    if (p.deadline_us != kNever) ++timed_;
    q.queue.push_back(std::move(p));
    ++queued_;
    stats_.accepted();
  }
  cv_.notify_all();
  return std::nullopt;
}

std::future<InferResponse> Batcher::submit(TensorMap inputs, int priority, uint64_t timeout_us,
                                           std::vector<std::string> outputs) {
  auto promise = std::make_shared<std::promise<InferResponse>>();
  auto future = promise->get_future();
  InferRequest r;
  r.inputs = std::move(inputs);
  r.outputs = std::move(outputs);
  r.priority = priority;
  r.timeout_us = timeout_us;
  r.on_complete = [promise](InferResponse resp) { promise->set_value(std::move(resp)); };
  enqueue(std::move(r));
  return future;
}

void Batcher::pause() {
  std::lock_guard lk(mu_);
  paused_ = true;
}

void Batcher::resume() {
  {
    std::lock_guard lk(mu_);
    paused_ = false;
  }
  cv_.notify_all();
}

void Batcher::poke() {
  { std::lock_guard lk(mu_); }  // orders the clock's move before the workers' re-check
  cv_.notify_all();
}

void Batcher::shutdown(bool drain) {
  std::vector<Done> failed;
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    if (!drain) {
      for (Level& q : levels_)
        for (auto* dq : {&q.queue, &q.delayed}) {
          for (Pending& p : *dq) {
            stats_.dropped_from_queue();
            stats_.failed(RequestError::kShuttingDown, false);
            failed.push_back(
                failure(p, RequestError::kShuttingDown, "the model was shut down before this request ran"));
          }
          dq->clear();
        }
      queued_ = 0;
      timed_ = 0;
    }
  }
  cv_.notify_all();
  deliver(std::move(failed));
  std::lock_guard join(join_mu_);
  for (std::thread& t : workers_)
    if (t.joinable()) t.join();
}

Batcher::Done Batcher::failure(Pending& p, RequestError e, std::string message) {
  InferResponse r;
  r.error = e;
  r.message = std::move(message);
  return Done{p.seq, std::move(p.request.on_complete), std::move(r)};
}

void Batcher::expire(int64_t now, std::vector<Done>& failed, int64_t& wake) {
  if (!timed_) return;
  for (Level& q : levels_) {
    std::deque<Pending> keep;
    for (Pending& p : q.queue) {
      if (p.deadline_us == kNever) {
        keep.push_back(std::move(p));
      } else if (p.deadline_us > now) {
        wake = std::min(wake, p.deadline_us);
        keep.push_back(std::move(p));
      } else if (p.action == TimeoutAction::kDelay) {
        --timed_;
        q.delayed.push_back(std::move(p));
      } else {
        --timed_;
        --queued_;
        stats_.dropped_from_queue();
        stats_.failed(RequestError::kTimeout, false);
        uint64_t waited = static_cast<uint64_t>(now - p.arrival_us);
        failed.push_back(failure(p, RequestError::kTimeout,
                                 "the request timed out after " + std::to_string(waited) + " us in the queue"));
      }
    }
    q.queue = std::move(keep);
  }
}

std::vector<Batcher::Pending> Batcher::next_batch(int64_t now, int64_t& wake) {
  // The queue order: levels by priority; in each, unexpired requests then delayed ones.
  std::vector<std::deque<Pending>*> order;
  for (Level& q : levels_) order.push_back(&q.queue), order.push_back(&q.delayed);
  const Pending* head = nullptr;
  for (auto* dq : order)
    if (!dq->empty()) {
      head = &dq->front();
      break;
    }
  if (!head) return {};

  size_t take = 1;
  if (options_.max_batch_size > 0 && options_.merge) {
    int64_t rows = 0, oldest = head->arrival_us;
    size_t count = 0, preferred = 0;
    bool closed = false;
    for (auto* dq : order) {
      for (const Pending& p : *dq) {
        if (count > 0 && (rows + p.rows > cap_ || !compatible(head->request.inputs, p.request.inputs))) {
          closed = true;
          break;
        }
        rows += p.rows;
        ++count;
        oldest = std::min(oldest, p.arrival_us);
        if (std::find(options_.preferred_batch_sizes.begin(), options_.preferred_batch_sizes.end(), rows) !=
            options_.preferred_batch_sizes.end())
          preferred = count;
        if (rows >= cap_) {
          closed = true;
          break;
        }
      }
      if (closed) break;
    }
    // Without a delay a preferred size still wins over a larger batch, as in Triton.
    const bool has_delay = options_.max_queue_delay_us > 0;
    int64_t due = oldest + static_cast<int64_t>(options_.max_queue_delay_us);
    bool delay_over = has_delay && now >= due;
    if (preferred && !delay_over) {
      take = preferred;
    } else if (closed || !has_delay || delay_over || stopping_) {
      take = count;
      if (options_.spread_over_idle_instances && idle_ > 0 && count > 1) {
        // Idle instances: this one takes an even share of the rows; the idle ones take the rest.
        const int64_t share = (rows + idle_) / (idle_ + 1);
        int64_t got = 0;
        size_t n = 0;
        for (auto* dq : order) {
          for (auto it = dq->begin(); it != dq->end() && n < count && got < share; ++it) got += it->rows, ++n;
          if (n == count || got >= share) break;
        }
        take = n;
      }
    } else {
      wake = std::min(wake, due);
      return {};
    }
  }

  std::vector<Pending> batch;
  for (auto* dq : order) {
    while (batch.size() < take && !dq->empty()) {
      batch.push_back(std::move(dq->front()));
      dq->pop_front();
    }
  }
  for (Pending& p : batch) {
    if (p.deadline_us != kNever && p.deadline_us > now) --timed_;  // delayed ones were uncounted already
    p.dispatch_us = now;
  }
  queued_ -= batch.size();
  stats_.dispatched(batch.size());
  return batch;
}

void Batcher::worker(int index) {
  std::unique_lock lk(mu_);
  for (;;) {
    int64_t now = clock_->now_us();
    int64_t wake = kNever;
    std::vector<Done> failed;
    expire(now, failed, wake);
    std::vector<Pending> batch;
    if (!paused_ || stopping_) batch = next_batch(now, wake);
    bool exit = batch.empty() && stopping_ && queued_ == 0;
    if (!failed.empty() || !batch.empty()) {
      if (!batch.empty() && queued_ > 0 && idle_ > 0) cv_.notify_all();  // the rest is theirs to take
      lk.unlock();
      deliver(std::move(failed));
      if (!batch.empty()) run_batch(index, batch);
      lk.lock();
      continue;
    }
    if (exit) return;
    ++idle_;
    if (wake == kNever || !clock_->is_steady_clock()) {
      cv_.wait(lk);
    } else {
      cv_.wait_until(lk, std::chrono::steady_clock::time_point(std::chrono::microseconds(wake)));
    }
    --idle_;
  }
}

void Batcher::run_batch(int index, std::vector<Pending>& batch) {
  using Steady = std::chrono::steady_clock;
  auto fail_all = [&](RequestError e, const std::string& message) {
    std::vector<Done> done;
    for (Pending& p : batch) {
      stats_.failed(e, true);
      done.push_back(failure(p, e, message));
    }
    deliver(std::move(done));
  };
  const bool batching = options_.max_batch_size > 0;
  int64_t rows = 0;
  for (const Pending& p : batch) rows += p.rows;

  auto t0 = Steady::now();
  TensorMap inputs;
  TensorMap outputs;
  const InstanceFns& instance = instances_[static_cast<size_t>(index)];
  const bool gathers = instance.run_parts && batch.size() > 1;  // the instance assembles the batch
  try {
    if (gathers) {
      // Assembled by the instance (its time counts as compute_infer).
    } else if (batch.size() == 1) {
      inputs = batch[0].request.inputs;  // shares the buffers: no copy for a lone request
    } else {
      for (const auto& [name, t] : batch[0].request.inputs) {
        std::vector<const Tensor*> parts;
        for (const Pending& p : batch) parts.push_back(&p.request.inputs.at(name));
        inputs[name] = concat_rows(parts);
      }
    }
  } catch (const std::exception& e) {
    fail_all(RequestError::kExecution, std::string("assembling the batch failed: ") + e.what());
    return;
  }
  auto t1 = Steady::now();
  try {
    if (gathers) {
      std::vector<const TensorMap*> parts;
      for (const Pending& p : batch) parts.push_back(&p.request.inputs);
      outputs = instance.run_parts(parts, rows);
    } else {
      outputs = instance.run(inputs);
    }
  } catch (const std::exception& e) {
    fail_all(RequestError::kExecution, "instance " + std::to_string(index) + " failed: " + e.what());
    return;
  }
  auto t2 = Steady::now();
  stats_.executed(rows);
  if (batching) {
    for (const auto& [name, t] : outputs)
      if (t.rank() == 0 || t.dim(0) != rows) {
        fail_all(RequestError::kExecution, "output '" + name + "' has shape " + dims_of(t) + ", but the batch has " +
                                               std::to_string(rows) + " rows: it cannot be split per request");
        return;
      }
  }

  std::vector<Done> done;
  std::vector<bool> succeeded;
  int64_t row = 0;
  for (Pending& p : batch) {
    InferResponse r;
    std::vector<std::string> wanted = p.request.outputs;
    if (wanted.empty())
      for (const auto& [name, t] : outputs) wanted.push_back(name);
    for (const std::string& name : wanted) {
      auto it = outputs.find(name);
      if (it == outputs.end()) {
        std::string known;
        for (const auto& [n, t] : outputs) known += (known.empty() ? "" : ", ") + n;
        r.error = RequestError::kInvalid;
        r.message = "the model has no output '" + name + "' (outputs: " + known + ")";
        r.outputs.clear();
        break;
      }
      r.outputs[name] = batching && batch.size() > 1 ? slice_rows(it->second, row, p.rows) : it->second;
    }
    row += p.rows;
    succeeded.push_back(r.ok());
    done.push_back(Done{p.seq, std::move(p.request.on_complete), std::move(r)});
  }
  auto t3 = Steady::now();
  int64_t finished = clock_->now_us();
  for (size_t i = 0; i < batch.size(); ++i) {
    if (succeeded[i]) {
      stats_.succeeded(static_cast<uint64_t>(finished - batch[i].arrival_us),
                       static_cast<uint64_t>(batch[i].dispatch_us - batch[i].arrival_us), elapsed_us(t0, t1),
                       elapsed_us(t1, t2), elapsed_us(t2, t3));
    } else {
      stats_.failed(RequestError::kInvalid, true);
    }
  }
  deliver(std::move(done));
}

void Batcher::deliver(std::vector<Done> done) {
  if (done.empty()) return;
  if (!options_.preserve_ordering) {
    for (Done& d : done) answer(d.callback, std::move(d.response));
    return;
  }
  std::unique_lock lk(order_mu_);
  for (Done& d : done) {
    uint64_t seq = d.seq;
    held_.emplace(seq, std::move(d));
  }
  // One thread delivers at a time, so callbacks run in sequence order; others just leave theirs.
  if (delivering_) return;
  delivering_ = true;
  for (;;) {
    std::vector<Done> ready;
    for (auto it = held_.begin(); it != held_.end() && it->first == next_delivery_; it = held_.erase(it)) {
      ready.push_back(std::move(it->second));
      ++next_delivery_;
    }
    if (ready.empty()) break;
    lk.unlock();
    for (Done& d : ready) answer(d.callback, std::move(d.response));
    lk.lock();
  }
  delivering_ = false;
}

}  // namespace kiln::serve
