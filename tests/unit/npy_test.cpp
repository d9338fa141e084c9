// Tests for .npy / .npz reading and writing (src/util/npy.h).
//
// The NumpyInterop tests generate fixtures with Debian's /usr/bin/python3 + numpy at test time
// and also have numpy check the files Kiln writes; they are skipped when either is missing.
#include "util/npy.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zip.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

namespace kiln {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Helpers.

fs::path make_temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  fs::path dir = fs::temp_directory_path() /
                 ("kiln_npy_test_" + tag + "_" + std::to_string(::getpid()) + "_" +
                  std::to_string(counter++));
  fs::create_directories(dir);
  return dir;
}

// A temporary directory removed when the test ends, even when an assertion returns early.
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

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << p;
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << p;
}

// Runs fn, which must throw a kiln::Error of `code` whose message contains every needle.
void expect_error(const std::function<void()>& fn, ErrorCode code,
                  const std::vector<std::string>& needles, int line) {
  SCOPED_TRACE("called from line " + std::to_string(line));
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << error_code_name(e.code()) << ": " << e.what();
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << n << "\"";
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-kiln exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "did not throw";
}
#define EXPECT_KILN_ERROR(stmt, code, ...) \
  expect_error([&] { (void)(stmt); }, code, {__VA_ARGS__}, __LINE__)

// A hand-made .npy: magic, version, little-endian header length, the dict padded with spaces to a
// 64-byte boundary and ended by '\n', then `data`.
std::vector<uint8_t> make_npy(const std::string& dict, const std::vector<uint8_t>& data,
                              int major = 1) {
  const size_t prefix = major == 1 ? 10 : 12;
  std::string header = dict;
  while ((prefix + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<uint8_t>(major), 0};
  const uint32_t len = static_cast<uint32_t>(header.size());
  out.push_back(len & 0xff);
  out.push_back((len >> 8) & 0xff);
  if (major != 1) {
    out.push_back((len >> 16) & 0xff);
    out.push_back((len >> 24) & 0xff);
  }
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

template <typename T>
std::vector<uint8_t> le_bytes(const std::vector<T>& v) {
  std::vector<uint8_t> out(v.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
}

const std::vector<DType> kAllDTypes = {DType::kF32, DType::kF64, DType::kF16, DType::kI8,
                                       DType::kU8,  DType::kI16, DType::kU16, DType::kI32,
                                       DType::kU32, DType::kI64, DType::kU64, DType::kBool};

// A 2x3 tensor of `dt` holding extreme and ordinary values.
Tensor sample(DType dt) {
  const std::vector<int64_t> s = {2, 3};
  const float inf = std::numeric_limits<float>::infinity();
  switch (dt) {
    case DType::kF32:
      return Tensor::from_vector<float>(s, {0.0f, -1.5f, 3.25f, inf, std::numeric_limits<float>::denorm_min(),
                                            std::numeric_limits<float>::quiet_NaN()});
    case DType::kF64:
      return Tensor::from_vector<double>(s, {1.0 / 3.0, -2.5e300, 0.0, -0.0,
                                             std::numeric_limits<double>::max(), -1.0});
    case DType::kF16:
      return Tensor::from_vector<Half>(s, {Half(0.5f), Half(-2.0f), Half(65504.0f), Half(-inf),
                                           Half(std::ldexp(1.0f, -24)), Half(1.0f)});
    case DType::kI8: return Tensor::from_vector<int8_t>(s, {-128, 127, 0, -1, 5, 6});
    case DType::kU8: return Tensor::from_vector<uint8_t>(s, {0, 255, 7, 128, 1, 2});
    case DType::kI16: return Tensor::from_vector<int16_t>(s, {-32768, 32767, 0, -1, 300, 4});
    case DType::kU16: return Tensor::from_vector<uint16_t>(s, {0, 65535, 1, 256, 3, 4});
    case DType::kI32:
      return Tensor::from_vector<int32_t>(s, {std::numeric_limits<int32_t>::min(),
                                              std::numeric_limits<int32_t>::max(), 0, -1, 70000, 6});
    case DType::kU32:
      return Tensor::from_vector<uint32_t>(s, {0u, std::numeric_limits<uint32_t>::max(), 1u, 65536u, 3u, 4u});
    case DType::kI64:
      return Tensor::from_vector<int64_t>(s, {std::numeric_limits<int64_t>::min(),
                                              std::numeric_limits<int64_t>::max(), 0, -1,
                                              int64_t{1} << 40, 42});
    case DType::kU64:
      return Tensor::from_vector<uint64_t>(s, {0u, std::numeric_limits<uint64_t>::max(), 1u,
                                               uint64_t{1} << 63, 3u, 4u});
    case DType::kBool: return Tensor::from_vector<bool>(s, {true, false, true, true, false, false});
    default: break;
  }
  throw std::logic_error("no sample for dtype");
}

void expect_same(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.dtype(), want.dtype());
  EXPECT_EQ(got.shape(), want.shape());
  EXPECT_TRUE(same_bytes(got, want)) << "data differs for " << dtype_name(want.dtype());
}

// ---------------------------------------------------------------------------------------------
// Round trips.

TEST(Npy, RoundTripsEveryDTypeInMemory) {
  for (DType dt : kAllDTypes) {
    SCOPED_TRACE(std::string(dtype_name(dt)));
    const Tensor t = sample(dt);
    const std::vector<uint8_t> bytes = serialize_npy(t);
    expect_same(parse_npy(bytes, "mem.npy"), t);
  }
  // Spot-check that bytes mean what they should, not just that they survive.
  const Tensor f = parse_npy(serialize_npy(sample(DType::kF32)), "f32");
  EXPECT_EQ(f.data<float>()[2], 3.25f);
  EXPECT_TRUE(std::isinf(f.data<float>()[3]));
  EXPECT_TRUE(std::isnan(f.data<float>()[5]));
  const Tensor h = parse_npy(serialize_npy(sample(DType::kF16)), "f16");
  EXPECT_EQ(static_cast<float>(h.data<Half>()[2]), 65504.0f);
  EXPECT_EQ(static_cast<float>(h.data<Half>()[4]), std::ldexp(1.0f, -24));
  const Tensor i = parse_npy(serialize_npy(sample(DType::kI64)), "i64");
  EXPECT_EQ(i.data<int64_t>()[0], std::numeric_limits<int64_t>::min());
  EXPECT_EQ(i.data<int64_t>()[4], int64_t{1} << 40);
  const Tensor b = parse_npy(serialize_npy(sample(DType::kBool)), "bool");
  EXPECT_EQ(b.to_int64_vector(), (std::vector<int64_t>{1, 0, 1, 1, 0, 0}));
}

TEST(Npy, RoundTripsEveryDTypeThroughFiles) {
  const TempDir tmp("files");
  const fs::path& dir = tmp.path;
  for (DType dt : kAllDTypes) {
    SCOPED_TRACE(std::string(dtype_name(dt)));
    const fs::path p = dir / (std::string(dtype_name(dt)) + ".npy");
    const Tensor t = sample(dt);
    write_npy(p, t);
    expect_same(read_npy(p), t);
    EXPECT_EQ(read_bytes(p), serialize_npy(t));
    const NamedTensors via_ext = read_tensor_file(p);
    ASSERT_EQ(via_ext.size(), 1u);
    EXPECT_EQ(via_ext[0].first, std::string(dtype_name(dt)));
    expect_same(via_ext[0].second, t);
  }
}

TEST(Npy, RoundTripsEveryDTypeThroughNpz) {
  const TempDir tmp("npz");
  const fs::path& dir = tmp.path;
  NamedTensors in;
  for (DType dt : kAllDTypes) in.emplace_back("t_" + std::string(dtype_name(dt)), sample(dt));
  in.emplace_back("scalar", Tensor::scalar<float>(-7.5f));
  in.emplace_back("empty", Tensor(DType::kI64, {3, 0, 2}));
  in.emplace_back("nested/name", Tensor::from_vector<int32_t>({4}, {1, 2, 3, 4}));
  const fs::path p = dir / "all.npz";
  write_npz(p, in);
  const NamedTensors out = read_npz(p);
  ASSERT_EQ(out.size(), in.size());
  for (size_t k = 0; k < in.size(); ++k) {
    SCOPED_TRACE(in[k].first);
    EXPECT_EQ(out[k].first, in[k].first);  // archive order is preserved
    expect_same(out[k].second, in[k].second);
  }
  EXPECT_EQ(out[in.size() - 3].second.values<float>()[0], -7.5f);
  EXPECT_EQ(out[in.size() - 1].second.to_int64_vector(), (std::vector<int64_t>{1, 2, 3, 4}));
  // read_tensor_file picks the format by extension, case-insensitively.
  const fs::path upper = dir / "ALL.NPZ";
  fs::copy_file(p, upper);
  EXPECT_EQ(read_tensor_file(upper).size(), in.size());
  // Rewriting replaces the archive rather than appending to it.
  write_npz(p, {{"only", Tensor::scalar<int64_t>(5)}});
  const NamedTensors again = read_npz(p);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].first, "only");
  EXPECT_EQ(again[0].second.to_int64_vector(), std::vector<int64_t>{5});
}

