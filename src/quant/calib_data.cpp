// FileCalibrator: calibration batches from `--calib DATA` (one stacked .npz/.npy, or a folder of
// .npy/.npz batches), validated against the model's declared inputs.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <optional>

#include "quant/calibration.h"
#include "util/npy.h"

namespace kiln::quant {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void invalid(const std::string& message) { throw Error(ErrorCode::kInvalidArgument, message); }

std::string lower_ext(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "'" : ", '") + n + "'";
  return s;
}

// Rows [begin, begin + count) of `t` along dim 0, in fresh (aligned) storage.
Tensor slice_rows(const Tensor& t, int64_t begin, int64_t count) {
  std::vector<int64_t> shape = t.shape();
  const size_t row = shape[0] ? t.nbytes() / static_cast<size_t>(shape[0]) : 0;
  shape[0] = count;
  Tensor out(t.dtype(), shape);
  if (out.nbytes())
    std::memcpy(out.mutable_raw(), static_cast<const char*>(t.raw()) + static_cast<size_t>(begin) * row, out.nbytes());
  return out;
}

}  // namespace

struct FileCalibrator::Impl {
  std::string source;                       // the --calib path, for messages
  std::vector<std::string> inputs;          // the model's inputs, in order
  std::map<std::string, TensorType> decl;   // their declared types (absent: anything goes)
  bool stacked = false;

  // One stacked file: every input's samples along dim 0, read once.
  TensorMap all;
  int64_t batch = 1;
  size_t total = 0;   // samples delivered in a full pass (after max_samples)
  size_t cursor = 0;  // next sample (stacked) or next file (folder)
  size_t delivered = 0;

  // A folder: one batch per file.
  struct File {
    fs::path path;
    size_t samples = 0;            // dim 0 delivered from this file
    std::optional<TensorMap> data;  // kept when the whole folder fits the memory budget
  };
  std::vector<File> files;

  // Checks `t` (member `member` of `file`; empty for a .npy) against input `input`. One sample
  // (rank one less than declared) becomes a batch of one. `check_dim0`: the batch dim must match
  // a static declared dim 0 (a folder's batch); a stacked file's dim 0 counts samples instead.
  Tensor check(const std::string& file, const std::string& member, const std::string& input, Tensor t,
               bool check_dim0) const {
    const std::string what =
        "calibration data '" + file + "'" + (member.empty() ? std::string() : ": member '" + member + "'");
    auto it = decl.find(input);
    if (it == decl.end()) {
      if (t.rank() == 0) invalid(what + " is a scalar; calibration data needs a batch dimension");
      return t;
    }
    const TensorType& ty = it->second;
    if (ty.dtype != DType::kUndefined && t.dtype() != ty.dtype)
      invalid(what + " has dtype " + std::string(dtype_name(t.dtype())) + ", the model's input '" + input + "' is " +
              std::string(dtype_name(ty.dtype)));
    if (!ty.shape) {
      if (t.rank() == 0) invalid(what + " is a scalar; calibration data needs a batch dimension");
      return t;
    }
    const Shape& s = *ty.shape;
    if (!s.empty() && t.rank() + 1 == s.size()) {
      std::vector<int64_t> one = t.shape();
      one.insert(one.begin(), 1);
      t = t.reshaped(one);
    }
    const std::string expected = "the model's input '" + input + "' is " + shape_to_string(s);
    if (t.rank() != s.size())
      invalid(what + " has shape " + shape_to_string(t.shape()) + ", " + expected + " (rank " +
              std::to_string(s.size()) + ")");
    if (s.empty()) invalid(what + ": the model's input '" + input + "' is a scalar, which has no batch dimension");
    for (size_t d = check_dim0 ? 0 : 1; d < s.size(); ++d)
      if (s[d].known() && s[d].value != t.dim(d))
        invalid(what + " has shape " + shape_to_string(t.shape()) + ", " + expected + " (dimension " +
                std::to_string(d) + " must be " + std::to_string(s[d].value) + ")" +
                (check_dim0 ? "" : "; the file stacks samples along dimension 0"));
    return t;
  }

