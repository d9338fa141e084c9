// INT8 calibration (src/quant/calibration.h): histograms and range growth, the MinMax, percentile
// and entropy thresholds, method parsing, the calibration cache and its errors, model
// fingerprints, FileCalibrator's data layouts and errors, and calibrate() on the CPU backend.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>

#include "quant/calibration.h"
#include "test_support.h"
#include "util/npy.h"

namespace fs = std::filesystem;
using namespace kiln;
using namespace kiln::quant;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

fs::path make_temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  fs::path dir = fs::temp_directory_path() /
                 ("kiln_calib_test_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  fs::create_directories(dir);
  return dir;
}

struct TempDir {
  explicit TempDir(const std::string& tag) : path(make_temp_dir(tag)) {}
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path path;
};

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
}

// Runs `fn`, expecting a kiln::Error of `code` whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn&& fn, ErrorCode code, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown; expected one containing '" << (parts.empty() ? "" : parts[0]) << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\n  lacks: " << p;
  }
}

Tensor floats(std::vector<int64_t> shape, const std::vector<float>& v) { return Tensor::from_vector<float>(shape, v); }

// Rows numbered: element (r, c) = 100 * r + c, so a batch shows which samples it holds.
Tensor numbered(int64_t rows, int64_t cols, float base = 0) {
  std::vector<float> v;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) v.push_back(base + 100.f * r + c);
  return floats({rows, cols}, v);
}

std::vector<float> first_column(const Tensor& t) {
  std::vector<float> out;
  const float* p = t.data<float>();
  for (int64_t r = 0; r < t.dim(0); ++r) out.push_back(p[r * (t.numel() / t.dim(0))]);
  return out;
}

Model one_input_model(Shape shape = {Dim::sym("batch"), 3}) {
  kiln_test::ModelBuilder b(17);
  b.input("x", DType::kF32, std::move(shape)).node("Relu", {"x"}, {"y"});
  return b.m;
}

Model two_input_model() {
  kiln_test::ModelBuilder b(17);
  b.input("x", DType::kF32, {Dim::sym("batch"), 3}).input("z", DType::kF32, {Dim::sym("batch"), 2});
  b.node("Relu", {"x"}, {"y"}).node("Relu", {"z"}, {"w"}, {}, "n2");
  return b.m;
}

// ---------------------------------------------------------------------------------------------
// TensorHistogram

TEST(CalibHistogram, CountsMinMaxAndBins) {
  TensorHistogram h;
  const std::vector<float> v = {-3.f, 0.5f, 2.f, kNaN, 1.f, 0.f};
  h.add(v.data(), v.size());
  EXPECT_EQ(h.count(), 5u);  // the NaN is ignored
  EXPECT_EQ(h.min(), -3.f);
  EXPECT_EQ(h.max(), 2.f);
  EXPECT_EQ(h.absmax(), 3.f);
  EXPECT_EQ(h.range(), 4.f);  // the power of two above 3
  ASSERT_EQ(h.bins().size(), 2048u);
  // Bin width 4/2048 = 1/512: |x| lands in bin floor(|x| * 512).
  std::vector<uint64_t> expected(2048, 0);
  expected[1536] = 1;  // 3
  expected[256] = 1;   // 0.5
  expected[1024] = 1;  // 2
  expected[512] = 1;   // 1
  expected[0] = 1;     // 0
  EXPECT_EQ(h.bins(), expected);
}

TEST(CalibHistogram, RangeIsStrictlyAboveAPowerOfTwoMaximum) {
  TensorHistogram h;
  const float one = 1.f;
  h.add(&one, 1);
  EXPECT_EQ(h.range(), 2.f);  // [0, range) must hold 1.0
  EXPECT_EQ(h.bins()[1024], 1u);
}

// Values at bin centres of the final range: a histogram that grew (and merged bin pairs) must
// equal one built at the final range in one go, and keep its total.
TEST(CalibHistogram, GrowingRangeMergesBinPairs) {
  const float final_width = 64.f / 2048;  // the final range is 64 (absmax 40)
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> small_bin(0, 30), any_bin(0, 1279);
  std::vector<float> a, b, c;
  for (int i = 0; i < 500; ++i) a.push_back((small_bin(rng) + 0.5f) * final_width * (i % 2 ? 1 : -1));  // < 1
  for (int i = 0; i < 700; ++i) b.push_back((any_bin(rng) % 200 + 0.5f) * final_width);  // < 7
  for (int i = 0; i < 300; ++i) c.push_back(-(any_bin(rng) + 0.5f) * final_width);      // < 40
  TensorHistogram grown;
  grown.add(a.data(), a.size());
  EXPECT_EQ(grown.range(), 1.f);
  grown.add(b.data(), b.size());
  EXPECT_EQ(grown.range(), 8.f);
  grown.add(c.data(), c.size());
  EXPECT_EQ(grown.range(), 64.f);

  std::vector<float> all = a;
  all.insert(all.end(), b.begin(), b.end());
  all.insert(all.end(), c.begin(), c.end());
  TensorHistogram fresh;
  fresh.add(all.data(), all.size());
  EXPECT_EQ(fresh.range(), 64.f);
  EXPECT_EQ(grown.bins(), fresh.bins());
  EXPECT_EQ(grown.count(), 1500u);
  uint64_t total = 0;
  for (uint64_t n : grown.bins()) total += n;
  EXPECT_EQ(total, 1500u);
  EXPECT_EQ(grown.min(), fresh.min());
  EXPECT_EQ(grown.max(), fresh.max());
  // Direct check of one bin: value (k + 0.5) * width is in bin k of the final histogram.
  std::vector<uint64_t> expected(2048, 0);
  for (float x : all) ++expected[static_cast<size_t>(std::fabs(x) / final_width)];
  EXPECT_EQ(grown.bins(), expected);
}

