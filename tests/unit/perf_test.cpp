// `kiln perf`: the statistics (percentiles, stability, reports), the KServe v2 request encoders and
// response parsers, input generation, and end-to-end runs (in process and through the CLI) against
// a fake KServe v2 server built here on httplib.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "kiln/error.h"
#include "serve/perf/perf_inputs.h"
#include "serve/perf/perf_runner.h"
#include "serve/perf/perf_stats.h"
#include "serve/perf/perf_transport.h"
#include "test_support.h"

namespace {

using namespace kiln::serve::perf;
using json = nlohmann::json;

// ---- Statistics.

TEST(PerfStats, PercentileIsNearestRank) {
  std::vector<uint64_t> hundred;
  for (uint64_t i = 1; i <= 100; ++i) hundred.push_back(i);
  EXPECT_EQ(percentile(hundred, 50), 50u);
  EXPECT_EQ(percentile(hundred, 90), 90u);
  EXPECT_EQ(percentile(hundred, 95), 95u);
  EXPECT_EQ(percentile(hundred, 99), 99u);
  EXPECT_EQ(percentile(hundred, 100), 100u);
  EXPECT_EQ(percentile(hundred, 1), 1u);

  const std::vector<uint64_t> ten = {10, 20, 30, 40, 50, 60, 70, 80, 90, 100};
  EXPECT_EQ(percentile(ten, 50), 50u);   // rank 5
  EXPECT_EQ(percentile(ten, 90), 90u);   // rank 9
  EXPECT_EQ(percentile(ten, 95), 100u);  // rank ceil(9.5) = 10
  EXPECT_EQ(percentile(ten, 99), 100u);
  EXPECT_EQ(percentile(ten, 11), 20u);   // rank ceil(1.1) = 2

  std::vector<uint64_t> twenty;
  for (uint64_t i = 1; i <= 20; ++i) twenty.push_back(i * 5);
  EXPECT_EQ(percentile(twenty, 95), 95u);  // rank 19 exactly, not 20

  EXPECT_EQ(percentile({7}, 50), 7u);
  EXPECT_EQ(percentile({7}, 99), 7u);
  EXPECT_EQ(percentile({}, 50), 0u);
}

TEST(PerfStats, StabilityComparesTheLastThreeWindowsWithTheirMean) {
  auto w = [](std::vector<std::pair<double, double>> v) {
    std::vector<WindowFigures> out;
    for (auto [t, l] : v) out.push_back({t, l});
    return out;
  };
  EXPECT_FALSE(is_stable(w({}), 10));
  EXPECT_FALSE(is_stable(w({{100, 1000}, {100, 1000}}), 10));  // fewer than 3
  EXPECT_TRUE(is_stable(w({{100, 1000}, {100, 1000}, {100, 1000}}), 10));
  // Mean 100: 95 and 105 are 5% off.
  EXPECT_TRUE(is_stable(w({{95, 1000}, {100, 1000}, {105, 1000}}), 10));
  EXPECT_FALSE(is_stable(w({{95, 1000}, {100, 1000}, {105, 1000}}), 4));
  // Mean 325/3 = 108.33: 125 is 15.4% over it.
  EXPECT_FALSE(is_stable(w({{100, 1000}, {100, 1000}, {125, 1000}}), 10));
  EXPECT_TRUE(is_stable(w({{100, 1000}, {100, 1000}, {125, 1000}}), 16));
  // Latency counts as much as throughput.
  EXPECT_FALSE(is_stable(w({{100, 1000}, {100, 1000}, {100, 1400}}), 10));
  // Only the last three windows count.
  EXPECT_TRUE(is_stable(w({{10, 9000}, {100, 1000}, {100, 1000}, {100, 1000}}), 10));
  EXPECT_FALSE(is_stable(w({{100, 1000}, {100, 1000}, {100, 1000}, {10, 1000}}), 10));
  // All zero (every request failed) is stable; a zero mean with one non-zero value is not possible,
  // but zero against non-zero is unstable.
  EXPECT_TRUE(is_stable(w({{0, 0}, {0, 0}, {0, 0}}), 10));
  EXPECT_FALSE(is_stable(w({{0, 0}, {0, 0}, {30, 500}}), 10));
}

// A measurement with figures whose summary is worked out by hand below.
Measurement known_measurement() {
  Measurement m;
  m.duration_s = 2.0;
  m.success = 4;
  m.latencies_ns = {400000, 100000, 300000, 200000};  // 100..400 us, unsorted on purpose
  m.send_ns_total = 40000;                            // 10 us each
  m.recv_ns_total = 20000;                            // 5 us each
  m.errors = {{"http_503", 2}, {"timeout", 1}};
  m.error_examples = {{"http_503", "queue full"}, {"timeout", "no answer within 10 ms"}};
  ServerCounters s;
  s.success_count = 4, s.success_ns = 4 * 180000;        // 180 us
  s.queue_count = 4, s.queue_ns = 200000;                // 50 us
  s.compute_input_count = 4, s.compute_input_ns = 40000;  // 10 us
  s.compute_infer_count = 4, s.compute_infer_ns = 400000;  // 100 us
  s.compute_output_count = 4, s.compute_output_ns = 20000;  // 5 us
  m.server = s;
  m.finish();
  return m;
}

TEST(PerfStats, SummarizeWorksOutEveryFigure) {
  const LevelResult r = summarize(known_measurement(), false, 4, /*batch=*/2, /*percentile=*/-1);
  EXPECT_DOUBLE_EQ(r.throughput, 4.0);  // 4 requests x 2 samples / 2 s
  EXPECT_EQ(r.success, 4u);
  EXPECT_EQ(r.failed, 3u);
  EXPECT_EQ(r.p50_us, 200u);
  EXPECT_EQ(r.p90_us, 400u);
  EXPECT_EQ(r.p95_us, 400u);
  EXPECT_EQ(r.p99_us, 400u);
  EXPECT_EQ(r.avg_us, 250u);
  EXPECT_EQ(r.stabilizing_latency_us, 250u);  // the average by default
  EXPECT_EQ(r.client_send_us, 10u);
  EXPECT_EQ(r.client_recv_us, 5u);
  ASSERT_TRUE(r.has_server);
  EXPECT_EQ(r.server_request_us, 180u);
  EXPECT_EQ(r.queue_us, 50u);
  EXPECT_EQ(r.compute_input_us, 10u);
  EXPECT_EQ(r.compute_infer_us, 100u);
  EXPECT_EQ(r.compute_output_us, 5u);
  // Client wait 250 - 10 - 5 = 235, less queue + compute 165.
  EXPECT_EQ(r.network_us, 70u);

  const LevelResult p = summarize(known_measurement(), false, 4, 2, 75);
  EXPECT_EQ(p.extra_percentile, 75);
  EXPECT_EQ(p.extra_percentile_us, 300u);  // rank 3 of 4
  EXPECT_EQ(p.stabilizing_latency_us, 300u);
  EXPECT_EQ(summarize(known_measurement(), false, 4, 2, 90).extra_percentile, 0);  // already a column
}

TEST(PerfStats, MergeAddsWindowsAndKeepsServerOnlyWhenAllHaveIt) {
  Measurement a = known_measurement(), b = known_measurement();
  Measurement both = merge({a, b});
  EXPECT_DOUBLE_EQ(both.duration_s, 4.0);
  EXPECT_EQ(both.success, 8u);
  EXPECT_EQ(both.failed(), 6u);
  EXPECT_EQ(both.latencies_ns.size(), 8u);
  EXPECT_TRUE(std::is_sorted(both.latencies_ns.begin(), both.latencies_ns.end()));
  ASSERT_TRUE(both.server.has_value());
  EXPECT_EQ(both.server->queue_ns, 400000u);
  b.server.reset();
  EXPECT_FALSE(merge({a, b}).server.has_value());

  ServerCounters before, after;
  before.queue_count = 10, before.queue_ns = 5000;
  after.queue_count = 14, after.queue_ns = 9000;
  const ServerCounters d = after - before;
  EXPECT_EQ(d.queue_count, 4u);
  EXPECT_EQ(d.queue_ns, 4000u);
  EXPECT_EQ((before - after).queue_count, 0u);  // a restarted server: zeros, not wrap-around
}

LevelResult level(double lvl, double thr, uint64_t p50, bool server, uint64_t failed) {
  LevelResult r;
  r.level = lvl;
  r.throughput = thr;
  r.client_send_us = 3, r.client_recv_us = 1;
  r.p50_us = p50, r.p90_us = p50 + 10, r.p95_us = p50 + 20, r.p99_us = p50 + 30, r.avg_us = p50 + 5;
  r.has_server = server;
  r.network_us = 7, r.queue_us = 11, r.compute_input_us = 2, r.compute_infer_us = 40, r.compute_output_us = 4;
  r.failed = failed;
  r.stabilizing_latency_us = r.avg_us;
  r.stable = true;
  return r;
}

TEST(PerfStats, CsvHasPerfAnalyzersColumnsAndSortsByThroughput) {
  const std::string csv = csv_report({level(1, 200.25, 100, true, 0), level(2, 150, 300, false, 5)}, false);
  EXPECT_EQ(csv,
            "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
            "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
            "Avg latency,Failed\n"
            "2,150.0,3,,,,,,1,300,310,320,330,305,5\n"
            "1,200.2,3,7,11,2,40,4,1,100,110,120,130,105,0\n");

  LevelResult rate = level(12.5, 25, 100, true, 0);
  rate.request_rate_mode = true;
  rate.extra_percentile = 85;
  rate.extra_percentile_us = 115;
  const std::string rcsv = csv_report({rate}, true);
  EXPECT_EQ(rcsv.substr(0, rcsv.find('\n')),
            "Request Rate,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
            "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
            "p85 latency,Avg latency,Failed");
  EXPECT_EQ(rcsv.substr(rcsv.find('\n') + 1), "12.5,25.0,3,7,11,2,40,4,1,100,110,120,130,115,105,0\n");
}

TEST(PerfStats, JsonReportIsVersionedAndHasEveryFigure) {
  RunInfo info;
  info.url = "http://h:1";
  info.protocol = "http";
  info.model = "m";
  info.batch = 2;
  info.tensor_format = "binary";
  info.input_data = "random";
  info.measurement_interval_ms = 100;
  info.stability_percentage = 10;
  info.max_trials = 5;
  LevelResult r = summarize(known_measurement(), false, 4, 2, -1);
  r.stable = true;
  r.windows = 3;
  const json j = json_report(info, {r});
  EXPECT_EQ(j["schema_version"], 1);
  EXPECT_EQ(j["mode"], "concurrency");
  EXPECT_EQ(j["batch_size"], 2);
  EXPECT_EQ(j["stabilizing_latency"], "avg");
  ASSERT_EQ(j["levels"].size(), 1u);
  const json& l = j["levels"][0];
  EXPECT_EQ(l["concurrency"], 4);
  EXPECT_EQ(l["stable"], true);
  EXPECT_DOUBLE_EQ(l["throughput_infer_per_sec"].get<double>(), 4.0);
  EXPECT_EQ(l["requests"]["success"], 4);
  EXPECT_EQ(l["requests"]["failed"], 3);
  EXPECT_EQ(l["latency_us"]["p50"], 200);
  EXPECT_EQ(l["latency_us"]["avg"], 250);
  EXPECT_EQ(l["server_us"]["queue"], 50);
  EXPECT_EQ(l["server_us"]["network"], 70);
  EXPECT_EQ(l["errors"]["http_503"]["count"], 2);
  EXPECT_EQ(l["errors"]["http_503"]["example"], "queue full");
  EXPECT_EQ(l["errors"]["timeout"]["count"], 1);
}

TEST(PerfStats, TextSummaryHasPerfAnalyzersLines) {
  const std::string text = text_summary({level(4, 812.5, 4900, true, 0)}, -1);
  EXPECT_NE(text.find("Concurrency: 4, throughput: 812.5 infer/sec, latency 4905 usec"), std::string::npos) << text;
}

// ---- Request encoders.

std::string bytes_of(std::initializer_list<unsigned char> b) { return std::string(b.begin(), b.end()); }

// x: FP32 [2,3] and ids: INT64 [2], their bytes written out by hand (IEEE-754 / two's complement,
// little endian) rather than produced by the code under test.
Inputs two_inputs() {
  InputData x{"x", "FP32", {2, 3}, {}};
  x.bytes = bytes_of({0x00, 0x00, 0xC0, 0x3F,    // 1.5
                      0x00, 0x00, 0x00, 0xC0,    // -2
                      0x00, 0x00, 0x80, 0x3E,    // 0.25
                      0x00, 0x00, 0x40, 0x40,    // 3
                      0x00, 0x00, 0x80, 0x40,    // 4
                      0x00, 0x00, 0x00, 0xBF});  // -0.5
  InputData ids{"ids", "INT64", {2}, {}};
  ids.bytes = bytes_of({0x07, 0, 0, 0, 0, 0, 0, 0,                             // 7
                        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF});    // -1
  return {x, ids};
}

TEST(PerfEncode, BinaryBodyIsJsonHeaderThenRawBytesInInputOrder) {
  const HttpBody b = encode_binary_request(two_inputs());
  EXPECT_EQ(b.content_type, "application/octet-stream");
  ASSERT_GT(b.json_length, 0u);
  ASSERT_EQ(b.body.size(), b.json_length + 24 + 16);
  // The header is exactly the first json_length bytes: it parses alone and ends with its '}'.
  EXPECT_EQ(b.body[b.json_length - 1], '}');
  const json h = json::parse(b.body.substr(0, b.json_length));
  ASSERT_EQ(h["inputs"].size(), 2u);
  EXPECT_EQ(h["inputs"][0]["name"], "x");
  EXPECT_EQ(h["inputs"][0]["datatype"], "FP32");
  EXPECT_EQ(h["inputs"][0]["shape"], json::array({2, 3}));
  EXPECT_EQ(h["inputs"][0]["parameters"]["binary_data_size"], 24);
  EXPECT_FALSE(h["inputs"][0].contains("data"));
  EXPECT_EQ(h["inputs"][1]["name"], "ids");
  EXPECT_EQ(h["inputs"][1]["datatype"], "INT64");
  EXPECT_EQ(h["inputs"][1]["shape"], json::array({2}));
  EXPECT_EQ(h["inputs"][1]["parameters"]["binary_data_size"], 16);
  EXPECT_EQ(h["parameters"]["binary_data_output"], true);
  const std::string expected_tail = bytes_of({0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x00, 0xC0, 0x00, 0x00, 0x80, 0x3E,
                                              0x00, 0x00, 0x40, 0x40, 0x00, 0x00, 0x80, 0x40, 0x00, 0x00, 0x00, 0xBF,
                                              0x07, 0, 0, 0, 0, 0, 0, 0,
                                              0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF});
  const std::string tail = b.body.substr(b.json_length);
  ASSERT_EQ(tail.size(), expected_tail.size());
  for (size_t i = 0; i < tail.size(); ++i)
    EXPECT_EQ(static_cast<unsigned char>(tail[i]), static_cast<unsigned char>(expected_tail[i])) << "byte " << i;
}

TEST(PerfEncode, SharedMemoryBodyNamesTheRegionAndCarriesNoData) {
  Inputs inputs = {{"a", "FP32", {1, 2}, std::string(8, 'x')}, {"b", "INT64", {1}, std::string(8, 'y')}};
  const HttpBody b = encode_shared_memory_request(inputs, "r0", {0, 64});
  EXPECT_EQ(b.json_length, 0u);
  EXPECT_EQ(b.content_type, "application/json");
  const json j = json::parse(b.body);
  ASSERT_EQ(j["inputs"].size(), 2u);
  EXPECT_EQ(j["inputs"][1]["name"], "b");
  EXPECT_EQ(j["inputs"][1]["parameters"]["shared_memory_region"], "r0");
  EXPECT_EQ(j["inputs"][1]["parameters"]["shared_memory_offset"], 64);
  EXPECT_EQ(j["inputs"][1]["parameters"]["shared_memory_byte_size"], 8);
  EXPECT_FALSE(j["inputs"][0].contains("data"));
  EXPECT_EQ(b.body.find("xxxx"), std::string::npos);
}

TEST(PerfEncode, JsonBodyCarriesTypedFlatData) {
  const HttpBody b = encode_json_request(two_inputs());
  EXPECT_EQ(b.json_length, 0u);
  EXPECT_EQ(b.content_type, "application/json");
  const json j = json::parse(b.body);
  ASSERT_EQ(j["inputs"].size(), 2u);
  EXPECT_EQ(j["inputs"][0]["shape"], json::array({2, 3}));
  EXPECT_EQ(j["inputs"][0]["data"], json::parse("[1.5, -2.0, 0.25, 3.0, 4.0, -0.5]"));
  EXPECT_EQ(j["inputs"][1]["data"], json::parse("[7, -1]"));
  EXPECT_TRUE(j["inputs"][1]["data"][1].is_number_integer());
  EXPECT_FALSE(j["inputs"][0].contains("parameters"));

  InputData flags{"mask", "BOOL", {3}, bytes_of({1, 0, 1})};
  EXPECT_EQ(json::parse(encode_json_request({flags}).body)["inputs"][0]["data"], json::parse("[true, false, true]"));
  InputData half{"h", "FP16", {1}, bytes_of({0x00, 0x3C})};
  try {
    encode_json_request({half});
    FAIL() << "FP16 as JSON";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("input 'h' is FP16"), std::string::npos) << e.what();
  }
}

