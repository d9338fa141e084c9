// A small client of the KServe v2 gRPC API (see grpc_client.h), over the generated stub.
#include "serve/grpc/grpc_client.h"

#include <grpcpp/grpcpp.h>

#include <climits>
#include <iterator>

#include "serve/grpc_service.grpc.pb.h"

namespace kiln::serve {

std::string grpc_code_name(int code) {
  // Indexed by the code's number, as gRPC defines them.
  static const char* const kNames[] = {
      "OK",           "CANCELLED",         "UNKNOWN",            "INVALID_ARGUMENT",    "DEADLINE_EXCEEDED",
      "NOT_FOUND",    "ALREADY_EXISTS",    "PERMISSION_DENIED",  "RESOURCE_EXHAUSTED",  "FAILED_PRECONDITION",
      "ABORTED",      "OUT_OF_RANGE",      "UNIMPLEMENTED",      "INTERNAL",            "UNAVAILABLE",
      "DATA_LOSS",    "UNAUTHENTICATED",
  };
  if (code >= 0 && code < static_cast<int>(std::size(kNames))) return kNames[code];
  return "UNKNOWN_CODE_" + std::to_string(code);
}

const RawTensor& GrpcInferResponse::output(const std::string& name) const {
  for (const RawTensor& t : outputs)
    if (t.name == name) return t;
  throw std::out_of_range("the response has no output \"" + name + "\"");
}

struct GrpcClient::Impl {
  GrpcClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub;

  void prepare(grpc::ClientContext& ctx) const {
    if (!options.api_key.empty()) ctx.AddMetadata("authorization", "Bearer " + options.api_key);
    if (options.timeout.count() > 0) ctx.set_deadline(std::chrono::system_clock::now() + options.timeout);
  }

