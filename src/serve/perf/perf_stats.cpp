// `kiln perf` statistics and report writers (see perf_stats.h).
#include "serve/perf/perf_stats.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

namespace kiln::serve::perf {

using json = nlohmann::json;

uint64_t percentile(const std::vector<uint64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  // Nearest rank: ceil(p/100 * n), 1-based; the small epsilon keeps 95% of 20 at rank 19 despite
  // the binary fraction 0.95.
  const double n = static_cast<double>(sorted.size());
  double rank = std::ceil(p / 100.0 * n - 1e-9);
  rank = std::clamp(rank, 1.0, n);
  return sorted[static_cast<size_t>(rank) - 1];
}

namespace {
uint64_t sub(uint64_t b, uint64_t a) { return b >= a ? b - a : 0; }
uint64_t avg_us(uint64_t ns, uint64_t count) { return count ? ns / count / 1000 : 0; }
}  // namespace

ServerCounters operator-(const ServerCounters& b, const ServerCounters& a) {
  ServerCounters d;
  d.success_count = sub(b.success_count, a.success_count);
  d.success_ns = sub(b.success_ns, a.success_ns);
  d.queue_count = sub(b.queue_count, a.queue_count);
  d.queue_ns = sub(b.queue_ns, a.queue_ns);
  d.compute_input_count = sub(b.compute_input_count, a.compute_input_count);
  d.compute_input_ns = sub(b.compute_input_ns, a.compute_input_ns);
  d.compute_infer_count = sub(b.compute_infer_count, a.compute_infer_count);
  d.compute_infer_ns = sub(b.compute_infer_ns, a.compute_infer_ns);
  d.compute_output_count = sub(b.compute_output_count, a.compute_output_count);
  d.compute_output_ns = sub(b.compute_output_ns, a.compute_output_ns);
  return d;
}

ServerCounters operator+(const ServerCounters& a, const ServerCounters& b) {
  ServerCounters s;
  s.success_count = a.success_count + b.success_count;
  s.success_ns = a.success_ns + b.success_ns;
  s.queue_count = a.queue_count + b.queue_count;
  s.queue_ns = a.queue_ns + b.queue_ns;
  s.compute_input_count = a.compute_input_count + b.compute_input_count;
  s.compute_input_ns = a.compute_input_ns + b.compute_input_ns;
  s.compute_infer_count = a.compute_infer_count + b.compute_infer_count;
  s.compute_infer_ns = a.compute_infer_ns + b.compute_infer_ns;
  s.compute_output_count = a.compute_output_count + b.compute_output_count;
  s.compute_output_ns = a.compute_output_ns + b.compute_output_ns;
  return s;
}

uint64_t Measurement::failed() const {
  uint64_t n = 0;
  for (const auto& [kind, count] : errors) n += count;
  return n;
}

void Measurement::finish() { std::sort(latencies_ns.begin(), latencies_ns.end()); }

Measurement merge(const std::vector<Measurement>& windows) {
  Measurement m;
  bool all_server = !windows.empty();
  ServerCounters server;
  for (const auto& w : windows) {
    m.duration_s += w.duration_s;
    m.success += w.success;
    m.delayed += w.delayed;
    for (const auto& [kind, count] : w.errors) m.errors[kind] += count;
    for (const auto& [kind, text] : w.error_examples) m.error_examples.emplace(kind, text);
    m.latencies_ns.insert(m.latencies_ns.end(), w.latencies_ns.begin(), w.latencies_ns.end());
    m.send_ns_total += w.send_ns_total;
    m.recv_ns_total += w.recv_ns_total;
    if (w.server) server = server + *w.server;
    else all_server = false;
  }
  if (all_server) m.server = server;
  m.finish();
  return m;
}

namespace {
uint64_t average_latency_ns(const Measurement& m) {
  if (m.latencies_ns.empty()) return 0;
  long double sum = 0;
  for (uint64_t v : m.latencies_ns) sum += static_cast<long double>(v);
  return static_cast<uint64_t>(sum / static_cast<long double>(m.latencies_ns.size()));
}
}  // namespace

uint64_t stabilizing_latency_us(const Measurement& m, int pct) {
  return (pct <= 0 ? average_latency_ns(m) : percentile(m.latencies_ns, pct)) / 1000;
}

double throughput(const Measurement& m, int64_t batch) {
  return m.duration_s > 0 ? static_cast<double>(m.success) * static_cast<double>(batch) / m.duration_s : 0.0;
}

bool is_stable(const std::vector<WindowFigures>& windows, double percentage) {
  if (windows.size() < 3) return false;
  auto within = [&](double a, double b, double c) {
    const double mean = (a + b + c) / 3.0;
    if (mean == 0) return a == 0 && b == 0 && c == 0;
    const double tolerance = mean * percentage / 100.0;
    return std::fabs(a - mean) <= tolerance && std::fabs(b - mean) <= tolerance && std::fabs(c - mean) <= tolerance;
  };
  const size_t n = windows.size();
  const auto &x = windows[n - 3], &y = windows[n - 2], &z = windows[n - 1];
  return within(x.throughput, y.throughput, z.throughput) && within(x.latency_us, y.latency_us, z.latency_us);
}

LevelResult summarize(const Measurement& m, bool request_rate_mode, double level, int64_t batch, int pct) {
  LevelResult r;
  r.request_rate_mode = request_rate_mode;
  r.level = level;
  r.duration_s = m.duration_s;
  r.throughput = throughput(m, batch);
  r.success = m.success;
  r.failed = m.failed();
  r.delayed = m.delayed;
  r.errors = m.errors;
  r.error_examples = m.error_examples;
  r.p50_us = percentile(m.latencies_ns, 50) / 1000;
  r.p90_us = percentile(m.latencies_ns, 90) / 1000;
  r.p95_us = percentile(m.latencies_ns, 95) / 1000;
  r.p99_us = percentile(m.latencies_ns, 99) / 1000;
  r.avg_us = average_latency_ns(m) / 1000;
  if (pct > 0 && pct != 50 && pct != 90 && pct != 95 && pct != 99) {
    r.extra_percentile = pct;
    r.extra_percentile_us = percentile(m.latencies_ns, pct) / 1000;
  }
  r.stabilizing_latency_us = stabilizing_latency_us(m, pct);
  r.client_send_us = avg_us(m.send_ns_total, m.success);
  r.client_recv_us = avg_us(m.recv_ns_total, m.success);
  if (m.server) {
    const ServerCounters& s = *m.server;
    r.has_server = true;
    r.server_success = s.success_count;
    r.server_request_us = avg_us(s.success_ns, s.success_count);
    r.queue_us = avg_us(s.queue_ns, s.queue_count);
    r.compute_input_us = avg_us(s.compute_input_ns, s.compute_input_count);
    r.compute_infer_us = avg_us(s.compute_infer_ns, s.compute_infer_count);
    r.compute_output_us = avg_us(s.compute_output_ns, s.compute_output_count);
    // What the client waited for beyond its own send and receive work, less what the server
    // accounts for: the network and the server's protocol handling.
    const uint64_t overhead = r.client_send_us + r.client_recv_us;
    const uint64_t wait = r.avg_us > overhead ? r.avg_us - overhead : 0;
    const uint64_t accounted = r.queue_us + r.compute_input_us + r.compute_infer_us + r.compute_output_us;
    r.network_us = wait > accounted ? wait - accounted : 0;
  }
  return r;
}

std::string level_text(double level) {
  std::ostringstream os;
  os << level;  // 6 significant digits: 4, 12.5, 0.25
  return os.str();
}

namespace {
std::string fixed1(double v) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(1) << v;
  return os.str();
}
}  // namespace

