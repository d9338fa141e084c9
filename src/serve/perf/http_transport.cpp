// `kiln perf` over HTTP/REST (KServe v2 with Triton's binary tensor and statistics extensions):
// the request encoders, the response parsers and HttpTransport on a keep-alive cpp-httplib client.
#include <httplib.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "kiln/error.h"
#include "serve/perf/perf_inputs.h"
#include "serve/perf/perf_transport.h"

namespace kiln::serve::perf {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

Error bad(const std::string& message) { return Error(ErrorCode::kInvalidArgument, message); }

uint64_t ns_between(Clock::time_point a, Clock::time_point b) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count());
}

// A path segment: unreserved characters stay, everything else is percent-encoded.
std::string encode_segment(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

json input_header(const InputData& in) {
  return {{"name", in.name}, {"datatype", in.datatype}, {"shape", in.shape}};
}

template <typename T>
void append_values(const std::string& bytes, json& data) {
  const size_t n = bytes.size() / sizeof(T);
  for (size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, bytes.data() + i * sizeof(T), sizeof(T));
    data.push_back(v);
  }
}

uint64_t as_u64(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) return static_cast<uint64_t>(std::max<int64_t>(0, v.get<int64_t>()));
  if (v.is_number()) return static_cast<uint64_t>(std::max(0.0, v.get<double>()));
  if (v.is_string()) {  // protobuf JSON writes 64-bit integers as strings
    const std::string& text = v.get_ref<const std::string&>();
    char* end = nullptr;
    const unsigned long long x = std::strtoull(text.c_str(), &end, 10);
    return end && *end == '\0' && !text.empty() && text[0] != '-' ? x : 0;
  }
  return 0;
}

std::vector<int64_t> dims_of(const json& shape, const std::string& what) {
  if (!shape.is_array()) throw bad("model metadata: " + what + " has no \"shape\" array");
  std::vector<int64_t> dims;
  for (const auto& d : shape) {
    if (d.is_number_integer()) dims.push_back(d.get<int64_t>());
    else
      throw bad("model metadata: " + what + " has a dim that is not an integer: " + d.dump());
  }
  return dims;
}

std::vector<TensorSpec> tensors_of(const json& j, const char* key) {
  std::vector<TensorSpec> out;
  if (!j.contains(key)) return out;
  if (!j[key].is_array()) throw bad(std::string("model metadata: \"") + key + "\" is not an array");
  size_t i = 0;
  for (const auto& t : j[key]) {
    const std::string what = std::string(key) + "[" + std::to_string(i++) + "]";
    if (!t.is_object() || !t.contains("name") || !t["name"].is_string())
      throw bad("model metadata: " + what + " has no \"name\"");
    if (!t.contains("datatype") || !t["datatype"].is_string())
      throw bad("model metadata: " + what + " ('" + t["name"].get<std::string>() + "') has no \"datatype\"");
    out.push_back({t["name"].get<std::string>(), t["datatype"].get<std::string>(),
                   dims_of(t.contains("shape") ? t["shape"] : json(), what)});
  }
  return out;
}

}  // namespace

Endpoint parse_endpoint(const std::string& text, int default_port) {
  std::string s = text;
  for (const char* scheme : {"http://", "grpc://"})
    if (s.rfind(scheme, 0) == 0) s = s.substr(std::strlen(scheme));
  if (s.rfind("https://", 0) == 0) throw bad("-u " + text + ": https is not supported");
  while (!s.empty() && s.back() == '/') s.pop_back();
  Endpoint e;
  std::string port;
  if (!s.empty() && s[0] == '[') {  // [v6]:port
    const size_t close = s.find(']');
    if (close == std::string::npos) throw bad("-u " + text + ": missing ']' after an IPv6 address");
    e.host = s.substr(1, close - 1);
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') throw bad("-u " + text + ": expected ':PORT' after ']'");
      port = s.substr(close + 2);
    }
  } else {
    const size_t colon = s.rfind(':');
    e.host = colon == std::string::npos ? s : s.substr(0, colon);
    if (colon != std::string::npos) port = s.substr(colon + 1);
  }
  if (e.host.empty()) throw bad("-u " + text + ": expected HOST:PORT (for example localhost:8000)");
  if (e.host.find('/') != std::string::npos) throw bad("-u " + text + ": expected HOST:PORT, without a path");
  e.port = default_port;
  if (!port.empty()) {
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(port, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != port.size() || v < 1 || v > 65535) throw bad("-u " + text + ": port '" + port + "' is not in 1-65535");
    e.port = static_cast<int>(v);
  }
  return e;
}