TEST(CalibHistogram, ZerosBeforeTheFirstNonzeroValue) {
  TensorHistogram h;
  const std::vector<float> zeros(5, 0.f);
  h.add(zeros.data(), zeros.size());
  EXPECT_EQ(h.count(), 5u);
  EXPECT_EQ(h.range(), 0.f);
  EXPECT_EQ(h.amax({CalibMethod::kMinMax}), TensorHistogram::kZeroAmax);
  EXPECT_EQ(h.amax({CalibMethod::kEntropy}), TensorHistogram::kZeroAmax);
  EXPECT_EQ(h.amax({CalibMethod::kPercentile, 50}), TensorHistogram::kZeroAmax);
  const float five = 5.f;
  h.add(&five, 1);
  EXPECT_EQ(h.range(), 8.f);
  EXPECT_EQ(h.bins()[0], 5u);
  EXPECT_EQ(h.bins()[1280], 1u);  // 5 * 2048 / 8
  EXPECT_EQ(h.amax({CalibMethod::kMinMax}), 5.f);
}

TEST(CalibHistogram, NaNOnlyAndInfinities) {
  TensorHistogram h;
  const std::vector<float> nans(3, kNaN);
  h.add(nans.data(), nans.size());
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.amax({CalibMethod::kEntropy}), TensorHistogram::kZeroAmax);

  const std::vector<float> v = {1.5f, -kInf, 0.25f};
  h.add(v.data(), v.size());
  EXPECT_EQ(h.count(), 3u);
  EXPECT_EQ(h.min(), -kInf);
  EXPECT_EQ(h.max(), 1.5f);
  EXPECT_EQ(h.range(), 2.f);         // infinities do not size the range...
  EXPECT_EQ(h.bins()[2047], 1u);     // ...they clip into the last bin
  for (auto m : {CalibMethod::kMinMax, CalibMethod::kEntropy, CalibMethod::kPercentile}) {
    const float a = h.amax({m});
    EXPECT_TRUE(std::isfinite(a) && a > 0) << a;
    EXPECT_LE(a, 2.f);
  }
}

// ---------------------------------------------------------------------------------------------
// Methods

TEST(CalibMethods, MinMaxIsTheExactAbsmax) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> d(-2.5f, 1.75f);
  std::vector<float> v(10000);
  float absmax = 0;
  for (auto& x : v) {
    x = d(rng);
    absmax = std::max(absmax, std::fabs(x));
  }
  TensorHistogram h;
  h.add(v.data(), 4000);
  h.add(v.data() + 4000, 6000);
  EXPECT_EQ(h.amax({CalibMethod::kMinMax}), absmax);
}

TEST(CalibMethods, PercentileOfUniformIntegers) {
  std::vector<float> v;
  for (int i = 0; i < 10000; ++i) v.push_back(static_cast<float>(i));
  std::shuffle(v.begin(), v.end(), std::mt19937(5));
  TensorHistogram h;
  h.add(v.data(), v.size());
  EXPECT_EQ(h.range(), 16384.f);
  const float width = 16384.f / 2048;  // 8
  // 99% of the values (9900 of them: 0..9899) are <= 9899.x.
  EXPECT_NEAR(h.amax({CalibMethod::kPercentile, 99}), 9900.f, width);
  EXPECT_NEAR(h.amax({CalibMethod::kPercentile, 50}), 5000.f, width);
  EXPECT_NEAR(h.amax({CalibMethod::kPercentile, 99.99}), 9999.f, width);
  EXPECT_EQ(h.amax({CalibMethod::kPercentile, 100}), 9999.f);  // never above the absmax
  // Signs do not matter: the histogram is of |x|.
  for (auto& x : v) x = -x;
  TensorHistogram neg;
  neg.add(v.data(), v.size());
  EXPECT_EQ(neg.amax({CalibMethod::kPercentile, 99}), h.amax({CalibMethod::kPercentile, 99}));
}

