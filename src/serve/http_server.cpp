// The KServe v2 HTTP/REST front end of `kiln serve` (see http_server.h).
#include "serve/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cmath>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "kiln/error.h"

namespace kiln::serve {
using nlohmann::json;

const std::vector<Route>& http_routes() {
  static const std::vector<Route> routes = {
      {"GET", "/v2", "server metadata"},
      {"GET", "/v2/health/live", "liveness"},
      {"GET", "/v2/health/ready", "readiness"},
      {"GET", "/v2/models/{model}", "model metadata"},
      {"GET", "/v2/models/{model}/versions/{version}", "model metadata"},
      {"GET", "/v2/models/{model}/ready", "model readiness"},
      {"GET", "/v2/models/{model}/versions/{version}/ready", "model readiness"},
      {"GET", "/v2/models/{model}/config", "model configuration"},
      {"GET", "/v2/models/{model}/versions/{version}/config", "model configuration"},
      {"GET", "/v2/models/stats", "statistics"},
      {"GET", "/v2/models/{model}/stats", "statistics"},
      {"GET", "/v2/models/{model}/versions/{version}/stats", "statistics"},
      {"POST", "/v2/models/{model}/infer", "inference"},
      {"POST", "/v2/models/{model}/versions/{version}/infer", "inference"},
      {"POST", "/v2/repository/index", "repository index"},
      {"POST", "/v2/repository/models/{model}/load", "repository load"},
      {"POST", "/v2/repository/models/{model}/unload", "repository unload"},
      {"GET", "/v2/systemsharedmemory/status", "shared-memory status"},
      {"GET", "/v2/systemsharedmemory/region/{region}/status", "shared-memory status"},
      {"POST", "/v2/systemsharedmemory/region/{region}/register", "shared-memory register"},
      {"POST", "/v2/systemsharedmemory/region/{region}/unregister", "shared-memory unregister"},
      {"POST", "/v2/systemsharedmemory/unregister", "shared-memory unregister"},
      {"GET", "/metrics", "metrics"},
  };
  return routes;
}

namespace {

std::string dq(const std::string& s) { return "\"" + s + "\""; }

[[noreturn]] void bad(const std::string& message) { throw ServeError(Status::kBadRequest, message); }

std::vector<int64_t> parse_shape(const json& j, const std::string& what) {
  if (!j.is_array()) bad(what + ": \"shape\" must be an array of non-negative integers");
  std::vector<int64_t> shape;
  for (const json& d : j) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      bad(what + ": \"shape\" must be an array of non-negative integers");
    shape.push_back(d.get<int64_t>());
  }
  if (shape.size() > 16) bad(what + ": shape has " + std::to_string(shape.size()) + " dims (at most 16)");
  return shape;
}

// The number of elements, refusing shapes whose product overflows or exceeds what any body could
// carry (so a hostile shape cannot make the server allocate).
int64_t checked_numel(const std::vector<int64_t>& shape, size_t limit, const std::string& what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d != 0 && n > static_cast<int64_t>(limit) / d) bad(what + ": shape is too large");
    n *= d;
  }
  return n;
}

