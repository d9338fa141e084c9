// `kiln perf` statistics: measurement windows, percentiles, the stability rule, and the report
// writers (perf_analyzer's CSV, Kiln's versioned JSON, the text summary).
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kiln::serve::perf {

// "schema_version" of `--json` reports: bumped when a field changes meaning or goes away (adding
// fields keeps it).
inline constexpr int kJsonSchemaVersion = 1;

// Nearest-rank percentile of ascending samples: the smallest sample with at least p% of the
// samples at or below it (p in (0, 100]). 0 for no samples.
uint64_t percentile(const std::vector<uint64_t>& sorted, double p);

// The server's cumulative statistics for the model (Triton's statistics extension:
// inference_stats.{success,queue,compute_input,compute_infer,compute_output}.{count,ns}).
struct ServerCounters {
  uint64_t success_count = 0, success_ns = 0;
  uint64_t queue_count = 0, queue_ns = 0;
  uint64_t compute_input_count = 0, compute_input_ns = 0;
  uint64_t compute_infer_count = 0, compute_infer_ns = 0;
  uint64_t compute_output_count = 0, compute_output_ns = 0;
};
// b - a, field by field (counters only grow; a reset server gives zeros, not wrap-around).
ServerCounters operator-(const ServerCounters& b, const ServerCounters& a);
ServerCounters operator+(const ServerCounters& a, const ServerCounters& b);

// What one measurement window (or several merged) saw on the client.
struct Measurement {
  double duration_s = 0;
  uint64_t success = 0;                    // requests answered with outputs
  uint64_t delayed = 0;                    // request-rate mode: sent later than scheduled
  std::map<std::string, uint64_t> errors;  // failed requests by kind ("http_503", "timeout", ...)
  std::map<std::string, std::string> error_examples;  // kind -> the first message seen
  std::vector<uint64_t> latencies_ns;      // successful requests, send to response (sorted by finish())
  uint64_t send_ns_total = 0, recv_ns_total = 0;  // over successful requests
  std::optional<ServerCounters> server;    // the server's counters over the window, when it reports them

  uint64_t failed() const;
  void finish();  // sorts the latencies
};
// The windows together (durations, counts and samples summed); the server part only when every
// window has one.
Measurement merge(const std::vector<Measurement>& windows);

// The latency that decides stability and is printed per level: the average (percentile <= 0) or
// that percentile, in microseconds.
uint64_t stabilizing_latency_us(const Measurement& m, int percentile);
// Inferences per second: successful requests x batch / duration.
double throughput(const Measurement& m, int64_t batch);

// One window reduced to the two figures the stability rule compares.
struct WindowFigures {
  double throughput = 0;
  double latency_us = 0;
};
// Stable when there are at least 3 windows and, over the last 3, every throughput and every
// latency is within +-percentage% of the mean of the three (a mean of 0 needs all three 0).
bool is_stable(const std::vector<WindowFigures>& windows, double percentage);

// One load level's result, all times in microseconds.
struct LevelResult {
  bool request_rate_mode = false;
  double level = 0;  // concurrency, or requests per second
  bool stable = false;
  int windows = 0;   // measurement windows taken at this level
  double duration_s = 0;  // of the windows reported (the last 3, or fewer)
  double throughput = 0;  // infer/sec
  uint64_t success = 0, failed = 0, delayed = 0;
  std::map<std::string, uint64_t> errors;
  std::map<std::string, std::string> error_examples;
  uint64_t p50_us = 0, p90_us = 0, p95_us = 0, p99_us = 0, avg_us = 0;
  int extra_percentile = 0;  // --percentile when not 50/90/95/99 (0: none)
  uint64_t extra_percentile_us = 0;
  uint64_t stabilizing_latency_us = 0;  // avg, or the --percentile latency
  uint64_t client_send_us = 0, client_recv_us = 0;
  bool has_server = false;
  uint64_t server_success = 0;
  uint64_t server_request_us = 0;  // the server's average time per successful request (success.ns / count)
  // Averages per request; network = client wait (latency - send - recv) minus queue and compute,
  // never negative.
  uint64_t network_us = 0, queue_us = 0, compute_input_us = 0, compute_infer_us = 0, compute_output_us = 0;
};
// Reduces the reported windows (the last 3) to a level result.
LevelResult summarize(const Measurement& merged, bool request_rate_mode, double level, int64_t batch,
                      int percentile);

// The level as perf_analyzer prints it: "4" for a concurrency, "12.5" for a rate.
std::string level_text(double level);

// perf_analyzer's CSV (-f): "Concurrency" or "Request Rate", Inferences/Second, Client Send,
// Network+Server Send/Recv, Server Queue, Server Compute Input, Server Compute Infer,
// Server Compute Output, Client Recv, p50/p90/p95/p99 latency [, pN latency], Avg latency, Failed;
// rows in increasing throughput as perf_analyzer sorts them. Server columns are empty when the
// server reported no statistics.
std::string csv_report(const std::vector<LevelResult>& levels, bool request_rate_mode);

// Everything about the run the JSON report records besides the levels.
struct RunInfo {
  std::string url, protocol, model, version, tensor_format, input_data, request_distribution;
  int64_t batch = 1;
  bool request_rate_mode = false;
  int64_t measurement_interval_ms = 0;
  double stability_percentage = 0;
  int max_trials = 0;
  int percentile = -1;
  nlohmann::json inputs = nlohmann::json::array();  // [{name, datatype, shape}] as sent
};
nlohmann::json json_report(const RunInfo& info, const std::vector<LevelResult>& levels);

// The summary on stdout: one "Concurrency: 4, throughput: 812.5 infer/sec, latency 4921 usec"
// line per level, then a table of every figure.
std::string text_summary(const std::vector<LevelResult>& levels, int percentile);
// The block printed as each level finishes.
std::string level_block(const LevelResult& r, int64_t batch);

}  // namespace kiln::serve::perf