TEST(CalibMethods, EntropyClipsOutliersOfAGaussian) {
  std::mt19937 rng(11);
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<float> v(200000);
  for (auto& x : v) x = n(rng);
  for (int i = 0; i < 5; ++i) v[i * 1000] = (i % 2 ? -50.f : 50.f);  // a few huge outliers
  TensorHistogram h;
  h.add(v.data(), v.size());
  EXPECT_EQ(h.absmax(), 50.f);
  const float t = h.amax({CalibMethod::kEntropy});
  EXPECT_GT(t, 3.f);    // keeps the body of the distribution (3 sigma)
  EXPECT_LT(t, 12.5f);  // and clips far below the outliers
  // Deterministic: same data, same answer.
  TensorHistogram again;
  again.add(v.data(), v.size());
  EXPECT_EQ(again.amax({CalibMethod::kEntropy}), t);
}

// After a ReLU half the values are exact zeros; that spike in bin 0 must not drag the threshold
// down to the smallest candidate (about 2 sigma here).
TEST(CalibMethods, EntropyOfAReluOutputIgnoresTheZeroSpike) {
  std::mt19937 rng(17);
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<float> v(200000);
  for (auto& x : v) x = std::max(n(rng), 0.f);
  TensorHistogram h;
  h.add(v.data(), v.size());
  EXPECT_EQ(h.min(), 0.f);
  float t = h.amax({CalibMethod::kEntropy});
  EXPECT_GT(t, 3.5f);
  EXPECT_LE(t, h.absmax());
  for (int i = 0; i < 5; ++i) v[i * 1000] = 20.f;
  TensorHistogram outliers;
  outliers.add(v.data(), v.size());
  t = outliers.amax({CalibMethod::kEntropy});
  EXPECT_GT(t, 3.f);
  EXPECT_LT(t, 10.f);
}

TEST(CalibMethods, EntropyKeepsTheRangeOfUniformData) {
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(200000);
  for (auto& x : v) x = d(rng);
  TensorHistogram h;
  h.add(v.data(), v.size());
  const float t = h.amax({CalibMethod::kEntropy});
  EXPECT_GT(t, 0.95f * h.absmax());
  EXPECT_LE(t, h.absmax());
}

TEST(CalibMethods, EntropyThresholdBinOfAFlatHistogram) {
  // bins[0..1000) = 1: every candidate below 1000 folds the tail onto its last bin (KL > 0);
  // at 1000 and above Q reproduces P exactly (KL = 0), and ties keep the smallest.
  std::vector<uint64_t> bins(2048, 0);
  for (int j = 0; j < 1000; ++j) bins[j] = 1;
  EXPECT_EQ(entropy_threshold_bin(bins, 128), 1000u);
  EXPECT_EQ(entropy_threshold_bin(bins, 256), 1000u);
  // Everything within the first 128 bins: the smallest candidate already reproduces P.
  std::vector<uint64_t> low(2048, 0);
  for (int j = 0; j < 50; ++j) low[j] = 1 + j % 3;
  EXPECT_EQ(entropy_threshold_bin(low, 128), 128u);
  // Nothing at all, or too few bins to search: the whole range.
  EXPECT_EQ(entropy_threshold_bin(std::vector<uint64_t>(2048, 0), 128), 2048u);
  EXPECT_EQ(entropy_threshold_bin(std::vector<uint64_t>(100, 1), 128), 100u);
}

TEST(CalibMethods, ParseGoodAndBadStrings) {
  EXPECT_EQ(parse_calib_method("entropy").method, CalibMethod::kEntropy);
  EXPECT_EQ(parse_calib_method("minmax").method, CalibMethod::kMinMax);
  auto p = parse_calib_method("percentile");
  EXPECT_EQ(p.method, CalibMethod::kPercentile);
  EXPECT_EQ(p.percentile, 99.99);
  p = parse_calib_method("percentile=99.9");
  EXPECT_EQ(p.method, CalibMethod::kPercentile);
  EXPECT_EQ(p.percentile, 99.9);
  EXPECT_EQ(parse_calib_method("percentile=100").percentile, 100.0);
  EXPECT_EQ(parse_calib_method("percentile=0.5").percentile, 0.5);

  for (const std::string bad : {"percentile=0", "percentile=101", "percentile=-1", "percentile=nan", "percentile=inf"})
    expect_error([&] { parse_calib_method(bad); }, ErrorCode::kInvalidArgument, {"'" + bad + "'"});
  expect_error([] { parse_calib_method("percentile=101"); }, ErrorCode::kInvalidArgument, {"(0, 100]"});
  for (const std::string bad : {"kl", "Entropy", "", "minmax ", "percentile=abc", "percentile=", "percentile=9x"})
    expect_error([&] { parse_calib_method(bad); }, ErrorCode::kInvalidArgument, {"entropy, minmax, percentile"});

  for (const std::string s : {"entropy", "minmax", "percentile=99.99", "percentile=99.9", "percentile=12.345"}) {
    const auto spec = parse_calib_method(s);
    EXPECT_EQ(to_string(spec), s);
    const auto back = parse_calib_method(to_string(spec));
    EXPECT_EQ(back.method, spec.method);
    EXPECT_EQ(back.percentile, spec.percentile);
  }
  EXPECT_EQ(to_string(parse_calib_method("percentile")), "percentile=99.99");
}

// ---------------------------------------------------------------------------------------------
// Fingerprint and cache

