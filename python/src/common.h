// Shared pieces of the kiln._kiln extension: error capture and translation, the logger bridge,
// dtype conversions, and the registration functions each source file provides.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ir/dtype.h"
#include "ir/graph.h"
#include "kiln/kiln.h"

namespace kiln::py_bindings {

namespace py = pybind11;

// ---- Errors

// The Python class for an error code (kiln.InvalidArgumentError, ...), and their base kiln.Error.
py::object exception_class(ErrorCode code);
py::object error_base();
// Sets a Python exception of the class for `code` with `message` (decoded with replacement, so
// a file name in another encoding cannot hide the error).
void set_python_error(ErrorCode code, const std::string& message);
// A Python str from bytes that should be UTF-8 (undecodable bytes are replaced).
py::str to_str(const std::string& s);
// str(obj) as a std::string.
inline std::string text_of(const py::handle& h) { return py::str(h).cast<std::string>(); }
// os.fspath(path) as a std::string (str or os.PathLike).
inline std::string fspath(const py::handle& path) { return text_of(py::module_::import("os").attr("fspath")(path)); }

// Collects the kERROR messages the C++ API logs during one call on this thread. The TensorRT-shaped
// API reports failure by return value plus a logged message; a call installs an ErrorCapture,
// and when the API returns failure, raise() throws a kiln::Error built from what was logged. The
// logger bridge records the code of the exception being handled when the message was logged (the
// API logs from its catch blocks), so the Python exception keeps the kiln::Error's code and text.
class ErrorCapture {
 public:
  struct Entry {
    ErrorCode code;
    std::string message;
  };
  ErrorCapture();
  ~ErrorCapture();
  ErrorCapture(const ErrorCapture&) = delete;
  ErrorCapture& operator=(const ErrorCapture&) = delete;

  const std::vector<Entry>& entries() const { return entries_; }
  // Throws kiln::Error: the first entry's code and every message (one per line), or `fallback`
  // (kInvalidArgument) when nothing was logged, e.g. with a logger installed from C++.
  [[noreturn]] void raise(const std::string& fallback) const;

  // Called by the logger bridge for kERROR and kINTERNAL_ERROR messages on this thread.
  static void record(ILogger::Severity severity, const char* msg);

 private:
  std::vector<Entry> entries_;
  ErrorCapture* outer_ = nullptr;
};

// ---- Logging

// kiln.ILogger / kiln.Logger: the C++ ILogger every Python-facing object logs to. Messages above
// min_severity are dropped without touching Python; the others go to the Python `log` method
// (acquiring the GIL, since builds and runs release it), or, for kiln.Logger itself, to
// sys.stderr as "[kiln] WARNING: msg". Errors are also recorded for ErrorCapture.
class PyLogger : public ILogger {
 public:
  explicit PyLogger(Severity min_severity) : min_severity_(min_severity) {}
  void log(Severity severity, const char* msg) noexcept override;
  // What `log` does when Python does not override it: prints "[kiln] WARNING: msg" to sys.stderr
  // when `console` is set (kiln.Logger), else nothing (kiln.ILogger). Needs the GIL.
  void default_log(Severity severity, const std::string& msg) const;
  Severity min_severity() const { return min_severity_.load(); }
  void set_min_severity(Severity s) { min_severity_.store(s); }
  bool console() const { return console_.load(); }
  void set_console(bool on) { console_.store(on); }

 private:
  std::atomic<Severity> min_severity_;
  std::atomic<bool> console_{false};
};

// ---- Types

// numpy dtype of an internal dtype; throws kUnsupported for those numpy lacks (bf16, fp8).
py::dtype numpy_dtype(DType dt);
// numpy dtype of a public DataType.
py::dtype numpy_dtype(DataType dt);
// Internal dtype of a numpy dtype; nullopt when Kiln has none.
std::optional<DType> dtype_of_numpy(const py::dtype& dt);
// numpy's name for an internal dtype ("float32"), else Kiln's ("bf16").
std::string numpy_name(DType dt);

// A network or engine tensor as Python sees it (TensorRT's ITensor, read-only).
struct TensorInfo {
  std::string name;
  py::object shape;  // tuple with -1 for dynamic dimensions; None when even the rank is unknown
  py::object dtype;  // kiln.DataType; None when unknown or without a public name
};
TensorInfo tensor_info(const Graph& g, const std::string& name);

// A Python shape (any sequence of ints) as Dims; throws kInvalidArgument naming `what`.
Dims to_dims(const py::handle& shape, const std::string& what);
py::tuple to_tuple(const Dims& d);
py::tuple to_tuple(const std::vector<int64_t>& d);

// ---- Registration (one per source file)

void register_errors(py::module_& m);
void register_logger(py::module_& m);
void register_network(py::module_& m);
void register_builder(py::module_& m);
void register_runtime(py::module_& m);

}  // namespace kiln::py_bindings
