// The KServe v2 HTTP front end and the server core behind it, in process: health, metadata, JSON
// and binary inference for every datatype, batching through HTTP, the repository and statistics
// extensions, metrics, and every malformed-request, overload, slow-client and shutdown case.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <future>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "onnx/onnx_import.h"
#include "serve/http_server.h"
#include "serve/server.h"
#include "serve_test_support.h"
#include "test_support.h"

namespace kiln::serve {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

using kiln_test::add_relu_reference;
using kiln_test::write_text;

// One Identity per datatype: input in_T -> output out_T, shape [batch, 2].
Model identity_model() {
  Model m;
  m.opsets[""] = 17;
  const std::vector<std::pair<std::string, DType>> types = {
      {"bool", DType::kBool}, {"u8", DType::kU8},   {"i8", DType::kI8},     {"i32", DType::kI32},
      {"i64", DType::kI64},   {"f16", DType::kF16}, {"bf16", DType::kBF16}, {"f64", DType::kF64}};
  for (const auto& [n, dt] : types) {
    m.graph.inputs.push_back("in_" + n);
    m.graph.outputs.push_back("out_" + n);
    m.graph.types["in_" + n] = TensorType{dt, Shape{Dim::sym("batch"), Dim(2)}};
    m.graph.nodes.push_back(Node{"id_" + n, "Identity", "", {"in_" + n}, {"out_" + n}, {}});
  }
  return m;
}

class ServeHttp : public kiln_test::ServeRepositoryTest {
 protected:
  ServeHttp() : ServeRepositoryTest("kiln_serve_http_") {}

  void start(ServerOptions o = {}, HttpOptions h = {}) {
    server_ = std::make_unique<InferenceServer>(fast_options(o));
    h.port = 0;
    http_ = std::make_unique<HttpFrontEnd>(*server_, h);
    server_->start();
    client_ = std::make_unique<httplib::Client>("127.0.0.1", http_->port());
    client_->set_read_timeout(30, 0);
  }
  void TearDown() override {
    if (server_) server_->shutdown(true);
    http_.reset();
    server_.reset();
    TempDirTest::TearDown();
  }
  httplib::Result post_json(const std::string& path, const json& body) {
    return client_->Post(path.c_str(), body.dump(), "application/json");
  }
  static json infer_body(const std::vector<float>& x, int64_t batch) {
    return {{"inputs", {{{"name", "x"}, {"shape", {batch, 3}}, {"datatype", "FP32"}, {"data", x}}}}};
  }
  static std::string error_of(const httplib::Result& r) { return json::parse(r->body).value("error", ""); }

  std::unique_ptr<InferenceServer> server_;
  std::unique_ptr<HttpFrontEnd> http_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(ServeHttp, HealthAndMetadata) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  EXPECT_EQ(client_->Get("/v2/health/live")->status, 200);
  EXPECT_EQ(client_->Get("/v2/health/ready")->status, 200);
  json server = json::parse(client_->Get("/v2")->body);
  EXPECT_EQ(server["name"], "kiln");
  EXPECT_FALSE(server["version"].get<std::string>().empty());

  auto md = client_->Get("/v2/models/addrelu");
  ASSERT_EQ(md->status, 200);
  json m = json::parse(md->body);
  EXPECT_EQ(m["name"], "addrelu");
  EXPECT_EQ(m["versions"], json({"1"}));
  ASSERT_EQ(m["inputs"].size(), 1u);
  EXPECT_EQ(m["inputs"][0]["name"], "x");
  EXPECT_EQ(m["inputs"][0]["datatype"], "FP32");
  EXPECT_EQ(m["inputs"][0]["shape"], json({-1, 3}));  // batch first
  EXPECT_EQ(m["outputs"][0]["name"], "y");
  EXPECT_EQ(client_->Get("/v2/models/addrelu/versions/1")->status, 200);
  EXPECT_EQ(client_->Get("/v2/models/addrelu/ready")->status, 200);
  EXPECT_EQ(client_->Get("/v2/models/addrelu/versions/1/ready")->status, 200);
  EXPECT_EQ(client_->Get("/v2/models/addrelu/versions/2/ready")->status, 503);
  json cfg = json::parse(client_->Get("/v2/models/addrelu/config")->body);
  EXPECT_EQ(cfg["max_batch_size"], 4);

  auto missing = client_->Get("/v2/models/nosuch");
  EXPECT_EQ(missing->status, 404);
  EXPECT_NE(error_of(missing).find("unknown model \"nosuch\""), std::string::npos);
  EXPECT_EQ(client_->Get("/v2/models/addrelu/versions/7")->status, 404);
  EXPECT_EQ(client_->Get("/v2/nowhere")->status, 404);
}

TEST_F(ServeHttp, JsonInferenceMatchesIndependentResult) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  const std::vector<float> x = {-2, 3, 7, 0.25f, 6, -1};
  auto r = post_json("/v2/models/addrelu/infer", [&] {
    json b = infer_body(x, 2);
    b["id"] = "req-7";
    return b;
  }());
  ASSERT_EQ(r->status, 200) << r->body;
  json out = json::parse(r->body);
  EXPECT_EQ(out["model_name"], "addrelu");
  EXPECT_EQ(out["model_version"], "1");
  EXPECT_EQ(out["id"], "req-7");
  ASSERT_EQ(out["outputs"].size(), 1u);
  EXPECT_EQ(out["outputs"][0]["name"], "y");
  EXPECT_EQ(out["outputs"][0]["datatype"], "FP32");
  EXPECT_EQ(out["outputs"][0]["shape"], json({2, 3}));
  const std::vector<float> want = add_relu_reference(x);
  const auto got = out["outputs"][0]["data"].get<std::vector<float>>();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_FLOAT_EQ(got[i], want[i]) << i;