// ---- Parsers.

TEST(PerfParse, ModelMetadataConfigAndStats) {
  const ModelInfo m = parse_model_metadata(json::parse(R"({"name": "resnet", "versions": ["1", "2"],
      "platform": "kiln_engine", "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
      "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]})"));
  EXPECT_EQ(m.name, "resnet");
  EXPECT_EQ(m.versions, (std::vector<std::string>{"1", "2"}));
  ASSERT_EQ(m.inputs.size(), 1u);
  EXPECT_EQ(m.inputs[0].shape, (std::vector<int64_t>{-1, 3, 224, 224}));
  EXPECT_EQ(m.outputs[0].name, "logits");
  EXPECT_THROW(parse_model_metadata(json::parse(R"({"name": "m"})")), kiln::Error);
  EXPECT_THROW(parse_model_metadata(json::parse(R"({"inputs": [{"datatype": "FP32", "shape": [1]}]})")), kiln::Error);

  EXPECT_EQ(parse_max_batch_size(json::parse(R"({"name": "m", "max_batch_size": 8})")), 8);
  EXPECT_EQ(parse_max_batch_size(json::parse(R"({"name": "m", "maxBatchSize": 4})")), 4);
  EXPECT_EQ(parse_max_batch_size(json::parse(R"({"name": "m", "input": []})")), 0);  // protobuf JSON drops zeros
  EXPECT_EQ(parse_max_batch_size(json::parse(R"({"config": {"max_batch_size": 16}})")), 16);
  EXPECT_EQ(parse_max_batch_size(json::parse("[]")), -1);

  const json stats = json::parse(R"({"model_stats": [
      {"name": "m", "version": "1", "inference_stats": {"success": {"count": 10, "ns": 1000},
        "queue": {"count": 10, "ns": 200}, "compute_input": {"count": 10, "ns": 30},
        "compute_infer": {"count": 10, "ns": 400}, "compute_output": {"count": 10, "ns": "50"}}},
      {"name": "m", "version": "2", "inference_stats": {"success": {"count": 1, "ns": 7},
        "queue": {"count": 1, "ns": 1}}},
      {"name": "other", "version": "1", "inference_stats": {"success": {"count": 99, "ns": 99}}}]})");
  const ServerCounters all = parse_model_stats(stats, "m", "");
  EXPECT_EQ(all.success_count, 11u);
  EXPECT_EQ(all.success_ns, 1007u);
  EXPECT_EQ(all.queue_ns, 201u);
  EXPECT_EQ(all.compute_output_ns, 50u);  // 64-bit counters may come as strings
  const ServerCounters v1 = parse_model_stats(stats, "m", "1");
  EXPECT_EQ(v1.success_count, 10u);
  EXPECT_EQ(v1.compute_infer_ns, 400u);
  EXPECT_THROW(parse_model_stats(json::parse("{}"), "m", ""), kiln::Error);

  EXPECT_EQ(error_text(R"({"error": "unknown model 'x'"})"), "unknown model 'x'");
  EXPECT_EQ(error_text("plain text\n"), "plain text");
  EXPECT_EQ(error_text(""), "(empty body)");
}

