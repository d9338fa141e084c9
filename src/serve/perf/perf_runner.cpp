// `kiln perf` load generation and the measurement loop (see perf_runner.h).
#include "serve/perf/perf_runner.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "kiln/error.h"

namespace kiln::serve::perf {

using Clock = std::chrono::steady_clock;

namespace {

Error bad(const std::string& message) { return Error(ErrorCode::kInvalidArgument, message); }

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

uint64_t ns(Clock::duration d) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

// A request sent this much after its scheduled time counts as delayed.
constexpr auto kLateBy = std::chrono::milliseconds(1);

// What one worker recorded since the collector last took it.
struct Slot {
  std::mutex mu;
  Measurement m;
};

void record(Slot& slot, const InferResult& r, uint64_t latency_ns, bool delayed) {
  std::lock_guard<std::mutex> lock(slot.mu);
  if (delayed) ++slot.m.delayed;
  if (r.ok) {
    ++slot.m.success;
    slot.m.latencies_ns.push_back(latency_ns);
    slot.m.send_ns_total += r.send_ns;
    slot.m.recv_ns_total += r.recv_ns;
  } else {
    ++slot.m.errors[r.error_kind];
    slot.m.error_examples.emplace(r.error_kind, r.error_message);
  }
}

// Adds a worker's part to the window (sorted once, by finish()).
void absorb(Measurement& into, Measurement part) {
  into.success += part.success;
  into.delayed += part.delayed;
  for (const auto& [kind, count] : part.errors) into.errors[kind] += count;
  for (auto& [kind, text] : part.error_examples) into.error_examples.emplace(kind, std::move(text));
  into.latencies_ns.insert(into.latencies_ns.end(), part.latencies_ns.begin(), part.latencies_ns.end());
  into.send_ns_total += part.send_ns_total;
  into.recv_ns_total += part.recv_ns_total;
}

LevelResult run_level(PerfTransport& control, const PerfOptions& o, double level,
                      const std::function<void(const std::string&)>& verbose) {
  const bool rate = o.request_rate_mode;
  const size_t workers = rate ? static_cast<size_t>(o.max_threads) : static_cast<size_t>(level);
  std::vector<std::unique_ptr<PerfTransport>> transports;
  for (size_t i = 0; i < workers; ++i) transports.push_back(control.connect_another());
  std::deque<Slot> slots(workers);

  std::atomic<bool> stop{false};
  std::mutex wake_mu;
  std::condition_variable wake;
  std::atomic<uint64_t> next_data{0};
  // The request-rate schedule: request k goes at start + offset(k).
  std::mutex schedule_mu;
  uint64_t scheduled = 0;
  double poisson_offset_s = 0;
  std::mt19937_64 rng(o.seed);
  std::exponential_distribution<double> gap(level > 0 ? level : 1.0);

  std::optional<ServerCounters> stats_before = control.server_stats();
  const Clock::time_point start = Clock::now();

  auto worker = [&](size_t w) {
    while (!stop.load()) {
      Clock::time_point due{};
      if (rate) {
        {
          std::lock_guard<std::mutex> lock(schedule_mu);
          const double offset = o.poisson ? (poisson_offset_s += gap(rng)) : static_cast<double>(scheduled++) / level;
          due = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(offset));
        }
        std::unique_lock<std::mutex> lock(wake_mu);
        if (wake.wait_until(lock, due, [&] { return stop.load(); })) break;
      }
      const auto t0 = Clock::now();
      InferResult r;
      try {
        r = transports[w]->infer(next_data.fetch_add(1));
      } catch (const std::exception& e) {
        r.ok = false;
        r.error_kind = "client";
        r.error_message = e.what();
      }
      const auto t1 = Clock::now();
      record(slots[w], r, ns(t1 - t0), rate && t0 - due > kLateBy);
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers);
  for (size_t w = 0; w < workers; ++w) threads.emplace_back(worker, w);

  std::vector<Measurement> windows;
  std::vector<WindowFigures> figures;
  bool stable = false;
  Clock::time_point window_start = start;
  const auto interval = std::chrono::milliseconds(o.measurement_interval_ms);
  for (int trial = 1; trial <= o.max_trials; ++trial) {
    std::this_thread::sleep_until(window_start + interval);
    Measurement m;
    for (auto& slot : slots) {
      Measurement part;
      {
        std::lock_guard<std::mutex> lock(slot.mu);
        std::swap(part, slot.m);
      }
      absorb(m, std::move(part));
    }
    const auto now = Clock::now();
    m.duration_s = seconds(now - window_start);
    window_start = now;
    if (stats_before) {
      std::optional<ServerCounters> after = control.server_stats();
      if (after) m.server = *after - *stats_before;
      stats_before = after;
    }
    m.finish();
    figures.push_back({throughput(m, o.batch), static_cast<double>(stabilizing_latency_us(m, o.percentile))});
    if (verbose) {
      std::ostringstream os;
      os << std::fixed << std::setprecision(1) << "  Pass [" << trial << "] throughput: " << figures.back().throughput
         << " infer/sec. "
         << (o.percentile > 0 ? "p" + std::to_string(o.percentile) : std::string("Avg")) << " latency: "
         << static_cast<uint64_t>(figures.back().latency_us) << " usec";
      if (m.failed()) os << " (" << m.failed() << " failed)";
      verbose(os.str());
    }
    windows.push_back(std::move(m));
    if (is_stable(figures, o.stability_percentage)) {
      stable = true;
      break;
    }
  }
  stop.store(true);
  {
    std::lock_guard<std::mutex> lock(wake_mu);  // no worker misses the wake-up between its check and its wait
  }
  wake.notify_all();
  for (auto& t : threads) t.join();

  const size_t keep = std::min<size_t>(3, windows.size());
  std::vector<Measurement> last(windows.end() - static_cast<std::ptrdiff_t>(keep), windows.end());
  LevelResult r = summarize(merge(last), rate, level, o.batch, o.percentile);
  r.stable = stable;
  r.windows = static_cast<int>(windows.size());
  return r;
}

}  // namespace

std::vector<double> LoadRange::levels() const {
  std::vector<double> out;
  // Index-based so 0.1 steps do not drift; the small slack keeps END itself in.
  for (int64_t i = 0;; ++i) {
    const double v = start + static_cast<double>(i) * step;
    if (v > end * (1 + 1e-9)) break;
    out.push_back(v);
  }
  return out;
}

LoadRange parse_range(const std::string& text, bool integer, const std::string& flag) {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ':')) parts.push_back(part);
  if (!text.empty() && text.back() == ':') parts.push_back("");
  const std::string form = flag + " " + text + ": ";
  if (parts.empty() || parts.size() > 3) throw bad(form + "expected START[:END[:STEP]]");
  std::vector<double> v;
  for (const auto& p : parts) {
    size_t used = 0;
    double x = 0;
    try {
      x = std::stod(p, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (p.empty() || used != p.size() || !std::isfinite(x)) throw bad(form + "'" + p + "' is not a number");
    if (integer && std::floor(x) != x) throw bad(form + "'" + p + "' is not a whole number");
    v.push_back(x);
  }
  LoadRange r;
  r.start = v[0];
  r.end = v.size() > 1 ? v[1] : v[0];
  r.step = v.size() > 2 ? v[2] : 1;
  if (r.start <= 0) throw bad(form + "START must be positive");
  if (r.end < r.start) throw bad(form + "END is below START");
  if (r.step <= 0) throw bad(form + "STEP must be positive");
  if ((r.end - r.start) / r.step > 10000) throw bad(form + "more than 10000 levels");
  return r;
}

std::vector<LevelResult> run_perf(PerfTransport& control, const PerfOptions& options,
                                  const std::function<void(const std::string&)>& verbose,
                                  const std::function<void(const LevelResult&)>& on_level) {
  if (options.measurement_interval_ms <= 0) throw bad("the measurement interval must be positive");
  if (options.max_trials < 3) throw bad("max trials must be at least 3 (stability compares the last 3 windows)");
  std::vector<LevelResult> results;
  for (double level : options.range.levels()) {
    if (verbose)
      verbose((options.request_rate_mode ? "Request rate: " : "Request concurrency: ") + level_text(level));
    results.push_back(run_level(control, options, level, verbose));
    if (on_level) on_level(results.back());
  }
  return results;
}

}  // namespace kiln::serve::perf