  // Nested data arrays are accepted (row major), and the version can be named.
  json nested = {{"inputs", {{{"name", "x"}, {"shape", {2, 3}}, {"datatype", "FP32"}, {"data", {{-2, 3, 7}, {0.25, 6, -1}}}}}}};
  auto r2 = post_json("/v2/models/addrelu/versions/1/infer", nested);
  ASSERT_EQ(r2->status, 200) << r2->body;
  EXPECT_EQ(json::parse(r2->body)["outputs"][0]["data"].get<std::vector<float>>(), got);
}

TEST_F(ServeHttp, BinaryTensorExtension) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  const std::vector<float> x = {1.5f, 2, -3, -1, 5, 0};
  json header = {{"inputs", {{{"name", "x"}, {"shape", {2, 3}}, {"datatype", "FP32"},
                              {"parameters", {{"binary_data_size", 24}}}}}},
                 {"outputs", {{{"name", "y"}, {"parameters", {{"binary_data", true}}}}}}};
  const std::string h = header.dump();
  std::string body = h + std::string(reinterpret_cast<const char*>(x.data()), 24);
  httplib::Headers headers = {{"Inference-Header-Content-Length", std::to_string(h.size())}};
  auto r = client_->Post("/v2/models/addrelu/infer", headers, body, "application/octet-stream");
  ASSERT_EQ(r->status, 200) << r->body;
  ASSERT_TRUE(r->has_header("Inference-Header-Content-Length"));
  const size_t hl = std::stoul(r->get_header_value("Inference-Header-Content-Length"));
  json out = json::parse(r->body.substr(0, hl));
  EXPECT_EQ(out["outputs"][0]["parameters"]["binary_data_size"], 24);
  EXPECT_FALSE(out["outputs"][0].contains("data"));
  ASSERT_EQ(r->body.size(), hl + 24);
  std::vector<float> y(6);
  std::memcpy(y.data(), r->body.data() + hl, 24);
  const std::vector<float> want = add_relu_reference(x);
  for (size_t i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(y[i], want[i]);

  // binary_data_output asks for every output in binary.
  json all = {{"parameters", {{"binary_data_output", true}}},
              {"inputs", {{{"name", "x"}, {"shape", {2, 3}}, {"datatype", "FP32"}, {"data", x}}}}};
  auto r2 = post_json("/v2/models/addrelu/infer", all);
  ASSERT_EQ(r2->status, 200);
  const size_t hl2 = std::stoul(r2->get_header_value("Inference-Header-Content-Length"));
  EXPECT_EQ(r2->body.size(), hl2 + 24);
  EXPECT_EQ(r2->body.substr(hl2), r->body.substr(hl));
}

TEST_F(ServeHttp, EveryDatatypeRoundTrips) {
  add_model("ident", "max_batch_size: 2\n", identity_model());
  start();
  // JSON values per datatype, and what each must come back as.
  json inputs = json::array();
  const json values = {{"bool", {true, false, false, true}}, {"u8", {0, 255, 7, 128}},
                       {"i8", {-128, 127, 0, -1}},          {"i32", {-2147483647, 5, 0, 2147483647}},
                       {"i64", {-9007199254740993LL, 3, 0, 9007199254740993LL}},
                       {"f16", {0.5, -2, 1024, 0.0999755859375}},  // exactly representable in FP16
                       {"bf16", {0.5, -2, 1024, 3.140625}},    // exactly representable in BF16
                       {"f64", {0.1, -1e300, 2.5, 1e-300}}};
  const std::map<std::string, std::string> v2 = {{"bool", "BOOL"}, {"u8", "UINT8"}, {"i8", "INT8"},
                                                 {"i32", "INT32"}, {"i64", "INT64"}, {"f16", "FP16"},
                                                 {"bf16", "BF16"}, {"f64", "FP64"}};
  for (const auto& [n, dt] : v2)
    inputs.push_back({{"name", "in_" + n}, {"shape", {2, 2}}, {"datatype", dt}, {"data", values[n]}});
  auto r = post_json("/v2/models/ident/infer", {{"inputs", inputs}});
  ASSERT_EQ(r->status, 200) << r->body;
  json out = json::parse(r->body);
  ASSERT_EQ(out["outputs"].size(), v2.size());
  for (const json& o : out["outputs"]) {
    const std::string n = o["name"].get<std::string>().substr(4);
    EXPECT_EQ(o["datatype"], v2.at(n)) << n;
    EXPECT_EQ(o["shape"], json({2, 2})) << n;
    EXPECT_EQ(o["data"], values[n]) << n;
  }

  // FP16 in binary: raw bits in, the same bits out.
  const uint16_t bits[4] = {0x3C00, 0xC000, 0x7BFF, 0x0001};  // 1, -2, 65504, smallest subnormal
  json header = {{"inputs", json::array()}, {"outputs", {{{"name", "out_f16"}, {"parameters", {{"binary_data", true}}}}}}};
  std::string data;
  for (const auto& [n, dt] : v2) {
    if (n == "f16") {
      header["inputs"].push_back({{"name", "in_f16"}, {"shape", {2, 2}}, {"datatype", "FP16"},
                                  {"parameters", {{"binary_data_size", 8}}}});
      data.append(reinterpret_cast<const char*>(bits), 8);
    } else {
      header["inputs"].push_back({{"name", "in_" + n}, {"shape", {2, 2}}, {"datatype", dt}, {"data", values[n]}});
    }
  }
  const std::string h = header.dump();
  auto rb = client_->Post("/v2/models/ident/infer", {{"Inference-Header-Content-Length", std::to_string(h.size())}},
                          h + data, "application/octet-stream");
  ASSERT_EQ(rb->status, 200) << rb->body;
  const size_t hl = std::stoul(rb->get_header_value("Inference-Header-Content-Length"));
  EXPECT_EQ(rb->body.substr(hl), data);

  // BYTES parses (length-prefixed strings) but no Kiln model takes it: a clear datatype error.
  inputs[0] = {{"name", "in_bool"}, {"shape", {2, 2}}, {"datatype", "BYTES"}, {"data", {"a", "bc", "", "d"}}};
  auto rs = post_json("/v2/models/ident/infer", {{"inputs", inputs}});
  EXPECT_EQ(rs->status, 400);
  EXPECT_NE(error_of(rs).find("has datatype BYTES; the model expects BOOL"), std::string::npos) << rs->body;
}

