// `kiln perf`: a load generator for KServe v2 servers (`kiln serve`, Triton), like Triton's
// perf_analyzer.
//
//   kiln perf -m MODEL [-x VERSION] [-u HOST:PORT] [-i http|grpc] [-b BATCH]
//             [--concurrency-range START:END:STEP | --request-rate-range START:END:STEP]
//             [--request-distribution constant|poisson] [--measurement-interval MS]
//             [--stability-percentage P] [--max-trials N] [--percentile N] [--shape NAME:D1,D2,...]
//             [--input-data zero|random|FILE.json] [--binary | --json-tensors]
//             [--request-timeout-ms MS] [-f FILE.csv] [--json FILE.json] [-v]
//
// Steps: the model's metadata (and max_batch_size from its config) from the server; the inputs
// generated once and encoded once; then per load level, workers each on their own keep-alive
// connection (concurrency mode: N workers back to back; request-rate mode: a pool sending on a
// schedule), measured in windows until the last 3 agree within the stability percentage. The
// library side is src/serve/perf/; user doc: docs/perf.md.
#include <CLI/CLI.hpp>

#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kiln/error.h"
#include "serve/perf/perf_inputs.h"
#include "serve/perf/perf_runner.h"
#include "serve/perf/perf_stats.h"
#include "serve/perf/perf_transport.h"

namespace kiln::cli {

#ifdef KILN_HAVE_GRPC
// tools/perf_grpc.cpp: the transport of `-i grpc`.
std::unique_ptr<serve::perf::PerfTransport> make_grpc_perf_transport(const serve::perf::Endpoint& endpoint,
                                                                     const std::string& model,
                                                                     const std::string& version, int64_t timeout_ms);
#endif

namespace {

namespace perf = serve::perf;
using json = nlohmann::json;

struct PerfArgs {
  std::string model;
  std::string version;
  std::string url;
  std::string protocol = "http";
  int64_t batch = 1;
  std::string concurrency_range;
  std::string request_rate_range;
  std::string distribution = "constant";
  int max_threads = 16;
  int64_t interval_ms = 5000;
  double stability = 10;
  int max_trials = 10;
  int percentile = -1;
  std::vector<std::string> shapes;
  std::string input_data = "random";
  bool binary = false, json_tensors = false;
  std::string shared_memory = "none";
  int64_t timeout_ms = 30000;
  std::string csv_path, json_path;
  bool verbose = false;
  uint64_t seed = 0;

