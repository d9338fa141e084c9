// `kiln perf` load generation: concurrency mode (N workers sending back to back) and request-rate
// mode (requests sent on a constant or Poisson schedule by a pool of workers), measured in
// windows until the stability rule holds or the trials run out.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "serve/perf/perf_stats.h"
#include "serve/perf/perf_transport.h"

namespace kiln::serve::perf {

// --concurrency-range / --request-rate-range: START[:END[:STEP]] (END defaults to START, STEP
// to 1).
struct LoadRange {
  double start = 1, end = 1, step = 1;
  std::vector<double> levels() const;  // start, start + step, ... up to end
};
// Throws kiln::Error kInvalidArgument naming `flag`: non-numbers, START <= 0, END < START,
// STEP <= 0, fractional values when `integer`, more than 3 parts, or more than 10000 levels.
LoadRange parse_range(const std::string& text, bool integer, const std::string& flag);

struct PerfOptions {
  bool request_rate_mode = false;
  LoadRange range;
  bool poisson = false;  // request-rate mode: exponential gaps instead of constant ones
  int64_t batch = 1;     // samples per request (throughput counts requests x batch)
  int64_t measurement_interval_ms = 5000;
  double stability_percentage = 10;
  int max_trials = 10;
  int percentile = -1;    // the latency that decides stability: -1 the average, else this percentile
  int max_threads = 16;   // request-rate mode: workers (each with its own connection)
  uint64_t seed = 0;      // the Poisson schedule's seed
};

// Runs every level of options.range on connections from `control.connect_another()` (prepared
// before the call); the server's statistics are read through `control` at each window boundary.
// `verbose` gets one line per window; `on_level` each level's result as it finishes.
std::vector<LevelResult> run_perf(PerfTransport& control, const PerfOptions& options,
                                  const std::function<void(const std::string&)>& verbose,
                                  const std::function<void(const LevelResult&)>& on_level);

}  // namespace kiln::serve::perf