TEST(CalibCache, FingerprintIsStructural) {
  Model a = one_input_model();
  const std::string fa = model_fingerprint(a);
  EXPECT_EQ(fa.size(), 16u);
  EXPECT_EQ(fa.find_first_not_of("0123456789abcdef"), std::string::npos);
  Model same = one_input_model();
  same.graph.initializers["w"] = Tensor::scalar<float>(1.f);  // weights do not count
  EXPECT_EQ(model_fingerprint(same), fa);
  Model other = one_input_model();
  other.graph.nodes[0].op_type = "Sigmoid";
  EXPECT_NE(model_fingerprint(other), fa);
  Model renamed = one_input_model();
  renamed.graph.nodes[0].outputs[0] = "y2";
  renamed.graph.outputs[0] = "y2";
  EXPECT_NE(model_fingerprint(renamed), fa);
  EXPECT_NE(model_fingerprint(two_input_model()), fa);
}

CalibrationTable sample_table() {
  CalibrationTable t;
  t.method = parse_calib_method("percentile=99.9");
  t.samples = 256;
  t.model_fingerprint = "0123456789abcdef";
  t.ranges["conv1.out"] = {0.1f, -0.05f, 0.1f};
  t.ranges["relu 2/out"] = {6.02214076e23f, 0.f, 7.1e23f};  // a name with a space and a slash
  t.ranges[" lead"] = {TensorHistogram::kZeroAmax, 0.f, 0.f};
  t.ranges["odd"] = {1.f / 3.f, -kInf, std::nextafter(1.f, 2.f)};
  t.ranges["tiny"] = {1.17549435e-38f, -1e-30f, 1e-30f};
  return t;
}

TEST(CalibCache, RoundTripIsExact) {
  TempDir tmp("cache");
  const fs::path p = tmp.path / "model.calib";
  const CalibrationTable t = sample_table();
  write_calibration_cache(p, t);
  const CalibrationTable r = read_calibration_cache(p);
  EXPECT_EQ(r.method.method, CalibMethod::kPercentile);
  EXPECT_EQ(r.method.percentile, 99.9);
  EXPECT_EQ(r.samples, 256u);
  EXPECT_EQ(r.model_fingerprint, t.model_fingerprint);
  ASSERT_EQ(r.ranges.size(), t.ranges.size());
  for (const auto& [name, range] : t.ranges) {
    ASSERT_TRUE(r.ranges.count(name)) << name;
    const TensorRange& b = r.ranges.at(name);
    EXPECT_EQ(std::memcmp(&b.amax, &range.amax, 4), 0) << name;
    EXPECT_EQ(std::memcmp(&b.min, &range.min, 4), 0) << name;
    EXPECT_EQ(std::memcmp(&b.max, &range.max, 4), 0) << name;
  }
  // Writing what was read gives the same bytes.
  const fs::path p2 = tmp.path / "again.calib";
  write_calibration_cache(p2, r);
  std::ifstream f1(p), f2(p2);
  std::string s1((std::istreambuf_iterator<char>(f1)), {}), s2((std::istreambuf_iterator<char>(f2)), {});
  EXPECT_EQ(s1, s2);
  EXPECT_EQ(s1.rfind("kiln-calibration 1 method=percentile=99.9 samples=256 model=0123456789abcdef\n", 0), 0u);
}

TEST(CalibCache, CommentsBlankLinesAndCrlf) {
  TempDir tmp("cache");
  const fs::path p = tmp.path / "c.calib";
  write_text(p, "# written by hand\n\nkiln-calibration 1 method=minmax samples=3 model=ab\r\n# x\n2.5 -1 2.5 a b\r\n");
  const auto t = read_calibration_cache(p);
  EXPECT_EQ(t.method.method, CalibMethod::kMinMax);
  EXPECT_EQ(t.samples, 3u);
  ASSERT_EQ(t.ranges.size(), 1u);
  EXPECT_EQ(t.ranges.at("a b").amax, 2.5f);
  EXPECT_EQ(t.ranges.at("a b").min, -1.f);
  EXPECT_TRUE(t.ranges.at("a b").is_unsigned() == false);
}