TEST(ServeHttpCodec, BytesAndBinaryLayouts) {
  // BYTES in JSON packs as 4-byte little-endian lengths and the bytes.
  auto body = std::make_shared<std::string>(
      R"({"inputs":[{"name":"s","shape":[3],"datatype":"BYTES","data":["ab","","xyz"]}]})");
  HttpInferRequest r = parse_infer_request(body, std::nullopt);
  ASSERT_EQ(r.request.inputs.size(), 1u);
  const InputTensor& t = r.request.inputs[0];
  const std::string want = std::string("\x02\x00\x00\x00" "ab" "\x00\x00\x00\x00" "\x03\x00\x00\x00" "xyz", 17);
  EXPECT_EQ(std::string(static_cast<const char*>(t.data), t.byte_size), want);

  // Binary BYTES must hold exactly shape-many well-formed elements.
  const std::string h = R"({"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":9}}]})";
  auto ok = std::make_shared<std::string>(h + std::string("\x01\x00\x00\x00" "a" "\x00\x00\x00\x00", 9));
  EXPECT_EQ(parse_infer_request(ok, h.size()).request.inputs[0].byte_size, 9u);
  auto truncated = std::make_shared<std::string>(h + std::string("\x09\x00\x00\x00" "a" "\x00\x00\x00\x00", 9));
  try {
    parse_infer_request(truncated, h.size());
    FAIL() << "a BYTES element longer than the data was accepted";
  } catch (const ServeError& e) {
    EXPECT_EQ(e.status(), Status::kBadRequest);
    EXPECT_NE(std::string(e.what()).find("runs past the data"), std::string::npos) << e.what();
  }
}

TEST_F(ServeHttp, MalformedRequestsAreAnswered400AndServingContinues) {
  add_model("addrelu", "max_batch_size: 4\n");
  HttpOptions h;
  h.max_request_bytes = 4096;
  start({}, h);
  const std::string url = "/v2/models/addrelu/infer";
  auto expect_400 = [&](const httplib::Result& r, const std::string& fragment) {
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << r->body;
    EXPECT_NE(error_of(r).find(fragment), std::string::npos) << r->body;
  };
  expect_400(client_->Post(url.c_str(), "{not json", "application/json"), "malformed request JSON");
  expect_400(client_->Post(url.c_str(), "[1,2]", "application/json"), "must be a JSON object");
  expect_400(post_json(url, {{"inputs", json::array()}}), "non-empty \"inputs\"");
  // Wrong datatype, wrong shape, wrong element count, unknown input, missing input, unknown output.
  json b = infer_body({1, 2, 3}, 1);
  b["inputs"][0]["datatype"] = "INT32";
  b["inputs"][0]["data"] = {1, 2, 3};
  expect_400(post_json(url, b), "has datatype INT32; the model expects FP32");
  b = infer_body({1, 2, 3, 4}, 1);
  b["inputs"][0]["shape"] = {1, 4};
  expect_400(post_json(url, b), "has shape [1, 4]; the model expects [-1, 3]");
  expect_400(post_json(url, infer_body({1, 2}, 1)), "\"data\" has 2 elements; shape [1,3] needs 3");
  b = infer_body({1, 2, 3}, 1);
  b["inputs"][0]["name"] = "z";
  expect_400(post_json(url, b), "unknown input \"z\" (inputs: x)");
  b = infer_body(std::vector<float>(15, 1.f), 5);
  expect_400(post_json(url, b), "has batch 5; the model takes 1 to 4");
  b = infer_body({1, 2, 3}, 1);
  b["outputs"] = {{{"name", "nope"}}};
  expect_400(post_json(url, b), "unknown output \"nope\" (outputs: y)");
  b = infer_body({1, 2, 3}, 1);
  b["inputs"][0]["data"] = {1, "two", 3};
  expect_400(post_json(url, b), "FP32 data must be numbers");
  b["inputs"][0]["shape"] = {1, -3};
  expect_400(post_json(url, b), "non-negative integers");

  // Binary: a size that disagrees with the shape, a header length past the body, bytes left over.
  json header = {{"inputs", {{{"name", "x"}, {"shape", {1, 3}}, {"datatype", "FP32"},
                              {"parameters", {{"binary_data_size", 8}}}}}}};
  std::string hs = header.dump();
  auto post_binary = [&](const std::string& body, size_t header_length) {
    return client_->Post(url.c_str(), {{"Inference-Header-Content-Length", std::to_string(header_length)}}, body,
                         "application/octet-stream");
  };
  expect_400(post_binary(hs + std::string(8, '\0'), hs.size()), "has 8 bytes of data; shape [1, 3] of FP32 needs 12");
  expect_400(post_binary(hs + std::string(12, '\0'), hs.size() + 100), "is past the end of the");
  header["inputs"][0]["parameters"]["binary_data_size"] = 12;
  hs = header.dump();
  expect_400(post_binary(hs + std::string(16, '\0'), hs.size()), "4 bytes after the last binary input");
  expect_400(post_binary(hs + std::string(4, '\0'), hs.size()), "runs past the end of the body");
  expect_400(client_->Post(url.c_str(), {{"Inference-Header-Content-Length", "-5"}}, hs, "application/octet-stream"),
             "must be a non-negative integer");

  // Deep nesting is refused before it can exhaust anything.
  std::string deep = std::string(200, '[') + std::string(200, ']');
  expect_400(client_->Post(url.c_str(), R"({"inputs":)" + deep + "}", "application/json"), "nests deeper than");

  // Oversized bodies: 413 with a JSON error naming the limit.
  auto big = client_->Post(url.c_str(), std::string(5000, ' '), "application/json");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_NE(error_of(big).find("limit of 4096 bytes"), std::string::npos) << big->body;

  // None of it was counted as served, and the server still answers correctly.
  auto ok = post_json(url, infer_body({1, 1, 1}, 1));
  ASSERT_EQ(ok->status, 200);
  EXPECT_EQ(json::parse(ok->body)["outputs"][0]["data"], json({2.0, 0.0, 1.5}));
}

