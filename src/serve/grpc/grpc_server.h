// The KServe v2 gRPC front end of `kiln serve` (inference.GRPCInferenceService over gRPC's
// synchronous server): translates the protocol's messages to and from the InferenceServer's structs
// and its Status to gRPC status codes. Models, validation and batching are the InferenceServer's.
#pragma once
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>

#include "serve/server.h"

namespace grpc {
class Server;
}

namespace kiln::serve {

struct GrpcOptions {
  // The largest message the server receives or sends. A bigger request is refused by gRPC itself
  // with RESOURCE_EXHAUSTED; a response that would be bigger fails the call the same way.
  size_t max_message_bytes = size_t{64} << 20;
  // The most threads gRPC may run handlers on (a ModelInfer holds one while its request is queued
  // and run); calls beyond it are answered RESOURCE_EXHAUSTED. 0: gRPC's default (grows with load).
  int threads = 0;
};

// The gRPC status code (grpc::StatusCode's value) a server Status maps to. kForbidden (load and
// unload outside explicit model control) is UNAVAILABLE, as Triton answers the same refusal.
int grpc_status_code(Status s);

class GrpcService;

class GrpcFrontEnd {
 public:
  // Listens on host:port (port 0: a free port, see port()). Throws kiln::Error kIo when the address
  // cannot be bound and kInvalidArgument for bad options.
  GrpcFrontEnd(InferenceServer& server, std::string host, int port, GrpcOptions options = {});
  ~GrpcFrontEnd();  // shutdown(now)
  GrpcFrontEnd(const GrpcFrontEnd&) = delete;
  GrpcFrontEnd& operator=(const GrpcFrontEnd&) = delete;

  // The port it listens on (the one the system chose when constructed with 0).
  int port() const { return port_; }
  // "host:port" as listened on.
  const std::string& address() const { return address_; }

  // Stops taking calls: ServerReady answers false and new ModelInfer calls are refused
  // (UNAVAILABLE); calls in progress may finish until `deadline`, after which they are cancelled.
  // Then the listener and every connection close (idle ones do not hold the shutdown up). Returns
  // when every handler has returned. Idempotent. Call it after InferenceServer::shutdown(drain), so
  // the drained requests' responses still reach their clients.
  void shutdown(std::chrono::system_clock::time_point deadline);
  void shutdown(std::chrono::milliseconds grace) { shutdown(std::chrono::system_clock::now() + grace); }

 private:
  std::unique_ptr<GrpcService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  int port_ = 0;
  std::mutex shutdown_mu_;
  bool stopped_ = false;
};

}  // namespace kiln::serve
