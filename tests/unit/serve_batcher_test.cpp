// Tests of the serving dynamic batcher: batch formation (merging, compatibility, preferred sizes,
// queue delay), priorities, queue limits, timeouts, ordering, errors, shutdown, a multi-thread
// flood, and a real engine behind two instances. Timing never decides an assertion: dispatch is
// made deterministic with pause()/resume() and a manual clock.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "runtime/builder.h"
#include "runtime/runtime.h"
#include "serve/batcher.h"
#include "test_support.h"

namespace {

using namespace kiln;
using namespace kiln::serve;
using kiln_test::seeded;

// A [rows, cols] f32 tensor whose element (r, c) is base + 100 r + c.
Tensor rows_tensor(int64_t rows, int64_t cols, float base) {
  std::vector<float> v;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) v.push_back(base + 100.f * static_cast<float>(r) + static_cast<float>(c));
  return Tensor::from_vector<float>({rows, cols}, v);
}

// The fake model: y = 3x + 1 elementwise, s = per-row sum of x as [rows, 1]. Records every batch.
struct FakeModel {
  std::mutex mu;
  std::vector<std::vector<int64_t>> batch_shapes;  // x's shape per execution, in order
  std::vector<std::vector<float>> batch_firsts;    // x[r, 0] of every row per execution
  std::function<void(const TensorMap&)> hook;      // runs before computing (blocking, throwing)

  TensorMap run(const TensorMap& in) {
    const Tensor& x = in.at("x");
    {
      std::lock_guard lk(mu);
      batch_shapes.push_back(x.shape());
      std::vector<float> firsts;
      int64_t cols = x.numel() / x.dim(0);
      for (int64_t r = 0; r < x.dim(0); ++r) firsts.push_back(x.data<float>()[r * cols]);
      batch_firsts.push_back(firsts);
    }
    if (hook) hook(in);
    Tensor y(DType::kF32, x.shape());
    Tensor s(DType::kF32, {x.dim(0), 1});
    int64_t cols = x.numel() / x.dim(0);
    for (int64_t r = 0; r < x.dim(0); ++r) {
      float sum = 0;
      for (int64_t c = 0; c < cols; ++c) {
        float v = x.data<float>()[r * cols + c];
        y.mutable_data<float>()[r * cols + c] = 3 * v + 1;
        sum += v;
      }
      s.mutable_data<float>()[r] = sum;
    }
    return {{"y", y}, {"s", s}};
  }
  InstanceFactory factory() {
    return [this](int) { return [this](const TensorMap& in) { return run(in); }; };
  }
  size_t executions() {
    std::lock_guard lk(mu);
    return batch_shapes.size();
  }
};

// Checks a response against values computed here from the request's own input.
void expect_fake_outputs(const InferResponse& r, const Tensor& x) {
  ASSERT_TRUE(r.ok()) << r.message;
  const Tensor& y = r.outputs.at("y");
  const Tensor& s = r.outputs.at("s");
  ASSERT_EQ(y.shape(), x.shape());
  ASSERT_EQ(s.shape(), (std::vector<int64_t>{x.dim(0), 1}));
  int64_t cols = x.numel() / x.dim(0);
  for (int64_t r0 = 0; r0 < x.dim(0); ++r0) {
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c) {
      double v = x.data<float>()[r0 * cols + c];
      EXPECT_FLOAT_EQ(y.data<float>()[r0 * cols + c], static_cast<float>(v * 3 + 1));
      sum += v;
    }
    EXPECT_NEAR(s.data<float>()[r0], sum, 1e-3);
  }
}

// Waits for a future without hanging the suite when the batcher is broken.
InferResponse get(std::future<InferResponse>& f) {
  if (f.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    ADD_FAILURE() << "no response";
    return InferResponse{RequestError::kExecution, "no response", {}};
  }
  return f.get();
}

// A latch the tests open from one thread while another waits (with a generous bound).
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  void release() {
    { std::lock_guard lk(mu); open = true; }
    cv.notify_all();
  }
  void wait() {
    std::unique_lock lk(mu);
    if (!cv.wait_for(lk, std::chrono::seconds(60), [&] { return open; })) ADD_FAILURE() << "gate never opened";
  }
};

TEST(ServeBatcher, MergesConcurrentRequestsIntoOneBatch) {
  FakeModel model;
  auto clock = std::make_shared<ManualClock>();  // frozen: the delay never runs out
  BatcherOptions o;
  o.max_batch_size = 8;
  o.max_queue_delay_us = 1'000'000;
  Batcher b(o, model.factory(), clock);
  std::vector<Tensor> xs;
  for (int i = 0; i < 8; ++i) xs.push_back(rows_tensor(1, 3, 1000.f * static_cast<float>(i)));
  std::vector<std::future<InferResponse>> fs(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < 8; ++i) threads.emplace_back([&, i] { fs[i] = b.submit({{"x", xs[i]}}); });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < 8; ++i) expect_fake_outputs(get(fs[i]), xs[i]);
  ASSERT_EQ(model.executions(), 1u);
  EXPECT_EQ(model.batch_shapes[0], (std::vector<int64_t>{8, 3}));
  StatsSnapshot s = b.stats();
  EXPECT_EQ(s.success, 8u);
  EXPECT_EQ(s.execution_count, 1u);
  EXPECT_EQ(s.inference_count, 8u);
  EXPECT_EQ(s.batch_sizes, (std::map<int64_t, uint64_t>{{8, 1}}));
  EXPECT_EQ(s.pending, 0);
  EXPECT_EQ(s.in_flight, 0);
  EXPECT_EQ(s.failures(), 0u);
}