// Appends JSON `data` (nested or flat, row major) as raw little-endian elements of `dt`.
void pack_json(const json& data, DataType dt, std::string& out, const std::string& what, int depth = 0) {
  if (depth > 32) bad(what + ": \"data\" is nested too deeply");
  if (data.is_array()) {
    for (const json& e : data) pack_json(e, dt, out, what, depth + 1);
    return;
  }
  auto put = [&](const auto& v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  auto integer = [&](int64_t lo, uint64_t hi) -> uint64_t {
    if (data.is_number_unsigned()) {
      if (data.get<uint64_t>() > hi) bad(what + ": value " + data.dump() + " is out of range for its datatype");
      return data.get<uint64_t>();
    }
    if (!data.is_number_integer())
      bad(what + ": " + std::string(v2_datatype_name(dt)) + " data must be integers, got " + data.dump());
    int64_t v = data.get<int64_t>();
    if (v < lo || (v > 0 && static_cast<uint64_t>(v) > hi))
      bad(what + ": value " + data.dump() + " is out of range for its datatype");
    return static_cast<uint64_t>(v);
  };
  auto number = [&]() -> double {
    if (!data.is_number()) bad(what + ": " + std::string(v2_datatype_name(dt)) + " data must be numbers, got " + data.dump());
    return data.get<double>();
  };
  switch (dt) {
    case DataType::kBool:
      if (!data.is_boolean()) bad(what + ": BOOL data must be true or false, got " + data.dump());
      put(static_cast<uint8_t>(data.get<bool>() ? 1 : 0));
      break;
    case DataType::kUInt8: put(static_cast<uint8_t>(integer(0, UINT8_MAX))); break;
    case DataType::kUInt16: put(static_cast<uint16_t>(integer(0, UINT16_MAX))); break;
    case DataType::kUInt32: put(static_cast<uint32_t>(integer(0, UINT32_MAX))); break;
    case DataType::kUInt64: put(static_cast<uint64_t>(integer(0, UINT64_MAX))); break;
    case DataType::kInt8: put(static_cast<int8_t>(integer(INT8_MIN, INT8_MAX))); break;
    case DataType::kInt16: put(static_cast<int16_t>(integer(INT16_MIN, INT16_MAX))); break;
    case DataType::kInt32: put(static_cast<int32_t>(integer(INT32_MIN, INT32_MAX))); break;
    case DataType::kInt64: put(static_cast<int64_t>(integer(INT64_MIN, INT64_MAX))); break;
    case DataType::kFP16: put(float_to_half(static_cast<float>(number()))); break;
    case DataType::kBF16: put(float_to_bf16(static_cast<float>(number()))); break;
    case DataType::kFP32: put(static_cast<float>(number())); break;
    case DataType::kFP64: put(number()); break;
    case DataType::kString: {
      if (!data.is_string()) bad(what + ": BYTES data must be strings, got " + data.dump());
      const std::string& s = data.get_ref<const std::string&>();
      put(static_cast<uint32_t>(s.size()));
      out += s;
      break;
    }
    default: bad(what + ": unsupported datatype");
  }
}

// Counts BYTES elements in a length-prefixed buffer (and checks it is well formed).
int64_t count_bytes_elements(const char* p, size_t n, const std::string& what) {
  int64_t count = 0;
  size_t off = 0;
  while (off < n) {
    if (n - off < 4) bad(what + ": BYTES data ends inside an element's length");
    uint32_t len = 0;
    std::memcpy(&len, p + off, 4);
    off += 4;
    if (len > n - off) bad(what + ": a BYTES element's length runs past the data");
    off += len;
    ++count;
  }
  return count;
}

json unpack_json(const OutputTensor& t) {
  json a = json::array();
  const int64_t n = t.tensor.numel();
  const char* p = static_cast<const char*>(t.tensor.raw());
  auto get = [&](auto sample, int64_t i) {
    decltype(sample) v;
    std::memcpy(&v, p + i * static_cast<int64_t>(sizeof(v)), sizeof(v));
    return v;
  };
  for (int64_t i = 0; i < n; ++i) {
    switch (t.datatype) {
      case DataType::kBool: a.push_back(get(uint8_t{}, i) != 0); break;
      case DataType::kUInt8: a.push_back(get(uint8_t{}, i)); break;
      case DataType::kUInt16: a.push_back(get(uint16_t{}, i)); break;
      case DataType::kUInt32: a.push_back(get(uint32_t{}, i)); break;
      case DataType::kUInt64: a.push_back(get(uint64_t{}, i)); break;
      case DataType::kInt8: a.push_back(get(int8_t{}, i)); break;
      case DataType::kInt16: a.push_back(get(int16_t{}, i)); break;
      case DataType::kInt32: a.push_back(get(int32_t{}, i)); break;
      case DataType::kInt64: a.push_back(get(int64_t{}, i)); break;
      case DataType::kFP16: a.push_back(half_to_float(get(uint16_t{}, i))); break;
      case DataType::kBF16: a.push_back(bf16_to_float(get(uint16_t{}, i))); break;
      case DataType::kFP32: {
        float v = get(float{}, i);
        // JSON has no NaN or infinity; null marks them (the binary extension carries them exactly).
        if (std::isfinite(v)) a.push_back(v); else a.push_back(nullptr);
        break;
      }
      case DataType::kFP64: {
        double v = get(double{}, i);
        if (std::isfinite(v)) a.push_back(v); else a.push_back(nullptr);
        break;
      }
      default: a.push_back(nullptr);
    }
  }
  return a;
}

void send_error(httplib::Response& res, Status status, const std::string& message) {
  res.status = http_status(status);
  res.set_content(json{{"error", message}}.dump(), "application/json");
}

void send_json(httplib::Response& res, const json& j) { res.set_content(j.dump(), "application/json"); }

// Runs a handler, turning ServeError and kiln::Error into {"error": ...} answers.
template <typename F>
httplib::Server::Handler guarded(F f) {
  return [f](const httplib::Request& req, httplib::Response& res) {
    try {
      f(req, res);
    } catch (const ServeError& e) {
      send_error(res, e.status(), e.what());
    } catch (const Error& e) {
      send_error(res, e.code() == ErrorCode::kInternal ? Status::kInternal : Status::kBadRequest, e.what());
    } catch (const std::exception& e) {
      send_error(res, Status::kInternal, e.what());
    }
  };
}

// A POST handler that receives the body itself (streamed by cpp-httplib's content reader), so the
// library never parses it as a form: an `application/x-www-form-urlencoded` body, which curl -d and
// urllib send by default, would otherwise be refused past 8 KiB. The size limit still applies (413).
template <typename F>
httplib::Server::HandlerWithContentReader with_body(F f) {
  return [f](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
    auto body = std::make_shared<std::string>();
    if (req.has_header("Content-Length")) {
      const std::string n = req.get_header_value("Content-Length");
      if (n.size() < 12 && n.find_first_not_of("0123456789") == std::string::npos && !n.empty())
        body->reserve(std::min<size_t>(std::stoull(n), size_t{1} << 30));
    }
    const bool ok = reader([&](const char* data, size_t n) {
      body->append(data, n);
      return true;
    });
    if (!ok) {
      if (res.status < 400) res.status = 400;  // the library set 413 for an oversized body
      return;
    }
    guarded([&f, &body](const httplib::Request& rq, httplib::Response& rs) { f(rq, rs, body); })(req, res);
  };
}

std::string version_of(const httplib::Request& req, size_t index) {
  return req.matches.size() > index ? std::string(req.matches[index]) : std::string();
}

json stats_json(const ModelVersionStats& s) {
  const StatsSnapshot& st = s.stats;
  auto dur = [](uint64_t count, uint64_t us) { return json{{"count", count}, {"ns", us * 1000}}; };
  json batch = json::array();
  for (const auto& [size, count] : st.batch_sizes)
    batch.push_back({{"batch_size", size}, {"compute_infer", {{"count", count}}}});
  return {{"name", s.name},
          {"version", s.version},
          {"last_inference", s.last_inference_ms},
          {"inference_count", st.inference_count},
          {"execution_count", st.execution_count},
          {"inference_stats",
           {{"success", dur(st.success, st.request_us)},
            {"fail", dur(st.failures(), 0)},
            {"queue", dur(st.success, st.queue_us)},
            {"compute_input", dur(st.success, st.compute_input_us)},
            {"compute_infer", dur(st.success, st.compute_infer_us)},
            {"compute_output", dur(st.success, st.compute_output_us)}}},
          {"batch_stats", batch}};
}

}  // namespace