TEST(PerfParse, EndpointRangeAndShapeFlags) {
  Endpoint e = parse_endpoint("localhost:8000", 1);
  EXPECT_EQ(e.host, "localhost");
  EXPECT_EQ(e.port, 8000);
  e = parse_endpoint("http://10.0.0.2:9000/", 1);
  EXPECT_EQ(e.host, "10.0.0.2");
  EXPECT_EQ(e.port, 9000);
  e = parse_endpoint("myhost", 8001);
  EXPECT_EQ(e.port, 8001);
  e = parse_endpoint("[::1]:8000", 1);
  EXPECT_EQ(e.host, "::1");
  EXPECT_EQ(e.port, 8000);
  EXPECT_THROW(parse_endpoint(":8000", 1), kiln::Error);
  EXPECT_THROW(parse_endpoint("h:0", 1), kiln::Error);
  EXPECT_THROW(parse_endpoint("h:70000", 1), kiln::Error);
  EXPECT_THROW(parse_endpoint("h:80x", 1), kiln::Error);
  EXPECT_THROW(parse_endpoint("https://h:443", 1), kiln::Error);

  LoadRange r = parse_range("1:4:1", true, "--concurrency-range");
  EXPECT_EQ(r.levels(), (std::vector<double>{1, 2, 3, 4}));
  EXPECT_EQ(parse_range("2:8:3", true, "f").levels(), (std::vector<double>{2, 5, 8}));
  EXPECT_EQ(parse_range("2:9:3", true, "f").levels(), (std::vector<double>{2, 5, 8}));
  EXPECT_EQ(parse_range("4", true, "f").levels(), (std::vector<double>{4}));
  EXPECT_EQ(parse_range("1:3", true, "f").levels(), (std::vector<double>{1, 2, 3}));
  const auto rates = parse_range("0.5:1.5:0.5", false, "f").levels();
  ASSERT_EQ(rates.size(), 3u);
  EXPECT_DOUBLE_EQ(rates[2], 1.5);
  for (const char* badr : {"8:1", "0:4", "1:4:0", "1:4:-1", "a:2", "1:2:3:4", "", "1.5:2", "1:"}) {
    try {
      parse_range(badr, true, "--concurrency-range");
      ADD_FAILURE() << "accepted " << badr;
    } catch (const kiln::Error& err) {
      EXPECT_NE(std::string(err.what()).find("--concurrency-range"), std::string::npos) << err.what();
    }
  }

  const auto shapes = parse_shape_flags({"x:3,224,224", "input:0:16"});
  EXPECT_EQ(shapes.at("x"), (std::vector<int64_t>{3, 224, 224}));
  EXPECT_EQ(shapes.at("input:0"), (std::vector<int64_t>{16}));  // the name ends at the last ':'
  for (std::vector<std::string> badf : std::vector<std::vector<std::string>>{
           {"x"}, {"x:"}, {":3"}, {"x:3,0"}, {"x:3,-1"}, {"x:a"}, {"x:1", "x:2"}})
    EXPECT_THROW(parse_shape_flags(badf), kiln::Error) << badf[0];
}