TEST(Npy, EmptyNpzRoundTrips) {
  const TempDir tmp("emptynpz");
  const fs::path& dir = tmp.path;
  write_npz(dir / "none.npz", {});
  EXPECT_EQ(fs::file_size(dir / "none.npz"), 22u);  // just the end-of-central-directory record
  EXPECT_TRUE(read_npz(dir / "none.npz").empty());
}

TEST(Npy, Scalars) {
  const Tensor t = Tensor::scalar<double>(2.25);
  const std::vector<uint8_t> bytes = serialize_npy(t);
  const std::string header(bytes.begin() + 10, bytes.end() - 8);
  EXPECT_NE(header.find("'shape': ()"), std::string::npos) << header;
  const Tensor r = parse_npy(bytes, "scalar");
  EXPECT_EQ(r.rank(), 0u);
  EXPECT_EQ(r.numel(), 1);
  EXPECT_EQ(r.data<double>()[0], 2.25);
  EXPECT_EQ(parse_npy(serialize_npy(Tensor::scalar<bool>(true)), "b").to_int64_vector(),
            std::vector<int64_t>{1});
}

TEST(Npy, ZeroSizeTensors) {
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{0}, std::vector<int64_t>{3, 0, 2},
                                            std::vector<int64_t>{0, 0}}) {
    SCOPED_TRACE(shape_to_string(shape));
    for (DType dt : {DType::kF32, DType::kI64, DType::kBool}) {
      const Tensor t(dt, shape);
      const std::vector<uint8_t> bytes = serialize_npy(t);
      EXPECT_EQ(bytes.size() % 64, 0u);  // header only
      const Tensor r = parse_npy(bytes, "empty");
      EXPECT_EQ(r.dtype(), dt);
      EXPECT_EQ(r.shape(), shape);
      EXPECT_EQ(r.numel(), 0);
      EXPECT_EQ(r.nbytes(), 0u);
    }
  }
  // A zero dimension makes the data empty however large the others are.
  const Tensor r = parse_npy(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 9223372036854775807), }", {}), "z");
  EXPECT_EQ(r.numel(), 0);
  EXPECT_EQ(r.dim(1), std::numeric_limits<int64_t>::max());
}

TEST(Npy, HeaderLayoutMatchesNumpy) {
  const Tensor t = Tensor::from_vector<float>({5}, {1, 2, 3, 4, 5});
  const std::vector<uint8_t> bytes = serialize_npy(t);
  ASSERT_GE(bytes.size(), 10u);
  EXPECT_EQ(std::memcmp(bytes.data(), "\x93NUMPY\x01\x00", 8), 0);
  const size_t hlen = bytes[8] | bytes[9] << 8;
  EXPECT_EQ((10 + hlen) % 64, 0u);  // data 64-byte aligned
  EXPECT_EQ(bytes.size(), 10 + hlen + 20);
  const std::string header(bytes.begin() + 10, bytes.begin() + 10 + static_cast<long>(hlen));
  EXPECT_EQ(header.back(), '\n');
  EXPECT_EQ(header.rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 0), 0u) << header;
  EXPECT_NE(std::string(reinterpret_cast<const char*>(serialize_npy(sample(DType::kU8)).data()), 128)
                .find("'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }"),
            std::string::npos);
}