TEST_F(ServeHttp, ConcurrentRequestsAreBatchedAndEachGetsItsRows) {
  add_model("addrelu",
            "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 100000 preferred_batch_size: [8] }\n");
  start();
  server_->pause_model("addrelu");  // let all 8 queue, so they form one batch deterministically
  std::vector<std::future<json>> futures;
  for (int i = 0; i < 8; ++i)
    futures.push_back(std::async(std::launch::async, [this, i] {
      httplib::Client c("127.0.0.1", http_->port());
      auto r = c.Post("/v2/models/addrelu/infer", infer_body({float(i), float(-i), float(2 * i)}, 1).dump(),
                      "application/json");
      return r && r->status == 200 ? json::parse(r->body) : json{{"status", r ? r->status : -1}};
    }));
  // Wait until all 8 are queued, then release them.
  for (int i = 0; i < 500 && server_->model_stats("addrelu", "")[0].stats.pending < 8; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  server_->resume_model("addrelu");
  for (int i = 0; i < 8; ++i) {
    json out = futures[i].get();
    ASSERT_TRUE(out.contains("outputs")) << out.dump();
    const std::vector<float> want = add_relu_reference({float(i), float(-i), float(2 * i)});
    EXPECT_EQ(out["outputs"][0]["data"].get<std::vector<float>>(), want) << i;
  }
  const StatsSnapshot st = server_->model_stats("addrelu", "")[0].stats;
  EXPECT_EQ(st.success, 8u);
  EXPECT_EQ(st.inference_count, 8u);
  EXPECT_EQ(st.execution_count, 1u);  // one engine call for all 8

  json stats = json::parse(client_->Get("/v2/models/addrelu/stats")->body);
  EXPECT_EQ(stats["model_stats"][0]["inference_count"], 8);
  EXPECT_EQ(stats["model_stats"][0]["execution_count"], 1);
  EXPECT_EQ(stats["model_stats"][0]["batch_stats"][0]["batch_size"], 8);
  const std::string metrics = client_->Get("/metrics")->body;
  EXPECT_NE(metrics.find("nv_inference_request_success{model=\"addrelu\",version=\"1\"} 8"), std::string::npos);
  EXPECT_NE(metrics.find("nv_inference_exec_count{model=\"addrelu\",version=\"1\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("nv_inference_count{model=\"addrelu\",version=\"1\"} 8"), std::string::npos);
  EXPECT_NE(metrics.find("# TYPE nv_inference_pending_request_count gauge"), std::string::npos);
  EXPECT_NE(metrics.find("nv_cpu_memory_used_bytes "), std::string::npos);
}

TEST_F(ServeHttp, FullQueueAnswers503AndEveryRequestIsAnsweredOnce) {
  add_model("addrelu",
            "max_batch_size: 4\ndynamic_batching { default_queue_policy { max_queue_size: 3 } }\n");
  start();
  server_->pause_model("addrelu");
  const int n = 10;
  std::vector<std::future<int>> futures;
  for (int i = 0; i < n; ++i)
    futures.push_back(std::async(std::launch::async, [this] {
      httplib::Client c("127.0.0.1", http_->port());
      auto r = c.Post("/v2/models/addrelu/infer", infer_body({1, 2, 3}, 1).dump(), "application/json");
      return r ? r->status : -1;
    }));
  // The 7 that find the queue full are answered at once; then the held 3 run.
  for (int i = 0; i < 500; ++i) {
    StatsSnapshot st = server_->model_stats("addrelu", "")[0].stats;
    if (st.pending == 3 && st.failures(RequestError::kQueueFull) == 7) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_LE(server_->model_stats("addrelu", "")[0].stats.pending, 3);  // the queue never grows past its size
  server_->resume_model("addrelu");
  int ok = 0, full = 0;
  for (auto& f : futures) {
    int s = f.get();
    ok += s == 200;
    full += s == 503;
  }
  EXPECT_EQ(ok, 3);
  EXPECT_EQ(full, 7);
  const StatsSnapshot st = server_->model_stats("addrelu", "")[0].stats;
  EXPECT_EQ(st.success, 3u);
  EXPECT_EQ(st.failures(RequestError::kQueueFull), 7u);
  const std::string metrics = client_->Get("/metrics")->body;
  EXPECT_NE(metrics.find("nv_inference_request_failure{model=\"addrelu\",version=\"1\",reason=\"queue_full\"} 7"),
            std::string::npos);
}

TEST_F(ServeHttp, QueueTimeoutAnswers504) {
  add_model("addrelu",
            "max_batch_size: 4\ndynamic_batching { default_queue_policy { default_timeout_microseconds: 20000 } }\n");
  start();
  server_->pause_model("addrelu");
  auto r = post_json("/v2/models/addrelu/infer", infer_body({1, 2, 3}, 1));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 504);
  EXPECT_NE(error_of(r).find("timed out"), std::string::npos) << r->body;
  server_->resume_model("addrelu");
  EXPECT_EQ(post_json("/v2/models/addrelu/infer", infer_body({1, 2, 3}, 1))->status, 200);
}

TEST_F(ServeHttp, RepositoryManagementIsOffByDefaultAndNeedsTheKey) {
  add_model("a", "max_batch_size: 2\n");
  add_model("b", "max_batch_size: 2\n");
  start();
  auto refused = client_->Post("/v2/repository/models/a/unload", "", "application/json");
  EXPECT_EQ(refused->status, 403);
  EXPECT_NE(error_of(refused).find("--model-control explicit"), std::string::npos);
  json index = json::parse(client_->Post("/v2/repository/index", "", "application/json")->body);
  ASSERT_EQ(index.size(), 2u);
  EXPECT_EQ(index[0]["name"], "a");
  EXPECT_EQ(index[0]["state"], "READY");
}

TEST_F(ServeHttp, ExplicitModelControlWithApiKey) {
  add_model("a", "max_batch_size: 2\n");
  add_model("b", "max_batch_size: 2\n");
  ServerOptions o;
  o.model_control = ModelControl::kExplicit;
  o.load_models = {"a"};
  o.api_key = "s3cret";
  start(o);
  EXPECT_EQ(client_->Get("/v2/models/a/ready")->status, 200);
  EXPECT_EQ(client_->Get("/v2/models/b/ready")->status, 503);
  auto b_infer = post_json("/v2/models/b/infer", infer_body({1, 2, 3}, 1));
  EXPECT_EQ(b_infer->status, 404);
  EXPECT_NE(error_of(b_infer).find("model \"b\" is not loaded"), std::string::npos);
  json ready_only = json::parse(client_->Post("/v2/repository/index", R"({"ready": true})", "application/json")->body);
  ASSERT_EQ(ready_only.size(), 1u);
  EXPECT_EQ(ready_only[0]["name"], "a");

  // Without the key, or with a wrong one: 401, and nothing changes.
  EXPECT_EQ(client_->Post("/v2/repository/models/b/load", "", "application/json")->status, 401);
  EXPECT_EQ(client_->Post("/v2/repository/models/b/load", {{"Authorization", "Bearer wrong"}}, "", "application/json")
                ->status,
            401);
  EXPECT_EQ(client_->Get("/v2/models/b/ready")->status, 503);
  const httplib::Headers key = {{"Authorization", "Bearer s3cret"}};
  EXPECT_EQ(client_->Post("/v2/repository/models/b/load", key, "", "application/json")->status, 200);
  EXPECT_EQ(client_->Get("/v2/models/b/ready")->status, 200);
  EXPECT_EQ(post_json("/v2/models/b/infer", infer_body({1, 2, 3}, 1))->status, 200);
  EXPECT_EQ(client_->Post("/v2/repository/models/a/unload", key, "", "application/json")->status, 200);
  EXPECT_EQ(client_->Get("/v2/models/a/ready")->status, 503);
  EXPECT_EQ(client_->Get("/v2/health/ready")->status, 200);  // an unloaded model is not waited for
  // Names that try to leave the repository never reach the filesystem: a decoded slash matches no
  // route; anything else outside [A-Za-z0-9_.-] is refused by name.
  EXPECT_EQ(client_->Post("/v2/repository/models/..%2F..%2Fetc/load", key, "", "application/json")->status, 404);
  auto dots = client_->Post("/v2/repository/models/../load", key, "", "application/json");
  EXPECT_TRUE(dots->status == 400 || dots->status == 404) << dots->status;
  auto spaced = client_->Post("/v2/repository/models/a%20b/load", key, "", "application/json");
  EXPECT_EQ(spaced->status, 400);
  EXPECT_NE(error_of(spaced).find("invalid model name \"a b\""), std::string::npos) << spaced->body;
  auto absent = client_->Post("/v2/repository/models/zzz/load", key, "", "application/json");
  EXPECT_EQ(absent->status, 400);
  EXPECT_NE(error_of(absent).find("failed to load \"zzz\""), std::string::npos) << absent->body;
  EXPECT_EQ(client_->Post("/v2/repository/models/zzz/unload", key, "", "application/json")->status, 404);
}

TEST_F(ServeHttp, ModelThatFailsToLoadKeepsTheServerUnready) {
  add_model("good", "max_batch_size: 2\n");
  add_model("bad", "max_batch_size: 2\ninput [ { name: \"x\" data_type: TYPE_INT32 dims: [ 3 ] } ]\n");
  ServerOptions o;
  o.exit_on_error = false;
  start(o);
  EXPECT_EQ(client_->Get("/v2/health/live")->status, 200);
  EXPECT_EQ(client_->Get("/v2/health/ready")->status, 503);
  EXPECT_EQ(post_json("/v2/models/good/infer", infer_body({1, 2, 3}, 1))->status, 200);
  json index = json::parse(client_->Post("/v2/repository/index", "", "application/json")->body);
  ASSERT_EQ(index.size(), 2u);
  EXPECT_EQ(index[0]["name"], "bad");
  EXPECT_EQ(index[0]["state"], "UNAVAILABLE");
  EXPECT_NE(index[0]["reason"].get<std::string>().find("TYPE_INT32"), std::string::npos) << index.dump();

  // With exit_on_error (the default) the same repository fails to start, naming the model.
  ServerOptions strict;
  strict.model_repository = repo();
  strict.repository.time_tactics = false;
  InferenceServer s(strict);
  try {
    s.start();
    FAIL() << "a model that cannot load did not fail start()";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("TYPE_INT32"), std::string::npos) << e.what();
  }
}

TEST_F(ServeHttp, SlowClientIsDisconnectedWhileOthersAreServed) {
  add_model("addrelu", "max_batch_size: 4\n");
  HttpOptions h;
  h.read_timeout_s = 1;
  start({}, h);
  // A client that sends half a request line and then nothing.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(http_->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const char partial[] = "POST /v2/models/addrelu/infer HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"inp";
  ASSERT_GT(::send(fd, partial, sizeof(partial) - 1, 0), 0);
  // Others are served meanwhile.
  EXPECT_EQ(post_json("/v2/models/addrelu/infer", infer_body({1, 2, 3}, 1))->status, 200);
  // The server gives up on the silent one: it answers 400 and closes the socket (recv sees the end
  // of the stream rather than waiting forever).
  timeval tv{20, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[512];
  ssize_t n = 0;
  std::string got;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) got.append(buf, static_cast<size_t>(n));
  EXPECT_EQ(n, 0) << "the slow connection was not closed by the server";
  EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got;
  EXPECT_NE(got.find("incomplete HTTP request"), std::string::npos) << got;
  ::close(fd);
  EXPECT_EQ(post_json("/v2/models/addrelu/infer", infer_body({1, 2, 3}, 1))->status, 200);
}

TEST_F(ServeHttp, ShutdownDrainsAcceptedRequestsAndRefusesNewOnes) {
  add_model("addrelu", "max_batch_size: 4\ndynamic_batching { }\n");
  start();
  server_->pause_model("addrelu");
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 6; ++i)
    futures.push_back(std::async(std::launch::async, [this] {
      httplib::Client c("127.0.0.1", http_->port());
      auto r = c.Post("/v2/models/addrelu/infer", infer_body({1, 2, 3}, 1).dump(), "application/json");
      return r ? r->status : -1;
    }));
  for (int i = 0; i < 500 && server_->model_stats("addrelu", "")[0].stats.pending < 6; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::thread stopper([this] { server_->shutdown(true); });  // drains even a paused queue
  for (auto& f : futures) EXPECT_EQ(f.get(), 200);
  stopper.join();
  EXPECT_EQ(client_->Get("/v2/health/ready")->status, 503);
  auto late = post_json("/v2/models/addrelu/infer", infer_body({1, 2, 3}, 1));
  EXPECT_EQ(late->status, 503);
  EXPECT_NE(error_of(late).find("shutting down"), std::string::npos);
}

TEST_F(ServeHttp, WarmupRunsOnEveryInstanceBeforeReady) {
  // Each instance runs the warmup samples while the model loads: a data file of the wrong size
  // fails the load (naming the warmup), the right one and random data load and serve.
  const std::string warm = "max_batch_size: 4\ninstance_group [ { count: 2 } ]\nmodel_warmup [ { name: \"w\" batch_size: 2 "
                           "inputs { key: \"x\" value { data_type: TYPE_FP32 dims: [ 3 ] %s } } } ]\n";
  auto config = [&](const std::string& source) {
    std::string c = warm;
    c.replace(c.find("%s"), 2, source);
    return c;
  };
  add_model("filed", config("input_data_file: \"sample.bin\""));
  add_model("random", config("random_data: true"));
  add_model("short", config("input_data_file: \"short.bin\""));
  const float sample[3] = {1, 2, 3};
  std::ofstream(repo() / "filed" / "sample.bin", std::ios::binary).write(reinterpret_cast<const char*>(sample), 12);
  std::ofstream(repo() / "short" / "short.bin", std::ios::binary).write("12345", 5);
  ServerOptions o;
  o.exit_on_error = false;
  start(o);
  EXPECT_EQ(client_->Get("/v2/models/filed/ready")->status, 200);
  EXPECT_EQ(client_->Get("/v2/models/random/ready")->status, 200);
  EXPECT_EQ(client_->Get("/v2/models/short/ready")->status, 503);
  json index = json::parse(client_->Post("/v2/repository/index", "", "application/json")->body);
  std::string reason;
  for (const json& e : index)
    if (e["name"] == "short") reason = e["reason"];
  EXPECT_NE(reason.find("warmup \"w\""), std::string::npos) << reason;
  EXPECT_NE(reason.find("has 5 bytes; the input needs 24"), std::string::npos) << reason;
  // Warmup runs are not requests: the statistics start at zero.
  EXPECT_EQ(server_->model_stats("filed", "")[0].stats.success, 0u);
  EXPECT_EQ(server_->model_stats("filed", "")[0].stats.execution_count, 0u);
}

TEST_F(ServeHttp, ListenErrorsAreClear) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  ServerOptions o;
  o.model_repository = repo();
  InferenceServer other(o);
  HttpOptions h;
  h.port = http_->port();  // taken
  try {
    HttpFrontEnd clash(other, h);
    FAIL() << "binding a port in use succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("cannot listen for HTTP on 127.0.0.1:" + std::to_string(http_->port())),
              std::string::npos);
  }
}