HttpBody encode_binary_request(const Inputs& inputs) {
  json header;
  header["inputs"] = json::array();
  size_t total = 0;
  for (const auto& in : inputs) {
    json h = input_header(in);
    h["parameters"] = {{"binary_data_size", in.bytes.size()}};
    header["inputs"].push_back(h);
    total += in.bytes.size();
  }
  header["parameters"] = {{"binary_data_output", true}};
  HttpBody out;
  out.body = header.dump();
  out.json_length = out.body.size();
  out.body.reserve(out.json_length + total);
  for (const auto& in : inputs) out.body += in.bytes;
  out.content_type = "application/octet-stream";
  return out;
}

HttpBody encode_shared_memory_request(const Inputs& inputs, const std::string& region,
                                      const std::vector<uint64_t>& offsets) {
  json header;
  header["inputs"] = json::array();
  for (size_t i = 0; i < inputs.size(); ++i) {
    json h = input_header(inputs[i]);
    h["parameters"] = {{"shared_memory_region", region},
                       {"shared_memory_offset", offsets.at(i)},
                       {"shared_memory_byte_size", inputs[i].bytes.size()}};
    header["inputs"].push_back(h);
  }
  header["parameters"] = {{"binary_data_output", true}};
  HttpBody out;
  out.body = header.dump();
  out.content_type = "application/json";
  return out;
}

HttpBody encode_json_request(const Inputs& inputs) {
  json header;
  header["inputs"] = json::array();
  for (const auto& in : inputs) {
    json h = input_header(in);
    json data = json::array();
    const std::string& dt = in.datatype;
    if (dt == "BOOL") {
      for (char c : in.bytes) data.push_back(c != 0);
    } else if (dt == "UINT8") append_values<uint8_t>(in.bytes, data);
    else if (dt == "INT8") append_values<int8_t>(in.bytes, data);
    else if (dt == "UINT16") append_values<uint16_t>(in.bytes, data);
    else if (dt == "INT16") append_values<int16_t>(in.bytes, data);
    else if (dt == "UINT32") append_values<uint32_t>(in.bytes, data);
    else if (dt == "INT32") append_values<int32_t>(in.bytes, data);
    else if (dt == "UINT64") append_values<uint64_t>(in.bytes, data);
    else if (dt == "INT64") append_values<int64_t>(in.bytes, data);
    else if (dt == "FP32") append_values<float>(in.bytes, data);
    else if (dt == "FP64") append_values<double>(in.bytes, data);
    else
      throw bad("input '" + in.name + "' is " + dt +
                ", which JSON tensors cannot carry; send binary tensors (--binary, the default)");
    h["data"] = std::move(data);
    header["inputs"].push_back(h);
  }
  return {header.dump(), 0, "application/json"};
}

ModelInfo parse_model_metadata(const json& j) {
  if (!j.is_object()) throw bad("model metadata: expected a JSON object, got " + j.dump().substr(0, 200));
  ModelInfo m;
  if (j.contains("name") && j["name"].is_string()) m.name = j["name"].get<std::string>();
  if (j.contains("platform") && j["platform"].is_string()) m.platform = j["platform"].get<std::string>();
  if (j.contains("versions") && j["versions"].is_array())
    for (const auto& v : j["versions"]) m.versions.push_back(v.is_string() ? v.get<std::string>() : v.dump());
  if (!j.contains("inputs")) throw bad("model metadata: no \"inputs\"");
  m.inputs = tensors_of(j, "inputs");
  m.outputs = tensors_of(j, "outputs");
  return m;
}