TEST(Npy, LongHeadersUseFormat2) {
  // Format 1.0 has a 16-bit header length; 30000 dimensions of 1 need about 90 KB of header.
  const std::vector<int64_t> shape(30000, 1);
  const Tensor t = Tensor::from_vector<int16_t>({1}, {-7}).reshaped(shape);
  const std::vector<uint8_t> bytes = serialize_npy(t);
  EXPECT_EQ(bytes[6], 2);
  const size_t hlen = bytes[8] | bytes[9] << 8 | bytes[10] << 16 | static_cast<size_t>(bytes[11]) << 24;
  EXPECT_GT(hlen, 65535u);
  EXPECT_EQ((12 + hlen) % 64, 0u);
  const Tensor r = parse_npy(bytes, "long");
  EXPECT_EQ(r.shape(), shape);
  EXPECT_EQ(r.to_int64_vector(), std::vector<int64_t>{-7});
  // Short headers stay at format 1.0.
  EXPECT_EQ(serialize_npy(Tensor(DType::kF32, std::vector<int64_t>(100, 1)))[6], 1);
}

TEST(Npy, BF16IsWidenedToF32OnWrite) {
  const Tensor t = Tensor::from_vector<BFloat16>({3}, {BFloat16(1.5f), BFloat16(-2.0f), BFloat16(3.140625f)});
  const Tensor r = parse_npy(serialize_npy(t), "bf16");
  EXPECT_EQ(r.dtype(), DType::kF32);
  EXPECT_EQ(r.shape(), std::vector<int64_t>{3});
  EXPECT_EQ(std::vector<float>(r.values<float>().begin(), r.values<float>().end()),
            (std::vector<float>{1.5f, -2.0f, 3.140625f}));
  const TempDir tmp("bf16");
  const fs::path& dir = tmp.path;
  write_npz(dir / "b.npz", {{"b", t}});
  const NamedTensors z = read_npz(dir / "b.npz");
  ASSERT_EQ(z.size(), 1u);
  EXPECT_EQ(z[0].second.dtype(), DType::kF32);
  EXPECT_EQ(z[0].second.values<float>()[2], 3.140625f);
}

TEST(Npy, UnwritableTensorsAreRejected) {
  EXPECT_KILN_ERROR(serialize_npy(Tensor()), ErrorCode::kInvalidArgument, "undefined");
  EXPECT_KILN_ERROR(serialize_npy(Tensor(DType::kF8E4M3FN, {2})), ErrorCode::kUnsupported, "f8e4m3fn");
  const TempDir tmp("unwritable");
  const fs::path& dir = tmp.path;
  EXPECT_KILN_ERROR(write_npy(dir / "f8.npy", Tensor(DType::kF8E5M2, {2})), ErrorCode::kUnsupported,
                    "f8.npy: cannot write a f8e5m2 tensor");
  EXPECT_FALSE(fs::exists(dir / "f8.npy"));
  EXPECT_KILN_ERROR(write_npz(dir / "d.npz", {{"a", Tensor::scalar<float>(1)}, {"a", Tensor::scalar<float>(2)}}),
                    ErrorCode::kInvalidArgument, "duplicate", "d.npz");
  EXPECT_KILN_ERROR(write_npz(dir / "e.npz", {{"", Tensor::scalar<float>(1)}}),
                    ErrorCode::kInvalidArgument, "empty name");
  EXPECT_FALSE(fs::exists(dir / "d.npz"));
  EXPECT_KILN_ERROR(write_npy(dir / "missing_dir" / "x.npy", Tensor::scalar<float>(1)), ErrorCode::kIo,
                    "missing_dir");
}

// ---------------------------------------------------------------------------------------------
// Hand-made headers: what numpy might write, and what it must not.

