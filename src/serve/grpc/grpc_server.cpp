// The KServe v2 gRPC front end of `kiln serve` (see grpc_server.h): one synchronous
// inference.GRPCInferenceService implementation over the protocol-independent InferenceServer.
#include "serve/grpc/grpc_server.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <climits>
#include <cstring>
#include <mutex>
#include <new>
#include <thread>
#include <type_traits>
#include <utility>

#include "kiln/error.h"
#include "serve/grpc_service.grpc.pb.h"

namespace kiln::serve {

int grpc_status_code(Status s) {
  switch (s) {
    case Status::kOk: return grpc::StatusCode::OK;
    case Status::kBadRequest: return grpc::StatusCode::INVALID_ARGUMENT;
    case Status::kUnauthorized: return grpc::StatusCode::UNAUTHENTICATED;
    // Triton refuses load and unload outside explicit model control with UNAVAILABLE; clients
    // written against it expect that code.
    case Status::kForbidden: return grpc::StatusCode::UNAVAILABLE;
    case Status::kNotFound: return grpc::StatusCode::NOT_FOUND;
    case Status::kPayloadTooLarge: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case Status::kTimeout: return grpc::StatusCode::DEADLINE_EXCEEDED;
    case Status::kUnavailable: return grpc::StatusCode::UNAVAILABLE;
    case Status::kInternal: return grpc::StatusCode::INTERNAL;
  }
  return grpc::StatusCode::INTERNAL;
}

namespace {

using google::protobuf::RepeatedField;
using google::protobuf::RepeatedPtrField;

grpc::Status make_status(Status s, const std::string& message) {
  return grpc::Status(static_cast<grpc::StatusCode>(grpc_status_code(s)), message);
}
grpc::Status invalid(const std::string& message) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message); }

std::string dq(const std::string& s) { return "\"" + s + "\""; }

std::string shape_text(const RepeatedField<int64_t>& shape) {
  std::string s = "[";
  for (int i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Runs a handler body, turning the exceptions the server throws into statuses: ServeError by its
// Status, kiln::Error by its kind (a bad name or argument is the client's; the rest is internal).
template <typename F>
grpc::Status guarded(F&& body) {
  try {
    return body();
  } catch (const ServeError& e) {
    return make_status(e.status(), e.what());
  } catch (const Error& e) {
    const bool client = e.code() == ErrorCode::kInvalidArgument || e.code() == ErrorCode::kInvalidModel ||
                        e.code() == ErrorCode::kUnsupported;
    return grpc::Status(client ? grpc::StatusCode::INVALID_ARGUMENT : grpc::StatusCode::INTERNAL, e.what());
  } catch (const std::bad_alloc&) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "out of memory");
  } catch (const std::exception& e) {
    return grpc::Status(grpc::StatusCode::INTERNAL, e.what());
  }
}

// A 64-byte-aligned buffer the server can view as a tensor without copying.
std::shared_ptr<uint8_t> aligned_buffer(size_t bytes) {
  constexpr std::align_val_t kAlign{64};
  auto* p = static_cast<uint8_t*>(::operator new(std::max<size_t>(bytes, 1), kAlign));
  return std::shared_ptr<uint8_t>(p, [](uint8_t* q) { ::operator delete(q, kAlign); });
}

// The typed field a datatype's elements travel in, or nullptr for FP16 and BF16 (raw only).
const char* contents_field(DataType dt) {
  switch (dt) {
    case DataType::kBool: return "bool_contents";
    case DataType::kInt8:
    case DataType::kInt16:
    case DataType::kInt32: return "int_contents";
    case DataType::kInt64: return "int64_contents";
    case DataType::kUInt8:
    case DataType::kUInt16:
    case DataType::kUInt32: return "uint_contents";
    case DataType::kUInt64: return "uint64_contents";
    case DataType::kFP32: return "fp32_contents";
    case DataType::kFP64: return "fp64_contents";
    case DataType::kString: return "bytes_contents";
    default: return nullptr;
  }
}

// The typed fields that hold values, by name.
std::vector<std::string> filled_fields(const inference::InferTensorContents& c) {
  std::vector<std::string> out;
  if (c.bool_contents_size()) out.push_back("bool_contents");
  if (c.int_contents_size()) out.push_back("int_contents");
  if (c.int64_contents_size()) out.push_back("int64_contents");
  if (c.uint_contents_size()) out.push_back("uint_contents");
  if (c.uint64_contents_size()) out.push_back("uint64_contents");
  if (c.fp32_contents_size()) out.push_back("fp32_contents");
  if (c.fp64_contents_size()) out.push_back("fp64_contents");
  if (c.bytes_contents_size()) out.push_back("bytes_contents");
  return out;
}