// ---- Inputs.

ModelInfo batching_model() {
  ModelInfo m;
  m.name = "addrelu";
  m.max_batch_size = 8;
  m.inputs = {{"x", "FP32", {-1, 3}}, {"ids", "INT64", {-1, -1}}};
  return m;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const kiln::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(PerfInputs, ShapesComeFromMetadataBatchAndShapeFlags) {
  InputOptions o;
  o.batch = 4;
  o.shapes = {{"ids", {16}}};
  o.data = "zero";
  const auto reqs = make_inputs(batching_model(), o);
  ASSERT_EQ(reqs.size(), 1u);
  ASSERT_EQ(reqs[0].size(), 2u);
  EXPECT_EQ(reqs[0][0].shape, (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(reqs[0][0].bytes, std::string(4 * 3 * 4, '\0'));
  EXPECT_EQ(reqs[0][1].shape, (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(reqs[0][1].bytes.size(), 4u * 16 * 8);

  o.data = "random";
  const auto rnd = make_inputs(batching_model(), o);
  const float* xs = reinterpret_cast<const float*>(rnd[0][0].bytes.data());
  for (int i = 0; i < 12; ++i) EXPECT_TRUE(xs[i] >= -1.f && xs[i] < 1.f) << xs[i];
  const int64_t* ids = reinterpret_cast<const int64_t*>(rnd[0][1].bytes.data());
  for (int i = 0; i < 64; ++i) EXPECT_TRUE(ids[i] >= 0 && ids[i] < 10) << ids[i];
  EXPECT_EQ(make_inputs(batching_model(), o)[0][0].bytes, rnd[0][0].bytes);  // seeded

  // A model that does not batch: the whole shape, -b 1 only.
  ModelInfo flat;
  flat.name = "flat";
  flat.max_batch_size = 0;
  flat.inputs = {{"tokens", "INT32", {1, -1}}};
  InputOptions f;
  f.shapes = {{"tokens", {1, 7}}};
  EXPECT_EQ(make_inputs(flat, f)[0][0].shape, (std::vector<int64_t>{1, 7}));
}

TEST(PerfInputs, ErrorsNameTheInputAndTheFlag) {
  InputOptions o;
  o.data = "zero";
  // ids has a dynamic dim besides the batch.
  std::string m = message_of([&] { make_inputs(batching_model(), o); });
  EXPECT_NE(m.find("input 'ids' has a dynamic dim"), std::string::npos) << m;
  EXPECT_NE(m.find("--shape ids:"), std::string::npos) << m;
  o.shapes = {{"ids", {16}}, {"nope", {1}}};
  m = message_of([&] { make_inputs(batching_model(), o); });
  EXPECT_NE(m.find("'nope', which is not an input"), std::string::npos) << m;
  EXPECT_NE(m.find("inputs: ids, x"), std::string::npos) << m;
  o.shapes = {{"ids", {16}}, {"x", {4}}};
  m = message_of([&] { make_inputs(batching_model(), o); });
  EXPECT_NE(m.find("the model fixes it at 3"), std::string::npos) << m;
  o.shapes = {{"ids", {16, 2}}};
  m = message_of([&] { make_inputs(batching_model(), o); });
  EXPECT_NE(m.find("gives input 'ids' 2 dims"), std::string::npos) << m;
  o.shapes = {{"ids", {16}}};
  o.batch = 9;
  m = message_of([&] { make_inputs(batching_model(), o); });
  EXPECT_NE(m.find("over model 'addrelu''s max_batch_size 8"), std::string::npos) << m;

  ModelInfo flat;
  flat.name = "flat";
  flat.max_batch_size = 0;
  flat.inputs = {{"t", "FP32", {2}}};
  InputOptions b2;
  b2.batch = 2;
  m = message_of([&] { make_inputs(flat, b2); });
  EXPECT_NE(m.find("does not batch"), std::string::npos) << m;
  flat.inputs = {{"s", "BYTES", {1}}};
  m = message_of([&] { make_inputs(flat, {}); });
  EXPECT_NE(m.find("input 's' is BYTES"), std::string::npos) << m;
}

class PerfDataFile : public kiln_test::TempDirTest {
 protected:
  PerfDataFile() : TempDirTest("kiln_perf_data_") {}
  std::string write(const std::string& text) {
    const std::string path = (dir_ / "data.json").string();
    std::ofstream(path) << text;
    return path;
  }
};

TEST_F(PerfDataFile, EntriesBecomeRequestsRepeatedOverTheBatch) {
  InputOptions o;
  o.batch = 2;
  o.data = write(R"({"data": [
      {"x": [1, 2, 3], "ids": {"content": [[5, 6], [7, 8]], "shape": [4]}},
      {"x": [0.5, 0, -1], "ids": {"content": [1, 2, 3, 4], "shape": [4]}}]})");
  const auto reqs = make_inputs(batching_model(), o);
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0][0].shape, (std::vector<int64_t>{2, 3}));
  std::vector<float> x(6);
  std::memcpy(x.data(), reqs[0][0].bytes.data(), 24);
  EXPECT_EQ(x, (std::vector<float>{1, 2, 3, 1, 2, 3}));
  EXPECT_EQ(reqs[0][1].shape, (std::vector<int64_t>{2, 4}));
  std::vector<int64_t> ids(8);
  std::memcpy(ids.data(), reqs[0][1].bytes.data(), 64);
  EXPECT_EQ(ids, (std::vector<int64_t>{5, 6, 7, 8, 5, 6, 7, 8}));
  std::memcpy(x.data(), reqs[1][0].bytes.data(), 24);
  EXPECT_EQ(x, (std::vector<float>{0.5f, 0, -1, 0.5f, 0, -1}));

  o.data = write(R"({"data": [{"x": [1, 2], "ids": {"content": [1], "shape": [1]}}]})");
  std::string m = message_of([&] { make_inputs(batching_model(), o); });
  EXPECT_NE(m.find("data[0] input 'x': 2 values for shape [3]"), std::string::npos) << m;
  o.data = write(R"({"data": [{"x": [1, 2, 3], "ids": {"content": [1.5], "shape": [1]}}]})");
  m = message_of([&] { make_inputs(batching_model(), o); });
  EXPECT_NE(m.find("1.5 is not a INT64 value"), std::string::npos) << m;
  o.data = write(R"({"data": [{"x": [1, 2, 3]}]})");
  m = message_of([&] { make_inputs(batching_model(), o); });
  EXPECT_NE(m.find("has no values for input 'ids'"), std::string::npos) << m;
  o.data = write("not json");
  m = message_of([&] { make_inputs(batching_model(), o); });
  EXPECT_NE(m.find("not valid JSON"), std::string::npos) << m;
  o.data = (dir_ / "missing.json").string();
  m = message_of([&] { make_inputs(batching_model(), o); });
  EXPECT_NE(m.find("cannot open"), std::string::npos) << m;
}

// A local port nothing listens on: bound by the kernel's choice, then closed again.
int closed_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    ADD_FAILURE() << "no local port";
  ::close(fd);
  return ntohs(addr.sin_port);
}