int64_t parse_max_batch_size(const json& config) {
  if (!config.is_object()) return -1;
  // Triton answers {"max_batch_size": 8, ...}; some servers wrap the config in {"config": {...}}.
  const json& c = config.contains("config") && config["config"].is_object() ? config["config"] : config;
  for (const char* key : {"max_batch_size", "maxBatchSize"})
    if (c.contains(key)) return static_cast<int64_t>(as_u64(c[key]));
  // Protobuf JSON leaves a zero field out: a config without it does not batch.
  return c.contains("name") || c.contains("input") ? 0 : -1;
}

ServerCounters parse_model_stats(const json& j, const std::string& model, const std::string& version) {
  if (!j.is_object() || !j.contains("model_stats") || !j["model_stats"].is_array())
    throw bad("model statistics: no \"model_stats\" array");
  ServerCounters total;
  for (const auto& s : j["model_stats"]) {
    if (!s.is_object()) continue;
    if (s.contains("name") && s["name"].is_string() && s["name"].get<std::string>() != model) continue;
    if (!version.empty() && s.contains("version") && s["version"].is_string() &&
        s["version"].get<std::string>() != version)
      continue;
    if (!s.contains("inference_stats") || !s["inference_stats"].is_object()) continue;
    const json& st = s["inference_stats"];
    auto get = [&](const char* key, uint64_t& count, uint64_t& ns) {
      if (!st.contains(key) || !st[key].is_object()) return;
      if (st[key].contains("count")) count += as_u64(st[key]["count"]);
      if (st[key].contains("ns")) ns += as_u64(st[key]["ns"]);
    };
    get("success", total.success_count, total.success_ns);
    get("queue", total.queue_count, total.queue_ns);
    get("compute_input", total.compute_input_count, total.compute_input_ns);
    get("compute_infer", total.compute_infer_count, total.compute_infer_ns);
    get("compute_output", total.compute_output_count, total.compute_output_ns);
  }
  return total;
}

std::string error_text(const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_string())
    return j["error"].get<std::string>();
  std::string s = body.substr(0, 300);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s.empty() ? "(empty body)" : s;
}

namespace {

// --shared-memory system: every prepared request's inputs in one POSIX shared-memory object, 64-byte
// aligned, registered with the server as one region; unregistered and unlinked when the last
// transport is done with it.
class SharedInputs {
 public:
  SharedInputs(const HttpOptions& options, const std::vector<Inputs>& data) : options_(options) {
    static int counter = 0;
    name_ = "kiln_perf_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
    key_ = "/" + name_;
    size_t size = 0;
    for (const auto& inputs : data) {
      offsets_.emplace_back();
      for (const auto& in : inputs) {
        offsets_.back().push_back(size);
        size += (in.bytes.size() + 63) / 64 * 64;
      }
    }
    size = std::max<size_t>(size, 64);
    const int fd = shm_open(key_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) throw Error(ErrorCode::kIo, "cannot create shared memory " + key_ + ": " + std::strerror(errno));
    created_ = true;
    void* p = ftruncate(fd, static_cast<off_t>(size)) == 0
                  ? mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                  : MAP_FAILED;
    const int e = errno;
    close(fd);
    if (p == MAP_FAILED) {
      shm_unlink(key_.c_str());
      throw Error(ErrorCode::kIo, "cannot size or map shared memory " + key_ + ": " + std::strerror(e));
    }
    for (size_t r = 0; r < data.size(); ++r)
      for (size_t i = 0; i < data[r].size(); ++i)
        std::memcpy(static_cast<char*>(p) + offsets_[r][i], data[r][i].bytes.data(), data[r][i].bytes.size());
    munmap(p, size);
    httplib::Client c(options_.endpoint.host, options_.endpoint.port);
    const json body = {{"key", key_}, {"offset", 0}, {"byte_size", size}};
    auto res = c.Post("/v2/systemsharedmemory/region/" + name_ + "/register", body.dump(), "application/json");
    if (!res || res->status != 200) {
      shm_unlink(key_.c_str());
      throw Error(ErrorCode::kInvalidArgument,
                  "the server did not register shared memory " + key_ + ": " +
                      (res ? error_text(res->body) + " (HTTP " + std::to_string(res->status) + ")"
                           : httplib::to_string(res.error())) +
                      "; --shared-memory system needs the server on this host");
    }
  }
  ~SharedInputs() {
    httplib::Client c(options_.endpoint.host, options_.endpoint.port);
    c.Post("/v2/systemsharedmemory/region/" + name_ + "/unregister", "", "application/json");
    if (created_) shm_unlink(key_.c_str());
  }
  const std::string& region() const { return name_; }
  const std::vector<uint64_t>& offsets(size_t request) const { return offsets_[request]; }