// Regions registered before any GPU is in use are pinned when one is: the registry tries its pin
// function again on every unpinned region (the server does after each model load). The pin
// handle is dropped when the region's last user is done, before the unmap.
TEST(SharedMemoryRegistry, RegionsRegisteredBeforeAGpuArePinnedLater) {
  const std::vector<float> x = {1, 2, 3, 4};
  kiln_test::TestSharedMemory shm(kiln_test::raw_bytes_of(x), 0);
  SharedMemoryRegistry reg;
  bool gpu_in_use = false;
  int live_pins = 0;
  reg.set_pin([&](const void* p, size_t n, std::string* why) -> std::shared_ptr<void> {
    if (!gpu_in_use) {
      *why = "no GPU in use";
      return nullptr;
    }
    EXPECT_NE(p, nullptr);
    EXPECT_GE(n, x.size() * 4);
    ++live_pins;
    return std::shared_ptr<void>(reinterpret_cast<void*>(1), [&](void*) { --live_pins; });
  });
  EXPECT_EQ(reg.pin_unpinned(), 0) << "no region yet";
  reg.register_region("a", shm.key(), 0, x.size() * 4);
  SharedMemoryStatus st = reg.status("a").at(0);
  EXPECT_FALSE(st.pinned);
  EXPECT_EQ(st.not_pinned, "no GPU in use");
  EXPECT_EQ(reg.pin_unpinned(), 0) << "still no GPU";
  gpu_in_use = true;
  EXPECT_EQ(reg.pin_unpinned(), 1);
  st = reg.status("a").at(0);
  EXPECT_TRUE(st.pinned);
  EXPECT_EQ(st.not_pinned, "");
  EXPECT_EQ(live_pins, 1);
  EXPECT_EQ(reg.pin_unpinned(), 0) << "pinned once only";
  EXPECT_EQ(live_pins, 1);
  // A request still reading the region keeps it mapped and pinned after unregistering.
  SharedMemoryRegistry::View v = reg.view("a", 4, 8, "input x");
  EXPECT_EQ(*static_cast<const float*>(v.data), 2.f);
  reg.unregister("a");
  EXPECT_EQ(live_pins, 1);
  v = {};
  EXPECT_EQ(live_pins, 0);
}