HttpInferRequest parse_infer_request(std::shared_ptr<const std::string> body, std::optional<size_t> header_length,
                                     int max_json_depth, const SharedMemoryRegistry* shm) {
  const std::string& b = *body;
  const size_t json_size = header_length.value_or(b.size());
  if (json_size > b.size())
    bad("Inference-Header-Content-Length " + std::to_string(json_size) + " is past the end of the " +
        std::to_string(b.size()) + "-byte body");
  json j;
  try {
    j = json::parse(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(json_size),
                    [max_json_depth](int depth, json::parse_event_t, json&) {
                      if (depth > max_json_depth)
                        throw ServeError(Status::kBadRequest, "the request JSON nests deeper than " +
                                                                  std::to_string(max_json_depth) + " levels");
                      return true;
                    });
  } catch (const json::exception& e) {
    bad(std::string("malformed request JSON: ") + e.what());
  }
  if (!j.is_object()) bad("the request body must be a JSON object");
  HttpInferRequest out;
  InferenceRequest& r = out.request;
  if (j.contains("id")) {
    if (!j["id"].is_string()) bad("\"id\" must be a string");
    r.id = j["id"].get<std::string>();
  }
  if (j.contains("parameters")) {
    const json& p = j["parameters"];
    if (!p.is_object()) bad("\"parameters\" must be an object");
    if (p.contains("binary_data_output")) {
      if (!p["binary_data_output"].is_boolean()) bad("parameters.binary_data_output must be true or false");
      out.binary_output_default = p["binary_data_output"].get<bool>();
    }
    if (p.contains("priority")) {
      if (!p["priority"].is_number_unsigned() || p["priority"].get<uint64_t>() > 1000000)
        bad("parameters.priority must be a non-negative integer");
      r.priority = static_cast<int>(p["priority"].get<uint64_t>());
    }
    if (p.contains("timeout")) {
      if (!p["timeout"].is_number_unsigned()) bad("parameters.timeout must be a non-negative integer (microseconds)");
      r.timeout_us = p["timeout"].get<uint64_t>();
    }
  }
  if (!j.contains("inputs") || !j["inputs"].is_array() || j["inputs"].empty())
    bad("the request needs a non-empty \"inputs\" array");
  size_t offset = json_size;  // binary tensors follow the header in input order
  for (const json& in : j["inputs"]) {
    if (!in.is_object()) bad("each input must be an object");
    if (!in.contains("name") || !in["name"].is_string()) bad("an input has no \"name\"");
    InputTensor t;
    t.name = in["name"].get<std::string>();
    const std::string what = "input " + dq(t.name);
    if (!in.contains("datatype") || !in["datatype"].is_string()) bad(what + " has no \"datatype\"");
    t.datatype = parse_v2_datatype(in["datatype"].get<std::string>());
    if (t.datatype == DataType::kInvalid) bad(what + ": unknown datatype " + in["datatype"].dump());
    if (!in.contains("shape")) bad(what + " has no \"shape\"");
    t.shape = parse_shape(in["shape"], what);
    const size_t elem = v2_element_size(t.datatype);
    const int64_t n = checked_numel(t.shape, b.size() + (1u << 30), what);
    std::optional<uint64_t> binary_size;
    std::optional<std::string> region;
    uint64_t region_size = 0, region_offset = 0;
    if (in.contains("parameters")) {
      const json& p = in["parameters"];
      if (!p.is_object()) bad(what + ": \"parameters\" must be an object");
      if (p.contains("binary_data_size")) {
        if (!p["binary_data_size"].is_number_unsigned()) bad(what + ": binary_data_size must be a non-negative integer");
        binary_size = p["binary_data_size"].get<uint64_t>();
      }
      if (p.contains("shared_memory_region")) {
        if (!p["shared_memory_region"].is_string()) bad(what + ": shared_memory_region must be a string");
        region = p["shared_memory_region"].get<std::string>();
        if (!p.contains("shared_memory_byte_size") || !p["shared_memory_byte_size"].is_number_unsigned())
          bad(what + ": shared_memory_region needs a non-negative integer shared_memory_byte_size");
        region_size = p["shared_memory_byte_size"].get<uint64_t>();
        if (p.contains("shared_memory_offset")) {
          if (!p["shared_memory_offset"].is_number_unsigned())
            bad(what + ": shared_memory_offset must be a non-negative integer");
          region_offset = p["shared_memory_offset"].get<uint64_t>();
        }
      }
    }
    if (region) {
      if (in.contains("data") || binary_size) bad(what + " has shared_memory_region and also data or binary_data_size");
      if (!shm) bad(what + ": shared memory is not available here");
      SharedMemoryRegistry::View v = shm->view(*region, region_offset, region_size, what);
      t.data = v.data;
      t.byte_size = static_cast<size_t>(region_size);
      t.owner = std::move(v.owner);
      if (elem == 0 && t.datatype == DataType::kString &&
          count_bytes_elements(static_cast<const char*>(t.data), t.byte_size, what) != n)
        bad(what + ": the BYTES data does not hold " + std::to_string(n) + " elements");
    } else if (binary_size) {
      if (in.contains("data")) bad(what + " has both \"data\" and binary_data_size");
      if (!header_length) bad(what + " has binary_data_size but the request has no Inference-Header-Content-Length");
      if (*binary_size > b.size() - offset)
        bad(what + ": binary_data_size " + std::to_string(*binary_size) + " runs past the end of the body (" +
            std::to_string(b.size() - offset) + " bytes left)");
      t.data = b.data() + offset;
      t.byte_size = static_cast<size_t>(*binary_size);
      t.owner = body;
      offset += t.byte_size;
      if (elem == 0 && t.datatype == DataType::kString &&
          count_bytes_elements(static_cast<const char*>(t.data), t.byte_size, what) != n)
        bad(what + ": the BYTES data does not hold " + std::to_string(n) + " elements");
    } else {
      if (!in.contains("data")) bad(what + " has neither \"data\" nor binary_data_size");
      auto packed = std::make_shared<std::string>();
      // Each JSON element takes at least one byte of the body: reserve no more than the body can
      // hold, whatever the shape claims (a huge shape with a short "data" is refused below).
      if (elem) packed->reserve(std::min(static_cast<size_t>(n), b.size()) * elem);
      pack_json(in["data"], t.datatype, *packed, what);
      const int64_t got = elem ? static_cast<int64_t>(packed->size() / elem)
                               : count_bytes_elements(packed->data(), packed->size(), what);
      if (got != n)
        bad(what + ": \"data\" has " + std::to_string(got) + " elements; shape " + in["shape"].dump() + " needs " +
            std::to_string(n));
      t.data = packed->data();
      t.byte_size = packed->size();
      t.owner = packed;
    }
    r.inputs.push_back(std::move(t));
  }
  if (header_length && offset != b.size())
    bad("the body has " + std::to_string(b.size() - offset) + " bytes after the last binary input");
  if (j.contains("outputs")) {
    if (!j["outputs"].is_array()) bad("\"outputs\" must be an array");
    for (const json& o : j["outputs"]) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) bad("each output needs a \"name\"");
      bool binary = out.binary_output_default;
      if (o.contains("parameters")) {
        const json& p = o["parameters"];
        if (!p.is_object()) bad("output parameters must be an object");
        if (p.contains("binary_data")) {
          if (!p["binary_data"].is_boolean()) bad("output parameters.binary_data must be true or false");
          binary = p["binary_data"].get<bool>();
        }
        if (p.contains("shared_memory_region"))
          bad("output " + o["name"].dump() + ": outputs in shared memory are not supported; they come back in "
              "the response (binary_data for raw bytes)");
      }
      r.outputs.push_back(o["name"].get<std::string>());
      out.outputs.emplace_back(r.outputs.back(), binary);
    }
  }
  return out;
}