 private:
  HttpOptions options_;
  std::string name_, key_;
  bool created_ = false;
  std::vector<std::vector<uint64_t>> offsets_;
};

class HttpTransport final : public PerfTransport {
 public:
  HttpTransport(HttpOptions options, std::shared_ptr<const std::vector<HttpBody>> bodies,
                std::shared_ptr<const SharedInputs> shared = nullptr)
      : options_(std::move(options)), bodies_(std::move(bodies)), shared_(std::move(shared)) {
    client_ = std::make_unique<httplib::Client>(options_.endpoint.host, options_.endpoint.port);
    client_->set_keep_alive(true);
    // Without it, Nagle's algorithm holds the body back until the headers are acknowledged (40 ms
    // with delayed ACKs): the latency measured would be TCP's, not the server's.
    client_->set_tcp_nodelay(true);
    const time_t sec = static_cast<time_t>(options_.timeout_ms / 1000);
    const time_t usec = static_cast<time_t>((options_.timeout_ms % 1000) * 1000);
    client_->set_connection_timeout(sec, usec);
    client_->set_read_timeout(sec, usec);
    client_->set_write_timeout(sec, usec);
    prefix_ = "/v2/models/" + encode_segment(options_.model);
    if (!options_.version.empty()) prefix_ += "/versions/" + encode_segment(options_.version);
  }

  std::string url() const override {
    const std::string& h = options_.endpoint.host;
    return "http://" + (h.find(':') != std::string::npos ? "[" + h + "]" : h) + ":" +
           std::to_string(options_.endpoint.port);
  }

  ModelInfo metadata() override {
    const std::string what = "model '" + options_.model + "'" +
                             (options_.version.empty() ? "" : " version '" + options_.version + "'");
    auto res = client_->Get(prefix_);
    if (!res)
      throw Error(ErrorCode::kIo, "cannot reach the server at " + url() + " (GET " + prefix_ + ": " +
                                      httplib::to_string(res.error()) +
                                      "); is it running, and are -u and -i right?");
    if (res->status != 200)
      throw bad("the server at " + url() + " refused " + what + ": " + error_text(res->body) + " (HTTP " +
                std::to_string(res->status) + " from GET " + prefix_ + ")");
    json j = json::parse(res->body, nullptr, false);
    if (j.is_discarded()) throw bad("the server at " + url() + " sent metadata that is not JSON (GET " + prefix_ + ")");
    ModelInfo m = parse_model_metadata(j);
    if (m.name.empty()) m.name = options_.model;
    auto cfg = client_->Get(prefix_ + "/config");
    if (cfg && cfg->status == 200) {
      json c = json::parse(cfg->body, nullptr, false);
      if (!c.is_discarded()) m.max_batch_size = parse_max_batch_size(c);
    }
    return m;
  }