TEST(Npy, AcceptsHeaderVariants) {
  const std::vector<uint8_t> data = le_bytes<int16_t>({1, -2, 3, -4, 5, -6});
  for (int major : {1, 2, 3}) {
    SCOPED_TRACE(major);
    const Tensor t = parse_npy(make_npy("{'descr': '<i2', 'fortran_order': False, 'shape': (2, 3), }", data, major), "v");
    EXPECT_EQ(t.shape(), (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(t.to_int64_vector(), (std::vector<int64_t>{1, -2, 3, -4, 5, -6}));
  }
  // Double quotes, key order, no trailing comma, Python 2 longs, a list for the shape.
  const Tensor t = parse_npy(
      make_npy("{\"shape\": [3L, 2L], \"fortran_order\":False,\"descr\":\"<i2\"}", data), "v");
  EXPECT_EQ(t.shape(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(t.to_int64_vector()[5], -6);
  // Byte order is irrelevant for one-byte types.
  for (const char* d : {"|u1", "<u1", ">u1", "=u1"}) {
    SCOPED_TRACE(d);
    const Tensor u = parse_npy(make_npy(std::string("{'descr': '") + d + "', 'fortran_order': False, 'shape': (2,), }", {9, 250}), "u");
    EXPECT_EQ(u.dtype(), DType::kU8);
    EXPECT_EQ(u.to_int64_vector(), (std::vector<int64_t>{9, 250}));
  }
  // '=' is native order, little-endian here.
  const Tensor f = parse_npy(make_npy("{'descr': '=f4', 'fortran_order': False, 'shape': (1,), }", le_bytes<float>({0.75f})), "f");
  EXPECT_EQ(f.values<float>()[0], 0.75f);
}

TEST(Npy, BoolBytesAreNormalised) {
  const Tensor t = parse_npy(make_npy("{'descr': '|b1', 'fortran_order': False, 'shape': (4,), }", {0, 1, 2, 255}), "b");
  ASSERT_EQ(t.dtype(), DType::kBool);
  const auto* raw = static_cast<const uint8_t*>(t.raw());
  EXPECT_EQ(std::vector<uint8_t>(raw, raw + 4), (std::vector<uint8_t>{0, 1, 1, 1}));
}

TEST(Npy, RejectsBadInput) {
  const std::vector<uint8_t> good = serialize_npy(Tensor::from_vector<float>({2, 2}, {1, 2, 3, 4}));
  const auto hdr = [](const std::string& descr, const std::string& fortran, const std::string& shape) {
    return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
  };
  const ErrorCode kBad = ErrorCode::kInvalidArgument;

  // Truncation at every point: inside the magic, inside the header, inside the data.
  for (size_t n : {size_t{0}, size_t{5}, size_t{9}, size_t{40}, good.size() - 16, good.size() - 1}) {
    SCOPED_TRACE(n);
    const std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<long>(n));
    EXPECT_KILN_ERROR(parse_npy(cut, "cut.npy"), kBad, "cut.npy: ");
  }
  EXPECT_KILN_ERROR(parse_npy(std::vector<uint8_t>(good.begin(), good.begin() + 9), "c.npy"), kBad, "truncated");
  EXPECT_KILN_ERROR(parse_npy(std::vector<uint8_t>(good.begin(), good.begin() + 40), "c.npy"), kBad, "runs past the end");
  EXPECT_KILN_ERROR(parse_npy(std::vector<uint8_t>(good.begin(), good.end() - 1), "c.npy"), kBad,
                    "data truncated", "needs 16 bytes, only 15");
  // Data shorter or longer than the shape needs.
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<f4", "False", "(10,)"), le_bytes<float>({1, 2, 3})), "short.npy"),
                    kBad, "short.npy: data truncated", "needs 40 bytes, only 12");
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  EXPECT_KILN_ERROR(parse_npy(longer, "long.npy"), kBad, "1 unexpected bytes");

  // Magic and version.
  std::vector<uint8_t> bad_magic = good;
  bad_magic[1] = 'X';
  EXPECT_KILN_ERROR(parse_npy(bad_magic, "m.npy"), kBad, "m.npy: not a .npy file (bad magic)");
  EXPECT_KILN_ERROR(parse_npy(std::vector<uint8_t>{'P', 'K', 3, 4}, "zip.npy"), kBad, "bad magic");
  std::vector<uint8_t> bad_version = good;
  bad_version[6] = 4;
  EXPECT_KILN_ERROR(parse_npy(bad_version, "v.npy"), kBad, "version 4.0");
  bad_version[6] = 1;
  bad_version[7] = 1;
  EXPECT_KILN_ERROR(parse_npy(bad_version, "v.npy"), kBad, "version 1.1");

  // Header length past the end, in both header-length widths.
  std::vector<uint8_t> long_header = good;
  long_header[8] = 0xff;
  long_header[9] = 0xff;
  EXPECT_KILN_ERROR(parse_npy(long_header, "h.npy"), kBad, "h.npy: header length 65535 runs past the end");
  std::vector<uint8_t> v2 = make_npy(hdr("<f4", "False", "(1,)"), le_bytes<float>({1}), 2);
  v2[11] = 0x7f;
  EXPECT_KILN_ERROR(parse_npy(v2, "h2.npy"), kBad, "runs past the end");

  // Layouts and dtypes Kiln does not read.
  const std::vector<uint8_t> four_floats = le_bytes<float>({1, 2, 3, 4});
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<f4", "True", "(2, 2)"), four_floats), "f.npy"), kBad,
                    "f.npy: fortran_order=True");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr(">f4", "False", "(2, 2)"), four_floats), "be.npy"), kBad,
                    "be.npy: dtype '>f4': big-endian");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr(">i8", "False", "(2,)"), four_floats), "be.npy"), kBad, "big-endian");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("|O", "False", "(2,)"), std::vector<uint8_t>(16)), "o.npy"), kBad,
                    "o.npy: dtype '|O': object arrays");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<U3", "False", "(1,)"), std::vector<uint8_t>(12)), "s.npy"), kBad,
                    "string arrays");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<c8", "False", "(2,)"), four_floats), "c.npy"), kBad, "complex");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<f16", "False", "(1,)"), std::vector<uint8_t>(16)), "q.npy"), kBad,
                    "not a supported numpy dtype");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("|f4", "False", "(4,)"), four_floats), "p.npy"), kBad, "byte order");
  EXPECT_KILN_ERROR(parse_npy(make_npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }",
                                       four_floats), "r.npy"),
                    kBad, "structured");

  // Shapes.
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<f4", "False", "(-1,)"), four_floats), "n.npy"), kBad,
                    "n.npy: negative dimension -1");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<f4", "False", "(4294967296, 4294967296)"), four_floats), "o.npy"),
                    kBad, "too many elements");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<f8", "False", "(4611686018427387904,)"), four_floats), "o.npy"),
                    kBad, "too many elements");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<f4", "False", "(99999999999999999999,)"), four_floats), "o.npy"),
                    kBad, "does not fit in 64 bits");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<f4", "False", "(2.5,)"), four_floats), "o.npy"), kBad, "malformed");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<f4", "False", "4"), four_floats), "o.npy"), kBad, "'shape' is not a tuple");

  // Malformed dicts.
  EXPECT_KILN_ERROR(parse_npy(make_npy("{'descr': '<f4', 'shape': (4,), }", four_floats), "k.npy"), kBad,
                    "missing key 'fortran_order'");
  EXPECT_KILN_ERROR(parse_npy(make_npy(hdr("<f4", "False", "(4,)") + " 'x': 1", four_floats), "k.npy"), kBad,
                    "malformed");
  EXPECT_KILN_ERROR(parse_npy(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'extra': 1}",
                                       four_floats), "k.npy"),
                    kBad, "unexpected key 'extra'");
  EXPECT_KILN_ERROR(parse_npy(make_npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (4,)}", four_floats), "k.npy"),
                    kBad, "'fortran_order' is not True or False");
  EXPECT_KILN_ERROR(parse_npy(make_npy("{'descr': '<f4, 'fortran_order': False, 'shape': (4,)}", four_floats), "k.npy"),
                    kBad, "malformed .npy header");
  EXPECT_KILN_ERROR(parse_npy(make_npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (4,)}",
                                       four_floats), "k.npy"),
                    kBad, "duplicate key");
  EXPECT_KILN_ERROR(parse_npy(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': ((((((4,),),),),),)}",
                                       four_floats), "k.npy"),
                    kBad, "nesting too deep");
  EXPECT_KILN_ERROR(parse_npy(make_npy("", four_floats), "k.npy"), kBad, "expected '{'");
}