// The system shared-memory extension over HTTP: register a region of a client's shm object, infer
// from it (results against the independent reference), status, unregister, and the refusals.
TEST_F(ServeHttp, SystemSharedMemoryInputs) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  const std::vector<float> x = {-2, 3, 7, 0.25f, 6, -1};
  // The tensor sits 128 bytes into the object; the region starts 64 bytes in.
  kiln_test::TestSharedMemory shm(kiln_test::raw_bytes_of(x), 128);
  auto reg = post_json("/v2/systemsharedmemory/region/in0/register",
                       {{"key", shm.key()}, {"offset", 64}, {"byte_size", 64 + x.size() * 4}});
  ASSERT_EQ(reg->status, 200) << reg->body;
  json status = json::parse(client_->Get("/v2/systemsharedmemory/status")->body);
  ASSERT_EQ(status.size(), 1u);
  EXPECT_EQ(status[0]["name"], "in0");
  EXPECT_EQ(status[0]["key"], shm.key());
  EXPECT_EQ(status[0]["offset"], 64);
  EXPECT_EQ(status[0]["byte_size"], 64 + x.size() * 4);
  EXPECT_EQ(json::parse(client_->Get("/v2/systemsharedmemory/region/in0/status")->body).size(), 1u);
  EXPECT_EQ(client_->Get("/v2/systemsharedmemory/region/nope/status")->status, 404);

  auto infer = [&](const json& params) {
    json in = {{"name", "x"}, {"shape", {2, 3}}, {"datatype", "FP32"}, {"parameters", params}};
    return post_json("/v2/models/addrelu/infer", {{"inputs", {in}}});
  };
  auto r = infer({{"shared_memory_region", "in0"}, {"shared_memory_offset", 64}, {"shared_memory_byte_size", 24}});
  ASSERT_EQ(r->status, 200) << r->body;
  const auto got = json::parse(r->body)["outputs"][0]["data"].get<std::vector<float>>();
  const std::vector<float> want = add_relu_reference(x);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_FLOAT_EQ(got[i], want[i]) << i;

  // Refusals, each 400 with the reason, and the server keeps serving.
  const std::vector<std::pair<json, std::string>> bad_inputs = {
      {{{"shared_memory_region", "nope"}, {"shared_memory_byte_size", 24}}, "region \"nope\" is not registered"},
      {{{"shared_memory_region", "in0"}, {"shared_memory_offset", 80}, {"shared_memory_byte_size", 24}},
       "is outside region \"in0\""},
      {{{"shared_memory_region", "in0"}}, "needs a non-negative integer shared_memory_byte_size"},
      {{{"shared_memory_region", "in0"}, {"shared_memory_byte_size", 20}}, "has 20 bytes of data"},
      {{{"shared_memory_region", 3}, {"shared_memory_byte_size", 24}}, "shared_memory_region must be a string"},
  };
  for (const auto& [params, want_error] : bad_inputs) {
    auto e = infer(params);
    EXPECT_EQ(e->status, 400) << params.dump();
    EXPECT_NE(error_of(e).find(want_error), std::string::npos) << error_of(e);
  }
  json with_out = {{"inputs", {{{"name", "x"}, {"shape", {2, 3}}, {"datatype", "FP32"}, {"data", x}}}},
                   {"outputs", {{{"name", "y"}, {"parameters", {{"shared_memory_region", "in0"}}}}}}};
  auto out_shm = post_json("/v2/models/addrelu/infer", with_out);
  EXPECT_EQ(out_shm->status, 400);
  EXPECT_NE(error_of(out_shm).find("outputs in shared memory are not supported"), std::string::npos);

  const std::vector<std::pair<json, std::string>> bad_registers = {
      {{{"key", shm.key()}, {"byte_size", 8}}, "already registered"},  // in0 again
      {{{"key", "no-slash"}, {"byte_size", 8}}, "invalid shared-memory key"},
      {{{"key", "/kiln_test_missing_region"}, {"byte_size", 8}}, "cannot open shared memory"},
      {{{"key", shm.key()}, {"offset", 0}, {"byte_size", shm.size() + 1}}, "runs past the end"},
      {{{"key", shm.key()}, {"byte_size", 0}}, "byte_size 0"},
      {{{"byte_size", 8}}, "needs a string \"key\""},
  };
  int i = 0;
  for (const auto& [body, want_error] : bad_registers) {
    const std::string name = i++ == 0 ? "in0" : "r" + std::to_string(i);
    auto e = post_json("/v2/systemsharedmemory/region/" + name + "/register", body);
    EXPECT_EQ(e->status, 400) << body.dump();
    EXPECT_NE(error_of(e).find(want_error), std::string::npos) << error_of(e);
  }
  auto bad_name = post_json("/v2/systemsharedmemory/region/a%20b/register", {{"key", shm.key()}, {"byte_size", 8}});
  EXPECT_EQ(bad_name->status, 400);

  // Unregistered: requests naming it fail; unregistering twice is fine (Triton's behaviour).
  EXPECT_EQ(client_->Post("/v2/systemsharedmemory/region/in0/unregister", "", "application/json")->status, 200);
  EXPECT_EQ(client_->Post("/v2/systemsharedmemory/region/in0/unregister", "", "application/json")->status, 200);
  EXPECT_EQ(infer({{"shared_memory_region", "in0"}, {"shared_memory_byte_size", 24}})->status, 400);
  EXPECT_EQ(json::parse(client_->Get("/v2/systemsharedmemory/status")->body).size(), 0u);
  ASSERT_EQ(post_json("/v2/systemsharedmemory/region/a/register", {{"key", shm.key()}, {"byte_size", 8}})->status, 200);
  ASSERT_EQ(post_json("/v2/systemsharedmemory/region/b/register", {{"key", shm.key()}, {"byte_size", 8}})->status, 200);
  EXPECT_EQ(client_->Post("/v2/systemsharedmemory/unregister", "", "application/json")->status, 200);
  EXPECT_EQ(json::parse(client_->Get("/v2/systemsharedmemory/status")->body).size(), 0u);
}

