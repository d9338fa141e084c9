// `kiln debug reduce` (Polygraphy's debug reduce): cuts a model down to the smallest subgraph on
// which a user's check command still fails, by bisection from the outputs side, then from the
// inputs side, then (--mode linear) by removing single nodes at the subgraph's boundaries.
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "backends/reference/executor.h"
#include "cli_common.h"
#include "onnx/onnx_import.h"
#include "onnx/subgraph.h"

extern char** environ;

namespace fs = std::filesystem;

namespace kiln::cli {
CLI::App* add_debug_command(CLI::App& app, std::function<int()>* run);
}  // namespace kiln::cli

namespace {

using namespace kiln;
using Clock = std::chrono::steady_clock;

struct ReduceArgs {
  std::string model;
  std::string check;
  std::string output = "reduced.onnx";
  std::string mode = "bisect";
  std::string shapes;
  std::string artifacts;
  std::string model_path;
  std::vector<std::string> fail_regex;
  int fail_returncode = -1;  // -1: any non-zero status
  double timeout = 0;        // seconds; 0: none
  bool show_output = false;
  bool no_reduce_inputs = false;
  bool no_reduce_outputs = false;
};

// Ctrl-C (or SIGTERM) while reducing: the running check is killed and the temp files removed.
volatile std::sig_atomic_t g_interrupted = 0;
void on_interrupt(int) { g_interrupted = 1; }
struct Interrupted {};

// Installs the handler for the command's lifetime and restores the previous one after.
class SignalGuard {
 public:
  SignalGuard() {
    struct sigaction sa = {};
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~SignalGuard() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ = {}, old_term_ = {};
};

// A private temp folder, removed with everything in it when the command ends, however it ends.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "kiln_reduce_XXXXXX").string();
    if (!mkdtemp(pattern.data()))
      throw Error(ErrorCode::kIo, "cannot create a temp folder in " + fs::temp_directory_path().string());
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A path as one shell word: unchanged when it is made of safe characters, else single-quoted.
std::string shell_word(const std::string& s) {
  const bool safe = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           std::string_view("_./-+=:,@%").find(c) != std::string_view::npos;
  });
  if (safe) return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

struct CheckResult {
  int status = 0;  // exit status; 128+N when killed by signal N; 124 when it timed out
  bool timed_out = false;
  bool failed = false;  // the candidate is interesting (it still shows the failure)
  std::string output;   // stdout and stderr together
  double seconds = 0;
};

// Runs the --check command through /bin/sh in its own process group (so a timeout or Ctrl-C can
// kill everything it started), capturing its output, and decides whether it failed.
class CheckRunner {
 public:
  explicit CheckRunner(const ReduceArgs& args) : args_(args) {
    for (const auto& re : args.fail_regex) regexes_.emplace_back(re);
  }

  std::string command_for(const fs::path& model) const {
    std::string cmd = args_.check;
    const std::string word = shell_word(model.string());
    for (size_t pos = cmd.find("{model}"); pos != std::string::npos; pos = cmd.find("{model}", pos + word.size()))
      cmd.replace(pos, 7, word);
    return cmd;
  }

  std::string describe_failure() const {
    std::string s;
    if (args_.fail_returncode >= 0)
      s = "the exit status is " + std::to_string(args_.fail_returncode);
    else if (regexes_.empty())
      s = "the exit status is not 0";
    if (!regexes_.empty()) {
      s += s.empty() ? "the output matches " : " and the output matches ";
      for (size_t i = 0; i < args_.fail_regex.size(); ++i) s += (i ? " or '" : "'") + args_.fail_regex[i] + "'";
    }
    return s;
  }

