// .npy / .npz reading and writing.
//
// Reading: .npy format versions 1.0, 2.0 and 3.0; the header (a Python dict literal) is parsed
// by hand. Accepted dtypes are the little-endian (or byte-order-free) numeric and bool ones:
// '<f2' '<f4' '<f8' '|i1' '<i2' '<i4' '<i8' '|u1' '<u2' '<u4' '<u8' '|b1' (also '<' or '=' for
// one-byte types). Rejected, with kInvalidArgument naming the source: fortran_order=True,
// big-endian multi-byte data, object/string/complex/structured dtypes, bad magic or version,
// header lengths past the end, malformed headers, negative or overflowing shapes, data shorter
// or longer than the shape needs.
//
// Writing: format 1.0 (2.0 when the header would not fit), C order, header padded so that the
// data starts at a multiple of 64 bytes like numpy does. numpy has no bfloat16, so bf16 tensors
// are widened to float32 ('<f4') on write; that is exact, but the file reads back as f32. fp8
// and string tensors cannot be written.
//
// .npz: read with libzip, stored or deflated members. Each member is read straight into the
// tensor's storage: never more than the size the archive declares for it, and the member must
// then end exactly there with a good CRC. Written with stored (uncompressed) members, as
// np.savez does.
#include "util/npy.h"

#include <zip.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <string_view>

namespace kiln {

static_assert(std::endian::native == std::endian::little,
              "npy.cpp copies little-endian file data straight into tensors");

namespace {

constexpr uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
// No dtype Kiln accepts needs a long header; the cap keeps a hostile header length (up to 4 GiB
// in format 2.0) from being allocated. numpy's own reader caps at 10000 by default.
constexpr uint64_t kMaxHeaderLen = 1 << 20;
// Deflate cannot expand data by more than about 1032:1.
constexpr uint64_t kMaxDeflateRatio = 1040;

[[noreturn]] void fail(const std::string& source, const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, source + ": " + what);
}
[[noreturn]] void fail_io(const std::string& source, const std::string& what) {
  throw Error(ErrorCode::kIo, source + ": " + what);
}

// ---------------------------------------------------------------------------------------------
// Header dict parser: a small subset of Python literals (strings, True/False/None, integers,
// tuples and lists), enough for what numpy writes and strict about everything else.

struct PyValue {
  enum class Kind { kStr, kBool, kNone, kInt, kSeq };
  Kind kind = Kind::kNone;
  std::string str;
  bool b = false;
  bool int_overflow = false;
  int64_t i = 0;
  std::vector<PyValue> items;
};

class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& source) : s_(text), source_(source) {}

  std::vector<std::pair<std::string, PyValue>> parse_dict() {
    std::vector<std::pair<std::string, PyValue>> out;
    skip_ws();
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') break;
      PyValue key = parse_value(0);
      if (key.kind != PyValue::Kind::kStr) error("header dict keys must be strings");
      skip_ws();
      expect(':');
      PyValue v = parse_value(0);
      for (const auto& kv : out)
        if (kv.first == key.str) error("duplicate key '" + key.str + "' in header");
      out.emplace_back(std::move(key.str), std::move(v));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != '}') error("expected ',' or '}' in header");
    }
    ++pos_;  // '}'
    skip_ws();
    if (pos_ != s_.size()) error("unexpected text after the header dict");
    return out;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail(source_, "malformed .npy header: " + what + " (at offset " + std::to_string(pos_) + ")");
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' ||
                                s_[pos_] == '\r'))
      ++pos_;
  }
  void expect(char c) {
    if (peek() != c) error(std::string("expected '") + c + "'");
    ++pos_;
  }
  bool starts_with_word(std::string_view w) const {
    if (s_.substr(pos_, w.size()) != w) return false;
    const char next = pos_ + w.size() < s_.size() ? s_[pos_ + w.size()] : '\0';
    return !(std::isalnum(static_cast<unsigned char>(next)) || next == '_');
  }

  PyValue parse_value(int depth) {
    if (depth > 4) error("nesting too deep");
    skip_ws();
    PyValue v;
    const char c = peek();
    if (c == '\'' || c == '"') {
      ++pos_;
      const size_t start = pos_;
      while (pos_ < s_.size() && s_[pos_] != c) {
        if (s_[pos_] == '\\' || s_[pos_] == '\n') error("unsupported character in string");
        ++pos_;
      }
      if (pos_ >= s_.size()) error("unterminated string");
      v.kind = PyValue::Kind::kStr;
      v.str = std::string(s_.substr(start, pos_ - start));
      ++pos_;
      return v;
    }
    if (c == '(' || c == '[') {
      const char close = c == '(' ? ')' : ']';
      ++pos_;
      v.kind = PyValue::Kind::kSeq;
      for (;;) {
        skip_ws();
        if (peek() == close) break;
        v.items.push_back(parse_value(depth + 1));
        skip_ws();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        if (peek() != close) error(std::string("expected ',' or '") + close + "'");
      }
      ++pos_;
      return v;
    }
    if (c == '-' || c == '+' || (c >= '0' && c <= '9')) {
      bool neg = false;
      if (c == '-' || c == '+') {
        neg = c == '-';
        ++pos_;
      }
      if (!(peek() >= '0' && peek() <= '9')) error("expected a digit");
      uint64_t mag = 0;
      bool overflow = false;
      while (peek() >= '0' && peek() <= '9') {
        const unsigned d = static_cast<unsigned>(peek() - '0');
        if (mag > (std::numeric_limits<uint64_t>::max() - d) / 10) overflow = true;
        else mag = mag * 10 + d;
        ++pos_;
      }
      if (peek() == 'L' || peek() == 'l') ++pos_;  // Python 2 longs, in old files
      if (mag > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) overflow = true;
      v.kind = PyValue::Kind::kInt;
      v.int_overflow = overflow;
      v.i = overflow ? 0 : (neg ? -static_cast<int64_t>(mag) : static_cast<int64_t>(mag));
      return v;
    }
    if (starts_with_word("True") || starts_with_word("False")) {
      v.kind = PyValue::Kind::kBool;
      v.b = c == 'T';
      pos_ += v.b ? 4 : 5;
      return v;
    }
    if (starts_with_word("None")) {
      pos_ += 4;
      return v;
    }
    error("unexpected character '" + std::string(1, c) + "'");
  }

  std::string_view s_;
  const std::string& source_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------------------------------------