  // Runs one unary call of the stub, throwing GrpcCallError unless it returns OK.
  template <typename Req, typename Resp, typename Method>
  Resp call(Method method, const Req& req) const {
    grpc::ClientContext ctx;
    prepare(ctx);
    Resp resp;
    const grpc::Status st = ((*stub).*method)(&ctx, req, &resp);
    if (!st.ok()) throw GrpcCallError(st.error_code(), grpc_code_name(st.error_code()), st.error_message());
    return resp;
  }
};

GrpcClient::GrpcClient(const std::string& target, GrpcClientOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  grpc::ChannelArguments args;
  const size_t max = impl_->options.max_message_bytes;
  args.SetMaxReceiveMessageSize(max == 0 || max > static_cast<size_t>(INT_MAX) ? -1 : static_cast<int>(max));
  args.SetMaxSendMessageSize(-1);  // the server's limit is the one that counts
  // A connection of its own: channels with equal arguments otherwise share one subchannel (one TCP
  // connection), which serializes every client of `kiln perf` on one HTTP/2 stream multiplexer.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  impl_->channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  impl_->stub = inference::GRPCInferenceService::NewStub(impl_->channel);
}

GrpcClient::~GrpcClient() = default;

bool GrpcClient::wait_for_connection(std::chrono::milliseconds wait) {
  return impl_->channel->WaitForConnected(std::chrono::system_clock::now() + wait);
}

bool GrpcClient::server_live() {
  using S = inference::GRPCInferenceService::Stub;
  return impl_->call<inference::ServerLiveRequest, inference::ServerLiveResponse>(&S::ServerLive, {}).live();
}

bool GrpcClient::server_ready() {
  using S = inference::GRPCInferenceService::Stub;
  return impl_->call<inference::ServerReadyRequest, inference::ServerReadyResponse>(&S::ServerReady, {}).ready();
}

bool GrpcClient::model_ready(const std::string& model, const std::string& version) {
  using S = inference::GRPCInferenceService::Stub;
  inference::ModelReadyRequest req;
  req.set_name(model);
  req.set_version(version);
  return impl_->call<inference::ModelReadyRequest, inference::ModelReadyResponse>(&S::ModelReady, req).ready();
}

ServerMetadata GrpcClient::server_metadata() {
  using S = inference::GRPCInferenceService::Stub;
  const auto resp =
      impl_->call<inference::ServerMetadataRequest, inference::ServerMetadataResponse>(&S::ServerMetadata, {});
  ServerMetadata m;
  m.name = resp.name();
  m.version = resp.version();
  m.extensions.assign(resp.extensions().begin(), resp.extensions().end());
  return m;
}

ModelMetadata GrpcClient::model_metadata(const std::string& model, const std::string& version) {
  using S = inference::GRPCInferenceService::Stub;
  inference::ModelMetadataRequest req;
  req.set_name(model);
  req.set_version(version);
  const auto resp =
      impl_->call<inference::ModelMetadataRequest, inference::ModelMetadataResponse>(&S::ModelMetadata, req);
  ModelMetadata m;
  m.name = resp.name();
  m.versions.assign(resp.versions().begin(), resp.versions().end());
  m.platform = resp.platform();
  auto tensors = [](const auto& list) {
    std::vector<TensorMetadata> out;
    for (const auto& t : list) out.push_back({t.name(), t.datatype(), {t.shape().begin(), t.shape().end()}});
    return out;
  };
  m.inputs = tensors(resp.inputs());
  m.outputs = tensors(resp.outputs());
  return m;
}

int64_t GrpcClient::max_batch_size(const std::string& model, const std::string& version) {
  using S = inference::GRPCInferenceService::Stub;
  inference::ModelConfigRequest req;
  req.set_name(model);
  req.set_version(version);
  try {
    return impl_->call<inference::ModelConfigRequest, inference::ModelConfigResponse>(&S::ModelConfig, req)
        .config()
        .max_batch_size();
  } catch (const GrpcCallError& e) {
    if (e.code() == 12) return -1;  // UNIMPLEMENTED: a server without the configuration call
    throw;
  }
}

GrpcInferResponse GrpcClient::infer(const GrpcInferRequest& request) {
  using S = inference::GRPCInferenceService::Stub;
  inference::ModelInferRequest req;
  req.set_model_name(request.model);
  req.set_model_version(request.version);
  req.set_id(request.id);
  if (request.priority) (*req.mutable_parameters())["priority"].set_uint64_param(request.priority);
  if (request.timeout_us) (*req.mutable_parameters())["timeout"].set_uint64_param(request.timeout_us);
  for (const RawTensor& t : request.inputs) {
    auto* in = req.add_inputs();
    in->set_name(t.name);
    in->set_datatype(t.datatype);
    for (int64_t d : t.shape) in->add_shape(d);
    req.add_raw_input_contents(t.data);
  }
  for (const std::string& o : request.outputs) req.add_outputs()->set_name(o);
  auto resp = impl_->call<inference::ModelInferRequest, inference::ModelInferResponse>(&S::ModelInfer, req);
  GrpcInferResponse out;
  out.model_name = resp.model_name();
  out.model_version = resp.model_version();
  out.id = resp.id();
  for (int i = 0; i < resp.outputs_size(); ++i) {
    const auto& o = resp.outputs(i);
    RawTensor t{o.name(), o.datatype(), {o.shape().begin(), o.shape().end()}, {}};
    if (i < resp.raw_output_contents_size()) t.data = std::move(*resp.mutable_raw_output_contents(i));
    out.outputs.push_back(std::move(t));
  }
  return out;
}

std::vector<GrpcModelStats> GrpcClient::model_statistics(const std::string& model, const std::string& version) {
  using S = inference::GRPCInferenceService::Stub;
  inference::ModelStatisticsRequest req;
  req.set_name(model);
  req.set_version(version);
  const auto resp =
      impl_->call<inference::ModelStatisticsRequest, inference::ModelStatisticsResponse>(&S::ModelStatistics, req);
  std::vector<GrpcModelStats> out;
  for (const auto& m : resp.model_stats()) {
    const auto& s = m.inference_stats();
    GrpcModelStats g;
    g.name = m.name();
    g.version = m.version();
    g.last_inference_ms = m.last_inference();
    g.inference_count = m.inference_count();
    g.execution_count = m.execution_count();
    g.success_count = s.success().count();
    g.fail_count = s.fail().count();
    g.request_us = s.success().ns() / 1000;
    g.queue_us = s.queue().ns() / 1000;
    g.compute_input_us = s.compute_input().ns() / 1000;
    g.compute_infer_us = s.compute_infer().ns() / 1000;
    g.compute_output_us = s.compute_output().ns() / 1000;
    out.push_back(std::move(g));
  }
  return out;
}

std::vector<IndexEntry> GrpcClient::repository_index(bool ready_only) {
  using S = inference::GRPCInferenceService::Stub;
  inference::RepositoryIndexRequest req;
  req.set_ready(ready_only);
  const auto resp =
      impl_->call<inference::RepositoryIndexRequest, inference::RepositoryIndexResponse>(&S::RepositoryIndex, req);
  std::vector<IndexEntry> out;
  for (const auto& m : resp.models()) out.push_back({m.name(), m.version(), m.state(), m.reason()});
  return out;
}

void GrpcClient::load_model(const std::string& model) {
  using S = inference::GRPCInferenceService::Stub;
  inference::RepositoryModelLoadRequest req;
  req.set_model_name(model);
  impl_->call<inference::RepositoryModelLoadRequest, inference::RepositoryModelLoadResponse>(&S::RepositoryModelLoad,
                                                                                             req);
}

void GrpcClient::unload_model(const std::string& model) {
  using S = inference::GRPCInferenceService::Stub;
  inference::RepositoryModelUnloadRequest req;
  req.set_model_name(model);
  impl_->call<inference::RepositoryModelUnloadRequest, inference::RepositoryModelUnloadResponse>(
      &S::RepositoryModelUnload, req);
}

}  // namespace kiln::serve