TEST_F(ServeHttp, SharedMemoryRegistrationNeedsTheApiKey) {
  add_model("addrelu", "max_batch_size: 4\n");
  ServerOptions o;
  o.api_key = "s3cret";
  start(o);
  kiln_test::TestSharedMemory shm(std::string(64, '\0'));
  const std::string body = json({{"key", shm.key()}, {"byte_size", 64}}).dump();
  EXPECT_EQ(client_->Post("/v2/systemsharedmemory/region/r/register", body, "application/json")->status, 401);
  EXPECT_EQ(json::parse(client_->Get("/v2/systemsharedmemory/status")->body).size(), 0u);
  EXPECT_EQ(client_->Post("/v2/systemsharedmemory/region/r/register", {{"Authorization", "Bearer s3cret"}}, body,
                          "application/json")
                ->status,
            200);
  EXPECT_EQ(client_->Post("/v2/systemsharedmemory/unregister", "", "application/json")->status, 401);
  EXPECT_EQ(json::parse(client_->Get("/v2/systemsharedmemory/status")->body).size(), 1u);
}

// kiln perf --shared-memory system against the server: every request answered from the region,
// none failed, and the region unregistered when perf is done.
TEST_F(ServeHttp, PerfWithSystemSharedMemory) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  const auto report = dir_ / "perf.json";
  const auto r = kiln_test::run_kiln_cli("perf -m addrelu -u 127.0.0.1:" + std::to_string(http_->port()) +
                                         " -p 200 -r 3 -s 50 --shared-memory system --json " + report.string());
  ASSERT_EQ(r.code, 0) << r.out;
  const json j = json::parse(std::ifstream(report));
  EXPECT_EQ(j["tensor_format"], "system_shared_memory");
  const json& level = j["levels"][0];
  EXPECT_GT(level["requests"]["success"].get<int64_t>(), 0);
  EXPECT_EQ(level["requests"]["failed"].get<int64_t>(), 0);
  EXPECT_EQ(json::parse(client_->Get("/v2/systemsharedmemory/status")->body).size(), 0u);
  // The server answered at least the measured requests (perf also sends between windows).
  const std::string metrics = server_->metrics_text();
  const std::string key = "nv_inference_request_success{model=\"addrelu\",version=\"1\"} ";
  ASSERT_NE(metrics.find(key), std::string::npos);
  EXPECT_GE(std::stoll(metrics.substr(metrics.find(key) + key.size())), level["requests"]["success"].get<int64_t>());
}