// dtype descriptors.

DType dtype_from_descr(const std::string& d, const std::string& source) {
  auto bad = [&](const std::string& why) -> DType { fail(source, "dtype '" + d + "': " + why); };
  if (d.size() < 2) return bad("not a supported numpy dtype");
  const char order = d[0];
  if (order != '<' && order != '>' && order != '|' && order != '=')
    return bad("not a supported numpy dtype (expected a byte-order character)");
  const char kind = d[1];
  switch (kind) {
    case 'O': return bad("object arrays are not supported");
    case 'U': case 'S': case 'a': return bad("string arrays are not supported");
    case 'c': return bad("complex arrays are not supported");
    case 'M': case 'm': return bad("datetime arrays are not supported");
    case 'V': return bad("void/structured arrays are not supported");
    default: break;
  }
  const std::string digits = d.substr(2);
  if (digits.empty() || digits.size() > 2 ||
      !std::all_of(digits.begin(), digits.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
    return bad("not a supported numpy dtype");
  const int size = std::stoi(digits);
  DType dt = DType::kUndefined;
  if (kind == 'f') {
    dt = size == 2 ? DType::kF16 : size == 4 ? DType::kF32 : size == 8 ? DType::kF64 : dt;
  } else if (kind == 'i') {
    dt = size == 1 ? DType::kI8 : size == 2 ? DType::kI16 : size == 4 ? DType::kI32
       : size == 8 ? DType::kI64 : dt;
  } else if (kind == 'u') {
    dt = size == 1 ? DType::kU8 : size == 2 ? DType::kU16 : size == 4 ? DType::kU32
       : size == 8 ? DType::kU64 : dt;
  } else if (kind == 'b') {
    dt = size == 1 ? DType::kBool : dt;
  }
  if (dt == DType::kUndefined) return bad("not a supported numpy dtype");
  if (size > 1 && order == '>') return bad("big-endian data is not supported");
  if (size > 1 && order == '|') return bad("multi-byte type without a byte order");
  return dt;
}

std::string descr_for(DType dt) {
  switch (dt) {
    case DType::kF32: return "<f4";
    case DType::kBF16: return "<f4";  // widened on write
    case DType::kF16: return "<f2";
    case DType::kF64: return "<f8";
    case DType::kI8: return "|i1";
    case DType::kU8: return "|u1";
    case DType::kI16: return "<i2";
    case DType::kU16: return "<u2";
    case DType::kI32: return "<i4";
    case DType::kU32: return "<u4";
    case DType::kI64: return "<i8";
    case DType::kU64: return "<u8";
    case DType::kBool: return "|b1";
    case DType::kUndefined:
    case DType::kF8E4M3FN:
    case DType::kF8E5M2:
    case DType::kString:
      break;
  }
  throw Error(ErrorCode::kUnsupported,
              "cannot write a " + std::string(dtype_name(dt)) + " tensor to .npy (numpy has no such dtype)");
}

// ---------------------------------------------------------------------------------------------
// Reading, shared by the in-memory, file and zip-member paths. `read(dst, n)` must fill n bytes
// (the callers check `total` first, so a short read is a truncated or lying source).

struct NpyHeader {
  DType dtype = DType::kUndefined;
  std::vector<int64_t> shape;
  uint64_t data_bytes = 0;
};

NpyHeader parse_header_dict(std::string_view text, const std::string& source) {
  HeaderParser p(text, source);
  auto dict = p.parse_dict();
  const PyValue* descr = nullptr;
  const PyValue* fortran = nullptr;
  const PyValue* shape = nullptr;
  for (const auto& [k, v] : dict) {
    if (k == "descr") descr = &v;
    else if (k == "fortran_order") fortran = &v;
    else if (k == "shape") shape = &v;
    else fail(source, "malformed .npy header: unexpected key '" + k + "'");
  }
  if (!descr || !fortran || !shape)
    fail(source, std::string("malformed .npy header: missing key '") +
                     (!descr ? "descr" : !fortran ? "fortran_order" : "shape") + "'");
  if (descr->kind == PyValue::Kind::kSeq)
    fail(source, "structured (record) dtypes are not supported");
  if (descr->kind != PyValue::Kind::kStr) fail(source, "malformed .npy header: 'descr' is not a string");
  if (fortran->kind != PyValue::Kind::kBool)
    fail(source, "malformed .npy header: 'fortran_order' is not True or False");
  if (shape->kind != PyValue::Kind::kSeq)
    fail(source, "malformed .npy header: 'shape' is not a tuple");

  NpyHeader h;
  h.dtype = dtype_from_descr(descr->str, source);
  if (fortran->b)
    fail(source, "fortran_order=True (column-major) arrays are not supported; save a C-ordered "
                 "copy (np.ascontiguousarray)");
  uint64_t numel = 1;
  bool too_big = false;
  for (const PyValue& d : shape->items) {
    if (d.kind != PyValue::Kind::kInt) fail(source, "malformed .npy header: shape entries must be integers");
    if (d.int_overflow) fail(source, "shape dimension does not fit in 64 bits");
    if (d.i < 0) fail(source, "negative dimension " + std::to_string(d.i) + " in shape");
    h.shape.push_back(d.i);
    const uint64_t u = static_cast<uint64_t>(d.i);
    if (u != 0 && numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / u) too_big = true;
    else numel *= u;
  }
  const uint64_t elem = dtype_size(h.dtype);
  // A zero dimension makes the tensor empty whatever the others say, but the element count of
  // the non-zero dimensions must still be representable.
  if (too_big || numel > std::numeric_limits<uint64_t>::max() / 4 / elem)
    fail(source, "shape " + shape_to_string(h.shape) + " has too many elements");
  h.data_bytes = numel * elem;
  return h;
}

template <typename ReadFn>
Tensor load_npy(uint64_t total, const std::string& source, ReadFn&& read) {
  uint8_t pre[12];
  if (total < 10) {
    read(pre, static_cast<size_t>(total));
    if (std::memcmp(pre, kMagic, std::min<size_t>(total, sizeof(kMagic))) != 0)
      fail(source, "not a .npy file (bad magic)");
    fail(source, "truncated: " + std::to_string(total) + " bytes is too short for a .npy header");
  }
  read(pre, 10);
  if (std::memcmp(pre, kMagic, sizeof(kMagic)) != 0) fail(source, "not a .npy file (bad magic)");
  const int major = pre[6], minor = pre[7];
  if (!((major == 1 || major == 2 || major == 3) && minor == 0))
    fail(source, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor));
  uint64_t prefix = 10, header_len = 0;
  if (major == 1) {
    header_len = static_cast<uint64_t>(pre[8]) | static_cast<uint64_t>(pre[9]) << 8;
  } else {
    if (total < 12) fail(source, "truncated: too short for a version 2/3 .npy header");
    read(pre + 10, 2);
    prefix = 12;
    header_len = static_cast<uint64_t>(pre[8]) | static_cast<uint64_t>(pre[9]) << 8 |
                 static_cast<uint64_t>(pre[10]) << 16 | static_cast<uint64_t>(pre[11]) << 24;
  }
  if (header_len > total - prefix)
    fail(source, "header length " + std::to_string(header_len) + " runs past the end of the data (" +
                     std::to_string(total) + " bytes)");
  if (header_len > kMaxHeaderLen)
    fail(source, "header length " + std::to_string(header_len) + " is implausibly large");
  std::string text(static_cast<size_t>(header_len), '\0');
  read(text.data(), text.size());
  NpyHeader h = parse_header_dict(text, source);

  const uint64_t avail = total - prefix - header_len;
  if (avail < h.data_bytes)
    fail(source, "data truncated: shape " + shape_to_string(h.shape) + " of " +
                     std::string(dtype_name(h.dtype)) + " needs " + std::to_string(h.data_bytes) +
                     " bytes, only " + std::to_string(avail) + " present");
  if (avail > h.data_bytes)
    fail(source, std::to_string(avail - h.data_bytes) + " unexpected bytes after the data of shape " +
                     shape_to_string(h.shape) + " " + std::string(dtype_name(h.dtype)));

  Tensor t;
  try {
    t = Tensor(h.dtype, h.shape);
  } catch (const Error& e) {
    fail(source, e.what());
  }
  if (h.data_bytes) read(t.mutable_raw(), static_cast<size_t>(h.data_bytes));
  if (h.dtype == DType::kBool) {  // only 0 and 1 are valid bools in C++
    auto* p = static_cast<uint8_t*>(t.mutable_raw());
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = p[i] != 0;
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// Writing.

std::string make_header(const Tensor& t) {
  std::string dict = "{'descr': '" + descr_for(t.dtype()) + "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < t.rank(); ++i) {
    if (i) dict += ", ";
    dict += std::to_string(t.dim(i));
  }
  if (t.rank() == 1) dict += ',';
  dict += "), }";
  // Pad with spaces and end with '\n' so that magic + length + header is a multiple of 64.
  // Format 1.0 stores the header length in 16 bits; longer headers need format 2.0.
  auto padded_len = [&](size_t prefix) { return (prefix + dict.size() + 1 + 63) / 64 * 64 - prefix; };
  const size_t prefix = padded_len(10) <= 65535 ? 10 : 12;
  dict.append(padded_len(prefix) - dict.size() - 1, ' ');
  dict += '\n';
  const uint64_t hlen = dict.size();
  std::string out(reinterpret_cast<const char*>(kMagic), sizeof(kMagic));
  out += static_cast<char>(prefix == 10 ? 1 : 2);
  out += '\0';
  out += static_cast<char>(hlen & 0xff);
  out += static_cast<char>((hlen >> 8) & 0xff);
  if (prefix == 12) {
    out += static_cast<char>((hlen >> 16) & 0xff);
    out += static_cast<char>((hlen >> 24) & 0xff);
  }
  return out + dict;
}

void check_writable(const Tensor& t, const std::string& what) {
  if (!t.defined())
    throw Error(ErrorCode::kInvalidArgument, what + ": cannot write an undefined tensor");
  try {
    (void)descr_for(t.dtype());  // throws for dtypes numpy lacks
  } catch (const Error& e) {
    throw Error(e.code(), what + ": " + e.what());
  }
}

// The bytes to store after the header: the tensor's own storage, or a widened copy for bf16.
struct Payload {
  std::vector<float> widened;
  const void* data = nullptr;
  size_t size = 0;
};

Payload payload_of(const Tensor& t) {
  Payload p;
  if (t.dtype() == DType::kBF16) {
    const auto* src = static_cast<const uint16_t*>(t.raw());
    p.widened.resize(static_cast<size_t>(t.numel()));
    for (size_t i = 0; i < p.widened.size(); ++i) p.widened[i] = bf16_to_float(src[i]);
    p.data = p.widened.data();
    p.size = p.widened.size() * sizeof(float);
  } else {
    p.data = t.raw();
    p.size = t.nbytes();
  }
  return p;
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

std::string errno_text() { return std::strerror(errno); }

// ---------------------------------------------------------------------------------------------
// libzip helpers.

std::string zip_error_text(int code) {
  zip_error_t ze;
  zip_error_init_with_code(&ze, code);
  std::string s = zip_error_strerror(&ze);
  zip_error_fini(&ze);
  return s;
}

struct ZipDiscard {
  void operator()(zip_t* z) const { zip_discard(z); }
};
using ZipPtr = std::unique_ptr<zip_t, ZipDiscard>;
struct ZipFileCloser {
  void operator()(zip_file_t* f) const { zip_fclose(f); }
};
using ZipFilePtr = std::unique_ptr<zip_file_t, ZipFileCloser>;

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

Tensor parse_npy(std::span<const uint8_t> bytes, const std::string& source) {
  size_t pos = 0;
  return load_npy(bytes.size(), source, [&](void* dst, size_t n) {
    if (n > bytes.size() - pos) fail(source, "truncated");  // unreachable: sizes checked first
    if (n) std::memcpy(dst, bytes.data() + pos, n);
    pos += n;
  });
}

Tensor read_npy(const std::filesystem::path& path) {
  const std::string source = path.string();
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail_io(source, "is a directory");
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) fail_io(source, "cannot open: " + errno_text());
  if (std::fseek(f.get(), 0, SEEK_END) != 0) fail_io(source, "cannot seek: " + errno_text());
  const long end = std::ftell(f.get());
  if (end < 0) fail_io(source, "cannot tell size: " + errno_text());
  std::rewind(f.get());
  return load_npy(static_cast<uint64_t>(end), source, [&](void* dst, size_t n) {
    if (std::fread(dst, 1, n, f.get()) != n)
      fail_io(source, std::ferror(f.get()) ? "read error: " + errno_text() : "file shrank while reading");
  });
}

std::vector<uint8_t> serialize_npy(const Tensor& t) {
  check_writable(t, "serialize_npy");
  const std::string header = make_header(t);
  const Payload p = payload_of(t);
  std::vector<uint8_t> out(header.size() + p.size);
  std::memcpy(out.data(), header.data(), header.size());
  if (p.size) std::memcpy(out.data() + header.size(), p.data, p.size);
  return out;
}

void write_npy(const std::filesystem::path& path, const Tensor& t) {
  const std::string source = path.string();
  check_writable(t, source);
  const std::string header = make_header(t);
  const Payload p = payload_of(t);
  FilePtr f(std::fopen(path.c_str(), "wb"));
  if (!f) fail_io(source, "cannot create: " + errno_text());
  if (std::fwrite(header.data(), 1, header.size(), f.get()) != header.size() ||
      (p.size && std::fwrite(p.data, 1, p.size, f.get()) != p.size))
    fail_io(source, "write error: " + errno_text());
  if (std::fclose(f.release()) != 0) fail_io(source, "write error: " + errno_text());
}

NamedTensors read_npz(const std::filesystem::path& path) {
  const std::string source = path.string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail_io(source, "no such file");
  if (std::filesystem::is_directory(path, ec)) fail_io(source, "is a directory");
  if (std::filesystem::file_size(path, ec) == 0 && !ec)
    fail(source, "empty file, not a zip archive (.npz)");

  int err = 0;
  ZipPtr za(zip_open(source.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &err));
  if (!za) {
    const std::string msg = zip_error_text(err);
    if (err == ZIP_ER_OPEN || err == ZIP_ER_READ || err == ZIP_ER_NOENT || err == ZIP_ER_SEEK ||
        err == ZIP_ER_MEMORY)
      fail_io(source, "cannot open: " + msg);
    fail(source, "not a valid .npz (zip) archive: " + msg);
  }

  NamedTensors out;
  std::set<std::string> seen;
  const zip_int64_t count = zip_get_num_entries(za.get(), 0);
  if (count < 0) fail(source, std::string("cannot list archive: ") + zip_strerror(za.get()));
  for (zip_int64_t i = 0; i < count; ++i) {
    const auto idx = static_cast<zip_uint64_t>(i);
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(za.get(), idx, 0, &st) != 0)
      fail(source, "entry " + std::to_string(i) + ": " + zip_strerror(za.get()));
    if (!(st.valid & ZIP_STAT_NAME) || !(st.valid & ZIP_STAT_SIZE))
      fail(source, "entry " + std::to_string(i) + " has no name or size");
    const std::string member = st.name;
    const std::string msource = source + ": member '" + member + "'";
    if (ends_with(member, "/") && st.size == 0) continue;  // a directory entry
    if (!ends_with(member, ".npy") || member.size() == 4) fail(msource, "is not a .npy file");
    if ((st.valid & ZIP_STAT_ENCRYPTION_METHOD) && st.encryption_method != ZIP_EM_NONE)
      fail(msource, "is encrypted");
    if ((st.valid & ZIP_STAT_COMP_METHOD) && (st.valid & ZIP_STAT_COMP_SIZE)) {
      if (st.comp_method == ZIP_CM_STORE && st.comp_size != st.size)
        fail(msource, "is stored but its sizes disagree (" + std::to_string(st.comp_size) + " vs " +
                          std::to_string(st.size) + " bytes); the archive is corrupted");
      if (st.comp_method == ZIP_CM_DEFLATE && st.size / kMaxDeflateRatio > st.comp_size + 64)
        fail(msource, "declares " + std::to_string(st.size) + " bytes from " +
                          std::to_string(st.comp_size) +
                          " compressed bytes, more than deflate can produce; the archive is corrupted");
    }
    const std::string name = member.substr(0, member.size() - 4);
    if (!seen.insert(name).second) fail(msource, "duplicate array name '" + name + "'");

    ZipFilePtr zf(zip_fopen_index(za.get(), idx, 0));
    if (!zf) fail(msource, std::string("cannot open: ") + zip_strerror(za.get()));
    // Reads exactly n bytes; the member's declared size bounds every read (load_npy checks its
    // sizes against `st.size` before reading).
    auto read_exact = [&](void* dst, size_t n) {
      auto* p = static_cast<uint8_t*>(dst);
      while (n) {
        const zip_int64_t got = zip_fread(zf.get(), p, n);
        if (got < 0) fail(msource, std::string("cannot read: ") + zip_file_strerror(zf.get()));
        if (got == 0) fail(msource, "truncated: ends before its declared size");
        p += got;
        n -= static_cast<size_t>(got);
      }
    };
    Tensor t = load_npy(st.size, msource, read_exact);
    // The member must end where it said it would; reading past the end also makes libzip check
    // the CRC.
    uint8_t extra;
    const zip_int64_t got = zip_fread(zf.get(), &extra, 1);
    if (got < 0) fail(msource, std::string("cannot read: ") + zip_file_strerror(zf.get()));
    if (got > 0) fail(msource, "decompresses to more than its declared size; the archive is corrupted");
    out.emplace_back(name, std::move(t));
  }
  return out;
}

void write_npz(const std::filesystem::path& path, const NamedTensors& tensors) {
  const std::string source = path.string();
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (name.empty()) fail(source, "cannot write a tensor with an empty name");
    if (!seen.insert(name).second) fail(source, "duplicate tensor name '" + name + "'");
    check_writable(t, source + ": tensor '" + name + "'");
  }

  if (tensors.empty()) {
    // libzip deletes an archive left with no entries; write the 22-byte empty zip numpy writes.
    static const uint8_t kEmptyZip[22] = {'P', 'K', 5, 6};
    FilePtr f(std::fopen(path.c_str(), "wb"));
    if (!f) fail_io(source, "cannot create: " + errno_text());
    if (std::fwrite(kEmptyZip, 1, sizeof(kEmptyZip), f.get()) != sizeof(kEmptyZip))
      fail_io(source, "write error: " + errno_text());
    if (std::fclose(f.release()) != 0) fail_io(source, "write error: " + errno_text());
    return;
  }

  int err = 0;
  ZipPtr za(zip_open(source.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err));
  if (!za) fail_io(source, "cannot create: " + zip_error_text(err));

  // libzip reads the sources at zip_close, so headers, widened copies and fragment lists live
  // until then. The tensors' own storage is used in place.
  struct Entry {
    std::string header;
    Payload payload;
    zip_buffer_fragment_t frags[2];
  };
  std::vector<std::unique_ptr<Entry>> entries;
  for (const auto& [name, t] : tensors) {
    auto e = std::make_unique<Entry>();
    e->header = make_header(t);
    e->payload = payload_of(t);
    e->frags[0].data = reinterpret_cast<zip_uint8_t*>(e->header.data());
    e->frags[0].length = e->header.size();
    e->frags[1].data = static_cast<zip_uint8_t*>(const_cast<void*>(e->payload.data));
    e->frags[1].length = e->payload.size;
    zip_source_t* src = zip_source_buffer_fragment(za.get(), e->frags, e->payload.size ? 2 : 1, 0);
    if (!src) fail_io(source, std::string("cannot add '") + name + "': " + zip_strerror(za.get()));
    const std::string member = name + ".npy";
    const zip_int64_t idx = zip_file_add(za.get(), member.c_str(), src, ZIP_FL_ENC_UTF_8);
    if (idx < 0) {
      zip_source_free(src);
      fail_io(source, "cannot add '" + member + "': " + zip_strerror(za.get()));
    }
    if (zip_set_file_compression(za.get(), static_cast<zip_uint64_t>(idx), ZIP_CM_STORE, 0) != 0)
      fail_io(source, "cannot add '" + member + "': " + zip_strerror(za.get()));
    entries.push_back(std::move(e));
  }
  if (zip_close(za.get()) != 0)
    fail_io(source, std::string("cannot write: ") + zip_strerror(za.get()));  // ZipPtr discards
  za.release();  // closed successfully
}

NamedTensors read_tensor_file(const std::filesystem::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ext == ".npz") return read_npz(path);
  if (ext == ".npy") {
    NamedTensors out;
    out.emplace_back(path.stem().string(), read_npy(path));
    return out;
  }
  fail(path.string(), "unknown tensor file extension '" + ext + "' (expected .npy or .npz)");
}

}  // namespace kiln
