// INT8 post-training calibration: calibration data (the Calibrator interface and the file-backed
// one behind `--calib`), streaming per-tensor histograms, the range each method picks
// (entropy/KL, MinMax, percentile), the calibration run over a model, and the calibration cache.
//
// Ranges are symmetric: a tensor is quantized as q = clamp(round(x / scale)) with scale = amax/127
// for int8, or amax/255 for uint8 when calibration never saw a negative value (post-ReLU tensors).
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "ir/tensor.h"

namespace kiln::quant {

using TensorMap = std::map<std::string, Tensor>;

// ---- Calibration data

// Streams calibration batches. Each batch maps every model input name to a tensor whose dtype and
// non-batch dims match the input's declared type.
class Calibrator {
 public:
  virtual ~Calibrator() = default;
  // Fills `batch` with the next batch; false when the data is exhausted.
  virtual bool next_batch(TensorMap& batch) = 0;
  // Rewinds to the first batch (the accuracy guard reads the data more than once).
  virtual void reset() = 0;
  // Samples (along dim 0) delivered so far since the last reset.
  virtual size_t samples_read() const = 0;
};

// `--calib DATA`: a folder of .npy/.npz files, or one .npz file.
//  - One .npz: each member is named after a model input and stacks samples along dim 0; the
//    calibrator yields batches of `batch_size` samples (the last one may be smaller).
//  - A folder: files in name order; each .npz maps input names to one batch; a .npy is one batch
//    of the model's single input (a model with several inputs needs .npz files).
// A sample whose rank matches the input's rank minus one is taken as one sample (batch 1).
// Validation (throws kInvalidArgument naming the file and member): missing path, empty folder,
// no usable file, unknown or missing input names, dtype or non-batch shape mismatch.
// `max_samples` > 0 stops after that many samples.
class FileCalibrator final : public Calibrator {
 public:
  FileCalibrator(const std::filesystem::path& data, const Model& model, int64_t batch_size = 1,
                 size_t max_samples = 0);
  ~FileCalibrator() override;
  bool next_batch(TensorMap& batch) override;
  void reset() override;
  size_t samples_read() const override;
  // Total samples available (after max_samples).
  size_t sample_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Batches held in memory (each maps every model input to a tensor), yielded in order.
class MemoryCalibrator final : public Calibrator {
 public:
  explicit MemoryCalibrator(std::vector<TensorMap> batches) : batches_(std::move(batches)) {}
  bool next_batch(TensorMap& batch) override {
    if (next_ >= batches_.size()) return false;
    batch = batches_[next_++];
    samples_ += batch.empty() || batch.begin()->second.rank() == 0 ? 1 : static_cast<size_t>(batch.begin()->second.shape()[0]);
    return true;
  }
  void reset() override { next_ = 0, samples_ = 0; }
  size_t samples_read() const override { return samples_; }

 private:
  std::vector<TensorMap> batches_;
  size_t next_ = 0, samples_ = 0;
};

// ---- Methods

enum class CalibMethod { kEntropy, kMinMax, kPercentile };

struct CalibMethodSpec {
  CalibMethod method = CalibMethod::kEntropy;
  double percentile = 99.99;  // kPercentile only, in (0, 100]
};

// "entropy", "minmax", "percentile" (99.99) or "percentile=P". Throws kInvalidArgument.
CalibMethodSpec parse_calib_method(const std::string& text);
std::string to_string(const CalibMethodSpec& spec);  // round-trips through parse_calib_method

// Streaming statistics of one tensor: exact min and max, and a histogram of |x| with kBins equal
// bins over [0, range). The range starts at the first batch's absmax (rounded up to a power of
// two); when a later value exceeds it the range doubles and adjacent bin pairs merge, so one pass
// over the data suffices. NaN values are ignored; +-inf count in min/max but clip into the last bin.
class TensorHistogram {
 public:
  static constexpr int kBins = 2048;
  // The amax of a tensor that never held a nonzero finite value (all zeros, or no data).
  static constexpr float kZeroAmax = 1e-8f;
  void add(const float* data, size_t n);
  uint64_t count() const { return count_; }
  float min() const { return min_; }
  float max() const { return max_; }
  float absmax() const;
  float range() const { return range_; }
  const std::vector<uint64_t>& bins() const { return bins_; }
  // The clipping threshold the method picks (> 0; a tensor that was all zeros gets a tiny positive
  // value so scales stay valid).
  float amax(const CalibMethodSpec& spec) const;

 private:
  std::vector<uint64_t> bins_;
  float range_ = 0, min_ = 0, max_ = 0;
  uint64_t count_ = 0;
};

// KL-divergence threshold search (the entropy method): for each candidate threshold i in
// [levels, bins.size()] (levels = 128 for int8), P is bins[0..i) with the clipped tail added to
// its last bin, Q is P quantized to `levels` levels and expanded back; returns the i minimizing
// KL(P||Q), as a bin count (the threshold is i * bin_width).
size_t entropy_threshold_bin(const std::vector<uint64_t>& bins, int levels = 128);

// ---- Calibration results and the cache

struct TensorRange {
  float amax = 0;           // the clipping threshold
  float min = 0, max = 0;   // observed extremes
  bool is_unsigned() const { return min >= 0.f; }
  float scale() const { return amax / (is_unsigned() ? 255.f : 127.f); }
};

struct CalibrationTable {
  CalibMethodSpec method;
  size_t samples = 0;
  std::string model_fingerprint;  // model_fingerprint() of the model calibrated
  std::map<std::string, TensorRange> ranges;  // by tensor name
};

// A structural fingerprint (hex) of a model: its inputs, outputs and every node's op type, inputs
// and outputs, not its weights. Two builds of the same model agree; another model does not.
std::string model_fingerprint(const Model& model);

// The cache file: readable text, one tensor per line, reusable across builds and machines:
//   kiln-calibration 1 method=entropy samples=256 model=<fingerprint>
//   <amax> <min> <max> <tensor name>       (floats printed with round-trip precision)
// Names go last so they may contain spaces. Lines starting with '#' are comments.
void write_calibration_cache(const std::filesystem::path& path, const CalibrationTable& table);
// Throws kInvalidArgument naming the file and line for a corrupted file (bad header, bad numbers,
// amax <= 0 or not finite, duplicate names); kIo when it cannot be read.
CalibrationTable read_calibration_cache(const std::filesystem::path& path);
// Throws kInvalidArgument when the table was made for another model (fingerprint differs) or
// lacks one of `needed`, naming the cache file (`source`) and what is wrong.
void check_calibration_table(const CalibrationTable& table, const Model& model, const std::vector<std::string>& needed,
                             const std::string& source);

// ---- The calibration run

struct CalibrateOptions {
  CalibMethodSpec method;
  int threads = 0;
  std::function<void(size_t samples)> progress;  // after each batch
};

// Runs `model` (f32; any opt level) over every batch of `data` on the CPU backend and returns the
// range of each tensor named in `tensors` (f32 activations of the model; an unknown name or a
// non-f32 tensor throws kInvalidArgument). Throws kInvalidArgument when data yields no batch.
CalibrationTable calibrate(const Model& model, Calibrator& data, const std::vector<std::string>& tensors,
                           const CalibrateOptions& options);

}  // namespace kiln::quant