std::string encode_infer_response(const InferenceResult& result, const HttpInferRequest& request,
                                  std::optional<size_t>* header_length) {
  json j = {{"model_name", result.model_name}, {"model_version", result.model_version}};
  if (!result.id.empty()) j["id"] = result.id;
  json outs = json::array();
  std::vector<const OutputTensor*> binary;
  for (const OutputTensor& t : result.outputs) {
    bool is_binary = request.binary_output_default;
    for (const auto& [name, b] : request.outputs)
      if (name == t.name) is_binary = b;
    json o = {{"name", t.name}, {"datatype", std::string(v2_datatype_name(t.datatype))}, {"shape", t.shape}};
    if (is_binary) {
      o["parameters"] = {{"binary_data_size", t.tensor.nbytes()}};
      binary.push_back(&t);
    } else {
      o["data"] = unpack_json(t);
    }
    outs.push_back(std::move(o));
  }
  j["outputs"] = std::move(outs);
  std::string body = j.dump();
  if (binary.empty()) {
    *header_length = std::nullopt;
    return body;
  }
  *header_length = body.size();
  size_t total = body.size();
  for (const OutputTensor* t : binary) total += t->tensor.nbytes();
  body.reserve(total);
  for (const OutputTensor* t : binary) body.append(static_cast<const char*>(t->tensor.raw()), t->tensor.nbytes());
  return body;
}