TEST(CalibCache, CorruptionsNameTheLine) {
  TempDir tmp("cache");
  const std::string hdr = "kiln-calibration 1 method=entropy samples=4 model=00ff\n";
  struct Case {
    std::string text, line, what;
  };
  const std::vector<Case> cases = {
      {"", ":1:", "empty file"},
      {"# only a comment\n", ":1:", "empty file"},
      {"kiln-calib 1 method=entropy samples=4 model=00ff\n", ":1:", "not a Kiln calibration cache"},
      {"# c\nkiln-calibration 2 method=entropy samples=4 model=00ff\n", ":2:", "version 2"},
      {"kiln-calibration x method=entropy samples=4 model=00ff\n", ":1:", "format version 'x'"},
      {"kiln-calibration 1 method=kl samples=4 model=00ff\n", ":1:", "unknown calibration method 'kl'"},
      {"kiln-calibration 1 method=percentile=0 samples=4 model=00ff\n", ":1:", "(0, 100]"},
      {"kiln-calibration 1 method=entropy samples=four model=00ff\n", ":1:", "samples 'four'"},
      {"kiln-calibration 1 method=entropy samples=4\n", ":1:", "fingerprint"},
      {"kiln-calibration 1 method=entropy samples=4 model=\n", ":1:", "fingerprint"},
      {"kiln-calibration 1 samples=4 model=00ff\n", ":1:", "method="},
      {"kiln-calibration 1 method=entropy samples=4 model=00ff color=red\n", ":1:", "unknown header field 'color'"},
      {"kiln-calibration 1 method=entropy samples=4 samples=5 model=00ff\n", ":1:", "'samples' appears twice"},
      {hdr + "1 0 1 a\nabc 0 1 b\n", ":3:", "amax 'abc' is not a number"},
      {hdr + "1 0 1x c\n", ":2:", "max '1x' is not a number"},
      {hdr + "0 0 1 a\n", ":2:", "positive finite"},
      {hdr + "-1 -1 1 a\n", ":2:", "positive finite"},
      {hdr + "nan 0 1 a\n", ":2:", "positive finite"},
      {hdr + "inf 0 1 a\n", ":2:", "positive finite"},
      {hdr + "1 nan 1 a\n", ":2:", "not a valid range"},
      {hdr + "1 2 1 a\n", ":2:", "not a valid range"},
      {hdr + "1 0 1\n", ":2:", "missing tensor name"},
      {hdr + "1 0\n", ":2:", "expected '<amax> <min> <max> <tensor name>'"},
      {hdr + "1 0 1 a\n# c\n2 0 2 a\n", ":4:", "tensor 'a' appears twice"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const fs::path p = tmp.path / ("bad" + std::to_string(i) + ".calib");
    write_text(p, cases[i].text);
    SCOPED_TRACE("case " + std::to_string(i) + ": " + cases[i].text);
    expect_error([&] { read_calibration_cache(p); }, ErrorCode::kInvalidArgument,
                 {p.string() + cases[i].line, cases[i].what});
  }
  expect_error([&] { read_calibration_cache(tmp.path / "missing.calib"); }, ErrorCode::kIo, {"missing.calib"});
}

TEST(CalibCache, WriteRejectsUnstorableTables) {
  TempDir tmp("cache");
  CalibrationTable t = sample_table();
  t.model_fingerprint = "";
  expect_error([&] { write_calibration_cache(tmp.path / "a", t); }, ErrorCode::kInvalidArgument, {"fingerprint"});
  t = sample_table();
  t.ranges["bad\nname"] = {1.f, 0.f, 1.f};
  expect_error([&] { write_calibration_cache(tmp.path / "a", t); }, ErrorCode::kInvalidArgument, {"line break"});
  t = sample_table();
  t.ranges["zero"] = {0.f, 0.f, 0.f};
  expect_error([&] { write_calibration_cache(tmp.path / "a", t); }, ErrorCode::kInvalidArgument, {"'zero'"});
  expect_error([&] { write_calibration_cache(tmp.path / "no" / "such" / "dir.calib", sample_table()); },
               ErrorCode::kIo, {"dir.calib"});
  EXPECT_FALSE(fs::exists(tmp.path / "a"));
}

TEST(CalibCache, CheckAgainstTheModel) {
  const Model m = one_input_model();
  CalibrationTable t;
  t.model_fingerprint = model_fingerprint(m);
  t.ranges["x"] = {1.f, -1.f, 1.f};
  t.ranges["y"] = {1.f, 0.f, 1.f};
  EXPECT_NO_THROW(check_calibration_table(t, m, {"x", "y"}, "m.calib"));
  EXPECT_NO_THROW(check_calibration_table(t, m, {}, "m.calib"));
  expect_error([&] { check_calibration_table(t, m, {"x", "conv9"}, "m.calib"); }, ErrorCode::kInvalidArgument,
               {"'m.calib'", "'conv9'"});
  const Model other = two_input_model();
  expect_error([&] { check_calibration_table(t, other, {"x"}, "m.calib"); }, ErrorCode::kInvalidArgument,
               {"calibration cache 'm.calib' was made for another model (fingerprint " + t.model_fingerprint +
                    ", this model is " + model_fingerprint(other) + "); delete it or pass another --calib-cache"});
}

// ---------------------------------------------------------------------------------------------
// FileCalibrator

TEST(CalibData, StackedNpzBatchesAndMaxSamples) {
  TempDir tmp("data");
  const fs::path p = tmp.path / "calib.npz";
  write_npz(p, {{"x", numbered(10, 3)}});
  const Model m = one_input_model();
  FileCalibrator c(p, m, 4);
  EXPECT_EQ(c.sample_count(), 10u);
  TensorMap b;
  std::vector<std::vector<float>> seen;
  while (c.next_batch(b)) {
    ASSERT_EQ(b.size(), 1u);
    const Tensor& x = b.at("x");
    EXPECT_EQ(x.dim(1), 3);
    EXPECT_EQ(x.dtype(), DType::kF32);
    seen.push_back(first_column(x));
  }
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0], (std::vector<float>{0, 100, 200, 300}));
  EXPECT_EQ(seen[1], (std::vector<float>{400, 500, 600, 700}));
  EXPECT_EQ(seen[2], (std::vector<float>{800, 900}));  // the last batch is partial
  EXPECT_EQ(c.samples_read(), 10u);
  EXPECT_FALSE(c.next_batch(b));
  c.reset();
  EXPECT_EQ(c.samples_read(), 0u);
  ASSERT_TRUE(c.next_batch(b));
  EXPECT_EQ(first_column(b.at("x")), (std::vector<float>{0, 100, 200, 300}));
  EXPECT_EQ(b.at("x").data<float>()[5], 102.f);

  FileCalibrator limited(p, m, 4, 5);
  EXPECT_EQ(limited.sample_count(), 5u);
  std::vector<int64_t> sizes;
  while (limited.next_batch(b)) sizes.push_back(b.at("x").dim(0));
  EXPECT_EQ(sizes, (std::vector<int64_t>{4, 1}));
  EXPECT_EQ(limited.samples_read(), 5u);
}