TEST(ServeBatcher, RequestsOfSeveralRowsAreSplitBack) {
  FakeModel model;
  BatcherOptions o;
  o.max_batch_size = 8;
  Batcher b(o, model.factory());
  b.pause();
  Tensor a = rows_tensor(3, 2, 0.f), c = rows_tensor(1, 2, 5000.f), d = rows_tensor(4, 2, 9000.f);
  auto fa = b.submit({{"x", a}}), fc = b.submit({{"x", c}}), fd = b.submit({{"x", d}});
  b.resume();
  expect_fake_outputs(get(fa), a);
  expect_fake_outputs(get(fc), c);
  expect_fake_outputs(get(fd), d);
  ASSERT_EQ(model.executions(), 1u);
  EXPECT_EQ(model.batch_shapes[0], (std::vector<int64_t>{8, 2}));
  // Rows arrive in acceptance order: a's three, then c, then d's four.
  EXPECT_EQ(model.batch_firsts[0], (std::vector<float>{0, 100, 200, 5000, 9000, 9100, 9200, 9300}));
}

TEST(ServeBatcher, SelectsRequestedOutputs) {
  FakeModel model;
  BatcherOptions o;
  o.max_batch_size = 4;
  Batcher b(o, model.factory());
  b.pause();
  Tensor x1 = rows_tensor(1, 2, 1.f), x2 = rows_tensor(1, 2, 2.f);
  auto f1 = b.submit({{"x", x1}}, 0, 0, {"s"});
  auto f2 = b.submit({{"x", x2}}, 0, 0, {"nope"});
  b.resume();
  InferResponse r1 = get(f1), r2 = get(f2);
  ASSERT_TRUE(r1.ok()) << r1.message;
  ASSERT_EQ(r1.outputs.size(), 1u);
  EXPECT_FLOAT_EQ(r1.outputs.at("s").data<float>()[0], 1.f + 2.f);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(*r2.error, RequestError::kInvalid);
  EXPECT_NE(r2.message.find("no output 'nope'"), std::string::npos) << r2.message;
}