HttpFrontEnd::HttpFrontEnd(InferenceServer& server, HttpOptions options)
    : server_(server), options_(std::move(options)), http_(std::make_unique<httplib::Server>()) {
  const int threads = std::max(2, options_.threads);
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http_->set_payload_max_length(options_.max_request_bytes);
  http_->set_read_timeout(options_.read_timeout_s, 0);
  http_->set_write_timeout(options_.read_timeout_s, 0);
  http_->set_keep_alive_max_count(100000);
  // Responses go out as header and body writes; without TCP_NODELAY, Nagle's algorithm holds the
  // second behind the client's delayed ACK (about 40 ms per request on Linux).
  http_->set_tcp_nodelay(true);
  // An idle keep-alive connection is closed after as long as a silent client is allowed mid-request.
  http_->set_keep_alive_timeout(options_.read_timeout_s);
  // SO_REUSEADDR only: cpp-httplib's default also sets SO_REUSEPORT, which would let a second server
  // bind the same port silently instead of failing.
  auto listen_socket = std::make_shared<int>(-1);
  http_->set_socket_options([listen_socket](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const void*>(&yes), sizeof(yes));
    *listen_socket = sock;  // the server socket (the only one this hook sees)
  });
  http_->set_error_handler([this](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413)
      send_error(res, Status::kPayloadTooLarge,
                 "the request body is larger than the server's limit of " + std::to_string(options_.max_request_bytes) +
                     " bytes (--max-request-bytes)");
    else if (res.status == 400)
      send_error(res, Status::kBadRequest,
                 "malformed or incomplete HTTP request (a request not received within " +
                     std::to_string(options_.read_timeout_s) + " s is cut off; --http-read-timeout)");
    else if (res.status == 404)
      send_error(res, Status::kNotFound, "no such route (see docs/serving.md#http-routes)");
    else
      res.set_content(json{{"error", "HTTP " + std::to_string(res.status)}}.dump(), "application/json");
  });
  install_routes();
  if (options_.port == 0) {
    port_ = http_->bind_to_any_port(options_.host);
  } else {
    port_ = http_->bind_to_port(options_.host, options_.port) ? options_.port : -1;
  }
  if (port_ <= 0)
    throw Error(ErrorCode::kIo, "cannot listen for HTTP on " + options_.host + ":" + std::to_string(options_.port) +
                                    " (in use, or not an address of this machine?)");
  // cpp-httplib 0.11 listens with a backlog of 5: a burst of new connections (a load generator
  // starting 128 clients) overflows it, and connections the kernel dropped from the accept queue
  // failed on the client. listen() again raises the backlog of the bound socket.
  if (*listen_socket >= 0) ::listen(*listen_socket, SOMAXCONN);
  thread_ = std::thread([this] { http_->listen_after_bind(); });
}