  CheckResult run(const fs::path& model) const {
    CheckResult r;
    const auto start = Clock::now();
    const std::string cmd = command_for(model);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) throw Error(ErrorCode::kIo, "cannot create a pipe for the check command");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGPIPE);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    const char* argv[] = {"sh", "-c", cmd.c_str(), nullptr};
    pid_t pid = 0;
    const int spawn_error = posix_spawn(&pid, "/bin/sh", &actions, &attr, const_cast<char* const*>(argv), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    close(fds[1]);
    if (spawn_error != 0) {
      close(fds[0]);
      throw Error(ErrorCode::kIo, "cannot run /bin/sh for the check command: " + std::string(strerror(spawn_error)));
    }

    // Read until the shell has exited and the pipe is closed. The shell stays a zombie (waitid
    // WNOWAIT) until the end, so its process group cannot be reused while we may still signal it.
    bool eof = false, exited = false;
    std::optional<Clock::time_point> drain_until;
    char buf[65536];
    for (;;) {
      if (g_interrupted) {
        kill(-pid, SIGKILL);
        waitpid(pid, nullptr, 0);
        close(fds[0]);
        throw Interrupted{};
      }
      if (!eof) {
        pollfd p{fds[0], POLLIN, 0};
        if (poll(&p, 1, 50) > 0) {
          const ssize_t n = read(fds[0], buf, sizeof buf);
          if (n > 0) {
            r.output.append(buf, static_cast<size_t>(n));
            // Keep the last 32 MiB: enough for any failure message, bounded for a chatty check.
            constexpr size_t kMax = 32u << 20;
            if (r.output.size() > kMax) r.output.erase(0, r.output.size() - kMax);
          } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
            eof = true;
          }
        }
      } else {
        usleep(20000);
      }
      if (!exited) {
        siginfo_t info = {};
        if (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid)
          exited = true;
      }
      if (exited && eof) break;
      const auto now = Clock::now();
      if (exited && !eof) {  // something the check started in the background still holds the pipe
        if (!drain_until)
          drain_until = now + std::chrono::seconds(1);
        else if (now > *drain_until)
          break;
      }
      if (!exited && args_.timeout > 0 && now - start > std::chrono::duration<double>(args_.timeout)) {
        r.timed_out = true;
        break;
      }
    }
    // Whatever the check left running in its group goes now, then the shell is reaped.
    kill(-pid, SIGKILL);
    int wstatus = 0;
    waitpid(pid, &wstatus, 0);
    close(fds[0]);
    if (r.timed_out)
      r.status = 124;
    else if (WIFEXITED(wstatus))
      r.status = WEXITSTATUS(wstatus);
    else if (WIFSIGNALED(wstatus))
      r.status = 128 + WTERMSIG(wstatus);
    r.seconds = std::chrono::duration<double>(Clock::now() - start).count();

    bool matched = false;
    for (const auto& re : regexes_)
      if (std::regex_search(r.output, re)) matched = true;
    if (args_.fail_returncode >= 0)
      r.failed = r.status == args_.fail_returncode && (regexes_.empty() || matched);
    else
      r.failed = regexes_.empty() ? r.status != 0 : matched;
    return r;
  }

 private:
  const ReduceArgs& args_;
  std::vector<std::regex> regexes_;
};

std::string plural(size_t n, const std::string& word) { return std::to_string(n) + " " + word + (n == 1 ? "" : "s"); }

std::string op_name(const Node& n) { return n.domain.empty() ? n.op_type : n.domain + "::" + n.op_type; }

std::string node_label(const Node& n, size_t index) {
  return (n.name.empty() ? "#" + std::to_string(index) : n.name) + " (" + op_name(n) + ")";
}

// The last `lines` lines of a check's output, indented.
std::string tail_lines(const std::string& text, size_t lines) {
  std::vector<std::string> all;
  std::istringstream is(text);
  for (std::string line; std::getline(is, line);) all.push_back(line);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) out += "    | " + all[i] + "\n";
  return out;
}

class Reducer {
 public:
  enum class Verdict { kFail, kPass, kInvalid };