// Copies `values` into `out` as little-endian `Out`s (x86 and ARM Linux are little-endian, so the
// in-memory layout is the wire layout), refusing values `Out` cannot hold.
template <typename Out, typename In>
grpc::Status pack_values(const RepeatedField<In>& values, uint8_t* out, const std::string& who, const char* field,
                         std::string_view type) {
  Out* dst = reinterpret_cast<Out*>(out);
  for (int i = 0; i < values.size(); ++i) {
    const In v = values[i];
    if constexpr (!std::is_same_v<Out, In> && std::is_integral_v<Out> && !std::is_same_v<In, bool>) {
      if (!std::in_range<Out>(v))
        return invalid(who + ": " + field + "[" + std::to_string(i) + "] = " + std::to_string(v) +
                       " is out of range for " + std::string(type));
    }
    dst[i] = static_cast<Out>(v);
  }
  return grpc::Status::OK;
}

// Packs an input's typed contents into the raw little-endian form the server takes.
grpc::Status pack_contents(const inference::ModelInferRequest::InferInputTensor& t, DataType dt, int64_t numel,
                           InputTensor* in) {
  const std::string who = "input " + dq(t.name());
  const std::string_view type = v2_datatype_name(dt);
  const inference::InferTensorContents& c = t.contents();
  const std::vector<std::string> filled = filled_fields(c);
  const char* field = contents_field(dt);
  if (!field) {
    if (numel == 0 && filled.empty()) return grpc::Status::OK;
    return invalid(who + " is " + std::string(type) + ", which has no typed contents field; send its elements as " +
                   "little-endian bytes in raw_input_contents");
  }
  for (const std::string& f : filled)
    if (f != field)
      return invalid(who + " is " + std::string(type) + " but carries " + f + "; " + std::string(type) +
                     " elements go in " + field);
  int64_t count = 0;
  switch (dt) {
    case DataType::kBool: count = c.bool_contents_size(); break;
    case DataType::kInt8:
    case DataType::kInt16:
    case DataType::kInt32: count = c.int_contents_size(); break;
    case DataType::kInt64: count = c.int64_contents_size(); break;
    case DataType::kUInt8:
    case DataType::kUInt16:
    case DataType::kUInt32: count = c.uint_contents_size(); break;
    case DataType::kUInt64: count = c.uint64_contents_size(); break;
    case DataType::kFP32: count = c.fp32_contents_size(); break;
    case DataType::kFP64: count = c.fp64_contents_size(); break;
    case DataType::kString: count = c.bytes_contents_size(); break;
    default: break;
  }
  if (count != numel) {
    if (filled.empty())
      return invalid(who + " has no data: shape " + shape_text(t.shape()) + " needs " + std::to_string(numel) +
                     " elements, in contents." + field + " or in raw_input_contents");
    return invalid(who + " has " + std::to_string(count) + " values in " + field + "; shape " + shape_text(t.shape()) +
                   " needs " + std::to_string(numel));
  }

  size_t bytes = 0;
  if (dt == DataType::kString) {
    // The binary form of BYTES: each element as a 4-byte little-endian length and its bytes.
    for (const std::string& s : c.bytes_contents()) bytes += 4 + s.size();
  } else {
    bytes = static_cast<size_t>(numel) * v2_element_size(dt);
  }
  auto buf = aligned_buffer(bytes);
  uint8_t* p = buf.get();
  grpc::Status st;
  switch (dt) {
    case DataType::kBool: st = pack_values<uint8_t>(c.bool_contents(), p, who, field, type); break;
    case DataType::kInt8: st = pack_values<int8_t>(c.int_contents(), p, who, field, type); break;
    case DataType::kInt16: st = pack_values<int16_t>(c.int_contents(), p, who, field, type); break;
    case DataType::kInt32: st = pack_values<int32_t>(c.int_contents(), p, who, field, type); break;
    case DataType::kInt64: st = pack_values<int64_t>(c.int64_contents(), p, who, field, type); break;
    case DataType::kUInt8: st = pack_values<uint8_t>(c.uint_contents(), p, who, field, type); break;
    case DataType::kUInt16: st = pack_values<uint16_t>(c.uint_contents(), p, who, field, type); break;
    case DataType::kUInt32: st = pack_values<uint32_t>(c.uint_contents(), p, who, field, type); break;
    case DataType::kUInt64: st = pack_values<uint64_t>(c.uint64_contents(), p, who, field, type); break;
    case DataType::kFP32: st = pack_values<float>(c.fp32_contents(), p, who, field, type); break;
    case DataType::kFP64: st = pack_values<double>(c.fp64_contents(), p, who, field, type); break;
    case DataType::kString:
      for (const std::string& s : c.bytes_contents()) {
        const uint32_t n = static_cast<uint32_t>(s.size());
        std::memcpy(p, &n, 4);
        std::memcpy(p + 4, s.data(), s.size());
        p += 4 + s.size();
      }
      break;
    default: break;
  }
  if (!st.ok()) return st;
  in->data = buf.get();
  in->byte_size = bytes;
  in->owner = std::move(buf);
  return grpc::Status::OK;
}