TEST(CalibData, StackedWithAFixedBatchDimension) {
  TempDir tmp("data");
  const fs::path p = tmp.path / "calib.npz";
  write_npz(p, {{"x", numbered(5, 3)}});
  const Model m = one_input_model({2, 3});
  FileCalibrator c(p, m, 1);  // the model only runs batches of 2
  EXPECT_EQ(c.sample_count(), 4u);
  TensorMap b;
  std::vector<int64_t> sizes;
  while (c.next_batch(b)) sizes.push_back(b.at("x").dim(0));
  EXPECT_EQ(sizes, (std::vector<int64_t>{2, 2}));  // the fifth sample cannot make a batch
  write_npz(p, {{"x", numbered(1, 3)}});
  expect_error([&] { FileCalibrator(p, m, 1); }, ErrorCode::kInvalidArgument, {"fewer than one batch of 2"});
}

TEST(CalibData, StackedNpyAndOneSampleMember) {
  TempDir tmp("data");
  const Model m = one_input_model();
  const fs::path npy = tmp.path / "all.npy";
  write_npy(npy, numbered(3, 3));
  FileCalibrator c(npy, m, 2);
  EXPECT_EQ(c.sample_count(), 3u);
  // A member of rank one less than the input is one sample.
  const fs::path npz = tmp.path / "one.npz";
  write_npz(npz, {{"x", floats({3}, {1, 2, 3})}});
  FileCalibrator one(npz, m, 8);
  EXPECT_EQ(one.sample_count(), 1u);
  TensorMap b;
  ASSERT_TRUE(one.next_batch(b));
  EXPECT_EQ(b.at("x").shape(), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(b.at("x").data<float>()[2], 3.f);
  EXPECT_FALSE(one.next_batch(b));
}

TEST(CalibData, FolderOfNpyForOneInput) {
  TempDir tmp("data");
  write_npy(tmp.path / "b.npy", numbered(2, 3, 1000));
  write_npy(tmp.path / "a.npy", numbered(3, 3));
  write_npy(tmp.path / "c.NPY", floats({3}, {7, 8, 9}));  // one sample, promoted to a batch of one
  write_text(tmp.path / "notes.txt", "ignored");
  fs::create_directories(tmp.path / "sub.npy");  // a folder, ignored
  const Model m = one_input_model();
  FileCalibrator c(tmp.path, m, 16);  // a folder's files are its batches: batch_size is not used
  EXPECT_EQ(c.sample_count(), 6u);
  TensorMap b;
  std::vector<std::vector<float>> seen;
  while (c.next_batch(b)) seen.push_back(first_column(b.at("x")));
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0], (std::vector<float>{0, 100, 200}));
  EXPECT_EQ(seen[1], (std::vector<float>{1000, 1100}));
  EXPECT_EQ(seen[2], (std::vector<float>{7}));
  EXPECT_EQ(c.samples_read(), 6u);
  c.reset();
  ASSERT_TRUE(c.next_batch(b));
  EXPECT_EQ(first_column(b.at("x")), (std::vector<float>{0, 100, 200}));

  FileCalibrator limited(tmp.path, m, 1, 4);  // 3 from a.npy, then 1 of b.npy's 2
  EXPECT_EQ(limited.sample_count(), 4u);
  seen.clear();
  while (limited.next_batch(b)) seen.push_back(first_column(b.at("x")));
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1], (std::vector<float>{1000}));
  EXPECT_EQ(limited.samples_read(), 4u);
}

TEST(CalibData, FolderOfNpzForTwoInputs) {
  TempDir tmp("data");
  write_npz(tmp.path / "0.npz", {{"z", numbered(2, 2, 5000)}, {"x", numbered(2, 3)}});
  write_npz(tmp.path / "1.npz", {{"x", numbered(1, 3, 300)}, {"z", numbered(1, 2, 6000)}});
  const Model m = two_input_model();
  FileCalibrator c(tmp.path, m);
  EXPECT_EQ(c.sample_count(), 3u);
  TensorMap b;
  ASSERT_TRUE(c.next_batch(b));
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(first_column(b.at("x")), (std::vector<float>{0, 100}));
  EXPECT_EQ(first_column(b.at("z")), (std::vector<float>{5000, 5100}));
  ASSERT_TRUE(c.next_batch(b));
  EXPECT_EQ(first_column(b.at("z")), (std::vector<float>{6000}));
  EXPECT_FALSE(c.next_batch(b));
  EXPECT_EQ(c.samples_read(), 3u);
}

