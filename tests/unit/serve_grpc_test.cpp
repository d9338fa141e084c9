// The KServe v2 gRPC front end (inference.GRPCInferenceService) in process, through the generated
// stub and through GrpcClient: health, metadata, raw and typed inference for every datatype family,
// concurrent clients, statistics, the repository extension with model control and the API key,
// every malformed request (the server keeps serving after each), message limits and shutdown.
#ifdef KILN_HAVE_GRPC
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>
#include <future>
#include <thread>

#include <gtest/gtest.h>

#include "kiln/error.h"
#include "onnx/onnx_import.h"
#include "serve/grpc/grpc_client.h"
#include "serve/grpc/grpc_server.h"
#include "serve/grpc_service.grpc.pb.h"
#include "serve/server.h"
#include "serve_test_support.h"
#include "test_support.h"

namespace kiln::serve {
namespace {
namespace fs = std::filesystem;
using inference::ModelInferRequest;
using inference::ModelInferResponse;

using kiln_test::add_relu_reference;
using kiln_test::write_text;

// Three computations side by side, each on a [batch, 2] tensor:
//   y_i64 = a_i64 + [10, -20]   y_bool = not a_bool   y_u8 = a_u8 + [1, 2]
Model typed_model() {
  kiln_test::ModelBuilder b(17);
  b.input("a_i64", DType::kI64, Shape{Dim::sym("batch"), Dim(2)});
  b.input("a_bool", DType::kBool, Shape{Dim::sym("batch"), Dim(2)});
  b.input("a_u8", DType::kU8, Shape{Dim::sym("batch"), Dim(2)});
  b.init("w_i64", Tensor::from_vector<int64_t>({2}, {10, -20}));
  b.init("w_u8", Tensor::from_vector<uint8_t>({2}, {1, 2}));
  b.node("Add", {"a_i64", "w_i64"}, {"y_i64"}, {}, "add_i64");
  b.node("Not", {"a_bool"}, {"y_bool"}, {}, "not_bool");
  b.node("Add", {"a_u8", "w_u8"}, {"y_u8"}, {}, "add_u8");
  return b.m;
}

// y = x + [0.5, -1] in FP16, x: [batch, 2].
Model half_model() {
  kiln_test::ModelBuilder b(17);
  b.input("x", DType::kF16, Shape{Dim::sym("batch"), Dim(2)});
  b.init("w", Tensor::from_vector<Half>({2}, {Half(0.5f), Half(-1.f)}));
  b.node("Add", {"x", "w"}, {"y"}, {}, "add");
  return b.m;
}

template <typename T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}
template <typename T>
std::vector<T> values_of(const std::string& raw) {
  std::vector<T> v(raw.size() / sizeof(T));
  std::memcpy(v.data(), raw.data(), v.size() * sizeof(T));
  return v;
}

// An FP32 request for addrelu with x in raw_input_contents.
ModelInferRequest addrelu_request(const std::vector<float>& x, int64_t batch) {
  ModelInferRequest r;
  r.set_model_name("addrelu");
  auto* in = r.add_inputs();
  in->set_name("x");
  in->set_datatype("FP32");
  in->add_shape(batch);
  in->add_shape(3);
  r.add_raw_input_contents(bytes_of(x));
  return r;
}

class ServeGrpc : public kiln_test::ServeRepositoryTest {
 protected:
  ServeGrpc() : ServeRepositoryTest("kiln_serve_grpc_") {}

  void start(ServerOptions o = {}, GrpcOptions g = {}) {
    server_ = std::make_unique<InferenceServer>(fast_options(o));
    server_->start();
    grpc_ = std::make_unique<GrpcFrontEnd>(*server_, "127.0.0.1", 0, g);
    target_ = "127.0.0.1:" + std::to_string(grpc_->port());
    stub_ = make_stub();
  }
  std::unique_ptr<inference::GRPCInferenceService::Stub> make_stub() const {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    return inference::GRPCInferenceService::NewStub(
        grpc::CreateCustomChannel(target_, grpc::InsecureChannelCredentials(), args));
  }
  void TearDown() override {
    if (server_) server_->shutdown(true);
    if (grpc_) grpc_->shutdown(std::chrono::seconds(5));
    grpc_.reset();
    server_.reset();
    TempDirTest::TearDown();
  }

  // One ModelInfer call; `status` receives its outcome.
  ModelInferResponse infer(const ModelInferRequest& req, grpc::Status* status,
                           const std::vector<std::pair<std::string, std::string>>& metadata = {}) {
    grpc::ClientContext ctx;
    for (const auto& [k, v] : metadata) ctx.AddMetadata(k, v);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    ModelInferResponse resp;
    *status = stub_->ModelInfer(&ctx, req, &resp);
    return resp;
  }
  // Asserts that addrelu still answers a good request correctly.
  void expect_serving() {
    grpc::Status st;
    const std::vector<float> x = {4, 4, 4};
    ModelInferResponse r = infer(addrelu_request(x, 1), &st);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(r.raw_output_contents_size(), 1);
    EXPECT_EQ(values_of<float>(r.raw_output_contents(0)), add_relu_reference(x));
  }
  template <typename Req, typename Resp, typename Method>
  grpc::Status call(Method method, const Req& req, Resp* resp, const std::string& auth = "") {
    grpc::ClientContext ctx;
    if (!auth.empty()) ctx.AddMetadata("authorization", auth);
    return ((*stub_).*method)(&ctx, req, resp);
  }