TEST(Npy, FileErrorsNameTheFile) {
  const TempDir tmp("fileerr");
  const fs::path& dir = tmp.path;
  EXPECT_KILN_ERROR(read_npy(dir / "nope.npy"), ErrorCode::kIo, (dir / "nope.npy").string());
  EXPECT_KILN_ERROR(read_npz(dir / "nope.npz"), ErrorCode::kIo, (dir / "nope.npz").string());
  EXPECT_KILN_ERROR(read_npy(dir), ErrorCode::kIo, "is a directory");
  EXPECT_KILN_ERROR(read_tensor_file(dir / "x.txt"), ErrorCode::kInvalidArgument, "x.txt",
                    "expected .npy or .npz");
  EXPECT_KILN_ERROR(read_tensor_file(dir / "noext"), ErrorCode::kInvalidArgument, "noext");

  const std::vector<uint8_t> bytes = serialize_npy(Tensor::from_vector<int32_t>({3}, {1, 2, 3}));
  write_bytes(dir / "trunc.npy", std::vector<uint8_t>(bytes.begin(), bytes.end() - 2));
  EXPECT_KILN_ERROR(read_npy(dir / "trunc.npy"), ErrorCode::kInvalidArgument,
                    (dir / "trunc.npy").string() + ": data truncated", "needs 12 bytes, only 10");
  EXPECT_KILN_ERROR(read_tensor_file(dir / "trunc.npy"), ErrorCode::kInvalidArgument, "trunc.npy");
  write_text(dir / "text.npy", "hello, world");
  EXPECT_KILN_ERROR(read_npy(dir / "text.npy"), ErrorCode::kInvalidArgument, "text.npy: not a .npy file");
  write_text(dir / "tiny.npy", "\x93NUM");
  EXPECT_KILN_ERROR(read_npy(dir / "tiny.npy"), ErrorCode::kInvalidArgument, "tiny.npy: truncated");
}

// ---------------------------------------------------------------------------------------------
// Damaged and hostile .npz archives.

// Builds a zip with libzip directly, so that tests can add members write_npz never would.
void make_zip(const fs::path& path, const std::vector<std::pair<std::string, std::vector<uint8_t>>>& members,
              bool deflate) {
  int err = 0;
  zip_t* za = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  ASSERT_NE(za, nullptr) << err;
  for (const auto& [name, bytes] : members) {
    zip_source_t* src = zip_source_buffer(za, bytes.data(), bytes.size(), 0);
    ASSERT_NE(src, nullptr);
    const zip_int64_t idx = zip_file_add(za, name.c_str(), src, 0);
    ASSERT_GE(idx, 0) << zip_strerror(za);
    ASSERT_EQ(zip_set_file_compression(za, static_cast<zip_uint64_t>(idx),
                                       deflate ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 9), 0);
  }
  ASSERT_EQ(zip_close(za), 0) << zip_strerror(za);
}

size_t find_bytes(const std::vector<uint8_t>& hay, const std::string& needle, size_t from = 0) {
  const std::vector<uint8_t> n(needle.begin(), needle.end());  // compare bytes, not signed chars
  auto it = std::search(hay.begin() + static_cast<long>(from), hay.end(), n.begin(), n.end());
  return it == hay.end() ? std::string::npos : static_cast<size_t>(it - hay.begin());
}

void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get_u32(const std::vector<uint8_t>& b, size_t at) {
  return b[at] | b[at + 1] << 8 | b[at + 2] << 16 | static_cast<uint32_t>(b[at + 3]) << 24;
}

// Sets the uncompressed size of the first member in both its local header and the central
// directory, keeping the archive self-consistent but lying.
void set_declared_size(std::vector<uint8_t>& zip, uint32_t size) {
  const size_t local = find_bytes(zip, std::string("PK\x03\x04", 4));
  const size_t central = find_bytes(zip, std::string("PK\x01\x02", 4));
  ASSERT_NE(local, std::string::npos);
  ASSERT_NE(central, std::string::npos);
  ASSERT_NE(get_u32(zip, local + 22), 0xffffffffu) << "unexpected zip64 sizes";
  put_u32(zip, local + 22, size);
  put_u32(zip, central + 24, size);
}

TEST(Npz, CorruptedArchivesAreRejected) {
  const TempDir tmp("badzip");
  const fs::path& dir = tmp.path;
  const Tensor t = Tensor::from_vector<float>({64}, std::vector<float>(64, 1.25f));
  const fs::path good = dir / "good.npz";
  write_npz(good, {{"w", t}});
  const std::vector<uint8_t> bytes = read_bytes(good);
  ASSERT_EQ(read_npz(good)[0].second.values<float>()[63], 1.25f);

  // A flipped byte in the stored tensor data: the CRC no longer matches.
  const size_t npy = find_bytes(bytes, "\x93NUMPY");
  ASSERT_NE(npy, std::string::npos);
  std::vector<uint8_t> flipped = bytes;
  flipped[npy + 128 + 100] ^= 0x40;
  write_bytes(dir / "flipped.npz", flipped);
  EXPECT_KILN_ERROR(read_npz(dir / "flipped.npz"), ErrorCode::kInvalidArgument, "flipped.npz", "member 'w.npy'");

  // A flipped byte in the member's .npy header.
  std::vector<uint8_t> bad_magic = bytes;
  bad_magic[npy + 1] = 'X';
  write_bytes(dir / "badmagic.npz", bad_magic);
  EXPECT_KILN_ERROR(read_npz(dir / "badmagic.npz"), ErrorCode::kInvalidArgument, "badmagic.npz", "w.npy");

  // Truncated archives lose the central directory.
  for (size_t n : {bytes.size() / 2, bytes.size() - 10, size_t{30}}) {
    SCOPED_TRACE(n);
    write_bytes(dir / "cut.npz", std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<long>(n)));
    EXPECT_KILN_ERROR(read_npz(dir / "cut.npz"), ErrorCode::kInvalidArgument, "cut.npz", "not a valid .npz");
  }
  // Not a zip at all; an empty file; a .npy renamed to .npz.
  write_text(dir / "text.npz", std::string(200, 'z'));
  EXPECT_KILN_ERROR(read_npz(dir / "text.npz"), ErrorCode::kInvalidArgument, "text.npz", "not a valid .npz");
  write_text(dir / "empty.npz", "");
  EXPECT_KILN_ERROR(read_npz(dir / "empty.npz"), ErrorCode::kInvalidArgument, "empty.npz");
  write_npy(dir / "renamed.npz", t);
  EXPECT_KILN_ERROR(read_tensor_file(dir / "renamed.npz"), ErrorCode::kInvalidArgument, "renamed.npz");

  // A stored member whose declared size disagrees with its stored size.
  std::vector<uint8_t> resized = bytes;
  set_declared_size(resized, static_cast<uint32_t>(serialize_npy(t).size() + 100));
  write_bytes(dir / "resized.npz", resized);
  EXPECT_KILN_ERROR(read_npz(dir / "resized.npz"), ErrorCode::kInvalidArgument, "resized.npz", "w.npy");
}