  Reducer(const ReduceArgs& args, Model model, const fs::path& temp_dir)
      : args_(args), model_(std::move(model)), runner_(args), temp_dir_(temp_dir) {
    InferOptions options;
    options.evaluator = reference::constant_evaluator();
    infer_options_ = options;
    types_ = infer_types_partial(model_, options);
    for (const auto& s : types_.skipped) originally_skipped_.insert(s.node);
    constant_ = constant_nodes(model_.graph);
    for (size_t i = 0; i < model_.graph.nodes.size(); ++i)
      if (!constant_[i]) work_.push_back(i);
    // Work-node graph: who feeds whom (constant nodes never read a work node's output).
    std::unordered_map<std::string, size_t> producer;
    for (size_t p = 0; p < work_.size(); ++p)
      for (const auto& o : model_.graph.nodes[work_[p]].outputs)
        if (!o.empty()) producer.emplace(o, p);
    preds_.resize(work_.size());
    succs_.resize(work_.size());
    for (size_t p = 0; p < work_.size(); ++p)
      for (const auto& r : node_reads(model_.graph.nodes[work_[p]]))
        if (auto it = producer.find(r); it != producer.end() && it->second != p) {
          preds_[p].insert(it->second);
          succs_[it->second].insert(p);
        }
    if (args.model_path.empty() && args.check.find("{model}") == std::string::npos)
      fixed_path_ = (args.artifacts.empty() ? fs::path(".") : fs::path(args.artifacts)) / "kiln_debug_reduce.onnx";
    else if (!args.model_path.empty())
      fixed_path_ = args.model_path;
  }

  ~Reducer() {
    std::error_code ec;
    if (!fixed_path_.empty() && wrote_fixed_path_) fs::remove(fixed_path_, ec);
  }

  const Model& model() const { return model_; }
  const PartialTypes& types() const { return types_; }
  const std::vector<size_t>& work() const { return work_; }
  const CheckRunner& runner() const { return runner_; }
  int checks() const { return checks_; }

  // The candidate made of the work nodes at `positions` (plus the constant nodes they need).
  std::vector<size_t> node_indices(const std::set<size_t>& positions) const {
    std::vector<size_t> keep;
    for (size_t p : positions) keep.push_back(work_[p]);
    return with_constant_producers(model_.graph, keep, constant_);
  }

  Model candidate(const std::set<size_t>& positions) const {
    return extract_subgraph(model_, node_indices(positions), types_);
  }

  // Tests one candidate, printing one line; results are cached by node set.
  // `detail` says how the candidate was made ("up to 'relu3'"), for the log line.
  Verdict test(const std::string& phase, const std::set<size_t>& positions, const std::string& detail = "",
               CheckResult* result_out = nullptr) {
    if (g_interrupted) throw Interrupted{};
    if (auto it = cache_.find(positions); it != cache_.end()) return it->second;
    const std::vector<size_t> nodes = node_indices(positions);
    std::ostringstream line;
    line << phase << (detail.empty() ? "" : " " + detail) << ": " << plural(nodes.size(), "node") << ": ";
    Model cand;
    std::string invalid;
    try {
      cand = extract_subgraph(model_, nodes, types_);
      invalid = invalid_reason(cand, nodes);
    } catch (const Error& e) {
      invalid = e.what();
    }
    if (!invalid.empty()) {
      std::cout << "[-] " << line.str() << "skipped, not a valid model: " << invalid << std::endl;
      if (first_invalid_.empty()) first_invalid_ = invalid;
      cache_[positions] = Verdict::kInvalid;
      return Verdict::kInvalid;
    }
    ++checks_;
    char stem[64];
    std::snprintf(stem, sizeof stem, "%03d-%s-%zun", checks_, phase.c_str(), nodes.size());
    const fs::path path = fixed_path_.empty() ? temp_dir_ / (std::string(stem) + ".onnx") : fixed_path_;
    save_onnx(cand, path);
    if (!fixed_path_.empty()) wrote_fixed_path_ = true;
    CheckResult r = runner_.run(path);
    line << (r.failed ? "fail" : "pass") << " (";
    if (r.timed_out)
      line << "timed out after " << cli::fixed(args_.timeout, 1) << " s, counted as exit status 124";
    else
      line << "exit status " << r.status << ", " << cli::fixed(r.seconds, 2) << " s";
    line << ")";
    std::cout << "[" << checks_ << "] " << line.str() << std::endl;
    if (args_.show_output && !r.output.empty())
      std::cout << tail_lines(r.output, static_cast<size_t>(-1)) << std::flush;
    if (!args_.artifacts.empty()) {
      const fs::path base = fs::path(args_.artifacts) / (std::string(stem) + (r.failed ? "-fail" : "-pass"));
      fs::copy_file(path, base.string() + ".onnx", fs::copy_options::overwrite_existing);
      std::ofstream log(base.string() + ".log");
      log << "$ " << runner_.command_for(path) << "\n" << r.output;
    }
    if (fixed_path_.empty()) {
      std::error_code ec;
      fs::remove(path, ec);
    }
    const Verdict v = r.failed ? Verdict::kFail : Verdict::kPass;
    cache_[positions] = v;
    if (result_out) *result_out = std::move(r);
    return v;
  }