  // Filled by the validation callback.
  perf::PerfOptions options;
  perf::Endpoint endpoint;
  std::map<std::string, std::vector<int64_t>> shape_map;
};

// Bad flag values exit 2 like every other parse error: they are checked while CLI11 parses.
void validate(PerfArgs& a) {
  try {
    a.options.request_rate_mode = !a.request_rate_range.empty();
    if (a.options.request_rate_mode)
      a.options.range = perf::parse_range(a.request_rate_range, false, "--request-rate-range");
    else if (!a.concurrency_range.empty())
      a.options.range = perf::parse_range(a.concurrency_range, true, "--concurrency-range");
    if (!a.options.request_rate_mode && a.options.range.end > 4096)
      throw Error(ErrorCode::kInvalidArgument,
                  "--concurrency-range " + a.concurrency_range +
                      ": at most 4096 concurrent requests (one thread and connection each)");
    a.endpoint = perf::parse_endpoint(a.url.empty() ? "localhost" : a.url, a.protocol == "grpc" ? 8001 : 8000);
    a.shape_map = perf::parse_shape_flags(a.shapes);
  } catch (const Error& e) {
    throw CLI::ValidationError(e.what());
  }
  if (a.json_tensors && a.protocol == "grpc")
    throw CLI::ValidationError("--json-tensors: JSON tensors are an HTTP form; gRPC always sends raw tensors");
  if (a.shared_memory == "system" && a.protocol == "grpc")
    throw CLI::ValidationError("--shared-memory system: kiln perf registers regions over HTTP; use -i http "
                               "(the server takes shared-memory inputs over gRPC too)");
  if (a.shared_memory == "system" && a.json_tensors)
    throw CLI::ValidationError("--shared-memory system sends no tensor data in the request: drop --json-tensors");
  a.options.poisson = a.distribution == "poisson";
  a.options.batch = a.batch;
  a.options.measurement_interval_ms = a.interval_ms;
  a.options.stability_percentage = a.stability;
  a.options.max_trials = a.max_trials;
  a.options.percentile = a.percentile;
  a.options.max_threads = a.max_threads;
  a.options.seed = a.seed;
}

void write_file(const std::string& path, const std::string& text, const std::string& flag) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error(ErrorCode::kIo, flag + " " + path + ": cannot open the file for writing");
  out << text;
  if (!out.flush()) throw Error(ErrorCode::kIo, flag + " " + path + ": write failed");
}

int cmd_perf(const PerfArgs& a) {
  std::unique_ptr<perf::PerfTransport> transport;
  if (a.protocol == "grpc") {
#ifdef KILN_HAVE_GRPC
    transport = make_grpc_perf_transport(a.endpoint, a.model, a.version, a.timeout_ms);
#else
    throw Error(ErrorCode::kUnsupported, "-i grpc: this build has no gRPC (built without libgrpc++); use -i http");
#endif
  } else {
    perf::HttpOptions http;
    http.endpoint = a.endpoint;
    http.model = a.model;
    http.version = a.version;
    http.binary = !a.json_tensors;
    http.shared_memory = a.shared_memory == "system";
    http.timeout_ms = a.timeout_ms;
    transport = perf::make_http_transport(http);
  }

  const perf::ModelInfo info = transport->metadata();
  perf::InputOptions input_options;
  input_options.batch = a.batch;
  input_options.shapes = a.shape_map;
  input_options.data = a.input_data;
  input_options.seed = a.seed;
  const std::vector<perf::Inputs> data = perf::make_inputs(info, input_options);
  transport->prepare(data);

  const perf::PerfOptions& o = a.options;
  const std::string format = a.protocol == "grpc"            ? "raw"
                             : a.shared_memory == "system" ? "system_shared_memory"
                             : a.json_tensors              ? "json"
                                                           : "binary";
  std::cout << "*** Measurement Settings ***\n";
  std::cout << "  Model: " << a.model << " (version " << (a.version.empty() ? "latest" : a.version) << ") at "
            << transport->url() << ", " << (a.protocol == "grpc" ? "gRPC" : "HTTP with " + format + " tensors")
            << "\n";
  std::cout << "  Batch size: " << a.batch << "\n";
  for (const auto& in : data.front())
    std::cout << "  Input " << in.name << ": " << in.datatype << " " << perf::dims_text(in.shape) << " ("
              << (data.size() > 1 ? std::to_string(data.size()) + " entries of " + a.input_data : a.input_data)
              << ")\n";
  std::cout << "  Measurement window: " << o.measurement_interval_ms << " msec; stable when the last 3 windows' "
            << "throughput and " << (o.percentile > 0 ? "p" + std::to_string(o.percentile) : std::string("average"))
            << " latency are within " << o.stability_percentage << "% of their mean (at most " << o.max_trials
            << " windows)\n";
  if (o.request_rate_mode)
    std::cout << "  Request rate: " << perf::level_text(o.range.start) << " to " << perf::level_text(o.range.end)
              << " per second, step " << perf::level_text(o.range.step) << ", " << a.distribution << " intervals, "
              << o.max_threads << " workers\n";
  else
    std::cout << "  Concurrency: " << perf::level_text(o.range.start) << " to " << perf::level_text(o.range.end)
              << ", step " << perf::level_text(o.range.step) << " (one connection per concurrent request)\n";
  std::cout << "\n" << std::flush;

  auto verbose = [&](const std::string& line) {
    if (a.verbose) std::cerr << line << "\n";
  };
  auto on_level = [&](const perf::LevelResult& r) {
    std::cout << perf::level_block(r, a.batch) << "\n" << std::flush;
    if (!r.stable)
      std::cerr << "kiln: warning: " << (r.request_rate_mode ? "request rate " : "concurrency ")
                << perf::level_text(r.level) << " did not stabilize within " << r.windows
                << " windows; its figures are the last 3 windows' (try a longer --measurement-interval or a larger "
                << "--stability-percentage)\n";
    if (r.delayed * 10 > r.success + r.failed)
      std::cerr << "kiln: warning: request rate " << perf::level_text(r.level) << ": " << r.delayed << " of "
                << (r.success + r.failed) << " requests left later than scheduled; raise --max-threads\n";
  };
  const std::vector<perf::LevelResult> results = perf::run_perf(*transport, o, verbose, on_level);
  std::cout << perf::text_summary(results, o.percentile) << std::flush;

  if (!a.csv_path.empty()) write_file(a.csv_path, perf::csv_report(results, o.request_rate_mode), "-f");
  if (!a.json_path.empty()) {
    perf::RunInfo run;
    run.url = transport->url();
    run.protocol = a.protocol;
    run.model = a.model;
    run.version = a.version;
    run.tensor_format = format;
    run.input_data = a.input_data;
    run.request_distribution = a.distribution;
    run.batch = a.batch;
    run.request_rate_mode = o.request_rate_mode;
    run.measurement_interval_ms = o.measurement_interval_ms;
    run.stability_percentage = o.stability_percentage;
    run.max_trials = o.max_trials;
    run.percentile = o.percentile;
    for (const auto& in : data.front())
      run.inputs.push_back({{"name", in.name}, {"datatype", in.datatype}, {"shape", in.shape}});
    write_file(a.json_path, perf::json_report(run, results).dump(2) + "\n", "--json");
  }

  uint64_t success = 0;
  std::string why;
  for (const auto& r : results) {
    success += r.success;
    for (const auto& [kind, text] : r.error_examples)
      if (why.empty()) why = kind + ": " + text;
  }
  if (success == 0)
    throw Error(ErrorCode::kIo, "no request succeeded against " + transport->url() +
                                    (why.empty() ? std::string() : " (" + why + ")"));
  return 0;
}

}  // namespace