// A burst of new connections, as a load generator starting 256 clients makes, is served in full:
// none is dropped from the listen queue (cpp-httplib's own backlog of 5 dropped some).
TEST_F(ServeHttp, ABurstOfNewConnectionsIsServedInFull) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  constexpr int kClients = 256;
  std::atomic<int> ready{0}, ok{0};
  std::vector<std::thread> clients;
  const int port = http_->port();
  for (int i = 0; i < kClients; ++i)
    clients.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", port);
      c.set_read_timeout(60, 0);
      c.set_connection_timeout(60, 0);
      ++ready;
      while (ready.load() < kClients) std::this_thread::yield();  // connect all at once
      const std::vector<float> x = {static_cast<float>(i), -1, 2};
      auto r = c.Post("/v2/models/addrelu/infer", infer_body(x, 1).dump(), "application/json");
      if (r && r->status == 200 &&
          json::parse(r->body)["outputs"][0]["data"].get<std::vector<float>>() == add_relu_reference(x))
        ++ok;
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), kClients);
}

// A huge declared shape with a few JSON values is refused (the fuzzer found that the parser reserved
// the shape's size first: [82288, 8888] FP32 is 2.9 GB; it now reserves what the body can hold).
TEST(ServeHttpParse, HugeShapeWithShortJsonDataIsRefused) {
  auto body = std::make_shared<const std::string>(
      R"({"inputs":[{"name":"x","shape":[82288,8888],"datatype":"FP32","data":[1,2,3,4]}]})");
  try {
    parse_infer_request(body, std::nullopt);
    FAIL() << "accepted";
  } catch (const ServeError& e) {
    EXPECT_EQ(e.status(), Status::kBadRequest);
    EXPECT_NE(std::string(e.what()).find("\"data\" has 4 elements"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln::serve