  std::unique_ptr<InferenceServer> server_;
  std::unique_ptr<GrpcFrontEnd> grpc_;
  std::string target_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
};

using Stub = inference::GRPCInferenceService::Stub;

// Substring check with the whole message on failure.
#define EXPECT_STATUS(st, code, text)                                            \
  do {                                                                           \
    EXPECT_EQ((st).error_code(), grpc::StatusCode::code) << (st).error_message(); \
    EXPECT_NE((st).error_message().find(text), std::string::npos) << (st).error_message(); \
  } while (0)

TEST(ServeGrpcStatus, MapsEveryServerStatus) {
  // gRPC's code numbers, as the protocol defines them.
  EXPECT_EQ(grpc_status_code(Status::kOk), 0);
  EXPECT_EQ(grpc_status_code(Status::kBadRequest), 3);        // INVALID_ARGUMENT
  EXPECT_EQ(grpc_status_code(Status::kUnauthorized), 16);     // UNAUTHENTICATED
  EXPECT_EQ(grpc_status_code(Status::kForbidden), 14);        // UNAVAILABLE, as Triton refuses load/unload
  EXPECT_EQ(grpc_status_code(Status::kNotFound), 5);          // NOT_FOUND
  EXPECT_EQ(grpc_status_code(Status::kPayloadTooLarge), 8);   // RESOURCE_EXHAUSTED
  EXPECT_EQ(grpc_status_code(Status::kTimeout), 4);           // DEADLINE_EXCEEDED
  EXPECT_EQ(grpc_status_code(Status::kUnavailable), 14);      // UNAVAILABLE
  EXPECT_EQ(grpc_status_code(Status::kInternal), 13);         // INTERNAL
  EXPECT_EQ(grpc_code_name(5), "NOT_FOUND");
  EXPECT_EQ(grpc_code_name(16), "UNAUTHENTICATED");
  EXPECT_EQ(grpc_code_name(99), "UNKNOWN_CODE_99");
}

TEST_F(ServeGrpc, HealthAndMetadata) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  inference::ServerLiveResponse live;
  ASSERT_TRUE(call(&Stub::ServerLive, inference::ServerLiveRequest(), &live).ok());
  EXPECT_TRUE(live.live());
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(call(&Stub::ServerReady, inference::ServerReadyRequest(), &ready).ok());
  EXPECT_TRUE(ready.ready());

  inference::ServerMetadataResponse sm;
  ASSERT_TRUE(call(&Stub::ServerMetadata, inference::ServerMetadataRequest(), &sm).ok());
  EXPECT_EQ(sm.name(), "kiln");
  EXPECT_EQ(sm.version(), KILN_VERSION);
  EXPECT_NE(std::find(sm.extensions().begin(), sm.extensions().end(), "model_repository"), sm.extensions().end());
  EXPECT_NE(std::find(sm.extensions().begin(), sm.extensions().end(), "statistics"), sm.extensions().end());

  inference::ModelMetadataRequest mreq;
  mreq.set_name("addrelu");
  inference::ModelMetadataResponse md;
  ASSERT_TRUE(call(&Stub::ModelMetadata, mreq, &md).ok());
  EXPECT_EQ(md.name(), "addrelu");
  ASSERT_EQ(md.versions_size(), 1);
  EXPECT_EQ(md.versions(0), "1");
  ASSERT_EQ(md.inputs_size(), 1);
  EXPECT_EQ(md.inputs(0).name(), "x");
  EXPECT_EQ(md.inputs(0).datatype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(md.inputs(0).shape().begin(), md.inputs(0).shape().end()),
            (std::vector<int64_t>{-1, 3}));  // the batch dim first
  ASSERT_EQ(md.outputs_size(), 1);
  EXPECT_EQ(md.outputs(0).name(), "y");
  EXPECT_EQ(md.outputs(0).datatype(), "FP32");

  auto model_ready = [&](const std::string& name, const std::string& version) {
    inference::ModelReadyRequest r;
    r.set_name(name);
    r.set_version(version);
    inference::ModelReadyResponse resp;
    EXPECT_TRUE(call(&Stub::ModelReady, r, &resp).ok());
    return resp.ready();
  };
  EXPECT_TRUE(model_ready("addrelu", ""));
  EXPECT_TRUE(model_ready("addrelu", "1"));
  EXPECT_FALSE(model_ready("addrelu", "2"));
  EXPECT_FALSE(model_ready("nosuch", ""));
  EXPECT_FALSE(model_ready("../etc", ""));

  mreq.set_name("nosuch");
  EXPECT_STATUS(call(&Stub::ModelMetadata, mreq, &md), NOT_FOUND, "unknown model \"nosuch\"");
  mreq.set_name("addrelu");
  mreq.set_version("7");
  EXPECT_STATUS(call(&Stub::ModelMetadata, mreq, &md), NOT_FOUND, "no loaded version \"7\"");
}