// ---- A fake KServe v2 server.

// Serves "addrelu" (batching, max_batch_size 8, x: FP32 [-1,3] -> y) and "dyn" (no batching,
// tokens: INT64 [1,-1]). Every inference body is checked against the protocol; a body that breaks
// it is answered 400 and counted in `bad`. With fail_every = N, every Nth inference is answered 503.
// Each successful inference sleeps 2 ms and is charged fixed server times (queue 1 us, compute
// input 2 us, infer 5 us, output 3 us, request 12 us) in its statistics.
class FakeKServe {
 public:
  explicit FakeKServe(int fail_every = 0) : fail_every_(fail_every) {
    svr_.set_keep_alive_max_count(100000);
    svr_.set_tcp_nodelay(true);
    svr_.Get("/v2/models/addrelu", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"name": "addrelu", "versions": ["1"], "platform": "kiln_engine",
          "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
          "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]})",
                      "application/json");
    });
    svr_.Get("/v2/models/addrelu/config", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"name": "addrelu", "max_batch_size": 8})", "application/json");
    });
    svr_.Get("/v2/models/addrelu/stats", [this](const httplib::Request&, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      auto pair = [](uint64_t n, uint64_t ns_each) { return json{{"count", n}, {"ns", n * ns_each}}; };
      json s = {{"name", "addrelu"}, {"version", "1"},
                {"inference_stats", {{"success", pair(served_, 12000)}, {"queue", pair(served_, 1000)},
                                     {"compute_input", pair(served_, 2000)}, {"compute_infer", pair(served_, 5000)},
                                     {"compute_output", pair(served_, 3000)}}}};
      res.set_content(json{{"model_stats", {s}}}.dump(), "application/json");
    });
    svr_.Post("/v2/models/addrelu/infer", [this](const httplib::Request& req, httplib::Response& res) {
      infer_addrelu(req, res);
    });
    svr_.Get("/v2/models/dyn", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"name": "dyn", "versions": ["1"], "platform": "onnx",
          "inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, -1]}], "outputs": []})",
                      "application/json");
    });
    svr_.Get("/v2/models/dyn/config", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"name": "dyn", "max_batch_size": 0})", "application/json");
    });
    svr_.Post("/v2/models/dyn/infer", [this](const httplib::Request& req, httplib::Response& res) {
      const size_t hlen = req.has_header("Inference-Header-Content-Length")
                              ? std::stoul(req.get_header_value("Inference-Header-Content-Length"))
                              : 0;
      const json h = json::parse(req.body.substr(0, hlen), nullptr, false);
      const bool ok = hlen > 0 && !h.is_discarded() && h["inputs"][0]["name"] == "tokens" &&
                      h["inputs"][0]["datatype"] == "INT64" && h["inputs"][0]["shape"] == json::array({1, 16}) &&
                      req.body.size() == hlen + 16 * 8;
      if (!ok) ++bad;
      res.status = ok ? 200 : 400;
      res.set_content(ok ? R"({"model_name": "dyn", "outputs": []})" : R"({"error": "bad body"})", "application/json");
    });
    svr_.Get(R"(/v2/models/([^/]+))", [](const httplib::Request& req, httplib::Response& res) {
      res.status = 404;
      res.set_content(json{{"error", "unknown model '" + req.matches[1].str() + "'"}}.dump(), "application/json");
    });
    port_ = svr_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { svr_.listen_after_bind(); });
    while (!svr_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~FakeKServe() {
    svr_.stop();
    thread_.join();
  }
  int port() const { return port_; }
  std::string url() const { return "127.0.0.1:" + std::to_string(port_); }
  uint64_t served() {
    std::lock_guard<std::mutex> lock(mu_);
    return served_;
  }

  std::atomic<uint64_t> bad{0}, failed{0}, json_bodies{0}, binary_bodies{0};

 private:
  void infer_addrelu(const httplib::Request& req, httplib::Response& res) {
    const uint64_t n = ++requests_;
    // Check the body: binary (header length given) or JSON.
    std::string why;
    int64_t batch = 0;
    std::vector<float> x;
    json h;
    if (req.has_header("Inference-Header-Content-Length")) {
      ++binary_bodies;
      const size_t hlen = std::stoul(req.get_header_value("Inference-Header-Content-Length"));
      h = hlen <= req.body.size() ? json::parse(req.body.substr(0, hlen), nullptr, false) : json();
      if (h.is_discarded() || !h.is_object()) why = "header is not JSON";
      else {
        const json& in = h["inputs"][0];
        batch = in["shape"][0].get<int64_t>();
        const size_t size = static_cast<size_t>(batch) * 3 * 4;
        if (in["parameters"]["binary_data_size"] != size) why = "binary_data_size";
        else if (req.body.size() != hlen + size) why = "body size";
        x.resize(static_cast<size_t>(batch) * 3);
        if (why.empty()) std::memcpy(x.data(), req.body.data() + hlen, size);
      }
    } else {
      ++json_bodies;
      h = json::parse(req.body, nullptr, false);
      if (h.is_discarded() || !h.is_object()) why = "body is not JSON";
      else {
        batch = h["inputs"][0]["shape"][0].get<int64_t>();
        x = h["inputs"][0]["data"].get<std::vector<float>>();
        if (x.size() != static_cast<size_t>(batch) * 3) why = "data length";
      }
    }
    if (why.empty()) {
      const json& in = h["inputs"][0];
      if (h["inputs"].size() != 1 || in["name"] != "x" || in["datatype"] != "FP32" ||
          in["shape"] != json::array({batch, 3}) || batch < 1 || batch > 8)
        why = "input x";
    }
    if (!why.empty()) {
      ++bad;
      res.status = 400;
      res.set_content(json{{"error", "bad request: " + why}}.dump(), "application/json");
      return;
    }
    if (fail_every_ && n % static_cast<uint64_t>(fail_every_) == 0) {
      ++failed;
      res.status = 503;
      res.set_content(R"({"error": "queue full"})", "application/json");
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::vector<float> y(x.size());
    const float w[3] = {1, -5, 0.5f};
    for (size_t i = 0; i < x.size(); ++i) y[i] = std::max(0.f, x[i] + w[i % 3]);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++served_;
    }
    res.set_content(json{{"model_name", "addrelu"}, {"model_version", "1"},
                         {"outputs", {{{"name", "y"}, {"datatype", "FP32"}, {"shape", {batch, 3}}, {"data", y}}}}}
                        .dump(),
                    "application/json");
  }

  httplib::Server svr_;
  std::thread thread_;
  int port_ = 0;
  int fail_every_;
  std::atomic<uint64_t> requests_{0};
  std::mutex mu_;
  uint64_t served_ = 0;
};