  bool fails(const std::string& phase, const std::set<size_t>& positions, const std::string& detail = "") {
    return !positions.empty() && test(phase, positions, detail) == Verdict::kFail;
  }

  // "'relu3'" (or "#12" for an unnamed node): the work node at `position`, for log lines.
  std::string name_at(size_t position) const {
    const Node& n = model_.graph.nodes[work_[position]];
    return n.name.empty() ? "#" + std::to_string(work_[position]) : "'" + n.name + "'";
  }

  static std::set<size_t> range(size_t first, size_t last) {  // [first, last]
    std::set<size_t> s;
    for (size_t p = first; p <= last; ++p) s.insert(p);
    return s;
  }

  // Bisects from the outputs side: the shortest prefix of the work nodes (in topological order)
  // that still fails. A prefix's outputs are every tensor it produces that a later node reads, so
  // a prefix that holds the failing node fails too, and bisection is sound.
  size_t reduce_outputs(size_t first, size_t last) {
    // Invariant: [first, bad] fails; [first, good] passes (good == first - 1: the empty prefix).
    long good = static_cast<long>(first) - 1, bad = static_cast<long>(last);
    while (bad - good > 1) {
      const long mid = good + (bad - good) / 2;
      if (fails("outputs", range(first, static_cast<size_t>(mid)), "up to " + name_at(static_cast<size_t>(mid))))
        bad = mid;
      else
        good = mid;
    }
    return static_cast<size_t>(bad);
  }

  // Bisects from the inputs side: the shortest suffix [start, last] that still fails, the tensors
  // it reads from earlier nodes becoming graph inputs.
  size_t reduce_inputs(size_t first, size_t last) {
    // Invariant: [bad, last] fails; [good, last] passes (good == last + 1: the empty suffix).
    size_t bad = first, good = last + 1;
    while (good - bad > 1) {
      const size_t mid = bad + (good - bad) / 2;
      if (fails("inputs", range(mid, last), "from " + name_at(mid)))
        bad = mid;
      else
        good = mid;
    }
    return bad;
  }

  // The nodes on paths from `from` to `to` (both included): what remains of a window when the
  // branches beside that path are dropped.
  std::set<size_t> bridge(size_t from, size_t to, const std::set<size_t>& window) const {
    auto reach = [&](size_t start, const std::vector<std::set<size_t>>& edges) {
      std::set<size_t> seen{start};
      std::vector<size_t> stack{start};
      while (!stack.empty()) {
        const size_t p = stack.back();
        stack.pop_back();
        for (size_t q : edges[p])
          if (window.count(q) && seen.insert(q).second) stack.push_back(q);
      }
      return seen;
    };
    const std::set<size_t> down = reach(from, succs_), up = reach(to, preds_);
    std::set<size_t> result{from, to};
    for (size_t p : down)
      if (up.count(p)) result.insert(p);
    return result;
  }