TEST_F(ServeGrpc, RawAndTypedFp32Inference) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  const std::vector<float> x = {-2, 3, 7, 0.25f, 6, -1};
  const std::vector<float> want = add_relu_reference(x);  // {0, 0, 7.5, 1.25, 1, 0}

  ModelInferRequest raw = addrelu_request(x, 2);
  raw.set_id("req-7");
  grpc::Status st;
  ModelInferResponse r = infer(raw, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(r.model_name(), "addrelu");
  EXPECT_EQ(r.model_version(), "1");
  EXPECT_EQ(r.id(), "req-7");
  ASSERT_EQ(r.outputs_size(), 1);
  EXPECT_EQ(r.outputs(0).name(), "y");
  EXPECT_EQ(r.outputs(0).datatype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(r.outputs(0).shape().begin(), r.outputs(0).shape().end()),
            (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(r.raw_output_contents_size(), 1);
  EXPECT_EQ(r.raw_output_contents(0).size(), 24u);
  EXPECT_EQ(values_of<float>(r.raw_output_contents(0)), want);
  EXPECT_EQ(r.outputs(0).contents().fp32_contents_size(), 0);  // outputs travel raw only

  // The same values as typed contents, with the version named and the output asked for.
  ModelInferRequest typed;
  typed.set_model_name("addrelu");
  typed.set_model_version("1");
  auto* in = typed.add_inputs();
  in->set_name("x");
  in->set_datatype("FP32");
  in->add_shape(2);
  in->add_shape(3);
  for (float v : x) in->mutable_contents()->add_fp32_contents(v);
  typed.add_outputs()->set_name("y");
  ModelInferResponse r2 = infer(typed, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(r2.raw_output_contents_size(), 1);
  EXPECT_EQ(values_of<float>(r2.raw_output_contents(0)), want);
}

TEST_F(ServeGrpc, TypedContentsForInt64BoolUint8AndRawFp16) {
  add_model("typed", "max_batch_size: 4\n", typed_model());
  add_model("half", "max_batch_size: 4\n", half_model());
  start();
  const std::vector<int64_t> a_i64 = {5, 7, -3'000'000'000'000LL, 0};
  const std::vector<bool> a_bool = {true, false, false, true};
  const std::vector<uint32_t> a_u8 = {0, 253, 100, 7};
  // Expected, by hand: + [10, -20], not, + [1, 2].
  const std::vector<int64_t> want_i64 = {15, -13, -2'999'999'999'990LL, -20};
  const std::vector<uint8_t> want_bool = {0, 1, 1, 0};
  const std::vector<uint8_t> want_u8 = {1, 255, 101, 9};

  ModelInferRequest req;
  req.set_model_name("typed");
  auto add = [&](const std::string& name, const std::string& dt) {
    auto* t = req.add_inputs();
    t->set_name(name);
    t->set_datatype(dt);
    t->add_shape(2);
    t->add_shape(2);
    return t->mutable_contents();
  };
  {
    auto* c = add("a_i64", "INT64");
    for (int64_t v : a_i64) c->add_int64_contents(v);
    c = add("a_bool", "BOOL");
    for (bool v : a_bool) c->add_bool_contents(v);
    c = add("a_u8", "UINT8");
    for (uint32_t v : a_u8) c->add_uint_contents(v);
  }
  grpc::Status st;
  ModelInferResponse r = infer(req, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(r.outputs_size(), 3);
  std::map<std::string, std::string> out;
  for (int i = 0; i < r.outputs_size(); ++i) {
    out[r.outputs(i).name()] = r.raw_output_contents(i);
    EXPECT_EQ(r.outputs(i).shape_size(), 2);
  }
  auto datatype_of = [&](const std::string& name) {
    for (const auto& o : r.outputs())
      if (o.name() == name) return o.datatype();
    return std::string("<none>");
  };
  EXPECT_EQ(datatype_of("y_i64"), "INT64");
  EXPECT_EQ(datatype_of("y_bool"), "BOOL");
  EXPECT_EQ(datatype_of("y_u8"), "UINT8");
  EXPECT_EQ(values_of<int64_t>(out["y_i64"]), want_i64);
  EXPECT_EQ(values_of<uint8_t>(out["y_bool"]), want_bool);
  EXPECT_EQ(values_of<uint8_t>(out["y_u8"]), want_u8);

  // The same tensors raw, asking for one output only.
  ModelInferRequest raw;
  raw.set_model_name("typed");
  for (const auto& [name, dt] : std::vector<std::pair<std::string, std::string>>{
           {"a_i64", "INT64"}, {"a_bool", "BOOL"}, {"a_u8", "UINT8"}}) {
    auto* t = raw.add_inputs();
    t->set_name(name);
    t->set_datatype(dt);
    t->add_shape(2);
    t->add_shape(2);
  }
  raw.add_raw_input_contents(bytes_of(a_i64));
  raw.add_raw_input_contents(std::string("\x01\x00\x00\x01", 4));
  raw.add_raw_input_contents(std::string("\x00\xFD\x64\x07", 4));
  raw.add_outputs()->set_name("y_u8");
  ModelInferResponse r2 = infer(raw, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(r2.outputs_size(), 1);
  EXPECT_EQ(r2.outputs(0).name(), "y_u8");
  EXPECT_EQ(values_of<uint8_t>(r2.raw_output_contents(0)), want_u8);

  // FP16 travels raw: IEEE half bits 1.5, -2, 0.25, 3 plus [0.5, -1] give 2, -3, 0.75, 2.
  ModelInferRequest half;
  half.set_model_name("half");
  auto* h = half.add_inputs();
  h->set_name("x");
  h->set_datatype("FP16");
  h->add_shape(2);
  h->add_shape(2);
  half.add_raw_input_contents(bytes_of(std::vector<uint16_t>{0x3E00, 0xC000, 0x3400, 0x4200}));
  ModelInferResponse r3 = infer(half, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(r3.outputs(0).datatype(), "FP16");
  EXPECT_EQ(values_of<uint16_t>(r3.raw_output_contents(0)), (std::vector<uint16_t>{0x4000, 0xC200, 0x3A00, 0x4000}));

  // FP16 has no typed field: any contents for it are refused with the way to send it.
  half.clear_raw_input_contents();
  half.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1.5f);
  infer(half, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "input \"x\" is FP16, which has no typed contents field");
  EXPECT_NE(st.error_message().find("raw_input_contents"), std::string::npos);
}

TEST_F(ServeGrpc, MalformedRequestsAreInvalidArgumentAndServingContinues) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  grpc::Status st;
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};

  // Unknown model.
  ModelInferRequest r = addrelu_request(x, 2);
  r.set_model_name("nosuch");
  infer(r, &st);
  EXPECT_STATUS(st, NOT_FOUND, "unknown model \"nosuch\"");
  expect_serving();

  // Wrong datatype for the model.
  r = addrelu_request(x, 2);
  r.mutable_inputs(0)->set_datatype("INT32");
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "has datatype INT32; the model expects FP32");
  expect_serving();

  // A datatype the protocol does not know.
  r.mutable_inputs(0)->set_datatype("FP33");
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "unknown datatype \"FP33\"");
  expect_serving();

  // Wrong shape (the model's inner dim is 3).
  r = addrelu_request(x, 2);
  r.mutable_inputs(0)->set_shape(1, 4);
  r.mutable_inputs(0)->set_shape(0, 1);
  r.set_raw_input_contents(0, bytes_of(std::vector<float>{1, 2, 3, 4}));
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "has shape [1, 4]");
  expect_serving();

  // Negative dim.
  r = addrelu_request(x, 2);
  r.mutable_inputs(0)->set_shape(0, -2);
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "negative dim");
  expect_serving();

  // Raw bytes that do not fill the shape: 20 bytes for 2x3 FP32 (24).
  r = addrelu_request(x, 2);
  r.set_raw_input_contents(0, std::string(20, '\0'));
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "has 20 bytes of data");
  EXPECT_NE(st.error_message().find("needs 24"), std::string::npos) << st.error_message();
  expect_serving();

  // More raw entries than inputs.
  r = addrelu_request(x, 2);
  r.add_raw_input_contents(bytes_of(x));
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "the request has 1 input but 2 raw_input_contents entries");
  expect_serving();

  // Raw contents and typed contents in one request.
  r = addrelu_request(x, 2);
  for (float v : x) r.mutable_inputs(0)->mutable_contents()->add_fp32_contents(v);
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "has contents although the request uses raw_input_contents");
  expect_serving();

  // Typed contents: too few values, the wrong field, no data at all.
  ModelInferRequest t = addrelu_request(x, 2);
  t.clear_raw_input_contents();
  for (int i = 0; i < 5; ++i) t.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1.f);
  infer(t, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "input \"x\" has 5 values in fp32_contents; shape [2, 3] needs 6");
  expect_serving();
  t.mutable_inputs(0)->clear_contents();
  for (int i = 0; i < 6; ++i) t.mutable_inputs(0)->mutable_contents()->add_int_contents(1);
  infer(t, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "is FP32 but carries int_contents; FP32 elements go in fp32_contents");
  t.mutable_inputs(0)->clear_contents();
  infer(t, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "input \"x\" has no data: shape [2, 3] needs 6 elements");
  expect_serving();

  // A value the declared type cannot hold.
  t.mutable_inputs(0)->set_datatype("INT8");
  for (int v : {1, 2, 300, 4, 5, 6}) t.mutable_inputs(0)->mutable_contents()->add_int_contents(v);
  infer(t, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "int_contents[2] = 300 is out of range for INT8");
  expect_serving();

  // Unknown input, missing input, unknown output.
  r = addrelu_request(x, 2);
  r.mutable_inputs(0)->set_name("z");
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "unknown input \"z\"");
  r = addrelu_request(x, 2);
  r.clear_inputs();
  r.clear_raw_input_contents();
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "input \"x\" is missing");
  r = addrelu_request(x, 2);
  r.add_outputs()->set_name("nope");
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "unknown output \"nope\"");
  expect_serving();

  // Parameters: a negative priority, a string timeout, sequences, classification.
  r = addrelu_request(x, 2);
  (*r.mutable_parameters())["priority"].set_int64_param(-1);
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "parameter \"priority\" is -1; it must be >= 0");
  r = addrelu_request(x, 2);
  (*r.mutable_parameters())["timeout"].set_string_param("100");
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "parameter \"timeout\" must be an int64_param or uint64_param");
  r = addrelu_request(x, 2);
  (*r.mutable_parameters())["sequence_id"].set_uint64_param(42);
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "sequence batching is not supported");
  r = addrelu_request(x, 2);
  (*r.add_outputs()->mutable_parameters())["classification"].set_int64_param(3);
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "classification extension is not supported");
  expect_serving();

  // Batch above max_batch_size.
  std::vector<float> big(5 * 3, 1.f);
  infer(addrelu_request(big, 5), &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "has batch 5; the model takes 1 to 4");
  expect_serving();
}

