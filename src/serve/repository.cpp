// Model repository scanning (names, configs, version folders, symlink escapes), version policies,
// and loading one version: an engine file as is, or model.onnx built with its timing cache.
#include "serve/repository.h"

#include <algorithm>
#include <cctype>
#include <system_error>
#include <thread>

#include "backends/cpu/timing_cache.h"
#include "backends/gpu/loader.h"
#include "backends/gpu/gpu_engine.h"
#include "engine/engine_file.h"
#include "kiln/error.h"
#include "onnx/onnx_import.h"
#include "runtime/builder.h"

namespace kiln::serve {

namespace fs = std::filesystem;

namespace {

// Numbered version folders: digits without a leading zero (Triton ignores other names).
std::optional<int64_t> version_number(const std::string& name) {
  if (name.empty() || name.size() > 18 || name[0] == '0') return std::nullopt;
  for (char c : name)
    if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
  return std::stoll(name);
}

// True when `p`, with every symlink resolved, lies inside `root` (canonical).
bool inside(const fs::path& root, const fs::path& p) {
  std::error_code ec;
  const fs::path real = fs::canonical(p, ec);
  if (ec) return false;
  auto r = root.begin(), q = real.begin();
  for (; r != root.end(); ++r, ++q)
    if (q == real.end() || *r != *q) return false;
  return true;
}

std::string escape_reason(const fs::path& p) {
  return p.string() + " is a symbolic link leading outside the repository (refused)";
}

uint64_t weight_bytes(const Model& m) {
  uint64_t n = 0;
  for (const auto& [name, t] : m.graph.initializers) n += t.nbytes();
  return n;
}

std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

// The build profile of an ONNX model: batch dim 1..max_batch_size (opt at the max, the size the
// batcher aims for), other dynamic dims from kiln.build.input_range, fixed dims as the config has
// them. Empty when every input is static.
std::vector<OptimizationProfile> build_profiles(const ModelConfig& c, const Model& model) {
  OptimizationProfile p;
  bool any_dynamic = false;
  const bool batching = c.max_batch_size > 0;
  for (const auto& in : c.inputs) {
    const Shape& shape = *model.graph.types.at(in.name).shape;
    bool dynamic = false;
    for (const auto& d : shape) dynamic = dynamic || !d.known();
    const InputRange* range = nullptr;
    for (const auto& r : c.kiln.build.input_ranges)
      if (r.name == in.name) range = &r;
    ProfileDims dims;
    if (batching) {
      dims.min.push_back(1);
      dims.opt.push_back(c.max_batch_size);
      dims.max.push_back(c.max_batch_size);
    }
    for (size_t i = 0; i < in.dims.size(); ++i) {
      if (range) {
        dims.min.push_back(range->min[i]);
        dims.opt.push_back(range->opt[i]);
        dims.max.push_back(range->max[i]);
      } else if (in.dims[i] == -1) {
        throw Error(ErrorCode::kInvalidArgument,
                    c.source + ": input \"" + in.name + "\" has a dynamic dim at " + std::to_string(i) +
                        " (after the batch dim); give its range with kiln { build { input_range { name: \"" + in.name +
                        "\" min: [...] opt: [...] max: [...] } } } (see docs/serving.md#kiln-extensions)");
      } else {
        for (auto* v : {&dims.min, &dims.opt, &dims.max}) v->push_back(in.dims[i]);
      }
    }
    if (!dynamic && !range) continue;  // static inputs stay out of the profile
    any_dynamic = true;
    p.inputs[in.name] = dims;
  }
  if (!any_dynamic) return {};
  return {p};
}

}  // namespace

bool is_valid_model_name(std::string_view name) {
  if (name.empty() || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return std::isalnum(c) || c == '_' || c == '.' || c == '-';
  });
}

void validate_model_name(std::string_view name) {
  if (is_valid_model_name(name)) return;
  std::string shown;
  for (char ch : name.substr(0, 64))
    shown += std::isprint(static_cast<unsigned char>(ch)) ? std::string(1, ch) : std::string("?");
  throw Error(ErrorCode::kInvalidArgument, "invalid model name \"" + shown +
                                               "\": a model name is made of letters, digits, '_', '.' and '-', and is "
                                               "not \".\" or \"..\" (see docs/serving.md#repository-layout)");
}

