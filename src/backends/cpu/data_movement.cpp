// Kiln's data-movement tactics: "kiln.alias" (Reshape, Flatten, Squeeze, Unsqueeze, Identity and
// inference Dropout share their input's buffer), "kiln.transpose", "kiln.concat", "kiln.slice"
// (Slice, Split, Gather, Expand, Tile) and "kiln.resize" (nearest Resize/Upsample).
//
// Most of them are one strided copy: the output is walked densely while the source is read at
// per-dim strides (a permutation, a slice's steps, a broadcast's zeros). The copy engine merges
// dims, then copies whole rows with memcpy when the innermost source stride is 1, transposes 2-D
// tiles when some other dim is source-contiguous, and falls back to a strided row loop.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>

#include "backends/cpu/cpu_kernel.h"
#include "ops/tensor_rules.h"

namespace kiln::cpu {

namespace {

constexpr int64_t kParallelBytes = 64 * 1024;  // smaller copies run serially: a parallel region costs more
constexpr int64_t kTile = 32;                  // transpose tile edge (elements)

bool parallel_worth(int64_t bytes, int64_t tasks) {
  return bytes >= kParallelBytes && tasks > 1 && omp_get_max_threads() > 1;
}

// Runs body(t) for t in [0, tasks), in parallel when the work is large enough.
template <typename Fn>
void parallel_tasks(int64_t tasks, bool parallel, Fn&& body) {
  if (parallel) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) body(t);
  } else {
    for (int64_t t = 0; t < tasks; ++t) body(t);
  }
}

// ---- The strided copy engine.

// dst (dense over `dims`)[i] = src[base + sum(idx_d * strides_d)] for elements of `elem` bytes.
class StridedCopy {
 public:
  StridedCopy() = default;
  StridedCopy(const std::vector<int64_t>& dims, const std::vector<int64_t>& strides, int64_t base, size_t elem)
      : base_(base), elem_(elem) {
    total_ = 1;
    for (int64_t d : dims) total_ *= d;
    // Drop unit dims, merge neighbours that the source walks as one.
    for (size_t d = 0; d < dims.size(); ++d) {
      if (dims[d] == 1) continue;
      if (!dims_.empty() && strides_.back() == strides[d] * dims[d]) {
        dims_.back() *= dims[d];
        strides_.back() = strides[d];
        continue;
      }
      dims_.push_back(dims[d]);
      strides_.push_back(strides[d]);
    }
    if (dims_.empty()) dims_ = {1}, strides_ = {0};
    const size_t nd = dims_.size();
    dst_strides_.assign(nd, 1);
    for (size_t d = nd - 1; d-- > 0;) dst_strides_[d] = dst_strides_[d + 1] * dims_[d + 1];
    // A transpose: a dim other than the innermost that the source reads contiguously, with the
    // innermost source stride not 1. Both edges are tiled so that reads and writes stay in cache.
    if (strides_.back() != 1 && nd >= 2)
      for (size_t d = 0; d + 1 < nd; ++d)
        if (strides_[d] == 1 && dims_[d] >= 4 && dims_.back() >= 4) tile_dim_ = static_cast<int>(d);
  }

  int64_t total() const { return total_; }

  void run(const void* src, void* dst) const {
    if (total_ == 0) return;
    if (!with_element_type(elem_, [&](auto t) { run_typed<decltype(t)>(src, dst); })) run_bytes(src, dst);
  }

  std::string describe() const {
    const char* how = strides_.back() == 1 ? "row memcpy" : tile_dim_ >= 0 ? "tiled transpose" : "strided rows";
    return std::string(how) + " over " + shape_to_string(dims_);
  }

 private:
  // Source offset of the first element of `row` (an index over all dims but the last).
  int64_t row_offset(int64_t row) const {
    int64_t off = base_;
    for (size_t d = dims_.size() - 1; d-- > 0;) {
      off += (row % dims_[d]) * strides_[d];
      row /= dims_[d];
    }
    return off;
  }

  template <typename T>
  void run_typed(const void* src_v, void* dst_v) const {
    const T* src = static_cast<const T*>(src_v);
    T* dst = static_cast<T*>(dst_v);
    const int64_t inner = dims_.back(), s = strides_.back(), rows = total_ / inner;
    const int64_t bytes = total_ * static_cast<int64_t>(sizeof(T));
    if (s == 1) {
      // Rows of contiguous source: memcpy, several rows per task when rows are short.
      const int64_t per = std::max<int64_t>(1, 4096 / (inner * static_cast<int64_t>(sizeof(T))));
      const int64_t tasks = (rows + per - 1) / per;
      parallel_tasks(tasks, parallel_worth(bytes, tasks), [&](int64_t t) {
        for (int64_t r = t * per; r < std::min(rows, (t + 1) * per); ++r)
          std::memcpy(dst + r * inner, src + row_offset(r), static_cast<size_t>(inner) * sizeof(T));
      });
      return;
    }
    if (tile_dim_ >= 0) {
      run_tiled(src, dst);
      return;
    }
    const int64_t per = std::max<int64_t>(1, 1024 / inner);
    const int64_t tasks = (rows + per - 1) / per;
    parallel_tasks(tasks, parallel_worth(bytes, tasks), [&](int64_t t) {
      for (int64_t r = t * per; r < std::min(rows, (t + 1) * per); ++r) {
        const T* p = src + row_offset(r);
        T* q = dst + r * inner;
        if (s == 0)
          std::fill_n(q, inner, *p);
        else
          for (int64_t i = 0; i < inner; ++i) q[i] = p[i * s];
      }
    });
  }

