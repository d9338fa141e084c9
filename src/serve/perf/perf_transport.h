// `kiln perf` transports: the client side of the KServe v2 protocol that the load generator speaks.
// PerfTransport is the interface (metadata, statistics, inference); HttpTransport implements it
// over HTTP/REST with JSON tensors or the binary tensor extension. The request encoders and
// response parsers are free functions so they can be tested without a server.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "serve/perf/perf_stats.h"

namespace kiln::serve::perf {

// An input or output as the server's metadata describes it (v2 datatype name; -1: any size).
struct TensorSpec {
  std::string name;
  std::string datatype;
  std::vector<int64_t> shape;
};

struct ModelInfo {
  std::string name;
  std::vector<std::string> versions;
  std::string platform;
  std::vector<TensorSpec> inputs, outputs;
  // From the model configuration: > 0, the first dim of every input is the batch; 0, no batching;
  // -1, the server did not say.
  int64_t max_batch_size = -1;
};

// One input of a request: its v2 datatype, the shape sent, and the elements as raw little-endian
// bytes, row major (the binary extension's layout).
struct InputData {
  std::string name;
  std::string datatype;
  std::vector<int64_t> shape;
  std::string bytes;
};
using Inputs = std::vector<InputData>;

struct InferResult {
  bool ok = false;
  std::string error_kind;     // "http_503", "timeout", "connection", "bad_response", ...
  std::string error_message;  // the server's error text, or the transport's
  uint64_t send_ns = 0;       // from the call until the request's last byte was written
  uint64_t recv_ns = 0;       // from the response's arrival until it was decoded
};

class PerfTransport {
 public:
  virtual ~PerfTransport() = default;
  // Where the server is, for messages ("http://localhost:8000").
  virtual std::string url() const = 0;
  // The model's metadata and, when the server answers, its max_batch_size. Throws kiln::Error:
  // kIo when the server cannot be reached (naming the URL), kInvalidArgument with the server's
  // error text when it refuses (unknown model).
  virtual ModelInfo metadata() = 0;
  // The server's cumulative counters for the model; nullopt when it does not report statistics.
  virtual std::optional<ServerCounters> server_stats() = 0;
  // Encodes the requests once: the measured loop only sends. infer(i) sends data[i].
  virtual void prepare(const std::vector<Inputs>& data) = 0;
  virtual InferResult infer(size_t index) = 0;
  // A transport with its own connection, sharing the prepared requests: one per worker.
  virtual std::unique_ptr<PerfTransport> connect_another() const = 0;
};

// -u: "host:port", "host" (the protocol's default port), "[::1]:8000", optionally "http://".
struct Endpoint {
  std::string host;
  int port = 0;
};
// Throws kiln::Error kInvalidArgument for an empty host or a port outside 1-65535.
Endpoint parse_endpoint(const std::string& text, int default_port);

// A request body for POST /v2/models/{m}[/versions/{v}]/infer.
struct HttpBody {
  std::string body;
  // Binary tensors: the length of the JSON header that starts the body (the
  // Inference-Header-Content-Length header's value); 0 for a plain JSON body.
  size_t json_length = 0;
  std::string content_type;
};
// Binary tensor extension: a JSON header naming each input with its "binary_data_size", then the
// inputs' bytes back to back in the same order. Outputs are asked for as binary too
// ("binary_data_output"), so the server does not spend time printing them as JSON.
HttpBody encode_binary_request(const Inputs& inputs);
// A JSON body whose inputs point into a system shared-memory region at `offsets` (one per input).
HttpBody encode_shared_memory_request(const Inputs& inputs, const std::string& region,
                                      const std::vector<uint64_t>& offsets);
// Plain JSON: each input's elements as a flat "data" array. FP16 and BF16 have no JSON form (an
// error naming the input).
HttpBody encode_json_request(const Inputs& inputs);

// Parsers of the server's answers (throw kiln::Error kInvalidArgument naming what is wrong).
ModelInfo parse_model_metadata(const nlohmann::json& j);
// max_batch_size of GET .../config: Triton's field name or protobuf JSON's camelCase; -1 absent.
int64_t parse_max_batch_size(const nlohmann::json& config);
// Sums model_stats[] entries of `model` (and `version` when not empty).
ServerCounters parse_model_stats(const nlohmann::json& j, const std::string& model, const std::string& version);
// The "error" text of a KServe error body, else the body itself (shortened).
std::string error_text(const std::string& body);

struct HttpOptions {
  Endpoint endpoint;
  std::string model, version;  // version "": the server's choice (latest)
  bool binary = true;          // binary tensor extension, else JSON tensors
  // The system shared-memory extension: the inputs go in a POSIX shared-memory region registered
  // with the server (on this host); requests name the region instead of carrying the bytes.
  bool shared_memory = false;
  int64_t timeout_ms = 30000;  // connect, read and write timeouts of each request
};
std::unique_ptr<PerfTransport> make_http_transport(const HttpOptions& options);

}  // namespace kiln::serve::perf