  // Maps a file's members to the model's inputs, validating names, dtypes and shapes.
  TensorMap load(const fs::path& path, bool check_dim0) const {
    const std::string file = path.string();
    TensorMap out;
    if (lower_ext(path) == ".npy") {
      if (inputs.size() != 1)
        invalid("calibration data '" + file + "': a .npy file holds one tensor, but the model has " +
                std::to_string(inputs.size()) + " inputs (" + join(inputs) +
                "); use .npz files that name each input");
      out[inputs[0]] = check(file, "", inputs[0], read_npy(path), check_dim0);
      return out;
    }
    for (auto& [name, t] : read_npz(path)) {
      if (std::find(inputs.begin(), inputs.end(), name) == inputs.end())
        invalid("calibration data '" + file + "': member '" + name + "' is not an input of the model (inputs: " +
                join(inputs) + ")");
      out[name] = check(file, name, name, std::move(t), check_dim0);
    }
    for (const auto& in : inputs)
      if (!out.count(in)) invalid("calibration data '" + file + "' has no member for the model's input '" + in + "'");
    return out;
  }

  // Samples in one file's batch: dim 0 of the first input (all inputs must agree).
  size_t samples_of(const std::string& file, const TensorMap& m) const {
    const int64_t n = m.at(inputs[0]).dim(0);
    for (const auto& in : inputs)
      if (m.at(in).dim(0) != n)
        invalid("calibration data '" + file + "': input '" + inputs[0] + "' has " + std::to_string(n) +
                " samples but input '" + in + "' has " + std::to_string(m.at(in).dim(0)) +
                " (dimension 0 counts samples)");
    return static_cast<size_t>(n);
  }

  // A static batch dim shared by the inputs (0 when every batch dim is dynamic).
  int64_t static_batch() const {
    int64_t fixed = 0;
    std::string first;
    for (const auto& in : inputs) {
      auto it = decl.find(in);
      if (it == decl.end() || !it->second.shape || it->second.shape->empty()) continue;
      const Dim& d0 = it->second.shape->front();
      if (!d0.known()) continue;
      if (fixed && d0.value != fixed)
        invalid("calibration data '" + source + "': the model's inputs '" + first + "' and '" + in +
                "' have different fixed batch sizes (" + std::to_string(fixed) + " and " + std::to_string(d0.value) +
                "); calibrate with a folder of batches instead");
      if (!fixed) first = in;
      fixed = d0.value;
    }
    return fixed;
  }

  void open_stacked(const fs::path& path, int64_t batch_size, size_t max_samples) {
    stacked = true;
    all = load(path, /*check_dim0=*/false);
    const size_t n = samples_of(source, all);
    if (n == 0) invalid("calibration data '" + source + "' holds no samples (dimension 0 is 0)");
    batch = batch_size;
    const int64_t fixed = static_batch();
    if (fixed > 0) batch = fixed;  // the model only runs at its fixed batch size
    total = max_samples ? std::min(n, max_samples) : n;
    if (fixed > 0) {
      total -= total % static_cast<size_t>(fixed);  // a partial batch cannot run
      if (total == 0)
        invalid("calibration data '" + source + "' has " + std::to_string(std::min(n, max_samples ? max_samples : n)) +
                " samples, fewer than one batch of " + std::to_string(fixed) +
                " (the model's batch dimension is fixed)");
    }
  }