  // 2-D transposes between dim `tile_dim_` (source stride 1) and the innermost dim (destination
  // stride 1), for every index of the other dims.
  template <typename T>
  void run_tiled(const T* src, T* dst) const {
    const size_t nd = dims_.size(), j = static_cast<size_t>(tile_dim_);
    const int64_t rows_n = dims_[j], cols_n = dims_.back();
    const int64_t s_col = strides_.back(), d_row = dst_strides_[j];
    const int64_t rt = (rows_n + kTile - 1) / kTile, ct = (cols_n + kTile - 1) / kTile;
    const int64_t outer = total_ / (rows_n * cols_n);
    const int64_t tasks = outer * rt * ct;
    parallel_tasks(tasks, parallel_worth(total_ * static_cast<int64_t>(sizeof(T)), tasks), [&](int64_t t) {
      int64_t o = t / (rt * ct);
      const int64_t r0 = (t / ct) % rt * kTile, c0 = t % ct * kTile;
      // Offsets of the outer index o over the dims other than j and the innermost.
      int64_t so = base_, dof = 0;
      for (size_t d = nd - 1; d-- > 0;) {
        if (d == j) continue;
        const int64_t idx = o % dims_[d];
        o /= dims_[d];
        so += idx * strides_[d];
        dof += idx * dst_strides_[d];
      }
      const int64_t r1 = std::min(rows_n, r0 + kTile), c1 = std::min(cols_n, c0 + kTile);
      for (int64_t r = r0; r < r1; ++r) {
        const T* p = src + so + r;
        T* q = dst + dof + r * d_row;
        for (int64_t c = c0; c < c1; ++c) q[c] = p[c * s_col];
      }
    });
  }

  void run_bytes(const void* src_v, void* dst_v) const {
    const auto* src = static_cast<const uint8_t*>(src_v);
    auto* dst = static_cast<uint8_t*>(dst_v);
    const int64_t inner = dims_.back(), s = strides_.back(), rows = total_ / inner;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < inner; ++i)
        std::memcpy(dst + (r * inner + i) * elem_, src + (row_offset(r) + i * s) * elem_, elem_);
  }

  std::vector<int64_t> dims_, strides_, dst_strides_;
  int64_t base_ = 0, total_ = 0;
  size_t elem_ = 4;
  int tile_dim_ = -1;
};

// Kernel running one strided copy per output.
class StridedCopyKernel final : public CpuKernel {
 public:
  StridedCopyKernel(std::vector<StridedCopy> copies, std::string what)
      : copies_(std::move(copies)), what_(std::move(what)) {}
  void run(const KernelArgs& args) override {
    for (size_t i = 0; i < copies_.size(); ++i)
      if (args.outputs[i]) copies_[i].run(args.inputs[0], args.outputs[i]);
  }
  std::string describe() const override {
    std::string s = what_ + ": ";
    for (size_t i = 0; i < copies_.size(); ++i) s += (i ? ", " : "") + copies_[i].describe();
    return s;
  }

 private:
  std::vector<StridedCopy> copies_;
  std::string what_;
};

std::vector<int64_t> plain_strides(const std::vector<int64_t>& shape) { return layout_strides(shape, Layout::kPlain); }

int64_t product(const std::vector<int64_t>& v, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end && i < v.size(); ++i) p *= v[i];
  return p;
}

// The integer values of constant input i, or nullopt when it is absent, not constant or not integer.
std::optional<std::vector<int64_t>> const_ints(const KernelConfig& cfg, size_t i) {
  if (!cfg.has_input(i) || !cfg.inputs[i].constant || !dtype_is_integer(cfg.inputs[i].dtype)) return std::nullopt;
  return cfg.inputs[i].constant->to_int64_vector();
}

bool only_output0(const KernelConfig& cfg) {
  if (cfg.outputs.empty() || !cfg.outputs[0].present()) return false;
  for (size_t i = 1; i < cfg.outputs.size(); ++i)
    if (cfg.outputs[i].present()) return false;
  return true;
}

// ---- kiln.alias