struct CsvRow {
  std::map<std::string, std::string> cells;
  double num(const std::string& col) const { return std::stod(cells.at(col)); }
};
std::vector<CsvRow> parse_csv(const std::string& text, std::vector<std::string>* header = nullptr) {
  std::istringstream in(text);
  std::string line;
  std::vector<std::string> cols;
  std::vector<CsvRow> rows;
  auto split = [](const std::string& l) {
    std::vector<std::string> out;
    std::stringstream ss(l);
    std::string c;
    while (std::getline(ss, c, ',')) out.push_back(c);
    if (!l.empty() && l.back() == ',') out.push_back("");
    return out;
  };
  if (std::getline(in, line)) cols = split(line);
  while (std::getline(in, line)) {
    const auto cells = split(line);
    EXPECT_EQ(cells.size(), cols.size()) << line;
    CsvRow r;
    for (size_t i = 0; i < cols.size() && i < cells.size(); ++i) r.cells[cols[i]] = cells[i];
    rows.push_back(r);
  }
  if (header) *header = cols;
  return rows;
}

PerfOptions quick_options(const std::string& range) {
  PerfOptions o;
  o.range = parse_range(range, true, "--concurrency-range");
  o.batch = 2;
  o.measurement_interval_ms = 100;
  o.max_trials = 5;
  o.stability_percentage = 50;
  return o;
}