std::vector<int64_t> select_versions(const VersionPolicy& policy, std::vector<int64_t> available,
                                     const std::string& source) {
  std::sort(available.begin(), available.end());
  available.erase(std::unique(available.begin(), available.end()), available.end());
  switch (policy.kind) {
    case VersionPolicy::Kind::kAll:
      return available;
    case VersionPolicy::Kind::kLatest: {
      const size_t n = std::min<size_t>(policy.num_versions, available.size());
      return {available.end() - static_cast<std::ptrdiff_t>(n), available.end()};
    }
    case VersionPolicy::Kind::kSpecific:
      for (int64_t v : policy.versions)
        if (!std::binary_search(available.begin(), available.end(), v))
          throw Error(ErrorCode::kInvalidArgument, source + ": version_policy names version " + std::to_string(v) +
                                                       " but there is no version folder " + std::to_string(v) +
                                                       " (see docs/serving.md#version-policy)");
      return policy.versions;
  }
  return {};
}

ModelRepository::ModelRepository(fs::path root, RepositoryOptions options) : options_(std::move(options)) {
  std::error_code ec;
  if (!fs::is_directory(root, ec))
    throw Error(ErrorCode::kIo, "model repository " + root.string() + " is not a folder");
  root_ = fs::canonical(root, ec);
  if (ec) throw Error(ErrorCode::kIo, "cannot read model repository " + root.string() + ": " + ec.message());
  scan();
}

void ModelRepository::scan() {
  std::vector<ModelEntry> models;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root_, ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name[0] == '.') continue;  // hidden folders (.git, editors' files)
    std::error_code sec;
    if (!fs::is_directory(e.path(), sec)) continue;  // files next to the models (README)
    ModelEntry m;
    m.name = name;
    m.dir = e.path();
    models.push_back(std::move(m));
    ModelEntry& entry = models.back();
    if (!is_valid_model_name(name)) {
      entry.error = "invalid model name: use letters, digits, '_', '.' and '-'";
      continue;
    }
    if (!inside(root_, entry.dir)) {
      entry.error = escape_reason(entry.dir);
      continue;
    }
    const fs::path config_path = entry.dir / "config.pbtxt";
    if (!fs::exists(config_path, sec)) {
      entry.error = "no config.pbtxt in " + entry.dir.string();
      continue;
    }
    if (!inside(root_, config_path)) {
      entry.error = escape_reason(config_path);
      continue;
    }
    try {
      entry.config = load_model_config(config_path, name);
    } catch (const Error& err) {
      entry.error = err.what();
      continue;
    }
    std::map<int64_t, fs::path> folders;
    for (const auto& v : fs::directory_iterator(entry.dir, sec)) {
      const auto n = version_number(v.path().filename().string());
      if (n && fs::is_directory(v.path(), sec)) folders[*n] = v.path();
    }
    std::vector<int64_t> numbers;
    for (const auto& [n, p] : folders) numbers.push_back(n);
    std::vector<int64_t> chosen;
    try {
      chosen = select_versions(entry.config->version_policy, numbers, config_path.string());
    } catch (const Error& err) {
      entry.error = err.what();
      continue;
    }
    if (chosen.empty()) {
      entry.error = "no version folders (1/, 2/, ...) in " + entry.dir.string();
      continue;
    }
    for (int64_t n : chosen) {
      VersionEntry v;
      v.version = n;
      v.dir = folders.at(n);
      if (!inside(root_, v.dir)) {
        v.error = escape_reason(v.dir);
      } else if (fs::exists(v.dir / "model.kiln", sec)) {
        v.model_file = v.dir / "model.kiln";
        v.format = ModelFormat::kEngine;
      } else if (fs::exists(v.dir / "model.onnx", sec)) {
        v.model_file = v.dir / "model.onnx";
        v.format = ModelFormat::kOnnx;
      } else {
        v.error = "no model.kiln or model.onnx in " + v.dir.string();
      }
      if (v.error.empty() && !inside(root_, v.model_file)) v.error = escape_reason(v.model_file);
      entry.versions.push_back(std::move(v));
    }
  }
  if (ec) throw Error(ErrorCode::kIo, "cannot read model repository " + root_.string() + ": " + ec.message());
  std::sort(models.begin(), models.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  std::lock_guard<std::mutex> lock(mu_);
  models_ = std::move(models);
  // Forget load states of versions that are gone.
  for (auto it = load_state_.begin(); it != load_state_.end();) {
    bool present = false;
    for (const auto& m : models_)
      for (const auto& v : m.versions)
        present = present || (m.name == it->first.first && v.version == it->first.second);
    it = present ? std::next(it) : load_state_.erase(it);
  }
}