class AliasTactic final : public Tactic {
 public:
  std::string name() const override { return "kiln.alias"; }
  bool supports(const KernelConfig& cfg) const override {
    if (!cfg.has_input(0) || !only_output0(cfg)) return false;
    const ValueInfo& in = cfg.inputs[0];
    const ValueInfo& out = cfg.outputs[0];
    if (in.dtype != out.dtype || in.numel() != out.numel()) return false;
    if (cfg.node->op_type == "Dropout" && cfg.opset >= 12 && cfg.has_input(2)) {
      // training_mode must be a constant false: training Dropout draws a random mask.
      const Tensor* t = cfg.inputs[2].constant;
      if (!t || t->dtype() != DType::kBool || t->numel() != 1 || t->data<bool>()[0]) return false;
    }
    return true;
  }
  // Plain only: reshaping channels-last bytes would scramble them (the program reorders first).
  bool aliases_input(const KernelConfig&) const override { return true; }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    // Only used when the program cannot share the buffer (a graph output): a plain copy.
    const int64_t n = cfg.inputs[0].numel();
    std::vector<StridedCopy> c = {StridedCopy({n}, {1}, 0, dtype_size(cfg.inputs[0].dtype))};
    return std::make_unique<StridedCopyKernel>(std::move(c), cfg.node->op_type + " copy");
  }
};

// ---- kiln.transpose

std::optional<std::vector<int64_t>> transpose_perm(const KernelConfig& cfg) {
  const size_t rank = cfg.inputs[0].shape.size();
  std::vector<int64_t> perm = cfg.view().attr_ints("perm");
  if (perm.empty())
    for (size_t i = 0; i < rank; ++i) perm.push_back(static_cast<int64_t>(rank - 1 - i));
  if (perm.size() != rank) return std::nullopt;
  std::vector<bool> seen(rank, false);
  for (int64_t p : perm) {
    if (p < 0 || p >= static_cast<int64_t>(rank) || seen[p]) return std::nullopt;
    seen[p] = true;
  }
  return perm;
}

class TransposeTactic final : public Tactic {
 public:
  std::string name() const override { return "kiln.transpose"; }
  bool supports(const KernelConfig& cfg) const override {
    try {
      if (!cfg.has_input(0) || !only_output0(cfg) || dtype_size(cfg.inputs[0].dtype) == 0) return false;
      const auto perm = transpose_perm(cfg);
      if (!perm) return false;
      for (size_t d = 0; d < perm->size(); ++d)
        if (cfg.outputs[0].shape[d] != cfg.inputs[0].shape[(*perm)[d]]) return false;
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }
  // Any input layout: a channels-last input is read at its physical strides, in the same pass.
  std::vector<Layout> input_layouts(const KernelConfig& cfg) const override {
    return std::vector<Layout>(cfg.inputs.size(), Layout::kAny);
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    const auto perm = transpose_perm(cfg);
    if (!perm) throw Error(ErrorCode::kUnsupported, cfg.node->describe() + ": invalid perm");
    const ValueInfo& in = cfg.inputs[0];
    const Layout l = in.layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
    const std::vector<int64_t> in_strides = layout_strides(in.shape, l);
    std::vector<int64_t> strides(perm->size());
    for (size_t d = 0; d < perm->size(); ++d) strides[d] = in_strides[(*perm)[d]];
    std::vector<StridedCopy> c = {StridedCopy(cfg.outputs[0].shape, strides, 0, dtype_size(in.dtype))};
    return std::make_unique<StridedCopyKernel>(std::move(c), "transpose");
  }
};

// ---- kiln.concat

// Whether every non-constant input of rank >= 3 is channels-last (or stores the same bytes in both
// layouts), and no constant of rank >= 3 would need a reorder: then the concat runs channels-last.
bool concat_channels_last(const KernelConfig& cfg) {
  bool any = false;
  for (const ValueInfo& v : cfg.inputs) {
    if (!v.present()) continue;
    if (v.shape.size() < 3) return false;
    if (layouts_coincide(v.shape)) continue;
    if (v.constant || v.layout != Layout::kChannelsLast) return false;
    any = true;
  }
  return any;
}

class ConcatKernel final : public CpuKernel {
 public:
  ConcatKernel(const KernelConfig& cfg, Layout layout) {
    const ValueInfo& out = cfg.outputs[0];
    const size_t rank = out.shape.size();
    int64_t axis = cfg.view().attr_int("axis");
    if (axis < 0) axis += static_cast<int64_t>(rank);
    elem_ = dtype_size(out.dtype);
    // Physical axis and dims: channels-last stores [N, D1.., C].
    size_t paxis = static_cast<size_t>(axis);
    std::vector<int64_t> pshape = out.shape;
    if (layout == Layout::kChannelsLast && rank >= 3) {
      pshape.clear();
      pshape.push_back(out.shape[0]);
      for (size_t d = 2; d < rank; ++d) pshape.push_back(out.shape[d]);
      pshape.push_back(out.shape[1]);
      paxis = axis == 0 ? 0 : axis == 1 ? rank - 1 : static_cast<size_t>(axis - 1);
    }
    outer_ = product(pshape, 0, paxis);
    const int64_t inner = product(pshape, paxis + 1, rank);
    int64_t dst_off = 0;
    for (size_t i = 0; i < cfg.inputs.size(); ++i) {
      if (!cfg.has_input(i)) continue;
      Part p;
      p.input = static_cast<int>(i);
      p.chunk = cfg.inputs[i].shape[static_cast<size_t>(axis)] * inner * static_cast<int64_t>(elem_);
      p.dst_off = dst_off;
      dst_off += p.chunk;
      parts_.push_back(p);
    }
    row_ = dst_off;
    total_ = row_ * outer_;
    // Few large chunks: split them so that every thread gets work.
    if (outer_ * static_cast<int64_t>(parts_.size()) < 1024) {
      constexpr int64_t kPiece = 256 * 1024;
      for (int64_t o = 0; o < outer_; ++o)
        for (size_t k = 0; k < parts_.size(); ++k)
          for (int64_t b = 0; b < parts_[k].chunk; b += kPiece)
            jobs_.push_back({static_cast<int>(k), o * parts_[k].chunk + b, o * row_ + parts_[k].dst_off + b,
                             std::min(kPiece, parts_[k].chunk - b)});
    }
  }