  // Linear mode: removes one boundary node at a time (a node none of whose outputs another node of
  // the set reads, or that reads no other node of the set) while the rest still fails, until no
  // single removal does.
  std::set<size_t> reduce_linear(std::set<size_t> current) {
    bool changed = true;
    while (changed && current.size() > 1) {
      changed = false;
      std::vector<size_t> order(current.rbegin(), current.rend());  // sinks first, from the end
      for (size_t p : order) {
        if (!current.count(p) || current.size() <= 1) continue;
        bool sink = true, source = true;
        for (size_t q : succs_[p])
          if (current.count(q)) sink = false;
        for (size_t q : preds_[p])
          if (current.count(q)) source = false;
        if (!sink && !source) continue;
        std::set<size_t> smaller = current;
        smaller.erase(p);
        if (fails("linear", smaller, "without " + name_at(p))) {
          current = std::move(smaller);
          changed = true;
        }
      }
    }
    return current;
  }

  const std::string& first_invalid() const { return first_invalid_; }

 private:
  // Empty when `cand` is a valid model: Kiln's verifier passes, and type inference goes as far as
  // it went on the whole model (the nodes it could not infer there may stay uninferred).
  std::string invalid_reason(const Model& cand, const std::vector<size_t>& nodes) const {
    if (cand.graph.outputs.empty()) return "it has no outputs";
    try {
      verify_graph(cand.graph);
    } catch (const Error& e) {
      return e.what();
    }
    PartialTypes t = infer_types_partial(cand, infer_options_);
    for (const auto& s : t.skipped)
      if (!originally_skipped_.count(nodes[s.node]))
        return node_label(cand.graph.nodes[s.node], nodes[s.node]) + ": " + s.reason;
    return "";
  }

  const ReduceArgs& args_;
  Model model_;
  CheckRunner runner_;
  fs::path temp_dir_;
  fs::path fixed_path_;  // where candidates go when the check names no {model}
  bool wrote_fixed_path_ = false;
  InferOptions infer_options_;
  PartialTypes types_;
  std::unordered_set<size_t> originally_skipped_;
  std::vector<bool> constant_;
  std::vector<size_t> work_;                     // indices of the non-constant nodes, in order
  std::vector<std::set<size_t>> preds_, succs_;  // between work positions
  std::map<std::set<size_t>, Verdict> cache_;
  int checks_ = 0;
  std::string first_invalid_;
};

// --shapes: the model's inputs take these concrete shapes (checked against the declared ones).
void apply_shapes(Model& model, const std::string& spec, const std::string& path) {
  auto shapes = cli::parse_shapes(spec);
  cli::check_shape_names(model.graph, shapes, "--shapes", path);
  for (const auto& [name, dims] : shapes) {
    TensorType& t = model.graph.types[name];
    if (t.shape) {
      if (t.shape->size() != dims.size())
        throw Error(ErrorCode::kInvalidArgument, "--shapes: input '" + name + "' has rank " +
                                                     std::to_string(t.shape->size()) + " " + shape_to_string(*t.shape) +
                                                     ", got " + std::to_string(dims.size()) + " dims");
      for (size_t i = 0; i < dims.size(); ++i)
        if ((*t.shape)[i].known() && (*t.shape)[i].value != dims[i])
          throw Error(ErrorCode::kInvalidArgument, "--shapes: input '" + name + "' has the static shape " +
                                                       shape_to_string(*t.shape) + ", got " + shape_to_string(dims));
    }
    t.shape = shape_from_dims(dims);
  }
}