// An int64 or uint64 parameter as a non-negative value.
grpc::Status unsigned_param(const std::string& name, const inference::InferParameter& p, uint64_t* out) {
  if (p.parameter_choice_case() == inference::InferParameter::kUint64Param) {
    *out = p.uint64_param();
    return grpc::Status::OK;
  }
  if (p.parameter_choice_case() == inference::InferParameter::kInt64Param) {
    if (p.int64_param() < 0)
      return invalid("parameter " + dq(name) + " is " + std::to_string(p.int64_param()) + "; it must be >= 0");
    *out = static_cast<uint64_t>(p.int64_param());
    return grpc::Status::OK;
  }
  return invalid("parameter " + dq(name) + " must be an int64_param or uint64_param");
}

bool has_value(const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kBoolParam: return p.bool_param();
    case inference::InferParameter::kInt64Param: return p.int64_param() != 0;
    case inference::InferParameter::kUint64Param: return p.uint64_param() != 0;
    case inference::InferParameter::kStringParam: return !p.string_param().empty();
    case inference::InferParameter::kDoubleParam: return p.double_param() != 0;
    default: return false;
  }
}

// ModelInferRequest -> InferenceRequest. Raw contents are pointed at where they are (the gRPC request
// outlives the synchronous call, and the server copies them into its tensors); typed contents are
// packed into aligned buffers the request owns, which the server views without a copy.
grpc::Status to_request(const inference::ModelInferRequest& req, const SharedMemoryRegistry& shm,
                        InferenceRequest* out) {
  out->model = req.model_name();
  out->version = req.model_version();
  out->id = req.id();
  for (const auto& [name, p] : req.parameters()) {
    if (name == "priority") {
      uint64_t v = 0;
      if (auto st = unsigned_param(name, p, &v); !st.ok()) return st;
      if (v > static_cast<uint64_t>(INT_MAX))
        return invalid("parameter \"priority\" is too large: " + std::to_string(v));
      out->priority = static_cast<int>(v);
    } else if (name == "timeout") {
      uint64_t v = 0;
      if (auto st = unsigned_param(name, p, &v); !st.ok()) return st;
      out->timeout_us = v;
    } else if (name == "sequence_id" || name == "sequence_start" || name == "sequence_end") {
      // Kiln has no sequence batcher: a stateful request would silently lose its state.
      if (has_value(p)) return invalid("parameter " + dq(name) + ": sequence batching is not supported");
    }
    // Other parameters are Triton's custom parameters for backends; Kiln's backend takes none.
  }

  // Inputs in shared memory carry no contents; raw_input_contents then has one entry per other input.
  const int n_inputs = req.inputs_size();
  int n_shm = 0;
  for (const auto& t : req.inputs()) n_shm += t.parameters().count("shared_memory_region") ? 1 : 0;
  const int n_raw = req.raw_input_contents_size();
  const bool raw = n_raw > 0;
  if (raw && n_raw != n_inputs - n_shm)
    return invalid("the request has " + std::to_string(n_inputs - n_shm) + " input" +
                   (n_inputs - n_shm == 1 ? "" : "s") + (n_shm ? " outside shared memory" : "") + " but " +
                   std::to_string(n_raw) + " raw_input_contents entr" + (n_raw == 1 ? "y" : "ies") +
                   "; send one entry per input" + (n_shm ? " outside shared memory" : "") + ", in the order of inputs");
  out->inputs.reserve(static_cast<size_t>(n_inputs));
  int raw_index = 0;
  for (int i = 0; i < n_inputs; ++i) {
    const auto& t = req.inputs(i);
    const std::string who = "input " + dq(t.name());
    std::string region;
    uint64_t region_size = 0, region_offset = 0;
    bool has_size = false;
    for (const auto& [name, p] : t.parameters()) {
      if (name == "shared_memory_region") {
        if (p.parameter_choice_case() != inference::InferParameter::kStringParam)
          return invalid(who + ": shared_memory_region must be a string_param");
        region = p.string_param();
      } else if (name == "shared_memory_byte_size") {
        if (auto st = unsigned_param(name, p, &region_size); !st.ok()) return st;
        has_size = true;
      } else if (name == "shared_memory_offset") {
        if (auto st = unsigned_param(name, p, &region_offset); !st.ok()) return st;
      }
    }
    InputTensor in;
    in.name = t.name();
    in.datatype = parse_v2_datatype(t.datatype());
    if (in.datatype == DataType::kInvalid)
      return invalid(who + " has unknown datatype " + dq(t.datatype()) + " (BOOL, UINT8, UINT16, UINT32, UINT64, " +
                     "INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES)");
    int64_t numel = 1;
    for (int64_t d : t.shape()) {
      if (d < 0) return invalid(who + " has a negative dim in shape " + shape_text(t.shape()));
      if (d > 0 && numel > (int64_t{1} << 50) / d)
        return invalid(who + " has shape " + shape_text(t.shape()) + ", too many elements");
      numel *= d;
    }
    in.shape.assign(t.shape().begin(), t.shape().end());
    if (!region.empty()) {
      if (!has_size) return invalid(who + ": shared_memory_region needs shared_memory_byte_size");
      if (!filled_fields(t.contents()).empty()) return invalid(who + " has contents and a shared_memory_region");
      try {
        SharedMemoryRegistry::View v = shm.view(region, region_offset, region_size, who);
        in.data = v.data;
        in.byte_size = static_cast<size_t>(region_size);
        in.owner = std::move(v.owner);
      } catch (const ServeError& e) {
        return make_status(e.status(), e.what());
      }
    } else if (raw) {
      if (!filled_fields(t.contents()).empty())
        return invalid(who + " has contents although the request uses raw_input_contents; send every input's "
                             "data one way");
      const std::string& bytes = req.raw_input_contents(raw_index++);
      in.data = bytes.data();
      in.byte_size = bytes.size();
    } else if (auto st = pack_contents(t, in.datatype, numel, &in); !st.ok()) {
      return st;
    }
    out->inputs.push_back(std::move(in));
  }

  for (const auto& o : req.outputs()) {
    for (const auto& [name, p] : o.parameters()) {
      if (name == "classification")
        return invalid("output " + dq(o.name()) + ": the classification extension is not supported");
      if (name.rfind("shared_memory_", 0) == 0)
        return invalid("output " + dq(o.name()) + ": outputs in shared memory are not supported; they come back "
                                                 "in the response");
    }
    out->outputs.push_back(o.name());
  }
  return grpc::Status::OK;
}