TEST(CalibData, Errors) {
  TempDir tmp("data");
  const Model m = one_input_model();
  const Model m2 = two_input_model();
  const fs::path empty = tmp.path / "empty";
  fs::create_directories(empty);
  write_text(empty / "readme.txt", "no data here");
  expect_error([&] { FileCalibrator(empty, m); }, ErrorCode::kInvalidArgument,
               {"calibration folder '" + empty.string() + "' has no .npy or .npz files"});

  expect_error([&] { FileCalibrator(tmp.path / "nope.npz", m); }, ErrorCode::kInvalidArgument,
               {"'" + (tmp.path / "nope.npz").string() + "' does not exist"});
  write_text(tmp.path / "data.txt", "x");
  expect_error([&] { FileCalibrator(tmp.path / "data.txt", m); }, ErrorCode::kInvalidArgument,
               {"not a folder, a .npz or a .npy file"});

  const fs::path ints = tmp.path / "ints.npz";
  write_npz(ints, {{"x", Tensor::from_vector<int64_t>({2, 3}, {1, 2, 3, 4, 5, 6})}});
  expect_error([&] { FileCalibrator(ints, m); }, ErrorCode::kInvalidArgument,
               {"calibration data '" + ints.string() + "': member 'x' has dtype i64, the model's input 'x' is f32"});

  const fs::path wide = tmp.path / "wide.npz";
  write_npz(wide, {{"x", numbered(2, 4)}});
  expect_error([&] { FileCalibrator(wide, m); }, ErrorCode::kInvalidArgument,
               {"member 'x' has shape 2x4", "[batch,3]", "dimension 1 must be 3"});
  const fs::path deep = tmp.path / "deep.npz";
  write_npz(deep, {{"x", floats({1, 1, 2, 3}, {1, 2, 3, 4, 5, 6})}});
  expect_error([&] { FileCalibrator(deep, m); }, ErrorCode::kInvalidArgument, {"1x1x2x3", "rank 2"});

  const fs::path unknown = tmp.path / "unknown.npz";
  write_npz(unknown, {{"x", numbered(2, 3)}, {"image", numbered(2, 3)}});
  expect_error([&] { FileCalibrator(unknown, m); }, ErrorCode::kInvalidArgument,
               {"member 'image' is not an input of the model (inputs: 'x')"});

  const fs::path missing = tmp.path / "missing.npz";
  write_npz(missing, {{"x", numbered(2, 3)}});
  expect_error([&] { FileCalibrator(missing, m2); }, ErrorCode::kInvalidArgument,
               {"'" + missing.string() + "' has no member for the model's input 'z'"});

  const fs::path uneven = tmp.path / "uneven.npz";
  write_npz(uneven, {{"x", numbered(3, 3)}, {"z", numbered(2, 2)}});
  expect_error([&] { FileCalibrator(uneven, m2); }, ErrorCode::kInvalidArgument, {"3 samples", "has 2"});

  const fs::path npys = tmp.path / "npys";
  fs::create_directories(npys);
  write_npy(npys / "a.npy", numbered(2, 3));
  expect_error([&] { FileCalibrator(npys, m2); }, ErrorCode::kInvalidArgument,
               {"a.npy", "the model has 2 inputs", "use .npz files"});
  // A folder file is checked whole: a fixed batch dim must match.
  expect_error([&] { FileCalibrator(npys, one_input_model({4, 3})); }, ErrorCode::kInvalidArgument,
               {"a.npy' has shape 2x3", "dimension 0 must be 4"});
  // A bad file in the middle of a folder is named.
  write_npy(npys / "b.npy", numbered(2, 5));
  expect_error([&] { FileCalibrator(npys, m); }, ErrorCode::kInvalidArgument, {"b.npy' has shape 2x5"});

  expect_error([&] { FileCalibrator(missing, m, 0); }, ErrorCode::kInvalidArgument, {"batch size"});
}

// ---------------------------------------------------------------------------------------------
// calibrate()

// Batches held in memory: quant::MemoryCalibrator.
using VectorCalibrator = MemoryCalibrator;

// x -> Relu -> r -> Mul by 2 -> y; r is an intermediate tensor.
Model relu_mul_model() {
  kiln_test::ModelBuilder b(17);
  b.input("x", DType::kF32, {Dim::sym("batch"), 4}).init("two", Tensor::scalar<float>(2.f));
  b.m.graph.nodes.push_back(Node{"relu", "Relu", "", {"x"}, {"r"}, {}});
  b.m.graph.nodes.push_back(Node{"mul", "Mul", "", {"r", "two"}, {"y"}, {}});
  b.m.graph.outputs = {"y"};
  return b.m;
}

