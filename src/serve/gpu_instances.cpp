// GPU instances of a served model (see gpu_instances.h).
#include "serve/gpu_instances.h"

#include <algorithm>
#include <set>

#include "backends/gpu/gpu_build.h"
#include "backends/gpu/gpu_engine.h"
#include "backends/gpu/loader.h"
#include "kiln/error.h"

namespace kiln::serve {
namespace {

std::string dq(const std::string& s) { return "\"" + s + "\""; }

std::string dims_text(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

}  // namespace

std::vector<InstancePlacement> place_instances(const ModelConfig& c, int gpu_count, const std::string& why_no_gpu) {
  std::vector<InstancePlacement> out;
  for (const InstanceGroup& g : c.instance_groups) {
    if (g.kind != InstanceKind::kGpu) {
      for (int i = 0; i < g.count; ++i) out.push_back({g.name, -1});
      continue;
    }
    const std::string what = "model " + dq(c.name) + " instance_group " + dq(g.name);
    if (gpu_count == 0)
      throw Error(ErrorCode::kInvalidArgument,
                  what + " asks for KIND_GPU but this host has no usable GPU (" +
                      (why_no_gpu.empty() ? std::string("no CUDA GPU") : why_no_gpu) + "); use KIND_CPU");
    std::vector<int> gpus = g.gpus;
    if (gpus.empty())
      for (int d = 0; d < gpu_count; ++d) gpus.push_back(d);
    for (int d : gpus)
      if (d >= gpu_count)
        throw Error(ErrorCode::kInvalidArgument, what + " lists GPU " + std::to_string(d) + " but this host has " +
                                                     std::to_string(gpu_count) + " GPU(s) (0.." +
                                                     std::to_string(gpu_count - 1) + ")");
    // Instances alternate over the GPUs (g0 on each GPU, then g1 ...), so the first idle instance the
    // batcher finds is spread over the GPUs too.
    for (int i = 0; i < g.count; ++i)
      for (int d : gpus) out.push_back({g.name, d});
  }
  return out;
}

std::vector<int64_t> gpu_batch_sizes(const ModelConfig& c) {
  if (c.max_batch_size <= 0) return {0};
  std::set<int64_t> sizes;
  if (!c.kiln.build.gpu_batch_sizes.empty()) {
    sizes.insert(c.kiln.build.gpu_batch_sizes.begin(), c.kiln.build.gpu_batch_sizes.end());
  } else {
    for (int64_t b = 1; b < c.max_batch_size; b *= 2) sizes.insert(b);
    if (c.dynamic_batching)
      for (int p : c.dynamic_batching->preferred_batch_size) sizes.insert(p);
  }
  sizes.insert(c.max_batch_size);  // every batch the batcher forms must fit one program
  return {sizes.begin(), sizes.end()};
}

void GpuModel::add_program(int64_t b, std::shared_ptr<const gpu::GpuProgram> program) {
  const gpu::GpuProgram& p = *program;
  // Batches are padded and cut along dim 0, so every edge tensor must lead with the batch.
  if (batching_)
    for (const auto* list : {&p.inputs(), &p.outputs()})
      for (const auto& d : *list)
        if (d.shape.empty() || d.shape[0] != b)
          throw Error(ErrorCode::kInvalidArgument,
                      "'" + d.name + "' has shape " + dims_text(d.shape) + " at batch " + std::to_string(b) +
                          "; GPU batching needs the batch dim first in every input and output");
  size_t io = 0;
  for (const auto& d : p.inputs()) io += d.bytes();
  for (const auto& d : p.outputs()) io += d.bytes();
  instance_bytes_ += p.arena_bytes() + p.workspace_bytes() + io;
  programs_[b] = std::move(program);
}

GpuModel::GpuModel(const Model& model, const ModelConfig& c, int gpu, const EngineInfo* engine)
    : gpu_(gpu), batching_(c.max_batch_size > 0) {
  const std::string what = "model " + dq(c.name) + " on GPU " + std::to_string(gpu);
  for (const TensorConfig& in : c.inputs) {
    if (std::any_of(in.dims.begin(), in.dims.end(), [](int64_t d) { return d < 0; }))
      throw Error(ErrorCode::kInvalidArgument,
                  what + ": input " + dq(in.name) + " has dims " + dims_text(in.dims) +
                      "; GPU programs have fixed shapes, so give every dim besides the batch dim a size in the "
                      "config's input dims");
    shapes_[in.name] = in.dims;
  }
  device_ = gpu::open_device(gpu);
  pool_ = std::make_shared<gpu::WeightPool>(device_);
  if (engine) {
    // A GPU engine: its one program, at its shapes.
    try {
      gpu::LoadedGpuEngine e = gpu::load_gpu_engine(model, *engine, gpu, pool_);
      int64_t b = 0;
      for (const auto& [name, dims] : e.shapes) {
        auto it = shapes_.find(name);
        std::vector<int64_t> rest(dims.begin() + (batching_ && !dims.empty() ? 1 : 0), dims.end());
        if (it == shapes_.end() || it->second != rest || (batching_ && dims.empty()))
          throw Error(ErrorCode::kInvalidArgument,
                      "the GPU engine was built for input '" + name + "' of shape " + dims_text(dims) +
                          ", which does not match the config's dims " +
                          (it == shapes_.end() ? std::string("(no such input)") : dims_text(it->second)) +
                          (batching_ ? " after the batch dim" : ""));
        if (batching_) b = dims[0];
      }
      if (batching_ && b < c.max_batch_size)
        throw Error(ErrorCode::kInvalidArgument,
                    "the GPU engine was built for batch " + std::to_string(b) + ", below max_batch_size " +
                        std::to_string(c.max_batch_size) + "; rebuild it with --shapes at batch " +
                        std::to_string(c.max_batch_size) + " (smaller batches run on it padded)");
      batches_ = {batching_ ? b : 0};
      add_program(batches_[0], std::move(e.program));
    } catch (const Error& e) {
      throw Error(e.code(), what + ": " + e.what());
    }
    return;
  }
  gpu::CompileOptions options;
  options.precision = gpu::parse_precision(c.kiln.build.precision);
  options.weights = pool_;
  batches_ = gpu_batch_sizes(c);
  for (int64_t b : batches_) {
    gpu::ShapeMap shapes;
    for (const auto& [name, dims] : shapes_) {
      std::vector<int64_t> s;
      if (batching_) s.push_back(b);
      s.insert(s.end(), dims.begin(), dims.end());
      shapes[name] = std::move(s);
    }
    try {
      add_program(b, gpu::build_gpu_program(model, shapes, gpu, options, c.kiln.build.opt_level).program);
    } catch (const Error& e) {
      throw Error(e.code(), what + (batching_ ? ", batch size " + std::to_string(b) : std::string()) + ": " + e.what());
    }
  }
}

InstanceFns GpuModel::make_instance() {
  // One context per program; each runs once on zeros here so its CUDA graph is captured at load.
  auto contexts = std::make_shared<std::map<int64_t, std::unique_ptr<gpu::GpuContext>>>();
  for (const auto& [b, program] : programs_) {
    auto ctx = std::make_unique<gpu::GpuContext>(program);
    reference::TensorMap zeros;
    for (const auto& d : program->inputs()) {
      zeros[d.name] = Tensor(d.dtype, d.shape);  // zero-filled
    }
    ctx->run(zeros);
    (*contexts)[b] = std::move(ctx);
  }
  const bool batching = batching_;
  auto counters = counters_;
  // The context of the smallest compiled batch that holds `rows`; counts the run once it is done.
  auto pick = [contexts](int64_t rows) -> std::pair<int64_t, gpu::GpuContext*> {
    auto it = contexts->lower_bound(rows);
    if (rows < 1 || it == contexts->end())
      throw Error(ErrorCode::kInvalidArgument, "a batch of " + std::to_string(rows) + " rows has no GPU program (largest " +
                                                   std::to_string(contexts->rbegin()->first) + ")");
    return {it->first, it->second.get()};
  };
  auto count = [counters](const gpu::GpuContext& ctx, int64_t rows, int64_t padded) {
    counters->executions++;
    counters->rows += static_cast<uint64_t>(rows);
    counters->padded_rows += static_cast<uint64_t>(padded);
    counters->compute_us += static_cast<uint64_t>(ctx.last_timing().compute_ms * 1000.0f);
    counters->direct_input_bytes += ctx.last_timing().direct_bytes;
    counters->staged_input_bytes += ctx.last_timing().staged_bytes;
  };
  ExecuteFn run = [contexts, batching, pick, count](const TensorMap& in) -> TensorMap {
    if (!batching) {
      gpu::GpuContext& ctx = *contexts->begin()->second;
      TensorMap out = ctx.run(in);
      count(ctx, 1, 0);
      return out;
    }
    const int64_t rows = in.empty() || in.begin()->second.shape().empty() ? 0 : in.begin()->second.shape()[0];
    auto [size, ctx] = pick(rows);
    TensorMap out = ctx->run_rows(in, rows);
    count(*ctx, rows, size - rows);
    return out;
  };
  if (!batching) return run;
  // Several requests: each one's rows go straight into the context's pinned staging buffers.
  ExecutePartsFn run_parts = [pick, count](const std::vector<const TensorMap*>& parts, int64_t rows) -> TensorMap {
    auto [size, ctx] = pick(rows);
    TensorMap out = ctx->run_parts(parts, rows);
    count(*ctx, rows, size - rows);
    return out;
  };
  return InstanceFns(std::move(run), std::move(run_parts));
}

void GpuModel::check_shapes(const std::map<std::string, std::vector<int64_t>>& shapes) const {
  for (const auto& [name, shape] : shapes) {
    auto it = shapes_.find(name);
    if (it == shapes_.end()) throw Error(ErrorCode::kInvalidArgument, "input " + dq(name) + " is not an input of the model");
    std::vector<int64_t> rest = shape;
    if (batching_) {
      if (rest.empty() || rest[0] < 1)
        throw Error(ErrorCode::kInvalidArgument, "input " + dq(name) + " has no batch dim");
      if (rest[0] > batches_.back())
        throw Error(ErrorCode::kInvalidArgument, "input " + dq(name) + " has a batch of " + std::to_string(rest[0]) +
                                                     ", over the largest GPU batch " + std::to_string(batches_.back()));
      rest.erase(rest.begin());
    }
    if (rest != it->second) {
      std::string want = dims_text(it->second);
      if (batching_) want = it->second.empty() ? "[batch]" : "[batch, " + want.substr(1);
      throw Error(ErrorCode::kInvalidArgument,
                  "input " + dq(name) + " has shape " + dims_text(shape) + " but the GPU program takes " + want);
    }
  }
}

GpuModelStats GpuModel::stats() const {
  GpuModelStats s;
  s.executions = counters_->executions;
  s.rows = counters_->rows;
  s.padded_rows = counters_->padded_rows;
  s.compute_us = counters_->compute_us;
  s.direct_input_bytes = counters_->direct_input_bytes;
  s.staged_input_bytes = counters_->staged_input_bytes;
  return s;
}

}  // namespace kiln::serve
