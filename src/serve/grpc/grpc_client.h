// A small client of the KServe v2 gRPC API (inference.GRPCInferenceService) for `kiln perf` and
// the tests: health, metadata, repository calls and inference with raw tensor contents. No gRPC or
// protobuf type appears here; every call is safe from several threads at once.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "serve/server.h"

namespace kiln::serve {

// A call that did not return OK: the gRPC status code (grpc::StatusCode's value), its name
// ("NOT_FOUND") and the server's message.
class GrpcCallError : public std::runtime_error {
 public:
  GrpcCallError(int code, std::string code_name, const std::string& message)
      : std::runtime_error(code_name + ": " + message), code_(code), code_name_(std::move(code_name)),
        message_(message) {}
  int code() const { return code_; }
  const std::string& code_name() const { return code_name_; }
  const std::string& message() const { return message_; }

 private:
  int code_;
  std::string code_name_;
  std::string message_;
};

// "NOT_FOUND" for grpc::StatusCode::NOT_FOUND, ...; "UNKNOWN_CODE_<n>" past the known codes.
std::string grpc_code_name(int code);

struct GrpcClientOptions {
  size_t max_message_bytes = size_t{64} << 20;  // the largest response accepted
  std::string api_key;                          // non-empty: "authorization: Bearer KEY" on every call
  std::chrono::milliseconds timeout{0};         // deadline of each call; 0: none
};

// A tensor as the raw form carries it: little-endian elements, row major, no padding.
struct RawTensor {
  std::string name;
  std::string datatype;  // "FP32", "INT64", ...
  std::vector<int64_t> shape;
  std::string data;
};

struct GrpcInferRequest {
  std::string model;
  std::string version;  // "": the latest loaded version
  std::string id;
  std::vector<RawTensor> inputs;
  std::vector<std::string> outputs;  // "": every output
  uint64_t priority = 0;             // 0: not sent (the model's default level)
  uint64_t timeout_us = 0;           // 0: not sent (the model's default queue timeout)
};

struct GrpcInferResponse {
  std::string model_name;
  std::string model_version;
  std::string id;
  std::vector<RawTensor> outputs;
  // The output with this name; throws std::out_of_range naming it when there is none.
  const RawTensor& output(const std::string& name) const;
};

// One model version's cumulative counters from ModelStatistics (durations in microseconds, as the
// server keeps them).
struct GrpcModelStats {
  std::string name;
  std::string version;
  uint64_t last_inference_ms = 0;  // since the epoch; 0 before the first
  uint64_t inference_count = 0;    // samples (batch rows)
  uint64_t execution_count = 0;    // model executions (batches)
  uint64_t success_count = 0;
  uint64_t fail_count = 0;
  uint64_t request_us = 0;  // successful requests, arrival to completion
  uint64_t queue_us = 0;
  uint64_t compute_input_us = 0;
  uint64_t compute_infer_us = 0;
  uint64_t compute_output_us = 0;
};

class GrpcClient {
 public:
  // `target` is "host:port". Connects lazily, on the first call.
  explicit GrpcClient(const std::string& target, GrpcClientOptions options = {});
  ~GrpcClient();
  GrpcClient(const GrpcClient&) = delete;
  GrpcClient& operator=(const GrpcClient&) = delete;

  // True once connected; false when `wait` passes first.
  bool wait_for_connection(std::chrono::milliseconds wait);

  // Each call throws GrpcCallError when the server answers anything but OK (or cannot be reached:
  // UNAVAILABLE).
  bool server_live();
  bool server_ready();
  bool model_ready(const std::string& model, const std::string& version = "");
  ServerMetadata server_metadata();
  ModelMetadata model_metadata(const std::string& model, const std::string& version = "");
  // max_batch_size from the ModelConfig call; -1 when the server does not implement it.
  int64_t max_batch_size(const std::string& model, const std::string& version = "");
  GrpcInferResponse infer(const GrpcInferRequest& request);
  // model "": every model; version "": every loaded version.
  std::vector<GrpcModelStats> model_statistics(const std::string& model = "", const std::string& version = "");
  std::vector<IndexEntry> repository_index(bool ready_only = false);
  void load_model(const std::string& model);
  void unload_model(const std::string& model);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::serve