TEST_F(ServeGrpc, ConcurrentClientsEachGetTheirOwnResults) {
  add_model("addrelu",
            "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 100000 preferred_batch_size: [8] }\n");
  start();
  server_->pause_model("addrelu");  // all 8 queue first, so they run as one batch
  std::vector<std::future<std::pair<std::string, std::vector<float>>>> futures;
  for (int i = 0; i < 8; ++i)
    futures.push_back(std::async(std::launch::async, [this, i] {
      auto stub = make_stub();  // a client of its own
      grpc::ClientContext ctx;
      ModelInferRequest req = addrelu_request({float(i), float(-i), float(2 * i)}, 1);
      req.set_id("c" + std::to_string(i));
      ModelInferResponse resp;
      grpc::Status st = stub->ModelInfer(&ctx, req, &resp);
      if (!st.ok() || resp.raw_output_contents_size() != 1)
        return std::make_pair("error: " + st.error_message(), std::vector<float>{});
      return std::make_pair(resp.id(), values_of<float>(resp.raw_output_contents(0)));
    }));
  for (int i = 0; i < 500 && server_->model_stats("addrelu", "")[0].stats.pending < 8; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  server_->resume_model("addrelu");
  for (int i = 0; i < 8; ++i) {
    auto [id, y] = futures[i].get();
    EXPECT_EQ(id, "c" + std::to_string(i));
    EXPECT_EQ(y, add_relu_reference({float(i), float(-i), float(2 * i)})) << i;
  }

  // Statistics through the protocol: 8 requests, 8 samples, one execution of batch 8.
  inference::ModelStatisticsRequest sreq;
  sreq.set_name("addrelu");
  inference::ModelStatisticsResponse stats;
  ASSERT_TRUE(call(&Stub::ModelStatistics, sreq, &stats).ok());
  ASSERT_EQ(stats.model_stats_size(), 1);
  const auto& m = stats.model_stats(0);
  EXPECT_EQ(m.name(), "addrelu");
  EXPECT_EQ(m.version(), "1");
  EXPECT_EQ(m.inference_count(), 8u);
  EXPECT_EQ(m.execution_count(), 1u);
  EXPECT_EQ(m.inference_stats().success().count(), 8u);
  EXPECT_EQ(m.inference_stats().fail().count(), 0u);
  EXPECT_EQ(m.inference_stats().success().ns() % 1000, 0u);  // the server counts microseconds
  EXPECT_GT(m.last_inference(), 1'600'000'000'000u);         // milliseconds since the epoch
  ASSERT_EQ(m.batch_stats_size(), 1);
  EXPECT_EQ(m.batch_stats(0).batch_size(), 8u);
  EXPECT_EQ(m.batch_stats(0).compute_infer().count(), 1u);

  // Many clients sharing one GrpcClient, several requests each, without pausing.
  GrpcClient client(target_);
  std::vector<std::future<int>> mismatches;
  for (int t = 0; t < 8; ++t)
    mismatches.push_back(std::async(std::launch::async, [&client, t] {
      int bad = 0;
      for (int k = 0; k < 10; ++k) {
        const std::vector<float> x = {float(t * 10 + k), float(-k), 0.5f * float(t)};
        GrpcInferRequest req;
        req.model = "addrelu";
        req.inputs.push_back({"x", "FP32", {1, 3}, bytes_of(x)});
        bad += values_of<float>(client.infer(req).output("y").data) != add_relu_reference(x);
      }
      return bad;
    }));
  for (auto& f : mismatches) EXPECT_EQ(f.get(), 0);
  const std::vector<GrpcModelStats> after = client.model_statistics("addrelu");
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].success_count, 8u + 80u);
  EXPECT_EQ(after[0].inference_count, 8u + 80u);
  EXPECT_EQ(after[0].fail_count, 0u);
  EXPECT_EQ(client.model_statistics().size(), 1u);  // every model

  sreq.set_name("nosuch");
  EXPECT_STATUS(call(&Stub::ModelStatistics, sreq, &stats), NOT_FOUND, "unknown model");
}