  void run(const KernelArgs& args) override {
    auto* dst = static_cast<uint8_t*>(args.outputs[0]);
    if (!jobs_.empty()) {
      parallel_tasks(static_cast<int64_t>(jobs_.size()), parallel_worth(total_, static_cast<int64_t>(jobs_.size())),
                     [&](int64_t t) {
                       const Job& j = jobs_[static_cast<size_t>(t)];
                       const auto* src = static_cast<const uint8_t*>(args.inputs[parts_[j.part].input]);
                       std::memcpy(dst + j.dst, src + j.src, static_cast<size_t>(j.bytes));
                     });
      return;
    }
    parallel_tasks(outer_, parallel_worth(total_, outer_), [&](int64_t o) {
      for (const Part& p : parts_) {
        const auto* src = static_cast<const uint8_t*>(args.inputs[p.input]);
        std::memcpy(dst + o * row_ + p.dst_off, src + o * p.chunk, static_cast<size_t>(p.chunk));
      }
    });
  }
  std::string describe() const override {
    return "concat: " + std::to_string(outer_) + " x " + std::to_string(parts_.size()) + " chunk memcpy";
  }

 private:
  struct Part {
    int input;
    int64_t chunk;    // bytes per outer index
    int64_t dst_off;  // byte offset within an output row
  };
  struct Job {
    int part;
    int64_t src, dst, bytes;
  };
  std::vector<Part> parts_;
  std::vector<Job> jobs_;
  int64_t outer_ = 1, row_ = 0, total_ = 0;
  size_t elem_ = 4;
};

class ConcatTactic final : public Tactic {
 public:
  std::string name() const override { return "kiln.concat"; }
  bool supports(const KernelConfig& cfg) const override {
    try {
      if (!only_output0(cfg) || dtype_size(cfg.outputs[0].dtype) == 0) return false;
      const ValueInfo& out = cfg.outputs[0];
      const int64_t rank = static_cast<int64_t>(out.shape.size());
      if (rank == 0) return false;
      int64_t axis = cfg.view().attr_int("axis");
      if (axis < -rank || axis >= rank) return false;
      if (axis < 0) axis += rank;
      int64_t sum = 0;
      bool any = false;
      for (const ValueInfo& v : cfg.inputs) {
        if (!v.present()) continue;
        any = true;
        if (v.dtype != out.dtype || static_cast<int64_t>(v.shape.size()) != rank) return false;
        for (int64_t d = 0; d < rank; ++d)
          if (d != axis && v.shape[d] != out.shape[d]) return false;
        sum += v.shape[axis];
      }
      return any && sum == out.shape[axis];
    } catch (const std::exception&) {
      return false;
    }
  }
  std::vector<Layout> input_layouts(const KernelConfig& cfg) const override {
    const Layout l = concat_channels_last(cfg) ? Layout::kAny : Layout::kPlain;
    std::vector<Layout> want(cfg.inputs.size(), Layout::kPlain);
    for (size_t i = 0; i < cfg.inputs.size(); ++i)
      if (cfg.inputs[i].present() && !cfg.inputs[i].constant) want[i] = l;
    return want;
  }
  std::vector<Layout> output_layouts(const KernelConfig& cfg) const override {
    std::vector<Layout> out(cfg.outputs.size(), Layout::kPlain);
    out[0] = concat_channels_last(cfg) ? Layout::kChannelsLast : Layout::kPlain;
    return out;
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    const Layout l = cfg.outputs[0].layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
    return std::make_unique<ConcatKernel>(cfg, l);
  }
};

// ---- kiln.slice: Slice, Split, Expand, Tile (strided copies) and Gather.

// The strided copies of a Slice / Split / Expand / Tile node (one per output), or nullopt.
std::optional<std::vector<StridedCopy>> slice_copies(const KernelConfig& cfg) {
  using namespace tensor_rules;
  if (!cfg.has_input(0)) return std::nullopt;
  const ValueInfo& in = cfg.inputs[0];
  const size_t elem = dtype_size(in.dtype);
  if (elem == 0) return std::nullopt;
  const NodeView v = cfg.view();
  const std::string& op = cfg.node->op_type;
  const int64_t rank = static_cast<int64_t>(in.shape.size());
  const std::vector<int64_t> strides = plain_strides(in.shape);
  std::vector<StridedCopy> copies;

  if (op == "Slice") {
    if (!only_output0(cfg)) return std::nullopt;
    std::vector<int64_t> starts, ends;
    std::optional<std::vector<int64_t>> axes, steps;
    if (cfg.opset < 10) {
      starts = v.attr_ints("starts");
      ends = v.attr_ints("ends");
      if (v.has_attr("axes")) axes = v.attr_ints("axes");
    } else {
      auto s = const_ints(cfg, 1), e = const_ints(cfg, 2);
      if (!s || !e) return std::nullopt;
      starts = *s;
      ends = *e;
      if (cfg.has_input(3) && !(axes = const_ints(cfg, 3))) return std::nullopt;
      if (cfg.has_input(4) && !(steps = const_ints(cfg, 4))) return std::nullopt;
    }
    std::vector<int64_t> out = in.shape, first(rank, 0), step(rank, 1);
    for (const SliceAxis& s : slice_axes(v, rank, starts, ends, axes, steps)) {
      auto [f, count] = slice_range(in.shape[s.axis], s.start, s.end, s.step);
      out[s.axis] = count;
      first[s.axis] = f;
      step[s.axis] = s.step;
    }
    if (out != cfg.outputs[0].shape) return std::nullopt;
    int64_t base = 0;
    std::vector<int64_t> st(rank);
    for (int64_t d = 0; d < rank; ++d) {
      base += first[d] * strides[d];
      st[d] = strides[d] * step[d];
    }
    copies.emplace_back(out, st, base, elem);
  } else if (op == "Split") {
    // Chunk sizes are the outputs' (concrete) sizes along the axis.
    if (rank == 0) return std::nullopt;
    int64_t axis = v.attr_int("axis");
    if (axis < -rank || axis >= rank) return std::nullopt;
    if (axis < 0) axis += rank;
    int64_t offset = 0;
    for (const ValueInfo& o : cfg.outputs) {
      if (!o.present() || o.dtype != in.dtype || o.shape.size() != in.shape.size()) return std::nullopt;
      for (int64_t d = 0; d < rank; ++d)
        if (d != axis && o.shape[d] != in.shape[d]) return std::nullopt;
      copies.emplace_back(o.shape, strides, offset * strides[axis], elem);
      offset += o.shape[axis];
    }
    if (offset != in.shape[axis]) return std::nullopt;
  } else if (op == "Expand") {
    if (!only_output0(cfg)) return std::nullopt;
    const std::vector<int64_t>& out = cfg.outputs[0].shape;
    if (in.shape.size() > out.size()) return std::nullopt;
    const size_t lead = out.size() - in.shape.size();
    std::vector<int64_t> st(out.size(), 0);
    for (size_t k = 0; k < in.shape.size(); ++k) {
      if (in.shape[k] != 1 && in.shape[k] != out[lead + k]) return std::nullopt;
      if (in.shape[k] != 1) st[lead + k] = strides[k];
    }
    copies.emplace_back(out, st, 0, elem);
  } else if (op == "Tile") {
    // Output dim d of size r * n is viewed as [r, n]: the repeat index walks nothing.
    if (!only_output0(cfg)) return std::nullopt;
    const std::vector<int64_t>& out = cfg.outputs[0].shape;
    if (out.size() != in.shape.size()) return std::nullopt;
    std::vector<int64_t> dims, st;
    for (int64_t d = 0; d < rank; ++d) {
      const int64_t n = in.shape[d];
      if (n == 0 || out[d] % n != 0) return std::nullopt;
      dims.push_back(out[d] / n);
      st.push_back(0);
      dims.push_back(n);
      st.push_back(strides[d]);
    }
    copies.emplace_back(dims, st, 0, elem);
  } else {
    return std::nullopt;
  }
  for (size_t i = 0; i < copies.size(); ++i)
    if (copies[i].total() != cfg.outputs[i].numel()) return std::nullopt;
  return copies;
}

// Gather: out[o, j, i] = data[o, idx[j], i] with outer/inner the dims before/after the axis.
class GatherKernel final : public CpuKernel {
 public:
  explicit GatherKernel(const KernelConfig& cfg) : node_(cfg.node->describe()) {
    const ValueInfo& data = cfg.inputs[0];
    const int64_t rank = static_cast<int64_t>(data.shape.size());
    int64_t axis = cfg.view().attr_int("axis");
    if (axis < 0) axis += rank;
    outer_ = product(data.shape, 0, static_cast<size_t>(axis));
    inner_bytes_ = product(data.shape, static_cast<size_t>(axis) + 1, data.shape.size()) *
                   static_cast<int64_t>(dtype_size(data.dtype));
    dim_ = data.shape[static_cast<size_t>(axis)];
    n_ = cfg.inputs[1].numel();
    i32_ = cfg.inputs[1].dtype == DType::kI32;
    if (cfg.inputs[1].constant) constant_ = normalize(cfg.inputs[1].constant->raw());
  }