HttpFrontEnd::~HttpFrontEnd() { stop(); }

void HttpFrontEnd::stop() {
  if (!thread_.joinable()) return;
  http_->stop();
  thread_.join();
}

void HttpFrontEnd::install_routes() {
  httplib::Server& s = *http_;
  InferenceServer& srv = server_;
  const std::string model = R"(/v2/models/([A-Za-z0-9_.\-]+)(?:/versions/([0-9]+))?)";

  s.Get("/v2", guarded([&srv](const httplib::Request&, httplib::Response& res) {
    ServerMetadata m = srv.server_metadata();
    send_json(res, {{"name", m.name}, {"version", m.version}, {"extensions", m.extensions}});
  }));
  s.Get("/v2/health/live", [&srv](const httplib::Request&, httplib::Response& res) {
    res.status = srv.live() ? 200 : 503;
  });
  s.Get("/v2/health/ready", [&srv](const httplib::Request&, httplib::Response& res) {
    res.status = srv.ready() ? 200 : 503;
  });
  s.Get("/v2/models/stats", guarded([&srv](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const ModelVersionStats& st : srv.model_stats("", "")) list.push_back(stats_json(st));
    send_json(res, {{"model_stats", list}});
  }));
  s.Get(model + "/ready", [&srv](const httplib::Request& req, httplib::Response& res) {
    res.status = srv.model_ready(req.matches[1], version_of(req, 2)) ? 200 : 503;
  });
  s.Get(model + "/config", guarded([&srv](const httplib::Request& req, httplib::Response& res) {
    res.set_content(srv.model_config_json(req.matches[1], version_of(req, 2)), "application/json");
  }));
  s.Get(model + "/stats", guarded([&srv](const httplib::Request& req, httplib::Response& res) {
    json list = json::array();
    for (const ModelVersionStats& st : srv.model_stats(req.matches[1], version_of(req, 2)))
      list.push_back(stats_json(st));
    send_json(res, {{"model_stats", list}});
  }));
  s.Get(model, guarded([&srv](const httplib::Request& req, httplib::Response& res) {
    ModelMetadata m = srv.model_metadata(req.matches[1], version_of(req, 2));
    auto tensors = [](const std::vector<TensorMetadata>& list) {
      json a = json::array();
      for (const TensorMetadata& t : list) a.push_back({{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}});
      return a;
    };
    send_json(res, {{"name", m.name},
                    {"versions", m.versions},
                    {"platform", m.platform},
                    {"inputs", tensors(m.inputs)},
                    {"outputs", tensors(m.outputs)}});
  }));
  s.Post(model + "/infer", with_body([&srv, this](const httplib::Request& req, httplib::Response& res,
                                                  std::shared_ptr<std::string> body) {
    srv.require_model(req.matches[1], version_of(req, 2));  // an unknown model is 404 whatever the body
    std::optional<size_t> header_length;
    if (req.has_header("Inference-Header-Content-Length")) {
      const std::string v = req.get_header_value("Inference-Header-Content-Length");
      if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos)
        bad("Inference-Header-Content-Length must be a non-negative integer, got " + dq(v));
      header_length = static_cast<size_t>(std::stoull(v));
    }
    HttpInferRequest parsed = parse_infer_request(body, header_length, options_.max_json_depth, &srv.shared_memory());
    parsed.request.model = req.matches[1];
    parsed.request.version = version_of(req, 2);
    InferenceOutcome o = srv.infer_sync(std::move(parsed.request));
    if (o.status != Status::kOk) return send_error(res, o.status, o.error);
    std::optional<size_t> out_header;
    std::string out = encode_infer_response(o.result, parsed, &out_header);
    if (out_header) {
      res.set_header("Inference-Header-Content-Length", std::to_string(*out_header));
      res.set_content(std::move(out), "application/octet-stream");
    } else {
      res.set_content(std::move(out), "application/json");
    }
  }));
  auto authorize = [&srv](const httplib::Request& req) {
    if (!srv.management_needs_key()) return;
    const std::string auth = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    if (auth.rfind(prefix, 0) != 0 || !srv.check_api_key(std::string_view(auth).substr(prefix.size())))
      throw ServeError(Status::kUnauthorized, "this call needs the server's API key (header \"Authorization: Bearer KEY\")");
  };
  s.Post("/v2/repository/index", with_body([&srv](const httplib::Request&, httplib::Response& res,
                                                  std::shared_ptr<std::string> body) {
    bool ready_only = false;
    if (!body->empty()) {
      json j = json::parse(*body, nullptr, false);
      if (j.is_discarded() || !j.is_object()) bad("the index request body must be a JSON object");
      if (j.contains("ready")) {
        if (!j["ready"].is_boolean()) bad("\"ready\" must be true or false");
        ready_only = j["ready"].get<bool>();
      }
    }
    json list = json::array();
    for (const IndexEntry& e : srv.repository_index(ready_only)) {
      json row = {{"name", e.name}, {"state", e.state}, {"reason", e.state == "READY" ? "" : e.reason}};
      if (!e.version.empty()) row["version"] = e.version;
      list.push_back(row);
    }
    send_json(res, list);
  }));
  s.Post(R"(/v2/repository/models/([^/]+)/load)", with_body([&srv, authorize](const httplib::Request& req,
                                                                                httplib::Response& res,
                                                                                std::shared_ptr<std::string>) {
    authorize(req);
    srv.load_model(req.matches[1]);
    res.status = 200;
  }));
  s.Post(R"(/v2/repository/models/([^/]+)/unload)", with_body([&srv, authorize](const httplib::Request& req,
                                                                                  httplib::Response& res,
                                                                                  std::shared_ptr<std::string>) {
    authorize(req);
    srv.unload_model(req.matches[1]);
    res.status = 200;
  }));
  // System shared memory (Triton's extension). Registering needs the API key when there is one.
  auto shm_status = [&srv](const std::string& name, httplib::Response& res) {
    json list = json::array();
    for (const SharedMemoryStatus& r : srv.shared_memory().status(name)) {
      json e = {{"name", r.name}, {"key", r.key}, {"offset", r.offset}, {"byte_size", r.byte_size},
                {"kiln_gpu_pinned", r.pinned}};
      if (!r.pinned && !r.not_pinned.empty()) e["kiln_gpu_not_pinned"] = r.not_pinned;
      list.push_back(std::move(e));
    }
    send_json(res, list);
  };
  s.Get("/v2/systemsharedmemory/status", guarded([shm_status](const httplib::Request&, httplib::Response& res) {
    shm_status("", res);
  }));
  s.Get(R"(/v2/systemsharedmemory/region/([^/]+)/status)",
        guarded([shm_status](const httplib::Request& req, httplib::Response& res) { shm_status(req.matches[1], res); }));
  s.Post(R"(/v2/systemsharedmemory/region/([^/]+)/register)",
         with_body([&srv, authorize](const httplib::Request& req, httplib::Response& res,
                                     std::shared_ptr<std::string> body) {
           authorize(req);
           json j = json::parse(*body, nullptr, false);
           if (j.is_discarded() || !j.is_object()) bad("the register body must be a JSON object");
           if (!j.contains("key") || !j["key"].is_string()) bad("the register body needs a string \"key\"");
           if (!j.contains("byte_size") || !j["byte_size"].is_number_unsigned())
             bad("the register body needs a non-negative integer \"byte_size\"");
           uint64_t offset = 0;
           if (j.contains("offset")) {
             if (!j["offset"].is_number_unsigned()) bad("\"offset\" must be a non-negative integer");
             offset = j["offset"].get<uint64_t>();
           }
           srv.shared_memory().register_region(req.matches[1], j["key"].get<std::string>(), offset,
                                               j["byte_size"].get<uint64_t>());
           res.status = 200;
         }));
  s.Post(R"(/v2/systemsharedmemory/region/([^/]+)/unregister)",
         with_body([&srv, authorize](const httplib::Request& req, httplib::Response& res, std::shared_ptr<std::string>) {
           authorize(req);
           srv.shared_memory().unregister(req.matches[1]);
           res.status = 200;
         }));
  s.Post("/v2/systemsharedmemory/unregister",
         with_body([&srv, authorize](const httplib::Request& req, httplib::Response& res, std::shared_ptr<std::string>) {
           authorize(req);
           srv.shared_memory().unregister_all();
           res.status = 200;
         }));
  s.Get("/metrics", [&srv](const httplib::Request&, httplib::Response& res) {
    res.set_content(srv.metrics_text(), "text/plain; version=0.0.4");
  });
}

}  // namespace kiln::serve
