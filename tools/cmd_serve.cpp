// `kiln serve`: serves a model repository over the KServe v2 / Open Inference Protocol (HTTP/REST
// and gRPC) with dynamic batching, Prometheus metrics and graceful shutdown on SIGTERM.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kiln/error.h"
#include "serve/http_server.h"
#include "serve/server.h"
#ifdef KILN_HAVE_GRPC
#include "serve/grpc/grpc_server.h"
#endif

namespace kiln::cli {
namespace {

struct ServeArgs {
  std::string model_repository;
  std::string host = "127.0.0.1";
  int http_port = 8000;
  int grpc_port = 8001;
  bool no_http = false;
  bool no_grpc = false;
  std::string port_file;
  std::string model_control = "none";
  std::vector<std::string> load_models;
  std::string api_key;
  size_t max_request_bytes = 64u << 20;
  int http_threads = 64;
  int http_read_timeout = 30;
  int threads = 0;
  std::string cache_dir;
  bool exit_on_error = true;
  bool fast_load = false;
  bool print_routes = false;
};

constexpr int kDefaultHttpPort = 8000;
constexpr int kDefaultGrpcPort = 8001;

std::vector<std::string> grpc_methods() {
  return {"ServerLive",     "ServerReady",     "ModelReady",          "ServerMetadata",       "ModelMetadata",
          "ModelInfer",     "ModelStatistics", "RepositoryIndex",     "RepositoryModelLoad", "RepositoryModelUnload"};
}

int print_routes() {
  nlohmann::json http = nlohmann::json::array();
  for (const serve::Route& r : serve::http_routes()) http.push_back({{"method", r.method}, {"path", r.path}, {"use", r.use}});
  nlohmann::json j = {
      {"defaults", {{"host", "127.0.0.1"}, {"http_port", kDefaultHttpPort}, {"grpc_port", kDefaultGrpcPort}}},
      {"http", http},
      {"grpc", {{"service", "inference.GRPCInferenceService"}, {"methods", grpc_methods()}}}};
  std::cout << j.dump(2) << "\n";
  return 0;
}

int cmd_serve(const ServeArgs& a) {
  if (a.print_routes) return print_routes();
  if (a.model_repository.empty())
    throw Error(ErrorCode::kInvalidArgument, "--model-repository is required (see docs/serving.md)");
  if (a.no_http && a.no_grpc) throw Error(ErrorCode::kInvalidArgument, "--no-http and --no-grpc leave nothing to serve");
#ifndef KILN_HAVE_GRPC
  if (!a.no_grpc && a.grpc_port != kDefaultGrpcPort)
    throw Error(ErrorCode::kUnsupported, "this kiln was built without gRPC; serve HTTP only (--no-grpc)");
#endif

  // SIGTERM and SIGINT are taken by a thread of ours (sigwait), never by a handler inside a library
  // call: blocked here, before any other thread exists, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A client closing its socket mid-response must not kill the server.
  signal(SIGPIPE, SIG_IGN);

  serve::ServerOptions o;
  o.model_repository = a.model_repository;
  o.repository.cache_dir = a.cache_dir;
  o.repository.threads = a.threads;
  o.repository.time_tactics = !a.fast_load;
  o.model_control = a.model_control == "explicit" ? serve::ModelControl::kExplicit : serve::ModelControl::kNone;
  o.load_models = a.load_models;
  if (!a.load_models.empty() && o.model_control != serve::ModelControl::kExplicit)
    throw Error(ErrorCode::kInvalidArgument, "--load-model needs --model-control explicit (in mode none every model loads)");
  o.api_key = a.api_key;
  if (o.api_key.empty())
    if (const char* k = std::getenv("KILN_API_KEY")) o.api_key = k;
  o.exit_on_error = a.exit_on_error;

  serve::InferenceServer server(o);
  // Listen first (health answers "not ready" while models load), then load.
  std::unique_ptr<serve::HttpFrontEnd> http;
  if (!a.no_http) {
    serve::HttpOptions h;
    h.host = a.host;
    h.port = a.http_port;
    h.max_request_bytes = a.max_request_bytes;
    h.threads = a.http_threads;
    h.read_timeout_s = a.http_read_timeout;
    http = std::make_unique<serve::HttpFrontEnd>(server, h);
  }
#ifdef KILN_HAVE_GRPC
  std::unique_ptr<serve::GrpcFrontEnd> grpc;
  if (!a.no_grpc) {
    serve::GrpcOptions g;
    g.max_message_bytes = a.max_request_bytes;
    grpc = std::make_unique<serve::GrpcFrontEnd>(server, a.host, a.grpc_port, g);
  }
  const int grpc_port = grpc ? grpc->port() : -1;
#else
  const int grpc_port = -1;
#endif
  nlohmann::json ports = nlohmann::json::object();
  if (http) {
    ports["http"] = http->port();
    std::cerr << "kiln serve: HTTP on " << a.host << ":" << http->port() << "\n";
  }
  if (grpc_port > 0) {
    ports["grpc"] = grpc_port;
    std::cerr << "kiln serve: gRPC on " << a.host << ":" << grpc_port << "\n";
  }
  if (!a.port_file.empty()) {
    std::ofstream f(a.port_file);
    f << ports.dump() << "\n";
    if (!f) throw Error(ErrorCode::kIo, "cannot write --port-file " + a.port_file);
  }

  // The signal thread starts before loading, so SIGTERM during a long load still shuts down.
  std::atomic<bool> stop{false};
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    stop = true;
    std::cerr << "kiln serve: " << (sig == SIGTERM ? "SIGTERM" : "SIGINT")
              << ": no new requests; draining the ones accepted\n";
    server.shutdown(true);
  });
  int rc = 0;
  try {
    server.start();
    std::cerr << "kiln serve: ready, " << server.repository_index(true).size() << " model version(s) loaded\n";
  } catch (const std::exception& e) {
    std::cerr << "kiln: error (" << error_code_name(ErrorCode::kInvalidArgument) << "): failed to load the models: "
              << e.what() << "\n";
    rc = 1;
    pthread_kill(waiter.native_handle(), SIGTERM);
  }
  waiter.join();
  // The batchers are drained: answers to everything accepted are written; then the listeners close.
#ifdef KILN_HAVE_GRPC
  if (grpc) grpc->shutdown(std::chrono::milliseconds(5000));
#endif
  if (http) http->stop();
  if (rc == 0) std::cerr << "kiln serve: stopped\n";
  return rc;
}

}  // namespace