  void run(const KernelArgs& args) override {
    const std::vector<int64_t> idx = constant_ ? *constant_ : normalize(args.inputs[1]);
    const auto* src = static_cast<const uint8_t*>(args.inputs[0]);
    auto* dst = static_cast<uint8_t*>(args.outputs[0]);
    const int64_t tasks = outer_ * n_;
    parallel_tasks(tasks, parallel_worth(tasks * inner_bytes_, tasks), [&](int64_t t) {
      const int64_t o = t / n_, j = t % n_;
      std::memcpy(dst + t * inner_bytes_, src + (o * dim_ + idx[static_cast<size_t>(j)]) * inner_bytes_,
                  static_cast<size_t>(inner_bytes_));
    });
  }
  std::string describe() const override { return "gather: " + std::to_string(outer_ * n_) + " row memcpy"; }

 private:
  // Indices made non-negative; out of range fails like the reference kernel.
  std::vector<int64_t> normalize(const void* p) const {
    std::vector<int64_t> idx(static_cast<size_t>(n_));
    for (int64_t j = 0; j < n_; ++j) {
      int64_t v = i32_ ? static_cast<const int32_t*>(p)[j] : static_cast<const int64_t*>(p)[j];
      if (v < -dim_ || v >= dim_)
        throw Error(ErrorCode::kInvalidModel, node_ + ": Gather index " + std::to_string(v) +
                                                  " is out of range for a dimension of size " + std::to_string(dim_));
      idx[static_cast<size_t>(j)] = v < 0 ? v + dim_ : v;
    }
    return idx;
  }