TEST(CalibRun, RangesMatchTheData) {
  const Model m = relu_mul_model();
  // Three batches of different sizes (two programs); x spans [-3.5, 2.25].
  std::vector<TensorMap> batches = {
      {{"x", floats({2, 4}, {-1, 0.5f, 2, -0.25f, 0, 1, 1.5f, -3.5f})}},
      {{"x", floats({1, 4}, {0.75f, -2, 2.25f, 0.125f})}},
      {{"x", floats({2, 4}, {-0.5f, 0.5f, 1, 1, 2, -1, 0.25f, 0})}},
  };
  VectorCalibrator data(batches);
  size_t calls = 0, last = 0;
  CalibrateOptions opt;
  opt.method = parse_calib_method("minmax");
  opt.threads = 1;
  opt.progress = [&](size_t n) {
    ++calls;
    last = n;
  };
  const CalibrationTable t = calibrate(m, data, {"x", "r", "y", "r"}, opt);
  EXPECT_EQ(calls, 3u);
  EXPECT_EQ(last, 5u);
  EXPECT_EQ(t.samples, 5u);
  EXPECT_EQ(t.method.method, CalibMethod::kMinMax);
  EXPECT_EQ(t.model_fingerprint, model_fingerprint(m));  // the model given, not the one with extra outputs
  ASSERT_EQ(t.ranges.size(), 3u);
  EXPECT_EQ(t.ranges.at("x").min, -3.5f);
  EXPECT_EQ(t.ranges.at("x").max, 2.25f);
  EXPECT_EQ(t.ranges.at("x").amax, 3.5f);
  EXPECT_FALSE(t.ranges.at("x").is_unsigned());
  EXPECT_EQ(t.ranges.at("r").min, 0.f);
  EXPECT_EQ(t.ranges.at("r").max, 2.25f);
  EXPECT_EQ(t.ranges.at("r").amax, 2.25f);
  EXPECT_TRUE(t.ranges.at("r").is_unsigned());
  EXPECT_EQ(t.ranges.at("r").scale(), 2.25f / 255.f);
  EXPECT_EQ(t.ranges.at("y").min, 0.f);
  EXPECT_EQ(t.ranges.at("y").max, 4.5f);
  EXPECT_EQ(t.ranges.at("y").amax, 4.5f);

  // Calibrating again rewinds the data first and gives the same table.
  const CalibrationTable again = calibrate(m, data, {"y"}, opt);
  EXPECT_EQ(again.samples, 5u);
  EXPECT_EQ(again.ranges.at("y").amax, 4.5f);
}

TEST(CalibRun, FromAFileWithEntropy) {
  TempDir tmp("run");
  const Model m = relu_mul_model();
  std::vector<float> v;
  for (int i = 0; i < 64 * 4; ++i) v.push_back(static_cast<float>(i % 17) - 8.f);  // -8..8
  const fs::path p = tmp.path / "calib.npz";
  write_npz(p, {{"x", floats({64, 4}, v)}});
  FileCalibrator data(p, m, 16);
  CalibrateOptions opt;  // entropy
  const CalibrationTable t = calibrate(m, data, {"r", "y"}, opt);
  EXPECT_EQ(t.samples, 64u);
  EXPECT_EQ(t.ranges.at("y").min, 0.f);
  EXPECT_EQ(t.ranges.at("y").max, 16.f);
  EXPECT_GT(t.ranges.at("y").amax, 0.f);
  EXPECT_LE(t.ranges.at("y").amax, 16.f);
}

TEST(CalibRun, Errors) {
  const Model m = relu_mul_model();
  VectorCalibrator data({{{"x", floats({1, 4}, {1, 2, 3, 4})}}});
  CalibrateOptions opt;
  expect_error([&] { calibrate(m, data, {"r", "conv7"}, opt); }, ErrorCode::kInvalidArgument,
               {"'conv7' is not a tensor of the model"});
  VectorCalibrator none({});
  expect_error([&] { calibrate(m, none, {"r"}, opt); }, ErrorCode::kInvalidArgument, {"no batch"});
  VectorCalibrator wrong({{{"x", floats({1, 5}, {1, 2, 3, 4, 5})}}});
  expect_error([&] { calibrate(m, wrong, {"r"}, opt); }, ErrorCode::kInvalidArgument, {"calibration batch 1", "'x'"});
  VectorCalibrator ints({{{"x", Tensor::from_vector<int64_t>({1, 4}, {1, 2, 3, 4})}}});
  expect_error([&] { calibrate(m, ints, {"r"}, opt); }, ErrorCode::kInvalidArgument, {"'x' must be f32"});

  kiln_test::ModelBuilder b(17);
  b.input("x", DType::kF32, {Dim::sym("batch"), 4}).node("Shape", {"x"}, {"s"}).node("Relu", {"x"}, {"r"}, {}, "r");
  expect_error([&] { calibrate(b.m, data, {"s"}, opt); }, ErrorCode::kInvalidArgument,
               {"tensor 's' is i64; only f32 tensors can be calibrated"});
}

}  // namespace