std::string csv_report(const std::vector<LevelResult>& levels, bool request_rate_mode) {
  const int extra = levels.empty() ? 0 : levels.front().extra_percentile;
  std::ostringstream os;
  os << (request_rate_mode ? "Request Rate" : "Concurrency")
     << ",Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
        "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency";
  if (extra) os << ",p" << extra << " latency";
  os << ",Avg latency,Failed\n";
  std::vector<const LevelResult*> rows;
  for (const auto& r : levels) rows.push_back(&r);
  std::stable_sort(rows.begin(), rows.end(),
                   [](const LevelResult* a, const LevelResult* b) { return a->throughput < b->throughput; });
  for (const LevelResult* r : rows) {
    os << level_text(r->level) << "," << fixed1(r->throughput) << "," << r->client_send_us << ",";
    if (r->has_server)
      os << r->network_us << "," << r->queue_us << "," << r->compute_input_us << "," << r->compute_infer_us << ","
         << r->compute_output_us << ",";
    else
      os << ",,,,,";
    os << r->client_recv_us << "," << r->p50_us << "," << r->p90_us << "," << r->p95_us << "," << r->p99_us;
    if (extra) os << "," << r->extra_percentile_us;
    os << "," << r->avg_us << "," << r->failed << "\n";
  }
  return os.str();
}