std::unique_ptr<PerfTransport> http_to(const FakeKServe& fake, const std::string& model, bool binary = true) {
  HttpOptions h;
  h.endpoint = parse_endpoint(fake.url(), 8000);
  h.model = model;
  h.binary = binary;
  h.timeout_ms = 5000;
  return make_http_transport(h);
}

TEST(PerfEndToEnd, ConcurrencyLevelsAgainstAFakeServer) {
  FakeKServe fake;
  auto t = http_to(fake, "addrelu");
  const ModelInfo info = t->metadata();
  EXPECT_EQ(info.max_batch_size, 8);
  InputOptions in;
  in.batch = 2;
  t->prepare(make_inputs(info, in));
  const PerfOptions o = quick_options("1:2");
  std::vector<double> seen;
  const auto results = run_perf(*t, o, nullptr, [&](const LevelResult& r) { seen.push_back(r.level); });
  EXPECT_EQ(seen, (std::vector<double>{1, 2}));
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(fake.bad.load(), 0u) << "the fake server refused a request body";

  std::vector<std::string> header;
  const auto rows = parse_csv(csv_report(results, false), &header);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(header.front(), "Concurrency");
  EXPECT_EQ(header.back(), "Failed");
  std::set<std::string> levels;
  uint64_t reported = 0;
  for (const auto& r : rows) {
    levels.insert(r.cells.at("Concurrency"));
    EXPECT_EQ(r.cells.at("Failed"), "0");
    EXPECT_GT(r.num("Inferences/Second"), 0);
    // The fake charges fixed times per request, so the window averages are exact.
    EXPECT_EQ(r.cells.at("Server Queue"), "1");
    EXPECT_EQ(r.cells.at("Server Compute Input"), "2");
    EXPECT_EQ(r.cells.at("Server Compute Infer"), "5");
    EXPECT_EQ(r.cells.at("Server Compute Output"), "3");
    // Every request sleeps 2 ms in the server: no latency can be shorter.
    EXPECT_GE(r.num("p50 latency"), 2000);
    EXPECT_LE(r.num("p50 latency"), r.num("p90 latency"));
    EXPECT_LE(r.num("p90 latency"), r.num("p95 latency"));
    EXPECT_LE(r.num("p95 latency"), r.num("p99 latency"));
  }
  EXPECT_EQ(levels, (std::set<std::string>{"1", "2"}));
  for (const auto& r : results) {
    reported += r.success;
    // throughput = requests x batch / seconds, and at most `level` requests are in flight, each >= 2 ms.
    EXPECT_NEAR(r.throughput, static_cast<double>(r.success) * 2 / r.duration_s, 1e-6);
    EXPECT_LE(r.throughput, r.level * 2 / 0.002);
  }
  EXPECT_GE(fake.served(), reported);
}

TEST(PerfEndToEnd, JsonTensorsAreAcceptedToo) {
  FakeKServe fake;
  auto t = http_to(fake, "addrelu", /*binary=*/false);
  InputOptions in;
  in.batch = 2;
  t->prepare(make_inputs(t->metadata(), in));
  const auto results = run_perf(*t, quick_options("1"), nullptr, nullptr);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_GT(results[0].success, 0u);
  EXPECT_EQ(results[0].failed, 0u);
  EXPECT_EQ(fake.bad.load(), 0u);
  EXPECT_GT(fake.json_bodies.load(), 0u);
  EXPECT_EQ(fake.binary_bodies.load(), 0u);
}

TEST(PerfEndToEnd, FailedRequestsAreCountedByKind) {
  FakeKServe fake(/*fail_every=*/3);
  auto t = http_to(fake, "addrelu");
  InputOptions in;
  in.batch = 2;
  t->prepare(make_inputs(t->metadata(), in));
  const auto results = run_perf(*t, quick_options("2"), nullptr, nullptr);
  ASSERT_EQ(results.size(), 1u);
  const LevelResult& r = results[0];
  EXPECT_GT(r.failed, 0u);
  EXPECT_GT(r.success, r.failed);  // 2 of every 3 succeed
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors.at("http_503"), r.failed);
  EXPECT_EQ(r.error_examples.at("http_503"), "queue full");
  EXPECT_LE(r.failed, fake.failed.load());
  EXPECT_EQ(fake.bad.load(), 0u);
  const auto rows = parse_csv(csv_report(results, false));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].cells.at("Failed"), std::to_string(r.failed));
}

TEST(PerfEndToEnd, RequestRateModeSendsOnSchedule) {
  FakeKServe fake;
  auto t = http_to(fake, "addrelu");
  t->prepare(make_inputs(t->metadata(), {}));
  PerfOptions o = quick_options("1");
  o.request_rate_mode = true;
  o.range = parse_range("50", false, "--request-rate-range");
  o.batch = 1;
  o.max_threads = 4;
  const auto results = run_perf(*t, o, nullptr, nullptr);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_TRUE(results[0].request_rate_mode);
  EXPECT_GT(results[0].success, 0u);
  EXPECT_EQ(results[0].failed, 0u);
  // A schedule of 50 per second cannot be beaten: requests never leave early.
  // (One more for a window's edge, and the 4 workers' requests sent in the window before.)
  EXPECT_LE(static_cast<double>(results[0].success), 50 * results[0].duration_s + 1 + 4);
}