void fill_tensor_metadata(const std::vector<TensorMetadata>& list,
                          RepeatedPtrField<inference::ModelMetadataResponse::TensorMetadata>* out) {
  for (const TensorMetadata& t : list) {
    auto* m = out->Add();
    m->set_name(t.name);
    m->set_datatype(t.datatype);
    for (int64_t d : t.shape) m->add_shape(d);
  }
}

void set_duration(inference::StatisticDuration* d, uint64_t count, uint64_t us) {
  d->set_count(count);
  d->set_ns(us * 1000);
}

}  // namespace

class GrpcService final : public inference::GRPCInferenceService::Service {
 public:
  explicit GrpcService(InferenceServer& server) : server_(server) {}
  void begin_shutdown() { stopping_ = true; }
  int active() const { return active_.load(); }

  grpc::Status ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                          inference::ServerLiveResponse* resp) override {
    const Active active(active_);
    resp->set_live(server_.live());
    return grpc::Status::OK;
  }

  grpc::Status ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                           inference::ServerReadyResponse* resp) override {
    const Active active(active_);
    resp->set_ready(!stopping_ && server_.ready());
    return grpc::Status::OK;
  }

  grpc::Status ModelReady(grpc::ServerContext*, const inference::ModelReadyRequest* req,
                          inference::ModelReadyResponse* resp) override {
    const Active active(active_);
    return guarded([&] {
      resp->set_ready(!stopping_ && server_.model_ready(req->name(), req->version()));
      return grpc::Status::OK;
    });
  }

  grpc::Status ServerMetadata(grpc::ServerContext*, const inference::ServerMetadataRequest*,
                              inference::ServerMetadataResponse* resp) override {
    const Active active(active_);
    return guarded([&] {
      const serve::ServerMetadata m = server_.server_metadata();
      resp->set_name(m.name);
      resp->set_version(m.version);
      for (const std::string& e : m.extensions) resp->add_extensions(e);
      return grpc::Status::OK;
    });
  }

  grpc::Status ModelMetadata(grpc::ServerContext*, const inference::ModelMetadataRequest* req,
                             inference::ModelMetadataResponse* resp) override {
    const Active active(active_);
    return guarded([&] {
      const serve::ModelMetadata m = server_.model_metadata(req->name(), req->version());
      resp->set_name(m.name);
      for (const std::string& v : m.versions) resp->add_versions(v);
      resp->set_platform(m.platform);
      fill_tensor_metadata(m.inputs, resp->mutable_inputs());
      fill_tensor_metadata(m.outputs, resp->mutable_outputs());
      return grpc::Status::OK;
    });
  }

  grpc::Status ModelInfer(grpc::ServerContext*, const inference::ModelInferRequest* req,
                          inference::ModelInferResponse* resp) override {
    const Active active(active_);
    return guarded([&] {
      if (stopping_)
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down and accepts no new requests");
      InferenceRequest request;
      if (auto st = to_request(*req, server_.shared_memory(), &request); !st.ok()) return st;
      InferenceOutcome outcome = server_.infer_sync(std::move(request));
      if (outcome.status != Status::kOk) return make_status(outcome.status, outcome.error);
      InferenceResult& r = outcome.result;
      resp->set_model_name(r.model_name);
      resp->set_model_version(r.model_version);
      resp->set_id(r.id);
      for (const OutputTensor& o : r.outputs) {
        auto* t = resp->add_outputs();
        t->set_name(o.name);
        t->set_datatype(std::string(v2_datatype_name(o.datatype)));
        for (int64_t d : o.shape) t->add_shape(d);
        // As Triton does, every output travels raw, whatever form the inputs came in.
        resp->add_raw_output_contents(static_cast<const char*>(o.tensor.raw()), o.tensor.nbytes());
      }
      return grpc::Status::OK;
    });
  }

  grpc::Status ModelStatistics(grpc::ServerContext*, const inference::ModelStatisticsRequest* req,
                               inference::ModelStatisticsResponse* resp) override {
    const Active active(active_);
    return guarded([&] {
      for (const ModelVersionStats& m : server_.model_stats(req->name(), req->version())) {
        const StatsSnapshot& s = m.stats;
        auto* out = resp->add_model_stats();
        out->set_name(m.name);
        out->set_version(m.version);
        out->set_last_inference(m.last_inference_ms);
        out->set_inference_count(s.inference_count);
        out->set_execution_count(s.execution_count);
        auto* is = out->mutable_inference_stats();
        // Triton's counts: every successful request is charged its queue and compute phases.
        set_duration(is->mutable_success(), s.success, s.request_us);
        set_duration(is->mutable_fail(), s.failures(), 0);
        set_duration(is->mutable_queue(), s.success, s.queue_us);
        set_duration(is->mutable_compute_input(), s.success, s.compute_input_us);
        set_duration(is->mutable_compute_infer(), s.success, s.compute_infer_us);
        set_duration(is->mutable_compute_output(), s.success, s.compute_output_us);
        // Executions per batch size; the server keeps no durations per size.
        for (const auto& [size, count] : s.batch_sizes) {
          auto* b = out->add_batch_stats();
          b->set_batch_size(static_cast<uint64_t>(size));
          b->mutable_compute_input()->set_count(count);
          b->mutable_compute_infer()->set_count(count);
          b->mutable_compute_output()->set_count(count);
        }
      }
      return grpc::Status::OK;
    });
  }

  grpc::Status RepositoryIndex(grpc::ServerContext*, const inference::RepositoryIndexRequest* req,
                               inference::RepositoryIndexResponse* resp) override {
    const Active active(active_);
    return guarded([&] {
      for (const IndexEntry& e : server_.repository_index(req->ready())) {
        auto* m = resp->add_models();
        m->set_name(e.name);
        m->set_version(e.version);
        m->set_state(e.state);
        m->set_reason(e.reason);
      }
      return grpc::Status::OK;
    });
  }

  grpc::Status RepositoryModelLoad(grpc::ServerContext* ctx, const inference::RepositoryModelLoadRequest* req,
                                   inference::RepositoryModelLoadResponse*) override {
    const Active active(active_);
    return guarded([&] {
      if (auto st = check_management(ctx); !st.ok()) return st;
      // Triton's "config" and "file:<version>/<name>" overrides would load something other than
      // the repository holds; refusing them beats loading the wrong model silently.
      for (const auto& [name, p] : req->parameters())
        return invalid("RepositoryModelLoad parameter " + dq(name) +
                       " is not supported; Kiln loads models as the repository holds them");
      server_.load_model(req->model_name());
      return grpc::Status::OK;
    });
  }

  grpc::Status RepositoryModelUnload(grpc::ServerContext* ctx, const inference::RepositoryModelUnloadRequest* req,
                                     inference::RepositoryModelUnloadResponse*) override {
    const Active active(active_);
    return guarded([&] {
      if (auto st = check_management(ctx); !st.ok()) return st;
      for (const auto& [name, p] : req->parameters())
        if (name != "unload_dependents")  // no ensembles, so no dependents: accepted and moot
          return invalid("RepositoryModelUnload parameter " + dq(name) + " is not supported");
      server_.unload_model(req->model_name());
      return grpc::Status::OK;
    });
  }

  grpc::Status ModelConfig(grpc::ServerContext*, const inference::ModelConfigRequest* req,
                           inference::ModelConfigResponse* resp) override {
    const Active active(active_);
    return guarded([&] {
      if (!resp->mutable_config()->ParseFromString(server_.model_config_proto(req->name(), req->version())))
        return grpc::Status(grpc::StatusCode::INTERNAL, "the model config did not serialize");
      return grpc::Status::OK;
    });
  }

  grpc::Status SystemSharedMemoryStatus(grpc::ServerContext*, const inference::SystemSharedMemoryStatusRequest* req,
                                        inference::SystemSharedMemoryStatusResponse* resp) override {
    const Active active(active_);
    return guarded([&] {
      for (const SharedMemoryStatus& r : server_.shared_memory().status(req->name())) {
        auto& m = (*resp->mutable_regions())[r.name];
        m.set_name(r.name);
        m.set_key(r.key);
        m.set_offset(r.offset);
        m.set_byte_size(r.byte_size);
      }
      return grpc::Status::OK;
    });
  }

  // Registering and unregistering need the API key when the server has one, like repository calls.
  grpc::Status SystemSharedMemoryRegister(grpc::ServerContext* ctx, const inference::SystemSharedMemoryRegisterRequest* req,
                                          inference::SystemSharedMemoryRegisterResponse*) override {
    const Active active(active_);
    return guarded([&] {
      if (auto st = check_management(ctx); !st.ok()) return st;
      server_.shared_memory().register_region(req->name(), req->key(), req->offset(), req->byte_size());
      return grpc::Status::OK;
    });
  }

  grpc::Status SystemSharedMemoryUnregister(grpc::ServerContext* ctx,
                                            const inference::SystemSharedMemoryUnregisterRequest* req,
                                            inference::SystemSharedMemoryUnregisterResponse*) override {
    const Active active(active_);
    return guarded([&] {
      if (auto st = check_management(ctx); !st.ok()) return st;
      if (req->name().empty()) server_.shared_memory().unregister_all();
      else server_.shared_memory().unregister(req->name());
      return grpc::Status::OK;
    });
  }

 private:
  // Management calls need `authorization: Bearer KEY` metadata when the server has an API key.
  // The key is checked before the model-control mode, so a caller without it learns nothing more.
  grpc::Status check_management(grpc::ServerContext* ctx) const {
    if (!server_.management_needs_key()) return grpc::Status::OK;
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    if (it == md.end())
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "this call needs the server's API key: send metadata \"authorization: Bearer <key>\"");
    const std::string_view value(it->second.data(), it->second.size());
    constexpr std::string_view kScheme = "bearer ";
    const bool bearer = value.size() >= kScheme.size() &&
                        std::equal(kScheme.begin(), kScheme.end(), value.begin(),
                                   [](char a, char b) { return a == std::tolower(static_cast<unsigned char>(b)); });
    if (!bearer)
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "the \"authorization\" metadata must be \"Bearer <key>\"");
    std::string_view key = value.substr(kScheme.size());
    while (!key.empty() && key.front() == ' ') key.remove_prefix(1);
    while (!key.empty() && key.back() == ' ') key.remove_suffix(1);
    if (!server_.check_api_key(key))
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong API key in the \"authorization\" metadata");
    return grpc::Status::OK;
  }

  // Counts a handler while it runs, so shutdown knows when the last one has returned.
  struct Active {
    explicit Active(std::atomic<int>& n) : n_(n) { ++n_; }
    ~Active() { --n_; }
    std::atomic<int>& n_;
  };

  InferenceServer& server_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> active_{0};
};