  std::string node_;
  int64_t outer_ = 1, inner_bytes_ = 0, dim_ = 0, n_ = 0;
  bool i32_ = false;
  std::optional<std::vector<int64_t>> constant_;
};

bool gather_supported(const KernelConfig& cfg) {
  if (!cfg.has_input(0) || !cfg.has_input(1) || !only_output0(cfg)) return false;
  const ValueInfo& data = cfg.inputs[0];
  const ValueInfo& idx = cfg.inputs[1];
  if (dtype_size(data.dtype) == 0 || (idx.dtype != DType::kI64 && idx.dtype != DType::kI32)) return false;
  const int64_t rank = static_cast<int64_t>(data.shape.size());
  if (rank == 0) return false;
  int64_t axis = cfg.view().attr_int("axis");
  if (axis < -rank || axis >= rank) return false;
  if (axis < 0) axis += rank;
  std::vector<int64_t> out(data.shape.begin(), data.shape.begin() + axis);
  out.insert(out.end(), idx.shape.begin(), idx.shape.end());
  out.insert(out.end(), data.shape.begin() + axis + 1, data.shape.end());
  return out == cfg.outputs[0].shape && cfg.outputs[0].dtype == data.dtype;
}

class SliceTactic final : public Tactic {
 public:
  std::string name() const override { return "kiln.slice"; }
  bool supports(const KernelConfig& cfg) const override {
    try {
      if (cfg.node->op_type == "Gather") return gather_supported(cfg);
      return slice_copies(cfg).has_value();
    } catch (const std::exception&) {
      return false;
    }
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    if (cfg.node->op_type == "Gather") return std::make_unique<GatherKernel>(cfg);
    auto copies = slice_copies(cfg);
    if (!copies) throw Error(ErrorCode::kUnsupported, cfg.node->describe() + ": not supported by kiln.slice");
    return std::make_unique<StridedCopyKernel>(std::move(*copies), cfg.node->op_type);
  }
};

// ---- kiln.resize: nearest-neighbour Resize / Upsample through per-axis index tables.

struct NearestParams {
  bool legacy = false;  // Upsample and Resize-10: asymmetric coordinates, floor (ceil when shrinking)
  std::string coord, nearest_mode;
};

// The source index of output coordinate x along an axis, as the reference computes it
// (src/backends/reference/resize.cpp): in double, then the nearest_mode rounding, clamped.
int64_t nearest_source(const NearestParams& p, int64_t x, int64_t in, int64_t out, double scale) {
  const double xd = static_cast<double>(x), in_d = static_cast<double>(in);
  double xo;
  if (p.legacy) {
    xo = xd / scale;
  } else {
    const double out_w = scale * in_d;
    const std::string& c = p.coord;
    if (c == "half_pixel") {
      xo = (xd + 0.5) / scale - 0.5;
    } else if (c == "half_pixel_symmetric") {
      const double adjustment = static_cast<double>(out) / out_w;
      const double offset = in_d / 2 * (1 - adjustment);
      xo = offset + (xd + 0.5) / scale - 0.5;
    } else if (c == "pytorch_half_pixel") {
      xo = out_w == 1 ? -0.5 : (xd + 0.5) / scale - 0.5;
    } else if (c == "align_corners") {
      xo = out_w == 1 ? 0.0 : xd * (in_d - 1) / (out_w - 1);
    } else if (c == "asymmetric") {
      xo = xd / scale;
    } else {  // tf_half_pixel_for_nn
      xo = (xd + 0.5) / scale;
    }
  }
  const double f = std::floor(xo), ratio = xo - f;
  double pick;
  if (p.legacy)
    pick = scale < 1 ? std::ceil(xo) : f;
  else if (ratio == 0)
    pick = xo;
  else if (p.nearest_mode == "round_prefer_floor")
    pick = ratio <= 0.5 ? f : f + 1;
  else if (p.nearest_mode == "round_prefer_ceil")
    pick = ratio < 0.5 ? f : f + 1;
  else if (p.nearest_mode == "floor")
    pick = f;
  else
    pick = f + 1;
  return std::clamp<int64_t>(static_cast<int64_t>(pick), 0, in - 1);
}

// For every logical axis, the source index of each output coordinate; nullopt when unsupported.
std::optional<std::vector<std::vector<int64_t>>> resize_tables(const KernelConfig& cfg) {
  using namespace tensor_rules;
  if (!cfg.has_input(0) || !only_output0(cfg) || dtype_size(cfg.inputs[0].dtype) == 0) return std::nullopt;
  const NodeView v = cfg.view();
  const bool upsample = cfg.node->op_type == "Upsample";
  NearestParams p;
  p.legacy = upsample || cfg.opset < 11;
  if (v.attr_string("mode") != "nearest") return std::nullopt;
  if (!p.legacy) {
    p.coord = v.attr_string("coordinate_transformation_mode");
    static const char* coords[] = {"half_pixel",    "half_pixel_symmetric", "pytorch_half_pixel",
                                   "align_corners", "asymmetric",           "tf_half_pixel_for_nn"};
    if (std::find(std::begin(coords), std::end(coords), p.coord) == std::end(coords)) return std::nullopt;
    if (p.coord == "half_pixel_symmetric" && cfg.opset < 19) return std::nullopt;
    p.nearest_mode = v.attr_string("nearest_mode");
    if (p.nearest_mode != "round_prefer_floor" && p.nearest_mode != "round_prefer_ceil" && p.nearest_mode != "floor" &&
        p.nearest_mode != "ceil")
      return std::nullopt;
  }
  std::optional<std::vector<double>> scales;
  std::optional<std::vector<int64_t>> sizes;
  auto const_input = [&](size_t i) -> const Tensor* {
    if (!cfg.has_input(i) || cfg.inputs[i].numel() == 0) return nullptr;
    return cfg.inputs[i].constant;
  };
  auto nonempty = [&](size_t i) { return cfg.has_input(i) && cfg.inputs[i].numel() > 0; };
  if (upsample && cfg.opset < 9) {
    const auto& f = v.attr_floats("scales");
    scales = std::vector<double>(f.begin(), f.end());
  } else {
    const size_t si = p.legacy ? 1 : 2;
    if (nonempty(si)) {
      const Tensor* t = const_input(si);
      if (!t || !dtype_is_float(t->dtype())) return std::nullopt;
      scales = t->to_double_vector();
    }
    if (!p.legacy && nonempty(3)) {
      const Tensor* t = const_input(3);
      if (!t || !dtype_is_integer(t->dtype())) return std::nullopt;
      sizes = t->to_int64_vector();
    }
  }
  if (scales && sizes) return std::nullopt;
  const std::vector<int64_t>& in = cfg.inputs[0].shape;
  const ResizeGeometry g = resize_geometry(v, in, scales, sizes);
  if (g.out != cfg.outputs[0].shape) return std::nullopt;
  const std::vector<int64_t> axes = resize_axes(v, static_cast<int64_t>(in.size()));
  std::vector<std::vector<int64_t>> tables(in.size());
  for (size_t a = 0; a < in.size(); ++a) {
    const int64_t out = g.out[a];
    auto& t = tables[a];
    t.resize(static_cast<size_t>(out));
    const bool resized = std::find(axes.begin(), axes.end(), static_cast<int64_t>(a)) != axes.end();
    for (int64_t x = 0; x < out; ++x)
      t[static_cast<size_t>(x)] = resized && in[a] > 0 ? nearest_source(p, x, in[a], out, g.scale[a]) : x;
  }
  return tables;
}

class ResizeKernel final : public CpuKernel {
 public:
  ResizeKernel(const KernelConfig& cfg, const std::vector<std::vector<int64_t>>& tables)
      : elem_(dtype_size(cfg.inputs[0].dtype)) {
    const Layout l = cfg.inputs[0].layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
    const std::vector<int64_t>& in = cfg.inputs[0].shape;
    const size_t rank = in.size();
    const std::vector<int64_t> in_strides = layout_strides(in, l);
    // Physical order: the logical dim of each physical dim.
    std::vector<size_t> order(rank);
    for (size_t i = 0; i < rank; ++i) order[i] = i;
    if (l == Layout::kChannelsLast && rank >= 3) {
      for (size_t i = 1; i + 1 < rank; ++i) order[i] = i + 1;
      order[rank - 1] = 1;
    }
    // Per physical dim: source offsets (in elements) of each output coordinate.
    for (size_t d = 0; d < rank; ++d) {
      std::vector<int64_t> off;
      for (int64_t s : tables[order[d]]) off.push_back(s * in_strides[order[d]]);
      offsets_.push_back(std::move(off));
    }
    if (rank == 0) offsets_.push_back({0});
    inner_ = static_cast<int64_t>(offsets_.back().size());
    total_ = 1;
    for (const auto& o : offsets_) total_ *= static_cast<int64_t>(o.size());
    // The innermost dim copies whole runs when it is not resized and contiguous (channels-last C).
    inner_contiguous_ = true;
    for (int64_t i = 0; i < inner_; ++i) inner_contiguous_ = inner_contiguous_ && offsets_.back()[i] == i;
  }