json json_report(const RunInfo& info, const std::vector<LevelResult>& levels) {
  json j;
  j["schema_version"] = kJsonSchemaVersion;
  j["tool"] = "kiln perf";
  j["url"] = info.url;
  j["protocol"] = info.protocol;
  j["model"] = info.model;
  j["model_version"] = info.version;
  j["batch_size"] = info.batch;
  j["mode"] = info.request_rate_mode ? "request_rate" : "concurrency";
  if (info.request_rate_mode) j["request_distribution"] = info.request_distribution;
  j["tensor_format"] = info.tensor_format;
  j["input_data"] = info.input_data;
  j["measurement_interval_ms"] = info.measurement_interval_ms;
  j["stability_percentage"] = info.stability_percentage;
  j["max_trials"] = info.max_trials;
  j["stabilizing_latency"] = info.percentile > 0 ? "p" + std::to_string(info.percentile) : std::string("avg");
  j["inputs"] = info.inputs;
  j["levels"] = json::array();
  for (const auto& r : levels) {
    json l;
    l[r.request_rate_mode ? "request_rate" : "concurrency"] = r.level;
    l["stable"] = r.stable;
    l["windows"] = r.windows;
    l["duration_s"] = r.duration_s;
    l["throughput_infer_per_sec"] = r.throughput;
    l["requests"] = {{"success", r.success}, {"failed", r.failed}, {"delayed", r.delayed}};
    json lat = {{"p50", r.p50_us}, {"p90", r.p90_us}, {"p95", r.p95_us}, {"p99", r.p99_us}, {"avg", r.avg_us},
                {"stabilizing", r.stabilizing_latency_us}};
    if (r.extra_percentile) lat["p" + std::to_string(r.extra_percentile)] = r.extra_percentile_us;
    l["latency_us"] = lat;
    l["client_us"] = {{"send", r.client_send_us}, {"recv", r.client_recv_us}};
    if (r.has_server)
      l["server_us"] = {{"success_count", r.server_success}, {"request", r.server_request_us},
                        {"network", r.network_us}, {"queue", r.queue_us},
                        {"compute_input", r.compute_input_us}, {"compute_infer", r.compute_infer_us},
                        {"compute_output", r.compute_output_us}};
    else
      l["server_us"] = nullptr;
    json errors = json::object();
    for (const auto& [kind, count] : r.errors) {
      auto ex = r.error_examples.find(kind);
      errors[kind] = {{"count", count}, {"example", ex == r.error_examples.end() ? "" : ex->second}};
    }
    l["errors"] = errors;
    j["levels"].push_back(l);
  }
  return j;
}