TEST(Npz, MembersMustBeNpyFiles) {
  const TempDir tmp("members");
  const fs::path& dir = tmp.path;
  const std::vector<uint8_t> npy = serialize_npy(Tensor::scalar<int32_t>(3));
  make_zip(dir / "txt.npz", {{"a.npy", npy}, {"readme.txt", {'h', 'i'}}}, false);
  EXPECT_KILN_ERROR(read_npz(dir / "txt.npz"), ErrorCode::kInvalidArgument, "txt.npz", "'readme.txt'",
                    "not a .npy file");
  make_zip(dir / "garbage.npz", {{"g.npy", {'n', 'o', 't', ' ', 'n', 'p', 'y', '!', '!', '!', '!'}}}, true);
  EXPECT_KILN_ERROR(read_npz(dir / "garbage.npz"), ErrorCode::kInvalidArgument, "garbage.npz", "'g.npy'",
                    "bad magic");
  // Directory entries are skipped; nested names keep their path.
  make_zip(dir / "dirs.npz", {{"sub/", {}}, {"sub/x.npy", npy}}, true);
  const NamedTensors d = read_npz(dir / "dirs.npz");
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].first, "sub/x");
  EXPECT_EQ(d[0].second.to_int64_vector(), std::vector<int64_t>{3});
}

TEST(Npz, DeflatedMembersAreBoundedByTheirDeclaredSize) {
  const TempDir tmp("bomb");
  const fs::path& dir = tmp.path;
  const Tensor zeros(DType::kF32, {4096});
  const std::vector<uint8_t> npy = serialize_npy(zeros);
  make_zip(dir / "ok.npz", {{"z.npy", npy}}, true);
  const NamedTensors ok = read_npz(dir / "ok.npz");
  ASSERT_EQ(ok.size(), 1u);
  EXPECT_EQ(ok[0].second.shape(), std::vector<int64_t>{4096});
  EXPECT_EQ(ok[0].second.values<float>()[4095], 0.0f);
  const std::vector<uint8_t> zip = read_bytes(dir / "ok.npz");

  // Declares ~2 GiB from a few dozen compressed bytes: rejected before anything is allocated.
  std::vector<uint8_t> huge = zip;
  set_declared_size(huge, 0x7ffffff0u);
  write_bytes(dir / "huge.npz", huge);
  EXPECT_KILN_ERROR(read_npz(dir / "huge.npz"), ErrorCode::kInvalidArgument, "huge.npz", "'z.npy'",
                    "more than deflate can produce");

  // The stream inflates to more than declared: the .npy is padded with garbage after its data,
  // then the declared size is set to the .npy alone. Reading stops at the declared size and
  // the surplus is reported.
  std::vector<uint8_t> padded = npy;
  padded.insert(padded.end(), 1000, 0xab);
  make_zip(dir / "padded.npz", {{"z.npy", padded}}, true);
  std::vector<uint8_t> lying = read_bytes(dir / "padded.npz");
  set_declared_size(lying, static_cast<uint32_t>(npy.size()));
  write_bytes(dir / "lying.npz", lying);
  EXPECT_KILN_ERROR(read_npz(dir / "lying.npz"), ErrorCode::kInvalidArgument, "lying.npz", "'z.npy'");

  // The declared size agrees with the .npy header, but the stream inflates to less.
  make_zip(dir / "cut.npz", {{"z.npy", std::vector<uint8_t>(npy.begin(), npy.end() - 4)}}, true);
  std::vector<uint8_t> cut = read_bytes(dir / "cut.npz");
  set_declared_size(cut, static_cast<uint32_t>(npy.size()));
  write_bytes(dir / "cut.npz", cut);
  EXPECT_KILN_ERROR(read_npz(dir / "cut.npz"), ErrorCode::kInvalidArgument, "cut.npz", "'z.npy'");

  // And the reverse: declared larger than the .npy header says.
  std::vector<uint8_t> short_stream = zip;
  set_declared_size(short_stream, static_cast<uint32_t>(npy.size() + 4));
  write_bytes(dir / "short.npz", short_stream);
  EXPECT_KILN_ERROR(read_npz(dir / "short.npz"), ErrorCode::kInvalidArgument, "short.npz", "'z.npy'");
}

// ---------------------------------------------------------------------------------------------
// Interoperability with numpy itself.

constexpr const char* kPython = "/usr/bin/python3";