  void run(const KernelArgs& args) override {
    if (total_ == 0) return;
    if (!with_element_type(elem_, [&](auto t) { run_typed<decltype(t)>(args); }))
      throw Error(ErrorCode::kInternal, "unsupported element size " + std::to_string(elem_));
  }
  std::string describe() const override {
    return std::string("nearest resize: ") + (inner_contiguous_ ? "row memcpy" : "row gather") +
           ", repeated rows copied";
  }

 private:
  int64_t row_source(int64_t row) const {
    int64_t off = 0;
    for (size_t d = offsets_.size() - 1; d-- > 0;) {
      const int64_t n = static_cast<int64_t>(offsets_[d].size());
      off += offsets_[d][static_cast<size_t>(row % n)];
      row /= n;
    }
    return off;
  }

  template <typename T>
  void run_typed(const KernelArgs& args) {
    const T* src = static_cast<const T*>(args.inputs[0]);
    T* dst = static_cast<T*>(args.outputs[0]);
    const int64_t rows = total_ / inner_;
    const std::vector<int64_t>& inner_off = offsets_.back();
    // Rows in contiguous chunks per task: a row reading the same source row as the previous one
    // (an integer upsample) is a memcpy of that output row.
    const int64_t per = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, inner_));
    const int64_t tasks = (rows + per - 1) / per;
    parallel_tasks(tasks, parallel_worth(total_ * static_cast<int64_t>(sizeof(T)), tasks), [&](int64_t t) {
      int64_t prev = -1;
      for (int64_t r = t * per; r < std::min(rows, (t + 1) * per); ++r) {
        const int64_t s = row_source(r);
        T* q = dst + r * inner_;
        if (s == prev) {
          std::memcpy(q, q - inner_, static_cast<size_t>(inner_) * sizeof(T));
        } else if (inner_contiguous_) {
          std::memcpy(q, src + s, static_cast<size_t>(inner_) * sizeof(T));
        } else {
          const T* p = src + s;
          for (int64_t i = 0; i < inner_; ++i) q[i] = p[inner_off[static_cast<size_t>(i)]];
        }
        prev = s;
      }
    });
  }

  size_t elem_;
  std::vector<std::vector<int64_t>> offsets_;
  int64_t inner_ = 1, total_ = 0;
  bool inner_contiguous_ = false;
};