const ModelEntry& ModelRepository::model(const std::string& name) const {
  validate_model_name(name);
  for (const auto& m : models_)
    if (m.name == name) return m;
  throw Error(ErrorCode::kInvalidArgument, "no model \"" + name + "\" in the repository " + root_.string());
}

std::vector<IndexEntry> ModelRepository::index() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<IndexEntry> out;
  for (const auto& m : models_) {
    if (!m.error.empty()) {
      out.push_back({m.name, "", "UNAVAILABLE", m.error});
      continue;
    }
    for (const auto& v : m.versions) {
      IndexEntry e{m.name, std::to_string(v.version), "UNAVAILABLE", v.error};
      if (v.error.empty()) {
        auto it = load_state_.find({m.name, v.version});
        if (it == load_state_.end())
          e.reason = "not loaded";
        else if (it->second.empty())
          e.state = "READY";
        else
          e.reason = it->second;
      }
      out.push_back(e);
    }
  }
  return out;
}

void ModelRepository::mark_unloaded(const std::string& name, int64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  load_state_.erase({name, version});
}

void ModelRepository::mark_failed(const std::string& name, int64_t version, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  load_state_[{name, version}] = reason.empty() ? "failed" : reason;
}

std::shared_ptr<EngineRuntime> ModelRepository::build_cpu(const std::string& name, int64_t version,
                                                          const ModelEntry& m, const VersionEntry& v,
                                                          ModelConfig& c, Model model, int threads,
                                                          LoadedModel& loaded) const {
  BuildConfig cfg;
  cfg.opt_level = c.kiln.build.opt_level;
  cfg.profiles = build_profiles(c, model);
  cfg.threads = threads;
  cfg.time_tactics = options_.time_tactics;
  cfg.precision.bf16 = c.kiln.build.precision == "bf16";
  cfg.precision.fp16 = c.kiln.build.precision == "fp16";
  fs::path cache_path = !c.kiln.build.timing_cache.empty() ? m.dir / c.kiln.build.timing_cache
                        : !options_.cache_dir.empty()
                            ? options_.cache_dir / name / std::to_string(version) / "timing_cache.json"
                            : v.dir / "timing_cache.json";
  cpu::TimingCache cache;
  cache.load(cache_path);  // a cache for another machine is ignored and rewritten
  cfg.timing_cache = &cache;
  BuildResult r = build_engine(std::move(model), cfg);
  check_against_model(c, r.model, &r.info);
  std::error_code ec;
  fs::create_directories(cache_path.parent_path(), ec);
  cache.save(cache_path);
  loaded.timing_cache = cache_path.string();
  loaded.built = true;
  const cpu::ShapeMap opt = opt_shapes(r.model, cfg.profiles.empty() ? nullptr : &cfg.profiles[0]);
  auto runtime = std::make_shared<EngineRuntime>(std::move(r.model), std::move(r.info), threads);
  runtime->add_program(opt, r.program);
  return runtime;
}