// Python defining ARRAYS, the values both sides agree on (mirrored by check_fixture below).
constexpr const char* kArraysPy = R"PY(
import os, sys
import numpy as np
ARRAYS = {
    'f32': np.array([[0, -1.5, 3.25], [np.inf, -np.inf, 1e-45]], dtype='<f4'),
    'f64': np.array([1 / 3, -2.5e300, 0.0], dtype='<f8'),
    'f16': np.array([0.5, -2, 65504, 6e-8], dtype='<f2'),
    'i8': np.array([-128, 127, 0, -1], dtype='i1'),
    'u8': np.array([0, 255, 7], dtype='u1'),
    'i16': np.array([-32768, 32767, 3], dtype='<i2'),
    'u16': np.array([0, 65535], dtype='<u2'),
    'i32': np.array([-2**31, 2**31 - 1], dtype='<i4'),
    'u32': np.array([0, 2**32 - 1], dtype='<u4'),
    'i64': np.array([-2**63, 2**63 - 1, 42], dtype='<i8'),
    'u64': np.array([0, 2**64 - 1], dtype='<u8'),
    'bool': np.array([True, False, True]),
    'scalar': np.array(2.5, dtype='<f4'),
    'empty': np.zeros((3, 0, 2), dtype='<f4'),
    'cube': np.arange(24, dtype='<i4').reshape(2, 3, 4),
}
d = sys.argv[1]
)PY";

constexpr const char* kGeneratePy = R"PY(
for k, a in ARRAYS.items():
    np.save(os.path.join(d, k + '.npy'), a)
np.savez(os.path.join(d, 'plain.npz'), **ARRAYS)
np.savez_compressed(os.path.join(d, 'compressed.npz'), **ARRAYS)
np.savez_compressed(os.path.join(d, 'big.npz'), big=np.arange(200000, dtype='<f4') * 0.5,
                    ids=np.arange(1000, dtype='<i8') % 7)
np.savez(os.path.join(d, 'none.npz'))
for v in [(1, 0), (2, 0), (3, 0)]:
    with open(os.path.join(d, 'cube_v%d.npy' % v[0]), 'wb') as f:
        np.lib.format.write_array(f, ARRAYS['cube'], version=v)
np.save(os.path.join(d, 'fortran.npy'), np.asfortranarray(np.arange(6, dtype='<f4').reshape(2, 3)))
np.save(os.path.join(d, 'bigendian.npy'), np.arange(4, dtype='>f4'))
np.save(os.path.join(d, 'object.npy'), np.array([1, 'a', None], dtype=object), allow_pickle=True)
np.save(os.path.join(d, 'strings.npy'), np.array(['ab', 'c']))
np.savez_compressed(os.path.join(d, 'mixed.npz'), good=np.ones(3, '<f4'), bad=np.arange(3, dtype='>i4'))
)PY";

constexpr const char* kVerifyPy = R"PY(
def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
z = np.load(os.path.join(d, 'kiln.npz'))
assert list(z.files) == list(ARRAYS), z.files
for k, a in ARRAYS.items():
    assert same(z[k], a), (k, z[k], a)
    b = np.load(os.path.join(d, 'kiln_' + k + '.npy'))
    assert same(b, a), (k, b, a)
    assert b.flags['C_CONTIGUOUS']
bf = np.load(os.path.join(d, 'kiln_bf16.npy'))
assert bf.dtype == np.float32 and list(bf) == [1.5, -2.0, 0.10009765625], bf
assert len(np.load(os.path.join(d, 'kiln_none.npz')).files) == 0
print('numpy verified')
)PY";

class NumpyInterop : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(kPython)) {
      skip_reason_ = std::string(kPython) + " is missing";
      return;
    }
    if (std::system((std::string(kPython) + " -c 'import numpy' >/dev/null 2>&1").c_str()) != 0) {
      skip_reason_ = std::string(kPython) + " has no numpy";
      return;
    }
    dir_ = make_temp_dir("numpy");
    write_text(dir_ / "generate.py", std::string(kArraysPy) + kGeneratePy);
    write_text(dir_ / "verify.py", std::string(kArraysPy) + kVerifyPy);
    generated_ = run_python("generate.py");
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
    dir_.clear();
  }
  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << "numpy interop tests skipped: " << skip_reason_;
    ASSERT_TRUE(generated_) << "generating numpy fixtures failed";
  }
  static bool run_python(const std::string& script) {
    const std::string cmd = std::string(kPython) + " " + (dir_ / script).string() + " " + dir_.string() +
                            " > " + (dir_ / (script + ".log")).string() + " 2>&1";
    const int rc = std::system(cmd.c_str());
    if (rc != 0) {
      std::ifstream log(dir_ / (script + ".log"));
      std::cerr << script << " failed (" << rc << "):\n" << std::string(std::istreambuf_iterator<char>(log), {});
    }
    return rc == 0;
  }

  static inline std::string skip_reason_;
  static inline fs::path dir_;
  static inline bool generated_ = false;
};