CLI::App* add_serve_command(CLI::App& app, std::function<int()>* run) {
  auto a = std::make_shared<ServeArgs>();
  auto* sub = app.add_subcommand("serve", "Serve a model repository over KServe v2 (HTTP and gRPC) with dynamic batching");
  sub->add_option("--model-repository", a->model_repository,
                  "Repository folder in Triton's layout: <model>/config.pbtxt + <version>/model.onnx|model.kiln");
  sub->add_option("--host", a->host, "Address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)");
  sub->add_option("--http-port", a->http_port, "HTTP port (default 8000; 0: any free port)")->check(CLI::Range(0, 65535));
  sub->add_option("--grpc-port", a->grpc_port, "gRPC port (default 8001; 0: any free port)")->check(CLI::Range(0, 65535));
  sub->add_flag("--no-http", a->no_http, "Do not serve HTTP");
  sub->add_flag("--no-grpc", a->no_grpc, "Do not serve gRPC");
  sub->add_option("--port-file", a->port_file, "Write the ports listened on as JSON {\"http\": N, \"grpc\": N}");
  sub->add_option("--model-control", a->model_control,
                  "none (default: load every model at start; load/unload refused) or explicit")
      ->check(CLI::IsMember({"none", "explicit"}));
  sub->add_option("--load-model", a->load_models, "With --model-control explicit: a model to load at start (repeatable; * for all)");
  sub->add_option("--api-key", a->api_key, "Key that repository load/unload calls must send (Authorization: Bearer KEY); "
                                           "default: $KILN_API_KEY");
  sub->add_option("--max-request-bytes", a->max_request_bytes, "Largest request body (default 64 MiB); larger is 413")
      ->check(CLI::Range(size_t{1024}, size_t{1} << 34));
  sub->add_option("--http-threads", a->http_threads, "HTTP connections served at once (default 64)")->check(CLI::Range(2, 4096));
  sub->add_option("--http-read-timeout", a->http_read_timeout,
                  "Seconds a client may stay silent mid-request before it is disconnected (default 30)")
      ->check(CLI::Range(1, 3600));
  sub->add_option("--threads", a->threads, "Threads per model instance when its config sets none (default: automatic)")
      ->check(CLI::Range(0, 1024));
  sub->add_option("--cache-dir", a->cache_dir, "Folder for the timing caches of models built at load");
  sub->add_flag("!--no-exit-on-error", a->exit_on_error,
                "Keep serving when a model fails to load (it is UNAVAILABLE and the server not ready)");
  sub->add_flag("--fast-load", a->fast_load, "Build ONNX models without timing tactics (quicker start, slower engines)");
  sub->add_flag("--print-routes", a->print_routes, "Print the HTTP routes and gRPC methods as JSON and exit");
  sub->footer("Readiness (/v2/health/ready) is 200 once every model is loaded and warmed up. SIGTERM: readiness\n"
              "goes 503, new requests get 503, accepted ones finish, exit 0. See docs/serving.md.");
  *run = [a] { return cmd_serve(*a); };
  return sub;
}

}  // namespace kiln::cli