  std::optional<ServerCounters> server_stats() override {
    auto res = client_->Get(prefix_ + "/stats");
    if (!res || res->status != 200) return std::nullopt;
    json j = json::parse(res->body, nullptr, false);
    if (j.is_discarded()) return std::nullopt;
    try {
      return parse_model_stats(j, options_.model, options_.version);
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }

  void prepare(const std::vector<Inputs>& data) override {
    auto bodies = std::make_shared<std::vector<HttpBody>>();
    if (options_.shared_memory) shared_ = std::make_shared<const SharedInputs>(options_, data);
    for (size_t i = 0; i < data.size(); ++i)
      bodies->push_back(shared_          ? encode_shared_memory_request(data[i], shared_->region(), shared_->offsets(i))
                        : options_.binary ? encode_binary_request(data[i])
                                          : encode_json_request(data[i]));
    bodies_ = std::move(bodies);
  }

  InferResult infer(size_t index) override {
    InferResult r;
    if (!bodies_ || bodies_->empty()) throw Error(ErrorCode::kInternal, "HttpTransport::infer before prepare");
    const HttpBody& b = (*bodies_)[index % bodies_->size()];
    httplib::Headers headers;
    if (b.json_length) headers.emplace("Inference-Header-Content-Length", std::to_string(b.json_length));
    const auto t0 = Clock::now();
    Clock::time_point sent = t0;
    auto provider = [&b, &sent](size_t offset, size_t length, httplib::DataSink& sink) {
      if (!sink.write(b.body.data() + offset, length)) return false;
      sent = Clock::now();
      return true;
    };
    auto res = client_->Post(prefix_ + "/infer", headers, b.body.size(), provider, b.content_type);
    const auto t1 = Clock::now();
    r.send_ns = ns_between(t0, sent);
    if (!res) {
      const httplib::Error e = res.error();
      const bool timed_out = e == httplib::Error::ConnectionTimeout ||
                             ((e == httplib::Error::Read || e == httplib::Error::Write) &&
                              ns_between(t0, t1) >= static_cast<uint64_t>(options_.timeout_ms) * 900000ull);
      r.error_kind = timed_out ? "timeout" : e == httplib::Error::Connection ? "connection"
                                        : e == httplib::Error::Read        ? "read"
                                        : e == httplib::Error::Write       ? "write"
                                                                           : "transport";
      r.error_message = timed_out ? "no answer within " + std::to_string(options_.timeout_ms) + " ms"
                                  : httplib::to_string(e) + " error talking to " + url();
      return r;
    }
    if (res->status != 200) {
      r.error_kind = "http_" + std::to_string(res->status);
      r.error_message = error_text(res->body);
      return r;
    }
    // Only the JSON part is decoded (binary outputs follow it untouched): enough to know the
    // server answered with outputs.
    size_t json_length = res->body.size();
    if (res->has_header("Inference-Header-Content-Length")) {
      const std::string value = res->get_header_value("Inference-Header-Content-Length");
      char* end = nullptr;
      const unsigned long long n = std::strtoull(value.c_str(), &end, 10);
      if (end && *end == '\0' && !value.empty()) json_length = std::min<size_t>(json_length, n);
    }
    const auto json_end = res->body.begin() + static_cast<std::ptrdiff_t>(json_length);
    json j = json::parse(res->body.begin(), json_end, nullptr, false);
    r.recv_ns = ns_between(t1, Clock::now());
    if (j.is_discarded() || !j.is_object() || !j.contains("outputs") || !j["outputs"].is_array()) {
      r.error_kind = "bad_response";
      r.error_message =
          "HTTP 200 without an \"outputs\" array: " + res->body.substr(0, std::min<size_t>(json_length, 200));
      return r;
    }
    r.ok = true;
    return r;
  }

  std::unique_ptr<PerfTransport> connect_another() const override {
    return std::make_unique<HttpTransport>(options_, bodies_, shared_);
  }

 private:
  HttpOptions options_;
  std::shared_ptr<const std::vector<HttpBody>> bodies_;
  std::shared_ptr<const SharedInputs> shared_;
  std::unique_ptr<httplib::Client> client_;
  std::string prefix_;
};

}  // namespace

std::unique_ptr<PerfTransport> make_http_transport(const HttpOptions& options) {
  if (options.timeout_ms <= 0) throw bad("the request timeout must be positive");
  return std::make_unique<HttpTransport>(options, nullptr);
}

}  // namespace kiln::serve::perf
