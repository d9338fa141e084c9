// The KServe v2 / Open Inference Protocol HTTP/REST front end of `kiln serve` (cpp-httplib):
// health, metadata, inference with JSON tensors and the binary tensor extension, Triton's
// repository, statistics and configuration extensions, and Prometheus metrics at /metrics.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "serve/server.h"
#include "serve/shared_memory.h"

namespace httplib {
class Server;
}

namespace kiln::serve {

struct Route {
  const char* method;
  const char* path;  // with {model} and {version} parameters
  const char* use;   // liveness, readiness, metadata, inference, ...
};
// Every HTTP route the front end serves (what `kiln serve --print-routes` lists).
const std::vector<Route>& http_routes();

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                         // 0: any free port (see HttpFrontEnd::port)
  size_t max_request_bytes = 64u << 20;    // larger bodies are answered 413
  int threads = 64;                        // connections served at once (each holds one while open)
  int read_timeout_s = 30;                 // a client that sends nothing this long is disconnected
  int max_json_depth = 64;                 // deeper JSON is refused (400)
};

// Parsed KServe v2 inference request body: the JSON header, and the binary tensors after it.
struct HttpInferRequest {
  InferenceRequest request;
  bool binary_output_default = false;          // parameters.binary_data_output
  std::vector<std::pair<std::string, bool>> outputs;  // requested outputs with binary_data
};
// Parses an infer body (`header_length`: Inference-Header-Content-Length, or nullopt when the body
// is all JSON). `body` stays referenced by the inputs through `owner`; an input in a system
// shared-memory region (parameters shared_memory_region/_byte_size/_offset) is resolved through
// `shm` (null: such an input is refused). Throws ServeError kBadRequest naming the problem.
HttpInferRequest parse_infer_request(std::shared_ptr<const std::string> body, std::optional<size_t> header_length,
                                     int max_json_depth = 64, const SharedMemoryRegistry* shm = nullptr);
// Encodes a result: JSON only, or JSON header + binary outputs. Returns the body and sets
// *header_length to the JSON header's size when any output is binary (else nullopt).
std::string encode_infer_response(const InferenceResult& result, const HttpInferRequest& request,
                                  std::optional<size_t>* header_length);

class HttpFrontEnd {
 public:
  // Binds (kiln::Error kIo naming host and port when it cannot) and starts serving on a thread.
  HttpFrontEnd(InferenceServer& server, HttpOptions options);
  ~HttpFrontEnd();  // stop()
  int port() const { return port_; }
  // Stops listening, lets requests being answered finish, and joins.
  void stop();

 private:
  void install_routes();
  InferenceServer& server_;
  HttpOptions options_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace kiln::serve