void ModelRepository::build_gpu(const std::string& name, int64_t version, const Model& model,
                                const std::map<int, int>& per_gpu, LoadedModel& loaded,
                                const EngineInfo* gpu_engine) const {
  const ModelConfig& c = loaded.config;
  const std::string what = "model \"" + name + "\" version " + std::to_string(version);
  // One build per GPU, in parallel: each times its own tactics on its own device.
  std::vector<int> gpus;
  for (const auto& [gpu, n] : per_gpu) gpus.push_back(gpu);
  std::vector<std::shared_ptr<GpuModel>> built(gpus.size());
  std::vector<std::exception_ptr> errors(gpus.size());
  {
    std::vector<std::thread> workers;
    for (size_t i = 0; i < gpus.size(); ++i)
      workers.emplace_back([&, i] {
        try {
          built[i] = std::make_shared<GpuModel>(model, c, gpus[i], gpu_engine);
        } catch (...) {
          errors[i] = std::current_exception();
        }
      });
    for (auto& w : workers) w.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  loaded.built = true;
  for (size_t i = 0; i < gpus.size(); ++i) {
    const GpuModel& g = *built[i];
    const uint64_t n = static_cast<uint64_t>(per_gpu.at(gpus[i]));
    const uint64_t need = g.instance_bytes() * n;
    const uint64_t total = g.weight_bytes() + need;
    const std::string where = what + " on GPU " + std::to_string(gpus[i]);
    const std::string sizes = "weights " + mib(g.weight_bytes()) + " + " + std::to_string(n) + " instance(s) x " +
                              mib(g.instance_bytes()) + " (activations, workspace and I/O of " +
                              std::to_string(g.batch_sizes().size()) + " batch sizes)";
    const uint64_t budget = c.kiln.memory_budget_bytes;
    if (budget > 0 && total > budget)
      throw Error(ErrorCode::kInvalidArgument, where + " needs " + mib(total) + " (" + sizes +
                                                   "), over its memory_budget_bytes " + std::to_string(budget) + " (" +
                                                   mib(budget) + "); raise the budget, use fewer instances or fewer "
                                                   "kiln.build.gpu_batch_size (see docs/serving.md#memory-budget)");
    const uint64_t free = g.device().free_memory();
    if (need > free)
      throw Error(ErrorCode::kInvalidArgument, where + " needs " + mib(total) + " (" + sizes + ") but only " +
                                                     mib(free) + " are free for the instances after the weights;"
                                                     " use fewer instances or smaller batch sizes");
    loaded.gpu_memory_bytes[gpus[i]] = total;
    loaded.gpu_models[gpus[i]] = built[i];
  }
}

std::shared_ptr<LoadedModel> ModelRepository::load_model_version(const std::string& name, int64_t version) {
  const ModelEntry& m = model(name);
  if (!m.error.empty()) throw Error(ErrorCode::kInvalidArgument, "model \"" + name + "\" is unavailable: " + m.error);
  auto v = std::find_if(m.versions.begin(), m.versions.end(), [&](const auto& e) { return e.version == version; });
  if (v == m.versions.end()) {
    std::string served;
    for (const auto& e : m.versions) served += (served.empty() ? "" : ", ") + std::to_string(e.version);
    throw Error(ErrorCode::kInvalidArgument, "model \"" + name + "\" has no served version " + std::to_string(version) +
                                                 " (served: " + served + "; see docs/serving.md#version-policy)");
  }
  auto record = [&](const std::string& state) {
    std::lock_guard<std::mutex> lock(mu_);
    load_state_[{name, version}] = state;
  };
  try {
    if (!v->error.empty()) throw Error(ErrorCode::kInvalidArgument, v->error);
    // Checked again: the folder may have changed since the scan.
    if (!inside(root_, v->model_file)) throw Error(ErrorCode::kInvalidArgument, escape_reason(v->model_file));

    auto loaded = std::make_shared<LoadedModel>();
    loaded->config = *m.config;
    loaded->version = version;
    loaded->model_file = v->model_file;
    ModelConfig& c = loaded->config;
    const int threads = c.kiln.threads_per_instance > 0 ? c.kiln.threads_per_instance : options_.threads;

    // Where the instances go; the GPU module is only looked for when a group asks for a GPU.
    const bool wants_gpu = std::any_of(c.instance_groups.begin(), c.instance_groups.end(),
                                       [](const InstanceGroup& g) { return g.kind == InstanceKind::kGpu; });
    std::string why_no_gpu;
    const int gpu_count = wants_gpu ? gpu::device_count(&why_no_gpu) : 0;
    loaded->placements = place_instances(c, gpu_count, why_no_gpu);
    std::map<int, int> per_gpu;  // GPU -> instances on it
    uint64_t cpu_instances = 0;
    for (const InstancePlacement& p : loaded->placements) {
      if (p.gpu < 0) ++cpu_instances;
      else ++per_gpu[p.gpu];
    }
    const std::string version_what = "model \"" + name + "\" version " + std::to_string(version);

    std::shared_ptr<EngineRuntime> runtime;
    std::optional<Model> onnx;  // for the GPU builds
    std::optional<LoadedEngine> gpu_engine;
    if (v->format == ModelFormat::kEngine) {
      LoadedEngine e = load_engine(v->model_file);
      check_against_model(c, e.model, &e.info);
      const bool for_gpu = gpu::is_gpu_engine(e.info);
      // An engine runs where it was built for: a CPU engine on KIND_CPU instances, a GPU engine
      // (kiln build --device cuda) on KIND_GPU ones.
      if (for_gpu && cpu_instances > 0)
        throw Error(ErrorCode::kInvalidArgument,
                    version_what + " holds a GPU engine (" + v->model_file.filename().string() +
                        "), which cannot run on its KIND_CPU/KIND_AUTO instances; serve it with KIND_GPU instances, "
                        "or serve model.onnx or a CPU engine");
      if (!for_gpu && !per_gpu.empty())
        throw Error(ErrorCode::kInvalidArgument,
                    version_what + ": KIND_GPU instances need model.onnx or a GPU engine (kiln build --device cuda), "
                                   "but this version holds a CPU engine (" +
                        v->model_file.filename().string() + ")");
      if (for_gpu) {
        loaded->weight_bytes = weight_bytes(e.model);
        gpu_engine = std::move(e);
      } else {
        runtime = std::make_shared<EngineRuntime>(std::move(e.model), std::move(e.info), threads);
      }
    } else {
      Model model = load_onnx(v->model_file);
      check_against_model(c, model, nullptr);  // completes the config, checks the batch dims
      loaded->weight_bytes = weight_bytes(model);
      if (!per_gpu.empty()) onnx = model;
      if (cpu_instances > 0) runtime = build_cpu(name, version, m, *v, c, std::move(model), threads, *loaded);
    }
    if (runtime) {
      runtime->set_batch_split(c.kiln.split_batches);
      loaded->weight_bytes = weight_bytes(runtime->model());
      loaded->activation_bytes = runtime->info().memory_peak;
      loaded->memory_bytes = loaded->weight_bytes + loaded->activation_bytes * cpu_instances;
    }
    const uint64_t budget = c.kiln.memory_budget_bytes;
    if (budget > 0 && runtime && loaded->memory_bytes > budget)
      throw Error(ErrorCode::kInvalidArgument,
                  "model \"" + name + "\" version " + std::to_string(version) + " needs " + mib(loaded->memory_bytes) +
                      " (weights " + mib(loaded->weight_bytes) + " + activations " + mib(loaded->activation_bytes) +
                      " x " + std::to_string(cpu_instances) + " instances), over its memory_budget_bytes " +
                      std::to_string(budget) + " (" + mib(budget) +
                      "); raise the budget or use fewer instances (see docs/serving.md#memory-budget)");
    if (onnx) build_gpu(name, version, *onnx, per_gpu, *loaded);
    if (gpu_engine) build_gpu(name, version, gpu_engine->model, per_gpu, *loaded, &gpu_engine->info);
    loaded->engine = std::move(runtime);
    record("");
    return loaded;
  } catch (const Error& e) {
    record(e.what());
    throw;
  }
}

}  // namespace kiln::serve
