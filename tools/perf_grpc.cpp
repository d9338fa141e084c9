// `kiln perf -i grpc`: the perf transport over the KServe v2 gRPC API (inference.GRPCInferenceService,
// through src/serve/grpc/grpc_client.h). Compiled only in builds with gRPC.
#ifdef KILN_HAVE_GRPC
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "kiln/error.h"
#include "serve/grpc/grpc_client.h"
#include "serve/perf/perf_transport.h"

namespace kiln::cli {

namespace {

namespace perf = serve::perf;
using Clock = std::chrono::steady_clock;

// grpc::StatusCode::UNAVAILABLE: also what a client gets when nothing listens at the address.
constexpr int kUnavailable = 14;

class GrpcPerfTransport final : public perf::PerfTransport {
 public:
  GrpcPerfTransport(perf::Endpoint endpoint, std::string model, std::string version, int64_t timeout_ms,
                    std::shared_ptr<const std::vector<serve::GrpcInferRequest>> requests)
      : endpoint_(std::move(endpoint)), model_(std::move(model)), version_(std::move(version)),
        timeout_ms_(timeout_ms), requests_(std::move(requests)) {
    serve::GrpcClientOptions options;
    options.timeout = std::chrono::milliseconds(timeout_ms_);
    client_ = std::make_unique<serve::GrpcClient>(target(), options);
  }

  std::string url() const override { return "grpc://" + target(); }

  perf::ModelInfo metadata() override {
    serve::ModelMetadata m;
    try {
      m = client_->model_metadata(model_, version_);
    } catch (const serve::GrpcCallError& e) {
      if (e.code() == kUnavailable)
        throw Error(ErrorCode::kIo, "cannot reach the server at " + url() + " (ModelMetadata: " + e.message() +
                                        "); is it running, and are -u and -i right?");
      throw Error(ErrorCode::kInvalidArgument, "the server at " + url() + " refused model '" + model_ + "'" +
                                                   (version_.empty() ? "" : " version '" + version_ + "'") + ": " +
                                                   e.message() + " (" + e.code_name() + ")");
    }
    perf::ModelInfo info;
    info.name = m.name.empty() ? model_ : m.name;
    info.versions = m.versions;
    info.platform = m.platform;
    for (const auto& t : m.inputs) info.inputs.push_back({t.name, t.datatype, t.shape});
    for (const auto& t : m.outputs) info.outputs.push_back({t.name, t.datatype, t.shape});
    try {
      info.max_batch_size = client_->max_batch_size(model_, version_);  // -1: the server has no ModelConfig
    } catch (const serve::GrpcCallError&) {
      info.max_batch_size = -1;
    }
    return info;
  }

  // The gRPC client has no statistics call: the report leaves the server columns empty.
  std::optional<perf::ServerCounters> server_stats() override { return std::nullopt; }

  void prepare(const std::vector<perf::Inputs>& data) override {
    auto requests = std::make_shared<std::vector<serve::GrpcInferRequest>>();
    for (const auto& inputs : data) {
      serve::GrpcInferRequest r;
      r.model = model_;
      r.version = version_;
      for (const auto& in : inputs) r.inputs.push_back({in.name, in.datatype, in.shape, in.bytes});
      requests->push_back(std::move(r));
    }
    requests_ = std::move(requests);
  }

  perf::InferResult infer(size_t index) override {
    perf::InferResult r;
    const serve::GrpcInferRequest& request = (*requests_)[index % requests_->size()];
    try {
      client_->infer(request);
      r.ok = true;
    } catch (const serve::GrpcCallError& e) {
      r.error_kind = e.code_name() == "DEADLINE_EXCEEDED" ? "timeout" : "grpc_" + e.code_name();
      r.error_message = e.message();
    } catch (const std::exception& e) {
      r.error_kind = "client";
      r.error_message = e.what();
    }
    return r;
  }

  std::unique_ptr<perf::PerfTransport> connect_another() const override {
    return std::make_unique<GrpcPerfTransport>(endpoint_, model_, version_, timeout_ms_, requests_);
  }

 private:
  std::string target() const {
    const std::string& h = endpoint_.host;
    return (h.find(':') != std::string::npos ? "[" + h + "]" : h) + ":" + std::to_string(endpoint_.port);
  }

  perf::Endpoint endpoint_;
  std::string model_, version_;
  int64_t timeout_ms_;
  std::shared_ptr<const std::vector<serve::GrpcInferRequest>> requests_;
  std::unique_ptr<serve::GrpcClient> client_;
};

}  // namespace

std::unique_ptr<perf::PerfTransport> make_grpc_perf_transport(const perf::Endpoint& endpoint, const std::string& model,
                                                              const std::string& version, int64_t timeout_ms) {
  return std::make_unique<GrpcPerfTransport>(endpoint, model, version, timeout_ms, nullptr);
}

}  // namespace kiln::cli
#endif  // KILN_HAVE_GRPC