// Checks one of ARRAYS (see kArraysPy) read back into Kiln.
void check_fixture(const std::string& name, const Tensor& t) {
  SCOPED_TRACE(name);
  using V = std::vector<int64_t>;
  auto doubles = [&] { return t.to_double_vector(); };
  if (name == "f32") {
    ASSERT_EQ(t.dtype(), DType::kF32);
    ASSERT_EQ(t.shape(), (V{2, 3}));
    const auto v = t.values<float>();
    EXPECT_EQ(v[0], 0.0f);
    EXPECT_EQ(v[1], -1.5f);
    EXPECT_EQ(v[2], 3.25f);
    EXPECT_EQ(v[3], std::numeric_limits<float>::infinity());
    EXPECT_EQ(v[4], -std::numeric_limits<float>::infinity());
    EXPECT_EQ(v[5], std::numeric_limits<float>::denorm_min());
  } else if (name == "f64") {
    ASSERT_EQ(t.dtype(), DType::kF64);
    EXPECT_EQ(doubles(), (std::vector<double>{1.0 / 3.0, -2.5e300, 0.0}));
  } else if (name == "f16") {
    ASSERT_EQ(t.dtype(), DType::kF16);
    EXPECT_EQ(doubles(), (std::vector<double>{0.5, -2.0, 65504.0, std::ldexp(1.0, -24)}));
  } else if (name == "i8") {
    ASSERT_EQ(t.dtype(), DType::kI8);
    EXPECT_EQ(t.to_int64_vector(), (V{-128, 127, 0, -1}));
  } else if (name == "u8") {
    ASSERT_EQ(t.dtype(), DType::kU8);
    EXPECT_EQ(t.to_int64_vector(), (V{0, 255, 7}));
  } else if (name == "i16") {
    ASSERT_EQ(t.dtype(), DType::kI16);
    EXPECT_EQ(t.to_int64_vector(), (V{-32768, 32767, 3}));
  } else if (name == "u16") {
    ASSERT_EQ(t.dtype(), DType::kU16);
    EXPECT_EQ(t.to_int64_vector(), (V{0, 65535}));
  } else if (name == "i32") {
    ASSERT_EQ(t.dtype(), DType::kI32);
    EXPECT_EQ(t.to_int64_vector(), (V{-2147483648LL, 2147483647LL}));
  } else if (name == "u32") {
    ASSERT_EQ(t.dtype(), DType::kU32);
    EXPECT_EQ(t.to_int64_vector(), (V{0, 4294967295LL}));
  } else if (name == "i64") {
    ASSERT_EQ(t.dtype(), DType::kI64);
    EXPECT_EQ(t.to_int64_vector(),
              (V{std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), 42}));
  } else if (name == "u64") {
    ASSERT_EQ(t.dtype(), DType::kU64);
    EXPECT_EQ(t.values<uint64_t>()[0], 0u);
    EXPECT_EQ(t.values<uint64_t>()[1], std::numeric_limits<uint64_t>::max());
  } else if (name == "bool") {
    ASSERT_EQ(t.dtype(), DType::kBool);
    EXPECT_EQ(t.to_int64_vector(), (V{1, 0, 1}));
  } else if (name == "scalar") {
    ASSERT_EQ(t.dtype(), DType::kF32);
    EXPECT_EQ(t.rank(), 0u);
    EXPECT_EQ(t.values<float>()[0], 2.5f);
  } else if (name == "empty") {
    ASSERT_EQ(t.dtype(), DType::kF32);
    EXPECT_EQ(t.shape(), (V{3, 0, 2}));
    EXPECT_EQ(t.numel(), 0);
  } else if (name == "cube") {
    ASSERT_EQ(t.dtype(), DType::kI32);
    EXPECT_EQ(t.shape(), (V{2, 3, 4}));
    const V v = t.to_int64_vector();
    for (int64_t i = 0; i < 24; ++i) EXPECT_EQ(v[static_cast<size_t>(i)], i);
  } else {
    ADD_FAILURE() << "unexpected array " << name;
  }
}

const std::vector<std::string> kFixtureNames = {"f32", "f64", "f16", "i8",  "u8",     "i16",   "u16", "i32",
                                                "u32", "u64", "i64", "bool", "scalar", "empty", "cube"};

TEST_F(NumpyInterop, ReadsNpySavedByNumpy) {
  for (const auto& name : kFixtureNames) check_fixture(name, read_npy(dir_ / (name + ".npy")));
  for (int v : {1, 2, 3}) check_fixture("cube", read_npy(dir_ / ("cube_v" + std::to_string(v) + ".npy")));
}

TEST_F(NumpyInterop, ReadsNpzFromSavezAndSavezCompressed) {
  for (const char* file : {"plain.npz", "compressed.npz"}) {
    SCOPED_TRACE(file);
    const NamedTensors z = read_tensor_file(dir_ / file);
    ASSERT_EQ(z.size(), 15u);
    EXPECT_EQ(z.front().first, "f32");  // savez keeps keyword order
    EXPECT_EQ(z.back().first, "cube");
    for (const auto& [name, t] : z) check_fixture(name, t);
  }
  const NamedTensors big = read_npz(dir_ / "big.npz");
  ASSERT_EQ(big.size(), 2u);
  EXPECT_EQ(big[0].first, "big");
  ASSERT_EQ(big[0].second.shape(), std::vector<int64_t>{200000});
  const auto v = big[0].second.values<float>();
  EXPECT_EQ(v[0], 0.0f);
  EXPECT_EQ(v[3], 1.5f);
  EXPECT_EQ(v[199999], 99999.5f);
  EXPECT_EQ(big[1].first, "ids");
  EXPECT_EQ(big[1].second.to_int64_vector()[999], 999 % 7);
  EXPECT_TRUE(read_npz(dir_ / "none.npz").empty());
}

TEST_F(NumpyInterop, RejectsWhatNumpyWritesButKilnDoesNotRead) {
  EXPECT_KILN_ERROR(read_npy(dir_ / "fortran.npy"), ErrorCode::kInvalidArgument, "fortran.npy", "fortran_order");
  EXPECT_KILN_ERROR(read_npy(dir_ / "bigendian.npy"), ErrorCode::kInvalidArgument, "bigendian.npy", "big-endian");
  EXPECT_KILN_ERROR(read_npy(dir_ / "object.npy"), ErrorCode::kInvalidArgument, "object.npy", "object arrays");
  EXPECT_KILN_ERROR(read_npy(dir_ / "strings.npy"), ErrorCode::kInvalidArgument, "strings.npy", "string arrays");
  EXPECT_KILN_ERROR(read_npz(dir_ / "mixed.npz"), ErrorCode::kInvalidArgument, "mixed.npz", "'bad.npy'",
                    "big-endian");
}

TEST_F(NumpyInterop, NumpyReadsWhatKilnWrites) {
  // Read each fixture with Kiln, write it back with Kiln, and have numpy compare with ARRAYS.
  NamedTensors all;
  for (const auto& name : {"f32", "f64", "f16", "i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64", "bool",
                           "scalar", "empty", "cube"}) {
    Tensor t = read_npy(dir_ / (std::string(name) + ".npy"));
    write_npy(dir_ / ("kiln_" + std::string(name) + ".npy"), t);
    all.emplace_back(name, std::move(t));
  }
  write_npz(dir_ / "kiln.npz", all);
  write_npy(dir_ / "kiln_bf16.npy",
            Tensor::from_vector<BFloat16>({3}, {BFloat16(1.5f), BFloat16(-2.0f), BFloat16(0.1f)}));
  write_npz(dir_ / "kiln_none.npz", {});
  EXPECT_TRUE(run_python("verify.py"));
}

}  // namespace
}  // namespace kiln