std::string text_summary(const std::vector<LevelResult>& levels, int pct) {
  std::ostringstream os;
  if (levels.empty()) return "";
  const bool rate = levels.front().request_rate_mode;
  os << "Inferences/Second vs. Client " << (pct > 0 ? "p" + std::to_string(pct) : std::string("Average"))
     << " Batch Latency\n";
  for (const auto& r : levels)
    os << (rate ? "Request Rate: " : "Concurrency: ") << level_text(r.level) << ", throughput: " << fixed1(r.throughput)
       << " infer/sec, latency " << r.stabilizing_latency_us << " usec" << (r.stable ? "" : " (unstable)")
       << (r.failed ? ", " + std::to_string(r.failed) + " failed" : std::string()) << "\n";
  os << "\n";
  // Right-aligned columns, widths from the longest cell.
  std::vector<std::string> head = {rate ? "rate" : "concurrency", "infer/sec", "p50 us", "p90 us", "p95 us",
                                   "p99 us", "avg us", "queue us", "compute us", "failed"};
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : levels) {
    const std::string na = "-";
    rows.push_back({level_text(r.level), fixed1(r.throughput), std::to_string(r.p50_us), std::to_string(r.p90_us),
                    std::to_string(r.p95_us), std::to_string(r.p99_us), std::to_string(r.avg_us),
                    r.has_server ? std::to_string(r.queue_us) : na,
                    r.has_server ? std::to_string(r.compute_input_us + r.compute_infer_us + r.compute_output_us) : na,
                    std::to_string(r.failed)});
  }
  std::vector<size_t> width(head.size());
  for (size_t c = 0; c < head.size(); ++c) {
    width[c] = head[c].size();
    for (const auto& row : rows) width[c] = std::max(width[c], row[c].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t c = 0; c < cells.size(); ++c)
      os << (c ? "  " : "") << std::setw(static_cast<int>(width[c])) << cells[c];
    os << "\n";
  };
  line(head);
  for (const auto& row : rows) line(row);
  return os.str();
}

std::string level_block(const LevelResult& r, int64_t batch) {
  std::ostringstream os;
  os << (r.request_rate_mode ? "Request rate: " : "Request concurrency: ") << level_text(r.level) << "\n";
  os << "  Client:\n";
  os << "    Request count: " << (r.success + r.failed) << " over " << fixed1(r.duration_s) << " s (batch " << batch
     << ")\n";
  os << "    Throughput: " << fixed1(r.throughput) << " infer/sec\n";
  if (r.delayed) os << "    Delayed requests: " << r.delayed << " (sent later than scheduled)\n";
  os << "    p50 latency: " << r.p50_us << " usec\n";
  os << "    p90 latency: " << r.p90_us << " usec\n";
  os << "    p95 latency: " << r.p95_us << " usec\n";
  os << "    p99 latency: " << r.p99_us << " usec\n";
  if (r.extra_percentile) os << "    p" << r.extra_percentile << " latency: " << r.extra_percentile_us << " usec\n";
  os << "    Avg latency: " << r.avg_us << " usec (send " << r.client_send_us << " usec + receive " << r.client_recv_us
     << " usec)\n";
  if (r.failed) {
    os << "    Failed requests: " << r.failed << "\n";
    for (const auto& [kind, count] : r.errors) {
      auto ex = r.error_examples.find(kind);
      os << "      " << kind << ": " << count;
      if (ex != r.error_examples.end() && !ex->second.empty()) os << " (" << ex->second << ")";
      os << "\n";
    }
  }
  if (r.has_server) {
    os << "  Server:\n";
    os << "    Successful request count: " << r.server_success << "\n";
    const uint64_t accounted = r.queue_us + r.compute_input_us + r.compute_infer_us + r.compute_output_us;
    os << "    Avg request latency: " << r.server_request_us << " usec (overhead "
       << (r.server_request_us > accounted ? r.server_request_us - accounted : 0) << " usec + queue " << r.queue_us
       << " usec + compute input " << r.compute_input_us << " usec + compute infer " << r.compute_infer_us
       << " usec + compute output " << r.compute_output_us << " usec)\n";
    os << "    Client wait beyond the server's queue and compute (network, protocol): " << r.network_us << " usec\n";
  } else {
    os << "  Server: no statistics (the server does not answer GET /v2/models/<model>/stats)\n";
  }
  if (!r.stable)
    os << "  Warning: not stable after " << r.windows << " windows; these are the last windows' figures\n";
  return os.str();
}

}  // namespace kiln::serve::perf