class ResizeTactic final : public Tactic {
 public:
  std::string name() const override { return "kiln.resize"; }
  bool supports(const KernelConfig& cfg) const override {
    try {
      return resize_tables(cfg).has_value();
    } catch (const std::exception&) {
      return false;
    }
  }
  // Any input layout; the output keeps it (nearest resize moves whole channel vectors).
  std::vector<Layout> input_layouts(const KernelConfig& cfg) const override {
    std::vector<Layout> want(cfg.inputs.size(), Layout::kPlain);
    want[0] = Layout::kAny;
    return want;
  }
  std::vector<Layout> output_layouts(const KernelConfig& cfg) const override {
    std::vector<Layout> out(cfg.outputs.size(), Layout::kPlain);
    if (cfg.inputs[0].layout == Layout::kChannelsLast) out[0] = Layout::kChannelsLast;
    return out;
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    const auto tables = resize_tables(cfg);
    if (!tables) throw Error(ErrorCode::kUnsupported, cfg.node->describe() + ": not supported by kiln.resize");
    return std::make_unique<ResizeKernel>(cfg, *tables);
  }
};

}  // namespace

void register_data_movement_tactics(TacticRegistry& r) {
  auto alias = std::make_shared<AliasTactic>();
  for (const char* op : {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}) r.add("", op, alias);
  r.add("", "Transpose", std::make_shared<TransposeTactic>());
  r.add("", "Concat", std::make_shared<ConcatTactic>());
  auto slice = std::make_shared<SliceTactic>();
  for (const char* op : {"Slice", "Split", "Gather", "Expand", "Tile"}) r.add("", op, slice);
  auto resize = std::make_shared<ResizeTactic>();
  r.add("", "Resize", resize);
  r.add("", "Upsample", resize);
}

}  // namespace kiln::cpu