CLI::App* add_perf_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<PerfArgs>();
  auto* sub = app.add_subcommand("perf", "Measure a KServe v2 server's throughput and latency (like perf_analyzer)");
  sub->add_option("-m,--model", args->model, "Model name")->required();
  sub->add_option("-x,--model-version", args->version, "Model version (default: the server's latest)");
  sub->add_option("-u,--url", args->url, "Server HOST:PORT (default localhost:8000 for http, localhost:8001 for grpc)");
  sub->add_option("-i,--protocol", args->protocol, "http (default) or grpc")->check(CLI::IsMember({"http", "grpc"}));
  sub->add_option("-b,--batch-size", args->batch, "Samples per request, for a model that batches (default 1)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  auto* conc = sub->add_option("--concurrency-range", args->concurrency_range,
                               "START[:END[:STEP]] concurrent requests (default 1)");
  auto* rate = sub->add_option("--request-rate-range", args->request_rate_range,
                               "START[:END[:STEP]] requests per second, instead of a concurrency");
  conc->excludes(rate);
  sub->add_option("--request-distribution", args->distribution,
                  "Intervals between requests in request-rate mode: constant (default) or poisson")
      ->check(CLI::IsMember({"constant", "poisson"}));
  sub->add_option("--max-threads", args->max_threads,
                  "Workers (each with a connection) sending in request-rate mode (default 16)")
      ->check(CLI::Range(1, 4096));
  sub->add_option("-p,--measurement-interval", args->interval_ms, "Measurement window in milliseconds (default 5000)")
      ->check(CLI::Range(int64_t{1}, int64_t{3600000}));
  sub->add_option("-s,--stability-percentage", args->stability,
                  "Stable when the last 3 windows are within this % of their mean (default 10)")
      ->check(CLI::Range(0.001, 1000.0));
  sub->add_option("-r,--max-trials", args->max_trials, "Windows per level before giving up on stability (default 10)")
      ->check(CLI::Range(3, 10000));
  sub->add_option("--percentile", args->percentile,
                  "Stabilize on and report this latency percentile (default: the average latency)")
      ->check(CLI::Range(1, 99));
  sub->add_option("--shape", args->shapes,
                  "NAME:D1,D2,... an input's dims, without the batch dim for a batching model (repeatable)");
  sub->add_option("--input-data", args->input_data, "zero, random (default) or a JSON data file");
  auto* bin = sub->add_flag("--binary", args->binary, "HTTP: binary tensor extension (the default)");
  auto* js = sub->add_flag("--json-tensors", args->json_tensors, "HTTP: tensors as JSON arrays");
  sub->add_option("--shared-memory", args->shared_memory,
                  "none (default) or system: inputs in a POSIX shared-memory region registered with the server "
                  "(same host), requests name it instead of carrying the bytes")
      ->check(CLI::IsMember({"none", "system"}));
  bin->excludes(js);
  sub->add_option("--request-timeout-ms", args->timeout_ms, "Fail a request after this long (default 30000)")
      ->check(CLI::Range(int64_t{1}, int64_t{86400000}));
  sub->add_option("-f,--latency-report-file", args->csv_path, "Write perf_analyzer's CSV report here");
  sub->add_option("--json", args->json_path, "Write every figure as JSON to this file");
  sub->add_option("--seed", args->seed, "Seed of random input data and of the Poisson schedule");
  sub->add_flag("-v,--verbose", args->verbose, "Print every measurement window to stderr");
  sub->footer(
      "Throughput counts requests x batch per second; latencies are client-side, in microseconds. The server's\n"
      "queue and compute times come from its statistics (GET /v2/models/MODEL/stats) when it reports them.\n"
      "Errors exit 1; bad flags exit 2. See docs/perf.md.");
  sub->callback([args] { validate(*args); });
  *run = [args] { return cmd_perf(*args); };
  return sub;
}

}  // namespace kiln::cli