int run_reduce(const ReduceArgs& args) {
  const auto start = Clock::now();
  SignalGuard signals;
  g_interrupted = 0;
  Model model = load_onnx(args.model);
  const size_t original_nodes = model.graph.nodes.size();
  if (!args.shapes.empty()) apply_shapes(model, args.shapes, args.model);
  const size_t lowered = lower_constant_nodes(model);
  if (!args.artifacts.empty()) fs::create_directories(args.artifacts);
  TempDir temp;

  try {
    Reducer reducer(args, std::move(model), temp.path());
    const Model& m = reducer.model();
    const size_t n = reducer.work().size();
    std::cout << "model: " << args.model << " (" << plural(original_nodes, "node");
    if (lowered) std::cout << "; " << lowered << " Constant nodes lowered into initializers";
    if (n != m.graph.nodes.size())
      std::cout << "; " << plural(m.graph.nodes.size() - n, "node")
                << " computed from weights alone stay with their users";
    std::cout << ")\n";
    std::cout << "check: " << args.check << "\n";
    std::cout << "a candidate fails when " << reducer.runner().describe_failure();
    if (args.timeout > 0)
      std::cout << " (a check running over " << cli::fixed(args.timeout, 1) << " s is killed: exit status 124)";
    std::cout << "\n";
    for (const auto& in : m.graph.inputs)
      if (const TensorType* t = m.graph.type_of(in); t && t->shape && !shape_is_static(*t->shape))
        std::cout << "note: input '" << in << "' has the dynamic shape " << shape_to_string(*t->shape)
                  << ": tensors whose shape depends on it cannot become graph inputs; give --shapes " << in
                  << ":... to reduce from the inputs side\n";
    if (!reducer.types().skipped.empty()) {
      const auto& s = reducer.types().skipped.front();
      std::cout << "note: the output types of " << plural(reducer.types().skipped.size(), "node")
                << " are unknown, so they cannot become graph inputs (first: "
                << node_label(m.graph.nodes[s.node], s.node) << ": " << s.reason << ")\n";
    }
    if (n == 0)
      throw Error(ErrorCode::kInvalidArgument,
                  args.model + ": every node computes from weights alone: nothing to reduce");
    std::cout << std::flush;

    const std::set<size_t> all = Reducer::range(0, n - 1);
    CheckResult original;
    const Reducer::Verdict v = reducer.test("original", all, "", &original);
    if (v == Reducer::Verdict::kInvalid)
      throw Error(ErrorCode::kInvalidModel,
                  args.model + ": the model cannot be rewritten as a valid candidate: " + reducer.first_invalid());
    if (v == Reducer::Verdict::kPass) {
      if (!args.show_output && !original.output.empty())
        std::cout << "check output (last lines):\n" << tail_lines(original.output, 15) << std::flush;
      throw Error(ErrorCode::kInvalidArgument,
                  "the check passes on the original model: nothing to reduce (a candidate fails when " +
                      reducer.runner().describe_failure() + "; docs/debug.md#what-counts-as-failing)");
    }

    size_t first = 0, last = n - 1;
    if (!args.no_reduce_outputs) last = reducer.reduce_outputs(first, last);
    if (!args.no_reduce_inputs) first = reducer.reduce_inputs(first, last);
    std::set<size_t> current = Reducer::range(first, last);
    if (current.size() > 2) {
      std::set<size_t> b = reducer.bridge(first, last, current);
      if (b.size() < current.size() &&
          reducer.fails("branches", b, "between " + reducer.name_at(first) + " and " + reducer.name_at(last)))
        current = std::move(b);
    }
    if (args.mode == "linear") current = reducer.reduce_linear(std::move(current));

    const std::vector<size_t> nodes = reducer.node_indices(current);
    Model reduced = reducer.candidate(current);
    save_onnx(reduced, args.output);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::cout << "reduced: " << plural(original_nodes, "node") << " -> " << plural(nodes.size(), "node") << " ("
              << plural(static_cast<size_t>(reducer.checks()), "check") << ", " << cli::fixed(seconds, 1)
              << " s); wrote " << args.output << "\n";
    auto list = [&](const char* what, const std::vector<std::string>& names) {
      std::cout << "  " << what;
      for (size_t i = 0; i < names.size(); ++i) {
        const TensorType* t = reduced.graph.type_of(names[i]);
        std::cout << (i ? ", " : " ") << names[i] << ": " << (t ? t->to_string() : "?");
      }
      std::cout << "\n";
    };
    list("inputs:", reduced.graph.inputs);
    list("outputs:", reduced.graph.outputs);
    std::cout << "  nodes:\n";
    constexpr size_t kListed = 40;  // a long list helps nobody: kiln inspect --dump has them all
    for (size_t i = 0; i < nodes.size() && i < kListed; ++i)
      std::cout << "    " << node_label(m.graph.nodes[nodes[i]], nodes[i]) << "\n";
    if (nodes.size() > kListed)
      std::cout << "    ... and " << nodes.size() - kListed << " more (kiln inspect --dump " << args.output
                << " lists them all)\n";
    if (!reducer.first_invalid().empty())
      std::cout << "note: some candidates were skipped as invalid models (first: " << reducer.first_invalid() << ")\n";
    if (args.mode == "bisect" && nodes.size() > 1)
      std::cout << "note: --mode linear may remove more nodes (it tries removing each node at the boundaries)\n";
    return 0;
  } catch (const Interrupted&) {
    std::cout << std::flush;
    std::cerr << "kiln: interrupted; temp files removed\n";
    return 130;
  }
}

}  // namespace