TEST(PerfEndToEnd, MetadataErrorsNameTheServerAndModel) {
  FakeKServe fake;
  std::string m = message_of([&] { http_to(fake, "nope")->metadata(); });
  EXPECT_NE(m.find("unknown model 'nope'"), std::string::npos) << m;
  EXPECT_NE(m.find("HTTP 404"), std::string::npos) << m;

  const int closed_port = closed_local_port();
  HttpOptions h;
  h.endpoint = {"127.0.0.1", closed_port};
  h.model = "addrelu";
  try {
    make_http_transport(h)->metadata();
    FAIL() << "metadata from a closed port";
  } catch (const kiln::Error& e) {
    EXPECT_EQ(e.code(), kiln::ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("http://127.0.0.1:" + std::to_string(closed_port)), std::string::npos)
        << e.what();
  }
}

// ---- The command line.

class PerfCli : public kiln_test::TempDirTest {
 protected:
  PerfCli() : TempDirTest("kiln_perf_cli_") {}
  static std::string read(const std::filesystem::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
};

TEST_F(PerfCli, WritesCsvAndJsonReports) {
  FakeKServe fake;
  const auto csv = dir_ / "perf.csv", js = dir_ / "perf.json";
  const auto r = kiln_test::run_kiln_cli("perf -m addrelu -u " + fake.url() +
                                         " -b 2 --concurrency-range 1:2 -p 100 -r 5 -s 50 -f " + csv.string() +
                                         " --json " + js.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("Concurrency: 1, throughput: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Concurrency: 2, throughput: "), std::string::npos) << r.out;
  EXPECT_EQ(fake.bad.load(), 0u);
  const auto rows = parse_csv(read(csv));
  ASSERT_EQ(rows.size(), 2u);
  for (const auto& row : rows) {
    EXPECT_EQ(row.cells.at("Failed"), "0");
    EXPECT_EQ(row.cells.at("Server Compute Infer"), "5");
    EXPECT_GE(row.num("p50 latency"), 2000);
  }
  const json j = json::parse(read(js));
  EXPECT_EQ(j["schema_version"], 1);
  EXPECT_EQ(j["model"], "addrelu");
  EXPECT_EQ(j["batch_size"], 2);
  EXPECT_EQ(j["tensor_format"], "binary");
  EXPECT_EQ(j["inputs"][0]["shape"], json::array({2, 3}));
  ASSERT_EQ(j["levels"].size(), 2u);
  EXPECT_EQ(j["levels"][0]["concurrency"], 1);
  EXPECT_EQ(j["levels"][1]["concurrency"], 2);
  for (const auto& l : j["levels"]) {
    EXPECT_EQ(l["requests"]["failed"], 0);
    EXPECT_GT(l["requests"]["success"].get<uint64_t>(), 0u);
  }
}

TEST_F(PerfCli, FailuresAreReportedNotFatal) {
  FakeKServe fake(/*fail_every=*/2);
  const auto csv = dir_ / "perf.csv";
  const auto r = kiln_test::run_kiln_cli("perf -m addrelu -u " + fake.url() + " -p 100 -r 4 -s 50 -f " + csv.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("http_503"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("queue full"), std::string::npos) << r.out;
  const auto rows = parse_csv(read(csv));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_GT(rows[0].num("Failed"), 0);
}

TEST_F(PerfCli, DynamicDimsNeedShape) {
  FakeKServe fake;
  auto r = kiln_test::run_kiln_cli("perf -m dyn -u " + fake.url() + " -p 100 -r 3");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("kiln: error (invalid argument): input 'tokens' has a dynamic dim"), std::string::npos) << r.out;
  r = kiln_test::run_kiln_cli("perf -m dyn -u " + fake.url() + " -b 2 -p 100 -r 3 --shape tokens:1,16");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("does not batch"), std::string::npos) << r.out;
  r = kiln_test::run_kiln_cli("perf -m dyn -u " + fake.url() + " -p 100 -r 3 -s 50 --shape tokens:1,16");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(fake.bad.load(), 0u);
}

TEST_F(PerfCli, ServerErrorsExitOne) {
  FakeKServe fake;
  auto r = kiln_test::run_kiln_cli("perf -m nope -u " + fake.url());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("unknown model 'nope'"), std::string::npos) << r.out;

  const int closed_port = closed_local_port();
  const std::string where = "127.0.0.1:" + std::to_string(closed_port);
  r = kiln_test::run_kiln_cli("perf -m addrelu -u " + where);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("cannot reach the server at http://" + where), std::string::npos) << r.out;
  r = kiln_test::run_kiln_cli("perf -m addrelu -i grpc -u " + where);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(r.out.find("this build has no gRPC") != std::string::npos ||
              r.out.find("cannot reach the server at grpc://" + where) != std::string::npos)
      << r.out;
}

TEST_F(PerfCli, BadFlagsExitTwo) {
  // The command exists: the exits below are its flag checks, not an unknown subcommand.
  ASSERT_EQ(kiln_test::run_kiln_cli("perf --help").code, 0);
  for (const std::string flags :
       {"--concurrency-range 8:1", "--concurrency-range 0:2", "--concurrency-range 1:4:0", "--concurrency-range x",
        "--request-rate-range 10:5", "--concurrency-range 1:2 --request-rate-range 10", "-p 0",
        "--measurement-interval -5", "-i foo", "--max-trials 2", "-s 0", "--percentile 100", "--shape x",
        "--shape x:0", "-u host:99999", "-b 0", "--binary --json-tensors", "-i grpc --json-tensors",
        "--request-distribution uniform", "--shared-memory cuda", "-i grpc --shared-memory system",
        "--shared-memory system --json-tensors"}) {
    const std::string url = flags.find("-u ") == std::string::npos ? " -u 127.0.0.1:1" : "";
    const auto r = kiln_test::run_kiln_cli("perf -m addrelu " + flags + url);
    EXPECT_EQ(r.code, 2) << flags << "\n" << r.out;
    EXPECT_EQ(r.out.find("cannot reach"), std::string::npos) << flags << ": checked only after connecting\n" << r.out;
  }
  const auto r = kiln_test::run_kiln_cli("perf -u 127.0.0.1:1");  // -m is required
  EXPECT_EQ(r.code, 2) << r.out;
}

}  // namespace