GrpcFrontEnd::GrpcFrontEnd(InferenceServer& server, std::string host, int port, GrpcOptions options) {
  if (port < 0 || port > 65535)
    throw Error(ErrorCode::kInvalidArgument, "gRPC port " + std::to_string(port) + " is not in 0-65535");
  if (options.max_message_bytes == 0 || options.max_message_bytes > static_cast<size_t>(INT_MAX))
    throw Error(ErrorCode::kInvalidArgument, "gRPC max message size " + std::to_string(options.max_message_bytes) +
                                                 " is not in 1-" + std::to_string(INT_MAX) + " bytes");
  if (options.threads < 0)
    throw Error(ErrorCode::kInvalidArgument, "gRPC threads " + std::to_string(options.threads) + " is negative");
  // An IPv6 literal needs brackets before the port.
  const bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  const std::string target = (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);

  service_ = std::make_unique<GrpcService>(server);
  grpc::ServerBuilder builder;
  int selected = 0;
  builder.AddListeningPort(target, grpc::InsecureServerCredentials(), &selected);
  builder.RegisterService(service_.get());
  const int max_bytes = static_cast<int>(options.max_message_bytes);
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(max_bytes);
  // gRPC sets SO_REUSEPORT by default on Linux: a second server on a taken port would then share it
  // silently instead of failing.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (options.threads > 0) {
    grpc::ResourceQuota quota("kiln_grpc");
    quota.SetMaxThreads(options.threads);
    builder.SetResourceQuota(quota);
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::NUM_CQS, 1);
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 1);
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, std::min(2, options.threads));
  } else {
    // gRPC's sync-server default is one completion queue with at most 2 pollers, and pollers also
    // read the sockets: about 2.5 GB/s of request bytes in all, which large tensors (a 224x224
    // image is 600 KB) reach at a few thousand requests per second. One queue per 4 cores.
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::NUM_CQS, std::clamp(cores / 4, 1, 8));
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 1);
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 4);
  }
  server_ = builder.BuildAndStart();
  if (!server_ || selected == 0)
    throw Error(ErrorCode::kIo, "cannot listen for gRPC on " + target + " (address in use or not available here)");
  port_ = selected;
  address_ = (v6 ? "[" + host + "]" : host) + ":" + std::to_string(selected);
}

GrpcFrontEnd::~GrpcFrontEnd() { shutdown(std::chrono::system_clock::now()); }

void GrpcFrontEnd::shutdown(std::chrono::system_clock::time_point deadline) {
  std::lock_guard lock(shutdown_mu_);  // a second caller returns once the first has finished
  if (stopped_ || !server_) return;
  stopped_ = true;
  service_->begin_shutdown();
  // gRPC's Shutdown(deadline) also waits out idle client connections whose client does not react to
  // GOAWAY (a Python client polls only while it has a call in progress), so it would hold every
  // shutdown for the whole grace period. Wait for the running handlers here instead, then give the
  // last responses a moment to be written before the remaining connections are closed.
  while (service_->active() > 0 && std::chrono::system_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  server_->Shutdown(std::min(deadline, std::chrono::system_clock::now() + std::chrono::milliseconds(200)));
  server_->Wait();
}

}  // namespace kiln::serve