namespace kiln::cli {

CLI::App* add_debug_command(CLI::App& app, std::function<int()>* run) {
  auto* debug = app.add_subcommand("debug", "Debugging tools: reduce a failing model to the smallest failing subgraph");
  debug->require_subcommand(1);
  auto args = std::make_shared<ReduceArgs>();
  auto* reduce = debug->add_subcommand(
      "reduce", "Cut a model down to the smallest subgraph on which a check command still fails (like Polygraphy's)");
  reduce->add_option("model", args->model, "ONNX model that fails the check")->required();
  reduce
      ->add_option("--check", args->check,
                   "Shell command run on each candidate; {model} becomes the candidate's path (else the candidate "
                   "is written to --model-path)")
      ->required();
  reduce->add_option("-o,--output", args->output, "Where to write the smallest failing model (default reduced.onnx)");
  reduce
      ->add_option("--mode", args->mode,
                   "bisect (default): bisect from the outputs, then the inputs; linear: also remove single "
                   "boundary nodes while the check still fails")
      ->check(CLI::IsMember({"bisect", "linear"}));
  reduce->add_option("--shapes", args->shapes, "Concrete shapes of dynamic inputs: NAME:1x3x224x224,...");
  reduce->add_option("--artifacts", args->artifacts,
                     "Keep every candidate here (NNN-PHASE-Kn-pass|fail.onnx, with the check's output as .log)");
  reduce->add_option("--model-path", args->model_path,
                     "Where each candidate is written when the check has no {model} (default kiln_debug_reduce.onnx in "
                     "--artifacts, else in the current folder)");
  const CLI::Validator regex_check(
      [](std::string& re) {
        try {
          std::regex r(re);
        } catch (const std::regex_error& e) {
          return "invalid regular expression '" + re + "': " + e.what();
        }
        return std::string();
      },
      "REGEX");
  reduce
      ->add_option("--fail-regex", args->fail_regex,
                   "A candidate fails only when the check's output matches (ECMAScript regex; repeatable: any match)")
      ->check(regex_check);
  reduce
      ->add_option("--fail-returncode", args->fail_returncode,
                   "A candidate fails only when the check exits with exactly this status")
      ->check(CLI::Range(0, 255));
  reduce
      ->add_option("--timeout", args->timeout,
                   "Kill a check running longer than this many seconds; it counts as exit status 124")
      ->check(CLI::PositiveNumber);
  reduce->add_flag("--show-output", args->show_output, "Print every check's output");
  reduce->add_flag("--no-reduce-inputs", args->no_reduce_inputs,
                   "Keep the model's inputs (reduce from the outputs side only)");
  reduce->add_flag("--no-reduce-outputs", args->no_reduce_outputs,
                   "Keep the model's outputs (reduce from the inputs side only)");
  reduce->footer(
      "A candidate fails (still shows the problem) when the check exits non-zero; with --fail-returncode N only\n"
      "when it exits with N; with --fail-regex only when its output (stdout and stderr) matches, and with both\n"
      "only when both hold. A check killed by --timeout has exit status 124. The original model must fail.\n"
      "Every candidate is a valid ONNX model; intermediate tensors that become graph inputs get their inferred\n"
      "static types (give --shapes for dynamic inputs). See docs/debug.md. Errors exit 1; bad flags exit 2.");
  *run = [args]() { return run_reduce(*args); };
  return debug;
}

}  // namespace kiln::cli