  void open_folder(const fs::path& dir, size_t max_samples) {
    std::vector<fs::path> paths;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string ext = lower_ext(it->path());
      if ((ext == ".npy" || ext == ".npz") && it->is_regular_file(ec)) paths.push_back(it->path());
    }
    if (ec) throw Error(ErrorCode::kIo, "calibration folder '" + source + "' cannot be listed: " + ec.message());
    if (paths.empty()) invalid("calibration folder '" + source + "' has no .npy or .npz files");
    std::sort(paths.begin(), paths.end(),
              [](const fs::path& a, const fs::path& b) { return a.filename().string() < b.filename().string(); });
    // A file is sliced to what max_samples leaves unless some input's batch dim is fixed.
    bool sliceable = true;
    for (const auto& in : inputs) {
      auto it = decl.find(in);
      if (it != decl.end() && it->second.shape && !it->second.shape->empty() && it->second.shape->front().known())
        sliceable = false;
    }
    constexpr size_t kKeepBytes = size_t{512} << 20;  // keep the data in memory up to this much
    size_t kept = 0;
    for (const auto& p : paths) {
      if (max_samples && total >= max_samples) break;
      TensorMap m = load(p, /*check_dim0=*/true);
      size_t n = samples_of(p.string(), m);
      if (n == 0) invalid("calibration data '" + p.string() + "' holds no samples (dimension 0 is 0)");
      if (max_samples && total + n > max_samples) {
        if (!sliceable) break;
        n = max_samples - total;
        for (auto& [name, t] : m) t = slice_rows(t, 0, static_cast<int64_t>(n));
      }
      File f;
      f.path = p;
      f.samples = n;
      size_t bytes = 0;
      for (const auto& [name, t] : m) bytes += t.nbytes();
      if (kept + bytes <= kKeepBytes) {
        kept += bytes;
        f.data = std::move(m);
      }
      files.push_back(std::move(f));
      total += n;
    }
    if (files.empty())
      invalid("calibration data '" + source + "': max_samples " + std::to_string(max_samples) +
              " is smaller than the first batch, and the model's batch dimension is fixed");
  }
};

FileCalibrator::FileCalibrator(const fs::path& data, const Model& model, int64_t batch_size, size_t max_samples)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.source = data.string();
  s.inputs = model.graph.inputs;
  for (const auto& in : s.inputs)
    if (const TensorType* t = model.graph.type_of(in)) s.decl[in] = *t;
  if (s.inputs.empty()) invalid("calibration data '" + s.source + "': the model has no inputs to feed");
  if (batch_size <= 0) invalid("calibration batch size must be positive, got " + std::to_string(batch_size));
  std::error_code ec;
  const auto st = fs::status(data, ec);
  if (!fs::exists(st)) invalid("calibration data '" + s.source + "' does not exist");
  if (fs::is_directory(st)) {
    s.open_folder(data, max_samples);
    return;
  }
  const std::string ext = lower_ext(data);
  if (ext != ".npz" && ext != ".npy")
    invalid("calibration data '" + s.source + "' is not a folder, a .npz or a .npy file");
  s.open_stacked(data, batch_size, max_samples);
}

FileCalibrator::~FileCalibrator() = default;

bool FileCalibrator::next_batch(TensorMap& batch) {
  Impl& s = *impl_;
  batch.clear();
  if (s.stacked) {
    if (s.cursor >= s.total) return false;
    const size_t k = std::min(static_cast<size_t>(s.batch), s.total - s.cursor);
    for (const auto& [name, t] : s.all)
      batch[name] = slice_rows(t, static_cast<int64_t>(s.cursor), static_cast<int64_t>(k));
    s.cursor += k;
    s.delivered += k;
    return true;
  }
  if (s.cursor >= s.files.size()) return false;
  const Impl::File& f = s.files[s.cursor++];
  if (f.data) {
    batch = *f.data;
  } else {
    // Over the memory budget: read it again (validated again, in case it changed).
    batch = s.load(f.path, /*check_dim0=*/true);
    const size_t n = s.samples_of(f.path.string(), batch);
    if (n < f.samples)
      invalid("calibration data '" + f.path.string() + "' changed while calibrating (it now has " + std::to_string(n) +
              " samples)");
    if (n > f.samples)
      for (auto& [name, t] : batch) t = slice_rows(t, 0, static_cast<int64_t>(f.samples));
  }
  s.delivered += f.samples;
  return true;
}

void FileCalibrator::reset() {
  impl_->cursor = 0;
  impl_->delivered = 0;
}

size_t FileCalibrator::samples_read() const { return impl_->delivered; }

size_t FileCalibrator::sample_count() const { return impl_->total; }

}  // namespace kiln::quant