TEST(ServeBatcher, IncompatibleShapesAreNotMerged) {
  FakeModel model;
  BatcherOptions o;
  o.max_batch_size = 8;
  Batcher b(o, model.factory());
  b.pause();
  // A A B B A: an incompatible request closes the batch, so the batches are [A A] [B B] [A].
  std::vector<Tensor> xs = {rows_tensor(1, 3, 0.f), rows_tensor(1, 3, 1000.f), rows_tensor(1, 4, 2000.f),
                            rows_tensor(1, 4, 3000.f), rows_tensor(1, 3, 4000.f)};
  std::vector<std::future<InferResponse>> fs;
  for (const Tensor& x : xs) fs.push_back(b.submit({{"x", x}}));
  b.resume();
  for (size_t i = 0; i < xs.size(); ++i) expect_fake_outputs(get(fs[i]), xs[i]);
  ASSERT_EQ(model.executions(), 3u);
  EXPECT_EQ(model.batch_shapes[0], (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(model.batch_shapes[1], (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(model.batch_shapes[2], (std::vector<int64_t>{1, 3}));
}

TEST(ServeBatcher, DifferentDtypesOrInputNamesAreNotMerged) {
  std::atomic<int> calls{0};
  std::vector<size_t> rows_seen;
  std::mutex mu;
  InstanceFactory f = [&](int) {
    return [&](const TensorMap& in) {
      ++calls;
      std::lock_guard lk(mu);
      rows_seen.push_back(static_cast<size_t>(in.begin()->second.dim(0)));
      TensorMap out;
      out["n"] = Tensor(DType::kI64, {in.begin()->second.dim(0)});
      return out;
    };
  };
  BatcherOptions o;
  o.max_batch_size = 8;
  Batcher b(o, f);
  b.pause();
  auto f1 = b.submit({{"x", Tensor(DType::kF32, {1, 2})}});
  auto f2 = b.submit({{"x", Tensor(DType::kI32, {1, 2})}});
  auto f3 = b.submit({{"w", Tensor(DType::kI32, {1, 2})}});
  auto f4 = b.submit({{"w", Tensor(DType::kI32, {2, 2})}});
  b.resume();
  for (auto* f : {&f1, &f2, &f3, &f4}) EXPECT_TRUE(get(*f).ok());
  EXPECT_EQ(calls.load(), 3);
  EXPECT_EQ(rows_seen, (std::vector<size_t>{1, 1, 3}));
}

TEST(ServeBatcher, PreferredBatchSizeDispatchesAtOnce) {
  FakeModel model;
  auto clock = std::make_shared<ManualClock>();
  BatcherOptions o;
  o.max_batch_size = 8;
  o.preferred_batch_sizes = {2, 4};
  o.max_queue_delay_us = 500;
  Batcher b(o, model.factory(), clock);
  b.pause();
  std::vector<Tensor> xs;
  std::vector<std::future<InferResponse>> fs;
  for (int i = 0; i < 7; ++i) {
    xs.push_back(rows_tensor(1, 2, 10.f * static_cast<float>(i)));
    fs.push_back(b.submit({{"x", xs.back()}}));
  }
  b.resume();
  // 7 queued: 4 (the largest preferred size) runs, then 2; the last one waits for the delay.
  for (size_t i = 0; i < 6; ++i) expect_fake_outputs(get(fs[i]), xs[i]);
  EXPECT_EQ(fs[6].wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
  clock->advance(500);
  b.poke();
  expect_fake_outputs(get(fs[6]), xs[6]);
  ASSERT_EQ(model.executions(), 3u);
  EXPECT_EQ(model.batch_shapes[0][0], 4);
  EXPECT_EQ(model.batch_shapes[1][0], 2);
  EXPECT_EQ(model.batch_shapes[2][0], 1);
}

TEST(ServeBatcher, MaxQueueDelayDispatchesAPartialBatch) {
  FakeModel model;
  auto clock = std::make_shared<ManualClock>();
  BatcherOptions o;
  o.max_batch_size = 8;
  o.max_queue_delay_us = 1000;
  Batcher b(o, model.factory(), clock);
  std::vector<Tensor> xs;
  std::vector<std::future<InferResponse>> fs;
  for (int i = 0; i < 3; ++i) {
    xs.push_back(rows_tensor(1, 2, 7.f * static_cast<float>(i)));
    fs.push_back(b.submit({{"x", xs.back()}}));
  }
  clock->advance(999);
  b.poke();
  b.poke();
  EXPECT_EQ(model.executions(), 0u);  // nothing is due: the clock has not reached the delay
  clock->advance(1);
  b.poke();
  for (size_t i = 0; i < 3; ++i) expect_fake_outputs(get(fs[i]), xs[i]);
  ASSERT_EQ(model.executions(), 1u);
  EXPECT_EQ(model.batch_shapes[0][0], 3);
  EXPECT_EQ(b.stats().queue_us, 3u * 1000u);  // each request waited exactly 1000 us of clock time
}

TEST(ServeBatcher, RealClockDelayFiresWithoutPoke) {
  FakeModel model;
  BatcherOptions o;
  o.max_batch_size = 8;
  o.max_queue_delay_us = 2000;
  Batcher b(o, model.factory());
  Tensor x = rows_tensor(1, 2, 3.f);
  auto f = b.submit({{"x", x}});
  expect_fake_outputs(get(f), x);
  EXPECT_EQ(model.executions(), 1u);
}

TEST(ServeBatcher, HigherPriorityRunsInTheFirstBatch) {
  FakeModel model;
  BatcherOptions o;
  o.max_batch_size = 2;
  o.priority_levels = 2;
  o.default_priority_level = 2;
  Batcher b(o, model.factory());
  b.pause();
  std::vector<std::future<InferResponse>> fs;
  for (int i = 0; i < 3; ++i) fs.push_back(b.submit({{"x", rows_tensor(1, 2, static_cast<float>(i))}}));
  auto high = b.submit({{"x", rows_tensor(1, 2, 50.f)}}, 1);
  b.resume();
  for (auto& f : fs) EXPECT_TRUE(get(f).ok());
  EXPECT_TRUE(get(high).ok());
  ASSERT_EQ(model.executions(), 2u);
  EXPECT_EQ(model.batch_firsts[0], (std::vector<float>{50, 0}));
  EXPECT_EQ(model.batch_firsts[1], (std::vector<float>{1, 2}));
}

TEST(ServeBatcher, QueueFullRejectsAtOnceAndTheRestSucceed) {
  FakeModel model;
  BatcherOptions o;
  o.max_batch_size = 4;
  o.default_queue_policy.max_queue_size = 2;
  Batcher b(o, model.factory());
  b.pause();
  Tensor x0 = rows_tensor(1, 2, 0.f), x1 = rows_tensor(1, 2, 10.f);
  auto f0 = b.submit({{"x", x0}});
  auto f1 = b.submit({{"x", x1}});
  int calls = 0;
  InferRequest over;
  over.inputs = {{"x", rows_tensor(1, 2, 20.f)}};
  RequestError got{};
  over.on_complete = [&](InferResponse r) {
    ++calls;
    got = *r.error;
  };
  EXPECT_EQ(b.enqueue(std::move(over)), RequestError::kQueueFull);
  EXPECT_EQ(calls, 1);  // answered before enqueue returned
  EXPECT_EQ(got, RequestError::kQueueFull);
  b.resume();
  expect_fake_outputs(get(f0), x0);
  expect_fake_outputs(get(f1), x1);
  StatsSnapshot s = b.stats();
  EXPECT_EQ(s.success, 2u);
  EXPECT_EQ(s.failures(RequestError::kQueueFull), 1u);
  // The queue has room again.
  Tensor x3 = rows_tensor(1, 2, 30.f);
  auto f3 = b.submit({{"x", x3}});
  expect_fake_outputs(get(f3), x3);
}

TEST(ServeBatcher, PerLevelQueueLimits) {
  FakeModel model;
  BatcherOptions o;
  o.max_batch_size = 4;
  o.priority_levels = 2;
  o.default_priority_level = 2;
  o.priority_queue_policy[1].max_queue_size = 1;  // level 2 keeps the unlimited default
  Batcher b(o, model.factory());
  b.pause();
  auto h1 = b.submit({{"x", rows_tensor(1, 2, 0.f)}}, 1);
  auto h2 = b.submit({{"x", rows_tensor(1, 2, 0.f)}}, 1);
  std::vector<std::future<InferResponse>> low;
  for (int i = 0; i < 5; ++i) low.push_back(b.submit({{"x", rows_tensor(1, 2, 0.f)}}));
  b.resume();
  EXPECT_TRUE(get(h1).ok());
  InferResponse r2 = get(h2);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(*r2.error, RequestError::kQueueFull);
  for (auto& f : low) EXPECT_TRUE(get(f).ok());
}

TEST(ServeBatcher, TimeoutRejectFailsExpiredRequestsWithoutRunningThem) {
  FakeModel model;
  auto clock = std::make_shared<ManualClock>();
  BatcherOptions o;
  o.max_batch_size = 4;
  o.default_queue_policy.default_timeout_microseconds = 100;
  o.default_queue_policy.allow_timeout_override = true;
  Batcher b(o, model.factory(), clock);
  b.pause();
  auto a = b.submit({{"x", rows_tensor(1, 2, 1.f)}});           // deadline 100
  clock->advance(50);
  auto c = b.submit({{"x", rows_tensor(1, 2, 2.f)}});           // deadline 150
  auto shorter = b.submit({{"x", rows_tensor(1, 2, 3.f)}}, 0, 10);  // override: deadline 60
  auto longer = b.submit({{"x", rows_tensor(1, 2, 4.f)}}, 0, 1000);  // a longer override is ignored: 150
  clock->advance(70);                                           // now 120
  b.poke();
  for (auto* f : {&a, &shorter}) {
    InferResponse r = get(*f);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(*r.error, RequestError::kTimeout);
    EXPECT_NE(r.message.find("timed out"), std::string::npos) << r.message;
  }
  b.resume();
  EXPECT_TRUE(get(c).ok());
  EXPECT_TRUE(get(longer).ok());
  ASSERT_EQ(model.executions(), 1u);
  EXPECT_EQ(model.batch_firsts[0], (std::vector<float>{2, 4}));
  StatsSnapshot s = b.stats();
  EXPECT_EQ(s.failures(RequestError::kTimeout), 2u);
  EXPECT_EQ(s.success, 2u);
  EXPECT_EQ(s.pending, 0);
}

TEST(ServeBatcher, TimeoutOverrideIsIgnoredWhenNotAllowed) {
  FakeModel model;
  auto clock = std::make_shared<ManualClock>();
  BatcherOptions o;
  o.max_batch_size = 4;
  Batcher b(o, model.factory(), clock);
  b.pause();
  auto f = b.submit({{"x", rows_tensor(1, 2, 1.f)}}, 0, 10);
  clock->advance(1000);
  b.poke();
  b.resume();
  EXPECT_TRUE(get(f).ok());
}

TEST(ServeBatcher, TimeoutDelayRunsExpiredRequestsAfterTheOthers) {
  FakeModel model;
  auto clock = std::make_shared<ManualClock>();
  BatcherOptions o;
  o.max_batch_size = 1;
  o.default_queue_policy.default_timeout_microseconds = 100;
  o.default_queue_policy.timeout_action = TimeoutAction::kDelay;
  Batcher b(o, model.factory(), clock);
  b.pause();
  auto a = b.submit({{"x", rows_tensor(1, 2, 1.f)}});  // expires at 100
  clock->advance(50);
  auto c = b.submit({{"x", rows_tensor(1, 2, 2.f)}});  // expires at 150
  auto d = b.submit({{"x", rows_tensor(1, 2, 3.f)}});
  clock->advance(70);
  b.resume();
  for (auto* f : {&a, &c, &d}) EXPECT_TRUE(get(*f).ok());
  ASSERT_EQ(model.executions(), 3u);
  EXPECT_EQ(model.batch_firsts[0][0], 2.f);
  EXPECT_EQ(model.batch_firsts[1][0], 3.f);
  EXPECT_EQ(model.batch_firsts[2][0], 1.f);  // the expired one, delayed behind the others
  EXPECT_EQ(b.stats().failures(), 0u);
}

// Two instances; request A's run does not finish until B's has (or until B was delivered).
void run_out_of_order(bool preserve, std::vector<int>* delivered) {
  FakeModel model;
  Gate b_done;
  model.hook = [&](const TensorMap& in) {
    if (in.at("x").data<float>()[0] == 1.f) b_done.wait();             // A
    else if (preserve) b_done.release();                                 // B ran: let A finish
  };
  BatcherOptions o;
  o.max_batch_size = 0;  // each request alone
  o.instance_count = 2;
  o.preserve_ordering = preserve;
  Batcher b(o, model.factory());
  b.pause();
  std::mutex mu;
  auto push = [&](int id) {
    std::lock_guard lk(mu);
    delivered->push_back(id);
  };
  InferRequest ra, rb;
  ra.inputs = {{"x", rows_tensor(1, 2, 1.f)}};
  rb.inputs = {{"x", rows_tensor(1, 2, 2.f)}};
  ra.on_complete = [&](InferResponse r) { EXPECT_TRUE(r.ok()); push(1); };
  rb.on_complete = [&](InferResponse r) {
    EXPECT_TRUE(r.ok());
    push(2);
    if (!preserve) b_done.release();  // B was delivered: let A finish
  };
  b.enqueue(std::move(ra));
  b.enqueue(std::move(rb));
  b.resume();
  b.shutdown(true);
  EXPECT_EQ(model.executions(), 2u);
}

TEST(ServeBatcher, PreserveOrderingDeliversInArrivalOrder) {
  std::vector<int> order;
  run_out_of_order(true, &order);
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
}

TEST(ServeBatcher, WithoutPreserveOrderingFasterRequestsAnswerFirst) {
  std::vector<int> order;
  run_out_of_order(false, &order);
  EXPECT_EQ(order, (std::vector<int>{2, 1}));
}

TEST(ServeBatcher, ExecutionErrorFailsOnlyThatBatch) {
  FakeModel model;
  model.hook = [](const TensorMap& in) {
    const Tensor& x = in.at("x");
    for (int64_t r = 0; r < x.dim(0); ++r)
      if (x.data<float>()[r * 2] < 0) throw Error(ErrorCode::kInvalidArgument, "poisoned row");
  };
  BatcherOptions o;
  o.max_batch_size = 2;
  Batcher b(o, model.factory());
  b.pause();
  std::vector<Tensor> xs = {rows_tensor(1, 2, -5.f), rows_tensor(1, 2, 1.f), rows_tensor(1, 2, 2.f),
                            rows_tensor(1, 2, 3.f)};
  std::vector<std::future<InferResponse>> fs;
  for (const Tensor& x : xs) fs.push_back(b.submit({{"x", x}}));
  b.resume();
  for (size_t i = 0; i < 2; ++i) {
    InferResponse r = get(fs[i]);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(*r.error, RequestError::kExecution);
    EXPECT_NE(r.message.find("poisoned row"), std::string::npos) << r.message;
  }
  for (size_t i = 2; i < 4; ++i) expect_fake_outputs(get(fs[i]), xs[i]);
  Tensor later = rows_tensor(1, 2, 40.f);
  auto fl = b.submit({{"x", later}});
  expect_fake_outputs(get(fl), later);
  StatsSnapshot s = b.stats();
  EXPECT_EQ(s.failures(RequestError::kExecution), 2u);
  EXPECT_EQ(s.success, 3u);
  EXPECT_EQ(s.in_flight, 0);
}

// Waits (bounded) until `b` has `n` idle instances.
bool wait_idle(const Batcher& b, int n) {
  for (int i = 0; i < 6000; ++i) {
    if (b.idle_instances() == n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// Ten one-row requests dispatched while four instances are idle, each instance holding its batch
// until all four have started: the sizes of the batches that ran.
// `started`: how many batches to see start before letting them finish.
std::vector<int64_t> batches_over_four_idle_instances(bool spread, int started_before_release,
                                                     std::vector<int64_t> preferred = {}) {
  std::mutex mu;
  std::condition_variable cv;
  int started = 0;
  bool release = false;
  std::vector<int64_t> sizes;
  FakeModel model;
  model.hook = [&](const TensorMap& in) {
    std::unique_lock lk(mu);
    sizes.push_back(in.at("x").dim(0));
    ++started;
    cv.notify_all();
    cv.wait_for(lk, std::chrono::milliseconds(300), [&] { return release; });  // the others get theirs
  };
  BatcherOptions o;
  o.max_batch_size = 16;
  o.instance_count = 4;
  o.spread_over_idle_instances = spread;
  o.preferred_batch_sizes = std::move(preferred);
  Batcher b(o, model.factory());
  b.pause();
  std::vector<Tensor> xs;
  std::vector<std::future<InferResponse>> fs;
  for (int i = 0; i < 10; ++i) {
    xs.push_back(rows_tensor(1, 2, 10.f * static_cast<float>(i)));
    fs.push_back(b.submit({{"x", xs.back()}}));
  }
  EXPECT_TRUE(wait_idle(b, 4));
  b.resume();
  {
    std::unique_lock lk(mu);
    cv.wait_for(lk, std::chrono::seconds(60), [&] { return started >= started_before_release; });
    release = true;
    cv.notify_all();
  }
  for (size_t i = 0; i < xs.size(); ++i) expect_fake_outputs(get(fs[i]), xs[i]);
  EXPECT_EQ(b.stats().success, 10u);
  std::lock_guard lk(mu);
  std::sort(sizes.begin(), sizes.end());
  return sizes;
}

TEST(ServeBatcher, ABatchIsSpreadEvenlyOverIdleInstances) {
  // 10 rows, 4 idle: 3 (10/4 rounded up), then 3 of 7 over 3, 2 of 4 over 2, the last 2.
  EXPECT_EQ(batches_over_four_idle_instances(true, 4), (std::vector<int64_t>{2, 2, 3, 3}));
}

TEST(ServeBatcher, WithoutSpreadingOneInstanceRunsTheWholeBatch) {
  EXPECT_EQ(batches_over_four_idle_instances(false, 1), (std::vector<int64_t>{10}));
}

TEST(ServeBatcher, BatchesOfAPreferredSizeAreNotSpread) {
  // A preferred size of 8 is reachable: it runs whole; the 2 left over form the next batch.
  std::vector<int64_t> sizes = batches_over_four_idle_instances(true, 2, {8});
  ASSERT_FALSE(sizes.empty());
  EXPECT_EQ(sizes.back(), 8);
}

TEST(ServeBatcher, AnInstanceThatGathersGetsTheRequestsAsParts) {
  // run_parts sees several requests' inputs in batch order; run sees a lone request.
  FakeModel model;
  std::mutex mu;
  std::vector<std::vector<int64_t>> parts_seen;  // rows of each part, per gathered batch
  int lone = 0;
  InstanceFactory f = [&](int) {
    ExecutePartsFn parts = [&](const std::vector<const TensorMap*>& ps, int64_t rows) {
      std::vector<const Tensor*> xs;
      std::vector<int64_t> sizes;
      for (const TensorMap* p : ps) {
        xs.push_back(&p->at("x"));
        sizes.push_back(p->at("x").dim(0));
      }
      Tensor x = concat_rows(xs);
      EXPECT_EQ(x.dim(0), rows);
      {
        std::lock_guard lk(mu);
        parts_seen.push_back(sizes);
      }
      return model.run({{"x", x}});
    };
    ExecuteFn run = [&](const TensorMap& in) {
      std::lock_guard lk(mu);
      ++lone;
      return model.run(in);
    };
    return InstanceFns(run, parts);
  };
  BatcherOptions o;
  o.max_batch_size = 8;
  Batcher b(o, f);
  b.pause();
  const Tensor x1 = rows_tensor(1, 2, 1.f), x2 = rows_tensor(3, 2, 5.f), x3 = rows_tensor(2, 2, 9.f);
  auto f1 = b.submit({{"x", x1}}), f2 = b.submit({{"x", x2}}), f3 = b.submit({{"x", x3}});
  b.resume();
  expect_fake_outputs(get(f1), x1);
  expect_fake_outputs(get(f2), x2);
  expect_fake_outputs(get(f3), x3);
  auto f4 = b.submit({{"x", x1}});
  expect_fake_outputs(get(f4), x1);
  std::lock_guard lk(mu);
  ASSERT_EQ(parts_seen.size(), 1u);
  EXPECT_EQ(parts_seen[0], (std::vector<int64_t>{1, 3, 2}));
  EXPECT_EQ(lone, 1);
}

TEST(ServeBatcher, OutputWithoutTheBatchRowsIsAnExecutionError) {
  InstanceFactory f = [](int) {
    return [](const TensorMap&) { return TensorMap{{"y", Tensor(DType::kF32, {1, 2})}}; };
  };
  BatcherOptions o;
  o.max_batch_size = 4;
  Batcher b(o, f);
  b.pause();
  auto f1 = b.submit({{"x", rows_tensor(1, 2, 0.f)}}), f2 = b.submit({{"x", rows_tensor(1, 2, 0.f)}});
  b.resume();
  for (auto* fut : {&f1, &f2}) {
    InferResponse r = get(*fut);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(*r.error, RequestError::kExecution);
    EXPECT_NE(r.message.find("cannot be split"), std::string::npos) << r.message;
  }
}

TEST(ServeBatcher, InvalidRequestsAreRejectedAtEnqueue) {
  FakeModel model;
  BatcherOptions o;
  o.max_batch_size = 4;
  o.priority_levels = 2;
  o.default_priority_level = 1;
  Batcher b(o, model.factory());
  auto expect_invalid = [&](TensorMap in, int priority, const std::string& text) {
    auto f = b.submit(std::move(in), priority);
    InferResponse r = get(f);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(*r.error, RequestError::kInvalid);
    EXPECT_NE(r.message.find(text), std::string::npos) << r.message;
  };
  expect_invalid({{"x", rows_tensor(5, 2, 0.f)}}, 0, "batch size 5 exceeds the model's max_batch_size 4");
  expect_invalid({}, 0, "no inputs");
  expect_invalid({{"x", rows_tensor(2, 2, 0.f)}, {"z", rows_tensor(3, 2, 0.f)}}, 0, "input 'z' has batch size 3");
  expect_invalid({{"x", Tensor::scalar<float>(1.f)}}, 0, "is a scalar");
  expect_invalid({{"x", Tensor(DType::kF32, {0, 2})}}, 0, "batch size 0");
  expect_invalid({{"x", rows_tensor(1, 2, 0.f)}}, 3, "priority 3 is outside 0..2");
  EXPECT_EQ(model.executions(), 0u);
  EXPECT_EQ(b.stats().failures(RequestError::kInvalid), 6u);
}

TEST(ServeBatcher, NonBatchingModelRunsEachRequestAlone) {
  std::vector<std::vector<int64_t>> shapes;
  std::mutex mu;
  InstanceFactory f = [&](int) {
    return [&](const TensorMap& in) {
      std::lock_guard lk(mu);
      shapes.push_back(in.at("x").shape());
      return TensorMap{{"y", in.at("x")}};
    };
  };
  BatcherOptions o;  // max_batch_size 0
  Batcher b(o, f);
  b.pause();
  auto f1 = b.submit({{"x", Tensor::scalar<float>(2.f)}});
  auto f2 = b.submit({{"x", rows_tensor(6, 2, 0.f)}});
  b.resume();
  InferResponse r1 = get(f1), r2 = get(f2);
  ASSERT_TRUE(r1.ok() && r2.ok());
  EXPECT_EQ(r1.outputs.at("y").data<float>()[0], 2.f);
  EXPECT_EQ(r2.outputs.at("y").shape(), (std::vector<int64_t>{6, 2}));
  EXPECT_EQ(shapes, (std::vector<std::vector<int64_t>>{{}, {6, 2}}));
}

TEST(ServeBatcher, BadOptionsAreRefused) {
  FakeModel model;
  auto refused = [&](BatcherOptions o, const std::string& text) {
    try {
      Batcher b(o, model.factory());
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  BatcherOptions o;
  o.max_batch_size = 4;
  o.preferred_batch_sizes = {8};
  refused(o, "preferred_batch_size 8 is outside 1..4");
  o = {};
  o.preferred_batch_sizes = {2};
  refused(o, "needs max_batch_size > 0");
  o = {};
  o.instance_count = 0;
  refused(o, "instance_count must be >= 1");
  o = {};
  o.priority_levels = 3;
  refused(o, "default_priority_level 0 is outside 1..3");
  o = {};
  o.priority_levels = 2;
  o.default_priority_level = 1;
  o.priority_queue_policy[3] = {};
  refused(o, "priority_queue_policy for level 3");
  o = {};
  o.max_batch_size = -1;
  refused(o, "max_batch_size must be >= 0");
  EXPECT_THROW(Batcher(BatcherOptions{}, InstanceFactory{}), Error);
}

TEST(ServeBatcher, ShutdownDrainAnswersEveryRequestOnce) {
  FakeModel model;
  auto clock = std::make_shared<ManualClock>();  // frozen: only draining can flush partial batches
  BatcherOptions o;
  o.max_batch_size = 4;
  o.max_queue_delay_us = 1'000'000;
  o.instance_count = 2;
  Batcher b(o, model.factory(), clock);
  constexpr int kN = 50;
  std::vector<std::atomic<int>> answered(kN);
  std::vector<std::atomic<int>> ok(kN);
  for (int i = 0; i < kN; ++i) {
    InferRequest r;
    r.inputs = {{"x", rows_tensor(1 + i % 3, 2, static_cast<float>(i))}};
    r.on_complete = [&, i](InferResponse resp) {
      ++answered[static_cast<size_t>(i)];
      if (resp.ok()) ++ok[static_cast<size_t>(i)];
    };
    EXPECT_FALSE(b.enqueue(std::move(r)).has_value());
  }
  b.shutdown(true);
  for (int i = 0; i < kN; ++i) {
    EXPECT_EQ(answered[static_cast<size_t>(i)].load(), 1) << i;
    EXPECT_EQ(ok[static_cast<size_t>(i)].load(), 1) << i;
  }
  int calls = 0;
  InferRequest late;
  late.inputs = {{"x", rows_tensor(1, 2, 0.f)}};
  late.on_complete = [&](InferResponse r) {
    ++calls;
    EXPECT_EQ(*r.error, RequestError::kShuttingDown);
  };
  EXPECT_EQ(b.enqueue(std::move(late)), RequestError::kShuttingDown);
  EXPECT_EQ(calls, 1);
  b.shutdown(true);  // a second call is harmless
  StatsSnapshot s = b.stats();
  EXPECT_EQ(s.success, static_cast<uint64_t>(kN));
  EXPECT_EQ(s.inference_count, 17u * 1 + 17u * 2 + 16u * 3);  // i % 3 == 0, 1, 2 -> 1, 2, 3 rows
}

TEST(ServeBatcher, ShutdownWithoutDrainFailsQueuedAndFinishesInFlight) {
  FakeModel model;
  Gate started, release;
  model.hook = [&](const TensorMap& in) {
    if (in.at("x").data<float>()[0] == 0.f) {
      started.release();
      release.wait();
    }
  };
  BatcherOptions o;
  o.max_batch_size = 0;
  Batcher b(o, model.factory());
  std::atomic<int> shut{0}, succeeded{0}, total{0};
  auto make = [&](float v) {
    InferRequest r;
    r.inputs = {{"x", rows_tensor(1, 2, v)}};
    r.on_complete = [&](InferResponse resp) {
      ++total;
      if (resp.ok()) ++succeeded;
      else if (*resp.error == RequestError::kShuttingDown) ++shut;
    };
    return r;
  };
  b.enqueue(make(0.f));
  started.wait();  // request 0 is in flight; the next ones queue behind it
  for (int i = 1; i < 10; ++i) b.enqueue(make(static_cast<float>(i)));
  std::thread stopper([&] { b.shutdown(false); });
  while (shut.load() < 9) std::this_thread::yield();  // the queued ones fail before the in-flight one ends
  EXPECT_EQ(succeeded.load(), 0);
  release.release();
  stopper.join();
  EXPECT_EQ(total.load(), 10);
  EXPECT_EQ(succeeded.load(), 1);
  EXPECT_EQ(shut.load(), 9);
  EXPECT_EQ(model.executions(), 1u);
  EXPECT_EQ(b.stats().failures(RequestError::kShuttingDown), 9u);
}

void flood(size_t max_queue_size, bool preserve) {
  FakeModel model;
  BatcherOptions o;
  o.max_batch_size = 8;
  o.max_queue_delay_us = 100;
  o.instance_count = 2;
  o.preserve_ordering = preserve;
  o.default_queue_policy.max_queue_size = max_queue_size;
  Batcher b(o, model.factory());
  constexpr int kThreads = 8, kPer = 200;
  std::vector<std::atomic<int>> answered(kThreads * kPer);
  std::atomic<int> wrong{0}, full{0}, good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPer; ++i) {
        int id = t * kPer + i;
        int64_t rows = 1 + id % 4;
        Tensor x = rows_tensor(rows, 3, static_cast<float>(id));
        InferRequest r;
        r.inputs = {{"x", x}};
        r.on_complete = [&, id, x](InferResponse resp) {
          ++answered[static_cast<size_t>(id)];
          if (!resp.ok()) {
            if (*resp.error == RequestError::kQueueFull) ++full;
            else ++wrong;
            return;
          }
          const Tensor& y = resp.outputs.at("y");
          bool same = y.shape() == x.shape();
          for (int64_t k = 0; same && k < x.numel(); ++k) same = y.data<float>()[k] == 3 * x.data<float>()[k] + 1;
          if (same) ++good;
          else ++wrong;
        };
        b.enqueue(std::move(r));
        if (max_queue_size) {  // the queue stays bounded under the flood
          EXPECT_LE(b.stats().pending, static_cast<int64_t>(max_queue_size));
        }
      }
    });
  for (auto& t : threads) t.join();
  b.shutdown(true);
  for (size_t i = 0; i < answered.size(); ++i) ASSERT_EQ(answered[i].load(), 1) << "request " << i;
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(good.load() + full.load(), kThreads * kPer);
  if (!max_queue_size) {
    EXPECT_EQ(full.load(), 0);
  }
  StatsSnapshot s = b.stats();
  EXPECT_EQ(s.success, static_cast<uint64_t>(good.load()));
  EXPECT_EQ(s.failures(RequestError::kQueueFull), static_cast<uint64_t>(full.load()));
  uint64_t batches = 0;
  for (const auto& [size, n] : s.batch_sizes) {
    EXPECT_LE(size, 8);
    batches += n;
  }
  EXPECT_EQ(batches, s.execution_count);
  EXPECT_EQ(s.pending, 0);
  EXPECT_EQ(s.in_flight, 0);
}

TEST(ServeBatcher, FloodFromManyThreadsAnswersEachRequestOnce) { flood(0, false); }
TEST(ServeBatcher, FloodWithBoundedQueueAndOrdering) { flood(16, true); }

// A real engine (dynamic batch) behind two instances gives the same outputs batched as unbatched.
TEST(ServeBatcher, RealEngineBatchedMatchesUnbatched) {
  kiln_test::ModelBuilder mb(17);
  mb.input("x", DType::kF32, Shape{Dim::sym("batch"), Dim(4)})
      .init("w", seeded({4, 5}, 1))
      .init("bias", seeded({5}, 2))
      .node("MatMul", {"x", "w"}, {"h"}, {}, "mm")
      .node("Add", {"h", "bias"}, {"a"}, {}, "add").node("Tanh", {"a"}, {"y"}, {}, "tanh");
  mb.m.graph.outputs = {"y"};
  BuildConfig cfg;
  cfg.time_tactics = false;
  cfg.threads = 1;
  cfg.profiles.resize(1);
  cfg.profiles[0].inputs["x"] = {{1, 4}, {4, 4}, {8, 4}};
  BuildResult built = build_engine(mb.m, cfg);
  auto rt = std::make_shared<EngineRuntime>(built.model, built.info, 1);

  BatcherOptions o;
  o.max_batch_size = 8;
  o.instance_count = 2;
  Batcher b(o, [rt](int) {
    auto ctx = std::make_shared<Context>(rt);
    return ExecuteFn([ctx](const TensorMap& in) { return ctx->run(in); });
  });
  b.pause();
  std::vector<Tensor> xs;
  std::vector<std::future<InferResponse>> fs;
  for (int i = 0; i < 10; ++i) {
    xs.push_back(seeded({1 + i % 3, 4}, 100 + static_cast<uint32_t>(i)));
    fs.push_back(b.submit({{"x", xs.back()}}));
  }
  b.resume();
  Context alone(rt);
  for (size_t i = 0; i < xs.size(); ++i) {
    InferResponse r = get(fs[i]);
    ASSERT_TRUE(r.ok()) << r.message;
    Tensor want = alone.run({{"x", xs[i]}}).at("y");
    const Tensor& got = r.outputs.at("y");
    ASSERT_EQ(got.shape(), want.shape());
    for (int64_t k = 0; k < want.numel(); ++k) EXPECT_NEAR(got.data<float>()[k], want.data<float>()[k], 1e-5);
  }
  StatsSnapshot s = b.stats();
  EXPECT_EQ(s.success, 10u);
  EXPECT_EQ(s.inference_count, 4u * 1 + 3u * 2 + 3u * 3);
  EXPECT_LT(s.execution_count, 10u);  // requests were merged
}

TEST(ServeBatcher, ConcatAndSliceRows) {
  Tensor a = Tensor::from_vector<int32_t>({1, 2}, {1, 2});
  Tensor c = Tensor::from_vector<int32_t>({2, 2}, {3, 4, 5, 6});
  Tensor cat = concat_rows({&a, &c});
  EXPECT_EQ(cat.shape(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(cat.to_int64_vector(), (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  Tensor mid = slice_rows(cat, 1, 2);
  EXPECT_EQ(mid.to_int64_vector(), (std::vector<int64_t>{3, 4, 5, 6}));
  Tensor other = Tensor::from_vector<int32_t>({1, 3}, {1, 2, 3});
  EXPECT_THROW(concat_rows({&a, &other}), Error);
  EXPECT_THROW(slice_rows(cat, 2, 2), Error);
}

}  // namespace