TEST_F(ServeGrpc, PriorityAndQueueTimeoutParameters) {
  add_model("addrelu",
            "max_batch_size: 4\ndynamic_batching { priority_levels: 2 default_priority_level: 2 "
            "default_queue_policy { allow_timeout_override: true } }\n");
  start();
  grpc::Status st;
  const std::vector<float> x = {1, 2, 3};
  ModelInferRequest r = addrelu_request(x, 1);
  (*r.mutable_parameters())["priority"].set_int64_param(1);
  EXPECT_EQ(values_of<float>(infer(r, &st).raw_output_contents(0)), add_relu_reference(x));
  EXPECT_TRUE(st.ok()) << st.error_message();
  (*r.mutable_parameters())["priority"].set_uint64_param(3);
  infer(r, &st);
  EXPECT_STATUS(st, INVALID_ARGUMENT, "priority 3 is outside");

  // A request whose queue timeout runs out while the model is held: DEADLINE_EXCEEDED.
  server_->pause_model("addrelu");
  r = addrelu_request(x, 1);
  (*r.mutable_parameters())["timeout"].set_int64_param(20000);
  infer(r, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  server_->resume_model("addrelu");
  expect_serving();
}

TEST_F(ServeGrpc, RepositoryLoadAndUnloadAreRefusedWithoutExplicitControl) {
  add_model("addrelu", "max_batch_size: 4\n");
  add_model("other", "max_batch_size: 2\n");
  start();
  inference::RepositoryIndexResponse index;
  ASSERT_TRUE(call(&Stub::RepositoryIndex, inference::RepositoryIndexRequest(), &index).ok());
  ASSERT_EQ(index.models_size(), 2);
  EXPECT_EQ(index.models(0).name(), "addrelu");
  EXPECT_EQ(index.models(0).version(), "1");
  EXPECT_EQ(index.models(0).state(), "READY");
  EXPECT_EQ(index.models(1).name(), "other");

  inference::RepositoryModelLoadRequest load;
  load.set_model_name("other");
  inference::RepositoryModelLoadResponse load_resp;
  EXPECT_STATUS(call(&Stub::RepositoryModelLoad, load, &load_resp), UNAVAILABLE, "--model-control explicit");
  inference::RepositoryModelUnloadRequest unload;
  unload.set_model_name("addrelu");
  inference::RepositoryModelUnloadResponse unload_resp;
  EXPECT_STATUS(call(&Stub::RepositoryModelUnload, unload, &unload_resp), UNAVAILABLE, "--model-control explicit");
  expect_serving();
}

TEST_F(ServeGrpc, ExplicitModelControlNeedsTheApiKey) {
  add_model("addrelu", "max_batch_size: 4\n");
  add_model("other", "max_batch_size: 2\n");
  ServerOptions o;
  o.model_control = ModelControl::kExplicit;
  o.load_models = {"other"};
  o.api_key = "s3cret";
  start(o);
  inference::RepositoryIndexRequest ready_only;
  ready_only.set_ready(true);
  inference::RepositoryIndexResponse index;
  ASSERT_TRUE(call(&Stub::RepositoryIndex, ready_only, &index).ok());
  ASSERT_EQ(index.models_size(), 1);
  EXPECT_EQ(index.models(0).name(), "other");
  grpc::Status st;
  infer(addrelu_request({1, 2, 3}, 1), &st);
  EXPECT_STATUS(st, NOT_FOUND, "model \"addrelu\" is not loaded");

  inference::RepositoryModelLoadRequest load;
  load.set_model_name("addrelu");
  inference::RepositoryModelLoadResponse lr;
  EXPECT_STATUS(call(&Stub::RepositoryModelLoad, load, &lr), UNAUTHENTICATED, "needs the server's API key");
  EXPECT_STATUS(call(&Stub::RepositoryModelLoad, load, &lr, "Bearer wrong"), UNAUTHENTICATED, "wrong API key");
  EXPECT_STATUS(call(&Stub::RepositoryModelLoad, load, &lr, "Basic s3cret"), UNAUTHENTICATED, "Bearer <key>");
  EXPECT_STATUS(call(&Stub::RepositoryModelLoad, load, &lr, "Bearer s3cret0"), UNAUTHENTICATED, "wrong API key");
  infer(addrelu_request({1, 2, 3}, 1), &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);  // still not loaded

  // Triton's load overrides are refused rather than ignored.
  inference::RepositoryModelLoadRequest with_config = load;
  (*with_config.mutable_parameters())["config"].set_string_param("{}");
  EXPECT_STATUS(call(&Stub::RepositoryModelLoad, with_config, &lr, "Bearer s3cret"), INVALID_ARGUMENT,
                "parameter \"config\" is not supported");

  ASSERT_TRUE(call(&Stub::RepositoryModelLoad, load, &lr, "Bearer s3cret").ok());
  expect_serving();

  // A load that fails, and a name that is not a model name.
  load.set_model_name("missing");
  EXPECT_EQ(call(&Stub::RepositoryModelLoad, load, &lr, "Bearer s3cret").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  load.set_model_name("../addrelu");
  EXPECT_STATUS(call(&Stub::RepositoryModelLoad, load, &lr, "Bearer s3cret"), INVALID_ARGUMENT, "invalid model name");

  // Unload: the key again, then the model is gone.
  inference::RepositoryModelUnloadRequest unload;
  unload.set_model_name("addrelu");
  inference::RepositoryModelUnloadResponse ur;
  EXPECT_EQ(call(&Stub::RepositoryModelUnload, unload, &ur).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  expect_serving();
  ASSERT_TRUE(call(&Stub::RepositoryModelUnload, unload, &ur, "bearer  s3cret ").ok());  // scheme in any case
  inference::ModelReadyRequest mr;
  mr.set_name("addrelu");
  inference::ModelReadyResponse mresp;
  ASSERT_TRUE(call(&Stub::ModelReady, mr, &mresp).ok());
  EXPECT_FALSE(mresp.ready());
  infer(addrelu_request({1, 2, 3}, 1), &st);
  EXPECT_STATUS(st, NOT_FOUND, "is not loaded");

  // Through GrpcClient, which sends the key on every call.
  GrpcClientOptions co;
  co.api_key = "s3cret";
  GrpcClient client(target_, co);
  client.load_model("addrelu");
  EXPECT_TRUE(client.model_ready("addrelu"));
  GrpcClient keyless(target_);
  try {
    keyless.unload_model("addrelu");
    ADD_FAILURE() << "unload without the key succeeded";
  } catch (const GrpcCallError& e) {
    EXPECT_EQ(e.code_name(), "UNAUTHENTICATED");
  }
  EXPECT_TRUE(client.model_ready("addrelu"));
}

TEST_F(ServeGrpc, OversizedMessagesAreResourceExhausted) {
  add_model("addrelu", "max_batch_size: 4\n");
  GrpcOptions g;
  g.max_message_bytes = 64 * 1024;
  start({}, g);
  grpc::Status st;
  ModelInferRequest r = addrelu_request({1, 2, 3}, 1);
  r.set_raw_input_contents(0, std::string(100 * 1024, '\0'));  // past the limit before any validation
  infer(r, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  expect_serving();

  // A client whose own receive limit is below the response size fails on its side, with the same code.
  GrpcClientOptions co;
  co.max_message_bytes = 16;
  GrpcClient small(target_, co);
  GrpcInferRequest req;
  req.model = "addrelu";
  req.inputs.push_back({"x", "FP32", {4, 3}, bytes_of(std::vector<float>(12, 1.f))});
  try {
    small.infer(req);
    ADD_FAILURE() << "a 48-byte output passed a 16-byte receive limit";
  } catch (const GrpcCallError& e) {
    EXPECT_EQ(e.code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED)) << e.what();
  }
}

TEST_F(ServeGrpc, ClientWrapperReportsHealthMetadataAndErrors) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  GrpcClient client(target_);
  ASSERT_TRUE(client.wait_for_connection(std::chrono::seconds(10)));
  EXPECT_TRUE(client.server_live());
  EXPECT_TRUE(client.server_ready());
  EXPECT_TRUE(client.model_ready("addrelu", "1"));
  EXPECT_EQ(client.server_metadata().name, "kiln");
  const ModelMetadata md = client.model_metadata("addrelu");
  EXPECT_EQ(md.versions, std::vector<std::string>{"1"});
  ASSERT_EQ(md.inputs.size(), 1u);
  EXPECT_EQ(md.inputs[0].shape, (std::vector<int64_t>{-1, 3}));
  const std::vector<IndexEntry> index = client.repository_index();
  ASSERT_EQ(index.size(), 1u);
  EXPECT_EQ(index[0].state, "READY");

  const std::vector<float> x = {0.5f, 5, -0.5f, -1, 4.5f, 1};
  GrpcInferRequest req;
  req.model = "addrelu";
  req.id = "w1";
  req.inputs.push_back({"x", "FP32", {2, 3}, bytes_of(x)});
  const GrpcInferResponse resp = client.infer(req);
  EXPECT_EQ(resp.id, "w1");
  EXPECT_EQ(resp.model_version, "1");
  const RawTensor& y = resp.output("y");
  EXPECT_EQ(y.datatype, "FP32");
  EXPECT_EQ(y.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(values_of<float>(y.data), add_relu_reference(x));
  EXPECT_THROW(resp.output("nope"), std::out_of_range);

  req.model = "nosuch";
  try {
    client.infer(req);
    ADD_FAILURE() << "inference on an unknown model succeeded";
  } catch (const GrpcCallError& e) {
    EXPECT_EQ(e.code_name(), "NOT_FOUND");
    EXPECT_NE(e.message().find("unknown model \"nosuch\""), std::string::npos) << e.message();
  }
  try {
    client.model_metadata("nosuch");
    ADD_FAILURE() << "metadata of an unknown model";
  } catch (const GrpcCallError& e) {
    EXPECT_EQ(e.code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  }

  // Nothing listening: UNAVAILABLE, not a hang (the call has a deadline).
  GrpcClientOptions co;
  co.timeout = std::chrono::milliseconds(2000);
  GrpcClient nowhere("127.0.0.1:1", co);
  try {
    nowhere.server_live();
    ADD_FAILURE() << "a call to a closed port succeeded";
  } catch (const GrpcCallError& e) {
    EXPECT_TRUE(e.code_name() == "UNAVAILABLE" || e.code_name() == "DEADLINE_EXCEEDED") << e.what();
  }
}

TEST_F(ServeGrpc, ShutdownTurnsReadinessOffAndRefusesNewRequests) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  // A request held in the queue while the server shuts down still gets its answer.
  server_->pause_model("addrelu");
  const std::vector<float> x = {3, 3, 3};
  auto held = std::async(std::launch::async, [this, &x] {
    grpc::Status st;
    ModelInferResponse r = infer(addrelu_request(x, 1), &st);
    return st.ok() ? values_of<float>(r.raw_output_contents(0)) : std::vector<float>{};
  });
  for (int i = 0; i < 500 && server_->model_stats("addrelu", "")[0].stats.pending < 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto stopping = std::async(std::launch::async, [this] { server_->shutdown(true); });
  for (int i = 0; i < 500 && !server_->shutting_down(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));

  inference::ServerReadyResponse ready;
  ASSERT_TRUE(call(&Stub::ServerReady, inference::ServerReadyRequest(), &ready).ok());
  EXPECT_FALSE(ready.ready());
  inference::ServerLiveResponse live;
  ASSERT_TRUE(call(&Stub::ServerLive, inference::ServerLiveRequest(), &live).ok());
  grpc::Status st;
  infer(addrelu_request(x, 1), &st);
  EXPECT_STATUS(st, UNAVAILABLE, "shutting down");

  server_->resume_model("addrelu");
  stopping.get();
  EXPECT_EQ(held.get(), add_relu_reference(x));

  grpc_->shutdown(std::chrono::seconds(5));
  grpc_->shutdown(std::chrono::seconds(5));  // idempotent
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  EXPECT_EQ(stub_->ServerLive(&ctx, inference::ServerLiveRequest(), &live).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST_F(ServeGrpc, CallsInProgressFinishWhenTheFrontEndShutsDown) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  server_->pause_model("addrelu");
  const std::vector<float> x = {-1, 6, 2};
  auto held = std::async(std::launch::async, [this, &x] {
    grpc::Status st;
    ModelInferResponse r = infer(addrelu_request(x, 1), &st);
    return st.ok() ? values_of<float>(r.raw_output_contents(0)) : std::vector<float>{};
  });
  for (int i = 0; i < 500 && server_->model_stats("addrelu", "")[0].stats.pending < 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto closing = std::async(std::launch::async, [this] { grpc_->shutdown(std::chrono::seconds(60)); });
  // The front end refuses new work while it waits for the held call...
  inference::ServerReadyResponse ready;
  ready.set_ready(true);
  for (int i = 0; i < 500 && ready.ready(); ++i)
    ASSERT_TRUE(call(&Stub::ServerReady, inference::ServerReadyRequest(), &ready).ok());
  EXPECT_FALSE(ready.ready());
  grpc::Status st;
  infer(addrelu_request(x, 1), &st);
  EXPECT_STATUS(st, UNAVAILABLE, "shutting down");
  // ...which gets its answer once the model runs again.
  server_->resume_model("addrelu");
  EXPECT_EQ(held.get(), add_relu_reference(x));
  closing.get();
}

TEST_F(ServeGrpc, ListenErrorsAreClear) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  try {
    GrpcFrontEnd second(*server_, "127.0.0.1", grpc_->port());
    ADD_FAILURE() << "a second server bound the same port";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("cannot listen for gRPC on 127.0.0.1:" + std::to_string(grpc_->port())),
              std::string::npos)
        << e.what();
  }
  try {
    GrpcFrontEnd bad(*server_, "127.0.0.1", 70000);
    ADD_FAILURE() << "port 70000 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("70000"), std::string::npos);
  }
  GrpcOptions zero;
  zero.max_message_bytes = 0;
  EXPECT_THROW(GrpcFrontEnd(*server_, "127.0.0.1", 0, zero), Error);
  expect_serving();
}

// The system shared-memory extension over gRPC: register, status, infer from the region (against
// the independent reference), the refusals, unregister; registering needs the API key when set.
TEST_F(ServeGrpc, SystemSharedMemory) {
  add_model("addrelu", "max_batch_size: 4\n");
  ServerOptions o;
  o.api_key = "k";
  start(o);
  const std::vector<float> x = {-2, 3, 7, 0.25f, 6, -1};
  kiln_test::TestSharedMemory shm(kiln_test::raw_bytes_of(x), 64);
  inference::SystemSharedMemoryRegisterRequest reg;
  reg.set_name("in0");
  reg.set_key(shm.key());
  reg.set_offset(64);
  reg.set_byte_size(24);
  inference::SystemSharedMemoryRegisterResponse reg_resp;
  EXPECT_EQ(call(&Stub::SystemSharedMemoryRegister, reg, &reg_resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(call(&Stub::SystemSharedMemoryRegister, reg, &reg_resp, "Bearer k").ok());
  inference::SystemSharedMemoryStatusResponse status;
  ASSERT_TRUE(call(&Stub::SystemSharedMemoryStatus, inference::SystemSharedMemoryStatusRequest(), &status).ok());
  ASSERT_EQ(status.regions().size(), 1u);
  EXPECT_EQ(status.regions().at("in0").key(), shm.key());
  EXPECT_EQ(status.regions().at("in0").byte_size(), 24u);

  auto request = [&](const std::string& region, int64_t size) {
    ModelInferRequest r;
    r.set_model_name("addrelu");
    auto* in = r.add_inputs();
    in->set_name("x");
    in->set_datatype("FP32");
    in->add_shape(2);
    in->add_shape(3);
    (*in->mutable_parameters())["shared_memory_region"].set_string_param(region);
    (*in->mutable_parameters())["shared_memory_byte_size"].set_int64_param(size);
    return r;
  };
  grpc::Status st;
  ModelInferResponse r = infer(request("in0", 24), &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(r.raw_output_contents_size(), 1);
  EXPECT_EQ(values_of<float>(r.raw_output_contents(0)), add_relu_reference(x));

  infer(request("nope", 24), &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("region \"nope\" is not registered"), std::string::npos) << st.error_message();
  infer(request("in0", 28), &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("is outside region"), std::string::npos) << st.error_message();
  ModelInferRequest with_raw = request("in0", 24);
  with_raw.add_raw_input_contents(kiln_test::raw_bytes_of(x));  // no input is outside shared memory
  infer(with_raw, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("0 inputs outside shared memory but 1 raw_input_contents"), std::string::npos)
      << st.error_message();

  inference::SystemSharedMemoryUnregisterRequest unreg;  // empty name: all
  inference::SystemSharedMemoryUnregisterResponse unreg_resp;
  EXPECT_EQ(call(&Stub::SystemSharedMemoryUnregister, unreg, &unreg_resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(call(&Stub::SystemSharedMemoryUnregister, unreg, &unreg_resp, "Bearer k").ok());
  infer(request("in0", 24), &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  inference::SystemSharedMemoryStatusRequest one;
  one.set_name("in0");
  EXPECT_EQ(call(&Stub::SystemSharedMemoryStatus, one, &status).error_code(), grpc::StatusCode::NOT_FOUND);
}

// Triton's ModelConfig call: the config as the server completed it (inputs filled from the model),
// in model_config.proto's form with Triton's field numbers.
TEST_F(ServeGrpc, ModelConfigReturnsTheCompletedConfig) {
  add_model("addrelu",
            "max_batch_size: 4\ninstance_group [ { count: 2 kind: KIND_CPU } ]\n"
            "dynamic_batching { preferred_batch_size: [2] max_queue_delay_microseconds: 300 }\n");
  start();
  inference::ModelConfigRequest req;
  req.set_name("addrelu");
  inference::ModelConfigResponse resp;
  ASSERT_TRUE(call(&Stub::ModelConfig, req, &resp).ok());
  const auto& c = resp.config();
  EXPECT_EQ(c.name(), "addrelu");
  EXPECT_EQ(c.max_batch_size(), 4);
  ASSERT_EQ(c.input_size(), 1);
  EXPECT_EQ(c.input(0).name(), "x");
  EXPECT_EQ(c.input(0).data_type(), kiln::serve::pb::TYPE_FP32);
  EXPECT_EQ(std::vector<int64_t>(c.input(0).dims().begin(), c.input(0).dims().end()), (std::vector<int64_t>{3}));
  ASSERT_EQ(c.output_size(), 1);
  EXPECT_EQ(c.output(0).name(), "y");
  ASSERT_EQ(c.instance_group_size(), 1);
  EXPECT_EQ(c.instance_group(0).count(), 2);
  EXPECT_EQ(c.instance_group(0).kind(), kiln::serve::pb::ModelInstanceGroup::KIND_CPU);
  EXPECT_EQ(c.dynamic_batching().max_queue_delay_microseconds(), 300u);
  ASSERT_EQ(c.dynamic_batching().preferred_batch_size_size(), 1);
  EXPECT_EQ(c.dynamic_batching().preferred_batch_size(0), 2);
  req.set_version("1");
  EXPECT_TRUE(call(&Stub::ModelConfig, req, &resp).ok());
  req.set_name("nope");
  EXPECT_EQ(call(&Stub::ModelConfig, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  req.set_name("addrelu");
  req.set_version("7");
  EXPECT_EQ(call(&Stub::ModelConfig, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

// kiln perf over gRPC reads max_batch_size through ModelConfig, so -b and --shape mean what they
// mean over HTTP: 2 rows of the model's [3] per request.
TEST_F(ServeGrpc, PerfReadsTheBatchSizeFromModelConfig) {
  add_model("addrelu", "max_batch_size: 4\n");
  start();
  const auto report = dir_ / "perf.json";
  const auto r = kiln_test::run_kiln_cli("perf -m addrelu -i grpc -u " + target_ + " -b 2 -p 200 -r 3 -s 50 --json " +
                                         report.string());
  ASSERT_EQ(r.code, 0) << r.out;
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(report));
  EXPECT_EQ(j["batch_size"], 2);
  EXPECT_EQ(j["levels"][0]["requests"]["failed"], 0);
  EXPECT_GT(j["levels"][0]["requests"]["success"].get<int64_t>(), 0);
  const StatsSnapshot s = server_->model_stats("addrelu", "").at(0).stats;
  EXPECT_GT(s.inference_count, 0u);
  EXPECT_EQ(s.inference_count % 2, 0u);  // every request carried 2 rows
}

}  // namespace
}  // namespace kiln::serve
#endif  // KILN_HAVE_GRPC
